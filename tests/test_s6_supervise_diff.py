"""s6's service-directory files under prefork's supervisor against Debian's s6-supervise 2.11 (docs/CONTRACTS.md,
s6 service directories).

Every test runs one service directory under ``s6-supervise DIR`` (driven by s6-svc, read by s6-svstat),
under prefork's ``supervise DIR`` and under prefork's ``svscan`` (both driven by prefork's svc, read from
the service table), and compares what the service observes: ./finish's arguments, the signal that
``svc -d`` sends with ``down-signal``, the SIGKILL of ``timeout-kill`` and of ``timeout-finish`` and
when it comes, the moment of readiness with ``notification-fd``.  Restart timing is not compared: s6
waits one second after each death, prefork keeps daemontools' one second between starts (documented).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from conftest import ours, real
from tcpserver_harness import wait_until as wait_for  # bounded by count and by time

from prefork.control import restartfile
from prefork.control import servicetable_read as reader

ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
IMPLS = [pytest.param(impl, marks=pytest.mark.differential) for impl in ("s6", "supervise", "svscan")]

# Notes in ./sig.out the first of these signals it gets, then exits 0 (CONT, which follows every down signal,
# is not one of them).
SIGNAL_NOTER = """#!/usr/bin/perl
use strict;
use warnings;
for my $sig (qw(HUP INT QUIT USR1 USR2 ALRM TERM)) {
    $SIG{$sig} = sub { open(my $f, ">>", "sig.out") or die; print $f "$sig\\n"; close $f; exit 0; };
}
open(my $f, ">", "up") or die; close $f;
sleep 1 while 1;
"""
TERM_PROOF = "#!/usr/bin/perl\n$SIG{TERM} = 'IGNORE';\nopen(my $f, '>', 'up') or die; close $f;\nsleep 1 while 1;\n"
COUNTING_RUN = "#!/bin/sh\necho $$ >> starts\n"
FINISH_NOTES = '#!/bin/sh\necho "$(date +%s.%N) $# $*" >> finish.out\n'



def lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except OSError:
        return []


class Rig:
    """One supervisor of SVC in ROOT/tree: s6-supervise, prefork's supervise, or prefork's svscan of the tree."""

    def __init__(self, impl: str, tmp: Path) -> None:
        self.impl = impl
        self.tree = tmp / "tree"
        self.tree.mkdir()
        self.dir = self.tree / "svc"
        self.err = tmp / "stderr"
        self.proc: subprocess.Popen | None = None
        self.procs: list[subprocess.Popen] = []

    def service(self, run: str, **files: str | tuple[str, int]) -> Path:
        """The service directory: ./run and FILES (name with - for _, text or (text, mode))."""
        self.dir.mkdir()
        (self.dir / "run").write_text(run)
        (self.dir / "run").chmod(0o755)
        for name, value in files.items():
            text, mode = value if isinstance(value, tuple) else (value, 0o755 if name == "finish" else 0o644)
            path = self.dir / name.replace("_", "-")
            path.write_text(text)
            path.chmod(mode)
        return self.dir

    def start(self) -> None:
        if self.impl == "s6":
            argv = [real("s6-supervise"), "svc"]
        elif self.impl == "supervise":
            argv = [ours("supervise"), "svc"]
        else:
            argv = [ours("svscan"), "."]
        with open(self.err, "ab") as err:
            self.proc = subprocess.Popen(argv, cwd=self.tree, env=ENV, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err)
        self.procs.append(self.proc)
        assert wait_for(self.running, 10), f"{self.impl}: the supervisor did not start: {self.stderr()!r}"

    def running(self) -> bool:
        if self.impl == "s6":
            return subprocess.run([real("s6-svok"), "svc"], cwd=self.tree, env=ENV).returncode == 0
        try:
            os.close(os.open(self.dir / "supervise" / "ok", os.O_WRONLY | os.O_NONBLOCK))
            reader.find(str(self.dir if self.impl == "supervise" else self.tree))  # made right after ok
        except (OSError, reader.ServiceTableError):
            return False
        return True

    def svc(self, *flags: str) -> None:
        client = real("s6-svc") if self.impl == "s6" else ours("svc")
        result = subprocess.run([client, *flags, "svc"], cwd=self.tree, env=ENV, capture_output=True, timeout=10)
        assert result.returncode == 0, result

    def ready(self) -> bool:
        """s6-svstat's ``ready`` for s6; the service table's for prefork."""
        if self.impl == "s6":
            out = subprocess.run([real("s6-svstat"), "-o", "up,ready", "svc"], cwd=self.tree, env=ENV,
                                 capture_output=True, timeout=10).stdout.split()
            return out == [b"true", b"true"]
        where = self.dir if self.impl == "supervise" else self.tree
        entries = [e for e in reader.read(reader.find(str(where))).entries if e.name == "svc"]
        return bool(entries) and entries[0].ready

    def stderr(self) -> bytes:
        try:
            return self.err.read_bytes()
        except OSError:
            return b""

    def close(self) -> None:
        victims: list[psutil.Process] = []
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGSTOP)  # it starts nothing more while its children are collected
                    victims += psutil.Process(proc.pid).children(recursive=True)
                except (OSError, psutil.Error):
                    pass
                proc.kill()
        for victim in victims:
            try:
                victim.kill()
            except psutil.Error:
                pass
        for proc in self.procs:
            proc.wait(10)
        psutil.wait_procs(victims, timeout=5)
        for pid in [int(p) for p in lines(self.dir / "finish.pid") if p.isdigit()]:
            try:  # a finish made an orphan by the kill above: ours only if it still runs in our directory
                process = psutil.Process(pid)
                if process.cwd() == str(self.dir):
                    process.kill()
            except psutil.Error:
                pass


@pytest.fixture(params=IMPLS)
def rig(request, tmp_path):
    real("s6-supervise")  # the judge: every parameter is skipped without it
    r = Rig(request.param, tmp_path)
    try:
        yield r
    finally:
        r.close()


@pytest.fixture(params=IMPLS[:2])
def lone(request, tmp_path):
    """s6-supervise DIR or prefork's supervise DIR: a supervisor of one service, which x ends."""
    real("s6-supervise")
    r = Rig(request.param, tmp_path)
    try:
        yield r
    finally:
        r.close()


def test_finish_gets_the_exit_code_the_signal_and_the_name(rig):
    run = COUNTING_RUN + '[ "$(wc -l < starts)" -eq 1 ] && exit 3\nexec sleep 300\n'
    rig.service(run, finish=FINISH_NOTES)
    rig.start()
    assert wait_for(lambda: len(lines(rig.dir / "starts")) == 2, 5)  # exit 3, finish, the second start
    rig.svc("-k")
    assert wait_for(lambda: len(lines(rig.dir / "starts")) == 3, 5)
    rig.svc("-d")
    assert wait_for(lambda: len(lines(rig.dir / "finish.out")) == 3, 5)
    args = [line.split(" ", 1)[1] for line in lines(rig.dir / "finish.out")]
    assert args == ["3 3 0 svc", "3 256 9 svc", "3 256 15 svc"], rig.impl


@pytest.mark.parametrize("contents, expected", [
    ("HUP\n", "HUP"), ("sigusr1", "USR1"), ("SIGQUIT\n", "QUIT"), ("2\n", "INT"),
    ("junk\n", "TERM"), ("HUP \n", "TERM"), ("", "TERM"),
])
def test_down_signal(rig, contents, expected):
    rig.service(SIGNAL_NOTER, down_signal=contents)
    rig.start()
    assert wait_for(lambda: (rig.dir / "up").exists(), 5)
    rig.svc("-d")
    assert wait_for(lambda: lines(rig.dir / "sig.out"), 5)
    assert lines(rig.dir / "sig.out") == [expected], rig.impl
    if expected == "TERM" and contents:
        assert b"invalid" in rig.stderr() and b"down-signal" in rig.stderr()  # one warning, both say it


def test_timeout_kill_sends_kill_to_a_service_that_ignores_term(rig):
    rig.service(TERM_PROOF, timeout_kill="700\n", finish=FINISH_NOTES)
    rig.start()
    assert wait_for(lambda: (rig.dir / "up").exists(), 5)
    before = time.time()
    rig.svc("-d")
    assert wait_for(lambda: lines(rig.dir / "finish.out"), 5)
    when, args = lines(rig.dir / "finish.out")[0].split(" ", 1)
    assert args == "3 256 9 svc", rig.impl
    assert 0.6 <= float(when) - before < 1.6, (rig.impl, float(when) - before)


@pytest.mark.parametrize("contents", ["0\n", "junk\n", ""])
def test_no_timeout_kill_without_a_positive_number(rig, contents):
    rig.service(TERM_PROOF, timeout_kill=contents, finish=FINISH_NOTES)
    rig.start()
    assert wait_for(lambda: (rig.dir / "up").exists(), 5)
    rig.svc("-d")
    time.sleep(1.5)
    assert lines(rig.dir / "finish.out") == [], rig.impl  # still running: no KILL came
    assert (b"invalid" in rig.stderr()) == (contents != "0\n")


def test_readiness_is_the_newline_on_notification_fd(rig):
    run = "#!/bin/sh\nprintf abc >&3\nsleep 0.8\ndate +%s.%N > said\nprintf 'def\\nmore' >&3\nexec sleep 300\n"
    rig.service(run, notification_fd="3\n")
    rig.start()
    time.sleep(0.3)
    assert not rig.ready(), rig.impl  # "abc" is no newline
    assert wait_for(rig.ready, 5), rig.impl
    seen = time.time()
    said = float(lines(rig.dir / "said")[0])
    assert 0 <= seen - said < 0.5, (rig.impl, seen - said)


def test_never_ready_without_notification_fd(rig):
    """s6-supervise 2.11 calls no service ready that cannot say so (s6-svwait -U waits for ever)."""
    rig.service("#!/bin/sh\nexec sleep 300\n")
    rig.start()
    time.sleep(1.0)
    assert not rig.ready(), rig.impl


@pytest.mark.parametrize("run", [
    "#!/bin/sh\nprintf 'no newline' >&3\nexec 3>&-\nexec sleep 300\n",  # end of file before a newline
    "#!/bin/sh\nexec sleep 300\n",  # never a word
])
def test_never_ready_without_the_newline(rig, run):
    rig.service(run, notification_fd="3")
    rig.start()
    time.sleep(1.0)
    assert not rig.ready(), rig.impl


def test_a_second_readiness_line_gets_epipe(rig):
    run = ("#!/bin/sh\ntrap '' PIPE\necho >&3\nsleep 0.5\n"
           "if echo again >&3 2>/dev/null; then echo written; else echo refused; fi > second.out\nexec sleep 300\n")
    rig.service(run, notification_fd="3")
    rig.start()
    assert wait_for(lambda: lines(rig.dir / "second.out"), 5)
    assert lines(rig.dir / "second.out") == ["refused"], rig.impl


def test_notification_fd_is_a_pipe_on_that_descriptor(rig):
    run = "#!/bin/sh\nstat -L -c %F /proc/$$/fd/7 > fd.out\nls /proc/$$/fd | sort -n > fds.out\nexec sleep 300\n"
    rig.service(run, notification_fd="07\n")
    rig.start()
    assert wait_for(lambda: lines(rig.dir / "fds.out"), 5)
    assert lines(rig.dir / "fd.out") == ["fifo"], rig.impl
    assert "7" in lines(rig.dir / "fds.out")


@pytest.mark.parametrize("contents", ["abc\n", " 4 \n", "5junk", ""])
def test_invalid_notification_fd_is_ignored_with_a_warning(rig, contents):
    run = ('#!/bin/sh\nfor f in /proc/$$/fd/*; do [ -p "$f" ] && echo "${f##*/}"; done > pipes.out\n'
           "echo done > fds.out\nexec sleep 300\n")
    rig.service(run, notification_fd=contents)
    rig.start()
    assert wait_for(lambda: lines(rig.dir / "fds.out"), 5)
    assert lines(rig.dir / "pipes.out") == [], rig.impl  # no notification pipe
    assert not rig.ready(), rig.impl  # as without the file
    assert b"invalid" in rig.stderr() and b"notification-fd" in rig.stderr()


def test_finish_is_killed_after_timeout_finish(rig):
    finish = "#!/bin/sh\necho $$ >> finish.pid\ntrap '' TERM\nexec sleep 30\n"
    rig.service(COUNTING_RUN + "sleep 0.2\n", finish=finish, timeout_finish="500\n")
    rig.start()
    assert wait_for(lambda: lines(rig.dir / "finish.pid"), 5)
    started = time.monotonic()
    pid = int(lines(rig.dir / "finish.pid")[0])
    assert wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, 5)
    assert 0.3 <= time.monotonic() - started < 1.5, rig.impl
    assert wait_for(lambda: len(lines(rig.dir / "starts")) >= 2, 5), rig.impl  # and the service starts again


def test_timeout_finish_garbage_is_the_default(rig):
    """5 seconds: the finish of 2 seconds is not killed (0 would be no limit, garbage is not 0)."""
    finish = "#!/bin/sh\nsleep 2\necho done >> finish.out\n"
    rig.service(COUNTING_RUN, finish=finish, timeout_finish="junk")
    rig.start()
    assert wait_for(lambda: lines(rig.dir / "finish.out"), 5), rig.impl
    assert b"invalid" in rig.stderr() and b"timeout-finish" in rig.stderr()


def test_finish_that_exits_125_keeps_the_service_down(rig):
    rig.service(COUNTING_RUN, finish="#!/bin/sh\necho $1 >> finish.out\nexit 125\n")
    rig.start()
    assert wait_for(lambda: lines(rig.dir / "finish.out"), 5)
    time.sleep(2.0)
    assert len(lines(rig.dir / "starts")) == 1, rig.impl


def test_a_finish_that_cannot_run_does_not_stop_restarts(rig):
    rig.service(COUNTING_RUN, finish=("#!/bin/sh\nexit 0\n", 0o644))
    rig.start()
    assert wait_for(lambda: len(lines(rig.dir / "starts")) >= 2, 5), rig.impl
    if rig.impl != "s6":  # s6-supervise says nothing; prefork one line per failed start (documented)
        assert b"unable to start svc/finish: access denied" in rig.stderr()


def test_svc_d_during_finish_leaves_it_alone_and_keeps_the_service_down(rig):
    finish = ("#!/bin/sh\ntrap 'echo TERM >> finish.out' TERM\necho start >> finish.out\n"
              "sleep 1 & wait; sleep 0.5\necho end >> finish.out\n")
    rig.service(COUNTING_RUN + "sleep 0.2\n", finish=finish)
    rig.start()
    assert wait_for(lambda: lines(rig.dir / "finish.out"), 5)
    rig.svc("-d")
    assert wait_for(lambda: "end" in lines(rig.dir / "finish.out"), 5)
    time.sleep(1.5)
    assert lines(rig.dir / "finish.out") == ["start", "end"], rig.impl
    assert len(lines(rig.dir / "starts")) == 1, rig.impl


def test_svc_x_during_finish_waits_for_it(lone):
    rig = lone
    finish = "#!/bin/sh\nsleep 1\necho end >> finish.out\n"
    rig.service(COUNTING_RUN + "exec sleep 300\n", finish=finish)
    rig.start()
    assert wait_for(lambda: lines(rig.dir / "starts"), 5)
    rig.svc("-dx")  # the service gets TERM; the supervisor stays until ./finish has ended
    time.sleep(0.5)
    assert rig.proc is not None and rig.proc.poll() is None, rig.impl
    assert wait_for(lambda: rig.proc.poll() is not None, 5), rig.impl
    assert lines(rig.dir / "finish.out") == ["end"]


# -- prefork only: what s6-supervise cannot be compared on ---------------------------------------------------------
@pytest.fixture(params=["supervise", "svscan"])
def mine(request, tmp_path):
    r = Rig(request.param, tmp_path)
    try:
        yield r
    finally:
        r.close()


def read_or_empty(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def test_a_supervisor_killed_during_finish_is_followed_by_a_sane_one(mine):
    """The next supervisor takes the orphaned ./finish over (supervise/restart) and starts ./run only once it has
    ended, as s6 orders them (docs/CONTRACTS.md, Taking over after a SIGKILL)."""
    finish = "#!/bin/sh\necho $$ >> finish.pid\nsleep 1.5\necho end >> finish.out\n"
    mine.service(COUNTING_RUN + "sleep 0.2\n", finish=finish)
    mine.start()

    def kept() -> bool:  # the supervisor keeps the finish right after its spawn: not killed before that
        pids = lines(mine.dir / "finish.pid")
        saved = restartfile.decode(read_or_empty(mine.dir / "supervise" / restartfile.NAME))
        return bool(pids) and saved is not None and str(saved.finish_pid) == pids[0]

    assert wait_for(kept, 5)
    first = mine.proc
    assert first is not None
    first.kill()
    first.wait(5)
    mine.start()
    assert wait_for(lambda: len(lines(mine.dir / "starts")) == 2, 5)
    assert lines(mine.dir / "finish.out") == ["end"]  # written before the finish ended: before the second start
    status = reader.read(reader.find(str(mine.dir if mine.impl == "supervise" else mine.tree)))
    assert status.owner_pid == mine.proc.pid


def test_a_log_service_finish_is_named_like_under_s6_svscan(tmp_path):
    mine = Rig("svscan", tmp_path)
    try:
        _log_service_finish(mine)
    finally:
        mine.close()


def _log_service_finish(mine: Rig) -> None:
    mine.service("#!/bin/sh\nexec sleep 300\n")
    (mine.dir / "log").mkdir()
    (mine.dir / "log" / "run").write_text("#!/bin/sh\necho $$ >> starts\nexec cat > /dev/null\n")
    (mine.dir / "log" / "run").chmod(0o755)
    (mine.dir / "log" / "finish").write_text(FINISH_NOTES)
    (mine.dir / "log" / "finish").chmod(0o755)
    mine.start()
    assert wait_for(lambda: lines(mine.dir / "log" / "starts"), 5)
    result = subprocess.run([ours("svc"), "-k", "svc/log"], cwd=mine.tree, env=ENV, capture_output=True)
    assert result.returncode == 0
    assert wait_for(lambda: lines(mine.dir / "log" / "finish.out"), 5)
    assert lines(mine.dir / "log" / "finish.out")[0].split(" ", 1)[1] == "3 256 9 svc/log"


def supervisor_fds(rig: Rig) -> int:
    assert rig.proc is not None
    return len(os.listdir(f"/proc/{rig.proc.pid}/fd"))


def test_the_notification_pipe_is_closed_at_readiness_and_at_exit(mine):
    run = COUNTING_RUN + '[ $(($(wc -l < starts) % 2)) -eq 0 ] && echo >&3\nsleep 0.3\n'
    mine.service(run, notification_fd="3")
    mine.start()
    assert wait_for(lambda: len(lines(mine.dir / "starts")) == 2, 5)
    time.sleep(0.5)  # both down now, waiting out the throttle
    before = supervisor_fds(mine)
    assert wait_for(lambda: len(lines(mine.dir / "starts")) == 4, 5)
    time.sleep(0.5)
    assert supervisor_fds(mine) == before


@pytest.mark.parametrize("fd", ["0", "1", "2"])
def test_notification_fd_on_stdio_is_refused(mine, fd):
    run = "#!/bin/sh\nstat -L -c %F /proc/$$/fd/1 > fd1.out\nexec sleep 300\n"
    mine.service(run, notification_fd=fd)
    mine.start()
    assert wait_for(lambda: lines(mine.dir / "fd1.out"), 5)
    assert lines(mine.dir / "fd1.out") != ["fifo"] or mine.impl == "svscan"  # svscan's stdout may be anything
    assert f"svc/notification-fd {fd} would replace".encode() in mine.stderr()


@pytest.mark.parametrize("fd", ["4294967295", "2147483648", "1048576"])
def test_a_notification_fd_beyond_the_limit_is_refused(mine, fd):
    mine.service(COUNTING_RUN + "exec sleep 300\n", notification_fd=fd)
    mine.start()
    assert wait_for(lambda: lines(mine.dir / "starts"), 5), mine.stderr()
    assert f"svc/notification-fd {fd} is beyond the descriptor limit".encode() in mine.stderr()
    assert mine.proc is not None and mine.proc.poll() is None


def test_a_setting_that_is_a_fifo_without_writer_does_not_stall(mine):
    """Read non-blocking: a FIFO (or a device) planted as a setting file is garbage, not a hang."""
    mine.service("#!/bin/sh\necho $$ >> starts\nexec sleep 300\n")
    os.mkfifo(mine.dir / "timeout-kill")
    mine.start()
    assert wait_for(lambda: lines(mine.dir / "starts"), 5)
    mine.svc("-d")
    assert wait_for(lambda: b"invalid svc/timeout-kill" in mine.stderr(), 5)


def test_svscan_stop_services_waits_for_finish_and_kills_one_that_hangs(tmp_path):
    """--stop-services: x waits for ./finish; after --grace a finish with no timeout-finish gets KILL too."""
    rig = Rig("svscan", tmp_path)
    try:
        finish = "#!/bin/sh\necho $$ >> finish.pid\ntrap '' TERM\nexec sleep 30\n"
        rig.service(COUNTING_RUN + "exec sleep 300\n", finish=finish, timeout_finish="0")
        with open(rig.err, "ab") as err:
            rig.proc = subprocess.Popen([ours("svscan"), "--stop-services", "--grace", "1", "."], cwd=rig.tree,
                                        env=ENV, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        rig.procs.append(rig.proc)
        assert wait_for(rig.running, 10)
        assert wait_for(lambda: lines(rig.dir / "starts"), 5)
        began = time.monotonic()
        rig.proc.send_signal(signal.SIGTERM)
        assert wait_for(lambda: lines(rig.dir / "finish.pid"), 5)
        pid = int(lines(rig.dir / "finish.pid")[0])
        rig.proc.wait(10)
        assert 0.9 <= time.monotonic() - began < 5, rig.stderr()
        assert wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, 5)
    finally:
        rig.close()
