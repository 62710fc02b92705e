"""The connection half of the soak: prefork's tcpserver under steady load while its workers are SIGKILLed.

tcpserver runs ``-v -H -R -l0 -c LIMIT --workers W`` on 127.0.0.1 port 0 and
starts ``/bin/sh echo-seq`` for each connection: the program reads one line
and writes it back.  C client processes keep one connection each in flight:
connect, hold HOLD ms (so connections overlap and the limit is reached), send
``CLIENT SEQ``, read to EOF and compare.  Every attempt ends in exactly one
kind (``ok``, ``refused``, ``reset``, ``closed`` = EOF without a reply,
``timeout``, ``wrong_reply``, ``other``); failures keep their time, so the run
can tell the connections a worker kill dropped (a worker SIGKILLed between its
accept() and its program's start takes that connection with it) from any other.

While the clients run, a sampler counts the running programs every
SAMPLE_MS: the children of each worker plus the master's children that are not
workers (programs whose worker died; the master is their subreaper), zombies
included, since a program holds its ``-c`` token until it is reaped.  Each
sample is two looks at the tree, and only the programs both saw are counted:
those were all alive at one instant (see :meth:`ConnRig.count_programs`), so
the count can be low, never high, and a sample above the limit is a real excess.
"""

from __future__ import annotations

import array
import multiprocessing as mp
import os
import re
import resource
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from loadtest import soak_procs as procs
from loadtest.servers import ServerStartError, _read_port

KINDS = ("ok", "refused", "reset", "closed", "timeout", "wrong_reply", "other")
DROPS = ("reset", "closed")  # the server ended an accepted connection without a reply
FAILED = ("timeout", "wrong_reply", "other")  # never acceptable, kill or no kill
TCPSERVER = str(Path(sys.executable).parent / "tcpserver")
PROGRAM = '#!/bin/sh\n# one line in, the same line out (both are builtins: no fork)\nIFS= read -r line\nprintf "%s\\n" "$line"\n'
MAX_EVENTS = 20_000  # failure times kept per client (the counts are always complete)
KILL_WINDOW = 2.0  # seconds after a worker kill in which a dropped connection is put down to it
_START_GRACE = 0.05

PID_LINE = re.compile(rb"^tcpserver: pid (\d+) from ")
END_LINE = re.compile(rb"^tcpserver: end (\d+) status (\d+)$")
STATUS_LINE = re.compile(rb"^tcpserver: status: (\d+)/(\d+)$")
OK_LINE = re.compile(rb"^tcpserver: ok (\d+) ")


@dataclass
class ConnConfig:
    limit: int = 20
    workers: int = 4
    clients: int = 30
    hold_ms: float = 100.0
    kill_every: float = 5.0
    sample_ms: float = 50.0
    timeout: float = 10.0


# -- the clients ---------------------------------------------------------------------------------
def _client(index: int, conn: Connection, counts: object, port: int, hold: float, seconds: float,
            timeout: float) -> None:
    """One client process: connections back to back until the deadline; failures reported with their times."""
    conn.send(b"ready")
    start_at: float = conn.recv()
    deadline = start_at + seconds
    tv = struct.pack("ll", int(timeout), int((timeout % 1) * 1e6))
    base = index * len(KINDS)
    kind_index = {k: i for i, k in enumerate(KINDS)}
    events = array.array("d")
    kinds = array.array("b")
    addr = ("127.0.0.1", port)
    clock = time.monotonic
    delay = start_at - clock()
    if delay > 0:
        time.sleep(delay)
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    seq = 0
    for _ in range(100_000_000):
        if clock() >= deadline:
            break
        seq += 1
        expect = b"%d %d\n" % (index, seq)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)  # bounds connect() too
            s.connect(addr)
            if hold > 0:
                time.sleep(hold)
            s.sendall(expect)
            data = b""
            for _ in range(64):  # the reply is one short line: a few reads at most
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
                if len(data) > len(expect):
                    break
            kind = "ok" if data == expect else ("closed" if not data else "wrong_reply")
        except ConnectionRefusedError:
            kind = "refused"
        except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
            kind = "reset"
        except (BlockingIOError, TimeoutError):
            kind = "timeout"
        except OSError:
            kind = "other"
        finally:
            s.close()
        counts[base + kind_index[kind]] += 1  # type: ignore[index]
        if kind != "ok" and len(events) < MAX_EVENTS:
            events.append(clock())
            kinds.append(kind_index[kind])
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    conn.send((events.tobytes(), kinds.tobytes(), cpu))
    conn.close()


# -- the rig -------------------------------------------------------------------------------------
class ConnRig:
    """One tcpserver, its clients, its worker kills and its samples; ``stop()`` ends every process by pid."""

    def __init__(self, cfg: ConnConfig, root: Path, env: dict[bytes, bytes], reaper: procs.Reaper,
                 tcpserver: str = TCPSERVER) -> None:
        self.cfg = cfg
        self.tcpserver = tcpserver
        self.root = root
        self.env = env
        self.reaper = reaper
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.master_cmdline = b""
        self.log_path = root / "tcpserver.log"
        self.program = root / "echo-seq"
        self.argv: list[str] = []
        self.clients: list[tuple[mp.process.BaseProcess, Connection]] = []
        self.counts: object = None
        self.start_at = 0.0
        self.seconds = 0.0
        self.kills: list[dict] = []
        self.kill_misses = 0
        self.max_programs = 0
        self.samples = 0
        self.over_limit: list[dict] = []
        self.over_limit_samples = 0
        self.per_second_max: dict[int, int] = {}
        self.per_second_conns: list[tuple[float, int, int]] = []  # (t, ok so far, not ok so far)
        self.sampler_errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.t0 = 0.0
        self.client_results: dict | None = None
        self.exit_status: int | None = None
        self.died: dict | None = None  # the master exited before the run stopped it

    # -- the server -------------------------------------------------------------------------------
    @property
    def master(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        c = self.cfg
        return [self.tcpserver, "-v", "-1", "-H", "-R", "-l0", "-c", str(c.limit), "--workers", str(c.workers),
                "127.0.0.1", "0", "/bin/sh", str(self.program)]

    def start(self) -> None:
        self.program.write_text(PROGRAM)
        self.argv = self.command()
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            with self.reaper.lock:
                self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=fd,
                                             env=self.env, cwd=self.root, start_new_session=True)
                self.reaper.protect(self.proc.pid)
        finally:
            os.close(fd)
        try:
            self.port = _read_port(self.proc, 15.0)
        except ServerStartError as e:
            raise ServerStartError(f"tcpserver: {e}: {self.log_text()[-500:]}") from None
        self.master_cmdline = procs.cmdline(self.master)
        for _ in range(200):  # every worker forked and named
            if len(self.workers()) >= self.cfg.workers:
                break
            time.sleep(0.05)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def workers(self) -> list[int]:
        """The master's children that are workers (a fork of the master: the same command line), zombies left out."""
        out = []
        for pid in procs.children(self.master):
            st = procs.stat(pid)
            if st is None or st[1] in ("Z", "X"):
                continue
            if procs.cmdline(pid) == self.master_cmdline:
                out.append(pid)
        return out

    def count_programs(self, detail: list | None = None) -> int:
        """Programs running (or exited, not yet reaped) at one instant in the master's tree (procs.count_programs)."""
        return procs.count_programs(self.master, detail)

    def tokens(self) -> dict:
        """What the scoreboard says right now: tokens held and connections active per slot, orphans."""
        from prefork import scoreboard_read

        try:
            snap = scoreboard_read.read(self.scoreboard)
        except (OSError, ValueError):
            return {}
        return {"orphans": snap.orphans, "held": [s.held for s in snap.slots], "active": [s.active for s in snap.slots],
                "slot_pids": [s.pid for s in snap.slots]}

    def check_alive(self, t: float) -> bool:
        """Is the master still running?  The first time it is found gone, note when and how it ended."""
        if self.proc is None or self.proc.poll() is None:
            return True
        if self.died is None:
            self.died = {"t": round(t, 3), "status": self.proc.returncode, "said": self.log_text()[-300:]}
        return False

    def kill_worker(self, rng: object, t: float) -> dict | None:
        """SIGKILL one worker chosen at random; the record of it, or None if none could be found."""
        workers = self.workers()
        if not workers:
            self.kill_misses += 1
            return None
        pid = rng.choice(sorted(workers))  # type: ignore[attr-defined]
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            self.kill_misses += 1
            return None
        record = {"t": round(t, 3), "mono": time.monotonic(), "pid": pid, "workers": len(workers)}
        self.kills.append(record)
        return record

    # -- the clients -------------------------------------------------------------------------------
    def start_clients(self, seconds: float) -> None:
        """Fork the client processes (before any thread of ours starts); they wait for ``go()``."""
        ctx = mp.get_context("fork")
        c = self.cfg
        self.seconds = seconds
        self.counts = mp.RawArray("q", c.clients * len(KINDS))
        for i in range(c.clients):
            parent_end, child_end = ctx.Pipe()
            with self.reaper.lock:
                p = ctx.Process(target=_client, args=(i, child_end, self.counts, self.port, c.hold_ms / 1e3, seconds,
                                                      c.timeout), daemon=True)
                p.start()
                self.reaper.protect(p.pid)  # type: ignore[arg-type]
            child_end.close()
            self.clients.append((p, parent_end))
        for p, conn in self.clients:
            if not conn.poll(15.0):
                raise RuntimeError(f"load client pid {p.pid} did not start")
            conn.recv()

    def go(self, t0: float) -> None:
        """Start the clients at one instant and the program sampler with them."""
        self.t0 = t0
        self.start_at = time.monotonic() + _START_GRACE
        for _, conn in self.clients:
            conn.send(self.start_at)
        self._thread = threading.Thread(target=self._sample_loop, name="soak-programs", daemon=True)
        self._thread.start()

    def totals(self) -> dict[str, int]:
        out = dict.fromkeys(KINDS, 0)
        if self.counts is None:
            return out
        k = len(KINDS)
        for i in range(self.cfg.clients):
            for j, kind in enumerate(KINDS):
                out[kind] += self.counts[i * k + j]  # type: ignore[index]
        return out

    def _sample_loop(self) -> None:
        interval = self.cfg.sample_ms / 1e3
        next_second = 1.0
        for _ in range(100_000_000):
            if self._stop.is_set():
                return
            started = time.monotonic()
            detail: list = []
            try:
                n = self.count_programs(detail)
            except Exception:
                self.sampler_errors += 1
                n = 0
            t = started - self.t0
            self.samples += 1
            self.max_programs = max(self.max_programs, n)
            sec = int(t)
            self.per_second_max[sec] = max(self.per_second_max.get(sec, 0), n)
            if n > self.cfg.limit:
                self.over_limit_samples += 1
                if len(self.over_limit) < 20:
                    tokens = self.tokens()  # read after the count: the same moment, give or take a few µs
                    self.over_limit.append({"t": round(t, 3), "programs": n, "seen": detail, "scoreboard": tokens,
                                            "workers": self.workers()})
            if t >= next_second:
                tot = self.totals()
                self.per_second_conns.append((round(t, 3), tot["ok"], sum(tot.values()) - tot["ok"]))
                next_second = int(t) + 1.0
            self._stop.wait(max(0.0, interval - (time.monotonic() - started)))

    def stop_sampler(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)

    def collect_clients(self) -> dict:
        """Wait (bounded) for every client's report; what they saw, with their failure times."""
        hard = self.start_at + self.seconds + self.cfg.timeout + 30.0
        events: list[tuple[float, str]] = []
        cpu = 0.0
        missing = 0
        for _p, conn in self.clients:
            if not conn.poll(max(0.1, hard - time.monotonic())):
                missing += 1
                continue
            raw_t, raw_k, used = conn.recv()
            ts, ks = array.array("d"), array.array("b")
            ts.frombytes(raw_t)
            ks.frombytes(raw_k)
            events.extend((t, KINDS[k]) for t, k in zip(ts, ks, strict=True))
            cpu += used
        self.end_clients()
        self.client_results = {"events": sorted(events), "cpu_s": cpu, "missing": missing,
                               "elapsed": time.monotonic() - self.start_at}
        return self.client_results

    def end_clients(self) -> None:
        for p, conn in self.clients:
            conn.close()
            p.join(5.0)
            if p.is_alive():
                p.kill()
                p.join(5.0)
        self.clients = []

    def drain(self, timeout: float = 15.0) -> bool:
        """Wait until no program is left in the master's tree (every connection has ended)."""
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / 0.05) + 2):
            if self.count_programs() == 0:
                return True
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        return self.count_programs() == 0

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the master (it removes its scoreboard and exits 0); workers die with it (PDEATHSIG)."""
        self.stop_sampler()
        if self.clients:
            self.end_clients()
        if self.proc is None:
            return
        workers = self.workers() if self.proc.poll() is None else []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self.exit_status = self.proc.returncode
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / 0.05) + 2):
            if not any(procs.alive(pid) for pid in workers) or time.monotonic() >= deadline:
                break
            time.sleep(0.05)

    @property
    def scoreboard(self) -> str:
        from prefork.scoreboard import default_path

        return default_path(self.master) if self.proc is not None else ""

    # -- the figures -------------------------------------------------------------------------------
    def results(self) -> dict:
        """Connections by kind, drops put down to kills, the programs' maximum, the -v log's balance."""
        totals = self.totals()
        made = sum(totals.values())
        events = (self.client_results or {}).get("events", [])
        kill_times = sorted(k["mono"] for k in self.kills)
        explained = Counter()
        unexplained = Counter()
        unexplained_samples: list[dict] = []
        for t, kind in events:
            if kind in DROPS and _near(t, kill_times, KILL_WINDOW):
                explained[kind] += 1
            else:
                unexplained[kind] += 1
                if len(unexplained_samples) < 10:
                    unexplained_samples.append({"t": round(t - self.t0, 3), "kind": kind})
        # Drops whose time was not kept (past MAX_EVENTS) count as failures: never put down to a kill unseen.
        failed = {k: totals[k] for k in FAILED} | {k: totals[k] - explained[k] for k in DROPS}
        recorded = len(events)
        not_ok = made - totals["ok"]
        log = analyse_log(self.log_path.read_bytes() if self.log_path.exists() else b"")
        elapsed = (self.client_results or {}).get("elapsed") or 1.0
        return {
            "command": " ".join(self.argv),
            "limit": self.cfg.limit,
            "workers": self.cfg.workers,
            "clients": self.cfg.clients,
            "hold_ms": self.cfg.hold_ms,
            "made": made,
            "ok": totals["ok"],
            "by_kind": totals,
            "conn_per_s": made / elapsed,
            "dropped_at_kills": sum(explained.values()),
            "dropped_at_kills_by_kind": dict(explained),
            "failed": sum(failed.values()),
            "failed_by_kind": {k: v for k, v in failed.items() if v},
            "failed_samples": unexplained_samples,
            "failure_times_recorded": recorded,
            "failure_times_complete": recorded == not_ok,
            "refused": totals["refused"],
            "worker_kills": len(self.kills),
            "worker_kill_misses": self.kill_misses,
            "kills": [{k: v for k, v in rec.items() if k != "mono"} for rec in self.kills],
            "max_programs": self.max_programs,
            "program_samples": self.samples,
            "over_limit_samples": self.over_limit_samples,
            "over_limit": self.over_limit,
            "sampler_errors": self.sampler_errors,
            "client_cpu_s": (self.client_results or {}).get("cpu_s", 0.0),
            "clients_missing": (self.client_results or {}).get("missing", 0),
            "exit_status": self.exit_status,
            "master_died": self.died,
            "log": log,
            "timeline": {
                "programs_max": [self.per_second_max.get(s, 0) for s in range(max(self.per_second_max, default=-1) + 1)],
                "conns": self.per_second_conns,
                "kills": [rec["t"] for rec in self.kills],
            },
        }


def _near(t: float, kill_times: list[float], window: float) -> bool:
    """Is T within [kill - 0.05, kill + WINDOW] of some kill (KILL_TIMES sorted)?"""
    import bisect

    i = bisect.bisect_right(kill_times, t + 0.05)
    return i > 0 and t - kill_times[i - 1] <= window


def analyse_log(data: bytes) -> dict:
    """The -v log's balance: every ``end PID`` after a ``pid PID``, every ``pid PID`` ended; status counts.

    A pid can come back (the kernel reuses them), so lines are matched in
    order: a ``pid`` line opens PID, the next ``end`` of PID closes it.  An
    ``end`` with nothing open is ``end_without_pid``; what is still open at the
    end is ``pid_without_end``.
    """
    open_: Counter[int] = Counter()
    out = {"lines": 0, "pid_lines": 0, "ok_lines": 0, "end_lines": 0, "status_lines": 0, "status_max": 0,
           "status_limit": 0, "end_without_pid": 0, "pid_twice": 0, "warnings": 0, "other_lines": 0}
    samples: dict[str, list] = {"end_without_pid": [], "pid_without_end": [], "warnings": [], "other": []}
    for line in data.split(b"\n"):
        if not line:
            continue
        out["lines"] += 1
        m = PID_LINE.match(line)
        if m:
            pid = int(m.group(1))
            out["pid_lines"] += 1
            if open_[pid]:
                out["pid_twice"] += 1
            open_[pid] += 1
            continue
        m = END_LINE.match(line)
        if m:
            pid = int(m.group(1))
            out["end_lines"] += 1
            if open_[pid] > 0:
                open_[pid] -= 1
            else:
                out["end_without_pid"] += 1
                if len(samples["end_without_pid"]) < 10:
                    samples["end_without_pid"].append(line.decode(errors="replace"))
            continue
        m = STATUS_LINE.match(line)
        if m:
            out["status_lines"] += 1
            out["status_max"] = max(out["status_max"], int(m.group(1)))
            out["status_limit"] = int(m.group(2))
            continue
        if OK_LINE.match(line):
            out["ok_lines"] += 1
            continue
        if line.startswith((b"tcpserver: warning:", b"tcpserver: fatal:")):
            out["warnings"] += 1
            if len(samples["warnings"]) < 10:
                samples["warnings"].append(line.decode(errors="replace"))
            continue
        out["other_lines"] += 1
        if len(samples["other"]) < 10:
            samples["other"].append(line.decode(errors="replace")[:200])
    still = [pid for pid, n in open_.items() if n > 0]
    out["pid_without_end"] = sum(open_[pid] for pid in still)
    samples["pid_without_end"] = [f"tcpserver: pid {pid} ... (no end)" for pid in sorted(still)[:10]]
    out["balanced"] = out["end_without_pid"] == 0 and out["pid_without_end"] == 0
    out["samples"] = samples
    return out
