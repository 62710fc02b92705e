"""The floor of any tcpserver written in Python: accept, posix_spawn, close, reap, and nothing else.

``python -m loadtest.pyfloor [--contract] -1 [tcpserver options] HOST 0 PROGRAM...`` takes a tcpserver
command line (only ``-1`` and ``-c`` are obeyed), prints its port as 0.88's ``-1`` does, and serves every
connection the cheapest way CPython can: one process, a blocking accept, the environment 0.88 gives a
program under ``-H -R -l0`` (a copy of one dict plus the client's address and port), glibc's vfork-based
``posix_spawn`` with the socket on fds 0 and 1, then a non-blocking reap.  No ``-c`` limit, no rules, no
log line, no shared memory: each of these only adds to what this loop costs.

``--contract`` adds the least of 0.88's contract a server must then do in its own process (0.88's child
does it between fork and exec, where the kernel charges it to the program): clear the IP options, ask
the local address, and keep at most ``-c`` programs alive (see serve_contract).

loadtest.runner ``--python-floor`` measures both beside Debian's tcpserver and prefork, in the same run
and the same way (own processes' CPU per connection, and with the pre-exec work counted).  They bound
what any Python server can reach on the machine, so they tell whether a target set against 0.88's
compiled tcpserver is reachable in Python at all (docs/BENCHMARKS.md, "The Python floor").
They are benchmark fixtures: never a server to deploy (no rules, no log, any client served).
"""

from __future__ import annotations

import _socket
import os
import signal
import socket
import sys
from typing import NoReturn

from prefork.environ import original_environ
from prefork.options import UsageError, getopt, scan_spec
from prefork.tcpserver_cli import OPTIONS

USAGE = "usage: python -m loadtest.pyfloor [--contract] [-1] [tcpserver options] HOST 0 PROGRAM..."


def parse(argv: list[str]) -> tuple[bool, int, str, list[str]]:
    """(-1 given, -c, host, program argv) from a tcpserver command line (tcpserver's own option table); the
    port must be 0."""
    try:
        found, operands = getopt(argv, *scan_spec(OPTIONS))
        limit = int(dict(found).get("-c") or 40)
    except (UsageError, ValueError) as e:
        raise SystemExit(f"{USAGE}\npyfloor: {e}") from None
    if len(operands) < 3 or operands[1] != "0" or limit < 1:
        raise SystemExit(USAGE)
    return any(name == "-1" for name, _ in found), limit, operands[0], operands[2:]


def serve(host: str, program: list[str], announce: bool, limit: int, contract: bool) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, 0))
    listener.listen(1024)
    port = listener.getsockname()[1]
    if announce:
        os.write(1, b"%d\n" % port)
    base = original_environ()  # as given, before CPython's locale coercion (PEP 538)
    for name in (b"TCPREMOTEHOST", b"TCPREMOTEINFO"):
        base.pop(name, None)
    base.update({b"PROTO": b"TCP", b"TCPLOCALIP": host.encode(), b"TCPLOCALPORT": b"%d" % port,
                 b"TCPLOCALHOST": b"0"})
    path = os.fsencode(program[0])
    argv = [os.fsencode(a) for a in program]
    sigdef = (signal.SIGPIPE,)  # CPython ignores it; 0.88's programs start with it at default
    accept = listener._accept  # type: ignore[attr-defined]  # the raw (fd, addr) accept: no socket object
    spawn, close, waitpid = os.posix_spawn, os.close, os.waitpid
    dup2, nohang = os.POSIX_SPAWN_DUP2, os.WNOHANG
    if contract:
        serve_contract(listener, base, path, argv, sigdef, limit)
    while True:
        fd, addr = accept()
        env = base.copy()
        env[b"TCPREMOTEIP"] = addr[0].encode()
        env[b"TCPREMOTEPORT"] = b"%d" % addr[1]
        try:
            spawn(path, argv, env, file_actions=[(dup2, fd, 0), (dup2, fd, 1)], setsigdef=sigdef)
        except OSError as e:
            os.write(2, b"pyfloor: unable to run %s: %s\n" % (path, os.strerror(e.errno or 0).encode()))
        close(fd)
        try:
            while waitpid(-1, nohang)[0] > 0:
                pass
        except ChildProcessError:
            pass


def serve_contract(listener: socket.socket, base: dict[bytes, bytes], path: bytes, argv: list[bytes],
                   sigdef: tuple[int, ...], limit: int) -> NoReturn:
    """The floor plus the least of 0.88's own contract that a server must do in its process when it starts
    programs without forking first: clear the IP options and ask the local address (0.88's child does both
    before its exec), and keep at most -c programs alive (a count in this one process: no sharing)."""
    family = listener.family
    raw = _socket.socket
    accept = listener._accept  # type: ignore[attr-defined]
    spawn, close, waitpid = os.posix_spawn, os.close, os.waitpid
    dup2, nohang = os.POSIX_SPAWN_DUP2, os.WNOHANG
    ipv4 = family == socket.AF_INET
    running = 0
    while True:
        fd, addr = accept()
        s = raw(family, socket.SOCK_STREAM, 0, fd)
        if ipv4:
            try:
                s.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, b"")
            except OSError:
                pass
        try:
            local = s.getsockname()[0]
        except OSError:
            local = ""
        s.detach()
        env = base.copy()
        env[b"TCPLOCALIP"] = local.encode()
        env[b"TCPREMOTEIP"] = addr[0].encode()
        env[b"TCPREMOTEPORT"] = b"%d" % addr[1]
        try:
            spawn(path, argv, env, file_actions=[(dup2, fd, 0), (dup2, fd, 1)], setsigdef=sigdef)
            running += 1
        except OSError as e:
            os.write(2, b"pyfloor: unable to run %s: %s\n" % (path, os.strerror(e.errno or 0).encode()))
        close(fd)
        try:
            while waitpid(-1, nohang)[0] > 0:
                running -= 1
            while running >= limit:  # -c: accept nothing more until a program ends
                waitpid(-1, 0)
                running -= 1
        except ChildProcessError:
            running = 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    contract = bool(args) and args[0] == "--contract"
    announce, limit, host, program = parse(args[1:] if contract else args)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    try:
        serve(host, program, announce, limit, contract)
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
