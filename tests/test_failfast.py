"""An uncaught exception in a long-lived process: one traceback on stderr, exit 111, never a hang.

The lean programs (prefork/lean.py) run a bootstrap script held in a memfd as
``/proc/self/fd/N`` and close that descriptor at once; Python's own traceback
printer would then read whatever file took the number N (a pipe: forever) to
show the bootstrap's source line.  Each test here runs a real program's
``main()`` in a real lean re-exec, with one of its functions patched to raise
(the patch travels in the bootstrap body), and bounds the wait.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
TRACEBACK = "Traceback (most recent call last):"
BOUND = 20.0  # seconds: a hang shows as a timeout well before the suite's own


def lean_program(tmp_path: Path, body: str, name: str = "prog", *, python_flags: tuple[str, ...] = ()) -> list[str]:
    """argv of a wrapper that re-execs itself lean (the real exec_lean and bootstrap) to run BODY."""
    wrapper = tmp_path / f"{name}-wrapper.py"
    wrapper.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from prefork import lean\n"
        f"lean.exec_lean({name!r}, lambda fd, paths: lean.bootstrap(fd, paths, {body!r}))\n"
        "raise SystemExit('no lean re-exec here')\n"
    )
    return [sys.executable, *python_flags, str(wrapper)]


def start(argv: list[str], tmp_path: Path, name: str = "prog", **kw: object) -> tuple[subprocess.Popen, Path]:
    err = tmp_path / f"{name}.err"
    with open(err, "wb") as f:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=f, cwd=tmp_path,  # type: ignore[call-overload]
                                env={"PATH": "/usr/bin:/bin"}, **{"stdin": subprocess.DEVNULL, **kw})
    return proc, err


def finish(proc: subprocess.Popen, timeout: float = BOUND) -> int:
    """PROC's exit code; a hang is killed (by pid) and fails the test."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        pytest.fail(f"still running after {timeout} s: hung instead of exiting")


def assert_one_traceback(err: Path, last_line: str) -> None:
    text = err.read_text()
    assert text.count(TRACEBACK) == 1, text
    assert text.rstrip("\n").splitlines()[-1] == last_line, text


def wait_for(predicate, timeout: float = 15.0, interval: float = 0.02):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 1):
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)
    return predicate()


INJECT = "def boom(*args, **kw):\n    raise RuntimeError('injected')\n"


# == the bootstrap itself ================================================================================
def test_bootstrap_whose_descriptor_number_is_a_pipe_by_then_exits_111(tmp_path):
    """The descriptor the script was read from is a pipe with a live writer when the exception is printed."""
    proc, err = start(lean_program(tmp_path, "r, w = os.pipe()\nraise RuntimeError('boom')\n"), tmp_path)
    assert finish(proc) == 111
    assert_one_traceback(err, "RuntimeError: boom")


def test_an_exception_in_a_thread_exits_111(tmp_path):
    body = (
        "r, w = os.pipe()\nimport threading, time\n"
        "threading.Thread(target=lambda: 1 / 0).start()\ntime.sleep(60)\n"
    )
    proc, err = start(lean_program(tmp_path, body), tmp_path)
    assert finish(proc) == 111
    assert_one_traceback(err, "ZeroDivisionError: division by zero")


def test_a_thread_ending_with_system_exit_is_quiet(tmp_path):
    body = "import threading, sys\nt = threading.Thread(target=sys.exit)\nt.start()\nt.join()\nraise SystemExit(3)\n"
    proc, err = start(lean_program(tmp_path, body), tmp_path)
    assert finish(proc) == 3
    assert err.read_text() == ""


def test_keyboard_interrupt_still_ends_by_sigint(tmp_path):
    proc, err = start(lean_program(tmp_path, "r, w = os.pipe()\nraise KeyboardInterrupt\n"), tmp_path)
    assert finish(proc) == -signal.SIGINT
    assert_one_traceback(err, "KeyboardInterrupt")


def test_the_non_lean_fallback_exits_111_too(tmp_path):
    """No memfd: the command runs in the process that was started, with the same hook."""
    wrapper = tmp_path / "fallback.py"
    wrapper.write_text(
        "import os, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "def no_memfd(*args):\n    raise OSError(38, 'no memfd here')\n"
        "os.memfd_create = no_memfd\n"
        "from prefork import lean\n"
        "lean.go_lean('prog', 'no.such.module')\n"
        "raise RuntimeError('in the fallback')\n"
    )
    proc, err = start([sys.executable, str(wrapper)], tmp_path)
    assert finish(proc) == 111
    assert_one_traceback(err, "RuntimeError: in the fallback")


# == each long-lived program =============================================================================
def test_prefork_exporter_that_fails_on_a_scrape_exits_111(tmp_path):
    body = (
        INJECT + "import prefork.metrics.collector\nprefork.metrics.collector.SharedMemoryCollector.render = boom\n"
        "from prefork.metrics.exporter import main\nmain()\n"
    )
    argv = lean_program(tmp_path, body, "exporter") + ["--services", str(tmp_path), "--listen", "127.0.0.1:0"]
    proc, err = start(argv, tmp_path, "exporter")
    try:
        line = wait_for(lambda: [x for x in err.read_text().splitlines() if "listening on" in x])
        assert line, err.read_text()
        port = int(line[0].rsplit(":", 1)[1].split("/")[0])
        with socket.create_connection(("127.0.0.1", port), timeout=BOUND) as s:
            s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            with contextlib.suppress(OSError):
                s.recv(100)
        assert finish(proc) == 111
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert_one_traceback(err, "RuntimeError: injected")


def test_multilog_that_fails_on_its_input_exits_111(tmp_path):
    body = INJECT + "import prefork.control.log.multilog\nprefork.control.log.multilog.Multilog.feed = boom\n" \
        "from prefork.control.log.multilog_cli import main\nmain()\n"
    argv = lean_program(tmp_path, body, "multilog") + ["t", str(tmp_path / "log")]
    proc, err = start(argv, tmp_path, "multilog", stdin=subprocess.PIPE)
    try:
        proc.stdin.write(b"a line\n")  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]
        assert finish(proc) == 111
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert_one_traceback(err, "RuntimeError: injected")


def test_svscan_that_fails_in_its_scan_exits_111(tmp_path):
    scan = tmp_path / "scan"
    scan.mkdir()
    body = INJECT + "import prefork.control.svscan\nprefork.control.svscan.Scanner.scan = boom\n" \
        "from prefork.control.svscan import main\nmain()\n"
    argv = lean_program(tmp_path, body, "svscan") + ["--table", str(tmp_path / "table"), str(scan)]
    proc, err = start(argv, tmp_path, "svscan")
    assert finish(proc) == 111
    assert_one_traceback(err, "RuntimeError: injected")


def test_supervise_that_fails_in_its_loop_exits_111(tmp_path):
    service = tmp_path / "svc"
    service.mkdir()
    (service / "run").write_text("#!/bin/sh\nexec sleep 300\n")
    (service / "run").chmod(0o755)
    (service / "down").touch()  # nothing is started: nothing is left running
    body = INJECT + "import prefork.control.engine\nprefork.control.engine.Engine.run = boom\n" \
        "from prefork.control.supervise import main\nmain()\n"
    argv = lean_program(tmp_path, body, "supervise") + ["--table", str(tmp_path / "table"), str(service)]
    proc, err = start(argv, tmp_path, "supervise")
    assert finish(proc) == 111
    assert_one_traceback(err, "RuntimeError: injected")


def test_tcpserver_master_that_fails_in_its_loop_exits_111(tmp_path):
    from prefork.serverconfig import ServerConfig

    cfg = ServerConfig(host="127.0.0.1", ip="127.0.0.1", port=0, argv=[b"/bin/echo", b"hi"], workers=2,
                       scoreboard_path=str(tmp_path / "board"), remote_host_lookup=False, ident=False,
                       localname=b"local")
    body = (
        INJECT + "import prefork.master\nprefork.master.Master.reap = boom\n"
        f"from prefork.serverconfig import ServerConfig\nprefork.master.run(ServerConfig(**{cfg.as_dict()!r}))\n"
    )
    proc, err = start(lean_program(tmp_path, body, "tcpserver"), tmp_path, "tcpserver")
    workers: list[psutil.Process] = []
    try:
        workers = wait_for(lambda: psutil.Process(proc.pid).children()) or []
        assert workers, err.read_text()
        os.kill(workers[0].pid, signal.SIGKILL)  # the master reaps it: the injected failure
        assert finish(proc) == 111
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for w in workers:  # PR_SET_PDEATHSIG kills them with the master; make sure
            with contextlib.suppress(psutil.NoSuchProcess):
                w.kill()
    assert_one_traceback(err, "RuntimeError: injected")
