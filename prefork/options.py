"""The one command-line parser of every prefork command: djb's getopt, one long-option style, djb's usage errors.

Why a module of its own rather than prefork/djb.py or prefork/cli.py: svc, svstat, svok,
multilog and supervise run often or live long and import nothing they do not need (no
click, no typing, no dataclasses, no re: see control/log/multilog_cli.py and
control/svstat.py), while prefork/djb.py is the errno wording every process loads.  This
module is that lean too (it imports prefork.djb only), so the smallest tool and tcpserver
share one scanner; click is gone from the command lines.

``getopt`` scans as djb's sgetopt (ucspi-tcp 0.88, daemontools 0.76): letters cluster
(``-HRX``), a value is attached or the next word (``-c30``, ``-c 30``, ``-vHRc7``), a lone
``-`` and the first word not starting with ``-`` end the options, ``--`` ends them and is
dropped.  prefork's long options have one style, ``--name value`` or ``--name=value``,
mixed freely with the letters.  A command that has no long options keeps djb's rule that
any word starting with ``--`` ends the options (``setlock --x f prog`` runs prog); one that
has them refuses an unknown one.  A command 0.76 gives no options at all (svstat, svok,
envdir...) passes ``optstring=None``: words starting with a single ``-`` stay operands.

``parse`` adds declared options (``Option``), conversions and defaults on top, and
``usage_error`` prints what djb prints: ``PROG: illegal option -- X`` (PROG from argv[0],
as sgetopt), then ``NAME: usage: ...``, exit 100.
"""

from __future__ import annotations

import os

from prefork.djb import EXIT_USAGE, progname, write_line

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: svstat and multilog do not import typing
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence
    from typing import Any, NoReturn

FLAG, VALUE, MANY = 0, 1, 2  # what a long option takes: nothing, one word, one or more words


class UsageError(Exception):
    """A bad command line.  ``text`` follows ``PROG: ``; ``from_getopt``: a letter problem, named by argv[0]."""

    def __init__(self, text: str, from_getopt: bool = False) -> None:
        super().__init__(text)
        self.text = text
        self.from_getopt = from_getopt
        self.found: list[Any] = []
        self.index = -1  # expand_options_files: the word where the scan stopped, and the files' spans
        self.spans: list[tuple[int, int, str]] = []
        self.option = -1  # parse: the bad value's option, as an index into getopt's options


def getopt(args: Sequence[Any], optstring: str | None, longopts: dict[str, int] | None = None) -> tuple[list[Any], list[Any]]:
    """``(options, operands)`` of ARGS (all str or all bytes); each option is ``(name, value or None)``.

    A name is ``-c`` or ``--name``, of the type of ARGS.  OPTSTRING is djb's (``"c:x:HR"``:
    ``:`` after a letter that takes a value), or None when there are no letters at all.
    LONGOPTS maps ``--name`` to FLAG, VALUE or MANY (MANY: the words up to the next one
    starting with ``--``); None keeps djb's ``--anything`` as ``--``.  Raises UsageError, whose
    ``found`` holds the options before the problem (a C loop would have acted on them already).
    """
    opts: list[Any] = []
    try:
        index = _scan(args, optstring, longopts, opts)
    except UsageError as e:
        e.found = opts
        raise
    return opts, list(args[index:])


def _scan(args: Sequence[Any], optstring: str | None, longopts: dict[str, int] | None, opts: list[Any]) -> int:
    index = 0
    while index < len(args):
        word = args[index]
        if word[:1] not in ("-", b"-"):
            break
        if word[1:2] in ("-", b"-"):
            index += 1
            if len(word) == 2 or longopts is None:
                break
            index = _long(args, index, word, longopts, opts)
            continue
        if len(word) < 2 or optstring is None:
            break  # "-" and, without letters, every "-word" are operands
        index = _letters(args, index, word, optstring, opts)
    return index


def _letters(args: Sequence[Any], index: int, word: Any, optstring: str, opts: list[Any]) -> int:
    """One cluster ``-abc`` (or ``-cVALUE``); the index of the next word."""
    spec = optstring.encode() if isinstance(word, bytes) else optstring
    pos = 1
    index += 1
    while pos < len(word):
        letter = word[pos : pos + 1]
        pos += 1
        at = spec.find(letter) if letter not in (":", b":") else -1
        if at < 0:
            raise UsageError(f"illegal option -- {_text(letter)}", True)
        name = word[:1] + letter
        if spec[at + 1 : at + 2] in (":", b":"):
            if pos < len(word):
                opts.append((name, word[pos:]))
            elif index < len(args):
                opts.append((name, args[index]))
                index += 1
            else:
                raise UsageError(f"option requires an argument -- {_text(letter)}", True)
            return index
        opts.append((name, None))
    return index


def _long(args: Sequence[Any], index: int, word: Any, longopts: dict[str, int], opts: list[Any]) -> int:
    """``--name``, ``--name value`` or ``--name=value`` (ARGS[index - 1] is WORD); the index of the next word."""
    eq = "=" if isinstance(word, str) else b"="
    name, sep, value = word.partition(eq)
    kind = longopts.get(_text(name))
    if kind is None:
        raise UsageError(f"illegal option -- {_text(name)}")
    if kind == FLAG:
        if sep:
            raise UsageError(f"option takes no argument -- {_text(name)}")
        opts.append((name, None))
        return index
    if sep:
        opts.append((name, value))
        return index
    if kind == MANY:
        start = index
        while index < len(args) and args[index][:2] not in ("--", b"--"):
            opts.append((name, args[index]))
            index += 1
        if index == start:
            raise UsageError(f"option requires an argument -- {_text(name)}")
        return index
    if index >= len(args):
        raise UsageError(f"option requires an argument -- {_text(name)}")
    opts.append((name, args[index]))
    return index + 1


def _text(part: Any) -> str:
    return part if isinstance(part, str) else os.fsdecode(part)


class Option:
    """A declared option: ``-c``/``--name``; FLAG (no metavar) stores ``value``, else ``convert(word)``.

    Of several options with one ``dest`` the last given wins (``-h ... -H``); a MANY option
    collects a list.  ``convert`` raises ValueError(why) for a bad value.
    """

    __slots__ = ("name", "dest", "help", "metavar", "value", "convert", "many")

    def __init__(self, name: str, dest: str, help: str = "", *, metavar: str | None = None, value: object = True,
                 convert: Callable[[str], object] | None = None, many: bool = False) -> None:
        self.name, self.dest, self.help, self.metavar = name, dest, help, metavar
        self.value, self.convert, self.many = value, convert, many

    @property
    def kind(self) -> int:
        return FLAG if self.metavar is None else MANY if self.many else VALUE


def parse(args: Sequence[str], options: Iterable[Option], *, letters: bool = True,
          defaults: Mapping[str, object] | None = None) -> tuple[dict[str, Any], list[str]]:
    """``(values by dest, operands)``; ``--help`` is always known and sets dest ``help``.

    LETTERS False: the command has no letter options (0.76 gives it none), so ``-x`` is an operand.
    """
    declared = list(options)
    by_name = {o.name: o for o in declared}
    optstring, longopts = scan_spec(declared)
    found, rest = getopt(args, optstring if letters else None, longopts)
    values: dict[str, Any] = {"help": False}
    for o in declared:
        values.setdefault(o.dest, [] if o.many else None)
    values.update(defaults or {})
    for at, (name, word) in enumerate(found):
        option = by_name.get(name)
        if option is None:
            values["help"] = True
        elif word is None:
            values[option.dest] = option.value
        else:
            try:
                value = word if option.convert is None else option.convert(word)
            except ValueError as e:
                error = UsageError(f"bad value for {name}: {e}")
                error.option = at
                raise error from None
            if option.many:
                values[option.dest].append(value)
            else:
                values[option.dest] = value
    return values, rest


def scan_spec(options: Iterable[Option]) -> tuple[str, dict[str, int]]:
    """getopt's OPTSTRING and LONGOPTS for these declared options (``--help`` included)."""
    declared = list(options)
    optstring = "".join(o.name[1] + (":" if o.kind else "") for o in declared if o.name[1] != "-")
    longopts = {o.name: o.kind for o in declared if o.name[1] == "-"}
    longopts.setdefault("--help", FLAG)
    return optstring, longopts


def command_line(args: Sequence[str], usage: str, help: str | Callable[[], str], options: Iterable[Option] = (), *,
                 letters: bool = True, defaults: Mapping[str, object] | None = None,
                 code: int = EXIT_USAGE,
                 usage_after: Callable[[list[Any]], str] | None = None) -> tuple[dict[str, Any], list[str]]:
    """``parse`` for a command: ``--help`` prints HELP (text, or a function making it) and exits 0; a bad
    option prints what it is and the usage, exit CODE (100; envdir's usage exits 111).  USAGE_AFTER, when
    given, picks the usage line from the options read before the bad one (``UsageError.found``)."""
    try:
        values, operands = parse(args, options, letters=letters, defaults=defaults)
    except UsageError as e:
        usage_error(usage if usage_after is None else usage_after(e.found), e, code=code)
    if values.pop("help"):
        text = help if isinstance(help, str) else help()
        write_line(text.rstrip("\n") + "\n", 1)
        raise SystemExit(0)
    return values, operands


def first_word_option(args: Sequence[str], usage: str, help: str | Callable[[], str], code: int = EXIT_USAGE) -> None:
    """For a command 0.76 gives no options: a first word starting with ``--`` (not ``--`` itself) is prefork's.

    ``--help`` prints HELP and exits 0; any other is a usage error naming it.  Every other first word,
    ``-x`` and ``--`` included, stays an operand as in 0.76.
    """
    if args[:1] and args[0][:2] == "--" and args[0] != "--":
        command_line(args[:1], usage, help, letters=False, code=code)


def number(maximum: int | None = None) -> Callable[[str], int]:
    """A converter for a decimal number: anything else is refused (djb's scan_ulong would read it as 0)."""

    def convert(word: str) -> int:
        if not (word.isascii() and word.isdigit()):
            raise ValueError(f"not a number: {word!r}")
        if maximum is not None and int(word) > maximum:
            raise ValueError(f"{word} is larger than {maximum}")
        return int(word)

    return convert


def seconds(positive: bool = False, maximum: float = 1e9) -> Callable[[str], float]:
    """A converter for a duration: a decimal number of seconds, at least 0 (above 0 if POSITIVE), below MAXIMUM.

    NaN and the infinities are refused with everything else that is no such number: either would break a
    timer (a NaN deadline never compares, an infinite one overflows).  The ValueError's text is the word.
    """

    def convert(word: str) -> float:
        try:
            value = float(word)
        except ValueError:
            raise ValueError(repr(word)) from None
        if not ((value > 0) if positive else (value >= 0)) or not value < maximum:
            raise ValueError(repr(word))
        return value

    return convert


def usage_error(usage: str, error: UsageError | str | None = None, prog: str | None = None,
                code: int = EXIT_USAGE) -> NoReturn:
    """Print ``PROG: ERROR`` (if any) and ``NAME: usage: USAGE`` on stderr, exit 100.

    NAME is USAGE's first word, as djb prints the real name there; PROG is argv[0]'s basename
    for a getopt letter problem (as sgetopt), else PROG (default: NAME).
    """
    name = usage.split(" ", 1)[0]
    if error is not None:
        text = error if isinstance(error, str) else error.text
        who = progname() if isinstance(error, UsageError) and error.from_getopt else prog or name
        write_line(f"{who}: {text}")
    write_line(f"{name}: usage: {usage}")
    raise SystemExit(code)


def wrap_usage(text: str, width: int = 78) -> str:
    """A usage line wrapped between options (``[ -c limit ]`` stays whole), continuation lines indented."""
    tokens: list[str] = []
    for word in text.split(" "):
        if tokens and tokens[-1].startswith("[") and not tokens[-1].endswith("]"):
            tokens[-1] += " " + word
        elif word:
            tokens.append(word)
    indent = " " * (len(tokens[0]) + len(tokens[1]) + 2) if len(tokens) > 2 else "  "
    lines = [tokens[0]]
    for token in tokens[1:]:
        if len(lines[-1]) + 1 + len(token) > width and lines[-1].strip():
            lines.append(indent + token)
        else:
            lines[-1] += " " + token
    return "\n".join(lines)


def format_help(usage: str, description: str, options: Iterable[Option], width: int = 78) -> str:
    """``--help`` text: the usage wrapped between options, DESCRIPTION's paragraphs, one row per option."""
    import textwrap

    out = [wrap_usage(f"usage: {usage}", width), ""]
    for paragraph in textwrap.dedent(description).strip().split("\n\n"):
        out += textwrap.wrap(" ".join(paragraph.split()), width, initial_indent="  ", subsequent_indent="  ")
        out.append("")
    rows = [(o.name + (f" {o.metavar}" if o.metavar else ""), o.help) for o in options]
    rows.append(("--help", "show this text and exit"))
    column = min(max(len(term) for term, _ in rows) + 4, 30)
    out.append("Options:")
    for term, text in rows:
        lines = textwrap.wrap(text, width - column) or [""]
        if len(term) + 4 > column:
            out.append(f"  {term}")
        else:
            lines[0] = f"  {term:<{column - 2}}{lines[0]}"
            out.append(lines.pop(0).rstrip())
        out += [" " * column + line for line in lines]
    return "\n".join(out) + "\n"


# -- options files: words read from a file, standing where the option that names them stands --------------
FILE_MAX = 65536  # bytes an options file may hold: it is read whole, so a huge one is refused, not slurped
BLANKS = " \t\r\n"  # \r too, so a file with CRLF lines splits as its author meant


class OptionsFileError(Exception):
    """An options file that cannot be read (``unreadable``: exit 111) or split (exit 100); ``str()`` names it."""

    def __init__(self, path: str, text: str, unreadable: bool) -> None:
        super().__init__(f"{path}: {text}")
        self.unreadable = unreadable


def split_words(text: str) -> list[str]:
    """TEXT's words as a POSIX shell splits a command line, with no expansion at all.

    Blanks (space, tab, CR, newline) separate words; ``'...'`` is literal; ``"..."``
    is literal but for a backslash before ``$ ` " \\`` or a newline; a backslash
    outside quotes makes the next character literal (before a newline: both
    vanish); ``#`` at the start of a word comments out the rest of the line.
    ``$``, backquotes, globs, ``~`` and ``; | & < > ( )`` are ordinary characters.
    Raises ValueError naming an unterminated quote or a backslash at the end.
    Why not shlex: it imports re (the lean server must not, see lean.py) and ends a
    word at a ``#`` inside it, where a shell does not.
    """
    words: list[str] = []
    word: list[str] | None = None  # None: between words
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        i += 1
        if ch in BLANKS:
            if word is not None:
                words.append("".join(word))
                word = None
            continue
        if word is None:
            if ch == "#":
                end = text.find("\n", i)
                i = n if end < 0 else end + 1
                continue
            word = []
        if ch == "\\":
            if i >= n:
                raise ValueError("backslash at the end")
            if text[i] != "\n":
                word.append(text[i])
            elif not word:
                word = None  # a line continuation between words starts none
            i += 1
        elif ch == "'":
            end = text.find("'", i)
            if end < 0:
                raise ValueError("unterminated ' quote")
            word.append(text[i:end])
            i = end + 1
        elif ch == '"':
            while True:
                if i >= n:
                    raise ValueError('unterminated " quote')
                ch = text[i]
                i += 1
                if ch == '"':
                    break
                if ch == "\\" and i < n and text[i] in '$`"\\\n':
                    if text[i] != "\n":
                        word.append(text[i])
                    i += 1
                else:
                    word.append(ch)
        else:
            word.append(ch)
    if word is not None:
        words.append("".join(word))
    return words


def read_options_file(path: str, limit: int = FILE_MAX) -> list[str]:
    """The words of the options file PATH; raises OptionsFileError.

    Only a regular file (a symlink to one is fine) of at most LIMIT bytes: opened without blocking, so a
    FIFO or a device costs no wait, and read whole in one bounded read.  Bytes that are not UTF-8 are kept
    as the command line keeps them (os.fsdecode).
    """
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise OptionsFileError(path, _errstr(e), True) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OptionsFileError(path, "not a regular file", True)
        data = b""
        while len(data) <= limit:
            chunk = os.read(fd, limit + 1 - len(data))
            if not chunk:
                break
            data += chunk
    except OSError as e:
        raise OptionsFileError(path, _errstr(e), True) from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise OptionsFileError(path, f"larger than {limit} bytes", True)
    try:
        return split_words(os.fsdecode(data))
    except ValueError as e:
        raise OptionsFileError(path, str(e), False) from None


def _errstr(e: OSError) -> str:
    from prefork.djb import errstr

    return errstr(e)


def expand_options_files(args: Sequence[str], optstring: str, longopts: dict[str, int], name: str,
                         read: Callable[[str], list[str]] = read_options_file,
                         origins: list[int] | None = None) -> tuple[list[str], list[tuple[int, int, str]]]:
    """ARGS with each option NAME (``--options-file FILE`` or ``--options-file=FILE``) among the options
    replaced, where it stands, by READ(FILE)'s words; and the spans ``(start, end, FILE)`` those words took.

    Only the options are scanned, as ``getopt`` scans them, so the word after the operands
    starts stays the program's.  A file naming NAME again is refused (no nesting), as is a bad
    word (UsageError, ``index`` set to the word where the scan stopped).  OptionsFileError
    passes through.  ORIGINS, if given, gets the word index of each option ``getopt`` will find in
    the result, in its order (so a bad value ``parse`` finds can be traced to its file).
    """
    out = list(args)
    spans: list[tuple[int, int, str]] = []
    found: list[Any] = []
    index = 0
    try:
        while index < len(out):
            word = out[index]
            if word[:1] != "-" or word == "-" or word == "--":
                break
            at = index
            key, sep, value = word.partition("=")
            before = len(found)
            if word[:2] != "--":
                index = _letters(out, index, word, optstring, found)
            elif key != name:
                index = _long(out, index + 1, word, longopts, found)
            elif any(start <= index < end for start, end, _ in spans):
                raise UsageError(f"{name} inside an options file")
            else:
                end = index + 1
                if not sep:
                    if end >= len(out):
                        raise UsageError(f"option requires an argument -- {name}")
                    value = out[end]
                    end += 1
                words = read(value)
                out[index:end] = words
                spans.append((index, index + len(words), value))
            if origins is not None:
                origins += [at] * (len(found) - before)
    except UsageError as e:
        e.index, e.found, e.spans = at, found, spans
        raise
    return out, spans
