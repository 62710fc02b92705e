"""prefork/proxyproto.py: the PROXY v1/v2 parsers and the reader that never consumes past the header."""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest
from conftest import fuzz_examples
from hypothesis import given, settings
from hypothesis import strategies as st

from prefork import proxyproto
from prefork.proxyproto import V2_SIGNATURE, ProxyError, parse_v1, parse_v2, read_header

SETTINGS = settings(max_examples=fuzz_examples(300), deadline=None, derandomize=True)


def v2(cmd: int = 0x21, fam: int = 0x11, body: bytes | None = None, tlvs: bytes = b"") -> bytes:
    if body is None:
        body = bytes([192, 0, 2, 1, 198, 51, 100, 7]) + struct.pack("!HH", 40000, 443)
    body += tlvs
    return V2_SIGNATURE + bytes([cmd, fam]) + struct.pack("!H", len(body)) + body


# ---- v1 --------------------------------------------------------------------------------------------


def test_v1_tcp4():
    h = parse_v1(b"PROXY TCP4 192.0.2.1 198.51.100.7 40000 443\r\n")
    assert (h.version, h.local, h.family, h.src, h.sport, h.dst, h.dport) == (
        1, False, "TCP4", "192.0.2.1", 40000, "198.51.100.7", 443)


def test_v1_tcp6_is_parsed_and_normalised():
    h = parse_v1(b"PROXY TCP6 2001:db8:0:0::1 ::1 1 65535\r\n")
    assert (h.family, h.src, h.dst, h.sport, h.dport) == ("TCP6", "2001:db8::1", "::1", 1, 65535)


@pytest.mark.parametrize("line", [b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"])
def test_v1_unknown_is_local(line):
    assert parse_v1(line).local


@pytest.mark.parametrize("line", [
    b"PROXY TCP4 192.0.2.1 198.51.100.7 40000 443\n",  # no CR
    b"PROXY TCP4 192.0.2.1 198.51.100.7 40000\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.7 40000 443 1\r\n",
    b"PROXY TCP4  192.0.2.1 198.51.100.7 40000 443\r\n",
    b"PROXY TCP4 192.0.2.256 198.51.100.7 40000 443\r\n",
    b"PROXY TCP4 192.0.2.01 198.51.100.7 40000 443\r\n",  # leading zero: octal to inet_aton
    b"PROXY TCP4 0x7f.0.0.1 198.51.100.7 40000 443\r\n",
    b"PROXY TCP4 127.1 198.51.100.7 40000 443\r\n",
    b"PROXY TCP4 ::1 198.51.100.7 40000 443\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.7 65536 443\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.7 0443 443\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.7 -1 443\r\n",
    b"PROXY TCP6 192.0.2.1 198.51.100.7 1 443\r\n",
    b"PROXY UDP4 192.0.2.1 198.51.100.7 1 443\r\n",
    b"PROXY TCP4 \xd9\xa1.0.0.1 198.51.100.7 1 443\r\n",  # a non-ASCII digit
    b"proxy TCP4 192.0.2.1 198.51.100.7 1 443\r\n",
    b"PROXY UNKNOWN" + b" " * 93 + b"\r\n",  # 108 bytes: one over the limit
])
def test_v1_malformed(line):
    with pytest.raises(ProxyError):
        parse_v1(line)


# ---- v2 --------------------------------------------------------------------------------------------


def test_v2_tcp4_with_unknown_tlvs_skipped():
    h = parse_v2(v2(tlvs=b"\xee\x00\x03abc\x04\x00\x00"))
    assert (h.version, h.local, h.family, h.src, h.sport, h.dst, h.dport) == (
        2, False, "TCP4", "192.0.2.1", 40000, "198.51.100.7", 443)


def test_v2_local_ignores_addresses():
    assert parse_v2(v2(cmd=0x20, fam=0x00, body=b"")).local
    assert parse_v2(v2(cmd=0x20)).local


def test_v2_unspec_is_local():
    assert parse_v2(v2(fam=0x00, body=b"")).local


def test_v2_tcp6():
    body = socket.inet_pton(socket.AF_INET6, "2001:db8::1") + socket.inet_pton(socket.AF_INET6, "::1") + b"\0\1\0\2"
    h = parse_v2(v2(fam=0x21, body=body))
    assert (h.family, h.src, h.dst, h.sport, h.dport) == ("TCP6", "2001:db8::1", "::1", 1, 2)


@pytest.mark.parametrize("data", [
    v2()[:-1],  # shorter than its length says
    v2() + b"x",
    b"\r\n\r\n\x00\r\nQUIT\r" + v2()[12:],  # signature
    v2(cmd=0x11),  # version 1 in a v2 header
    v2(cmd=0x22),  # command 2
    v2(fam=0x12),  # UDP over IPv4
    v2(fam=0x31, body=b"\0" * 216),  # unix stream
    v2(body=b"\0" * 11),  # too short for IPv4
    v2(fam=0x21, body=b"\0" * 35),
    V2_SIGNATURE[:15],
])
def test_v2_malformed(data):
    with pytest.raises(ProxyError):
        parse_v2(data)


# ---- garbage never raises anything else ------------------------------------------------------------


@SETTINGS
@given(st.one_of(st.binary(max_size=120), st.builds(lambda b: b"PROXY " + b, st.binary(max_size=110)),
                 st.builds(lambda w: b"PROXY " + b" ".join(w) + b"\r\n",
                           st.lists(st.sampled_from([b"TCP4", b"TCP6", b"UNKNOWN", b"1.2.3.4", b"::1", b"0", b"65535",
                                                     b"", b"01", b"\xff"]), max_size=7))))
def test_v1_garbage(data):
    try:
        h = parse_v1(data)
    except ProxyError:
        return
    assert data.endswith(b"\r\n") and len(data) <= 107
    assert h.local or (0 <= h.sport <= 65535 and 0 <= h.dport <= 65535 and h.family in ("TCP4", "TCP6"))


@SETTINGS
@given(st.integers(0, 255), st.integers(0, 255), st.binary(max_size=80), st.integers(-2, 2))
def test_v2_garbage(cmd, fam, body, skew):
    data = V2_SIGNATURE + bytes([cmd, fam]) + struct.pack("!H", max(0, len(body) + skew)) + body
    try:
        h = parse_v2(data)
    except ProxyError:
        return
    assert skew == 0 and cmd >> 4 == 2
    assert h.local or h.family in ("TCP4", "TCP6")


@SETTINGS
@given(st.binary(max_size=60))
def test_v2_raw_garbage(data):
    try:
        parse_v2(data)
    except ProxyError:
        pass


# ---- the reader ------------------------------------------------------------------------------------


def pair():
    a, b = socket.socketpair()
    return a, b


def read_from(chunks: list[bytes], pause: float = 0.0, timeout: float = 5.0):
    """Send CHUNKS (PAUSE between them) into one end, read a header from the other; (header or error,
    the bytes left after it)."""
    a, b = pair()
    with a, b:
        def writer():
            for c in chunks:
                a.sendall(c)
                time.sleep(pause)
            a.shutdown(socket.SHUT_WR)

        t = threading.Thread(target=writer)
        t.start()
        try:
            result: object = read_header(b, time.monotonic() + timeout)
        except ProxyError as e:
            result = e
        t.join()
        assert b.getblocking()  # the reader left the socket as it found it
        b.settimeout(5)
        rest = b""
        while chunk := b.recv(4096):
            rest += chunk
        return result, rest


@pytest.mark.parametrize("header", [b"PROXY TCP4 192.0.2.1 198.51.100.7 40000 443\r\n", b"PROXY UNKNOWN\r\n", v2(),
                                    v2(tlvs=b"\x01\x00\x02h2"), v2(cmd=0x20, fam=0, body=b"")])
@pytest.mark.parametrize("split", [None, 1, 7, 14, 15, 16, 17])
def test_reader_stops_exactly_after_the_header(header, split):
    data = header + b"PROXY \r\n\r\nrest"
    chunks = [data] if split is None else [data[:split], data[split:]]
    result, rest = read_from(chunks, pause=0.05)
    assert not isinstance(result, ProxyError), result
    assert rest == b"PROXY \r\n\r\nrest"


def test_reader_byte_by_byte():
    line = b"PROXY TCP4 192.0.2.1 198.51.100.7 40000 443\r\n"
    result, rest = read_from([bytes([c]) for c in line + b"xy"], pause=0.002)
    assert not isinstance(result, ProxyError) and result.sport == 40000
    assert rest == b"xy"


def test_reader_blocking_socket_stays_blocking():
    a, b = pair()
    with a, b:
        a.sendall(b"PROXY UNKNOWN\r\nz")
        read_header(b, time.monotonic() + 5)
        assert b.getblocking()
        assert b.recv(10) == b"z"


@pytest.mark.parametrize("chunks, why", [
    ([], "closed"),
    ([b"GET / HTTP/1.0\r\n\r\n"], "missing"),
    ([b"PROXY TCP4 1.2.3.4"], "closed"),
    ([b"PROXY " + b"x" * 200], "too long"),
    ([b"PROXY TCP4\r\nabcdef"], "malformed"),
    ([v2()[:20]], "closed"),
])
def test_reader_errors(chunks, why):
    result, _ = read_from(chunks)
    assert isinstance(result, ProxyError) and why in str(result)


def test_reader_times_out():
    a, b = pair()
    with a, b:
        a.sendall(b"PROXY TCP4 1.2")
        started = time.monotonic()
        with pytest.raises(ProxyError, match="timed out"):
            read_header(b, started + 0.3)
        assert 0.25 < time.monotonic() - started < 3


@pytest.mark.parametrize("sent, ready", [
    (b"", False),
    (b"PROX", False),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2", False),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nhello", True),
    (b"GET / HTTP/1.0\r\n", True),  # not a header: refused at once, no wait
    (b"\r\n\r\n\x00\r\n", False),  # the start of a v2 signature
    (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c" + bytes(11), False),  # 12 address bytes announced, 11 there
    (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c" + bytes(12), True),
    (b"PROXY " + b"x" * 200, True),  # longer than any v1 line: refused at once
])
def test_arrived_tells_whether_reading_the_header_would_wait(sent, ready):
    a, b = socket.socketpair()
    with a, b:
        if sent:
            b.sendall(sent)
        assert proxyproto.arrived(a) is ready
        if sent:
            assert a.recv(1024, socket.MSG_DONTWAIT) == sent  # only peeked at


def test_arrived_after_the_peer_closed_is_true():
    a, b = socket.socketpair()
    with a:
        b.close()
        assert proxyproto.arrived(a) is True
