"""Differential tests: prefork's tcprules and tcprulescheck on IPv6 keys against Debian's ucspi-tcp-ipv6.

ucspi-tcp-ipv6 conflicts with ucspi-tcp as a package, so .ci/run unpacks it into
/opt/ucspi-tcp-ipv6 instead of installing it; without it these tests skip.
The 0.88 judge of IPv4 files stays tests/test_tcprules_diff.py.
"""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path

import pytest
from conftest import fuzz_examples, judge, ours
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefork.rules import RulesDB, RulesSyntaxError, candidates, cdb_bytes, compile_rules, parse_line
from prefork.tcprulescheck import report

pytestmark = pytest.mark.differential

OLD_CDB = b"old cdb, must survive every failed run\n"


def _tcprules(exe: str, folder: Path, text: bytes) -> tuple[int, bytes, bytes, dict[str, bytes]]:
    folder.mkdir()
    (folder / "r.cdb").write_bytes(OLD_CDB)
    proc = subprocess.run(
        [exe, "r.cdb", "r.tmp"], input=text, cwd=folder, capture_output=True, env={"PATH": "/usr/bin:/bin"}, timeout=10
    )
    files = {p.name: p.read_bytes() for p in sorted(folder.iterdir())}
    return proc.returncode, proc.stdout, proc.stderr, files


def _both(tmp_path: Path, text: bytes) -> tuple[tuple[object, ...], tuple[object, ...]]:
    theirs = _tcprules(judge("tcprules"), tmp_path / "judge", text)
    mine = _tcprules(ours("tcprules"), tmp_path / "prefork", text)
    return theirs, mine


RULES = [
    ("loopback", b"::1:deny\n"),
    ("prefixes", b'2001:db8::allow,P="2001:db8:"\n2001:db8:1::allow\n2001::deny\n:::deny\n::allow\n'),
    ("full-and-expanded", b"2001:db8::1:allow\n2001:db8:0:0:0:0:0:1:deny\n2001:DB8::2:allow\n"),
    ("ident", b'joe@::1:allow,WHO="joe"\n@2001:db8::5:deny\njoe@=h.example:allow\n'),
    ("mapped", b"::ffff:1.2.3.4:deny\n::ffff:1.2.3.:allow\n::ffff:1.2.3.5-7:deny\n"),
    ("colons-in-values", b'::1:allow,X="a:b",Y=":deny"\n2001:db8::7:deny,WHY="x:allow"\n'),
    ("instruction-after-colons", b"a:b:c:deny\n=h:x:allow\nx::y:deny\n"),
    ("mixed", b'1.2.3.4:deny\n10.:allow,V="4"\n::1:allow,V="6"\n=host.example:deny\n:deny\n'),
    ("literal-forms", b"[::1]:deny\n2001:db8::/32:deny\nfe80::1%eth0:allow\n"),
    ("err-allow-twice", b"::allow:allow\n"),
    ("err-instruction", b"::1:allow\n::1:denyx\n"),
    ("err-vars", b'2001:db8::1:allow,X="1\n'),
    ("err-two-instructions", b"2001:db8::1:deny:allow\n"),
    ("err-range-in-ipv6", b"2001:db8::1-3:deny\n"),
    ("err-range-before-colons", b"1-3::1:deny\n"),
    ("err-ipv6-after-good-lines", b"1.2.3.4:allow\n::1:allow\n::2:allowed\n"),
]


@pytest.mark.parametrize(("name", "text"), RULES, ids=[r[0] for r in RULES])
def test_tcprules_ipv6_files(tmp_path: Path, name: str, text: bytes) -> None:
    """Same exit code, output and files; a good file is the cdb prefork's library computes, a bad one leaves the old."""
    theirs, mine = _both(tmp_path, text)
    assert mine == theirs
    rc, _, err, files = theirs
    if name.startswith("err-"):
        assert rc == 100 and err.startswith(b"tcprules: fatal: unable to parse this line: ")
        assert files["r.cdb"] == OLD_CDB
    else:
        assert (rc, err) == (0, b"") and files["r.cdb"] == cdb_bytes(compile_rules(text))


def test_no_instruction_colon_is_a_parse_error() -> None:
    """A colon but no ``:allow``/``:deny``: ucspi-tcp-ipv6 loops forever, prefork fails as 0.88 does."""
    for line in (b"::1:bogus\n", b"::1:Deny\n", b"2001:db8::\n"):
        with pytest.raises(RulesSyntaxError):
            parse_line(line)
    assert parse_line(b"no colon\n") is None


CHECK_RULES = (
    b'::1:allow,S="lo"\n'
    b'joe@::1:deny,S="joe"\n'
    b'2001:db8::1:allow,S="full"\n'
    b'2001:db8::allow,S="2001:db8:"\n'
    b'2001:db8:1::deny,S="2001:db8:1:"\n'
    b'2001::allow,S="2001:"\n'
    b'::ffff:1.2.3.:allow,S="mapped"\n'
    b'::ffff::deny,S="::ffff:"\n'
    b':::allow,S="::"\n'
    b'1.2.3.:deny,S="v4"\n'
    b'=h.example:allow,S="host"\n'
    b'=.example:deny,S="suffix"\n'
)
IPS = [
    None,
    b"::1",
    b"::2",
    b"2001:db8::1",
    b"2001:db8::2",
    b"2001:db8:1::5",
    b"2001:db8:2:3::5",
    b"2001:db9::1",
    b"2001:0db8::1",
    b"2001:DB8::1",
    b"::ffff:1.2.3.4",
    b"::ffff:9.9.9.9",
    b"1.2.3.4",
    b"fe80::1",
    b"",
]
HOSTS = [None, b"h.example", b"x.example"]
INFOS = [None, b"joe", b""]


@pytest.mark.parametrize("with_default", [False, True])
def test_tcprulescheck_ipv6_matrix(tmp_path: Path, with_default: bool) -> None:
    """Every IP/HOST/INFO combination: the judge's tcprulescheck prints what prefork's does (the shared lookup)."""
    text = CHECK_RULES + (b':deny,S="default"\n' if with_default else b"")
    path = tmp_path / "r.cdb"
    path.write_bytes(cdb_bytes(compile_rules(text)))
    seen = set()
    for ip, host, info in itertools.product(IPS, HOSTS, INFOS):
        env = {b"PATH": b"/usr/bin:/bin"}
        for name, value in ((b"TCPREMOTEIP", ip), (b"TCPREMOTEHOST", host), (b"TCPREMOTEINFO", info)):
            if value is not None:
                env[name] = value
        proc = subprocess.run([judge("tcprulescheck"), str(path)], env=env, capture_output=True, timeout=10)
        assert (proc.returncode, proc.stderr) == (0, b"")
        assert report(str(path), env) == proc.stdout, env
        seen.add(proc.stdout)
    assert len(seen) >= 10  # the matrix reaches most rules, not just the default
    mine = subprocess.run(
        [ours("tcprulescheck"), str(path)], env={b"TCPREMOTEIP": b"2001:db8:1::5"}, capture_output=True
    )
    assert mine.stdout == b"rule 2001:db8:1::\ndeny connection\n"


def test_ipv6_prefix_order() -> None:
    """Longest prefix first, cut after each ':' or '.', then the empty key."""
    assert list(candidates(b"::ffff:1.2")) == [b"::ffff:1.2", b"::ffff:1.", b"::ffff:", b"::", b":", b""]
    assert list(candidates(b"1.2.3.4")) == [b"1.2.3.4", b"1.2.3.", b"1.2.", b"1.", b""]


_HEX = st.sampled_from(["0", "1", "db8", "2001", "ffff", "a", "fe80"])
ipv6_st = st.lists(_HEX, min_size=1, max_size=8).flatmap(
    lambda groups: st.integers(0, len(groups)).map(
        lambda cut: (
            ":".join(groups[:cut]) + ("::" if cut < len(groups) or len(groups) < 8 else "") + ":".join(groups[cut:])
        )
    )
)
line_st = st.tuples(
    st.sampled_from(["", "joe@", "@"]),
    ipv6_st,
    st.sampled_from(["", ":"]),
    st.sampled_from(["allow", "deny"]),
    st.lists(st.tuples(st.sampled_from(["X", "Y:Z", "A"]), st.text("ab:,=", max_size=4)), max_size=2),
)


@settings(max_examples=fuzz_examples(100), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(line_st, min_size=1, max_size=6))
def test_generated_ipv6_rules_round_trip(tmp_path: Path, lines: list[tuple]) -> None:
    """Generated IPv6 rules files: the judge writes prefork's bytes, and every key reads back with its own value."""
    text = "".join(
        f"{info}{ip}{tail}:{word}" + "".join(f',{n}="{v}"' for n, v in variables) + "\n"
        for info, ip, tail, word, variables in lines
    ).encode()
    records = compile_rules(text)
    assert [key for key, _ in records] == [f"{i}{ip}{t}".encode() for i, ip, t, _, _ in lines]
    folder = tmp_path / f"case{abs(hash(text))}"
    folder.mkdir()
    proc = subprocess.run(
        [judge("tcprules"), "r.cdb", "r.tmp"], input=text, cwd=folder, capture_output=True, timeout=10
    )
    assert proc.returncode == 0 and (folder / "r.cdb").read_bytes() == cdb_bytes(records)
    db = RulesDB(cdb_bytes(records))
    for key, _ in records:
        assert db.get(key) == dict(reversed(records))[key]  # the first record of a key wins
