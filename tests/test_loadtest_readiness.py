"""Smoke tests of the time-to-ready benchmark (loadtest/readiness.py): both implementations measured, plausible
figures, every process and file gone afterwards; never speed."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from conftest import ours, real
from test_loadtest_reporting import check_outputs, committed_digests
from test_loadtest_supervision import _processes_under

from loadtest import readiness as rd
from loadtest import supervision as sv


def _needs_s6_and_perl() -> None:
    for name in ("s6-svscan", "s6-supervise", "s6-svc", "s6-svwait", "s6-svok"):
        real(name)
    if shutil.which("perl") is None:
        pytest.skip("perl is not installed (the service is Perl)")


@pytest.mark.differential
def test_tiny_run_measures_both_and_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _needs_s6_and_perl()
    work = tmp_path / "work"
    work.mkdir()
    tables: list[str] = []
    start = sv.Tree.start

    def start_and_note(self: sv.Tree) -> None:
        start(self)
        if self.table:
            tables.append(self.table)

    monkeypatch.setattr(sv.Tree, "start", start_and_note)
    before = committed_digests(rd.BENCH)
    args = ["--samples", "5", "--delay", "2", "--listener", "--workdir", str(work), "--out", str(tmp_path / "res"),
            "--prefork", ours("svscan")]
    assert rd.main(args) == 0
    data = check_outputs(rd.BENCH, rd.main, tmp_path / "res", before, tmp_path)

    res = data["readiness"]
    assert res["samples"] == 5 and res["delay_ms"] == 2 and res["listener"] is True
    for impl in rd.IMPLS:
        start_ready, svc, notify, spawn = (res[impl][k] for k in ("start", "svc", "notify", "spawn"))
        for s in (start_ready, svc, notify, spawn):
            assert s["n"] == 5 and s["timeouts"] == 0
            assert 0 < s["min_ms"] <= s["p50_ms"] <= s["p99_ms"] <= s["max_ms"] < rd.WAIT_MS
        # the service waits 2 ms between its start and its newline, so start → ready is at least that
        assert start_ready["min_ms"] >= 2.0
        assert notify["p50_ms"] < start_ready["p50_ms"] < svc["p50_ms"]
        for a, b, c in zip(start_ready["samples_ms"], notify["samples_ms"], spawn["samples_ms"], strict=True):
            assert a > 0 and b > 0 and c > 0
        # --listener: our own FIFO's U letter splits newline → returns in two (each list is sorted, so sums only)
        event, svwait = res[impl]["event"], res[impl]["svwait"]
        assert event["n"] == svwait["n"] == 5 and event["min_ms"] > 0 and svwait["min_ms"] >= 0
        assert sum(event["samples_ms"]) + sum(svwait["samples_ms"]) == pytest.approx(sum(notify["samples_ms"]),
                                                                                    abs=0.01)
    for key, _label, _begin, _end in rd.measures(True):
        lo, hi = res["ratios"][key]["p50_interval"]
        assert 0 <= lo <= hi  # U letter → returns can be 0: the letter and the exit woke us at once
        if key != "svwait":
            assert res["ratios"][key]["p50"] > 0 and lo > 0
    assert [t["target"].split(" p")[1][:2] for t in data["targets"]] == ["50", "99"]
    text = rd.render_markdown(data)
    for heading in ("## Targets", "## Method", "## Results", "## Machine", "## Reproduce"):
        assert heading in text
    assert "--samples 5 --delay 2 --seed 1 --listener" in data["command"]
    assert "U letter in event/" in text
    # both trees and every process in them are gone, and prefork's service table too
    assert list(work.iterdir()) == []
    assert _processes_under(work) == []
    assert len(tables) == 2 and all(not Path(t).exists() for t in tables)


@pytest.mark.differential
def test_python_floor_is_measured_beside_both(tmp_path: Path) -> None:
    """--python-floor: loadtest/readyfloor.py supervises a third tree well enough for Debian's s6-svc and
    s6-svwait (-U, -D) every sample, gets its own ratios to s6, and is torn down like the others."""
    _needs_s6_and_perl()
    work = tmp_path / "work"
    work.mkdir()
    args = ["--samples", "4", "--delay", "1", "--python-floor", "--workdir", str(work), "--out", str(tmp_path / "res"),
            "--prefork", ours("svscan")]
    assert rd.main(args) == 0
    data = json.loads((tmp_path / "res" / "readiness.json").read_text())
    res = data["readiness"]
    assert rd.impls(res) == ["s6", "prefork", rd.FLOOR]
    floor = res[rd.FLOOR]
    assert floor["start"]["n"] == 4 and floor["start"]["timeouts"] == 0 and floor["start"]["min_ms"] >= 1.0
    assert set(res["floor_ratios"]) == set(res["ratios"]) and res["floor_ratios"]["start"]["p50"] > 0
    assert "--python-floor" in data["command"] and rd.FLOOR_SCRIPT in data["commands"][rd.FLOOR]
    text = rd.render_markdown(data)
    assert f"start → s6-svwait -U returns, {rd.FLOOR}/s6" in text and f"| {rd.FLOOR} |" in text
    assert list(work.iterdir()) == []
    assert _processes_under(work) == []


@pytest.mark.differential
def test_broken_prefork_is_an_error_and_tears_down_s6(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _needs_s6_and_perl()
    broken = tmp_path / "svscan"
    broken.write_text("#!/bin/sh\necho 'svscan: fatal: broken on purpose' >&2\nexit 111\n")
    broken.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    assert rd.main(["--samples", "2", "--workdir", str(work), "--out", str(tmp_path / "res"),
                    "--prefork", str(broken)]) == 1
    assert "broken on purpose" in capsys.readouterr().err
    assert not (tmp_path / "res").exists()
    assert list(work.iterdir()) == []
    assert _processes_under(work) == []


def test_missing_client_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert rd.main(["--s6-svwait", str(tmp_path / "none"), "--out", str(tmp_path / "res")]) == 1
    assert "s6-svwait" in capsys.readouterr().err and not (tmp_path / "res").exists()


@pytest.mark.parametrize("argv", [["--samples", "0"], ["--delay", "-1"], ["--delay", "5000"]])
def test_bad_settings_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        rd.parse_args(argv)
    assert exc.value.code == 2


def test_defaults_and_reproduce_command() -> None:
    args = rd.parse_args([])
    assert args.samples == 200 and args.delay == 0
    assert rd.reproduce_command(args).endswith("-m loadtest.readiness --samples 200 --delay 0 --seed 1")
    args = rd.parse_args(["--prefork", "/opt/svscan", "--publish"])
    assert "--prefork /opt/svscan --publish" in rd.reproduce_command(args)


def _fake_data(factor: float) -> dict:
    """A results dict shaped like benchmark()'s: prefork's samples are s6's times FACTOR."""
    base = [0.001 * (1 + (i * 7919) % 97 / 97) for i in range(200)]
    res: dict = {"samples": 200, "delay_ms": 0.0, "seed": 1}
    for impl, f in (("s6", 1.0), ("prefork", factor)):
        res[impl] = {key: sv.latency_summary([x * f for x in base], 0) for key, _l, _b, _e in rd.MEASURES}
    res["ratios"] = rd.ratios(res)
    data = {"command": ".venv/bin/python -m loadtest.readiness --samples 200 --delay 0 --seed 1",
            "when": "2024-01-01T00:00:00+0000",
            "machine": {"cpu_model": "test", "nproc": 2, "kernel": "6", "python": "3.11", "load_average": [0.1] * 3,
                        "s6": "2.11", "prefork_commit": "abc"},
            "commands": {"s6": "s6-svscan DIR"}, "readiness": res, "load_average_end": [0.1] * 3}
    data["targets"] = rd.evaluate_targets(data)
    return data


def test_targets_say_met_or_missed_and_whether_it_is_noise() -> None:
    fast, slow = _fake_data(0.5), _fake_data(2.0)
    assert all(t["met"] and "prefork is faster beyond noise" in t["by"] for t in fast["targets"])
    assert all(not t["met"] and "s6 is faster beyond noise" in t["by"] for t in slow["targets"])
    assert slow["targets"][0]["measured"] == "2.000 ×"
    same = _fake_data(1.0)
    assert all(t["met"] and "within noise" in t["by"] for t in same["targets"])


def test_markdown_has_every_measure_and_the_reproduce_line() -> None:
    text = rd.render_markdown(_fake_data(1.25))
    for _key, label, _b, _e in rd.MEASURES:
        assert f"**{label}, prefork/s6**: p50 × 1.250" in text
    assert "| process start → s6-svwait -U returns | prefork |" in text
    assert "```\n.venv/bin/python -m loadtest.readiness --samples 200 --delay 0 --seed 1\n```" in text


def test_render_rebuilds_report_and_chart_from_json(tmp_path: Path) -> None:
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib is in the bench extra")
    src = tmp_path / "readiness.json"
    src.write_text(json.dumps(_fake_data(0.9)))
    assert rd.main(["--render", str(src)]) == 0
    assert (tmp_path / "READINESS.md").read_text() == rd.render_markdown(_fake_data(0.9))
    assert (tmp_path / "readiness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
