"""prefork-exporter (HTTP on 127.0.0.1 port 0, the textfile, --once, --parent-pid, bad command lines) and
tcpserver-status (the table, --json, faults).

The exporter runs as its own process (``python -m prefork.metrics.exporter`` until the ``prefork-exporter``
console script is installed); every process a test starts is killed by pid in a finally block.
Scoreboards are written with prefork.scoreboard's writer (helpers from test_metrics_collector).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from tcpserver_harness import QUIET, kill_procs, talk, wait_until
from test_metrics_collector import (
    NOT_A_PID,
    NOW_NS,
    fill_board,
    make_board,
    program,
    promtool_check,
    samples,
    value,
)

from prefork import scoreboard as sb
from prefork import tcpserver_status
from prefork.metrics import exporter

LISTENING = re.compile(r"^prefork-exporter: listening on http://127\.0\.0\.1:(\d+)/metrics$")
USAGE_LINE = f"prefork-exporter: usage: {exporter.USAGE}\n"


def exporter_argv() -> list[str]:
    script = Path(sys.executable).parent / "prefork-exporter"
    return [str(script)] if script.exists() else [sys.executable, "-m", "prefork.metrics.exporter"]


class Exporter:
    """A running exporter: its Popen, its stderr file, its port (when it listens)."""

    def __init__(self, proc: subprocess.Popen, errfile: Path) -> None:
        self.proc = proc
        self.errfile = errfile
        self.port = 0

    def lines(self) -> list[str]:
        return self.errfile.read_text().splitlines()

    def wait_port(self) -> int:
        found = wait_until(lambda: [m for line in self.lines() if (m := LISTENING.match(line))], 15)
        assert found, f"no listening line: {self.lines()} rc={self.proc.poll()}"
        self.port = int(found[0][1])
        return self.port

    def get(self, path: str = "/metrics", method: str = "GET") -> http.client.HTTPResponse:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.request(method, path)
        resp = conn.getresponse()
        resp.body = resp.read()  # type: ignore[attr-defined]
        conn.close()
        return resp


@pytest.fixture
def run_exporter(tmp_path):
    """start(*args) -> Exporter; every exporter is SIGKILLed by pid at teardown."""
    started: list[Exporter] = []

    def start(*args: str, listen: bool = True) -> Exporter:
        errfile = tmp_path / f"exporter.{len(started)}.err"
        argv = [*exporter_argv(), *args, *(["--listen", "127.0.0.1:0"] if listen else [])]
        with open(errfile, "wb") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                    env={"PATH": "/usr/bin:/bin"})
        ex = Exporter(proc, errfile)
        started.append(ex)
        if listen:
            ex.wait_port()
        return ex

    try:
        yield start
    finally:
        for ex in started:
            if ex.proc.poll() is None:
                ex.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                ex.proc.wait(10)


def raw_request(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def run_once(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    proc = subprocess.Popen([*exporter_argv(), *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={"PATH": "/usr/bin:/bin"})
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# == HTTP ===============================================================================================
def test_http_serves_the_metrics_on_port_0(tmp_path, run_exporter):
    fill_board(make_board(tmp_path / "board", name="web"))
    ex = run_exporter("--scoreboard", str(tmp_path / "board"))
    resp = ex.get()
    assert resp.status == 200
    assert resp.getheader("Content-Type") == "text/plain; version=0.0.4; charset=utf-8"
    assert int(resp.getheader("Content-Length")) == len(resp.body)
    promtool_check(resp.body)
    data = samples(resp.body)
    assert value(data, "tcpserver_connections_accepted_total", service="web") == 30
    assert value(data, "prefork_exporter_source_up", kind="scoreboard", path=str(tmp_path / "board")) == 1
    assert ex.lines() == [f"prefork-exporter: listening on http://127.0.0.1:{ex.port}/metrics"]


def test_http_scrapes_read_the_shared_memory_each_time(tmp_path, run_exporter):
    board = make_board(tmp_path / "board", name="web")
    ex = run_exporter("--scoreboard", str(tmp_path / "board"))
    assert value(samples(ex.get().body), "tcpserver_connections_accepted_total", service="web") == 0
    board.put64(board.slot_offset(1) + sb.OFF_ACCEPTED, 41)
    assert value(samples(ex.get().body), "tcpserver_connections_accepted_total", service="web") == 41


def test_http_query_string_is_ignored(tmp_path, run_exporter):
    make_board(tmp_path / "board")
    ex = run_exporter("--scoreboard", str(tmp_path / "board"))
    assert ex.get("/metrics?name[]=x").status == 200


def test_http_head_has_no_body(tmp_path, run_exporter):
    make_board(tmp_path / "board")
    ex = run_exporter("--scoreboard", str(tmp_path / "board"))
    reply = raw_request(ex.port, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == b""
    assert int(re.search(rb"Content-Length: (\d+)", head)[1]) > 1000


def test_http_root_points_at_metrics(tmp_path, run_exporter):
    make_board(tmp_path / "board")
    ex = run_exporter("--scoreboard", str(tmp_path / "board"))
    resp = ex.get("/")
    assert (resp.status, resp.body) == (200, b"prefork-exporter: the metrics are at /metrics\n")


def test_http_unknown_path_is_404(tmp_path, run_exporter):
    make_board(tmp_path / "board")
    ex = run_exporter("--scoreboard", str(tmp_path / "board"))
    resp = ex.get("/nope")
    assert (resp.status, resp.body) == (404, b"not found: try /metrics\n")


def test_http_post_is_405(tmp_path, run_exporter):
    make_board(tmp_path / "board")
    ex = run_exporter("--scoreboard", str(tmp_path / "board"))
    resp = ex.get("/metrics", method="POST")
    assert (resp.status, resp.getheader("Allow"), resp.body) == (405, "GET, HEAD", b"only GET and HEAD\n")


def test_http_garbage_request_is_400(tmp_path, run_exporter):
    make_board(tmp_path / "board")
    ex = run_exporter("--scoreboard", str(tmp_path / "board"))
    reply = raw_request(ex.port, b"hello\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n") and reply.endswith(b"\r\n\r\nbad request\n")


def test_http_oversized_request_is_refused(tmp_path, run_exporter):
    make_board(tmp_path / "board")
    ex = run_exporter("--scoreboard", str(tmp_path / "board"))
    reply = raw_request(ex.port, b"GET /metrics HTTP/1.1\r\n" + b"X: " + b"y" * 20000 + b"\r\n")
    assert reply.startswith(b"HTTP/1.1 431 ")


def test_http_silent_and_half_finished_clients_do_not_block_scrapes(tmp_path, run_exporter):
    make_board(tmp_path / "board")
    ex = run_exporter("--scoreboard", str(tmp_path / "board"))
    with socket.create_connection(("127.0.0.1", ex.port), timeout=10), \
            socket.create_connection(("127.0.0.1", ex.port), timeout=10) as half:
        half.sendall(b"GET /metr")
        started = time.monotonic()
        assert ex.get().status == 200
        assert time.monotonic() - started < 5
        half.sendall(b"ics HTTP/1.0\r\n\r\n")
        half.settimeout(10)
        assert half.recv(15) == b"HTTP/1.1 200 OK"


def test_http_client_that_closes_early_does_not_hurt(tmp_path, run_exporter):
    make_board(tmp_path / "board", workers=64)
    ex = run_exporter("--scoreboard", str(tmp_path / "board"))
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", ex.port), timeout=10)
        s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close
        s.close()
    assert ex.get().status == 200 and ex.proc.poll() is None


def test_http_parallel_scrapes(tmp_path, run_exporter):
    fill_board(make_board(tmp_path / "board", name="web"))
    ex = run_exporter("--scoreboard", str(tmp_path / "board"))
    results: list[int] = []

    def scrape() -> None:
        for _ in range(10):
            resp = ex.get()
            results.append(value(samples(resp.body), "tcpserver_connections_accepted_total", service="web"))

    threads = [threading.Thread(target=scrape) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [30] * 60


def test_http_on_ipv6_loopback(tmp_path, run_exporter):
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    make_board(tmp_path / "board")
    ex = run_exporter("--scoreboard", str(tmp_path / "board"), "--listen", "[::1]:0", listen=False)
    line = wait_until(lambda: [x for x in ex.lines() if "listening" in x], 15)
    port = int(re.fullmatch(r"prefork-exporter: listening on http://\[::1\]:(\d+)/metrics", line[0])[1])
    with socket.create_connection(("::1", port), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        assert s.recv(15) == b"HTTP/1.1 200 OK"


def test_exporter_is_one_small_thread(tmp_path, run_exporter):
    """No prometheus_client, no http.server, no threads: report its RSS and PSS."""
    make_board(tmp_path / "board", workers=64)
    ex = run_exporter("--scoreboard", str(tmp_path / "board"))
    for _ in range(20):
        ex.get()
    with open(f"/proc/{ex.proc.pid}/status") as f:
        status = dict(line.split(":", 1) for line in f.read().splitlines())
    assert status["Threads"].strip() == "1"
    with open(f"/proc/{ex.proc.pid}/smaps_rollup") as f:
        rollup = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f.read().splitlines()[1:])}
    print(f"prefork-exporter after 20 scrapes of 64 slots: RSS {rollup['Rss']} kB, PSS {rollup['Pss']} kB")
    assert rollup["Rss"] < 20_000, rollup  # with prometheus_client and its server it was ~24 MB


# == bind and usage errors ==============================================================================
def test_address_in_use_is_fatal(tmp_path):
    make_board(tmp_path / "board")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        out = run_once("--scoreboard", str(tmp_path / "board"), "--listen", f"127.0.0.1:{port}")
    assert (out.returncode, out.stdout) == (111, b"")
    assert out.stderr == f"prefork-exporter: fatal: unable to bind 127.0.0.1 port {port}: address already used\n".encode()


def _exporter_with_fd(tmp_path: Path, fd: int, *, pass_fd: bool = True) -> subprocess.Popen:
    """prefork-exporter --listen-fd FD (given FD when PASS_FD); its stderr goes to fd.err."""
    with open(tmp_path / "fd.err", "wb") as err:
        return subprocess.Popen([*exporter_argv(), "--scoreboard", str(tmp_path / "board"), "--listen-fd", str(fd)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                pass_fds=(fd,) if pass_fd else (), env={"PATH": "/usr/bin:/bin"})


def test_listen_fd_serves_on_the_inherited_socket(tmp_path):
    """What tcpserver and svscan --metrics pass: their own listening socket, which outlives each exporter."""
    make_board(tmp_path / "board")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        for _ in range(2):  # a second exporter on the same socket serves the same address
            proc = _exporter_with_fd(tmp_path, listener.fileno())
            try:
                assert wait_until(lambda: "listening on" in (tmp_path / "fd.err").read_text(), 15)
                assert (tmp_path / "fd.err").read_text() == (
                    f"prefork-exporter: listening on http://127.0.0.1:{port}/metrics\n")
                assert raw_request(port, b"GET /metrics HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 200 OK")
            finally:
                proc.kill()
                proc.wait(10)


@pytest.mark.parametrize("what", ["pipe", "unbound_socket", "udp_socket", "closed"])
def test_listen_fd_that_is_no_listening_socket_is_fatal(tmp_path, what):
    make_board(tmp_path / "board")
    with contextlib.ExitStack() as stack:
        if what == "pipe":
            r, w = os.pipe()
            stack.callback(os.close, r)
            stack.callback(os.close, w)
            fd = r
        elif what == "closed":
            fd = 1000
        else:
            sock = stack.enter_context(socket.socket(type=socket.SOCK_DGRAM if what == "udp_socket" else
                                                     socket.SOCK_STREAM))
            if what == "udp_socket":
                sock.bind(("127.0.0.1", 0))
            fd = sock.fileno()
        proc = _exporter_with_fd(tmp_path, fd, pass_fd=what != "closed")
        assert proc.wait(30) == 111
    err = (tmp_path / "fd.err").read_text()
    if what in ("pipe", "closed"):
        assert re.fullmatch(rf"prefork-exporter: fatal: unable to use descriptor {fd}: [a-z ]+\n", err), err
    else:
        assert err == f"prefork-exporter: fatal: descriptor {fd} is not a listening TCP socket\n"


@pytest.mark.parametrize("kind", ["scoreboard", "services", "multilog"])
@pytest.mark.parametrize("what", ["fifo", "device"])
def test_a_fifo_or_device_given_as_a_source_is_a_fault_not_a_hang(tmp_path, kind, what):
    """A careless --scoreboard/--services/--multilog PATH: a FIFO must not block the scrape, /dev/zero must not be
    read without end; the source is down with a one-line reason and the exporter goes on."""
    if what == "fifo":
        path = tmp_path / "fifo"
        os.mkfifo(path)
    else:
        path = Path("/dev/zero")
    out = run_once(f"--{kind}", str(path), "--once", timeout=20)
    assert out.returncode == 0
    assert value(samples(out.stdout), "prefork_exporter_source_up", kind=kind, path=str(path)) == 0
    (line,) = out.stderr.decode().splitlines()
    assert line.startswith(f"prefork-exporter: warning: {kind} {path}: ") and line.endswith("not a regular file")


USAGE_CASES = {
    "nothing": ([], "nothing to export: give --scoreboard or --services"),
    "no_output": (["--scoreboard", "b"], "give --listen, --metrics-textfile or --once"),
    "unknown_option": (["--scoreboard", "b", "--bogus"], "illegal option -- --bogus"),
    "short_option": (["-x"], "illegal option -- x"),
    "stray_operand": (["stray"], "unexpected argument 'stray'"),
    "scoreboard_without_path": (["--scoreboard", "--once"], "option requires an argument -- --scoreboard"),
    "services_empty": (["--services=", "--once"], "--services needs at least one path"),
    "listen_without_value": (["--scoreboard", "b", "--listen"], "option requires an argument -- --listen"),
    "listen_without_port": (["--scoreboard", "b", "--listen", "localhost"], "--listen wants HOST:PORT, not 'localhost'"),
    "listen_port_too_big": (["--scoreboard", "b", "--listen", "127.0.0.1:65536"],
                            "--listen wants HOST:PORT, not '127.0.0.1:65536'"),
    "listen_port_not_a_number": (["--scoreboard", "b", "--listen=127.0.0.1:http"],
                                 "--listen wants HOST:PORT, not '127.0.0.1:http'"),
    "once_and_listen": (["--scoreboard", "b", "--once", "--listen", "127.0.0.1:0"],
                        "--once writes once and exits: it cannot --listen"),
    "interval_zero": (["--scoreboard", "b", "--metrics-textfile", "f", "--textfile-interval", "0"],
                      "--textfile-interval wants a number of seconds above 0, not '0'"),
    "interval_not_a_number": (["--scoreboard", "b", "--metrics-textfile", "f", "--textfile-interval", "soon"],
                              "--textfile-interval wants a number of seconds above 0, not 'soon'"),
    "interval_nan": (["--scoreboard", "b", "--metrics-textfile", "f", "--textfile-interval", "nan"],
                     "--textfile-interval wants a number of seconds above 0, not 'nan'"),
    "parent_pid_not_a_number": (["--scoreboard", "b", "--once", "--parent-pid", "abc"],
                                "--parent-pid wants a process id, not 'abc'"),
    "parent_pid_zero": (["--scoreboard", "b", "--once", "--parent-pid", "0"], "--parent-pid wants a process id, not '0'"),
    "textfile_empty": (["--scoreboard", "b", "--metrics-textfile="], "--metrics-textfile needs a path"),
    "listen_fd_stdin": (["--scoreboard", "b", "--listen-fd", "0"],
                        "--listen-fd wants a descriptor number of 3 or more, not '0'"),
    "listen_fd_not_a_number": (["--scoreboard", "b", "--listen-fd=three"],
                               "--listen-fd wants a descriptor number of 3 or more, not 'three'"),
    "listen_and_listen_fd": (["--scoreboard", "b", "--listen", "127.0.0.1:0", "--listen-fd", "3"],
                             "give --listen or --listen-fd, not both"),
    "once_and_listen_fd": (["--scoreboard", "b", "--once", "--listen-fd", "3"],
                           "--once writes once and exits: it cannot --listen"),
}


@pytest.mark.parametrize("case", sorted(USAGE_CASES))
def test_bad_command_line_is_exit_100(case, capfd):
    argv, message = USAGE_CASES[case]
    with pytest.raises(SystemExit) as exc:
        exporter.main(argv)
    assert exc.value.code == 100
    out, err = capfd.readouterr()
    assert (out, err) == ("", f"prefork-exporter: {message}\n{USAGE_LINE}")


def test_bad_command_line_from_the_command(tmp_path):
    out = run_once("--bogus")
    assert (out.returncode, out.stdout, out.stderr.decode()) == (100, b"", f"prefork-exporter: illegal option -- --bogus\n{USAGE_LINE}")


def test_help(capfd):
    with pytest.raises(SystemExit) as exc:
        exporter.main(["--help"])
    assert exc.value.code == 0
    out, err = capfd.readouterr()
    assert out.startswith(f"usage: {exporter.USAGE}\n") and "--parent-pid PID" in out and err == ""


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:9100", ("127.0.0.1", 9100)),
    ("[::1]:0", ("::1", 0)),
    (":9100", ("0.0.0.0", 9100)),
    ("localhost:65535", ("localhost", 65535)),
])
def test_parse_listen(text, expected):
    assert exporter.parse_listen(text) == expected


def test_scoreboard_and_services_take_several_paths():
    opts = exporter.parse_args(["--scoreboard", "a", "b", "--services", "x", "--scoreboard=c", "--once", "--services", "y"])
    assert (opts.scoreboards, opts.services, opts.once) == (["a", "b", "c"], ["x", "y"], True)


# == --once and the textfile ============================================================================
def test_once_writes_the_exposition_to_stdout(tmp_path):
    fill_board(make_board(tmp_path / "board", name="web"))
    out = run_once("--scoreboard", str(tmp_path / "board"), "--services", str(tmp_path / "none"), "--once")
    assert out.returncode == 0
    assert out.stderr == f"prefork-exporter: warning: services {tmp_path}/none: file does not exist\n".encode()
    promtool_check(out.stdout)
    assert value(samples(out.stdout), "tcpserver_connections_accepted_total", service="web") == 30


def test_once_writes_the_textfile(tmp_path):
    fill_board(make_board(tmp_path / "board", name="web"))
    prom = tmp_path / "prefork.prom"
    out = run_once("--scoreboard", str(tmp_path / "board"), "--metrics-textfile", str(prom), "--once")
    assert (out.returncode, out.stdout, out.stderr) == (0, b"", b"")
    assert stat.S_IMODE(prom.stat().st_mode) == 0o644 & ~_umask()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["board", "prefork.prom"]  # no .new left behind
    assert prom.read_bytes() == run_once("--scoreboard", str(tmp_path / "board"), "--once").stdout
    promtool_check(prom.read_bytes())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_once_textfile_that_cannot_be_written_is_fatal(tmp_path):
    make_board(tmp_path / "board")
    prom = tmp_path / "no" / "such" / "dir.prom"
    out = run_once("--scoreboard", str(tmp_path / "board"), "--metrics-textfile", str(prom), "--once")
    assert (out.returncode, out.stdout) == (111, b"")
    assert out.stderr == f"prefork-exporter: fatal: unable to write {prom}: file does not exist\n".encode()


def test_textfile_is_replaced_atomically_while_it_is_read(tmp_path, run_exporter):
    """Rewritten every 10 ms while the counters move: every read is one whole, valid exposition."""
    board = make_board(tmp_path / "board", workers=16, name="web")
    prom = tmp_path / "prefork.prom"
    ex = run_exporter("--scoreboard", str(tmp_path / "board"), "--metrics-textfile", str(prom),
                      "--textfile-interval", "0.01", listen=False)
    assert wait_until(prom.exists, 15)
    inodes, reads, counts = set(), 0, []
    deadline = time.monotonic() + 20.0  # a loaded machine starves the exporter: wait for enough rewrites
    n = 0
    for _ in range(1_000_000):
        if time.monotonic() >= deadline or (reads > 100 and len(inodes) > 10):
            break
        n += 1
        board.put64(board.slot_offset(n % 16) + sb.OFF_ACCEPTED, n)
        with open(prom, "rb") as f:
            inodes.add(os.fstat(f.fileno()).st_ino)
            data = f.read()
        reads += 1
        assert data.endswith(b'prefork_exporter_source_errors_total{kind="scoreboard",path="%s"} 0.0\n'
                             % str(tmp_path / "board").encode()), data[-200:]
        counts.append(value(samples(data), "tcpserver_connections_accepted_total", service="web"))
    assert ex.proc.poll() is None
    assert reads > 100 and len(inodes) > 10, (reads, len(inodes))
    promtool_check(prom.read_bytes())


def test_sigusr1_rewrites_the_textfile_at_once(tmp_path, run_exporter):
    board = make_board(tmp_path / "board", name="web")
    prom = tmp_path / "prefork.prom"
    ex = run_exporter("--scoreboard", str(tmp_path / "board"), "--metrics-textfile", str(prom),
                      "--textfile-interval", "3600", listen=False)
    assert wait_until(prom.exists, 15)
    board.put64(board.slot_offset(0) + sb.OFF_ACCEPTED, 7)
    assert value(samples(prom.read_bytes()), "tcpserver_connections_accepted_total", service="web") == 0
    ex.proc.send_signal(signal.SIGUSR1)
    assert wait_until(lambda: value(samples(prom.read_bytes()), "tcpserver_connections_accepted_total",
                                    service="web") == 7, 10)


def test_textfile_write_failures_are_logged_once(tmp_path, run_exporter):
    make_board(tmp_path / "board")
    prom = tmp_path / "later" / "prefork.prom"
    ex = run_exporter("--scoreboard", str(tmp_path / "board"), "--metrics-textfile", str(prom),
                      "--textfile-interval", "0.02", listen=False)
    warning = f"prefork-exporter: warning: unable to write {prom}: file does not exist"
    assert wait_until(lambda: ex.lines() == [warning], 10)
    time.sleep(0.3)  # ~15 more failed writes
    assert ex.lines() == [warning]
    prom.parent.mkdir()
    assert wait_until(prom.exists, 10)
    assert wait_until(lambda: ex.lines() == [warning, f"prefork-exporter: {prom}: written again"], 10)


def test_sigterm_exits_0_after_a_last_textfile_write(tmp_path, run_exporter):
    make_board(tmp_path / "board", name="web")
    prom = tmp_path / "prefork.prom"
    ex = run_exporter("--scoreboard", str(tmp_path / "board"), "--metrics-textfile", str(prom),
                      "--textfile-interval", "3600")
    assert wait_until(prom.exists, 15)
    os.unlink(tmp_path / "board")  # the server went away (a SIGTERMed tcpserver removes its scoreboard)
    ex.proc.send_signal(signal.SIGTERM)
    assert ex.proc.wait(10) == 0
    data = samples(prom.read_bytes())
    assert value(data, "prefork_exporter_source_up", kind="scoreboard", path=str(tmp_path / "board")) == 0
    assert value(data, "tcpserver_connections_accepted_total", service="web") is None


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP])
def test_other_stop_signals_exit_0(tmp_path, run_exporter, sig):
    make_board(tmp_path / "board")
    ex = run_exporter("--scoreboard", str(tmp_path / "board"))
    ex.proc.send_signal(sig)
    assert ex.proc.wait(10) == 0


# == --parent-pid =======================================================================================
def test_parent_pid_exit(tmp_path, run_exporter):
    parent = subprocess.Popen(["sleep", "60"], env={"PATH": "/usr/bin:/bin"})
    try:
        make_board(tmp_path / "board")
        ex = run_exporter("--scoreboard", str(tmp_path / "board"), "--parent-pid", str(parent.pid))
        time.sleep(0.3)
        assert ex.proc.poll() is None
        parent.kill()
        parent.wait(10)
        assert ex.proc.wait(10) == 0
        assert ex.lines() == [f"prefork-exporter: listening on http://127.0.0.1:{ex.port}/metrics"]
    finally:
        if parent.poll() is None:
            parent.kill()
        parent.wait(10)


def test_parent_pid_exit_without_pidfd(tmp_path, monkeypatch):
    """Where pidfd_open is missing, the watch looks at /proc every second (in-process)."""
    monkeypatch.delattr(os, "pidfd_open")
    parent = subprocess.Popen(["sleep", "60"], env={"PATH": "/usr/bin:/bin"})
    try:
        watch = exporter.ParentWatch(parent.pid)
        assert (watch.fd, watch.poll_timeout(), watch.gone()) == (-1, exporter.POLL_SECONDS, False)
        parent.kill()
        parent.wait(10)
        assert watch.gone()
    finally:
        if parent.poll() is None:
            parent.kill()
        parent.wait(10)


def test_parent_pid_that_is_already_gone_exits_at_once(tmp_path):
    make_board(tmp_path / "board")
    out = run_once("--scoreboard", str(tmp_path / "board"), "--listen", "127.0.0.1:0", "--parent-pid", str(NOT_A_PID))
    assert (out.returncode, out.stdout, out.stderr) == (0, b"", b"")


def test_parent_pid_of_a_real_tcpserver_that_is_killed(tmp_path, prefork, run_exporter):
    board = tmp_path / "board"
    prom = tmp_path / "prefork.prom"
    server = prefork(["--scoreboard", str(board), "--name", "echo", *QUIET], [program(tmp_path)])
    ex = run_exporter("--scoreboard", str(board), "--parent-pid", str(server.pid), "--metrics-textfile", str(prom))
    talk(server.port, b"a\n")
    assert wait_until(lambda: value(samples(ex.get().body), "tcpserver_program_exits_total", exit="zero",
                                    service="echo") == 1, 10)
    kill_procs([*server.workers(), psutil.Process(server.pid)])
    assert ex.proc.wait(10) == 0
    data = samples(prom.read_bytes())  # the last write: the server is gone, its counters are not served
    assert value(data, "prefork_exporter_source_up", kind="scoreboard", path=str(board)) == 0
    assert value(data, "tcpserver_program_exits_total", exit="zero", service="echo") is None
    assert ex.lines()[1:] == [f"prefork-exporter: warning: scoreboard {board}: server pid {server.pid} is not running"]


def test_exporter_follows_a_real_tcpserver_over_http(tmp_path, prefork, run_exporter):
    board = tmp_path / "board"
    server = prefork(["--scoreboard", str(board), "--name", "echo", *QUIET, "-c", "3"], [program(tmp_path)])
    ex = run_exporter("--scoreboard", str(board))
    for word in (b"a\n", b"f\n", b"k\n"):
        talk(server.port, word)

    def scraped() -> dict:
        body = ex.get().body
        promtool_check(body)
        return samples(body)

    assert wait_until(lambda: value(scraped(), "tcpserver_connection_duration_seconds_count", service="echo") == 3, 10)
    data = scraped()
    assert [value(data, "tcpserver_program_exits_total", exit=e, service="echo") for e in ("zero", "nonzero", "signal")] \
        == [1, 1, 1]
    assert value(data, "tcpserver_connections_limit", service="echo") == 3


# == tcpserver-status ===================================================================================
def status_board(tmp_path: Path) -> sb.ScoreboardFile:
    board = make_board(tmp_path / "board", workers=3, name="web")
    fill_board(board)
    board.put64(32, NOW_NS - 100 * 10**9)  # start time
    s0 = board.slot_offset(0)
    board.put64(s0 + sb.OFF_STARTED, NOW_NS - 50 * 10**9)
    board.put32(s0 + sb.OFF_GENERATION, 2)
    board.put32(s0 + sb.OFF_WAITING, 1)
    board.put32(s0 + sb.OFF_STATE, sb.STATE_WAITING)
    return board


TABLE = """\
service web, 3/10 connections, {alive}/3 workers, 5 worker restarts
slot       pid state      gen  active  accepted  denied  dropped     exit0  exit>0  signal  mean ms     up s  last s
0        {pid:>5} waiting*     2       2        10       2        1         4       2       1    214.3       57       7
1            - exited       0       0        20       3        0        15       0       0     16.7        -       2
2            - empty        0       0         0       0        0         0       0       0        -        -       -
orph         - -            -       1         -       -        -         6       7       8   2000.0        -       -
total        - -            -       3        30       5        1        25       9       9    239.6      107       2
* waiting for a free connection (-c limit reached)
"""


def test_status_table_of_a_running_server(tmp_path):
    status_board(tmp_path)
    snap = tcpserver_status.read(str(tmp_path / "board"))
    text = tcpserver_status.format_text("/x/board", snap, True, NOW_NS + 7 * 10**9)
    pid = os.getpid()
    assert text == f"/x/board: up (pid {pid}) 107 seconds\n" + TABLE.format(alive=1, pid=pid)


def test_status_table_of_a_dead_server(tmp_path):
    status_board(tmp_path)
    snap = tcpserver_status.read(str(tmp_path / "board"))
    text = tcpserver_status.format_text("/x/board", snap, False, NOW_NS + 7 * 10**9)
    pid = os.getpid()
    assert text == f"/x/board: down (pid {pid} is not running), started 107 seconds ago\n" + TABLE.format(alive=0, pid=pid)


NO_LIMITS = {"MAXCONNIP": 0, "MAXCONNC": 0, "MAXLOAD": 0}


def test_status_json(tmp_path, capfd):
    status_board(tmp_path)
    with pytest.raises(SystemExit) as exc:
        tcpserver_status.main(["--json", str(tmp_path / "board")])
    assert exc.value.code == 0
    out, err = capfd.readouterr()
    doc = json.loads(out)
    assert err == ""
    assert {k: doc[k] for k in ("path", "service", "name", "running", "master_pid", "local", "limit", "active",
                                "orphans", "workers", "workers_alive", "worker_restarts")} == {
        "path": str(tmp_path / "board"), "service": "web", "name": "web", "running": True, "master_pid": os.getpid(),
        "local": "127.0.0.1:8080", "limit": 10, "active": 3, "orphans": 1, "workers": 3, "workers_alive": 1,
        "worker_restarts": 5,
    }
    assert doc["start_time"] == pytest.approx(NOW_NS / 1e9 - 100)
    assert doc["totals"] == {"accepted": 30, "denied": 5, "dropped": 1, "exits": {"zero": 25, "nonzero": 9, "signal": 9},
                             "duration_count": 24, "duration_seconds_sum": 5.75, "limited": NO_LIMITS}
    assert doc["orphan_programs"] == {"exits": {"zero": 6, "nonzero": 7, "signal": 8}, "duration_count": 2,
                                      "duration_seconds_sum": 4.0}
    s0, s1, s2 = doc["slots"]
    assert s0 == {"index": 0, "pid": os.getpid(), "state": "waiting", "generation": 2, "active": 2, "waiting": True,
                  "accepted": 10, "denied": 2, "dropped": 1, "exits": {"zero": 4, "nonzero": 2, "signal": 1},
                  "limited": NO_LIMITS, "duration_count": 7, "duration_seconds_sum": 1.5, "started_time": pytest.approx(NOW_NS / 1e9 - 50),
                  "last_accept_time": pytest.approx(NOW_NS / 1e9)}
    assert (s1["pid"], s1["state"], s1["started_time"], s1["accepted"]) == (None, "exited", None, 20)
    assert (s2["state"], s2["last_accept_time"]) == ("empty", None)


def test_status_of_a_real_tcpserver_by_pid(tmp_path, prefork):
    server = prefork([*QUIET], [program(tmp_path)])
    talk(server.port, b"a\n")
    argv = [sys.executable, "-m", "prefork.tcpserver_status"]

    def shown() -> subprocess.CompletedProcess:
        return subprocess.run([*argv, "--json", str(server.pid)], capture_output=True, timeout=30)

    assert wait_until(lambda: json.loads(shown().stdout)["totals"]["exits"]["zero"] == 1, 10)
    doc = json.loads(shown().stdout)
    assert (doc["path"], doc["running"], doc["workers"], doc["workers_alive"], doc["service"]) == (
        sb.default_path(server.pid), True, 2, 2, f"127.0.0.1:{server.port}")
    out = subprocess.run([*argv, str(server.pid)], capture_output=True, timeout=30)
    lines = out.stdout.decode().splitlines()
    assert out.returncode == 0 and out.stderr == b""
    assert re.fullmatch(rf"{sb.default_path(server.pid)}: up \(pid {server.pid}\) \d+ seconds", lines[0])
    assert lines[1] == f"service 127.0.0.1:{server.port}, 0/40 connections, 2/2 workers, 0 worker restarts"
    assert lines[-1].split()[:6] == ["total", "-", "-", "-", "0", "1"]


def test_status_missing_scoreboard_is_111(tmp_path, capfd):
    with pytest.raises(SystemExit) as exc:
        tcpserver_status.main([str(tmp_path / "nope")])
    assert exc.value.code == 111
    assert capfd.readouterr() == ("", f"tcpserver-status: fatal: unable to read {tmp_path}/nope: file does not exist\n")


def test_status_of_a_fifo_is_111_not_a_hang(tmp_path, capfd):
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(SystemExit) as exc:
        tcpserver_status.main([str(tmp_path / "fifo")])
    assert exc.value.code == 111
    assert capfd.readouterr() == ("", f"tcpserver-status: fatal: unable to read {tmp_path}/fifo: not a regular file\n")


def test_status_truncated_scoreboard_is_111(tmp_path, capfd):
    (tmp_path / "board").write_bytes(b"PFSB")
    with pytest.raises(SystemExit) as exc:
        tcpserver_status.main([str(tmp_path / "board")])
    assert exc.value.code == 111
    assert capfd.readouterr() == ("", f"tcpserver-status: fatal: unable to read {tmp_path}/board: truncated (4 bytes)\n")


def test_status_other_layout_version_is_111(tmp_path, capfd):
    make_board(tmp_path / "board")
    raw = bytearray((tmp_path / "board").read_bytes())
    raw[4] = 9
    (tmp_path / "board").write_bytes(bytes(raw))
    with pytest.raises(SystemExit) as exc:
        tcpserver_status.main([str(tmp_path / "board")])
    assert exc.value.code == 111
    assert capfd.readouterr()[1] == f"tcpserver-status: fatal: unable to read {tmp_path}/board: unsupported layout version 9\n"


@pytest.mark.parametrize("argv, first", [
    ([], None),
    (["a", "b"], None),
    (["--bogus", "a"], "tcpserver-status: illegal option -- --bogus"),
])
def test_status_bad_command_line_is_100(argv, first, capfd):
    with pytest.raises(SystemExit) as exc:
        tcpserver_status.main(argv)
    assert exc.value.code == 100
    usage = f"tcpserver-status: usage: {tcpserver_status.USAGE}\n"
    assert capfd.readouterr() == ("", (f"{first}\n" if first else "") + usage)


def test_status_dash_dash_ends_options(tmp_path, capfd, monkeypatch):
    status_board(tmp_path)
    monkeypatch.chdir(tmp_path)
    os.rename("board", "--json")
    with pytest.raises(SystemExit) as exc:
        tcpserver_status.main(["--", "--json"])
    assert exc.value.code == 0
    assert capfd.readouterr()[0].startswith(f"--json: up (pid {os.getpid()}) ")


def test_status_help(capfd):
    with pytest.raises(SystemExit) as exc:
        tcpserver_status.main(["--help"])
    assert exc.value.code == 0
    out, err = capfd.readouterr()
    assert out.startswith(f"usage: {tcpserver_status.USAGE}\n") and "--json" in out and err == ""


# == idle, slow and greedy clients cannot starve scrapes ================================================
SCRAPE_BOUND = 5.0


def _scrape_within(port: int, bound: float = SCRAPE_BOUND) -> bytes:
    """One GET /metrics on a fresh connection, answered in full within BOUND seconds."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=bound) as s:
        s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        out = b""
        for _ in range(10_000):
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    assert time.monotonic() - started < bound
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), out[:200]
    assert int(re.search(rb"Content-Length: (\d+)", head)[1]) == len(body)
    return body


@contextlib.contextmanager
def _descriptors(n: int):
    """Room for N more descriptors in this process (soft limit raised up to the hard one; skip if it cannot)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = len(os.listdir("/proc/self/fd")) + n + 64
    if hard != resource.RLIM_INFINITY and hard < want:
        pytest.skip(f"the hard descriptor limit ({hard}) is below {want}")
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _connect_many(port: int, n: int, batch: int = 200) -> list[socket.socket]:
    """N connections to PORT, made BATCH at a time in parallel (a dropped SYN costs a second, not one each)."""
    import selectors

    made: list[socket.socket] = []
    with selectors.DefaultSelector() as sel:
        for _ in range(0, n, batch):
            pending = []
            for _ in range(min(batch, n - len(made))):
                s = socket.socket()
                s.setblocking(False)
                made.append(s)
                s.connect_ex(("127.0.0.1", port))
                sel.register(s, selectors.EVENT_WRITE)
                pending.append(s)
            deadline = time.monotonic() + 15
            for _ in range(100_000):
                if not sel.get_map() or time.monotonic() >= deadline:
                    break
                for key, _events in sel.select(0.5):
                    sel.unregister(key.fileobj)
            assert not sel.get_map(), "connections not made within 15 s"
            for s in pending:
                assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
                s.setblocking(True)
    return made


def _start_exporter_limited(tmp_path: Path, nofile: int | None) -> Exporter:
    """An exporter with NOFILE as its descriptor limit (None: this process's)."""
    import resource

    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    errfile = tmp_path / "exporter.err"
    with open(errfile, "wb") as err:
        proc = subprocess.Popen([*exporter_argv(), "--scoreboard", str(tmp_path / "board"), "--listen", "127.0.0.1:0"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                env={"PATH": "/usr/bin:/bin"}, preexec_fn=limit)
    ex = Exporter(proc, errfile)
    ex.wait_port()
    return ex


@pytest.mark.parametrize("nofile", [None, 256], ids=["room-for-all", "fd-limit-256"])
def test_http_two_thousand_idle_connections_do_not_starve_scrapes(tmp_path, nofile):
    fill_board(make_board(tmp_path / "board", name="web"))
    idle: list[socket.socket] = []
    with _descriptors(2100):
        ex = _start_exporter_limited(tmp_path, nofile)
        try:
            idle += _connect_many(ex.port, 2000)
            for _ in range(5):
                body = _scrape_within(ex.port)
                assert value(samples(body), "tcpserver_connections_accepted_total", service="web") == 30
            assert ex.proc.poll() is None
        finally:
            for s in idle:
                s.close()
            ex.proc.kill()
            ex.proc.wait(10)


def test_http_slowloris_clients_do_not_block_scrapes_and_are_cut_off(tmp_path, run_exporter):
    """Forty clients sending a request head one byte a second: scrapes go on; the slow ones are dropped."""
    make_board(tmp_path / "board")
    ex = run_exporter("--scoreboard", str(tmp_path / "board"))
    request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nUser-Agent: slow\r\n\r\n"
    slow = [socket.create_connection(("127.0.0.1", ex.port), timeout=10) for _ in range(40)]
    started = time.monotonic()
    cut: set[int] = set()
    try:
        for second in range(8):
            for i, s in enumerate(slow):
                if i not in cut:
                    try:
                        s.send(request[second:second + 1])
                    except OSError:
                        cut.add(i)
            _scrape_within(ex.port)
            time.sleep(max(0.0, started + second + 1 - time.monotonic()))
        for s in slow:
            s.settimeout(5)
            try:
                assert s.recv(100) == b""  # closed, no answer: the head never came in time
            except ConnectionResetError:
                pass
    finally:
        for s in slow:
            s.close()
    assert ex.proc.poll() is None


def test_http_request_head_over_8_kib_is_refused_at_once(tmp_path, run_exporter):
    make_board(tmp_path / "board")
    ex = run_exporter("--scoreboard", str(tmp_path / "board"))
    started = time.monotonic()
    reply = raw_request(ex.port, b"GET /metrics HTTP/1.1\r\nX: " + b"y" * 8200 + b"\r\n", timeout=5)
    assert reply.startswith(b"HTTP/1.1 431 ") and time.monotonic() - started < 2


def _pump(server: exporter.HttpServer, seconds: float) -> None:
    """Drive SERVER as prefork-exporter's main loop does, for about SECONDS."""
    import select

    deadline = time.monotonic() + seconds
    for _ in range(10_000):
        now = time.monotonic()
        if now >= deadline:
            return
        t = server.timeout(now)
        ready_r, ready_w, _ = select.select(server.readers(), server.writers(), [], min(0.02, t if t is not None else 1))
        for fd in ready_r:
            server.readable(fd)
        for fd in ready_w:
            server.writable(fd)
        server.expire(time.monotonic())


def test_http_when_full_the_oldest_idle_client_makes_room():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    server = exporter.HttpServer(listener, lambda: b"m 1\n")
    server.max_clients = 4
    port = server.port
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(6)]
    try:
        _pump(server, 0.3)
        assert len(server.clients) == 4
        with socket.create_connection(("127.0.0.1", port), timeout=5) as scrape:
            scrape.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            _pump(server, 0.3)
            assert scrape.recv(200).endswith(b"\r\n\r\nm 1\n")
        for s in idle[:3]:  # the first two when the fifth and sixth came, the third for the scrape
            assert s.recv(10) == b""
        for s in idle[3:]:
            s.setblocking(False)
            with pytest.raises(BlockingIOError):  # still held, still waiting
                s.recv(10)
    finally:
        for s in idle:
            s.close()
        for fd in list(server.clients):
            server.close(fd)
        listener.close()
