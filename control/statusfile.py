"""``supervise/status``: daemontools' 18-byte service status (daemontools 0.76).

=====  =========================================================================
bytes  meaning
=====  =========================================================================
0-11   TAI64N label of the last pid change (supervise start, service start/exit)
12-15  pid of ./run, little-endian; 0 = not running
16     1 if running and paused, else 0
17     ``u`` want up, ``d`` want down, 0 after ``o`` (once)
=====  =========================================================================

Written through ``status.new`` + rename so that svstat, svok and runit's sv
never read half a file.  The same bytes are what the real ``svstat`` parses,
which is how prefork's supervisor and daemontools' clients interoperate.
"""

from __future__ import annotations

import os
import struct

from prefork import atomicfile, tai64n
from prefork.record import Record

SIZE = 18
WANT_UP, WANT_DOWN, WANT_ONCE = b"u", b"d", b"\0"
_TAIL = struct.Struct("<IB1s")


class Status(Record):
    """One decoded status file (a plain class: dataclasses would cost svstat 7 ms of imports per run)."""

    __slots__ = ("label", "pid", "paused", "want")

    def __init__(self, label: bytes, pid: int, paused: bool, want: bytes) -> None:
        self.label = label  # 12-byte TAI64N
        self.pid = pid
        self.paused = paused
        self.want = want  # one byte: b"u", b"d", b"\0" (or whatever another writer put there)

    @property
    def seconds(self) -> int:
        """Unix seconds of the label (what svstat subtracts from now)."""
        return tai64n.unpack(self.label)[0]


def encode(status: Status) -> bytes:
    """The 18 bytes of a status."""
    if len(status.label) != tai64n.SIZE or len(status.want) != 1:
        raise ValueError("a status needs a 12-byte label and a 1-byte want")
    return status.label + _TAIL.pack(status.pid, 1 if status.paused else 0, status.want)


def decode(data: bytes) -> Status:
    """Decode the first 18 bytes (runit's 20-byte files have the same first 18); ValueError if shorter."""
    if len(data) < SIZE:
        raise ValueError("bad format")
    pid, paused, want = _TAIL.unpack_from(data, 12)
    return Status(label=bytes(data[:12]), pid=pid, paused=bool(paused), want=want)


def write(directory: str, status: Status) -> None:
    """Write DIR/status via DIR/status.new + rename, as supervise does (mode 0644 less the umask)."""
    atomicfile.replace(os.path.join(directory, "status"), encode(status), os.path.join(directory, "status.new"))


def read(directory: str) -> Status:
    """Read DIR/status; OSError from open/read, ValueError('bad format') when it is short."""
    with open(os.path.join(directory, "status"), "rb") as f:
        return decode(f.read(SIZE))
