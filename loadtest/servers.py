"""Start a server under test, learn its port, account its CPU and memory, and stop it by pid.

A server is a name plus a command line. A tcpserver-compatible command gets the common flags and
`-1 127.0.0.1 0 PROGRAM` appended and tells its port on stdout (0.88's `-1`). Any other command
line (socat, s6-tcpserver, ...) names `{port}` (and optionally `{program}`): the runner picks a free
port, substitutes it, and waits until the port accepts.
"""

from __future__ import annotations

import os
import select
import shlex
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

import psutil


class ServerStartError(RuntimeError):
    """The server did not come up; the message says what it printed."""


@dataclass
class ServerSpec:
    name: str
    argv: list[str]
    host: str = "127.0.0.1"  # where a tcpserver-style server listens and the clients connect (::1: IPv6)

    @property
    def templated(self) -> bool:
        return any("{port}" in a for a in self.argv)

    def command(self, flags: list[str], program: list[str], port: int = 0) -> list[str]:
        """The full argv to start: templated commands are filled in, tcpserver-style ones get flags appended."""
        if self.templated:
            prog = shlex.join(program)
            return [a.replace("{port}", str(port)).replace("{program}", prog) for a in self.argv]
        return [*self.argv, "-1", *flags, self.host, "0", *program]

    @classmethod
    def parse(cls, text: str) -> ServerSpec:
        """`NAME=CMD...` as given to `--server`; CMD is split like a shell would."""
        name, sep, cmd = text.partition("=")
        if not sep or not name or not cmd.strip():
            raise ValueError(f"--server wants NAME=COMMAND, got {text!r}")
        return cls(name, shlex.split(cmd))


def free_port() -> int:
    """A loopback port that was free a moment ago (only for servers that cannot report theirs)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class CpuSample:
    """User+sys CPU seconds of a fixed set of processes, keyed by pid: their own (``times``) and their reaped
    children's (``children``: the programs a server started, from fork to exit, pre-exec work included)."""

    times: dict[int, float]
    procs: dict[int, psutil.Process] = field(repr=False)
    children: dict[int, float] = field(default_factory=dict)


@dataclass
class RunningServer:
    spec: ServerSpec
    argv: list[str]
    proc: subprocess.Popen
    port: int
    program: list[str]
    stderr_path: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    def server_processes(self) -> list[psutil.Process]:
        """The server's own processes (master + workers): the tree minus running copies of the program."""
        try:
            root = psutil.Process(self.pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        own = []
        for p in tree:
            try:
                if p.pid != self.pid and p.cmdline() == self.program:
                    continue
            except psutil.Error:
                continue
            own.append(p)
        return own

    def cpu_sample(self, procs: list[psutil.Process] | None = None) -> CpuSample:
        """CPU of the given (or current) server processes; vanished ones are left out."""
        procs = procs if procs is not None else self.server_processes()
        times: dict[int, float] = {}
        children: dict[int, float] = {}
        kept: dict[int, psutil.Process] = {}
        for p in procs:
            try:
                t = p.cpu_times()
            except psutil.Error:
                continue
            times[p.pid] = t.user + t.system
            children[p.pid] = t.children_user + t.children_system
            kept[p.pid] = p
        return CpuSample(times, kept, children)

    def cpu_since(self, before: CpuSample) -> tuple[dict[int, float], int, float]:
        """CPU seconds each process of `before` used since then, how many of them vanished meanwhile, and the
        CPU seconds of the children they reaped meanwhile (the programs, all counted)."""
        after = self.cpu_sample(list(before.procs.values()))
        used = {pid: after.times[pid] - t for pid, t in before.times.items() if pid in after.times}
        programs = sum(after.children[pid] - t for pid, t in before.children.items() if pid in after.children)
        return used, len(before.times) - len(after.times), programs

    def memory(self) -> dict:
        """RSS, PSS and USS (bytes) of the server's processes, summed and per process; Linux smaps figures."""
        rows = []
        for p in self.server_processes():
            try:
                m = p.memory_full_info()
                rows.append({"pid": p.pid, "name": p.name(), "rss": m.rss, "pss": getattr(m, "pss", 0),
                             "uss": m.uss})
            except psutil.Error:
                continue
        return {
            "processes": len(rows),
            "rss": sum(r["rss"] for r in rows),
            "pss": sum(r["pss"] for r in rows),
            "uss": sum(r["uss"] for r in rows),
            "per_process": rows,
        }

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stderr_text(self) -> str:
        try:
            with open(self.stderr_path, errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the master, then every remaining server process by pid; SIGKILL what stays."""
        others = [p for p in self.server_processes() if p.pid != self.pid]
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        for p in others:
            try:
                p.terminate()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(others, timeout=timeout)
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        try:
            os.unlink(self.stderr_path)
        except OSError:
            pass


def _read_port(proc: subprocess.Popen, timeout: float) -> int:
    """Read the `-1` line (port + newline) from the server's stdout, bounded by `timeout`."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ServerStartError(f"no port printed within {timeout:.0f} s")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 64)
        if not chunk:
            raise ServerStartError(f"exited before printing its port (status {proc.wait(timeout)})")
        buf += chunk
    line = buf.split(b"\n", 1)[0].strip()
    if not line.isdigit():
        raise ServerStartError(f"printed {line!r} where a port number was expected")
    return int(line)


def _wait_listening(proc: subprocess.Popen, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerStartError(f"exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise ServerStartError(f"nothing listening on 127.0.0.1:{port} within {timeout:.0f} s")


def start_server(spec: ServerSpec, flags: list[str], program: list[str], timeout: float = 10.0) -> RunningServer:
    """Start one server and return once it is listening; raises ServerStartError with its stderr."""
    port = free_port() if spec.templated else 0
    argv = spec.command(flags, program, port)
    fd, err_path = tempfile.mkstemp(prefix=f"loadtest-{spec.name}-", suffix=".err")
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=fd,
                                start_new_session=True)
    except OSError as e:
        os.close(fd)
        os.unlink(err_path)
        raise ServerStartError(f"{spec.name}: cannot run {shlex.join(argv)}: {e.strerror}") from e
    os.close(fd)
    server = RunningServer(spec, argv, proc, port, program, err_path)
    try:
        if spec.templated:
            _wait_listening(proc, port, timeout)
        else:
            server.port = _read_port(proc, timeout)
    except ServerStartError as e:
        text = server.stderr_text().strip()
        server.stop()
        detail = f"\n  its stderr: {text}" if text else ""
        raise ServerStartError(f"{spec.name}: {e}\n  command: {shlex.join(argv)}{detail}") from None
    return server
