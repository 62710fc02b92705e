"""prefork's svscan as PID 1 of a PID namespace (a container's init): it reaps orphans and stops cleanly.

``unshare --pid --fork --mount-proc svscan --stop-services DIR`` makes svscan
PID 1 of a new namespace, as ``contrib/container/entrypoint`` does in a
container.  The host sees every process of the namespace in its own /proc,
so the tests identify them by their pid-namespace inode and read their
namespace pids from ``NSpid``.  Skipped where ``unshare --pid`` is not
permitted.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from conftest import VENV_BIN, ours

UNSHARE = shutil.which("unshare") or "/usr/bin/unshare"


def _unshare_prefix() -> list[str]:
    """The unshare command line that makes a new PID namespace here (as root, or in a user namespace)."""
    if not os.access(UNSHARE, os.X_OK):
        pytest.skip("unshare is not installed")
    for extra in ([], ["--map-root-user"]):
        cmd = [UNSHARE, *extra, "--pid", "--fork", "--mount-proc"]
        try:
            ok = subprocess.run([*cmd, "/bin/true"], capture_output=True, timeout=20).returncode == 0
        except subprocess.TimeoutExpired:
            ok = False
        if ok:
            return cmd
    pytest.skip("unshare --pid is not permitted here")


def _write(path: Path, text: str, mode: int = 0o755) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _pidns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _members(ns: str) -> dict[int, tuple[int, int, str]]:
    """Every process of the namespace NS: namespace pid -> (host pid, host ppid, state letter)."""
    found: dict[int, tuple[int, int, str]] = {}
    for pid in psutil.pids():
        if _pidns(pid) != ns:
            continue
        try:
            with open(f"/proc/{pid}/status") as f:
                fields = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
        except OSError:
            continue
        nspid = int(fields["NSpid"].split()[-1])
        found[nspid] = (pid, int(fields["PPid"]), fields["State"].split()[0])
    return found


class Pid1:
    """``unshare ... svscan`` started in a new PID namespace; ended by pid (SIGKILL of PID 1 ends the namespace)."""

    def __init__(self, tree: Path, svscan_args: list[str], command: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.unshare = subprocess.Popen(
            [*_unshare_prefix(), *(command or [ours("svscan"), *svscan_args, str(tree)])],
            env=env or {"PATH": f"{VENV_BIN}:/usr/bin:/bin"},
            stdin=subprocess.DEVNULL,
        )
        self.init = 0
        deadline = time.monotonic() + 20
        for _ in range(400):
            children = psutil.Process(self.unshare.pid).children() if self.unshare.poll() is None else []
            if children:
                self.init = children[0].pid
                break
            assert self.unshare.poll() is None, f"unshare exited with {self.unshare.returncode}"
            assert time.monotonic() < deadline, "no PID 1 appeared"
            time.sleep(0.05)
        self.ns = _pidns(self.init)
        assert self.ns is not None and self.ns != _pidns(os.getpid())

    def wait_exit(self, seconds: float) -> int:
        return self.unshare.wait(timeout=seconds)

    def close(self) -> None:
        for pid in (self.init, self.unshare.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self.unshare.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def _wait_for(predicate, seconds: float, what: str, step: float = 0.05):
    deadline = time.monotonic() + seconds
    for _ in range(int(seconds / step) + 1):
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            break
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


def _status_pid(service: Path) -> int:
    data = (service / "supervise" / "status").read_bytes()
    assert len(data) == 18
    return int.from_bytes(data[12:16], "little")


def _orphan_tree(tmp_path: Path) -> Path:
    """A service that leaves three orphaned grandchildren behind (and one that exits at once), with a log."""
    tree = tmp_path / "tree"
    _write(tree / "orphans" / "run", """#!/bin/sh
echo "main started as $$"
for i in 1 2 3; do sh -c 'sleep 1.5 & echo $! >> ../../orphans.txt'; done
sh -c 'true & echo $! >> ../../quick.txt'
exec sleep 1000
""")
    _write(tree / "orphans" / "log" / "run", "#!/bin/sh\nexec multilog t ./main\n")
    return tree


def test_svscan_is_pid1_and_reaps_orphaned_grandchildren(tmp_path):
    tree = _orphan_tree(tmp_path)
    init = Pid1(tree, ["--stop-services"])
    try:
        members = _members(init.ns)
        assert members[1][0] == init.init, members  # svscan itself is PID 1 of the namespace
        orphans_file = tmp_path / "orphans.txt"
        _wait_for(lambda: orphans_file.exists() and len(orphans_file.read_text().split()) == 3, 20, "the orphans")
        orphans = [int(p) for p in orphans_file.read_text().split()]
        alive = _members(init.ns)
        for nspid in orphans:  # each sleep's parent sh has exited: the kernel gave it to PID 1
            assert nspid in alive, (nspid, alive)
            host_pid, host_ppid, _state = alive[nspid]
            assert host_ppid == init.init, (nspid, alive[nspid])

        def reaped() -> bool:
            now = _members(init.ns)
            return not any(n in now for n in orphans)

        try:
            _wait_for(reaped, 10, "the orphans to be reaped")
        except AssertionError:
            raise AssertionError(f"orphans left behind (Z = zombie, not reaped): {_members(init.ns)}") from None
        main_pid = _status_pid(tree / "orphans")
        log_pid = _status_pid(tree / "orphans" / "log")
        left = _members(init.ns)
        assert sorted(left) == sorted({1, main_pid, log_pid}), left
        assert all(state != "Z" for _, _, state in left.values()), left
        assert init.unshare.poll() is None
    finally:
        init.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_pid1_brings_services_down_then_it_exits_0(tmp_path, sig):
    tree = _orphan_tree(tmp_path)
    init = Pid1(tree, ["--stop-services"])
    try:
        current = tree / "orphans" / "log" / "main" / "current"
        _wait_for(lambda: current.exists() and b"main started as" in current.read_bytes(), 20, "the log line")
        _wait_for(lambda: (tmp_path / "quick.txt").exists(), 10, "the run script")
        host_pids = [pid for pid, _, _ in _members(init.ns).values()]
        assert len(host_pids) >= 3
        os.kill(init.init, sig)  # from outside the namespace, as docker stop / kubelet do
        assert init.wait_exit(20) == 0
        # Brought down by svscan, not by the namespace's end: both status files say no pid, the main
        # was told d (want down), the log (told only x) read its pipe to EOF and closed current cleanly
        # (0744), and the line is there.
        assert _status_pid(tree / "orphans") == 0
        assert (tree / "orphans" / "supervise" / "status").read_bytes()[17:18] == b"d"
        assert _status_pid(tree / "orphans" / "log") == 0
        assert current.stat().st_mode & 0o777 == 0o744
        assert b"main started as 2\n" in current.read_bytes()
        gone, alive = psutil.wait_procs([psutil.Process(p) for p in host_pids if psutil.pid_exists(p)], timeout=5)
        assert not alive, alive
    finally:
        init.close()


def test_service_ignoring_sigterm_is_killed_after_grace(tmp_path):
    tree = tmp_path / "tree"
    _write(tree / "stubborn" / "run", "#!/bin/sh\ntrap '' TERM\necho up > ../../up.txt\nexec sleep 1000\n")
    init = Pid1(tree, ["--stop-services", "--grace", "1"])
    try:
        _wait_for(lambda: (tmp_path / "up.txt").exists(), 20, "the service")
        started = time.monotonic()
        os.kill(init.init, signal.SIGTERM)
        assert init.wait_exit(20) == 0
        assert time.monotonic() - started >= 0.9  # TERM was ignored: it took the KILL after --grace
        assert _status_pid(tree / "stubborn") == 0
    finally:
        init.close()


def test_without_stop_services_pid1_ignores_sigterm(tmp_path):
    """Why the entrypoint says --stop-services: the kernel gives PID 1 no default action for SIGTERM."""
    tree = tmp_path / "tree"
    _write(tree / "idle" / "run", "#!/bin/sh\necho up > ../../up.txt\nexec sleep 1000\n")
    init = Pid1(tree, [])
    try:
        _wait_for(lambda: (tmp_path / "up.txt").exists(), 20, "the service")
        os.kill(init.init, signal.SIGTERM)
        with pytest.raises(subprocess.TimeoutExpired):
            init.wait_exit(1.5)
        assert psutil.Process(init.init).status() != psutil.STATUS_ZOMBIE
    finally:
        init.close()
