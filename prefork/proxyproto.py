"""The PROXY protocol (haproxy's proxy-protocol.txt, versions 1 and 2), read by tcpserver ``--proxy-protocol``.

A proxy in front of tcpserver starts each connection with a header naming
the real client; everything after the header is the client's and must reach
the program untouched, so the reader never consumes a byte past the header.
Every byte here comes from whoever can reach the port: any malformed input
is a ``ProxyError`` (its text goes into the drop warning), never another
exception (tests/test_proxyproto.py).  Imported only with the option, by the
lean server process (prefork/lean.py): no typing, no dataclasses.
"""

from __future__ import annotations

import select
import socket
import struct
import time

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX = 107  # the longest v1 line, CRLF included (proxy-protocol.txt section 2.1)
V1_MIN = 15  # b"PROXY UNKNOWN\r\n": no header is shorter, so reading this many first never reads past one
V2_HEAD = 16


class ProxyError(Exception):
    """A missing, malformed, unsupported or late PROXY header; str() is the reason."""


class Header:
    """What a header says: ``local`` (LOCAL / UNKNOWN / AF_UNSPEC: keep the socket's own addresses),
    else ``family`` (``TCP4`` or ``TCP6``) and the client (src) and the address it reached (dst)."""

    __slots__ = ("version", "local", "family", "src", "sport", "dst", "dport")

    def __init__(self, version: int, local: bool, family: str = "", src: str = "", sport: int = 0,
                 dst: str = "", dport: int = 0) -> None:
        self.version, self.local, self.family = version, local, family
        self.src, self.sport, self.dst, self.dport = src, sport, dst, dport

    def __repr__(self) -> str:
        return (f"Header(v{self.version}, local={self.local}, {self.family} "
                f"{self.src}:{self.sport} -> {self.dst}:{self.dport})")


_DONTWAIT, _PEEK = int(socket.MSG_DONTWAIT), int(socket.MSG_PEEK)  # plain ints: or-ing the IntFlag members costs µs


def _v1_ipv4(word: bytes) -> str:
    """Dotted decimal only: inet_pton takes exactly four decimal octets, none with a leading zero (inet_aton
    would read 010 as octal and 0x7f as hex)."""
    try:
        text = word.decode("ascii")
        socket.inet_pton(socket.AF_INET, text)
    except (UnicodeDecodeError, OSError, ValueError):
        raise ProxyError("bad IPv4 address in PROXY header") from None
    return text


def _v1_ipv6(word: bytes) -> str:
    try:
        packed = socket.inet_pton(socket.AF_INET6, word.decode("ascii"))
    except (UnicodeDecodeError, OSError, ValueError):
        raise ProxyError("bad IPv6 address in PROXY header") from None
    return socket.inet_ntop(socket.AF_INET6, packed)


def _v1_port(word: bytes) -> int:
    if not (1 <= len(word) <= 5 and word.isdigit() and word.isascii()) or (len(word) > 1 and word[:1] == b"0"):
        raise ProxyError("bad port in PROXY header")
    port = int(word)
    if port > 65535:
        raise ProxyError("bad port in PROXY header")
    return port


def parse_v1(data: bytes) -> Header:
    """A whole v1 line, ``PROXY ...\\r\\n`` (DATA must be exactly the line)."""
    if len(data) > V1_MAX or not data.startswith(V1_PREFIX) or not data.endswith(b"\r\n"):
        raise ProxyError("malformed PROXY v1 header")
    line = data[:-2]
    if b"\r" in line or b"\n" in line:
        raise ProxyError("malformed PROXY v1 header")
    words = line.split(b" ")
    if words[1] == b"UNKNOWN":  # the rest of the line is to be ignored (section 2.1)
        return Header(1, True)
    if len(words) != 6:
        raise ProxyError("malformed PROXY v1 header")
    if words[1] == b"TCP4":
        ip = _v1_ipv4
    elif words[1] == b"TCP6":
        ip = _v1_ipv6
    else:
        raise ProxyError("unknown protocol in PROXY v1 header")
    return Header(1, False, words[1].decode("ascii"), ip(words[2]), _v1_port(words[4]), ip(words[3]),
                  _v1_port(words[5]))


def v2_length(head: bytes) -> int:
    """The number of bytes after the 16-byte fixed part of a v2 header starting with HEAD."""
    if len(head) < V2_HEAD or head[:12] != V2_SIGNATURE:
        raise ProxyError("malformed PROXY v2 header")
    if head[12] >> 4 != 2:
        raise ProxyError("unsupported PROXY v2 version")
    return int.from_bytes(head[14:16], "big")


# v2 family byte -> (v1's protocol word, address family, address block: source, destination, ports)
_V2_BLOCKS = {
    0x11: ("TCP4", socket.AF_INET, struct.Struct("!4s4sHH")),
    0x21: ("TCP6", socket.AF_INET6, struct.Struct("!16s16sHH")),
}


def parse_v2(data: bytes) -> Header:
    """A whole v2 header (DATA must be exactly its 16 + length bytes); TLVs after the addresses are skipped."""
    length = v2_length(data)
    if len(data) != V2_HEAD + length:
        raise ProxyError("malformed PROXY v2 header")
    command, family = data[12] & 0x0F, data[13]
    if command == 0:  # LOCAL: the proxy's own connection (health checks); the address block is ignored
        return Header(2, True)
    if command != 1:
        raise ProxyError("unknown command in PROXY v2 header")
    body = data[V2_HEAD:]
    if family == 0x00:  # AF_UNSPEC: the proxy does not know; keep the socket's addresses (as v1 UNKNOWN)
        return Header(2, True)
    block = _V2_BLOCKS.get(family)
    if block is None:
        raise ProxyError("unsupported address family in PROXY v2 header")
    proto, af, layout = block
    if length < layout.size:
        raise ProxyError("short PROXY v2 address block")
    src, dst, sport, dport = layout.unpack_from(body)
    return Header(2, False, proto, socket.inet_ntop(af, src), sport, socket.inet_ntop(af, dst), dport)


def read_header(sock: socket.socket, deadline: float) -> Header:
    """Read exactly one header from blocking SOCK, by ``time.monotonic()`` DEADLINE, and parse it.

    The socket stays blocking (the program gets it as accepted): each read
    waits in poll() first.  v1 is peeked at and only its own bytes consumed;
    v2 is read as its 16-byte head, then its announced length.
    """
    try:
        # Usually the whole header is there already: one peek finds its end, one read takes exactly it.
        try:
            data = sock.recv(V1_MAX, _PEEK | _DONTWAIT)
        except OSError:  # nothing yet (or an error the reads below meet again)
            data = b""
        if data.startswith(V1_PREFIX):
            end = data.find(b"\r\n")
            if end >= 0:
                return parse_v1(_read_exact(sock, end + 2, deadline))
        elif data[:12] == V2_SIGNATURE and len(data) >= V2_HEAD:
            whole = V2_HEAD + v2_length(data[:V2_HEAD])
            if len(data) >= whole:
                return parse_v2(_read_exact(sock, whole, deadline))
        first = _read_exact(sock, V1_MIN, deadline)
        if first[:12] == V2_SIGNATURE:
            head = first + _read_exact(sock, V2_HEAD - V1_MIN, deadline)
            return parse_v2(head + _read_exact(sock, v2_length(head), deadline))
        if not first.startswith(V1_PREFIX):
            raise ProxyError("missing PROXY header")
        return parse_v1(_read_v1_rest(sock, first, deadline))
    except OSError as e:
        raise ProxyError(f"unable to read PROXY header: {e.strerror or e}") from None


def arrived(sock: socket.socket) -> bool:
    """Whether what has arrived on SOCK settles the header: a whole header, or bytes that cannot begin one
    (so read_header returns or fails at once, without waiting).  False when it must wait for more."""
    try:
        data = sock.recv(V1_MAX + 1, _PEEK | _DONTWAIT)
    except BlockingIOError:
        return False
    except OSError:
        return True  # read_header meets the same error at once
    if not data:
        return True  # end of file: "connection closed in PROXY header" at once
    if data[:12] == V2_SIGNATURE[: len(data)] and len(data) < 12:
        return False  # the start of a v2 signature, more to come
    if data[:12] == V2_SIGNATURE:
        return len(data) >= V2_HEAD and len(data) >= V2_HEAD + int.from_bytes(data[14:16], "big")
    if not (data[:6] == V1_PREFIX[: len(data)] or data.startswith(V1_PREFIX)):
        return True  # not a header: refused at once
    return b"\r\n" in data or len(data) > V1_MAX  # a whole v1 line, or too long to be one


def _wait(sock: socket.socket, deadline: float) -> None:
    left = deadline - time.monotonic()
    p = select.poll()
    p.register(sock.fileno(), select.POLLIN)
    if not p.poll(max(0, int(left * 1000) + (left > 0))):
        raise ProxyError("timed out reading PROXY header")


def _recv(sock: socket.socket, n: int, deadline: float, flags: int = 0) -> bytes:
    """Up to N bytes: what has arrived, else the first to arrive by DEADLINE (a proxy sends its header at
    once, so the usual read needs no poll())."""
    for _ in range(1 << 20):  # each turn waits in poll(), so the deadline ends it long before the count
        try:
            chunk = sock.recv(n, flags | _DONTWAIT)
        except BlockingIOError:
            _wait(sock, deadline)
            continue
        if not chunk:
            raise ProxyError("connection closed in PROXY header")
        return chunk
    raise ProxyError("timed out reading PROXY header")


def _read_exact(sock: socket.socket, n: int, deadline: float) -> bytes:
    data = b""
    while len(data) < n:
        try:
            data += _recv(sock, n - len(data), deadline)
        except BlockingIOError:
            continue  # poll said readable, yet nothing: wait again
    return data


def _read_v1_rest(sock: socket.socket, line: bytes, deadline: float) -> bytes:
    """LINE extended up to and including its CRLF: peeked bytes without the CRLF are all header and
    consumed as they come; once the CRLF shows, exactly the bytes up to it are taken."""
    while True:
        end = line.find(b"\r\n")
        if end >= 0:
            if end + 2 != len(line):
                raise ProxyError("malformed PROXY v1 header")  # CRLF inside the first V1_MIN bytes
            return line
        if len(line) >= V1_MAX:
            raise ProxyError("PROXY v1 header too long")
        try:
            peek = _recv(sock, V1_MAX - len(line), deadline, _PEEK)
        except BlockingIOError:
            continue
        end = (line[-1:] + peek).find(b"\r\n")
        take = len(peek) if end < 0 else end + 2 - len(line[-1:])
        line += _read_exact(sock, take, deadline)
