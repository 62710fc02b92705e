"""Replacing a file so that a reader sees the old contents or the new, never a mix.

djb's way: write everything to a temporary name in the same directory, then
rename() it over the real name.  supervise's ``status.new`` and multilog's
``newstate`` follow it; so does everything prefork writes for other
programs to read.

The temporary name is always a file made afresh (:func:`create`): the new
file is created with ``O_EXCL | O_NOFOLLOW``, and whatever is there already
is unlinked first (unlink never follows a symbolic link).  These programs often run as root in
directories that someone else can write (a service directory is its owner's,
a textfile directory node_exporter's); a link planted at the temporary name,
followed by an ``O_TRUNC`` open, would make root overwrite any file the
link's owner likes.

Run state rewritten often and worthless after a reboot (supervise's
``status``) can ask for ``swap``: the new file and the old one exchange names
(renameat2's RENAME_EXCHANGE) and the old one is unlinked.  A reader still
sees one whole file or the other.  What changes is when the data reaches the
disk: ext4 (``auto_da_alloc``, its default) writes a file's data out before a
rename *over another file* returns, hundreds of µs on the path to a
service's readiness; after an exchange that is left to the background
writeback, and a version replaced within seconds is never written at all.
The price: after a power loss the file may be empty, where a plain rename
would have kept the old or the new bytes.  docs/CONTRACTS.md, "Service status".
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable

CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC
ATTEMPTS = 3  # unlink-and-create rounds lost to something making the name again before giving up


def create(path: str, mode: int = 0o644, dir_fd: int | None = None) -> int:
    """A new, empty file at PATH open for writing (what djb's open_trunc gives, without following links).

    Whatever is at PATH first (a stale leftover, a link) is removed; a
    directory there is an error (EISDIR), as is losing the name to another
    creator ATTEMPTS times in a row (EEXIST).  The mode is subject to the umask.
    The create is tried first and the unlink only when something is there: the
    name is usually free (the last rename took it away), so a supervisor's
    status write (two per restart of a flapping service, one on the path to a
    service's readiness) costs one system call, not two.
    """
    for _ in range(ATTEMPTS + 1):
        try:
            return os.open(path, CREATE, mode, dir_fd=dir_fd)
        except FileExistsError:
            pass
        try:
            os.unlink(path, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
    raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)


RENAME_EXCHANGE = 2  # linux/fs.h: renameat2()'s flag that swaps two names atomically
_renameat2: Callable[[int, bytes, int, bytes, int], int] | None = None  # glibc's wrapper, loaded on first use
_libc: ctypes.CDLL | None = None
_no_exchange: set[int] = set()  # st_dev of file systems that refused the exchange (EINVAL): rename there


def _c_library() -> ctypes.CDLL:
    """The C library (Python's os module has neither renameat2 nor fstatfs), loaded once, on first use."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def exchange(old: str, new: str, dir_fd: int | None = None) -> None:
    """Swap the names OLD and NEW (both must exist) in one step: renameat2(RENAME_EXCHANGE).

    OSError as the system gives it; EINVAL where the file system cannot
    exchange, ENOSYS where the kernel or C library has no renameat2.
    """
    global _renameat2
    if _renameat2 is None:
        func = getattr(_c_library(), "renameat2", None)
        if func is None:
            raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS), old)
        func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        func.restype = ctypes.c_int
        _renameat2 = func
    fd = -100 if dir_fd is None else dir_fd  # AT_FDCWD
    if _renameat2(fd, os.fsencode(old), fd, os.fsencode(new), RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), old, None, new)


EXT4_SUPER_MAGIC = 0xEF53  # linux/magic.h: ext2/3/4 (ext4's driver mounts all three)
BTRFS_SUPER_MAGIC = 0x9123683E
_FLUSH_ON_RENAME = frozenset((EXT4_SUPER_MAGIC, BTRFS_SUPER_MAGIC))  # they write a file out as it replaces another


def swap_pays(fd: int) -> bool:
    """Whether ``replace(..., swap=True)`` is worth it in the directory (or on the file system) of FD: on ext4
    and btrfs, which write a file's data out when it is renamed over another; elsewhere (tmpfs, xfs) a
    rename is cheaper than an exchange and an unlink.  False when the file system cannot be told."""
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux
    if _c_library().fstatfs(fd, buf) != 0:
        return False
    f_type = ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF  # f_type is the first field, a C long
    return f_type in _FLUSH_ON_RENAME


def _swap_into(tmp: str, path: str, dir_fd: int | None) -> bool:
    """Put TMP at PATH by exchanging the two and unlinking the old file (now at TMP); False when that is not
    possible here (PATH is missing, or the file system cannot exchange): the caller renames instead.

    A directory at PATH is put back and reported as rename() would report it (EISDIR).
    """
    try:
        dev = os.stat(tmp, dir_fd=dir_fd, follow_symlinks=False).st_dev if _no_exchange else -1
        if dev in _no_exchange:
            return False
        exchange(tmp, path, dir_fd)
    except FileNotFoundError:
        return False  # nothing at PATH yet: a plain rename
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOSYS):
            raise
        if err.errno == errno.EINVAL:
            _no_exchange.add(os.stat(tmp, dir_fd=dir_fd, follow_symlinks=False).st_dev)
        return False
    try:
        os.unlink(tmp, dir_fd=dir_fd)
    except IsADirectoryError as err:
        exchange(tmp, path, dir_fd)  # the directory goes back to its name; the new file is removed by the caller
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), tmp, None, path) from err
    except OSError:
        pass  # the new file is in place; the old one is a leftover that the next create() removes
    return True


_STEP = "atomicfile_step"  # the attribute replace() sets on the OSError it raises


def failed_step(err: OSError) -> str:
    """Which step of :func:`replace` raised ERR: ``"create"``, ``"write"`` or ``"rename"`` ("" if none did).

    djb's programs word each step's failure their own way (supervise's
    ``unable to open status.new``, ``unable to rename``).  The error itself is
    the system's, its class kept (IsADirectoryError stays one).
    """
    return str(getattr(err, _STEP, ""))


def replace(path: str, data: bytes, tmp: str | None = None, mode: int = 0o644, fsync: bool = False,
            dir_fd: int | None = None, chmod: int | None = None, swap: bool = False) -> None:
    """Write ``data`` to ``tmp`` (default ``path + ".new"``), then rename it over ``path``.

    Names are relative to DIR_FD when given (a directory opened once, so no
    link swapped in later redirects the rename).  CHMOD, if given, is set on
    the new file exactly (not subject to the umask: ``install -m``), before
    the rename.  Raises the OSError of the step that failed (see
    :func:`failed_step`); ``path`` is untouched then, and the temporary file
    is removed again.  Without CHMOD the mode is subject to the umask, as with djb's
    open_trunc.  SWAP: exchange the names instead of renaming over PATH (run state: see the module's text);
    where that cannot be done it is a rename.
    """
    tmp = path + ".new" if tmp is None else tmp
    try:
        fd = create(tmp, mode, dir_fd)
    except OSError as err:
        setattr(err, _STEP, "create")
        raise
    step = "write"
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if chmod is not None:
                os.fchmod(fd, chmod)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        step = "rename"
        if not (swap and _swap_into(tmp, path, dir_fd)):
            os.rename(tmp, path, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException as err:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        if isinstance(err, OSError):
            setattr(err, _STEP, step)
        raise
