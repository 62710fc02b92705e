"""The multilog engine: bytes in (any chunking), a parsed script, log directories, ``=file``s and stderr out.

:class:`Multilog` is what the ``multilog`` command drives and what tests drive
directly::

    engine = Multilog(parse(["t", "s4096", "./main"]))
    engine.open()            # =files, then directories (Fatal on failure)
    engine.feed(data)        # one read's worth, any size, lines may span calls
    engine.flush()           # before waiting for more input
    engine.close()           # end of input: newline for a partial line, flush, fsync, 0744

Semantics are 0.76's, line by line: the stamp is taken when a line's first
byte is read (here: one label per ``feed``, shared by the lines starting in
it, as 0.76's lines starting in one 1024-byte read got labels microseconds
apart); patterns, ``e`` and ``=`` see the first 1000 bytes; the directories
get the whole line.  The work is done per chunk, not per byte:
stamping is one ``replace`` over all the complete lines of a read, a script
without ``+``/``-``/``e``/``=`` never splits lines at all, and patterns are
evaluated by compiled expressions over the chunk's lines with the selection
of each directory kept as a 0/1 byte per line.  A line longer than the chunk
is held until its first 1000 bytes are there (what the patterns need), then
streamed to the directories that selected it, so memory stays bounded whatever
the input.

0.76 runs every action of the script over one line before reading the next,
so what the chunk-wide evaluation could reorder is put back in line order:
with several ``e`` actions each line is printed once per ``e`` that selected
it, line after line (``e e`` over 1, 2 prints 1 1 2 2, not 1 2 1 2); several
``=`` actions naming the same file (``=st - =st``, or ``=st =./st``: same
device and inode) end with the line 0.76 wrote last, the latest line any of
them selected.  A single ``e`` and distinct files need no such care.

Deliberate coarsening: an ``=file`` is rewritten once per read with the last
line selected for it (0.76 rewrites it for every line; the contents after each
read are the same), and ``e`` output of one read is one write to stderr.

Directories named after ``M`` publish counters (control/log/logcounters.py): each
share queued for a directory carries its number of newlines, which the engine
knows without a scan (a stamped chunk grew by one stamp per line, a selected
chunk has one entry per line); only an unstamped chunk sent whole is counted
with ``bytes.count``, and only when some directory has ``M``.
"""

from __future__ import annotations

import os
from itertools import compress, repeat
from operator import add, mul

from prefork.control.log.logdir import Fatal, LogDir, Seam, errtext
from prefork.control.log.logscript import (
    ANY,
    DIR,
    EQUAL,
    FILE,
    LINE_MAX,
    MINUS,
    NEVER,
    PLUS,
    PREFIX,
    STDERR,
    Script,
    after_prefix,
    regex,
)

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: multilog does not import typing
if TYPE_CHECKING:
    from collections.abc import Callable
    from re import Match
    from typing import Literal

    # Which lines of a chunk an action selects: all (True), none (False), or a 0/1 byte per line.
    Selection = bool | bytes
    Chosen = Literal[True] | bytes  # a selection that is not False

_NL = b"\n"
_NOT = bytes.maketrans(b"\x00\x01", b"\x01\x00")
_APPEND = os.O_WRONLY | os.O_NONBLOCK | os.O_APPEND | os.O_CREAT  # djb's open_append (0600)
_WRITE = os.O_WRONLY | os.O_NONBLOCK  # djb's open_write

__all__ = ["Fatal", "Multilog", "Seam"]


class Multilog:
    """A running multilog: the script's directories and files, and the line being read."""

    def __init__(self, script: Script, seam: Seam | None = None) -> None:
        self.script = script
        self.seam = seam if seam is not None else Seam()
        self.dirs = [LogDir(d.path, d.size, d.num, d.processor, self.seam, d.total, d.age, d.metrics)
                     for d in script.dirs]
        self._metered = any(d.metrics for d in script.dirs)  # some directory counts its lines (M)
        self.files: list[int] = []
        self._plain = not script.selects  # every line goes to every directory
        patterns: dict[bytes, Pattern] = {}  # one Pattern per distinct text: evaluated once per chunk
        # Script.actions with each MINUS/PLUS action's pattern bytes made its Pattern; FILE's arg is an index.
        # The kind says what arg is (see logscript.Script), which a (kind, arg) pair cannot tell mypy.
        self._actions: list[tuple[int, Pattern | int | None]] = [
            (kind, patterns.setdefault(arg, Pattern(arg))  # type: ignore[arg-type, misc]  # arg's type is by kind
             if kind in (MINUS, PLUS) else arg)
            for kind, arg in script.actions]
        # Several e actions: their output is gathered and printed line by line, as 0.76 prints it.
        self._interleave = sum(kind == STDERR for kind, _ in script.actions) > 1
        self._same: list[int] = []  # per =file: the first =file open on the same file (set by open())
        self._head: bytes | None = None  # the line being read, until its first 1000 bytes are known
        self._stream: list[LogDir] | None = None  # directories taking the rest of a long line
        self.line_open = False  # inside a line (its first byte read, its newline not yet)

    # -- start-up ---------------------------------------------------------------------------------
    def open(self) -> None:
        """Create and open every ``=file``, then open and recover every directory; raises Fatal.

        Directories with ``M`` publish their counters once every directory is
        locked and recovered, so a multilog that fails to start leaves none.
        """
        seam = self.seam
        for name in self.script.files:
            try:
                seam.close(seam.open(name, _APPEND, 0o600))
            except OSError as err:
                raise Fatal(f"unable to create {name}", err.errno) from None
            try:
                self.files.append(seam.open(name, _WRITE))
            except OSError as err:
                raise Fatal(f"unable to write {name}", err.errno) from None
        self._same = _same_files(self.files)
        for d in self.dirs:
            d.open()
        for d in self.dirs:
            if d.metrics:
                d.publish()

    # -- input ------------------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Process one read's worth of input (one timestamp for the lines that start in it)."""
        end = len(data)
        if not end:
            return
        pos = 0
        if self.line_open:
            pos = self._continue(data)
            if pos >= end:
                return
        stamp = b"@%s " % self.seam.now().hex().encode() if self.script.timestamp else b""
        last = data.rfind(_NL, pos)
        if last >= 0:
            region = data if pos == 0 and last == end - 1 else data[pos:last + 1]
            count = -1  # lines in region: unknown
            if stamp:
                raw = len(region)
                region = stamp + region[:-1].replace(_NL, _NL + stamp) + _NL
                count = (len(region) - raw) // len(stamp)  # one stamp per line
            self._lines(region, stamp, count)
            pos = last + 1
        if pos < end:
            self.line_open = True
            head = stamp + data[pos:] if stamp else data[pos:]
            if len(head) >= LINE_MAX:
                self._decide(head)
            else:
                self._head = head

    def _continue(self, data: bytes) -> int:
        """Take the rest of the open line from DATA; returns where the next line starts (or len(data))."""
        nl = data.find(_NL)
        stream = self._stream
        if stream is not None:
            piece, count = (data, 0) if nl < 0 else (data[:nl + 1], 1)
            for d in stream:
                d.put(piece, count)
            if nl < 0:
                return len(data)
            self._stream = None
            self.line_open = False
            return nl + 1
        assert self._head is not None  # for mypy: an open line not streamed yet is held in _head
        head = self._head + (data if nl < 0 else data[:nl])
        if nl >= 0:
            self._head = None
            self.line_open = False
            self._lines(head + _NL, self._stamp_of(head), 1)
            return nl + 1
        if len(head) >= LINE_MAX:
            self._head = None
            self._decide(head)
        else:
            self._head = head
        return len(data)

    def _decide(self, head: bytes) -> None:
        """A line reached 1000 bytes without its newline: select it now, send what we have, stream the rest."""
        if self._plain:
            stream = self.dirs
        else:
            stream = [d for d, sel in zip(self.dirs, self._evaluate([head], self._stamp_of(head)), strict=True) if sel]
        for d in stream:
            d.put(head, 0)
        self._stream = stream

    def _stamp_of(self, line: bytes) -> bytes:
        return line[:26] if self.script.timestamp else b""

    def _lines(self, region: bytes, stamp: bytes, count: int = -1) -> None:
        """Complete lines, each ending in a newline and starting with STAMP: run the actions, queue each dir's share.

        COUNT is the number of lines in REGION, or -1 if the caller does not know it.
        """
        if self._plain:
            if count < 0:
                count = region.count(_NL) if self._metered else 0
            for d in self.dirs:
                d.put(region, count)
            return
        lines = region.split(_NL)
        lines.pop()
        count = len(lines)
        for d, sel in zip(self.dirs, self._evaluate(lines, stamp), strict=True):
            if sel is True:
                d.put(region, count)
            elif sel is not False:
                d.put(_NL.join(compress(lines, sel)), sel.count(1) - 1)
                d.put(_NL, 1)

    def _evaluate(self, lines: list[bytes], stamp: bytes) -> list[Selection]:
        """Run the actions over LINES; the selection (True, False or a 0/1 byte per line) at each directory.

        Side effects: ``e`` lines to stderr (in line order when there are several ``e``), each
        ``=file`` rewritten with the last line selected for it by any ``=`` naming that file.
        """
        n = len(lines)
        sel: Selection = True
        cache: dict[int, Selection] = {}
        result: list[Selection] = []
        errs: list[Chosen] | None = [] if self._interleave else None
        last_of: dict[int, tuple[int, int]] = {}  # first =file of a file: (last line selected, =file that wrote it)
        for kind, arg in self._actions:
            if kind == MINUS:
                if sel is not False:
                    assert isinstance(arg, Pattern)  # for mypy: a MINUS/PLUS action's arg is its Pattern
                    sel = _and_not(sel, _vector(arg, lines, stamp, cache), n)
            elif kind == PLUS:
                if sel is not True:
                    assert isinstance(arg, Pattern)
                    sel = _or(sel, _vector(arg, lines, stamp, cache), n)
            elif kind == DIR:
                result.append(sel)
            elif sel is False:
                continue
            elif kind == STDERR:
                if errs is not None:
                    errs.append(sel)
                    continue
                chosen = lines if sel is True else compress(lines, sel)
                self.seam.stderr(b"".join([line[:200] + b"...\n" if len(line) > 200 else line + _NL
                                           for line in chosen]))
            elif kind == FILE:
                assert isinstance(arg, int)  # for mypy: a FILE action's arg is its index in Script.files
                last = n - 1 if sel is True else sel.rfind(1)
                key = self._same[arg]
                if last >= last_of.get(key, (-1, 0))[0]:  # the same line later in the script: that =file wrote last
                    last_of[key] = (last, arg)
        if errs:
            self._stderr_in_line_order(lines, errs)
        for last, index in last_of.values():
            self._set_file(index, lines[last][:LINE_MAX])
        return result

    def _stderr_in_line_order(self, lines: list[bytes], sels: list[Chosen]) -> None:
        """Several ``e``: each line printed once per ``e`` that selected it, line after line (0.76's order)."""
        n = len(lines)
        if len(sels) < 256:  # 0/1 bytes added as one big number: no carry from one line to the next
            total = 0
            for sel in sels:
                total += int.from_bytes(b"\x01" * n if sel is True else sel, "little")
            counts: bytes | list[int] = total.to_bytes(n, "little")
        else:
            counts = [0] * n
            for sel in sels:
                counts = list(map(add, counts, b"\x01" * n if sel is True else sel))
        shown = [line[:200] + b"...\n" if len(line) > 200 else line + _NL for line in lines]
        self.seam.stderr(b"".join(map(mul, shown, counts)))

    def _set_file(self, index: int, line: bytes) -> None:
        """0.76's ``=file``: 1001 bytes at offset 0, the line padded with newlines; pause and retry on failure."""
        seam, fd, name = self.seam, self.files[index], self.script.files[index]
        data = line + _NL * (LINE_MAX + 1 - len(line))
        while True:
            try:
                seam.seek0(fd)
            except OSError as err:
                self._pause(f"unable to move to beginning of {name}", err.errno)
                continue
            try:
                if seam.write(fd, data) == len(data):
                    return
                err_no: int | None = seam.errno
            except OSError as err:
                err_no = err.errno
            self._pause(f"unable to write {name}", err_no)

    def _pause(self, text: str, err: int | None) -> None:
        self.seam.warn(f"{text}, pausing: {errtext(err)}")
        self.seam.sleep(5)

    # -- around the reads -------------------------------------------------------------------------
    def flush(self) -> None:
        """Write what every directory has queued (multilog does this before each read)."""
        for d in self.dirs:
            d.flush()

    def rotate_nonempty(self) -> None:
        """SIGALRM: rotate every directory whose current is not empty."""
        for d in self.dirs:
            d.flush()
        for d in self.dirs:
            if d.bytes > 0:
                d.rotate()

    def rotate_due(self) -> None:
        """``T`` extension: rotate the directories whose current has reached its age."""
        now = None
        for d in self.dirs:
            if d.age:
                if now is None:
                    now = self.seam.monotonic()
                if d.due(now):
                    d.flush()
                    d.rotate()

    def next_deadline(self) -> float | None:
        """Seconds until the next age rotation is due (None: no deadline; 0: due now)."""
        times = [t for t in (d.deadline() for d in self.dirs) if t is not None]
        if not times:
            return None
        return max(0.0, min(times) - self.seam.monotonic())

    def close(self) -> None:
        """End of input: a partial last line gets its newline; every directory is flushed, fsync'ed, set 0744."""
        if self.line_open:
            if self._stream is not None:
                for d in self._stream:
                    d.put(_NL, 1)
                self._stream = None
            else:
                head, self._head = self._head, None
                assert head is not None  # for mypy: an open line not streamed is held in _head
                self._lines(head + _NL, self._stamp_of(head), 1)
            self.line_open = False
        for d in self.dirs:
            d.close()

    def release(self) -> None:
        """Close every descriptor and remove the counter blocks (the command's last act; tests, embedders)."""
        for d in self.dirs:
            d.release()
        for fd in self.files:
            self.seam.close(fd)
        self.files = []


class Pattern:
    """A ``+``/``-`` pattern, evaluated over all the lines of a chunk at once (0.76's match() per line)."""

    __slots__ = ("raw", "_regex", "_stamp", "_shape")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self._regex: Callable[[bytes, int, int], Match[bytes] | None] | None = None
        self._stamp: bytes | None = None
        self._shape: tuple[int, bytes] = (NEVER, b"")

    def matcher(self) -> Callable[[bytes, int, int], Match[bytes] | None]:
        """The compiled expression's match or fullmatch, called as (line, 0, 1000)."""
        if self._regex is None:
            import re

            source, prefix = regex(self.raw)
            compiled = re.compile(source, re.DOTALL)
            self._regex = compiled.match if prefix else compiled.fullmatch
        return self._regex

    def vector(self, lines: list[bytes], stamp: bytes) -> Selection:
        """True (all match), False (none) or a 0/1 byte per line; every line starts with STAMP."""
        if stamp != self._stamp:
            self._stamp = stamp
            self._shape = after_prefix(self.raw, stamp)
        kind, rest = self._shape
        if kind == NEVER:
            return False
        if kind == ANY:
            return True
        if kind == PREFIX:
            return _norm(bytes(map(bytes.startswith, lines, repeat(rest), repeat(len(stamp)), repeat(LINE_MAX))))
        if kind == EQUAL and len(stamp) + len(rest) < LINE_MAX:
            return _norm(bytes(map((stamp + rest).__eq__, lines)))
        return _norm(bytes(map(bool, map(self.matcher(), lines, repeat(0), repeat(LINE_MAX)))))


def _same_files(fds: list[int]) -> list[int]:
    """For each descriptor, the index of the first one open on the same file (device and inode)."""
    first: dict[tuple[int, int], int] = {}
    out = []
    for index, fd in enumerate(fds):
        try:
            st = os.fstat(fd)
        except OSError:
            out.append(index)
            continue
        out.append(first.setdefault((st.st_dev, st.st_ino), index))
    return out


def _vector(pattern: Pattern, lines: list[bytes], stamp: bytes, cache: dict[int, Selection]) -> Selection:
    """PATTERN's vector over LINES, computed once per chunk however often the script names it."""
    key = id(pattern)
    found = cache.get(key)
    if found is None:
        found = cache[key] = pattern.vector(lines, stamp)
    return found


def _norm(vec: bytes) -> Selection:
    if vec.find(1) < 0:
        return False
    if vec.find(0) < 0:
        return True
    return vec


def _and_not(sel: Chosen, vec: Selection, n: int) -> Selection:
    if vec is False:
        return sel
    if vec is True:
        return False
    if sel is True:
        return vec.translate(_NOT)
    a = int.from_bytes(sel, "little")
    b = int.from_bytes(vec, "little")
    return _norm((a & ~b).to_bytes(n, "little"))


def _or(sel: Selection, vec: Selection, n: int) -> Selection:
    if vec is False:
        return sel
    if vec is True or sel is True:
        return True
    if sel is False:
        return vec
    a = int.from_bytes(sel, "little")
    b = int.from_bytes(vec, "little")
    return _norm((a | b).to_bytes(n, "little"))
