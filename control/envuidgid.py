"""envuidgid ACCOUNT CHILD...: run CHILD with $GID and $UID set to ACCOUNT's ids (docs/CONTRACTS.md, Small tools)."""

from __future__ import annotations

from prefork.control.pathexec import arguments, edit_env, help_requested, run, show
from prefork.djb import fatal
from prefork.environ import original_environ
from prefork.options import usage_error

PROG = "envuidgid"
USAGE = "envuidgid account child"
HELP = f"""usage: {USAGE}

Run CHILD (found through PATH) with GID and UID in its environment set to
the primary gid and the uid of ACCOUNT, without changing ids itself (for
programs such as multilog or tcpserver -U that drop privileges later)."""


def ids_env(prog: str, account: bytes, base: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """BASE plus GID= then UID= of ACCOUNT; dies ``unknown account`` (111) if there is no such account."""
    import pwd

    try:
        pw = pwd.getpwnam(show(account))
    except (KeyError, ValueError):
        fatal(prog, f"unknown account {show(account)}")
    return edit_env(base, [(b"GID", b"%d" % pw.pw_gid), (b"UID", b"%d" % pw.pw_uid)])


def main() -> None:
    """Entry point of the envuidgid command."""
    args = arguments()
    help_requested(args, HELP, USAGE)
    if len(args) < 2:
        usage_error(USAGE)
    run(PROG, args[1:], ids_env(PROG, args[0], original_environ()))
