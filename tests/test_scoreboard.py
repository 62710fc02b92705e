"""The scoreboard layout, read by a reader that is not the writer, and the -c capacity protocol."""

from __future__ import annotations

import os
import socket
import struct

import pytest

from prefork import scoreboard as sb
from prefork import scoreboard_read as reader
from prefork.capacity import Capacity


def make_board(tmp_path, workers: int = 2, limit: int = 3) -> sb.ScoreboardFile:
    return sb.ScoreboardFile(str(tmp_path / "board"), workers, limit, os.getpid(), "svc")


def test_header_bytes_follow_the_documented_layout(tmp_path):
    board = make_board(tmp_path, workers=3, limit=40)
    board.set_local("127.0.0.1", 4321)
    raw = (tmp_path / "board").read_bytes()
    assert len(raw) == 256 + 3 * 256 + 16  # header, slots, the trailer an IPv6 listener's address goes in
    assert raw[187] == 0 and raw[-16:] == bytes(16)  # IPv4: the trailer unused
    assert raw[0:4] == b"PFSB"
    version, header_size, slot_size, nslots, limit, master_pid, port = struct.unpack_from("<7I", raw, 4)
    assert (version, header_size, slot_size, nslots, limit, master_pid, port) == (1, 256, 256, 3, 40, os.getpid(), 4321)
    assert raw[44:48] == bytes([127, 0, 0, 1])
    assert raw[192:195] == b"svc"


def test_reader_sees_writer_fields(tmp_path):
    board = make_board(tmp_path)
    slot = board.slot_offset(1)
    board.put32(slot + sb.OFF_PID, 4242)
    board.put64(slot + sb.OFF_ACCEPTED, 7)
    board.put64(slot + sb.OFF_DENIED, 2)
    board.put64(slot + sb.OFF_EXIT_SIGNAL, 1)
    board.put64(slot + sb.OFF_BUCKETS + 8 * 11, 5)
    board.put32(sb.H_ORPHANS, 1)
    board.put32(slot + sb.OFF_ACTIVE, 2)
    snap = reader.read(str(tmp_path / "board"))
    assert snap.slots[1].pid == 4242
    assert snap.slots[1].accepted == 7 and snap.accepted == 7
    assert snap.slots[1].denied == 2
    assert snap.slots[1].exit_signal == 1
    assert snap.slots[1].duration_buckets[11] == 5
    assert snap.active == 3
    assert snap.name == "svc"


@pytest.mark.parametrize(
    "mangle, message",
    [
        (lambda raw: raw[:100], "truncated header"),
        (lambda raw: b"XXXX" + raw[4:], "not a prefork scoreboard"),
        (lambda raw: raw[:4] + struct.pack("<I", 99) + raw[8:], "unsupported layout version 99"),
        (lambda raw: raw[:300], "truncated slots"),
    ],
)
def test_reader_refuses_what_it_does_not_understand(tmp_path, mangle, message):
    make_board(tmp_path)
    raw = (tmp_path / "board").read_bytes()
    with pytest.raises(reader.ScoreboardError, match=message):
        reader.parse(mangle(raw))


def test_bucket_index_edges():
    assert sb.bucket_index(0) == 0
    assert sb.bucket_index(5_000_000) == 0
    assert sb.bucket_index(5_000_001) == 1
    assert sb.bucket_index(10**12) == len(sb.DURATION_BUCKETS) - 1


def test_capacity_is_one_limit_across_slots(tmp_path):
    board = make_board(tmp_path, workers=2, limit=3)
    r, w = os.pipe2(os.O_NONBLOCK)
    a = Capacity(board, 3, r, w, 0)
    b = Capacity(board, 3, r, w, 1)
    assert a.try_reserve() and b.try_reserve() and a.try_reserve()
    assert not b.try_reserve()  # 3 tokens held across both slots
    b.set_waiting(True)
    a.started()
    a.ended()  # a token comes back and the waiting slot is told
    assert b.take_wakeup()
    assert b.try_reserve()
    assert not a.try_reserve()


def test_a_recycled_token_stays_held_and_wakes_nobody(tmp_path):
    """A worker that reaps while it has no reservation keeps the token for its next accept, without the lock."""
    board = make_board(tmp_path, workers=2, limit=2)
    r, w = os.pipe2(os.O_NONBLOCK)
    a = Capacity(board, 2, r, w, 0)
    b = Capacity(board, 2, r, w, 1)
    assert a.try_reserve() and a.try_reserve()
    a.started()
    a.started()  # two programs, no reservation: the limit is reached
    b.set_waiting(True)
    assert not b.try_reserve()
    a.recycled()  # one program ends: its token is a's reservation now
    assert (a.held, a.active, a.in_use()) == (2, 1, 1)
    assert board.get32(board.slot_offset(0) + sb.OFF_HELD) == 2
    assert not b.take_wakeup() and not b.try_reserve()  # nothing was freed
    a.started()
    a.ended()  # a program ends while a holds no spare token: back to everyone, the waiter is told
    assert b.take_wakeup() and b.try_reserve()


def test_dead_worker_tokens_become_exact_orphans(tmp_path):
    board = make_board(tmp_path, workers=2, limit=2)
    r, w = os.pipe2(os.O_NONBLOCK)
    a = Capacity(board, 2, r, w, 0)
    b = Capacity(board, 2, r, w, 1)
    master = Capacity(board, 2, r, w, None)
    assert a.try_reserve()
    a.started()
    assert a.try_reserve()  # slot 0 holds 2: one running program, one idle reservation
    assert not b.try_reserve()
    # Worker 0 dies: one program still runs (an orphan), the idle reservation is gone.
    master.absorb_dead_worker(0, 1)
    assert master.in_use() == 1
    assert b.try_reserve()
    assert not b.try_reserve()
    master.orphan_ended()
    assert b.try_reserve()


def test_reader_refuses_more_slots_than_it_accepts_before_reading_them(tmp_path):
    make_board(tmp_path)
    raw = bytearray((tmp_path / "board").read_bytes())
    struct.pack_into("<I", raw, 16, reader.MAX_SLOTS + 1)
    raw += bytes((reader.MAX_SLOTS + 1) * sb.SLOT_SIZE)  # even with the bytes there
    with pytest.raises(reader.ScoreboardError, match=rf"^bad header \({reader.MAX_SLOTS + 1} slots, at most 4096\)$"):
        reader.parse(bytes(raw))
    struct.pack_into("<I", raw, 16, reader.MAX_SLOTS)
    assert len(reader.parse(bytes(raw)).slots) == reader.MAX_SLOTS


def test_reader_ignores_bytes_past_the_declared_slots(tmp_path):
    board = make_board(tmp_path)
    board.put64(board.slot_offset(1) + sb.OFF_ACCEPTED, 9)
    with open(tmp_path / "board", "ab") as f:
        f.write(b"\xff" * 5000)
    snap = reader.read(str(tmp_path / "board"))
    assert len(snap.slots) == 2 and snap.accepted == 9


def test_reader_reads_through_a_descriptor(tmp_path):
    from prefork import shmfile

    board = make_board(tmp_path)
    board.put64(board.slot_offset(0) + sb.OFF_ACCEPTED, 4)
    fd = shmfile.open_source(str(tmp_path / "board"))
    try:
        os.unlink(tmp_path / "board")
        assert reader.read(str(tmp_path / "board"), fd).accepted == 4
    finally:
        os.close(fd)


def test_reader_copies_every_byte_of_what_it_parses(tmp_path):
    """The word-by-word copy (each 8-byte word loaded whole) is the file's bytes: large counters, odd lengths."""
    board = make_board(tmp_path)
    slot = board.slot_offset(1)
    board.put64(slot + sb.OFF_ACCEPTED, 2**64 - 1)
    board.put64(slot + sb.OFF_DURATION_SUM, 0x0102030405060708)
    board.put64(sb.H_RESTARTS, 2**40 + 3)
    snap = reader.read(str(tmp_path / "board"))
    assert snap.slots[1].accepted == 2**64 - 1 and snap.slots[1].duration_sum_ns == 0x0102030405060708
    assert snap.worker_restarts == 2**40 + 3 and snap.name == "svc"
    raw = (tmp_path / "board").read_bytes()
    assert reader.read(str(tmp_path / "board")) == reader.parse(raw)
    (tmp_path / "short").write_bytes(raw[:256 + 256 + 13])  # the second slot cut short, mid-word
    with pytest.raises(reader.ScoreboardError, match="^truncated slots$"):
        reader.read(str(tmp_path / "short"))


def test_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        reader.read(str(tmp_path / "none"))  # OSError stays OSError: tcpserver-status prints its errno's words
    (tmp_path / "small").write_bytes(b"PFSB")
    with pytest.raises(reader.ScoreboardError, match=r"^truncated \(4 bytes\)$"):
        reader.read(str(tmp_path / "small"))


class _Killed(Exception):
    pass


class _DyingBoard(sb.ScoreboardFile):
    """A board whose writer is 'SIGKILLed' after a given number of stores."""

    stores_left = 10**9

    def _tick(self) -> None:
        if self.stores_left == 0:
            raise _Killed
        self.stores_left -= 1

    def put32(self, offset: int, value: int) -> None:
        self._tick()
        super().put32(offset, value)

    def put64(self, offset: int, value: int) -> None:
        self._tick()
        super().put64(offset, value)


def _counted_total(board: sb.ScoreboardFile, slot: int) -> tuple[int, int, int]:
    exits = sum(board.get64(slot + off) for off in sb.EXIT_OFFSETS) + sum(
        board.get64(sb.H_ORPHAN_EXITS + 8 * c) for c in range(3))
    buckets = sum(board.get64(slot + sb.OFF_BUCKETS + 8 * i) for i in range(12)) + sum(
        board.get64(sb.H_ORPHAN_BUCKETS + 8 * i) for i in range(12))
    return exits, buckets, board.get64(slot + sb.OFF_DURATION_SUM) + board.get64(sb.H_ORPHAN_DURATION_SUM)


@pytest.mark.parametrize("kill_after", range(12))
def test_an_exit_is_counted_once_whenever_its_worker_dies(tmp_path, kill_after):
    """The worker's sequence (count, reap, void the record) cut after every store, then the master's
    settling as master.py does it: the program's exit is counted exactly once, with its duration."""
    board = _DyingBoard(str(tmp_path / "board"), 2, 3, os.getpid(), "svc")
    slot = board.slot_offset(1)
    # Earlier history of this slot: 5 exits 0 with 5 ms each in bucket 0.
    board.put64(slot + sb.OFF_EXIT_ZERO, 5)
    board.put64(slot + sb.OFF_DURATION_SUM, 5 * 4_000_000)
    board.put64(slot + sb.OFF_BUCKETS, 5)
    before = _counted_total(board, slot)
    pid, duration = 31337, 7_000_000
    zombie = True
    board.stores_left = kill_after
    try:
        board.count_exit(slot, pid, 1, sb.bucket_index(duration), 1, 5 * 4_000_000 + duration, 1)
        zombie = False  # os.waitpid
        board.counted(slot)
        board.stores_left = -1
    except _Killed:
        pass
    board.stores_left = 10**9
    # The master: the dead worker's record first, then the zombie (if any) as an orphan.
    found = {pid} if zombie else set()
    precounted = {board.settle_exit(1)} & found
    if zombie and pid not in precounted:
        board.put64(sb.H_ORPHAN_EXITS + 8, board.get64(sb.H_ORPHAN_EXITS + 8) + 1)
        board.put64(sb.H_ORPHAN_DURATION_SUM, board.get64(sb.H_ORPHAN_DURATION_SUM) + duration)
        off = sb.H_ORPHAN_BUCKETS + 8 * sb.bucket_index(duration)
        board.put64(off, board.get64(off) + 1)
    after = _counted_total(board, slot)
    assert (after[0] - before[0], after[1] - before[1], after[2] - before[2]) == (1, 1, duration)
    assert board.get32(slot + sb.OFF_COUNTING_PID) == 0
    assert board.settle_exit(1) == 0  # settled once


def test_settle_exit_never_moves_a_counter_back_and_ignores_a_garbled_record(tmp_path):
    board = make_board(tmp_path)
    slot = board.slot_offset(0)
    board.put64(slot + sb.OFF_EXIT_ZERO, 9)
    board.count_exit(slot, 77, 0, 0, 8, 1, 1)  # a record behind the counter: nothing moves back
    board.put64(slot + sb.OFF_EXIT_ZERO, 9)
    assert board.settle_exit(0) == 77 and board.get64(slot + sb.OFF_EXIT_ZERO) == 9
    board.count_exit(slot, 78, 0, 0, 10, 1, 1)
    board.put32(slot + sb.OFF_COUNTING_WHICH, 7 << 8 | 200)  # no such class or bucket
    assert board.settle_exit(0) == 78
    assert board.get32(slot + sb.OFF_COUNTING_PID) == 0


def test_ipv6_listener_address_in_the_trailer(tmp_path):
    """An IPv6 listener: header byte 187 says 6, its address is in the 16 bytes after the slots; bytes 44-47 stay
    zero (a reader that knows only the IPv4 field shows 0.0.0.0), and --metrics' store keeps byte 187."""
    board = make_board(tmp_path, workers=3)
    board.set_local("2001:db8::7", 443)
    board.set_metrics("127.0.0.1", 9100)
    raw = (tmp_path / "board").read_bytes()
    assert raw[187] == 6 and raw[44:48] == bytes(4)
    assert raw[256 + 3 * 256:] == socket.inet_pton(socket.AF_INET6, "2001:db8::7")
    snap = reader.read(str(tmp_path / "board"))
    assert (snap.local_ip, snap.local_port, snap.local, snap.metrics_ip, snap.metrics_port) == (
        "2001:db8::7", 443, "[2001:db8::7]:443", "127.0.0.1", 9100)
    assert reader.service_name(snap) == "svc"


def test_ipv6_flag_without_its_trailer_is_refused(tmp_path):
    board = make_board(tmp_path, workers=2)
    board.set_local("::1", 80)
    path = tmp_path / "board"
    os.truncate(path, 256 + 2 * 256 + 8)
    with pytest.raises(reader.ScoreboardError, match="truncated local address"):
        reader.read(str(path))
