"""envdir D CHILD...: run CHILD with the environment changed by the files of directory D (docs/CONTRACTS.md, Small tools).

Each entry of D not starting with ``.`` names a variable.  An empty file
unsets it; otherwise its first line, trailing spaces and tabs stripped and
NUL bytes then turned into newlines, is the value.
"""

from __future__ import annotations

import os

from prefork.control.pathexec import arguments, edit_env, help_requested, run, search_path, show
from prefork.djb import fatal
from prefork.environ import original_environ
from prefork.options import usage_error

PROG = "envdir"
USAGE = "envdir dir child"
HELP = f"""usage: {USAGE}

Run CHILD (found through the PATH envdir was started with) with the
environment changed by the files of directory DIR.  For each file whose name
does not start with a dot: an empty file removes the variable; otherwise the
first line of the file, without trailing spaces and tabs and with NUL bytes
turned into newlines, becomes its value.  A file named A=B holding c sets A
to B=c.  A name that leads to no file (a dangling symlink) counts as an empty
file; an entry that cannot be read (a subdirectory) is fatal (exit 111)."""


def value_of(text: bytes) -> bytes | None:
    """The variable's value for a file's TEXT: None (unset) for an empty file."""
    if not text:
        return None
    return text.split(b"\n", 1)[0].rstrip(b" \t").replace(b"\0", b"\n")


def _read(name: bytes, where: str) -> bytes:
    """The whole file NAME (in the current directory), b"" if it does not exist (djb's openreadclose)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        # The real binary reuses the previous file's text here (a bug); a name that leads nowhere
        # is treated as an empty file instead, which is what it does when no file came before.
        return b""
    except OSError as e:
        fatal(PROG, f"unable to read {where}", e)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as e:
        fatal(PROG, f"unable to read {where}", e)
    finally:
        os.close(fd)


def read_envdir(directory: bytes) -> list[tuple[bytes, bytes | None]]:
    """The ``(name, value or None)`` settings of DIRECTORY in directory order; dies like envdir on errors.

    Like the real envdir it works from inside DIRECTORY (so the error texts and
    the permissions needed are the same) and returns to the starting directory.
    """
    try:
        origin = os.open(".", os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        fatal(PROG, "unable to switch to current directory", e)
    try:
        try:
            os.chdir(directory)
        except OSError as e:
            fatal(PROG, f"unable to switch to directory {show(directory)}", e)
        try:
            names = os.listdir(b".")
        except OSError as e:
            fatal(PROG, f"unable to read directory {show(directory)}", e)
        settings = []
        for name in names:
            if not name.startswith(b"."):
                text = _read(name, f"{show(directory)}/{show(name)}")
                settings.append((name, value_of(text)))
        try:
            os.fchdir(origin)
        except OSError as e:
            fatal(PROG, "unable to switch to starting directory", e)
    finally:
        os.close(origin)
    return settings


def main() -> None:
    """Entry point of the envdir command."""
    args = arguments()
    help_requested(args, HELP, USAGE, code=111)
    if len(args) < 2:
        usage_error(USAGE, code=111)  # envdir's usage exits 111
    base = original_environ()
    env = edit_env(base, read_envdir(args[0]))
    # djb's pathexec searches the PATH envdir itself was given, not one set by the directory.
    run(PROG, args[1:], env, search=search_path(base))

