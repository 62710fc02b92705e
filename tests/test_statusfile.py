"""control/statusfile.py's codecs: the exact bytes of daemontools' 18-byte, runit's 20-byte and s6's 35-byte
status files, and s6's event letters."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st_

from prefork import tai64n
from prefork.control import statusfile
from prefork.control.statusfile import DAEMONTOOLS, RUNIT, S6, Status

LABEL = tai64n.pack(1_700_000_000, 123_456_789)


def test_codecs_are_listed_by_name():
    assert statusfile.CODECS == {"daemontools": DAEMONTOOLS, "runit": RUNIT, "s6": S6}
    assert statusfile.MODES == ("daemontools", "runit", "s6")
    assert (DAEMONTOOLS.size, RUNIT.size) == (18, 20) == (statusfile.SIZE, statusfile.SIZE + 2)


@pytest.mark.parametrize(("state", "daemontools", "runit", "stat"), [
    # (label, pid, paused, want, term_sent) as the supervisor holds them
    ((LABEL, 0, False, b"u", False), struct.pack("<IB1s", 0, 0, b"u"), struct.pack("<IB1sBB", 0, 0, b"u", 0, 0),
     b"down\n"),
    ((LABEL, 77, True, b"d", True), struct.pack("<IB1s", 77, 1, b"d"), struct.pack("<IB1sBB", 77, 1, b"d", 1, 1),
     b"run, paused, got TERM, want down\n"),
    ((LABEL, 77, False, b"o", False), struct.pack("<IB1s", 77, 0, b"\0"), struct.pack("<IB1sBB", 77, 0, b"d", 0, 1),
     b"run, want down\n"),
    # paused and TERM mean nothing without a process: never written then
    ((LABEL, 0, True, b"d", True), struct.pack("<IB1s", 0, 0, b"d"), struct.pack("<IB1sBB", 0, 0, b"d", 0, 0),
     b"down\n"),
])
def test_what_a_supervisor_writes(state, daemontools, runit, stat):
    assert DAEMONTOOLS.files(DAEMONTOOLS.record(*state)) == [("status", LABEL + daemontools)]
    pid = state[1]
    assert RUNIT.files(RUNIT.record(*state)) == [
        ("status", LABEL + runit), ("stat", stat), ("pid", b"%d\n" % pid if pid else b"")]


def test_runit_status_decodes_with_its_term_byte():
    data = LABEL + struct.pack("<IB1sBB", 9, 1, b"d", 1, 1)
    assert RUNIT.decode(data) == Status(LABEL, 9, True, b"d", term=True)
    assert RUNIT.encode(RUNIT.decode(data)) == data
    # daemontools' codec reads the 18-byte prefix every format shares, as svstat does with runsv's file
    assert DAEMONTOOLS.decode(data) == Status(LABEL, 9, True, b"d") == statusfile.decode(data)
    with pytest.raises(ValueError, match="^bad format$"):
        RUNIT.decode(data[:19])


@given(label=st_.binary(min_size=12, max_size=12), pid=st_.integers(0, 2**32 - 1), paused=st_.booleans(),
       want=st_.binary(min_size=1, max_size=1), term=st_.booleans())
def test_round_trip(label, pid, paused, want, term):
    for codec in (DAEMONTOOLS, RUNIT):  # the two little-endian formats that share the 18-byte prefix
        status = Status(label, pid, paused, want, term and codec is RUNIT)
        data = codec.encode(status)
        assert len(data) == codec.size and data[:12] == label and data[12:16] == pid.to_bytes(4, "little")
        assert codec.decode(data) == status


@pytest.mark.parametrize("status", [Status(b"\0" * 11, 1, False, b"u"), Status(LABEL, 1, False, b"uu")])
def test_encode_refuses_what_does_not_fit(status):
    for codec in statusfile.CODECS.values():
        with pytest.raises(ValueError):
            codec.encode(status)


# -- s6 (supervise --s6): bytes captured from Debian's s6-supervise 2.11.3.2 -------------------------------------
S6_UP = bytes.fromhex("400000006b16d28009d3b0ec" "400000006b16d28009c20352" "0000000000004a09" "0000" "04")
S6_DOWN_TERM = bytes.fromhex("400000006b16d2890cf07f79" "400000006b16d2890d11cbe7" "0000000000000000" "000f" "08")
S6_PAUSED = bytes.fromhex("400000006b16d28921c56aa9" "400000006b16d2890d11cbe7" "0000000000004a46" "000f" "05")
S6_DOWN_WANT_UP = bytes.fromhex("400000006b16d28a02baece4" "400000006b16d28a02e29b84" "0000000000000000" "0009" "0c")
S6_ONCE = bytes.fromhex("400000006b16d28b03051052" "400000006b16d28a02e29b84" "0000000000004a54" "0009" "00")


def s6_label(hex24: str) -> bytes:
    """A label of s6's file as prefork holds it: skalibs' TAI less its 27 leap seconds."""
    return tai64n.shift(bytes.fromhex(hex24), -tai64n.SKALIBS_LEAP)


@pytest.mark.parametrize(("data", "expected"), [
    (S6_UP, Status(s6_label("400000006b16d28009d3b0ec"), 0x4A09, False, b"u",
                   ready_label=s6_label("400000006b16d28009c20352"))),
    (S6_DOWN_TERM, Status(s6_label("400000006b16d2890cf07f79"), 0, False, b"d",
                          ready_label=s6_label("400000006b16d2890d11cbe7"), wstat=15, ready=True)),
    (S6_PAUSED, Status(s6_label("400000006b16d28921c56aa9"), 0x4A46, True, b"u",
                       ready_label=s6_label("400000006b16d2890d11cbe7"), wstat=15)),
    (S6_DOWN_WANT_UP, Status(s6_label("400000006b16d28a02baece4"), 0, False, b"u",
                             ready_label=s6_label("400000006b16d28a02e29b84"), wstat=9, ready=True)),
    (S6_ONCE, Status(s6_label("400000006b16d28b03051052"), 0x4A54, False, b"d",
                     ready_label=s6_label("400000006b16d28a02e29b84"), wstat=9)),
], ids=["up", "down-after-TERM", "paused", "down-want-up", "once"])
def test_s6_status_of_the_real_s6_supervise(data, expected):
    assert len(data) == S6.size == 35
    assert S6.decode(data) == expected == statusfile.decode_any(data)
    assert S6.encode(expected) == data
    assert S6.files(expected) == [("status", data)]  # s6 has no other file


def test_s6_labels_are_skalibs_tai():
    label = tai64n.pack(1_700_000_000, 500)
    data = S6.encode(Status(label, 1, False, b"u"))
    assert tai64n.unpack(data[:12]) == (1_700_000_000 + 27, 500)  # 27 leap seconds since 1972
    assert data[12:24] == data[:12]  # no ready moment yet: the label itself, as s6-supervise writes at start
    assert S6.decode(data).seconds == 1_700_000_000
    assert tai64n.shift(b"", 27) == b""


def test_s6_bits_and_big_endian_fields():
    status = Status(LABEL, 2**40 + 5, True, b"u", ready_label=LABEL, wstat=0x7F00, finishing=True, ready=True)
    data = S6.encode(status)
    assert data[24:32] == (2**40 + 5).to_bytes(8, "big") and data[32:34] == b"\x7f\x00"
    assert data[34] == 1 | 2 | 4 | 8
    assert S6.encode(Status(LABEL, 5, False, b"d"))[34] == 0
    with pytest.raises(ValueError, match="^bad format$"):
        S6.decode(data[:34])
    with pytest.raises(ValueError):
        S6.encode(Status(LABEL, 5, False, b"d", ready_label=b"short"))


LABELS = [tai64n.pack(1_700_000_000 + n, 500) for n in range(8)]


def test_s6_records_and_events_through_a_life():
    """What a supervisor writes, state after state, and the letters s6-supervise would write to event/."""
    steps = [
        # (label, pid, paused, want, term_sent, keywords) -> (flags, ready label index, events)
        ((LABELS[0], 0, False, b"u", False, {}), (0x0C, 0, b"")),  # start-up: down, really down since now
        ((LABELS[1], 9, False, b"u", False, {}), (0x04, 0, b"u")),  # started: not ready, the old ready moment kept
        ((LABELS[1], 9, True, b"u", False, {}), (0x05, 0, b"")),  # paused
        ((LABELS[1], 9, False, b"u", False, {"ready_label": LABELS[2]}), (0x0C, 2, b"U")),  # ready (notification)
        ((LABELS[1], 9, False, b"o", True, {"ready_label": LABELS[2]}), (0x08, 2, b"")),  # once: want down
        ((LABELS[3], 0, False, b"o", False, {"wstat": 15, "finishing": True}), (0x02, 2, b"d")),  # dead, ./finish runs
        ((LABELS[4], 0, False, b"d", False, {"wstat": 15}), (0x08, 4, b"D")),  # really down
        ((LABELS[4], 0, False, b"d", False, {"wstat": 15}), (0x08, 4, b"")),  # written again: nothing new
        ((LABELS[5], 10, False, b"u", False, {"wstat": 15}), (0x04, 4, b"u")),
        ((LABELS[6], 0, False, b"u", False, {"wstat": 9}), (0x0C, 6, b"dD")),  # killed, no ./finish
        ((LABELS[6], 11, False, b"u", False, {"wstat": 9, "ready_label": LABELS[7]}), (0x0C, 7, b"uU")),
    ]
    previous = None
    for (label, pid, paused, want, term, kw), (flags, ready_at, events) in steps:
        status = S6.record(label, pid, paused, want, term, previous=previous, **kw)
        data = S6.encode(status)
        assert (data[34], data[12:24], S6.events(previous, status)) == (
            flags, tai64n.shift(LABELS[ready_at], 27), events), (label, pid, kw)
        assert S6.decode(data) == status
        previous = status
    assert DAEMONTOOLS.events(None, previous) == RUNIT.events(None, previous) == b""
    assert (DAEMONTOOLS.event_dir, RUNIT.event_dir, S6.event_dir) == (False, False, True)


def test_decode_any_tells_the_formats_apart_by_size():
    dt = DAEMONTOOLS.encode(Status(LABEL, 7, False, b"u"))
    runit = RUNIT.encode(Status(LABEL, 7, False, b"u"))
    s6 = S6.encode(Status(LABEL, 7, False, b"u"))
    assert statusfile.decode_any(dt) == statusfile.decode_any(runit) == Status(LABEL, 7, False, b"u")
    assert statusfile.decode_any(s6) == Status(LABEL, 7, False, b"u", ready_label=LABEL)
    with pytest.raises(ValueError, match="^bad format$"):
        statusfile.decode_any(s6[:17])


def test_read_reads_an_s6_status(tmp_path):
    (tmp_path / "status").write_bytes(S6_UP)
    assert statusfile.read(str(tmp_path)).pid == 0x4A09


@given(data=st_.binary(max_size=64))
def test_decode_any_is_total(data):
    """Any status file decodes (s6's size as s6's, garbage labels included) or is a 'bad format', never a crash."""
    try:
        status = statusfile.decode_any(data)
    except ValueError as e:
        assert len(data) < statusfile.SIZE and str(e) == "bad format"
        return
    assert len(status.label) == 12 and isinstance(status.seconds, int)  # svstat subtracts it from now
    if len(data) == S6.size:
        assert status.want in (b"u", b"d")
        assert S6.encode(status) == data[:34] + bytes([data[34] & 0x0F])  # every bit s6 defines survives
