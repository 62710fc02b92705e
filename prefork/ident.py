"""RFC 1413 ident client, the way ucspi-tcp asks for TCPREMOTEINFO.

One new TCP connection from the connection's local IP (any port) to the
remote IP's ident port, one query ``RPORT , LPORT\\r\\n`` (the remote port
first: it is the port on the ident server's side), one reply line.  One
deadline covers connect, write and read; like djb's ``iopause`` loop, a
socket that is already ready is used even when the deadline has just passed.

Blocking with a deadline and no shared state, so tcpserver's workers may call
``ident_query`` from a thread pool.

The reply comes from whoever answers on the remote host, so any byte may be
in it.  0.88 keeps the bytes in a C string, so its TCPREMOTEINFO (and the log
line, and the ``INFO@IP`` rule key) ends at the first NUL: the value here is
cut at the first NUL too, which also keeps it usable in an environment.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import time

from prefork.addr import unmapped

__all__ = ["IDENT_PORT", "MAX_INFO", "IdentReply", "ident_query", "ident_query_bytes", "parse_ident_reply"]

IDENT_PORT = 113
MAX_INFO = 256  # once more than this many bytes are collected the reply counts as complete

_SKIP = frozenset(b" \t\r")


class IdentReply:
    """Incremental reply parser: spaces, tabs and CRs dropped, text after the third ``:`` kept.

    Complete at the first ``\\n`` or as soon as more than MAX_INFO bytes are
    collected (257 kept).  ``ERROR`` replies have only two colons, so they
    complete with an empty value, which still counts as an answer.  NUL bytes
    are collected like any other (they count towards the 257), and the value
    ends at the first of them, as 0.88's C string does.
    """

    def __init__(self) -> None:
        self.colons = 0
        self.info = bytearray()
        self.done = False

    def feed(self, data: bytes) -> bool:
        """Consume DATA up to the end of the reply; True once the reply is complete."""
        for byte in data:
            if self.done:
                break
            if byte in _SKIP:
                continue
            if byte == 0x0A:
                self.done = True
            elif self.colons < 3:
                if byte == 0x3A:
                    self.colons += 1
            else:
                self.info.append(byte)
                if len(self.info) > MAX_INFO:
                    self.done = True
        return self.done

    @property
    def raw(self) -> bytes:
        """The collected bytes up to the first NUL: at most MAX_INFO + 1 bytes, never a NUL, CR or LF."""
        end = self.info.find(0)
        return bytes(self.info if end < 0 else self.info[:end])

    @property
    def value(self) -> str:
        """``raw`` as text (bytes kept via surrogateescape, as os.fsdecode does)."""
        return os.fsdecode(self.raw)


def parse_ident_reply(line: bytes) -> str:
    """TCPREMOTEINFO for one reply line (the end of LINE counts as its end if it lacks ``\\n``)."""
    reply = IdentReply()
    reply.feed(line)
    return reply.value


def _ready(sock: socket.socket, events: int, deadline: float) -> bool:
    """Wait for EVENTS on SOCK until DEADLINE; an error or hang-up also counts as ready."""
    poller = select.poll()
    poller.register(sock, events)
    remaining = max(0.0, deadline - time.monotonic())
    return bool(poller.poll(remaining * 1000.0))


def ident_query(
    local_ip: str,
    local_port: int,
    remote_ip: str,
    remote_port: int,
    timeout: float,
    *,
    ident_port: int = IDENT_PORT,
    scope: int = 0,
) -> str | None:
    """Ask REMOTE_IP's ident server who owns the connection; its answer (maybe ``""``) or None.

    None means failure: refused, reset, EOF before the end of the reply, or
    TIMEOUT seconds passed.  ``ident_port`` exists for tests (a stub server).
    """
    raw = ident_query_bytes(local_ip, local_port, remote_ip, remote_port, timeout, ident_port=ident_port, scope=scope)
    return None if raw is None else os.fsdecode(raw)


def ident_query_bytes(
    local_ip: str,
    local_port: int,
    remote_ip: str,
    remote_port: int,
    timeout: float,
    *,
    ident_port: int = IDENT_PORT,
    scope: int = 0,
) -> bytes | None:
    """``ident_query``'s answer as the bytes the server sent (IdentReply.raw), or None.

    SCOPE: a link-local IPv6 client's scope id (the connection's), without which it cannot be reached."""
    deadline = time.monotonic() + timeout
    local_ip, remote_ip = unmapped(local_ip), unmapped(remote_ip)  # -6 shows IPv4 clients as ::ffff:1.2.3.4
    family = socket.AF_INET6 if ":" in remote_ip else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setblocking(False)
            six = family == socket.AF_INET6
            sock.bind((local_ip, 0, 0, scope) if six else (local_ip, 0))
            err = sock.connect_ex((remote_ip, ident_port, 0, scope) if six else (remote_ip, ident_port))
            if err in (errno.EINPROGRESS, errno.EAGAIN):
                if not _ready(sock, select.POLLOUT, deadline):
                    return None
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                return None
            query = b"%d , %d\r\n" % (remote_port, local_port)
            while query:
                if not _ready(sock, select.POLLOUT, deadline):
                    return None
                try:
                    query = query[sock.send(query) :]
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        return None
            reply = IdentReply()
            while True:
                if not _ready(sock, select.POLLIN, deadline):
                    return None
                try:
                    data = sock.recv(128)
                except BlockingIOError:
                    data = None
                if data == b"":
                    return None
                if data and reply.feed(data):
                    return reply.raw
                if time.monotonic() >= deadline:
                    return None
    except (OSError, ValueError, OverflowError):  # ValueError/OverflowError: an unusable address or port
        return None
