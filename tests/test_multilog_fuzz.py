"""multilog scripts drawn at random, run by prefork's multilog and by Debian's (daemontools 0.76), compared.

Two parts:

- a differential fuzz of the command: seeded random scripts (``t``, ``-pattern``, ``+pattern``, ``e``,
  ``=file``, ``./dir``, ``s``, ``n``, ``!processor``, ignored words) and inputs (empty lines, long lines,
  NUL and 0xff bytes, no final newline), each run by both implementations in its own directory;
  stdout, stderr, exit code, the ``=`` files byte for byte and every file of the log directories must
  agree once the ``@<tai64n>`` labels are blanked.  The one known, allowed difference: where a full
  ``current`` is cut (0.76 writes 512 bytes at a time, prefork a whole read), so for a directory that
  rotated what is compared is the concatenation of its ``@*.s`` files and ``current`` (or, when old
  files may have been removed, that one implementation kept the end of what the other kept); with a
  processor (``!tr ab ba``) the lines it ran over differ too, so a and b count as one byte there.
  ``PREFORK_FUZZ_EXAMPLES`` (default 300) and ``PREFORK_FUZZ_SEED`` (default 76) select the run;
  every case is reproducible alone from the seed and its number; ``PREFORK_FUZZ_MULTILOG`` runs another
  build of prefork's command in its place (to check that the fuzz finds what a fix fixed).
- a model of 0.76's per-line loop over the engine driven in-process with arbitrary chunking
  (hypothesis), which covers many more scripts than the processes can, in the same grammar.
"""

from __future__ import annotations

import math
import os
import random
import re
import subprocess
from pathlib import Path

import pytest
from conftest import ours, real
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefork import tai64n
from prefork.control.log.logdir import Seam
from prefork.control.log.logscript import LINE_MAX, match, parse
from prefork.control.log.multilog import Multilog

ENV = {"PATH": "/usr/bin:/bin"}
STAMP = re.compile(rb"@[0-9a-f]{24}")
EXAMPLES = int(os.environ.get("PREFORK_FUZZ_EXAMPLES", "300"))
SEED = int(os.environ.get("PREFORK_FUZZ_SEED", "76"))
PER_BATCH = 40
BATCHES = max(8, math.ceil(EXAMPLES / PER_BATCH))
TIMEOUT = 30

PATTERN_BYTES = b"ab* :"
LINE_BYTES = b"ab* :x@\x00\xff"
SAME_AB = bytes.maketrans(b"b", b"a")
SPECIAL_PATTERNS = [b"*", b"", b"**", b"*a", b"a*", b"* a*", b"*:*", b"*a*", b"a*b", b"**a", b"*\xff", b"x*"]


# -- the grammar ---------------------------------------------------------------------------------------------
def _pattern(rng: random.Random, stamped: bool) -> bytes:
    if rng.random() < 0.3:
        body = rng.choice(SPECIAL_PATTERNS)
    else:
        body = bytes(rng.choice(PATTERN_BYTES) for _ in range(rng.randint(0, 5)))
    if not stamped:
        return body
    # A stamped line starts with @ and 24 hex digits that differ from run to run: a pattern must get past
    # them the same way every time (``* `` skips to the space after the label) or never match at all.
    choice = rng.random()
    if choice < 0.15:
        return b"*"
    if choice < 0.75:
        return b"* " + body
    if choice < 0.85:
        return b"@* " + body
    return body.lstrip(b"*@") or b"x"


def script(rng: random.Random) -> list[bytes]:
    """A random multilog script (the arguments) in the grammar above."""
    stamped = rng.random() < 0.3
    words: list[bytes] = [rng.choice([b"t", b"t", b"tx"])] if stamped else []
    dirs = [b"./d1", b"./d2", b"./d3", b"./d4"]
    rng.shuffle(dirs)
    kinds = ["-", "+", "e", "=", "dir", "s", "n", "!", "other"]
    weights = [3, 3, 2, 2, 2.5, 0.6, 0.5, 0.15, 0.4]
    for _ in range(rng.randint(0, 9)):
        kind = rng.choices(kinds, weights)[0]
        if kind in "-+":
            words.append(kind.encode() + _pattern(rng, stamped))
        elif kind == "e":
            words.append(rng.choice([b"e", b"e", b"e", b"ex"]))
        elif kind == "=":
            words.append(b"=" + rng.choice([b"st", b"st", b"./st", b"st2", b"st2", b"st3"] * 20 + [b"nodir/st"]))
        elif kind == "dir":
            if dirs and rng.random() > 0.02:
                words.append(dirs.pop())
            else:
                words.append(b"./d1")  # the same directory twice: the second lock fails
        elif kind == "s":
            words.append(rng.choice([b"s4096", b"s4096", b"s5000", b"s100", b"s", b"s99999999", b"sx"]))
        elif kind == "n":
            words.append(rng.choice([b"n2", b"n3", b"n5", b"n1000", b"n", b"n1"]))
        elif kind == "!":
            words.append(rng.choice([b"!cat", b"!tr ab ba"]))
        else:
            words.append(rng.choice([b"x", b"9", b":q", b"ttt", b"Zz", b"", b"-", b"+", b"=", b"@x"]))
    return words


def _line(rng: random.Random) -> bytes:
    r = rng.random()
    if r < 0.15:
        return b""
    if r < 0.8:
        return bytes(rng.choice(LINE_BYTES) for _ in range(rng.randint(1, 12)))
    if r < 0.96:
        size = rng.choice([199, 200, 201, 973, 974, 975, 998, 999, 1000, 1001, 1024, 1500, 3000])
    else:
        size = rng.randint(4000, 9000)
    fill = bytes([rng.choice(LINE_BYTES)]) if rng.random() < 0.5 else bytes(rng.choice(b"ab :x") for _ in range(8))
    return (fill * (size // len(fill) + 1))[:size]


def data(rng: random.Random) -> bytes:
    """Random input: short and long lines, empty lines, sometimes many lines, sometimes no final newline."""
    if rng.random() < 0.15:
        lines = [b"line %05d %s" % (i, b"ab:" * (i % 17)) for i in range(rng.randint(100, 500))]
    else:
        lines = [_line(rng) for _ in range(rng.randint(0, 25))]
    if not lines:
        return rng.choice([b"", b"", b"\n"])
    out = b"\n".join(lines)
    return out if rng.random() < 0.25 else out + b"\n"


def case(index: int, seed: int = SEED) -> tuple[list[bytes], bytes]:
    """Case INDEX of the run seeded SEED: reproducible alone."""
    rng = random.Random(f"{seed}:{index}")
    return script(rng), data(rng)


# -- running and comparing -----------------------------------------------------------------------------------
def run(cmd: str, words: list[bytes], stdin: bytes, where: Path) -> tuple:
    where.mkdir()
    try:
        proc = subprocess.run([cmd, *words], input=stdin, cwd=where, env=ENV, capture_output=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return ("timeout",)
    return proc.returncode, STAMP.sub(b"@X", proc.stdout), STAMP.sub(b"@X", proc.stderr)


def _mode(path: Path) -> str:
    return oct(path.lstat().st_mode & 0o7777)


def observe(where: Path, words: list[bytes]) -> tuple[dict, dict]:
    """(plain files and directories, log directories) under WHERE, labels blanked.

    A log directory (one holding ``lock``) is summed up as its other entries with their modes and
    contents, the kinds of its old files, and ``stream``: its ``@*`` files, oldest first, then ``current``.
    """
    specs = {os.path.normpath(d.path): d for d in parse([os.fsdecode(w) for w in words]).dirs}
    plain: dict[str, tuple] = {}
    logs: dict[str, dict] = {}
    for path in sorted(where.rglob("*")):
        rel = str(path.relative_to(where))
        if path.parent != where and (path.parent / "lock").exists():
            continue  # inside a log directory: summed up below
        if path.is_dir() and (path / "lock").exists():
            olds = sorted(p for p in path.iterdir() if p.name.startswith("@"))
            others = sorted(p for p in path.iterdir() if not p.name.startswith("@"))
            stream = b"".join(p.read_bytes() for p in [*olds, path / "current"] if p.exists())
            logs[rel] = {
                "mode": _mode(path),
                "others": [(p.name, _mode(p), STAMP.sub(b"@X", p.read_bytes()) if p.name != "current" else b"")
                           for p in others],
                "olds": sorted({(STAMP.sub(b"@X", p.name.encode()), _mode(p)) for p in olds}),
                "old_count": len(olds),
                "num": specs[rel].num if rel in specs else 10,
                "processor": specs[rel].processor if rel in specs else None,
                "stream": STAMP.sub(b"@X", stream),
            }
        else:
            contents = b"" if path.is_dir() else STAMP.sub(b"@X", path.read_bytes())
            plain[rel] = (_mode(path), path.is_dir(), contents)
    return plain, logs


def differences(words: list[bytes], stdin: bytes, tmp: Path) -> list[str]:
    """What differs between Debian's multilog and prefork's on one script and input (empty: nothing)."""
    out_d = run(real("multilog"), words, stdin, tmp / "debian")
    out_p = run(os.environ.get("PREFORK_FUZZ_MULTILOG") or ours("multilog"), words, stdin, tmp / "prefork")
    found = []
    if out_d != out_p:
        found.append(f"exit/stdout/stderr: debian {out_d!r:.300} prefork {out_p!r:.300}")
    plain_d, logs_d = observe(tmp / "debian", words)
    plain_p, logs_p = observe(tmp / "prefork", words)
    if plain_d != plain_p:
        for name in sorted(set(plain_d) | set(plain_p)):
            if plain_d.get(name) != plain_p.get(name):
                found.append(f"{name}: debian {plain_d.get(name)!r:.200} prefork {plain_p.get(name)!r:.200}")
    for name in sorted(set(logs_d) | set(logs_p)):
        d, p = logs_d.get(name), logs_p.get(name)
        if d is None or p is None:
            found.append(f"{name}: log directory only in {'prefork' if d is None else 'debian'}")
            continue
        for key in ("mode", "others", "olds"):
            if d[key] != p[key] and not (key == "olds" and not (d["old_count"] and p["old_count"])):
                found.append(f"{name} {key}: debian {d[key]!r:.200} prefork {p[key]!r:.200}")
        if d["old_count"] != p["old_count"] and not (d["old_count"] and p["old_count"]):
            found.append(f"{name}: rotated in one only: debian {d['old_count']} old files, prefork {p['old_count']}")
        pruned = max(d["old_count"], p["old_count"]) >= d["num"] - 1  # the oldest may be gone, cut differently
        a, b = d["stream"], p["stream"]
        if d["processor"] and (d["old_count"] or p["old_count"]):
            a, b = a.translate(SAME_AB), b.translate(SAME_AB)  # tr ab ba ran over files cut at different lines
        if a != b and not (pruned and (a.endswith(b) or b.endswith(a))):
            found.append(f"{name} contents: debian {len(a)} bytes {a[-120:]!r} prefork {len(b)} bytes {b[-120:]!r}")
    return found


def describe(index: int, words: list[bytes], stdin: bytes, found: list[str]) -> str:
    shown = stdin if len(stdin) < 300 else stdin[:300] + b"...(%d bytes)" % len(stdin)
    return (f"case {index} (PREFORK_FUZZ_SEED={SEED}): multilog {' '.join(map(repr, words))}\n"
            f"  input {shown!r}\n  " + "\n  ".join(found))


@pytest.mark.differential
@pytest.mark.parametrize("batch", range(BATCHES))
def test_random_scripts_behave_as_daemontools(tmp_path, batch):
    real("multilog")
    reports = []
    for index in range(batch, EXAMPLES, BATCHES):
        words, stdin = case(index)
        where = tmp_path / str(index)
        where.mkdir()
        found = differences(words, stdin, where)
        if found:
            reports.append(describe(index, words, stdin, found))
    assert not reports, f"{len(reports)} of the scripts differ:\n" + "\n".join(reports[:10])


def test_the_fuzz_is_reproducible_and_covers_the_grammar():
    assert case(17) == case(17)
    cases = [case(i) for i in range(300)]
    words = [w for script_, _ in cases for w in script_]
    firsts = {w[:1] for w in words}
    assert {b"t", b"-", b"+", b"e", b"=", b".", b"s", b"n", b"!"} <= firsts
    assert sum(script_.count(b"e") + script_.count(b"ex") > 1 for script_, _ in cases) > 10
    assert sum(len({w for w in script_ if w[:1] == b"="}) < len([w for w in script_ if w[:1] == b"="])
               for script_, _ in cases) > 5  # =st twice
    inputs = [stdin for _, stdin in cases]
    assert any(s and not s.endswith(b"\n") for s in inputs)
    assert any(b"\n\n" in s for s in inputs)
    assert any(len(line) > LINE_MAX for s in inputs for line in s.split(b"\n"))


# -- the same grammar against a model of 0.76's loop, in-process -------------------------------------------------
def model(words: list[bytes], lines: list[bytes], stamp: bytes) -> tuple[dict, bytes, dict]:
    """0.76's doit() line by line: (each directory's contents, stderr, each file's last 1001-byte write)."""
    dirs: dict[bytes, list[bytes]] = {}
    files: dict[bytes, bytes] = {}
    err = []
    for line in lines:
        full = stamp + line
        seen = full[:LINE_MAX]
        selected = True
        for w in words:
            kind = w[:1]
            if kind == b"-" and selected and match(w[1:], seen):
                selected = False
            elif kind == b"+" and not selected and match(w[1:], seen):
                selected = True
            elif kind == b"e" and selected:
                err.append(seen[:200] + b"...\n" if len(seen) > 200 else seen + b"\n")
            elif kind == b"=" and selected:
                files[os.path.normpath(w[1:])] = seen + b"\n" * (LINE_MAX + 1 - len(seen))
            elif kind in (b".", b"/"):
                dirs.setdefault(w, [])
                if selected:
                    dirs[w].append(full + b"\n")
    return {k: b"".join(v) for k, v in dirs.items()}, b"".join(err), files


class FixedClock(Seam):
    """Real files; one fixed time for every stamp; stderr kept."""

    def __init__(self) -> None:
        super().__init__()
        self.err = bytearray()

    def now(self) -> bytes:
        return tai64n.pack(1_700_000_000, 123_456_500)

    def stderr(self, data: bytes) -> None:
        self.err += data


ACTIONS = st.sampled_from([b"-*", b"+*", b"-*a*", b"+*b", b"-", b"+", b"-a", b"+*a", b"e", b"e", b"=st", b"=./st",
                           b"=st2", b"-**", b"+a*", b"-* *", b"+*\x00", b"-* a*", b"+@*"])
LINES = st.sampled_from([b"", b"a", b"b", b"ab", b"ba", b"a b", b"*", b"\x00", b"a" * 250, b"b" * 1200, b"ab" * 600])


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.booleans(), st.lists(st.one_of(ACTIONS, st.sampled_from([b"./d1", b"./d2"])), max_size=10),
       st.lists(LINES, max_size=20), st.lists(st.integers(min_value=1, max_value=700), min_size=1, max_size=5))
def test_any_script_and_chunking_give_what_0_76_gives_line_by_line(tmp_path_factory, stamped, body, lines, sizes):
    where = os.fsencode(tmp_path_factory.mktemp("model"))
    words = [b"t"] if stamped else []
    for w in body:
        if w[:1] == b".":
            w = where + w[1:]
            if w in words:
                continue  # the same directory twice cannot be locked twice
        elif w[:1] == b"=":
            w = b"=" + where + b"/" + w[1:]
        words.append(w)
    seam = FixedClock()
    stamp = b"@" + seam.now().hex().encode() + b" " if stamped else b""
    engine = Multilog(parse([os.fsdecode(w) for w in words]), seam)
    engine.open()
    stream = b"".join(line + b"\n" for line in lines)
    pos = i = 0
    while pos < len(stream):
        engine.feed(stream[pos:pos + sizes[i % len(sizes)]])
        engine.flush()
        pos += sizes[i % len(sizes)]
        i += 1
    engine.close()
    engine.release()
    dirs, err, files = model(words, lines, stamp)
    assert bytes(seam.err) == err
    for name, expected in dirs.items():
        assert (Path(os.fsdecode(name)) / "current").read_bytes() == expected, name
    for w in words:
        if w[:1] == b"=":
            name = os.path.normpath(w[1:])
            assert Path(os.fsdecode(name)).read_bytes() == files.get(name, b""), name
