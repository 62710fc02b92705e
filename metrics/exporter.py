"""``prefork-exporter``: Prometheus metrics of tcpservers, svscans and multilogs, read from their shared memory.

    prefork-exporter --scoreboard PATH... --services DIR... --multilog DIR... [--listen HOST:PORT]
                     [--metrics-textfile PATH [--textfile-interval SECONDS]] [--once] [--parent-pid PID]

Serves ``/metrics`` over HTTP on ``--listen`` from its single thread's
select() loop and renders the text format itself (``collector.render_text``,
tested byte for byte against prometheus_client's ``generate_latest``):
without prometheus_client, threads and ``http.server`` the process is about
half the size, and it may run beside every tcpserver.

``--metrics-textfile PATH`` writes the same exposition for node_exporter's
textfile collector through ``PATH.new`` and a rename, so the collector never
reads half a file: every ``--textfile-interval`` seconds (15), on SIGUSR1,
and once more on the way out (by then a server that went away shows as
``prefork_exporter_source_up 0``, so the file never keeps its counters as if
live).  ``--once`` writes the textfile (or stdout, without one) and exits.
``--parent-pid PID`` exits when PID is gone (a pidfd; a one-second poll
where pidfds are not available), so an exporter started by a tcpserver or
svscan never outlives it.  SIGTERM, SIGINT and SIGHUP exit 0.

The families, their labels and what happens on faults are described in
``metrics/collector.py``.  ``--services`` takes a directory that a prefork
svscan (or supervise) runs for, or a service table file (``svscan --table``);
``--multilog`` a log directory whose multilog has the script word ``M``
before it, or its counter block file (``control/log/logcounters.py``).

``--user USER`` (an account name, or UID:GID) is what a server running as
root passes (see ``prefork/exporter_child.py``): the exporter opens its
sources and binds its address first, then becomes USER (no supplementary
groups) and reads the sources through the descriptors it opened, so a 0600
service table stays readable.  A textfile is then written as USER: its
directory must be writable by USER.

Errors: a bad command line (an unknown ``--user`` included) prints why and the
usage line, exit 100; an address that cannot be bound, a ``--once`` textfile
that cannot be written, or ids that cannot be changed are fatal, exit 111.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable

from prefork.djb import errstr, fatal, warn, write_line
from prefork.exporter_child import bind_listener, drop_privileges, resolve_user
from prefork.metrics.collector import SharedMemoryCollector
from prefork.options import Option, UsageError, parse, seconds, usage_error
from prefork.proc import running, start_ticks

PROG = "prefork-exporter"
USAGE = (
    "prefork-exporter [--scoreboard PATH...] [--services DIR...] [--multilog DIR...] [--listen HOST:PORT | --listen-fd N]"
    " [--metrics-textfile PATH] [--textfile-interval SECONDS] [--once] [--parent-pid PID] [--user USER]"
)
HELP = f"""usage: {USAGE}

Serve Prometheus metrics read from prefork's shared memory (no multiprocess directory).
  --scoreboard PATH...        tcpserver scoreboards (tcpserver --scoreboard PATH)
  --services DIR...           directories run by a prefork svscan or supervise, or their table files
  --multilog DIR...           log directories of multilogs run with the script word M, or their counter files
  --listen HOST:PORT          serve http://HOST:PORT/metrics (port 0: any; the address is logged)
  --listen-fd N               serve on the listening socket inherited as descriptor N (what tcpserver
                              and svscan --metrics pass: they hold the address across restarts)
  --metrics-textfile PATH     also write the metrics to PATH (via PATH.new + rename), for node_exporter
  --textfile-interval SECONDS how often to rewrite it (default 15; SIGUSR1 rewrites it at once)
  --once                      write the textfile (stdout without one) once and exit
  --parent-pid PID            exit when process PID is gone
  --user USER                 open the sources, then run as USER (a name or UID:GID; what a root server passes)
"""
DEFAULT_INTERVAL = 15.0
POLL_SECONDS = 1.0  # --parent-pid without pidfds
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
MAX_CLIENTS = 4096  # clients held at once, at most (fewer under a lower descriptor limit)
MIN_CLIENTS = 16
RESERVED_FDS = 64  # descriptors kept for the sources, the textfile and the rest
MAX_REQUEST = 8192  # bytes of request head: a scrape sends a few hundred
HEAD_SECONDS = 3.0  # from the accept to the end of the request head
WRITE_SECONDS = 10.0  # from the request to the last byte of the response
ACCEPT_BATCH = 256  # connections accepted (and events handled) per wake-up


class Options:
    """The parsed command line."""

    __slots__ = ("scoreboards", "services", "multilogs", "listen", "listen_fd", "textfile", "interval", "once",
                 "parent_pid", "user")

    def __init__(self) -> None:
        self.scoreboards: list[str] = []
        self.services: list[str] = []
        self.multilogs: list[str] = []
        self.listen: tuple[str, int] | None = None
        self.listen_fd: int | None = None
        self.textfile: str | None = None
        self.interval = DEFAULT_INTERVAL
        self.once = False
        self.parent_pid: int | None = None
        self.user: tuple[str, int, int] | None = None  # --user: (as given, uid, gid)


def _listen_fd(value: str) -> int:
    if not (value.isascii() and value.isdigit()) or int(value) < 3 or int(value) >= 1 << 20:
        raise UsageError(f"--listen-fd wants a descriptor number of 3 or more, not {value!r}")
    return int(value)


def _interval(value: str) -> float:
    try:
        return seconds(positive=True)(value)
    except ValueError:
        raise UsageError(f"--textfile-interval wants a number of seconds above 0, not {value!r}") from None


def _parent_pid(value: str) -> int:
    if not (value.isascii() and value.isdigit()) or not 0 < int(value) < 1 << 31:
        raise UsageError(f"--parent-pid wants a process id, not {value!r}")
    return int(value)


def _user(value: str) -> tuple[str, int, int]:
    try:
        return (value, *resolve_user(value))
    except ValueError as e:
        raise UsageError(f"--user: {e}") from None


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT ([V6]:PORT; an empty HOST is 0.0.0.0) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise UsageError(f"--listen wants HOST:PORT, not {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", int(port)


def parse_args(argv: list[str]) -> Options:
    """Long options only (prefork/options.py); --scoreboard, --services and --multilog take every following word
    up to the next ``--`` option.  Raises UsageError."""
    values, rest = parse(argv, [
        Option("--scoreboard", "scoreboards", metavar="PATH", many=True),
        Option("--services", "services", metavar="DIR", many=True),
        Option("--multilog", "multilogs", metavar="DIR", many=True),
        Option("--listen", "listen", metavar="HOST:PORT", convert=parse_listen),
        Option("--listen-fd", "listen_fd", metavar="N", convert=_listen_fd),
        Option("--metrics-textfile", "textfile", metavar="PATH"),
        Option("--textfile-interval", "interval", metavar="SECONDS", convert=_interval),
        Option("--once", "once"),
        Option("--parent-pid", "parent_pid", metavar="PID", convert=_parent_pid),
        Option("--user", "user", metavar="USER", convert=_user),
    ])
    if values["help"]:
        os.write(1, HELP.encode())
        raise SystemExit(0)
    if rest:
        raise UsageError(f"unexpected argument {rest[0]!r}")
    opts = Options()
    for option, name in (("--scoreboard", "scoreboards"), ("--services", "services"), ("--multilog", "multilogs")):
        if not all(values[name]):
            raise UsageError(f"{option} needs at least one path")
        getattr(opts, name).extend(values[name])
    if values["textfile"] == "":
        raise UsageError("--metrics-textfile needs a path")
    for name in ("listen", "listen_fd", "textfile", "interval", "parent_pid", "user"):
        if values[name] is not None:
            setattr(opts, name, values[name])
    opts.once = bool(values["once"])
    if not opts.scoreboards and not opts.services and not opts.multilogs:
        raise UsageError("nothing to export: give --scoreboard or --services")
    if opts.listen is not None and opts.listen_fd is not None:
        raise UsageError("give --listen or --listen-fd, not both")
    if opts.once and (opts.listen is not None or opts.listen_fd is not None):
        raise UsageError("--once writes once and exits: it cannot --listen")
    if not opts.once and opts.listen is None and opts.listen_fd is None and opts.textfile is None:
        raise UsageError("give --listen, --metrics-textfile or --once")
    return opts


def write_textfile(path: str, data: bytes) -> None:
    """Replace PATH with DATA so node_exporter reads the old file or the new one, never a part (PATH.new + rename).

    PATH.new is made afresh, never opened through a link planted there, and
    removed again when the write fails (prefork/atomicfile.py).
    """
    from prefork.atomicfile import replace

    replace(path, data, mode=0o644)


class ParentWatch:
    """Tells when a process is gone: a pidfd that select() reports readable, else a look at /proc every second."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.fd = -1
        self._ticks = start_ticks(pid)
        if self._ticks is None:
            return
        try:
            self.fd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._ticks = None
        except (AttributeError, OSError):
            pass

    def gone(self) -> bool:
        if self._ticks is None:
            return True
        if self.fd >= 0:
            return bool(select.select([self.fd], [], [], 0)[0])
        return not running(self.pid, self._ticks)

    def poll_timeout(self) -> float | None:
        """How long the main loop may sleep before it must look again (None: the pidfd wakes it)."""
        return None if self.fd >= 0 else POLL_SECONDS


class TextfileWriter:
    """Rewrites the textfile; logs a failure once (and once when it works again)."""

    def __init__(self, path: str, render: Callable[[], bytes]) -> None:
        self.path = path
        self.render = render
        self.failing: str | None = None

    def write(self) -> bool:
        try:
            write_textfile(self.path, self.render())
        except OSError as e:
            why = errstr(e)
            if why != self.failing:
                warn(PROG, f"unable to write {self.path}", e)
            self.failing = why
            return False
        if self.failing is not None:
            write_line(f"{PROG}: {self.path}: written again")
        self.failing = None
        return True


HEAD, BODY, CLOSED = 0, 1, 2  # Client.state: reading the request head, sending the response, gone


class Client:
    """One HTTP connection: the request head read so far, then the response left to send."""

    __slots__ = ("sock", "fd", "state", "request", "response", "deadline", "unread")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.state = HEAD
        self.request = b""
        self.response: memoryview | None = None
        self.deadline = deadline
        self.unread = False  # the request was refused before its end: read the rest away before closing


def respond(request: bytes, render: Callable[[], bytes]) -> bytes:
    """The whole HTTP response to one request head (GET or HEAD of /metrics; / says where they are)."""
    line = request.split(b"\n", 1)[0].rstrip(b"\r")
    parts = line.split()
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
        return _response(b"400 Bad Request", b"bad request\n")
    method, target = parts[0], parts[1].split(b"?", 1)[0]
    if method not in (b"GET", b"HEAD"):
        return _response(b"405 Method Not Allowed", b"only GET and HEAD\n", b"Allow: GET, HEAD\r\n")
    if target == b"/metrics":
        body = render()
        ctype = CONTENT_TYPE
    elif target == b"/":
        body, ctype = b"prefork-exporter: the metrics are at /metrics\n", b"text/plain; charset=utf-8"
    else:
        return _response(b"404 Not Found", b"not found: try /metrics\n")
    response = _response(b"200 OK", body, content_type=ctype)
    return response[: len(response) - len(body)] if method == b"HEAD" else response


def _response(status: bytes, body: bytes, extra: bytes = b"", content_type: bytes = b"text/plain; charset=utf-8") -> bytes:
    return (
        b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n%s\r\n"
        % (status, content_type, len(body), extra)
    ) + body


class HttpServer:
    """GET /metrics, served from the main loop: no thread, no fork; one render per request.

    The clients live in an epoll set of their own, so the main loop's
    select() sees two descriptors however many clients there are.  Nothing
    a client does holds a scrape up: requests are read and responses written
    without blocking; a request head must be complete within HEAD_SECONDS of
    the accept and at most MAX_REQUEST bytes (431 beyond), a response sent
    within WRITE_SECONDS.  Clients are held up to the descriptor limit less a
    reserve (at most MAX_CLIENTS); when that is reached, the client waiting
    longest for its request head is dropped to make room for the new one, so
    a flood of idle connections costs each of them its place, not the scrapes
    theirs.
    """

    def __init__(self, sock: socket.socket, render: Callable[[], bytes]) -> None:
        """Serve on SOCK, a listening socket: bound here for ``--listen``, inherited for ``--listen-fd``."""
        self.sock = sock
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.render = render
        self.clients: dict[int, Client] = {}
        self.max_clients = client_limit()
        # Clients in the order of their deadlines (a constant after the accept, or after the request):
        # the front is the next to expire, and of the heads the one to evict.  Entries of clients that
        # moved on or closed stay until they reach the front (Client.state tells).
        self.heads: deque[Client] = deque()
        self.bodies: deque[Client] = deque()
        self.poller = select.epoll()
        self.listening = True
        self.poller.register(self.sock.fileno(), select.EPOLLIN)

    def readers(self) -> list[int]:
        return [self.poller.fileno()]

    def writers(self) -> list[int]:
        return []

    def timeout(self, now: float) -> float | None:
        fronts = [q[0].deadline for q in (self.heads, self.bodies) if q]
        return max(0.0, min(fronts) - now) if fronts else None

    def readable(self, fd: int) -> None:
        """FD is ready: the epoll set (every client and the listening socket), or one of them."""
        if fd == self.poller.fileno():
            for ready, mask in self.poller.poll(0, ACCEPT_BATCH):
                if mask & select.EPOLLOUT:
                    self.writable(ready)
                else:
                    self.readable(ready)
        elif fd == self.sock.fileno():
            self.accept()
        else:
            client = self.clients.get(fd)
            if client is not None and client.response is not None:
                self.writable(fd)  # an error or hang-up while the response is on its way
            elif client is not None:
                self.read(client)

    def accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE):  # out of descriptors: an idle client's is ours
                    if self.evict():
                        continue
                    self.pause()  # every client is being answered: accept again when one is done
                return  # else the client gave up already: next time
            if len(self.clients) >= self.max_clients and not self.evict():
                sock.close()
                continue
            sock.setblocking(False)
            client = Client(sock, time.monotonic() + HEAD_SECONDS)
            self.clients[client.fd] = client
            self.heads.append(client)
            self.poller.register(client.fd, select.EPOLLIN)

    def evict(self) -> bool:
        """Close the client that has waited longest for its request head; False if no client is at its head."""
        while self.heads:
            client = self.heads.popleft()
            if client.state == HEAD:
                self.close(client.fd)
                return True
        return False

    def pause(self) -> None:
        if self.listening:
            self.listening = False
            self.poller.modify(self.sock.fileno(), 0)

    def read(self, client: Client) -> None:
        try:
            data = client.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close(client.fd)
            return
        start = max(0, len(client.request) - 3)
        client.request += data
        if client.request.find(b"\r\n\r\n", start) >= 0 or client.request.find(b"\n\n", start) >= 0:
            self.answer(client, respond(client.request, self.render))
        elif len(client.request) > MAX_REQUEST:
            client.unread = True
            self.answer(client, _response(b"431 Request Header Fields Too Large", b"request too large\n"))

    def answer(self, client: Client, response: bytes) -> None:
        client.state = BODY
        client.request = b""
        client.response = memoryview(response)
        client.deadline = time.monotonic() + WRITE_SECONDS
        self.bodies.append(client)
        self.writable(client.fd)
        if client.state == BODY:
            self.poller.modify(client.fd, select.EPOLLOUT)

    def writable(self, fd: int) -> None:
        client = self.clients.get(fd)
        if client is None or client.response is None:
            return
        try:
            sent = client.sock.send(client.response)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close(fd)
            return
        client.response = client.response[sent:]
        if not client.response:
            if client.unread:
                _discard(client.sock)
            self.close(fd)

    def expire(self, now: float) -> None:
        for queue, state in ((self.heads, HEAD), (self.bodies, BODY)):
            while queue and queue[0].deadline <= now:
                client = queue.popleft()
                if client.state == state:  # not one that has moved on (or is gone) since
                    self.close(client.fd)

    def close(self, fd: int) -> None:
        client = self.clients.pop(fd, None)
        if client is not None:
            client.state = CLOSED
            client.sock.close()  # which takes it out of the epoll set too
            if not self.listening:
                self.listening = True
                self.poller.modify(self.sock.fileno(), select.EPOLLIN)


def _discard(sock: socket.socket) -> None:
    """Read away (a bounded amount of) what the client sent beyond the head we refused.

    Closing a socket with unread input makes the kernel answer with a reset,
    which can reach the client before the response and destroy it there.
    """
    try:
        sock.shutdown(socket.SHUT_WR)
        for _ in range(16):
            if not sock.recv(65536):
                return
    except OSError:
        return


def client_limit() -> int:
    """How many clients to hold at once: the descriptor limit less a reserve for everything else."""
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return MAX_CLIENTS
    return max(MIN_CLIENTS, min(MAX_CLIENTS, soft - RESERVED_FDS))


def become_user(opts: Options) -> None:
    """--user: give up our ids for good (the sources are open, the address bound); exit 111 if that fails."""
    if opts.user is None:
        return
    name, uid, gid = opts.user
    try:
        drop_privileges(uid, gid)
    except OSError as e:
        fatal(PROG, f"unable to become {name}", e)


def run(opts: Options) -> int:
    """Serve until told to stop (or the parent is gone); the exit code."""
    collector = SharedMemoryCollector(opts.scoreboards, opts.services, multilogs=opts.multilogs)
    if opts.user is not None:
        collector.pin()  # while we may still open them
    if opts.once:
        become_user(opts)
        data = collector.render()
        if opts.textfile is None:
            view = memoryview(data)
            while view:
                view = view[os.write(1, view):]
            return 0
        try:
            write_textfile(opts.textfile, data)
        except OSError as e:
            fatal(PROG, f"unable to write {opts.textfile}", e)
        return 0

    watch = ParentWatch(opts.parent_pid) if opts.parent_pid is not None else None
    if watch is not None and watch.gone():
        return 0
    sig_r, sig_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    received: list[int] = []

    def note(signum: int, frame: object) -> None:
        received.append(signum)

    signal.set_wakeup_fd(sig_w, warn_on_full_buffer=False)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, note)

    http = None
    if opts.listen_fd is not None:
        inherited = inherited_listener(opts.listen_fd)
        host = inherited.getsockname()[0]
        http = HttpServer(inherited, collector.render)
    elif opts.listen is not None:
        host, port = opts.listen
        try:
            http = HttpServer(bind_listener(host, port), collector.render)
        except OSError as e:
            fatal(PROG, f"unable to bind {host} port {port}", e)
    if http is not None:
        shown = f"[{host}]" if ":" in host else host
        write_line(f"{PROG}: listening on http://{shown}:{http.port}/metrics")
    become_user(opts)

    textfile = TextfileWriter(opts.textfile, collector.render) if opts.textfile is not None else None
    next_write = time.monotonic()
    while True:
        now = time.monotonic()
        if textfile is not None and now >= next_write:
            textfile.write()
            next_write = now + opts.interval
        readers, writers, timeouts = [sig_r], [], []
        if textfile is not None:
            timeouts.append(max(0.0, next_write - now))
        if watch is not None:
            if watch.fd >= 0:
                readers.append(watch.fd)
            else:
                wait = watch.poll_timeout()
                assert wait is not None  # for mypy: without a pidfd there is always a poll interval
                timeouts.append(wait)
        if http is not None:
            readers += http.readers()
            writers = http.writers()
            t = http.timeout(now)
            if t is not None:
                timeouts.append(t)
        ready_r, ready_w, _ = select.select(readers, writers, [], min(timeouts) if timeouts else None)
        if http is not None:
            for fd in ready_r:
                if fd != sig_r and (watch is None or fd != watch.fd):
                    http.readable(fd)
            for fd in ready_w:
                http.writable(fd)
            http.expire(time.monotonic())
        if sig_r in ready_r:
            try:
                while os.read(sig_r, 256):
                    pass
            except BlockingIOError:
                pass
        if watch is not None and watch.gone():
            break
        if any(s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP) for s in received):
            break
        if signal.SIGUSR1 in received:
            next_write = 0.0
        received.clear()
    if textfile is not None:
        textfile.write()
    return 0


def inherited_listener(fd: int) -> socket.socket:
    """The listening TCP socket at descriptor FD (``--listen-fd``); exits 111 with a fatal line if it is not one."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as e:
        fatal(PROG, f"unable to use descriptor {fd}", e)
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        listening = 0
    if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6) or not listening:
        sock.detach()
        fatal(PROG, f"descriptor {fd} is not a listening TCP socket")
    sock.set_inheritable(False)
    return sock


def main(argv: list[str] | None = None) -> None:
    try:
        opts = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as e:
        usage_error(USAGE, e.text)  # named PROG, not argv[0]: no djb tool prints these
    if not opts.once and argv is None:
        from prefork.lean import go_lean

        go_lean("prefork-exporter", "prefork.metrics.exporter")
    try:
        code = run(opts)
    except KeyboardInterrupt:
        code = 0
    raise SystemExit(code)


if __name__ == "__main__":
    main()
