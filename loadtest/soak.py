"""Soak and fault run: prefork's tcpserver and svscan kept busy for a long time while their processes are SIGKILLed.

Two halves run side by side for ``--seconds`` (either can be left out with ``--phases``):

- connections (loadtest/soak_conns.py): prefork's ``tcpserver -v -H -R -l0 -c LIMIT --workers W`` with C
  clients keeping connections in flight; every ``--kill-every`` seconds a worker chosen at random (a child
  of the master, found through /proc) gets SIGKILL.  Checked: every connection made ended right, or was
  refused, or was dropped by a worker kill (accepted, its worker killed before the program started); the
  programs running never exceeded ``-c`` (sampled every 50 ms, and the ``status:`` lines); the ``-v`` log
  is balanced (each ``end PID`` after a ``pid PID``, each ``pid PID`` ended);
- supervised tree (loadtest/soak_tree.py): prefork's ``svscan --stop-services`` over S services that write
  numbered lines, each logged by prefork's ``multilog t``; at random times a service, a multilog or svscan
  itself is SIGKILLed (svscan is started again and takes the services over).  Checked: no gap, repeat or
  reordering within any run of any service once every log file is read back (lines a killed multilog had
  read but not written are counted apart), one instance per service at any time, a clean stop;

and, for both, once a second: open fds and RSS of the tcpserver master, its workers, svscan and the
multilogs (flat: last-quarter mean against first-quarter mean), zombies under them; after the stop: no
process of the run left, no /dev/shm file left.

Writes ``soak.json``, ``SOAK.md`` and ``soak.png`` (when matplotlib is installed: the ``bench`` extra)
to ``--out`` (default loadtest/results/soak-TIMESTAMP/); ``--publish`` also writes docs/SOAK.md and
docs/soak.png (loadtest/reporting.py, as every benchmark).
``--snapshot`` runs prefork's commands from a copy of the code taken at the start, so that edits made
to the checkout during a long run reach none of its processes (restarted ones included).
Exit status 0 when every check passed, 1 when one failed, 2 on bad options.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

from loadtest import soak_procs as procs
from loadtest import soak_report
from loadtest.machine import machine_facts
from loadtest.reporting import ROOT, Bench, log
from loadtest.reporting import reproduce_command as spelled_out
from loadtest.soak_conns import ConnConfig, ConnRig
from loadtest.soak_tree import TreeConfig, TreeRig

HERE = Path(__file__).resolve().parent
PHASES = ("conns", "tree")
FD_SLACK = 2.0  # fds per process the last quarter's mean may sit above the first's
RSS_RATIO, RSS_SLACK = 1.10, 2 * 2**20  # RSS per process: last quarter <= first x 1.10 + 2 MiB
ZOMBIE_SLACK = 2.0  # zombies at a sample: last quarter's mean <= first quarter's + 2
SOURCES = ("prefork", "control", "metrics")  # the code under test, fingerprinted at the start and at the end


def fingerprint() -> dict[str, tuple[int, int]]:
    """(mtime ns, size) of every source file of the code under test: what the run's processes execute."""
    out = {}
    for top in SOURCES:
        for path in sorted((HERE.parent / top).glob("*.py")):
            try:
                st = path.stat()
            except OSError:
                continue
            out[f"{top}/{path.name}"] = (st.st_mtime_ns, st.st_size)
    return out


WRAPPER = """#!{python}
# {name} from the soak's copy of the code (--snapshot): edits made during the run do not reach it.
import sys

sys.path.insert(0, {code!r})
from {module} import main

sys.exit(main())
"""
COMMANDS = {"tcpserver": "prefork.tcpserver_cli", "svscan": "prefork.control.svscan", "multilog": "prefork.control.log.multilog_cli"}


def snapshot(root: Path) -> Path:
    """Copy the code under test into ROOT/code and write ROOT/bin/{tcpserver,svscan,multilog} running that copy.

    The lean re-exec (prefork/lean.py) puts the directory of the ``prefork``
    package it was imported from first on the new interpreter's path, so the
    long-lived processes keep running the copy too.
    """
    code, bindir = root / "code", root / "bin"
    for top in SOURCES:
        shutil.copytree(HERE.parent / top, code / top, ignore=shutil.ignore_patterns("__pycache__"))
    bindir.mkdir()
    for name, module in COMMANDS.items():
        path = bindir / name
        path.write_text(WRAPPER.format(python=sys.executable, name=name, code=str(code), module=module))
        path.chmod(0o755)
    return bindir


def uncommitted() -> list[str]:
    """Source files of the code under test that differ from the commit (git status), [] if git cannot say."""
    import subprocess

    try:
        out = subprocess.run(["git", "-C", str(HERE.parent), "status", "--porcelain", "--", *SOURCES],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted(line[3:] for line in out.splitlines() if line.strip())


# -- options -------------------------------------------------------------------------------------
def positive(kind: type) -> object:
    def parse(text: str) -> object:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be above 0: {text!r}")
        return value

    return parse


def parse_phases(text: str) -> list[str]:
    phases = [p.strip() for p in text.split(",") if p.strip()]
    if not phases or any(p not in PHASES for p in phases):
        raise argparse.ArgumentTypeError(f"--phases wants a comma-separated subset of {','.join(PHASES)}")
    return [p for p in PHASES if p in phases]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m loadtest.soak", description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=positive(float), default=600.0, help="length of the run (default 600)")
    ap.add_argument("--clients", type=positive(int), default=30, help="client processes, one connection in "
                    "flight each (default 30)")
    ap.add_argument("--limit", type=positive(int), default=20, help="tcpserver -c (default 20)")
    ap.add_argument("--workers", type=positive(int), default=4, help="tcpserver --workers (default 4)")
    ap.add_argument("--hold-ms", type=float, default=100.0, help="a client waits this long after connecting "
                    "before it sends its number, so connections overlap and -c is reached (default 100)")
    ap.add_argument("--kill-every", type=positive(float), default=5.0, help="seconds between worker kills "
                    "(default 5)")
    ap.add_argument("--services", type=positive(int), default=4, help="logged services in the tree (default 4)")
    ap.add_argument("--fault-every", type=positive(float), default=3.0, help="mean seconds between tree faults "
                    "(default 3; each wait is 0.5-1.5 x this)")
    ap.add_argument("--line-interval", type=positive(float), default=0.01, help="seconds between a service's "
                    "lines (default 0.01)")
    ap.add_argument("--max-svscan-kills", type=int, default=None, help="at most this many svscan kills "
                    "(default: one per 20 s of run, at least 1)")
    ap.add_argument("--seed", type=int, default=1, help="seed of every random choice (default 1)")
    ap.add_argument("--phases", type=parse_phases, default=list(PHASES), help="conns,tree (default both)")
    ap.add_argument("--progress-every", type=positive(float), default=10.0, help="seconds between progress "
                    "lines (default 10)")
    ap.add_argument("--note", default="", help="a sentence for the report (the machine's state, say)")
    ap.add_argument("--snapshot", action="store_true", help="run prefork's commands from a copy of prefork/, "
                    "control/, metrics/ taken at the start (edits made during the run do not reach it)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (service logs, tcpserver log)")
    BENCH.add_options(ap)
    ap.add_argument("--workdir", default=None, help="make the work directory in this directory (default: $TMPDIR)")
    args = ap.parse_args(argv)
    if args.hold_ms < 0:
        ap.error("--hold-ms must be 0 or more")
    if args.max_svscan_kills is None:
        args.max_svscan_kills = max(1, int(args.seconds // 20))
    return args


def reproduce_command(args: argparse.Namespace) -> str:
    """Every setting spelled out, so the line reruns this exact soak even if defaults change."""
    parts = ["--seconds", f"{args.seconds:g}", "--clients",
             str(args.clients), "--limit", str(args.limit), "--workers", str(args.workers), "--hold-ms",
             f"{args.hold_ms:g}", "--kill-every", f"{args.kill_every:g}", "--services", str(args.services),
             "--fault-every", f"{args.fault_every:g}", "--line-interval", f"{args.line_interval:g}",
             "--max-svscan-kills", str(args.max_svscan_kills), "--seed", str(args.seed)]
    if args.phases != list(PHASES):
        parts += ["--phases", ",".join(args.phases)]
    if args.snapshot:
        parts.append("--snapshot")
    return spelled_out("loadtest.soak", parts, False)  # without --publish, as the published line always was


# -- the run -------------------------------------------------------------------------------------
class Soak:
    """Both halves, the samplers, the fault schedule and the clean-up; ``run()`` returns the figures."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.reaper = procs.Reaper()
        self.tag = uuid.uuid4().hex
        self.root = Path(tempfile.mkdtemp(prefix="prefork-soak-", dir=args.workdir))
        self.root.chmod(0o755)
        from prefork.environ import original_environ

        self.env = {**original_environ(), procs.TAG_VAR.encode(): self.tag.encode()}
        # The fingerprint first: with --snapshot, the copy is what it describes.
        self.code_before = fingerprint()
        self.uncommitted = uncommitted()
        bindir = snapshot(self.root) if args.snapshot else Path(sys.executable).parent
        self.conns: ConnRig | None = None
        self.tree: TreeRig | None = None
        if "conns" in args.phases:
            self.conns = ConnRig(ConnConfig(limit=args.limit, workers=args.workers, clients=args.clients,
                                            hold_ms=args.hold_ms, kill_every=args.kill_every),
                                 self.root, self.env, self.reaper, str(bindir / "tcpserver"))
        if "tree" in args.phases:
            self.tree = TreeRig(TreeConfig(services=args.services, fault_every=args.fault_every,
                                           line_interval=args.line_interval,
                                           max_svscan_kills=args.max_svscan_kills),
                                self.root, self.env, self.reaper, args.seconds, bindir)
        self.sampler: procs.ResourceSampler | None = None
        self.t0 = 0.0
        self.t0_wall = 0.0
        self.zombies_at_end: list[str] = []
        self.cleanup: dict = {}
        self.machine: dict = {}

    # -- what the samplers look at ----------------------------------------------------------------
    def groups(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        c, t = self.conns, self.tree
        if c is not None and c.proc is not None and c.proc.poll() is None:
            out["tcpserver master"] = [c.master]
            out["tcpserver workers"] = c.workers()
        if t is not None and t.svscan_alive() and not t.restarting:  # a starting svscan has not opened its services
            out["svscan"] = [t.svscan_pid]
            out["multilog"] = t.multilog_pids()
        return out

    def parents(self) -> dict[int, str]:
        """{pid: kind} of the processes whose zombie children are counted (the soak: a killed svscan's orphans)."""
        out = {os.getpid(): "soak"}
        c, t = self.conns, self.tree
        if c is not None and c.proc is not None and c.proc.poll() is None:
            out[c.master] = "tcpserver master"
            out.update(dict.fromkeys(c.workers(), "tcpserver worker"))
        if t is not None and t.svscan_alive():
            out[t.svscan_pid] = "svscan"
        return out

    def prefork_zombies(self) -> dict[int, str]:
        """Zombie children of the run's prefork processes (master, workers, svscan) right now."""
        found = {}
        for parent, kind in self.parents().items():
            if kind == "soak":
                continue
            for pid in procs.children(parent):
                st = procs.stat(pid)
                if st is not None and st[1] == "Z":
                    found[pid] = f"{st[0]} (pid {pid}, child of the {kind} {parent})"
        return found

    # -- the schedule ------------------------------------------------------------------------------
    def run(self) -> dict:
        args = self.args
        self.reaper.enable()
        self.machine = machine_facts()  # the load average at the start
        shm_before = procs.shm_names()
        c, t = self.conns, self.tree
        ran = False
        try:
            if t is not None:
                t.build()
                t.start_svscan()
                up = t.wait_up(30.0)
                log(f"soak: tree of {args.services} logged services under svscan pid {t.svscan_pid}, up in {up:.2f} s")
            if c is not None:
                c.start()
                log(f"soak: tcpserver pid {c.master} on 127.0.0.1:{c.port}, {len(c.workers())} workers, "
                    f"-c {args.limit}; {args.clients} clients")
                c.start_clients(args.seconds)  # forked before any thread of ours runs
            self.t0 = time.monotonic()
            self.t0_wall = time.time()
            self.sampler = procs.ResourceSampler(self.groups, self.parents, self.reaper, self.t0,
                                                 extra=t.count_instances if t is not None else None)
            if c is not None:
                c.go(self.t0)
            self.sampler.start()
            self.schedule()
            self.finish()
            ran = True
        finally:
            self.teardown(shm_before)
            if not ran and not self.args.keep:
                shutil.rmtree(self.root, ignore_errors=True)
        try:
            return self.figures()  # reads the logs in the work directory
        finally:
            if not self.args.keep:
                shutil.rmtree(self.root, ignore_errors=True)

    def schedule(self) -> None:
        args = self.args
        c, t = self.conns, self.tree
        worker_rng = random.Random(args.seed)
        fault_rng = random.Random(args.seed + 1)
        t0 = self.t0
        deadline = t0 + args.seconds
        next_kill = t0 + args.kill_every
        next_fault = t0 + args.fault_every * fault_rng.uniform(0.5, 1.5)
        next_progress = t0 + args.progress_every
        for _ in range(int(args.seconds / 0.02) + 10_000):
            now = time.monotonic()
            if now >= deadline:
                break
            if c is not None and now >= next_kill:
                if c.check_alive(now - t0):  # a master that died is a finding, not a reason to stop the run
                    c.kill_worker(worker_rng, now - t0)
                next_kill = max(next_kill + args.kill_every, now + 0.5 * args.kill_every)
            if t is not None and t.check_alive(now - t0) is not None:
                log(f"soak: svscan exited on its own (status {t.deaths[-1]['status']}); started a new one")
            # No fault in the last second: the tree must be whole when the run ends; an svscan kill
            # needs a few seconds, so none in the last five.
            if t is not None and now >= next_fault and now < deadline - 1.0:
                t.fault(fault_rng, now - t0, allow_svscan=now < deadline - 5.0)
                next_fault = time.monotonic() + args.fault_every * fault_rng.uniform(0.5, 1.5)
            if now >= next_progress:
                log(self.progress(now - t0))
                next_progress += args.progress_every
            wake = min(deadline, next_progress, next_kill if c is not None else deadline,
                       next_fault if t is not None else deadline)
            time.sleep(min(0.05, max(0.0, wake - time.monotonic())))
        log(self.progress(time.monotonic() - t0))

    def progress(self, elapsed: float) -> str:
        parts = [f"soak: {elapsed:5.0f}/{self.args.seconds:g} s"]
        c, t = self.conns, self.tree
        if c is not None:
            tot = c.totals()
            made = sum(tot.values())
            parts.append(f"{made:,} connections ({made - tot['ok']:,} not ok), {len(c.kills)} worker kills, "
                         f"programs max {c.max_programs}/{c.cfg.limit}")
        if t is not None:
            kinds = {k: sum(1 for f in t.faults if f["kind"] == k) for k in ("service", "multilog", "svscan")}
            parts.append("kills: " + ", ".join(f"{k} {v}" for k, v in kinds.items()))
        if self.sampler is not None and self.sampler.zombie_n:
            parts.append(f"zombies now {self.sampler.zombie_n[-1]}")
        return "; ".join(parts)

    def finish(self) -> None:
        """Clients done, programs drained, the tree whole; zombies that outlive a settle are leaks."""
        c, t = self.conns, self.tree
        if c is not None:
            res = c.collect_clients()
            if res["missing"]:
                log(f"soak: {res['missing']} clients did not report")
            if not c.drain(15.0):
                log(f"soak: {c.count_programs()} programs still running 15 s after the last client")
            c.stop_sampler()
        if c is not None:
            c.check_alive(time.monotonic() - self.t0)
        if t is not None:
            t.check_alive(time.monotonic() - self.t0)
            t.wait_up(30.0)
        seen: dict[int, str] | None = None
        for _ in range(3):  # present at three looks 0.5 s apart: not a zombie on its way to being reaped
            now = self.prefork_zombies()
            seen = now if seen is None else {pid: what for pid, what in seen.items() if pid in now}
            time.sleep(0.5)
        self.zombies_at_end = sorted((seen or {}).values())

    def teardown(self, shm_before: set[str]) -> None:
        """Stop everything by pid, whatever happened; then look for what is left and remove it."""
        c, t = self.conns, self.tree
        if self.sampler is not None:
            self.sampler.close()
        for rig in (c, t):
            if rig is None:
                continue
            try:
                rig.stop()
            except Exception as e:  # the other half must be stopped too
                log(f"soak: stopping {type(rig).__name__}: {e}")
        orphans_at_stop = self.reaper.reap()
        left: list[str] = []
        for _ in range(3):
            pids = procs.tagged_pids(self.tag)
            if not pids:
                break
            for pid in pids:
                st = procs.stat(pid)
                if len(left) < 20:
                    left.append(f"{st[0] if st else '?'} (pid {pid})")
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.5)
            self.reaper.reap()
        for _ in range(20):
            if not self.reaper.zombies():
                break
            self.reaper.reap()
            time.sleep(0.1)
        mine = []
        if c is not None and c.proc is not None:
            mine.append(os.path.basename(c.scoreboard))
        if t is not None and t.table:
            mine.append(os.path.basename(t.table))
        shm_left = [n for n in mine if n in procs.shm_names()]
        for name in shm_left:
            try:
                os.unlink(f"/dev/shm/{name}")
            except OSError:
                pass
        self.cleanup = {
            "processes_left": sorted(set(left)),
            "shm_files": mine,
            "shm_left": shm_left,
            "shm_new_prefork_files_anywhere": sorted(n for n in procs.shm_names() - shm_before
                                                     if n.startswith("prefork-")),
            "zombies_left": self.zombies_at_end,
            "orphans_reaped_at_stop": orphans_at_stop,
            "orphans_reaped_total": self.reaper.reaped,
            "subreaper": self.reaper.enabled,
            "work_dir": str(self.root) if self.args.keep else None,
        }

    # -- the figures -------------------------------------------------------------------------------
    def figures(self) -> dict:
        args = self.args
        data: dict = {
            "command": reproduce_command(args),
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": self.machine or machine_facts(),
            "note": args.note,
            "config": {k: getattr(args, k) for k in ("seconds", "clients", "limit", "workers", "hold_ms", "kill_every",
                                                      "services", "fault_every", "line_interval", "max_svscan_kills",
                                                      "seed", "phases")},
            "elapsed": round(time.monotonic() - self.t0, 3) if self.t0 else 0.0,
            "code": self.code(),
        }
        if self.conns is not None:
            data["connections"] = self.conns.results()
        if self.tree is not None:
            data["tree"] = self.tree.results(self.t0_wall)
        data["resources"] = self.resources()
        data["cleanup"] = self.cleanup
        data["checks"] = evaluate(data)
        data["ok"] = all(ch["ok"] for ch in data["checks"])
        data["load_average_end"] = os.getloadavg()
        return data

    def code(self) -> dict:
        """Which code ran: the commit, the files that differ from it, and any file changed while the run went on
        (a restarted svscan or a new worker may run other code than the processes started before it)."""
        after = fingerprint()
        changed = sorted(f for f in set(self.code_before) | set(after) if self.code_before.get(f) != after.get(f))
        return {"commit": self.machine.get("prefork_commit"), "uncommitted": self.uncommitted,
                "changed_during_run": changed, "snapshot": bool(self.args.snapshot)}

    def resources(self) -> dict:
        s = self.sampler
        if s is None:
            return {}
        groups = {name: procs.flatness(series, FD_SLACK, RSS_RATIO, RSS_SLACK) for name, series in s.series.items()}
        z0, z1 = procs.quarters([float(x) for x in s.zombie_n])
        return {
            "bounds": {"fd_slack": FD_SLACK, "rss_ratio": RSS_RATIO, "rss_slack": RSS_SLACK},
            "groups": groups,
            "zombies": {"samples": len(s.zombie_n), "max": max(s.zombie_n, default=0), "first_quarter_mean": round(z0, 3),
                        "last_quarter_mean": round(z1, 3), "flat": z1 <= z0 + ZOMBIE_SLACK,
                        "stuck": sorted(s.stuck.values())[:20], "stuck_count": len(s.stuck),
                        "by_parent": {kind: {"max": max(ns, default=0), "mean": round(sum(ns) / len(ns), 3) if ns else 0.0}
                                      for kind, ns in sorted(s.zombie_by_kind.items())}},
            "sampler_errors": s.errors,
            "fd_baseline": {name: dict(k) for name, k in s.baseline.items()},
            "fd_changes": s.fd_changes,
            "series": {name: {"t": g.t, "n": g.n, "fds_mean": [round(x, 2) for x in g.fds_mean],
                              "rss_mean": [round(x) for x in g.rss_mean], "pidfds": g.pidfds}
                       for name, g in s.series.items()},
            "zombie_series": {"t": s.zombie_t, "n": s.zombie_n, "by_parent": s.zombie_by_kind},
        }


# -- the checks ----------------------------------------------------------------------------------
def evaluate(data: dict) -> list[dict]:
    """Each check: a name, whether it passed, the figures that say so."""
    checks: list[dict] = []

    def add(key: str, name: str, ok: bool, measured: str) -> None:
        checks.append({"key": key, "check": name, "ok": bool(ok), "measured": measured})

    c = data.get("connections")
    if c:
        add("nothing_lost", "no accepted connection lost",
            c["made"] > 0 and c["failed"] == 0 and c["clients_missing"] == 0,
            f"{c['made']:,} made: {c['ok']:,} ok, {c['refused']:,} refused, {c['dropped_at_kills']:,} dropped by "
            f"{c['worker_kills']} worker kills, {c['failed']:,} failed {c['failed_by_kind'] or ''}".rstrip())
        lg = c["log"]
        add("limit", "-c never exceeded", c["max_programs"] <= c["limit"] and lg["status_max"] <= c["limit"],
            f"at most {c['max_programs']} programs in {c['program_samples']:,} samples, at most "
            f"{lg['status_max']} in the status: lines; -c {c['limit']}")
        # Every connection answered ok had a program, so a pid line: fewer means the log was not all read.
        add("log_balanced", "-v log balanced", lg["balanced"] and lg["pid_lines"] >= c["ok"] > 0,
            f"{lg['pid_lines']:,} pid, {lg['end_lines']:,} end lines for {c['ok']:,} connections ok: "
            f"{lg['end_without_pid']} end without pid, {lg['pid_without_end']} pid without end")
    t = data.get("tree")
    if t:
        add("sequences", "no gap, repeat or reordering in the log sequences",
            t["lines"] > 0 and t["gaps_unexplained"] == 0 and t["duplicates"] == 0 and t["out_of_order"] == 0
            and t["interleaved_runs"] == 0 and t["foreign_lines"] == 0 and t["runs_without_lines_unexplained"] == 0,
            f"{t['lines']:,} lines in {t['runs']} runs: {t['gaps_unexplained']} gaps ({t['lines_lost_unexplained']} "
            f"lines) not at a multilog kill, {t['duplicates']} repeated, {t['out_of_order']} out of order, "
            f"{t['interleaved_runs']} interleaved runs, {t['foreign_lines']} foreign lines; lost in killed "
            f"multilogs: {t['lines_lost_at_multilog_kills']} lines in {t['gaps_at_multilog_kills']} gaps")
        add("single_instance", "one instance of each service and log at any time",
            max(t["max_producers"].values(), default=0) <= 1 and max(t["max_multilogs"].values(), default=0) <= 1
            and t["doubled_after_svscan_kill"] == 0,
            f"at most {max(t['max_producers'].values(), default=0)} producer and "
            f"{max(t['max_multilogs'].values(), default=0)} multilog per service; svscan restarts took over "
            f"{t['adopted']}, started again {t['restarted_after_svscan_kill']}")
        add("clean_stop", "svscan --stop-services stops cleanly, every last run ends with its end line",
            t["clean_end"] and t["exit_status"] == 0,
            f"svscan exit {t['exit_status']} after {t['stop_seconds']} s; end lines: {t['clean_end']}")
    deaths = []
    if c and c.get("master_died"):
        deaths.append(f"tcpserver master at {c['master_died']['t']:.0f} s (status {c['master_died']['status']})")
    if t:
        deaths += [f"svscan at {d['t']:.0f} s (status {d['status']})" for d in t["svscan_deaths"]]
    add("no_unexpected_exit", "no tcpserver master or svscan exited unasked", not deaths, ", ".join(deaths) or "none")
    r = data.get("resources") or {}
    groups = r.get("groups", {})
    if groups:
        add("fds_flat", "fds flat", all(g["fds_flat"] for g in groups.values()),
            "; ".join(f"{n} {g['fds_first']:g}→{g['fds_last']:g} (max {g['fds_max']})" for n, g in groups.items()))
        add("rss_flat", "RSS flat", all(g["rss_flat"] for g in groups.values()),
            "; ".join(f"{n} {g['rss_first'] / 2**20:.1f}→{g['rss_last'] / 2**20:.1f} MiB" for n, g in groups.items()))
    z = r.get("zombies")
    if z:
        add("zombies", "no zombie left unreaped", z["stuck_count"] == 0 and not data["cleanup"].get("zombies_left"),
            f"at most {z['max']} at a sample (mean {z['first_quarter_mean']:g} first quarter, "
            f"{z['last_quarter_mean']:g} last); {z['stuck_count']} unreaped for 3 s or more; "
            f"{len(data['cleanup'].get('zombies_left', []))} at the end")
    cl = data.get("cleanup", {})
    add("no_process_left", "no process left running", not cl.get("processes_left"),
        ", ".join(cl.get("processes_left", [])) or "none")
    add("no_shm_left", "no /dev/shm file left", not cl.get("shm_left"), ", ".join(cl.get("shm_left", [])) or "none")
    return checks


def print_summary(data: dict) -> None:
    for ch in data["checks"]:
        print(f"{'ok  ' if ch['ok'] else 'FAIL'} {ch['check']}: {ch['measured']}")
    print(f"reproduce: {data['command']}")


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through `finally`: every process is stopped by pid


def _draw(data: dict, path: Path) -> None:
    data["chart"] = soak_report.write_chart(data, path)  # the report says whether there is a chart


BENCH = Bench("soak", "SOAK.md", "soak.png", soak_report.render_markdown, _draw, ROOT / "docs")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        path = Path(args.render)
        data = json.loads(path.read_text())
        BENCH.write(data, args, path.parent)
        print_summary(data)
        return 0 if data["ok"] else 1
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        data = Soak(args).run()
    except (OSError, RuntimeError) as e:
        log(f"loadtest.soak: error: {e}")
        return 1
    except KeyboardInterrupt:
        log("loadtest.soak: interrupted; every process was stopped")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    BENCH.write(data, args)
    print_summary(data)
    return 0 if data["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
