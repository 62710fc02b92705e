"""The tcpserver master: binds, forks the workers, replaces the ones that die.

The master serves nothing itself and stays single-threaded (it forks).  It is
the child subreaper of everything below it, so the programs of a worker that
died are reparented to it: it keeps counting them against ``-c`` until they
exit, reaps them and logs their ``end`` lines.  With ``-v`` it also writes
the ``pid``/``ok`` lines a killed worker may not have written (``SpawnLog`` in
worker.py), so that a worker killed at any moment leaves no ``end`` line
without them before it.  Workers die with it
(PR_SET_PDEATHSIG), so no orphaned acceptor keeps the port.

SIGTERM exits at once with status 0, as tcpserver does; running programs are
not signalled and keep serving their clients.  gunicorn's QUIT, TTIN and TTOU
(docs/reference/tcpserver.md, Signals) are only queued by their handler and
dispatched by the loop: TTIN starts a worker in a free scoreboard slot (up to
``--max-workers``), TTOU tells the highest-numbered worker to leave, QUIT
tells them all to leave and closes the listener, then waits up to
``--drain-timeout`` for the running programs, TERMs those left and exits 0.
A worker told to leave (SIGQUIT, see worker.py) finishes the connection it
is starting and exits; its programs are handed over to us as orphans exactly
like those of a worker that died, so ``-c`` stays exact.  SIGSTOP (``svc -p``) stops
the whole server: the workers see their master stopped in /proc and serve
nobody until SIGCONT (see worker.py), so the master needs no timer for it.

With ``--metrics``/``--metrics-textfile`` the master also runs one
``prefork-exporter`` child (see ``exporter_child.py``): started once the
scoreboard exists and the privileges are dropped, never counted as a program
or an orphan, restarted like a worker when it exits, and gone by itself
(``--parent-pid``) when the master is.

Under systemd socket activation (``LISTEN_PID``/``LISTEN_FDS``, see
``activation.py``) the master serves the inherited socket instead of binding.

HUP and USR2 reload the code without closing the listening socket (reload.py; docs/ARCHITECTURE.md,
tcpserver: master, workers, scoreboard): after a probe has imported the new code, HUP
replaces the workers one slot at a time by fresh interpreters, USR2 lets the
workers leave and re-executes the master in place (same pid), which resumes
with the same socket, scoreboard, programs and exporter.  With ``--options-file`` the probe
also reads the command line again; its settings take over (``apply``), ``-c`` at once for every worker.
"""

from __future__ import annotations

import ctypes
import errno
import gc
import os
import select
import signal
import socket
import time

from prefork import activation, proc, reload
from prefork import scoreboard as sb
from prefork.addr import host_port
from prefork.capacity import Capacity
from prefork.clients import ClientTable
from prefork.djb import errstr
from prefork.environ import original_environ
from prefork.lean import name_process
from prefork.serverconfig import ServerConfig
from prefork.spawn import Spawner, signals_to_reset
from prefork.wakeup import drain, noop_handler
from prefork.worker import SpawnLog, Worker, base_environment

TYPE_CHECKING = False  # the lean server process does not import typing (see lean.py)
if TYPE_CHECKING:
    from typing import NoReturn

    from prefork.exporter_child import Exporter

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
# Blocked across USR2's exec (the mask survives it): a signal arriving meanwhile waits, pending, for the
# new master's handlers instead of meeting the default action (HUP, TERM end it; TTIN, TTOU stop it).
EXEC_BLOCKED = {signal.SIGHUP, signal.SIGUSR2, signal.SIGQUIT, signal.SIGTTIN, signal.SIGTTOU, signal.SIGTERM,
                signal.SIGINT, signal.SIGCHLD}
RESTART_DELAY = 1.0  # a slot whose worker lived less than this waits before it is refilled

_libc = ctypes.CDLL(None, use_errno=True)


def prctl(option: int, value: int) -> None:
    _libc.prctl(option, value, 0, 0, 0)


class Master:
    """State of the master process."""

    def __init__(self, cfg: ServerConfig, handoff: dict | None = None) -> None:
        self.cfg = cfg
        self.handoff = handoff  # USR2: what the master we replace left us (resume())
        self.verbose = cfg.verbosity >= 2
        self.warn = cfg.verbosity >= 1
        self.pid = os.getpid()
        self.board: sb.ScoreboardFile | None = None
        self.remove_board = cfg.scoreboard_path is None
        self.workers: dict[int, int] = {}  # pid -> slot index
        self.started: dict[int, float] = {}  # slot index -> monotonic start
        self.pending: dict[int, float] = {}  # slot index -> when to start it
        self.nslots = max(cfg.workers, cfg.max_workers)  # scoreboard slots, fixed at start: TTIN's ceiling
        self.target = cfg.workers  # workers wanted (TTIN/TTOU move it)
        self.retiring: set[int] = set()  # workers told to leave (TTOU, QUIT): their slot is not refilled
        self.queued: list[int] = []  # signals the handler queued for the loop
        self.drain_until: float | None = None  # QUIT: when the programs still running are TERMed
        self.orphans: dict[int, int] = {}  # pid -> start, CLOCK_BOOTTIME ns (for the duration histogram)
        self.client_entries: dict[int, int] = {}  # orphan pid -> its entry in the client table
        self.counted_orphans: set[int] = set()  # zombies whose exit their dead worker had counted
        self.logged_orphans: set[int] = set()  # orphans whose pid/ok lines were written (-v): they get an end line
        self.spawnlog: SpawnLog | None = None  # -v only: what a killed worker may not have logged
        self.exporter: Exporter | None = None  # only with --metrics/--metrics-textfile
        self.metrics_listen: socket.socket | str | None = None  # --metrics: bound socket, or HOST:PORT (see bind_metrics)
        self.metrics_port: int | None = None  # what -1 prints on its second line ("metrics PORT")
        # HUP, USR2 (reload.py): the probe of the new code, the reload in progress (its signal, 0: none), the
        # reloads asked for meanwhile, workers exec'd fresh (after a HUP) rather than forked, HUP's workers of
        # the old code still to replace, the slot being replaced and the new worker there not yet serving
        # (its ready pipe, pid, deadline), and USR2's wait for the workers to leave.
        self.probe: reload.Probe | None = None
        self.stray: set[int] = set()  # probes killed with their reload, not reaped yet: never counted as programs
        self.reloading = 0
        self.deferred: list[int] = []
        self.fresh = False
        self.old: set[int] = set()
        self.replacing: int | None = None
        self.turnover: tuple[int, int, float] | None = None
        self.upgrading = False
        self.previous = cfg  # --options-file: the settings before the HUP, again if its new worker fails
        # What our programs (and the exporter) start from; socket activation's variables consumed (activation.py).
        self.environ = original_environ()
        self.activated = activation.listen_fds(self.environ, self.pid)  # sockets passed to us; 0: bind
        if activation.addressed_here(self.environ, self.pid):
            self.environ = activation.without_listen_vars(self.environ)

    # -- messages --------------------------------------------------------------------------
    def fatal(self, text: str, err: BaseException | int | None = None) -> NoReturn:
        if self.warn:
            if err is not None:
                text = f"{text}: {errstr(err)}"
            os.write(2, f"tcpserver: fatal: {text}\n".encode("utf-8", "surrogateescape"))
        os._exit(111)

    # -- start-up, in 0.88's order --------------------------------------------------------------
    def start(self) -> NoReturn:
        cfg = self.cfg
        signal.signal(signal.SIGTERM, self._sigterm)
        for sig in (signal.SIGQUIT, signal.SIGTTIN, signal.SIGTTOU):
            signal.signal(sig, self._queue_signal)
        for sig in (signal.SIGHUP, signal.SIGUSR2):  # ignored at start (nohup): no reload, programs still ignore it
            if signal.getsignal(sig) is not signal.SIG_IGN:
                signal.signal(sig, self._queue_signal)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
        name_process()  # also in the in-process fallback: ps -C tcpserver finds the master, workers inherit it
        if self.handoff is not None:
            self.resume(self.handoff)
        ip = cfg.ip
        if ip is None:
            from prefork.addr import HostError, resolve_server_host

            try:
                ip = resolve_server_host(cfg.host)
            except HostError as e:
                self.fatal(e.message)
        if self.activated:
            lsock = self.adopt_socket(ip)
            local_ip, cfg.port = lsock.getsockname()[:2]
        else:
            if ":" in ip and cfg.family == 4:  # -4: IPv4 only; "::" is its any address (docs/CONTRACTS.md, IPv6)
                if ip != "::":
                    self.fatal("unable to bind", errno.EAFNOSUPPORT)
                ip = "0.0.0.0"
            family = socket.AF_INET6 if ":" in ip else socket.AF_INET
            try:
                lsock = socket.socket(family, socket.SOCK_STREAM)
            except OSError as e:
                self.fatal("unable to create socket", e)
            lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                if family == socket.AF_INET6:
                    if ip == "::":  # dual-stack whatever the sysctl says: IPv4 clients arrive as ::ffff:1.2.3.4
                        lsock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                    from prefork.addr import interface_index

                    lsock.bind((ip, cfg.port, 0, interface_index(cfg.interface)))
                else:
                    lsock.bind((ip, cfg.port))
            except OSError as e:
                self.fatal("unable to bind", e)
            try:
                local_ip, cfg.port = lsock.getsockname()[:2]
            except OSError as e:
                self.fatal("unable to get local address", e)
            try:
                lsock.listen(cfg.backlog)
            except OSError as e:
                self.fatal("unable to listen", e)
        path = cfg.scoreboard_path or sb.default_path(self.pid)
        try:
            self.board = sb.ScoreboardFile(path, self.nslots, cfg.limit, self.pid, cfg.name)
        except OSError as e:
            self.fatal(f"unable to create scoreboard {path}", e)
        self.board.set_local(local_ip, cfg.port)
        cfg.bound_ip = local_ip
        if cfg.gid or cfg.uid:
            try:
                os.fchown(self.board.fd, cfg.uid or -1, cfg.gid or -1)
            except OSError:
                pass
        if cfg.gid:
            try:
                os.setgroups([cfg.gid])
                os.setgid(cfg.gid)
            except OSError as e:
                self.fatal("unable to set gid", e)
        if cfg.uid:
            try:
                os.setuid(cfg.uid)
            except OSError as e:
                self.fatal("unable to set uid", e)
        if cfg.metrics is not None:
            self.bind_metrics()
        if cfg.print_port:
            # 0.88's line, then (only with --metrics) "metrics PORT": a line no reader of 0.88's takes for a port.
            lines = b"%d\n" % cfg.port
            if self.metrics_port is not None:
                lines += b"metrics %d\n" % self.metrics_port
            try:
                os.write(1, lines)
            except OSError:
                pass
        # tcpserver closes 0 and 1; /dev/null keeps those numbers taken so an accepted
        # socket never lands on them (dup2 onto itself would leave it close-on-exec).
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        if null > 1:
            os.close(null)
        if self.verbose:
            os.write(2, b"tcpserver: status: 0/%d\n" % cfg.limit)
        self.serve(lsock)

    def adopt_socket(self, ip: str) -> socket.socket:
        """Socket activation: the inherited socket instead of a bind; HOST/PORT that differ are warned about."""
        try:
            lsock = activation.adopt(self.activated)
            local_ip, port = lsock.getsockname()[:2]
        except activation.ActivationError as e:
            self.fatal(str(e))
        except OSError as e:
            self.fatal("unable to get local address", e)
        if self.warn and ((self.cfg.port and self.cfg.port != port) or (ip not in ("0.0.0.0", "::") and ip != local_ip)):
            os.write(2, b"tcpserver: warning: socket activation: serving %s from fd %d, not %s as given\n"
                     % (host_port(local_ip, port).encode(), activation.FIRST_FD, host_port(ip, self.cfg.port).encode()))
        return lsock

    def _sigterm(self, signum: int, frame: object) -> None:
        if self.remove_board and self.board is not None and os.getpid() == self.pid:
            self.board.unlink()
        os._exit(0)

    def resume(self, h: dict) -> NoReturn:
        """USR2's new master: the socket, scoreboard, programs and exporter of the master we replaced.

        Bound, privileges dropped and announced already; the workers left before the exec, so every child
        but the exporter is a counted program (an orphan), whose exits we count and reap from here on.
        """
        lsock = socket.socket(fileno=h["listen"])
        lsock.set_inheritable(False)
        self.board = sb.ScoreboardFile.attach(h["board_path"], h["board"])
        os.set_inheritable(self.board.fd, False)
        self.remove_board = h["remove_board"]
        self.target = h["target"]
        self.orphans = dict(h["orphans"])
        self.counted_orphans = set(h["counted"])
        self.client_entries = dict(h["client_entries"])
        self.logged_orphans = set(h["logged"])
        self.queued = list(h["queued"])
        metrics = h["metrics"]
        if isinstance(metrics, int):
            self.metrics_listen = socket.socket(fileno=metrics)
            self.metrics_listen.set_inheritable(False)
        else:
            self.metrics_listen = metrics
        self.cfg.bound_ip = h["bound_ip"]
        self.serve(lsock)

    def _queue_signal(self, signum: int, frame: object) -> None:
        """QUIT, TTIN, TTOU, HUP, USR2: only queued; the loop acts on them (its wake-up fd has the byte)."""
        self.queued.append(signum)

    # -- running ------------------------------------------------------------------------------
    def serve(self, lsock: socket.socket) -> NoReturn:
        cfg = self.cfg
        assert self.board is not None
        prctl(PR_SET_CHILD_SUBREAPER, 1)
        self.lsock = lsock
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.cap = Capacity(self.board, cfg.limit, self.wake_r, self.wake_w, None)
        self.sig_r, sig_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.sig_w = sig_w
        signal.set_wakeup_fd(sig_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, noop_handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, EXEC_BLOCKED)  # after USR2: what came during the exec
        if self.verbose:
            self.spawnlog = SpawnLog(self.nslots, cfg.table_limit)
        # Per-client limits: shared with every worker; after USR2 the same memfd, the orphans' entries in it.
        self.clients = ClientTable(self.nslots, cfg.table_limit, self.handoff["clients"] if self.handoff else None)
        os.set_inheritable(self.clients.fd, False)
        self.base_env = base_environment(self.environ)
        self.spawner = Spawner(cfg.argv, signals_to_reset())
        self.rules = None
        if cfg.rules_path is not None:
            from prefork.rules import RulesFile

            self.rules = RulesFile(cfg.rules_path, cfg.rules_missing_ok)
        if cfg.wants_exporter:
            self.start_exporter(self.handoff["exporter"] if self.handoff is not None else 0)
        gc.collect()
        gc.freeze()  # keep the objects the workers share out of later collections: fewer copied pages
        if self.handoff is not None:
            self.reap()  # programs that ended during the exec
            self.fill()
        else:
            for index in range(cfg.workers):
                self.start_worker(index)
        while True:
            self.dispatch()
            if self.drain_until is not None and not self.workers and not self.orphans:
                self.exit_drained()
            timeout = None
            due = list(self.pending.values())
            if self.drain_until is not None:
                due.append(self.drain_until)
            if self.exporter is not None and self.exporter.due is not None:
                due.append(self.exporter.due)
            if self.probe is not None:
                due.append(self.probe.deadline)
            readable = [self.sig_r]
            if self.turnover is not None:
                readable.append(self.turnover[0])
                due.append(self.turnover[2])
            if due:
                timeout = max(0.0, min(due) - time.monotonic())
            try:
                ready = select.select(readable, [], [], timeout)[0]
            except InterruptedError:
                ready = []
            drain(self.sig_r)
            self.reap()
            now = time.monotonic()
            self.reload_step(ready, now)
            for index, when in list(self.pending.items()):
                if when <= now:
                    del self.pending[index]
                    self.board.put64(sb.H_RESTARTS, self.board.get64(sb.H_RESTARTS) + 1)
                    self.start_worker(index)
            if self.drain_until is not None:
                if not self.workers and not self.orphans:
                    self.exit_drained()
                if now >= self.drain_until:
                    self.drain_expired()
            elif self.upgrading and not self.workers:
                self.reexec()
            else:
                self.fill()
            if self.exporter is not None:
                self.exporter.start_if_due(now)

    # -- QUIT, TTIN, TTOU ----------------------------------------------------------------------
    def dispatch(self) -> None:
        """Act on the queued signals in order; during a drain only its first QUIT counts."""
        while self.queued:
            sig = self.queued.pop(0)
            if self.drain_until is not None:
                continue  # draining: another QUIT, TTIN or TTOU changes nothing (TERM still exits at once)
            if sig == signal.SIGQUIT:
                self.begin_drain()
            elif sig == signal.SIGTTIN:
                if self.target >= self.nslots:
                    self.note(b"TTIN ignored: all %d scoreboard slots in use (--max-workers)" % self.nslots)
                else:
                    self.target += 1
                    self.fill()
            elif sig == signal.SIGTTOU:
                if self.target <= 1:
                    self.note(b"TTOU ignored: one worker left")
                else:
                    self.target -= 1
                    self.shed()
            elif self.reloading:  # HUP, USR2 during a reload: after it, once per kind
                if sig not in self.deferred:
                    self.deferred.append(sig)
            else:
                self.begin_reload(sig)

    def note(self, text: bytes) -> None:
        if self.warn:
            os.write(2, b"tcpserver: warning: " + text + b"\n")

    def staying(self) -> int:
        """Workers running or due to start, not counting those told to leave."""
        return len(self.workers) - len(self.retiring) + len(self.pending)

    def fill(self) -> None:
        """Start workers in free slots (lowest first) until there are as many as wanted."""
        assert self.board is not None
        while self.staying() < self.target and not self.upgrading:
            taken = set(self.workers.values()) | set(self.pending)
            free = [i for i in range(self.nslots) if i not in taken]
            if not free:
                return  # a leaving worker still holds the slot: filled when it has gone
            self.start_worker(free[0])

    def shed(self) -> None:
        """One worker fewer: a slot waiting for its restart is dropped, else the highest live worker leaves."""
        assert self.board is not None
        while self.staying() > self.target:
            if self.pending:
                index = max(self.pending)
                del self.pending[index]
                self.board.put32(self.board.slot_offset(index) + sb.OFF_STATE, sb.STATE_EMPTY)
                continue
            staying = [(index, pid) for pid, index in self.workers.items() if pid not in self.retiring]
            if not staying:
                return
            self.retire(max(staying)[1])

    def retire(self, pid: int) -> None:
        """Tell a worker to leave: it finishes what it is starting and exits (worker.py, SIGQUIT)."""
        self.retiring.add(pid)
        try:
            os.kill(pid, signal.SIGQUIT)
        except ProcessLookupError:
            pass  # dead already: reaped as a leaving worker

    def begin_drain(self) -> None:
        """QUIT: accept nothing more, let the workers leave, wait for the programs up to --drain-timeout."""
        assert self.board is not None
        self.end_reload()  # a reload in progress stops here; those asked for meanwhile are dropped
        self.deferred.clear()
        self.drain_until = time.monotonic() + self.cfg.drain_timeout
        self.lsock.close()  # the workers close theirs as they leave: the port then refuses (activation: queues)
        for index in self.pending:
            self.board.put32(self.board.slot_offset(index) + sb.OFF_STATE, sb.STATE_EMPTY)
        self.pending.clear()
        for pid in list(self.workers):
            if pid not in self.retiring:
                self.retire(pid)

    def exit_drained(self) -> NoReturn:
        """Nothing left running: leave as on TERM (scoreboard removed), status 0."""
        if self.remove_board and self.board is not None:
            self.board.unlink()
        os._exit(0)

    def drain_expired(self) -> NoReturn:
        """--drain-timeout is over: workers still starting a connection are killed (their programs come to
        us), every program still running gets SIGTERM, and the master exits 0 without waiting for them."""
        for pid in list(self.workers):
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        exporter = self.exporter.pid if self.exporter is not None else None
        programs = [pid for pid in proc.children(self.pid) if pid != exporter]
        for pid in programs:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        self.note(b"drain timeout: %d programs sent TERM" % len(programs))
        self.exit_drained()

    # -- HUP, USR2 (reload.py) ---------------------------------------------------------------------
    def begin_reload(self, sig: int) -> None:
        """Start a reload by probing the new code; the loop goes on from the probe's exit (reload_step)."""
        if sig == signal.SIGHUP and self.spawnlog is not None and self.spawnlog.fd < 0:
            self.note(b"reload failed: -v needs memfd_create to hand the spawn log to a new worker")
            return
        try:
            errfd = os.memfd_create("tcpserver-probe", os.MFD_CLOEXEC)
        except OSError as e:
            self.note(b"reload failed: unable to check the new code: " + errstr(e).encode())
            return
        try:
            outfd = os.memfd_create("tcpserver-probe-settings", os.MFD_CLOEXEC)
        except OSError as e:
            os.close(errfd)
            self.note(b"reload failed: unable to check the new code: " + errstr(e).encode())
            return
        pid = self.fork_fresh(errfd, outfd)
        if not pid:
            os.close(errfd)
            os.close(outfd)
            return
        self.reloading = sig
        self.probe = reload.Probe(pid, errfd, outfd, sig, self.cfg.reread)

    def fork_fresh(self, errfd: int, outfd: int) -> int:
        """Fork the probe (its stderr ERRFD, its stdout OUTFD); 0 if fork fails (said in one line)."""
        try:
            pid = os.fork()
        except OSError as e:
            self.note(b"reload failed: unable to fork: " + errstr(e).encode())
            return 0
        if pid == 0:
            try:
                prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
                if os.getppid() == self.pid:
                    os.dup2(errfd, 2)
                    os.dup2(outfd, 1)
                    reload.exec_fresh("tcpserver-probe", reload.probe_body(self.cfg), (), self.environ)
            finally:
                os._exit(111)
        return pid

    def probe_exited(self, status: int) -> None:
        """The probe is over: on success HUP starts replacing workers, USR2 lets them all leave."""
        probe, self.probe = self.probe, None
        assert probe is not None
        failure = probe.failure(status)
        if failure is not None:
            what = b"code and options go" if self.cfg.reread else b"code goes"
            self.note(b"reload failed: " + failure + b"; the running " + what + b" on serving")
            self.end_reload()
            return
        self.previous = self.cfg
        if probe.settings is not None:
            try:
                cfg = ServerConfig(**probe.settings)
            except TypeError as e:  # new code with settings this master's code does not know
                self.note(b"reload failed: new settings unknown to the running master (%s); the running code "
                          b"and options go on serving" % str(e).encode("utf-8", "replace"))
                self.end_reload()
                return
            self.apply(cfg)
        if self.reloading == signal.SIGHUP:
            self.fresh = True
            self.old = {pid for pid in self.workers if pid not in self.retiring}
        else:
            assert self.board is not None
            self.upgrading = True
            for index in self.pending:
                self.board.put32(self.board.slot_offset(index) + sb.OFF_STATE, sb.STATE_EMPTY)
            self.pending.clear()
            for pid in list(self.workers):
                if pid not in self.retiring:
                    self.retire(pid)

    def reload_step(self, ready: list[int], now: float) -> None:
        """Move the reload on: the probe's deadline, the new worker's ready pipe, the next slot to replace."""
        if self.probe is not None and now >= self.probe.deadline:
            try:
                os.kill(self.probe.pid, signal.SIGKILL)  # reaped (and reported) as any probe exit
            except ProcessLookupError:
                pass
        if self.turnover is not None:
            fd, pid, deadline = self.turnover
            if fd in ready or now >= deadline:
                self.turnover = None
                try:
                    said = os.read(fd, 1) if fd in ready else b""
                except OSError:
                    said = b""
                os.close(fd)
                if said != b"r":
                    self.note(b"reload failed: new worker %d did not start serving; the running code goes on "
                              b"serving" % pid)
                    if pid in self.workers:
                        os.kill(pid, signal.SIGKILL)  # a hung one: reaped and replaced by a forked one
                    self.fresh = False  # restarts fork the code the master runs, as before the HUP
                    if self.previous is not self.cfg:
                        self.apply(self.previous)  # and with the options it ran with
                    self.end_reload()
        if self.reloading == signal.SIGHUP and self.probe is None and self.drain_until is None:
            self.replace_next()

    def apply(self, cfg: ServerConfig) -> None:
        """--options-file: the settings a reload read take over (tcpserver_cli.reread has refused those
        that cannot change).  -c at once for every worker (capacity.py); the rest for the workers started
        from now on, which HUP's replace the old ones with; -b on the listening socket itself."""
        old, self.cfg = self.cfg, cfg
        self.verbose = cfg.verbosity >= 2
        self.warn = cfg.verbosity >= 1
        if self.verbose and self.spawnlog is None:
            self.spawnlog = SpawnLog(self.nslots, cfg.table_limit)
        self.spawner = Spawner(cfg.argv, self.spawner.sigdef)
        self.rules = None
        if cfg.rules_path is not None:
            from prefork.rules import RulesFile

            self.rules = RulesFile(cfg.rules_path, cfg.rules_missing_ok)
        if cfg.limit != old.limit:
            self.cap.set_limit(cfg.limit)
        if cfg.backlog != old.backlog and not self.activated:
            try:
                self.lsock.listen(cfg.backlog)  # the same socket: its queue keeps the connections waiting in it
            except OSError as e:
                self.warning("unable to listen", e)

    def replace_next(self) -> None:
        """HUP: when no slot is changing hands, tell the lowest worker of the old code to leave (reap() then
        starts a fresh one in its slot); none left: the reload is over."""
        if self.replacing is not None or self.turnover is not None:
            return
        self.old &= set(self.workers)
        self.old -= self.retiring
        if not self.old:
            self.end_reload()
            return
        index, pid = min((self.workers[pid], pid) for pid in self.old)
        self.old.discard(pid)
        self.replacing = index
        self.retire(pid)

    def end_reload(self) -> None:
        """No reload in progress any more; one asked for meanwhile is dispatched next."""
        if self.probe is not None:
            os.kill(self.probe.pid, signal.SIGKILL)  # our child, not reaped yet: the pid is still its
            self.probe.close()
            self.stray.add(self.probe.pid)
            self.probe = None
        if self.turnover is not None:
            os.close(self.turnover[0])
            self.turnover = None
        self.reloading = 0
        self.old.clear()
        self.replacing = None
        self.upgrading = False
        self.queued[:0] = self.deferred
        self.deferred.clear()

    def reexec(self) -> None:
        """USR2, every worker gone: exec a fresh master in place (same pid), which resume()s from what we pass."""
        assert self.board is not None
        listen = self.metrics_listen
        handoff = {
            "listen": self.lsock.fileno(), "board": self.board.fd, "board_path": self.board.path,
            "remove_board": self.remove_board, "target": self.target, "bound_ip": self.cfg.bound_ip,
            "orphans": self.orphans, "counted": sorted(self.counted_orphans), "logged": sorted(self.logged_orphans),
            "clients": self.clients.fd, "client_entries": self.client_entries,
            "queued": self.deferred + self.queued,
            "exporter": self.exporter.pid if self.exporter is not None else 0,
            "metrics": listen.fileno() if isinstance(listen, socket.socket) else listen,
        }
        keep = [self.lsock.fileno(), self.board.fd, self.clients.fd]
        if isinstance(listen, socket.socket):
            keep.append(listen.fileno())
        signal.pthread_sigmask(signal.SIG_BLOCK, EXEC_BLOCKED)
        reload.exec_master(self, handoff, keep)
        for fd in keep:  # still here: the exec failed
            os.set_inheritable(fd, False)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, EXEC_BLOCKED)
        self.note(b"reload failed: unable to execute a new master; the running code goes on serving")
        self.end_reload()
        self.fill()

    def warning(self, text: str, err: BaseException) -> None:
        """``tcpserver: warning: TEXT: ERR``, unless -q."""
        if self.warn:
            from prefork.djb import warn

            warn("tcpserver", text, err)

    def bind_metrics(self) -> None:
        """Bind --metrics before -1 prints, and record the bound address in the scoreboard (port 0 resolved).

        If it cannot be bound now, the exporter is given HOST:PORT to retry, and -1 prints the port asked for.
        """
        from prefork.exporter_child import metrics_listener, parse_address

        assert self.board is not None and self.cfg.metrics is not None
        self.metrics_listen = listen = metrics_listener(self.cfg.metrics, self.warning)
        if isinstance(listen, socket.socket):
            host, self.metrics_port = listen.getsockname()[:2]
            self.board.set_metrics(host, self.metrics_port)
        else:
            self.metrics_port = parse_address(listen)[1]

    def start_exporter(self, running: int = 0) -> None:
        """Run prefork-exporter on our scoreboard (only with --metrics/--metrics-textfile); RUNNING: the pid of the
        one the master we replaced (USR2) started, ours now."""
        from prefork.exporter_child import Exporter, exporter_args

        cfg = self.cfg
        assert self.board is not None
        listen = self.metrics_listen
        args = exporter_args(["--scoreboard", self.board.path], self.pid, listen, cfg.metrics_textfile,
                             cfg.metrics_user)
        self.exporter = Exporter("tcpserver", args, self.environ, self.spawner.sigdef, quiet=not self.warn,
                                 listener=listen)
        if running:
            self.exporter.pid = running
            self.exporter.started = time.monotonic()
        else:
            self.exporter.start()

    def start_worker(self, index: int, ready: bool = False) -> None:
        """A worker in slot INDEX: forked, or after a HUP exec'd fresh; READY: HUP's replacement, which says on
        a pipe when it serves (self.turnover)."""
        board = self.board
        assert board is not None
        slot = board.slot_offset(index)
        board.put32(slot + sb.OFF_PID, 0)
        board.put32(slot + sb.OFF_STATE, sb.STATE_STARTING)
        board.put32(slot + sb.OFF_GENERATION, board.get32(slot + sb.OFF_GENERATION) + 1)
        if self.spawnlog is not None:
            self.spawnlog.reset(index)
        ready_r = ready_w = -1
        if ready and self.fresh:
            ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        try:
            pid = os.fork()
        except OSError as e:
            if self.warn:
                os.write(2, b"tcpserver: warning: unable to fork worker: %s\n" % errstr(e).encode())
            self.pending[index] = time.monotonic() + RESTART_DELAY
            if ready_r >= 0:
                os.close(ready_r)
                os.close(ready_w)
            return
        if pid == 0:
            try:
                prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
                if os.getppid() != self.pid:
                    os._exit(0)
                if self.fresh:  # after a HUP: the code on disk now, in a fresh interpreter
                    reload.exec_worker(self, index, ready_w)
                    os._exit(111)
                signal.set_wakeup_fd(-1)
                os.close(self.sig_r)
                os.close(self.sig_w)
                if self.exporter is not None and self.exporter.listener is not None:
                    self.exporter.listener.close()  # the metrics address is the master's, not a worker's
                Worker(
                    self.cfg, self.lsock, board, index, self.wake_r, self.wake_w,
                    self.base_env, self.spawner, self.rules, self.spawnlog, self.clients,
                ).run()
            finally:
                os._exit(111)
        self.workers[pid] = index
        self.started[index] = time.monotonic()
        board.put32(slot + sb.OFF_PID, pid)
        if ready_r >= 0:
            os.close(ready_w)
            self.turnover = (ready_r, pid, time.monotonic() + reload.PROBE_TIMEOUT)

    def reap(self) -> None:
        reaped: list[tuple[int, int]] = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            reaped.append((pid, status))
        if not reaped:
            return
        assert self.board is not None  # for mypy: children are reaped only while serving, board made
        exporter = {self.exporter.pid} if self.exporter is not None and self.exporter.pid else set()
        others = exporter | self.stray  # children that are not programs
        self.stray -= {pid for pid, _ in reaped}
        if self.probe is not None:
            others.add(self.probe.pid)
            for pid, status in reaped:
                if pid == self.probe.pid:
                    self.probe_exited(status)
                    break
        dead = [(pid, self.workers.pop(pid)) for pid, _ in reaped if pid in self.workers]
        if dead:
            # The dead workers' programs are our children now (reparented before we were told).
            known = set(self.workers) | set(self.orphans) | {pid for pid, _ in dead} | others
            found = (set(proc.children(self.pid)) | {pid for pid, _ in reaped}) - known
            for pid in found:
                # Timed from its start: a program that outlives its worker still counts in the histogram.
                self.orphans[pid] = proc.start_boottime_ns(pid) or time.clock_gettime_ns(time.CLOCK_BOOTTIME)
            # Every program whose worker is gone, not just those found now: when two workers die together
            # (a reload), the second one's programs may have been found, as orphans, when the first was reaped.
            gone = set(self.orphans)
            # A worker killed between counting a program's exit and reaping it: finished, not counted twice.
            self.counted_orphans |= {self.board.settle_exit(index) for _pid, index in dead} & gone
            # The dead workers' programs keep their places in the per-client counts, now in our region.
            self.cap.lock()
            try:
                for _pid, index in dead:
                    self.clients.settle_dead(index, gone, self.client_entries)
            finally:
                self.cap.unlock()
            if self.spawnlog is not None:
                # Before any end line: the dead workers' programs whose pid/ok lines are still missing get them.
                self.logged_orphans |= self.spawnlog.settle_dead([index for _pid, index in dead], found)
            added = len(found)
            for pid, index in dead:
                self.cap.absorb_dead_worker(index, added)
                added = 0
                slot = self.board.slot_offset(index)
                self.board.put32(slot + sb.OFF_PID, 0)
                if pid in self.retiring:  # left when told (TTOU, QUIT): the slot is free, not refilled
                    self.retiring.discard(pid)
                    self.board.put32(slot + sb.OFF_STATE, sb.STATE_EMPTY)
                    if index == self.replacing:  # HUP: its fresh successor, unless TTOU wants one fewer
                        self.replacing = None
                        if self.staying() < self.target:
                            self.start_worker(index, ready=True)
                    continue
                self.board.put32(slot + sb.OFF_STATE, sb.STATE_EXITED)
                if self.drain_until is not None or self.upgrading:
                    continue  # draining, or USR2's new master starts them: nobody replaces a worker
                lived = time.monotonic() - self.started.get(index, 0.0)
                self.pending[index] = time.monotonic() + (0.0 if lived >= RESTART_DELAY else RESTART_DELAY - lived)
        for pid, status in reaped:
            if pid in self.orphans:
                started = self.orphans.pop(pid)
                entry = self.client_entries.pop(pid, None)
                if entry is not None:
                    self.clients.free(entry)
                if pid in self.counted_orphans:
                    self.counted_orphans.discard(pid)
                else:
                    self._orphan_duration(time.clock_gettime_ns(time.CLOCK_BOOTTIME) - started)
                    cls = 2 if os.WIFSIGNALED(status) else (0 if status == 0 else 1)
                    off = sb.H_ORPHAN_EXITS + 8 * cls
                    self.board.put64(off, self.board.get64(off) + 1)
                if self.verbose and (self.spawnlog is None or pid in self.logged_orphans):
                    self.logged_orphans.discard(pid)
                    self.cap.lock()
                    os.write(
                        2,
                        b"tcpserver: end %d status %d\ntcpserver: status: %d/%d\n"
                        % (pid, status, self.cap.in_use() - 1, self.cfg.limit),
                    )
                    self.cap.orphan_ended()
                    self.cap.unlock()
                else:
                    self.cap.orphan_ended()
            elif pid in exporter:  # not empty only when there is an exporter
                assert self.exporter is not None  # for mypy
                self.exporter.exited(status)

    def _orphan_duration(self, duration_ns: int) -> None:
        """Count an orphan's connection time in the master's histogram (the workers' own are per slot)."""
        duration_ns = max(0, duration_ns)
        assert self.board is not None  # for mypy: orphans are reaped only while serving
        self.board.put64(sb.H_ORPHAN_DURATION_SUM, self.board.get64(sb.H_ORPHAN_DURATION_SUM) + duration_ns)
        off = sb.H_ORPHAN_BUCKETS + 8 * sb.bucket_index(duration_ns)
        self.board.put64(off, self.board.get64(off) + 1)






def run(cfg: ServerConfig, handoff: dict | None = None) -> NoReturn:
    """Start a tcpserver with this configuration (HANDOFF: USR2's, see Master.resume); never returns."""
    Master(cfg, handoff).start()
