"""Reading a tcpserver scoreboard without talking to the server (layout: scoreboard.py).

Kept apart from the writer so that the server processes never import what
only readers need, and so that the layout is tested by code that does not
write it.

The file is hostile data (its path is predictable, and a reader may be
pointed at anything): a header that claims more than MAX_SLOTS (4096) worker
slots is refused, no more than MAX_SIZE bytes are mapped and only the header
and the slots it declares are copied (a larger file costs no more), and
the only exceptions :func:`read` raises are OSError (the file cannot be
opened) and :class:`ScoreboardError`.  The scoreboard is mode 0644, written by
the server only: it holds connection counters and worker pids, which ``ps``
shows anyway.
"""

from __future__ import annotations

import mmap
import struct
from array import array
from dataclasses import dataclass, field

from prefork import shmfile
from prefork.scoreboard import (
    _HEADER,
    _SLOT,
    H_LOCAL_FAMILY,
    HEADER_SIZE,
    MAGIC,
    METRICS,
    SLOT_SIZE,
    SLOT_STATES,
    TRAILER_SIZE,
    VERSION,
)


@dataclass
class Slot:
    """One worker slot as a reader sees it."""

    index: int
    pid: int
    state: str
    generation: int
    held: int
    active: int
    waiting: bool
    accepted: int
    denied: int
    dropped: int
    exit_zero: int
    exit_nonzero: int
    exit_signal: int
    last_accept_ns: int
    started_ns: int
    duration_sum_ns: int
    duration_buckets: list[int] = field(default_factory=list)
    limited: tuple[int, int, int] = (0, 0, 0)  # refused by MAXCONNIP, MAXCONNC, MAXLOAD (LIMIT_KINDS)


@dataclass
class Snapshot:
    """A consistent-enough copy of a scoreboard (counters are read one by one, never locked)."""

    version: int
    limit: int
    master_pid: int
    local_ip: str  # dotted quad, or an IPv6 address as addr.format_ip6 writes it
    local_port: int
    start_ns: int
    orphans: int
    worker_restarts: int
    orphan_exit_zero: int
    orphan_exit_nonzero: int
    orphan_exit_signal: int
    orphan_duration_sum_ns: int
    orphan_duration_buckets: list[int]
    name: str
    slots: list[Slot]
    metrics_port: int = 0  # the exporter's bound port (--metrics), 0 = none recorded
    metrics_ip: str = ""  # its IPv4 address; "" for an IPv6 one (only the port is recorded)

    @property
    def active(self) -> int:
        """Connections in progress, including programs whose worker died."""
        return sum(s.active for s in self.slots) + self.orphans

    @property
    def accepted(self) -> int:
        return sum(s.accepted for s in self.slots)

    @property
    def local(self) -> str:
        """``IP:PORT``, an IPv6 address in brackets (``[::1]:PORT``)."""
        from prefork.addr import host_port

        return host_port(self.local_ip, self.local_port)


MAX_SLOTS = 4096  # worker slots a reader accepts: 1 MiB of scoreboard
MAX_SIZE = HEADER_SIZE + MAX_SLOTS * SLOT_SIZE + TRAILER_SIZE
_NSLOTS = struct.Struct("<I")  # header offset 16


class ScoreboardError(Exception):
    """The file is not a scoreboard this reader understands (message says why)."""


def parse(data: bytes | mmap.mmap) -> Snapshot:
    """Decode a scoreboard image; ScoreboardError for anything that is not layout version 1 with at most
    MAX_SLOTS slots.  Bytes past the slots the header declares are ignored."""
    if len(data) < HEADER_SIZE:
        raise ScoreboardError("truncated header")
    h = _HEADER.unpack_from(data, 0)
    magic, version, header_size, slot_size, nslots, limit, master_pid, port = h[:8]
    if magic != MAGIC:
        raise ScoreboardError("not a prefork scoreboard")
    if version != VERSION or header_size != HEADER_SIZE or slot_size != SLOT_SIZE:
        raise ScoreboardError(f"unsupported layout version {version}")
    if nslots > MAX_SLOTS:
        raise ScoreboardError(f"bad header ({nslots} slots, at most {MAX_SLOTS})")
    if len(data) < HEADER_SIZE + nslots * SLOT_SIZE:
        raise ScoreboardError("truncated slots")
    start_ns, orphans, ip, restarts, oz, onz, osig, osum = h[8:16]
    obuckets = list(h[16:28])
    name = h[29].rstrip(b"\0").decode("utf-8", "replace")
    mport, mfamily, lfamily, mip = METRICS.unpack(h[28])
    if mfamily not in (4, 6) or not mport:
        mport, mfamily = 0, 0  # any other byte: no address, never an error
    slots = []
    for i in range(nslots):
        v = _SLOT.unpack_from(data, HEADER_SIZE + i * SLOT_SIZE)
        slots.append(
            Slot(
                index=i, pid=v[0], state=SLOT_STATES.get(v[1], str(v[1])), generation=v[2], held=v[3],
                active=v[4], waiting=bool(v[5]), accepted=v[6], denied=v[7], dropped=v[8],
                exit_zero=v[9], exit_nonzero=v[10], exit_signal=v[11], last_accept_ns=v[12],
                started_ns=v[13], duration_sum_ns=v[14], duration_buckets=list(v[15:27]), limited=v[32:35],
            )
        )
    local_ip = ".".join(str(b) for b in ip)
    if lfamily == 6:  # an IPv6 listener: its address is in the trailer after the slots
        trailer = HEADER_SIZE + nslots * SLOT_SIZE
        if len(data) < trailer + TRAILER_SIZE:
            raise ScoreboardError("truncated local address")
        from prefork.addr import format_ip6

        local_ip = format_ip6(bytes(data[trailer : trailer + TRAILER_SIZE]))
    return Snapshot(
        version=version, limit=limit, master_pid=master_pid, local_ip=local_ip,
        local_port=port, start_ns=start_ns, orphans=orphans, worker_restarts=restarts,
        orphan_exit_zero=oz, orphan_exit_nonzero=onz, orphan_exit_signal=osig,
        orphan_duration_sum_ns=osum, orphan_duration_buckets=obuckets, name=name, slots=slots,
        metrics_port=mport, metrics_ip=".".join(str(b) for b in mip) if mfamily == 4 else "",
    )


def read(path: str, fd: int | None = None) -> Snapshot:
    """Read a scoreboard file without talking to the server; OSError, or ScoreboardError saying why it is none.

    FD, a descriptor of PATH opened earlier (:func:`prefork.shmfile.open_source`), is read instead of PATH.
    At most MAX_SIZE bytes are mapped, and only the header and the slots it declares are copied.
    """
    return shmfile.read_file(path, fd, lambda mm, _size: parse(_copy(mm)), ScoreboardError,
                             min_size=HEADER_SIZE, max_size=MAX_SIZE, keep_os_errors=True)


def _copy(mm: shmfile.Mapped) -> bytes:
    """The header and the declared slots (never more than MAX_SIZE), each aligned 8-byte word loaded once, whole.

    The writers store every field with one aligned store (``ScoreboardFile.put32``/``put64``); loading
    words whole (``memoryview.cast``) is what makes a reader never see a counter half-written.
    """
    nslots = _NSLOTS.unpack_from(mm, 16)[0] if len(mm) >= HEADER_SIZE else 0
    trailer = TRAILER_SIZE if len(mm) >= HEADER_SIZE and mm[H_LOCAL_FAMILY] == 6 else 0
    end = min(len(mm), HEADER_SIZE + min(nslots, MAX_SLOTS + 1) * SLOT_SIZE + trailer)
    words = end // 8
    with memoryview(mm) as view, view[: words * 8].cast("Q") as q:
        return array("Q", q.tolist()).tobytes() + bytes(view[words * 8:end])


LIVE_STATES = frozenset(("starting", "ready", "waiting"))  # slot states of a worker that is there


def service_name(snap: Snapshot) -> str:
    """The ``service`` label of a scoreboard: its --name, else HOST:PORT."""
    return snap.name or snap.local
