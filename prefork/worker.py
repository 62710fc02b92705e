"""A tcpserver worker: accepts connections and starts the program for each.

One worker multiplexes all its connections with epoll: the listener (only
while it holds a token of the ``-c`` limit), the SIGCHLD wake-up, the
capacity wake-up pipe and the completions of lookups.  DNS and ident answers
can take seconds, so they run in a small thread pool (created only when the
options ask for lookups) and never stall accepting and serving others; the
fast path (``-H -R -l NAME``) has no threads at all.

Per connection, in 0.88's order: IP options and Nagle, banner,
local address, lookups, rules, the ``ok``/``deny`` line, then the program with
the socket as fds 0 and 1.  Log lines are written whole, one write() each.

``svc -p`` stops the master only (supervise knows no other pid), yet 0.88,
one process, then serves nobody.  So after an accept a worker looks at its
master's state in /proc (at most once per ``MASTER_CHECK_NS``: the hot path
costs one clock read) and, while it is stopped, holds that connection unserved
and uncounted, accepting nothing more: to the client a backlog wait.  This
needs no heartbeat from the master (no periodic wake-up of an idle server) and
nothing in the public scoreboard layout.

SIGQUIT from the master (TTOU, QUIT: master.py) makes a worker leave: its
handler only sets a flag; the loop then stops accepting, gives back its
reserved token, finishes the connections whose lookups are in flight and
exits 0.  Its running programs are handed over to the master, which counts
and reaps them as it does a dead worker's, so nothing accepted is dropped.
"""

from __future__ import annotations

import collections
import errno
import mmap
import os
import select
import signal
import socket
import time
from _socket import socket as raw_socket  # the C type: no Python-level __init__/detach per connection

from prefork import proc
from prefork import scoreboard as sb
from prefork.addr import present
from prefork.capacity import Capacity
from prefork.clients import (
    LIMIT_NAMES,
    ClientTable,
    LimitError,
    Region,
    address_key,
    load_over,
    network_bytes,
    parse_limits,
)
from prefork.djb import errstr
from prefork.environ import c_string, set_variable
from prefork.logline import decision_line, decision_tail
from prefork.proc import TICK_NS, start_ticks
from prefork.serverconfig import TCP_VARS, ServerConfig
from prefork.spawn import Spawner
from prefork.wakeup import drain, noop_handler

TYPE_CHECKING = False  # the lean server process does not import typing (see lean.py)
if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor
    from typing import NoReturn

    from prefork.proxyproto import Header
    from prefork.rules import RulesFile

EPOLLIN = select.EPOLLIN
EPOLLEXCLUSIVE = getattr(select, "EPOLLEXCLUSIVE", 0)
STATUS_DENY = 100 << 8
STATUS_DROP = 111 << 8
PID_MAX_LIMIT = 1 << 22  # the kernel never hands out a pid at or above this (include/linux/threads.h)
STOPPED = ("T", "t")  # /proc/PID/stat states of a stopped (SIGSTOP: svc -p) or traced process
MASTER_CHECK_NS = 100_000_000  # how often, at most, an accept looks whether the master is stopped
HOLD_POLL = 0.05  # while it is, how often a held connection looks again


class Conn:
    """One accepted connection until its program is reaped (or it is denied or dropped)."""

    __slots__ = ("fd", "remoteip", "remoteport", "localip", "localport", "started", "localhost", "remotehost",
                 "remoteinfo", "sockip", "entry", "scope")

    def __init__(self, fd: int, remoteip: str, remoteport: int, started: int) -> None:
        self.fd = fd
        self.remoteip = remoteip
        self.remoteport = remoteport
        self.started = started
        self.localip = ""
        self.localport = 0
        self.localhost: bytes | None = None
        self.remotehost: bytes | None = None
        self.remoteinfo: bytes | None = None
        self.sockip = ""  # --proxy-protocol: the socket's own local address, when localip is the header's
        self.entry = -1  # its entry in the client table (clients.py), -1 until admitted
        self.scope = 0  # an IPv6 client's scope id (link-local): TCP6INTERFACE


class Worker:
    """State of one worker process; ``run()`` never returns."""

    def __init__(
        self,
        cfg: ServerConfig,
        lsock: socket.socket,
        board: sb.ScoreboardFile,
        index: int,
        wake_r: int,
        wake_w: int,
        base_env: dict[bytes, bytes],
        spawner: Spawner,
        rules: RulesFile | None,
        spawnlog: SpawnLog | None,
        clients: ClientTable,
    ) -> None:
        self.cfg = cfg
        self.lsock = lsock
        self.lfd = lsock.fileno()
        self.board = board
        self.index = index
        self.slot = board.slot_offset(index)
        self.cap = Capacity(board, cfg.limit, wake_r, wake_w, index)
        self.base_env = base_env
        self.spawner = spawner
        self.rules = rules
        self.children: dict[int, Conn] = {}
        self.spawnlog = spawnlog if cfg.verbosity >= 2 else None  # the master writes pid/ok lines (-v)
        self.clients = clients
        self.region = Region(self.clients, index)
        self.limited = [board.get64(self.slot + sb.OFF_LIMITED + 8 * k) for k in range(len(sb.LIMIT_KINDS))]
        self.live_pos: dict[int, int] = {}  # pid -> its place in this slot's list of live programs
        self.reserved = False
        self.listening = False
        self.waiting_registered = False
        self.verbose = cfg.verbosity >= 2
        self.warn = cfg.verbosity >= 1
        self.limit_b = b"%d" % cfg.limit
        self.pid = os.getpid()
        self.master_pid = os.getppid()  # forked by the master (master.py checks that before building us)
        self.master_check_at = 0  # monotonic ns of the next look at the master's state (svc -p)
        self.ident_seq = 0
        self.any_address = cfg.bound_ip in ("0.0.0.0", "::")
        self.lfamily = lsock.family
        # addresses shown other than as accept() gives them: an IPv6 listener's (mapped IPv4 clients shown as
        # IPv4) and, with -6, an IPv4 listener's (shown as ::ffff:); docs/CONTRACTS.md, IPv6
        self.force6 = cfg.family == 6
        self.rewrite = self.lfamily == socket.AF_INET6 or self.force6
        self.accepted = board.get64(self.slot + sb.OFF_ACCEPTED)
        # the hot path stores into the scoreboard's words directly (scoreboard.py: u32/u64)
        self.u64 = board.u64
        self.i_accepted = (self.slot + sb.OFF_ACCEPTED) >> 3
        self.i_last_accept = (self.slot + sb.OFF_LAST_ACCEPT) >> 3
        # no limit variable in the server's own environment: only a rules line can set one
        self.base_limits = any(name in base_env for name in LIMIT_NAMES)
        self.denied = board.get64(self.slot + sb.OFF_DENIED)
        self.dropped = board.get64(self.slot + sb.OFF_DROPPED)
        self.exits = [
            board.get64(self.slot + sb.OFF_EXIT_ZERO),
            board.get64(self.slot + sb.OFF_EXIT_NONZERO),
            board.get64(self.slot + sb.OFF_EXIT_SIGNAL),
        ]
        self.duration_sum = board.get64(self.slot + sb.OFF_DURATION_SUM)
        self.buckets = [board.get64(self.slot + sb.OFF_BUCKETS + 8 * i) for i in range(len(sb.DURATION_BUCKETS))]
        self.pool: ThreadPoolExecutor | None = None
        self.done: collections.deque[Conn] = collections.deque()
        self.lookup_r = self.lookup_w = -1
        self.localhost_fixed = cfg.localname
        self.leaving = False  # SIGQUIT: finish what is started, then exit
        self.headers: dict[int, Conn] = {}  # --proxy-protocol: connections waiting for their header, by fd
        self.ready_fd = -1  # a worker exec'd on HUP writes b"r" here once it serves (reload.py)

    # -- process set-up ---------------------------------------------------------------
    def run(self) -> NoReturn:
        try:
            self._setup()
            if self.ready_fd >= 0:
                try:
                    os.write(self.ready_fd, b"r")
                except OSError:
                    pass  # the master gave up on this reload (QUIT, a deadline): we serve all the same
                os.close(self.ready_fd)
            self._loop()
        except BaseException as e:  # never return into the master's code after fork
            if not isinstance(e, SystemExit) and self.warn:
                os.write(2, b"tcpserver: warning: worker exiting: %s\n" % repr(e).encode("utf-8", "replace"))
            os._exit(111)
        os._exit(0)

    def _setup(self) -> None:
        self.sig_r, sig_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(sig_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, noop_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGQUIT, self._sigquit)
        for sig in (signal.SIGTTIN, signal.SIGTTOU, signal.SIGHUP, signal.SIGUSR2):  # the master's, not ours
            if signal.getsignal(sig) is not signal.SIG_IGN:  # ignored at start: stays so, as with 0.88
                signal.signal(sig, signal.SIG_DFL)
        self.lsock.setblocking(False)
        self.ep = select.epoll()
        self.ep.register(self.sig_r, EPOLLIN)
        if self.cfg.needs_lookups:
            from concurrent.futures import ThreadPoolExecutor

            self.lookup_r, self.lookup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            self.ep.register(self.lookup_r, EPOLLIN)
            self.pool = ThreadPoolExecutor(max_workers=max(4, min(self.cfg.limit, 256)))
        self.board.put32(self.slot + sb.OFF_PID, self.pid)
        self.board.put64(self.slot + sb.OFF_STARTED, time.time_ns())
        self.board.put32(self.slot + sb.OFF_STATE, sb.STATE_READY)
        self.ensure_reservation()

    def _sigquit(self, signum: int, frame: object) -> None:
        """The master tells us to leave: only a flag, the loop acts on it."""
        self.leaving = True

    # -- the event loop -----------------------------------------------------------------
    def _loop(self) -> None:
        poll = self.ep.poll
        lfd, sig_r, wake_r, lookup_r = self.lfd, self.sig_r, self.cap.wake_r, self.lookup_r
        headers = self.headers
        while True:
            # While waiting for capacity, re-check once a second as a safety net.
            timeout = 1.0 if self.waiting_registered else -1
            if headers:  # --proxy-protocol: wake for the first header deadline
                first = max(0.0, min(c.started for c in headers.values()) / 1e9 + self.cfg.ident_timeout
                            - time.monotonic())
                timeout = first if timeout < 0 else min(timeout, first)
            exited = False
            for fd, ev in poll(timeout):
                if fd in headers:
                    self.header_ready(fd, ev)
                elif fd == lfd:
                    self.accept_ready()
                elif fd == sig_r:
                    exited = True
                elif fd == wake_r:
                    if self.cap.take_wakeup():
                        self.ensure_reservation()
                elif fd == lookup_r:
                    drain(lookup_r)
                    while self.done:
                        self.decide(self.done.popleft())
            if exited:  # after the accept: an exit's token can then become the next reservation (reap)
                drain(sig_r)
                self.reap()
            if headers:
                self.headers_expired()
            if self.leaving:
                self.leave()
                return
            if not self.reserved or self.waiting_registered:
                self.ensure_reservation()

    def leave(self) -> None:
        """Stop accepting, give back the reserved token, start the programs of connections in lookups.

        The programs keep running when we exit: the master is their subreaper and counts them as orphans.
        """
        if self.listening:
            self.ep.unregister(self.lfd)
            self.listening = False
        self.lsock.close()
        if self.reserved:
            self.reserved = False
            self.cap.release()
        self.cap.set_waiting(False)
        for fd in list(self.headers):  # what we started: each header is waited for, within its -t
            self.ep.unregister(fd)
            self.proxied(self.headers.pop(fd), blocking=True)
        if self.pool is not None:
            self.pool.shutdown(wait=True)  # lookups are bounded (-t, --dns-timeout)
            while self.done:
                self.decide(self.done.popleft())

    def ensure_reservation(self) -> None:
        """Hold one token for the next accept, or wait on the wake-up pipe when at the limit."""
        if self.reserved:  # (a worker with a token is listening: see token_back)
            return
        cap = self.cap
        reserved = cap.try_reserve()
        if not reserved:
            # Say we wait before the last try, so a token freed in between wakes us.
            cap.set_waiting(True)
            reserved = cap.try_reserve()
        if reserved:
            cap.set_waiting(False)
            self.reserved = True
            if self.waiting_registered:
                self.ep.unregister(cap.wake_r)
                self.waiting_registered = False
            if not self.listening:
                self.ep.register(self.lfd, EPOLLIN | EPOLLEXCLUSIVE)
                self.listening = True
                self.board.put32(self.slot + sb.OFF_STATE, sb.STATE_READY)
        else:
            if self.listening:
                self.ep.unregister(self.lfd)
                self.listening = False
            if not self.waiting_registered:
                self.ep.register(cap.wake_r, EPOLLIN)
                self.waiting_registered = True
            self.board.put32(self.slot + sb.OFF_STATE, sb.STATE_WAITING)

    def accept_ready(self) -> None:
        """One accept per readiness event: epoll is level-triggered, so a backlog wakes us again
        at once, and no failing accept() is spent to find the queue empty."""
        if not self.reserved:
            return
        try:
            # socket's own raw accept, (fd, addr): no socket object per connection
            fd, addr = self.lsock._accept()  # type: ignore[attr-defined]  # private: not in typeshed
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            # ECONNABORTED and friends: the client is gone; EMFILE: try again later.
            if self.warn and e.errno not in (103, 104):
                os.write(2, b"tcpserver: warning: unable to accept: %s\n" % errstr(e).encode())
            return
        now = time.monotonic_ns()
        if now >= self.master_check_at:  # svc -p: at most one look at the master per MASTER_CHECK_NS
            self.master_check_at = now + MASTER_CHECK_NS
            if proc.state(self.master_pid) in STOPPED:
                self.hold_while_master_stopped()
                now = time.monotonic_ns()
        self.reserved = False  # the loop reserves again once this iteration's exits are reaped
        cap = self.cap
        if self.verbose:
            cap.lock()
            cap.started()
            os.write(2, b"tcpserver: status: %d/%s\n" % (cap.in_use(), self.limit_b))
            cap.unlock()
        else:
            cap.started()
        self.accepted += 1
        u64 = self.u64
        u64[self.i_accepted] = self.accepted
        u64[self.i_last_accept] = time.time_ns()
        conn = Conn(fd, addr[0], addr[1], now)
        if len(addr) > 3:  # IPv6: (host, port, flowinfo, scope id)
            conn.scope = addr[3]
        self.handle(conn)

    def hold_while_master_stopped(self) -> None:
        """The master is stopped (``svc -p``): keep the connection just accepted unserved until it continues.

        0.88 is one process, so stopping it leaves clients in the backlog; here the workers must notice by
        themselves, since supervise signals the master's pid only.  The client sees what a backlog wait
        shows (connected, nothing said), and nothing is counted yet.  This worker accepts nothing more
        meanwhile; its programs run on, their ends are reaped when it continues.
        """
        master = self.master_pid
        while proc.state(master) in STOPPED:
            time.sleep(HOLD_POLL)
        if os.getppid() != master:  # gone: the parent-death signal (master.py) ends us; never outlive it
            os._exit(0)
        self.master_check_at = 0  # look again at the next accept: it may be stopped again soon

    # -- one connection ---------------------------------------------------------------
    def handle(self, conn: Conn) -> None:
        """A new connection.  With ``--proxy-protocol`` its header comes first: read now if it is all there,
        else waited for in this worker's event loop (``header_ready``), so a client that never sends it holds
        a -c token for up to -t, never the worker."""
        if self.cfg.proxy_protocol:
            from prefork import proxyproto

            s = socket.socket(self.lfamily, socket.SOCK_STREAM, 0, conn.fd)
            try:
                waiting = not proxyproto.arrived(s)  # not all there yet (an accept often beats the first segment)
            finally:
                s.detach()
            if waiting:
                self.headers[conn.fd] = conn
                # Edge-triggered: a part of a header wakes us once, not at every poll; RDHUP: the end.
                self.ep.register(conn.fd, EPOLLIN | select.EPOLLRDHUP | select.EPOLLET)
            else:
                self.proxied(conn, blocking=False)
            return
        self.admitted(conn, None)

    def admitted(self, conn: Conn, header: Header | None) -> None:
        """The banner and local address, then the lookups in the pool or the rules at once."""
        why = self.prepare(conn, header)
        if why is not None:
            self.drop(conn, why)
        elif self.pool is not None:
            self.pool.submit(self.lookups, conn)
        else:
            conn.localhost = self.localhost_fixed
            self.decide(conn)

    def prepare(self, conn: Conn, header: Header | None) -> bytes | None:
        """Socket options, the banner, the local address, then a PROXY header's addresses; the reason to drop
        the connection, or None."""
        cfg = self.cfg
        s = raw_socket(self.lfamily, socket.SOCK_STREAM, 0, conn.fd)
        try:
            if not cfg.keep_ip_options:
                try:
                    s.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, b"")
                except OSError:
                    pass
            if cfg.nodelay:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if cfg.banner:
                try:
                    s.sendall(cfg.banner)
                except OSError as e:
                    return b"unable to print banner: " + errstr(e).encode()
            if self.any_address:
                try:
                    conn.localip = s.getsockname()[0]
                except OSError as e:
                    return b"unable to get local address: " + errstr(e).encode()
            else:  # bound to one address: every connection's local address is that one
                conn.localip = cfg.bound_ip
        finally:
            s.detach()
        conn.localport = cfg.port
        if self.rewrite:
            conn.remoteip = present(conn.remoteip, self.force6)
            conn.localip = present(conn.localip, self.force6)
        if header is not None and not header.local:  # everything from here on (lookups, rules, logs, env) sees the real client
            conn.sockip = conn.localip
            conn.remoteip, conn.remoteport = present(header.src, self.force6), header.sport
            conn.localip, conn.localport = present(header.dst, self.force6), header.dport
            conn.scope = 0
        return None

    def header_ready(self, fd: int, events: int) -> None:
        """Bytes (or the end) came on a connection waiting for its PROXY header: read it once it is all there,
        or the client has stopped sending."""
        from prefork import proxyproto

        conn = self.headers[fd]
        if not events & (select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR):
            s = socket.socket(self.lfamily, socket.SOCK_STREAM, 0, fd)
            try:
                if not proxyproto.arrived(s):
                    return  # part of it: wait for the rest
            finally:
                s.detach()
        del self.headers[fd]
        self.ep.unregister(fd)
        self.proxied(conn, blocking=False)

    def headers_expired(self) -> None:
        """Drop the connections whose header did not come within -t (docs/CONTRACTS.md, PROXY protocol)."""
        now = time.monotonic_ns()
        limit = int(self.cfg.ident_timeout * 1e9)
        for fd, conn in list(self.headers.items()):
            if now - conn.started >= limit:
                del self.headers[fd]
                self.ep.unregister(fd)
                self.drop(conn, b"timed out reading PROXY header")

    def proxied(self, conn: Conn, blocking: bool) -> None:
        """Read CONN's PROXY header (all there, unless BLOCKING: then waited for until -t from the accept),
        then go on as any connection; a missing, bad or late header drops it."""
        from prefork import proxyproto

        s = socket.socket(self.lfamily, socket.SOCK_STREAM, 0, conn.fd)
        try:
            deadline = conn.started / 1e9 + self.cfg.ident_timeout if blocking else time.monotonic() + 1.0
            header = proxyproto.read_header(s, deadline)
        except proxyproto.ProxyError as e:
            self.drop(conn, str(e).encode())
            return
        finally:
            s.detach()
        self.admitted(conn, header)

    def lookups(self, conn: Conn) -> None:
        """DNS and ident for one connection (runs in a pool thread).

        Each answer comes from outside; a look-up that fails in any way is "no
        answer" for that variable only, never a lost connection or a dead worker.
        """
        from prefork import addr, ident

        cfg = self.cfg
        try:
            if cfg.localname is not None:
                conn.localhost = cfg.localname
            else:
                name = addr.reverse_name(conn.localip, cfg.dns_timeout)
                conn.localhost = os.fsencode(name) if name else None
        except Exception:
            conn.localhost = None
        try:
            if cfg.remote_host_lookup:
                name = addr.reverse_name(conn.remoteip, cfg.dns_timeout)
                if name and cfg.paranoid and not addr.forward_confirms(name, conn.remoteip, cfg.dns_timeout):
                    name = None
                conn.remotehost = os.fsencode(name) if name else None
        except Exception:
            conn.remotehost = None
        try:
            if cfg.ident:
                conn.remoteinfo = ident.ident_query_bytes(  # from our own address, even behind a proxy
                    conn.sockip or conn.localip, conn.localport, conn.remoteip, conn.remoteport, float(cfg.ident_timeout),
                    ident_port=cfg.ident_port, scope=conn.scope,
                )
        except Exception:
            conn.remoteinfo = None
        self.done.append(conn)
        try:
            os.write(self.lookup_w, b"x")
        except BlockingIOError:
            pass

    def decide(self, conn: Conn) -> None:
        """Rules, the ok/deny line, then the program."""
        cfg = self.cfg
        env_rules: list[tuple[bytes, bytes]] | tuple[()] = ()
        if self.rules is not None:
            try:
                db = self.rules.current()
                decision = db.lookup(conn.remoteip, conn.remotehost, conn.remoteinfo) if db is not None else None
            except Exception as e:  # OSError; anything else a hostile file might cause counts as a bad file
                err = e if isinstance(e, OSError) else errno.EPROTO
                assert cfg.rules_path is not None  # for mypy: self.rules is the file at rules_path
                self.drop(conn, b"unable to read %s: %s" % (os.fsencode(cfg.rules_path), errstr(err).encode()))
                return
            if decision is not None:
                if decision.deny:
                    self.deny(conn)
                    return
                env_rules = decision.env
        env = connection_env(self.base_env, conn, env_rules)
        if not self.admit(conn, env, bool(env_rules) or self.base_limits):
            return
        log = self.spawnlog
        if log is not None:
            try:
                inode = os.fstat(conn.fd).st_ino
            except OSError:
                inode = 0
            log.begin(self.index, conn.remoteip.encode(), decision_tail(
                conn.localhost, conn.localip, conn.localport, conn.remotehost, conn.remoteip, conn.remoteinfo,
                conn.remoteport,
            ), inode)
        try:
            pid = self.spawner.spawn(conn.fd, env)
        except (OSError, ValueError) as e:  # ValueError: cannot happen with connection_env's output
            if log is not None:
                log.failed(self.index)
            self.region.give_back(conn.entry)
            err = e if isinstance(e, OSError) else errno.EINVAL
            self.drop(conn, b"unable to run %s: %s" % (self.spawner.path, errstr(err).encode()), b"ok")
            return
        if conn.entry >= 0:
            self.clients.set_pid(conn.entry, pid)
        os.close(conn.fd)
        conn.fd = -1
        self.children[pid] = conn
        if log is not None:
            log.spawned(self.index, pid, self.live_pos)  # writes the pid and ok lines (see SpawnLog)
        elif self.verbose:
            os.write(2, b"tcpserver: pid %d from %s\n" % (pid, conn.remoteip.encode()) + self.ok_line(b"ok", pid, conn))
        # The program is queued on this CPU (posix_spawn's vfork ran it here until its exec): let it serve its
        # client before this worker accepts and spawns the next one.  Under load this cuts tail latency by a
        # third (loadtest/REPORT.md); with nothing else runnable it costs one system call.
        os.sched_yield()

    def admit(self, conn: Conn, env: dict[bytes, bytes], may_limit: bool) -> bool:
        """Give CONN its entry in the client table, unless a per-client limit refuses it (False: it is
        finished).  MAY_LIMIT: ENV can hold a limit variable (the server's own or a rules line's).
        docs/reference/tcpserver.md, "Per-client limits"."""
        try:
            limits = parse_limits(env) if may_limit else None
        except LimitError as e:
            self.drop(conn, str(e).encode())
            return False
        try:
            key = address_key(conn.remoteip)
        except OSError:  # the kernel's or a checked header's address: cannot happen
            key = bytes(16)
        try:
            inode = os.fstat(conn.fd).st_ino
        except OSError:
            inode = 0
        table = self.clients
        entry = self.region.take()
        if limits is None:
            if entry >= 0:
                table.put(entry, key, inode)
            conn.entry = entry
            return True
        maxip, maxc, maxload = limits
        if maxload >= 0:
            load = load_over(maxload)
            if load is not None:
                self.region.give_back(entry)
                self.refuse(conn, env, 2, b"LOAD:%d" % load)
                return False
        cap = self.cap
        refused = -1
        cap.lock()  # counting and taking the entry are one step for every worker
        try:
            if maxip == 0:
                refused = 0
            elif maxc == 0:
                refused = 1
            else:
                n_ip, n_net = table.count(key, maxip if maxip > 0 else 1 << 62,
                                          network_bytes(key) if maxc > 0 else 16)
                if 0 < maxip <= n_ip:
                    refused = 0
                elif 0 < maxc <= n_net:
                    refused = 1
                elif entry >= 0:
                    table.put(entry, key, inode)
        finally:
            cap.unlock()
        if refused >= 0:
            self.region.give_back(entry)
            self.refuse(conn, env, refused, b"%s:%d" % (sb.LIMIT_KINDS[refused].encode(), (maxip, maxc)[refused]))
            return False
        conn.entry = entry
        return True

    def refuse(self, conn: Conn, env: dict[bytes, bytes], kind: int, marker: bytes) -> None:
        """A connection over a per-client limit: counted, DIEMSG sent (CRLF added), a deny line with the
        limit's marker (-v), no program."""
        self.limited[kind] += 1
        self.board.put64(self.slot + sb.OFF_LIMITED + 8 * kind, self.limited[kind])
        message = env.get(b"DIEMSG")
        if message is not None:
            s = socket.socket(fileno=conn.fd)
            try:  # a fresh connection's send buffer is empty; never wait on a client that does not read
                s.send(message + b"\r\n", socket.MSG_DONTWAIT)
            except OSError:
                pass
            finally:
                s.detach()
        self.finish_without_program(conn, STATUS_DENY, b"deny", None, marker)

    def ok_line(self, word: bytes, ident: int, conn: Conn) -> bytes:
        return decision_line(
            b"tcpserver", word, ident, conn.localhost, conn.localip, conn.localport,
            conn.remotehost, conn.remoteip, conn.remoteinfo, conn.remoteport,
        )

    def deny(self, conn: Conn) -> None:
        self.denied += 1
        self.board.put64(self.slot + sb.OFF_DENIED, self.denied)
        self.finish_without_program(conn, STATUS_DENY, b"deny", None)

    def drop(self, conn: Conn, why: bytes, word: bytes | None = None) -> None:
        """Drop a connection with 0.88's warning; ``word`` b"ok" when it got as far as the ok line."""
        self.dropped += 1
        self.board.put64(self.slot + sb.OFF_DROPPED, self.dropped)
        self.finish_without_program(conn, STATUS_DROP, word, b"tcpserver: warning: dropping connection, %s\n" % why)

    def finish_without_program(
        self, conn: Conn, status: int, word: bytes | None, warning: bytes | None, marker: bytes = b""
    ) -> None:
        """A connection that runs no program still logs pid/…/end/status, as 0.88's child that exited.

        Its id is not a pid (see next_ident); the lines are written in one
        write() before the token is released, and before the connection is
        closed: 0.88's child writes its warning and then exits, so a client
        that has seen its connection end finds the warning already logged.
        """
        if self.verbose:
            ident = self.next_ident()
            lines = [b"tcpserver: pid %d from %s\n" % (ident, conn.remoteip.encode())]
            if word is not None:
                line = self.ok_line(word, ident, conn)
                lines.append(line[:-1] + b" " + marker + b"\n" if marker else line)
            if warning is not None:
                lines.append(warning)
            self.cap.lock()
            lines.append(
                b"tcpserver: end %d status %d\ntcpserver: status: %d/%s\n"
                % (ident, status, self.cap.in_use() - 1, self.limit_b)
            )
            os.write(2, b"".join(lines))
            self._close(conn)
            self.token_back()
            self.cap.unlock()
            return
        if warning is not None and self.warn:
            os.write(2, warning)
        self._close(conn)
        self.token_back()

    @staticmethod
    def _close(conn: Conn) -> None:
        if conn.fd >= 0:
            os.close(conn.fd)
            conn.fd = -1

    def next_ident(self) -> int:
        """An id for a connection that starts no program: above any pid the kernel can hand out
        (PID_MAX_LIMIT), one range per worker slot, so ids are unique among connections in flight."""
        self.ident_seq = (self.ident_seq + 1) & 0xFFFFF
        return PID_MAX_LIMIT + (self.index << 20) + self.ident_seq

    # -- reaping --------------------------------------------------------------------------
    def reap(self) -> None:
        """Count and reap the programs that exited: each exit is peeked at (WNOWAIT) and counted
        before its zombie is reaped, so a SIGKILL at any instant neither loses nor doubles it
        (the counting record in ``scoreboard.py``)."""
        if self.spawnlog is not None:
            self.reap_logged(self.spawnlog)
            return
        children = self.children
        while children:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None or info.si_pid == 0:
                return
            pid = info.si_pid
            conn = children.pop(pid, None)
            if conn is None:
                os.waitpid(pid, 0)  # not a program of ours
                continue
            self.region.give_back(conn.entry)
            self.record_exit(pid, wait_status(info), time.monotonic_ns() - conn.started)
            os.waitpid(pid, 0)
            self.board.counted(self.slot)
            self.token_back()

    def reap_logged(self, log: SpawnLog) -> None:
        """``reap`` with ``-v``: each program's ``end`` line is written before it is reaped.

        A program reaped first would be lost with its ``end`` line if this worker
        were killed before writing it (the master never sees a reaped child).  So
        the exit is only peeked at (WNOWAIT); the line is written and the pid taken
        off the live list (see SpawnLog) before the zombie is reaped.  Killed
        before the line, the master finds the zombie on the list and writes it;
        killed after, the zombie is on no list and the master writes nothing.  The
        end line goes out before the token is released, so no log shows more than
        -c connections in flight (0.88 reaps and accepts in one process).
        """
        children = self.children
        while children:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None or info.si_pid == 0:
                return
            pid = info.si_pid
            conn = children.pop(pid, None)
            if conn is None:
                os.waitpid(pid, 0)  # not a program of ours
                continue
            status = wait_status(info)
            self.cap.lock()
            os.write(
                2,
                b"tcpserver: end %d status %d\ntcpserver: status: %d/%s\n"
                % (pid, status, self.cap.in_use() - 1, self.limit_b),
            )
            log.reaped(self.index, pid, self.live_pos)
            self.region.give_back(conn.entry)
            self.record_exit(pid, status, time.monotonic_ns() - conn.started)
            os.waitpid(pid, 0)
            self.board.counted(self.slot)
            self.token_back()
            self.cap.unlock()

    def token_back(self) -> None:
        """A program was reaped: its token becomes the reservation for the next accept if this worker has
        none (no lock needed, see Capacity.recycled), else it goes back to all workers."""
        if self.reserved or self.leaving or not self.listening:
            self.cap.ended()
        else:
            self.cap.recycled()
            self.reserved = True

    def record_exit(self, pid: int, status: int, duration_ns: int) -> None:
        """Count PID's exit in this slot; the caller reaps it next, then voids the record."""
        cls = 2 if os.WIFSIGNALED(status) else (0 if status == 0 else 1)
        i = sb.bucket_index(duration_ns)
        self.exits[cls] += 1
        self.duration_sum += duration_ns
        self.buckets[i] += 1
        self.board.count_exit(self.slot, pid, cls, i, self.exits[cls], self.duration_sum, self.buckets[i])


def wait_status(info: os.waitid_result) -> int:
    """The wait status (as waitpid gives it) of a child that waitid reported."""
    if info.si_code == os.CLD_EXITED:
        return (info.si_status & 0xFF) << 8
    if info.si_code == os.CLD_DUMPED:
        return (info.si_status & 0x7F) | 0x80
    return info.si_status & 0x7F  # CLD_KILLED


class SpawnLog:
    """How ``-v``'s ``pid``/``ok`` lines of every program get written before its ``end``, even by a killed worker.

    A worker knows a program's pid only when ``posix_spawn`` returns, after the
    program has started, and it may be SIGKILLed at any moment, before, while
    or after it writes the lines.  The master, which then reaps the program and
    logs its ``end``, must know whether those lines were written.  So each
    worker keeps a record the master can read after its death:

    1. the worker puts the connection's facts in its record and sets SPAWNING;
    2. ``posix_spawn`` returns the pid: the worker stores it, sets SPAWNED and
       adds the pid to its list of live programs;
    3. the worker writes the lines itself and sets LOGGED.

    The master reads a record only once its worker is dead: SPAWNED means the
    lines may not be written (the master writes them), LOGGED means written,
    and every pid in the list of live programs has been through LOGGED (or is
    the SPAWNED one).  A worker dead in SPAWNING may have started a program
    whose pid it never learnt: the master picks it out among its new children
    as the one that is in no list, by the connection's socket (the program's
    fd 0) when it can.  The master writes an ``end`` line only for a program
    whose ``pid``/``ok`` lines were written.  So no ``end`` line ever lacks its
    ``pid``/``ok`` lines; a worker killed in the instant between its write and
    the LOGGED mark leaves them written twice, never missing.  Nothing crosses
    to the master per connection: a live worker logs as it always did.  The
    ``end`` side mirrors it (``Worker.reap_logged``): the worker writes the end
    line, then takes the pid off its list, then reaps the zombie.

    The records live in memory shared by the master and its workers only
    (anonymous, inherited at fork): the connection facts are nobody else's.
    Each record: state, pid, text length, live-program count (4 bytes each),
    socket inode (8), SPAWNING time in CLOCK_BOOTTIME ns (8), then TEXT bytes
    (remote IP, a space, the ``ok`` line after its id), then the live pids.
    """

    IDLE, SPAWNING, SPAWNED, LOGGED = range(4)
    HEAD = 32
    TEXT = 1024

    def __init__(self, workers: int, limit: int, fd: int | None = None) -> None:
        self.capacity = limit + 1  # a worker's live programs never exceed its tokens (at most the limit)
        self.size = (self.HEAD + self.TEXT + 4 * self.capacity + 7) & ~7
        length = max(1, workers) * self.size
        if fd is None:  # the master: a memfd, so a worker exec'd on HUP maps it too (reload.py); else anonymous
            try:
                fd = os.memfd_create("prefork-spawnlog", os.MFD_CLOEXEC)
                os.ftruncate(fd, length)
            except (AttributeError, OSError):
                fd = -1
        self.fd = fd
        self.mm = mmap.mmap(fd, length)  # MAP_SHARED (MAP_ANONYMOUS with fd -1)
        self.u32 = memoryview(self.mm).cast("I")
        self.u64 = memoryview(self.mm).cast("Q")

    def _base(self, index: int) -> int:
        return index * self.size

    def state(self, index: int) -> int:
        return self.u32[self._base(index) >> 2]

    def pid(self, index: int) -> int:
        return self.u32[(self._base(index) + 4) >> 2]

    def lines(self, index: int, pid: int) -> bytes:
        base = self._base(index)
        size = min(self.u32[(base + 8) >> 2], self.TEXT)
        text = bytes(self.mm[base + self.HEAD : base + self.HEAD + size])
        ip, _, tail = text.partition(b" ")
        return b"tcpserver: pid %d from %s\ntcpserver: ok %d %s" % (pid, ip, pid, tail)

    def live(self, index: int) -> list[int]:
        base = self._base(index)
        count = min(self.u32[(base + 12) >> 2], self.capacity)
        first = (base + self.HEAD + self.TEXT) >> 2
        return list(self.u32[first : first + count])

    # -- worker side -------------------------------------------------------------------
    def begin(self, index: int, ip: bytes, tail: bytes, inode: int) -> None:
        base = self._base(index)
        text = (ip + b" " + tail)[: self.TEXT]
        self.mm[base + self.HEAD : base + self.HEAD + len(text)] = text
        self.u32[(base + 8) >> 2] = len(text)
        self.u64[(base + 16) >> 3] = inode
        self.u64[(base + 24) >> 3] = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        self.u32[(base + 4) >> 2] = 0  # a pid here while SPAWNING is the new program's (spawned() stores it first)
        self.u32[base >> 2] = self.SPAWNING

    def failed(self, index: int) -> None:
        self.u32[self._base(index) >> 2] = self.IDLE

    def spawned(self, index: int, pid: int, positions: dict[int, int]) -> None:
        """Record PID as started, write its lines, then mark them written."""
        base = self._base(index)
        self.u32[(base + 4) >> 2] = pid
        self.u32[base >> 2] = self.SPAWNED
        count = self.u32[(base + 12) >> 2]
        if count < self.capacity:
            self.u32[((base + self.HEAD + self.TEXT) >> 2) + count] = pid
            positions[pid] = count
            self.u32[(base + 12) >> 2] = count + 1
        os.write(2, self.lines(index, pid))
        self.u32[base >> 2] = self.LOGGED

    def reaped(self, index: int, pid: int, positions: dict[int, int]) -> None:
        """PID is no longer a live program of this worker (swap-remove from its list)."""
        pos = positions.pop(pid, None)
        if pos is None:
            return
        base = self._base(index)
        first = (base + self.HEAD + self.TEXT) >> 2
        last = self.u32[(base + 12) >> 2] - 1
        if pos != last:
            moved = self.u32[first + last]
            self.u32[first + pos] = moved
            positions[moved] = pos
        self.u32[(base + 12) >> 2] = last

    # -- master side -------------------------------------------------------------------
    def reset(self, index: int) -> None:
        """A fresh record for the slot's next worker."""
        base = self._base(index)
        self.u32[base >> 2] = self.IDLE
        self.u32[(base + 12) >> 2] = 0

    def settle_dead(self, indices: list[int], found: set[int]) -> set[int]:
        """Write the missing lines of dead workers' programs; returns the pids, among FOUND (the
        master's new children), whose lines are now known to be written."""
        logged: set[int] = set()
        spawning: list[int] = []
        for index in indices:
            logged.update(pid for pid in self.live(index) if pid in found)
            state = self.state(index)
            pid = self.pid(index)
            if state == self.SPAWNED:
                os.write(2, self.lines(index, pid))
                self.u32[self._base(index) >> 2] = self.LOGGED
            if state in (self.SPAWNED, self.LOGGED) and pid in found:
                logged.add(pid)
            if state == self.SPAWNING:
                if pid and pid in found:  # killed between storing the pid and saying SPAWNED
                    os.write(2, self.lines(index, pid))
                    logged.add(pid)
                else:
                    spawning.append(index)
        unknown = found - logged
        for index in spawning:
            pick = self._program_of(index, unknown, alone=len(spawning) == 1)
            if pick:
                os.write(2, self.lines(index, pick))
                logged.add(pick)
                unknown.discard(pick)
        return logged

    def _program_of(self, index: int, candidates: set[int], alone: bool) -> int:
        """The program a worker dead in SPAWNING started, or 0: the candidate whose fd 0 is the
        connection's socket; failing that, when this was the only such worker, the one candidate
        started no earlier than the SPAWNING mark (clock ticks)."""
        base = self._base(index)
        inode = self.u64[(base + 16) >> 3]
        for pid in sorted(candidates):
            if proc.fd_inode(pid, 0) == inode:
                return pid
        if not alone or len(candidates) != 1:
            return 0
        (pid,) = candidates
        ticks = start_ticks(pid)
        if ticks is None:
            return pid  # exited already: the only candidate
        return pid if (ticks + 1) * TICK_NS > self.u64[(base + 24) >> 3] else 0


# (name, its TCP6 twin) for an IPv6 connection's environment
TWINS = tuple((b"TCP" + n, b"TCP6" + n) for n in (b"LOCALIP", b"LOCALPORT", b"LOCALHOST", b"REMOTEIP", b"REMOTEPORT",
                                                  b"REMOTEHOST", b"REMOTEINFO"))


def connection_env(
    base: dict[bytes, bytes], conn: Conn, rules_env: list[tuple[bytes, bytes]] | tuple[()] = ()
) -> dict[bytes, bytes]:
    """The program's environment: BASE, the TCP variables of CONN, then the rules' variables in order.

    Names and host names, the ident answer and the rules' entries come from
    outside; each is set as 0.88 sets C strings (``environ.set_variable``: cut
    at the first NUL, an empty name skipped), so posix_spawn always accepts
    the result.
    """
    env = base.copy()
    six = ":" in conn.remoteip
    env[b"PROTO"] = b"TCP6" if six else b"TCP"
    env[b"TCPLOCALIP"] = conn.localip.encode()
    env[b"TCPLOCALPORT"] = b"%d" % conn.localport
    # (names without "=" or NUL: set_variable reduces to the value's C string)
    if conn.localhost is not None:
        env[b"TCPLOCALHOST"] = c_string(conn.localhost)
    env[b"TCPREMOTEIP"] = conn.remoteip.encode()
    env[b"TCPREMOTEPORT"] = b"%d" % conn.remoteport
    if conn.remotehost is not None:
        env[b"TCPREMOTEHOST"] = c_string(conn.remotehost)
    if conn.remoteinfo is not None:
        env[b"TCPREMOTEINFO"] = c_string(conn.remoteinfo)
    if six:  # ucspi-tcp-ipv6's twins of an IPv6 connection: the same values (docs/CONTRACTS.md, IPv6)
        for name, twin in TWINS:
            value = env.get(name)
            if value is not None:
                env[twin] = value
        if conn.scope:
            try:
                env[b"TCP6INTERFACE"] = socket.if_indextoname(conn.scope).encode()
            except (OSError, ValueError, OverflowError):
                pass
    for name, value in rules_env:
        set_variable(env, name, value)
    return env


def base_environment(original: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """The inherited environment without the variables tcpserver sets or removes per connection."""
    return {k: v for k, v in original.items() if k not in TCP_VARS}

