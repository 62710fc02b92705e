"""tcprules: compile rules text on stdin into a cdb, replacing it atomically.

Like 0.88, the cdb is written to the temp name given on the command line and
renamed over the cdb only when complete; on any error the cdb is untouched and
the temp file is left as far as it was written, as 0.88 leaves it.

The temp file is opened as 0.88's open_trunc does (O_WRONLY|O_NONBLOCK|
O_TRUNC|O_CREAT, mode 0644 less the umask, following a symlink) when its
directory can be changed only by us or root.  When others can add or replace
names there (a group- or world-writable directory such as /tmp, or one owned
by another user), the name may be a planted symlink or someone else's file:
it is then removed and the temp file created afresh with O_EXCL|O_NOFOLLOW,
so the cdb is written into a new file of ours, never through a link, and
that file (looked up through the same directory) is what is renamed.  The
rename itself can still be raced in a directory others may write without the
sticky bit: keep the temp file next to the cdb, in a directory only root can
write.
"""

from __future__ import annotations

import fcntl
import os
import stat
import sys
from collections.abc import Iterator, Sequence

from prefork.djb import EXIT_USAGE, fatal, usage
from prefork.options import first_word_option, format_help
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


_OPEN_TRUNC = os.O_WRONLY | os.O_NONBLOCK | os.O_TRUNC | os.O_CREAT  # djb's open_trunc


def _others_can_write(st: os.stat_result) -> bool:
    """Can someone but us and root add, remove or replace names in the directory with this stat?"""
    return st.st_uid not in (0, os.geteuid()) or bool(st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def _open_tmp(tmp: str) -> tuple[int, int | None, str]:
    """Create or truncate TMP for writing (see the module docstring).

    Returns the fd, a descriptor of TMP's directory (None if it could not be
    opened: then TMP was opened by its path) and TMP's name in that directory.
    Raises the OSError of the failing open.
    """
    head, name = os.path.split(tmp)
    if name in ("", ".", ".."):
        return os.open(tmp, _OPEN_TRUNC, 0o644), None, tmp
    try:
        dfd = os.open(head or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return os.open(tmp, _OPEN_TRUNC, 0o644), None, tmp  # 0.88's open, for 0.88's error
    try:
        if dfd < 3:  # stdin closed: the temp file, not this descriptor, takes fd 0 as in 0.88
            dfd, low = fcntl.fcntl(dfd, fcntl.F_DUPFD_CLOEXEC, 3), dfd
            os.close(low)
        if not _others_can_write(os.fstat(dfd)):
            return os.open(name, _OPEN_TRUNC, 0o644, dir_fd=dfd), dfd, name
        try:
            os.unlink(name, dir_fd=dfd)
        except OSError:
            pass  # nothing there, or not ours to remove: then the exclusive create fails
        return os.open(name, _OPEN_TRUNC | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=dfd), dfd, name
    except BaseException:
        os.close(dfd)
        raise


def compile_to(cdb: str, tmp: str, input_fd: int = 0) -> None:
    """Read rules from input_fd into tmp, then rename tmp to cdb; exits like tcprules on any error.

    On error tmp stays behind as far as it was written and cdb is untouched.
    """

    def die_write(e: BaseException) -> None:
        fatal(PROG, f"unable to write to {tmp}", e)

    try:
        fd, dfd, name = _open_tmp(tmp)
    except OSError as e:
        fatal(PROG, f"unable to create {tmp}", e)
    try:
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
            os.rename(name, cdb, src_dir_fd=dfd)
        except OSError as e:
            fatal(PROG, f"unable to move {tmp} to {cdb}", e)
    finally:
        if dfd is not None:
            os.close(dfd)


DESCRIPTION = """Compile rules text from stdin into the cdb RULES.CDB that tcpserver -x and tcprulescheck read.

The cdb is written to RULES.TMP first and renamed over RULES.CDB only when
complete, so readers never see a half-written file.  Lines look like
ADDRESS:allow or ADDRESS:deny, optionally followed by ,NAME="VALUE" settings.
ADDRESS may be a CIDR block (10.0.0.0/8, 192.168.4.0/22): it is written as
the addresses and prefixes 0.88's tcpserver reads.  ADDRESS may be IPv6
(::1:deny; 2001:db8::allow is the prefix 2001:db8:), as ucspi-tcp-ipv6 reads it."""


def _help() -> str:
    return format_help(USAGE, DESCRIPTION, ())


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point.  0.88 has no options: ``-x`` is an operand (a cdb may be called that); ``--help`` shows help."""
    operands = list(sys.argv[1:] if argv is None else argv)
    first_word_option(operands, USAGE, _help)  # 0.88 reads its operands as they are: "-x" and "--" are names
    if len(operands) < 2:
        usage(PROG, USAGE)
    compile_to(operands[0], operands[1])
