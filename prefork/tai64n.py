"""TAI64N labels as daemontools writes them: the one shared codec.

12 bytes: big-endian seconds plus 2^62 + 10, then big-endian nanoseconds.
djb's programs take the time from gettimeofday(), so their nanoseconds are
``microseconds * 1000 + 500``; ``now()`` does the same, so labels written by
prefork are indistinguishable from daemontools' (supervise/status, multilog
file names, tai64n output).
"""

from __future__ import annotations

import struct
import time

OFFSET = (1 << 62) + 10
_LABEL = struct.Struct(">QI")
SIZE = _LABEL.size  # 12
# skalibs (s6's library) labels true TAI: to djb's labels it adds the leap seconds since 1972 (27, the last
# in 2016), so s6's supervise/status says a second 27 seconds later than daemontools' would.
SKALIBS_LEAP = 27


def pack(seconds: int, nanoseconds: int) -> bytes:
    """The 12-byte binary label of a Unix time."""
    return _LABEL.pack(seconds + OFFSET, nanoseconds)


def unpack(label: bytes) -> tuple[int, int]:
    """(Unix seconds, nanoseconds) of a 12-byte binary label (its first 12 bytes); ValueError if shorter."""
    if len(label) < SIZE:
        raise ValueError(f"a TAI64N label is {SIZE} bytes, not {len(label)}")
    secs, nano = _LABEL.unpack_from(label)
    return secs - OFFSET, nano


def shift(label: bytes, seconds: int) -> bytes:
    """LABEL moved by SECONDS (b"" stays b""): between djb's labels and skalibs' (:data:`SKALIBS_LEAP`).

    Total on any 12 bytes (a label read from a file is data): the seconds wrap around 2^64.
    """
    if not label:
        return label
    secs, nano = _LABEL.unpack_from(label)
    return _LABEL.pack((secs + seconds) % (1 << 64), nano)


def now() -> bytes:
    """The label of the current time, with daemontools' microsecond resolution (nanoseconds end in 500)."""
    ns = time.time_ns()
    return pack(ns // 1_000_000_000, (ns % 1_000_000_000) // 1000 * 1000 + 500)


def external(label: bytes) -> str:
    """``@`` + 24 lowercase hex digits, the form multilog and tai64n print."""
    return "@" + label.hex()


def parse_external(text: str | bytes) -> bytes | None:
    """The binary label of ``@`` + exactly 24 lowercase hex digits; None for anything else."""
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            return None
    if len(text) != 25 or text[0] != "@" or any(c not in "0123456789abcdef" for c in text[1:]):
        return None
    return bytes.fromhex(text[1:])
