"""Bytes from outside are data: svstat's status decoder, envdir's files and supervise's control FIFO.

Each test drives a real command with arbitrary bytes drawn by hypothesis (seeded through
``derandomize``, bounded in count) and checks the result is one of the documented forms; where
Debian's binary reads the same bytes, both must say the same (docs/THREAT_MODEL.md, "Every byte
is data").
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from conftest import fuzz_examples, ours, real, remove_shm_files_of
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefork.control import statusfile

ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
SETTINGS = settings(
    max_examples=fuzz_examples(150), deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def run(argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> tuple[int, bytes, bytes]:
    proc = subprocess.run(argv, cwd=cwd, env=env or ENV, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    return proc.returncode, proc.stdout, proc.stderr


# -- svstat: any status file, as Debian's svstat reads it ---------------------------------------------------------
_SECONDS = re.compile(rb"(\d+) seconds")
SVSTAT_LINE = re.compile(
    rb"^[^:]+: (up \(pid \d+\) \d+ seconds(, normally down)?(, paused)?(, want down)?"
    rb"|down \d+ seconds(, normally up)?(, want up)?"
    rb"|unable to read supervise/status: bad format)\n$"
)


def _close_enough(a: bytes, b: bytes) -> bool:
    """The same line, except an elapsed time that may differ by the one second between two runs."""
    if _SECONDS.sub(b"N seconds", a) != _SECONDS.sub(b"N seconds", b):
        return False
    return all(abs(int(x) - int(y)) <= 1 for x, y in zip(_SECONDS.findall(a), _SECONDS.findall(b), strict=True))


@SETTINGS
@given(data=st.binary(max_size=24), down=st.booleans())
def test_svstat_reads_any_status_file_as_debian_does(tmp_path_factory, data: bytes, down: bool) -> None:
    service = tmp_path_factory.mktemp("svc")
    (service / "supervise").mkdir()
    (service / "supervise" / "ok").touch()  # the open of ok succeeds, as with a running supervise
    (service / "supervise" / "status").write_bytes(data)
    if down:
        (service / "down").touch()
    theirs = run([real("svstat"), str(service)])
    mine = run([ours("svstat"), str(service)])
    assert mine[0] == theirs[0] == 0
    assert mine[2] == theirs[2] == b""
    assert SVSTAT_LINE.match(mine[1]), mine[1]
    assert _close_enough(mine[1], theirs[1]), (mine, theirs)


@SETTINGS
@given(data=st.binary(max_size=40))
def test_status_decoder_is_total(data: bytes) -> None:
    """decode() takes any bytes: a Status for 18 or more, ValueError('bad format') for fewer."""
    try:
        status = statusfile.decode(data)
    except ValueError as e:
        assert len(data) < statusfile.SIZE and str(e) == "bad format"
    else:
        assert len(data) >= statusfile.SIZE
        assert 0 <= status.pid < 2**32 and len(status.want) == 1
        paused = b"\1" if data[16] else b"\0"
        assert statusfile.encode(status) == data[:16] + paused + data[17:18]


# -- envdir: any file contents, as Debian's envdir reads them ------------------------------------------------------
NAMES = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ_abc0123456789", min_size=1, max_size=8)


def _environment(output: bytes) -> set[bytes]:
    return set(output.split(b"\0")) - {b""}


@SETTINGS
@given(files=st.dictionaries(NAMES, st.binary(max_size=48), max_size=5))
def test_envdir_reads_any_file_as_debian_does(tmp_path_factory, files: dict[str, bytes]) -> None:
    directory = tmp_path_factory.mktemp("env")
    for name, text in files.items():
        (directory / name).write_bytes(text)
    env = dict(ENV, KEEP="1", **{name: "old" for name in list(files)[:2]})
    theirs = run([real("envdir"), str(directory), "/usr/bin/env", "-0"], env=env)
    mine = run([ours("envdir"), str(directory), "/usr/bin/env", "-0"], env=env)
    assert mine[0] == theirs[0] == 0
    assert mine[2] == theirs[2] == b""
    assert _environment(mine[1]) == _environment(theirs[1])
    assert b"KEEP=1" in _environment(mine[1])


# -- supervise: any bytes on the control FIFO ----------------------------------------------------------------------
RUN = "#!/bin/sh\nexec sleep 1000\n"


def _status(service: Path) -> statusfile.Status | None:
    try:
        return statusfile.read(str(service / "supervise"))
    except (OSError, ValueError):
        return None


def _wait(predicate, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    for _ in range(int(seconds / 0.02) + 1):
        if predicate():
            return True
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    return predicate()


@pytest.fixture(scope="module")
def supervised(tmp_path_factory):
    """prefork's supervise on a service that sleeps; ended by pid, with every service it started."""
    service = tmp_path_factory.mktemp("ctl") / "svc"
    service.mkdir()
    (service / "run").write_text(RUN)
    (service / "run").chmod(0o755)
    errors = open(service.parent / "stderr", "wb")
    proc = subprocess.Popen([ours("supervise"), str(service)], env=ENV, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=errors)
    started: set[int] = set()
    try:
        assert _wait(lambda: (s := _status(service)) is not None and s.pid != 0)
        yield service, proc, started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for pid in started | ({s.pid} if (s := _status(service)) and s.pid else set()):
            try:
                child = psutil.Process(pid)
                if child.cwd() == str(service):
                    child.kill()
            except psutil.Error:
                pass
        errors.close()
        remove_shm_files_of(service.parent)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(data=st.binary(min_size=1, max_size=32).map(lambda b: b.replace(b"x", b"")))
def test_supervise_survives_any_control_bytes(supervised, data: bytes) -> None:
    """Every byte is a command or ignored; supervise never dies, and `u` + `c` always bring the service back."""
    service, proc, started = supervised
    fd = os.open(service / "supervise" / "control", os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, data)
        os.write(fd, b"uc")
    finally:
        os.close(fd)

    def back_up() -> bool:
        s = _status(service)
        if s is not None and s.pid:
            started.add(s.pid)
        return s is not None and s.pid != 0 and not s.paused and s.want == b"u" and _alive(s.pid)

    assert _wait(back_up), (data, _status(service))
    assert proc.poll() is None
    assert run([ours("svok"), str(service)])[0] == 0


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_STOPPED)
    except psutil.Error:
        return False


def test_supervise_control_flood_is_bounded(supervised) -> None:
    """A writer that fills the FIFO (64 KiB of noise) neither blocks supervise nor wedges the next command."""
    service, proc, started = supervised
    fd = os.open(service / "supervise" / "control", os.O_WRONLY | os.O_NONBLOCK)
    try:
        written = 0
        for _ in range(64):
            try:
                written += os.write(fd, b"\xff?z" * 1365)
            except BlockingIOError:
                time.sleep(0.01)
        os.kill(proc.pid, 0)
    finally:
        os.close(fd)
    assert written > 0
    assert _wait(lambda: run([ours("svc"), "-t", str(service)])[0] == 0)
    assert proc.poll() is None
    assert _wait(lambda: (s := _status(service)) is not None and s.pid != 0 and _alive(s.pid))


# -- the exporter's HTTP requests ----------------------------------------------------------------------------------
STATUS_LINES = (b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 400 Bad Request\r\n", b"HTTP/1.1 404 Not Found\r\n",
                b"HTTP/1.1 405 Method Not Allowed\r\n")
REQUESTS = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda m, t, v, rest: m + b" " + t + b" " + v + b"\r\n" + rest,
              st.sampled_from([b"GET", b"HEAD", b"POST", b"get", b"\0"]),
              st.sampled_from([b"/metrics", b"/", b"/metrics?x=1", b"//metrics", b"/metrics\0", b""]),
              st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/", b"XTTP/1.1"]), st.binary(max_size=40)),
)


@SETTINGS
@given(request=REQUESTS)
def test_exporter_answers_any_request_head_with_a_documented_response(request: bytes) -> None:
    from prefork.metrics.exporter import respond

    body = b"# metrics\n"
    response = respond(request, lambda: body)
    assert response.startswith(STATUS_LINES), response
    head, _, rest = response.partition(b"\r\n\r\n")
    length = int(re.search(rb"\r\nContent-Length: (\d+)\r\n", head + b"\r\n")[1])  # type: ignore[index]
    method = request.split(b"\n", 1)[0].split()[:1]
    assert len(rest) == (0 if method == [b"HEAD"] and response.startswith(STATUS_LINES[0]) else length)
    if response.startswith(STATUS_LINES[0]) and method == [b"GET"]:
        assert rest in (body, b"prefork-exporter: the metrics are at /metrics\n")


@pytest.fixture(scope="module")
def exporter(tmp_path_factory):
    """A prefork-exporter on 127.0.0.1:0 serving a scoreboard that does not exist (source_up 0); ended by pid."""
    where = tmp_path_factory.mktemp("exporter")
    errors = open(where / "stderr", "w+b")
    proc = subprocess.Popen([ours("prefork-exporter"), "--listen", "127.0.0.1:0", "--scoreboard", str(where / "none")],
                            env=ENV, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors)
    try:
        found = _wait(lambda: re.search(rb"listening on http://127\.0\.0\.1:(\d+)/metrics",
                                        (where / "stderr").read_bytes()))
        assert found, (where / "stderr").read_bytes()
        yield proc, int(re.search(rb"127\.0\.0\.1:(\d+)/", (where / "stderr").read_bytes())[1])  # type: ignore[index]
    finally:
        proc.kill()
        proc.wait(10)
        errors.close()


def _exchange(port: int, data: bytes) -> bytes:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.settimeout(10)
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return b""
        reply = b""
        try:
            while chunk := sock.recv(65536):
                reply += chunk
        except OSError:
            pass
        return reply


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=REQUESTS)
def test_a_live_exporter_survives_any_request_bytes(exporter, request: bytes) -> None:
    proc, port = exporter
    reply = _exchange(port, request)
    assert reply == b"" or reply.startswith(STATUS_LINES), reply[:100]
    assert proc.poll() is None
    scrape = _exchange(port, b"GET /metrics HTTP/1.0\r\n\r\n")
    assert scrape.startswith(STATUS_LINES[0]) and b'prefork_exporter_source_up{kind="scoreboard"' in scrape, scrape
