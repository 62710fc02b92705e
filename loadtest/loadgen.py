"""Closed-loop load generator: C client processes, each connect → read to EOF → compare → close.

Why it looks the way it does: the clients share the machine's few cores with the server under test,
so the per-connection path is plain blocking sockets with kernel timeouts (SO_RCVTIMEO/SO_SNDTIMEO,
no poll per call), latencies go into a local array and cross a pipe once at the end, and every
error is counted by kind (never sampled), because a server that drops connections fast must not
look fast.
"""

from __future__ import annotations

import argparse
import array
import math
import multiprocessing as mp
import resource
import socket
import struct
import sys
import time
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection

ERROR_KINDS = ("refused", "reset", "timeout", "wrong_reply", "other")
_START_GRACE = 0.02  # seconds between "all clients ready" and the common start instant


@dataclass
class LoadResult:
    """Outcome of one load run; `latencies` (seconds, successful connections) stays out of JSON."""

    clients: int
    seconds: float
    elapsed: float
    connections: int
    errors: dict[str, int]
    conn_per_s: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    client_cpu_s: float
    latencies: list[float] = field(default_factory=list, repr=False)

    @property
    def error_total(self) -> int:
        return sum(self.errors.values())

    def to_dict(self) -> dict:
        data = asdict(self)
        del data["latencies"]
        data["error_total"] = self.error_total
        return data


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 when empty): p99 is a value that was observed."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize(clients: int, seconds: float, elapsed: float, latencies: list[float], errors: dict[str, int],
              client_cpu_s: float = 0.0) -> LoadResult:
    """Build a LoadResult from raw latencies; also used to merge several rounds into a total."""
    lat = sorted(latencies)
    n = len(lat)
    return LoadResult(
        clients=clients,
        seconds=seconds,
        elapsed=elapsed,
        connections=n,
        errors={k: errors.get(k, 0) for k in ERROR_KINDS},
        conn_per_s=n / elapsed if elapsed > 0 else 0.0,
        p50_ms=percentile(lat, 50) * 1e3,
        p99_ms=percentile(lat, 99) * 1e3,
        mean_ms=(sum(lat) / n * 1e3) if n else 0.0,
        max_ms=(lat[-1] * 1e3) if n else 0.0,
        client_cpu_s=client_cpu_s,
        latencies=lat,
    )


def merge(results: list[LoadResult]) -> LoadResult:
    """One total over several runs: conn/s over the summed elapsed time, percentiles over all latencies."""
    errors = {k: sum(r.errors.get(k, 0) for r in results) for k in ERROR_KINDS}
    lat = [x for r in results for x in r.latencies]
    return summarize(
        clients=max((r.clients for r in results), default=0),
        seconds=sum(r.seconds for r in results),
        elapsed=sum(r.elapsed for r in results),
        latencies=lat,
        errors=errors,
        client_cpu_s=sum(r.client_cpu_s for r in results),
    )


def _client(conn: Connection, host: str, port: int, expect: bytes, seconds: float, max_conns: int,
            timeout: float, send: bytes = b"") -> None:
    """One client process: wait for the common start instant, loop until the deadline, report once."""
    conn.send(b"ready")
    start_at: float = conn.recv()
    deadline = start_at + seconds
    tv = struct.pack("ll", int(timeout), int((timeout % 1) * 1e6))
    lat = array.array("d")
    errors = dict.fromkeys(ERROR_KINDS, 0)
    addr = (host, port)
    clock = time.monotonic
    sock_new = socket.socket
    AF_INET = socket.AF_INET6 if ":" in host else socket.AF_INET  # an IPv6 host (::1): IPv6 clients
    SOCK_STREAM, SOL_SOCKET = socket.SOCK_STREAM, socket.SOL_SOCKET
    SO_RCVTIMEO, SO_SNDTIMEO = socket.SO_RCVTIMEO, socket.SO_SNDTIMEO
    expect_len = len(expect)
    delay = start_at - clock()
    if delay > 0:
        time.sleep(delay)
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    done = 0
    now = clock()
    while now < deadline and done < max_conns:
        s = sock_new(AF_INET, SOCK_STREAM)
        try:
            s.setsockopt(SOL_SOCKET, SO_RCVTIMEO, tv)
            s.setsockopt(SOL_SOCKET, SO_SNDTIMEO, tv)  # bounds connect() too (EINPROGRESS on expiry)
            s.connect(addr)
            if send:
                s.sendall(send)
            data = s.recv(65536)
            if data and len(data) <= expect_len:
                chunk = data
                while chunk:
                    chunk = s.recv(65536)
                    data += chunk
                    if len(data) > expect_len:
                        break
            ok = data == expect
            kind = "wrong_reply"
        except ConnectionRefusedError:
            ok, kind = False, "refused"
        except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
            ok, kind = False, "reset"
        except (BlockingIOError, TimeoutError):
            ok, kind = False, "timeout"
        except OSError:
            ok, kind = False, "other"
        finally:
            s.close()
        end = clock()
        if ok:
            lat.append(end - now)
        else:
            errors[kind] += 1
        done += 1
        now = end
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    conn.send((now, errors, cpu, lat.tobytes()))
    conn.close()


def run_load(port: int, expect: bytes, clients: int = 4, seconds: float = 5.0, connections: int | None = None,
             host: str = "127.0.0.1", timeout: float = 5.0, send: bytes = b"") -> LoadResult:
    """Run C client processes against host:port for `seconds` (and at most `connections` in total);
    each connection first sends SEND (a PROXY header, say), then reads the reply.

    Clients start at one common instant; elapsed runs from it to the last client's last close, so
    conn/s is not diluted by process start-up. Every wait is bounded; a stuck client is killed by pid.
    """
    if clients < 1 or seconds <= 0:
        raise ValueError("clients must be >= 1 and seconds > 0")
    per_client = math.ceil(connections / clients) if connections else sys.maxsize
    ctx = mp.get_context("fork")
    procs: list[tuple[mp.process.BaseProcess, Connection]] = []
    try:
        for _ in range(clients):
            parent_end, child_end = ctx.Pipe()
            p = ctx.Process(target=_client, args=(child_end, host, port, expect, seconds, per_client, timeout, send),
                            daemon=True)
            p.start()
            child_end.close()
            procs.append((p, parent_end))
        for p, c in procs:
            if not c.poll(10.0):
                raise RuntimeError(f"load client pid {p.pid} did not start")
            c.recv()
        start_at = time.monotonic() + _START_GRACE
        for _, c in procs:
            c.send(start_at)
        hard_deadline = start_at + seconds + timeout + 10.0
        latencies: list[float] = []
        errors = dict.fromkeys(ERROR_KINDS, 0)
        last_end = start_at
        cpu = 0.0
        for p, c in procs:
            if not c.poll(max(0.1, hard_deadline - time.monotonic())):
                raise RuntimeError(f"load client pid {p.pid} did not finish in time")
            end, errs, used, raw = c.recv()
            last_end = max(last_end, end)
            for k, v in errs.items():
                errors[k] += v
            cpu += used
            lat = array.array("d")
            lat.frombytes(raw)
            latencies.extend(lat)
    finally:
        end_clients(procs)
    return summarize(clients, seconds, last_end - start_at, latencies, errors, cpu)


def end_clients(procs: list[tuple[mp.process.BaseProcess, Connection]]) -> None:
    """Close each client's pipe and join it; one still there after 2 s is killed by its pid."""
    for p, c in procs:
        c.close()
        p.join(2.0)
        if p.is_alive():
            p.kill()
            p.join(2.0)


def format_result(name: str, r: LoadResult) -> str:
    """One human line: what a round printed to stderr looks like."""
    errs = ", ".join(f"{k} {v}" for k, v in r.errors.items() if v) or "0"
    return (f"{name:<10} {r.conn_per_s:9,.0f} conn/s  p50 {r.p50_ms:6.2f} ms  p99 {r.p99_ms:6.2f} ms  "
            f"conns {r.connections:,}  errors {errs}")


def parse_expect(text: str) -> bytes:
    """Turn the CLI's `hello\\n` (backslash escapes, as a shell passes them) into bytes."""
    return text.encode("latin-1", "backslashreplace").decode("unicode_escape").encode("latin-1")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.loadgen", description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--connections", type=int, default=None, help="stop after this many connections in total")
    ap.add_argument("--timeout", type=float, default=5.0, help="per connect/read timeout, seconds")
    ap.add_argument("--expect", default="hello\\n", help="expected reply, backslash escapes allowed")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)
    r = run_load(args.port, parse_expect(args.expect), args.clients, args.seconds, args.connections, args.host,
                 args.timeout)
    if args.json:
        import json

        print(json.dumps(r.to_dict(), indent=2))
    else:
        print(format_result(f"{args.host}:{args.port}", r))
    return 1 if r.error_total else 0


if __name__ == "__main__":
    sys.exit(main())
