"""Everything a tcpserver master and its workers need to know, parsed once from the command line."""

from __future__ import annotations

# The child's environment variables that tcpserver sets or actively removes (docs/CONTRACTS.md, tcpserver environment).
TCP_VARS = (
    b"PROTO",
    b"TCPLOCALIP",
    b"TCPLOCALPORT",
    b"TCPLOCALHOST",
    b"TCPREMOTEIP",
    b"TCPREMOTEPORT",
    b"TCPREMOTEHOST",
    b"TCPREMOTEINFO",
    # ucspi-tcp-ipv6's twins, set for an IPv6 connection and removed for the others (docs/CONTRACTS.md, IPv6)
    b"TCP6LOCALIP",
    b"TCP6LOCALPORT",
    b"TCP6LOCALHOST",
    b"TCP6REMOTEIP",
    b"TCP6REMOTEPORT",
    b"TCP6REMOTEHOST",
    b"TCP6REMOTEINFO",
    b"TCP6INTERFACE",
)

# 0.88's listen() backlog is 20, which loses clients in bursts; prefork's default does not
# (the kernel caps it at net.core.somaxconn).
DEFAULT_BACKLOG = 1024


# With --options-file the tables are sized for at least this -c, so a reload can raise it that far
# (docs/ARCHITECTURE.md, "Options on reload"); their pages are touched only as they are used.
RELOAD_TABLE_LIMIT = 1024

# Field name -> default (0.88's unless noted).  A plain class rather than a dataclass: the
# server process imports as little as it can (see lean.py), and this is all it needs.
DEFAULTS: dict[str, object] = {
    "host": "",
    "ip": None,  # the resolved host, filled in by the command line front end
    "port": 0,  # the port bound (the master sets it after bind: port 0 asked is one the kernel chose)
    "asked_port": 0,  # the port of the command line, kept: a reload compares its own with it
    "argv": [],
    "limit": 40,
    # The -c the client table and the spawn log are sized for, fixed at start: a reload can raise -c up to it.
    "table_limit": 0,  # (never below limit: __init__ raises it)
    "reread": False,  # --options-file: HUP and USR2 read the command line again (tcpserver_cli.reread)
    "rules_path": None,
    "rules_missing_ok": False,  # -X
    "banner": b"",
    "gid": 0,
    "uid": 0,
    "print_port": False,  # -1
    "backlog": DEFAULT_BACKLOG,
    "keep_ip_options": False,  # -o (default -O kills them)
    "nodelay": False,  # -D
    "verbosity": 1,  # -q 0, -Q 1, -v 2
    "remote_host_lookup": True,  # -h / -H
    "paranoid": False,  # -p / -P
    "localname": None,  # -l (bytes); None = PTR lookup of the local IP
    "ident": True,  # -r / -R
    "ident_timeout": 26,  # -t
    "ident_port": 113,  # --ident-port (testing and non-standard setups)
    "dns_timeout": 10.0,  # --dns-timeout: bound on each system-resolver lookup
    "proxy_protocol": False,  # --proxy-protocol: each connection starts with a PROXY header (prefork/proxyproto.py)
    "workers": 1,
    "max_workers": 0,  # --max-workers: scoreboard slots, the ceiling of TTIN (0: as many as --workers)
    "drain_timeout": 30.0,  # --drain-timeout: how long QUIT lets running programs finish (master.py)
    "family": 0,  # -4 (4): IPv4 only; -6 (6): IPv4 clients shown as IPv6, host 0 is ::; 0: neither
    "interface": None,  # -I: the interface (scope) of a link-local IPv6 address to bind
    "bound_ip": "0.0.0.0",  # set by the master after bind
    "scoreboard_path": None,
    "name": "",
    "metrics": None,  # --metrics HOST:PORT (checked by the front end): serve metrics through a prefork-exporter child
    "metrics_textfile": None,  # --metrics-textfile PATH: the exporter also writes them there
    "metrics_user": None,  # --metrics-user USER: who a root server's exporter becomes (None: nobody)
}


class ServerConfig:
    """tcpserver's options after parsing; attributes are the keys of DEFAULTS."""

    __slots__ = tuple(DEFAULTS)
    # The types of the values in DEFAULTS (annotations only: the slots above hold them).
    host: str
    ip: str | None
    port: int
    asked_port: int
    argv: list[bytes]
    limit: int
    table_limit: int
    reread: bool
    rules_path: str | None
    rules_missing_ok: bool
    banner: bytes
    gid: int
    uid: int
    print_port: bool
    backlog: int
    keep_ip_options: bool
    nodelay: bool
    verbosity: int
    remote_host_lookup: bool
    paranoid: bool
    localname: bytes | None
    ident: bool
    ident_timeout: int
    ident_port: int
    dns_timeout: float
    proxy_protocol: bool
    workers: int
    max_workers: int
    drain_timeout: float
    family: int
    interface: str | None
    bound_ip: str
    scoreboard_path: str | None
    name: str
    metrics: str | None
    metrics_textfile: str | None
    metrics_user: str | None

    def __init__(self, **values: object) -> None:
        unknown = set(values) - set(DEFAULTS)
        if unknown:
            raise TypeError(f"unknown tcpserver settings: {sorted(unknown)}")
        for name, default in DEFAULTS.items():
            value = values.get(name, default)
            setattr(self, name, list(value) if isinstance(value, list) else value)
        self.table_limit = max(self.table_limit, self.limit)

    def as_dict(self) -> dict[str, object]:
        """Plain values only (str, bytes, int, float, bool, None, lists): safe to repr() and read back."""
        return {name: getattr(self, name) for name in DEFAULTS}

    @property
    def needs_lookups(self) -> bool:
        """True when a connection must wait for DNS or ident before its program can start."""
        return self.localname is None or self.remote_host_lookup or self.ident
    @property
    def wants_exporter(self) -> bool:
        """True when the master must run a prefork-exporter beside itself."""
        return self.metrics is not None or self.metrics_textfile is not None
