"""Waking an epoll/select loop from signals and other processes, without work in handlers.

Signal handlers only make ``signal.set_wakeup_fd`` write a byte; the loop
drains the pipe and does the real work (reaping, logging) itself, the way
gunicorn's arbiter does.  Shared by the tcpserver master and its workers.
"""

from __future__ import annotations

import os


def noop_handler(signum: int, frame: object) -> None:
    """Installed for SIGCHLD: the handler must exist for the wake-up byte, the work is in the loop."""


def drain(fd: int) -> None:
    """Empty a non-blocking wake-up pipe; one read() suffices unless a buffer-full was written."""
    try:
        while len(os.read(fd, 4096)) == 4096:
            pass
    except BlockingIOError:
        pass
