"""softlimit [-acdflmoprst N] CHILD...: run CHILD with lower soft resource limits (docs/CONTRACTS.md, Small tools)."""

from __future__ import annotations

import errno
import resource

from prefork.control.pathexec import arguments, help_requested, run
from prefork.djb import fatal
from prefork.options import UsageError, getopt, usage_error

PROG = "softlimit"
USAGE = (
    "softlimit [-a allbytes] [-c corebytes] [-d databytes] [-f filebytes] [-l lockbytes] [-m membytes] "
    "[-o openfiles] [-p processes] [-r residentbytes] [-s stackbytes] [-t cpusecs] child"
)
HELP = f"""usage: {USAGE}

Set soft resource limits, then run CHILD (found through PATH) in this process.
Hard limits are never changed: a value above the hard limit is lowered to it,
and = sets the soft limit to the hard one.  Options are applied left to right.

  -a N  address space (RLIMIT_AS)     -c N  core file size
  -d N  data segment                  -f N  file size
  -l N  locked memory                 -m N  -d, -s, -l and -a at once
  -o N  open files                    -p N  processes
  -r N  resident set size             -s N  stack size
  -t N  CPU seconds"""

RESOURCES: dict[str, tuple[int, ...]] = {
    "a": (resource.RLIMIT_AS,),
    "c": (resource.RLIMIT_CORE,),
    "d": (resource.RLIMIT_DATA,),
    "f": (resource.RLIMIT_FSIZE,),
    "l": (resource.RLIMIT_MEMLOCK,),
    "m": (resource.RLIMIT_DATA, resource.RLIMIT_STACK, resource.RLIMIT_MEMLOCK, resource.RLIMIT_AS),
    "o": (resource.RLIMIT_NOFILE,),
    "p": (resource.RLIMIT_NPROC,),
    "r": (resource.RLIMIT_RSS,),
    "s": (resource.RLIMIT_STACK,),
    "t": (resource.RLIMIT_CPU,),
}
OPTSTRING = "".join(f"{letter}:" for letter in RESOURCES)
_UNLIMITED = 2**64 - 1  # RLIM_INFINITY as the kernel's unsigned rlim_t; Python says -1


def _unsigned(limit: int) -> int:
    return _UNLIMITED if limit == resource.RLIM_INFINITY else limit


def _signed(limit: int) -> int:
    return limit - 2**64 if limit >= 2**63 else limit  # what resource.setrlimit passes on unchanged


def parse_value(arg: bytes) -> int | None:
    """A limit operand: None for ``=`` (the hard limit), else its decimal value; UsageError for anything else.

    Unlike djb's scan_ulong, an empty value is refused rather than read as 0,
    and a number too big for rlim_t means "as high as allowed" instead of wrapping.
    """
    if arg == b"=":
        return None
    if not (arg.isdigit() and arg.isascii()):
        raise UsageError(f"not a number: {arg!r}")
    return int(arg)


def set_soft(res: int, value: int | None) -> None:
    """Soft limit of RES := VALUE clamped to the hard limit (None: the hard limit); hard stays as it is."""
    try:
        _, hard = resource.getrlimit(res)
    except OSError as e:
        fatal(PROG, "getrlimit failed", e)
    soft = _unsigned(hard) if value is None else min(value, _unsigned(hard))
    try:
        resource.setrlimit(res, (_signed(soft), hard))
    except OSError as e:
        fatal(PROG, "setrlimit failed", e)
    except ValueError as e:  # Python turns EINVAL and EPERM into ValueError
        fatal(PROG, "setrlimit failed", errno.EPERM if "not allowed" in str(e) else errno.EINVAL)


def main() -> None:
    """Entry point of the softlimit command."""
    args = arguments()
    help_requested(args, HELP)
    try:
        found, rest = getopt(args, OPTSTRING)
        problem = None
    except UsageError as e:
        found, rest, problem = e.found, [], e
    try:
        # 0.76 checks each value as its option comes: a bad one before a bad letter is all it reports.
        values = [(name[1:].decode(), parse_value(arg)) for name, arg in found]
    except UsageError:
        usage_error(USAGE)  # 0.76: only the usage line
    if problem is not None:
        usage_error(USAGE, problem)
    for letter, value in values:  # applied in order, like the C loop
        for res in RESOURCES[letter]:
            set_soft(res, value)
    if not rest:
        usage_error(USAGE)
    run(PROG, rest)
