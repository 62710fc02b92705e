"""runsvdir's log argument (``svscan --runit DIR 'log: .....'``): recent error output, shown by ps.

runsvdir keeps the argument's first five characters and scrolls every byte written to its standard
error (its own, its runsv's, and so the services') but NUL through the rest, in place in its own
command line, where ``ps`` shows it, as daemontools' readproctitle does; a dot every 15 minutes
makes old messages scroll away.  svscan does the same: the argument is found in this process's
argument area (``/proc/self/stat``'s arg_start plus its offset in ``/proc/self/cmdline``) and
rewritten there, never past its own length (docs/CONTRACTS.md, runit semantics).
"""

from __future__ import annotations

import os

MIN_LENGTH = 7  # runsvdir's: a shorter argument disables the log
KEEP = 5  # the first characters stay, as runsvdir keeps "log: "
DOT_EVERY = 900.0


class Title:
    """The log argument's bytes in this process's command line."""

    __slots__ = ("text", "address")

    def __init__(self, text: bytes) -> None:
        """TEXT must be the last argument of this process; OSError or ValueError when it cannot be found."""
        if len(text) < MIN_LENGTH or b"\0" in text:
            raise ValueError("log must have at least seven characters")
        self.text = bytearray(text)
        self.address = _address(text)

    def feed(self, data: bytes) -> None:
        """Scroll DATA (NUL bytes dropped) through everything after the first KEEP characters."""
        import ctypes

        data = data.replace(b"\0", b"")
        if not data:
            return
        room = len(self.text) - KEEP
        tail = (bytes(self.text[KEEP:]) + data)[-room:]
        self.text[KEEP:] = tail
        ctypes.memmove(self.address + KEEP, tail, room)


def _address(text: bytes) -> int:
    """Where TEXT, the last argument, starts in memory (checked against the bytes found there)."""
    import ctypes

    with open("/proc/self/stat", "rb") as f:
        fields = f.read().rpartition(b")")[2].split()
    arg_start = int(fields[48 - 3])  # field 48 (arg_start); the split starts at field 3
    with open("/proc/self/cmdline", "rb") as f:
        cmdline = f.read()
    if not cmdline.endswith(b"\0" + text + b"\0"):
        raise ValueError("the log is not the last argument")
    address = arg_start + len(cmdline) - len(text) - 1
    if ctypes.string_at(address, len(text)) != text:
        raise ValueError("the log is not where /proc says")
    return address


def redirect_stderr() -> tuple[int, int]:
    """Standard error of svscan and of every service into a new pipe: (read end, blocking write end for services).

    svscan's own fd 2 is a second, non-blocking open of the pipe: svscan reads the pipe itself, so a
    blocking write of its own to a full pipe would stop it for good; a warning that finds the pipe
    full is lost instead.  Services get the blocking end, as runsv's stderr is.
    """
    r, w = os.pipe2(os.O_CLOEXEC)
    own = os.open(f"/proc/self/fd/{w}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    os.dup2(own, 2)
    os.close(own)
    os.set_blocking(r, False)
    return r, w
