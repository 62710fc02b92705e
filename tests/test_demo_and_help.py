"""`make demo`'s program works end to end and leaves nothing behind; every command has --help."""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

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


class _Lines:
    """The demo's stdout, read line by line with a deadline (never a blocking readline)."""

    def __init__(self, stream) -> None:
        self.fd = stream.fileno()
        self.buffer = b""
        self.seen: list[str] = []

    def until(self, pattern: str, seconds: float) -> re.Match:
        deadline = time.monotonic() + seconds
        for _ in range(10_000):
            while b"\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\n", 1)
                self.seen.append(line.decode())
                m = re.search(pattern, self.seen[-1])
                if m:
                    return m
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    break
                self.buffer += chunk
        raise AssertionError(f"no line matching {pattern!r} in:\n" + "\n".join(self.seen))


def _wait_for(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    for _ in range(int(seconds * 10) + 1):
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _read_all(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


@pytest.mark.parametrize("command", ["tcpserver", "tcpclient", "tcprules", "tcprulescheck"])
def test_djb_style_help_names_arguments_and_wraps_between_options(command):
    """--help shows djb's argument names (``-c limit``), not click's TEXT/NUMBER, and wraps the usage
    line only between options: no ``[ ... ]`` group is split across two lines."""
    done = subprocess.run([ours(command), "--help"], capture_output=True, timeout=30)
    text = done.stdout.decode()
    assert done.returncode == 0 and text.startswith(f"usage: {command} "), text
    assert not re.search(r"\b(TEXT|NUMBER|INTEGER)\b", text), text
    usage = text.split("\n\n", 1)[0].splitlines()
    assert all(len(line) <= 80 and line.count("[") == line.count("]") for line in usage), usage
    if command == "tcpserver":
        assert re.search(r"^  -c limit +at most", text, re.M) and re.search(r"^  --workers N ", text, re.M), text


def test_demo_runs_a_supervised_tree_and_leaves_nothing_on_ctrl_c(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path), "DEMO_PORT": "0", "DEMO_METRICS_PORT": "0"}
    demo = subprocess.Popen([sys.executable, "-m", "prefork.demo"], stdout=subprocess.PIPE, env=env,
                            stdin=subprocess.DEVNULL)
    recorded: list[psutil.Process] = []
    try:
        out = _Lines(demo.stdout)
        tree = Path(out.until(r"supervises the services in (\S+)$", 60)[1])
        port = int(out.until(r"tcpserver on 127\.0\.0\.1:(\d+) ", 5)[1])
        out.until(rf"svc -d {re.escape(str(tree))}/greeting ", 5)
        current = tree / "greeting" / "log" / "main" / "current"
        out.until(rf"tai64nlocal < {re.escape(str(current))}$", 5)
        url = out.until(r"metrics: +(http://127\.0\.0\.1:\d+/metrics)$", 5)[1]
        out.until(r"^Ctrl-C stops every service", 5)
        recorded = psutil.Process(demo.pid).children(recursive=True)
        names = sorted(os.path.basename(p.cmdline()[0]) for p in recorded)
        assert {"svscan", "tcpserver", "multilog", "prefork-exporter"} <= set(names), names

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
            client_port = s.getsockname()[1]

        def counted() -> str | None:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = r.read().decode()
            return body if re.search(r'^tcpserver_connections_accepted_total\{service="greeting"\} 1\.0$', body, re.M) else None

        body = _wait_for(counted, 20, "the connection in the metrics")
        assert re.search(r'^supervise_up\{directory="[^"]+",service="greeting"\} 1\.0$', body, re.M), body
        ok = rf"^@[0-9a-f]{{24}} tcpserver: ok (\d+) localhost:127\.0\.0\.1:{port} :127\.0\.0\.1::{client_port}$".encode()
        pid = _wait_for(lambda: re.search(ok, _read_all(current), re.M), 20, "the ok line")[1]
        _wait_for(lambda: re.search(rb"^@[0-9a-f]{24} tcpserver: end " + pid + rb" status 0$", _read_all(current), re.M),
                  20, "the end line")
        out.until(r"^greeting: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{9} tcpserver: ok ", 10)  # the log, followed
        svstat = subprocess.run([ours("svstat"), str(tree / "greeting")], capture_output=True, timeout=30)
        assert re.fullmatch(rb".*/greeting: up \(pid \d+\) \d+ seconds\n", svstat.stdout), svstat.stdout
        # the printed commands keep working: svc -d then -u brings the greeting back on the same port
        assert subprocess.run([ours("svc"), "-d", str(tree / "greeting")], timeout=30).returncode == 0
        _wait_for(lambda: b": down " in subprocess.run([ours("svstat"), str(tree / "greeting")], capture_output=True,
                                                       timeout=30).stdout, 20, "the greeting down")
        assert subprocess.run([ours("svc"), "-u", str(tree / "greeting")], timeout=30).returncode == 0

        def greets() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                    s.settimeout(5)
                    return s.recv(64).startswith(b"welcome to prefork")
            except OSError:
                return False

        _wait_for(greets, 20, "the greeting back on the printed port")

        demo.send_signal(signal.SIGINT)  # what Ctrl-C sends the foreground process
        assert demo.wait(timeout=60) == 0
        out.until(rf"^demo: every service is down, {re.escape(str(tree))} removed$", 5)
        gone, alive = psutil.wait_procs(recorded, timeout=10)
        assert not alive, alive
        assert not tree.exists()
        assert list(tmp_path.iterdir()) == []
    finally:
        if demo.poll() is None:
            demo.kill()
        for proc in recorded:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        demo.wait(timeout=10)
        demo.stdout.close()


def test_demo_tree_layout(tmp_path):
    """build_tree: what `make demo` supervises, one service per directory, each with a logger."""
    from prefork.demo import build_tree

    tree = build_tree(str(tmp_path), str(Path(ours("tcprules")).parent), "7", "9")
    for service in ("greeting", "metrics"):
        for run in (tmp_path / service / "run", tmp_path / service / "log" / "run"):
            assert os.access(run, os.X_OK)
            assert subprocess.run(["/bin/sh", "-n", str(run)], timeout=30).returncode == 0
    assert " 127.0.0.1 7 ./greeter" in (tmp_path / "greeting" / "run").read_text()
    assert "--listen 127.0.0.1:9 " in (tmp_path / "metrics" / "run").read_text()
    assert tree.board in (tmp_path / "metrics" / "run").read_text()
    check = subprocess.run([ours("tcprulescheck"), str(tmp_path / "greeting" / "rules.cdb")], capture_output=True,
                           env={"TCPREMOTEIP": "127.0.0.1"}, timeout=30)
    assert check.stdout == b'rule 127.0.0.1:\nset environment variable GREETING=welcome to prefork\nallow connection\n'


def _leftovers(where: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if any(str(where) in arg for arg in proc.cmdline()) or proc.cwd().startswith(str(where)):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def _demo_fails(tmp_path: Path, **ports: str) -> subprocess.CompletedProcess:
    """Run the demo with bad ports; it must fail at once and leave neither its tree nor a process behind."""
    env = {**os.environ, "TMPDIR": str(tmp_path), "DEMO_PORT": "0", "DEMO_METRICS_PORT": "0", **ports}
    started = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", "prefork.demo"], capture_output=True, env=env, timeout=60,
                              stdin=subprocess.DEVNULL)
    finally:
        left = _leftovers(tmp_path)
        for p in left:
            p.kill()
    assert time.monotonic() - started < 20  # it says why as soon as the service logs it, not after 30 s
    assert not left, left
    assert list(tmp_path.iterdir()) == []
    assert proc.stdout == b""
    return proc


def _busy_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def test_demo_with_a_busy_port_says_so(tmp_path):
    with _busy_port() as s:
        proc = _demo_fails(tmp_path, DEMO_PORT=str(s.getsockname()[1]))
    assert proc.returncode == 111
    assert proc.stderr == (b"demo: tcpserver: fatal: unable to bind: address already used"
                           b" (DEMO_PORT and DEMO_METRICS_PORT choose the ports; 0 lets the kernel choose)\n")


def test_demo_with_a_busy_metrics_port_says_so(tmp_path):
    with _busy_port() as s:
        port = s.getsockname()[1]
        proc = _demo_fails(tmp_path, DEMO_METRICS_PORT=str(port))
    assert proc.returncode == 111
    assert proc.stderr.startswith(f"demo: prefork-exporter: fatal: unable to bind 127.0.0.1 port {port}: ".encode())


def test_demo_with_a_port_that_is_not_a_number(tmp_path):
    proc = _demo_fails(tmp_path, DEMO_PORT="7000; echo")
    assert proc.returncode == 100
    assert proc.stderr == b"demo: DEMO_PORT must be a port number (0 lets the kernel choose), not '7000; echo'\n"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_demo_stopped_while_starting_leaves_nothing(tmp_path, sig):
    env = {**os.environ, "TMPDIR": str(tmp_path), "DEMO_PORT": "0", "DEMO_METRICS_PORT": "0"}
    demo = subprocess.Popen([sys.executable, "-m", "prefork.demo"], stdout=subprocess.PIPE, env=env,
                            stdin=subprocess.DEVNULL)
    try:
        _wait_for(lambda: list(tmp_path.glob("prefork-demo.*/greeting/supervise")), 30, "svscan to start")
        demo.send_signal(sig)
        out, _ = demo.communicate(timeout=60)
        assert demo.returncode == 0
        assert out.endswith(b" removed\n")
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(timeout=10)
        left = _leftovers(tmp_path)
        for p in left:
            p.kill()
    assert not left, left
    assert list(tmp_path.iterdir()) == []


def test_demo_killed_outright_still_stops_its_services(tmp_path):
    """SIGKILL leaves the demo no say: svscan gets SIGTERM from the kernel (parent-death signal) and stops the tree."""
    env = {**os.environ, "TMPDIR": str(tmp_path), "DEMO_PORT": "0", "DEMO_METRICS_PORT": "0"}
    demo = subprocess.Popen([sys.executable, "-m", "prefork.demo"], stdout=subprocess.PIPE, env=env,
                            stdin=subprocess.DEVNULL)
    recorded: list[psutil.Process] = []
    try:
        _Lines(demo.stdout).until(r"^Ctrl-C stops every service", 60)
        recorded = psutil.Process(demo.pid).children(recursive=True)
        assert len(recorded) >= 5
        demo.kill()
        demo.wait(timeout=10)
        gone, alive = psutil.wait_procs(recorded, timeout=20)
        assert not alive, alive
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(timeout=10)
        for proc in recorded:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        demo.stdout.close()
