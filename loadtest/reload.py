"""Reloads under load: prefork's tcpserver gets HUP and USR2 in turn while clients keep connecting.

Checked (docs/reference/tcpserver.md, Signals): no client connection failed or was reset across the
reloads (the target is 0), no more programs than ``-c`` ran at any instant (the master's tree sampled
every ``--sample`` seconds, two looks per sample: loadtest.soak_procs.count_programs), every reload
finished (each slot served by a new worker), the scoreboard's counters never went backwards, the
master kept its pid, and the server wrote no warning.

    .venv/bin/python -m loadtest.reload --reloads 10 --out /tmp/reload-run
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

import psutil

from loadtest import reporting, soak_procs
from loadtest.loadgen import LoadResult, run_load
from loadtest.machine import machine_facts
from loadtest.reporting import Bench, finish_chart, log, machine_section, pyplot, reproduce_section, table
from loadtest.reporting import reproduce_command as spelled_out
from loadtest.runner import expected_reply
from loadtest.servers import ServerSpec, ServerStartError, start_server
from prefork.scoreboard_read import ScoreboardError, Snapshot, read

PREFORK = str(Path(sys.executable).parent / "tcpserver")
PROGRAM = "/bin/sh -c 'sleep 0.02; echo hello'"
SIGNALS = {"HUP": signal.SIGHUP, "USR2": signal.SIGUSR2}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m loadtest.reload", description=__doc__.splitlines()[0])
    ap.add_argument("--reloads", type=int, default=10, help="reloads in all, HUP and USR2 in turn (HUP first)")
    ap.add_argument("--interval", type=float, default=3.0, help="seconds from one reload's signal to the next")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of load before the first reload")
    ap.add_argument("--tail", type=float, default=2.0, help="seconds of load after the last reload")
    ap.add_argument("--clients", type=int, default=6, help="closed-loop client processes (more than -c: it is reached)")
    ap.add_argument("--workers", type=int, default=2, help="tcpserver --workers")
    ap.add_argument("--limit", type=int, default=4, help="tcpserver -c")
    ap.add_argument("--program", default=PROGRAM, help="the program tcpserver runs for each connection")
    ap.add_argument("--timeout", type=float, default=10.0, help="client connect/read timeout, seconds")
    ap.add_argument("--sample", type=float, default=0.05, help="seconds between samples of the process tree")
    ap.add_argument("--reload-timeout", type=float, default=30.0, help="seconds a reload may take to finish")
    ap.add_argument("--prefork", default=PREFORK, help="prefork's tcpserver console script")
    BENCH.add_options(ap)
    args = ap.parse_args(argv)
    if args.reloads < 1 or args.interval <= 0 or args.clients < 1 or args.workers < 1 or args.limit < 1:
        ap.error("--reloads, --interval, --clients, --workers and --limit must be positive")
    return args


def reproduce_command(args: argparse.Namespace) -> str:
    parts = ["--reloads", str(args.reloads), "--interval", f"{args.interval:g}", "--warmup", f"{args.warmup:g}",
             "--tail", f"{args.tail:g}", "--clients", str(args.clients), "--workers", str(args.workers),
             "--limit", str(args.limit), "--program", args.program, "--timeout", f"{args.timeout:g}",
             "--sample", f"{args.sample:g}", "--reload-timeout", f"{args.reload_timeout:g}"]
    if args.prefork != PREFORK:
        parts += ["--prefork", args.prefork]
    return spelled_out("loadtest.reload", parts, args.publish)


def serving(snap: Snapshot) -> dict[int, int]:
    """Slot index -> pid of the slots whose worker serves (ready, or waiting for capacity)."""
    return {s.index: s.pid for s in snap.slots if s.pid and s.state in ("ready", "waiting")}


def counters(snap: Snapshot) -> tuple[int, int]:
    """(accepted, program exits) over the slots and the master's orphans: neither may ever go backwards."""
    exits = sum(s.exit_zero + s.exit_nonzero + s.exit_signal for s in snap.slots)
    exits += snap.orphan_exit_zero + snap.orphan_exit_nonzero + snap.orphan_exit_signal
    return sum(s.accepted for s in snap.slots), exits


class Sampler:
    """Every SAMPLE seconds in a thread: programs in the master's tree, the scoreboard's counters."""

    def __init__(self, master: int, board: str, sample: float, t0: float, limit: int) -> None:
        self.master, self.board, self.sample, self.t0, self.limit = master, board, sample, t0, limit
        self.series: list[dict] = []  # t, programs, accepted, exits
        self.regressions: list[dict] = []
        self.over: list[dict] = []  # samples above -c, with the processes counted
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.last: tuple[int, int] | None = None

    def _run(self) -> None:
        while not self.stopping.wait(self.sample):
            detail: list = []
            programs = soak_procs.count_programs(self.master, detail)
            if programs > self.limit:
                self.over.append({"t": round(time.monotonic() - self.t0, 3), "programs": detail})
            try:
                now = counters(read(self.board))
            except ScoreboardError:
                continue
            t = time.monotonic() - self.t0
            if self.last is not None and (now[0] < self.last[0] or now[1] < self.last[1]):
                self.regressions.append({"t": t, "before": self.last, "after": now})
            self.last = now
            self.series.append({"t": round(t, 3), "programs": programs, "accepted": now[0], "exits": now[1]})

    def __enter__(self) -> Sampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(10)


def reload_once(server_pid: int, board: str, sig: str, workers: int, timeout: float, t0: float) -> dict:
    """Send SIG and wait (bounded) until every slot serves with a worker that was not serving before."""
    before = serving(read(board))
    sent = time.monotonic()
    os.kill(server_pid, SIGNALS[sig])
    done = None
    for _ in range(int(timeout / 0.01) + 1):
        try:
            now = serving(read(board))
        except ScoreboardError:
            now = {}
        if len(now) == workers and not set(now.values()) & set(before.values()):
            done = time.monotonic()
            break
        if time.monotonic() - sent > timeout:
            break
        time.sleep(0.01)
    return {"signal": sig, "t": round(sent - t0, 3), "finished": done is not None,
            "seconds": round(done - sent, 3) if done is not None else None,
            "workers_before": sorted(before.values()), "workers_after": sorted(now.values())}


def run(args: argparse.Namespace) -> dict:
    """The whole run; raises ServerStartError when the server cannot start."""
    program = shlex.split(args.program)
    expect = expected_reply(program)
    flags = ["-H", "-R", "-l0", "-c", str(args.limit)]
    facts = machine_facts()
    log(f"machine: {facts['cpu_model']}, {facts['nproc']} cpus, load average "
        f"{' '.join(f'{x:.2f}' for x in facts['load_average'])}")
    spec = ServerSpec("prefork", [args.prefork, "--workers", str(args.workers)])
    server = start_server(spec, flags, program)
    log(f"started pid {server.pid}, port {server.port}: {shlex.join(server.argv)}")
    board = f"/dev/shm/prefork-tcpserver.{server.pid}"
    created = psutil.Process(server.pid).create_time()
    seconds = args.warmup + args.reloads * args.interval + args.tail
    result: list[LoadResult] = []
    load = threading.Thread(target=lambda: result.append(
        run_load(server.port, expect, args.clients, seconds, timeout=args.timeout)), daemon=True)
    reloads: list[dict] = []
    try:
        for _ in range(1000):  # every worker serving before the load starts
            if len(serving(read(board))) == args.workers:
                break
            time.sleep(0.01)
        t0 = time.monotonic()
        with Sampler(server.pid, board, args.sample, t0, args.limit) as sampler:
            load.start()
            log(f"load: {args.clients} clients for {seconds:g} s; {args.reloads} reloads every {args.interval:g} s "
                f"after {args.warmup:g} s")
            for i in range(args.reloads):
                due = t0 + args.warmup + i * args.interval
                time.sleep(max(0.0, due - time.monotonic()))
                sig = "HUP" if i % 2 == 0 else "USR2"
                r = reload_once(server.pid, board, sig, args.workers, args.reload_timeout, t0)
                reloads.append(r)
                log(f"reload {i + 1}/{args.reloads} {sig}: " + (f"done in {r['seconds']:.3f} s" if r["finished"]
                                                                 else "NOT finished"))
                if not server.alive():
                    raise ServerStartError(f"tcpserver died during reload {i + 1}: {server.stderr_text().strip()}")
            load.join(seconds + 4 * args.timeout + 30)
        same_pid = server.alive() and psutil.Process(server.pid).create_time() == created
        stderr = server.stderr_text()
    finally:
        server.stop()
    if not result:
        raise RuntimeError("the load generator did not report")
    res = result[0]
    load_end = seconds
    under_load = all(r["finished"] and r["t"] + (r["seconds"] or 0) < load_end for r in reloads)
    most = max((s["programs"] for s in sampler.series), default=0)
    checks = {
        "failed_connections": res.error_total,
        "max_programs": most,
        "limit": args.limit,
        "limit_kept": most <= args.limit,
        "reloads_finished": sum(r["finished"] for r in reloads),
        "reloads_under_load": under_load,
        "counter_regressions": len(sampler.regressions),
        "same_master_pid": same_pid,
        "server_stderr": stderr,
    }
    checks["passed"] = (res.error_total == 0 and checks["limit_kept"] and checks["reloads_finished"] == len(reloads)
                        and under_load and not sampler.regressions and same_pid and not stderr.strip()
                        and res.connections > 0)
    return {
        "command": reproduce_command(args),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": facts,
        "load_average_end": list(os.getloadavg()),
        "server_pid": server.pid,
        "config": {"reloads": args.reloads, "interval": args.interval, "warmup": args.warmup, "tail": args.tail,
                   "clients": args.clients, "workers": args.workers, "limit": args.limit, "program": program,
                   "flags": flags, "argv": server.argv, "sample": args.sample, "seconds": seconds},
        "load": res.to_dict(),
        "reloads": reloads,
        "checks": checks,
        "regressions": sampler.regressions,
        "over_limit": sampler.over,
        "series": sampler.series,
    }


def render_markdown(data: dict) -> str:
    cfg, c, load = data["config"], data["checks"], data["load"]
    out = ["# tcpserver reloads under load", "",
           f"{cfg['reloads']} reloads (HUP and USR2 in turn, one every {cfg['interval']:g} s after {cfg['warmup']:g} s) "
           f"while {cfg['clients']} closed-loop clients connect for {cfg['seconds']:g} s to `tcpserver --workers "
           f"{cfg['workers']} {' '.join(cfg['flags'])}` running `{shlex.join(cfg['program'])}`; run {data['when']}.",
           "", f"**{'Passed' if c['passed'] else 'FAILED'}.**", "", "## Checks", ""]
    out += table(["check", "result", "target"], [
        ["failed or reset connections", c["failed_connections"], "0"],
        ["most programs at one instant (process tree)", c["max_programs"], f"≤ -c {c['limit']}"],
        ["reloads finished (every slot a new worker)", f"{c['reloads_finished']}/{cfg['reloads']}", "all"],
        ["reloads finished while under load", "yes" if c["reloads_under_load"] else "no", "yes"],
        ["scoreboard counters going backwards", c["counter_regressions"], "0"],
        ["master pid unchanged (USR2)", "yes" if c["same_master_pid"] else "no", "yes"],
        ["server's stderr lines", len(c["server_stderr"].splitlines()), "0"],
    ])
    out += ["", "## Load", ""]
    out += table(["connections", "conn/s", "p50 ms", "p99 ms", "max ms", *load["errors"]],
                 [[load["connections"], f"{load['conn_per_s']:,.0f}", f"{load['p50_ms']:.2f}", f"{load['p99_ms']:.2f}",
                   f"{load['max_ms']:.1f}", *load["errors"].values()]])
    out += ["", "The maximum latency is the clients' wait across a reload: during USR2 nobody accepts until the new "
            "master's workers serve, and clients wait in the listen backlog.", "", "## Reloads", ""]
    out += table(["#", "signal", "sent at s", "finished in s", "workers before", "workers after"],
                 [[i + 1, r["signal"], f"{r['t']:.2f}", f"{r['seconds']:.3f}" if r["finished"] else "not finished",
                   " ".join(map(str, r["workers_before"])), " ".join(map(str, r["workers_after"]))]
                  for i, r in enumerate(data["reloads"])])
    out += [""]
    out += machine_section(data["machine"], data["load_average_end"], "prefork's tcpserver alone")
    out += reproduce_section(data["command"], {"tcpserver": shlex.join(cfg["argv"])})
    return "\n".join(out)


def draw(data: dict, path: Path) -> Path:
    plt = pyplot()
    series = data["series"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    t = [s["t"] for s in series]
    top.step(t, [s["programs"] for s in series], where="post", label="programs running or not yet reaped (process tree)")
    top.axhline(data["config"]["limit"], color="red", linestyle="--", label="-c")
    rate = [0.0] + [(b["accepted"] - a["accepted"]) / max(b["t"] - a["t"], 1e-6) for a, b in zip(series, series[1:], strict=False)]
    bottom.plot(t, rate, label="accepted per second (scoreboard)")
    for ax in (top, bottom):
        for r in data["reloads"]:
            ax.axvline(r["t"], color="green" if r["signal"] == "HUP" else "purple", alpha=0.4, linewidth=1)
    top.set_ylabel("programs")
    bottom.set_ylabel("conn/s")
    bottom.set_xlabel("seconds (green: HUP, purple: USR2)")
    return finish_chart(fig, top, "tcpserver reloads under load", path)


BENCH = Bench("reload", "RELOAD.md", "reload.png", render_markdown, draw)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        return BENCH.render_only(args)
    reporting.stop_on_sigterm()
    try:
        data = run(args)
    except (ServerStartError, OSError, RuntimeError, ScoreboardError) as e:
        log(f"loadtest.reload: error: {e}")
        return 1
    BENCH.write(data, args)
    c = data["checks"]
    log(f"failed or reset connections: {c['failed_connections']} (of {data['load']['connections']} served); "
        f"most programs at once: {c['max_programs']} (-c {c['limit']}); reloads finished: {c['reloads_finished']}/"
        f"{len(data['reloads'])}; counters backwards: {c['counter_regressions']}; same master pid: "
        f"{c['same_master_pid']}; {'PASSED' if c['passed'] else 'FAILED'}")
    return 0 if c["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
