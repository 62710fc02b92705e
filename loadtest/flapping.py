"""Flapping-tree benchmark: what a third of a tree restarting over and over costs prefork's svscan.

Three trees of N services under prefork's svscan, side by side for the same window:

- ``baseline``: N healthy services (the Perl latency service of loadtest/supervision.py);
- ``flapping``: the same, but F of them run a ``./run`` that exits 1 after a random 0..FLAP_MAX ms, with
  the restart policy's ``backoff-max`` file (docs/CONTRACTS.md, Restart policy): 1 s, 2 s, 4 s, ... up to
  the cap between starts;
- ``no_backoff`` (``--no-throttle-tree`` leaves it out): the same flappers without the file, so only
  daemontools' rule holds (a start at least a second after the previous one).

Every second a sampler thread reads each svscan's CPU (utime+stime from /proc/PID/stat, the scheduler's
run time from /proc/PID/schedstat), its memory (smaps_rollup: RSS, PSS, USS) and the service table's
start counters of the flappers.  Meanwhile the main thread drives `d`→TERM operations on the healthy
services, one on each tree back to back in a random order (supervision.py's paired_op), paced evenly
over the window so the operations stay a small, equal load on every tree; `u` (not timed) brings each
back.  Daemontools has no back-off, so it is not run: the ``no_backoff`` tree is its restart rule.

Nothing here asserts a speed; tests/test_loadtest_flapping.py checks that a tiny run has its figures.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from loadtest.machine import machine_facts
from loadtest.reporting import Bench, finish_chart, log, machine_section, pyplot, reproduce_section, table
from loadtest.reporting import reproduce_command as spelled_out
from loadtest.supervision import (
    PERL_RUN,
    PREFORK,
    BenchError,
    LatencyRig,
    Tree,
    latency_summary,
    paired_op,
    ratio_interval,
    read_cpu,
    read_smaps_rollup,
    split_evenly,
    stop_all,
)

TREES = ("baseline", "flapping", "no_backoff")
LABELS = {"baseline": "A baseline", "flapping": "B flapping, back-off", "no_backoff": "C flapping, no back-off"}
# A flapper: Perl started at once, sleeps a random 0..MAX ms, exits 1 (a failure); prints nothing.
FLAP_RUN = "#!{perl}\nselect(undef, undef, undef, rand({seconds:.3f}));\nexit 1;\n"
TARGET_CPU_PCT = 2.0  # svscan's CPU, % of one core, in every 10 s bin of the window
TARGET_FLAT_KIB = 256  # RSS growth (median of the last 10 samples - median of the first 10) below this
TARGET_P99_RATIO = 1.0  # d→TERM p99 of the flapping tree / the baseline tree
BIN_SECONDS = 10  # default --bin-seconds: the bins alternate, quiet (no operations) then operations
OP_MARGIN = 0.5  # seconds before the end of an operations bin after which no operation starts
EDGE_SAMPLES = 10  # samples at each end of the window whose median is "start" and "end" memory
SAMPLE_SECONDS = 1.0
PROGRESS_SECONDS = 10


class HealthyView:
    """A tree as LatencyRig sees it: only its healthy services (the flappers print no start line)."""

    def __init__(self, tree: Tree, names: list[str]) -> None:
        self.tree = tree
        self.names = names

    def __getattr__(self, attr: str) -> object:
        return getattr(self.tree, attr)


def flapper_names(names: list[str], count: int) -> list[str]:
    """COUNT of NAMES spread evenly through the tree (every third for a third), so each kind meets every part of the scan."""
    if count <= 0:
        return []
    step = len(names) / count
    return [names[int(i * step)] for i in range(count)]


def make_tree(kind: str, args: argparse.Namespace) -> tuple[Tree, list[str]]:
    """The tree of KIND (not started) and its flappers: their ./run replaced, with backoff-max for ``flapping``."""
    tree = Tree(kind, args.prefork, args.services, PERL_RUN.format(perl=args.perl), args.workdir)
    flappers = [] if kind == "baseline" else flapper_names(tree.names, args.flapping)
    try:
        for name in flappers:
            d = tree.scan / name
            (d / "run").write_text(FLAP_RUN.format(perl=args.perl, seconds=args.flap_max_ms / 1000))
            if kind == "flapping":
                (d / "backoff-max").write_text(f"{args.backoff_max}\n")
    except BaseException:
        shutil.rmtree(tree.root, ignore_errors=True)
        raise
    return tree, flappers


def table_counts(tree: Tree, flappers: set[str]) -> dict[str, int] | None:
    """Starts and restarts of the flappers, restarts of the others, the largest back-off now (ms), from the
    service table svscan keeps; None if it cannot be read."""
    from prefork.control import servicetable_read

    if not tree.table:
        return None
    try:
        snap = servicetable_read.read(tree.table)
    except servicetable_read.ServiceTableError:
        return None
    out = {"starts": 0, "restarts": 0, "healthy_restarts": 0, "backoff_ms": 0}
    for e in snap.entries:
        if e.name in flappers:
            out["starts"] += e.starts
            out["restarts"] += e.restarts
            out["backoff_ms"] = max(out["backoff_ms"], e.backoff_ms)
        else:
            out["healthy_restarts"] += e.restarts
    return out


class Sampler(threading.Thread):
    """Every SAMPLE_SECONDS: each svscan's CPU and memory and its flappers' counters; a progress line every 10 s."""

    def __init__(self, trees: dict[str, Tree], flappers: dict[str, set[str]], progress: dict[str, int],
                 seconds: float) -> None:
        super().__init__(name="flapping-sampler", daemon=True)
        self.trees = trees
        self.flappers = flappers
        self.progress = progress
        self.seconds = seconds
        self.samples: dict[str, list[dict]] = {kind: [] for kind in trees}
        self.stop_event = threading.Event()
        self.t0 = 0.0
        self.error: str | None = None

    def sample(self, t: float) -> None:
        for kind, tree in self.trees.items():
            row: dict = {"t": round(t, 3)}
            try:
                row.update(read_cpu(tree.pid))
                row.update(read_smaps_rollup(tree.pid))
            except (OSError, ValueError, IndexError) as e:
                self.error = f"{kind}: svscan {tree.pid} cannot be read: {e}"
                continue
            counts = table_counts(tree, self.flappers[kind])
            if counts is not None:
                row.update(counts)
            self.samples[kind].append(row)

    def run(self) -> None:
        self.t0 = time.monotonic()
        try:
            self._loop()
        except Exception as e:  # the main thread reports it: a window with a dead sampler has no figures
            self.error = f"the sampler failed: {e!r}"

    def _loop(self) -> None:
        for k in range(int(self.seconds / SAMPLE_SECONDS) + 1):
            delay = self.t0 + k * SAMPLE_SECONDS - time.monotonic()
            if delay > 0 and self.stop_event.wait(delay):
                return
            self.sample(time.monotonic() - self.t0)
            if k and k % PROGRESS_SECONDS == 0:
                self.report(k)

    def report(self, k: int) -> None:
        parts = []
        for kind, rows in self.samples.items():
            if len(rows) < 2:
                continue
            a, b = rows[max(0, len(rows) - 1 - PROGRESS_SECONDS)], rows[-1]
            pct = 100 * (b["run_s"] - a["run_s"]) / max(b["t"] - a["t"], 1e-9)
            starts = f", flapper starts {b['starts']}" if self.flappers[kind] and "starts" in b else ""
            parts.append(f"{kind} CPU {pct:.2f}% RSS {b['rss'] / 2**20:.1f} MiB{starts}")
        log(f"flapping: {k}/{self.seconds:g} s: " + "; ".join(parts) + f"; d→TERM ops {self.progress['ops']}")


# -- figures from the samples ----------------------------------------------------------------
def _median(values: list[float]) -> float:
    s = sorted(values)
    if not s:
        return 0.0
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def is_ops_bin(index: int) -> bool:
    """Bins alternate: the first is quiet (no operations), the second has operations, and so on."""
    return index % 2 == 1


def _pct(run_s: float, span: float) -> float:
    return 100 * run_s / span if span > 0 else 0.0


def cpu_figures(rows: list[dict], bin_seconds: int) -> dict:
    """CPU % of one core (schedstat; ticks too) over the window, per BIN_SECONDS bin, over the quiet bins and the
    operations bins apart."""
    if len(rows) < 2:
        return {"mean_pct": 0.0, "mean_pct_ticks": 0.0, "bins": [], "quiet_pct": 0.0, "ops_pct": 0.0,
                "max_quiet_bin_pct": 0.0, "max_bin_pct": 0.0, "switches_per_s": 0.0}
    span = rows[-1]["t"] - rows[0]["t"]
    bins = []
    for j, i in enumerate(range(0, len(rows) - 1, bin_seconds)):
        a, b = rows[i], rows[min(i + bin_seconds, len(rows) - 1)]
        if b["t"] - a["t"] >= bin_seconds / 2:  # a short tail bin would be noise
            bins.append({"t": a["t"], "t_end": b["t"], "ops": is_ops_bin(j), "run_s": b["run_s"] - a["run_s"],
                         "pct": _pct(b["run_s"] - a["run_s"], b["t"] - a["t"])})

    def mean(chosen: list[dict]) -> float:
        return _pct(sum(b["run_s"] for b in chosen), sum(b["t_end"] - b["t"] for b in chosen))

    quiet = [b for b in bins if not b["ops"]]
    return {"mean_pct": _pct(rows[-1]["run_s"] - rows[0]["run_s"], span),
            "mean_pct_ticks": _pct(rows[-1]["cpu_s"] - rows[0]["cpu_s"], span),
            "bins": bins, "quiet_pct": mean(quiet), "ops_pct": mean([b for b in bins if b["ops"]]),
            "max_quiet_bin_pct": max((b["pct"] for b in quiet), default=0.0),
            "max_bin_pct": max((b["pct"] for b in bins), default=0.0),
            "switches_per_s": (rows[-1]["switches"] - rows[0]["switches"]) / span if span else 0.0}


def memory_figures(rows: list[dict]) -> dict:
    """Start and end (median of EDGE_SAMPLES samples each) of RSS, PSS, USS; growth; RSS least-squares slope."""
    if not rows:
        return {}
    n = min(EDGE_SAMPLES, max(1, len(rows) // 3))
    out: dict = {}
    for key in ("rss", "pss", "uss"):
        first = _median([r[key] for r in rows[:n]])
        last = _median([r[key] for r in rows[-n:]])
        out[key] = {"start": first, "end": last, "growth": last - first, "peak": max(r[key] for r in rows)}
    ts = [r["t"] for r in rows]
    ys = [r["rss"] for r in rows]
    mt, my = sum(ts) / len(ts), sum(ys) / len(ys)
    var = sum((t - mt) ** 2 for t in ts)
    slope = sum((t - mt) * (y - my) for t, y in zip(ts, ys, strict=True)) / var if var else 0.0
    out["rss_slope_kib_per_min"] = slope * 60 / 1024
    out["edge_samples"] = n
    return out


def flapper_figures(rows: list[dict], flappers: int) -> dict:
    """Starts of the flappers in the window and in all (table counters), the largest back-off seen."""
    have = [r for r in rows if "starts" in r]
    if not have or not flappers:
        return {"flappers": flappers, "starts_window": 0, "starts_total": 0, "restarts_total": 0, "peak_per_sample": 0,
                "per_flapper_per_min": 0.0, "backoff_ms_max": 0, "healthy_restarts": have[-1]["healthy_restarts"]
                if have else 0, "table": bool(have)}
    span = have[-1]["t"] - have[0]["t"]
    window = have[-1]["starts"] - have[0]["starts"]
    peak = max((b["starts"] - a["starts"] for a, b in zip(have, have[1:], strict=False)), default=0)
    return {"flappers": flappers, "starts_window": window, "starts_total": have[-1]["starts"], "peak_per_sample": peak,
            "restarts_total": have[-1]["restarts"],
            "per_flapper_per_min": window / flappers * 60 / span if span else 0.0,
            "backoff_ms_max": max(r["backoff_ms"] for r in have), "healthy_restarts": have[-1]["healthy_restarts"],
            "table": True}


def ratios(lat: dict[str, dict]) -> dict:
    """d→TERM p50 and p99 of each flapping tree over the baseline's, with 95% bootstrap intervals."""
    base = lat["baseline"]
    out = {}
    for kind in TREES[1:]:
        if kind not in lat:
            continue
        s = lat[kind]
        row = {}
        for q in (50, 99):
            key = f"p{q}_ms"
            row[f"p{q}"] = s[key] / base[key] if base[key] else 0.0
            row[f"p{q}_interval"] = list(ratio_interval(s["samples_ms"], base["samples_ms"], q))
        out[kind] = row
    return out


def evaluate_targets(data: dict) -> list[dict]:
    """The three targets, judged on the flapping (back-off) tree."""
    t = data["trees"]["flapping"]
    cpu, mem = t["cpu"], t["memory"]
    bin_s = data["config"]["bin_seconds"]
    out = [{"target": f"svscan CPU < {TARGET_CPU_PCT:g}% of one core in every quiet {bin_s} s bin",
            "measured": f"highest quiet bin {cpu['max_quiet_bin_pct']:.3f}%, quiet bins {cpu['quiet_pct']:.3f}%",
            "met": cpu["max_quiet_bin_pct"] < TARGET_CPU_PCT,
            "by": f"{cpu['max_quiet_bin_pct'] - TARGET_CPU_PCT:+.3f} points against the target"}]
    growth = mem["rss"]["growth"] / 1024
    out.append({"target": f"svscan memory flat: RSS growth < {TARGET_FLAT_KIB} KiB",
                "measured": f"{growth:+.0f} KiB RSS ({mem['pss']['growth'] / 1024:+.0f} KiB PSS), slope "
                            f"{mem['rss_slope_kib_per_min']:+.1f} KiB/min",
                "met": growth < TARGET_FLAT_KIB, "by": f"{growth - TARGET_FLAT_KIB:+.0f} KiB against the target"})
    r = data["ratios"]["flapping"]
    lo, hi = r["p99_interval"]
    verdict = ("the flapping tree is faster beyond noise" if hi < 1 else "the baseline is faster beyond noise"
               if lo > 1 else "the difference is within noise")
    out.append({"target": f"`d`→TERM p99 ≤ {TARGET_P99_RATIO:g} × the baseline tree's", "measured": f"{r['p99']:.3f} ×",
                "met": r["p99"] <= TARGET_P99_RATIO, "by": f"95% interval {lo:.3f}–{hi:.3f} × ({verdict})"})
    return out


# -- the run ---------------------------------------------------------------------------------
def ops_bins(seconds: float, bin_seconds: int) -> list[int]:
    """Indexes of the whole bins of the window that carry operations."""
    return [j for j in range(int(seconds // bin_seconds)) if is_ops_bin(j)]


def drive(rigs: dict[str, LatencyRig], ops: int, seconds: float, bin_seconds: int, rng: random.Random,
          progress: dict[str, int], sampler: Sampler) -> None:
    """OPS `d`→TERM groups spread evenly over the operations bins of the window (from the sampler's start), none
    starting in the last OP_MARGIN s of a bin; a bin's unfinished share moves to the next. Returns at the end."""
    start = sampler.t0
    bins = ops_bins(seconds, bin_seconds)
    margin = min(OP_MARGIN, bin_seconds / 4)
    usable = bin_seconds - margin
    carried = 0
    for j, share in zip(bins, split_evenly(ops, len(bins)), strict=True):
        quota, carried = share + carried, 0
        first = start + j * bin_seconds
        for m in range(quota):
            wait = first + m * usable / quota - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if time.monotonic() >= first + usable:
                carried = quota - m
                break
            paired_op(rigs, "term", rng)  # type: ignore[arg-type]
            progress["ops"] += 1
    left = start + seconds - time.monotonic()
    if left > 0:
        time.sleep(left)


def benchmark(args: argparse.Namespace) -> dict:
    """The whole run; BenchError when a svscan cannot start or stops answering."""
    if not os.access(args.prefork, os.X_OK):
        raise BenchError(f"prefork's svscan {args.prefork} is not an executable file")
    if not os.access(args.perl, os.X_OK):
        raise BenchError(f"the services need Perl; {args.perl} is not executable (--perl)")
    facts = machine_facts()
    log(f"machine: {facts['cpu_model']}, {facts['nproc']} cpus, kernel {facts['kernel']}, python {facts['python']}, "
        f"load average {' '.join(f'{x:.2f}' for x in facts['load_average'])}")
    kinds = [k for k in TREES if k != "no_backoff" or not args.no_throttle_tree]
    data: dict = {"command": reproduce_command(args), "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": facts,
                  "config": {"services": args.services, "flapping": args.flapping, "backoff_max_ms": args.backoff_max,
                             "flap_max_ms": args.flap_max_ms, "seconds": args.seconds, "ops": args.ops,
                             "seed": args.seed, "settle": args.settle, "trees": kinds,
                             "sample_seconds": SAMPLE_SECONDS, "bin_seconds": args.bin_seconds,
                             "op_margin": min(OP_MARGIN, args.bin_seconds / 4)},
                  "commands": {kind: f"{args.prefork} DIR" for kind in kinds}}
    trees: dict[str, Tree] = {}
    flappers: dict[str, set[str]] = {}
    rigs: dict[str, LatencyRig] = {}
    sampler: Sampler | None = None
    progress = {"ops": 0}
    try:
        for kind in kinds:
            tree, names = make_tree(kind, args)
            trees[kind] = tree
            flappers[kind] = set(names)
            tree.start()
        for kind, tree in trees.items():
            healthy = [n for n in tree.names if n not in flappers[kind]]
            rig = LatencyRig(HealthyView(tree, healthy))  # type: ignore[arg-type]
            rig.ready(30.0 + 0.05 * args.services)
            rigs[kind] = rig
        log(f"flapping: {len(trees)} trees of {args.services} services up ({args.flapping} flapping in "
            f"{', '.join(k for k in kinds if k != 'baseline')}); settling {args.settle:g} s")
        time.sleep(args.settle)
        for tree in trees.values():
            tree.check_alive()
        sampler = Sampler(trees, flappers, progress, args.seconds)
        sampler.start()
        for _ in range(100):  # the window starts at the sampler's first sample
            if sampler.samples[kinds[0]] or sampler.error or not sampler.is_alive():
                break
            time.sleep(0.01)
        log(f"flapping: measuring {args.seconds:g} s, {args.ops} d→TERM operations on each tree")
        drive(rigs, args.ops, args.seconds, args.bin_seconds, random.Random(args.seed), progress, sampler)
        sampler.join(SAMPLE_SECONDS * 3)
        if sampler.error:
            raise BenchError(sampler.error)
        for tree in trees.values():
            tree.check_alive()
    finally:
        if sampler is not None:
            sampler.stop_event.set()
            sampler.join(5.0)
        for rig in rigs.values():
            rig.close()
        stop_all(list(trees.values()))
    assert sampler is not None
    out: dict = {}
    lat: dict[str, dict] = {}
    for kind in kinds:
        rows = sampler.samples[kind]
        lat[kind] = latency_summary(rigs[kind].samples["term"], rigs[kind].timeouts["term"])
        out[kind] = {"label": LABELS[kind], "flappers": len(flappers[kind]),
                     "backoff_max_ms": args.backoff_max if kind == "flapping" else None,
                     "samples": rows, "cpu": cpu_figures(rows, args.bin_seconds), "memory": memory_figures(rows),
                     "starts": flapper_figures(rows, len(flappers[kind])), "term": lat[kind]}
    data["trees"] = out
    data["ratios"] = ratios(lat)
    data["targets"] = evaluate_targets(data)
    data["load_average_end"] = os.getloadavg()
    return data


# -- output ----------------------------------------------------------------------------------
def print_summary(data: dict) -> None:
    for kind, t in data["trees"].items():
        c, m, s, lat = t["cpu"], t["memory"], t["starts"], t["term"]
        print(f"{kind:<10} svscan CPU quiet bins {c['quiet_pct']:.3f}% (highest {c['max_quiet_bin_pct']:.3f}%), "
              f"operations bins {c['ops_pct']:.3f}%, "
              f"RSS {m['rss']['start'] / 2**20:.2f}→{m['rss']['end'] / 2**20:.2f} MiB "
              f"({m['rss']['growth'] / 1024:+.0f} KiB), flapper starts in window {s['starts_window']}, "
              f"d→TERM p50 {lat['p50_ms']:.3f} ms p99 {lat['p99_ms']:.3f} ms n {lat['n']} timeouts {lat['timeouts']}")
    for kind, r in data["ratios"].items():
        print(f"d→TERM {kind}/baseline p50 {r['p50']:.3f} (95% {r['p50_interval'][0]:.3f}–{r['p50_interval'][1]:.3f})"
              f"  p99 {r['p99']:.3f} (95% {r['p99_interval'][0]:.3f}–{r['p99_interval'][1]:.3f})")
    for t in data["targets"]:
        print(f"target {t['target']}: {t['measured']} -> {'met' if t['met'] else 'MISSED'} ({t['by']})")
    print(f"reproduce: {data['command']}")


def _kib(n: float) -> str:
    return f"{n / 1024:+.0f}"


def render_markdown(data: dict) -> str:
    """FLAPPING.md: targets, method, CPU, memory, starts, latency, machine, the reproduce line."""
    m, cfg, trees = data["machine"], data["config"], data["trees"]
    out = ["# Flapping tree: prefork svscan with a third of its services restarting", "",
           f"Run {data['when']}: {len(trees)} trees of {cfg['services']} services under prefork's svscan, side by "
           f"side for the same {cfg['seconds']:g} s window.", ""]
    load = m.get("load_average") or [0.0]
    if load[0] > 0.5 * m["nproc"]:
        out += [f"> **Busy machine:** 1-minute load average {load[0]:.2f} on {m['nproc']} CPUs at the start. "
                "Latencies are noisy; pairing the operations keeps the ratios fair.", ""]
    out += ["## Targets", ""]
    out += table(["target", "measured", "met", "margin"],
                 [(t["target"], t["measured"], "yes" if t["met"] else "**no**", t["by"]) for t in data["targets"]], left=4)
    flap_s = cfg["flap_max_ms"] / 1000
    out += ["", "## Method", "",
            f"- **A baseline**: {cfg['services']} healthy Perl services (the latency service of the supervision "
            "benchmark: it prints a CLOCK_MONOTONIC time when it starts and in its TERM handler).",
            f"- **B flapping**: the same tree, but {cfg['flapping']} services, spread evenly through it, run a "
            f"`./run` (Perl) that exits 1 after a random 0–{flap_s:g} s, and have `backoff-max` = "
            f"{cfg['backoff_max_ms']} ms: starts 1 s, 2 s, 4 s, ... apart, at most {cfg['backoff_max_ms'] / 1000:g} s "
            "(docs/CONTRACTS.md, Restart policy). The other services are A's."]
    if "no_backoff" in trees:
        out.append("- **C flapping, no back-off**: B without the `backoff-max` files: daemontools' rule only (a start "
                   "at least a second after the previous one), for comparison. daemontools itself has no back-off, so "
                   "it is not run.")
    out += [f"- After every healthy service has reported its start and {cfg['settle']:g} s of settling, a sampler "
            f"reads each svscan every {cfg['sample_seconds']:g} s: utime+stime (`/proc/PID/stat`), the scheduler's "
            "run time (`/proc/PID/schedstat`, ns precision: the CPU figures below), RSS/PSS/USS "
            "(`/proc/PID/smaps_rollup`), and the flappers' start counters from the service table svscan keeps.",
            f"- The window is cut into {cfg['bin_seconds']} s bins that alternate: a quiet bin (nothing but the "
            "trees themselves), then a bin of operations, and so on. The operations cost svscan CPU of their own "
            "(a stop, an exit, a start each), so the CPU target is judged on the quiet bins; the latency comes from "
            "the others, in the same run.",
            f"- {cfg['ops']} `d`→TERM operations per tree, spread evenly over the operations bins (none started in "
            f"the last {cfg.get('op_margin', OP_MARGIN):g} s of a bin): the benchmark writes `d` into a healthy "
            "service's `supervise/control` (opened beforehand) and the service's TERM handler timestamps its first "
            "statement; `u` (not timed) brings it back. Each operation on A runs back to back with one on each other "
            f"tree, in a random order (seed {cfg['seed']}), so they meet the same moment of the machine. A service is "
            "touched only after it has been up 1.25 s.", ""]
    out += ["## svscan CPU", "",
            "% of one core: in the quiet bins, in the operations bins, over the whole window (also from utime+stime, "
            "clock-tick resolution), and the highest quiet bin. The window opens "
            f"{cfg['settle']:g} s after the flappers' first start (plus the time the healthy services took to come "
            "up), so its first bins may still see the back-off's short first delays (1 s, 2 s, 4 s).", ""]
    out += table(["tree", "quiet bins %", "operations bins %", "window %", "window % (ticks)", "highest quiet bin %",
                  "context switches/s"],
                 [(t["label"], f"{t['cpu']['quiet_pct']:.3f}", f"{t['cpu']['ops_pct']:.3f}",
                   f"{t['cpu']['mean_pct']:.3f}", f"{t['cpu']['mean_pct_ticks']:.3f}",
                   f"{t['cpu']['max_quiet_bin_pct']:.3f}", f"{t['cpu']['switches_per_s']:.1f}")
                  for t in trees.values()])
    base = trees["baseline"]["cpu"]["quiet_pct"]
    extra = ", ".join(f"{t['label']} {t['cpu']['quiet_pct'] - base:+.3f} points" for k, t in trees.items()
                      if k != "baseline")
    out += ["", f"What flapping adds over the baseline in the quiet bins: {extra}.", ""]
    bins = [t["cpu"]["bins"] for t in trees.values()]
    if bins and bins[0]:
        out += ["Per bin (% of one core):", ""]
        rows = []
        for i, b in enumerate(bins[0]):
            rows.append([f"{b['t']:.0f}–{b['t_end']:.0f}", "yes" if b["ops"] else "no",
                         *(f"{bb[i]['pct']:.3f}" if i < len(bb) else "" for bb in bins)])
        out += table(["seconds", "operations", *(t["label"] for t in trees.values())], rows, left=2) + [""]
    n_edge = next(iter(trees.values()))["memory"].get("edge_samples", EDGE_SAMPLES)
    out += ["## svscan memory", "",
            f"Start and end are the medians of the first and the last {n_edge} samples of the window. Criterion "
            f"for flat: RSS grows by less than {TARGET_FLAT_KIB} KiB over the window (a leak of a few bytes per "
            "start would show: the trees make hundreds to thousands of starts). The slope is a least-squares fit "
            "of every RSS sample.", ""]
    mrows = []
    for t in trees.values():
        mm = t["memory"]
        mrows.append((t["label"], f"{mm['rss']['start'] / 2**20:.2f}", f"{mm['rss']['end'] / 2**20:.2f}",
                      _kib(mm["rss"]["growth"]), _kib(mm["pss"]["growth"]), _kib(mm["uss"]["growth"]),
                      f"{mm['rss_slope_kib_per_min']:+.1f}", f"{mm['rss']['peak'] / 2**20:.2f}"))
    out += table(["tree", "RSS start MiB", "RSS end MiB", "RSS growth KiB", "PSS growth KiB", "USS growth KiB",
                  "RSS slope KiB/min", "RSS peak MiB"], mrows) + [""]
    out += ["## Flapping starts", "",
            "From the service table's counters (starts of `./run`; restarts are the starts svscan made because a "
            "service exited while wanted up). A healthy service is restarted only by an operation whose `u` arrives "
            "while the TERMed service is still exiting (at most one per operation). \"Most in one sample\" is the "
            f"largest number of flapper starts between two samples ({cfg['sample_seconds']:g} s apart): flappers "
            "that started together and die alike restart together.", ""]
    out += table(["tree", "flappers", "starts in window", "per flapper per minute", "most in one sample",
                  "starts in all", "largest back-off ms", "healthy restarts"],
                 [(t["label"], t["starts"]["flappers"], t["starts"]["starts_window"],
                   f"{t['starts']['per_flapper_per_min']:.1f}", t["starts"].get("peak_per_sample", 0),
                   t["starts"]["starts_total"],
                   t["starts"]["backoff_ms_max"], t["starts"]["healthy_restarts"]) for t in trees.values()]) + [""]
    out += ["## Control latency of the healthy services", "",
            "`d`→TERM: from the write(2) of `d` to the first statement of the service's TERM handler, "
            "CLOCK_MONOTONIC in both processes.", ""]
    out += table(["tree", "p50 ms", "p90 ms", "p99 ms", "max ms", "n", "timeouts"],
                 [(t["label"], f"{t['term']['p50_ms']:.3f}", f"{t['term']['p90_ms']:.3f}", f"{t['term']['p99_ms']:.3f}",
                   f"{t['term']['max_ms']:.3f}", t["term"]["n"], t["term"]["timeouts"]) for t in trees.values()])
    out.append("")
    for kind, r in data["ratios"].items():
        out.append(f"**{LABELS[kind]} / A baseline**: p50 × {r['p50']:.3f} (95% interval {r['p50_interval'][0]:.3f}–"
                   f"{r['p50_interval'][1]:.3f}), p99 × {r['p99']:.3f} (95% interval {r['p99_interval'][0]:.3f}–"
                   f"{r['p99_interval'][1]:.3f}).  ")
    out += ["", "The intervals come from a bootstrap: each tree's samples are drawn again with replacement 2000 "
            "times and the ratio recomputed. An interval that straddles 1 means this run cannot tell the two apart "
            "at that percentile.", ""]
    out += machine_section(m, data.get("load_average_end") or (), "prefork's svscan only (daemontools has no back-off)")
    out += reproduce_section(data["command"], data["commands"], "svscan run (one per tree):")
    return "\n".join(out)


def write_chart(data: dict, path: Path) -> Path:
    """svscan CPU % per bin, RSS over time, flapper starts over time: one line per tree in each panel."""
    plt = pyplot()

    trees = data["trees"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4), squeeze=False)
    cpu_ax, mem_ax, start_ax = axes[0]
    for k, t in enumerate(trees.values()):
        colour = f"C{k}"
        bins = t["cpu"]["bins"]
        cpu_ax.plot([(b["t"] + b["t_end"]) / 2 for b in bins], [b["pct"] for b in bins],
                    marker="o", color=colour, label=t["label"])
        rows = t["samples"]
        mem_ax.plot([r["t"] for r in rows], [r["rss"] / 2**20 for r in rows], color=colour)
        if t["flappers"]:
            have = [r for r in rows if "starts" in r]
            if have:
                start_ax.plot([r["t"] for r in have], [r["starts"] - have[0]["starts"] for r in have], color=colour)
    for b in next(iter(trees.values()))["cpu"]["bins"]:
        if b["ops"]:
            cpu_ax.axvspan(b["t"], b["t_end"], color="0.9", lw=0)
    cpu_ax.axhline(TARGET_CPU_PCT, color="red", ls="--", lw=1, label=f"target {TARGET_CPU_PCT:g}% (quiet bins)")
    cpu_ax.set_ylim(bottom=0)
    cpu_ax.set_title(f"svscan CPU, % of one core per {data['config']['bin_seconds']} s\n(grey: bins with "
                     "d→TERM operations)", fontsize=10)
    mem_ax.set_title("svscan RSS, MiB")
    start_ax.set_title("flapper starts since the window began")
    for ax in axes[0]:
        ax.set_xlabel("seconds into the window")
        ax.grid(alpha=0.3)
    cfg = data["config"]
    title = (f"prefork svscan, {cfg['services']} services, {cfg['flapping']} flapping, backoff-max "
             f"{cfg['backoff_max_ms']} ms, {data['machine']['nproc']} cpus")
    return finish_chart(fig, cpu_ax, title, path)


BENCH = Bench("flapping", "FLAPPING.md", "flapping.png", render_markdown, write_chart)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m loadtest.flapping", description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, default=200, help="services per tree (default 200)")
    ap.add_argument("--flapping", type=int, default=67, help="flapping services in trees B and C (default 67)")
    ap.add_argument("--backoff-max", type=int, default=8000, help="backoff-max of tree B's flappers, ms "
                    "(default 8000)")
    ap.add_argument("--flap-max-ms", type=int, default=200, help="a flapper exits after a random 0..this many ms "
                    "(default 200)")
    ap.add_argument("--seconds", type=float, default=120.0, help="measurement window (default 120)")
    ap.add_argument("--ops", type=int, default=480, help="d→TERM operations per tree, paced over the operations "
                    "bins (default 480)")
    ap.add_argument("--bin-seconds", type=int, default=BIN_SECONDS, help="length of a bin; bins alternate quiet "
                    f"(no operations) and operations, quiet first (default {BIN_SECONDS})")
    ap.add_argument("--seed", type=int, default=1, help="seed of the order within each group of operations "
                    "(default 1)")
    ap.add_argument("--settle", type=float, default=6.0, help="seconds after every healthy service is up before the "
                    "window (default 6: past one 5 s rescan)")
    ap.add_argument("--no-throttle-tree", action="store_true", help="leave out tree C (flapping without back-off)")
    ap.add_argument("--prefork", default=PREFORK, help="prefork's svscan console script")
    ap.add_argument("--perl", default=shutil.which("perl") or "/usr/bin/perl", help="Perl for the services")
    ap.add_argument("--workdir", default=None, help="where the service trees are made (default: the temp dir)")
    BENCH.add_options(ap)
    args = ap.parse_args(argv)
    if args.services < 3 or not 0 < args.flapping <= args.services - 2:
        ap.error("--services must be at least 3 and --flapping between 1 and --services - 2 (two stay healthy)")
    if args.backoff_max < 1 or not 0 <= args.flap_max_ms <= 10_000:
        ap.error("--backoff-max must be positive and --flap-max-ms 0..10000")
    if args.bin_seconds < 2 or args.seconds < 2 * args.bin_seconds or args.ops < 1 or args.settle < 0:
        ap.error("--bin-seconds must be at least 2, --seconds at least two bins (a quiet one and one with operations), "
                 "--ops positive and --settle not negative")
    return args


def reproduce_command(args: argparse.Namespace) -> str:
    """Every setting spelled out, so the line reruns this exact benchmark even if defaults change."""
    parts = ["--services", str(args.services), "--flapping", str(args.flapping), "--backoff-max",
             str(args.backoff_max), "--flap-max-ms", str(args.flap_max_ms), "--seconds", f"{args.seconds:g}",
             "--ops", str(args.ops), "--bin-seconds", str(args.bin_seconds), "--seed", str(args.seed),
             "--settle", f"{args.settle:g}"]
    if args.no_throttle_tree:
        parts.append("--no-throttle-tree")
    if args.prefork != PREFORK:
        parts += ["--prefork", args.prefork]
    return spelled_out("loadtest.flapping", parts, args.publish)



def main(argv: list[str] | None = None) -> int:
    return BENCH.main(parse_args(argv), benchmark, print_summary, (BenchError, OSError, subprocess.SubprocessError),
                      "every service tree was torn down")


if __name__ == "__main__":
    sys.exit(main())
