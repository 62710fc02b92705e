"""svc -p pauses the whole server (docs/ARCHITECTURE.md, "tcpserver: master, workers, scoreboard"; docs/reference/tcpserver.md, Differences).

0.88's tcpserver is one process: SIGSTOP leaves new clients in the backlog until SIGCONT.  prefork's
workers notice their stopped master themselves (supervise signals the master's pid only): nothing is
served, started or counted while it is stopped; afterwards everything is, and running programs run on.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import time
import uuid

import pytest
from conftest import ours, real
from tcpserver_harness import QUIET, TAG_VAR, base_env, connect, kill_procs, recv_all, tagged, wait_until

from prefork import proc, scoreboard_read

CLIENTS = 5
PAUSE_SETTLE = 0.6  # stopped this long before clients come: well past a worker's look at its master
SILENCE = 1.5  # how long paused clients must get nothing
CHAT = ["/bin/sh", "-c", 'echo ready; read line; echo "got $line"']


def board(pid: int) -> scoreboard_read.Snapshot:
    return scoreboard_read.read(f"/dev/shm/prefork-tcpserver.{pid}")


def started(snap: scoreboard_read.Snapshot) -> int:
    """Programs ended plus connections in progress: every accepted connection (no rules, nothing dropped)."""
    return sum(s.exit_zero + s.exit_nonzero + s.exit_signal + s.active for s in snap.slots)


def ends(snap: scoreboard_read.Snapshot) -> int:
    orphans = snap.orphan_exit_zero + snap.orphan_exit_nonzero + snap.orphan_exit_signal
    return sum(s.exit_zero + s.exit_nonzero + s.exit_signal for s in snap.slots) + orphans


def stopped(pid: int) -> bool:
    return proc.state(pid) in ("T", "t")


def assert_silent(socks: list[socket.socket], seconds: float) -> None:
    """No client gets a byte (nor EOF) for SECONDS."""
    readable, _, _ = select.select(socks, [], [], seconds)
    assert not readable, [s.recv(100) for s in readable]


def paused_then_served(pid: int, port: int, pause, resume, counters: bool) -> None:
    """PAUSE the server of master PID, connect CLIENTS clients: none served (nor counted, with COUNTERS)
    while paused; RESUME: all served, counters exact."""
    before = board(pid) if counters else None
    pause()
    assert wait_until(lambda: stopped(pid), 5), proc.state(pid)
    time.sleep(PAUSE_SETTLE)
    socks = []
    try:
        socks = [connect(port) for _ in range(CLIENTS)]
        assert_silent(socks, SILENCE)
        if before is not None:
            now = board(pid)
            assert now.accepted == before.accepted and started(now) == started(before)
    finally:
        resume()
    try:
        assert [recv_all(s) for s in socks] == [b"hi\n"] * CLIENTS
    finally:
        for s in socks:
            s.close()
    if before is not None:
        assert wait_until(lambda: ends(board(pid)) == ends(before) + CLIENTS, 5)
        now = board(pid)
        assert now.accepted == before.accepted + CLIENTS and now.active == 0
        assert all(s.held <= 1 for s in now.slots)  # -c tokens all back: only the one reserved per worker


@pytest.mark.differential
def test_sigstop_pauses_and_sigcont_serves(launch, impl):
    """Same observable result for Debian's tcpserver and prefork's: not served while stopped, served after."""
    server = launch([*QUIET, "-c", "3"], ["/bin/echo", "hi"])
    assert recv_all(connect(server.port)) == b"hi\n"
    counters = impl == "prefork"
    if counters:
        assert wait_until(lambda: ends(board(server.pid)) == 1, 5)
    paused_then_served(server.pid, server.port, lambda: os.kill(server.pid, signal.SIGSTOP),
                       lambda: os.kill(server.pid, signal.SIGCONT), counters)


def test_paused_log_says_nothing_until_continued(prefork):
    """With -v no line is written for a held client: its status, pid and ok lines come after SIGCONT."""
    server = prefork(["-v", *QUIET], ["/bin/echo", "hi"])
    assert wait_until(lambda: len(server.workers()) == 2, 5)
    os.kill(server.pid, signal.SIGSTOP)
    try:
        assert wait_until(lambda: stopped(server.pid), 5)
        time.sleep(PAUSE_SETTLE)
        with connect(server.port) as sock:
            assert_silent([sock], SILENCE)
            assert server.lines() == ["tcpserver: status: 0/40"]
            os.kill(server.pid, signal.SIGCONT)
            assert recv_all(sock) == b"hi\n"
    finally:
        os.kill(server.pid, signal.SIGCONT)
    lines = server.wait_ends(1)
    assert [line.split()[1] for line in lines] == ["status:", "status:", "pid", "ok", "end", "status:"]


def test_running_program_runs_on_and_its_end_is_counted(prefork):
    """A program running when the master stops goes on serving its client; its end is counted by SIGCONT."""
    server = prefork(QUIET, CHAT)
    with connect(server.port) as sock:
        assert sock.recv(100) == b"ready\n"
        os.kill(server.pid, signal.SIGSTOP)
        try:
            assert wait_until(lambda: stopped(server.pid), 5)
            time.sleep(PAUSE_SETTLE)
            sock.sendall(b"hello\n")
            assert recv_all(sock) == b"got hello\n"
        finally:
            os.kill(server.pid, signal.SIGCONT)
    assert wait_until(lambda: ends(board(server.pid)) == 1, 5)
    assert board(server.pid).active == 0


# -- under supervise: svc -p / svc -c signal the master's pid only ------------------------------------------------
@pytest.mark.parametrize("daemontools", ["prefork", "debian"])
def test_svc_pause_and_continue(tmp_path, daemontools):
    """`svc -p` stops the server (prefork's supervise, or Debian's), `svc -c` lets it serve again."""
    tool = ours if daemontools == "prefork" else real
    supervise, svc = tool("supervise"), tool("svc")
    service = tmp_path / "srv"
    service.mkdir()
    run = service / "run"
    run.write_text(f"#!/bin/sh\nexec {ours('tcpserver')} --workers 2 -1 -H -R -l0 127.0.0.1 0 /bin/echo hi"
                   " >port 2>err\n")
    run.chmod(0o755)
    tag = uuid.uuid4().hex
    sup = subprocess.Popen([supervise, str(service)], env=base_env(**{TAG_VAR: tag}), cwd=tmp_path,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    master = 0
    try:
        port_file = service / "port"
        assert wait_until(lambda: port_file.exists() and port_file.read_bytes().endswith(b"\n"), 15)
        port = int(port_file.read_bytes())
        master = next(p.pid for p in tagged(tag) if p.ppid() == sup.pid)
        assert recv_all(connect(port)) == b"hi\n"
        assert wait_until(lambda: ends(board(master)) == 1, 5)

        def svc_do(flag: str) -> None:
            subprocess.run([svc, flag, str(service)], check=True, timeout=10, env=base_env())

        paused_then_served(master, port, lambda: svc_do("-p"), lambda: svc_do("-c"), True)
    finally:
        with contextlib.suppress(OSError):
            if master:
                os.kill(master, signal.SIGCONT)
        procs = tagged(tag)
        kill_procs(procs)
        if sup.poll() is None:
            sup.kill()
        sup.wait(timeout=10)
        if master:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"/dev/shm/prefork-tcpserver.{master}")


def test_proc_state_reads_field_three_after_the_last_parenthesis(tmp_path, monkeypatch):
    """The command name may hold ") T (": the state is the field after the last ")"; gone or empty is None."""
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "stat").write_bytes(b"7 (a) R (b) t 1 7 7 0 -1\n")
    (tmp_path / "8").mkdir()
    (tmp_path / "8" / "stat").write_bytes(b"")
    monkeypatch.setattr(proc, "PROC", str(tmp_path))
    assert proc.state(7) == "t"
    assert proc.state(8) is None and proc.state(9) is None and proc.state(0) is None


def test_own_state_is_running():
    assert proc.state(os.getpid()) == "R"
