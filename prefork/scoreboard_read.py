"""Reading a tcpserver scoreboard without talking to the server (layout: scoreboard.py).

Kept apart from the writer so that the server processes never import what
only readers need, and so that the layout is tested by code that does not
write it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prefork.scoreboard import _HEADER, _SLOT, HEADER_SIZE, MAGIC, SLOT_SIZE, SLOT_STATES, VERSION


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


@dataclass
class Snapshot:
    """A consistent-enough copy of a scoreboard (counters are read one by one, never locked)."""

    version: int
    limit: int
    master_pid: int
    local_ip: str
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

    @property
    def active(self) -> int:
        """Connections in progress, including programs whose worker died."""
        return sum(s.active for s in self.slots) + self.orphans

    @property
    def accepted(self) -> int:
        return sum(s.accepted for s in self.slots)


class ScoreboardError(Exception):
    """The file is not a scoreboard this reader understands (message says why)."""


def parse(data: bytes) -> Snapshot:
    """Decode a scoreboard image; raises ScoreboardError for anything that is not layout version 1."""
    if len(data) < HEADER_SIZE:
        raise ScoreboardError("truncated header")
    h = _HEADER.unpack_from(data, 0)
    magic, version, header_size, slot_size, nslots, limit, master_pid, port = h[:8]
    if magic != MAGIC:
        raise ScoreboardError("not a prefork scoreboard")
    if version != VERSION or header_size != HEADER_SIZE or slot_size != SLOT_SIZE:
        raise ScoreboardError(f"unsupported layout version {version}")
    if len(data) < HEADER_SIZE + nslots * SLOT_SIZE:
        raise ScoreboardError("truncated slots")
    start_ns, orphans, ip, restarts, oz, onz, osig, osum = h[8:16]
    obuckets = list(h[16:28])
    name = h[29].rstrip(b"\0").decode("utf-8", "replace")
    slots = []
    for i in range(nslots):
        v = _SLOT.unpack_from(data, HEADER_SIZE + i * SLOT_SIZE)
        slots.append(
            Slot(
                index=i, pid=v[0], state=SLOT_STATES.get(v[1], str(v[1])), generation=v[2], held=v[3],
                active=v[4], waiting=bool(v[5]), accepted=v[6], denied=v[7], dropped=v[8],
                exit_zero=v[9], exit_nonzero=v[10], exit_signal=v[11], last_accept_ns=v[12],
                started_ns=v[13], duration_sum_ns=v[14], duration_buckets=list(v[15:27]),
            )
        )
    return Snapshot(
        version=version, limit=limit, master_pid=master_pid, local_ip=".".join(str(b) for b in ip),
        local_port=port, start_ns=start_ns, orphans=orphans, worker_restarts=restarts,
        orphan_exit_zero=oz, orphan_exit_nonzero=onz, orphan_exit_signal=osig,
        orphan_duration_sum_ns=osum, orphan_duration_buckets=obuckets, name=name, slots=slots,
    )


def read(path: str) -> Snapshot:
    """Read a scoreboard file without talking to the server; OSError, or ScoreboardError saying why it is none."""
    from prefork import shmfile

    try:
        mm, size = shmfile.map_regular(path, HEADER_SIZE)
    except ValueError as e:
        raise ScoreboardError(str(e)) from None
    try:
        return parse(mm[:size])
    finally:
        mm.close()
