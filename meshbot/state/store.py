"""`StateStore`: what the bot must not forget across a restart, in one SQLite file.

A restart (the watchdog's, a crash, an upgrade, a reboot of the Pi) would otherwise lose
every reply waiting in the outbox, and forget which commands were answered while the
node replays its queue of packets for the client on the next connection. So three
things live in `STATE_DIR/meshbot.db`:

* the outbox: every text queued and not yet accepted by the node (or dropped), in order,
  with the packet id of a write the node has not confirmed yet;
* the keys (sender, packet id) of the commands answered, with their wall time;
* the counters /status shows (texts sent, dropped, resent, refused; commands).

One object owns the database: its own connection and lock; everything else calls its
methods. It never raises: a database that cannot be opened, is corrupt, or fails a write
later is one WARNING, and from then on the store does nothing (the bot runs on in memory,
as it did before there was a store). A restart is the bot's business, not a reason to
refuse to start.

Durability (WAL, `synchronous=NORMAL`): a transaction is in the write-ahead log, handed to
the kernel with write(), before its COMMIT returns. It survives the process being killed
in any way (SIGKILL, a crash, the watchdog, the OOM killer); it does NOT survive a power
loss or a kernel crash within the few seconds before the kernel writes its cache back:
then the last transactions are rolled back, and the database stays consistent. FULL
would fsync every commit, i.e. every send(), which costs milliseconds to tens of
milliseconds on a Pi's SD card; a power cut loses the outbox's last seconds either way
(the texts were not on the air yet), so NORMAL is the trade.

Times are wall-clock (`time.time()`): monotonic clocks start again with the process or
the boot. A wall clock that went back (a Pi without RTC before NTP) makes an age
negative; ages are clamped to 0, so nothing is dropped or forgotten early because of it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator, Optional, Sequence

from meshbot.state.rows import remove_malformed
from meshbot.text import counted

log = logging.getLogger(__name__)

DB_NAME = "meshbot.db"
LOCK_NAME = "meshbot.lock"  # held while a bot uses the database: two would both send its outbox
IN_MEMORY = ":memory:"  # STATE_DIR value: no database at all (tests, the demo)
SCHEMA_VERSION = 1
# The counters kept across restarts.
COUNTERS = ("sent", "dropped", "resent", "refused", "commands")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,      -- the queue's order; a text put back at the head gets MIN - 1
    text TEXT NOT NULL,
    dest INTEGER NOT NULL,
    channel INTEGER NOT NULL,
    reply_to INTEGER,
    created REAL NOT NULL,        -- wall time when queued
    packet_id INTEGER,            -- a write not confirmed yet: resend with this same id
    attempt INTEGER NOT NULL DEFAULT 1,
    requester INTEGER,            -- the node whose command it answers (its priority)
    kind TEXT NOT NULL DEFAULT 'reply',
    stranger INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS answered (
    sender INTEGER NOT NULL,
    packet_id INTEGER NOT NULL,
    at REAL NOT NULL,             -- wall time
    PRIMARY KEY (sender, packet_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS answered_at ON answered (at);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
"""


_TEXT_COLUMNS = "text, dest, channel, reply_to, created, packet_id, attempt, requester, kind, stranger"
_TEXT_VALUES = ", ".join("?" * len(_TEXT_COLUMNS.split(", ")))


@dataclass
class StoredText:
    """One outbox text as the store keeps it. `row` is None until it is stored."""

    text: str
    to: int
    channel: int
    reply_to: Optional[int]
    created: float  # wall time
    packet_id: Optional[int] = None
    attempt: int = 1
    # What the outbox's priorities need: who asked, what kind of text, a node without NodeInfo.
    requester: Optional[int] = None
    kind: str = "reply"
    stranger: bool = False
    row: Optional[int] = None


def resolve_state_dir(setting: str) -> Optional[Path]:
    """STATE_DIR as configured -> the directory, or None for ':memory:'.

    Empty: systemd's `$STATE_DIRECTORY` (the unit's StateDirectory=, /var/lib/meshbot),
    else ./state. systemd separates several directories with ':'; the first is ours.
    """
    if setting == IN_MEMORY:
        return None
    if setting:
        return Path(setting).expanduser()
    from_systemd = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(from_systemd) if from_systemd else Path("state")


class StateStore:
    """The bot's durable state. Thread-safe; every method is a no-op while not open."""

    def __init__(self, directory: Optional[Path], answered_window_s: float = 600.0) -> None:
        self.directory = directory
        self.path = directory / DB_NAME if directory is not None else None
        # Commands answered longer ago than this (DEDUP_WINDOW_S) are pruned as new ones come.
        self._answered_window_s = answered_window_s
        self._db: Optional[sqlite3.Connection] = None
        self._lock_file: Optional[IO[bytes]] = None
        self._lock = threading.Lock()

    @property
    def durable(self) -> bool:
        """True while what is written here survives a restart."""
        return self._db is not None

    # --- lifecycle ---------------------------------------------------------------------------
    def open(self) -> bool:
        """Open or create the database; on any trouble one WARNING and run in memory."""
        if self.path is None:
            log.info("STATE_DIR is %s: queued texts and answered commands will not survive a restart", IN_MEMORY)
            return False
        db: Optional[sqlite3.Connection] = None
        try:
            # The texts are the users' messages: the directory is the bot's alone.
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._lock_file = _exclusive_lock(self.path.parent / LOCK_NAME)
            # Autocommit mode: every transaction is an explicit BEGIN ... COMMIT below.
            db = sqlite3.connect(str(self.path), timeout=5.0, isolation_level=None, check_same_thread=False)
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"cannot use WAL mode (journal_mode={mode})")
            db.execute("PRAGMA synchronous=NORMAL")  # see the module's docstring
            problem = db.execute("PRAGMA quick_check").fetchone()[0]
            if problem != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {problem}")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"written by a newer meshbot (schema {version})")
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            sweep = remove_malformed(db)
        except (OSError, sqlite3.Error) as exc:
            if db is not None:
                db.close()
            self._unlock()
            if isinstance(exc, _InUse):
                fix = "stop the other one, or give each bot its own STATE_DIR"
            elif isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
                fix = "move the file away and restart: a new one is made"
            else:
                fix = "make STATE_DIR a directory the bot's user can write"
            log.warning(
                "state database %s unusable (%s): running in memory, so texts waiting to be sent and the commands "
                "answered will not survive a restart; %s",
                self.path, _describe(exc), fix,
            )
            return False
        self._db = db
        log.info("state database %s", self.path)
        if sweep.removed:
            log.warning(
                "state database %s: removed %s this version cannot read (first: %s); the rest is used",
                self.path, counted(sweep.removed, "malformed row"), sweep.first,
            )
        return True

    def close(self) -> None:
        with self._lock:
            db, self._db = self._db, None
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                db.close()
        self._unlock()

    # --- the outbox ----------------------------------------------------------------------------
    def enqueue(
        self,
        texts: Sequence[StoredText],
        *,
        drop_rows: Sequence[Optional[int]] = (),
        drop_counter: str = "dropped",
        answered: Optional[tuple[int, int]] = None,
    ) -> None:
        """Store new texts at the tail (setting their `row`), in one transaction with the
        rows dropped to make room (counted in `drop_counter`) and the key of the command
        they answer."""
        with self._transaction() as db:
            if db is None:
                return
            for item in texts:
                item.row = db.execute(
                    f"INSERT INTO outbox ({_TEXT_COLUMNS}) VALUES ({_TEXT_VALUES})", _text_values(item)
                ).lastrowid
            self._remove(db, drop_rows, drop_counter)
            if answered is not None:
                self._answer(db, answered)

    def put_back(self, item: StoredText) -> None:
        """Store a text again at the head (one the node took and then refused, a DM retry)."""
        with self._transaction() as db:
            if db is None:
                return
            item.row = db.execute(
                f"INSERT INTO outbox (seq, {_TEXT_COLUMNS})"
                f" VALUES ((SELECT COALESCE(MIN(seq), 1) - 1 FROM outbox), {_TEXT_VALUES})",
                _text_values(item),
            ).lastrowid

    def writing(self, row: Optional[int], packet_id: Optional[int]) -> None:
        """Before a write to the node: the id it goes out with (None: a new id comes next)."""
        if row is None:
            return
        with self._transaction() as db:
            if db is not None:
                db.execute("UPDATE outbox SET packet_id = ? WHERE seq = ?", (packet_id, row))

    def done(self, rows: Sequence[Optional[int]], counter: str) -> None:
        """Texts accepted by the node ('sent') or given up ('dropped'): out of the store,
        their counter raised in the same transaction (rows None: not stored, counted)."""
        with self._transaction() as db:
            if db is not None:
                self._remove(db, rows, counter)

    def pending(self) -> list[StoredText]:
        """The outbox as the last run left it, in order."""
        with self._lock:
            if self._db is None:
                return []
            try:
                found = self._db.execute(f"SELECT {_TEXT_COLUMNS}, seq FROM outbox ORDER BY seq").fetchall()
            except sqlite3.Error as exc:
                self._failed(exc)
                return []
        return [
            StoredText(text, to, channel, reply_to, created, packet_id, attempt, requester, kind, bool(stranger), row)
            for text, to, channel, reply_to, created, packet_id, attempt, requester, kind, stranger, row in found
        ]

    # --- commands answered -------------------------------------------------------------------------
    def answered(self, key: tuple[int, int]) -> None:
        """A command was answered with nothing to send (its replies go with enqueue())."""
        with self._transaction() as db:
            if db is not None:
                self._answer(db, key)

    def answered_since(self, window_s: float) -> list[tuple[tuple[int, int], float]]:
        """((sender, packet id), age in seconds) of the commands answered within the window,
        oldest first; older ones are pruned."""
        now = time.time()
        rows: list[tuple[int, int, float]] = []
        with self._transaction() as db:
            if db is None:
                return []
            db.execute("DELETE FROM answered WHERE at < ?", (now - window_s,))
            rows = db.execute("SELECT sender, packet_id, at FROM answered ORDER BY at").fetchall()
        return [((sender, packet_id), max(0.0, now - at)) for sender, packet_id, at in rows]

    # --- counters ----------------------------------------------------------------------------------
    def count(self, name: str, by: int = 1) -> None:
        with self._transaction() as db:
            if db is not None:
                self._add(db, name, by)

    def counters(self) -> dict[str, int]:
        with self._lock:
            if self._db is None:
                return {}
            try:
                return dict(self._db.execute("SELECT name, value FROM counters").fetchall())
            except sqlite3.Error as exc:
                self._failed(exc)
                return {}

    # --- inside --------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Optional[sqlite3.Connection]]:
        """Under the lock: BEGIN ... COMMIT, or ROLLBACK and give up the store on an error.
        Yields None when the store is not open (the caller then does nothing)."""
        with self._lock:
            db = self._db
            if db is None:
                yield None
                return
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                self._failed(exc)
                yield None  # a context manager must yield once, whatever happens
                return
            try:
                yield db
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                self._failed(exc)

    def _failed(self, exc: sqlite3.Error) -> None:
        """Under the lock: a read or write failed (disk full, file removed, I/O error)."""
        db, self._db = self._db, None
        log.warning(
            "state database %s failed (%s): running in memory from now on; texts waiting to be sent and the commands "
            "answered will not survive a restart",
            self.path, _describe(exc),
        )
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                db.close()
        self._unlock()

    def _unlock(self) -> None:
        lock_file, self._lock_file = self._lock_file, None
        if lock_file is not None:
            lock_file.close()  # closing the file releases the lock

    def _remove(self, db: sqlite3.Connection, rows: Sequence[Optional[int]], counter: str) -> None:
        """Delete these rows; count them all (a text never stored, row None, counts too)."""
        db.executemany("DELETE FROM outbox WHERE seq = ?", [(row,) for row in rows if row is not None])
        self._add(db, counter, len(rows))

    @staticmethod
    def _add(db: sqlite3.Connection, name: str, by: int) -> None:
        if by:
            db.execute(
                "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = value + ?",
                (name, by, by),
            )

    def _answer(self, db: sqlite3.Connection, key: tuple[int, int]) -> None:
        now = time.time()
        db.execute("INSERT OR REPLACE INTO answered (sender, packet_id, at) VALUES (?, ?, ?)", (*key, now))
        # Indexed on `at`: finding nothing to prune is cheap.
        db.execute("DELETE FROM answered WHERE at < ?", (now - self._answered_window_s,))


def _text_values(item: StoredText) -> tuple[object, ...]:
    return (
        item.text, item.to, item.channel, item.reply_to, item.created, item.packet_id, item.attempt,
        item.requester, item.kind, int(item.stranger),
    )


class _InUse(OSError):
    """Another process holds the state directory's lock."""


def _exclusive_lock(path: Path) -> IO[bytes]:
    """Hold `path` locked for as long as the returned file stays open (the kernel releases
    it when the process dies, SIGKILL included); OSError if another process holds it."""
    lock_file = open(path, "a+b")  # noqa: SIM115 - kept open on purpose
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.close()
        raise _InUse(f"in use by another meshbot process ({path} is locked)") from None
    except OSError:
        lock_file.close()
        raise
    return lock_file


def _describe(exc: BaseException) -> str:
    """One line for the WARNING: the error's own words, without a traceback."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return str(exc) or type(exc).__name__
