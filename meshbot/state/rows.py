"""Which rows of the state database this version can use, checked once when it is opened.

SQLite keeps any value in any column (a column's type is only a preference), and the
file may have been written by another version, edited by hand, or half restored from a
backup. One row meshbot cannot read (a `created` that is text, a `dest` that is no node
number) used to raise at start-up, every start: a restart loop under systemd, for one
row. So the rows are checked when the database is opened; a malformed one is removed
(it could never be sent or matched) and the start goes on, with one WARNING saying how
many and showing the first.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

_U32 = 0xFFFFFFFF
_CHANNELS = 8  # channel indexes 0-7, as the firmware numbers them


def _int(value: object, low: int = -(2**63), high: int = 2**63 - 1) -> bool:
    return type(value) is int and low <= value <= high


def _node(value: object) -> bool:
    return _int(value, 0, _U32)


def _optional_node(value: object) -> bool:
    return value is None or _node(value)


def _time(value: object) -> bool:
    return type(value) in (int, float) and math.isfinite(value)  # type: ignore[arg-type]


def _text(value: object) -> bool:
    return type(value) is str


@dataclass(frozen=True)
class _Table:
    """A table's columns as read, what each must be, and how a row is named in the warning."""

    name: str
    key: str  # the columns that identify a row, for the DELETE and the warning
    columns: tuple[tuple[str, Callable[[object], bool], str], ...]


_TABLES = (
    _Table(
        "outbox",
        "seq",
        (
            ("text", _text, "a text"),
            ("dest", _node, "a node number"),
            ("channel", lambda v: _int(v, 0, _CHANNELS - 1), "a channel index 0-7"),
            ("reply_to", _optional_node, "a packet id or NULL"),
            ("created", _time, "a wall time"),
            ("packet_id", _optional_node, "a packet id or NULL"),
            ("attempt", lambda v: _int(v, 1, 100), "an attempt number"),
            ("requester", _optional_node, "a node number or NULL"),
            ("kind", _text, "a text kind"),
            ("stranger", lambda v: _int(v, 0, 1), "0 or 1"),
        ),
    ),
    _Table("answered", "sender, packet_id", (("sender", _node, "a node number"), ("packet_id", _node, "a packet id"), ("at", _time, "a wall time"))),
    _Table("counters", "name", (("name", _text, "a name"), ("value", lambda v: _int(v, 0), "a count"))),
)


@dataclass(frozen=True)
class Sweep:
    """What the check removed: how many rows, and the first one's problem in words."""

    removed: int
    first: Optional[str]


def remove_malformed(db: sqlite3.Connection) -> Sweep:
    """Delete the rows of the known tables this version cannot use, in one transaction.

    Reads every row once (the outbox holds at most OUTBOX_MAX texts in normal use; a
    larger leftover is cut to it right after, by the outbox's own restore)."""
    removed, first = 0, None
    db.execute("BEGIN IMMEDIATE")
    try:
        for table in _TABLES:
            keys = [k.strip() for k in table.key.split(",")]
            names = [name for name, _, _ in table.columns]
            wanted = keys + [n for n in names if n not in keys]
            bad: list[Sequence[object]] = []
            for row in db.execute(f"SELECT {', '.join(wanted)} FROM {table.name}"):
                values = dict(zip(wanted, row))
                problem = _problem(table, values)
                if problem is None:
                    continue
                bad.append(tuple(values[k] for k in keys))
                if first is None:
                    where = ", ".join(f"{k} {values[k]!r}" for k in keys)
                    first = f"{table.name} row {where}: {problem}"
            if bad:
                match = " AND ".join(f"{k} IS ?" for k in keys)
                db.executemany(f"DELETE FROM {table.name} WHERE {match}", bad)
                removed += len(bad)
        db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise
    return Sweep(removed, first)


def _problem(table: _Table, values: dict[str, object]) -> Optional[str]:
    for name, valid, meaning in table.columns:
        value = values[name]
        if not valid(value):
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:39] + "…"
            return f"{name} is {shown}, not {meaning}"
    return None
