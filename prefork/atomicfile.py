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
"""

from __future__ import annotations

import errno
import os

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


_STEP = "atomicfile_step"  # the attribute replace() sets on the OSError it raises


def failed_step(err: OSError) -> str:
    """Which step of :func:`replace` raised ERR: ``"create"``, ``"write"`` or ``"rename"`` ("" if none did).

    djb's programs word each step's failure their own way (supervise's
    ``unable to open status.new``, ``unable to rename``).  The error itself is
    the system's, its class kept (IsADirectoryError stays one).
    """
    return str(getattr(err, _STEP, ""))


def replace(path: str, data: bytes, tmp: str | None = None, mode: int = 0o644, fsync: bool = False,
            dir_fd: int | None = None, chmod: int | None = None) -> None:
    """Write ``data`` to ``tmp`` (default ``path + ".new"``), then rename it over ``path``.

    Names are relative to DIR_FD when given (a directory opened once, so no
    link swapped in later redirects the rename).  CHMOD, if given, is set on
    the new file exactly (not subject to the umask: ``install -m``), before
    the rename.  Raises the OSError of the step that failed (see
    :func:`failed_step`); ``path`` is untouched then, and the temporary file
    is removed again.  Without CHMOD the mode is subject to the umask, as with djb's
    open_trunc.
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
        os.rename(tmp, path, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException as err:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        if isinstance(err, OSError):
            setattr(err, _STEP, step)
        raise
