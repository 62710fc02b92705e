"""svok: is a supervise running for this service directory? (daemontools spec §5)

supervise holds ``supervise/ok`` (a FIFO) open for reading for its whole life, so opening it
for writing without blocking succeeds exactly while a supervise runs and fails with ENXIO
otherwise.  Nothing is ever written to it.

The clients (svc, svstat, svok) work relative to a service directory the way daemontools
does after ``chdir(DIR)``, but through a directory descriptor instead, so that library
callers keep their current directory.
"""

from __future__ import annotations

import errno
import os
import sys

from prefork.djb import EXIT_TEMP, EXIT_USAGE, fatal, usage, write_line

PROG = "svok"
USAGE = "svok dir"
HELP = """\
usage: svok dir

Exit 0 if a supervise is running for the service directory dir, 100 if not
(no supervise/ok, or nobody holds it open), 111 on any other error.
"""

OK = "supervise/ok"
WRITE_NONBLOCK = os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC  # djb's open_write


def enter(directory: str) -> int:
    """A descriptor for DIRECTORY that fails exactly where chdir(DIRECTORY) would (it also needs search permission).

    Raises OSError whose ``filename`` is ``directory``; the caller closes the descriptor.
    """
    try:
        fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise OSError(e.errno, e.strerror, directory) from None
    try:
        os.stat(".", dir_fd=fd)  # looking up "." needs search (x) permission, as chdir does
    except OSError as e:
        os.close(fd)
        raise OSError(e.errno, e.strerror, directory) from None
    return fd


def running(directory: str) -> bool:
    """True iff svok would exit 0 (a reader holds DIRECTORY/supervise/ok open). Raises OSError for svok's 111 cases.

    The OSError's ``filename`` is ``directory`` when the directory itself cannot be entered,
    else ``DIRECTORY/supervise/ok``.  A missing ``ok`` or one nobody reads is False.
    """
    dirfd = enter(directory)
    try:
        fd = os.open(OK, WRITE_NONBLOCK, dir_fd=dirfd)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENXIO):
            return False
        raise OSError(e.errno, e.strerror, f"{directory}/{OK}") from None
    finally:
        os.close(dirfd)
    os.close(fd)
    return True


def main(argv: list[str] | None = None) -> int:
    """``svok dir``: exit 0 running, 100 not running or no argument, 111 error (extra arguments are ignored)."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        usage(PROG, USAGE)
    directory = args[0]
    if directory == "--help":
        write_line(HELP.rstrip("\n"), 1)
        return 0
    try:
        return 0 if running(directory) else EXIT_USAGE
    except OSError as e:
        if e.filename == directory:
            fatal(PROG, f"unable to chdir to {directory}", e)
        fatal(PROG, f"unable to open {directory}/{OK}", e, code=EXIT_TEMP)


if __name__ == "__main__":
    sys.exit(main())
