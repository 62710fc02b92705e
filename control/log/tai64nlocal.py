"""tai64nlocal: turn the TAI64N labels at the start of lines into local time (daemontools 0.76).

A line starting with ``@`` and exactly 24 lowercase hex digits (then any byte
that is not one, or the end of the input) gets them replaced by
``YYYY-MM-DD HH:MM:SS.NNNNNNNNN`` from ``localtime()`` (so TZ, including the
right/ zones with leap seconds, is honoured); everything after the digits is
copied as it is.  Every other line is copied unchanged, which is where this
differs on purpose from daemontools: its tai64nlocal dies with SIGSEGV on a
short, long or uppercase label (or one localtime() cannot place).  Output that
daemontools does produce is reproduced byte for byte, quirks included: a
nanosecond field above 999999999 prints all its 10 digits and a year before 1
prints as the unsigned 64-bit number C's fmt_ulong makes of it.  One more
difference: a last line that is only a label, without a newline, is converted;
daemontools prints nothing for it.

Works on bytes in big chunks: one regular-expression pass over the complete
lines of each read, with the date text cached per second.  Lines of any length
stream through; only an undecided label (at most 25 bytes) is held back
between reads.  Output is written before every read.
"""

from __future__ import annotations

import os
import re
import sys
import time

from prefork.control.log.tai64n_cli import EXIT_IO, filter_main, write_all
from prefork.tai64n import OFFSET

USAGE = (
    b"usage: tai64nlocal < input > output\n"
    b"Replaces the TAI64N label (@ + 24 hex digits) at the start of each line by the local time\n"
    b"YYYY-MM-DD HH:MM:SS.NNNNNNNNN (TZ is honoured); other lines are copied unchanged.\n"
    b"Exit 0 at end of input, 111 on a read or write error.\n"
)
CHUNK = 1 << 17
LABEL_DIGITS = 24
# A label: @, 16 hex digits of seconds, 8 of nanoseconds, and no further hex digit.
_LABEL = re.compile(rb"^@([0-9a-f]{16})([0-9a-f]{8})(?![0-9a-f])", re.MULTILINE)
_HEX_RUN = re.compile(rb"@[0-9a-f]*")
_CACHE_MAX = 4096  # distinct seconds remembered (memory stays bounded whatever the input)
_MISSING = object()


def local_prefix(seconds_hex: bytes) -> bytes | None:
    """``YYYY-MM-DD HH:MM:SS.`` for the 16 hex digits of a label's seconds; None when localtime() cannot place it."""
    try:
        t = time.localtime(int(seconds_hex, 16) - OFFSET)
    except (OverflowError, OSError, ValueError):
        return None
    year = t.tm_year if t.tm_year >= 0 else t.tm_year + (1 << 64)  # daemontools: fmt_ulong(1900 + tm_year)
    return b"%d-%02d-%02d %02d:%02d:%02d." % (year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec)


class Converter:
    """Converts a stream read in chunks: ``feed()`` each chunk, ``finish()`` at the end of the input."""

    __slots__ = ("_cache", "_head", "_midline")

    def __init__(self) -> None:
        self._cache: dict[bytes, bytes | None] = {}
        self._head = b""  # start of the current line, held back while it may still be a label (<= 25 bytes)
        self._midline = False  # the start of the current line has been written: copy up to its newline

    def _replace(self, m: re.Match[bytes]) -> bytes:
        secs = m.group(1)
        prefix = self._cache.get(secs, _MISSING)
        if prefix is _MISSING:
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            prefix = self._cache[secs] = local_prefix(secs)
        if prefix is None:
            return m.group(0)
        return prefix + b"%09d" % int(m.group(2), 16)  # type: ignore[operator]  # bytes: _MISSING and None are handled

    def convert_lines(self, data: bytes) -> bytes:
        """DATA, which starts at a line start, with the label of each of its lines converted."""
        return _LABEL.sub(self._replace, data)

    def feed(self, data: bytes) -> bytes:
        """The output for the next chunk of input (possibly empty while a label is incomplete)."""
        out = b""
        if self._midline:
            end = data.find(b"\n") + 1
            if not end:
                return data
            self._midline = False
            out, data = data[:end], data[end:]
        if self._head:
            data = self._head + data
            self._head = b""
        if not data:
            return out
        end = data.rfind(b"\n") + 1
        if end == len(data):
            return out + self.convert_lines(data)
        if end:
            out += self.convert_lines(data[:end])
            data = data[end:]
        # data is now the start of a line whose newline has not arrived yet
        if data[0] == 0x40:  # "@"
            run = _HEX_RUN.match(data)
            assert run is not None  # for mypy: data starts with "@", which the pattern matches
            digits = run.end() - 1
            if digits + 1 == len(data) and digits <= LABEL_DIGITS:
                self._head = data  # the next byte decides whether this is a label
                return out
            data = _LABEL.sub(self._replace, data, count=1)
        self._midline = True
        return out + data

    def finish(self) -> bytes:
        """What is still held back at the end of the input: a last line that is only a (possibly partial) label."""
        head, self._head = self._head, b""
        self._midline = False
        return self.convert_lines(head) if head else b""


def run(infd: int = 0, outfd: int = 1, chunk: int = CHUNK) -> int:
    """Convert INFD onto OUTFD until end of input: 0, or 111 on a read or write error."""
    conv = Converter()
    while True:
        try:
            data = os.read(infd, chunk)
        except OSError:
            return EXIT_IO
        out = conv.feed(data) if data else conv.finish()
        try:
            if out:
                write_all(outfd, out)
        except OSError:
            return EXIT_IO
        if not data:
            return 0


def main(argv: list[str] | None = None) -> int:
    """Command entry point: ``tai64nlocal``."""
    return filter_main(argv, USAGE, run)


if __name__ == "__main__":
    sys.exit(main())
