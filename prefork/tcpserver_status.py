"""``tcpserver-status [--json] SCOREBOARD``: a tcpserver's workers and totals, read from its scoreboard.

What Apache's mod_status page and ``svstat`` give a person, for prefork's
tcpserver: one line for the server (svstat's words: ``up (pid N) S
seconds``), one per worker slot, one for the programs whose worker died
(the master's orphans), and the totals.  Nothing is asked of the server: the
scoreboard (layout in ``prefork/scoreboard.py``) is read from shared memory.
SCOREBOARD is the file (``tcpserver --scoreboard PATH``, default
``/dev/shm/prefork-tcpserver.PID``) or the master's PID.

With ``--metrics HOST:PORT`` the server records the address its exporter
serves (with port 0, the port it was given), so a line ``metrics
http://HOST:PORT/metrics`` (``"metrics"`` in JSON) tells where to scrape
even when ``-q`` silenced the exporter's own ``listening on`` line.

``--json`` prints one object for scripts; times there are unix seconds and
durations seconds.  A scoreboard whose server is gone is still shown
(``down`` / ``"running": false``): it is what was left at the end.

Exit 0 when shown; 100 for a bad command line; 111 when the scoreboard
cannot be read (``tcpserver-status: fatal: unable to read PATH: why``).
"""

from __future__ import annotations

import os
import sys
import time

from prefork.djb import errstr, fatal
from prefork.options import Option, command_line, usage_error
from prefork.proc import running as process_running
from prefork.scoreboard import LIMIT_KINDS
from prefork.scoreboard_read import LIVE_STATES, ScoreboardError, Snapshot, read, service_name
from prefork.shmfile import printable

PROG = "tcpserver-status"
USAGE = "tcpserver-status [--json] scoreboard|pid"
HELP = f"""usage: {USAGE}

Show a prefork tcpserver's workers and totals from its scoreboard (no request to the server).
  scoreboard  the file given to tcpserver --scoreboard, or the master's pid (/dev/shm/prefork-tcpserver.PID)
  --json      one JSON object for scripts (unix seconds, seconds)
"""
NS = 1_000_000_000


def resolve(arg: str) -> str:
    """The scoreboard path for ARG: the file itself, or the default path of the master pid ARG."""
    if arg.isascii() and arg.isdigit() and not os.path.exists(arg):
        from prefork.scoreboard import default_path

        return default_path(int(arg))
    return arg


def running(snap: Snapshot) -> bool:
    """Whether the master that made the scoreboard is still there (not gone, not a zombie)."""
    return process_running(snap.master_pid)


def totals(snap: Snapshot) -> dict[str, int]:
    """Sums over the slots, the master's orphan counts included."""
    slots = snap.slots
    return {
        "accepted": sum(s.accepted for s in slots),
        "denied": sum(s.denied for s in slots),
        "dropped": sum(s.dropped for s in slots),
        "active": snap.active,
        "exit_zero": sum(s.exit_zero for s in slots) + snap.orphan_exit_zero,
        "exit_nonzero": sum(s.exit_nonzero for s in slots) + snap.orphan_exit_nonzero,
        "exit_signal": sum(s.exit_signal for s in slots) + snap.orphan_exit_signal,
        "duration_count": sum(sum(s.duration_buckets) for s in slots) + sum(snap.orphan_duration_buckets),
        "duration_sum_ns": sum(s.duration_sum_ns for s in slots) + snap.orphan_duration_sum_ns,
    }


def limited(snap: Snapshot) -> dict[str, int]:
    """Connections refused by each per-client limit, summed over the slots."""
    return {kind: sum(s.limited[k] for s in snap.slots) for k, kind in enumerate(LIMIT_KINDS)}


def workers_alive(snap: Snapshot, is_running: bool) -> int:
    """Slots with a live worker (none once the master is gone: its workers die with it)."""
    return sum(1 for s in snap.slots if s.pid and s.state in LIVE_STATES) if is_running else 0


def _ago(ns: int, now_ns: int) -> str:
    return "-" if ns <= 0 else str(max(0, now_ns - ns) // NS)


def _mean_ms(sum_ns: int, count: int) -> str:
    return "-" if count <= 0 else f"{sum_ns / count / 1e6:.1f}"


COLUMNS = ("slot", "pid", "state", "gen", "active", "accepted", "denied", "dropped", "exit0", "exit>0", "signal",
           "mean ms", "up s", "last s")
WIDTHS = (5, 8, 9, 4, 7, 9, 7, 8, 9, 7, 7, 8, 8, 7)


def _row(cells: tuple[object, ...]) -> str:
    out = []
    for i, (cell, width) in enumerate(zip(cells, WIDTHS, strict=True)):
        text = str(cell)
        out.append(text.ljust(width) if i in (0, 2) else text.rjust(width))
    return " ".join(out).rstrip()


def metrics(snap: Snapshot) -> dict[str, object] | None:
    """Where the server's exporter serves, None without --metrics; an IPv6 address is not recorded (url None)."""
    if not snap.metrics_port:
        return None
    url = f"http://{snap.metrics_ip}:{snap.metrics_port}/metrics" if snap.metrics_ip else None
    return {"port": snap.metrics_port, "url": url}


def format_text(path: str, snap: Snapshot, is_running: bool, now_ns: int) -> str:
    """The person's view: the server line, the table of slots, the orphans, the totals."""
    t = totals(snap)
    seconds = max(0, now_ns - snap.start_ns) // NS
    if is_running:
        head = f"{path}: up (pid {snap.master_pid}) {seconds} seconds"
    else:
        head = f"{path}: down (pid {snap.master_pid} is not running), started {seconds} seconds ago"
    lines = [
        head,
        f"service {printable(service_name(snap))}, {t['active']}/{snap.limit} connections, "
        f"{workers_alive(snap, is_running)}/{len(snap.slots)} workers, {snap.worker_restarts} worker restarts",
    ]
    served = metrics(snap)
    if served is not None:
        lines.append(f"metrics {served['url'] or f'port {snap.metrics_port} (IPv6 address)'}")
    lines.append(_row(COLUMNS))
    for s in snap.slots:
        lines.append(_row((
            s.index, s.pid or "-", s.state + ("*" if s.waiting else ""), s.generation, s.active, s.accepted,
            s.denied, s.dropped, s.exit_zero, s.exit_nonzero, s.exit_signal,
            _mean_ms(s.duration_sum_ns, sum(s.duration_buckets)), _ago(s.started_ns if s.pid else 0, now_ns),
            _ago(s.last_accept_ns, now_ns),
        )))
    lines.append(_row((
        "orph", "-", "-", "-", snap.orphans, "-", "-", "-", snap.orphan_exit_zero, snap.orphan_exit_nonzero,
        snap.orphan_exit_signal, _mean_ms(snap.orphan_duration_sum_ns, sum(snap.orphan_duration_buckets)), "-", "-",
    )))
    last = max((s.last_accept_ns for s in snap.slots), default=0)
    lines.append(_row((
        "total", "-", "-", "-", t["active"], t["accepted"], t["denied"], t["dropped"], t["exit_zero"],
        t["exit_nonzero"], t["exit_signal"], _mean_ms(t["duration_sum_ns"], t["duration_count"]), seconds,
        _ago(last, now_ns),
    )))
    if any(s.waiting for s in snap.slots):
        lines.append("* waiting for a free connection (-c limit reached)")
    refused = limited(snap)
    if any(refused.values()):
        lines.append("refused by per-client limits: " + ", ".join(f"{k} {n}" for k, n in refused.items()))
    return "\n".join(lines) + "\n"


def as_json(path: str, snap: Snapshot, is_running: bool) -> dict[str, object]:
    """The same for scripts: plain numbers, unix seconds, seconds."""
    t = totals(snap)

    def exits(zero: int, nonzero: int, signal: int) -> dict[str, int]:
        return {"zero": zero, "nonzero": nonzero, "signal": signal}

    def secs(ns: int) -> float | None:
        return ns / NS if ns > 0 else None

    return {
        "path": path,
        "service": service_name(snap),
        "name": snap.name,
        "running": is_running,
        "master_pid": snap.master_pid,
        "local": snap.local,
        "start_time": snap.start_ns / NS,
        "limit": snap.limit,
        "active": t["active"],
        "orphans": snap.orphans,
        "workers": len(snap.slots),
        "workers_alive": workers_alive(snap, is_running),
        "worker_restarts": snap.worker_restarts,
        "metrics": metrics(snap),
        "totals": {
            "accepted": t["accepted"], "denied": t["denied"], "dropped": t["dropped"], "limited": limited(snap),
            "exits": exits(t["exit_zero"], t["exit_nonzero"], t["exit_signal"]),
            "duration_count": t["duration_count"], "duration_seconds_sum": t["duration_sum_ns"] / NS,
        },
        "orphan_programs": {
            "exits": exits(snap.orphan_exit_zero, snap.orphan_exit_nonzero, snap.orphan_exit_signal),
            "duration_count": sum(snap.orphan_duration_buckets),
            "duration_seconds_sum": snap.orphan_duration_sum_ns / NS,
        },
        "slots": [
            {
                "index": s.index, "pid": s.pid or None, "state": s.state, "generation": s.generation,
                "active": s.active, "waiting": s.waiting, "accepted": s.accepted, "denied": s.denied,
                "dropped": s.dropped, "limited": dict(zip(LIMIT_KINDS, s.limited, strict=True)),
                "exits": exits(s.exit_zero, s.exit_nonzero, s.exit_signal),
                "duration_count": sum(s.duration_buckets), "duration_seconds_sum": s.duration_sum_ns / NS,
                "started_time": secs(s.started_ns) if s.pid else None, "last_accept_time": secs(s.last_accept_ns),
            }
            for s in snap.slots
        ],
    }


def main(argv: list[str] | None = None) -> None:
    values, operands = command_line(sys.argv[1:] if argv is None else argv, USAGE, HELP, [Option("--json", "json")])
    want_json = bool(values["json"])
    if len(operands) != 1:
        usage_error(USAGE)
    path = resolve(operands[0])
    try:
        snap = read(path)
    except OSError as e:
        fatal(PROG, f"unable to read {path}: {errstr(e)}")
    except ScoreboardError as e:
        fatal(PROG, f"unable to read {path}: {e}")
    is_running = running(snap)
    if want_json:
        import json

        out = json.dumps(as_json(path, snap, is_running), indent=2) + "\n"
    else:
        out = format_text(path, snap, is_running, time.time_ns())
    data = memoryview(out.encode("utf-8", "surrogateescape"))
    while data:
        data = data[os.write(1, data):]
    raise SystemExit(0)


if __name__ == "__main__":
    main()
