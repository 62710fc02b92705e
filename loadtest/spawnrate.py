"""The machine's spawn ceiling: P processes each looping posix_spawn + waitpid of the program, no network.

Every connection of a tcpserver costs at least one program start, so no server can serve more
connections per second than this; it puts the servers' conn/s in proportion.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection

from loadtest.loadgen import end_clients


@dataclass
class SpawnResult:
    procs: int
    seconds: float
    spawns: int
    failures: int
    spawns_per_s: float
    per_proc_per_s: float

    def to_dict(self) -> dict:
        return asdict(self)


def _spawner(conn: Connection, argv: list[str], seconds: float) -> None:
    """Loop spawn+reap with stdout on /dev/null (the program's output is not what is measured)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    actions = [(os.POSIX_SPAWN_DUP2, devnull, 1)]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    conn.send(b"ready")
    start_at: float = conn.recv()
    delay = start_at - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    deadline = start_at + seconds
    n = failures = 0
    now = time.monotonic()
    while now < deadline:
        pid = os.posix_spawn(argv[0], argv, env, file_actions=actions)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) == 0:
            n += 1
        else:
            failures += 1
        now = time.monotonic()
    conn.send((n, failures, now - start_at))


def spawn_ceiling(argv: list[str], procs: int = 2, seconds: float = 3.0) -> SpawnResult:
    """Spawns per second of `procs` parallel spawn loops over `seconds` (bounded; stragglers killed by pid)."""
    if not os.access(argv[0], os.X_OK):
        raise FileNotFoundError(f"program {argv[0]} is not executable")
    ctx = mp.get_context("fork")
    workers: list[tuple[mp.process.BaseProcess, Connection]] = []
    total = failures = 0
    elapsed = 0.0
    try:
        for _ in range(procs):
            a, b = ctx.Pipe()
            p = ctx.Process(target=_spawner, args=(b, argv, seconds), daemon=True)
            p.start()
            b.close()
            workers.append((p, a))
        for p, c in workers:
            if not c.poll(10.0):
                raise RuntimeError(f"spawn loop pid {p.pid} did not start")
            c.recv()
        start_at = time.monotonic() + 0.02
        for _, c in workers:
            c.send(start_at)
        for p, c in workers:
            if not c.poll(seconds + 15.0):
                raise RuntimeError(f"spawn loop pid {p.pid} did not finish in time")
            n, f, el = c.recv()
            total += n
            failures += f
            elapsed = max(elapsed, el)
    finally:
        end_clients(workers)
    rate = total / elapsed if elapsed > 0 else 0.0
    return SpawnResult(procs, elapsed, total, failures, rate, rate / procs if procs else 0.0)


if __name__ == "__main__":
    import sys

    r = spawn_ceiling(["/bin/echo", "hello"], procs=int(sys.argv[1]) if len(sys.argv) > 1 else 2)
    print(f"{r.spawns_per_s:,.0f} spawns/s ({r.procs} procs, {r.per_proc_per_s:,.0f} each, {r.failures} failures)")
