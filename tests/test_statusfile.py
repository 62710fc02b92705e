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
