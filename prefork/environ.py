"""The environment this process was really started with, and adding to it the way C does.

Python's locale coercion (PEP 538) adds ``LC_CTYPE=C.UTF-8`` to ``os.environ``
at start-up when the inherited locale is C/POSIX.  A program we exec must get
exactly the environment we were given plus what our contract adds, so the base
is read from ``/proc/self/environ`` (which Python never rewrites), not from
``os.environ``.

Values added per connection come from outside (an ident server's reply, a
rules file someone else wrote); 0.88 holds them in C strings, so each ends at
its first NUL.  ``set_variable`` applies that rule, so no value can make
``posix_spawn`` refuse the environment.
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


def c_string(value: bytes) -> bytes:
    """VALUE as a C string holds it: everything before its first NUL."""
    end = value.find(b"\0")
    return value if end < 0 else value[:end]


def set_variable(env: dict[bytes, bytes], name: bytes, value: bytes) -> None:
    """Set NAME=VALUE in ENV as djb's ``pathexec_env`` would, from C strings.

    Both end at their first NUL; the entry ``NAME=VALUE`` is then split at its
    first ``=``, as the program will split it (``A=B`` / ``C`` sets ``A`` to
    ``B=C``).  An entry with an empty name cannot be passed by posix_spawn
    and is skipped.  Afterwards every key in ENV set here is non-empty and
    free of NUL and ``=``, and every value set here is free of NUL.
    """
    name, _, value = (c_string(name) + b"=" + c_string(value)).partition(b"=")
    if name:
        env[name] = value
