"""Where the benchmarks write (loadtest/reporting.py): a results folder per run, the committed report only with
--publish; the committed reports name no local path.  The tcpserver benchmark's tiny run is here; the other
benchmarks' tiny runs call check_outputs() from their own test files."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import LOCAL_PATH, ROOT, ours, real

from loadtest import reporting, runner
from loadtest.report import BENCH as TCPSERVER

# A report names no path of this machine (conftest.LOCAL_PATH, or any temporary file) and no tracker words.
LOCAL = re.compile(LOCAL_PATH.pattern + r"|/tmp/|\bissue\b|\bstop \d+", re.I)
COMMITTED = [ROOT / "loadtest" / name for name in ("REPORT.md", "SUPERVISION.md", "MULTILOG.md", "SCRAPE.md", "FEATURES.md",
                                                   "RELOAD.md")]


def committed_digests(bench: reporting.Bench) -> dict[Path, str]:
    """The committed report and chart of BENCH, by content (a run must leave them as they are)."""
    paths = [bench.publish_dir / bench.report, bench.publish_dir / bench.chart]
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths if p.exists()}


def check_outputs(bench: reporting.Bench, main, out: Path, before: dict[Path, str], tmp_path: Path) -> dict:
    """After a tiny run into OUT: JSON, report and chart are there, the committed files untouched; then
    ``--render JSON --publish --publish-dir COPY`` rewrites a copy of the committed report (and only it)."""
    assert committed_digests(bench) == before, "a run without --publish changed the committed report"
    data = json.loads((out / f"{bench.name}.json").read_text())
    text = (out / bench.report).read_text()
    assert text == bench.render(data)
    assert not LOCAL.search(text), LOCAL.search(text)
    assert data["command"] in text and " --publish" not in data["command"]
    if importlib.util.find_spec("matplotlib") is not None:  # the bench extra: without it no chart is drawn
        assert (out / bench.chart).read_bytes().startswith(b"\x89PNG")
    else:
        assert not (out / bench.chart).exists()
    copy = tmp_path / "published"
    copy.mkdir()
    for p in before:
        shutil.copyfile(p, copy / p.name)
    assert main(["--render", str(out / f"{bench.name}.json"), "--publish", "--publish-dir", str(copy)]) == 0
    assert (copy / bench.report).read_text() == text
    assert (copy / bench.chart).read_bytes().startswith(b"\x89PNG")
    assert committed_digests(bench) == before, "--publish-dir was not where --publish wrote"
    return data


@pytest.mark.parametrize("path", [*COMMITTED, ROOT / "docs" / "SOAK.md"], ids=lambda p: p.name)
def test_committed_reports_name_no_local_path(path: Path) -> None:
    found = LOCAL.search(path.read_text())
    assert found is None, f"{path.name}: {found[0]!r}"


def test_reproduce_command_is_spelled_from_the_checkout() -> None:
    line = reporting.reproduce_command("loadtest.x", ["--prefork", str(ROOT / ".venv" / "bin" / "svscan")], True)
    assert line.endswith(" -m loadtest.x --prefork .venv/bin/svscan --publish")
    assert str(ROOT) not in line


def test_machine_and_reproduce_sections() -> None:
    m = {"cpu_model": "cpu", "nproc": 2, "kernel": "6.1", "python": "3.11.2", "load_average": [0.5, 0.25, 0.0],
         "prefork_commit": "abc1234"}
    assert reporting.machine_section(m, [1, 2, 3], "daemontools 1", kernel_extra=", fs ext4", extra=["x"]) == [
        "## Machine", "", "- CPU: cpu, nproc 2", "- kernel 6.1, Python 3.11.2, fs ext4",
        "- load average at start 0.50 0.25 0.00, at end 1.00 2.00 3.00", "- daemontools 1, prefork commit abc1234",
        "- x", ""]
    ran = {"prefork": f"{ROOT}/.venv/bin/svscan DIR"}
    assert reporting.reproduce_section("cmd", ran, "Run:") == [
        "## Reproduce", "", "```", "cmd", "```", "", "Run:", "", "- prefork: `.venv/bin/svscan DIR`", ""]
    assert reporting.table(["a", "b", "c"], [(1, 2, 3)]) == ["| a | b | c |", "|---|---:|---:|", "| 1 | 2 | 3 |"]


def test_default_folder_is_per_run_under_results() -> None:
    args = runner.parse_args([])
    folder = TCPSERVER.folder(args)
    assert folder.parent == ROOT / "loadtest" / "results" and re.fullmatch(r"tcpserver-\d{8}-\d{6}", folder.name)
    assert (ROOT / ".gitignore").read_text().count("loadtest/results/") == 1


@pytest.mark.differential
def test_tcpserver_tiny_run_writes_its_folder_only(tmp_path: Path) -> None:
    real("tcpserver")
    pytest.importorskip("matplotlib")
    before = committed_digests(TCPSERVER)
    out = tmp_path / "res"
    rc = runner.main(["--rounds", "1", "--seconds", "0.3", "--clients", "1", "--workers", "1", "--warmup", "0",
                      "--spawn-seconds", "0.2", "--spawn-procs", "1", "--preexec", "40", "--python-floor", "--prefork", ours("tcpserver"),
                      "--out", str(out)])
    assert rc == 0
    data = check_outputs(TCPSERVER, runner.main, out, before, tmp_path)
    assert set(data["servers"]) == {"debian", "prefork"}
    assert all(s["total"]["connections"] > 0 for s in data["servers"].values())
    if shutil.which("cc"):  # the pre-exec measure: every probe connection answered, in the report
        assert {n: v["connections"] for n, v in data["preexec"]["servers"].items()} == {"debian": 40, "prefork": 40,
                                                                                    "python-floor": 40,
                                                                                    "python-floor-contract": 40}
        assert "## Server CPU per connection, pre-exec work counted" in (out / "REPORT.md").read_text()
