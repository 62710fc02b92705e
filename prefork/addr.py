"""Host and port arguments, and the DNS look-ups tcpserver and tcpclient make.

The one home of ucspi-tcp's address rules:

- a host made only of digits, dots and brackets is parsed locally the way
  djb's ``dns_ip4`` does (fields mod 256, brackets ignored, extra fields make
  more addresses, a partial address is dropped): ``127.1`` has no address;
- a host with a colon is an IPv6 literal (``::1``, ``::``, ``[::1]``), parsed
  locally with ``inet_pton`` and written back in inet_ntop's compact form; one
  that does not parse is ``no IP address`` (a colon is in no host name, so no
  resolver is asked).  An IPv4-mapped literal (``::ffff:1.2.3.4``) is that
  IPv4 address (docs/CONTRACTS.md, IPv6);
- anything else goes to the *system* resolver (``getaddrinfo``, IPv4 only
  unless the command asked for IPv6 with ``-6``).
  Deliberate difference from djb, whose stub resolver asks DNS servers only:
  ``/etc/hosts`` and the rest of nsswitch ARE consulted, and the resolver's
  own search/timeout settings apply.  Strings the C library would take as a
  numeric address in a form djb never parses (``0x7f.1``) are refused with
  ``no IP address`` rather than silently connecting somewhere;
- PTR and forward-confirmation look-ups also use the system resolver, run in
  a helper thread so that a caller's deadline holds whatever the resolver
  does; names come back in djb's escaped, lowercased form.  A PTR name is
  whatever the owner of the address (or of /etc/hosts) put there: any byte
  but NUL may come back, UTF-8 or not, and every one of them is escaped, so
  a name is always printable ASCII.

Every function here is thread-safe.
"""

from __future__ import annotations

import errno
import os
import random
import socket

from prefork.djb import errstr

TYPE_CHECKING = False  # the lean tcpserver worker imports this module (see lean.py): no typing at run time
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeVar

    _T = TypeVar("_T")

__all__ = [
    "DNS_TIMEOUT",
    "AddressError",
    "HostError",
    "PortError",
    "client_host",
    "dns_escape",
    "format_ip6",
    "forward_confirms",
    "host_port",
    "ip6_literal",
    "is_ip6",
    "literal_addresses",
    "parse_ip4_literal",
    "parse_port",
    "present",
    "resolve_client_host",
    "resolve_server_host",
    "reverse_name",
    "scan_ip4",
    "server_host",
    "unmapped",
]

# Bound for one PTR or forward look-up when a command has no timeout of its own.
DNS_TIMEOUT = 30.0

# Resolver seams: tests replace these module attributes (looked up at call time).
_getaddrinfo = socket.getaddrinfo
_gethostbyaddr = socket.gethostbyaddr
_getnameinfo = socket.getnameinfo

_LITERAL = frozenset(b"0123456789.[]")
_DIGITS = frozenset(b"0123456789")
_PLAIN = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-_")
_HOSTCHARS = _PLAIN | frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")

# getaddrinfo outcomes meaning "the name exists nowhere / has no A record".
_NO_ADDRESS = {socket.EAI_NONAME}
for _name in ("EAI_NODATA", "EAI_ADDRFAMILY"):
    if hasattr(socket, _name):
        _NO_ADDRESS.add(getattr(socket, _name))
# gethostbyaddr h_errno values meaning "looked up fine, no such name".
_HOST_NOT_FOUND = 1
_NO_DATA = 4


class AddressError(Exception):
    """A host or port argument that cannot be used; ``message`` is djb's text after ``fatal: ``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class HostError(AddressError):
    """``no IP address for X`` or ``temporarily unable to figure out IP address for X: ERR``."""


class PortError(AddressError):
    """``unable to figure out port number for X``."""


# -- literals -------------------------------------------------------------------------------------


def literal_addresses(text: str) -> list[str] | None:
    """Addresses of a digits/dots/brackets host, or None when TEXT is a name for the resolver.

    Each dot-separated field is one byte (mod 256); every complete group of
    four makes an address, so ``127.0.0.1.5`` is 127.0.0.1, ``127.1`` is
    ``[]`` (no address) and ``127.0.0.1.127.0.0.2`` is two addresses, as djb.
    """
    raw = os.fsencode(text)
    if not all(byte in _LITERAL for byte in raw):
        return None
    fields = raw.replace(b"[", b"").replace(b"]", b"").split(b".")
    octets = [int(field) % 256 if field else 0 for field in fields]
    whole = len(octets) - len(octets) % 4
    return [".".join(str(octet) for octet in octets[i : i + 4]) for i in range(0, whole, 4)]


def parse_ip4_literal(text: str) -> str | None:
    """The (first) address of a literal host; None for "no IP address" or a non-literal name."""
    addresses = literal_addresses(text)
    return addresses[0] if addresses else None


_MAPPED = bytes(10) + b"\xff\xff"


def format_ip6(packed: bytes) -> str:
    """An IPv6 address (16 bytes) as ucspi-tcp-ipv6 writes it (docs/CONTRACTS.md, IPv6).

    Lowercase hex groups without leading zeros; the longest run of zero groups, even a single one,
    written ``::`` (of equal runs the first); an IPv4-mapped address as ``::ffff:`` and a dotted quad.
    This is inet_ntop's form except for two cases: a lone zero group (``2001:db8::1:1:1:1:1``, where
    inet_ntop writes ``2001:db8:0:1:1:1:1:1``) and IPv4-compatible addresses (``::102:304``, where
    inet_ntop writes ``::1.2.3.4``).
    """
    if packed[:12] == _MAPPED:
        return "::ffff:" + ".".join(str(b) for b in packed[12:16])
    groups = [packed[i] << 8 | packed[i + 1] for i in range(0, 16, 2)]
    best_at, best_len, run_at = 0, 0, -1
    for i, group in enumerate(groups):
        if group:
            run_at = -1
            continue
        if run_at < 0:
            run_at = i
        if i - run_at + 1 > best_len:
            best_at, best_len = run_at, i - run_at + 1
    words = [f"{g:x}" for g in groups]
    if not best_len:
        return ":".join(words)
    return ":".join(words[:best_at]) + "::" + ":".join(words[best_at + best_len :])


def ip6_literal(text: str) -> str | None:
    """An IPv6 literal host, ``::1`` or ``[::1]``, in ucspi-tcp-ipv6's form (format_ip6); None when TEXT is none.

    Only one pair of brackets around the whole host is taken off; a zone id
    (``fe80::1%eth0``) is not a literal (``-I`` names the interface).
    """
    if text[:1] == "[" and text[-1:] == "]":
        text = text[1:-1]
    if ":" not in text or not text.isascii():
        return None
    try:
        return format_ip6(socket.inet_pton(socket.AF_INET6, text))
    except (OSError, ValueError):
        return None


def is_ip6(ip: str) -> bool:
    """Whether IP (an address as this module or the socket module writes it) is an IPv6 address."""
    return ":" in ip


def unmapped(ip: str) -> str:
    """IP with an IPv4-mapped IPv6 address (``::ffff:1.2.3.4``, as inet_ntop writes it) turned into the
    IPv4 address it maps; any other address unchanged."""
    if ip[:7] == "::ffff:" and "." in ip:
        return ip[7:]
    return ip


def present(ip: str, force6: bool) -> str:
    """How a connection's address is shown (TCPLOCALIP, TCPREMOTEIP, the log lines, the rules key).

    An IPv4 client, on an IPv4 socket or as a mapped address on a dual-stack
    one, is shown as 0.88 shows it, its dotted quad; with ``-6`` (FORCE6) as
    ucspi-tcp-ipv6 ``-6`` shows it, ``::ffff:1.2.3.4``.  IPv6 addresses are
    written as ucspi-tcp-ipv6 writes them (format_ip6; IP is the socket
    module's inet_ntop text).  docs/CONTRACTS.md, IPv6.
    """
    if ":" in ip and ("." in ip or ("::" not in ip and "0" in ip.split(":"))):
        # inet_ntop's text differs from format_ip6's only with a dot (mapped, IPv4-compatible) or a lone zero
        # group and no "::"; every other address (::1, fe80::1, 2001:db8::7) is already written the same
        ip = unmapped(format_ip6(socket.inet_pton(socket.AF_INET6, ip)))
    if force6 and ":" not in ip:
        return "::ffff:" + ip
    return ip


def host_port(ip: str, port: int) -> str:
    """``IP:PORT``, an IPv6 address in brackets (``[::1]:80``)."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def interface_index(name: str | None) -> int:
    """-I NAME as a scope id; 0 for none or an unknown name, which ucspi-tcp-ipv6 ignores as well."""
    if not name:
        return 0
    try:
        return socket.if_nametoindex(name)
    except (OSError, ValueError, UnicodeError):
        return 0


def scan_ip(text: str) -> str | None:
    """tcpclient's ``-i``: an IPv6 literal (``::1``, ``[::1]``, mapped ones as IPv4), else ``scan_ip4``."""
    if ":" in text:
        ip6 = ip6_literal(text)
        return None if ip6 is None else unmapped(ip6)
    return scan_ip4(text)


def scan_ip4(text: str) -> str | None:
    """A dotted quad at the start of TEXT (each field any digits, mod 256; trailing junk ignored).

    This is djb's ``ip4_scan``, used by tcpclient's ``-i``; None if TEXT does
    not start with four dot-separated numbers.
    """
    raw = os.fsencode(text)
    octets: list[int] = []
    pos = 0
    for index in range(4):
        if index:
            if raw[pos : pos + 1] != b".":
                return None
            pos += 1
        start = pos
        while pos < len(raw) and raw[pos] in _DIGITS:
            pos += 1
        if pos == start:
            return None
        octets.append(int(raw[start:pos]) % 256)
    return ".".join(str(octet) for octet in octets)


def server_host(text: str, force6: bool = False) -> str:
    """tcpserver's host argument with its wildcard spelled out: ``""``/``0`` mean 0.0.0.0 (``::`` with ``-6``)."""
    if text in ("", "0"):
        return "::" if force6 else "0.0.0.0"
    return text


def client_host(text: str) -> str:
    """tcpclient's host argument with its default spelled out: ``""``/``0`` mean 127.0.0.1."""
    return "127.0.0.1" if text in ("", "0") else text


# -- forward resolution ---------------------------------------------------------------------------


def _looks_numeric_to_libc(raw: bytes) -> bool:
    try:
        socket.inet_aton(raw.decode("ascii"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return True


def _system_addresses(text: str, family: int = socket.AF_INET) -> list[str]:
    """A (or FAMILY's) records of a name from the system resolver, de-duplicated, in resolver order."""
    raw = os.fsencode(text)
    if _looks_numeric_to_libc(raw):
        raise HostError(f"no IP address for {text}")
    try:
        infos = _getaddrinfo(raw, None, family, socket.SOCK_STREAM)
    except socket.gaierror as e:
        if e.errno in _NO_ADDRESS:
            raise HostError(f"no IP address for {text}") from None
        raise HostError(f"temporarily unable to figure out IP address for {text}: {_gai_errstr(e)}") from None
    except (UnicodeError, ValueError):
        raise HostError(f"no IP address for {text}") from None
    except OSError as e:
        raise HostError(f"temporarily unable to figure out IP address for {text}: {errstr(e)}") from None
    addresses: list[str] = []
    for found, _type, _proto, _canon, sockaddr in infos:
        if found == family and sockaddr[0] not in addresses:
            addresses.append(unmapped(str(sockaddr[0])))  # (host, port[, flow, scope]): the host
    if not addresses:
        raise HostError(f"no IP address for {text}")
    return addresses


def _gai_errstr(e: socket.gaierror) -> str:
    if e.errno == socket.EAI_MEMORY:
        return errstr(errno.ENOMEM)
    if e.errno in (socket.EAI_AGAIN, socket.EAI_FAIL):
        return errstr(errno.EAGAIN)
    return "unknown error"


def _names(text: str, family6: bool) -> list[str]:
    """A name's addresses, shuffled; with FAMILY6 (``-6``) its AAAA records first, then its A records."""
    if not family6:
        addresses = _system_addresses(text)
        random.shuffle(addresses)
        return addresses
    found: list[str] = []
    failure: HostError | None = None
    for family in (socket.AF_INET6, socket.AF_INET):
        try:
            some = _system_addresses(text, family)
        except HostError as e:
            failure = failure or e
            continue
        random.shuffle(some)
        found += [ip for ip in some if ip not in found]
    if not found:
        assert failure is not None
        raise failure
    return found


def _resolve(text: str, family6: bool = False, only4: bool = False) -> list[str]:
    if ":" in text:
        ip6 = ip6_literal(text)
        if ip6 is None or (only4 and ":" in unmapped(ip6)):
            raise HostError(f"no IP address for {text}")
        return [unmapped(ip6)]
    literal = literal_addresses(text)
    if literal is None:
        return _names(text, family6 and not only4)
    if not literal:
        raise HostError(f"no IP address for {text}")
    return literal


def resolve_server_host(text: str, force6: bool = False) -> str:
    """tcpserver's listening address for its host argument; raises HostError.

    ``0``/empty is 0.0.0.0 as in 0.88 (``::``, dual-stack, with ``-6``); an
    IPv6 literal, ``::`` and ``[::1]`` included, is itself; a name is its
    first A record (with ``-6``: its first AAAA record, else A).
    """
    if text in ("", "0"):
        return server_host(text, force6)
    return _resolve(text, force6)[0]


def resolve_client_host(text: str, force6: bool = False, only4: bool = False) -> list[str]:
    """tcpclient's addresses to try, in order (several records shuffled); raises HostError.

    ONLY4 (``-4``): an IPv6 literal has no address; FORCE6 (``-6``): names' AAAA records come first.
    """
    return _resolve(client_host(text), force6, only4)


def parse_port(text: str) -> int:
    """A port argument: all digits (even none) is a number mod 65536, else a tcp service name."""
    raw = os.fsencode(text)
    if all(byte in _DIGITS for byte in raw):
        return int(raw or b"0") % 65536
    try:
        return socket.getservbyname(text, "tcp")
    except (OSError, UnicodeError, ValueError):
        raise PortError(f"unable to figure out port number for {text}") from None


# -- names ----------------------------------------------------------------------------------------


def _escape_labels(labels: list[bytes]) -> str:
    """djb's ``dns_domain_todot``: lowercase, unsafe bytes as ``\\ooo``, the root name as ``.``."""
    if not labels or labels == [b""]:
        return "."
    out: list[str] = []
    for label in labels:
        out.append("".join(chr(b) if b in _PLAIN else f"\\{b:03o}" for b in label.lower()))
    return ".".join(out)


def dns_escape(name: str | bytes) -> str:
    """A dotted host name the way djb's tools print it (``Bad%Host`` → ``bad\\045host``).

    Dots separate labels and stay; one trailing dot (absolute form) is
    dropped; the empty name and ``.`` are the root, printed ``.``.
    """
    raw = os.fsencode(name) if isinstance(name, str) else bytes(name)
    if raw.endswith(b".") and raw != b".":
        raw = raw[:-1]
    if raw in (b"", b"."):
        return "."
    return _escape_labels(raw.split(b"."))


def _labels_from_presentation(name: str | bytes) -> list[bytes]:
    """Labels of a name in the C resolver's presentation form (``\\.`` and ``\\DDD`` decimal escapes)."""
    raw = os.fsencode(name) if isinstance(name, str) else bytes(name)
    labels: list[bytes] = []
    label = bytearray()
    i = 0
    while i < len(raw):
        byte = raw[i]
        if byte == 0x5C and i + 1 < len(raw):
            digits = raw[i + 1 : i + 4]
            if len(digits) == 3 and all(d in _DIGITS for d in digits):
                label.append(int(digits) % 256)
                i += 4
            else:
                label.append(raw[i + 1])
                i += 2
            continue
        if byte == 0x2E:
            labels.append(bytes(label))
            label = bytearray()
        else:
            label.append(byte)
        i += 1
    labels.append(bytes(label))
    if len(labels) > 1 and labels[-1] == b"":
        labels.pop()
    return labels


def _to_presentation(escaped: str) -> bytes:
    """A djb-escaped name (``\\ooo`` octal) in the C resolver's presentation form (``\\DDD`` decimal)."""
    raw = os.fsencode(escaped)
    out = bytearray()
    i = 0
    while i < len(raw):
        byte = raw[i]
        if byte == 0x5C and len(raw[i + 1 : i + 4]) == 3 and all(d in b"01234567" for d in raw[i + 1 : i + 4]):
            byte = int(raw[i + 1 : i + 4], 8) % 256
            i += 4
            out += b"%c" % byte if byte in _HOSTCHARS else b"\\%03d" % byte
            continue
        out += b"%c" % byte if byte in _HOSTCHARS or byte == 0x2E else b"\\%03d" % byte
        i += 1
    return bytes(out)


def _with_deadline(call: Callable[[], _T], timeout: float) -> _T:
    """CALL's result, run in a helper thread; TimeoutError if it takes longer than TIMEOUT.

    The C resolver cannot be interrupted; a call that overruns is left to
    finish in its daemon thread and its answer is dropped.
    """
    import threading

    answers: list[_T] = []  # CALL's result, or
    errors: list[Exception] = []  # what it raised (one of the two gets one entry)
    done = threading.Event()

    def run() -> None:
        try:
            answers.append(call())
        except Exception as e:  # handed over to the waiting thread
            errors.append(e)
        finally:
            done.set()

    threading.Thread(target=run, name="prefork-resolver", daemon=True).start()
    if not done.wait(max(timeout, 0.0)):
        raise TimeoutError
    if errors:
        raise errors[0]
    if not answers:
        raise OSError(errno.EINTR, "resolver thread ended without an answer")
    return answers[0]


def reverse_name(ip: str, timeout: float = DNS_TIMEOUT) -> str | None:
    """The PTR name of IP, djb-escaped; ``""`` if the look-up worked but found no name, None on failure.

    tcpclient sets TCPLOCALHOST/TCPREMOTEHOST to ``""`` in the first case and
    leaves them unset in the second; tcpserver treats both as unset.
    """

    def lookup() -> str | bytes:
        try:
            return _gethostbyaddr(ip)[0]
        except UnicodeDecodeError:
            # Python decodes the name and its aliases as UTF-8: ask for the name alone, and
            # take its bytes from the error when it is not UTF-8.
            try:
                return _getnameinfo((ip, 0), socket.NI_NAMEREQD | socket.NI_NUMERICSERV)[0]
            except UnicodeDecodeError as e:
                return bytes(e.object)

    try:
        name = _with_deadline(lookup, timeout)
    except socket.herror as e:
        return "" if e.errno in (_HOST_NOT_FOUND, _NO_DATA) else None
    except (OSError, UnicodeError, ValueError):
        return None
    if not name:
        return ""
    return _escape_labels(_labels_from_presentation(name))


def forward_confirms(name: str, ip: str, timeout: float = DNS_TIMEOUT) -> bool:
    """Whether NAME (as reverse_name returned it) has IP among its A records: tcpserver ``-p``.

    A numeric-looking name is parsed as a literal, as djb's ``dns_ip4`` does;
    any look-up failure or timeout means "not confirmed".
    """
    literal = literal_addresses(name)
    if literal is not None:
        return unmapped(ip) in literal
    query = _to_presentation(name)

    ip = unmapped(ip)  # -6 shows an IPv4 client as ::ffff:1.2.3.4: its name's A records confirm it
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET  # an IPv6 client: the name's AAAA records

    def lookup() -> list[str]:
        infos = _getaddrinfo(query, None, family, socket.SOCK_STREAM)
        return [str(info[4][0]) for info in infos if info[0] == family]

    try:
        return ip in _with_deadline(lookup, timeout)
    except (OSError, UnicodeError, ValueError):
        return False
