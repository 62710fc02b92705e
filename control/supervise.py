"""``supervise DIR``: the engine with one service, daemontools 0.76's messages and exit codes.

prefork's extensions are long options before DIR: ``--runit`` (also write
runit's 20-byte status, ``supervise/stat`` and ``supervise/pid`` so ``sv``
works), ``--s6`` (s6's 35-byte status, its ``event/`` fifodir and s6-svc's
control letters, so s6's clients work) and ``--table PATH`` (where to publish the shared-memory service table;
default ``/dev/shm/prefork-supervise.<dev>.<ino>`` of DIR).
"""

from __future__ import annotations

import os
import sys

PROG = "supervise"
USAGE = "supervise dir"
HELP = """usage: supervise [--runit | --s6] [--table PATH] dir

Start ./run in DIR and keep it running; control it with svc, read it with svstat.
  --runit       also write runit's status, stat and pid files (for sv)
  --s6          write s6's status and events, and know s6-svc's letters (for s6-svc, s6-svstat, s6-svwait)
  --table PATH  publish the service's state at PATH (default /dev/shm/prefork-supervise.DEV.INO)
"""


def parse(args: list[str]) -> tuple[dict[str, object], list[str]]:
    """prefork's long options, then the operands (0.76's command line is just the operands, ``-x`` one of them)."""
    from prefork.options import Option, command_line

    options = [Option("--runit", "mode", value="runit"), Option("--s6", "mode", value="s6"),
               Option("--table", "table", metavar="PATH")]
    return command_line(args, USAGE, HELP, options, letters=False, defaults={"mode": "daemontools"})


def main(argv: list[str] | None = None) -> None:
    from prefork.djb import fatal, usage, warn

    args = list(sys.argv[1:] if argv is None else argv)
    opts, operands = parse(args)
    if argv is None:
        from prefork.lean import go_lean

        go_lean("supervise", "prefork.control.supervise")
    if len(operands) != 1:
        usage(PROG, USAGE)
    directory = operands[0]  # "" too: 0.76 says "unable to chdir to : file does not exist"
    from prefork.control.pathexec import default_sigint

    default_sigint()  # INT kills supervise and leaves the service, as in 0.76; if ignored, the service inherits that

    from prefork.control import servicetable
    from prefork.control.engine import Engine, StartupError

    engine = Engine(mode=str(opts["mode"]), prog=PROG)
    try:
        service = engine.add(directory, directory)
    except StartupError as err:
        fatal(PROG, str(err))
    # The table is made once the lock is ours: a second supervise must not clobber the first one's.
    table_path = opts["table"]
    try:
        path = str(table_path or servicetable.default_path(directory, servicetable.KIND_SUPERVISE))
        engine.table = servicetable.ServiceTable.create(path, 1, servicetable.KIND_SUPERVISE, os.path.abspath(directory))
        service.context.slot = engine.table.allocate(directory)
        engine.publish(service)
    except (OSError, servicetable.TableFull) as err:
        warn(PROG, "unable to create the service table", err if isinstance(err, OSError) else None)
        engine.table = None
    engine.run(until_idle=True)
    if engine.table is not None and not table_path:
        engine.table.close(unlink=True)
    raise SystemExit(0)
