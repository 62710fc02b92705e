"""svc: send command letters to the supervise of service directories, as daemontools 0.76's svc.

A command is one byte written to the ``supervise/control`` FIFO; supervise acts on each byte
in turn.  svc keeps each letter once, in the order it first appears, sends all of them in one
write to every directory, warns about the directories it cannot reach and always exits 0:
scripts call it on many services and must not stop at the first one that is down.
"""

from __future__ import annotations

import errno
import os
import signal
import sys

from prefork.control.svok import WRITE_NONBLOCK, enter, open_supervise_file
from prefork.djb import EXIT_USAGE, errstr, fatal, progname, warn, write_line
from prefork.options import UsageError, getopt

PROG = "svc"
LETTERS = b"udopchaitkx"
OPTIONS_LINE = (
    "svc options: u up, d down, o once, x exit, p pause, c continue, h hup, a alarm, i interrupt, t term, k kill"
)
HELP = """\
usage: svc [-udopchaitkx] dir ...

Send commands to the supervise of each service directory dir:
  -u up: start the service, restart it when it exits     -d down: TERM and CONT it, do not restart
  -o once: start it, do not restart it                     -x exit: supervise exits once the service is down
  -p pause (STOP)   -c continue (CONT)   -h HUP   -a ALRM   -i INT   -t TERM   -k KILL
Each letter is sent once, in the order first given. Warnings go to stderr; the exit status is 0.
"""
CONTROL = "supervise/control"


def parse(args: list[bytes]) -> tuple[bytes, list[bytes]]:
    """djb's getopt over ``udopchaitkx``: (the letters, each once in first-seen order; the operands).

    Raises prefork.options.UsageError for a letter svc does not know.
    """
    found, operands = getopt(args, LETTERS.decode())
    commands = bytearray()
    for name, _ in found:
        if name[1] not in commands:
            commands.append(name[1])
    return bytes(commands), operands


def control(directory: str, commands: bytes, dirfd: int | None = None) -> str | None:
    """Send COMMANDS to DIRECTORY/supervise/control as svc does (open_write, clear O_NONBLOCK, one write, close;
    relative to the current directory, which it must not change for the caller). Return None on success, else the
    warning text without the 'svc: warning: ' prefix, e.g. 'unable to control foo: supervise not running'.
    DIRFD, if given, is DIRECTORY already opened by the caller: DIRECTORY then only names it in the text."""
    try:
        where = enter(directory) if dirfd is None else os.dup(dirfd)
    except OSError as e:
        return f"unable to chdir to {directory}: {errstr(e)}"
    try:
        fd = open_supervise_file(where, "control", WRITE_NONBLOCK)  # no link of the service owner's followed
    except OSError as e:
        if e.errno == errno.ENXIO:  # a FIFO nobody reads: no supervise
            return f"unable to control {directory}: supervise not running"
        return f"unable to control {directory}: {errstr(e)}"
    finally:
        os.close(where)
    try:
        os.set_blocking(fd, True)
        view = memoryview(commands)
        while view:  # no options: nothing is written (djb's allwrite of 0 bytes makes no write call)
            view = view[os.write(fd, view) :]
    except OSError as e:
        return f"error writing commands to {directory}: {errstr(e)}"
    finally:
        os.close(fd)
    return None


def main(argv: list[str] | None = None) -> int:
    """``svc [-udopchaitkx] dir...``: exit 0 whatever happens to the directories, 100 for an unknown option."""
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # a supervise dying under us is a warning, not our death
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--help"]:
        write_line(HELP.rstrip("\n"), 1)
        return 0
    try:
        commands, operands = parse([os.fsencode(arg) for arg in args])
    except UsageError as e:
        write_line(f"{progname()}: {e.text}")
        write_line(OPTIONS_LINE)  # 0.76's svc prints this in place of a usage line
        return EXIT_USAGE
    try:
        os.close(os.open(".", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))  # svc needs its cwd to come back to
    except OSError as e:
        fatal(PROG, "unable to open current directory", e)
    for directory in operands:
        problem = control(os.fsdecode(directory), commands)
        if problem is not None:
            warn(PROG, problem)
    return 0


if __name__ == "__main__":
    sys.exit(main())
