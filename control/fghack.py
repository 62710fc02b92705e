"""fghack CHILD...: keep a self-backgrounding daemon in the foreground (docs/CONTRACTS.md, Small tools).

The child gets 31 descriptors of a pipe's write end (the end itself and 30
dups).  A daemon that forks and exits usually keeps some of them open, so
fghack reads the pipe until every copy is closed, then reports the child's
exit code (or ``child crashed`` if a signal killed it).
"""

from __future__ import annotations

import os

from prefork.control.pathexec import arguments, default_sigint, help_requested, run
from prefork.djb import EXIT_TEMP, fatal
from prefork.options import usage_error

PROG = "fghack"
USAGE = "fghack child"
HELP = f"""usage: {USAGE}

Run CHILD (found through PATH) with 30 extra descriptors of a pipe, wait
until every process holding one has closed it or exited, then exit with
CHILD's exit code (111 and "child crashed" if a signal killed it).  Used to
supervise daemons that insist on putting themselves in the background."""
DUPS = 30


def _child(argv: list[bytes], read_end: int, write_end: int) -> None:
    try:
        os.close(read_end)
        os.set_inheritable(write_end, True)
        for _ in range(DUPS):
            try:
                os.set_inheritable(os.dup(write_end), True)
            except OSError:
                pass  # like the C loop: a dup that fails is skipped
        run(PROG, argv)
    finally:
        os._exit(EXIT_TEMP)  # never return into the parent's code


def foreground(argv: list[bytes]) -> int:
    """Run ARGV as described above; return fghack's exit code (dies with 111 on system errors)."""
    try:
        read_end, write_end = os.pipe()
    except OSError as e:
        fatal(PROG, "unable to create pipe", e)
    try:
        pid = os.fork()
    except OSError as e:
        fatal(PROG, "unable to fork", e)
    if pid == 0:
        _child(argv, read_end, write_end)
    os.close(write_end)
    while True:
        try:
            if not os.read(read_end, 4096):  # whatever the daemon writes there is thrown away
                break
        except OSError:
            break
    try:
        _, wstat = os.waitpid(pid, 0)
    except OSError as e:
        fatal(PROG, "wait failed", e)
    if os.WIFSIGNALED(wstat):
        fatal(PROG, "child crashed")
    return os.waitstatus_to_exitcode(wstat)


def main() -> None:
    """Entry point of the fghack command."""
    args = arguments()
    help_requested(args, HELP, USAGE)
    if not args:
        usage_error(USAGE)
    default_sigint()
    raise SystemExit(foreground(args))
