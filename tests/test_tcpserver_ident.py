"""tcpserver -r: the ident (RFC 1413) lookup for TCPREMOTEINFO (docs/CONTRACTS.md, Ident lookups; tcpserver connection sequence step 7), and that a
stalled lookup does not hold up other clients (docs/ARCHITECTURE.md, "tcpserver: master, workers, scoreboard").

Each test runs stub ident servers on random 127/8 addresses, port 113 (tests run as root), and
connects its clients FROM those addresses, so the server's ident query goes to the stub.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import subprocess
import threading
import time

import pytest
from tcpserver_harness import (
    STATUS_RE,
    TAG_VAR,
    VIEW,
    by_connection,
    check_order,
    connect,
    normalise,
    parse_view,
    random_loopback,
    recv_all,
    talk,
    wait_until,
)

pytestmark = pytest.mark.differential


class IdentStub:
    """An ident server on ADDRESS:113.  REPLY(query) returns the bytes to send (then close), or
    None to never answer (the connection is held until the stub stops)."""

    def __init__(self, reply):
        self.reply = reply
        self.queries: list[tuple[str, bytes]] = []
        self.stop = threading.Event()
        self.held: list[socket.socket] = []
        for _ in range(20):
            self.address = random_loopback()
            self.listener = socket.socket()
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                self.listener.bind((self.address, 113))
                break
            except OSError as exc:
                self.listener.close()
                if exc.errno != errno.EADDRINUSE:
                    raise
        self.listener.listen(50)
        self.listener.settimeout(0.1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, peer = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn, peer), daemon=True).start()

    def _answer(self, conn: socket.socket, peer) -> None:
        conn.settimeout(10)
        query = b""
        with contextlib.suppress(OSError):
            while b"\n" not in query:
                chunk = conn.recv(1024)
                if not chunk:
                    break
                query += chunk
        self.queries.append((peer[0], query))
        answer = self.reply(query)
        if answer is None:
            self.held.append(conn)
            return
        with contextlib.suppress(OSError):
            conn.sendall(answer)
        conn.close()

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        self.thread.join(5)
        for conn in self.held:
            conn.close()


@pytest.fixture
def stubs():
    made: list[IdentStub] = []

    def make(reply) -> IdentStub:
        stub = IdentStub(reply)
        made.append(stub)
        return stub

    yield make
    for stub in made:
        stub.close()


def answer(text: bytes):
    return lambda query: query.strip(b"\r\n") + b" : " + text


IDENT = ["-H", "-r", "-t", "5", "-l0", "-v"]


@pytest.mark.parametrize(
    ("reply", "info"),
    [
        (answer(b"USERID : UNIX : joe\r\n"), "joe"),
        (answer(b"USERID : UNIX,US-ASCII : a:b c\td\r\n"), "a:bcd"),
        (answer(b"ERROR : NO-USER\r\n"), ""),
        (answer(b"USERID:UNIX:" + b"y" * 300 + b"\r\n"), "y" * 257),
        (lambda query: b"garbage without newline", None),
        (lambda query: b"", None),
        (answer(b"USERID : UNIX : jo\0e\r\n"), "jo"),
        (answer(b"USERID : UNIX : \0joe\r\n"), ""),
        (answer(b"USERID : UNIX : " + b"y" * 200 + b"\0z\r\n"), "y" * 200),
        (answer(b"USERID : UNIX : j\x01\x7f%o=e\r\n"), "j\x01\x7f%o=e"),
    ],
    ids=["joe", "colons-spaces", "error", "long", "no-newline", "eof", "nul", "nul-first", "long-nul", "control"],
)
def test_ident_result(launch, stubs, reply, info):
    stub = stubs(reply)
    server = launch(IDENT, [VIEW])
    reply_bytes, cport = talk(server.port, source=stub.address)
    env = parse_view(reply_bytes)["env"]
    env.pop(TAG_VAR)
    assert env.get("TCPREMOTEINFO") == info
    assert env["TCPREMOTEIP"] == stub.address
    assert stub.queries == [("127.0.0.1", f"{cport} , {server.port}\r\n".encode())]
    lines = normalise(server.wait_ends(1), server.port, [cport])
    shown = (
        ""
        if info is None
        else "".join("?" if c in "%:" or not 33 <= ord(c) <= 126 else c for c in info[:100]) + ("..." if len(info) >= 100 else "")
    )
    assert lines[3] == f"tcpserver: ok #1 0:127.0.0.1:PORT :{stub.address}:{shown}:RPORT"


def test_ident_refused_is_unset(launch):
    source = random_loopback()  # nothing listens on SOURCE:113
    server = launch(IDENT, [VIEW])
    env = parse_view(talk(server.port, source=source)[0])["env"]
    assert "TCPREMOTEINFO" not in env and env["TCPREMOTEIP"] == source


def test_ident_query_from_local_address(launch, stubs):
    """The ident socket is bound to the connection's local IP (here a 127/8 address other than .1)."""
    stub = stubs(answer(b"USERID : UNIX : ann\r\n"))
    local = random_loopback()
    server = launch(IDENT, [VIEW], host=local)
    reply, cport = talk(server.port, host=local, source=stub.address)
    assert parse_view(reply)["env"]["TCPREMOTEINFO"] == "ann"
    assert stub.queries == [(local, f"{cport} , {server.port}\r\n".encode())]


def test_ident_rules_use_info(launch, stubs, tmp_path):
    """Rule key INFO@IP (docs/CONTRACTS.md, Rules lookup order step 1) sees the ident answer."""
    stub = stubs(answer(b"USERID : UNIX : joe\r\n"))
    cdb = tmp_path / "rules.cdb"
    rules = f'joe@{stub.address}:allow,WHO="joe"\n:deny\n'
    subprocess.run(["/usr/bin/tcprules", str(cdb), f"{cdb}.tmp"], input=rules.encode(), check=True)
    server = launch([*IDENT, "-x", str(cdb)], [VIEW])
    env = parse_view(talk(server.port, source=stub.address)[0])["env"]
    assert (env["WHO"], env["TCPREMOTEINFO"]) == ("joe", "joe")


def test_stalled_ident_does_not_block_others(launch, stubs):
    """Four clients whose ident server never answers (more than prefork's two workers), then four
    whose ident answers: the answered ones are all served before any stalled one, and the stalled
    ones are served after the -t timeout with TCPREMOTEINFO unset."""
    stalled = stubs(lambda query: None)
    fine = stubs(answer(b"USERID : UNIX : joe\r\n"))
    server = launch(IDENT, [VIEW])
    done: list[tuple[str, float, dict]] = []
    lock = threading.Lock()

    def client(source: str) -> None:
        try:
            reply, _ = talk(server.port, source=source, timeout=30)
            env = parse_view(reply)["env"]
        except Exception as exc:  # noqa: BLE001 - reported by the assertions below
            env = {"error": repr(exc)}
        with lock:
            done.append((source, time.monotonic(), env))

    threads = [threading.Thread(target=client, args=(stalled.address,)) for _ in range(4)]
    for t in threads:
        t.start()
    assert_wait = time.monotonic() + 10
    while len(stalled.queries) < 4 and time.monotonic() < assert_wait:
        time.sleep(0.02)
    assert len(stalled.queries) == 4, "the stalled clients' ident queries did not all arrive"
    more = [threading.Thread(target=client, args=(fine.address,)) for _ in range(4)]
    for t in more:
        t.start()
    for t in threads + more:
        t.join(40)
    assert len(done) == 8
    fine_done = [d for d in done if d[0] == fine.address]
    stalled_done = [d for d in done if d[0] == stalled.address]
    assert all(env.get("TCPREMOTEINFO") == "joe" for _, _, env in fine_done), fine_done
    assert all("TCPREMOTEINFO" not in env and env.get("TCPREMOTEIP") == stalled.address for _, _, env in stalled_done)
    assert max(t for _, t, _ in fine_done) < min(t for _, t, _ in stalled_done)


def test_in_flight_ids_are_distinct(impl, launch, stubs, tmp_path):
    """Four denied connections waiting for ident at the same time: each has its own pid/id in the
    log (prefork: ids unique among connections in flight), and each gets pid, deny, end."""
    stalled = stubs(lambda query: None)
    cdb = tmp_path / "rules.cdb"
    subprocess.run(
        ["/usr/bin/tcprules", str(cdb), f"{cdb}.tmp"], input=f"{stalled.address}:deny\n".encode(), check=True
    )
    server = launch(["-H", "-r", "-t", "2", "-l0", "-v", "-x", str(cdb)], [VIEW])
    socks = [connect(server.port, source=stalled.address) for _ in range(4)]
    try:
        assert wait_until(lambda: len(stalled.queries) == 4, 10), "ident queries did not all arrive"
        for sock in socks:
            assert recv_all(sock, 20) == b""
    finally:
        for sock in socks:
            sock.close()
    lines = server.wait_ends(4)
    wait_until(lambda: len([x for x in server.lines() if STATUS_RE.match(x)]) >= 9, 5)
    lines = server.lines()
    check_order(lines)
    groups = by_connection(lines)
    assert len(groups) == 4
    ids = [g[0][1].split()[2] for g in groups]
    assert len(set(ids)) == 4, f"ids of connections in flight together are not distinct: {ids}"
    if impl == "debian":
        # docs/CONTRACTS.md, tcpserver connection sequence step 1: 0.88's child writes the pid line first, before the ident lookup. prefork
        # writes it with the ok/deny line once the lookups are done, so that an allowed connection's
        # id is its program's pid (a documented difference, docs/reference/tcpserver.md).
        first_end = min(i for g in groups for i, line in g if " end " in line)
        assert all(g[0][0] < first_end for g in groups), "pid lines are not written before the ident lookups end"
    flat = normalise(lines, server.port, anonymous=True)
    assert sorted(x for x in flat if not STATUS_RE.match(x)) == sorted(
        [
            f"tcpserver: pid # from {stalled.address}",
            f"tcpserver: deny # 0:127.0.0.1:PORT :{stalled.address}::RPORT",
            "tcpserver: end # status 25600",
        ]
        * 4
    )
