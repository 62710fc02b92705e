"""tcpserver's reloads: fresh code for the workers (HUP) and for the master (USR2), the socket never closed.

Workers are forked from the master, so they run the code the master loaded
when it started.  After HUP the master starts each new worker as a fresh
interpreter instead (fork, then exec ``python -I -S`` with a bootstrap script
in a memfd, as lean.py does for the master): it imports prefork from disk
anew and gets what a forked worker would have inherited as descriptors
(listening socket, scoreboard, ``-c`` lock, wake-up pipe, spawn log), named in
the script.  USR2 re-executes the master itself, same pid, with its
listening socket, scoreboard, running programs and exporter described in the
script, so no variable of ours ever reaches a program's environment.

Before either, a *probe* (a fresh interpreter that imports the modules the
server runs and builds the settings with the new code) must exit 0, so code
that no longer imports costs one warning line and nothing else.  With
``--options-file`` the probe also reads the command line again and hands the
new settings back on its stdout (docs/ARCHITECTURE.md, Options on reload).  See
docs/ARCHITECTURE.md, tcpserver: master, workers, scoreboard, and docs/reference/tcpserver.md, Signals.
"""

from __future__ import annotations

import marshal
import os
import sys
import time

from prefork import lean

TYPE_CHECKING = False  # the lean server process does not import typing (see lean.py)
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import NoReturn

    from prefork.master import Master
    from prefork.serverconfig import ServerConfig

PROBE_TIMEOUT = 30.0  # seconds a probe, or a worker exec'd on HUP until it serves, may take
REFUSED = 100  # the probe's exit status when the command line read again (--options-file) is refused


def interpreter() -> str:
    """The Python binary running us (sys.executable may name the console script: argv[0] of the lean exec)."""
    try:
        return os.readlink("/proc/self/exe")
    except OSError:
        return sys.executable


def command_path() -> str:
    """argv[0] as the command was started (``tcpserver``): ps and ``name_process`` show it."""
    try:
        with open("/proc/self/cmdline", "rb") as f:
            return os.fsdecode(f.read().split(b"\0", 1)[0]) or sys.argv[0]
    except OSError:
        return sys.argv[0]


def exec_fresh(name: str, body: str, keep: Iterable[int], env: dict[bytes, bytes]) -> None:
    """Replace this process with a fresh ``python -I -S`` running BODY, the descriptors KEEP inherited;
    the command line stays the server's.  Returns only if that is not possible."""
    for fd in keep:
        if fd >= 0:
            os.set_inheritable(fd, True)
    lean.exec_script(name, lambda fd, paths: lean.bootstrap(fd, paths, body), interpreter(), command_path(),
                     sys.argv[1:], env)


# -- the probe ----------------------------------------------------------------------------------
def probe_body(cfg: ServerConfig) -> str:
    """What the probe runs: every module this server imports, and its settings built by the new code."""
    modules = ["prefork.master", "prefork.worker", "prefork.reload", "prefork.capacity", "prefork.spawn"]
    if cfg.rules_path is not None:
        modules.append("prefork.rules")
    if cfg.needs_lookups:
        modules += ["prefork.addr", "prefork.ident"]
    if cfg.proxy_protocol:
        modules.append("prefork.proxyproto")
    if cfg.wants_exporter:
        modules.append("prefork.exporter_child")
    if cfg.reread:  # --options-file: the command line read again, the new settings on stdout (tcpserver_cli.reread)
        return f"import {', '.join(modules)}\nfrom prefork.tcpserver_cli import reread\nreread({cfg.as_dict()!r})\n"
    return (f"import {', '.join(modules)}\nfrom prefork.serverconfig import ServerConfig\n"
            f"ServerConfig(**{cfg.as_dict()!r})\n")


class Probe:
    """A running probe: its pid, its stderr and stdout (memfds) and its deadline."""

    def __init__(self, pid: int, errfd: int, outfd: int, sig: int, reread: bool) -> None:
        self.pid = pid
        self.errfd = errfd
        self.outfd = outfd  # its stdout: with --options-file (REREAD), the settings it read, marshalled
        self.reread = reread
        self.sig = sig  # the reload it is for: SIGHUP or SIGUSR2
        self.deadline = time.monotonic() + PROBE_TIMEOUT
        self.settings: dict | None = None

    def close(self) -> None:
        os.close(self.errfd)
        os.close(self.outfd)

    def failure(self, status: int) -> bytes | None:
        """None if the new code imports (and ``settings`` holds what an options file gave, if any); else what
        went wrong, for one log line."""
        try:
            text = os.pread(self.errfd, 65536, 0)
            out = os.pread(self.outfd, os.fstat(self.outfd).st_size, 0) if status == 0 and self.reread else b""
        except OSError:
            text = out = b""
        self.close()
        if status == 0:
            if self.reread:
                try:
                    self.settings = marshal.loads(out)
                except (ValueError, EOFError, TypeError):
                    return b"the probe's settings do not read back"
                if not isinstance(self.settings, dict):
                    return b"the probe's settings do not read back"
            return None
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == REFUSED:
            return b" ".join(text.split(b"\n")).strip()  # one line already: tcpserver_cli.reread
        if os.WIFSIGNALED(status):
            return b"new code not checked: probe killed by signal %d (%d s limit)" % (
                os.WTERMSIG(status), PROBE_TIMEOUT)
        return b"new code does not start: " + summary(text, os.waitstatus_to_exitcode(status))


def summary(traceback: bytes, code: int) -> bytes:
    """A traceback in one line: its last line, and the last file and line it names."""
    lines = [line.strip() for line in traceback.splitlines() if line.strip()]
    if not lines:
        return b"exit status %d" % code
    where = [line for line in lines if line.startswith(b'File "')]
    text = lines[-1]
    if where:
        text += b" (" + where[-1].replace(b'"', b"") + b")"
    return text


# -- a worker exec'd after HUP -------------------------------------------------------------------
def exec_worker(master: Master, index: int, ready_w: int) -> None:
    """In a child just forked by MASTER: become the worker of slot INDEX running the code on disk now.

    Returns only if the exec is not possible (the child then exits 111 and is replaced like a dead worker).
    """
    board = master.board
    assert board is not None
    spawnlog = master.spawnlog
    fds = {"listen": master.lsock.fileno(), "board": board.fd, "lock": board.lock_fd, "wake_r": master.wake_r,
           "wake_w": master.wake_w, "spawnlog": spawnlog.fd if spawnlog is not None else -1, "ready": ready_w,
           "clients": master.clients.fd}
    handoff = dict(fds, board_path=board.path, index=index, sigdef=[int(s) for s in master.spawner.sigdef])
    body = f"from prefork.reload import run_worker\nrun_worker({master.cfg.as_dict()!r}, {handoff!r})\n"
    exec_fresh("tcpserver-worker", body, fds.values(), master.environ)


def run_worker(settings: dict[str, object], handoff: dict[str, object]) -> NoReturn:
    """The exec'd worker: what a forked one inherits, rebuilt from the descriptors named in HANDOFF."""
    import socket

    from prefork import scoreboard as sb
    from prefork.clients import ClientTable
    from prefork.environ import original_environ
    from prefork.serverconfig import ServerConfig
    from prefork.spawn import Spawner
    from prefork.worker import SpawnLog, Worker, base_environment

    h: dict = handoff
    cfg = ServerConfig(**settings)
    for name in ("listen", "board", "lock", "wake_r", "wake_w", "spawnlog", "ready", "clients"):
        if h[name] >= 0:
            os.set_inheritable(h[name], False)  # ours only: no program inherits them
    lsock = socket.socket(fileno=h["listen"])
    board = sb.ScoreboardFile.attach(h["board_path"], h["board"], h["lock"])
    spawnlog = SpawnLog(board.workers, cfg.table_limit, h["spawnlog"]) if h["spawnlog"] >= 0 else None
    rules = None
    if cfg.rules_path is not None:
        from prefork.rules import RulesFile

        rules = RulesFile(cfg.rules_path, cfg.rules_missing_ok)
    worker = Worker(cfg, lsock, board, h["index"], h["wake_r"], h["wake_w"], base_environment(original_environ()),
                    Spawner(cfg.argv, tuple(h["sigdef"])), rules, spawnlog,
                    ClientTable(board.workers, cfg.table_limit, h["clients"]))
    worker.ready_fd = h["ready"]
    worker.run()


# -- USR2: the master re-executed ----------------------------------------------------------------
def exec_master(master: Master, handoff: dict[str, object], keep: Iterable[int]) -> None:
    """Replace the master (same pid) with a fresh one that resumes from HANDOFF; returns only if not possible.

    The environment is the one the master was started with (/proc/self/environ), so the new master
    derives the programs' environment exactly as the first one did (LISTEN_* consumed included)."""
    from prefork.environ import original_environ

    settings = master.cfg.as_dict()
    settings["print_port"] = False  # said once, at the first start
    body = (f"from prefork.serverconfig import ServerConfig\nfrom prefork.master import run\n"
            f"run(ServerConfig(**{settings!r}), {handoff!r})\n")
    exec_fresh("tcpserver-settings", body, keep, original_environ())
