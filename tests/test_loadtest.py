"""Smoke test of the load generator against a tiny in-process server (no wall-clock speed asserted)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from loadtest.loadgen import ERROR_KINDS, merge, parse_expect, percentile, run_load


class HelloServer:
    """127.0.0.1:0 listener in a thread: writes `hello\\n` to every client and closes; stops within 0.2 s."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                try:
                    conn.sendall(b"hello\n")
                except OSError:
                    pass

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(2.0)
        self.sock.close()


@pytest.fixture
def hello_server() -> Iterator[HelloServer]:
    server = HelloServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.close()


def test_counts_connections_without_errors(hello_server: HelloServer) -> None:
    r = run_load(hello_server.port, b"hello\n", clients=2, seconds=1.0, timeout=2.0)
    assert r.connections > 0
    assert r.conn_per_s > 0
    assert r.errors == dict.fromkeys(ERROR_KINDS, 0)
    assert 0 < r.p50_ms <= r.p99_ms <= r.max_ms


def test_wrong_reply_is_an_error(hello_server: HelloServer) -> None:
    r = run_load(hello_server.port, b"goodbye\n", clients=2, seconds=0.5, connections=40, timeout=2.0)
    assert r.connections == 0
    assert r.errors["wrong_reply"] == 40
    assert r.error_total == 40


def test_refused_is_counted() -> None:
    with socket.socket() as s:  # a port that was just free: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = run_load(port, b"hello\n", clients=1, seconds=0.5, connections=5, timeout=1.0)
    assert r.errors["refused"] == 5 and r.connections == 0


def test_merge_and_helpers(hello_server: HelloServer) -> None:
    a = run_load(hello_server.port, b"hello\n", clients=1, seconds=0.3, connections=10, timeout=2.0)
    b = run_load(hello_server.port, b"hello\n", clients=1, seconds=0.3, connections=10, timeout=2.0)
    total = merge([a, b])
    assert total.connections == a.connections + b.connections == 20
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert percentile([], 99) == 0.0
    assert parse_expect("hello\\n") == b"hello\n"
