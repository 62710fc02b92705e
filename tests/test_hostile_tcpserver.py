"""tcpserver against hostile peers and hostile local users: nothing from outside may crash or stall it.

* Whatever an ident server answers (NUL bytes, binary junk, endless lines) ends up in TCPREMOTEINFO
  and the ``ok`` line the way 0.88 shows it: the C string up to the first NUL.  A worker never dies
  of it (a NUL in the environment used to make posix_spawn raise and kill the worker).
* The builders of the environment and of the log line take arbitrary bytes (hypothesis) and always
  give posix_spawn an environment it accepts, and the log a line of the documented shape.
* Any local user can open the world-readable scoreboard and hold a record lock on it; the ``-c``
  accounting must not wait on that (it used to lock the scoreboard itself, so one ``lockf`` by any
  user stopped every accept).
* A worker SIGKILLed while it starts a program leaves a balanced ``-v`` log: every ``end PID`` line
  has its ``pid PID`` and ``ok PID`` lines before it, once each.

The servers run on 127.0.0.1 (or a random 127/8 address) port 0 with ``-H -R -l0`` unless a test
runs its own stub ident server; every process and /dev/shm file a test causes is removed by it.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import select
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import fuzz_examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tcpserver_harness import (
    END_RE,
    PID_RE,
    QUIET,
    VIEW,
    connect,
    descendants,
    parse_view,
    recv_all,
    talk,
    wait_until,
)
from test_tcpserver_ident import IdentStub

from prefork import addr
from prefork.environ import c_string, set_variable
from prefork.ident import MAX_INFO, IdentReply, parse_ident_reply
from prefork.logline import decision_line, safe
from prefork.worker import Conn, connection_env

SETTINGS = settings(max_examples=fuzz_examples(300), deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# -- 0.88's rules, written out as models ----------------------------------------------------------
def model_remoteinfo(stream: bytes) -> bytes | None:
    """What 0.88's remoteinfo.c makes of an ident server's whole output, as the C string tcpserver
    uses: None when the output ends before the reply does."""
    line = bytearray()
    colons = 0
    for ch in stream:
        if ch in b" \t\r":
            continue
        if ch == 0x0A:
            break
        if colons < 3:
            colons += ch == 0x3A
            continue
        line.append(ch)
        if len(line) > MAX_INFO:
            break
    else:
        return None
    return bytes(line).split(b"\0", 1)[0]


def model_safe(field: bytes) -> bytes:
    """0.88's safecats() of a C string."""
    field = field.split(b"\0", 1)[0]
    out = bytes(b if 33 <= b <= 126 and b not in b"%:" else 0x3F for b in field[:100])
    return out + (b"..." if len(field) >= 100 else b"")


def view_env(reply: bytes) -> dict[bytes, bytes]:
    """The environment view.pl reported, as bytes (it doubles backslashes and writes newlines as
    \\n; its lines are split at \\n only, since a value may hold any other byte)."""
    env = {}
    for line in reply.split(b"\n"):
        if line.startswith(b"env "):
            name, _, value = line[4:].partition(b"=")
            env[name] = re.sub(rb"\\(.)", lambda m: b"\n" if m[1] == b"n" else m[1], value, flags=re.S)
    return env


# -- property tests of the parsers and builders ------------------------------------------------------
@SETTINGS
@given(st.binary(max_size=700), st.lists(st.integers(1, 700), max_size=8))
def test_ident_reply_parser_is_088s(stream, cuts):
    """Fed in any pieces, IdentReply ends where 0.88 ends and keeps what 0.88 keeps, up to the NUL."""
    reply = IdentReply()
    done = False
    pos = 0
    for size in [*cuts, len(stream)]:
        piece = stream[pos : pos + size]
        pos += size
        if piece and reply.feed(piece):
            done = True
            break
    expected = model_remoteinfo(stream)
    if expected is None:
        assert not done
        return
    assert done
    raw = reply.raw
    assert raw == expected
    assert len(raw) <= MAX_INFO + 1
    assert not set(raw) & set(b"\0 \t\r\n")
    assert os.fsencode(reply.value) == raw
    assert parse_ident_reply(stream) == reply.value


@SETTINGS
@given(st.one_of(st.none(), st.binary(max_size=300), st.text(max_size=200)))
def test_log_field_shape(field):
    """A log field is at most 103 bytes of 33..126 without % or :, and is 0.88's safecats()."""
    out = safe(field)
    assert len(out) <= 103
    assert all(33 <= b <= 126 and b not in b"%:" for b in out)
    if isinstance(field, bytes):
        assert out == model_safe(field)


LINE_RE = re.compile(rb"tcpserver: (ok|deny) [^ :%]+ [^ :%]*:[^ :%]+:[^ :%]+ [^ :%]*:[^ :%]+:[^ :%]*:[^ :%]+\n")


@SETTINGS
@given(st.binary(max_size=300), st.binary(max_size=300), st.binary(max_size=300), st.booleans())
def test_decision_line_shape(localhost, remotehost, remoteinfo, allowed):
    line = decision_line(b"tcpserver", b"ok" if allowed else b"deny", 12345, localhost, "127.0.0.1", 7,
                         remotehost, "10.0.0.1", remoteinfo, 65535)
    assert LINE_RE.fullmatch(line), line
    assert line.count(b"\n") == 1 and len(line) <= 400


env_bytes = st.binary(max_size=64)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(
    st.one_of(st.none(), env_bytes), st.one_of(st.none(), env_bytes), st.one_of(st.none(), env_bytes),
    st.lists(st.tuples(env_bytes, env_bytes), max_size=5),
)
def test_connection_env_is_always_spawnable(localhost, remotehost, remoteinfo, rules_env):
    """Whatever the names, the ident answer and the rules hold, posix_spawn takes the environment,
    and each value is its C string (up to the first NUL)."""
    conn = Conn(-1, "10.0.0.1", 4000, 0)
    conn.localip, conn.localport = "127.0.0.1", 7
    conn.localhost, conn.remotehost, conn.remoteinfo = localhost, remotehost, remoteinfo
    env = connection_env({b"PATH": b"/usr/bin:/bin"}, conn, rules_env)
    for name, value in env.items():
        assert name and b"\0" not in name and b"=" not in name
        assert b"\0" not in value
    if not rules_env:
        for name, got in ((b"TCPLOCALHOST", localhost), (b"TCPREMOTEHOST", remotehost), (b"TCPREMOTEINFO", remoteinfo)):
            assert env.get(name) == (None if got is None else c_string(got))
    pid = os.posix_spawn("/bin/true", ["true"], env)
    assert os.waitpid(pid, 0)[1] == 0


@SETTINGS
@given(env_bytes, env_bytes)
def test_set_variable_is_pathexec_env(name, value):
    """NAME=VALUE as C strings, split at the first '=' as the program will split it."""
    env: dict[bytes, bytes] = {}
    set_variable(env, name, value)
    entry = name.split(b"\0", 1)[0] + b"=" + value.split(b"\0", 1)[0]
    key, _, val = entry.partition(b"=")
    assert env == ({key: val} if key else {})


@SETTINGS
@given(st.one_of(st.text(max_size=80), st.binary(max_size=80)))
def test_ptr_names_are_escaped(monkeypatch, answer):
    """Any name a PTR look-up returns (text, or bytes that are not UTF-8) comes back as djb prints
    it: printable ASCII, lowercase, nothing but [a-z0-9-_.] and backslash escapes."""

    def lookup(ip):
        if isinstance(answer, bytes):
            raise UnicodeDecodeError("utf-8", answer, 0, 1, "invalid start byte")
        return answer, [], [ip]

    def nameinfo(sockaddr, flags):
        raise UnicodeDecodeError("utf-8", answer, 0, 1, "invalid start byte")

    monkeypatch.setattr(addr, "_gethostbyaddr", lookup)
    monkeypatch.setattr(addr, "_getnameinfo", nameinfo)
    name = addr.reverse_name("192.0.2.7", 5)
    assert name is not None
    assert re.fullmatch(r"[a-z0-9_.\-\\]*", name), name
    assert not addr.forward_confirms(name, "192.0.2.8", 5) or name == "."


# -- an ident server that answers garbage ------------------------------------------------------------
GARBAGE = [
    b"%PORTS : USERID : UNIX : jo\0e\r\n",
    b"%PORTS : USERID : UNIX : \0\0\0\r\n",
    b"\0\0:\0:\0:\0\n",
    b"%PORTS : USERID : UNIX : " + bytes(range(1, 10)) + bytes(range(11, 256)) + b"\n",
    b"%PORTS : USERID : UNIX : " + b"\xff\xfe\x80\\x%s:%n" * 40 + b"\n",
    b"%PORTS:USERID:UNIX:" + b"\0" * 300 + b"\n",
    b":::" + b"A" * 100_000,
    b"\n",
    b"::" + b"\0" * 5000,
    b"%PORTS : ERROR : \0HIDDEN-ERROR\r\n",
]


def test_garbage_ident_replies(launch, impl, tmp_path):
    """Each garbage reply in turn: the program sees TCPREMOTEINFO as 0.88's C string (unset when the
    reply never ends), the ok line shows its safe form, and prefork's workers all survive."""
    replies = list(GARBAGE)
    lock = threading.Lock()

    def reply(query: bytes) -> bytes:
        with lock:
            return replies.pop(0).replace(b"%PORTS", query.strip(b"\r\n"))

    stub = IdentStub(reply)
    try:
        server = launch(["-H", "-r", "-t", "5", "-l0", "-v"], [VIEW])
        if impl == "prefork":
            assert wait_until(lambda: len(server.workers()) == 2, 10)
            workers = {w.pid for w in server.workers()}
        for n, sent in enumerate(GARBAGE, start=1):
            got, cport = talk(server.port, source=stub.address, timeout=15)
            expected = model_remoteinfo(sent.replace(b"%PORTS", f"{cport} , {server.port}".encode()))
            assert view_env(got).get(b"TCPREMOTEINFO") == expected, (n, sent[:60])
            lines = server.wait_ends(n)
            ok = [line for line in lines if line.startswith("tcpserver: ok ")][-1]
            shown = os.fsencode(ok).rsplit(b":", 2)[-2]
            assert shown == model_safe(expected or b""), (n, ok)
        assert "worker exiting" not in server.stderr()
        if impl == "prefork":
            assert {w.pid for w in server.workers()} == workers
    finally:
        stub.close()


def test_ident_nul_reaches_rules_as_c_string(launch, tmp_path):
    """The INFO@IP rule key sees the answer up to its NUL, as 0.88's does."""
    stub = IdentStub(lambda query: query.strip(b"\r\n") + b" : USERID : UNIX : jo\0e\r\n")
    try:
        cdb = tmp_path / "rules.cdb"
        rules = f'jo@{stub.address}:allow,WHO="jo"\n:deny\n'
        subprocess.run(["/usr/bin/tcprules", str(cdb), f"{cdb}.tmp"], input=rules.encode(), check=True)
        server = launch(["-H", "-r", "-t", "5", "-l0", "-v", "-x", str(cdb)], [VIEW])
        env = parse_view(talk(server.port, source=stub.address)[0])["env"]
        assert (env.get("WHO"), env.get("TCPREMOTEINFO")) == ("jo", "jo")
        assert "worker exiting" not in server.stderr()
    finally:
        stub.close()


# -- a local user holding a lock on the scoreboard ----------------------------------------------------
HOLD_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR if sys.argv[2] == "ex" else os.O_RDONLY)
fcntl.lockf(fd, fcntl.LOCK_EX if sys.argv[2] == "ex" else fcntl.LOCK_SH)
sys.stdout.write("locked\\n")
sys.stdout.flush()
sys.stdin.read()
"""


@pytest.mark.parametrize("who", ["root-exclusive", "nobody-shared"])
def test_scoreboard_lock_does_not_stall_accepts(prefork, who):
    """Another process (as nobody: any local user) holds a record lock on the whole scoreboard for
    the test's length; connections to tcpserver -c 2 are still each served within 5 s."""
    server = prefork(["-c", "2", "-v", *QUIET], ["/bin/echo", "hi"])
    path = f"/dev/shm/prefork-tcpserver.{server.pid}"
    assert wait_until(lambda: os.path.exists(path) and len(server.workers()) == 2, 10)
    user = "nobody" if who == "nobody-shared" else None
    if user is not None:
        try:
            import pwd

            pwd.getpwnam(user)
        except KeyError:
            pytest.skip("no user nobody")
        if os.getuid() != 0:
            pytest.skip("needs root to run a process as nobody")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, path, "ex" if user is None else "sh"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, user=user,
    )
    try:
        ready, _, _ = select.select([holder.stdout], [], [], 10)
        assert ready and holder.stdout.readline() == b"locked\n"
        for _ in range(6):
            started = time.monotonic()
            try:
                reply, _ = talk(server.port, timeout=5)
            except TimeoutError:
                reply = b"(timed out)"
            assert (reply, time.monotonic() - started < 5) == (b"hi\n", True)
    finally:
        holder.stdin.close()
        try:
            holder.wait(10)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait(5)
        holder.stdout.close()


# -- workers killed while starting programs -----------------------------------------------------------
def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2 :].split()[0].decode()
    except (OSError, ValueError, IndexError):
        return "?"


def check_balance(lines: list[str]) -> list[str]:
    """Problems with the per-connection lines: an end without its pid and ok lines before it (since
    the previous end of that pid), or a pid or ok line twice for one connection."""
    problems = []
    seen: dict[str, list[str]] = {}
    for line in lines:
        if m := PID_RE.match(line):
            kinds = seen.setdefault(m[1], [])
            if "pid" in kinds:
                problems.append(f"second pid line for {m[1]}")
            kinds.append("pid")
        elif m := re.match(r"^tcpserver: (ok|deny) (\d+) ", line):
            kinds = seen.setdefault(m[2], [])
            if m[1] in kinds:
                problems.append(f"second {m[1]} line for {m[2]}")
            kinds.append(m[1])
        elif m := END_RE.match(line):
            kinds = seen.pop(m[1], [])
            if "pid" not in kinds or not ({"ok", "deny"} & set(kinds)):
                problems.append(f"end {m[1]} after only {kinds}")
    return problems


def test_killed_workers_leave_a_balanced_log(prefork, tmp_path):
    """Workers are SIGKILLed again and again while clients keep connecting, mostly while a worker is
    inside posix_spawn (state D: its vfork child is searching a long PATH for the program), some at
    random moments; afterwards every end line has its pid and ok lines, once each, and each ok line
    shows its own program's connection (the program notes its pid and TCPREMOTEPORT)."""
    notes = tmp_path / "notes"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    prog = bindir / "note-and-sleep"
    prog.write_text(f'#!/bin/sh\necho "$$ $TCPREMOTEPORT" >> {notes}\nexec /bin/sleep 0.2\n')
    prog.chmod(0o755)
    path = ":".join(f"/nonexistent/{i}" for i in range(400)) + f":{bindir}:/usr/bin:/bin"
    server = prefork(["-v", "-c", "8", *QUIET], ["note-and-sleep"], env={"PATH": path})
    assert wait_until(lambda: len(server.workers()) == 2, 10)
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                with connect(server.port, timeout=5) as sock:
                    recv_all(sock, 5)

    clients = [threading.Thread(target=client) for _ in range(4)]
    for t in clients:
        t.start()
    kills = in_spawn = 0
    deadline = time.monotonic() + 25
    try:
        while kills < 12 and time.monotonic() < deadline:
            workers = [w.pid for w in server.workers()]
            if not workers:
                time.sleep(0.05)
                continue
            victim = random.choice(workers)
            caught = False
            if kills % 4 != 3:
                spin = time.monotonic() + 2
                while time.monotonic() < spin and not caught:
                    caught = _state(victim) == "D"
            else:
                time.sleep(random.uniform(0, 0.05))
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
                kills += 1
                in_spawn += caught
                wait_until(lambda v=victim: v not in {w.pid for w in server.workers()}, 5)
    finally:
        stop.set()
        for t in clients:
            t.join(15)
    assert kills >= 8 and in_spawn >= 4, (kills, in_spawn)

    def programs_left() -> list[int]:
        workers = {w.pid for w in server.workers()}
        return [p.pid for p in descendants(server.pid) if p.pid not in workers]

    assert wait_until(lambda: not programs_left(), 15), programs_left()
    time.sleep(0.5)  # the master logs the last orphans' end lines after reaping them
    lines = server.lines()
    assert "worker exiting" not in server.stderr()
    problems = check_balance(lines)
    assert not problems, problems[:10]
    pids = {m[1] for line in lines if (m := PID_RE.match(line))}
    ends = {m[1] for line in lines if (m := END_RE.match(line))}
    assert pids == ends and len(ends) > kills, (len(pids), len(ends), sorted(pids ^ ends)[:10])
    ports = dict(line.split() for line in notes.read_text().splitlines())
    for line in lines:
        if m := re.match(r"^tcpserver: ok (\d+) \S+ \S+:(\d+)$", line):
            assert ports.get(m[1]) in (m[2], None), line  # None: killed before its first line ran


def _memfd_of(pid: int, name: str) -> str:
    """/proc path of PID's descriptor of the memfd called NAME."""
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(f"/memfd:{name}"):
                return f"/proc/{pid}/fd/{fd}"
    raise AssertionError(f"no memfd {name} in {pid}")


def test_worker_killed_between_reaping_and_its_end_line(prefork, tmp_path):
    """A worker that has seen its program exit waits for the -c lock before writing the end line; killed
    there, the end line must still appear (the program is reaped only after its line is written)."""
    import fcntl

    server = prefork(["-v", "-1", "-c", "2", "--workers", "1", *QUIET], ["sh", "-c", "read line; echo \"$line\""])
    assert wait_until(lambda: len(server.workers()) == 1, 10)
    (worker,) = [w.pid for w in server.workers()]
    sock = connect(server.port, timeout=5)
    try:
        assert wait_until(lambda: any(PID_RE.match(line) for line in server.lines()), 10), server.lines()
        (program,) = [m[1] for line in server.lines() if (m := PID_RE.match(line))]
        # as root, the test can reach the server's private lock through /proc (no other user can)
        lock = os.open(_memfd_of(server.pid, "prefork-capacity"), os.O_RDWR)
        try:
            fcntl.lockf(lock, fcntl.LOCK_EX)
            sock.sendall(b"bye\n")
            assert recv_all(sock, 5) == b"bye\n"
            assert wait_until(lambda: _state(worker) == "S" and not os.path.exists(f"/proc/{program}/fd/0"), 10)
            time.sleep(0.2)  # the worker is now blocked on the lock with the program's exit in hand
            os.kill(worker, signal.SIGKILL)
            assert wait_until(lambda: worker not in {w.pid for w in server.workers()}, 10)
        finally:
            fcntl.lockf(lock, fcntl.LOCK_UN)
            os.close(lock)
    finally:
        sock.close()
    assert wait_until(lambda: any(END_RE.match(line) and END_RE.match(line)[1] == program for line in server.lines()),
                      10), server.lines()
    assert not check_balance(server.lines()), server.lines()


def test_capacity_lock_is_private_and_dies_with_its_holder(tmp_path):
    """The -c lock is on an unnamed file of the server's own, not on the scoreboard; a holder killed
    while holding it does not wedge the others (the kernel drops a record lock with its process)."""
    import errno
    import fcntl

    from prefork import scoreboard as sb

    board = sb.ScoreboardFile(str(tmp_path / "board"), 2, 3, os.getpid(), "svc")
    try:
        fd = board.lock_fd
        assert fd != board.fd and os.fstat(fd).st_nlink == 0 and not os.get_inheritable(fd)
        assert os.fstat(fd).st_ino != os.fstat(board.fd).st_ino
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child takes the lock, says so, and waits to be killed
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX)
                os.write(w, b"x")
                time.sleep(30)
            finally:
                os._exit(0)
        try:
            os.close(w)
            assert select.select([r], [], [], 10)[0] and os.read(r, 1) == b"x"
            with pytest.raises(OSError) as held:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            assert held.value.errno in (errno.EAGAIN, errno.EACCES)
            # nobody else's lock on the scoreboard file matters to the -c lock
            other = os.open(board.path, os.O_RDONLY)
            try:
                fcntl.lockf(other, fcntl.LOCK_SH)
            finally:
                os.close(other)
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(r)
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.lockf(fd, fcntl.LOCK_UN)
    finally:
        board.unlink()
        os.close(board.fd)
        os.close(board.lock_fd)


def test_spawnlog_settles_each_state_of_a_dead_worker(capfd):
    """What the master writes for a worker that died in each state of SpawnLog (deterministic): the
    lines it still owed, exactly once, and which of its new children now count as logged."""
    import socket

    from prefork.worker import SpawnLog

    log = SpawnLog(2, 4)
    tail = b"0:127.0.0.1:7 :10.0.0.1::4000\n"
    pair_a, pair_b = socket.socketpair(), socket.socketpair()
    procs = []
    try:
        for sock in (pair_a[0], pair_b[0]):
            procs.append(subprocess.Popen(["sleep", "30"], stdin=sock.fileno()))
        decoy, program = procs[0].pid, procs[1].pid
        positions: dict[int, int] = {}

        def record(index: int, state: int, pid: int, inode: int = 0) -> None:
            log.reset(index)
            log.begin(index, b"10.0.0.1", tail, inode)
            log.u32[(log._base(index) + 4) >> 2] = pid
            log.u32[log._base(index) >> 2] = state

        def lines(pid: int) -> str:
            return f"tcpserver: pid {pid} from 10.0.0.1\ntcpserver: ok {pid} {tail.decode()}"

        capfd.readouterr()
        record(0, SpawnLog.SPAWNED, 501)  # lines owed: written now
        record(1, SpawnLog.LOGGED, 502)  # already written: nothing
        assert log.settle_dead([0, 1], {501, 502, 999}) == {501, 502}
        assert capfd.readouterr().err == lines(501)
        record(0, SpawnLog.SPAWNING, 503)  # killed after storing the pid, before saying SPAWNED
        assert log.settle_dead([0], {503}) == {503}
        assert capfd.readouterr().err == lines(503)
        # killed inside posix_spawn: the program is the new child whose fd 0 is the connection
        record(0, SpawnLog.SPAWNING, 0, os.fstat(pair_b[0].fileno()).st_ino)
        log.reset(1)  # slot 1 died too, idle, with the decoy in its list of live programs (as spawned() keeps it)
        log.u32[(log._base(1) + log.HEAD + log.TEXT) >> 2] = decoy
        log.u32[(log._base(1) + 12) >> 2] = 1
        positions[decoy] = 0
        assert log.settle_dead([0, 1], {decoy, program}) == {decoy, program}
        assert capfd.readouterr().err == lines(program)
        log.reaped(1, decoy, positions)
        assert log.live(1) == []
        # the same with the decoy in no list (a grandchild the master adopted): the socket decides
        record(0, SpawnLog.SPAWNING, 0, os.fstat(pair_b[0].fileno()).st_ino)
        assert log.settle_dead([0], {decoy, program}) == {program}
        assert capfd.readouterr().err == lines(program)
        # nothing started (the spawn failed or had not begun): nothing to write
        record(0, SpawnLog.SPAWNING, 0, 12345)
        assert log.settle_dead([0], set()) == set()
        assert capfd.readouterr().err == ""
    finally:
        for p in procs:
            p.kill()
            p.wait(5)
        for sock in (*pair_a, *pair_b):
            sock.close()


def _cdb(records: dict[bytes, bytes]) -> bytes:
    """A cdb holding RECORDS (the format tcprules writes), made here so that the values can hold
    bytes tcprules would not write."""
    import struct

    def cdb_hash(key: bytes) -> int:
        h = 5381
        for c in key:
            h = ((h << 5) + h & 0xFFFFFFFF) ^ c
        return h

    body = bytearray()
    tables: list[list[tuple[int, int]]] = [[] for _ in range(256)]
    for key, value in records.items():
        tables[cdb_hash(key) & 255].append((cdb_hash(key), 2048 + len(body)))
        body += struct.pack("<II", len(key), len(value)) + key + value
    header = bytearray()
    tail = bytearray()
    for entries in tables:
        slots = 2 * len(entries)
        header += struct.pack("<II", 2048 + len(body) + len(tail), slots)
        table = [(0, 0)] * slots
        for h, pos in entries:
            i = (h >> 8) % slots
            while table[i][1]:
                i = (i + 1) % slots
            table[i] = (h, pos)
        for h, pos in table:
            tail += struct.pack("<II", h, pos)
    return bytes(header + body + tail)


def test_rules_env_values_with_any_bytes(launch, impl, tmp_path):
    """A rules file someone else wrote, with bytes tcprules would never put in a value: each variable
    reaches the program as 0.88's C string, split at the first '=', and no worker dies."""
    odd = bytes([1, 0x7F, 0x80, 0xFF]) + b"%:\\ \t"
    value = b"+A=" + odd + b"\0+B=x=y\0+C\0+D=\0+A2=" + odd[::-1] + b"\0"
    cdb = tmp_path / "rules.cdb"
    cdb.write_bytes(_cdb({b"127.0.0.1": value}))
    server = launch(["-v", "-x", str(cdb), *QUIET], [VIEW])
    if impl == "prefork":
        assert wait_until(lambda: len(server.workers()) == 2, 10)
        workers = {w.pid for w in server.workers()}
    for _ in range(3):
        env = view_env(talk(server.port)[0])
        assert (env.get(b"A"), env.get(b"A2"), env.get(b"B"), env.get(b"C"), env.get(b"D")) == (
            odd, odd[::-1], b"x=y", None, b"",
        )
    assert "worker exiting" not in server.stderr()
    if impl == "prefork":
        assert {w.pid for w in server.workers()} == workers
