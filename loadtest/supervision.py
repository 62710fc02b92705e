"""Supervision benchmark: prefork's svscan (one process for every service) against daemontools' svscan + supervise.

Three measurements, both implementations in the same run, each service tree in its own tempdir:

- memory: PSS (/proc/PID/smaps_rollup) of the supervisor processes only (svscan, plus daemontools'
  supervise processes; never the services) with N `exec sleep 100000` services, one implementation
  at a time so neither shares pages with the other's; the marginal cost per added service is the
  difference between the largest and the smallest N divided by the difference in N;
- control latency, timed in the services and on CLOCK_MONOTONIC (one clock for every process): a
  tiny Perl `run` prints when it starts, when TERM arrives and just before it exits on its own.
  `d`→TERM is the time from our write(2) of `d` into the already-open control FIFO to the TERM
  handler; exit→restart is from the old instance's last statement to the new instance's first.
  Operations are sequential, round-robin over the services, and only touch a service that has been
  up for more than 1.25 s, so daemontools' one-second sleep after each start (and prefork's restart
  throttle) is never measured. Operations are paired: each one on a daemontools service is run
  back to back with one on a prefork service, the two in a random order (seeded), so both see the
  same moment of the machine; a bootstrap interval says how far the p50 and p99 ratios can be
  trusted;
- idle cost: utime+stime (and the scheduler's exact run time and context switches) of the
  supervisor processes with N idle services over a window, both trees idling side by side.

Nothing here asserts a speed; tests/test_loadtest_supervision.py only checks that a tiny run
measures both implementations and that the report has its sections.
"""

from __future__ import annotations

import argparse
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import psutil

from loadtest.loadgen import percentile
from loadtest.machine import machine_facts
from loadtest.reporting import Bench, finish_chart, log, machine_section, pyplot, reproduce_section
from loadtest.reporting import reproduce_command as spelled_out

DEBIAN = "/usr/bin/svscan"
PREFORK = str(Path(sys.executable).parent / "svscan")
IMPLS = ("debian", "prefork")
BASELINE = "debian"
DEBIAN_LIMIT = 1000  # daemontools 0.76 svscan's table size (its svscan.c: SERVICES)
DEBIAN_PATH = b"/usr/bin:/bin"  # so Debian's svscan execs Debian's supervise, not the venv's
MIN_UPTIME = 1.25  # seconds a service must have been up before an operation touches it (throttle: 1 s)
OP_TIMEOUT = 5.0
MAX_STALLS = 10  # operations in a row that time out before the run is abandoned
SLEEP_RUN = "#!/bin/sh\nexec sleep 100000\n"
EXECUTABLE = ("run", "finish")  # the files of a service directory made mode 0755
# --features all: every opt-in file an operator may give a service, and a log/ subservice (the files:
# docs/CONTRACTS.md, s6 service directories; docs/CONTRACTS.md, Restart policy). The run writes its
# readiness newline when it has the pipe (daemontools' supervise ignores notification-fd: then the
# redirection fails, quietly).
FEATURES_RUN = "#!/bin/sh\necho 2>/dev/null >&3\nexec sleep 100000\n"
FEATURE_FILES = {"finish": "#!/bin/sh\nexit 0\n", "notification-fd": "3\n", "timeout-kill": "2000\n",
                 "timeout-finish": "5000\n", "down-signal": "TERM\n", "backoff-max": "60000\n",
                 "backoff-reset": "10000\n", "failure-deaths": "5\n", "failure-window": "60000\n",
                 "log/run": SLEEP_RUN}
# The latency service. Times are CLOCK_MONOTONIC, printed in one write(2) each on the stdout it
# inherits from supervise/svscan (a pipe the benchmark reads): S = first statement after start-up,
# T = TERM handler, E = last statement before exiting on SIGUSR1 (a service exiting on its own).
PERL_RUN = r"""#!{perl}
use strict;
use Time::HiRes ();
my $t = Time::HiRes::clock_gettime(Time::HiRes::CLOCK_MONOTONIC());
my $name = readlink("/proc/self/cwd") // "?";
$name =~ s{{.*/}}{{}};
sub note {{ syswrite(STDOUT, sprintf("%s %s %d %.9f\n", $_[0], $name, $$, $_[1])) }}
$SIG{{TERM}} = sub {{ note("T", Time::HiRes::clock_gettime(Time::HiRes::CLOCK_MONOTONIC())); exit 0 }};
$SIG{{USR1}} = sub {{ note("E", Time::HiRes::clock_gettime(Time::HiRes::CLOCK_MONOTONIC())); exit 0 }};
note("S", $t);
sleep 1000 while 1;
"""
TARGET_MEMORY_SMALL = (100, 1.0)  # at 100 services prefork's PSS <= 1.0 x daemontools'
TARGET_MEMORY_LARGE = (1000, 0.25)  # at 1000 services < 0.25 x
TARGET_MARGINAL = 20 * 1024  # bytes of PSS per added service


class BenchError(RuntimeError):
    """A supervisor did not come up, died, or stopped answering; the message says which and why."""


def clock() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


# -- /proc readers ---------------------------------------------------------------------------
def read_smaps_rollup(pid: int) -> dict[str, int]:
    """Rss, Pss and Uss (Private_Clean + Private_Dirty) of PID in bytes, from /proc/PID/smaps_rollup."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
        for line in f:
            key, _, rest = line.partition(b":")
            parts = rest.split()
            if len(parts) == 2 and parts[1] == b"kB":
                fields[key.decode()] = int(parts[0]) * 1024
    return {"rss": fields.get("Rss", 0), "pss": fields.get("Pss", 0),
            "uss": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)}


def read_cpu(pid: int) -> dict[str, float]:
    """utime+stime (seconds, clock-tick resolution), the scheduler's run time (ns precision) and context switches."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2:].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of proc(5)
    out = {"cpu_s": ticks / os.sysconf("SC_CLK_TCK"), "run_s": 0.0, "switches": 0.0}
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as f:
            out["run_s"] = int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        pass
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith((b"voluntary_ctxt_switches:", b"nonvoluntary_ctxt_switches:")):
                out["switches"] += int(line.split()[1])
    return out


def _children_map() -> dict[int, list[int]]:
    """ppid -> pids of every process, read once (psutil's children() rescans /proc at every call)."""
    kids: dict[int, list[int]] = {}
    for p in psutil.process_iter(["ppid"]):
        ppid = p.info.get("ppid")
        if ppid is not None:
            kids.setdefault(ppid, []).append(p.pid)
    return kids


def _status_pid(service_dir: Path) -> int:
    from prefork.control import statusfile

    try:
        return statusfile.read(str(service_dir / "supervise")).pid
    except (OSError, ValueError):
        return 0


# -- a service tree under one svscan ------------------------------------------------------------
class Tree:
    """A tempdir of N service directories and the svscan supervising it; stop() ends every process by pid."""

    def __init__(self, impl: str, svscan: str, count: int, run_text: str, workdir: str | None, *,
                 files: dict[str, str] | None = None, options: tuple[str, ...] = ()) -> None:
        """FILES: more files of every service directory (name -> text; `finish` and `log/run` are made
        executable, a `log/...` name makes the log/ subservice); OPTIONS: svscan's options before the directory."""
        self.impl = impl
        self.svscan = svscan
        self.options = options
        self.root = Path(tempfile.mkdtemp(prefix=f"prefork-sv-{impl}-", dir=workdir))
        self.scan = self.root / "service"
        self.names = [f"s{i:04d}" for i in range(1, count + 1)]
        self.logged = any(name.startswith("log/") for name in files or {})
        self.proc: subprocess.Popen | None = None
        self.table: str | None = None
        self.env: dict[bytes, bytes] = {}
        try:
            self.scan.mkdir()
            for name in self.names:
                d = self.scan / name
                d.mkdir()
                for file, text in {"run": run_text, **(files or {})}.items():
                    path = d / file
                    path.parent.mkdir(exist_ok=True)
                    path.write_text(text)
                    if path.name in EXECUTABLE:
                        path.chmod(0o755)
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def stdout_fd(self) -> int:
        assert self.proc is not None and self.proc.stdout is not None
        return self.proc.stdout.fileno()

    def start(self) -> None:
        """Run svscan on the tree: our start-up environment with PATH=/usr/bin:/bin, stdout a pipe to us, own session."""
        from prefork.environ import original_environ

        self.env = {**original_environ(), b"PATH": DEBIAN_PATH}
        with open(self.root / "svscan.err", "wb") as err:
            try:
                self.proc = subprocess.Popen([self.svscan, *self.options, str(self.scan)], cwd=self.root, env=self.env,
                                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                                             start_new_session=True)
            except OSError as e:
                raise BenchError(f"{self.impl}: cannot run {self.svscan}: {e.strerror}") from e
        try:
            from prefork.control.servicetable import KIND_SVSCAN, default_path

            self.table = default_path(str(self.scan), KIND_SVSCAN)  # prefork's svscan maps it; removed by stop()
        except (ImportError, OSError):
            self.table = None

    def stderr_text(self) -> str:
        try:
            return (self.root / "svscan.err").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise BenchError(f"{self.impl}: svscan exited (status {code}): {self.stderr_text().strip()}")

    @property
    def service_dirs(self) -> list[str]:
        """Every supervised directory, relative to the scan directory: each service, and its log/ if it has one."""
        return [d for n in self.names for d in ((n, f"{n}/log") if self.logged else (n,))]

    def wait_up(self, timeout: float) -> float:
        """Seconds until every service's status names a running pid; BenchError if that takes over TIMEOUT."""
        t0 = time.monotonic()
        pending = self.service_dirs
        for _ in range(int(timeout / 0.05) + 2):
            self.check_alive()
            pending = [n for n in pending if not _status_pid(self.scan / n)]
            if not pending:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                break
            time.sleep(0.05)
        raise BenchError(f"{self.impl}: {len(pending)} of {len(self.service_dirs)} services not up after {timeout:.0f} s "
                         f"(first: {pending[0]}); svscan said: {self.stderr_text().strip() or 'nothing'}")

    def service_pids(self) -> set[int]:
        return {pid for pid in (_status_pid(self.scan / n) for n in self.service_dirs) if pid}

    def split(self) -> tuple[list[int], list[int]]:
        """(supervisor pids, service pids): svscan's tree, the services (and anything below them) set apart."""
        if self.proc is None:
            return [], []
        services = self.service_pids()
        kids = _children_map()
        supervisors: list[int] = []
        below: list[int] = []
        todo = [self.pid]
        seen: set[int] = set()
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            if pid in services:
                below.append(pid)
                stack = list(kids.get(pid, []))
                while stack:
                    q = stack.pop()
                    if q not in seen:
                        seen.add(q)
                        below.append(q)
                        stack.extend(kids.get(q, []))
                continue
            supervisors.append(pid)
            todo.extend(kids.get(pid, []))
        for pid in services - seen:  # orphaned (its supervise died): ours only if it still runs in our tree
            if self._inside(pid):
                below.append(pid)
        return supervisors, below

    def _inside(self, pid: int) -> bool:
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            return False
        root = str(self.root)
        return cwd == root or cwd.startswith(root + os.sep)

    def strays(self, known: set[int]) -> list[int]:
        """Processes working inside the tree that svscan's family tree no longer shows (svscan died before them)."""
        return [p.pid for p in psutil.process_iter() if p.pid not in known and p.pid != os.getpid()
                and self._inside(p.pid)]

    def memory(self) -> dict:
        """Summed RSS/PSS/USS of the supervisor processes, svscan's own share apart."""
        supervisors, services = self.split()
        total = {"rss": 0, "pss": 0, "uss": 0}
        root: dict[str, int] = {}
        counted = 0
        for pid in supervisors:
            try:
                m = read_smaps_rollup(pid)
            except OSError:
                continue
            counted += 1
            for k in total:
                total[k] += m[k]
            if pid == self.pid:
                root = m
        return {**total, "processes": counted, "root_pss": root.get("pss", 0),
                "others_pss": total["pss"] - root.get("pss", 0), "service_processes": len(services)}

    def stop(self, timeout: float = 5.0) -> None:
        """End svscan, then each supervise (so nothing restarts), then each service; KILL what stays; rm the tree."""
        try:
            supervisors, services = self.split()
            lost = self.strays({*supervisors, *services})
            named = self.service_pids() if lost else set()
            services += [pid for pid in lost if pid in named]
            supervisors += [pid for pid in lost if pid not in services]
        except (OSError, psutil.Error):
            supervisors, services = [], []
        handles: list[list[psutil.Process]] = [[], []]
        for group, pids in zip(handles, (supervisors, services), strict=True):
            for pid in pids:
                if pid == (self.proc.pid if self.proc else -1):
                    continue
                try:
                    group.append(psutil.Process(pid))  # remembers the start time: no pid-reuse accidents later
                except psutil.Error:
                    pass
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        for group in handles:
            for p in group:
                try:
                    p.terminate()
                except psutil.Error:
                    pass
            alive = _wait_gone(group, timeout)
            for p in alive:
                try:
                    p.kill()
                except psutil.Error:
                    pass
            _wait_gone(alive, timeout)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        if self.table and os.path.exists(self.table):
            try:
                os.unlink(self.table)
            except OSError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Those of PROCS still alive after TIMEOUT; a zombie counts as gone (its reaper is init, on its own schedule)."""
    alive = list(procs)
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.01) + 2):
        still = []
        for p in alive:
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    still.append(p)
            except psutil.Error:
                pass
        alive = still
        if not alive or time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    return alive


def start_tree(impl: str, svscan: str, count: int, run_text: str, workdir: str | None, *,
               files: dict[str, str] | None = None, options: tuple[str, ...] = ()) -> Tree:
    tree = Tree(impl, svscan, count, run_text, workdir, files=files, options=options)
    try:
        tree.start()
    except BaseException:
        tree.stop()
        raise
    return tree


def stop_all(trees: list[Tree]) -> None:
    for tree in trees:
        try:
            tree.stop()
        except Exception as e:  # keep going: the other trees must be ended too
            log(f"warning: stopping {tree.impl}'s tree {tree.root}: {e}")


# -- memory ----------------------------------------------------------------------------------
def measure_memory(paths: dict[str, str], counts: list[int], settle: float, workdir: str | None, *,
                   features: bool = False, options: dict[str, tuple[str, ...]] | None = None) -> list[dict]:
    """One tree at a time (N sleep services), PSS of its supervisors once all are up and SETTLE seconds passed.

    FEATURES: every service directory has FEATURE_FILES (a log/ subservice among them, whose
    `sleep` counts as a service too); OPTIONS: svscan's options per implementation (--s6)."""
    rows = []
    what = " with all features" if features else ""
    for i, n in enumerate(counts):
        row: dict = {"services": n}
        order = list(paths) if i % 2 == 0 else list(paths)[::-1]
        for impl in order:
            log(f"memory: {impl} with {n} services{what} ...")
            tree = start_tree(impl, paths[impl], n, FEATURES_RUN if features else SLEEP_RUN, workdir,
                              files=FEATURE_FILES if features else None, options=(options or {}).get(impl, ()))
            expected = len(tree.service_dirs)
            try:
                up = tree.wait_up(30.0 + 0.05 * expected)
                time.sleep(settle)
                tree.check_alive()
                mem = tree.memory()
                if mem["service_processes"] != expected:
                    raise BenchError(f"{impl}: {mem['service_processes']} of {expected} services running at "
                                     "measurement")
            finally:
                stop_all([tree])
            mem["seconds_to_up"] = up
            row[impl] = mem
            log(f"memory: {impl} {n} services{what}: PSS {mem['pss'] / 2**20:.2f} MiB over {mem['processes']} "
                f"process(es) (svscan {mem['root_pss'] / 2**20:.2f} MiB); all up in {up:.2f} s")
        rows.append(row)
    return rows


def marginal(rows: list[dict], impl: str) -> dict | None:
    """PSS added per service between the smallest and the largest tree."""
    if len(rows) < 2:
        return None
    lo, hi = rows[0], rows[-1]
    dn = hi["services"] - lo["services"]
    if dn <= 0:
        return None
    return {"from": lo["services"], "to": hi["services"],
            "bytes_per_service": (hi[impl]["pss"] - lo[impl]["pss"]) / dn}


# -- latency ---------------------------------------------------------------------------------
@dataclass
class Event:
    kind: str  # S start, T got TERM, E exiting on its own (loadtest/readiness.py: N about to notify)
    name: str
    pid: int
    t: float  # CLOCK_MONOTONIC seconds


class Events:
    """The services' lines on svscan's stdout (a pipe), parsed as they come; the latest start per service."""

    def __init__(self, fd: int, kinds: tuple[bytes, ...] = (b"S", b"T", b"E")) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self.kinds = kinds
        self.buf = b""
        self.queue: deque[Event] = deque()
        self.started: dict[str, tuple[int, float]] = {}

    def pump(self, timeout: float) -> None:
        """Read what arrives within TIMEOUT (at most one read)."""
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if not ready:
            return
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        if not data:
            raise BenchError("svscan's stdout was closed: the supervisor died")
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        for line in lines:
            parts = line.split()
            if len(parts) != 4 or parts[0] not in self.kinds:
                continue
            ev = Event(parts[0].decode(), parts[1].decode(errors="replace"), int(parts[2]), float(parts[3]))
            if ev.kind == "S":
                self.started[ev.name] = (ev.pid, ev.t)
            self.queue.append(ev)

    def wait(self, kind: str, name: str | None, timeout: float, pid: int = 0, not_pid: int = 0) -> Event | None:
        """The first event of KIND (for NAME, PID, not NOT_PID when given); earlier other events are dropped."""
        deadline = clock() + timeout
        for _ in range(100_000):
            while self.queue:
                ev = self.queue.popleft()
                if (ev.kind == kind and (name is None or ev.name == name) and (not pid or ev.pid == pid)
                        and ev.pid != not_pid):
                    return ev
            left = deadline - clock()
            if left <= 0:
                return None
            self.pump(left)
        return None

    def wait_started(self, names: list[str], timeout: float, check: object = None) -> None:
        deadline = clock() + timeout
        for _ in range(100_000):
            if all(n in self.started for n in names):
                self.queue.clear()
                return
            left = deadline - clock()
            if left <= 0:
                break
            if check is not None:
                check()  # type: ignore[operator]
            self.pump(min(left, 0.5))
        missing = [n for n in names if n not in self.started]
        raise BenchError(f"{len(missing)} of {len(names)} latency services never reported their start "
                         f"(first: {missing[0]})")


class LatencyRig:
    """Sequential operations on one tree's services, round-robin, each service left up > MIN_UPTIME first."""

    def __init__(self, tree: Tree) -> None:
        self.tree = tree
        self.events = Events(tree.stdout_fd)
        self.control: dict[str, int] = {}
        self.turn = 0
        self.samples: dict[str, list[float]] = {"term": [], "restart": []}
        self.timeouts = {"term": 0, "restart": 0}
        self.stalls = 0

    def ready(self, timeout: float) -> None:
        self.events.wait_started(self.tree.names, timeout, self.tree.check_alive)
        for name in self.tree.names:
            self.control[name] = os.open(self.tree.scan / name / "supervise" / "control",
                                         os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)

    def close(self) -> None:
        for fd in self.control.values():
            os.close(fd)
        self.control.clear()

    def next_target(self) -> tuple[str, int, float]:
        """The next service round-robin: (name, pid, the monotonic time from which it may be touched)."""
        names = self.tree.names
        name = names[self.turn % len(names)]
        self.turn += 1
        pid, started = self.events.started[name]
        return name, pid, started + MIN_UPTIME

    def _missed(self, what: str, name: str) -> None:
        self.timeouts[what] += 1
        self.stalls += 1
        log(f"latency: {self.tree.impl}: {what} on {name}: no answer within {OP_TIMEOUT:g} s")
        self.tree.check_alive()
        if self.stalls >= MAX_STALLS:
            raise BenchError(f"{self.tree.impl}: {self.stalls} operations in a row got no answer")

    def _back_up(self, name: str, old_pid: int) -> None:
        if self.events.wait("S", name, OP_TIMEOUT, not_pid=old_pid) is None:
            self.tree.check_alive()
            raise BenchError(f"{self.tree.impl}: {name} did not start again within {OP_TIMEOUT:g} s")

    def term_op(self, name: str, pid: int) -> None:
        """write(`d`) → the service's TERM handler; then `u` (not timed) and wait for the new instance."""
        fd = self.control[name]
        t0 = clock()
        os.write(fd, b"d")
        ev = self.events.wait("T", name, OP_TIMEOUT, pid=pid)
        os.write(fd, b"u")
        if ev is None:
            self._missed("term", name)
        else:
            self.samples["term"].append(ev.t - t0)
            self.stalls = 0
        self._back_up(name, pid)

    def restart_op(self, name: str, pid: int) -> None:
        """SIGUSR1 makes the service exit on its own: its last statement → the new instance's first."""
        os.kill(pid, signal.SIGUSR1)
        exited = self.events.wait("E", name, OP_TIMEOUT, pid=pid)
        started = self.events.wait("S", name, OP_TIMEOUT, not_pid=pid)
        if exited is None or started is None:
            self._missed("restart", name)
            if started is None:
                self._back_up(name, pid)
            return
        self.samples["restart"].append(started.t - exited.t)
        self.stalls = 0


def startup_floor(script: Path, count: int, env: dict[bytes, bytes]) -> list[float]:
    """posix_spawn of the same `run` by us → its first statement: exec + Perl start-up, no supervisor involved."""
    r, w = os.pipe()
    events = Events(r)
    out = []
    try:
        for _ in range(count):
            t0 = clock()
            pid = os.posix_spawn(str(script), [str(script)], env, file_actions=[(os.POSIX_SPAWN_DUP2, w, 1)])
            try:
                ev = events.wait("S", None, OP_TIMEOUT, pid=pid)
            finally:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            if ev is not None:
                out.append(ev.t - t0)
    finally:
        os.close(r)
        os.close(w)
    return out


def split_evenly(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def latency_summary(samples: list[float], timeouts: int) -> dict:
    lat = sorted(samples)
    ms = [x * 1e3 for x in lat]
    return {"n": len(lat), "timeouts": timeouts,
            "p50_ms": percentile(ms, 50), "p90_ms": percentile(ms, 90), "p99_ms": percentile(ms, 99),
            "max_ms": ms[-1] if ms else 0.0, "min_ms": ms[0] if ms else 0.0,
            "mean_ms": sum(ms) / len(ms) if ms else 0.0, "samples_ms": [round(x, 4) for x in ms]}


def paired_op(rigs: dict[str, LatencyRig], what: str, rng: random.Random) -> None:
    """One operation of kind WHAT on each implementation, back to back, in a random order.

    Both services are picked first and the pair waits until both have been up
    MIN_UPTIME, so the two operations meet the same machine: a hiccup, a busy
    moment or the wake-up from a sleep falls on either implementation by chance,
    never on whichever always comes first.
    """
    order = list(rigs)
    rng.shuffle(order)
    targets = {impl: rigs[impl].next_target() for impl in order}
    wait = max(ready for _name, _pid, ready in targets.values()) - clock()
    if wait > 0:
        time.sleep(wait)
    for impl in order:
        name, pid, _ready = targets[impl]
        getattr(rigs[impl], f"{what}_op")(name, pid)


def ratio_interval(prefork: list[float], debian: list[float], q: float, *, iterations: int = 2000,
                   seed: int = 1) -> tuple[float, float]:
    """95% bootstrap interval of percentile(prefork, Q) / percentile(debian, Q).

    Each implementation's samples are drawn again with replacement ITERATIONS
    times; the interval is the 2.5th..97.5th percentile of the ratios so found.
    It says whether a p99 ratio of, say, 1.05 is a difference or run-to-run noise.
    """
    if not prefork or not debian:
        return (0.0, 0.0)
    rng = random.Random(seed)
    ratios = []
    for _ in range(iterations):
        p = percentile(sorted(rng.choices(prefork, k=len(prefork))), q)
        d = percentile(sorted(rng.choices(debian, k=len(debian))), q)
        if d > 0:
            ratios.append(p / d)
    ratios.sort()
    if not ratios:
        return (0.0, 0.0)
    return (percentile(ratios, 2.5), percentile(ratios, 97.5))


def latency_ratios(lat: dict) -> dict:
    """prefork/daemontools at p50 and p99 for each operation, with bootstrap intervals."""
    out = {}
    for what in ("term", "restart"):
        d, p = lat["debian"][what], lat["prefork"][what]
        row = {}
        for q in (50, 99):
            key = f"p{q}_ms"
            row[f"p{q}"] = p[key] / d[key] if d[key] else 0.0
            row[f"p{q}_interval"] = list(ratio_interval(p["samples_ms"], d["samples_ms"], q))
        out[what] = row
    return out


def measure_latency(paths: dict[str, str], ops: int, services: int, rounds: int, perl: str,
                    workdir: str | None, seed: int = 1, options: dict[str, tuple[str, ...]] | None = None) -> dict:
    """Both trees up side by side; each round does its share of `d`→TERM pairs, then of exit→restart pairs."""
    run_text = PERL_RUN.format(perl=perl)
    k = max(1, min(services, ops))
    trees: list[Tree] = []
    rigs: dict[str, LatencyRig] = {}
    try:
        for impl, svscan in paths.items():
            trees.append(start_tree(impl, svscan, k, run_text, workdir, options=(options or {}).get(impl, ())))
        for tree in trees:
            rig = LatencyRig(tree)
            rig.ready(30.0 + 0.05 * k)
            rigs[tree.impl] = rig
        log(f"latency: {k} Perl services per implementation up; {ops} operations of each kind, {rounds} rounds")
        floor = startup_floor(trees[0].scan / trees[0].names[0] / "run", min(ops, 200), trees[0].env)
        rng = random.Random(seed)
        shares = split_evenly(ops, rounds)
        for rnd, share in enumerate(shares):
            for what, label in (("term", "d→TERM"), ("restart", "exit→restart")):
                t0 = time.monotonic()
                for _ in range(share):
                    paired_op(rigs, what, rng)
                log(f"latency: round {rnd + 1}/{rounds}: {share} {label} pairs in {time.monotonic() - t0:.1f} s")
    finally:
        for rig in rigs.values():
            rig.close()
        stop_all(trees)
    out: dict = {"services": k, "rounds": rounds, "ops": ops, "seed": seed, "paired": True,
                 "floor": latency_summary(floor, min(ops, 200) - len(floor))}
    for impl, rig in rigs.items():
        out[impl] = {what: latency_summary(rig.samples[what], rig.timeouts[what]) for what in ("term", "restart")}
    out["ratios"] = latency_ratios(out)
    return out


# -- idle ------------------------------------------------------------------------------------
def cpu_sample(pids: list[int]) -> dict[int, dict[str, float]]:
    out = {}
    for pid in pids:
        try:
            out[pid] = read_cpu(pid)
        except (OSError, ValueError, IndexError):
            continue
    return out


def measure_idle(paths: dict[str, str], services: int, seconds: float, settle: float, workdir: str | None,
                 options: dict[str, tuple[str, ...]] | None = None) -> dict:
    """Both trees of idle sleep services side by side; the supervisors' CPU over the same window."""
    trees: list[Tree] = []
    try:
        for impl, svscan in paths.items():
            trees.append(start_tree(impl, svscan, services, SLEEP_RUN, workdir,
                                    options=(options or {}).get(impl, ())))
        for tree in trees:
            tree.wait_up(30.0 + 0.05 * services)
        time.sleep(settle)  # start-up work done, daemontools' supervise out of its one-second sleep
        pids = {tree.impl: tree.split()[0] for tree in trees}
        before = {impl: cpu_sample(p) for impl, p in pids.items()}
        log(f"idle: {services} services per implementation, measuring {seconds:g} s ...")
        t0 = time.monotonic()
        time.sleep(seconds)
        elapsed = time.monotonic() - t0
        after = {impl: cpu_sample(p) for impl, p in pids.items()}
        for tree in trees:
            tree.check_alive()
    finally:
        stop_all(trees)
    out: dict = {"services": services, "seconds": elapsed}
    for impl in paths:
        b, a = before[impl], after[impl]
        common = [pid for pid in b if pid in a]
        delta = {k: sum(a[p][k] - b[p][k] for p in common) for k in ("cpu_s", "run_s", "switches")}
        per_min = 60.0 / elapsed
        out[impl] = {**delta, "processes": len(common), "vanished": len(b) - len(common),
                     "cpu_ms_per_min": delta["cpu_s"] * 1e3 * per_min, "run_ms_per_min": delta["run_s"] * 1e3 * per_min,
                     "switches_per_min": delta["switches"] * per_min}
        log(f"idle: {impl}: {delta['cpu_s']:.2f} s utime+stime, {delta['run_s'] * 1e3:.1f} ms on CPU, "
            f"{delta['switches']:.0f} context switches over {len(common)} process(es)")
    return out


# -- the run ---------------------------------------------------------------------------------
def parse_counts(text: str) -> list[int]:
    try:
        counts = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"want a comma-separated list of service counts, got {text!r}") from None
    if not counts or counts[0] < 1 or counts[-1] > DEBIAN_LIMIT:
        raise argparse.ArgumentTypeError(f"service counts must be 1..{DEBIAN_LIMIT} (daemontools' svscan limit)")
    return counts


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m loadtest.supervision", description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=parse_counts, default=[100, 1000], help="tree sizes for the memory "
                    "measurement, comma-separated (default 100,1000)")
    ap.add_argument("--ops", type=int, default=1000, help="operations of each kind (d→TERM, exit→restart) "
                    "per implementation (default 1000)")
    ap.add_argument("--latency-services", type=int, default=100, help="services the operations rotate over "
                    "(default 100; at most --ops)")
    ap.add_argument("--rounds", type=int, default=4, help="latency rounds: each does its share of d→TERM pairs, "
                    "then of exit→restart pairs (default 4)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the random order within each pair of operations "
                    "and of the bootstrap (default 1)")
    ap.add_argument("--idle-seconds", type=float, default=60.0, help="idle measurement window (default 60)")
    ap.add_argument("--idle-services", type=int, default=100, help="services in the idle trees (default 100)")
    ap.add_argument("--settle", type=float, default=6.0, help="seconds after every service is up before memory or "
                    "idle CPU is sampled (default 6: past one 5 s rescan)")
    ap.add_argument("--phases", default="memory,latency,idle", help="which measurements to run (default all)")
    ap.add_argument("--features", choices=("none", "all"), default="none", help="all: the memory phase also "
                    "measures trees whose every service has finish, notification-fd, the timeout, down-signal, "
                    "back-off and failure files and a log/ subservice (default none)")
    ap.add_argument("--s6", action="store_true", help="run prefork's svscan with --s6 (s6's status files and an "
                    "event/ directory per service) in every phase")
    ap.add_argument("--debian", default=DEBIAN, help="daemontools' svscan (run with PATH=/usr/bin:/bin)")
    ap.add_argument("--prefork", default=PREFORK, help="prefork's svscan console script")
    ap.add_argument("--perl", default=shutil.which("perl") or "/usr/bin/perl", help="Perl for the latency services")
    ap.add_argument("--workdir", default=None, help="where the service trees are made (default: the temp dir)")
    BENCH.add_options(ap)
    args = ap.parse_args(argv)
    args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = set(args.phases) - {"memory", "latency", "idle"}
    if unknown or not args.phases:
        ap.error(f"--phases takes memory, latency, idle; got {args.phases}")
    if args.ops < 1 or args.latency_services < 1 or args.rounds < 1 or args.idle_services < 1:
        ap.error("--ops, --latency-services, --rounds and --idle-services must be positive")
    if args.idle_services > DEBIAN_LIMIT:
        ap.error(f"--idle-services must be at most {DEBIAN_LIMIT} (daemontools' svscan limit)")
    if args.idle_seconds <= 0 or args.settle < 0:
        ap.error("--idle-seconds must be positive and --settle not negative")
    args.rounds = min(args.rounds, args.ops)
    return args


def reproduce_command(args: argparse.Namespace) -> str:
    """Every setting spelled out, so the line reruns this exact benchmark even if defaults change."""
    parts = ["--services", ",".join(map(str, args.services)),
             "--ops", str(args.ops), "--latency-services", str(args.latency_services), "--rounds", str(args.rounds),
             "--idle-seconds", f"{args.idle_seconds:g}", "--idle-services", str(args.idle_services),
             "--settle", f"{args.settle:g}", "--seed", str(args.seed)]
    if args.features != "none":
        parts += ["--features", args.features]
    if args.s6:
        parts.append("--s6")
    if args.phases != ["memory", "latency", "idle"]:
        parts += ["--phases", ",".join(args.phases)]
    if args.debian != DEBIAN:
        parts += ["--debian", args.debian]
    if args.prefork != PREFORK:
        parts += ["--prefork", args.prefork]
    return spelled_out("loadtest.supervision", parts, args.publish)


def _daemontools_version() -> str | None:
    from loadtest.machine import _package_version

    return _package_version("daemontools")


def evaluate_targets(data: dict) -> list[dict]:
    """The benchmark's targets against what was measured (only those the run's sizes allow)."""
    out = []
    rows = {r["services"]: r for r in data.get("memory", [])}
    for (n, limit), strict in ((TARGET_MEMORY_SMALL, False), (TARGET_MEMORY_LARGE, True)):
        row = rows.get(n)
        if row is None:
            continue
        ratio = row["prefork"]["pss"] / row["debian"]["pss"] if row["debian"]["pss"] else 0.0
        met = ratio < limit if strict else ratio <= limit
        out.append({"target": f"PSS at {n} services {'<' if strict else '≤'} {limit:g} × daemontools",
                    "measured": f"{ratio:.3f} ×", "met": met,
                    "by": f"{(ratio - limit) * row['debian']['pss'] / 2**20:+.2f} MiB against the target"})
    for key, what in (("marginal", ""), ("marginal_features", " with all features")):
        m = data.get(key, {}).get("prefork")
        if m is not None:
            per = m["bytes_per_service"]
            out.append({"target": f"marginal PSS per service{what} ({m['from']}→{m['to']}) < "
                                  f"{TARGET_MARGINAL // 1024} KiB",
                        "measured": f"{per / 1024:.1f} KiB", "met": per < TARGET_MARGINAL,
                        "by": f"{(per - TARGET_MARGINAL) / 1024:+.1f} KiB against the target"})
    lat = data.get("latency")
    if lat:
        ratios = lat.get("ratios") or latency_ratios(lat)
        for what, label in (("term", "`d`→TERM"), ("restart", "exit→restart")):
            r = ratios[what]
            lo, hi = r["p99_interval"]
            verdict = ("prefork is faster beyond noise" if hi < 1 else "daemontools is faster beyond noise" if lo > 1
                       else "the difference is within noise")
            out.append({"target": f"{label} p99 ≤ 1 × daemontools' p99", "measured": f"{r['p99']:.3f} ×",
                        "met": r["p99"] <= 1.0,
                        "by": f"95% interval {lo:.3f}–{hi:.3f} × ({verdict})"})
    return out


def benchmark(args: argparse.Namespace) -> dict:
    """The whole run; BenchError when a supervisor cannot start or stops answering."""
    paths = {"debian": args.debian, "prefork": args.prefork}
    options: dict[str, tuple[str, ...]] = {"debian": (), "prefork": ("--s6",) if args.s6 else ()}
    for impl, path in paths.items():
        if not os.access(path, os.X_OK):
            raise BenchError(f"{impl}'s svscan {path} is not an executable file")
    facts = machine_facts()
    facts["daemontools"] = _daemontools_version()
    log(f"machine: {facts['cpu_model']}, {facts['nproc']} cpus, kernel {facts['kernel']}, python {facts['python']}, "
        f"load average {' '.join(f'{x:.2f}' for x in facts['load_average'])}")
    if facts["load_average"][0] > 0.5 * facts["nproc"]:
        log("warning: the machine is busy (1-minute load average above half the CPUs): latencies will be noisy")
    data: dict = {"command": reproduce_command(args), "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": facts,
                  "config": {"services": args.services, "ops": args.ops, "latency_services": args.latency_services,
                             "rounds": args.rounds, "seed": args.seed, "idle_seconds": args.idle_seconds,
                             "idle_services": args.idle_services, "settle": args.settle, "phases": args.phases,
                             "min_uptime": MIN_UPTIME, "perl": args.perl, "features": args.features, "s6": args.s6},
                  "commands": {impl: f"env PATH={DEBIAN_PATH.decode()} {' '.join([path, *options[impl]])} DIR"
                               for impl, path in paths.items()}}
    if "memory" in args.phases:
        data["memory"] = measure_memory(paths, args.services, args.settle, args.workdir, options=options)
        data["marginal"] = {impl: marginal(data["memory"], impl) for impl in paths}
        if args.features == "all":
            data["memory_features"] = measure_memory(paths, args.services, args.settle, args.workdir, features=True,
                                                     options=options)
            data["marginal_features"] = {impl: marginal(data["memory_features"], impl) for impl in paths}
    if "latency" in args.phases:
        if not os.access(args.perl, os.X_OK):
            raise BenchError(f"the latency services need Perl; {args.perl} is not executable (--perl)")
        data["latency"] = measure_latency(paths, args.ops, args.latency_services, args.rounds, args.perl,
                                          args.workdir, args.seed, options)
    if "idle" in args.phases:
        data["idle"] = measure_idle(paths, args.idle_services, args.idle_seconds, args.settle, args.workdir, options)
    data["targets"] = evaluate_targets(data)
    data["load_average_end"] = os.getloadavg()
    return data


# -- output ----------------------------------------------------------------------------------
def _mib(n: float) -> str:
    return f"{n / 2**20:.2f}"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}" if b else "n/a"


def print_summary(data: dict) -> None:
    for key, what in (("memory", ""), ("memory_features", " with all features")):
        for row in data.get(key, []):
            d, p = row["debian"], row["prefork"]
            print(f"memory {row['services']:>5} services{what}: debian PSS {_mib(d['pss'])} MiB ({d['processes']} "
                  f"processes), prefork {_mib(p['pss'])} MiB ({p['processes']}), ratio prefork/debian "
                  f"{_ratio(p['pss'], d['pss'])}")
        for impl, m in data.get(key.replace("memory", "marginal"), {}).items():
            if m:
                print(f"marginal PSS per service{what} {impl}: {m['bytes_per_service'] / 1024:.1f} KiB "
                      f"({m['from']}→{m['to']})")
    lat = data.get("latency")
    if lat:
        for what, label in (("term", "d→TERM"), ("restart", "exit→restart")):
            for impl in IMPLS:
                s = lat[impl][what]
                print(f"latency {label:<13} {impl:<8} p50 {s['p50_ms']:8.3f} ms  p99 {s['p99_ms']:8.3f} ms  "
                      f"max {s['max_ms']:8.3f} ms  n {s['n']}  timeouts {s['timeouts']}")
        for what, label in (("term", "d→TERM"), ("restart", "exit→restart")):
            r = lat.get("ratios", {}).get(what)
            if r:
                print(f"latency {label:<13} prefork/debian p50 {r['p50']:.3f} (95% {r['p50_interval'][0]:.3f}–"
                      f"{r['p50_interval'][1]:.3f})  p99 {r['p99']:.3f} (95% {r['p99_interval'][0]:.3f}–"
                      f"{r['p99_interval'][1]:.3f})")
        f = lat["floor"]
        print(f"latency start-up floor (posix_spawn → first statement of run): p50 {f['p50_ms']:.3f} ms "
              f"p99 {f['p99_ms']:.3f} ms")
    idle = data.get("idle")
    if idle:
        for impl in IMPLS:
            s = idle[impl]
            print(f"idle {idle['services']} services {impl:<8}: {s['cpu_s']:.3f} s utime+stime, "
                  f"{s['run_s'] * 1e3:.2f} ms on CPU, {s['switches']:.0f} switches in {idle['seconds']:.1f} s")
    for t in data.get("targets", []):
        print(f"target {t['target']}: {t['measured']} -> {'met' if t['met'] else 'MISSED'} ({t['by']})")
    print(f"reproduce: {data['command']}")


def render_markdown(data: dict) -> str:
    """SUPERVISION.md: method, tables with ratios prefork/daemontools, targets, machine, the reproduce line."""
    m = data["machine"]
    cfg = data["config"]
    out = ["# Supervision benchmark: prefork svscan against daemontools 0.76", "",
           f"Run {data['when']}; both implementations in the same run, each service tree in its own tempdir. "
           "Ratios are prefork / daemontools (below 1: prefork uses less or answers sooner).", ""]
    load = m.get("load_average") or [0.0]
    if load[0] > 0.5 * m["nproc"]:
        out += [f"> **Busy machine:** 1-minute load average {load[0]:.2f} on {m['nproc']} CPUs at the start. "
                "Latencies are noisy; pairing the operations keeps the ratios fair.", ""]
    targets = data.get("targets", [])
    if targets:
        out += ["## Targets", "", "| target | measured | met | margin |", "|---|---:|:---:|---:|"]
        for t in targets:
            out.append(f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else '**no**'} | {t['by']} |")
        out.append("")
    rows = data.get("memory")
    if rows:
        mode = " (prefork's svscan with `--s6`: s6's status files and an `event/` directory per service)" if cfg.get(
            "s6") else ""
        out += ["## Memory", "",
                "PSS (`/proc/PID/smaps_rollup`) of the supervisor processes only: prefork's one svscan" + mode + "; "
                "daemontools' svscan plus one supervise per service. The services are `#!/bin/sh` + `exec sleep "
                f"100000` and are not counted. One tree at a time, sampled {cfg['settle']:g} s after every service "
                "was up.", ""]
        out += _memory_table(rows, data.get("marginal", {}))
        frows = data.get("memory_features")
        if frows:
            out += ["", "### With all features", "",
                    "The same, but every service directory has what an operator may give a service: `finish` (a "
                    "script that exits 0), `notification-fd` (3; the `run` writes its readiness newline there before "
                    "it execs `sleep`), `timeout-kill` (2000), `timeout-finish` (5000), `down-signal` (TERM), "
                    "`backoff-max` (60000), `backoff-reset` (10000), `failure-deaths` (5), `failure-window` (60000) "
                    "and a `log/` subservice (`exec sleep 100000`, not counted, as the services are not). "
                    "daemontools' supervise ignores the s6 and back-off files but supervises `log/` (one more "
                    "supervise per service); prefork's svscan supervises both on its one engine.", ""]
            out += _memory_table(frows, data.get("marginal_features", {}))
        out += ["", "PSS divides each shared page among the processes mapping it, so the interpreter's pages that "
                "prefork's svscan shares with other Python processes running at the time count only in part; USS "
                "(private pages) and RSS are given for prefork to bound that.", ""]
    lat = data.get("latency")
    if lat:
        out += ["## Control latency", "",
                f"{lat['ops']} operations of each kind per implementation over {lat['services']} Perl services "
                f"each, sequential, round-robin; a service is touched only after it has been up "
                f"{cfg['min_uptime']:g} s, so no start throttle is measured. " + (
                    "Operations are paired: each one on a daemontools service runs back to back with the same one on "
                    f"a prefork service, the two in a random order (seed {lat.get('seed', 1)}), so both meet the "
                    "same moment of the machine. " if lat.get("paired") else
                    f"Implementations took turns in {lat['rounds']} rounds, order reversed every round. ")
                + "Times are CLOCK_MONOTONIC taken in the processes themselves:", "",
                "- **`d`→TERM**: from the benchmark's write(2) of `d` into the service's `supervise/control` FIFO "
                "(opened once beforehand, so no `svc` start-up is timed) to the first statement of the service's TERM "
                "handler; then `u` (not timed) brings it back.",
                "- **exit→restart**: the service gets SIGUSR1 and exits on its own; from its last statement before "
                "`exit` to the first statement of the new instance (so it includes exec + Perl start-up, the floor "
                "below).", "",
                "| operation | implementation | p50 ms | p90 ms | p99 ms | max ms | mean ms | n | timeouts |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for what, label in (("term", "`d`→TERM"), ("restart", "exit→restart")):
            for impl in IMPLS:
                s = lat[impl][what]
                out.append(f"| {label} | {impl} | {s['p50_ms']:.3f} | {s['p90_ms']:.3f} | {s['p99_ms']:.3f} | "
                           f"{s['max_ms']:.3f} | {s['mean_ms']:.3f} | {s['n']} | {s['timeouts']} |")
        out.append("")
        ratios = lat.get("ratios") or latency_ratios(lat)
        for what, label in (("term", "`d`→TERM"), ("restart", "exit→restart")):
            r = ratios[what]
            out.append(f"**{label} prefork/daemontools**: p50 × {r['p50']:.3f} (95% interval "
                       f"{r['p50_interval'][0]:.3f}–{r['p50_interval'][1]:.3f}), p99 × {r['p99']:.3f} (95% interval "
                       f"{r['p99_interval'][0]:.3f}–{r['p99_interval'][1]:.3f}).  ")
        out += ["", "The intervals come from a bootstrap: each implementation's samples are drawn again with "
                "replacement 2000 times and the ratio recomputed. An interval that straddles 1 means this run "
                "cannot tell the two apart at that percentile."]
        f = lat["floor"]
        out += ["", f"Start-up floor: the benchmark itself `posix_spawn`s the same `run` {f['n']} times; spawn → its "
                f"first statement takes p50 {f['p50_ms']:.3f} ms, p99 {f['p99_ms']:.3f} ms. That much of exit→restart "
                "is exec and Perl, not the supervisor.", ""]
    idle = data.get("idle")
    if idle:
        out += ["## Idle cost", "",
                f"{idle['services']} idle `sleep` services per implementation, both trees side by side, over the same "
                f"{idle['seconds']:.1f} s window (after {cfg['settle']:g} s of settling). utime+stime comes from "
                "`/proc/PID/stat` (clock-tick resolution); the scheduler's run time from `/proc/PID/schedstat`.", "",
                "| implementation | processes | utime+stime s | CPU ms per minute (ticks) | CPU ms per minute "
                "(schedstat) | context switches per minute |", "|---|---:|---:|---:|---:|---:|"]
        for impl in IMPLS:
            s = idle[impl]
            out.append(f"| {impl} | {s['processes']} | {s['cpu_s']:.3f} | {s['cpu_ms_per_min']:.1f} | "
                       f"{s['run_ms_per_min']:.2f} | {s['switches_per_min']:.0f} |")
        d, p = idle["debian"], idle["prefork"]
        tick = 1.0 / os.sysconf("SC_CLK_TCK")
        ticks = (f"utime+stime × {_ratio(p['cpu_s'], d['cpu_s'])}" if min(p["cpu_s"], d["cpu_s"]) >= 5 * tick else
                 f"utime+stime is too coarse to compare here (it counts whole {tick * 1e3:g} ms ticks)")
        out += ["", f"**prefork/daemontools**: scheduler run time × {_ratio(p['run_s'], d['run_s'])}; {ticks}.", ""]
    out += machine_section(m, data.get("load_average_end") or (), f"daemontools {m.get('daemontools') or 'unknown'}")
    out += reproduce_section(data["command"], data["commands"], "Supervisors run:")
    return "\n".join(out)


def _memory_table(rows: list[dict], margs: dict) -> list[str]:
    """The memory rows (one per tree size) and the marginal cost per added service."""
    out = ["| services | daemontools PSS MiB | prefork PSS MiB | prefork/daemontools | daemontools processes | "
           "daemontools svscan / avg supervise KiB | prefork RSS MiB | prefork USS MiB | all up in (d / p) s |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        d, p = row["debian"], row["prefork"]
        avg = d["others_pss"] / max(d["processes"] - 1, 1) / 1024
        out.append(f"| {row['services']} | {_mib(d['pss'])} | {_mib(p['pss'])} | {_ratio(p['pss'], d['pss'])} | "
                   f"{d['processes']} | {d['root_pss'] / 1024:.0f} / {avg:.1f} | {_mib(p['rss'])} | "
                   f"{_mib(p['uss'])} | {d['seconds_to_up']:.2f} / {p['seconds_to_up']:.2f} |")
    if any(margs.values()):
        out += ["", "Marginal PSS per added service (largest tree minus smallest, divided by the difference): "
                + ", ".join(f"{impl} **{mm['bytes_per_service'] / 1024:.1f} KiB** ({mm['from']}→{mm['to']})"
                            for impl, mm in margs.items() if mm) + "."]
    return out


def write_chart(data: dict, path: Path) -> Path:
    """Memory per tree size (plain, with all features), latency percentiles, idle CPU: one panel each, one colour per
    implementation."""
    plt = pyplot()

    panels = [k for k in ("memory", "memory_features", "latency", "idle") if data.get(k)]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(5 * max(len(panels), 1), 4.4), squeeze=False)
    width = 0.38
    for ax, panel in zip(axes[0], panels, strict=False):
        if panel in ("memory", "memory_features"):
            rows = data[panel]
            for k, impl in enumerate(IMPLS):
                xs = [i + (k - 0.5) * width for i in range(len(rows))]
                ys = [r[impl]["pss"] / 2**20 for r in rows]
                ax.bar(xs, ys, width, label=impl, color=f"C{k}")
                for x, y in zip(xs, ys, strict=True):
                    ax.annotate(f"{y:.1f}", (x, y), ha="center", va="bottom", fontsize=8)
            ax.set_xticks(range(len(rows)), [str(r["services"]) for r in rows])
            ax.set_xlabel("services")
            ax.set_title("supervisor PSS, MiB (lower is better)" + ("\nwith all features and log/"
                                                                    if panel == "memory_features" else ""))
        elif panel == "latency":
            lat = data["latency"]
            ratios = lat.get("ratios") or latency_ratios(lat)
            groups = [("term", "p50"), ("term", "p99"), ("restart", "p50"), ("restart", "p99")]
            ys = [ratios[w][q] for w, q in groups]
            lows = [max(0.0, y - ratios[w][f"{q}_interval"][0]) for y, (w, q) in zip(ys, groups, strict=True)]
            highs = [max(0.0, ratios[w][f"{q}_interval"][1] - y) for y, (w, q) in zip(ys, groups, strict=True)]
            ax.bar(range(len(groups)), ys, 0.6, color="C1", yerr=[lows, highs], capsize=4, ecolor="black")
            for x, y in enumerate(ys):
                ax.annotate(f"{y:.2f}×", (x, y), xytext=(6, 2), textcoords="offset points", fontsize=8)
            ax.axhline(1.0, color="C0", lw=2, label="daemontools = 1")
            ax.set_xticks(range(len(groups)), ["d→TERM\np50", "d→TERM\np99", "exit→restart\np50", "exit→restart\np99"])
            ax.set_title(f"control latency, prefork / daemontools, {lat['ops']} ops\n(below 1 is better; bars: 95% "
                         "bootstrap interval)", fontsize=10)
        else:
            idle = data["idle"]
            ys = [idle[impl]["run_ms_per_min"] for impl in IMPLS]
            ax.bar(range(len(IMPLS)), ys, 0.6, color=[f"C{k}" for k in range(len(IMPLS))])
            ax.set_xticks(range(len(IMPLS)), list(IMPLS))
            ax.set_title(f"idle CPU, ms per minute, {idle['services']} services")
        ax.grid(axis="y", alpha=0.3)
    title = f"prefork svscan vs daemontools svscan+supervise, {data['machine']['nproc']} cpus"
    return finish_chart(fig, axes[0][0], title, path)



BENCH = Bench("supervision", "SUPERVISION.md", "supervision.png", render_markdown, write_chart)


def main(argv: list[str] | None = None) -> int:
    return BENCH.main(parse_args(argv), benchmark, print_summary, (BenchError, OSError, subprocess.SubprocessError),
                      "every service tree was torn down")


if __name__ == "__main__":
    sys.exit(main())
