"""tcpserver --options-file: read at start, read again on HUP and USR2 (docs/reference/tcpserver.md, Signals).

Each server here takes its whole command line (host, port and program too) from ``opts`` in its own
directory; a test rewrites the file and signals the master.  The splitter itself is in tests/test_options_file.py.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from tcpserver_harness import QUIET, connect, recv_all, recv_line, talk, wait_until
from test_tcpserver_reload import board, generations, held_in_header, live, one_warning, replaced, send_header

from loadtest.soak_procs import count_programs

BIN = Path(sys.executable).parent
Q = " ".join(QUIET)  # -H -R -l0


def chat(name: str) -> str:
    """A program, as words of the file, that says 'ready NAME', reads a line and answers it."""
    return f"""/bin/sh -c 'echo "ready $0"; read line; echo "got $line"' {name}"""


def start(prefork, tmp_path: Path, text: str):
    (tmp_path / "opts").write_text(text)
    return prefork(["--options-file", "opts"], [], operands=False)


def rewrite(server, tmp_path: Path, text: str, sig: int = signal.SIGHUP) -> None:
    path = tmp_path / "opts"
    if path.is_symlink() or not path.is_file():
        path.unlink()
    path.write_text(text)
    server.proc.send_signal(sig)


def hup_done(server, before: dict[int, int]) -> bool:
    return wait_until(lambda: replaced(server, before), 15)


def quiet_for(sock: socket.socket, seconds: float) -> bool:
    """Nothing arrives on SOCK for SECONDS (its program has not started)."""
    return not select.select([sock], [], [], seconds)[0]


def finish(sock: socket.socket, word: bytes) -> None:
    sock.sendall(word + b"\n")
    assert recv_all(sock) == b"got " + word + b"\n"
    sock.close()


# -- what a HUP changes --------------------------------------------------------------------------------------
def test_hup_runs_the_new_program_and_the_old_one_finishes(prefork, tmp_path):
    server = start(prefork, tmp_path, f"--workers 2 -c 4 {Q}\n127.0.0.1 0 {chat('one')}\n")
    assert wait_until(lambda: len(live(board(server))) == 2, 10)
    before = live(board(server))
    old = connect(server.port)
    assert recv_line(old) == b"ready one\n"
    rewrite(server, tmp_path, f"--workers 2 -c 4 {Q} 127.0.0.1 0 {chat('two')}  # the new program\n")
    assert hup_done(server, before), server.stderr()
    for _ in range(3):
        with connect(server.port) as sock:
            assert recv_line(sock) == b"ready two\n"
    finish(old, b"x")
    assert server.stderr() == ""


def test_hup_raises_c_at_once(prefork, tmp_path):
    server = start(prefork, tmp_path, f"--workers 2 -c 1 {Q} 127.0.0.1 0 {chat('c')}")
    a = connect(server.port)
    assert recv_line(a) == b"ready c\n"
    b = connect(server.port)  # in the listen queue: -c 1 is reached
    assert quiet_for(b, 0.5)
    rewrite(server, tmp_path, f"--workers 2 -c 3 {Q} 127.0.0.1 0 {chat('c')}")
    assert recv_line(b) == b"ready c\n"
    c = connect(server.port)
    assert recv_line(c) == b"ready c\n"
    assert board(server).limit == 3
    status = subprocess.run([BIN / "tcpserver-status", "--json", str(server.pid)], capture_output=True, timeout=10)
    assert json.loads(status.stdout)["limit"] == 3, status
    d = connect(server.port)
    assert quiet_for(d, 0.5)  # -c 3: the fourth waits
    for sock, word in ((a, b"a"), (b, b"b"), (c, b"c")):
        finish(sock, word)
    assert recv_line(d) == b"ready c\n"
    finish(d, b"d")
    assert server.stderr() == ""


def test_hup_lowers_c_and_never_more_run_than_allowed(prefork, tmp_path):
    """-c 3 lowered to 1 with 3 programs running: they go on; nothing starts until all three have ended.
    The process tree is sampled throughout: after each end, never more programs than the step allows."""
    server = start(prefork, tmp_path, f"--workers 2 -c 3 {Q} 127.0.0.1 0 {chat('low')}")
    socks = [connect(server.port) for _ in range(3)]
    assert [recv_line(s) for s in socks] == [b"ready low\n"] * 3
    samples: list[tuple[float, int]] = []
    details: list[list] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            detail: list = []
            samples.append((time.monotonic(), count_programs(server.pid, detail)))
            if len(detail) > 3:
                details.append(detail)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        before = live(board(server))
        rewrite(server, tmp_path, f"--workers 2 -c 1 {Q} 127.0.0.1 0 {chat('low')}")
        assert wait_until(lambda: board(server).limit == 1, 15), server.stderr()
        assert hup_done(server, before), server.stderr()
        waiting = connect(server.port)
        assert quiet_for(waiting, 0.5)
        marks = []
        for i, sock in enumerate(socks):
            finish(sock, b"%d" % i)
            marks.append(time.monotonic())
            if i < 2:
                assert quiet_for(waiting, 0.5), i  # 2, then 1 program(s) alive: not below -c 1 yet
        assert recv_line(waiting) == b"ready low\n"
        time.sleep(0.6)  # samples after the last end's 0.2 s of grace
    finally:
        stop.set()
        sampler.join()
    assert max(n for _, n in samples) <= 3, details[:3]
    for i, mark in enumerate(marks):
        after = [n for t, n in samples if t > mark + 0.2]  # the ended one reaped (a zombie counts)
        assert after and max(after) <= max(1, 2 - i), (i, after)
    finish(waiting, b"w")
    assert server.stderr() == ""


def test_hup_toggles_v(prefork, tmp_path):
    server = start(prefork, tmp_path, f"--workers 1 -Q {Q} 127.0.0.1 0 /bin/echo hi")
    assert talk(server.port)[0] == b"hi\n"
    before = live(board(server))
    rewrite(server, tmp_path, f"--workers 1 -v {Q} 127.0.0.1 0 /bin/echo hi")
    assert hup_done(server, before), server.stderr()
    assert talk(server.port)[0] == b"hi\n"
    lines = server.wait_ends(1)
    assert [line.split()[1] for line in lines] == ["status:", "pid", "ok", "end", "status:"], lines
    before = live(board(server))
    rewrite(server, tmp_path, f"--workers 1 -Q {Q} 127.0.0.1 0 /bin/echo hi")
    assert hup_done(server, before), server.stderr()
    assert talk(server.port)[0] == b"hi\n"
    time.sleep(0.3)
    assert server.lines() == lines


def test_hup_changes_the_backlog_of_the_same_socket(prefork, tmp_path):
    def backlog(port: int) -> int | str:
        """A listening socket's Send-Q is its backlog (other tests may listen on the same port elsewhere)."""
        out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, timeout=10).stdout
        ours = [line.split() for line in out.splitlines() if f" 127.0.0.1:{port} " in f" {line} "]
        return int(ours[0][2]) if len(ours) == 1 else out

    if subprocess.run(["ss", "-V"], capture_output=True).returncode:
        pytest.skip("no ss")
    server = start(prefork, tmp_path, f"-b 7 {Q} 127.0.0.1 0 /bin/echo hi")
    assert backlog(server.port) == 7
    before = live(board(server))
    rewrite(server, tmp_path, f"-b 9 {Q} 127.0.0.1 0 /bin/echo hi")
    assert hup_done(server, before), server.stderr()
    assert backlog(server.port) == 9
    assert talk(server.port)[0] == b"hi\n"


# -- what a HUP refuses ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "line"), [
    ("-c 2 -B 'unterminated", "opts: unterminated ' quote"),
    ("-c 2 -z", "options file opts: illegal option -- z"),
    ("-c two", "options file opts: bad value for -c: not a number: 'two'"),
    ("-c 2 127.0.0.1", "options file opts: usage: host port program"),
    (None, "opts: file does not exist"),
    ("fifo", "opts: not a regular file"),
    ("huge", "opts: larger than 65536 bytes"),
    ("-c 2 {Q} 127.0.0.2 0 /bin/echo new", "host cannot change without a restart (in force: '127.0.0.1', asked: "
                                           "'127.0.0.2')"),
    ("-c 2 {Q} 127.0.0.1 1 /bin/echo new", "port cannot change without a restart (in force: 0, asked: 1)"),
    ("-4 -c 2 {Q} --workers 1 127.0.0.1 0 /bin/echo new", "-4/-6 cannot change without a restart"),
    ("-u 1 -c 2 {Q} --workers 1 127.0.0.1 0 /bin/echo new", "uid (-u, -U) cannot change without a restart"),
    ("-c 2 {Q} --workers 3 127.0.0.1 0 /bin/echo new", "--workers cannot change without a restart"),
    ("-c 1025 {Q} --workers 1 127.0.0.1 0 /bin/echo new", "-c 1025 is above 1024, the most this server can take without a "
                                              "restart"),
])
def test_hup_refused_keeps_everything(prefork, tmp_path, text, line):
    server = start(prefork, tmp_path, f"--workers 1 -c 2 {Q} 127.0.0.1 0 /bin/echo old")
    assert wait_until(lambda: len(live(board(server))) == 1, 10)
    path = tmp_path / "opts"
    path.unlink()
    if text == "fifo":
        os.mkfifo(path)
    elif text == "huge":
        path.write_bytes(b"#" * 70000)
    elif text is not None:
        path.write_text(text.replace("{Q}", Q))
    server.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: server.stderr(), 15)
    time.sleep(0.3)
    assert one_warning(server), server.stderr()
    assert server.stderr().startswith(f"tcpserver: warning: reload failed: {line}"), server.stderr()
    assert server.stderr().endswith("; the running code and options go on serving\n")
    assert generations(server) == [1]
    assert talk(server.port)[0] == b"old\n"
    assert board(server).limit == 2


def test_hup_during_hup_reads_the_file_again(prefork, tmp_path):
    """The second HUP comes while the first waits for its worker to finish a connection: after it, the
    file is read again, so the third version is what runs."""
    held = f"--proxy-protocol -t 60 --workers 1 {Q} 127.0.0.1 0 /bin/echo"
    server = start(prefork, tmp_path, f"{held} first")
    assert wait_until(lambda: len(live(board(server))) == 1, 10)
    sock = held_in_header(server)
    rewrite(server, tmp_path, f"{held} second")
    time.sleep(0.5)  # the probe has read "second" (or reads it still): the reload is in progress either way
    rewrite(server, tmp_path, f"{held} third")
    time.sleep(0.3)
    assert generations(server) == [1]
    assert send_header(sock, server) == b"first\n"
    assert wait_until(lambda: generations(server) == [3] and len(live(board(server))) == 1, 15), generations(server)
    assert talk(server.port, b"PROXY TCP4 192.0.2.1 127.0.0.1 5555 1\r\n")[0] == b"third\n"
    assert server.stderr() == ""


def test_usr2_reads_the_file_again(prefork, tmp_path):
    server = start(prefork, tmp_path, f"--workers 2 -c 2 {Q} 127.0.0.1 0 {chat('one')}")
    assert wait_until(lambda: len(live(board(server))) == 2, 10)
    before = live(board(server))
    old = connect(server.port)
    assert recv_line(old) == b"ready one\n"
    rewrite(server, tmp_path, f"--workers 2 -c 5 {Q} 127.0.0.1 0 {chat('two')}", signal.SIGUSR2)
    assert hup_done(server, before), server.stderr()
    assert board(server).limit == 5
    socks = [connect(server.port) for _ in range(4)]  # with the old program still running: 5 in all
    assert [recv_line(s) for s in socks] == [b"ready two\n"] * 4
    assert server.proc.poll() is None  # the same master (pid) serves
    for i, sock in enumerate([old, *socks]):
        finish(sock, b"%d" % i)
    assert server.stderr() == ""


# -- at start ---------------------------------------------------------------------------------------------------
USAGE_LINE = "tcpserver: usage: tcpserver [ -1UXpPhHrRoOdDqQv ]"


@pytest.mark.parametrize(("make", "code", "first"), [
    ("missing", 111, "tcpserver: fatal: unable to read options file opts: file does not exist"),
    ("fifo", 111, "tcpserver: fatal: unable to read options file opts: not a regular file"),
    ("fifo-link", 111, "tcpserver: fatal: unable to read options file opts: not a regular file"),
    ("huge", 111, "tcpserver: fatal: unable to read options file opts: larger than 65536 bytes"),
    ("-c 2 'x", 100, "tcpserver: options file opts: unterminated ' quote"),
    ("-c 2 -z", 100, "tcpserver: options file opts: illegal option -- z"),
    ("-v -c x 0 0 echo", 100, "tcpserver: options file opts: bad value for -c: not a number: 'x'"),
    ("--options-file opts", 100, "tcpserver: options file opts: --options-file inside an options file"),
])
def test_start_with_a_bad_file(tmp_path, make, code, first):
    path = tmp_path / "opts"
    if make == "fifo":
        os.mkfifo(path)
    elif make == "fifo-link":
        os.mkfifo(tmp_path / "fifo")
        path.symlink_to(tmp_path / "fifo")
    elif make == "huge":
        path.write_bytes(b" " * 65537)
    elif make != "missing":
        path.write_text(make)
    done = subprocess.run([BIN / "tcpserver", "-q", "--options-file", "opts"], cwd=tmp_path, capture_output=True,
                          timeout=10)
    assert done.returncode == code
    lines = done.stderr.decode().splitlines()
    assert lines[0] == first
    assert len(lines) == (2 if code == 100 else 1) and (code == 111 or lines[1].startswith(USAGE_LINE))
    assert done.stdout == b""


def test_the_words_stand_where_the_option_stands(prefork, tmp_path):
    """Options after the file's override it (the last -c wins); the program's own --options-file is its word."""
    (tmp_path / "opts").write_text(f"-c 1 {Q}  # defaults\n")
    server = prefork(["--options-file", "opts", "-c", "3"], ["/bin/echo", "--options-file", "opts"])
    assert talk(server.port)[0] == b"--options-file opts\n"
    assert board(server).limit == 3


def test_hup_adds_rules_and_per_client_limits_count_the_old_programs(prefork, tmp_path):
    """-x added by a HUP (with -c raised): its MAXCONNIP counts the programs the old workers started, which
    the master holds in the client table now, so the limit is exact across the reload."""
    from test_tcpserver_limits import rules, subnet

    net = subnet()
    cdb = rules(tmp_path, f'{net}.:allow,MAXCONNIP="3",DIEMSG="421 too many"\n')
    program = "/bin/sh -c 'echo hi; read x'"
    server = start(prefork, tmp_path, f"--workers 2 -c 2 {Q} 127.0.0.1 0 {program}")
    assert wait_until(lambda: len(live(board(server))) == 2, 10)
    before = live(board(server))
    held = [connect(server.port, source=f"{net}.7") for _ in range(2)]
    assert [recv_line(s) for s in held] == [b"hi\n"] * 2
    rewrite(server, tmp_path, f"--workers 2 -c 6 -x {cdb} {Q} 127.0.0.1 0 {program}")
    assert hup_done(server, before), server.stderr()
    assert board(server).orphans == 2
    third = connect(server.port, source=f"{net}.7")
    assert recv_line(third) == b"hi\n"
    with connect(server.port, source=f"{net}.7") as s:
        assert recv_all(s) == b"421 too many\r\n"
    with connect(server.port, source=f"{net}.8") as s:  # another address: its own count, and -c 6 has room
        assert recv_line(s) == b"hi\n"
    for s in [*held, third]:
        s.close()
    assert server.stderr() == ""


def test_c_changed_under_load_is_never_exceeded(prefork, tmp_path):
    """Clients keep connecting while HUPs move -c 4 -> 2 -> 6 -> 3: no client fails, and the process tree,
    sampled throughout, never shows more programs than the limit in force (once the programs started under
    a higher one have ended)."""
    program = "/bin/sh -c 'sleep 0.05; echo hello'"

    def text(limit: int) -> str:
        return f"--workers 2 -c {limit} {Q} 127.0.0.1 0 {program}"

    server = start(prefork, tmp_path, text(4))
    stop = threading.Event()
    failures: list[str] = []
    served = [0]
    samples: list[tuple[float, int]] = []

    def client() -> None:
        while not stop.is_set():
            try:
                reply = talk(server.port, timeout=15)[0]
            except OSError as e:
                failures.append(repr(e))
                continue
            if reply != b"hello\n":
                failures.append(repr(reply))
            served[0] += 1

    def sample() -> None:
        while not stop.is_set():
            samples.append((time.monotonic(), count_programs(server.pid)))
            time.sleep(0.01)

    threads = [threading.Thread(target=client) for _ in range(8)] + [threading.Thread(target=sample)]
    for t in threads:
        t.start()
    phases: list[tuple[float, float, int]] = []  # (limit applied, next signal, limit)
    try:
        applied, current = time.monotonic(), 4
        time.sleep(1.0)
        for limit in (2, 6, 3):
            before = live(board(server))
            rewrite(server, tmp_path, text(limit))
            phases.append((applied, time.monotonic(), current))
            assert wait_until(lambda limit=limit: board(server).limit == limit, 15), server.stderr()
            applied, current = time.monotonic(), limit
            assert hup_done(server, before), server.stderr()
            time.sleep(1.5)
        phases.append((applied, time.monotonic(), current))
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not failures, failures[:5]
    assert served[0] > 50
    assert max(n for _, n in samples) <= 6
    for start_at, end_at, limit in phases:
        seen = [n for t, n in samples if start_at + 0.3 < t < end_at]
        assert seen and max(seen) <= limit, (limit, seen)
    assert max(n for t, n in samples if phases[2][0] + 0.3 < t < phases[2][1]) > 3  # -c 6 was used
    assert server.stderr() == ""
