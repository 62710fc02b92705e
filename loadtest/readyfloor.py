"""The floor of any supervisor written in Python on s6's readiness path: the least work, the cheapest way.

``python loadtest/readyfloor.py SCANDIR`` supervises the one service directory in SCANDIR as s6-supervise
would for the readiness benchmark (loadtest/readiness.py) and nothing more: the ``supervise/lock`` that
s6-svok asks about, the ``control`` FIFO (``u`` and ``d`` only), the 35-byte status in s6's layout
(control/statusfile.py's codec, the one home of the format) and the ``event/`` letters ``u``, ``U``,
``d``, ``D``.  Each step is done the way s6-supervise does it, in as few CPython calls as it takes:
status written to ``status.new`` and renamed (no link checks, no swap), listeners found by listing
``event/`` by name and each opened, written and closed.  No table, no log, no restart policy, no
finish script, no second service, no hostile-input checks: each of these only adds to the path.

loadtest.readiness ``--python-floor`` runs it beside s6 and prefork, in the same run and the same way.
It bounds what any Python supervisor can reach on the machine, so it tells whether a target set against
s6-supervise's compiled path is reachable in Python at all (docs/BENCHMARKS.md, "Time to ready").
A benchmark fixture: never a supervisor to deploy.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
import sys
import time

from prefork import tai64n
from prefork.control.statusfile import S6, Status
from prefork.environ import original_environ

NOTIFICATION_FD = 3  # the benchmark's notification-fd
RESTART_DELAY = 1.0  # s6-supervise's second between a death and the next start while wanted up


class Floor:
    """One service directory, supervised from inside it (the process's working directory)."""

    def __init__(self) -> None:
        self.want_up = not os.path.exists("down")
        self.pid = 0
        self.pidfd = -1
        self.notify = -1
        self.label = tai64n.now()
        self.ready_label = b""
        self.wstat = 0
        self.restart_at = 0.0
        self.env = original_environ()
        self.poll = select.epoll()

    def setup(self) -> None:
        os.makedirs("supervise", 0o700, exist_ok=True)
        if not os.path.isdir("event"):
            os.mkdir("event")
            os.chmod("event", 0o3730)
        lock = os.open("supervise/lock", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what s6-svok asks about
        try:
            os.mkfifo("supervise/control", 0o600)
        except FileExistsError:
            pass
        self.control = os.open("supervise/control", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self.keep = os.open("supervise/control", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # never an EOF
        self.poll.register(self.control, select.EPOLLIN)
        self.write_status(b"")
        if self.want_up:
            self.start()

    def write_status(self, letters: bytes) -> None:
        """status.new, renamed over status (s6's steps), then LETTERS to every listener in event/."""
        if self.pid:
            status = Status(self.label, self.pid, False, b"u" if self.want_up else b"d",
                            ready_label=self.ready_label or self.label, ready=bool(self.ready_label))
        else:
            status = Status(self.label, 0, False, b"u" if self.want_up else b"d", ready_label=self.label,
                            wstat=self.wstat, ready=True)
        fd = os.open("supervise/status.new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        os.write(fd, S6.encode(status))
        os.close(fd)
        os.rename("supervise/status.new", "supervise/status")
        if not letters:
            return
        for name in os.listdir("event"):
            if not name.startswith("ftrig1:"):
                continue
            try:
                fd = os.open("event/" + name, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as err:
                if err.errno == errno.ENXIO:
                    os.unlink("event/" + name)
                continue
            try:
                os.write(fd, letters)
            except OSError:
                pass
            os.close(fd)

    def start(self) -> None:
        r, w = os.pipe2(os.O_CLOEXEC)
        self.pid = os.posix_spawn("./run", ["./run"], self.env, file_actions=[(os.POSIX_SPAWN_DUP2, w, NOTIFICATION_FD)])
        os.close(w)
        self.notify = r
        self.poll.register(r, select.EPOLLIN)
        self.pidfd = os.pidfd_open(self.pid)
        self.poll.register(self.pidfd, select.EPOLLIN)
        self.label, self.ready_label = tai64n.now(), b""
        self.write_status(b"u")

    def readable(self, fd: int) -> None:
        if fd == self.control:
            for byte in os.read(self.control, 64):
                if byte == ord("u"):
                    self.want_up = True
                    if not self.pid:
                        self.start()
                elif byte == ord("d"):
                    self.want_up = False
                    if self.pid:
                        os.kill(self.pid, signal.SIGTERM)
                        os.kill(self.pid, signal.SIGCONT)
                    self.write_status(b"")
        elif fd == self.notify:
            data = os.read(fd, 512)
            self.close_notify()
            if b"\n" in data:
                self.ready_label = tai64n.now()
                self.write_status(b"U")
        elif fd == self.pidfd:
            _, self.wstat = os.waitpid(self.pid, 0)
            self.poll.unregister(self.pidfd)
            os.close(self.pidfd)
            self.close_notify()
            self.pid, self.pidfd, self.label = 0, -1, tai64n.now()
            self.write_status(b"dD")
            if self.want_up:
                self.restart_at = time.monotonic() + RESTART_DELAY

    def close_notify(self) -> None:
        if self.notify >= 0:
            self.poll.unregister(self.notify)
            os.close(self.notify)
            self.notify = -1

    def run(self) -> None:
        while True:
            timeout = max(0.0, self.restart_at - time.monotonic()) if self.restart_at else -1
            for fd, _ in self.poll.poll(timeout):
                self.readable(fd)
            if self.restart_at and time.monotonic() >= self.restart_at:
                self.restart_at = 0.0
                if self.want_up and not self.pid:
                    self.start()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python loadtest/readyfloor.py SCANDIR (holding one service directory)", file=sys.stderr)
        return 100
    names = sorted(n for n in os.listdir(argv[1]) if not n.startswith("."))
    if len(names) != 1:
        print(f"readyfloor: {argv[1]} must hold exactly one service directory", file=sys.stderr)
        return 100
    os.chdir(os.path.join(argv[1], names[0]))
    floor = Floor()
    floor.setup()
    floor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
