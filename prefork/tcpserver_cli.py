"""``tcpserver``: the command line of ucspi-tcp 0.88, served by a preforking master."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import cast

from prefork.djb import EXIT_USAGE, write_line
from prefork.options import (
    Option,
    OptionsFileError,
    UsageError,
    command_line,
    expand_options_files,
    format_help,
    number,
    parse,
    scan_spec,
    seconds,
    usage_error,
)
from prefork.scoreboard_read import MAX_SLOTS
from prefork.serverconfig import DEFAULT_BACKLOG, RELOAD_TABLE_LIMIT, ServerConfig

TYPE_CHECKING = False  # as in the lean modules
if TYPE_CHECKING:
    from typing import TypedDict

    class Options(TypedDict):
        """What parse() returns: the FLAGS' dests and the options below, as their converters make them."""

        print_port: bool
        env_ids: bool
        rules_missing_ok: bool
        paranoid: bool
        remote_host_lookup: bool
        ident: bool
        keep_ip_options: bool
        nodelay: bool
        verbosity: int
        limit: int
        rules: str | None
        banner: str
        gid: int
        uid: int
        backlog: int
        localname: str | None
        timeout: int
        workers: int | None
        max_workers: int | None
        drain_timeout: float
        scoreboard: str | None
        name: str
        ident_port: int
        dns_timeout: int
        proxy_protocol: bool
        metrics: str | None
        metrics_textfile: str | None
        metrics_user: str | None
        family: int
        interface: str | None
        options_file: bool

OPTIONS_FILE = "--options-file"
USAGE = (
    "tcpserver [ -1UXpPhHrRoOdDqQv ] [ -c limit ] [ -x rules.cdb ] [ -B banner ] [ -g gid ] [ -u uid ] "
    "[ -b backlog ] [ -l localname ] [ -t timeout ] host port program"
)
IPV6_OPTIONS = ("-4", "-6", "-I")
# ucspi-tcp-ipv6's usage line: printed instead of 0.88's when the command line used -4, -6 or -I
# (docs/reference/tcpserver.md, IPv6), so every 0.88 command line keeps 0.88's bytes.
USAGE6 = (
    "tcpserver [ -461UXpPhHrRoOdDqQv ] [ -c limit ] [ -x rules.cdb ] [ -B banner ] [ -g gid ] [ -u uid ] "
    "[ -b backlog ] [ -l localname ] [ -t timeout ] [ -I interface ] host port program"
)

FLAGS = [
    Option("-4", "family", "IPv4 only: an IPv6 host cannot be bound (:: is 0.0.0.0)", value=4),
    Option("-6", "family", "show IPv4 clients as IPv6 (PROTO=TCP6, ::ffff:a.b.c.d); host 0 is ::", value=6),
    Option("-1", "print_port", "print the local port on stdout once listening (with --metrics, then its port)", value=True),
    Option("-U", "env_ids", "take the uid and gid from $UID and $GID", value=True),
    Option("-X", "rules_missing_ok", "with -x: a rules file that does not exist allows everything", value=True),
    Option("-p", "paranoid", "keep TCPREMOTEHOST only if its A records contain the remote IP", value=True),
    Option("-P", "paranoid", "do not check TCPREMOTEHOST (default)", value=False),
    Option("-h", "remote_host_lookup", "look up TCPREMOTEHOST in DNS (default)", value=True),
    Option("-H", "remote_host_lookup", "do not look up TCPREMOTEHOST", value=False),
    Option("-r", "ident", "ask the client's ident server for TCPREMOTEINFO (default)", value=True),
    Option("-R", "ident", "do not ask for TCPREMOTEINFO", value=False),
    Option("-o", "keep_ip_options", "leave IP options on accepted connections", value=True),
    Option("-O", "keep_ip_options", "kill IP options (default)", value=False),
    Option("-d", "nodelay", "leave Nagle on (default)", value=False),
    Option("-D", "nodelay", "set TCP_NODELAY", value=True),
    Option("-q", "verbosity", "print nothing", value=0),
    Option("-Q", "verbosity", "print only warnings and errors (default)", value=1),
    Option("-v", "verbosity", "print a line per connection event", value=2),
]
DEFAULTS: dict[str, object] = {
    "print_port": False,
    "env_ids": False,
    "rules_missing_ok": False,
    "paranoid": False,
    "remote_host_lookup": True,
    "ident": True,
    "keep_ip_options": False,
    "nodelay": False,
    "verbosity": 1,
    "proxy_protocol": False,
    "family": 0,
}


def _metrics_address(word: str) -> str:
    """``--metrics HOST:PORT``, read as prefork-exporter's ``--listen`` reads it."""
    from prefork.exporter_child import format_address, parse_address  # only when the option is given

    return format_address(*parse_address(word))


def _path(word: str) -> str:
    if not word:
        raise ValueError("empty path")
    return word


def _account(word: str) -> str:
    """An account name or UID:GID (``--metrics-user``), checked now: an unknown one is a usage error."""
    from prefork.exporter_child import resolve_user

    resolve_user(word)
    return word


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


OPTIONS = [
    *FLAGS,
    Option("-c", "limit", "at most this many programs at once (40)", metavar="limit", convert=number()),
    Option("-x", "rules", "rules cdb made by tcprules, read for every connection", metavar="rules.cdb"),
    Option("-B", "banner", "write this to each client right after accepting it", metavar="banner"),
    Option("-g", "gid", "switch to this gid after binding", metavar="gid", convert=number()),
    Option("-u", "uid", "switch to this uid after binding", metavar="uid", convert=number()),
    Option("-b", "backlog", f"listen() backlog ({DEFAULT_BACKLOG})", metavar="backlog", convert=number()),
    Option("-l", "localname", "TCPLOCALHOST, instead of a DNS lookup of the local IP", metavar="localname"),
    Option("-t", "timeout", "ident timeout in seconds (26)", metavar="timeout", convert=number()),
    Option("-I", "interface", "the interface of a link-local IPv6 host (its scope)", metavar="interface"),
    Option(OPTIONS_FILE, "options_file", "FILE's words (shell quoting, # comments, no expansion) stand here; "
           "HUP and USR2 read FILE again", metavar="FILE"),
    Option("--workers", "workers", f"worker processes that accept (default: CPUs; at most {MAX_SLOTS})", metavar="N",
           convert=number(MAX_SLOTS)),
    Option("--max-workers", "max_workers", "scoreboard slots: SIGTTIN adds workers up to N (default: --workers)",
           metavar="N", convert=number(MAX_SLOTS)),
    Option("--drain-timeout", "drain_timeout", "after SIGQUIT, seconds running programs get before SIGTERM (30)",
           metavar="SECONDS", convert=seconds(maximum=1e6)),
    Option("--scoreboard", "scoreboard", "shared-memory status file (default /dev/shm/prefork-tcpserver.PID, "
           "removed at exit)", metavar="PATH"),
    Option("--name", "name", "service name recorded in the scoreboard for metrics", metavar="NAME"),
    Option("--ident-port", "ident_port", "port of the ident servers (113)", metavar="PORT", convert=number(65535)),
    Option("--dns-timeout", "dns_timeout", "seconds allowed for each DNS lookup (10)", metavar="SECONDS",
           convert=number()),
    Option("--proxy-protocol", "proxy_protocol", "each connection starts with a PROXY header (v1 or v2) naming "
           "the real client; without one within -t seconds it is dropped", value=True),
    Option("--metrics", "metrics", "serve Prometheus metrics at http://HOST:PORT/metrics (port 0: one chosen at "
           "start, shown by tcpserver-status and by -1 as a second line 'metrics PORT')", metavar="HOST:PORT", convert=_metrics_address),
    Option("--metrics-textfile", "metrics_textfile", "also write the metrics to PATH for node_exporter's textfile "
           "collector", metavar="PATH", convert=_path),
    Option("--metrics-user", "metrics_user", "the account (or UID:GID) the exporter runs as when tcpserver keeps "
           "root (default nobody)", metavar="USER", convert=_account),
]
DEFAULTS.update(limit=40, banner="", gid=0, uid=0, backlog=DEFAULT_BACKLOG, timeout=26, name="", ident_port=113,
                dns_timeout=10, drain_timeout=30)
DESCRIPTION = """Accept TCP connections on HOST PORT and run PROGRAM for each, the socket as stdin and stdout.

Drop-in for ucspi-tcp 0.88's tcpserver: same options, environment, log lines and rules files; connections are
accepted by pre-forked workers."""


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: 0.88's command line, prefork's long options mixed in."""
    values, operands = parse_command_line(sys.argv[1:] if argv is None else argv)
    serve(operands, values)


def usage_after(found: list[tuple[str, str | None]]) -> str:
    """The usage line of a bad command line: ucspi-tcp-ipv6's if -4, -6 or -I came before the problem."""
    return USAGE6 if any(name in IPV6_OPTIONS for name, _ in found) else USAGE


def parse_command_line(args: Sequence[str]) -> tuple[Options, list[str]]:
    """The options and operands of ARGS; ``--help`` and a bad option end the process (0, or 100 with the usage).

    ``--options-file FILE`` is replaced by FILE's words first: a file that cannot be read ends it with 111.
    """
    # getopt problems are printed even under -q, as 0.88 prints them
    origins: list[int] = []
    spans: list[tuple[int, int, str]] = []  # an error of expand() itself names its file already
    try:
        words, spans = expand(args, origins)
        if spans:
            parse(words, OPTIONS, defaults=DEFAULTS)  # only to name the file of a bad value (-c x)
    except UsageError as e:
        usage_error(usage_after(e.found), in_file(e, spans, origins))
    except OptionsFileError as e:
        if e.unreadable:
            write_line(f"tcpserver: fatal: unable to read options file {e}")
            raise SystemExit(111) from None
        usage_error(USAGE, f"options file {e}")
    values, operands = command_line(words, USAGE, lambda: format_help(USAGE, DESCRIPTION, OPTIONS), OPTIONS,
                                    defaults=DEFAULTS, usage_after=usage_after)
    values["options_file"] = bool(spans)
    return cast("Options", values), operands


def expand(args: Sequence[str], origins: list[int] | None = None) -> tuple[list[str], list[tuple[int, int, str]]]:
    """ARGS with every ``--options-file FILE`` replaced by FILE's words (options.expand_options_files);
    a bad word among a file's words is named with its file."""
    optstring, longopts = scan_spec(OPTIONS)
    try:
        return expand_options_files(args, optstring, longopts, OPTIONS_FILE, origins=origins)
    except UsageError as e:
        raise in_file(e, e.spans, [e.index]) from None


def in_file(error: UsageError, spans: list[tuple[int, int, str]], origins: list[int]) -> UsageError:
    """ERROR, named with its options file when its word came from one: ``index`` (a word getopt stopped at)
    if set, else ``option`` (the option whose value parse refused) through ORIGINS."""
    at = error.index if error.index >= 0 else origins[error.option] if 0 <= error.option < len(origins) else -1
    for start, end, path in spans:
        if start <= at < end and not error.text.startswith("options file "):
            error.text = f"options file {path}: {error.text}"
    return error


class ConfigError(Exception):
    """Operands that cannot serve: a usage problem (``usage`` True, exit 100) or a fatal one (exit 111)."""

    def __init__(self, message: str, usage: bool) -> None:
        super().__init__(message)
        self.message = message
        self.usage = usage


def serve(operands: Sequence[str], opts: Options) -> None:
    """Everything after option parsing."""
    try:
        cfg = make_config(operands, opts)
    except ConfigError as e:
        if int(opts["verbosity"]):  # -q silences even this (0.88 closes its stderr buffer after option parsing)
            if e.usage:
                line = USAGE6 if opts["family"] or opts["interface"] is not None else USAGE
                os.write(2, f"tcpserver: usage: {line}\n".encode())
            else:
                os.write(2, f"tcpserver: fatal: {e.message}\n".encode("utf-8", "surrogateescape"))
        raise SystemExit(EXIT_USAGE if e.usage else 111) from None
    from prefork.lean import exec_server

    exec_server(cfg.as_dict())
    from prefork.master import run  # only when a lean exec is not possible here

    run(cfg)


def make_config(operands: Sequence[str], opts: Options, running: ServerConfig | None = None) -> ServerConfig:
    """The server's settings from a parsed command line; raises ConfigError.

    RUNNING: the settings of the server being reloaded, whose HOST (the same word) is not looked up again.
    """
    from prefork.addr import HostError, PortError, parse_port, resolve_server_host

    family = int(opts["family"])
    if len(operands) < 2:  # host, then port
        raise ConfigError("usage", True)
    try:
        port = parse_port(operands[1])  # 0.88 checks the port before it looks for the program
    except PortError as e:
        raise ConfigError(e.message, False) from None
    if len(operands) < 3:
        raise ConfigError("usage", True)
    if running is not None and running.host == operands[0]:
        ip = running.ip
    else:
        try:
            ip = resolve_server_host(operands[0], family == 6)
        except HostError as e:
            raise ConfigError(e.message, False) from None
    uid, gid = int(opts["uid"]), int(opts["gid"])
    if opts["env_ids"]:
        uid = _env_number("UID", uid)
        gid = _env_number("GID", gid)
    localname = opts["localname"]
    workers = max(1, int(opts["workers"]) if opts["workers"] is not None else _default_workers())
    max_workers = opts["max_workers"]
    limit = int(opts["limit"])
    reread = bool(opts["options_file"])
    return ServerConfig(
        host=operands[0],
        ip=ip,
        port=port,
        asked_port=port,
        argv=[os.fsencode(a) for a in operands[2:]],
        limit=limit,
        table_limit=max(limit, RELOAD_TABLE_LIMIT) if reread else limit,
        reread=reread,
        rules_path=opts["rules"],
        rules_missing_ok=bool(opts["rules_missing_ok"]),
        banner=os.fsencode(str(opts["banner"])),
        gid=gid,
        uid=uid,
        print_port=bool(opts["print_port"]),
        backlog=int(opts["backlog"]),
        keep_ip_options=bool(opts["keep_ip_options"]),
        nodelay=bool(opts["nodelay"]),
        verbosity=int(opts["verbosity"]),
        remote_host_lookup=bool(opts["remote_host_lookup"]),
        paranoid=bool(opts["paranoid"]),
        localname=None if localname is None else os.fsencode(str(localname)),
        ident=bool(opts["ident"]),
        ident_timeout=int(opts["timeout"]),
        ident_port=int(opts["ident_port"]),
        dns_timeout=float(opts["dns_timeout"]),
        proxy_protocol=bool(opts["proxy_protocol"]),
        workers=workers,
        max_workers=max(workers, int(max_workers) if max_workers is not None else workers),
        drain_timeout=float(opts["drain_timeout"]),
        scoreboard_path=opts["scoreboard"],
        name=str(opts["name"]),
        metrics=opts["metrics"],
        metrics_textfile=opts["metrics_textfile"],
        metrics_user=opts["metrics_user"],
        family=family,
        interface=opts["interface"],
    )


# -- HUP and USR2 with --options-file: the probe reads the command line again (reload.py) -------------------
# Settings bound to the listening socket, to the privileges dropped at start, to the scoreboard's size or
# to the exporter: a reload that would change one is refused (docs/reference/tcpserver.md, Options file).
FIXED = (
    ("host", "host"), ("asked_port", "port"), ("family", "-4/-6"), ("interface", "-I"), ("uid", "uid (-u, -U)"),
    ("gid", "gid (-g, -U)"), ("workers", "--workers"), ("max_workers", "--max-workers"),
    ("scoreboard_path", "--scoreboard"), ("name", "--name"), ("metrics", "--metrics"),
    ("metrics_textfile", "--metrics-textfile"), ("metrics_user", "--metrics-user"),
)


def reread(settings: dict[str, object]) -> None:
    """In the probe: the command line (sys.argv[1:], as the server was started) read again, its options files
    with it; the new settings, marshalled, on stdout.  Refused: one line on stderr, exit reload.REFUSED."""
    import marshal

    from prefork.reload import REFUSED

    running = ServerConfig(**settings)
    try:
        cfg = reread_config(sys.argv[1:], running)
    except ConfigError as e:
        write_line(e.message)
        raise SystemExit(REFUSED) from None
    data = marshal.dumps(cfg.as_dict())
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]


def reread_config(args: Sequence[str], running: ServerConfig) -> ServerConfig:
    """The settings ARGS give now, for the server RUNNING; ConfigError (a one-line message) if refused."""
    origins: list[int] = []
    try:
        words, spans = expand(args, origins)
    except (UsageError, OptionsFileError) as e:
        raise ConfigError(str(e) if isinstance(e, OptionsFileError) else e.text, True) from None
    files = ", ".join(path for _s, _e, path in spans)
    try:
        values, operands = parse(words, OPTIONS, defaults=DEFAULTS)
    except UsageError as e:
        raise ConfigError(in_file(e, spans, origins).text, True) from None
    values["options_file"] = True
    if values.pop("help"):
        raise ConfigError(f"options file {files}: --help is no option for a running server", True)
    try:
        cfg = make_config(operands, cast("Options", values), running)
    except ConfigError as e:
        text = "usage: host port program" if e.usage else e.message
        raise ConfigError(f"options file {files}: {text}", True) from None
    for name, what in FIXED:
        if getattr(cfg, name) != getattr(running, name):
            raise ConfigError(f"{what} cannot change without a restart (in force: {getattr(running, name)!r}, "
                              f"asked: {getattr(cfg, name)!r})", False)
    if cfg.limit > running.table_limit:
        raise ConfigError(f"-c {cfg.limit} is above {running.table_limit}, the most this server can take "
                          f"without a restart", False)
    cfg.table_limit = running.table_limit
    cfg.port, cfg.bound_ip, cfg.print_port = running.port, running.bound_ip, False
    return cfg


def _env_number(name: str, current: int) -> int:
    """-U: $UID/$GID as djb reads them (unset leaves the value alone, leading digits count)."""
    value = os.environ.get(name)
    if value is None:
        return current
    digits = ""
    for ch in value:
        if not ch.isdigit():
            break
        digits += ch
    return int(digits or 0)
