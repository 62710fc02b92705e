"""Files written as root never follow a link planted by someone else.

svscan, supervise, multilog and prefork-exporter commonly run as root in
directories another user can write: a service directory (and so its
``supervise/``) belongs to the service's owner, a log directory to the log
user, a textfile directory to node_exporter's.  Each test plants a symbolic
link at a name the program is about to open (``PATH.new`` -> a victim file in
the test's own directory: with ``fs.protected_symlinks`` covering only sticky
world-writable directories, a link there is followed by root), runs the real
command, and checks that the victim is untouched and the real output was
written anyway, or that the program stops with one clear line and nothing
half-written.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ours
from test_metrics_collector import make_board, promtool_check

from prefork import atomicfile, tai64n
from prefork.control import statusfile

VICTIM = b"precious: root's file\n"
ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
BOUND = 20.0


def victim(tmp_path: Path, name: str = "victim") -> Path:
    path = tmp_path / name
    path.write_bytes(VICTIM)
    path.chmod(0o600)
    return path


def untouched(path: Path) -> bool:
    st = path.stat()
    return path.read_bytes() == VICTIM and stat.S_IMODE(st.st_mode) == 0o600


def plant(link: Path, target: Path) -> Path:
    with contextlib.suppress(FileNotFoundError):
        link.unlink()
    link.symlink_to(target)
    return link


def wait_for(predicate, timeout: float = 15.0, interval: float = 0.02):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 1):
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)
    return predicate()


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


# == prefork/atomicfile.py: the one writer of PATH.new + rename ===========================================
def test_atomicfile_does_not_follow_a_link_at_the_temporary_name(tmp_path):
    prey = victim(tmp_path)
    plant(tmp_path / "out.new", prey)
    atomicfile.replace(str(tmp_path / "out"), b"new contents\n")
    assert untouched(prey)
    assert (tmp_path / "out").read_bytes() == b"new contents\n" and not (tmp_path / "out").is_symlink()
    assert not os.path.lexists(tmp_path / "out.new")


def test_atomicfile_does_not_create_what_a_dangling_link_names(tmp_path):
    plant(tmp_path / "out.new", tmp_path / "created-by-root")
    atomicfile.replace(str(tmp_path / "out"), b"x")
    assert not os.path.lexists(tmp_path / "created-by-root")
    assert (tmp_path / "out").read_bytes() == b"x"


def test_atomicfile_replaces_a_stale_leftover_with_a_fresh_file(tmp_path):
    (tmp_path / "out.new").write_bytes(b"left by a killed writer, longer than the new contents\n")
    (tmp_path / "out.new").chmod(0o666)
    old_umask = os.umask(0o022)
    try:
        atomicfile.replace(str(tmp_path / "out"), b"fresh\n")
    finally:
        os.umask(old_umask)
    assert (tmp_path / "out").read_bytes() == b"fresh\n"
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o644


def test_atomicfile_failure_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    (tmp_path / "out").write_bytes(b"old\n")
    real_write = os.write

    def half_then_full(fd: int, data) -> int:  # type: ignore[no-untyped-def]
        if len(data) > 4:
            return real_write(fd, bytes(data[:4]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(OSError) as exc:
        atomicfile.replace(str(tmp_path / "out"), b"new and longer\n")
    monkeypatch.undo()
    assert exc.value.errno == errno.ENOSPC and atomicfile.failed_step(exc.value) == "write"
    assert (tmp_path / "out").read_bytes() == b"old\n"
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_atomicfile_names_the_step_that_failed(tmp_path):
    (tmp_path / "out").mkdir()  # a directory at the name: the rename fails, after a good write
    with pytest.raises(IsADirectoryError) as exc:  # the system's error, its class kept
        atomicfile.replace(str(tmp_path / "out"), b"new\n")
    assert atomicfile.failed_step(exc.value) == "rename"
    assert sorted(os.listdir(tmp_path)) == ["out"]  # the temporary is gone
    with pytest.raises(FileNotFoundError) as exc:
        atomicfile.replace(str(tmp_path / "nodir" / "out"), b"new\n")
    assert atomicfile.failed_step(exc.value) == "create"
    assert atomicfile.failed_step(OSError(errno.EIO, "x")) == ""


def test_atomicfile_relative_to_a_directory_fd_with_an_exact_mode(tmp_path):
    """Names relative to an O_PATH directory (a link swapped in for the directory later changes nothing), and
    CHMOD set exactly whatever the umask (install -m)."""
    (tmp_path / "d").mkdir()
    dirfd = os.open(tmp_path / "d", os.O_PATH | os.O_DIRECTORY)
    old = os.umask(0o077)
    try:
        (tmp_path / "d").rename(tmp_path / "moved")
        (tmp_path / "d").symlink_to(tmp_path / "elsewhere")
        atomicfile.replace("run", b"#!/bin/sh\n", "run.new", 0o700, dir_fd=dirfd, chmod=0o755)
    finally:
        os.umask(old)
        os.close(dirfd)
    assert (tmp_path / "moved" / "run").read_bytes() == b"#!/bin/sh\n"
    assert stat.S_IMODE((tmp_path / "moved" / "run").stat().st_mode) == 0o755
    assert sorted(os.listdir(tmp_path / "moved")) == ["run"] and not (tmp_path / "elsewhere").exists()


# -- swap=True: the names exchanged (renameat2), the old file unlinked; docs/CONTRACTS.md, "Service status" ------
def _swappable(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        (path / "a").write_bytes(b"a")
        (path / "b").write_bytes(b"b")
        atomicfile.exchange(str(path / "a"), str(path / "b"))
        return (path / "a").read_bytes() == b"b"
    except OSError:
        return False
    finally:
        os.close(fd)
        for name in ("a", "b"):
            (path / name).unlink(missing_ok=True)


@pytest.fixture
def swap_dir(tmp_path):
    if not _swappable(tmp_path):
        pytest.skip("the file system of the temp dir cannot exchange names (renameat2)")
    return tmp_path


def test_atomicfile_swap_puts_a_new_file_in_place_and_leaves_no_temporary(swap_dir):
    (swap_dir / "out").write_bytes(b"old contents, longer than the new\n")
    old_inode = (swap_dir / "out").stat().st_ino
    keep = os.open(swap_dir / "out", os.O_RDONLY)  # a reader that opened the old file keeps it whole
    try:
        atomicfile.replace(str(swap_dir / "out"), b"new\n", swap=True)
        assert os.pread(keep, 100, 0) == b"old contents, longer than the new\n"
    finally:
        os.close(keep)
    assert (swap_dir / "out").read_bytes() == b"new\n"
    assert (swap_dir / "out").stat().st_ino != old_inode
    assert sorted(os.listdir(swap_dir)) == ["out"]
    atomicfile.replace(str(swap_dir / "first"), b"1\n", swap=True)  # nothing there yet: a plain rename
    assert (swap_dir / "first").read_bytes() == b"1\n" and sorted(os.listdir(swap_dir)) == ["first", "out"]


def test_atomicfile_swap_replaces_a_link_at_the_name_and_not_its_target(swap_dir):
    prey = victim(swap_dir)
    plant(swap_dir / "out", prey)
    atomicfile.replace(str(swap_dir / "out"), b"new\n", swap=True)
    assert untouched(prey)
    assert not (swap_dir / "out").is_symlink() and (swap_dir / "out").read_bytes() == b"new\n"
    assert not os.path.lexists(swap_dir / "out.new")


def test_atomicfile_swap_with_a_directory_at_the_name_fails_as_a_rename_does(swap_dir):
    """An exchange would take a directory; it is put back, the error is rename()'s, nothing else is left."""
    (swap_dir / "out").mkdir()
    (swap_dir / "out" / "inside").write_bytes(b"kept\n")
    with pytest.raises(IsADirectoryError) as exc:
        atomicfile.replace(str(swap_dir / "out"), b"new\n", swap=True)
    assert atomicfile.failed_step(exc.value) == "rename"
    assert sorted(os.listdir(swap_dir)) == ["out"] and (swap_dir / "out" / "inside").read_bytes() == b"kept\n"


def test_atomicfile_swap_falls_back_to_rename_where_the_exchange_is_refused(swap_dir, monkeypatch):
    """EINVAL (a file system without RENAME_EXCHANGE) or ENOSYS (no renameat2): a rename, and EINVAL is
    remembered for that file system."""
    (swap_dir / "out").write_bytes(b"old\n")
    calls = []

    def refuse(old: str, new: str, dir_fd: int | None = None) -> None:
        calls.append(old)
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    monkeypatch.setattr(atomicfile, "exchange", refuse)
    monkeypatch.setattr(atomicfile, "_no_exchange", set())
    atomicfile.replace(str(swap_dir / "out"), b"new\n", swap=True)
    atomicfile.replace(str(swap_dir / "out"), b"newer\n", swap=True)
    assert (swap_dir / "out").read_bytes() == b"newer\n" and sorted(os.listdir(swap_dir)) == ["out"]
    assert len(calls) == 1  # the second write did not ask again


def test_atomicfile_swap_readers_see_one_whole_version(swap_dir):
    """A reader racing 400 swaps reads every time one whole version, never a mix or an empty file."""
    versions = [bytes([65 + i % 26]) * (35 + i % 7) for i in range(400)]
    (swap_dir / "out").write_bytes(versions[-1])
    reader = subprocess.Popen(
        [sys.executable, "-c", "import os, sys, time\n"
         "seen = set(); end = time.monotonic() + 20\n"
         "open(sys.argv[3], 'wb').close()\n"
         "while not os.path.exists(sys.argv[2]) and time.monotonic() < end:\n"
         "    try:\n"
         "        with open(sys.argv[1], 'rb') as f: seen.add(f.read())\n"
         "    except FileNotFoundError: seen.add(b'MISSING')\n"
         "sys.stdout.buffer.write(b'\\n'.join(sorted(seen)))\n",
         str(swap_dir / "out"), str(swap_dir / "stop"), str(swap_dir / "reading")], stdout=subprocess.PIPE)
    try:
        for _ in range(2000):  # the reader is reading before the first write (a loaded machine starts it late)
            if (swap_dir / "reading").exists() or reader.poll() is not None:
                break
            time.sleep(0.01)
        for data in versions:
            atomicfile.replace(str(swap_dir / "out"), data, swap=True)
    finally:
        (swap_dir / "stop").touch()
        out, _ = reader.communicate(timeout=30)
    seen = set(out.split(b"\n"))
    assert reader.returncode == 0 and seen and b"" not in seen, seen
    assert seen <= set(versions), sorted(seen - set(versions))[:3]


def test_swap_pays_only_where_a_rename_writes_the_data_out(swap_dir):
    """ext4 and btrfs write a renamed file out (auto_da_alloc); tmpfs and /proc do not."""
    fs_type = subprocess.run(["stat", "-f", "-c", "%t", str(swap_dir)], capture_output=True, text=True,
                             check=True).stdout.strip()
    for path, expected in ((swap_dir, int(fs_type, 16) in (0xEF53, 0x9123683E)), ("/proc", False)):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            assert atomicfile.swap_pays(fd) is expected, path
        finally:
            os.close(fd)
    if os.path.isdir("/dev/shm") and subprocess.run(["stat", "-f", "-c", "%T", "/dev/shm"], capture_output=True,
                                                    text=True).stdout.strip() == "tmpfs":
        fd = os.open("/dev/shm", os.O_RDONLY | os.O_DIRECTORY)
        try:
            assert atomicfile.swap_pays(fd) is False
        finally:
            os.close(fd)


def test_atomicfile_with_a_directory_at_the_temporary_name_fails_cleanly(tmp_path):
    (tmp_path / "out").write_bytes(b"old\n")
    (tmp_path / "out.new").mkdir()
    with pytest.raises(OSError):
        atomicfile.replace(str(tmp_path / "out"), b"new\n")
    assert (tmp_path / "out").read_bytes() == b"old\n" and (tmp_path / "out.new").is_dir()


def test_statusfile_write_does_not_follow_a_link_at_status_new(tmp_path):
    prey = victim(tmp_path)
    (tmp_path / "supervise").mkdir()
    plant(tmp_path / "supervise" / "status.new", prey)
    statusfile.write(str(tmp_path / "supervise"), statusfile.Status(tai64n.now(), 7, False, b"u"))
    assert untouched(prey)
    assert statusfile.read(str(tmp_path / "supervise")).pid == 7


# == prefork-exporter --metrics-textfile ===================================================================
def exporter(*args: str) -> list[str]:
    return [ours("prefork-exporter"), *args]


def test_exporter_once_does_not_follow_a_link_at_the_textfile_new(tmp_path):
    make_board(tmp_path / "board")
    prey = victim(tmp_path)
    prom = tmp_path / "prefork.prom"
    plant(tmp_path / "prefork.prom.new", prey)
    out = subprocess.run(exporter("--scoreboard", str(tmp_path / "board"), "--metrics-textfile", str(prom), "--once"),
                         env=ENV, capture_output=True, timeout=BOUND)
    assert (out.returncode, out.stderr) == (0, b"")
    assert untouched(prey)
    promtool_check(prom.read_bytes())
    assert not os.path.lexists(tmp_path / "prefork.prom.new")


def test_running_exporter_never_writes_through_a_link_planted_between_writes(tmp_path):
    make_board(tmp_path / "board")
    prey = victim(tmp_path)
    prom = tmp_path / "prefork.prom"
    err = tmp_path / "exporter.err"
    with open(err, "wb") as f:
        proc = subprocess.Popen(exporter("--scoreboard", str(tmp_path / "board"), "--metrics-textfile", str(prom),
                                         "--textfile-interval", "0.01"), env=ENV, stdout=subprocess.DEVNULL, stderr=f)
    try:
        assert wait_for(prom.exists)
        inodes = set()  # of (inode, mtime): a freed inode number is soon used again
        for _ in range(100):  # about a second of rewrites, each racing a fresh link
            with contextlib.suppress(FileExistsError, FileNotFoundError):
                (tmp_path / "prefork.prom.new").symlink_to(prey)
            st = prom.stat()
            inodes.add((st.st_ino, st.st_mtime_ns))
            time.sleep(0.01)
        assert len(inodes) > 5, "the textfile was not being rewritten"
        assert proc.poll() is None
    finally:
        stop(proc)
    assert untouched(prey)
    promtool_check(prom.read_bytes())


def test_exporter_textfile_failure_leaves_the_old_file_whole(tmp_path):
    """A write that fails half-way (RLIMIT_FSIZE: EFBIG after a short write) changes nothing visible."""
    import resource

    make_board(tmp_path / "board", workers=64)
    prom = tmp_path / "prefork.prom"
    prom.write_bytes(b"# the last good exposition\n")

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))

    out = subprocess.run(exporter("--scoreboard", str(tmp_path / "board"), "--metrics-textfile", str(prom), "--once"),
                         env=ENV, capture_output=True, timeout=BOUND, preexec_fn=small_files)
    assert out.returncode == 111
    assert out.stderr == f"prefork-exporter: fatal: unable to write {prom}: file too big\n".encode()
    assert prom.read_bytes() == b"# the last good exposition\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["board", "prefork.prom"]


def test_exporter_textfile_on_a_full_file_system_leaves_the_old_file_whole(tmp_path):
    """A real ENOSPC: a 64 KiB tmpfs in a private mount namespace (it goes away with the command)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1)")
    make_board(tmp_path / "board", workers=64)
    small = tmp_path / "small"
    small.mkdir()
    script = (
        f"mount -t tmpfs -o size=64k tmpfs {small} || exit 77\n"
        f"printf '# the last good exposition\\n' > {small}/prefork.prom\n"
        f"head -c 60000 /dev/zero > {small}/filler 2>/dev/null\n"
        f"{exporter()[0]} --scoreboard {tmp_path}/board --metrics-textfile {small}/prefork.prom --once\n"
        "echo rc=$?\n"
        f"ls {small}\n"
        f"cat {small}/prefork.prom\n"
    )
    out = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], env=ENV,
                         capture_output=True, timeout=BOUND)
    if out.returncode == 77:
        pytest.skip(f"cannot mount a tmpfs here: {out.stderr!r}")
    assert out.stderr == f"prefork-exporter: fatal: unable to write {small}/prefork.prom: out of disk space\n".encode()
    assert out.stdout == b"rc=111\nfiller\nprefork.prom\n# the last good exposition\n"


# == supervise and svscan: the service directory belongs to the service's owner ============================
def service(root: Path, name: str = "svc") -> Path:
    d = root / name
    d.mkdir()
    (d / "run").write_text("#!/bin/sh\nexec sleep 300\n")
    (d / "run").chmod(0o755)
    (d / "down").touch()  # nothing runs: only supervise's own files are written
    return d


def supervise(tmp_path: Path, d: Path, *opts: str) -> tuple[subprocess.Popen, Path]:
    err = tmp_path / f"supervise.{d.name}.err"
    with open(err, "wb") as f:
        proc = subprocess.Popen([ours("supervise"), "--table", str(tmp_path / f"table.{d.name}"), *opts, str(d.relative_to(tmp_path))],
                                cwd=tmp_path, env=ENV, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=f)
    return proc, err


def status_written(d: Path) -> bool:
    path = d / "supervise" / "status"
    return path.exists() and not path.is_symlink() and path.stat().st_size >= 18 and path.stat().st_uid == os.geteuid()


@pytest.mark.parametrize("runit", [False, True], ids=["daemontools", "runit"])
def test_supervise_does_not_follow_links_at_its_temporary_names(tmp_path, runit):
    d = service(tmp_path)
    (d / "supervise").mkdir(mode=0o700)
    names = ["status.new", "stat.new", "pid.new"] if runit else ["status.new"]
    prey = {name: victim(tmp_path, f"victim.{name}") for name in names}
    for name in names:
        plant(d / "supervise" / name, prey[name])
    proc, err = supervise(tmp_path, d, *(["--runit"] if runit else []))
    try:
        assert wait_for(lambda: status_written(d)), err.read_bytes()
        subprocess.run([ours("svc"), "-o", str(d)], env=ENV, timeout=BOUND, check=True)  # more status writes
        assert wait_for(lambda: (d / "supervise" / "status").read_bytes()[17:18] in (b"\0", b"d"))
        for name in names:  # and once more, with every link put back between two writes
            plant(d / "supervise" / name, prey[name])
        subprocess.run([ours("svc"), "-d", str(d)], env=ENV, timeout=BOUND, check=True)
        # want down and nothing running: the service's exit is written too (TERM is sent first, the exit comes later)
        assert wait_for(lambda: (d / "supervise" / "status").read_bytes()[12:18] == b"\0\0\0\0\0d")
        assert proc.poll() is None
    finally:
        stop(proc)
    assert all(untouched(p) for p in prey.values())
    if runit:
        assert (d / "supervise" / "stat").read_bytes() == b"down\n"
    assert err.read_bytes() == b""


@pytest.mark.parametrize("name, message", [
    ("lock", "unable to acquire svc/supervise/lock: symbolic link loop"),
    ("control", "unable to read svc/supervise/control: symbolic link loop"),
    ("ok", "unable to read svc/supervise/ok: symbolic link loop"),
])
def test_supervise_refuses_its_fixed_names_as_links(tmp_path, name, message):
    """A dangling link must not make root create the file it names; a FIFO of someone else's is not ours."""
    d = service(tmp_path)
    (d / "supervise").mkdir(mode=0o700)
    target = tmp_path / "made-by-root"
    if name != "lock":
        os.mkfifo(target, 0o600)
    plant(d / "supervise" / name, target)
    proc, err = supervise(tmp_path, d)
    try:
        code = proc.wait(BOUND)
    finally:
        stop(proc)
    assert (code, err.read_bytes()) == (111, f"supervise: fatal: {message}\n".encode())
    if name == "lock":
        assert not os.path.lexists(target)


def test_supervise_directory_linked_by_another_user_is_not_followed(tmp_path):
    """Debian's ``supervise -> /var/lib/supervise/x`` link is root's; one made by the service's owner is refused."""
    d = service(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, d / "supervise")
    os.lchown(d / "supervise", 4321, 4321)
    proc, err = supervise(tmp_path, d)
    try:
        code = proc.wait(BOUND)
    finally:
        stop(proc)
    assert code == 111
    assert err.read_bytes() == b"supervise: fatal: unable to acquire svc/supervise/lock: " \
                               b"svc/supervise is a symbolic link of uid 4321, not followed\n"
    assert os.listdir(elsewhere) == []


def test_supervise_directory_swapped_for_a_link_later_is_not_written_through(tmp_path):
    d = service(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc, err = supervise(tmp_path, d)
    try:
        assert wait_for(lambda: status_written(d)), err.read_bytes()
        os.rename(d / "supervise", tmp_path / "moved")
        os.symlink(elsewhere, d / "supervise")
        os.lchown(d / "supervise", 4321, 4321)
        with open(tmp_path / "moved" / "control", "wb", buffering=0) as control:
            control.write(b"o")
        assert wait_for(lambda: (tmp_path / "moved" / "status").read_bytes()[17:18] == b"\0")
        assert proc.poll() is None
    finally:
        stop(proc)
    assert os.listdir(elsewhere) == []


def test_svscan_does_not_follow_a_link_at_status_new(tmp_path):
    scan = tmp_path / "scan"
    scan.mkdir()
    d = service(scan, "a")
    (d / "supervise").mkdir(mode=0o700)
    prey = victim(tmp_path)
    plant(d / "supervise" / "status.new", prey)
    err = tmp_path / "svscan.err"
    with open(err, "wb") as f:
        proc = subprocess.Popen([ours("svscan"), "--table", str(tmp_path / "table"), str(scan)], env=ENV,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=f)
    try:
        assert wait_for(lambda: status_written(d)), err.read_bytes()
        assert proc.poll() is None
    finally:
        stop(proc)
    assert untouched(prey)
    assert err.read_bytes() == b""


# == multilog: the log directory belongs to the log user ==================================================
def multilog(tmp_path: Path, *script: str) -> subprocess.Popen:
    return subprocess.Popen([ours("multilog"), *script], cwd=tmp_path, env=ENV, stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "multilog.err", "wb"))


def finish_multilog(proc: subprocess.Popen, data: bytes) -> int:
    try:
        proc.communicate(data, timeout=BOUND)
    finally:
        stop(proc)
    return proc.returncode


def test_multilog_does_not_append_to_a_link_at_current(tmp_path):
    log = tmp_path / "log"
    log.mkdir(mode=0o700)
    prey = victim(tmp_path)
    plant(log / "current", prey)
    assert finish_multilog(multilog(tmp_path, "./log"), b"line one\n") == 0
    assert untouched(prey)
    assert (log / "current").read_bytes() == b"line one\n" and not (log / "current").is_symlink()
    assert (tmp_path / "multilog.err").read_bytes() == b""


def test_multilog_refuses_an_executable_link_at_current(tmp_path):
    """A current with its x bit set is appended to; through a link that would be the victim."""
    log = tmp_path / "log"
    log.mkdir(mode=0o700)
    prey = victim(tmp_path)
    prey.chmod(0o700)
    plant(log / "current", prey)
    assert finish_multilog(multilog(tmp_path, "./log"), b"line one\n") == 111
    assert prey.read_bytes() == VICTIM and stat.S_IMODE(prey.stat().st_mode) == 0o700
    assert (tmp_path / "multilog.err").read_bytes() == \
        b"multilog: fatal: unable to append to ./log/current: symbolic link loop\n"


def test_multilog_does_not_create_what_a_link_at_lock_names(tmp_path):
    log = tmp_path / "log"
    log.mkdir(mode=0o700)
    plant(log / "lock", tmp_path / "made-by-root")
    assert finish_multilog(multilog(tmp_path, "./log"), b"line\n") == 111
    assert not os.path.lexists(tmp_path / "made-by-root")
    assert (tmp_path / "multilog.err").read_bytes() == \
        b"multilog: fatal: unable to lock directory ./log: symbolic link loop\n"


def test_multilog_processor_files_are_never_links(tmp_path):
    """``processed`` and ``newstate`` (the processor's fds 1 and 5) planted as links before a rotation."""
    log = tmp_path / "log"
    log.mkdir(mode=0o700)
    prey = {name: victim(tmp_path, f"victim.{name}") for name in ("processed", "newstate", "previous", "state")}
    proc = multilog(tmp_path, "s4096", "!cat; echo done >&5", "./log")
    try:
        assert wait_for(lambda: (log / "current").exists())
        for name in ("processed", "newstate"):
            plant(log / name, prey[name])
        line = b"x" * 99 + b"\n"
        assert finish_multilog(proc, line * 60) == 0
    finally:
        stop(proc)
    assert all(untouched(p) for p in prey.values())
    old = [p for p in log.iterdir() if re.fullmatch(r"@[0-9a-f]{24}\.s", p.name)]
    assert old and all(p.read_bytes() and set(p.read_bytes()) <= set(line) for p in old)
    assert (log / "state").read_bytes() == b"done\n"
    assert (tmp_path / "multilog.err").read_bytes() == b""


# == svc-build: installs run files as root ===================================================================
def test_svc_build_does_not_follow_a_link_at_run_new(tmp_path):
    d = tmp_path / "service"
    d.mkdir()
    prey = victim(tmp_path)
    plant(d / "run.new", prey)
    source = tmp_path / "run.src"
    source.write_text("#!/bin/sh\nexec true\n")
    out = subprocess.run([ours("svc-build"), str(d), str(source)], env=ENV, capture_output=True, timeout=BOUND)
    assert (out.returncode, out.stderr) == (0, b"")
    assert untouched(prey)
    assert (d / "run").read_text() == "#!/bin/sh\nexec true\n" and stat.S_IMODE((d / "run").stat().st_mode) == 0o755


def test_multilog_rotation_never_chmods_through_a_link_at_previous(tmp_path):
    """``previous`` swapped for a link between multilog's rename and its chmod 0744: the victim keeps its mode."""
    from test_multilog import FakeSeam, make, pump

    prey = victim(tmp_path)
    log = tmp_path / "log"

    class Racer(FakeSeam):
        raced = False

        def rename(self, src, dst, dir_fd):  # type: ignore[no-untyped-def]
            super().rename(src, dst, dir_fd)
            if dst == "previous" and not self.raced:
                self.raced = True
                os.unlink("previous", dir_fd=dir_fd)
                os.symlink(prey, "previous", dir_fd=dir_fd)

        def sleep(self, seconds: float) -> None:  # the one who planted it gives up: a plain file again
            super().sleep(seconds)
            if os.path.islink(log / "previous"):
                os.unlink(log / "previous")
                (log / "previous").write_bytes(b"")

    seam = Racer()
    pump(make("s4096", str(log), seam=seam), (b"y" * 99 + b"\n") * 50)
    assert seam.raced and untouched(prey)
    assert bytes(seam.err) == f"multilog: warning: unable to set mode of {log}/previous, pausing: " \
                              f"symbolic link loop\n".encode()
