"""tcpclient (docs/CONTRACTS.md, tcpclient): prefork's against Debian's on the same command lines, plus library-level tests.

Every connection goes to 127.0.0.1/127.0.0.2; Debian's binary always runs
with ``-H -l`` (its resolver would ask the DNS server of resolv.conf) and
``-R`` unless a stub ident server holds 127.0.0.1:113.
"""

from __future__ import annotations

import errno
import random
import select
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import ours, real
from test_addr import hosts_file_is_local_for_localhost
from test_ident import StubServer, closed_port

from prefork import addr, tcpclient
from prefork.tcpclient import Options, connect, connection_environ, program_environ

IMPLS = ("debian", "prefork")
USAGE = (
    b"tcpclient: usage: tcpclient [ -hHrRdDqQv ] [ -i localip ] [ -p localport ] [ -T timeoutconn ]"
    b" [ -l localname ] [ -t timeoutinfo ] host port program\n"
)
QUIET = ["-H", "-R", "-l0"]
# Inherited values tcpclient must replace or remove; no LANG/LC_* so that PEP 538 would show.
BASE_ENV = {
    "PATH": "/usr/bin:/bin",
    "KEEP": "me",
    "PROTO": "inherited",
    "TCPLOCALHOST": "inherited",
    "TCPREMOTEHOST": "inherited",
    "TCPREMOTEINFO": "inherited",
}

DUMPER = r"""
use strict;
use warnings;
use Socket qw(IPPROTO_TCP TCP_NODELAY);

open(my $e, "<", "/proc/self/environ") or die "environ: $!";
my $raw = do { local $/; <$e> };
close $e;
print "env $_\n" for sort grep { length } split /\0/, $raw;

opendir(my $d, "/proc/self/fd") or die "fd: $!";
my @fds = sort { $a <=> $b } grep { /^\d+$/ } readdir $d;
closedir $d;
for my $fd (@fds) {
    my $target = readlink "/proc/self/fd/$fd";
    next if !defined $target || $target =~ m{^/proc/};
    $target =~ s/:\[\d+\]$//;
    my $flags = "?";
    if (open(my $i, "<", "/proc/self/fdinfo/$fd")) {
        while (<$i>) { $flags = $1 if /^flags:\s+(\d+)/ }
        close $i;
    }
    print "fd $fd $target $flags\n";
}

open(my $s, "<", "/proc/self/status") or die "status: $!";
while (<$s>) { print if /^(SigIgn|SigBlk):/ }
close $s;

if (open(my $sock, "+<&=", 6)) {
    my $v = getsockopt($sock, IPPROTO_TCP, TCP_NODELAY);
    print "nodelay ", (defined $v ? unpack("i", $v) : "none"), "\n";
    if (open(my $w, ">&=", 7)) {
        syswrite($w, "ping\n");
        my $buf = "";
        sysread($sock, $buf, 100);
        print "got $buf";
    }
}
"""


def binary(impl: str) -> str:
    return real("tcpclient") if impl == "debian" else ours("tcpclient")


def run(
    impl: str,
    args: list[str],
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    extra_fds: bool = False,
    timeout: float = 30,
) -> subprocess.CompletedProcess:
    """Run one tcpclient to completion (killed by subprocess at TIMEOUT); EXTRA_FDS opens 6, 7, 9 first."""
    argv = [binary(impl), *args]
    if extra_fds:
        argv = ["/bin/sh", "-c", 'exec "$@" 6</dev/null 7</dev/null 9</dev/null', "sh", *argv]
    return subprocess.run(
        argv,
        env=dict(BASE_ENV) if env is None else env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
    )


def both(args: list[str], **kwargs) -> dict[str, tuple[int, bytes, bytes]]:
    results = {}
    for impl in IMPLS:
        result = run(impl, args, **kwargs)
        results[impl] = (result.returncode, result.stdout, result.stderr)
    return results


@pytest.fixture
def closed():
    """A 127.0.0.1 port that refuses connections for the whole test."""
    holder, port = closed_port()
    yield str(port)
    holder.close()


@pytest.fixture
def target():
    """A server on 127.0.0.1:0 answering the first line of each connection with ``pong``."""

    def pong(conn: socket.socket, line: bytes) -> None:
        if line:
            conn.sendall(b"pong\n")

    server = StubServer(pong)
    yield server
    server.close()


@pytest.fixture
def dumper(tmp_path: Path) -> list[str]:
    script = tmp_path / "dump.pl"
    script.write_text(DUMPER)
    return ["/usr/bin/perl", str(script)]


def normalise(result: subprocess.CompletedProcess, server: StubServer, local_port: int | None = None) -> tuple:
    """Exit code, stdout, stderr with this connection's ports replaced (after checking them)."""
    assert result.returncode == 0, result.stderr
    peer_ip, peer_port = server.peers[-1]
    out = result.stdout.decode("utf-8", "surrogateescape")
    assert f"env TCPLOCALPORT={peer_port}\n" in out
    assert f"env TCPREMOTEPORT={server.port}\n" in out
    if local_port is not None:
        assert peer_port == local_port
    out = out.replace(f"env TCPLOCALPORT={peer_port}\n", "env TCPLOCALPORT=LPORT\n")
    out = out.replace(f"env TCPREMOTEPORT={server.port}\n", "env TCPREMOTEPORT=RPORT\n")
    err = result.stderr.decode("utf-8", "surrogateescape").replace(f" port {server.port}\n", " port RPORT\n")
    return result.returncode, out, err


# -- command-line errors -----------------------------------------------------------------------------


@pytest.mark.differential
@pytest.mark.parametrize(
    "args",
    [
        [],
        ["-q"],
        ["127.0.0.1"],
        ["127.0.0.1", "{closed}"],
        ["-q", "127.0.0.1", "{closed}"],
        ["-Q", "127.0.0.1"],
        ["-z"],
        ["-q", "-z"],
        ["-HRz", "127.0.0.1", "{closed}", "true"],
        ["-i"],
        ["-p"],
        ["-t"],
        ["-T"],
        ["-l"],
        ["-HRl"],
        ["-i", "1.2.3", "127.0.0.1", "{closed}", "true"],
        ["-q", "-i", "1.2.3", "127.0.0.1", "{closed}", "true"],
        ["-i", "x.1.2.3", "127.0.0.1", "{closed}", "true"],
        ["-i1.2.3.", "127.0.0.1", "{closed}", "true"],
        ["127.0.0.1", "nosuchservice-prefork"],
        ["-HR", "-l0", "127.0.0.1", "nosuchservice-prefork", "true"],
        ["-q", "-HR", "-l0", "127.0.0.1", "nosuchservice-prefork", "true"],
        ["-HR", "-l0", "127.1", "{closed}", "true"],
        ["-q", "-HR", "-l0", "127.1", "{closed}", "true"],
        ["-HR", "-l0", "127.0.0.1", "{closed}", "true"],
        ["-HRv", "-l0", "127.0.0.1", "{closed}", "true"],
        ["-HRq", "-l0", "127.0.0.1", "{closed}", "true"],
        ["-HR", "-l0", "[127.0.0.1]", "{closed+65536}", "true"],
        ["-HR", "-l0", "127.0.0.1.5", "{closed}", "true"],
        ["-HR", "-l0", "127.0.0.1.127.0.0.2", "{closed}", "true"],
        ["-HR", "-l0", "127.0.0.1", "", "true"],
        ["-HR", "-l0", "--", "127.0.0.1", "{closed}", "true"],
        ["-HR", "-l0", "-i", "1.2.3.4junk", "127.0.0.1", "{closed}", "true"],
        ["-HR", "-l0", "-i", "127.0.0.1junk", "127.0.0.1", "{closed}", "true"],
        ["-HR", "-l0", "-i", "127.0.0.1", "-p", "{closed}", "127.0.0.1", "{closed}", "true"],
        ["-HR", "-l0", "-q", "-i", "127.0.0.1", "-p", "{closed}", "127.0.0.1", "{closed}", "true"],
    ],
)
def test_errors_match_debian(args: list[str], closed: str) -> None:
    port = int(closed)
    argv = [a.replace("{closed+65536}", str(port + 65536)).replace("{closed}", closed) for a in args]
    results = both(argv)
    assert results["prefork"] == results["debian"]
    assert results["prefork"][0] in (100, 111)


def test_usage_text_and_codes(closed: str) -> None:
    assert run("prefork", []).stderr == USAGE
    result = run("prefork", ["-z"])
    assert (result.returncode, result.stderr) == (100, b"tcpclient: illegal option -- z\n" + USAGE)
    result = run("prefork", ["-HR", "-l0", "127.0.0.1", closed, "true"])
    expected = f"tcpclient: unable to connect to 127.0.0.1 port {closed}: connection refused\n".encode()
    assert (result.returncode, result.stdout, result.stderr) == (111, b"", expected)


@pytest.mark.parametrize(
    "args, message",
    [
        (["-p", "abc"], b"tcpclient: bad value for -p: not a number: 'abc'\n"),
        (["-p", "70000"], b"tcpclient: bad value for -p: 70000 is larger than 65535\n"),
        (["-t", "5x"], b"tcpclient: bad value for -t: not a number: '5x'\n"),
        (["-T", "2+x"], b"tcpclient: bad value for -T: not a timeout X+Y: '2+x'\n"),
    ],
)
def test_garbage_numbers_are_refused(args: list[str], message: bytes, closed: str) -> None:
    """Deliberate difference: djb reads these as 0 (or wraps -p); prefork says so and exits 100."""
    result = run("prefork", [*args, "-HR", "-l0", "127.0.0.1", closed, "true"])
    assert (result.returncode, result.stderr) == (100, message + USAGE)


# -- connect timeouts -------------------------------------------------------------------------------


@pytest.fixture
def black_hole():
    """A 127.0.0.1 port whose listen queue is full, so that new connects hang (SYNs dropped)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    probe = socket.socket()
    probe.setblocking(False)
    probe.connect_ex(("127.0.0.1", port))
    poller = select.poll()
    poller.register(probe, select.POLLOUT)
    hangs = not poller.poll(500)
    probe.close()
    try:
        if not hangs:
            pytest.skip("this kernel completes connects to a full listen queue")
        yield str(port)
    finally:
        for sock in [*fillers, listener]:
            sock.close()


@pytest.mark.differential
@pytest.mark.parametrize(
    "args, seconds",
    [
        (["-T1", "127.0.0.1"], 1),
        (["-T0+1", "127.0.0.1"], 1),  # one address: X+Y at once
        (["-T1+1", "127.0.0.1.127.0.0.2"], 2),  # .1 times out, retried after .2 is refused
        (["-T1+0", "127.0.0.1.127.0.0.2"], 1),  # no second pass: reported in order
    ],
)
def test_connect_timeouts_match_debian(args: list[str], seconds: float, black_hole: str) -> None:
    timings = {}
    results = {}
    for impl in IMPLS:
        started = time.monotonic()
        result = run(impl, ["-HR", "-l0", *args, black_hole, "true"])
        timings[impl] = time.monotonic() - started
        results[impl] = (result.returncode, result.stderr)
    assert results["prefork"] == results["debian"]
    assert results["prefork"][0] == 111
    assert b"timed out" in results["prefork"][1]
    assert seconds - 0.1 <= timings["prefork"] < seconds + 5


# -- successful connections -------------------------------------------------------------------------


@pytest.mark.differential
@pytest.mark.parametrize(
    "opts, host",
    [
        (QUIET, "127.0.0.1"),
        (["-HR", "-l", ""], "127.0.0.1"),
        (["-HRv", "-l0"], "127.0.0.1"),
        (["-HRq", "-l0"], "127.0.0.1"),
        (["-vHRl", "Name.Example"], "127.0.0.1"),
        (["-HRD", "-l0"], "127.0.0.1"),
        (["-HRDd", "-l0"], "127.0.0.1"),
        ([*QUIET, "-i", "127.0.0.2"], "127.0.0.1"),
        (QUIET, "0"),
        (QUIET, ""),
        (QUIET, "127.0.0.1.5"),
        (QUIET, "[127.0.0.1]"),
    ],
)
def test_program_view_matches_debian(opts: list[str], host: str, target: StubServer, dumper: list[str]) -> None:
    views = {}
    for impl in IMPLS:
        result = run(impl, [*opts, host, str(target.port), *dumper], extra_fds=True)
        views[impl] = normalise(result, target)
    assert views["prefork"] == views["debian"]
    out = views["prefork"][1]
    assert "env PROTO=TCP\n" in out and "env KEEP=me\n" in out
    assert "inherited" not in out
    assert "env LC_" not in out  # PEP 538's LC_CTYPE must not leak
    assert "fd 6 socket 02\nfd 7 socket 02\nfd 9 /dev/null" in out
    assert "got pong\n" in out


@pytest.mark.differential
def test_local_port_and_wrapped_remote_port(target: StubServer, dumper: list[str]) -> None:
    views = {}
    for impl in IMPLS:
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        local_port = holder.getsockname()[1]
        holder.close()
        args = [*QUIET, "-i", "127.0.0.1", "-p", str(local_port), "127.0.0.1", str(target.port + 65536), *dumper]
        views[impl] = normalise(run(impl, args), target, local_port=local_port)
    assert views["prefork"] == views["debian"]


@pytest.mark.differential
def test_without_path_and_without_locale(target: StubServer, dumper: list[str]) -> None:
    views = {
        impl: normalise(run(impl, [*QUIET, "127.0.0.1", str(target.port), *dumper], env={"X": "1"}), target)
        for impl in IMPLS
    }
    assert views["prefork"] == views["debian"]
    assert [line for line in views["prefork"][1].splitlines() if line.startswith("env ")] == [
        "env PROTO=TCP",
        "env TCPLOCALHOST=0",
        "env TCPLOCALIP=127.0.0.1",
        "env TCPLOCALPORT=LPORT",
        "env TCPREMOTEIP=127.0.0.1",
        "env TCPREMOTEPORT=RPORT",
        "env X=1",
    ]


def test_no_lc_ctype_even_when_python_coerces(target: StubServer, tmp_path: Path) -> None:
    show = tmp_path / "show"
    show.write_text("#!/bin/sh\ntr '\\0' '\\n' < /proc/$$/environ | sort\n")
    show.chmod(0o755)
    result = run("prefork", [*QUIET, "127.0.0.1", str(target.port), str(show)], env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    names = {line.split(b"=", 1)[0] for line in result.stdout.splitlines()}
    assert names == {
        b"PATH",
        b"PROTO",
        b"TCPLOCALHOST",
        b"TCPLOCALIP",
        b"TCPLOCALPORT",
        b"TCPREMOTEIP",
        b"TCPREMOTEPORT",
    }


@pytest.mark.skipif(not hosts_file_is_local_for_localhost(), reason="needs 127.0.0.1 localhost in /etc/hosts")
def test_ptr_lookups_through_etc_hosts(target: StubServer, dumper: list[str]) -> None:
    """Only prefork: Debian's resolver would ask the DNS server (never /etc/hosts)."""
    result = run("prefork", ["-R", "127.0.0.1", str(target.port), *dumper])
    out = normalise(result, target)[1]
    assert "env TCPLOCALHOST=localhost\n" in out
    assert "env TCPREMOTEHOST=localhost\n" in out


# -- running the program ----------------------------------------------------------------------------


@pytest.fixture
def path_dirs(tmp_path: Path) -> dict[str, Path]:
    """dirs a/ (prog not executable), b/ (prog prints B), c/ (prog prints C), and a plain file."""
    dirs = {}
    for name, body, mode in (("a", "echo A", 0o644), ("b", "echo B", 0o755), ("c", "echo C", 0o755)):
        d = tmp_path / name
        d.mkdir()
        prog = d / "prog"
        prog.write_text(f"#!/bin/sh\n{body}\n")
        prog.chmod(mode)
        dirs[name] = d
    return dirs


@pytest.mark.differential
@pytest.mark.parametrize(
    "program, path, cwd",
    [
        (["/nonexistent/prog"], "/usr/bin:/bin", None),
        (["no-such-program-prefork"], "/usr/bin:/bin", None),
        (["{a}"], "/usr/bin:/bin", None),
        (["{a}/prog"], "/usr/bin:/bin", None),
        ([""], "/usr/bin:/bin", None),
        (["prog"], "{a}:{b}", None),
        (["prog"], "{a}", None),
        (["prog"], "{a}::{b}", "{c}"),
        (["prog"], "", "{c}"),
        (["prog"], "/nonexistent:{b}", None),
        (["sh", "-c", "exit 7"], "/usr/bin:/bin", None),
        (["sh", "-c", "exit 7"], None, None),
    ],
)
def test_exec_matches_debian(
    program: list[str], path: str | None, cwd: str | None, target: StubServer, path_dirs: dict[str, Path]
) -> None:
    def fill(text: str) -> str:
        for name, d in path_dirs.items():
            text = text.replace("{" + name + "}", str(d))
        return text

    env = {"KEEP": "me"} if path is None else {"PATH": fill(path)}
    results = both(
        [*QUIET, "127.0.0.1", str(target.port), *[fill(p) for p in program]],
        env=env,
        cwd=Path(fill(cwd)) if cwd else None,
    )
    assert results["prefork"] == results["debian"]


def test_exec_failure_wording(target: StubServer) -> None:
    result = run("prefork", [*QUIET, "127.0.0.1", str(target.port), "/nonexistent/prog"])
    assert (result.returncode, result.stderr) == (
        111,
        b"tcpclient: fatal: unable to run /nonexistent/prog: file does not exist\n",
    )
    result = run("prefork", ["-q", *QUIET, "127.0.0.1", str(target.port), "/nonexistent/prog"])
    assert (result.returncode, result.stderr) == (111, b"")


# -- ident ------------------------------------------------------------------------------------------


def random_loopback() -> str:
    """A random 127.x.y.z other than 127.0.0.1, so that our port-113 stub disturbs no other test."""
    return f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(2, 254)}"


@pytest.mark.differential
def test_ident_on_port_113_matches_debian(dumper: list[str]) -> None:
    """Debian asks port 113 of the server's address: serve target and stub ident on a random 127/8 address."""
    mode = {"reply": "user"}
    stop = threading.Event()

    def answer(conn: socket.socket, line: bytes) -> None:
        if mode["reply"] == "user":
            conn.sendall(line.strip() + b" : USERID : UNIX : joe user\r\n")
        elif mode["reply"] == "error":
            conn.sendall(line.strip() + b" : ERROR : NO-USER\r\n")
        else:
            stop.wait(10)

    def pong(conn: socket.socket, line: bytes) -> None:
        if line:
            conn.sendall(b"pong\n")

    ident = target = None
    source = random_loopback()
    for _ in range(20):
        host = random_loopback()
        try:
            ident = StubServer(answer, host=host, port=113)
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                pytest.skip(f"cannot run a stub ident server on {host}:113: {e}")
            continue
        target = StubServer(pong, host=host)
        break
    if ident is None or target is None:
        pytest.skip("no free 127/8 address for a stub ident server")
    try:
        for reply, info in (
            ("user", "env TCPREMOTEINFO=joeuser\n"),
            ("error", "env TCPREMOTEINFO=\n"),
            ("silent", None),
        ):
            mode["reply"] = reply
            views = {}
            for impl in IMPLS:
                before = len(ident.queries)
                result = run(impl, ["-H", "-l0", "-t1", "-i", source, host, str(target.port), *dumper])
                views[impl] = normalise(result, target)
                assert ident.peers[-1][0] == target.peers[-1][0] == source  # query from the local address
                if reply != "silent":
                    assert ident.queries[before:] == [b"%d , %d\r\n" % (target.port, target.peers[-1][1])]
            assert views["prefork"] == views["debian"], reply
            out = views["prefork"][1]
            if info is None:
                assert "env TCPREMOTEINFO" not in out
            else:
                assert info in out
    finally:
        stop.set()
        ident.close()
        target.close()


def test_ident_port_option(target: StubServer, dumper: list[str]) -> None:
    """prefork only: ``--ident-port`` points the query at a stub on any port."""
    ident = StubServer(lambda conn, line: conn.sendall(line.strip() + b" : USERID : UNIX : eve\r\n"))
    try:
        result = run("prefork", ["--ident-port", str(ident.port), "-H", "-l0", "127.0.0.1", str(target.port), *dumper])
    finally:
        ident.close()
    assert "env TCPREMOTEINFO=eve\n" in normalise(result, target)[1]
    assert ident.queries == [b"%d , %d\r\n" % (target.port, target.peers[-1][1])]


# -- library level ----------------------------------------------------------------------------------


def test_connection_environ_with_stub_ident(target: StubServer, monkeypatch) -> None:
    ident = StubServer(lambda conn, line: conn.sendall(line.strip() + b" : USERID : UNIX : ann\r\n"))
    names = {"127.0.0.1": ""}
    monkeypatch.setattr(addr, "reverse_name", lambda ip, timeout=0: names.get(ip))
    logged: list[str] = []
    try:
        sock = connect(["127.0.0.1"], target.port, Options(), logged.append)
        assert sock is not None
        with sock:
            opts = Options(verbosity=2, ident_port=ident.port)
            changes = connection_environ(sock, opts, logged.append)
            local_port = sock.getsockname()[1]
            names.clear()
            quiet = connection_environ(sock, Options(remote_info=False), logged.append)
    finally:
        ident.close()
    assert list(changes.items()) == [
        ("PROTO", "TCP"),
        ("TCPLOCALPORT", str(local_port)),
        ("TCPLOCALIP", "127.0.0.1"),
        ("TCPLOCALHOST", ""),
        ("TCPREMOTEPORT", str(target.port)),
        ("TCPREMOTEIP", "127.0.0.1"),
        ("TCPREMOTEHOST", ""),
        ("TCPREMOTEINFO", "ann"),
    ]
    assert ident.queries == [b"%d , %d\r\n" % (target.port, local_port)]
    assert logged == [f"connected to 127.0.0.1 port {target.port}"]
    assert quiet["TCPLOCALHOST"] is None and quiet["TCPREMOTEHOST"] is None and quiet["TCPREMOTEINFO"] is None


def test_program_environ_removes_and_replaces() -> None:
    base = {b"TCPREMOTEHOST": b"old", b"TCPLOCALHOST": b"old", b"KEEP": b"\xff", b"PROTO": b"x"}
    env = program_environ({"PROTO": "TCP", "TCPLOCALHOST": "", "TCPREMOTEHOST": None, "TCPREMOTEINFO": "\udcfe"}, base)
    assert env == {b"TCPLOCALHOST": b"", b"KEEP": b"\xff", b"PROTO": b"TCP", b"TCPREMOTEINFO": b"\xfe"}


def test_connect_reports_each_failure_and_uses_the_next(target: StubServer, closed: str) -> None:
    """Nothing listens on 127.0.0.2 at the target's port (the target is bound to 127.0.0.1 only)."""
    warnings: list[str] = []
    sock = connect(["127.0.0.2", "127.0.0.1"], target.port, Options(conn_timeouts=(2, 0)), warnings.append)
    assert sock is not None
    with sock:
        assert sock.getpeername() == ("127.0.0.1", target.port)
        assert sock.getblocking()
    assert warnings == [f"unable to connect to 127.0.0.2 port {target.port}: connection refused"]
    assert connect(["127.0.0.1"], int(closed), Options(), warnings.append) is None
    assert warnings[-1] == f"unable to connect to 127.0.0.1 port {closed}: connection refused"


def test_bind_failure_is_fatal(closed: str) -> None:
    with pytest.raises(tcpclient.ClientError) as info:
        connect(["127.0.0.1"], int(closed), Options(local_ip="127.0.0.1", local_port=int(closed)), print)
    assert info.value.message == "unable to bind socket: address already used"
