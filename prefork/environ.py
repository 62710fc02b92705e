"""The environment this process was really started with.

Python's locale coercion (PEP 538) adds ``LC_CTYPE=C.UTF-8`` to ``os.environ``
at start-up when the inherited locale is C/POSIX.  A program we exec must get
exactly the environment we were given plus what our contract adds, so the base
is read from ``/proc/self/environ`` (which Python never rewrites), not from
``os.environ``.
"""

from __future__ import annotations

import os


def original_environ() -> dict[bytes, bytes]:
    """The start-up environment as bytes, in its original order (first wins on duplicates)."""
    try:
        with open("/proc/self/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return dict(os.environb)
    env: dict[bytes, bytes] = {}
    for entry in raw.split(b"\0"):
        if not entry:
            continue
        name, sep, value = entry.partition(b"=")
        if sep and name not in env:
            env[name] = value
    return env
