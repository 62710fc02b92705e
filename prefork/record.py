"""Slotted value objects without ``dataclasses``.

``dataclasses`` imports inspect, ast and re: about 2 MB in a supervisor that
lives as long as the machine, and several ms on every ``svstat``.  A class
that lists its fields in ``__slots__`` and derives from :class:`Record` gets
keyword construction, value equality and a readable repr; one with defaults
or positional arguments writes its own ``__init__`` and keeps the rest.
"""

from __future__ import annotations


class Record:
    """Keyword-built record; equality and repr over ``__slots__``."""

    __slots__: tuple[str, ...] = ()

    def __init__(self, **fields: object) -> None:
        for name in self.__slots__:
            setattr(self, name, fields.pop(name))
        if fields:
            raise TypeError(f"unexpected fields {sorted(fields)}")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    __hash__ = None  # type: ignore[assignment]  # mutable values, as a dataclass with eq=True

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"{type(self).__name__}({inner})"
