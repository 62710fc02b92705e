"""multilog's script language (daemontools 0.76), parsed once; pure, no I/O.

A script is a list of words, each one action, read exactly as 0.76 reads them
(by the first byte only):

``t``         (first word only; ``tanything`` too) stamp each line with ``@`` + TAI64N + space
``-PATTERN``  deselect the line if it is selected and PATTERN matches
``+PATTERN``  select the line if it is not selected and PATTERN matches
``e...``      if selected, copy the line to stderr (first 200 bytes + ``...`` when longer)
``=FILE``     if selected, replace FILE's contents with the line (1001 bytes, ``\\n`` padded)
``sN``        file size for the directories after it: default 99999, clamped to 4096..16777215
              (``N`` read like djb's scan_ulong: leading digits, none = 0, wrapping at 2^64)
``nN``        number of files for the directories after it: default 10, at least 2
``!CMD``      processor for the directories after it (``/bin/sh -c CMD``)
``.dir /dir`` any word starting with ``.`` or ``/``: a log directory with the settings in force
anything else is ignored (0.76 does nothing with it).

Patterns see at most the first 1000 bytes of a line (the stamp included) and
use 0.76's ``*``: a star before the end skips to the *first* occurrence of the
byte after it (no backtracking), a star at the end matches the rest, the whole
line must be used.  ``*a`` does not match ``baa``; ``**`` needs a literal star.

Extensions beyond 0.76, off by default.  0.76 ignores these words (it only knows
the first bytes above), so a script using them still runs under daemontools:

``SBYTES``    total-size cap, in bytes, of the old files (``@*``) of the directories
              after it; after each rotation the oldest are removed until their sizes
              add up to at most BYTES (s6-log's ``S``).  ``S`` or ``S0``: no cap (default).
``TSECONDS``  rotation by age for the directories after it: a non-empty ``current``
              is rotated once its first byte is SECONDS old (a ``current`` found
              non-empty at start-up counts from then), even when no more input
              comes (svlogd's ``t``; upper case because 0.76 reads a first word
              ``t...`` as the stamp action).  ``T`` or ``T0``: off (default).
``M``         publish counters (lines, bytes, rotations, processor failures, pauses)
              for the directories after it, in a shared-memory block the metrics
              exporter reads (``prefork-exporter --multilog DIR``; layout and place:
              control/log/logcounters.py).  ``M`` or ``MN`` with N > 0: on; ``M0`` (or
              ``M`` followed by anything that is not a number above 0): off (default).
"""

from __future__ import annotations

import os

MIN_SIZE = 4096
MAX_SIZE = 16777215
DEFAULT_SIZE = 99999
DEFAULT_NUM = 10
MIN_NUM = 2
LINE_MAX = 1000  # bytes of a line (stamp included) that patterns, e and = see

# Action kinds of Script.actions.
MINUS, PLUS, STDERR, FILE, DIR = range(5)

_STAR = 42  # b"*"
_ULONG = 1 << 64


class DirSpec:
    """One log directory of a script and the settings in force where it was named."""

    __slots__ = ("path", "size", "num", "processor", "total", "age", "metrics")

    def __init__(self, path: str, size: int = DEFAULT_SIZE, num: int = DEFAULT_NUM, processor: str | None = None,
                 total: int = 0, age: int = 0, metrics: bool = False) -> None:
        self.path = path
        self.size = size
        self.num = num
        self.processor = processor
        self.total = total
        self.age = age
        self.metrics = metrics

    def __repr__(self) -> str:
        return (f"DirSpec({self.path!r}, size={self.size}, num={self.num}, processor={self.processor!r}, "
                f"total={self.total}, age={self.age}, metrics={self.metrics})")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DirSpec) and all(getattr(self, k) == getattr(other, k) for k in self.__slots__)


class Script:
    """A parsed script: the per-line actions in order, and what they refer to.

    ``actions`` holds ``(kind, arg)`` pairs: ``(MINUS|PLUS, pattern bytes)``,
    ``(STDERR, None)``, ``(FILE, index into files)``, ``(DIR, index into dirs)``.
    """

    __slots__ = ("timestamp", "actions", "files", "dirs")

    def __init__(self, timestamp: bool, actions: list[tuple[int, object]], files: list[str],
                 dirs: list[DirSpec]) -> None:
        self.timestamp = timestamp
        self.actions = actions
        self.files = files
        self.dirs = dirs

    @property
    def selects(self) -> bool:
        """Whether any action can deselect a line or needs lines one by one (else every dir gets every line)."""
        return any(kind != DIR for kind, _ in self.actions)


def scan_ulong(text: str) -> int:
    """djb's scan_ulong: the leading decimal digits as an unsigned long (0 when there are none)."""
    result = 0
    for ch in text:
        if not "0" <= ch <= "9":
            break
        result = (result * 10 + ord(ch) - 48) % _ULONG
    return result


def parse(words: list[str]) -> Script:
    """The script of multilog's arguments, as 0.76 reads them; never fails (unknown words are ignored)."""
    timestamp = bool(words) and words[0][:1] == "t"
    actions: list[tuple[int, object]] = []
    files: list[str] = []
    dirs: list[DirSpec] = []
    size, num, processor, total, age, metrics = DEFAULT_SIZE, DEFAULT_NUM, None, 0, 0, False
    for word in words:
        first = word[:1]
        if first == "-" or first == "+":
            actions.append((MINUS if first == "-" else PLUS, os.fsencode(word[1:])))
        elif first == "e":
            actions.append((STDERR, None))
        elif first == "=":
            actions.append((FILE, len(files)))
            files.append(word[1:])
        elif first == "s":
            size = min(max(scan_ulong(word[1:]), MIN_SIZE), MAX_SIZE)
        elif first == "n":
            num = max(scan_ulong(word[1:]), MIN_NUM)
        elif first == "!":
            processor = word[1:]
        elif first == "S":
            total = scan_ulong(word[1:])
        elif first == "T":
            age = scan_ulong(word[1:])
        elif first == "M":
            metrics = word == "M" or scan_ulong(word[1:]) != 0
        elif first == "." or first == "/":
            actions.append((DIR, len(dirs)))
            dirs.append(DirSpec(word, size, num, processor, total, age, metrics))
    return Script(timestamp, actions, files, dirs)


def match(pattern: bytes, line: bytes) -> bool:
    """0.76's match(): the reference semantics, byte for byte (no backtracking)."""
    p = b = 0
    plen, blen = len(pattern), len(line)
    while True:
        if p == plen:
            return b == blen
        ch = pattern[p]
        p += 1
        if ch == _STAR:
            if p == plen:
                return True
            b = line.find(pattern[p], b)
            if b < 0:
                return False
            continue
        if b == blen or line[b] != ch:
            return False
        b += 1


def always(pattern: bytes) -> bool:
    """Whether PATTERN matches every line (``*``), so it needs no evaluation."""
    return pattern == b"*"


def regex(pattern: bytes) -> tuple[bytes, bool]:
    """A regular expression with exactly 0.76's semantics, and whether a prefix match is enough.

    ``*C`` becomes ``[^C]*+`` (possessive, so the first C is the only choice),
    with a look-ahead for C when C is itself a star; a final ``*`` ends the
    expression and the caller uses ``match`` instead of ``fullmatch``.
    """
    out = bytearray()
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        i += 1
        if ch == _STAR:
            if i == n:
                return bytes(out), True
            nxt = pattern[i]
            out += b"[^\\x%02x]*+" % nxt
            if nxt == _STAR:
                out += b"(?=\\*)"
        else:
            out += b"\\x%02x" % ch
    return bytes(out), False


# Shapes of a pattern once a known line prefix (the chunk's shared stamp) has been matched.
NEVER, ANY, PREFIX, EQUAL, GENERAL = range(5)


def after_prefix(pattern: bytes, prefix: bytes) -> tuple[int, bytes]:
    """What is left of matching PATTERN against any line that starts with PREFIX.

    Lines stamped in one read share their first 26 bytes, so the pattern is
    run over those once per read; what is left is often a plain
    ``startswith`` or ``==`` on the rest (``* fatal: *`` after a stamp is
    "the text starts with ``fatal: ``"), which needs no expression per line.
    Returns ``(NEVER|ANY, b"")``, ``(PREFIX, s)`` (the rest starts with s),
    ``(EQUAL, s)`` (the rest is s) or ``(GENERAL, b"")`` (run the whole pattern).
    """
    p, b = 0, 0
    plen, blen = len(pattern), len(prefix)
    while True:
        if p == plen:
            return (EQUAL, b"") if b == blen else (NEVER, b"")
        ch = pattern[p]
        if ch == _STAR:
            if p + 1 == plen:
                return ANY, b""
            found = prefix.find(pattern[p + 1], b)
            if found < 0:
                return GENERAL, b""
            b = found
            p += 1
            continue
        if b == blen:
            rest = pattern[p:]
            star = rest.find(b"*")
            if star < 0:
                return EQUAL, rest
            if star == len(rest) - 1:
                return PREFIX, rest[:-1]
            return GENERAL, b""
        if prefix[b] != ch:
            return NEVER, b""
        p += 1
        b += 1
