"""What prefork's opt-in connection features cost: conn/s and server CPU per connection of one prefork
tcpserver plain, with per-client limits (MAXCONNIP and MAXCONNC set, never reached: the counting is what is
measured) and with --proxy-protocol (each client sends a PROXY v1 header first), in alternating rounds of one
run.  FEATURES.md and features.png; loadtest/README.md has the commands.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from loadtest import reporting
from loadtest.loadgen import format_result, merge
from loadtest.machine import machine_facts
from loadtest.reporting import Bench, log, machine_section, reproduce_section, table
from loadtest.runner import NPROC, PREFORK, expected_reply, run_slot
from loadtest.servers import RunningServer, ServerSpec, ServerStartError, start_server

PROXY_V1 = b"PROXY TCP4 192.0.2.10 127.0.0.1 40000 7000\r\n"


def variants(prefork: str, workers: int) -> dict[str, tuple[list[str], bytes]]:
    """NAME -> (server argv before the flags, what each client sends first)."""
    base = [prefork, "--workers", str(workers)]
    return {
        "plain": (base, b""),
        "limits": (["env", "MAXCONNIP=100000", "MAXCONNC=100000", *base], b""),
        "proxy": ([*base, "--proxy-protocol"], PROXY_V1),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m loadtest.features", description=__doc__)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=4.0, help="load time per variant per round")
    ap.add_argument("--clients", type=int, default=4, help="closed-loop client processes")
    ap.add_argument("--workers", type=int, default=NPROC, help="prefork's --workers (default: CPU count)")
    ap.add_argument("--limit", type=int, default=40, help="-c")
    ap.add_argument("--program", default="/bin/echo hello")
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument("--prefork", default=PREFORK, help="prefork's tcpserver console script")
    BENCH.add_options(ap)
    return ap.parse_args(argv)


def benchmark(args: argparse.Namespace) -> dict:
    program = shlex.split(args.program)
    expect = expected_reply(program)
    flags = ["-q", "-H", "-R", "-l0", "-c", str(args.limit), "-b", "1024"]
    kinds = variants(args.prefork, args.workers)
    facts = machine_facts()
    running: dict[str, RunningServer] = {}
    rounds: dict[str, list[dict]] = {name: [] for name in kinds}
    results: dict[str, list] = {name: [] for name in kinds}
    try:
        for name, (argv, _send) in kinds.items():
            running[name] = start_server(ServerSpec(name, argv), flags, program)
            log(f"started {name}: {shlex.join(running[name].argv)}")
        names = list(kinds)
        for i in range(args.rounds):
            for name in names if i % 2 == 0 else names[::-1]:
                server = running[name]
                if not server.alive():
                    raise ServerStartError(f"{name} died: {server.stderr_text().strip()}")
                time.sleep(0.3)
                result, cpu = run_slot(server, args, expect, kinds[name][1])
                results[name].append(result)
                rounds[name].append({"round": i + 1, "result": result.to_dict(), "cpu": cpu})
                log(f"round {i + 1}/{args.rounds} {format_result(name, result)}  "
                    f"cpu/conn {cpu['cpu_per_conn_ms']:.3f} ms")
        argvs = {name: server.argv for name, server in running.items()}
    finally:
        for server in running.values():
            server.stop()
    out: dict[str, dict] = {}
    for name in kinds:
        total = merge(results[name])
        cpu_s = sum(r["cpu"]["root_cpu_s"] + r["cpu"]["others_cpu_s"] for r in rounds[name])
        out[name] = {"argv": argvs[name], "sends": kinds[name][1].decode("latin-1"), "rounds": rounds[name],
                     "total": total.to_dict(), "conn_per_s": total.conn_per_s,
                     "cpu_per_conn_ms": cpu_s / max(total.connections, 1) * 1e3}
    plain = out["plain"]
    ratios = {name: {"conn_per_s": v["conn_per_s"] / plain["conn_per_s"] if plain["conn_per_s"] else 0.0,
                     "cpu_per_conn": v["cpu_per_conn_ms"] / plain["cpu_per_conn_ms"] if plain["cpu_per_conn_ms"] else 0.0}
              for name, v in out.items() if name != "plain"}
    settings = [f"--rounds={args.rounds}", f"--seconds={args.seconds:g}", f"--clients={args.clients}",
                f"--workers={args.workers}", f"--limit={args.limit}", f"--program={args.program}"]
    return {"command": reporting.reproduce_command("loadtest.features", settings, args.publish),
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": facts, "load_end": list(os.getloadavg()),
            "config": {"rounds": args.rounds, "seconds": args.seconds, "clients": args.clients,
                       "workers": args.workers, "flags": flags, "program": program},
            "variants": out, "ratios": ratios}


def render(data: dict) -> str:
    v, r = data["variants"], data["ratios"]
    rows = [(name, f"{x['conn_per_s']:,.0f}", f"{x['cpu_per_conn_ms']:.3f}",
             f"{r[name]['conn_per_s']:.3f}x" if name in r else "1", f"{r[name]['cpu_per_conn']:.3f}x" if name in r else "1",
             x["total"]["error_total"])
            for name, x in v.items()]
    lines = ["# What prefork's opt-in connection features cost", "",
             f"One prefork tcpserver three ways, {data['config']['rounds']} alternating rounds of "
             f"{data['config']['seconds']:g} s, {data['config']['clients']} closed-loop clients, "
             f"`{' '.join(data['config']['flags'])}`, program `{' '.join(data['config']['program'])}`:", "",
             "- **plain**: no option;",
             "- **limits**: `MAXCONNIP` and `MAXCONNC` set high in tcpserver's environment, so every connection "
             "counts its address and network under the lock and is admitted;",
             "- **proxy**: `--proxy-protocol`, each client sending a PROXY v1 header first.", "",
             *table(("variant", "conn/s", "server CPU ms/conn", "conn/s vs plain", "CPU vs plain", "errors"), rows),
             "", "The target is a cost of at most 5% of conn/s (a ratio of 0.95 or more). On 2 cores the clients and "
             "the server share the CPUs, so server CPU per connection is the steadier figure.", "",
             "![features](features.png)", "",
             *machine_section(data["machine"], data["load_end"], "prefork only"),
             *reproduce_section(data["command"], {n: shlex.join(x["argv"]) for n, x in v.items()})]
    return "\n".join(lines) + "\n"


def draw(data: dict, path: Path) -> None:
    plt = reporting.pyplot()
    v = data["variants"]
    names = list(v)
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, title in ((a, "conn_per_s", "conn/s"), (b, "cpu_per_conn_ms", "server CPU ms per connection")):
        for i, name in enumerate(names):
            per_round = [rd["result"]["conn_per_s"] if key == "conn_per_s" else rd["cpu"]["cpu_per_conn_ms"]
                         for rd in v[name]["rounds"]]
            ax.bar(i, v[name][key], color=f"C{i}", label=name)
            ax.plot([i] * len(per_round), per_round, "k.", markersize=4)
        ax.set_xticks(range(len(names)), names)
        ax.set_title(title)
    reporting.finish_chart(fig, a, "prefork tcpserver: plain, with limits, with --proxy-protocol", path)


BENCH = Bench("features", "FEATURES.md", "features.png", render, draw)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        return BENCH.render_only(args)
    reporting.stop_on_sigterm()
    try:
        data = benchmark(args)
    except (ServerStartError, OSError, subprocess.SubprocessError, RuntimeError) as e:
        log(f"loadtest.features: error: {e}")
        return 1
    BENCH.write(data, args)
    for name, ratio in data["ratios"].items():
        log(f"{name}: {ratio['conn_per_s']:.3f}x plain conn/s, {ratio['cpu_per_conn']:.3f}x plain CPU per connection")
    return 0


if __name__ == "__main__":
    sys.exit(main())
