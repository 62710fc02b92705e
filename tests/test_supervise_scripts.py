"""supervise-scripts 4.0 (svc-add, svc-start, ... svc-build) against a supervised service tree (docs/CONTRACTS.md, supervise-scripts).

The commands run as subprocesses against service directories supervised by Debian's real
``svscan`` (which execs Debian's ``supervise``): the scripts' job is to drive the real
daemontools.  ``supervisor_cmd`` is the argv prefix of the supervisor, so the same tests can be
parametrized over prefork's own svscan later.  svc-kill's letters are checked on a fake
``supervise/control`` FIFO the test reads itself, and the waits' dot counting on a fake clock.
"""

from __future__ import annotations

import io
import os
import re
import select
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from conftest import ours, real

from prefork.control.servicetable_read import entry_for
from prefork.control.supervise_scripts import Settings, poll, signal_letter
from prefork.control.svok import running

RUN = "#!/bin/sh\nexec sleep 1000\n"
LOG_RUN = "#!/bin/sh\nexec cat >/dev/null\n"
STUBBORN_RUN = "#!/bin/sh\ntrap '' TERM\nexec sleep 1000\n"  # ignores svc -d's TERM
STATUS_UP = r"up \(pid \d+\) \d+ seconds"


# -- fixtures and helpers --------------------------------------------------------------------------------------


@pytest.fixture(params=["debian", "prefork"])
def supervisor_cmd(request) -> list[str]:
    """argv prefix of the supervisor under test (Debian's svscan, then prefork's); the scan directory is appended."""
    if request.param == "debian":
        return [real("svscan")]
    return [ours("svscan")]


class Tree:
    """A scan directory (SVSCANDIR) and a directory for the real service dirs (SVCLOCKDIR) in tmp_path."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.scan = root / "scan"
        self.lock = root / "lock"
        self.scan.mkdir()
        self.lock.mkdir()

    def env(self, timeout: int = 10, **extra: str) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LC_ALL": "C",
            "SVSCANDIR": str(self.scan),
            "SVCLOCKDIR": str(self.lock),
            "SVCTIMEOUT": str(timeout),
        }
        env.update(extra)
        return env

    def service(
        self, name: str, log: bool = False, run: str = RUN, down: bool = False, where: Path | None = None
    ) -> Path:
        """Make a service directory (in SVCLOCKDIR unless told) with an executable run (and log/run)."""
        directory = (where or self.lock) / name
        directory.mkdir()
        _write_exec(directory / "run", run)
        if log:
            (directory / "log").mkdir()
            _write_exec(directory / "log" / "run", LOG_RUN)
        if down:
            (directory / "down").touch()
            if log:
                (directory / "log" / "down").touch()
        return directory

    def link(self, name: str) -> None:
        (self.scan / name).symlink_to(self.lock / name)


def _write_exec(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return Tree(tmp_path)


def _wait_for(test: Callable[[], bool], seconds: float = 10.0) -> bool:
    """Poll test() until true, bounded by time and by count."""
    deadline = time.monotonic() + seconds
    for _ in range(int(seconds / 0.02) + 1):
        if test():
            return True
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    return test()


def _inside(path: str | None, root: str) -> bool:
    return path is not None and (path == root or path.startswith(root + "/"))


class Scanner:
    """Starts the supervisor on the scan directory; ends it and everything it started, by pid."""

    def __init__(self, argv: list[str], tree: Tree) -> None:
        self.argv = argv
        self.tree = tree
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the supervisor and return once its first scan is done (the next one is ~5 s away)."""
        sentinel = self.tree.service("zz-sentinel", down=True, where=self.tree.scan)
        errors = open(self.tree.root / "svscan.err", "wb")
        try:
            self.proc = subprocess.Popen(
                [*self.argv, str(self.tree.scan)],
                env={"PATH": "/usr/bin:/bin"},  # so that Debian's svscan execs Debian's supervise
                stdin=subprocess.DEVNULL,
                stdout=errors,
                stderr=errors,
                cwd=self.tree.root,
            )
        finally:
            errors.close()
        assert _wait_for(lambda: running(str(sentinel))), "the supervisor did not scan"

    def close(self) -> None:
        """Kill the supervisor, its descendants and any process left in the tree (orphaned services)."""
        if self.proc is None:
            return
        victims: dict[int, psutil.Process] = {}
        try:
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                victims[child.pid] = child
        except psutil.NoSuchProcess:
            pass
        self.proc.kill()
        self.proc.wait(timeout=10)
        root = str(self.tree.root)
        for process in psutil.process_iter(["pid", "cwd"]):
            if process.pid != os.getpid() and _inside(process.info["cwd"], root):
                victims.setdefault(process.pid, process)
        for process in victims.values():
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        # Orphans stay zombies when init does not reap them: dead is enough.
        _wait_for(lambda: all(_gone(pid) for pid in victims), 5)


@pytest.fixture
def svscan(supervisor_cmd: list[str], tree: Tree) -> Iterator[Scanner]:
    scanner = Scanner(supervisor_cmd, tree)
    try:
        yield scanner
    finally:
        scanner.close()


def cmd(name: str, *args: str, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    """Run prefork's NAME with ARGS from /, as a person would (service names are relative to SVSCANDIR)."""
    return subprocess.run([ours(name), *args], env=env, cwd="/", capture_output=True, timeout=timeout)


def usage_line(name: str, msg: str) -> bytes:
    return f"{ours(name)}: usage: {name} [-q] {msg}\n".encode()


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _processes_in(directory: Path) -> dict[int, str]:
    """pid -> name of the processes whose cwd is exactly DIRECTORY (a supervise and its service)."""
    found = {}
    for process in psutil.process_iter(["pid", "cwd", "name", "status"]):
        if process.info["cwd"] == str(directory) and process.info["status"] != psutil.STATUS_ZOMBIE:
            found[process.pid] = process.info["name"]
    return found


def _pid_of(status_text: str) -> int:
    found = re.search(r"\(pid (\d+)\)", status_text)
    assert found, status_text
    return int(found.group(1))


# -- the management cycle against the real supervisor ---------------------------------------------------------


def test_cycle_with_log(tree: Tree, svscan: Scanner) -> None:
    foo = tree.service("foo", log=True)
    svscan.start()
    env = tree.env()

    added = cmd("svc-add", "-d", "foo", env=env)
    assert (added.returncode, added.stdout, added.stderr) == (0, b"Type 'svc-start foo' to start the service.\n", b"")
    assert os.readlink(tree.scan / "foo") == str(foo)
    assert (foo / "down").exists() and (foo / "log" / "down").exists()
    assert foo.stat().st_mode & stat.S_ISVTX

    # svscan finds foo at its next scan (~5 s): svc-start shows a dot per second meanwhile, live.
    proc = subprocess.Popen(
        [ours("svc-start"), "foo"], env=env, cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        early = b""
        deadline = time.monotonic() + 3
        while b"(supervise." not in early and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.1)
            if ready:
                early += os.read(proc.stdout.fileno(), 100)  # type: ignore[union-attr]
        assert early.startswith(b"Starting foo: (supervise.")
        assert proc.poll() is None, "the dots must show while svc-start is still waiting"
        rest, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = early + rest
    assert re.fullmatch(rb"Starting foo: \(supervise\.{1,7}\) foo/log foo done\.\n", out), out
    assert (proc.returncode, err) == (0, b"")
    assert not (foo / "down").exists() and not (foo / "log" / "down").exists()

    assert cmd("svc-isup", "foo", env=env).returncode == 0
    assert cmd("svc-isdown", "foo", env=env).returncode == 1
    status = cmd("svc-status", "foo", env=env)
    assert re.fullmatch(rf"foo: {STATUS_UP}\nfoo/log: {STATUS_UP}\n".encode(), status.stdout), status.stdout
    main_pid = _pid_of(status.stdout.decode().splitlines()[0])
    log_pid = _pid_of(status.stdout.decode().splitlines()[1])
    in_tree = {**_processes_in(foo), **_processes_in(foo / "log")}
    assert main_pid in in_tree and log_pid in in_tree
    supervise_pids = [pid for pid, name in in_tree.items() if name == "supervise"]

    # supervise handles nothing for 1 s after a start, so a stop right after a start may show a dot.
    stopped = cmd("svc-stop", "foo", env=env)
    assert re.fullmatch(rb"Stopping foo: \.?foo \.?foo/log done\.\n", stopped.stdout), stopped.stdout
    assert (stopped.returncode, stopped.stderr) == (0, b"")
    assert _gone(main_pid) and _gone(log_pid)
    assert (foo / "down").exists() and (foo / "log" / "down").exists()
    assert cmd("svc-isup", "foo", env=env).returncode == 1
    assert cmd("svc-isdown", "foo", env=env).returncode == 0
    status = cmd("svc-status", "foo", env=env)
    assert re.fullmatch(rb"foo: down \d+ seconds\nfoo/log: down \d+ seconds\n", status.stdout), status.stdout

    again = cmd("svc-stop", "foo", env=env)
    assert again.stdout == b"Stopping foo: foo (already down) foo/log (already down) done.\n"
    assert again.returncode == 0

    restarted = cmd("svc-restart", "foo", env=env)
    assert restarted.stdout == (
        b"Stopping foo: foo (already down) foo/log (already down) done.\nStarting foo: foo/log foo done.\n"
    )
    assert (restarted.returncode, restarted.stderr) == (0, b"")
    restarted = cmd("svc-restart", "foo", env=env)
    assert re.fullmatch(
        rb"Stopping foo: \.?foo \.?foo/log done\.\nStarting foo: foo/log foo done\.\n", restarted.stdout
    ), restarted.stdout

    # svc-kill KILL: supervise restarts the service with a new pid.
    before = _pid_of(cmd("svc-status", "foo", env=env).stdout.decode().splitlines()[0])
    killed = cmd("svc-kill", "KILL", "foo", env=env)
    assert (killed.returncode, killed.stdout, killed.stderr) == (0, b"", b"")
    assert _wait_for(lambda: _gone(before))
    assert cmd("svc-waitup", "foo", env=env).returncode == 0
    assert _pid_of(cmd("svc-status", "foo", env=env).stdout.decode().splitlines()[0]) != before

    in_tree = {**_processes_in(foo), **_processes_in(foo / "log")}
    removed = cmd("svc-remove", "foo", env=env)
    assert (removed.returncode, removed.stdout, removed.stderr) == (0, b"", b"")
    assert not os.path.lexists(tree.scan / "foo")
    for directory in (foo, foo / "log"):
        assert not (directory / "supervise").exists()
        assert not (directory / "down").exists()
        assert (directory / "run").exists()
    # Both supervise processes exited (svc -dx) and the services are gone.
    assert all(_wait_for(lambda pid=pid: _gone(pid), 5) for pid in [*in_tree, *supervise_pids])
    assert not _processes_in(foo) and not _processes_in(foo / "log")


def test_cycle_without_log(tree: Tree, svscan: Scanner) -> None:
    bar = tree.service("bar")
    env = tree.env()
    added = cmd("svc-add", "bar", env=env)  # no -d: svscan's first scan starts it
    assert (added.returncode, added.stdout, added.stderr) == (0, b"", b"")
    assert not bar.stat().st_mode & stat.S_ISVTX
    svscan.start()

    started = cmd("svc-start", "bar", env=env)
    assert (started.returncode, started.stdout, started.stderr) == (0, b"Starting bar: bar done.\n", b"")
    status = cmd("svc-status", "bar", env=env)
    assert re.fullmatch(rf"bar: {STATUS_UP}\n".encode(), status.stdout), status.stdout
    pid = _pid_of(status.stdout.decode())

    quiet = cmd("svc-stop", "-q", "bar", env=env)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, b"", b"")
    assert _gone(pid)
    status = cmd("svc-status", "bar", env=env)
    assert re.fullmatch(rb"bar: down \d+ seconds\n", status.stdout), status.stdout

    quiet = cmd("svc-start", "-q", "bar", env=env)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, b"", b"")
    assert cmd("svc-isup", "bar", env=env).returncode == 0

    removed = cmd("svc-remove", "bar", env=env)
    assert (removed.returncode, removed.stdout, removed.stderr) == (0, b"", b"")
    assert not os.path.lexists(tree.scan / "bar")
    assert not (bar / "supervise").exists() and not (bar / "down").exists()
    assert _wait_for(lambda: not _processes_in(bar), 5)


def test_stop_timeout_and_kill(tree: Tree, svscan: Scanner) -> None:
    tree.service("stub", run=STUBBORN_RUN)
    tree.link("stub")
    svscan.start()
    env = tree.env(timeout=2)
    assert cmd("svc-waitup", "stub", env=env).returncode == 0

    failed = cmd("svc-stop", "stub", env=env)
    assert (failed.returncode, failed.stdout) == (1, b"Stopping stub: ..")
    assert failed.stderr == b"svc-stop: Fatal error: Failed to stop 'stub'.\n"

    killed = cmd("svc-stop", "-k", "stub", env=env)
    assert killed.stdout == b"Stopping stub: .. Failed to stop, killing: stub done.\n"
    assert (killed.returncode, killed.stderr) == (0, b"")
    assert cmd("svc-isdown", "stub", env=env).returncode == 0


def test_waitup_timeout(tree: Tree, svscan: Scanner) -> None:
    tree.service("idle", down=True)
    tree.link("idle")
    svscan.start()
    env = tree.env(timeout=2)
    assert _wait_for(lambda: running(str(tree.scan / "idle")))
    down = cmd("svc-waitdown", "idle", env=env)
    assert (down.returncode, down.stdout, down.stderr) == (0, b"", b"")
    began = time.monotonic()
    up = cmd("svc-waitup", "idle", env=env)
    assert (up.returncode, up.stdout, up.stderr) == (1, b"..", b"")
    assert 1.5 < time.monotonic() - began < 10


NOTIFY_LATE = "#!/bin/sh\nsleep 1.5\necho >&3\nexec sleep 100\n"  # ready 1.5 s after its start, on fd 3


@pytest.mark.parametrize("declares", [True, False], ids=["notification-fd", "none"])
def test_waitup_waits_for_readiness_when_the_service_declares_it(tree: Tree, declares: bool, request) -> None:
    """With a notification-fd, svc-waitup (and svc-start) return once the service is ready, not once it is up;
    without one, once it is up, as before.  Only prefork's supervisor knows readiness (its service table)."""
    directory = tree.service("late", run=NOTIFY_LATE, down=True)
    if declares:
        (directory / "notification-fd").write_text("3\n")
    tree.link("late")
    scanner = Scanner([ours("svscan")], tree)
    request.addfinalizer(scanner.close)
    scanner.start()
    env = tree.env(timeout=5)
    assert _wait_for(lambda: running(str(tree.scan / "late")))
    began = time.monotonic()
    started = cmd("svc-start", "late", env=env)
    took = time.monotonic() - began
    assert (started.returncode, started.stderr) == (0, b"")
    assert started.stdout.startswith(b"Starting late: ") and started.stdout.endswith(b"done.\n")
    if declares:
        assert took >= 1.4, took  # the echo came 1.5 s after the start
        entry = entry_for(str(tree.scan / "late"))
        assert entry is not None and entry.ready
    else:
        assert took < 1.4, took
    assert cmd("svc-waitup", "late", env=env).returncode == 0


def test_waitdown_timeout(tree: Tree, svscan: Scanner) -> None:
    tree.service("busy")
    tree.link("busy")
    svscan.start()
    env = tree.env(timeout=2)
    up = cmd("svc-waitup", "busy", env=env)
    assert (up.returncode, up.stdout, up.stderr) == (0, b"", b"")
    down = cmd("svc-waitdown", "busy", env=env)
    assert (down.returncode, down.stdout, down.stderr) == (1, b"..", b"")


def test_status_supervise_not_running(tree: Tree) -> None:
    tree.service("foo")
    tree.link("foo")
    result = cmd("svc-status", "foo", env=tree.env())
    assert (result.returncode, result.stdout, result.stderr) == (0, b"Supervise not running on foo\n", b"")


def test_status_no_such_service(tree: Tree) -> None:
    result = cmd("svc-status", "nosuch", env=tree.env())
    assert result.stdout == b"Supervise not running on nosuch\n"
    assert result.stderr == b"svok: fatal: unable to chdir to nosuch: file does not exist\n"
    assert result.returncode == 0


def test_isup_supervise_not_running(tree: Tree) -> None:
    tree.service("foo")
    tree.link("foo")
    result = cmd("svc-isup", "foo", env=tree.env())
    assert (result.returncode, result.stdout, result.stderr) == (100, b"", b"")


def test_isup_no_such_service(tree: Tree) -> None:
    result = cmd("svc-isup", "nosuch", env=tree.env())
    assert result.returncode == 111
    assert result.stderr == b"svok: fatal: unable to chdir to nosuch: file does not exist\n"


def test_isdown_supervise_not_running(tree: Tree) -> None:
    tree.service("foo")
    tree.link("foo")
    result = cmd("svc-isdown", "foo", env=tree.env())
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")


def test_waitdown_supervise_not_running(tree: Tree) -> None:
    tree.service("foo")
    tree.link("foo")
    result = cmd("svc-waitdown", "foo", env=tree.env(timeout=2))
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")


# -- svc-start / svc-stop / svc-remove errors ------------------------------------------------------------------


def test_start_no_such_service(tree: Tree) -> None:
    result = cmd("svc-start", "nosuch", env=tree.env())
    assert (result.returncode, result.stdout) == (1, b"")
    assert result.stderr == b"svc-start: Fatal error: Service 'nosuch' does not exist.\n"


def test_start_missing_run(tree: Tree) -> None:
    (tree.lock / "norun").mkdir()
    tree.link("norun")
    result = cmd("svc-start", "norun", env=tree.env())
    assert (result.returncode, result.stdout) == (1, b"Starting norun: ")
    assert result.stderr == b"svc-start: Fatal error: 'norun/run' file does not exist!\n"


def test_start_missing_log_run(tree: Tree) -> None:
    directory = tree.service("foo")
    (directory / "log").mkdir()
    tree.link("foo")
    result = cmd("svc-start", "foo", env=tree.env())
    assert (result.returncode, result.stdout) == (1, b"Starting foo: ")
    assert result.stderr == b"svc-start: Fatal error: 'foo/log/run' file does not exist!\n"


def test_start_without_svscan_times_out(tree: Tree) -> None:
    tree.service("foo", down=True)
    tree.link("foo")
    began = time.monotonic()
    result = cmd("svc-start", "foo", env=tree.env(timeout=2))
    assert (result.returncode, result.stdout) == (1, b"Starting foo: (supervise..) ")
    assert result.stderr == b"svc-start: Fatal error: supervise for 'foo' did not start!  Is svscan running?\n"
    assert 1.5 < time.monotonic() - began < 10
    assert not (tree.lock / "foo" / "down").exists()  # removed before the wait, as the script does


def test_stop_no_such_service(tree: Tree) -> None:
    result = cmd("svc-stop", "nosuch", env=tree.env())
    assert (result.returncode, result.stdout) == (1, b"")
    assert result.stderr == b"svc-stop: Fatal error: Service 'nosuch' does not exist.\n"


def test_stop_supervise_not_running(tree: Tree) -> None:
    directory = tree.service("foo", log=True)
    tree.link("foo")
    result = cmd("svc-stop", "foo", env=tree.env())
    assert result.stdout == b"Stopping foo: foo (already down) foo/log (already down) done.\n"
    assert (result.returncode, result.stderr) == (0, b"")
    assert (directory / "down").exists() and (directory / "log" / "down").exists()


def test_restart_no_such_service(tree: Tree) -> None:
    result = cmd("svc-restart", "nosuch", env=tree.env())
    assert (result.returncode, result.stdout) == (1, b"")
    assert result.stderr == b"svc-stop: Fatal error: Service 'nosuch' does not exist.\n"


def test_remove_no_such_service(tree: Tree) -> None:
    result = cmd("svc-remove", "nosuch", env=tree.env())
    assert (result.returncode, result.stdout) == (1, b"")
    assert result.stderr == b"svc-stop: Fatal error: Service 'nosuch' does not exist.\n"


def test_remove_not_a_symlink(tree: Tree) -> None:
    directory = tree.service("plain", where=tree.scan)
    result = cmd("svc-remove", "plain", env=tree.env())
    assert (result.returncode, result.stdout) == (1, b"")
    assert (
        result.stderr
        == b"svc-remove: Fatal error: Service 'plain' is not symlinked into /service and can't be removed.\n"
    )
    assert directory.is_dir() and (directory / "down").exists()  # svc-stop ran first


def test_remove_without_supervise(tree: Tree) -> None:
    directory = tree.service("foo")
    tree.link("foo")
    result = cmd("svc-remove", "foo", env=tree.env())
    assert (result.returncode, result.stdout) == (0, b"")
    assert result.stderr == b"svc: warning: unable to control .: file does not exist\n"
    assert not os.path.lexists(tree.scan / "foo")
    assert not (directory / "down").exists() and (directory / "run").exists()


# -- svc-add ---------------------------------------------------------------------------------------------------


def test_add_name_and_absolute_dir(tree: Tree) -> None:
    directory = tree.service("foo", log=True)
    result = cmd("svc-add", str(directory) + "/", "other", env=tree.env())
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
    assert os.readlink(tree.scan / "other") == str(directory) + "/"
    assert directory.stat().st_mode & stat.S_ISVTX
    assert not (directory / "down").exists()


def test_add_basename_strips_slashes(tree: Tree) -> None:
    tree.service("foo")
    result = cmd("svc-add", "foo//", env=tree.env())
    assert result.returncode == 0
    assert os.readlink(tree.scan / "foo") == f"{tree.lock}/foo//"


def test_add_clears_sticky_without_log(tree: Tree) -> None:
    directory = tree.service("foo")
    directory.chmod(0o755 | stat.S_ISVTX)
    assert cmd("svc-add", "foo", env=tree.env()).returncode == 0
    assert stat.S_IMODE(directory.stat().st_mode) == 0o755


def test_add_already_set_up(tree: Tree) -> None:
    tree.service("foo")
    tree.link("foo")
    result = cmd("svc-add", "foo", env=tree.env())
    assert (result.returncode, result.stdout) == (1, b"")
    assert result.stderr == b"svc-add: Fatal error: Service 'foo' is already set up.\n"


def test_add_already_set_up_dangling_link(tree: Tree) -> None:
    tree.service("foo")
    (tree.scan / "foo").symlink_to(tree.root / "gone")
    result = cmd("svc-add", "foo", env=tree.env())
    assert result.returncode == 1
    assert result.stderr == b"svc-add: Fatal error: Service 'foo' is already set up.\n"


def test_add_not_a_directory(tree: Tree) -> None:
    result = cmd("svc-add", "-d", "nope", env=tree.env())
    assert (result.returncode, result.stdout) == (1, b"")
    assert result.stderr == f"svc-add: Fatal error: '{tree.lock}/nope' is not a directory.\n".encode()
    assert not os.path.lexists(tree.scan / "nope")


def test_add_plain_file_is_not_a_directory(tree: Tree) -> None:
    (tree.lock / "file").write_text("x")
    result = cmd("svc-add", "file", env=tree.env())
    assert result.returncode == 1
    assert result.stderr == f"svc-add: Fatal error: '{tree.lock}/file' is not a directory.\n".encode()


def test_add_quiet(tree: Tree) -> None:
    tree.service("foo")
    result = cmd("svc-add", "-qd", "foo", env=tree.env())
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
    assert (tree.lock / "foo" / "down").exists()


def test_add_default_lockdir(tree: Tree) -> None:
    env = tree.env()
    del env["SVCLOCKDIR"]
    result = cmd("svc-add", "surely-not-there-h4", env=env)
    assert result.stderr == b"svc-add: Fatal error: '/var/service/surely-not-there-h4' is not a directory.\n"


# -- template errors: usage lines, unknown options, environment -----------------------------------------------

USAGES = {
    "svc-add": "[-d] svc-directory [svc-name]",
    "svc-remove": "service",
    "svc-start": "service [service ...]",
    "svc-stop": "[-k] service [service ...]",
    "svc-restart": "service [service ...]",
    "svc-status": "service [service ...]",
    "svc-isup": "service",
    "svc-isdown": "service",
    "svc-waitup": "service",
    "svc-waitdown": "service",
    "svc-kill": "[-l] [SIGNAL] service [service ...]",
    "svc-build": "directory run-file [log-run-file]",
}
TOO_MANY = {
    "svc-add": 3,
    "svc-remove": 2,
    "svc-isup": 2,
    "svc-isdown": 2,
    "svc-waitup": 2,
    "svc-waitdown": 2,
    "svc-build": 4,
}


@pytest.mark.parametrize("name", sorted(USAGES))
def test_usage_no_operands(tree: Tree, name: str) -> None:
    result = cmd(name, env=tree.env())
    assert (result.returncode, result.stdout, result.stderr) == (1, b"", usage_line(name, USAGES[name]))


@pytest.mark.parametrize("name", sorted(TOO_MANY))
def test_usage_too_many_operands(tree: Tree, name: str) -> None:
    result = cmd(name, *(["x"] * TOO_MANY[name]), env=tree.env())
    assert (result.returncode, result.stdout, result.stderr) == (1, b"", usage_line(name, USAGES[name]))


def test_usage_svc_build_one_operand(tree: Tree) -> None:
    result = cmd("svc-build", "dir", env=tree.env())
    assert (result.returncode, result.stderr) == (1, usage_line("svc-build", USAGES["svc-build"]))


@pytest.mark.parametrize("name", sorted(USAGES))
def test_unknown_option(tree: Tree, name: str) -> None:
    result = cmd(name, "-z", "x", "y", env=tree.env())
    assert result.returncode == 1
    assert result.stdout == b""
    assert result.stderr == f"{name}: illegal option -- z\n".encode() + usage_line(name, USAGES[name])


def test_option_letter_of_another_script(tree: Tree) -> None:
    result = cmd("svc-start", "-k", "x", env=tree.env())
    assert result.returncode == 1
    assert result.stderr.startswith(b"svc-start: illegal option -- k\n")


def test_options_end_at_double_dash(tree: Tree) -> None:
    result = cmd("svc-start", "--", "-d", env=tree.env())
    assert result.stderr == b"svc-start: Fatal error: Service '-d' does not exist.\n"


def test_missing_scandir(tree: Tree) -> None:
    env = tree.env(SVSCANDIR=str(tree.root / "nowhere"))
    result = cmd("svc-start", "foo", env=env)
    assert result.returncode == 1
    assert (
        result.stderr
        == f"svc-start: Fatal error: unable to chdir to {tree.root}/nowhere: file does not exist\n".encode()
    )


def test_bad_svctimeout(tree: Tree) -> None:
    tree.service("foo")
    tree.link("foo")
    result = cmd("svc-waitup", "foo", env=tree.env(SVCTIMEOUT="soon"))
    assert result.returncode == 1
    assert result.stderr == b"svc-waitup: Fatal error: SVCTIMEOUT is not a number: 'soon'\n"


# -- svc-kill --------------------------------------------------------------------------------------------------


def _fake_supervise(tree: Tree, name: str) -> int:
    """A service dir whose supervise/control FIFO the test reads itself; returns the reading fd."""
    directory = tree.service(name, where=tree.scan)
    (directory / "supervise").mkdir()
    os.mkfifo(directory / "supervise" / "control", 0o600)
    return os.open(directory / "supervise" / "control", os.O_RDONLY | os.O_NONBLOCK)


def _sent(fd: int) -> bytes:
    try:
        return os.read(fd, 100)
    except BlockingIOError:
        return b""


SIGNAL_FORMS = [
    ("STOP", "p"), ("SIGSTOP", "p"),
    ("CONT", "c"), ("SIGCONT", "c"),
    ("HUP", "h"), ("SIGHUP", "h"), ("1", "h"),
    ("ALRM", "a"), ("SIGALRM", "a"), ("14", "a"),
    ("INT", "i"), ("SIGINT", "i"), ("2", "i"),
    ("TERM", "t"), ("SIGTERM", "t"), ("15", "t"),
    ("KILL", "k"), ("SIGKILL", "k"), ("9", "k"),
]  # fmt: skip


@pytest.mark.parametrize(("word", "letter"), SIGNAL_FORMS)
def test_kill_signal_forms(tree: Tree, word: str, letter: str) -> None:
    fds = [_fake_supervise(tree, "one"), _fake_supervise(tree, "two")]
    try:
        result = cmd("svc-kill", word, "one", "two", env=tree.env())
        assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
        assert [_sent(fd) for fd in fds] == [letter.encode()] * 2
    finally:
        for fd in fds:
            os.close(fd)


def test_kill_default_is_term(tree: Tree) -> None:
    fd = _fake_supervise(tree, "one")
    try:
        result = cmd("svc-kill", "one", env=tree.env())
        assert (result.returncode, result.stderr) == (0, b"")
        assert _sent(fd) == b"t"
    finally:
        os.close(fd)


def test_kill_unknown_signal(tree: Tree) -> None:
    fd = _fake_supervise(tree, "one")
    try:
        result = cmd("svc-kill", "BOGUS", "one", env=tree.env())
        assert (result.returncode, result.stdout) == (1, b"")
        assert result.stderr == b"svc-kill: Fatal error: unknown signal 'BOGUS'\n"
        assert _sent(fd) == b""  # the script would have TERMed 'one'
    finally:
        os.close(fd)


def test_kill_unknown_signal_number(tree: Tree) -> None:
    fd = _fake_supervise(tree, "one")
    try:
        result = cmd("svc-kill", "3", "one", env=tree.env())
        assert result.returncode == 1
        assert result.stderr == b"svc-kill: Fatal error: unknown signal '3'\n"
        assert _sent(fd) == b""
    finally:
        os.close(fd)


def test_kill_first_operand_existing_service(tree: Tree) -> None:
    fds = [_fake_supervise(tree, "one"), _fake_supervise(tree, "two")]
    try:
        result = cmd("svc-kill", "one", "two", env=tree.env())
        assert (result.returncode, result.stderr) == (0, b"")
        assert [_sent(fd) for fd in fds] == [b"t", b"t"]
    finally:
        for fd in fds:
            os.close(fd)


def test_kill_list(tree: Tree) -> None:
    result = cmd("svc-kill", "-l", env=tree.env())
    assert (result.returncode, result.stderr) == (0, b"")
    assert result.stdout == (
        b"svc-kill accepts the following signals:\n"
        b"SIGALRM\nSIGCONT\nSIGHUP\nSIGINT\nSIGKILL\nSIGSTOP\nSIGTERM (default)\n"
    )


def test_kill_signal_without_services(tree: Tree) -> None:
    result = cmd("svc-kill", "HUP", env=tree.env())
    assert (result.returncode, result.stdout, result.stderr) == (
        1,
        f"{ours('svc-kill')}: No services named to kill\n".encode(),
        b"",
    )


def test_kill_supervise_not_running(tree: Tree) -> None:
    tree.service("idle", where=tree.scan)
    result = cmd("svc-kill", "HUP", "idle", "nosuch", env=tree.env())
    assert (result.returncode, result.stdout) == (0, b"")
    assert result.stderr == (
        b"svc: warning: unable to control idle: file does not exist\n"
        b"svc: warning: unable to chdir to nosuch: file does not exist\n"
    )


def test_signal_letter_table() -> None:
    assert {word: signal_letter(word) for word, _ in SIGNAL_FORMS} == dict(SIGNAL_FORMS)
    assert signal_letter("hup") is None and signal_letter("SIG") is None and signal_letter("SIGUSR1") is None


# -- svc-build -------------------------------------------------------------------------------------------------


def test_build_with_log(tree: Tree) -> None:
    (tree.root / "r").write_text(RUN)
    (tree.root / "l").write_text(LOG_RUN)
    os.chmod(tree.root / "r", 0o600)
    result = subprocess.run(
        [ours("svc-build"), "svc", "r", "l"], env=tree.env(), cwd=tree.root, capture_output=True, timeout=30
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
    directory = tree.lock / "svc"
    assert (directory / "run").read_text() == RUN
    assert (directory / "log" / "run").read_text() == LOG_RUN
    assert stat.S_IMODE((directory / "run").stat().st_mode) == 0o755
    assert stat.S_IMODE((directory / "log" / "run").stat().st_mode) == 0o755
    assert directory.stat().st_mode & stat.S_ISVTX
    assert not (directory / "run.new").exists()


def test_build_without_log_absolute(tree: Tree) -> None:
    (tree.root / "r").write_text(RUN)
    target = tree.root / "elsewhere" / "deep" / "svc"
    result = subprocess.run(
        [ours("svc-build"), str(target), "r"], env=tree.env(), cwd=tree.root, capture_output=True, timeout=30
    )
    assert (result.returncode, result.stderr) == (0, b"")
    assert stat.S_IMODE((target / "run").stat().st_mode) == 0o755
    assert not (target / "log").exists()
    assert not target.stat().st_mode & stat.S_ISVTX


def test_build_replaces_run(tree: Tree) -> None:
    directory = tree.service("svc")
    (tree.root / "r").write_text("#!/bin/sh\nexec true\n")
    result = subprocess.run(
        [ours("svc-build"), "svc", "r"], env=tree.env(), cwd=tree.root, capture_output=True, timeout=30
    )
    assert result.returncode == 0
    assert (directory / "run").read_text() == "#!/bin/sh\nexec true\n"


def test_build_missing_run_file(tree: Tree) -> None:
    result = subprocess.run(
        [ours("svc-build"), "svc", "nope"], env=tree.env(), cwd=tree.root, capture_output=True, timeout=30
    )
    assert (result.returncode, result.stdout) == (1, b"")
    assert result.stderr == b"svc-build: Fatal error: unable to read 'nope': file does not exist\n"


def test_build_missing_log_run_file(tree: Tree) -> None:
    (tree.root / "r").write_text(RUN)
    result = subprocess.run(
        [ours("svc-build"), "svc", "r", "nope"], env=tree.env(), cwd=tree.root, capture_output=True, timeout=30
    )
    assert result.returncode == 1
    assert result.stderr == b"svc-build: Fatal error: unable to read 'nope': file does not exist\n"
    assert (tree.lock / "svc" / "run").exists()


def test_build_directory_is_a_file(tree: Tree) -> None:
    (tree.root / "r").write_text(RUN)
    (tree.lock / "svc").write_text("")
    result = subprocess.run(
        [ours("svc-build"), "svc", "r"], env=tree.env(), cwd=tree.root, capture_output=True, timeout=30
    )
    assert result.returncode == 1
    assert (
        result.stderr
        == f"svc-build: Fatal error: unable to create directory '{tree.lock}/svc': file already exists\n".encode()
    )


# -- the waits' dot counting, on a fake clock -------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _settings(timeout: int) -> tuple[Settings, FakeClock, io.BytesIO]:
    fake = FakeClock()
    out = io.BytesIO()
    return Settings(timeout_text=str(timeout), out=out, sleep=fake.sleep, clock=fake.clock), fake, out


@pytest.mark.parametrize(("ready_at", "dots"), [(0.5, 0), (1.0, 0), (1.5, 1), (2.5, 2), (4.9, 4)])
def test_poll_dots_after_each_second(ready_at: float, dots: int) -> None:
    settings, fake, out = _settings(timeout=5)
    assert poll(settings, lambda: fake.now >= ready_at - 1e-9, dot_first=False)
    assert out.getvalue() == b"." * dots
    assert fake.now < ready_at + 0.1


@pytest.mark.parametrize(("ready_at", "dots"), [(0.0, 0), (0.5, 1), (1.5, 2), (2.9, 3)])
def test_poll_dots_first(ready_at: float, dots: int) -> None:
    settings, fake, out = _settings(timeout=5)
    assert poll(settings, lambda: fake.now >= ready_at - 1e-9, dot_first=True)
    assert out.getvalue() == b"." * dots


@pytest.mark.parametrize("dot_first", [False, True])
def test_poll_gives_up_after_timeout(dot_first: bool) -> None:
    settings, fake, out = _settings(timeout=3)
    assert not poll(settings, lambda: False, dot_first=dot_first)
    assert out.getvalue() == b"..."
    assert 2.9 < fake.now < 3.1


def test_settings_defaults() -> None:
    settings = Settings.from_environ("svc-start", {})
    assert (settings.scandir, settings.lockdir, settings.timeout) == ("/service", "/var/service", 15)
    assert Settings.from_environ("x", {"SVCTIMEOUT": "", "SVSCANDIR": ""}).scandir == "/service"
