"""svstat's words for a service's state, shared by ``svstat`` (status files) and ``svstat --all`` (the table).

A module of its own so that control/svstat.py and control/svstat_all.py both import it and
neither imports the other's module (svstat only dispatches ``--all`` to svstat_all).
"""

from __future__ import annotations


def describe(pid: int, elapsed: int, normally_up: bool, paused: bool, want: bytes) -> str:
    """``up (pid P) S seconds`` or ``down S seconds``, then svstat's suffixes in its order."""
    if pid:
        text = f"up (pid {pid}) {elapsed} seconds"
        if not normally_up:
            text += ", normally down"
        if paused:
            text += ", paused"
        if want == b"d":
            text += ", want down"
    else:
        text = f"down {elapsed} seconds"
        if normally_up:
            text += ", normally up"
        if want == b"u":
            text += ", want up"
    return text
