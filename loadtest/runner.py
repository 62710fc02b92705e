"""Side-by-side benchmark: Debian's tcpserver and prefork's, same program and flags, alternating rounds.

Both servers run in one invocation and take turns (order reversed every round) so drift of a
shared 2-core machine hits both alike; what is reported is per round, in total, and as ratios
prefork/debian. The same run measures the spawn ceiling, idle memory (PSS), and the servers' own
CPU per connection with the ceiling model it implies (see loadtest.model).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from loadtest import model, preexec, reporting
from loadtest.loadgen import LoadResult, format_result, merge, run_load
from loadtest.machine import machine_facts
from loadtest.report import BENCH
from loadtest.reporting import log
from loadtest.reporting import reproduce_command as spelled_out
from loadtest.servers import RunningServer, ServerSpec, ServerStartError, start_server
from loadtest.spawnrate import SpawnResult, spawn_ceiling

DEBIAN = "/usr/bin/tcpserver"
PREFORK = str(Path(sys.executable).parent / "tcpserver")
BASELINE = "debian"
FLOOR_NAME = "python-floor"  # --python-floor: loadtest.pyfloor, measured in the pre-exec passes only
IPV6_NAME = "prefork6"  # --ipv6: prefork listening on ::1, compared with "prefork" on 127.0.0.1
NPROC = len(os.sched_getaffinity(0))
MODEL_CORES = sorted({NPROC, 4, 8, 16, 32})


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m loadtest.runner", description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5.0, help="load time per server per round")
    ap.add_argument("--clients", type=int, default=4, help="closed-loop client processes")
    ap.add_argument("--workers", type=int, default=NPROC, help="prefork's --workers (default: CPU count)")
    ap.add_argument("--backlog", type=int, default=1024, help="-b for every tcpserver")
    ap.add_argument("--limit", type=int, default=40, help="-c for every tcpserver")
    ap.add_argument("--program", default="/bin/echo hello", help="the program every server runs")
    ap.add_argument("--warmup", type=float, default=1.0, help="unrecorded load per server before round 1")
    ap.add_argument("--spawn-seconds", type=float, default=3.0, help="length of the spawn-ceiling measurement")
    ap.add_argument("--spawn-procs", type=int, default=NPROC, help="parallel spawn loops (default: CPU count)")
    ap.add_argument("--timeout", type=float, default=5.0, help="client connect/read timeout")
    ap.add_argument("--preexec", type=int, default=4000,
                    help="connections per server that run loadtest/cpuprobe.c, to count each server's pre-exec "
                         "CPU (loadtest.preexec; 0: skip)")
    ap.add_argument("--python-floor", action="store_true",
                    help=f"also measure {FLOOR_NAME} (loadtest.pyfloor: accept, posix_spawn, close, reap, nothing "
                         f"else) and {FLOOR_NAME}-contract (plus 0.88's socket options, local address and -c) in "
                         "the pre-exec CPU passes: the least CPU per connection a Python server spends here")
    ap.add_argument("--debian", default=DEBIAN, help="Debian's tcpserver binary")
    ap.add_argument("--prefork", default=PREFORK, help="prefork's tcpserver console script")
    ap.add_argument("--server", action="append", default=[], metavar="NAME=CMD",
                    help="another server to compare: a tcpserver-style command (flags get appended) or a "
                         "command naming {port} (and {program}); NAME debian/prefork replaces that default")
    ap.add_argument("--skip", action="append", default=[], metavar="NAME", help="leave out a server")
    ap.add_argument("--ipv6", action="store_true",
                    help=f"also run prefork on ::1 (server {IPV6_NAME}, clients over IPv6) and report its conn/s "
                         "against prefork's on 127.0.0.1")
    BENCH.add_options(ap)
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.seconds <= 0 or args.clients < 1 or args.workers < 1:
        ap.error("--rounds, --seconds, --clients and --workers must be positive")
    return args


def reproduce_command(args: argparse.Namespace) -> str:
    """Every setting spelled out, so the line reruns this exact benchmark even if defaults change."""
    parts = ["--rounds", str(args.rounds), "--seconds", f"{args.seconds:g}",
             "--clients", str(args.clients), "--workers", str(args.workers), "--backlog", str(args.backlog),
             "--limit", str(args.limit), "--program", args.program, "--warmup", f"{args.warmup:g}",
             "--spawn-seconds", f"{args.spawn_seconds:g}", "--spawn-procs", str(args.spawn_procs),
             "--preexec", str(args.preexec)]
    if args.debian != DEBIAN:
        parts += ["--debian", args.debian]
    if args.prefork != PREFORK:
        parts += ["--prefork", args.prefork]
    for s in args.server:
        parts += ["--server", s]
    for s in args.skip:
        parts += ["--skip", s]
    if args.ipv6:
        parts.append("--ipv6")
    if args.python_floor:
        parts.append("--python-floor")
    return spelled_out("loadtest.runner", parts, args.publish)


def build_specs(args: argparse.Namespace) -> tuple[list[ServerSpec], dict[str, bool]]:
    """The servers in run order, and which of them grow their worker count with the cores (for the model)."""
    specs = {"debian": ServerSpec("debian", [args.debian]),
             "prefork": ServerSpec("prefork", [args.prefork, "--workers", str(args.workers)])}
    scales = {"prefork": True}
    for text in args.server:
        spec = ServerSpec.parse(text)
        specs[spec.name] = spec
        scales.pop(spec.name, None)
    for name in args.skip:
        specs.pop(name, None)
    if args.ipv6 and "prefork" in specs:  # the same server and flags, on ::1
        specs[IPV6_NAME] = ServerSpec(IPV6_NAME, list(specs["prefork"].argv), host="::1")
        scales[IPV6_NAME] = scales.get("prefork", False)
    return list(specs.values()), scales


def expected_reply(program: list[str]) -> bytes:
    """What a client must read: the program's output when run once, here, with no input."""
    out = subprocess.run(program, stdin=subprocess.DEVNULL, capture_output=True, timeout=10, check=True)
    return out.stdout


def run_slot(server: RunningServer, args: argparse.Namespace, expect: bytes, send: bytes = b"") -> tuple[LoadResult, dict]:
    """One server's turn in a round: load it and account the CPU its own processes used meanwhile."""
    procs = server.server_processes()
    before = server.cpu_sample(procs)
    result = run_load(server.port, expect, args.clients, args.seconds, host=server.spec.host, timeout=args.timeout,
                      send=send)
    used, vanished, programs = server.cpu_since(before)
    root = used.get(server.pid, 0.0)
    others = sum(v for pid, v in used.items() if pid != server.pid)
    cpu = {"root_cpu_s": root, "others_cpu_s": others, "programs_cpu_s": programs, "processes": len(procs),
           "vanished": vanished, "cpu_per_conn_ms": (root + others) / max(result.connections, 1) * 1e3}
    return result, cpu


def measure_preexec(specs: list[ServerSpec], flags: list[str], args: argparse.Namespace) -> dict | None:
    """Each server's CPU per connection with its pre-exec work counted (loadtest.preexec): the probe as the
    program, two passes in alternating order, the floor measured before and after; None without a compiler."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="loadtest-probe-") as tmp:
        probe = preexec.build_probe(Path(tmp))
        if probe is None:
            log("pre-exec CPU: no C compiler (cc), skipped")
            return None
        floor = [preexec.floor_us(probe, max(200, args.preexec // 4))]
        sums = {s.name: {"own_s": 0.0, "programs_s": 0.0, "probe_us": 0.0, "connections": 0, "errors": 0}
                for s in specs}
        for i in range(2):
            for spec in specs if i % 2 == 0 else specs[::-1]:
                server = start_server(spec, flags, [str(probe)])
                try:
                    preexec.probe_load(spec.host, server.port, 100, args.clients, args.timeout)  # warm-up
                    time.sleep(0.3)
                    procs = server.server_processes()
                    before = server.cpu_sample(procs)
                    values, errors = preexec.probe_load(spec.host, server.port, args.preexec // 2, args.clients,
                                                        args.timeout)
                    time.sleep(0.3)  # the last programs reaped
                    used, _, programs = server.cpu_since(before)
                finally:
                    server.stop()
                acc = sums[spec.name]
                acc["own_s"] += sum(used.values())
                acc["programs_s"] += programs
                acc["probe_us"] += sum(values)
                acc["connections"] += len(values)
                acc["errors"] += errors
                log(f"pre-exec pass {i + 1}/2 {spec.name}: {len(values)} connections, probe at start "
                    f"{sum(values) / max(len(values), 1):.0f} µs, own CPU {sum(used.values()) / max(len(values), 1) * 1e6:.0f} "
                    f"µs/conn, {errors} failed")
        floor.append(preexec.floor_us(probe, max(200, args.preexec // 4)))
    base = sum(floor) / len(floor)
    out: dict = {"floor_us": base, "floors_us": floor, "servers": {}}
    for name, acc in sums.items():
        n = max(acc["connections"], 1)
        own = acc["own_s"] / n * 1e6
        at_start = acc["probe_us"] / n
        out["servers"][name] = {"connections": acc["connections"], "errors": acc["errors"], "own_us": own,
                                "probe_us": at_start, "preexec_us": at_start - base,
                                "all_us": own + at_start - base}
    log("pre-exec CPU: floor " + f"{base:.0f} µs; " + "; ".join(
        f"{n} own {v['own_us']:.0f} + pre-exec {v['preexec_us']:.0f} = {v['all_us']:.0f} µs/conn"
        for n, v in out["servers"].items()))
    return out


def measure_spawn(program: list[str], args: argparse.Namespace, when: str) -> SpawnResult:
    sp = spawn_ceiling(program, args.spawn_procs, args.spawn_seconds)
    log(f"spawn ceiling {when}: {sp.spawns_per_s:,.0f} spawns/s ({sp.per_proc_per_s:,.0f} per loop, "
        f"{sp.failures} failed)")
    return sp


def summarize_server(name: str, argv: list[str], rounds: list[dict],
                     results: list[LoadResult], spawn_per_core: float, scales: bool) -> dict:
    total = merge(results)
    root = sum(r["cpu"]["root_cpu_s"] for r in rounds)
    others = sum(r["cpu"]["others_cpu_s"] for r in rounds)
    programs = sum(r["cpu"].get("programs_cpu_s", 0.0) for r in rounds)
    parallel = max((r["cpu"]["processes"] for r in rounds), default=1) - 1
    fig = model.cpu_figures(root, others, parallel, total.connections, total.elapsed, programs)
    return {
        "name": name,
        "argv": argv,
        "rounds": rounds,
        "total": total.to_dict(),
        "cpu": fig,
        "model": model.ceilings(fig, spawn_per_core, MODEL_CORES, scales),
        "scales_with_cores": scales,
    }


def print_summary(data: dict) -> None:
    """The human report on stdout: rounds, totals, ratios, spawn ceiling, memory, CPU model, reproduce line."""
    servers = data["servers"]
    print(f"{'round':<6}{'server':<10}{'conn/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'cpu/conn ms':>13}")
    for i in range(data["config"]["rounds"]):
        for name, s in servers.items():
            r = s["rounds"][i]
            res, per = r["result"], r["cpu"]["cpu_per_conn_ms"]
            print(f"{i + 1:<6}{name:<10}{res['conn_per_s']:>10,.0f}{res['p50_ms']:>9.2f}{res['p99_ms']:>9.2f}"
                  f"{res['error_total']:>8}{per:>13.3f}")
    for name, s in servers.items():
        t = s["total"]
        print(f"{'total':<6}{name:<10}{t['conn_per_s']:>10,.0f}{t['p50_ms']:>9.2f}{t['p99_ms']:>9.2f}"
              f"{t['error_total']:>8}{s['cpu']['cpu_per_conn_ms']:>13.3f}")
    for name, ratio in data["ratios"].items():
        print(f"ratio {name}/{BASELINE}: conn/s {ratio['conn_per_s']:.2f}x  p99 {ratio['p99']:.2f}x "
              f"(above 1 = more conn/s; below 1 = lower p99)")
    six = data.get("ipv6_ratio")
    if six:
        print(f"ratio {IPV6_NAME}/prefork (IPv6 on ::1 / IPv4 on 127.0.0.1): conn/s {six['conn_per_s']:.2f}x  "
              f"p99 {six['p99']:.2f}x")
    sp = data["spawn_ceiling"]
    print(f"spawn ceiling: {sp['spawns_per_s']:,.0f} spawns/s with {sp['procs']} loops "
          f"({sp['per_proc_per_s']:,.0f} per loop), no network; before {sp['before']:,.0f}, after {sp['after']:,.0f}")
    if min(sp["before"], sp["after"]) < 0.8 * sp["spawns_per_s"]:
        print("  note: the two spawn measurements differ by more than 20%: something else was using the machine")
    for name, s in servers.items():
        m = s["memory"]
        print(f"memory idle {name}: PSS {m['pss'] / 2**20:.2f} MiB, RSS {m['rss'] / 2**20:.2f} MiB, "
              f"USS {m['uss'] / 2**20:.2f} MiB over {m['processes']} process(es)")
    print("server CPU per connection (user+sys of the server's own processes, programs excluded):")
    for name, s in servers.items():
        c = s["cpu"]
        print(f"  {name}: {c['cpu_per_conn_ms']:.3f} ms/conn = root {c['root_cpu_per_conn_ms']:.3f} (serial) + "
              f"{c['parallel']} other process(es) {c['others_cpu_per_conn_ms']:.3f}; "
              f"{c['busy_cores']:.2f} cores busy under load")
    print("CPU per connection, all counted (server + the programs it started, from fork to exit; 0.88 does part "
          "of each connection's work in its child before exec, which the figure above leaves out):")
    for name, s in servers.items():
        c = s["cpu"]
        print(f"  {name}: {c['all_cpu_per_conn_ms']:.3f} ms/conn = server {c['cpu_per_conn_ms']:.3f} + "
              f"programs {c['programs_cpu_per_conn_ms']:.3f}")
    pre = data.get("preexec")
    if pre:
        print(f"server CPU per connection, pre-exec work counted (loadtest.preexec; floor {pre['floor_us']:.0f} µs):")
        for name, v in pre["servers"].items():
            print(f"  {name}: {v['all_us'] / 1e3:.3f} ms/conn = own {v['own_us'] / 1e3:.3f} + pre-exec "
                  f"{v['preexec_us'] / 1e3:.3f} ({v['connections']} connections, {v['errors']} failed)")
    print("client CPU per connection (load generator, for scale): " + ", ".join(
        f"{n} {s['total']['client_cpu_s'] / max(s['total']['connections'], 1) * 1e3:.3f} ms"
        for n, s in servers.items()))
    print(f"ceiling model, conn/s (accept-side = 1/root + width/others; all-cores = cores / "
          f"(server cpu + {1e3 / sp['per_proc_per_s'] if sp['per_proc_per_s'] else 0:.3f} ms spawn)):")
    header = "  cores " + "".join(f"{n + ' accept':>18}{n + ' all-cores':>20}" for n in servers)
    print(header)
    for i, cores in enumerate(MODEL_CORES):
        row = f"  {cores:<6}"
        for s in servers.values():
            m = s["model"][i]
            row += f"{m['accept_side']:>18,.0f}{m['all_cores']:>20,.0f}"
        print(row)
    print(f"reproduce: {data['command']}")


def ipv6_ratio(servers: dict) -> dict | None:
    """--ipv6: prefork on ::1 against prefork on 127.0.0.1, measured in the same alternating rounds."""
    four, six = servers.get("prefork"), servers.get(IPV6_NAME)
    if four is None or six is None:
        return None
    b, t = four["total"], six["total"]
    return {"conn_per_s": t["conn_per_s"] / b["conn_per_s"] if b["conn_per_s"] else 0.0,
            "p99": t["p99_ms"] / b["p99_ms"] if b["p99_ms"] else 0.0}


def compute_ratios(servers: dict) -> dict:
    base = servers.get(BASELINE)
    if base is None:
        return {}
    out = {}
    for name, s in servers.items():
        if name == BASELINE:
            continue
        b, t = base["total"], s["total"]
        out[name] = {"conn_per_s": t["conn_per_s"] / b["conn_per_s"] if b["conn_per_s"] else 0.0,
                     "p99": t["p99_ms"] / b["p99_ms"] if b["p99_ms"] else 0.0}
    return out


def benchmark(args: argparse.Namespace) -> dict:
    """The whole run; raises ServerStartError when a server cannot start or dies during the run."""
    specs, scales = build_specs(args)
    if not specs:
        raise ServerStartError("no servers left to run")
    program = shlex.split(args.program)
    expect = expected_reply(program)
    flags = ["-q", "-H", "-R", "-l0", "-c", str(args.limit), "-b", str(args.backlog)]
    facts = machine_facts()
    log(f"machine: {facts['cpu_model']}, {facts['nproc']} cpus, kernel {facts['kernel']}, python {facts['python']}, "
        f"load average {' '.join(f'{x:.2f}' for x in facts['load_average'])}")
    if facts["load_average"][0] > 0.5 * facts["nproc"]:
        log("warning: the machine is busy (1-minute load average above half the CPUs): absolute numbers will be "
            "low and noisy; the alternating rounds keep the ratios fairer")
    log(f"spawn ceiling: {args.spawn_procs} loops of posix_spawn+waitpid {args.program} for {args.spawn_seconds:g} s")
    sp_before = measure_spawn(program, args, "before")
    running: dict[str, RunningServer] = {}
    per_round: dict[str, list[dict]] = {s.name: [] for s in specs}
    results: dict[str, list[LoadResult]] = {s.name: [] for s in specs}
    try:
        for spec in specs:
            server = start_server(spec, flags, program)
            running[spec.name] = server
            log(f"started {spec.name}: pid {server.pid}, port {server.port}: {shlex.join(server.argv)}")
        if args.warmup > 0:
            for name, server in running.items():
                w = run_load(server.port, expect, args.clients, args.warmup, host=server.spec.host,
                             timeout=args.timeout)
                log(f"warm-up   {format_result(name, w)}")
        for i in range(args.rounds):
            order = specs if i % 2 == 0 else specs[::-1]
            for spec in order:
                server = running[spec.name]
                if not server.alive():
                    raise ServerStartError(f"{spec.name} died (status {server.proc.returncode}): "
                                           f"{server.stderr_text().strip()}")
                time.sleep(0.3)  # let the previous slot's programs be reaped before sampling CPU
                result, cpu = run_slot(server, args, expect)
                results[spec.name].append(result)
                per_round[spec.name].append({"round": i + 1, "result": result.to_dict(), "cpu": cpu})
                log(f"round {i + 1}/{args.rounds} {format_result(spec.name, result)}  "
                    f"cpu/conn {cpu['cpu_per_conn_ms']:.3f} ms")
        time.sleep(1.0)  # idle: programs of the last round gone, workers back in accept()
        memory = {name: server.memory() for name, server in running.items()}
        argvs = {name: server.argv for name, server in running.items()}
    finally:
        for server in running.values():
            server.stop()
    sp_after = measure_spawn(program, args, "after")
    pre_specs = [*specs, ServerSpec(FLOOR_NAME, [sys.executable, "-m", "loadtest.pyfloor"]),
                 ServerSpec(FLOOR_NAME + "-contract", [sys.executable, "-m", "loadtest.pyfloor", "--contract"]),
                 ] if args.python_floor else specs
    pre = measure_preexec(pre_specs, flags, args) if args.preexec > 0 else None
    sp = max(sp_before, sp_after, key=lambda r: r.spawns_per_s)  # the quieter moment is closer to the machine
    spawn = {**sp.to_dict(), "before": sp_before.spawns_per_s, "after": sp_after.spawns_per_s,
             "load_average": os.getloadavg()}
    servers = {}
    for spec in specs:
        s = summarize_server(spec.name, argvs[spec.name], per_round[spec.name], results[spec.name],
                             sp.per_proc_per_s, scales.get(spec.name, False))
        s["memory"] = memory[spec.name]
        servers[spec.name] = s
    return {
        "command": reproduce_command(args),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": facts,
        "config": {"rounds": args.rounds, "seconds": args.seconds, "clients": args.clients, "workers": args.workers,
                   "flags": flags, "program": program, "expect": expect.decode("latin-1"),
                   "warmup": args.warmup, "model_cores": MODEL_CORES},
        "spawn_ceiling": spawn,
        "servers": servers,
        "ratios": compute_ratios(servers),
        "ipv6_ratio": ipv6_ratio(servers),
        "preexec": pre,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        return BENCH.render_only(args)
    reporting.stop_on_sigterm()
    try:
        data = benchmark(args)
    except ServerStartError as e:
        log(f"loadtest.runner: error: server failed: {e}")
        return 1
    except (OSError, subprocess.SubprocessError, RuntimeError) as e:
        log(f"loadtest.runner: error: {e}")
        return 1
    print_summary(data)
    BENCH.write(data, args)
    broken = [n for n, s in data["servers"].items() if s["total"]["connections"] == 0]
    if broken:
        log(f"loadtest.runner: error: no successful connection to {', '.join(broken)}")
        return 1
    errors = sum(s["total"]["error_total"] for s in data["servers"].values())
    if errors:
        log(f"warning: {errors} client errors in total; see the errors column")
    return 0


if __name__ == "__main__":
    sys.exit(main())
