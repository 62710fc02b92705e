"""tcpserver: option parsing, host/port parsing and startup errors (docs/CONTRACTS.md, Option parsing; tcpserver startup), on Debian's and prefork's."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess

import pytest
from tcpserver_harness import (
    QUIET,
    USAGE,
    VIEW,
    Launcher,
    command,
    parse_view,
    random_loopback,
    read_eof,
    run,
    talk,
)

pytestmark = pytest.mark.differential


def usage_error(impl: str, args: list[str], first: str | None) -> None:
    result = run([*command(impl), *args])
    expected = (f"{first}\n" if first else "") + USAGE + "\n"
    assert (result.returncode, result.stderr.decode(), result.stdout) == (100, expected, b"")


@pytest.mark.parametrize("args", [[], ["0"], ["0", "0"], ["--", "0", "0"], ["-v", "127.0.0.1", "0"]])
def test_missing_operand_is_usage(impl, args):
    usage_error(impl, args, None)


def test_illegal_option(impl):
    usage_error(impl, ["-z", "0", "0", "true"], "tcpserver: illegal option -- z")


def test_illegal_option_inside_bundle(impl):
    usage_error(impl, ["-HRz", "0", "0", "true"], "tcpserver: illegal option -- z")


@pytest.mark.parametrize("letter", list("cxBgublt"))
def test_option_requires_an_argument(impl, letter):
    usage_error(impl, [f"-{letter}"], f"tcpserver: option requires an argument -- {letter}")


def test_getopt_messages_use_argv0(impl, tmp_path):
    """The getopt messages name the program by argv[0]'s basename; the usage line says tcpserver."""
    link = tmp_path / "myserv"
    cmd = command(impl)
    link.symlink_to(cmd[0])
    result = run([str(link), *cmd[1:], "-z", "0", "0", "true"])
    assert (result.returncode, result.stderr.decode()) == (100, f"myserv: illegal option -- z\n{USAGE}\n")
    result = run([str(link), *cmd[1:], "-c"])
    assert (result.returncode, result.stderr.decode()) == (100, f"myserv: option requires an argument -- c\n{USAGE}\n")


def test_getopt_messages_ignore_q(impl):
    usage_error(impl, ["-q", "-z"], "tcpserver: illegal option -- z")


def test_q_silences_missing_operand(impl):
    result = run([*command(impl), "-q", "0", "0"])
    assert (result.returncode, result.stderr, result.stdout) == (100, b"", b"")


def test_bundled_flags(launch):
    server = launch(["-1HRXvl0"], [VIEW], add_one=False)
    reply, cport = talk(server.port)
    env = parse_view(reply)["env"]
    assert env["TCPLOCALHOST"] == "0"
    assert "TCPREMOTEHOST" not in env and "TCPREMOTEINFO" not in env
    lines = server.wait_ends(1)
    assert lines[0] == "tcpserver: status: 0/40"


def test_value_swallows_rest_of_bundle(launch):
    server = launch(["-vHRc7", "-l0"], [VIEW])
    talk(server.port)
    assert server.wait_ends(1)[0] == "tcpserver: status: 0/7"
    server = launch(["-vHRl0c7"], [VIEW])
    assert parse_view(talk(server.port)[0])["env"]["TCPLOCALHOST"] == "0c7"
    assert server.wait_ends(1)[0] == "tcpserver: status: 0/40"


def test_attached_and_separate_values(launch):
    server = launch(["-v", "-c", "30", "-HR", "-llocal.name"], [VIEW])
    reply, _ = talk(server.port)
    assert parse_view(reply)["env"]["TCPLOCALHOST"] == "local.name"
    assert server.wait_ends(1)[0] == "tcpserver: status: 0/30"


@pytest.mark.parametrize(("flags", "verbose"), [(["-v", "-Q"], False), (["-Q", "-v"], True), (["-v", "-q"], False)])
def test_later_verbosity_wins(launch, flags, verbose):
    server = launch([*flags, *QUIET], ["/bin/echo", "hi"])
    assert talk(server.port)[0] == b"hi\n"
    if verbose:
        assert server.wait_ends(1)[0] == "tcpserver: status: 0/40"
    else:
        # a second connection proves the first one was reaped; still nothing logged
        assert talk(server.port)[0] == b"hi\n"
        assert server.stderr() == ""


def test_options_end_at_first_operand(launch):
    server = launch(QUIET, ["/bin/echo", "-v", "-c", "x"])
    assert talk(server.port)[0] == b"-v -c x\n"
    assert talk(server.port)[0] == b"-v -c x\n"
    assert server.stderr() == ""


def test_double_dash_ends_options(launch):
    server = launch([*QUIET, "--"], ["/bin/echo", "ok"])
    assert talk(server.port)[0] == b"ok\n"


def test_stdout_closed_after_port(launch):
    server = launch(QUIET, ["/bin/echo", "x"])
    assert read_eof(server.proc.stdout, 10.0) == b"", "fd 1 of the server is still open after the -1 line"
    assert talk(server.port)[0] == b"x\n"


def test_garbage_numbers(impl, launch):
    """0.88 reads leading digits (`-c5x` = 5); prefork refuses garbage with exit 100 (deliberate difference)."""
    if impl == "debian":
        server = launch(["-v", *QUIET, "-c5x", "-bxyz"], ["/bin/echo", "x"])
        assert talk(server.port)[0] == b"x\n"
        assert server.wait_ends(1)[0] == "tcpserver: status: 0/5"
        return
    for opt in (["-c", "abc"], ["-c5x"], ["-b", "x"], ["-t", "1s"], ["-u", "nobody"]):
        result = run([*command(impl), *opt, *QUIET, "127.0.0.1", "0", "true"])
        lines = result.stderr.decode().splitlines()
        assert result.returncode == 100, (opt, result)
        assert len(lines) == 2 and lines[0].startswith("tcpserver: ") and lines[1] == USAGE, (opt, lines)


def test_debian_double_dash_word_ends_options(tmp_path):
    """djb's getopt takes any word starting with `--` as the end of the options (and consumes it).
    Debian only: prefork has long options and refuses unknown ones (next test)."""
    launcher = Launcher("debian", tmp_path)
    try:
        server = launcher([*QUIET, "--whatever"], ["/bin/echo", "x"])
        assert talk(server.port)[0] == b"x\n"
    finally:
        launcher.close()


def test_unknown_long_option_prefork():
    """prefork has long options, so an unknown one is a usage error (deliberate difference)."""
    result = run([*command("prefork"), "--frobnicate", "0", "0", "true"])
    lines = result.stderr.decode().splitlines()
    assert result.returncode == 100
    assert lines and lines[-1] == USAGE and "frobnicate" in lines[0]


def test_workers_beyond_what_readers_accept_is_usage():
    """Readers refuse a scoreboard of more than 4096 slots (docs/THREAT_MODEL.md), so tcpserver never makes one."""
    usage_error("prefork", ["--workers", "4097", "-HRl0", "127.0.0.1", "0", "true"],
                "tcpserver: bad value for --workers: 4097 is larger than 4096")


def listen_backlog(port: int) -> int:
    """The listening socket's backlog, as ss shows it (Send-Q of a LISTEN socket)."""
    if shutil.which("ss") is None:
        pytest.skip("ss (iproute2) is not installed")
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    rows = [line.split() for line in out.splitlines() if line.strip()]
    assert len(rows) == 1, out
    return int(rows[0][2])


@pytest.mark.parametrize("backlog", ["7", "1"])
def test_backlog_option(launch, backlog):
    server = launch([*QUIET, "-b", backlog], ["/bin/echo", "x"])
    assert listen_backlog(server.port) == int(backlog)


def test_default_backlog(impl, launch):
    """0.88 listens with 20; prefork's default is larger (deliberate difference)."""
    server = launch(QUIET, ["/bin/echo", "x"])
    if impl == "debian":
        assert listen_backlog(server.port) == 20
    else:
        assert listen_backlog(server.port) > 20


def test_port_in_use(impl):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run([*command(impl), *QUIET, "127.0.0.1", str(port), "true"])
    assert (result.returncode, result.stderr) == (111, b"tcpserver: fatal: unable to bind: address already used\n")


def test_address_not_available(impl):
    # bind() to an address this host does not have fails locally; no packet is sent
    result = run([*command(impl), *QUIET, "192.0.2.1", "0", "true"])
    assert (result.returncode, result.stderr) == (111, b"tcpserver: fatal: unable to bind: address not available\n")


def test_unknown_service(impl):
    result = run([*command(impl), *QUIET, "127.0.0.1", "nosuchservice", "true"])
    assert (result.returncode, result.stderr) == (
        111,
        b"tcpserver: fatal: unable to figure out port number for nosuchservice\n",
    )


def test_port_is_checked_before_program(impl):
    result = run([*command(impl), "127.0.0.1", "nosuchservice"])
    assert (result.returncode, result.stderr) == (
        111,
        b"tcpserver: fatal: unable to figure out port number for nosuchservice\n",
    )


def test_service_name(launch):
    host = random_loopback()
    server = launch(QUIET, ["/bin/echo", "x"], host=host, port="gopher")
    assert server.port == 70
    assert talk(70, host=host)[0] == b"x\n"


def test_port_wraps_modulo_65536(launch):
    host = random_loopback()
    server = launch(QUIET, ["/bin/echo", "x"], host=host, port="70000")
    assert server.port == 4464
    assert talk(4464, host=host)[0] == b"x\n"


def test_empty_port_is_zero(launch):
    server = launch(QUIET, ["/bin/echo", "x"], port="")
    assert server.port > 0
    assert talk(server.port)[0] == b"x\n"


def test_too_few_fields(impl):
    result = run([*command(impl), *QUIET, "127.1", "0", "true"])
    assert (result.returncode, result.stderr) == (111, b"tcpserver: fatal: no IP address for 127.1\n")


def _unshare() -> list[str]:
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode:
        pytest.skip("cannot create a network namespace (unshare -n)")
    return ["unshare", "-n"]


@pytest.mark.parametrize("name", ["nosuchhost.invalid"])  # ::1 is a literal now (tests/test_tcpserver_ipv6.py)
def test_unresolvable_host_offline(impl, name):
    """Run in a network namespace without connectivity so no DNS query leaves the machine.

    0.88 reports the resolver's failure (`temporarily unable ...: network unreachable`); a resolver
    that knows the name does not exist may say `no IP address for NAME`.  Both are exit 111, one line.
    """
    result = run([*_unshare(), *command(impl), *QUIET, name, "0", "true"])
    assert result.returncode == 111
    err = result.stderr.decode()
    assert err in (
        f"tcpserver: fatal: no IP address for {name}\n",
        f"tcpserver: fatal: temporarily unable to figure out IP address for {name}: network unreachable\n",
    ) or (err.startswith(f"tcpserver: fatal: temporarily unable to figure out IP address for {name}: ") and err.count("\n") == 1)


def _fields() -> tuple[int, int, int]:
    return random.randint(1, 254), random.randint(0, 255), random.randint(2, 254)


@pytest.mark.parametrize("form", ["wrap", "brackets", "extra"])
def test_ip_literal_forms(launch, form):
    a, b, c = _fields()
    host = {"wrap": f"127.{a}.{b + 256}.{c + 512}", "brackets": f"[127.{a}.{b}.{c}]", "extra": f"127.{a}.{b}.{c}.5"}
    server = launch(QUIET, [VIEW], host=host[form])
    reply, _ = talk(server.port, host=f"127.{a}.{b}.{c}")
    assert parse_view(reply)["env"]["TCPLOCALIP"] == f"127.{a}.{b}.{c}"


def test_any_address_reports_actual_local_ip(launch):
    server = launch([*QUIET, "-v"], [VIEW], host="0")
    reply, cport = talk(server.port, host="127.0.0.1")
    env = parse_view(reply)["env"]
    assert env["TCPLOCALIP"] == "127.0.0.1"
    assert env["TCPLOCALPORT"] == str(server.port)
    lines = server.wait_ends(1)
    assert f"0:127.0.0.1:{server.port} :127.0.0.1::{cport}" in lines[3]


def test_uid_and_gid(launch):
    server = launch([*QUIET, "-u", "65534", "-g", "65534"], [VIEW])
    view = parse_view(talk(server.port)[0])
    assert view["Uid"] == ["65534"] * 4
    assert view["Gid"] == ["65534"] * 4
    assert view["Groups"] == ["65534"]


def test_uid_and_gid_from_environment(launch):
    env = {"PATH": "/usr/bin:/bin", "UID": "65534", "GID": "65533"}
    server = launch([*QUIET, "-U"], [VIEW], env=env)
    view = parse_view(talk(server.port)[0])
    assert view["Uid"] == ["65534"] * 4
    assert view["Gid"] == ["65533"] * 4
    assert view["Groups"] == ["65533"]
    assert view["env"]["UID"] == "65534" and view["env"]["GID"] == "65533"


def test_without_uid_switch_stays_root(launch):
    view = parse_view(talk(launch(QUIET, [VIEW]).port)[0])
    assert view["Uid"] == ["0"] * 4
