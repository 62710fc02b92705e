"""runit's semantics in --runit mode, against Debian's runit (docs/CONTRACTS.md, runit semantics).

Every scenario runs twice at once (one thread each): under runit's own programs (``runsv`` for one
service, ``runsvdir`` for a tree: "debian") and under prefork's (``supervise --runit``, ``svscan
--runit``: "prefork"), driven by runit's ``sv`` both times.  What is compared: sv's output lines
and exit codes (pids and seconds normalised), the files runsv writes, what the service and its log
see (a recorder notes its start, every signal, every line of input and the end of it), and the
session and process group of each process.  The daemontools side (0.76's ``svscan`` leaves a
vanished directory's services running) is compared with Debian's daemontools the same way.

Every process a test starts carries a unique PREFORK_TEST_TAG in its environment; at teardown each
supervisor is SIGKILLed, then every tagged process, by pid through psutil.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
from conftest import ours, real, supervised
from tcpserver_harness import TAG_VAR, kill_procs, tagged, wait_until

IMPLS = ("debian", "prefork")
pytestmark = pytest.mark.differential

# The recorder: ``rec.pl NAME EVENTS`` notes "NAME start", every signal, each line read (as a log) and
# the end of its input to EVENTS.  A main prints "hello" and runs until TERM (unless ./keep exists,
# then it notes TERM and goes on), then notes "exit" a moment later, so a CONT sent after TERM shows.
RECORDER = r"""#!/usr/bin/perl
use strict;
use warnings;
my ($name, $events) = @ARGV;
sub note { open(my $f, ">>", $events) or die "$events: $!"; print $f "$name $_[0]\n"; close $f; }
my $done = 0;
for my $sig (qw(HUP ALRM INT CONT USR1 USR2 QUIT)) { $SIG{$sig} = sub { note($sig) }; }
$SIG{TERM} = sub { note("TERM"); $done = 1 unless -e "keep" };
open(my $ids, ">", "ids.new") or die "ids.new: $!";
my @stat = split ' ', do { open(my $s, "<", "/proc/$$/stat") or die; local $/; <$s> };
print $ids "$$ $stat[3] $stat[4] $stat[5] $stat[6]\n";  # pid ppid pgrp session tty_nr
close $ids;
rename("ids.new", "ids") or die "ids: $!";
note("start");
if ($name =~ /log$/) {
    while (my $line = <STDIN>) { chomp $line; note("got $line"); }
    note("EOF");
    exit 0;
}
$| = 1;
print "hello\n";
sleep 1 until $done;
select(undef, undef, undef, 0.2);
note("exit");
exit 0;
"""
CHECK = "#!/bin/sh\n# runit's sv runs this; it succeeds once ./ready exists.\necho check >> checks\ntest -e ready\n"


def sv_norm(text: str) -> str:
    """sv's output with pids and seconds replaced."""
    return re.sub(r"\b\d+s\b", "Ns", re.sub(r"\(pid \d+\)", "(pid N)", text))


def runit_files(d: Path) -> tuple:
    """runsv's files in D/supervise: the 20 status bytes without label and pid, stat, pid (N for the pid)."""
    sup = d / "supervise"
    try:
        raw, stat_text, pid_text = (sup / "status").read_bytes(), (sup / "stat").read_text(), (sup / "pid").read_text()
    except OSError as err:
        return (type(err).__name__,)
    if len(raw) != 20:
        return (len(raw),)
    pid = int.from_bytes(raw[12:16], "little")
    return ("pid" if pid else 0, *raw[16:20], stat_text, pid_text.replace(str(pid), "N") if pid else pid_text)


def settled_files(d: Path, predicate: Callable[[tuple], bool], timeout: float = 5.0) -> tuple:
    """runit_files(D) once PREDICATE holds and two reads 50 ms apart agree (status, stat and pid are three
    renames: a read between them sees a new status and an old stat)."""
    def steady() -> tuple | None:
        first = runit_files(d)
        if not predicate(first):
            return None
        time.sleep(0.05)
        return first if runit_files(d) == first else None
    found = wait_until(steady, timeout)
    assert found, f"{d}: {runit_files(d)}"
    return found  # type: ignore[return-value]


def status_pid(d: Path) -> int:
    try:
        return int.from_bytes((d / "supervise" / "status").read_bytes()[12:16], "little")
    except OSError:
        return 0




def events(root: Path) -> list[str]:
    try:
        return (root / "events").read_text().splitlines()
    except FileNotFoundError:
        return []


def ids(d: Path) -> list[int]:
    """pid, ppid, pgrp, session, tty_nr of the recorder running in D."""
    return [int(word) for word in (d / "ids").read_text().split()]


class Tree:
    """One implementation's supervisors of services under ROOT; everything they start is tagged."""

    def __init__(self, impl: str, base: Path) -> None:
        self.impl = impl
        self.base = base
        self.root = base / "sv"
        self.root.mkdir(parents=True)
        self.tag = f"runit-{uuid.uuid4().hex}"
        self.env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", TAG_VAR: self.tag}
        self.procs: list[subprocess.Popen] = []
        self.recorder = base / "rec.pl"
        self.recorder.write_text(RECORDER)
        self.recorder.chmod(0o755)

    def service(self, name: str, *, log: bool = False, check: bool = False) -> Path:
        d = self.root / name
        d.mkdir()
        self._run(d, name)
        if log:
            (d / "log").mkdir()
            self._run(d / "log", f"{name}/log")
        if check:
            (d / "check").write_text(CHECK)
            (d / "check").chmod(0o755)
        return d

    def _run(self, d: Path, name: str) -> None:
        (d / "run").write_text(f"#!/bin/sh\nexec {self.recorder} {name} {self.base / 'events'}\n")
        (d / "run").chmod(0o755)

    def start(self, argv: list[str]) -> subprocess.Popen:
        n = len(self.procs)
        with open(self.base / f"out{n}", "wb") as out, open(self.base / f"err{n}", "wb") as err:
            proc = subprocess.Popen(argv, cwd=self.root, env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=err, start_new_session=True)
        self.procs.append(proc)
        return proc

    def supervise(self, name: str) -> subprocess.Popen:
        """runsv NAME, or supervise --runit NAME."""
        if self.impl == "debian":
            return self.start([real("runsv"), name])
        return self.start([ours("supervise"), "--runit", "--table", str(self.base / f"{name}.table"), name])

    def scan(self, *flags: str, runit: bool = True) -> subprocess.Popen:
        """runsvdir [FLAGS] ROOT or svscan --runit [FLAGS] ROOT (RUNIT False: 0.76's svscan, or prefork's)."""
        if self.impl == "debian":
            return self.start([real("runsvdir" if runit else "svscan"), *flags, str(self.root)])
        table = ["--table", str(self.base / "scan.table")]
        return self.start([ours("svscan"), *table, *(["--runit"] if runit else []), *flags, str(self.root)])

    def sv(self, *args: str) -> tuple[int, str]:
        done = subprocess.run([real("sv"), *args], cwd=self.root, env=self.env, stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=30)
        return done.returncode, sv_norm((done.stdout + done.stderr).decode())

    def up(self, d: Path, other_than: int = 0) -> int:
        """Wait until D's recorder (other than pid OTHER_THAN) has noted its start; its pid."""
        def started() -> int:
            pid = status_pid(d)
            return pid if pid not in (0, other_than) and (d / "ids").exists() and ids(d)[0] == pid else 0
        pid = wait_until(started, 15)
        assert pid, f"{self.impl}: {d.name} did not come up: {runit_files(d)}"
        return int(pid)

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(OSError):
                proc.kill()
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        for _ in range(5):
            live = [p for p in tagged(self.tag) if p.pid != os.getpid() and _alive(p)]
            if not live:
                break
            kill_procs(live)


def _alive(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def both(tmp_path: Path, scenario: Callable[[Tree], object], *judges: str) -> dict[str, object]:
    """SCENARIO(tree) for runit's programs and prefork's at once; the results by implementation."""
    for name in ("sv", "runsv", *judges):
        real(name)
    trees = {impl: Tree(impl, tmp_path / impl) for impl in IMPLS}
    try:
        with ThreadPoolExecutor(len(IMPLS)) as pool:
            futures = {impl: pool.submit(scenario, trees[impl]) for impl in IMPLS}
            return {impl: future.result(timeout=150) for impl, future in futures.items()}
    finally:
        for tree in trees.values():
            tree.close()


def same(results: dict[str, object]) -> object:
    assert results["prefork"] == results["debian"], f"prefork {results['prefork']!r}\n debian {results['debian']!r}"
    return results["prefork"]


# == check: sv runs ./check itself, on what the status says ========================================
def test_sv_check_and_wait_run_the_check_script(tmp_path):
    """``sv check``, ``sv -w N up/start/restart`` with a ./check: every output line and exit code as under runsv."""
    def scenario(t: Tree) -> object:
        d = t.service("svc", check=True)
        t.supervise("svc")
        pid = t.up(d)
        seen: list[object] = [t.sv("-w", "1", "check", "./svc")]  # check fails: timeout, exit 1
        (d / "ready").touch()
        seen.append(t.sv("check", "./svc"))
        (d / "ready").unlink()
        seen.append(t.sv("-w", "1", "restart", "./svc"))  # restarted, but the check fails
        new = t.up(d, other_than=pid)
        seen.append(t.sv("-w", "1", "down", "./svc"))  # no check for down
        seen.append(t.sv("check", "./svc"))  # down: nothing to check
        checks = (d / "checks").read_text().count("check")
        seen.append(t.sv("-w", "1", "check", "./svc") == (0, "ok: down: ./svc: Ns, normally up\n"))
        seen.append((d / "checks").read_text().count("check") == checks)  # ./check is not run while down
        seen.append(t.sv("-w", "1", "start", "./svc"))  # up, but the check fails
        newer = t.up(d, other_than=new)
        subprocess.Popen(["sh", "-c", "sleep 1; touch ready"], cwd=d, env=t.env)
        began = time.monotonic()
        seen.append(t.sv("-w", "5", "check", "./svc"))  # waits for the check to succeed
        seen.append(time.monotonic() - began >= 0.9)
        seen.append(t.sv("-w", "3", "restart", "./svc"))  # restarted and checked
        t.up(d, other_than=newer)
        seen.append(t.sv("status", "./svc"))
        return seen

    run_n = "run: ./svc: (pid N) Ns"
    assert same(both(tmp_path, scenario)) == [
        (1, f"timeout: {run_n}\n"),
        (0, f"ok: {run_n}\n"),
        (1, f"timeout: {run_n}\n"),
        (0, "ok: down: ./svc: Ns, normally up\n"),
        (0, "ok: down: ./svc: Ns, normally up\n"),
        True, True,
        (1, f"timeout: {run_n}\n"),
        (0, f"ok: {run_n}\n"), True,
        (0, f"ok: {run_n}\n"),
        (0, f"{run_n}\n"),
    ]


def test_sv_wait_for_a_service_that_ignores_term(tmp_path):
    """``sv -w 1 restart`` and ``down`` on a service that ignores TERM: the got-TERM byte keeps sv waiting."""
    def scenario(t: Tree) -> object:
        d = t.service("svc")
        (d / "keep").touch()
        t.supervise("svc")
        pid = t.up(d)
        time.sleep(1.1)  # sv's restart check wants a label older than sv's start: not the same second
        seen: list[object] = [t.sv("-w", "1", "restart", "./svc")]
        seen.append(settled_files(d, lambda files: files[3] == 1))
        seen.append(t.sv("-w", "1", "down", "./svc"))
        seen.append(runit_files(d))
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: status_pid(d) == 0, 10)
        seen.append(t.sv("-w", "1", "down", "./svc"))
        return seen

    assert same(both(tmp_path, scenario)) == [
        (1, "timeout: run: ./svc: (pid N) Ns, got TERM\n"), ("pid", 0, 117, 1, 1, "run, got TERM\n", "N\n"),
        (1, "timeout: run: ./svc: (pid N) Ns, want down, got TERM\n"),
        ("pid", 0, 100, 1, 1, "run, got TERM, want down\n", "N\n"),
        (0, "ok: down: ./svc: Ns, normally up\n"),
    ]


# == exit: runsv stops the service, then exits ======================================================
def test_sv_exit_stops_the_service_and_the_supervisor_exits(tmp_path):
    """``sv exit``: TERM then CONT to the service, no restart, the supervisor exits 0; sv's words as runsv's."""
    def scenario(t: Tree) -> object:
        d = t.service("svc")
        sup = t.supervise("svc")
        t.up(d)
        said = t.sv("exit", "./svc")
        code = sup.wait(10)
        assert wait_until(lambda: "svc exit" in events(t.base), 5)
        time.sleep(0.3)
        return [said, code, events(t.base), runit_files(d), supervised(d), t.sv("status", "./svc")]

    assert same(both(tmp_path, scenario)) == [
        (0, ""), 0, ["svc start", "svc TERM", "svc CONT", "svc exit"],
        (0, 0, 100, 0, 0, "down\n", ""), False, (1, "fail: ./svc: runsv not running\n"),
    ]


def test_sv_exit_waits_for_a_service_that_ignores_term_and_up_cancels_it(tmp_path):
    """``sv -v exit`` on a service that ignores TERM: runsv waits (stat says "want exit"); ``sv up`` then
    replaces the exit (runsv's x is a want like u and d), so the service is restarted when it dies and the
    supervisor stays; a second ``sv exit`` ends both."""
    def scenario(t: Tree) -> object:
        d = t.service("svc")
        (d / "keep").touch()
        sup = t.supervise("svc")
        pid = t.up(d)
        seen: list[object] = [t.sv("-w", "1", "-v", "exit", "./svc"), runit_files(d), sup.poll()]
        seen.append(t.sv("-w", "1", "-v", "up", "./svc")[0])  # its line may come before the u is handled
        seen.append(settled_files(d, lambda files: files[2] == ord("u")))
        os.kill(pid, signal.SIGKILL)
        t.up(d, other_than=pid)
        seen.append(sup.poll())
        (d / "keep").unlink()
        seen.append(t.sv("-v", "exit", "./svc"))
        seen.append(sup.wait(10))
        seen.append(events(t.base))
        return seen

    assert same(both(tmp_path, scenario)) == [
        (1, "timeout: run: ./svc: (pid N) Ns, want down, got TERM\n"),
        ("pid", 0, 100, 1, 1, "run, got TERM, want exit\n", "N\n"), None,
        0, ("pid", 0, 117, 1, 1, "run, got TERM\n", "N\n"),
        None, (0, "ok: ./svc: runsv not running\n"), 0,
        ["svc start", "svc TERM", "svc CONT", "svc start", "svc TERM", "svc CONT", "svc exit"],
    ]


def test_sv_exit_of_a_down_service_exits_at_once(tmp_path):
    def scenario(t: Tree) -> object:
        d = t.service("svc")
        (d / "down").touch()
        sup = t.supervise("svc")
        assert wait_until(lambda: supervised(d), 10)
        return [t.sv("-v", "exit", "./svc"), sup.wait(10), runit_files(d), events(t.base)]

    assert same(both(tmp_path, scenario)) == [(0, "ok: ./svc: runsv not running\n"), 0,
                                              (0, 0, 100, 0, 0, "down\n", ""), []]


def test_a_flood_of_x_then_u_in_one_write(tmp_path):
    """A thousand x then u in one write to the control FIFO of a service that ignores TERM: every x is
    read, the u takes the exit back, so the supervisor stays and restarts the service when it dies."""
    def scenario(t: Tree) -> object:
        d = t.service("svc")
        (d / "keep").touch()
        sup = t.supervise("svc")
        pid = t.up(d)
        fd = os.open(d / "supervise" / "control", os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(fd, b"x" * 1000 + b"u")
        finally:
            os.close(fd)
        seen: list[object] = [settled_files(d, lambda files: files[2] == ord("u"), 15)]
        os.kill(pid, signal.SIGKILL)
        t.up(d, other_than=pid)
        seen += [sup.poll(), t.sv("status", "./svc"), sorted(set(events(t.base)))]
        return seen

    assert same(both(tmp_path, scenario)) == [
        ("pid", 0, 117, 1, 1, "run, got TERM\n", "N\n"), None, (0, "run: ./svc: (pid N) Ns\n"),
        ["svc CONT", "svc TERM", "svc start"],
    ]


# == a tree: runsvdir and svscan --runit ============================================================
def test_exit_in_a_tree_ends_the_pair_and_the_scan_starts_it_again(tmp_path):
    """``sv exit`` of a service with a log: TERM+CONT to it, then its log reads to EOF (no signal), then the
    pair is started afresh (runsvdir restarts the runsv; svscan --runit takes the pair on at its next scan).
    ``sv exit`` of the log alone is ignored, as runsv ignores x for a log."""
    def scenario(t: Tree) -> object:
        d = t.service("a", log=True)
        t.scan()
        main, log = t.up(d), t.up(d / "log")
        assert wait_until(lambda: "a/log got hello" in events(t.base), 10)
        seen: list[object] = [t.sv("exit", "./a/log")]
        time.sleep(1)
        seen.append((status_pid(d), status_pid(d / "log")) == (main, log))
        seen.append(t.sv("exit", "./a"))
        assert wait_until(lambda: "a/log EOF" in events(t.base), 10), events(t.base)
        seen.append(events(t.base)[:events(t.base).index("a/log EOF") + 1])
        assert wait_until(lambda: events(t.base).count("a/log got hello") == 2, 15), events(t.base)
        seen.append(status_pid(d) not in (0, main) and status_pid(d / "log") not in (0, log))
        seen.append(t.sv("status", "./a"))
        return seen

    first = ["a start", "a/log start", "a/log got hello"]
    results = both(tmp_path, scenario, "runsvdir")
    for result in results.values():  # the two starts of a pair are in either order
        result[3][:3] = sorted(result[3][:3], key=first.index)
    assert same(results) == [
        (0, ""), True, (0, ""),
        [*first, "a TERM", "a CONT", "a exit", "a/log EOF"],
        True, (0, "run: ./a: (pid N) Ns; run: log: (pid N) Ns\n"),
    ]


@pytest.mark.parametrize("how", ["renamed", "removed"])
def test_a_directory_that_leaves_the_tree_is_stopped(tmp_path, how):
    """runsvdir TERMs the runsv of a directory gone from the tree: TERM+CONT to the service, then its log
    reads to EOF; neither is started again.  svscan --runit does the same."""
    def scenario(t: Tree) -> object:
        d = t.service("a", log=True)
        t.service("b")
        t.scan()
        t.up(d), t.up(d / "log"), t.up(t.root / "b")
        assert wait_until(lambda: "a/log got hello" in events(t.base), 10)
        gone = t.base / "gone"
        if how == "renamed":
            d.rename(gone)
        else:
            import shutil

            shutil.rmtree(d)
        assert wait_until(lambda: "a/log EOF" in events(t.base), 15), events(t.base)
        time.sleep(6)  # a scan later: nothing came back
        seen: list[object] = [[e for e in events(t.base) if e.startswith("a")]]
        seen.append(t.sv("status", "./b"))
        if how == "renamed":
            seen += [runit_files(gone), runit_files(gone / "log"), supervised(gone), supervised(gone / "log")]
        return seen

    expected: list[object] = [
        ["a start", "a/log start", "a/log got hello", "a TERM", "a CONT", "a exit", "a/log EOF"],
        (0, "run: ./b: (pid N) Ns\n"),
    ]
    if how == "renamed":
        expected += [(0, 0, 100, 0, 0, "down\n", ""), (0, 0, 100, 0, 0, "down\n", ""), False, False]
    results = both(tmp_path, scenario, "runsvdir")
    for result in results.values():
        result[0][:2] = sorted(result[0][:2])
    assert same(results) == expected


def test_a_log_that_ignores_eof_keeps_the_pair_until_it_exits(tmp_path):
    """The directory leaves the tree while the service ignores TERM: runsv waits for it (stat "want exit"),
    and after it the log; nothing is signalled but the service."""
    def scenario(t: Tree) -> object:
        d = t.service("a", log=True)
        (d / "keep").touch()
        t.scan()
        pid = t.up(d)
        t.up(d / "log")
        gone = t.base / "gone"
        d.rename(gone)
        assert wait_until(lambda: "a TERM" in events(t.base), 15), events(t.base)
        time.sleep(0.5)
        seen: list[object] = [runit_files(gone), runit_files(gone / "log"), supervised(gone)]
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: "a/log EOF" in events(t.base), 10), events(t.base)
        assert wait_until(lambda: not supervised(gone / "log"), 10)
        seen += [runit_files(gone), runit_files(gone / "log")]
        return seen

    assert same(both(tmp_path, scenario, "runsvdir")) == [
        ("pid", 0, 100, 1, 1, "run, got TERM, want exit\n", "N\n"), ("pid", 0, 117, 0, 1, "run\n", "N\n"), True,
        (0, 0, 100, 0, 0, "down\n", ""), (0, 0, 100, 0, 0, "down\n", ""),
    ]


def test_daemontools_svscan_leaves_a_vanished_pair_running(tmp_path):
    """Without --runit, 0.76's rule: a directory gone from the tree keeps its service and log running."""
    def scenario(t: Tree) -> object:
        d = t.service("a", log=True)
        t.scan(runit=False)
        main, log = t.up(d), t.up(d / "log")
        gone = t.base / "gone"
        d.rename(gone)
        time.sleep(6.5)  # more than a scan
        return [status_pid(gone) == main and status_pid(gone / "log") == log, supervised(gone),
                sorted(e for e in events(t.base))]

    assert same(both(tmp_path, scenario, "svscan", "supervise")) == [
        True, True, ["a start", "a/log got hello", "a/log start"]]


# == -P: a session of its own =====================================================================
@pytest.mark.parametrize("new_session", [False, True], ids=["plain", "P"])
def test_sessions_and_process_groups(tmp_path, new_session):
    """runsvdir -P: each runsv (so its service and log) in a new session that is its process group, with no
    terminal; without -P, both in the scanner's.  Under svscan --runit -P the service is its own session
    leader (prefork has no runsv process to lead it: docs/CONTRACTS.md, runit semantics)."""
    def scenario(t: Tree) -> object:
        d = t.service("a", log=True)
        scanner = t.scan(*(["-P"] if new_session else []))
        main, log = t.up(d), t.up(d / "log")
        scan_sid, scan_pgid = os.getsid(scanner.pid), os.getpgid(scanner.pid)
        seen = []
        for pid, fields in ((main, ids(d)), (log, ids(d / "log"))):
            _pid, ppid, pgrp, session, tty = fields
            assert _pid == pid
            leader = ppid if t.impl == "debian" else pid
            seen.append((pgrp == session, session == scan_sid, pgrp == scan_pgid, tty,
                         session == leader if new_session else None))
        return seen

    row = (True, False, False, 0, True) if new_session else (True, True, True, 0, None)
    assert same(both(tmp_path, scenario, "runsvdir")) == [row, row]


# == the command line =========================================================================
def test_minus_p_is_a_directory_without_runit(tmp_path):
    """-P is runsvdir's only after --runit: 0.76's svscan (and prefork's without --runit) reads it as DIR."""
    def run(argv: list[str]) -> tuple[int, bytes]:
        done = subprocess.run(argv, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"}, capture_output=True, timeout=10)
        return done.returncode, done.stderr

    assert run([real("svscan"), "-P"]) == run([ours("svscan"), "-P"]) == (
        111, b"svscan: fatal: unable to chdir to -P: file does not exist\n")


LOG = "XYZW:123456789012345"
ERROR_OUTPUT = r"abcdefghijklmnopqrstuvwxyz\tTAB\001\000\n"  # printf's escapes: a tab, a ^A, a NUL


def title_tail(pid: int) -> bytes:
    """The last argument of PID's command line as ps shows it now."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().rstrip(b"\0").rpartition(b"\0")[2]


def test_log_argument_shows_recent_error_output_in_the_command_line(tmp_path):
    """runsvdir DIR LOG: the services' standard error scrolls through LOG after its first five characters, in
    the scanner's command line (ps); a NUL is dropped, every other byte kept.  svscan --runit DIR LOG too."""
    def scenario(t: Tree) -> object:
        d = t.root / "a"
        d.mkdir()
        (d / "run").write_text(f"#!/bin/sh\nprintf '{ERROR_OUTPUT}' >&2\nexec {t.recorder} a {t.base / 'events'}\n")
        (d / "run").chmod(0o755)
        if t.impl == "debian":
            scanner = t.start([real("runsvdir"), str(t.root), LOG])
        else:
            scanner = t.start([ours("svscan"), "--table", str(t.base / "scan.table"), "--runit", str(t.root), LOG])
        t.up(d)
        assert wait_until(lambda: title_tail(scanner.pid) != LOG.encode(), 10)
        time.sleep(0.2)
        return [title_tail(scanner.pid), (t.base / "err0").read_bytes()]

    assert same(both(tmp_path, scenario, "runsvdir")) == [b"XYZW:rstuvwxyz\tTAB\001\n", b""]


def test_log_argument_takes_the_scanners_own_messages_and_a_flood(tmp_path):
    """svscan's own lines (a service that cannot start) go to the log too, as runsv's do under runsvdir, and
    a service that floods its standard error never stops svscan: it goes on answering sv."""
    real("sv")
    t = Tree("prefork", tmp_path)
    try:
        (t.root / "broken").mkdir()  # no ./run
        scanner = t.start([ours("svscan"), "--table", str(t.base / "scan.table"), "--runit", str(t.root),
                           "log: " + "." * 60])
        assert wait_until(lambda: title_tail(scanner.pid).endswith(b"broken/run: file does not exist\n"), 10), (
            title_tail(scanner.pid))
        flood = t.root / "flood"
        flood.mkdir()
        (flood / "run").write_text("#!/bin/sh\nexec perl -e 'print STDERR \"x\" x 1000 while 1'\n")
        (flood / "run").chmod(0o755)
        os.kill(scanner.pid, signal.SIGHUP)  # rescan now
        assert wait_until(lambda: title_tail(scanner.pid)[5:] == b"x" * 60, 10), title_tail(scanner.pid)
        t.service("svc")
        pid = t.up(t.root / "svc")
        assert t.sv("-w", "5", "restart", "./svc")[0] == 0
        t.up(t.root / "svc", other_than=pid)
        assert title_tail(scanner.pid)[:5] == b"log: " and len(title_tail(scanner.pid)) == 65
        assert (t.base / "err0").read_bytes() == b""
        assert scanner.poll() is None
    finally:
        t.close()


def test_a_short_log_argument_is_disabled_with_a_warning(tmp_path):
    """Fewer than seven characters: runsvdir warns and goes on without the log; so does svscan --runit."""
    def scenario(t: Tree) -> object:
        t.service("a")
        if t.impl == "debian":
            scanner = t.start([real("runsvdir"), str(t.root), "log: "])
        else:
            scanner = t.start([ours("svscan"), "--table", str(t.base / "scan.table"), "--runit", str(t.root), "log: "])
        t.up(t.root / "a")
        err = (t.base / "err0").read_text()
        return [scanner.poll(), "log must have at least seven characters" in err, title_tail(scanner.pid)]

    assert same(both(tmp_path, scenario, "runsvdir")) == [None, True, b"log: "]


# == finish: runsv's state 2 ========================================================================
FINISH = """#!/bin/sh
# Notes its pid, then runs (exec: the same pid) until ../finish-go appears (bounded: 20 s).
echo $$ > ../finish.pid
exec perl -e 'for (1 .. 400) { exit 0 if -e "../finish-go"; select(undef, undef, undef, 0.05) } exit 1'
"""


def test_status_stat_and_pid_while_finish_runs(tmp_path):
    """While ./finish runs, runsv writes state 2 (byte 19), ./finish's pid (status and ``pid``), ``stat``
    "finish" (with ", want down" after sv down); sv status says ``finish:``; after it, down then run again."""
    def scenario(t: Tree) -> object:
        d = t.service("svc")
        (d / "finish").write_text(FINISH)
        (d / "finish").chmod(0o755)
        t.supervise("svc")
        first = t.up(d)
        seen = []
        for verb, want in (("term", 0x75), ("down", 0x64)):
            said = t.sv(verb, "./svc")
            files = settled_files(d, lambda f: f[0] == "pid" and f[4] == 2)
            assert wait_until(lambda: (t.root / "finish.pid").exists(), 5)
            finish_pid = int((t.root / "finish.pid").read_text())
            (t.root / "finish.pid").unlink()
            assert status_pid(d) == finish_pid and (d / "supervise" / "pid").read_text() == f"{finish_pid}\n"
            assert files[2] == want
            seen += [said, files, t.sv("status", "./svc")]
            (t.root / "finish-go").touch()
            if verb == "term":
                first = t.up(d, other_than=first)
                (t.root / "finish-go").unlink()
            else:
                seen.append(settled_files(d, lambda f: f[0] == 0))
        return [*seen, t.sv("status", "./svc")]

    found = same(both(tmp_path, scenario))
    assert found[1] == ("pid", 0, 0x75, 0, 2, "finish\n", "N\n") and found[2][1].startswith("finish: ./svc: (pid N)")
    assert found[4] == ("pid", 0, 0x64, 0, 2, "finish, want down\n", "N\n")
