"""The supervise state machine (control/machine.py) driven through a fake seam: no processes, a fake clock.

The oracle is docs/CONTRACTS.md, supervise (and runit status for runit mode) and the Debian binary's
behaviour: every control byte in every state, checking the exact signals sent,
each status publication (with what it showed), the resulting want/paused/pid
and the start/restart counts.  Then the restart throttle (a start is deferred,
never slept), exits, failed starts, ``x``, boot and adoption; last s6's files (``finish`` and its
arguments, ``timeout-finish``, ``down-signal``, ``timeout-kill``, readiness) and their parser.
"""

from __future__ import annotations

import errno
import signal
from dataclasses import dataclass
from typing import NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefork import tai64n
from prefork.control.machine import EXIT_FAILED_START, THROTTLE, WANT_DOWN, WANT_ONCE, WANT_UP, Seam, Service
from prefork.control.servicedir import parse_setting

TERM, CONT, STOP = signal.SIGTERM, signal.SIGCONT, signal.SIGSTOP
SIGNAL_BYTES = {b"h": signal.SIGHUP, b"a": signal.SIGALRM, b"i": signal.SIGINT, b"t": TERM, b"k": signal.SIGKILL}
RUNIT_SIGNAL_BYTES = {b"q": signal.SIGQUIT, b"1": signal.SIGUSR1, b"2": signal.SIGUSR2}
MEANINGFUL = b"duopchaitkx" + b"q12" + b"vw"  # v w: handled by the GitHub copy of supervise.c, ignored by 0.76 [obs]
OTHER_BYTES = [b for b in range(256) if b not in MEANINGFUL]
ADOPTED_PID = 4242
ADOPTED_LABEL = b"@adopted-lbl"


# -- the fake seam ------------------------------------------------------------------------------
class Snap(NamedTuple):
    """What one publish() showed: the fields the status file and the service table are made of."""

    pid: int
    want: bytes
    paused: bool
    term_sent: bool
    exit_requested: bool
    label: bytes


def snap(service: Service) -> Snap:
    return Snap(service.pid, service.want, service.paused, service.term_sent, service.exit_requested, service.label)


def label_number(n: int) -> bytes:
    """The 12-byte label the fake seam hands out the Nth time it is asked (1-based)."""
    return b"L" + b"%011d" % n


class FakeSeam(Seam):
    """Records every call in order in ``events``; time moves only when the test says so."""

    def __init__(self, first_pid: int = 100) -> None:
        self.now = 0.0
        self.next_pid = first_pid
        self.labels = 0
        self.fail: OSError | None = None  # spawn raises this while set
        self.events: list[tuple] = []
        self.timers: list[tuple[float, Service]] = []
        self.spawn_times: list[float] = []  # every attempt, failed ones included
        self.pids: list[int] = []

    # the seam
    def spawn(self, service: Service) -> int:
        self.spawn_times.append(self.now)
        self.events.append(("spawn",))
        if self.fail is not None:
            raise self.fail
        pid, self.next_pid = self.next_pid, self.next_pid + 1
        self.pids.append(pid)
        return pid

    def kill(self, service: Service, sig: int) -> None:
        self.events.append(("kill", service.pid, sig))

    def monotonic(self) -> float:
        return self.now

    def label(self) -> bytes:
        self.labels += 1
        return label_number(self.labels)

    def publish(self, service: Service) -> None:
        self.events.append(("publish", snap(service)))

    def schedule(self, service: Service, when: float) -> None:
        self.events.append(("schedule", when))
        self.timers.append((when, service))

    def report(self, service: Service, text: str) -> None:
        self.events.append(("report", text))

    def finished(self, service: Service) -> None:
        self.events.append(("finished",))

    def set_down(self, service: Service, present: bool) -> None:
        self.events.append(("set_down", present))

    # the test's side
    def next_label(self) -> bytes:
        return label_number(self.labels + 1)

    def run_timers(self) -> None:
        """Fire every timer due by now, earliest first (as the engine's heap does)."""
        while True:
            due = [t for t in self.timers if t[0] <= self.now]
            if not due:
                return
            timer = min(due, key=lambda t: t[0])
            self.timers.remove(timer)
            timer[1].timer()

    def advance(self, to: float) -> None:
        self.now = to
        self.run_timers()

    def take(self) -> list[tuple]:
        events, self.events = self.events, []
        return events

    def publishes(self) -> list[Snap]:
        return [e[1] for e in self.events if e[0] == "publish"]


@dataclass
class Facts:
    """The observable state of a service (what a command may or may not change)."""

    pid: int
    want: bytes
    paused: bool
    term_sent: bool
    exit_requested: bool
    done: bool
    label: bytes
    starts: int
    restarts: int
    last_status: int

    @classmethod
    def of(cls, s: Service) -> Facts:
        return cls(s.pid, s.want, s.paused, s.term_sent, s.exit_requested, s.done, s.label, s.starts, s.restarts,
                   s.last_status)

    def snap(self) -> Snap:
        return Snap(self.pid, self.want, self.paused, self.term_sent, self.exit_requested, self.label)


class Rig(NamedTuple):
    seam: FakeSeam
    service: Service


# -- states, as fixtures named after what they reproduce ----------------------------------------
@pytest.fixture(params=[False, True], ids=["daemontools", "runit"])
def runit(request) -> bool:
    return request.param


def boot(runit: bool, *, down_file: bool = False, name: str = "svc") -> Rig:
    seam = FakeSeam()
    service = Service(seam, name, mode="runit" if runit else "daemontools")
    service.prepare(down_file)
    service.boot()
    return Rig(seam, service)


def _down_want_up_throttled(runit: bool) -> Rig:
    rig = boot(runit)  # started at 0.0
    rig.seam.now = 0.25
    rig.service.exited(0)  # the restart is deferred to 1.0
    return rig


def _down_want_up_due(runit: bool) -> Rig:
    rig = _down_want_up_throttled(runit)
    rig.seam.now = 1.5
    return rig


def _down_want_down(runit: bool) -> Rig:
    rig = boot(runit, down_file=True)
    rig.seam.now = 5.0
    return rig


def _down_once(runit: bool) -> Rig:
    rig = boot(runit, down_file=True)
    rig.seam.now = 1.0
    rig.service.control(ord("o"))
    rig.seam.now = 3.0
    rig.service.exited(0)
    return rig


def _up(runit: bool) -> Rig:
    rig = boot(runit)
    rig.seam.now = 5.0
    return rig


def _after(command: bytes):
    def build(runit: bool) -> Rig:
        rig = _up(runit)
        rig.service.control(command[0])
        return rig
    return build


def _finished(runit: bool) -> Rig:
    rig = boot(runit, down_file=True)
    rig.service.control(ord("x"))
    assert rig.service.done
    rig.seam.now = 5.0
    return rig


def _adopted(runit: bool) -> Rig:
    seam = FakeSeam()
    service = Service(seam, "svc", mode="runit" if runit else "daemontools")
    service.adopt(ADOPTED_PID, ADOPTED_LABEL, WANT_UP, False, True)
    seam.now = 5.0
    return Rig(seam, service)


BUILDERS = {
    "down_want_up_throttled": _down_want_up_throttled,
    "down_want_up_due": _down_want_up_due,
    "down_want_down": _down_want_down,
    "down_once": _down_once,
    "up": _up,
    "up_paused": _after(b"p"),
    "stopping_after_d": _after(b"d"),
    "stopping_after_t": _after(b"t"),
    "exit_requested_while_up": _after(b"x"),
    "finished": _finished,
    "adopted": _adopted,
}
STATES = list(BUILDERS)


def fresh(state: str, runit: bool) -> Rig:
    """A new service in STATE, its set-up events forgotten."""
    rig = BUILDERS[state](runit)
    rig.seam.take()
    return rig


@pytest.fixture
def down_want_up_throttled(runit) -> Rig:
    """./run exited 0.25 s after its start: down, want up, the restart waiting for 1.0."""
    return fresh("down_want_up_throttled", runit)


@pytest.fixture
def down_want_up_due(runit) -> Rig:
    """The throttle second is over but the timer has not run yet (the engine handles control bytes first)."""
    return fresh("down_want_up_due", runit)


@pytest.fixture
def down_want_down(runit) -> Rig:
    """Booted with a ``down`` file: never started."""
    return fresh("down_want_down", runit)


@pytest.fixture
def down_once(runit) -> Rig:
    """``svc -o`` on a normally-down service, and ./run has exited: down, want once."""
    return fresh("down_once", runit)


@pytest.fixture
def up(runit) -> Rig:
    """Running for 5 s, want up."""
    return fresh("up", runit)


@pytest.fixture
def up_paused(runit) -> Rig:
    """``svc -p``: running, stopped with SIGSTOP."""
    return fresh("up_paused", runit)


@pytest.fixture
def stopping_after_d(runit) -> Rig:
    """``svc -d``: TERM sent, ./run has not exited yet, want down."""
    return fresh("stopping_after_d", runit)


@pytest.fixture
def stopping_after_t(runit) -> Rig:
    """``svc -t``: TERM sent, ./run has not exited yet, still want up."""
    return fresh("stopping_after_t", runit)


@pytest.fixture
def exit_requested_while_up(runit) -> Rig:
    """``svc -x`` while running: supervise goes on until ./run exits."""
    return fresh("exit_requested_while_up", runit)


@pytest.fixture
def finished(runit) -> Rig:
    """``svc -x`` while down: the supervisor is done with the service."""
    return fresh("finished", runit)


@pytest.fixture
def adopted(runit) -> Rig:
    """A pid left running by a supervisor that was killed, taken over (not our child)."""
    return fresh("adopted", runit)


# -- the contract's table of control bytes, as an oracle --------------------------------------------
def expected(rig: Rig, byte: int) -> tuple[list[tuple], Facts]:
    """What docs/CONTRACTS.md, Control FIFO (plus runit status) says BYTE does to the service in RIG."""
    seam, service = rig
    f = Facts.of(service)
    events: list[tuple] = []
    if f.done:
        return events, f
    running = f.pid != 0
    key = bytes([byte])

    def publish() -> None:
        events.append(("publish", f.snap()))

    if key in (b"d", b"u", b"o") and service.mode == "runit":
        f.exit_requested = False  # runit semantics: x is one of runsv's wants, replaced by the next one
    if key == b"d":
        f.want = WANT_DOWN
        if running:
            events += [("kill", f.pid, TERM), ("kill", f.pid, CONT)]
            f.paused, f.term_sent = False, True
        publish()
    elif key in (b"u", b"o"):
        f.want = WANT_UP if key == b"u" else WANT_ONCE
        publish()
        throttled = service.last_start is not None and seam.now < service.last_start + THROTTLE
        if not running and not throttled:
            events.append(("spawn",))
            f.pid, f.label, f.paused, f.term_sent, f.starts = seam.next_pid, seam.next_label(), False, False, f.starts + 1
            publish()
    elif key == b"p":
        f.paused = True
        publish()
        if running:
            events.append(("kill", f.pid, STOP))
    elif key == b"c":
        f.paused = False
        publish()
        if running:
            events.append(("kill", f.pid, CONT))
    elif key == b"x":
        f.exit_requested = True
        if service.mode == "runit":  # runit semantics: runsv's x stops the service as d does, then exits
            f.want = WANT_DOWN
            if running:
                events += [("kill", f.pid, TERM), ("kill", f.pid, CONT)]
                f.paused, f.term_sent = False, True
        publish()
        if not running:
            publish()  # written once more just before supervise exits
            events.append(("finished",))
            f.done = True
    else:
        sig = SIGNAL_BYTES.get(key) or (RUNIT_SIGNAL_BYTES.get(key) if service.mode == "runit" else None)
        if sig is not None and running:
            events.append(("kill", f.pid, sig))
            if sig == TERM:
                f.term_sent = True
                if service.mode == "runit":
                    publish()  # byte 18: "got TERM"
    return events, f


def byte_id(byte: int) -> str:
    return f"{chr(byte)}"


@pytest.mark.parametrize("byte", list(MEANINGFUL), ids=byte_id)
@pytest.mark.parametrize("state", STATES)
def test_control_byte_in_every_state(request, runit, state, byte):
    rig = request.getfixturevalue(state)
    want_events, want_facts = expected(rig, byte)
    rig.service.control(byte)
    assert rig.seam.take() == want_events
    assert Facts.of(rig.service) == want_facts


@pytest.mark.parametrize("state", STATES)
def test_every_other_byte_is_ignored_in_every_state(request, runit, state):
    """The 240 bytes that mean nothing: no signal, no status, no change, whatever the state."""
    seam, service = request.getfixturevalue(state)
    before = Facts.of(service)
    for byte in OTHER_BYTES:
        service.control(byte)
        assert seam.take() == [], f"byte {byte:#04x}"
        assert Facts.of(service) == before, f"byte {byte:#04x}"


# The same table written out by hand, as docs/CONTRACTS.md, Control FIFO states it, for the two things that matter:
# how many times the status is written, and which signals go out.  Columns: the bytes of MEANINGFUL.
#                                  d u o p c h a i t k x q 1 2 v w
PUBLISHES = {
    "down_want_up_throttled":     ("1 1 1 1 1 0 0 0 0 0 2 0 0 0 0 0", None),
    "down_want_up_due":           ("1 2 2 1 1 0 0 0 0 0 2 0 0 0 0 0", None),
    "down_want_down":             ("1 2 2 1 1 0 0 0 0 0 2 0 0 0 0 0", None),
    "down_once":                  ("1 2 2 1 1 0 0 0 0 0 2 0 0 0 0 0", None),
    "up":                         ("1 1 1 1 1 0 0 0 0 0 1 0 0 0 0 0", "1 1 1 1 1 0 0 0 1 0 1 0 0 0 0 0"),
    "up_paused":                  ("1 1 1 1 1 0 0 0 0 0 1 0 0 0 0 0", "1 1 1 1 1 0 0 0 1 0 1 0 0 0 0 0"),
    "stopping_after_d":           ("1 1 1 1 1 0 0 0 0 0 1 0 0 0 0 0", "1 1 1 1 1 0 0 0 1 0 1 0 0 0 0 0"),
    "stopping_after_t":           ("1 1 1 1 1 0 0 0 0 0 1 0 0 0 0 0", "1 1 1 1 1 0 0 0 1 0 1 0 0 0 0 0"),
    "exit_requested_while_up":    ("1 1 1 1 1 0 0 0 0 0 1 0 0 0 0 0", "1 1 1 1 1 0 0 0 1 0 1 0 0 0 0 0"),
    "finished":                   ("0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0", None),
    "adopted":                    ("1 1 1 1 1 0 0 0 0 0 1 0 0 0 0 0", "1 1 1 1 1 0 0 0 1 0 1 0 0 0 0 0"),
}
RUNNING_STATES = {"up", "up_paused", "stopping_after_d", "stopping_after_t", "exit_requested_while_up", "adopted"}
KILLS = {  # while running; nothing is ever sent while down
    b"d": (TERM, CONT), b"p": (STOP,), b"c": (CONT,), b"h": (signal.SIGHUP,), b"a": (signal.SIGALRM,),
    b"i": (signal.SIGINT,), b"t": (TERM,), b"k": (signal.SIGKILL,),
}
RUNIT_KILLS = {b"q": (signal.SIGQUIT,), b"1": (signal.SIGUSR1,), b"2": (signal.SIGUSR2,), b"x": (TERM, CONT)}


@pytest.mark.parametrize("state", STATES)
def test_publish_counts_and_signals_as_the_spec_lists_them(state, runit):
    daemontools_counts, runit_counts = PUBLISHES[state]
    counts = [int(n) for n in ((runit_counts if runit else None) or daemontools_counts).split()]
    for byte, count in zip(MEANINGFUL, counts, strict=True):
        seam, service = fresh(state, runit)
        pid = service.pid
        service.control(byte)
        events = seam.take()
        key = bytes([byte])
        assert sum(1 for e in events if e[0] == "publish") == count, f"publishes after {key!r}"
        kills = tuple(e[2] for e in events if e[0] == "kill")
        want_kills: tuple = ()
        if state in RUNNING_STATES:
            want_kills = (RUNIT_KILLS.get(key, ()) if runit else ()) or KILLS.get(key, ())
        assert kills == want_kills, f"signals after {key!r}"
        assert all(e[1] == pid for e in events if e[0] == "kill"), f"the pid signalled after {key!r}"


def test_label_is_never_touched_by_a_command_in_any_state(runit):
    """Commands never take a new timestamp; only the starts they cause do (and those change the pid)."""
    for state in STATES:
        for byte in range(256):
            seam, service = fresh(state, runit)
            pid, label, labels = service.pid, service.label, seam.labels
            service.control(byte)
            if service.pid == pid:
                assert (service.label, seam.labels) == (label, labels), f"{state} {byte:#04x}"
            else:
                assert pid == 0 and service.label == label_number(labels + 1), f"{state} {byte:#04x}"


# -- the restart throttle -------------------------------------------------------------------------
def test_a_restart_within_the_second_is_deferred_to_exactly_last_start_plus_one(runit):
    seam = FakeSeam()
    service = Service(seam, "svc", mode="runit" if runit else "daemontools")
    seam.now = 100.25
    service.prepare(False)
    service.boot()
    seam.now = 100.5
    seam.take()
    service.exited(0)
    assert seam.take() == [("publish", Snap(0, WANT_UP, False, False, False, label_number(3))),
                           ("schedule", 100.25 + THROTTLE)]
    seam.advance(101.249)
    assert seam.take() == []
    seam.advance(101.25)
    assert seam.take() == [("spawn",), ("publish", Snap(101, WANT_UP, False, False, False, label_number(4)))]
    assert seam.spawn_times == [100.25, 101.25]
    assert (service.starts, service.restarts) == (2, 1)


def test_a_restart_a_second_or_more_after_the_start_is_immediate(up):
    """The spawn comes first; the down status (label of the exit) and the new pid follow, in 0.76's order."""
    seam, service = up
    service.exited(0)
    assert seam.take() == [("spawn",), ("publish", Snap(0, WANT_UP, False, False, False, label_number(3))),
                           ("publish", Snap(101, WANT_UP, False, False, False, label_number(4)))]
    assert (service.starts, service.restarts) == (2, 1)


def test_a_restart_whose_spawn_fails_writes_the_exit_before_the_failure(up):
    seam, service = up
    seam.fail = OSError(errno.ENOENT, "No such file or directory")
    service.exited(0)
    assert seam.take() == [
        ("spawn",),
        ("publish", Snap(0, WANT_UP, False, False, False, label_number(3))),
        ("report", "supervise: fatal: unable to start svc/run: file does not exist"),
        ("publish", Snap(0, WANT_UP, False, False, False, label_number(4))),
        ("schedule", 6.0),
    ]
    assert (service.last_status, service.starts, service.restarts) == (EXIT_FAILED_START, 2, 1)


def test_svc_d_during_the_deferral_cancels_the_restart(down_want_up_throttled):
    seam, service = down_want_up_throttled
    seam.now = 0.5
    service.control(ord("d"))
    assert seam.take() == [("publish", Snap(0, WANT_DOWN, False, False, False, label_number(3)))]
    seam.advance(5.0)
    assert seam.take() == []
    assert seam.spawn_times == [0.0]
    service.control(ord("u"))  # long after: starts at once
    assert [e[0] for e in seam.take()] == ["publish", "spawn", "publish"]
    assert seam.spawn_times == [0.0, 5.0]


def test_svc_du_during_the_deferral_starts_at_the_deferred_moment_and_is_no_restart(down_want_up_throttled):
    seam, service = down_want_up_throttled
    seam.now = 0.5
    service.control(ord("d"))
    service.control(ord("u"))
    assert [e[0] for e in seam.take()] == ["publish", "publish"]  # no second timer
    seam.advance(0.999)
    assert seam.spawn_times == [0.0]
    seam.advance(1.0)
    assert seam.spawn_times == [0.0, 1.0]
    assert service.pid == 101
    assert (service.starts, service.restarts) == (2, 0)  # the exit's restart was cancelled; svc -u started it


def test_svc_u_after_a_quick_stop_is_throttled_too(runit):
    seam, service = boot(runit)  # started at 0.0
    seam.now = 0.125
    service.control(ord("d"))
    seam.now = 0.25
    service.exited(15)
    seam.now = 0.5
    seam.take()
    service.control(ord("u"))
    seam.now = 0.75
    service.control(ord("u"))  # no second timer for the same start
    down = Snap(0, WANT_UP, False, False, False, label_number(3))
    assert seam.take() == [("publish", down), ("schedule", 1.0), ("publish", down)]
    seam.advance(0.999)
    assert seam.spawn_times == [0.0]
    seam.advance(1.0)
    assert seam.spawn_times == [0.0, 1.0]
    assert (service.pid, service.starts, service.restarts) == (101, 2, 0)


def test_svc_o_during_the_deferral_still_starts_once(down_want_up_throttled):
    seam, service = down_want_up_throttled
    service.control(ord("o"))
    seam.advance(1.0)
    assert (service.pid, service.want) == (101, WANT_ONCE)
    seam.now = 3.0
    service.exited(0)
    seam.advance(10.0)
    assert (service.pid, seam.spawn_times) == (0, [0.0, 1.0])


def test_a_late_timer_never_makes_two_starts_less_than_a_second_apart(down_want_up_due):
    """The deferred start was made by ``u`` before its timer ran; that timer must not start the next one early."""
    seam, service = down_want_up_due
    service.control(ord("u"))  # 1.5: the throttle second is over, start now
    assert seam.spawn_times == [0.0, 1.5]
    seam.now = 1.75
    service.exited(0)  # within the second: deferred to 2.5
    seam.run_timers()  # the old timer (due 1.0) runs late, now
    assert seam.spawn_times == [0.0, 1.5]
    seam.advance(2.499)
    assert seam.spawn_times == [0.0, 1.5]
    seam.advance(2.5)
    assert seam.spawn_times == [0.0, 1.5, 2.5]


def test_a_timer_after_the_start_was_made_does_nothing(down_want_up_due):
    seam, service = down_want_up_due
    service.control(ord("u"))
    seam.take()
    seam.run_timers()
    assert seam.take() == []
    assert (service.starts, seam.spawn_times) == (2, [0.0, 1.5])


def test_x_while_the_restart_is_deferred_finishes_at_once_and_publishes_first(down_want_up_throttled):
    seam, service = down_want_up_throttled
    service.control(ord("x"))
    down = Snap(0, WANT_DOWN if service.mode == "runit" else WANT_UP, False, False, True, label_number(3))
    assert seam.take() == [("publish", down), ("publish", down), ("finished",)]
    seam.advance(10.0)
    for byte in b"uox":
        service.control(byte)
    service.timer()
    assert seam.take() == []
    assert seam.spawn_times == [0.0]


def test_runit_x_is_ignored_for_a_log():
    """runsv ignores x on a log's control: the log ends with its service, when its pipe is closed."""
    seam = FakeSeam()
    service = Service(seam, "log", mode="runit", log=True)
    service.prepare(False)
    service.boot()
    seam.take()
    before = Facts.of(service)
    service.control(ord("x"))
    assert (seam.take(), Facts.of(service)) == ([], before)


@pytest.mark.parametrize("want_down", [False, True])
def test_retire_exits_when_down_without_a_signal(up, want_down):
    """svscan's own end of a service (its stop of a log, --runit's end of a pair): no signal, no restart."""
    seam, service = up
    pid = service.pid
    service.retire(want_down=want_down)
    want = WANT_DOWN if want_down else WANT_UP
    assert seam.take() == [("publish", Snap(pid, want, False, False, True, label_number(2)))]
    service.exited(0)
    down = Snap(0, want, False, False, True, label_number(3))
    assert seam.take() == [("publish", down), ("publish", down), ("finished",)]
    service.retire()
    assert seam.take() == []


# -- exits -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("command", "want"), [(None, WANT_UP), (b"d", WANT_DOWN), (b"o", WANT_ONCE)],
                         ids=["want-up", "want-down", "want-once"])
def test_exit_restarts_only_when_wanted_up(up, command, want):
    seam, service = up
    if command is not None:
        service.control(command[0])
    seam.take()
    service.exited(256)
    events = seam.take()
    assert service.last_status == 256
    if want == WANT_UP:
        assert events == [("spawn",), ("publish", Snap(0, want, False, False, False, label_number(3))),
                          ("publish", Snap(101, WANT_UP, False, False, False, label_number(4)))]
        assert (service.starts, service.restarts) == (2, 1)
    else:
        assert events == [("publish", Snap(0, want, False, False, False, label_number(3)))]
        assert (service.pid, service.starts, service.restarts) == (0, 1, 0)
        seam.advance(60.0)
        assert seam.take() == []


def test_exit_after_term_clears_term_sent(stopping_after_t):
    seam, service = stopping_after_t
    service.exited(signal.SIGTERM)
    assert service.state == "up"  # restarted: want is still up
    assert service.term_sent is False
    assert seam.take()[:2] == [("spawn",), ("publish", Snap(0, WANT_UP, False, False, False, label_number(3)))]


def test_x_then_exit_finishes_without_restarting(exit_requested_while_up):
    seam, service = exit_requested_while_up
    service.exited(0)
    down = Snap(0, WANT_DOWN if service.mode == "runit" else WANT_UP, False, False, True, label_number(3))
    assert seam.take() == [("publish", down), ("publish", down), ("finished",)]
    assert service.done
    service.control(ord("u"))
    seam.advance(60.0)
    assert seam.take() == []
    assert seam.spawn_times == [0.0]


def test_a_start_clears_pause(up_paused):
    seam, service = up_paused
    service.control(ord("d"))
    service.control(ord("p"))  # while down the flag is kept but not shown
    service.exited(15)
    assert service.paused is True
    seam.take()
    service.control(ord("u"))
    assert seam.take()[-1] == ("publish", Snap(101, WANT_UP, False, False, False, label_number(4)))


# -- failed starts ---------------------------------------------------------------------------------
@pytest.fixture
def missing_run() -> FakeSeam:
    """A service directory without ./run: every spawn fails with ENOENT."""
    seam = FakeSeam()
    seam.fail = OSError(errno.ENOENT, "No such file or directory")
    return seam


def test_failed_start_reports_like_supervise_and_retries_a_second_later(missing_run):
    seam = missing_run
    service = Service(seam, "svc")
    service.prepare(False)
    service.boot()
    assert seam.take() == [
        ("publish", Snap(0, WANT_UP, False, False, False, label_number(1))),
        ("publish", Snap(0, WANT_UP, False, False, False, label_number(1))),
        ("spawn",),
        ("report", "supervise: fatal: unable to start svc/run: file does not exist"),
        ("publish", Snap(0, WANT_UP, False, False, False, label_number(2))),
        ("schedule", 1.0),
    ]
    assert service.last_status == EXIT_FAILED_START == 111 << 8
    assert (service.starts, service.restarts) == (1, 0)
    seam.advance(1.0)
    assert [e[0] for e in seam.take()] == ["spawn", "report", "publish", "schedule"]
    assert (service.starts, service.restarts) == (2, 1)


def test_failed_start_is_no_busy_loop(missing_run):
    seam = missing_run
    service = Service(seam, "svc")
    service.prepare(False)
    service.boot()
    for step in range(1, 1001):  # 10 simulated seconds, 10 ms at a time
        seam.advance(step / 100)
    assert len(seam.spawn_times) <= 11
    assert seam.spawn_times == [float(n) for n in range(11)]
    reports = [e for e in seam.events if e[0] == "report"]
    assert reports == [("report", "supervise: fatal: unable to start svc/run: file does not exist")] * 11


def test_failed_start_uses_djb_error_words_and_the_service_name(missing_run):
    seam = missing_run
    seam.fail = OSError(errno.EACCES, "Permission denied")
    service = Service(seam, "log")
    service.prepare(False)
    service.boot()
    assert ("report", "supervise: fatal: unable to start log/run: access denied") in seam.events


def test_failed_once_start_is_not_retried(missing_run):
    seam = missing_run
    service = Service(seam, "svc")
    service.prepare(True)
    service.boot()
    service.control(ord("o"))
    seam.advance(10.0)
    assert seam.spawn_times == [0.0]
    assert (service.pid, service.last_status) == (0, 111 << 8)


def test_svc_d_stops_the_retries_of_a_failing_start(missing_run):
    seam = missing_run
    service = Service(seam, "svc")
    service.prepare(False)
    service.boot()
    for now in (1.0, 2.0, 2.5):
        seam.advance(now)
    service.control(ord("d"))
    seam.advance(10.0)
    assert seam.spawn_times == [0.0, 1.0, 2.0]


def test_a_start_succeeds_once_run_appears(missing_run):
    seam = missing_run
    service = Service(seam, "svc")
    service.prepare(False)
    service.boot()
    seam.advance(1.0)
    seam.fail = None
    seam.advance(2.0)
    assert (service.pid, seam.spawn_times, service.starts, service.restarts) == (100, [0.0, 1.0, 2.0], 3, 2)
    assert seam.take()[-1] == ("publish", Snap(100, WANT_UP, False, False, False, label_number(4)))


# -- boot and adoption -----------------------------------------------------------------------------
def test_boot_without_down_file_publishes_twice_then_starts(runit):
    seam = FakeSeam()
    service = Service(seam, "svc", mode="runit" if runit else "daemontools")
    service.prepare(False)
    assert seam.take() == [("publish", Snap(0, WANT_UP, False, False, False, label_number(1)))]
    service.boot()
    assert seam.take() == [("publish", Snap(0, WANT_UP, False, False, False, label_number(1))), ("spawn",),
                           ("publish", Snap(100, WANT_UP, False, False, False, label_number(2)))]
    assert (service.starts, service.restarts, service.normally_up) == (1, 0, True)


def test_boot_with_down_file_publishes_twice_and_starts_nothing(runit):
    seam = FakeSeam()
    service = Service(seam, "svc", mode="runit" if runit else "daemontools")
    service.prepare(True)
    assert seam.take() == [("publish", Snap(0, WANT_DOWN, False, False, False, label_number(1)))]
    service.boot()
    assert seam.take() == [("publish", Snap(0, WANT_DOWN, False, False, False, label_number(1)))]
    assert (service.starts, service.normally_up, service.state) == (0, False, "down")


@pytest.mark.parametrize(("want", "kept"), [(WANT_UP, WANT_UP), (WANT_DOWN, WANT_DOWN), (b"\0", WANT_ONCE),
                                            (WANT_ONCE, WANT_ONCE)], ids=["u", "d", "nul", "o"])
def test_adopt_publishes_once_and_starts_nothing(want, kept):
    seam = FakeSeam()
    service = Service(seam, "svc")
    service.adopt(ADOPTED_PID, ADOPTED_LABEL, want, True, False)
    assert seam.take() == [("publish", Snap(ADOPTED_PID, kept, True, False, False, ADOPTED_LABEL))]
    assert (service.adopted, service.normally_up, service.starts, seam.labels) == (True, False, 0, 0)


def test_adopted_service_that_exits_restarts_at_once_when_wanted_up(adopted):
    seam, service = adopted
    service.exited(-1)
    assert seam.take() == [("spawn",), ("publish", Snap(0, WANT_UP, False, False, False, label_number(1))),
                           ("publish", Snap(100, WANT_UP, False, False, False, label_number(2)))]
    assert (service.adopted, service.last_status, service.starts, service.restarts) == (False, -1, 1, 1)


def test_adopted_service_that_exits_after_d_stays_down(adopted):
    seam, service = adopted
    service.control(ord("d"))
    service.exited(-1)
    seam.advance(60.0)
    assert (service.pid, service.want, seam.spawn_times) == (0, WANT_DOWN, [])


# -- a random walk: the invariants hold whatever the order of events --------------------------------
OPS = st.one_of(
    st.tuples(st.just("byte"), st.sampled_from(list(b"duopchaitkxq12z"))),
    st.tuples(st.just("exit"), st.sampled_from([0, 256, 9, 15])),
    st.tuples(st.just("tick"), st.sampled_from([0.0, 0.125, 0.5, 0.875, 1.0, 2.5])),
    st.tuples(st.just("timers"), st.none()),
    st.tuples(st.just("fail"), st.booleans()),
)


def walk_step(seam: FakeSeam, service: Service, op: str, arg) -> bool:
    """One operation of a random walk of the machine; False if it does not apply (an exit while down)."""
    if op == "byte":
        service.control(arg)
    elif op == "exit":
        if not service.pid:
            return False
        service.exited(arg)
    elif op == "tick":
        seam.now += arg
    elif op == "timers":
        seam.run_timers()
    else:
        seam.fail = OSError(errno.ENOENT, "gone") if arg else None
    return True


@settings(max_examples=300, deadline=None)
@given(runit=st.booleans(), down_file=st.booleans(), ops=st.lists(OPS, max_size=60))
def test_random_walk_keeps_the_invariants(runit, down_file, ops):
    seam = FakeSeam()
    service = Service(seam, "svc", mode="runit" if runit else "daemontools")
    service.prepare(down_file)
    service.boot()
    for op, arg in ops:
        spawns, labels, was_done, pid = len(seam.spawn_times), seam.labels, service.done, service.pid
        seam.take()
        if not walk_step(seam, service, op, arg):
            continue
        events = seam.take()
        new_spawns = len(seam.spawn_times) - spawns
        # two start attempts are never less than a second apart
        times = seam.spawn_times
        assert all(b - a >= THROTTLE for a, b in zip(times, times[1:], strict=False)), times
        # a timestamp is taken only for a start attempt or an exit
        assert seam.labels - labels == new_spawns + (1 if op == "exit" else 0)
        # counts
        assert service.starts == len(times) and 0 <= service.restarts <= service.starts
        # a finished service does nothing more
        if was_done:
            assert events == []
        # bytes that only signal never write the status (except runit's TERM) and never start
        if op == "byte" and bytes([arg]) not in b"duopcx":
            kinds = [e[0] for e in events]
            if runit and arg == ord("t") and pid:
                assert kinds == ["kill", "publish"]
            else:
                assert set(kinds) <= {"kill"} and len(kinds) <= 1
        # the pid is the last successful spawn's, or 0
        assert service.pid in (0, *seam.pids[-1:])
        assert not (service.pid and service.done)


# -- s6's service-directory files (docs/CONTRACTS.md, s6 service directories) ------------------------------------
class S6Seam(FakeSeam):
    """FakeSeam with s6's files: SETTINGS by name, ./finish present (FINISH) or not, NOTIFY for notification-fd."""

    def __init__(self, settings: dict[str, int] | None = None, finish: bool = True, notify: bool = False) -> None:
        super().__init__()
        self.settings = settings or {}
        self.finish = finish
        self.notify = notify
        self.next_finish_pid = 900

    def setting(self, service: Service, name: str) -> int | None:
        return self.settings.get(name)

    def spawn_finish(self, service: Service, args: list[str]) -> int:
        self.events.append(("finish", args))
        if not self.finish:
            return 0
        self.next_finish_pid += 1
        return self.next_finish_pid

    def kill_pid(self, service: Service, pid: int, sig: int) -> None:
        self.events.append(("kill_pid", pid, sig))

    def notifying(self, service: Service) -> bool:
        return self.notify


def s6_boot(runit: bool = False, **seam_args) -> Rig:
    seam = S6Seam(**seam_args)
    service = Service(seam, "svc", mode="runit" if runit else "daemontools")
    service.prepare(False)
    service.boot()
    return Rig(seam, service)


@pytest.mark.parametrize("status, s6_args, runit_args", [
    (3 << 8, ["3", "0", "svc"], ["3", "0"]),
    (0, ["0", "0", "svc"], ["0", "0"]),
    (signal.SIGKILL, ["256", "9", "svc"], ["-1", "9"]),
    (signal.SIGTERM | 0x80, ["256", "15", "svc"], ["-1", "15"]),  # core dumped
    (-1, ["-1", "0", "svc"], ["-1", "0"]),  # an adopted pid: no wait status
])
def test_finish_arguments(runit, status, s6_args, runit_args):
    seam, service = s6_boot(runit)
    seam.take()
    seam.now = 5.0
    service.exited(status)
    assert seam.take()[0] == ("finish", runit_args if runit else s6_args)


def test_the_next_start_waits_for_finish_and_then_the_throttle(runit):
    seam, service = s6_boot(runit, settings={"timeout-finish": 0})
    seam.now = 0.25
    service.exited(0)
    assert (service.pid, service.finishing, service.finish_pid) == (0, True, 901)
    seam.advance(3.0)  # no start while ./finish runs, however long
    service.control(ord("u"))
    assert seam.spawn_times == [0.0] and service.pid == 0
    seam.now = 3.5
    service.finish_exited(0)
    assert seam.spawn_times == [0.0, 3.5] and not service.finishing and service.restarts == 1


def test_a_short_finish_still_keeps_starts_a_second_apart(runit):
    seam, service = s6_boot(runit)
    seam.now = 0.1
    service.exited(0)
    seam.now = 0.3
    service.finish_exited(0)
    assert seam.spawn_times == [0.0]
    seam.advance(1.0)
    assert seam.spawn_times == [0.0, 1.0]


def test_finish_exit_125_keeps_the_service_down_in_s6_mode_only(runit):
    seam, service = s6_boot(runit)
    seam.now = 2.0
    service.exited(0)
    service.finish_exited(125 << 8)
    assert service.want == (WANT_UP if runit else WANT_DOWN)
    assert seam.spawn_times == ([0.0, 2.0] if runit else [0.0])


def test_timeout_finish_kills_finish(runit):
    seam, service = s6_boot(runit, settings={"timeout-finish": 700})
    seam.now = 2.0
    service.exited(0)
    seam.take()
    seam.advance(2.699)
    assert seam.take() == []
    seam.advance(2.7)
    events = seam.take()
    if runit:  # runsv has no timeout-finish
        assert events == []
    else:
        assert events == [("report", "supervise: warning: svc/finish still running after timeout-finish:"
                                     " sending it SIGKILL"), ("kill_pid", 901, signal.SIGKILL)]


def test_timeout_finish_defaults_to_5_seconds_and_0_is_none():
    seam, service = s6_boot()
    seam.now = 2.0
    service.exited(0)
    assert ("schedule", 7.0) in seam.take()
    seam, service = s6_boot(settings={"timeout-finish": 0})
    seam.now = 2.0
    service.exited(0)
    assert not [e for e in seam.take() if e[0] == "schedule"]


def test_a_finish_that_ended_is_not_killed_by_its_timer():
    seam, service = s6_boot()
    seam.now = 2.0
    service.exited(0)
    seam.now = 2.5
    service.finish_exited(0)
    seam.take()
    seam.advance(8.0)
    assert not [e for e in seam.take() if e[0] in ("kill_pid", "report")]


def test_d_and_x_during_finish(runit):
    seam, service = s6_boot(runit)
    seam.now = 2.0
    service.exited(0)
    seam.take()
    service.control(ord("d"))
    service.control(ord("x"))
    assert not [e for e in seam.take() if e[0] in ("kill", "kill_pid", "finished")]  # ./finish is left alone
    assert not service.done
    service.finish_exited(0)
    assert service.done and seam.take()[-1] == ("finished",) and seam.spawn_times == [0.0]


def test_no_finish_file_is_the_daemontools_behaviour(runit):
    seam, service = s6_boot(runit, finish=False)
    seam.now = 2.0
    service.exited(0)
    assert seam.spawn_times == [0.0, 2.0] and not service.finishing


def test_down_signal_replaces_term(runit):
    seam, service = s6_boot(runit, settings={"down-signal": signal.SIGHUP})
    seam.take()
    service.control(ord("d"))
    assert [e for e in seam.take() if e[0] == "kill"] == [("kill", 100, signal.SIGHUP), ("kill", 100, CONT)]
    service.control(ord("t"))  # only d: t is TERM
    assert [e for e in seam.take() if e[0] == "kill"] == [("kill", 100, TERM)]


def test_timeout_kill(runit):
    seam, service = s6_boot(runit, settings={"timeout-kill": 700})
    seam.now = 1.0
    service.control(ord("d"))
    seam.now = 1.5
    service.control(ord("d"))  # does not put the KILL off
    seam.take()
    seam.advance(1.699)
    assert [e for e in seam.take() if e[0] == "kill"] == []
    seam.advance(1.7)
    assert seam.take() == [("kill", 100, signal.SIGKILL)]


def test_timeout_kill_is_forgotten_when_the_service_exits():
    seam, service = s6_boot(settings={"timeout-kill": 700})
    seam.now = 1.0
    service.control(ord("d"))
    seam.now = 1.2
    service.exited(TERM)
    service.finish_exited(0)
    service.control(ord("u"))  # a new run of the service, started before the old deadline
    seam.take()
    seam.advance(1.7)
    assert [e for e in seam.take() if e[0] == "kill"] == []


def test_no_timeout_kill_without_the_file():
    seam, service = s6_boot()
    service.control(ord("d"))
    assert [e for e in seam.take() if e[0] == "schedule"] == []


def test_readiness_only_from_the_notification_newline(runit):
    seam, service = s6_boot(runit, notify=True)
    assert (service.notifying, service.ready_label) == (True, b"")
    seam.now = 0.5
    service.ready()
    assert service.ready_label == label_number(seam.labels) and seam.publishes()[-1].pid == 100
    first = service.ready_label
    service.ready()  # said twice: the first moment stays
    assert service.ready_label == first
    service.exited(0)
    assert (service.notifying, service.ready_label) == (False, b"")


def test_without_notification_fd_a_service_is_never_ready():
    seam, service = s6_boot()
    service.ready()
    assert (service.notifying, service.ready_label) == (False, b"")


def test_adopted_service_readiness_is_unknown():
    seam = S6Seam()
    service = Service(seam, "svc")
    service.adopt(ADOPTED_PID, ADOPTED_LABEL, WANT_UP, False, True, notify=True)
    assert (service.notifying, service.ready_label) == (True, b"")
    service.ready()  # (the engine has no pipe to call it from; the machine would accept it)
    assert service.ready_label


# -- the setting files' parser (every byte of them is the service owner's) ------------------------------------

@pytest.mark.parametrize("name, line, value", [
    ("notification-fd", b"3", 3), ("notification-fd", b"03", 3), ("timeout-kill", b"700", 700),
    ("timeout-kill", b"0", 0), ("timeout-kill", b"4294967295", 4294967295), ("timeout-kill", b"4294967296", None),
    ("timeout-kill", b"", None), ("timeout-kill", b" 4", None), ("timeout-kill", b"4 ", None),
    ("timeout-kill", b"-1", None), ("timeout-kill", b"+1", None), ("timeout-kill", "\u0663".encode(), None),
    ("down-signal", b"HUP", signal.SIGHUP), ("down-signal", b"sighup", signal.SIGHUP),
    ("down-signal", b"SIGUSR1", signal.SIGUSR1), ("down-signal", b"9", 9), ("down-signal", b"0", None),
    ("down-signal", b"65", None), ("down-signal", b"SIG_DFL", None), ("down-signal", b"SIG", None),
    ("down-signal", b"DFL", None), ("down-signal", b"HUP\x00", None), ("down-signal", b"junk", None),
])
def test_parse_setting(name, line, value):
    assert parse_setting(name, line) == value


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(["notification-fd", "timeout-kill", "timeout-finish", "down-signal"]), line=st.binary())
def test_parse_setting_never_raises(name, line):
    value = parse_setting(name, line)
    assert value is None or (isinstance(value, int) and 0 <= value < 1 << 32)


def test_o_during_finish_starts_once_after_it(runit):
    seam, service = s6_boot(runit)
    seam.now = 2.0
    service.exited(0)
    service.control(ord("d"))
    service.control(ord("o"))
    assert seam.spawn_times == [0.0]
    seam.now = 2.5
    service.finish_exited(0)
    assert (seam.spawn_times, service.want, service.pid) == ([0.0, 2.5], WANT_ONCE, 101)
    service.exited(0)
    service.finish_exited(0)
    seam.advance(10.0)
    assert seam.spawn_times == [0.0, 2.5]  # once


def test_d_after_o_during_finish_cancels_the_start(runit):
    seam, service = s6_boot(runit)
    seam.now = 2.0
    service.exited(0)
    service.control(ord("o"))
    service.control(ord("d"))
    service.finish_exited(0)
    seam.advance(10.0)
    assert seam.spawn_times == [0.0]


# -- s6 mode (supervise --s6): s6-svc's letters and s6-supervise's restart pause ------------------------------------
def up_service(mode: str) -> tuple[FakeSeam, Service]:
    seam = FakeSeam()
    service = Service(seam, "svc", mode=mode)
    service.prepare(False)
    service.boot()
    seam.take()
    return seam, service


@pytest.mark.parametrize("mode", ["daemontools", "runit"])
def test_s6_letters_mean_nothing_in_the_other_modes(mode):
    seam, service = up_service(mode)
    for byte in b"bOQDUyr":
        service.control(byte)
    assert seam.take() == []
    assert (service.pid, service.want, service.normally_up) == (100, WANT_UP, True)


@pytest.mark.parametrize(("byte", "sig"), [(b"b", signal.SIGABRT), (b"y", signal.SIGWINCH), (b"r", signal.SIGTERM),
                                           (b"q", signal.SIGQUIT), (b"1", signal.SIGUSR1), (b"2", signal.SIGUSR2)])
def test_s6_signal_letters(byte, sig):
    seam, service = up_service("s6")
    service.control(byte[0])
    assert seam.take() == [("kill", 100, sig)]  # r: the want stays up, so the service is restarted
    assert service.want == WANT_UP


def test_s6_once_at_most_and_the_down_file_letters():
    seam, service = up_service("s6")
    service.control(ord("O"))  # running: it runs on, once
    assert seam.take() == [("publish", Snap(100, WANT_ONCE, False, False, False, label_number(2)))]
    service.control(ord("Q"))
    assert seam.take() == [("set_down", True), ("publish", Snap(100, WANT_ONCE, False, False, False, label_number(2)))]
    assert service.normally_up is False
    service.control(ord("U"))  # u, ./down removed
    assert seam.take() == [("set_down", False), ("publish", Snap(100, WANT_UP, False, False, False, label_number(2)))]
    service.control(ord("D"))  # d, ./down made
    assert seam.take() == [("set_down", True), ("kill", 100, signal.SIGTERM), ("kill", 100, signal.SIGCONT),
                           ("publish", Snap(100, WANT_DOWN, False, True, False, label_number(2)))]
    service.exited(signal.SIGTERM)
    seam.take()
    service.control(ord("O"))  # down: stays down
    assert seam.take() == [("publish", Snap(0, WANT_DOWN, False, False, False, label_number(3)))]
    service.control(ord("U"))
    assert seam.take()[:2] == [("set_down", False), ("publish", Snap(0, WANT_UP, False, False, False, label_number(3)))]
    assert service.pid == 101


def test_s6_restarts_a_second_after_the_death_and_starts_at_once_on_u():
    seam, service = up_service("s6")
    seam.advance(30.0)  # a long run: 0.76 would restart at once
    service.exited(0)
    assert seam.take() == [("publish", Snap(0, WANT_UP, False, False, False, label_number(3))), ("schedule", 31.0)]
    seam.advance(30.9)
    assert seam.take() == []
    seam.advance(31.0)
    assert [e[0] for e in seam.take()] == ["spawn", "publish"]
    assert (service.pid, service.starts, service.restarts) == (101, 2, 1)
    service.control(ord("d"))
    service.exited(signal.SIGTERM)
    seam.take()
    service.control(ord("u"))  # a u is no restart: at once, however recent the previous start
    assert [e[0] for e in seam.take()] == ["publish", "spawn", "publish"]


def test_s6_failed_start_is_no_busy_loop(missing_run):
    seam = missing_run
    service = Service(seam, "svc", mode="s6")
    service.prepare(False)
    service.boot()
    for step in range(1, 1001):  # 10 simulated seconds, 10 ms at a time
        seam.advance(step / 100)
    assert seam.spawn_times == [float(n) for n in range(11)]


S6_OPS = st.one_of(
    st.tuples(st.just("byte"), st.sampled_from(list(b"duopchaitkxq12zbyrOQDU"))),
    st.tuples(st.just("exit"), st.sampled_from([0, 256, 9, 15])),
    st.tuples(st.just("tick"), st.sampled_from([0.0, 0.125, 0.5, 0.875, 1.0, 2.5])),
    st.tuples(st.just("timers"), st.none()),
    st.tuples(st.just("fail"), st.booleans()),
)


@settings(max_examples=300, deadline=None)
@given(down_file=st.booleans(), ops=st.lists(S6_OPS, max_size=60))
def test_s6_random_walk_keeps_the_invariants(down_file, ops):
    """s6 mode: no start but one asked for (u, o, U) or a second after a death or failed start."""
    seam = FakeSeam()
    service = Service(seam, "svc", mode="s6")
    service.prepare(down_file)
    service.boot()
    for op, arg in ops:
        spawns, was_done = len(seam.spawn_times), service.done
        seam.take()
        if not walk_step(seam, service, op, arg):
            continue
        events = seam.take()
        new_spawns = len(seam.spawn_times) - spawns
        assert new_spawns <= 1
        if new_spawns and not (op == "byte" and bytes([arg]) in b"uoU"):
            assert op == "timers" and [t for t in seam.timers if t[0] <= seam.now] == []
        # a restart is planned a second after the death (or the failed start) that calls for it
        assert all(e[1] == seam.now + THROTTLE for e in events if e[0] == "schedule")
        if was_done:
            assert events == []
        if op == "byte" and bytes([arg]) not in b"duopcxOQDU":
            assert set(e[0] for e in events) <= {"kill"} and len(events) <= 1
        assert service.starts == len(seam.spawn_times)


def test_s6_mode_restarts_a_second_after_finish_ends():
    """--s6: as s6-supervise 2.11, the pause after a death counts from the end of ./finish."""
    seam = S6Seam()
    service = Service(seam, "svc", mode="s6")
    service.prepare(False)
    service.boot()
    seam.now = 5.0
    service.exited(0)
    seam.advance(7.0)
    assert seam.spawn_times == [0.0]
    service.finish_exited(0)
    seam.advance(7.999)
    assert seam.spawn_times == [0.0]
    seam.advance(8.0)
    assert seam.spawn_times == [0.0, 8.0] and service.restarts == 1


# -- the restart policy (docs/CONTRACTS.md, Restart policy) ----------------------------------------------------
def flap(seam: S6Seam, service: Service, deaths: int, ran: float = 0.1, horizon: float = 600.0) -> list[float]:
    """Let the service die RAN seconds after each start, DEATHS times; the moments of the starts that followed."""
    for _ in range(deaths):
        if not service.pid:
            break
        seam.advance(seam.now + ran)
        service.exited(1 << 8)
        while not service.pid and service.want == WANT_UP and seam.timers and seam.now < horizon:
            seam.advance(min(t for t, _ in seam.timers))
    return seam.spawn_times[1:]


def test_backoff_doubles_from_a_second_to_its_cap():
    seam, service = s6_boot(settings={"backoff-max": 8000}, finish=False)
    starts = flap(seam, service, 6)
    gaps = [round(b - a, 2) for a, b in zip([0.0, *starts], starts, strict=False)]
    # each start comes 0.1 s after the last one (the run) plus the delay: 1, 2, 4, 8, 8, 8
    assert gaps == [1.1, 2.1, 4.1, 8.1, 8.1, 8.1]


def test_backoff_starts_again_after_a_healthy_run():
    seam, service = s6_boot(settings={"backoff-max": 60000, "backoff-reset": 5000}, finish=False)
    flap(seam, service, 3)  # delays 1, 2, 4
    assert service.delay == 4.0
    seam.advance(seam.now + 5.0)  # this run lasts the reset time
    service.exited(1 << 8)
    assert service.delay == THROTTLE and service.not_before == seam.now + THROTTLE


def test_without_the_files_daemontools_throttle_is_unchanged():
    seam, service = s6_boot(finish=False)
    starts = flap(seam, service, 4)
    assert [round(t, 2) for t in starts] == [1.0, 2.0, 3.0, 4.0]  # a second after each start
    assert not service.failed and service.delay == 0.0


def test_permanent_failure_after_n_deaths_in_the_window_and_u_rearms():
    seam, service = s6_boot(settings={"failure-deaths": 3, "failure-window": 10000}, finish=False)
    flap(seam, service, 3)
    assert service.failed and service.want == WANT_DOWN and not service.pid
    assert ("report", "supervise: warning: svc died 3 times in 10 seconds: not restarted until svc -u") in seam.events
    seam.advance(seam.now + 100)
    assert not service.pid  # stays down
    service.control(ord("u"))
    assert service.pid and not service.failed and service.deaths == []


def test_deaths_outside_the_window_do_not_count():
    seam, service = s6_boot(settings={"failure-deaths": 3, "failure-window": 1500}, finish=False)
    flap(seam, service, 10)  # a death every 1.1 s: never 3 within 1.5 s
    assert not service.failed and service.pid


def test_a_requested_stop_is_no_death():
    seam, service = s6_boot(settings={"failure-deaths": 1, "backoff-max": 5000}, finish=False)
    service.control(ord("d"))
    service.exited(signal.SIGTERM)
    assert not service.failed and service.deaths == [] and service.delay == 0.0


@given(ops=st.lists(st.sampled_from(["die", "u", "d", "wait"]), max_size=40),
       cap=st.integers(0, 100000), deaths=st.integers(0, 5))
@settings(max_examples=200, deadline=None)
def test_policy_random_walk_never_starts_early(ops, cap, deaths):
    """Whatever happens, an automatic start never comes before its back-off, nor a second after another start."""
    seam, service = s6_boot(settings={"backoff-max": cap, "failure-deaths": deaths}, finish=False)
    for op in ops:
        if op == "die" and service.pid:
            service.exited(1 << 8)
            floor = seam.now + (service.delay if cap else 0.0)
            before = len(seam.spawn_times)
            seam.advance(seam.now + 0.5)
            if len(seam.spawn_times) > before:
                assert seam.spawn_times[-1] >= floor
        elif op in ("u", "d"):
            service.control(ord(op))
        else:
            seam.advance(seam.now + 3.0)
        assert all(b - a >= THROTTLE - 1e-9 for a, b in zip(seam.spawn_times, seam.spawn_times[1:], strict=False))
        assert not (service.failed and service.want == WANT_UP)


@pytest.mark.parametrize("status, counted", [
    (0, 0), (125 << 8, 0), (1 << 8, 1), (111 << 8, 1), (signal.SIGKILL, 1), (signal.SIGSEGV | 0x80, 1)])
def test_finish_failures_are_counted(status, counted):
    """A finish that is killed (timeout-finish's KILL too) or exits other than 0 or 125 is a failure (metrics)."""
    seam, service = s6_boot(settings={"timeout-finish": 0})
    service.exited(1 << 8)
    service.finish_exited(status)
    assert service.finish_failures == counted


def test_kill_escalations_are_counted_only_when_the_kill_is_sent():
    seam, service = s6_boot(settings={"timeout-kill": 500}, finish=False)
    service.control(ord("d"))
    seam.advance(0.6)  # still alive: SIGKILL
    assert service.kill_escalations == 1 and ("kill", service.pid, signal.SIGKILL) in seam.events
    service.exited(signal.SIGKILL)
    service.control(ord("u"))
    pid = service.pid
    service.control(ord("d"))
    service.exited(signal.SIGTERM)  # gone before the timeout: no escalation
    seam.advance(seam.now + 1.0)
    assert service.kill_escalations == 1 and ("kill", pid, signal.SIGKILL) not in seam.events



# -- clocks: back-off on the monotonic clock, labels on the wall clock (docs/CONTRACTS.md, Restart policy) ------
class SteppedClockSeam(S6Seam):
    """S6Seam whose labels come from a wall clock that the test steps (``jump``) while monotonic time runs on."""

    WALL0 = 1_800_000_000

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.wall_offset = 0.0

    def label(self) -> bytes:
        wall = self.WALL0 + self.now + self.wall_offset
        return tai64n.pack(int(wall), int(wall % 1 * 1e9))


@pytest.mark.parametrize("jump", [0.0, 3600.0, -3600.0], ids=["none", "forward", "back"])
def test_a_wall_clock_step_during_backoff_moves_no_restart(jump):
    """The same flapping service with the wall clock stepped ±1 h in its 4 s wait: the restarts come at the same
    monotonic moments as without a step, and the labels (status, table) follow the wall clock."""
    seam = SteppedClockSeam(settings={"backoff-max": 8000}, finish=False)
    service = Service(seam, "svc")
    service.prepare(False)
    service.boot()
    for _ in range(3):  # deaths 0.1 s after each start: waits 1, 2, then 4 s
        seam.advance(seam.now + 0.1)
        service.exited(1 << 8)
        if len(seam.spawn_times) < 3:
            seam.advance(min(t for t, _ in seam.timers))
    seam.advance(seam.now + 1.0)  # mid wait
    seam.wall_offset = jump
    run_until(seam, seam.now + 5.0)
    assert [round(t, 2) for t in seam.spawn_times] == [0.0, 1.1, 3.2, 7.3]
    assert tai64n.unpack(service.label)[0] == int(SteppedClockSeam.WALL0 + 7.3 + jump)


def run_until(seam: FakeSeam, end: float) -> None:
    """Advance the fake clock to END through every timer's own moment (each fires at its time, not at END)."""
    while due := [t for t, _ in seam.timers if t <= end]:
        seam.advance(max(seam.now, min(due)))
    seam.advance(end)


def restored(settings: dict[str, int], now: float, *args, mode: str = "daemontools", **kwargs) -> Rig:
    """A new supervisor's service (its seam's clock at NOW) given restore(*ARGS, **KWARGS) between prepare and boot."""
    seam = S6Seam(settings=settings, finish=True)
    seam.now = now
    service = Service(seam, "svc", mode=mode)
    service.prepare(False)
    service.restore(*args, **kwargs)
    service.boot()
    return Rig(seam, service)


def test_restore_keeps_the_backoff_and_its_doubling():
    seam, service = restored({"backoff-max": 8000}, 100.0, 4.0, 102.5, False, [])
    assert seam.spawn_times == [] and seam.timers[-1][0] == 102.5
    seam.advance(102.5)
    assert seam.spawn_times == [102.5]
    seam.advance(102.6)
    service.exited(1 << 8)
    assert service.delay == 8.0  # doubled from the kept 4 s


@pytest.mark.parametrize("settings, delay, due, kept_delay, start", [
    ({"backoff-max": 2000}, 10**9, 10**12, 2.0, 102.0),  # planted: at most one capped delay from now
    ({}, 4.0, 104.0, 0.0, 100.0),  # no backoff-max now: no back-off
    ({"backoff-max": 8000}, 0.001, 100.5, 1.0, 100.5),  # a delay below the throttle counts as the throttle
    ({"backoff-max": 8000}, 4.0, 50.0, 4.0, 100.0),  # due already: at once
])
def test_restore_bounds_the_backoff_by_the_files_of_now(settings, delay, due, kept_delay, start):
    seam, service = restored(settings, 100.0, delay, due, False, [])
    run_until(seam, 200.0)
    assert seam.spawn_times[:1] == [start] and service.delay == kept_delay


def test_restore_keeps_a_failure_and_the_deaths_in_the_window_only():
    seam, service = restored({"failure-deaths": 3, "failure-window": 10000}, 100.0, 0.0, 0.0, True,
                             [50.0, 95.0, 99.0, 150.0])
    assert service.failed and service.want == WANT_DOWN and service.deaths == [95.0, 99.0]
    seam.advance(200.0)
    assert seam.spawn_times == []
    service.control(ord("u"))
    assert seam.spawn_times == [200.0] and not service.failed


def test_restore_ignores_a_failure_without_failure_deaths():
    seam, service = restored({}, 100.0, 0.0, 0.0, True, [99.0])
    assert not service.failed and service.deaths == [] and seam.spawn_times == [100.0]


@pytest.mark.parametrize("mode", ["daemontools", "s6", "runit"])
def test_restore_of_a_running_finish_waits_for_it_and_times_it(mode):
    seam, service = restored({"timeout-finish": 3000}, 100.0, 0.0, 0.0, False, [], 4321, 101.0, mode=mode)
    assert service.finishing and service.finish_pid == 4321 and seam.spawn_times == []
    seam.advance(101.5)
    killed = ("kill_pid", 4321, signal.SIGKILL) in seam.events
    assert killed == (mode != "runit")  # the kept moment (not now + 3 s); runsv has no timeout-finish
    service.finish_exited(-1)  # the pidfd said it ended; its wait status is unknown
    run_until(seam, 105.0)
    # at once (s6: a second after the finish, its rule)
    assert seam.spawn_times == [102.5 if mode == "s6" else 101.5]
    assert service.finish_failures == 0 and not service.finishing


def test_restore_times_a_finish_at_most_timeout_finish_from_now():
    seam, service = restored({"timeout-finish": 1000}, 100.0, 0.0, 0.0, False, [], 4321, 10**9)
    assert service.finish_kill_at == 101.0
    seam, service = restored({"timeout-finish": 0}, 100.0, 0.0, 0.0, False, [], 4321, 101.0)
    assert service.finish_kill_at == 0.0 and not [t for t, _ in seam.timers]


def test_an_adopted_finish_that_exits_unknown_is_no_125():
    seam, service = restored({}, 100.0, 0.0, 0.0, False, [], 4321, 0.0, mode="s6")
    service.finish_exited(-1)
    run_until(seam, 102.0)
    assert service.want == WANT_UP and service.pid


class PersistingSeam(S6Seam):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.persisted: list[tuple] = []

    def persist(self, service: Service) -> None:
        self.persisted.append((service.delay, service.not_before, service.failed, list(service.deaths),
                               service.finish_pid))
        self.events.append(("persist", service.failed))


def test_every_change_of_the_restart_state_is_persisted_before_its_warning():
    seam = PersistingSeam(settings={"backoff-max": 4000, "failure-deaths": 2})
    service = Service(seam, "svc")
    service.prepare(False)
    service.boot()
    seam.advance(0.5)
    service.exited(1 << 8)  # death: back-off and death kept, then the finish
    assert seam.persisted == [(1.0, 1.5, False, [0.5], 0), (1.0, 1.5, False, [0.5], 901)]
    service.finish_exited(0)
    assert seam.persisted[-1][4] == 0
    seam.advance(2.0)
    service.exited(1 << 8)  # the second death: failed, kept before the line says so
    report = next(i for i, e in enumerate(seam.events) if e[0] == "report")
    assert seam.events.index(("persist", True)) < report
    service.control(ord("u"))
    assert seam.persisted[-1] == (0.0, 0.0, False, [], service.finish_pid)  # u re-arms: all forgotten
