"""Reading a multilog counter block without talking to multilog (layout: logcounters.py).

This module does not import the writer: it decodes the documented layout on
its own, so tests that write with one and read with the other check the
layout, not a shared constant.  Each counter is loaded with one aligned 8-byte
access (``memoryview.cast("Q")``), the way the writer stores it, so a counter
read is never half-old, half-new.

The block is hostile data (its path is predictable): a header that states a
size above MAX_SIZE is refused, only the first MIN_SIZE bytes (all that
version 1 defines) are mapped, and the only exception :func:`read` raises is
:class:`LogCountersError`.
"""

from __future__ import annotations

import os

from prefork import shmfile
from prefork.record import Record

MAGIC = b"PFML"
VERSION = 1
MIN_SIZE = 4096  # version 1's size; a larger one (appended fields) is accepted
MAX_SIZE = 1 << 16  # the largest stated size accepted
_HEADER = 64
_COUNTERS = 7  # the counters this reader knows, at 64
_DIR_OFFSET, _DIR_SIZE = 256, 3840
PREFIX = "prefork-multilog"


class LogCountersError(Exception):
    """The block cannot be read (missing, not a block, unknown layout, truncated); the message is one line."""


class Snapshot(Record):
    """A copy of one block: every counter as loaded, the header as written."""

    __slots__ = ("path", "version", "size", "pid", "start_ns", "directory", "directory_truncated", "lines",
                 "bytes", "rotations", "processor_failures", "processor_crashes", "paused_ns", "write_errors")
    path: str
    version: int
    size: int
    pid: int
    start_ns: int
    directory: str
    directory_truncated: bool
    lines: int
    bytes: int
    rotations: int
    processor_failures: int
    processor_crashes: int
    paused_ns: int
    write_errors: int

    @property
    def counters(self) -> dict[str, int]:
        """The seven counters by name."""
        return {n: getattr(self, n) for n in self.__slots__[7:]}


def _parse(path: str, mm: shmfile.Mapped, size: int) -> Snapshot:
    if mm[0:4] != MAGIC:
        raise LogCountersError(f"{path}: not a prefork multilog counter block")
    with memoryview(mm) as view:
        u32 = view[:_HEADER].cast("I")
        version, stated, count, pid, dirlen = u32[1], u32[2], u32[3], u32[4], u32[5]
        u32.release()
        if version != VERSION:
            raise LogCountersError(f"{path}: unsupported layout version {version}")
        if not MIN_SIZE <= stated <= MAX_SIZE or not _COUNTERS <= count <= (stated - _HEADER) // 8:
            raise LogCountersError(f"{path}: bad header (size {stated}, {count} counters)")
        if size < stated:
            raise LogCountersError(f"{path}: truncated ({size} bytes, the header says {stated})")
        q = view[:_DIR_OFFSET].cast("Q")
        start_ns = q[3]
        c = [q[i] for i in range(_HEADER // 8, _HEADER // 8 + _COUNTERS)]  # one aligned load each
        q.release()
    stored = mm[_DIR_OFFSET:_DIR_OFFSET + min(dirlen, _DIR_SIZE)]
    return Snapshot(
        path=path, version=version, size=stated, pid=pid, start_ns=start_ns,
        directory=stored.decode("utf-8", "surrogateescape"), directory_truncated=dirlen > _DIR_SIZE,
        lines=c[0], bytes=c[1], rotations=c[2], processor_failures=c[3], processor_crashes=c[4], paused_ns=c[5],
        write_errors=c[6],
    )


def read(path: str, fd: int | None = None) -> Snapshot:
    """Read the block at PATH; LogCountersError says why it cannot be.

    FD, a descriptor of PATH opened earlier (:func:`prefork.shmfile.open_source`), is read instead of PATH.
    """
    return shmfile.read_file(path, fd, lambda mm, size: _parse(path, mm, size),
                             lambda why: LogCountersError(f"{path}: {why}"), min_size=_HEADER, max_size=MIN_SIZE)


def blocks_dir() -> str:
    """Where multilogs publish their blocks (see logcounters.default_path)."""
    return shmfile.shm_dir()


def path_for(directory: str) -> str:
    """Where multilog publishes the counters of DIRECTORY; OSError if it is missing."""
    st = os.stat(directory)
    return f"{blocks_dir()}/{PREFIX}.{st.st_dev}.{st.st_ino}"


def every_block() -> list[str]:
    """The paths of every published block (PREFIX.DEV.INODE; a block still being made is skipped)."""
    base = blocks_dir()
    try:
        names = os.listdir(base)
    except OSError:
        return []
    out = []
    for name in names:
        parts = name.split(".")
        if len(parts) == 3 and parts[0] == PREFIX and parts[1].isdigit() and parts[2].isdigit():
            out.append(f"{base}/{name}")
    return sorted(out)


def find(arg: str) -> str:
    """The block for ARG: a log directory's, or ARG itself if it is a file; LogCountersError if there is none."""
    from prefork.djb import errstr

    try:
        if not os.path.isdir(arg):
            os.stat(arg)
            return arg
        path = path_for(arg)
    except OSError as e:
        raise LogCountersError(errstr(e)) from None
    if not os.path.exists(path):
        raise LogCountersError("no multilog publishes counters for it (script word M)")
    return path

