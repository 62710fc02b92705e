"""Prometheus families built at scrape time from prefork's shared memory.

One custom prometheus_client collector reads, on every scrape, the tcpserver
scoreboards (layout: ``prefork/scoreboard.py``), the supervisors' service
tables (layout: ``control/servicetable.py``) and the counter blocks of
multilog directories that asked for them with the script word ``M``
(layout: ``control/log/logcounters.py``; given with ``--multilog``, or found as
the log services of a ``--services`` tree) and turns them into families.
Nothing is kept between scrapes except what a fault report needs, so a scrape
costs the same whether one worker or a million have lived: the counters are
cumulative in the shared memory itself (a slot's counters survive its
worker's death, the master keeps the counts of orphaned programs), and there
is no prometheus multiprocess directory.

Families (``service`` is the scoreboard's ``--name``, else ``HOST:PORT``;
supervise's ``service`` is the name svscan shows, ``NAME`` or ``NAME/log`` as
``svstat`` prints it, and ``directory`` is the supervised directory, so two
``--services`` trees never collide; multilog's ``directory`` is the log
directory's absolute path as multilog saw it)::

    tcpserver_connections_accepted_total{service}   every accepted connection (denied and dropped included)
    tcpserver_connections_denied_total{service}     refused by the rules
    tcpserver_connections_dropped_total{service}    rules unreadable, program could not start, banner failed
    tcpserver_connections_limited_total{service,limit}  refused by a per-client limit: MAXCONNIP | MAXCONNC | MAXLOAD
    tcpserver_connections_active{service}           programs running, those of dead workers included
    tcpserver_connections_limit{service}            -c
    tcpserver_orphan_connections{service}           programs still running whose worker died
    tcpserver_program_exits_total{service,exit}     exit="zero" | "nonzero" | "signal", orphans included
    tcpserver_connection_duration_seconds{service}  histogram, the scoreboard's buckets, orphans included
    tcpserver_workers{service}                      worker slots (--workers)
    tcpserver_workers_alive{service}                slots with a live worker
    tcpserver_worker_restarts_total{service}
    tcpserver_start_time_seconds{service}
    tcpserver_last_accept_time_seconds{service}     0 before the first connection
    supervise_up{directory,service}                 1 while ./run is running (stopping included)
    supervise_want_up / supervise_paused / supervise_normally_up{directory,service}   0/1
    supervise_state_since_seconds{directory,service} unix time of the last state change
    supervise_starts_total / supervise_restarts_total{directory,service}
    supervise_last_exit_status{directory,service}   exit code, or 128 + signal (the shell's $?); absent before
    supervise_last_exit_signal{directory,service}   the signal that killed it, 0 if it exited; absent before
    supervise_ready{directory,service}              1 while running and ready (its notification-fd newline came)
    supervise_time_to_ready_seconds{directory,service}  from the last start to readiness; absent while not ready
    supervise_failed{directory,service}             1 when the restart policy gave up (failure-deaths)
    supervise_backoff_seconds{directory,service}    the restart policy's last back-off delay (backoff-max)
    supervise_finish_failures_total{directory,service}   ./finish runs that failed
    supervise_kill_escalations_total{directory,service}  SIGKILLs sent by timeout-kill
    svscan_services{directory} / svscan_scans_total / svscan_scan_errors_total / svscan_start_time_seconds
    multilog_lines_total{directory}                 lines written to current
    multilog_bytes_total{directory}                 bytes written to current
    multilog_rotations_total{directory}             full currents made old files (@...s)
    multilog_processor_failures_total{directory,exit}  processor runs that failed: exit="nonzero" | "signal"
    multilog_paused_seconds_total{directory}        time paused (5 s each) after disk or processor failures
    multilog_write_errors_total{directory}          failed system calls on the directory (each one a pause)
    multilog_start_time_seconds{directory}          when this multilog published its counters, unix time
    prefork_exporter_source_up{kind,path}           1 if the source was served on this scrape
    prefork_exporter_source_errors_total{kind,path} scrapes on which it could not be (since the exporter started)

Faults (a file missing, unreadable, truncated, of another layout version, a
second source with the same ``service`` name or log ``directory``, a server,
supervisor or multilog that is not running any more, a log directory whose
multilog does not publish counters): the source's families are left out of the scrape
(never served as if live: Prometheus then ends those series), its
``source_up`` is 0, its ``source_errors_total`` grows, and one line is
logged when its state changes (not on every scrape).  A server counts as
not running when its pid is gone or a zombie, or when the pid now belongs
to a process that started at another time than the one seen before (pid
reuse, noticed from the second scrape on; the first sighting trusts the pid,
as ``svstat --all`` does).  The exporter must share the servers' pid
namespace.

The families are built as plain data (:class:`Family`), then either turned
into prometheus_client metrics (``collect()``, for any prometheus_client
registry) or rendered straight to the text format (``render()``, what
``prefork-exporter`` serves without importing prometheus_client, which would
double its size).  prometheus_client is imported only by ``collect()``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Sequence

from prefork import proc, shmfile
from prefork import scoreboard_read as boards
from prefork.control import servicetable_read as tables
from prefork.control.log import logcounters_read as logs
from prefork.djb import errstr, write_line
from prefork.scoreboard import DURATION_BUCKETS, LIMIT_KINDS
from prefork.scoreboard_read import LIVE_STATES, service_name  # noqa: F401 (LIVE_STATES: re-exported)

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing the collector does not import typing
if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

PROG = "prefork-exporter"
NS = 1e9
INF = float("inf")


class SourceFault(Exception):
    """A source cannot be served this scrape; the message is the one-line reason."""


# -- is the writer still there? ---------------------------------------------------------------
class Liveness:
    """Remembers each writer's start time, so a pid taken over by another process reads as dead."""

    def __init__(self) -> None:
        self._seen: dict[tuple[int, int], int] = {}

    def check(self, pid: int, start_ns: int, recorded: int = 0) -> str | None:
        """None if the writer (PID, which made the file at START_NS) is running, else why not.

        RECORDED is the writer's start time in clock ticks as the file itself says (a service table does;
        0 if unknown): a pid running a process started at another time is another process, from the first
        look on.  Without it the first sighting trusts the pid, later ones compare with it.
        """
        ticks = proc.start_ticks(pid)
        key = (pid, start_ns)
        if ticks is None:
            self._seen.pop(key, None)
            return f"pid {pid} is not running"
        if not proc.same_start(self._seen.setdefault(key, recorded or ticks), ticks):
            return f"pid {pid} is not running (now another process)"
        return None

    def forget(self, keep: Iterable[tuple[int, int]]) -> None:
        """Drop what is known of writers that are not among KEEP (bounds the memory)."""
        keep = set(keep)
        for key in [k for k in self._seen if k not in keep]:
            del self._seen[key]


def supervised_name(snap: tables.Snapshot, entry: tables.Entry) -> str:
    """NAME or NAME/log as svscan names them; a lone supervise's entry is named after its directory."""
    if snap.kind != tables.KIND_SUPERVISE:
        return entry.name
    path = snap.directory.rstrip("/")
    base = os.path.basename(path) or path
    if base == "log":
        return f"{os.path.basename(os.path.dirname(path))}/log"
    return base


def exit_status(raw: int) -> tuple[int, int] | None:
    """(status as the shell's $? shows it, signal or 0) of a raw wait status; None if there is none (or RAW is
    no 16-bit wait status)."""
    if not 0 <= raw <= 0xFFFF:
        return None
    if os.WIFSIGNALED(raw):
        sig = os.WTERMSIG(raw)
        return 128 + sig, sig
    if os.WIFEXITED(raw):
        return os.WEXITSTATUS(raw), 0
    return raw, 0


# -- reading the sources ----------------------------------------------------------------------
def read_scoreboard(path: str, liveness: Liveness, fd: int | None = None) -> boards.Snapshot:
    """The scoreboard at PATH (read through FD if given) if its server is running; SourceFault otherwise."""
    try:
        snap = boards.read(path, fd)
    except OSError as e:
        raise SourceFault(errstr(e)) from None
    except boards.ScoreboardError as e:
        raise SourceFault(str(e)) from None
    dead = liveness.check(snap.master_pid, snap.start_ns)
    if dead:
        raise SourceFault(f"server {dead}")
    return snap


def table_candidates(arg: str) -> list[str]:
    """Table files for a --services argument: a directory's svscan then supervise table, or a table file itself."""
    try:
        if not os.path.isdir(arg) and os.path.exists(arg):
            return [arg]
        return [p for p in tables.paths(arg) if os.path.exists(p)]
    except OSError as e:
        raise SourceFault(errstr(e)) from None


def read_services(arg: str, liveness: Liveness, pinned: Sequence[tuple[str, int]] | None = None) -> tables.Snapshot:
    """The table of the supervisor running for ARG (a directory, or a table file); SourceFault otherwise.

    PINNED, (path, descriptor) pairs opened earlier, are read instead of looking for the tables now.
    """
    candidates = [(p, None) for p in table_candidates(arg)] if pinned is None else list(pinned)
    if not candidates:
        raise SourceFault("no prefork svscan or supervise has a table for it")
    fault = None
    for path, fd in candidates:
        try:
            snap = tables.read(path, fd)
        except tables.ServiceTableError as e:
            fault = fault or SourceFault(str(e))
            continue
        dead = liveness.check(snap.owner_pid, snap.start_ns, snap.owner_ticks)
        if dead is None:
            return snap
        fault = fault or SourceFault(f"{snap.kind_name} {dead}")
    assert fault is not None
    raise fault


def read_multilog(arg: str, liveness: Liveness, pinned: tuple[str, int] | None = None) -> logs.Snapshot:
    """The counters of the multilog running for ARG (a log directory, or a block file); SourceFault otherwise.

    PINNED, the block's (path, descriptor) opened earlier, is read instead of looking for it now.
    """
    try:
        snap = logs.read(*pinned) if pinned is not None else logs.read(logs.find(arg))
    except logs.LogCountersError as e:
        raise SourceFault(str(e)) from None
    dead = liveness.check(snap.pid, snap.start_ns)
    if dead:
        raise SourceFault(f"multilog {dead}")
    return snap


# -- the collector ----------------------------------------------------------------------------
class Source:
    """One --scoreboard, --services or --multilog argument and what the fault reports need of it."""

    __slots__ = ("kind", "path", "fault", "errors", "seen", "pinned")

    def __init__(self, kind: str, path: str) -> None:
        self.kind = kind  # "scoreboard", "services" or "multilog"
        self.path = path
        self.fault: str | None = None  # the reason last logged; None while it is served
        self.errors = 0
        self.seen = False
        self.pinned: list[tuple[str, int]] | None = None  # (file, descriptor) pairs opened by pin()

    def pin(self) -> None:
        """Open the source's files now and read them through these descriptors from then on (see
        :meth:`SharedMemoryCollector.pin`); a file that cannot be opened now is left to be read by path."""
        try:
            if self.kind == "scoreboard":
                paths = [self.path]
            elif self.kind == "services":
                paths = table_candidates(self.path)
            else:
                paths = [logs.find(self.path)]
        except (SourceFault, logs.LogCountersError):
            return
        pinned = []
        for path in paths:
            try:
                pinned.append((path, shmfile.open_source(path)))
            except OSError:
                pass
        if pinned:
            self.pinned = pinned


class SharedMemoryCollector:
    """A prometheus_client custom collector (``collect()`` builds every family at scrape time).

    LOG gets one line per state change of a source.  Thread-safe: the HTTP
    server may scrape from several threads at once.
    """

    def __init__(
        self,
        scoreboards: Sequence[str] = (),
        services: Sequence[str] = (),
        log: Callable[[str], None] = write_line,
        prog: str = PROG,
        multilogs: Sequence[str] = (),
    ) -> None:
        self.sources = ([Source("scoreboard", p) for p in scoreboards] + [Source("services", d) for d in services]
                        + [Source("multilog", d) for d in multilogs])
        self.log = log
        self.prog = prog
        self.liveness = Liveness()
        self._lock = threading.Lock()

    def describe(self) -> list[object]:
        """Nothing up front: registering must not read the sources (and log) before the first scrape."""
        return []

    def pin(self) -> None:
        """Open every source's files now and read them through these descriptors on every scrape.

        For an exporter that gives up its privileges (``prefork-exporter
        --user``): it opens the 0600 service table and the scoreboard while it
        still may, then reads them through the descriptors it kept.  A server
        never re-creates these files while it runs (the exporter it starts
        dies with it), so the descriptors stay right.  multilog counter blocks
        found through a tree's log services are still looked up on every
        scrape: they are readable by all (0644).
        """
        for source in self.sources:
            source.pin()

    def _report(self, source: Source, fault: str | None) -> None:
        """Log a source's state change, once."""
        if fault is not None:
            source.errors += 1
        if fault != source.fault and (fault is not None or source.seen):
            if fault is None:
                self.log(f"{self.prog}: {source.kind} {source.path}: ok")
            else:  # one line, whatever a file put in the reason (a service name, a directory)
                self.log(f"{self.prog}: warning: {source.kind} {source.path}: {shmfile.printable(fault)}")
        source.fault = fault
        source.seen = True

    def read(self) -> tuple[list[tuple[str, boards.Snapshot]], list[tables.Snapshot], list[logs.Snapshot]]:
        """Read every source once, update the fault reports; (service, scoreboard) pairs, tables, log counters."""
        served_boards: list[tuple[str, boards.Snapshot]] = []
        served_tables: list[tables.Snapshot] = []
        served_logs: list[logs.Snapshot] = []
        names: dict[str, str] = {}
        table_paths: dict[object, str] = {}
        log_blocks: dict[object, str] = {}
        log_dirs: dict[str, str] = {}
        writers: list[tuple[int, int]] = []
        for source in self.sources:
            fault = None
            try:
                if source.kind == "scoreboard":
                    fd = None if source.pinned is None else source.pinned[0][1]
                    snap = read_scoreboard(source.path, self.liveness, fd)
                    writers.append((snap.master_pid, snap.start_ns))
                    name = service_name(snap)
                    if name in names:
                        raise SourceFault(f"service {name} is already served from {names[name]}")
                    names[name] = source.path
                    served_boards.append((name, snap))
                elif source.kind == "services":
                    table = read_services(source.path, self.liveness, source.pinned)
                    writers.append((table.owner_pid, table.start_ns))
                    identity = _identity(table.path)
                    if identity in table_paths:
                        raise SourceFault(f"its table {table.path} is already served for {table_paths[identity]}")
                    table_paths[identity] = source.path
                    served_tables.append(table)
                else:
                    counters = read_multilog(source.path, self.liveness,
                                             None if source.pinned is None else source.pinned[0])
                    writers.append((counters.pid, counters.start_ns))
                    identity = _identity(counters.path)
                    if identity in log_blocks:
                        raise SourceFault(f"its counters {counters.path} are already served for {log_blocks[identity]}")
                    if counters.directory in log_dirs:
                        raise SourceFault(f"directory {counters.directory} is already served from"
                                          f" {log_dirs[counters.directory]}")
                    log_blocks[identity] = log_dirs[counters.directory] = source.path
                    served_logs.append(counters)
            except SourceFault as e:
                fault = str(e)
            except Exception as e:  # a reader bug must cost one source, never the scrape
                fault = f"unexpected error: {type(e).__name__}: {e}"
            self._report(source, fault)
        served_logs += self._tree_logs(served_tables, log_blocks, log_dirs, writers)
        self.liveness.forget(writers)
        return served_boards, served_tables, served_logs

    def _tree_logs(self, served_tables: list[tables.Snapshot], log_blocks: dict[object, str],
                   log_dirs: dict[str, str], writers: list[tuple[int, int]]) -> list[logs.Snapshot]:
        """The counters of the multilogs that are the log services of the served trees.

        A log service whose ``log/run`` execs ``multilog ... M dir`` has the
        pid that multilog writes into its block, so ``--services`` (and
        ``svscan --metrics``) serves those without a ``--multilog`` for each.
        A block that cannot be read, or whose writer is gone, is left out, and
        so is one whose file does not belong to the user a log service runs as:
        anyone can plant a block in /dev/shm naming a log service's pid.
        """
        pids = {e.pid for table in served_tables for e in table.entries if e.flags & tables.FLAG_LOG and e.pid}
        if not pids:
            return []
        owners = {uid for uid in map(proc.euid, pids) if uid is not None}
        found = []
        for path in logs.every_block():
            try:
                if os.stat(path, follow_symlinks=False).st_uid not in owners:
                    continue
                snap = logs.read(path)
            except (OSError, logs.LogCountersError):
                continue
            if snap.pid not in pids or snap.directory in log_dirs:
                continue
            identity = _identity(path)
            if identity in log_blocks or self.liveness.check(snap.pid, snap.start_ns) is not None:
                continue
            writers.append((snap.pid, snap.start_ns))
            log_blocks[identity] = log_dirs[snap.directory] = path
            found.append(snap)
        return found

    def families(self) -> list[Family]:
        """Every family, read from the shared memory now."""
        with self._lock:
            served_boards, served_tables, served_logs = self.read()
            sources = [(s.kind, s.path, s.fault is None, s.errors) for s in self.sources]
        return build_families(served_boards, served_tables, sources, served_logs)

    def collect(self) -> Iterable[object]:
        """prometheus_client's entry point: the families as its Metric objects."""
        return to_prometheus(self.families())

    def render(self) -> bytes:
        """One scrape in the text format, without prometheus_client (what the exporter serves)."""
        return render_text(self.families())


def _identity(path: str) -> object:
    """(device, inode) of PATH, to tell one file given twice; the path itself if it has been replaced since."""
    try:
        st = os.stat(path)
    except OSError:  # replaced since: what we read is still a file of its own
        return path
    return (st.st_dev, st.st_ino)


class Family:
    """One metric family as data: what both the text renderer and the prometheus_client collector are made from.

    KIND is "counter", "gauge" or "histogram"; a counter's NAME has no ``_total``
    (its samples have), as in prometheus_client.  SAMPLES are (sample name,
    ((label, value), ...), value).
    """

    __slots__ = ("name", "kind", "help", "samples")

    def __init__(self, name: str, kind: str, help: str) -> None:
        self.name = name
        self.kind = kind
        self.help = help
        self.samples: list[tuple[str, tuple[tuple[str, str], ...], float]] = []

    def add(self, labels: tuple[tuple[str, str], ...], value: float) -> None:
        self.samples.append((self.name + "_total" if self.kind == "counter" else self.name, labels, value))

    def add_histogram(
        self, labels: tuple[tuple[str, str], ...], cumulative: Sequence[tuple[str, int]], sum_value: float
    ) -> None:
        """CUMULATIVE are (le, count) pairs ending with +Inf."""
        for le, count in cumulative:
            self.samples.append((self.name + "_bucket", (*labels, ("le", le)), count))
        self.samples.append((self.name + "_count", labels, cumulative[-1][1] if cumulative else 0))
        self.samples.append((self.name + "_sum", labels, sum_value))


def label(value: str) -> str:
    """A label value that encodes as UTF-8: raw bytes of a name (surrogateescape) become U+FFFD."""
    if value.isascii():
        return value
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def go_float(value: float) -> str:
    """A sample value as the text format writes it (prometheus_client's floatToGoString: Go's formatting)."""
    d = float(value)
    if d == INF:
        return "+Inf"
    if d == -INF:
        return "-Inf"
    if d != d:
        return "NaN"
    s = repr(d)
    dot = s.find(".")
    if d > 0 and dot > 6:  # Go switches to exponents sooner than Python
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return s


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render_text(families: Iterable[Family]) -> bytes:
    """The text exposition format 0.0.4, byte for byte what prometheus_client's generate_latest writes for them."""
    out: list[str] = []
    for f in families:
        name = f.name + "_total" if f.kind == "counter" else f.name
        out.append(f"# HELP {name} {_escape_help(f.help)}\n# TYPE {name} {f.kind}\n")
        for sample, labels, value in f.samples:
            if labels:
                text = ",".join(f'{k}="{_escape_label(v)}"' for k, v in sorted(labels))
                out.append(f"{sample}{{{text}}} {go_float(value)}\n")
            else:
                out.append(f"{sample} {go_float(value)}\n")
    return "".join(out).encode("utf-8")


def to_prometheus(families: Iterable[Family]) -> list[Metric]:
    """prometheus_client Metric objects for FAMILIES."""
    from prometheus_client.metrics_core import Metric

    metrics = []
    for f in families:
        m = Metric(f.name, f.help, f.kind)
        for sample, labels, value in f.samples:
            m.add_sample(sample, dict(labels), value)
        metrics.append(m)
    return metrics


def bucket_bounds() -> list[str]:
    """The le labels of the scoreboard's duration buckets."""
    return [go_float(b) for b in DURATION_BUCKETS]


def build_families(
    served_boards: Sequence[tuple[str, boards.Snapshot]],
    served_tables: Sequence[tables.Snapshot],
    sources: Sequence[tuple[str, str, bool, int]] = (),
    served_logs: Sequence[logs.Snapshot] = (),
) -> list[Family]:
    """The families for these snapshots; SOURCES are (kind, path, up, errors) for the exporter's own families."""
    s = "service"
    accepted = Family("tcpserver_connections_accepted", "counter", "Connections accepted (denied and dropped included).")
    denied = Family("tcpserver_connections_denied", "counter", "Connections refused by the rules (-x).")
    dropped = Family("tcpserver_connections_dropped", "counter",
                     "Connections dropped: rules unreadable, program not started, banner failed.")
    limited = Family("tcpserver_connections_limited", "counter",
                     "Connections refused by a per-client limit (MAXCONNIP, MAXCONNC, MAXLOAD).")
    active = Family("tcpserver_connections_active", "gauge", "Programs running now, those of dead workers included.")
    limit = Family("tcpserver_connections_limit", "gauge", "The connection limit (-c).")
    orphans = Family("tcpserver_orphan_connections", "gauge", "Programs still running whose worker died.")
    exits = Family("tcpserver_program_exits", "counter",
                   "Programs that ended, by how: exit 0, exit non-zero, killed by a signal.")
    duration = Family("tcpserver_connection_duration_seconds", "histogram", "Time from accept to the program's exit.")
    workers = Family("tcpserver_workers", "gauge", "Worker slots (--workers).")
    alive = Family("tcpserver_workers_alive", "gauge", "Worker slots with a live worker.")
    restarts = Family("tcpserver_worker_restarts", "counter", "Workers started again after one died.")
    started = Family("tcpserver_start_time_seconds", "gauge", "When the server started, unix time.")
    last_accept = Family("tcpserver_last_accept_time_seconds", "gauge",
                         "When a connection was last accepted, unix time (0: never).")
    bounds = bucket_bounds()
    for name, snap in served_boards:
        labels: tuple[tuple[str, str], ...] = ((s, label(name)),)
        slots = snap.slots
        accepted.add(labels, sum(x.accepted for x in slots))
        denied.add(labels, sum(x.denied for x in slots))
        dropped.add(labels, sum(x.dropped for x in slots))
        for k, kind in enumerate(LIMIT_KINDS):
            limited.add((*labels, ("limit", kind)), sum(x.limited[k] for x in slots))
        active.add(labels, snap.active)
        limit.add(labels, snap.limit)
        orphans.add(labels, snap.orphans)
        exits.add((*labels, ("exit", "zero")), sum(x.exit_zero for x in slots) + snap.orphan_exit_zero)
        exits.add((*labels, ("exit", "nonzero")), sum(x.exit_nonzero for x in slots) + snap.orphan_exit_nonzero)
        exits.add((*labels, ("exit", "signal")), sum(x.exit_signal for x in slots) + snap.orphan_exit_signal)
        counts = list(snap.orphan_duration_buckets)
        total_ns = snap.orphan_duration_sum_ns
        for x in slots:
            total_ns += x.duration_sum_ns
            for i, c in enumerate(x.duration_buckets):
                counts[i] += c
        cumulative, running = [], 0
        for bound, c in zip(bounds, counts, strict=True):
            running += c
            cumulative.append((bound, running))
        duration.add_histogram(labels, cumulative, total_ns / NS)
        workers.add(labels, len(slots))
        alive.add(labels, sum(1 for x in slots if x.pid and x.state in LIVE_STATES))
        restarts.add(labels, snap.worker_restarts)
        started.add(labels, snap.start_ns / NS)
        last_accept.add(labels, max((x.last_accept_ns for x in slots), default=0) / NS)
    families = [accepted, denied, dropped, limited, active, limit, orphans, exits, duration, workers, alive, restarts,
                started, last_accept]

    up = Family("supervise_up", "gauge", "1 while the service's ./run is running.")
    want_up = Family("supervise_want_up", "gauge", "1 if the supervisor wants the service up (svc -u).")
    paused = Family("supervise_paused", "gauge", "1 if the service is paused (svc -p).")
    normally_up = Family("supervise_normally_up", "gauge", "1 unless the service directory has a down file.")
    since = Family("supervise_state_since_seconds", "gauge", "When the service last went up or down, unix time.")
    starts = Family("supervise_starts", "counter", "Times ./run was started.")
    srestarts = Family("supervise_restarts", "counter", "Starts made because the service exited while wanted up.")
    last_exit = Family("supervise_last_exit_status", "gauge",
                       "The last exit: its code, or 128 + the signal that killed it.")
    last_signal = Family("supervise_last_exit_signal", "gauge", "The signal that ended the last run, 0 if it exited.")
    ready = Family("supervise_ready", "gauge",
                   "1 while the service runs and is ready: it wrote the newline on its notification-fd.")
    to_ready = Family("supervise_time_to_ready_seconds", "gauge", "From the service's last start to its readiness.")
    failed = Family("supervise_failed", "gauge",
                    "1 when the restart policy gave up on the service (failure-deaths): svc -u restarts it.")
    backoff = Family("supervise_backoff_seconds", "gauge",
                     "The restart policy's last back-off delay (backoff-max), 0 without one.")
    finish_failures = Family("supervise_finish_failures", "counter",
                             "./finish runs that failed: killed (timeout-finish too), or an exit but 0 or 125.")
    kill_escalations = Family("supervise_kill_escalations", "counter",
                              "SIGKILLs timeout-kill sent to a service still running after its down signal.")
    services = Family("svscan_services", "gauge", "Service directories svscan supervises.")
    scans = Family("svscan_scans", "counter", "Scans of the directory.")
    scan_errors = Family("svscan_scan_errors", "counter",
                         "Scan problems: unreadable entries, services that could not start.")
    svscan_start = Family("svscan_start_time_seconds", "gauge", "When svscan started, unix time.")
    for table in served_tables:
        directory = ("directory", label(table.directory))
        for e in table.entries:
            labels = (directory, ("service", label(supervised_name(table, e))))
            up.add(labels, 1 if e.pid else 0)
            want_up.add(labels, 1 if e.want == b"u" else 0)
            paused.add(labels, 1 if e.paused else 0)
            normally_up.add(labels, 1 if e.flags & tables.FLAG_NORMALLY_UP else 0)
            since.add(labels, e.since_ns / NS)
            starts.add(labels, e.starts)
            srestarts.add(labels, e.restarts)
            status = exit_status(e.last_status)
            if status is not None:
                last_exit.add(labels, status[0])
                last_signal.add(labels, status[1])
            ready.add(labels, 1 if e.ready else 0)
            if e.ready:
                to_ready.add(labels, max(0, e.ready_ns - e.since_ns) / NS)
            failed.add(labels, 1 if e.flags & tables.FLAG_FAILED else 0)
            backoff.add(labels, e.backoff_ms / 1000)
            finish_failures.add(labels, e.finish_failures)
            kill_escalations.add(labels, e.kill_escalations)
        if table.kind == tables.KIND_SVSCAN:
            services.add((directory,), table.services)
            scans.add((directory,), table.scans)
            scan_errors.add((directory,), table.scan_errors)
            svscan_start.add((directory,), table.start_ns / NS)
    families += [up, want_up, paused, normally_up, since, starts, srestarts, last_exit, last_signal, ready, to_ready,
                 failed, backoff, finish_failures, kill_escalations, services, scans, scan_errors, svscan_start]

    lines = Family("multilog_lines", "counter", "Lines multilog wrote to the log directory's current.")
    nbytes = Family("multilog_bytes", "counter", "Bytes multilog wrote to the log directory's current.")
    rotations = Family("multilog_rotations", "counter", "Full currents made old files (@...s).")
    failures = Family("multilog_processor_failures", "counter",
                      "Processor runs that failed: exit non-zero, or killed by a signal.")
    paused_s = Family("multilog_paused_seconds", "counter",
                      "Time multilog spent paused after disk or processor failures, in seconds.")
    write_errors = Family("multilog_write_errors", "counter",
                          "Failed system calls on the log directory (disk full, I/O errors, ...), each one a pause.")
    log_start = Family("multilog_start_time_seconds", "gauge", "When this multilog published its counters, unix time.")
    for block in served_logs:  # not `c`, an int above: one name, one type
        labels = (("directory", label(block.directory)),)
        lines.add(labels, block.lines)
        nbytes.add(labels, block.bytes)
        rotations.add(labels, block.rotations)
        failures.add((*labels, ("exit", "nonzero")), block.processor_failures)
        failures.add((*labels, ("exit", "signal")), block.processor_crashes)
        paused_s.add(labels, block.paused_ns / NS)
        write_errors.add(labels, block.write_errors)
        log_start.add(labels, block.start_ns / NS)
    families += [lines, nbytes, rotations, failures, paused_s, write_errors, log_start]

    if sources:
        source_up = Family("prefork_exporter_source_up", "gauge", "1 if the source was read and served on this scrape.")
        source_errors = Family("prefork_exporter_source_errors", "counter",
                               "Scrapes on which the source could not be served.")
        for kind, path, ok, errors in sources:
            labels = (("kind", kind), ("path", label(path)))
            source_up.add(labels, 1 if ok else 0)
            source_errors.add(labels, errors)
        families += [source_up, source_errors]
    return families
