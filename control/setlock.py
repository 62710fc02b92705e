"""setlock [-nNxX] FILE CHILD...: run CHILD holding an exclusive flock on FILE (docs/CONTRACTS.md, Small tools)."""

from __future__ import annotations

import fcntl
import os

from prefork.control.pathexec import arguments, default_sigint, help_requested, run, show
from prefork.djb import fatal
from prefork.options import UsageError, getopt, usage_error

PROG = "setlock"
USAGE = "setlock [ -nNxX ] file program [ arg ... ]"
HELP = f"""usage: {USAGE}

Open FILE for appending (creating it, mode 0600, never truncating it), take an
exclusive flock on it and run PROGRAM (found through PATH) in this process;
PROGRAM inherits the open descriptor, so the lock lasts until it and its
children have all exited.

  -n  give up if FILE is already locked (exit 111)
  -N  wait for the lock (default)
  -x  exit 0 silently if FILE cannot be opened or locked
  -X  report those failures with exit 111 (default)"""


def lock(path: bytes, wait: bool, quiet: bool) -> int:
    """Open PATH like djb's open_append and flock it; the descriptor is left for the child to inherit."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_APPEND | os.O_CREAT, 0o600)
    except OSError as e:
        if quiet:
            raise SystemExit(0) from None
        fatal(PROG, f"unable to open {show(path)}", e)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if quiet:
            raise SystemExit(0) from None
        fatal(PROG, f"unable to lock {show(path)}", e)
    os.set_inheritable(fd, True)
    return fd


def main() -> None:
    """Entry point of the setlock command."""
    args = arguments()
    help_requested(args, HELP)
    wait, quiet = True, False
    try:
        found, rest = getopt(args, "nNxX")
    except UsageError as e:
        usage_error(USAGE, e)
    for name, _ in found:
        if name in (b"-n", b"-N"):
            wait = name == b"-N"
        else:
            quiet = name == b"-x"
    if len(rest) < 2:
        usage_error(USAGE)
    default_sigint()  # waiting for the lock can take long; ^C must not print a traceback
    lock(rest[0], wait, quiet)
    run(PROG, rest[1:])
