"""What daemontools' small tools share: djb's PATH search, environment edits and getopt (docs/CONTRACTS.md, Messages and exit codes; Small tools).

Each tool ends by replacing itself with a child.  The child must see exactly
what the C tool would pass on: the environment we were started with (read
from /proc, because Python's PEP 538 coercion adds ``LC_CTYPE`` to
``os.environ``) plus the tool's own additions, in the order djb's
``pathexec`` builds it, and default dispositions for the signals Python
ignores at start-up (SIGPIPE, SIGXFSZ).
"""

from __future__ import annotations

import errno
import os
import sys

from prefork.djb import EXIT_TEMP, fatal, write_line
from prefork.environ import original_environ

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: keep start-up imports light
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from typing import NoReturn

DEFAULT_PATH = b"/bin:/usr/bin"  # djb's pathexec_run when PATH is unset
_KEEP_LOOKING = (errno.EACCES, errno.EPERM, errno.EISDIR)  # remembered, but the search goes on

Env = dict[bytes, bytes]


def arguments() -> list[bytes]:
    """Our command-line operands as the bytes the kernel gave us."""
    return [os.fsencode(a) for a in sys.argv[1:]]


def show(name: bytes) -> str:
    """A byte string for a message (written back as the same bytes by prefork.djb)."""
    return os.fsdecode(name)


def help_requested(args: Sequence[bytes], text: str, usage: str | None = None, code: int = 100) -> None:
    """``--help`` as the first argument prints TEXT on stdout and exits 0.

    Only the first argument is looked at: after it, ``--help`` may be an
    account, a directory or an argument of the child.  With USAGE (a tool 0.76
    gives no options), any other first word starting with ``--`` but ``--``
    itself is an unknown prefork option: named with the usage line, exit CODE.
    Without it (softlimit, setlock), djb's getopt reads such a word as ``--``.
    """
    if args[:1] == [b"--help"]:
        write_line(text, fd=1)
        raise SystemExit(0)
    if usage is not None and args:
        from prefork.options import first_word_option

        first_word_option([os.fsdecode(args[0])], usage, text, code)


def search_path(env: Env) -> bytes:
    """The PATH djb's pathexec_run would search with ENV as its environment."""
    return env.get(b"PATH", DEFAULT_PATH)


def edit_env(base: Env, changes: Iterable[tuple[bytes, bytes | None]]) -> Env:
    """BASE with each ``(name, value)`` applied in turn (value None unsets), ordered as djb's pathexec does.

    djb replaces the first matching entry by the last one of the list and
    appends the new entry at the end, so the child's ``env`` order is that of
    the C tools.  NAME may contain ``=`` (envdir's ``A=B`` files): the name is
    what precedes the first ``=``, the rest belongs to the value, and even an
    "unset" then sets (``A=B`` with no value sets A to B).
    """
    entries = list(base.items())
    for name, value in changes:
        entry = name if value is None else name + b"=" + value
        key, eq, rest = entry.partition(b"=")
        for i, (k, _) in enumerate(entries):
            if k == key:
                entries[i] = entries[-1]
                entries.pop()
                break
        if eq and key:  # an empty name cannot be passed by execve() from Python: dropped
            entries.append((key, rest))
    return dict(entries)


def _default_signals() -> None:
    """Undo Python's start-up SIG_IGN on SIGPIPE and SIGXFSZ: ignored dispositions survive exec()."""
    import signal

    for name in ("SIGPIPE", "SIGXFSZ"):
        sig = getattr(signal, name, None)
        if sig is not None:
            signal.signal(sig, signal.SIG_DFL)


def default_sigint() -> None:
    """Let SIGINT kill us like a C program (no KeyboardInterrupt traceback), unless it was ignored at start."""
    import signal

    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, signal.SIG_DFL)


def pathexec(argv: Sequence[bytes], env: Env, search: bytes | None = None) -> OSError:
    """Replace this process by ARGV[0] found the way djb's pathexec_run finds it; return the error if it fails.

    A name with a ``/`` is exec'd as it is.  Otherwise each entry of SEARCH
    (default: ENV's PATH, else ``/bin:/usr/bin``; an empty entry is ``.``) is
    tried.  ENOENT keeps looking silently; EACCES, EPERM and EISDIR are
    remembered and the search goes on; any other error stops it.  The error
    reported is the last one remembered, else ENOENT.
    """
    _default_signals()
    file = bytes(argv[0])
    args = [bytes(a) for a in argv]
    if not file:
        # Python refuses an empty argv[0]; with an empty name every candidate ends in "/" and cannot
        # be exec'd, so a stand-in argv[0] only lets the kernel report the same error djb's would get.
        args[0] = b"-"
    if b"/" in file:
        try:
            os.execve(file, args, env)
        except OSError as e:
            return e
    if search is None:
        search = search_path(env)
    saved: OSError | None = None
    last: OSError = FileNotFoundError(errno.ENOENT, "file does not exist")
    for entry in search.split(b":"):
        try:
            os.execve((entry or b".") + b"/" + file, args, env)
        except OSError as e:
            last = e
            if e.errno != errno.ENOENT:
                saved = e
                if e.errno not in _KEEP_LOOKING:
                    return e
    return saved or last


def run(prog: str, argv: Sequence[bytes], env: Env | None = None, search: bytes | None = None) -> NoReturn:
    """Exec ARGV (with ENV, default the start-up environment) or die ``PROG: fatal: unable to run X: ERR`` (111)."""
    err = pathexec(argv, original_environ() if env is None else env, search)
    fatal(prog, f"unable to run {show(argv[0])}", err, EXIT_TEMP)
