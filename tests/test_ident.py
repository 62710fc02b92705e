"""RFC 1413 client (prefork.ident) against stub ident servers on 127.0.0.1 (docs/CONTRACTS.md, Ident lookups)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from prefork.ident import MAX_INFO, IdentReply, ident_query, parse_ident_reply

Handler = Callable[[socket.socket, bytes], None]


class StubServer:
    """A TCP server on 127.0.0.1 (port 0 unless told) running HANDLER(conn, first_line) per connection.

    Bounded: accept polls a stop event, every handler gets a 10 s socket
    timeout, close() joins all threads with a timeout.
    """

    def __init__(self, handler: Handler, port: int = 0, host: str = "127.0.0.1", read_line: bool = True) -> None:
        self.handler = handler
        self.read_line = read_line
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.listener.bind((host, port))
        except OSError:
            self.listener.close()
            raise
        self.listener.listen(16)
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        self.queries: list[bytes] = []
        self.peers: list[tuple[str, int]] = []
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self) -> None:
        deadline = time.monotonic() + 120
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                conn, peer = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self.lock:
                self.peers.append(peer)
            worker = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(worker)
            worker.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            line = b""
            try:
                if self.read_line:
                    while not line.endswith(b"\n") and len(line) < 1000:
                        chunk = conn.recv(1)
                        if not chunk:
                            break
                        line += chunk
                with self.lock:
                    self.queries.append(line)
                self.handler(conn, line)
            except OSError:
                pass

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        self.acceptor.join(5)
        for worker in self.threads:
            worker.join(5)


def reply_with(data: bytes, hold: bool = False, stop: threading.Event | None = None) -> Handler:
    """A handler sending DATA, then closing (or holding the connection open until STOP)."""

    def handler(conn: socket.socket, line: bytes) -> None:
        conn.sendall(data)
        if hold and stop is not None:
            stop.wait(10)

    return handler


@pytest.fixture
def stub():
    servers: list[StubServer] = []

    def start(handler: Handler, **kwargs) -> StubServer:
        server = StubServer(handler, **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def closed_port() -> tuple[socket.socket, int]:
    """A 127.0.0.1 port that refuses connections: bound, never listening (kept bound by the caller)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock, sock.getsockname()[1]


# -- reply parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, expected",
    [
        (b"6193, 23 : USERID : UNIX : joe\r\n", "joe"),
        (b"6193 , 23 : USERID : UNIX,US-ASCII : a:b c\td\r\n", "a:bcd"),
        (b"6193, 23 : ERROR : NO-USER\r\n", ""),
        (b"6193, 23 : ERROR : UNKNOWN-ERROR\n", ""),
        (b"garbage without colons\r\n", ""),
        (b"1,2:USERID:UNIX:joe", "joe"),
        (b"1,2:USERID:UNIX:joe\nsecond line\n", "joe"),
        (b"1,2:USERID:OTHER:\r\n", ""),
        (b"\t1 ,\t2 \r: USERID :UNIX :  j o e \r\r\n", "joe"),
    ],
)
def test_parse_ident_reply(line: bytes, expected: str) -> None:
    assert parse_ident_reply(line) == expected


def test_long_reply_keeps_257_bytes() -> None:
    body = bytes(range(33, 127)) * 4  # 376 printable bytes, no blanks
    value = parse_ident_reply(b"1,2:USERID:UNIX:" + body + b"\r\n")
    assert os.fsencode(value) == body[: MAX_INFO + 1]
    exact = b"x" * MAX_INFO
    assert parse_ident_reply(b"1,2:USERID:UNIX:" + exact + b"\n") == exact.decode()


def test_reply_bytes_survive_as_surrogates() -> None:
    value = parse_ident_reply(b"1,2:USERID:UNIX:\xff\xfej\n")
    assert os.fsencode(value) == b"\xff\xfej"


def test_incremental_parser_matches_whole_line() -> None:
    line = b"6193 , 23 : USERID : UNIX,US-ASCII : a:b c\td\r\ntrailing"
    reply = IdentReply()
    results = [reply.feed(line[i : i + 1]) for i in range(len(line))]
    assert results.index(True) == line.index(b"\n")
    assert reply.value == "a:bcd"
    assert reply.done


def test_parser_completes_at_257_without_newline() -> None:
    reply = IdentReply()
    assert not reply.feed(b"1,2:USERID:UNIX:" + b"y" * MAX_INFO)
    assert reply.feed(b"yz")
    assert reply.value == "y" * (MAX_INFO + 1)


# -- queries against stub servers ----------------------------------------------------------------


def test_query_format_and_answer(stub) -> None:
    server = stub(reply_with(b"7000 , 8000 : USERID : UNIX : joe\r\n"))
    assert ident_query("127.0.0.1", 8000, "127.0.0.1", 7000, 5, ident_port=server.port) == "joe"
    assert server.queries == [b"7000 , 8000\r\n"]


@pytest.mark.parametrize(
    "reply, expected",
    [
        (b"1 , 2 : USERID : UNIX,US-ASCII : a:b c\td\r\n", "a:bcd"),
        (b"1 , 2 : ERROR : NO-USER\r\n", ""),
        (b"1 , 2 : ERROR : HIDDEN-USER\r\n", ""),
        (b"1,2:USERID:UNIX:\xe9t\xe9\r\n", os.fsdecode(b"\xe9t\xe9")),
    ],
)
def test_reply_forms(stub, reply: bytes, expected: str) -> None:
    server = stub(reply_with(reply))
    assert ident_query("127.0.0.1", 2, "127.0.0.1", 1, 5, ident_port=server.port) == expected


def test_long_reply_without_newline_or_eof_completes(stub) -> None:
    stop = threading.Event()
    server = stub(reply_with(b"1,2:USERID:UNIX:" + b"z" * 1000, hold=True, stop=stop))
    started = time.monotonic()
    try:
        value = ident_query("127.0.0.1", 2, "127.0.0.1", 1, 5, ident_port=server.port)
    finally:
        stop.set()
    assert value == "z" * (MAX_INFO + 1)
    assert time.monotonic() - started < 4


def test_reply_in_small_pieces(stub) -> None:
    def trickle(conn: socket.socket, line: bytes) -> None:
        for piece in (b"1 , 2 :", b" USERID ", b": UNIX : ", b"ann", b"e\r", b"\n"):
            conn.sendall(piece)
            time.sleep(0.02)

    server = stub(trickle)
    assert ident_query("127.0.0.1", 2, "127.0.0.1", 1, 5, ident_port=server.port) == "anne"


def test_eof_before_newline_fails(stub) -> None:
    server = stub(reply_with(b"1 , 2 : USERID : UNIX : joe"))
    assert ident_query("127.0.0.1", 2, "127.0.0.1", 1, 5, ident_port=server.port) is None


def test_close_without_reading_fails(stub) -> None:
    server = stub(lambda conn, line: None, read_line=False)
    assert ident_query("127.0.0.1", 2, "127.0.0.1", 1, 5, ident_port=server.port) is None


def test_refused_fails_fast() -> None:
    holder, port = closed_port()
    with holder:
        started = time.monotonic()
        assert ident_query("127.0.0.1", 2, "127.0.0.1", 1, 5, ident_port=port) is None
        assert time.monotonic() - started < 2


@pytest.mark.parametrize("timeout", [0.5, 0])
def test_silence_times_out(stub, timeout: float) -> None:
    stop = threading.Event()
    server = stub(reply_with(b"1 , 2 : USERID", hold=True, stop=stop))
    started = time.monotonic()
    try:
        assert ident_query("127.0.0.1", 2, "127.0.0.1", 1, timeout, ident_port=server.port) is None
    finally:
        stop.set()
    elapsed = time.monotonic() - started
    assert timeout <= elapsed + 0.05
    assert elapsed < timeout + 2


def test_endless_blanks_are_bounded_by_the_timeout(stub) -> None:
    stop = threading.Event()

    def blanks(conn: socket.socket, line: bytes) -> None:
        conn.settimeout(0.5)
        for _ in range(100000):
            if stop.is_set():
                return
            conn.sendall(b" " * 4096)

    server = stub(blanks)
    started = time.monotonic()
    try:
        assert ident_query("127.0.0.1", 2, "127.0.0.1", 1, 0.5, ident_port=server.port) is None
    finally:
        stop.set()
    assert time.monotonic() - started < 3


def test_query_is_bound_to_the_local_ip(stub) -> None:
    server = stub(reply_with(b"1 , 2 : USERID : UNIX : joe\r\n"))
    assert ident_query("127.0.0.2", 2, "127.0.0.1", 1, 5, ident_port=server.port) == "joe"
    assert server.peers[0][0] == "127.0.0.2"


def test_concurrent_queries_do_not_mix(stub) -> None:
    def per_query(conn: socket.socket, line: bytes) -> None:
        rport = line.split(b",")[0].strip()
        time.sleep(0.05)
        conn.sendall(line.strip() + b" : USERID : UNIX : user" + rport + b"\r\n")

    server = stub(per_query)
    ports = list(range(1000, 1016))
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(
            pool.map(lambda p: ident_query("127.0.0.1", 9, "127.0.0.1", p, 10, ident_port=server.port), ports)
        )
    assert answers == [f"user{p}" for p in ports]
    assert sorted(server.queries) == sorted(b"%d , 9\r\n" % p for p in ports)
