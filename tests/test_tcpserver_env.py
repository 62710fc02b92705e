"""tcpserver: what the program sees (docs/CONTRACTS.md, tcpserver connection sequence step 10; tcpserver environment), on Debian's and prefork's tcpserver.

The program is tests/progs/view.pl, which reports its exact start-up environment (from
/proc/self/environ), its open fds, its blocked/ignored signals and its ids.  It is Perl, not
Python, because a Python program would itself change what it reports (PEP 538 adds LC_CTYPE,
the interpreter ignores SIGPIPE).  Perl ignores SIGFPE at start-up, so that bit is always set.
"""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
from tcpserver_harness import (
    PROGS,
    QUIET,
    TAG_VAR,
    VIEW,
    base_env,
    connect,
    parse_view,
    recv_all,
    sigbit,
    talk,
)

pytestmark = pytest.mark.differential
SIGWRAP = str(PROGS / "sigwrap.pl")
PERL_OWN = sigbit(signal.SIGFPE)
# glibc's posix_spawn leaves its two internal signals (32 SIGCANCEL, 33 SIGSETXID) ignored in the
# program; glibc programs cannot see them and install glibc's own handlers when they need them.
# A documented difference of prefork (docs/reference/tcpserver.md), masked here and nowhere else.
GLIBC_INTERNAL = (1 << 31) | (1 << 32)
UMASK = os.umask(0o022)
os.umask(UMASK)


def make_rules(tmp_path, text: str, name: str = "rules.cdb") -> str:
    """Compile TEXT with Debian's tcprules (the reference cdb writer)."""
    cdb = tmp_path / name
    subprocess.run(["/usr/bin/tcprules", str(cdb), str(cdb) + ".tmp"], input=text.encode(), check=True)
    return str(cdb)


def view_env(server, **kw) -> tuple[dict[str, str], int]:
    reply, cport = talk(server.port, **kw)
    env = parse_view(reply)["env"]
    env.pop(TAG_VAR, None)
    return env, cport


def expected(server, cport: int, inherited: dict[str, str], **over: str | None) -> dict[str, str]:
    env = dict(inherited)
    env.update(
        PROTO="TCP",
        TCPLOCALHOST="0",
        TCPLOCALIP="127.0.0.1",
        TCPLOCALPORT=str(server.port),
        TCPREMOTEIP="127.0.0.1",
        TCPREMOTEPORT=str(cport),
    )
    for name, value in over.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def test_plain_environment_fds_and_signals(launch, tmp_path):
    inherited = base_env(
        FOO="bar",
        EMPTY="",
        TCPREMOTEHOST="stale.host",
        TCPREMOTEINFO="stale",
        PROTO="UDP",
        TCPLOCALIP="9.9.9.9",
    )
    # started with SIGHUP/SIGUSR2/SIGPIPE/SIGTERM/SIGCHLD ignored: the last three go back to default
    wrap = [SIGWRAP, "HUP", "USR2", "PIPE", "TERM", "CHLD", "--"]
    server = launch(QUIET, [VIEW], env=inherited, wrap=wrap)
    reply, cport = talk(server.port)
    view = parse_view(reply)
    view["env"].pop(TAG_VAR)
    inherited.pop("TCPREMOTEHOST")
    inherited.pop("TCPREMOTEINFO")
    assert view["env"] == expected(server, cport, inherited)
    assert view["fds"] == {0: "socket", 1: "socket", 2: str(server.errfile)}
    assert view["SigBlk"] == 0
    assert view["SigIgn"] & ~GLIBC_INTERNAL == PERL_OWN | sigbit(signal.SIGHUP) | sigbit(signal.SIGUSR2)


def test_process_attributes(launch, tmp_path):
    """Same process group as the server, same session, working directory and umask; the socket is
    blocking, Nagle on and no keepalive (-d is the default)."""
    server = launch(QUIET, [VIEW])
    view = parse_view(talk(server.port)[0])
    assert view["pgrp"] == os.getpgid(server.pid) == os.getpgrp()
    assert view["sid"] == os.getsid(server.pid)
    assert view["cwd"] == str(tmp_path)
    assert view["Umask"] == UMASK
    assert view["sock"] == {"nodelay": "0", "keepalive": "0", "nonblock": "0"}


@pytest.mark.parametrize(("flags", "nodelay"), [(["-D"], "1"), (["-D", "-d"], "0"), (["-d", "-D", "-o", "-O"], "1")])
def test_nodelay(launch, flags, nodelay):
    server = launch([*QUIET, *flags], [VIEW])
    assert parse_view(talk(server.port)[0])["sock"] == {"nodelay": nodelay, "keepalive": "0", "nonblock": "0"}


def test_default_signals_stay_default(launch):
    server = launch(QUIET, [VIEW], wrap=[SIGWRAP, "--"])
    view = parse_view(talk(server.port)[0])
    assert (view["SigBlk"], view["SigIgn"] & ~GLIBC_INTERNAL) == (0, PERL_OWN)


def test_socket_is_fd_0_and_1(launch):
    server = launch(QUIET, ["/bin/sh", "-c", "read line; echo \"got $line\"; echo err >&2"])
    with connect(server.port) as sock:
        sock.sendall(b"ping\n")
        assert recv_all(sock) == b"got ping\n"
    assert server.wait_lines(lambda lines: "err" in lines) == ["err"]


def test_local_name(launch):
    server = launch(["-H", "-R", "-lwww.example.test"], [VIEW])
    env, cport = view_env(server)
    assert env == expected(server, cport, base_env(), TCPLOCALHOST="www.example.test")


def test_empty_local_name_is_set(launch):
    server = launch(["-H", "-R", "-l", ""], [VIEW])
    env, cport = view_env(server)
    assert env == expected(server, cport, base_env(), TCPLOCALHOST="")


def test_rule_variables_override(launch, tmp_path):
    cdb = make_rules(tmp_path, '127.0.0.1:allow,TCPLOCALHOST="movie.edu",PROTO="FOO",X="1",X="2",Y=/a:b=c/\n')
    server = launch([*QUIET, "-x", cdb], [VIEW])
    env, cport = view_env(server)
    assert env == expected(server, cport, base_env(), TCPLOCALHOST="movie.edu", PROTO="FOO", X="2", Y="a:b=c")


def test_rule_can_remove_nothing_but_set_empty(launch, tmp_path):
    cdb = make_rules(tmp_path, '127.0.0.:allow,TCPREMOTEIP="",NEW=""\n')
    server = launch([*QUIET, "-x", cdb], [VIEW])
    env, cport = view_env(server)
    assert env == expected(server, cport, base_env(), TCPREMOTEIP="", NEW="")


def test_banner_comes_first(launch):
    banner = "220 hello\r\n\udcff\t"  # surrogateescape: the argument carries the raw byte 0xff
    server = launch([*QUIET, "-B", banner], [VIEW])
    reply, cport = talk(server.port)
    head = b"220 hello\r\n\xff\t"
    assert reply.startswith(head)
    env = parse_view(reply[len(head) :])["env"]
    env.pop(TAG_VAR)
    assert env == expected(server, cport, base_env())


def test_banner_reaches_denied_client(launch, tmp_path):
    cdb = make_rules(tmp_path, "127.0.0.1:deny\n")
    server = launch([*QUIET, "-Bgo away\n", "-x", cdb], [VIEW])
    assert talk(server.port)[0] == b"go away\n"


def test_missing_rules_with_X_allows(launch, tmp_path):
    server = launch([*QUIET, "-X", "-x", str(tmp_path / "missing.cdb")], [VIEW])
    env, cport = view_env(server)
    assert env == expected(server, cport, base_env())


@pytest.mark.parametrize("locale", [{}, {"LANG": "C"}, {"LC_ALL": "C"}])
def test_no_locale_coercion(launch, locale):
    """PEP 538: a Python server started in the C locale must not pass LC_CTYPE=C.UTF-8 on."""
    inherited = base_env(**locale)
    server = launch(QUIET, [VIEW], env=inherited)
    env, cport = view_env(server)
    assert "LC_CTYPE" not in env
    assert env == expected(server, cport, inherited)


def test_non_utf8_environment_passes_through(launch):
    inherited = base_env(ODD="caf\udce9", **{"N\udcffME": "x"})
    server = launch(QUIET, [VIEW], env=inherited)
    env, cport = view_env(server)
    assert env == expected(server, cport, inherited)


def test_unset_path_uses_default_search(launch):
    """PATH unset: the program is searched in /bin:/usr/bin and PATH stays unset."""
    server = launch(QUIET, ["env"], env={"HOME": "/nonexistent"})
    reply, cport = talk(server.port)
    lines = sorted(line for line in reply.decode().splitlines() if not line.startswith(TAG_VAR + "="))
    want = expected(server, cport, {"HOME": "/nonexistent"})
    assert lines == sorted(f"{k}={v}" for k, v in want.items())


def test_program_arguments_verbatim(launch):
    server = launch(QUIET, ["/usr/bin/printf", "[%s]", "a b", "", "-v", "\udcfe"])
    assert talk(server.port)[0] == b"[a b][][-v][\xfe]"
