"""Shared-memory files that appear whole: the tcpserver scoreboard, the service table, multilog's counters.

Writers and readers meet here: where the files live (:func:`shm_dir`), how a
writer makes one (:func:`create`) and removes it (:func:`unlink_if_same`), and
how a reader maps one it was pointed at (:func:`map_regular`).

Each is built under ``PATH.new.PID`` and renamed over PATH once its header is
written, so a reader never maps a file without one.  The files live in
``/dev/shm``, a directory every user may write to, so the temporary name is
created with ``O_EXCL | O_NOFOLLOW``: a symlink or file planted there by
someone else makes the creation fail instead of sending our writes (as root,
perhaps) into the file it names.  Mode 0644 whatever the umask: readers (the
exporter, svstat --all) may run as other users.
"""

from __future__ import annotations

import mmap
import os
import stat

TYPE_CHECKING = False  # the lean server processes do not import typing
if TYPE_CHECKING:
    from collections.abc import Callable


def shm_dir() -> str:
    """``/dev/shm``, or the temporary directory on a system without it."""
    if os.path.isdir("/dev/shm"):
        return "/dev/shm"
    import tempfile  # only without /dev/shm: not a light import

    return tempfile.gettempdir()


def map_regular(path: str, min_size: int) -> tuple[mmap.mmap, int]:
    """PATH mapped read-only, with its size, for a reader given PATH by a person.

    OSError if it cannot be opened or mapped; ValueError (a one-line reason)
    if it is not a regular file or has fewer than MIN_SIZE bytes.  The open
    never blocks (a FIFO given by mistake), and a device (``/dev/zero``) is
    refused instead of read without end.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ValueError("is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        if st.st_size < max(min_size, 1):
            raise ValueError(f"truncated ({st.st_size} bytes)")
        return mmap.mmap(fd, st.st_size, mmap.MAP_SHARED, mmap.PROT_READ), st.st_size
    finally:
        os.close(fd)


def create(path: str, size: int, fill: Callable[[mmap.mmap], None]) -> tuple[int, mmap.mmap, tuple[int, int]]:
    """Create PATH of SIZE bytes, FILL its mapping, then rename it into place: (fd, mapping, (dev, inode)).

    OSError if the temporary file cannot be made (one planted by someone else
    included) or the rename fails; nothing is left behind then.
    """
    tmp = f"{path}.new.{os.getpid()}"
    _unlink(tmp)  # left by a killed process that had our pid (unlink never follows a symlink)
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        os.fchmod(fd, 0o644)
        os.ftruncate(fd, size)  # sparse: only the pages written get allocated
        mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        try:
            fill(mm)
            st = os.fstat(fd)
            os.rename(tmp, path)
        except BaseException:
            mm.close()
            raise
    except BaseException:
        os.close(fd)
        _unlink(tmp)
        raise
    return fd, mm, (st.st_dev, st.st_ino)


def unlink_if_same(path: str, identity: tuple[int, int]) -> None:
    """Remove PATH if it is still the file IDENTITY (dev, inode), not a newer one renamed over it since."""
    try:
        st = os.stat(path, follow_symlinks=False)
        if (st.st_dev, st.st_ino) == identity:
            os.unlink(path)
    except OSError:
        pass


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
