"""Hostile input for the parsers of the logging tools: multilog's script, its patterns, TAI64N labels.

Arbitrary strings and bytes go in; nothing may escape but the documented error, and what comes out
must be one of the documented forms:

- ``logscript.parse`` never fails (0.76 ignores words it does not know) and gives settings in range;
- a pattern of any bytes compiles, and its chunk-wide evaluation agrees with 0.76's ``match``;
- ``tai64n.parse_external`` gives None or the 12-byte label that prints back as the same text;
  ``tai64n.unpack`` takes any 12 bytes and raises ValueError (only) on fewer;
- tai64nlocal copies every line unchanged except a leading ``@`` + 24 lowercase hex digits (not followed
  by another one), which becomes ``YYYY-MM-DD HH:MM:SS.NNNNNNNNN`` (or stays when localtime() cannot
  place it), whatever the chunking;
- tai64n stamps every line once, whatever the chunking.
"""

from __future__ import annotations

import os
import re

import pytest
from conftest import fuzz_examples
from hypothesis import given, settings
from hypothesis import strategies as st

from prefork import tai64n
from prefork.control.log.logscript import (
    ANY,
    DIR,
    EQUAL,
    FILE,
    GENERAL,
    LINE_MAX,
    MAX_SIZE,
    MIN_NUM,
    MIN_SIZE,
    MINUS,
    NEVER,
    PLUS,
    PREFIX,
    STDERR,
    after_prefix,
    match,
    parse,
    regex,
    scan_ulong,
)
from prefork.control.log.multilog import Pattern
from prefork.control.log.tai64n_cli import Stamper
from prefork.control.log.tai64nlocal import Converter, local_prefix

BOUNDED = settings(max_examples=fuzz_examples(300), deadline=None, derandomize=True)

# Words as a command line delivers them (bytes through the file system encoding), and any text.
ARGV_WORD = st.binary(max_size=12).filter(lambda b: b"\x00" not in b).map(os.fsdecode)
WORD = st.one_of(
    ARGV_WORD,
    st.text(max_size=12),
    st.sampled_from(["t", "e", "-", "+", "=", ".", "/", "s", "n", "!", "S", "T", "M"]).flatmap(
        lambda first: st.text(max_size=8).map(lambda rest: first + rest)),
    st.sampled_from(["s18446744073709551616", "s-1", "n18446744073709551617", "s4095", "s16777216", "n1", "n0",
                     "M0", "M1", "S99", "T5", "./d", "/d"]),
)


# -- multilog's script ----------------------------------------------------------------------------------------
@BOUNDED
@given(st.lists(WORD, max_size=12))
def test_any_words_parse_into_a_script_with_settings_in_range(words):
    script = parse(words)
    assert script.timestamp == (bool(words) and words[0].startswith("t"))
    kinds = {"-": MINUS, "+": PLUS, "e": STDERR, "=": FILE, ".": DIR, "/": DIR}
    expected = [kinds[w[0]] for w in words if w[:1] in kinds]
    assert [kind for kind, _ in script.actions] == expected
    files = [arg for kind, arg in script.actions if kind == FILE]
    dirs = [arg for kind, arg in script.actions if kind == DIR]
    assert files == list(range(len(script.files))) and dirs == list(range(len(script.dirs)))
    for kind, arg in script.actions:
        if kind in (MINUS, PLUS):
            assert isinstance(arg, bytes)
    for d in script.dirs:
        assert MIN_SIZE <= d.size <= MAX_SIZE and d.num >= MIN_NUM
        assert 0 <= d.total < 1 << 64 and 0 <= d.age < 1 << 64 and isinstance(d.metrics, bool)
        assert d.path[:1] in (".", "/")
    assert repr(script.dirs)  # printable whatever the names
    assert parse(list(words)).actions == script.actions  # pure


@BOUNDED
@given(st.text(max_size=30))
def test_scan_ulong_of_any_text_is_an_unsigned_long(text):
    value = scan_ulong(text)
    assert 0 <= value < 1 << 64
    digits = re.match(r"[0-9]*", text).group(0)
    assert value == (int(digits) % (1 << 64) if digits else 0)


ANY_BYTES = st.binary(max_size=12)
PATTERN_BYTES = st.lists(st.sampled_from(b"*ab\x00\xff\n.[](){}?+\\^$|:-"), max_size=10).map(bytes)


@BOUNDED
@given(st.one_of(ANY_BYTES, PATTERN_BYTES), st.one_of(st.just(b""), ANY_BYTES),
       st.lists(st.one_of(ANY_BYTES, PATTERN_BYTES, st.binary(min_size=990, max_size=1010)), min_size=1, max_size=6))
def test_any_pattern_compiles_and_agrees_with_0_76_match(pattern, stamp, rests):
    source, prefix_only = regex(pattern)
    re.compile(source, re.DOTALL)
    assert isinstance(prefix_only, bool)
    kind, rest = after_prefix(pattern, stamp)
    assert kind in (NEVER, ANY, PREFIX, EQUAL, GENERAL) and isinstance(rest, bytes)
    lines = [stamp + r for r in rests]
    got = Pattern(pattern).vector(lines, stamp)
    expected = bytes(match(pattern, line[:LINE_MAX]) for line in lines)
    assert (b"\x01" * len(lines) if got is True else bytes(len(lines)) if got is False else got) == expected


# -- TAI64N labels ----------------------------------------------------------------------------------------------
HEX = "0123456789abcdef"
LABEL_TEXT = st.one_of(
    st.text(max_size=30),
    st.text(alphabet=HEX + "ABCDEF@ g", min_size=24, max_size=26),
    st.text(alphabet=HEX, min_size=22, max_size=26).map(lambda s: "@" + s),
    st.text(alphabet=HEX, min_size=24, max_size=24).map(lambda s: "@" + s),
)


@BOUNDED
@given(st.one_of(LABEL_TEXT, LABEL_TEXT.map(lambda s: s.encode("utf-8", "surrogatepass")), st.binary(max_size=30)))
def test_parse_external_gives_none_or_the_label_that_prints_back(text):
    label = tai64n.parse_external(text)
    shown = text.decode("latin-1") if isinstance(text, bytes) else text
    if label is None:
        assert not re.fullmatch(r"@[0-9a-f]{24}", shown)
        return
    assert len(label) == tai64n.SIZE and tai64n.external(label) == shown
    seconds, nano = tai64n.unpack(label)
    assert tai64n.pack(seconds, nano) == label


@BOUNDED
@given(st.binary(max_size=20))
def test_unpack_takes_12_bytes_and_refuses_fewer_with_valueerror_only(data):
    if len(data) < tai64n.SIZE:
        with pytest.raises(ValueError):
            tai64n.unpack(data)
        return
    seconds, nano = tai64n.unpack(data)
    assert tai64n.pack(seconds, nano) == data[:tai64n.SIZE]


LABEL = re.compile(rb"@([0-9a-f]{16})([0-9a-f]{8})(?![0-9a-f])")
LOCAL = re.compile(rb"(\d+)-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)\.(\d{9,10})")


def _label_line(draw_hex: str, rest: bytes) -> bytes:
    return b"@" + draw_hex.encode() + rest


LINE = st.one_of(
    st.binary(max_size=40),
    st.builds(_label_line, st.text(alphabet=HEX, min_size=20, max_size=27), st.binary(max_size=10)),
    st.builds(_label_line, st.sampled_from(["4000000037c219bf2ef02e94", "400000000000000000000000",
                                            "ffffffffffffffffffffffff", "0000000000000000ffffffff",
                                            "7fffffffffffffff3b9ac9ff", "c000000000000000000001f4"]),
              st.sampled_from([b"", b" x", b"a", b"@", b"\x00"])),
)


@BOUNDED
@given(st.lists(LINE, max_size=8), st.booleans(), st.lists(st.integers(min_value=1, max_value=40), min_size=1,
                                                           max_size=5))
def test_tai64nlocal_converts_only_labels_and_any_chunking_agrees(lines, final_newline, sizes):
    data = b"\n".join(lines) + (b"\n" if final_newline else b"")
    conv = Converter()
    pieces, pos, i = [], 0, 0
    while pos < len(data):
        pieces.append(conv.feed(data[pos:pos + sizes[i % len(sizes)]]))
        pos += sizes[i % len(sizes)]
        i += 1
    pieces.append(conv.finish())
    out = b"".join(pieces)
    whole = Converter()
    assert out == whole.feed(data) + whole.finish()
    got_lines = out.split(b"\n")
    in_lines = data.split(b"\n")
    assert len(got_lines) == len(in_lines)
    for before, after in zip(in_lines, got_lines, strict=True):
        found = LABEL.match(before)
        if found is None or after == before:
            assert after == before
            continue
        date = LOCAL.match(after)
        assert date is not None, after
        assert after[date.end():] == before[found.end():]
        assert int(date.group(7)) == int(found.group(2), 16)
        assert 1 <= int(date.group(2)) <= 12 and 1 <= int(date.group(3)) <= 31
        assert local_prefix(found.group(1)) == after[:date.start(7)]


@BOUNDED
@given(st.text(alphabet=HEX, min_size=16, max_size=16))
def test_local_prefix_of_any_seconds_is_a_date_or_none(seconds_hex):
    prefix = local_prefix(seconds_hex.encode())
    assert prefix is None or re.fullmatch(rb"\d+-\d\d-\d\d \d\d:\d\d:\d\d\.", prefix)


@BOUNDED
@given(st.binary(max_size=60), st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=5))
def test_tai64n_stamps_every_line_once_whatever_the_chunking(data, sizes):
    stamp = b"@4000000037c219bf2ef02e94 "
    stamper = Stamper()
    out, pos, i = [], 0, 0
    while pos < len(data):
        out.append(stamper.feed(data[pos:pos + sizes[i % len(sizes)]], stamp))
        pos += sizes[i % len(sizes)]
        i += 1
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
        expected = b"".join(stamp + line + b"\n" for line in lines)
    else:
        expected = b"".join(stamp + line + b"\n" for line in lines[:-1]) + stamp + lines[-1]
    assert b"".join(out) == expected

