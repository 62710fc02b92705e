"""systemd socket activation for tcpserver: serve an inherited listening socket instead of binding.

Opt-in by the environment only, so every 0.88 command line keeps its
meaning: ``LISTEN_PID`` must be tcpserver's own pid and ``LISTEN_FDS`` a
positive number (systemd's ``sd_listen_fds`` convention; the sockets start
at fd 3).  Anything else (no variables, another pid, garbage, ``LISTEN_FDS=0``)
and tcpserver binds HOST PORT as 0.88 does.

Adopted, the socket replaces the bind, and its ``getsockname()`` is the
local address every report uses (TCPLOCALIP/TCPLOCALPORT, ``-1``, the
scoreboard, the log lines); HOST and PORT are still required (0.88's
syntax) and a mismatch with the socket is warned about, the socket winning.
tcpserver serves one TCP socket, IPv4 or IPv6 (an IPv6 one's IPv4 clients,
if its creator let it take any, are shown as IPv4: docs/CONTRACTS.md, IPv6),
so ``LISTEN_FDS`` above 1, or a fd 3 that is not a listening IPv4 or IPv6
stream socket, is fatal: a unit that passes
more, or something else, is a mistake to be seen, not half-served.

The variables addressed to this process are consumed: removed from the
environment of every program tcpserver runs, as ``sd_listen_fds(1)`` does:
the programs get the inherited environment plus what the contract adds or
removes, and this removal is part of it
(docs/CONTRACTS.md, tcpserver environment).  Variables addressed to another
pid are not ours to consume and are passed on untouched.

The front end never looks at fd 3: it survives the lean re-exec (lean.py)
because systemd passes it without close-on-exec, and the master makes it
close-on-exec once adopted, as its own bound socket is, so no program
inherits it.
"""

from __future__ import annotations

import socket

LISTEN_VARS = (b"LISTEN_PID", b"LISTEN_FDS", b"LISTEN_FDNAMES")
FIRST_FD = 3  # SD_LISTEN_FDS_START


class ActivationError(Exception):
    """The inherited socket cannot be served; the text follows ``tcpserver: fatal: ``."""


def _decimal(value: bytes | None) -> int | None:
    if value is None or not value.isdigit():  # bytes.isdigit: ASCII digits only
        return None
    return int(value)


def addressed_here(env: dict[bytes, bytes], pid: int) -> bool:
    """True when ENV's LISTEN_PID names PID: the LISTEN_* variables are ours to consume."""
    return _decimal(env.get(b"LISTEN_PID")) == pid


def listen_fds(env: dict[bytes, bytes], pid: int) -> int:
    """How many sockets ENV says were passed to PID; 0 (bind as usual) unless addressed here and a number."""
    if not addressed_here(env, pid):
        return 0
    return _decimal(env.get(b"LISTEN_FDS")) or 0


def without_listen_vars(env: dict[bytes, bytes]) -> dict[bytes, bytes]:
    return {k: v for k, v in env.items() if k not in LISTEN_VARS}


def adopt(count: int) -> socket.socket:
    """The inherited listening socket at fd 3, checked and made close-on-exec; ActivationError otherwise."""
    if count != 1:
        raise ActivationError(f"socket activation passed {count} sockets (LISTEN_FDS); tcpserver serves one")
    try:
        sock = socket.socket(fileno=FIRST_FD)
    except OSError as e:
        raise ActivationError(f"unable to use socket activation fd {FIRST_FD}: {_errstr(e)}") from None
    try:
        family = sock.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN)
        kind = sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
        protocol = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError as e:
        sock.detach()
        raise ActivationError(f"unable to use socket activation fd {FIRST_FD}: {_errstr(e)}") from None
    problem = None
    if family not in (socket.AF_INET, socket.AF_INET6):
        problem = "is not an IPv4 or IPv6 socket"
    elif kind != socket.SOCK_STREAM or protocol not in (0, socket.IPPROTO_TCP):
        problem = "is not a TCP stream socket"
    elif not listening:
        problem = "is not listening"
    if problem is not None:
        sock.detach()  # left as it came: not ours to close
        raise ActivationError(f"socket activation fd {FIRST_FD} {problem}")
    sock.set_inheritable(False)  # as the socket tcpserver binds itself: never a program's
    return sock


def _errstr(e: OSError) -> str:
    from prefork.djb import errstr

    return errstr(e)
