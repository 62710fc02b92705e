"""Per-client limits: the limits patch's MAXCONNIP, MAXCONNC, MAXLOAD and DIEMSG, exact across workers.

Every connection that gets past the rules holds one entry in a table shared by
the master and its workers, from before its program starts until it is reaped:
the client's address and the program's pid.  A connection that carries a
MAXCONNIP or MAXCONNC limit (from tcpserver's environment or its rules line)
counts the entries of its address (or network) and takes its own under the
``-c`` record lock, so two workers can never both admit the limit's last
connection.  Connections without a limit take their entry without the lock.
Programs whose worker died stay in the table (the master moves them to its own
region and frees them when it reaps them), so a SIGKILLed worker changes no
count.  docs/ARCHITECTURE.md, "Client table (per-client limits)", has the layout and the proof;
docs/reference/tcpserver.md, "Per-client limits", the contract.

The table is a memfd: private to the server's processes (nobody else can open
it) and a descriptor that can cross an exec.
"""

from __future__ import annotations

import mmap
import os
import socket

from prefork import proc

ENTRY = 32  # bytes: u32 pid, u32 spare, u64 socket inode, 16 bytes address
ADDR = 16  # the address's offset inside an entry
FREE = 0
ADMITTED = 0xFFFFFFFF  # taken, program not started yet (or its pid not stored yet)
V4MAPPED = bytes(10) + b"\xff\xff"
V6_NETWORK = 8  # MAXCONNC for IPv6 counts the client's /64 (one LAN), as a /24 is for IPv4
LIMIT_NAMES = (b"MAXCONNIP", b"MAXCONNC", b"MAXLOAD")


def address_key(ip: str) -> bytes:
    """The 16 bytes of a client address (IPv4 as ::ffff:a.b.c.d), the table's key."""
    if ":" in ip:
        return socket.inet_pton(socket.AF_INET6, ip)
    return V4MAPPED + socket.inet_pton(socket.AF_INET, ip)


def network_bytes(key: bytes) -> int:
    """How many leading bytes of KEY name the network MAXCONNC counts: the /24 of an IPv4 client, the /64
    of an IPv6 one."""
    return 15 if key.startswith(V4MAPPED) else V6_NETWORK


class LimitError(ValueError):
    """A limit variable that is not a decimal number."""


def parse_limits(env: dict[bytes, bytes]) -> tuple[int, int, int] | None:
    """(MAXCONNIP, MAXCONNC, MAXLOAD) from a program's environment, -1 for unset; None if none is set.

    A value must be decimal digits (0 is valid: always reject); anything else
    raises LimitError naming the variable, and the connection is dropped.
    """
    values = [env.get(name) for name in LIMIT_NAMES]
    if values == [None, None, None]:
        return None
    out = []
    for name, value in zip(LIMIT_NAMES, values, strict=True):
        if value is None:
            out.append(-1)
        elif value.isdigit() and len(value) <= 18 and value.isascii():
            out.append(int(value))
        else:
            raise LimitError(f"{name.decode()} is not a number: {value.decode('utf-8', 'replace')!r}")
    return out[0], out[1], out[2]


def load_over(maxload: int) -> int | None:
    """The 1-minute load average × 100 when it is at or above MAXLOAD (the connection is refused), else None."""
    load = int(os.getloadavg()[0] * 100)
    return load if load >= maxload else None


class ClientTable:
    """The shared table: one region of entries per worker slot, then the master's region (orphans).

    A worker never has more live connections than the ``-c`` tokens it holds,
    and the orphans never more than the limit, so ``limit + 1`` entries a
    region is enough; the pages are touched only as they are used.  Each
    region starts with a header entry whose first word is its high-water mark
    (entries ever used by its owner), so a count scans only used entries.
    """

    def __init__(self, slots: int, limit: int, fd: int | None = None) -> None:
        self.slots = slots
        self.per = limit + 1
        self.stride = (self.per + 1) * ENTRY  # bytes per region, its header included
        self.size = (slots + 1) * self.stride
        if fd is None:
            fd = os.memfd_create("prefork-clients", os.MFD_CLOEXEC)
            os.ftruncate(fd, self.size)
        self.fd = fd
        self.mm = mmap.mmap(fd, self.size)
        self.u32 = memoryview(self.mm).cast("I")
        self.u64 = memoryview(self.mm).cast("Q")

    def entry(self, region: int, i: int) -> int:
        """Byte offset of entry I of REGION (region == slots: the master's)."""
        return region * self.stride + (i + 1) * ENTRY

    def used(self, region: int, i: int) -> None:
        """Raise REGION's high-water mark to cover entry I (only its owner calls this)."""
        head = (region * self.stride) >> 2
        if self.u32[head] <= i:
            self.u32[head] = i + 1

    def reset(self, region: int) -> None:
        """A region with every entry free (the master, before a new worker takes the slot)."""
        base = region * self.stride
        self.mm[base : base + self.stride] = bytes(self.stride)

    # -- counting (under the -c lock) ---------------------------------------------------------
    def count(self, key: bytes, stop: int, network: int = 16) -> tuple[int, int]:
        """(live entries of address KEY, live entries whose address shares KEY's first NETWORK bytes), in one
        scan; it ends early once the first reaches STOP.  NETWORK 16 (the default) counts the address only."""
        mm, u32, per = self.mm, self.u32, self.per
        prefix = key[:network]
        full = network >= 16
        n_ip = n_net = 0
        for region in range(self.slots + 1):
            base = region * self.stride
            end = base + (min(u32[base >> 2], per) + 1) * ENTRY
            pos = mm.find(prefix, base + ENTRY, end)
            while pos >= 0:
                start = pos - ADDR
                if (start - base) % ENTRY == 0 and u32[start >> 2] != FREE:
                    n_net += 1
                    if full or mm[pos : pos + 16] == key:
                        n_ip += 1
                        if n_ip >= stop:
                            return n_ip, n_net
                pos = mm.find(prefix, pos + 1, end)
        return n_ip, n_net

    # -- one entry ------------------------------------------------------------------------------
    def put(self, offset: int, key: bytes, inode: int) -> None:
        """Fill a free entry; the pid word, written last, makes it count."""
        self.mm[offset + ADDR : offset + ADDR + 16] = key
        self.u64[(offset + 8) >> 3] = inode
        self.u32[offset >> 2] = ADMITTED

    def set_pid(self, offset: int, pid: int) -> None:
        self.u32[offset >> 2] = pid

    def free(self, offset: int) -> None:
        self.u32[offset >> 2] = FREE

    # -- the master's side ----------------------------------------------------------------------
    def settle_dead(self, index: int, found: set[int], orphans: dict[int, int]) -> None:
        """Move dead worker INDEX's entries of programs still alive (FOUND: the master's children whose
        worker is gone) into the master's region, recording pid -> entry in ORPHANS; free the rest.

        Called under the -c lock.  An entry still ADMITTED may belong to a program
        started in the instant the worker died, before it stored the pid: that is
        the new child whose stdin is the entry's socket (its inode).
        """
        claimed = set(orphans)
        spare = [i for i in reversed(range(self.per)) if self.u32[self.entry(self.slots, i) >> 2] == FREE]
        for i in range(self.per):
            off = self.entry(index, i)
            pid = self.u32[off >> 2]
            if pid == FREE:
                continue
            if pid == ADMITTED:
                pid = _program_on(self.u64[(off + 8) >> 3], found - claimed)
            if pid and pid in found and pid not in claimed and spare:
                place = spare.pop()
                self.used(self.slots, place)
                new = self.entry(self.slots, place)
                self.put(new, bytes(self.mm[off + ADDR : off + ADDR + 16]), 0)
                self.set_pid(new, pid)
                orphans[pid] = new
                claimed.add(pid)
            self.free(off)
        self.reset(index)


def _program_on(inode: int, candidates: set[int]) -> int:
    """The candidate whose fd 0 is the socket with this inode, or 0."""
    if not inode:
        return 0
    for pid in sorted(candidates):
        if proc.fd_inode(pid, 0) == inode:
            return pid
    return 0


class Region:
    """A worker's own region: its free entries, lowest first and reused last-in first-out, so the
    high-water mark stays at the worker's peak concurrency."""

    def __init__(self, table: ClientTable, index: int) -> None:
        self.table = table
        self.index = index
        self.free_list = list(reversed(range(table.per)))  # the master reset it before forking us

    def take(self) -> int:
        """A free entry's offset for a new connection, or -1 if every one is in use (it cannot be:
        see ClientTable)."""
        if not self.free_list:
            return -1
        i = self.free_list.pop()
        self.table.used(self.index, i)
        return self.table.entry(self.index, i)

    def give_back(self, offset: int) -> None:
        if offset >= 0:
            self.table.free(offset)
            self.free_list.append((offset - self.index * self.table.stride) // ENTRY - 1)
