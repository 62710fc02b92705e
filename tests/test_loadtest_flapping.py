"""Smoke tests of the flapping-tree benchmark (loadtest/flapping.py): figures, back-off seen, teardown; never speed."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import ours
from test_loadtest_reporting import check_outputs, committed_digests
from test_loadtest_supervision import _processes_under

from loadtest import flapping as fl
from loadtest import supervision as sv


def _tiny_args(tmp_path: Path, *extra: str) -> list[str]:
    return ["--services", "12", "--flapping", "4", "--seconds", "6", "--bin-seconds", "2", "--ops", "6", "--settle", "1",
            "--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "res"), *extra]


@pytest.fixture
def tables(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The service-table paths of every tree the run stops (each must be gone afterwards)."""
    seen: list[str] = []
    stop = sv.Tree.stop

    def recording_stop(self: sv.Tree, timeout: float = 5.0) -> None:
        if self.table:
            seen.append(self.table)
        stop(self, timeout)

    monkeypatch.setattr(sv.Tree, "stop", recording_stop)
    return seen


def test_tiny_run_has_its_figures_and_shows_the_back_off(tmp_path: Path, tables: list[str]) -> None:
    if shutil.which("perl") is None:
        pytest.skip("perl is not installed (the services are Perl)")
    (tmp_path / "work").mkdir()
    before = committed_digests(fl.BENCH)
    assert fl.main(_tiny_args(tmp_path, "--prefork", ours("svscan"))) == 0
    data = check_outputs(fl.BENCH, fl.main, tmp_path / "res", before, tmp_path)

    trees = data["trees"]
    assert list(trees) == list(fl.TREES)
    for kind, t in trees.items():
        assert len(t["samples"]) >= 6, kind  # one a second over 6 s
        cpu = t["cpu"]
        assert [b["ops"] for b in cpu["bins"]] == [False, True, False], kind  # 2 s bins: quiet, operations, quiet
        assert cpu["mean_pct"] > 0 and cpu["ops_pct"] > 0 and cpu["quiet_pct"] >= 0, kind
        assert t["memory"]["rss"]["start"] > 0 and t["memory"]["pss"]["end"] > 0, kind
        term = t["term"]
        assert term["n"] > 0 and 0 < term["p50_ms"] <= term["p99_ms"], kind
        assert t["starts"]["healthy_restarts"] <= term["n"] + term["timeouts"], kind  # only a `u` racing the exit
    ops = {t["term"]["n"] + t["term"]["timeouts"] for t in trees.values()}
    assert len(ops) == 1 and 2 <= ops.pop() <= 6  # paired: every tree got the same operations

    base, backoff, plain = trees["baseline"]["starts"], trees["flapping"]["starts"], trees["no_backoff"]["starts"]
    assert base["flappers"] == 0 and base["starts_total"] == 0
    assert backoff["flappers"] == plain["flappers"] == 4
    assert backoff["starts_window"] > 0 and backoff["restarts_total"] > 0  # the flappers did flap
    assert plain["starts_window"] >= 4 * 4  # about one start a second each: 1 s throttle only
    assert backoff["starts_total"] < plain["starts_total"]  # the back-off spaced them out
    assert backoff["backoff_ms_max"] >= 2000 and plain["backoff_ms_max"] == 0
    assert plain["peak_per_sample"] >= 2 and backoff["peak_per_sample"] >= 1 and base["peak_per_sample"] == 0

    assert set(data["ratios"]) == {"flapping", "no_backoff"}
    lo, hi = data["ratios"]["flapping"]["p99_interval"]
    assert 0 < lo <= hi
    assert len(data["targets"]) == 3
    assert "loadtest.flapping" in data["command"] and "--flapping 4" in data["command"]
    text = fl.render_markdown(data)
    for heading in ("## Targets", "## svscan CPU", "## svscan memory", "## Flapping starts",
                    "## Control latency of the healthy services", "## Machine", "## Reproduce"):
        assert heading in text
    # every tree removed, every process gone, no service table left in /dev/shm
    assert len(tables) == 3 and not any(os.path.exists(p) for p in tables)
    assert list((tmp_path / "work").iterdir()) == []
    assert _processes_under(tmp_path / "work") == []


def test_failing_svscan_tears_down_the_other_trees(tmp_path: Path, tables: list[str]) -> None:
    if shutil.which("perl") is None:
        pytest.skip("perl is not installed")
    broken = tmp_path / "svscan"
    broken.write_text("#!/bin/sh\necho 'svscan: fatal: broken on purpose' >&2\nexit 111\n")
    broken.chmod(0o755)
    (tmp_path / "work").mkdir()
    assert fl.main(_tiny_args(tmp_path, "--prefork", str(broken))) == 1
    assert not (tmp_path / "res").exists()
    assert list((tmp_path / "work").iterdir()) == []
    assert _processes_under(tmp_path / "work") == []


def test_missing_perl_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "work").mkdir()
    assert fl.main(_tiny_args(tmp_path, "--perl", str(tmp_path / "no-perl-here"), "--prefork", ours("svscan"))) == 1
    assert "need Perl" in capsys.readouterr().err
    assert list((tmp_path / "work").iterdir()) == []


@pytest.mark.parametrize("argv", [["--services", "2"], ["--flapping", "0"], ["--services", "10", "--flapping", "9"],
                                  ["--backoff-max", "0"], ["--flap-max-ms", "-1"], ["--seconds", "19"], ["--bin-seconds", "1"], ["--ops", "0"],
                                  ["--settle", "-1"]], ids=" ".join)
def test_bad_settings_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        fl.parse_args(argv)
    assert exc.value.code == 2


def test_defaults_match_the_brief() -> None:
    args = fl.parse_args([])
    assert (args.services, args.flapping, args.seconds, args.backoff_max) == (200, 67, 120.0, 8000)
    cmd = fl.reproduce_command(args)
    assert "--services 200 --flapping 67 --backoff-max 8000" in cmd and "--seconds 120" in cmd
    assert "--no-throttle-tree" not in cmd
    assert "--no-throttle-tree" in fl.reproduce_command(fl.parse_args(["--no-throttle-tree"]))


def test_flappers_are_spread_through_the_tree() -> None:
    names = [f"s{i:04d}" for i in range(1, 201)]
    picked = fl.flapper_names(names, 67)
    assert len(set(picked)) == 67 and picked[:3] == ["s0001", "s0003", "s0006"] and picked[-1] == "s0198"
    assert fl.flapper_names(names, 0) == []
    assert fl.flapper_names(names[:12], 4) == ["s0001", "s0004", "s0007", "s0010"]


def _rows(seconds: int, cpu_per_s: float, rss_growth_per_s: int, starts_per_s: int = 0) -> list[dict]:
    return [{"t": float(t), "cpu_s": cpu_per_s * t, "run_s": cpu_per_s * t, "switches": 10.0 * t,
             "rss": (10 << 20) + rss_growth_per_s * t, "pss": (8 << 20) + rss_growth_per_s * t, "uss": 6 << 20,
             "starts": starts_per_s * t, "restarts": starts_per_s * t, "healthy_restarts": 0,
             "backoff_ms": 8000 if starts_per_s else 0} for t in range(seconds + 1)]


def test_cpu_bins_and_memory_growth_from_samples() -> None:
    rows = _rows(120, 0.01, 1024)  # 1% of a core; 1 KiB more RSS each second
    for r in rows[10:20] + rows[30:40]:  # +0.1 s of CPU a second in two operations bins
        r["run_s"] += 0.1 * (r["t"] - 10 if r["t"] < 20 else 10 + r["t"] - 30)
    for r in rows[20:30]:
        r["run_s"] += 1.0
    for r in rows[40:]:
        r["run_s"] += 2.0
    cpu = fl.cpu_figures(rows, 10)
    assert [b["ops"] for b in cpu["bins"]] == [False, True] * 6
    assert [round(b["pct"], 6) for b in cpu["bins"][:5]] == [1.0, 11.0, 1.0, 11.0, 1.0]
    assert cpu["quiet_pct"] == pytest.approx(1.0) and cpu["max_quiet_bin_pct"] == pytest.approx(1.0)
    assert cpu["ops_pct"] == pytest.approx(1.0 + 20 / 6) and cpu["max_bin_pct"] == pytest.approx(11.0)
    assert cpu["mean_pct"] == pytest.approx(1.0 + 2 / 1.2) and cpu["switches_per_s"] == pytest.approx(10.0)
    mem = fl.memory_figures(rows)
    assert mem["rss"]["growth"] == 111 * 1024  # medians of t 0..9 and 111..120: 4.5 s and 115.5 s
    assert mem["rss_slope_kib_per_min"] == pytest.approx(60.0)
    assert fl.cpu_figures(rows[:1], 10)["bins"] == []
    starts = fl.flapper_figures(_rows(60, 0.01, 0, starts_per_s=2), 4)
    assert starts["starts_window"] == 120 and starts["per_flapper_per_min"] == pytest.approx(30.0)


def _fake_data(cpu: float = 0.01, growth: int = 0, slow: float = 1.0) -> dict:
    trees = {}
    for k, kind in enumerate(fl.TREES):
        rows = _rows(30, cpu * (1.0, 1.5, 3.0)[k], growth, starts_per_s=k)
        samples = [0.0001 * (i + 1) * (slow if kind == "flapping" else 1.0) for i in range(200)]
        trees[kind] = {"label": fl.LABELS[kind], "flappers": 4 if k else 0, "backoff_max_ms": 8000 if k == 1 else None,
                       "samples": rows, "cpu": fl.cpu_figures(rows, 10), "memory": fl.memory_figures(rows),
                       "starts": fl.flapper_figures(rows, 4 if k else 0), "term": sv.latency_summary(samples, 0)}
    data = {"command": ".venv/bin/python -m loadtest.flapping --publish", "when": "2024-01-01T00:00:00+0000",
            "machine": {"cpu_model": "test", "nproc": 2, "kernel": "6", "python": "3.11", "load_average": [0.1] * 3,
                        "prefork_commit": "abc"},
            "config": {"services": 200, "flapping": 67, "backoff_max_ms": 8000, "flap_max_ms": 200, "seconds": 30,
                       "ops": 200, "seed": 1, "op_margin": 0.5, "settle": 6, "trees": list(fl.TREES), "sample_seconds": 1.0,
                       "bin_seconds": 10},
            "commands": {kind: "svscan DIR" for kind in fl.TREES}, "trees": trees, "load_average_end": [0.1] * 3}
    data["ratios"] = fl.ratios({kind: t["term"] for kind, t in trees.items()})
    data["targets"] = fl.evaluate_targets(data)
    return data


def test_operations_run_only_in_their_bins(monkeypatch: pytest.MonkeyPatch) -> None:
    """drive() on a fake clock: each operation (0.3 s here) starts in an operations bin, before its last 0.5 s;
    a bin's unfinished share moves to the next; the call returns at the end of the window."""
    now = [100.0]
    started: list[float] = []

    def op(rigs: object, what: str, rng: object) -> None:
        started.append(now[0] - 100.0)
        now[0] += 0.3

    def sleep(seconds: float) -> None:
        now[0] += max(seconds, 0.0)

    monkeypatch.setattr(fl.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(fl.time, "sleep", sleep)
    monkeypatch.setattr(fl, "paired_op", op)
    sampler = fl.Sampler({}, {}, {}, 50.0)
    sampler.t0 = 100.0
    progress = {"ops": 0}
    fl.drive({}, 80, 50.0, 10, fl.random.Random(1), progress, sampler)  # bins 10-20 and 30-40: 40 each, 9.5 s
    assert now[0] == pytest.approx(150.0)
    assert all(10 <= t < 19.5 or 30 <= t < 39.5 for t in started), started
    assert progress["ops"] == len(started) == 2 * 32  # 0.3 s each: 32 fit before 19.5 s; the rest can't be made up
    assert fl.ops_bins(120, 10) == [1, 3, 5, 7, 9, 11] and fl.ops_bins(25, 10) == [1]


def test_targets_are_judged_on_the_flapping_tree() -> None:
    met = {t["target"]: t for t in _fake_data()["targets"]}
    assert all(t["met"] for t in met.values())
    assert any("within noise" in t["by"] for t in met.values())  # the same latency samples: ratio 1
    missed = [t for t in _fake_data(cpu=0.03, growth=20 << 10, slow=2.0)["targets"] if not t["met"]]
    assert len(missed) == 3  # 4.5% of a core; 20 KiB a second; twice as slow
    assert "baseline is faster beyond noise" in missed[2]["by"]


def test_markdown_has_tables_and_reproduce_line() -> None:
    text = fl.render_markdown(_fake_data())
    assert "| B flapping, back-off | 1.500 |" in text  # CPU mean, %
    assert "**B flapping, back-off / A baseline**: p50 × 1.000" in text
    assert "```\n.venv/bin/python -m loadtest.flapping --publish\n```" in text


def test_chart_and_render_from_json(tmp_path: Path) -> None:
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib is in the bench extra")
    src = tmp_path / "flapping.json"
    src.write_text(json.dumps(_fake_data()))
    assert fl.main(["--render", str(src)]) == 0  # beside the JSON
    assert (tmp_path / "FLAPPING.md").read_text() == fl.render_markdown(_fake_data())
    assert (tmp_path / "flapping.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
