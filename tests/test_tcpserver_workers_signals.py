"""tcpserver's gunicorn-style QUIT, TTIN and TTOU (docs/reference/tcpserver.md, Signals; prefork/master.py).

``-c 2`` with two workers makes the placement of two held connections certain: each worker holds one
token for its next accept, so the worker that accepted first cannot take another and the second
connection goes to the other worker.
"""

from __future__ import annotations

import signal
import socket
import time

import pytest
from tcpserver_harness import QUIET, check_order, connect, recv_all, recv_line, wait_until

from prefork.scoreboard_read import Snapshot, read

CHAT = ["/bin/sh", "-c", 'echo ready; read line; echo "got $line"']


def board(server) -> Snapshot:
    return read(f"/dev/shm/prefork-tcpserver.{server.pid}")


def live(snap: Snapshot) -> list[int]:
    """Indices of the slots with a live worker."""
    return [s.index for s in snap.slots if s.pid and s.state in ("starting", "ready", "waiting")]


def not_served(port: int) -> bool:
    """A new client is refused, or reset / closed without a byte of the program's."""
    try:
        with connect(port, timeout=2) as sock:
            try:
                return recv_all(sock, 2) == b""
            except OSError:
                return True
    except OSError:
        return True


def finish(sock: socket.socket, word: bytes) -> bytes:
    sock.sendall(word + b"\n")
    return recv_all(sock)


def two_held(server) -> tuple[socket.socket, socket.socket]:
    """Two connections in progress, one on each of the two workers (-c 2: see the module's docstring)."""
    socks = []
    for _ in range(2):
        sock = connect(server.port)
        assert recv_line(sock) == b"ready\n"
        socks.append(sock)
    assert wait_until(lambda: [s.accepted for s in board(server).slots][:2] == [1, 1], 5), board(server).slots
    return socks[0], socks[1]


def test_ttin_adds_a_worker_that_serves(prefork):
    server = prefork(["-c", "2", "--workers", "1", "--max-workers", "2", *QUIET], CHAT)
    assert wait_until(lambda: len(server.workers()) == 1 and live(board(server)) == [0], 10)
    assert len(board(server).slots) == 2
    server.proc.send_signal(signal.SIGTTIN)
    assert wait_until(lambda: len(server.workers()) == 2 and live(board(server)) == [0, 1], 10)
    first, second = two_held(server)  # the new worker took one of them
    assert finish(first, b"a") == b"got a\n"
    assert finish(second, b"b") == b"got b\n"
    first.close()
    second.close()
    assert server.proc.poll() is None and server.stderr() == ""


def test_ttin_at_max_workers_is_refused_with_a_warning(prefork):
    server = prefork(["--workers", "1", *QUIET], CHAT)
    assert wait_until(lambda: len(server.workers()) == 1, 10)
    server.proc.send_signal(signal.SIGTTIN)
    assert wait_until(lambda: "TTIN ignored" in server.stderr(), 5), server.stderr()
    assert len(server.workers()) == 1 and live(board(server)) == [0]


def test_ttou_removes_a_worker_and_its_connection_completes(prefork):
    server = prefork(["-c", "2", "--workers", "2", *QUIET], CHAT)
    assert wait_until(lambda: len(server.workers()) == 2, 10)
    first, second = two_held(server)
    leaving = board(server).slots[1].pid
    server.proc.send_signal(signal.SIGTTOU)
    # a worker is gone from server.workers() as a zombie, before the master has reaped it: wait for both
    assert wait_until(lambda: {w.pid for w in server.workers()} == {board(server).slots[0].pid}
                      and live(board(server)) == [0], 10)
    snap = board(server)
    assert (snap.slots[1].pid, snap.slots[1].state) == (0, "empty")
    assert snap.orphans == 1 and snap.active == 2  # the removed worker's program still counts against -c
    assert leaving not in {w.pid for w in server.workers()}
    assert finish(first, b"one") == b"got one\n"
    assert finish(second, b"two") == b"got two\n"
    first.close()
    second.close()
    assert wait_until(lambda: board(server).active == 0 and board(server).orphans == 0, 10)
    # -c 2 again in full with the one worker left: both tokens came back
    socks = [connect(server.port) for _ in range(2)]
    assert [recv_line(s) for s in socks] == [b"ready\n", b"ready\n"]
    assert [finish(s, b"x") for s in socks] == [b"got x\n", b"got x\n"]
    for s in socks:
        s.close()

    def exits() -> int:
        snap = board(server)
        return sum(s.exit_zero for s in snap.slots) + snap.orphan_exit_zero

    assert wait_until(lambda: exits() == 4, 10), exits()
    assert board(server).orphan_exit_zero == 1  # the removed worker's program, reaped by the master


def test_ttou_with_v_logs_the_handed_over_program_once(prefork):
    """-v: the removed worker's program gets its end line from the master, once, after its pid/ok lines."""
    server = prefork(["-v", "-c", "2", "--workers", "2", *QUIET], CHAT)
    assert wait_until(lambda: len(server.workers()) == 2, 10)
    first, second = two_held(server)
    server.proc.send_signal(signal.SIGTTOU)
    assert wait_until(lambda: len(server.workers()) == 1 and board(server).orphans == 1, 10)
    assert finish(first, b"one") == b"got one\n"
    assert finish(second, b"two") == b"got two\n"
    first.close()
    second.close()
    lines = server.wait_ends(2)
    assert wait_until(lambda: board(server).active == 0, 10)
    check_order(server.lines())
    assert sum(1 for line in lines if line.startswith("tcpserver: end ")) == 2, lines


def test_ttou_at_one_worker_is_a_no_op(prefork):
    server = prefork(["--workers", "1", *QUIET], CHAT)
    assert wait_until(lambda: len(server.workers()) == 1, 10)
    worker = server.workers()[0].pid
    server.proc.send_signal(signal.SIGTTOU)
    assert wait_until(lambda: "TTOU ignored" in server.stderr(), 5), server.stderr()
    assert [w.pid for w in server.workers()] == [worker]
    with connect(server.port) as sock:
        assert recv_line(sock) == b"ready\n"
        assert finish(sock, b"still") == b"got still\n"


def test_quit_drains_and_exits_zero(prefork):
    server = prefork(["--drain-timeout", "20", *QUIET], CHAT)
    assert wait_until(lambda: len(server.workers()) == 2, 10)
    path = f"/dev/shm/prefork-tcpserver.{server.pid}"
    with connect(server.port) as sock:
        assert recv_line(sock) == b"ready\n"
        server.proc.send_signal(signal.SIGQUIT)
        assert wait_until(lambda: not server.workers(), 10)
        assert not_served(server.port)
        assert wait_until(lambda: board(server).orphans == 1 and live(board(server)) == [], 10)
        assert server.proc.poll() is None  # still waiting for the program
        assert finish(sock, b"late") == b"got late\n"
    assert server.proc.wait(timeout=10) == 0
    assert server.stderr() == ""
    with pytest.raises(FileNotFoundError):
        read(path)


def test_quit_past_drain_timeout_terms_programs(prefork):
    server = prefork(["--drain-timeout", "1", *QUIET], ["/bin/sh", "-c", "echo ready; exec sleep 60"])
    assert wait_until(lambda: len(server.workers()) == 2, 10)
    with connect(server.port) as sock:
        assert recv_line(sock) == b"ready\n"
        started = time.monotonic()
        server.proc.send_signal(signal.SIGQUIT)
        assert server.proc.wait(timeout=10) == 0
        assert 0.9 <= time.monotonic() - started < 8
        assert recv_all(sock, 5) == b""  # the program got TERM: its end of the socket closed
    assert "drain timeout: 1 programs sent TERM" in server.stderr()


def test_quit_twice_and_ttin_during_drain(prefork):
    server = prefork(["--workers", "1", "--max-workers", "3", "--drain-timeout", "20", *QUIET], CHAT)
    assert wait_until(lambda: len(server.workers()) == 1, 10)
    with connect(server.port) as sock:
        assert recv_line(sock) == b"ready\n"
        server.proc.send_signal(signal.SIGQUIT)
        assert wait_until(lambda: not server.workers() and board(server).orphans == 1, 10)
        for sig in (signal.SIGQUIT, signal.SIGTTIN, signal.SIGTTOU):
            server.proc.send_signal(sig)
        time.sleep(0.5)
        assert server.proc.poll() is None and not server.workers()  # nothing started, the drain goes on
        assert live(board(server)) == []
        assert finish(sock, b"end") == b"got end\n"
    assert server.proc.wait(timeout=10) == 0
    assert server.stderr() == ""
