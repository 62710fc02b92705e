"""Shared-memory files that appear whole: the tcpserver scoreboard, the service table, multilog's counters.

Writers and readers meet here: where the files live (:func:`shm_dir`), how a
writer makes one (:func:`create`) and removes it (:func:`unlink_if_same`), how
a reader maps one it was pointed at (:func:`map_regular`) and reads it
(:func:`read_file`); whether the process that wrote one is still running is
``prefork/proc.py``'s question.

Each is built under ``PATH.new.PID`` and renamed over PATH once its header is
written, so a reader never maps a file without one.  The files live in
``/dev/shm``, a directory every user may write to, so the temporary name is
created with ``O_EXCL | O_NOFOLLOW``: a symlink or file planted there by
someone else makes the creation fail instead of sending our writes (as root,
perhaps) into the file it names.

Modes, whatever the umask; never writable by anyone but the owner:

* the service table (``control/servicetable.py``): 0600, or 0640 with a group
  given to svscan (``--table-group``).  It names every service, its pids and
  the scanned directory, which daemontools keeps in 0700 ``supervise/``
  directories.
* the scoreboard and multilog's counter block: 0644.  A scoreboard holds
  connection counters and worker pids (``ps`` shows the workers anyway), a
  counter block line and byte counts and the log directory's path, not a
  line of the log.  An exporter that runs as another user (``prefork-exporter
  --user``) finds counter blocks anew on every scrape, so they must stay
  readable by all.

Readers treat what a file holds as hostile: anyone can plant a file at a
predictable name while its writer is down.  They check every count against
its documented maximum before they use it, map no more than the header's
counts call for (:func:`map_regular`'s MAX_SIZE), and never raise anything but
their own error class.
"""

from __future__ import annotations

import mmap
import os
import stat

TYPE_CHECKING = False  # the lean server processes do not import typing
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeVar

    T = TypeVar("T")


def shm_dir() -> str:
    """``/dev/shm``, or the temporary directory on a system without it."""
    if os.path.isdir("/dev/shm"):
        return "/dev/shm"
    import tempfile  # only without /dev/shm: not a light import

    return tempfile.gettempdir()


def open_source(path: str) -> int:
    """A read-only descriptor of PATH for :func:`map_regular`'s FD (never blocks on a FIFO); OSError."""
    return os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)


def map_regular(path: str, min_size: int, max_size: int | None = None,
                fd: int | None = None) -> tuple[Mapped, int]:
    """PATH mapped read-only, with its size, for a reader given PATH by a person.

    OSError if it cannot be opened or mapped; ValueError (a one-line reason)
    if it is not a regular file or has fewer than MIN_SIZE bytes.  The open
    never blocks (a FIFO given by mistake), and a device (``/dev/zero``) is
    refused instead of read without end.  At most MAX_SIZE bytes are mapped
    (the most the reader's layout can use), so a huge file costs no more than
    a file of that size; the size returned is the file's.  FD, a descriptor
    from :func:`open_source`, is read instead of opening PATH (and is left
    open): a reader that has given up the right to open PATH keeps reading it.
    """
    own = fd is None
    if fd is None:
        fd = open_source(path)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ValueError("is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        if st.st_size < max(min_size, 1):
            raise ValueError(f"truncated ({st.st_size} bytes)")
        length = st.st_size if max_size is None else min(st.st_size, max_size)
        if st.st_uid not in (0, os.geteuid()):
            # Its owner may truncate it under a mapping, and touching a page past the new end kills
            # the reader with SIGBUS: a file of another user's is read as a copy instead.
            return _Copy(_pread_all(fd, length)), st.st_size
        return mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ), st.st_size
    finally:
        if own:
            os.close(fd)


class _Copy(bytes):
    """What :func:`map_regular` gives for a file of another user's: its bytes, read once (``close`` does nothing)."""

    def close(self) -> None:
        pass


if TYPE_CHECKING:
    Mapped = mmap.mmap | _Copy  # what map_regular() gives: the file's mapping, or a copy of another user's file


def _pread_all(fd: int, length: int) -> bytes:
    """LENGTH bytes from the start of FD; a file that shrank meanwhile reads as zeros past its new end."""
    chunks = []
    got = 0
    while got < length:
        chunk = os.pread(fd, length - got, got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks).ljust(length, b"\0")


def read_file(path: str, fd: int | None, parse: Callable[[Mapped, int], T], error: Callable[[str], Exception], *,
              min_size: int, max_size: int, extent: Callable[[Mapped, int], int] | None = None,
              keep_os_errors: bool = False) -> T:
    """The shape every shared-memory reader has: PARSE(mapping, file size) of PATH, mapped by :func:`map_regular`.

    FD, a descriptor from :func:`open_source`, is read instead of opening
    PATH (and is left open).  At most MAX_SIZE bytes are mapped; EXTENT, if
    given, is asked with that first mapping how many bytes the header calls
    for (checking it, raising the reader's own error), and exactly those are
    mapped again from the same descriptor, so what was checked is what is
    parsed.  Any OSError (unless KEEP_OS_ERRORS) and map_regular's ValueError
    become ERROR(one-line reason); the mapping is closed however PARSE ends.
    """
    own = fd is None
    try:
        if fd is None:
            fd = open_source(path)
        try:
            mm, size = map_regular(path, min_size, max_size, fd)
            if extent is not None:
                try:
                    need = extent(mm, size)
                finally:
                    mm.close()
                mm, size = map_regular(path, need, need, fd)
        finally:
            if own:
                os.close(fd)
    except OSError as e:
        if keep_os_errors:
            raise
        from prefork.djb import errstr

        raise error(errstr(e)) from None
    except ValueError as e:
        raise error(str(e)) from None
    try:
        return parse(mm, size)
    finally:
        mm.close()


def printable(text: str) -> str:
    """TEXT read from a shared-memory file, fit to print as (part of) one line: control characters and line or
    paragraph separators become ``?`` (a newline in a service name would forge another service's line); raw
    bytes kept by surrogateescape stay as they are."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or "\udc80" <= ch <= "\udcff" else "?" for ch in text)


def create(
    path: str, size: int, fill: Callable[[mmap.mmap], None], mode: int = 0o644, group: int | None = None
) -> tuple[int, mmap.mmap, tuple[int, int]]:
    """Create PATH of SIZE bytes, FILL its mapping, then rename it into place: (fd, mapping, (dev, inode)).

    MODE whatever the umask (nothing but the owner may write: 0o022 is
    refused), group GROUP (a gid) if given.  OSError if the temporary file
    cannot be made (one planted by someone else included), given GROUP, or
    renamed; nothing is left behind then.
    """
    if mode & ~0o755:
        raise ValueError(f"mode {mode:o}: only the owner may write a shared-memory file")
    tmp = f"{path}.new.{os.getpid()}"
    _unlink(tmp)  # left by a killed process that had our pid (unlink never follows a symlink)
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode & 0o700)
    try:
        if group is not None:
            os.fchown(fd, -1, group)
        os.fchmod(fd, mode)
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
