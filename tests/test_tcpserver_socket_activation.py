"""tcpserver under systemd socket activation (prefork/activation.py): the inherited socket served
instead of a bind, reported everywhere, kept from the programs along with the LISTEN_* variables;
activation addressed elsewhere ignored; an unusable fd 3 fatal.

The activation is done by hand (a listening socket handed over as stdin, moved to fd 3 by a shell
that then sets LISTEN_PID to its own pid and execs tcpserver) and by systemd's own
systemd-socket-activate where it is installed."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import uuid

import psutil
import pytest
from conftest import ours
from tcpserver_harness import (
    QUIET,
    TAG_VAR,
    VIEW,
    Server,
    base_env,
    descendants,
    kill_procs,
    parse_view,
    random_loopback,
    read_line,
    talk,
    wait_until,
)

# fd 0 (what the test hands over) becomes fd 3; LISTEN_PID=SELF becomes the pid tcpserver will have.
WRAP = ["sh", "-c", 'exec 3<&0 </dev/null; case "$LISTEN_PID" in SELF) LISTEN_PID=$$;; esac; exec "$@"', "sh"]
WRAP_CLOSED_3 = ["sh", "-c", 'exec 3<&- </dev/null; LISTEN_PID=$$ exec "$@"', "sh"]
SOCKET_ACTIVATE = "/usr/bin/systemd-socket-activate"
O_CLOEXEC = 0o2000000  # the flags field of /proc/PID/fdinfo/N is octal


def listener(host: str = "127.0.0.1", family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM,
             listen: bool = True) -> socket.socket:
    sock = socket.socket(family, kind)
    sock.bind((host, 0))
    if listen:
        sock.listen(16)
    return sock


def unix_listener() -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(f"\0prefork-test-{uuid.uuid4().hex}")  # abstract: nothing left on disk
    sock.listen(1)
    return sock


def activation_env(pid: str = "SELF", fds: str = "1", **extra: str) -> dict[str, str]:
    return base_env(LISTEN_PID=pid, LISTEN_FDS=fds, **extra)


def listen_vars(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith("LISTEN_")}


def test_serves_the_inherited_socket(prefork):
    with listener() as sock:
        port = sock.getsockname()[1]
        server = prefork([*QUIET, "-v"], [VIEW], port="0", env=activation_env(LISTEN_FDNAMES="echo"), wrap=WRAP,
                         stdin=sock.fileno())
    assert server.port == port  # -1 prints the inherited socket's port
    reply, cport = talk(port)
    view = parse_view(reply)
    env = view["env"]
    assert (env["TCPLOCALIP"], env["TCPLOCALPORT"]) == ("127.0.0.1", str(port))
    assert listen_vars(env) == {}  # consumed: sd_listen_fds(1)
    assert sorted(view["fds"]) == [0, 1, 2]  # the listening socket is no program's
    lines = server.wait_ends(1)
    assert f"tcpserver: ok {parse_ok_pid(lines)} 0:127.0.0.1:{port} :127.0.0.1::{cport}" in lines
    assert not [line for line in lines if "warning" in line], lines  # 0 0: any socket is as asked
    with open(f"/proc/{server.pid}/fdinfo/3") as f:  # the master's fd 3: the socket, close-on-exec
        flags = int(re.search(r"^flags:\s*(\d+)", f.read(), re.M)[1], 8)
    assert flags & O_CLOEXEC and os.readlink(f"/proc/{server.pid}/fd/3").startswith("socket:")
    status = subprocess.run([ours("tcpserver-status"), "--json", str(server.pid)], capture_output=True, timeout=15,
                            env=base_env())
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["local"] == f"127.0.0.1:{port}"


def parse_ok_pid(lines: list[str]) -> str:
    return next(m[1] for line in lines if (m := re.match(r"tcpserver: ok (\d+) ", line)))


def test_host_and_port_that_differ_are_warned_about(prefork):
    with listener() as sock:
        port = sock.getsockname()[1]
        server = prefork(QUIET, ["/bin/echo", "hi"], host="127.0.0.2", port="1", env=activation_env(), wrap=WRAP,
                         stdin=sock.fileno())
    assert server.port == port and talk(port)[0] == b"hi\n"
    expected = f"tcpserver: warning: socket activation: serving 127.0.0.1:{port} from fd 3, not 127.0.0.2:1 as given"
    assert server.wait_lines(lambda lines: expected in lines) == [expected]


@pytest.mark.parametrize(
    ("pid", "fds", "passed_on"),
    [
        ("1", "1", True),  # addressed to another process: not ours, passed on as any variable
        ("garbage", "1", True),
        ("", "1", True),
        ("SELF", "0", False),  # addressed to us, nothing passed: consumed, and tcpserver binds
        ("SELF", "x", False),
        ("SELF", "", False),
    ],
)
def test_activation_not_addressed_here_binds(prefork, pid, fds, passed_on):
    with listener() as sock:
        inherited = sock.getsockname()[1]
        server = prefork(QUIET, [VIEW], env=activation_env(pid, fds), wrap=WRAP, stdin=sock.fileno())
        assert server.port != inherited
        env = parse_view(talk(server.port)[0])["env"]
    assert env["TCPLOCALPORT"] == str(server.port)
    if passed_on:
        assert listen_vars(env) == {"LISTEN_PID": pid, "LISTEN_FDS": fds}
    else:
        assert listen_vars(env) == {}


def fatal_run(wrap: list[str], env: dict[str, str], stdin: int | None) -> subprocess.CompletedProcess:
    """Run the wrapped tcpserver that must fail at start-up; killed by pid if it does not exit."""
    argv = [*wrap, ours("tcpserver"), "-1", *QUIET, "127.0.0.1", "0", "/bin/echo", "hi"]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL if stdin is None else stdin, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    try:
        out, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        kill_procs([*descendants(proc.pid), psutil.Process(proc.pid)])
        proc.communicate()
        raise AssertionError(f"{argv} did not exit") from None
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: listener(listen=False), "socket activation fd 3 is not listening"),
        (lambda: listener(kind=socket.SOCK_DGRAM), "socket activation fd 3 is not a TCP stream socket"),
        (lambda: unix_listener(), "socket activation fd 3 is not an IPv4 or IPv6 socket"),
        (lambda: None, "unable to use socket activation fd 3: not a socket"),  # /dev/null
    ],
    ids=["not-listening", "udp", "unix", "not-a-socket"],
)
def test_unusable_fd_3_is_fatal(make, message):
    try:
        sock = make()
    except OSError as e:  # no IPv6 here
        pytest.skip(f"cannot make the socket: {e}")
    try:
        result = fatal_run(WRAP, activation_env(), None if sock is None else sock.fileno())
    finally:
        if sock is not None:
            sock.close()
    assert (result.returncode, result.stderr.decode(), result.stdout) == (111, f"tcpserver: fatal: {message}\n", b"")


def test_closed_fd_3_is_fatal():
    result = fatal_run(WRAP_CLOSED_3, base_env(LISTEN_FDS="1"), None)
    expected = "tcpserver: fatal: unable to use socket activation fd 3: file descriptor not open\n"
    assert (result.returncode, result.stderr.decode(), result.stdout) == (111, expected, b"")


def test_more_than_one_socket_is_fatal():
    with listener() as sock:
        result = fatal_run(WRAP, activation_env(fds="2"), sock.fileno())
    expected = "tcpserver: fatal: socket activation passed 2 sockets (LISTEN_FDS); tcpserver serves one\n"
    assert (result.returncode, result.stderr.decode(), result.stdout) == (111, expected, b"")


# -- systemd's own activator ---------------------------------------------------------------------------


def start_socket_activate(tmp_path, attempt: int) -> tuple[Server, str, int] | None:
    """systemd-socket-activate listening on a free port of a random loopback address, running tcpserver
    on the first connection; None when the port was taken meanwhile (the caller tries another)."""
    host = random_loopback()
    with listener(host) as probe:
        port = probe.getsockname()[1]
    tag = uuid.uuid4().hex
    errfile = tmp_path / f"activate.{attempt}"
    argv = [SOCKET_ACTIVATE, "-l", f"{host}:{port}", "-E", "PATH=/usr/bin:/bin", "-E", f"{TAG_VAR}={tag}",
            ours("tcpserver"), "-1", *QUIET, "0", "0", VIEW]
    with open(errfile, "wb") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                                env=base_env(), cwd=tmp_path)
    server = Server(proc, port, errfile, tag, host, "prefork")  # execs tcpserver: the same pid
    wait_until(lambda: proc.poll() is not None or "Listening on" in server.stderr(), 10)
    if proc.poll() is not None:
        server.stop()
        if "in use" in server.stderr():
            return None
        raise AssertionError(f"systemd-socket-activate exited {proc.returncode}: {server.stderr()}")
    return server, host, port


@pytest.mark.skipif(not os.access(SOCKET_ACTIVATE, os.X_OK), reason="systemd-socket-activate is not installed")
def test_systemd_socket_activate(tmp_path):
    started = None
    for attempt in range(5):
        started = start_socket_activate(tmp_path, attempt)
        if started is not None:
            break
    assert started is not None, "no free port in 5 attempts"
    server, host, port = started
    try:
        reply, _ = talk(port, host=host)  # this connection starts tcpserver, which then serves it
        env = parse_view(reply)["env"]
        assert (env["TCPLOCALIP"], env["TCPLOCALPORT"]) == (host, str(port))
        assert listen_vars(env) == {}
        assert read_line(server.proc.stdout, 10) == b"%d\n" % port
        assert psutil.Process(server.pid).name() == "tcpserver"
        assert b"env TCPLOCALPORT=%d\n" % port in talk(port, host=host)[0]  # and the next ones
    finally:
        server.stop()
    assert not [line for line in server.lines() if line.startswith("tcpserver:")], server.lines()

