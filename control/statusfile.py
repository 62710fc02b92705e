"""``supervise/status``: the one home of the service status formats, a codec per format.

daemontools 0.76, 18 bytes (what svstat, svok's callers and this supervisor read)::

    0-11   TAI64N label of the last pid change (supervise start, service start/exit)
    12-15  pid of ./run, little-endian; 0 = not running
    16     1 if running and paused, else 0
    17     ``u`` want up, ``d`` want down, 0 after ``o`` (once)

runit's runsv (``supervise --runit``), 20 bytes: the same 18 (once is written
``d``, as runsv writes it), then::

    18     1 if TERM was sent to the running service, else 0
    19     1 running, 0 down (runsv's 2, "finish", never happens here)

and the text files ``stat`` and ``pid`` that runit's ``sv`` reads.

Every reader and writer goes through a :class:`Codec`: ``encode``/``decode``
for the bytes, ``record`` for what a supervisor's state becomes in that
format, ``files`` for every file it writes (status first).  Another format
(s6's 35-byte ``status``) is one more subclass in :data:`CODECS`.  A
file is written through ``status.new`` + rename so that nobody reads half of
one; the same bytes are what the real clients parse, which is how prefork's
supervisor and daemontools' or runit's clients interoperate.
"""

from __future__ import annotations

import os
import struct

from prefork import atomicfile, tai64n
from prefork.record import Record

SIZE = 18  # daemontools' size: the prefix every format here shares, all that svstat reads
WANT_UP, WANT_DOWN, WANT_ONCE = b"u", b"d", b"\0"


class Status(Record):
    """One decoded status file (a plain class: dataclasses would cost svstat 7 ms of imports per run)."""

    __slots__ = ("label", "pid", "paused", "want", "term", "exiting")

    def __init__(self, label: bytes, pid: int, paused: bool, want: bytes, term: bool = False,
                 exiting: bool = False) -> None:
        self.label = label  # 12-byte TAI64N
        self.pid = pid
        self.paused = paused
        self.want = want  # one byte: b"u", b"d", b"\0" (or whatever another writer put there)
        self.term = term  # runit: TERM sent to the running service (daemontools has no such byte)
        self.exiting = exiting  # runit: the supervisor exits once the service is down (stat's "want exit")

    @property
    def seconds(self) -> int:
        """Unix seconds of the label (what svstat subtracts from now)."""
        return tai64n.unpack(self.label)[0]


class Codec:
    """daemontools' 18-byte format; a subclass per other format overrides what differs."""

    name = "daemontools"
    size = SIZE
    once = WANT_ONCE  # the want byte of "o" (run once)
    _tail = struct.Struct("<IB1s")

    def encode(self, status: Status) -> bytes:
        """The SIZE bytes of STATUS."""
        if len(status.label) != tai64n.SIZE or len(status.want) != 1:
            raise ValueError("a status needs a 12-byte label and a 1-byte want")
        return status.label + self._tail.pack(*self._fields(status))

    def _fields(self, status: Status) -> tuple[object, ...]:
        return status.pid, 1 if status.paused else 0, status.want

    def decode(self, data: bytes) -> Status:
        """Decode the first SIZE bytes (longer data is another format's: its prefix is read); ValueError if shorter."""
        if len(data) < self.size:
            raise ValueError("bad format")
        pid, paused, want, *rest = self._tail.unpack_from(data, tai64n.SIZE)
        return Status(bytes(data[:tai64n.SIZE]), pid, bool(paused), want, bool(rest and rest[0]))

    def record(self, label: bytes, pid: int, paused: bool, want: bytes, term_sent: bool,
               exiting: bool = False) -> Status:
        """What a supervisor's state (WANT b"u", b"d" or b"o"; EXITING after x) is in this format: paused and TERM
        only while running."""
        return Status(label, pid, bool(pid and paused), self.once if want == b"o" else want, bool(pid and term_sent),
                      exiting)

    def files(self, status: Status) -> list[tuple[str, bytes]]:
        """(name in ``supervise/``, contents) of every file a supervisor writes for STATUS, ``status`` first."""
        return [("status", self.encode(status))]


class RunitCodec(Codec):
    """runsv's 20 bytes, plus the ``stat`` and ``pid`` files runit's ``sv`` reads."""

    name = "runit"
    size = 20
    once = b"d"
    _tail = struct.Struct("<IB1sBB")

    def _fields(self, status: Status) -> tuple[object, ...]:
        return status.pid, 1 if status.paused else 0, status.want, 1 if status.term else 0, 1 if status.pid else 0

    def files(self, status: Status) -> list[tuple[str, bytes]]:
        words = ["run" if status.pid else "down"]
        if status.pid and status.paused:
            words.append("paused")
        if status.pid and status.term:
            words.append("got TERM")
        if status.pid and status.exiting:
            words.append("want exit")  # runsv's words after x; its status byte 17 says d
        elif status.pid and status.want == b"d":
            words.append("want down")
        return [("status", self.encode(status)), ("stat", (", ".join(words) + "\n").encode()),
                ("pid", f"{status.pid}\n".encode() if status.pid else b"")]


DAEMONTOOLS = Codec()
RUNIT = RunitCodec()
CODECS = {codec.name: codec for codec in (DAEMONTOOLS, RUNIT)}

# daemontools' codec is the default: its 18 bytes are the prefix every reader here needs.
encode = DAEMONTOOLS.encode
decode = DAEMONTOOLS.decode


def write(directory: str, status: Status) -> None:
    """Write DIR/status (18 bytes) via DIR/status.new + rename, as supervise does (mode 0644 less the umask)."""
    atomicfile.replace(os.path.join(directory, "status"), encode(status), os.path.join(directory, "status.new"))


def read(directory: str) -> Status:
    """Read DIR/status; OSError from open/read, ValueError('bad format') when it is short."""
    with open(os.path.join(directory, "status"), "rb") as f:
        return decode(f.read(SIZE))
