"""``svscan [DIR]``: every service of a directory supervised in one process, as daemontools 0.76's svscan.

daemontools' svscan forks one ``supervise`` per service and one per ``log``;
here the services are entries on one :class:`prefork.control.engine.Engine`, which
keeps exactly the per-service files a ``supervise`` would (lock, FIFOs,
status), so ``svc``/``svstat``/``svok`` cannot tell the difference.  The scan
itself is 0.76's: dot-entries skipped, stat() following symlinks, services
identified by (device, inode) so a renamed directory is the same service,
``NAME``/``NAME/log`` paired by one pipe kept for the life of the entry, a
vanished directory's services left running until they exit, at most
``--max-services`` entries.  A service whose supervisor "exited" after ``x``
is taken on again at the next scan, as svscan restarts a supervise.

Beyond 0.76 (long options before DIR, all opt-in except the rescan signals):
rescan at once on SIGHUP/SIGALRM (0.76 dies of them); ``--stop-services``
brings every service down (TERM+CONT, then KILL after ``--grace``) on
SIGTERM/SIGINT before exiting; ``--subreaper`` reaps orphans as PID 1 does;
``--runit`` or ``--s6`` (the status format and control letters of runit's or s6's
clients, control/statusfile.py); ``--table PATH``; ``--metrics HOST:PORT`` and ``--metrics-textfile
PATH`` run a ``prefork-exporter`` child on the service table (see
``prefork/exporter_child.py``), restarted at most once a second if it exits,
stopped after the services with ``--stop-services``.  ``--runit [-P]`` is runit's
``runsvdir [-P]`` (docs/CONTRACTS.md, runit semantics): a pair ended by ``x`` is taken on afresh
at the next scan, a directory that leaves the tree is stopped (service first, then its log at
EOF), ``-P`` starts every service in a session of its own, and a second operand is runsvdir's
log (control/proctitle.py).  If svscan is killed, the
services keep running, and the next svscan takes each over from its status file
instead of starting a second copy (see :func:`prefork.control.engine.running_from_status`).

The service table (``control/servicetable.py``) is mode 0600: only svscan's
user reads it.  ``--table-group GROUP`` (a name or a number) makes it 0640 for
that group.  A svscan that is told to stop without ``--stop-services``
(SIGTERM, SIGINT) removes its default table, as at any exit, before it dies
of the signal as 0.76's does; a killed one leaves it behind (``svstat
--all`` then says that svscan is not running), and the next svscan for the
directory replaces it (or, with ``--table`` elsewhere, removes it if it is
its user's).  Run as root, svscan starts the exporter as ``nobody``
(``--metrics-user USER``: another account, or UID:GID); the exporter reads
the table through a descriptor it opened before giving up root, and writes
``--metrics-textfile`` as that user.
"""

from __future__ import annotations

import os
import signal
import stat
import sys

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: svscan does not import typing
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Protocol, TypedDict

    from prefork.control.engine import Engine
    from prefork.control.machine import Service
    from prefork.control.servicetable import ServiceTable
    from prefork.exporter_child import Exporter

    class Settings(TypedDict):
        """svscan's options as :func:`parse` returns them, each of the type its converter gives."""

        max: int
        stop: bool
        grace: float
        subreaper: bool
        mode: str
        new_session: bool
        table: str | None
        table_group: int | None
        metrics: str | None
        textfile: str | None
        metrics_user: str | None

    class ScanEngine(Protocol):
        """What a :class:`Scanner` asks of its engine (:class:`prefork.control.engine.Engine` in svscan)."""

        table: ServiceTable | None
        on_finished: Callable[[Service], object] | None
        live: int
        stop: bool

        def add(self, path: str, display: str, *, stdin: int | None = None, stdout: int | None = None,
                owner: Entry | None = None, table_name: str | None = None, is_log: bool = False) -> Service: ...

        def services(self) -> list[Service]: ...

        def kill(self, service: Service, sig: int) -> None: ...

        def kill_pid(self, service: Service, pid: int, sig: int) -> None: ...

        def monotonic(self) -> float: ...

        def call_at(self, when: float, service: Service | None, func: Callable[[], object] | None) -> None: ...

PROG = "svscan"
RESCAN = 5.0
GIVE_UP = 3.0  # seconds after the grace KILL before --stop-services exits regardless
USAGE = ("svscan [--max-services N] [--stop-services] [--grace SECONDS] [--subreaper] [--runit [-P] | --s6]"
         " [--table PATH] [--table-group GROUP] [--metrics HOST:PORT] [--metrics-textfile PATH] [--metrics-user USER]"
         " [dir [log]]")
HELP = """usage: svscan [--max-services N] [--stop-services] [--grace SECONDS] [--subreaper] [--runit [-P] | --s6]
              [--table PATH] [--table-group GROUP] [--metrics HOST:PORT] [--metrics-textfile PATH]
              [--metrics-user USER] [dir [log]]

Supervise every service directory in DIR (default .), rescanning every 5 seconds and on SIGHUP/SIGALRM.
  --max-services N  at most N services (default 1000)
  --stop-services   on SIGTERM/SIGINT bring every service down before exiting (default: exit, leave them running)
  --grace SECONDS   how long --stop-services waits before SIGKILL (default 10)
  --subreaper       become a child subreaper and reap orphaned descendants (automatic as PID 1)
  --runit           runit's runsvdir: write runsv's status, stat and pid files (for sv), stop a service whose
                    directory leaves DIR, sv exit stops the service
  -P                (after --runit, before DIR) run each service in a session of its own, as runsvdir -P
  log               (with --runit, after DIR) runsvdir's log: standard error scrolls through it in ps
  --s6              write s6's status and events, and know s6-svc's letters (for s6-svc, s6-svstat, s6-svwait)
  --table PATH      publish the services' state at PATH (default /dev/shm/prefork-svscan.DEV.INO), mode 0600
  --table-group GROUP
                    let GROUP (a name or number) read the table too (mode 0640)
  --metrics HOST:PORT
                    serve Prometheus metrics at http://HOST:PORT/metrics (a prefork-exporter child; port 0: one chosen at start)
  --metrics-textfile PATH
                    also write the metrics to PATH for node_exporter's textfile collector
  --metrics-user USER
                    the account (or UID:GID) the exporter runs as when svscan runs as root (default nobody);
                    it writes --metrics-textfile, so PATH's directory must be writable by it
"""


class Entry:
    """One service directory of the scan: the pair NAME and NAME/log and the pipe between them."""

    __slots__ = ("name", "key", "active", "closing", "has_log", "pipe_r", "pipe_w", "main", "log")

    def __init__(self, name: str, key: tuple[int, int]) -> None:
        self.name = name
        self.key = key
        self.active = True
        self.closing = False  # --runit: the pair is ending as a runsv does; taken on afresh once both are done
        self.has_log = False
        self.pipe_r = -1
        self.pipe_w = -1
        self.main: Service | None = None
        self.log: Service | None = None


class Scanner:
    """The scan of daemontools 0.76's svscan over an engine."""

    def __init__(self, engine: ScanEngine, max_services: int, runit: bool = False) -> None:
        self.engine = engine
        self.max_services = max_services
        self.runit = runit
        self.entries: dict[tuple[int, int], Entry] = {}
        self.scans = 0
        self.scan_errors = 0
        self.stopping = False
        engine.on_finished = self.finished

    def warn(self, text: str, err: BaseException | None = None) -> None:
        from prefork.djb import warn

        self.scan_errors += 1
        warn(PROG, text, err)

    def scan(self) -> None:
        if self.stopping:
            return
        self.scans += 1
        for entry in self.entries.values():
            entry.active = False
        try:
            names = os.listdir(".")
        except OSError as err:
            self.warn("unable to read .", err)  # 0.76 dies here; a passing hiccup must not orphan every service
            names = []
        for name in names:
            if name.startswith("."):
                continue
            try:
                st = os.stat(name)
            except OSError as err:
                self.warn(f"unable to stat {name}", err)
                continue
            if not stat.S_ISDIR(st.st_mode):
                continue
            self.consider(name, (st.st_dev, st.st_ino))
        for entry in [e for e in self.entries.values() if not e.active]:
            if entry.main is None and entry.log is None:
                self.drop(entry)
            elif self.runit:
                self.leave(entry)
        self.publish_counters()

    def leave(self, entry: Entry) -> None:
        """--runit: the directory left the tree; stop the pair as runsvdir's TERM makes its runsv stop it.

        runsv sends the service TERM and CONT and does not restart it; once it is down, the log's pipe
        is closed and the log, wanted down but never signalled, reads it to the end (docs/CONTRACTS.md,
        runit semantics).  0.76 (without --runit) leaves both running.
        """
        if entry.closing:
            return  # told once, as runsvdir sends its TERM once
        if entry.main is not None:
            entry.closing = True
            entry.main.control(ord("x"))
        else:
            self.close_log(entry)

    def close_log(self, entry: Entry) -> None:
        """--runit: the service is done: the log reads to EOF and ends; the pair is taken on afresh after that."""
        entry.closing = True
        if entry.pipe_w >= 0:
            os.close(entry.pipe_w)
            entry.pipe_w = -1
        if entry.log is not None and not entry.log.exit_requested:
            entry.log.retire(want_down=True)

    def consider(self, name: str, key: tuple[int, int]) -> None:
        entry = self.entries.get(key)
        if entry is None:
            if len(self.entries) >= self.max_services:
                self.warn(f"unable to start {name}: running too many services")
                return
            entry = Entry(name, key)
            if len(name.encode("utf-8", "surrogateescape")) <= 255:
                try:
                    os.stat(f"{name}/log")
                    entry.has_log = True
                except FileNotFoundError:
                    pass
                except OSError as err:
                    self.warn(f"unable to stat {name}/log", err)
                    return
            if entry.has_log:
                try:
                    entry.pipe_r, entry.pipe_w = _recover_pipe(name) or os.pipe()
                except OSError as err:
                    self.warn(f"unable to create pipe for {name}", err)
                    return
            self.entries[key] = entry
        entry.active = True
        entry.name = name
        if entry.closing:
            return  # its log is still reading to the end: the next scan after that takes the pair on again
        if entry.main is None:
            entry.main = self.start(entry, name, name, False)
        if entry.has_log and entry.log is None:
            entry.log = self.start(entry, f"{name}/log", "log", True)

    def start(self, entry: Entry, path: str, display: str, is_log: bool) -> Service | None:
        """Take the service on; on failure print what 0.76's ``supervise`` child would and retry next scan."""
        from prefork.control.engine import StartupError
        from prefork.djb import write_line

        try:
            return self.engine.add(
                path, display,
                stdin=entry.pipe_r if is_log else None,
                stdout=entry.pipe_w if (entry.has_log and not is_log) else None,
                owner=entry, table_name=path, is_log=is_log,
            )
        except StartupError as err:
            self.scan_errors += 1
            write_line(f"supervise: fatal: {err}")
            return None

    def finished(self, service: Service) -> None:
        entry = service.context.owner
        if entry is None:
            return
        if entry.main is service:
            entry.main = None
            if self.runit and not self.stopping:
                self.close_log(entry)  # runsv exits after its log: the pair ends together
        elif entry.log is service:
            entry.log = None
        if (not entry.active or entry.closing) and entry.main is None and entry.log is None:
            self.drop(entry)
        if self.stopping:
            self.stop_step()

    def drop(self, entry: Entry) -> None:
        if self.entries.get(entry.key) is entry:
            del self.entries[entry.key]
        for fd in (entry.pipe_r, entry.pipe_w):
            if fd >= 0:
                os.close(fd)
        entry.pipe_r = entry.pipe_w = -1

    def publish_counters(self) -> None:
        table = self.engine.table
        if table is not None:
            active = sum(1 for e in self.entries.values() if e.active)
            table.set_counters(active, self.scan_errors, self.scans)

    # -- --stop-services ---------------------------------------------------------------------
    def stop_all(self, grace: float) -> None:
        """Bring every service down: mains first (their logs keep reading), then logs at EOF; KILL after GRACE."""
        if self.stopping:
            return
        self.stopping = True
        engine = self.engine
        for entry in self.entries.values():
            if entry.main is not None:
                entry.main.control(ord("d"))
                entry.main.retire()
        engine.call_at(engine.monotonic() + grace, None, self.kill_all)
        self.stop_step()

    def stop_step(self) -> None:
        engine = self.engine
        if any(e.main is not None for e in self.entries.values()):
            return
        for entry in self.entries.values():
            if entry.pipe_w >= 0:
                os.close(entry.pipe_w)  # the log reads to EOF once its writer is gone
                entry.pipe_w = -1
            if entry.log is not None and not entry.log.exit_requested:
                # No signal, as runsv does: a TERM now would lose what is still in the pipe; the log exits
                # at EOF (and is not restarted), the grace KILL is there for one that does not.
                entry.log.retire(want_down=self.runit)
        if engine.live == 0:
            engine.stop = True

    def kill_all(self) -> None:
        """The grace is over: every service still running gets KILL (logs too, and none is restarted)."""
        import signal as sig

        engine = self.engine
        for service in engine.services():
            if not service.exit_requested:
                service.retire()  # a log that has not been told yet must not come back
        for service in engine.services():
            if service.pid:
                engine.kill(service, sig.SIGKILL)
                engine.kill(service, sig.SIGCONT)
            if service.finish_pid:  # a ./finish without timeout-finish (0, or --runit) must not hold svscan up
                engine.kill_pid(service, service.finish_pid, sig.SIGKILL)
        engine.call_at(engine.monotonic() + GIVE_UP, None, self.give_up)

    def give_up(self) -> None:
        """KILL did not work either (no CAP_KILL for a service that changed uid): say so and exit anyway."""
        from prefork.djb import warn

        for service in self.engine.services():
            if service.pid:
                warn(PROG, f"unable to stop {service.context.table_name} (pid {service.pid}): still running")
        self.engine.stop = True


def _recover_pipe(name: str) -> tuple[int, int] | None:
    """The pipe of a NAME/log pair left running by a killed svscan, reopened through /proc, else None.

    A new pipe would cut the surviving writer off from the surviving reader;
    reopening the one the running process holds keeps every line flowing.  Only a
    process the engine would adopt counts (see :func:`prefork.control.engine.running_from_status`):
    a status forged by the service's owner must not hand some other process's pipe to
    a log, nor a log's input to a service.
    """
    from prefork.control.engine import reopen_pipe, running_in

    for path, fd in ((name, 1), (f"{name}/log", 0)):
        found = running_in(path)
        if found is None:
            continue
        pidfd = found[4]
        try:
            pipe = reopen_pipe(found[0], fd, pidfd)
        finally:
            os.close(pidfd)
        if pipe is not None:
            return pipe
    return None


def parse(args: list[str]) -> tuple[Settings, list[str]]:
    """The options (:class:`Settings`: each value of the type its converter or default gives) and the operands."""
    from prefork.options import Option, command_line, seconds

    options = [
        Option("--max-services", "max", metavar="N", convert=_max_services),
        Option("--stop-services", "stop"),
        Option("--grace", "grace", metavar="SECONDS", convert=seconds()),
        Option("--subreaper", "subreaper"),
        Option("--runit", "mode", value="runit"),
        Option("--s6", "mode", value="s6"),
        Option("--table", "table", metavar="PATH"),
        Option("--table-group", "table_group", metavar="GROUP", convert=_group),
        Option("--metrics", "metrics", metavar="HOST:PORT", convert=_metrics_address),
        Option("--metrics-textfile", "textfile", metavar="PATH", convert=_textfile),
        Option("--metrics-user", "metrics_user", metavar="USER", convert=_metrics_user),
    ]
    defaults: dict[str, object] = {"max": 1000, "stop": False, "grace": 10.0, "subreaper": False,
                                   "mode": "daemontools"}
    values, operands = command_line(args, USAGE, HELP, options, letters=False, defaults=defaults)
    # runsvdir's command line after --runit: [-P] dir.  Without --runit, "-P" is a directory, as for 0.76.
    values["new_session"] = bool(values["mode"] == "runit" and operands[:1] == ["-P"])
    if values["new_session"]:
        operands.pop(0)
    return values, operands  # type: ignore[return-value]  # a dict whose value types the Options above fix


# Converters of parse(): a ValueError's text follows "svscan: bad value for --NAME: ".
def _max_services(word: str) -> int:
    if not (word.isascii() and word.isdigit()) or int(word) < 1:  # no service at all is garbage
        raise ValueError(repr(word))
    return int(word)




def _metrics_address(word: str) -> str:
    """--metrics HOST:PORT, read as prefork-exporter reads it."""
    from prefork.exporter_child import format_address, parse_address

    return format_address(*parse_address(word))


def _textfile(word: str) -> str:
    if not word:
        raise ValueError("empty path")
    return os.path.abspath(word)  # relative to where svscan was started, not to DIR


def _group(word: str) -> int:
    """--table-group's gid: a group name or number."""
    if word.isascii() and word.isdigit():
        if int(word) >= 1 << 32:
            raise ValueError(repr(word))
        return int(word)
    import grp

    try:
        return grp.getgrnam(word).gr_gid
    except (KeyError, ValueError):
        raise ValueError(repr(word)) from None


def _metrics_user(word: str) -> str:
    """--metrics-user: an account that resolves (a name, or UID:GID)."""
    from prefork.exporter_child import resolve_user

    try:
        resolve_user(word)
    except ValueError:
        raise ValueError(repr(word)) from None
    return word


def _show_log(engine: Engine, log: str) -> None:
    """--runit DIR LOG: runsvdir's log argument; standard error of svscan and the services scrolls through it."""
    from prefork.control import proctitle
    from prefork.djb import warn

    try:
        title = proctitle.Title(os.fsencode(log))
    except ValueError as err:
        warn(PROG, f"{err}; log disabled")  # runsvdir too goes on without it
        return
    except OSError as err:
        warn(PROG, "unable to find the log in the command line; log disabled", err)
        return
    read_end, engine.stderr = proctitle.redirect_stderr()

    def drain() -> None:
        try:
            while data := os.read(read_end, 4096):
                title.feed(data)
        except BlockingIOError:
            pass

    def dot() -> None:
        """runsvdir's dot every 15 minutes, so that old messages scroll away."""
        try:
            os.write(2, b".")
        except OSError:
            pass  # the pipe is full: the messages are moving anyway
        engine.call_at(engine.monotonic() + proctitle.DOT_EVERY, None, dot)

    engine.watch(read_end, drain)
    engine.call_at(engine.monotonic() + proctitle.DOT_EVERY, None, dot)


def _leave_on(engine: Engine, table: ServiceTable, signum: int) -> None:
    """Without --stop-services, SIGTERM and SIGINT kill svscan as they kill 0.76's: remove the table first."""

    def leave() -> None:
        table.close(unlink=True)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    engine.handle_signal(signum, leave)


def _start_exporter(engine: Engine, opts: Settings, source: str) -> Exporter:
    """Run prefork-exporter on SOURCE (the tree, or its --table); restart it on the engine's timers when it exits."""
    from prefork.djb import warn
    from prefork.exporter_child import Exporter, exporter_args, metrics_listener

    address = opts["metrics"]
    listen = None if address is None else metrics_listener(address, lambda text, err: warn(PROG, text, err))
    args = exporter_args(["--services", source], os.getpid(), listen, opts["textfile"], opts["metrics_user"])
    from prefork.spawn import signals_to_reset

    exporter = Exporter(PROG, args, engine.env, signals_to_reset(always=()),
                        listener=listen)

    def restart() -> None:
        if exporter.due is not None:
            exporter.start_if_due(engine.monotonic())
            if exporter.due is not None:  # it could not even be started
                engine.call_at(exporter.due, None, restart)

    def reaped(pid: int, status: int) -> None:
        if pid == exporter.pid:
            exporter.exited(status)
            assert exporter.due is not None  # for mypy: exited() sets the restart time
            engine.call_at(exporter.due, None, restart)

    engine.on_other_child = reaped
    exporter.start()
    if exporter.due is not None:
        engine.call_at(exporter.due, None, restart)
    return exporter


def _set_subreaper() -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
        raise OSError(ctypes.get_errno(), "prctl")


def _raise_fd_limit(services: int) -> None:
    """Make room for --max-services pairs: each service's descriptors, twice (NAME and NAME/log), and the pipe."""
    import resource

    from prefork.control.servicedir import ServiceDir

    # The service directory's (dir, supervise/, lock, control, ok), and the pidfd of an adopted service.
    per_service = sum(1 for slot in ServiceDir.__slots__ if slot.endswith("fd")) + 1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = services * (2 * per_service + 2) + 64
    if soft != resource.RLIM_INFINITY and soft < need:
        new = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        except (OSError, ValueError):
            pass


def main(argv: list[str] | None = None) -> None:
    import fcntl

    from prefork.djb import fatal, warn

    opts, operands = parse(list(sys.argv[1:] if argv is None else argv))
    if argv is None:
        from prefork.lean import go_lean

        go_lean("svscan", "prefork.control.svscan")
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if operands:
        try:
            os.chdir(operands[0])
        except OSError as err:
            fatal(PROG, f"unable to chdir to {operands[0]}", err)
    directory = os.getcwd()
    # Two prefork svscans on one tree would fight over every service: the second one stops here.
    home = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(home, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        fatal(PROG, f"unable to lock {directory}", err)
    if opts["subreaper"] and os.getpid() != 1:
        try:
            _set_subreaper()
        except OSError as err:
            fatal(PROG, "unable to become a subreaper", err)
    max_services = opts["max"]
    _raise_fd_limit(max_services)

    from prefork.control import servicetable
    from prefork.control.engine import Engine

    table = None
    table_path = opts["table"]
    group = opts["table_group"]
    try:
        default = servicetable.default_path(".", servicetable.KIND_SVSCAN)
        if table_path:
            servicetable.remove_stale(default)  # a killed svscan's table that nothing would replace
        path = str(table_path or default)
        capacity = min(servicetable.MAX_CAPACITY, max(2, 2 * max_services))  # more services go unpublished
        table = servicetable.ServiceTable.create(path, capacity, servicetable.KIND_SVSCAN, directory,
                                                 0o600 if group is None else 0o640, group)
    except OSError as err:
        warn(PROG, "unable to create the service table", err)
    runit = opts["mode"] == "runit"
    engine = Engine(mode=opts["mode"], table=table, prog=PROG, new_session=opts["new_session"])
    scanner = Scanner(engine, max_services, runit=runit)
    if runit and len(operands) > 1:
        _show_log(engine, operands[1])

    def rescan() -> None:
        scanner.scan()
        engine.call_at(engine.monotonic() + RESCAN, None, rescan)

    def rescan_now() -> None:
        scanner.scan()

    engine.handle_signal(signal.SIGHUP, rescan_now)
    engine.handle_signal(signal.SIGALRM, rescan_now)
    if opts["stop"]:
        grace = opts["grace"]
        engine.handle_signal(signal.SIGTERM, lambda: scanner.stop_all(grace))
        engine.handle_signal(signal.SIGINT, lambda: scanner.stop_all(grace))
    elif table is not None and not table_path and os.getpid() != 1:  # PID 1 would not die of its own signal
        _leave_on(engine, table, signal.SIGTERM)
        _leave_on(engine, table, signal.SIGINT)
    exporter = None
    if opts["metrics"] is not None or opts["textfile"] is not None:
        exporter = _start_exporter(engine, opts, os.path.abspath(str(table_path)) if table_path else directory)
    rescan()
    engine.run(until_idle=False)
    if exporter is not None:
        exporter.stop()
    if table is not None and not table_path:
        table.close(unlink=True)
    raise SystemExit(0)
