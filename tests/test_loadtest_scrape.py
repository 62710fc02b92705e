"""Smoke tests of the scrape benchmark (loadtest/scrape_bench.py): structure and counts on tiny histories, never speed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import ours
from test_loadtest_reporting import check_outputs, committed_digests

from loadtest import scrape_bench as bench
from prefork import scoreboard_read
from prefork.metrics.collector import SharedMemoryCollector


def test_scoreboard_history_keeps_one_file_and_cumulative_counters(tmp_path):
    facts = bench.build_scoreboard(tmp_path / "board", workers=3, restarts=7, per_life=2)
    assert facts == {"files": 1, "bytes": 256 + 3 * 256 + 16}  # header, slots, the trailer (an IPv6 listener's address)
    snap = scoreboard_read.read(str(tmp_path / "board"))
    assert snap.worker_restarts == 7 and snap.name == bench.SERVICE
    assert sum(s.generation for s in snap.slots) == 10
    assert sum(s.accepted for s in snap.slots) == sum(s.exit_zero for s in snap.slots) == 20
    assert sorted(s.pid for s in snap.slots) == [bench.FAKE_PID + i for i in (7, 8, 9)]  # the last three lives
    assert all(s.state == "ready" for s in snap.slots)
    bigger = bench.build_scoreboard(tmp_path / "board2", workers=3, restarts=500, per_life=2)
    assert bigger["bytes"] == facts["bytes"]


def test_multiprocess_history_leaves_files_per_past_pid(tmp_path):
    before = (os.environ.get("PROMETHEUS_MULTIPROC_DIR"), bench_value_class())
    facts = bench.build_multiprocess(tmp_path / "mp", workers=2, restarts=3, per_life=2)
    names = sorted(p.name for p in (tmp_path / "mp").iterdir())
    pids = [bench.FAKE_PID + i for i in range(5)]
    assert names == sorted([f"counter_{p}.db" for p in pids] + [f"histogram_{p}.db" for p in pids]
                           + [f"gauge_livesum_{p}.db" for p in pids[-2:]])
    assert facts["files"] == 12
    assert (os.environ.get("PROMETHEUS_MULTIPROC_DIR"), bench_value_class()) == before  # restored


def bench_value_class() -> object:
    from prometheus_client import values

    return values.ValueClass


@pytest.mark.parametrize("impl", bench.IMPLS)
def test_both_sides_expose_the_same_counts(tmp_path, impl):
    source = tmp_path / impl
    if impl == "prefork":
        bench.build_scoreboard(source, workers=2, restarts=5, per_life=3)
    else:
        bench.build_multiprocess(source, workers=2, restarts=5, per_life=3)
    body = bench.renderer(impl, source)()
    assert bench.accepted_total(body) == 21
    from prometheus_client.parser import text_string_to_metric_families

    found = {s.name: s.value for f in text_string_to_metric_families(body.decode()) for s in f.samples
             if s.labels.get("service") == bench.SERVICE and s.labels.get("exit", "zero") == "zero"
             and s.labels.get("le") in (None, "0.01")}
    assert found["tcpserver_program_exits_total"] == 21
    assert found["tcpserver_connection_duration_seconds_count"] == 21
    assert found["tcpserver_connection_duration_seconds_bucket"] == 21  # 10 ms connections, le="0.01"
    assert found["tcpserver_connections_denied_total"] == found["tcpserver_connections_dropped_total"] == 0


def test_prefork_renderer_is_the_exporters_collector(tmp_path):
    bench.build_scoreboard(tmp_path / "board", workers=1, restarts=0, per_life=1)
    assert bench.renderer("prefork", tmp_path / "board")() == SharedMemoryCollector([str(tmp_path / "board")]).render()


def test_accepted_total_is_none_without_the_series():
    assert bench.accepted_total(b"# TYPE other counter\nother_total 3.0\n") is None


def test_bad_command_lines_are_refused():
    for argv in (["--workers", "0"], ["--workers", "a"], ["--restarts", "-1"], ["--modes", "ftp"],
                 ["--min-scrapes", "5", "--max-scrapes", "2"], ["--per-life", "0"]):
        with pytest.raises(SystemExit) as e:
            bench.parse_args(argv)
        assert e.value.code == 2, argv


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> dict:
    """One whole run on tiny counts, both modes, through main() (servers started and stopped by pid)."""
    tmp = tmp_path_factory.mktemp("scrape")
    out = tmp / "res"
    before = committed_digests(bench.BENCH)
    code = bench.main(["--workers", "1,2", "--restarts", "0,4", "--seconds", "0", "--min-scrapes", "2",
                       "--warmup", "1", "--exporter", ours("prefork-exporter"), "--workdir", str(tmp / "work"),
                       "--out", str(out)])
    assert code == 0
    return {"data": json.loads((out / "scrape.json").read_text()), "tmp": tmp, "out": out, "before": before}


def test_run_covers_every_case_with_correct_counts(tiny_run):
    data = tiny_run["data"]
    cases = {(c["impl"], c["workers"], c["restarts"]): c for c in data["cases"]}
    assert set(cases) == {(i, w, r) for i in bench.IMPLS for w in (1, 2) for r in (0, 4)}
    for (impl, w, r), c in cases.items():
        assert c["correct"] and c["expected_accepted"] == (w + r) * 3
        assert c["files"] == (1 if impl == "prefork" else 2 * (w + r) + w)
        for mode in bench.MODES:
            m = c[mode]
            assert m["scrapes"] >= 2 and m["accepted_total"] == c["expected_accepted"]
            assert 0 < m["min_ms"] <= m["median_ms"] <= m["max_ms"] and m["cpu_ms_per_scrape"] >= 0
            assert m["exposition_bytes"] > 0


def test_run_summary_and_leftovers(tiny_run):
    data = tiny_run["data"]
    assert set(data["summary"]) == set(bench.MODES)
    for s in data["summary"].values():
        assert set(s["ratios"]) == {"1/0", "1/4", "2/0", "2/4"}
        assert set(s["growth_with_restarts"]) == set(bench.IMPLS)
        assert s["meets_target"] is None  # fewer than 64 workers: not measured
    assert data["config"]["workers"] == [1, 2] and data["versions"]["prometheus_client"]
    assert "loadtest.scrape_bench" in data["command"]
    assert list((tiny_run["tmp"] / "work").iterdir()) == []  # the case files are removed


def test_report_and_chart_render(tiny_run, tmp_path):
    data = tiny_run["data"]
    text = bench.render_markdown(data)
    assert text.startswith("# Scrape benchmark\n")
    assert "not measured (fewer than 64 workers)" in text
    assert text.count("| 2 | 4 | multiprocess |") == 2  # one row per mode
    pytest.importorskip("matplotlib")
    chart = bench.write_chart(data, tmp_path / "scrape.png")
    assert chart.read_bytes().startswith(b"\x89PNG")


def test_run_writes_its_folder_and_publishes_only_when_asked(tiny_run, tmp_path):
    pytest.importorskip("matplotlib")
    check_outputs(bench.BENCH, bench.main, tiny_run["out"], tiny_run["before"], tmp_path)


def test_render_option_rebuilds_the_report_only(tiny_run, tmp_path):
    pytest.importorskip("matplotlib")
    src = tmp_path / "in.json"
    src.write_text(json.dumps(tiny_run["data"]))
    assert bench.main(["--render", str(src)]) == 0  # beside the JSON
    assert (tmp_path / "SCRAPE.md").read_text() == bench.render_markdown(tiny_run["data"])
    assert Path(tmp_path / "scrape.png").stat().st_size > 0
