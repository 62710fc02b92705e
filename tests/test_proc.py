"""prefork/proc.py: is this pid still the process that was recorded?  Real processes, and a fabricated /proc."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from prefork import proc

NOT_A_PID = 4_194_305  # above the largest pid_max: never a process


def _ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[19])


def _stat(ticks: int, state: str = "S", comm: str = "sleep") -> bytes:
    """A /proc/PID/stat line whose field 22 (start time) is TICKS."""
    after = [state, *["0"] * 18, str(ticks), "0", "0"]  # fields 3..24: state, 18 others, starttime, more
    return f"42 ({comm}) {' '.join(after)}\n".encode()


@pytest.fixture
def fake_proc(tmp_path, monkeypatch):
    """A /proc of our own making: write(pid, bytes) makes PID/stat, btime(seconds) makes stat."""
    monkeypatch.setattr(proc, "PROC", str(tmp_path))

    class Fake:
        def write(self, pid: int, data: bytes) -> None:
            (tmp_path / str(pid)).mkdir(exist_ok=True)
            (tmp_path / str(pid) / "stat").write_bytes(data)

        def btime(self, seconds: int) -> None:
            (tmp_path / "stat").write_bytes(b"cpu  1 2 3\nbtime %d\nprocesses 9\n" % seconds)

    return Fake()


def test_this_process_is_running_as_recorded():
    me = _ticks(os.getpid())
    assert proc.start_ticks(os.getpid()) == me
    assert proc.running(os.getpid(), me) and proc.running(os.getpid()) and proc.running(os.getpid(), 0)
    assert proc.start_boottime_ns(os.getpid()) == me * proc.TICK_NS


def test_pid_reuse_is_a_recorded_start_time_that_differs():
    me = _ticks(os.getpid())
    assert not proc.running(os.getpid(), me + 1)  # the pid now runs a process started at another time
    assert not proc.running(os.getpid(), me - 1)
    assert proc.running(os.getpid(), me + 1, slack=1)  # within the slack a caller allows


def test_gone_and_impossible_pids():
    assert proc.start_ticks(0) is None and proc.start_ticks(-5) is None
    assert proc.start_ticks(NOT_A_PID) is None
    assert not proc.running(NOT_A_PID) and not proc.running(0) and not proc.running(-1, 0)
    assert proc.start_boottime_ns(NOT_A_PID) is None


def test_a_zombie_is_not_running():
    child = subprocess.Popen(["true"])
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and open(f"/proc/{child.pid}/stat").read().split(") ")[1][0] != "Z":
            time.sleep(0.01)
        assert proc.start_ticks(child.pid) is None and not proc.running(child.pid)
    finally:
        child.wait(5)
    assert proc.start_ticks(child.pid) is None  # reaped: gone (unless the pid was taken again meanwhile)


def test_same_start_treats_zero_as_unknown():
    assert proc.same_start(0, 123) and proc.same_start(123, 0) and proc.same_start(123, 123)
    assert not proc.same_start(123, 124) and proc.same_start(123, 125, slack=2)


def test_command_names_with_spaces_and_parentheses(fake_proc):
    fake_proc.write(42, _stat(777, comm="a) (b c) Z"))
    assert proc.start_ticks(42) == 777 and proc.running(42, 777) and not proc.running(42, 778)


@pytest.mark.parametrize("state", ["Z", "X", "x"])
def test_dead_states_in_a_fabricated_stat(fake_proc, state):
    fake_proc.write(42, _stat(777, state))
    assert proc.start_ticks(42) is None and not proc.running(42)


@pytest.mark.parametrize("garbage", [
    b"", b"42", b"42 (x)", b"42 (x) S 1 2 3", b"\xff" * 300, _stat(777).replace(b"777", b"7x7"),
    _stat(777).replace(b"777", b"-77"), b"42 (x) " + b"S " * 40,
])
def test_garbage_proc_content_is_no_process(fake_proc, garbage):
    """Whatever /proc holds, the answer is a start time or None, never an exception."""
    fake_proc.write(42, garbage)
    assert proc.start_ticks(42) is None and not proc.running(42) and not proc.running(42, 777)


def test_unknown_start_trusts_the_pid_unless_it_must_be_known(tmp_path, monkeypatch):
    """A /proc that cannot be read (here: stat is a directory) leaves kill(0): alive, start time 0 (unknown)."""
    monkeypatch.setattr(proc, "PROC", str(tmp_path))
    for pid in (os.getpid(), NOT_A_PID):
        (tmp_path / str(pid) / "stat").mkdir(parents=True)
    assert proc.start_ticks(os.getpid()) == 0
    assert proc.running(os.getpid(), 777)  # a reader trusts the pid (another user's /proc may be hidden)
    assert not proc.running(os.getpid(), 777, known=True)  # adoption does not
    assert proc.start_boottime_ns(os.getpid()) is None
    assert proc.start_ticks(NOT_A_PID) is None and not proc.running(NOT_A_PID)


def test_ticks_at_turns_a_wall_clock_time_into_ticks(fake_proc):
    fake_proc.btime(1_700_000_000)
    assert proc.boot_time() == 1_700_000_000
    assert proc.ticks_at(1_700_000_010) == 10 * proc.HZ
    fake_proc.write(42, _stat(10 * proc.HZ + 3))
    assert proc.running(42, proc.ticks_at(1_700_000_010), 2 * proc.HZ, known=True)
    assert not proc.running(42, proc.ticks_at(1_700_000_013), 2 * proc.HZ, known=True)  # 3 s off: another process
    with pytest.raises(ValueError):
        proc.ticks_at(1_699_999_999)  # before boot: no process of this boot started then


def test_ticks_at_without_btime_fails(fake_proc):
    with pytest.raises(OSError):
        proc.ticks_at(1_700_000_000)  # no /proc/stat at all
    with open(proc.PROC + "/stat", "wb") as f:
        f.write(b"cpu 1 2 3\n")
    with pytest.raises(ValueError):
        proc.ticks_at(1_700_000_000)


def test_euid_of_a_real_process_and_of_garbage(fake_proc, tmp_path, monkeypatch):
    monkeypatch.setattr(proc, "PROC", "/proc")
    assert proc.euid(os.getpid()) == os.geteuid()
    assert proc.euid(NOT_A_PID) is None
    monkeypatch.setattr(proc, "PROC", str(tmp_path))
    for status in (b"Name:\tx\n", b"Uid:\t0\n", b"Uid:\tnot numbers at all\n", b"\xff" * 64):
        (tmp_path / "42").mkdir(exist_ok=True)
        (tmp_path / "42" / "status").write_bytes(status)
        assert proc.euid(42) is None, status
    (tmp_path / "42" / "status").write_bytes(b"Name:\tx\nUid:\t1\t65534\t1\t1\n")
    assert proc.euid(42) == 65534


def test_children_lists_a_child_until_it_is_reaped():
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert child.pid in proc.children(os.getpid())
    finally:
        child.kill()
        child.wait(timeout=10)
    assert child.pid not in proc.children(os.getpid())


SUBREAPER = r"""
import ctypes, os, sys, time
sys.path.insert(0, sys.argv[1])
from prefork import proc
ctypes.CDLL(None).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER: orphans below us come to us
missed = 0
for _ in range(int(sys.argv[2])):
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # a "worker": starts a "program" and dies at once
        os.close(r)
        grandchild = os.posix_spawn("/bin/sleep", ["sleep", "30"], {})
        os.write(w, b"%d" % grandchild)
        os._exit(0)
    os.close(w)
    grandchild = int(os.read(r, 64))
    os.close(r)
    os.waitpid(child, 0)  # reparented to us before its parent became a zombie
    if grandchild not in proc.children(os.getpid()):
        missed += 1
    os.kill(grandchild, 9)
    os.waitpid(grandchild, 0)
print(missed)
"""


def test_children_sees_orphans_reparented_to_a_subreaper(tmp_path):
    """The tcpserver master's case: a worker dies, its program is the master's child now and must be found."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(proc.__file__)))
    out = subprocess.run(["/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "python3", "-c", SUBREAPER,
                          root, "60"], capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"0\n"
