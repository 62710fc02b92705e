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

    def set_down(self, service: Service, present: bool) -> None:
        """Create (PRESENT) or remove the service's ``down`` file (s6-svc -D, -U, -Q)."""
        raise NotImplementedError


class Service:
    """One service: state plus the transitions of daemontools' supervise.

    ``name`` is the directory as supervise would print it in messages
    (``DIR`` for ``supervise DIR``; ``NAME`` or ``log`` under svscan).
    """

    __slots__ = (
        "seam", "name", "mode", "extra_signals", "want_letters", "pause_after_exit", "pid", "want", "paused",
        "exit_requested", "term_sent", "label",
        "last_start", "start_pending", "restart_pending", "starts", "restarts", "last_status",
        "normally_up", "adopted", "done", "context", "ready_label", "finishing", "log",
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
        # s6's readiness: the TAI64N label of the moment the running service became ready, b"" while not.
        # Without a notification-fd s6 never calls a service ready (its status keeps the bit clear), so
        # nothing here sets it; ``finishing`` is true while ./finish runs (no ./finish is run here yet).
        self.ready_label = b""
        self.finishing = False

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

    def adopt(self, pid: int, label: bytes, want: bytes, paused: bool, normally_up: bool) -> None:
        """Take over a service left running by a supervisor that was killed (no second copy is started)."""
        self.normally_up = normally_up
        self.pid = pid
        self.label = label
        self.want = want if want in (WANT_UP, WANT_DOWN) else WANT_ONCE
        self.paused = paused
        self.adopted = True
        self.seam.publish(self)

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
            self.seam.publish(self)
            if not self.pid:
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
                if not self.pid:
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
        if not self.pid:
            self._finish()

    def exited(self, status: int) -> None:
        """The service's process ended with wait status STATUS (-1 when unknown: an adopted pid)."""
        self.pid = 0
        self.term_sent = False
        self.adopted = False
        self.ready_label = b""  # ready only while up
        self.last_status = status
        self.label = self.seam.label()
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
            self._start_after_pause(now)
        elif self.want == WANT_UP:
            self._start(automatic=True)  # deferred to the end of the throttle second

    def timer(self) -> None:
        """The throttle second is over: make the deferred start if it is still wanted."""
        if not self.start_pending:
            return
        self.start_pending = False
        automatic, self.restart_pending = self.restart_pending, False
        if self.pid or self.done or self.exit_requested or self.want == WANT_DOWN:
            return
        self._start(automatic)

    # -- helpers -------------------------------------------------------------------------
    def _stop(self) -> None:
        """d: want down, and TERM then CONT to a running service."""
        self.want = WANT_DOWN
        self.restart_pending = False  # a deferred restart is cancelled: a u/o before its moment is no restart
        if self.pid:
            self.seam.kill(self, signal.SIGTERM)
            self.seam.kill(self, signal.SIGCONT)
            self.paused = False
            self.term_sent = True
        self.seam.publish(self)

    @property
    def state(self) -> str:
        """"up", "stopping" (TERM sent, still running) or "down"."""
        if not self.pid:
            return "down"
        return "stopping" if self.term_sent else "up"

    def _throttled(self, now: float) -> bool:
        if self.pause_after_exit:  # s6: the second is counted from the death (exited()), a u starts at once
            return False
        return self.last_start is not None and now < self.last_start + THROTTLE

    def _start(self, automatic: bool = False, announce_down: bool = False) -> None:
        """Start ./run now, or at the end of the throttle second.

        ANNOUNCE_DOWN (from :meth:`exited`, never throttled): the exit is
        written right after the spawn attempt, before anything else.
        """
        if self.pid or self.done:
            return
        now = self.seam.monotonic()
        if self._throttled(now):
            self.restart_pending = self.restart_pending or automatic
            if not self.start_pending:
                self.start_pending = True
                assert self.last_start is not None  # for mypy: _throttled() is only true after a start
                self.seam.schedule(self, self.last_start + THROTTLE)
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
        self.seam.publish(self)

    def _start_after_pause(self, now: float) -> None:
        """s6: the restart of a dead (or unstartable) service, THROTTLE after NOW; :meth:`timer` makes it."""
        self.start_pending = self.restart_pending = True
        self.seam.schedule(self, now + THROTTLE)

    def _finish(self) -> None:
        self.seam.publish(self)  # written once more just before supervise exits
        self.done = True
        self.seam.finished(self)
