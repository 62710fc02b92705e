"""The shared-memory collector: exact samples from scoreboards and service tables, faults, and real servers.

Scoreboards and tables are written with their writer classes (prefork.scoreboard, prefork.control.servicetable)
and read back through prefork.metrics.collector, which uses the separate readers; then a real prefork tcpserver
(-H -R -l0 on 127.0.0.1 port 0) and a real prefork svscan in tmp dirs are driven and their samples
checked.  Every exposition goes through `promtool check metrics` (Debian's prometheus package) when it
is installed, and the exporter's own renderer is compared byte for byte with prometheus_client's.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import struct
import subprocess
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest
from conftest import ours
from hypothesis import given
from hypothesis import strategies as st_
from tcpserver_harness import QUIET, TAG_VAR, kill_procs, tagged, talk, wait_until

from prefork import proc as procinfo
from prefork import scoreboard as sb
from prefork.control import servicetable as st
from prefork.metrics import collector as mc

NOT_A_PID = 4_194_305  # above the largest pid_max Linux allows (2**22): never a running process
NOW_NS = 1_700_000_000_250_000_000
EXITS = ("zero", "nonzero", "signal")


# -- helpers shared with test_exporter.py ------------------------------------------------------------
def promtool_check(data: bytes) -> None:
    """`promtool check metrics` must accept DATA (skipped, not failed, when promtool is not installed)."""
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    out = subprocess.run([tool, "check", "metrics"], input=data, capture_output=True, timeout=30)
    assert out.returncode == 0, (out.stdout + out.stderr).decode() + "\n" + data.decode()


def samples(data: bytes) -> dict[tuple[str, frozenset], float]:
    """{(sample name, frozenset of label pairs): value} of a text exposition (parsed by prometheus_client)."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(data.decode()):
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in out, f"duplicate series {key}"
            out[key] = s.value
    return out


def value(data: dict, name: str, **labels: str) -> float | None:
    return data.get((name, frozenset(labels.items())))


def names(data: dict) -> set[str]:
    return {name for name, _ in data}


class Log(list):
    def __call__(self, line: str) -> None:
        self.append(line)


def scrape(collector: mc.SharedMemoryCollector) -> dict:
    """One scrape, checked by promtool, parsed."""
    data = collector.render()
    promtool_check(data)
    return samples(data)


def make_board(path: Path, workers: int = 2, limit: int = 10, pid: int | None = None, name: str = "") -> sb.ScoreboardFile:
    board = sb.ScoreboardFile(str(path), workers, limit, os.getpid() if pid is None else pid, name)
    board.set_local("127.0.0.1", 8080)
    return board


def fill_board(board: sb.ScoreboardFile) -> None:
    """Two slots and the master's orphan counters with distinct numbers."""
    s0, s1 = board.slot_offset(0), board.slot_offset(1)
    for off, v in [(sb.OFF_ACCEPTED, 10), (sb.OFF_DENIED, 2), (sb.OFF_DROPPED, 1), (sb.OFF_EXIT_ZERO, 4),
                   (sb.OFF_EXIT_NONZERO, 2), (sb.OFF_EXIT_SIGNAL, 1), (sb.OFF_DURATION_SUM, 1_500_000_000),
                   (sb.OFF_LAST_ACCEPT, NOW_NS)]:
        board.put64(s0 + off, v)
    for off, v in [(sb.OFF_ACCEPTED, 20), (sb.OFF_DENIED, 3), (sb.OFF_EXIT_ZERO, 15), (sb.OFF_DURATION_SUM, 250_000_000),
                   (sb.OFF_LAST_ACCEPT, NOW_NS + 5 * 10**9)]:
        board.put64(s1 + off, v)
    board.put64(s0 + sb.OFF_BUCKETS + 8 * 0, 3)  # <= 5 ms
    board.put64(s0 + sb.OFF_BUCKETS + 8 * 7, 3)  # <= 1 s
    board.put64(s0 + sb.OFF_BUCKETS + 8 * 11, 1)  # +Inf
    board.put64(s1 + sb.OFF_BUCKETS + 8 * 2, 15)  # <= 25 ms
    board.put32(s0 + sb.OFF_PID, os.getpid())
    board.put32(s0 + sb.OFF_STATE, sb.STATE_READY)
    board.put32(s0 + sb.OFF_ACTIVE, 2)
    board.put32(s1 + sb.OFF_PID, 0)
    board.put32(s1 + sb.OFF_STATE, sb.STATE_EXITED)
    board.put32(sb.H_ORPHANS, 1)
    board.put64(sb.H_RESTARTS, 5)
    board.put64(sb.H_ORPHAN_EXITS, 6)
    board.put64(sb.H_ORPHAN_EXITS + 8, 7)
    board.put64(sb.H_ORPHAN_EXITS + 16, 8)
    board.put64(sb.H_ORPHAN_DURATION_SUM, 4_000_000_000)
    board.put64(sb.H_ORPHAN_BUCKETS + 8 * 10, 2)  # <= 10 s


def make_table(path: Path, directory: str = "/service", kind: int = st.KIND_SVSCAN, capacity: int = 8) -> st.ServiceTable:
    return st.ServiceTable.create(str(path), capacity, kind, directory)


def set_owner(path: Path, pid: int) -> None:
    """Rewrite a table's owner pid (header offset 24) as if another process had made it."""
    with open(path, "r+b") as f:
        f.seek(24)
        f.write(struct.pack("<I", pid))


# == tcpserver families from a scoreboard ===============================================================
def test_scoreboard_families_have_the_exact_values(tmp_path):
    board = make_board(tmp_path / "board", name="web")
    fill_board(board)
    data = scrape(mc.SharedMemoryCollector([str(tmp_path / "board")]))
    svc = {"service": "web"}
    assert value(data, "tcpserver_connections_accepted_total", **svc) == 30
    assert value(data, "tcpserver_connections_denied_total", **svc) == 5
    assert value(data, "tcpserver_connections_dropped_total", **svc) == 1
    assert value(data, "tcpserver_connections_active", **svc) == 3  # 2 in slot 0 + 1 orphan
    assert value(data, "tcpserver_orphan_connections", **svc) == 1
    assert value(data, "tcpserver_connections_limit", **svc) == 10
    assert value(data, "tcpserver_program_exits_total", exit="zero", **svc) == 4 + 15 + 6
    assert value(data, "tcpserver_program_exits_total", exit="nonzero", **svc) == 2 + 7
    assert value(data, "tcpserver_program_exits_total", exit="signal", **svc) == 1 + 8
    buckets = {le: value(data, "tcpserver_connection_duration_seconds_bucket", le=le, **svc)
               for le in ("0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0", "+Inf")}
    assert buckets == {"0.005": 3, "0.01": 3, "0.025": 18, "0.05": 18, "0.1": 18, "0.25": 18, "0.5": 18, "1.0": 21,
                       "2.5": 21, "5.0": 21, "10.0": 23, "+Inf": 24}
    assert value(data, "tcpserver_connection_duration_seconds_count", **svc) == 24
    assert value(data, "tcpserver_connection_duration_seconds_sum", **svc) == pytest.approx(5.75)
    assert value(data, "tcpserver_workers", **svc) == 2
    assert value(data, "tcpserver_workers_alive", **svc) == 1
    assert value(data, "tcpserver_worker_restarts_total", **svc) == 5
    start = sb._HEADER.unpack_from((tmp_path / "board").read_bytes(), 0)[8]
    assert value(data, "tcpserver_start_time_seconds", **svc) == pytest.approx(start / 1e9)
    assert value(data, "tcpserver_last_accept_time_seconds", **svc) == pytest.approx(NOW_NS / 1e9 + 5)
    assert value(data, "prefork_exporter_source_up", kind="scoreboard", path=str(tmp_path / "board")) == 1
    assert value(data, "prefork_exporter_source_errors_total", kind="scoreboard", path=str(tmp_path / "board")) == 0


def test_service_label_is_host_port_without_a_name(tmp_path):
    make_board(tmp_path / "board")
    data = scrape(mc.SharedMemoryCollector([str(tmp_path / "board")]))
    assert value(data, "tcpserver_connections_accepted_total", service="127.0.0.1:8080") == 0


def test_no_per_pid_or_per_client_labels(tmp_path):
    board = make_board(tmp_path / "board", workers=4)
    fill_board(board)
    data = scrape(mc.SharedMemoryCollector([str(tmp_path / "board")]))
    for name, labels in data:
        assert {k for k, _ in labels} <= {"service", "exit", "le", "kind", "path", "limit"}, name


def test_refusals_by_per_client_limits_are_summed_per_limit(tmp_path):
    board = make_board(tmp_path / "board", workers=2, name="lim")
    for index, counts in ((0, (3, 1, 0)), (1, (2, 0, 7))):
        for k, n in enumerate(counts):
            board.put64(board.slot_offset(index) + sb.OFF_LIMITED + 8 * k, n)
    data = scrape(mc.SharedMemoryCollector([str(tmp_path / "board")]))
    got = {kind: value(data, "tcpserver_connections_limited_total", service="lim", limit=kind)
           for kind in ("MAXCONNIP", "MAXCONNC", "MAXLOAD")}
    assert got == {"MAXCONNIP": 5, "MAXCONNC": 1, "MAXLOAD": 7}


def test_two_scoreboards_are_two_services(tmp_path):
    make_board(tmp_path / "a", name="a")
    fill_board(make_board(tmp_path / "b", name="b"))
    data = scrape(mc.SharedMemoryCollector([str(tmp_path / "a"), str(tmp_path / "b")]))
    assert value(data, "tcpserver_connections_accepted_total", service="a") == 0
    assert value(data, "tcpserver_connections_accepted_total", service="b") == 30


def test_counters_survive_a_worker_replaced_in_its_slot(tmp_path):
    """What the master does when a worker dies (pid 0, state exited, generation + 1) leaves the counters."""
    board = make_board(tmp_path / "board", name="web")
    fill_board(board)
    collector = mc.SharedMemoryCollector([str(tmp_path / "board")])
    before = scrape(collector)
    s0 = board.slot_offset(0)
    board.put32(s0 + sb.OFF_PID, 0)
    board.put32(s0 + sb.OFF_STATE, sb.STATE_EXITED)
    board.put32(s0 + sb.OFF_ACTIVE, 0)
    board.put32(sb.H_ORPHANS, 3)
    mid = scrape(collector)
    board.put32(s0 + sb.OFF_GENERATION, 2)
    board.put32(s0 + sb.OFF_PID, os.getpid())
    board.put32(s0 + sb.OFF_STATE, sb.STATE_READY)
    board.put64(sb.H_RESTARTS, 6)
    after = scrape(collector)
    for key, v in before.items():
        if key[0].endswith(("_total", "_bucket", "_count", "_sum")):
            assert mid[key] >= v and after[key] >= mid[key], key
    assert value(mid, "tcpserver_workers_alive", service="web") == 0
    assert value(mid, "tcpserver_connections_active", service="web") == 3
    assert value(after, "tcpserver_workers_alive", service="web") == 1
    assert value(after, "tcpserver_worker_restarts_total", service="web") == 6


# == supervise / svscan families from a service table ===================================================
def publish(table: st.ServiceTable, rec: st.ServiceRecord) -> int:
    index = table.allocate(rec.name)
    table.publish(index, rec)
    return index


def test_service_table_families_have_the_exact_values(tmp_path):
    table = make_table(tmp_path / "table", "/srv/sv")
    publish(table, st.ServiceRecord("web", pid=os.getpid(), state=st.STATE_UP, since_ns=NOW_NS, starts=3, restarts=2,
                                    last_status=9, flags=st.FLAG_NORMALLY_UP))
    publish(table, st.ServiceRecord("web/log", pid=os.getpid(), state=st.STATE_UP, since_ns=NOW_NS + 10**9, starts=1,
                                    flags=st.FLAG_NORMALLY_UP | st.FLAG_LOG))
    publish(table, st.ServiceRecord("db", pid=0, want=b"d", state=st.STATE_DOWN, since_ns=NOW_NS, starts=1,
                                    last_status=3 << 8))
    publish(table, st.ServiceRecord("cron", pid=os.getpid(), want=b"u", paused=True, state=st.STATE_STOPPING,
                                    since_ns=NOW_NS, starts=1, last_status=0))
    table.set_counters(3, 1, 42)
    data = scrape(mc.SharedMemoryCollector([], [str(tmp_path / "table")]))

    def row(service: str) -> tuple:
        labels = {"directory": "/srv/sv", "service": service}
        return tuple(value(data, f"supervise_{n}", **labels) for n in (
            "up", "want_up", "paused", "normally_up", "state_since_seconds", "starts_total", "restarts_total",
            "last_exit_status", "last_exit_signal"))

    t = NOW_NS / 1e9
    assert row("web") == (1, 1, 0, 1, pytest.approx(t), 3, 2, 128 + 9, 9)
    assert row("web/log") == (1, 1, 0, 1, pytest.approx(t + 1), 1, 0, None, None)
    assert row("db") == (0, 0, 0, 0, pytest.approx(t), 1, 0, 3, 0)
    assert row("cron") == (1, 1, 1, 0, pytest.approx(t), 1, 0, 0, 0)
    assert value(data, "svscan_services", directory="/srv/sv") == 3
    assert value(data, "svscan_scan_errors_total", directory="/srv/sv") == 1
    assert value(data, "svscan_scans_total", directory="/srv/sv") == 42
    assert value(data, "svscan_start_time_seconds", directory="/srv/sv") == pytest.approx(time.time(), abs=60)
    assert value(data, "prefork_exporter_source_up", kind="services", path=str(tmp_path / "table")) == 1


def test_readiness_families(tmp_path):
    """s6's readiness: only a running service whose notification-fd newline came is ready."""
    table = make_table(tmp_path / "table", "/srv/sv")
    publish(table, st.ServiceRecord("ready", pid=os.getpid(), state=st.STATE_UP, since_ns=NOW_NS,
                                    flags=st.FLAG_NOTIFYING, ready_ns=NOW_NS + 2_500_000_000))
    publish(table, st.ServiceRecord("waiting", pid=os.getpid(), state=st.STATE_UP, since_ns=NOW_NS,
                                    flags=st.FLAG_NOTIFYING))
    publish(table, st.ServiceRecord("plain", pid=os.getpid(), state=st.STATE_UP, since_ns=NOW_NS))
    publish(table, st.ServiceRecord("down", since_ns=NOW_NS, ready_ns=NOW_NS))  # down is never ready
    data = scrape(mc.SharedMemoryCollector([], [str(tmp_path / "table")]))

    def row(service: str) -> tuple:
        labels = {"directory": "/srv/sv", "service": service}
        return value(data, "supervise_ready", **labels), value(data, "supervise_time_to_ready_seconds", **labels)

    assert row("ready") == (1, pytest.approx(2.5))
    assert row("waiting") == (0, None)
    assert row("plain") == (0, None)
    assert row("down") == (0, None)


def test_restart_policy_families(tmp_path):
    """The restart policy (docs/CONTRACTS.md, Restart policy): given up on, and the last back-off."""
    table = make_table(tmp_path / "table", "/srv/sv")
    publish(table, st.ServiceRecord("gone", want=b"d", flags=st.FLAG_FAILED, backoff_ms=8000))
    publish(table, st.ServiceRecord("waiting", backoff_ms=2000))
    publish(table, st.ServiceRecord("plain", pid=os.getpid(), state=st.STATE_UP))
    data = scrape(mc.SharedMemoryCollector([], [str(tmp_path / "table")]))

    def row(service: str) -> tuple:
        labels = {"directory": "/srv/sv", "service": service}
        return value(data, "supervise_failed", **labels), value(data, "supervise_backoff_seconds", **labels)

    assert (row("gone"), row("waiting"), row("plain")) == ((1, 8.0), (0, 2.0), (0, 0.0))


def test_finish_failure_and_kill_escalation_counters(tmp_path):
    table = make_table(tmp_path / "table", "/srv/sv")
    publish(table, st.ServiceRecord("web", finish_failures=3, kill_escalations=2))
    data = scrape(mc.SharedMemoryCollector([], [str(tmp_path / "table")]))
    labels = {"directory": "/srv/sv", "service": "web"}
    assert value(data, "supervise_finish_failures_total", **labels) == 3
    assert value(data, "supervise_kill_escalations_total", **labels) == 2


def test_released_slots_are_not_exported(tmp_path):
    table = make_table(tmp_path / "table")
    publish(table, st.ServiceRecord("a"))
    b = publish(table, st.ServiceRecord("b"))
    table.release(b)
    data = scrape(mc.SharedMemoryCollector([], [str(tmp_path / "table")]))
    assert value(data, "supervise_up", directory="/service", service="a") == 0
    assert value(data, "supervise_up", directory="/service", service="b") is None


@pytest.mark.parametrize("directory, service", [("/srv/web", "web"), ("/srv/web/log", "web/log")])
def test_a_lone_supervise_is_named_after_its_directory_and_has_no_svscan_families(tmp_path, directory, service):
    table = make_table(tmp_path / "table", directory, kind=st.KIND_SUPERVISE, capacity=1)
    publish(table, st.ServiceRecord(directory, pid=os.getpid(), state=st.STATE_UP))
    data = scrape(mc.SharedMemoryCollector([], [str(tmp_path / "table")]))
    assert value(data, "supervise_up", directory=directory, service=service) == 1
    assert not any(name.startswith("svscan_") for name in names(data))


def test_services_directory_finds_its_table_at_the_default_path(tmp_path):
    d = tmp_path / "sv"
    d.mkdir()
    path = st.default_path(str(d), st.KIND_SVSCAN)
    table = make_table(Path(path), str(d))
    try:
        publish(table, st.ServiceRecord("a", pid=os.getpid(), state=st.STATE_UP))
        data = scrape(mc.SharedMemoryCollector([], [str(d)]))
        assert value(data, "supervise_up", directory=str(d), service="a") == 1
        assert value(data, "prefork_exporter_source_up", kind="services", path=str(d)) == 1
    finally:
        table.close(unlink=True)


def test_raw_byte_and_special_names_stay_valid_labels(tmp_path):
    table = make_table(tmp_path / "table", "/srv/s\"q\\b")
    raw = b"caf\xe9".decode("utf-8", "surrogateescape")
    publish(table, st.ServiceRecord(raw))
    publish(table, st.ServiceRecord('quote"back\\slash\nline'))
    collector = mc.SharedMemoryCollector([], [str(tmp_path / "table")])
    data = scrape(collector)
    assert value(data, "supervise_up", directory="/srv/s\"q\\b", service="caf\ufffd") == 0
    assert value(data, "supervise_up", directory="/srv/s\"q\\b", service='quote"back\\slash\nline') == 0


# == the renderer is prometheus_client's format, byte for byte ==========================================
def test_render_is_byte_for_byte_prometheus_clients_generate_latest(tmp_path):
    from prometheus_client import CollectorRegistry, generate_latest

    fill_board(make_board(tmp_path / "board", name='we"b\\x'))
    table = make_table(tmp_path / "table", "/srv/a b")
    publish(table, st.ServiceRecord("x\ny", pid=os.getpid(), state=st.STATE_UP, last_status=15, since_ns=NOW_NS))
    publish(table, st.ServiceRecord("z", last_status=256 * 111, since_ns=NOW_NS + 123456789))
    table.set_counters(2, 0, 10**7)
    log = Log()

    def fresh() -> mc.SharedMemoryCollector:  # one scrape each, so the error counts agree
        return mc.SharedMemoryCollector([str(tmp_path / "board"), str(tmp_path / "missing")],
                                        [str(tmp_path / "table")], log=log)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(fresh())
    assert log == []  # registering reads nothing
    theirs = generate_latest(registry)
    ours_ = fresh().render()
    assert ours_ == theirs
    promtool_check(ours_)


@given(st_.one_of(st_.integers(min_value=0, max_value=2**64), st_.floats(allow_nan=True, allow_infinity=True)))
def test_go_float_is_prometheus_clients_float_format(x):
    from prometheus_client.utils import floatToGoString

    assert mc.go_float(x) == floatToGoString(x)


def test_empty_collector_renders_only_help_and_type(tmp_path):
    data = mc.SharedMemoryCollector([], []).render()
    promtool_check(data)
    assert all(line.startswith("# ") for line in data.decode().splitlines())


# == faults: each one its own test ======================================================================
def fault_scrape(tmp_path, path: Path, kind: str = "scoreboard") -> tuple[dict, Log]:
    log = Log()
    args = ([str(path)], []) if kind == "scoreboard" else ([], [str(path)])
    collector = mc.SharedMemoryCollector(*args, log=log)
    data = scrape(collector)
    assert value(data, "prefork_exporter_source_up", kind=kind, path=str(path)) == 0
    assert value(data, "prefork_exporter_source_errors_total", kind=kind, path=str(path)) == 1
    prefix = "tcpserver_" if kind == "scoreboard" else "supervise_"
    assert not [n for n in names(data) if n.startswith(prefix)]
    return data, log


def test_fault_scoreboard_missing(tmp_path):
    _, log = fault_scrape(tmp_path, tmp_path / "nope")
    assert log == [f"prefork-exporter: warning: scoreboard {tmp_path}/nope: file does not exist"]


def test_fault_scoreboard_is_a_directory(tmp_path):
    _, log = fault_scrape(tmp_path, tmp_path)
    assert log == [f"prefork-exporter: warning: scoreboard {tmp_path}: is a directory"]


def test_fault_scoreboard_empty(tmp_path):
    (tmp_path / "board").write_bytes(b"")
    _, log = fault_scrape(tmp_path, tmp_path / "board")
    assert log == [f"prefork-exporter: warning: scoreboard {tmp_path}/board: truncated (0 bytes)"]


def test_fault_scoreboard_truncated_slots(tmp_path):
    make_board(tmp_path / "board", workers=4)
    raw = (tmp_path / "board").read_bytes()
    (tmp_path / "board").write_bytes(raw[: 256 + 3 * 256 + 10])
    _, log = fault_scrape(tmp_path, tmp_path / "board")
    assert log == [f"prefork-exporter: warning: scoreboard {tmp_path}/board: truncated slots"]


def test_fault_scoreboard_of_another_layout_version(tmp_path):
    make_board(tmp_path / "board")
    raw = bytearray((tmp_path / "board").read_bytes())
    struct.pack_into("<I", raw, 4, 2)
    (tmp_path / "board").write_bytes(bytes(raw))
    _, log = fault_scrape(tmp_path, tmp_path / "board")
    assert log == [f"prefork-exporter: warning: scoreboard {tmp_path}/board: unsupported layout version 2"]


def test_fault_scoreboard_not_a_scoreboard(tmp_path):
    (tmp_path / "board").write_bytes(b"PFST" + bytes(2000))
    _, log = fault_scrape(tmp_path, tmp_path / "board")
    assert log == [f"prefork-exporter: warning: scoreboard {tmp_path}/board: not a prefork scoreboard"]


def test_fault_scoreboard_of_a_dead_server_is_not_served(tmp_path):
    fill_board(make_board(tmp_path / "board", pid=NOT_A_PID))
    _, log = fault_scrape(tmp_path, tmp_path / "board")
    assert log == [f"prefork-exporter: warning: scoreboard {tmp_path}/board: server pid {NOT_A_PID} is not running"]


def test_fault_scoreboard_of_a_zombie_server_is_not_served(tmp_path):
    proc = subprocess.Popen(["/bin/true"])
    try:
        wait_until(lambda: open(f"/proc/{proc.pid}/stat").read().split(") ")[1][0] == "Z", 5)
        make_board(tmp_path / "board", pid=proc.pid)
        _, log = fault_scrape(tmp_path, tmp_path / "board")
        assert log == [f"prefork-exporter: warning: scoreboard {tmp_path}/board: server pid {proc.pid} is not running"]
    finally:
        proc.wait(5)


def test_fault_scoreboard_whose_pid_was_reused(tmp_path, monkeypatch):
    make_board(tmp_path / "board", name="web")
    log = Log()
    collector = mc.SharedMemoryCollector([str(tmp_path / "board")], log=log)
    assert value(scrape(collector), "tcpserver_workers", service="web") == 2
    monkeypatch.setattr(procinfo, "start_ticks", lambda pid: 10**12)  # the same pid, a process started later
    data = scrape(collector)
    assert value(data, "tcpserver_workers", service="web") is None
    assert value(data, "prefork_exporter_source_up", kind="scoreboard", path=str(tmp_path / "board")) == 0
    assert log == [f"prefork-exporter: warning: scoreboard {tmp_path}/board: server pid {os.getpid()} is not running"
                   " (now another process)"]


def test_fault_two_scoreboards_with_one_service_name(tmp_path):
    fill_board(make_board(tmp_path / "a", name="web"))
    make_board(tmp_path / "b", name="web")
    log = Log()
    data = scrape(mc.SharedMemoryCollector([str(tmp_path / "a"), str(tmp_path / "b")], log=log))
    assert value(data, "tcpserver_connections_accepted_total", service="web") == 30  # the first one given
    assert value(data, "prefork_exporter_source_up", kind="scoreboard", path=str(tmp_path / "b")) == 0
    assert log == [f"prefork-exporter: warning: scoreboard {tmp_path}/b: service web is already served from {tmp_path}/a"]


def test_fault_services_directory_missing(tmp_path):
    _, log = fault_scrape(tmp_path, tmp_path / "nope", "services")
    assert log == [f"prefork-exporter: warning: services {tmp_path}/nope: file does not exist"]


def test_fault_services_directory_without_a_supervisor(tmp_path):
    _, log = fault_scrape(tmp_path, tmp_path, "services")
    assert log == [f"prefork-exporter: warning: services {tmp_path}: no prefork svscan or supervise has a table for it"]


def test_fault_services_table_truncated(tmp_path):
    make_table(tmp_path / "table", capacity=4)
    raw = (tmp_path / "table").read_bytes()
    (tmp_path / "table").write_bytes(raw[:1500])
    _, log = fault_scrape(tmp_path, tmp_path / "table", "services")
    assert log == [f"prefork-exporter: warning: services {tmp_path}/table: {tmp_path}/table: truncated"
                   " (1500 bytes, the header says 3072)"]


def test_fault_services_table_of_another_layout_version(tmp_path):
    make_table(tmp_path / "table")
    with open(tmp_path / "table", "r+b") as f:
        f.seek(4)
        f.write(struct.pack("<I", 7))
    _, log = fault_scrape(tmp_path, tmp_path / "table", "services")
    assert log == [f"prefork-exporter: warning: services {tmp_path}/table: {tmp_path}/table:"
                   " unsupported layout version 7"]


def test_fault_services_table_of_a_dead_svscan_is_not_served(tmp_path):
    table = make_table(tmp_path / "table")
    publish(table, st.ServiceRecord("a", pid=os.getpid(), state=st.STATE_UP))
    set_owner(tmp_path / "table", NOT_A_PID)
    _, log = fault_scrape(tmp_path, tmp_path / "table", "services")
    assert log == [f"prefork-exporter: warning: services {tmp_path}/table: svscan pid {NOT_A_PID} is not running"]


def test_fault_services_table_whose_svscan_pid_was_reused_from_the_first_scrape(tmp_path):
    """The table records its writer's start time: a pid now running another process is caught at once."""
    table = make_table(tmp_path / "table")
    publish(table, st.ServiceRecord("a", pid=os.getpid(), state=st.STATE_UP))
    set_owner(tmp_path / "table", 1)  # pid 1 runs, but started long before this table's writer
    _, log = fault_scrape(tmp_path, tmp_path / "table", "services")
    assert log == [f"prefork-exporter: warning: services {tmp_path}/table: svscan pid 1 is not running"
                   " (now another process)"]


def test_liveness_with_recorded_ticks():
    me = procinfo.start_ticks(os.getpid())
    live = mc.Liveness()
    assert live.check(os.getpid(), 1, me) is None
    assert live.check(os.getpid(), 2, me + 1) == f"pid {os.getpid()} is not running (now another process)"
    assert live.check(os.getpid(), 3) is None and live.check(os.getpid(), 3) is None
    assert live.check(NOT_A_PID, 4, 5) == f"pid {NOT_A_PID} is not running"


def test_pinned_sources_are_read_through_their_descriptors(tmp_path):
    """An exporter that drops its privileges opens its sources first and reads them through those descriptors."""
    fill_board(make_board(tmp_path / "board", name="web"))
    table = make_table(tmp_path / "table")
    publish(table, st.ServiceRecord("a", pid=os.getpid(), state=st.STATE_UP))
    log = Log()
    collector = mc.SharedMemoryCollector([str(tmp_path / "board")], [str(tmp_path / "table")], log=log)
    collector.pin()
    for name in ("board", "table"):
        os.rename(tmp_path / name, tmp_path / f"{name}.gone")  # were the paths opened again, nothing would be found
    data = scrape(collector)
    assert value(data, "tcpserver_connections_accepted_total", service="web") == 30
    assert value(data, "supervise_up", directory="/service", service="a") == 1
    assert log == []
    publish(table, st.ServiceRecord("b", pid=os.getpid(), state=st.STATE_UP))  # read live, not a copy
    assert value(scrape(collector), "supervise_up", directory="/service", service="b") == 1


def test_a_source_missing_when_pinned_is_looked_up_by_path_later(tmp_path):
    collector = mc.SharedMemoryCollector([str(tmp_path / "board")], log=Log())
    collector.pin()
    assert value(scrape(collector), "prefork_exporter_source_up", kind="scoreboard", path=str(tmp_path / "board")) == 0
    make_board(tmp_path / "board", name="late")
    assert value(scrape(collector), "tcpserver_workers", service="late") == 2


def test_fault_reasons_from_file_contents_are_logged_on_one_line(tmp_path):
    make_board(tmp_path / "a", name="web\nforged: line")
    make_board(tmp_path / "b", name="web\nforged: line")
    log = Log()
    scrape(mc.SharedMemoryCollector([str(tmp_path / "a"), str(tmp_path / "b")], log=log))
    assert log == [f"prefork-exporter: warning: scoreboard {tmp_path}/b: service web?forged: line is already"
                   f" served from {tmp_path}/a"]


def test_fault_services_given_twice_is_served_once(tmp_path):
    table = make_table(tmp_path / "table")
    publish(table, st.ServiceRecord("a"))
    log = Log()
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "table")
    data = scrape(mc.SharedMemoryCollector([], [str(tmp_path / "table"), str(link)], log=log))
    assert value(data, "supervise_up", directory="/service", service="a") == 0
    assert value(data, "prefork_exporter_source_up", kind="services", path=str(tmp_path / "table")) == 1
    assert value(data, "prefork_exporter_source_up", kind="services", path=str(link)) == 0
    assert log == [f"prefork-exporter: warning: services {link}: its table {link} is already"
                   f" served for {tmp_path}/table"]


def test_a_fault_in_one_source_serves_the_others(tmp_path):
    fill_board(make_board(tmp_path / "good", name="good"))
    table = make_table(tmp_path / "table")
    publish(table, st.ServiceRecord("a"))
    data = scrape(mc.SharedMemoryCollector([str(tmp_path / "bad"), str(tmp_path / "good")],
                                           [str(tmp_path / "nodir"), str(tmp_path / "table")], log=Log()))
    assert value(data, "tcpserver_connections_accepted_total", service="good") == 30
    assert value(data, "supervise_up", directory="/service", service="a") == 0


def test_a_reader_bug_costs_the_source_not_the_scrape(tmp_path, monkeypatch):
    make_board(tmp_path / "board")

    def broken(path, liveness, fd=None):
        raise ZeroDivisionError("oops")

    monkeypatch.setattr(mc, "read_scoreboard", broken)
    _, log = fault_scrape(tmp_path, tmp_path / "board")
    assert log == [f"prefork-exporter: warning: scoreboard {tmp_path}/board: unexpected error: ZeroDivisionError: oops"]


def test_one_log_line_per_state_change_not_per_scrape(tmp_path):
    path = tmp_path / "board"
    log = Log()
    collector = mc.SharedMemoryCollector([str(path)], log=log)
    for _ in range(3):
        scrape(collector)
    assert log == [f"prefork-exporter: warning: scoreboard {path}: file does not exist"]
    make_board(path, name="web")
    for _ in range(3):
        data = scrape(collector)
    assert log[1:] == [f"prefork-exporter: scoreboard {path}: ok"]
    assert value(data, "prefork_exporter_source_errors_total", kind="scoreboard", path=str(path)) == 3
    path.write_bytes(b"x" * 10)
    scrape(collector)
    path.write_bytes(b"y" * 10)
    scrape(collector)
    os.unlink(path)
    data = scrape(collector)
    assert log[2:] == [f"prefork-exporter: warning: scoreboard {path}: truncated (10 bytes)",
                       f"prefork-exporter: warning: scoreboard {path}: file does not exist"]
    assert value(data, "prefork_exporter_source_errors_total", kind="scoreboard", path=str(path)) == 6


def test_a_source_that_is_fine_from_the_start_logs_nothing(tmp_path):
    make_board(tmp_path / "board")
    log = Log()
    collector = mc.SharedMemoryCollector([str(tmp_path / "board")], log=log)
    scrape(collector)
    scrape(collector)
    assert log == []


def test_concurrent_scrapes_log_once(tmp_path):
    log = Log()
    collector = mc.SharedMemoryCollector([str(tmp_path / "missing")], log=log)
    threads = [threading.Thread(target=collector.render) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(log) == 1
    assert value(samples(collector.render()), "prefork_exporter_source_errors_total", kind="scoreboard",
                 path=str(tmp_path / "missing")) == 9


# == a real prefork tcpserver ===========================================================================
PROGRAM = """#!/bin/sh
read x
case "$x" in
  f) exit 3 ;;
  k) kill -9 $$ ;;
esac
echo ok
"""


def program(tmp_path: Path) -> str:
    path = tmp_path / "prog.sh"
    path.write_text(PROGRAM)
    path.chmod(0o755)
    return str(path)


def rules(tmp_path: Path, text: str) -> str:
    cdb = tmp_path / "rules.cdb"
    subprocess.run([ours("tcprules"), str(cdb), str(tmp_path / "rules.tmp")], input=text.encode(), check=True,
                   timeout=10, env={"PATH": "/usr/bin:/bin"})
    return str(cdb)


def settle(collector: mc.SharedMemoryCollector, predicate, timeout: float = 15.0) -> dict:
    """Scrape until PREDICATE(samples) holds (bounded); the last scrape."""
    last: dict = {}

    def probe() -> bool:
        nonlocal last
        last = samples(collector.render())
        return bool(predicate(last))

    assert wait_until(probe, timeout), f"never settled: {sorted((k[0], sorted(k[1]), v) for k, v in last.items())}"
    promtool_check(collector.render())
    return last


def test_real_tcpserver_counts_every_kind_of_connection(tmp_path, prefork):
    board = tmp_path / "board"
    cdb = rules(tmp_path, "127.0.0.2:deny\n:allow\n")
    server = prefork(["--scoreboard", str(board), "--name", "echo", *QUIET, "-c", "7", "-x", cdb], [program(tmp_path)])
    collector = mc.SharedMemoryCollector([str(board)])
    for word in (b"a\n", b"b\n", b"c\n", b"f\n", b"k\n"):
        talk(server.port, word)
    assert talk(server.port, b"a\n", source="127.0.0.2")[0] == b""
    assert talk(server.port, b"a\n", source="127.0.0.2")[0] == b""
    os.unlink(cdb)  # rules unreadable: the next connection is dropped
    assert talk(server.port, b"a\n")[0] == b""
    svc = {"service": "echo"}

    def done(d: dict) -> bool:
        return value(d, "tcpserver_connection_duration_seconds_count", **svc) == 5 and \
            value(d, "tcpserver_connections_active", **svc) == 0 and \
            value(d, "tcpserver_connections_dropped_total", **svc) == 1

    data = settle(collector, done)
    assert value(data, "tcpserver_connections_accepted_total", **svc) == 8
    assert value(data, "tcpserver_connections_denied_total", **svc) == 2
    assert value(data, "tcpserver_program_exits_total", exit="zero", **svc) == 3
    assert value(data, "tcpserver_program_exits_total", exit="nonzero", **svc) == 1
    assert value(data, "tcpserver_program_exits_total", exit="signal", **svc) == 1
    assert value(data, "tcpserver_connection_duration_seconds_bucket", le="+Inf", **svc) == 5
    assert 0 < value(data, "tcpserver_connection_duration_seconds_sum", **svc) < 5 * 10
    assert value(data, "tcpserver_connections_limit", **svc) == 7
    assert value(data, "tcpserver_workers", **svc) == 2
    assert value(data, "tcpserver_workers_alive", **svc) == 2
    assert value(data, "tcpserver_worker_restarts_total", **svc) == 0
    assert value(data, "tcpserver_start_time_seconds", **svc) == pytest.approx(time.time(), abs=60)
    assert value(data, "tcpserver_last_accept_time_seconds", **svc) == pytest.approx(time.time(), abs=60)


def test_real_tcpserver_default_scoreboard_and_service_name(tmp_path, prefork):
    server = prefork([*QUIET], [program(tmp_path)])
    path = sb.default_path(server.pid)
    collector = mc.SharedMemoryCollector([path])
    talk(server.port, b"a\n")
    data = settle(collector, lambda d: value(d, "tcpserver_program_exits_total", exit="zero",
                                             service=f"127.0.0.1:{server.port}") == 1)
    assert value(data, "tcpserver_connections_accepted_total", service=f"127.0.0.1:{server.port}") == 1


def test_real_tcpserver_killed_is_no_longer_served(tmp_path, prefork):
    board = tmp_path / "board"
    server = prefork(["--scoreboard", str(board), "--name", "gone", *QUIET], [program(tmp_path)])
    log = Log()
    collector = mc.SharedMemoryCollector([str(board)], log=log)
    talk(server.port, b"a\n")
    settle(collector, lambda d: value(d, "tcpserver_program_exits_total", exit="zero", service="gone") == 1)
    kill_procs([*server.workers(), psutil.Process(server.pid)])
    server.proc.wait(10)
    data = settle(collector, lambda d: value(d, "prefork_exporter_source_up", kind="scoreboard", path=str(board)) == 0)
    assert board.exists()  # a SIGKILLed master leaves its scoreboard behind
    assert not [n for n in names(data) if n.startswith("tcpserver_")]
    assert log == [f"prefork-exporter: warning: scoreboard {board}: server pid {server.pid} is not running"]


def test_real_tcpserver_counters_never_go_backwards_across_worker_sigkills(tmp_path, prefork):
    """Scrape continuously under load while workers are SIGKILLed; every cumulative series only grows."""
    board = tmp_path / "board"
    server = prefork(["--scoreboard", str(board), "--name", "load", *QUIET, "-c", "20", "--workers", "3"],
                     [program(tmp_path)])
    collector = mc.SharedMemoryCollector([str(board)])
    stop = threading.Event()
    results = {"ok": 0, "failed": 0}
    lock = threading.Lock()

    def client() -> None:
        for _ in range(100_000):
            if stop.is_set():
                return
            try:
                ok = talk(server.port, b"a\n", timeout=10)[0] == b"ok\n"
            except OSError:
                ok = False
            with lock:
                results["ok" if ok else "failed"] += 1

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    scrapes: list[dict] = []
    killed = 0
    try:
        deadline = time.monotonic() + 6.0
        next_kill = time.monotonic() + 1.0
        for _ in range(10_000):
            if time.monotonic() >= deadline:
                break
            scrapes.append(samples(collector.render()))
            if time.monotonic() >= next_kill and killed < 3:
                workers = server.workers()
                if workers:
                    with contextlib.suppress(psutil.Error):
                        workers[killed % len(workers)].send_signal(signal.SIGKILL)
                        killed += 1
                next_kill = time.monotonic() + 1.5
            time.sleep(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert killed == 3 and results["ok"] > 50
    cumulative = [k for k in scrapes[0] if k[0].endswith(("_total", "_bucket", "_count", "_sum"))
                  and k[0].startswith("tcpserver_")]
    assert len(cumulative) > 15
    for key in cumulative:
        series = [s[key] for s in scrapes if key in s]
        assert len(series) == len(scrapes), key
        backwards = [(a, b) for a, b in zip(series, series[1:], strict=False) if b < a]
        assert not backwards, f"{key} went backwards: {backwards[:3]}"
    final = settle(collector, lambda d: value(d, "tcpserver_connections_active", service="load") == 0 and
                   value(d, "tcpserver_workers_alive", service="load") == 3 and
                   value(d, "tcpserver_worker_restarts_total", service="load") == 3)
    accepted = value(final, "tcpserver_connections_accepted_total", service="load")
    exits = sum(value(final, "tcpserver_program_exits_total", exit=e, service="load") for e in EXITS)
    assert results["ok"] <= value(final, "tcpserver_program_exits_total", exit="zero", service="load")
    assert exits <= accepted <= results["ok"] + results["failed"]
    assert accepted >= scrapes[-1][("tcpserver_connections_accepted_total", frozenset({("service", "load")}))]


# == a real prefork svscan ==============================================================================
def service(root: Path, name: str, run: str = "exec sleep 300", log: str | None = None) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "run").write_text(f"#!/bin/sh\n{run}\n")
    (d / "run").chmod(0o755)
    if log is not None:
        (d / "log").mkdir()
        (d / "log" / "run").write_text(f"#!/bin/sh\n{log}\n")
        (d / "log" / "run").chmod(0o755)
    return d


@pytest.fixture
def svscan(tmp_path):
    """start(root, table) -> Popen of prefork's svscan; at teardown it and everything it started are SIGKILLed."""
    started: list[tuple[subprocess.Popen, str]] = []

    def start(root: Path, table: Path | None) -> subprocess.Popen:
        tag = f"metrics-{uuid.uuid4().hex}"
        argv = [ours("svscan"), *(["--table", str(table)] if table else []), str(root)]
        with open(tmp_path / f"svscan.{len(started)}.err", "wb") as err:
            proc = subprocess.Popen(argv, env={"PATH": "/usr/bin:/bin", TAG_VAR: tag}, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        started.append((proc, tag))
        return proc

    try:
        yield start
    finally:
        for proc, tag in started:
            with contextlib.suppress(OSError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            for _ in range(5):
                live = [p for p in tagged(tag) if p.pid != os.getpid()]
                if not live:
                    break
                kill_procs(live)


def svc(*args: str) -> None:
    subprocess.run([ours("svc"), *args], check=True, timeout=10, env={"PATH": "/usr/bin:/bin"})


def test_real_svscan_tree(tmp_path, svscan):
    root = tmp_path / "sv"
    service(root, "a", log="exec cat > /dev/null")
    service(root, "b")
    table = tmp_path / "table"
    proc = svscan(root, table)
    assert wait_until(table.exists, 10)
    log = Log()
    collector = mc.SharedMemoryCollector([], [str(table)], log=log)
    d = str(root)

    def up(data: dict, name: str) -> float | None:
        return value(data, "supervise_up", directory=d, service=name)

    settle(collector, lambda data: up(data, "a") == 1 and up(data, "a/log") == 1 and up(data, "b") == 1)
    svc("-k", str(root / "b"))
    data = settle(collector, lambda data: value(data, "supervise_restarts_total", directory=d, service="b") == 1
                  and up(data, "b") == 1)
    assert value(data, "supervise_starts_total", directory=d, service="b") == 2
    assert value(data, "supervise_last_exit_status", directory=d, service="b") == 128 + signal.SIGKILL
    assert value(data, "supervise_last_exit_signal", directory=d, service="b") == signal.SIGKILL
    svc("-d", str(root / "a"))
    data = settle(collector, lambda data: up(data, "a") == 0)
    labels = {"directory": d, "service": "a"}
    assert value(data, "supervise_want_up", **labels) == 0
    assert value(data, "supervise_normally_up", **labels) == 1
    assert value(data, "supervise_restarts_total", **labels) == 0
    assert value(data, "supervise_last_exit_status", **labels) == 128 + signal.SIGTERM
    assert value(data, "supervise_state_since_seconds", **labels) == pytest.approx(time.time(), abs=30)
    assert value(data, "supervise_up", directory=d, service="a/log") == 1
    assert value(data, "svscan_services", directory=d) == 2
    assert value(data, "svscan_scans_total", directory=d) >= 1
    assert value(data, "svscan_scan_errors_total", directory=d) == 0
    assert log == []

    proc.kill()
    proc.wait(10)
    data = settle(collector, lambda data: value(data, "prefork_exporter_source_up", kind="services",
                                                path=str(table)) == 0)
    assert not [n for n in names(data) if n.startswith(("supervise_", "svscan_"))]
    assert log == [f"prefork-exporter: warning: services {table}: svscan pid {proc.pid} is not running"]


def test_real_svscan_found_from_its_directory(tmp_path, svscan):
    root = tmp_path / "sv"
    service(root, "only")
    default = st.default_path(str(root), st.KIND_SVSCAN)
    try:
        svscan(root, None)
        collector = mc.SharedMemoryCollector([], [str(root)])
        data = settle(collector, lambda data: value(data, "supervise_up", directory=str(root), service="only") == 1)
        assert value(data, "prefork_exporter_source_up", kind="services", path=str(root)) == 1
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(default)


def test_rendered_values_are_finite(tmp_path):
    """Every sample value is a finite number (no NaN/Inf leaks from a half-written table)."""
    fill_board(make_board(tmp_path / "board"))
    data = samples(mc.SharedMemoryCollector([str(tmp_path / "board")]).render())
    assert all(math.isfinite(v) for v in data.values())
