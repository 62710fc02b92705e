"""The supervision half of the soak: prefork's svscan over S logged services while things get SIGKILLed.

Each service ``svcN`` runs a small Python producer writing numbered lines,
each with one write(2) (shorter than PIPE_BUF, so a line reaches the pipe whole
or not at all): ``svcN RUN N``, N = 0, 1, 2, ... every LINE_INTERVAL seconds,
and ``svcN RUN end N`` when it gets SIGTERM.  RUN numbers the starts of the
service: the producer creates ``runs/RUN`` with O_EXCL at start-up, so a
number is never used twice, even by a run killed during its start.  Each
``svcN/log`` runs prefork's ``multilog t sSIZE nNUM ./main``.

Faults at random times (one at a time, FAULT_EVERY seconds apart on
average): SIGKILL a service's producer (svscan restarts it), SIGKILL a
multilog (svscan restarts it; the pipe is svscan's, so what is in it stays),
SIGKILL svscan itself and start a new one after a short pause (the new one
takes the running services over from their status files and reopens their
pipes; see control/svscan.py).

At the end svscan gets SIGTERM (it runs with ``--stop-services``): every
producer writes its end line and exits, every multilog reads to EOF.  Then all
log files (``current`` and the rotated ``@*.s``/``@*.u``) are read back, and
within each run the numbers must go 0, 1, 2, ... without a gap, a repeat or a
step back, and the last run must end with its end line.

What may be lost, and only where it is counted apart: the lines a multilog
had read from the pipe but not yet written when it was SIGKILLed.  That is
the logger's own memory (any multilog, daemontools' too); a gap is put down
to it only when a multilog kill of that service falls between the stamps of
the lines on either side of the gap.  A producer killed at any moment loses
nothing: each of its lines is in the pipe as soon as its write returns.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from loadtest import soak_procs as procs

BIN = Path(sys.executable).parent
PRODUCER = '''"""Soak service: numbered lines on stdout, one write(2) each; an end line on SIGTERM."""
import os
import signal
import sys
import time

name, interval, limit = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
try:
    os.mkdir("runs")
except FileExistsError:
    pass
run = len(os.listdir("runs")) + 1
for _ in range(100000):
    try:
        os.close(os.open("runs/%d" % run, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        break
    except FileExistsError:
        run += 1
stop = []
signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))
head = ("%s %d " % (name, run)).encode()
deadline = time.monotonic() + limit
n = 0
while not stop and n < 100000000 and time.monotonic() < deadline:
    os.write(1, head + b"%d\\n" % n)
    n += 1
    time.sleep(interval)
os.write(1, head + b"end %d\\n" % n)
'''
LINE = re.compile(rb"^@([0-9a-f]{24}) (\S+) (\d+) (end )?(\d+)$")
TAI_OFFSET = (1 << 62) + 10
GAP_MARGIN = 0.25  # seconds of slack around a multilog kill when a gap is put down to it
FAULTS = ("service", "multilog", "svscan")
WEIGHTS = (4, 3, 2)


@dataclass
class TreeConfig:
    services: int = 4
    fault_every: float = 3.0
    line_interval: float = 0.01
    log_size: int = 16384
    svscan_down: tuple[float, float] = (0.2, 1.0)
    grace: float = 5.0
    max_svscan_kills: int = 20


def label_seconds(hexlabel: bytes) -> float:
    """Unix time of a multilog stamp's 24 hex digits."""
    return int(hexlabel[:16], 16) - TAI_OFFSET + int(hexlabel[16:], 16) / 1e9


class TreeRig:
    """A tempdir of S logged services under prefork's svscan; faults, samples and the log check."""

    def __init__(self, cfg: TreeConfig, root: Path, env: dict[bytes, bytes], reaper: procs.Reaper,
                 seconds: float, bin_dir: Path = BIN) -> None:
        self.cfg = cfg
        self.svscan = str(bin_dir / "svscan")
        self.multilog = str(bin_dir / "multilog")
        self.root = root
        self.scan = root / "scan"
        self.env = env
        self.reaper = reaper
        self.names = [f"svc{i}" for i in range(1, cfg.services + 1)]
        self.producer = root / "producer.py"
        self.proc: subprocess.Popen | None = None
        self.svscans = 0
        self.svscan_log = root / "svscan.log"
        self.faults: list[dict] = []
        self.misses = 0
        self.restarts: list[dict] = []
        self.max_producers: dict[str, int] = dict.fromkeys(self.names, 0)
        self.max_multilogs: dict[str, int] = dict.fromkeys(self.names, 0)
        self.doubles: list[dict] = []
        self.exit_status: int | None = None
        self.stop_seconds = 0.0
        # Every line the run could write, twice over, plus room: no rotated file is ever pruned.
        expected = (seconds + 120.0) / cfg.line_interval * 64
        self.log_num = max(20, int(2 * expected / cfg.log_size) + 10)
        self.table = ""
        self.restarting = False  # between an svscan kill and the new svscan having every service again
        self.deaths: list[dict] = []  # svscan exits nobody asked for (it is started again)

    # -- building and starting ------------------------------------------------------------------
    def build(self) -> None:
        self.scan.mkdir(parents=True)
        self.producer.write_text(PRODUCER)
        limit = 3600.0 * 6  # a producer left behind stops on its own
        for name in self.names:
            d = self.scan / name
            (d / "log").mkdir(parents=True)
            run = d / "run"
            run.write_text(f"#!/bin/sh\nexec 2>&1\nexec {sys.executable} -I -S {self.producer} {name} "
                           f"{self.cfg.line_interval:g} {limit:g}\n")
            run.chmod(0o755)
            logrun = d / "log" / "run"
            logrun.write_text(f"#!/bin/sh\nexec {self.multilog} t s{self.cfg.log_size} n{self.log_num} ./main\n")
            logrun.chmod(0o755)
        from prefork.control.servicetable import KIND_SVSCAN, default_path

        self.table = default_path(str(self.scan), KIND_SVSCAN)

    def command(self) -> list[str]:
        return [self.svscan, "--stop-services", "--grace", f"{self.cfg.grace:g}", str(self.scan)]

    def start_svscan(self) -> None:
        fd = os.open(self.svscan_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            with self.reaper.lock:
                self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=fd, stderr=fd,
                                             env=self.env, cwd=self.root, start_new_session=True)
                self.reaper.protect(self.proc.pid)
        finally:
            os.close(fd)
        self.svscans += 1

    def svscan_alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def svscan_pid(self) -> int:
        return self.proc.pid if self.svscan_alive() else 0  # type: ignore[union-attr]

    def status_pid(self, d: Path) -> int:
        from prefork.control import statusfile

        try:
            pid = statusfile.read(str(d / "supervise")).pid
        except (OSError, ValueError):
            return 0
        return pid if pid and procs.alive(pid) else 0

    @staticmethod
    def supervised(d: Path) -> bool:
        """A supervisor holds D (what svok checks: supervise/ok has a reader)."""
        try:
            fd = os.open(d / "supervise" / "ok", os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            return False
        os.close(fd)
        return True

    def dirs(self) -> list[Path]:
        return [d for name in self.names for d in (self.scan / name, self.scan / name / "log")]

    def wait_up(self, timeout: float) -> float:
        """Seconds until every service and log is supervised with a running pid; RuntimeError after TIMEOUT."""
        t0 = time.monotonic()
        pending = self.dirs()
        for _ in range(int(timeout / 0.05) + 2):
            if not self.svscan_alive():
                raise RuntimeError(f"svscan exited ({self.proc.returncode if self.proc else None}): "
                                   f"{self.svscan_text()[-500:]}")
            pending = [d for d in pending if not (self.supervised(d) and self.status_pid(d))]
            if not pending:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                break
            time.sleep(0.05)
        raise RuntimeError(f"{len(pending)} services not up after {timeout:g} s (first: {pending[0]}); "
                           f"svscan said: {self.svscan_text()[-500:] or 'nothing'}")

    def svscan_text(self) -> str:
        try:
            return self.svscan_log.read_text(errors="replace")
        except OSError:
            return ""

    # -- processes ------------------------------------------------------------------------------
    def producer_of(self, pid: int) -> str | None:
        """The service name a producer pid runs as, from its command line (None if it is no producer)."""
        args = procs.cmdline(pid).split(b"\0")
        path = str(self.producer).encode()
        if path in args:
            i = args.index(path)
            if i + 1 < len(args):
                return args[i + 1].decode(errors="replace")
        return None

    def multilog_of(self, pid: int) -> str | None:
        st = procs.stat(pid)
        if st is None or st[0] != "multilog" or st[1] == "Z":
            return None
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            return None
        parent = Path(cwd)
        if parent.name == "log" and parent.parent.parent == self.scan:
            return parent.parent.name
        return None

    def tree_pids(self) -> list[int]:
        """svscan's children and the soak's own (the services of a killed svscan are ours until they exit)."""
        pids = procs.children(os.getpid())
        if self.svscan_alive():
            pids += procs.children(self.proc.pid)  # type: ignore[union-attr]
        return pids

    def multilog_pids(self) -> list[int]:
        return [pid for pid in self.tree_pids() if self.multilog_of(pid)]

    def count_instances(self, t: float) -> None:
        """How many producers and multilogs each service has right now (more than one is a double start)."""
        producers: dict[str, list[int]] = {}
        logs: dict[str, list[int]] = {}
        for pid in self.tree_pids():
            if not procs.alive(pid):
                continue
            name = self.producer_of(pid)
            if name is not None:
                producers.setdefault(name, []).append(pid)
                continue
            name = self.multilog_of(pid)
            if name is not None:
                logs.setdefault(name, []).append(pid)
        for kind, found, maxima in (("producer", producers, self.max_producers), ("multilog", logs, self.max_multilogs)):
            for name, pids in found.items():
                maxima[name] = max(maxima.get(name, 0), len(pids))
                if len(pids) > 1 and len(self.doubles) < 20:
                    self.doubles.append({"t": round(t, 3), "kind": kind, "service": name, "pids": pids})

    # -- faults ---------------------------------------------------------------------------------
    def fault(self, rng: object, t: float, allow_svscan: bool = True) -> dict | None:
        """One fault of a kind chosen at random (svscan kills bounded); its record, or None on a miss."""
        svscan_kills = sum(1 for f in self.faults if f["kind"] == "svscan")
        kinds = [k for k in FAULTS if k != "svscan" or (allow_svscan and svscan_kills < self.cfg.max_svscan_kills)]
        weights = [w for k, w in zip(FAULTS, WEIGHTS, strict=True) if k in kinds]
        kind = rng.choices(kinds, weights)[0]  # type: ignore[attr-defined]
        name = rng.choice(self.names)  # type: ignore[attr-defined]
        if kind == "svscan":
            return self.kill_svscan(rng, t)
        d = self.scan / name if kind == "service" else self.scan / name / "log"
        pid = self.status_pid(d)
        ok = pid and (self.producer_of(pid) == name if kind == "service" else self.multilog_of(pid) == name)
        if not ok:
            self.misses += 1
            return None
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            self.misses += 1
            return None
        record = {"t": round(t, 3), "wall": time.time(), "kind": kind, "service": name, "pid": pid}
        self.faults.append(record)
        return record

    def kill_svscan(self, rng: object, t: float) -> dict | None:
        """SIGKILL svscan, pause, start a new one; which services it took over and which it started again."""
        if not self.svscan_alive():
            self.misses += 1
            return None
        before = {d: self.status_pid(d) for d in self.dirs()}
        assert self.proc is not None
        old = self.proc.pid
        wall = time.time()
        self.restarting = True
        try:
            self.proc.kill()
            self.proc.wait(10.0)
            self.reaper.protected.discard(old)  # reaped: its pid may come back as an orphan's
            pause = rng.uniform(*self.cfg.svscan_down)  # type: ignore[attr-defined]
            time.sleep(pause)
            self.start_svscan()
            up = self.wait_up(30.0)
        finally:
            self.restarting = False
        adopted = restarted = doubled = 0
        for d, pid in before.items():
            now = self.status_pid(d)
            if pid and now == pid:
                adopted += 1
            else:
                restarted += 1
                if pid and procs.alive(pid) and now != pid:
                    doubled += 1
        record = {"t": round(t, 3), "wall": wall, "kind": "svscan", "service": "", "pid": old,
                  "pause_s": round(pause, 3), "up_s": round(up, 3), "adopted": adopted, "restarted": restarted,
                  "doubled": doubled}
        self.faults.append(record)
        self.restarts.append(record)
        return record

    def check_alive(self, t: float) -> dict | None:
        """If svscan exited without being killed by the run, note it and start a new one."""
        if self.restarting or self.proc is None or self.proc.poll() is None:
            return None
        record = {"t": round(t, 3), "pid": self.proc.pid, "status": self.proc.returncode,
                  "said": self.svscan_text()[-300:]}
        self.deaths.append(record)
        self.start_svscan()
        self.wait_up(30.0)
        return record

    # -- stopping -------------------------------------------------------------------------------
    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM svscan (--stop-services: every service down, logs drained) and wait for it."""
        if self.proc is None:
            return
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10.0)
        self.stop_seconds = time.monotonic() - t0
        self.exit_status = self.proc.returncode

    # -- the figures ----------------------------------------------------------------------------
    def results(self, t0_wall: float) -> dict:
        kills = {k: sum(1 for f in self.faults if f["kind"] == k) for k in FAULTS}
        per: dict[str, dict] = {}
        for name in self.names:
            multilog_kills = [f["wall"] for f in self.faults if f["kind"] == "multilog" and f["service"] == name]
            service_kills = [f["wall"] for f in self.faults if f["kind"] == "service" and f["service"] == name]
            per[name] = analyse_service(name, self.scan / name, multilog_kills, service_kills, t0_wall)
        total = {k: sum(p[k] for p in per.values()) for k in (
            "lines", "runs", "gaps", "gap_lines", "gaps_at_multilog_kills", "lines_lost_at_multilog_kills",
            "gaps_unexplained", "lines_lost_unexplained", "duplicates", "out_of_order", "interleaved_runs",
            "foreign_lines", "runs_without_lines", "runs_without_lines_unexplained", "torn_lines", "files")}
        svscan_lines = [line for line in self.svscan_text().splitlines() if line.strip()]
        return {
            "services": len(self.names),
            "command": " ".join(self.command()),
            "log_script": f"multilog t s{self.cfg.log_size} n{self.log_num} ./main",
            "line_interval": self.cfg.line_interval,
            "kills": kills,
            "misses": self.misses,
            "svscans_started": self.svscans,
            "svscan_deaths": self.deaths,
            "svscan_restarts": self.restarts,
            "adopted": sum(r["adopted"] for r in self.restarts),
            "restarted_after_svscan_kill": sum(r["restarted"] for r in self.restarts),
            "doubled_after_svscan_kill": sum(r["doubled"] for r in self.restarts),
            "max_producers": self.max_producers,
            "max_multilogs": self.max_multilogs,
            "doubles": self.doubles,
            "clean_end": all(p["clean_end"] for p in per.values()),
            "exit_status": self.exit_status,
            "stop_seconds": round(self.stop_seconds, 3),
            "svscan_output_lines": len(svscan_lines),
            "svscan_output": svscan_lines[:20],
            **total,
            "per_service": per,
            "timeline": {"faults": [{"t": f["t"], "kind": f["kind"], "service": f["service"]} for f in self.faults]},
        }


def read_log_dir(main: Path) -> tuple[list[tuple[bytes, str]], int]:
    """Every line of a multilog directory, oldest file first (``@*`` by name, then ``previous``, ``current``).

    Each line comes with a mark: ``line``; ``torn`` for a file's last bytes
    without a newline (a multilog killed in the middle of a line, whose next
    run finishes ``current`` as an ``@*.u`` file); ``rest`` for the first line of
    the file after a torn one (the torn line's remainder, stamped again).
    """
    try:
        names = os.listdir(main)
    except OSError:
        return [], 0
    order = sorted(n for n in names if n.startswith("@")) + [n for n in ("previous", "current") if n in names]
    lines: list[tuple[bytes, str]] = []
    torn = False
    for name in order:
        try:
            data = (main / name).read_bytes()
        except OSError:
            continue
        if not data:
            continue
        parts = data.split(b"\n")
        tail = parts.pop()  # b"" when the file ends with a newline
        for i, x in enumerate(parts):
            if x:
                lines.append((x, "rest" if torn and i == 0 else "line"))
        torn = bool(tail)
        if torn:
            lines.append((tail, "torn"))
    return lines, len(order)


def analyse_service(name: str, d: Path, multilog_kills: list[float], service_kills: list[float],
                    t0_wall: float) -> dict:
    """Gaps, repeats and reorderings of each run of one service, as its log directory has them."""
    lines, files = read_log_dir(d / "log" / "main")
    out = {"lines": 0, "files": files, "runs": 0, "gaps": 0, "gap_lines": 0, "gaps_at_multilog_kills": 0,
           "lines_lost_at_multilog_kills": 0, "gaps_unexplained": 0, "lines_lost_unexplained": 0, "duplicates": 0,
           "out_of_order": 0, "interleaved_runs": 0, "foreign_lines": 0, "runs_without_lines": 0,
           "runs_without_lines_unexplained": 0, "torn_lines": 0, "torn_rests": 0, "clean_end": False}
    samples: dict[str, list] = {"gaps": [], "duplicates": [], "out_of_order": [], "foreign": [], "interleaved": []}
    runs: dict[int, dict] = {}
    order: list[int] = []
    current = None
    prev_t = None
    per_second: dict[int, int] = {}

    def gap(run: int, first: int, last: int, t_before: float | None, t_after: float) -> None:
        size = last - first + 1
        out["gaps"] += 1
        out["gap_lines"] += size
        lo = (t_before if t_before is not None else t_after) - GAP_MARGIN
        explained = any(lo <= k <= t_after + GAP_MARGIN for k in multilog_kills)
        if explained:
            out["gaps_at_multilog_kills"] += 1
            out["lines_lost_at_multilog_kills"] += size
        else:
            out["gaps_unexplained"] += 1
            out["lines_lost_unexplained"] += size
        if len(samples["gaps"]) < 10:
            samples["gaps"].append({"run": run, "missing": [first, last], "lines": size,
                                    "at_multilog_kill": explained,
                                    "t_before": None if t_before is None else round(t_before - t0_wall, 3),
                                    "t_after": round(t_after - t0_wall, 3)})

    for raw, mark in lines:
        if mark != "line":
            out["torn_lines" if mark == "torn" else "torn_rests"] += 1
            continue
        m = LINE.match(raw)
        if m is None or m.group(2).decode(errors="replace") != name:
            out["foreign_lines"] += 1
            if len(samples["foreign"]) < 10:
                samples["foreign"].append(raw.decode(errors="replace")[:200])
            continue
        t = label_seconds(m.group(1))
        run, is_end, n = int(m.group(3)), m.group(4) is not None, int(m.group(5))
        r = runs.get(run)
        if r is None:
            r = runs[run] = {"next": 0, "seen": set(), "end": None, "last_t": None}
            order.append(run)
        elif current != run:
            out["interleaved_runs"] += 1
            if len(samples["interleaved"]) < 10:
                samples["interleaved"].append({"run": run, "after_run": current, "t": round(t - t0_wall, 3)})
        current = run
        if is_end:
            if r["end"] is not None:
                out["duplicates"] += 1
            r["end"] = n
            if n > r["next"]:  # lost at the tail of the run
                gap(run, r["next"], n - 1, prev_t, t)
                r["next"] = n
            prev_t = t
            continue
        out["lines"] += 1
        sec = int(t - t0_wall)
        per_second[sec] = per_second.get(sec, 0) + 1
        if n in r["seen"]:
            out["duplicates"] += 1
            if len(samples["duplicates"]) < 10:
                samples["duplicates"].append({"run": run, "n": n, "t": round(t - t0_wall, 3)})
        elif n < r["next"]:
            out["out_of_order"] += 1
            if len(samples["out_of_order"]) < 10:
                samples["out_of_order"].append({"run": run, "n": n, "expected": r["next"]})
        elif n > r["next"]:
            gap(run, r["next"], n - 1, prev_t, t)
        r["seen"].add(n)
        r["next"] = max(r["next"], n + 1)
        prev_t = t
    out["runs"] = len(runs)
    out["clean_end"] = bool(order) and runs[order[-1]]["end"] is not None
    # Runs started (their runs/RUN file exists) that left no line: killed before their first write, or lost.
    try:
        started = {int(p.name): p.stat().st_mtime for p in (d / "runs").iterdir() if p.name.isdigit()}
    except OSError:
        started = {}
    for run, mtime in started.items():
        if run in runs:
            continue
        out["runs_without_lines"] += 1
        if not any(mtime - GAP_MARGIN <= k <= mtime + 2.0 for k in service_kills):
            out["runs_without_lines_unexplained"] += 1
    out["runs_started"] = len(started)
    out["samples"] = samples
    out["lines_per_second"] = [per_second.get(s, 0) for s in range(max(per_second, default=-1) + 1)]
    return out
