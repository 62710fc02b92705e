"""tcprulescheck: show which rule tcpserver would apply to a client described by the environment."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

from prefork.djb import fatal, usage
from prefork.options import first_word_option, format_help
from prefork.rules import entries, load

PROG = "tcprulescheck"  # djb prints this name whatever argv[0] is
USAGE = "tcprulescheck rules.cdb"


def report(path: str, environ: Mapping[bytes, bytes]) -> bytes:
    """The lines tcprulescheck prints for this environment; exits 111 if the cdb cannot be read.

    Like tcprulescheck, a ``D`` entry ends the report, so variables after it are not shown.
    """
    ip = environ.get(b"TCPREMOTEIP", b"0.0.0.0")
    try:
        decision = load(path).lookup(ip, environ.get(b"TCPREMOTEHOST"), environ.get(b"TCPREMOTEINFO"))
    except OSError as e:
        fatal(PROG, f"unable to read {path}", e)
    if decision.key is None:
        return b"default:\nallow connection\n"
    out = [b"rule " + decision.key + b":\n"]
    for entry in entries(decision.value):
        if entry[:1] == b"D":
            out.append(b"deny connection\n")
            return b"".join(out)
        if entry[:1] == b"+":
            out.append(b"set environment variable " + entry[1:] + b"\n")
    out.append(b"allow connection\n")
    return b"".join(out)


def _write_stdout(data: bytes) -> None:
    """All of data to fd 1; like tcprulescheck, a failing stdout does not change the exit code."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(1, view) :]
    except OSError:
        pass


DESCRIPTION = """Print the rule of RULES.CDB that tcpserver -x would apply to a client.

The client is described by TCPREMOTEIP (default 0.0.0.0), TCPREMOTEHOST and
TCPREMOTEINFO (set to the empty string still counts as set).  Prints the
matching key, the variables it sets and "allow connection" or "deny connection"."""


def _help() -> str:
    return format_help(USAGE, DESCRIPTION, ())


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point.  0.88 has no options: ``-x`` is an operand (a cdb may be called that); ``--help`` shows help."""
    operands = list(sys.argv[1:] if argv is None else argv)
    first_word_option(operands, USAGE, _help)  # 0.88 reads its operands as they are: "-x" and "--" are names
    if len(operands) < 1:
        usage(PROG, USAGE)
    _write_stdout(report(operands[0], os.environb))
