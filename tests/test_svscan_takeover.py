"""svscan SIGKILLed mid back-off, mid permanent failure and mid ./finish; a new svscan on the same tree takes
the restart state over from supervise/restart (docs/CONTRACTS.md, Taking over after a SIGKILL).

Every service notes its starts in its own file with the time since boot (``/proc/uptime``: a clock no
realtime step moves), so the gaps between starts are the supervisor's doing.  Each svscan is
killed by its pid; at teardown the scans fixture kills every process the scans started.
"""

from __future__ import annotations

import _multiprocessing
import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import ours
from hypothesis import given, settings
from hypothesis import strategies as st
from tcpserver_harness import TAG_VAR, wait_until
from test_svscan import make_service, running, script, svc, sweep
from test_svscan import scans as svscan_scans

from prefork.control import restartfile, statusfile


@pytest.fixture
def scans(tmp_path):
    """test_svscan's: start(impl, root, *args, table=True) -> Scan; at teardown everything the scans started is
    killed."""
    yield from svscan_scans.__wrapped__(tmp_path)


NOTE_START = "echo start $(cut -d' ' -f1 /proc/uptime) >> ../starts"


def starts(root: Path, word: str = "start") -> list[float]:
    """The uptimes noted by the lines beginning with WORD in ROOT/starts."""
    try:
        text = (root / "starts").read_text()
    except FileNotFoundError:
        return []
    return [float(line.split()[1]) for line in text.splitlines() if line.startswith(word + " ")]


def finish_kept(d: Path, root: Path) -> bool:
    """D's supervise/restart names the finish whose pid is in ROOT/finish.pid (what the next svscan takes over):
    the supervisor writes it right after the spawn, so a test must not kill it before."""
    try:
        saved = restartfile.decode((d / "supervise" / restartfile.NAME).read_bytes())
        return saved is not None and saved.finish_pid == int((root / "finish.pid").read_text())
    except (OSError, ValueError):
        return False


def uptime() -> float:
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def kill(scan) -> None:
    """SIGKILL the svscan SCAN by its pid and reap it."""
    os.kill(scan.pid, signal.SIGKILL)
    scan.proc.wait(10)


def svstat_all(root: Path) -> dict:
    """svstat --all --json's services by name; {} while no live svscan has its table there (the killed one's
    stays until the new one replaces it)."""
    out = subprocess.run([ours("svstat"), "--all", "--json", str(root)], capture_output=True, timeout=10)
    if out.returncode != 0:
        return {}
    return {s["name"]: s for s in json.loads(out.stdout)["services"]}


def test_backoff_and_its_doubling_survive_a_sigkilled_svscan(tmp_path, scans):
    """Starts at 0, 1, 3 s; svscan killed in the 4 s wait after the third death; the new one makes the fourth
    start when the wait ends (not at once), and the fifth 4 s after that (the delay went on doubling, capped)."""
    root = tmp_path / "scan"
    d = make_service(root, "flap", run=f"{NOTE_START}; exit 1")
    (d / "backoff-max").write_text("4000\n")
    first = scans("prefork", root, table=False)
    assert wait_until(lambda: len(starts(root)) == 3, 10), starts(root)

    def kept() -> restartfile.Saved | None:  # dead again, in its 4 s wait, and that is kept
        try:
            saved = restartfile.decode((d / "supervise" / restartfile.NAME).read_bytes())
        except OSError:
            return None
        return saved if saved is not None and saved.delay_ms == 4000 else None

    saved = wait_until(kept, 3)
    assert saved and saved.boot == restartfile.boot_id()
    time.sleep(0.3)
    kill(first)
    scans("prefork", root, table=False)
    assert wait_until(lambda: svstat_all(root).get("flap", {}).get("backoff_seconds") == 4.0, 5)
    assert len(starts(root)) == 3  # still waiting
    assert wait_until(lambda: len(starts(root)) == 5, 15), starts(root)
    t = starts(root)
    gaps = [round(b - a, 2) for a, b in zip(t, t[1:], strict=False)]
    assert 0.9 <= gaps[0] <= 1.6 and 1.9 <= gaps[1] <= 2.6, gaps
    assert 3.9 <= gaps[2] <= 4.8, gaps  # the wait that spanned the two svscans
    assert 3.9 <= gaps[3] <= 4.8, gaps


def test_a_failed_service_stays_failed_under_the_next_svscan_until_svc_u(tmp_path, scans):
    root = tmp_path / "scan"
    d = make_service(root, "flap", run=f"{NOTE_START}; exit 1")
    (d / "failure-deaths").write_text("2\n")
    (d / "failure-window").write_text("30000\n")
    first = scans("prefork", root, table=False)
    assert wait_until(lambda: any("not restarted until svc -u" in line for line in first.stderr()), 10)
    kill(first)
    second = scans("prefork", root, table=False)
    assert wait_until(lambda: "flap" in svstat_all(root), 5)
    time.sleep(2.0)  # time for a start, if one were made
    assert len(starts(root)) == 2
    flap = svstat_all(root)["flap"]
    assert flap["failed"] is True and flap["want"] == "down" and flap["pid"] == 0, flap
    svc(ours("svc"), root, "-u", "flap")
    assert wait_until(lambda: len(starts(root)) >= 3, 5)
    assert second.stderr() == [] or all("not restarted" in line for line in second.stderr())


FINISH = """echo finish $(cut -d' ' -f1 /proc/uptime) >> ../starts
echo $$ > ../finish.pid
sleep {sleep}
echo end $(cut -d' ' -f1 /proc/uptime) >> ../starts"""
ONCE = f"{NOTE_START}; [ -e ../ran ] && exec sleep 300; touch ../ran; exit 1"


def test_the_next_run_waits_for_the_orphaned_finish(tmp_path, scans):
    """svscan killed while ./finish runs: the new one takes the finish over (svstat --all: finishing), starts
    ./run only after it ended, and then as its policy says (at once here)."""
    root = tmp_path / "scan"
    d = make_service(root, "svc", run=ONCE)
    script(d / "finish", FINISH.format(sleep=2))
    first = scans("prefork", root, table=False)
    assert wait_until(lambda: finish_kept(d, root), 10)
    kill(first)
    second = scans("prefork", root, table=False)
    assert wait_until(lambda: svstat_all(root).get("svc", {}).get("flags", 0) & 32, 5)  # finishing
    assert wait_until(lambda: len(starts(root)) == 2, 10), (root / "starts").read_text()
    (end,) = starts(root, "end")
    assert starts(root)[1] >= end  # no overlap
    assert starts(root)[1] - end < 1.5  # and no needless wait
    assert second.stderr() == []
    assert wait_until(lambda: not (d / "supervise" / restartfile.NAME).exists(), 3)  # nothing left to keep


def test_runit_mode_takes_the_finish_pid_of_state_2_for_no_run(tmp_path, scans):
    """svscan --runit writes runsv's state 2 with ./finish's pid; killed then, the next one must not take that
    pid for a running ./run (it started within two seconds of the label): it waits for the finish instead."""
    root = tmp_path / "scan"
    d = make_service(root, "svc", run=ONCE)
    script(d / "finish", FINISH.format(sleep=2))
    first = scans("prefork", root, "--runit", table=False)
    assert wait_until(lambda: finish_kept(d, root) and starts(root, "finish"), 10)
    finish_pid = int((root / "finish.pid").read_text())
    raw = (d / "supervise" / "status").read_bytes()
    assert int.from_bytes(raw[12:16], "little") == finish_pid and raw[19] == 2
    kill(first)
    scans("prefork", root, "--runit", table=False)
    assert wait_until(lambda: len(starts(root)) == 2, 10), (root / "starts").read_text()
    assert starts(root)[1] >= starts(root, "end")[0]

    def running_run() -> bool:  # the status is written after the spawn: the start line may come first
        raw = (d / "supervise" / "status").read_bytes()
        return raw[19] == 1 and int.from_bytes(raw[12:16], "little") not in (0, finish_pid)

    assert wait_until(running_run, 5), (d / "supervise" / "status").read_bytes()
    assert len(starts(root, "finish")) == 1  # a finish taken for a ./run would have "exited" into a second one


def test_timeout_finish_still_kills_the_orphaned_finish(tmp_path, scans):
    """timeout-finish 2500: the finish started under the first svscan is killed about 2.5 s after its start by
    the second one (the moment was kept), then ./run starts."""
    root = tmp_path / "scan"
    d = make_service(root, "svc", run=ONCE)
    script(d / "finish", FINISH.format(sleep=60))
    (d / "timeout-finish").write_text("2500\n")
    first = scans("prefork", root, table=False)
    assert wait_until(lambda: finish_kept(d, root) and starts(root, "finish"), 10)
    finish_pid = int((root / "finish.pid").read_text())
    kill(first)
    second = scans("prefork", root, table=False)
    assert wait_until(lambda: not running(finish_pid), 8)
    killed = uptime() - starts(root, "finish")[0]
    assert 2.0 <= killed <= 4.0, killed
    assert wait_until(lambda: len(starts(root)) == 2, 5)
    assert starts(root, "end") == []  # it was killed, not ended
    assert "supervise: warning: svc/finish still running after timeout-finish: sending it SIGKILL" in second.stderr()


def test_a_sigkilled_supervise_hands_its_backoff_to_the_next(tmp_path):
    """``supervise DIR`` alone, killed in a 2 s back-off wait: the next one starts ./run when the wait ends."""
    root = tmp_path / "svcs"
    d = make_service(root, "flap", run=f"{NOTE_START}; exit 1")
    (d / "backoff-max").write_text("2000\n")
    tag = f"supervise-{os.getpid()}-{time.monotonic_ns()}"
    env = {"PATH": "/usr/bin:/bin", TAG_VAR: tag}
    procs = []

    def supervise() -> subprocess.Popen:
        proc = subprocess.Popen([ours("supervise"), "--table", str(tmp_path / f"table{len(procs)}"), "flap"],
                                cwd=root, env=env, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        procs.append(proc)
        return proc

    try:
        first = supervise()
        assert wait_until(lambda: len(starts(root)) == 3, 10), starts(root)
        time.sleep(0.5)  # dead, in its 2 s wait
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        supervise()
        assert wait_until(lambda: len(starts(root)) == 4, 10), starts(root)
        t = starts(root)
        assert 1.9 <= t[3] - t[2] <= 2.8, t
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)
        sweep([tag], tmp_path)


def planted(d: Path, text: bytes) -> None:
    sup = d / "supervise"
    sup.mkdir(mode=0o700)
    (sup / restartfile.NAME).write_bytes(text)


@pytest.mark.parametrize("text, warned", [
    (b"v1 boot={boot} delay=999999999 due=999999999999999 failed=0 deaths= finish=0:0:0\n", False),
    (b"garbage\n", True),
    (b"v1 boot={boot} delay=1 due=1 failed=2 deaths= finish=0:0:0\n", True),
    (b"v1 boot=00000000-0000-0000-0000-000000000000 delay=4000 due=999999999999999 failed=1 deaths= finish=0:0:0\n", False),
], ids=["huge-delay", "garbage", "bad-flag", "other-boot"])
def test_a_planted_restart_file_cannot_hold_a_service_down(tmp_path, scans, text, warned):
    """A huge due time waits at most backoff-max (2 s); garbage is one warning and ignored; another boot's
    file is ignored in silence (its failure too: no failure-deaths here would count it anyway)."""
    root = tmp_path / "scan"
    d = make_service(root, "svc", run=f"{NOTE_START}; exec sleep 300")
    (d / "backoff-max").write_text("2000\n")
    planted(d, text.replace(b"{boot}", restartfile.boot_id().encode()))
    began = uptime()
    scan = scans("prefork", root, table=False)
    assert wait_until(lambda: starts(root), 5)
    assert starts(root)[0] - began < 3.0
    lines = [line for line in scan.stderr() if "restart" in line]
    assert lines == (["svscan: warning: invalid svc/supervise/restart, ignored"] if warned else []), scan.stderr()
    left = (d / "supervise" / restartfile.NAME)
    if text.startswith(b"v1 boot={boot} delay=999999999"):  # rewritten as bounded: the cap, due by now
        saved = restartfile.decode(left.read_bytes())
        assert saved is not None and saved.delay_ms == 2000 and saved.due_ms <= time.monotonic() * 1000
    else:
        assert wait_until(lambda: not left.exists(), 3)


def test_a_restart_file_that_is_a_link_is_not_followed(tmp_path, scans):
    """supervise/restart as a link to a valid "failed" line elsewhere: not read (the service starts), and the
    link's target is never written (the next write replaces the link itself)."""
    root = tmp_path / "scan"
    d = make_service(root, "svc", run=f"{NOTE_START}; exit 1")
    (d / "failure-deaths").write_text("100\n")
    target = tmp_path / "elsewhere"
    line = f"v1 boot={restartfile.boot_id()} delay=0 due=0 failed=1 deaths= finish=0:0:0\n".encode()
    target.write_bytes(line)
    (d / "supervise").mkdir(mode=0o700)
    (d / "supervise" / restartfile.NAME).symlink_to(target)
    scans("prefork", root, table=False)
    assert wait_until(lambda: len(starts(root)) >= 2, 5)  # not held down; it died, so a file was written
    assert target.read_bytes() == line
    assert not (d / "supervise" / restartfile.NAME).is_symlink()


def test_the_restart_file_is_rewritten_in_place_but_never_through_a_second_hard_link(tmp_path, scans):
    """At each death the same inode gets the new line (no new file and rename per death); a second hard link
    to it, planted meanwhile, makes the next write replace the name instead of writing through the link."""
    root = tmp_path / "scan"
    d = make_service(root, "svc", run=f"{NOTE_START}; exit 1")
    (d / "failure-deaths").write_text("100\n")
    path = d / "supervise" / restartfile.NAME
    scans("prefork", root, table=False)
    assert wait_until(lambda: len(starts(root)) >= 2 and path.exists(), 5)
    inode, first = path.stat().st_ino, path.read_bytes()
    assert wait_until(lambda: path.read_bytes() != first, 5)  # the next death wrote again: the same file
    assert path.stat().st_ino == inode
    assert restartfile.decode(path.read_bytes()) is not None
    other = tmp_path / "other"
    os.link(path, other)
    kept = other.read_bytes()
    assert wait_until(lambda: path.stat().st_ino != inode, 5)  # replaced, not written through
    assert other.read_bytes() == kept
    assert restartfile.decode(path.read_bytes()) is not None


def test_a_planted_finish_pid_of_another_process_is_neither_waited_for_nor_killed(tmp_path, scans):
    """The pid of a live process that is not the finish recorded (its start time differs): ./run starts at
    once and the process is left alone."""
    root = tmp_path / "scan"
    d = make_service(root, "svc", run=f"{NOTE_START}; exec sleep 300")
    (d / "timeout-finish").write_text("500\n")
    other = subprocess.Popen(["sleep", "30"], cwd=d)
    try:
        ticks = psutil.Process(other.pid).create_time()  # only to make sure it runs; the file gets wrong ticks
        assert ticks
        planted(d, f"v1 boot={restartfile.boot_id()} delay=0 due=0 failed=0 deaths= finish={other.pid}:1:0\n"
                   .encode())
        scans("prefork", root, table=False)
        assert wait_until(lambda: starts(root), 5)
        time.sleep(1.0)  # past the timeout-finish of a finish it wrongly took over
        assert other.poll() is None
    finally:
        other.kill()
        other.wait(10)


# -- the file's codec (control/restartfile.py) ------------------------------------------------------
def test_the_restart_file_round_trips():
    saved = restartfile.Saved("0123abcd-0000", 4000, 123456, True, [1, 2, 3], 4242, 99, 777)
    again = restartfile.decode(restartfile.encode(saved))
    assert again is not None
    assert [getattr(again, k) for k in restartfile.Saved.__slots__] == [getattr(saved, k) for k in saved.__slots__]
    assert restartfile.Saved("b").empty() and not restartfile.Saved("b", failed=True).empty()


GOOD = b"v1 boot=ab-12 delay=1 due=2 failed=0 deaths=3,4 finish=5:6:7\n"


@pytest.mark.parametrize("data", [
    b"", GOOD[:-1], GOOD.replace(b"v1", b"v2"), GOOD.replace(b"delay=1", b"delay=-1"),
    GOOD.replace(b"delay=1", b"delay=1 delay=1"), GOOD.replace(b"due=2", b"due=99999999999999999999"),
    GOOD.replace(b"boot=ab-12", b"boot=AB/12"), GOOD.replace(b"finish=5:6:7", b"finish=5:6"),
    GOOD.replace(b"failed=0", b"failed=7"), GOOD.replace(b"deaths=3,4", b"deaths=3,,4"),
    GOOD.replace(b" due=2", b""), GOOD.replace(b"=1 ", b"=\xd9\xa1 "),
], ids=["empty", "no-newline", "version", "negative", "twice", "huge", "boot", "finish", "flag", "deaths",
        "missing", "unicode-digit"])
def test_a_bad_restart_file_decodes_to_none(data):
    assert restartfile.decode(GOOD) is not None
    assert restartfile.decode(data) is None


@given(st.binary(max_size=200))
@settings(max_examples=300, deadline=None)
def test_decode_never_raises(data):
    restartfile.decode(data)
    restartfile.decode(GOOD[:20] + data)


# -- a realtime step during back-off, end to end (libfaketime) ----------------------------------------
FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"


@pytest.mark.parametrize("step", ["+3600", "-3600"])
def test_a_realtime_step_mid_backoff_moves_no_restart(tmp_path, step):
    """svscan under libfaketime (CLOCK_REALTIME from a file the test rewrites, CLOCK_MONOTONIC untouched):
    stepping its wall clock by an hour in a 4 s back-off wait neither starts the service early nor holds it
    back; the status label written afterwards follows the stepped clock."""
    if not os.path.exists(FAKETIME_LIB):
        pytest.skip(f"libfaketime is not installed ({FAKETIME_LIB}: apt-get install faketime)")
    root = tmp_path / "scan"
    d = make_service(root, "flap", run=f"{NOTE_START}; exit 1")
    (d / "backoff-max").write_text("4000\n")
    clock = tmp_path / "faketime.rc"
    clock.write_text("+0\n")
    tag = f"svscan-{os.getpid()}-{time.monotonic_ns()}"
    with faketime_shared() as shared:
        env = {"PATH": "/usr/bin:/bin", TAG_VAR: tag, "LD_PRELOAD": FAKETIME_LIB, "FAKETIME_TIMESTAMP_FILE": str(clock),
               "FAKETIME_NO_CACHE": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1", "FAKETIME_SHARED": shared}
        stepped_wall_clock_run(tmp_path, root, d, clock, step, tag, env)


@contextlib.contextmanager
def faketime_shared() -> Iterator[str]:
    """FAKETIME_SHARED for libfaketime: a semaphore and a shared-memory file of this test's, which every
    preloaded process (svscan, each ./run, its sh) attaches to instead of creating a pair of its own in
    /dev/shm (left behind by every process killed or exec'd); both are removed at the end."""
    name = f"faketime_prefork_test_{os.getpid()}_{time.monotonic_ns()}"
    sem = _multiprocessing.SemLock(1, 1, 1, f"/{name}_sem", False)  # kind 1: a semaphore; named, not unlinked
    shm = f"/dev/shm/{name}_shm"
    try:
        fd = os.open(shm, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_NOFOLLOW, 0o600)
        try:
            os.ftruncate(fd, 4096)  # room for libfaketime's counters
        finally:
            os.close(fd)
        yield f"/{name}_sem /{name}_shm"
    finally:
        del sem
        for path in (shm, f"/dev/shm/sem.{name}_sem"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def stepped_wall_clock_run(tmp_path, root, d, clock, step, tag, env) -> None:
    with open(tmp_path / "err", "wb") as err:
        proc = subprocess.Popen([ours("svscan"), "--table", str(tmp_path / "table"), str(root)], env=env,
                                stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True)
    try:
        assert wait_until(lambda: len(starts(root)) == 3, 10), starts(root)
        time.sleep(1.0)  # dead again, 1 s into its 4 s wait
        clock.write_text(f"{step}\n")
        assert wait_until(lambda: len(starts(root)) == 5, 15), starts(root)
        t = starts(root)
        gaps = [round(b - a, 2) for a, b in zip(t, t[1:], strict=False)]
        assert 3.9 <= gaps[2] <= 4.8 and 3.9 <= gaps[3] <= 4.8, gaps
        label = statusfile.read(str(d / "supervise")).seconds
        assert abs(label - (time.time() + int(step))) < 30, (label, time.time())  # the step took effect
        assert (tmp_path / "err").read_bytes() == b""
    finally:
        proc.kill()
        proc.wait(10)
        sweep([tag], tmp_path)
