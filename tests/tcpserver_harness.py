"""Harness for the tcpserver tests: start a server, talk to it, wait with bounds, normalise log lines.

Every server runs with ``-1`` on 127.0.0.1 (or another 127/8 address) port 0 unless a test says
otherwise; its stderr goes to a file in the test's tmp_path.  Each server gets a unique
``PREFORK_TEST_TAG`` in its environment; at teardown the master gets SIGTERM (then SIGKILL), and its
descendants and every process still carrying that tag (programs orphaned by a killed master or
worker) are SIGKILLed by pid, through psutil.Process objects so a reused pid is never signalled.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import select
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from conftest import judge, ours, real

PROGS = Path(__file__).resolve().parent / "progs"
VIEW = str(PROGS / "view.pl")
HOLD = str(PROGS / "hold.pl")
SINK = str(PROGS / "sink.pl")
TAG_VAR = "PREFORK_TEST_TAG"
IMPLS = ("debian", "prefork")
USAGE = (
    "tcpserver: usage: tcpserver [ -1UXpPhHrRoOdDqQv ] [ -c limit ] [ -x rules.cdb ] [ -B banner ]"
    " [ -g gid ] [ -u uid ] [ -b backlog ] [ -l localname ] [ -t timeout ] host port program"
)
QUIET = ["-H", "-R", "-l0"]


def command(impl: str) -> list[str]:
    """argv prefix of implementation IMPL: Debian's binary (0.88, or ucspi-tcp-ipv6's: "judge"), or prefork's
    with two workers."""
    if impl == "debian":
        return [real("tcpserver")]
    if impl == "judge":  # ucspi-tcp-ipv6, the judge of the IPv6 tests (tests/test_tcpserver_ipv6.py)
        return [judge("tcpserver")]
    return [ours("tcpserver"), "--workers", "2"]


def base_env(**extra: str) -> dict[str, str]:
    env = {"PATH": "/usr/bin:/bin"}
    env.update(extra)
    return env


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02) -> object:
    """Poll PREDICATE until it returns something true; bounded by TIMEOUT seconds and a step count."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 1):
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    return predicate()


def tagged_pids(tag: str) -> list[int]:
    """Pids of processes whose start-up environment carries TAG_VAR=TAG."""
    needle = f"{TAG_VAR}={tag}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def tagged(tag: str) -> list[psutil.Process]:
    out = []
    for pid in tagged_pids(tag):
        with contextlib.suppress(psutil.Error):
            out.append(psutil.Process(pid))
    return out


def kill_procs(procs: Iterable[psutil.Process]) -> None:
    """SIGKILL each process (psutil refuses if its pid was reused) and wait, bounded, until it is
    gone or a zombie (orphans are reaped by init whenever it gets to it)."""
    killed = []
    for p in {p.pid: p for p in procs}.values():
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGKILL)
            killed.append(p)

    def finished(p: psutil.Process) -> bool:
        try:
            return p.status() == psutil.STATUS_ZOMBIE
        except psutil.Error:
            return True

    wait_until(lambda: all(finished(p) for p in killed), 5)


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def zombies_under(pid: int) -> list[psutil.Process]:
    """Zombie descendants of PID."""
    out = []
    for p in descendants(pid):
        with contextlib.suppress(psutil.Error):
            if p.status() == psutil.STATUS_ZOMBIE:
                out.append(p)
    return out


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    errfile: Path
    tag: str
    host: str = "127.0.0.1"
    impl: str = "debian"
    metrics_port: int = 0  # -1's second line, printed only with --metrics

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        return self.errfile.read_bytes().decode("utf-8", "surrogateescape")

    def lines(self) -> list[str]:
        """Complete stderr lines so far."""
        text = self.stderr()
        return text.split("\n")[:-1]

    def wait_lines(self, predicate: Callable[[list[str]], object], timeout: float = 10.0) -> list[str]:
        wait_until(lambda: predicate(self.lines()), timeout)
        return self.lines()

    def wait_ends(self, count: int, timeout: float = 15.0) -> list[str]:
        """Wait until COUNT connections have logged `end` and the status line after it."""

        def done(lines: list[str]) -> bool:
            ends = [i for i, line in enumerate(lines) if re.match(r"tcpserver: end \d+ status ", line)]
            return len(ends) >= count and any(i > ends[count - 1] and "status: " in lines[i] for i in range(len(lines)))

        lines = self.wait_lines(done, timeout)
        assert done(lines), f"no {count} end lines in:\n" + "\n".join(lines)
        return lines

    def workers(self) -> list[psutil.Process]:
        """Direct children of the master (prefork's workers) that are not programs."""
        try:
            children = psutil.Process(self.pid).children()
        except psutil.Error:
            return []
        out = []
        for c in children:
            with contextlib.suppress(psutil.Error):
                if "python" in os.path.basename(c.exe() or "") and c.status() != psutil.STATUS_ZOMBIE:
                    out.append(c)
        return out

    def stop(self) -> None:
        """SIGTERM the master (prefork then removes its scoreboard), SIGKILL whatever is left of
        it and of its descendants, and remove a default scoreboard a killed master left behind."""
        procs = descendants(self.pid) + tagged(self.tag)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        kill_procs(procs + tagged(self.tag))
        if self.proc.stdout:
            self.proc.stdout.close()
        if self.impl == "prefork":
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"/dev/shm/prefork-tcpserver.{self.pid}")


@dataclass
class Launcher:
    """Starts servers for one test and ends them all at teardown (pytest fixture `launch`)."""

    impl: str
    tmp_path: Path
    servers: list[Server] = field(default_factory=list)

    def __call__(
        self,
        opts: Sequence[str],
        prog: Sequence[str],
        *,
        host: str = "127.0.0.1",
        port: str = "0",
        env: dict[str, str] | None = None,
        wrap: Sequence[str] = (),
        add_one: bool = True,
        stdin: int = subprocess.DEVNULL,
        operands: bool = True,
    ) -> Server:
        """Start `[WRAP...] tcpserver [-1] OPTS HOST PORT PROG...` and read the port -1 prints
        (ADD_ONE=False when OPTS carry their own -1; STDIN: a descriptor for WRAP to move elsewhere;
        OPERANDS=False: OPTS hold HOST PORT PROG, e.g. in an options file)."""
        tag = uuid.uuid4().hex
        full_env = dict(base_env() if env is None else env)
        full_env[TAG_VAR] = tag
        errfile = self.tmp_path / f"stderr.{len(self.servers)}"
        argv = [*wrap, *command(self.impl), *(["-1"] if add_one else []), *opts, *([host, port, *prog] if operands else [])]
        with open(errfile, "wb") as err:
            proc = subprocess.Popen(
                argv, stdin=stdin, stdout=subprocess.PIPE, stderr=err, env=full_env, cwd=self.tmp_path
            )
        server = Server(proc, 0, errfile, tag, host, self.impl)
        self.servers.append(server)
        line = read_line(proc.stdout, 15.0)
        ports = re.fullmatch(rb"(\d+)\n(?:metrics (\d+)\n)?", line)  # one write: the metrics port comes with the first
        if not ports:
            proc.poll()
            raise AssertionError(f"{argv}: no port on stdout ({line!r}), rc={proc.returncode}, stderr:\n{server.stderr()}")
        server.port = int(ports[1])
        server.metrics_port = int(ports[2] or 0)
        return server

    def close(self) -> None:
        for s in self.servers:
            s.stop()


def read_line(stream, timeout: float) -> bytes:
    """Read one line from a pipe, giving up after TIMEOUT seconds."""
    fd = stream.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data


def read_eof(stream, timeout: float) -> bytes | None:
    """Read a pipe to EOF; None if EOF does not come within TIMEOUT seconds."""
    fd = stream.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            return None
        chunk = os.read(fd, 4096)
        if not chunk:
            return data
        data += chunk


def run(argv: Sequence[str], env: dict[str, str] | None = None, timeout: float = 15.0, **kw) -> subprocess.CompletedProcess:
    """Run a command that should exit by itself (a startup error); killed by pid after TIMEOUT."""
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=base_env() if env is None else env,
        **kw,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_procs([*descendants(proc.pid), psutil.Process(proc.pid)])
        out, err = proc.communicate()
        raise AssertionError(f"{argv} did not exit within {timeout}s; stderr {err!r}") from None
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


# ---- clients ----------------------------------------------------------------------------------


def connect(port: int, host: str = "127.0.0.1", source: str | None = None, timeout: float = 10.0) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    if source is not None:
        sock.bind((source, 0))
    sock.connect((host, port))
    return sock


def recv_line(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """One line from SOCK, read byte by byte (nothing past the newline is taken), within TIMEOUT."""
    data = b""
    deadline = time.monotonic() + timeout
    while not data.endswith(b"\n") and time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data


def recv_all(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Read until EOF; raises TimeoutError if EOF does not come within TIMEOUT seconds."""
    data = b""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no EOF after {timeout}s; got {data[:200]!r}")
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def talk(port: int, send: bytes = b"", host: str = "127.0.0.1", source: str | None = None, timeout: float = 10.0):
    """Connect, send SEND, half-close, read to EOF.  Returns (reply, client port)."""
    with connect(port, host, source, timeout) as sock:
        cport = sock.getsockname()[1]
        if send:
            sock.sendall(send)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        return recv_all(sock, timeout), cport


def parse_view(reply: bytes) -> dict[str, object]:
    """Parse view.pl's report into {'env': {...}, 'fds': {...}, 'SigIgn': int, ...}."""
    env: dict[str, str] = {}
    fds: dict[int, str] = {}
    out: dict[str, object] = {"env": env, "fds": fds}
    for line in reply.decode("utf-8", "surrogateescape").splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "env":
            name, _, value = rest.partition("=")
            env[name] = value
        elif kind == "fd":
            num, _, target = rest.partition(" ")
            fds[int(num)] = target
        elif kind in ("SigIgn:", "SigBlk:"):
            out[kind[:-1]] = int(rest.strip(), 16)
        elif kind in ("Uid:", "Gid:", "Groups:"):
            out[kind[:-1]] = rest.split()
        elif kind == "Umask:":
            out["Umask"] = int(rest.strip(), 8)
        elif kind == "sock":
            out["sock"] = dict(item.split("=") for item in rest.split())
        elif kind in ("pid", "pgrp", "sid"):
            out[kind] = int(rest)
        elif kind == "cwd":
            out["cwd"] = rest
    return out


def private_hosts_possible() -> bool:
    """Whether this process may give a child its own mount namespace (root with CAP_SYS_ADMIN): the DNS tests
    then give a server a private /etc/hosts."""
    try:
        return subprocess.run(["unshare", "--mount", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def sigbit(sig: int) -> int:
    return 1 << (sig - 1)


def random_loopback() -> str:
    """A random 127.x.y.z address other than 127.0.0.1 (tests bind on it to stay parallel-safe)."""
    return f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(2, 254)}"


# ---- log lines --------------------------------------------------------------------------------

PID_RE = re.compile(r"^tcpserver: pid (\d+) from (.*)$")
OKDENY_RE = re.compile(r"^tcpserver: (ok|deny) (\S+) (\S+) (\S+)$")
END_RE = re.compile(r"^tcpserver: end (\d+) status (\d+)$")
STATUS_RE = re.compile(r"^tcpserver: status: (\d+)/(\d+)$")


def _strip_port(fieldtext: str, names: dict[str, str]) -> str:
    head, sep, port = fieldtext.rpartition(":")
    if sep and port in names:
        return f"{head}:{names[port]}"
    return fieldtext


def normalise(
    lines: Iterable[str], server_port: int, client_ports: Sequence[int] = (), anonymous: bool = False
) -> list[str]:
    """Replace pids/ids by #1, #2... (order of first appearance; all `#` if ANONYMOUS) and ports by
    PORT / RPORT (any remote port when CLIENT_PORTS is empty)."""
    ids: dict[str, str] = {}
    # The local field names the server's port, the remote field a client's: one client may be given the
    # server's port number (another address, same number), so each field has its own map.
    local_ports = {str(server_port): "PORT"}
    remote_ports = {str(p): "RPORT" for p in client_ports}

    def ident(value: str) -> str:
        return "#" if anonymous else ids.setdefault(value, f"#{len(ids) + 1}")

    out = []
    for line in lines:
        if m := PID_RE.match(line):
            line = f"tcpserver: pid {ident(m[1])} from {m[2]}"
        elif m := OKDENY_RE.match(line):
            remote = m[4]
            if not client_ports:
                head, sep, port = remote.rpartition(":")
                remote = f"{head}:RPORT" if sep and port.isdigit() else remote
            line = f"tcpserver: {m[1]} {ident(m[2])} {_strip_port(m[3], local_ports)} {_strip_port(remote, remote_ports)}"
        elif m := END_RE.match(line):
            line = f"tcpserver: end {ident(m[1])} status {m[2]}"
        out.append(line)
    return out


def by_connection(lines: Sequence[str]) -> list[list[tuple[int, str]]]:
    """Group pid/ok/deny/end lines by connection: [[(index, line), ...], ...] in order of pid lines.

    A pid line starts a new connection for its pid/id (ids are unique only among connections in
    flight, and the kernel reuses pids); ok/deny/end lines join the latest connection of their id.
    """
    groups: list[list[tuple[int, str]]] = []
    latest: dict[str, list[tuple[int, str]]] = {}
    for i, line in enumerate(lines):
        m = PID_RE.match(line) or OKDENY_RE.match(line) or END_RE.match(line)
        if not m:
            continue
        key = m[2] if OKDENY_RE.match(line) else m[1]
        if PID_RE.match(line) or key not in latest:
            latest[key] = []
            groups.append(latest[key])
        latest[key].append((i, line))
    return groups


def check_order(lines: Sequence[str]) -> None:
    """Order constraints of -v lines when several connections interleave (docs/CONTRACTS.md, tcpserver log lines).

    The first line is the startup status.  Per connection: the pid line comes first, then at most
    one ok/deny, then exactly one end, and some status line follows the end.  The n-th pid line has
    at least n+1 status lines before it (startup + one per accept, which is logged before the pid
    line).  Once all are done there are 1 + 2 × connections status lines (accept and end of each).
    """
    groups = by_connection(lines)
    status_idx = [i for i, line in enumerate(lines) if STATUS_RE.match(line)]
    assert status_idx and status_idx[0] == 0, f"first line is not the startup status: {lines[:1]}"
    pid_idx = sorted(i for g in groups for i, line in g if PID_RE.match(line))
    for n, i in enumerate(pid_idx, start=1):
        assert sum(1 for s in status_idx if s < i) >= n + 1, f"pid line {lines[i]!r} has no accept status before it"
    for entries in groups:
        key = entries[0][1]
        kinds = [line.split()[1] for _, line in entries]
        assert kinds[0] == "pid", f"{key}: first line is {entries[0][1]!r}"
        assert kinds[-1] == "end", f"{key}: last line is {entries[-1][1]!r}"
        assert kinds.count("pid") == 1 and kinds.count("end") == 1, f"{key}: {kinds}"
        assert kinds.count("ok") + kinds.count("deny") <= 1, f"{key}: {kinds}"
        assert any(s > entries[-1][0] for s in status_idx), f"{key}: no status line after {entries[-1][1]!r}"
    assert len(status_idx) == 1 + 2 * len(groups), f"{len(status_idx)} status lines for {len(groups)} connections"
