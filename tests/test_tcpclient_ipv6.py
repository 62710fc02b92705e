"""tcpclient over IPv6 (docs/CONTRACTS.md, IPv6) against ucspi-tcp-ipv6's tcpclient, the judge (unpacked in
/opt/ucspi-tcp-ipv6 by .ci/run; the comparisons skip without it): the same environment, -v line, errors and
exit codes for the same command line.  The server is a dual-stack listener on :: port 0 in this process."""

from __future__ import annotations

import socket
import subprocess
import threading

import pytest
from conftest import judge, ours

pytestmark = pytest.mark.differential

ENV = {"PATH": "/usr/bin:/bin"}


@pytest.fixture
def server():
    """A dual-stack listener that accepts and closes; yields its port."""
    try:
        sock = socket.socket(socket.AF_INET6)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", 0))
    except OSError as e:
        pytest.skip(f"no IPv6 here: {e}")
    sock.listen(64)
    sock.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield sock.getsockname()[1]
    stop.set()
    thread.join(5)
    sock.close()


def client(exe: str, args: list[str], port: int) -> tuple[int, dict[str, str], list[str]]:
    """Run EXE ARGS with the port, `env` as the program; (exit code, its TCP environment, stderr lines),
    the local port replaced by LPORT and the server's by PORT."""
    argv = [exe, *[a.replace("{port}", str(port)) for a in args]]
    proc = subprocess.run(argv, capture_output=True, env=ENV, timeout=30)
    env: dict[str, str] = {}
    for line in proc.stdout.decode().splitlines():
        name, _, value = line.partition("=")
        if name.startswith(("TCP", "PROTO")):
            env[name] = value
    local = env.get("TCPLOCALPORT", "")
    names = {str(port): "PORT", local: "LPORT"}
    for name in ("TCPLOCALPORT", "TCPREMOTEPORT"):
        if name in env:
            env[name] = names.get(env[name], env[name])
    err = proc.stderr.decode().replace(f" port {port}", " port PORT").splitlines()
    return proc.returncode, env, err


CASES = [
    ["-HR", "-l0", "::1", "{port}", "env"],
    ["-HRv", "-l0", "::1", "{port}", "env"],
    ["-HR", "-lname.example", "::1", "{port}", "env"],
    ["-HR", "-l0", "-i", "::1", "::1", "{port}", "env"],
    ["-HR", "-l0", "-6", "127.0.0.1", "{port}", "env"],
    ["-HR", "-l0", "-6", "::1", "{port}", "env"],
    ["-HR", "-l0", "127.0.0.1", "{port}", "env"],
    ["-HR", "-l0", "-I", "lo", "::1", "{port}", "env"],
    ["-HR", "-l0", "-i", "127.0.0.1", "::1", "{port}", "env"],  # -i of the other family
    ["-HR", "-l0", "-6", "::1"],  # usage: no program
]


@pytest.mark.parametrize("args", CASES, ids=[" ".join(c) for c in CASES])
def test_same_as_the_judge(server, args):
    theirs = client(judge("tcpclient"), args, server)
    mine = client(ours("tcpclient"), args, server)
    assert mine == theirs


def test_ipv6_client_environment_exactly(server):
    code, env, err = client(ours("tcpclient"), ["-HRv", "-l0", "[::1]", "{port}", "env"], server)
    assert (code, err) == (0, ["tcpclient: connected to ::1 port PORT"])
    assert env == {"PROTO": "TCP6", "TCPLOCALIP": "::1", "TCPLOCALPORT": "LPORT", "TCPLOCALHOST": "0",
                   "TCPREMOTEIP": "::1", "TCPREMOTEPORT": "PORT"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-4", "::1"], "tcpclient: fatal: no IP address for ::1"),
        (["::g"], "tcpclient: fatal: no IP address for ::g"),
        (["1:2:3:4:5:6:7:8:9"], "tcpclient: fatal: no IP address for 1:2:3:4:5:6:7:8:9"),
        (["[::1"], "tcpclient: fatal: no IP address for [::1"),
    ],
)
def test_hosts_without_an_ipv6_address(server, args, message):
    code, env, err = client(ours("tcpclient"), ["-HR", "-l0", *args, "{port}", "env"], server)
    assert (code, env, err) == (111, {}, [message])


def test_host_0_stays_ipv4_loopback(server):
    code, env, _ = client(ours("tcpclient"), ["-HR", "-l0", "0", "{port}", "env"], server)
    assert (code, env["PROTO"], env["TCPREMOTEIP"]) == (0, "TCP", "127.0.0.1")
