"""Reading the supervisor's service table without talking to the supervisor (layout: servicetable.py).

This module does not import the writer: it decodes the documented byte layout
on its own, so the tests that pass records from one to the other check the
layout, not a shared struct.  It maps the file read-only and reads only the
slots below the header's "slots used" mark (reading a never-written page of a
tmpfs file through a mapping would allocate it).
"""

from __future__ import annotations

import mmap
import os
import struct
import time

from prefork import shmfile
from prefork.record import Record

MAGIC = b"PFST"
VERSION = 1
MIN_HEADER_SIZE, MIN_SLOT_SIZE = 1024, 512  # version 1's sizes; the header's own values give the offsets
KIND_NAMES = {1: "svscan", 2: "supervise"}
STATE_NAMES = {0: "down", 1: "up", 2: "stopping"}
WANT_NAMES = {b"u": "up", b"d": "down", b"o": "once"}
FLAG_NAMES = {1: "log", 2: "normally_up", 4: "exit_requested", 8: "adopted", 16: "inactive"}
FLAG_LOG, FLAG_NORMALLY_UP = 1, 2
NO_STATUS = -1

_FIXED = struct.Struct("<4sIIIIIII Q")  # header 0-39
_SEQ = struct.Struct("<Q")
_MUTABLE = struct.Struct("<QQI4xQQQ")  # header 40-87: sequence, generation, used, services, scan errors, scans
_SLOT = struct.Struct("<QIIQQQq BBcBH10x 259s")  # slot 0-322
_DIR_OFFSET, _DIR_SIZE = 128, 896

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
    starts, restarts, last_status (raw wait status, NO_STATUS if none), flags.
    """

    __slots__ = ("slot", "name", "pid", "want", "paused", "state", "since_ns", "starts", "restarts",
                 "last_status", "flags")
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


class Snapshot(Record):
    """A copy of the table: every entry consistent on its own, the set of entries from one generation if possible."""

    __slots__ = ("path", "version", "header_size", "slot_size", "capacity", "kind", "owner_pid", "start_ns",
                 "directory", "directory_truncated", "generation", "used", "services", "scan_errors", "scans",
                 "entries")
    path: str
    version: int
    header_size: int
    slot_size: int
    capacity: int
    kind: int
    owner_pid: int
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


def _read_seqlocked(mm: mmap.mmap, offset: int, size: int, what: str) -> bytes:
    """Copy SIZE bytes at OFFSET whose first 8 bytes are a sequence counter, retrying while it moves or is odd."""
    deadline = None
    for attempt in range(TORN_TRIES):
        seq = _SEQ.unpack_from(mm, offset)[0]
        if not seq & 1:
            data = mm[offset:offset + size]
            if _SEQ.unpack_from(mm, offset)[0] == seq and _SEQ.unpack_from(data, 0)[0] == seq:
                return data
        if attempt >= 10:  # the writer is probably descheduled mid-write: let it run
            if deadline is None:
                deadline = time.monotonic() + TORN_SECONDS
            elif time.monotonic() > deadline:
                break
            time.sleep(0.0005)
    raise ServiceTableError(f"{what} is being written and did not settle (writer died mid-write?)")


def _parse(path: str, mm: mmap.mmap, size: int) -> Snapshot:
    magic, version, header_size, slot_size, capacity, kind, owner, dirlen, start_ns = _FIXED.unpack_from(mm, 0)
    if magic != MAGIC:
        raise ServiceTableError(f"{path}: not a prefork service table")
    if version != VERSION:
        raise ServiceTableError(f"{path}: unsupported layout version {version}")
    if header_size < MIN_HEADER_SIZE or slot_size < MIN_SLOT_SIZE:
        raise ServiceTableError(f"{path}: bad header (header size {header_size}, slot size {slot_size})")
    need = header_size + capacity * slot_size
    if size < need:
        raise ServiceTableError(f"{path}: truncated ({size} bytes, the header says {need})")
    stored = mm[_DIR_OFFSET:_DIR_OFFSET + min(dirlen, _DIR_SIZE)]
    directory = stored.decode("utf-8", "surrogateescape")
    for _ in range(SNAPSHOT_TRIES):
        h = _MUTABLE.unpack(_read_seqlocked(mm, 40, _MUTABLE.size, "the header"))
        generation, used = h[1], min(h[2], capacity)
        entries = []
        for i in range(used):
            off = header_size + i * slot_size
            v = _SLOT.unpack(_read_seqlocked(mm, off, _SLOT.size, f"slot {i}"))
            if v[7] != 1:  # free (or never written)
                continue
            name = v[12][: v[11]].decode("utf-8", "surrogateescape")
            entries.append(
                Entry(
                    slot=i, name=name, pid=v[1], want=v[9], paused=bool(v[10]), state=v[8], since_ns=v[3],
                    starts=v[4], restarts=v[5], last_status=v[6], flags=v[2],
                )
            )
        if _SEQ.unpack_from(mm, 48)[0] == generation:
            break  # no slot was allocated or released while we read
    return Snapshot(
        path=path, version=version, header_size=header_size, slot_size=slot_size, capacity=capacity, kind=kind,
        owner_pid=owner, start_ns=start_ns, directory=directory, directory_truncated=dirlen > _DIR_SIZE,
        generation=generation, used=used, services=h[3], scan_errors=h[4], scans=h[5], entries=entries,
    )


def read(path: str) -> Snapshot:
    """Read a service table file without talking to the supervisor; ServiceTableError says why it cannot."""
    from prefork.djb import errstr

    try:
        mm, size = shmfile.map_regular(path, _FIXED.size)
    except OSError as e:
        raise ServiceTableError(f"{path}: {errstr(e)}") from None
    except ValueError as e:
        raise ServiceTableError(f"{path}: {e}") from None
    try:
        return _parse(path, mm, size)
    finally:
        mm.close()


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


def owner_running(snap: Snapshot) -> bool:
    """Whether the supervisor that wrote the table still exists (a killed svscan leaves its table behind)."""
    if snap.owner_pid <= 0:
        return False
    try:
        os.kill(snap.owner_pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
