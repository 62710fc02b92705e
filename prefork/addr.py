"""Host and port arguments, and the DNS look-ups tcpserver and tcpclient make.

The one home of ucspi-tcp's address rules:

- a host made only of digits, dots and brackets is parsed locally the way
  djb's ``dns_ip4`` does (fields mod 256, brackets ignored, extra fields make
  more addresses, a partial address is dropped): ``127.1`` has no address;
- anything else goes to the *system* resolver (``getaddrinfo``, IPv4 only).
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
import threading
from collections.abc import Callable
from typing import TypeVar, cast

from prefork.djb import errstr

__all__ = [
    "DNS_TIMEOUT",
    "AddressError",
    "HostError",
    "PortError",
    "client_host",
    "dns_escape",
    "forward_confirms",
    "literal_addresses",
    "parse_ip4_literal",
    "parse_port",
    "resolve_client_host",
    "resolve_server_host",
    "reverse_name",
    "scan_ip4",
    "server_host",
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


def server_host(text: str) -> str:
    """tcpserver's host argument with its wildcard spelled out: ``""``/``0`` mean 0.0.0.0."""
    return "0.0.0.0" if text in ("", "0") else text


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


def _system_addresses(text: str) -> list[str]:
    """A records of a name from the system resolver, de-duplicated, in resolver order."""
    raw = os.fsencode(text)
    if _looks_numeric_to_libc(raw):
        raise HostError(f"no IP address for {text}")
    try:
        infos = _getaddrinfo(raw, None, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror as e:
        if e.errno in _NO_ADDRESS:
            raise HostError(f"no IP address for {text}") from None
        raise HostError(f"temporarily unable to figure out IP address for {text}: {_gai_errstr(e)}") from None
    except (UnicodeError, ValueError):
        raise HostError(f"no IP address for {text}") from None
    except OSError as e:
        raise HostError(f"temporarily unable to figure out IP address for {text}: {errstr(e)}") from None
    addresses: list[str] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        if family == socket.AF_INET and sockaddr[0] not in addresses:
            addresses.append(cast(str, sockaddr[0]))  # an AF_INET sockaddr is (host, port)
    if not addresses:
        raise HostError(f"no IP address for {text}")
    return addresses


def _gai_errstr(e: socket.gaierror) -> str:
    if e.errno == socket.EAI_MEMORY:
        return errstr(errno.ENOMEM)
    if e.errno in (socket.EAI_AGAIN, socket.EAI_FAIL):
        return errstr(errno.EAGAIN)
    return "unknown error"


def _resolve(text: str) -> list[str]:
    literal = literal_addresses(text)
    if literal is None:
        addresses = _system_addresses(text)
        random.shuffle(addresses)
        return addresses
    if not literal:
        raise HostError(f"no IP address for {text}")
    return literal


def resolve_server_host(text: str) -> str:
    """tcpserver's listening address for its host argument; raises HostError."""
    if text in ("", "0"):
        return "0.0.0.0"
    return _resolve(text)[0]


def resolve_client_host(text: str) -> list[str]:
    """tcpclient's addresses to try, in order (several A records shuffled); raises HostError."""
    return _resolve(client_host(text))


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


_T = TypeVar("_T")


def _with_deadline(call: Callable[[], _T], timeout: float) -> _T:
    """CALL's result, run in a helper thread; TimeoutError if it takes longer than TIMEOUT.

    The C resolver cannot be interrupted; a call that overruns is left to
    finish in its daemon thread and its answer is dropped.
    """
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
        return ip in literal
    query = _to_presentation(name)

    def lookup() -> list[str]:
        infos = _getaddrinfo(query, None, socket.AF_INET, socket.SOCK_STREAM)
        return [info[4][0] for info in infos if info[0] == socket.AF_INET]

    try:
        return ip in _with_deadline(lookup, timeout)
    except (OSError, UnicodeError, ValueError):
        return False
