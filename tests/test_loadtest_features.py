"""The feature-cost benchmark (loadtest/features.py): a tiny run serves every variant without a client error
(the PROXY header consumed, the limits counted and never reached) and writes only its own folder."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from conftest import ours
from test_loadtest_reporting import check_outputs, committed_digests

from loadtest import features


def test_tiny_run_serves_every_variant_and_writes_its_folder_only(tmp_path: Path) -> None:
    before = committed_digests(features.BENCH)
    out = tmp_path / "res"
    rc = features.main(["--rounds", "1", "--seconds", "0.4", "--clients", "1", "--workers", "1",
                        "--prefork", ours("tcpserver"), "--out", str(out)])
    assert rc == 0
    data = json.loads((out / "features.json").read_text())
    assert set(data["variants"]) == {"plain", "limits", "proxy"} and set(data["ratios"]) == {"limits", "proxy"}
    for name, v in data["variants"].items():
        assert v["total"]["connections"] > 0 and v["total"]["error_total"] == 0, name
    assert data["variants"]["proxy"]["sends"].startswith("PROXY TCP4 ")
    assert "--proxy-protocol" in data["variants"]["proxy"]["argv"]
    assert "MAXCONNIP=100000" in data["variants"]["limits"]["argv"]
    text = (out / "FEATURES.md").read_text()
    assert text == features.render(data) and data["command"] in text
    assert committed_digests(features.BENCH) == before
    if importlib.util.find_spec("matplotlib") is not None:
        check_outputs(features.BENCH, features.main, out, before, tmp_path)
