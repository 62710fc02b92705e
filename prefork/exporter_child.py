"""``prefork-exporter`` as a child of a server: ``tcpserver``/``svscan --metrics HOST:PORT``, ``--metrics-textfile PATH``.

``prefork/`` and ``control/`` never import ``metrics/``,
and a process that forks must not run an HTTP thread: a server asked for
metrics runs the exporter beside itself instead.  It is started with
``os.posix_spawn`` (the server never forks for it), with the environment the
server was started with, and is given the server's pid (``--parent-pid``), so
it exits by itself when the server is gone, however the server ended.

The server's loop reaps it like any child: it must know :attr:`Exporter.pid`,
so that the exporter is never taken for a program (no ``-c`` slot, no orphan
count) or a service, and call :meth:`Exporter.exited`, which warns and asks
for a restart at :attr:`Exporter.due`: at once if it lived a second, else one
second after its start (a worker's throttle).

The server binds the metrics address itself (:func:`bind_listener`) and holds
it; every start of the exporter serves that socket (``--listen-fd``), so a
restart serves the same address, port 0 included, and no other process can
take the port in between.  Faults never stop a server: if the address cannot
be bound (a port already in use), the server warns and passes HOST:PORT
instead; the exporter then exits 111 with its own message, and the server
warns and tries again every second until it works.

How an operator learns the URL of ``--metrics HOST:0``: the exporter's own
``listening on http://HOST:PORT/metrics`` line goes to stderr, which ``-q``
sends to /dev/null, so tcpserver binds the address before it prints ``-1``'s
line and (1) with ``-1`` prints ``metrics PORT`` on a second line (only with
``--metrics``: without it ``-1`` prints 0.88's single line; the word keeps a
log reader that looks for 0.88's bare number from taking it for one), and (2)
records the bound address in the scoreboard header, which ``tcpserver-status``
shows as ``metrics http://HOST:PORT/metrics`` (``"metrics"`` in ``--json``).

A server running as root never gives root to the exporter: it passes
``--user nobody`` (:data:`DEFAULT_USER`; ``65534:65534`` where there is no
such user; ``svscan --metrics-user NAME`` chooses another).  The exporter
opens its sources (the 0600 service table, the scoreboard) and binds its
address while still root, then calls :func:`drop_privileges` and reads the
sources through the descriptors it kept.  So a ``--metrics-textfile`` is
written by that user, and its directory must be writable by it: a directory
owned by ``nobody``, or one writable by a group that the exporter is given
with ``--metrics-user UID:GID``.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time

TYPE_CHECKING = False  # the lean server processes do not import typing
if TYPE_CHECKING:
    from collections.abc import Callable

NAME = "prefork-exporter"
DEFAULT_USER = "nobody"  # who a root server's exporter runs as
FALLBACK_IDS = (65534, 65534)  # nobody/nogroup's usual ids, where there is no user nobody
RESTART_DELAY = 1.0
LISTEN_FD = 3  # where the exporter finds the server's metrics socket (--listen-fd)
STOP_SECONDS = 5.0  # how long stop() lets the exporter write its last textfile before SIGKILL


def parse_address(text: str) -> tuple[str, int]:
    """HOST:PORT as ``prefork-exporter --listen`` reads it ([V6]:PORT; empty HOST = 0.0.0.0); ValueError says why."""
    host, sep, port = text.rpartition(":")
    if not sep:
        raise ValueError(f"not HOST:PORT: {text!r}")
    if not (port.isascii() and port.isdigit()):
        raise ValueError(f"port is not a number: {text!r}")
    if int(port) > 65535:
        raise ValueError(f"port is larger than 65535: {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if any(ch.isspace() or ch in "[]/" for ch in host):
        raise ValueError(f"not a host: {host!r}")
    return host or "0.0.0.0", int(port)


def format_address(host: str, port: int) -> str:
    """The ``--listen`` word for HOST and PORT (IPv6 literals in brackets)."""
    from prefork.addr import host_port

    return host_port(host, port)


def bind_listener(host: str, port: int) -> socket.socket:
    """The metrics address, bound and listening, for the server to hold for its whole life.

    Every start of the exporter gets it as descriptor :data:`LISTEN_FD`
    (``--listen-fd``), so a restart serves the same address, port 0 included,
    and nothing else can take the port between two exporters.  The socket is
    close-on-exec and never at :data:`LISTEN_FD` itself (a dup2 onto itself
    would keep close-on-exec).  OSError if HOST PORT cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
        if sock.fileno() == LISTEN_FD:
            moved = sock.dup()
            sock.close()
            sock = moved
    except OSError:
        sock.close()
        raise
    return sock


def metrics_listener(text: str, warn: Callable[[str, OSError], None]) -> socket.socket | str:
    """The server's side of ``--metrics HOST:PORT``: the bound socket, or HOST:PORT if it cannot be bound now.

    WARN(text, err) says why not; the exporter is then given HOST:PORT to bind
    itself, exits 111 with its own message, and is retried every second.
    """
    host, port = parse_address(text)
    try:
        return bind_listener(host, port)
    except OSError as e:
        warn(f"unable to bind metrics address {text}", e)
        return format_address(host, port)


def exporter_path() -> str:
    """``prefork-exporter`` next to this interpreter (or next to the command that started it)."""
    candidates = [sys.executable] + ([sys.argv[0]] if sys.argv and sys.argv[0] else [])
    for base in candidates:
        path = os.path.join(os.path.dirname(os.path.abspath(base)), NAME)
        if os.access(path, os.X_OK):
            return path
    return os.path.join(os.path.dirname(os.path.abspath(sys.executable)), NAME)  # the spawn error names it


def resolve_user(text: str) -> tuple[int, int]:
    """(uid, gid) of a ``--user``/``--metrics-user`` value: an account name (its uid and primary gid), or
    ``UID:GID`` in numbers; ValueError says why not."""
    uid_text, sep, gid_text = text.partition(":")
    if sep:
        if not (uid_text.isascii() and uid_text.isdigit() and gid_text.isascii() and gid_text.isdigit()):
            raise ValueError(f"not an account name or UID:GID: {text!r}")
        uid, gid = int(uid_text), int(gid_text)
        if uid >= 1 << 32 or gid >= 1 << 32:
            raise ValueError(f"not an account name or UID:GID: {text!r}")
        return uid, gid
    import pwd

    try:
        pw = pwd.getpwnam(text)
    except (KeyError, ValueError):  # ValueError: a NUL in the name
        raise ValueError(f"unknown account {text!r}") from None
    return pw.pw_uid, pw.pw_gid


def default_user() -> str:
    """What a root server passes as ``--user`` unless told otherwise: ``nobody``, or its usual ids without one."""
    try:
        resolve_user(DEFAULT_USER)
    except ValueError:
        return f"{FALLBACK_IDS[0]}:{FALLBACK_IDS[1]}"
    return DEFAULT_USER


def drop_privileges(uid: int, gid: int) -> None:
    """Become UID:GID for good: no supplementary groups, real, effective and saved ids all changed; OSError.

    A process that is not root and already is UID:GID has nothing to give up (and may not drop its groups).
    """
    if os.geteuid() != 0 and os.getresuid() == (uid, uid, uid) and os.getresgid() == (gid, gid, gid):
        return
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid or os.getgid() != gid or os.getegid() != gid:
        raise PermissionError(1, "ids did not change")


def exporter_args(
    sources: list[str], parent_pid: int, listen: str | socket.socket | None, textfile: str | None,
    user: str | None = None,
) -> list[str]:
    """The exporter's arguments after its name: SOURCES (``--scoreboard P`` or ``--services D``) and the rest.

    LISTEN is the server's socket from :func:`bind_listener` (passed as ``--listen-fd``),
    or HOST:PORT for the exporter to bind itself when the server could not.  USER is who the exporter
    becomes once it has opened its sources (``--user``, :func:`default_user` if None), passed only when the
    server is root: any other server has nothing to give up.
    """
    args = [*sources, "--parent-pid", str(parent_pid)]
    if isinstance(listen, socket.socket):
        args += ["--listen-fd", str(LISTEN_FD)]
    elif listen is not None:
        args += ["--listen", listen]
    if textfile is not None:
        args += ["--metrics-textfile", textfile]
    if os.geteuid() == 0:
        args += ["--user", user or default_user()]
    return args


class Exporter:
    """One exporter child: its pid while it runs, and when to start it again once it has exited."""

    def __init__(
        self,
        prog: str,
        args: list[str],
        env: dict[bytes, bytes],
        sigdef: tuple[int, ...] = (),
        quiet: bool = False,
        path: str | None = None,
        listener: socket.socket | str | None = None,
    ) -> None:
        self.prog = prog
        # The server's metrics socket, dup2'd to LISTEN_FD in every start (HOST:PORT: the exporter binds it).
        self.listener = listener if isinstance(listener, socket.socket) else None
        self.path = path or exporter_path()
        self.argv = [self.path, *args]
        self.env = env
        self.sigdef = sigdef
        self.quiet = quiet  # tcpserver -q: no warnings, and the exporter's stderr goes to /dev/null
        self.pid = 0
        self.started = 0.0
        self.due: float | None = None  # monotonic time of the next start; None while it runs (or stopped)

    def warn(self, text: str, err: BaseException | None = None) -> None:
        if not self.quiet:
            from prefork.djb import warn

            warn(self.prog, text, err)

    def start(self) -> None:
        """Start it now; if that fails, warn and set :attr:`due` a second later."""
        self.due = None
        self.started = time.monotonic()
        actions: list[tuple[int | str, ...]] = (
            [(os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0)] if self.quiet else []
        )
        if self.listener is not None:
            actions.append((os.POSIX_SPAWN_DUP2, self.listener.fileno(), LISTEN_FD))
        try:
            self.pid = os.posix_spawn(
                self.path, self.argv, self.env, file_actions=actions, setsigmask=(), setsigdef=self.sigdef
            )
        except OSError as e:
            self.pid = 0
            self.warn(f"unable to start {self.path}", e)
            self.due = self.started + RESTART_DELAY

    def exited(self, status: int) -> None:
        """The server reaped :attr:`pid` with wait STATUS: warn, and restart it at :attr:`due`."""
        pid, self.pid = self.pid, 0
        if os.WIFSIGNALED(status):
            how = f"killed by signal {os.WTERMSIG(status)}"
        else:
            how = f"exited with status {os.waitstatus_to_exitcode(status)}"
        self.due = max(time.monotonic(), self.started + RESTART_DELAY)
        self.warn(f"metrics exporter {pid} {how}; restarting it")

    def start_if_due(self, now: float) -> None:
        if self.due is not None and self.due <= now:
            self.start()

    def stop(self, seconds: float = STOP_SECONDS) -> None:
        """SIGTERM it (it writes its textfile a last time), reap it; SIGKILL after SECONDS.  No restart."""
        self.due = None
        pid, self.pid = self.pid, 0
        if not pid:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
        deadline = time.monotonic() + seconds
        for _ in range(int(seconds / 0.01) + 1):
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    return
            except ChildProcessError:
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(0.01)
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (OSError, ChildProcessError):
            pass
