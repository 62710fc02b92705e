"""prefork/options.py's options files: the word splitter, the bounded read, and where the words stand.

The splitter is judged by /bin/sh (the words ``set --`` gives a line of text with nothing in it a shell would
expand) and by shlex's POSIX mode where the two agree (no ``#`` inside a word, no ``$`` or backquote).
The end-to-end behaviour (start, HUP, USR2) is in tests/test_tcpserver_options_file.py.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from prefork.options import (
    FILE_MAX,
    OptionsFileError,
    UsageError,
    expand_options_files,
    read_options_file,
    split_words,
)

# Characters sh takes literally or as quoting, whitespace and comments: no $, `, globs, ~, operators, braces.
PLAIN = "abc-=.,:/@%+_^!01 \t\n'\"\\#"


@pytest.mark.parametrize(("text", "words"), [
    ("", []),
    ("  \n\t ", []),
    ("-c 3 -v", ["-c", "3", "-v"]),
    ("a#b c", ["a#b", "c"]),  # '#' inside a word is a character (shlex would end the line there)
    ("a # the rest\nb", ["a", "b"]),
    ("# only a comment", []),
    ("'x y' \"p q\"", ["x y", "p q"]),
    ("''", [""]),
    ('""', [""]),
    ("a''b", ["ab"]),
    ("'#'x", ["#x"]),
    ("\\#x", ["#x"]),
    ("a\\ b", ["a b"]),
    ("a\\\nb", ["ab"]),  # a line continuation joins
    ("a \\\n b", ["a", "b"]),
    ('"a\\"b"', ['a"b']),
    ('"\\$x \\` \\\\ \\q"', ["$x ` \\ \\q"]),  # inside "": a backslash quotes only $ ` " \ newline
    ("'\\n'", ["\\n"]),
    ("$HOME *.c ~ a;b", ["$HOME", "*.c", "~", "a;b"]),  # no expansion, no operators
    ("a\r\nb\r\n", ["a", "b"]),  # CRLF lines
    ("é \udcff", ["é", "\udcff"]),
])
def test_split_words(text, words):
    assert split_words(text) == words


@pytest.mark.parametrize(("text", "why"), [
    ("'abc", "unterminated ' quote"),
    ('a "b', 'unterminated " quote'),
    ('"\\"', 'unterminated " quote'),
    ("abc\\", "backslash at the end"),
])
def test_split_words_refuses(text, why):
    with pytest.raises(ValueError, match=why):
        split_words(text)


def sh_words(text: str) -> list[str] | None:
    """What /bin/sh makes of TEXT as the arguments of ``set --`` (None: sh refuses it)."""
    script = "set -- " + text + "\nfor w in \"$@\"; do printf '%s\\0' \"$w\"; done"
    done = subprocess.run(["/bin/sh", "-c", script], capture_output=True, timeout=10)
    if done.returncode:
        return None
    return done.stdout.decode().split("\0")[:-1]


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=PLAIN.replace("\n", ""), max_size=30))
def test_split_words_as_sh_splits(text):
    """Differential: the words sh gives, for every line sh takes; an error where sh refuses it.  (An unquoted
    newline would end sh's command: the line-continuation and newline cases are in test_split_words.)"""
    if text.rstrip(" \t").endswith("\\"):  # sh reads a lone trailing backslash as itself; we refuse it
        return
    expected = sh_words(text)
    if expected is None:
        with pytest.raises(ValueError):
            split_words(text)
    else:
        assert split_words(text) == expected


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=PLAIN.replace("#", ""), max_size=40))
def test_split_words_as_shlex_posix(text):
    """Without '#', '$' and backquotes, shlex's POSIX mode (comments on) is the same splitter; but for a
    backslash before a newline, which shlex keeps and sh (and we) take as a line continuation."""
    assume("\\\n" not in text)
    try:
        expected = shlex.split(text, comments=True, posix=True)
    except ValueError:
        with pytest.raises(ValueError):
            split_words(text)
        return
    assert split_words(text) == expected


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(min_size=0, max_size=12).filter(lambda w: "\0" not in w), max_size=8))
def test_quoted_words_come_back(words):
    """Any words, quoted by shlex.quote and joined, split back into themselves."""
    assert split_words(" ".join(shlex.quote(w) for w in words)) == words


# -- reading -----------------------------------------------------------------------------------------------
def test_read_a_file_and_a_symlink_to_it(tmp_path):
    f = tmp_path / "opts"
    f.write_bytes(b"-c 3 # limit\n-v '0' 'a b'\n\xff\n")
    (tmp_path / "link").symlink_to(f)
    assert read_options_file(str(f)) == ["-c", "3", "-v", "0", "a b", os.fsdecode(b"\xff")]
    assert read_options_file(str(tmp_path / "link")) == read_options_file(str(f))


@pytest.mark.parametrize("make", ["missing", "dir", "fifo", "fifo-link", "loop", "unreadable"])
def test_read_refuses_at_once(tmp_path, make):
    path = tmp_path / "opts"
    if make == "dir":
        path.mkdir()
    elif make in ("fifo", "fifo-link"):
        os.mkfifo(tmp_path / "fifo")
        path = tmp_path / "fifo" if make == "fifo" else path
        if make == "fifo-link":
            path.symlink_to(tmp_path / "fifo")
    elif make == "loop":
        path.symlink_to(path)
    elif make == "unreadable":
        if os.geteuid() == 0:
            pytest.skip("root reads a mode 000 file")
        path.write_text("-v")
        path.chmod(0)
    start = time.monotonic()
    with pytest.raises(OptionsFileError) as info:
        read_options_file(str(path))
    assert time.monotonic() - start < 1.0  # a FIFO with no writer is never waited for
    assert info.value.unreadable and str(info.value).startswith(f"{path}: ")


def test_read_bounds_the_size(tmp_path):
    path = tmp_path / "opts"
    path.write_bytes(b" " * FILE_MAX)
    assert read_options_file(str(path)) == []
    path.write_bytes(b" " * (FILE_MAX + 1))
    with pytest.raises(OptionsFileError, match="larger than 65536 bytes") as info:
        read_options_file(str(path))
    assert info.value.unreadable


def test_read_dev_zero_is_refused(tmp_path):
    with pytest.raises(OptionsFileError, match="not a regular file"):
        read_options_file("/dev/zero")


def test_bad_quoting_is_a_usage_problem(tmp_path):
    path = tmp_path / "opts"
    path.write_text("-B 'hello")
    with pytest.raises(OptionsFileError, match="opts: unterminated ' quote") as info:
        read_options_file(str(path))
    assert not info.value.unreadable


# -- where the words stand ----------------------------------------------------------------------------------
OPTSTRING = "vc:x:"
LONGOPTS = {"--options-file": 1, "--workers": 1, "--flag": 0, "--help": 0}


def expand(args, files):
    return expand_options_files(args, OPTSTRING, LONGOPTS, "--options-file", lambda path: list(files[path]))


def test_words_stand_where_the_option_stands():
    files = {"f": ["-c", "3", "host", "port", "prog", "--options-file", "g"]}
    out, spans = expand(["-v", "--options-file", "f", "arg"], files)
    assert out == ["-v", "-c", "3", "host", "port", "prog", "--options-file", "g", "arg"]
    assert spans == [(1, 8, "f")]  # the operands started inside: the program's own --options-file stays a word


def test_equals_form_and_two_files():
    files = {"a": ["-v"], "b": ["--workers", "2"]}
    out, spans = expand(["--options-file=a", "-c5", "--options-file", "b", "h", "p", "prog"], files)
    assert out == ["-v", "-c5", "--workers", "2", "h", "p", "prog"]
    assert spans == [(0, 1, "a"), (2, 4, "b")]


def test_a_value_of_a_letter_or_after_the_operands_is_not_expanded():
    files: dict[str, list[str]] = {}
    assert expand(["-c", "--options-file", "h"], files)[0] == ["-c", "--options-file", "h"]
    assert expand(["h", "p", "prog", "--options-file", "f"], files)[0] == ["h", "p", "prog", "--options-file", "f"]
    assert expand(["--", "--options-file", "f"], files)[0] == ["--", "--options-file", "f"]


def test_a_file_whose_last_option_takes_the_next_word():
    out, _ = expand(["--options-file", "f", "7", "h"], {"f": ["-v", "-c"]})
    assert out == ["-v", "-c", "7", "h"]


def test_nesting_and_bad_words_are_refused_with_their_place():
    with pytest.raises(UsageError, match="--options-file inside an options file") as info:
        expand(["--options-file", "f"], {"f": ["-v", "--options-file", "g"], "g": []})
    assert info.value.index == 1 and info.value.spans == [(0, 3, "f")]
    with pytest.raises(UsageError, match="illegal option -- z") as info:
        expand(["-v", "--options-file", "f"], {"f": ["-c", "1", "-z"]})
    assert info.value.index == 3 and info.value.from_getopt and info.value.found == [("-v", None), ("-c", "1")]
    with pytest.raises(UsageError, match="option requires an argument -- --options-file"):
        expand(["-v", "--options-file"], {})


def test_origins_trace_each_option_to_its_word():
    """ORIGINS: the word index of every option getopt finds in the result, the file's options included."""
    origins: list[int] = []
    out, spans = expand_options_files(["-v", "--options-file", "f", "-c", "4", "h"], OPTSTRING, LONGOPTS,
                                      "--options-file", lambda path: ["-vc", "3", "--workers=2"], origins)
    assert out == ["-v", "-vc", "3", "--workers=2", "-c", "4", "h"]
    assert spans == [(1, 4, "f")]
    assert origins == [0, 1, 1, 3, 4]  # -v; -v and -c from "-vc"; --workers; the last -c


def test_a_bad_value_is_named_with_its_file(tmp_path):
    """The front end traces parse's bad value back to the file it came from, and not one from the command line."""
    from prefork import tcpserver_cli
    from prefork.tcpserver_cli import expand, in_file

    (tmp_path / "opts").write_text("-v -c x")
    args = ["-c", "y", "--options-file", str(tmp_path / "opts"), "-c", "5"]
    for bad, named in ((1, False), (4, True)):
        words = list(args)
        words[1], words[5] = ("y", "5") if bad == 1 else ("3", "5")
        origins: list[int] = []
        expanded, spans = expand(words, origins)
        with pytest.raises(UsageError) as info:
            tcpserver_cli.parse(expanded, tcpserver_cli.OPTIONS, defaults=tcpserver_cli.DEFAULTS)
        text = in_file(info.value, spans, origins).text
        assert text.startswith(f"options file {tmp_path / 'opts'}: ") == named, text
