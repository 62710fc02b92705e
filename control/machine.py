"""The state machine of one supervised service, with every OS call behind a seam.

This is daemontools' supervise (docs/CONTRACTS.md, supervise) as a pure object: it keeps the state
(pid, want up/down/once, paused, exit requested, the TAI64N label of the last
pid change) and reacts to four events -- boot, a control byte, the exit of the
service, and a timer -- by calling the :class:`Seam`.  The engine gives it a
real seam (spawn, kill, the status files, a timer heap); the unit tests give it
a fake one and check every control byte in every state without processes.

One deliberate difference from 0.76: supervise sleeps one second after every
start and handles nothing meanwhile.  Here a start that comes less than
``THROTTLE`` seconds after the previous one is *deferred* to that moment, and
control bytes are handled at once, so ``svc -u; svc -d`` is down at once and one
slow service never holds up the others of a shared loop.  Two starts are still
never less than a second apart.  A ``d`` during the deferral cancels the start;
a ``u`` or ``o`` after it makes it again at the same moment, counted as a start
but not as a restart (``restarts`` counts only starts caused by an exit).

s6's opt-in files of a service directory are honoured in every mode
(docs/CONTRACTS.md, s6 service directories): ``finish`` runs after each exit
of ``./run`` and the next start waits for it (killed after ``timeout-finish``);
``down-signal`` replaces TERM for ``d``; ``timeout-kill`` sends KILL to a
service still alive that long after it; ``notification-fd`` makes readiness
the service's own newline (without it, a service is never ready, as in s6).  The machine
reads each file when it needs it (``Seam.setting``), as s6-supervise does, so
a service costs no memory for files it does not have.

The mode (``--runit``, ``--s6``) changes only what the tables below say: the control bytes known
beyond 0.76's, and (s6) a restart a second after the death instead of the throttle above.

In runit mode (``supervise --runit``, ``svscan --runit``) ``x`` is runsv's: it stops the service
as ``d`` does before the supervisor exits, a later ``d``, ``u`` or ``o`` takes it back, and a log
ignores it (docs/CONTRACTS.md, runit semantics).  :meth:`Service.retire` is 0.76's ``x``, which
svscan also uses to end a log without a signal.
"""

from __future__ import annotations

import signal

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: supervise and svscan do not import typing
if TYPE_CHECKING:
    from prefork.control.engine import Supervised

THROTTLE = 1.0

WANT_UP, WANT_DOWN, WANT_ONCE = b"u", b"d", b"o"

# Control bytes that only send a signal to a running service.
SIGNAL_BYTES = {
    ord("h"): signal.SIGHUP,
    ord("a"): signal.SIGALRM,
    ord("i"): signal.SIGINT,
    ord("t"): signal.SIGTERM,
    ord("k"): signal.SIGKILL,
}
# runit's sv sends these too; 0.76 ignores them, so they act only in --runit mode.
RUNIT_SIGNAL_BYTES = {ord("q"): signal.SIGQUIT, ord("1"): signal.SIGUSR1, ord("2"): signal.SIGUSR2}
# s6-svc's: runit's, plus b and y; r ("restart": the down signal, want unchanged) is t here.
S6_SIGNAL_BYTES = {**RUNIT_SIGNAL_BYTES, ord("b"): signal.SIGABRT, ord("y"): signal.SIGWINCH, ord("r"): signal.SIGTERM}
# The modes (one per status format of control/statusfile.py) and the signal bytes each adds to 0.76's.
EXTRA_SIGNAL_BYTES: dict[str, dict[int, signal.Signals]] = {
    "daemontools": {}, "runit": RUNIT_SIGNAL_BYTES, "s6": S6_SIGNAL_BYTES}
# s6-svc's letters that are no signal: O (once at most: want down, no start), Q (O and ./down made),
# D (d and ./down made), U (u and ./down removed).  Only --s6 knows them.
WANT_LETTERS: dict[str, frozenset[int]] = {
    "daemontools": frozenset(), "runit": frozenset(), "s6": frozenset(b"OQDU")}
# s6-supervise restarts a dead service a THROTTLE after its death, however long it ran, and starts at once
# on u (0.76 and runsv: a restart at once unless the service started less than THROTTLE before; any start
# at least THROTTLE after the previous one).
PAUSE_AFTER_EXIT = {"daemontools": False, "runit": False, "s6": True}

EXIT_FAILED_START = 111 << 8  # the wait status of 0.76's child that could not exec ./run
FINISH_TIMEOUT_MS = 5000  # s6-supervise's default timeout-finish
# The restart policy's files (docs/CONTRACTS.md, Restart policy): back-off and permanent failure, opt-in.
BACKOFF_RESET_MS = 10000  # a run this long is healthy: the back-off starts again from THROTTLE
FAILURE_WINDOW_MS = 60000  # failure-deaths counts the deaths of this last window
MAX_FAILURE_DEATHS = 1000  # a larger failure-deaths counts as this: the deaths kept stay few
FINISH_NO_RESTART = 125  # s6: a finish that exits 125 leaves the service down


class Seam:
    """What a service asks of the world.  The engine implements it for real; tests fake it."""

    def spawn(self, service: Service) -> int:
        """Start ./run for SERVICE and return its pid; raise OSError if it cannot be started."""
        raise NotImplementedError

    def kill(self, service: Service, sig: int) -> None:
        """Send SIG to the service's pid (never to its process group, as 0.76)."""
        raise NotImplementedError

    def monotonic(self) -> float:
        raise NotImplementedError

    def label(self) -> bytes:
        """The TAI64N label of now."""
        raise NotImplementedError

    def publish(self, service: Service) -> None:
        """Write the status file(s) and the shared-memory slot of SERVICE."""
        raise NotImplementedError

    def schedule(self, service: Service, when: float) -> None:
        """Call ``service.timer()`` at monotonic time WHEN."""
        raise NotImplementedError

    def report(self, service: Service, text: str) -> None:
        """A line for stderr."""
        raise NotImplementedError

    def finished(self, service: Service) -> None:
        """SERVICE is down after ``x``: its supervisor is done with it."""
        raise NotImplementedError

    # The s6 files.  These defaults are a directory without them, which is what the machine's unit tests
    # of daemontools' behaviour fake.
    def setting(self, service: Service, name: str) -> int | None:
        """The number in the service directory's file NAME (``down-signal``, ``timeout-kill``,
        ``timeout-finish``); None when the file is absent or (after a warning) unusable."""
        return None

    def spawn_finish(self, service: Service, args: list[str]) -> int:
        """Start ./finish with ARGS and return its pid; 0 if there is none or it cannot start (after a warning)."""
        return 0

    def kill_pid(self, service: Service, pid: int, sig: int) -> None:
        """Send SIG to PID (./finish's: the service's own pid is :meth:`kill`'s)."""

    def notifying(self, service: Service) -> bool:
        """The ./run just spawned got a notification-fd: it is not ready until it says so."""
        return False

    def directory_name(self, service: Service) -> str:
        """./finish's third argument: the directory as s6-svscan names it to s6-supervise (``NAME/log``, where
        the messages say ``log``)."""
        return service.name

    def set_down(self, service: Service, present: bool) -> None:
        """Create (PRESENT) or remove the service's ``down`` file (s6-svc -D, -U, -Q)."""
        raise NotImplementedError

    def persist(self, service: Service) -> None:
        """The restart state (back-off, deaths, failure, the running ./finish) changed: keep it where the next
        supervisor finds it if this one is killed (control/restartfile.py)."""


class Service:
    """One service: state plus the transitions of daemontools' supervise.

    ``name`` is the directory as supervise would print it in messages
    (``DIR`` for ``supervise DIR``; ``NAME`` or ``log`` under svscan).
    """

    __slots__ = (
        "seam", "name", "mode", "extra_signals", "want_letters", "pause_after_exit", "pid", "want", "paused",
        "exit_requested", "term_sent", "label",
        "last_start", "start_pending", "restart_pending", "starts", "restarts", "last_status",
        "normally_up", "adopted", "done", "context", "ready_label", "notifying", "finishing", "finish_pid",
        "kill_at", "finish_kill_at", "once_after_finish", "log", "delay", "not_before", "deaths", "failed",
        "start_at", "finish_failures", "kill_escalations",
    )

    def __init__(self, seam: Seam, name: str, *, mode: str = "daemontools", context: Supervised | None = None,
                 log: bool = False) -> None:
        self.seam = seam
        self.name = name
        self.mode = mode  # "daemontools", "runit" or "s6": which control bytes beyond 0.76's are known
        self.extra_signals = EXTRA_SIGNAL_BYTES[mode]
        self.want_letters = WANT_LETTERS[mode]
        self.pause_after_exit = PAUSE_AFTER_EXIT[mode]
        self.log = log  # a NAME/log service of svscan: runit's runsv ignores x for it
        # The restart policy (backoff-max, failure-deaths): the delay of the last back-off (0: none), the
        # monotonic time before which no automatic restart is made, the recent deaths, permanently failed.
        self.delay = 0.0
        self.not_before = 0.0
        self.deaths: list[float] = []
        self.failed = False
        self.start_at = 0.0  # when the deferred start (start_pending) is due: an earlier timer finds nothing to do
        self.finish_failures = 0  # ./finish ended by a signal (timeout-finish's KILL too) or an exit but 0 or 125
        self.kill_escalations = 0  # SIGKILLs timeout-kill sent to a service still alive after its down signal
        # The engine's per-service data (fds, table slot): every Service the engine makes has one, and only the
        # engine and its users read it.  The machine never does, so the fake seams of the unit tests leave it None.
        self.context: Supervised = context  # type: ignore[assignment]  # None only where nothing reads it (tests)
        self.pid = 0
        self.want = WANT_UP
        self.paused = False
        self.exit_requested = False
        self.term_sent = False
        self.label = b""
        self.last_start: float | None = None
        self.start_pending = False
        self.restart_pending = False
        self.starts = 0
        self.restarts = 0
        self.last_status = -1
        self.normally_up = True
        self.adopted = False
        self.done = False
        # Readiness (s6's): the TAI64N label of the moment the service became ready, b"" while it is not.  Only a
        # ./run with a notification-fd (notifying) ever is: the engine calls ready() on its newline.  Without one,
        # s6-supervise 2.11 never calls a service ready either (s6-svwait -U waits for ever).
        self.ready_label = b""
        self.notifying = False
        self.finishing = False  # ./finish is running (finish_pid); the next start waits for it
        self.finish_pid = 0
        self.kill_at = 0.0  # monotonic time of the KILL that timeout-kill promises after d, 0 = none
        self.finish_kill_at = 0.0  # the same for ./finish and timeout-finish
        self.once_after_finish = False  # an o came while ./finish ran: start once when it ends

    # -- events --------------------------------------------------------------------------
    def prepare(self, down_file: bool) -> None:
        """supervise's start-up before ``ok`` exists: want from the ``down`` file, the first status written."""
        self.normally_up = not down_file
        self.want = WANT_DOWN if down_file else WANT_UP
        self.label = self.seam.label()
        self.seam.publish(self)

    def boot(self) -> None:
        """The main loop begins: the status is written again and the service started if wanted."""
        self.seam.publish(self)
        if self.want == WANT_UP:
            self._start()

    def adopt(self, pid: int, label: bytes, want: bytes, paused: bool, normally_up: bool, notify: bool = False) -> None:
        """Take over a service left running by a supervisor that was killed (no second copy is started)."""
        self.normally_up = normally_up
        self.pid = pid
        self.label = label
        self.want = want if want in (WANT_UP, WANT_DOWN) else WANT_ONCE
        self.paused = paused
        self.adopted = True
        self.ready_label = b""  # with a notification-fd, its readiness went with the old supervisor's pipe
        self.notifying = notify
        self.seam.publish(self)

    def restore(self, delay: float, not_before: float, failed: bool, deaths: list[float], finish_pid: int = 0,
                finish_kill_at: float = 0.0) -> None:
        """Take back the restart state a supervisor killed with SIGKILL left (control/restartfile.py), after
        prepare() or adopt() and before boot(); times are the seam's monotonic ones, FINISH_PID a ./finish
        still running (checked by the caller: it is the one that supervisor started).

        The state is data from a file: it counts only as far as the service's files allow now
        (docs/CONTRACTS.md, Taking over after a SIGKILL).  A back-off needs ``backoff-max`` and ends at most
        one capped delay from now; deaths and a permanent failure need ``failure-deaths`` and count only inside
        its window; the KILL of the finish comes at most ``timeout-finish`` from now.
        """
        now = self.seam.monotonic()
        cap = self.seam.setting(self, "backoff-max")
        if cap and delay > 0 and not self.pid:
            self.delay = min(max(delay, THROTTLE), max(cap / 1000, THROTTLE))
            self.not_before = min(not_before, now + self.delay)
        limit = self.seam.setting(self, "failure-deaths")
        if limit:
            limit = min(limit, MAX_FAILURE_DEATHS)
            window_ms = self.seam.setting(self, "failure-window")
            window = (FAILURE_WINDOW_MS if window_ms is None else window_ms) / 1000
            kept = sorted(t for t in deaths if now - window < t <= now)
            self.deaths = kept[-(limit - 1):] if limit > 1 else []
            if failed and not self.pid:
                self.failed = True
                self.want = WANT_DOWN
        if finish_pid and not self.pid:
            self.finish_pid = finish_pid
            self.finishing = True
            timeout = self._finish_timeout()
            if timeout is not None:
                self.finish_kill_at = min(finish_kill_at, now + timeout) if finish_kill_at > 0 else now + timeout
                self.seam.schedule(self, self.finish_kill_at)
        self.seam.persist(self)

    def control(self, byte: int) -> None:
        """One byte from supervise/control."""
        if self.done:
            return
        if byte in (0x64, 0x75, 0x6F) and self.mode == "runit":
            self.exit_requested = False  # runsv's x is a want like the others: a later d, u or o replaces it
        if byte == 0x64:  # d
            self._stop()
        elif byte in (0x75, 0x6F):  # u, o
            self.want = WANT_UP if byte == 0x75 else WANT_ONCE
            self._rearm()
            self.seam.publish(self)
            if not self.pid:
                self.once_after_finish = bool(self.finish_pid) and byte == 0x6F
                self._start()
        elif byte == 0x70:  # p
            self.paused = True
            self.seam.publish(self)
            if self.pid:
                self.seam.kill(self, signal.SIGSTOP)
        elif byte == 0x63:  # c
            self.paused = False
            self.seam.publish(self)
            if self.pid:
                self.seam.kill(self, signal.SIGCONT)
        elif byte == 0x78:  # x
            if self.mode != "runit":
                self.retire()
            elif not self.log:
                # runsv's x stops the service, then exits; it ignores x for a log, which ends with its
                # service (docs/CONTRACTS.md, runit semantics).
                self.exit_requested = True
                self._stop()
                if not self.pid and not self.finish_pid:
                    self._finish()
        elif byte in self.want_letters:
            self._s6_want(byte)
        else:
            sig = SIGNAL_BYTES.get(byte)
            if sig is None:
                sig = self.extra_signals.get(byte)
            if sig is not None and self.pid:
                self.seam.kill(self, sig)
                if sig == signal.SIGTERM:
                    self.term_sent = True
                    if self.mode == "runit":
                        self.seam.publish(self)  # runit's byte 18 says "got TERM"

    def _s6_want(self, byte: int) -> None:
        """s6-svc's O, Q, D, U: want down without a stop (O, Q) or d/u, with ./down made (Q, D) or removed (U)."""
        if byte != 0x4F:  # O
            self.normally_up = byte == 0x55  # U
            self.seam.set_down(self, not self.normally_up)
        if byte in (0x4F, 0x51):  # O, Q: a running service runs on, once; a down one stays down
            self.want = WANT_ONCE if self.pid else WANT_DOWN
            self.restart_pending = False
            self.seam.publish(self)
        else:
            self.control(0x64 if byte == 0x44 else 0x75)  # D is d, U is u

    def retire(self, want_down: bool = False) -> None:
        """0.76's x: the supervisor is done with the service as soon as it is down, without stopping it.

        WANT_DOWN marks it wanted down as well, still without a signal: runsv's end of a log, which
        reads its pipe to the end (its status says ``want down``, its stat ``want exit``).
        """
        if self.done:
            return
        self.exit_requested = True
        if want_down:
            self.want = WANT_DOWN
            self.restart_pending = False
        self.seam.publish(self)
        if not self.pid and not self.finish_pid:  # else after ./finish, as s6-supervise does
            self._finish()

    def exited(self, status: int) -> None:
        """The service's process ended with wait status STATUS (-1 when unknown: an adopted pid)."""
        self.pid = 0
        self.term_sent = False
        self.adopted = False
        self.kill_at = 0.0
        self.ready_label = b""
        self.notifying = False
        self.last_status = status
        started, self.label = self.label, self.seam.label()
        if self.want == WANT_UP and not self.exit_requested:
            self._died(self.seam.monotonic())
        self.finish_pid = self.seam.spawn_finish(self, self._finish_args(status))
        if self.finish_pid:
            self.finishing = True
            if self.mode == "runit":
                self.label = started  # runsv's label stays the start of ./run until its finish ends
            timeout = self._finish_timeout()
            if timeout is not None:
                self.finish_kill_at = self.seam.monotonic() + timeout
            self.seam.persist(self)  # first: a status that says "finishing" means the finish is kept too
            self.seam.publish(self)
            if timeout is not None:
                self.seam.schedule(self, self.finish_kill_at)
            return
        self._settle()

    def _finish_timeout(self) -> float | None:
        """timeout-finish in seconds (s6's default 5), None for no limit (0, or --runit: runsv has none)."""
        if self.mode == "runit":
            return None
        timeout = self.seam.setting(self, "timeout-finish")
        if timeout is None:
            timeout = FINISH_TIMEOUT_MS
        return timeout / 1000 if timeout else None

    def finish_exited(self, status: int) -> None:
        """./finish ended with wait status STATUS: now the service may start again (s6: unless it exited 125).

        STATUS -1: unknown (an adopted finish, whose wait status went to its real parent): no failure, no 125.
        """
        self.finish_pid = 0
        self.finish_kill_at = 0.0
        self.finishing = False
        if self.mode == "runit":
            self.label = self.seam.label()  # runsv: down from the end of the finish
        self.seam.persist(self)
        if status >= 0 and (status & 0x7F or status >> 8 not in (0, FINISH_NO_RESTART)):
            self.finish_failures += 1
        if self.mode != "runit" and status >= 0 and status >> 8 == FINISH_NO_RESTART and not status & 0x7F:
            self.want = WANT_DOWN
        once, self.once_after_finish = self.once_after_finish, False
        self._settle()
        if once and self.want == WANT_ONCE and not self.done:
            self._start()

    def ready(self) -> None:
        """The service wrote its readiness newline on its notification-fd."""
        if self.pid and self.notifying and not self.ready_label:
            self.ready_label = self.seam.label()
            self.seam.publish(self)

    def _settle(self) -> None:
        """The service is down and no ./finish runs: restart, stay down, or end after ``x``."""
        now = self.seam.monotonic()
        if self.want == WANT_UP and not self.exit_requested and not self.pause_after_exit and not self._throttled(now):
            # 0.76 writes the exit, forks, then writes the new pid.  Here the spawn comes first and both writes
            # follow in that order, so the restart does not wait for two file operations; a reader sees the
            # same sequence of status files (0.76 too shows "down" while its child is already starting).
            self._start(automatic=True, announce_down=True)
            return
        self.seam.publish(self)
        if self.exit_requested:
            self._finish()
        elif self.want == WANT_UP and self.pause_after_exit:
            self._start_after_pause(now)  # s6: a second after the death, or after ./finish
        elif self.want == WANT_UP:
            self._start(automatic=True)  # deferred to the end of the throttle second

    def timer(self) -> None:
        """A deadline may have come: the KILLs of timeout-kill and timeout-finish, the end of the throttle second.

        A timer whose deadline was cancelled (the process ended first) finds nothing to do; a deferred start
        that is still early is deferred again by _start.
        """
        now = self.seam.monotonic()
        if self.kill_at and now >= self.kill_at:
            self.kill_at = 0.0
            if self.pid:
                self.kill_escalations += 1
                self.seam.kill(self, signal.SIGKILL)
        if self.finish_kill_at and now >= self.finish_kill_at:
            self.finish_kill_at = 0.0
            if self.finish_pid:
                self.seam.report(self, f"supervise: warning: {self.name}/finish still running after timeout-finish:"
                                       " sending it SIGKILL")
                self.seam.kill_pid(self, self.finish_pid, signal.SIGKILL)
        if not self.start_pending or self.seam.monotonic() < self.start_at:
            return
        self.start_pending = False
        automatic, self.restart_pending = self.restart_pending, False
        if self.pid or self.done or self.exit_requested or self.want == WANT_DOWN:
            return
        self._start(automatic)

    # -- helpers -------------------------------------------------------------------------
    def _stop(self) -> None:
        """d: want down, and the down signal (TERM unless ``down-signal`` says otherwise) then CONT to a
        running service, with SIGKILL ``timeout-kill`` ms later if it is still alive."""
        self.want = WANT_DOWN
        self.once_after_finish = False
        self.restart_pending = False  # a deferred restart is cancelled: a u/o before its moment is no restart
        if self.pid:
            self.seam.kill(self, self.seam.setting(self, "down-signal") or signal.SIGTERM)
            self.seam.kill(self, signal.SIGCONT)
            self.paused = False
            self.term_sent = True
            timeout = self.seam.setting(self, "timeout-kill")
            if timeout and not self.kill_at:  # a second d does not put the KILL off
                self.kill_at = self.seam.monotonic() + timeout / 1000
                self.seam.schedule(self, self.kill_at)
        self.seam.publish(self)

    @property
    def state(self) -> str:
        """"up", "stopping" (TERM sent, still running) or "down"."""
        if not self.pid:
            return "down"
        return "stopping" if self.term_sent else "up"

    def _finish_args(self, status: int) -> list[str]:
        """./finish's arguments for the wait status STATUS (-1: unknown, the exit of an adopted pid).

        s6: the exit code, or 256 if killed by a signal; the signal number or 0; the directory name.
        runit's runsv: the exit code, or -1 if not a normal exit; the signal number or 0.
        """
        if status < 0:
            code, sig = -1, 0
        elif status & 0x7F:
            code, sig = -1 if self.mode == "runit" else 256, status & 0x7F
        else:
            code, sig = status >> 8, 0
        return [str(code), str(sig)] if self.mode == "runit" else [str(code), str(sig), self.seam.directory_name(self)]

    def _throttled(self, now: float) -> bool:
        return now < self._earliest()

    def _earliest(self) -> float:
        """The first moment the next start may be made: a second after the last start (0.76's throttle; s6
        counts its second from the death instead, in _start_after_pause), and not before a back-off ends."""
        throttle = self.last_start + THROTTLE if self.last_start is not None and not self.pause_after_exit else 0.0
        return max(throttle, self.not_before)

    # -- the restart policy (docs/CONTRACTS.md, Restart policy) --------------------------------
    def _died(self, now: float) -> None:
        """A death while wanted up: the back-off's next delay, and the count towards permanent failure."""
        cap = self.seam.setting(self, "backoff-max")
        if cap:
            reset = self.seam.setting(self, "backoff-reset")
            reset = BACKOFF_RESET_MS if reset is None else reset
            if self.last_start is None or (now - self.last_start) * 1000 >= reset:
                self.delay = 0.0  # it ran long enough (or was adopted): healthy, start again from the bottom
            self.delay = THROTTLE if not self.delay else min(self.delay * 2, max(cap / 1000, THROTTLE))
            self.not_before = now + self.delay
        else:
            self.delay = self.not_before = 0.0
        limit = self.seam.setting(self, "failure-deaths")
        if not limit:
            self.deaths.clear()
            self.seam.persist(self)
            return
        limit = min(limit, MAX_FAILURE_DEATHS)
        window_ms = self.seam.setting(self, "failure-window")
        window = (FAILURE_WINDOW_MS if window_ms is None else window_ms) / 1000
        self.deaths = [t for t in self.deaths if now - t < window][-(limit - 1):] if limit > 1 else []
        self.deaths.append(now)
        failed = len(self.deaths) >= limit
        if failed:
            self.failed = True
            self.want = WANT_DOWN
            self.restart_pending = False
        self.seam.persist(self)  # before the line: whoever reads it and kills the supervisor finds the failure kept
        if failed:
            self.seam.report(self, f"supervise: warning: {self.name} died {limit} times in {window:g} seconds:"
                                   " not restarted until svc -u")

    def _rearm(self) -> None:
        """u or o: a permanently failed service may start again, and a back-off is forgotten."""
        if self.failed or self.deaths or self.delay:
            self.failed = False
            self.deaths.clear()
            self.delay = self.not_before = 0.0
            self.seam.persist(self)

    def _start(self, automatic: bool = False, announce_down: bool = False) -> None:
        """Start ./run now, or at the end of the throttle second.

        ANNOUNCE_DOWN (from :meth:`exited`, never throttled): the exit is
        written right after the spawn attempt, before anything else.
        """
        if self.pid or self.done or self.finish_pid:
            return
        now = self.seam.monotonic()
        if self._throttled(now):
            self.restart_pending = self.restart_pending or automatic
            if not self.start_pending:
                self.start_pending = True
                self.start_at = self._earliest()
                self.seam.schedule(self, self.start_at)
            return
        self.last_start = now
        self.starts += 1
        if automatic:
            self.restarts += 1
        error: OSError | None = None
        try:
            pid = self.seam.spawn(self)
        except OSError as err:
            pid, error = 0, err
        if announce_down:
            self.seam.publish(self)  # the exit
        if error is not None:
            from prefork.djb import errstr

            # 0.76's child prints this and exits 111; the same line, and the same retry a second later.
            self.seam.report(self, f"supervise: fatal: unable to start {self.name}/run: {errstr(error)}")
            self.label = self.seam.label()
            self.paused = False
            self.last_status = EXIT_FAILED_START
            self.seam.publish(self)
            if self.exit_requested:
                self._finish()
            elif self.want == WANT_UP and self.pause_after_exit:
                self._start_after_pause(now)
            elif self.want == WANT_UP:
                self._start(automatic=True)
            return
        self.pid = pid
        self.paused = False
        self.term_sent = False
        self.label = self.seam.label()
        self.ready_label = b""
        self.notifying = self.seam.notifying(self)
        self.seam.publish(self)

    def _start_after_pause(self, now: float) -> None:
        """s6: the restart of a dead (or unstartable) service, THROTTLE after NOW; :meth:`timer` makes it."""
        self.start_pending = self.restart_pending = True
        self.start_at = now + THROTTLE
        self.seam.schedule(self, self.start_at)

    def _finish(self) -> None:
        self.seam.publish(self)  # written once more just before supervise exits
        self.done = True
        self.seam.finished(self)
