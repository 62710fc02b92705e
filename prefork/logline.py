"""tcpserver's ``-v`` log lines, byte-compatible with ucspi-tcp 0.88.

Log analysers parse these lines, so the sanitising rules are djb's exactly:
a field is a C string there, so it ends at its first NUL; bytes outside
33..126, ``%`` and ``:`` become ``?``; a field keeps its first 100 bytes and
gets ``...`` when it was 100 bytes or longer.  Whatever a field holds, its
output is at most 103 bytes, all in 33..126, none of them ``%`` or ``:``.
The IP fields are the exception: the server's own text, shown as they are
(an IPv6 address has colons; docs/CONTRACTS.md, IPv6).
"""

from __future__ import annotations

_SAFE = bytes(range(256)).translate(
    bytes(c if 33 <= c <= 126 and c not in b"%:" else ord("?") for c in range(256))
)


def safe(field: bytes | str | None) -> bytes:
    """One sanitised field of an ``ok``/``deny`` line (None prints as empty)."""
    if field is None:
        return b""
    if isinstance(field, str):
        text = field  # mypy takes field for bytes | str again in the except clause
        try:
            field = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # a lone surrogate that no byte decoded to: shown as "?"
            field = text.encode("utf-8", "replace")
    end = field.find(b"\0")
    if end >= 0:
        field = field[:end]
    if len(field) >= 100:
        return field[:100].translate(_SAFE) + b"..."
    return field.translate(_SAFE)


def decision_line(
    prog: bytes,
    word: bytes,
    ident: int,
    localhost: bytes | str | None,
    localip: str,
    localport: int,
    remotehost: bytes | str | None,
    remoteip: str,
    remoteinfo: bytes | str | None,
    remoteport: int,
) -> bytes:
    """``PROG: ok|deny ID LOCALHOST:LOCALIP:LOCALPORT REMOTEHOST:REMOTEIP:REMOTEINFO:REMOTEPORT``."""
    return b"%s: %s %s %s" % (
        prog,
        safe(word),
        safe(str(ident)),
        decision_tail(localhost, localip, localport, remotehost, remoteip, remoteinfo, remoteport),
    )


def decision_tail(
    localhost: bytes | str | None,
    localip: str,
    localport: int,
    remotehost: bytes | str | None,
    remoteip: str,
    remoteinfo: bytes | str | None,
    remoteport: int,
) -> bytes:
    """The part of a decision line after its id: ``LOCAL REMOTE\\n`` (no NUL, one newline, at the end).

    The addresses are the server's own text (addr.format_ip6's, or a checked PROXY header's), so they are not
    sanitised: an IPv6 address keeps its colons, as ucspi-tcp-ipv6 writes it (``0:::1:PORT``).
    """
    return b"%s:%s:%s %s:%s:%s:%s\n" % (
        safe(localhost),
        localip.encode("ascii", "replace"),
        safe(str(localport)),
        safe(remotehost),
        remoteip.encode("ascii", "replace"),
        safe(remoteinfo),
        safe(str(remoteport)),
    )
