"""One event loop supervising any number of services: the real side of the machine's seam.

``supervise DIR`` runs it with one service, ``svscan DIR`` with every service
of a tree.  The loop waits in epoll on each service's ``control`` FIFO, on the
pidfds of adopted services and on the signal wake-up pipe; SIGCHLD only makes
the kernel write a byte there (gunicorn's rule: nothing but a wake-up inside a
handler), and the loop reaps with ``waitpid(-1, WNOHANG)``.  Restart throttles
are entries in a timer heap, so a service waiting out its second never delays
another service's control bytes.

After a signal or a start, the next status write first yields the CPU
(``sched_yield``): the service just woken may be queued on this CPU, and the
write (open, write, rename on a journalled file system: up to hundreds of µs)
would otherwise run before it.  0.76's supervise writes first; here the
service's TERM handler or start-up comes first and the bookkeeping after.

Programs are started with ``os.posix_spawn`` after an ``fchdir`` into the
service directory: vfork-based, so a start costs the same whatever the size of
this process.  They get the environment this process was started with (not
``os.environ``, which Python's locale coercion changed), fds 0/1/2 as
supervise's (or the log pipe), an empty signal mask and default dispositions.
"""

from __future__ import annotations

import heapq
import os
import select
import signal
import stat
import time

from prefork import proc, tai64n
from prefork.control import restartfile, statusfile
from prefork.control import servicetable as st
from prefork.control.machine import WANT_DOWN, WANT_ONCE, WANT_UP, Seam, Service
from prefork.control.servicedir import ServiceDir, StartupError, read_own
from prefork.djb import write_line
from prefork.environ import original_environ
from prefork.lean import hold_std_fds
from prefork.wakeup import noop_handler

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: supervise and svscan do not import typing
if TYPE_CHECKING:
    from collections.abc import Callable

    from prefork.control.servicetable import ServiceRecord, ServiceTable
    from prefork.control.svscan import Entry

# Due timers run in one pass of the loop before it polls again (see run_timers).
TIMERS_PER_PASS = 1
REAPS_PER_PASS = 4  # exits handled in one pass (see reap)
CONTROL_CHUNK = 256  # bytes handled per service per wake-up: a flood on one FIFO cannot starve the rest
MAX_SLEEP = 3600.0


class Supervised:
    """The engine's data for one service: its open files, its stdio, its table slot."""

    __slots__ = ("sd", "stdin", "stdout", "slot", "pidfd", "table_name", "is_log", "owner", "notify_fd",
                 "finish_pidfd", "saved")

    def __init__(self, sd: ServiceDir, stdin: int | None, stdout: int | None, table_name: str, is_log: bool,
                 owner: Entry | None) -> None:
        self.sd = sd
        self.stdin = stdin
        self.stdout = stdout
        self.slot = -1
        self.pidfd = -1
        self.table_name = table_name
        self.is_log = is_log
        self.owner = owner  # svscan's entry for the service, None under supervise
        self.notify_fd = -1  # read end of the notification-fd pipe, open only until readiness or the exit
        self.finish_pidfd = -1  # a ./finish taken over from a supervisor killed while it ran (not our child)
        self.saved = False  # supervise/restart may exist (control/restartfile.py): an empty state removes it


class Engine(Seam):
    """The loop, the timers, the pid table and the real OS calls."""

    def __init__(self, *, mode: str = "daemontools", table: ServiceTable | None = None,
                 prog: str = "supervise", new_session: bool = False) -> None:
        hold_std_fds()
        self.mode = mode  # one of statusfile.MODES: the status format, and the control bytes known beyond 0.76's
        self.codec = statusfile.CODECS[mode]
        self.new_session = new_session  # svscan --runit -P: every service in a session of its own (setsid)
        self.stderr: int | None = None  # the services' fd 2 when not this process's (svscan's runsvdir log)
        self.readers: dict[int, Callable[[], object]] = {}  # other fds the loop watches (see watch())
        self.table = table  # a servicetable.ServiceTable, or None
        self.prog = prog
        self.env = original_environ()
        self.home_fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
        self.epoll = select.epoll()
        self.by_fd: dict[int, Service] = {}
        self.by_pid: dict[int, Service] = {}
        self.timers: list[tuple[float, int, Service | None, Callable[[], object] | None]] = []
        self._seq = 0
        self.signal_handlers: dict[int, Callable[[], object]] = {}
        self.on_finished: Callable[[Service], object] | None = None
        # Called (pid, wait status) for a reaped child that is no service.
        self.on_other_child: Callable[[int, int], object] | None = None
        self.live = 0
        self.stop = False
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, noop_handler)
        self.epoll.register(self.wake_r, select.EPOLLIN)
        self.sigdef: tuple[int, ...] = ()
        self.let_run = False  # a kill or spawn happened since the last status write
        self.reaping = False  # the last reap stopped at its budget: exits may wait, poll without sleeping

    # -- adding and removing services ----------------------------------------------------
    def add(self, path: str, display: str, *, base_fd: int | None = None, stdin: int | None = None,
            stdout: int | None = None, owner: Entry | None = None, table_name: str | None = None,
            is_log: bool = False) -> Service:
        """Take on the service in PATH (supervise's start-up); StartupError with supervise's text if it fails."""
        sd, down = ServiceDir.open(path, display, base_fd=base_fd, codec=self.codec)
        ctx = Supervised(sd, stdin, stdout, table_name or display, is_log, owner)
        service = Service(self, display, mode=self.mode, context=ctx, log=is_log)
        if self.table is not None:
            try:
                ctx.slot = self.table.allocate(ctx.table_name)
            except Exception as err:  # TableFull: supervise anyway, just unpublished
                self.report(service, f"{self.prog}: warning: no room in the service table for {display}: {err}")
        previous = running_from_status(sd.dirfd, sd.supfd)
        try:
            if previous is not None:
                pid, label, want, paused, pidfd = previous
                ctx.pidfd = pidfd
                self.by_pid[pid] = service
                self.epoll.register(pidfd, select.EPOLLIN)
                self.by_fd[pidfd] = service
                service.adopt(pid, label, want, paused, normally_up=not down,
                              notify=self._notification_fd(service) is not None)
            else:
                service.prepare(down)
            self._restore(service)
            sd.open_ok()
        except BaseException:
            self._forget(service)
            raise
        self.epoll.register(sd.control_fd, select.EPOLLIN)
        self.by_fd[sd.control_fd] = service
        self.live += 1
        if previous is None:
            service.boot()
        return service

    def _restore(self, service: Service) -> None:
        """The restart state a supervisor killed with SIGKILL left in ``supervise/restart``
        (docs/CONTRACTS.md, Taking over after a SIGKILL): back-off, deaths, failure, and a ./finish still
        running, taken over with a pidfd as a running ./run is.  A file of another boot is ignored in silence,
        garbage with one warning."""
        ctx = service.context
        data = ctx.sd.read_private(restartfile.NAME, restartfile.MAX_SIZE)
        if data is None:
            return
        ctx.saved = True
        saved = restartfile.decode(data)
        if saved is None:
            self.report(service, f"{self.prog}: warning: invalid {ctx.sd.display}/supervise/{restartfile.NAME},"
                                 " ignored")
        elif saved.boot == restartfile.boot_id():
            finish_pid = 0
            if saved.finish_pid and not service.pid:
                pidfd = _finish_alive(saved.finish_pid, saved.finish_ticks, ctx.sd.dirfd, ctx.sd.supfd)
                if pidfd >= 0:
                    finish_pid, ctx.finish_pidfd = saved.finish_pid, pidfd
                    self.epoll.register(pidfd, select.EPOLLIN)
                    self.by_fd[pidfd] = service
            service.restore(saved.delay_ms / 1000, saved.due_ms / 1000, saved.failed,
                            [t / 1000 for t in saved.deaths_ms], finish_pid, saved.finish_kill_ms / 1000)
            return
        self.persist(service)  # nothing of it counts: the file goes

    def persist(self, service: Service) -> None:
        ctx = service.context
        finish_ticks = proc.start_ticks(service.finish_pid) if service.finish_pid else None
        if not finish_ticks:  # ended already (a zombie), or no start time to recognise it by: not kept
            finish_ticks = 0
        if not (service.delay or service.failed or service.deaths or finish_ticks):
            if not ctx.saved:
                return
            data = None
        else:
            data = restartfile.encode(restartfile.Saved(
                restartfile.boot_id(), round(service.delay * 1000), round(service.not_before * 1000), service.failed,
                [round(t * 1000) for t in service.deaths], service.finish_pid if finish_ticks else 0, finish_ticks,
                round(service.finish_kill_at * 1000) if finish_ticks else 0))
        ctx.saved = data is not None
        warning = ctx.sd.write_private(restartfile.NAME, data)
        if warning is not None:
            self.report(service, f"{self.prog}: warning: {warning}")

    def _forget(self, service: Service) -> None:
        ctx = service.context
        self._drop_notify(service)
        if self.by_fd.pop(ctx.sd.control_fd, None) is not None:  # the FIFO is the directory's: not closed here
            try:
                self.epoll.unregister(ctx.sd.control_fd)
            except OSError:
                pass
        ctx.pidfd = self._unwatch(ctx.pidfd)
        ctx.finish_pidfd = self._unwatch(ctx.finish_pidfd)
        ctx.sd.close()
        if self.table is not None and ctx.slot >= 0:
            self.table.release(ctx.slot)
            ctx.slot = -1

    # -- the seam --------------------------------------------------------------------------
    def spawn(self, service: Service) -> int:
        ctx = service.context
        actions = self._stdio(service)
        notify = self._notification_fd(service)
        r = w = -1
        if notify is not None:
            r, w = os.pipe2(os.O_CLOEXEC)
            if w == notify:  # dup2 onto itself would leave it close-on-exec
                w2 = os.dup(w)
                os.close(w)
                w = w2
            actions.append((os.POSIX_SPAWN_DUP2, w, notify))  # last: the stdio sources are copied by then
        try:
            pid = self._spawn(service, "./run", ["./run"], actions)
        except BaseException:
            if r >= 0:
                os.close(r)
            raise
        finally:
            if w >= 0:
                os.close(w)
        if r >= 0:
            os.set_blocking(r, False)
            ctx.notify_fd = r
            self.epoll.register(r, select.EPOLLIN)
            self.by_fd[r] = service
        return pid

    def _spawn(self, service: Service, path: str, argv: list[str], actions: list[tuple[int, int, int]]) -> int:
        ctx = service.context
        if not self.sigdef:
            from prefork.spawn import signals_to_reset

            self.sigdef = signals_to_reset(always=())  # an ignored-at-start signal stays ignored in services
        os.fchdir(ctx.sd.dirfd)
        try:
            pid = os.posix_spawn(path, argv, self.env, file_actions=actions, setsigmask=(), setsigdef=self.sigdef,
                                 setsid=self.new_session)
        finally:
            os.fchdir(self.home_fd)
        self.by_pid[pid] = service
        self.let_run = True
        return pid

    def _stdio(self, service: Service) -> list[tuple[int, int, int]]:
        ctx = service.context
        actions = []
        if ctx.stdin is not None:
            actions.append((os.POSIX_SPAWN_DUP2, ctx.stdin, 0))
        if ctx.stdout is not None:
            actions.append((os.POSIX_SPAWN_DUP2, ctx.stdout, 1))
        if self.stderr is not None:  # svscan --runit DIR LOG: runsvdir's log
            actions.append((os.POSIX_SPAWN_DUP2, self.stderr, 2))
        return actions

    def _notification_fd(self, service: Service) -> int | None:
        """The fd number of ./run's notification pipe, None without a usable notification-fd file."""
        fd = self.setting(service, "notification-fd")
        if fd is None:
            return None
        where = f"supervise: warning: {service.context.sd.display}/notification-fd {fd}"
        if fd <= 2:
            self.report(service, f"{where} would replace the service's stdin, stdout or stderr, ignored")
            return None
        limit = os.sysconf("SC_OPEN_MAX")  # the soft RLIMIT_NOFILE ./run inherits
        if 0 < limit <= fd:
            self.report(service, f"{where} is beyond the descriptor limit {limit}, ignored")
            return None
        return fd

    def notifying(self, service: Service) -> bool:
        return service.context.notify_fd >= 0

    def directory_name(self, service: Service) -> str:
        return service.context.table_name  # DIR under supervise; NAME or NAME/log under svscan

    def setting(self, service: Service, name: str) -> int | None:
        value, warning = service.context.sd.setting(name)
        if warning is not None:
            self.report(service, f"supervise: warning: {warning}")
        return value

    def spawn_finish(self, service: Service, args: list[str]) -> int:
        # No ./finish is the usual case: one lstat, not a spawn that fails (a process, a signal and a reap
        # at every death of a flapping service).  Anything there, even a dangling link, is tried and its
        # failure reported.
        try:
            os.stat("finish", dir_fd=service.context.sd.dirfd, follow_symlinks=False)
        except FileNotFoundError:
            return 0
        except OSError:
            pass  # let the spawn say what is wrong
        try:
            return self._spawn(service, "./finish", ["./finish", *args], self._stdio(service))
        except OSError as err:
            from prefork.djb import errstr

            self.report(service, f"supervise: warning: unable to start {service.context.sd.display}/finish:"
                                 f" {errstr(err)}")
            return 0

    def kill_pid(self, service: Service, pid: int, sig: int) -> None:
        ctx = service.context
        try:
            if ctx.finish_pidfd >= 0 and pid == service.finish_pid:
                signal.pidfd_send_signal(ctx.finish_pidfd, sig)  # not our child: its pid may be reused once it ends
            else:
                os.kill(pid, sig)
        except OSError:
            pass

    def kill(self, service: Service, sig: int) -> None:
        try:
            os.kill(service.pid, sig)
        except OSError:
            return
        self.let_run = True

    def monotonic(self) -> float:
        return time.monotonic()

    def label(self) -> bytes:
        return tai64n.now()

    def publish(self, service: Service) -> None:
        if self.let_run:
            # A service just signalled or started may be queued on this CPU behind us: let it run before
            # the status write (hundreds of µs on a journalled file system), so the write never delays it.
            self.let_run = False
            os.sched_yield()
        ctx = service.context
        if self.table is not None and ctx.slot >= 0:
            # The table first: the status write ends by waking s6's listeners (event/), and whatever this process
            # still does after that competes with them for a CPU.
            self.table.publish(ctx.slot, _record(service))
        warning = ctx.sd.write_status(service.label, service.pid, service.paused, service.want, service.term_sent,
                                      wstat=service.last_status, finishing=service.finishing,
                                      ready_label=service.ready_label, exiting=service.exit_requested,
                                      finish_pid=service.finish_pid)
        if warning is not None:
            write_line(f"supervise: warning: {warning}")

    def schedule(self, service: Service, when: float) -> None:
        self.call_at(when, service, None)

    def call_at(self, when: float, service: Service | None, func: Callable[[], object] | None) -> None:
        """Run ``service.timer()`` (or FUNC() when SERVICE is None) at monotonic time WHEN."""
        self._seq += 1
        heapq.heappush(self.timers, (when, self._seq, service, func))

    def report(self, service: Service | None, text: str) -> None:
        write_line(text)

    def set_down(self, service: Service, present: bool) -> None:
        warning = service.context.sd.set_down(present)
        if warning is not None:
            write_line(f"{self.prog}: warning: {warning}")

    def finished(self, service: Service) -> None:
        service.context.sd.notify(b"x")  # s6's listeners: the supervisor is leaving (nothing in other modes)
        self._forget(service)
        self.live -= 1
        if self.on_finished is not None:
            self.on_finished(service)

    # -- the loop ----------------------------------------------------------------------------
    def handle_signal(self, sig: int, func: Callable[[], object]) -> None:
        """Run FUNC() from the loop (never in the handler) when SIG arrives."""
        self.signal_handlers[sig] = func
        signal.signal(sig, noop_handler)

    def watch(self, fd: int, func: Callable[[], object]) -> None:
        """Run FUNC() from the loop whenever FD is readable (FUNC reads it)."""
        self.readers[fd] = func
        self.epoll.register(fd, select.EPOLLIN)

    def run(self, *, until_idle: bool) -> None:
        """Loop until ``stop`` is set, or (UNTIL_IDLE) until every service has finished after ``x``."""
        import gc

        # Everything alive now lives as long as the supervisor: keep the cyclic GC from walking it again,
        # so a collection never adds milliseconds between a control byte and its signal.
        gc.collect()
        gc.freeze()
        while not self.stop:
            if until_idle and self.live == 0:
                return
            timeout = MAX_SLEEP
            if self.reaping:
                timeout = 0.0
            elif self.timers:
                timeout = max(0.0, min(timeout, self.timers[0][0] - time.monotonic()))
            self.let_run = False
            try:
                events = self.epoll.poll(timeout)
            except InterruptedError:
                events = []
            signals = b""
            for fd, _mask in events:
                if fd == self.wake_r:
                    signals = _read_all(self.wake_r)
            if signals or self.reaping:  # SIGCHLD (like every signal) wrote its byte: only then is there anything to reap
                self.reaping = self.reap()
            for sig in set(signals):
                func = self.signal_handlers.get(sig)
                if func is not None:
                    func()
            for fd, _mask in events:
                service = self.by_fd.get(fd)
                if service is None:
                    reader = self.readers.get(fd)
                    if reader is not None:
                        reader()
                    continue
                ctx = service.context
                if fd == ctx.pidfd:
                    self._adopted_exit(service)
                    continue
                if fd == ctx.finish_pidfd:
                    self._adopted_finish_exit(service)
                    continue
                if fd == ctx.notify_fd:
                    self._notified(service)
                    continue
                try:
                    data = os.read(fd, CONTROL_CHUNK)
                except OSError:
                    continue
                for byte in data:
                    if service.done:
                        break
                    service.control(byte)
            self.run_timers()

    def run_timers(self) -> None:
        """The due timers, at most TIMERS_PER_PASS of them (each is a start, hundreds of µs): when more are
        due (services flapping in step, a tree starting), the next poll does not wait, and the control bytes
        that came meanwhile are read between them instead of after the whole burst.
        docs/ARCHITECTURE.md, "svscan and supervise: one process for the tree"."""
        now = time.monotonic()
        budget = TIMERS_PER_PASS
        while self.timers and self.timers[0][0] <= now and budget > 0:
            budget -= 1
            _when, _seq, service, func = heapq.heappop(self.timers)
            if service is not None:
                service.timer()
            else:
                assert func is not None  # for mypy: only schedule()'s entries, which have a service, hold None
                func()

    def reap(self) -> bool:
        """Collect exited children: services get their exit, others go to ``on_other_child`` or are just
        reaped.  At most REAPS_PER_PASS exits are handled (True: stopped there, more may wait), so the
        control bytes of healthy services are read between the deaths of many at once, as between due
        timers (run_timers)."""
        budget = REAPS_PER_PASS
        while True:
            if budget == 0:
                return True
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return False
            except InterruptedError:
                continue
            if pid == 0:
                return False
            budget -= 1
            service = self.by_pid.pop(pid, None)
            if service is not None and service.pid == pid:
                self._drop_pidfd(service)
                self._drop_notify(service)
                service.exited(status)
            elif service is not None and service.finish_pid == pid:
                service.finish_exited(status)
            elif self.on_other_child is not None:  # svscan's metrics exporter (orphans of a subreaper: ignored)
                self.on_other_child(pid, status)

    def _adopted_exit(self, service: Service) -> None:
        pid = service.pid
        self._drop_pidfd(service)
        self._drop_notify(service)
        if pid and self.by_pid.get(pid) is service:
            del self.by_pid[pid]
            service.exited(-1)  # not our child: its wait status went to its real parent

    def _adopted_finish_exit(self, service: Service) -> None:
        ctx = service.context
        ctx.finish_pidfd = self._unwatch(ctx.finish_pidfd)
        if service.finish_pid:
            service.finish_exited(-1)  # its wait status went to its real parent

    def _notified(self, service: Service) -> None:
        """The notification pipe is readable: a newline anywhere in it makes the service ready (s6's rule).

        The pipe is closed once the service is ready or has closed its end: a
        second readiness line then gets EPIPE, as under s6-supervise.  It is
        closed before the status and event writes (s6-supervise closes it
        after them): the event write wakes the listeners, and nothing should be
        left to do then but go back to waiting.
        """
        try:
            data = os.read(service.context.notify_fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if b"\n" in data:
            self._drop_notify(service)
            service.ready()
        elif not data:
            self._drop_notify(service)  # closed without a newline: never ready

    def _drop_notify(self, service: Service) -> None:
        service.context.notify_fd = self._unwatch(service.context.notify_fd)

    def _drop_pidfd(self, service: Service) -> None:
        service.context.pidfd = self._unwatch(service.context.pidfd)

    def _unwatch(self, fd: int) -> int:
        """Stop watching FD (a pidfd or a notification pipe the engine opened) and close it; -1, the "none"
        to store in its place.  -1 itself is left alone."""
        if fd >= 0:
            self.by_fd.pop(fd, None)
            try:
                self.epoll.unregister(fd)
            except OSError:
                pass
            os.close(fd)
        return -1

    def services(self) -> list[Service]:
        """Every service on the engine (those whose control FIFO is watched)."""
        return [s for fd, s in self.by_fd.items() if fd == s.context.sd.control_fd]


def _read_all(fd: int) -> bytes:
    chunks = []
    try:
        while True:
            chunk = os.read(fd, 4096)
            chunks.append(chunk)
            if len(chunk) < 4096:
                break
    except BlockingIOError:
        pass
    return b"".join(chunks)


def _record(service: Service) -> ServiceRecord:
    ctx = service.context
    flags = st.FLAG_LOG if ctx.is_log else 0
    if service.normally_up:
        flags |= st.FLAG_NORMALLY_UP
    if service.exit_requested:
        flags |= st.FLAG_EXIT_REQUESTED
    if service.adopted:
        flags |= st.FLAG_ADOPTED
    if service.finishing:
        flags |= st.FLAG_FINISHING
    if service.pid and service.notifying:
        flags |= st.FLAG_NOTIFYING
    if service.failed:
        flags |= st.FLAG_FAILED
    return st.ServiceRecord(
        name=ctx.table_name,
        pid=service.pid, want=_TABLE_WANT[service.want], paused=bool(service.pid and service.paused),
        state=_TABLE_STATE[service.state], since_ns=_ns(service.label), starts=service.starts,
        restarts=service.restarts, last_status=service.last_status, flags=flags, ready_ns=_ns(service.ready_label),
        backoff_ms=int(service.delay * 1000), finish_failures=service.finish_failures,
        kill_escalations=service.kill_escalations,
    )


_TABLE_STATE = {"down": st.STATE_DOWN, "up": st.STATE_UP, "stopping": st.STATE_STOPPING}
_TABLE_WANT = {WANT_UP: st.WANT_UP, WANT_DOWN: st.WANT_DOWN, WANT_ONCE: st.WANT_ONCE}


def _ns(label: bytes) -> int:
    """A TAI64N label as ns since the epoch, 0 for b"" (never, not ready)."""
    if not label:
        return 0
    seconds, nanos = tai64n.unpack(label)
    return seconds * 1_000_000_000 + nanos


def running_from_status(dirfd: int, supfd: int) -> tuple[int, bytes, bytes, bool, int] | None:
    """A service left running by a supervisor that died: (pid, label, want, paused, pidfd), else None.

    DIRFD is the service directory, SUPFD its ``supervise/``.  The lock was free, so no supervisor
    holds the directory, and the status names a pid.  Adopting it makes that process the one
    ``svc -k`` signals as root, so the status must be ours and name the process we started:

    * ``status`` is a regular file (not a link) owned by our own user: only we write it, and
      the service's owner cannot make a file of root's;
    * the process is alive and started within two seconds of the status label (a start
      writes the label right after the spawn), which a recycled pid does not;
    * and either ``supervise/`` is ours and nobody else may write in it (so nobody else put
      the status there), or the process works in the service directory.  ``supervise/``
      made by the service's owner could hold a status of ours moved from another of their
      services; the working directory is not required otherwise, because a service may
      leave its directory (``cd /var/qmail && exec ...``) and must still be taken over.

    The pidfd is opened before the checks, so a process that exits during them is not
    taken (the pid could be somebody else's by then); the caller owns it.
    """
    data = read_own(supfd, "status", statusfile.MAX_SIZE)  # all that statusfile.decode reads
    try:
        status = statusfile.decode_any(data or b"")  # runit's 20-byte status starts with the 18 bytes; s6's is 35
    except ValueError:
        return None
    if data and len(data) == statusfile.RUNIT.size and statusfile.RUNIT.decode(data).finishing:
        return None  # the pid is runsv's "finish" one: that is supervise/restart's to take over
    pid, label = status.pid, status.label
    if pid <= 1:
        return None
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        if not (_started_at(pid, status.seconds) and (_ours_alone(supfd) or _works_in(pid, dirfd))) or exited(pidfd):
            os.close(pidfd)
            return None
    except BaseException:
        os.close(pidfd)
        raise
    want = status.want if status.want in (WANT_UP, WANT_DOWN) else WANT_ONCE
    return pid, label, want, status.paused, pidfd


def running_in(path: str) -> tuple[int, bytes, bytes, bool, int] | None:
    """:func:`running_from_status` for the service directory PATH, with ``supervise/`` reached as svc reaches it."""
    from prefork.control.svok import open_supervise_dir

    try:
        dirfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        supfd = open_supervise_dir(dirfd)  # a link only if root or we made it
    except OSError:
        os.close(dirfd)
        return None
    try:
        return running_from_status(dirfd, supfd)
    finally:
        os.close(supfd)
        os.close(dirfd)


def exited(pidfd: int) -> bool:
    """The process of PIDFD has ended (its pidfd polls as readable)."""
    watch = select.poll()  # not select(): svscan's descriptors go far past FD_SETSIZE
    watch.register(pidfd, select.POLLIN)
    return bool(watch.poll(0))


def reopen_pipe(pid: int, fd: int, pidfd: int) -> tuple[int, int] | None:
    """Both ends of the FIFO that PID (alive as PIDFD) holds as FD, reopened through /proc, blocking; else None."""
    proc = f"/proc/{pid}/fd/{fd}"
    try:
        if not stat.S_ISFIFO(os.stat(proc).st_mode):
            return None
        r = os.open(proc, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        w = os.open(proc, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # never blocks: r is a reader
    except OSError:
        os.close(r)
        return None
    rst, wst = os.fstat(r), os.fstat(w)
    # Both opens reached one FIFO, and PID was alive after them: /proc/PID was not somebody else's by then.
    if not stat.S_ISFIFO(rst.st_mode) or (rst.st_dev, rst.st_ino) != (wst.st_dev, wst.st_ino) or exited(pidfd):
        os.close(r)
        os.close(w)
        return None
    os.set_blocking(r, True)
    os.set_blocking(w, True)
    return r, w


def _finish_alive(pid: int, ticks: int, dirfd: int, supfd: int) -> int:
    """A pidfd of the ./finish PID that supervise/restart names, if it still runs and is the process started at
    TICKS (exactly: never a bare pid) and, as for ./run, supervise/ is ours alone or it works in DIRFD; else -1."""
    if pid <= 1 or not ticks:
        return -1
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return -1
    if proc.running(pid, ticks, known=True) and (_ours_alone(supfd) or _works_in(pid, dirfd)) and not exited(pidfd):
        return pidfd
    os.close(pidfd)
    return -1


def _started_at(pid: int, seconds: int) -> bool:
    """PID is alive and started (as far as /proc is sure) within two seconds of the unix time SECONDS."""
    try:
        return proc.running(pid, proc.ticks_at(seconds), 2 * proc.HZ, known=True)
    except (OSError, ValueError):  # no /proc/stat: no start time to compare
        return False


def _ours_alone(supfd: int) -> bool:
    """SUPFD is a directory of our own user that nobody else may write in."""
    try:
        st = os.fstat(supfd)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022


def _works_in(pid: int, dirfd: int) -> bool:
    """PID's working directory is the directory DIRFD."""
    try:
        cwd = os.stat(f"/proc/{pid}/cwd")
        here = os.fstat(dirfd)
    except OSError:
        return False
    return (cwd.st_dev, cwd.st_ino) == (here.st_dev, here.st_ino)


__all__ = ["Engine", "StartupError", "Supervised", "exited", "reopen_pipe", "running_from_status",
           "running_in"]
