"""prefork-exporter started by a root server runs unprivileged, and still serves its sources.

A root ``svscan --metrics`` or ``tcpserver --metrics`` passes ``--user nobody`` to its exporter child; the
exporter opens its sources (the 0600 service table, the scoreboard) and binds its address as root, then
gives up root for good (no supplementary groups; real, effective and saved ids) and reads the sources
through the descriptors it kept.  Checked here: the child's ids in /proc/PID/status, scrapes that still
carry the table's and the scoreboard's families, the table's mode, ``--metrics-user``, the textfile written
as nobody, and the command-line side (``--user``, ``exporter_args``).  The tests that need root skip
without it.  Every process is ended by pid, every /dev/shm file a test causes is removed by it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
from conftest import ours, remove_shm_files_of
from tcpserver_harness import QUIET, TAG_VAR, kill_procs, tagged, talk, wait_until

from prefork import exporter_child
from prefork import scoreboard as sb
from prefork.control import servicetable as st

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a root server's exporter drops to nobody")
NOBODY = (65534, 65534)
LISTENING = re.compile(r"prefork-exporter: listening on http://127\.0\.0\.1:(\d+)/metrics")


def ids(pid: int) -> tuple[list[int], list[int], list[int]]:
    """The Uid:, Gid: and Groups: lines of /proc/PID/status."""
    out: dict[str, list[int]] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Uid", "Gid", "Groups"):
                out[key] = [int(x) for x in rest.split()]
    return out["Uid"], out["Gid"], out["Groups"]


def scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return response.read().decode()
    except (urllib.error.URLError, OSError):
        return None


def exporter_child_of(pid: int, timeout: float = 15.0) -> psutil.Process:
    """The exporter child of PID, once it has re-executed lean (its ids are final then)."""

    def found() -> psutil.Process | None:
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(pid).children():
                argv = child.cmdline()
                if "prefork-exporter" in map(os.path.basename, argv[:2]) and argv[1:3] == ["-I", "-S"]:
                    return child
        return None

    child = wait_until(found, timeout)
    assert child, f"no exporter under {pid}"
    return child  # type: ignore[return-value]


def port_in(errfile: Path, timeout: float = 15.0) -> int:
    match = wait_until(lambda: LISTENING.search(errfile.read_text()), timeout)
    assert match, errfile.read_text()
    return int(match[1])  # type: ignore[index]


@contextlib.contextmanager
def tree():
    """A service tree in a 0755 directory of /tmp with one service; its default table is removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="prefork-privileges-", dir="/tmp"))
    root.chmod(0o755)
    (root / "a").mkdir()
    (root / "a" / "run").write_text("#!/bin/sh\nexec sleep 300\n")
    (root / "a" / "run").chmod(0o755)
    table = st.default_path(str(root), st.KIND_SVSCAN)
    try:
        yield root, table
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(table)
        remove_shm_files_of(root)
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def svscan(root: Path, errfile: Path, *args: str):
    """A prefork svscan on ROOT; at the end it and everything it started (tagged) are killed by pid."""
    tag = f"privileges-{os.getpid()}-{time.monotonic_ns()}"
    with open(errfile, "wb") as err:
        proc = subprocess.Popen([ours("svscan"), *args, str(root)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err, env={"PATH": "/usr/bin:/bin", TAG_VAR: tag})
    try:
        yield proc
    finally:
        procs = tagged(tag)
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        kill_procs(procs + tagged(tag))


# == a root svscan ======================================================================================
@needs_root
def test_root_svscans_exporter_runs_as_nobody_and_serves_the_0600_table(tmp_path):
    with tree() as (root, table), svscan(root, tmp_path / "err", "--metrics", "127.0.0.1:0") as proc:
        port = port_in(tmp_path / "err")
        child = exporter_child_of(proc.pid)
        assert ids(child.pid) == ([65534] * 4, [65534] * 4, [])
        assert stat.S_IMODE(os.stat(table).st_mode) == 0o600 and os.stat(table).st_uid == 0
        assert child.cmdline()[-2:] == ["--user", "nobody"]
        up = f'supervise_up{{directory="{root}",service="a"}} 1.0'
        text = wait_until(lambda: (t := scrape(port)) and up in t and t, 10)
        assert text, scrape(port)
        assert f'svscan_services{{directory="{root}"}} 1.0' in text  # type: ignore[operator]
        assert f'prefork_exporter_source_up{{kind="services",path="{root}"}} 1.0' in text  # type: ignore[operator]
        # What the exporter could not do any more without the descriptor it kept:
        done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat", table],
                              capture_output=True, timeout=10)
        assert done.returncode != 0 and b"Permission denied" in done.stderr


@needs_root
def test_metrics_user_chooses_the_account(tmp_path):
    with tree() as (root, _table), svscan(root, tmp_path / "err", "--metrics=127.0.0.1:0",
                                          "--metrics-user", "4242:4343") as proc:
        port = port_in(tmp_path / "err")
        child = exporter_child_of(proc.pid)
        assert ids(child.pid) == ([4242] * 4, [4343] * 4, [])
        assert wait_until(lambda: (t := scrape(port)) and "supervise_up" in t, 10)


@needs_root
def test_root_svscans_textfile_is_written_by_nobody(tmp_path):
    with tree() as (root, _table):
        out = root / "textfiles"
        out.mkdir()
        os.chown(out, *NOBODY)  # the exporter writes as nobody: its directory must let nobody write
        prom = out / "svscan.prom"
        with svscan(root, tmp_path / "err", "--metrics-textfile", str(prom)):
            assert wait_until(lambda: prom.exists() and "supervise_up" in prom.read_text(), 15), \
                (tmp_path / "err").read_text()
            assert (prom.stat().st_uid, prom.stat().st_gid) == NOBODY


@needs_root
def test_root_svscans_textfile_in_a_root_only_directory_is_not_written(tmp_path):
    with tree() as (root, _table):
        out = root / "private"
        out.mkdir(mode=0o700)
        prom = out / "svscan.prom"
        with svscan(root, tmp_path / "err", "--metrics-textfile", str(prom)):
            assert wait_until(lambda: "unable to write" in (tmp_path / "err").read_text(), 15)
            assert not prom.exists()
            assert f"prefork-exporter: warning: unable to write {prom}: access denied" in (tmp_path / "err").read_text()


# == a root tcpserver ===================================================================================
@needs_root
def test_root_tcpservers_exporter_runs_as_nobody_and_serves_the_scoreboard(prefork):
    server = prefork([*QUIET, "--name", "echo", "--metrics", "127.0.0.1:0"], ["/bin/echo", "hi"])
    match = wait_until(lambda: LISTENING.search(server.stderr()), 15)
    assert match, server.stderr()
    port = int(match[1])  # type: ignore[index]
    child = exporter_child_of(server.pid)
    assert ids(child.pid) == ([65534] * 4, [65534] * 4, [])
    talk(server.port)
    assert wait_until(lambda: (t := scrape(port)) and 'tcpserver_connections_accepted_total{service="echo"} 1.0' in t,
                      10), scrape(port)
    assert stat.S_IMODE(os.stat(sb.default_path(server.pid)).st_mode) == 0o644


@needs_root
def test_tcpserver_metrics_user_chooses_the_account(prefork):
    server = prefork([*QUIET, "--name", "echo", "--metrics", "127.0.0.1:0", "--metrics-user", "4242:4343"],
                     ["/bin/echo", "hi"])
    match = wait_until(lambda: LISTENING.search(server.stderr()), 15)
    assert match, server.stderr()
    child = exporter_child_of(server.pid)
    assert ids(child.pid) == ([4242] * 4, [4343] * 4, [])
    talk(server.port)
    assert wait_until(lambda: (t := scrape(int(match[1]))) and  # type: ignore[index]
                      'tcpserver_connections_accepted_total{service="echo"} 1.0' in t, 10)


def test_tcpserver_unknown_metrics_user_is_a_usage_error():
    done = subprocess.run([ours("tcpserver"), "--metrics-user", "no-such-user-here", "-HRl0", "127.0.0.1", "0",
                           "true"], capture_output=True, timeout=30)
    lines = done.stderr.decode().splitlines()
    assert done.returncode == 100 and lines[0] == (
        "tcpserver: bad value for --metrics-user: unknown account 'no-such-user-here'"), lines


@needs_root
def test_tcpservers_exporter_reads_a_scoreboard_nobody_could_open(tmp_path, prefork):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    board = private / "board"
    server = prefork([*QUIET, "--name", "echo", "--scoreboard", str(board), "--metrics", "127.0.0.1:0"],
                     ["/bin/echo", "hi"])
    match = wait_until(lambda: LISTENING.search(server.stderr()), 15)
    assert match, server.stderr()
    talk(server.port)
    assert wait_until(lambda: (t := scrape(int(match[1]))) and  # type: ignore[index]
                      'tcpserver_connections_accepted_total{service="echo"} 1.0' in t, 10)


# == the command line ===================================================================================
def run_exporter(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([ours("prefork-exporter"), *args], capture_output=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin"})


@needs_root
def test_user_opens_the_sources_before_it_drops_root(tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    table = st.ServiceTable.create(str(private / "table"), 4, st.KIND_SVSCAN, "/service")
    table.publish(table.allocate("a"), st.ServiceRecord("a", pid=os.getpid(), state=st.STATE_UP))
    board = sb.ScoreboardFile(str(private / "board"), 2, 10, os.getpid(), "web")
    done = run_exporter("--once", "--user", "nobody", "--services", str(private / "table"),
                        "--scoreboard", str(private / "board"))
    assert (done.returncode, done.stderr) == (0, b""), done.stderr
    assert b'supervise_up{directory="/service",service="a"} 1.0' in done.stdout
    assert b'tcpserver_workers{service="web"} 2.0' in done.stdout
    table.close()
    del board


@needs_root
def test_a_long_running_exporter_with_user_is_nobody(tmp_path):
    table = st.ServiceTable.create(str(tmp_path / "table"), 4, st.KIND_SVSCAN, "/service")
    table.publish(table.allocate("a"), st.ServiceRecord("a", pid=os.getpid(), state=st.STATE_UP))
    with open(tmp_path / "err", "wb") as err:
        proc = subprocess.Popen([ours("prefork-exporter"), "--user", "nobody", "--services", str(tmp_path / "table"),
                                 "--listen", "127.0.0.1:0"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err, env={"PATH": "/usr/bin:/bin"})
    try:
        port = port_in(tmp_path / "err")
        assert wait_until(lambda: ids(proc.pid)[0] == [65534] * 4, 10)
        assert ids(proc.pid) == ([65534] * 4, [65534] * 4, [])
        text = scrape(port)
        assert text and 'supervise_up{directory="/service",service="a"} 1.0' in text
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        table.close()


@pytest.mark.parametrize("user", ["no-such-user-here", "1:x", "x:1", ":", "99999999999:1"])
def test_unknown_user_is_a_usage_error(user):
    done = run_exporter("--once", "--scoreboard", "/nonexistent", "--user", user)
    assert done.returncode == 100 and done.stdout == b""
    assert done.stderr.startswith(b"prefork-exporter: --user: ")


def test_resolve_user():
    assert exporter_child.resolve_user("nobody") == NOBODY
    assert exporter_child.resolve_user("0:0") == (0, 0)
    assert exporter_child.resolve_user("12:34") == (12, 34)
    for bad in ("no-such-user-here", "1:x", "", "a\0b", "-1:0"):
        with pytest.raises(ValueError):
            exporter_child.resolve_user(bad)


def test_a_root_server_passes_user_nobody_and_another_passes_none(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert exporter_child.exporter_args(["--services", "/s"], 7, None, None)[-2:] == ["--user", "nobody"]
    assert exporter_child.exporter_args(["--services", "/s"], 7, None, None, "4:5")[-2:] == ["--user", "4:5"]
    monkeypatch.setattr(exporter_child, "DEFAULT_USER", "no-such-user-here")
    assert exporter_child.exporter_args(["--services", "/s"], 7, None, None)[-2:] == ["--user", "65534:65534"]
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "--user" not in exporter_child.exporter_args(["--services", "/s"], 7, None, None)
    assert "--user" not in exporter_child.exporter_args(["--services", "/s"], 7, None, None, "4:5")
