"""tcpserver -c: the limit on simultaneous programs (docs/CONTRACTS.md, tcpserver concurrency and signals; docs/ARCHITECTURE.md, "tcpserver: master, workers, scoreboard").

The program tests/progs/hold.pl appends `start PID T` / `end PID T` (CLOCK_MONOTONIC) to a file
around a sleep; from those intervals the tests compute how many programs were alive at once.
Timing is only used for ordering and overlap, never to assert speed.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import threading
import time

import psutil
import pytest
from tcpserver_harness import (
    END_RE,
    HOLD,
    PID_RE,
    QUIET,
    STATUS_RE,
    connect,
    recv_all,
    talk,
    wait_until,
    zombies_under,
)


def intervals(log) -> dict[int, tuple[float, float | None]]:
    spans: dict[int, list[float | None]] = {}
    for line in log.read_text().splitlines():
        what, pid, t = line.split()
        span = spans.setdefault(int(pid), [None, None])
        span[0 if what == "start" else 1] = float(t)
    return {pid: (s, e) for pid, (s, e) in spans.items()}


def max_overlap(spans) -> int:
    events = []
    for start, end in spans.values():
        events.append((start, 1))
        events.append((end if end is not None else float("inf"), -1))
    alive = peak = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):  # an end before a start at the same instant
        alive += step
        peak = max(peak, alive)
    return peak


def run_clients(port: int, count: int, timeout: float = 60.0, stagger: float = 0.0) -> list[bytes | Exception]:
    results: list[bytes | Exception] = [b""] * count

    def client(i: int) -> None:
        try:
            results[i] = talk(port, timeout=timeout)[0]
        except Exception as exc:  # noqa: BLE001 - reported in the assertion
            results[i] = exc

    threads = [threading.Thread(target=client, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
        if stagger:
            time.sleep(stagger)
    for t in threads:
        t.join(timeout + 5)
    return results


def test_limit_three(launch, tmp_path):
    log = tmp_path / "spans"
    server = launch(["-v", "-c", "3", *QUIET], [HOLD, str(log), "0.5"])
    results = run_clients(server.port, 10)
    assert all(isinstance(r, bytes) and r.startswith(b"done ") for r in results), results
    spans = intervals(log)
    assert len(spans) == 10 and all(end is not None for _, end in spans.values())
    assert max_overlap(spans) == 3
    served = {int(r.split()[1]) for r in results}
    assert served == set(spans)
    lines = server.wait_ends(10)
    counts = [int(m[1]) for m in map(STATUS_RE.match, lines) if m]
    assert max(counts) == 3 and all(m[2] == "3" for m in map(STATUS_RE.match, lines) if m)
    assert log_concurrency(lines) <= 3


def log_concurrency(lines: list[str]) -> int:
    """Connections in flight as a log reader sees them: +1 at each pid line, -1 at each end line.
    In 0.88 a slot is only reused after the `end` line is written (one process accepts and reaps)."""
    alive = peak = 0
    for line in lines:
        if PID_RE.match(line):
            alive += 1
        elif END_RE.match(line):
            alive -= 1
        peak = max(peak, alive)
    return peak


def test_limit_one_log_never_shows_two(launch, tmp_path):
    log = tmp_path / "spans"
    server = launch(["-v", "-c1", *QUIET], [HOLD, str(log), "0.1"])
    results = run_clients(server.port, 12)
    assert all(isinstance(r, bytes) and r.startswith(b"done ") for r in results), results
    lines = server.wait_ends(12)
    assert max_overlap(intervals(log)) == 1
    assert log_concurrency(lines) == 1, "\n".join(lines)


def test_limit_one_serialises(launch, tmp_path):
    log = tmp_path / "spans"
    server = launch(["-c1", *QUIET], [HOLD, str(log), "1"])
    results = run_clients(server.port, 3, stagger=0.1)
    assert all(isinstance(r, bytes) and r.startswith(b"done ") for r in results), results
    spans = sorted(intervals(log).values())
    assert len(spans) == 3
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert end <= start, f"programs overlap: {spans}"


def test_waiting_clients_are_queued_not_refused(launch, tmp_path):
    """At the limit nothing is accepted: new clients complete the handshake and wait."""
    log = tmp_path / "spans"
    server = launch(["-c", "1", *QUIET], [HOLD, str(log), "1.5"])
    first = connect(server.port)
    assert wait_until(lambda: log.exists(), 10)
    waiting = [connect(server.port) for _ in range(3)]  # would raise if refused
    try:
        first.shutdown(1)
        assert recv_all(first, 15).startswith(b"done ")
        for sock in waiting:
            sock.shutdown(1)
            assert recv_all(sock, 30).startswith(b"done ")
    finally:
        for sock in [first, *waiting]:
            sock.close()
    assert max_overlap(intervals(log)) == 1


def test_limit_zero_accepts_nothing(launch):
    server = launch(["-v", "-c0", *QUIET], ["/bin/echo", "hi"])
    with connect(server.port) as sock:
        sock.settimeout(1.5)
        with pytest.raises(TimeoutError):
            sock.recv(10)
    assert server.lines() == ["tcpserver: status: 0/0"]


# ---- prefork only -----------------------------------------------------------------------------


def test_worker_killed_mid_run_keeps_limit(prefork, tmp_path):
    log = tmp_path / "spans"
    server = prefork(["-c", "3", *QUIET], [HOLD, str(log), "0.5"])
    assert wait_until(lambda: len(server.workers()) == 2, 10)
    before = {w.pid for w in server.workers()}
    results: list[bytes | Exception] = []
    runner = threading.Thread(target=lambda: results.extend(run_clients(server.port, 10)))
    runner.start()
    assert wait_until(lambda: log.exists() and "start" in log.read_text(), 10)
    victim = sorted(before)[0]
    os.kill(victim, signal.SIGKILL)
    runner.join(90)
    assert len(results) == 10
    assert all(isinstance(r, bytes) and (r == b"" or r.startswith(b"done ")) for r in results), results
    assert wait_until(lambda: len(server.workers()) == 2 and victim not in {w.pid for w in server.workers()}, 10)
    assert max_overlap(intervals(log)) <= 3
    # capacity is not lost: a second batch reaches 3 at once again, and never more
    log.unlink()
    again = run_clients(server.port, 9)
    assert all(isinstance(r, bytes) and r.startswith(b"done ") for r in again), again
    assert max_overlap(intervals(log)) == 3
    assert wait_until(lambda: not zombies_under(server.pid), 10), zombies_under(server.pid)


def test_programs_are_children_of_workers(prefork, tmp_path):
    log = tmp_path / "spans"
    server = prefork(QUIET, [HOLD, str(log), "1"])
    assert wait_until(lambda: len(server.workers()) == 2, 10)
    workers = {w.pid for w in server.workers()}
    assert server.pid not in workers
    with connect(server.port) as sock:
        assert wait_until(lambda: log.exists() and log.read_text(), 10)
        pid = int(log.read_text().split()[1])
        assert psutil.Process(pid).ppid() in workers
        sock.shutdown(1)
        assert recv_all(sock, 10) == f"done {pid}\n".encode()


# ---- stress: every client is answered, at -c 1 and -c 2 -----------------------------------------
STRESS_SECONDS = float(os.environ.get("PREFORK_STRESS_SECONDS", "5"))
# 0-70 ms per program, one in 40 (by pid) holds its slot for a second
VARIABLE = ["/bin/sh", "-c", "case $(($$ % 40)) in 0) sleep 1;; *) sleep 0.0$(($$ % 8));; esac; echo ok"]


@pytest.mark.parametrize(("limit", "workers"), [(1, 2), (2, 2), (2, 3)])
def test_stress_every_client_is_answered(prefork, limit, workers):
    """Many concurrent clients of varying patterns (read to EOF, half-close first, or give up at
    once) against a small -c limit: every client that waits is answered "ok" within a bound, the
    log never shows more than the limit in use, and every connection's lines are balanced.  A lost
    wake-up in the capacity wait, or a connection accepted and never served, shows as a timeout."""
    server = prefork(["-v", "-c", str(limit), "--workers", str(workers), *QUIET], VARIABLE)
    assert wait_until(lambda: len(server.workers()) == workers, 10)
    stop = threading.Event()
    lock = threading.Lock()
    latencies: list[float] = []
    failures: list[str] = []
    given_up = [0]

    def client(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(10_000):
            if stop.is_set():
                return
            kind = rng.random()
            started = time.monotonic()
            try:
                with connect(server.port, timeout=20) as sock:
                    if kind < 0.1:
                        with lock:
                            given_up[0] += 1
                        continue  # closes at once: the program still runs and holds its slot
                    if kind < 0.4:
                        sock.shutdown(socket.SHUT_WR)
                    reply = recv_all(sock, 20)
            except (OSError, TimeoutError) as exc:
                reply = repr(exc).encode()
            elapsed = time.monotonic() - started
            with lock:
                latencies.append(elapsed)
                if reply != b"ok\n":
                    failures.append(f"{reply!r} after {elapsed:.1f}s")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    time.sleep(STRESS_SECONDS)
    stop.set()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert not failures, failures[:5]
    assert len(latencies) > 20
    # every connection (the given-up ones too) ends and is logged
    total = len(latencies) + given_up[0]
    lines = server.wait_ends(total, 30)
    counts = [int(m[1]) for m in map(STATUS_RE.match, lines) if m]
    assert max(counts) <= limit
    pids = [m[1] for line in lines if (m := PID_RE.match(line))]
    ends = [m[1] for line in lines if (m := END_RE.match(line))]
    assert len(pids) == len(ends) == total, (len(pids), len(ends), total)
    print(f"-c {limit} --workers {workers}: {total} connections, max latency {max(latencies):.2f}s")
