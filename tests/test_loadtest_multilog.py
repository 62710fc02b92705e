"""Smoke tests of the multilog benchmark (loadtest/multilog_bench.py): structure and output checks, never speed.

The differential runs use Debian's multilog and prefork's; while prefork's is not installed yet
(prefork.control.log.multilog_cli missing) they run Debian's binary on both sides, which still exercises the harness.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
from pathlib import Path

import pytest
from conftest import ours, real
from test_loadtest_reporting import check_outputs, committed_digests

from loadtest import multilog_bench as mb


def prefork_multilog() -> str:
    """prefork's multilog, or Debian's as a stand-in while prefork's module is not written yet."""
    if importlib.util.find_spec("prefork.control.log.multilog_cli") is None:
        return real("multilog")
    return ours("multilog")


@pytest.fixture(scope="module")
def small_input(tmp_path_factory) -> mb.InputStats:
    path = tmp_path_factory.mktemp("input") / "input.log"
    return mb.generate_input(path, 300_000, seed=7)


def test_generated_input_is_whole_lines_of_both_kinds(small_input):
    data = Path(small_input.path).read_bytes()
    assert len(data) == small_input.bytes >= 300_000 and data.endswith(b"\n")
    lines = data.split(b"\n")[:-1]
    assert len(lines) == small_input.lines
    tcp = [x for x in lines if x.startswith(b"tcpserver: ")]
    app = [x for x in lines if x.startswith(b"app[")]
    assert len(tcp) + len(app) == len(lines)
    assert small_input.classes["tcpserver"] == {"lines": len(tcp), "bytes": sum(len(x) + 1 for x in tcp)}
    assert small_input.classes["app"] == {"lines": len(app), "bytes": sum(len(x) + 1 for x in app)}
    assert all(100 <= len(x) + 1 <= 200 for x in app)
    kinds = {re.sub(rb"[0-9]+", b"N", x.split(b"localhost")[0]) for x in tcp}
    assert kinds == {b"tcpserver: status: N/N", b"tcpserver: pid N from N.N.N.N", b"tcpserver: ok N ",
                     b"tcpserver: end N status N"}


def test_generation_is_reproducible(tmp_path):
    a = mb.generate_input(tmp_path / "a", 50_000, seed=3)
    b = mb.generate_input(tmp_path / "b", 50_000, seed=3)
    assert Path(a.path).read_bytes() == Path(b.path).read_bytes()


def test_reference_tails_hold_the_end_of_each_selected_stream(small_input, tmp_path):
    sc = mb.two_patterns(size=4096, keep=3)
    tails = mb.reference_tails(small_input.path, sc.dirs, 5000, tmp_path)
    lines = Path(small_input.path).read_bytes().splitlines(keepends=True)
    for name, prefix in (("tcpserver", b"tcpserver: "), ("app", b"app[")):
        stream = b"".join(x for x in lines if x.startswith(prefix))
        path, total = tails[name]
        assert total == len(stream) == small_input.classes[name]["bytes"]
        assert path.read_bytes() == stream[-5000:]


def write_log_dir(path: Path, lines: list[bytes], per_file: int, mode: int = 0o744) -> None:
    """A multilog-like directory: LINES stamped, PER_FILE lines in each finished file, the rest in current."""
    path.mkdir()
    stamped = [b"@400000006b0801a0%08x %s\n" % (i, x) for i, x in enumerate(lines)]
    k = 0
    while len(stamped) - k > per_file:
        (path / f"@400000006b0801a0{k:08x}.s").write_bytes(b"".join(stamped[k:k + per_file]))
        k += per_file
    (path / "current").write_bytes(b"".join(stamped[k:]))
    os.chmod(path / "current", mode)


def test_checker_accepts_a_kept_tail_and_rejects_a_lost_line(tmp_path):
    lines = [b"line %d" % i for i in range(100)]
    expected = tmp_path / "expected"
    expected.write_bytes(b"".join(x + b"\n" for x in lines))
    total = expected.stat().st_size
    sc = mb.Scenario("t", ("t", "s2000", "n3", "./d"), {"d": None}, size=2000, keep=3)

    write_log_dir(tmp_path / "whole", lines, per_file=50)  # 1 finished file: nothing pruned, all must be there
    entry = mb.read_log_dir(tmp_path / "whole")
    mb.check_dir(entry, sc, expected, total)
    assert entry["verified"] and entry["problems"] == [], entry["problems"]

    write_log_dir(tmp_path / "tail", lines[30:], per_file=30)  # n3: 2 finished files kept, the oldest pruned
    entry = mb.read_log_dir(tmp_path / "tail")
    mb.check_dir(entry, sc, expected, total)
    assert entry["verified"] and entry["problems"] == []

    write_log_dir(tmp_path / "lost", lines[:50] + lines[51:], per_file=40)
    entry = mb.read_log_dir(tmp_path / "lost")
    mb.check_dir(entry, sc, expected, total)
    assert not entry["verified"]

    write_log_dir(tmp_path / "short", lines[90:], per_file=40)  # nothing pruned, yet lines are missing
    entry = mb.read_log_dir(tmp_path / "short")
    mb.check_dir(entry, sc, expected, total)
    assert not entry["verified"]


def test_checker_flags_unstamped_lines_and_an_unclean_current(tmp_path):
    lines = [b"a", b"b", b"c"]
    expected = tmp_path / "expected"
    expected.write_bytes(b"a\nb\nc\n")
    write_log_dir(tmp_path / "d", lines, per_file=10, mode=0o644)
    with open(tmp_path / "d" / "current", "ab") as f:
        f.write(b"no stamp\n")
    entry = mb.read_log_dir(tmp_path / "d")
    assert entry["lines"] == 4
    assert any("without a @tai64n prefix" in p for p in entry["problems"])
    assert any("not closed cleanly" in p for p in entry["problems"])


@pytest.mark.differential
def test_small_run_of_both_implementations_gives_identical_output(small_input, tmp_path):
    scenarios = [mb.plain(size=16384, keep=3), mb.two_patterns(size=16384, keep=3),
                 dataclasses.replace(mb.plain(), name="plain-unrotated")]
    cfg = mb.Config({"debian": real("multilog"), "prefork": prefork_multilog()}, scenarios, rounds=2,
                    interval=0.05, report_every=0)
    work = tmp_path / "work"
    work.mkdir()
    results = mb.benchmark(cfg, small_input, work)
    assert list(results) == [sc.name for sc in scenarios]
    for scenario in scenarios:
        sc = results[scenario.name]
        assert sc["comparison"]["identical"], scenario.name
        for impl in mb.IMPLS:
            d = sc["impls"][impl]
            assert [r["round"] for r in d["runs"]] == [1, 2]
            assert d["total"]["problems"] == []
            for r in d["runs"]:
                assert r["exit"] == 0 and r["stderr"] == ""
                assert r["wall_s"] > 0 and r["lines_per_s"] > 0 and r["cpu_s"] >= 0
                assert set(r["dirs"]) == set(scenario.dirs)
                for entry in r["dirs"].values():
                    assert entry["verified"] and entry["current_mode"] == "744"
                    assert entry["finished"] == (0 if scenario.name == "plain-unrotated" else 2)
    assert os.listdir(work) == []  # outputs and expected streams are removed after each run


@pytest.mark.differential
def test_rotating_run_keeps_n_minus_1_files_of_the_right_size(small_input, tmp_path):
    sc = mb.plain(size=16384, keep=3)
    out = tmp_path / "out"
    run = mb.run_multilog(real("multilog"), sc, small_input, out, interval=0.05, report_every=0)
    mb.verify_run(run, sc, out, {"dir": (Path(small_input.path), small_input.bytes)})
    assert run["problems"] == []
    entry = run["dirs"]["dir"]
    assert entry["finished"] == 2 and 16384 - 2000 <= entry["finished_min"] <= entry["finished_max"] <= 16384
    assert entry["length"] < small_input.bytes  # the oldest files were pruned: a tail was checked


@pytest.mark.differential
def test_cli_writes_results_json(tmp_path):
    out = tmp_path / "res"
    before = committed_digests(mb.BENCH)
    args = ["--size-mb", "0.2", "--rounds", "1", "--scenario", "two-patterns", "--workdir", str(tmp_path / "w"),
            "--out", str(out), "--debian", real("multilog"), "--prefork", prefork_multilog(),
            "--interval", "0.05", "--progress-every", "0"]
    assert mb.main(args) == 0
    data = check_outputs(mb.BENCH, mb.main, out, before, tmp_path)  # its folder only; --publish to a copy
    assert list(data["scenarios"]) == ["two-patterns"]
    assert data["input"]["lines"] > 0 and data["machine"]["filesystem"]
    sc = data["scenarios"]["two-patterns"]
    assert set(sc["impls"]) == set(mb.IMPLS) and sc["comparison"]["identical"]
    ratio = sc["comparison"]["ratios"]["prefork"]
    assert ratio["target"] == 1.0 and ratio["lines_per_s"] > 0
    assert "--size-mb 0.2" in data["command"] and "--scenario two-patterns" in data["command"]
    assert os.listdir(tmp_path / "w") == []  # the run's directory inside --workdir is removed unless --keep

    md = mb.render_markdown(data)
    for heading in ("# multilog benchmark", "## Results", "## Rounds", "## Memory", "## Reproduce"):
        assert heading in md
    assert data["command"] in md
    if importlib.util.find_spec("matplotlib") is not None:
        assert mb.write_chart(data, tmp_path / "chart.png").stat().st_size > 1000


def test_cli_refuses_a_missing_binary(tmp_path, capsys):
    args = ["--size-mb", "0.1", "--rounds", "1", "--prefork", str(tmp_path / "nothing"), "--out",
            str(tmp_path / "r"), "--workdir", str(tmp_path / "w")]
    assert mb.main(args) == 1
    assert "prefork multilog not found" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
