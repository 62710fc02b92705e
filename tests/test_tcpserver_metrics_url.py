"""``tcpserver -q --metrics HOST:0``: how the operator learns the metrics URL.

With -q the exporter's ``listening on`` line goes to /dev/null, so the server tells it two ways
(prefork/exporter_child.py): ``-1`` prints the bound metrics port on a second line (only with
--metrics: without it, 0.88's single line, byte for byte), and the scoreboard records the bound
address, which ``tcpserver-status`` shows (text and --json).  Each way is followed to a real
GET /metrics.  Servers run with -H -R -l0 on 127.0.0.1 port 0 and are ended by pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import uuid

import pytest
from conftest import ours, real
from tcpserver_harness import QUIET, TAG_VAR, base_env, command, kill_procs, read_eof, tagged, talk, wait_until
from test_metrics_serving import scrape, value

from prefork import scoreboard as sb
from prefork.scoreboard_read import parse


def status(pid: int, *opts: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([ours("tcpserver-status"), *opts, str(pid)], capture_output=True, timeout=15)


def served(port: int, service: str) -> str:
    """The exposition at 127.0.0.1:PORT once it reports SERVICE's one connection."""
    text = wait_until(lambda: (t := scrape(port)) and value(t, "tcpserver_connections_accepted_total",
                                                              service=service) == 1 and t, 15.0, 0.1)
    assert text, f"no scrape of {service} with one connection from port {port}"
    return text  # type: ignore[return-value]


def test_one_prints_the_metrics_port_on_a_second_line(prefork):
    server = prefork([*QUIET, "-q", "--metrics", "127.0.0.1:0"], ["cat"])
    assert 0 < server.metrics_port != server.port
    assert read_eof(server.proc.stdout, 10.0) == b""  # nothing after the two lines (stdout is then /dev/null)
    assert talk(server.port, b"x\n")[0] == b"x\n"
    text = served(server.metrics_port, f"127.0.0.1:{server.port}")
    assert value(text, "tcpserver_workers", service=f"127.0.0.1:{server.port}") is not None
    assert server.stderr() == ""  # -q: the exporter's listening line went to /dev/null


@pytest.mark.parametrize("impl", ["debian", "prefork"])
def test_one_without_metrics_prints_one_line(impl, tmp_path):
    """0.88's -1 output is kept byte for byte when --metrics is not given (Debian's tcpserver as the reference)."""
    if impl == "debian":
        real("tcpserver")
    tag = uuid.uuid4().hex
    proc = subprocess.Popen([*command(impl), "-1", *QUIET, "-q", "127.0.0.1", "0", "cat"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**base_env(), TAG_VAR: tag})
    try:
        out = read_eof(proc.stdout, 10.0) if impl == "prefork" else os.read(proc.stdout.fileno(), 100)
        assert out is not None and re.fullmatch(rb"[1-9]\d*\n", out), out
        assert talk(int(out), b"y\n")[0] == b"y\n"
    finally:
        proc.kill()
        proc.wait(timeout=10)
        kill_procs(tagged(tag))
        proc.stdout.close()
        proc.stderr.close()
        if impl == "prefork":
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"/dev/shm/prefork-tcpserver.{proc.pid}")


def test_status_shows_the_metrics_url_without_one(tmp_path):
    """The case with no -1 at all: tcpserver -q -H -R -l0 --metrics 127.0.0.1:0 127.0.0.1 0 cat."""
    tag = uuid.uuid4().hex
    proc = subprocess.Popen([*command("prefork"), "-q", *QUIET, "--metrics", "127.0.0.1:0",
                             "127.0.0.1", "0", "cat"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**base_env(), TAG_VAR: tag})
    try:
        assert wait_until(lambda: status(proc.pid, "--json").returncode == 0 and
                          json.loads(status(proc.pid, "--json").stdout)["metrics"], 15.0)
        doc = json.loads(status(proc.pid, "--json").stdout)
        url = doc["metrics"]["url"]
        m = re.fullmatch(r"http://127\.0\.0\.1:([1-9]\d*)/metrics", url)
        assert m and int(m[1]) == doc["metrics"]["port"], doc["metrics"]
        text = status(proc.pid)
        assert text.returncode == 0
        assert f"\nmetrics {url}\n".encode() in text.stdout
        local = doc["local"]
        port = int(local.rpartition(":")[2])
        assert talk(port, b"z\n")[0] == b"z\n"
        exposition = served(int(m[1]), local)
        assert value(exposition, "tcpserver_connections_limit", service=local) == 40
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        kill_procs(tagged(tag))
        assert proc.stderr.read() == b""
        proc.stderr.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"/dev/shm/prefork-tcpserver.{proc.pid}")  # SIGTERM removes it; a failed start may not


def test_status_without_metrics_has_no_metrics_line(prefork):
    server = prefork([*QUIET], ["cat"])
    assert server.metrics_port == 0
    text = status(server.pid)
    assert text.returncode == 0 and b"\nmetrics " not in text.stdout
    assert json.loads(status(server.pid, "--json").stdout)["metrics"] is None


def test_scoreboard_records_the_metrics_address(tmp_path):
    board = sb.ScoreboardFile(str(tmp_path / "board"), 1, 3, os.getpid())
    try:
        assert (parse(bytes(board.mm)).metrics_port, parse(bytes(board.mm)).metrics_ip) == (0, "")
        board.set_metrics("127.0.0.1", 9100)
        assert bytes(board.mm[184:192]) == b"\x8c\x23\x04\x00\x7f\x00\x00\x01"
        snap = parse(bytes(board.mm))
        assert (snap.metrics_port, snap.metrics_ip) == (9100, "127.0.0.1")
        board.set_metrics("::1", 9101)
        snap = parse(bytes(board.mm))
        assert (snap.metrics_port, snap.metrics_ip) == (9101, "")
    finally:
        board.unlink()


@pytest.mark.parametrize("field", [b"\xff\xff\x07\x00\x01\x02\x03\x04", b"\x00\x00\x04\x00\x7f\x00\x00\x01",
                                   b"\xff" * 8, b"\x01\x00\x00\xff\x00\x00\x00\x00"])
def test_hostile_metrics_bytes_read_as_no_address(tmp_path, field):
    """Any bytes in the field: an unknown family or port 0 is 'no address', never an error."""
    board = sb.ScoreboardFile(str(tmp_path / "board"), 1, 3, os.getpid())
    try:
        image = bytearray(board.mm)
        image[184:192] = field
        snap = parse(bytes(image))
        assert (snap.metrics_port, snap.metrics_ip) == (0, "")
    finally:
        board.unlink()
