"""``tcpserver``: the command line of ucspi-tcp 0.88, served by a preforking master."""

from __future__ import annotations

import os

import click

from prefork.cli import Flag, Number, djb_command
from prefork.djb import EXIT_USAGE
from prefork.scoreboard_read import MAX_SLOTS
from prefork.serverconfig import DEFAULT_BACKLOG, ServerConfig

TYPE_CHECKING = False  # as in the lean modules (typing.TYPE_CHECKING would do here: click imports typing)
if TYPE_CHECKING:
    from typing import TypedDict, Unpack

    class Options(TypedDict):
        """What click hands main(): the FLAGS' dests and the options below, as their types convert them."""

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
        scoreboard: str | None
        name: str
        ident_port: int
        dns_timeout: int
        metrics: str | None
        metrics_textfile: str | None
        metrics_user: str | None

USAGE = (
    "tcpserver [ -1UXpPhHrRoOdDqQv ] [ -c limit ] [ -x rules.cdb ] [ -B banner ] [ -g gid ] [ -u uid ] "
    "[ -b backlog ] [ -l localname ] [ -t timeout ] host port program"
)

FLAGS = [
    Flag("1", "print_port", True, "print the local port on stdout once listening (with --metrics, then its port)"),
    Flag("U", "env_ids", True, "take the uid and gid from $UID and $GID"),
    Flag("X", "rules_missing_ok", True, "with -x: a rules file that does not exist allows everything"),
    Flag("p", "paranoid", True, "keep TCPREMOTEHOST only if its A records contain the remote IP"),
    Flag("P", "paranoid", False, "do not check TCPREMOTEHOST (default)"),
    Flag("h", "remote_host_lookup", True, "look up TCPREMOTEHOST in DNS (default)"),
    Flag("H", "remote_host_lookup", False, "do not look up TCPREMOTEHOST"),
    Flag("r", "ident", True, "ask the client's ident server for TCPREMOTEINFO (default)"),
    Flag("R", "ident", False, "do not ask for TCPREMOTEINFO"),
    Flag("o", "keep_ip_options", True, "leave IP options on accepted connections"),
    Flag("O", "keep_ip_options", False, "kill IP options (default)"),
    Flag("d", "nodelay", False, "leave Nagle on (default)"),
    Flag("D", "nodelay", True, "set TCP_NODELAY"),
    Flag("q", "verbosity", 0, "print nothing"),
    Flag("Q", "verbosity", 1, "print only warnings and errors (default)"),
    Flag("v", "verbosity", 2, "print a line per connection event"),
]
DEFAULTS = {
    "print_port": False,
    "env_ids": False,
    "rules_missing_ok": False,
    "paranoid": False,
    "remote_host_lookup": True,
    "ident": True,
    "keep_ip_options": False,
    "nodelay": False,
    "verbosity": 1,
}


class MetricsAddress(click.ParamType):
    """``--metrics HOST:PORT``, read as prefork-exporter's ``--listen`` reads it; anything else is a usage error."""

    name = "HOST:PORT"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from prefork.exporter_child import format_address, parse_address  # only when the option is given

        try:
            return format_address(*parse_address(str(value)))
        except ValueError as e:
            self.fail(str(e), param, ctx)


class FilePath(click.ParamType):
    """A path that is not empty."""

    name = "PATH"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if not value:
            self.fail("empty path", param, ctx)
        return str(value)


class Account(click.ParamType):
    """An account name or UID:GID (``--metrics-user``), checked now: an unknown one is a usage error."""

    name = "USER"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from prefork.exporter_child import resolve_user

        try:
            resolve_user(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)
        return str(value)


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@djb_command(usage=USAGE, flags=FLAGS, defaults=DEFAULTS)
@click.option("-c", "limit", metavar="limit", type=Number(), default=40, help="at most this many programs at once (40)")
@click.option("-x", "rules", metavar="rules.cdb", default=None, help="rules cdb made by tcprules, read for every connection")
@click.option("-B", "banner", metavar="banner", default="", help="write this to each client right after accepting it")
@click.option("-g", "gid", metavar="gid", type=Number(), default=0, help="switch to this gid after binding")
@click.option("-u", "uid", metavar="uid", type=Number(), default=0, help="switch to this uid after binding")
@click.option("-b", "backlog", metavar="backlog", type=Number(), default=DEFAULT_BACKLOG, help=f"listen() backlog ({DEFAULT_BACKLOG})")
@click.option("-l", "localname", metavar="localname", default=None, help="TCPLOCALHOST, instead of a DNS lookup of the local IP")
@click.option("-t", "timeout", metavar="timeout", type=Number(), default=26, help="ident timeout in seconds (26)")
@click.option("--workers", metavar="N", type=Number(maximum=MAX_SLOTS), default=None,
              help=f"worker processes that accept (default: CPUs; at most {MAX_SLOTS})")
@click.option("--scoreboard", "scoreboard", metavar="PATH", default=None,
              help="shared-memory status file (default /dev/shm/prefork-tcpserver.PID, removed at exit)")
@click.option("--name", metavar="NAME", default="", help="service name recorded in the scoreboard for metrics")
@click.option("--ident-port", metavar="PORT", type=Number(maximum=65535), default=113, help="port of the ident servers (113)")
@click.option("--dns-timeout", metavar="SECONDS", type=Number(), default=10, help="seconds allowed for each DNS lookup (10)")
@click.option("--metrics", type=MetricsAddress(), default=None,
              help="serve Prometheus metrics at http://HOST:PORT/metrics (port 0: one chosen at start, shown by "
                   "tcpserver-status and by -1 on a second line)")
@click.option("--metrics-textfile", type=FilePath(), default=None,
              help="also write the metrics to PATH for node_exporter's textfile collector")
@click.option("--metrics-user", type=Account(), default=None,
              help="the account (or UID:GID) the exporter runs as when tcpserver keeps root (default nobody)")
@click.argument("operands", nargs=-1, type=click.UNPROCESSED)
def main(operands: tuple[str, ...], **opts: Unpack[Options]) -> None:
    """Accept TCP connections on HOST PORT and run PROGRAM for each, the socket as stdin and stdout.

    Drop-in for ucspi-tcp 0.88's tcpserver: same options, environment, log
    lines and rules files; connections are accepted by pre-forked workers.
    """
    from prefork.addr import HostError, PortError, parse_port, resolve_server_host

    verbosity = int(opts["verbosity"])

    def usage() -> None:
        if verbosity:  # -q silences even this (0.88 closes its stderr buffer after option parsing)
            os.write(2, f"tcpserver: usage: {USAGE}\n".encode())
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
        ip = resolve_server_host(operands[0])
    except HostError as e:
        fatal(e.message)
    uid, gid = int(opts["uid"]), int(opts["gid"])
    if opts["env_ids"]:
        uid = _env_number("UID", uid)
        gid = _env_number("GID", gid)
    localname = opts["localname"]
    workers = opts["workers"]
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
        workers=max(1, int(workers) if workers is not None else _default_workers()),
        scoreboard_path=opts["scoreboard"],
        name=str(opts["name"]),
        metrics=opts["metrics"],
        metrics_textfile=opts["metrics_textfile"],
        metrics_user=opts["metrics_user"],
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
