"""The tcpserver scoreboard: one small shared-memory file per server.

The master creates it; each worker writes only its own slot; readers (the
status command, the metrics exporter, tests) map it read-only and sum slots.
One writer per field means no lock is needed for counters.  The only lock is
the one around the ``-c`` limit check (see ``capacity.py``).  It is NOT taken
on this file: the file is readable by every user, and any user may hold a
record lock on a file it can open, which would stall every accept.  It is a
POSIX record lock on ``lock_fd``, a private memory file (memfd) made with the
scoreboard and inherited by the workers, which nobody else can open; the
kernel still drops the lock when its holder dies.

Layout version 1, all integers little-endian::

    header, 256 bytes
      0  4s  magic b"PFSB"
      4  I   layout version (1)
      8  I   header size (256)
     12  I   slot size (256)
     16  I   number of slots (= --max-workers, default --workers)
     20  I   connection limit (-c)
     24  I   master pid
     28  I   local port
     32  Q   start time, ns since the epoch
     40  I   orphans: programs still running whose worker died (master writes)
     44  I   local IPv4 address (network order bytes)
     48  Q   worker restarts (master)
     56  Q   orphan programs that exited 0 (master)
     64  Q   orphan programs that exited non-zero (master)
     72  Q   orphan programs killed by a signal (master)
     80  Q   orphan connection seconds sum, ns (master)
     88  12Q orphan duration histogram buckets (master)
    184  H   metrics port, what --metrics bound (port 0 included): 0 = none
    186  B   metrics address family: 4, 6, or 0 = no --metrics address
    187  B   local address family: 6 = an IPv6 listener, its address in the
             trailer; anything else (0 in every older file) = IPv4, at 44
    188  4s  metrics IPv4 address (zeros for an IPv6 one: only its port fits)
    192  64s service name, NUL padded (--name)

    slot i at 256 + i * 256, written by worker i (master resets it on death)
      0  I   pid (0 = none)
      4  I   state (see SLOT_STATES)
      8  I   generation: how many workers have used this slot
     12  I   held: limit tokens held (one reserved for the next accept + active)
     16  I   active connections (accepted, not yet ended)
     20  I   waiting for capacity (0/1)
     24  Q   accepted
     32  Q   denied by rules
     40  Q   dropped (rules unreadable, program could not start, banner failed)
     48  Q   programs that exited 0
     56  Q   programs that exited non-zero
     64  Q   programs killed by a signal
     72  Q   last accept, ns since the epoch
     80  Q   this worker's start, ns since the epoch
     88  Q   sum of connection durations, ns
     96  12Q connection duration histogram, counts per bucket (DURATION_BUCKETS)
    192  I   the exit being counted: the program's pid (0 = none)
    196  I   ... its class (0 exit 0, 1 non-zero, 2 signal) << 8 | its histogram bucket
    200  Q   ... the exit counter of that class once counted
    208  Q   ... the duration sum once counted
    216  Q   ... that bucket's count once counted
    224  Q   refused by a per-client limit: MAXCONNIP
    232  Q   ... MAXCONNC
    240  Q   ... MAXLOAD
    248  8s  reserved

    trailer at 256 + slots * 256
      0  16s local IPv6 address (network order), when byte 187 says 6

Counters are cumulative over the generations of a slot, so they never go
backwards when a worker dies and is replaced.

A program's exit is counted exactly once even if its worker is SIGKILLed at
any instant: the worker peeks at the zombie, writes the counting record
(bytes 192-223, the pid last), stores the three counters, reaps the zombie and
then clears the pid.  A worker killed before the record's pid leaves an
unreaped zombie the master counts as an orphan; killed after it, the master
finishes the three stores from the record (``settle_exit``) and does not
count that zombie again.  ``scoreboard_read.py`` is the
reader (status tools, metrics, tests); this module is the writer's side.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from bisect import bisect_left

from prefork import shmfile

MAGIC = b"PFSB"
VERSION = 1
HEADER_SIZE = 256
SLOT_SIZE = 256
NAME_SIZE = 64
# Upper bounds in seconds of the connection-duration buckets; the last is +Inf.
DURATION_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, float("inf"))
_BUCKET_NS = tuple(int(b * 1e9) for b in DURATION_BUCKETS[:-1])

SLOT_STATES = {0: "empty", 1: "starting", 2: "ready", 3: "waiting", 4: "exited"}
STATE_EMPTY, STATE_STARTING, STATE_READY, STATE_WAITING, STATE_EXITED = range(5)

TRAILER_SIZE = 16  # after the last slot: the local IPv6 address (a reader that knows only 256 + slots x 256 skips it)
_HEADER = struct.Struct("<4sIIIIIII Q I 4s QQQQ Q 12Q 8s 64s")
_SLOT = struct.Struct("<IIIIII QQQQQQ QQQ 12Q II QQQ QQQ 8s")
assert _HEADER.size == HEADER_SIZE and _SLOT.size == SLOT_SIZE

# Field offsets inside a slot / the header, for single-field writes.
OFF_PID, OFF_STATE, OFF_GENERATION, OFF_HELD, OFF_ACTIVE, OFF_WAITING = 0, 4, 8, 12, 16, 20
OFF_ACCEPTED, OFF_DENIED, OFF_DROPPED = 24, 32, 40
OFF_EXIT_ZERO, OFF_EXIT_NONZERO, OFF_EXIT_SIGNAL = 48, 56, 64
OFF_LAST_ACCEPT, OFF_STARTED, OFF_DURATION_SUM, OFF_BUCKETS = 72, 80, 88, 96
OFF_COUNTING_PID, OFF_COUNTING_WHICH, OFF_COUNTING_EXITS, OFF_COUNTING_SUM, OFF_COUNTING_BUCKET = 192, 196, 200, 208, 216
OFF_LIMITED = 224  # three u64 counters, in LIMIT_KINDS order
LIMIT_KINDS = ("MAXCONNIP", "MAXCONNC", "MAXLOAD")
EXIT_OFFSETS = (OFF_EXIT_ZERO, OFF_EXIT_NONZERO, OFF_EXIT_SIGNAL)  # by exit class
H_ORPHANS, H_RESTARTS, H_ORPHAN_EXITS, H_ORPHAN_DURATION_SUM, H_ORPHAN_BUCKETS = 40, 48, 56, 80, 88
# The metrics address (the header's 8 bytes at 184, zero in files written before it was recorded, so the layout
# version is still 1): tcpserver-status shows it, since with port 0 and -q nothing else tells it.
H_METRICS = 184
METRICS = struct.Struct("<HBB4s")  # metrics port, its family, the LOCAL family (byte 187), metrics IPv4 address
H_LOCAL_FAMILY = 187



def bucket_index(duration_ns: int) -> int:
    """Index of the histogram bucket a connection of this length falls in (upper bounds inclusive)."""
    return bisect_left(_BUCKET_NS, duration_ns)


def default_path(master_pid: int) -> str:
    """Where the scoreboard lives when --scoreboard is not given (removed when the server exits)."""
    return f"{shmfile.shm_dir()}/prefork-tcpserver.{master_pid}"


def private_lock_file() -> int:
    """A close-on-exec descriptor of an empty file no other process can open, for record locks.

    A memfd has no name in any directory; only processes that inherit the
    descriptor (or may ptrace ours, as our own user) can reach it.  Without
    memfd_create, an unnamed O_TMPFILE file, or else a 0600 file unlinked at once.
    """
    try:
        return os.memfd_create("prefork-capacity", os.MFD_CLOEXEC)
    except (AttributeError, OSError):
        pass
    directory = shmfile.shm_dir()
    try:
        return os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except (AttributeError, OSError):
        import tempfile

        fd, path = tempfile.mkstemp(prefix="prefork-capacity.", dir=directory)
        os.unlink(path)
        os.set_inheritable(fd, False)
        return fd


class ScoreboardFile:
    """The writable mapping shared by master and workers (created by the master before forking)."""

    def __init__(self, path: str, workers: int, limit: int, master_pid: int, name: str = "") -> None:
        self.path = path
        self.workers = workers
        size = HEADER_SIZE + workers * SLOT_SIZE + TRAILER_SIZE

        def fill(mm: mmap.mmap) -> None:
            mm[:HEADER_SIZE] = _HEADER.pack(
                MAGIC, VERSION, HEADER_SIZE, SLOT_SIZE, workers, limit, master_pid, 0,
                time.time_ns(), 0, b"\0\0\0\0", 0, 0, 0, 0, 0, *([0] * 12), b"",
                name.encode("utf-8", "replace")[:NAME_SIZE],
            )

        # Readers never see a file without its header: it appears under its name complete.
        fd, self.mm, self._identity = shmfile.create(path, size, fill)
        # One aligned store per field: struct.pack_into zeroes a field before writing it byte by byte,
        # so a reader between the two saw a counter go to 0 (a "reset" to Prometheus).
        self.u32 = memoryview(self.mm).cast("I")
        self.u64 = memoryview(self.mm).cast("Q")
        self.fd = fd
        # The private file of the -c lock, made here, before the master forks: every worker must lock
        # the same file, so it is never made lazily in a worker.
        self.lock_fd = private_lock_file()

    @classmethod
    def attach(cls, path: str, fd: int, lock_fd: int | None = None) -> ScoreboardFile:
        """The scoreboard FD, created by this server before a reload, mapped again: its counters continue
        (docs/ARCHITECTURE.md, tcpserver: master, workers, scoreboard).  LOCK_FD: the ``-c`` lock file shared
        with running workers; None makes a new one."""
        self = cls.__new__(cls)
        self.path = path
        size = os.fstat(fd).st_size
        self.workers = (size - HEADER_SIZE) // SLOT_SIZE
        self.mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        st = os.fstat(fd)
        self._identity = (st.st_dev, st.st_ino)
        self.u32 = memoryview(self.mm).cast("I")
        self.u64 = memoryview(self.mm).cast("Q")
        self.fd = fd
        self.lock_fd = private_lock_file() if lock_fd is None else lock_fd
        return self

    def set_local(self, ip: str, port: int) -> None:
        """The listening address: IPv4 at 44; IPv6 in the trailer, then byte 187 says 6 (address first)."""
        import socket

        self.put32(28, port)
        if ":" in ip:
            trailer = HEADER_SIZE + self.workers * SLOT_SIZE
            self.mm[trailer : trailer + TRAILER_SIZE] = socket.inet_pton(socket.AF_INET6, ip)
            self.mm[H_LOCAL_FAMILY] = 6
        else:
            self.mm[44:48] = socket.inet_aton(ip)

    def set_metrics(self, host: str, port: int) -> None:
        """Record the exporter's bound address, in one aligned store (a reader never sees half of it)."""
        import socket

        local = self.mm[H_LOCAL_FAMILY]  # the master's own byte in this word: kept as it is
        if ":" in host:
            field = METRICS.pack(port, 6, local, b"\0\0\0\0")
        else:
            field = METRICS.pack(port, 4, local, socket.inet_aton(host))
        self.put64(H_METRICS, int.from_bytes(field, "little"))

    def slot_offset(self, index: int) -> int:
        return HEADER_SIZE + index * SLOT_SIZE

    # ``u32``/``u64`` are the file as 32- and 64-bit words: a hot path indexes them directly (offset >> 2,
    # offset >> 3), a store each, without a method call.
    def put32(self, offset: int, value: int) -> None:
        self.u32[offset >> 2] = value  # offsets of 32-bit fields are multiples of 4

    def put64(self, offset: int, value: int) -> None:
        self.u64[offset >> 3] = value  # ... and of 64-bit fields multiples of 8

    def get32(self, offset: int) -> int:
        return self.u32[offset >> 2]

    def get64(self, offset: int) -> int:
        return self.u64[offset >> 3]

    # -- counting a program's exit (the worker's side, then the master's for a dead worker) --------
    def count_exit(self, slot: int, pid: int, cls: int, bucket: int, exits: int, duration_sum: int,
                   bucket_count: int) -> None:
        """Store a program's exit in SLOT's counters (the new values given), behind its counting record.

        Called before the zombie is reaped; ``counted`` after.  See the module docstring.
        """
        u64, u32 = self.u64, self.u32  # indexed directly: this runs once per connection
        u64[(slot + OFF_COUNTING_EXITS) >> 3] = exits
        u64[(slot + OFF_COUNTING_SUM) >> 3] = duration_sum
        u64[(slot + OFF_COUNTING_BUCKET) >> 3] = bucket_count
        u32[(slot + OFF_COUNTING_WHICH) >> 2] = cls << 8 | bucket
        u32[(slot + OFF_COUNTING_PID) >> 2] = pid  # the record is complete from here on
        u64[(slot + EXIT_OFFSETS[cls]) >> 3] = exits
        u64[(slot + OFF_DURATION_SUM) >> 3] = duration_sum
        u64[(slot + OFF_BUCKETS + 8 * bucket) >> 3] = bucket_count

    def counted(self, slot: int) -> None:
        """The zombie of the record is reaped: the record is void."""
        self.put32(slot + OFF_COUNTING_PID, 0)

    def settle_exit(self, index: int) -> int:
        """For dead worker INDEX: finish the exit it was counting; returns that pid (0 if none).

        A returned pid that is still a zombie has been counted and must not be
        counted again as an orphan.  Counters only move forward to the record's
        values, so a repeat, or a worker that got as far as the stores, changes nothing.
        """
        slot = self.slot_offset(index)
        pid = self.get32(slot + OFF_COUNTING_PID)
        if not pid:
            return 0
        which = self.get32(slot + OFF_COUNTING_WHICH)
        cls, bucket = which >> 8, which & 0xFF
        if cls < len(EXIT_OFFSETS) and bucket < len(DURATION_BUCKETS):
            for off, target in (
                (slot + EXIT_OFFSETS[cls], self.get64(slot + OFF_COUNTING_EXITS)),
                (slot + OFF_DURATION_SUM, self.get64(slot + OFF_COUNTING_SUM)),
                (slot + OFF_BUCKETS + 8 * bucket, self.get64(slot + OFF_COUNTING_BUCKET)),
            ):
                if target > self.get64(off):
                    self.put64(off, target)
        self.counted(slot)
        return pid

    def unlink(self) -> None:
        """Remove the file, unless another server's scoreboard has been renamed over it since."""
        shmfile.unlink_if_same(self.path, self._identity)
