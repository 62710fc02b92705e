"""Time-to-ready benchmark: prefork's `svscan --s6` against Debian's s6-svscan + s6-supervise.

Both trees hold one service directory made the same way: a `down` file (it starts down),
`notification-fd` (3) and a tiny Perl `run` that prints its first statement's CLOCK_MONOTONIC time
(S), waits --delay ms, prints the time again (N) and writes a newline to descriptor 3. The
benchmark reads those lines from a pipe that is svscan's stdout (the services inherit it).

One sample, on one implementation:

1. Debian's `s6-svwait -U -t 5000 DIR` is started and waits (its FIFO is in `DIR/event/`);
2. t0, then Debian's `s6-svc -u DIR`;
3. t1: s6-svwait has exited, seen on a pidfd (so at once, not at a poll interval);
4. untimed: `s6-svc -d DIR`, `s6-svwait -D DIR`.

Reported, per implementation: process start → s6-svwait returns (t1 - S, the target's measure),
`s6-svc -u` → returns (t1 - t0), newline → returns (t1 - N: the supervisor's share and s6-svwait's)
and `s6-svc -u` → process start (S - t0). With --listener a FIFO of the benchmark's own in `event/`
notes the `U` letter (tU), which splits newline → returns into the two shares. Samples
are paired: each index runs once on each implementation, back to back, in a random (seeded) order,
so both meet the same moment of the machine; ratios prefork/s6 get a bootstrap interval
(loadtest/supervision.py's ratio_interval). Nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import os
import random
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadtest.machine import _package_version, machine_facts
from loadtest.reporting import Bench, finish_chart, log, machine_section, pyplot, reproduce_section, table
from loadtest.reporting import reproduce_command as spelled_out
from loadtest.supervision import BenchError, Events, Tree, clock, latency_summary, ratio_interval, stop_all

S6_SVSCAN = "/usr/bin/s6-svscan"
S6_SVC = "/usr/bin/s6-svc"
S6_SVWAIT = "/usr/bin/s6-svwait"
PREFORK = str(Path(sys.executable).parent / "svscan")
IMPLS = ("s6", "prefork")
FLOOR = "python-floor"  # --python-floor: loadtest/readyfloor.py, the least a Python supervisor does on this path
FLOOR_SCRIPT = str(Path(__file__).with_name("readyfloor.py"))
NOTIFICATION_FD = 3
WAIT_MS = 5000  # s6-svwait's -t: a sample that takes longer is a timeout
LISTEN_TIMEOUT = 2.0  # seconds for s6-svwait to make its FIFO in event/
LATE_LETTER = 0.2  # seconds our listener may still wait for its `U` once s6-svwait has exited
MAX_STALLS = 5  # timeouts in a row before the run is abandoned
TARGET_RATIO = 1.0  # the target: prefork's process start → ready at most s6's
# What is measured, in report order: key, label, from, to (t0: s6-svc -u issued, S: the service's first
# statement, N: just before its newline, t1: s6-svwait -U returned).
MEASURES = (("start", "process start → s6-svwait -U returns", "S", "t1"),
            ("svc", "s6-svc -u → s6-svwait -U returns", "t0", "t1"),
            ("notify", "newline written → s6-svwait -U returns", "N", "t1"),
            ("spawn", "s6-svc -u → process start", "t0", "S"))
# With --listener, a FIFO of the benchmark's own in event/ (tU: its `U` letter read) splits "newline →
# returns" into the supervisor's share and s6-svwait's.
LISTENER_MEASURES = (("event", "newline written → U letter in event/", "N", "tU"),
                     ("svwait", "U letter in event/ → s6-svwait -U returns", "tU", "t1"))
LISTENER = "ftrig1:@400000006b16d2b1221f7e62:bnchmk"  # the name shape s6's listeners give their FIFOs
# The service. S: its first statement; N: just before it writes the newline to the notification fd.
PERL_RUN = r"""#!{perl}
use strict;
use Time::HiRes ();
my $t = Time::HiRes::clock_gettime(Time::HiRes::CLOCK_MONOTONIC());
sub note {{ syswrite(STDOUT, sprintf("%s %s %d %.9f\n", $_[0], "svc", $$, $_[1])) }}
note("S", $t);
Time::HiRes::sleep({delay}) if {delay} > 0;
open(my $ready, ">&=", {fd}) or die "run: fd {fd}: $!\n";
note("N", Time::HiRes::clock_gettime(Time::HiRes::CLOCK_MONOTONIC()));
syswrite($ready, "\n");
close($ready);
$SIG{{TERM}} = sub {{ exit 0 }};
sleep 1000 while 1;
"""


def client(*argv: str, timeout: float = 10.0) -> int:
    """Run one of s6's clients to its end (bounded); its exit code."""
    try:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        return -1


def _listeners(event: Path) -> set[str]:
    try:
        return {n for n in os.listdir(event) if n.startswith("ftrig1")}
    except OSError:
        return set()


def measures(listener: bool) -> tuple[tuple[str, str, str, str], ...]:
    return MEASURES + (LISTENER_MEASURES if listener else ())


class Rig:
    """One implementation's tree of one service, and the samples taken on it."""

    def __init__(self, tree: Tree, svc: str, svwait: str, listener: bool = False) -> None:
        self.tree = tree
        self.impl = tree.impl
        self.dir = tree.scan / tree.names[0]
        self.svc = svc
        self.svwait = svwait
        self.events = Events(tree.stdout_fd, kinds=(b"S", b"N"))
        self.measures = measures(listener)
        self.samples: dict[str, list[float]] = {key: [] for key, _label, _begin, _end in self.measures}
        self.timeouts = 0
        self.stalls = 0
        self.listener = listener
        self.fifo = -1

    def listen(self) -> None:
        """The benchmark's own listener FIFO in event/, made as s6's listeners make theirs; closed by close()."""
        path = self.dir / "event" / LISTENER
        os.mkfifo(path, 0o600)
        self.fifo = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)  # RDWR: never a hang-up to poll

    def close(self) -> None:
        if self.fifo >= 0:
            os.close(self.fifo)
            self.fifo = -1

    def wait_supervised(self, timeout: float) -> None:
        """Until the service's supervisor answers (s6-svok) and its event/ is there; BenchError after TIMEOUT."""
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / 0.05) + 2):
            self.tree.check_alive()
            if (self.dir / "event").is_dir() and client("/usr/bin/s6-svok", str(self.dir)) == 0:
                return
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        raise BenchError(f"{self.impl}: {self.dir.name} not supervised after {timeout:g} s; "
                         f"svscan said: {self.tree.stderr_text().strip() or 'nothing'}")

    def sample(self) -> None:
        """One `s6-svc -u` while s6-svwait -U waits, timed; then down again, untimed."""
        event = self.dir / "event"
        before = _listeners(event)
        waiter = subprocess.Popen([self.svwait, "-U", "-t", str(WAIT_MS), str(self.dir)], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            pidfd = os.pidfd_open(waiter.pid)
            try:
                t0, t_u, t1 = self._timed_up(event, before, pidfd)
            finally:
                os.close(pidfd)
            code = waiter.wait(WAIT_MS / 1000 + 5)
        finally:
            if waiter.poll() is None:
                waiter.kill()
                waiter.wait()
        started = self.events.wait("S", None, WAIT_MS / 1000)
        notified = self.events.wait("N", None, WAIT_MS / 1000, pid=started.pid if started else 0)
        if code != 0 or started is None or notified is None or (self.listener and t_u is None):
            self.timeouts += 1
            self.stalls += 1
            log(f"readiness: {self.impl}: no ready within {WAIT_MS} ms (s6-svwait exit {code}, "
                f"start {'seen' if started else 'not seen'})")
            self.tree.check_alive()
            if self.stalls >= MAX_STALLS:
                raise BenchError(f"{self.impl}: {self.stalls} samples in a row never got ready")
        else:
            self.stalls = 0
            ends = {"S": started.t, "t0": t0, "N": notified.t, "t1": t1, "tU": t_u or 0.0}
            for key, _label, begin, end in self.measures:
                self.samples[key].append(ends[end] - ends[begin])
        self.down()

    def _timed_up(self, event: Path, before: set[str], pidfd: int) -> tuple[float, float | None, float]:
        """(t0, tU, t1): `s6-svc -u` issued once s6-svwait listens, our listener's `U` (None without one), and
        s6-svwait's exit."""
        deadline = time.monotonic() + LISTEN_TIMEOUT
        for _ in range(int(LISTEN_TIMEOUT / 0.001) + 2):
            if _listeners(event) - before or time.monotonic() > deadline:
                break
            time.sleep(0.001)
        time.sleep(0.002)  # its FIFO is made just before it reads the status file: let it read it
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if self.fifo >= 0:
            _drain(self.fifo)
            poller.register(self.fifo, select.POLLIN)
        t0 = clock()
        client(self.svc, "-u", str(self.dir))
        t_u = None
        deadline = t0 + WAIT_MS / 1000 + 5
        for _ in range(100):  # each round is a wake-up: a letter, or s6-svwait's exit
            ready = dict(poller.poll(max(0.0, deadline - clock()) * 1000))
            now = clock()
            if self.fifo in ready:
                if b"U" in _drain(self.fifo) and t_u is None:
                    t_u = now
            if pidfd in ready or now >= deadline:
                if t_u is None and self.fifo >= 0 and pidfd in ready and self._late_u():
                    t_u = now  # our letter came after s6-svwait's exit (the writer was preempted between the two)
                return t0, t_u, now
        return t0, t_u, clock()

    def _late_u(self) -> bool:
        """Whether the `U` reaches our listener within LATE_LETTER seconds after s6-svwait has exited."""
        poller = select.poll()
        poller.register(self.fifo, select.POLLIN)
        deadline = clock() + LATE_LETTER
        for _ in range(20):
            if poller.poll(max(0.0, deadline - clock()) * 1000) and b"U" in _drain(self.fifo):
                return True
            if clock() >= deadline:
                break
        return False

    def down(self) -> None:
        """Take the service down and wait until it is really down (s6-svwait -D); the S/N lines seen are dropped."""
        client(self.svc, "-d", str(self.dir))
        if client(self.svwait, "-D", "-t", str(WAIT_MS), str(self.dir)) != 0:
            self.tree.check_alive()
            raise BenchError(f"{self.impl}: the service did not go down within {WAIT_MS} ms")
        self.events.queue.clear()


def _drain(fd: int) -> bytes:
    """What the listener FIFO holds now (b"" when empty)."""
    out = b""
    for _ in range(64):
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            break
        if not chunk:
            break
        out += chunk
    return out


def service_files() -> dict[str, str]:
    return {"notification-fd": f"{NOTIFICATION_FD}\n", "down": ""}


def measure(paths: dict[str, str], samples: int, delay_ms: float, perl: str, svc: str, svwait: str,
            workdir: str | None, seed: int, listener: bool = False) -> dict:
    """Both trees side by side; SAMPLES pairs, each in a random order."""
    run_text = PERL_RUN.format(perl=perl, delay=f"{delay_ms / 1000:.6f}", fd=NOTIFICATION_FD)
    options = {"s6": (), "prefork": ("--s6",), FLOOR: (FLOOR_SCRIPT,)}
    trees: list[Tree] = []
    rigs: dict[str, Rig] = {}
    try:
        for impl, svscan in paths.items():
            tree = Tree(impl, svscan, 1, run_text, workdir, files=service_files(), options=options[impl])
            trees.append(tree)
            tree.start()
        for tree in trees:
            rig = Rig(tree, svc, svwait, listener)
            rigs[tree.impl] = rig
            rig.wait_supervised(10.0)
            if listener:
                rig.listen()
        log(f"readiness: both supervisors up; {samples} paired samples, service delay {delay_ms:g} ms")
        rng = random.Random(seed)
        for rig in rigs.values():  # one untimed round each: the first start pays for cold caches
            rig.sample()
            rig.samples = {key: [] for key in rig.samples}
            rig.timeouts = 0
        t_start = time.monotonic()
        for i in range(samples):
            order = list(rigs)
            rng.shuffle(order)
            for impl in order:
                rigs[impl].sample()
            if (i + 1) % max(1, samples // 10) == 0 or i + 1 == samples:
                p50 = {impl: sorted(r.samples["start"])[len(r.samples["start"]) // 2] * 1e3
                       for impl, r in rigs.items() if r.samples["start"]}
                log(f"readiness: {i + 1}/{samples} pairs in {time.monotonic() - t_start:.1f} s; start→ready p50 so "
                    f"far " + ", ".join(f"{impl} {ms:.3f} ms" for impl, ms in p50.items()))
    finally:
        for rig in rigs.values():
            rig.close()
        stop_all(trees)
    out: dict = {"samples": samples, "delay_ms": delay_ms, "seed": seed, "listener": listener}
    for impl, rig in rigs.items():
        out[impl] = {key: latency_summary(rig.samples[key], rig.timeouts) for key, _label, _begin, _end in rig.measures}
    out["ratios"] = ratios(out)
    if FLOOR in out:
        out["floor_ratios"] = ratios(out, FLOOR)
    return out


def impls(res: dict) -> list[str]:
    """The implementations measured in RES, in report order (s6, prefork, and the Python floor if run)."""
    return [impl for impl in (*IMPLS, FLOOR) if impl in res]


def ratios(res: dict, impl: str = "prefork") -> dict:
    """IMPL/s6 at p50, p90 and p99 of each measure, with 95% bootstrap intervals."""
    out = {}
    for key, _label, _begin, _end in measures(res.get("listener", False)):
        s, p = res["s6"][key], res[impl][key]
        row = {}
        for q in (50, 90, 99):
            row[f"p{q}"] = p[f"p{q}_ms"] / s[f"p{q}_ms"] if s[f"p{q}_ms"] else 0.0
            row[f"p{q}_interval"] = list(ratio_interval(p["samples_ms"], s["samples_ms"], q))
        out[key] = row
    return out


def evaluate_targets(data: dict) -> list[dict]:
    """Issue #14: process start → ready on prefork at most 1.0 x s6's (p50, and p99 with its interval)."""
    out = []
    for q in (50, 99):
        r = data["readiness"]["ratios"]["start"]
        lo, hi = r[f"p{q}_interval"]
        verdict = ("prefork is faster beyond noise" if hi < 1 else "s6 is faster beyond noise" if lo > 1
                   else "the difference is within noise")
        out.append({"target": f"process start → ready p{q} ≤ {TARGET_RATIO:g} × s6", "measured": f"{r[f'p{q}']:.3f} ×",
                    "met": r[f"p{q}"] <= TARGET_RATIO, "by": f"95% interval {lo:.3f}–{hi:.3f} × ({verdict})"})
    return out


# -- the run ---------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m loadtest.readiness", description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=200, help="samples per implementation, paired (default 200)")
    ap.add_argument("--delay", type=float, default=0.0, help="ms the service waits between its start and its "
                    "readiness newline (default 0)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the order within each pair and of the bootstrap")
    ap.add_argument("--s6-svscan", default=S6_SVSCAN, help="Debian's s6-svscan (it runs /usr/bin/s6-supervise)")
    ap.add_argument("--prefork", default=PREFORK, help="prefork's svscan console script (run with --s6)")
    ap.add_argument("--s6-svc", default=S6_SVC, help="the s6-svc that starts and stops the service (Debian's)")
    ap.add_argument("--s6-svwait", default=S6_SVWAIT, help="the s6-svwait that waits for ready (Debian's)")
    ap.add_argument("--listener", action="store_true", help="also read the letters in event/ with a FIFO of the "
                    "benchmark's own: splits newline → returns into the supervisor's share and s6-svwait's")
    ap.add_argument("--python-floor", action="store_true", help="also run loadtest/readyfloor.py, the least a "
                    "supervisor written in Python does on this path: what any Python supervisor can reach here")
    ap.add_argument("--perl", default=shutil.which("perl") or "/usr/bin/perl", help="Perl for the service")
    ap.add_argument("--workdir", default=None, help="where the service trees are made (default: the temp dir)")
    BENCH.add_options(ap)
    args = ap.parse_args(argv)
    if args.samples < 1:
        ap.error("--samples must be positive")
    if not 0 <= args.delay <= 1000:
        ap.error("--delay must be 0..1000 ms")
    return args


def reproduce_command(args: argparse.Namespace) -> str:
    """Every setting spelled out, so the line reruns this exact benchmark even if defaults change."""
    parts = ["--samples", str(args.samples), "--delay", f"{args.delay:g}", "--seed", str(args.seed)]
    if args.listener:
        parts.append("--listener")
    if args.python_floor:
        parts.append("--python-floor")
    for flag, value, default in (("--s6-svscan", args.s6_svscan, S6_SVSCAN), ("--prefork", args.prefork, PREFORK),
                                 ("--s6-svc", args.s6_svc, S6_SVC), ("--s6-svwait", args.s6_svwait, S6_SVWAIT)):
        if value != default:
            parts += [flag, value]
    return spelled_out("loadtest.readiness", parts, args.publish)


def benchmark(args: argparse.Namespace) -> dict:
    paths = {"s6": args.s6_svscan, "prefork": args.prefork}
    if args.python_floor:
        paths[FLOOR] = sys.executable
    for what, path in (*paths.items(), ("s6-svc", args.s6_svc), ("s6-svwait", args.s6_svwait), ("perl", args.perl)):
        if not os.access(path, os.X_OK):
            raise BenchError(f"{what}: {path} is not an executable file")
    facts = machine_facts()
    facts["s6"] = _package_version("s6")
    log(f"machine: {facts['cpu_model']}, {facts['nproc']} cpus, kernel {facts['kernel']}, python {facts['python']}, "
        f"load average {' '.join(f'{x:.2f}' for x in facts['load_average'])}")
    data: dict = {"command": reproduce_command(args), "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": facts,
                  "commands": {"s6": f"env PATH=/usr/bin:/bin {args.s6_svscan} DIR",
                               "prefork": f"env PATH=/usr/bin:/bin {args.prefork} --s6 DIR",
                               **({FLOOR: f"env PATH=/usr/bin:/bin {sys.executable} {FLOOR_SCRIPT} DIR"}
                                  if args.python_floor else {}),
                               "start": f"{args.s6_svc} -u SERVICE", "wait": f"{args.s6_svwait} -U -t {WAIT_MS} SERVICE"}}
    data["filesystem"] = filesystem(args.workdir or tempfile.gettempdir())
    data["readiness"] = measure(paths, args.samples, args.delay, args.perl, args.s6_svc, args.s6_svwait,
                                args.workdir, args.seed, args.listener)
    data["targets"] = evaluate_targets(data)
    data["load_average_end"] = os.getloadavg()
    return data


def filesystem(path: str) -> str:
    """The type of the file system at PATH as `stat -f` names it (ext4 shows as "ext2/ext3"): the status writes
    cost very different amounts on ext4 and tmpfs (docs/CONTRACTS.md, Service status)."""
    try:
        out = subprocess.run(["stat", "-f", "-c", "%T", path], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"


# -- output ----------------------------------------------------------------------------------
def print_summary(data: dict) -> None:
    res = data["readiness"]
    for key, label, _begin, _end in measures(res.get("listener", False)):
        for impl in impls(res):
            s = res[impl][key]
            print(f"{label:<40} {impl:<8} p50 {s['p50_ms']:8.3f} ms  p90 {s['p90_ms']:8.3f} ms  "
                  f"p99 {s['p99_ms']:8.3f} ms  n {s['n']}  timeouts {s['timeouts']}")
        for name, table_key in (("prefork", "ratios"), (FLOOR, "floor_ratios")):
            if table_key in res:
                r = res[table_key][key]
                print(f"{label:<40} {name}/s6 p50 {r['p50']:.3f} (95% {r['p50_interval'][0]:.3f}–"
                      f"{r['p50_interval'][1]:.3f})  p99 {r['p99']:.3f} (95% {r['p99_interval'][0]:.3f}–"
                      f"{r['p99_interval'][1]:.3f})")
    for t in data["targets"]:
        print(f"target {t['target']}: {t['measured']} -> {'met' if t['met'] else 'MISSED'} ({t['by']})")
    print(f"reproduce: {data['command']}")


def render_markdown(data: dict) -> str:
    """READINESS.md: method, the three measures per implementation, ratios, targets, machine, reproduce line."""
    res = data["readiness"]
    m = data["machine"]
    out = ["# Time to ready: prefork `svscan --s6` against s6-svscan + s6-supervise 2.11", "",
           f"Run {data['when']}; both implementations in the same run, each in its own tempdir. Ratios are "
           "prefork / s6 (below 1: prefork is ready sooner).", "",
           f"File system of the trees: **{data.get('filesystem', 'unknown')}** (`stat -f`; ext4 shows as "
           "ext2/ext3). On ext4 prefork swaps each status file in instead of renaming over the old one, which "
           "spares it the data write-out that ext4 does on such a rename (s6-supervise pays it); on tmpfs "
           "neither pays it (docs/CONTRACTS.md, Service status).", ""]
    load = m.get("load_average") or [0.0]
    if load[0] > 0.5 * m["nproc"]:
        out += [f"> **Busy machine:** 1-minute load average {load[0]:.2f} on {m['nproc']} CPUs at the start. "
                "Pairing the samples keeps the ratios fair; the absolute times are noisy.", ""]
    out += ["## Targets", "", *table(["target", "measured", "met", "margin"],
                                     [(t["target"], t["measured"], "yes" if t["met"] else "**no**", t["by"])
                                      for t in data["targets"]]), ""]
    out += ["## Method", "",
            "One service directory per implementation, made the same way: `down` (so it starts down), "
            f"`notification-fd` ({NOTIFICATION_FD}) and a Perl `run` that takes CLOCK_MONOTONIC as its first "
            f"statement, waits {res['delay_ms']:g} ms, takes the time again and writes a newline to descriptor "
            f"{NOTIFICATION_FD}. A sample: Debian's `s6-svwait -U` is started and waits (its FIFO is in "
            "`event/`); the benchmark takes t0 and runs Debian's `s6-svc -u`; s6-svwait's exit is seen on a "
            "pidfd (t1). Then `s6-svc -d` and `s6-svwait -D`, untimed. Every time is CLOCK_MONOTONIC, one clock "
            f"for every process. {res['samples']} samples per implementation, paired: each pair runs once on "
            f"each, back to back, in a random order (seed {res['seed']}), after one untimed warm-up sample each.",
            "",
            "- **process start → ready** (the target's measure): t1 minus the service's first statement.",
            "- **`s6-svc -u` → ready**: t1 - t0; it adds s6-svc's own run, the supervisor's start of `./run` "
            "and Perl's start-up.",
            "- **newline → ready**: t1 minus the moment just before the service writes its newline: the "
            "supervisor's share (read the pipe, write the status file, write `U` into the listeners' FIFOs) "
            "plus s6-svwait waking up and exiting.", ""]
    if res.get("listener"):
        out[-1:] = ["- **newline → `U` letter** and **`U` letter → returns** (`--listener`): the benchmark also keeps "
                    "a listener FIFO of its own in `event/` (opened read-write, as s6's listeners do) and notes when "
                    "the `U` letter arrives there, which splits the time into the supervisor's share and "
                    "s6-svwait's. That reader is one more process woken at the `U`. When its letter comes only after "
                    "s6-svwait's exit (the supervisor was preempted between two listeners' writes), the sample counts "
                    "the `U` at that exit.", ""]
    if FLOOR in res:
        out[-1:] = [f"- **{FLOOR}** (`--python-floor`): a third tree under `loadtest/readyfloor.py`, the least a "
                    "supervisor written in Python does on this path, each step as s6-supervise does it (status.new "
                    "renamed, `event/` listed by name) and nothing else (no table, no checks, no policy). It bounds "
                    "what any Python supervisor can reach on this machine.", ""]
    rows = []
    for key, label, _begin, _end in measures(res.get("listener", False)):
        for impl in impls(res):
            s = res[impl][key]
            rows.append((label, impl, f"{s['p50_ms']:.3f}", f"{s['p90_ms']:.3f}", f"{s['p99_ms']:.3f}",
                         f"{s['max_ms']:.3f}", f"{s['mean_ms']:.3f}", s["n"], s["timeouts"]))
    out += ["## Results", "", *table(["measure", "implementation", "p50 ms", "p90 ms", "p99 ms", "max ms", "mean ms",
                                      "n", "timeouts"], rows, left=2), ""]
    for name, table_key in (("prefork", "ratios"), (FLOOR, "floor_ratios")):
        for key, label, _begin, _end in measures(res.get("listener", False)) if table_key in res else ():
            r = res[table_key][key]
            out.append(f"**{label}, {name}/s6**: " + ", ".join(
                f"p{q} × {r[f'p{q}']:.3f} ({r[f'p{q}_interval'][0]:.3f}–{r[f'p{q}_interval'][1]:.3f})"
                for q in (50, 90, 99)) + ".  ")
    out += ["", "In brackets: 95% bootstrap intervals (each implementation's samples drawn again with replacement "
            "2000 times). An interval that straddles 1 means this run cannot tell the two apart there.", ""]
    out += machine_section(m, data.get("load_average_end") or (), f"s6 {m.get('s6') or 'unknown'}")
    out += reproduce_section(data["command"], data["commands"], "Commands run:")
    return "\n".join(out)


def write_chart(data: dict, path: Path) -> Path:
    """One CDF panel per measure, one line per implementation."""
    plt = pyplot()
    res = data["readiness"]
    shown = measures(res.get("listener", False))
    fig, axes = plt.subplots((len(shown) + 1) // 2, 2, figsize=(11, 4.2 * ((len(shown) + 1) // 2)), squeeze=False)
    for ax, (key, label, _begin, _end) in zip(axes.flat, shown, strict=False):
        for k, impl in enumerate(impls(res)):
            xs = res[impl][key]["samples_ms"]
            if xs:
                ys = [(i + 1) / len(xs) for i in range(len(xs))]
                ax.step(xs, ys, where="post", color=f"C{k}", label=impl)
        r = res["ratios"][key]
        ax.set_title(f"{label}\np50 s6 {res['s6'][key]['p50_ms']:.2f} ms, prefork {res['prefork'][key]['p50_ms']:.2f} ms;"
                     f" prefork/s6 p50 × {r['p50']:.2f}, p99 × {r['p99']:.2f}", fontsize=9)
        ax.set_xscale("log")  # the body of the distribution and its tail on one axis
        ax.set_xlabel("ms (log scale)")
        ax.set_ylabel("fraction of samples")
        ax.grid(alpha=0.3, which="both")
    for ax in list(axes.flat)[len(shown):]:
        ax.set_visible(False)
    title = (f"time to ready (s6-svwait -U), {res['samples']} samples each, service delay {res['delay_ms']:g} ms, "
             f"{data['machine']['nproc']} cpus")
    return finish_chart(fig, axes[0][0], title, path, bottom=0.02)


BENCH = Bench("readiness", "READINESS.md", "readiness.png", render_markdown, write_chart)


def main(argv: list[str] | None = None) -> int:
    return BENCH.main(parse_args(argv), benchmark, print_summary, (BenchError, OSError, subprocess.SubprocessError),
                      "both trees were torn down")


if __name__ == "__main__":
    sys.exit(main())
