"""The reload load test (loadtest/reload.py) on tiny counts: HUP and USR2 under load, nothing failed, -c kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_loadtest_reporting import check_outputs, committed_digests

from loadtest import reload as bench


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> dict:
    """One whole run: two reloads (HUP, USR2) under three clients; the server is stopped by pid."""
    tmp = tmp_path_factory.mktemp("reload")
    out = tmp / "res"
    before = committed_digests(bench.BENCH)
    code = bench.main(["--reloads", "2", "--interval", "1", "--warmup", "0.5", "--tail", "0.5", "--clients", "3",
                       "--limit", "2", "--out", str(out)])
    data = json.loads((out / "reload.json").read_text())
    return {"code": code, "data": data, "out": out, "before": before}


def test_reloads_under_load_lose_nothing(tiny_run):
    data = tiny_run["data"]
    c = data["checks"]
    assert tiny_run["code"] == 0 and c["passed"], c
    assert c["failed_connections"] == 0 and data["load"]["connections"] > 0
    assert 0 < c["max_programs"] <= c["limit"] == 2
    assert [r["signal"] for r in data["reloads"]] == ["HUP", "USR2"] and all(r["finished"] for r in data["reloads"])
    assert c["counter_regressions"] == 0 and c["same_master_pid"] and c["server_stderr"] == ""
    for r in data["reloads"]:
        assert not set(r["workers_before"]) & set(r["workers_after"])


def test_scoreboard_is_removed(tiny_run):
    """The run stops its server with TERM: the master removes its scoreboard."""
    assert not Path(f"/dev/shm/prefork-tcpserver.{tiny_run['data']['server_pid']}").exists()


def test_report_and_publish(tiny_run, tmp_path):
    pytest.importorskip("matplotlib")
    data = check_outputs(bench.BENCH, bench.main, tiny_run["out"], tiny_run["before"], tmp_path)
    assert "**Passed.**" in bench.render_markdown(data)
