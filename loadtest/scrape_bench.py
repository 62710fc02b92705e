"""Scrape benchmark: prefork's collector (the scoreboard) against prometheus_client's multiprocess mode, same run.

For W workers (1, 8, 64) after R past worker restarts (0, 10,000) each side is set up as a server with that
history would leave it, then scraped:

- ``prefork``: one scoreboard of W slots, written through ``prefork.scoreboard``'s writer the way the master
  and its workers write it: every worker life (W + R of them) takes a slot round-robin, stores its pid,
  start time and the slot's generation, and adds its connections to the slot's counters (cumulative over
  generations); the master counts the restarts.  The file keeps its size whatever R is.
- ``multiprocess``: a ``PROMETHEUS_MULTIPROC_DIR`` filled by prometheus_client's own ``MultiProcessValue``,
  the pid it records switched to each simulated worker in turn (a restart is a new pid).  Every worker life
  leaves ``counter_PID.db`` and ``histogram_PID.db`` behind, as that mode does; live workers also hold a
  ``gauge_livesum_PID.db``, which ``mark_process_dead`` removes when the worker dies (gunicorn's
  ``child_exit`` hook).  Scrapes merge every file.

Both hold the same families with the same values: connections accepted, denied, dropped, program exits by
class, the connection-duration histogram (the scoreboard's buckets) and active connections, each worker
life serving ``--per-life`` connections; every case checks that both expositions report the same
``tcpserver_connections_accepted_total`` (W + R) x per-life.  prefork's exposition also carries its
master-level families (limit, workers, restarts, start time, the exporter's own), so it is the larger one.

Measured per case, in two ways:

- ``http``: a real server process scraped over HTTP on 127.0.0.1, a new connection per scrape as
  Prometheus makes them: ``prefork-exporter --scoreboard PATH --listen 127.0.0.1:0`` against
  prometheus_client's ``start_http_server`` over a registry with a ``MultiProcessCollector`` (this module's
  ``--serve-multiprocess DIR``).  Latency from connect to the last byte; CPU per scrape is the server
  process's user+system time over the scrapes (``/proc``, all threads).
- ``collect``: the call a scrape makes, in this process: ``SharedMemoryCollector.render()`` (what
  prefork-exporter serves) against ``generate_latest()`` of the multiprocess registry; wall and CPU time.

A case is scraped ``--warmup`` times unmeasured, then until at least ``--min-scrapes`` and ``--seconds`` are
done (at most ``--max-scrapes``).  The sides alternate, case by case.  The target: prefork's
scrape time independent of the past workers and under 5 ms at 64 workers.  Nothing here asserts a speed;
tests/test_loadtest_scrape.py checks the structure on tiny counts.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadtest import reporting
from loadtest.machine import machine_facts
from loadtest.reporting import ROOT, Bench, finish_chart, log, machine_section, pyplot, reproduce_section
from loadtest.reporting import reproduce_command as spelled_out

EXPORTER = str(Path(sys.executable).parent / "prefork-exporter")
IMPLS = ("prefork", "multiprocess")
MODES = ("http", "collect")
SERVICE = "bench"
FAKE_PID = 1 << 23  # above Linux's largest pid_max (2^22): never a live process
TARGET_MS = 5.0
TARGET_WORKERS = 64
GROWTH_LIMIT = 1.5  # "independent of past workers": the median after the most restarts within 1.5x of after the fewest
DURATION_S = 0.01  # every simulated connection lasts 10 ms
LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)/metrics")
ENV = {"PATH": "/usr/bin:/bin"}


# -- building the two histories ------------------------------------------------------------------------
def build_scoreboard(path: Path, workers: int, restarts: int, per_life: int) -> dict:
    """A scoreboard as W workers leave it after R restarts (the writer's own API); facts about it."""
    from prefork import scoreboard as sb

    board = sb.ScoreboardFile(str(path), workers, max(40, workers), os.getpid(), SERVICE)
    board.set_local("127.0.0.1", 8080)
    bucket = sb.bucket_index(int(DURATION_S * 1e9))
    now = time.time_ns()
    for life in range(workers + restarts):
        slot = board.slot_offset(life % workers)
        if life >= workers:  # the master reaps the slot's last worker and forks another
            board.put32(slot + sb.OFF_PID, 0)
            board.put32(slot + sb.OFF_STATE, sb.STATE_STARTING)
            board.put64(sb.H_RESTARTS, board.get64(sb.H_RESTARTS) + 1)
        board.put32(slot + sb.OFF_GENERATION, board.get32(slot + sb.OFF_GENERATION) + 1)
        board.put32(slot + sb.OFF_PID, FAKE_PID + life)
        board.put64(slot + sb.OFF_STARTED, now)
        board.put32(slot + sb.OFF_STATE, sb.STATE_READY)
        for off in (sb.OFF_ACCEPTED, sb.OFF_EXIT_ZERO):
            board.put64(slot + off, board.get64(slot + off) + per_life)
        off = slot + sb.OFF_BUCKETS + 8 * bucket
        board.put64(off, board.get64(off) + per_life)
        board.put64(slot + sb.OFF_DURATION_SUM, board.get64(slot + sb.OFF_DURATION_SUM) + per_life * int(DURATION_S * 1e9))
        board.put64(slot + sb.OFF_LAST_ACCEPT, now)
    board.mm.flush()
    return {"files": 1, "bytes": os.path.getsize(path)}


def build_multiprocess(directory: Path, workers: int, restarts: int, per_life: int) -> dict:
    """A multiprocess directory as W workers leave it after R restarts (prometheus_client's MultiProcessValue)."""
    from prometheus_client import Counter, Gauge, Histogram, values
    from prometheus_client.multiprocess import mark_process_dead

    from prefork.scoreboard import DURATION_BUCKETS

    directory.mkdir(parents=True, exist_ok=True)
    current = [FAKE_PID]
    saved_class, saved_env = values.ValueClass, os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)  # where MmapedValue puts its files (read at creation)
    values.ValueClass = values.MultiProcessValue(lambda: current[0])
    try:
        labels = ("service",)
        accepted = Counter("tcpserver_connections_accepted", "Connections accepted.", labels, registry=None)
        denied = Counter("tcpserver_connections_denied", "Connections refused by the rules.", labels, registry=None)
        dropped = Counter("tcpserver_connections_dropped", "Connections dropped.", labels, registry=None)
        exits = Counter("tcpserver_program_exits", "Programs that ended, by how.", (*labels, "exit"), registry=None)
        duration = Histogram("tcpserver_connection_duration_seconds", "Time from accept to the program's exit.",
                             labels, buckets=DURATION_BUCKETS, registry=None)
        active = Gauge("tcpserver_connections_active", "Programs running now.", labels, registry=None,
                       multiprocess_mode="livesum")
        for life in range(workers + restarts):
            if life >= workers:
                mark_process_dead(FAKE_PID + life - workers, str(directory))
            current[0] = FAKE_PID + life  # the next inc() sees a new pid and opens that pid's files
            accepted.labels(SERVICE).inc(per_life)
            denied.labels(SERVICE).inc(0)
            dropped.labels(SERVICE).inc(0)
            for how in ("zero", "nonzero", "signal"):
                exits.labels(SERVICE, how).inc(per_life if how == "zero" else 0)
            child = duration.labels(SERVICE)
            for _ in range(per_life):
                child.observe(DURATION_S)
            active.labels(SERVICE).set(0)
    finally:
        values.close_all_multiprocess_files()
        values.ValueClass = saved_class
        if saved_env is None:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        else:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = saved_env
    files = list(directory.iterdir())
    return {"files": len(files), "bytes": sum(f.stat().st_size for f in files),
            "disk_bytes": sum(f.stat().st_blocks * 512 for f in files)}


# -- scraping ---------------------------------------------------------------------------------------------
def renderer(impl: str, source: Path):
    """The function one scrape calls, in this process: () -> exposition bytes."""
    if impl == "prefork":
        from prefork.metrics.collector import SharedMemoryCollector

        return SharedMemoryCollector([str(source)], log=lambda line: None).render
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(source))
    return lambda: generate_latest(registry)


def http_get(port: int) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"scrape of port {port}: HTTP {resp.status}")
        return body
    finally:
        conn.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process PID, all threads (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    """A scrape target process of one side: prefork-exporter, or prometheus_client's HTTP server."""

    def __init__(self, impl: str, source: Path, workdir: Path, exporter: str) -> None:
        if impl == "prefork":
            argv = [exporter, "--scoreboard", str(source), "--listen", "127.0.0.1:0"]
        else:
            argv = [sys.executable, "-m", "loadtest.scrape_bench", "--serve-multiprocess", str(source)]
        self.errfile = workdir / f"{impl}.server.err"
        with open(self.errfile, "wb") as err:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err, env=dict(ENV),
                                         cwd=str(ROOT))
        deadline = time.monotonic() + 30
        self.port = 0
        for _ in range(3000):
            m = LISTENING.search(self.errfile.read_text(errors="replace"))
            if m:
                self.port = int(m[1])
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        if not self.port:
            self.stop()
            raise RuntimeError(f"{impl} server did not start: {self.errfile.read_text(errors='replace')[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.wait(10)


def measure(scrape, cfg: argparse.Namespace, cpu=None) -> tuple[dict, bytes]:
    """Scrape until the budget is spent; timings and the last exposition.  CPU: CPU() seconds (default: ours)."""
    cpu = cpu or time.process_time
    body = b""
    for _ in range(cfg.warmup):
        body = scrape()
    times: list[float] = []
    start, cpu0 = time.perf_counter(), cpu()
    while len(times) < cfg.max_scrapes:
        t0 = time.perf_counter()
        body = scrape()
        times.append(time.perf_counter() - t0)
        if len(times) >= cfg.min_scrapes and time.perf_counter() - start >= cfg.seconds:
            break
    cpu_used = cpu() - cpu0
    ms = sorted(t * 1e3 for t in times)
    return {"scrapes": len(ms), "median_ms": statistics.median(ms), "mean_ms": statistics.fmean(ms),
            "p90_ms": ms[min(len(ms) - 1, int(0.9 * len(ms)))], "min_ms": ms[0], "max_ms": ms[-1],
            "cpu_ms_per_scrape": cpu_used * 1e3 / len(ms), "wall_s": time.perf_counter() - start}, body


def accepted_total(body: bytes) -> float | None:
    """tcpserver_connections_accepted_total{service="bench"} of an exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            if s.name == "tcpserver_connections_accepted_total" and s.labels.get("service") == SERVICE:
                return s.value
    return None


def run_case(impl: str, workers: int, restarts: int, cfg: argparse.Namespace, work: Path) -> dict:
    """Build one side's history for (WORKERS, RESTARTS), scrape it both ways; the case's results."""
    case_dir = work / f"{impl}-{workers}-{restarts}"
    case_dir.mkdir()
    t0 = time.perf_counter()
    if impl == "prefork":
        source = case_dir / "scoreboard"
        facts = build_scoreboard(source, workers, restarts, cfg.per_life)
    else:
        source = case_dir / "multiproc"
        facts = build_multiprocess(source, workers, restarts, cfg.per_life)
    result = {"impl": impl, "workers": workers, "restarts": restarts, "lives": workers + restarts,
              "setup_s": time.perf_counter() - t0, **facts}
    expected = (workers + restarts) * cfg.per_life
    try:
        if "collect" in cfg.modes:
            result["collect"], body = measure(renderer(impl, source), cfg)
            result["collect"]["exposition_bytes"] = len(body)
            result["collect"]["accepted_total"] = accepted_total(body)
        if "http" in cfg.modes:
            server = Server(impl, source, case_dir, cfg.exporter)
            try:
                result["http"], body = measure(lambda: http_get(server.port), cfg, lambda: cpu_seconds(server.proc.pid))
            finally:
                server.stop()
            result["http"]["exposition_bytes"] = len(body)
            result["http"]["accepted_total"] = accepted_total(body)
        result["expected_accepted"] = expected
        result["correct"] = all(result[m]["accepted_total"] == expected for m in cfg.modes)
    finally:
        if not cfg.keep:
            shutil.rmtree(case_dir, ignore_errors=True)
    return result


def describe(r: dict) -> str:
    parts = [f"{r['impl']:<12} W={r['workers']:<3} R={r['restarts']:<6} {r['files']:>6} files"]
    for mode in MODES:
        if mode in r:
            m = r[mode]
            parts.append(f"{mode} median {m['median_ms']:8.2f} ms p90 {m['p90_ms']:8.2f} ms CPU {m['cpu_ms_per_scrape']:7.2f} ms"
                         f" ({m['scrapes']} scrapes)")
    if not r.get("correct", True):
        parts.append(f"WRONG COUNTS (expected {r['expected_accepted']})")
    return "  ".join(parts)


def _ratio(a: float, b: float) -> float | None:
    """A / B; None when B is 0 (CPU time is counted in clock ticks: a few cheap scrapes may show none)."""
    return a / b if b > 0 else None


def summarize(cases: list[dict], modes: list[str]) -> dict:
    """Per mode: prefork's growth with restarts, the multiprocess/prefork ratios, and the target verdict."""
    index = {(c["impl"], c["workers"], c["restarts"]): c for c in cases}
    workers = sorted({c["workers"] for c in cases})
    restarts = sorted({c["restarts"] for c in cases})
    out: dict = {}
    for mode in modes:
        ratios, growth = {}, {}
        for w in workers:
            for r in restarts:
                p, m = index.get(("prefork", w, r)), index.get(("multiprocess", w, r))
                if p and m:
                    ratios[f"{w}/{r}"] = {k: _ratio(m[mode][k], p[mode][k]) for k in ("median_ms", "cpu_ms_per_scrape")}
            for impl in IMPLS:
                lo, hi = index.get((impl, w, restarts[0])), index.get((impl, w, restarts[-1]))
                if lo and hi and len(restarts) > 1:
                    growth.setdefault(impl, {})[str(w)] = _ratio(hi[mode]["median_ms"], lo[mode]["median_ms"])
        at = max(workers)
        worst = max((index[("prefork", at, r)][mode]["median_ms"] for r in restarts if ("prefork", at, r) in index),
                    default=None)
        out[mode] = {"ratios": ratios, "growth_with_restarts": growth, "prefork_worst_median_ms_at_max_workers": worst,
                     "max_workers": at,
                     "meets_target": None if worst is None or at < TARGET_WORKERS else
                     worst < TARGET_MS and all(g is not None and g < GROWTH_LIMIT for g in growth.get("prefork", {}).values())}
    return out


def benchmark(cfg: argparse.Namespace, work: Path) -> list[dict]:
    cases = []
    order = list(IMPLS)
    for w in cfg.workers:
        for r in cfg.restarts:
            for impl in order:
                log(f"{impl}: {w} workers after {r} restarts ...")
                result = run_case(impl, w, r, cfg, work)
                log("  " + describe(result))
                cases.append(result)
            order.reverse()
    return cases


# -- the multiprocess side's HTTP server ---------------------------------------------------------------
def serve_multiprocess(directory: str) -> int:
    """prometheus_client's own HTTP server over a MultiProcessCollector of DIRECTORY, until SIGTERM."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    log(f"multiprocess: listening on http://127.0.0.1:{server.server_port}/metrics")
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    signal.pause()
    server.shutdown()
    return 0


# -- reporting ----------------------------------------------------------------------------------------------
def reproduce_command(args: argparse.Namespace) -> str:
    parts = ["--workers", ",".join(map(str, args.workers)),
             "--restarts", ",".join(map(str, args.restarts)), "--seconds", f"{args.seconds:g}", "--min-scrapes",
             str(args.min_scrapes), "--per-life", str(args.per_life)]
    if args.modes != list(MODES):
        parts += ["--modes", ",".join(args.modes)]
    return spelled_out("loadtest.scrape_bench", parts, args.publish)


def verdict(meets: bool | None) -> str:
    return f"not measured (fewer than {TARGET_WORKERS} workers)" if meets is None else "met" if meets else "NOT met"


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _times(ratio: float | None, digits: int = 2) -> str:
    if ratio is None:
        return "-"
    return f"{ratio:,.0f}x" if ratio >= 100 else f"{ratio:.{digits}f}x"


def _fmt(ms: float) -> str:
    return f"{ms:,.2f}" if ms < 100 else f"{ms:,.0f}"


def render_markdown(data: dict) -> str:
    m, cfg, cases = data["machine"], data["config"], data["cases"]
    modes = cfg["modes"]
    out = ["# Scrape benchmark", "",
           f"prefork's collector (one scoreboard) against prometheus_client {data['versions']['prometheus_client']}'s "
           f"multiprocess mode (one set of `.db` files per worker pid that ever lived), for "
           f"{_and([str(w) for w in cfg['workers']])} workers after {' and '.join(f'{r:,}' for r in cfg['restarts'])} worker "
           f"restarts, same families and counts on both sides ({cfg['per_life']} connections per worker life), in one run "
           f"({data['when']}). Files on {data['filesystem']}.", ""]
    load = m.get("load_average") or [0.0]
    if load[0] > 0.5 * m["nproc"]:
        out += [f"> **Busy machine:** 1-minute load average {load[0]:.2f} on {m['nproc']} CPUs at the start; absolute "
                "numbers are noisy.", ""]
    verdicts = data["summary"]
    if "http" in verdicts:
        v = verdicts["http"]
        grow = v["growth_with_restarts"].get("prefork", {})
        out += [f"**Target** (scrape time independent of past workers, here within {GROWTH_LIMIT:g}x, and "
                f"under {TARGET_MS:g} ms at {TARGET_WORKERS} workers): **{verdict(v['meets_target'])}**. prefork-exporter's "
                f"median HTTP scrape at {v['max_workers']} workers: {_fmt(v['prefork_worst_median_ms_at_max_workers'])} ms "
                f"at worst; after {cfg['restarts'][-1]:,} restarts it takes "
                + ", ".join(_times(g) for g in grow.values()) + f" the time it takes after {cfg['restarts'][0]:,} "
                f"(at {_and(list(grow))} workers).", ""]
    titles = {"http": "Over HTTP (a server process, a new connection per scrape)",
              "collect": "The collection call alone (in the benchmark's process)"}
    for mode in modes:
        out += [f"## {titles[mode]}", "",
                "| workers | past restarts | implementation | files | median ms | p90 ms | max ms | CPU ms per scrape | "
                "exposition bytes | scrapes | counts |",
                "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for c in sorted(cases, key=lambda c: (c["workers"], c["restarts"], IMPLS.index(c["impl"]))):
            r = c[mode]
            ok = "ok" if r["accepted_total"] == c["expected_accepted"] else f"**wrong: {r['accepted_total']}**"
            out.append(f"| {c['workers']} | {c['restarts']:,} | {c['impl']} | {c['files']:,} | {_fmt(r['median_ms'])} | "
                       f"{_fmt(r['p90_ms'])} | {_fmt(r['max_ms'])} | {_fmt(r['cpu_ms_per_scrape'])} | "
                       f"{r['exposition_bytes']:,} | {r['scrapes']} | {ok} |")
        s = verdicts[mode]
        out += ["", "multiprocess / prefork (above 1: prefork is faster or cheaper):", "",
                "| workers / past restarts | median latency | CPU per scrape |", "|---|---:|---:|"]
        for key, ratio in s["ratios"].items():
            w, r = key.split("/")
            out.append(f"| {w} / {int(r):,} | {_times(ratio['median_ms'], 1)} | {_times(ratio['cpu_ms_per_scrape'], 1)} |")
        out += ["", f"Growth of the median from {cfg['restarts'][0]:,} to {cfg['restarts'][-1]:,} past restarts:", "",
                "| workers | " + " | ".join(s["growth_with_restarts"]) + " |",
                "|---:|" + "---:|" * len(s["growth_with_restarts"])]
        for w in map(str, cfg["workers"]):
            out.append(f"| {w} | " + " | ".join(_times(g.get(w)) for g in s["growth_with_restarts"].values()) + " |")
        out.append("")
    out += ["## What is compared", "",
            "- **prefork**: a scoreboard of W slots written with `prefork.scoreboard`'s writer as the master and its "
            "workers write it: each worker life takes a slot in turn, stores its pid, start time and the slot's "
            "generation and adds its connections to the slot's counters; the master counts restarts. The file has "
            "the same size whatever the history. Served by `prefork-exporter --scoreboard PATH --listen 127.0.0.1:0` "
            "(HTTP) and `SharedMemoryCollector.render()` (collect).",
            "- **multiprocess**: a `PROMETHEUS_MULTIPROC_DIR` written by prometheus_client's own `MultiProcessValue` with "
            "the pid it records switched to each simulated worker (a restart is a new pid): every worker life leaves "
            "`counter_PID.db` and `histogram_PID.db`; live workers also have `gauge_livesum_PID.db`, removed by "
            "`mark_process_dead` when they die (gunicorn's `child_exit` hook). Served by prometheus_client's "
            "`start_http_server` over a registry with a `MultiProcessCollector` (HTTP) and `generate_latest()` of "
            "that registry (collect).",
            "- Same families and values on both sides: connections accepted, denied, dropped, program exits by class, "
            "the duration histogram (the scoreboard's 12 buckets), active connections. Every case checks that both "
            "report the same `tcpserver_connections_accepted_total`. prefork's exposition also has its master-level "
            "families (limit, workers, restarts, start time) and the exporter's own, so it is the larger.",
            f"- Each case: {cfg['warmup']} unmeasured scrapes, then scrapes until at least {cfg['min_scrapes']} and "
            f"{cfg['seconds']:g} s (at most {cfg['max_scrapes']}). HTTP latency is connect to last byte; CPU per "
            "scrape is the server process's user+system time over the scrapes (all threads), or this process's "
            "for the collect call. The sides alternate, case by case.", "",
            *machine_section(m, data.get("load_average_end", ()), f"prometheus_client {data['versions']['prometheus_client']}",
                             extra=["setup (building the histories): " + ", ".join(
                                 f"{c['impl']} {c['workers']}/{c['restarts']:,} {c['setup_s']:.1f} s"
                                 for c in cases if c["restarts"])]),
            *reproduce_section(data["command"])]
    return "\n".join(out)


def write_chart(data: dict, path: Path) -> Path:
    """Median scrape latency and CPU per scrape against workers, one line per side and history (log scales)."""
    plt = pyplot()
    from matplotlib.ticker import FuncFormatter, NullFormatter

    cfg = data["config"]
    panels = []
    if "http" in cfg["modes"]:
        panels += [("http", "median_ms", "HTTP scrape, median ms"), ("http", "cpu_ms_per_scrape", "server CPU per scrape, ms")]
    if "collect" in cfg["modes"]:
        panels.append(("collect", "median_ms", "collection call alone, median ms"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.6), squeeze=False)
    plain = FuncFormatter(lambda v, _pos: f"{v:g}")
    for ax, (mode, key, title) in zip(axes[0], panels, strict=True):
        for k, impl in enumerate(IMPLS):
            for j, r in enumerate(cfg["restarts"]):
                pts = sorted((c["workers"], c[mode][key]) for c in data["cases"]
                             if c["impl"] == impl and c["restarts"] == r and c[mode][key] > 0)  # log scale: no zeros
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=f"C{k}",
                            linestyle="-" if j == 0 else "--", label=f"{impl}, {r:,} past restarts")
        if mode == "http" and key == "median_ms":
            ax.axhline(TARGET_MS, color="grey", linestyle=":", linewidth=1, label=f"target {TARGET_MS:g} ms")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(cfg["workers"], [str(w) for w in cfg["workers"]])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("workers")
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
    title = (f"Scrape cost: prefork's scoreboard against prometheus_client's multiprocess directory, "
             f"{data['machine']['nproc']} cpus")
    return finish_chart(fig, axes[0][0], title, path, bottom=0.08, fontsize=8)


BENCH = Bench("scrape", "SCRAPE.md", "scrape.png", render_markdown, write_chart)


# -- command line ---------------------------------------------------------------------------------------------
def _counts(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"want comma-separated numbers, not {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"want comma-separated numbers, not {text!r}")
    return sorted(set(values))


def _modes(text: str) -> list[str]:
    values = [x.strip() for x in text.split(",") if x.strip()]
    if not values or any(v not in MODES for v in values):
        raise argparse.ArgumentTypeError(f"modes are {', '.join(MODES)}, not {text!r}")
    return [m for m in MODES if m in values]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m loadtest.scrape_bench", description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=_counts, default=[1, 8, 64], help="worker counts (default 1,8,64)")
    ap.add_argument("--restarts", type=_counts, default=[0, 10000], help="past worker restarts (default 0,10000)")
    ap.add_argument("--per-life", type=int, default=3, help="connections each worker life served (default 3)")
    ap.add_argument("--modes", type=_modes, default=list(MODES), help="http,collect (default both)")
    ap.add_argument("--seconds", type=float, default=2.0, help="scraping time per case and mode (default 2)")
    ap.add_argument("--min-scrapes", type=int, default=10)
    ap.add_argument("--max-scrapes", type=int, default=5000)
    ap.add_argument("--warmup", type=int, default=3, help="unmeasured scrapes first (default 3)")
    ap.add_argument("--exporter", default=EXPORTER, help="prefork-exporter to run (default: the venv's)")
    ap.add_argument("--workdir", help="where the scoreboards and multiprocess directories are made "
                                      "(default /dev/shm, else the temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the files of each case")
    BENCH.add_options(ap)
    ap.add_argument("--serve-multiprocess", metavar="DIR", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if 0 in args.workers or args.per_life < 1 or args.min_scrapes < 1 or args.max_scrapes < args.min_scrapes \
            or args.seconds < 0 or args.warmup < 0:
        ap.error("--workers above 0, --per-life and --min-scrapes at least 1, --max-scrapes >= --min-scrapes")
    return args


def _prometheus_client_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("prometheus-client")
    except PackageNotFoundError:
        return "unknown"


def filesystem_of(path: Path) -> str:
    from loadtest.multilog_bench import filesystem_of as fs

    return fs(path)


def run(args: argparse.Namespace) -> dict:
    if "http" in args.modes and not os.access(args.exporter, os.X_OK):
        raise RuntimeError(f"prefork-exporter not found: {args.exporter}")
    base = args.workdir or ("/dev/shm" if os.path.isdir("/dev/shm") else None)
    if base:
        Path(base).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="scrape-bench-", dir=base))
    facts = machine_facts()
    log(f"machine: {facts['cpu_model']}, {facts['nproc']} cpus, load average "
        f"{' '.join(f'{x:.2f}' for x in facts['load_average'])}; files in {work} ({filesystem_of(work)})")
    try:
        cases = benchmark(args, work)
        fs = filesystem_of(work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return {"command": reproduce_command(args), "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": facts,
            "filesystem": fs, "versions": {"prometheus_client": _prometheus_client_version()},
            "config": {"workers": args.workers, "restarts": args.restarts, "per_life": args.per_life,
                       "modes": args.modes, "seconds": args.seconds, "min_scrapes": args.min_scrapes,
                       "max_scrapes": args.max_scrapes, "warmup": args.warmup},
            "cases": cases, "summary": summarize(cases, args.modes), "load_average_end": os.getloadavg()}


def print_summary(data: dict) -> None:
    for c in data["cases"]:
        print(describe(c))
    for mode, s in data["summary"].items():
        print(f"{mode}: prefork worst median at {s['max_workers']} workers "
              f"{s['prefork_worst_median_ms_at_max_workers']:.2f} ms; growth with restarts "
              + "; ".join(f"{impl} " + ", ".join(f"{w}w {_times(g)}" for w, g in gs.items())
                          for impl, gs in s["growth_with_restarts"].items())
              + f"; target {verdict(s['meets_target'])}")
    print(f"reproduce: {data['command']}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_multiprocess:
        return serve_multiprocess(args.serve_multiprocess)
    if args.render:
        return BENCH.render_only(args)
    if argv is None:
        reporting.stop_on_sigterm()
    try:
        data = run(args)
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        log(f"loadtest.scrape_bench: error: {e}")
        return 1
    print_summary(data)
    BENCH.write(data, args)
    wrong = [f"{c['impl']} {c['workers']}/{c['restarts']}" for c in data["cases"] if not c["correct"]]
    if wrong:
        log(f"loadtest.scrape_bench: error: wrong counts from {', '.join(wrong)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
