"""The client table of the per-client limits (prefork/clients.py): keys, limit values, counting, and how the
master takes over a dead worker's entries."""

from __future__ import annotations

import os
import socket
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prefork import clients
from prefork.clients import ADMITTED, FREE, ClientTable, LimitError, Region, address_key, network_bytes, parse_limits


def network(ip: str) -> bytes:
    key = address_key(ip)
    return key[: network_bytes(key)]


def test_keys_put_ipv4_in_its_mapped_ipv6_form_and_networks_are_slash_24_and_slash_64():
    assert address_key("10.1.2.3") == bytes(10) + b"\xff\xff" + bytes([10, 1, 2, 3])
    assert network("10.1.2.3") == network("10.1.2.250")
    assert network("10.1.2.3") != network("10.1.3.3")
    assert address_key("2001:db8::1") == socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    assert network("2001:db8:0:5::1") == network("2001:db8:0:5:ffff::9")
    assert network("2001:db8:0:5::1") != network("2001:db8:0:6::1")
    with pytest.raises(OSError):
        address_key("10.1.2")


def test_limit_values():
    assert parse_limits({b"PATH": b"/bin"}) is None
    assert parse_limits({b"MAXCONNIP": b"0"}) == (0, -1, -1)
    assert parse_limits({b"MAXCONNC": b"15", b"MAXLOAD": b"350"}) == (-1, 15, 350)
    for bad in (b"", b"5x", b"-1", b"+5", b" 5", b"5 ", "\u0661".encode(), b"1" * 19):
        with pytest.raises(LimitError, match=r"^MAXCONNIP is not a number: "):
            parse_limits({b"MAXCONNIP": bad})


def test_count_sees_live_entries_of_every_region_and_stops_at_the_limit():
    table = ClientTable(slots=2, limit=5)
    a, b = Region(table, 0), Region(table, 1)
    key, other = address_key("10.0.0.1"), address_key("10.0.0.2")
    for region in (a, a, b):
        table.put(region.take(), key, 0)
    table.put(b.take(), other, 0)
    assert table.count(key, 99) == (3, 3)
    assert table.count(key, 2)[0] == 2  # stops at the limit
    assert table.count(key, 99, network_bytes(key)) == (3, 4)
    assert table.count(other, 99, network_bytes(key)) == (1, 4)
    assert table.count(address_key("10.0.1.1"), 99, network_bytes(key)) == (0, 0)


def test_a_freed_entry_no_longer_counts_and_is_reused_first():
    table = ClientTable(slots=1, limit=3)
    region = Region(table, 0)
    key = address_key("192.0.2.1")
    first, second = region.take(), region.take()
    table.put(first, key, 0)
    table.put(second, key, 0)
    region.give_back(first)
    assert table.count(key, 99) == (1, 1)
    assert region.take() == first  # lowest first, last in first out: the high-water mark stays low
    assert table.u32[0] == 2  # region 0's high-water mark


def test_an_entry_counts_from_the_moment_its_pid_word_is_written():
    """A worker killed in the middle of filling an entry leaves one that does not count."""
    table = ClientTable(slots=1, limit=3)
    region = Region(table, 0)
    off = region.take()
    key = address_key("192.0.2.9")
    table.mm[off + clients.ADDR : off + clients.ADDR + 16] = key  # address written, pid word not yet
    assert table.count(key, 99) == (0, 0)
    table.u32[off >> 2] = ADMITTED
    assert table.count(key, 99) == (1, 1)


@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 3), st.booleans()), max_size=60))
def test_count_equals_a_plain_model(ops):
    """Random takes and gives back over three regions and four addresses: count() is the model's count."""
    table = ClientTable(slots=3, limit=8)
    regions = [Region(table, i) for i in range(3)]
    held: list[list[tuple[int, int]]] = [[], [], []]
    for region_index, host, take in ops:
        if take and len(held[region_index]) < 9:
            off = regions[region_index].take()
            table.put(off, address_key(f"10.0.0.{host}"), 0)
            held[region_index].append((off, host))
        elif held[region_index]:
            off, _ = held[region_index].pop(0)
            regions[region_index].give_back(off)
    everyone = sum(len(h) for h in held)
    for host in range(4):
        key = address_key(f"10.0.0.{host}")
        model = sum(1 for entries in held for _off, h in entries if h == host)
        assert table.count(key, 99) == (model, model)
        assert table.count(key, 99, network_bytes(key)) == (model, everyone)


def test_the_master_takes_over_a_dead_workers_live_programs_and_finds_an_unstored_pid_by_its_socket(tmp_path):
    table = ClientTable(slots=2, limit=4)
    region = Region(table, 1)
    key = address_key("198.51.100.7")
    a, b = socket.socketpair()
    child = subprocess.Popen(["sleep", "30"], stdin=a)  # a program whose fd 0 is "the connection"
    try:
        spawning = region.take()  # killed after the spawn, before storing the pid: only the socket's inode
        table.put(spawning, key, os.fstat(a.fileno()).st_ino)
        running = region.take()
        table.put(running, key, 0)
        table.set_pid(running, 4_000_001)  # another program, still alive
        gone = region.take()
        table.put(gone, key, 0)
        table.set_pid(gone, 4_000_002)  # reaped by the worker before it died: not among the master's children
        orphans: dict[int, int] = {}
        table.settle_dead(1, {child.pid, 4_000_001}, orphans)
        assert set(orphans) == {child.pid, 4_000_001}
        assert table.count(key, 99) == (2, 2)  # both now in the master's region
        assert all(table.u32[orphans[p] >> 2] == p for p in orphans)
        assert all(table.u32[table.entry(1, i) >> 2] == FREE for i in range(table.per))
        assert table.u32[(1 * table.stride) >> 2] == 0  # the slot's region is fresh for the next worker
        table.free(orphans.pop(child.pid))  # the master reaps it
        assert table.count(key, 99) == (1, 1)
    finally:
        child.kill()
        child.wait(10)
        a.close()
        b.close()
