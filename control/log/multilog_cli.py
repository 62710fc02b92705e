"""``multilog script...``: daemontools 0.76's logger over :class:`prefork.control.log.multilog.Multilog`.

umask 022; every ``=file`` is created before any directory is opened, every
directory is locked and recovered before anything is read (a failure is
``multilog: fatal: ...``, exit 111).  Then read, process, flush, read again.
SIGALRM rotates every non-empty ``current`` before the next read; SIGTERM ends
at the next line boundary (at once if the last byte read was a newline,
otherwise reading one byte at a time up to it), leaving the rest of the input
unread; end of input completes a partial line, fsyncs, sets 0744 and exits 0
(removing the counter blocks of ``M`` directories on the way out).
Signals only set flags: the main loop waits for input with select() on stdin
and a wake-up pipe, so no byte read is ever dropped by a signal arriving.

A multilog runs beside every logged service, so the process is kept lean: it
re-execs as ``python -I -S`` (prefork/lean.py) and imports no click, no
dataclasses, no ``signal`` (``_signal`` is built in), and ``re`` only when the
script has patterns.  ``--help`` as the first argument prints the usage.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: this process does not import typing
if TYPE_CHECKING:
    from prefork.control.log.multilog import Multilog

PROG = "multilog"
READ_SIZE = 65536
HELP = """usage: multilog script...

Read lines from stdin and append the selected ones to log directories (daemontools 0.76 compatible).
  t          first word only: stamp each line with @TAI64N and a space
  -PATTERN   deselect matching lines;  +PATTERN  select matching lines  (* skips to the first next byte)
  e          copy selected lines to stderr
  =FILE      keep the last selected line in FILE (1001 bytes)
  sSIZE      rotate current at SIZE bytes (4096..16777215, default 99999)
  nNUM       keep NUM-1 old files (default 10, at least 2)
  !PROCESSOR run each full current through sh -c PROCESSOR
  ./DIR /DIR a log directory with the settings given before it
Extensions (ignored by daemontools): SBYTES  cap the total size of old files;  TSECONDS  rotate current at that age;
  M  publish counters of the directories after it for prefork-exporter --multilog (M0: stop).
SIGALRM rotates now; SIGTERM exits at the next line end; EOF exits 0.
"""


class Signals:
    """SIGTERM and SIGALRM as flags plus a wake-up pipe; installed before start-up (0.76 blocks them then)."""

    __slots__ = ("term", "alarm", "wake")

    def __init__(self) -> None:
        import _signal

        self.term = False
        self.alarm = False
        wake_r, wake_w = (_above_stdio(fd) for fd in os.pipe())  # never in a closed stdin's place
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        self.wake = wake_r
        _signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        _signal.signal(_signal.SIGTERM, self._on_term)
        _signal.signal(_signal.SIGALRM, self._on_alarm)
        _signal.signal(_signal.SIGINT, _signal.SIG_DFL)

    def _on_term(self, signum: int, frame: object) -> None:
        self.term = True

    def _on_alarm(self, signum: int, frame: object) -> None:
        self.alarm = True

    def drain(self) -> None:
        try:
            while os.read(self.wake, 512):
                pass
        except OSError:
            pass


def _above_stdio(fd: int) -> int:
    if fd > 2:
        return fd
    import fcntl

    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    os.close(fd)
    return high


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--help"]:
        os.write(1, HELP.encode())
        raise SystemExit(0)
    if argv is None:
        from prefork.lean import go_lean

        go_lean("multilog", "prefork.control.log.multilog_cli")
    os.umask(0o022)
    signals = Signals()

    from prefork.control.log.logscript import parse
    from prefork.control.log.multilog import Fatal, Multilog

    engine = Multilog(parse(args))
    try:
        engine.open()
    except Fatal as err:
        from prefork.djb import write_line

        write_line(err.message())
        raise SystemExit(111) from None
    run(engine, signals, 0)
    engine.release()
    raise SystemExit(0)


def run(engine: Multilog, signals: Signals, fd: int = 0) -> None:
    """The read loop of an opened engine until EOF or SIGTERM; then the engine is closed."""
    import select

    feed = engine.feed
    flush = engine.flush
    ages = any(d.age for d in engine.dirs)
    watch = [fd, signals.wake]
    while True:
        flush()
        if signals.alarm:
            signals.alarm = False
            engine.rotate_nonempty()
        timeout = None
        if ages:
            engine.rotate_due()
            timeout = engine.next_deadline()
        size = READ_SIZE
        if signals.term:
            if not engine.line_open:
                break
            size = 1
        try:
            ready = select.select(watch, (), (), timeout)[0]
        except (OSError, ValueError):
            ready = [fd]  # let read() report it (a bad stdin reads as the end, as in 0.76)
        if signals.wake in ready:
            signals.drain()
        if fd not in ready:
            continue
        try:
            data = os.read(fd, size)
        except BlockingIOError:
            continue  # another reader took it; wait again
        except OSError:
            data = b""  # 0.76 treats a read error as the end of input
        if not data:
            break
        feed(data)
    engine.close()
