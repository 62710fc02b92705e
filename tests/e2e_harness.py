"""Service trees for the end-to-end tests: real Debian daemons under prefork's svscan, tcpserver and multilog.

A :class:`Tree` is a throwaway ``/service``-style setup made the way an operator makes one: a scan
directory (``SVSCANDIR``) run by prefork's ``svscan``, a directory of real service directories
(``SVCLOCKDIR``) linked into it, each service with ``run`` = prefork's ``tcpserver`` (``-1`` on port 0,
so the port it got is the first line of its log: no race with other tests for a port) and ``log/run`` =
``setuidgid nobody multilog t ./main``.  The tree lives in a fresh 0755 directory under /tmp, not in
pytest's tmp_path (0700, root's), because multilog runs as nobody and must reach its log directory.

Teardown (``Tree.close``, always run): every descendant of svscan, every process carrying the tree's
``PREFORK_TEST_TAG`` and every process whose cwd is inside the tree is collected through psutil,
svscan is SIGKILLed, then the rest, by pid, in bounded passes; the svscan table and multilog's counter
blocks in /dev/shm and the tree are removed.
"""

from __future__ import annotations

import contextlib
import ftplib
import io
import os
import pwd
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil
import pytest
from conftest import ours, remove_shm_files_of
from tcpserver_harness import TAG_VAR, kill_procs, tagged, wait_until

from prefork.control import statusfile

BIN = Path(ours("svscan")).parent  # prefork's commands: the venv's bin
VSFTPD = "/usr/sbin/vsftpd"
RSYNC = "/usr/bin/rsync"
LOG_USER = "nobody"
LABEL = re.compile(r"^@[0-9a-f]{24} ")
PORT_LINE = re.compile(r"^(\d+)$")
PATH = "/usr/bin:/bin"


def need(binary: str) -> None:
    """Skip unless BINARY is installed and we are root (vsftpd chroots, setuidgid needs root)."""
    if not os.access(binary, os.X_OK):
        pytest.skip(f"{binary} is not installed (apt-get install vsftpd rsync)")
    if os.geteuid() != 0:
        pytest.skip("the end-to-end trees need root (chroot, setuidgid nobody)")


def script(path: Path, body: str) -> None:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def strip_label(line: str) -> str:
    """A multilog ``t`` line without its ``@<tai64n> `` label."""
    return LABEL.sub("", line, count=1)


def free_port_range(ip: str, count: int = 20) -> tuple[int, int]:
    """COUNT consecutive ports below the ephemeral range that can be bound on IP right now (vsftpd's PASV range)."""
    for _ in range(200):
        low = random.randrange(10000, 30000 - count)
        socks = []
        try:
            for port in range(low, low + count):
                s = socket.socket()
                socks.append(s)
                s.bind((ip, port))
            return low, low + count - 1
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError(f"no {count} free ports on {ip}")


# -- services ---------------------------------------------------------------------------------
class Service:
    """One service directory of a tree: ``run``, ``log/run``, the log in ``log/main``."""

    def __init__(self, tree: Tree, name: str, directory: Path) -> None:
        self.tree = tree
        self.name = name
        self.dir = directory
        self.logdir = directory / "log" / "main"

    # the log
    def current(self) -> str:
        try:
            return (self.logdir / "current").read_bytes().decode("utf-8", "surrogateescape")
        except FileNotFoundError:
            return ""

    def raw_lines(self) -> list[str]:
        """Complete lines of ``current``, labels included."""
        return self.current().split("\n")[:-1]

    def lines(self) -> list[str]:
        """Complete lines of ``current`` without their labels."""
        return [strip_label(line) for line in self.raw_lines()]

    def wait_lines(self, predicate: Callable[[list[str]], object], timeout: float = 15.0, what: str = "") -> list[str]:
        """Wait (bounded) until PREDICATE holds for the log's lines; fail with the log if it never does."""
        ok = wait_until(lambda: predicate(self.lines()), timeout, 0.05)
        lines = self.lines()
        assert ok, f"{self.name}: {what or 'expected lines'} not in the log within {timeout} s:\n" + "\n".join(lines)
        return lines

    def count(self, pattern: str) -> int:
        """Lines of the log matching the regular expression PATTERN (from the line's start, label stripped)."""
        rx = re.compile(pattern)
        return sum(1 for line in self.lines() if rx.match(line))

    def wait_count(self, pattern: str, n: int, timeout: float = 15.0) -> list[str]:
        return self.wait_lines(lambda ls: sum(1 for x in ls if re.match(pattern, x)) >= n, timeout,
                               f"{n} lines matching {pattern!r}")

    def ports(self) -> list[int]:
        """The ports tcpserver ``-1`` printed, one per start, oldest first."""
        return [int(m.group(1)) for line in self.lines() if (m := PORT_LINE.match(line))]

    def wait_port(self, starts: int = 1, timeout: float = 15.0) -> int:
        """The port of the STARTS-th start of tcpserver (waits for its ``-1`` line)."""
        self.wait_lines(lambda ls: sum(1 for x in ls if PORT_LINE.match(x)) >= starts, timeout,
                        f"port line of start {starts}")
        return self.ports()[starts - 1]

    # supervision
    def status(self, log: bool = False) -> statusfile.Status | None:
        try:
            return statusfile.read(str(self.dir / ("log/supervise" if log else "supervise")))
        except (OSError, ValueError):
            return None

    def pid(self, log: bool = False) -> int:
        st = self.status(log)
        return st.pid if st else 0

    def wait_up(self, log: bool = False, other_than: int = 0, timeout: float = 15.0) -> int:
        pid = wait_until(lambda: self.pid(log) not in (0, other_than) and self.pid(log), timeout, 0.05)
        assert pid, f"{self.name}{'/log' if log else ''} not up within {timeout} s"
        return int(pid)

    def wait_down(self, log: bool = False, timeout: float = 15.0) -> None:
        assert wait_until(lambda: self.pid(log) == 0, timeout, 0.05), f"{self.name} still up"

    @property
    def scoreboard(self) -> Path:
        return self.dir / "scoreboard"

    def rules(self, text: str) -> None:
        """Compile TEXT into ``rules.cdb`` with prefork's tcprules (the tmp file renamed over the cdb)."""
        subprocess.run([str(BIN / "tcprules"), "rules.cdb", "rules.tmp"], input=text.encode(), cwd=self.dir,
                       env={"PATH": PATH}, check=True, timeout=30, capture_output=True)


def tcpserver_run(name: str, ip: str, port: int | str, program: str, options: str = "") -> str:
    """The README's example run line (-c30 -HRXv), plus ``-1`` (the port is the log's first line), prefork's scoreboard options and OPTIONS."""
    return (f"exec {BIN}/tcpserver --name {name} --scoreboard ./scoreboard {options}-1 -c30 -HRXv -l0 -x rules.cdb "
            f"{ip} {port} {program} 2>&1")


LOG_RUN = f"exec {BIN}/setuidgid {LOG_USER} {BIN}/multilog t ./main"


# -- the tree ----------------------------------------------------------------------------------
class Tree:
    """A scan directory and a service directory store under /tmp, run by prefork's svscan."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="prefork-e2e-", dir="/tmp"))
        self.base.chmod(0o755)
        self.scan = self.base / "service"  # SVSCANDIR
        self.store = self.base / "sv"  # SVCLOCKDIR
        self.scan.mkdir()
        self.store.mkdir()
        self.tag = f"e2e-{uuid.uuid4().hex}"
        self.svscan: subprocess.Popen | None = None
        self.table: str | None = None

    def __enter__(self) -> Tree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # making services
    def service(self, name: str, run: str, linked: bool = True) -> Service:
        """``sv/NAME`` with RUN and the multilog ``log/run``; LINKED: symlinked into the scan directory now."""
        d = self.store / name
        (d / "log" / "main").mkdir(parents=True)
        pw = pwd.getpwnam(LOG_USER)
        os.chown(d / "log" / "main", pw.pw_uid, pw.pw_gid)
        script(d / "run", run)
        script(d / "log" / "run", LOG_RUN)
        if linked:
            (self.scan / name).symlink_to(d)
        return Service(self, name, d)

    def share(self, *parts: str, files: dict[str, bytes] | None = None) -> Path:
        """A world-readable directory BASE/PARTS holding FILES."""
        d = self.base.joinpath(*parts)
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o755)
        for rel, data in (files or {}).items():
            p = d / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
            p.chmod(0o644)
        return d

    # running
    def env(self, **extra: str) -> dict[str, str]:
        env = {"PATH": PATH, TAG_VAR: self.tag, "SVSCANDIR": str(self.scan), "SVCLOCKDIR": str(self.store),
               "SVCTIMEOUT": "15"}
        env.update(extra)
        return env

    def start(self, *options: str) -> subprocess.Popen:
        """Start prefork's svscan with OPTIONS on the scan directory (its output goes to BASE/svscan.log)."""
        assert self.svscan is None
        self.table = _table_path(self.scan)
        with open(self.base / "svscan.log", "wb") as out:
            self.svscan = subprocess.Popen([str(BIN / "svscan"), *options, str(self.scan)], env=self.env(),
                                           stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                           start_new_session=True)
        return self.svscan

    def svscan_output(self) -> str:
        return (self.base / "svscan.log").read_text(errors="surrogateescape")

    def scans(self) -> int:
        """Scans svscan has finished (from its table; 0 before the table exists)."""
        from prefork.control import servicetable_read

        try:
            return servicetable_read.read(self.table).scans if self.table else 0
        except (OSError, servicetable_read.ServiceTableError):
            return 0

    def wait_scanned(self, after: int = 0, timeout: float = 15.0) -> None:
        """Wait (bounded) until svscan has finished more than AFTER scans."""
        assert wait_until(lambda: self.scans() > after, timeout, 0.02), f"svscan did no scan within {timeout} s"

    def rescan(self) -> None:
        """Make svscan scan now (SIGALRM) instead of within 5 s."""
        assert self.svscan is not None
        self.svscan.send_signal(signal.SIGALRM)

    def cmd(self, name: str, *args: str, timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess:
        """Run prefork's command NAME in the scan directory with the tree's environment; text output."""
        return subprocess.run([str(BIN / name), *args], cwd=self.scan, env=self.env(), capture_output=True,
                              text=True, timeout=timeout, check=check)

    def svstat(self, *names: str) -> list[str]:
        return self.cmd("svstat", *names, check=True).stdout.splitlines()

    def metrics(self, *services: Service) -> dict[tuple[str, frozenset], float]:
        """One scrape of prefork-exporter (``--once``) over the services' scoreboards and the svscan table."""
        argv = []
        for s in services:
            argv += ["--scoreboard", str(s.scoreboard)]
        out = self.cmd("prefork-exporter", *argv, "--services", str(self.scan), "--once", check=True).stdout
        return parse_metrics(out)

    # what is running
    def processes(self) -> list[psutil.Process]:
        """svscan's descendants, the tree's tagged processes and those whose cwd is inside the tree (svscan excluded)."""
        found: dict[int, psutil.Process] = {}
        if self.svscan is not None:
            with contextlib.suppress(psutil.Error):
                for p in psutil.Process(self.svscan.pid).children(recursive=True):
                    found[p.pid] = p
        for p in tagged(self.tag):
            found.setdefault(p.pid, p)
        for p in inside(self.base):
            found.setdefault(p.pid, p)
        found.pop(os.getpid(), None)
        if self.svscan is not None:
            found.pop(self.svscan.pid, None)
        return [p for p in found.values() if alive(p)]

    def service_processes(self) -> list[psutil.Process]:
        """:meth:`processes` without svscan's own helpers (its ``--metrics`` exporter child)."""
        out = []
        for p in self.processes():
            with contextlib.suppress(psutil.Error):
                if self.svscan is not None and p.ppid() == self.svscan.pid and \
                        os.path.basename(p.cmdline()[0]) == "prefork-exporter":
                    continue
                out.append(p)
        return out

    def close(self) -> None:
        """Kill svscan and everything of the tree by pid, then remove the table and the tree."""
        procs = self.processes()
        if self.svscan is not None:
            with contextlib.suppress(OSError):
                self.svscan.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.svscan.wait(10)
        for _ in range(5):
            live = [p for p in procs if alive(p)]
            if not live:
                break
            kill_procs(live)
            procs = self.processes()
        for path in [self.table, *self.log_blocks()]:
            if path:
                with contextlib.suppress(OSError):
                    os.unlink(path)
        remove_shm_files_of(self.base)
        shutil.rmtree(self.base, ignore_errors=True)

    def log_blocks(self) -> list[str]:
        """The shared-memory counter blocks prefork's multilog may have left for the tree's log directories."""
        try:
            from prefork.control.log.logcounters_read import path_for
        except ImportError:  # a multilog without counters
            return []
        out = []
        for logdir in self.store.glob("*/log/main"):
            with contextlib.suppress(OSError):
                out.append(path_for(str(logdir)))
        return out


def _table_path(scan: Path) -> str:
    """Where svscan publishes the table of SCAN (servicetable_read.paths' svscan candidate)."""
    from prefork.control import servicetable_read

    return servicetable_read.paths(str(scan))[0]


def alive(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def inside(directory: Path) -> list[psutil.Process]:
    """Live processes whose cwd is DIRECTORY or below it."""
    top = os.path.realpath(directory)
    out = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            cwd = p.cwd()
            if (cwd == top or cwd.startswith(top + os.sep)) and p.pid != os.getpid() and alive(p):
                out.append(p)
    return out


# -- metrics ------------------------------------------------------------------------------------
LISTENING = re.compile(r"prefork-exporter: listening on (http://\S+/metrics)")


def metrics_urls(text: str) -> list[str]:
    """The URLs a ``--metrics HOST:0`` exporter child announced in TEXT (a log), oldest first."""
    return LISTENING.findall(text)


def scrape(url: str, timeout: float = 10) -> dict[tuple[str, frozenset], float]:
    """One HTTP scrape of URL, parsed."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as response:
        return parse_metrics(response.read().decode())


SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
LABEL_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[tuple[str, frozenset], float]:
    """The samples of a text exposition: (name, frozenset of (label, value)) -> value."""
    out = {}
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m:
            labels = frozenset(LABEL_PAIR.findall(m.group(2) or ""))
            out[(m.group(1), labels)] = float(m.group(3))
    return out


def sample(metrics: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float | None:
    """The value of the one sample NAME whose labels include LABELS (None if there is none)."""
    want = set(labels.items())
    found = [v for (n, ls), v in metrics.items() if n == name and want <= ls]
    assert len(found) <= 1, f"{name} {labels}: several samples"
    return found[0] if found else None


# -- FTP ------------------------------------------------------------------------------------------
def vsftpd_conf(root: Path, empty: Path, ip: str, extra: Iterable[str] = ()) -> str:
    """An anonymous, read-only vsftpd in inetd mode (listen=NO) serving ROOT, passive ports in a free range."""
    low, high = free_port_range(ip)
    lines = [
        "listen=NO",
        "listen_ipv6=NO",
        "anonymous_enable=YES",
        "local_enable=NO",
        "write_enable=NO",
        "no_anon_password=YES",
        f"anon_root={root}",
        f"secure_chroot_dir={empty}",
        "ftp_username=ftp",
        "pasv_enable=YES",
        f"pasv_address={ip}",
        f"pasv_min_port={low}",
        f"pasv_max_port={high}",
        "seccomp_sandbox=NO",
        "xferlog_enable=NO",
        "syslog_enable=NO",
        "dirmessage_enable=NO",
        *extra,
    ]
    return "\n".join(lines) + "\n"


def ftp_login(ip: str, port: int, source: str | None = None, timeout: float = 10) -> ftplib.FTP:
    """An anonymous ftplib session (passive mode), optionally from the source address SOURCE."""
    ftp = ftplib.FTP(timeout=timeout, source_address=(source, 0) if source else None)
    try:
        ftp.connect(ip, port)
        ftp.login()
    except BaseException:
        ftp.close()
        raise
    return ftp


def ftp_get(ftp: ftplib.FTP, name: str) -> bytes:
    buf = io.BytesIO()
    ftp.retrbinary(f"RETR {name}", buf.write)
    return buf.getvalue()


def ftp_session(ip: str, port: int, get: str | None = None) -> tuple[list[str], bytes | None]:
    """Log in, list, optionally download GET, quit: (the listing, the file)."""
    ftp = ftp_login(ip, port)
    try:
        names = sorted(ftp.nlst())
        data = ftp_get(ftp, get) if get else None
        ftp.quit()
    finally:
        ftp.close()
    return names, data


def refused(ip: str, port: int, source: str | None = None) -> BaseException | None:
    """The error a client gets from a server that closes at once (None if it got a greeting and logged in)."""
    try:
        ftp = ftp_login(ip, port, source, timeout=5)
    except (EOFError, OSError, ftplib.Error) as e:
        return e
    ftp.close()
    return None


