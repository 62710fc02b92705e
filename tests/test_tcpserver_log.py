"""tcpserver -v/-Q/-q log lines (docs/CONTRACTS.md, tcpserver log lines), on Debian's and prefork's tcpserver.

Pids (or prefork's connection ids) become #1, #2 ... and ports PORT / RPORT; nothing else is
normalised.  One connection at a time gives a fixed sequence; several at once are compared as a
multiset plus the order constraints in tcpserver_harness.check_order.
"""

from __future__ import annotations

import collections
import socket
import struct
import subprocess
import threading

import pytest
from tcpserver_harness import (
    HOLD,
    QUIET,
    STATUS_RE,
    VIEW,
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
OK = "tcpserver: ok #1 0:127.0.0.1:PORT :127.0.0.1::RPORT"


def make_rules(tmp_path, text: str) -> str:
    cdb = tmp_path / "rules.cdb"
    subprocess.run(["/usr/bin/tcprules", str(cdb), str(cdb) + ".tmp"], input=text.encode(), check=True)
    return str(cdb)


def one_connection(server, send: bytes = b"") -> tuple[bytes, list[str]]:
    reply, cport = talk(server.port, send)
    lines = server.wait_ends(1)
    return reply, normalise(lines, server.port, [cport])


def sequence(middle: list[str], status: int) -> list[str]:
    return [
        "tcpserver: status: 0/40",
        "tcpserver: status: 1/40",
        "tcpserver: pid #1 from 127.0.0.1",
        *middle,
        f"tcpserver: end #1 status {status}",
        "tcpserver: status: 0/40",
    ]


def test_allowed(launch):
    reply, lines = one_connection(launch(["-v", *QUIET], ["/bin/echo", "hi"]))
    assert reply == b"hi\n"
    assert lines == sequence([OK], 0)


def test_pid_is_the_programs_pid(launch):
    server = launch(["-v", *QUIET], [VIEW])
    reply, cport = talk(server.port)
    pid = parse_view(reply)["pid"]
    lines = server.wait_ends(1)
    assert lines[2:5] == [
        f"tcpserver: pid {pid} from 127.0.0.1",
        f"tcpserver: ok {pid} 0:127.0.0.1:{server.port} :127.0.0.1::{cport}",
        f"tcpserver: end {pid} status 0",
    ]


def test_ok_line_shows_local_name_not_rule_override(launch, tmp_path):
    cdb = make_rules(tmp_path, '127.0.0.1:allow,TCPLOCALHOST="movie.edu"\n')
    reply, lines = one_connection(launch(["-v", "-HR", "-lcinema", "-x", cdb], ["/bin/echo", "hi"]))
    assert lines == sequence(["tcpserver: ok #1 cinema:127.0.0.1:PORT :127.0.0.1::RPORT"], 0)


def test_denied_by_rules(launch, tmp_path):
    cdb = make_rules(tmp_path, "127.0.0.1:deny\n:allow\n")
    reply, lines = one_connection(launch(["-v", *QUIET, "-x", cdb], ["/bin/echo", "hi"]))
    assert reply == b""
    assert lines == sequence(["tcpserver: deny #1 0:127.0.0.1:PORT :127.0.0.1::RPORT"], 25600)


def test_missing_rules_drops(launch, tmp_path):
    missing = tmp_path / "missing.cdb"
    reply, lines = one_connection(launch(["-v", *QUIET, "-x", str(missing)], ["/bin/echo", "hi"]))
    assert reply == b""
    warning = f"tcpserver: warning: dropping connection, unable to read {missing}: file does not exist"
    assert lines == sequence([warning], 28416)


def test_garbage_rules_drop(launch, tmp_path):
    garbage = tmp_path / "garbage.cdb"
    garbage.write_bytes(b"garbage!!\n")
    reply, lines = one_connection(launch(["-v", *QUIET, "-x", str(garbage)], ["/bin/echo", "hi"]))
    assert reply == b""
    warning = f"tcpserver: warning: dropping connection, unable to read {garbage}: protocol error"
    assert lines == sequence([warning], 28416)


def test_directory_as_rules_drops(impl, launch, tmp_path):
    """0.88 (Debian build) crashes on a directory (SIGSEGV, status 11): docs/CONTRACTS.md, Quirks of Debian's builds.
    prefork drops the connection with `is a directory` instead."""
    directory = tmp_path / "dir.cdb"
    directory.mkdir()
    reply, lines = one_connection(launch(["-v", *QUIET, "-x", str(directory)], ["/bin/echo", "hi"]))
    assert reply == b""
    if impl == "debian":
        assert lines == sequence([], 11)
    else:
        warning = f"tcpserver: warning: dropping connection, unable to read {directory}: is a directory"
        assert lines == sequence([warning], 28416)


@pytest.mark.parametrize(
    ("prog", "error"),
    [("/nonexistent/prog", "file does not exist"), ("nosuchprog", "file does not exist"), ("NOEXEC", "access denied")],
)
def test_program_cannot_run(launch, tmp_path, prog, error):
    if prog == "NOEXEC":
        noexec = tmp_path / "noexec"
        noexec.write_text("#!/bin/sh\necho hi\n")
        noexec.chmod(0o644)
        prog = str(noexec)
    reply, lines = one_connection(launch(["-v", *QUIET], [prog]))
    assert reply == b""
    assert lines == sequence([OK, f"tcpserver: warning: dropping connection, unable to run {prog}: {error}"], 28416)


@pytest.mark.parametrize(
    ("prog", "status"),
    [
        (["/bin/false"], 256),
        (["/bin/sh", "-c", "exit 100"], 25600),
        (["/bin/sh", "-c", "kill -9 $$"], 9),
        (["/bin/sh", "-c", "kill -TERM $$"], 15),
    ],
)
def test_program_exit_status(launch, prog, status):
    reply, lines = one_connection(launch(["-v", *QUIET], prog))
    assert lines == sequence([OK], status)


def _sanitised(raw: bytes) -> str:
    text = "".join("?" if b < 33 or b > 126 or b in b"%:" else chr(b) for b in raw[:100])
    return text + ("..." if len(raw) >= 100 else "")


@pytest.mark.parametrize("length", [8, 99, 100, 101, 250])
def test_ok_line_sanitised_and_truncated(launch, length):
    raw = b"a:b%c d\xff\x01"
    raw = (raw + b"x" * length)[:length]
    name = raw.decode("utf-8", "surrogateescape")
    reply, lines = one_connection(launch(["-v", "-HR", "-l", name], ["/bin/echo", "hi"]))
    assert lines == sequence([f"tcpserver: ok #1 {_sanitised(raw)}:127.0.0.1:PORT :127.0.0.1::RPORT"], 0)


def test_banner_to_reset_client(launch, tmp_path):
    """A client that resets while waiting in the backlog (-c1 is full) makes the banner write fail."""
    log = tmp_path / "spans"
    server = launch(["-v", "-c1", "-Bhello\n", *QUIET], [HOLD, str(log), "1"])
    with connect(server.port) as first:
        assert wait_until(lambda: log.exists(), 10)
        second = connect(server.port)
        second.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        second.close()
        first.shutdown(socket.SHUT_WR)
        assert recv_all(first).startswith(b"hello\ndone ")
    lines = normalise(server.wait_ends(2), server.port)
    second_lines = [x for x in lines if "#2" in x or "warning" in x]
    assert second_lines == [
        "tcpserver: pid #2 from 127.0.0.1",
        "tcpserver: warning: dropping connection, unable to print banner: connection reset",
        "tcpserver: end #2 status 28416",
    ]


def test_quiet_warnings_only(launch, tmp_path):
    missing = tmp_path / "missing.cdb"
    server = launch(["-v", "-Q", *QUIET, "-x", str(missing)], ["/bin/echo", "hi"])
    assert talk(server.port)[0] == b""
    assert talk(server.port)[0] == b""
    warning = f"tcpserver: warning: dropping connection, unable to read {missing}: file does not exist"
    assert server.wait_lines(lambda lines: len(lines) >= 2) == [warning, warning]
    assert server.stderr() == f"{warning}\n{warning}\n"


def test_quiet_nothing(launch, tmp_path):
    server = launch(["-q", *QUIET, "-x", str(tmp_path / "missing.cdb")], ["/bin/echo", "hi"])
    assert talk(server.port)[0] == b""
    ok = launch(["-q", *QUIET], ["/bin/sh", "-c", "echo hi; echo from-program >&2"])
    assert talk(ok.port)[0] == b"hi\n"
    assert ok.wait_lines(lambda lines: lines) == ["from-program"]
    assert talk(server.port)[0] == b""  # the second connection shows the first was handled
    assert server.stderr() == ""


def test_default_verbosity_is_warnings(launch, tmp_path):
    server = launch([*QUIET], ["/nonexistent/prog"])
    assert talk(server.port)[0] == b""
    lines = server.wait_lines(lambda lines: lines)
    assert lines == ["tcpserver: warning: dropping connection, unable to run /nonexistent/prog: file does not exist"]


def test_many_connections_interleaved(launch, tmp_path):
    """Allowed (from 127.0.0.1) and denied (from another 127/8 address) connections at once."""
    other = random_loopback()
    cdb = make_rules(tmp_path, f"{other}:deny\n127.0.0.1:allow\n")
    server = launch(["-v", *QUIET, "-x", cdb], [VIEW])
    results: list[tuple[str, bytes]] = []
    lock = threading.Lock()

    def client(source: str) -> None:
        reply, _ = talk(server.port, source=source)
        with lock:
            results.append((source, reply))

    threads = [threading.Thread(target=client, args=(src,)) for src in ["127.0.0.1", other] * 6]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 12
    assert all((reply == b"") == (source == other) for source, reply in results)
    lines = server.wait_ends(12)
    wait_until(lambda: len([x for x in server.lines() if STATUS_RE.match(x)]) >= 25, 10)
    lines = server.lines()
    check_order(lines)
    flat = normalise(lines, server.port, anonymous=True)
    counts = collections.Counter(x for x in flat if not STATUS_RE.match(x))
    assert counts == {
        "tcpserver: pid # from 127.0.0.1": 6,
        f"tcpserver: pid # from {other}": 6,
        "tcpserver: ok # 0:127.0.0.1:PORT :127.0.0.1::RPORT": 6,
        f"tcpserver: deny # 0:127.0.0.1:PORT :{other}::RPORT": 6,
        "tcpserver: end # status 0": 6,
        "tcpserver: end # status 25600": 6,
    }
    assert flat[-1] == "tcpserver: status: 0/40"
    assert all(STATUS_RE.match(x)[2] == "40" and int(STATUS_RE.match(x)[1]) <= 12 for x in flat if STATUS_RE.match(x))


@pytest.mark.parametrize("limit", ["40", "3"])
def test_status_lines_count_consistently(launch, tmp_path, limit):
    """In 0.88 one process changes the counter and prints `status: k/N` each time, so the k values
    walk up and down by exactly one from 0 back to 0, never above N.  Many connections that start
    and end at nearly the same moment are the hard case for several workers sharing a counter."""
    log = tmp_path / "spans"
    server = launch(["-v", "-c", limit, *QUIET], [HOLD, str(log), "0.2"])
    results: list[bytes] = []

    def client() -> None:
        results.append(talk(server.port, timeout=30)[0])

    threads = [threading.Thread(target=client) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(40)
    assert len(results) == 16 and all(r.startswith(b"done ") for r in results)
    server.wait_ends(16)
    assert wait_until(lambda: len([x for x in server.lines() if STATUS_RE.match(x)]) >= 33, 10)
    ks = [int(m[1]) for m in map(STATUS_RE.match, server.lines()) if m]
    assert ks[0] == 0 and ks[-1] == 0 and max(ks) <= int(limit), ks
    assert all(abs(b - a) == 1 for a, b in zip(ks, ks[1:], strict=False)), f"status values jump: {ks}"


def test_rules_replaced_while_running_are_never_stale(launch, tmp_path):
    """tcprules renames a new cdb over the old one while the server runs: the very next connection
    follows the new rules (allow → deny → allow with a variable → removed → empty file)."""
    cdb = tmp_path / "rules.cdb"
    server = launch([*QUIET, "-x", str(cdb)], ["/bin/sh", "-c", 'echo "hi $V"'])

    def install(text: str) -> None:
        subprocess.run(["/usr/bin/tcprules", str(cdb), f"{cdb}.tmp"], input=text.encode(), check=True)

    install("127.0.0.1:allow\n")
    assert talk(server.port)[0] == b"hi \n"
    install("127.0.0.1:deny\n")
    assert talk(server.port)[0] == b""
    install('127.0.0.1:allow,V="new"\n')
    assert talk(server.port)[0] == b"hi new\n"
    cdb.unlink()
    assert talk(server.port)[0] == b""
    cdb.write_bytes(b"")
    assert talk(server.port)[0] == b""
    install('127.0.0.1:allow,V="back"\n')
    assert talk(server.port)[0] == b"hi back\n"
    warnings = [line for line in server.lines() if "dropping connection" in line]
    assert [w.rsplit(": ", 1)[1] for w in warnings] in (
        ["file does not exist", "protocol error"],
        ["file does not exist", "invalid argument"],  # Debian's build says this for a 0-byte cdb (docs/CONTRACTS.md, Quirks of Debian's builds)
    )
