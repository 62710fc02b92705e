"""tcpserver --proxy-protocol (docs/CONTRACTS.md, PROXY protocol): the header names the client the
program, the rules and the log see; a bad or late header drops the connection; haproxy end to end."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from tcpserver_harness import (
    QUIET,
    TAG_VAR,
    VIEW,
    connect,
    kill_procs,
    parse_view,
    recv_all,
    talk,
    wait_until,
)
from test_tcpserver_env import make_rules

from prefork.proxyproto import V2_SIGNATURE

HAPROXY = "/usr/sbin/haproxy"
V1 = b"PROXY TCP4 192.0.2.1 198.51.100.7 40000 443\r\n"


def v2(cmd: int = 0x21, fam: int = 0x11, src: str = "192.0.2.1", dst: str = "198.51.100.7", sport: int = 40000,
       dport: int = 443, tlvs: bytes = b"") -> bytes:
    body = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport) + tlvs
    return V2_SIGNATURE + bytes([cmd, fam]) + struct.pack("!H", len(body)) + body


def view(port: int, send: bytes) -> tuple[dict[str, str], bytes, int]:
    """Connect, send SEND, read view.pl's report: (its environment, the report, the client's port)."""
    reply, cport = talk(port, send)
    env = parse_view(reply)["env"]
    env.pop(TAG_VAR, None)
    return env, reply, cport


def echo_env(port: int, send: bytes) -> bytes:
    """With the `sh -c 'env; cat'`-like program ECHO: what the program printed and then read back."""
    return talk(port, send)[0]


# A program that prints its TCP variables, then copies its input: what it read is exactly the bytes
# after the header.
ECHO = ["sh", "-c", 'echo "$TCPREMOTEIP:$TCPREMOTEPORT $TCPLOCALIP:$TCPLOCALPORT"; exec cat']


@pytest.mark.parametrize("header", [V1, v2(), v2(tlvs=b"\xe0\x00\x05hello\x04\x00\x00")], ids=["v1", "v2", "v2-tlvs"])
def test_header_sets_the_environment(prefork, header):
    server = prefork([*QUIET, "--proxy-protocol"], [VIEW])
    env, _, _ = view(server.port, header)
    assert (env["TCPREMOTEIP"], env["TCPREMOTEPORT"], env["TCPLOCALIP"], env["TCPLOCALPORT"]) == (
        "192.0.2.1", "40000", "198.51.100.7", "443")
    assert env["PROTO"] == "TCP" and env["TCPLOCALHOST"] == "0"


@pytest.mark.parametrize("header", [V1, v2(), b"PROXY UNKNOWN\r\n", v2(cmd=0x20)], ids=["v1", "v2", "unknown", "local"])
def test_program_gets_the_following_bytes_untouched(prefork, header):
    server = prefork([*QUIET, "--proxy-protocol"], ECHO)
    data = b"PROXY TCP4 6.6.6.6 6.6.6.6 1 1\r\n" + V2_SIGNATURE + b"\0\r\n" + bytes(range(256))
    first, _, rest = echo_env(server.port, header + data).partition(b"\n")
    assert rest == data


@pytest.mark.parametrize("header", [b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ::1 ::2 1 2\r\n", v2(cmd=0x20),
                                    v2(fam=0x00, tlvs=b"")[:14] + b"\0\0"], ids=["unknown", "unknown-args", "local",
                                                                               "unspec"])
def test_local_and_unknown_keep_the_socket_addresses(prefork, header):
    server = prefork([*QUIET, "--proxy-protocol"], ECHO)
    with connect(server.port) as sock:
        cport = sock.getsockname()[1]
        sock.sendall(header)
        sock.shutdown(socket.SHUT_WR)
        reply = recv_all(sock)
    assert reply == f"127.0.0.1:{cport} 127.0.0.1:{server.port}\n".encode()


def test_without_the_option_a_header_is_data(prefork):
    server = prefork(QUIET, ECHO)
    with connect(server.port) as sock:
        cport = sock.getsockname()[1]
        sock.sendall(V1 + b"x")
        sock.shutdown(socket.SHUT_WR)
        reply = recv_all(sock)
    assert reply == f"127.0.0.1:{cport} 127.0.0.1:{server.port}\n".encode() + V1 + b"x"


def test_rules_and_log_see_the_real_client(prefork, tmp_path):
    rules = make_rules(tmp_path, "192.0.2.1:deny\n198.51.100.9:allow,WHO=\"proxied\"\n127.0.0.1:allow,WHO=\"proxy\"\n")
    server = prefork([*QUIET, "-v", "--proxy-protocol", "-x", rules], ECHO)
    assert talk(server.port, V1 + b"x")[0] == b""  # denied: the program never runs
    reply = talk(server.port, v2(src="198.51.100.9", sport=5555) + b"y")[0]
    assert reply == b"198.51.100.9:5555 198.51.100.7:443\ny"
    lines = server.wait_ends(2)
    text = "\n".join(lines)
    assert "tcpserver: pid " in text and "from 192.0.2.1" in text and "from 198.51.100.9" in text
    assert any(line.startswith("tcpserver: deny ") and line.endswith(" 0:198.51.100.7:443 :192.0.2.1::40000")
               for line in lines), text
    assert any(line.startswith("tcpserver: ok ") and line.endswith(" 0:198.51.100.7:443 :198.51.100.9::5555")
               for line in lines), text


def test_rules_env_applies_to_the_real_client(prefork, tmp_path):
    rules = make_rules(tmp_path, "198.51.100.9:allow,WHO=\"proxied\"\n:allow,WHO=\"other\"\n")
    server = prefork([*QUIET, "--proxy-protocol", "-x", rules], [VIEW])
    assert view(server.port, v2(src="198.51.100.9"))[0]["WHO"] == "proxied"
    assert view(server.port, b"PROXY UNKNOWN\r\n")[0]["WHO"] == "other"


@pytest.mark.parametrize("send, why", [
    (b"GET / HTTP/1.0\r\n\r\n", "missing PROXY header"),
    (b"PROXY TCP4 192.0.2.1 198.51.100.7 40000 99999\r\nx", "bad port in PROXY header"),
    (b"PROXY TCP6 ::1 ::g 1 2\r\nx", "bad IPv6 address in PROXY header"),
    (v2(cmd=0x23), "unknown command in PROXY v2 header"),
    (b"PROXY TCP4 1.2", "connection closed in PROXY header"),
])
def test_bad_header_dropped_with_one_warning(prefork, send, why):
    server = prefork([*QUIET, "--proxy-protocol"], ["sh", "-c", "echo RAN"])
    assert talk(server.port, send)[0] == b""
    lines = server.wait_lines(lambda ls: any("dropping" in line for line in ls))
    assert lines == [f"tcpserver: warning: dropping connection, {why}"]


def test_a_flood_of_headerless_connections_holds_no_worker(prefork):
    """20 silent clients on ONE worker with -t 30: each waits in the event loop, so real clients are served
    at once (a worker held by a silent client would keep them waiting 30 s, past recv's 10 s bound)."""
    server = prefork([*QUIET, "--proxy-protocol", "-t", "30", "--workers", "1", "-c", "40"], ECHO)
    silent = [connect(server.port) for _ in range(20)]
    try:
        for s in silent[::2]:
            s.sendall(b"PROXY TCP4 1.2.3.4")  # half start a header and stop, half send nothing
        for n in range(5):
            assert talk(server.port, V1 + b"%d" % n, timeout=10)[0] == b"192.0.2.1:40000 198.51.100.7:443\n%d" % n
    finally:
        for s in silent:
            s.close()
    assert server.wait_lines(lambda ls: len(ls) == 20, timeout=15) == [
        "tcpserver: warning: dropping connection, connection closed in PROXY header"] * 20


def test_slow_header_times_out_and_others_are_served(prefork):
    """A silent client waits in a pool thread for -t seconds, then is dropped; a real client is served
    meanwhile."""
    server = prefork([*QUIET, "--proxy-protocol", "-t", "2"], ECHO)
    with connect(server.port) as silent:
        silent.sendall(b"PROXY TCP4 1.2.3.4")  # and nothing more
        time.sleep(0.3)  # accepted by one worker, now waiting
        started = time.monotonic()
        assert talk(server.port, V1 + b"z", timeout=5)[0] == b"192.0.2.1:40000 198.51.100.7:443\nz"
        assert time.monotonic() - started < 1.5
        assert recv_all(silent, 10) == b""  # dropped once -t passed
    assert server.wait_lines(lambda ls: ls) == [
        "tcpserver: warning: dropping connection, timed out reading PROXY header"]


# ---- behind haproxy --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(proc: subprocess.Popen, port: int) -> bool:
    """Whether PROC listens on PORT."""
    try:
        conns = psutil.Process(proc.pid).net_connections(kind="tcp")
    except psutil.Error:
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in conns)


@contextlib.contextmanager
def haproxy(tmp_path: Path, backend_port: int, send_proxy: str):
    """haproxy in the foreground (-db) in front of 127.0.0.1:BACKEND_PORT; yields its frontend port.
    The port is picked by binding 0 and closing (haproxy takes no port 0), retried when taken meanwhile."""
    if not os.access(HAPROXY, os.X_OK):
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    for attempt in range(5):
        port = free_port()
        cfg = tmp_path / f"haproxy.{attempt}.cfg"
        cfg.write_text(
            "global\n  maxconn 100\n"
            "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 10s\n  timeout server 10s\n"
            f"frontend fe\n  bind 127.0.0.1:{port}\n  default_backend be\n"
            f"backend be\n  server s1 127.0.0.1:{backend_port} {send_proxy}\n"
        )
        err = tmp_path / f"haproxy.{attempt}.err"
        with open(err, "wb") as errf:
            proc = subprocess.Popen([HAPROXY, "-f", str(cfg), "-db"], stdin=subprocess.DEVNULL,
                                    stdout=errf, stderr=errf)
        try:
            wait_until(lambda p=proc, n=port: p.poll() is not None or listening(p, n), 10)
            if proc.poll() is None and listening(proc, port):
                yield port
                return
        finally:
            if proc.poll() is None:
                kill_procs([psutil.Process(proc.pid)])
            proc.wait(timeout=10)
    raise AssertionError(f"haproxy did not start: {err.read_text(errors='replace')}")


@pytest.mark.parametrize("send_proxy", ["send-proxy", "send-proxy-v2"])
def test_behind_haproxy(prefork, tmp_path, send_proxy):
    server = prefork([*QUIET, "-v", "--proxy-protocol"], ECHO)
    with haproxy(tmp_path, server.port, send_proxy) as front:
        with connect(front) as sock:
            cport = sock.getsockname()[1]
            sock.sendall(b"through the proxy")
            sock.shutdown(socket.SHUT_WR)
            reply = recv_all(sock)
    assert reply == f"127.0.0.1:{cport} 127.0.0.1:{front}\nthrough the proxy".encode()
    lines = server.wait_ends(1)
    assert any(line.endswith(f" 0:127.0.0.1:{front} :127.0.0.1::{cport}") for line in lines), lines
