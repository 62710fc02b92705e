"""prefork/options.py, the one command-line parser, and the usage error of every console script.

The getopt is checked against a line-by-line transcription of djb's subgetopt.c (ucspi-tcp 0.88,
daemontools 0.76) on drawn command lines; every console script of pyproject.toml is run with an
unknown option and must name it, print its whole usage line and exit as documented.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest
from conftest import fuzz_examples, ours
from hypothesis import given, settings
from hypothesis import strategies as st

from prefork.options import (
    FLAG,
    MANY,
    VALUE,
    Option,
    UsageError,
    format_help,
    getopt,
    number,
    parse,
    seconds,
    wrap_usage,
)


# -- djb's getopt ----------------------------------------------------------------------------------------------
def subgetopt(argv: list[str], opts: str) -> tuple[list[tuple[str, str | None]], list[str]] | str:
    """djb's subgetopt.c loop as main() runs it until optdone; the first '?' returns its problem text."""
    optind, optpos, found = 0, 0, []
    while True:
        if optind >= len(argv):
            return found, argv[optind:]
        if optpos and optpos >= len(argv[optind]):
            optind += 1
            optpos = 0
            if optind >= len(argv):
                return found, argv[optind:]
        if not optpos:
            if argv[optind][:1] != "-":
                return found, argv[optind:]
            optpos += 1
            c = argv[optind][1:2]
            if c in ("-", ""):
                if c:
                    optind += 1
                return found, argv[optind:]
        c = argv[optind][optpos]
        optpos += 1
        s = 0
        while s < len(opts):
            if c == opts[s]:
                if opts[s + 1 : s + 2] == ":":
                    optarg = argv[optind][optpos:]
                    optind += 1
                    optpos = 0
                    if not optarg:
                        if optind >= len(argv):
                            return f"option requires an argument -- {c}"
                        optarg = argv[optind]
                        optind += 1
                    found.append(("-" + c, optarg))
                else:
                    found.append(("-" + c, None))
                break
            s += 1
            if opts[s : s + 1] == ":":
                s += 1
        else:
            return f"illegal option -- {c}"


WORDS = st.lists(st.sampled_from(["-", "--", "--x", "-a", "-ab", "-c", "-c5", "-ac", "-z", "-az", "x", "", "-b:",
                                  "5"]) | st.text("-abcz:5x", max_size=4), max_size=6)
OPTSTRINGS = st.sampled_from(["", "a", "ab", "c:", "ac:", "abc:", "c:a", "c:b:"])


@settings(max_examples=fuzz_examples(300), deadline=None)
@given(WORDS, OPTSTRINGS)
def test_getopt_is_djbs_subgetopt(args, optstring):
    expected = subgetopt(args, optstring)
    try:
        assert getopt(args, optstring) == expected
    except UsageError as e:
        assert (e.text, e.from_getopt) == (expected, True)


@settings(max_examples=fuzz_examples(100), deadline=None)
@given(WORDS, OPTSTRINGS)
def test_bytes_and_str_scan_alike(args, optstring):
    def run(words):
        try:
            return getopt(words, optstring)
        except UsageError as e:
            return e.text

    as_bytes = run([w.encode() for w in args])
    as_str = run(args)
    if isinstance(as_str, str):
        assert as_bytes == as_str
    else:
        assert as_bytes == tuple([[(n.encode(), v if v is None else v.encode()) for n, v in as_str[0]],
                                  [w.encode() for w in as_str[1]]])


def test_getopt_examples():
    assert getopt(["-vHRc7", "-l0", "x", "-y"], "c:l:vHR") == (
        [("-v", None), ("-H", None), ("-R", None), ("-c", "7"), ("-l", "0")], ["x", "-y"])
    assert getopt(["-c", "-v", "-", "-v"], "c:v") == ([("-c", "-v")], ["-", "-v"])
    with pytest.raises(UsageError) as caught:
        getopt([b"-u\xc3"], "u")
    assert caught.value.text.encode("utf-8", "surrogateescape") == b"illegal option -- \xc3"
    assert caught.value.found == [(b"-u", None)]


def test_long_options_one_style_mixed_with_letters():
    longopts = {"--workers": VALUE, "--json": FLAG, "--scoreboard": MANY}
    assert getopt(["--workers", "2", "-v", "--workers=3", "--json", "--", "-v"], "v", longopts) == (
        [("--workers", "2"), ("-v", None), ("--workers", "3"), ("--json", None)], ["-v"])
    assert getopt(["--scoreboard", "a", "b", "--json", "c"], "", longopts) == (
        [("--scoreboard", "a"), ("--scoreboard", "b"), ("--json", None)], ["c"])
    assert getopt(["--scoreboard=a", "b"], "", longopts) == ([("--scoreboard", "a")], ["b"])
    for args, text in [(["--bogus"], "illegal option -- --bogus"), (["--json=1"], "option takes no argument -- --json"),
                       (["--workers"], "option requires an argument -- --workers"),
                       (["--scoreboard", "--json"], "option requires an argument -- --scoreboard"),
                       (["-x"], "illegal option -- x")]:
        with pytest.raises(UsageError) as caught:
            getopt(args, "", longopts)
        assert caught.value.text == text


def test_without_long_options_any_double_dash_word_ends_the_options():
    assert getopt(["-a", "--whatever", "-a"], "a") == ([("-a", None)], ["-a"])


def test_without_letters_single_dash_words_are_operands():
    assert getopt(["--all", "-Z", "--all"], None, {"--all": FLAG}) == ([("--all", None)], ["-Z", "--all"])


def test_parse_last_of_a_pair_wins_and_converts():
    options = [Option("-h", "host", value=True), Option("-H", "host", value=False),
               Option("-c", "limit", metavar="n", convert=int), Option("--path", "paths", metavar="P", many=True)]
    values, rest = parse(["-hHc", "5", "-h", "--path", "a", "b", "--", "op"], options, defaults={"limit": 40})
    assert (values, rest) == ({"help": False, "host": True, "limit": 5, "paths": ["a", "b"]}, ["op"])
    with pytest.raises(UsageError) as caught:
        parse(["-c", "x"], options)
    assert caught.value.text == "bad value for -c: invalid literal for int() with base 10: 'x'"


@settings(max_examples=fuzz_examples(200), deadline=None)
@given(st.lists(st.sampled_from(["[ -c limit ]", "[ -1UXpP ]", "host", "port", "[ --metrics-textfile PATH ]",
                                 "program", "[ -x rules.cdb ]"]), min_size=1, max_size=14),
       st.integers(30, 100))
def test_wrap_usage_breaks_only_between_options(tokens, width):
    text = "usage: prog " + " ".join(tokens)
    lines = wrap_usage(text, width).split("\n")
    assert " ".join(" ".join(lines).split()) == text
    for line in lines:
        assert line.count("[") == line.count("]")
        assert len(line) <= width or len(line.split("[")) <= 2


def test_help_rows():
    text = format_help("prog [ -c n ] x", "Does things.", [Option("-c", "c", "how many", metavar="n")])
    assert text.startswith("usage: prog [ -c n ] x\n\n  Does things.\n\nOptions:\n  -c n") and "--help" in text


# -- every console script, given an unknown option --------------------------------------------------------------
def _scripts() -> list[str]:
    with open(Path(__file__).resolve().parent.parent / "pyproject.toml", "rb") as f:
        return sorted(tomllib.load(f)["project"]["scripts"])


def _usage(name: str) -> str:
    """The usage line each command prints: its module's USAGE (0.76's own bytes where 0.76 has one)."""
    from prefork import tcpclient, tcprules, tcprulescheck, tcpserver_cli, tcpserver_status
    from prefork.control import (
        envdir,
        envuidgid,
        fghack,
        pgrphack,
        setlock,
        setuidgid,
        softlimit,
        supervise,
        svok,
        svscan,
        svstat,
    )
    from prefork.metrics import exporter

    modules = {"tcpserver": tcpserver_cli, "tcpclient": tcpclient, "tcprules": tcprules,
               "tcprulescheck": tcprulescheck, "supervise": supervise, "svscan": svscan, "svstat": svstat, "svok": svok,
               "envdir": envdir, "envuidgid": envuidgid, "setuidgid": setuidgid, "softlimit": softlimit,
               "setlock": setlock, "pgrphack": pgrphack, "fghack": fghack, "prefork-exporter": exporter,
               "tcpserver-status": tcpserver_status}
    return f"{name}: usage: {modules[name].USAGE}\n"


# 0.88/0.76 give these letters: an unknown letter is refused as their getopt refuses it.
LETTERS = {"tcpserver", "tcpclient", "softlimit", "setlock"}
# 0.76/0.88 give these no options (-Z is their operand, as in the real ones): only prefork's --options are
# options, and an unknown one is refused.  envdir's usage exits 111, as 0.76's.
LONG_ONLY = {"tcprules", "tcprulescheck", "supervise", "svscan", "svstat", "svok", "envdir", "envuidgid",
             "setuidgid", "pgrphack", "fghack", "prefork-exporter", "tcpserver-status"}
# 0.76's logger reads every argument as a script word (-Z deselects), tai64n and tai64nlocal ignore theirs.
NO_OPTIONS = {"multilog", "tai64n", "tai64nlocal"}


@pytest.mark.parametrize("name", _scripts())
def test_unknown_option_is_named_with_the_whole_usage(name, tmp_path):
    option = "--bogus" if name in LONG_ONLY else "-Z"
    done = subprocess.run([ours(name), option, "x", "y", "z"], cwd=tmp_path, stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=60)
    named = f"{name}: illegal option -- {option.lstrip('-') if option == '-Z' else option}\n"
    if name in LETTERS or name in LONG_ONLY:
        code = 111 if name == "envdir" else 100
        assert (done.returncode, done.stdout, done.stderr.decode()) == (code, b"", named + _usage(name))
    elif name == "svc":  # 0.76's svc prints its options line in place of a usage line
        from prefork.control.svc import OPTIONS_LINE

        assert (done.returncode, done.stdout, done.stderr.decode()) == (100, b"", f"{named}{OPTIONS_LINE}\n")
    elif name.startswith("svc-"):  # supervise-scripts' shell getopts: exit 1, the usage names $0
        from prefork.control import supervise_scripts

        cmd = next(c for c in vars(supervise_scripts).values()
                   if isinstance(c, supervise_scripts.Command) and c.name == name)
        assert (done.returncode, done.stdout, done.stderr.decode()) == (1, b"", named + cmd.usage_line(ours(name)) + "\n")
    else:
        assert name in NO_OPTIONS
        assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")


@pytest.mark.parametrize(("word", "positive", "expected"), [
    ("0", False, 0.0), ("1.5", False, 1.5), ("10", True, 10.0), ("0.01", True, 0.01), ("1e3", False, 1000.0),
    ("0", True, None), ("-1", False, None), ("nan", False, None), ("inf", False, None), ("-inf", True, None),
    ("1e9", False, None), ("soon", False, None), ("", False, None), (" 1", False, 1.0),
])
def test_seconds_takes_a_finite_duration(word, positive, expected):
    convert = seconds(positive=positive)
    if expected is None:
        with pytest.raises(ValueError, match=f"^{re.escape(repr(word))}$"):
            convert(word)
    else:
        assert convert(word) == expected


@pytest.mark.parametrize(("word", "ok"), [("0", True), ("65535", True), ("65536", False), ("-1", False),
                                          ("1x", False), ("٣", False), ("", False)])
def test_number_takes_decimal_digits_only(word, ok):
    convert = number(65535)
    if ok:
        assert convert(word) == int(word)
    else:
        with pytest.raises(ValueError):
            convert(word)
