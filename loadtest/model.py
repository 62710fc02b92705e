"""From measured CPU per connection to a throughput ceiling on more cores.

Why: on a 2-core box the clients, the servers and the programs all compete, so raw conn/s says
little about a bigger machine. What does carry over is where each server spends CPU per connection:
work done in the one root process (Debian's tcpserver accepts and forks there) is serial, so it caps
throughput at 1/cpu_per_conn whatever the core count; work spread over W accepting workers caps it
at W/cpu_per_conn. Every connection also starts the program, which costs what one core's spawn
loop measured; server CPU plus that, spread over all cores, is the other cap.
"""

from __future__ import annotations


def cpu_figures(root_cpu_s: float, others_cpu_s: float, parallel: int, connections: int,
                elapsed_s: float, programs_cpu_s: float = 0.0) -> dict:
    """CPU per connection split into the serial root and the `parallel` other processes; PROGRAMS_CPU_S is
    what the programs the server started used, from fork to exit (their pre-exec part is server work)."""
    n = max(connections, 1)
    total = root_cpu_s + others_cpu_s
    return {
        "programs_cpu_s": programs_cpu_s,
        "programs_cpu_per_conn_ms": programs_cpu_s / n * 1e3,
        "all_cpu_per_conn_ms": (total + programs_cpu_s) / n * 1e3,
        "connections": connections,
        "cpu_s": total,
        "root_cpu_s": root_cpu_s,
        "others_cpu_s": others_cpu_s,
        "parallel": parallel,
        "cpu_per_conn_ms": total / n * 1e3,
        "root_cpu_per_conn_ms": root_cpu_s / n * 1e3,
        "others_cpu_per_conn_ms": others_cpu_s / n * 1e3,
        "busy_cores": total / elapsed_s if elapsed_s > 0 else 0.0,
    }


def accept_ceiling(fig: dict, cores: int, scales_with_cores: bool) -> float:
    """Connections/s the server's own CPU allows on `cores` cores (infinite when it used none).

    The root's share is serial. The others' share is split over their processes, which are
    `parallel` now or, for a server whose worker count follows the core count, `cores`.
    """
    root = fig["root_cpu_per_conn_ms"] / 1e3
    others = fig["others_cpu_per_conn_ms"] / 1e3
    width = min(cores, fig["parallel"]) if not scales_with_cores else cores
    limits = []
    if root > 0:
        limits.append(1.0 / root)
    if others > 0 and width > 0:
        limits.append(width / others)
    return min(limits) if limits else float("inf")


def ceilings(fig: dict, spawn_per_core: float, core_counts: list[int], scales_with_cores: bool) -> list[dict]:
    """Per core count: the accept-side ceiling, the all-cores budget, and the lower of the two.

    The all-cores budget charges each connection its server CPU plus one program start (1/spawn rate
    of one core) and spreads that over every core; clients are left out (they run elsewhere in real use).
    """
    spawn_cost = 1.0 / spawn_per_core if spawn_per_core > 0 else 0.0
    per_conn = fig["cpu_per_conn_ms"] / 1e3 + spawn_cost
    rows = []
    for cores in core_counts:
        acc = accept_ceiling(fig, cores, scales_with_cores)
        budget = cores / per_conn if per_conn > 0 else float("inf")
        rows.append({"cores": cores, "accept_side": acc, "all_cores": budget, "ceiling": min(acc, budget)})
    return rows
