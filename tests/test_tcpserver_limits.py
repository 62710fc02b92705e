"""Per-client limits (MAXCONNIP, MAXCONNC, MAXLOAD, DIEMSG): refused connections, their log lines and counts,
and exactness across workers, also while workers are SIGKILLed (docs/reference/tcpserver.md)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
from conftest import ours
from tcpserver_harness import QUIET, TAG_VAR, connect, recv_all, recv_line, wait_until


def rules(tmp_path: Path, text: str) -> str:
    cdb = tmp_path / "rules.cdb"
    subprocess.run([ours("tcprules"), str(cdb), str(tmp_path / "rules.tmp")], input=text.encode(), check=True,
                   timeout=10)
    return str(cdb)


def board_json(path: Path) -> dict:
    out = subprocess.run([ours("tcpserver-status"), "--json", str(path)], capture_output=True, timeout=10)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def subnet() -> str:
    """A random 127.A.B prefix of our own (parallel tests use others)."""
    return f"127.{random.randint(1, 254)}.{random.randint(0, 254)}"


def live_programs(tag: str) -> Counter[str]:
    """TCPREMOTEIP of every live program (a `sleep`) carrying the server's tag: what the kernel has, not a log."""
    needle = f"{TAG_VAR}={tag}".encode()
    seen: Counter[str] = Counter()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                if not f.read().startswith(b"sleep\0"):
                    continue
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if needle in env:
            ip = next((v[12:] for v in env if v.startswith(b"TCPREMOTEIP=")), b"?")
            seen[ip.decode()] += 1
    return seen


def test_maxconnip_from_rules_refuses_the_third_with_diemsg_deny_line_and_counts(tmp_path, prefork):
    net = subnet()
    cdb = rules(tmp_path, f'{net}.:allow,MAXCONNIP="2",DIEMSG="421 too many from you"\n')
    board = tmp_path / "board"
    server = prefork(["-v", *QUIET, "-x", cdb, "--scoreboard", str(board)], ["sh", "-c", "echo hi; exec sleep 30"])
    held = []
    for _ in range(2):
        s = connect(server.port, source=f"{net}.7")
        assert recv_line(s) == b"hi\n"
        held.append(s)
    with connect(server.port, source=f"{net}.7") as s:
        assert recv_all(s) == b"421 too many from you\r\n"  # the message, CRLF added, then the close
    with connect(server.port, source=f"{net}.8") as s:  # another address has its own count
        assert recv_line(s) == b"hi\n"
    lines = server.wait_lines(lambda ls: any(" deny " in line for line in ls)  # ok lines follow the spawn
                              and len([line for line in ls if line.startswith("tcpserver: ok ")]) >= 3)
    deny = [line for line in lines if line.startswith("tcpserver: deny ")]
    assert len(deny) == 1 and deny[0].endswith(f":{net}.7::{deny[0].rsplit('::', 1)[1].split()[0]} MAXCONNIP:2")
    assert len([line for line in lines if line.startswith("tcpserver: ok ")]) == 3
    data = board_json(board)
    assert data["totals"]["limited"] == {"MAXCONNIP": 1, "MAXCONNC": 0, "MAXLOAD": 0}
    assert data["totals"]["denied"] == 0 and data["active"] == 3
    for s in held:
        s.close()


def test_maxconnip_zero_from_the_environment_rejects_everyone_without_a_message(tmp_path, prefork):
    board = tmp_path / "board"
    env = {"PATH": "/usr/bin:/bin", "MAXCONNIP": "0"}
    server = prefork([*QUIET, "--scoreboard", str(board)], ["echo", "never"], env=env)
    for _ in range(3):
        with connect(server.port) as s:
            assert recv_all(s) == b""
    assert wait_until(lambda: board_json(board)["totals"]["limited"]["MAXCONNIP"] == 3)
    assert board_json(board)["totals"]["exits"]["zero"] == 0


def test_maxconnc_counts_the_slash_24_and_other_networks_are_unaffected(tmp_path, prefork):
    net = subnet()
    cdb = rules(tmp_path, f'{net}.:allow,MAXCONNC="3"\n')
    server = prefork([*QUIET, "-x", cdb], ["sh", "-c", "echo hi; exec sleep 30"])
    held = []
    for host in (1, 2, 3):
        s = connect(server.port, source=f"{net}.{host}")
        assert recv_line(s) == b"hi\n"
        held.append(s)
    with connect(server.port, source=f"{net}.4") as s:
        assert recv_all(s) == b""
    other = f"{net.rsplit('.', 1)[0]}.{(int(net.rsplit('.', 1)[1]) + 1) % 255}.9"
    with connect(server.port, source=other) as s:  # no rule there: no limit
        assert recv_line(s) == b"hi\n"
    held[0].close()
    # Its program ends when the client goes (sh's echo then sleep: closed by the kill below instead).
    for p in psutil.Process(server.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if p.name() == "sleep" and p.environ().get("TCPREMOTEIP") == f"{net}.1":
                p.kill()
    def admitted() -> bool:
        with connect(server.port, source=f"{net}.5") as s:
            return recv_line(s, 2) == b"hi\n"
    assert wait_until(admitted, timeout=10, interval=0.1)
    for s in held:
        s.close()


def test_maxload_zero_refuses_with_the_load_marker_and_a_high_one_admits(tmp_path, prefork):
    net = subnet()
    cdb = rules(tmp_path, f'{net}.1:allow,MAXLOAD="0",DIEMSG="busy"\n{net}.2:allow,MAXLOAD="100000"\n')
    server = prefork(["-v", *QUIET, "-x", cdb], ["echo", "hi"])
    with connect(server.port, source=f"{net}.1") as s:
        assert recv_all(s) == b"busy\r\n"
    with connect(server.port, source=f"{net}.2") as s:
        assert recv_all(s) == b"hi\n"
    lines = server.wait_lines(lambda ls: any(" deny " in line for line in ls))
    (deny,) = [line for line in lines if line.startswith("tcpserver: deny ")]
    assert deny.rsplit(" ", 1)[1].startswith("LOAD:") and deny.rsplit(":", 1)[1].isdigit()


@pytest.mark.parametrize("value", ["5x", "", "-1", " 5", "١"])
def test_a_limit_that_is_not_a_number_drops_the_connection_with_one_warning(tmp_path, prefork, value):
    net = subnet()
    cdb = rules(tmp_path, f'{net}.:allow,MAXCONNC="{value}"\n')
    board = tmp_path / "board"
    server = prefork([*QUIET, "-x", cdb, "--scoreboard", str(board)], ["echo", "never"])
    with connect(server.port, source=f"{net}.3") as s:
        assert recv_all(s) == b""
    lines = server.wait_lines(lambda ls: any("warning" in line for line in ls))
    assert lines == [f"tcpserver: warning: dropping connection, MAXCONNC is not a number: {value!r}"]
    assert board_json(board)["totals"]["dropped"] == 1
    with connect(server.port, source="127.0.0.1") as s:  # other clients are served as before
        assert recv_all(s) == b"never\n"


def test_a_dead_workers_programs_keep_counting_against_their_address(tmp_path, prefork):
    net = subnet()
    cdb = rules(tmp_path, f'{net}.:allow,MAXCONNIP="1"\n')
    board = tmp_path / "board"
    server = prefork([*QUIET, "-x", cdb, "--scoreboard", str(board), "--workers", "2"],
                     ["sh", "-c", "echo hi; exec sleep 30"])
    first = connect(server.port, source=f"{net}.9")
    assert recv_line(first) == b"hi\n"
    old = {w.pid for w in server.workers()}
    for w in server.workers():
        w.send_signal(signal.SIGKILL)
    assert wait_until(lambda: len(server.workers()) == 2 and not old & {w.pid for w in server.workers()})
    assert board_json(board)["orphans"] == 1
    with connect(server.port, source=f"{net}.9") as s:  # the orphan still holds the address's one place
        assert recv_all(s) == b""
    for p in psutil.Process(server.pid).children():
        with contextlib.suppress(psutil.Error):
            if p.name() == "sleep":
                p.kill()
    assert wait_until(lambda: board_json(board)["orphans"] == 0)
    with connect(server.port, source=f"{net}.9") as s:  # reaped by the master: the place is free again
        assert recv_line(s) == b"hi\n"
    first.close()
    assert board_json(board)["totals"]["limited"]["MAXCONNIP"] == 1


def test_maxconnip_is_never_exceeded_under_50_addresses_bursts_and_worker_sigkills(tmp_path, prefork):
    """The issue's proof: 50 source addresses, bursts of 4 simultaneous connections from one address, three
    workers SIGKILLed along the way; the kernel's process list never shows 3 programs of one address."""
    net = subnet()
    cdb = rules(tmp_path, ':allow,MAXCONNIP="2"\n')
    board = tmp_path / "board"
    server = prefork([*QUIET, "-x", cdb, "--scoreboard", str(board), "--workers", "3", "-c", "60"],
                     ["sleep", "0.3"])
    stop = threading.Event()
    results = Counter()
    lock = threading.Lock()

    def client() -> None:
        for _ in range(10_000):
            if stop.is_set():
                return
            source = f"{net}.{random.randint(1, 50)}"
            socks = []
            for _ in range(4):
                with contextlib.suppress(OSError):
                    socks.append(connect(server.port, source=source, timeout=10))
            for s in socks:
                with s, contextlib.suppress(OSError):
                    recv_all(s, 10)
            with lock:
                results["bursts"] += 1

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    worst: Counter[str] = Counter()
    samples = kills = 0
    try:
        deadline = time.monotonic() + 6.0
        next_kill = time.monotonic() + 1.0
        for _ in range(100_000):
            if time.monotonic() >= deadline:
                break
            for ip, n in live_programs(server.tag).items():
                worst[ip] = max(worst[ip], n)
            samples += 1
            if time.monotonic() >= next_kill and kills < 3 and server.workers():
                with contextlib.suppress(psutil.Error):
                    random.choice(server.workers()).send_signal(signal.SIGKILL)
                    kills += 1
                next_kill = time.monotonic() + 1.5
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert kills == 3 and samples > 50 and results["bursts"] > 20
    assert worst and max(worst.values()) <= 2, worst.most_common(3)
    assert max(worst.values()) == 2  # the limit was reached, not just never approached
    data = board_json(board)
    assert data["totals"]["limited"]["MAXCONNIP"] > 0
    assert data["totals"]["exits"]["zero"] > 0


def test_without_limits_nothing_changes_for_a_0_88_command_line(tmp_path, prefork):
    """No limit variable anywhere: every connection of one address is served, no marker, no count."""
    board = tmp_path / "board"
    server = prefork(["-v", *QUIET, "--scoreboard", str(board)], ["sh", "-c", "echo hi; exec sleep 30"])
    held = [connect(server.port) for _ in range(5)]
    assert [recv_line(s) for s in held] == [b"hi\n"] * 5
    assert not [line for line in server.lines() if "MAXCONN" in line or " deny " in line]
    assert board_json(board)["totals"]["limited"] == {"MAXCONNIP": 0, "MAXCONNC": 0, "MAXLOAD": 0}
    for s in held:
        s.close()


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGUSR2], ids=["HUP", "USR2"])
def test_limits_stay_exact_across_a_reload(tmp_path, prefork, sig):
    """A program admitted before HUP (new workers exec'd fresh) or USR2 (a new master) still holds its
    address's one place after it, until it ends."""
    net = subnet()
    cdb = rules(tmp_path, f'{net}.:allow,MAXCONNIP="1"\n')
    board = tmp_path / "board"
    server = prefork([*QUIET, "-x", cdb, "--scoreboard", str(board)], ["sh", "-c", "echo hi; exec sleep 30"])
    held = connect(server.port, source=f"{net}.4")
    assert recv_line(held) == b"hi\n"
    before = {w.pid for w in server.workers()}
    server.proc.send_signal(sig)
    assert wait_until(lambda: len(server.workers()) == 2 and not before & {w.pid for w in server.workers()}, 20)
    assert wait_until(lambda: {s["state"] for s in board_json(board)["slots"]} == {"ready"}, 10)
    with connect(server.port, source=f"{net}.4") as s:  # the place is still taken
        assert recv_all(s) == b""
    with connect(server.port, source=f"{net}.5") as s:  # others are served
        assert recv_line(s) == b"hi\n"
    for p in psutil.Process(server.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if p.name() == "sleep" and p.environ().get("TCPREMOTEIP") == f"{net}.4":
                p.kill()
    def admitted() -> bool:
        with connect(server.port, source=f"{net}.4") as s:
            return recv_line(s, 2) == b"hi\n"
    assert wait_until(admitted, timeout=10, interval=0.1)
    held.close()
    assert board_json(board)["totals"]["limited"]["MAXCONNIP"] >= 1
    assert server.stderr() == ""


def test_maxconnip_for_an_ipv6_client(tmp_path, prefork):
    """An IPv6 client counts by its address (MAXCONNC's /64 is unit-tested: loopback has one IPv6 address)."""
    cdb = rules(tmp_path, ':allow,MAXCONNIP="1",DIEMSG="421 one each"\n')
    board = tmp_path / "board"
    server = prefork([*QUIET, "-x", cdb, "--scoreboard", str(board)], ["sh", "-c", "echo hi; exec sleep 30"],
                     host="::1")
    first = connect(server.port, host="::1")
    assert recv_line(first) == b"hi\n"
    with connect(server.port, host="::1") as s:  # ::1 has its one place
        assert recv_all(s) == b"421 one each\r\n"
    assert board_json(board)["totals"]["limited"]["MAXCONNIP"] == 1
    first.close()
