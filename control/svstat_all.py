"""``svstat --all [--json] DIR``: every service of a prefork svscan (or supervise) from its service table.

The lines are svstat's own, so what people and scripts parse keeps working,
followed by what only prefork knows (` not ready` or ` ready N seconds` for
a running service with s6's notification-fd; ` failed` or ` backoff N seconds` from the
restart policy; ` restarts N`, ` last exit E`).  Nothing
is asked of the supervisor: the table is read from shared memory (layout in
``servicetable.py``).  Control characters in a service name are shown as
``?``, so one service is always one line.

Exit 0 when the services are shown.  111, with one line on stderr and nothing
on stdout, when there is nothing to trust: the table cannot be read (missing,
not readable by this user -- it is 0600 unless svscan was given
``--table-group`` --, garbage), or its supervisor is not running any more
(``svstat: fatal: DIR: svscan not running (table written by pid N)``; a
killed svscan leaves its table behind, and its services must not be shown up
from it).
"""

from __future__ import annotations

import os
import sys
import time

from prefork.control.servicetable_read import (
    FLAG_FAILED,
    FLAG_NAMES,
    FLAG_NORMALLY_UP,
    FLAG_NOTIFYING,
    KIND_NAMES,
    NO_STATUS,
    STATE_NAMES,
    WANT_NAMES,
    Entry,
    ServiceTableError,
    Snapshot,
    find,
    owner_running,
    read,
)
from prefork.control.svstate import describe
from prefork.djb import EXIT_TEMP, write_line
from prefork.shmfile import printable

PROG = "svstat"


def _sort_key(entry: Entry) -> tuple[str, int]:
    """NAME, then NAME/log right after it."""
    if entry.name.endswith("/log"):
        return entry.name[:-4], 1
    return entry.name, 0


def exit_text(status: int) -> str | None:
    """``0``, ``1``.. for an exit, ``signal N`` for a kill; None when there was no exit yet (or STATUS is none)."""
    if status == NO_STATUS or not 0 <= status <= 0xFFFF:
        return None
    if os.WIFEXITED(status):
        return str(os.WEXITSTATUS(status))
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"status {status}"


def format_line(entry: Entry, now: float) -> str:
    """One svstat line (without newline) for ENTRY at unix time NOW, then the prefork extras."""
    seconds = max(0, int(now) - entry.since_ns // 1_000_000_000)
    normally_up = bool(entry.flags & FLAG_NORMALLY_UP)
    text = f"{printable(entry.name)}: {describe(entry.pid, seconds, normally_up, entry.paused, entry.want)}"
    if entry.ready:
        text += f" ready {max(0, int(now) - entry.ready_ns // 1_000_000_000)} seconds"
    elif entry.pid and entry.flags & FLAG_NOTIFYING:  # a notification-fd, and no newline on it yet
        text += " not ready"
    if entry.flags & FLAG_FAILED:  # the restart policy gave up: svc -u re-arms it
        text += " failed"
    elif entry.backoff_ms and not entry.pid:
        text += f" backoff {entry.backoff_ms / 1000:g} seconds"
    text += f" restarts {entry.restarts}"
    last = exit_text(entry.last_status)
    if last is not None:
        text += f" last exit {last}"
    return text


def _json(snap: Snapshot, running: bool, now: float) -> str:
    import json

    services = []
    for e in sorted(snap.entries, key=_sort_key):
        since = e.since_ns / 1e9
        services.append({
            "name": e.name,
            "slot": e.slot,
            "pid": e.pid,
            "state": STATE_NAMES.get(e.state, str(e.state)),
            "want": WANT_NAMES.get(e.want, e.want.decode("latin-1")),
            "paused": e.paused,
            "since": since,
            "seconds": round(max(0.0, now - since), 3),
            "starts": e.starts,
            "restarts": e.restarts,
            "last_status": None if e.last_status == NO_STATUS else e.last_status,
            "last_exit": exit_text(e.last_status),
            "failed": bool(e.flags & FLAG_FAILED),
            "backoff_seconds": e.backoff_ms / 1000,
            "ready": e.ready,
            "ready_since": e.ready_ns / 1e9 if e.ready else None,
            "flags": e.flags,
            "flag_names": [name for bit, name in FLAG_NAMES.items() if e.flags & bit],
        })
    return json.dumps({
        "directory": snap.directory,
        "supervisor_pid": snap.owner_pid,
        "supervisor_running": running,
        "kind": snap.kind_name,
        "table": snap.path,
        "started": snap.start_ns / 1e9,
        "counters": {"services": snap.services, "scan_errors": snap.scan_errors, "scans": snap.scans},
        "services": services,
    })


def main_all(directory: str, as_json: bool) -> int:
    """Print every service of the supervisor running for DIRECTORY; 0, or 111 when its table cannot be read
    or its supervisor is gone (one line on stderr)."""
    try:
        snap = read(find(directory))
    except ServiceTableError as e:
        write_line(f"{PROG}: fatal: unable to read service table for {directory}: {e}")
        return EXIT_TEMP
    if not owner_running(snap):
        who = KIND_NAMES.get(snap.kind, "supervisor")
        write_line(f"{PROG}: fatal: {directory}: {who} not running (table written by pid {snap.owner_pid})")
        return EXIT_TEMP
    now = time.time()
    if as_json:
        out = _json(snap, True, now) + "\n"
    else:
        out = "".join(format_line(e, now) + "\n" for e in sorted(snap.entries, key=_sort_key))
    try:
        sys.stdout.flush()
        sys.stdout.buffer.write(out.encode("utf-8", "surrogateescape"))
        sys.stdout.flush()
    except OSError:
        # Like svstat, a failed write to stdout is not an error; keep Python's exit-time flush from complaining.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass
    return 0
