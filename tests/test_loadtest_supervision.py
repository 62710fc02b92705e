"""Smoke tests of the supervision benchmark (loadtest/supervision.py): structure and teardown, never speed."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import psutil
import pytest
from conftest import ours, real
from test_loadtest_reporting import check_outputs, committed_digests

from loadtest import supervision as sv


def _processes_under(path: Path) -> list[int]:
    """Pids of live processes whose cwd is inside PATH (every service and svscan of a tree has one)."""
    root = str(path.resolve())
    found = []
    for p in psutil.process_iter():
        try:
            cwd = p.cwd()
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.Error:
            continue
        if cwd == root or cwd.startswith(root + os.sep):
            found.append(p.pid)
    return found


def _needs_perl() -> str:
    perl = shutil.which("perl")
    if perl is None:
        pytest.skip("perl is not installed (the latency services are Perl)")
    return perl


def _tiny_args(tmp_path: Path, *extra: str) -> list[str]:
    return ["--services", "2,4", "--ops", "6", "--latency-services", "3", "--rounds", "2", "--idle-seconds", "1",
            "--idle-services", "3", "--settle", "1.2", "--workdir", str(tmp_path / "work"),
            "--out", str(tmp_path / "res"), *extra]


@pytest.mark.differential
def test_tiny_run_measures_both_and_reports(tmp_path: Path) -> None:
    real("svscan")
    real("supervise")
    _needs_perl()
    (tmp_path / "work").mkdir()
    before = committed_digests(sv.BENCH)
    assert sv.main(_tiny_args(tmp_path, "--prefork", ours("svscan"))) == 0
    data = check_outputs(sv.BENCH, sv.main, tmp_path / "res", before, tmp_path)  # its folder only; --publish

    assert [row["services"] for row in data["memory"]] == [2, 4]
    for row in data["memory"]:
        for impl in sv.IMPLS:
            mem = row[impl]
            assert mem["pss"] > 0 and mem["rss"] >= mem["pss"]
            assert mem["service_processes"] == row["services"]
        assert row["debian"]["processes"] == row["services"] + 1  # svscan + one supervise each
        assert row["prefork"]["processes"] == 1
    assert set(data["marginal"]) == set(sv.IMPLS)

    lat = data["latency"]
    assert lat["services"] == 3 and lat["ops"] == 6
    for impl in sv.IMPLS:
        for what in ("term", "restart"):
            s = lat[impl][what]
            assert s["n"] + s["timeouts"] == 6
            assert s["n"] > 0 and 0 < s["p50_ms"] <= s["p99_ms"] <= s["max_ms"]
    assert lat["floor"]["n"] > 0 and lat["floor"]["p50_ms"] > 0

    idle = data["idle"]
    assert idle["services"] == 3 and idle["seconds"] >= 1.0
    assert idle["debian"]["processes"] == 4 and idle["prefork"]["processes"] == 1
    for impl in sv.IMPLS:
        assert idle[impl]["cpu_s"] >= 0 and idle[impl]["run_s"] >= 0

    assert "loadtest.supervision" in data["command"] and "--ops 6" in data["command"]
    text = sv.render_markdown(data)
    for heading in ("## Memory", "## Control latency", "## Idle cost", "## Machine", "## Reproduce"):
        assert heading in text
    assert data["command"] in text
    # every tree was removed and every process it had is gone
    assert list((tmp_path / "work").iterdir()) == []
    assert _processes_under(tmp_path / "work") == []


@pytest.mark.differential
def test_failing_supervisor_tears_down_the_other_tree(tmp_path: Path) -> None:
    real("svscan")
    broken = tmp_path / "svscan"
    broken.write_text("#!/bin/sh\necho 'svscan: fatal: broken on purpose' >&2\nexit 111\n")
    broken.chmod(0o755)
    (tmp_path / "work").mkdir()
    rc = sv.main(_tiny_args(tmp_path, "--phases", "memory", "--prefork", str(broken)))
    assert rc == 1
    assert not (tmp_path / "out.json").exists()
    assert list((tmp_path / "work").iterdir()) == []
    assert _processes_under(tmp_path / "work") == []


def test_missing_perl_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "work").mkdir()
    rc = sv.main(_tiny_args(tmp_path, "--phases", "latency", "--perl", str(tmp_path / "no-perl-here"),
                            "--debian", sys.executable, "--prefork", sys.executable))  # never started
    assert rc == 1
    assert "need Perl" in capsys.readouterr().err
    assert list((tmp_path / "work").iterdir()) == []


def test_zero_services_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        sv.parse_args(["--services", "0,100"])
    assert exc.value.code == 2
    assert "1..1000" in capsys.readouterr().err


def test_more_than_daemontools_limit_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        sv.parse_args(["--services", "100,1001"])
    assert "daemontools' svscan limit" in capsys.readouterr().err


def test_non_numeric_services_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        sv.parse_args(["--services", "100,many"])
    assert "comma-separated" in capsys.readouterr().err


def test_unknown_phase_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        sv.parse_args(["--phases", "memory,speed"])
    assert "--phases" in capsys.readouterr().err


def test_zero_ops_is_refused() -> None:
    with pytest.raises(SystemExit):
        sv.parse_args(["--ops", "0"])


def test_zero_idle_seconds_is_refused() -> None:
    with pytest.raises(SystemExit):
        sv.parse_args(["--idle-seconds", "0"])


def test_defaults_match_the_issue() -> None:
    args = sv.parse_args([])
    assert args.services == [100, 1000] and args.ops == 1000 and args.idle_seconds == 60.0
    assert args.idle_services == 100 and args.phases == ["memory", "latency", "idle"]
    cmd = sv.reproduce_command(args)
    assert "--services 100,1000" in cmd and "--ops 1000" in cmd and "--idle-seconds 60" in cmd


def test_split_and_summary_helpers() -> None:
    assert sv.split_evenly(10, 4) == [3, 3, 2, 2]
    assert sum(sv.split_evenly(1000, 4)) == 1000
    s = sv.latency_summary([0.003, 0.001, 0.002], timeouts=1)
    assert s["n"] == 3 and s["timeouts"] == 1
    assert s["p50_ms"] == pytest.approx(2.0) and s["max_ms"] == pytest.approx(3.0)
    assert sv.latency_summary([], 0)["p99_ms"] == 0.0


def _fake_data() -> dict:
    """A results dict shaped like benchmark()'s, without running anything."""
    def mem(pss: int, procs: int, n: int) -> dict:
        return {"rss": 2 * pss, "pss": pss, "uss": pss // 2, "processes": procs, "root_pss": pss // 10,
                "others_pss": pss - pss // 10, "service_processes": n, "seconds_to_up": 0.5}

    rows = [{"services": 100, "debian": mem(10 << 20, 101, 100), "prefork": mem(6 << 20, 1, 100)},
            {"services": 1000, "debian": mem(100 << 20, 1001, 1000), "prefork": mem(14 << 20, 1, 1000)}]
    lat = {"services": 100, "rounds": 4, "ops": 3, "floor": sv.latency_summary([0.002], 0)}
    for impl in sv.IMPLS:
        lat[impl] = {"term": sv.latency_summary([0.0003, 0.0004, 0.001], 0),
                     "restart": sv.latency_summary([0.005, 0.006, 0.009], 0)}
    idle = {"services": 100, "seconds": 60.0}
    for impl in sv.IMPLS:
        idle[impl] = {"cpu_s": 0.01, "run_s": 0.004, "switches": 120.0, "processes": 1, "vanished": 0,
                      "cpu_ms_per_min": 10.0, "run_ms_per_min": 4.0, "switches_per_min": 120.0}
    data = {"command": ".venv/bin/python -m loadtest.supervision --publish", "when": "2024-01-01T00:00:00+0000",
            "machine": {"cpu_model": "test", "nproc": 2, "kernel": "6", "python": "3.11", "load_average": [0.1] * 3,
                        "daemontools": "1:0.76-8.1", "prefork_commit": "abc"},
            "config": {"settle": 6.0, "min_uptime": sv.MIN_UPTIME},
            "commands": {"debian": "env PATH=/usr/bin:/bin /usr/bin/svscan DIR", "prefork": "svscan DIR"},
            "memory": rows, "marginal": {impl: sv.marginal(rows, impl) for impl in sv.IMPLS},
            "latency": lat, "idle": idle, "load_average_end": [0.1] * 3}
    data["targets"] = sv.evaluate_targets(data)
    return data


def test_targets_are_evaluated_against_the_issue() -> None:
    data = _fake_data()
    targets = {t["target"]: t for t in data["targets"]}
    assert len(targets) == 5  # three memory targets, a p99 target for each latency
    small = next(t for name, t in targets.items() if "at 100 services" in name)
    large = next(t for name, t in targets.items() if "at 1000 services" in name)
    per = next(t for name, t in targets.items() if "marginal" in name)
    assert small["met"] and large["met"]  # 0.6x and 0.14x
    assert per["met"] and per["measured"] == f"{(8 << 20) / 900 / 1024:.1f} KiB"
    data["memory"][1]["prefork"]["pss"] = 30 << 20  # 0.3x at 1000, (30-6) MiB / 900 = 27 KiB per service
    data["marginal"] = {impl: sv.marginal(data["memory"], impl) for impl in sv.IMPLS}
    missed = [t for t in sv.evaluate_targets(data) if not t["met"]]
    assert len(missed) == 2


def test_latency_targets_compare_p99_and_say_whether_it_is_noise() -> None:
    data = _fake_data()
    lat = data["latency"]
    slow = [0.0001 * (i + 1) for i in range(200)]  # 0.1..20 ms
    lat["debian"]["term"] = sv.latency_summary(slow, 0)
    lat["prefork"]["term"] = sv.latency_summary([x * 2 for x in slow], 0)  # twice as slow everywhere
    lat["debian"]["restart"] = sv.latency_summary(slow, 0)
    lat["prefork"]["restart"] = sv.latency_summary(slow, 0)  # the same samples
    lat["ratios"] = sv.latency_ratios(lat)
    targets = {t["target"].split(" p99")[0]: t for t in sv.evaluate_targets(data) if "p99" in t["target"]}
    term, restart = targets["`d`→TERM"], targets["exit→restart"]
    assert not term["met"] and term["measured"] == "2.000 ×"
    assert "daemontools is faster beyond noise" in term["by"]
    assert restart["met"] and restart["measured"] == "1.000 ×"
    assert "within noise" in restart["by"]


def test_ratio_interval_brackets_the_ratio() -> None:
    base = [0.001 * (1 + (i * 7919) % 997 / 997) for i in range(1000)]
    lo, hi = sv.ratio_interval([x * 1.5 for x in base], base, 99, iterations=300)
    assert 1.3 < lo <= 1.5 <= hi < 1.7
    lo, hi = sv.ratio_interval(base, base, 50, iterations=300)
    assert lo < 1.0 < hi or lo == hi == 1.0
    assert sv.ratio_interval([], base, 99) == (0.0, 0.0)


def test_paired_operations_meet_both_implementations_in_random_order() -> None:
    calls: list[tuple[str, str, str, int]] = []

    class FakeRig:
        def __init__(self, impl: str) -> None:
            self.impl = impl
            self.turn = 0

        def next_target(self) -> tuple[str, int, float]:
            self.turn += 1
            return f"s{self.turn}", 100 + self.turn, 0.0  # ready long ago: no sleep

        def term_op(self, name: str, pid: int) -> None:
            calls.append((self.impl, "term", name, pid))

    rigs = {impl: FakeRig(impl) for impl in sv.IMPLS}
    rng = sv.random.Random(3)
    for _ in range(40):
        sv.paired_op(rigs, "term", rng)  # type: ignore[arg-type]
    assert len(calls) == 80
    pairs = [calls[i:i + 2] for i in range(0, 80, 2)]
    assert all({c[0] for c in pair} == set(sv.IMPLS) for pair in pairs)  # one of each in every pair
    firsts = [pair[0][0] for pair in pairs]
    assert 5 < firsts.count("debian") < 35  # each goes first some of the time
    assert [c[2:] for c in calls if c[0] == "prefork"] == [(f"s{i}", 100 + i) for i in range(1, 41)]


def test_markdown_has_tables_ratios_and_reproduce_line() -> None:
    text = sv.render_markdown(_fake_data())
    assert "| 100 | 10.00 | 6.00 | 0.600 |" in text
    assert "| 1000 | 100.00 | 14.00 | 0.140 |" in text
    assert "`d`→TERM prefork/daemontools" in text and "## Targets" in text
    assert "```\n.venv/bin/python -m loadtest.supervision --publish\n```" in text


def test_chart_is_written(tmp_path: Path) -> None:
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib is in the bench extra")
    out = sv.write_chart(_fake_data(), tmp_path / "supervision.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_render_rebuilds_report_from_json(tmp_path: Path) -> None:
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib is in the bench extra")
    src = tmp_path / "supervision.json"
    src.write_text(json.dumps(_fake_data()))
    assert sv.main(["--render", str(src)]) == 0  # beside the JSON
    assert (tmp_path / "SUPERVISION.md").read_text() == sv.render_markdown(_fake_data())
    assert (tmp_path / "supervision.png").stat().st_size > 0


@pytest.mark.differential
def test_all_features_memory_has_every_file_a_log_and_s6_status(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    real("svscan")
    real("supervise")
    (tmp_path / "work").mkdir()
    seen: dict[tuple[str, int, bool], dict] = {}
    memory = sv.Tree.memory

    def memory_and_look(self: sv.Tree) -> dict:
        """What the tree looks like at the measurement: files of its first service, status sizes, readiness."""
        first = self.scan / self.names[0]
        seen[(self.impl, len(self.names), self.logged)] = {
            "files": sorted(p.name for p in first.iterdir() if p.name not in ("supervise", "event")),
            "status": (first / "supervise" / "status").stat().st_size,
            "log_status": (first / "log" / "supervise" / "status").stat().st_size if self.logged else 0,
            "event": (first / "event").is_dir(),
            "flags": (first / "supervise" / "status").read_bytes()[34:35]}  # s6's: 8 is ready while up
        return memory(self)

    monkeypatch.setattr(sv.Tree, "memory", memory_and_look)
    assert sv.main(_tiny_args(tmp_path, "--phases", "memory", "--services", "2,3", "--features", "all", "--s6",
                              "--prefork", ours("svscan"))) == 0
    data = json.loads(next((tmp_path / "res").glob("*.json")).read_text())
    assert data["config"]["features"] == "all" and data["config"]["s6"] is True
    assert "--features all --s6" in data["command"] and "--s6 DIR" in data["commands"]["prefork"]
    assert [row["services"] for row in data["memory"]] == [2, 3]  # the plain trees are still measured
    assert [row["services"] for row in data["memory_features"]] == [2, 3]
    for row in data["memory_features"]:
        n = row["services"]
        assert row["debian"]["processes"] == 1 + 2 * n  # svscan, a supervise for each service and each log
        assert row["prefork"]["processes"] == 1
        for impl in sv.IMPLS:
            assert row[impl]["service_processes"] == 2 * n and row[impl]["pss"] > 0
    assert set(data["marginal_features"]) == set(sv.IMPLS)
    assert any("with all features" in t["target"] for t in data["targets"])
    wanted = sorted(["run", "log", *(name for name in sv.FEATURE_FILES if "/" not in name)])
    for n in (2, 3):
        prefork, debian = seen[("prefork", n, True)], seen[("debian", n, True)]
        assert prefork["files"] == wanted
        assert prefork["status"] == prefork["log_status"] == 35 and prefork["event"]  # --s6: s6's status, event/
        assert prefork["flags"][0] & 8  # the run wrote its newline on notification-fd: ready
        assert debian["status"] == debian["log_status"] == 18
        assert seen[("prefork", n, False)]["files"] == ["run"] and seen[("prefork", n, False)]["status"] == 35
    text = (tmp_path / "res" / "SUPERVISION.md").read_text()
    assert "### With all features" in text and "`--s6`" in text
    assert list((tmp_path / "work").iterdir()) == []
    assert _processes_under(tmp_path / "work") == []


def test_features_and_s6_are_refused_when_misspelt() -> None:
    with pytest.raises(SystemExit):
        sv.parse_args(["--features", "some"])
    args = sv.parse_args([])
    assert args.features == "none" and not args.s6
    assert "--features" not in sv.reproduce_command(args) and "--s6" not in sv.reproduce_command(args)
