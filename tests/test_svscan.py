"""svscan: prefork's one-process scan against daemontools 0.76's svscan + supervise (docs/CONTRACTS.md, svscan).

Differential tests run one scenario against Debian's ``/usr/bin/svscan`` (with PATH=/usr/bin:/bin, so it
execs Debian's ``supervise``) and against prefork's ``svscan`` at the same time, one thread each (0.76
rescans only every 5 seconds, so running them one after the other would double the wait), and compare
what Debian's svstat and the status files show, normalised for pids and seconds.  "A scan has happened
since X" is observed the same way for both: a new service directory made after X gets supervised.

The rest is prefork-only: the rescan signals, the lock against a second svscan, adoption after a
SIGKILL, --stop-services, --subreaper, --max-services, the shared-memory table, ``svstat --all``, and a
tree of 100 services with logs.

Every process a test starts carries a unique PREFORK_TEST_TAG in its environment (both svscans hand
their environment on); at teardown every svscan is SIGKILLed, then every tagged process and every
process whose cwd is in the test's tmp dir (services that escaped to init), by pid through psutil.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import stat
import subprocess
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
from conftest import ours, real, remove_shm_files_of, supervised
from tcpserver_harness import TAG_VAR, kill_procs, tagged, wait_until

from prefork import tai64n
from prefork.control import statusfile
from prefork.control.svscan import USAGE as SVSCAN_USAGE_LINE

try:
    from prefork.control import servicetable_read
except ImportError:  # written by another helper; the table asserts are skipped without it
    servicetable_read = None

IMPLS = ("debian", "prefork")
SLEEP = "exec sleep 300"
CAT_LOG = "exec cat >> out"
FATAL_LOG_FILE = "supervise: fatal: unable to chdir to log: not a directory"
# A main that writes "GEN N" lines, N = 1, 2, ... every 10 ms, one write() each; GEN counts its starts.
NUMBERED = """g=$(cat gen 2>/dev/null || echo 0)
g=$((g+1))
echo $g > gen
exec perl -e '$|=1; for ($i = 1; ; $i++) { print "$ARGV[0] $i\\n"; select(undef, undef, undef, 0.01) }' $g"""
_probes = itertools.count(1)


# -- service trees --------------------------------------------------------------------------------
def script(path: Path, body: str) -> None:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def make_service(root: Path, name: str, run: str = SLEEP, log: str | None = None, down: bool = False) -> Path:
    """ROOT/NAME with ./run (and log/run when LOG is given)."""
    d = root / name
    d.mkdir(parents=True)
    script(d / "run", run)
    if log is not None:
        (d / "log").mkdir()
        script(d / "log" / "run", log)
    if down:
        (d / "down").touch()
    return d


# -- observing services ---------------------------------------------------------------------------


def pid_of(d: Path) -> int:
    """The pid in d/supervise/status (0 when down or unreadable)."""
    try:
        return statusfile.read(str(d / "supervise")).pid
    except (OSError, ValueError):
        return 0


def wait_up(d: Path, timeout: float = 10.0, other_than: int = 0) -> int:
    """Wait until D is supervised and running (with a pid other than OTHER_THAN) and its ./run has exec'd; its pid.

    Every ./run here ends in ``exec PROGRAM``: waiting for it makes the process's name and environment final.
    """
    up = wait_until(lambda: supervised(d) and pid_of(d) not in (0, other_than) and pid_of(d), timeout)
    assert up, f"{d} did not come up within {timeout} s (status pid {pid_of(d)}, supervised {supervised(d)})"
    wait_until(lambda: not _before_exec(int(up)), 5)
    return int(up)


def _before_exec(pid: int) -> bool:
    """PID is still the supervisor's child before exec, or sh running ./run (the kernel names it "run")."""
    try:
        name = psutil.Process(pid).name()
    except psutil.Error:
        return False
    return name in ("run", "sh", "supervise", "svscan") or name.startswith("python")


def wait_down(d: Path, timeout: float = 10.0) -> None:
    assert wait_until(lambda: pid_of(d) == 0, timeout), f"{d} still up (pid {pid_of(d)})"


def await_rescan(root: Path, timeout: float = 12.0) -> None:
    """Return once svscan has scanned ROOT after this call: a directory made now gets supervised."""
    probe = make_service(root, f"zprobe{next(_probes)}")
    assert wait_until(lambda: supervised(probe), timeout), f"no scan of {root} within {timeout} s"


def exit_time(d: Path) -> float:
    """Unix time of the last pid change of D (its status label)."""
    seconds, nanos = tai64n.unpack(statusfile.read(str(d / "supervise")).label)
    return seconds + nanos / 1e9


def running(pid: int) -> bool:
    """PID exists and is not a zombie (init here does not reap orphans promptly)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def procs_in(d: Path, name: str | None = None) -> list[psutil.Process]:
    """Live (non-zombie) processes whose cwd is D, optionally only those called NAME."""
    target = os.path.realpath(d)
    found = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if p.pid == os.getpid() or (name is not None and p.name() != name):
                continue
            if p.cwd() == target and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
    return found


def normalise(text: str) -> str:
    text = re.sub(r"\(pid \d+\)", "(pid N)", text)
    return re.sub(r"\b\d+ seconds", "S seconds", text)


def svstat(tool: str, root: Path, *names: str) -> list[str]:
    """The svstat lines for NAMES (relative to ROOT), normalised."""
    out = subprocess.run([tool, *names], cwd=root, capture_output=True, timeout=10, check=True)
    return [normalise(line) for line in out.stdout.decode().splitlines()]


def svc(tool: str, root: Path, *args: str) -> None:
    done = subprocess.run([tool, *args], cwd=root, capture_output=True, timeout=10)
    assert (done.returncode, done.stderr) == (0, b""), done


def numbered_runs(text: str) -> dict[int, int]:
    """GEN -> last N of a NUMBERED log; asserts each start's lines are 1..N in order, starts in order."""
    runs: dict[int, int] = {}
    for line in text.splitlines():
        m = re.fullmatch(r"(\d+) (\d+)", line)
        assert m, f"mangled line {line!r}"
        gen, n = int(m[1]), int(m[2])
        expected = runs.get(gen, 0) + 1
        assert n == expected, f"start {gen}: line {n} after {expected - 1} (lost or repeated lines)"
        assert gen >= max(runs, default=gen), f"start {gen} logged after start {max(runs)}"
        runs[gen] = n
    assert sorted(runs) == list(range(1, len(runs) + 1)), f"a start logged nothing: {sorted(runs)}"
    return runs


def settled(probe: Callable[[], object], timeout: float, interval: float) -> bool:
    """Wait until PROBE() gives the same value twice INTERVAL apart; bounded by TIMEOUT and a step count."""
    deadline = time.monotonic() + timeout
    last = probe()
    for _ in range(int(timeout / interval) + 1):
        time.sleep(interval)
        value = probe()
        if value == last:
            return True
        if time.monotonic() >= deadline:
            break
        last = value
    return False


def log_lines(d: Path) -> str:
    try:
        return (d / "log" / "out").read_text()
    except FileNotFoundError:
        return ""


def count_lines(d: Path) -> int:
    return log_lines(d).count("\n")


# -- starting and ending svscans ------------------------------------------------------------------
class Scan:
    """One svscan (Debian's or prefork's) on ROOT; its stderr goes to a file next to ROOT."""

    def __init__(self, impl: str, root: Path, args: tuple[str, ...] = (), table: bool = True) -> None:
        self.impl = impl
        self.root = root
        self.tag = f"svscan-{uuid.uuid4().hex}"
        stem = root.parent / f"{root.name}.{self.tag[-8:]}"
        self.errfile = Path(f"{stem}.err")
        self.table = Path(f"{stem}.table") if impl == "prefork" and table else None
        if impl == "debian":
            argv = [real("svscan")]
        else:
            argv = [ours("svscan"), *(["--table", str(self.table)] if self.table else []), *args]
        env = {"PATH": "/usr/bin:/bin", TAG_VAR: self.tag}
        with open(self.errfile, "wb") as err, open(f"{stem}.out", "wb") as out:
            self.proc = subprocess.Popen([*argv, str(root)], env=env, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=err, start_new_session=True)
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> list[str]:
        return self.errfile.read_text().splitlines()


@pytest.fixture
def scans(tmp_path):
    """start(impl, root, *args, table=True) -> Scan; at teardown everything the scans started is killed."""
    made: list[Scan] = []

    def start(impl: str, root: Path, *args: str, table: bool = True) -> Scan:
        scan = Scan(impl, root, args, table)
        made.append(scan)
        return scan

    try:
        yield start
    finally:
        for scan in made:
            with contextlib.suppress(OSError):
                scan.proc.kill()
        for scan in made:
            with contextlib.suppress(subprocess.TimeoutExpired):
                scan.proc.wait(10)
        sweep([scan.tag for scan in made], tmp_path)


def sweep(tags: list[str], tmp_path: Path) -> None:
    """SIGKILL, by pid, every live process carrying one of TAGS or working inside TMP_PATH (bounded passes)."""
    inside = str(tmp_path)
    for _ in range(5):
        procs = {p.pid: p for tag in tags for p in tagged(tag)}
        for p in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                cwd = p.cwd()
                if cwd == inside or cwd.startswith(inside + os.sep):
                    procs.setdefault(p.pid, p)
        procs.pop(os.getpid(), None)
        live = [p for p in procs.values() if running(p.pid)]
        if not live:
            return
        kill_procs(live)


def both(tmp_path: Path, scenario: Callable[[str, Path], object]) -> dict[str, object]:
    """Run SCENARIO(impl, root) for Debian's svscan and prefork's at once; their results by impl."""
    for name in ("svscan", "supervise", "svstat", "svc", "svok"):
        real(name)
    roots = {}
    for impl in IMPLS:
        roots[impl] = tmp_path / impl / "sv"
        roots[impl].mkdir(parents=True)
    with ThreadPoolExecutor(len(IMPLS)) as pool:
        futures = {impl: pool.submit(scenario, impl, roots[impl]) for impl in IMPLS}
        return {impl: future.result(timeout=150) for impl, future in futures.items()}


def same(results: dict[str, object]) -> object:
    assert results["prefork"] == results["debian"]
    return results["prefork"]


# == differential: the scan =======================================================================
@pytest.mark.differential
def test_dot_entries_are_skipped(tmp_path, scans):
    def scenario(impl: str, root: Path) -> object:
        make_service(root, "a")
        make_service(root, ".hidden")
        scan = scans(impl, root)
        wait_up(root / "a")
        await_rescan(root)
        return svstat(real("svstat"), root, "a", ".hidden"), sorted(os.listdir(root / ".hidden")), scan.stderr()

    assert same(both(tmp_path, scenario)) == (
        ["a: up (pid N) S seconds", ".hidden: unable to open supervise/ok: file does not exist"], ["run"], [],
    )


@pytest.mark.differential
def test_plain_files_are_skipped_silently(tmp_path, scans):
    def scenario(impl: str, root: Path) -> object:
        make_service(root, "a")
        (root / "file").write_text("not a service\n")
        script(root / "run", SLEEP)  # an executable file is still just a file
        scan = scans(impl, root)
        wait_up(root / "a")
        await_rescan(root)
        return sorted(p.name for p in root.iterdir() if p.is_file()), scan.stderr()

    assert same(both(tmp_path, scenario)) == (["file", "run"], [])


@pytest.mark.differential
def test_dangling_symlink_is_skipped_with_a_warning_each_scan(tmp_path, scans):
    def scenario(impl: str, root: Path) -> object:
        make_service(root, "a")
        (root / "dangling").symlink_to("nowhere")
        scan = scans(impl, root)
        wait_up(root / "a")
        await_rescan(root)
        # The first scan's warning and the probed scan's (which may come after the probe in readdir order).
        assert wait_until(lambda: len(scan.stderr()) >= 2, 5), scan.stderr()
        return sorted(set(scan.stderr())), os.path.lexists(root / "nowhere")

    assert same(both(tmp_path, scenario)) == (["svscan: warning: unable to stat dangling: file does not exist"],
                                              False)


@pytest.mark.differential
def test_symlinked_service_dir_is_supervised(tmp_path, scans):
    def scenario(impl: str, root: Path) -> object:
        target = make_service(root.parent, "elsewhere")
        (root / "link").symlink_to("../elsewhere")
        scans(impl, root)
        pid = wait_up(root / "link")
        return (svstat(real("svstat"), root, "link"), sorted(os.listdir(target / "supervise")),
                [p.pid for p in procs_in(target, "sleep")] == [pid])

    assert same(both(tmp_path, scenario)) == (["link: up (pid N) S seconds"], ["control", "lock", "ok", "status"],
                                              True)


@pytest.mark.differential
def test_two_names_for_one_directory_are_one_service(tmp_path, scans):
    def scenario(impl: str, root: Path) -> object:
        make_service(root, "a")
        (root / "alias").symlink_to("a")
        scans(impl, root)
        wait_up(root / "a")
        await_rescan(root)
        return svstat(real("svstat"), root, "a", "alias"), len(procs_in(root / "a", "sleep"))

    assert same(both(tmp_path, scenario)) == (["a: up (pid N) S seconds", "alias: up (pid N) S seconds"], 1)


# == differential: NAME and NAME/log ==============================================================
@pytest.mark.differential
def test_log_gets_the_lines_of_its_service_in_order(tmp_path, scans):
    lines = "".join(f"line {i}\n" for i in range(1, 301))

    def scenario(impl: str, root: Path) -> object:
        a = make_service(root, "a", 'for i in $(seq 1 300); do echo "line $i"; done\n' + SLEEP, log=CAT_LOG)
        scans(impl, root)
        main, logger = wait_up(a), wait_up(a / "log")
        assert wait_until(lambda: count_lines(a) >= 300, 10), count_lines(a)
        fd0 = os.stat(f"/proc/{logger}/fd/0")
        fd1 = os.stat(f"/proc/{main}/fd/1")
        return (log_lines(a), svstat(real("svstat"), root, "a", "a/log"), stat.S_ISFIFO(fd1.st_mode),
                fd0.st_ino == fd1.st_ino)

    assert same(both(tmp_path, scenario)) == (lines, ["a: up (pid N) S seconds", "a/log: up (pid N) S seconds"],
                                              True, True)


@pytest.mark.differential
def test_log_that_is_a_file_repeats_supervise_fatal(tmp_path, scans):
    def scenario(impl: str, root: Path) -> object:
        a = make_service(root, "a", "echo hello\n" + SLEEP)
        (a / "log").write_text("a file\n")
        scan = scans(impl, root)
        main = wait_up(a)
        assert wait_until(lambda: len(scan.stderr()) >= 2, 12), scan.stderr()  # the first scan and the next
        return (sorted(set(scan.stderr())), svstat(real("svstat"), root, "a", "a/log"),
                stat.S_ISFIFO(os.stat(f"/proc/{main}/fd/1").st_mode))

    assert same(both(tmp_path, scenario)) == (
        [FATAL_LOG_FILE], ["a: up (pid N) S seconds", "a/log: unable to chdir: not a directory"], True,
    )


@pytest.mark.differential
def test_log_pipe_survives_restarts_of_either_side(tmp_path, scans):
    """No line is lost or repeated when either end of the pipe restarts, or while the log is down.

    A log is only stopped while it is idle (its main paused with ``p``, the pipe drained): a logger
    killed between reading a line and writing it loses that line whatever the supervisor does.
    """
    svc_ = real("svc")

    def more_lines(a: Path, than: int, count: int = 20) -> None:
        assert wait_until(lambda: count_lines(a) >= than + count, 10), f"the log stalled at {count_lines(a)} lines"

    def quiet(root: Path, a: Path) -> None:
        svc(svc_, root, "-p", "a")
        assert settled(lambda: count_lines(a), 5, 0.2), "the log does not drain"

    def scenario(impl: str, root: Path) -> object:
        a = make_service(root, "a", NUMBERED, log=CAT_LOG)
        scans(impl, root)
        main = wait_up(a)
        logger = wait_up(a / "log")
        more_lines(a, 0)
        quiet(root, a)
        svc(svc_, root, "-k", "a/log")  # an automatic restart of the log, the main still holding the pipe
        logger = wait_up(a / "log", other_than=logger)
        svc(svc_, root, "-c", "a")
        more_lines(a, count_lines(a))
        svc(svc_, root, "-k", "a")  # the main dies mid-stream; its successor writes into the same pipe
        main = wait_up(a, other_than=main)
        more_lines(a, count_lines(a))
        quiet(root, a)
        svc(svc_, root, "-d", "a/log")  # no reader for a while: the pipe keeps what the main writes
        wait_down(a / "log")
        lines = count_lines(a)
        svc(svc_, root, "-c", "a")
        time.sleep(0.5)
        unread = count_lines(a) == lines
        svc(svc_, root, "-u", "a/log")
        wait_up(a / "log", other_than=logger)
        more_lines(a, lines, 60)  # the ~50 lines written meanwhile, then more
        svc(svc_, root, "-d", "a")
        wait_down(a)
        time.sleep(0.3)  # the log drains what the last main wrote
        return numbered_runs(log_lines(a)), unread

    results = both(tmp_path, scenario)
    for impl, (runs, unread) in results.items():
        assert sorted(runs) == [1, 2], (impl, runs)
        assert all(n >= 20 for n in runs.values()), (impl, runs)
        assert unread, f"{impl}: lines reached the log while it was down"


@pytest.mark.differential
def test_services_inherit_the_environment_fds_and_signal_state_of_svscan(tmp_path, scans):
    def state(pid: int, scan: Scan, root: Path) -> tuple[list[str], list[str], str, str]:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = sorted(f.read().decode().replace(scan.tag, "TAG").replace(str(root), "ROOT").split("\0")[:-1])
        fds = sorted(os.listdir(f"/proc/{pid}/fd"))
        with open(f"/proc/{pid}/status") as f:
            sig = dict(line.rstrip("\n").split(":\t") for line in f if line.startswith(("SigBlk", "SigIgn")))
        return env, fds, sig["SigBlk"], sig["SigIgn"]

    def scenario(impl: str, root: Path) -> object:
        a = make_service(root, "a", log=CAT_LOG)
        scan = scans(impl, root)
        pids = [wait_up(d) for d in (a, a / "log")]
        assert [psutil.Process(pid).name() for pid in pids] == ["sleep", "cat"]
        return [state(pid, scan, root) for pid in pids]

    results = both(tmp_path, scenario)
    ignored = {}
    for impl, (main, log) in results.items():
        # Exactly what svscan was given (and PWD, which sh exports): no LC_CTYPE from Python's locale coercion.
        assert main[0] == ["PATH=/usr/bin:/bin", f"{TAG_VAR}=TAG", "PWD=ROOT/a"], impl
        assert log[0] == ["PATH=/usr/bin:/bin", f"{TAG_VAR}=TAG", "PWD=ROOT/a/log"], impl
        # 0, 1, 2 only: none of the supervisor's descriptors (and the pipe only as stdout / stdin).
        assert main[1] == log[1] == ["0", "1", "2"], impl
        assert main[2] == log[2] == "0000000000000000", impl
        assert main[3] == log[3], impl
        ignored[impl] = main[3]
    # glibc's posix_spawn leaves its internal signals 32 and 33 ignored in the program (sigaddset refuses them,
    # so they cannot be reset), and an ancestor's posix_spawn may have left them ignored in svscan itself (seen in
    # CI for Debian's); those two bits aside, nothing is ignored, as under 0.76's fork+exec.
    glibc = (1 << 31) | (1 << 32)
    assert {impl: int(mask, 16) & ~glibc for impl, mask in ignored.items()} == {"debian": 0, "prefork": 0}
    assert int(ignored["prefork"], 16) & glibc == glibc


@pytest.mark.differential
def test_missing_run_is_reported_with_supervise_names(tmp_path, scans):
    def scenario(impl: str, root: Path) -> object:
        a = make_service(root, "a", log=CAT_LOG)
        (a / "run").unlink()
        (a / "log" / "run").unlink()
        scan = scans(impl, root)
        # Each line twice: the first try and the retry a second later.
        assert wait_until(lambda: len(scan.stderr()) >= 4 and len(set(scan.stderr())) == 2, 10), scan.stderr()
        return sorted(set(scan.stderr())), svstat(real("svstat"), root, "a", "a/log")

    results = both(tmp_path, scenario)
    for impl in IMPLS:
        assert results[impl][0] == ["supervise: fatal: unable to start a/run: file does not exist",
                                    "supervise: fatal: unable to start log/run: file does not exist"], impl
    # 0.76 forks a child that fails to exec and then sleeps its second: svstat shows that child as up for
    # most of each cycle.  posix_spawn fails in the caller, so prefork never has a pid to show.
    assert results["debian"][1] == ["a: up (pid N) S seconds", "a/log: up (pid N) S seconds"]
    assert results["prefork"][1] == ["a: down S seconds, normally up, want up",
                                     "a/log: down S seconds, normally up, want up"]


# == differential: services that move, vanish or exit ==============================================
@pytest.mark.differential
def test_renamed_dir_is_the_same_service(tmp_path, scans):
    def scenario(impl: str, root: Path) -> object:
        a = make_service(root, "a")
        scans(impl, root)
        pid = wait_up(a)
        supervisors = sorted(p.pid for p in procs_in(a, "supervise"))
        a.rename(root / "b")
        await_rescan(root)
        b = root / "b"
        after = sorted(p.pid for p in procs_in(b, "supervise"))
        return (svstat(real("svstat"), root, "b"), pid_of(b) == pid and running(pid),
                [p.pid for p in procs_in(b, "sleep")] == [pid], after == supervisors or (supervisors, after),
                [n for n in sorted(os.listdir(root)) if not n.startswith("zprobe")])

    assert same(both(tmp_path, scenario)) == (["b: up (pid N) S seconds"], True, True, True, ["b"])


@pytest.mark.differential
def test_vanished_dir_keeps_its_service_until_it_exits(tmp_path, scans):
    svc_ = real("svc")

    def scenario(impl: str, root: Path) -> object:
        a = make_service(root, "a")
        scans(impl, root)
        pid = wait_up(a)
        gone = root.parent / "gone"
        a.rename(gone)
        await_rescan(root)
        seen = [svstat(real("svstat"), root.parent, "gone"), pid_of(gone) == pid and running(pid)]
        svc(svc_, root.parent, "-dx", "gone")
        assert wait_until(lambda: not supervised(gone), 5), "the supervisor of a vanished dir did not exit on x"
        assert wait_until(lambda: not running(pid), 5)
        seen += [svstat(real("svstat"), root.parent, "gone"), procs_in(gone) == []]
        gone.rename(a)  # back in the tree: a new service for the scan
        await_rescan(root)
        seen += [wait_up(a) != pid, svstat(real("svstat"), root, "a")]
        return seen

    assert same(both(tmp_path, scenario)) == [
        ["gone: up (pid N) S seconds"], True,
        ["gone: supervise not running"], True,
        True, ["a: up (pid N) S seconds"],
    ]


@pytest.mark.differential
def test_service_whose_supervisor_exited_is_supervised_again_at_the_next_scan(tmp_path, scans):
    svc_ = real("svc")

    def scenario(impl: str, root: Path) -> object:
        a = make_service(root, "a")
        scans(impl, root)
        pid = wait_up(a)
        svc(svc_, root, "-x", "a")
        time.sleep(0.3)
        seen = [svstat(real("svstat"), root, "a"), pid_of(a) == pid, supervised(a)]  # x waits for the service
        svc(svc_, root, "-k", "a")
        assert wait_until(lambda: not running(pid), 5)
        await_rescan(root)
        seen += [wait_up(a, other_than=pid) != pid, svstat(real("svstat"), root, "a")]
        return seen

    assert same(both(tmp_path, scenario)) == [
        ["a: up (pid N) S seconds"], True, True,
        True, ["a: up (pid N) S seconds"],
    ]


@pytest.mark.differential
def test_supervisor_restarted_at_the_next_scan_gets_the_same_pipe(tmp_path, scans):
    """``x`` ends the log's supervisor (and later the main's): the next scan's new one gets the same pipe."""
    svc_ = real("svc")

    def scenario(impl: str, root: Path) -> object:
        a = make_service(root, "a", NUMBERED, log=CAT_LOG)
        scans(impl, root)
        main = wait_up(a)
        logger = wait_up(a / "log")
        assert wait_until(lambda: count_lines(a) >= 20, 5)
        svc(svc_, root, "-p", "a")  # the log is idle when it is killed (see the test above)
        assert settled(lambda: count_lines(a), 5, 0.2)
        svc(svc_, root, "-x", "a/log")
        svc(svc_, root, "-k", "a/log")
        assert wait_until(lambda: not supervised(a / "log"), 5)
        lines = count_lines(a)
        svc(svc_, root, "-c", "a")  # no log and no log supervisor: the pipe holds the lines meanwhile
        time.sleep(0.3)
        unread = count_lines(a) == lines
        await_rescan(root)
        wait_up(a / "log", other_than=logger)
        assert wait_until(lambda: count_lines(a) >= lines + 40, 5)
        svc(svc_, root, "-x", "a")
        svc(svc_, root, "-k", "a")
        await_rescan(root)
        wait_up(a, other_than=main)
        assert wait_until(lambda: "\n2 20\n" in log_lines(a), 5), "the new main's lines do not reach the log"
        svc(svc_, root, "-d", "a")
        wait_down(a)
        time.sleep(0.3)
        return unread, sorted(numbered_runs(log_lines(a))), svstat(real("svstat"), root, "a", "a/log")

    assert same(both(tmp_path, scenario)) == (True, [1, 2], ["a: down S seconds, normally up",
                                                              "a/log: up (pid N) S seconds"])


# == differential: the command line and signals ===================================================
@pytest.mark.differential
@pytest.mark.parametrize(("operand", "error"), [("missing", "file does not exist"), ("file", "not a directory")])
def test_unusable_directory_is_fatal(tmp_path, operand, error):
    (tmp_path / "file").write_text("x\n")
    env = {"PATH": "/usr/bin:/bin"}
    results = {}
    for impl, argv in (("debian", [real("svscan")]), ("prefork", [ours("svscan")])):
        done = subprocess.run([*argv, operand], cwd=tmp_path, env=env, capture_output=True, timeout=10)
        results[impl] = (done.returncode, done.stdout, done.stderr)
    assert same(results) == (111, b"", f"svscan: fatal: unable to chdir to {operand}: {error}\n".encode())


@pytest.mark.differential
def test_dash_operand_is_a_directory_name(tmp_path):
    """0.76 has no options: ``-x`` is a directory.  prefork's options are all long, so it agrees."""
    results = {}
    for impl, argv in (("debian", [real("svscan")]), ("prefork", [ours("svscan")])):
        done = subprocess.run([*argv, "-x"], cwd=tmp_path, env={"PATH": "/usr/bin:/bin"}, capture_output=True,
                              timeout=10)
        results[impl] = (done.returncode, done.stdout, done.stderr)
    assert same(results) == (111, b"", b"svscan: fatal: unable to chdir to -x: file does not exist\n")


def run_svscan(tmp_path: Path, *args: str) -> tuple[int, bytes, bytes]:
    done = subprocess.run([ours("svscan"), *args], cwd=tmp_path, env={"PATH": "/usr/bin:/bin"},
                          capture_output=True, timeout=10)
    return done.returncode, done.stdout, done.stderr


SVSCAN_USAGE = f"svscan: usage: {SVSCAN_USAGE_LINE}\n".encode()


def test_unknown_long_option_is_a_usage_error(tmp_path):
    # 0.76 would chdir to "--bogus" and die with 111; prefork's extensions are long options, so it refuses.
    assert run_svscan(tmp_path, "--bogus", ".") == (100, b"", b"svscan: illegal option -- --bogus\n" + SVSCAN_USAGE)


def test_option_without_its_value_is_a_usage_error(tmp_path):
    assert run_svscan(tmp_path, "--max-services") == (
        100, b"", b"svscan: option requires an argument -- --max-services\n" + SVSCAN_USAGE)


@pytest.mark.parametrize(("option", "value"), [
    ("--max-services", "abc"), ("--max-services", "0"), ("--max-services", "-3"),
    ("--grace", "soon"), ("--grace", "-1"), ("--grace", "nan"), ("--grace", "inf"),
])
def test_bad_option_value_is_refused(tmp_path, option, value):
    # The directory is empty: were the value taken, svscan would run (and be killed by the timeout) starting nothing.
    assert run_svscan(tmp_path, option, value, ".") == (
        100, b"", f"svscan: bad value for {option}: {value!r}\n".encode() + SVSCAN_USAGE)


@pytest.mark.differential
def test_sigterm_kills_svscan_and_leaves_the_services_running(tmp_path, scans):
    def scenario(impl: str, root: Path) -> object:
        a = make_service(root, "a")
        b = make_service(root, "b", NUMBERED, log=CAT_LOG)
        scan = scans(impl, root)
        pids = [wait_up(a), wait_up(b), wait_up(b / "log")]
        scan.proc.send_signal(signal.SIGTERM)
        rc = scan.proc.wait(10)
        time.sleep(0.5)
        lines = count_lines(b)
        assert wait_until(lambda: count_lines(b) > lines + 10, 5), "main and log lost each other"
        return rc, [running(pid) for pid in pids], svstat(real("svstat"), root, "a", "b", "b/log")

    results = both(tmp_path, scenario)
    assert results["debian"][:2] == results["prefork"][:2] == (-signal.SIGTERM, [True, True, True])
    # One process supervises everything here: when it dies no one holds supervise/ok any more.
    assert results["debian"][2] == ["a: up (pid N) S seconds", "b: up (pid N) S seconds",
                                    "b/log: up (pid N) S seconds"]
    assert results["prefork"][2] == ["a: supervise not running", "b: supervise not running",
                                     "b/log: supervise not running"]


# == prefork only ==================================================================================
@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGALRM], ids=["SIGHUP", "SIGALRM"])
def test_signal_rescans_at_once(tmp_path, scans, sig):
    root = tmp_path / "sv"
    make_service(root, "a")
    scan = scans("prefork", root)
    wait_up(root / "a")
    b = make_service(root, "b")
    scan.proc.send_signal(sig)
    wait_up(b, timeout=4)
    # The periodic rescan comes 5 s after the first scan, which came after the start.
    assert time.monotonic() - scan.started < 4.5
    assert scan.proc.poll() is None
    assert scan.stderr() == []


def test_second_svscan_on_the_same_dir_exits_111_and_the_first_is_unharmed(tmp_path, scans):
    root = tmp_path / "sv"
    a = make_service(root, "a")
    first = scans("prefork", root)
    pid = wait_up(a)
    second = scans("prefork", root)
    assert second.proc.wait(10) == 111
    assert second.stderr() == [f"svscan: fatal: unable to lock {root}: temporary failure"]
    assert first.proc.poll() is None
    assert supervised(a) and pid_of(a) == pid and running(pid)
    svc(ours("svc"), root, "-k", "a")
    wait_up(a, other_than=pid)
    assert len(procs_in(a, "sleep")) == 1


def test_sigkilled_svscan_services_are_taken_over_by_the_next(tmp_path, scans):
    svc_, svstat_ = ours("svc"), ours("svstat")
    root = tmp_path / "sv"
    a = make_service(root, "a")
    b = make_service(root, "b", NUMBERED, log=CAT_LOG)
    c = make_service(root, "c", down=True)
    first = scans("prefork", root)
    pids = {d: wait_up(d) for d in (a, b, b / "log")}
    wait_until(lambda: count_lines(b) >= 20, 5)
    first.proc.kill()
    first.proc.wait(10)
    assert all(running(pid) for pid in pids.values())
    before = svstat(svstat_, root, "a", "b", "b/log", "c")
    assert before == ["a: supervise not running", "b: supervise not running", "b/log: supervise not running",
                      "c: supervise not running"]

    second = scans("prefork", root)
    assert wait_until(lambda: all(supervised(d) for d in (a, b, b / "log", c)), 10)
    time.sleep(1.5)  # time enough for a second copy to be started, if one were
    assert {d: pid_of(d) for d in pids} == pids
    for d in pids:
        assert [p.pid for p in procs_in(d) if p.name() in ("sleep", "perl", "cat")] == [pids[d]], d
    assert pid_of(c) == 0
    raw = subprocess.run([svstat_, "a", "b", "b/log", "c"], cwd=root, capture_output=True, timeout=10).stdout
    assert [re.sub(r"\b\d+ seconds", "S seconds", line) for line in raw.decode().splitlines()] == [
        f"a: up (pid {pids[a]}) S seconds", f"b: up (pid {pids[b]}) S seconds",
        f"b/log: up (pid {pids[b / 'log']}) S seconds", "c: down S seconds",
    ]
    assert second.stderr() == []

    # The log pipe was recovered: a restarted log reads what the adopted main writes, and back.
    # (The log is killed while idle: a logger killed between its read and its write loses that line.)
    svc(svc_, root, "-p", "b")
    assert settled(lambda: count_lines(b), 5, 0.2)
    lines = count_lines(b)
    svc(svc_, root, "-k", "b/log")
    wait_up(b / "log", other_than=pids[b / "log"])
    svc(svc_, root, "-c", "b")
    assert wait_until(lambda: count_lines(b) >= lines + 30, 5), "no lines reach the restarted log"
    svc(svc_, root, "-k", "b")
    wait_up(b, other_than=pids[b])
    assert wait_until(lambda: "\n2 30\n" in log_lines(b), 5), "the restarted main's lines do not reach the log"
    svc(svc_, root, "-d", "b")
    wait_down(b)
    time.sleep(0.3)
    runs = numbered_runs(log_lines(b))
    assert sorted(runs) == [1, 2], runs

    # Adopted services are controlled as usual.
    svc(svc_, root, "-d", "a")
    wait_down(a)
    assert wait_until(lambda: not running(pids[a]), 5)
    assert svstat(svstat_, root, "a") == ["a: down S seconds, normally up"]
    svc(svc_, root, "-u", "a")
    wait_up(a, other_than=pids[a])
    assert second.proc.poll() is None


def test_stop_services_brings_everything_down_and_exits_0(tmp_path, scans):
    root = tmp_path / "sv"
    dirs = [
        make_service(root, "a"),
        make_service(root, "deaf", "exec perl -e '$SIG{TERM} = \"IGNORE\"; sleep 1 while 1'"),
        make_service(root, "c", NUMBERED, log=CAT_LOG),
    ]
    scan = scans("prefork", root, "--stop-services", "--grace", "1")
    pids = {d: wait_up(d) for d in [*dirs, root / "c" / "log"]}
    deaf = psutil.Process(pids[root / "deaf"])
    wait_until(lambda: count_lines(root / "c") >= 20, 5)
    svc(ours("svc"), root, "-p", "a")  # stopped: dies of TERM only because CONT follows
    assert wait_until(lambda: psutil.Process(pids[root / "a"]).status() == psutil.STATUS_STOPPED, 5)
    sent, sent_at = time.monotonic(), time.time()
    scan.proc.send_signal(signal.SIGTERM)
    assert scan.proc.wait(10) == 0
    took = time.monotonic() - sent
    assert 0.9 <= took < 5, took  # deaf ignored TERM and got KILL after the grace second
    assert scan.stderr() == []
    assert not deaf.is_running()  # reaped by svscan: gone, not even a zombie
    for d, pid in pids.items():
        assert not psutil.pid_exists(pid) or not running(pid), d
        assert pid_of(d) == 0, d
    for d in dirs:  # mains got d (TERM); the log got only x and left at EOF, so it still says want up
        assert statusfile.read(str(d / "supervise")).want == statusfile.WANT_DOWN, d
    assert tagged(scan.tag) == []
    numbered_runs(log_lines(root / "c"))
    # When each went down, from the TAI64N label of its last status: the paused one at once (TERM+CONT),
    # the deaf one only at the KILL after the grace second.
    down_after = {d.name: exit_time(d) - sent_at for d in dirs}
    assert down_after["a"] < 0.8 and down_after["c"] < 0.8, down_after
    assert 0.9 <= down_after["deaf"] < 4, down_after


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop CAP_KILL and switch a service to nobody")
def test_stop_services_gives_up_on_a_service_it_cannot_signal(tmp_path):
    """svscan without CAP_KILL cannot signal a service that became nobody: it warns and exits, never hangs."""
    root = tmp_path / "sv"
    make_service(root, "a", "exec /usr/bin/setuidgid nobody /bin/sleep 1000", log=CAT_LOG)
    tag = f"svscan-{uuid.uuid4().hex}"
    err = tmp_path / "err"
    argv = ["setpriv", "--inh-caps=-kill", "--bounding-set=-kill", ours("svscan"), "--table", str(tmp_path / "t"),
            "--stop-services", "--grace", "1", str(root)]
    with open(err, "wb") as errfile:
        proc = subprocess.Popen(argv, env={"PATH": "/usr/bin:/bin", TAG_VAR: tag}, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=errfile, start_new_session=True)
    try:
        pid = wait_up(root / "a")
        assert wait_until(lambda: psutil.Process(pid).uids().real == 65534, 5)
        wait_up(root / "a" / "log")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert err.read_text() == f"svscan: warning: unable to stop a (pid {pid}): still running\n"
        assert running(pid)  # it really could not be stopped; the test ends it below
    finally:
        with contextlib.suppress(OSError):
            proc.kill()
        proc.wait(10)
        sweep([tag], tmp_path)


def test_stop_services_lets_the_log_drain_the_pipe(tmp_path, scans):
    root = tmp_path / "sv"
    slow_log = ("exec perl -e 'open(O, \">>\", \"out\") or die; select(O); $| = 1;"
                " while (<STDIN>) { print; select(undef, undef, undef, 0.001) }'")
    burst = "exec perl -e '$| = 1; print \"line $_\\n\" for 1..3000; sleep 300'"
    c = make_service(root, "c", burst, log=slow_log)
    scan = scans("prefork", root, "--stop-services", "--grace", "20")
    wait_up(c)
    wait_up(c / "log")
    assert wait_until(lambda: count_lines(c) >= 100, 5)
    scan.proc.send_signal(signal.SIGTERM)
    assert scan.proc.wait(25) == 0
    assert log_lines(c) == "".join(f"line {i}\n" for i in range(1, 3001))


def test_subreaper_reaps_orphaned_grandchildren(tmp_path, scans):
    root = tmp_path / "sv"
    a = make_service(root, "a", "sh -c 'sleep 0.5 &'\nexit 0", down=True)
    scan = scans("prefork", root, "--subreaper")
    assert wait_until(lambda: supervised(a), 10)
    svc(ours("svc"), root, "-o", "a")

    def orphan() -> psutil.Process | None:
        for p in procs_in(a, "sleep"):
            return p
        return None

    sleeper = wait_until(orphan, 5)
    assert sleeper, "the grandchild did not start"
    # Reparented to svscan, not to init, once the intermediate sh -c has exited.
    assert wait_until(lambda: sleeper.ppid() == scan.pid, 0.4), sleeper.ppid()
    wait_down(a)
    assert wait_until(lambda: not psutil.pid_exists(sleeper.pid), 3), "the orphan was not reaped"
    time.sleep(1)
    zombies = [p for p in psutil.Process(scan.pid).children() if p.status() == psutil.STATUS_ZOMBIE]
    assert zombies == []


def test_max_services_warns_about_the_rest(tmp_path, scans):
    root = tmp_path / "sv"
    for name in "abcde":
        make_service(root, name)
    scan = scans("prefork", root, "--max-services", "3")
    assert wait_until(lambda: sum(supervised(root / n) for n in "abcde") == 3, 10)
    assert wait_until(lambda: len(scan.stderr()) >= 2, 5)
    time.sleep(0.3)
    left_out = [n for n in "abcde" if not supervised(root / n)]
    assert sorted(set(scan.stderr())) == sorted(
        f"svscan: warning: unable to start {n}: running too many services" for n in left_out)
    assert sum(len(procs_in(root / n, "sleep")) for n in "abcde") == 3


def test_service_table_lists_every_service_and_log(tmp_path, scans):
    if servicetable_read is None:
        pytest.skip("prefork.control.servicetable_read is not there yet")
    from prefork.control import servicetable

    root = tmp_path / "sv"
    make_service(root, "a", log=CAT_LOG)
    b = make_service(root, "b")
    c = make_service(root, "c", down=True)
    default = servicetable.default_path(str(root), servicetable.KIND_SVSCAN)
    try:
        scan = scans("prefork", root, table=False)
        pids = {name: wait_up(root / name) for name in ("a", "a/log", "b")}
        svc(ours("svc"), root, "-k", "b")
        pids["b"] = wait_up(b, other_than=pids["b"])
        assert wait_until(lambda: supervised(c), 5)
        path = servicetable_read.find(str(root))
        assert path == default

        def pid_in_table(name: str) -> int:
            return next((e.pid for e in servicetable_read.read(path).entries if e.name == name), -1)

        # The status file is written just before the table slot: the table may be a moment behind it.
        assert wait_until(lambda: pid_in_table("b") == pids["b"], 5), pid_in_table("b")
        snap = servicetable_read.read(path)
        assert (snap.owner_pid, snap.kind_name, snap.directory) == (scan.pid, "svscan", str(root))
        assert snap.services == 3 and snap.scans >= 1 and snap.scan_errors == 0
        got = {e.name: (e.pid, e.state, e.want, e.starts, e.restarts, bool(e.flags & servicetable_read.FLAG_LOG))
               for e in snap.entries}
        assert got == {
            "a": (pids["a"], 1, b"u", 1, 0, False),
            "a/log": (pids["a/log"], 1, b"u", 1, 0, True),
            "b": (pids["b"], 1, b"u", 2, 1, False),
            "c": (0, 0, b"d", 0, 0, False),
        }
        assert os.WTERMSIG(next(e for e in snap.entries if e.name == "b").last_status) == signal.SIGKILL

        out = subprocess.run([ours("svstat"), "--all", str(root)], capture_output=True, timeout=10)
        assert (out.returncode, out.stderr) == (0, b"")
        lines = out.stdout.decode().splitlines()
        assert [normalise(line) for line in lines] == [
            "a: up (pid N) S seconds restarts 0",
            "a/log: up (pid N) S seconds restarts 0",
            "b: up (pid N) S seconds restarts 1 last exit signal 9",
            "c: down S seconds restarts 0",
        ]
        # The svstat part of each line is what Debian's svstat says of the same directory.
        if os.access("/usr/bin/svstat", os.X_OK):
            classic = svstat("/usr/bin/svstat", root, "a", "a/log", "b", "c")
            assert [normalise(line).split(" restarts ")[0] for line in lines] == classic
        assert f"(pid {pids['b']})" in lines[2]
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(default)


def test_hundred_services_with_logs_and_200_restarts(tmp_path, scans):
    """All up quickly, every line reaches its log, and 200 restarts leave no zombie, fd or memory behind."""
    root = tmp_path / "sv"
    run = "exec perl -e '$| = 1; for ($i = 1; ; $i++) { print \"$$ $i\\n\"; select(undef, undef, undef, 0.2) }'"
    dirs = [make_service(root, f"s{i:03d}", run, log=CAT_LOG) for i in range(100)]
    everything = [*dirs, *(d / "log" for d in dirs)]
    scan = scans("prefork", root)
    assert wait_until(lambda: all(supervised(d) and pid_of(d) for d in everything), 20), \
        [str(d) for d in everything if not pid_of(d)][:5]
    took = time.monotonic() - scan.started
    assert took < 10, f"200 services took {took:.1f} s to come up"
    assert wait_until(lambda: all(count_lines(d) >= 3 for d in dirs), 10)
    svscan = psutil.Process(scan.pid)
    time.sleep(1.2)  # every start is over a second old: the kills below restart at once
    before = (svscan.num_fds(), svscan.memory_info().rss)
    first = {d: pid_of(d) for d in everything}

    svc_ = ours("svc")
    svc(svc_, root, "-k", *(d.name for d in dirs))  # 100 mains; their logs keep reading
    assert wait_until(lambda: all(pid_of(d) not in (0, first[d]) for d in dirs), 15)
    # 100 logs, each killed while idle (a logger killed between its read and its write loses that line):
    # the mains are paused and the pipes drained first; what they write next must reach the new logs.
    svc(svc_, root, "-p", *(d.name for d in dirs))
    assert settled(lambda: [count_lines(d) for d in dirs], 5, 0.3), "the logs do not drain"
    svc(svc_, root, "-k", *(f"{d.name}/log" for d in dirs))
    assert wait_until(lambda: all(pid_of(d / "log") not in (0, first[d / "log"]) for d in dirs), 15)
    svc(svc_, root, "-c", *(d.name for d in dirs))
    second = {d: pid_of(d) for d in dirs}
    assert wait_until(lambda: all(f"{second[d]} 5\n" in log_lines(d) for d in dirs), 10)

    for d in dirs:  # per writer its lines 1..N in order, the first main's then the second's
        writers: dict[int, int] = {}
        for line in log_lines(d).splitlines():
            pid, n = map(int, line.split())
            assert n == writers.get(pid, 0) + 1, (d.name, line)
            writers[pid] = n
        assert list(writers) == [first[d], second[d]], (d.name, writers)
    assert wait_until(lambda: not [p for p in svscan.children() if p.status() == psutil.STATUS_ZOMBIE], 5)
    live = [p for p in svscan.children() if p.status() != psutil.STATUS_ZOMBIE]
    assert sorted(p.pid for p in live) == sorted(pid_of(d) for d in everything)
    after = (svscan.num_fds(), svscan.memory_info().rss)
    assert after[0] <= before[0] + 2, f"fds {before[0]} before 200 restarts, {after[0]} after"
    assert after[1] <= before[1] + (2 << 20), f"RSS {before[1]} before 200 restarts, {after[1]} after"
    assert scan.stderr() == []

    if servicetable_read is not None:
        snap = servicetable_read.read(str(scan.table))
        assert len(snap.entries) == 200 and snap.services == 100
        assert {e.name: (e.restarts, e.pid) for e in snap.entries} == {
            str(d.relative_to(root)): (1, pid_of(d)) for d in everything}


# -- the service table: mode, group, stale tables ------------------------------------------------------
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (another user reads the table)")
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@contextlib.contextmanager
def open_tree():
    """A service tree in a 0755 directory of /tmp (another user can reach it), and its default table's path;
    the tree and any table left at that path are removed afterwards."""
    import shutil
    import tempfile

    from prefork.control import servicetable

    base = Path(tempfile.mkdtemp(prefix="prefork-svscan-table-", dir="/tmp"))
    base.chmod(0o755)
    root = base / "sv"  # a Scan keeps its stderr and table next to the tree: inside BASE too
    root.mkdir()
    table = servicetable.default_path(str(root), servicetable.KIND_SVSCAN)
    try:
        yield root, table
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(table)
        remove_shm_files_of(base)
        shutil.rmtree(base, ignore_errors=True)


def svstat_all(root: Path, *wrap: str) -> tuple[int, list[str], bytes]:
    done = subprocess.run([*wrap, ours("svstat"), "--all", str(root)], capture_output=True, timeout=30)
    return done.returncode, [normalise(line) for line in done.stdout.decode().splitlines()], done.stderr


@needs_root
def test_table_is_0600_and_another_user_gets_one_line(tmp_path, scans):
    if servicetable_read is None:
        pytest.skip("prefork.control.servicetable_read is not there yet")
    with open_tree() as (root, table):
        make_service(root, "a")
        scans("prefork", root, table=False)
        wait_up(root / "a")
        info = os.stat(table)
        assert (stat.S_IMODE(info.st_mode), info.st_uid) == (0o600, 0)
        assert svstat_all(root) == (0, ["a: up (pid N) S seconds restarts 0"], b"")
        assert svstat_all(root, *NOBODY) == (111, [], f"svstat: fatal: unable to read service table for {root}:"
                                                    f" {table}: access denied\n".encode())


@needs_root
def test_table_group_lets_that_group_read_it(tmp_path, scans):
    with open_tree() as (root, table):
        make_service(root, "a")
        scans("prefork", root, "--table-group", "nogroup", table=False)
        wait_up(root / "a")
        info = os.stat(table)
        assert (stat.S_IMODE(info.st_mode), info.st_gid) == (0o640, 65534)
        assert svstat_all(root, *NOBODY) == (0, ["a: up (pid N) S seconds restarts 0"], b"")


def test_table_group_by_number(tmp_path, scans):
    root = tmp_path / "sv"
    make_service(root, "a")
    gid = os.getgid()
    scan = scans("prefork", root, f"--table-group={gid}")
    wait_up(root / "a")
    info = os.stat(scan.table)
    assert (stat.S_IMODE(info.st_mode), info.st_gid) == (0o640, gid)


@pytest.mark.parametrize(("option", "value"), [
    ("--table-group", "no-such-group-here"), ("--table-group", "99999999999"), ("--table-group", ""),
    ("--metrics-user", "no-such-user-here"), ("--metrics-user", "12:x"),
])
def test_unknown_table_group_or_metrics_user_is_a_usage_error(tmp_path, option, value):
    assert run_svscan(tmp_path, option, value, ".") == (
        100, b"", f"svscan: bad value for {option}: {value!r}\n".encode() + SVSCAN_USAGE)


def test_sigterm_without_stop_services_removes_the_table_and_leaves_the_services(tmp_path, scans):
    with open_tree() as (root, table):
        a = make_service(root, "a")
        scan = scans("prefork", root, table=False)
        pid = wait_up(a)
        assert os.path.exists(table)
        scan.proc.send_signal(signal.SIGTERM)
        assert scan.proc.wait(10) == -signal.SIGTERM  # as 0.76's svscan: killed by the signal
        assert not os.path.exists(table) and running(pid)
        assert svstat_all(root) == (111, [], f"svstat: fatal: unable to read service table for {root}:"
                                             " no prefork svscan or supervise has a table for it\n".encode())


def test_a_killed_svscans_table_is_stale_until_the_next_svscan_replaces_it(tmp_path, scans):
    with open_tree() as (root, table):
        a = make_service(root, "a")
        first = scans("prefork", root, table=False)
        pid = wait_up(a)
        first.proc.kill()
        first.proc.wait(10)
        assert os.path.exists(table) and running(pid)  # SIGKILL: nothing could clean up
        assert svstat_all(root) == (111, [], f"svstat: fatal: {root}: svscan not running"
                                             f" (table written by pid {first.pid})\n".encode())
        second = scans("prefork", root, table=False)
        assert wait_until(lambda: servicetable_read.read(table).owner_pid == second.pid, 10)
        assert wait_until(lambda: svstat_all(root)[0] == 0, 10)
        assert svstat_all(root) == (0, ["a: up (pid N) S seconds restarts 0"], b"")
        assert pid_of(a) == pid  # taken over, not restarted


def test_svscan_with_a_table_elsewhere_removes_a_stale_default_table(tmp_path, scans):
    from prefork.control import servicetable

    with open_tree() as (root, table):
        make_service(root, "a")
        dead = subprocess.Popen(["true"])
        dead.wait()
        stale = servicetable.ServiceTable.create(table, 4, servicetable.KIND_SVSCAN, str(root))
        stale._mm[24:28] = dead.pid.to_bytes(4, "little")  # as if a killed svscan had left it
        stale.close()
        scan = scans("prefork", root)  # --table in tmp_path
        wait_up(root / "a")
        assert wait_until(lambda: not os.path.exists(table), 5)
        assert servicetable_read.read(str(scan.table)).owner_pid == scan.pid


def test_svscan_with_a_table_elsewhere_leaves_a_live_default_table(tmp_path, scans):
    from prefork.control import servicetable

    with open_tree() as (root, table):
        make_service(root, "a")
        live = servicetable.ServiceTable.create(table, 4, servicetable.KIND_SVSCAN, str(root))  # ours: running
        try:
            scans("prefork", root)
            wait_up(root / "a")
            assert servicetable_read.read(table).owner_pid == os.getpid()
        finally:
            live.close()


def test_restart_policy_backs_off_then_gives_up_and_u_rearms(tmp_path, scans):
    """A service that dies at once: back-off 1, 2 s between its starts, then (3rd death in 30 s) no restart, one
    line, ``failed`` in svstat --all and its JSON, and svc -u starts it again (docs/CONTRACTS.md, Restart policy)."""
    root = tmp_path / "scan"
    d = make_service(root, "flap", run="echo start >> ../starts; exit 1")
    (d / "backoff-max").write_text("4000\n")
    (d / "failure-deaths").write_text("3\n")
    (d / "failure-window").write_text("30000\n")
    scan = scans("prefork", root, table=False)  # the default table, the one svstat --all finds
    starts = tmp_path / "scan" / "starts"
    began = time.monotonic()
    assert wait_until(lambda: any("not restarted until svc -u" in line for line in scan.stderr()), 20), scan.stderr()
    took = time.monotonic() - began
    assert starts.read_text().count("start") == 3  # died 3 times: no 4th start
    assert took >= 2.8, took  # 1 s then 2 s of back-off between the three starts
    assert "supervise: warning: flap died 3 times in 30 seconds: not restarted until svc -u" in scan.stderr()
    time.sleep(1.5)
    assert starts.read_text().count("start") == 3
    out = subprocess.run([ours("svstat"), "--all", str(root)], capture_output=True, timeout=10)
    assert out.returncode == 0 and re.search(rb"^flap: down .* failed restarts 2 last exit 1$", out.stdout, re.M), out
    js = subprocess.run([ours("svstat"), "--all", "--json", str(root)], capture_output=True, timeout=10)
    flap = next(s for s in json.loads(js.stdout)["services"] if s["name"] == "flap")
    assert flap["failed"] is True and flap["backoff_seconds"] == 4.0  # 1, 2, then 4 at the third death
    svc(ours("svc"), root, "-u", "flap")
    assert wait_until(lambda: starts.read_text().count("start") >= 4, 10)


# An engine in a process of its own (it installs signal handlers), watching a pipe that stands for a control
# FIFO: "control" goes into ORDER when the loop reads it.  Each script below adds the burst it tests.
ENGINE_PROLOGUE = r"""
import os, sys, time
from prefork.control.engine import Engine, REAPS_PER_PASS, TIMERS_PER_PASS
engine = Engine(prog="svscan")
r, w = os.pipe2(os.O_NONBLOCK)
order = []
def reader():
    os.read(r, 16)
    order.append("control")
engine.watch(r, reader)
"""

ENGINE_BURST = ENGINE_PROLOGUE + r"""
def timer(i):
    def run():
        order.append(i)
        if i == 0:
            os.write(w, b"d")  # a control byte arrives while the burst is being worked through
        if i == 9:
            engine.stop = True
    return run
now = time.monotonic()
for i in range(10):
    engine.call_at(now - 1, None, timer(i))
engine.run(until_idle=False)
print(TIMERS_PER_PASS, " ".join(map(str, order)))
"""


def run_engine_script(script: str, cwd: Path) -> tuple[str, str]:
    """Run SCRIPT with the venv's Python; (the per-pass bound it prints, the order of events it prints)."""
    done = subprocess.run([os.fspath(Path(ours("svscan")).parent / "python"), "-c", script], cwd=cwd,
                          capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr
    per_pass, order = done.stdout.decode().split(" ", 1)
    return per_pass, order


def test_a_burst_of_due_timers_lets_a_control_byte_through_between_them(tmp_path):
    """Ten restarts due at once (services flapping in step): a control byte that arrives during the first is
    handled after at most TIMERS_PER_PASS of them, not after all ten (docs/ARCHITECTURE.md)."""
    per_pass, order = run_engine_script(ENGINE_BURST, tmp_path)
    n = int(per_pass)
    assert 1 <= n < 10
    assert order.split() == [str(i) for i in range(n)] + ["control"] + [str(i) for i in range(n, 10)]


ENGINE_EXITS = ENGINE_PROLOGUE + r"""
pids = [os.posix_spawn("/bin/true", ["/bin/true"], {}) for _ in range(10)]
def zombie(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "Z"
deadline = time.monotonic() + 10
while not all(zombie(p) for p in pids) and time.monotonic() < deadline:
    time.sleep(0.01)
def other(pid, status):
    order.append(pids.index(pid))
    if len(order) == 1:
        os.write(w, b"d")  # a control byte arrives while the deaths are being handled
    if sum(1 for x in order if x != "control") == 10:
        engine.stop = True
engine.on_other_child = other
engine.run(until_idle=False)
print(REAPS_PER_PASS, " ".join(map(str, order)))
"""


def test_many_exits_at_once_let_a_control_byte_through_between_them(tmp_path):
    """Ten children dead at once (services dying in step): a control byte that arrives while the first is
    handled is read after at most two passes' worth of exits, not after all ten (docs/ARCHITECTURE.md)."""
    per_pass, order = run_engine_script(ENGINE_EXITS, tmp_path)
    words = order.split()
    assert sorted(int(x) for x in words if x != "control") == list(range(10)) and words.count("control") == 1
    assert words.index("control") <= min(2 * int(per_pass), 9), words  # not after all ten
