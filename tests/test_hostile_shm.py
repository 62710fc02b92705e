"""Shared-memory files are hostile data: every reader, and every command built on one, must survive garbage.

The files live in /dev/shm under predictable names, so any user can plant one while its writer is down
(or make one on purpose and point a reader at it).  Every reader -- the service table's, the scoreboard's,
multilog's counter block's -- and everything built on them (``svstat --all [--json]``,
``tcpserver-status``, the metrics collector) must then:

* raise nothing but its documented error (ServiceTableError, ScoreboardError, LogCountersError), which
  the commands turn into one line and exit 111 and the collector into ``prefork_exporter_source_up 0``;
* print only the documented shapes (svstat --all's lines, tcpserver-status's table, a text exposition
  that prometheus_client parses);
* never loop without bound and never map, copy or allocate in proportion to a size it has not checked
  (a 1 GB sparse file must not cost a reader 1 GB).

Hypothesis feeds each reader arbitrary bytes and byte flips of valid files; the runs are bounded and
derandomized so CI sees the same examples every time.  Every /dev/shm file a test makes is removed by it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import fuzz_examples, ours
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st_
from prometheus_client.parser import text_string_to_metric_families

from prefork import scoreboard as sb
from prefork import scoreboard_read as boards
from prefork import tcpserver_status
from prefork.control import servicetable as st
from prefork.control import servicetable_read as tables
from prefork.control import svstat_all
from prefork.control.log import logcounters as lc
from prefork.control.log import logcounters_read as logs
from prefork.metrics import collector as mc

SETTINGS = settings(max_examples=fuzz_examples(300), deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
GIB = 1 << 30
RSS_LIMIT_KB = 100 * 1024  # what a reader of a 1 GB sparse file may use at its peak
NOT_A_PID = 4_194_305  # above the largest pid_max Linux allows (2**22): never a running process


# -- valid files, made by the writers --------------------------------------------------------------
def _table_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        table = st.ServiceTable.create(f"{d}/t", 8, st.KIND_SVSCAN, "/service")
        now = 1_700_000_000 * 10**9
        for rec in [
            st.ServiceRecord("web", pid=os.getpid(), state=st.STATE_UP, since_ns=now, starts=3, restarts=2,
                             last_status=9, flags=st.FLAG_NORMALLY_UP),
            st.ServiceRecord("web/log", pid=os.getpid(), state=st.STATE_UP, since_ns=now, starts=1,
                             flags=st.FLAG_LOG | st.FLAG_NORMALLY_UP),
            st.ServiceRecord("db", want=b"d", since_ns=now, starts=2, restarts=1, last_status=256),
            st.ServiceRecord("cron", want=b"o", paused=True, since_ns=now, last_status=0),
        ]:
            table.publish(table.allocate(rec.name), rec)
        table.set_counters(2, 1, 40)
        table.close()
        return Path(f"{d}/t").read_bytes()


def _board_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        board = sb.ScoreboardFile(f"{d}/b", 3, 10, os.getpid(), "web")
        board.set_local("127.0.0.1", 8080)
        s0 = board.slot_offset(0)
        board.put32(s0 + sb.OFF_PID, os.getpid())
        board.put32(s0 + sb.OFF_STATE, sb.STATE_READY)
        board.put64(s0 + sb.OFF_ACCEPTED, 12)
        board.put64(s0 + sb.OFF_BUCKETS + 8, 12)
        board.put64(s0 + sb.OFF_DURATION_SUM, 10**9)
        board.put64(sb.H_RESTARTS, 1)
        data = Path(f"{d}/b").read_bytes()
        board.u32.release()
        board.u64.release()
        board.mm.close()
        os.close(board.fd)
        return data


def _block_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        block = lc.LogCounters.create(f"{d}/m", "/var/log/web")
        block.wrote(100, 4)
        block.rotated()
        block.failed()
        block.paused(5 * 10**9)
        block.close()
        return Path(f"{d}/m").read_bytes()


TABLE = _table_bytes()
BOARD = _board_bytes()
BLOCK = _block_bytes()


def flips(data: bytes, offsets: st_.SearchStrategy[int]) -> st_.SearchStrategy[bytes]:
    """DATA with a few bytes at OFFSETS XORed with random values (a length change now and then)."""
    one = st_.tuples(offsets, st_.integers(1, 255))
    resize = st_.one_of(st_.none(), st_.none(), st_.integers(0, len(data) + 4096))

    def apply(args: tuple[list[tuple[int, int]], int | None]) -> bytes:
        changes, size = args
        out = bytearray(data)
        for offset, mask in changes:
            out[offset] ^= mask
        if size is not None:
            out = out[:size] if size <= len(out) else out + bytes(size - len(out))
        return bytes(out)

    return st_.tuples(st_.lists(one, min_size=1, max_size=8), resize).map(apply)


def fields(header: int, slot_base: int = 0, slot_size: int = 0, slots: int = 0, span: int = 0,
           skip: range = range(0)) -> st_.SearchStrategy[int]:
    """Offsets of the bytes that hold fields: the first HEADER bytes, and the first SPAN bytes of each of SLOTS
    slots of SLOT_SIZE bytes from SLOT_BASE (uniform offsets would rarely land on a field)."""
    choices = [st_.integers(0, header - 1)]
    if slots:
        choices.append(st_.tuples(st_.integers(0, slots - 1), st_.integers(0, span - 1)).map(
            lambda t: slot_base + t[0] * slot_size + t[1]))
    return st_.one_of(*choices).filter(lambda off: off not in skip)


TABLE_FIELDS = fields(128, 1024, 512, 4, 90)
BOARD_FIELDS = fields(256, 256, 256, 3, 192)
BLOCK_FIELDS = fields(320)
# Flips that leave the writer's identity (owner pid and start ticks) and the sequence counters alone: a live
# table, so that svstat --all and the collector go on to use what the slots hold.
LIVE_TABLE = flips(TABLE, fields(128, 1024, 512, 4, 90, skip=range(8)).filter(
    lambda off: not (24 <= off < 28 or 40 <= off < 48 or 88 <= off < 96)))


def garbage(valid: bytes, offsets: st_.SearchStrategy[int]) -> st_.SearchStrategy[bytes]:
    """Arbitrary bytes, arbitrary bytes behind a valid magic, a valid file's head over garbage, or flips of it."""
    return st_.one_of(
        st_.binary(max_size=4096),
        st_.binary(max_size=4096).map(lambda b: valid[:4] + b),
        st_.binary(min_size=0, max_size=len(valid)).map(lambda b: b + valid[len(b):]),
        flips(valid, offsets),
        flips(valid, offsets),
    )


@pytest.fixture
def quick_torn(monkeypatch):
    """A slot left odd is an error after TORN_SECONDS: keep that short across hundreds of examples."""
    monkeypatch.setattr(tables, "TORN_SECONDS", 0.01)


@contextlib.contextmanager
def shm_default_table(data: bytes | None = None):
    """A 0755 directory in /tmp and the path of its svscan table in /dev/shm (DATA written there); both removed after."""
    d = tempfile.mkdtemp(prefix="prefork-hostile-", dir="/tmp")
    os.chmod(d, 0o755)
    path = st.default_path(d, st.KIND_SVSCAN)
    try:
        if data is not None:
            Path(path).write_bytes(data)
        yield d, path
    finally:
        for leftover in (path, st.default_path(d, st.KIND_SUPERVISE)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
        shutil.rmtree(d, ignore_errors=True)


# == the service table =================================================================================
@SETTINGS
@given(data=garbage(TABLE, TABLE_FIELDS))
def test_table_reader_raises_only_its_error(tmp_path, quick_torn, data):
    path = tmp_path / "t"
    path.write_bytes(data)
    try:
        snap = tables.read(str(path))
    except tables.ServiceTableError as e:
        assert "\n" not in str(e)
        return
    assert snap.used <= snap.capacity <= tables.MAX_CAPACITY
    assert len(snap.entries) <= snap.used
    for e in snap.entries:
        assert e.last_status == tables.NO_STATUS or 0 <= e.last_status <= 0xFFFF


SVSTAT_LINE = re.compile(
    r"[^\x00-\x1f\x7f]*: (?:up \(pid \d+\) \d+ seconds(?:, normally down)?(?:, paused)?(?:, want down)?"
    r"|down \d+ seconds(?:, normally up)?(?:, want up)?)(?: not ready| ready \d+ seconds)? restarts \d+(?: last exit (?:\d+|signal \d+|status \d+))?")


def check_svstat_all(directory: str, capfd) -> int:
    """svstat --all and --json of DIRECTORY: exit 0 with the documented lines, or 111 with one line on stderr."""
    codes = []
    for as_json in (False, True):
        code = svstat_all.main_all(directory, as_json)
        out, err = capfd.readouterr()
        codes.append(code)
        if code == 0:
            assert err == ""
            if as_json:
                doc = json.loads(out)
                assert doc["supervisor_running"] is True
                assert all(isinstance(s["pid"], int) for s in doc["services"])
            else:
                for line in out.splitlines():
                    assert SVSTAT_LINE.fullmatch(line), line
        else:
            assert code == 111, code
            assert out == ""
            assert err.startswith("svstat: fatal: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert codes[0] == codes[1]
    return codes[0]


@SETTINGS
@given(data=garbage(TABLE, TABLE_FIELDS))
def test_svstat_all_prints_only_documented_lines_or_one_error(capfd, quick_torn, data):
    with shm_default_table(data) as (d, _path):
        check_svstat_all(d, capfd)


@SETTINGS
@given(data=LIVE_TABLE)
def test_svstat_all_of_a_live_table_with_garbage_slots(capfd, quick_torn, data):
    """The writer (this process) is alive: garbage in the slots must still come out as documented lines."""
    with shm_default_table(data) as (d, _path):
        check_svstat_all(d, capfd)


@pytest.mark.parametrize("status", [2**40, -2, 2**63 - 1, -(2**63), 0x10000, 0x7F, 0x137F])
def test_svstat_all_survives_any_wait_status(capfd, status):
    table_bytes = bytearray(TABLE)
    struct.pack_into("<q", table_bytes, 1024 + 40, status)
    with shm_default_table(bytes(table_bytes)) as (d, _path):
        assert check_svstat_all(d, capfd) == 0
        done = subprocess.run([ours("svstat"), "--all", d], capture_output=True, timeout=30)
        assert (done.returncode, done.stderr) == (0, b""), done.stderr
        assert done.stdout.startswith(b"cron: down ")


def test_svstat_all_turns_control_characters_of_names_into_question_marks(capfd):
    with shm_default_table() as (d, path):
        table = st.ServiceTable.create(path, 4, st.KIND_SVSCAN, d)
        forged = "x\nweb: up (pid 1) 5 seconds restarts 0"
        table.publish(table.allocate(forged), st.ServiceRecord(forged, pid=0, since_ns=0))
        assert svstat_all.main_all(d, False) == 0
        out = capfd.readouterr().out
        assert out.count("\n") == 1 and out.startswith("x?web: up (pid 1) 5 seconds restarts 0: down ")
        table.close()


def test_table_claiming_millions_of_slots_is_refused_without_reading_them(tmp_path):
    path = tmp_path / "t"
    raw = bytearray(TABLE[:1024])
    capacity = (GIB - 1024) // 512
    struct.pack_into("<I", raw, 16, capacity)
    struct.pack_into("<I", raw, 56, capacity)  # slots used
    path.write_bytes(bytes(raw))
    os.truncate(path, GIB)
    with pytest.raises(tables.ServiceTableError, match="bad header"):
        tables.read(str(path))
    assert os.stat(path).st_blocks * 512 < (1 << 20)  # no page of the holes was touched


def test_torn_slots_cost_a_bounded_time(tmp_path, monkeypatch):
    raw = bytearray(TABLE)
    for i in range(4):
        struct.pack_into("<Q", raw, 1024 + i * 512, 7)  # every slot "being written" forever
    (tmp_path / "t").write_bytes(bytes(raw))
    monkeypatch.setattr(tables, "TORN_SECONDS", 0.05)
    with pytest.raises(tables.ServiceTableError, match="being written"):
        tables.read(str(tmp_path / "t"))


# == the scoreboard ====================================================================================
@SETTINGS
@given(data=garbage(BOARD, BOARD_FIELDS))
def test_scoreboard_reader_raises_only_its_error_and_status_prints_its_table(tmp_path, data):
    path = tmp_path / "b"
    path.write_bytes(data)
    try:
        snap = tcpserver_status.read(str(path))
    except boards.ScoreboardError as e:
        assert "\n" not in str(e)
        return
    assert len(snap.slots) <= boards.MAX_SLOTS
    for running in (True, False):
        text = tcpserver_status.format_text(str(path), snap, running, 1_700_000_000 * 10**9)
        lines = text.splitlines()
        assert text.endswith("\n") and not any(ch in line for line in lines for ch in "\r\x00\x0b\x0c\x1b")
        waiting = any(s.waiting for s in snap.slots)
        assert len(lines) == 5 + len(snap.slots) + waiting, lines
        assert lines[1].startswith("service ") and lines[2].startswith("slot ")
        assert lines[-1 - waiting].startswith("total ") and lines[-2 - waiting].startswith("orph ")
        json.dumps(tcpserver_status.as_json(str(path), snap, running))


_MEASURE = """
import os, resource, sys
report_fd = int(os.environ.pop("REPORT_FD"))
pid = os.fork()
if pid == 0:
    os.close(report_fd)
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
    os.execv(sys.argv[1], sys.argv[1:])
_pid, status, usage = os.wait4(pid, 0)
os.write(report_fd, b"%d %d" % (os.waitstatus_to_exitcode(status), usage.ru_maxrss))
"""


def rss_of(argv: list[str]) -> tuple[int, bytes, bytes, int]:
    """Run ARGV (address space capped at 2 GiB so a reader that copies 1 GB fails instead of hurting the
    machine); (exit code, stdout, stderr, peak RSS in KiB).

    The kernel carries a process's peak RSS across fork and exec, so a child of this (large) test
    process would start with our peak: ARGV is forked by a small interpreter instead, and its own
    wait4 reports ARGV's peak.
    """
    r, w = os.pipe()
    try:
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _MEASURE, *argv], stdout=out, stderr=err,
                                    stdin=subprocess.DEVNULL, pass_fds=(w,), env=dict(os.environ, REPORT_FD=str(w)))
            os.close(w)
            w = -1
            report = b""
            while chunk := os.read(r, 64):
                report += chunk
            proc.wait(120)
            out.seek(0)
            err.seek(0)
            code, rss = (int(x) for x in report.split())
            return code, out.read(), err.read(), rss
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def sparse_board(tmp_path: Path, nslots: int | None = None) -> Path:
    path = tmp_path / "board"
    raw = bytearray(BOARD)
    if nslots is not None:
        struct.pack_into("<I", raw, 16, nslots)
    path.write_bytes(bytes(raw))
    os.truncate(path, GIB)
    return path


def test_tcpserver_status_of_a_1gb_sparse_scoreboard_stays_small(tmp_path):
    path = sparse_board(tmp_path)
    code, out, err, rss = rss_of([ours("tcpserver-status"), str(path)])
    assert (code, err) == (0, b""), err[-500:]
    assert out.decode().splitlines()[1].startswith("service web, ")
    assert rss < RSS_LIMIT_KB, f"peak RSS {rss} KiB"


def test_tcpserver_status_of_a_scoreboard_claiming_millions_of_slots(tmp_path):
    path = sparse_board(tmp_path, nslots=(GIB - 256) // 256)
    code, out, err, rss = rss_of([ours("tcpserver-status"), str(path)])
    assert (code, out) == (111, b""), err[-500:]
    assert err == f"tcpserver-status: fatal: unable to read {path}: bad header ({(GIB - 256) // 256} slots," \
                  f" at most {boards.MAX_SLOTS})\n".encode()
    assert rss < RSS_LIMIT_KB, f"peak RSS {rss} KiB"


def test_exporter_of_a_1gb_sparse_scoreboard_stays_small(tmp_path):
    path = sparse_board(tmp_path)
    code, out, err, rss = rss_of([ours("prefork-exporter"), "--once", "--scoreboard", str(path)])
    assert (code, err) == (0, b""), err[-500:]
    assert b'tcpserver_workers{service="web"} 3.0' in out
    assert rss < RSS_LIMIT_KB, f"peak RSS {rss} KiB"


def test_exporter_of_a_1gb_table_claiming_millions_of_slots_stays_small(tmp_path):
    path = tmp_path / "t"
    raw = bytearray(TABLE[:1024])
    capacity = (GIB - 1024) // 512
    struct.pack_into("<I", raw, 16, capacity)
    struct.pack_into("<I", raw, 56, capacity)
    path.write_bytes(bytes(raw))
    os.truncate(path, GIB)
    code, out, err, rss = rss_of([ours("prefork-exporter"), "--once", "--services", str(path)])
    assert code == 0, err[-500:]
    assert f'prefork_exporter_source_up{{kind="services",path="{path}"}} 0.0'.encode() in out
    assert b"bad header" in err
    assert rss < RSS_LIMIT_KB, f"peak RSS {rss} KiB"


def test_1gb_sparse_counter_block_stays_small(tmp_path):
    path = tmp_path / "m"
    path.write_bytes(BLOCK)
    os.truncate(path, GIB)
    snap = logs.read(str(path))
    assert (snap.lines, snap.bytes, snap.directory) == (4, 100, "/var/log/web")
    raw = bytearray(BLOCK)
    struct.pack_into("<I", raw, 8, GIB)  # a stated size beyond any version's
    path.write_bytes(bytes(raw))
    os.truncate(path, GIB)
    with pytest.raises(logs.LogCountersError, match="bad header"):
        logs.read(str(path))


# == multilog's counter block ==========================================================================
@SETTINGS
@given(data=garbage(BLOCK, BLOCK_FIELDS))
def test_counter_block_reader_raises_only_its_error(tmp_path, data):
    path = tmp_path / "m"
    path.write_bytes(data)
    try:
        snap = logs.read(str(path))
    except logs.LogCountersError as e:
        assert "\n" not in str(e)
        return
    assert all(isinstance(v, int) and v >= 0 for v in snap.counters.values())


# == the collector =====================================================================================
def parse_exposition(data: bytes) -> dict[tuple[str, frozenset], float]:
    out = {}
    for family in text_string_to_metric_families(data.decode("utf-8")):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


@SETTINGS
@given(board=garbage(BOARD, BOARD_FIELDS), table=garbage(TABLE, TABLE_FIELDS), block=garbage(BLOCK, BLOCK_FIELDS))
def test_collector_serves_a_parseable_exposition_whatever_the_files_hold(tmp_path, quick_torn, board, table, block):
    (tmp_path / "b").write_bytes(board)
    (tmp_path / "t").write_bytes(table)
    (tmp_path / "m").write_bytes(block)
    log: list[str] = []
    collector = mc.SharedMemoryCollector([str(tmp_path / "b")], [str(tmp_path / "t")], log=log.append,
                                         multilogs=[str(tmp_path / "m")])
    data = parse_exposition(collector.render())
    for kind, name in (("scoreboard", "b"), ("services", "t"), ("multilog", "m")):
        up = data[("prefork_exporter_source_up", frozenset({"kind": kind, "path": str(tmp_path / name)}.items()))]
        assert up in (0, 1)
    assert not [line for line in log if "unexpected error" in line], log
    assert all("\n" not in line for line in log)


@SETTINGS
@given(table=LIVE_TABLE)
def test_collector_of_a_live_table_with_garbage_slots(tmp_path, quick_torn, table):
    (tmp_path / "t").write_bytes(table)
    log: list[str] = []
    data = parse_exposition(mc.SharedMemoryCollector([], [str(tmp_path / "t")], log=log.append).render())
    assert ("prefork_exporter_source_up", frozenset({"kind": "services", "path": str(tmp_path / "t")}.items())) in data
    assert not [line for line in log if "unexpected error" in line], log


@pytest.mark.parametrize("status", [2**40, -2, 2**63 - 1, -(2**63), 0x10000])
def test_exporter_survives_any_wait_status(tmp_path, status):
    raw = bytearray(TABLE)
    struct.pack_into("<q", raw, 1024 + 40, status)
    (tmp_path / "t").write_bytes(bytes(raw))
    done = subprocess.run([ours("prefork-exporter"), "--once", "--services", str(tmp_path / "t")],
                          capture_output=True, timeout=60)
    assert (done.returncode, done.stderr) == (0, b""), done.stderr[-2000:]
    data = parse_exposition(done.stdout)
    labels = frozenset({"directory": "/service", "service": "web"}.items())
    assert data[("supervise_up", labels)] == 1
    assert ("supervise_last_exit_status", labels) not in data  # not a wait status: no last exit
    assert data[("prefork_exporter_source_up", frozenset({"kind": "services", "path": str(tmp_path / "t")}.items()))] == 1


def test_exit_status_of_any_integer():
    assert mc.exit_status(9) == (137, 9)
    assert mc.exit_status(256) == (1, 0)
    for raw in (2**40, -2, 2**63 - 1, 0x10000):
        assert mc.exit_status(raw) is None
    assert svstat_all.exit_text(2**40) is None and svstat_all.exit_text(0x137F) == "status 4991"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the planted block another owner")
def test_a_block_planted_by_another_user_for_a_log_services_pid_is_not_served(tmp_path):
    table = st.ServiceTable.create(str(tmp_path / "t"), 4, st.KIND_SVSCAN, "/service")
    table.publish(table.allocate("web/log"), st.ServiceRecord("web/log", pid=os.getpid(), state=st.STATE_UP,
                                                             flags=st.FLAG_LOG))
    (tmp_path / "main").mkdir()
    block = lc.LogCounters.create(logs.path_for(str(tmp_path / "main")), "/var/log/forged")
    try:
        block.wrote(10, 1)
        os.chown(block.path, 65534, 65534)  # planted by nobody, naming the log service's pid
        text = mc.SharedMemoryCollector([], [str(tmp_path / "t")]).render().decode()
        assert "/var/log/forged" not in text
        os.chown(block.path, 0, 0)  # written by the log service's user: served
        text = mc.SharedMemoryCollector([], [str(tmp_path / "t")]).render().decode()
        assert 'multilog_lines_total{directory="/var/log/forged"} 1.0' in text
    finally:
        block.close(unlink=True)
        table.close()


# -- a file its owner truncates under the reader -------------------------------------------------------------------
_TRUNCATE_UNDER_READER = """
import mmap, os, sys
from prefork import shmfile
path = sys.argv[1]
view, size = shmfile.map_regular(path, 64, 1 << 20)
print(type(view).__name__, flush=True)
os.truncate(path, 0)  # what the file's owner can do at any moment
total = sum(view[i] for i in range(0, len(view), 4096))
view.close()
print(total, flush=True)
"""


@pytest.mark.parametrize("owner", ["nobody", "root"])
def test_reader_survives_the_owner_truncating_the_file(tmp_path, owner):
    """A mapping of a file another user owns dies of SIGBUS once the owner truncates it: such a file is
    read as a copy; a file of root's or our own (its writer is trusted) is still mapped."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make a file of nobody's")
    path = tmp_path / "block"
    path.write_bytes(b"\1" * (64 * 1024))
    if owner == "nobody":
        os.chown(path, 65534, 65534)
    proc = subprocess.run([sys.executable, "-c", _TRUNCATE_UNDER_READER, str(path)], capture_output=True,
                          timeout=30, cwd=str(Path(__file__).resolve().parent.parent))
    if owner == "nobody":
        assert (proc.returncode, proc.stdout) == (0, b"_Copy\n16\n"), proc
    else:
        assert proc.stdout.startswith(b"mmap\n") and proc.returncode == -7, proc  # SIGBUS: why others' files are copied
