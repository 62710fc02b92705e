"""``supervise --s6`` and ``svscan --s6`` against Debian's s6-supervise 2.11 (docs/CONTRACTS.md, s6 status and events).

Each differential test runs one scenario under ``s6-supervise DIR``, prefork's ``supervise --s6 DIR``
and prefork's ``svscan --s6`` (``rig`` is parametrized "s6" / "supervise" / "svscan"), drives it with
s6's own clients (s6-svc, s6-svstat, s6-svok, s6-svwait) and checks one expectation for all: s6-svstat
lines with pids and seconds normalised, the status file's layout with its stamps and pid normalised,
the letters a listener of ``event/`` receives, exit codes.  Prefork-only tests cover what s6 does
differently on purpose: nothing but a listener's FIFO in ``event/`` is ever written, and the
daemontools and runit modes ignore s6's extra letters.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from conftest import ours, real

from prefork.control import servicetable_read, statusfile

ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
SLEEPER = "#!/bin/sh\nexec sleep 300\n"
LISTENER = "ftrig1:@400000006b16d2b1221f7e62:abcdef"  # the name shape s6-svlisten1 gives its FIFO


def wait_for(predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.02) -> object:
    """PREDICATE's first true value, polled until TIMEOUT (bounded by count and by time)."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 1):
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)
    return predicate()


def client(name: str, *args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([real(name), *args], env=ENV, stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=timeout)


def svstat_norm(text: str) -> str:
    return re.sub(r"\b\d+ seconds", "S seconds", re.sub(r"\(pid \d+\)", "(pid N)", text))


def layout(data: bytes) -> tuple[int, str, bool, int, int]:
    """The status file without its times and pid: (size, stamp shape, pid != 0, wait status, flags)."""
    assert len(data) == statusfile.S6.size, data
    # Both stamps are skalibs' TAI64N (2^62 + 10 + 27 leap seconds + unix time): within a minute of now.
    for stamp in (data[:12], data[12:24]):
        seconds = int.from_bytes(stamp[:8], "big") - (1 << 62) - 37
        assert abs(seconds - time.time()) < 60, stamp.hex()
    return len(data), "tai", int.from_bytes(data[24:32], "big") != 0, int.from_bytes(data[32:34], "big"), data[34]


class Rig:
    """One supervisor of one implementation on ROOT/svc; close() ends it and its service by pid."""

    def __init__(self, impl: str, root: Path) -> None:
        self.impl = impl
        self.root = root
        self.dir = root / "svc"
        self.proc: subprocess.Popen | None = None
        self.seen: dict[int, psutil.Process] = {}
        self.listener = -1

    def service(self, run: str = SLEEPER) -> Path:
        self.dir.mkdir()
        (self.dir / "run").write_text(run)
        (self.dir / "run").chmod(0o755)
        return self.dir

    def argv(self) -> list[str]:
        if self.impl == "s6":
            return [real("s6-supervise"), "svc"]
        if self.impl == "supervise":
            return [ours("supervise"), "--s6", "--table", str(self.root / "table"), "svc"]
        return [ours("svscan"), "--s6", "--table", str(self.root / "table"), "."]

    def start(self) -> None:
        with open(self.root / "err", "wb") as err:
            self.proc = subprocess.Popen(self.argv(), cwd=self.root, env=ENV, stdin=subprocess.DEVNULL,
                                         stdout=err, stderr=err)
        assert wait_for(lambda: self.svok() == 0 and (self.dir / "supervise" / "status").exists()
                        and (self.dir / "event").is_dir(), 10), (self.impl, self.stderr())
        assert wait_for(self.pid, 5), (self.impl, self.stderr())  # started: its "u" is before our listener
        if self.listener < 0:
            self.listen()

    def listen(self) -> None:
        """A listener of our own in event/, made as s6-svlisten1 makes its FIFO; read with :meth:`events`."""
        os.mkfifo(self.dir / "event" / LISTENER, 0o600)
        self.listener = os.open(self.dir / "event" / LISTENER, os.O_RDWR | os.O_NONBLOCK)

    def close(self) -> None:
        victims = list(self.seen.values())
        if self.proc is not None:
            if self.proc.poll() is None:
                try:
                    os.kill(self.proc.pid, signal.SIGSTOP)
                    victims.extend(psutil.Process(self.proc.pid).children(recursive=True))
                except (OSError, psutil.Error):
                    pass
                self.proc.kill()
            self.proc.wait(10)
        for victim in victims:
            try:
                victim.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(victims, timeout=5)
        if self.listener >= 0:
            os.close(self.listener)
        try:
            os.unlink(self.root / "table")
        except OSError:
            pass

    # -- looking and driving ---------------------------------------------------------------------
    def stderr(self) -> bytes:
        try:
            return (self.root / "err").read_bytes()
        except OSError:
            return b""

    def status(self) -> bytes:
        data = (self.dir / "supervise" / "status").read_bytes()
        pid = int.from_bytes(data[24:32], "big") if len(data) == 35 else 0
        if pid and pid not in self.seen:
            try:
                self.seen[pid] = psutil.Process(pid)
            except psutil.Error:
                pass
        return data

    def pid(self) -> int:
        return int.from_bytes(self.status()[24:32], "big")

    def svok(self) -> int:
        return client("s6-svok", str(self.dir)).returncode

    def svstat(self) -> str:
        result = client("s6-svstat", str(self.dir))
        return svstat_norm((result.stdout + result.stderr).decode())

    def svc(self, *args: str) -> int:
        return client("s6-svc", *args, str(self.dir)).returncode

    def events(self) -> bytes:
        try:
            return os.read(self.listener, 100)
        except BlockingIOError:
            return b""

    def settled(self, expected: tuple[str, tuple, bytes] | None = None, settle: float = 0.3,
                patience: float = 5.0) -> tuple[str, tuple, bytes]:
        """After SETTLE seconds: (s6-svstat line, status layout, letters received meanwhile).  Given the
        EXPECTED triple, a loaded machine gets up to PATIENCE seconds more to reach it (then SETTLE again, so
        a letter too many still shows); what comes back is compared by the caller all the same."""
        time.sleep(settle)
        state = (self.svstat(), layout(self.status()))
        letters = self.events()
        if expected is None:
            return (*state, letters)
        deadline = time.monotonic() + patience
        while (state != expected[:2] or len(letters) < len(expected[2])) and time.monotonic() < deadline:
            time.sleep(0.05)
            state = (self.svstat(), layout(self.status()))
            letters += self.events()
        if letters != expected[2] or state != expected[:2]:
            return (*state, letters)
        time.sleep(settle)
        return (*state, letters + self.events())


@pytest.fixture(params=["s6", "supervise", "svscan"])
def rig(request, tmp_path):
    if request.param == "s6":
        real("s6-supervise")
    for name in ("s6-svc", "s6-svstat", "s6-svok", "s6-svwait"):
        real(name)
    r = Rig(request.param, tmp_path)
    yield r
    r.close()


# Every step's (s6-svstat line, status layout, letters) as Debian's s6-supervise gives them.
UP = "up (pid N) S seconds\n"
STEPS = [
    ("-d", ("down (signal SIGTERM) S seconds, normally up, ready S seconds\n", (35, "tai", False, 15, 0x08), b"dD")),
    ("-u", (UP, (35, "tai", True, 15, 0x04), b"u")),
    ("-p", ("up (pid N) S seconds, paused\n", (35, "tai", True, 15, 0x05), b"")),
    ("-c", (UP, (35, "tai", True, 15, 0x04), b"")),
    ("-k", ("down (signal SIGKILL) S seconds, normally up, want up, ready S seconds\n",
            (35, "tai", False, 9, 0x0C), b"dD")),
    ("restart", (UP, (35, "tai", True, 9, 0x04), b"u")),  # a second after the death, however long it ran
    ("-r", ("down (signal SIGTERM) S seconds, normally up, want up, ready S seconds\n",
            (35, "tai", False, 15, 0x0C), b"dD")),
    ("restart", (UP, (35, "tai", True, 15, 0x04), b"u")),
    ("-o", ("up (pid N) S seconds, want down\n", (35, "tai", True, 15, 0x00), b"")),
    ("-a", ("down (signal SIGALRM) S seconds, normally up, ready S seconds\n", (35, "tai", False, 14, 0x08),
            b"dD")),
    ("-O", ("down (signal SIGALRM) S seconds, normally up, ready S seconds\n", (35, "tai", False, 14, 0x08), b"")),
    ("-U", (UP, (35, "tai", True, 14, 0x04), b"u")),
    ("-Q", ("up (pid N) S seconds, normally down, want down\n", (35, "tai", True, 14, 0x00), b"")),
    ("-u", ("up (pid N) S seconds, normally down\n", (35, "tai", True, 14, 0x04), b"")),
    ("-D", ("down (signal SIGTERM) S seconds, ready S seconds\n", (35, "tai", False, 15, 0x08), b"dD")),
    ("-U", (UP, (35, "tai", True, 15, 0x04), b"u")),
    ("-b", ("down (signal SIGABRT) S seconds, normally up, want up, ready S seconds\n",
            (35, "tai", False, 6, 0x0C), b"dD")),
]


def test_s6_clients_see_the_same_states(rig):
    rig.service()
    rig.start()
    assert rig.svstat() == UP
    assert layout(rig.status())[2:] == (True, 0, 0x04)
    seen = []
    for step, expected in STEPS:
        if step == "restart":
            first = rig.pid()
            assert not first
            assert wait_for(rig.pid, 3), rig.impl
            seen.append((step, rig.settled(expected, 0.1)))
            continue
        assert rig.svc(step) == 0, step
        seen.append((step, rig.settled(expected)))
    assert seen == STEPS
    assert (rig.dir / "down").exists() is False


def test_exit_with_x_says_x_to_listeners(rig):
    if rig.impl == "svscan":
        pytest.skip("x under svscan: svscan supervises the service again (as daemontools' svscan does)")
    rig.service()
    rig.start()
    assert rig.svc("-d") == 0
    assert wait_for(lambda: rig.pid() == 0)
    assert rig.svc("-x") == 0
    assert rig.proc is not None
    rig.proc.wait(5)
    assert rig.proc.returncode == 0
    assert rig.events() == b"dDx"


def test_svok_answers(rig):
    rig.service()
    assert rig.svok() == 1  # no supervise/ yet
    rig.start()
    assert rig.svok() == 0
    assert rig.proc is not None
    rig.proc.kill()
    rig.proc.wait(5)
    assert rig.svok() == 1  # the lock is free


def background(rig: Rig, *args: str) -> subprocess.Popen:
    return subprocess.Popen([real("s6-svwait"), *args, str(rig.dir)], env=ENV, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_svwait_and_svc_waits(rig):
    rig.service()
    rig.start()
    # already up: -u answers at once; -d waits for the d event
    assert client("s6-svwait", "-u", "-t", "2000", str(rig.dir)).returncode == 0
    waiter = background(rig, "-d", "-t", "5000")
    assert wait_for(lambda: len([n for n in os.listdir(rig.dir / "event") if n != LISTENER]) == 1, 3)
    assert rig.svc("-d") == 0
    assert waiter.wait(10) == 0, waiter.stderr.read() if waiter.stderr else b""
    waiter = background(rig, "-u", "-t", "5000")
    time.sleep(0.2)
    assert rig.svc("-u") == 0
    assert waiter.wait(10) == 0
    # the ready event never comes without a notification-fd: s6 does not call such a service ready
    assert client("s6-svwait", "-U", "-t", "400", str(rig.dir)).returncode == 99
    # -t: a timeout is exit 99, and nothing is left in event/ but our own listener
    assert client("s6-svwait", "-d", "-t", "300", str(rig.dir)).returncode == 99
    assert sorted(os.listdir(rig.dir / "event")) == [LISTENER]
    # s6-svc's own waits (through s6-svlisten1)
    assert rig.svc("-wD", "-T", "5000", "-d") == 0
    assert rig.pid() == 0
    assert client("s6-svwait", "-D", "-t", "2000", str(rig.dir)).returncode == 0  # really down already
    assert client("s6-svwait", "-U", "-t", "300", str(rig.dir)).returncode == 99
    assert rig.svc("-wu", "-T", "5000", "-u") == 0
    assert rig.pid() != 0
    assert rig.svc("-wd", "-T", "5000", "-k") == 0
    assert rig.svc("-wu", "-T", "5000", "-u") == 0  # the restart comes a second after the death
    assert rig.svc("-wr", "-T", "5000", "-r") == 0  # restarted: down then up again


def test_svwait_ready_with_notification_fd(rig):
    """-U waits for the newline on notification-fd (docs/CONTRACTS.md, s6 service directories), and the ready
    bit and event come with it."""
    path = rig.service("#!/bin/sh\nsleep 0.8\necho >&3\nexec sleep 300\n")
    (path / "notification-fd").write_text("3\n")
    began = time.monotonic()
    rig.start()
    assert client("s6-svwait", "-U", "-t", "5000", str(rig.dir)).returncode == 0
    assert time.monotonic() - began >= 0.6, rig.impl
    out = client("s6-svstat", "-o", "up,ready", str(rig.dir)).stdout.split()
    assert out == [b"true", b"true"], rig.impl


# -- prefork only ------------------------------------------------------------------------------------------------
@pytest.fixture
def ours_rig(tmp_path):
    for name in ("s6-svc", "s6-svstat", "s6-svok"):
        real(name)
    r = Rig("supervise", tmp_path)
    yield r
    r.close()


def test_event_dir_is_made_as_s6_makes_it(ours_rig):
    ours_rig.service()
    ours_rig.start()
    st = os.stat(ours_rig.dir / "event")
    assert stat.S_IMODE(st.st_mode) == 0o3730 and st.st_gid == os.getegid()


def _letter(rig: Rig, letter: bytes, timeout: float) -> bool:
    """Wait (bounded) for LETTER in the rig's own listener FIFO; the letters before it are dropped."""
    poller = select.poll()
    poller.register(rig.listener, select.POLLIN)
    deadline = time.monotonic() + timeout
    for _ in range(1000):
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if poller.poll(left * 1000) and letter in rig.events():
            return True
    return False


def test_table_shows_ready_when_the_ready_letter_comes(ours_rig):
    """The table is written before the status file and the event letters: whoever the `U` letter wakes
    finds the service ready in svstat --all and the metrics (docs/ARCHITECTURE.md, "The readiness path")."""
    r = ours_rig
    (r.service("#!/bin/sh\necho >&3\nexec sleep 300\n") / "notification-fd").write_text("3\n")
    r.start()
    for round_ in range(8):
        assert r.svc("-d") == 0 and _letter(r, b"D", 5), (round_, r.stderr())
        assert r.svc("-u") == 0 and _letter(r, b"U", 5), (round_, r.stderr())
        entry = servicetable_read.read(str(r.root / "table")).entries[0]  # read at once: no settling
        assert entry.pid and entry.ready, (round_, entry)


def test_every_listener_gets_the_letters_beyond_one_batch(ours_rig):
    """More listeners than the FIFOs held open at once (NOTIFY_BATCH): each still gets each letter, once."""
    from prefork.control.servicedir import NOTIFY_BATCH

    r = ours_rig
    r.service()
    r.start()
    fds = []
    try:
        for i in range(NOTIFY_BATCH + 6):
            path = r.dir / "event" / f"ftrig1:@400000006b16d2b1221f7e62:{i:06d}"
            os.mkfifo(path, 0o600)
            fds.append(os.open(path, os.O_RDWR | os.O_NONBLOCK))
        assert r.svc("-d") == 0 and _letter(r, b"D", 5), r.stderr()
        got = [b""] * len(fds)  # ours came first, perhaps: the others' letters may still be on their way
        deadline = time.monotonic() + 5
        for _ in range(500):
            for i, fd in enumerate(fds):
                try:
                    got[i] += os.read(fd, 100)
                except BlockingIOError:
                    pass
            if all(b"D" in g for g in got) or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        time.sleep(0.2)  # a letter too many would come now
        for i, fd in enumerate(fds):
            with contextlib.suppress(BlockingIOError):
                got[i] += os.read(fd, 100)
        assert got == [b"dD"] * len(fds)
    finally:
        for fd in fds:
            os.close(fd)


def test_hostile_event_dir_entries_never_stall_or_redirect(ours_rig, tmp_path):
    """Only FIFOs of a listener's name are written, without blocking: s6-supervise itself would write
    into a regular file of that name."""
    r = ours_rig
    r.service()
    r.start()
    event = r.dir / "event"
    outside = tmp_path / "outside"
    outside.write_bytes(b"keep")
    planted_file = event / "ftrig1:@400000006b16d2b1221f7e62:regula"
    planted_file.write_bytes(b"file")
    (event / "ftrig1:@400000006b16d2b1221f7e62:symlnk").symlink_to(outside)
    os.mkfifo(event / "ftrig1:@400000006b16d2b1221f7e62:noread")  # a dead listener: removed
    os.mkfifo(event / "ftrig1:@400000006b16d2b1221f7e62:fullff")  # a listener that never reads: stays full
    full = os.open(event / "ftrig1:@400000006b16d2b1221f7e62:fullff", os.O_RDWR | os.O_NONBLOCK)
    try:
        try:
            while True:
                os.write(full, b"x" * 65536)
        except BlockingIOError:
            pass
        (event / "ftrig1:@400000006b16d2b1221f7e62:adirec").mkdir()
        os.mkfifo(event / "ftrig1:@400000006b16d2b1221f7e62:toolong")  # not a listener's name
        t0 = time.monotonic()
        for _ in range(3):
            assert r.svc("-d") == 0
            assert wait_for(lambda: r.pid() == 0, 3)
            assert r.svc("-u") == 0
            assert wait_for(r.pid, 3)
        assert time.monotonic() - t0 < 10
        assert r.events() == b"dDu" * 3
        assert planted_file.read_bytes() == b"file" and outside.read_bytes() == b"keep"
        assert not (event / "ftrig1:@400000006b16d2b1221f7e62:noread").exists()
        assert (event / "ftrig1:@400000006b16d2b1221f7e62:fullff").exists()
        assert r.svstat() == UP
    finally:
        os.close(full)


@pytest.mark.parametrize("planted", ["symlink", "file"])
def test_an_event_that_is_no_directory_is_not_followed(ours_rig, tmp_path, planted):
    r = ours_rig
    r.service()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    if planted == "symlink":
        (r.dir / "event").symlink_to(elsewhere)
    else:
        (r.dir / "event").write_bytes(b"")
    with open(r.root / "err", "wb") as err:
        r.proc = subprocess.Popen(r.argv(), cwd=r.root, env=ENV, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    assert wait_for(lambda: r.svok() == 0 and (r.dir / "supervise" / "status").exists(), 10)
    assert wait_for(r.pid, 3)
    assert r.svc("-d") == 0 and wait_for(lambda: r.pid() == 0, 3)  # supervised all the same, without events
    assert stat.S_IMODE(elsewhere.stat().st_mode) != 0o3730 and list(elsewhere.iterdir()) == []


def test_a_planted_down_link_is_not_followed(ours_rig, tmp_path):
    r = ours_rig
    r.service()
    target = tmp_path / "made-through-link"
    (r.dir / "down").symlink_to(target)
    r.start()
    assert r.svc("-D") == 0
    assert wait_for(lambda: r.pid() == 0, 3)
    assert not target.exists()
    assert b"unable to create svc/down" in r.stderr()
    assert r.svc("-U") == 0 and wait_for(r.pid, 3)
    assert not (r.dir / "down").is_symlink()  # U removes the link itself


def test_prefork_svstat_reads_the_s6_status(ours_rig):
    r = ours_rig
    r.service()
    r.start()
    out = subprocess.run([ours("svstat"), str(r.dir)], env=ENV, capture_output=True, timeout=10).stdout.decode()
    assert re.fullmatch(rf"{re.escape(str(r.dir))}: up \(pid {r.pid()}\) \d+ seconds\n", out), out
    assert r.svc("-p") == 0
    time.sleep(0.3)
    out = subprocess.run([ours("svstat"), str(r.dir)], env=ENV, capture_output=True, timeout=10).stdout.decode()
    assert out.endswith("seconds, paused\n"), out


@pytest.mark.parametrize("mode", [[], ["--runit"]], ids=["daemontools", "runit"])
def test_other_modes_ignore_s6_letters(tmp_path, mode):
    d = tmp_path / "svc"
    d.mkdir()
    (d / "run").write_text(SLEEPER)
    (d / "run").chmod(0o755)
    table = str(tmp_path / "table")
    proc = subprocess.Popen([ours("supervise"), *mode, "--table", table, "svc"], cwd=tmp_path, env=ENV,
                            stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pid = 0
    try:
        assert wait_for(lambda: (d / "supervise" / "status").exists() and statusfile.read(str(d / "supervise")).pid, 10)
        pid = statusfile.read(str(d / "supervise")).pid
        before = (d / "supervise" / "status").read_bytes()
        fd = os.open(d / "supervise" / "control", os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(fd, b"bOQDUyr")
        finally:
            os.close(fd)
        time.sleep(0.5)
        after = (d / "supervise" / "status").read_bytes()
        assert psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        assert statusfile.read(str(d / "supervise")).pid == pid and after == before
        assert not (d / "down").exists() and not (d / "event").exists()
        assert len(after) == (20 if mode else 18)
    finally:
        proc.kill()
        proc.wait(10)
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            os.unlink(table)
        except OSError:
            pass


def test_a_killed_supervisor_s_service_is_taken_over_from_the_s6_status(ours_rig):
    r = ours_rig
    r.service()
    r.start()
    pid = r.pid()
    assert r.proc is not None
    r.proc.kill()
    r.proc.wait(5)
    r.start()  # reads the 35-byte status of its predecessor: the same process, no second copy
    assert r.pid() == pid and r.svstat() == UP
    assert r.svc("-wD", "-T", "5000", "-d") == 0
    assert r.pid() == 0
    assert wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, 5)
    assert r.events() == b"dD"


def test_svscan_s6_with_a_log_and_svstat_all(tmp_path):
    """The log service gets s6's files too; svstat --all and --json read the table as in every mode."""
    for name in ("s6-svstat", "s6-svok"):
        real(name)
    for d, script in ((tmp_path / "svc", SLEEPER), (tmp_path / "svc" / "log", "#!/bin/sh\nexec cat > /dev/null\n")):
        d.mkdir()
        (d / "run").write_text(script)
        (d / "run").chmod(0o755)
    proc = subprocess.Popen([ours("svscan"), "--s6", str(tmp_path)], env=ENV, stdin=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    seen: list[psutil.Process] = []
    try:
        for d in (tmp_path / "svc", tmp_path / "svc" / "log"):
            assert wait_for(lambda d=d: client("s6-svstat", str(d)).stdout.startswith(b"up (pid "), 10), d
            assert client("s6-svok", str(d)).returncode == 0
            assert stat.S_IMODE((d / "event").stat().st_mode) == 0o3730
            seen.append(psutil.Process(int.from_bytes((d / "supervise" / "status").read_bytes()[24:32], "big")))
        out = subprocess.run([ours("svstat"), "--all", str(tmp_path)], env=ENV, capture_output=True, timeout=10)
        assert out.returncode == 0 and re.search(rb"\bsvc: up \(pid \d+\)", out.stdout), out
        out = subprocess.run([ours("svstat"), "--all", "--json", str(tmp_path)], env=ENV, capture_output=True,
                             timeout=10)
        assert out.returncode == 0 and json.loads(out.stdout), out
    finally:
        proc.kill()
        proc.wait(10)
        for p in seen:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(seen, timeout=5)
