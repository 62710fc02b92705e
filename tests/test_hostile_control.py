"""Root's supervision tools against a service directory whose owner is hostile.

A service directory belongs to the service's owner, who may not be root: anything in it,
``supervise/`` included once the owner has renamed root's away and made their own, can be a
forged file or a link.  These tests play that owner (files and links are given uid ATTACKER
with chown/lchown) and check that root's commands are not turned against anything else:

* svscan and supervise adopt a running service from ``supervise/status`` after a SIGKILL; a
  status naming some other process (with a correct start-time label) must not make them adopt
  it, signal it on ``svc -k``, or reopen its pipes as a service's log pipe;
* svc, svok and svstat open ``supervise/control``, ``ok`` and ``status`` without following a
  link the owner made (0.76's wording, errno text ``symbolic link loop``);
* the supervise-scripts (svc-add, svc-build, svc-remove) neither create, chmod nor remove
  what such a link names.

Every process a test starts is ended by pid: each carries a unique PREFORK_TEST_TAG in its
environment (svscan and supervise hand theirs on), and everything left working in the test's
directory is killed too.
"""

from __future__ import annotations

import contextlib
import os
import resource
import select
import stat
import struct
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import ours, real, supervised
from tcpserver_harness import TAG_VAR, kill_procs, tagged, wait_until

from prefork import proc as procinfo
from prefork import tai64n
from prefork.control import supervise_scripts

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="root's tools against a user's files: needs root")

ATTACKER = 4321  # the service directory's owner, never root
BOUND = 15.0
PRECIOUS = b"precious: not the service's\n"


# -- helpers --------------------------------------------------------------------------------------------------
class Procs:
    """Everything a test starts: one tag in each environment, killed by pid at the end."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.tag = f"hostile-control-{uuid.uuid4().hex}"
        self.env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", TAG_VAR: self.tag}
        self.started: list[subprocess.Popen] = []

    def popen(self, argv: list[str], cwd: Path, **kw: object) -> subprocess.Popen:
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("stdout", subprocess.DEVNULL)
        proc = subprocess.Popen(argv, cwd=cwd, env=self.env, start_new_session=True, **kw)  # type: ignore[call-overload]
        self.started.append(proc)
        return proc

    def run(self, argv: list[str], cwd: Path, **kw: object) -> subprocess.CompletedProcess:
        return subprocess.run(argv, cwd=cwd, env=self.env, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=BOUND, **kw)  # type: ignore[call-overload]

    def close(self) -> None:
        for proc in self.started:
            with contextlib.suppress(OSError):
                proc.kill()
        for proc in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        inside = str(self.tmp_path)
        for _ in range(5):
            procs = {p.pid: p for p in tagged(self.tag)}
            for p in psutil.process_iter():
                with contextlib.suppress(psutil.Error):
                    cwd = p.cwd()
                    if cwd == inside or cwd.startswith(inside + os.sep):
                        procs.setdefault(p.pid, p)
            procs.pop(os.getpid(), None)
            live = [p for p in procs.values() if alive(p.pid)]
            if not live:
                return
            kill_procs(live)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    made = Procs(tmp_path)
    try:
        yield made
    finally:
        made.close()


def alive(pid: int) -> bool:
    """PID exists and is not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def service(root: Path, name: str, run: str = "exec sleep 300", log: str | None = None) -> Path:
    d = root / name
    d.mkdir(parents=True)
    script(d / "run", run)
    if log is not None:
        (d / "log").mkdir()
        script(d / "log" / "run", log)
    return d


def script(path: Path, body: str) -> None:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def forged_status(pid: int) -> bytes:
    """A status naming PID, "up, want up", labelled with PID's real start time as /proc gives it."""
    ticks = procinfo.start_ticks(pid)
    assert ticks
    started = procinfo.boot_time() + ticks / procinfo.HZ
    seconds = int(started)
    return tai64n.pack(seconds, int((started - seconds) * 1e9)) + struct.pack("<IB1s", pid, 0, b"u")




def status_pid(d: Path) -> int:
    try:
        data = (d / "supervise" / "status").read_bytes()
    except OSError:
        return 0
    return int.from_bytes(data[12:16], "little") if len(data) >= 18 else 0


def stderr_of(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def start_supervisor(procs: Procs, program: str, root: Path, name: str) -> subprocess.Popen:
    """prefork's ``svscan ROOT`` or ``supervise NAME`` (in ROOT), its table in the test's directory."""
    table = str(procs.tmp_path / f"table.{uuid.uuid4().hex[:8]}")
    err = open(procs.tmp_path / f"{program}.err", "ab")
    try:
        if program == "svscan":
            return procs.popen([ours("svscan"), "--table", table, str(root)], root.parent, stderr=err)
        return procs.popen([ours("supervise"), "--table", table, name], root, stderr=err)
    finally:
        err.close()


def pipe_inodes(pid: int) -> set[int]:
    """Inodes of the FIFOs and pipes PID holds open."""
    found = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                st = os.stat(f"/proc/{pid}/fd/{fd}")
                if stat.S_ISFIFO(st.st_mode):
                    found.add(st.st_ino)
    return found


# == adoption: svscan and supervise take over a service from supervise/status ====================================
FORGERIES = ["status-of-another-user", "status-link", "supervise-dir-of-another-user"]


def forge(d: Path, forgery: str, pid: int, elsewhere: Path) -> None:
    """Plant, in D, a status naming PID the way the service's owner could."""
    sup = d / "supervise"
    sup.mkdir(mode=0o700)
    if forgery == "status-of-another-user":  # a status file the owner was given, or wrote
        (sup / "status").write_bytes(forged_status(pid))
        os.chown(sup / "status", ATTACKER, ATTACKER)
    elif forgery == "status-link":  # a link to a root-owned file with the right bytes in it
        (elsewhere / "forged").write_bytes(forged_status(pid))
        os.symlink(elsewhere / "forged", sup / "status")
        os.lchown(sup / "status", ATTACKER, ATTACKER)
    else:  # root's supervise/ renamed away, the owner's own made in its place, a root-owned status moved in
        (sup / "status").write_bytes(forged_status(pid))
        os.chown(sup, ATTACKER, ATTACKER)


@pytest.mark.parametrize("forgery", FORGERIES)
@pytest.mark.parametrize("program", ["svscan", "supervise"])
def test_a_forged_status_does_not_make_root_adopt_another_process(tmp_path, procs, program, forgery):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    victim = procs.popen(["sleep", "300"], elsewhere)
    assert wait_until(lambda: psutil.Process(victim.pid).name() == "sleep", 5)
    root = tmp_path / "sv"
    d = service(root, "a")
    forge(d, forgery, victim.pid, elsewhere)

    start_supervisor(procs, program, root, "a")
    assert wait_until(lambda: supervised(d), BOUND), stderr_of(tmp_path / f"{program}.err")
    assert wait_until(lambda: status_pid(d) not in (0, victim.pid), 5), "the forged pid was adopted"
    own = status_pid(d)
    assert psutil.Process(own).cwd() == str(d)  # its own ./run

    done = procs.run([ours("svc"), "-k", "a"], root)
    assert (done.returncode, done.stderr) == (0, b"")
    assert wait_until(lambda: status_pid(d) not in (0, own), 5)  # ./run was killed and started again
    time.sleep(0.2)
    assert alive(victim.pid)
    assert victim.poll() is None


def test_a_real_service_that_left_its_directory_is_still_taken_over(tmp_path, procs):
    """The owner cannot forge a status in root's supervise/: a service's cwd need not be its directory."""
    root = tmp_path / "sv"
    d = service(root, "a", "cd / && exec sleep 300")
    first = start_supervisor(procs, "svscan", root, "a")
    assert wait_until(lambda: status_pid(d) and psutil.Process(status_pid(d)).name() == "sleep", BOUND)
    pid = status_pid(d)
    assert psutil.Process(pid).cwd() == "/"
    first.kill()
    first.wait(10)
    second = start_supervisor(procs, "svscan", root, "a")
    assert wait_until(lambda: supervised(d), BOUND)
    time.sleep(1.2)  # a start would have happened by now
    assert status_pid(d) == pid
    assert psutil.Process(second.pid).children() == []
    assert procs.run([ours("svc"), "-d", "a"], root).returncode == 0
    assert wait_until(lambda: not alive(pid), 5)


def test_in_a_supervise_dir_of_another_user_only_a_process_in_the_service_dir_is_taken_over(tmp_path, procs):
    """The fallback when supervise/ is not root's: the status must name a process working in the directory."""
    root = tmp_path / "sv"
    d = service(root, "a")
    running = procs.popen(["sleep", "300"], d)
    assert wait_until(lambda: psutil.Process(running.pid).name() == "sleep", 5)
    forge(d, "supervise-dir-of-another-user", running.pid, tmp_path)
    scan = start_supervisor(procs, "svscan", root, "a")
    assert wait_until(lambda: supervised(d), BOUND)
    time.sleep(1.2)
    assert status_pid(d) == running.pid
    assert psutil.Process(scan.pid).children() == []


@pytest.mark.parametrize("side", ["main", "log"])
def test_a_forged_status_does_not_hand_another_processs_pipe_to_a_log(tmp_path, procs, side):
    """svscan reopens the log pipe of an adopted pair through /proc: never that of a process it did not adopt."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    if side == "main":  # its stdout would become the pipe the log reads
        victim = procs.popen(["sleep", "300"], elsewhere, stdout=subprocess.PIPE)
        held = victim.stdout
    else:  # its stdin would become the pipe the service writes to
        victim = procs.popen(["sleep", "300"], elsewhere, stdin=subprocess.PIPE)
        held = victim.stdin
    assert held is not None
    victim_pipe = os.fstat(held.fileno()).st_ino
    assert wait_until(lambda: psutil.Process(victim.pid).name() == "sleep", 5)
    root = tmp_path / "sv"
    d = service(root, "b", "echo hello; exec sleep 300", log="exec cat > out")
    forge(d if side == "main" else d / "log", "status-of-another-user", victim.pid, elsewhere)

    scan = start_supervisor(procs, "svscan", root, "b")
    assert wait_until(lambda: supervised(d) and supervised(d / "log"), BOUND)
    assert victim_pipe not in pipe_inodes(scan.pid)
    assert wait_until(lambda: (d / "log" / "out").exists() and (d / "log" / "out").read_bytes() == b"hello\n", 5)
    assert victim_pipe not in pipe_inodes(status_pid(d)) | pipe_inodes(status_pid(d / "log"))
    assert victim.poll() is None


# == svscan: descriptors for --max-services ======================================================================
def test_max_services_fit_under_a_low_descriptor_limit(tmp_path, procs):
    """svscan raises its soft RLIMIT_NOFILE for --max-services: five descriptors a service, two a pipe."""
    services = 40  # with logs: 80 supervised, about 12 descriptors a pair
    root = tmp_path / "sv"
    for n in range(services):
        service(root, f"s{n:02}", log="exec cat > /dev/null")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))

    table = str(tmp_path / "table")
    err = tmp_path / "svscan.err"
    with open(err, "wb") as f:
        procs.popen([ours("svscan"), "--max-services", str(services), "--table", table, str(root)], tmp_path,
                    stderr=f, preexec_fn=low_limit)
    dirs = [root / f"s{n:02}" / sub for n in range(services) for sub in ("", "log")]
    assert wait_until(lambda: all(supervised(d) for d in dirs) or err.read_bytes(), 30)
    assert err.read_bytes() == b""
    assert all(supervised(d) for d in dirs)


# == svc, svok, svstat: no link of the owner's is followed ======================================================
def fifo_with_reader(path: Path) -> tuple[int, select.poll]:
    """A FIFO at PATH held open for reading, and a poll that shows POLLHUP once any writer came and went."""
    os.mkfifo(path, 0o600)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    watch = select.poll()
    watch.register(fd, select.POLLIN)
    return fd, watch


def untouched_fifo(fd: int, watch: select.poll) -> bool:
    """Nobody opened the FIFO for writing (no POLLHUP) and nothing is in it."""
    if watch.poll(0):
        return False
    try:
        return os.read(fd, 64) == b""
    except BlockingIOError:
        return True


def planted(link: Path, target: Path) -> None:
    os.symlink(target, link)
    os.lchown(link, ATTACKER, ATTACKER)


@pytest.mark.parametrize("target", ["file", "fifo"])
def test_svc_does_not_write_through_a_control_link_of_the_owner(tmp_path, procs, target):
    d = tmp_path / "a"
    (d / "supervise").mkdir(parents=True, mode=0o700)
    prey = tmp_path / "prey"
    if target == "file":
        prey.write_bytes(PRECIOUS)
    else:
        fd, watch = fifo_with_reader(prey)
    planted(d / "supervise" / "control", prey)
    try:
        done = procs.run([ours("svc"), "-dx", "a"], tmp_path)
        assert (done.returncode, done.stdout, done.stderr) == (
            0, b"", b"svc: warning: unable to control a: symbolic link loop\n")
        if target == "file":
            assert prey.read_bytes() == PRECIOUS
        else:
            assert untouched_fifo(fd, watch)
    finally:
        if target == "fifo":
            os.close(fd)


def test_svc_does_not_follow_a_supervise_link_of_the_owner(tmp_path, procs):
    d = tmp_path / "a"
    d.mkdir()
    elsewhere = tmp_path / "elsewhere"  # root's supervise/ of another service, say
    elsewhere.mkdir(mode=0o700)
    fd, watch = fifo_with_reader(elsewhere / "control")
    planted(d / "supervise", elsewhere)
    try:
        done = procs.run([ours("svc"), "-k", "a"], tmp_path)
        assert done.stderr == b"svc: warning: unable to control a: symbolic link loop\n"
        assert untouched_fifo(fd, watch)
    finally:
        os.close(fd)


def test_a_supervise_link_of_roots_is_followed(tmp_path, procs):
    """Debian's ``supervise -> /run/...`` layout keeps working, for svc, svok and svstat alike."""
    d = tmp_path / "a"
    d.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    fd, _watch = fifo_with_reader(elsewhere / "control")
    ok, _ = fifo_with_reader(elsewhere / "ok")
    (elsewhere / "status").write_bytes(tai64n.now() + struct.pack("<IB1s", 0, 0, b"d"))
    os.symlink(elsewhere, d / "supervise")
    try:
        assert procs.run([ours("svc"), "-k", "a"], tmp_path).stderr == b""
        assert os.read(fd, 64) == b"k"
        assert procs.run([ours("svok"), "a"], tmp_path).returncode == 0
        assert procs.run([ours("svstat"), "a"], tmp_path).stdout.startswith(b"a: down ")
    finally:
        os.close(fd)
        os.close(ok)


@pytest.mark.differential
def test_a_link_loop_reads_as_in_0_76(tmp_path, procs):
    """The wording of the refusals above is 0.76's for ELOOP: compare on a real loop."""
    d = tmp_path / "a"
    (d / "supervise").mkdir(parents=True)
    for name in ("control", "ok", "status"):
        os.symlink(name, d / "supervise" / name)
    for name, args in (("svc", ["-u", "a"]), ("svok", ["a"]), ("svstat", ["a"])):
        theirs = procs.run([real(name), *args], tmp_path)
        mine = procs.run([ours(name), *args], tmp_path)
        assert (mine.returncode, mine.stdout, mine.stderr) == (theirs.returncode, theirs.stdout, theirs.stderr)
    (d / "supervise" / "ok").unlink()
    (d / "supervise" / "ok").touch()  # past ok, svstat meets the status loop
    theirs = procs.run([real("svstat"), "a"], tmp_path)
    assert procs.run([ours("svstat"), "a"], tmp_path).stdout == theirs.stdout == (
        b"a: unable to open supervise/status: symbolic link loop\n")


def test_svok_and_svstat_do_not_open_an_ok_link_of_the_owner(tmp_path, procs):
    d = tmp_path / "a"
    (d / "supervise").mkdir(parents=True, mode=0o700)
    fd, watch = fifo_with_reader(tmp_path / "prey")  # someone's FIFO with a reader: "running" if followed
    planted(d / "supervise" / "ok", tmp_path / "prey")
    try:
        done = procs.run([ours("svok"), "a"], tmp_path)
        assert (done.returncode, done.stderr) == (111, b"svok: fatal: unable to open a/supervise/ok: symbolic link loop\n")
        done = procs.run([ours("svstat"), "a"], tmp_path)
        assert done.stdout == b"a: unable to open supervise/ok: symbolic link loop\n"
        assert untouched_fifo(fd, watch)
    finally:
        os.close(fd)


def test_svok_and_svstat_do_not_follow_a_supervise_link_of_the_owner(tmp_path, procs):
    d = tmp_path / "a"
    d.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    fd, watch = fifo_with_reader(elsewhere / "ok")
    planted(d / "supervise", elsewhere)
    try:
        assert procs.run([ours("svok"), "a"], tmp_path).returncode == 111
        assert procs.run([ours("svstat"), "a"], tmp_path).stdout == b"a: unable to open supervise/ok: symbolic link loop\n"
        assert untouched_fifo(fd, watch)
    finally:
        os.close(fd)


def test_svstat_does_not_read_through_a_status_link_of_the_owner(tmp_path, procs):
    d = tmp_path / "a"
    (d / "supervise").mkdir(parents=True, mode=0o700)
    (d / "supervise" / "ok").touch()
    secret = tmp_path / "secret"
    secret.write_bytes(b"\x40" + b"\0" * 7 + b"secret-bytes-of-root")  # decodes as a status if read
    secret.chmod(0o600)
    planted(d / "supervise" / "status", secret)
    done = procs.run([ours("svstat"), "a"], tmp_path)
    assert done.stdout == b"a: unable to open supervise/status: symbolic link loop\n"


# == supervise-scripts run as root ===============================================================================
class Tree:
    """SVSCANDIR and SVCLOCKDIR in the test's directory."""

    def __init__(self, procs: Procs) -> None:
        self.procs = procs
        self.root = procs.tmp_path
        self.scan = self.root / "scan"
        self.lock = self.root / "lock"
        self.scan.mkdir()
        self.lock.mkdir()

    def run(self, *argv: str) -> subprocess.CompletedProcess:
        env = {"SVSCANDIR": str(self.scan), "SVCLOCKDIR": str(self.lock), "SVCTIMEOUT": "2"}
        return subprocess.run([ours(argv[0]), *argv[1:]], cwd=self.root, env={**self.procs.env, **env},
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=BOUND)


@pytest.fixture
def tree(procs: Procs) -> Tree:
    return Tree(procs)


def test_svc_add_does_not_create_what_a_down_link_names(tree):
    d = service(tree.lock, "foo")
    nologin = tree.root / "nologin"  # /etc/nologin, say: root creating it locks everyone out
    planted(d / "down", nologin)
    done = tree.run("svc-add", "-d", "foo")
    assert not os.path.lexists(nologin)
    assert (done.returncode, done.stderr) == (
        1, f"svc-add: Fatal error: unable to touch '{d}/down': symbolic link loop\n".encode())


def test_svc_add_does_not_create_down_where_a_log_link_points(tree):
    d = service(tree.lock, "foo")
    elsewhere = tree.root / "elsewhere"  # another service's directory, say
    elsewhere.mkdir()
    planted(d / "log", elsewhere)
    done = tree.run("svc-add", "-d", "foo")
    assert os.listdir(elsewhere) == []
    assert done.returncode == 1 and b"symbolic link loop" in done.stderr


@pytest.mark.parametrize("log", [False, True])
def test_svc_add_does_not_chmod_what_a_service_link_points_to(tree, log):
    shared = tree.root / "shared"  # /tmp, say: svc-add's chmod -t would drop its sticky bit
    shared.mkdir()
    shared.chmod(0o1777)
    if log:
        (shared / "log").mkdir()
    planted(tree.lock / "foo", shared)
    done = tree.run("svc-add", "foo")
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    assert (done.returncode, done.stderr) == (
        1, f"svc-add: Fatal error: unable to chmod '{tree.lock}/foo': symbolic link loop\n".encode())


def test_svc_add_still_follows_a_service_link_of_roots(tree):
    real_dir = service(tree.root, "real")
    os.symlink(real_dir, tree.lock / "foo")
    done = tree.run("svc-add", "-d", "foo")
    assert (done.returncode, done.stderr) == (0, b"")
    assert (real_dir / "down").exists()


def test_svc_build_does_not_install_where_a_log_link_points(tree):
    d = tree.lock / "svc"
    d.mkdir()
    elsewhere = tree.root / "elsewhere"
    elsewhere.mkdir()
    planted(d / "log", elsewhere)
    (tree.root / "r").write_text("#!/bin/sh\nexec sleep 1\n")
    done = tree.run("svc-build", "svc", "r", "r")
    assert os.listdir(elsewhere) == []
    assert done.returncode == 1 and b"symbolic link loop" in done.stderr


def test_svc_build_chmods_its_own_file_not_a_link_swapped_in(tree, monkeypatch):
    """The owner renames a link over ``run`` right after the install: the mode is set before, on the file."""
    d = tree.lock / "svc"
    d.mkdir()
    prey = tree.root / "prey"
    prey.write_bytes(PRECIOUS)
    prey.chmod(0o600)
    (tree.root / "r").write_bytes(b"#!/bin/sh\n")
    real_rename = os.rename

    def then_swap(src, dst, *, src_dir_fd=None, dst_dir_fd=None):  # type: ignore[no-untyped-def]
        real_rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
        os.unlink(dst, dir_fd=dst_dir_fd)
        os.symlink(prey, dst, dir_fd=dst_dir_fd)
        os.chown(dst, ATTACKER, ATTACKER, dir_fd=dst_dir_fd, follow_symlinks=False)

    monkeypatch.setattr(os, "rename", then_swap)
    supervise_scripts.build(supervise_scripts.Settings(lockdir=str(tree.lock)), "svc", str(tree.root / "r"))
    monkeypatch.undo()
    assert stat.S_IMODE(prey.stat().st_mode) == 0o600
    assert (d / "run").is_symlink()  # the swap did happen


def test_svc_build_installs_run_mode_0755_whatever_the_umask(tree):
    (tree.root / "r").write_bytes(b"#!/bin/sh\n")
    old = os.umask(0o077)
    try:
        supervise_scripts.build(supervise_scripts.Settings(lockdir=str(tree.lock)), "svc", str(tree.root / "r"),
                                str(tree.root / "r"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tree.lock / "svc" / "run").stat().st_mode) == 0o755
    assert stat.S_IMODE((tree.lock / "svc" / "log" / "run").stat().st_mode) == 0o755
    assert (tree.lock / "svc").stat().st_mode & stat.S_ISVTX


def test_svc_remove_does_not_empty_what_a_supervise_link_points_to(tree):
    d = service(tree.lock, "foo")
    victim_dir = tree.root / "etc"  # /etc, say
    victim_dir.mkdir()
    (victim_dir / "passwd").write_bytes(PRECIOUS)
    planted(d / "supervise", victim_dir)
    os.symlink(d, tree.scan / "foo")
    tree.run("svc-remove", "foo")
    assert (victim_dir / "passwd").read_bytes() == PRECIOUS
    assert not os.path.lexists(d / "supervise")  # the owner's link itself is gone


def test_svc_remove_still_clears_a_supervise_link_of_roots(tree):
    d = service(tree.lock, "foo")
    run_dir = tree.root / "run-supervise"
    run_dir.mkdir()
    (run_dir / "status").write_bytes(b"x" * 18)
    os.symlink(run_dir, d / "supervise")
    os.symlink(d, tree.scan / "foo")
    tree.run("svc-remove", "foo")
    assert not os.path.lexists(d / "supervise") and os.listdir(run_dir) == []

