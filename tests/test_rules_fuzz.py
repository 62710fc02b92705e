"""Fuzzing the rules code: property tests of the parser, the cdb reader and the value decoder, and
seeded differential runs of tcprules and tcprulescheck against Debian's ucspi-tcp 0.88.

The runs are bounded: PREFORK_FUZZ_EXAMPLES (default 300) rules files for tcprules and as many
damaged cdbs for tcprulescheck, spread over test items of at most 100 so ``-n 2`` shares them, and
as many examples (at least 300) for each property test;
PREFORK_FUZZ_SEED (default 0) picks another set.  prefork's commands run from their entry points
in one driver process per test (a Python start-up per run would cost ten times more than the run);
every 50th case goes through the installed console scripts instead.
"""

from __future__ import annotations

import errno
import os
import pickle
import random
import select
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ours, real
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefork import tcprulescheck
from prefork.rules import (
    Decision,
    RulesDB,
    RulesSyntaxError,
    candidates,
    cdb_bytes,
    cdb_hash,
    compile_rules,
    entries,
    parse_line,
    split_lines,
)

EXAMPLES = int(os.environ.get("PREFORK_FUZZ_EXAMPLES", "300"))
SEED = int(os.environ.get("PREFORK_FUZZ_SEED", "0"))
CHUNKS = max(4, -(-EXAMPLES // 100))  # test items of at most 100 cases: each well inside pytest's timeout
SCRIPT_EVERY = 50
PROPERTY = settings(
    max_examples=max(300, EXAMPLES), deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
OLD_CDB = b"old cdb, must survive every failed run\n"


# -- running the commands ----------------------------------------------------


_DRIVER = r"""
import os, pickle, struct, traceback
from prefork import tcprules, tcprulescheck

mains = {"tcprules": tcprules.main, "tcprulescheck": tcprulescheck.main}
requests, replies = os.dup(0), os.dup(1)
start = os.getcwd()


def read_exact(n):
    data = b""
    while len(data) < n:
        chunk = os.read(requests, n - len(data))
        if not chunk:
            raise SystemExit(0)
        data += chunk
    return data


while True:
    name, argv, cwd, stdin, env = pickle.loads(read_exact(struct.unpack("<I", read_exact(4))[0]))
    files = [os.memfd_create(f"fd{n}") for n in range(3)]
    os.write(files[0], stdin)
    os.lseek(files[0], 0, os.SEEK_SET)
    for n, fd in enumerate(files):
        os.dup2(fd, n)
    before = set(os.listdir("/proc/self/fd"))
    os.chdir(cwd)
    os.environb.clear()
    os.environb.update(env)
    try:
        mains[name](argv)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        os.write(2, traceback.format_exc().encode())
        code = 1
    os.chdir(start)
    for fd in set(os.listdir("/proc/self/fd")) - before:  # what a fatal exit left open
        try:
            os.close(int(fd))
        except OSError:
            pass
    out = []
    for fd in files[1:]:
        os.lseek(fd, 0, os.SEEK_SET)
        out.append(b"".join(iter(lambda fd=fd: os.read(fd, 1 << 20), b"")))
    for fd in files:
        os.close(fd)
    reply = pickle.dumps((code, *out))
    os.write(replies, struct.pack("<I", len(reply)) + reply)
"""


class Driver:
    """One Python process running prefork's tcprules/tcprulescheck entry points on request.

    Each request gets fresh descriptors 0, 1, 2, its own directory and environment, as a command
    run would; a Python start-up per run would cost ten times more than the run itself.
    """

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _DRIVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd="/",  # prefork as installed, not a copy the current directory may hold
        )

    def run(
        self, name: str, argv: list[str], cwd: Path, stdin: bytes = b"", env: dict[bytes, bytes] | None = None
    ) -> tuple[int, bytes, bytes]:
        request = pickle.dumps((name, argv, str(cwd), stdin, env or {}))
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(struct.pack("<I", len(request)) + request)
        self.proc.stdin.flush()
        head = self._read(4)
        return pickle.loads(self._read(struct.unpack("<I", head)[0]))

    def _read(self, n: int, timeout: float = 30.0) -> bytes:
        assert self.proc.stdout is not None
        fd, data = self.proc.stdout.fileno(), b""
        while len(data) < n:
            if not select.select([fd], [], [], timeout)[0]:
                self.close()
                raise AssertionError(f"prefork's command did not finish in {timeout} s")
            chunk = os.read(fd, n - len(data))
            if not chunk:
                raise AssertionError(f"the driver process died ({self.proc.wait()})")
            data += chunk
        return data

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()


@pytest.fixture
def driver() -> Iterator[Driver]:
    d = Driver()
    yield d
    d.close()


def _snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.lstat().st_mode, p.read_bytes()) for p in sorted(folder.iterdir())}


def _tcprules(side: str, folder: Path, text: bytes, driver: Driver | None) -> tuple[int, bytes, bytes, dict]:
    """One tcprules run in a fresh FOLDER holding an old r.cdb: exit code, stdout, stderr, files left.

    prefork's runs through DRIVER, or its console script when DRIVER is None."""
    folder.mkdir()
    (folder / "r.cdb").write_bytes(OLD_CDB)
    argv = ["r.cdb", "r.tmp"]
    if side == "prefork" and driver is not None:
        rc, out, err = driver.run("tcprules", argv, folder, text, {b"PATH": b"/usr/bin:/bin"})
    else:
        exe = real("tcprules") if side == "debian" else ours("tcprules")
        proc = subprocess.run(
            [exe, *argv], input=text, cwd=folder, capture_output=True, env={"PATH": "/usr/bin:/bin"}, timeout=60
        )
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    return rc, out, err, _snapshot(folder)


def _client_env(ip: bytes | None, host: bytes | None, info: bytes | None) -> dict[bytes, bytes]:
    env = {b"PATH": b"/usr/bin:/bin"}
    for name, value in ((b"TCPREMOTEIP", ip), (b"TCPREMOTEHOST", host), (b"TCPREMOTEINFO", info)):
        if value is not None:
            env[name] = value
    return env


def _check(side: str, path: Path, env: dict[bytes, bytes], driver: Driver | None) -> tuple[int, bytes, bytes]:
    if side == "prefork" and driver is not None:
        return driver.run("tcprulescheck", [path.name], path.parent, b"", env)
    exe = real("tcprulescheck") if side == "debian" else ours("tcprulescheck")
    proc = subprocess.run([exe, path.name], cwd=path.parent, env=env, capture_output=True, timeout=60)
    return proc.returncode, proc.stdout, proc.stderr


# -- the rules grammar -------------------------------------------------------

_NUMBERS = ["0", "1", "2", "3", "4", "7", "9", "10", "37", "40", "99", "127", "200", "254", "255"]
_ODD_NUMBERS = ["256", "300", "007", "00", "", "4294967296", "18446744073709551617", "x", "1x", " 1", "+1", "1\0x"]
_LABELS = ["a", "b", "c", "www", "mail", "example", "com", "x-y", "Q", "0", "\xff"]
_NAMES = ["X", "A", "PROTO", "TCPREMOTEIP", "TCPLOCALHOST", "RELAYCLIENT", "N_1", "a", "lower"]
_ODD_NAMES = ["", "a b", "X,Y", "\xff", "#", "@", "-", "X:Y", " "]
_QUOTES = ['"', '"', '"', "'", "/", "+", "=", ",", ":", " ", "#", "\xff", "@", "a", "\t"]
_VALUE_CHARS = "abcXYZ019 .,:;=+-_/@#\"'\t\xff\x01\\"


def _number(r: random.Random) -> str:
    return r.choice(_ODD_NUMBERS) if r.random() < 0.12 else r.choice(_NUMBERS)


def _ip_parts(r: random.Random, count: int) -> list[str]:
    return [_number(r) for _ in range(count)]


def _host(r: random.Random) -> str:
    return ".".join(r.choice(_LABELS) for _ in range(r.randint(1, 4)))


def _address(r: random.Random) -> str:
    kind = r.randrange(12)
    if kind <= 1:
        return ".".join(_ip_parts(r, 4))
    if kind == 2:
        return ".".join(_ip_parts(r, r.randint(1, 3))) + "."
    if kind in (3, 4):  # a range in one of the parts
        parts = _ip_parts(r, r.randint(1, 4))
        at = r.randrange(len(parts))
        parts[at] = f"{_number(r)}-{_number(r)}"
        return ".".join(parts) + r.choice(["", "", "."])
    if kind == 5:
        return "=" + r.choice([_host(r), _host(r), "", "." + _host(r)])
    if kind == 6:
        user = r.choice(["joe", "", "a-b", "x.y", "root", "\xff"])
        return user + "@" + r.choice([".".join(_ip_parts(r, 4)), "=" + _host(r), "1.2.3.4-7", "1.2."])
    if kind == 7:
        return r.choice(["", ".", "-", "=", "@", "1-", "-3", "1.2.3.-", "1..2", "#x", " 1.2.3.4", "1.2.3.4 "])
    if kind == 8:
        return "".join(r.choice("0123456789.-=@ \t#\xffab,\0") for _ in range(r.randint(0, 10)))
    return ".".join(_ip_parts(r, r.randint(1, 4))) + r.choice(["", "."])


def _variable(r: random.Random) -> str:
    name = r.choice(_ODD_NAMES) if r.random() < 0.1 else r.choice(_NAMES)
    quote = r.choice(_QUOTES)
    value = "".join(r.choice(_VALUE_CHARS.replace(quote, "")) for _ in range(r.randint(0, 8)))
    return f",{name}={quote}{value}{quote}"


def _bad_tail(r: random.Random) -> str:
    return r.choice([",X", ",X=", ',X="abc', 'X="1"', ",", ',X="1"Y', ",X=''", ",=", ",,X='1'", " ", "\r"])


def _instruction(r: random.Random, bad: bool) -> str:
    if bad and r.random() < 0.5:
        return r.choice(["allowed", "denyall", "permit", "", "Allow", "DENY", " allow", "allow\r", "deny\0"])
    word = "deny" if r.random() < 0.35 else "allow"
    tail = "".join(_variable(r) for _ in range(r.choice([0, 0, 1, 1, 2, 3])))
    if bad:
        tail += _bad_tail(r)
    return word + tail


def _line(r: random.Random, bad_rate: float) -> str:
    kind = r.random()
    if kind < 0.06:
        return "#" + r.choice(["", " comment", "1.2.3.4:deny", "#"])
    if kind < 0.10:
        return r.choice(["", " ", "\t", " \t "])
    if kind < 0.13:
        return r.choice(["no colon here", "1.2.3.4 allow", "=host", "\xff\xfe"])
    line = _address(r) + ":" + _instruction(r, r.random() < bad_rate)
    if r.random() < 0.1:
        line += r.choice([" ", "\t", " \t", "  "])
    return line


def rules_text(seed: int, bad_rate: float = 0.05) -> bytes:
    """A random rules file: some lines of every form, now and then a malformed one."""
    r = random.Random(seed)
    lines = [_line(r, bad_rate) for _ in range(r.choice([0, 1, 2, 3, 4, 5, 6, 8, 10, 14]))]
    text = "\n".join(lines) + ("\n" if lines and r.random() < 0.9 else "")
    return text.encode("latin-1")


def _clients(r: random.Random, records: list[tuple[bytes, bytes]], count: int) -> list[dict[bytes, bytes]]:
    """COUNT clients, most of them aimed at a key of RECORDS (so that rules are found, or just missed)."""
    out = []
    keys = [k for k, _ in records if b"\0" not in k]
    for _ in range(count):
        ip: bytes | None = b"%d.%d.%d.%d" % tuple(r.choice([1, 2, 3, 4, 7, 10, 127, 255]) for _ in range(4))
        host: bytes | None = r.choice([None, None, b"", b"a.b.c", b"www.example.com", b"x"])
        info: bytes | None = r.choice([None, None, b"", b"joe", b"root"])
        if keys and r.random() < 0.8:
            key = r.choice(keys)
            user, at, rest = key.partition(b"@")
            if not at:
                rest = key
            elif r.random() < 0.8:
                info = user
            if rest.startswith(b"="):
                host = rest[1:] if r.random() < 0.7 else b"q" + rest[1:]
            elif rest.count(b".") == 3 and not rest.endswith(b"."):
                ip = rest
            else:
                fill = [b"9"] * (4 - rest.count(b"."))
                ip = rest + b".".join(fill) if rest.endswith(b".") or not rest else rest
        if r.random() < 0.05:
            ip = None
        out.append(_client_env(ip, host, info))
    return out


# -- 1. property tests -------------------------------------------------------

_LINE_TOKENS = [b"1", b"2", b"255", b"300", b".", b"-", b":", b"allow", b"deny", b",", b"=", b'"', b"'", b"/"]
_LINE_TOKENS += [b"X", b" ", b"\t", b"#", b"@", b"\r", b"\0", b"\xff", b"\n"]
lines_st = st.one_of(
    st.binary(max_size=60),
    st.lists(st.sampled_from(_LINE_TOKENS), max_size=20).map(b"".join),
    st.integers(0, 10**6).map(lambda seed: rules_text(seed).split(b"\n")[0]),
)


def _is_value(value: bytes) -> bool:
    """tcprules' value forms: optional ``D\\0``, then ``+NAME=VALUE\\0`` items (NAME holds no ``=``)."""
    items = entries(value)
    if b"\0".join(items) + (b"\0" if items else b"") != value:
        return False
    if items[:1] == [b"D"]:
        items = items[1:]
    return all(item[:1] == b"+" and b"=" in item for item in items)


@PROPERTY
@given(lines_st)
def test_parse_line_is_total(text: bytes) -> None:
    for line in split_lines(text):  # lines as tcprules reads them: each with its \n, the last maybe without
        try:
            records = parse_line(line)
        except RulesSyntaxError as e:
            assert isinstance(e.line, bytes) and e.line == line.rstrip(b" \t\n")
            continue
        if records is None:
            continue
        assert isinstance(records, list) and len(records) <= 256
        values = {value for _, value in records}
        assert len(values) <= 1 and all(_is_value(v) for v in values)
        for key, _ in records:
            assert isinstance(key, bytes) and b"\n" not in key
            assert b":allow" not in key and b":deny" not in key  # the address ends at the first of them


@PROPERTY
@given(st.integers(0, 2**32))
def test_compile_rules_of_grammar_files(seed: int) -> None:
    text = rules_text(seed)
    try:
        records = compile_rules(text)
    except RulesSyntaxError:
        return
    db = RulesDB(cdb_bytes(records))
    first: dict[bytes, bytes] = {}
    for key, value in records:
        first.setdefault(key, value)
    for key, value in first.items():
        assert db.get(key) == value


def _found_like_tcpserver(value: bytes) -> tuple[bool, list[tuple[bytes, bytes]]]:
    """tcpserver 0.88's found(), on C strings: each NUL-terminated entry, D or +NAME=VALUE."""
    deny, env = False, []
    data = value
    while (next0 := data.find(b"\0")) >= 0:
        entry = data[:next0]
        if entry[:1] == b"D":
            deny = True
        elif entry[:1] == b"+":
            split = entry.find(b"=", 1)
            if split >= 0:
                env.append((entry[1:split], entry[split + 1 :]))
        data = data[next0 + 1 :]
    return deny, env


def _report_like_tcprulescheck(key: bytes, value: bytes) -> bytes:
    """tcprulescheck 0.88's found(): the rule, variables up to a D, and the verdict."""
    out = b"rule " + key + b":\n"
    data = value
    while (next0 := data.find(b"\0")) >= 0:
        entry = data[:next0]
        if entry[:1] == b"D":
            return out + b"deny connection\n"
        if entry[:1] == b"+":
            out += b"set environment variable " + entry[1:] + b"\n"
        data = data[next0 + 1 :]
    return out + b"allow connection\n"


values_st = st.one_of(
    st.binary(max_size=40),
    st.lists(st.sampled_from([b"D", b"+", b"=", b"\0", b"X", b"\xff", b"", b"+A=1\0", b"D\0"]), max_size=12).map(
        b"".join
    ),
)


@PROPERTY
@given(st.binary(max_size=12), values_st)
def test_value_decoder_is_total(key: bytes, value: bytes) -> None:
    decision = Decision.from_record(key, value)
    assert (decision.deny, decision.env) == _found_like_tcpserver(value)
    for name, val in decision.env:
        assert b"\0" not in name and b"=" not in name and b"\0" not in val


@PROPERTY
@given(st.binary(max_size=12).map(lambda key: key.replace(b"\0", b"")), values_st)
def test_tcprulescheck_report_of_any_value(key: bytes, value: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "r.cdb"
        path.write_bytes(cdb_bytes([(key, value)]))
        assert tcprulescheck.report(str(path), {b"TCPREMOTEIP": key}) == _report_like_tcprulescheck(key, value)


client_st = st.one_of(st.none(), st.binary(max_size=12), st.sampled_from([b"1.2.3.4", b"a.b.c", b"joe", b""]))


@PROPERTY
@given(st.binary(max_size=16), client_st, client_st)
def test_candidates_are_c_strings(ip: bytes, host: bytes | None, info: bytes | None) -> None:
    keys = list(candidates(ip, host, info))
    assert keys[-1] == b"" and all(b"\0" not in k for k in keys)
    assert keys == list(candidates(ip + b"\0junk", host, info))


_CLIENTS = [
    ("1.2.3.4", None, None),
    ("1.2.3.9", b"a.b.c", b"joe"),
    ("10.0.0.1", b"", b""),
    ("9.9.9.9", b"x.y", None),
]
_PROBED = sorted({key for client in _CLIENTS for key in candidates(*client)})


def _lookups(db: RulesDB) -> list[Decision | int]:
    out: list[Decision | int] = []
    for ip, host, info in _CLIENTS:
        try:
            out.append(db.lookup(ip, host, info))
        except OSError as e:
            assert e.errno == errno.EPROTO
            out.append(e.errno)
    return out


def _check_db(data: bytes) -> None:
    try:
        db = RulesDB(data)
    except OSError as e:
        assert e.errno == errno.EPROTO
        return
    for result in _lookups(db):
        if isinstance(result, Decision):
            assert isinstance(result.deny, bool)
            assert (result.deny, result.env) == _found_like_tcpserver(result.value)


@PROPERTY
@given(st.binary(max_size=4000))
def test_cdb_reader_on_any_bytes(data: bytes) -> None:
    _check_db(data)


GOOD_RULES = (
    b'1.2.3.4:deny\n1.2.3.:allow,X="1"\njoe@1.2.3.9:allow,WHO="joe"\n=a.b.c:deny,WHY="host"\n'
    b'=.b.c:allow\n10.0.0.1-3:deny\n9.:allow,Y="9"\n:allow,DEFAULT="1"\n'
)
GOOD_CDB = cdb_bytes(compile_rules(GOOD_RULES))
_INTERESTING = [0, 1, 7, 8, 2047, 2048, 2049, len(GOOD_CDB) - 8, len(GOOD_CDB), 2**29 + 1, 2**31, 2**32 - 1]


@st.composite
def mutated_cdb(draw: st.DrawFn) -> bytes:
    data = bytearray(GOOD_CDB)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["byte", "word", "truncate", "extend"]))
        if kind == "byte" and data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        elif kind == "word" and len(data) >= 4:
            at = draw(st.integers(0, (len(data) - 4) // 4)) * 4
            value = draw(st.one_of(st.sampled_from(_INTERESTING), st.integers(0, 2**32 - 1)))
            struct.pack_into("<I", data, at, value)
        elif kind == "truncate" and data:
            del data[draw(st.integers(0, len(data) - 1)) :]
        elif kind == "extend":
            data += draw(st.binary(max_size=64))
    return bytes(data)


@PROPERTY
@given(mutated_cdb())
def test_cdb_reader_on_mutated_rules_cdb(data: bytes) -> None:
    _check_db(data)


def in_range_header_cdb(seed: int) -> bytes:
    """A hand-made cdb whose tables all lie inside the file (so it loads), for the keys the lookups
    probe: records with right and wrong lengths (the last one maybe cut short by the end of the
    file), tables whose slots point at them, at other records or anywhere, with right and wrong
    hashes, and now and then a table anywhere else in the file."""
    r = random.Random(seed)
    targets = r.sample(_PROBED, r.randint(1, 4))
    body, starts = bytearray(), []

    def record() -> bytes:
        key = r.choice(targets) if r.random() < 0.6 else r.choice(_PROBED)
        value = r.choice([b"", b"D\0", b"+X=1\0", b"+A=\xff\0D\0+B", r.randbytes(r.randint(0, 9))])
        klen = len(key) if r.random() < 0.8 else r.choice([r.getrandbits(32), len(key) + 1, 40, 64])
        dlen = len(value) if r.random() < 0.7 else r.choice([r.getrandbits(32), len(value) + 1, 2**32 - 1])
        starts.append(2048 + len(body))
        return struct.pack("<II", klen, dlen) + key + value

    for _ in range(r.randint(0, 6)):
        if r.random() < 0.2:
            body += r.randbytes(r.randint(1, 8))
        body += record()
    tables = []
    for key in targets:
        bucket = cdb_hash(key) & 255
        slots = r.randint(1, 6)
        tables.append((bucket, 2048 + len(body), slots))
        for _ in range(slots):
            h = cdb_hash(r.choice([k for k in _PROBED if cdb_hash(k) & 255 == bucket]))
            h = h if r.random() < 0.8 else r.getrandbits(32)
            pos = r.choice(starts) if starts and r.random() < 0.8 else r.choice([0, r.randint(0, 3000)])
            body += struct.pack("<II", h, pos)
    if r.random() < 0.4:  # a last record cut short by the end of the file, and slots pointing at it
        tail = record()
        body += tail[: r.randint(8, len(tail))]
        for _bucket, pos, slots in tables:
            if r.random() < 0.7:
                struct.pack_into("<I", body, pos - 2048 + 8 * r.randrange(slots) + 4, starts[-1])
    size = 2048 + len(body)
    header = [(2048, 0)] * 256
    for bucket, pos, slots in tables:
        header[bucket] = (pos, slots)
    for _ in range(r.choice([0, 0, 1, 2])):
        slots = r.randint(1, max(1, (size - 2048) // 8))
        if 8 * slots <= size:
            header[r.randrange(256)] = (r.randint(0, size - 8 * slots), slots)
    return b"".join(struct.pack("<II", *entry) for entry in header) + bytes(body)


@PROPERTY
@given(st.integers(0, 2**64))
def test_cdb_reader_on_in_range_headers(seed: int) -> None:
    data = in_range_header_cdb(seed)
    RulesDB(data)  # loads: every table is inside the file
    _check_db(data)


# -- 2. tcprules and tcprulescheck against Debian's ---------------------------


def _chunk_seeds(chunk: int) -> range:
    return range(SEED + chunk, SEED + EXAMPLES, CHUNKS)


def _show(diffs: list[str]) -> str:
    return f"{len(diffs)} difference(s); the first ones:\n" + "\n".join(diffs[:5])


@pytest.mark.differential
@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_tcprules_fuzz_against_debian(tmp_path: Path, driver: Driver, chunk: int) -> None:
    """Random rules files: same exit code, output, cdb bytes and left-over files; then the same
    tcprulescheck answers for a few clients aimed at the rules."""
    real("tcprules")
    diffs: list[str] = []
    for seed in _chunk_seeds(chunk):
        text = rules_text(seed)
        mine_via = None if seed % SCRIPT_EVERY == 0 else driver
        folder = tmp_path / str(seed)
        folder.mkdir()
        theirs = _tcprules("debian", folder / "debian", text, None)
        mine = _tcprules("prefork", folder / "prefork", text, mine_via)
        if mine != theirs:
            diffs.append(f"seed {seed}: tcprules {text!r}: debian {theirs[:3]} prefork {mine[:3]}")
            continue
        if theirs[0] != 0:
            continue
        cdb = folder / "debian" / "r.cdb"
        r = random.Random(seed)
        for n, env in enumerate(_clients(r, compile_rules(text), 3)):
            a, b = _check("debian", cdb, env, None), _check("prefork", cdb, env, driver if n else mine_via)
            if a != b:
                diffs.append(f"seed {seed}: tcprulescheck {env} on {text!r}: debian {a} prefork {b}")
    assert not diffs, _show(diffs)


def _random_rules_cdb(r: random.Random) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    for _ in range(100):
        try:
            records = compile_rules(rules_text(r.getrandbits(32), bad_rate=0))
        except RulesSyntaxError:
            continue
        if records:
            return cdb_bytes(records), records
    return GOOD_CDB, compile_rules(GOOD_RULES)


def _tables(data: bytes | bytearray) -> list[tuple[int, int]]:
    return [struct.unpack_from("<II", data, 8 * i) for i in range(256)]


def _record_positions(data: bytes | bytearray) -> list[int]:
    out, pos, end = [], 2048, min((p for p, n in _tables(data) if n), default=len(data))
    while pos + 8 <= end:
        out.append(pos)
        klen, dlen = struct.unpack_from("<II", data, pos)
        pos += 8 + klen + dlen
    return out


SCRAMBLES = ["shuffle", "rotate", "empty-slots", "rehash", "swap-tables", "repoint"]
BREAKS = ["bytes", "words", "lengths", "truncate", "slot-counts"]


def damage(data: bytes, kind: str, r: random.Random) -> bytes:
    """KIND of damage to a rules cdb: SCRAMBLES keep every table and pointer inside the file."""
    out = bytearray(data)
    tables = [(i, pos, slots) for i, (pos, slots) in enumerate(_tables(out)) if slots]
    records = _record_positions(out)
    for _i, pos, slots in tables:
        pairs = [struct.unpack_from("<II", out, pos + 8 * k) for k in range(slots)]
        if kind == "shuffle":
            r.shuffle(pairs)
        elif kind == "rotate":
            turn = r.randrange(slots)
            pairs = pairs[turn:] + pairs[:turn]
        elif kind == "empty-slots":
            pairs = [(h, 0) if r.random() < 0.4 else (h, p) for h, p in pairs]
        elif kind == "rehash":
            pairs = [(r.getrandbits(32) if r.random() < 0.4 else h, p) for h, p in pairs]
        elif kind == "repoint" and records:
            pairs = [(h, r.choice(records) if p and r.random() < 0.5 else p) for h, p in pairs]
        for k, pair in enumerate(pairs):
            struct.pack_into("<II", out, pos + 8 * k, *pair)
    if kind == "swap-tables":
        header = _tables(out)
        r.shuffle(header)
        for i, pair in enumerate(header):
            struct.pack_into("<II", out, 8 * i, *pair)
    elif kind == "bytes":
        for _ in range(r.randint(1, 8)):
            out[r.randrange(len(out))] = r.getrandbits(8)
    elif kind == "words":
        for _ in range(r.randint(1, 3)):
            at = r.randrange(0, len(out) - 3)
            struct.pack_into(
                "<I", out, at, r.choice([0, 1, 2048, len(out), len(out) - 1, 2**32 - 1, r.getrandbits(32)])
            )
    elif kind == "lengths" and records:
        at = r.choice(records) + r.choice([0, 4])
        struct.pack_into("<I", out, at, r.choice([0, 1, 7, 33, 64, 2**31, 2**32 - 1, r.getrandbits(16)]))
    elif kind == "truncate":
        del out[r.randrange(len(out)) :]
    elif kind == "slot-counts" and tables:
        i = r.choice(tables)[0]
        struct.pack_into("<I", out, 8 * i + 4, r.choice([1, 2**29 + 1, 2**31, 2**32 - 1, r.getrandbits(32)]))
    return bytes(out)


def _damaged_case(seed: int) -> tuple[str, bytes, list[dict[bytes, bytes]]]:
    r = random.Random(seed)
    if seed % 5 >= 3:
        return "hand-made", in_range_header_cdb(seed), [_client_env(ip.encode(), h, i) for ip, h, i in _CLIENTS]
    data, records = _random_rules_cdb(r)
    kind = r.choice(SCRAMBLES + SCRAMBLES + BREAKS)
    return kind, damage(data, kind, r), _clients(r, records, 3)


@pytest.mark.differential
@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_damaged_cdb_against_debian(tmp_path: Path, driver: Driver, chunk: int) -> None:
    """Damaged rules cdbs: where prefork loads the file, its tcprulescheck answers exactly as Debian's
    (scrambled tables miss rules in the same way); where it refuses the file (a table beyond the end),
    every client gets ``protocol error`` while Debian's may still answer some."""
    real("tcprulescheck")
    diffs: list[str] = []
    refused_ok = 0
    for seed in _chunk_seeds(chunk):
        kind, data, clients = _damaged_case(seed)
        path = tmp_path / f"{seed}.cdb"
        path.write_bytes(data)
        try:
            RulesDB(data)
            loads = True
        except OSError:
            loads = False
        if kind in SCRAMBLES or kind == "hand-made":
            assert loads, f"seed {seed}: {kind} left the tables inside the file, yet prefork refuses it"
        mine_via = None if seed % SCRIPT_EVERY == 0 else driver
        for n, env in enumerate(clients):
            a, b = _check("debian", path, env, None), _check("prefork", path, env, driver if n else mine_via)
            if loads and a != b:
                diffs.append(f"seed {seed} ({kind}): {env}: debian {a} prefork {b}")
            if not loads:
                refused_ok += 1
                expected = (111, b"", b"tcprulescheck: fatal: unable to read %s: protocol error\n" % path.name.encode())
                if b != expected:
                    diffs.append(f"seed {seed} ({kind}): refused file: prefork {b}")
    assert not diffs, _show(diffs)


# -- 3. every byte of a rule value reaches tcpserver's program as 0.88 passes it --

ODD_VALUE = b"+A=x\0y\0+B=\xff\x01=\x80\0+NOEQ\0junk\0\0+C=\0+D=1\0+D=2\0+PROTO=odd\0+TAIL=unterminated"


@pytest.mark.differential
def test_tcpserver_rule_values_are_c_strings(launch, tmp_path: Path) -> None:
    """Values tcprules never writes (bytes of every kind, entries without ``+`` or ``=``, a NUL where
    a value would go on, an unterminated tail): the worker survives and the program's environment
    gets exactly what 0.88's tcpserver passes, on Debian's and prefork's."""
    from tcpserver_harness import QUIET, TAG_VAR, VIEW, parse_view, talk

    cdb = tmp_path / "odd.cdb"
    cdb.write_bytes(cdb_bytes([(b"127.0.0.1", ODD_VALUE), (b"127.0.0.2", b"+V=\xfe\0D\0+W=1\0")]))
    server = launch([*QUIET, "-x", str(cdb)], [VIEW])
    for _ in range(2):  # a second connection: the worker is still there
        env = parse_view(talk(server.port)[0])["env"]
        env.pop(TAG_VAR, None)
        assert {name: env.get(name) for name in ("A", "B", "C", "D", "PROTO", "NOEQ", "TAIL", "y", "junk")} == {
            "A": "x",
            "B": "\udcff\x01=\udc80",
            "C": "",
            "D": "2",
            "PROTO": "odd",
            "NOEQ": None,
            "TAIL": None,
            "y": None,
            "junk": None,
        }
    assert talk(server.port, source="127.0.0.2")[0] == b""  # a variable before D: denied all the same
