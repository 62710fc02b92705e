"""Differential tests: prefork's tcprules and tcprulescheck against Debian's ucspi-tcp 0.88.

Each scenario runs both programs on the same input in separate directories and
compares exit code, stdout, stderr and every file left behind (cdb bytes, the
tmp file a failed run leaves, modes).
"""

from __future__ import annotations

import itertools
import os
import re
import stat
import struct
import subprocess
from pathlib import Path

import pytest
from conftest import ours, real
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from prefork.rules import cdb_bytes, cdb_hash, compile_rules
from prefork.tcprules import compile_to
from prefork.tcprulescheck import report

pytestmark = pytest.mark.differential

OLD_CDB = b"old cdb, must survive every failed run\n"


def _snapshot(folder: Path) -> dict[str, tuple[str, int, bytes]]:
    out = {}
    for path in sorted(folder.iterdir()):
        st_ = path.lstat()
        kind = "dir" if stat.S_ISDIR(st_.st_mode) else "file"
        out[path.name] = (kind, stat.S_IMODE(st_.st_mode), b"" if kind == "dir" else path.read_bytes())
    return out


def _run_tcprules(
    exe: str,
    folder: Path,
    stdin: bytes | int | None,
    args: tuple[str, ...] = ("r.cdb", "r.tmp"),
    umask: int = 0o022,
    shell_prefix: str = "",
) -> dict[str, object]:
    folder.mkdir()
    (folder / "r.cdb").write_bytes(OLD_CDB)
    argv = [exe, *args]
    if shell_prefix:  # e.g. closing stdin, which subprocess cannot do directly
        argv = ["/bin/sh", "-c", f'{shell_prefix} "$@" <&-', "sh", *argv]
    proc = subprocess.run(
        argv,
        input=stdin if isinstance(stdin, bytes) else None,
        stdin=None if isinstance(stdin, bytes) else stdin,
        cwd=folder,
        capture_output=True,
        env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"},
        preexec_fn=lambda: os.umask(umask),
        timeout=60,
    )
    return {"rc": proc.returncode, "out": proc.stdout, "err": proc.stderr, "files": _snapshot(folder)}


def _both(tmp_path: Path, stdin: bytes | int | None, **kw: object) -> tuple[dict[str, object], dict[str, object]]:
    theirs = _run_tcprules(real("tcprules"), tmp_path / "debian", stdin, **kw)  # type: ignore[arg-type]
    mine = _run_tcprules(ours("tcprules"), tmp_path / "prefork", stdin, **kw)  # type: ignore[arg-type]
    return theirs, mine


def _big(count: int, tail: bytes = b"") -> bytes:
    lines = b"".join(b'10.%d.%d.1-3:allow,N="%d"\n' % (i % 256, i // 256, i) for i in range(count))
    return lines + tail


# Every rule form and every error class of tcprules.
CORPUS: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("only-newline", b"\n"),
    ("comments-and-blanks", b"# c\n\n   \n\t\n#1.2.3.4:deny\nno colon here\n"),
    ("hash-later", b"1.2.3.4#x:allow\n"),
    ("allow-deny", b"1.2.3.4:deny\n1.2.3.:allow\n:allow\n=:deny\n=host.example:allow\njoe@1.2.3.4:allow\n"),
    ("spaces-in-address", b" 1.2.3.4:allow\n1.2.3.4 :deny\n"),
    ("trailing-blanks", b"1.2.3.4:allow \t \n1.2.3.5:deny\t\n"),
    ("no-final-newline", b"1.2.3.4:deny\n5.6.7.8:allow"),
    ("duplicates", b'1.2.3.4:deny\n1.2.3.4:allow\n1.2.3.4:allow,X="1"\n'),
    ("vars", b'1.2.3.4:allow,X="1",X="2",PROTO="FOO",TCPLOCALHOST="movie.edu"\n'),
    ("quote-bytes", b"1:allow,A=/a b/,B=+b+,C==c=,D='d',E=,e,,F=\"\"\n"),
    ("odd-names", b'1:allow,="empty",a b,c="comma",X="a=b:c d"\n'),
    ("deny-vars", b'1.2.3.4:deny,WHY="because"\n'),
    ("ranges", b"1.2.3.37-40:allow\n10.2-3.:deny\n1-3:allow\n1.2.-2.:allow\n1.2.250-300.:deny\n"),
    ("empty-ranges", b"1.2.300-400.:allow\n1.2.3.4-:allow\n1.2.5-4.:allow\n"),
    ("range-forms", b"1.2.007-009.:allow\n-:allow\n1-2.3-4.:allow\njoe-x@1.2.3.4:allow\n=a-b.example.com:deny\n"),
    ("range-nul-and-wrap", b"1\0x-3:allow\n18446744073709551617-3:deny\n" + b"9" * 5000 + b"7-3.:allow\n"),
    ("hash-zero-keys", b"=9lg0e3l:deny\n=9lg0gql:allow\n=9lg0e3l:allow\n"),
    ("binary-bytes", b"\xff\xfe:allow,\xff=\x01\x80\x01\n"),
    ("long-line", b"=" + b"a" * 20000 + b':allow,X="' + b"v" * 9000 + b'"\n'),
    ("big", _big(3000)),
    ("err-allowed", b"1.2.3.4:allow\n1.2.3.5:allowed\n"),
    ("err-denyall", b"1.2.3.4:denyall\n"),
    ("err-permit", b"1.2.3.4:permit\n"),
    ("err-empty-instruction", b"1.2.3.4:\n"),
    ("err-name-only", b"1.2.3.4:allow,X\n"),
    ("err-no-quote", b"1.2.3.4:allow,X=\n"),
    ("err-unterminated", b'1.2.3.4:allow,X="abc\n'),
    ("err-missing-comma", b'1.2.3.4:allow,X="1"Y="2"\n'),
    ("err-trailing-comma", b'1.2.3.4:allow,X="1",\n'),
    ("err-cr", b"1.2.3.4:allow\r\n"),
    ("err-crlf-file", b"# dos file\r\n1.2.3.4:allow\r\n"),
    ("err-range-letters", b"abc-def:allow\n"),
    ("err-range-suffix", b"1.2.3.4-5x:allow\n"),
    ("err-nul-in-line", b"1.2.3.4:al\0low\n"),
    ("err-binary-line", b"\xff\xfe:nope \t\n"),
    ("err-last-line-unterminated", b"1.2.3.4:allow\n1.2.3.5:bad"),
    ("err-first-line-of-many", b"bad:line\n" + _big(100)),
    ("err-after-one-chunk", _big(200, b"bad:line\n")),
    ("err-after-two-chunks", _big(1500, b"bad:line\n" + _big(10))),
]


@pytest.mark.parametrize(("name", "text"), CORPUS, ids=[c[0] for c in CORPUS])
def test_tcprules_corpus(tmp_path: Path, name: str, text: bytes) -> None:
    theirs, mine = _both(tmp_path, text)
    assert mine == theirs
    failed = name.startswith("err-")
    assert (theirs["rc"] == 100) == failed and (theirs["rc"] == 0) == (not failed)
    files = theirs["files"]
    assert isinstance(files, dict)
    if failed:
        assert files["r.cdb"][2] == OLD_CDB and "r.tmp" in files
    else:
        assert "r.tmp" not in files and files["r.cdb"][2] == cdb_bytes(compile_rules(text))


@pytest.mark.parametrize(
    "args",
    [(), ("r.cdb",), ("r.cdb", "r.tmp", "extra", "-v"), ("-x", "r.tmp"), ("--", "r.tmp"), ("-", "-q"), ("", "r.tmp")],
    ids=repr,
)
def test_tcprules_arguments(tmp_path: Path, args: tuple[str, ...]) -> None:
    """No getopt in tcprules: words starting with - are file names; fewer than two words is a usage error."""
    theirs, mine = _both(tmp_path, b"1.2.3.4:deny\n", args=args)
    assert mine == theirs


@pytest.mark.parametrize(
    "args",
    [
        ("r.cdb", "nodir/r.tmp"),
        ("r.cdb", "."),
        ("nodir/r.cdb", "r.tmp"),
        ("sub", "r.tmp"),
        ("r.cdb", "/dev/null"),
        ("r.cdb", "/dev/full"),
        ("r.cdb", "r.cdb"),
        ("r.cdb", os.fsdecode(b"\xffdir/r.tmp")),
    ],
    ids=repr,
)
def test_tcprules_file_errors(tmp_path: Path, args: tuple[str, ...]) -> None:
    """Unable to create tmp, to write it (/dev/full, fsync on /dev/null), to move it (missing dir, onto a dir)."""
    text = _big(1000)
    for side in ("debian", "prefork"):
        (tmp_path / "pre" / side / "sub").mkdir(parents=True)
        (tmp_path / "pre" / side / "sub" / "keep").write_bytes(b"x")
    results = []
    for side, exe in (("debian", real("tcprules")), ("prefork", ours("tcprules"))):
        folder = tmp_path / "pre" / side
        proc = subprocess.run([exe, *args], input=text, cwd=folder, capture_output=True, timeout=60)
        results.append((proc.returncode, proc.stdout, proc.stderr, _snapshot(folder)))
    assert results[0] == results[1]


def test_tcprules_stdin_is_a_directory(tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    """Known difference we cannot remove: CPython itself refuses to start with a directory on fd 0
    ("Fatal Python error: init_sys_streams", exit 1), so the library code is compared in-process."""
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        theirs = _run_tcprules(real("tcprules"), tmp_path / "debian", fd)
        mine = tmp_path / "prefork"
        mine.mkdir()
        (mine / "r.cdb").write_bytes(OLD_CDB)
        capfdbinary.readouterr()
        with pytest.raises(SystemExit) as info:
            compile_to(str(mine / "r.cdb"), str(mine / "r.tmp"), input_fd=fd)
    finally:
        os.close(fd)
    assert theirs["err"] == b"tcprules: fatal: unable to read input: is a directory\n" == capfdbinary.readouterr().err
    assert info.value.code == theirs["rc"] == 111
    assert _snapshot(mine) == theirs["files"]


def test_tcprules_stdin_closed(tmp_path: Path) -> None:
    """With fd 0 closed the tmp file becomes fd 0, and reading it fails."""
    theirs, mine = _both(tmp_path, None, shell_prefix="exec")
    assert mine == theirs and theirs["rc"] == 111


def test_tcprules_stdout_pipe_as_tmp(tmp_path: Path) -> None:
    """cdb_make seeks past the header: a pipe as tmp is an unseekable descriptor."""
    results = []
    for exe in (real("tcprules"), ours("tcprules")):
        proc = subprocess.run(
            ["/bin/sh", "-c", '"$1" r.cdb /dev/stdout < /dev/null | cat >/dev/null', "sh", exe],
            cwd=tmp_path,
            capture_output=True,
            timeout=60,
        )
        results.append(proc.stderr)
    assert results[0] == results[1] == b"tcprules: fatal: unable to write to /dev/stdout: unseekable descriptor\n"


def test_tcprules_umask(tmp_path: Path) -> None:
    theirs, mine = _both(tmp_path, b"1.2.3.4:deny\n", umask=0o077)
    assert mine == theirs
    assert theirs["files"]["r.cdb"][1] == 0o600  # type: ignore[index]


def test_tcprules_help_is_ours() -> None:
    """Deliberate difference: ``tcprules --help`` shows help (exit 0); Debian's prints its usage line (exit 100)."""
    proc = subprocess.run([ours("tcprules"), "--help"], capture_output=True, timeout=60)
    assert proc.returncode == 0 and b"tcprules rules.cdb rules.tmp" in proc.stdout and not proc.stderr


# -- CIDR blocks (a prefork extension) ----------------------------------------


def _dotted(ip: int) -> str:
    return ".".join(str(b) for b in ip.to_bytes(4, "big"))


@pytest.mark.parametrize("length", range(33))
def test_cidr_block_read_by_debian(tmp_path: Path, length: int) -> None:
    """Our tcprules compiles NET/LENGTH into the cdb Debian's tcprules makes of the expanded keys, and
    Debian's tcprulescheck and ours decide alike inside the block, at its edges and just outside."""
    base = 0xC0A84DA5 if length % 2 else 0x0A7F0203
    network = base & ~((1 << (32 - length)) - 1) & 0xFFFFFFFF
    size = 1 << (32 - length)
    text = b'%s/%d:allow,BLOCK="%d"\n:deny\n' % (_dotted(network).encode(), length, length)
    mine = _run_tcprules(ours("tcprules"), tmp_path / "prefork", text)
    assert (mine["rc"], mine["out"], mine["err"]) == (0, b"", b"")
    octets = -(-length // 8)  # the block as whole-octet keys, written out as 0.88 lines
    keys = []
    for n in range(1 << (8 * octets - length)):
        parts = _dotted(network + n * (1 << (32 - 8 * octets))).split(".")[:octets]
        keys.append(".".join(parts) + ("." if 0 < octets < 4 else ""))
    expanded = "".join(f'{key}:allow,BLOCK="{length}"\n' for key in keys).encode() + b":deny\n"
    theirs = _run_tcprules(real("tcprules"), tmp_path / "debian", expanded)
    assert mine["files"] == theirs["files"]
    cdb = tmp_path / "prefork" / "r.cdb"
    probes = {network, network + size - 1, network - 1, network + size, network + size // 2, base ^ 1, base ^ 0x100}
    inside = b"set environment variable BLOCK=%d\nallow connection\n" % length
    for n, ip in enumerate(sorted(p & 0xFFFFFFFF for p in probes)):
        env = _env(_dotted(ip).encode(), None, None)
        debian = _check(real("tcprulescheck"), [str(cdb)], env, tmp_path)
        assert debian[0] == 0 and debian[1].endswith(inside) == (network <= ip < network + size), (debian, ip)
        assert (0, report(str(cdb), env), b"") == debian
        if n == 0:  # the console script once per block
            assert _check(ours("tcprulescheck"), [str(cdb)], env, tmp_path) == debian


BAD_CIDR = [
    b"10.0.0.1/8",
    b"192.168.4.0/21",
    b"10.0.0.0/33",
    b"10.0.0.0/x",
    b"10.0.0.0/",
    b"10.0.0/8",
    b"10.0.0.256/32",
    b"010.0.0.0/8",
    b"1.2.0-3.0/24",
    b"joe@10.0.0.0/8",
]


@pytest.mark.parametrize("address", BAD_CIDR, ids=repr)
def test_cidr_bad_block(tmp_path: Path, address: bytes) -> None:
    """A bad block fails like any bad line: exit 100, the line named, the old cdb kept, and the tmp
    file left exactly as a line 0.88 refuses at the same place leaves it (test_tcprules_corpus)."""
    line = address + b':allow,X="1"'
    before, after = _big(700), b"1.2.3.4:deny\n"
    mine = _run_tcprules(ours("tcprules"), tmp_path / "cidr", before + line + b" \n" + after)
    assert (mine["rc"], mine["out"]) == (100, b"")
    assert mine["err"] == b"tcprules: fatal: unable to parse this line: " + line + b"\n"
    files = mine["files"]
    assert isinstance(files, dict) and files["r.cdb"][2] == OLD_CDB
    records = compile_rules(before)
    flushed = 8192 * (sum(8 + len(k) + len(v) for k, v in records) // 8192)  # cdb_make's full buffers, no header
    assert flushed and files["r.tmp"][2] == bytes(2048) + cdb_bytes(records)[2048 : 2048 + flushed]
    other = _run_tcprules(ours("tcprules"), tmp_path / "other", before + b"bad:line\n" + after)
    assert other["rc"] == 100 and other["files"] == files


# -- the temp file ------------------------------------------------------------


def _tcprules_here(exe: str, cwd: Path, cdb: str, tmp: str, text: bytes = b"1.2.3.4:deny\n") -> tuple[int, bytes]:
    proc = subprocess.run([exe, cdb, tmp], input=text, cwd=cwd, capture_output=True, timeout=60)
    return proc.returncode, proc.stderr


@pytest.mark.parametrize("mode", [0o1777, 0o777, 0o775, 0o730], ids=oct)
def test_tcprules_shared_dir_symlink_not_followed(tmp_path: Path, mode: int) -> None:
    """Deliberate difference: in a directory others can write, a symlink planted at the temp name is
    replaced, not written through (Debian's truncates and fills its target, then renames the link
    over the cdb)."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    pub = tmp_path / "pub"
    pub.mkdir()
    pub.chmod(mode)
    (pub / "r.tmp").symlink_to(victim)
    (pub / "r.cdb").write_bytes(OLD_CDB)
    assert _tcprules_here(ours("tcprules"), tmp_path, "pub/r.cdb", "pub/r.tmp") == (0, b"")
    assert victim.read_bytes() == b"precious\n"
    cdb = (pub / "r.cdb").lstat()
    assert stat.S_ISREG(cdb.st_mode) and cdb.st_uid == os.geteuid() and stat.S_IMODE(cdb.st_mode) == 0o644
    assert (pub / "r.cdb").read_bytes() == cdb_bytes(compile_rules(b"1.2.3.4:deny\n"))
    assert sorted(p.name for p in pub.iterdir()) == ["r.cdb"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to plant a file owned by another user")
def test_tcprules_shared_dir_foreign_file_not_reused(tmp_path: Path) -> None:
    """Someone else's file at the temp name (they could write it after we do) is replaced by a new
    file of ours; in a private directory the existing file is truncated and reused, as in 0.88."""
    pub = tmp_path / "pub"
    pub.mkdir()
    pub.chmod(0o1777)
    planted = pub / "r.tmp"
    planted.write_bytes(b"x" * 5000)
    os.chown(planted, 65534, 65534)
    planted.chmod(0o666)
    old_inode = planted.stat().st_ino
    keep = os.open(planted, os.O_RDONLY)  # keeps the old inode alive, so its number is not reused
    try:
        assert _tcprules_here(ours("tcprules"), tmp_path, "pub/r.cdb", "pub/r.tmp") == (0, b"")
        cdb = (pub / "r.cdb").stat()
        assert cdb.st_ino != old_inode and cdb.st_uid == 0 and stat.S_IMODE(cdb.st_mode) == 0o644
        assert os.fstat(keep).st_size == 5000  # not a byte of ours went into their file
    finally:
        os.close(keep)


def test_tcprules_shared_dir_directory_at_tmp_name(tmp_path: Path) -> None:
    """Deliberate difference: in a shared directory a name that cannot be removed is not reused:
    ``file already exists`` (Debian's says ``is a directory``); the cdb is untouched."""
    pub = tmp_path / "pub"
    (pub / "r.tmp").mkdir(parents=True)
    pub.chmod(0o777)
    (pub / "r.cdb").write_bytes(OLD_CDB)
    assert _tcprules_here(ours("tcprules"), tmp_path, "pub/r.cdb", "pub/r.tmp") == (
        111,
        b"tcprules: fatal: unable to create pub/r.tmp: file already exists\n",
    )
    assert (pub / "r.cdb").read_bytes() == OLD_CDB
    assert _tcprules_here(real("tcprules"), tmp_path, "pub/r.cdb", "pub/r.tmp") == (
        111,
        b"tcprules: fatal: unable to create pub/r.tmp: is a directory\n",
    )


def test_tcprules_shared_dir_failure_leaves_cdb(tmp_path: Path) -> None:
    """A bad line in a shared directory: the cdb is untouched and the temp file stays as 0.88 leaves it."""
    results = []
    for side, exe in (("debian", real("tcprules")), ("prefork", ours("tcprules"))):
        pub = tmp_path / side
        pub.mkdir()
        pub.chmod(0o1777)
        (pub / "r.cdb").write_bytes(OLD_CDB)
        rc, err = _tcprules_here(exe, pub, "r.cdb", "r.tmp", _big(1000, b"bad:line\n"))
        results.append((rc, err, _snapshot(pub)))
    assert results[0] == results[1]
    assert results[0][0] == 100 and results[0][2]["r.cdb"][2] == OLD_CDB and "r.tmp" in results[0][2]


def test_tcprules_private_dir_symlink_followed_as_088(tmp_path: Path) -> None:
    """In a directory only we (or root) can write, a symlink at the temp name is the owner's own
    doing and is followed as 0.88 does: the target gets the cdb, the link is renamed to the cdb."""
    results = []
    for side, exe in (("debian", real("tcprules")), ("prefork", ours("tcprules"))):
        folder = tmp_path / side
        folder.mkdir()
        folder.chmod(0o755)
        (folder / "target").write_bytes(b"old target")
        (folder / "r.tmp").symlink_to("target")
        rc, err = _tcprules_here(exe, folder, "r.cdb", "r.tmp")
        link = os.readlink(folder / "r.cdb") if (folder / "r.cdb").is_symlink() else None
        results.append((rc, err, link, (folder / "target").read_bytes()))
    assert results[0] == results[1]
    assert results[0][2] == "target" and results[0][3] == cdb_bytes(compile_rules(b"1.2.3.4:deny\n"))


# -- what a rules cdb reader checks ---------------------------------------------

GOOD_TEXT = b'1.2.3.4:deny\n1.2.3.:allow,X="1"\n:allow\n'
LONG_HOST = b"h" * 39


def _good_cdb() -> bytes:
    return cdb_bytes(compile_rules(GOOD_TEXT))


def _header_entry(data: bytearray, key: bytes) -> tuple[int, int, int]:
    at = 8 * (cdb_hash(key) & 255)
    return (at, *struct.unpack_from("<II", data, at))


def _record_of(data: bytearray, key: bytes) -> int:
    _at, tpos, slots = _header_entry(data, key)
    for k in range(slots):
        h, pos = struct.unpack_from("<II", data, tpos + 8 * k)
        if h == cdb_hash(key):
            return pos
    raise AssertionError(key)


def _set(data: bytearray, at: int, *words: int) -> bytes:
    struct.pack_into(f"<{len(words)}I", data, at, *words)
    return bytes(data)


def _one_slot(probe: bytes, record: bytes) -> bytes:
    header = bytearray(2048)
    struct.pack_into("<II", header, 8 * (cdb_hash(probe) & 255), 2048, 1)
    return bytes(header) + struct.pack("<II", cdb_hash(probe), 2056) + record


def _corrupt(form: str) -> bytes:
    good = bytearray(_good_cdb())
    if form == "empty":
        return b""
    if form == "short-header":
        return bytes(good[:100])
    if form == "truncated-1":
        return bytes(good[:-1])
    if form == "truncated-in-tables":
        return bytes(good[: len(good) - 40])
    at, tpos, slots = _header_entry(good, b"1.2.3.4")
    if form == "table-past-end":
        return _set(good, at, 0xFFFFFFF0, slots)
    if form == "slot-count-huge":
        return _set(good, at, tpos, 0x7FFFFFFF)
    if form == "slot-count-wraps":
        return _set(good, at, tpos, 0x20000001)  # 8 * slots wraps to 8 in 32 bits
    if form == "unprobed-table-past-end":
        used = {cdb_hash(k) & 255 for k in (b"1.2.3.4", b"1.2.3.5", b"9.9.9.9", b"1.2.3.", b"9.9.9.", b"9.9.", b"9.")}
        used |= {cdb_hash(k) & 255 for k in (b"1.2.", b"1.", b"")}
        spare = min(set(range(256)) - used)
        return _set(good, 8 * spare, 0xFFFFFF00, 5)
    rec = _record_of(good, b"1.2.3.4")
    if form == "record-pos-past-end":
        for k in range(slots):
            if struct.unpack_from("<I", good, tpos + 8 * k)[0] == cdb_hash(b"1.2.3.4"):
                struct.pack_into("<I", good, tpos + 8 * k + 4, 0xFFFFFF00)
        return bytes(good)
    if form == "key-length-huge":
        return _set(good, rec, 0xFFFFFFF0)
    if form == "value-length-past-end":
        return _set(good, rec + 4, 0xFFFFFFF0)
    if form == "full-table-no-empty-slot":
        for k in range(slots):
            struct.pack_into("<II", good, tpos + 8 * k, 1, 2048)
        return bytes(good)
    if form == "key-differs-value-past-end":
        return _one_slot(b"1.2.3.4", struct.pack("<II", 7, 100) + b"9.9.9.9" + b"D\0")
    if form == "key-cut-by-end":
        return _one_slot(b"1.2.3.4", struct.pack("<II", 7, 0) + b"9.9.9")
    if form == "long-key-differs-in-first-piece":
        return _one_slot(b"=" + LONG_HOST, struct.pack("<II", 40, 0) + b"=" + b"x" * 34)
    if form == "long-key-first-piece-matches":
        return _one_slot(b"=" + LONG_HOST, struct.pack("<II", 40, 0) + b"=" + LONG_HOST[:34])
    if form == "header-all-ff":
        return b"\xff" * 2048
    if form == "header-all-zero":
        return bytes(2048)
    raise AssertionError(form)


PE = (111, b"", b"tcprulescheck: fatal: unable to read c.cdb: protocol error\n")
DENY = (0, b"rule 1.2.3.4:\ndeny connection\n", b"")
PREFIX = (0, b"rule 1.2.3.:\nset environment variable X=1\nallow connection\n", b"")
EMPTY_RULE = (0, b"rule :\nallow connection\n", b"")
DEFAULT = (0, b"default:\nallow connection\n", b"")
# form: (prefork's answers for 1.2.3.4, 1.2.3.5, 9.9.9.9 with host hhh...; Debian's where they differ)
CORRUPT_FORMS: dict[str, tuple[list[tuple[int, bytes, bytes]], list[tuple[int, bytes, bytes]] | None]] = {
    "empty": ([PE] * 3, [(111, b"", b"tcprulescheck: fatal: unable to read c.cdb: invalid argument\n")] * 3),
    "short-header": ([PE] * 3, None),
    "truncated-1": ([PE] * 3, [DENY, PREFIX, EMPTY_RULE]),
    "truncated-in-tables": ([PE] * 3, None),
    "table-past-end": ([PE] * 3, [PE, PREFIX, EMPTY_RULE]),
    "slot-count-huge": ([PE] * 3, [PE, PREFIX, EMPTY_RULE]),
    "slot-count-wraps": ([PE] * 3, [PE, PREFIX, EMPTY_RULE]),
    "unprobed-table-past-end": ([PE] * 3, [DENY, PREFIX, EMPTY_RULE]),
    "record-pos-past-end": ([PE, PREFIX, EMPTY_RULE], None),
    "key-length-huge": ([PREFIX, PREFIX, EMPTY_RULE], None),
    "value-length-past-end": ([PE, PREFIX, EMPTY_RULE], None),
    "full-table-no-empty-slot": ([PREFIX, PREFIX, EMPTY_RULE], None),
    "key-differs-value-past-end": ([DEFAULT] * 3, None),
    "key-cut-by-end": ([PE, DEFAULT, DEFAULT], None),
    "long-key-differs-in-first-piece": ([DEFAULT] * 3, None),
    "long-key-first-piece-matches": ([DEFAULT, DEFAULT, PE], None),
    "header-all-ff": ([PE] * 3, None),
    "header-all-zero": ([DEFAULT] * 3, None),
}


@pytest.mark.parametrize("form", list(CORRUPT_FORMS))
def test_corrupt_cdb_forms(tmp_path: Path, form: str) -> None:
    """Each structurally bad cdb: prefork's one-line error or answer for three clients, and Debian's
    (the same unless listed: 0.88 checks a table only when a probe reaches it, and answers the rest)."""
    (tmp_path / "c.cdb").write_bytes(_corrupt(form))
    clients = [_env(b"1.2.3.4", None, None), _env(b"1.2.3.5", None, None), _env(b"9.9.9.9", b"h" * 39, None)]
    expected_ours, expected_theirs = CORRUPT_FORMS[form]
    assert [_check(ours("tcprulescheck"), ["c.cdb"], env, tmp_path) for env in clients] == expected_ours
    theirs = [_check(real("tcprulescheck"), ["c.cdb"], env, tmp_path) for env in clients]
    assert theirs == (expected_ours if expected_theirs is None else expected_theirs)


def test_corrupt_cdb_special_files(tmp_path: Path) -> None:
    """Deliberate differences: over 4 GiB (sparse here), a FIFO or a device is ``protocol error``
    unread; Debian's reads the big file without mmap (2048 zero bytes: default allow) and says
    ``invalid argument`` for the others."""
    with open(tmp_path / "huge.cdb", "wb") as f:
        f.truncate(2**32 + 1)
    os.mkfifo(tmp_path / "fifo")
    env = _env(b"1.2.3.4", None, None)
    for name, theirs in [
        ("huge.cdb", DEFAULT),
        ("fifo", (111, b"", b"tcprulescheck: fatal: unable to read fifo: invalid argument\n")),
        ("/dev/zero", (111, b"", b"tcprulescheck: fatal: unable to read /dev/zero: invalid argument\n")),
    ]:
        mine = _check(ours("tcprulescheck"), [name], env, tmp_path)
        assert mine == (111, b"", b"tcprulescheck: fatal: unable to read %s: protocol error\n" % name.encode())
        assert _check(real("tcprulescheck"), [name], env, tmp_path) == theirs


_TOKENS = [b"1", b"2", b"300", b".", b"-", b":", b"allow", b"deny", b",", b"=", b'"', b"/", b"X", b" ", b"\t"]
_TOKENS += [b"#", b"@", b"\n", b"\r", b"\0", b"\xff"]


# Lines whose address prefork reads as a CIDR block (0.88: a literal key); a few more are left out, harmlessly.
_CIDR_FORM = re.compile(rb"^[^:=\n]*?(?:^|@)[0-9.-]+/", re.MULTILINE)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(st.sampled_from(_TOKENS), max_size=12).map(b"".join), max_size=6).map(b"\n".join))
def test_tcprules_random_input(tmp_path_factory: pytest.TempPathFactory, text: bytes) -> None:
    assume(not _CIDR_FORM.search(text))
    folder = tmp_path_factory.mktemp("random")
    theirs, mine = _both(folder, text)
    assert mine == theirs


# -- tcprulescheck -----------------------------------------------------------

RULES_ALL_FORMS = (
    b'joe@1.2.3.4:allow,STEP="info@ip"\n'
    b'joe@=a.b.c:allow,STEP="info@=host"\n'
    b'@1.2.3.4:allow,STEP="emptyinfo@ip"\n'
    b'1.2.3.4:deny,STEP="ip"\n'
    b'=a.b.c:allow,STEP="=host",TWO="x=y"\n'
    b'1.2.3.:allow,STEP="prefix3"\n'
    b"1.:allow\n"
    b"=.b.c:deny\n"
    b'=.c:allow,STEP="suffix"\n'
    b'=:allow,STEP="emptyhost"\n'
    b'.:allow,STEP="dot"\n'
    b':allow,STEP="default"\n'
)
RULES_NO_DEFAULT = b"1.2.3.4:allow\n=a.b.c:deny\n9.:allow\n"
# Hand-made values tcprules never writes: a variable before D, entries without '=', unknown and unterminated ones.
RECORDS_ODD = [
    (b"1.2.3.4", b"+BEFORE=1\0D\0+AFTER=2\0"),
    (b"1.2.3.", b"+NOEQ\0junk\0\0+X=1\0+TAIL=unterminated"),
    (b"=a.b.c", b"+A=1\0+A=2\0"),
]

IPS = [None, b"", b"1.2.3.4", b"1.2.3.9", b"1.9.9.9", b"9.9.9.9", b"1.2.3.", b"\xff.1"]
HOSTS = [None, b"", b"a.b.c", b"x.b.c", b"q.c", b"zzz", b"a.b.c.", b"\xfe.c"]
INFOS = [None, b"", b"joe"]


def _rules_files(folder: Path) -> dict[str, Path]:
    files = {}
    for name, data in [
        ("all", cdb_bytes(compile_rules(RULES_ALL_FORMS))),
        ("nodefault", cdb_bytes(compile_rules(RULES_NO_DEFAULT))),
        ("odd", cdb_bytes(RECORDS_ODD)),
    ]:
        files[name] = folder / f"{name}.cdb"
        files[name].write_bytes(data)
    return files


def _env(ip: bytes | None, host: bytes | None, info: bytes | None) -> dict[bytes, bytes]:
    env = {b"PATH": b"/usr/bin:/bin"}
    for name, value in ((b"TCPREMOTEIP", ip), (b"TCPREMOTEHOST", host), (b"TCPREMOTEINFO", info)):
        if value is not None:
            env[name] = value
    return env


def _check(exe: str, args: list[str], env: dict[bytes, bytes], cwd: Path) -> tuple[int, bytes, bytes]:
    proc = subprocess.run([exe, *args], env=env, cwd=cwd, capture_output=True, timeout=60)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize("rules_name", ["all", "nodefault", "odd"])
def test_tcprulescheck_matrix(tmp_path: Path, rules_name: str) -> None:
    """Every IP/HOST/INFO combination (unset, empty, values): Debian's output equals ours (library level)."""
    path = _rules_files(tmp_path)[rules_name]
    seen = set()
    for ip, host, info in itertools.product(IPS, HOSTS, INFOS):
        env = _env(ip, host, info)
        rc, out, err = _check(real("tcprulescheck"), [str(path)], env, tmp_path)
        assert (rc, err) == (0, b"")
        assert report(str(path), env) == out, env
        seen.add(out)
    assert len(seen) >= 3


@pytest.mark.parametrize(
    ("ip", "host", "info"),
    [
        (None, None, None),
        (b"1.2.3.4", None, b"joe"),
        (b"1.2.3.4", b"a.b.c", None),
        (b"1.2.3.9", None, None),
        (b"9.9.9.9", b"x.b.c", None),
        (b"9.9.9.9", b"", None),
        (b"", None, b""),
        (b"\xff.1", b"\xfe.c", b"joe"),
    ],
)
def test_tcprulescheck_commands(tmp_path: Path, ip: bytes | None, host: bytes | None, info: bytes | None) -> None:
    """The console script itself, on a sample of the matrix."""
    files = _rules_files(tmp_path)
    for path in files.values():
        env = _env(ip, host, info)
        assert _check(ours("tcprulescheck"), [str(path)], env, tmp_path) == _check(
            real("tcprulescheck"), [str(path)], env, tmp_path
        )


def _prepare_errors(folder: Path) -> None:
    good = cdb_bytes(compile_rules(b"1.2.3.4:deny\n:allow\n"))
    (folder / "short").write_bytes(b"0123456789")
    (folder / "cut").write_bytes(good[:2060])  # records cut, tables gone
    (folder / "-x").write_bytes(good)
    (folder / "good").write_bytes(good)


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["missing"],
        ["nodir/x"],
        ["short"],
        ["cut"],
        ["-x"],
        ["good", "extra"],
        ["--", "x"],
        ["good/x"],
        [os.fsdecode(b"\xff")],
    ],
    ids=repr,
)
def test_tcprulescheck_errors(tmp_path: Path, args: list[str]) -> None:
    _prepare_errors(tmp_path)
    env = _env(b"1.2.3.4", None, None)
    theirs = _check(real("tcprulescheck"), args, env, tmp_path)
    assert _check(ours("tcprulescheck"), args, env, tmp_path) == theirs
    assert theirs[0] in (0, 100, 111)


def test_tcprulescheck_stdout_closed(tmp_path: Path) -> None:
    """A closed stdout does not change the exit code (0) or add a message."""
    _prepare_errors(tmp_path)
    results = []
    for exe in (real("tcprulescheck"), ours("tcprulescheck")):
        proc = subprocess.run(
            ["/bin/sh", "-c", '"$1" good >&-', "sh", exe], cwd=tmp_path, capture_output=True, timeout=60
        )
        results.append((proc.returncode, proc.stderr))
    assert results[0] == results[1] == (0, b"")


def test_tcprulescheck_directory_is_ours(tmp_path: Path) -> None:
    """Deliberate difference: a directory as cdb is ``is a directory`` (exit 111); Debian's segfaults (139)."""
    assert _check(ours("tcprulescheck"), [str(tmp_path)], _env(None, None, None), tmp_path) == (
        111,
        b"",
        b"tcprulescheck: fatal: unable to read " + bytes(tmp_path) + b": is a directory\n",
    )


def test_tcprulescheck_empty_file_is_ours(tmp_path: Path) -> None:
    """Deliberate difference: a 0-byte cdb is ``protocol error`` as upstream's logic says; Debian's build
    says ``invalid argument`` (a miscompiled mmap-failure check)."""
    (tmp_path / "empty").write_bytes(b"")
    assert _check(ours("tcprulescheck"), ["empty"], _env(None, None, None), tmp_path) == (
        111,
        b"",
        b"tcprulescheck: fatal: unable to read empty: protocol error\n",
    )


def test_tcprulescheck_help_is_ours(tmp_path: Path) -> None:
    """Deliberate difference: ``tcprulescheck --help`` shows help; Debian's would try to open a file named --help."""
    rc, out, err = _check(ours("tcprulescheck"), ["--help"], _env(None, None, None), tmp_path)
    assert rc == 0 and b"TCPREMOTEIP" in out and not err
