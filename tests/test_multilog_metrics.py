"""multilog's opt-in counters (script word ``M``): the block's layout, exact counts, faults, the exporter's families.

Engine tests drive :class:`prefork.control.log.multilog.Multilog` with the fake seams of test_multilog(_faults) and put
the blocks in tmp_path; they read them back with prefork.control.log.logcounters_read (which does not import the
writer) and compare with what is on disk: lines and bytes equal the files' newlines and sizes, rotations
the ``@`` files made, pauses 5 s each.  The command is run with ``M`` (blocks in /dev/shm, keyed by the log
directory) and read by the reader, by the collector and by ``prefork-exporter --multilog --once``, whose
output goes through ``promtool check metrics``.  Without ``M`` nothing is published, and Debian's multilog
ignores the word.  Each reader fault is its own test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ours, real
from test_metrics_collector import NOT_A_PID, Log, names, promtool_check, samples, scrape, value
from test_multilog import ENV, FakeSeam, contents, make, numbered, old_files, unstamp
from test_multilog_faults import DiskFull, Processors

from prefork import proc as procinfo
from prefork.control.log import logcounters as lc
from prefork.control.log import logcounters_read as lr
from prefork.control.log.logscript import DIR, parse
from prefork.control.log.multilog import Fatal, Multilog
from prefork.metrics import collector as mc
from prefork.metrics import exporter

PAUSE_NS = 5 * 10**9


# -- helpers -------------------------------------------------------------------------------------------------
def metered(seam: FakeSeam, where: Path) -> FakeSeam:
    """SEAM with its counter blocks in WHERE (``block.<inode of the log dir>``), their paths in ``seam.blocks``."""
    seam.blocks = {}  # type: ignore[attr-defined]
    make_block = seam.counters

    def counters_path(dir_fd: int) -> str:
        return str(where / f"block.{os.fstat(dir_fd).st_ino}")

    def counters(path: str, directory: str) -> lc.LogCounters:
        block = make_block(path, directory)
        seam.blocks[directory] = path  # type: ignore[attr-defined]
        return block

    seam.counters_path = counters_path  # type: ignore[method-assign]
    seam.counters = counters  # type: ignore[method-assign]
    return seam


def feed_all(engine: Multilog, data: bytes, size: int = 65536) -> None:
    for i in range(0, len(data), size):
        engine.feed(data[i:i + size])
        engine.flush()


def run(tmp_path: Path, words: list[str], data: bytes, seam: FakeSeam | None = None,
        size: int = 65536) -> dict[str, lr.Snapshot]:
    """Feed DATA through an engine with blocks in tmp_path; every block as read after close, by directory."""
    seam = metered(seam if seam is not None else FakeSeam(), tmp_path)
    engine = make(*words, seam=seam)
    try:
        feed_all(engine, data, size)
        engine.close()
        return {os.path.basename(d): lr.read(p) for d, p in seam.blocks.items()}  # type: ignore[attr-defined]
    finally:
        engine.release()
        for path in seam.blocks.values():  # type: ignore[attr-defined]
            assert not os.path.exists(path), "release() removes the block"


def assert_matches_files(snap: lr.Snapshot, d: Path, rotations: int | None = None) -> None:
    """Lines and bytes are what the directory holds; rotations the @...s files made."""
    held = contents(d)
    assert (snap.lines, snap.bytes) == (held.count(b"\n"), len(held))
    made = len([p for p in old_files(d) if p.name.endswith(".s")])
    assert snap.rotations == (made if rotations is None else rotations)


def block_of(directory: Path) -> str:
    st = os.stat(directory)
    return lc.default_path(st.st_dev, st.st_ino)


def wait_for(predicate, seconds: float = 15.0, step: float = 0.02):
    """PREDICATE's first true value, polled; a file or block not there yet counts as false."""
    deadline = time.monotonic() + seconds
    for _ in range(int(seconds / step) + 1):
        try:
            got = predicate()
        except (OSError, lr.LogCountersError):
            got = None
        if got:
            return got
        if time.monotonic() > deadline:
            break
        time.sleep(step)
    raise AssertionError("condition not reached in time")


class Command:
    """A multilog command reading a pipe in tmp_path; ended (and its block removed) by pid in stop()."""

    def __init__(self, tmp_path: Path, *words: str, binary: str | None = None, preexec=None) -> None:
        self.r, self.w = os.pipe()
        self.tmp_path = tmp_path
        self.proc = subprocess.Popen([binary or ours("multilog"), *words], stdin=self.r, cwd=tmp_path, env=ENV,
                                     stderr=subprocess.PIPE, preexec_fn=preexec)
        os.close(self.r)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.w, view):]

    def end_input(self) -> int:
        os.close(self.w)
        self.w = -1
        return self.proc.wait(timeout=60)

    def stop(self, *dirs: Path) -> None:
        if self.w >= 0:
            os.close(self.w)
            self.w = -1
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.proc.stderr.close()
        for d in dirs:
            with contextlib.suppress(OSError):
                os.unlink(block_of(d))


def exporter_once(*args: str) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / "prefork-exporter"
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "prefork.metrics.exporter"]
    return subprocess.run([*argv, *args, "--once"], capture_output=True, timeout=60, env={"PATH": "/usr/bin:/bin"})


# == the script word ========================================================================================
def test_M_turns_counters_on_for_the_directories_after_it():
    script = parse(["./a", "M", "./b", "s5000", "/c", "M0", "./d"])
    assert [d.metrics for d in script.dirs] == [False, True, True, False]


@pytest.mark.parametrize(("word", "on"), [("M", True), ("M1", True), ("M7", True), ("M0", False), ("Mx", False),
                                          ("Metrics", False), ("M18446744073709551616", False)])
def test_M_word_forms(word, on):
    assert parse([word, "./a"]).dirs[0].metrics is on


def test_M_is_a_setting_not_an_action():
    script = parse(["t", "M", "./a"])
    assert script.timestamp and script.actions == [(DIR, 0)] and not script.selects


def test_off_by_default():
    assert [d.metrics for d in parse(["t", "s4096", "n5", "S100", "T5", "./a", "/b"]).dirs] == [False, False]


# == the layout, checked with struct against the documented table =========================================
def test_block_layout_is_the_documented_table(tmp_path):
    path = tmp_path / "block"
    before = time.time_ns()
    block = lc.LogCounters.create(str(path), "/var/log/x")
    try:
        block.wrote(1000, 10)
        block.rotated()
        block.failed()
        block.crashed()
        block.crashed()
        block.paused(PAUSE_NS)
        block.error()
        raw = path.read_bytes()
        assert len(raw) == 4096 and oct(path.stat().st_mode & 0o777) == "0o644"
        magic, version, size, count, pid, dirlen, start = struct.unpack_from("<4sIIIIIQ", raw, 0)
        assert (magic, version, size, count, pid, dirlen) == (b"PFML", 1, 4096, 7, os.getpid(), 10)
        assert before <= start <= time.time_ns()
        assert raw[32:64] == bytes(32)
        assert struct.unpack_from("<7Q", raw, 64) == (10, 1000, 1, 1, 2, PAUSE_NS, 1)
        assert raw[120:256] == bytes(136)
        assert raw[256:266] == b"/var/log/x" and raw[266:] == bytes(4096 - 266)
        snap = lr.read(str(path))
        assert snap.counters == {"lines": 10, "bytes": 1000, "rotations": 1, "processor_failures": 1,
                                 "processor_crashes": 2, "paused_ns": PAUSE_NS, "write_errors": 1}
        assert (snap.pid, snap.start_ns, snap.directory, snap.directory_truncated) == (os.getpid(), start,
                                                                                      "/var/log/x", False)
    finally:
        block.close()


def test_block_is_0644_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        block = lc.LogCounters.create(str(tmp_path / "block"), "/d")
    finally:
        os.umask(old)
    block.close()
    assert oct((tmp_path / "block").stat().st_mode & 0o777) == "0o644"


def test_a_long_directory_is_stored_truncated_and_said_so(tmp_path):
    long = "/" + "d" * 5000
    block = lc.LogCounters.create(str(tmp_path / "block"), long)
    block.close()
    snap = lr.read(str(tmp_path / "block"))
    assert snap.directory == long[:3840] and snap.directory_truncated


def test_raw_bytes_in_the_directory_survive(tmp_path):
    name = "/srv/caf" + b"\xe9".decode("utf-8", "surrogateescape")
    block = lc.LogCounters.create(str(tmp_path / "block"), name)
    block.close()
    assert lr.read(str(tmp_path / "block")).directory == name


def test_close_removes_the_block_unless_a_newer_one_replaced_it(tmp_path):
    path = str(tmp_path / "block")
    old = lc.LogCounters.create(path, "/d")
    new = lc.LogCounters.create(path, "/d")  # a later multilog on the same directory
    old.close(unlink=True)
    assert os.path.exists(path) and lr.read(path).start_ns > 0
    new.close(unlink=True)
    assert not os.path.exists(path)
    assert sorted(os.listdir(tmp_path)) == []  # no temporary names left behind


def test_a_foreign_file_at_the_temporary_name_is_never_written(tmp_path):
    path = tmp_path / "block"
    os.symlink(tmp_path / "victim", f"{path}.new.{os.getpid()}")  # unlinked first, then O_EXCL
    lc.LogCounters.create(str(path), "/d").close()
    assert not (tmp_path / "victim").exists() and lr.read(str(path)).directory == "/d"


# == exact counts through the engine =======================================================================
def test_plain_stamped_lines_and_bytes_are_what_the_files_hold(tmp_path):
    d = tmp_path / "d"
    data = numbered(3000)
    snaps = run(tmp_path, ["t", "M", "s4096", "n1000", str(d)], data, size=1000)
    assert unstamp(contents(d)) == data
    assert_matches_files(snaps["d"], d)
    assert snaps["d"].lines == 3000 and snaps["d"].rotations > 10
    assert (snaps["d"].processor_failures, snaps["d"].processor_crashes, snaps["d"].paused_ns,
            snaps["d"].write_errors) == (0, 0, 0, 0)


def test_plain_unstamped_lines_are_counted(tmp_path):
    d = tmp_path / "d"
    data = numbered(2000)
    snaps = run(tmp_path, ["M", "s4096", "n1000", str(d)], data, size=777)
    assert contents(d) == data
    assert_matches_files(snaps["d"], d)


def test_only_the_directories_after_M_publish(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    snaps = run(tmp_path, ["t", str(a), "M", str(b), "M0", str(c)], numbered(50))
    assert sorted(snaps) == ["b"]
    assert_matches_files(snaps["b"], b)


def test_selected_lines_per_directory(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    data = b"".join(b"%s %d\n" % (b"keep" if i % 3 else b"drop", i) for i in range(3000))
    snaps = run(tmp_path, ["t", "M", "s4096", "n1000", "-* drop*", str(a), "+*", "-* keep*", str(b)], data,
                size=4000)
    assert_matches_files(snaps["a"], a)
    assert_matches_files(snaps["b"], b)
    assert (snaps["a"].lines, snaps["b"].lines) == (2000, 1000)


@pytest.mark.parametrize("size", [1, 7, 999, 1000, 1001, 65536])
def test_long_lines_and_a_partial_last_line_in_any_chunking(tmp_path, size):
    a, b = tmp_path / "a", tmp_path / "b"
    data = b"short\n" + b"L" * 2500 + b"\n" + b"x" * 1200 + b"\nmid\n" + b"y" * 3000 + b"\nno newline at the end"
    snaps = run(tmp_path, ["t", "M", "s4096", "n1000", str(a), "-* L*", str(b)], data, size=size)
    assert unstamp(contents(a)) == data + b"\n"
    assert_matches_files(snaps["a"], a)
    assert_matches_files(snaps["b"], b)
    assert (snaps["a"].lines, snaps["b"].lines) == (6, 5)


def test_sigalrm_and_age_rotations_are_counted(tmp_path):
    seam = metered(FakeSeam(), tmp_path)
    d = tmp_path / "d"
    engine = make("M", "T60", str(d), seam=seam)
    try:
        engine.feed(b"one\n")
        engine.flush()
        engine.rotate_nonempty()
        engine.rotate_nonempty()  # current is empty: no rotation
        engine.feed(b"two\n")
        engine.flush()
        seam.mono += 60
        engine.rotate_due()
        snap = lr.read(seam.blocks[str(d)])
        assert snap.rotations == 2 == len(old_files(d))
        assert (snap.lines, snap.bytes) == (2, 8)
        engine.close()
    finally:
        engine.release()


def test_counters_are_published_after_each_flush_not_at_the_end(tmp_path):
    seam = metered(FakeSeam(), tmp_path)
    d = tmp_path / "d"
    engine = make("M", str(d), seam=seam)
    try:
        engine.feed(b"a\nbb\nccc")  # the partial line waits for its newline
        assert lr.read(seam.blocks[str(d)]).lines == 0  # queued, not written
        engine.flush()
        assert (lr.read(seam.blocks[str(d)]).lines, lr.read(seam.blocks[str(d)]).bytes) == (2, 5)
        engine.feed(b"\n")
        engine.flush()
        assert (lr.read(seam.blocks[str(d)]).lines, lr.read(seam.blocks[str(d)]).bytes) == (3, 9)
        engine.close()
    finally:
        engine.release()


def test_counts_start_with_this_multilog_not_with_the_directory(tmp_path):
    d = tmp_path / "d"
    first = run(tmp_path, ["M", str(d)], b"1\n2\n")
    second = run(tmp_path, ["M", str(d)], b"3\n")  # appends to the current closed cleanly
    assert (first["d"].lines, second["d"].lines) == (2, 1)
    assert second["d"].start_ns >= first["d"].start_ns
    assert (d / "current").read_bytes() == b"1\n2\n3\n"


# == faults through the seam ===============================================================================
def test_a_full_disk_adds_write_errors_and_paused_time(tmp_path):
    seam = DiskFull(failures=4)
    d = tmp_path / "d"
    data = numbered(2000)
    snaps = run(tmp_path, ["t", "M", "s4096", "n1000", str(d)], data, seam=seam, size=1000)
    assert unstamp(contents(d)) == data
    assert_matches_files(snaps["d"], d)
    assert (snaps["d"].write_errors, snaps["d"].paused_ns) == (4, 4 * PAUSE_NS)
    assert seam.sleeps == [5] * 4


def test_io_errors_at_rotation_are_write_errors_too(tmp_path):
    seam = DiskFull(failures=2, code=5, what="fsync")
    d = tmp_path / "d"
    snaps = run(tmp_path, ["M", "s4096", "n1000", str(d)], numbered(600), seam=seam)
    assert_matches_files(snaps["d"], d)
    assert (snaps["d"].write_errors, snaps["d"].paused_ns) == (2, 2 * PAUSE_NS)


def test_paused_time_is_the_time_actually_slept(tmp_path):
    class Slow(DiskFull):
        def sleep(self, seconds):
            super().sleep(seconds)
            self.mono += 0.25  # a sleep that overran

    d = tmp_path / "d"
    snaps = run(tmp_path, ["M", str(d)], b"x\n", seam=Slow(failures=2))
    assert snaps["d"].paused_ns == 2 * (PAUSE_NS + 250_000_000)


def test_a_failing_processor_is_counted(tmp_path):
    class Seam(Processors):
        def spawn(self, command, dir_fd):
            self._status = self.statuses[0] if self.statuses else 0
            return super().spawn(command, dir_fd)

    seam = Seam([256, 256 * 3])
    d = tmp_path / "d"
    snaps = run(tmp_path, ["M", "s4096", "n1000", "!anything", str(d)], numbered(300), seam=seam)
    snap = snaps["d"]
    assert (snap.processor_failures, snap.processor_crashes, snap.write_errors) == (2, 0, 0)
    assert snap.paused_ns == 2 * PAUSE_NS
    assert snap.rotations == len(old_files(d)) and snap.rotations > 0
    done = b"".join(p.read_bytes() for p in old_files(d)) + (d / "current").read_bytes()
    assert (snap.lines, snap.bytes) == (done.count(b"\n"), len(done))  # what multilog wrote, before processing


def test_a_crashing_processor_is_counted_once_and_both_pauses_are_timed(tmp_path):
    class Seam(Processors):
        def spawn(self, command, dir_fd):
            self._status = self.statuses[0] if self.statuses else 0
            return super().spawn(command, dir_fd)

    seam = Seam([11])
    d = tmp_path / "d"
    snap = run(tmp_path, ["M", "s4096", "n1000", "!anything", str(d)], numbered(300), seam=seam)["d"]
    assert (snap.processor_failures, snap.processor_crashes, snap.write_errors) == (0, 1, 0)
    assert snap.paused_ns == 2 * PAUSE_NS  # "crashed, pausing" then "failed, pausing", as 0.76


def test_a_block_that_cannot_be_made_costs_a_warning_not_a_line(tmp_path):
    class NoShm(FakeSeam):
        def counters(self, path, directory):
            self.errno = 13
            raise PermissionError(13, "denied")

    seam = NoShm()
    d = tmp_path / "d"
    engine = make("M", str(d), seam=seam)
    try:
        feed_all(engine, b"kept\n")
        engine.close()
    finally:
        engine.release()
    path = block_of(d)
    assert (d / "current").read_bytes() == b"kept\n"
    assert bytes(seam.err) == f"multilog: warning: unable to publish counters for {d} in {path}: access denied\n".encode()
    assert not os.path.exists(path)


def test_without_M_nothing_is_published(tmp_path):
    class Watch(FakeSeam):
        asked = 0

        def counters_path(self, dir_fd):
            self.asked += 1
            return super().counters_path(dir_fd)

    seam = Watch()
    d = tmp_path / "d"
    engine = make("t", "s4096", "S9000", "T60", str(d), seam=seam)
    try:
        feed_all(engine, numbered(500))
        engine.close()
        assert seam.asked == 0 and all(x.meter is None for x in engine.dirs)
        assert not os.path.exists(block_of(d))
    finally:
        engine.release()


def test_a_multilog_refused_by_the_lock_leaves_the_running_ones_block_alone(tmp_path):
    seam = metered(FakeSeam(), tmp_path)
    d = tmp_path / "d"
    engine = make("M", str(d), seam=seam)
    try:
        feed_all(engine, b"a\n")
        path = seam.blocks[str(d)]
        before = Path(path).read_bytes()
        second = Multilog(parse(["M", str(d)]), metered(FakeSeam(), tmp_path))
        with pytest.raises(Fatal):
            second.open()
        second.release()
        assert Path(path).read_bytes() == before
    finally:
        engine.release()


def test_a_multilog_that_fails_to_start_publishes_nothing(tmp_path):
    seam = metered(FakeSeam(), tmp_path)
    (tmp_path / "file").write_bytes(b"")
    engine = Multilog(parse(["M", str(tmp_path / "ok"), str(tmp_path / "file")]), seam)
    with pytest.raises(Fatal):
        engine.open()
    engine.release()
    assert seam.blocks == {} and sorted(p.name for p in tmp_path.iterdir()) == ["file", "ok"]


# == the command ===========================================================================================
def test_command_publishes_in_dev_shm_by_the_directory_and_removes_it_at_the_end(tmp_path):
    m = tmp_path / "m"
    cmd = Command(tmp_path, "t", "M", "s4096", "n1000", "./m")
    try:
        data = numbered(1000)
        cmd.write(data)
        wait_for(lambda: len(unstamp(contents(m), check_order=False)) == len(data))
        path = lr.find(str(m))
        assert path == block_of(m) and path.startswith("/dev/shm/prefork-multilog.")
        snap = lr.read(path)
        assert (snap.pid, snap.directory) == (cmd.proc.pid, str(m))
        assert_matches_files(snap, m)
        cmd.write(b"last\n")  # current may have just been rotated: make it non-empty
        wait_for(lambda: lr.read(path).lines == 1001)
        cmd.proc.send_signal(signal.SIGALRM)
        wait_for(lambda: lr.read(path).rotations == snap.rotations + 1)
        assert_matches_files(lr.read(path), m)
        assert cmd.end_input() == 0
        assert not os.path.exists(path)
        assert cmd.proc.stderr.read() == b""
    finally:
        cmd.stop(m)


def test_command_without_M_publishes_nothing(tmp_path):
    m = tmp_path / "m"
    cmd = Command(tmp_path, "t", "./m")
    try:
        cmd.write(b"x\n")
        wait_for(lambda: (m / "current").exists() and (m / "current").stat().st_size > 0)
        assert not os.path.exists(block_of(m))
        assert cmd.end_input() == 0
    finally:
        cmd.stop(m)


def test_command_sigterm_removes_the_block(tmp_path):
    m = tmp_path / "m"
    cmd = Command(tmp_path, "M", "./m")
    try:
        cmd.write(b"x\n")
        wait_for(lambda: os.path.exists(block_of(m)) and lr.read(block_of(m)).lines == 1)
        cmd.proc.send_signal(signal.SIGTERM)
        assert cmd.proc.wait(timeout=30) == 0
        assert not os.path.exists(block_of(m))
    finally:
        cmd.stop(m)


def test_command_counters_never_go_backwards_while_read_from_another_process(tmp_path):
    m = tmp_path / "m"
    cmd = Command(tmp_path, "t", "M", "s16777215", "./m")
    data = numbered(200_000)
    try:
        path = wait_for(lambda: os.path.exists(block_of(m)) and block_of(m))
        feeder = threading.Thread(target=cmd.write, args=(data,))
        feeder.start()
        last = (0, 0)
        reads = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and reads < 1_000_000:
            snap = lr.read(path)
            now = (snap.lines, snap.bytes)
            assert now[0] >= last[0] and now[1] >= last[1]
            last = now
            reads += 1
            if snap.lines == 200_000:
                break
        feeder.join(60)
        assert last[0] == 200_000 and reads > 10
        assert cmd.end_input() == 0
    finally:
        cmd.stop(m)


def test_command_processor_failure_and_pause_are_published(tmp_path):
    m = tmp_path / "m"
    marker = tmp_path / "marker"
    cmd = Command(tmp_path, "M", "s4096", "n1000", f"!if [ ! -e {marker} ]; then touch {marker}; exit 1; fi; cat",
                  "./m")
    try:
        data = numbered(200)
        cmd.write(data)
        snap = wait_for(lambda: (s := lr.read(block_of(m))).rotations >= 2 and s.paused_ns and s)
        assert (snap.processor_failures, snap.processor_crashes, snap.write_errors) == (1, 0, 0)
        assert PAUSE_NS <= snap.paused_ns < PAUSE_NS + 2 * 10**9
        assert cmd.end_input() == 0
        assert cmd.proc.stderr.read() == b"multilog: warning: processor failed in ./m, pausing\n"
        assert contents(m) == data
    finally:
        cmd.stop(m)


def test_command_file_size_limit_shows_as_write_errors_while_it_lasts(tmp_path):
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    m = tmp_path / "m"
    cmd = Command(tmp_path, "M", "./m", preexec=limit)
    try:
        data = numbered(400)
        cmd.write(data)
        assert cmd.proc.stderr.readline() == b"multilog: warning: unable to write to ./m/current, pausing: file too big\n"
        snap = lr.read(block_of(m))
        assert snap.write_errors == 1 and snap.bytes == 0  # not yet: the whole read is written or nothing counts
        hard = resource.prlimit(cmd.proc.pid, resource.RLIMIT_FSIZE)[1]
        resource.prlimit(cmd.proc.pid, resource.RLIMIT_FSIZE, (hard, hard))
        snap = wait_for(lambda: (s := lr.read(block_of(m))).bytes == len(data) and s)
        assert snap.write_errors == 1 and snap.paused_ns >= PAUSE_NS and snap.lines == 400
        assert cmd.end_input() == 0
    finally:
        cmd.stop(m)


@pytest.mark.differential
def test_daemontools_ignores_M_and_both_write_the_same_files(tmp_path):
    data = numbered(1500)
    held = {}
    for impl, binary in (("debian", real("multilog")), ("prefork", ours("multilog"))):
        where = tmp_path / impl
        where.mkdir()
        proc = subprocess.run([binary, "t", "M", "s4096", "n1000", "./m"], input=data, cwd=where, env=ENV,
                              capture_output=True, timeout=60)
        held[impl] = (proc.returncode, proc.stderr, unstamp(contents(where / "m")),
                      sorted(p.name for p in (where / "m").iterdir() if not p.name.startswith("@")))
        assert not os.path.exists(block_of(where / "m"))  # removed at the end (Debian's never made one)
    assert held["prefork"] == held["debian"] == (0, b"", data, ["current", "lock", "state"])


# == the collector and the exporter ========================================================================
def test_families_have_the_exact_values(tmp_path):
    block = lc.LogCounters.create(str(tmp_path / "block"), "/var/log/web")
    try:
        block.wrote(12345, 67)
        for _ in range(3):
            block.rotated()
        block.failed()
        block.crashed()
        block.crashed()
        block.paused(7_500_000_000)
        block.error()
        start = lr.read(str(tmp_path / "block")).start_ns
        data = scrape(mc.SharedMemoryCollector(multilogs=[str(tmp_path / "block")], log=Log()))
    finally:
        block.close()
    labels = {"directory": "/var/log/web"}
    assert value(data, "multilog_lines_total", **labels) == 67
    assert value(data, "multilog_bytes_total", **labels) == 12345
    assert value(data, "multilog_rotations_total", **labels) == 3
    assert value(data, "multilog_processor_failures_total", **labels, exit="nonzero") == 1
    assert value(data, "multilog_processor_failures_total", **labels, exit="signal") == 2
    assert value(data, "multilog_paused_seconds_total", **labels) == 7.5
    assert value(data, "multilog_write_errors_total", **labels) == 1
    assert value(data, "multilog_start_time_seconds", **labels) == start / 1e9
    assert value(data, "prefork_exporter_source_up", kind="multilog", path=str(tmp_path / "block")) == 1
    assert {n for n in names(data) if n.startswith("multilog_")} == {
        "multilog_lines_total", "multilog_bytes_total", "multilog_rotations_total",
        "multilog_processor_failures_total", "multilog_paused_seconds_total", "multilog_write_errors_total",
        "multilog_start_time_seconds"}


def test_render_is_prometheus_clients_generate_latest_with_multilog_families(tmp_path):
    from prometheus_client import CollectorRegistry, generate_latest

    block = lc.LogCounters.create(str(tmp_path / "block"), '/var/log/"q"\\x')
    try:
        block.wrote(10, 1)
        block.paused(1)

        def fresh() -> mc.SharedMemoryCollector:
            return mc.SharedMemoryCollector(multilogs=[str(tmp_path / "block"), str(tmp_path / "none")], log=Log())

        registry = CollectorRegistry(auto_describe=False)
        registry.register(fresh())
        theirs = generate_latest(registry)
        ours_ = fresh().render()
    finally:
        block.close()
    assert ours_ == theirs
    promtool_check(ours_)


def test_exporter_once_with_a_running_multilog(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    cmd = Command(tmp_path, "t", "M", "s4096", "n1000", "-* drop*", "./a", "+*", "./b")
    try:
        data = b"".join(b"%s %d\n" % (b"drop" if i % 4 == 0 else b"keep", i) for i in range(2000))
        cmd.write(data)
        wait_for(lambda: (b / "current").exists() and len(contents(b)) and
                 unstamp(contents(b), check_order=False) == data)
        wait_for(lambda: lr.read(block_of(a)).lines == 1500)
        out = exporter_once("--multilog", str(a), str(b))
        assert (out.returncode, out.stderr) == (0, b"")
        promtool_check(out.stdout)
        data_ = samples(out.stdout)
        for d, lines in ((a, 1500), (b, 2000)):
            held = contents(d)
            assert value(data_, "multilog_lines_total", directory=str(d)) == lines == held.count(b"\n")
            assert value(data_, "multilog_bytes_total", directory=str(d)) == len(held)
            assert value(data_, "multilog_rotations_total", directory=str(d)) == len(old_files(d))
            assert value(data_, "prefork_exporter_source_up", kind="multilog", path=str(d)) == 1
        assert cmd.end_input() == 0
        out = exporter_once("--multilog", str(a))  # multilog is gone, and so is its block
        assert value(samples(out.stdout), "prefork_exporter_source_up", kind="multilog", path=str(a)) == 0
        assert out.stderr.decode() == (f"prefork-exporter: warning: multilog {a}: no multilog publishes counters"
                                       " for it (script word M)\n")
    finally:
        cmd.stop(a, b)


def test_exporter_serves_a_killed_multilog_as_down(tmp_path):
    m = tmp_path / "m"
    cmd = Command(tmp_path, "M", "./m")
    try:
        cmd.write(b"x\n")
        wait_for(lambda: os.path.exists(block_of(m)) and lr.read(block_of(m)).lines == 1)
        pid = cmd.proc.pid
        cmd.proc.kill()
        cmd.proc.wait(timeout=30)
        assert os.path.exists(block_of(m))  # a killed multilog leaves it behind
        out = exporter_once("--multilog", str(m))
        data = samples(out.stdout)
        assert value(data, "prefork_exporter_source_up", kind="multilog", path=str(m)) == 0
        assert not [n for n in names(data) if n.startswith("multilog_")]
        assert out.stderr.decode() == f"prefork-exporter: warning: multilog {m}: multilog pid {pid} is not running\n"
        restarted = Command(tmp_path, "M", "./m")  # a new multilog replaces the stale block
        try:
            restarted.write(b"y\n")
            wait_for(lambda: lr.read(block_of(m)).pid == restarted.proc.pid and lr.read(block_of(m)).lines == 1)
            data = samples(exporter_once("--multilog", str(m)).stdout)
            assert value(data, "multilog_lines_total", directory=str(m)) == 1
        finally:
            restarted.stop()
    finally:
        cmd.stop(m)


def test_exporter_serves_multilog_families_over_http(tmp_path):
    import http.client
    import re

    block = lc.LogCounters.create(str(tmp_path / "block"), "/var/log/web")
    script = Path(sys.executable).parent / "prefork-exporter"
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "prefork.metrics.exporter"]
    with open(tmp_path / "err", "wb") as err:
        proc = subprocess.Popen([*argv, "--multilog", str(tmp_path / "block"), "--listen", "127.0.0.1:0"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                env={"PATH": "/usr/bin:/bin"})
    try:
        found = wait_for(lambda: re.search(rb"listening on http://127\.0\.0\.1:(\d+)/metrics",
                                           (tmp_path / "err").read_bytes()))

        def get() -> dict:
            conn = http.client.HTTPConnection("127.0.0.1", int(found[1]), timeout=10)
            try:
                conn.request("GET", "/metrics")
                body = conn.getresponse().read()
            finally:
                conn.close()
            promtool_check(body)
            return samples(body)

        assert value(get(), "multilog_lines_total", directory="/var/log/web") == 0
        block.wrote(100, 4)  # every scrape reads the block again
        assert value(get(), "multilog_lines_total", directory="/var/log/web") == 4
    finally:
        proc.kill()
        proc.wait(30)
        block.close()


def test_exporter_takes_several_multilog_paths():
    opts = exporter.parse_args(["--multilog", "a", "b", "--scoreboard", "s", "--multilog=c", "--once"])
    assert (opts.multilogs, opts.scoreboards) == (["a", "b", "c"], ["s"])
    assert exporter.parse_args(["--multilog", "a", "--once"]).multilogs == ["a"]  # enough on its own


@pytest.mark.parametrize(("argv", "message"), [
    (["--multilog", "--once"], "option requires an argument -- --multilog"),
    (["--multilog=", "--once"], "--multilog needs at least one path"),
], ids=["no-path", "empty-path"])
def test_exporter_multilog_without_a_path_is_a_usage_error(argv, message, capfd):
    with pytest.raises(SystemExit) as exc:
        exporter.main(argv)
    assert exc.value.code == 100
    assert capfd.readouterr() == ("", f"prefork-exporter: {message}\nprefork-exporter: usage: {exporter.USAGE}\n")


def test_exporter_help_names_multilog(capfd):
    with pytest.raises(SystemExit):
        exporter.main(["--help"])
    out = capfd.readouterr().out
    assert "[--multilog DIR...]" in out and "--multilog DIR..." in out


# == reader faults: each one its own test ==================================================================
def fault(path: Path | str) -> list[str]:
    """Scrape PATH as a --multilog source that must be down; the log lines."""
    log = Log()
    data = scrape(mc.SharedMemoryCollector(multilogs=[str(path)], log=log))
    assert value(data, "prefork_exporter_source_up", kind="multilog", path=str(path)) == 0
    assert value(data, "prefork_exporter_source_errors_total", kind="multilog", path=str(path)) == 1
    assert not [n for n in names(data) if n.startswith("multilog_")]
    return log


def make_block(path: Path, directory: str = "/var/log/x") -> None:
    lc.LogCounters.create(str(path), directory).close()


def patch(path: Path, offset: int, fmt: str, *values: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, *values))


def test_fault_directory_missing(tmp_path):
    assert fault(tmp_path / "nope") == [f"prefork-exporter: warning: multilog {tmp_path}/nope: file does not exist"]


def test_fault_directory_without_counters(tmp_path):
    (tmp_path / "m").mkdir()
    assert fault(tmp_path / "m") == [f"prefork-exporter: warning: multilog {tmp_path}/m: no multilog publishes"
                                     " counters for it (script word M)"]


def test_fault_block_empty(tmp_path):
    (tmp_path / "block").write_bytes(b"")
    assert fault(tmp_path / "block") == [f"prefork-exporter: warning: multilog {tmp_path}/block: {tmp_path}/block:"
                                         " truncated (0 bytes)"]


def test_fault_block_truncated(tmp_path):
    make_block(tmp_path / "block")
    os.truncate(tmp_path / "block", 1000)
    assert fault(tmp_path / "block") == [f"prefork-exporter: warning: multilog {tmp_path}/block: {tmp_path}/block:"
                                         " truncated (1000 bytes, the header says 4096)"]


def test_fault_block_of_another_layout_version(tmp_path):
    make_block(tmp_path / "block")
    patch(tmp_path / "block", 4, "<I", 2)
    assert fault(tmp_path / "block") == [f"prefork-exporter: warning: multilog {tmp_path}/block: {tmp_path}/block:"
                                         " unsupported layout version 2"]


def test_fault_block_with_a_bad_header(tmp_path):
    make_block(tmp_path / "block")
    patch(tmp_path / "block", 12, "<I", 3)
    assert fault(tmp_path / "block") == [f"prefork-exporter: warning: multilog {tmp_path}/block: {tmp_path}/block:"
                                         " bad header (size 4096, 3 counters)"]


def test_fault_a_fifo_does_not_block_the_scrape(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    assert fault(tmp_path / "fifo") == [f"prefork-exporter: warning: multilog {tmp_path}/fifo: {tmp_path}/fifo:"
                                        " not a regular file"]


def test_fault_not_a_block(tmp_path):
    (tmp_path / "block").write_bytes(b"PFSB" + bytes(5000))
    assert fault(tmp_path / "block") == [f"prefork-exporter: warning: multilog {tmp_path}/block: {tmp_path}/block:"
                                         " not a prefork multilog counter block"]


def test_fault_block_of_a_dead_multilog(tmp_path):
    make_block(tmp_path / "block")
    patch(tmp_path / "block", 16, "<I", NOT_A_PID)
    assert fault(tmp_path / "block") == [f"prefork-exporter: warning: multilog {tmp_path}/block: multilog pid"
                                         f" {NOT_A_PID} is not running"]


def test_fault_block_of_a_zombie_multilog(tmp_path):
    proc = subprocess.Popen(["/bin/true"])
    try:
        wait_for(lambda: Path(f"/proc/{proc.pid}/stat").read_text().split(") ")[1][0] == "Z", 5)
        make_block(tmp_path / "block")
        patch(tmp_path / "block", 16, "<I", proc.pid)
        assert fault(tmp_path / "block") == [f"prefork-exporter: warning: multilog {tmp_path}/block: multilog pid"
                                             f" {proc.pid} is not running"]
    finally:
        proc.wait(5)


def test_fault_block_whose_pid_was_reused(tmp_path, monkeypatch):
    make_block(tmp_path / "block")
    log = Log()
    collector = mc.SharedMemoryCollector(multilogs=[str(tmp_path / "block")], log=log)
    assert value(scrape(collector), "multilog_lines_total", directory="/var/log/x") == 0
    monkeypatch.setattr(procinfo, "start_ticks", lambda pid: 10**12)
    data = scrape(collector)
    assert value(data, "multilog_lines_total", directory="/var/log/x") is None
    assert log == [f"prefork-exporter: warning: multilog {tmp_path}/block: multilog pid {os.getpid()} is not running"
                   " (now another process)"]


def test_fault_block_given_twice_is_served_once(tmp_path):
    make_block(tmp_path / "block")
    os.symlink(tmp_path / "block", tmp_path / "link")
    log = Log()
    data = scrape(mc.SharedMemoryCollector(multilogs=[str(tmp_path / "block"), str(tmp_path / "link")], log=log))
    assert value(data, "multilog_lines_total", directory="/var/log/x") == 0
    assert value(data, "prefork_exporter_source_up", kind="multilog", path=str(tmp_path / "link")) == 0
    assert log == [f"prefork-exporter: warning: multilog {tmp_path}/link: its counters {tmp_path}/link are already"
                   f" served for {tmp_path}/block"]


def test_fault_two_blocks_claiming_one_directory(tmp_path):
    make_block(tmp_path / "one", "/var/log/x")
    make_block(tmp_path / "two", "/var/log/x")
    log = Log()
    data = scrape(mc.SharedMemoryCollector(multilogs=[str(tmp_path / "one"), str(tmp_path / "two")], log=log))
    assert value(data, "prefork_exporter_source_up", kind="multilog", path=str(tmp_path / "one")) == 1
    assert value(data, "prefork_exporter_source_up", kind="multilog", path=str(tmp_path / "two")) == 0
    assert log == [f"prefork-exporter: warning: multilog {tmp_path}/two: directory /var/log/x is already served"
                   f" from {tmp_path}/one"]


def test_fault_one_log_line_per_state_change(tmp_path):
    path = tmp_path / "block"
    log = Log()
    collector = mc.SharedMemoryCollector(multilogs=[str(path)], log=log)
    scrape(collector)
    scrape(collector)
    make_block(path)
    scrape(collector)
    data = scrape(collector)
    assert log == [f"prefork-exporter: warning: multilog {path}: file does not exist",
                   f"prefork-exporter: multilog {path}: ok"]
    assert value(data, "prefork_exporter_source_errors_total", kind="multilog", path=str(path)) == 2


def test_a_multilog_fault_serves_the_other_sources(tmp_path):
    make_block(tmp_path / "good", "/var/log/good")
    data = scrape(mc.SharedMemoryCollector(multilogs=[str(tmp_path / "bad"), str(tmp_path / "good")], log=Log()))
    assert value(data, "multilog_lines_total", directory="/var/log/good") == 0
    assert value(data, "prefork_exporter_source_up", kind="multilog", path=str(tmp_path / "bad")) == 0
