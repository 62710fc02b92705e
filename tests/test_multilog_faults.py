"""multilog under faults: disk full, failing disks, failing and crashing processors, kill -9.

Whatever fails, multilog prints 0.76's ``multilog: warning: unable to ..., pausing: ERR``, sleeps 5 s and
retries the same step: every line ends up on disk once, in order.  Engine tests inject the faults through
the seam (fake sleeps, so they are fast); the command is checked against Debian's multilog with real
failing processors, and with SIGKILL in the middle of a stream.
"""

from __future__ import annotations

import errno
import os
import re
import resource
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import ours, real
from test_multilog import ENV, STAMP, FakeSeam, contents, make, numbered, old_files, pump, unstamp

IMPLS = ("debian", "prefork")


class DiskFull(FakeSeam):
    """Writes to current fail with ENOSPC (or write only part) while ``full`` is set; sleeping frees space."""

    def __init__(self, failures: int, partial: int = 0, code: int = errno.ENOSPC, what: str = "write") -> None:
        super().__init__()
        self.failures = failures
        self.partial = partial
        self.code = code
        self.what = what
        self.written = 0

    def _fail(self) -> None:
        if self.failures > 0:
            self.failures -= 1
            self.errno = self.code
            raise OSError(self.code, os.strerror(self.code))

    def write(self, fd, data):
        if self.what == "write":
            if self.partial and self.failures > 0 and len(data) > self.partial:
                self.failures -= 1
                return super().write(fd, data[:self.partial])
            self._fail()
        return super().write(fd, data)

    def fsync(self, fd):
        if self.what == "fsync":
            self._fail()
        super().fsync(fd)

    def rename(self, src, dst, dir_fd):
        if self.what == "rename":
            self._fail()
        super().rename(src, dst, dir_fd)

    def fchmod(self, fd, mode):
        if self.what == "fchmod" and mode == 0o744:
            self._fail()
        super().fchmod(fd, mode)

    def listdir(self, dir_fd):
        if self.what == "listdir":
            self._fail()
        return super().listdir(dir_fd)


def warnings(seam: FakeSeam) -> list[bytes]:
    return bytes(seam.err).splitlines()


# -- the disk ------------------------------------------------------------------------------------------------
def test_disk_full_pauses_then_writes_every_line_once_in_order(tmp_path):
    seam = DiskFull(failures=4)
    d = tmp_path / "d"
    data = numbered(2000)
    pump(make("t", "s4096", "n1000", str(d), seam=seam), data, size=1000)
    assert unstamp(contents(d)) == data
    message = f"multilog: warning: unable to write to {d}/current, pausing: out of disk space".encode()
    assert warnings(seam) == [message] * 4
    assert seam.sleeps == [5] * 4


def test_short_writes_on_a_full_disk_lose_and_repeat_nothing(tmp_path):
    seam = DiskFull(failures=30, partial=7)
    d = tmp_path / "d"
    data = numbered(1500)
    pump(make("s4096", "n1000", str(d), seam=seam), data, size=3000)
    assert contents(d) == data
    assert seam.err == b"" and seam.sleeps == []  # a short write is progress, not a failure


def test_io_errors_on_fsync_at_rotation_pause_and_retry(tmp_path):
    seam = DiskFull(failures=2, code=errno.EIO, what="fsync")
    d = tmp_path / "d"
    data = numbered(600)
    pump(make("s4096", "n1000", str(d), seam=seam), data)
    assert contents(d) == data
    assert warnings(seam) == [f"multilog: warning: unable to write {d}/current to disk, pausing: input/output error"
                              .encode()] * 2


def test_rename_failure_at_rotation_pauses_and_retries(tmp_path):
    seam = DiskFull(failures=1, code=errno.EROFS, what="rename")
    d = tmp_path / "d"
    data = numbered(600)
    pump(make("s4096", "n1000", str(d), seam=seam), data)
    assert contents(d) == data
    assert warnings(seam) == [
        f"multilog: warning: unable to rename current to previous in directory {d}, pausing: read-only file system"
        .encode()]


def test_unreadable_directory_when_pruning_pauses_and_retries(tmp_path):
    seam = DiskFull(failures=1, code=errno.EIO, what="listdir")
    d = tmp_path / "d"
    data = numbered(600)
    pump(make("s4096", "n1000", str(d), seam=seam), data)
    assert contents(d) == data
    assert warnings(seam) == [f"multilog: warning: unable to read {d}, pausing: input/output error".encode()]


def test_failure_to_mark_current_closed_at_the_end_pauses_and_retries(tmp_path):
    seam = DiskFull(failures=1, code=errno.EIO, what="fchmod")
    d = tmp_path / "d"
    pump(make(str(d), seam=seam), b"x\n")
    assert oct((d / "current").stat().st_mode & 0o777) == "0o744"
    assert warnings(seam) == [f"multilog: warning: unable to set mode of {d}/current, pausing: input/output error"
                              .encode()]


def test_a_clock_that_stands_still_pauses_on_the_old_file_name(tmp_path):
    class Frozen(FakeSeam):
        def sleep(self, seconds):
            super().sleep(seconds)
            self.usec += 1  # time moves on while paused

    seam = Frozen(fixed=True)
    d = tmp_path / "d"
    data = b"a" * 3000 + b"\n" + b"b" * 3000 + b"\n"
    pump(make("s4096", "n1000", str(d), seam=seam), data)
    assert contents(d) == data and len(old_files(d)) == 2
    (line,) = warnings(seam)
    assert re.fullmatch(rb"multilog: warning: unable to link to .*/@[0-9a-f]{24}\.s, pausing: file already exists",
                        line)


def test_equals_file_write_failure_pauses_and_retries(tmp_path):
    class FullFile(FakeSeam):
        failures = 2

        def write(self, fd, data):
            if len(data) == 1001 and self.failures:
                self.failures -= 1
                self.errno = errno.ENOSPC
                raise OSError(errno.ENOSPC, "full")
            return super().write(fd, data)

    seam = FullFile()
    f = tmp_path / "f"
    pump(make("=" + str(f), seam=seam), b"status line\n")
    assert f.read_bytes() == b"status line" + b"\n" * 990
    assert warnings(seam) == [f"multilog: warning: unable to write {f}, pausing: out of disk space".encode()] * 2


# -- processors through the seam -----------------------------------------------------------------------------
class Processors(FakeSeam):
    """Processors that do not fork: each run takes the next exit status; a run that exits 0 uppercases."""

    def __init__(self, statuses: list[int]) -> None:
        super().__init__()
        self.statuses = list(statuses)
        self.runs = 0

    def spawn(self, command, dir_fd):
        self.runs += 1
        status = self.statuses.pop(0) if self.statuses else 0
        if status == 0:
            with open(f"/proc/self/fd/{dir_fd}/previous", "rb") as f:
                body = f.read()
            with open(f"/proc/self/fd/{dir_fd}/processed", "wb") as f:
                f.write(body.upper())
            with open(f"/proc/self/fd/{dir_fd}/newstate", "wb") as f:
                f.write(b"run %d\n" % self.runs)
        return 4242 + len(self.statuses)

    def wait(self, pid):
        return self._status

    _status = 0


def _run_processors(tmp_path: Path, statuses: list[int]) -> tuple[Processors, Path, bytes]:
    class Seam(Processors):
        def spawn(self, command, dir_fd):
            self._status = self.statuses[0] if self.statuses else 0
            return super().spawn(command, dir_fd)

    seam = Seam(statuses)
    d = tmp_path / "d"
    data = numbered(300)
    pump(make("s4096", "n1000", "!anything", str(d), seam=seam), data)
    return seam, d, data


def test_a_failing_processor_pauses_and_runs_again(tmp_path):
    seam, d, data = _run_processors(tmp_path, [256, 256 * 3])
    assert warnings(seam) == [f"multilog: warning: processor failed in {d}, pausing".encode()] * 2
    assert seam.sleeps == [5, 5]
    done = b"".join(p.read_bytes() for p in old_files(d))
    assert done == data[:len(done)].upper() and done + (d / "current").read_bytes().upper() == data.upper()
    assert not (d / "previous").exists() and not (d / "processed").exists()


def test_a_crashing_processor_pauses_twice_and_runs_again(tmp_path):
    seam, d, data = _run_processors(tmp_path, [11])
    assert warnings(seam) == [f"multilog: warning: processor crashed in {d}, pausing: file does not exist".encode(),
                              f"multilog: warning: processor failed in {d}, pausing".encode()]
    assert seam.sleeps == [5, 5]
    done = b"".join(p.read_bytes() for p in old_files(d))
    assert done == data[:len(done)].upper()


# -- real processors, against Debian's -----------------------------------------------------------------------
def _command(impl: str) -> str:
    return real("multilog") if impl == "debian" else ours("multilog")


def _processor_run(tmp_path: Path, impl: str, first: str) -> tuple[int, bytes, Path]:
    where = tmp_path / impl
    where.mkdir()
    marker = where / "marker"
    proc = f"!if [ ! -e {marker} ]; then touch {marker}; {first}; fi; tr a-z A-Z"
    done = subprocess.run([_command(impl), "s4096", "n1000", proc, "./m"], input=numbered(200), cwd=where, env=ENV,
                          capture_output=True, timeout=120)
    return done.returncode, done.stderr, where / "m"


@pytest.mark.differential
@pytest.mark.parametrize(("first", "expected"), [
    ("exit 1", [b"multilog: warning: processor failed in ./m, pausing"]),
    ("kill -SEGV $$", [b"multilog: warning: processor crashed in ./m, pausing: file does not exist",
                       b"multilog: warning: processor failed in ./m, pausing"]),
], ids=["fails", "crashes"])
def test_a_real_processor_that_fails_once_loses_nothing(tmp_path, first, expected):
    results = {}
    threads = [threading.Thread(target=lambda i=impl: results.__setitem__(i, _processor_run(tmp_path, i, first)))
               for impl in IMPLS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=150)
    data = numbered(200)
    for impl in IMPLS:
        rc, err, m = results[impl]
        assert (rc, err.splitlines()) == (0, expected), impl
        done = b"".join(p.read_bytes() for p in old_files(m))
        assert done == data[:len(done)].upper() and (m / "current").read_bytes() == data[len(done):], impl
        assert sorted(p.name for p in m.iterdir() if not p.name.startswith("@")) == ["current", "lock", "state"]


# -- kill -9 and restart -------------------------------------------------------------------------------------
def _lines_on_disk(m: Path) -> list[bytes]:
    """Every line in the old files (oldest first), previous (left by a crash mid-rotation) and current, in order.

    A file counts once however many names it has (killed between linking previous to @... and unlinking it).
    """
    out, seen = [], set()
    for p in [*old_files(m), m / "previous", m / "current"]:
        try:
            st = p.stat()
        except FileNotFoundError:
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        out.extend(STAMP.sub(b"", line, count=1) for line in p.read_bytes().splitlines())
    return out


@pytest.mark.differential
@pytest.mark.parametrize("impl", IMPLS)
def test_kill_9_mid_stream_then_restart_keeps_every_acknowledged_line_once(tmp_path, impl):
    """Lines multilog wrote before SIGKILL are all there once; only what it had read and not written is lost."""
    count = 120_000
    data = b"".join(b"%07d %s\n" % (i, b"k" * (i % 40)) for i in range(count))
    r, w = os.pipe()
    m = tmp_path / "m"
    args = [_command(impl), "t", "s8192", "n100000", "./m"]
    writer_error: list[BaseException] = []

    def feed() -> None:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(w, view[:65536]):]
        except BaseException as err:  # noqa: BLE001 - reported by the test
            writer_error.append(err)
        finally:
            os.close(w)

    first = subprocess.Popen(args, stdin=r, cwd=tmp_path, env=ENV)
    second = None
    writer = threading.Thread(target=feed)
    try:
        writer.start()
        deadline = time.monotonic() + 60
        while len(old_files(m) if m.exists() else []) < 20 and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.005)
        first.kill()
        first.wait(timeout=30)
        acknowledged = _lines_on_disk(m)
        assert len(acknowledged) > 100 and first.returncode == -9
        current = m / "current"  # not closed cleanly: 0644 (or 0600, or missing, in the middle of a rotation)
        assert not current.exists() or not current.stat().st_mode & 0o100
        crashed_current = current.read_bytes() if current.exists() else b""
        second = subprocess.Popen(args, stdin=r, cwd=tmp_path, env=ENV)
        writer.join(timeout=120)
        assert second.wait(timeout=120) == 0 and not writer_error
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        os.close(r)
    final = _lines_on_disk(m)
    if crashed_current:
        assert any(p.name.endswith(".u") and p.read_bytes() == crashed_current for p in old_files(m))
    assert final[:len(acknowledged)] == acknowledged  # everything acknowledged, once, in place
    numbers = []
    fragments = 0
    for line in final:
        if re.fullmatch(rb"\d{7} k*", line) and len(line) == 8 + int(line[:7]) % 40:
            numbers.append(int(line[:7]))
        else:
            fragments += 1  # the tail of the line being read at the kill: its head was never written
    assert fragments <= 1
    assert numbers == sorted(set(numbers))  # no duplicates, in order
    gaps = [(a, b) for a, b in zip(numbers, numbers[1:], strict=False) if b != a + 1]
    assert len(gaps) <= 1  # lost: only what was read but not yet written at the kill
    assert numbers[0] == 0 and numbers[-1] == count - 1
    if gaps:
        lost = gaps[0][1] - gaps[0][0] - 1
        assert lost * 48 < 200_000  # at most a read buffer's worth


# -- a real disk limit: RLIMIT_FSIZE gives EFBIG until it is lifted --------------------------------------------
def test_a_file_size_limit_pauses_the_command_until_it_is_lifted(tmp_path):
    data = numbered(400)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    proc = subprocess.Popen([ours("multilog"), "./m"], stdin=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
                            env=ENV, preexec_fn=limit)
    try:
        proc.stdin.write(data)
        proc.stdin.close()
        line = proc.stderr.readline()
        assert line == b"multilog: warning: unable to write to ./m/current, pausing: file too big\n"
        assert proc.poll() is None
        hard = resource.prlimit(proc.pid, resource.RLIMIT_FSIZE)[1]
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (hard, hard))  # space comes back
        assert proc.wait(timeout=30) == 0
        assert contents(tmp_path / "m") == data
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
