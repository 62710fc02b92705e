"""tai64n and tai64nlocal (docs/CONTRACTS.md, TAI64N labels), checked against Debian's daemontools binaries.

tai64nlocal must give the same bytes as daemontools for every well-formed label, under several time
zones; malformed labels (where the real binary dies with SIGSEGV) are prefork-only tests asserting that
the line is copied unchanged. tai64n's labels depend on the clock, so both implementations are checked
for the same structure: valid labels, non-decreasing, inside the run's wall time, nanoseconds ending in
500, the lines after the 26-byte prefix equal to the input.
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import time
from pathlib import Path

import pytest
from conftest import ours, real
from hypothesis import given, settings
from hypothesis import strategies as st

from prefork import tai64n
from prefork.control.log.tai64n_cli import Stamper, stamp_of
from prefork.control.log.tai64nlocal import Converter

IMPLS = ("debian", "prefork")
ZONES = ["UTC", "Europe/Berlin", "America/New_York"]
if Path("/usr/share/zoneinfo/right/UTC").exists():
    ZONES.append("right/UTC")
LABEL_LINE = re.compile(rb"@([0-9a-f]{24}) ")
DATE = re.compile(rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{9}")


def command(impl: str, name: str) -> str:
    return real(name) if impl == "debian" else ours(name)


def env_for(tz: str = "UTC") -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "TZ": tz}


def run(impl: str, name: str, data: bytes = b"", tz: str = "UTC", **kw) -> subprocess.CompletedProcess:
    kw.setdefault("input", data)
    return subprocess.run([command(impl, name)], env=env_for(tz), capture_output=True, timeout=60, **kw)


def label(seconds: int, nanoseconds: int = 500) -> bytes:
    return tai64n.external(tai64n.pack(seconds, nanoseconds)).encode()


# -- tai64nlocal: differential corpus --------------------------------------------------------
LEAP_2016 = 1483228800  # 2017-01-01 00:00:00 UTC; right/ zones count 26 leap seconds before it
CORPUS: dict[str, bytes] = {
    "spec-example": b"@4000000037c219bf2ef02e94 mark\n",
    "epoch": label(0, 0) + b" epoch\n" + label(-10, 500) + b" label zero\n",
    "tai64-zero": b"@400000000000000000000000 x\n",
    "leap-1972": b"".join(label(s) + b" 1972\n" for s in range(78796790, 78796820, 3)),
    "leap-2016": b"".join(label(s) + b" 2016\n" for s in range(LEAP_2016 - 2, LEAP_2016 + 30)),
    "dst-changes": b"".join(label(s) + b" dst\n" for s in (1616893199, 1616893200, 1635641999, 1635642000,
                                                            1615705199, 1615705200, 1636264799, 1636264800)),
    "now-ish": label(1_790_000_000, 123_456_500) + b" tcpserver: status: 1/40\n",
    "year-9999": label(253402300799) + b" end of 9999\n",
    "year-10000": label(253402300800) + b" five digits\n",
    "far-future": label(2**55, 1500) + b" year 1141709097\n",
    "before-year-1": label(-100_000_000_000, 1500) + b" fmt_ulong of a negative year\n",
    "nanoseconds-0": label(1_000_000_000, 0) + b" n\n",
    "nanoseconds-999999999": label(1_000_000_000, 999_999_999) + b" n\n",
    "nanoseconds-1000000000": label(1_000_000_000, 1_000_000_000) + b" ten digits\n",
    "nanoseconds-ffffffff": label(1_000_000_000, 0xFFFFFFFF) + b" ten digits\n",
    "no-at": b"plain line\nanother @400000006b07c00b27dc1bf4 not at the start\n",
    "empty-lines": b"\n\n" + label(1_000_000_000) + b"\n\n",
    "label-then-newline": label(1_234_567_890) + b"\n",
    "label-then-text": label(1_234_567_890) + b"xyz\n",
    "label-then-uppercase": label(1_234_567_890) + b"ABC\n",
    "label-then-tab": label(1_234_567_890) + b"\tfield\n",
    "partial-last-line": label(1_234_567_890) + b" one\n" + label(1_234_567_891) + b" no newline",
    "partial-plain": b"first\nsecond without newline",
    "cr-bytes": label(1_234_567_890) + b"\r\n" + label(1_234_567_890) + b" a\rb\r\n\r\n",
    "nul-bytes": label(1_234_567_890) + b" \0nul\0\n\0" + label(1_234_567_890) + b"\n",
    "high-bytes": label(1_234_567_890) + b" \xff\xfe\x80 latin-1 \xe9\n\xc3\xa9\n",
    "long-line": label(1_234_567_890) + b" " + b"x" * 300_000 + b"\n" + label(1_234_567_891) + b" after\n",
}


@pytest.mark.differential
@pytest.mark.parametrize("tz", ZONES)
@pytest.mark.parametrize("case", sorted(CORPUS))
def test_tai64nlocal_matches_daemontools(case, tz):
    data = CORPUS[case]
    d, p = run("debian", "tai64nlocal", data, tz), run("prefork", "tai64nlocal", data, tz)
    assert d.returncode == 0, d  # the corpus holds only labels daemontools can convert
    assert (p.returncode, p.stdout, p.stderr) == (d.returncode, d.stdout, d.stderr)


@pytest.mark.differential
def test_tai64nlocal_spec_examples():
    assert run("prefork", "tai64nlocal", CORPUS["spec-example"], "UTC").stdout == b"1999-08-24 04:04:05.787492500 mark\n"
    if "right/UTC" in ZONES:
        out = run("prefork", "tai64nlocal", CORPUS["spec-example"], "right/UTC").stdout
        assert out == b"1999-08-24 04:03:43.787492500 mark\n"


@pytest.mark.differential
def test_tai64nlocal_leap_second_is_shown_as_60_in_right_zones():
    if "right/UTC" not in ZONES:
        pytest.skip("no right/ zones installed")
    out = run("prefork", "tai64nlocal", label(LEAP_2016 + 26) + b"\n", "right/UTC").stdout
    assert out == b"2016-12-31 23:59:60.000000500\n"
    assert run("debian", "tai64nlocal", label(LEAP_2016 + 26) + b"\n", "right/UTC").stdout == out


@pytest.mark.differential
def test_tai64nlocal_matches_daemontools_on_the_output_of_tai64n(tmp_path):
    lines = b"".join(b"tcpserver: pid %d from 127.0.0.1\n" % i for i in range(5000))
    stamped = run("prefork", "tai64n", lines).stdout
    for tz in ZONES:
        d, p = run("debian", "tai64nlocal", stamped, tz), run("prefork", "tai64nlocal", stamped, tz)
        assert p.returncode == d.returncode == 0
        assert p.stdout == d.stdout


@pytest.mark.differential
def test_tai64nlocal_input_arriving_in_pieces_matches_daemontools():
    """Labels and lines cut across reads (a pipe written a few bytes at a time) convert the same."""
    data = CORPUS["leap-2016"] + CORPUS["cr-bytes"] + CORPUS["partial-last-line"]
    outs = {}
    for impl in IMPLS:
        proc = subprocess.Popen([command(impl, "tai64nlocal")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                env=env_for("UTC"))
        try:
            for i in range(0, len(data), 7):
                proc.stdin.write(data[i:i + 7])
                proc.stdin.flush()
                if i % 700 == 0:
                    time.sleep(0.005)
            proc.stdin.close()
            outs[impl] = proc.stdout.read()
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert outs["prefork"] == outs["debian"]


@pytest.mark.differential
def test_tai64nlocal_empty_input():
    for impl in IMPLS:
        r = run(impl, "tai64nlocal", b"")
        assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")


@pytest.mark.differential
def test_tai64nlocal_writes_each_line_before_the_next_read():
    for impl in IMPLS:
        proc = subprocess.Popen([command(impl, "tai64nlocal")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                env=env_for("UTC"))
        try:
            proc.stdin.write(label(1_234_567_890) + b" first\n")
            proc.stdin.flush()
            assert read_some(proc.stdout.fileno(), 5.0) == b"2009-02-13 23:31:30.000000500 first\n", impl
        finally:
            proc.stdin.close()
            proc.wait(timeout=10)


# -- tai64nlocal: malformed labels (daemontools dies with SIGSEGV; prefork copies the line) ----
MALFORMED = {
    "bare-at": b"@\n",
    "at-space": b"@ text\n",
    "short": b"@400000006b07c00b27dc1bf text\n",
    "long": b"@400000006b07c00b27dc1bf4a text\n",
    "uppercase": b"@400000006B07C00B27DC1BF4 text\n",
    "uppercase-at-the-end": b"@400000006b07c00b27dc1bF4 text\n",
    "non-hex-inside": b"@400000006b07c00bx7dc1bf4 text\n",
    "seconds-before-2^62": b"@000000006b07c00b27dc1bf4 text\n",
    "seconds-top-bit": b"@ffffffffffffffff27dc1bf4 text\n",
    "year-beyond-int": b"@7fffffffffffffff00000000 text\n",
    "double-at": b"@@4000000037c219bf2ef02e94 text\n",
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_tai64nlocal_copies_a_malformed_label_unchanged(case):
    data = MALFORMED[case]
    good = label(1_234_567_890) + b" ok\n"
    r = run("prefork", "tai64nlocal", good + data + good, "UTC")
    assert (r.returncode, r.stderr) == (0, b"")
    assert r.stdout == b"2009-02-13 23:31:30.000000500 ok\n" + data + b"2009-02-13 23:31:30.000000500 ok\n"


@pytest.mark.differential
def test_daemontools_tai64nlocal_crashes_on_a_malformed_label():
    """The deliberate difference above is real: the C program dies with SIGSEGV."""
    r = run("debian", "tai64nlocal", b"@\n")
    assert r.returncode == -11


def test_tai64nlocal_partial_bare_at_is_copied():
    r = run("prefork", "tai64nlocal", b"line\n@")
    assert (r.returncode, r.stdout) == (0, b"line\n@")


def test_tai64nlocal_partial_short_label_is_copied():
    r = run("prefork", "tai64nlocal", b"@4000000037c219bf2ef02e9")
    assert (r.returncode, r.stdout) == (0, b"@4000000037c219bf2ef02e9")


def test_tai64nlocal_partial_last_line_that_is_only_a_label_is_converted():
    # daemontools prints nothing for it (it hits EOF while reading the digits); prefork converts it
    r = run("prefork", "tai64nlocal", b"@4000000037c219bf2ef02e94")
    assert (r.returncode, r.stdout) == (0, b"1999-08-24 04:04:05.787492500")


def test_tai64nlocal_ten_megabyte_binary_line_streams_through():
    body = bytes(range(256)).replace(b"\n", b"") * 40_000
    data = label(1_234_567_890) + b" " + body + b"\n" + b"@" + body[:1000] + b"\n"
    r = run("prefork", "tai64nlocal", data)
    assert r.returncode == 0
    assert r.stdout == b"2009-02-13 23:31:30.000000500 " + body + b"\n" + b"@" + body[:1000] + b"\n"


@pytest.mark.parametrize("impl", IMPLS)
def test_tai64nlocal_write_error_exits_111(impl):
    with open("/dev/full", "wb") as full:
        r = subprocess.run([command(impl, "tai64nlocal")], input=label(0) + b" x\n", stdout=full,
                           stderr=subprocess.PIPE, env=env_for(), timeout=30)
    assert (r.returncode, r.stderr) == (111, b"")


@pytest.mark.parametrize("impl", IMPLS)
def test_tai64nlocal_read_error_exits_111(impl, tmp_path):
    with open(tmp_path / "f", "wb") as writeonly:  # read() on a write-only descriptor fails with EBADF
        r = subprocess.run([command(impl, "tai64nlocal")], stdin=writeonly, capture_output=True, env=env_for(),
                           timeout=30)
    assert (r.returncode, r.stdout, r.stderr) == (111, b"", b"")


def test_tai64nlocal_help():
    r = subprocess.run([ours("tai64nlocal"), "--help"], capture_output=True, stdin=subprocess.DEVNULL, timeout=30)
    assert r.returncode == 0 and r.stdout.startswith(b"usage: tai64nlocal") and r.stderr == b""


# -- tai64nlocal: the library --------------------------------------------------------------------
def convert_in_pieces(data: bytes, cuts: list[int]) -> bytes:
    conv, out, last = Converter(), [], 0
    for cut in sorted(set(cuts)) + [len(data)]:
        out.append(conv.feed(data[last:cut]))
        last = cut
    out.append(conv.finish())
    return b"".join(out)


def test_converter_every_single_cut_gives_the_same_output():
    data = CORPUS["partial-last-line"] + b"\n" + MALFORMED["long"] + CORPUS["cr-bytes"] + b"@" + label(5)[1:]
    whole = convert_in_pieces(data, [])
    for cut in range(len(data) + 1):
        assert convert_in_pieces(data, [cut]) == whole, cut


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([label(1_234_567_890), label(2**40, 10**9), b"@", b"@4000", b"a", b" ", b"\n",
                                 b"\r", b"\0", b"f", b"F", MALFORMED["short"], CORPUS["nul-bytes"]]), max_size=30),
       st.lists(st.integers(0, 400), max_size=8))
def test_converter_output_does_not_depend_on_how_the_input_is_cut(parts, cuts):
    data = b"".join(parts)
    assert convert_in_pieces(data, [c for c in cuts if c <= len(data)]) == convert_in_pieces(data, [])


def test_converter_holds_back_at_most_a_label():
    conv = Converter()
    assert conv.feed(b"@4000000037c219bf") == b""
    assert conv.feed(b"2ef02e94 mark") == conv.convert_lines(b"@4000000037c219bf2ef02e94 mark")
    assert conv.feed(b" more") == b" more"  # the rest of a long line is never held
    assert conv.feed(b"\n@x") == b"\n@x"
    assert conv.finish() == b""


# -- tai64n ------------------------------------------------------------------------------------
def check_stamped(out: bytes, data: bytes, start_ns: int, end_ns: int) -> list[tuple[int, int]]:
    """Assert OUT is DATA with a valid label before each line, inside [start, end]; return the labels."""
    labels: list[tuple[int, int]] = []
    rebuilt = []
    pos = 0
    while pos < len(out):
        m = LABEL_LINE.match(out, pos)
        assert m, out[pos:pos + 40]
        labels.append(tai64n.unpack(bytes.fromhex(m.group(1).decode())))
        end = out.find(b"\n", m.end())
        end = len(out) if end < 0 else end + 1
        rebuilt.append(out[m.end():end])
        pos = end
    assert b"".join(rebuilt) == data
    stamps = [s * 10**9 + n for s, n in labels]
    assert stamps == sorted(stamps)
    for _, n in labels:
        assert n % 1000 == 500 and n < 10**9  # microseconds * 1000 + 500, as djb's timestamp()
    if stamps:
        assert start_ns - 10**6 <= stamps[0] and stamps[-1] <= end_ns + 10**6
    return labels


def stamp(impl: str, data: bytes) -> tuple[subprocess.CompletedProcess, int, int]:
    start = time.time_ns()
    r = run(impl, "tai64n", data)
    return r, start, time.time_ns()


@pytest.mark.differential
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", ["lines", "partial", "empty-lines", "binary", "many"])
def test_tai64n_output_structure(impl, case):
    data = {
        "lines": b"tcpserver: status: 1/40\ntcpserver: pid 4242 from 127.0.0.1\n",
        "partial": b"one\ntwo without newline",
        "empty-lines": b"\n\nx\n\n",
        "binary": b"\0\r\n\xff\xfe\r\r\n\0",
        "many": b"".join(b"line %d %s\n" % (i, b"y" * (i % 150)) for i in range(20_000)),
    }[case]
    r, start, end = stamp(impl, data)
    assert (r.returncode, r.stderr) == (0, b"")
    labels = check_stamped(r.stdout, data, start, end)
    assert len(labels) == data.count(b"\n") + (not data.endswith(b"\n"))


@pytest.mark.differential
@pytest.mark.parametrize("impl", IMPLS)
def test_tai64n_partial_last_line_keeps_no_newline(impl):
    r, _, _ = stamp(impl, b"a\nb")
    assert r.returncode == 0
    assert re.fullmatch(rb"@[0-9a-f]{24} a\n@[0-9a-f]{24} b", r.stdout)


@pytest.mark.differential
@pytest.mark.parametrize("impl", IMPLS)
def test_tai64n_empty_line_is_a_label_and_a_space(impl):
    r, _, _ = stamp(impl, b"\n")
    assert re.fullmatch(rb"@[0-9a-f]{24} \n", r.stdout)


@pytest.mark.differential
@pytest.mark.parametrize("impl", IMPLS)
def test_tai64n_empty_input_gives_nothing(impl):
    r, _, _ = stamp(impl, b"")
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")


def read_some(fd: int, timeout: float) -> bytes:
    """Whatever arrives on FD within TIMEOUT seconds, waiting for the first newline."""
    got = b""
    deadline = time.monotonic() + timeout
    for _ in range(1000):
        left = deadline - time.monotonic()
        if left <= 0 or got.endswith(b"\n"):
            break
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        got += chunk
    return got


@pytest.mark.differential
@pytest.mark.parametrize("impl", IMPLS)
def test_tai64n_label_is_the_time_of_the_first_byte(impl):
    proc = subprocess.Popen([command(impl, "tai64n")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env=env_for())
    try:
        before = time.time_ns()
        proc.stdin.write(b"ab")
        proc.stdin.flush()
        time.sleep(0.3)
        second = time.time_ns()
        proc.stdin.write(b"c\n")
        proc.stdin.flush()
        line = read_some(proc.stdout.fileno(), 10.0)
        proc.stdin.close()
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    m = LABEL_LINE.match(line)
    assert m and line[m.end():] == b"abc\n", line
    s, n = tai64n.unpack(bytes.fromhex(m.group(1).decode()))
    assert before - 10**6 <= s * 10**9 + n < second


@pytest.mark.differential
@pytest.mark.parametrize("impl", IMPLS)
def test_tai64n_writes_each_line_before_the_next_read(impl):
    proc = subprocess.Popen([command(impl, "tai64n")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env=env_for())
    try:
        for text in (b"first\n", b"second\n"):
            proc.stdin.write(text)
            proc.stdin.flush()
            line = read_some(proc.stdout.fileno(), 5.0)
            assert LABEL_LINE.match(line) and line.endswith(b" " + text), line
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)


@pytest.mark.differential
@pytest.mark.parametrize("impl", IMPLS)
def test_tai64n_write_error_exits_111(impl):
    with open("/dev/full", "wb") as full:
        r = subprocess.run([command(impl, "tai64n")], input=b"x\n", stdout=full, stderr=subprocess.PIPE,
                           env=env_for(), timeout=30)
    assert (r.returncode, r.stderr) == (111, b"")


@pytest.mark.differential
@pytest.mark.parametrize("impl", IMPLS)
def test_tai64n_closed_stdout_exits_111(impl):
    r = subprocess.run(["/bin/sh", "-c", 'exec "$0" >&-', command(impl, "tai64n")], input=b"x\n",
                       stderr=subprocess.PIPE, env=env_for(), timeout=30)
    assert (r.returncode, r.stderr) == (111, b"")


@pytest.mark.differential
@pytest.mark.parametrize("impl", IMPLS)
def test_tai64n_read_error_exits_111(impl, tmp_path):
    with open(tmp_path / "f", "wb") as writeonly:  # read() on a write-only descriptor fails with EBADF
        r = subprocess.run([command(impl, "tai64n")], stdin=writeonly, capture_output=True, env=env_for(), timeout=30)
    assert (r.returncode, r.stdout, r.stderr) == (111, b"", b"")


@pytest.mark.differential
def test_tai64n_stdin_a_directory(tmp_path):
    """daemontools: read() fails with EISDIR, exit 111. prefork cannot match it: the Python interpreter itself
    refuses to start with a directory on stdin (``Fatal Python error: ... <stdin> is a directory``) before any
    prefork code runs. It still fails without output."""
    d = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        deb = subprocess.run([real("tai64n")], stdin=d, capture_output=True, env=env_for(), timeout=30)
        ours_ = subprocess.run([ours("tai64n")], stdin=d, capture_output=True, env=env_for(), timeout=30)
    finally:
        os.close(d)
    assert (deb.returncode, deb.stdout, deb.stderr) == (111, b"", b"")
    assert ours_.returncode != 0 and ours_.stdout == b""


@pytest.mark.differential
@pytest.mark.parametrize("impl", IMPLS)
def test_tai64n_closed_pipe_kills_it_with_sigpipe(impl):
    proc = subprocess.Popen([command(impl, "tai64n")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env_for())
    try:
        proc.stdout.close()  # nobody reads: the first write gets EPIPE, which kills a C program
        proc.stdin.write(b"x\n")
        proc.stdin.close()
        assert proc.wait(timeout=10) == -13
        assert proc.stderr.read() == b""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_tai64n_help():
    r = subprocess.run([ours("tai64n"), "--help"], capture_output=True, stdin=subprocess.DEVNULL, timeout=30)
    assert r.returncode == 0 and r.stdout.startswith(b"usage: tai64n") and r.stderr == b""


def test_tai64n_then_tai64nlocal():
    stamped = run("prefork", "tai64n", b"one\ntwo\n").stdout
    r = run("prefork", "tai64nlocal", stamped, "UTC")
    lines = r.stdout.split(b"\n")
    assert [DATE.sub(b"D", x) for x in lines] == [b"D one", b"D two", b""]


# -- tai64n: the library -------------------------------------------------------------------------
def test_stamper_stamps_only_lines_starting_in_a_chunk():
    s1, s2 = stamp_of(tai64n.pack(1, 500)), stamp_of(tai64n.pack(2, 500))
    st_ = Stamper()
    assert st_.feed(b"a\nb", s1) == s1 + b"a\n" + s1 + b"b"
    assert st_.feed(b"c\nd\n", s2) == b"c\n" + s2 + b"d\n"
    assert st_.feed(b"", s2) == b""
    assert st_.feed(b"\n", s1) == s1 + b"\n"
    assert st_.feed(b"x", s2) == s2 + b"x"
    assert st_.feed(b"y\n", s1) == b"y\n"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.lists(st.integers(0, 200), max_size=6))
def test_stamper_keeps_every_byte(data, cuts):
    s = stamp_of(tai64n.pack(3, 500))
    stamper, out, last = Stamper(), [], 0
    for cut in sorted({c for c in cuts if c <= len(data)}) + [len(data)]:
        out.append(stamper.feed(data[last:cut], s))
        last = cut
    assert b"".join(out).replace(s, b"") == data.replace(s, b"")
    assert b"".join(out) == Stamper().feed(data, s)
