"""SQLite persistence of the sandbox cloud (stdlib ``sqlite3``).

The in-memory dicts in :mod:`inventory.sandbox.cloud` are the working copy; every mutation is
written through to this file at once, so killing the sandbox with SIGKILL loses nothing: a restart
with the same ``--state-file`` finds the same instances, rented asks, installed keys and SSH ports.
One connection shared by all threads, guarded by a lock (sqlite3 objects are not thread-safe).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    key TEXT PRIMARY KEY,          -- "<dialect>/<id>"
    dialect TEXT NOT NULL,
    data TEXT NOT NULL             -- the whole instance record as JSON
);
CREATE TABLE IF NOT EXISTS meta (
    k TEXT PRIMARY KEY,
    v TEXT NOT NULL
);
"""


class Store:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # isolation_level=None: autocommit, each statement is durable on its own.
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(SCHEMA)

    def load_instances(self) -> dict[str, dict]:
        with self._lock:
            rows = self._db.execute("SELECT key, data FROM instances").fetchall()
        return {key: json.loads(data) for key, data in rows}

    def save_instance(self, key: str, record: dict) -> None:
        data = json.dumps(record, sort_keys=True)
        with self._lock:
            self._db.execute(
                "INSERT INTO instances(key, dialect, data) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET data = excluded.data",
                (key, record["dialect"], data),
            )

    def save_instances(self, items: list[tuple[str, dict]]) -> None:
        """Insert or replace many ``(key, record)`` pairs in one transaction (one sync, not N)."""
        rows = [(key, record["dialect"], json.dumps(record, sort_keys=True)) for key, record in items]
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(
                    "INSERT INTO instances(key, dialect, data) VALUES (?, ?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET data = excluded.data",
                    rows,
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def delete_instance(self, key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM instances WHERE key = ?", (key,))

    def get_meta(self, k: str, default: str | None = None) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT v FROM meta WHERE k = ?", (k,)).fetchone()
        return row[0] if row else default

    def set_meta(self, k: str, v: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO meta(k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v", (k, v)
            )

    def next_counter(self, name: str, start: int) -> int:
        """A persistent sequence (Vast instance ids), so ids never repeat across restarts."""
        with self._lock:
            row = self._db.execute("SELECT v FROM meta WHERE k = ?", (name,)).fetchone()
            value = int(row[0]) + 1 if row else start
            self._db.execute(
                "INSERT INTO meta(k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
                (name, str(value)),
            )
        return value

    def reserve_counter(self, name: str, start: int, count: int) -> int:
        """Take ``count`` consecutive values of a :meth:`next_counter` sequence; returns the first."""
        with self._lock:
            row = self._db.execute("SELECT v FROM meta WHERE k = ?", (name,)).fetchone()
            first = int(row[0]) + 1 if row else start
            self._db.execute(
                "INSERT INTO meta(k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
                (name, str(first + count - 1)),
            )
        return first

    def close(self) -> None:
        with self._lock:
            self._db.close()
