"""The tcpserver benchmark's report (tables, model, machine, reproduce line) and chart, from loadtest.runner's JSON.

Built only from that JSON, so ``python -m loadtest.runner --render tcpserver.json`` rebuilds them; where they
are written (a results folder, loadtest/REPORT.md and bench.png with --publish) is loadtest.reporting's.
"""

from __future__ import annotations

from pathlib import Path

from loadtest.reporting import Bench, finish_chart, machine_section, pyplot, reproduce_section


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f}"


def render_markdown(data: dict) -> str:
    servers = data["servers"]
    cfg = data["config"]
    m = data["machine"]
    sp = data["spawn_ceiling"]
    names = list(servers)
    out = ["# prefork load test", ""]
    out.append(f"`{' '.join(cfg['program'])}` behind each server, flags `{' '.join(cfg['flags'])}`, "
               f"{cfg['clients']} closed-loop clients on 127.0.0.1, {cfg['rounds']} rounds × {cfg['seconds']:g} s "
               f"per server, order alternating per round; run {data['when']}.")
    load = m.get("load_average") or [0.0]
    if load[0] > 0.5 * m["nproc"] or min(sp["before"], sp["after"]) < 0.8 * sp["spawns_per_s"]:
        out += ["", f"> **Busy machine:** 1-minute load average {load[0]:.2f} on {m['nproc']} CPUs at the start, spawn "
                f"ceiling {sp['before']:,.0f} before and {sp['after']:,.0f} after the rounds. Absolute numbers are "
                "low and noisy; the alternating order keeps the ratios fairer. Rerun on a quiet machine to publish."]
    out += ["", "## Totals", "", "| server | conn/s | p50 ms | p99 ms | errors | server CPU ms/conn | idle PSS MiB |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for name, s in servers.items():
        t = s["total"]
        out.append(f"| {name} | {t['conn_per_s']:,.0f} | {t['p50_ms']:.2f} | {t['p99_ms']:.2f} | "
                   f"{t['error_total']} | {s['cpu']['cpu_per_conn_ms']:.3f} | {_mib(s['memory']['pss'])} |")
    for name, r in data["ratios"].items():
        out.append("")
        out.append(f"**{name}/debian**: conn/s × {r['conn_per_s']:.2f}, p99 × {r['p99']:.2f}.")
    six = data.get("ipv6_ratio")
    if six:  # --ipv6: prefork6 is prefork on ::1, its clients over IPv6
        out.append("")
        out.append(f"**prefork6/prefork** (the same server on ::1, clients over IPv6, against 127.0.0.1): conn/s × "
                   f"{six['conn_per_s']:.2f}, p99 × {six['p99']:.2f}.")
    out += ["", "## Rounds", "", "| round | " + " | ".join(f"{n} conn/s | {n} p99 ms" for n in names) + " |",
            "|---|" + "---:|---:|" * len(names)]
    for i in range(cfg["rounds"]):
        cells = []
        for s in servers.values():
            r = s["rounds"][i]["result"]
            cells.append(f"{r['conn_per_s']:,.0f} | {r['p99_ms']:.2f}")
        out.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    errs = {n: {k: v for k, v in s["total"]["errors"].items() if v} for n, s in servers.items()}
    out += ["", "Errors by kind: " + "; ".join(f"{n}: {e or 'none'}" for n, e in errs.items()) + "."]
    out += ["", "## Spawn ceiling", "",
            f"{sp['procs']} processes looping `posix_spawn` + `waitpid` of the same program, no network: "
            f"**{sp['spawns_per_s']:,.0f} spawns/s** ({sp['per_proc_per_s']:,.0f} per process; measured before "
            f"the rounds {sp['before']:,.0f}, after them {sp['after']:,.0f}, the higher is used). "
            "No tcpserver can start programs faster than this on this machine."]
    out += ["", "## Memory (idle, after the load)", "", "| server | processes | PSS MiB | RSS MiB | USS MiB |",
            "|---|---:|---:|---:|---:|"]
    for name, s in servers.items():
        mem = s["memory"]
        out.append(f"| {name} | {mem['processes']} | {_mib(mem['pss'])} | {_mib(mem['rss'])} | {_mib(mem['uss'])} |")
    out += ["", "## Server CPU per connection and the ceiling it implies", "",
            "User+sys CPU of the server's own processes (children excluded) during the rounds, per connection "
            "served. The root process's share is serial (Debian's tcpserver accepts and forks there), so it "
            "caps throughput at 1/cpu whatever the cores; the other processes' share (prefork's workers, "
            "which accept in parallel) is divided by their number, which follows the core count for prefork. "
            "The all-cores figure adds one program start (1/spawn rate per core) to each connection's server "
            "CPU and spreads it over every core; clients are not charged.", "",
            "| server | ms/conn | root ms/conn | others ms/conn | other processes | cores busy |",
            "|---|---:|---:|---:|---:|---:|"]
    for name, s in servers.items():
        c = s["cpu"]
        out.append(f"| {name} | {c['cpu_per_conn_ms']:.3f} | {c['root_cpu_per_conn_ms']:.3f} | "
                   f"{c['others_cpu_per_conn_ms']:.3f} | {c['parallel']} | {c['busy_cores']:.2f} |")
    pre = data.get("preexec")
    if pre:
        debian = pre["servers"].get("debian")
        out += ["", "## Server CPU per connection, pre-exec work counted", "",
                "The figures above count the server's own processes only, and so leave out part of 0.88's work: "
                "Debian's tcpserver forks, and its child sets the socket options, builds the environment and "
                "reads the rules before it executes the program, CPU the kernel charges to the program. prefork "
                "does all of it in its worker and starts the program with posix_spawn. Here every server runs "
                "`loadtest/cpuprobe.c`, which answers with the CPU its process had used when it started; the "
                "same probe started by a bare posix_spawn loop gives the exec alone (the floor, "
                f"{pre['floor_us']:.0f} µs). The pre-exec work is the difference (loadtest/preexec.py).", "",
                "| server | own µs/conn | own vs debian | probe at start µs | pre-exec µs | all counted µs/conn "
                "| all counted vs debian |",
                "|---|---:|---:|---:|---:|---:|---:|"]
        for name, v in pre["servers"].items():
            own_vs = "—" if name == "debian" or not debian or debian["own_us"] <= 0 else \
                f"{v['own_us'] / debian['own_us']:.2f}x"
            vs = "—" if name == "debian" or not debian or debian["all_us"] <= 0 else \
                f"{v['all_us'] / debian['all_us']:.2f}x"
            out.append(f"| {name} | {v['own_us']:.0f} | {own_vs} | {v['probe_us']:.0f} | {v['preexec_us']:.0f} | "
                       f"{v['all_us']:.0f} | {vs} |")
        if "python-floor" in pre["servers"]:
            out += ["", "`python-floor` is `loadtest/pyfloor.py`, measured in the same passes: one Python process "
                    "that accepts, copies one environment dict, sets the client's address and port, calls "
                    "`os.posix_spawn` and reaps, with no -c limit, rules, log or shared memory. No server written "
                    "in Python can spend less per connection on this machine. `python-floor-contract` adds the "
                    "least of 0.88's contract a server that does not fork first must do in its own process "
                    "(0.88's child does it before its exec): the IP options cleared, the local address asked, at "
                    "most -c programs alive (a count in one process). Its own CPU against Debian's bounds the "
                    "own-CPU ratio any Python tcpserver can reach here."]
    out += ["", "Modelled ceiling, conn/s (lower of accept-side and all-cores):", "",
            "| cores | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
    for i, cores in enumerate(cfg["model_cores"]):
        cells = []
        for s in servers.values():
            row = s["model"][i]
            cells.append(f"{row['ceiling']:,.0f} (accept {row['accept_side']:,.0f})")
        out.append(f"| {cores} | " + " | ".join(cells) + " |")
    out += ["", *machine_section(m, sp.get("load_average", ()), f"ucspi-tcp {m.get('ucspi_tcp') or 'unknown'}")]
    out += reproduce_section(data["command"], {name: " ".join(s["argv"]) for name, s in servers.items()})
    return "\n".join(out)


def write_chart(data: dict, path: Path) -> Path:
    """Grouped bars per round: conn/s on the left, p99 on the right, one colour per server."""
    plt = pyplot()

    servers = data["servers"]
    rounds = data["config"]["rounds"]
    groups = rounds + 1  # the rounds, then the total
    width = 0.8 / max(len(servers), 1)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.6))
    for k, (name, s) in enumerate(servers.items()):
        xs = [i + (k - (len(servers) - 1) / 2) * width for i in range(groups)]
        conn = [r["result"]["conn_per_s"] for r in s["rounds"]] + [s["total"]["conn_per_s"]]
        p99 = [r["result"]["p99_ms"] for r in s["rounds"]] + [s["total"]["p99_ms"]]
        ax1.bar(xs, conn, width, label=name, color=f"C{k}")
        ax2.bar(xs, p99, width, label=name, color=f"C{k}")
    labels = [str(i + 1) for i in range(rounds)] + ["total"]
    for ax, title in ((ax1, "connections/s (higher is better)"), (ax2, "p99 latency, ms (lower is better)")):
        ax.set_xticks(range(groups), labels)
        ax.set_xlabel("round")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    cfg = data["config"]
    title = f"{' '.join(cfg['program'])}, {cfg['clients']} clients, {data['machine']['nproc']} cpus"
    return finish_chart(fig, ax1, title, path)


BENCH = Bench("tcpserver", "REPORT.md", "bench.png", render_markdown, write_chart)
