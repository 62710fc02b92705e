"""Unit tests of prefork.rules: the tcprules language, the cdb bytes, the lookup order, RulesFile."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import random
import socket
import struct
import time

import cdblib
import pytest
from conftest import fuzz_examples
from hypothesis import given, settings
from hypothesis import strategies as st

from prefork import rules
from prefork.rules import (
    CdbMaker,
    Decision,
    RulesDB,
    RulesFile,
    RulesSyntaxError,
    candidates,
    cdb_bytes,
    cdb_hash,
    compile_rules,
    entries,
    load,
    parse_line,
)

# -- parser: skipped lines ---------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [b"", b"\n", b"# comment\n", b"#1.2.3.4:deny\n", b"   \n", b"\t \n", b"1.2.3.4 allow\n", b"no colon at all"],
)
def test_skipped_lines(line: bytes) -> None:
    assert parse_line(line) is None


def test_hash_later_in_line_is_not_a_comment() -> None:
    assert parse_line(b"1.2.3.4#x:allow\n") == [(b"1.2.3.4#x", b"")]


def test_trailing_blanks_trimmed_but_not_cr() -> None:
    assert parse_line(b"1.2.3.4:allow \t \t\n") == [(b"1.2.3.4", b"")]
    with pytest.raises(RulesSyntaxError) as info:
        parse_line(b"1.2.3.4:allow\r\n")
    assert info.value.line == b"1.2.3.4:allow\r"


def test_address_is_verbatim_up_to_first_colon() -> None:
    assert parse_line(b" 1.2.3.4:allow") == [(b" 1.2.3.4", b"")]
    assert parse_line(b"1.2.3.4 :allow") == [(b"1.2.3.4 ", b"")]
    assert parse_line(b":allow") == [(b"", b"")]
    assert parse_line(b'=host:allow,X="a:b"') == [(b"=host", b"+X=a:b\0")]


def test_allow_and_deny_values() -> None:
    assert parse_line(b"1.2.3.4:allow\n") == [(b"1.2.3.4", b"")]
    assert parse_line(b"1.2.3.4:deny\n") == [(b"1.2.3.4", b"D\0")]
    assert parse_line(b'1.2.3.4:deny,X="1"') == [(b"1.2.3.4", b"D\0+X=1\0")]


@pytest.mark.parametrize(
    ("instruction", "value"),
    [
        (b'allow,X="1"', b"+X=1\0"),
        (b"allow,X=/a b/", b"+X=a b\0"),
        (b"allow,X=+1+", b"+X=1\0"),
        (b"allow,X==v=", b"+X=v\0"),
        (b"allow,X='v'", b"+X=v\0"),
        (b"allow,X=,v,", b"+X=v\0"),
        (b'allow,X=""', b"+X=\0"),
        (b'allow,="v"', b"+=v\0"),
        (b'allow,a b,c="v"', b"+a b,c=v\0"),
        (b'allow,X="a=b:c d"', b"+X=a=b:c d\0"),
        (b'allow,X="1",X="2"', b"+X=1\0+X=2\0"),
        (b'allow,TCPLOCALHOST="movie.edu",PROTO="FOO"', b"+TCPLOCALHOST=movie.edu\0+PROTO=FOO\0"),
    ],
)
def test_variables(instruction: bytes, value: bytes) -> None:
    assert parse_line(b"1.2.3.4:" + instruction) == [(b"1.2.3.4", value)]


@pytest.mark.parametrize(
    "line",
    [
        b"1.2.3.4:allowed",
        b"1.2.3.4:denyall",
        b"1.2.3.4:permit",
        b"1.2.3.4:",
        b"1.2.3.4:Allow",
        b"1.2.3.4: allow",
        b"1.2.3.4:allow,X",
        b"1.2.3.4:allow,X=",
        b'1.2.3.4:allow,X="abc',
        b'1.2.3.4:allow,X="1"Y="2"',
        b'1.2.3.4:allow,X="1",',
        b"1.2.3.4:allow,",
        b"1.2.3.4:allow:x",
        b"1.2.3.4:allow\r",
        b"abc-def:allow",
        b"1.2.3.4-5x:allow",
        b"1.2.x3-4.:allow",
        b"1-2-3:allow",
    ],
)
def test_parse_errors(line: bytes) -> None:
    with pytest.raises(RulesSyntaxError) as info:
        parse_line(line + b"  \n")
    assert info.value.line == line


# -- parser: key ranges ------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "keys"),
    [
        (b"1.2.3.37-40", [b"1.2.3.37", b"1.2.3.38", b"1.2.3.39", b"1.2.3.40"]),
        (b"10.2-3.", [b"10.2.", b"10.3."]),
        (b"1-3", [b"1", b"2", b"3"]),
        (b"1.2.-2.", [b"1.2.0.", b"1.2.1.", b"1.2.2."]),
        (b"1.2.250-300.", [b"1.2.%d." % n for n in range(250, 256)]),
        (b"1.2.300-400.", []),
        (b"1.2.3.4-", []),
        (b"1.2.5-4.", []),
        (b"1.2.007-009.", [b"1.2.7.", b"1.2.8.", b"1.2.9."]),
        (b"-", [b"0"]),
        (b"1-2.3-4.", [b"1.3-4.", b"2.3-4."]),
        (b"joe-x@1.2.3.4", [b"joe-x@1.2.3.4"]),
        (b"=a-b.example.com", [b"=a-b.example.com"]),
        (b"x.1-2.y", [b"x.1.y", b"x.2.y"]),
        (b"1\0x-3", [b"1", b"2", b"3"]),  # djb reads the number as a C string
        (b"18446744073709551617-3", [b"1", b"2", b"3"]),  # scan_ulong wraps modulo 2**64
        (b"1" + b"0" * 5000 + b"-3", [b"0", b"1", b"2", b"3"]),  # 10**5000 % 2**64 == 0
    ],
)
def test_ranges(address: bytes, keys: list[bytes]) -> None:
    assert parse_line(address + b":deny") == [(k, b"D\0") for k in keys]


# -- parser: CIDR blocks (a prefork extension) --------------------------------


@pytest.mark.parametrize(
    ("address", "keys"),
    [
        (b"10.0.0.0/8", [b"10."]),
        (b"10.1.0.0/16", [b"10.1."]),
        (b"192.168.4.0/24", [b"192.168.4."]),
        (b"192.168.4.9/32", [b"192.168.4.9"]),
        (b"0.0.0.0/0", [b""]),
        (b"192.168.4.0/22", [b"192.168.4.", b"192.168.5.", b"192.168.6.", b"192.168.7."]),
        (b"1.2.3.64/26", [b"1.2.3.%d" % n for n in range(64, 128)]),
        (b"1.2.3.254/31", [b"1.2.3.254", b"1.2.3.255"]),
        (b"128.0.0.0/1", [b"%d." % n for n in range(128, 256)]),
        (b"0.0.0.0/7", [b"0.", b"1."]),
        (b"172.16.0.0/12", [b"172.%d." % n for n in range(16, 32)]),
        (b"255.255.255.255/32", [b"255.255.255.255"]),
        (b"10.0.0.0/08", [b"10."]),
    ],
)
def test_cidr_blocks(address: bytes, keys: list[bytes]) -> None:
    assert parse_line(address + b':allow,X="y"\n') == [(k, b"+X=y\0") for k in keys]


@pytest.mark.parametrize(
    "address",
    [
        b"10.0.0.1/8",  # host bits set
        b"1.2.3.5/31",
        b"0.0.0.1/0",
        b"10.0.0.0/33",  # length past 32
        b"10.0.0.0/100",
        b"10.0.0.0/x",  # length not a number
        b"10.0.0.0/",
        b"10.0.0.0/+8",
        b"10.0.0.0/ 8",
        b"10.0.0.0/8/8",
        b"10.0.0.0/8.",
        b"10.0.0.0/8\0",
        b"10.0.0/8",  # malformed address
        b"10.0.0.0.0/8",
        b"10..0.0/8",
        b"256.0.0.0/8",
        b"010.0.0.0/8",
        b"1.2.0-3.0/24",
        b".../0",
        b"joe@10.0.0.0/8",  # INFO@ has no prefixes in 0.88
        b"@1.2.3.4/32",
    ],
)
def test_cidr_errors(address: bytes) -> None:
    line = address + b":deny"
    with pytest.raises(RulesSyntaxError) as info:
        parse_line(line + b" \n")
    assert info.value.line == line


@pytest.mark.parametrize(
    "address",
    [b"/8", b"abc/8", b"fe80.0.0.0/10", b"=a/b", b"=10.0.0.0/8", b"joe@=10.0.0.0/8", b"j/e@1.2.3.4", b"1.2.3.x/8"],
)
def test_slash_elsewhere_stays_literal(address: bytes) -> None:
    assert parse_line(address + b":deny") == [(address, b"D\0")]


def _in_block(ip: int, network: int, length: int) -> bool:
    return ip >> (32 - length) == network >> (32 - length) if length else True


def _dotted(ip: int) -> bytes:
    return b".".join(b"%d" % b for b in ip.to_bytes(4, "big"))


@pytest.mark.parametrize("length", range(33))
@settings(max_examples=fuzz_examples(25), deadline=None)
@given(st.integers(0, 2**32 - 1), st.lists(st.integers(0, 2**32 - 1), max_size=8))
def test_cidr_expansion_against_brute_force(length: int, base: int, samples: list[int]) -> None:
    """Every length: the compiled keys deny exactly the block's addresses (edges, neighbours, samples)."""
    network = base & ~((1 << (32 - length)) - 1) & 0xFFFFFFFF
    size = 1 << (32 - length)
    keys = [k for k, _ in compile_rules(b"%s/%d:deny\n" % (_dotted(network), length))]
    assert len(keys) == len(set(keys)) == 1 << (-length % 8)
    db = RulesDB(cdb_bytes([(k, b"D\0") for k in keys] + [(b"", b"+DEFAULT=1\0")]))
    probes = {network, network + size - 1, network - 1, network + size, network + size // 2, *samples}
    probes |= {base ^ (1 << bit) for bit in range(32)}  # one bit away, inside and outside
    for ip in probes:
        ip &= 0xFFFFFFFF
        assert db.lookup(_dotted(ip)).deny == _in_block(ip, network, length), (_dotted(ip), length)


def test_cidr_keys_cover_the_block_exactly() -> None:
    """The keys of every length, each read back as the addresses it matches, add up to exactly the block."""
    for length in range(33):
        network = 0xC0A80400 & ~((1 << (32 - length)) - 1) & 0xFFFFFFFF
        covered = 0
        for key in rules.cidr_keys(network, length):
            parts = key.split(b".")
            octets = len(parts) - 1 if key.endswith(b".") or not key else 4
            fixed = int.from_bytes(bytes(int(p) for p in parts[:octets]), "big") << (32 - 8 * octets)
            assert _in_block(fixed, network, length)
            covered += 1 << (32 - 8 * octets)
        assert covered == 1 << (32 - length)


def test_cidr_blocks_keep_the_lookup_order() -> None:
    """A longer block beats a shorter one when its keys are longer; between equal keys the earlier line wins."""
    text = b"10.0.0.0/8:deny\n10.1.0.0/16:allow\n10.0.0.0/22:deny\n10.0.0.0/23:allow\n"
    db = RulesDB(cdb_bytes(compile_rules(text)))
    assert db.lookup("10.9.9.9").key == b"10."
    assert db.lookup("10.1.2.3").key == b"10.1."
    assert (db.lookup("10.0.1.7").key, db.lookup("10.0.1.7").deny) == (b"10.0.1.", True)


def test_compile_rules_order_duplicates_and_last_line() -> None:
    text = b"# rules\n\n1.2.3.4:deny\n1.2.3.4:allow\n1.2.3.1-2:allow\nnothing here\n:allow"
    assert compile_rules(text) == [
        (b"1.2.3.4", b"D\0"),
        (b"1.2.3.4", b""),
        (b"1.2.3.1", b""),
        (b"1.2.3.2", b""),
        (b"", b""),
    ]


def test_compile_rules_error_reports_trimmed_line() -> None:
    with pytest.raises(RulesSyntaxError) as info:
        compile_rules(b"1.2.3.4:allow\n5.6.7.8:bad \t\n9:allow\n")
    assert info.value.line == b"5.6.7.8:bad"


@st.composite
def _rule_lines(draw: st.DrawFn) -> tuple[bytes, bytes, bytes]:
    """A well-formed line with a literal address (no ``-`` range, no ``/`` block), the address, its value."""
    address = draw(st.binary(max_size=8).filter(lambda b: not ({0x3A, 0x0A, 0x2D, 0x2F} & set(b)) and b[:1] != b"#"))
    deny = draw(st.booleans())
    line, value = address + (b":deny" if deny else b":allow"), b"D\0" if deny else b""
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.binary(max_size=6).filter(lambda b: b"=" not in b and b"\n" not in b))
        quote = draw(st.integers(0, 255).filter(lambda q: q not in b"\n \t"))
        text = draw(st.binary(max_size=6).filter(lambda b, q=quote: q not in b and 0x0A not in b))
        line += b"," + name + b"=" + bytes([quote]) + text + bytes([quote])
        value += b"+" + name + b"=" + text + b"\0"
    return line, address, value


@given(_rule_lines())
def test_parse_property(case: tuple[bytes, bytes, bytes]) -> None:
    line, address, value = case
    assert parse_line(line + b"\n") == [(address, value)]


# -- cdb bytes ---------------------------------------------------------------


def test_hash_vectors() -> None:
    assert cdb_hash(b"") == 5381
    assert cdb_hash(b"1.2.3.4") == 1011677903
    assert cdb_hash(b"127.") == 2085881567
    assert cdb_hash(b"=9lg0e3l") == 0
    assert cdb_hash(b"\xff\x80") == ((5381 * 33 ^ 0xFF) * 33 ^ 0x80) & 0xFFFFFFFF


def test_empty_cdb_md5() -> None:
    data = cdb_bytes([])
    assert len(data) == 2048
    assert hashlib.md5(data).hexdigest() == "a646d6b87720195feb973de130b10123"
    assert data == struct.pack("<II", 2048, 0) * 256


def test_single_deny_md5() -> None:
    data = cdb_bytes(compile_rules(b"1.2.3.4:deny\n"))
    assert len(data) == 2081
    assert hashlib.md5(data).hexdigest() == "10081278a795737c8f1ffca6afff2829"


def test_key_hashing_to_zero_is_kept() -> None:
    """pure-cdb's own Writer loses a record whose hash is 0; ours probes like cdb_make."""
    records = [(b"=9lg0e3l", b"D\0"), (b"=9lg0gql", b"")]
    db = RulesDB(cdb_bytes(records))
    assert db.get(b"=9lg0e3l") == b"D\0"
    assert db.get(b"=9lg0gql") == b""
    _pos, slots = struct.unpack_from("<II", cdb_bytes(records), 0)  # both in table 0
    assert slots == 4


def test_layout_by_hand() -> None:
    """Records from 2048 in order; table i at the end with 2*count slots, linear probing."""
    records = [(b"a", b"1"), (b"b", b"22"), (b"a", b"333")]
    data = cdb_bytes(records)
    pos = 2048
    for key, value in records:
        assert struct.unpack_from("<II", data, pos) == (len(key), len(value))
        assert data[pos + 8 : pos + 8 + len(key) + len(value)] == key + value
        pos += 8 + len(key) + len(value)
    end = pos
    for i in range(256):
        tpos, slots = struct.unpack_from("<II", data, 8 * i)
        count = sum(1 for k, _ in records if cdb_hash(k) & 255 == i)
        assert (tpos, slots) == (pos, 2 * count)
        pos += 16 * count
    assert pos == len(data) > end


def test_cdbmaker_on_fd_matches_cdb_bytes(tmp_path) -> None:
    records = [(b"10.%d." % i, b"+N=%d\0" % i) for i in range(2000)]
    path = tmp_path / "r.cdb"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    maker = CdbMaker(fd)
    for key, value in records:
        maker.add(key, value)
    maker.finish()
    os.close(fd)
    assert path.read_bytes() == cdb_bytes(records)


@pytest.mark.parametrize(("count", "chunks"), [(10, 0), (800, 1), (1000, 2)])
def test_cdbmaker_unfinished_file_is_what_djb_leaves(tmp_path, count: int, chunks: int) -> None:
    """cdb_make seeks past the header and flushes records in 8192-byte chunks only."""
    records = [(b"10.0.0.%d" % i, b"") for i in range(count)]
    path = tmp_path / "r.tmp"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    maker = CdbMaker(fd)
    for key, value in records:
        maker.add(key, value)
    os.close(fd)
    data = path.read_bytes()
    assert len(data) == (2048 + 8192 * chunks if chunks else 0)
    if chunks:
        assert data[:2048] == bytes(2048)
        assert data[2048:] == cdb_bytes(records)[2048 : len(data)]


def test_cdbmaker_refuses_a_pipe() -> None:
    r, w = os.pipe()
    try:
        with pytest.raises(OSError) as info:
            CdbMaker(w)
        assert info.value.errno == errno.ESPIPE
    finally:
        os.close(r)
        os.close(w)


@settings(max_examples=200)
@given(st.lists(st.tuples(st.binary(max_size=3), st.binary(max_size=5)), max_size=60), st.binary(max_size=3))
def test_cdb_roundtrip_against_pure_cdb_reader(records: list[tuple[bytes, bytes]], absent: bytes) -> None:
    data = cdb_bytes(records)
    db, reader = RulesDB(data), cdblib.Reader(data)
    first: dict[bytes, bytes] = {}
    for key, value in records:
        first.setdefault(key, value)
    for key, value in first.items():
        assert db.get(key) == value == reader.get(key)
    if absent not in first:
        assert db.get(absent) is None


# -- reading: validation -----------------------------------------------------


def _good() -> bytes:
    return cdb_bytes(compile_rules(b'1.2.3.4:deny\n1.2.3.:allow,X="1"\n:allow\n'))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"x" * 100,
        bytes(2047),
        pytest.param(b"TRUNCATED", id="truncated"),
        pytest.param(b"GARBAGE", id="garbage"),
    ],
)
def test_bad_cdb_is_protocol_error(data: bytes) -> None:
    if data == b"TRUNCATED":
        data = _good()[:-1]
    elif data == b"GARBAGE":
        data = random.Random(7).randbytes(5000)
    with pytest.raises(OSError) as info:
        RulesDB(data)
    assert info.value.errno == errno.EPROTO


def test_bad_record_found_at_lookup_is_protocol_error() -> None:
    data = bytearray(_good())
    struct.pack_into("<II", data, 2048, 7, 0xFFFF)  # the 1.2.3.4 record claims a huge value
    db = RulesDB(bytes(data))
    with pytest.raises(OSError) as info:
        db.lookup("1.2.3.4")
    assert info.value.errno == errno.EPROTO


def _one_slot_cdb(probe: bytes, record: bytes) -> bytes:
    """A cdb whose only table holds one slot for PROBE, pointing at RECORD, the last bytes of the file."""
    header = bytearray(2048)
    struct.pack_into("<II", header, 8 * (cdb_hash(probe) & 255), 2048, 1)
    return bytes(header) + struct.pack("<II", cdb_hash(probe), 2056) + record


def test_record_key_inside_value_past_end_differs_falls_through() -> None:
    """cdb.c compares the key before it looks at the value: a different key is no match, whatever
    its value length says (this raised EPROTO before; 0.88 falls through to the default)."""
    data = _one_slot_cdb(b"1.2.3.4", struct.pack("<II", 7, 100) + b"9.9.9.9" + b"D\0")
    assert RulesDB(data).lookup("1.2.3.4") == Decision(None, False, [], b"")


def test_record_value_past_end_of_matching_key_is_protocol_error() -> None:
    data = _one_slot_cdb(b"1.2.3.4", struct.pack("<II", 7, 100) + b"1.2.3.4" + b"D\0")
    with pytest.raises(OSError) as info:
        RulesDB(data).lookup("1.2.3.4")
    assert info.value.errno == errno.EPROTO


@pytest.mark.parametrize("stored", [b"1.2.3", b"9.9.9"])
def test_record_key_past_end_is_protocol_error(stored: bytes) -> None:
    """The 7-byte piece leaves the file: EPROTO even where the bytes inside differ (cdb.c reads the
    whole piece before comparing)."""
    data = _one_slot_cdb(b"1.2.3.4", struct.pack("<II", 7, 0) + stored)
    with pytest.raises(OSError) as info:
        RulesDB(data).get(b"1.2.3.4")
    assert info.value.errno == errno.EPROTO


def test_long_key_compared_in_32_byte_pieces() -> None:
    """A key over 32 bytes cut by the end of the file: a difference in an earlier piece is no match;
    a whole first piece that matches makes cdb.c read the next one, which leaves the file."""
    key = b"=" + b"h" * 39
    other = b"=" + b"x" * 39
    assert RulesDB(_one_slot_cdb(key, struct.pack("<II", 40, 0) + other[:35])).get(key) is None
    with pytest.raises(OSError) as info:
        RulesDB(_one_slot_cdb(key, struct.pack("<II", 40, 0) + key[:35])).get(key)
    assert info.value.errno == errno.EPROTO


@pytest.mark.parametrize("slots", [1, 2**29 + 1, 2**31, 2**32 - 1])
def test_slot_count_past_end_refused_at_load(slots: int) -> None:
    """No table may reach past the end, however its 32-bit size would wrap in C."""
    data = bytearray(_good())
    struct.pack_into("<II", data, 8 * 7, len(data) - 4, slots)
    with pytest.raises(OSError) as info:
        RulesDB(bytes(data))
    assert info.value.errno == errno.EPROTO


def test_full_table_without_the_key_ends_after_one_pass() -> None:
    """A table with no empty slot (a cycle for a reader that only stops at one) is probed once round."""
    data = bytearray(_good())
    for i in range(256):
        pos, slots = struct.unpack_from("<II", data, 8 * i)
        for k in range(slots):
            struct.pack_into("<II", data, pos + 8 * k, 1, 2048)
    assert RulesDB(bytes(data)).lookup("1.2.3.4") == Decision(None, False, [], b"")


def test_scrambled_in_range_tables_miss_rules() -> None:
    """What the reader cannot see: slots moved within their table leave a well-formed file whose
    lookups miss, so a denied address falls through to a later rule (0.88 answers the same)."""
    data = bytearray(_good())
    tpos, slots = struct.unpack_from("<II", data, 8 * (cdb_hash(b"1.2.3.4") & 255))
    pairs = [struct.unpack_from("<II", data, tpos + 8 * k) for k in range(slots)]
    start = (cdb_hash(b"1.2.3.4") >> 8) % slots
    pairs[start], pairs[start - 1] = (0, 0), pairs[start]  # the record is now behind an empty slot
    for k, pair in enumerate(pairs):
        struct.pack_into("<II", data, tpos + 8 * k, *pair)
    decision = RulesDB(bytes(data)).lookup("1.2.3.4")
    assert decision.key == b"1.2.3." and not decision.deny and decision.env == [(b"X", b"1")]


def test_larger_than_4_gib_is_refused_unread(tmp_path) -> None:
    path = tmp_path / "huge.cdb"
    with open(path, "wb") as f:
        f.truncate(2**32 + 1)  # sparse: nothing is written or read
    with pytest.raises(OSError) as info:
        load(path)
    assert info.value.errno == errno.EPROTO


def test_candidates_end_at_nul_like_c_strings() -> None:
    assert list(candidates(b"1.2.3.4\0x", b"a.b\0c", b"joe\0y")) == list(candidates(b"1.2.3.4", b"a.b", b"joe"))
    assert list(candidates("1.2.3.4\udcff")) == list(candidates(b"1.2.3.4\xff"))
    assert b"\0" not in b"".join(candidates("\ud800"))  # a lone surrogate is data too


def test_all_zero_header_is_an_empty_db() -> None:
    """Like djb's reader: 2048 zero bytes mean every table is empty."""
    assert RulesDB(bytes(2048)).lookup("1.2.3.4") == Decision(None, False, [], b"")


def test_load_errors(tmp_path) -> None:
    for name, content, err in [("empty", b"", errno.EPROTO), ("short", b"abc", errno.EPROTO)]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(OSError) as info:
            load(tmp_path / name)
        assert info.value.errno == err
    for path, err in [(tmp_path, errno.EISDIR), (tmp_path / "missing", errno.ENOENT), ("/dev/null", errno.EPROTO)]:
        with pytest.raises(OSError) as info:
            load(path)
        assert info.value.errno == err


# -- lookup ------------------------------------------------------------------


def test_candidate_order() -> None:
    assert list(candidates("1.2.3.4", "a.b.c", "joe")) == [
        b"joe@1.2.3.4",
        b"joe@=a.b.c",
        b"1.2.3.4",
        b"=a.b.c",
        b"1.2.3.",
        b"1.2.",
        b"1.",
        b"=.b.c",
        b"=.c",
        b"=",
        b"",
    ]
    assert list(candidates("1.2.3.4")) == [b"1.2.3.4", b"1.2.3.", b"1.2.", b"1.", b""]
    assert list(candidates("1.2.3.4", None, "")) == [b"@1.2.3.4", b"1.2.3.4", b"1.2.3.", b"1.2.", b"1.", b""]
    assert list(candidates("1.2.3.4", "")) == [b"1.2.3.4", b"=", b"1.2.3.", b"1.2.", b"1.", b"=", b""]
    assert list(candidates(b"", b"x.", None)) == [b"", b"=x.", b"=.", b"=", b""]


def test_each_step_beats_the_later_ones() -> None:
    order = list(candidates("1.2.3.4", "a.b.c", "joe"))
    for i in range(len(order)):
        records = [(key, b"+N=%d\0" % n) for n, key in reversed(list(enumerate(order[i:], start=i)))]
        decision = RulesDB(cdb_bytes(records)).lookup("1.2.3.4", "a.b.c", "joe")
        assert decision.key == order[i]
        assert decision.env == [(b"N", b"%d" % i)]


def test_no_case_folding_and_no_match() -> None:
    db = RulesDB(cdb_bytes(compile_rules(b"=A.B:deny\n10.:deny\n")))
    assert db.lookup("1.2.3.4", "a.b") == Decision(None, False, [], b"")
    assert db.lookup("10.0.0.1").deny


def test_decision_from_record() -> None:
    d = Decision.from_record(b"k", b"+X=1=2\0+NOEQ\0D\0+Y=\0junk\0+Z=unterminated")
    assert d == Decision(b"k", True, [(b"X", b"1=2"), (b"Y", b"")], d.value)
    assert entries(d.value) == [b"+X=1=2", b"+NOEQ", b"D", b"+Y=", b"junk"]
    assert Decision.from_record(b"", b"").deny is False


def test_lookup_accepts_str_and_bytes() -> None:
    db = RulesDB(cdb_bytes(compile_rules(b'joe@=h.x:allow,U="joe"\n')))
    assert db.lookup("9.9.9.9", "h.x", "joe") == db.lookup(b"9.9.9.9", b"h.x", b"joe")
    assert db.lookup("9.9.9.9", "h.x", "joe").env == [(b"U", b"joe")]


def _naive(records: list[tuple[bytes, bytes]], ip: bytes, host: bytes | None, info: bytes | None):
    """§5.3 read literally, over a dict; the reference for the property test."""
    table: dict[bytes, bytes] = {}
    for key, value in records:
        table.setdefault(key, value)
    tries = []
    if info is not None:
        tries.append(info + b"@" + ip)
        if host is not None:
            tries.append(info + b"@=" + host)
    tries.append(ip)
    if host is not None:
        tries.append(b"=" + host)
    tries += [ip[:n] for n in range(len(ip), 0, -1) if ip[:n].endswith(b".")]
    if host is not None:
        tries += [b"=" + host[n:] for n in range(len(host)) if host[n:].startswith(b".")]
        tries.append(b"=")
    tries.append(b"")
    for key in tries:
        if key in table:
            return key, table[key]
    return None, b""


_ips = st.text("12.", max_size=6).map(str.encode)
_hosts = st.none() | st.text("ab.", max_size=5).map(str.encode)
_infos = st.none() | st.sampled_from([b"", b"joe"])


@settings(max_examples=300)
@given(st.lists(st.tuples(_ips, _hosts, _infos), min_size=1, max_size=6), st.data())
def test_lookup_matches_naive_reference(clients, data) -> None:
    pool = sorted({key for client in clients for key in candidates(*client)})
    keys = data.draw(st.lists(st.sampled_from(pool), max_size=12))
    records = [(key, data.draw(st.sampled_from([b"", b"D\0", b"+V=%d\0" % n]))) for n, key in enumerate(keys)]
    db = RulesDB(cdb_bytes(records))
    for ip, host, info in clients:
        key, value = _naive(records, ip, host, info)
        assert db.lookup(ip, host, info) == (
            Decision.from_record(key, value) if key is not None else Decision(None, False)
        )


# -- RulesFile ---------------------------------------------------------------


def _write(path, text: bytes) -> None:
    path.write_bytes(cdb_bytes(compile_rules(text)))


def _replace(path, text: bytes) -> None:
    """The way tcprules does it: a new file renamed over the old one."""
    tmp = path.with_name(path.name + ".tmp")
    _write(tmp, text)
    os.rename(tmp, path)


def _deny(rf: RulesFile, ip: str = "1.2.3.4") -> bool:
    db = rf.current()
    assert db is not None
    return db.lookup(ip).deny


def _errno(rf: RulesFile) -> int:
    with pytest.raises(OSError) as info:
        rf.current()
    return info.value.errno


def test_rulesfile_missing(tmp_path) -> None:
    assert RulesFile(tmp_path / "none", missing_ok=True).current() is None
    assert RulesFile(tmp_path / "nodir" / "none", missing_ok=True).current() is None
    assert _errno(RulesFile(tmp_path / "none")) == errno.ENOENT


def test_rulesfile_missing_ok_is_only_enoent(tmp_path) -> None:
    (tmp_path / "file").write_bytes(b"")
    assert _errno(RulesFile(tmp_path / "file" / "r.cdb", missing_ok=True)) == errno.ENOTDIR
    assert _errno(RulesFile(tmp_path, missing_ok=True)) == errno.EISDIR
    assert _errno(RulesFile(tmp_path / "file", missing_ok=True)) == errno.EPROTO


def test_rulesfile_caches_a_settled_file(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(rules, "_SETTLE_NS", -(10**12))
    path = tmp_path / "r.cdb"
    _write(path, b"1.2.3.4:deny\n")
    rf = RulesFile(path)
    assert rf.current() is rf.current()


def test_rulesfile_replace_by_rename(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(rules, "_SETTLE_NS", -(10**12))
    path = tmp_path / "r.cdb"
    _write(path, b"1.2.3.4:deny\n")
    rf = RulesFile(path)
    assert _deny(rf)
    _replace(path, b"1.2.3.5:deny\n")  # same size, new inode
    assert not _deny(rf)


def test_rulesfile_in_place_same_size_is_seen_at_once(tmp_path) -> None:
    """Rewritten in place within the file system's timestamp granularity, a file keeps size and times.

    The stat key is frozen here to model that: a file whose times are recent is re-read on every
    call, so the change shows at once; only a file whose times are old is served from the cache.
    """
    path = tmp_path / "r.cdb"
    _write(path, b"1.2.3.4:deny\n")
    for age_ns, cached in [(0, False), (10**10, True)]:
        when = time.time_ns() - age_ns
        rf = RulesFile(path)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(rules, "_stat_key", lambda st, when=when: (1, 2, 3, when, when))
            assert _deny(rf)
            for n in range(1, 4):
                with open(path, "r+b") as f:
                    f.write(cdb_bytes(compile_rules(b"1.2.3.%d:deny\n" % (4 + n % 2))))
                assert _deny(rf) == (cached or n % 2 == 0)
        _write(path, b"1.2.3.4:deny\n")


def test_rulesfile_in_place_change_of_settled_file(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(rules, "_SETTLE_NS", -(10**12))
    path = tmp_path / "r.cdb"
    _write(path, b"1.2.3.4:deny\n")
    rf = RulesFile(path)
    assert _deny(rf)
    before = os.stat(path)
    with open(path, "r+b") as f:
        f.write(cdb_bytes(compile_rules(b'1.2.3.4:deny,X="1"\n')))  # longer: size changes
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # mtime restored, ctime moves on
    assert rf.current().lookup("1.2.3.4").env == [(b"X", b"1")]


def test_rulesfile_delete(tmp_path) -> None:
    path = tmp_path / "r.cdb"
    _write(path, b"1.2.3.4:deny\n")
    strict, lax = RulesFile(path), RulesFile(path, missing_ok=True)
    assert _deny(strict) and _deny(lax)
    path.unlink()
    assert _errno(strict) == errno.ENOENT
    assert lax.current() is None
    _write(path, b"1.2.3.4:allow\n")
    assert not _deny(strict) and not _deny(lax)


@pytest.mark.parametrize("breakage", ["garbage", "truncated", "empty", "directory", "socket", "loop", "notdir"])
def test_rulesfile_broken_while_in_use(tmp_path, monkeypatch, breakage: str) -> None:
    """Whatever happens to the file, the next call reports it (never the old rules), twice, then recovers."""
    monkeypatch.setattr(rules, "_SETTLE_NS", -(10**12))
    folder = tmp_path / "rules"
    folder.mkdir()
    path = folder / "r.cdb"
    _write(path, b"1.2.3.4:deny\n")
    rf = RulesFile(path, missing_ok=True)
    assert _deny(rf)
    expected = {
        "garbage": errno.EPROTO,
        "truncated": errno.EPROTO,
        "empty": errno.EPROTO,
        "directory": errno.EISDIR,
        "socket": errno.ENXIO,
        "loop": errno.ELOOP,
        "notdir": errno.ENOTDIR,
    }[breakage]
    good = path.read_bytes()
    if breakage == "garbage":
        path.write_bytes(random.Random(1).randbytes(len(good)))
    elif breakage == "truncated":
        with open(path, "r+b") as f:
            f.truncate(len(good) - 8)
    elif breakage == "empty":
        path.write_bytes(b"")
    elif breakage == "directory":
        path.unlink()
        path.mkdir()
    elif breakage == "socket":
        path.unlink()
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()
    elif breakage == "loop":
        path.unlink()
        path.symlink_to(path.name)
    elif breakage == "notdir":
        path.unlink()
        folder.rmdir()
        folder.write_bytes(b"")
    assert _errno(rf) == expected
    assert _errno(rf) == expected
    if breakage == "notdir":
        folder.unlink()
        folder.mkdir()
    elif breakage == "directory":
        path.rmdir()
    else:
        path.unlink()
    path.write_bytes(good)
    assert _deny(rf)


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root reads files whatever their mode (the socket/dir/loop cases cover errors)"
)
def test_rulesfile_unreadable(tmp_path) -> None:
    path = tmp_path / "r.cdb"
    _write(path, b"1.2.3.4:deny\n")
    rf = RulesFile(path)
    assert _deny(rf)
    path.chmod(0)
    assert _errno(rf) == errno.EACCES
    path.chmod(0o644)
    assert _deny(rf)


def test_rulesdb_over_mmap(tmp_path) -> None:
    import mmap

    path = tmp_path / "r.cdb"
    _write(path, b'1.2.3.:allow,A="b"\n')
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        decision = RulesDB(m).lookup("1.2.3.9")
    assert decision.key == b"1.2.3." and decision.env == [(b"A", b"b")]


def test_cdb_bytes_equals_pure_cdb_for_ordinary_keys() -> None:
    records = compile_rules(b'1.2.3.4:deny\n10.0.0.1-20:allow,X="y"\n=example.com:allow\n')
    out = io.BytesIO()
    writer = cdblib.Writer(out)
    for key, value in records:
        writer.put(key, value)
    writer.finalize()
    assert cdb_bytes(records) == out.getvalue()
