"""setuidgid ACCOUNT CHILD...: run CHILD as ACCOUNT's uid and primary gid (docs/CONTRACTS.md, Small tools)."""

from __future__ import annotations

import os

from prefork.control.pathexec import arguments, help_requested, run, show
from prefork.djb import fatal
from prefork.environ import original_environ
from prefork.options import usage_error

PROG = "setuidgid"
USAGE = "setuidgid account child"
HELP = f"""usage: {USAGE}

Run CHILD (found through PATH) with the uid and gid of ACCOUNT from the
password database.  The supplementary groups are reduced to that one gid,
as in daemontools (no initgroups).  Must be run as root."""


def drop_to(prog: str, account: bytes) -> None:
    """setgroups([gid]), setgid, setuid to ACCOUNT, or die like daemontools' prot_gid/prot_uid callers."""
    import pwd

    try:
        pw = pwd.getpwnam(show(account))
    except (KeyError, ValueError):  # ValueError: a name with a NUL cannot exist
        fatal(prog, f"unknown account {show(account)}")
    try:
        os.setgroups([pw.pw_gid])
        os.setgid(pw.pw_gid)
    except OSError as e:
        fatal(prog, "unable to setgid", e)
    try:
        os.setuid(pw.pw_uid)
    except OSError as e:
        fatal(prog, "unable to setuid", e)


def main() -> None:
    """Entry point of the setuidgid command."""
    args = arguments()
    help_requested(args, HELP, USAGE)
    if len(args) < 2:
        usage_error(USAGE)
    env = original_environ()  # read before the id change: /proc/self/environ is then no longer ours to read
    drop_to(PROG, args[0])
    run(PROG, args[1:], env)
