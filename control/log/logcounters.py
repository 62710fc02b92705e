"""multilog's counter block: one small shared-memory file per log directory that asks for it.

A log directory named after the script word ``M`` (control/log/logscript.py) gets
a block that its multilog alone writes and that readers (the metrics
exporter, tests) map read-only; ``logcounters_read.py`` is the reader and
does not import this module, so the layout below is the contract.

Where: ``/dev/shm/prefork-multilog.<st_dev>.<st_ino>`` of the log directory
(tempfile.gettempdir() where there is no /dev/shm), keyed like svscan's
service table, so a reader finds it from the directory alone and nothing
appears inside the directory, where log tools would see it.  multilog makes
it only after it has locked the directory (a second multilog refused by the
lock never touches the block of the one running), under a temporary name
renamed over that path (readers never see half a header; a new multilog's
block replaces the one a killed multilog left behind), mode 0644 whatever the
umask: it holds line and byte counts and the log directory's path, never a
line of the log, and an exporter that runs as another user (a root server's
exporter runs as nobody) finds and reads the blocks of a tree's log services
anew on every scrape.  No one but multilog may write it.  It removes the block when it ends (end of input, SIGTERM) unless a
newer one has replaced it; a killed multilog leaves it behind with its pid,
which readers check.

Layout version 1, 4096 bytes; integers in the host's byte order (little-endian
on x86-64 and arm64; a block never leaves its host)::

       0  4s     magic b"PFML"
       4  I      layout version (1)
       8  I      file size (4096)
      12  I      counters: how many 8-byte counters start at 64 (7; a reader uses those it knows)
      16  I      multilog pid
      20  I      length in bytes of the directory path; only the first 3840 are stored
      24  Q      start time: when multilog published the block, ns since the epoch
      32  32s    reserved
      64  Q      lines written: newlines written to current
      72  Q      bytes written to current
      80  Q      rotations: a full current (size, SIGALRM, ``T``) made an ``@...s`` file
      88  Q      processor failures: runs of the ``!`` processor that exited non-zero
      96  Q      processor crashes: runs of the processor killed by a signal
     104  Q      paused ns: time slept in 5-second pauses after failures (disk and processor)
     112  Q      write errors: failed system calls on the directory, each one a pause
     120  136s   reserved (room for more counters)
     256  3840s  directory: absolute path as multilog saw it at start, UTF-8 (surrogateescape), NUL padded

Every counter is cumulative from the block's start time and written with one
aligned 8-byte store (``memoryview.cast("Q")``; ``struct.pack_into`` writes a
field byte by byte and would let a reader see it drop), so a reader that
loads each one the same way never sees a counter go backwards.  The counters
cover what this multilog did after start-up (not the recovery of a previous
run's files); a new multilog on the directory starts again from 0 under a new
start time.  ``=file`` failures belong to no directory and are not counted.

This module is imported only when a script uses ``M``, and imports nothing
beyond ``os``, ``mmap`` and ``time``: multilog stays lean.
"""

from __future__ import annotations

import mmap
import os
import time

from prefork import shmfile
from prefork.control.log.logcounters_read import PREFIX, blocks_dir

MAGIC = b"PFML"
VERSION = 1
SIZE = 4096
COUNTERS_OFFSET, COUNTERS = 64, 7
DIR_OFFSET, DIR_SIZE = 256, 3840

# Indexes of the 8-byte words (offset / 8).
LINES, BYTES, ROTATIONS, PROCESSOR_FAILURES, PROCESSOR_CRASHES, PAUSED_NS, WRITE_ERRORS = range(8, 8 + COUNTERS)
_START = 3  # start time, offset 24


def default_path(st_dev: int, st_ino: int) -> str:
    """Where the block of the log directory with this device and inode lives."""
    return f"{blocks_dir()}/{PREFIX}.{st_dev}.{st_ino}"


class LogCounters:
    """The writer's mapping of one directory's block: multilog calls one method per event, each a store or two."""

    __slots__ = ("path", "_mm", "_q", "_values", "_identity")

    def __init__(self, path: str, mm: mmap.mmap, identity: tuple[int, int]) -> None:
        self.path = path
        self._mm = mm
        self._q = memoryview(mm).cast("Q")
        self._values = [0] * (COUNTERS_OFFSET // 8 + COUNTERS)  # the writer's copy: never read back from the map
        self._identity = identity

    @classmethod
    def create(cls, path: str, directory: str) -> LogCounters:
        """Build a fresh block for DIRECTORY under a temporary name and rename it over PATH; raises OSError."""
        dirbytes = directory.encode("utf-8", "surrogateescape")

        def fill(mm: mmap.mmap) -> None:
            with memoryview(mm) as view:
                u32 = view.cast("I")
                mm[0:4] = MAGIC
                u32[1] = VERSION
                u32[2] = SIZE
                u32[3] = COUNTERS
                u32[4] = os.getpid()
                u32[5] = len(dirbytes)
                u32.release()
                q = view.cast("Q")
                q[_START] = time.time_ns()
                q.release()
            stored = dirbytes[:DIR_SIZE]
            mm[DIR_OFFSET:DIR_OFFSET + len(stored)] = stored

        fd, mm, identity = shmfile.create(path, SIZE, fill)
        os.close(fd)  # the mapping is all we need
        return cls(path, mm, identity)

    def _add(self, index: int, amount: int) -> None:
        value = self._values[index] + amount
        self._values[index] = value
        self._q[index] = value  # one aligned 8-byte store

    def wrote(self, nbytes: int, lines: int) -> None:
        """NBYTES holding LINES newlines are on disk in current."""
        if nbytes:
            self._add(BYTES, nbytes)
        if lines:
            self._add(LINES, lines)

    def rotated(self) -> None:
        self._add(ROTATIONS, 1)

    def failed(self) -> None:
        """The processor exited non-zero."""
        self._add(PROCESSOR_FAILURES, 1)

    def crashed(self) -> None:
        """The processor was killed by a signal."""
        self._add(PROCESSOR_CRASHES, 1)

    def error(self) -> None:
        """A system call on the directory failed; a pause follows."""
        self._add(WRITE_ERRORS, 1)

    def paused(self, ns: int) -> None:
        if ns > 0:
            self._add(PAUSED_NS, ns)

    def value(self, index: int) -> int:
        """The writer's own copy of a counter (tests read the block through logcounters_read)."""
        return self._values[index]

    def close(self, unlink: bool = False) -> None:
        """Unmap; with UNLINK also remove the file, unless a newer block has been renamed over it since."""
        if self._mm.closed:
            return
        if unlink:
            shmfile.unlink_if_same(self.path, self._identity)
        self._q.release()
        self._mm.close()
