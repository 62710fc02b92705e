"""What the soak run reads from /proc, and the orphan reaper it runs as.

Everything here finds processes by pid through the kernel's own lists
(``/proc/PID/task/TID/children``, ``/proc/PID/stat``), never by name, so a
soak never touches a process another run started.  The run marks every
process it starts with an environment variable (``TAG_VAR``); whatever still
carries the mark after the run is a leftover.

The soak process is a child subreaper: the services of a SIGKILLed svscan
become its children (as they would become init's), and :class:`Reaper` reaps
those orphans, never a child the run started itself and waits for.
"""

from __future__ import annotations

import ctypes
import os
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

TAG_VAR = "PREFORK_SOAK_TAG"
PAGE = os.sysconf("SC_PAGE_SIZE")
PR_SET_CHILD_SUBREAPER = 36


# -- readers ---------------------------------------------------------------------------------
def children(pid: int) -> list[int]:
    """PID's children, from every one of its threads' kernel lists ([] when it is gone)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    out: list[int] = []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                out.extend(int(x) for x in f.read().split())
        except (OSError, ValueError):
            continue
    return out


def stat(pid: int) -> tuple[str, str, int] | None:
    """(comm, state letter, ppid) of PID, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        left, right = data.index(b"("), data.rindex(b")")
        rest = data[right + 2:].split()
        return data[left + 1:right].decode("utf-8", "replace"), rest[0].decode(), int(rest[1])
    except (OSError, ValueError, IndexError):
        return None


def start_ticks(pid: int) -> int | None:
    """When PID started, in clock ticks since boot (field 22 of /proc/PID/stat): tells a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return int(data[data.rindex(b")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def uptime_ticks() -> float:
    """Seconds since boot in clock ticks (the unit of start_ticks)."""
    try:
        with open("/proc/uptime", "rb") as f:
            return float(f.read().split()[0]) * os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def cmdline(pid: int) -> bytes:
    """PID's raw command line (NUL-separated; b"" for a zombie or a vanished process)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def fd_kinds(pid: int) -> Counter[str] | None:
    """PID's open fds by kind: ``pipe``, ``socket``, ``pidfd``, ``eventpoll``..., or a file's last two path parts."""
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    kinds: Counter[str] = Counter()
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith("/"):
            kind = "/".join(re.sub(r"\d+", "N", part) for part in target.rsplit("/", 2)[-2:])
        else:
            kind = target.split(":[")[0] if not target.startswith("anon_inode:[") else target[12:-1]
        kinds[kind] += 1
    return kinds


def rss_bytes(pid: int) -> int | None:
    """Resident set size of PID (second field of /proc/PID/statm, in pages)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, ValueError, IndexError):
        return None


def alive(pid: int) -> bool:
    """PID exists and is not a zombie."""
    st = stat(pid)
    return st is not None and st[1] not in ("Z", "X")


def tagged_pids(tag: str) -> list[int]:
    """Live (non-zombie) processes whose start-up environment carries TAG_VAR=TAG."""
    needle = f"{TAG_VAR}={tag}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                if needle not in f.read().split(b"\0"):
                    continue
        except OSError:
            continue
        if alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def _programs_pass(master: int) -> dict[int, tuple[int, str, str, int | None]]:
    """One look at a tcpserver master's tree: {program pid: (parent, comm, state, start ticks)}.

    A worker's comm is ``tcpserver`` (the master names itself, its forks
    inherit it); a program's is its own.  A worker or a reload's probe exec'd
    fresh (HUP, USR2) is ``python3...`` until it names itself, but has the
    master's command line from its exec on (``tcpserver -I -S SCRIPT ARGS``,
    only SCRIPT differs); in the middle of that exec it has the new comm and
    no command line yet, and is skipped.  Every child of a worker is a program (the fast
    path starts no other process); so is every child of the master that is
    not one of those (a program whose worker died or left).
    """
    found: dict[int, tuple[int, str, str, int | None]] = {}
    own = cmdline(master).split(b"\0")
    for pid in children(master):
        st = stat(pid)
        if st is None:
            continue
        raw = cmdline(pid)
        if not raw and st[1] != "Z":
            continue  # in the middle of an exec (the new image has no arguments yet): a worker or probe
        line = raw.split(b"\0")
        if st[0] == "tcpserver" or (line[1:3] == [b"-I", b"-S"] and line[:1] + line[4:] == own[:1] + own[4:]):
            for kid in children(pid):
                kst = stat(kid)
                if kst is not None:
                    found[kid] = (pid, kst[0], kst[1], start_ticks(kid))
        else:
            found[pid] = (master, st[0], st[1], start_ticks(pid))
    return found


def count_programs(master: int, detail: list | None = None) -> int:
    """Programs running (or exited, not yet reaped) at one instant in MASTER's tree.

    One look reads the workers' lists one after another, so it is no
    snapshot: a program seen early in one worker may exit, and its token
    start a program seen later in another.  So the tree is looked at twice
    and a program counts only if both looks saw it (same pid, same start
    time): it was alive over the whole gap between the end of the first
    look and the start of the second, so all of them were alive at one
    instant.  The count can be low, never high.  DETAIL, when given, gets
    ``(pid, parent, comm, state)`` of every program counted.
    """
    first = _programs_pass(master)
    second = _programs_pass(master)
    both = {pid: v for pid, v in second.items() if pid in first and first[pid][3] == v[3]}
    if detail is not None:
        detail.extend((pid, v[0], v[1], v[2]) for pid, v in sorted(both.items()))
    return len(both)


def shm_names() -> set[str]:
    try:
        return set(os.listdir("/dev/shm"))
    except OSError:
        return set()


# -- the reaper ------------------------------------------------------------------------------
class Reaper:
    """This process as a child subreaper: reaps zombie orphans, never a pid in ``protected``.

    Every process the run starts (servers, svscans, load clients) is started
    under ``lock`` and its pid added to ``protected`` before the lock is let go,
    so the reaper can never take the exit status its starter waits for.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.protected: set[int] = set()
        self.reaped = 0
        self.enabled = False

    def enable(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.enabled = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0

    def protect(self, pid: int) -> None:
        self.protected.add(pid)

    def zombies(self) -> list[int]:
        """Our zombie children that are orphans (not started by the run)."""
        out = []
        for pid in children(os.getpid()):
            if pid in self.protected:
                continue
            st = stat(pid)
            if st is not None and st[1] == "Z":
                out.append(pid)
        return out

    def reap(self) -> int:
        n = 0
        with self.lock:
            for pid in self.zombies():
                try:
                    got, _status = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    continue
                if got:
                    n += 1
        self.reaped += n
        return n


# -- resource samples ---------------------------------------------------------------------------
@dataclass
class GroupSeries:
    """Per-second samples of one group of processes: count, fds and RSS per process."""

    t: list[float] = field(default_factory=list)
    n: list[int] = field(default_factory=list)
    fds_mean: list[float] = field(default_factory=list)
    fds_max: list[int] = field(default_factory=list)
    rss_mean: list[float] = field(default_factory=list)
    rss_max: list[int] = field(default_factory=list)
    pidfds: list[int] = field(default_factory=list)

    def add(self, t: float, fds: list[int], rss: list[int], pidfds: int = 0) -> None:
        if not fds or not rss:
            return
        self.t.append(round(t, 3))
        self.pidfds.append(pidfds)
        self.n.append(len(fds))
        self.fds_mean.append(sum(fds) / len(fds))
        self.fds_max.append(max(fds))
        self.rss_mean.append(sum(rss) / len(rss))
        self.rss_max.append(max(rss))


class ResourceSampler:
    """Once a second: fds and RSS of each group of processes, zombies under the watched parents.

    ``groups()`` returns {name: [pid, ...]} at each sample (the pids change as
    workers, multilogs and svscans are killed and replaced; one younger than
    MIN_AGE is left out of that sample, its start-up is not its steady state); ``parents()``
    returns {pid: kind} of the processes whose zombie children are counted.  A zombie seen at
    STUCK consecutive samples was left unreaped for that many seconds: a leak.
    The reaper runs after each sample, so the run's own orphans never pile up.
    """

    STUCK = 3
    MIN_AGE = 1.0  # seconds: a process younger than this is still starting (a multilog before its directory is open)

    def __init__(self, groups: object, parents: object, reaper: Reaper, t0: float, interval: float = 1.0,
                 extra: object = None) -> None:
        self.groups = groups
        self.parents = parents
        self.reaper = reaper
        self.t0 = t0
        self.interval = interval
        self.extra = extra  # called once per sample with the elapsed time (the tree's instance count)
        self.series: dict[str, GroupSeries] = {}
        self.zombie_t: list[float] = []
        self.zombie_n: list[int] = []
        self.zombie_by_kind: dict[str, list[int]] = {}
        self.streak: dict[int, int] = {}
        self.stuck: dict[int, str] = {}
        self.baseline: dict[str, Counter[str]] = {}  # fds by kind of the first process sampled in each group
        self.fd_changes: list[dict] = []  # a process whose fds differ from its group's baseline (first of each)
        self._changed: set[tuple[str, int, tuple]] = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="soak-resources", daemon=True)
        self.errors = 0

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10.0)

    def _loop(self) -> None:
        for _ in range(10_000_000):
            if self.stop.is_set():
                return
            started = time.monotonic()
            try:
                self.sample_once()
            except Exception:  # a sample must never end the run; it is counted instead
                self.errors += 1
            self.stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def _compare(self, group: str, pid: int, t: float, kinds: Counter[str]) -> None:
        """Note (once per process and difference, at most 10 per group) fds that differ from the group's baseline."""
        base = self.baseline.setdefault(group, kinds)
        if kinds == base or sum(1 for c in self.fd_changes if c["group"] == group) >= 10:
            return
        added, removed = kinds - base, base - kinds
        key = (group, pid, tuple(sorted((added - removed).items())))
        if key in self._changed:
            return
        self._changed.add(key)
        self.fd_changes.append({"group": group, "pid": pid, "t": round(t, 3), "fds": sum(kinds.values()),
                                "baseline_fds": sum(base.values()), "added": dict(added), "removed": dict(removed)})

    def sample_once(self) -> None:
        t = time.monotonic() - self.t0
        now = uptime_ticks()
        young = self.MIN_AGE * os.sysconf("SC_CLK_TCK")
        for name, pids in self.groups().items():  # type: ignore[operator]
            fds, rss, pidfds = [], [], 0
            for pid in pids:
                started = start_ticks(pid)
                if started is None or now - started < young:
                    continue
                kinds, r = fd_kinds(pid), rss_bytes(pid)
                if kinds is None or r is None or not alive(pid):
                    continue
                mine = +Counter({k: v for k, v in kinds.items() if k != "pidfd"})  # pidfds come and go with adoptions
                fds.append(sum(mine.values()))
                pidfds += kinds["pidfd"]
                rss.append(r)
                self._compare(name, pid, t, mine)
            self.series.setdefault(name, GroupSeries()).add(t, fds, rss, pidfds)
        zombies: dict[int, str] = {}
        by_kind: dict[str, int] = {}
        for parent, kind in self.parents().items():  # type: ignore[operator]
            for pid in children(parent):
                st = stat(pid)
                if st is not None and st[1] == "Z":
                    zombies[pid] = f"{st[0]} (pid {pid}, child of the {kind} {parent})"
                    by_kind[kind] = by_kind.get(kind, 0) + 1
        for pid in list(self.streak):
            if pid not in zombies:
                del self.streak[pid]
        for pid, what in zombies.items():
            self.streak[pid] = self.streak.get(pid, 0) + 1
            if self.streak[pid] >= self.STUCK:
                self.stuck[pid] = what
        self.zombie_t.append(round(t, 3))
        self.zombie_n.append(len(zombies))
        for kind in set(by_kind) | set(self.zombie_by_kind):
            self.zombie_by_kind.setdefault(kind, [0] * (len(self.zombie_n) - 1)).append(by_kind.get(kind, 0))
        if self.extra is not None:
            self.extra(t)  # type: ignore[operator]
        self.reaper.reap()


def quarters(values: list[float]) -> tuple[float, float]:
    """Mean of the first quarter and of the last quarter of VALUES (at least one sample each)."""
    if not values:
        return 0.0, 0.0
    k = max(1, len(values) // 4)
    first, last = values[:k], values[-k:]
    return sum(first) / len(first), sum(last) / len(last)


def flatness(series: GroupSeries, fd_slack: float, rss_ratio: float, rss_slack: float) -> dict:
    """First-quarter vs last-quarter means of fds and RSS per process, and whether they stayed flat.

    fds here leave pidfds out (a supervisor holds one for each service it took
    over from a killed svscan, until that service exits); their maximum is
    reported apart.

    fds are flat when the last quarter's mean is at most FD_SLACK above the
    first's and no sample's maximum went more than 2 x FD_SLACK above the first
    quarter's largest; RSS when the last quarter's mean is at most RSS_RATIO x
    the first's plus RSS_SLACK bytes.
    """
    f0, f1 = quarters(series.fds_mean)
    r0, r1 = quarters(series.rss_mean)
    k = max(1, len(series.fds_max) // 4)
    first_max = max(series.fds_max[:k], default=0)
    fds_max = max(series.fds_max, default=0)
    return {
        "samples": len(series.t),
        "processes_mean": sum(series.n) / len(series.n) if series.n else 0.0,
        "pidfds_max": max(series.pidfds, default=0),
        "fds_first": round(f0, 2), "fds_last": round(f1, 2), "fds_max": fds_max, "fds_first_max": first_max,
        "rss_first": round(r0), "rss_last": round(r1), "rss_max": max(series.rss_max, default=0),
        "fds_flat": bool(series.t) and f1 <= f0 + fd_slack and fds_max <= first_max + 2 * fd_slack,
        "rss_flat": bool(series.t) and r1 <= r0 * rss_ratio + rss_slack,
    }
