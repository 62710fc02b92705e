"""tcpserver signals and misbehaving clients (docs/CONTRACTS.md, tcpserver concurrency and signals; docs/ARCHITECTURE.md, "tcpserver: master, workers, scoreboard")."""

from __future__ import annotations

import os
import signal
import socket
import struct
import threading
import time

import psutil
import pytest
from tcpserver_harness import (
    QUIET,
    SINK,
    connect,
    recv_all,
    recv_line,
    tagged_pids,
    talk,
    wait_until,
    zombies_under,
)

CHAT = ["/bin/sh", "-c", 'echo ready; read line; echo "got $line"']


def refused(port: int, host: str = "127.0.0.1") -> bool:
    """Nothing listens on PORT any more.  A reset means a listener was closing as we connected (a worker
    ending after its master): not refused yet, the caller asks again."""
    try:
        with connect(port, host, timeout=2):
            return False
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        return False


def live_tagged(server) -> list[int]:
    """Processes started by the server (master, workers, programs) that are still running."""
    out = []
    for pid in tagged_pids(server.tag):
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.Error:
            continue
    return out


def test_sigterm_exits_and_running_program_keeps_serving(launch):
    server = launch(QUIET, CHAT)
    with connect(server.port) as sock:
        assert recv_line(sock) == b"ready\n"
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=5) == 0
        assert server.stderr() == ""
        assert wait_until(lambda: refused(server.port), 5), "listening port still accepts after SIGTERM"
        sock.sendall(b"hello\n")
        assert recv_all(sock) == b"got hello\n"
    # once the program is done nothing of the server is left (prefork's workers are gone too)
    assert wait_until(lambda: not live_tagged(server), 5), live_tagged(server)


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGINT, signal.SIGUSR1, signal.SIGALRM])
def test_other_signals_have_default_action(launch, sig):
    if sig == signal.SIGHUP and launch.impl == "prefork":
        pytest.skip("prefork reloads on HUP (docs/reference/tcpserver.md, Signals; tests/test_tcpserver_reload.py)")
    server = launch(QUIET, ["/bin/echo", "hi"])
    assert talk(server.port)[0] == b"hi\n"
    server.proc.send_signal(sig)
    assert server.proc.wait(timeout=5) == -sig
    assert wait_until(lambda: refused(server.port), 5)


def test_sigpipe_ignored(launch):
    """SIGPIPE must not kill the server (a -B banner to a client that already reset)."""
    server = launch([*QUIET, "-B" + "x" * 100000], ["/bin/echo", "hi"])
    for _ in range(5):
        sock = connect(server.port)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    time.sleep(0.2)
    assert server.proc.poll() is None
    with connect(server.port) as sock:
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock).endswith(b"hi\n")


def test_vanishing_silent_and_flooding_clients(launch):
    server = launch(QUIET, [SINK])
    # connect and vanish at once, with FIN and with RST
    for linger in (False, True) * 10:
        sock = connect(server.port)
        if linger:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    silent = [connect(server.port) for _ in range(5)]
    flood_stop = threading.Event()
    flooders = [connect(server.port) for _ in range(3)]
    sent = [0] * len(flooders)

    def flood(i: int) -> None:
        block = b"z" * 65536
        sock = flooders[i]
        sock.settimeout(0.5)
        while not flood_stop.is_set():
            try:
                sent[i] += sock.send(block)
            except TimeoutError:
                continue
            except OSError:
                return

    threads = [threading.Thread(target=flood, args=(i,)) for i in range(len(flooders))]
    for t in threads:
        t.start()
    try:
        for _ in range(5):
            assert talk(server.port, b"hello")[0] == b"read 5\n"
        assert wait_until(lambda: min(sent) > 1 << 20, 20), sent
    finally:
        flood_stop.set()
        for t in threads:
            t.join(5)
    for i, sock in enumerate(flooders):
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock, 20) == f"read {sent[i]}\n".encode()
        sock.close()
    for sock in silent:
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b"read 0\n"
        sock.close()
    assert talk(server.port, b"bye")[0] == b"read 3\n"
    assert wait_until(lambda: not zombies_under(server.pid), 5), zombies_under(server.pid)


# ---- prefork only -----------------------------------------------------------------------------


def test_master_sigkill_frees_port(prefork):
    server = prefork(QUIET, ["/bin/echo", "hi"])
    assert wait_until(lambda: len(server.workers()) == 2, 10)
    workers = server.workers()
    assert talk(server.port)[0] == b"hi\n"
    server.proc.kill()
    server.proc.wait(5)
    gone, alive = psutil.wait_procs(workers, timeout=5)
    assert not alive, f"workers still running after the master was killed: {alive}"

    def bindable() -> bool:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", server.port))
                s.listen(1)
            except OSError:
                return False
            return True

    assert wait_until(bindable, 5), "port still held after the master was killed"


def test_worker_sigkill_is_replaced(prefork):
    server = prefork(QUIET, ["/bin/echo", "hi"])
    assert wait_until(lambda: len(server.workers()) == 2, 10)
    before = {w.pid for w in server.workers()}
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: len(server.workers()) == 2 and victim not in {w.pid for w in server.workers()}, 10)
    after = {w.pid for w in server.workers()}
    assert len(after - before) == 1
    for _ in range(20):
        assert talk(server.port)[0] == b"hi\n"
    assert wait_until(lambda: not zombies_under(server.pid), 5), zombies_under(server.pid)
    assert server.proc.poll() is None


def test_worker_count(prefork):
    server = prefork(QUIET, ["/bin/echo", "hi"])
    assert wait_until(lambda: len(server.workers()) == 2, 10)
    assert len(psutil.Process(server.pid).children()) == 2


def test_scoreboard_default_path_removed_on_sigterm(prefork):
    server = prefork(QUIET, ["/bin/echo", "hi"])
    board = f"/dev/shm/prefork-tcpserver.{server.pid}"
    assert talk(server.port)[0] == b"hi\n"
    assert os.path.getsize(board) > 0
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=5) == 0
    assert wait_until(lambda: not os.path.exists(board), 5), f"{board} left behind after SIGTERM"


def test_scoreboard_given_path(prefork, tmp_path):
    board = tmp_path / "board"
    before = time.time()
    server = prefork(["--scoreboard", str(board), *QUIET], ["/bin/echo", "hi"])
    assert talk(server.port)[0] == b"hi\n"
    assert board.stat().st_size > 0
    default = f"/dev/shm/prefork-tcpserver.{server.pid}"
    # (a file of that name may be left from an earlier, SIGKILLed master that had the same pid)
    assert not os.path.exists(default) or os.stat(default).st_mtime < before
