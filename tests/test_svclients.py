"""svc, svstat, svok: prefork's clients against Debian's, both driving Debian's real supervise (docs/CONTRACTS.md, Control FIFO; Lock and ok files; svstat output).

Every differential test runs the same command line with Debian's binary and with prefork's and
compares exit code, stdout and stderr byte for byte (and, for svc, the bytes that reach
``supervise/control`` and what supervise then does to the service).
"""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from conftest import ours, real, remove_shm_files_of

from prefork import tai64n
from prefork.control import statusfile, svc, svok, svstat
from prefork.options import UsageError

ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
IMPLS = ("debian", "prefork")
OPTIONS_LINE = (
    b"svc options: u up, d down, o once, x exit, p pause, c continue, h hup, a alarm, i interrupt, t term, k kill\n"
)


def tool(impl: str, name: str) -> str:
    return real(name) if impl == "debian" else ours(name)


@dataclass(frozen=True)
class Result:
    rc: int
    out: bytes
    err: bytes


def run(argv: list, cwd: Path | str | None = None, nobody: bool = False) -> Result:
    if nobody:
        argv = [real("setuidgid"), "nobody", *argv]
    proc = subprocess.run(argv, cwd=cwd, env=ENV, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def same(name: str, args: list, cwd: Path | str | None = None, nobody: bool = False) -> Result:
    """Run Debian's and prefork's NAME with ARGS; they must agree. Only for commands without side effects:
    a differing pair is run again (up to 3 times) in case a second boundary fell between the two runs."""
    for _ in range(3):
        theirs = run([tool("debian", name), *args], cwd, nobody)
        mine = run([tool("prefork", name), *args], cwd, nobody)
        if mine == theirs:
            break
    assert mine == theirs
    return mine


def eventually(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 1):
        if predicate():
            return True
        if time.monotonic() > deadline:
            break
        time.sleep(interval)
    return predicate()


# -- forged service directories (svstat and svok read files; nothing has to run) ------------------------------
def label(ago: int) -> bytes:
    return tai64n.pack(int(time.time()) - ago, 123_456_500)


def status_bytes(pid: int = 0, paused: int = 0, want: bytes = b"u", ago: int = 5, tail: bytes = b"") -> bytes:
    """Status bytes built by hand (not through statusfile.encode), so odd values can be forged."""
    return label(ago) + struct.pack("<I", pid) + bytes([paused]) + want + tail


def forge(root: Path, name: str = "svc", status: bytes | None = None, down: bool = False, ok: str = "file") -> Path:
    """A service directory whose ``supervise/ok`` is a regular file (the open succeeds, as with a running supervise)."""
    service = root / name
    (service / "supervise").mkdir(parents=True)
    if down:
        (service / "down").touch()
    if ok == "file":
        (service / "supervise" / "ok").touch()
    elif ok == "fifo":
        os.mkfifo(service / "supervise" / "ok", 0o600)
    elif ok == "dir":
        (service / "supervise" / "ok").mkdir()
    if status is not None:
        (service / "supervise" / "status").write_bytes(status)
    return service


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory the user nobody can reach (pytest's tmp_path is root's 0700), for permission tests."""
    if os.geteuid() != 0:
        pytest.skip("permission tests run as root and switch to nobody")
    real("setuidgid")
    path = Path(tempfile.mkdtemp(prefix="svclients-"))
    try:
        path.chmod(0o755)
        yield path
    finally:
        remove_shm_files_of(path)
        shutil.rmtree(path, ignore_errors=True)


# -- Debian's supervise on a service whose run script logs the signals it gets -------------------------------
RUN = """#!/bin/sh
echo start >> log
trap 'echo HUP >> log' HUP
trap 'echo ALRM >> log' ALRM
trap 'echo INT >> log' INT
trap 'echo CONT >> log' CONT
trap 'echo TERM >> log; exit 0' TERM
while :; do sleep 0.05; done
"""


def make_service(root: Path, name: str, down: bool = False, run_script: str = RUN) -> Path:
    service = root / name
    service.mkdir()
    (service / "run").write_text(run_script)
    (service / "run").chmod(0o755)
    if down:
        (service / "down").touch()
    return service


class Supervise:
    """Debian's ``supervise DIR`` with a clean environment; stop() kills it and every descendant by pid."""

    def __init__(self, service: Path) -> None:
        self.service = service
        self.errors = open(service.parent / f"{service.name}.supervise-stderr", "wb")
        self.proc = subprocess.Popen(
            [real("supervise"), str(service)],
            env={"PATH": "/usr/bin:/bin"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.errors,
        )

    def status(self) -> statusfile.Status | None:
        try:
            return statusfile.read(str(self.service / "supervise"))
        except (OSError, ValueError):
            return None

    def log(self) -> tuple[str, ...]:
        try:
            return tuple((self.service / "log").read_text().split())
        except FileNotFoundError:
            return ()

    def ready(self, up: bool) -> bool:
        """ok has a reader and the status shows the service started (up) or not (down)."""
        status = self.status()
        if status is None or not svok.running(str(self.service)):
            return False
        return (status.pid != 0 and self.log() == ("start",)) if up else status.pid == 0

    def stop(self) -> None:
        try:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGSTOP)  # it cannot start another child while we collect them
                try:
                    descendants = psutil.Process(self.proc.pid).children(recursive=True)
                except psutil.NoSuchProcess:
                    descendants = []
                self.proc.kill()
                self.proc.wait(10)
                for child in descendants:
                    try:
                        child.kill()  # psutil checks it is still the same process
                    except psutil.NoSuchProcess:
                        pass
            status = self.status()  # a service left behind by a supervise that died on its own
            if status is not None and status.pid:
                try:
                    child = psutil.Process(status.pid)
                    if child.cwd() == str(self.service):  # its run script, not a recycled pid
                        child.kill()
                except psutil.Error:
                    pass
        finally:
            self.errors.close()


@dataclass(frozen=True)
class Seen:
    """What svc made supervise do, with pids reduced to 'same as at the start or not'."""

    up: bool
    same_pid: bool
    paused: bool
    want: bytes
    stopped: bool
    log: tuple[str, ...]
    supervise: int | None  # None while supervise runs, else its exit code


def observe(sup: Supervise, first_pid: int) -> Seen | None:
    status = sup.status()
    if status is None:
        return None
    stopped = False
    if status.pid:
        try:
            stopped = psutil.Process(status.pid).status() == psutil.STATUS_STOPPED
        except psutil.Error:
            stopped = False
    return Seen(
        up=status.pid != 0,
        same_pid=status.pid == first_pid,
        paused=status.paused,
        want=status.want,
        stopped=stopped,
        log=sup.log(),
        supervise=sup.proc.poll(),
    )


def matches(seen: Seen | None, expect: dict) -> bool:
    return seen is not None and all(getattr(seen, key) == value for key, value in expect.items())


# (service has a down file, [(svc arguments, expected observation, seconds to wait before looking again)])
SCENARIOS = {
    "u": (True, [(["-u"], dict(up=True, want=b"u", log=("start",)), 0)]),
    "d": (False, [(["-d"], dict(up=False, want=b"d", log=("start", "TERM")), 0)]),
    "o-then-t-stays-down": (
        True,
        [
            (["-o"], dict(up=True, want=b"\0", log=("start",)), 0),
            (["-t"], dict(up=False, want=b"\0", log=("start", "TERM")), 1.5),
        ],
    ),
    "p-then-c": (
        False,
        [
            (["-p"], dict(up=True, same_pid=True, paused=True, stopped=True, log=("start",)), 0.3),
            (["-c"], dict(up=True, same_pid=True, paused=False, stopped=False, log=("start", "CONT")), 0),
        ],
    ),
    "h": (False, [(["-h"], dict(up=True, same_pid=True, log=("start", "HUP")), 0)]),
    "a": (False, [(["-a"], dict(up=True, same_pid=True, log=("start", "ALRM")), 0)]),
    "i": (False, [(["-i"], dict(up=True, same_pid=True, log=("start", "INT")), 0)]),
    "t-restarts": (False, [(["-t"], dict(up=True, same_pid=False, want=b"u", log=("start", "TERM", "start")), 0)]),
    "k-restarts": (False, [(["-k"], dict(up=True, same_pid=False, want=b"u", log=("start", "start")), 0)]),
    "x-waits-for-down": (
        False,
        [
            (["-x"], dict(up=True, same_pid=True, supervise=None), 1.0),
            (["-d"], dict(up=False, log=("start", "TERM"), supervise=0), 0),
        ],
    ),
    "x-when-down": (True, [(["-x"], dict(up=False, log=(), supervise=0), 0)]),
    "du-restarts": (False, [(["-du"], dict(up=True, same_pid=False, want=b"u", log=("start", "TERM", "start")), 0)]),
    "ud-stops": (False, [(["-ud"], dict(up=False, want=b"d", log=("start", "TERM")), 0)]),
}


@pytest.mark.differential
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_svc_drives_real_supervise_like_debian_svc(tmp_path, name):
    """Each option, sent by Debian's svc to one supervise and by ours to another, leaves both in the same state."""
    down, steps = SCENARIOS[name]
    sups: dict[str, Supervise] = {}
    try:
        for impl in IMPLS:
            sups[impl] = Supervise(make_service(tmp_path, impl, down=down))
        for impl, sup in sups.items():
            assert eventually(lambda sup=sup: sup.ready(up=not down)), (impl, sup.status(), sup.log())
        first = {impl: sup.status().pid for impl, sup in sups.items()}
        for args, expect, settle in steps:
            for impl, sup in sups.items():
                result = run([tool(impl, "svc"), *args, str(sup.service)])
                assert result == Result(0, b"", b""), impl
            for impl, sup in sups.items():
                assert eventually(lambda sup=sup, impl=impl, expect=expect: matches(observe(sup, first[impl]), expect)), (
                    impl,
                    args,
                    observe(sup, first[impl]),
                )
            if settle:
                time.sleep(settle)
            seen = {impl: observe(sup, first[impl]) for impl, sup in sups.items()}
            assert matches(seen["debian"], expect), (args, seen["debian"])
            assert seen["prefork"] == seen["debian"], args
    finally:
        for sup in sups.values():
            sup.stop()


# -- the bytes svc writes ------------------------------------------------------------------------------------
def control_fifo(root: Path, name: str) -> tuple[Path, int]:
    """A service dir whose supervise/control is a FIFO we hold open for reading (so svc's open succeeds)."""
    (root / name / "supervise").mkdir(parents=True)
    path = root / name / "supervise" / "control"
    os.mkfifo(path, 0o600)
    return root / name, os.open(path, os.O_RDONLY | os.O_NONBLOCK)


def drain(fd: int) -> bytes:
    data = b""
    for _ in range(100):
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    return data


def svc_sends(impl: str, args: list, tmp_path: Path, count: int = 1) -> tuple[Result, list[bytes]]:
    """Run svc ARGS with COUNT fresh FIFO dirs appended (relative to tmp_path/impl); the bytes each received."""
    root = tmp_path / impl
    root.mkdir(exist_ok=True)
    fifos = [control_fifo(root, f"s{n}") for n in range(count)]
    try:
        result = run([tool(impl, "svc"), *args, *[f"s{n}" for n in range(count)]], cwd=root)
        return result, [drain(fd) for _, fd in fifos]
    finally:
        for _, fd in fifos:
            os.close(fd)


@pytest.mark.differential
@pytest.mark.parametrize(
    ("args", "sent"),
    [
        (["-u"], b"u"),
        (["-hdhu"], b"hdu"),
        (["-u", "-d", "-u"], b"ud"),
        (["-udopchaitkx"], b"udopchaitkx"),
        (["-xkticaphoud"], b"xkticaphoud"),
        (["-kk", "-k", "-kkk"], b"k"),
        ([], b""),
        (["-u", "--"], b"u"),
        (["--whatever"], b""),  # djb's getopt takes any word starting with -- as --
        (["-x", "--", "-u"], b"x"),  # after --, -u is a directory (and a warning)
    ],
    ids=["u", "hdhu", "u-d-u", "all", "all-reversed", "k-repeated", "none", "double-dash", "long-word", "after-dd"],
)
def test_svc_writes_each_letter_once_in_first_seen_order(tmp_path, args, sent):
    results = {impl: svc_sends(impl, args, tmp_path) for impl in IMPLS}
    assert results["prefork"] == results["debian"]
    result, received = results["prefork"]
    assert received == [sent]
    assert result.rc == 0


@pytest.mark.differential
def test_svc_sends_to_every_directory_in_turn(tmp_path):
    results = {impl: svc_sends(impl, ["-ud"], tmp_path, count=3) for impl in IMPLS}
    assert results["prefork"] == results["debian"]
    assert results["prefork"] == (Result(0, b"", b""), [b"ud", b"ud", b"ud"])


@pytest.mark.differential
def test_svc_goes_on_after_a_failing_directory(tmp_path):
    results = {}
    for impl in IMPLS:
        root = tmp_path / impl
        root.mkdir()
        (_, fa), (_, fb) = control_fifo(root, "a"), control_fifo(root, "b")
        try:
            result = run([tool(impl, "svc"), "-t", "a", "missing", "b"], cwd=root)
            results[impl] = (result, drain(fa), drain(fb))
        finally:
            os.close(fa)
            os.close(fb)
    assert results["prefork"] == results["debian"]
    assert results["prefork"] == (
        Result(0, b"", b"svc: warning: unable to chdir to missing: file does not exist\n"),
        b"t",
        b"t",
    )


# -- svc warnings: one test per case, each compared with Debian's ------------------------------------------
def svc_same(args: list, cwd: Path) -> Result:
    """svc run by both (no FIFO gets any reader, so there are no side effects to compare)."""
    theirs = run([tool("debian", "svc"), *args], cwd)
    mine = run([tool("prefork", "svc"), *args], cwd)
    assert mine == theirs
    return mine


@pytest.mark.differential
def test_svc_warns_about_a_missing_directory(tmp_path):
    assert svc_same(["-u", "nope"], tmp_path) == Result(0, b"", b"svc: warning: unable to chdir to nope: file does not exist\n")


@pytest.mark.differential
def test_svc_warns_about_a_directory_that_is_a_file(tmp_path):
    (tmp_path / "file").touch()
    assert svc_same(["-u", "file"], tmp_path) == Result(0, b"", b"svc: warning: unable to chdir to file: not a directory\n")


@pytest.mark.differential
def test_svc_warns_about_an_empty_directory_name(tmp_path):
    assert svc_same(["-u", ""], tmp_path) == Result(0, b"", b"svc: warning: unable to chdir to : file does not exist\n")


@pytest.mark.differential
def test_svc_warns_when_there_is_no_supervise_directory(tmp_path):
    (tmp_path / "svc").mkdir()
    assert svc_same(["-u", "svc"], tmp_path) == Result(0, b"", b"svc: warning: unable to control svc: file does not exist\n")


@pytest.mark.differential
def test_svc_warns_when_supervise_is_a_file(tmp_path):
    (tmp_path / "svc").mkdir()
    (tmp_path / "svc" / "supervise").touch()
    assert svc_same(["-u", "svc"], tmp_path) == Result(0, b"", b"svc: warning: unable to control svc: not a directory\n")


@pytest.mark.differential
def test_svc_warns_when_no_supervise_reads_the_fifo(tmp_path):
    (tmp_path / "svc" / "supervise").mkdir(parents=True)
    os.mkfifo(tmp_path / "svc" / "supervise" / "control", 0o600)
    expected = b"svc: warning: unable to control svc: supervise not running\n"
    assert svc_same(["-u", "svc"], tmp_path) == Result(0, b"", expected)


@pytest.mark.differential
def test_svc_warns_when_supervise_has_exited(tmp_path):
    """A real supervise, killed: its FIFOs stay behind with no reader."""
    service = make_service(tmp_path, "svc", down=True)
    sup = Supervise(service)
    try:
        assert eventually(lambda: sup.ready(up=False))
    finally:
        sup.stop()
    expected = b"svc: warning: unable to control svc: supervise not running\n"
    assert svc_same(["-u", "svc"], tmp_path) == Result(0, b"", expected)


@pytest.mark.differential
def test_svc_reports_a_write_error(tmp_path):
    """control is /dev/full: the open works and the write fails (ENOSPC)."""
    (tmp_path / "svc" / "supervise").mkdir(parents=True)
    (tmp_path / "svc" / "supervise" / "control").symlink_to("/dev/full")
    expected = b"svc: warning: error writing commands to svc: out of disk space\n"
    assert svc_same(["-u", "svc"], tmp_path) == Result(0, b"", expected)


@pytest.mark.differential
def test_svc_with_no_letters_makes_no_write(tmp_path):
    """No options: svc opens control and writes nothing (so /dev/full does not fail)."""
    (tmp_path / "svc" / "supervise").mkdir(parents=True)
    (tmp_path / "svc" / "supervise" / "control").symlink_to("/dev/full")
    assert svc_same(["svc"], tmp_path) == Result(0, b"", b"")


@pytest.mark.differential
def test_svc_writes_at_the_start_of_a_regular_control_file(tmp_path):
    contents = {}
    for impl in IMPLS:
        (tmp_path / impl / "supervise").mkdir(parents=True)
        control = tmp_path / impl / "supervise" / "control"
        control.write_bytes(b"123456")
        assert run([tool(impl, "svc"), "-ud", impl], cwd=tmp_path) == Result(0, b"", b"")
        contents[impl] = control.read_bytes()
    assert contents["prefork"] == contents["debian"] == b"ud3456"


@pytest.mark.differential
def test_svc_warns_when_access_is_denied(public_dir):
    (public_dir / "closed").mkdir(mode=0o700)
    (public_dir / "open" / "supervise").mkdir(parents=True)
    (public_dir / "open" / "supervise").chmod(0o700)
    (public_dir / "closed").chmod(0o600)  # no search permission for anybody but root
    result = same("svc", ["-u", "closed", "open"], cwd=public_dir, nobody=True)
    assert result == Result(
        0,
        b"",
        b"svc: warning: unable to chdir to closed: access denied\nsvc: warning: unable to control open: access denied\n",
    )


@pytest.mark.differential
def test_svc_dies_when_the_current_directory_cannot_be_opened(public_dir):
    cwd = public_dir / "unreadable"
    cwd.mkdir()
    cwd.chmod(0o311)
    result = same("svc", ["-u", "x"], cwd=cwd, nobody=True)
    assert result == Result(111, b"", b"svc: fatal: unable to open current directory: access denied\n")


@pytest.mark.differential
@pytest.mark.parametrize(
    ("args", "letter"),
    [(["-q"], b"q"), (["-uz"], b"z"), (["-u", "-v"], b"v"), (["-w"], b"w"), (["-1"], b"1"), (["-u", "-d", "-U"], b"U")],
    ids=["q", "after-valid-letter", "v-usr1", "w-usr2", "digit", "uppercase"],
)
def test_svc_refuses_an_illegal_option_and_sends_nothing(tmp_path, args, letter):
    results = {impl: svc_sends(impl, args, tmp_path) for impl in IMPLS}
    assert results["prefork"] == results["debian"]
    expected = Result(100, b"", b"svc: illegal option -- " + letter + b"\n" + OPTIONS_LINE)
    assert results["prefork"] == (expected, [b""])


@pytest.mark.differential
def test_svc_reports_a_non_ascii_illegal_option_byte_as_getopt_does(tmp_path):
    results = {}
    for impl in IMPLS:
        proc = subprocess.run([tool(impl, "svc").encode(), b"-\xc3\xa9", b"x"], env=ENV, cwd=tmp_path,
                              capture_output=True, timeout=30)
        results[impl] = (proc.returncode, proc.stderr)
    assert results["prefork"] == results["debian"] == (100, b"svc: illegal option -- \xc3\n" + OPTIONS_LINE)


@pytest.mark.differential
def test_svc_names_itself_after_argv0_in_the_illegal_option_line(tmp_path):
    results = {}
    for impl in IMPLS:
        link = tmp_path / impl / "mysvc"
        link.parent.mkdir()
        link.symlink_to(tool(impl, "svc"))
        results[impl] = run([str(link), "-q", "x"], cwd=tmp_path)
    assert results["prefork"] == results["debian"] == Result(100, b"", b"mysvc: illegal option -- q\n" + OPTIONS_LINE)


def test_svc_ignores_sigpipe():
    code = "import signal, prefork.control.svc as s; s.main(['x']); print(signal.getsignal(signal.SIGPIPE) is signal.SIG_IGN)"
    proc = subprocess.run([sys.executable, "-c", f"import signal; signal.signal(signal.SIGPIPE, signal.SIG_DFL); {code}"],
                          capture_output=True, timeout=30, cwd="/")
    assert proc.stdout == b"True\n"


# -- svc as a library ------------------------------------------------------------------------------------------
def test_control_sends_and_keeps_the_callers_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    service, fd = control_fifo(tmp_path, "svc")
    try:
        assert svc.control("svc", b"dx") is None
        assert os.getcwd() == str(tmp_path)
        assert drain(fd) == b"dx"
    finally:
        os.close(fd)


def test_control_returns_the_warning_text(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "down" / "supervise").mkdir(parents=True)
    os.mkfifo(tmp_path / "down" / "supervise" / "control")
    assert svc.control("nope", b"u") == "unable to chdir to nope: file does not exist"
    assert svc.control("down", b"u") == "unable to control down: supervise not running"
    assert svc.control(str(tmp_path), b"u") == f"unable to control {tmp_path}: file does not exist"
    assert os.getcwd() == str(tmp_path)


def test_parse_keeps_operands_as_given():
    assert svc.parse([b"-u", b"-", b"-d"]) == (b"u", [b"-", b"-d"])
    assert svc.parse([b"-ux", b"dir", b"-d"]) == (b"ux", [b"dir", b"-d"])
    with pytest.raises(UsageError) as caught:
        svc.parse([b"-uq"])
    assert (caught.value.text, caught.value.from_getopt) == ("illegal option -- q", True)


# -- svok -------------------------------------------------------------------------------------------------------
@pytest.mark.differential
def test_svok_says_0_while_real_supervise_runs_and_100_after(tmp_path):
    sup = Supervise(make_service(tmp_path, "svc", down=True))
    try:
        assert eventually(lambda: sup.ready(up=False))
        assert same("svok", ["svc"], cwd=tmp_path) == Result(0, b"", b"")
        assert svok.running(str(tmp_path / "svc"))
    finally:
        sup.stop()
    assert same("svok", ["svc"], cwd=tmp_path) == Result(100, b"", b"")
    assert not svok.running(str(tmp_path / "svc"))


@pytest.mark.differential
def test_svok_without_a_supervise_directory_is_100(tmp_path):
    (tmp_path / "svc").mkdir()
    assert same("svok", ["svc"], cwd=tmp_path) == Result(100, b"", b"")


@pytest.mark.differential
def test_svok_with_a_regular_ok_file_is_0(tmp_path):
    forge(tmp_path, ok="file")
    assert same("svok", ["svc"], cwd=tmp_path) == Result(0, b"", b"")


@pytest.mark.differential
def test_svok_with_an_unread_ok_fifo_is_100(tmp_path):
    forge(tmp_path, ok="fifo")
    assert same("svok", ["svc"], cwd=tmp_path) == Result(100, b"", b"")


@pytest.mark.differential
def test_svok_when_ok_is_a_directory_is_111(tmp_path):
    forge(tmp_path, ok="dir")
    assert same("svok", ["svc"], cwd=tmp_path) == Result(111, b"", b"svok: fatal: unable to open svc/supervise/ok: is a directory\n")


@pytest.mark.differential
def test_svok_when_supervise_is_a_file_is_111(tmp_path):
    (tmp_path / "svc").mkdir()
    (tmp_path / "svc" / "supervise").touch()
    expected = Result(111, b"", b"svok: fatal: unable to open svc/supervise/ok: not a directory\n")
    assert same("svok", ["svc"], cwd=tmp_path) == expected
    with pytest.raises(NotADirectoryError) as caught:
        svok.running(str(tmp_path / "svc"))
    assert caught.value.filename == f"{tmp_path}/svc/supervise/ok"


@pytest.mark.differential
def test_svok_on_a_missing_directory_is_111(tmp_path):
    expected = Result(111, b"", b"svok: fatal: unable to chdir to nope: file does not exist\n")
    assert same("svok", ["nope"], cwd=tmp_path) == expected
    with pytest.raises(FileNotFoundError) as caught:
        svok.running(str(tmp_path / "nope"))
    assert caught.value.filename == str(tmp_path / "nope")


@pytest.mark.differential
def test_svok_without_arguments_is_a_usage_error(tmp_path):
    assert same("svok", [], cwd=tmp_path) == Result(100, b"", b"svok: usage: svok dir\n")


@pytest.mark.differential
def test_svok_ignores_extra_arguments(tmp_path):
    forge(tmp_path, ok="file")
    assert same("svok", ["svc", "nope", "-x"], cwd=tmp_path) == Result(0, b"", b"")


@pytest.mark.differential
def test_svok_when_access_is_denied(public_dir):
    (public_dir / "closed").mkdir()
    (public_dir / "closed").chmod(0o600)
    (public_dir / "open" / "supervise").mkdir(parents=True)
    (public_dir / "open" / "supervise").chmod(0o700)
    assert same("svok", ["closed"], cwd=public_dir, nobody=True) == Result(
        111, b"", b"svok: fatal: unable to chdir to closed: access denied\n"
    )
    assert same("svok", ["open"], cwd=public_dir, nobody=True) == Result(
        111, b"", b"svok: fatal: unable to open open/supervise/ok: access denied\n"
    )


# -- svstat on forged directories: one test per kind of line ------------------------------------------------------
def svstat_line(tmp_path: Path, expected: str, name: str = "svc") -> None:
    result = same("svstat", [name], cwd=tmp_path)
    assert result.rc == 0 and result.err == b""
    assert_lines(result.out, f"{name}: {expected}\n".encode())


def assert_lines(out: bytes, expected: bytes) -> None:
    """Forged labels are 5 seconds old when made; a second may tick before svstat reads them."""
    assert out in (expected, expected.replace(b" 5 seconds", b" 6 seconds"))


SVSTAT_LINES = {
    "up": (lambda: dict(status=status_bytes(pid=4321, want=b"u")), "up (pid 4321) 5 seconds"),
    "up-normally-down": (lambda: dict(status=status_bytes(pid=4321), down=True), "up (pid 4321) 5 seconds, normally down"),
    "down-normally-up": (lambda: dict(status=status_bytes(pid=0, want=b"d")), "down 5 seconds, normally up"),
    "down-with-down-file": (lambda: dict(status=status_bytes(pid=0, want=b"d"), down=True), "down 5 seconds"),
    "paused": (lambda: dict(status=status_bytes(pid=7, paused=1)), "up (pid 7) 5 seconds, paused"),
    "paused-any-nonzero-byte": (lambda: dict(status=status_bytes(pid=7, paused=9)), "up (pid 7) 5 seconds, paused"),
    "paused-but-down": (lambda: dict(status=status_bytes(pid=0, paused=1, want=b"d")), "down 5 seconds, normally up"),
    "want-up-while-down": (lambda: dict(status=status_bytes(pid=0, want=b"u")), "down 5 seconds, normally up, want up"),
    "want-up-while-up": (lambda: dict(status=status_bytes(pid=7, want=b"u")), "up (pid 7) 5 seconds"),
    "want-down-while-up": (lambda: dict(status=status_bytes(pid=7, want=b"d")), "up (pid 7) 5 seconds, want down"),
    "once": (lambda: dict(status=status_bytes(pid=7, want=b"\0")), "up (pid 7) 5 seconds"),
    "once-down": (lambda: dict(status=status_bytes(pid=0, want=b"\0"), down=True), "down 5 seconds"),
    "unknown-want-byte": (lambda: dict(status=status_bytes(pid=7, want=b"x")), "up (pid 7) 5 seconds"),
    "every-suffix": (
        lambda: dict(status=status_bytes(pid=99, paused=1, want=b"d"), down=True),
        "up (pid 99) 5 seconds, normally down, paused, want down",
    ),
    "largest-pid": (lambda: dict(status=status_bytes(pid=0xFFFFFFFF)), "up (pid 4294967295) 5 seconds"),
    "future": (lambda: dict(status=status_bytes(pid=7, ago=-3600)), "up (pid 7) 0 seconds"),
    "runit-20-bytes": (lambda: dict(status=status_bytes(pid=7, tail=b"\0\1")), "up (pid 7) 5 seconds"),
    "longer-file": (lambda: dict(status=status_bytes(pid=7, tail=b"x" * 100)), "up (pid 7) 5 seconds"),
    "short-status": (lambda: dict(status=status_bytes()[:17]), "unable to read supervise/status: bad format"),
    "empty-status": (lambda: dict(status=b""), "unable to read supervise/status: bad format"),
    "no-status": (lambda: dict(status=None), "unable to open supervise/status: file does not exist"),
    "no-ok": (lambda: dict(status=status_bytes(), ok="none"), "unable to open supervise/ok: file does not exist"),
    "ok-without-reader": (lambda: dict(status=status_bytes(), ok="fifo"), "supervise not running"),
    "ok-is-a-directory": (lambda: dict(status=status_bytes(), ok="dir"), "unable to open supervise/ok: is a directory"),
}


@pytest.mark.differential
@pytest.mark.parametrize("case", list(SVSTAT_LINES))
def test_svstat_line(tmp_path, case):
    make_kwargs, expected = SVSTAT_LINES[case]
    forge(tmp_path, **make_kwargs())  # labels are made now: "5 seconds" ago
    svstat_line(tmp_path, expected)


@pytest.mark.differential
def test_svstat_of_an_all_zero_status_rounds_like_debian(tmp_path):
    """A label of 0 is 2^62 seconds old; svstat prints it through a double, so the number is rounded."""
    forge(tmp_path, status=bytes(18))
    result = same("svstat", ["svc"], cwd=tmp_path)
    seconds = int(result.out.split()[2])
    assert seconds % 1024 == 0 and abs(seconds - (tai64n.OFFSET + int(time.time()))) <= 1024
    assert result.out == f"svc: down {seconds} seconds, normally up\n".encode()


@pytest.mark.differential
def test_svstat_on_a_missing_directory(tmp_path):
    svstat_line(tmp_path, "unable to chdir: file does not exist", name="nope")


@pytest.mark.differential
def test_svstat_on_a_file(tmp_path):
    (tmp_path / "file").touch()
    svstat_line(tmp_path, "unable to chdir: not a directory", name="file")


@pytest.mark.differential
def test_svstat_on_a_directory_without_supervise(tmp_path):
    (tmp_path / "svc").mkdir()
    svstat_line(tmp_path, "unable to open supervise/ok: file does not exist")


@pytest.mark.differential
def test_svstat_when_supervise_is_a_file(tmp_path):
    (tmp_path / "svc").mkdir()
    (tmp_path / "svc" / "supervise").touch()
    svstat_line(tmp_path, "unable to open supervise/ok: not a directory")


@pytest.mark.differential
def test_svstat_when_down_cannot_be_stat(tmp_path):
    service = forge(tmp_path, status=status_bytes(pid=7))
    (service / "down").symlink_to("down")
    svstat_line(tmp_path, "unable to stat down: symbolic link loop")


@pytest.mark.differential
def test_svstat_takes_a_dangling_down_link_as_no_down_file(tmp_path):
    service = forge(tmp_path, status=status_bytes(pid=0, want=b"d"))
    (service / "down").symlink_to("nowhere")
    svstat_line(tmp_path, "down 5 seconds, normally up")


@pytest.mark.differential
def test_svstat_with_a_fifo_ok_held_open_like_supervise(tmp_path):
    service = forge(tmp_path, status=status_bytes(pid=7), ok="fifo")
    fd = os.open(service / "supervise" / "ok", os.O_RDONLY | os.O_NONBLOCK)
    try:
        svstat_line(tmp_path, "up (pid 7) 5 seconds")
    finally:
        os.close(fd)


@pytest.mark.differential
def test_svstat_prints_one_line_per_argument_in_order(tmp_path):
    forge(tmp_path, "a", status=status_bytes(pid=3))
    forge(tmp_path, "b", status=status_bytes(pid=0, want=b"u"), down=True)
    result = same("svstat", ["b", "nope", "a", "b", "--all"], cwd=tmp_path)
    assert result.rc == 0 and result.err == b""
    assert_lines(
        result.out,
        b"b: down 5 seconds, want up\nnope: unable to chdir: file does not exist\na: up (pid 3) 5 seconds\n"
        b"b: down 5 seconds, want up\n--all: unable to chdir: file does not exist\n",
    )


@pytest.mark.differential
def test_svstat_without_arguments_prints_nothing(tmp_path):
    assert same("svstat", [], cwd=tmp_path) == Result(0, b"", b"")


@pytest.mark.differential
def test_svstat_output_longer_than_its_buffer(tmp_path):
    name = "s" * 200
    forge(tmp_path, name, status=status_bytes(pid=12))
    result = same("svstat", [name] * 20, cwd=tmp_path)
    assert_lines(result.out, f"{name}: up (pid 12) 5 seconds\n".encode() * 20)


def test_svstat_writes_whole_lines_up_to_1024_bytes(monkeypatch):
    writes: list[bytes] = []
    monkeypatch.setattr(svstat, "_write_all", lambda fd, data: writes.append(bytes(data)))
    lines = [b"x" * 299 + b"\n"] * 7 + [b"y" * 2000 + b"\n", b"z\n"]
    svstat._write_lines(iter(lines))
    assert b"".join(writes) == b"".join(lines)
    assert [len(w) for w in writes] == [900, 900, 300, 2001, 2]
    assert all(w.endswith(b"\n") for w in writes)


@pytest.mark.differential
def test_svstat_when_access_is_denied(public_dir):
    (public_dir / "closed").mkdir()
    (public_dir / "closed").chmod(0o600)
    (public_dir / "open" / "supervise").mkdir(parents=True)
    (public_dir / "open" / "supervise").chmod(0o700)
    result = same("svstat", ["closed", "open"], cwd=public_dir, nobody=True)
    assert result == Result(
        0, b"closed: unable to chdir: access denied\nopen: unable to open supervise/ok: access denied\n", b""
    )


@pytest.mark.differential
def test_svstat_dies_when_the_current_directory_cannot_be_opened(public_dir):
    cwd = public_dir / "unreadable"
    cwd.mkdir()
    cwd.chmod(0o311)
    result = same("svstat", [], cwd=cwd, nobody=True)
    assert result == Result(111, b"", b"svstat: fatal: unable to open current directory: access denied\n")


def test_svstat_reports_a_status_read_error(tmp_path):
    """Deliberate difference: Debian's svstat misses read errors (int vs sizeof) and prints whatever its status
    buffer held before (the previous directory's status, or zeros); we print the error (docs/CONTRACTS.md, Quirks of Debian's builds)."""
    service = forge(tmp_path, status=None)
    (service / "supervise" / "status").mkdir()
    assert svstat.status_line(str(service)) == "unable to read supervise/status: is a directory"
    assert run([ours("svstat"), "svc"], cwd=tmp_path) == Result(
        0, b"svc: unable to read supervise/status: is a directory\n", b""
    )
    if os.access("/usr/bin/svstat", os.X_OK):
        theirs = run(["/usr/bin/svstat", "svc"], cwd=tmp_path)
        assert theirs.rc == 0 and b"read" not in theirs.out  # what we decline to copy


# -- svstat against Debian's supervise ------------------------------------------------------------------------
def live_same(tmp_path: Path, expected: str, pid: int) -> None:
    """Debian's and our svstat agree on svc (a live supervise), and say EXPECTED (PID = pid, seconds normalised)."""
    result = same("svstat", ["svc"], cwd=tmp_path)
    assert result.rc == 0 and result.err == b""
    assert normalise(result.out) == normalise(f"svc: {expected}\n".replace("PID", str(pid)).encode())


def normalise(out: bytes) -> bytes:
    """Seconds counts depend on when the test looks."""
    words = out.split(b" ")
    return b" ".join(b"N" if w.isdigit() and i + 1 < len(words) and words[i + 1].startswith(b"second") else w
                     for i, w in enumerate(words))


@pytest.mark.differential
def test_svstat_follows_real_supervise_through_its_states(tmp_path):
    service = make_service(tmp_path, "svc", down=True)
    sup = Supervise(service)
    try:
        assert eventually(lambda: sup.ready(up=False))
        live_same(tmp_path, "down 0 seconds", 0)
        assert run([real("svc"), "-o", "svc"], cwd=tmp_path).rc == 0
        assert eventually(lambda: getattr(sup.status(), "pid", 0) != 0)
        pid = sup.status().pid
        live_same(tmp_path, "up (pid PID) 0 seconds, normally down", pid)
        assert run([real("svc"), "-u", "svc"], cwd=tmp_path).rc == 0
        assert eventually(lambda: getattr(sup.status(), "want", None) == b"u")
        live_same(tmp_path, "up (pid PID) 0 seconds, normally down", pid)
        assert run([real("svc"), "-p", "svc"], cwd=tmp_path).rc == 0
        assert eventually(lambda: getattr(sup.status(), "paused", False))
        live_same(tmp_path, "up (pid PID) 0 seconds, normally down, paused", pid)
        assert run([real("svc"), "-cd", "svc"], cwd=tmp_path).rc == 0
        assert eventually(lambda: getattr(sup.status(), "pid", None) == 0)
        live_same(tmp_path, "down 0 seconds", 0)
        (service / "down").unlink()  # supervise reads down only at start; svstat every time
        live_same(tmp_path, "down 0 seconds, normally up", 0)
    finally:
        sup.stop()
    live_same(tmp_path, "supervise not running", 0)


# -- prefork's extensions and --help ------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["svc", "svstat", "svok"])
def test_help(command):
    proc = subprocess.run([ours(command), "--help"], capture_output=True, timeout=30)
    assert proc.returncode == 0
    assert proc.stdout.startswith(b"usage: " + command.encode())
    assert proc.stderr == b""


@pytest.fixture
def fake_all(monkeypatch):
    calls = []
    module = types.ModuleType("prefork.control.svstat_all")

    def main_all(directory: str, as_json: bool) -> int:
        calls.append((directory, as_json))
        return 3

    module.main_all = main_all
    monkeypatch.setitem(sys.modules, "prefork.control.svstat_all", module)
    return calls


@pytest.mark.parametrize(
    ("args", "call"),
    [(["--all", "d"], ("d", False)), (["--all", "--json", "d"], ("d", True)), (["--json", "--all", "d"], ("d", True))],
    ids=["all", "all-json", "json-all"],
)
def test_svstat_all_dispatches(fake_all, args, call):
    assert svstat.main(args) == 3
    assert fake_all == [call]


@pytest.mark.parametrize(
    "args",
    [["--all"], ["--json", "d"], ["--all", "a", "b"], ["--all", "--all", "d"], ["--json"]],
    ids=["no-dir", "json-alone", "two-dirs", "all-twice", "json-no-dir"],
)
def test_svstat_extension_misuse_is_a_usage_error(fake_all, capfd, args):
    with pytest.raises(SystemExit) as caught:
        svstat.main(args)
    assert caught.value.code == 100
    assert capfd.readouterr().err.startswith("svstat: usage: svstat ")
    assert fake_all == []


def test_status_line_uses_the_given_time(tmp_path):
    service = forge(tmp_path, status=tai64n.pack(1000, 999_999_500) + struct.pack("<I", 5) + b"\0u")
    assert svstat.status_line(str(service), now=1003.99) == "up (pid 5) 3 seconds"
    assert svstat.status_line(str(service), now=1000.0) == "up (pid 5) 0 seconds"
    assert svstat.status_line(str(service), now=900.0) == "up (pid 5) 0 seconds"
