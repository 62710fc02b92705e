"""loadtest.preexec: the probe reports its own CPU at start, through a bare spawn and through real servers."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
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


@pytest.mark.parametrize("which", ["ours", "debian", "python-floor"])
def test_probe_load_reads_one_figure_per_connection(probe: Path, which: str) -> None:
    server = {"ours": [ours("tcpserver"), "--workers", "1"], "debian": [real("tcpserver")],
              "python-floor": [sys.executable, "-m", "loadtest.pyfloor"]}[which]
    proc = subprocess.Popen([*server, "-1", "-q", "-H", "-R", "-l0", "127.0.0.1", "0", str(probe)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        values, errors = preexec.probe_load("127.0.0.1", port, 40, clients=2, timeout=5.0)
    finally:
        proc.terminate()
        proc.wait(10)
    assert errors == 0 and len(values) == 40 and all(v > 0 for v in values)


def _serve_once(argv: list[str]) -> bytes:
    """Start a tcpserver-style ARGV (-1 given), read what one connection's program writes, stop it by pid."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={"PATH": "/usr/bin:/bin"})
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        return data
    finally:
        proc.terminate()
        proc.wait(10)


def _tcp_env(text: bytes, port_of: dict[bytes, bytes]) -> dict[bytes, bytes]:
    env = dict(line.partition(b"=")[::2] for line in text.splitlines())
    return {k: port_of.get(k, v) for k, v in env.items() if k.startswith(b"TCP") or k == b"PROTO"}


@pytest.mark.parametrize("mode", [[], ["--contract"]])
def test_python_floor_gives_the_program_what_088_gives_under_H_R_l0(mode: list[str]) -> None:
    """The floor does 0.88's environment work, no less: the same variables as Debian's tcpserver -H -R -l0."""
    flags = ["-1", "-q", "-H", "-R", "-l0", "-c", "40", "127.0.0.1", "0", "/usr/bin/env"]
    ports = {b"TCPLOCALPORT": b"L", b"TCPREMOTEPORT": b"R"}
    floor = _tcp_env(_serve_once([sys.executable, "-m", "loadtest.pyfloor", *mode, *flags]), ports)
    debian = _tcp_env(_serve_once([real("tcpserver"), *flags]), ports)
    assert floor == debian == {b"PROTO": b"TCP", b"TCPLOCALIP": b"127.0.0.1", b"TCPLOCALPORT": b"L",
                               b"TCPLOCALHOST": b"0", b"TCPREMOTEIP": b"127.0.0.1", b"TCPREMOTEPORT": b"R"}


@pytest.mark.parametrize("argv", [["127.0.0.1", "0"], ["-1", "127.0.0.1", "7", "/bin/true"], ["-c"], ["-Z", "h", "0", "p"]])
def test_python_floor_refuses_a_command_line_it_cannot_serve(argv: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "loadtest.pyfloor", *argv], capture_output=True, timeout=30)
    assert done.returncode == 1 and done.stderr.startswith(b"usage: python -m loadtest.pyfloor")


def test_python_floor_contract_keeps_at_most_c_programs(tmp_path: Path) -> None:
    """--contract obeys -c: with -c 2 and programs that sleep, a third client waits until one ends."""
    proc = subprocess.Popen([sys.executable, "-m", "loadtest.pyfloor", "--contract", "-1", "-c", "2", "127.0.0.1",
                             "0", "/bin/sh", "-c", "echo x; sleep 1"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    clients = []
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        for _ in range(3):
            c = socket.create_connection(("127.0.0.1", port), timeout=10)
            clients.append(c)
        for c in clients[:2]:
            assert c.recv(10) == b"x\n"
        clients[2].settimeout(0.5)
        with pytest.raises(TimeoutError):
            clients[2].recv(10)  # its program has not started: two run
        clients[2].settimeout(10)
        assert clients[2].recv(10) == b"x\n"  # one ended (after 1 s): the third starts
    finally:
        for c in clients:
            c.close()
        proc.terminate()
        proc.wait(10)
