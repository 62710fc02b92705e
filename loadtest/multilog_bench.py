"""multilog benchmark: Debian's daemontools multilog against prefork's, same input, same scripts, same run.

The input is generated once (tcpserver ``-v`` lines of simulated connections mixed with 100-200 byte
application lines) and fed on stdin, as a regular file by default, to each implementation in turn
(order reversed every round), for each scenario:

- ``plain``: ``t s16777215 n10 ./dir`` (every line, stamped, into one directory);
- ``two-patterns``: ``t s16777215 n10 -* +* tcpserver: * ./tcpserver -* +* app[*]: * ./app``: tcpserver's
  connection lines into one directory and the application's lines into another (two patterns, two
  directories; every line lands in exactly one of them). The patterns see the timestamp, so they start
  by skipping to the first space (multilog's ``*`` never backtracks: ``*status:*`` would not match
  ``tcpserver: status: ...``, its first ``s`` being the one in ``tcpserver``).

Measured per run: wall time (spawn to exit), input lines/s, user+sys CPU of the multilog process
(wait4 rusage) per GB (10^9 bytes) of input, peak RSS (VmHWM) and RSS sampled from /proc/PID/status
against the input offset (``/proc/PID/fdinfo/0``), to show whether memory stays flat.

Correctness, checked on every run: each directory's ``@*.s`` files (oldest first) and ``current``
are concatenated, the 26-byte ``@<tai64n> `` prefix is stripped from every line and the result must
equal the tail of the stream that directory should get (the input, or the input lines the directory's
pattern selects). With ``n10`` only the newest 9 files and ``current`` survive, and the two
implementations may cut files at different lines (docs/CONTRACTS.md, multilog directory allows it), so what is compared is "each
kept output is exactly the end of the expected stream"; both are then identical on what both kept.

Nothing here asserts a speed; tests/test_loadtest_multilog.py only checks structure and identity on a
small input.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from loadtest import reporting
from loadtest.machine import _package_version, machine_facts
from loadtest.reporting import Bench, finish_chart, log, machine_section, pyplot, reproduce_section
from loadtest.reporting import reproduce_command as spelled_out

DEBIAN = "/usr/bin/multilog"
PREFORK = str(Path(sys.executable).parent / "multilog")
IMPLS = ("debian", "prefork")
BASELINE = "debian"
GB = 10**9
MiB = 2**20
STAMP_BYTES = 26  # "@" + 24 hex digits + " "
TARGETS = {"plain": 1.5, "two-patterns": 1.0}  # the aim: prefork lines/s at least this times daemontools'
CHUNK = 1 << 22
ENV = {"PATH": "/usr/bin:/bin"}  # multilog execs nothing here; a small fixed environment for both


# -- scenarios -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scenario:
    """A multilog script and, for each of its directories, the input lines it must end up holding.

    ``dirs`` maps a directory (as named in the script, without ``./``) to a regular expression over
    the *unstamped* input that selects, with re.MULTILINE, exactly the whole lines (newline included)
    the script sends there; None means every line.
    """

    name: str
    script: tuple[str, ...]
    dirs: dict[str, bytes | None]
    size: int  # the s of every directory
    keep: int  # the n of every directory

    def window(self) -> int:
        """An upper bound of what one directory keeps: n-1 finished files of at most s bytes, plus current."""
        return self.keep * self.size


def plain(size: int = 16777215, keep: int = 10) -> Scenario:
    return Scenario("plain", ("t", f"s{size}", f"n{keep}", "./dir"), {"dir": None}, size, keep)


def two_patterns(size: int = 16777215, keep: int = 10) -> Scenario:
    script = ("t", f"s{size}", f"n{keep}", "-*", "+* tcpserver: *", "./tcpserver", "-*", "+* app[*]: *", "./app")
    dirs = {"tcpserver": rb"^tcpserver: [^\n]*\n", "app": rb"^app\[[^\]\n]*\]: [^\n]*\n"}
    return Scenario("two-patterns", script, dirs, size, keep)


SCENARIOS = {"plain": plain, "two-patterns": two_patterns}


# -- input -----------------------------------------------------------------------------------
_WORDS = (b"GET POST PUT DELETE /api/v1/items /api/v1/users /static/app.js /login /healthz status=200 status=201 "
          b"status=304 status=404 status=500 cache=hit cache=miss user=alice user=bob user=carol user=dave "
          b"tenant=acme tenant=globex region=eu-west-1 region=us-east-2 db=primary db=replica retries=0 "
          b"retries=1 queue=mail queue=billing job=reindex job=thumbnail lang=en lang=de client=curl/7.88.1 "
          b"client=Mozilla/5.0 proto=HTTP/1.1 proto=HTTP/2 tls=TLSv1.3 conn=keep-alive conn=close").split()
_LEVELS = (b"info",) * 17 + (b"warn",) * 2 + (b"error",)


@dataclass
class InputStats:
    """What was generated (or found) on the input: the totals every rate is computed from."""

    path: str
    bytes: int = 0
    lines: int = 0
    classes: dict[str, dict[str, int]] = field(default_factory=dict)  # kind -> {"lines": n, "bytes": n}
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"path": self.path, "bytes": self.bytes, "lines": self.lines, "classes": self.classes,
                "generate_s": self.seconds}


def _app_pool(rng: random.Random, count: int = 2048) -> list[bytes]:
    """Application message bodies, each long enough to be cut to any length up to 200 bytes."""
    pool = []
    for _ in range(count):
        parts = [b"req=%016x" % rng.getrandbits(64), b"dur_ms=%d" % rng.randint(0, 5000)]
        while sum(len(p) + 1 for p in parts) < 210:
            parts.append(rng.choice(_WORDS))
        rng.shuffle(parts)
        pool.append(b" ".join(parts))
    return pool


def generate_input(path: str | Path, size: int, seed: int = 1, progress: bool = False) -> InputStats:
    """Write about SIZE bytes (whole lines) of a busy tcpserver's log with its application's lines.

    Each simulated connection gives ``status: N/40``, ``pid P from 127.0.0.1``, ``ok P ...``, 0-4
    application lines of 100-200 bytes (``app[P]: LEVEL: ...``), ``end P status S`` and ``status: N-1/40``.
    """
    started = time.monotonic()
    rng = random.Random(seed)
    pool = _app_pool(rng)
    counts = {"tcpserver": [0, 0], "app": [0, 0]}
    pid, active, written, lines = 1000, 1, 0, 0
    next_report = size // 10
    buf: list[bytes] = []
    buffered = 0
    choice, randint, random_ = rng.choice, rng.randint, rng.random
    with open(path, "wb") as f:
        while written < size:
            pid = pid + randint(1, 7)
            if pid > 4_194_000:
                pid = 1000
            active = max(1, min(40, active + (1 if random_() < 0.5 else -1)))
            head = [b"tcpserver: status: %d/40\n" % active, b"tcpserver: pid %d from 127.0.0.1\n" % pid,
                    b"tcpserver: ok %d localhost:127.0.0.1:25 :127.0.0.1::%d\n" % (pid, randint(32768, 60999))]
            app = []
            for _ in range(choice((0, 1, 1, 2, 2, 3, 4))):
                prefix = b"app[%d]: %s: " % (pid, choice(_LEVELS))
                app.append(prefix + choice(pool)[: randint(100, 200) - len(prefix) - 1] + b"\n")
            tail = [b"tcpserver: end %d status %d\n" % (pid, 0 if random_() < 0.97 else 256),
                    b"tcpserver: status: %d/40\n" % (active - 1)]
            tcp_bytes = sum(map(len, head)) + sum(map(len, tail))
            app_bytes = sum(map(len, app))
            counts["tcpserver"][0] += 5
            counts["tcpserver"][1] += tcp_bytes
            counts["app"][0] += len(app)
            counts["app"][1] += app_bytes
            buf += head
            buf += app
            buf += tail
            buffered += tcp_bytes + app_bytes
            lines += 5 + len(app)
            if buffered >= CHUNK:
                f.write(b"".join(buf))
                written += buffered
                buf, buffered = [], 0
                if progress and written >= next_report:
                    log(f"  input: {written / MiB:,.0f} of {size / MiB:,.0f} MiB")
                    next_report += size // 10
        if buf:
            f.write(b"".join(buf))
            written += buffered
    return InputStats(str(path), written, lines,
                      {k: {"lines": v[0], "bytes": v[1]} for k, v in counts.items()}, time.monotonic() - started)


def scan_input(path: str | Path) -> InputStats:
    """Totals of an input file given with --input (its lines are not classified)."""
    started = time.monotonic()
    size, lines, last = 0, 0, b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            size += len(chunk)
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    if last != b"\n":
        raise RuntimeError(f"{path}: the input must end with a newline (multilog would add one)")
    return InputStats(str(path), size, lines, {}, time.monotonic() - started)


# -- expected output -------------------------------------------------------------------------
def _complete_lines(path: str | Path):
    """The file in big blocks of whole lines; a last line without newline gets one (multilog adds it)."""
    carry = b""
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            data = carry + chunk
            end = data.rfind(b"\n") + 1
            carry = data[end:]
            if end:
                yield data[:end]
    if carry:
        yield carry + b"\n"


def reference_tails(input_path: str | Path, selectors: dict[str, bytes], width: int,
                    workdir: Path) -> dict[str, tuple[Path, int]]:
    """For each selector, a file holding the last WIDTH bytes of the input lines it selects (two passes),
    and the length of the whole selected stream."""
    regexes = {key: re.compile(rx, re.MULTILINE) for key, rx in selectors.items()}
    totals = dict.fromkeys(regexes, 0)
    for block in _complete_lines(input_path):
        for key, rx in regexes.items():
            totals[key] += sum(map(len, rx.findall(block)))
    paths = {key: workdir / f"expected-{re.sub(r'[^A-Za-z0-9]+', '_', key)}" for key in regexes}
    files = {key: open(paths[key], "wb") for key in regexes}
    seen = dict.fromkeys(regexes, 0)
    try:
        for block in _complete_lines(input_path):
            for key, rx in regexes.items():
                data = b"".join(rx.findall(block))
                start = totals[key] - width - seen[key]  # offset in DATA where the tail begins
                seen[key] += len(data)
                if start < len(data):
                    files[key].write(data[max(start, 0):])
    finally:
        for f in files.values():
            f.close()
    return {key: (paths[key], totals[key]) for key in regexes}


def tail_digest(path: str | Path, length: int) -> str | None:
    """sha256 of the last LENGTH bytes of PATH; None if it is shorter."""
    size = os.path.getsize(path)
    if length > size:
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(size - length)
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


_STAMP = re.compile(rb"^@[0-9a-f]{24} ", re.MULTILINE)


def read_log_dir(path: str | Path) -> dict:
    """Files, modes and the unstamped content digest of one multilog directory (oldest file first)."""
    path = Path(path)
    names = sorted(os.listdir(path))
    olds = [n for n in names if n.startswith("@") and len(n) >= 25]
    files = [path / n for n in olds] + ([path / "current"] if "current" in names else [])
    h = hashlib.sha256()
    length = lines = stamped = 0
    for block in _log_blocks(files):
        out, n = _STAMP.subn(b"", block)
        h.update(out)
        length += len(out)
        lines += block.count(b"\n")
        stamped += n
    info = {name: os.stat(path / name) for name in names}
    finished = [info[n].st_size for n in olds]
    problems = []
    if stamped != lines:
        problems.append(f"{lines - stamped} line(s) without a @tai64n prefix")
    if any(not n.endswith(".s") for n in olds):
        problems.append("unfinished (.u) files: " + " ".join(n for n in olds if not n.endswith(".s")))
    cur = info.get("current")
    if cur is None:
        problems.append("no current")
    elif stat.S_IMODE(cur.st_mode) & 0o100 == 0:
        problems.append(f"current not closed cleanly (mode {stat.S_IMODE(cur.st_mode):o})")
    return {"files": names, "finished": len(olds), "finished_min": min(finished, default=0),
            "finished_max": max(finished, default=0), "current_bytes": cur.st_size if cur else 0,
            "current_mode": f"{stat.S_IMODE(cur.st_mode):o}" if cur else None, "lines": lines,
            "length": length, "sha256": h.hexdigest(), "problems": problems}


def _log_blocks(files: list[Path]):
    carry = b""
    for p in files:
        with open(p, "rb") as f:
            while chunk := f.read(CHUNK):
                data = carry + chunk
                end = data.rfind(b"\n") + 1
                carry = data[end:]
                if end:
                    yield data[:end]
    if carry:
        yield carry


def check_dir(entry: dict, scenario: Scenario, expected: Path, total: int) -> None:
    """Set ENTRY["verified"] and add to its problems: the kept output, unstamped, must be the end of the expected
    stream (EXPECTED holds its tail, TOTAL is its whole length); all of it while fewer than n-1 files were finished."""
    digest = tail_digest(expected, entry["length"])
    entry["verified"] = digest is not None and digest == entry["sha256"]
    if not entry["verified"]:
        entry["problems"].append("content after the timestamps is not the end of the expected stream")
    if entry["finished"] < scenario.keep - 1 and entry["length"] != total:
        entry["verified"] = False
        entry["problems"].append(f"{entry['length']} of {total} expected bytes, and nothing was pruned")
    if entry["finished"] > scenario.keep - 1:
        entry["problems"].append(f"{entry['finished']} old files kept with n{scenario.keep}")
    low = scenario.size - 2000
    if entry["finished"] and (entry["finished_min"] < low or entry["finished_max"] > scenario.size):
        entry["problems"].append(f"finished files of {entry['finished_min']}..{entry['finished_max']} bytes, "
                                 f"outside {low}..{scenario.size}")


# -- one run ---------------------------------------------------------------------------------
def _proc_values(pid: int, name: str, *keys: bytes) -> list[int | None]:
    """The numbers after KEYS in /proc/PID/NAME (None where absent: a zombie has no Vm lines)."""
    found: dict[bytes, int] = {}
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            for line in f:
                key = line.split(b":", 1)[0] + b":"
                if key in keys:
                    found[key] = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return [found.get(k) for k in keys]


class Sampler(threading.Thread):
    """Samples RSS (VmRSS), its high-water mark (VmHWM) and the stdin offset of a process until stopped.

    VmHWM, not rusage's maxrss: exec() keeps the larger of the old and new maxrss, and the old image here
    is a fork (or vfork, sharing the memory) of this Python harness, so maxrss would report the harness.
    """

    def __init__(self, pid: int, total: int, interval: float, label: str, report_every: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.total, self.interval, self.label, self.report_every = pid, total, interval, label, report_every
        self.samples: list[tuple[float, float, int]] = []  # (seconds since start, fraction of input read, rss bytes)
        self.hwm = 0  # bytes
        self.done = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        last_report = start
        wait = min(self.interval, 0.02)  # a first sample early, then every interval
        while not self.done.wait(wait):
            wait = self.interval
            rss, hwm = _proc_values(self.pid, "status", b"VmRSS:", b"VmHWM:")
            (pos,) = _proc_values(self.pid, "fdinfo/0", b"pos:")
            now = time.monotonic()
            if rss is None or hwm is None:
                continue
            self.hwm = max(self.hwm, hwm * 1024)
            frac = (pos or 0) / self.total if self.total else 0.0
            self.samples.append((now - start, frac, rss * 1024))
            if self.report_every and now - last_report >= self.report_every:
                last_report = now
                log(f"    {self.label}: {frac * 100:5.1f}% of the input after {now - start:.1f} s, "
                    f"RSS {rss / 1024:.1f} MiB")


def run_multilog(binary: str, scenario: Scenario, stats: InputStats, workdir: Path, feed: str = "file",
                 timeout: float = 1800.0, interval: float = 0.2, label: str = "", report_every: float = 5.0) -> dict:
    """Run BINARY with the scenario's script in WORKDIR (fresh), the input on stdin; measurements, no checks."""
    workdir.mkdir(parents=True)
    argv = [binary, *scenario.script]
    errpath = workdir.parent / f"{workdir.name}.stderr"
    cat = None
    with open(stats.path, "rb") as src, open(errpath, "wb") as err:
        if feed == "pipe":
            cat = subprocess.Popen(["cat"], stdin=src, stdout=subprocess.PIPE, env=ENV)
            stdin = cat.stdout
        else:
            stdin = src
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.DEVNULL, stderr=err, cwd=workdir, env=ENV)
        if cat is not None:
            cat.stdout.close()
        sampler = Sampler(proc.pid, stats.bytes if feed == "file" else 0, interval, label, report_every)
        sampler.start()
        timer = threading.Timer(timeout, _kill, (proc.pid,))
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            wall = time.monotonic() - started
            timer.cancel()
            sampler.done.set()
            sampler.join()
            if cat is not None:
                if cat.poll() is None:
                    cat.kill()
                cat.wait()
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4 above, so Popen must not wait again
    stderr = errpath.read_bytes()
    errpath.unlink()
    cpu = usage.ru_utime + usage.ru_stime
    rss = [s[2] for s in sampler.samples]
    return {
        "argv": argv, "exit": proc.returncode, "stderr": stderr[-2000:].decode("utf-8", "replace"),
        "wall_s": wall, "user_s": usage.ru_utime, "sys_s": usage.ru_stime, "cpu_s": cpu,
        "lines_per_s": stats.lines / wall if wall else 0.0, "mb_per_s": stats.bytes / MiB / wall if wall else 0.0,
        "cpu_s_per_gb": cpu / (stats.bytes / GB) if stats.bytes else 0.0,
        "peak_rss_bytes": sampler.hwm,
        "rss_samples": [(round(t, 3), round(f, 4), r) for t, f, r in sampler.samples],
        "rss_first_bytes": rss[0] if rss else None, "rss_last_bytes": rss[-1] if rss else None,
    }


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# -- the benchmark -----------------------------------------------------------------------------
@dataclass
class Config:
    binaries: dict[str, str]
    scenarios: list[Scenario]
    rounds: int = 3
    feed: str = "file"
    timeout: float = 1800.0
    interval: float = 0.2
    report_every: float = 5.0
    keep_outputs: bool = False
    sync: bool = True  # write back earlier runs' dirty pages first, so no run pays for another's I/O


def verify_run(run: dict, scenario: Scenario, workdir: Path, expected: dict[str, tuple[Path, int]]) -> None:
    """Read every directory of a finished run into RUN["dirs"] and list what is wrong in RUN["problems"]."""
    run["dirs"] = {}
    problems = [] if run["exit"] == 0 else [f"exit status {run['exit']}"]
    for name in scenario.dirs:
        if not (workdir / name).is_dir():
            run["dirs"][name] = {"verified": False, "length": 0, "sha256": "", "problems": ["no directory"]}
            problems.append(f"{name}: no directory")
            continue
        entry = read_log_dir(workdir / name)
        check_dir(entry, scenario, *expected[name])
        run["dirs"][name] = entry
        problems += [f"{name}: {p}" for p in entry["problems"]]
    run["problems"] = problems


def summarize(runs: list[dict], stats: InputStats) -> dict:
    wall = sum(r["wall_s"] for r in runs)
    cpu = sum(r["cpu_s"] for r in runs)
    rates = sorted(r["lines_per_s"] for r in runs)
    return {"runs": len(runs), "wall_s": wall, "lines_per_s": stats.lines * len(runs) / wall if wall else 0.0,
            "median_lines_per_s": rates[len(rates) // 2] if rates else 0.0,
            "mb_per_s": stats.bytes * len(runs) / MiB / wall if wall else 0.0,
            "cpu_s_per_gb": cpu / (stats.bytes * len(runs) / GB) if stats.bytes and runs else 0.0,
            "peak_rss_bytes": max((r["peak_rss_bytes"] for r in runs), default=0),
            "problems": sorted({p for r in runs for p in r["problems"]})}


def compare(scenario: str, impls: dict[str, dict]) -> dict:
    """Ratios against daemontools and the output identity of the last round."""
    ratios: dict = {}
    base = impls.get(BASELINE)
    for name, data in impls.items():
        if name == BASELINE or base is None:
            continue
        b, t = base["total"], data["total"]
        lines = t["lines_per_s"] / b["lines_per_s"] if b["lines_per_s"] else 0.0
        ratios[name] = {"lines_per_s": lines,
                     "cpu_per_gb": t["cpu_s_per_gb"] / b["cpu_s_per_gb"] if b["cpu_s_per_gb"] else 0.0,
                     "peak_rss": t["peak_rss_bytes"] / b["peak_rss_bytes"] if b["peak_rss_bytes"] else 0.0,
                     "target": TARGETS.get(scenario), "meets_target": lines >= TARGETS.get(scenario, 0.0)}
    out: dict = {"ratios": ratios}
    runs = [r for d in impls.values() for r in d["runs"]]
    out["identical"] = bool(runs) and all(r["exit"] == 0 and all(e["verified"] for e in r["dirs"].values())
                                          for r in runs)
    kept = {json.dumps({k: e["sha256"] for k, e in d["runs"][-1]["dirs"].items()}, sort_keys=True)
            for d in impls.values() if d["runs"]}
    out["same_split"] = len(kept) == 1  # the last rounds kept exactly the same bytes
    return out


def benchmark(cfg: Config, stats: InputStats, workdir: Path) -> dict:
    """Every scenario, every implementation, CFG.rounds alternating rounds; outputs verified and deleted."""
    results: dict = {}
    for scenario in cfg.scenarios:
        log(f"scenario {scenario.name}: multilog {shlex.join(scenario.script)}")
        selectors = {k: v for k, v in scenario.dirs.items() if v is not None}
        expected = dict.fromkeys(scenario.dirs, (Path(stats.path), stats.bytes))
        if selectors:
            log("  expected streams: selecting the input lines of each directory")
            ref = workdir / f"{scenario.name}-expected"
            ref.mkdir()
            expected.update(reference_tails(stats.path, selectors, scenario.window(), ref))
        impls = {name: {"binary": b, "runs": []} for name, b in cfg.binaries.items()}
        order = list(cfg.binaries)
        for i in range(cfg.rounds):
            for name in order if i % 2 == 0 else order[::-1]:
                out = workdir / f"{scenario.name}-{name}-{i + 1}"
                label = f"{scenario.name} {name} round {i + 1}"
                if cfg.sync:
                    os.sync()
                run = run_multilog(cfg.binaries[name], scenario, stats, out, cfg.feed, cfg.timeout, cfg.interval,
                                   label, cfg.report_every)
                run["round"] = i + 1
                verify_run(run, scenario, out, expected)
                impls[name]["runs"].append(run)
                log(f"  round {i + 1}/{cfg.rounds} {name:<8} {run['wall_s']:7.2f} s  {run['lines_per_s']:>12,.0f} "
                    f"lines/s  {run['cpu_s_per_gb']:6.2f} CPU s/GB  peak RSS {run['peak_rss_bytes'] / MiB:6.1f} MiB  "
                    + ("ok" if not run["problems"] else "PROBLEMS: " + "; ".join(run["problems"])))
                if not cfg.keep_outputs:
                    shutil.rmtree(out)
        for data in impls.values():
            data["total"] = summarize(data["runs"], stats)
        results[scenario.name] = {"script": list(scenario.script), "size": scenario.size, "keep": scenario.keep,
                                  "dirs": {k: (v.decode() if v else None) for k, v in scenario.dirs.items()},
                                  "impls": impls, "comparison": compare(scenario.name, impls)}
        if selectors and not cfg.keep_outputs:
            shutil.rmtree(workdir / f"{scenario.name}-expected")
    return results


def filesystem_of(path: str | Path) -> str:
    """Filesystem type of the mount holding PATH (fsync costs differ a lot between them)."""
    path = os.path.realpath(path)
    best, kind = "", "unknown"
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                mount = left.split()[4]
                if (path == mount or path.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
                    best, kind = mount, right.split()[0]
    except (OSError, IndexError):
        pass
    return kind


# -- printing and publishing ----------------------------------------------------------------------
def reproduce_command(args: argparse.Namespace) -> str:
    parts = ["--size-mb", f"{args.size_mb:g}", "--rounds",
             str(args.rounds), "--seed", str(args.seed), "--feed", args.feed]
    for s in args.scenario or []:
        parts += ["--scenario", s]
    if args.debian != DEBIAN:
        parts += ["--debian", args.debian]
    if args.prefork != PREFORK:
        parts += ["--prefork", args.prefork]
    if args.input:
        parts += ["--input", args.input]
    return spelled_out("loadtest.multilog_bench", parts, args.publish)


def print_summary(data: dict) -> None:
    inp = data["input"]
    print(f"input: {inp['bytes'] / MiB:,.1f} MiB, {inp['lines']:,} lines; {data['config']['rounds']} rounds, "
          f"feed {data['config']['feed']}, output on {data['machine']['filesystem']}")
    for name, sc in data["scenarios"].items():
        print(f"{name}: multilog {shlex.join(sc['script'])}")
        for impl, d in sc["impls"].items():
            t = d["total"]
            print(f"  {impl:<8} {t['lines_per_s']:>12,.0f} lines/s  {t['mb_per_s']:7.1f} MiB/s  "
                  f"{t['cpu_s_per_gb']:6.2f} CPU s/GB  peak RSS {t['peak_rss_bytes'] / MiB:6.1f} MiB  "
                  + ("ok" if not t["problems"] else "PROBLEMS: " + "; ".join(t["problems"])))
        comp = sc["comparison"]
        for impl, r in comp["ratios"].items():
            verdict = "" if r["target"] is None else (f" (target {r['target']:.1f}x: "
                                                      + ("met" if r["meets_target"] else "NOT met") + ")")
            print(f"  ratio {impl}/{BASELINE}: lines/s {r['lines_per_s']:.2f}x{verdict}, CPU/GB "
                  f"{r['cpu_per_gb']:.2f}x, peak RSS {r['peak_rss']:.2f}x")
        print(f"  output after the timestamps: {'identical' if comp['identical'] else 'DIFFERENT or unverified'}"
              f"{' (same file boundaries)' if comp['same_split'] else ' (files cut at different lines)'}")
    print(f"reproduce: {data['command']}")


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / MiB:.1f}"


def render_markdown(data: dict) -> str:
    inp, m, cfg = data["input"], data["machine"], data["config"]
    out = ["# multilog benchmark", "",
           f"Debian's daemontools `multilog` ({m.get('daemontools') or 'version unknown'}) against prefork's, "
           f"{inp['bytes'] / MiB:,.0f} MiB of generated log ({inp['lines']:,} lines: tcpserver `-v` lines of "
           f"simulated connections mixed with 100-200 byte application lines) fed on stdin "
           f"({'a regular file' if cfg['feed'] == 'file' else 'through a pipe from cat'}), {cfg['rounds']} rounds "
           f"per implementation, order reversed every round, `sync` before each run; output directories on "
           f"{m['filesystem']}; run {data['when']}. Wall time is from spawn to exit (the final fsync included), CPU "
           "is the multilog process's user+sys time (wait4).", ""]
    load = m.get("load_average") or [0.0]
    if load[0] > 0.5 * m["nproc"]:
        out += [f"> **Busy machine:** 1-minute load average {load[0]:.2f} on {m['nproc']} CPUs at the start. "
                "Absolute numbers are noisy; the alternating rounds keep the ratios fairer.", ""]
    out += ["## Results", "", "| scenario | implementation | lines/s | MiB/s | CPU s per GB | peak RSS MiB | output |",
            "|---|---|---:|---:|---:|---:|---|"]
    for name, sc in data["scenarios"].items():
        for impl, d in sc["impls"].items():
            t = d["total"]
            out.append(f"| {name} | {impl} | {t['lines_per_s']:,.0f} | {t['mb_per_s']:.1f} | {t['cpu_s_per_gb']:.2f} | "
                       f"{t['peak_rss_bytes'] / MiB:.1f} | {'ok' if not t['problems'] else '; '.join(t['problems'])} |")
    out += ["", "Ratios (prefork / daemontools; lines/s above 1 is faster, CPU and RSS below 1 is cheaper):", "",
            "| scenario | lines/s | target | CPU per GB | peak RSS | output after the timestamps |",
            "|---|---:|---|---:|---:|---|"]
    for name, sc in data["scenarios"].items():
        comp = sc["comparison"]
        same = "identical" if comp["identical"] else "**different or unverified**"
        if comp["identical"]:
            same += ", same file boundaries" if comp["same_split"] else ", files cut at different lines"
        for r in comp["ratios"].values():
            target = "-" if r["target"] is None else (f"≥ {r['target']:.1f}x: "
                                                      + ("met" if r["meets_target"] else "**not met**"))
            out.append(f"| {name} | {r['lines_per_s']:.2f}x | {target} | {r['cpu_per_gb']:.2f}x | "
                       f"{r['peak_rss']:.2f}x | {same} |")
    out += ["", "## Scripts", ""]
    for name, sc in data["scenarios"].items():
        out.append(f"- **{name}**: `multilog {shlex.join(sc['script'])}`")
    out += ["", "## Rounds", "", "| scenario | round | " + " | ".join(f"{i} s | {i} lines/s" for i in data["impls"])
            + " |", "|---|---:|" + "---:|---:|" * len(data["impls"])]
    for name, sc in data["scenarios"].items():
        for i in range(cfg["rounds"]):
            cells = []
            for impl in data["impls"]:
                r = sc["impls"][impl]["runs"][i]
                cells.append(f"{r['wall_s']:.2f} | {r['lines_per_s']:,.0f}")
            out.append(f"| {name} | {i + 1} | " + " | ".join(cells) + " |")
    out += ["", "## Memory", "",
            "RSS sampled every few tenths of a second from `/proc/PID/status`, first and last sample of the last round, "
            "and the peak (`VmHWM`, sampled likewise) over all rounds. Flat means the first and last samples agree whatever the "
            "input size (bounded buffers).", "", "| scenario | implementation | first MiB | last MiB | peak MiB |",
            "|---|---|---:|---:|---:|"]
    for name, sc in data["scenarios"].items():
        for impl, d in sc["impls"].items():
            last = d["runs"][-1]
            first_b, last_b = last["rss_first_bytes"], last["rss_last_bytes"]
            out.append(f"| {name} | {impl} | {_mib(first_b)} | {_mib(last_b)} | {_mib(d['total']['peak_rss_bytes'])} |")
    out += ["", "## How the output is checked", "",
            "After every run, each directory's `@*.s` files (oldest first) and `current` are concatenated and the "
            "26-byte `@<tai64n> ` prefix is stripped from every line; the result must be exactly the end of the "
            "stream that directory should hold (the input, or the input lines its pattern selects), every line must "
            "carry a prefix, no `.u` file may exist, `current` must be closed cleanly (mode 0744), at most n-1 old "
            "files may be kept and finished files must be s-2000..s bytes. With n10 only the last 9 files and "
            "`current` survive, and the two implementations may end their files at different lines (the "
            "specification allows it), so what both kept is compared on what both kept.", "",
            *machine_section(m, data.get("load_average_end", ()), f"daemontools {m.get('daemontools') or 'unknown'}",
                             kernel_extra=f", output filesystem {m['filesystem']}",
                             extra=[f"input generated in {inp['generate_s']:.1f} s (seed {cfg['seed']})"])]
    out += reproduce_section(data["command"], {impl: f"{binary} SCRIPT < input" for impl, binary in data["impls"].items()},
                             "Commands run (in a fresh directory each):")
    return "\n".join(out)


def write_chart(data: dict, path: Path) -> Path:
    """Lines/s and CPU per GB per scenario (bars, rounds as dots) and RSS against input read (last round)."""
    plt = pyplot()

    scenarios = list(data["scenarios"])
    impls = list(data["impls"])
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.6))
    width = 0.8 / max(len(impls), 1)
    for k, impl in enumerate(impls):
        xs = [i + (k - (len(impls) - 1) / 2) * width for i in range(len(scenarios))]
        totals = [data["scenarios"][s]["impls"][impl]["total"] for s in scenarios]
        ax1.bar(xs, [t["lines_per_s"] / 1e6 for t in totals], width, label=impl, color=f"C{k}")
        ax2.bar(xs, [t["cpu_s_per_gb"] for t in totals], width, label=impl, color=f"C{k}")
        for x, s in zip(xs, scenarios, strict=True):
            runs = data["scenarios"][s]["impls"][impl]["runs"]
            ax1.plot([x] * len(runs), [r["lines_per_s"] / 1e6 for r in runs], "k.", markersize=4)
            ax2.plot([x] * len(runs), [r["cpu_s_per_gb"] for r in runs], "k.", markersize=4)
        for j, s in enumerate(scenarios):
            samples = data["scenarios"][s]["impls"][impl]["runs"][-1]["rss_samples"]
            if samples:
                ax3.plot([f * 100 for _, f, _ in samples], [r / MiB for _, _, r in samples], color=f"C{k}",
                         linestyle="-" if j == 0 else "--", label=f"{impl} {s}")
    for ax, title in ((ax1, "million lines/s (higher is better)"), (ax2, "CPU seconds per GB (lower is better)")):
        ax.set_xticks(range(len(scenarios)), scenarios)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    ax3.set_title("RSS, MiB, against % of input read (last round)")
    ax3.set_xlabel("% of input read")
    ax3.set_ylim(bottom=0)
    ax3.grid(alpha=0.3)
    ax3.legend(fontsize=8)
    title = (f"multilog, {data['input']['bytes'] / MiB:,.0f} MiB / {data['input']['lines']:,} lines, "
             f"{data['machine']['nproc']} cpus")
    return finish_chart(fig, ax1, title, path)


BENCH = Bench("multilog", "MULTILOG.md", "multilog.png", render_markdown, write_chart)


# -- command line ------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m loadtest.multilog_bench", description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=float, default=1024, help="MiB of input to generate (default 1024)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1, help="seed of the input generator")
    ap.add_argument("--scenario", action="append", choices=sorted(SCENARIOS), help="run only these (repeatable)")
    ap.add_argument("--feed", choices=("file", "pipe"), default="file",
                    help="stdin is the input file itself, or a pipe from cat")
    ap.add_argument("--debian", default=DEBIAN, help="daemontools' multilog")
    ap.add_argument("--prefork", default=PREFORK, help="prefork's multilog console script")
    ap.add_argument("--input", help="use this file as input instead of generating one")
    ap.add_argument("--workdir", help="where the run's temporary directory (input, log directories) is made")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (input and outputs)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds before a run is killed")
    ap.add_argument("--interval", type=float, default=0.2, help="RSS sampling interval, seconds")
    ap.add_argument("--progress-every", type=float, default=5.0, help="seconds between progress lines in a run")
    BENCH.add_options(ap)
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.size_mb <= 0:
        ap.error("--rounds and --size-mb must be positive")
    return args


def run_cli(args: argparse.Namespace) -> dict:
    binaries = {"debian": args.debian, "prefork": args.prefork}
    for name, binary in binaries.items():
        if not os.access(binary, os.X_OK):
            raise RuntimeError(f"{name} multilog not found: {binary}")
    scenarios = [SCENARIOS[s]() for s in (args.scenario or SCENARIOS)]
    facts = machine_facts()
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="multilog-bench-", dir=args.workdir))  # removed unless --keep
    facts["filesystem"] = filesystem_of(work)
    facts["daemontools"] = _package_version("daemontools")
    log(f"machine: {facts['cpu_model']}, {facts['nproc']} cpus, kernel {facts['kernel']}, load average "
        f"{' '.join(f'{x:.2f}' for x in facts['load_average'])}; work directory {work} on {facts['filesystem']}")
    try:
        if args.input:
            stats = scan_input(args.input)
        else:
            size = int(args.size_mb * MiB)
            log(f"generating {size / MiB:,.0f} MiB of input (seed {args.seed})")
            stats = generate_input(work / "input.log", size, args.seed, progress=True)
            log(f"  {stats.bytes / MiB:,.1f} MiB, {stats.lines:,} lines in {stats.seconds:.1f} s")
        cfg = Config(binaries, scenarios, args.rounds, args.feed, args.timeout, args.interval, args.progress_every)
        results = benchmark(cfg, stats, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return {"command": reproduce_command(args), "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": facts,
            "config": {"rounds": args.rounds, "feed": args.feed, "seed": args.seed, "size_mb": args.size_mb},
            "input": stats.to_dict(), "impls": binaries, "scenarios": results, "load_average_end": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        return BENCH.render_only(args)
    reporting.stop_on_sigterm()
    try:
        data = run_cli(args)
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        log(f"loadtest.multilog_bench: error: {e}")
        return 1
    print_summary(data)
    BENCH.write(data, args)
    bad = [f"{s}/{i}" for s, sc in data["scenarios"].items() for i, d in sc["impls"].items() if d["total"]["problems"]]
    if bad:
        log(f"loadtest.multilog_bench: error: wrong output from {', '.join(bad)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
