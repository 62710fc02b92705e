"""The supervisor's service table: every service's state in one shared-memory file.

prefork's ``svscan`` (and ``supervise DIR``, the same engine with one service)
publishes here what it knows about each service, so that readers (``svstat
--all``, the metrics exporter, tests) can map the file and read it without
talking to the supervisor.  There is one writer, the supervisor's only thread;
readers in other processes use the sequence counters to never return a record
that was half-written.  ``servicetable_read.py`` is the reader; it deliberately
does not import this module, so the layout below is the contract.

The file is ``/dev/shm/prefork-svscan.<st_dev>.<st_ino>`` (or
``prefork-supervise.``) of the supervised directory's ``stat()``, so a reader
finds it from the directory alone.  It is built under a temporary name and
renamed over that path: a reader that still maps an older file keeps a
consistent (if stale) view.  Mode 0600 whatever the umask (the service names,
their pids and the directory are what daemontools keeps in 0700 ``supervise/``
directories), or 0640 with a group allowed to read it (``svscan
--table-group``); readers that are not allowed get "access denied".

The header records the supervisor's pid and its start time in clock ticks
since boot (/proc/PID/stat field 22), so readers tell a table whose writer has
died (a killed svscan leaves its table behind) even when its pid has been
reused; such a table is stale and is not shown as live.  A new svscan for the
same directory renames its own table over it; :func:`remove_stale` removes one
that nothing will replace.

So the table is never read back by a supervisor: what a killed supervisor must hand to the next one
(a back-off, recent deaths, a permanent failure, a running ./finish) is in each service's
``supervise/restart`` (control/restartfile.py), which outlives the table's rename.

Layout version 1, all integers little-endian::

    header, 1024 bytes
      0  4s   magic b"PFST"
      4  I    layout version (1)
      8  I    header size (1024): slot 0 starts here
     12  I    slot size (512)
     16  I    capacity (number of slots)
     20  I    kind: 1 svscan, 2 supervise
     24  I    owner (supervisor) pid
     28  I    length in bytes of the directory path; only the first 896 are stored
     32  Q    start time of the supervisor, ns since the epoch
     40  Q    header sequence: odd while bytes 48-87 are being written
     48  Q    generation: +1 on every allocate and release (the set of slots changed)
     56  I    slots used: high-water mark of allocated slots; slots at or above it were never written
     60  I    reserved
     64  Q    services (svscan's count, set_counters)
     72  Q    scan errors (svscan's count of failed scans or stats)
     80  Q    scans (svscan's count of directory scans)
     88  Q    start time of the owner pid in clock ticks since boot (/proc/PID/stat field 22), 0 = unknown
     96  32s  reserved
    128  896s directory: absolute path, UTF-8 (surrogateescape: raw bytes), NUL padded (truncated)

    slot i at 1024 + i * 512
      0  Q    sequence: odd while the slot is being written, 0 = never written
      8  I    pid of ./run, 0 = not running
     12  I    flags: 1 log, 2 normally up, 4 exit requested, 8 adopted, 16 inactive, 32 finishing (./finish runs),
              64 notifying (./run runs with a notification-fd: its readiness is the next field)
     16  Q    since: last state change, ns since the epoch
     24  Q    starts: times ./run was started
     32  Q    restarts: starts made because the service exited while wanted up
     40  q    last wait status (as waitpid returns it), -1 = none/unknown
     48  B    in use: 1 = a service, 0 = free (readers skip the slot)
     49  B    state: 0 down, 1 up, 2 stopping (TERM sent, not yet exited)
     50  c    want: b"u" up, b"d" down, b"o" once
     51  B    paused (1/0)
     52  H    name length in bytes (at most 259)
     54  2s   reserved
     56  Q    ready: when the running service became ready (s6's readiness: its notification-fd newline),
              ns since the epoch; 0 = not ready (down, no newline yet, or no notification-fd: s6 then never
              says ready).  A table written before this field has zeros here: not ready, as s6 says
     64  259s name: "NAME" or "NAME/log", UTF-8 (surrogateescape: raw bytes), NUL padded
    323  189s reserved

Protocol (a seqlock per slot, one for the mutable header fields): the writer
makes the sequence odd, writes the fields, then makes it even (each step one
``struct.pack_into``).  A reader reads the sequence, copies the slot, reads
the sequence again, and keeps the copy only if both reads are the same even
number; otherwise it retries a bounded number of times.  On a little-endian
host Python's struct moves a ``<Q`` with one memcpy, i.e. one aligned 8-byte
load or store, so a sequence counter itself is never seen half-changed; x86-64
makes stores visible in program order, which is all the protocol needs there.
There is no explicit memory fence, so on weakly ordered CPUs the guarantee
rests on the interpreter's own barriers.  Readers take offsets from the sizes
in the header and accept larger ones (up to 4096 bytes each), so a field can be
added in reserved or appended space without a new layout version; anything
else is a new version.  A table has at most MAX_CAPACITY (65536) slots, what a
reader is prepared to read; readers refuse a header that says more.

Slots are allocated lowest-free-first and pages of slots that were never
allocated are never written (the file is sparse, tmpfs allocates only pages
that are touched), so 1000 services cost only the pages they use.  Readers
must not touch them either: reading a hole of a tmpfs file through a mapping
allocates the page, so readers stop at "slots used".
"""

from __future__ import annotations

import heapq
import mmap
import os
import stat
import struct
import time

from prefork import proc, shmfile
from prefork.record import Record

MAGIC = b"PFST"
VERSION = 1
HEADER_SIZE = 1024
SLOT_SIZE = 512
DIR_OFFSET, DIR_SIZE = 128, 896
NAME_OFFSET, NAME_SIZE = 64, 259
BACKOFF_OFFSET = 324  # u32: the restart policy's last back-off delay in ms (0: none), in what was reserved space;
# then two u32 counters: ./finish failures, timeout-kill escalations (docs/ARCHITECTURE.md, Service table)
MAX_CAPACITY = 1 << 16  # slots; svscan caps its --max-services table there
DEFAULT_MODE = 0o600

KIND_SVSCAN, KIND_SUPERVISE = 1, 2
STATE_DOWN, STATE_UP, STATE_STOPPING = 0, 1, 2  # STOPPING: TERM sent, not yet exited
WANT_UP, WANT_DOWN, WANT_ONCE = b"u", b"d", b"o"
FLAG_LOG, FLAG_NORMALLY_UP, FLAG_EXIT_REQUESTED, FLAG_ADOPTED, FLAG_INACTIVE = 1, 2, 4, 8, 16
FLAG_FINISHING, FLAG_NOTIFYING, FLAG_FAILED = 32, 64, 128
NO_STATUS = -1

_KIND_PREFIX = {KIND_SVSCAN: "prefork-svscan", KIND_SUPERVISE: "prefork-supervise"}

_HEADER = struct.Struct("<4sIIIIIII Q")  # fixed part, 0-39; written once by create()
_SEQ = struct.Struct("<Q")
_GEN_USED = struct.Struct("<QI")  # header 48
_COUNTERS = struct.Struct("<QQQ")  # header 64
_H_SEQ, _H_GEN, _H_COUNTERS = 40, 48, 64
_H_OWNER_PID, _H_OWNER_TICKS = 24, 88
# Slot body from offset 8 up to the end of the name; pack_into writes its pad bytes as zeros.
_BODY = struct.Struct("<IIQQQq BBcBH2xQ 259s xIII")
_IN_USE = 48
assert _HEADER.size == 40 and 8 + _BODY.size == BACKOFF_OFFSET + 12
assert NAME_OFFSET + NAME_SIZE < BACKOFF_OFFSET


class ServiceRecord(Record):
    """What the supervisor knows about one service (or its log), as published.

    A plain slotted class, not a dataclass: ``dataclasses`` pulls in inspect,
    ast and re, about 2 MB in a supervisor that lives as long as the machine.
    """

    __slots__ = ("name", "pid", "want", "paused", "state", "since_ns", "starts", "restarts", "last_status", "flags",
                 "ready_ns", "backoff_ms", "finish_failures", "kill_escalations")

    def __init__(
        self,
        name: str,  # "NAME" or "NAME/log" (up to 259 bytes; longer is truncated on write)
        pid: int = 0,
        want: bytes = b"u",
        paused: bool = False,
        state: int = STATE_DOWN,
        since_ns: int = 0,  # unix time in ns of the last state change
        starts: int = 0,  # times ./run was started
        restarts: int = 0,  # starts made automatically because the service exited while wanted up
        last_status: int = NO_STATUS,  # raw wait status of the last exit (os.waitpid's), NO_STATUS if none/unknown
        flags: int = 0,
        ready_ns: int = 0,  # unix time in ns of the service's readiness, 0 = not ready
        backoff_ms: int = 0,  # the restart policy's last back-off delay (backoff-max), 0 = none
        finish_failures: int = 0,  # ./finish runs that failed (a signal, or an exit but 0 or 125)
        kill_escalations: int = 0,  # SIGKILLs sent by timeout-kill
    ) -> None:
        self.name = name
        self.pid = pid
        self.want = want
        self.paused = paused
        self.state = state
        self.since_ns = since_ns
        self.starts = starts
        self.restarts = restarts
        self.last_status = last_status
        self.flags = flags
        self.ready_ns = ready_ns
        self.backoff_ms = backoff_ms
        self.finish_failures = finish_failures
        self.kill_escalations = kill_escalations


class TableFull(Exception):
    """Every slot of the table is allocated."""


def default_path(directory: str, kind: int) -> str:
    """/dev/shm/prefork-svscan.<st_dev>.<st_ino> (or prefork-supervise.) of DIRECTORY's stat(); tempfile.gettempdir() if /dev/shm is missing."""
    st = os.stat(directory)
    return f"{shmfile.shm_dir()}/{_KIND_PREFIX[kind]}.{st.st_dev}.{st.st_ino}"


def _name_bytes(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")[:NAME_SIZE]


class ServiceTable:
    """The writer's mapping of a service table (one per supervisor process)."""

    def __init__(self, path: str, fd: int, mm: mmap.mmap, capacity: int) -> None:
        self.path = path
        self.capacity = capacity
        self._fd = fd
        self._mm = mm
        st = os.fstat(fd)
        self._identity = (st.st_dev, st.st_ino)
        self._seqs = [0] * capacity  # the writer's copy of every slot's sequence (never read back from the map)
        self._in_use = bytearray(capacity)
        self._free: list[int] = []  # released slots, reused lowest first
        self._used = 0  # high-water mark
        self._hseq = 0
        self._generation = 0

    @classmethod
    def create(
        cls, path: str, capacity: int, kind: int, directory: str, mode: int = DEFAULT_MODE, group: int | None = None
    ) -> ServiceTable:
        """Build a fresh table under a temporary name and rename it over PATH (readers never see it half-made).

        MODE 0600 unless told (0640 with GROUP, a gid, for svscan --table-group).
        """
        if not 1 <= capacity <= MAX_CAPACITY:
            raise ValueError(f"capacity must be 1..{MAX_CAPACITY}, not {capacity}")
        if kind not in _KIND_PREFIX:
            raise ValueError(f"unknown table kind {kind}")
        dirbytes = os.path.abspath(directory).encode("utf-8", "surrogateescape")
        size = HEADER_SIZE + capacity * SLOT_SIZE
        ticks = proc.start_ticks(os.getpid()) or 0

        def fill(mm: mmap.mmap) -> None:
            _HEADER.pack_into(
                mm, 0, MAGIC, VERSION, HEADER_SIZE, SLOT_SIZE, capacity, kind, os.getpid(), len(dirbytes),
                time.time_ns(),
            )
            _SEQ.pack_into(mm, _H_OWNER_TICKS, ticks)
            mm[DIR_OFFSET:DIR_OFFSET + min(len(dirbytes), DIR_SIZE)] = dirbytes[:DIR_SIZE]

        fd, mm, _identity = shmfile.create(path, size, fill, mode, group)
        return cls(path, fd, mm, capacity)

    def _header_write(self, offset: int, packer: struct.Struct, *values: object) -> None:
        mm = self._mm
        seq = self._hseq
        _SEQ.pack_into(mm, _H_SEQ, seq + 1)
        packer.pack_into(mm, offset, *values)
        _SEQ.pack_into(mm, _H_SEQ, seq + 2)
        self._hseq = seq + 2

    def allocate(self, name: str) -> int:
        """Take the lowest free slot and publish NAME there as a down service; TableFull when none is left."""
        if self._free:
            index = heapq.heappop(self._free)
        elif self._used < self.capacity:
            index = self._used
            self._used += 1
        else:
            raise TableFull(f"service table full ({self.capacity} slots)")
        self._in_use[index] = 1
        self.publish(index, ServiceRecord(name, since_ns=time.time_ns()))
        self._generation += 1
        self._header_write(_H_GEN, _GEN_USED, self._generation, self._used)
        return index

    def publish(self, index: int, rec: ServiceRecord) -> None:
        """Write the whole slot under its sequence counter (called on every state change: keep it cheap)."""
        if index < 0 or not self._in_use[index]:
            raise ValueError(f"slot {index} is not allocated")
        mm = self._mm
        off = HEADER_SIZE + index * SLOT_SIZE
        seq = self._seqs[index]
        name = _name_bytes(rec.name)
        _SEQ.pack_into(mm, off, seq + 1)
        _BODY.pack_into(
            mm, off + 8, rec.pid, rec.flags, rec.since_ns, rec.starts, rec.restarts, rec.last_status,
            1, rec.state, rec.want, rec.paused, len(name), rec.ready_ns, name, min(rec.backoff_ms, 0xFFFFFFFF),
            rec.finish_failures & 0xFFFFFFFF, rec.kill_escalations & 0xFFFFFFFF,
        )
        _SEQ.pack_into(mm, off, seq + 2)
        self._seqs[index] = seq + 2

    def release(self, index: int) -> None:
        """Free a slot: readers skip it from now on, allocate() may hand it out again."""
        if index < 0 or not self._in_use[index]:
            raise ValueError(f"slot {index} is not allocated")
        mm = self._mm
        off = HEADER_SIZE + index * SLOT_SIZE
        seq = self._seqs[index]
        _SEQ.pack_into(mm, off, seq + 1)
        mm[off + _IN_USE] = 0
        _SEQ.pack_into(mm, off, seq + 2)
        self._seqs[index] = seq + 2
        self._in_use[index] = 0
        heapq.heappush(self._free, index)
        self._generation += 1
        self._header_write(_H_GEN, _GEN_USED, self._generation, self._used)

    def set_counters(self, services: int, scan_errors: int, scans: int) -> None:
        """svscan's own numbers, in the header."""
        self._header_write(_H_COUNTERS, _COUNTERS, services, scan_errors, scans)

    def close(self, unlink: bool = False) -> None:
        """Unmap; with UNLINK also remove the file, unless a newer table has been renamed over it since."""
        if self._fd < 0:
            return
        if unlink:
            shmfile.unlink_if_same(self.path, self._identity)
        self._mm.close()
        os.close(self._fd)
        self._fd = -1


def remove_stale(path: str) -> bool:
    """Remove PATH if it is a service table whose writer is gone and that belongs to our uid; True if removed.

    What a killed supervisor leaves behind when no new table will be renamed
    over it.  A table of a running writer, a file of another user, or
    anything that is not a table is left alone.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        head = os.pread(fd, _H_OWNER_TICKS + 8, 0)
    except OSError:
        return False
    finally:
        os.close(fd)
    if not (stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and len(head) == _H_OWNER_TICKS + 8):
        return False
    if head[:4] != MAGIC:
        return False
    pid = struct.unpack_from("<I", head, _H_OWNER_PID)[0]
    ticks = _SEQ.unpack_from(head, _H_OWNER_TICKS)[0]
    if pid == os.getpid() or proc.running(pid, ticks):
        return False
    shmfile.unlink_if_same(path, (st.st_dev, st.st_ino))
    return _identity_of(path) != (st.st_dev, st.st_ino)


def _identity_of(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return st.st_dev, st.st_ino
