"""svstat: one status line per service directory, read from supervise's files, as daemontools 0.76's svstat.

svstat talks to nobody: it reads ``down``, checks that ``supervise/ok`` has a reader and decodes
the first 18 bytes of ``supervise/status`` (all 35 of s6's, told apart by size).  So it works
against any supervisor that keeps those files (daemontools, runit, prefork in each of its modes).
It exits 0 whatever it finds: the line says what is wrong.

prefork extensions, recognised only as the first argument so that 0.76 command lines keep their
meaning: ``svstat --all [--json] DIR`` (every service of a scan directory; unlike the rest it exits
111 when that directory's table cannot be read or its svscan is gone, see ``svstat_all.py``) and ``--help``.
"""

from __future__ import annotations

import errno
import os
import sys
import time
from collections.abc import Iterable

from prefork.control.svok import OK, WRITE_NONBLOCK, enter, open_supervise_file
from prefork.control.svstate import describe
from prefork.djb import errstr, fatal, write_line
from prefork.options import FLAG, UsageError, getopt, usage_error

PROG = "svstat"
USAGE = "svstat dir ... | svstat --all [--json] dir"
HELP = """\
usage: svstat dir ...
       svstat --all [--json] dir

Print one line per service directory dir: up (pid P) or down, for how many seconds, and
whether that is the normal state, paused, or about to change (want up/down).
--all lists every service of the scan directory dir (--json: as JSON).
"""
STATUS = "supervise/status"
_BUFFER = 1024  # djb's buffer_1 size: lines are gathered up to this much per write


def status_line(directory: str, now: float | None = None) -> str:
    """What svstat prints after 'DIRECTORY: ' (no newline), e.g. 'up (pid 12) 3 seconds, normally down'."""
    try:
        dirfd = enter(directory)
    except OSError as e:
        return f"unable to chdir: {errstr(e)}"
    try:
        return _describe(dirfd, now)
    finally:
        os.close(dirfd)


def _describe(dirfd: int, now: float | None) -> str:
    try:
        os.stat("down", dir_fd=dirfd)
    except OSError as e:
        if e.errno != errno.ENOENT:
            return f"unable to stat down: {errstr(e)}"
        normally_up = True
    else:
        normally_up = False

    try:
        os.close(open_supervise_file(dirfd, "ok", WRITE_NONBLOCK))  # no link of the service owner's followed
    except OSError as e:
        if e.errno == errno.ENXIO:
            return "supervise not running"
        return f"unable to open {OK}: {errstr(e)}"

    try:
        fd = open_supervise_file(dirfd, "status", os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        return f"unable to open {STATUS}: {errstr(e)}"
    from prefork.control import statusfile  # only once there is a status to read

    try:
        data = os.read(fd, statusfile.MAX_SIZE)  # one read, as svstat; the size tells s6's 35 bytes from the rest
    except OSError as e:
        return f"unable to read {STATUS}: {errstr(e)}"
    finally:
        os.close(fd)
    try:
        status = statusfile.decode_any(data)  # runit's 20 bytes: their 18-byte prefix, as svstat reads them
    except ValueError:
        return f"unable to read {STATUS}: bad format"
    now_seconds = int(time.time() if now is None else now // 1)
    # svstat subtracts TAI64 labels and prints the difference through a double (tai_approx):
    # absurd labels come out rounded exactly as the real one rounds them.
    elapsed = int(float(max(now_seconds - status.seconds, 0)))
    return describe(status.pid, elapsed, normally_up, status.paused, status.want)


def _write_lines(lines: Iterable[bytes], fd: int = 1) -> None:
    """Write whole lines, gathered up to djb's 1024-byte buffer per write; write errors are ignored as svstat does."""
    pending = bytearray()
    try:
        for line in lines:
            if pending and len(pending) + len(line) > _BUFFER:
                _write_all(fd, pending)
                pending.clear()
            pending += line
        _write_all(fd, pending)
    except OSError:
        pass


def _write_all(fd: int, data: bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _extension(args: list[str]) -> int:
    """``--help`` and ``--all [--json] dir`` (either order of the two long options, each once)."""
    try:
        found, rest = getopt(args, None, {"--all": FLAG, "--json": FLAG, "--help": FLAG})
    except UsageError as e:
        usage_error(USAGE, e)
    names = [name for name, _ in found]
    if "--help" in names:
        write_line(HELP.rstrip("\n"), 1)
        return 0
    if "--all" not in names or len(set(names)) != len(names) or len(rest) != 1:
        usage_error(USAGE)
    from prefork.control.svstat_all import main_all

    return main_all(rest[0], "--json" in names)


def main(argv: list[str] | None = None) -> int:
    """``svstat dir...``: one line per dir on stdout, exit 0 (111 only when the current directory cannot be opened)."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0].startswith("--") and args[0] != "--":  # 0.76 has no options: only a first --word is one
        return _extension(args)
    try:
        os.close(os.open(".", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))  # as svstat, which comes back to it
    except OSError as e:
        fatal(PROG, "unable to open current directory", e)
    _write_lines(f"{directory}: {status_line(directory)}\n".encode("utf-8", "surrogateescape") for directory in args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
