"""``tcpserver --metrics`` / ``svscan --metrics`` and ``--metrics-textfile``: the prefork-exporter child.

Real servers on 127.0.0.1 with ``--metrics 127.0.0.1:0``: the master chooses the port once and every
start of the exporter logs ``prefork-exporter: listening on http://127.0.0.1:PORT/metrics`` on the
server's stderr, which is how the tests learn it (with ``-q`` the port is read from the exporter's
command line instead).  Checked: the scraped counters equal the connections made, an exporter killed
by pid is restarted (one warning, throttled to one start a second) and serves the same address, it
disappears with its server, it is never counted against ``-c`` as an orphaned program, it gets the
server's start-up environment and none of its descriptors, a port in use is retried without
stopping the server, svscan's exporter follows ``svc -d`` and stops after the services with
``--stop-services``, and every bad option value is a usage error (exit 100).

Every process is ended by pid in teardown (tcpserver through its harness, svscans here, both also
through the PREFORK_TEST_TAG their environment carries).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import ours
from tcpserver_harness import (
    QUIET,
    TAG_VAR,
    USAGE,
    command,
    connect,
    kill_procs,
    recv_all,
    run,
    tagged,
    talk,
    wait_until,
)

from prefork.control.svscan import USAGE as SVSCAN_USAGE

LISTENING = re.compile(r"^prefork-exporter: listening on http://127\.0\.0\.1:(\d+)/metrics$", re.M)
EXPORTER = "prefork-exporter"
SLEEP = "exec sleep 300"


# -- helpers ------------------------------------------------------------------------------------
@pytest.fixture
def textfile_dir(tmp_path) -> Iterator[Path]:
    """A directory the exporter may write its textfile in: a root server's exporter runs as nobody
    (docs/THREAT_MODEL.md), and pytest's tmp_path is root's 0700, so as root it is a directory of
    nobody's under a 0711 parent; removed afterwards."""
    if os.geteuid() != 0:
        yield tmp_path
        return
    import shutil
    import tempfile

    parent = Path(tempfile.mkdtemp(prefix="prefork-textfile-"))
    parent.chmod(0o711)
    directory = parent / "textfile"
    directory.mkdir()
    os.chown(directory, 65534, 65534)
    yield directory
    shutil.rmtree(parent, ignore_errors=True)


def exporters_of(pid: int) -> list[psutil.Process]:
    """Live children of PID that are a prefork-exporter (the console script under its interpreter, or its lean exec)."""
    found = []
    try:
        children = psutil.Process(pid).children()
    except psutil.Error:
        return []
    for child in children:
        with contextlib.suppress(psutil.Error):
            argv = child.cmdline()
            if EXPORTER in map(os.path.basename, argv[:2]) and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child)
    return found


def exporter_of(pid: int, other_than: int = 0, timeout: float = 15.0) -> psutil.Process:
    """The one exporter child of PID (a new one when OTHER_THAN is the old pid), waiting for its lean exec."""

    def ready() -> psutil.Process | None:
        found = [p for p in exporters_of(pid) if p.pid != other_than]
        if len(found) != 1:
            return None
        with contextlib.suppress(psutil.Error):
            if found[0].cmdline()[1:3] == ["-I", "-S"]:  # re-executed lean: its environment and fds are final
                return found[0]
        return None

    proc = wait_until(ready, timeout)
    assert proc, f"no exporter under {pid}: {[p.cmdline() for p in exporters_of(pid)]}"
    return proc  # type: ignore[return-value]


def gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def workers_of(pid: int) -> list[psutil.Process]:
    """The tcpserver master's workers: children running the master's own command line."""
    try:
        master = psutil.Process(pid)
        argv0 = master.cmdline()[0]
        children = master.children()
    except psutil.Error:
        return []
    out = []
    for child in children:
        with contextlib.suppress(psutil.Error):
            if child.cmdline()[:1] == [argv0] and child.status() != psutil.STATUS_ZOMBIE:
                out.append(child)
    return out


def metrics_port(read_stderr, count: int = 1, timeout: float = 15.0) -> int:
    """The port of the COUNT-th 'listening on' line of a server's stderr (each exporter start logs one)."""
    ports = wait_until(lambda: len(LISTENING.findall(read_stderr())) >= count and LISTENING.findall(read_stderr()),
                       timeout)
    assert ports, f"no {count} exporter listening lines in:\n{read_stderr()}"
    return int(ports[count - 1])  # type: ignore[index]


def scrape(port: int, timeout: float = 5.0) -> str | None:
    """GET /metrics; None when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as response:
            return response.read().decode()
    except (urllib.error.URLError, OSError):
        return None


def value(text: str | None, name: str, **labels: str) -> float | None:
    """The sample NAME{LABELS...} (a subset of its labels) in an exposition, None if absent."""
    if text is None:
        return None
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        m = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if not m or m[1] != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m[2] or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(m[3])
    return None


def wait_value(port: int, expected: float, name: str, timeout: float = 15.0, **labels: str) -> str:
    """Scrape until NAME{LABELS} equals EXPECTED; the last scrape."""
    last: list[str | None] = [None]

    def ok() -> bool:
        last[0] = scrape(port)
        return value(last[0], name, **labels) == expected

    assert wait_until(ok, timeout, 0.1), f"{name}{labels} != {expected} in:\n{last[0]}"
    return last[0] or ""


def listening_ports(proc: psutil.Process) -> list[int]:
    """The TCP ports PROC has listening sockets on."""
    return sorted(c.laddr.port for c in proc.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN)


def fd_targets(pid: int) -> dict[int, str]:
    out = {}
    for entry in os.scandir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            out[int(entry.name)] = os.readlink(entry.path)
    return out


def environ_of(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        entries = [e.decode() for e in f.read().split(b"\0") if e]
    return dict(e.split("=", 1) for e in entries)


def echo_server(prefork, *opts: str, prog: tuple[str, ...] = ("/bin/echo", "hi")):
    """A prefork tcpserver (-H -R -l0, two workers unless OPTS say otherwise) running PROG."""
    return prefork([*QUIET, *opts], list(prog))


# -- tcpserver --metrics --------------------------------------------------------------------------
def test_scrape_counts_the_connections_made(prefork):
    server = echo_server(prefork, "--metrics", "127.0.0.1:0")
    port = metrics_port(server.stderr)
    assert port != 0
    service = f"127.0.0.1:{server.port}"
    wait_value(port, 0, "tcpserver_connections_accepted_total", service=service)
    for _ in range(7):
        assert talk(server.port)[0] == b"hi\n"
    text = wait_value(port, 7, "tcpserver_connections_accepted_total", service=service)
    assert value(text, "tcpserver_workers", service=service) == 2
    assert value(text, "tcpserver_connections_limit", service=service) == 40
    assert value(text, "prefork_exporter_source_up", kind="scoreboard") == 1
    exporter = exporter_of(server.pid)
    argv = exporter.cmdline()
    assert argv[argv.index("--parent-pid") + 1] == str(server.pid)
    assert argv[argv.index("--listen-fd") + 1] == "3"
    assert listening_ports(exporter) == [port]  # fd 3: the master's socket
    assert argv[argv.index("--scoreboard") + 1] == f"/dev/shm/prefork-tcpserver.{server.pid}"


def test_named_service_label(prefork):
    server = echo_server(prefork, "--name", "echo", "--metrics=127.0.0.1:0")
    port = metrics_port(server.stderr)
    talk(server.port)
    wait_value(port, 1, "tcpserver_connections_accepted_total", service="echo")


def test_exporter_is_one_child_beside_the_workers(prefork):
    server = echo_server(prefork, "--metrics", "127.0.0.1:0", "--workers", "3")
    exporter = exporter_of(server.pid)
    assert wait_until(lambda: len(workers_of(server.pid)) == 3, 10)
    assert exporter.pid not in {w.pid for w in workers_of(server.pid)}
    assert exporter.ppid() == server.pid
    assert len(exporters_of(server.pid)) == 1
    for worker in workers_of(server.pid):
        assert exporters_of(worker.pid) == []


def test_killed_exporter_is_restarted_and_serves_the_same_address(prefork):
    server = echo_server(prefork, "--metrics", "127.0.0.1:0")
    port = metrics_port(server.stderr)
    first = exporter_of(server.pid)
    os.kill(first.pid, signal.SIGKILL)
    second = exporter_of(server.pid, other_than=first.pid)
    assert metrics_port(server.stderr, 2) == port
    warning = f"tcpserver: warning: metrics exporter {first.pid} killed by signal 9; restarting it"
    assert server.wait_lines(lambda lines: warning in lines), server.stderr()
    talk(server.port)
    wait_value(port, 1, "tcpserver_connections_accepted_total")
    # an exporter that exits (SIGTERM: status 0) is restarted too, with its exit status in the warning
    os.kill(second.pid, signal.SIGTERM)
    exporter_of(server.pid, other_than=second.pid)
    warning = f"tcpserver: warning: metrics exporter {second.pid} exited with status 0; restarting it"
    assert server.wait_lines(lambda lines: warning in lines), server.stderr()
    wait_value(port, 1, "tcpserver_connections_accepted_total")


def test_restarts_are_throttled_to_one_a_second(prefork):
    """A crash loop costs one start a second: an exporter that lived less than a second starts again a second
    after its own start (process start times, in clock ticks)."""
    server = echo_server(prefork, "--metrics", "127.0.0.1:0")
    metrics_port(server.stderr)
    starts = []
    exporter = exporter_of(server.pid)
    for _ in range(3):
        os.kill(exporter.pid, signal.SIGKILL)
        exporter = exporter_of(server.pid, other_than=exporter.pid)
        starts.append(exporter.create_time())
    assert starts[1] - starts[0] >= 0.95 and starts[2] - starts[1] >= 0.95, starts
    port = metrics_port(server.stderr)
    wait_value(port, 0, "tcpserver_connections_accepted_total")  # the last one serves (the others may not have)
    assert server.stderr().count("killed by signal 9; restarting it") == 3


def test_sigterm_of_the_server_takes_the_exporter_away(prefork):
    server = echo_server(prefork, "--metrics", "127.0.0.1:0")
    port = metrics_port(server.stderr)
    exporter = exporter_of(server.pid)
    server.proc.terminate()
    assert server.proc.wait(5) == 0
    assert wait_until(lambda: gone(exporter), 3, 0.02), "the exporter outlived its server"
    assert wait_until(lambda: scrape(port, 1) is None, 3)


def test_sigkill_of_the_server_takes_the_exporter_away(prefork):
    server = echo_server(prefork, "--metrics", "127.0.0.1:0")
    metrics_port(server.stderr)
    exporter = exporter_of(server.pid)
    server.proc.kill()
    server.proc.wait(5)
    assert wait_until(lambda: gone(exporter), 3, 0.02), "the exporter outlived its server"


def test_exporter_is_not_an_orphan_program(prefork):
    """-c 2, one worker: a program orphaned by a SIGKILLed worker holds one slot, the exporter none."""
    server = echo_server(prefork, "--metrics", "127.0.0.1:0", "--workers", "1", "-c", "2", prog=("/bin/cat",))
    port = metrics_port(server.stderr)
    exporter = exporter_of(server.pid)
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(connect(server.port))
        first.sendall(b"one\n")
        assert first.recv(10) == b"one\n"
        (worker,) = wait_until(lambda: workers_of(server.pid), 10)
        os.kill(worker.pid, signal.SIGKILL)
        assert wait_until(lambda: [w for w in workers_of(server.pid) if w.pid != worker.pid], 10)
        text = wait_value(port, 1, "tcpserver_orphan_connections")
        assert value(text, "tcpserver_connections_active") == 1
        second = stack.enter_context(connect(server.port))
        second.sendall(b"two\n")
        assert second.recv(10) == b"two\n", "the second slot of -c 2 was not free"
        third = stack.enter_context(connect(server.port))
        third.sendall(b"three\n")
        third.settimeout(1.0)
        with pytest.raises(TimeoutError):
            third.recv(10)  # the limit is 2: the third waits in the backlog
        wait_value(port, 2, "tcpserver_connections_active")
        first.shutdown(socket.SHUT_WR)
        assert recv_all(first) == b""
        third.settimeout(10)
        assert third.recv(10) == b"three\n", "the orphan's slot was not given back"
        text = wait_value(port, 0, "tcpserver_orphan_connections")
        # The orphan's exit is counted, and so is its duration (over a second: the third client waited 1 s).
        exits = sum(value(text, "tcpserver_program_exits_total", exit=e) or 0 for e in ("zero", "nonzero", "signal"))
        assert exits == 1
        assert value(text, "tcpserver_connection_duration_seconds_count") == 1
        assert value(text, "tcpserver_connection_duration_seconds_bucket", le="0.5") == 0
        assert value(text, "tcpserver_connection_duration_seconds_bucket", le="+Inf") == 1
        assert value(text, "tcpserver_connection_duration_seconds_sum") >= 0.99
    assert exporter.is_running() and exporter.status() != psutil.STATUS_ZOMBIE
    assert "metrics exporter" not in server.stderr()


def test_exporter_gets_the_start_up_environment_and_no_descriptors(prefork):
    server = echo_server(prefork, "--metrics", "127.0.0.1:0")
    metrics_port(server.stderr)
    exporter = exporter_of(server.pid)
    env = environ_of(exporter.pid)
    assert env == {"PATH": "/usr/bin:/bin", TAG_VAR: server.tag}  # no LC_CTYPE from Python's coercion
    mine, master = fd_targets(exporter.pid), fd_targets(server.pid)
    assert mine[0] == mine[1] == os.devnull
    assert mine[2] == master[2] == str(server.errfile)
    shared = {t for fd, t in mine.items() if fd > 2} & {t for fd, t in master.items() if fd > 2}
    # The one thing shared is the metrics socket the master holds (--listen-fd 3); workers do not have it.
    assert {t for t in shared if t.startswith(("socket:", "pipe:"))} == {mine[3]}, (shared, mine)
    assert listening_ports(exporter) == [metrics_port(server.stderr)]
    for worker in workers_of(server.pid):
        assert mine[3] not in fd_targets(worker.pid).values()


def test_the_metrics_port_is_held_while_the_exporter_restarts(prefork):
    """Port 0 is picked once and held by the server: between two exporters nothing else can bind it, and a
    scrape in the gap waits in the backlog and is answered by the next exporter."""
    server = echo_server(prefork, "--metrics", "127.0.0.1:0")
    port = metrics_port(server.stderr)
    wait_value(port, 0, "tcpserver_connections_accepted_total")
    exporter = exporter_of(server.pid)
    os.kill(exporter.pid, signal.SIGKILL)
    with socket.socket() as thief:
        thief.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT, stopped only by a listener
        with pytest.raises(OSError) as err:
            thief.bind(("127.0.0.1", port))
        assert err.value.errno == errno.EADDRINUSE
    # a scrape made now is queued, then answered by the restarted exporter on the same address
    assert value(scrape(port, 15), "tcpserver_connections_accepted_total") == 0
    assert exporter_of(server.pid, other_than=exporter.pid).pid != exporter.pid


def test_port_in_use_is_retried_every_second_while_serving(prefork):
    """Decision: the address is the exporter's to bind; while it cannot, the server serves and warns on each retry."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = taken.getsockname()[1]
        started = time.monotonic()
        server = echo_server(prefork, "--metrics", f"127.0.0.1:{busy}")
        fatal = f"prefork-exporter: fatal: unable to bind 127.0.0.1 port {busy}: address already used"
        retry = re.compile(r"^tcpserver: warning: metrics exporter \d+ exited with status 111; restarting it$")
        lines = server.wait_lines(lambda lines: sum(1 for ln in lines if retry.match(ln)) >= 3, 20)
        assert sum(1 for ln in lines if retry.match(ln)) >= 3, lines
        assert time.monotonic() - started >= 1.9  # three exits, at least two throttled restarts
        assert fatal in lines
        assert talk(server.port)[0] == b"hi\n"
    port = metrics_port(server.stderr, 1, 20)  # freed: a restart binds it
    assert port == busy
    wait_value(port, 1, "tcpserver_connections_accepted_total")


def test_quiet_silences_the_exporter_too(prefork):
    server = echo_server(prefork, "-q", "--metrics", "127.0.0.1:0")
    exporter = exporter_of(server.pid)
    argv = exporter.cmdline()
    assert "--listen-fd" in argv
    (port,) = listening_ports(exporter)
    talk(server.port)
    wait_value(port, 1, "tcpserver_connections_accepted_total")
    os.kill(exporter.pid, signal.SIGKILL)
    exporter_of(server.pid, other_than=exporter.pid)
    wait_value(port, 1, "tcpserver_connections_accepted_total")
    assert server.stderr() == ""


def test_textfile_without_listening(prefork, textfile_dir):
    path = textfile_dir / "tcpserver.prom"
    server = echo_server(prefork, "--metrics-textfile", str(path))
    exporter = exporter_of(server.pid)
    assert "--listen" not in exporter.cmdline()
    service = f"127.0.0.1:{server.port}"
    assert wait_until(lambda: path.exists() and value(path.read_text(), "tcpserver_connections_accepted_total",
                                                     service=service) == 0, 15)
    for _ in range(3):
        talk(server.port)
    os.kill(exporter.pid, signal.SIGUSR1)  # the exporter rewrites its textfile at once
    assert wait_until(lambda: value(path.read_text(), "tcpserver_connections_accepted_total", service=service) == 3,
                      10), path.read_text()
    assert LISTENING.search(server.stderr()) is None
    server.proc.terminate()
    server.proc.wait(5)
    assert wait_until(lambda: gone(exporter), 3, 0.02)
    # its last write shows the server gone, not its counters as if live
    text = path.read_text()
    assert value(text, "prefork_exporter_source_up", kind="scoreboard") == 0, text
    assert value(text, "tcpserver_connections_accepted_total") is None
    assert not list(textfile_dir.glob("tcpserver.prom.new*"))


def test_both_options_together(prefork, textfile_dir):
    path = textfile_dir / "m.prom"
    server = echo_server(prefork, "--metrics", "127.0.0.1:0", "--metrics-textfile", str(path))
    port = metrics_port(server.stderr)
    talk(server.port)
    wait_value(port, 1, "tcpserver_connections_accepted_total")
    assert wait_until(path.exists, 10)
    assert len(exporters_of(server.pid)) == 1


def test_without_the_options_there_is_no_exporter(prefork):
    server = echo_server(prefork)
    assert wait_until(lambda: len(workers_of(server.pid)) == 2, 10)
    time.sleep(0.3)
    assert exporters_of(server.pid) == []
    assert talk(server.port)[0] == b"hi\n"


def test_without_the_options_nothing_is_imported():
    code = (
        "import sys\n"
        "import prefork.tcpserver_cli, prefork.master, prefork.serverconfig, prefork.control.svscan\n"
        "print(sorted(m for m in sys.modules if 'exporter' in m or m.startswith('prefork.metrics')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout == "[]\n", out


# -- bad values: usage errors, exit 100 ----------------------------------------------------------
def tcpserver_usage_error(*opts: str) -> list[str]:
    result = run([*command("prefork"), *opts, *QUIET, "127.0.0.1", "0", "true"])
    lines = result.stderr.decode().splitlines()
    assert result.returncode == 100, result
    assert lines[-1] == USAGE, lines
    return lines


def test_metrics_without_port():
    assert tcpserver_usage_error("--metrics", "127.0.0.1") == [
        "tcpserver: bad value for --metrics: not HOST:PORT: '127.0.0.1'", USAGE]


def test_metrics_port_not_a_number():
    assert tcpserver_usage_error("--metrics", "127.0.0.1:http")[0] == (
        "tcpserver: bad value for --metrics: port is not a number: '127.0.0.1:http'")


def test_metrics_port_too_large():
    assert tcpserver_usage_error("--metrics=127.0.0.1:65536")[0] == (
        "tcpserver: bad value for --metrics: port is larger than 65535: '127.0.0.1:65536'")


def test_metrics_empty_port():
    assert tcpserver_usage_error("--metrics", "127.0.0.1:")[0] == (
        "tcpserver: bad value for --metrics: port is not a number: '127.0.0.1:'")


def test_metrics_bad_host():
    assert tcpserver_usage_error("--metrics", "[::1:9100")[0] == "tcpserver: bad value for --metrics: not a host: '[::1'"


def test_metrics_missing_value():
    result = run([*command("prefork"), "--metrics"])
    assert result.returncode == 100
    assert result.stderr.decode().splitlines()[-1] == USAGE


def test_metrics_is_long_only():
    """No letter: `-metrics` is bundled letters, and 0.88's -m does not exist."""
    assert tcpserver_usage_error("-metrics", "127.0.0.1:0")[0] == "tcpserver: illegal option -- m"


def test_metrics_textfile_empty():
    assert tcpserver_usage_error("--metrics-textfile", "")[0] == (
        "tcpserver: bad value for --metrics-textfile: empty path")


# -- svscan --metrics --------------------------------------------------------------------------------
def make_service(root: Path, name: str, run: str = SLEEP) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "run").write_text(f"#!/bin/sh\n{run}\n")
    (d / "run").chmod(0o755)
    return d


class Scan:
    """A prefork svscan on ROOT with ARGS; stderr in a file beside ROOT."""

    def __init__(self, root: Path, args: tuple[str, ...], cwd: Path | None = None) -> None:
        self.tag = f"metrics-{uuid.uuid4().hex}"
        self.errfile = root.parent / f"{root.name}.err"
        env = {"PATH": "/usr/bin:/bin", TAG_VAR: self.tag}
        with open(self.errfile, "wb") as err:
            self.proc = subprocess.Popen([ours("svscan"), *args, str(root)], env=env, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err, start_new_session=True, cwd=cwd)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        return self.errfile.read_text()


@pytest.fixture
def svscan(tmp_path):
    """start(*args) -> Scan on tmp_path/sv; at teardown the svscans and every process they started are killed."""
    made: list[Scan] = []
    root = tmp_path / "sv"
    root.mkdir()

    def start(*args: str, cwd: Path | None = None) -> Scan:
        scan = Scan(root, args, cwd)
        made.append(scan)
        return scan

    try:
        yield root, start
    finally:
        for scan in made:
            procs = []
            with contextlib.suppress(psutil.Error):
                procs = psutil.Process(scan.pid).children(recursive=True)
            with contextlib.suppress(OSError):
                scan.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                scan.proc.wait(10)
            kill_procs(procs + tagged(scan.tag))
        from prefork.control import servicetable

        with contextlib.suppress(OSError):  # the default table of a SIGKILLed svscan stays behind
            os.unlink(servicetable.default_path(str(root), servicetable.KIND_SVSCAN))


def service_pid(d: Path) -> int:
    from prefork.control import statusfile

    try:
        return statusfile.read(str(d / "supervise")).pid
    except (OSError, ValueError):
        return 0


def test_svscan_supervise_up_follows_svc_down(svscan, tmp_path):
    root, start = svscan
    a = make_service(root, "a")
    scan = start("--metrics", "127.0.0.1:0")
    port = metrics_port(scan.stderr)
    directory = os.path.realpath(root)
    wait_value(port, 1, "supervise_up", directory=directory, service="a")
    subprocess.run([ours("svc"), "-d", str(a)], check=True, timeout=10)
    text = wait_value(port, 0, "supervise_up", directory=directory, service="a")
    assert value(text, "supervise_want_up", directory=directory, service="a") == 0
    assert value(text, "svscan_services", directory=directory) == 1
    subprocess.run([ours("svc"), "-u", str(a)], check=True, timeout=10)
    wait_value(port, 1, "supervise_up", directory=directory, service="a")
    exporter = exporter_of(scan.pid)
    argv = exporter.cmdline()
    assert argv[argv.index("--services") + 1] == directory
    assert argv[argv.index("--parent-pid") + 1] == str(scan.pid)
    assert environ_of(exporter.pid) == {"PATH": "/usr/bin:/bin", TAG_VAR: scan.tag}


def _log_service(service: Path, words: str) -> Path:
    log = service / "log"
    log.mkdir()
    (log / "run").write_text(f"#!/bin/sh\nexec {ours('multilog')} {words}\n")
    (log / "run").chmod(0o755)
    return log


def test_svscan_serves_the_counters_of_its_log_services(svscan, tmp_path):
    """A log service that execs multilog with M: svscan --metrics serves its counters, no --multilog needed.
    A multilog without M publishes nothing, and one run outside the tree is not this tree's."""
    root, start = svscan
    a = make_service(root, "a", "for i in 1 2 3; do echo line $i; done; exec sleep 100000")
    _log_service(a, "M ./main")
    b = make_service(root, "b", "echo quiet; exec sleep 100000")
    _log_service(b, "./main")
    outside = tmp_path / "outside"
    outside.mkdir()
    stranger = subprocess.Popen([ours("multilog"), "M", str(outside / "main")], stdin=subprocess.PIPE)
    try:
        stranger.stdin.write(b"not in the tree\n")
        stranger.stdin.flush()
        scan = start("--metrics", "127.0.0.1:0")
        port = metrics_port(scan.stderr)
        main = os.path.realpath(a / "log" / "main")
        text = wait_value(port, 3, "multilog_lines_total", directory=main)
        assert value(text, "multilog_bytes_total", directory=main) == len(b"line 1\nline 2\nline 3\n")
        assert wait_until(lambda: (b / "log" / "main" / "current").exists(), 10)
        assert value(text, "multilog_lines_total", directory=os.path.realpath(b / "log" / "main")) is None
        assert value(text, "multilog_lines_total", directory=str(outside / "main")) is None
        assert value(text, "multilog_lines_total", directory=os.path.realpath(outside / "main")) is None
    finally:
        stranger.stdin.close()
        stranger.wait(10)


def test_svscan_exporter_restart_is_not_a_service_exit(svscan):
    root, start = svscan
    a = make_service(root, "a")
    scan = start("--metrics", "127.0.0.1:0")
    port = metrics_port(scan.stderr)
    assert wait_until(lambda: service_pid(a), 10)
    before = service_pid(a)
    first = exporter_of(scan.pid)
    os.kill(first.pid, signal.SIGKILL)
    exporter_of(scan.pid, other_than=first.pid)
    assert metrics_port(scan.stderr, 2) == port
    warning = f"svscan: warning: metrics exporter {first.pid} killed by signal 9; restarting it"
    assert wait_until(lambda: warning in scan.stderr().splitlines(), 10), scan.stderr()
    text = wait_value(port, 1, "supervise_up", service="a")
    assert value(text, "supervise_restarts_total", service="a") == 0
    assert service_pid(a) == before
    assert [line for line in scan.stderr().splitlines() if "warning" in line or "fatal" in line] == [warning]


def test_svscan_sigterm_takes_the_exporter_away(svscan):
    root, start = svscan
    make_service(root, "a")
    scan = start("--metrics", "127.0.0.1:0")
    metrics_port(scan.stderr)
    exporter = exporter_of(scan.pid)
    scan.proc.terminate()
    scan.proc.wait(5)
    assert wait_until(lambda: gone(exporter), 3, 0.02), "the exporter outlived svscan"


def test_svscan_textfile_and_stop_services(svscan, textfile_dir):
    """The textfile is written; with --stop-services the exporter stops after the services, svscan exits 0."""
    root, start = svscan
    a = make_service(root, "a")
    path = textfile_dir / "svscan.prom"
    scan = start("--stop-services", "--grace", "2", "--metrics-textfile", str(path))
    assert wait_until(lambda: path.exists() and value(path.read_text(), "supervise_up", service="a") == 1, 15)
    exporter = exporter_of(scan.pid)
    assert "--listen" not in exporter.cmdline()
    service = psutil.Process(wait_until(lambda: service_pid(a), 10))  # type: ignore[arg-type]
    mtime = path.stat().st_mtime_ns
    scan.proc.terminate()
    assert scan.proc.wait(10) == 0
    assert gone(exporter), "svscan exited before its exporter"
    assert gone(service)
    assert path.stat().st_mtime_ns >= mtime
    text = path.read_text()
    assert value(text, "prefork_exporter_source_up", kind="services") == 1  # svscan was still there
    assert value(text, "supervise_up", service="a") is None  # and its services were gone


def test_svscan_relative_textfile_is_relative_to_where_it_started(svscan, textfile_dir):
    root, start = svscan
    make_service(root, "a")
    scan = start("--metrics-textfile", "rel.prom", cwd=textfile_dir)
    assert wait_until(lambda: (textfile_dir / "rel.prom").exists(), 15), scan.stderr()
    assert not (root / "rel.prom").exists()


def test_svscan_exporter_reads_the_table_given(svscan, tmp_path):
    root, start = svscan
    make_service(root, "a")
    table = tmp_path / "table"
    scan = start("--table", str(table), "--metrics", "127.0.0.1:0")
    port = metrics_port(scan.stderr)
    argv = exporter_of(scan.pid).cmdline()
    assert argv[argv.index("--services") + 1] == str(table)
    wait_value(port, 1, "supervise_up", service="a")
    wait_value(port, 1, "prefork_exporter_source_up", kind="services", path=str(table))


def test_svscan_without_the_options_has_no_exporter(svscan):
    root, start = svscan
    a = make_service(root, "a")
    scan = start()
    assert wait_until(lambda: service_pid(a), 10)
    assert exporters_of(scan.pid) == []


def svscan_usage_error(tmp_path: Path, *args: str) -> str:
    result = run([ours("svscan"), *args, str(tmp_path)])
    assert result.returncode == 100, result
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 2 and lines[1] == f"svscan: usage: {SVSCAN_USAGE}", lines
    return lines[0]


def test_svscan_metrics_without_port(tmp_path):
    assert svscan_usage_error(tmp_path, "--metrics", "localhost") == (
        "svscan: bad value for --metrics: not HOST:PORT: 'localhost'")


def test_svscan_metrics_port_too_large(tmp_path):
    assert svscan_usage_error(tmp_path, "--metrics=127.0.0.1:70000") == (
        "svscan: bad value for --metrics: port is larger than 65535: '127.0.0.1:70000'")


def test_svscan_metrics_port_not_a_number(tmp_path):
    assert svscan_usage_error(tmp_path, "--metrics", "127.0.0.1:x") == (
        "svscan: bad value for --metrics: port is not a number: '127.0.0.1:x'")


def test_svscan_metrics_textfile_empty(tmp_path):
    assert svscan_usage_error(tmp_path, "--metrics-textfile=") == "svscan: bad value for --metrics-textfile: empty path"


def test_svscan_metrics_missing_value():
    result = run([ours("svscan"), "--metrics"])
    assert result.returncode == 100
    assert result.stderr.decode() == f"svscan: option requires an argument -- --metrics\nsvscan: usage: {SVSCAN_USAGE}\n"
