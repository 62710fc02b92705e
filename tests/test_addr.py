"""Host/port parsing and resolver wrappers (prefork.addr), docs/CONTRACTS.md, tcpserver startup and tcpserver environment.

No DNS query leaves the machine: the resolver seams (``addr._getaddrinfo``,
``addr._gethostbyaddr``) are replaced by fakes that fail the test when asked
something unexpected; the only real look-ups are 127.0.0.1/localhost through
/etc/hosts, and only when /etc/hosts and nsswitch make that local.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from prefork import addr
from prefork.addr import (
    HostError,
    PortError,
    dns_escape,
    forward_confirms,
    literal_addresses,
    parse_ip4_literal,
    parse_port,
    resolve_client_host,
    resolve_server_host,
    reverse_name,
    scan_ip4,
)


def hosts_file_is_local_for_localhost() -> bool:
    """127.0.0.1 <-> localhost answered from /etc/hosts before any DNS server is asked."""
    try:
        hosts = Path("/etc/hosts").read_text().splitlines()
        nsswitch = Path("/etc/nsswitch.conf").read_text().splitlines()
    except OSError:
        return False
    first = next((line.split() for line in hosts if line.split()[:1] == ["127.0.0.1"]), [])
    order = next((line.split()[1:] for line in nsswitch if line.startswith("hosts:")), [])
    return first[1:2] == ["localhost"] and order[:1] == ["files"]


local_hosts = pytest.mark.skipif(
    not hosts_file_is_local_for_localhost(), reason="needs 127.0.0.1 localhost in /etc/hosts"
)


@pytest.fixture
def no_resolver(monkeypatch):
    """Any call to the system resolver fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"resolver called with {args!r}")

    monkeypatch.setattr(addr, "_getaddrinfo", refuse)
    monkeypatch.setattr(addr, "_gethostbyaddr", refuse)


def fake_getaddrinfo(table: dict[bytes, list[str] | BaseException], calls: list | None = None):
    def lookup(host, port, family=0, type=0, proto=0, flags=0):
        if calls is not None:
            calls.append((host, family, type))
        assert family == socket.AF_INET
        answer = table[host]
        if isinstance(answer, BaseException):
            raise answer
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, 0)) for ip in answer]

    return lookup


# -- literals ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("127.0.0.1", ["127.0.0.1"]),
        ("127.0.0.1.5", ["127.0.0.1"]),
        ("127.0.0.257", ["127.0.0.1"]),
        ("[127.0.0.1]", ["127.0.0.1"]),
        ("1[2].0.0.1", ["12.0.0.1"]),
        ("1.2.3.4.", ["1.2.3.4"]),
        ("00300.0.0.1", ["44.0.0.1"]),
        ("...", ["0.0.0.0"]),
        ("127.0.0.1.127.0.0.2", ["127.0.0.1", "127.0.0.2"]),
        ("1.2.3.4.5.6.7", ["1.2.3.4"]),
        ("127.1", []),
        ("0", []),
        ("", []),
        ("127.0.0.1x", None),
        ("::1", None),
        ("localhost", None),
        ("١٢٧.0.0.1", None),
    ],
)
def test_literal_addresses(text: str, expected: list[str] | None) -> None:
    assert literal_addresses(text) == expected
    assert parse_ip4_literal(text) == (expected[0] if expected else None)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1.2.3.4", "1.2.3.4"),
        ("1.2.3.4junk", "1.2.3.4"),
        ("1.2.3.4.5", "1.2.3.4"),
        ("300.1.1.001", "44.1.1.1"),
        ("1.2.3", None),
        ("1..2.3.4", None),
        (".1.2.3.4", None),
        ("a.1.2.3", None),
        ("1.2.3.", None),
        ("", None),
    ],
)
def test_scan_ip4(text: str, expected: str | None) -> None:
    assert scan_ip4(text) == expected


# -- forward resolution -------------------------------------------------------------------------------


@pytest.mark.usefixtures("no_resolver")
def test_server_host_literals_need_no_resolver() -> None:
    assert resolve_server_host("") == "0.0.0.0"
    assert resolve_server_host("0") == "0.0.0.0"
    assert resolve_server_host("127.0.0.1") == "127.0.0.1"
    assert resolve_server_host("127.0.0.1.127.0.0.2") == "127.0.0.1"
    with pytest.raises(HostError) as info:
        resolve_server_host("127.1")
    assert info.value.message == "no IP address for 127.1"


@pytest.mark.usefixtures("no_resolver")
def test_client_host_literals_need_no_resolver() -> None:
    assert resolve_client_host("") == ["127.0.0.1"]
    assert resolve_client_host("0") == ["127.0.0.1"]
    assert resolve_client_host("[10.1.2.3]") == ["10.1.2.3"]
    assert resolve_client_host("127.0.0.1.127.0.0.2") == ["127.0.0.1", "127.0.0.2"]
    with pytest.raises(HostError) as info:
        resolve_client_host("00")
    assert info.value.message == "no IP address for 00"


@pytest.mark.usefixtures("no_resolver")
@pytest.mark.parametrize("text", ["0x7f.1", "0x7f000001", "0x7f.0.0.1"])
def test_libc_numeric_forms_are_not_addresses(text: str) -> None:
    with pytest.raises(HostError) as info:
        resolve_client_host(text)
    assert info.value.message == f"no IP address for {text}"


def test_names_go_to_the_system_resolver_as_bytes(monkeypatch) -> None:
    calls: list = []
    table = {b"www.example": ["192.0.2.1"], os.fsencode("b\udcffd.example"): ["192.0.2.9"]}
    monkeypatch.setattr(addr, "_getaddrinfo", fake_getaddrinfo(table, calls))
    assert resolve_server_host("www.example") == "192.0.2.1"
    assert resolve_client_host("b\udcffd.example") == ["192.0.2.9"]
    assert calls == [
        (b"www.example", socket.AF_INET, socket.SOCK_STREAM),
        (b"b\xffd.example", socket.AF_INET, socket.SOCK_STREAM),
    ]


def test_several_records_are_deduplicated_and_shuffled(monkeypatch) -> None:
    records = ["192.0.2.1", "192.0.2.2", "192.0.2.1", "192.0.2.3", "192.0.2.4"]
    monkeypatch.setattr(addr, "_getaddrinfo", fake_getaddrinfo({b"multi.example": records}))
    monkeypatch.setattr(addr.random, "shuffle", lambda items: items.reverse())
    assert resolve_client_host("multi.example") == ["192.0.2.4", "192.0.2.3", "192.0.2.2", "192.0.2.1"]
    assert resolve_server_host("multi.example") == "192.0.2.4"


@pytest.mark.parametrize(
    "failure, message",
    [
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "no IP address for h.example"),
        (socket.gaierror(socket.EAI_NODATA, "No address associated"), "no IP address for h.example"),
        (socket.gaierror(socket.EAI_ADDRFAMILY, "Address family"), "no IP address for h.example"),
        (
            socket.gaierror(socket.EAI_AGAIN, "Temporary failure"),
            "temporarily unable to figure out IP address for h.example: temporary failure",
        ),
        (
            socket.gaierror(socket.EAI_FAIL, "Non-recoverable failure"),
            "temporarily unable to figure out IP address for h.example: temporary failure",
        ),
        (
            OSError(errno.ECONNREFUSED, "refused"),
            "temporarily unable to figure out IP address for h.example: connection refused",
        ),
    ],
)
def test_resolver_failures(monkeypatch, failure: BaseException, message: str) -> None:
    monkeypatch.setattr(addr, "_getaddrinfo", fake_getaddrinfo({b"h.example": failure}))
    for resolve in (resolve_server_host, resolve_client_host):
        with pytest.raises(HostError) as info:
            resolve("h.example")
        assert info.value.message == message


def test_empty_answer_is_no_address(monkeypatch) -> None:
    monkeypatch.setattr(addr, "_getaddrinfo", fake_getaddrinfo({b"empty.example": []}))
    with pytest.raises(HostError, match="^no IP address for empty.example$"):
        resolve_client_host("empty.example")


@local_hosts
def test_localhost_from_etc_hosts() -> None:
    assert resolve_client_host("localhost") == ["127.0.0.1"]


# -- ports ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("0", 0),
        ("", 0),
        ("25", 25),
        ("0025", 25),
        ("65535", 65535),
        ("65536", 0),
        ("70000", 4464),
        ("9" * 30, int("9" * 30) % 65536),
    ],
)
def test_numeric_ports(text: str, expected: int) -> None:
    assert parse_port(text) == expected


def test_service_names() -> None:
    try:
        ssh = socket.getservbyname("ssh", "tcp")
    except OSError:
        pytest.skip("no ssh in /etc/services")
    assert ssh == 22
    assert parse_port("ssh") == 22


@pytest.mark.parametrize("text", ["nosuchservice-prefork", "12x", "+5", "１２", "s\udcffh", " 25"])
def test_bad_ports(text: str) -> None:
    with pytest.raises(PortError) as info:
        parse_port(text)
    assert info.value.message == f"unable to figure out port number for {text}"


# -- names ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    [
        ("Mail.Example.COM", "mail.example.com"),
        ("bad%host:name.example", "bad\\045host\\072name.example"),
        ("a_b-c.0-9", "a_b-c.0-9"),
        ("sp ace\\.x", "sp\\040ace\\134.x"),
        (b"\xff\x00.x", "\\377\\000.x"),
        ("caf\udce9.example", "caf\\351.example"),
        ("host.example.", "host.example"),
        ("", "."),
        (".", "."),
        (b"", "."),
    ],
)
def test_dns_escape(name: str | bytes, expected: str) -> None:
    assert dns_escape(name) == expected


@local_hosts
def test_reverse_name_from_etc_hosts() -> None:
    assert reverse_name("127.0.0.1", 5) == "localhost"


def fake_gethostbyaddr(answer):
    def lookup(ip):
        if isinstance(answer, BaseException):
            raise answer
        return answer, [], [ip]

    return lookup


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("Host.Example.ORG", "host.example.org"),
        ("bad%host:name.example", "bad\\045host\\072name.example"),
        ("a\\.b.example", "a\\056b.example"),  # a dot inside a label, in the C resolver's escaping
        ("\\037x\\255.example", "\\045x\\377.example"),  # its \\DDD is decimal, djb's \\ooo octal
        ("x.example.", "x.example"),
        (socket.herror(1, "Unknown host"), ""),
        (socket.herror(4, "No address associated with name"), ""),
        (socket.herror(2, "Host name lookup failure"), None),
        (socket.herror(3, "Unknown server error"), None),
        (socket.gaierror(socket.EAI_AGAIN, "again"), None),
        (OSError(errno.EMFILE, "too many"), None),
    ],
)
def test_reverse_name_outcomes(monkeypatch, answer, expected) -> None:
    monkeypatch.setattr(addr, "_gethostbyaddr", fake_gethostbyaddr(answer))
    assert reverse_name("192.0.2.7", 5) == expected


def test_reverse_name_timeout_is_bounded(monkeypatch) -> None:
    release = threading.Event()

    def slow(ip):
        release.wait(10)
        return "late.example", [], [ip]

    monkeypatch.setattr(addr, "_gethostbyaddr", slow)
    started = time.monotonic()
    try:
        assert reverse_name("192.0.2.7", 0.3) is None
        elapsed = time.monotonic() - started
    finally:
        release.set()
    assert 0.25 <= elapsed < 3


def test_reverse_name_concurrent_callers(monkeypatch) -> None:
    def per_ip(ip):
        time.sleep(0.02)
        return f"h{ip.rsplit('.', 1)[1]}.example", [], [ip]

    monkeypatch.setattr(addr, "_gethostbyaddr", per_ip)
    results: dict[str, str | None] = {}

    def worker(n: int) -> None:
        results[f"192.0.2.{n}"] = reverse_name(f"192.0.2.{n}", 5)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(1, 17)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == {f"192.0.2.{n}": f"h{n}.example" for n in range(1, 17)}


def test_forward_confirms(monkeypatch) -> None:
    calls: list = []
    table = {
        b"two.example": ["192.0.2.1", "192.0.2.2"],
        b"bad\\037host.example": ["192.0.2.3"],
        b"gone.example": socket.gaierror(socket.EAI_NONAME, "unknown"),
        b"later.example": socket.gaierror(socket.EAI_AGAIN, "again"),
    }
    monkeypatch.setattr(addr, "_getaddrinfo", fake_getaddrinfo(table, calls))
    assert forward_confirms("two.example", "192.0.2.2", 5)
    assert not forward_confirms("two.example", "192.0.2.9", 5)
    assert forward_confirms("bad\\045host.example", "192.0.2.3", 5)
    assert not forward_confirms("gone.example", "192.0.2.1", 5)
    assert not forward_confirms("later.example", "192.0.2.1", 5)
    assert [call[0] for call in calls] == [
        b"two.example",
        b"two.example",
        b"bad\\037host.example",
        b"gone.example",
        b"later.example",
    ]


@pytest.mark.usefixtures("no_resolver")
def test_forward_confirms_numeric_names_without_resolver() -> None:
    assert forward_confirms("192.0.2.5", "192.0.2.5", 5)
    assert not forward_confirms("192.0.2.5", "192.0.2.6", 5)
    assert not forward_confirms("192.0", "192.0.0.0", 5)


def test_forward_confirms_timeout(monkeypatch) -> None:
    release = threading.Event()

    def slow(*args, **kwargs):
        release.wait(10)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.1", 0))]

    monkeypatch.setattr(addr, "_getaddrinfo", slow)
    started = time.monotonic()
    try:
        assert not forward_confirms("slow.example", "192.0.2.1", 0.3)
    finally:
        release.set()
    assert time.monotonic() - started < 3


# -- IPv6 (docs/CONTRACTS.md, IPv6) -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("::1", "::1"), ("[::1]", "::1"), ("::", "::"), ("::0", "::"), ("0:0:0:0:0:0:0:1", "::1"),
        ("2001:DB8:0::1", "2001:db8::1"), ("::ffff:1.2.3.4", "::ffff:1.2.3.4"),
        ("::g", None), ("1:2:3:4:5:6:7:8:9", None), ("[::1", None), ("::1]", None), ("1::2::3", None),
        (":::", None), ("fe80::1%lo", None), ("[[::1]]", None), ("::1\udcff", None), ("127.0.0.1", None), ("", None),
    ],
)
def test_ip6_literal(text, expected):
    assert addr.ip6_literal(text) == expected


@pytest.mark.parametrize(
    ("ip", "force6", "shown"),
    [
        ("127.0.0.1", False, "127.0.0.1"), ("::ffff:127.0.0.1", False, "127.0.0.1"), ("::1", False, "::1"),
        ("127.0.0.1", True, "::ffff:127.0.0.1"), ("::ffff:127.0.0.1", True, "::ffff:127.0.0.1"), ("::1", True, "::1"),
        ("::ffff:0:1", False, "::ffff:0:1"),  # not a mapped address: no dot
    ],
)
def test_present(ip, force6, shown):
    assert addr.present(ip, force6) == shown


def test_ipv6_hosts_never_reach_the_resolver(monkeypatch):
    monkeypatch.setattr(addr, "_getaddrinfo", fake_getaddrinfo({}))  # any question fails the test
    assert resolve_server_host("::") == "::" and resolve_server_host("[::1]") == "::1"
    assert resolve_server_host("::ffff:127.0.0.1") == "127.0.0.1"  # a mapped literal is its IPv4 address
    assert resolve_server_host("0") == "0.0.0.0" and resolve_server_host("0", force6=True) == "::"
    assert resolve_client_host("[::1]") == ["::1"] and resolve_client_host("0") == ["127.0.0.1"]
    for host in ("::g", "[::1", "1:2:3:4:5:6:7:8:9"):
        with pytest.raises(HostError, match=r"^no IP address for "):
            resolve_server_host(host)
    with pytest.raises(HostError, match=r"^no IP address for ::1$"):
        resolve_client_host("::1", only4=True)


def test_minus_6_looks_up_aaaa_records_first(monkeypatch):
    calls: list = []

    def lookup(host, port, family=0, type=0, proto=0, flags=0):
        calls.append(family)
        if family == socket.AF_INET6:
            return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2001:db8::5", 0, 0, 0))]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.5", 0))]

    monkeypatch.setattr(addr, "_getaddrinfo", lookup)
    assert resolve_client_host("h.example", force6=True) == ["2001:db8::5", "192.0.2.5"]
    assert resolve_server_host("h.example", force6=True) == "2001:db8::5"
    assert calls == [socket.AF_INET6, socket.AF_INET, socket.AF_INET6, socket.AF_INET]
    calls.clear()
    assert resolve_client_host("h.example") == ["192.0.2.5"] and calls == [socket.AF_INET]  # 0.88: A only


def test_paranoid_check_of_an_ipv6_client_asks_for_aaaa(monkeypatch):
    calls: list = []

    def lookup(host, port, family=0, type=0, proto=0, flags=0):
        calls.append((host, family))
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2001:db8::5", 0, 0, 0))]

    monkeypatch.setattr(addr, "_getaddrinfo", lookup)
    assert forward_confirms("h.example", "2001:db8::5", 5)
    assert not forward_confirms("h.example", "2001:db8::6", 5)
    assert calls == [(b"h.example", socket.AF_INET6)] * 2


@pytest.mark.parametrize(
    ("address", "written"),
    [
        ("::", "::"), ("::1", "::1"), ("1::", "1::"), ("fe80::fc:ff:fe00:1", "fe80::fc:ff:fe00:1"),
        ("2001:db8:0:1:1:1:1:1", "2001:db8::1:1:1:1:1"),  # a lone zero group: compressed (inet_ntop does not)
        ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),  # equal runs: the first
        ("2001:0:0:1:0:0:0:1", "2001:0:0:1::1"),  # the longest
        ("::102:304", "::102:304"),  # IPv4-compatible: hex (inet_ntop: ::1.2.3.4)
        ("::ffff:1.2.3.4", "::ffff:1.2.3.4"), ("::ffff:0:102:304", "::ffff:0:102:304"),
        ("1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8"), ("1:2:3:4:5:6:7:0", "1:2:3:4:5:6:7::"),
    ],
)
def test_format_ip6_writes_what_ucspi_tcp_ipv6_writes(address, written):
    """The forms seen from the judge's tcpserver on these addresses (tests/test_tcpserver_ipv6.py checks them live)."""
    assert addr.format_ip6(socket.inet_pton(socket.AF_INET6, address)) == written
    assert addr.ip6_literal(address) == written
    assert addr.present(socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, address)), False) == (
        addr.unmapped(written))


def test_present_fast_path_agrees_with_format_ip6() -> None:
    """present() reformats only what inet_ntop may write otherwise; checked on addresses rich in zero groups."""
    import random

    rnd = random.Random(7)
    for _ in range(20000):
        groups = [rnd.choice([0, 0, 0, 1, 0xFFFF, rnd.randrange(65536)]) for _ in range(8)]
        if rnd.random() < 0.1:
            groups[:6] = [0, 0, 0, 0, 0, rnd.choice([0, 0xFFFF])]
        packed = b"".join(g.to_bytes(2, "big") for g in groups)
        assert addr.present(socket.inet_ntop(socket.AF_INET6, packed), False) == addr.unmapped(addr.format_ip6(packed))
