"""Reading the supervisor's service table without talking to the supervisor (layout: servicetable.py).

This module does not import the writer: it decodes the documented byte layout
on its own, so the tests that pass records from one to the other check the
layout, not a shared struct.  It maps the file read-only and reads only the
slots below the header's "slots used" mark (reading a never-written page of a
tmpfs file through a mapping would allocate it).

The file is hostile data (anyone can plant one at the predictable path while
the supervisor is down): the header's sizes and counts are checked against
their maximums (header and slot size at most 4096 bytes, at most MAX_CAPACITY
slots, at most MAX_TABLE_SIZE bytes in all) before anything is mapped, only
the bytes they call for are mapped, a file shorter than they say is refused,
and slot fields outside their documented range read as unknown (a wait status
that is none, a state or want shown as it is).  The only exception
:func:`read` raises is :class:`ServiceTableError`.
"""

from __future__ import annotations

import os
import struct
import time

from prefork import proc, shmfile
from prefork.record import Record

MAGIC = b"PFST"
VERSION = 1
MIN_HEADER_SIZE, MIN_SLOT_SIZE = 1024, 512  # version 1's sizes; the header's own values give the offsets
MAX_HEADER_SIZE = MAX_SLOT_SIZE = 4096  # larger ones (appended fields) are accepted up to a page
MAX_CAPACITY = 1 << 16  # slots (the writer's maximum)
MAX_TABLE_SIZE = MAX_HEADER_SIZE + MAX_CAPACITY * MIN_SLOT_SIZE  # 32 MiB + 4 KiB: the most a reader maps
MAX_WAIT_STATUS = 0xFFFF  # a wait status is 16 bits; anything else in the field is no status
KIND_SVSCAN, KIND_SUPERVISE = 1, 2
KIND_NAMES = {KIND_SVSCAN: "svscan", KIND_SUPERVISE: "supervise"}
STATE_NAMES = {0: "down", 1: "up", 2: "stopping"}
WANT_NAMES = {b"u": "up", b"d": "down", b"o": "once"}
FLAG_NAMES = {1: "log", 2: "normally_up", 4: "exit_requested", 8: "adopted", 16: "inactive", 32: "finishing",
              64: "notifying", 128: "failed"}
FLAG_LOG, FLAG_NORMALLY_UP, FLAG_NOTIFYING, FLAG_FAILED = 1, 2, 64, 128
NO_STATUS = -1

_FIXED = struct.Struct("<4sIIIIIII Q")  # header 0-39
_SEQ = struct.Struct("<Q")
_MUTABLE = struct.Struct("<QQI4xQQQ")  # header 40-87: sequence, generation, used, services, scan errors, scans
_SLOT = struct.Struct("<QIIQQQq BBcBH2xQ 259s xIII")  # slot 0-335
_DIR_OFFSET, _DIR_SIZE = 128, 896
_OWNER_TICKS = 88

# Retry bounds: a torn slot means the writer is between two stores, which it leaves within microseconds
# unless it is descheduled; a slot still odd after this long belongs to a writer that died mid-write.
TORN_TRIES = 2000
TORN_SECONDS = 0.5
SNAPSHOT_TRIES = 5


class ServiceTableError(Exception):
    """The table cannot be read (missing, not a table, unknown layout, truncated); the message is one line."""


class Entry(Record):
    """One service (or log) slot as a reader sees it.

    slot, name, pid, want (b"u", b"d", b"o"), paused, state (0 down, 1 up, 2 stopping), since_ns,
    starts, restarts, last_status (raw wait status, NO_STATUS if none), flags, ready_ns (when it became ready, 0 = not ready),
    backoff_ms (the restart policy's last back-off delay, 0 = none), finish_failures and kill_escalations (counters).
    """

    __slots__ = ("slot", "name", "pid", "want", "paused", "state", "since_ns", "starts", "restarts",
                 "last_status", "flags", "ready_ns", "backoff_ms", "finish_failures", "kill_escalations")
    slot: int
    name: str
    pid: int
    want: bytes
    paused: bool
    state: int
    since_ns: int
    starts: int
    restarts: int
    last_status: int
    flags: int
    ready_ns: int
    backoff_ms: int
    finish_failures: int
    kill_escalations: int

    @property
    def ready(self) -> bool:
        """Running and ready (s6's readiness: the notification-fd newline came)."""
        return bool(self.pid and self.ready_ns)


class Snapshot(Record):
    """A copy of the table: every entry consistent on its own, the set of entries from one generation if possible."""

    __slots__ = ("path", "version", "header_size", "slot_size", "capacity", "kind", "owner_pid", "owner_ticks",
                 "start_ns", "directory", "directory_truncated", "generation", "used", "services", "scan_errors",
                 "scans", "entries")
    path: str
    version: int
    header_size: int
    slot_size: int
    capacity: int
    kind: int
    owner_pid: int
    owner_ticks: int  # the owner's start time in clock ticks since boot (/proc/PID/stat field 22), 0 = unknown
    start_ns: int
    directory: str
    directory_truncated: bool
    generation: int
    used: int
    services: int
    scan_errors: int
    scans: int
    entries: list[Entry]

    @property
    def kind_name(self) -> str:
        return KIND_NAMES.get(self.kind, str(self.kind))


def _read_seqlocked(mm: shmfile.Mapped, offset: int, size: int, what: str, deadline: list[float]) -> bytes:
    """Copy SIZE bytes at OFFSET whose first 8 bytes are a sequence counter, retrying while it moves or is odd.

    DEADLINE holds the monotonic time after which a read of the table stops waiting (set at its first wait):
    one budget for the whole table, so a file whose slots never settle costs TORN_SECONDS, not that per slot.
    """
    for attempt in range(TORN_TRIES):
        seq = _SEQ.unpack_from(mm, offset)[0]
        if not seq & 1:
            data = mm[offset:offset + size]
            if _SEQ.unpack_from(mm, offset)[0] == seq and _SEQ.unpack_from(data, 0)[0] == seq:
                return data
        if attempt >= 10:  # the writer is probably descheduled mid-write: let it run
            if not deadline:
                deadline.append(time.monotonic() + TORN_SECONDS)
            elif time.monotonic() > deadline[0]:
                break
            time.sleep(0.0005)
    raise ServiceTableError(f"{what} is being written and did not settle (writer died mid-write?)")


def _check_header(path: str, head: bytes, size: int) -> int:
    """The number of bytes the fixed header HEAD of a SIZE-byte file says the table has; ServiceTableError."""
    magic, version, header_size, slot_size, capacity, _kind, _owner, _dirlen, _start = _FIXED.unpack_from(head, 0)
    if magic != MAGIC:
        raise ServiceTableError(f"{path}: not a prefork service table")
    if version != VERSION:
        raise ServiceTableError(f"{path}: unsupported layout version {version}")
    if not (MIN_HEADER_SIZE <= header_size <= MAX_HEADER_SIZE and MIN_SLOT_SIZE <= slot_size <= MAX_SLOT_SIZE):
        raise ServiceTableError(f"{path}: bad header (header size {header_size}, slot size {slot_size})")
    need = header_size + capacity * slot_size
    if capacity > MAX_CAPACITY or need > MAX_TABLE_SIZE:
        raise ServiceTableError(f"{path}: bad header ({capacity} slots of {slot_size} bytes,"
                                f" at most {MAX_CAPACITY} and {MAX_TABLE_SIZE} bytes)")
    if size < need:
        raise ServiceTableError(f"{path}: truncated ({size} bytes, the header says {need})")
    return need


def _parse(path: str, mm: shmfile.Mapped, size: int) -> Snapshot:
    _magic, version, header_size, slot_size, capacity, kind, owner, dirlen, start_ns = _FIXED.unpack_from(mm, 0)
    owner_ticks = _SEQ.unpack_from(mm, _OWNER_TICKS)[0]
    stored = mm[_DIR_OFFSET:_DIR_OFFSET + min(dirlen, _DIR_SIZE)]
    directory = stored.decode("utf-8", "surrogateescape")
    deadline: list[float] = []
    for _ in range(SNAPSHOT_TRIES):
        h = _MUTABLE.unpack(_read_seqlocked(mm, 40, _MUTABLE.size, "the header", deadline))
        generation, used = h[1], min(h[2], capacity)
        entries = []
        for i in range(used):
            off = header_size + i * slot_size
            v = _SLOT.unpack(_read_seqlocked(mm, off, _SLOT.size, f"slot {i}", deadline))
            if v[7] != 1:  # free (or never written)
                continue
            name = v[13][: v[11]].decode("utf-8", "surrogateescape")
            status = v[6] if 0 <= v[6] <= MAX_WAIT_STATUS else NO_STATUS
            entries.append(
                Entry(
                    slot=i, name=name, pid=v[1], want=v[9], paused=bool(v[10]), state=v[8], since_ns=v[3],
                    starts=v[4], restarts=v[5], last_status=status, flags=v[2], ready_ns=v[12], backoff_ms=v[14],
                    finish_failures=v[15], kill_escalations=v[16],
                )
            )
        if _SEQ.unpack_from(mm, 48)[0] == generation:
            break  # no slot was allocated or released while we read
    return Snapshot(
        path=path, version=version, header_size=header_size, slot_size=slot_size, capacity=capacity, kind=kind,
        owner_pid=owner, owner_ticks=owner_ticks, start_ns=start_ns, directory=directory,
        directory_truncated=dirlen > _DIR_SIZE,
        generation=generation, used=used, services=h[3], scan_errors=h[4], scans=h[5], entries=entries,
    )


def read(path: str, fd: int | None = None) -> Snapshot:
    """Read a service table file without talking to the supervisor; ServiceTableError says why it cannot.

    FD, a descriptor of PATH opened earlier (:func:`prefork.shmfile.open_source`), is read instead of PATH.
    The fixed header is mapped first; only the bytes it is checked to call for are mapped to be parsed.
    """
    return shmfile.read_file(
        path, fd, lambda mm, size: _parse(path, mm, size), lambda why: ServiceTableError(f"{path}: {why}"),
        min_size=_FIXED.size, max_size=_FIXED.size, extent=lambda mm, size: _check_header(path, mm[:_FIXED.size], size),
    )


def paths(directory: str) -> list[str]:
    """Where a running svscan, then a supervise, for DIRECTORY publishes its table (see servicetable.default_path)."""
    st = os.stat(directory)
    base = shmfile.shm_dir()
    return [f"{base}/prefork-{kind}.{st.st_dev}.{st.st_ino}" for kind in ("svscan", "supervise")]


def find(directory: str) -> str:
    """The table of the prefork svscan (else supervise) running for DIRECTORY; ServiceTableError if there is none."""
    try:
        candidates = paths(directory)
    except OSError as e:
        from prefork.djb import errstr

        raise ServiceTableError(errstr(e)) from None
    for path in candidates:
        if os.path.exists(path):
            return path
    raise ServiceTableError("no prefork svscan or supervise has a table for it")


def entry_for(directory: str) -> Entry | None:
    """The entry of the service in DIRECTORY in the table of the prefork supervisor running it, or None.

    Looked for in a standalone supervise's table of DIRECTORY, then in the svscan's
    of the directory above (entry NAME) and, for a ``log`` directory, two above
    (entry ``NAME/log``).  A table whose writer is gone, or that cannot be read,
    counts as none: the caller then knows only what the status file says.
    """
    path = os.path.abspath(directory)
    parent, name = os.path.split(path)
    candidates: list[tuple[int, str, str | None]] = [(1, path, None), (0, parent, name)]
    if name == "log":
        grand, service = os.path.split(parent)
        candidates.append((0, grand, f"{service}/log"))
    for kind, where, entry_name in candidates:
        try:
            table = paths(where)[kind]
            if not os.path.exists(table):
                continue
            snap = read(table)
        except (OSError, ServiceTableError):
            continue
        if not owner_running(snap):
            continue
        for entry in snap.entries:
            if entry_name is None or entry.name == entry_name:
                return entry
    return None


def owner_running(snap: Snapshot) -> bool:
    """Whether the supervisor that wrote the table still runs: its pid exists, is no zombie, and is the same
    process (started at the recorded time), not a later one that got the pid of a killed svscan."""
    return proc.running(snap.owner_pid, snap.owner_ticks)
