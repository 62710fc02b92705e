"""tcprules' language, its cdb file, and the rules lookup of tcpserver/tcprulescheck.

One home for the rules logic: ``parse_line``/``compile_rules`` turn the text
into (key, value) records exactly as ucspi-tcp 0.88's tcprules does (plus
CIDR blocks, a prefork extension expanded into keys 0.88 reads, and IPv6
addresses as ucspi-tcp-ipv6 reads them),
``CdbMaker``/``cdb_bytes`` write them byte-identically to djb's cdb_make, and
``RulesDB``/``RulesFile`` answer the per-connection question "which rule, allow
or deny, which variables" in the order of djb's rules.c.

Every byte is data.  ``parse_line`` takes any line and returns its records,
None (a skipped line) or raises RulesSyntaxError; ``Decision.from_record``
takes any value.  Reading a rules cdb takes any file: the answer is a
decision or OSError (EPROTO, "protocol error", for a malformed file), never
another exception, a hang, or memory beyond the file's own size.  What is
checked:

- the file is a regular file of 2048 bytes (the header) up to 4 GiB (the most
  a cdb can address), read whole once;
- every header entry with a nonzero slot count names a hash table lying
  wholly inside the file.  This is checked when the file is loaded, so a
  truncated file or an absurd slot count is refused for every client (0.88
  fails only when a probe reaches the bad table, and answers other clients);
- a probe visits at most its table's slot count of slots, so a table with no
  empty slot (a cycle) ends after one pass;
- a record is checked when a probe reaches it, by the reads djb's cdb.c
  makes: its 8-byte lengths must be inside the file, its key is compared in
  32-byte pieces that must be inside the file until one differs, and the
  value of the matching record must be inside the file.

What cannot be checked: a cdb has no checksum and no signature.  A
well-formed file whose hash tables are scrambled within the file (slots
moved or emptied, hashes changed) passes every check and simply misses keys:
the lookup falls through to a later candidate and at last to the default,
allow, exactly as 0.88's tcpserver and tcprulescheck do with the same file.
So a rules cdb is trusted as a whole: whoever can write it, or the directory
holding it, decides who gets in; keep both owned by root and writable by
nobody else.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import struct
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import cdblib

HEADER_SIZE = 2048
_PAIR = struct.Struct("<II")
_MAX_POS = 0xFFFFFFFF
_OUT_CHUNK = 8192  # djb's BUFFER_OUTSIZE: cdb_make flushes records in chunks of exactly this size


# -- the text language -------------------------------------------------------


class RulesSyntaxError(ValueError):
    """A line tcprules refuses; ``line`` is the raw line after the trailing-blank trim."""

    def __init__(self, line: bytes) -> None:
        super().__init__(line)
        self.line = line


def _number(text: bytes, line: bytes) -> int:
    """djb's getnum: digits up to the first NUL (a C string), empty = 0, wrapping like scan_ulong."""
    text = text.split(b"\0", 1)[0]
    if text and not (text.isascii() and text.isdigit()):
        raise RulesSyntaxError(line)
    number = 0
    for start in range(0, len(text), 18):  # piecewise: int() refuses strings of over 4300 digits
        piece = text[start : start + 18]
        number = (number * 10 ** len(piece) + int(piece)) % (1 << 64)
    return number


_DOTTED = frozenset(b"0123456789.-")


def cidr_keys(network: int, length: int) -> list[bytes]:
    """The fewest 0.88 keys matching exactly the block NETWORK/LENGTH (host bits zero).

    0.88's lookup knows only whole octets (the address, its prefixes ending in
    a dot, the empty key: docs/CONTRACTS.md, "Rules lookup order"), so the
    length is rounded up to the next multiple of 8 and every key of that
    size inside the block is listed: at most 128 keys (/1, /9, /17, /25).
    """
    octets = -(-length // 8)
    step = 1 << (32 - 8 * octets)
    keys = []
    for n in range(1 << (8 * octets - length)):
        parts = (network + n * step).to_bytes(4, "big")[:octets]
        key = b".".join(b"%d" % part for part in parts)
        keys.append(key if octets == 4 else key + b"." if octets else b"")
    return keys


def _cidr(address: bytes, line: bytes) -> list[bytes] | None:
    """The keys of ``A.B.C.D/N`` (docs/CONTRACTS.md, "tcprules input"); None for any other address.

    The form is claimed by digits, dots and dashes before a ``/`` (keys 0.88
    would store but no IPv4 client can match); anything there but a plain
    block with its host bits zero is a parse error.  ``INFO@`` is refused:
    0.88 matches ``INFO@IP`` only whole, so a block would need an exact key
    per address.  Other addresses with ``/`` (``=`` names, letters) stay literal.
    """
    if b"=" in address:
        return None
    _, at, ip = address.rpartition(b"@")
    base, slash, length = ip.partition(b"/")
    if not slash or not base or not set(base) <= _DOTTED:
        return None
    octets = base.split(b".")
    if at or len(octets) != 4 or not (length.isdigit() and len(length) <= 2 and int(length) <= 32):
        raise RulesSyntaxError(line)
    if not all(o == b"0" or (o.isdigit() and len(o) <= 3 and int(o) <= 255 and o[:1] != b"0") for o in octets):
        raise RulesSyntaxError(line)  # (a leading zero reads as octal to inet_aton: refused, not guessed)
    network = int.from_bytes(bytes(int(o) for o in octets), "big")
    if network & ((1 << (32 - int(length))) - 1):
        raise RulesSyntaxError(line)
    return cidr_keys(network, int(length))


def _keys(address: bytes, line: bytes) -> list[bytes]:
    """The keys one address stands for: itself, its CIDR block's keys, or the expansion of its first ``-`` range."""
    cidr = _cidr(address, line)
    if cidr is not None:
        return cidr
    if b"=" in address or b"@" in address or b"-" not in address:
        return [address]
    dash = address.index(b"-")
    left = address.rfind(b".", 0, dash) + 1
    right = address.find(b".", dash + 1)
    if right < 0:
        right = len(address)
    low = _number(address[left:dash], line)
    high = min(_number(address[dash + 1 : right], line), 255)
    head, tail = address[:left], address[right:]
    return [head + str(n).encode() + tail for n in range(low, high + 1)]


def _value(instruction: bytes, line: bytes) -> bytes:
    """``allow``/``deny`` plus ``,NAME=<q>VALUE<q>`` items as the cdb value (``D\\0``, ``+NAME=VALUE\\0``)."""
    if instruction.startswith(b"allow"):
        rest, value = instruction[5:], bytearray()
    elif instruction.startswith(b"deny"):
        rest, value = instruction[4:], bytearray(b"D\0")
    else:
        raise RulesSyntaxError(line)
    while rest:
        if rest[:1] != b",":
            raise RulesSyntaxError(line)
        eq = rest.find(b"=")
        if eq < 0 or eq + 1 == len(rest):
            raise RulesSyntaxError(line)
        quote = rest[eq + 1 : eq + 2]
        end = rest.find(quote, eq + 2)
        if end < 0:
            raise RulesSyntaxError(line)
        value += b"+" + rest[1 : eq + 1] + rest[eq + 2 : end] + b"\0"
        rest = rest[end + 1 :]
    return bytes(value)


def parse_line(line: bytes) -> list[tuple[bytes, bytes]] | None:
    """The records of one input line (its ``\\n`` may be included).

    None for lines tcprules skips (``#`` comments, empty lines, lines without
    ``:``); an empty list for a range with low > high.  The address ends at
    the first ``:`` that an instruction follows (``_split``), so it may hold
    colons (IPv6).  Raises
    RulesSyntaxError for anything tcprules rejects.
    """
    if not line or line[:1] in (b"#", b"\n"):
        return None
    line = line.rstrip(b" \t\n")
    colon = _split(line)
    if colon < 0:
        return None
    value = _value(line[colon + 1 :], line)
    return [(key, value) for key in _keys(line[:colon], line)]


def _split(line: bytes) -> int:
    """Where the address ends: the first ``:`` followed by ``allow`` or ``deny``, else the first ``:``.

    IPv6 addresses hold colons, so ucspi-tcp-ipv6's tcprules skips any colon
    not followed by an instruction word (docs/CONTRACTS.md, "tcprules input").
    Where 0.88 accepts a line its first colon is such a colon, so IPv4 files
    read the same.  With no such colon the first one is used and the line
    fails as in 0.88 (ucspi-tcp-ipv6 loops forever there); -1: no colon.
    """
    first = at = line.find(b":")
    while at >= 0:
        if line.startswith((b"allow", b"deny"), at + 1):
            return at
        at = line.find(b":", at + 1)
    return first


def split_lines(data: bytes) -> Iterator[bytes]:
    """Lines as djb's getln yields them: each with its ``\\n``, a final unterminated one too."""
    start = 0
    while start < len(data):
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end + 1
        yield data[start:end]
        start = end


def compile_rules(data: bytes) -> list[tuple[bytes, bytes]]:
    """All records of a rules text, in input order (duplicates kept: the first one wins at lookup)."""
    records: list[tuple[bytes, bytes]] = []
    for line in split_lines(data):
        records.extend(parse_line(line) or ())
    return records


# -- writing the cdb ---------------------------------------------------------


def cdb_hash(key: bytes) -> int:
    """djb's cdb hash: h = 5381; h = (h * 33) ^ byte, modulo 2**32."""
    return cdblib.djb_hash(key) & 0xFFFFFFFF


class _Sink(Protocol):
    """What a :class:`_Writer` writes the cdb to: a :class:`_DjbFile`, or the BytesIO of :func:`cdb_bytes`."""

    def tell(self) -> int: ...

    def write(self, data: bytes, /) -> object: ...

    def seek(self, pos: int, /) -> object: ...


class _Writer(cdblib.Writer):
    """pure-cdb's Writer with djb's empty-slot test in the hash tables.

    pure-cdb takes a slot whose *hash* is 0 as free, so a key hashing to 0
    (e.g. ``=9lg0e3l``) gets overwritten by the next key probing that slot;
    cdb_make tests the record *position*, which is never 0.
    """

    fp: _Sink  # set by cdblib.Writer (pure-cdb has no type hints)

    def finalize(self) -> None:
        index = []
        for bucket in self._unordered:
            slots = 2 * len(bucket)
            table = [(0, 0)] * slots
            for h, pos in bucket:
                where = (h >> 8) % slots
                while table[where][1]:
                    where = (where + 1) % slots
                table[where] = (h, pos)
            index.append((self.fp.tell(), slots))
            for pair in table:
                self.fp.write(_PAIR.pack(*pair))
        self.fp.seek(0)
        for pair in index:
            self.fp.write(_PAIR.pack(*pair))
        self.fp = None  # type: ignore[assignment]  # as pure-cdb's own finalize(): the writer is done with it


def _allwrite(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _DjbFile:
    """The file object _Writer writes to, doing the system calls djb's cdb_make does.

    cdb_make seeks past the header instead of writing it (a pipe fails here
    with ESPIPE), writes records and tables in chunks of exactly 8192 bytes,
    and writes the header last in one piece.  So a tmp file left by an error
    holds exactly what tcprules would have left.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        os.lseek(fd, HEADER_SIZE, os.SEEK_SET)
        self._pos = 0
        self._buf = bytearray()
        self._header: bytearray | None = None

    def tell(self) -> int:
        return self._pos

    def write(self, data: bytes) -> None:
        end = self._pos + len(data)
        if end > _MAX_POS:
            raise OSError(errno.ENOMEM, "cdb larger than 4 GiB")
        if self._header is not None:
            self._header += data
        elif self._pos:  # (at 0 comes pure-cdb's placeholder header, which djb seeks over)
            self._buf += data
            while len(self._buf) >= _OUT_CHUNK:
                _allwrite(self._fd, self._buf[:_OUT_CHUNK])
                del self._buf[:_OUT_CHUNK]
        self._pos = end

    def seek(self, pos: int) -> None:
        _allwrite(self._fd, self._buf)
        self._buf.clear()
        os.lseek(self._fd, pos, os.SEEK_SET)
        self._header = bytearray()
        self._pos = pos

    def close(self) -> None:
        if self._header:
            _allwrite(self._fd, self._header)
            self._header = None


class CdbMaker:
    """Writes a cdb on an open fd the way djb's cdb_make does (add records, then finish)."""

    def __init__(self, fd: int) -> None:
        self._file = _DjbFile(fd)
        self._writer = _Writer(self._file)

    def add(self, key: bytes, value: bytes) -> None:
        self._writer.put(key, value)

    def finish(self) -> None:
        """Write the hash tables and the header (the caller fsyncs, closes and renames)."""
        self._writer.finalize()
        self._file.close()


def cdb_bytes(records: Iterable[tuple[bytes, bytes]]) -> bytes:
    """The whole cdb for these records, as tcprules would write it."""
    out = io.BytesIO()
    writer = _Writer(out)
    for key, value in records:
        writer.put(key, value)
    writer.finalize()
    return out.getvalue()


# -- reading and lookup ------------------------------------------------------


def _proto(what: str) -> OSError:
    return OSError(errno.EPROTO, f"bad cdb: {what}")


def entries(value: bytes) -> list[bytes]:
    """The NUL-terminated entries of a rule value (``D``, ``+NAME=VALUE``); an unterminated tail is ignored."""
    return value.split(b"\0")[:-1]


@dataclass(frozen=True, slots=True)
class Decision:
    """What the rules say about one connection.

    ``key`` is the matching key (None: no rule matched, default allow);
    ``env`` the variables to set, in rule order, split at the first ``=``
    (entries without ``=`` are skipped, as tcpserver does); ``value`` the raw
    record for callers that show it (tcprulescheck).  Entries end at a NUL,
    so no name or value in ``env`` holds one, and no name holds ``=``.
    """

    key: bytes | None
    deny: bool
    env: list[tuple[bytes, bytes]] = field(default_factory=list)
    value: bytes = b""

    @classmethod
    def from_record(cls, key: bytes | None, value: bytes) -> Decision:
        deny = False
        env: list[tuple[bytes, bytes]] = []
        for entry in entries(value):
            if entry[:1] == b"D":
                deny = True
            elif entry[:1] == b"+":
                name, eq, val = entry[1:].partition(b"=")
                if eq:
                    env.append((name, val))
        return cls(key, deny, env, value)


def _bytes(text: str | bytes) -> bytes:
    """TEXT as the C string 0.88 holds: bytes (str via surrogateescape) up to the first NUL."""
    if isinstance(text, bytes):
        data = text
    else:
        try:
            data = os.fsencode(text)
        except UnicodeEncodeError:  # a lone surrogate os.fsencode cannot map back
            data = text.encode("utf-8", "surrogatepass")
    return data.split(b"\0", 1)[0]


def candidates(ip: str | bytes, host: str | bytes | None = None, info: str | bytes | None = None) -> Iterator[bytes]:
    """The keys tried for a connection, in djb's rules.c order; the first one found wins.

    IP's prefixes end at a ``.`` or, for IPv6, a ``:`` (ucspi-tcp-ipv6's
    order); an IPv4 address has no ``:``, so its keys are 0.88's.

    Each of IP, HOST and INFO ends at its first NUL, as a C string does.
    """
    ipb = _bytes(ip)
    hostb = None if host is None else _bytes(host)
    if info is not None:
        infob = _bytes(info)
        yield infob + b"@" + ipb
        if hostb is not None:
            yield infob + b"@=" + hostb
    yield ipb
    if hostb is not None:
        yield b"=" + hostb
    for end in range(len(ipb), 0, -1):
        if ipb[end - 1] in b".:":  # ':' for IPv6 prefixes, as ucspi-tcp-ipv6 (docs/CONTRACTS.md)
            yield ipb[:end]
    if hostb is not None:
        for start, byte in enumerate(hostb):
            if byte == 0x2E:
                yield b"=" + hostb[start:]
        yield b"="
    yield b""


class RulesDB:
    """A rules cdb held in memory (bytes, mmap or any buffer), checked once, probed per lookup.

    The header and the hash tables are bounds-checked up front, so a short,
    truncated or garbage file fails as a whole with EPROTO instead of
    answering for some addresses; records are bounds-checked when probed,
    with the reads of djb's cdb.c (see the module docstring).
    """

    def __init__(self, data: Any) -> None:
        size = len(data)
        if size < HEADER_SIZE:
            raise _proto("shorter than its header")
        if size > _MAX_POS + 1:
            raise _proto("larger than 4 GiB")
        header = [_PAIR.unpack_from(data, 8 * i) for i in range(256)]
        for pos, slots in header:
            if slots and pos + 8 * slots > size:
                raise _proto("hash table beyond the end")
        self._data = data
        self._size = size
        self._header = header

    def _key_matches(self, start: int, key: bytes) -> bool:
        """cdb.c's match(): compare in 32-byte pieces; a piece past the end before a difference is EPROTO."""
        data, klen = self._data, len(key)
        if start + klen <= self._size:
            return data[start : start + klen] == key
        for offset in range(0, klen, 32):
            end = min(offset + 32, klen)
            if start + end > self._size:
                raise _proto("record beyond the end")
            if data[start + offset : start + end] != key[offset:end]:
                return False
        return True  # (not reached: the whole key would have fit)

    def get(self, key: bytes) -> bytes | None:
        """The value of the first record with this key, or None."""
        h = cdb_hash(key)
        tpos, slots = self._header[h & 255]
        if not slots:
            return None
        data, size, klen = self._data, self._size, len(key)
        slot = (h >> 8) % slots
        for _ in range(slots):
            hv, rpos = _PAIR.unpack_from(data, tpos + 8 * slot)
            if not rpos:
                return None
            slot = slot + 1 if slot + 1 < slots else 0
            if hv != h:
                continue
            if rpos + 8 > size:
                raise _proto("record beyond the end")
            kl, dl = _PAIR.unpack_from(data, rpos)
            if kl != klen or not self._key_matches(rpos + 8, key):
                continue
            start = rpos + 8 + kl
            if start + dl > size:
                raise _proto("record beyond the end")
            return bytes(data[start : start + dl])
        return None

    def lookup(self, ip: str | bytes, host: str | bytes | None = None, info: str | bytes | None = None) -> Decision:
        """The decision for a client: IP always, HOST and INFO only if set ("" counts as set)."""
        for key in candidates(ip, host, info):
            value = self.get(key)
            if value is not None:
                return Decision.from_record(key, value)
        return Decision(None, False, [], b"")


_StatKey = tuple[int, int, int, int, int]


def _stat_key(st: os.stat_result) -> _StatKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _read_all(fd: int, size_hint: int) -> bytes:
    """The file's bytes, but never more than one byte over the 4 GiB a cdb can have (a growing file)."""
    chunks, left = [], _MAX_POS + 2
    while left > 0 and (chunk := os.read(fd, min(max(size_hint + 1, 65536), left))):
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _load(path: str | bytes | os.PathLike[Any]) -> tuple[RulesDB, _StatKey]:
    """Open and read a rules cdb as tcpserver does (O_RDONLY|O_NONBLOCK); errors are OSErrors.

    The file is read whole (no mmap: a file truncated in place under a mapping
    would kill the reader with SIGBUS) and read again if it changed meanwhile.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        for _ in range(3):
            before = os.fstat(fd)
            if stat.S_ISDIR(before.st_mode):
                raise OSError(errno.EISDIR, os.strerror(errno.EISDIR), path)
            if not stat.S_ISREG(before.st_mode):
                raise _proto("not a regular file")
            if before.st_size > _MAX_POS + 1:
                raise _proto("larger than 4 GiB")
            os.lseek(fd, 0, os.SEEK_SET)
            data = _read_all(fd, before.st_size)
            after = _stat_key(os.fstat(fd))
            if after == _stat_key(before):
                break
        return RulesDB(data), after
    finally:
        os.close(fd)


def load(path: str | bytes | os.PathLike[Any]) -> RulesDB:
    """Read and check a rules cdb (OSError: ENOENT, EACCES, EISDIR, EPROTO for a bad file, ...)."""
    return _load(path)[0]


# A file changed again within the timestamp granularity of its file system can
# keep its size and times; a load is trusted only once the file's times are
# this much older than the load (git's "racily clean" problem).
_SETTLE_NS = 2_000_000_000


class RulesFile:
    """A rules cdb path that is re-checked on every call and never answers with stale rules.

    The parsed file is cached under its (dev, inode, size, mtime, ctime) and
    re-read when any of them changes (tcprules renames a new file into place,
    so the inode changes; chmod changes ctime); a failed read drops the cache,
    so the error shows on this call and every later one until the file is good.
    """

    def __init__(self, path: str | bytes | os.PathLike[Any], missing_ok: bool = False) -> None:
        self.path = path
        self.missing_ok = missing_ok
        self._db: RulesDB | None = None
        self._key: _StatKey | None = None
        self._settled = False

    def current(self) -> RulesDB | None:
        """The rules now; None only when the file does not exist (ENOENT) and missing_ok."""
        try:
            key = _stat_key(os.stat(self.path))
            if self._db is not None and self._settled and key == self._key:
                return self._db
            self._db = None
            db, key = _load(self.path)
        except FileNotFoundError:
            self._db = None
            if self.missing_ok:
                return None
            raise
        self._settled = time.time_ns() - max(key[3], key[4]) > _SETTLE_NS
        self._db, self._key = db, key
        return db
