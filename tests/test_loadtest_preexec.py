"""loadtest.preexec: the probe reports its own CPU at start, through a bare spawn and through real servers."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ours, real

from loadtest import preexec


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler: the pre-exec measure is skipped too")
    built = preexec.build_probe(tmp_path_factory.mktemp("probe"))
    assert built is not None
    return built


def test_probe_answers_a_positive_microsecond_count(probe: Path) -> None:
    out = subprocess.run([str(probe)], capture_output=True, timeout=10, check=True).stdout
    assert out.endswith(b"\n") and out[:-1].isdigit()
    assert preexec.floor_us(probe, 20) > 0  # an exec costs some CPU, whatever the machine


@pytest.mark.parametrize("which", ["ours", "debian"])
def test_probe_load_reads_one_figure_per_connection(probe: Path, which: str) -> None:
    tcpserver = ours("tcpserver") if which == "ours" else real("tcpserver")
    extra = ["--workers", "1"] if which == "ours" else []
    proc = subprocess.Popen([tcpserver, *extra, "-1", "-q", "-H", "-R", "-l0", "127.0.0.1", "0", str(probe)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        values, errors = preexec.probe_load("127.0.0.1", port, 40, clients=2, timeout=5.0)
    finally:
        proc.terminate()
        proc.wait(10)
    assert errors == 0 and len(values) == 40 and all(v > 0 for v in values)
