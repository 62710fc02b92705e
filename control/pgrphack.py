"""pgrphack CHILD...: run CHILD in a new session and process group of its own (docs/CONTRACTS.md, Small tools)."""

from __future__ import annotations

import os

from prefork.control.pathexec import arguments, help_requested, run
from prefork.options import usage_error

PROG = "pgrphack"
USAGE = "pgrphack child"
HELP = f"""usage: {USAGE}

Call setsid() (its failure, for example when already a process group
leader, is ignored) and run CHILD, found through PATH, in this process:
CHILD's pid is then also its process group and session id."""


def main() -> None:
    """Entry point of the pgrphack command."""
    args = arguments()
    help_requested(args, HELP, USAGE)
    if not args:
        usage_error(USAGE)
    try:
        os.setsid()
    except OSError:
        pass
    run(PROG, args)
