"""tcpserver over IPv6 (docs/CONTRACTS.md, IPv6): compared with ucspi-tcp-ipv6, the judge (0.88 with the IPv6
patch, unpacked in /opt/ucspi-tcp-ipv6 by .ci/run; the comparisons skip without it), and, for what prefork
does beyond the judge (``::``, ``[::1]``, a dual-stack listener's IPv4 clients shown as 0.88 shows them),
with Debian's 0.88 or on its own.

Every server listens on ::1 (or ::, or 127.0.0.1) port 0 with ``-1``; no DNS is asked (``-H -R -l0``, or a
stub ident server on ::1:113 that one test at a time holds, under a lock file).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
import socket
import struct
import subprocess
import threading
from pathlib import Path

import pytest
from conftest import judge, ours
from tcpserver_harness import (
    QUIET,
    TAG_VAR,
    VIEW,
    Launcher,
    base_env,
    normalise,
    parse_view,
    private_hosts_possible,
    run,
    talk,
)

pytestmark = pytest.mark.differential

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
PORT_VARS = ("TCPLOCALPORT", "TCPREMOTEPORT", "TCP6LOCALPORT", "TCP6REMOTEPORT")


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


if not ipv6_loopback():
    pytest.skip("no IPv6 loopback here", allow_module_level=True)


@pytest.fixture(params=["judge", "prefork"])
def impl6(request) -> str:
    """ucspi-tcp-ipv6's tcpserver (skipped where it is not unpacked) or prefork's."""
    if request.param == "judge":
        judge("tcpserver")
    return request.param


@pytest.fixture
def launch6(impl6, tmp_path):
    launcher = Launcher(impl6, tmp_path)
    yield launcher
    launcher.close()


def both(tmp_path: Path, scenario) -> tuple[object, object]:
    """SCENARIO(launcher) run with the judge and with prefork, each in its own directory."""
    results = []
    for impl in ("judge", "prefork"):
        if impl == "judge":
            judge("tcpserver")
        folder = tmp_path / impl
        folder.mkdir()
        launcher = Launcher(impl, folder)
        try:
            results.append(scenario(launcher))
        finally:
            launcher.close()
    return results[0], results[1]


def program_env(port: int, host: str, send: bytes = b"") -> dict[str, str]:
    """view.pl's environment for one connection to HOST:PORT, ports replaced by names."""
    reply, cport = talk(port, send, host=host)
    env = parse_view(reply)["env"]
    env.pop(TAG_VAR, None)
    env.pop("PWD", None)
    for name in PORT_VARS:
        if name in env:
            env[name] = {str(port): "PORT", str(cport): "CPORT"}.get(env[name], env[name])
    return env


def session(opts: list[str], host: str, client: str, prog: list[str] | None = None, clients: int = 1):
    """A scenario: a -v server on HOST, CLIENTS connections from CLIENT; (environments, normalised log)."""

    def scenario(launch: Launcher) -> tuple[list[dict[str, str]], list[str]]:
        server = launch(["-v", *opts], prog or [VIEW], host=host)
        envs = [program_env(server.port, client) for _ in range(clients)]
        lines = server.wait_ends(clients)
        return envs, normalise(lines, server.port)

    return scenario


# ---- against the judge ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("opts", "host", "client"),
    [
        (QUIET, "::1", "::1"),
        (["-H", "-R", "-lhere.example"], "::1", "::1"),
        (["-H", "-R", "-l0", "-6"], "0", "127.0.0.1"),  # -6: an IPv4 client shown as ::ffff:127.0.0.1
        (["-H", "-R", "-l0", "-6"], "0", "::1"),
        (["-H", "-R", "-l0", "-6"], "127.0.0.1", "127.0.0.1"),
        (["-H", "-R", "-l0", "-I", "lo"], "::1", "::1"),
        (["-H", "-R", "-l0", "-B", "hi\n", "-D", "-c", "7"], "::1", "::1"),
    ],
    ids=["loopback", "localname", "six-v4-client", "six-v6-client", "six-v4-listener", "interface", "banner"],
)
def test_environment_and_log_lines_as_the_judge(tmp_path, opts, host, client):
    theirs, mine = both(tmp_path, session(opts, host, client))
    if "-6" in opts and host == "127.0.0.1":  # docs/CONTRACTS.md, Quirks of Debian's builds: not copied
        assert theirs[0][0].pop("TCP6INTERFACE") == "[unknown]"
    assert mine == theirs
    envs, lines = mine
    assert envs[0]["PROTO"] == "TCP6" and envs[0]["TCP6REMOTEIP"] == envs[0]["TCPREMOTEIP"]


def test_the_ipv6_environment_exactly(prefork):
    """What the judge gives (recorded in docs/CONTRACTS.md, IPv6), checked without it too."""
    server = prefork(["-v", *QUIET], [VIEW], host="::1")
    env = program_env(server.port, "::1")
    assert {k: v for k, v in env.items() if k.startswith(("TCP", "PROTO"))} == {
        "PROTO": "TCP6",
        "TCPLOCALIP": "::1", "TCPLOCALPORT": "PORT", "TCPLOCALHOST": "0",
        "TCPREMOTEIP": "::1", "TCPREMOTEPORT": "CPORT",
        "TCP6LOCALIP": "::1", "TCP6LOCALPORT": "PORT", "TCP6LOCALHOST": "0",
        "TCP6REMOTEIP": "::1", "TCP6REMOTEPORT": "CPORT",
    }
    lines = normalise(server.wait_ends(1), server.port)
    assert lines == ["tcpserver: status: 0/40", "tcpserver: status: 1/40", "tcpserver: pid #1 from ::1",
                     "tcpserver: ok #1 0:::1:PORT :::1::RPORT", "tcpserver: end #1 status 0",
                     "tcpserver: status: 0/40"]


RULES = (
    '::1:allow,X="v6"\n'
    '::ffff:127.0.0.1:allow,X="mapped"\n'
    '127.0.0.1:allow,X="v4"\n'
    'joe@::1:deny\n'
    '::allow,X="prefix"\n'
)


@pytest.mark.parametrize(
    ("rules", "opts", "host", "client"),
    [
        (RULES, [], "::1", "::1"),
        (RULES, ["-6"], "0", "127.0.0.1"),
        (RULES.replace('::1:allow,X="v6"\n', ""), [], "::1", "::1"),  # the prefix ::
        ("::1:deny\n", [], "::1", "::1"),
        (':::deny\n:allow,X="default"\n', [], "::1", "::1"),
    ],
    ids=["exact", "six-mapped", "prefix", "deny", "all-v6-denied"],
)
def test_rules_decide_as_the_judge(tmp_path, rules, opts, host, client):
    """-x with IPv6 keys: the same rule wins for the same client (the cdb made by the judge's tcprules)."""
    cdb = tmp_path / "rules.cdb"
    subprocess.run([judge("tcprules"), str(cdb), str(tmp_path / "rules.tmp")], input=rules.encode(), check=True,
                   timeout=10)

    def scenario(launch: Launcher):
        server = launch(["-v", *QUIET, "-x", str(cdb), *opts], [VIEW], host=host)
        reply, _ = talk(server.port, host=client)
        env = parse_view(reply)["env"]
        lines = server.wait_ends(1)
        return env.get("X"), reply == b"", normalise(lines, server.port)

    theirs, mine = both(tmp_path, scenario)
    assert mine == theirs


class Ident6Stub:
    """An ident server on [ADDRESS]:113 (SCOPE: a link-local address's) answering ``USERID : UNIX : joe``; one
    test at a time holds port 113 of the IPv6 addresses, under a lock file."""

    LOCK = Path("/tmp/prefork-test-ident6.lock")

    def __init__(self, address: str = "::1", scope: int = 0) -> None:
        self.address, self.scope = address, scope

    def __enter__(self) -> Ident6Stub:
        self.lock = open(self.LOCK, "a")  # noqa: SIM115 (held until __exit__)
        fcntl.flock(self.lock, fcntl.LOCK_EX)
        self.sock = socket.socket(socket.AF_INET6)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((self.address, 113, 0, self.scope))
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self.queries: list[bytes] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()
        return self

    def serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    query = conn.recv(100)
                    self.queries.append(query)
                    conn.sendall(query.strip() + b" : USERID : UNIX : joe\r\n")

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()
        self.lock.close()


def test_ident_over_ipv6_as_the_judge(tmp_path):
    with Ident6Stub() as stub:
        theirs, mine = both(tmp_path, session(["-H", "-l0"], "::1", "::1"))
        assert len(stub.queries) == 2 and all(re.fullmatch(rb"\d+ , \d+\r\n", q) for q in stub.queries)
    assert mine == theirs
    env = mine[0][0]
    assert (env["TCPREMOTEINFO"], env["TCP6REMOTEINFO"]) == ("joe", "joe")


@pytest.mark.parametrize("opts", [["-4"], ["-4", "-6", "-4"]])
def test_minus_4_refuses_an_ipv6_host_as_the_judge(impl6, opts):
    from tcpserver_harness import command

    result = run([*command(impl6), *opts, *QUIET, "::1", "0", "true"])
    assert (result.returncode, result.stderr) == (111, b"tcpserver: fatal: unable to bind: address family not supported\n")


def test_minus_4_with_the_any_address_listens_on_ipv4(launch6):
    server = launch6(["-4", *QUIET], [VIEW], host="::0")
    env = program_env(server.port, "127.0.0.1")
    assert (env["PROTO"], env["TCPREMOTEIP"]) == ("TCP", "127.0.0.1")
    with pytest.raises(OSError):
        talk(server.port, host="::1", timeout=3)


def test_usage_line_with_and_without_ipv6_options(impl6):
    """0.88's line for a 0.88 command line; ucspi-tcp-ipv6's once -4, -6 or -I is given (the judge always
    prints its own)."""
    from tcpserver_harness import USAGE, command

    with_six = run([*command(impl6), "-6", "::1"]).stderr.decode()
    assert with_six == USAGE.replace("[ -1UX", "[ -461UX").replace(" host port", " [ -I interface ] host port") + "\n"
    plain = run([*command(impl6), "::1"]).stderr.decode()
    assert plain == (USAGE if impl6 == "prefork" else with_six.rstrip("\n")) + "\n"


# ---- beyond the judge ------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["::", "[::1]", "::0", "0:0:0:0:0:0:0:1"])
def test_ipv6_literal_hosts(prefork, host):
    """`::` and `[::1]` the judge cannot parse (`::` goes to its DNS client, the brackets are `no IP address`)."""
    server = prefork(QUIET, [VIEW], host=host)
    env = program_env(server.port, "::1")
    assert (env["PROTO"], env["TCPLOCALIP"], env["TCPREMOTEIP"]) == ("TCP6", "::1", "::1")


def test_dual_stack_ipv4_client_is_shown_as_088_shows_it(tmp_path):
    """`::` takes IPv4 clients too; each is presented exactly as Debian's 0.88 presents it on `0`: the same
    environment (no TCP6* twins, PROTO=TCP, dotted quads), the same -v lines, the IPv4 rules."""
    from conftest import real

    rules = tmp_path / "rules.cdb"
    subprocess.run([ours("tcprules"), str(rules), str(tmp_path / "rules.tmp")], check=True, timeout=10,
                   input=b'127.0.0.1:allow,X="v4"\n::ffff:127.0.0.1:allow,X="mapped"\n')
    results = {}
    for impl, host in (("debian", "0"), ("prefork", "::")):
        if impl == "debian":
            real("tcpserver")
        folder = tmp_path / impl
        folder.mkdir()
        launcher = Launcher(impl, folder)
        try:
            results[impl] = session([*QUIET, "-x", str(rules)], host, "127.0.0.1")(launcher)
        finally:
            launcher.close()
    envs, lines = results["prefork"]
    assert envs[0]["X"] == "v4" and envs[0]["PROTO"] == "TCP" and envs[0]["TCPREMOTEIP"] == "127.0.0.1"
    assert not [k for k in envs[0] if k.startswith("TCP6")]
    assert "tcpserver: ok #1 0:127.0.0.1:PORT :127.0.0.1::RPORT" in lines
    assert results["prefork"] == results["debian"]


def test_host_0_stays_ipv4(prefork):
    server = prefork(QUIET, [VIEW], host="0")
    assert program_env(server.port, "127.0.0.1")["PROTO"] == "TCP"
    with pytest.raises(OSError):
        talk(server.port, host="::1", timeout=3)


def test_inherited_tcp6_variables_are_removed(prefork):
    """An IPv4 client's program never sees TCP6* variables tcpserver inherited (its own are set per IPv6
    connection): TCP6INTERFACE included, which the judge leaves when a connection has no scope."""
    inherited = {name: "outer" for name in ("TCP6REMOTEIP", "TCP6INTERFACE", "TCP6REMOTEINFO")}
    server = prefork(QUIET, [VIEW], host="::", env=base_env(**inherited))
    assert not [k for k in program_env(server.port, "127.0.0.1") if k.startswith("TCP6")]
    env6 = program_env(server.port, "::1")
    assert "TCP6INTERFACE" not in env6 and env6["TCP6REMOTEIP"] == "::1"


@pytest.mark.parametrize("host", ["::g", "1:2:3:4:5:6:7:8:9", "[::1", "::1]", "1::2::3", ":::", "fe80::1%lo",
                                  "[[::1]]", "::1\udcff"])
def test_malformed_ipv6_host_is_one_fatal_line(host):
    """The judge sends these to DNS (`temporarily unable to figure out IP address for X: ...`); a host with a
    colon is never a name, so prefork says at once that it has no address.  Exit 111 as the judge."""
    result = run([ours("tcpserver"), *QUIET, host, "0", "true"])
    assert (result.returncode, result.stdout) == (111, b"")
    assert result.stderr == b"tcpserver: fatal: no IP address for " + host.encode("utf-8", "surrogateescape") + b"\n"


def test_unknown_interface_is_ignored_as_the_judge_does(prefork):
    server = prefork([*QUIET, "-I", "nosuchif0"], [VIEW], host="::1")
    assert program_env(server.port, "::1")["PROTO"] == "TCP6"


# ---- PROXY protocol, socket activation, scoreboard ---------------------------------------------------


def v2_tcp6(src: str, dst: str, sport: int, dport: int) -> bytes:
    body = socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst) + struct.pack(
        "!HH", sport, dport)
    return V2_SIGNATURE + bytes([0x21, 0x21]) + struct.pack("!H", len(body)) + body


@pytest.mark.parametrize(
    ("header", "remote", "local", "proto"),
    [
        (b"PROXY TCP6 2001:db8:0::1 2001:db8::7 40000 443\r\n", "2001:db8::1", "2001:db8::7", "TCP6"),
        (v2_tcp6("2001:db8::1", "2001:db8::7", 40000, 443), "2001:db8::1", "2001:db8::7", "TCP6"),
        (b"PROXY TCP6 ::ffff:192.0.2.1 ::ffff:192.0.2.7 40000 443\r\n", "192.0.2.1", "192.0.2.7", "TCP"),
    ],
    ids=["v1", "v2", "v1-mapped"],
)
def test_proxy_tcp6_header_is_an_ipv6_client(prefork, tmp_path, header, remote, local, proto):
    rules = tmp_path / "rules.cdb"
    subprocess.run([ours("tcprules"), str(rules), str(tmp_path / "rules.tmp")], check=True, timeout=10,
                   input=b'2001:db8::1:allow,X="six"\n192.0.2.1:allow,X="four"\n')
    server = prefork(["-v", *QUIET, "--proxy-protocol", "-x", str(rules)], [VIEW])
    reply, cport = talk(server.port, header + b"after")
    env = parse_view(reply)["env"]
    assert (env["PROTO"], env["TCPREMOTEIP"], env["TCPREMOTEPORT"], env["TCPLOCALIP"], env["TCPLOCALPORT"]) == (
        proto, remote, "40000", local, "443")
    assert env["X"] == ("six" if proto == "TCP6" else "four")
    assert (env.get("TCP6REMOTEIP"), env.get("TCP6LOCALPORT")) == ((remote, "443") if proto == "TCP6" else (None, None))
    lines = server.wait_ends(1)
    assert f"tcpserver: pid {lines[2].split()[2]} from {remote}" in lines
    assert any(line.endswith(f" 0:{local}:443 :{remote}::40000") for line in lines), lines


def test_socket_activation_with_an_ipv6_socket(prefork):
    from test_tcpserver_socket_activation import WRAP, activation_env

    with socket.socket(socket.AF_INET6) as sock:
        sock.bind(("::1", 0))
        sock.listen(16)
        port = sock.getsockname()[1]
        server = prefork(["-v", *QUIET], [VIEW], env=activation_env(), wrap=WRAP, stdin=sock.fileno())
    assert server.port == port
    env = program_env(port, "::1")
    assert (env["PROTO"], env["TCPLOCALIP"], env["TCPLOCALPORT"], env["TCP6REMOTEIP"]) == ("TCP6", "::1", "PORT",
                                                                                          "::1")
    assert "tcpserver: ok #1 0:::1:PORT :::1::RPORT" in normalise(server.wait_ends(1), port)
    status = subprocess.run([ours("tcpserver-status"), "--json", str(server.pid)], capture_output=True, timeout=15,
                            env=base_env())
    assert json.loads(status.stdout)["local"] == f"[::1]:{port}"


def test_scoreboard_and_status_show_the_ipv6_listener(prefork, tmp_path):
    board = tmp_path / "board"
    server = prefork([*QUIET, "--scoreboard", str(board)], [VIEW], host="::1")
    program_env(server.port, "::1")
    status = subprocess.run([ours("tcpserver-status"), "--json", str(board)], capture_output=True, timeout=15,
                            env=base_env())
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["local"] == f"[::1]:{server.port}"
    text = subprocess.run([ours("tcpserver-status"), str(board)], capture_output=True, timeout=15, env=base_env())
    assert f"service [::1]:{server.port}," in text.stdout.decode()
    from prefork.metrics.collector import SharedMemoryCollector

    rendered = SharedMemoryCollector([str(board)]).render().decode()
    assert f'service="[::1]:{server.port}"' in rendered


# ---- DNS over IPv6 (prefork's system resolver, docs/reference/tcpserver.md) --------------------------



@pytest.mark.skipif(not private_hosts_possible(), reason="needs unshare --mount (root)")
@pytest.mark.parametrize("paranoid", [False, True])
def test_names_of_an_ipv6_client(prefork, tmp_path, paranoid):
    """-h (and -p) for an IPv6 client: the PTR name of ::1 (ip6.arpa, here from a private /etc/hosts) in
    TCPREMOTEHOST, TCPLOCALHOST and their TCP6 twins; -p confirms it by the name's AAAA records."""
    hosts = tmp_path / "hosts"
    hosts.write_bytes(b"127.0.0.1 localhost\n::1 Six.Example\n")
    wrap = ["unshare", "--mount", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts)]
    opts = ["-h", *(["-p"] if paranoid else []), "-R", "-v", "--dns-timeout", "5"]
    server = prefork(opts, [VIEW], host="::1", wrap=wrap)
    env = program_env(server.port, "::1")
    names = {k: env.get(k) for k in ("TCPREMOTEHOST", "TCP6REMOTEHOST", "TCPLOCALHOST", "TCP6LOCALHOST")}
    assert names == dict.fromkeys(names, "six.example")
    assert "tcpserver: ok #1 six.example:::1:PORT six.example:::1::RPORT" in normalise(server.wait_ends(1),
                                                                                          server.port)


def link_local() -> tuple[str, str] | None:
    """(address, interface) of a link-local IPv6 address of this machine, from /proc/net/if_inet6."""
    try:
        lines = Path("/proc/net/if_inet6").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) == 6 and fields[0].startswith("fe80"):
            return socket.inet_ntop(socket.AF_INET6, bytes.fromhex(fields[0])), fields[5]
    return None


@pytest.mark.skipif(link_local() is None, reason="no link-local IPv6 address here")
def test_link_local_with_interface_as_the_judge(tmp_path):
    """-I IFACE binds a link-local address (without it the bind fails, as the judge's); a client in that scope
    gets TCP6INTERFACE=IFACE and no zone id in its addresses."""
    found = link_local()
    assert found is not None
    address, iface = found

    def scenario(launch: Launcher):
        server = launch(["-v", *QUIET, "-I", iface], [VIEW], host=address)
        info = socket.getaddrinfo(f"{address}%{iface}", server.port, socket.AF_INET6, socket.SOCK_STREAM)[0][4]
        with socket.socket(socket.AF_INET6) as sock:
            sock.settimeout(10)
            sock.connect(info)
            cport = sock.getsockname()[1]
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        env = parse_view(data)["env"]
        env.pop(TAG_VAR, None)
        env.pop("PWD", None)
        for name in PORT_VARS:
            env[name] = {str(server.port): "PORT", str(cport): "CPORT"}[env[name]]
        return env, normalise(server.wait_ends(1), server.port)

    theirs, mine = both(tmp_path, scenario)
    assert mine == theirs
    assert (mine[0]["TCP6INTERFACE"], mine[0]["TCPREMOTEIP"]) == (iface, address)
    from tcpserver_harness import command

    for impl in ("judge", "prefork"):
        result = run([*command(impl), *QUIET, address, "0", "true"])
        assert (result.returncode, result.stderr) == (111, b"tcpserver: fatal: unable to bind: invalid argument\n")


class Dns6Stub:
    """A DNS server on [::1]:53 (UDP) knowing one name: the PTR of ::1 is NAME, NAME's AAAA is AAAA, anything
    else does not exist.  One test at a time holds the port, under a lock file."""

    LOCK = Path("/tmp/prefork-test-dns6.lock")
    PTR = ".".join("1" + "0" * 31) + ".ip6.arpa"

    def __init__(self, name: str, aaaa: str) -> None:
        self.name, self.aaaa = name.encode(), aaaa
        self.questions: list[tuple[bytes, int]] = []

    def __enter__(self) -> Dns6Stub:
        self.lock = open(self.LOCK, "a")  # noqa: SIM115 (held until __exit__)
        fcntl.flock(self.lock, fcntl.LOCK_EX)
        self.sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        self.sock.bind(("::1", 53))
        self.sock.settimeout(0.1)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()
        return self

    @staticmethod
    def wire(name: bytes) -> bytes:
        return b"".join(bytes([len(label)]) + label for label in name.split(b".")) + b"\0"

    def answer(self, data: bytes) -> bytes:
        labels, off = [], 12
        while data[off]:
            labels.append(data[off + 1 : off + 1 + data[off]])
            off += 1 + data[off]
        qname = b".".join(labels).lower()
        qtype = struct.unpack_from("!H", data, off + 1)[0]
        self.questions.append((qname, qtype))
        question = data[12 : off + 5]
        records, rcode = [], 0
        if qname == self.PTR.encode() and qtype == 12:
            rdata = self.wire(self.name)
            records.append(struct.pack("!HHHIH", 0xC00C, 12, 1, 60, len(rdata)) + rdata)
        elif qname == self.name.lower() and qtype == 28:
            records.append(struct.pack("!HHHIH", 0xC00C, 28, 1, 60, 16) + socket.inet_pton(socket.AF_INET6, self.aaaa))
        elif qname != self.name.lower():
            rcode = 3  # NXDOMAIN
        return struct.pack("!HHHHHH", data[0] << 8 | data[1], 0x8180 | rcode, 1, len(records), 0, 0) + question + \
            b"".join(records)

    def serve(self) -> None:
        while not self.stop.is_set():
            try:
                data, peer = self.sock.recvfrom(512)
            except OSError:
                continue
            with contextlib.suppress(Exception):  # a test's own stub: a question it cannot read goes unanswered
                self.sock.sendto(self.answer(data), peer)

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()
        self.lock.close()


@pytest.mark.skipif(not private_hosts_possible(), reason="needs unshare --mount (root)")
@pytest.mark.parametrize(("aaaa", "paranoid"), [("::1", []), ("::1", ["-p"]), ("::2", ["-p"]), ("::2", [])],
                         ids=["name", "confirmed", "not-confirmed", "unchecked"])
def test_dns_names_of_an_ipv6_client_as_the_judge(tmp_path, aaaa, paranoid):
    """-h/-p against a DNS stub on ::1: the judge asks it through DNSCACHEIP=::1, prefork's system resolver
    through a private resolv.conf (nameserver ::1) and an /etc/hosts without ::1.  Same PTR (ip6.arpa) name
    in TCPREMOTEHOST, TCPLOCALHOST and their twins, the same -p decision (by the name's AAAA records)."""
    (tmp_path / "resolv.conf").write_text("nameserver ::1\noptions timeout:2 attempts:2\n")
    (tmp_path / "hosts").write_text("127.0.0.1 localhost\n")
    wrap = ["unshare", "--mount", "sh", "-c",
            'mount --bind "$0" /etc/resolv.conf && mount --bind "$1" /etc/hosts && shift && exec "$@"',
            str(tmp_path / "resolv.conf"), str(tmp_path / "hosts")]

    def scenario(launch: Launcher):
        opts = ["-v", "-h", *paranoid, "-R"]
        if launch.impl == "judge":
            server = launch(opts, [VIEW], host="::1", env=base_env(DNSCACHEIP="::1"))
        else:
            server = launch([*opts, "--dns-timeout", "5"], [VIEW], host="::1", wrap=wrap)
        env = program_env(server.port, "::1")
        return env, normalise(server.wait_ends(1), server.port)

    with Dns6Stub("Six.Example", aaaa) as stub:
        theirs, mine = both(tmp_path, scenario)
        assert (Dns6Stub.PTR.encode(), 12) in stub.questions
    theirs[0].pop("DNSCACHEIP", None)
    assert mine == theirs
    confirmed = aaaa == "::1" or not paranoid
    assert mine[0].get("TCP6REMOTEHOST") == ("six.example" if confirmed else None)
    assert mine[0]["TCPLOCALHOST"] == mine[0]["TCP6LOCALHOST"] == "six.example"


def test_socket_activation_mismatch_names_ipv6_addresses_in_brackets(prefork):
    from test_tcpserver_socket_activation import WRAP, activation_env

    with socket.socket(socket.AF_INET6) as sock:
        sock.bind(("::1", 0))
        sock.listen(16)
        port = sock.getsockname()[1]
        server = prefork(QUIET, ["/bin/echo", "hi"], host="::2", port="1", env=activation_env(), wrap=WRAP,
                         stdin=sock.fileno())
    assert talk(port, host="::1")[0] == b"hi\n"
    expected = f"tcpserver: warning: socket activation: serving [::1]:{port} from fd 3, not [::2]:1 as given"
    assert server.wait_lines(lambda lines: expected in lines) == [expected]


FORMATS = ["2001:db8:0:1:1:1:1:1", "::102:304", "2001:db8:0:0:1:0:0:1", "2001:0:0:1:0:0:0:1", "1:0:0:0:0:0:0:0",
           "::ffff:0:102:304", "64:ff9b::102:304"]
IN_NAMESPACE = r'''
import json, socket, subprocess, sys, time
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
for a in sys.argv[2:]:
    subprocess.run(["ip", "-6", "addr", "add", a + "/128", "dev", "lo", "nodad"], check=True)
time.sleep(0.5)
for a in sys.argv[2:]:
    server = subprocess.Popen([*json.loads(sys.argv[1]), "-1", "-v", "-H", "-R", "-l0", a, "0", "sh", "-c",
                               'echo "$TCPLOCALIP $TCPREMOTEIP $TCP6REMOTEIP"'],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={"PATH": "/usr/bin:/bin"})
    line = server.stdout.readline()
    if not line:
        sys.exit(f"{a}: no port; stderr: {server.communicate(timeout=10)[1]!r}")
    port = int(line)
    with socket.create_connection((a, port), timeout=10, source_address=(a, 0)) as s:
        reply = b""
        while chunk := s.recv(200):
            reply += chunk
    time.sleep(0.3)
    server.terminate()
    err = server.communicate(timeout=10)[1].decode()
    ok = [line.split(" ", 3)[3].rsplit(":", 1)[0].replace(f":{port} ", ":PORT ") for line in err.splitlines()
          if " ok " in line]
    print(a, reply.decode().strip(), ok)
'''


def _netns_possible() -> bool:
    try:
        return subprocess.run(["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _netns_possible(), reason="needs unshare -n (root)")
def test_address_text_as_the_judge_writes_it(tmp_path):
    """Addresses whose text inet_ntop writes otherwise (a lone zero group, IPv4-compatible) and others, served
    and connected to in a private network namespace: TCPLOCALIP, TCPREMOTEIP, the twins and the ok line."""
    import sys

    script = tmp_path / "netns.py"
    script.write_text(IN_NAMESPACE)

    def served(argv: list[str]) -> list[str]:
        out = subprocess.run(["unshare", "-n", sys.executable, str(script), json.dumps(argv), *FORMATS],
                             capture_output=True, timeout=120)
        assert out.returncode == 0, out.stderr.decode()
        return out.stdout.decode().splitlines()

    theirs = served([judge("tcpserver")])
    mine = served([ours("tcpserver"), "--workers", "1"])
    assert mine == theirs
    assert "2001:db8:0:1:1:1:1:1 2001:db8::1:1:1:1:1 2001:db8::1:1:1:1:1 2001:db8::1:1:1:1:1" in mine[0]
    assert mine[1].startswith("::102:304 ::102:304 ::102:304")


@pytest.mark.skipif(link_local() is None, reason="no link-local IPv6 address here")
def test_ident_of_a_link_local_client_as_the_judge(tmp_path):
    """-r for a link-local client: the query goes to its port 113 in the connection's scope."""
    found = link_local()
    assert found is not None
    address, iface = found

    def scenario(launch: Launcher):
        server = launch(["-v", "-H", "-l0", "-I", iface], [VIEW], host=address)
        info = socket.getaddrinfo(f"{address}%{iface}", server.port, socket.AF_INET6, socket.SOCK_STREAM)[0][4]
        with socket.socket(socket.AF_INET6) as sock:
            sock.settimeout(10)
            sock.connect(info)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        env = parse_view(data)["env"]
        server.wait_ends(1)
        return env.get("TCPREMOTEINFO"), env.get("TCP6REMOTEINFO")

    with Ident6Stub(address, socket.if_nametoindex(iface)) as stub:
        theirs, mine = both(tmp_path, scenario)
        assert len(stub.queries) == 2
    assert mine == theirs == ("joe", "joe")


@pytest.mark.parametrize("prog", ["tcpserver", "tcpclient"])
@pytest.mark.parametrize(("args", "six"), [(["-6", "-z"], True), (["-I", "lo", "-z"], True), (["-z", "-6"], False),
                                           (["-z"], False), (["-4"], True)])
def test_usage_line_names_the_ipv6_options_once_one_was_read(prog, args, six):
    """A usage error's line is ucspi-tcp-ipv6's once -4, -6 or -I was read before the problem, else 0.88's."""
    from prefork import tcpclient, tcpserver_cli

    usage = {"tcpserver": (tcpserver_cli.USAGE, tcpserver_cli.USAGE6),
             "tcpclient": (tcpclient.USAGE, tcpclient.USAGE6)}[prog][six]
    result = run([ours(prog), *args])
    assert result.returncode == 100
    assert result.stderr.decode().splitlines()[-1] == f"{prog}: usage: {usage}"
