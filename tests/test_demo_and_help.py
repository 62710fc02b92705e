"""`make demo`'s program works end to end and leaves nothing behind; every command has --help."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest
from conftest import ours


def _console_scripts() -> list[str]:
    import tomllib
    from pathlib import Path

    with open(Path(__file__).resolve().parent.parent / "pyproject.toml", "rb") as f:
        return sorted(tomllib.load(f)["project"]["scripts"])


@pytest.mark.parametrize("command", _console_scripts())
def test_every_command_has_help(command):
    proc = subprocess.run([ours(command), "--help"], capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(b"usage: " + command.encode())
    assert proc.stderr == b""


def test_demo_greets_a_loopback_client_and_cleans_up():
    env = dict(os.environ, DEMO_PORT="0")
    demo = subprocess.Popen([sys.executable, "-m", "prefork.demo"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    try:
        port = None
        deadline = time.monotonic() + 30
        lines = []
        while port is None and time.monotonic() < deadline:
            line = demo.stdout.readline().decode()
            if not line:
                break
            lines.append(line)
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if m:
                port = int(m[1])
        assert port, "".join(lines)
        server_pids = [p.pid for p in psutil.Process(demo.pid).children(recursive=True)]
        assert server_pids
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.settimeout(10)
            reply = b""
            while b"echo it back" not in reply:
                chunk = s.recv(4096)
                assert chunk, reply
                reply += chunk
            assert reply.startswith(b"welcome to prefork, 127.0.0.1:")
            s.sendall(b"ping\n")
            rest = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                rest += chunk
            assert rest.endswith(b"you said: ping\n")
    finally:
        demo.send_signal(signal.SIGTERM)
        try:
            demo.wait(15)
        finally:
            if demo.poll() is None:
                demo.kill()
                demo.wait(5)
    assert demo.returncode == 0
    procs = []
    for pid in server_pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    gone, alive = psutil.wait_procs(procs, timeout=10)
    assert not alive, alive
