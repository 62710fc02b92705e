"""``make demo``: a throw-away service tree supervised by prefork's svscan, in the foreground, on loopback.

The tree (a temporary directory) holds two services, each with a ``log``
service running ``multilog t ./main``:

* ``greeting``: tcpserver with a rules file compiled by tcprules and a small
  greeting program, the way ucspi-tcp users write run scripts;
* ``metrics``: prefork-exporter serving the greeting's scoreboard and the
  tree's service table on one URL, the pattern of contrib/kubernetes
  (``svscan --metrics`` and ``tcpserver --metrics`` would take a port each).

The ports are ``DEMO_PORT`` and ``DEMO_METRICS_PORT`` (0, the default: the
demo asks the kernel for a free port once and writes it into the run script,
so ``svc -d``/``svc -u`` bring a service back on the port the banner printed).
svscan runs with ``--stop-services`` in its own session, so Ctrl-C (SIGINT,
also SIGTERM or SIGHUP) reaches only the demo, which asks svscan to bring
every service down, waits for it, and removes the tree.  Lines the greeting
logs are echoed with local times while it runs.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

GRACE = 5  # svscan --grace: a service that ignores SIGTERM is killed this many seconds later
START_SECONDS = 30.0

RULES = """\
# prefork demo rules: loopback clients are greeted by name, everyone else is refused.
# Edit, then compile (tcpserver reads the cdb for every connection: no restart):
#   tcprules rules.cdb rules.tmp < rules
127.0.0.1:allow,GREETING="welcome to prefork"
:deny
"""

GREETER = """\
#!/bin/sh
# One connection: the socket is stdin and stdout, tcpserver's variables are in the environment.
echo "$GREETING, $TCPREMOTEIP:$TCPREMOTEPORT (you reached $TCPLOCALIP:$TCPLOCALPORT)"
echo "type a line and I will echo it back:"
read -r line
echo "you said: $line"
"""

GREETING_RUN = """\
#!/bin/sh
# The greeting service: -1 logs the port once listening, -v a line per connection event;
# --name/--scoreboard (prefork's own options) let the metrics service read its counters.
exec 2>&1
exec tcpserver -1 -v -c 10 -HR -l localhost -x rules.cdb --name greeting --scoreboard {board} \\
  127.0.0.1 {port} ./greeter
"""

METRICS_RUN = """\
#!/bin/sh
# One Prometheus endpoint for the tree: every service's state and the greeting's connection counters.
exec 2>&1
exec prefork-exporter --listen 127.0.0.1:{port} --services {tree} --scoreboard {board}
"""

LOG_RUN = """\
#!/bin/sh
exec multilog t ./main
"""


class Tree:
    """The paths of a demo service tree."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.greeting = os.path.join(root, "greeting")
        self.metrics = os.path.join(root, "metrics")
        self.board = os.path.join(self.greeting, "scoreboard")
        self.greeting_log = os.path.join(self.greeting, "log", "main", "current")
        self.metrics_log = os.path.join(self.metrics, "log", "main", "current")


def _write(path: str, text: str, mode: int = 0o644) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def build_tree(root: str, bindir: str, port: str = "0", metrics_port: str = "0") -> Tree:
    """Lay out the greeting and metrics services (with their logs) in ROOT; compile the rules with tcprules."""
    tree = Tree(root)
    _write(os.path.join(tree.greeting, "rules"), RULES)
    _write(os.path.join(tree.greeting, "greeter"), GREETER, 0o755)
    _write(os.path.join(tree.greeting, "run"), GREETING_RUN.format(board=tree.board, port=port), 0o755)
    _write(os.path.join(tree.metrics, "run"), METRICS_RUN.format(port=metrics_port, tree=root, board=tree.board), 0o755)
    for service in (tree.greeting, tree.metrics):
        _write(os.path.join(service, "log", "run"), LOG_RUN, 0o755)
    cdb = os.path.join(tree.greeting, "rules.cdb")
    with open(os.path.join(tree.greeting, "rules"), "rb") as rules:
        subprocess.run([os.path.join(bindir, "tcprules"), cdb, cdb + ".tmp"], stdin=rules, check=True)
    return tree


def free_ports(count: int) -> list[int]:
    """COUNT different loopback ports nobody listens on now (the kernel's choice), for run scripts to name for good."""
    import socket

    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in socks:  # all bound at once: two different ports
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _environment(bindir: str) -> dict[bytes, bytes]:
    """What we were started with (not Python's coerced os.environ), prefork's commands first on PATH."""
    from prefork.environ import original_environ

    env = original_environ()
    path = env.get(b"PATH", b"/usr/local/bin:/usr/bin:/bin")
    env[b"PATH"] = os.fsencode(bindir) + b":" + path
    return env


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _child_setup() -> Callable[[], None]:
    """What svscan's child does before exec: SIGTERM (a clean --stop-services) if the demo itself is killed."""
    import ctypes

    prctl = ctypes.CDLL(None).prctl  # loaded here: the child between fork and exec only calls it

    def setup() -> None:
        prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked in the demo around the spawn

    return setup


def _logged(path: str, pattern: str) -> re.Match[str] | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return re.search(pattern, f.read(), re.M)
    except FileNotFoundError:
        return None


class Stop(Exception):
    """Ctrl-C, SIGTERM or SIGHUP: bring the tree down."""


def _stop(*_: object) -> None:
    raise Stop()


class Follower:
    """Echoes new lines of a multilog ``current`` with local times (what ``tai64nlocal`` prints)."""

    def __init__(self, path: str, prefix: str) -> None:
        self.path = path
        self.prefix = prefix
        self.offset = 0
        self.inode = 0
        self.partial = b""

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                if st.st_ino != self.inode or st.st_size < self.offset:  # rotated: a new current
                    self.inode, self.offset, self.partial = st.st_ino, 0, b""
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        for line in lines:
            print(f"{self.prefix}{_local(line.decode('utf-8', 'replace'))}", flush=True)


def _local(line: str) -> str:
    from prefork.tai64n import parse_external, unpack

    label = parse_external(line[:25])
    if label is None:
        return line
    seconds, nano = unpack(label)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) + f".{nano:09d}" + line[25:]


def _wait_started(svscan: subprocess.Popen, tree: Tree) -> tuple[int, str]:
    """The greeting's port and the metrics URL, read from the services' logs once they are up."""
    deadline = time.monotonic() + START_SECONDS
    port = url = None
    for _ in range(int(START_SECONDS * 10) + 1):
        if svscan.poll() is not None:
            raise RuntimeError(f"svscan exited with status {svscan.returncode}")
        if port is None:
            found = _logged(tree.greeting_log, r"^@[0-9a-f]{24} (\d+)$")
            port = int(found[1]) if found else None
        if url is None:
            found = _logged(tree.metrics_log, r"listening on (http://\S+)")
            url = found[1] if found else None
        if port is not None and url is not None:
            return port, url
        for log in (tree.greeting_log, tree.metrics_log):  # a busy or bad port: say why now, not after 30 s
            fatal = _logged(log, r"^@[0-9a-f]{24} ([\w-]+: (?:fatal: )?(?:unable|bad|usage).*)$")
            if fatal:
                raise RuntimeError(f"{fatal[1]} (DEMO_PORT and DEMO_METRICS_PORT choose the ports; 0 lets the kernel choose)")
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    raise RuntimeError(f"the services did not start within {START_SECONDS:.0f} s (see {tree.root}/*/log/main/current)")


def _banner(tree: Tree, bindir: str, svscan_pid: int, port: int, url: str) -> str:
    b = bindir + "/"
    clients = [f"{b}tcpclient -HR -l0 127.0.0.1 {port} sh -c 'cat <&6 & exec cat >&7'"]
    if shutil.which("nc"):  # suggest only what is installed
        clients.insert(0, f"nc 127.0.0.1 {port}")
    connect = "\n             ".join(clients)
    fetch = f"curl -s {url}" if shutil.which("curl") else f"{sys.executable} -c \"import urllib.request as u; " \
        f"print(u.urlopen('{url}').read().decode())\""
    return f"""
prefork demo: svscan (pid {svscan_pid}) supervises the services in {tree.root}
  greeting:  tcpserver on 127.0.0.1:{port} with the rules in {tree.greeting}/rules
  connect:   {connect}
  control:   {b}svstat {tree.greeting} {tree.greeting}/log {tree.metrics}
             {b}svc -d {tree.greeting}     (down; -u up, -t restart, -p/-c pause/continue)
             {b}svstat --all {tree.root}
  logs:      {b}tai64nlocal < {tree.greeting_log}
             {b}tai64nlocal < {tree.metrics_log}
  metrics:   {url}
             {fetch} | grep -E '^(tcpserver|supervise)_'
Ctrl-C stops every service and removes the tree. The greeting's log follows.
"""


def _shutdown(svscan: subprocess.Popen) -> int:
    """Ask svscan to stop every service (SIGTERM with --stop-services); kill the tree by pid if it does not."""
    if svscan.poll() is None:
        svscan.send_signal(signal.SIGTERM)
        try:
            return svscan.wait(timeout=GRACE + 10)
        except subprocess.TimeoutExpired:
            pass
        import psutil

        try:
            procs = [psutil.Process(svscan.pid), *psutil.Process(svscan.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            procs = []
        for proc in procs:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        svscan.wait(timeout=10)
        print("demo: svscan did not stop in time; killed it and its services", file=sys.stderr)
        return 111
    return svscan.returncode


def main() -> int:
    """Run the demo until Ctrl-C (or SIGTERM/SIGHUP); returns the exit status."""
    bindir = os.path.dirname(sys.executable)
    for sig in STOP_SIGNALS:
        signal.signal(sig, _stop)
    ports = {name: os.environ.get(name, "0") for name in ("DEMO_PORT", "DEMO_METRICS_PORT")}
    for name, value in ports.items():
        if not (value.isascii() and value.isdigit() and int(value) <= 65535):
            print(f"demo: {name} must be a port number (0 lets the kernel choose), not {value!r}", file=sys.stderr)
            return 100
    unset = [name for name, value in ports.items() if value == "0"]
    for name, port in zip(unset, free_ports(len(unset)), strict=True):
        ports[name] = str(port)
    root = tempfile.mkdtemp(prefix="prefork-demo.")
    svscan = None
    follower = None
    status = 0
    try:
        tree = build_tree(root, bindir, ports["DEMO_PORT"], ports["DEMO_METRICS_PORT"])
        setup = _child_setup()
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # a Ctrl-C now must not lose svscan's pid
        try:
            svscan = subprocess.Popen(
                [os.path.join(bindir, "svscan"), "--stop-services", "--grace", str(GRACE), root],
                env=_environment(bindir), stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=setup,
            )
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        port, url = _wait_started(svscan, tree)
        print(_banner(tree, bindir, svscan.pid, port, url), flush=True)
        follower = Follower(tree.greeting_log, "greeting: ")
        while svscan.poll() is None:
            follower.poll()
            time.sleep(0.3)
        print(f"demo: svscan exited with status {svscan.returncode}", file=sys.stderr)
        status = svscan.returncode or 111
    except Stop:
        pass
    except (RuntimeError, OSError, subprocess.CalledProcessError) as err:
        print(f"demo: {err}", file=sys.stderr)
        status = 111
    finally:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not leave the tree half stopped
        if svscan is not None:
            stopped = _shutdown(svscan)
            status = status or (111 if stopped else 0)
            if follower is not None:
                follower.poll()  # the lines logged while the services went down
        shutil.rmtree(root, ignore_errors=True)
    if status == 0:
        print(f"demo: every service is down, {root} removed", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
