"""The soak run (loadtest/soak.py) in CI size, and its analysers on made-up input.

``test_soak_one_minute`` runs ``python -m loadtest.soak`` for 60 s: tcpserver under load while its
workers are SIGKILLed, side by side with an svscan tree whose services, multilogs and svscan itself are
SIGKILLed.  It takes the whole minute on one xdist worker (the rest of the suite runs on the others);
select it alone with ``-m soak`` or ``-k soak``, leave it out with ``-m 'not soak'``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from conftest import ROOT
from test_loadtest_reporting import LOCAL, committed_digests

from loadtest import soak
from loadtest.soak_conns import analyse_log
from loadtest.soak_tree import analyse_service
from prefork import tai64n

soak_mark = pytest.mark.soak

SECONDS = 60
# -c 8 with 12 clients each holding its connection 150 ms: the limit is reached all the time at ~50
# connections/s, light enough to share two CPUs with the rest of the suite.
CI_ARGS = ["--seconds", str(SECONDS), "--clients", "12", "--limit", "8", "--workers", "3", "--hold-ms", "150",
           "--kill-every", "2", "--services", "3", "--fault-every", "2", "--max-svscan-kills", "4", "--seed", "1",
           "--progress-every", "15"]
REQUIRED = {
    "nothing_lost": "no accepted connection lost",
    "limit": "-c never exceeded",
    "log_balanced": "-v log balanced (each end PID has its pid PID)",
    "sequences": "no gap or repeat in the log sequences",
    "single_instance": "one instance of each service at a time",
    "clean_stop": "clean stop",
    "no_unexpected_exit": "no tcpserver master or svscan exited unasked",
    "fds_flat": "fds flat",
    "zombies": "no zombies left",
    "no_process_left": "no process left running",
    "no_shm_left": "no /dev/shm file left",
}


def _inside(path: Path) -> list[str]:
    """Live processes whose cwd is inside PATH (every process of a soak works in its work directory)."""
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
            found.append(f"{p.name()} (pid {p.pid})")
    return found


@soak_mark
@pytest.mark.timeout(SECONDS + 180)
def test_soak_one_minute(tmp_path: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    work.mkdir()
    before = committed_digests(soak.BENCH)
    proc = subprocess.run([sys.executable, "-m", "loadtest.soak", *CI_ARGS, "--out", str(out), "--workdir", str(work)],
                          cwd=ROOT, capture_output=True, text=True, timeout=SECONDS + 150)
    assert (out / "soak.json").exists(), f"no figures (exit {proc.returncode}): {proc.stderr[-3000:]}"
    data = json.loads((out / "soak.json").read_text())
    checks = {c["key"]: c for c in data["checks"]}
    assert set(REQUIRED) <= set(checks), sorted(checks)
    failed = [f"{REQUIRED[k]}: {checks[k]['measured']}" for k in REQUIRED if not checks[k]["ok"]]
    assert not failed, "\n".join(failed)

    conns, tree = data["connections"], data["tree"]
    assert conns["worker_kills"] >= SECONDS // 2 - 2 and conns["made"] > 0
    # The limit was reached (the census is a lower bound: one short of it on a very busy machine).
    assert conns["max_programs"] >= conns["limit"] - 1
    assert conns["failure_times_complete"]
    assert tree["lines"] > 0 and sum(tree["kills"].values()) >= 10 and tree["kills"]["svscan"] >= 1
    assert (out / "SOAK.md").read_text().count(data["command"]) == 1
    (out / "SOAK.md").unlink()
    assert soak.main(["--render", str(out / "soak.json")]) == (0 if data["ok"] else 1)  # rebuilt from the JSON alone
    assert data["command"] in (out / "SOAK.md").read_text()
    assert committed_digests(soak.BENCH) == before  # docs/SOAK.md is written only with --publish
    copy = tmp_path / "docs"
    copy.mkdir()
    assert soak.main(["--render", str(out / "soak.json"), "--publish", "--publish-dir", str(copy)]) == (
        0 if data["ok"] else 1)
    assert (copy / "SOAK.md").read_text() == (out / "SOAK.md").read_text()
    assert not LOCAL.search((copy / "SOAK.md").read_text())
    assert committed_digests(soak.BENCH) == before
    # What the soak says of its own clean-up, seen from here too.
    assert _inside(work) == []
    assert list(work.iterdir()) == []
    for name in data["cleanup"]["shm_files"]:
        assert not Path("/dev/shm", name).exists(), name


# -- the analysers on made-up input ----------------------------------------------------------------
def test_log_balance_finds_an_end_without_its_pid_line() -> None:
    log = (b"tcpserver: status: 0/2\ntcpserver: status: 1/2\ntcpserver: pid 10 from 127.0.0.1\n"
           b"tcpserver: ok 10 0:127.0.0.1:1 :127.0.0.1::2\ntcpserver: end 10 status 0\ntcpserver: status: 0/2\n"
           b"tcpserver: status: 1/2\ntcpserver: end 11 status 0\ntcpserver: status: 0/2\n"  # worker killed: no pid line
           b"tcpserver: pid 10 from 127.0.0.1\ntcpserver: end 10 status 0\n"  # a pid used again is fine
           b"tcpserver: status: 1/2\ntcpserver: pid 12 from 127.0.0.1\n")  # never ended
    got = analyse_log(log)
    assert (got["pid_lines"], got["end_lines"], got["ok_lines"]) == (3, 3, 1)
    assert (got["end_without_pid"], got["pid_without_end"], got["balanced"]) == (1, 1, False)
    assert got["samples"]["end_without_pid"] == ["tcpserver: end 11 status 0"]
    assert got["status_max"] == 1 and got["status_limit"] == 2
    assert analyse_log(b"tcpserver: pid 5 from 127.0.0.1\ntcpserver: end 5 status 0\n")["balanced"]


def _stamp(t: float) -> str:
    return tai64n.external(tai64n.pack(int(t), int(t % 1 * 1e9)))


def _service(tmp_path: Path, files: dict[str, list[tuple[float, str]]], runs: int) -> Path:
    d = tmp_path / "svc1"
    (d / "log" / "main").mkdir(parents=True)
    (d / "runs").mkdir()
    for r in range(1, runs + 1):
        (d / "runs" / str(r)).touch()
    for name, lines in files.items():
        (d / "log" / "main" / name).write_text("".join(f"{_stamp(t)} {text}\n" for t, text in lines))
    return d


def test_sequences_clean_runs_pass(tmp_path: Path) -> None:
    t0 = 1_700_000_000.0
    first = [(t0 + i * 0.01, f"svc1 1 {i}") for i in range(50)]
    second = [(t0 + 1 + i * 0.01, f"svc1 2 {i}") for i in range(30)] + [(t0 + 2, "svc1 2 end 30")]
    d = _service(tmp_path, {"@400000006553f1000000000000000001.s": first, "current": second}, runs=2)
    got = analyse_service("svc1", d, [], [], t0)
    assert (got["lines"], got["runs"], got["files"], got["gaps"], got["duplicates"]) == (80, 2, 2, 0, 0)
    assert got["clean_end"] and got["runs_without_lines"] == 0


def test_sequences_gap_repeat_and_reorder_are_found(tmp_path: Path) -> None:
    t0 = 1_700_000_000.0
    lines = [(t0 + i * 0.01, f"svc1 1 {i}") for i in range(10)]
    lines += [(t0 + 1.0, "svc1 1 13"), (t0 + 1.01, "svc1 1 13"), (t0 + 1.02, "svc1 1 12"),
              (t0 + 1.03, "svc1 1 14"), (t0 + 1.04, "svc1 1 end 15")]
    d = _service(tmp_path, {"current": lines}, runs=3)  # run 2 and 3 left no line, no kill near them
    got = analyse_service("svc1", d, [], [], t0)
    assert (got["gaps"], got["gap_lines"], got["gaps_unexplained"]) == (1, 3, 1)  # 10, 11, 12 missing before 13
    assert got["duplicates"] == 1 and got["out_of_order"] == 1  # 13 twice, then 12 after 13
    assert got["runs_without_lines"] == 2 and got["runs_without_lines_unexplained"] == 2
    # The same gap with a multilog kill of this service between its two sides is put down to the kill.
    got = analyse_service("svc1", d, [t0 + 0.5], [], t0)
    assert (got["gaps_at_multilog_kills"], got["lines_lost_at_multilog_kills"], got["gaps_unexplained"]) == (1, 3, 0)


def test_sequences_interleaved_runs_and_foreign_lines(tmp_path: Path) -> None:
    t0 = 1_700_000_000.0
    lines = [(t0, "svc1 1 0"), (t0 + 0.1, "svc1 2 0"), (t0 + 0.2, "svc1 1 1"), (t0 + 0.3, "svc2 1 0"),
             (t0 + 0.4, "Traceback (most recent call last):")]
    got = analyse_service("svc1", _service(tmp_path, {"current": lines}, runs=2), [], [], t0)
    assert got["interleaved_runs"] == 1 and got["foreign_lines"] == 2
    assert not got["clean_end"]


def test_options() -> None:
    args = soak.parse_args(["--seconds", "60"])
    assert args.max_svscan_kills == 3 and args.phases == ["conns", "tree"]
    assert "--seconds 60" in soak.reproduce_command(args) and "--seed 1" in soak.reproduce_command(args)
    assert soak.parse_args(["--phases", "tree"]).phases == ["tree"]
    assert soak.BENCH.folder(args).parent == ROOT / "loadtest" / "results" and args.publish_dir == str(ROOT / "docs")
    for bad in (["--seconds", "0"], ["--phases", "conns,speed"], ["--clients", "many"], ["--hold-ms", "-1"]):
        with pytest.raises(SystemExit) as exc:
            soak.parse_args(bad)
        assert exc.value.code == 2
