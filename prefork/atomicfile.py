"""Replacing a file so that a reader sees the old contents or the new, never a mix.

djb's way: write everything to a temporary name in the same directory, then
rename() it over the real name.  supervise's ``status.new`` and multilog's
``newstate`` follow it; so does everything prefork writes for other
programs to read.
"""

from __future__ import annotations

import os


def replace(path: str, data: bytes, tmp: str | None = None, mode: int = 0o644, fsync: bool = False) -> None:
    """Write ``data`` to ``tmp`` (default ``path + ".new"``), then rename it over ``path``.

    Raises OSError from whichever step failed; ``path`` is untouched then.
    The mode is subject to the umask, as with djb's open_trunc.
    """
    tmp = path + ".new" if tmp is None else tmp
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
