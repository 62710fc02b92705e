"""``tcpserver``: the command line of ucspi-tcp 0.88, served by a preforking master."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import cast

from prefork.djb import EXIT_USAGE
from prefork.options import Option, command_line, format_help, number, seconds
from prefork.scoreboard_read import MAX_SLOTS
from prefork.serverconfig import DEFAULT_BACKLOG, ServerConfig

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
    """The options and operands of ARGS; ``--help`` and a bad option end the process (0, or 100 with the usage)."""
    # getopt problems are printed even under -q, as 0.88 prints them
    values, operands = command_line(args, USAGE, lambda: format_help(USAGE, DESCRIPTION, OPTIONS), OPTIONS,
                                    defaults=DEFAULTS, usage_after=usage_after)
    return cast("Options", values), operands


def serve(operands: Sequence[str], opts: Options) -> None:
    """Everything after option parsing."""
    from prefork.addr import HostError, PortError, parse_port, resolve_server_host

    verbosity = int(opts["verbosity"])
    family = int(opts["family"])

    def usage() -> None:
        if verbosity:  # -q silences even this (0.88 closes its stderr buffer after option parsing)
            line = USAGE6 if family or opts["interface"] is not None else USAGE
            os.write(2, f"tcpserver: usage: {line}\n".encode())
        raise SystemExit(EXIT_USAGE)

    def fatal(message: str) -> None:
        if verbosity:
            os.write(2, f"tcpserver: fatal: {message}\n".encode("utf-8", "surrogateescape"))
        raise SystemExit(111)

    if len(operands) < 2:  # host, then port
        usage()
    try:
        port = parse_port(operands[1])  # 0.88 checks the port before it looks for the program
    except PortError as e:
        fatal(e.message)
    if len(operands) < 3:
        usage()
    try:
        ip = resolve_server_host(operands[0], family == 6)
    except HostError as e:
        fatal(e.message)
    uid, gid = int(opts["uid"]), int(opts["gid"])
    if opts["env_ids"]:
        uid = _env_number("UID", uid)
        gid = _env_number("GID", gid)
    localname = opts["localname"]
    workers = max(1, int(opts["workers"]) if opts["workers"] is not None else _default_workers())
    max_workers = opts["max_workers"]
    cfg = ServerConfig(
        host=operands[0],
        ip=ip,
        port=port,
        argv=[os.fsencode(a) for a in operands[2:]],
        limit=int(opts["limit"]),
        rules_path=opts["rules"],
        rules_missing_ok=bool(opts["rules_missing_ok"]),
        banner=os.fsencode(str(opts["banner"])),
        gid=gid,
        uid=uid,
        print_port=bool(opts["print_port"]),
        backlog=int(opts["backlog"]),
        keep_ip_options=bool(opts["keep_ip_options"]),
        nodelay=bool(opts["nodelay"]),
        verbosity=verbosity,
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
    from prefork.lean import exec_server

    exec_server(cfg.as_dict())
    from prefork.master import run  # only when a lean exec is not possible here

    run(cfg)


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
