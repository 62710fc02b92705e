"""djb's error wording and message conventions, shared by every prefork command.

djb's tools never print strerror(): they print their own short errno texts
(``error_str`` in ucspi-tcp and daemontools).  Log analysers and people's
habits depend on those exact words, so every command takes them from here.
"""

from __future__ import annotations

import errno
import os
import sys

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the server process does not import typing
if TYPE_CHECKING:
    from typing import NoReturn

# Order matters where two names share a number on Linux (EAGAIN == EWOULDBLOCK):
# the first entry wins, exactly as the if-chain in djb's error_str.c.
_TABLE: list[tuple[str, str]] = [
    ("EINTR", "interrupted system call"),
    ("ENOMEM", "out of memory"),
    ("ENOENT", "file does not exist"),
    ("ETXTBSY", "text busy"),
    ("EIO", "input/output error"),
    ("EEXIST", "file already exists"),
    ("ETIMEDOUT", "timed out"),
    ("EINPROGRESS", "operation in progress"),
    ("EAGAIN", "temporary failure"),
    ("EWOULDBLOCK", "input/output would block"),
    ("EPIPE", "broken pipe"),
    ("EPERM", "permission denied"),
    ("EACCES", "access denied"),
    ("ENXIO", "device not configured"),
    ("EPROTO", "protocol error"),
    ("EISDIR", "is a directory"),
    ("ESRCH", "no such process"),
    ("E2BIG", "argument list too long"),
    ("ENOEXEC", "exec format error"),
    ("EBADF", "file descriptor not open"),
    ("ECHILD", "no child processes"),
    ("EDEADLK", "operation would cause deadlock"),
    ("EFAULT", "bad address"),
    ("ENOTBLK", "not a block device"),
    ("EBUSY", "device busy"),
    ("EXDEV", "cross-device link"),
    ("ENODEV", "device does not support operation"),
    ("ENOTDIR", "not a directory"),
    ("EINVAL", "invalid argument"),
    ("ENFILE", "system cannot open more files"),
    ("EMFILE", "process cannot open more files"),
    ("ENOTTY", "not a tty"),
    ("EFBIG", "file too big"),
    ("ENOSPC", "out of disk space"),
    ("ESPIPE", "unseekable descriptor"),
    ("EROFS", "read-only file system"),
    ("EMLINK", "too many links"),
    ("EDOM", "input out of range"),
    ("ERANGE", "output out of range"),
    ("EALREADY", "operation already in progress"),
    ("ENOTSOCK", "not a socket"),
    ("EDESTADDRREQ", "destination address required"),
    ("EMSGSIZE", "message too long"),
    ("EPROTOTYPE", "incorrect protocol type"),
    ("ENOPROTOOPT", "protocol not available"),
    ("EPROTONOSUPPORT", "protocol not supported"),
    ("ESOCKTNOSUPPORT", "socket type not supported"),
    ("EOPNOTSUPP", "operation not supported"),
    ("EPFNOSUPPORT", "protocol family not supported"),
    ("EAFNOSUPPORT", "address family not supported"),
    ("EADDRINUSE", "address already used"),
    ("EADDRNOTAVAIL", "address not available"),
    ("ENETDOWN", "network down"),
    ("ENETUNREACH", "network unreachable"),
    ("ENETRESET", "network reset"),
    ("ECONNABORTED", "connection aborted"),
    ("ECONNRESET", "connection reset"),
    ("ENOBUFS", "out of buffer space"),
    ("EISCONN", "already connected"),
    ("ENOTCONN", "not connected"),
    ("ESHUTDOWN", "socket shut down"),
    ("ETOOMANYREFS", "too many references"),
    ("ECONNREFUSED", "connection refused"),
    ("ELOOP", "symbolic link loop"),
    ("ENAMETOOLONG", "file name too long"),
    ("EHOSTDOWN", "host down"),
    ("EHOSTUNREACH", "host unreachable"),
    ("ENOTEMPTY", "directory not empty"),
    ("EUSERS", "too many users"),
    ("EDQUOT", "disk quota exceeded"),
    ("ESTALE", "stale NFS file handle"),
    ("ENOLCK", "no locks available"),
    ("ENOSYS", "system call not available"),
    ("ENOSTR", "not a stream device"),
    ("ETIME", "timer expired"),
    ("ENOSR", "out of stream resources"),
    ("ENOMSG", "no message of desired type"),
    ("EBADMSG", "bad message type"),
    ("EIDRM", "identifier removed"),
    ("ENONET", "machine not on network"),
    ("ENOLINK", "link severed"),
    ("EADV", "advertise error"),
    ("ESRMNT", "srmount error"),
    ("ECOMM", "communication error"),
    ("EMULTIHOP", "multihop attempted"),
    ("EREMCHG", "remote address changed"),
]

ERRSTR: dict[int, str] = {}
for _name, _text in _TABLE:
    _num = getattr(errno, _name, None)
    if _num is not None and _num not in ERRSTR:
        ERRSTR[_num] = _text

EXIT_USAGE = 100
EXIT_TEMP = 111


def errstr(err: int | BaseException | None) -> str:
    """djb's wording for an errno (or an OSError carrying one)."""
    if isinstance(err, BaseException):
        err = getattr(err, "errno", None)
    if err is None:
        return "unknown error"
    return ERRSTR.get(err, "unknown error")


def progname(argv0: str | None = None) -> str:
    """Basename of argv[0], which djb's tools put before every message."""
    return os.path.basename(argv0 if argv0 is not None else sys.argv[0]) or "prefork"


def write_line(text: str | bytes, fd: int = 2) -> None:
    """Write one whole line with a single write(), as djb's buffered stderr does."""
    data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    if not data.endswith(b"\n"):
        data += b"\n"
    try:
        os.write(fd, data)
    except OSError:
        pass


def fatal(prog: str, text: str, err: int | BaseException | None = None, code: int = EXIT_TEMP) -> NoReturn:
    """``PROG: fatal: TEXT[: ERR]`` on stderr, then exit (111 unless told)."""
    if err is not None:
        text = f"{text}: {errstr(err)}"
    write_line(f"{prog}: fatal: {text}")
    raise SystemExit(code)


def warn(prog: str, text: str, err: int | BaseException | None = None) -> None:
    """``PROG: warning: TEXT[: ERR]`` on stderr."""
    if err is not None:
        text = f"{text}: {errstr(err)}"
    write_line(f"{prog}: warning: {text}")


def usage(prog: str, text: str) -> NoReturn:
    """``PROG: usage: TEXT`` on stderr, exit 100."""
    write_line(f"{prog}: usage: {text}")
    raise SystemExit(EXIT_USAGE)
