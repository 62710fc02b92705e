"""``supervise/restart``: the restart state a supervisor killed with SIGKILL hands to the next one.

The status file says only "down since": a new supervisor (svscan, ``supervise DIR``) that read
nothing else would start a service in back-off at once, forget its recent deaths, restart a
permanently failed one, and start ``./run`` while the old supervisor's orphaned ``./finish`` still
runs.  So whenever that state changes the supervisor writes it here
(docs/CONTRACTS.md, Taking over after a SIGKILL), one line of ``key=value`` words::

    v1 boot=BOOT_ID delay=MS due=MS failed=0|1 deaths=MS,MS,... finish=PID:TICKS:MS

``delay`` is the last back-off delay, ``due`` the CLOCK_MONOTONIC moment (ms) before which no
automatic restart is made, ``deaths`` the monotonic moments of the deaths that count towards
permanent failure, ``finish`` the running ``./finish`` (pid, start time in clock ticks since boot,
see prefork/proc.py, and the monotonic moment of its timeout-finish KILL, 0 for none).
CLOCK_MONOTONIC runs on across processes but restarts at boot, so the monotonic moments count only
when ``boot`` is this boot's id; CLOCK_REALTIME is not used (it may step).

The file is written only while there is something in it (a service without the restart policy's
files and without ``./finish`` never has one): rewritten in place while it is a regular file of the
supervisor's own with one link, else through ``restart.new`` and a rename
(:meth:`control.servicedir.ServiceDir.write_private`); removed when the state is empty again.  What is read back is data: an unknown version, a malformed word or
a number out of range makes :func:`decode` return None (the state is ignored); the supervisor then
bounds what it keeps by the service's current files (:meth:`control.machine.Service.restore`).
"""

from __future__ import annotations

NAME = "restart"
MAX_SIZE = 4096  # more than a line with 1000 deaths: a reader reads no further
MAX_NUMBER = 1 << 63
VERSION = b"v1"
_BOOT_ID = "/proc/sys/kernel/random/boot_id"


class Saved:
    """What the file holds (times in ms of CLOCK_MONOTONIC, valid on the boot BOOT only)."""

    __slots__ = ("boot", "delay_ms", "due_ms", "failed", "deaths_ms", "finish_pid", "finish_ticks", "finish_kill_ms")

    def __init__(self, boot: str, delay_ms: int = 0, due_ms: int = 0, failed: bool = False,
                 deaths_ms: list[int] | None = None, finish_pid: int = 0, finish_ticks: int = 0,
                 finish_kill_ms: int = 0) -> None:
        self.boot = boot
        self.delay_ms = delay_ms
        self.due_ms = due_ms
        self.failed = failed
        self.deaths_ms = deaths_ms or []
        self.finish_pid = finish_pid
        self.finish_ticks = finish_ticks
        self.finish_kill_ms = finish_kill_ms

    def empty(self) -> bool:
        """Nothing worth a file: no back-off, no failure, no deaths, no finish."""
        return not (self.delay_ms or self.failed or self.deaths_ms or self.finish_pid)


def encode(saved: Saved) -> bytes:
    deaths = ",".join(str(t) for t in saved.deaths_ms)
    return (f"v1 boot={saved.boot} delay={saved.delay_ms} due={saved.due_ms} failed={int(saved.failed)}"
            f" deaths={deaths} finish={saved.finish_pid}:{saved.finish_ticks}:{saved.finish_kill_ms}\n").encode()


def _number(word: bytes) -> int:
    if not (word.isdigit() and word.isascii()) or len(word) > 19:
        raise ValueError("not a number")
    value = int(word)
    if value >= MAX_NUMBER:
        raise ValueError("too large")
    return value


def decode(data: bytes) -> Saved | None:
    """The state in DATA (the file's first MAX_SIZE bytes), None if it is not a whole, valid v1 line."""
    line, newline, _rest = data.partition(b"\n")
    if not newline:
        return None
    words = line.split(b" ")
    if words[0] != VERSION:
        return None
    fields: dict[bytes, bytes] = {}
    for word in words[1:]:
        key, eq, value = word.partition(b"=")
        if not eq or key in fields:
            return None
        fields[key] = value
    try:
        boot = fields[b"boot"]
        if not boot or len(boot) > 64 or not boot.isascii() or not all(c in b"0123456789abcdef-" for c in boot):
            return None
        deaths = fields[b"deaths"]
        deaths_ms = [_number(w) for w in deaths.split(b",")] if deaths else []
        finish = fields[b"finish"].split(b":")
        if len(finish) != 3:
            return None
        failed = _number(fields[b"failed"])
        if failed > 1:
            return None
        return Saved(boot.decode(), _number(fields[b"delay"]), _number(fields[b"due"]), bool(failed), deaths_ms,
                     *(_number(w) for w in finish))
    except (KeyError, ValueError):
        return None


_boot = ""


def boot_id() -> str:
    """This boot's id (the kernel's random boot_id); "" if it cannot be read, which matches no file's."""
    global _boot
    if not _boot:
        try:
            with open(_BOOT_ID, "rb") as f:
                _boot = f.read(64).strip().decode("ascii", "replace")
        except OSError:
            return ""
    return _boot
