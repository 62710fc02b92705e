"""The ``-c`` limit as one exact count across all workers.

Every connection holds a token from before its ``accept()`` until its program
is reaped (or it is denied or dropped).  A worker takes a token only while the
sum of tokens held by all slots plus the orphans (programs whose worker died)
is below the limit, and takes it under a POSIX record lock, so two workers
can never both take the last one.  The lock is on the scoreboard's private
``lock_fd`` (a memfd only the server's own processes hold), never on the
world-readable scoreboard file itself: a lock any local user could take there
would stall every accept until they let go.  The kernel releases
that lock when its holder dies, so a worker killed at any moment cannot
wedge the others; what it held is handed back by the master, which counts
the dead worker's still-running programs from the kernel's own list of its
children (it is their subreaper) rather than trusting the dead worker's
bookkeeping.

At the limit a worker stops accepting and waits on a shared wake-up pipe; a
release writes one byte there when some slot says it is waiting, so a freed
slot is taken up at once, without polling.
"""

from __future__ import annotations

import fcntl
import os

from prefork import scoreboard as sb


class Capacity:
    """One process's view of the shared limit (a worker's slot, or the master with slot None)."""

    def __init__(self, board: sb.ScoreboardFile, limit: int, wake_r: int, wake_w: int, index: int | None) -> None:
        self.board = board
        self.limit = limit
        self.wake_r = wake_r
        self.wake_w = wake_w
        self.index = index
        self.lock_fd = board.lock_fd
        # word indices into board.u32 (the hot path stores directly, no method call)
        self._helds = [(board.slot_offset(i) + sb.OFF_HELD) >> 2 for i in range(board.workers)]
        self._actives = [(board.slot_offset(i) + sb.OFF_ACTIVE) >> 2 for i in range(board.workers)]
        self._waitings = [(board.slot_offset(i) + sb.OFF_WAITING) >> 2 for i in range(board.workers)]
        self._orphans = sb.H_ORPHANS >> 2
        base = board.slot_offset(index) if index is not None else 0
        self._my_held = (base + sb.OFF_HELD) >> 2
        self._my_active = (base + sb.OFF_ACTIVE) >> 2
        self._my_waiting = (base + sb.OFF_WAITING) >> 2
        self.u32 = board.u32
        self.held = 0
        self.active = 0
        self.waiting = False

    # -- the lock ------------------------------------------------------------------
    def lock(self) -> None:
        """Hold the limit lock; with -v the status: lines are written under it, so their counts
        step by exactly one as 0.88's do."""
        fcntl.lockf(self.lock_fd, fcntl.LOCK_EX)

    def unlock(self) -> None:
        fcntl.lockf(self.lock_fd, fcntl.LOCK_UN)

    # -- worker side -------------------------------------------------------------
    def try_reserve(self) -> bool:
        """Take a token for the next accept if the limit allows; False means wait for a wake-up."""
        u32 = self.u32
        fd = self.lock_fd
        fcntl.lockf(fd, fcntl.LOCK_EX)
        try:
            total = u32[self._orphans]
            for i in self._helds:
                total += u32[i]
            if total >= self.limit:
                return False
            self.held += 1
            u32[self._my_held] = self.held
            return True
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN)

    def started(self) -> None:
        """A reserved token now belongs to an accepted connection."""
        self.active += 1
        self.u32[self._my_active] = self.active

    def ended(self) -> None:
        """A connection ended: give its token back and wake a waiting worker."""
        self.active -= 1
        self.held -= 1
        u32 = self.u32
        u32[self._my_active] = self.active
        u32[self._my_held] = self.held
        self.wake_waiters()

    def recycled(self) -> None:
        """A connection ended and its token becomes this worker's reservation for the next accept.

        The count of tokens held does not change, so the limit still holds
        without taking the lock: this is how a busy worker reserves without
        the two ``fcntl`` calls of ``try_reserve``.  Nobody is woken: the
        token is not free.
        """
        self.active -= 1
        self.u32[self._my_active] = self.active

    def release(self) -> None:
        """Give back the token reserved for an accept that will not happen (a worker leaving)."""
        self.held -= 1
        self.u32[self._my_held] = self.held
        self.wake_waiters()

    def set_waiting(self, waiting: bool) -> None:
        if waiting != self.waiting:
            self.waiting = waiting
            self.u32[self._my_waiting] = int(waiting)

    def take_wakeup(self) -> bool:
        """Consume one wake-up byte (one byte per freed token, so two waiters are not woken by one)."""
        try:
            return bool(os.read(self.wake_r, 1))
        except BlockingIOError:
            return False

    # -- both sides ----------------------------------------------------------------
    def in_use(self) -> int:
        """Connections in progress across the server, as the ``status:`` lines count them."""
        u32 = self.u32
        total = u32[self._orphans]
        for i in self._actives:
            total += u32[i]
        return total

    def wake_waiters(self) -> None:
        u32 = self.u32
        for i in self._waitings:
            if u32[i]:
                try:
                    os.write(self.wake_w, b"x")
                except BlockingIOError:
                    pass
                return

    # -- master side ------------------------------------------------------------------
    def absorb_dead_worker(self, index: int, orphans_added: int) -> None:
        """Forget a dead worker's tokens; its still-running programs become orphans (counted exactly)."""
        fd = self.lock_fd
        base = self.board.slot_offset(index)
        fcntl.lockf(fd, fcntl.LOCK_EX)
        try:
            self.board.put32(sb.H_ORPHANS, self.board.get32(sb.H_ORPHANS) + orphans_added)
            self.board.put32(base + sb.OFF_HELD, 0)
            self.board.put32(base + sb.OFF_ACTIVE, 0)
            self.board.put32(base + sb.OFF_WAITING, 0)
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN)
        self.wake_waiters()

    def orphan_ended(self) -> None:
        """An orphaned program was reaped by the master: its token is free again."""
        self.board.put32(sb.H_ORPHANS, max(0, self.board.get32(sb.H_ORPHANS) - 1))
        self.wake_waiters()
