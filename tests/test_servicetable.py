"""The supervisor's service table: writer -> reader (a reader that is not the writer), and `svstat --all`."""

from __future__ import annotations

import json
import mmap
import os
import re
import select
import struct
import subprocess
import sys
import tempfile
import time

import pytest

from prefork.control import servicetable as st
from prefork.control import servicetable_read as reader
from prefork.control import svstat_all

NOW_NS = 1_700_000_000_123_456_789


def make(tmp_path, capacity: int = 8, kind: int = st.KIND_SVSCAN, directory: str = "/service") -> st.ServiceTable:
    return st.ServiceTable.create(str(tmp_path / "table"), capacity, kind, directory)


def entry(**fields) -> reader.Entry:
    base = dict(slot=0, name="web", pid=0, want=b"u", paused=False, state=0, since_ns=NOW_NS, starts=0,
                restarts=0, last_status=-1, flags=st.FLAG_NORMALLY_UP, ready_ns=0, backoff_ms=0,
                finish_failures=0, kill_escalations=0)
    base.update(fields)
    return reader.Entry(**base)


@pytest.fixture
def shm_tables():
    """Tables made at their real /dev/shm paths; every one is unlinked afterwards."""
    made: list[st.ServiceTable] = []
    yield made
    for table in made:
        table.close(unlink=True)
        for leftover in (table.path, f"{table.path}.new.{os.getpid()}"):
            if os.path.exists(leftover):
                os.unlink(leftover)


# -- layout ----------------------------------------------------------------------------------------
def test_header_bytes_follow_the_documented_layout(tmp_path):
    table = make(tmp_path, capacity=5, kind=st.KIND_SUPERVISE, directory="/srv/x")
    table.set_counters(3, 1, 7)
    table.close()
    raw = (tmp_path / "table").read_bytes()
    assert len(raw) == 1024 + 5 * 512
    assert raw[0:4] == b"PFST"
    assert struct.unpack_from("<7I", raw, 4) == (1, 1024, 512, 5, 2, os.getpid(), len("/srv/x"))
    assert abs(struct.unpack_from("<Q", raw, 32)[0] - time.time_ns()) < 60 * 10**9
    seq, generation, used = struct.unpack_from("<QQI", raw, 40)
    assert seq % 2 == 0 and seq > 0 and (generation, used) == (0, 0)
    assert struct.unpack_from("<QQQ", raw, 64) == (3, 1, 7)
    assert raw[128:134] == b"/srv/x" and raw[134:1024] == bytes(890)


def test_slot_bytes_follow_the_documented_layout(tmp_path):
    table = make(tmp_path)
    table.allocate("a")
    index = table.allocate("web/log")
    table.publish(index, st.ServiceRecord("web/log", pid=4242, want=b"d", paused=True, state=st.STATE_STOPPING,
                                          since_ns=NOW_NS, starts=5, restarts=4, last_status=9, flags=17))
    table.close()
    raw = (tmp_path / "table").read_bytes()
    slot = raw[1024 + 512:1024 + 1024]
    seq, pid, flags, since, starts, restarts, last = struct.unpack_from("<QIIQQQq", slot, 0)
    assert seq % 2 == 0 and seq >= 4
    assert (pid, flags, since, starts, restarts, last) == (4242, 17, NOW_NS, 5, 4, 9)
    assert slot[48:52] == bytes([1, 2]) + b"d" + bytes([1])
    assert struct.unpack_from("<H", slot, 52)[0] == 7
    assert slot[64:71] == b"web/log" and slot[71:] == bytes(512 - 71)
    assert struct.unpack_from("<QI", raw, 48) == (2, 2)  # generation, slots used


# -- writer -> reader -------------------------------------------------------------------------------
def test_round_trip_of_every_field(tmp_path):
    table = make(tmp_path, directory="/service")
    records = [
        st.ServiceRecord("web", pid=1234, want=st.WANT_UP, paused=False, state=st.STATE_UP, since_ns=NOW_NS,
                         starts=3, restarts=2, last_status=256, flags=st.FLAG_NORMALLY_UP),
        st.ServiceRecord("web/log", pid=0, want=st.WANT_DOWN, paused=False, state=st.STATE_DOWN,
                         since_ns=NOW_NS + 1, starts=1, restarts=0, last_status=st.NO_STATUS, flags=st.FLAG_LOG),
        st.ServiceRecord("db", pid=2**32 - 1, want=st.WANT_ONCE, paused=True, state=st.STATE_STOPPING,
                         since_ns=2**64 - 1, starts=2**64 - 1, restarts=2**63, last_status=15,
                         flags=st.FLAG_EXIT_REQUESTED | st.FLAG_ADOPTED | st.FLAG_INACTIVE | st.FLAG_FINISHING
                         | st.FLAG_NOTIFYING | st.FLAG_FAILED, ready_ns=2**64 - 1, backoff_ms=2**32 - 1,
                         finish_failures=2**32 - 1, kill_escalations=7),
        st.ServiceRecord("caf\u00e9-\udcff", pid=7, ready_ns=NOW_NS),  # non-UTF-8 file names survive (surrogateescape)
    ]
    for rec in records:
        table.publish(table.allocate(rec.name), rec)
    table.set_counters(services=2, scan_errors=5, scans=99)
    snap = reader.read(table.path)
    assert (snap.version, snap.capacity, snap.kind, snap.kind_name, snap.owner_pid) == (
        1, 8, st.KIND_SVSCAN, "svscan", os.getpid())
    assert (snap.directory, snap.directory_truncated, snap.used, snap.generation) == ("/service", False, 4, 4)
    assert (snap.services, snap.scan_errors, snap.scans) == (2, 5, 99)
    assert [e.slot for e in snap.entries] == [0, 1, 2, 3]
    for got, rec in zip(snap.entries, records, strict=True):
        assert (got.name, got.pid, got.want, got.paused, got.state, got.since_ns, got.starts, got.restarts,
                got.last_status, got.flags, got.ready_ns, got.backoff_ms, got.finish_failures, got.kill_escalations) == (
            rec.name, rec.pid, rec.want, rec.paused, rec.state, rec.since_ns, rec.starts, rec.restarts,
            rec.last_status, rec.flags, rec.ready_ns, rec.backoff_ms, rec.finish_failures, rec.kill_escalations)
    table.close()


def test_allocate_shows_the_service_down_at_once(tmp_path):
    table = make(tmp_path)
    before = time.time_ns()
    table.allocate("new")
    (e,) = reader.read(table.path).entries
    assert (e.name, e.pid, e.want, e.state, e.starts, e.restarts, e.last_status) == ("new", 0, b"u", 0, 0, 0, -1)
    assert before <= e.since_ns <= time.time_ns()
    table.close()


def test_names_longer_than_259_bytes_are_truncated(tmp_path):
    table = make(tmp_path)
    longest = "n" * 255 + "/log"
    table.publish(table.allocate(longest), st.ServiceRecord(longest))
    table.publish(table.allocate("x" * 400), st.ServiceRecord("\u00e9" * 200))  # 400 bytes of UTF-8
    a, b = reader.read(table.path).entries
    assert a.name == longest
    assert b.name.encode("utf-8", "surrogateescape") == ("\u00e9" * 200).encode()[:259]
    table.close()


def test_long_directory_is_truncated_and_flagged(tmp_path):
    directory = "/" + "d" * 1000
    table = make(tmp_path, directory=directory)
    snap = reader.read(table.path)
    assert snap.directory == directory[:896] and snap.directory_truncated
    table.close()


def test_relative_directory_is_stored_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    table = make(tmp_path, directory="svc")
    assert reader.read(table.path).directory == str(tmp_path / "svc")
    table.close()


def test_table_full(tmp_path):
    table = make(tmp_path, capacity=3)
    assert [table.allocate(n) for n in "abc"] == [0, 1, 2]
    with pytest.raises(st.TableFull):
        table.allocate("d")
    table.release(1)
    assert table.allocate("d") == 1
    with pytest.raises(st.TableFull):
        table.allocate("e")
    table.close()


def test_capacity_of_2000_slots(tmp_path):
    table = make(tmp_path, capacity=2000)
    indexes = [table.allocate(f"s{i}") for i in range(2000)]
    assert indexes == list(range(2000))
    with pytest.raises(st.TableFull):
        table.allocate("one too many")
    snap = reader.read(table.path)
    assert len(snap.entries) == 2000 and snap.entries[-1].name == "s1999"
    table.close()


@pytest.mark.parametrize("capacity", [0, -1, st.MAX_CAPACITY + 1])
def test_bad_capacity_is_refused(tmp_path, capacity):
    with pytest.raises(ValueError):
        make(tmp_path, capacity=capacity)
    assert not (tmp_path / "table").exists() and os.listdir(tmp_path) == []


def test_bad_kind_is_refused(tmp_path):
    with pytest.raises(ValueError):
        make(tmp_path, kind=3)
    assert os.listdir(tmp_path) == []


def test_release_hides_the_slot_and_reuses_the_lowest(tmp_path):
    table = make(tmp_path)
    for name in "abcd":
        table.allocate(name)
    table.release(2)
    table.release(0)
    snap = reader.read(table.path)
    assert [(e.slot, e.name) for e in snap.entries] == [(1, "b"), (3, "d")]
    assert (snap.used, snap.generation) == (4, 6)
    assert table.allocate("e") == 0 and table.allocate("f") == 2 and table.allocate("g") == 4
    assert [e.name for e in reader.read(table.path).entries] == ["e", "b", "f", "d", "g"]
    table.close()


def test_publish_or_release_of_a_free_slot_is_refused(tmp_path):
    table = make(tmp_path, capacity=2)
    index = table.allocate("a")
    table.release(index)
    with pytest.raises(ValueError):
        table.publish(index, st.ServiceRecord("a"))
    with pytest.raises(ValueError):
        table.release(index)
    with pytest.raises(ValueError):
        table.publish(-1, st.ServiceRecord("a"))
    assert reader.read(table.path).entries == []
    table.close()


@pytest.mark.parametrize("umask", [0o077, 0o000, 0o022])
def test_mode_is_0600_whatever_the_umask(tmp_path, umask):
    """Service names, their pids and the directory are what daemontools keeps in 0700 supervise/ dirs."""
    old = os.umask(umask)
    try:
        table = make(tmp_path)
    finally:
        os.umask(old)
    assert os.stat(table.path).st_mode & 0o777 == 0o600
    table.close()


def test_a_group_may_be_given_read_access(tmp_path):
    gid = next(g for g in sorted({os.getgid(), *os.getgroups()}) if g != 0) if os.getuid() else 65534
    table = st.ServiceTable.create(str(tmp_path / "table"), 4, st.KIND_SVSCAN, "/service", mode=0o640, group=gid)
    info = os.stat(table.path)
    assert (info.st_mode & 0o777, info.st_gid) == (0o640, gid)
    table.close()


def test_a_world_writable_mode_is_refused(tmp_path):
    for mode in (0o666, 0o620, 0o602):
        with pytest.raises(ValueError):
            st.ServiceTable.create(str(tmp_path / "table"), 4, st.KIND_SVSCAN, "/service", mode=mode)
    assert os.listdir(tmp_path) == []


def test_header_records_the_owners_start_ticks(tmp_path):
    table = make(tmp_path)
    with open(f"/proc/{os.getpid()}/stat", "rb") as f:
        ticks = int(f.read().rsplit(b")", 1)[1].split()[19])
    raw = (tmp_path / "table").read_bytes()
    assert struct.unpack_from("<Q", raw, 88)[0] == ticks
    snap = reader.read(table.path)
    assert (snap.owner_pid, snap.owner_ticks) == (os.getpid(), ticks)
    assert reader.owner_running(snap)
    # The same pid with another recorded start time is a reused pid: the table's writer is gone.
    raw = bytearray(raw)
    struct.pack_into("<Q", raw, 88, ticks + 1)
    (tmp_path / "forged").write_bytes(raw)
    assert not reader.owner_running(reader.read(str(tmp_path / "forged")))
    table.close()


def test_close_unlinks_only_on_request(tmp_path):
    table = make(tmp_path)
    table.close()
    assert (tmp_path / "table").exists()
    table = make(tmp_path)
    table.close(unlink=True)
    table.close(unlink=True)  # twice is harmless
    assert os.listdir(tmp_path) == []


# -- recreate by rename ------------------------------------------------------------------------------
def test_recreate_renames_over_and_old_readers_keep_their_view(tmp_path):
    old = make(tmp_path, directory="/old")
    old.publish(old.allocate("a"), st.ServiceRecord("a", pid=11))
    held = os.open(old.path, os.O_RDONLY)  # a reader that has the old file open (or mapped)
    try:
        new = make(tmp_path, directory="/new")
        new.publish(new.allocate("b"), st.ServiceRecord("b", pid=22))
        old.publish(0, st.ServiceRecord("a", pid=12))  # the old writer goes on in its own file
        assert sorted(os.listdir(tmp_path)) == ["table"]  # no temporary name left behind
        cur = reader.read(str(tmp_path / "table"))
        assert (cur.directory, [(e.name, e.pid) for e in cur.entries]) == ("/new", [("b", 22)])
        stale = reader.read(f"/proc/self/fd/{held}")
        assert (stale.directory, [(e.name, e.pid) for e in stale.entries]) == ("/old", [("a", 12)])
        old.close(unlink=True)  # must not remove the newer table that replaced it
        assert reader.read(new.path).directory == "/new"
        new.close(unlink=True)
        assert os.listdir(tmp_path) == []
    finally:
        os.close(held)


# -- pages --------------------------------------------------------------------------------------------
def test_pages_of_unused_slots_are_never_touched():
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    workdir = tempfile.mkdtemp(prefix="prefork-test-", dir="/dev/shm")
    path = os.path.join(workdir, "table")
    try:
        table = st.ServiceTable.create(path, 2000, st.KIND_SVSCAN, "/service")
        assert os.stat(path).st_size == 1024 + 2000 * 512
        for i in range(10):
            table.publish(table.allocate(f"s{i}"), st.ServiceRecord(f"s{i}", pid=100 + i, state=st.STATE_UP))
        table.set_counters(10, 0, 1)
        in_use = 1024 + 10 * 512
        pages = -(-in_use // mmap.PAGESIZE)
        allocated = os.stat(path).st_blocks * 512
        assert allocated <= pages * mmap.PAGESIZE, (allocated, pages)
        snap = reader.read(path)  # the reader must not fault in the holes either
        assert len(snap.entries) == 10
        assert os.stat(path).st_blocks * 512 == allocated
        table.close()
    finally:
        for name in os.listdir(workdir):
            os.unlink(os.path.join(workdir, name))
        os.rmdir(workdir)


# -- concurrency --------------------------------------------------------------------------------------
WRITER = r"""
import sys, time
from prefork.control.servicetable import KIND_SVSCAN, ServiceRecord, ServiceTable

def record(k):
    return ServiceRecord("n" + str(k) * (1 + k % 7), pid=k & 0x7FFFFFFF, want=b"udo"[k % 3:k % 3 + 1],
                         paused=bool(k & 1), state=k % 3, since_ns=k * 1000003, starts=k, restarts=k // 2,
                         last_status=k % 65536, flags=k % 32)

table = ServiceTable.create(sys.argv[1], 8, KIND_SVSCAN, "/")
slots = [table.allocate("x") for _ in range(4)]
k = 0
for s in slots:
    k += 1
    table.publish(s, record(k))
print("ready", flush=True)
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    for _ in range(1000):
        for s in slots:
            k += 1
            table.publish(s, record(k))
            table.set_counters(k, k, k)
"""


def consistent(e: reader.Entry) -> bool:
    k = e.starts
    return (e.name, e.pid, e.want, e.paused, e.state, e.since_ns, e.restarts, e.last_status, e.flags) == (
        "n" + str(k) * (1 + k % 7), k & 0x7FFFFFFF, b"udo"[k % 3:k % 3 + 1], bool(k & 1), k % 3, k * 1000003,
        k // 2, k % 65536, k % 32)


def test_reader_in_another_process_never_sees_a_torn_record(tmp_path):
    path = str(tmp_path / "table")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, path], stdout=subprocess.PIPE)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready and proc.stdout.readline() == b"ready\n"
        seen: set[int] = set()
        reads = 0
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline and reads < 200_000:
            snap = reader.read(path)
            reads += 1
            assert len(snap.entries) == 4
            for e in snap.entries:
                assert consistent(e), e
                seen.add(e.starts)
            assert snap.services == snap.scan_errors == snap.scans
        assert proc.poll() is None
        assert len(seen) > 100  # the writer really was publishing while we read
    finally:
        proc.kill()
        proc.wait()


def test_a_slot_that_never_settles_is_an_error_not_a_torn_record(tmp_path, monkeypatch):
    table = make(tmp_path)
    table.allocate("a")
    table._mm[1024:1032] = struct.pack("<Q", 7)  # a writer that died between its first and last store
    monkeypatch.setattr(reader, "TORN_SECONDS", 0.05)
    start = time.monotonic()
    with pytest.raises(reader.ServiceTableError, match="slot 0 is being written"):
        reader.read(table.path)
    assert time.monotonic() - start < 5
    table.close()


# -- reader errors --------------------------------------------------------------------------------------
def written(tmp_path) -> bytes:
    table = make(tmp_path, capacity=4)
    table.allocate("a")
    table.close()
    return (tmp_path / "table").read_bytes()


def test_reader_missing_file(tmp_path):
    path = str(tmp_path / "nothing")
    with pytest.raises(reader.ServiceTableError, match=f"^{path}: file does not exist$"):
        reader.read(path)


def test_reader_wrong_magic(tmp_path):
    raw = written(tmp_path)
    (tmp_path / "table").write_bytes(b"PFSB" + raw[4:])
    with pytest.raises(reader.ServiceTableError, match="table: not a prefork service table$"):
        reader.read(str(tmp_path / "table"))


def test_reader_unknown_version(tmp_path):
    raw = written(tmp_path)
    (tmp_path / "table").write_bytes(raw[:4] + struct.pack("<I", 2) + raw[8:])
    with pytest.raises(reader.ServiceTableError, match="table: unsupported layout version 2$"):
        reader.read(str(tmp_path / "table"))


def test_reader_bad_sizes(tmp_path):
    raw = written(tmp_path)
    (tmp_path / "table").write_bytes(raw[:12] + struct.pack("<I", 64) + raw[16:])
    with pytest.raises(reader.ServiceTableError, match=r"bad header \(header size 1024, slot size 64\)$"):
        reader.read(str(tmp_path / "table"))


def test_reader_truncated_slots(tmp_path):
    raw = written(tmp_path)
    (tmp_path / "table").write_bytes(raw[:2000])
    with pytest.raises(reader.ServiceTableError, match=r"table: truncated \(2000 bytes, the header says 3072\)$"):
        reader.read(str(tmp_path / "table"))


def test_reader_truncated_header(tmp_path):
    raw = written(tmp_path)
    (tmp_path / "table").write_bytes(raw[:20])
    with pytest.raises(reader.ServiceTableError, match=r"table: truncated \(20 bytes\)$"):
        reader.read(str(tmp_path / "table"))


def test_reader_empty_file(tmp_path):
    (tmp_path / "table").write_bytes(b"")
    with pytest.raises(reader.ServiceTableError, match=r"table: truncated \(0 bytes\)$"):
        reader.read(str(tmp_path / "table"))


def test_reader_directory_instead_of_file(tmp_path):
    with pytest.raises(reader.ServiceTableError):
        reader.read(str(tmp_path))


# -- where the table lives ------------------------------------------------------------------------------
def test_default_path_is_keyed_by_device_and_inode(tmp_path):
    s = os.stat(tmp_path)
    base = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    assert st.default_path(str(tmp_path), st.KIND_SVSCAN) == f"{base}/prefork-svscan.{s.st_dev}.{s.st_ino}"
    assert st.default_path(str(tmp_path), st.KIND_SUPERVISE) == f"{base}/prefork-supervise.{s.st_dev}.{s.st_ino}"
    os.symlink(tmp_path, tmp_path.parent / f"{tmp_path.name}-link")
    try:  # the same directory through a symlink has the same table
        link = str(tmp_path.parent / f"{tmp_path.name}-link")
        assert st.default_path(link, st.KIND_SVSCAN) == st.default_path(str(tmp_path), st.KIND_SVSCAN)
    finally:
        os.unlink(tmp_path.parent / f"{tmp_path.name}-link")


def test_default_path_of_a_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        st.default_path(str(tmp_path / "nope"), st.KIND_SVSCAN)


def test_find_prefers_svscan_then_supervise(tmp_path, shm_tables):
    d = str(tmp_path)
    with pytest.raises(reader.ServiceTableError, match="no prefork svscan or supervise has a table for it"):
        reader.find(d)
    shm_tables.append(st.ServiceTable.create(st.default_path(d, st.KIND_SUPERVISE), 1, st.KIND_SUPERVISE, d))
    assert reader.find(d) == st.default_path(d, st.KIND_SUPERVISE)
    shm_tables.append(st.ServiceTable.create(st.default_path(d, st.KIND_SVSCAN), 4, st.KIND_SVSCAN, d))
    assert reader.find(d) == st.default_path(d, st.KIND_SVSCAN)
    assert reader.paths(d) == [st.default_path(d, st.KIND_SVSCAN), st.default_path(d, st.KIND_SUPERVISE)]


def test_find_of_a_missing_directory(tmp_path):
    with pytest.raises(reader.ServiceTableError, match="^file does not exist$"):
        reader.find(str(tmp_path / "nope"))


# -- svstat --all ---------------------------------------------------------------------------------------
NOW = NOW_NS // 10**9 + 7.9  # 7 whole seconds after since (svstat compares whole seconds)


@pytest.mark.parametrize(
    "fields, line",
    [
        (dict(pid=12, state=1), "web: up (pid 12) 7 seconds restarts 0"),
        (dict(pid=12, state=1, flags=0, paused=True, want=b"d", restarts=3, last_status=0),
         "web: up (pid 12) 7 seconds, normally down, paused, want down restarts 3 last exit 0"),
        (dict(pid=12, state=2, want=b"d", last_status=1 << 8), "web: up (pid 12) 7 seconds, want down restarts 0 last exit 1"),
        (dict(pid=12, want=b"o", flags=st.FLAG_NORMALLY_UP | st.FLAG_LOG), "web: up (pid 12) 7 seconds restarts 0"),
        (dict(want=b"d", last_status=9), "web: down 7 seconds, normally up restarts 0 last exit signal 9"),
        (dict(want=b"u", flags=0, last_status=111 << 8), "web: down 7 seconds, want up restarts 0 last exit 111"),
        (dict(want=b"u"), "web: down 7 seconds, normally up, want up restarts 0"),
        (dict(want=b"o", flags=0, paused=True), "web: down 7 seconds restarts 0"),
        (dict(since_ns=NOW_NS + 3600 * 10**9), "web: down 0 seconds, normally up, want up restarts 0"),
        (dict(name="web/log", pid=3, restarts=12, last_status=15),
         "web/log: up (pid 3) 7 seconds restarts 12 last exit signal 15"),
        # s6's readiness: only for a running service with a notification-fd
        (dict(pid=12, flags=st.FLAG_NORMALLY_UP | st.FLAG_NOTIFYING), "web: up (pid 12) 7 seconds not ready restarts 0"),
        (dict(pid=12, flags=st.FLAG_NOTIFYING, ready_ns=NOW_NS + 5 * 10**9),
         "web: up (pid 12) 7 seconds, normally down ready 2 seconds restarts 0"),
        (dict(flags=st.FLAG_NORMALLY_UP | st.FLAG_NOTIFYING, ready_ns=NOW_NS),
         "web: down 7 seconds, normally up, want up restarts 0"),
        # the restart policy: waiting out a back-off, then given up on (docs/CONTRACTS.md, Restart policy)
        (dict(backoff_ms=4000, restarts=3), "web: down 7 seconds, normally up, want up backoff 4 seconds restarts 3"),
        (dict(pid=12, backoff_ms=4000), "web: up (pid 12) 7 seconds restarts 0"),
        (dict(want=b"d", flags=st.FLAG_NORMALLY_UP | st.FLAG_FAILED, backoff_ms=8000, last_status=1 << 8),
         "web: down 7 seconds, normally up failed restarts 0 last exit 1"),
    ],
)
def test_format_line(fields, line):
    assert svstat_all.format_line(entry(**fields), NOW) == line


def seconds(text: str) -> str:
    """The output with every age set to 0 (the clock may tick between writing and reading)."""
    return re.sub(r"\b\d+ seconds", "0 seconds", text)


def svscan_table(tmp_path, shm_tables) -> st.ServiceTable:
    d = str(tmp_path)
    table = st.ServiceTable.create(st.default_path(d, st.KIND_SVSCAN), 16, st.KIND_SVSCAN, d)
    shm_tables.append(table)
    now = time.time_ns()
    for rec in [
        st.ServiceRecord("web/log", pid=301, state=st.STATE_UP, since_ns=now, starts=1,
                         flags=st.FLAG_LOG | 2 | st.FLAG_NOTIFYING),
        st.ServiceRecord("db", pid=0, want=b"d", since_ns=now, starts=2, restarts=1, last_status=0, flags=2),
        st.ServiceRecord("web", pid=300, state=st.STATE_UP, since_ns=now, starts=4, restarts=3, last_status=9,
                         flags=2 | st.FLAG_NOTIFYING, ready_ns=now),
        st.ServiceRecord("web-admin", pid=0, want=b"o", since_ns=now, last_status=256),
        st.ServiceRecord("db/log", pid=201, want=b"u", state=st.STATE_STOPPING, paused=True, since_ns=now,
                         flags=st.FLAG_LOG | 2),
    ]:
        table.publish(table.allocate(rec.name), rec)
    table.set_counters(3, 1, 42)
    return table


def test_main_all_text(tmp_path, shm_tables, capsys):
    svscan_table(tmp_path, shm_tables)
    assert svstat_all.main_all(str(tmp_path), False) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert seconds(out) == (
        "db: down 0 seconds, normally up restarts 1 last exit 0\n"
        "db/log: up (pid 201) 0 seconds, paused restarts 0\n"
        "web: up (pid 300) 0 seconds ready 0 seconds restarts 3 last exit signal 9\n"
        "web/log: up (pid 301) 0 seconds not ready restarts 0\n"
        "web-admin: down 0 seconds restarts 0 last exit 1\n"
    )


def test_main_all_json(tmp_path, shm_tables, capsys):
    table = svscan_table(tmp_path, shm_tables)
    assert svstat_all.main_all(str(tmp_path), True) == 0
    out, err = capsys.readouterr()
    assert err == "" and out.endswith("}\n") and out.count("\n") == 1
    doc = json.loads(out)
    assert doc["directory"] == str(tmp_path) and doc["supervisor_pid"] == os.getpid()
    assert doc["supervisor_running"] is True and doc["kind"] == "svscan" and doc["table"] == table.path
    assert doc["counters"] == {"services": 3, "scan_errors": 1, "scans": 42}
    assert [s["name"] for s in doc["services"]] == ["db", "db/log", "web", "web/log", "web-admin"]
    assert [(s["ready"], s["ready_since"] is not None, "notifying" in s["flag_names"]) for s in doc["services"]] == [
        (False, False, False), (False, False, False), (True, True, True), (False, False, True), (False, False, False)]
    assert abs(doc["services"][2]["ready_since"] - doc["services"][2]["since"]) < 1e-6
    db_log = doc["services"][1]
    assert 0 <= db_log.pop("seconds") < 60 and abs(db_log.pop("since") - time.time()) < 60
    assert db_log == {"name": "db/log", "slot": 4, "pid": 201, "state": "stopping", "want": "up", "paused": True,
                      "starts": 0, "restarts": 0, "last_status": None, "last_exit": None, "failed": False,
                      "backoff_seconds": 0.0, "ready": False, "ready_since": None, "flags": 3,
                      "flag_names": ["log", "normally_up"]}
    web = doc["services"][2]
    assert (web["want"], web["state"], web["last_status"], web["last_exit"], web["starts"]) == (
        "up", "up", 9, "signal 9", 4)
    assert (doc["services"][0]["want"], doc["services"][4]["want"]) == ("down", "once")


def test_main_all_without_a_table(tmp_path, capfd):
    assert svstat_all.main_all(str(tmp_path), False) == 111
    out, err = capfd.readouterr()
    assert out == ""
    assert err == f"svstat: fatal: unable to read service table for {tmp_path}: no prefork svscan or supervise has a table for it\n"


def test_main_all_of_a_missing_directory(tmp_path, capfd):
    assert svstat_all.main_all(str(tmp_path / "nope"), True) == 111
    out, err = capfd.readouterr()
    assert out == "" and err == f"svstat: fatal: unable to read service table for {tmp_path}/nope: file does not exist\n"


def test_main_all_of_a_bad_table(tmp_path, shm_tables, capfd):
    table = svscan_table(tmp_path, shm_tables)
    with open(table.path, "r+b") as f:
        f.write(b"JUNK")
    assert svstat_all.main_all(str(tmp_path), False) == 111
    out, err = capfd.readouterr()
    assert out == ""
    assert err == f"svstat: fatal: unable to read service table for {tmp_path}: {table.path}: not a prefork service table\n"


def test_main_all_of_a_table_whose_svscan_is_gone(tmp_path, shm_tables, capfd):
    """A killed svscan leaves its table behind: its services must not be shown up from it (exit 111, one line)."""
    table = svscan_table(tmp_path, shm_tables)
    dead = subprocess.Popen(["true"])
    dead.wait()
    table._mm[24:28] = struct.pack("<I", dead.pid)  # as if the svscan that wrote it had been killed
    for as_json in (False, True):
        assert svstat_all.main_all(str(tmp_path), as_json) == 111
        out, err = capfd.readouterr()
        assert out == ""
        assert err == f"svstat: fatal: {tmp_path}: svscan not running (table written by pid {dead.pid})\n"


def test_main_all_of_a_table_whose_svscan_pid_was_reused(tmp_path, shm_tables, capfd):
    """The pid of the dead svscan now runs another process (here pid 1, started long before the table)."""
    table = svscan_table(tmp_path, shm_tables)
    table._mm[24:28] = struct.pack("<I", 1)
    assert svstat_all.main_all(str(tmp_path), False) == 111
    out, err = capfd.readouterr()
    assert (out, err) == ("", f"svstat: fatal: {tmp_path}: svscan not running (table written by pid 1)\n")


def test_main_all_trusts_the_pid_of_a_table_without_start_ticks(tmp_path, shm_tables, capfd):
    table = svscan_table(tmp_path, shm_tables)
    table._mm[88:96] = bytes(8)  # written by a supervisor that did not record them
    assert svstat_all.main_all(str(tmp_path), False) == 0
    assert capfd.readouterr().out.count("\n") == 5


def test_svstat_all_of_a_stale_table_from_the_command(tmp_path, shm_tables):
    from conftest import ours

    table = svscan_table(tmp_path, shm_tables)
    dead = subprocess.Popen(["true"])
    dead.wait()
    table._mm[24:28] = struct.pack("<I", dead.pid)
    done = subprocess.run([ours("svstat"), "--all", str(tmp_path)], capture_output=True, timeout=30)
    assert (done.returncode, done.stdout) == (111, b"")
    assert done.stderr == f"svstat: fatal: {tmp_path}: svscan not running (table written by pid {dead.pid})\n".encode()


def test_remove_stale_removes_only_a_dead_writers_table_of_our_uid(tmp_path):
    live = make(tmp_path, directory="/live")
    assert not st.remove_stale(live.path)  # its writer (this process) runs
    dead = subprocess.Popen(["true"])
    dead.wait()
    live._mm[24:28] = struct.pack("<I", dead.pid)
    (tmp_path / "other").write_bytes(b"not a table" + bytes(2000))
    assert not st.remove_stale(str(tmp_path / "other")) and (tmp_path / "other").exists()
    assert not st.remove_stale(str(tmp_path / "nothing"))
    if os.getuid() == 0:
        os.chown(live.path, 65534, -1)  # someone else's: left alone
        assert not st.remove_stale(live.path) and os.path.exists(live.path)
        os.chown(live.path, 0, -1)
    assert st.remove_stale(live.path) and not os.path.exists(live.path)
    live.close()


def test_main_all_reads_a_supervise_table(tmp_path, shm_tables, capsys):
    d = str(tmp_path)
    table = st.ServiceTable.create(st.default_path(d, st.KIND_SUPERVISE), 1, st.KIND_SUPERVISE, d)
    shm_tables.append(table)
    table.publish(table.allocate(d), st.ServiceRecord(d, pid=55, state=st.STATE_UP, since_ns=time.time_ns(),
                                                      flags=st.FLAG_NORMALLY_UP))
    assert svstat_all.main_all(d, False) == 0
    assert seconds(capsys.readouterr().out) == f"{d}: up (pid 55) 0 seconds restarts 0\n"


def test_svstat_command_dispatches_all(tmp_path, shm_tables):
    from conftest import ours

    svscan_table(tmp_path, shm_tables)
    done = subprocess.run([ours("svstat"), "--all", str(tmp_path)], capture_output=True, timeout=30)
    assert (done.returncode, done.stderr) == (0, b"")
    assert seconds(done.stdout.decode()).splitlines()[:2] == [
        "db: down 0 seconds, normally up restarts 1 last exit 0", "db/log: up (pid 201) 0 seconds, paused restarts 0"]
    done = subprocess.run([ours("svstat"), "--all", "--json", str(tmp_path)], capture_output=True, timeout=30)
    assert done.returncode == 0 and len(json.loads(done.stdout)["services"]) == 5
    done = subprocess.run([ours("svstat"), "--all", str(tmp_path / "nope")], capture_output=True, timeout=30)
    assert (done.returncode, done.stdout) == (111, b"")
    assert done.stderr == f"svstat: fatal: unable to read service table for {tmp_path}/nope: file does not exist\n".encode()
