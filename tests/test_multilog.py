"""multilog (docs/CONTRACTS.md, multilog script; multilog directory): the script parser, 0.76's patterns, the engine driven directly, and the command.

Logic runs through :class:`prefork.control.log.multilog.Multilog` with a seam that keeps the real files but fakes the
clock, the sleeps and stderr.  The command is compared with Debian's multilog: same script and input give
the same files, modes, line contents after the timestamp, ``=file`` bytes, stderr bytes and exit codes;
where the files are cut at different lines (docs/CONTRACTS.md, multilog directory allows it) the concatenated contents and the size
bounds are compared instead.  Faults (disk full, failing processors, kill -9) are in test_multilog_faults.py.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import struct
import subprocess
import termios
import time
import tracemalloc
from pathlib import Path

import pytest
from conftest import ours, real
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefork import tai64n
from prefork.control.log import logscript
from prefork.control.log.logdir import Fatal, Seam
from prefork.control.log.logscript import DirSpec, after_prefix, match, parse, scan_ulong
from prefork.control.log.multilog import Multilog, Pattern

ENV = {"PATH": "/usr/bin:/bin"}
STAMP = re.compile(rb"@[0-9a-f]{24} ")
IMPLS = ("debian", "prefork")


# -- helpers -------------------------------------------------------------------------------------------------
class FakeSeam(Seam):
    """Real files; a clock that ticks a microsecond per call, sleeps that only count, stderr kept."""

    def __init__(self, fixed: bool = False) -> None:
        super().__init__()
        self.usec = 1_700_000_000 * 1_000_000
        self.fixed = fixed
        self.mono = 1000.0
        self.sleeps: list[float] = []
        self.err = bytearray()

    def now(self) -> bytes:
        if not self.fixed:
            self.usec += 1
        return tai64n.pack(self.usec // 1_000_000, self.usec % 1_000_000 * 1000 + 500)

    def monotonic(self) -> float:
        return self.mono

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.mono += seconds

    def stderr(self, data: bytes) -> None:
        self.err += data


def make(*words: str, seam: Seam | None = None) -> Multilog:
    engine = Multilog(parse(list(words)), seam if seam is not None else FakeSeam())
    engine.open()
    return engine


def pump(engine: Multilog, data: bytes, size: int = 65536) -> None:
    """Feed DATA in reads of SIZE bytes (flushing before each, as the command does), then end the input."""
    for i in range(0, len(data), size):
        engine.feed(data[i:i + size])
        engine.flush()
    engine.close()
    engine.release()


def old_files(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.name.startswith("@"))


def contents(d: Path) -> bytes:
    """Every old file (oldest first) and current, concatenated: what the directory holds."""
    return b"".join(p.read_bytes() for p in [*old_files(d), d / "current"])


def unstamp(data: bytes, check_order: bool = True) -> bytes:
    """DATA with the 26-byte stamp removed from every line; each stamp must be valid and none may go backwards."""
    out, last = [], b""
    lines = data.split(b"\n")
    tail = lines.pop()
    assert tail == b"", "every line ends with a newline"
    for line in lines:
        assert STAMP.match(line), line[:40]
        label = line[1:25]
        assert int(label[16:], 16) % 1000 == 500  # microseconds * 1000 + 500, as djb's taia_now
        if check_order:
            assert label >= last
        last = label
        out.append(line[26:] + b"\n")
    return b"".join(out)


def numbered(count: int, width: int = 60) -> bytes:
    return b"".join(b"line %06d %s\n" % (i, b"x" * (i * 7 % width)) for i in range(count))


# -- the script ----------------------------------------------------------------------------------------------
def test_t_counts_only_as_the_first_word():
    assert parse(["t", "./a"]).timestamp
    assert parse(["tfoo", "./a"]).timestamp
    assert not parse(["./a", "t"]).timestamp
    assert not parse([]).timestamp


@pytest.mark.parametrize(("word", "size"), [("s100", 4096), ("s4096", 4096), ("s5000", 5000), ("s99999999", 16777215),
                                            ("sabc", 4096), ("s", 4096), ("s12x", 4096), ("size", 4096),
                                            ("s18446744073709551617", 4096), ("s16777215", 16777215)])
def test_size_is_scanned_like_scan_ulong_and_clamped(word, size):
    assert parse([word, "./a"]).dirs[0].size == size


@pytest.mark.parametrize(("word", "num"), [("n0", 2), ("n1", 2), ("n2", 2), ("n5", 5), ("nx", 2), ("n", 2)])
def test_number_of_files_has_a_minimum_of_two(word, num):
    assert parse([word, "./a"]).dirs[0].num == num


def test_scan_ulong_wraps_like_an_unsigned_long():
    assert scan_ulong("18446744073709551617") == 1
    assert scan_ulong("12abc") == 12
    assert scan_ulong("abc") == 0


def test_settings_apply_to_the_directories_after_them():
    script = parse(["./a", "s5000", "n3", "!cat", "/b", "S9000", "T60", ".c"])
    assert script.dirs == [DirSpec("./a"), DirSpec("/b", 5000, 3, "cat"), DirSpec(".c", 5000, 3, "cat", 9000, 60)]


def test_defaults_are_99999_bytes_and_10_files():
    assert parse(["./a"]).dirs == [DirSpec("./a", 99999, 10, None, 0, 0)]


def test_unknown_words_are_ignored():
    script = parse(["logx", "zzz", "x", "", ":foo", "ttt", "9"])
    assert (script.actions, script.files, script.dirs) == ([], [], [])


def test_actions_keep_their_order():
    script = parse(["t", "-a*", "e", "+b", "=f", "./d", "echo", "=g", "/x"])
    kinds = [kind for kind, _ in script.actions]
    assert kinds == [logscript.MINUS, logscript.STDERR, logscript.PLUS, logscript.FILE, logscript.DIR,
                     logscript.STDERR, logscript.FILE, logscript.DIR]
    assert script.files == ["f", "g"]
    assert script.actions[0] == (logscript.MINUS, b"a*")


def test_extension_words_are_off_by_default_and_ignored_by_the_actions():
    script = parse(["S", "T", "S0", "./a"])
    assert (script.dirs[0].total, script.dirs[0].age) == (0, 0)
    assert script.actions == [(logscript.DIR, 0)]


# -- patterns ------------------------------------------------------------------------------------------------
PATTERN_CASES = [
    (b"*a", b"baa", False), (b"*a", b"ba", True), (b"*a", b"a", True), (b"* one", b"  one", False),
    (b"* one", b"x one", True), (b"*", b"", True), (b"*", b"anything", True), (b"**", b"a*b", True),
    (b"**", b"ab", False), (b"**x", b"a*bx", True), (b"**x", b"a*xbx", False), (b"", b"", True),
    (b"", b"a", False), (b"a*", b"abc", True), (b"a*", b"b", False), (b"a*c", b"abcbc", False),
    (b"a*c", b"abc", True), (b"*:*", b"x:y", True), (b"*:*", b"xy", False), (b"ab", b"ab", True),
    (b"ab", b"abc", False), (b"*b*", b"aXb", True), (b"*\x00", b"a\x00", True),
]


@pytest.mark.parametrize(("pattern", "line", "expected"), PATTERN_CASES)
def test_match_has_0_76_semantics(pattern, line, expected):
    assert match(pattern, line) is expected


def as_bytes(vec: object, n: int) -> bytes:
    return b"\x01" * n if vec is True else bytes(n) if vec is False else vec  # type: ignore[return-value]


@pytest.mark.parametrize(("pattern", "line", "expected"), PATTERN_CASES)
def test_compiled_patterns_agree_with_the_reference(pattern, line, expected):
    assert as_bytes(Pattern(pattern).vector([line], b""), 1) == bytes([expected])


ALPHABET = st.sampled_from(b"ab* \x00\xff:")


@settings(max_examples=400, deadline=None)
@given(st.lists(ALPHABET, max_size=7).map(bytes), st.lists(st.lists(ALPHABET.filter(lambda c: c != 42), max_size=9)
                                                         .map(bytes), min_size=1, max_size=6))
def test_compiled_patterns_agree_with_match_for_any_input(pattern, lines):
    expected = bytes(match(pattern, line) for line in lines)
    assert as_bytes(Pattern(pattern).vector(lines, b""), len(lines)) == expected


@settings(max_examples=400, deadline=None)
@given(st.lists(ALPHABET, max_size=7).map(bytes), st.lists(ALPHABET, max_size=5).map(bytes),
       st.lists(st.lists(ALPHABET, max_size=6).map(bytes), min_size=1, max_size=5))
def test_patterns_after_a_shared_stamp_agree_with_match(pattern, prefix, rests):
    lines = [prefix + rest for rest in rests]
    expected = bytes(match(pattern, line) for line in lines)
    assert as_bytes(Pattern(pattern).vector(lines, prefix), len(lines)) == expected


def test_after_a_stamp_common_patterns_need_no_expression():
    stamp = b"@400000006b0802b71f5c01ec "
    assert after_prefix(b"* fatal: *", stamp) == (logscript.PREFIX, b"fatal: ")
    assert after_prefix(b"*", stamp) == (logscript.ANY, b"")
    assert after_prefix(b"x*", stamp) == (logscript.NEVER, b"")
    assert after_prefix(b"@* done", stamp) == (logscript.EQUAL, b"done")


def test_patterns_see_only_the_first_1000_bytes(tmp_path):
    seam = FakeSeam()
    engine = make("-*", "+*z", str(tmp_path / "d"), seam=seam)
    pump(engine, b"a" * 999 + b"z" + b"\n" + b"a" * 1000 + b"z\n")
    assert (tmp_path / "d" / "current").read_bytes() == b"a" * 999 + b"z\n"


# -- the engine ----------------------------------------------------------------------------------------------
def test_a_fresh_directory_holds_current_lock_and_state(tmp_path):
    pump(make("t", str(tmp_path / "d")), b"")
    d = tmp_path / "d"
    assert {p.name: oct(p.stat().st_mode & 0o7777) for p in d.iterdir()} == {
        "current": "0o744", "lock": "0o600", "state": "0o644"}
    assert oct(d.stat().st_mode & 0o777) == "0o700"


def test_stamps_the_lines_and_completes_a_partial_last_line(tmp_path):
    pump(make("t", str(tmp_path / "d")), b"one\n\ntwo")
    data = (tmp_path / "d" / "current").read_bytes()
    assert unstamp(data) == b"one\n\ntwo\n"


def test_lines_starting_in_one_read_share_a_label_later_reads_get_later_ones(tmp_path):
    engine = make("t", str(tmp_path / "d"))
    pump(engine, b"a\nb\nc\nd\n", size=4)
    lines = (tmp_path / "d" / "current").read_bytes().splitlines()
    assert lines[0][:25] == lines[1][:25] < lines[2][:25] == lines[3][:25]


def test_a_line_split_across_reads_keeps_the_label_of_its_first_byte(tmp_path):
    seam = FakeSeam()
    engine = make("t", str(tmp_path / "d"), seam=seam)
    engine.feed(b"x")
    first = seam.usec
    engine.feed(b"yz\nnext\n")
    pump(engine, b"")
    lines = (tmp_path / "d" / "current").read_bytes().splitlines()
    assert lines[0] == b"@" + tai64n.pack(first // 10**6, first % 10**6 * 1000 + 500).hex().encode() + b" xyz"
    assert lines[1][:25] > lines[0][:25]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from([b"", b"a", b"ab", b"ba", b"zz", b"a" * 1200, b"b" * 2100, b"x\x00y"]),
                max_size=25),
       st.lists(st.integers(min_value=1, max_value=900), min_size=1, max_size=8))
def test_any_chunking_gives_what_0_76_gives_line_by_line(tmp_path_factory, lines, sizes):
    """A model of 0.76's doit() over whole lines against the engine fed in arbitrary pieces."""
    where = tmp_path_factory.mktemp("chunk")
    seam = FakeSeam(fixed=True)
    stamp = b"@" + seam.now().hex().encode() + b" "
    words = ["t", "-*a*", "e", "+*b", str(where / "one"), "-*", "+@*a", "=" + str(where / "f"), str(where / "two")]
    engine = make(*words, seam=seam)
    data = b"".join(line + b"\n" for line in lines)
    pos, i = 0, 0
    while pos < len(data):
        size = sizes[i % len(sizes)]
        engine.feed(data[pos:pos + size])
        engine.flush()
        pos += size
        i += 1
    engine.close()
    engine.release()
    one, two, err, last_f = [], [], [], None
    for line in lines:
        full = stamp + line
        seen = full[:1000]
        sel = not match(b"*a*", seen)
        if sel:
            err.append(seen[:200] + b"...\n" if len(seen) > 200 else seen + b"\n")
        if not sel and match(b"*b", seen):
            sel = True
        if sel:
            one.append(full + b"\n")
        sel = match(b"@*a", seen)
        if sel:
            last_f = seen
            two.append(full + b"\n")
    assert (where / "one" / "current").read_bytes() == b"".join(one)
    assert (where / "two" / "current").read_bytes() == b"".join(two)
    assert bytes(seam.err) == b"".join(err)
    expected_f = b"" if last_f is None else last_f + b"\n" * (1001 - len(last_f))
    assert (where / "f").read_bytes() == expected_f


def test_binary_input_and_nul_bytes_pass_through_untouched(tmp_path):
    data = bytes(range(256)).replace(b"\n", b"") + b"\n\x00\n\x00\x00\xff\n"
    pump(make(str(tmp_path / "d"), "-*\x01*", str(tmp_path / "e")), data)
    assert (tmp_path / "d" / "current").read_bytes() == data
    assert (tmp_path / "e" / "current").read_bytes() == b"\x00\n\x00\x00\xff\n"


def test_a_10_mb_line_is_logged_whole_with_bounded_memory(tmp_path):
    big = b"q" * 10_000_000
    seam = FakeSeam()
    engine = make("n1000", str(tmp_path / "all"), "-*", "+q*", "e", str(tmp_path / "d"), "=" + str(tmp_path / "f"),
                  seam=seam)
    tracemalloc.start()
    try:
        for i in range(0, len(big), 65536):
            engine.feed(big[i:i + 65536])
            engine.flush()
        engine.feed(b"\nafter\n")
        engine.close()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        engine.release()
    assert peak < 2_000_000, peak  # the line is streamed, never held
    assert contents(tmp_path / "d") == big + b"\n"
    assert contents(tmp_path / "all") == big + b"\nafter\n"
    assert (tmp_path / "f").read_bytes() == b"q" * 1000 + b"\n"
    assert bytes(seam.err) == b"q" * 200 + b"...\n"


def test_e_prints_short_lines_whole_and_long_ones_cut_at_200_bytes(tmp_path):
    seam = FakeSeam(fixed=True)
    pump(make("e", seam=seam), b"short\n" + b"y" * 200 + b"\n" + b"z" * 201 + b"\n")
    assert bytes(seam.err) == b"short\n" + b"y" * 200 + b"\n" + b"z" * 200 + b"...\n"


def test_equals_file_holds_the_last_selected_line_in_1001_bytes(tmp_path):
    f = tmp_path / "f"
    engine = make("-please*", "=" + str(f))
    assert f.read_bytes() == b"" and oct(f.stat().st_mode & 0o777) == "0o600"
    pump(engine, b"first\nsecond\nplease skip me\n")
    assert f.read_bytes() == b"second" + b"\n" * 995


def test_equals_file_is_not_truncated_when_opened(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"x" * 2000)
    pump(make("=" + str(f)), b"abc\n")
    assert f.read_bytes() == b"abc" + b"\n" * 998 + b"x" * 999


def test_several_e_print_each_line_once_per_e_before_the_next_line(tmp_path):
    """0.76 runs the whole script over a line before reading the next: ``e e`` over 1, 2 prints 1 1 2 2."""
    seam = FakeSeam(fixed=True)
    pump(make("e", "e", seam=seam), b"1\n2\n")
    assert bytes(seam.err) == b"1\n1\n2\n2\n"
    seam = FakeSeam(fixed=True)
    pump(make("e", "-x", "e", "+*", "ex", seam=seam), b"1\nx\n" + b"y" * 300 + b"\n2", size=5)
    assert bytes(seam.err) == b"1\n1\n1\nx\nx\n" + (b"y" * 200 + b"...\n") * 3 + b"2\n2\n2\n"


def test_a_file_named_by_two_equals_gets_the_last_line_either_selected(tmp_path):
    """``=st - =st``: the empty line, written by the first ``=st`` after the second wrote ``a`` (as 0.76)."""
    for second in ("st", "./st", "st.symlink", "st.hardlink"):  # one file, whatever the name
        where = tmp_path / second.replace("/", "_")
        where.mkdir()
        (where / "st").write_bytes(b"")
        (where / "st.symlink").symlink_to("st")
        os.link(where / "st", where / "st.hardlink")
        pump(make("=" + str(where / "st"), "-", "=" + str(where / second)), b"a\n\n")
        assert (where / "st").read_bytes() == b"\n" * 1001, second
    f, g = tmp_path / "f", tmp_path / "g"
    pump(make("=" + str(f), "-b", "=" + str(g)), b"a\nb\n")  # two files: each its own last line
    assert (f.read_bytes(), g.read_bytes()) == (b"b" + b"\n" * 1000, b"a" + b"\n" * 1000)


@pytest.mark.parametrize("size", [4096, 5000, 10000])
def test_finished_files_are_s_minus_2000_to_s_bytes_and_end_at_a_line_end(tmp_path, size):
    data = numbered(3000)
    pump(make(f"s{size}", "n1000", str(tmp_path / "d")), data, size=777)
    olds = old_files(tmp_path / "d")
    assert len(olds) >= 3
    for p in olds:
        body = p.read_bytes()
        assert size - 2000 <= len(body) <= size and body.endswith(b"\n"), (p.name, len(body))
        assert oct(p.stat().st_mode & 0o777) == "0o744" and p.name.endswith(".s")
    assert contents(tmp_path / "d") == data


def test_lines_longer_than_the_file_size_are_cut_at_s(tmp_path):
    data = (b"L" * 9000 + b"\n") * 3
    pump(make("s4096", "n100", str(tmp_path / "d")), data)
    assert all(len(p.read_bytes()) <= 4096 for p in old_files(tmp_path / "d"))
    assert contents(tmp_path / "d") == data


def test_at_most_n_minus_1_old_files_are_kept_the_newest(tmp_path):
    data = numbered(3000)
    pump(make("s4096", "n3", str(tmp_path / "d")), data)
    olds = old_files(tmp_path / "d")
    assert len(olds) == 2
    assert data.endswith(contents(tmp_path / "d"))


def test_a_current_closed_cleanly_is_appended_to(tmp_path):
    d = tmp_path / "d"
    pump(make(str(d)), b"one\n")
    pump(make(str(d)), b"two\n")
    assert (d / "current").read_bytes() == b"one\ntwo\n"
    assert old_files(d) == []


def test_size_of_a_reopened_current_counts_toward_rotation(tmp_path):
    d = tmp_path / "d"
    pump(make("s4096", str(d)), b"a" * 1500 + b"\n")  # below s-2000: stays in current
    assert old_files(d) == []
    pump(make("s4096", str(d)), b"b" * 700 + b"\n")  # 1501 + 701 >= s-2000 at a line end: rotation
    assert [p.read_bytes() for p in old_files(d)] == [b"a" * 1500 + b"\n" + b"b" * 700 + b"\n"]


def test_recovery_after_a_crash_keeps_current_and_previous_as_u_files(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    for name, body in (("current", b"cur\n"), ("previous", b"prev\n"), ("processed", b"half"),
                       ("newstate", b"n"), ("state", b"s")):
        (d / name).write_bytes(body)
        (d / name).chmod(0o644)
    pump(make(str(d)), b"")
    olds = old_files(d)
    assert [p.name[-2:] for p in olds] == [".u", ".u"]
    assert [p.read_bytes() for p in olds] == [b"prev\n", b"cur\n"]
    assert sorted(p.name for p in d.iterdir() if not p.name.startswith("@")) == ["current", "lock", "state"]
    assert (d / "state").read_bytes() == b""


def test_recovery_finishes_a_completed_processed_file_as_s(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "previous").write_bytes(b"raw\n")
    (d / "processed").write_bytes(b"RAW\n")
    (d / "processed").chmod(0o744)
    pump(make(str(d)), b"")
    olds = old_files(d)
    assert [(p.name[-2:], p.read_bytes()) for p in olds] == [(".s", b"RAW\n")]
    assert not (d / "previous").exists()


def test_a_file_linked_elsewhere_is_not_linked_again(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "current").write_bytes(b"x\n")
    os.link(d / "current", d / "@400000006b0802b71f5c01ec.u")
    pump(make(str(d)), b"")
    assert [p.name for p in old_files(d)] == ["@400000006b0802b71f5c01ec.u"]


def test_oldest_is_the_smallest_name(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    for name in ("@200000006b0802b71f5c01ec.s", "@100000006b0802b71f5c01ec.s", "@f00000006b0802b71f5c01ec.u"):
        (d / name).write_bytes(b"old\n")
    (d / "current").write_bytes(b"x\n")
    (d / "current").chmod(0o744)
    pump(make("n3", "s4096", str(d)), b"y" * 4000 + b"\n")  # one rotation: 4 old files, n3 keeps 2
    names = [p.name for p in old_files(d)]
    assert len(names) == 2 and names[1] == "@f00000006b0802b71f5c01ec.u"
    assert (d / names[0]).read_bytes() == b"x\n" + b"y" * 4000 + b"\n"


def test_a_second_engine_on_the_same_directory_is_refused(tmp_path):
    first = make(str(tmp_path / "d"))
    try:
        with pytest.raises(Fatal) as caught:
            make(str(tmp_path / "d"))
        assert caught.value.message() == f"multilog: fatal: unable to lock directory {tmp_path / 'd'}: temporary failure"
    finally:
        first.release()


def test_a_directory_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(Fatal) as caught:
        make(str(tmp_path / "f"))
    assert caught.value.message() == f"multilog: fatal: unable to open directory {tmp_path / 'f'}: not a directory"


def test_equals_file_in_a_missing_directory_is_refused(tmp_path):
    with pytest.raises(Fatal) as caught:
        make("=" + str(tmp_path / "no" / "f"))
    assert caught.value.message() == f"multilog: fatal: unable to create {tmp_path / 'no' / 'f'}: file does not exist"


def test_sigalrm_rotation_skips_an_empty_current(tmp_path):
    d = tmp_path / "d"
    engine = make(str(d))
    try:
        engine.rotate_nonempty()
        assert old_files(d) == []
        engine.feed(b"x\n")
        engine.rotate_nonempty()
        assert [p.read_bytes() for p in old_files(d)] == [b"x\n"]
        assert (d / "current").read_bytes() == b""
        engine.close()
    finally:
        engine.release()


# -- extensions ----------------------------------------------------------------------------------------------
def test_total_size_cap_drops_the_oldest_files(tmp_path):
    d = tmp_path / "d"
    data = numbered(5000)
    pump(make("s4096", "n1000", "S10000", str(d)), data)
    olds = old_files(d)
    sizes = [p.stat().st_size for p in olds]
    assert sum(sizes) <= 10000 and len(olds) >= 2
    assert data.endswith(contents(d))


def test_without_the_cap_every_file_up_to_n_is_kept(tmp_path):
    d = tmp_path / "d"
    pump(make("s4096", "n1000", str(d)), numbered(5000))
    assert sum(p.stat().st_size for p in old_files(d)) > 100000


def test_age_rotation_rotates_a_current_whose_first_byte_is_old_enough(tmp_path):
    seam = FakeSeam()
    d = tmp_path / "d"
    engine = make(str(tmp_path / "plain"), "T60", str(d), seam=seam)
    try:
        assert engine.next_deadline() is None  # nothing written yet
        engine.feed(b"one\n")
        engine.flush()
        assert engine.next_deadline() == 60
        seam.mono += 59
        engine.rotate_due()
        assert old_files(d) == []
        engine.feed(b"two\n")
        engine.flush()
        seam.mono += 1
        assert engine.next_deadline() == 0
        engine.rotate_due()
        assert [p.read_bytes() for p in old_files(d)] == [b"one\ntwo\n"]
        assert old_files(tmp_path / "plain") == []  # T applies to the directories after it only
        assert engine.next_deadline() is None
        seam.mono += 1000
        engine.rotate_due()  # an empty current is never rotated
        assert len(old_files(d)) == 1
        engine.close()
    finally:
        engine.release()


# -- the command against Debian's ---------------------------------------------------------------------------
def command(impl: str) -> str:
    return real("multilog") if impl == "debian" else ours("multilog")


def snapshot(root: Path) -> list[tuple[str, str, bytes]]:
    """Every file under ROOT: name (stamps blanked), mode, contents (stamps blanked), sorted."""
    out = []
    for path in sorted(root.rglob("*")):
        mode = oct(path.stat().st_mode & 0o7777)
        if path.is_dir():
            out.append((str(path.relative_to(root)) + "/", mode, b""))
            continue
        name = re.sub(r"@[0-9a-f]{24}", "@X", str(path.relative_to(root)))
        out.append((name, mode, STAMP.sub(b"@X ", path.read_bytes())))
    return sorted(out)


def run_both(tmp_path: Path, args: list[str], data: bytes, setup=None, timeout: float = 60) -> dict:
    results = {}
    for impl in IMPLS:
        where = tmp_path / impl
        where.mkdir()
        if setup is not None:
            setup(where)
        proc = subprocess.run([command(impl), *args], input=data, cwd=where, env=ENV, capture_output=True,
                              timeout=timeout)
        results[impl] = (proc.returncode, STAMP.sub(b"@X ", proc.stderr), where)
    return results


def same_everything(results: dict) -> tuple[int, bytes, list]:
    d, p = results["debian"], results["prefork"]
    left = (d[0], d[1], snapshot(d[2]))
    right = (p[0], p[1], snapshot(p[2]))
    assert right == left
    return right


LONG = b"y" * 1500 + b"\n" + b"z" * 999 + b"\n" + b"w" * 974 + b"\n" + b"v" * 973 + b"\n"
DIFF_CASES = {
    "stamped": (["t", "./m"], b"a\nb\n\nc\n"),
    "plain": (["./m"], b"a\nb\n\nc\n"),
    "partial-last-line": (["t", "./m"], b"a\nno newline"),
    "empty-input": (["t", "./m"], b""),
    "no-script": ([], b"lines\nto nowhere\n"),
    "star-a-vs-baa": (["e", "-*a", "./m"], b"baa\na\nxa\nbab\n"),
    "star-space-one": (["e", "-*", "+* one", "./m"], b"  one\n one\nx one\nxx one\n"),
    "deselect-all": (["e", "-*", "./m", "./n"], b"a\nb\n"),
    "double-star": (["e", "-**", "./m"], b"a*b\nab\n*\n"),
    "double-star-x": (["e", "-**x", "./m"], b"a*bx\nab\n*x\n*xx\nx*x\n"),
    "empty-pattern": (["e", "-", "./m"], b"\nab\n\n"),
    "empty-pattern-stamped": (["t", "e", "-", "./m"], b"\nab\n"),
    "star-in-the-middle": (["e", "+a*c", "-a*c", "./m"], b"abc\nabcbc\nac\n"),
    "trailing-star": (["e", "-a*", "./m"], b"a\nab\nb\n"),
    "patterns-with-stamp": (["t", "e", "-*", "+* tcpserver: *", "./m", "+*", "-* tcpserver: *", "./n"],
                            b"tcpserver: status: 1/40\napp: hello\ntcpserver: end 5 status 0\n"),
    "e-long-lines": (["t", "e", "./m"], b"x" * 300 + b"\nshort\n" + b"q" * 174 + b"\n" + b"r" * 175 + b"\n"),
    "equals-files": (["=f", "=g", "-x", "=h", "./m"], b"x\ny\nx\n"),
    "equals-long-line": (["t", "=f", "./m"], b"x" * 3000 + b"\nlast\n"),
    "equals-nothing-selected": (["-*", "=f", "./m"], b"x\n"),
    "unknown-words": (["t", "logx", "zzz", "ttt", ":q", "./m", "9", "x"], b"hello\n"),
    "binary-and-nul": (["t", "e", "./m"], b"\x00\x01\xff\xfe\n\x00\n" + bytes(range(11, 256)) + b"\n"),
    "long-lines-stream": (["t", "e", "+*", "./m"], LONG),
    "long-lines-patterns": (["e", "-*", "+z*", "./m", "=f"], b"y" * 1500 + b"\n" + b"z" * 1500 + b"\n"),
    "ten-mb-line": (["t", "e", "=f", "./m"], b"z" * 10_000_000 + b"\nafter\n"),
    "two-dirs-one-name": (["./a", "./a"], b"x\n"),
    "equals-in-missing-dir": (["=nodir/f", "./a"], b"x\n"),
    "dir-then-bad-equals": (["./a", "=nodir/f"], b"x\n"),
    "missing-parent": (["./no/such"], b"x\n"),
    "dot-dir": (["t", "."], b"in the start directory\n"),
    "e-twice": (["e", "e"], b"1\n2\n"),
    "e-thrice-with-patterns": (["t", "e", "-* x", "e", "+*", "e", "./m"], b"1\nx\n" + b"y" * 300 + b"\n2"),
    "equals-same-file-twice": (["=st", "-", "=st"], b"a\n\n"),
    "equals-same-file-two-names": (["=st", "-", "=./st", "./m"], b"a\n\nb\n\n"),
    "equals-same-file-long-lines": (["=st", "-y*", "=./st"], b"x" * 1500 + b"\n" + b"y" * 1200 + b"\n"),
}


@pytest.mark.differential
@pytest.mark.parametrize("case", sorted(DIFF_CASES))
def test_same_files_stderr_and_exit_code_as_daemontools(tmp_path, case):
    args, data = DIFF_CASES[case]
    same_everything(run_both(tmp_path, args, data))


@pytest.mark.differential
def test_a_log_dir_that_is_a_file(tmp_path):
    rc, err, _ = same_everything(run_both(tmp_path, ["./f"], b"x\n", setup=lambda w: (w / "f").write_bytes(b"")))
    assert (rc, err) == (111, b"multilog: fatal: unable to open directory ./f: not a directory\n")


def _unprivileged(impl: str) -> list[str]:
    """Run as root without the capabilities that override file permissions (so modes matter)."""
    if os.geteuid() != 0:
        return [command(impl)]
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", command(impl)]


@pytest.mark.differential
@pytest.mark.parametrize(("args", "message"), [
    (["./ro"], b"multilog: fatal: unable to lock directory ./ro: access denied\n"),
    (["./ro/new"], b"multilog: fatal: unable to open directory ./ro/new: file does not exist\n"),
    (["=ro/f"], b"multilog: fatal: unable to create ro/f: access denied\n"),
    (["=ro.file"], b"multilog: fatal: unable to create ro.file: access denied\n"),
])
def test_a_log_dir_or_file_that_is_not_writable(tmp_path, args, message):
    real("multilog")
    if os.geteuid() == 0 and not os.path.exists("/usr/bin/setpriv"):
        pytest.skip("needs setpriv to drop CAP_DAC_OVERRIDE as root")
    outs = {}
    for impl in IMPLS:
        where = tmp_path / impl
        (where / "ro").mkdir(parents=True)
        (where / "ro").chmod(0o555)
        (where / "ro.file").write_bytes(b"")
        (where / "ro.file").chmod(0o444)
        proc = subprocess.run([*_unprivileged(impl), *args], input=b"x\n", cwd=where, env=ENV, capture_output=True,
                              timeout=60)
        outs[impl] = (proc.returncode, proc.stderr, snapshot(where))
    assert outs["prefork"] == outs["debian"]
    assert outs["prefork"][:2] == (111, message)


@pytest.mark.differential
@pytest.mark.parametrize("impl", IMPLS)
def test_a_second_multilog_on_the_same_dir_is_refused(tmp_path, impl):
    first = subprocess.Popen([command(impl), "./d"], stdin=subprocess.PIPE, cwd=tmp_path, env=ENV)
    try:
        deadline = time.monotonic() + 10
        while not (tmp_path / "d" / "current").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        for other in IMPLS:  # neither implementation gets in while either holds the lock
            proc = subprocess.run([command(other), "./d"], input=b"x\n", cwd=tmp_path, env=ENV, capture_output=True,
                                  timeout=30)
            assert (proc.returncode, proc.stderr) == (
                111, b"multilog: fatal: unable to lock directory ./d: temporary failure\n")
        first.stdin.write(b"first\n")
        first.stdin.close()
        assert first.wait(timeout=30) == 0
        assert (tmp_path / "d" / "current").read_bytes() == b"first\n"
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()


def _split_both(tmp_path, args, data, size):
    results = run_both(tmp_path, args, data)
    for impl in IMPLS:
        rc, err, where = results[impl]
        assert (rc, err) == (0, b""), impl
    return {impl: results[impl][2] for impl in IMPLS}


@pytest.mark.differential
@pytest.mark.parametrize("size", [4096, 6000])
def test_rotation_same_contents_and_sizes_within_bounds(tmp_path, size):
    data = numbered(2500)
    wheres = _split_both(tmp_path, ["t", f"s{size}", "n1000", "./m"], data, size)
    for impl, where in wheres.items():
        m = where / "m"
        assert unstamp(contents(m)) == data, impl
        olds = old_files(m)
        assert len(olds) >= 5
        for p in olds:
            assert size - 2000 <= p.stat().st_size <= size and p.read_bytes().endswith(b"\n"), (impl, p)
            assert oct(p.stat().st_mode & 0o7777) == "0o744" and p.name.endswith(".s")
        kinds = sorted({re.sub(r"@[0-9a-f]{24}", "@X", p.name) for p in m.iterdir()})
        assert kinds == ["@X.s", "current", "lock", "state"], impl


@pytest.mark.differential
def test_n3_keeps_two_old_files_like_daemontools(tmp_path):
    data = numbered(2500)
    wheres = _split_both(tmp_path, ["s4096", "n3", "./m"], data, 4096)
    for where in wheres.values():
        assert len(old_files(where / "m")) == 2
        assert data.endswith(contents(where / "m"))


@pytest.mark.differential
def test_processor_output_goes_to_the_s_files_and_fd5_to_state(tmp_path):
    data = numbered(800)
    proc = "!tr a-z A-Z; echo processed >&5; cat <&4 >&5; pwd >&2"
    results = run_both(tmp_path, ["s4096", "n1000", proc, "./m"], data)
    for impl in IMPLS:
        rc, err, where = results[impl]
        m = where / "m"
        olds = old_files(m)
        assert rc == 0 and len(olds) >= 3, impl
        assert err == (str(m) + "\n").encode() * len(olds)  # the processor runs in the log directory
        done = b"".join(p.read_bytes() for p in olds)
        assert done == data[:len(done)].upper() and (m / "current").read_bytes() == data[len(done):]
        assert (m / "state").read_bytes() == b"processed\n" * len(olds)
        assert {oct(p.stat().st_mode & 0o777) for p in olds} == {"0o744"}
        assert sorted(p.name for p in m.iterdir() if not p.name.startswith("@")) == ["current", "lock", "state"]


@pytest.mark.differential
@pytest.mark.parametrize("impl", IMPLS)
def test_sigterm_mid_line_finishes_the_line_and_leaves_the_rest_unread(tmp_path, impl):
    r, w = os.pipe()
    proc = subprocess.Popen([command(impl), "t", "./m"], stdin=r, cwd=tmp_path, env=ENV, stderr=subprocess.PIPE)
    try:
        os.write(w, b"first\npartial")
        current = tmp_path / "m" / "current"
        _wait_for(lambda: current.exists() and current.stat().st_size > 0)
        _wait_for(lambda: _unread(r) == 0)  # it has read "partial" too
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert proc.poll() is None  # still waiting for the end of the line
        os.write(w, b" rest\nnext line\nmore\n")
        assert proc.wait(timeout=30) == 0
        assert proc.stderr.read() == b""
        os.set_blocking(r, False)
        assert os.read(r, 1000) == b"next line\nmore\n"  # unread, still in the pipe
        assert unstamp(current.read_bytes()) == b"first\npartial rest\n"
        assert oct(current.stat().st_mode & 0o777) == "0o744"
    finally:
        _end(proc)
        os.close(r)
        os.close(w)


@pytest.mark.differential
@pytest.mark.parametrize("impl", IMPLS)
def test_sigterm_at_a_line_end_exits_at_once(tmp_path, impl):
    r, w = os.pipe()
    proc = subprocess.Popen([command(impl), "./m"], stdin=r, cwd=tmp_path, env=ENV, stderr=subprocess.PIPE)
    try:
        os.write(w, b"whole\n")
        current = tmp_path / "m" / "current"
        _wait_for(lambda: current.exists() and current.stat().st_size > 0)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        os.write(w, b"later\n")
        os.set_blocking(r, False)
        assert os.read(r, 1000) == b"later\n"
        assert current.read_bytes() == b"whole\n"
        assert oct(current.stat().st_mode & 0o777) == "0o744"
    finally:
        _end(proc)
        os.close(r)
        os.close(w)


@pytest.mark.differential
@pytest.mark.parametrize("impl", IMPLS)
def test_sigalrm_rotates_a_non_empty_current_only(tmp_path, impl):
    r, w = os.pipe()
    proc = subprocess.Popen([command(impl), "t", "./m"], stdin=r, cwd=tmp_path, env=ENV, stderr=subprocess.PIPE)
    m = tmp_path / "m"
    try:
        _wait_for(lambda: (m / "current").exists())
        time.sleep(0.2)
        proc.send_signal(signal.SIGALRM)
        time.sleep(0.3)
        assert old_files(m) == [] and proc.poll() is None
        os.write(w, b"to rotate\n")
        _wait_for(lambda: (m / "current").stat().st_size > 0)
        proc.send_signal(signal.SIGALRM)
        _wait_for(lambda: len(old_files(m)) == 1)
        os.write(w, b"after\n")
        os.close(w)
        w = -1
        assert proc.wait(timeout=30) == 0
        assert [unstamp(p.read_bytes()) for p in old_files(m)] == [b"to rotate\n"]
        assert unstamp((m / "current").read_bytes()) == b"after\n"
        assert proc.stderr.read() == b""
    finally:
        _end(proc)
        os.close(r)
        if w >= 0:
            os.close(w)


def test_age_rotation_happens_while_no_input_comes(tmp_path):
    r, w = os.pipe()
    proc = subprocess.Popen([ours("multilog"), "T1", "./m"], stdin=r, cwd=tmp_path, env=ENV, stderr=subprocess.PIPE)
    m = tmp_path / "m"
    try:
        os.write(w, b"old enough\n")
        _wait_for(lambda: m.exists() and len(old_files(m)) == 1, seconds=15)
        assert [p.read_bytes() for p in old_files(m)] == [b"old enough\n"]
        time.sleep(1.5)
        assert len(old_files(m)) == 1  # an empty current is not rotated
    finally:
        os.close(w)
        proc.wait(timeout=30)
        _end(proc)
        os.close(r)


def test_help_prints_the_usage_on_stdout():
    proc = subprocess.run([ours("multilog"), "--help"], capture_output=True, timeout=30)
    assert (proc.returncode, proc.stderr) == (0, b"")
    assert proc.stdout.startswith(b"usage: multilog script")


def test_runs_as_a_lean_interpreter(tmp_path):
    r, w = os.pipe()
    proc = subprocess.Popen([ours("multilog"), "t", "./m"], stdin=r, cwd=tmp_path, env=ENV)
    try:
        _wait_for(lambda: (tmp_path / "m" / "current").exists())
        with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        assert argv[1:3] == [b"-I", b"-S"] and argv[3].startswith(b"/proc/self/fd/")
        assert argv[4:6] == [b"t", b"./m"]
        with open(f"/proc/{proc.pid}/status") as f:
            rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        assert rss < 30_000  # kB: no click, no site
    finally:
        os.close(w)
        proc.wait(timeout=30)
        _end(proc)
        os.close(r)


@pytest.mark.differential
def test_the_processor_gets_the_environment_multilog_was_given(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "ZZ": "last"}  # no LANG/LC_*: Python would add LC_CTYPE to os.environ
    seen = {}
    for impl in IMPLS:
        (tmp_path / impl).mkdir()
        proc = subprocess.run([command(impl), "s4096", "!env >&2; cat", "./m"], input=numbered(300),
                              cwd=tmp_path / impl, env=env, capture_output=True, timeout=60)
        assert proc.returncode == 0
        seen[impl] = sorted(set(proc.stderr.replace(str(tmp_path / impl).encode(), b"DIR").splitlines()))
    assert seen["prefork"] == seen["debian"]
    assert b"ZZ=last" in seen["prefork"] and not any(b"LC_" in line for line in seen["prefork"])


def _wait_for(predicate, seconds: float = 10.0, step: float = 0.02) -> None:
    deadline = time.monotonic() + seconds
    for _ in range(int(seconds / step) + 1):
        if predicate():
            return
        if time.monotonic() > deadline:
            break
        time.sleep(step)
    raise AssertionError("condition not reached in time")


def _unread(fd: int) -> int:
    """Bytes waiting in the pipe whose read end is FD."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


def _end(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=30)


@pytest.mark.differential
def test_a_closed_stdin_reads_as_the_end_of_input(tmp_path):
    outs = {}
    for impl in IMPLS:
        (tmp_path / impl).mkdir()
        proc = subprocess.run([command(impl), "t", "./m"], cwd=tmp_path / impl, env=ENV, capture_output=True,
                              timeout=30, preexec_fn=lambda: os.close(0))
        outs[impl] = (proc.returncode, proc.stderr, snapshot(tmp_path / impl))
    assert outs["prefork"] == outs["debian"]
    assert outs["prefork"][:2] == (0, b"")
