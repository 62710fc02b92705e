"""``supervise/status``: the one home of the service status formats, a codec per format.

daemontools 0.76, 18 bytes (what svstat, svok's callers and this supervisor read)::

    0-11   TAI64N label of the last pid change (supervise start, service start/exit)
    12-15  pid of ./run, little-endian; 0 = not running
    16     1 if running and paused, else 0
    17     ``u`` want up, ``d`` want down, 0 after ``o`` (once)

runit's runsv (``supervise --runit``), 20 bytes: the same 18 (once is written
``d``, as runsv writes it), then::

    18     1 if TERM was sent to the running service, else 0
    19     1 running, 0 down, 2 finish (``./finish`` runs: then bytes 12-15 are its pid, as runsv writes them)

and the text files ``stat`` and ``pid`` that runit's ``sv`` reads.

s6's s6-supervise (``supervise --s6``), 35 bytes, all big-endian (docs/CONTRACTS.md,
s6 status and events)::

    0-11   TAI64N label of the last pid change (skalibs' TAI: 27 leap seconds after djb's labels)
    12-23  TAI64N label of the last "ready" moment: up and ready, or really down
    24-31  pid of ./run, 64 bits; 0 = not running
    32-33  wait status of the last exit (0 before any)
    34     flags: 1 paused, 2 finishing, 4 want up, 8 ready (up: ready; down: really down)

Once is written "want down" (s6 has no once byte).  The codec also knows the
letters s6-supervise writes to the listeners of ``event/`` for each change
(:meth:`Codec.events`); the other formats have no such directory.

Every reader and writer goes through a :class:`Codec`: ``encode``/``decode``
for the bytes, ``record`` for what a supervisor's state becomes in that
format, ``files`` for every file it writes (status first).  Another format
is one more subclass in :data:`CODECS`.  A
file is written through ``status.new`` + rename so that nobody reads half of
one; the same bytes are what the real clients parse, which is how prefork's
supervisor and daemontools' or runit's clients interoperate.
"""

from __future__ import annotations

import os
import struct

from prefork import atomicfile, tai64n
from prefork.record import Record

SIZE = 18  # daemontools' size: the prefix the daemontools and runit formats share
MAX_SIZE = 64  # more than any format here: what a reader that tells the formats apart by size reads
WANT_UP, WANT_DOWN, WANT_ONCE = b"u", b"d", b"\0"


class Status(Record):
    """One decoded status file (a plain class: dataclasses would cost svstat 7 ms of imports per run)."""

    __slots__ = ("label", "pid", "paused", "want", "term", "ready_label", "wstat", "finishing", "ready", "exiting")

    def __init__(self, label: bytes, pid: int, paused: bool, want: bytes, term: bool = False, *,
                 ready_label: bytes = b"", wstat: int = 0, finishing: bool = False, ready: bool = False,
                 exiting: bool = False) -> None:
        self.label = label  # 12-byte TAI64N
        self.pid = pid
        self.paused = paused
        self.want = want  # one byte: b"u", b"d", b"\0" (or whatever another writer put there)
        self.term = term  # runit: TERM sent to the running service (daemontools has no such byte)
        # s6 only (the other formats have no such bytes):
        self.ready_label = ready_label  # 12-byte TAI64N of the last ready (or really down) moment; b"" unknown
        self.wstat = wstat  # wait status of the last exit
        self.finishing = finishing  # down, ./finish still running
        self.ready = ready  # up: ready; down: really down
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
    event_dir = False  # whether the supervisor keeps s6's event/ fifodir (and writes :meth:`events` there)
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

    def record(self, label: bytes, pid: int, paused: bool, want: bytes, term_sent: bool, *, wstat: int = 0,
               finishing: bool = False, ready_label: bytes = b"", previous: Status | None = None,
               exiting: bool = False, finish_pid: int = 0) -> Status:
        """What a supervisor's state (WANT b"u", b"d" or b"o") is in this format: paused and TERM only while running.

        The keywords are what only some formats record: s6's (WSTAT the last wait status, FINISHING, READY_LABEL
        the moment the running service became ready or b"", PREVIOUS the status last written) and runit's
        (EXITING after x: stat's "want exit"; FINISH_PID, ./finish's pid while FINISHING, which runsv writes).
        """
        return Status(label, pid, bool(pid and paused), self.once if want == b"o" else want, bool(pid and term_sent),
                      exiting=exiting, finishing=finishing)

    def events(self, previous: Status | None, current: Status) -> bytes:
        """The letters to write to the listeners of ``event/`` for the change PREVIOUS -> CURRENT (none here)."""
        return b""

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
        state = 2 if status.finishing else 1 if status.pid else 0
        return status.pid, 1 if status.paused else 0, status.want, 1 if status.term else 0, state

    def record(self, label: bytes, pid: int, paused: bool, want: bytes, term_sent: bool, *, wstat: int = 0,
               finishing: bool = False, ready_label: bytes = b"", previous: Status | None = None,
               exiting: bool = False, finish_pid: int = 0) -> Status:
        """runsv's state 2, "finish": the pid written is ./finish's while it runs."""
        return super().record(label, pid or (finish_pid if finishing else 0), paused, want, term_sent,
                              exiting=exiting, finishing=finishing)

    def decode(self, data: bytes) -> Status:
        status = super().decode(data)
        status.finishing = data[19] == 2  # runsv's state "finish": the pid is ./finish's
        return status

    def files(self, status: Status) -> list[tuple[str, bytes]]:
        words = ["finish" if status.finishing else "run" if status.pid else "down"]
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


class S6Codec(Codec):
    """s6-supervise's 35 bytes (big-endian, its own layout: no daemontools prefix), and its event letters."""

    name = "s6"
    size = 35
    once = WANT_DOWN  # s6 has one bit, "want up": once is "want down" while it runs
    event_dir = True
    _tail = struct.Struct(">12sQHB")
    PAUSED, FINISHING, WANT_UP, READY = 1, 2, 4, 8

    def encode(self, status: Status) -> bytes:
        if len(status.label) != tai64n.SIZE or len(status.want) != 1 or len(status.ready_label) not in (0, tai64n.SIZE):
            raise ValueError("a status needs a 12-byte label, a 1-byte want and a 12-byte (or empty) ready label")
        flags = ((self.PAUSED if status.paused else 0) | (self.FINISHING if status.finishing else 0)
                 | (self.WANT_UP if status.want == WANT_UP else 0) | (self.READY if status.ready else 0))
        leap = tai64n.SKALIBS_LEAP
        return tai64n.shift(status.label, leap) + self._tail.pack(
            tai64n.shift(status.ready_label or status.label, leap), status.pid, status.wstat & 0xFFFF, flags)

    def decode(self, data: bytes) -> Status:
        if len(data) < self.size:
            raise ValueError("bad format")
        ready_label, pid, wstat, flags = self._tail.unpack_from(data, tai64n.SIZE)
        leap = -tai64n.SKALIBS_LEAP
        return Status(tai64n.shift(bytes(data[:tai64n.SIZE]), leap), pid, bool(flags & self.PAUSED),
                      WANT_UP if flags & self.WANT_UP else WANT_DOWN, ready_label=tai64n.shift(ready_label, leap),
                      wstat=wstat,
                      finishing=bool(flags & self.FINISHING), ready=bool(flags & self.READY))

    def record(self, label: bytes, pid: int, paused: bool, want: bytes, term_sent: bool, *, wstat: int = 0,
               finishing: bool = False, ready_label: bytes = b"", previous: Status | None = None,
               exiting: bool = False, finish_pid: int = 0) -> Status:
        """s6's "ready" bit means ready while up and really down (no ./finish left) while down; its label
        stays that of the last such moment (s6-supervise keeps it through an up-not-ready spell)."""
        if pid:
            ready = bool(ready_label)
        else:
            ready = not finishing
            ready_label = b""
        kept = previous.ready_label if previous is not None else b""
        if not ready:
            ready_label = kept
        elif not pid:  # really down: since the previous status if that was really down too, else since now
            ready_label = kept if previous is not None and previous.ready and not previous.pid and kept else label
        return Status(label, pid, bool(pid and paused), self.once if want == b"o" else want,
                      ready_label=ready_label or label, wstat=max(wstat, 0), finishing=bool(not pid and finishing),
                      ready=ready)

    def events(self, previous: Status | None, current: Status) -> bytes:
        """s6-supervise's letters: ``u`` started, ``U`` ready, ``d`` died, ``D`` really down (``x``, the
        supervisor leaving, is the engine's)."""
        if previous is None:  # the first status of this supervisor: nothing happened (a takeover says no "u")
            return b""
        was_up, was_ready = bool(previous.pid), previous.ready
        if current.pid:
            letters = b"" if was_up and previous.pid == current.pid else b"u"
            if current.ready and not (was_up and was_ready and letters == b""):
                letters += b"U"
            return letters
        letters = b"d" if was_up else b""
        if current.ready and (was_up or not was_ready):
            letters += b"D"
        return letters


DAEMONTOOLS = Codec()
RUNIT = RunitCodec()
S6 = S6Codec()
CODECS = {codec.name: codec for codec in (DAEMONTOOLS, RUNIT, S6)}
MODES = tuple(CODECS)  # the supervisor modes: one per status format

# daemontools' codec is the default: its 18 bytes are the prefix every reader here needs.
encode = DAEMONTOOLS.encode
decode = DAEMONTOOLS.decode


def decode_any(data: bytes) -> Status:
    """Decode a status file of any format here, told apart by its size (s6's 35 bytes; else the 18-byte prefix)."""
    return (S6 if len(data) == S6.size else DAEMONTOOLS).decode(data)


def write(directory: str, status: Status) -> None:
    """Write DIR/status (18 bytes) via DIR/status.new + rename, as supervise does (mode 0644 less the umask)."""
    atomicfile.replace(os.path.join(directory, "status"), encode(status), os.path.join(directory, "status.new"))


def read(directory: str) -> Status:
    """Read DIR/status (any format: :func:`decode_any`); OSError from open/read, ValueError('bad format') when short."""
    with open(os.path.join(directory, "status"), "rb") as f:
        return decode_any(f.read(MAX_SIZE))
