"""tcprules: compile rules text on stdin into a cdb, replacing it atomically (spec §5.1)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence

import click

from prefork.cli import djb_command
from prefork.djb import EXIT_USAGE, fatal, usage
from prefork.rules import CdbMaker, RulesSyntaxError, parse_line

PROG = "tcprules"  # djb prints this name whatever argv[0] is
USAGE = "tcprules rules.cdb rules.tmp"
_INPUT_CHUNK = 8192  # djb's buffer_0 reads this much at a time


def _lines(fd: int) -> Iterator[bytes]:
    """Lines of fd as they arrive (so a bad line stops us before the rest is read)."""
    pending = bytearray()
    while True:
        try:
            chunk = os.read(fd, _INPUT_CHUNK)
        except OSError as e:
            fatal(PROG, "unable to read input", e)
        if not chunk:
            break
        start = 0
        while (end := chunk.find(b"\n", start) + 1) > 0:
            pending += chunk[start:end]
            yield bytes(pending)
            pending.clear()
            start = end
        pending += chunk[start:]
    if pending:
        yield bytes(pending)


def compile_to(cdb: str, tmp: str, input_fd: int = 0) -> None:
    """Read rules from input_fd into tmp, then rename tmp to cdb; exits like tcprules on any error.

    On error tmp stays behind as far as it was written and cdb is untouched.
    """

    def die_write(e: BaseException) -> None:
        fatal(PROG, f"unable to write to {tmp}", e)

    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_NONBLOCK | os.O_TRUNC | os.O_CREAT, 0o644)
    except OSError as e:
        fatal(PROG, f"unable to create {tmp}", e)
    try:
        maker = CdbMaker(fd)
        for line in _lines(input_fd):
            try:
                records = parse_line(line)
            except RulesSyntaxError as e:
                shown = e.line.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")  # djb prints a C string
                fatal(PROG, f"unable to parse this line: {shown}", code=EXIT_USAGE)
            for key, value in records or ():
                maker.add(key, value)
        maker.finish()
        os.fsync(fd)
    except OSError as e:
        die_write(e)
    except MemoryError:
        fatal(PROG, "out of memory")
    try:
        os.close(fd)
    except OSError as e:
        die_write(e)
    try:
        os.rename(tmp, cdb)
    except OSError as e:
        fatal(PROG, f"unable to move {tmp} to {cdb}", e)


@djb_command(usage=USAGE)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def command(args: tuple[str, ...]) -> None:
    """Compile rules text from stdin into the cdb RULES.CDB that tcpserver -x and tcprulescheck read.

    The cdb is written to RULES.TMP first and renamed over RULES.CDB only when
    complete, so readers never see a half-written file.  Lines look like
    ADDRESS:allow or ADDRESS:deny, optionally followed by ,NAME="VALUE" settings.
    """
    if len(args) < 2:
        usage(PROG, USAGE)
    compile_to(args[0], args[1])


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point.  tcprules has no options: every word is an operand (a cdb may be called ``-x``), but
    a leading ``--help`` shows help."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] != ["--help"]:
        args.insert(0, "--")
    command.main(args=args, prog_name=PROG)
