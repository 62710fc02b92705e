"""svok: is a supervise running for this service directory?  As daemontools 0.76's svok.

supervise holds ``supervise/ok`` (a FIFO) open for reading for its whole life, so opening it
for writing without blocking succeeds exactly while a supervise runs and fails with ENXIO
otherwise.  Nothing is ever written to it.

The clients (svc, svstat, svok) work relative to a service directory the way daemontools
does after ``chdir(DIR)``, but through a directory descriptor instead, so that library
callers keep their current directory.

They open the files in ``supervise/`` through :func:`open_supervise_file`: a service
directory belongs to the service's owner, who could otherwise plant a link at
``supervise/control`` and have root's ``svc -d`` write to whatever it names.  A link (at
``supervise`` or at the file) is followed only if root or the caller's own user made it,
as supervise does for ``supervise`` (Debian's ``supervise -> /run/...``); one made by
anybody else fails as an ``O_NOFOLLOW`` open does, with ELOOP, so the message is the one
0.76 prints for a link loop there.
"""

from __future__ import annotations

import errno
import os
import stat
import sys

from prefork.djb import EXIT_TEMP, EXIT_USAGE, fatal, usage
from prefork.options import first_word_option

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


def open_supervise_file(dirfd: int, name: str, flags: int) -> int:
    """``open("supervise/NAME", FLAGS)`` relative to the service directory DIRFD, refusing links of other users.

    Fails with the errno the plain open would give (ENOENT, ENOTDIR, EACCES, ENXIO...), and with
    ELOOP for a link that is neither root's nor the caller's.  The descriptor is close-on-exec.
    """
    supfd = open_supervise_dir(dirfd)
    try:
        return open_trusted(supfd, name, flags)
    finally:
        os.close(supfd)


def open_supervise_dir(dirfd: int) -> int:
    """An ``O_PATH`` descriptor for ``supervise`` in the service directory DIRFD, under the same rule for links."""
    return open_trusted(dirfd, "supervise", os.O_PATH)


def trusted_link(st: os.stat_result) -> bool:
    """A link the caller may follow: made by root or by the caller's own user."""
    return st.st_uid in (0, os.geteuid())


def open_trusted(dirfd: int, name: str, flags: int, mode: int = 0o777) -> int:
    """``openat(DIRFD, NAME, FLAGS, MODE)`` (NAME one component), following NAME only if it is a trusted link.

    A link of anybody else fails with ELOOP, as ``O_NOFOLLOW`` makes it; with ``O_PATH`` the
    descriptor is never one of a link.  Close-on-exec.
    """
    flags |= os.O_CLOEXEC
    try:
        fd = os.open(name, flags | os.O_NOFOLLOW, mode, dir_fd=dirfd)
    except OSError as err:
        # O_NOFOLLOW meets a link: ELOOP, or ENOTDIR when O_DIRECTORY is checked first.
        if err.errno != errno.ELOOP and not (err.errno == errno.ENOTDIR and flags & os.O_DIRECTORY):
            raise
        link = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
        if not stat.S_ISLNK(os.fstat(link).st_mode):
            os.close(link)
            raise
    else:
        if not flags & os.O_PATH or not stat.S_ISLNK(os.fstat(fd).st_mode):
            return fd
        link = fd  # O_PATH | O_NOFOLLOW opens the link itself
    try:
        st = os.fstat(link)
        if not trusted_link(st):
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), name)
        target = os.readlink("", dir_fd=link)  # the link just checked, whatever NAME is by now
    finally:
        os.close(link)
    return os.open(target, flags, mode, dir_fd=dirfd)


def running(directory: str, dirfd: int | None = None) -> bool:
    """True iff svok would exit 0 (a reader holds DIRECTORY/supervise/ok open). Raises OSError for svok's 111 cases.

    The OSError's ``filename`` is ``directory`` when the directory itself cannot be entered,
    else ``DIRECTORY/supervise/ok``.  A missing ``ok`` or one nobody reads is False.
    DIRFD, if given, is DIRECTORY already opened by the caller.
    """
    where = enter(directory) if dirfd is None else os.dup(dirfd)
    try:
        fd = open_supervise_file(where, "ok", WRITE_NONBLOCK)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENXIO):
            return False
        raise OSError(e.errno, e.strerror, f"{directory}/{OK}") from None
    finally:
        os.close(where)
    os.close(fd)
    return True


def main(argv: list[str] | None = None) -> int:
    """``svok dir``: exit 0 running, 100 not running or no argument, 111 error (extra arguments are ignored)."""
    args = sys.argv[1:] if argv is None else argv
    first_word_option(args, USAGE, HELP)  # --help, or a usage error naming an unknown --option
    if not args:
        usage(PROG, USAGE)
    directory = args[0]
    try:
        return 0 if running(directory) else EXIT_USAGE
    except OSError as e:
        if e.filename == directory:
            fatal(PROG, f"unable to chdir to {directory}", e)
        fatal(PROG, f"unable to open {directory}/{OK}", e, code=EXIT_TEMP)


if __name__ == "__main__":
    sys.exit(main())
