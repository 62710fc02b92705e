"""tcpclient: connect to a TCP server and run a program on the connection (docs/CONTRACTS.md, tcpclient).

``tcpclient [ -hHrRdDqQv ] [ -i localip ] [ -p localport ] [ -T timeoutconn ]
[ -l localname ] [ -t timeoutinfo ] host port program``

The program gets the socket as fd 6 (read) and fd 7 (write, a dup), stdin
and stdout untouched, and the UCSPI variables in its environment.  The
front end below only parses; ``connect`` and ``connection_environ`` are the
library parts, drivable from tests without a subprocess.

Deliberate differences from ucspi-tcp 0.88 (besides the resolver, see
prefork.addr): the opt-in long option ``--ident-port N`` (as tcpserver's)
asks the ident server on port N instead of 113; a non-number for ``-t``,
``-p`` or ``-T``, or a ``-p`` above 65535, is refused with exit 100 instead
of being read as 0 (project-wide rule); a bad ``-i`` is reported after the
whole command line is parsed, so ``-i x -z`` reports the unknown ``-z``.
"""

from __future__ import annotations

import errno
import os
import re
import select
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

from prefork import addr, djb
from prefork.environ import original_environ
from prefork.ident import IDENT_PORT, ident_query
from prefork.options import Option, command_line, format_help, number, usage_error

PROG = "tcpclient"
USAGE = (
    "tcpclient [ -hHrRdDqQv ] [ -i localip ] [ -p localport ] [ -T timeoutconn ]"
    " [ -l localname ] [ -t timeoutinfo ] host port program"
)
# ucspi-tcp-ipv6's usage line, printed instead when the command line used -4, -6 or -I (as tcpserver's)
USAGE6 = (
    "tcpclient [ -46hHrRdDqQv ] [ -i localip ] [ -p localport ] [ -T timeoutconn ]"
    " [ -l localname ] [ -t timeoutinfo ] [ -I interface ] host port program"
)
SOCKET_FDS = (6, 7)
DEFAULT_PATH = b"/bin:/usr/bin"


@dataclass
class Options:
    """What the command line chose; defaults are tcpclient's."""

    verbosity: int = 1
    nodelay: bool = False
    remote_host: bool = True
    remote_info: bool = True
    local_name: str | None = None
    info_timeout: float = 26
    conn_timeouts: tuple[int, int] = (2, 58)
    local_ip: str = "0.0.0.0"  # -i; "0.0.0.0" (the default) is any address, of either family
    local_port: int = 0
    ident_port: int = IDENT_PORT
    family: int = 0  # -4: IPv4 only; -6: IPv4 connections shown as IPv6 (::ffff:), names' AAAA records first
    interface: str | None = None  # -I: the scope of link-local IPv6 addresses
    local_given: bool = False  # -i was given: its family must be the server's


class ClientError(Exception):
    """A fatal error: ``message`` is the text after ``tcpclient: fatal: `` (errno wording included)."""

    def __init__(self, text: str, err: int | BaseException | None = None) -> None:
        message = text if err is None else f"{text}: {djb.errstr(err)}"
        super().__init__(message)
        self.message = message


# -- connecting -----------------------------------------------------------------------------------


def _wait_writable(sock: socket.socket, seconds: float) -> bool:
    """Whether SOCK becomes writable (or fails) within SECONDS; always looks once."""
    deadline = time.monotonic() + seconds
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    return bool(poller.poll(max(0.0, deadline - time.monotonic()) * 1000.0))


def connect_with_timeout(sock: socket.socket, ip: str, port: int, seconds: float, scope: int = 0) -> int:
    """djb's ``timeoutconn``: 0 when connected (socket left blocking), else the errno."""
    sock.setblocking(False)
    err = sock.connect_ex((ip, port, 0, scope) if ":" in ip else (ip, port))
    if err in (errno.EINPROGRESS, errno.EAGAIN):
        if not _wait_writable(sock, seconds):
            return errno.ETIMEDOUT
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if not err:
            try:
                sock.getpeername()
            except OSError as e:
                err = e.errno or errno.ENOTCONN
    if err:
        return err
    sock.setblocking(True)
    return 0


def _bound_socket(local_ip: str, local_port: int, family: int = socket.AF_INET, scope: int = 0) -> socket.socket:
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as e:
        raise ClientError("unable to create socket", e) from None
    try:
        if family == socket.AF_INET6:
            sock.bind(("::" if local_ip == "0.0.0.0" else local_ip, local_port, 0, scope))
        else:
            sock.bind((local_ip, local_port))
    except OSError as e:
        sock.close()
        raise ClientError("unable to bind socket", e) from None
    return sock


def connect(addresses: Sequence[str], port: int, opts: Options, warn: Callable[[str], None]) -> socket.socket | None:
    """Try ADDRESSES in two passes (``-T X+Y``); the connected socket, or None when all failed.

    Pass 1 gives each address X seconds; addresses that timed out get Y more
    seconds in pass 2 (a single address gets X+Y at once).  Every final
    failure is reported through WARN as ``unable to connect to IP port N: ERR``.
    Raises ClientError when a socket cannot be created or bound.
    """
    first, second = opts.conn_timeouts
    if len(addresses) == 1:
        first, second = first + second, 0
    pending = list(addresses)
    scope = addr.interface_index(opts.interface)
    for pass_index, seconds in enumerate((first, second)):
        retry: list[str] = []
        for ip in pending:
            six = ":" in ip
            if opts.local_given and six != (":" in opts.local_ip):  # -i of the other family: as ucspi-tcp-ipv6
                warn(f"unable to connect to {ip} port {port}: {djb.errstr(errno.EAFNOSUPPORT)}")
                continue
            sock = _bound_socket(opts.local_ip, opts.local_port, socket.AF_INET6 if six else socket.AF_INET, scope)
            err = connect_with_timeout(sock, ip, port, seconds, scope)
            if not err:
                return sock
            sock.close()
            if pass_index == 0 and second and err == errno.ETIMEDOUT:
                retry.append(ip)
            else:
                warn(f"unable to connect to {ip} port {port}: {djb.errstr(err)}")
        pending = retry
    return None


def connection_environ(
    sock: socket.socket,
    opts: Options,
    log: Callable[[str], None],
    *,
    dns_timeout: float = addr.DNS_TIMEOUT,
) -> dict[str, str | None]:
    """The UCSPI variables for a connected SOCK, in tcpclient's order; None means "remove".

    Unlike tcpserver, a PTR look-up that works but finds no name gives an
    empty TCPLOCALHOST/TCPREMOTEHOST.  LOG gets the ``-v`` line, written
    between the address and name look-ups as tcpclient does.
    """
    if opts.nodelay:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
    force6 = opts.family == 6
    try:
        local_ip, local_port = sock.getsockname()[:2]
    except OSError as e:
        raise ClientError("unable to get local address", e) from None
    try:
        remote_ip, remote_port = sock.getpeername()[:2]
    except OSError as e:
        raise ClientError("unable to get remote address", e) from None
    local_ip, remote_ip = addr.present(local_ip, force6), addr.present(remote_ip, force6)
    # ucspi-tcp-ipv6's tcpclient sets no TCP6* twins, only PROTO (docs/CONTRACTS.md, IPv6)
    changes: dict[str, str | None] = {"PROTO": "TCP6" if addr.is_ip6(remote_ip) else "TCP"}
    changes["TCPLOCALPORT"] = str(local_port)
    changes["TCPLOCALIP"] = local_ip
    if opts.local_name is not None:
        changes["TCPLOCALHOST"] = opts.local_name
    else:
        changes["TCPLOCALHOST"] = addr.reverse_name(local_ip, dns_timeout)
    changes["TCPREMOTEPORT"] = str(remote_port)
    changes["TCPREMOTEIP"] = remote_ip
    if opts.verbosity >= 2:
        log(f"connected to {remote_ip} port {remote_port}")
    changes["TCPREMOTEHOST"] = addr.reverse_name(remote_ip, dns_timeout) if opts.remote_host else None
    info = None
    if opts.remote_info:
        info = ident_query(local_ip, local_port, remote_ip, remote_port, opts.info_timeout, ident_port=opts.ident_port,
                           scope=addr.interface_index(opts.interface))
    changes["TCPREMOTEINFO"] = info
    return changes


def program_environ(changes: dict[str, str | None], base: dict[bytes, bytes] | None = None) -> dict[bytes, bytes]:
    """BASE (the start-up environment) with CHANGES applied: set, or removed where None."""
    env = dict(original_environ() if base is None else base)
    for name, value in changes.items():
        key = os.fsencode(name)
        env.pop(key, None)
        if value is not None:
            env[key] = os.fsencode(value)
    return env


# -- running the program --------------------------------------------------------------------------


def reserve_socket_fds() -> None:
    """Close inherited fds 6 and 7 and hold them on /dev/null (close-on-exec) until the socket arrives.

    Holding them means no descriptor opened meanwhile (a resolver's socket,
    say) can land on 6 or 7 and be overwritten by the dup2 later.
    """
    for fd in SOCKET_FDS:
        try:
            os.close(fd)
        except OSError:
            pass
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    for fd in SOCKET_FDS:
        if fd != null:
            os.dup2(null, fd, inheritable=False)
    if null not in SOCKET_FDS:
        os.close(null)


def install_socket(sock: socket.socket) -> None:
    """Make the connected socket fd 6 and its dup fd 7, both inherited by the program."""
    fd = sock.detach()
    try:
        os.dup2(fd, 6, inheritable=True)
    except OSError as e:
        raise ClientError("unable to set up descriptor 6", e) from None
    os.set_inheritable(6, True)
    if fd not in SOCKET_FDS:
        os.close(fd)
    try:
        os.dup2(6, 7, inheritable=True)
    except OSError as e:
        raise ClientError("unable to set up descriptor 7", e) from None
    os.set_inheritable(7, True)


def restore_signals() -> None:
    """Give the program the dispositions the C tcpclient would: Python ignores SIGPIPE and SIGXFSZ."""
    for name in ("SIGPIPE", "SIGXFSZ"):
        sig = getattr(signal, name, None)
        if sig is not None:
            signal.signal(sig, signal.SIG_DFL)


def pathexec(argv: Sequence[bytes], env: dict[bytes, bytes], path: bytes | None) -> OSError:
    """djb's ``pathexec``: exec ARGV, searching PATH (``/bin:/usr/bin`` if unset) when argv[0] has no ``/``.

    Returns the error to report when nothing could be run: the last error
    other than "file does not exist", the search going on past access denied,
    permission denied and is-a-directory.
    """
    file = argv[0]
    if b"/" in file:
        candidates = [file]
    else:
        search = DEFAULT_PATH if path is None else path
        candidates = [(directory or b".") + b"/" + file for directory in search.split(b":")]
    saved: OSError | None = None
    last = OSError(errno.ENOENT, os.strerror(errno.ENOENT))
    for candidate in candidates:
        try:
            os.execve(candidate, list(argv), env)
        except ValueError:
            error = OSError(errno.EACCES, os.strerror(errno.EACCES))  # empty argv[0]: a directory
        except OSError as e:
            error = e
        if error.errno != errno.ENOENT:
            saved = error
            if error.errno not in (errno.EACCES, errno.EPERM, errno.EISDIR):
                return saved
        last = error
    return saved or last


# -- command line ---------------------------------------------------------------------------------


_TIMEOUTS = re.compile(r"(\d*)(?:\+(\d*))?")


def _conn_timeouts(word: str) -> tuple[int, int]:
    """``-T X+Y`` (``-T X`` is X+0, ``-T +Y`` is 0+Y)."""
    match = _TIMEOUTS.fullmatch(word) if word.isascii() else None
    if match is None or not any(match.groups()):
        raise ValueError(f"not a timeout X+Y: {word!r}")
    return int(match.group(1) or 0), int(match.group(2) or 0)


OPTIONS = [
    Option("-4", "family", "IPv4 only", value=4),
    Option("-6", "family", "show IPv4 connections as IPv6 (PROTO=TCP6, ::ffff:a.b.c.d); names' AAAA first", value=6),
    Option("-I", "interface", "the interface of a link-local IPv6 host (its scope)", metavar="interface"),
    Option("-d", "nodelay", "delay sending data (Nagle; default)", value=False),
    Option("-D", "nodelay", "set TCP_NODELAY", value=True),
    Option("-v", "verbosity", "report the connection", value=2),
    Option("-q", "verbosity", "no messages", value=0),
    Option("-Q", "verbosity", "error messages only (default)", value=1),
    Option("-h", "remote_host", "look up TCPREMOTEHOST (default)", value=True),
    Option("-H", "remote_host", "do not look up TCPREMOTEHOST", value=False),
    Option("-r", "remote_info", "ident look-up for TCPREMOTEINFO (default)", value=True),
    Option("-R", "remote_info", "no ident look-up", value=False),
    Option("-i", "local_ip", "local IP address to bind", metavar="localip"),
    Option("-p", "local_port", "local port to bind", metavar="localport", convert=number(65535)),
    Option("-T", "conn_timeouts", "connect timeouts X+Y seconds", metavar="timeoutconn", convert=_conn_timeouts),
    Option("-l", "local_name", "TCPLOCALHOST value (no local PTR look-up)", metavar="localname"),
    Option("-t", "info_timeout", "ident timeout in seconds", metavar="timeoutinfo", convert=number()),
    Option("--ident-port", "ident_port", "port of the ident server (113)", metavar="PORT", convert=number(65535)),
]
DESCRIPTION = "Connect to HOST PORT and run PROGRAM with the connection on fds 6 (read) and 7 (write)."


def parse_command_line(args: Sequence[str]) -> tuple[list[str], Options]:
    """The operands and options of ARGS; ``--help`` and a bad command line end the process (0, or 100)."""
    defaults = Options()
    values, operands = command_line(args, USAGE, lambda: format_help(USAGE, DESCRIPTION, OPTIONS), OPTIONS,
                                    defaults=dict(vars(defaults), local_ip=None),
                                    usage_after=usage_after)
    if values["local_ip"] is not None:  # checked once the whole line is read: -i x -z reports the -z
        values["local_given"] = True
        values["local_ip"] = addr.scan_ip(values["local_ip"])
        if values["local_ip"] is None:  # as 0.88: only the usage line
            usage_error(usage_for(values))
    values["local_ip"] = values["local_ip"] or defaults.local_ip
    return operands, Options(**values)


def usage_for(values: dict[str, object] | Options) -> str:
    """0.88's usage line, or ucspi-tcp-ipv6's when the command line used -4, -6 or -I."""
    if isinstance(values, Options):
        values = vars(values)
    return USAGE6 if values.get("family") or values.get("interface") is not None else USAGE


def usage_after(found: list[tuple[str, str | None]]) -> str:
    """The usage line of a bad option: as usage_for, from the options read before it."""
    return usage_for({"family": any(name in ("-4", "-6") for name, _ in found),
                      "interface": next((value for name, value in found if name == "-I"), None)})


def run(args: list[str], opts: Options) -> NoReturn:
    """Everything after option parsing; messages obey -q/-Q/-v exactly as tcpclient's."""
    loud = opts.verbosity > 0

    def say(text: str) -> None:
        if loud:
            djb.write_line(f"{PROG}: {text}")

    def die(text: str, code: int = djb.EXIT_TEMP) -> NoReturn:
        say(f"fatal: {text}")
        raise SystemExit(code)

    def usage() -> NoReturn:
        if loud:
            djb.usage(PROG, usage_for(opts))
        raise SystemExit(djb.EXIT_USAGE)

    if len(args) < 2:
        usage()
    host, port_text, program = args[0], args[1], args[2:]
    try:
        port = addr.parse_port(port_text)
    except addr.PortError as e:
        die(e.message)
    if not program:
        usage()
    try:
        addresses = addr.resolve_client_host(host, opts.family == 6, opts.family == 4)
        sock = connect(addresses, port, opts, say)
        if sock is None:
            raise SystemExit(djb.EXIT_TEMP)
        changes = connection_environ(sock, opts, say)
        env = program_environ(changes)
        install_socket(sock)
    except (addr.AddressError, ClientError) as e:
        die(e.message)
    restore_signals()
    argv = [os.fsencode(arg) for arg in program]
    error = pathexec(argv, env, original_environ().get(b"PATH"))
    die(f"unable to run {program[0]}: {djb.errstr(error)}")


def main(argv: list[str] | None = None) -> NoReturn:
    """Console-script entry: like tcpclient, drop inherited fds 6 and 7 before anything else."""
    reserve_socket_fds()
    run(*parse_command_line(sys.argv[1:] if argv is None else argv))
