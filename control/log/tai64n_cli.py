"""tai64n: put a TAI64N label (as daemontools 0.76 does) before every line of the input.

The label is the time the line's first byte was read, so a line that arrives in
pieces keeps the time of its first piece.  Every line that starts inside one
read() was read at the same moment and gets the same label; the stamping is a
single ``bytes.replace`` per read, not a loop per byte.  Output is written
before the next read (daemontools flushes there too), a final line without a
newline is copied without one, and any read or write error ends the program
with 111 and no message.  Like the C program, a closed pipe kills it with
SIGPIPE.

Also home of the two helpers every stdin-to-stdout filter of metrics/ needs
(``write_all``, ``default_signals``).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

from prefork import tai64n

USAGE = (
    b"usage: tai64n < input > output\n"
    b"Puts @ + 24 hex digits (a TAI64N label: the time the line's first byte was read) and a space\n"
    b"before every input line. A last line without a newline is copied without one.\n"
    b"Exit 0 at end of input, 111 on a read or write error.\n"
)
CHUNK = 1 << 17  # bytes per read(): whatever has arrived, up to this much, is stamped at once
EXIT_IO = 111


def default_signals() -> None:
    """Give back the dispositions a C filter has: Python ignores SIGPIPE/SIGXFSZ and turns SIGINT into a traceback."""
    for name in ("SIGPIPE", "SIGXFSZ"):
        sig = getattr(signal, name, None)
        if sig is not None:
            signal.signal(sig, signal.SIG_DFL)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # left alone when inherited as ignored
        signal.signal(signal.SIGINT, signal.SIG_DFL)


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of DATA to FD (a pipe may take less than asked); OSError on failure."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def stamp_of(label: bytes) -> bytes:
    """``@`` + 24 lowercase hex digits + a space: what goes before a line stamped with the binary LABEL."""
    return tai64n.external(label).encode("ascii") + b" "


class Stamper:
    """Stamps a stream read in chunks; remembers whether the last chunk ended inside a line."""

    __slots__ = ("midline",)

    def __init__(self) -> None:
        self.midline = False  # the last chunk ended without a newline: its line is already stamped

    def feed(self, data: bytes, stamp: bytes) -> bytes:
        """The output for DATA, every line that starts in it stamped with STAMP (``@label `` as from stamp_of)."""
        if not data:
            return b""
        head = b""
        if self.midline:
            end = data.find(b"\n") + 1
            if not end:
                return data
            self.midline = False
            if end == len(data):
                return data
            head, data = data[:end], data[end:]
        body = stamp + data.replace(b"\n", b"\n" + stamp)
        if data[-1] == 0x0A:  # the replace put a stamp after the final newline: it belongs to no line yet
            body = body[: -len(stamp)]
        else:
            self.midline = True
        return head + body if head else body


def run(infd: int = 0, outfd: int = 1, chunk: int = CHUNK) -> int:
    """Stamp INFD onto OUTFD until end of input: 0, or 111 on a read or write error."""
    stamper = Stamper()
    while True:
        try:
            data = os.read(infd, chunk)
        except OSError:
            return EXIT_IO
        if not data:
            return 0
        out = stamper.feed(data, stamp_of(tai64n.now()))
        try:
            write_all(outfd, out)
        except OSError:
            return EXIT_IO


def filter_main(argv: list[str] | None, usage: bytes, body: Callable[[], int]) -> int:
    """The command line of tai64n and tai64nlocal: arguments ignored as daemontools does, ``--help`` first prints USAGE."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--help"]:
        try:
            write_all(1, usage)
        except OSError:
            return EXIT_IO
        return 0
    default_signals()
    return body()


def main(argv: list[str] | None = None) -> int:
    """Command entry point: ``tai64n``."""
    return filter_main(argv, USAGE, run)


if __name__ == "__main__":
    sys.exit(main())
