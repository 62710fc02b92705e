"""djb-style command lines on top of click.

click's parser already scans the way djb's getopt does once interspersed
arguments are off: bundled flags (``-HRXv``), attached values (``-c30``), a
value option swallowing the rest of its word (``-vHRcv`` is ``-c v``), ``--``
ending the options and a lone ``-`` being an operand.  What differs is the
wording and the exit codes, and the "last flag of a pair wins" rule
(``-h ... -H``); both live here so every command behaves the same.

Deliberate difference from djb: a number option given something that is not a
number (``-c abc``) is refused with a clear message and exit 100 instead of
being read as 0.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import click

from prefork.djb import EXIT_USAGE, progname, write_line

CONTEXT_SETTINGS = {
    "allow_interspersed_args": False,
    "help_option_names": ["--help"],
    "ignore_unknown_options": False,
}


@dataclass(frozen=True)
class Flag:
    """A flag letter that sets ``dest`` to ``value``; of several flags with one dest the last given wins."""

    letter: str
    dest: str
    value: Any
    help: str = ""


class Number(click.ParamType):
    """A non-negative decimal number; anything else is a usage error (not 0 as in djb's scan_ulong)."""

    name = "number"

    def __init__(self, maximum: int | None = None) -> None:
        self.maximum = maximum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        if not (isinstance(value, str) and value.isascii() and value.isdigit()):
            self.fail(f"not a number: {value!r}", param, ctx)
        number = int(value)
        if self.maximum is not None and number > self.maximum:
            self.fail(f"{value} is larger than {self.maximum}", param, ctx)
        return number


class DjbCommand(click.Command):
    """A click command that parses like djb's getopt and reports errors in djb's words.

    ``usage`` is the text after ``PROG: usage: `` (djb prints the real program
    name there, whatever argv[0] was); ``flags`` are the letter flags whose last
    occurrence decides their dest.
    """

    def __init__(
        self,
        *args: Any,
        usage: str,
        flags: Sequence[Flag] = (),
        defaults: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("context_settings", dict(CONTEXT_SETTINGS))
        super().__init__(*args, **kwargs)
        self.djb_usage = usage
        self.djb_flags = list(flags)
        self.djb_defaults = dict(defaults or {})
        for flag in self.djb_flags:
            self.params.insert(
                0,
                click.Option(
                    [f"-{flag.letter}", f"flag_{flag.letter}"],
                    is_flag=True,
                    default=False,
                    help=flag.help or None,
                ),
            )

    # -- parsing -------------------------------------------------------------
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        order: list[str] = []
        parser_make = super().make_parser

        def make_parser(ctx: click.Context) -> Any:
            parser = parser_make(ctx)
            inner = parser.parse_args

            def parse(args: list[str]) -> Any:
                opts, rest, param_order = inner(args)
                order.extend(p.name for p in param_order if p.name)
                return opts, rest, param_order

            parser.parse_args = parse  # type: ignore[method-assign]  # click has no hook for the option order
            return parser

        self.make_parser = make_parser  # type: ignore[method-assign]  # this parse only, deleted below
        try:
            rest = super().parse_args(ctx, args)
        finally:
            del self.make_parser
        dests: dict[str, Any] = {}
        flag: Flag | None  # a Flag in the loops over djb_flags, Flag or None in the lookup by name
        for flag in self.djb_flags:
            dests.setdefault(flag.dest, self.djb_defaults.get(flag.dest))
        by_name = {f"flag_{f.letter}": f for f in self.djb_flags}
        for name in order:
            flag = by_name.get(name)
            if flag is not None:
                dests[flag.dest] = flag.value
        for flag in self.djb_flags:
            ctx.params.pop(f"flag_{flag.letter}", None)
        for dest, value in dests.items():
            ctx.params[dest] = value
        return rest

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.NoSuchOption as e:
            name = e.option_name
            shown = name[1:] if name.startswith("-") and not name.startswith("--") else name
            self.usage_error(f"illegal option -- {shown}")
        except click.BadOptionUsage as e:
            name = e.option_name.lstrip("-") if e.option_name and not e.option_name.startswith("--") else e.option_name
            self.usage_error(f"option requires an argument -- {name}")
        except click.BadParameter as e:
            opt = "/".join(e.param.opts) if e.param is not None else "value"
            self.usage_error(f"bad value for {opt}: {e.message}")
        except click.UsageError as e:
            self.usage_error(e.message)

    def usage_error(self, text: str | None = None) -> NoReturn:
        """Print ``PROG: TEXT`` (if any) and the usage line, exit 100."""
        if text:
            write_line(f"{progname()}: {text}")
        self.print_usage()
        sys.exit(EXIT_USAGE)

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write(wrap_usage(f"usage: {self.djb_usage}", formatter.width or 78) + "\n")

    def print_usage(self) -> None:
        name = self.djb_usage.split(" ", 1)[0]
        write_line(f"{name}: usage: {self.djb_usage}")


def wrap_usage(text: str, width: int = 78) -> str:
    """A usage line wrapped between options (``[ -c limit ]`` stays whole), continuation lines indented."""
    import re

    tokens = re.findall(r"\[[^\]]*\]|\S+", text)
    indent = " " * (len(tokens[0]) + len(tokens[1]) + 2) if len(tokens) > 2 else "  "
    lines = [tokens[0]]
    for token in tokens[1:]:
        if len(lines[-1]) + 1 + len(token) > width and lines[-1].strip():
            lines.append(indent + token)
        else:
            lines[-1] += " " + token
    return "\n".join(lines)


def djb_command(
    usage: str, flags: Iterable[Flag] = (), defaults: dict[str, Any] | None = None, **kwargs: Any
) -> Callable[[Callable[..., Any]], DjbCommand]:
    """Decorator: ``@djb_command(usage=..., flags=[...])`` over click option/argument decorators."""

    def decorator(f: Callable[..., Any]) -> DjbCommand:
        return click.command(cls=DjbCommand, usage=usage, flags=list(flags), defaults=defaults, **kwargs)(f)

    return decorator
