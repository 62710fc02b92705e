"""Everything a tcpserver master and its workers need to know, parsed once from the command line."""

from __future__ import annotations

from dataclasses import dataclass, field

# The child's environment variables that tcpserver sets or actively removes (spec §2.2).
TCP_VARS = (
    b"PROTO",
    b"TCPLOCALIP",
    b"TCPLOCALPORT",
    b"TCPLOCALHOST",
    b"TCPREMOTEIP",
    b"TCPREMOTEPORT",
    b"TCPREMOTEHOST",
    b"TCPREMOTEINFO",
)

# 0.88's listen() backlog is 20, which loses clients in bursts; prefork's default does not
# (the kernel caps it at net.core.somaxconn).
DEFAULT_BACKLOG = 1024


@dataclass
class ServerConfig:
    """tcpserver's options after parsing (defaults are 0.88's unless noted)."""

    host: str
    port: int
    argv: list[bytes]
    limit: int = 40
    rules_path: str | None = None
    rules_missing_ok: bool = False  # -X
    banner: bytes = b""
    gid: int = 0
    uid: int = 0
    print_port: bool = False  # -1
    backlog: int = DEFAULT_BACKLOG
    keep_ip_options: bool = False  # -o (default -O kills them)
    nodelay: bool = False  # -D
    verbosity: int = 1  # -q 0, -Q 1, -v 2
    remote_host_lookup: bool = True  # -h / -H
    paranoid: bool = False  # -p / -P
    localname: bytes | None = None  # -l; None = PTR lookup of the local IP
    ident: bool = True  # -r / -R
    ident_timeout: int = 26  # -t
    ident_port: int = 113  # --ident-port (testing and non-standard setups)
    dns_timeout: float = 10.0  # --dns-timeout: bound on each system-resolver lookup
    workers: int = 1
    bound_ip: str = "0.0.0.0"  # set by the master after bind
    scoreboard_path: str | None = None
    name: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def needs_lookups(self) -> bool:
        """True when a connection must wait for DNS or ident before its program can start."""
        return self.localname is None or self.remote_host_lookup or self.ident
