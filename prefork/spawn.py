"""Starting a program for a connection: fds 0/1 = the socket, fd 2 inherited, nothing else.

``os.posix_spawnp`` is vfork-based in glibc, so its cost does not grow with
the size of the Python worker, and it searches PATH the way djb's pathexec
does (the inherited PATH, ``/bin:/usr/bin`` when unset).  Every descriptor
prefork opens is close-on-exec; the DUP2 actions clear that flag on 0 and 1.
"""

from __future__ import annotations

import os
import signal


def signals_to_reset(always: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """Signals whose disposition this process changed; the program gets them back at default.

    Python ignores SIGPIPE and SIGXFSZ at start-up, and every signal this
    process catches is reset too.  ALWAYS adds more: tcpserver's children see
    SIGCHLD and SIGTERM at default whatever the server inherited (the default);
    a supervisor passes ``()`` so that a signal ignored when it started stays
    ignored in its services, as with 0.76's fork + execve.
    """
    reset: set[int] = {signal.SIGPIPE}
    reset.update((signal.SIGCHLD, signal.SIGTERM) if always is None else always)
    if hasattr(signal, "SIGXFSZ"):
        reset.add(signal.SIGXFSZ)
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            handler = signal.getsignal(sig)
        except (OSError, ValueError):
            continue
        if callable(handler):
            reset.add(sig)
    return tuple(sorted(reset))


class Spawner:
    """posix_spawn with the per-server constant parts computed once."""

    def __init__(self, argv: list[bytes], sigdef: tuple[int, ...]) -> None:
        self.path = argv[0]
        self.argv = argv
        self.sigdef = sigdef

    def spawn(self, sock_fd: int, env: dict[bytes, bytes]) -> int:
        """Start the program on the connection; returns its pid or raises OSError (exec's errno)."""
        actions = [(os.POSIX_SPAWN_DUP2, sock_fd, 0), (os.POSIX_SPAWN_DUP2, sock_fd, 1)]
        return os.posix_spawnp(
            self.path,
            self.argv,
            env,
            file_actions=actions,
            setsigmask=(),
            setsigdef=self.sigdef,
        )
