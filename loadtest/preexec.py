"""A tcpserver's CPU per connection with its pre-exec work counted, wherever the kernel charges it.

0.88's tcpserver forks, and the child sets the socket options, builds the environment and reads the rules
before it executes the program: that CPU is charged to the program's process, so "the server's own
processes" leave it out.  prefork does the same work in its worker and starts the program with
posix_spawn.  To compare like with like, every server here runs ``cpuprobe`` (loadtest/cpuprobe.c), which
answers each client with the CPU its own process had used when it started: the server's pre-exec work
plus the exec.  The same probe started by a bare posix_spawn loop gives the exec alone (the floor), so

    server CPU per connection, all counted = own processes' CPU + (probe's CPU at start - floor).

The probe is compiled here with the system's C compiler (``cc``); without one the measure is skipped.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import time
from multiprocessing.connection import Connection
from pathlib import Path

from loadtest.loadgen import end_clients

SOURCE = Path(__file__).with_name("cpuprobe.c")


def build_probe(directory: Path) -> Path | None:
    """Compile the probe into DIRECTORY (static if the C library allows it); None without a compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    out = directory / "cpuprobe"
    for static in (["-static"], []):
        done = subprocess.run([cc, "-O2", *static, "-o", str(out), str(SOURCE)], capture_output=True, timeout=60)
        if done.returncode == 0:
            return out
    return None


def floor_us(probe: Path, count: int) -> float:
    """Mean CPU at start of the probe started COUNT times by posix_spawn from this process (no server)."""
    values = []
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    for _ in range(count):
        r, w = os.pipe()
        try:
            pid = os.posix_spawn(str(probe), [str(probe)], env, file_actions=[(os.POSIX_SPAWN_DUP2, w, 1)])
            os.close(w)
            w = -1
            data = b""
            while chunk := os.read(r, 64):
                data += chunk
            os.waitpid(pid, 0)
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)
        values.append(int(data))
    return sum(values) / len(values)


def _client(conn: Connection, host: str, port: int, count: int, timeout: float) -> None:
    values: list[int] = []
    errors = 0
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(count):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.settimeout(timeout)
                s.connect((host, port))
                data = b""
                while chunk := s.recv(64):
                    data += chunk
            values.append(int(data))
        except (OSError, ValueError):
            errors += 1
    conn.send((values, errors))
    conn.close()


def probe_load(host: str, port: int, connections: int, clients: int = 4, timeout: float = 5.0) -> tuple[list[int], int]:
    """CONNECTIONS connections from CLIENTS processes; the probe's answers (µs) and the count of failures."""
    ctx = mp.get_context("fork")
    per = max(1, connections // clients)
    procs = []
    for _ in range(clients):
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_client, args=(child, host, port, per, timeout), daemon=True)
        p.start()
        child.close()
        procs.append((p, parent))
    values: list[int] = []
    errors = 0
    deadline = time.monotonic() + per * timeout + 30.0
    try:
        for p, c in procs:
            if not c.poll(max(0.1, deadline - time.monotonic())):
                raise RuntimeError(f"probe client pid {p.pid} did not finish in time")
            got, errs = c.recv()
            values += got
            errors += errs
    finally:
        end_clients(procs)
    return values, errors
