"""Process identity: is this pid still the process a file (or an earlier look) recorded?

A pid is reused by the kernel once its process is reaped, so a pid alone
names "whoever has it now".  What tells two processes with one pid apart is
their start time, in clock ticks since boot (``/proc/PID/stat`` field 22),
which a process keeps for life.  Every reader of a pid another process left
behind asks here: the shared-memory readers (the service table records its
writer's ticks; the metrics collector remembers those it saw first),
``tcpserver-status``, the exporter watching its parent, and supervise's
adoption of a service a dead supervisor left running (its status file
records a wall-clock label instead, turned into ticks by :func:`ticks_at`).

Its own module, not a part of ``shmfile.py``: adoption and the tcpserver
master ask it about processes that have nothing to do with shared memory,
and it imports nothing but ``os``, so the lean server processes can use it.
``PROC`` is the seam the tests point at fabricated ``/proc`` contents.
"""

from __future__ import annotations

import os

PROC = "/proc"
HZ = os.sysconf("SC_CLK_TCK")  # clock ticks per second, the unit of start times
TICK_NS = 1_000_000_000 // HZ


def start_ticks(pid: int) -> int | None:
    """PID's start time in clock ticks since boot; None if it is gone, a zombie, or /proc says nothing sensible.

    0 where there is no /proc to ask (the pid exists, its start time is unknown).
    """
    if pid <= 0:
        return None
    try:
        with open(f"{PROC}/{pid}/stat", "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError:  # no /proc here (or not ours to read): kill(0) is all we can ask
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except (PermissionError, OverflowError):
            pass
        return 0
    # The command name (field 2) may hold spaces and parentheses: the fields start after its last ")".
    fields = data[data.rfind(b")") + 2:].split()
    if len(fields) < 20 or fields[0] in (b"Z", b"X", b"x") or not fields[19].isdigit():
        return None
    return int(fields[19])


def state(pid: int) -> str | None:
    """PID's state letter (``/proc/PID/stat`` field 3: R, S, D, T stopped, t traced, Z ...); None if it is gone
    or /proc cannot say.  tcpserver's workers ask it of their master (``svc -p``, see worker.py)."""
    if pid <= 0:
        return None
    try:
        with open(f"{PROC}/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: the fields start after its last ")".
    fields = data[data.rfind(b")") + 2:].split()
    return fields[0].decode("ascii", "replace") if fields else None


def same_start(recorded: int, now: int, slack: int = 0) -> bool:
    """The one comparison: a process started at NOW ticks is the one recorded as started at RECORDED (within
    SLACK ticks).  0 on either side is "not known" and trusts the pid: a file written without /proc, or read
    where another user's /proc entries are hidden."""
    return not recorded or not now or abs(now - recorded) <= slack


def running(pid: int, ticks: int = 0, slack: int = 0, *, known: bool = False) -> bool:
    """PID is alive (no zombie) and is the process recorded as started at TICKS (see :func:`same_start`).

    KNOWN: PID's start time must be known, for a caller that acts on the answer as root (adoption).
    """
    now = start_ticks(pid)
    return now is not None and (bool(now) or not known) and same_start(ticks, now, slack)


def boot_time() -> float:
    """Unix time of boot (``btime`` of /proc/stat); OSError or ValueError if /proc cannot say."""
    with open(f"{PROC}/stat", "rb") as f:
        for line in f:
            if line.startswith(b"btime "):
                return float(line.split()[1])
    raise ValueError("no btime in /proc/stat")


def ticks_at(unix_seconds: float) -> int:
    """The start time in ticks of a process started at UNIX_SECONDS; ValueError if that is not after boot (no
    process now running started then), OSError or ValueError without /proc: a check that needs it fails closed."""
    ticks = round((unix_seconds - boot_time()) * HZ)
    if ticks <= 0:
        raise ValueError("before boot")
    return ticks


def start_boottime_ns(pid: int) -> int | None:
    """When PID started, in CLOCK_BOOTTIME ns (tick resolution); None if it is gone or its start is unknown."""
    ticks = start_ticks(pid)
    return ticks * TICK_NS if ticks else None


def euid(pid: int) -> int | None:
    """The effective uid of PID (the ``Uid:`` line of /proc/PID/status), None if it cannot be known."""
    try:
        with open(f"{PROC}/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Uid:"):
                    return int(line.split()[2])
    except (OSError, ValueError, IndexError):
        pass
    return None


def children(pid: int) -> list[int]:
    """The children of PID (a thread of this process), from the kernel's own list; psutil's scan of /proc
    where the kernel keeps none (CONFIG_PROC_CHILDREN off)."""
    try:
        with open(f"{PROC}/self/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        import psutil

        return [c.pid for c in psutil.Process(pid).children()]


def fd_inode(pid: int, fd: int) -> int | None:
    """The inode of what PID has open as FD (a socket's, say), None if it cannot be known: how the master
    tells which of its new children a dead worker started on a given connection."""
    try:
        return os.stat(f"{PROC}/{pid}/fd/{fd}").st_ino
    except OSError:
        return None
