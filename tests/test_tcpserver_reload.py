"""tcpserver's HUP and USR2 reloads (docs/reference/tcpserver.md, Signals; prefork/reload.py).

What "new code" means is shown with a copy of the prefork package the server runs from (``pkgcopy``):
a test edits the copy's ``worker.py`` and sees the change in what programs get only after the reload.

A reload in progress is held still, where a test needs one, by a worker that is reading a PROXY header
(``--proxy-protocol``, one worker): told to leave, it first finishes that connection, which waits for the
test to send the header.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from tcpserver_harness import (
    QUIET,
    VIEW,
    check_order,
    connect,
    parse_view,
    recv_all,
    recv_line,
    sigbit,
    talk,
    wait_until,
)

from loadtest.soak_procs import count_programs
from prefork.scoreboard_read import Snapshot, read

CHAT = ["/bin/sh", "-c", 'echo ready; read line; echo "got $line"']
MARK = ["/bin/sh", "-c", 'echo "mark ${PREFORK_RELOAD_MARK-none}"']
ROOT = Path(__file__).resolve().parent.parent


def board(server) -> Snapshot:
    return read(f"/dev/shm/prefork-tcpserver.{server.pid}")


def live(snap: Snapshot) -> dict[int, int]:
    """Slot index -> pid of the slots whose worker serves (ready or waiting for capacity)."""
    return {s.index: s.pid for s in snap.slots if s.pid and s.state in ("ready", "waiting")}


def replaced(server, before: dict[int, int], count: int | None = None) -> bool:
    """Every slot of BEFORE (or COUNT slots) serves with a worker that is not one of BEFORE's."""
    now = live(board(server))
    count = len(before) if count is None else count
    return len(now) == count and not set(now.values()) & set(before.values()) and set(now.values()) <= {
        w.pid for w in server.workers()}


def totals(snap: Snapshot) -> tuple[int, int]:
    """(accepted, exits) over the slots and the master's orphans: what must never go backwards."""
    accepted = sum(s.accepted for s in snap.slots)
    exits = sum(s.exit_zero + s.exit_nonzero + s.exit_signal for s in snap.slots)
    return accepted, exits + snap.orphan_exit_zero + snap.orphan_exit_nonzero + snap.orphan_exit_signal


def generations(server) -> list[int]:
    return [s.generation for s in board(server).slots]


def one_warning(server) -> bool:
    return server.stderr().count("\n") == 1 and "tcpserver: warning: reload failed: " in server.stderr()


# -- a copy of the package, edited by the tests -------------------------------------------------
@pytest.fixture
def pkgcopy(tmp_path):
    """(launcher wrap, path of the copy's worker.py): servers started with the wrap run the copy."""
    root = tmp_path / "copy"
    shutil.copytree(ROOT / "prefork", root / "prefork", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "control", "metrics"))
    script = tmp_path / "bin" / "tcpserver"
    script.parent.mkdir()
    # The harness puts prefork's console script after the wrap: dropped, the copy's front end runs instead.
    script.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(root)!r})\ndel sys.argv[1]\n"
                      "from prefork.tcpserver_cli import main\nmain()\n")
    script.chmod(0o755)
    return [str(script)], root / "prefork" / "worker.py"


def mark_programs(worker_py: Path) -> None:
    """Edit the copy: every program gets PREFORK_RELOAD_MARK=new."""
    text = worker_py.read_text()
    old = '    env[b"PROTO"] = b"TCP6" if six else b"TCP"\n'
    assert old in text
    worker_py.write_text(text.replace(old, old + '    env[b"PREFORK_RELOAD_MARK"] = b"new"\n'))


def marks(server, count: int = 6) -> set[bytes]:
    return {talk(server.port)[0] for _ in range(count)}


# -- a worker held in a PROXY header -------------------------------------------------------------
def held_in_header(server) -> socket.socket:
    """A client the only worker has accepted and waits for the PROXY header of."""
    sock = connect(server.port)
    assert wait_until(lambda: board(server).active == 1, 10)
    return sock


def send_header(sock: socket.socket, server) -> bytes:
    sock.sendall(b"PROXY TCP4 192.0.2.1 127.0.0.1 5555 %d\r\n" % server.port)
    return recv_all(sock)


PROXIED = ["--proxy-protocol", "-t", "60", "--workers", "1", *QUIET]


# -- HUP ----------------------------------------------------------------------------------------
def test_hup_workers_run_the_code_on_disk_now(prefork, pkgcopy):
    wrap, worker_py = pkgcopy
    server = prefork(["-c", "4", *QUIET], MARK, wrap=wrap)
    assert wait_until(lambda: len(live(board(server))) == 2, 10)
    before = live(board(server))
    assert marks(server) == {b"mark none\n"}
    mark_programs(worker_py)
    assert marks(server) == {b"mark none\n"}  # forked workers keep the code the master loaded
    counted = totals(board(server))
    server.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: replaced(server, before), 15), (board(server).slots, server.stderr())
    assert marks(server) == {b"mark new\n"}
    assert totals(board(server)) >= counted and generations(server) == [2, 2]
    assert server.stderr() == ""


def test_hup_with_code_that_does_not_import_keeps_the_old_workers(prefork, pkgcopy):
    wrap, worker_py = pkgcopy
    server = prefork(QUIET, MARK, wrap=wrap)
    assert wait_until(lambda: len(live(board(server))) == 2, 10)
    before = live(board(server))
    good = worker_py.read_text()
    worker_py.write_text(good + "\nraise ImportError('broken on purpose')\n")
    server.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: one_warning(server), 15), server.stderr()
    line = server.stderr()
    assert line.startswith("tcpserver: warning: reload failed: new code does not start: ImportError: broken on "
                           "purpose (File ") and "worker.py" in line and line.endswith("; the running code goes on "
                                                                                       "serving\n"), line
    assert live(board(server)) == before and marks(server) == {b"mark none\n"}
    # fixed, the next HUP goes through; the failure stays the only line
    worker_py.write_text(good)
    mark_programs(worker_py)
    server.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: replaced(server, before), 15), server.stderr()
    assert marks(server) == {b"mark new\n"} and server.stderr() == line


def test_hup_hands_running_programs_over_and_keeps_c_exact(prefork):
    server = prefork(["-c", "2", *QUIET], CHAT)
    assert wait_until(lambda: len(live(board(server))) == 2, 10)
    before = live(board(server))
    socks = []
    for _ in range(2):
        sock = connect(server.port)
        assert recv_line(sock) == b"ready\n"
        socks.append(sock)
    server.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: replaced(server, before), 15), (board(server).slots, server.stderr())
    snap = board(server)
    assert snap.orphans == 2 and snap.active == 2  # the old workers' programs, counted by the master
    # -c 2 is reached: the new workers wait for capacity instead of accepting a third client
    assert wait_until(lambda: {s.state for s in board(server).slots} == {"waiting"}, 10), board(server).slots
    for i, sock in enumerate(socks):
        sock.sendall(b"%d\n" % i)
        assert recv_all(sock) == b"got %d\n" % i
        sock.close()
    assert wait_until(lambda: board(server).orphan_exit_zero == 2 and board(server).orphans == 0, 10)
    with connect(server.port) as a, connect(server.port) as b:
        assert [recv_line(a), recv_line(b)] == [b"ready\n", b"ready\n"]
    assert server.stderr() == ""


def test_hup_with_v_logs_every_connection_in_order(prefork):
    """-v: the old workers' programs get their end lines from the master, the new (exec'd) workers share the
    spawn log with it (a memfd), and every connection's lines keep 0.88's order."""
    server = prefork(["-v", "-c", "2", *QUIET], CHAT)
    assert wait_until(lambda: len(live(board(server))) == 2, 10)
    before = live(board(server))
    socks = [connect(server.port) for _ in range(2)]
    assert [recv_line(s) for s in socks] == [b"ready\n", b"ready\n"]
    server.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: replaced(server, before), 15), server.stderr()
    for sock in socks:
        sock.sendall(b"x\n")
        assert recv_all(sock) == b"got x\n"
        sock.close()
    assert wait_until(lambda: board(server).orphans == 0, 10)
    for _ in range(2):
        with connect(server.port) as sock:
            assert recv_line(sock) == b"ready\n"
            sock.sendall(b"y\n")
            assert recv_all(sock) == b"got y\n"
    check_order(server.wait_ends(4))


def test_hup_during_hup_reloads_once_more_after_it(prefork):
    server = prefork(PROXIED, ["/bin/echo", "served"])
    assert wait_until(lambda: len(live(board(server))) == 1, 10)
    sock = held_in_header(server)
    server.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)  # the probe has run (or runs still): the reload is in progress either way
    server.proc.send_signal(signal.SIGHUP)
    time.sleep(0.3)
    assert generations(server) == [1]  # nothing replaced while the worker finishes its connection
    assert send_header(sock, server) == b"served\n"
    assert wait_until(lambda: generations(server) == [3] and len(live(board(server))) == 1, 15), generations(server)
    assert talk(server.port, b"PROXY TCP4 192.0.2.1 127.0.0.1 5555 1\r\n")[0] == b"served\n"
    assert server.stderr() == ""


def test_quit_during_hup_drains_without_new_workers(prefork):
    server = prefork(["--drain-timeout", "20", *PROXIED], ["/bin/echo", "served"])
    assert wait_until(lambda: len(live(board(server))) == 1, 10)
    sock = held_in_header(server)
    server.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    server.proc.send_signal(signal.SIGQUIT)
    time.sleep(0.3)
    assert send_header(sock, server) == b"served\n"
    assert server.proc.wait(timeout=15) == 0
    assert server.stderr() == ""


def test_term_during_hup_exits_at_once(prefork):
    server = prefork(PROXIED, ["/bin/echo", "served"])
    assert wait_until(lambda: len(live(board(server))) == 1, 10)
    sock = held_in_header(server)
    server.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=10) == 0
    assert not os.path.exists(f"/dev/shm/prefork-tcpserver.{server.pid}")
    sock.close()


# -- USR2 ---------------------------------------------------------------------------------------
def test_usr2_same_pid_same_scoreboard_programs_still_counted(prefork):
    server = prefork(["-c", "2", *QUIET], CHAT)
    assert wait_until(lambda: len(live(board(server))) == 2, 10)
    before = live(board(server))
    started = psutil.Process(server.pid).create_time()
    socks = []
    for _ in range(2):
        sock = connect(server.port)
        assert recv_line(sock) == b"ready\n"
        socks.append(sock)
    counted = totals(board(server))
    server.proc.send_signal(signal.SIGUSR2)
    assert wait_until(lambda: replaced(server, before), 15), (board(server).slots, server.stderr())
    assert server.proc.poll() is None and psutil.Process(server.pid).create_time() == started
    snap = board(server)
    assert snap.master_pid == server.pid and snap.orphans == 2 and totals(snap) >= counted
    assert wait_until(lambda: {s.state for s in board(server).slots} == {"waiting"}, 10)  # -c 2 still full
    for i, sock in enumerate(socks):
        sock.sendall(b"%d\n" % i)
        assert recv_all(sock) == b"got %d\n" % i
        sock.close()
    assert wait_until(lambda: board(server).orphan_exit_zero == 2 and board(server).orphans == 0, 10)
    with connect(server.port) as a, connect(server.port) as b:
        assert [recv_line(a), recv_line(b)] == [b"ready\n", b"ready\n"]
    status = subprocess.run([str(Path(sys.executable).parent / "tcpserver-status"),
                             f"/dev/shm/prefork-tcpserver.{server.pid}"], capture_output=True, timeout=10)
    assert status.returncode == 0 and f"(pid {server.pid})".encode() in status.stdout, status
    assert server.stderr() == ""


def test_usr2_programs_get_the_same_environment(prefork):
    env = {"PATH": "/usr/bin:/bin", "LISTEN_PID": "1", "LISTEN_FDS": "1", "LC_ALL": "C", "ODD": "a=b"}
    server = prefork(QUIET, [VIEW], env=env)
    assert wait_until(lambda: len(live(board(server))) == 2, 10)
    before = live(board(server))

    def seen() -> dict:
        got = parse_view(talk(server.port)[0])["env"]
        assert isinstance(got, dict)
        return {k: v for k, v in got.items() if k != "TCPREMOTEPORT"}

    first = seen()
    assert first["LISTEN_PID"] == "1" and first["ODD"] == "a=b"  # addressed to another pid: passed on
    server.proc.send_signal(signal.SIGUSR2)
    assert wait_until(lambda: replaced(server, before), 15), server.stderr()
    assert seen() == first
    before = live(board(server))
    server.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: replaced(server, before), 15), server.stderr()
    assert seen() == first


def test_usr2_with_code_that_does_not_import_keeps_serving(prefork, pkgcopy):
    wrap, worker_py = pkgcopy
    server = prefork(QUIET, MARK, wrap=wrap)
    assert wait_until(lambda: len(live(board(server))) == 2, 10)
    before = live(board(server))
    good = worker_py.read_text()
    worker_py.write_text(good + "\nraise ImportError('broken on purpose')\n")
    server.proc.send_signal(signal.SIGUSR2)
    assert wait_until(lambda: one_warning(server), 15), server.stderr()
    assert live(board(server)) == before and marks(server) == {b"mark none\n"}
    worker_py.write_text(good)
    mark_programs(worker_py)
    server.proc.send_signal(signal.SIGUSR2)
    assert wait_until(lambda: replaced(server, before), 15), server.stderr()
    assert marks(server) == {b"mark new\n"} and server.proc.poll() is None


def test_usr2_and_ttin_during_hup_come_after_it(prefork):
    server = prefork(["--max-workers", "2", *PROXIED], ["/bin/echo", "served"])
    assert wait_until(lambda: len(live(board(server))) == 1, 10)
    started = psutil.Process(server.pid).create_time()
    sock = held_in_header(server)
    server.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    server.proc.send_signal(signal.SIGUSR2)
    time.sleep(0.3)
    assert send_header(sock, server) == b"served\n"
    # three starts: the first worker, HUP's (in the spare slot 1: its slot is free as soon as the old worker is
    # told to leave), USR2's new master's (in the lowest free slot)
    assert wait_until(lambda: sum(generations(server)) == 3 and len(live(board(server))) == 1, 15), generations(server)
    assert psutil.Process(server.pid).create_time() == started
    server.proc.send_signal(signal.SIGTTIN)
    assert wait_until(lambda: len(live(board(server))) == 2, 10)
    assert server.stderr() == ""


# -- under load ---------------------------------------------------------------------------------
def test_reloads_under_load_refuse_nobody(prefork):
    limit = 4
    server = prefork(["-c", str(limit), *QUIET], ["/bin/sh", "-c", "echo hello"])
    assert wait_until(lambda: len(live(board(server))) == 2, 10)
    stop = threading.Event()
    failures: list[str] = []
    served = [0]

    def client() -> None:
        for _ in range(100000):
            if stop.is_set():
                return
            try:
                with connect(server.port, timeout=10) as sock:
                    reply = recv_all(sock, 10)
                if reply != b"hello\n":
                    failures.append(repr(reply))
                served[0] += 1
            except OSError as e:
                failures.append(repr(e))

    threads = [threading.Thread(target=client) for _ in range(6)]  # more than -c: the limit is reached
    for t in threads:
        t.start()
    most = 0
    last = totals(board(server))
    try:
        for sig in (signal.SIGHUP, signal.SIGUSR2, signal.SIGHUP, signal.SIGUSR2):
            before = live(board(server))
            server.proc.send_signal(sig)
            for _ in range(1000):
                most = max(most, count_programs(server.pid))  # the process tree, at one instant
                now = totals(board(server))
                assert now >= last, (now, last)
                last = now
                if replaced(server, before):
                    break
                time.sleep(0.01)
            assert replaced(server, before), (sig, board(server).slots, server.stderr())
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert failures == [] and served[0] > 0
    assert most <= limit
    assert server.stderr() == ""


def test_quit_during_usr2_drains(prefork):
    server = prefork(["--drain-timeout", "20", *PROXIED], ["/bin/echo", "served"])
    assert wait_until(lambda: len(live(board(server))) == 1, 10)
    sock = held_in_header(server)
    server.proc.send_signal(signal.SIGUSR2)
    time.sleep(0.5)  # probed (or probing): the upgrade waits for the held worker either way
    server.proc.send_signal(signal.SIGQUIT)
    time.sleep(0.3)
    assert send_header(sock, server) == b"served\n"
    assert server.proc.wait(timeout=15) == 0
    assert server.stderr() == ""


def test_usr2_under_socket_activation(prefork):
    """The inherited socket goes on being served, and the LISTEN_* variables stay consumed."""
    from test_tcpserver_socket_activation import WRAP, activation_env, listen_vars, listener

    with listener() as sock:
        port = sock.getsockname()[1]
        server = prefork(QUIET, [VIEW], env=activation_env(LISTEN_FDNAMES="x"), wrap=WRAP, stdin=sock.fileno())
    assert server.port == port
    assert wait_until(lambda: len(live(board(server))) == 2, 10)
    first = parse_view(talk(port)[0])
    assert listen_vars(first["env"]) == {}  # type: ignore[arg-type]
    before = live(board(server))
    server.proc.send_signal(signal.SIGUSR2)
    assert wait_until(lambda: replaced(server, before), 15), server.stderr()
    after = parse_view(talk(port)[0])
    for view in (first, after):
        view["env"].pop("TCPREMOTEPORT")  # type: ignore[attr-defined]
    assert after["env"] == first["env"] and sorted(after["fds"]) == [0, 1, 2]  # type: ignore[arg-type]
    assert server.stderr() == ""


def test_usr2_keeps_the_metrics_exporter(prefork):
    from test_metrics_serving import scrape, value

    server = prefork(["--metrics", "127.0.0.1:0", *QUIET], ["/bin/echo", "hi"])
    assert wait_until(lambda: len(live(board(server))) == 2, 10)

    def exporter() -> list[int]:
        return [p.pid for p in psutil.Process(server.pid).children()
                if any("prefork-exporter" in part for part in p.cmdline()[:2])]

    assert wait_until(lambda: len(exporter()) == 1, 10)
    (pid,) = exporter()
    assert talk(server.port)[0] == b"hi\n"
    before = live(board(server))
    server.proc.send_signal(signal.SIGUSR2)
    assert wait_until(lambda: replaced(server, before), 15), server.stderr()
    assert talk(server.port)[0] == b"hi\n"
    assert exporter() == [pid]  # adopted by the new master, not started again
    service = f"127.0.0.1:{server.port}"
    text = wait_until(lambda: (t := scrape(server.metrics_port)) and value(
        t, "tcpserver_connections_accepted_total", service=service) == 2 and t, 15, 0.1)
    assert text, scrape(server.metrics_port)
    assert server.lines() == [f"prefork-exporter: listening on http://127.0.0.1:{server.metrics_port}/metrics"]


def test_hup_whose_new_worker_fails_to_start_keeps_the_old_code(prefork, pkgcopy):
    """Code that imports (the probe passes) but whose worker dies before serving: the reload stops at the
    first slot, which gets a forked worker again (the code the master runs); the other slot keeps its worker."""
    wrap, worker_py = pkgcopy
    server = prefork(QUIET, MARK, wrap=wrap)
    assert wait_until(lambda: len(live(board(server))) == 2, 10)
    before = live(board(server))
    text = worker_py.read_text()
    old = "    def _setup(self) -> None:\n"
    assert old in text
    worker_py.write_text(text.replace(old, old + "        raise RuntimeError('no start on purpose')\n"))
    server.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "reload failed" in server.stderr() and len(live(board(server))) == 2, 15), \
        server.stderr()
    assert wait_until(lambda: live(board(server))[1] == before[1] and live(board(server))[0] != before[0], 10)
    assert marks(server) == {b"mark none\n"}
    lines = server.lines()
    assert len(lines) == 2 and "worker exiting: RuntimeError('no start on purpose')" in lines[0], lines
    assert lines[1].startswith("tcpserver: warning: reload failed: new worker ") and lines[1].endswith(
        " did not start serving; the running code goes on serving"), lines
    worker_py.write_text(text)  # fixed: the next HUP replaces both
    before = live(board(server))
    server.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: replaced(server, before), 15), server.stderr()
    assert len(server.lines()) == 2


def test_ttin_during_hup_acts_at_once(prefork):
    """The held worker keeps slot 0 while it leaves; HUP's successor and TTIN's worker start meanwhile."""
    server = prefork(["--max-workers", "3", *PROXIED], ["/bin/echo", "served"])
    assert wait_until(lambda: len(live(board(server))) == 1, 10)
    first = live(board(server))[0]
    sock = held_in_header(server)
    server.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    server.proc.send_signal(signal.SIGTTIN)  # the reload still waits for the held worker
    assert wait_until(lambda: len(live(board(server))) == 3, 10), board(server).slots
    assert send_header(sock, server) == b"served\n"
    assert wait_until(lambda: len(live(board(server))) == 2 and first not in live(board(server)).values(), 15)
    assert server.stderr() == ""


def test_hup_ignored_at_start_stays_ignored(prefork):
    """Started under nohup: HUP reloads nothing and programs get it ignored (0.88's); USR2 still works."""
    from test_tcpserver_env import SIGWRAP

    server = prefork(QUIET, [VIEW], wrap=[SIGWRAP, "HUP", "--"])
    assert wait_until(lambda: len(live(board(server))) == 2, 10)
    before = live(board(server))
    server.proc.send_signal(signal.SIGHUP)
    view = parse_view(talk(server.port)[0])
    assert view["SigIgn"] & sigbit(signal.SIGHUP)  # type: ignore[operator]
    time.sleep(0.5)
    assert server.proc.poll() is None and live(board(server)) == before and generations(server) == [1, 1]
    server.proc.send_signal(signal.SIGUSR2)
    assert wait_until(lambda: replaced(server, before), 15), server.stderr()
    assert parse_view(talk(server.port)[0])["SigIgn"] & sigbit(signal.SIGHUP)  # type: ignore[operator]
    assert server.stderr() == ""


def test_hup_whose_new_code_adds_a_setting_keeps_the_old_options(prefork, pkgcopy, tmp_path):
    """--options-file: the probe (new code) hands back settings the running master's code does not know:
    one line, no crash, the old workers serve on."""
    wrap, worker_py = pkgcopy
    (tmp_path / "opts").write_text("--workers 1 -H -R -l0 127.0.0.1 0 /bin/echo old")
    server = prefork(["--options-file", "opts"], [], wrap=wrap, operands=False)
    assert wait_until(lambda: len(live(board(server))) == 1, 10)
    config = worker_py.parent / "serverconfig.py"
    text = config.read_text()
    old = '    "host": "",\n'
    assert old in text
    config.write_text(text.replace(old, old + '    "novelty": 0,\n'))
    (tmp_path / "opts").write_text("--workers 1 -H -R -l0 127.0.0.1 0 /bin/echo new")
    server.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: server.stderr(), 15)
    time.sleep(0.3)
    assert one_warning(server), server.stderr()
    assert "reload failed: new settings unknown to the running master" in server.stderr()
    assert talk(server.port)[0] == b"old\n"
    assert generations(server) == [1]
