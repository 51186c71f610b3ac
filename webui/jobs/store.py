"""The task records, kept in an embedded SQLite file (``<data-dir>/tasks.sqlite3``) so that a restart -- even
after ``kill -9`` -- knows every task: queued ones run again, the one that was running is marked failed with
the reason, finished ones still answer ``GET /sdapi/v1/tasks/{id}`` with their state and saved files.

A record: id, kind, owner, state, times, error, and for API generations the request body (``payload``,
JSON) that lets a queued task be submitted again after a restart, and its result (``result``, JSON: the
saved files and infotexts). SQLite in WAL mode: each change is one committed transaction, which survives
the process being killed at any point. A store that cannot write (full disk, read-only folder) logs the
error once and the queue goes on in memory.
"""
from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    kind TEXT NOT NULL,
    owner TEXT,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    error TEXT,
    payload TEXT,
    result TEXT
)
"""
KEEP_FINISHED = 1000          # finished records kept; older ones are deleted
# a record's columns, in the order ``_record`` reads them
_SELECT = "SELECT id, kind, owner, state, created, started, finished, error, payload, result FROM tasks"


@dataclass
class TaskRecord:
    id: str
    kind: str
    owner: str | None
    state: str
    created: float
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    payload: dict | None = None
    result: dict | None = None


class TaskStore:
    """Task records in one SQLite file; safe to call from the worker and the request threads."""

    def __init__(self, path: str | Path, log: Callable[[str], None] = print):
        self.path = Path(path)
        self.log = log
        self._lock = threading.Lock()
        self._failed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(SCHEMA)

    def _write(self, sql: str, args: tuple) -> None:
        self._read(sql, args)

    def _read(self, sql: str, args: tuple) -> list[tuple]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:         # full disk, read-only folder, damaged file ...: the queue goes on
                if not self._failed:
                    self.log(f"warning: the task records in {self.path} could not be written or read ({exc}); "
                             "tasks go on, but a restart will not know them")
                self._failed = True
                return []

    def add(self, record: TaskRecord) -> None:
        self._write("INSERT OR REPLACE INTO tasks (id, kind, owner, state, created, payload) VALUES (?, ?, ?, ?, ?, ?)",
                    (record.id, record.kind, record.owner, record.state, record.created,
                     None if record.payload is None else json.dumps(record.payload)))

    def started(self, task_id: str, when: float) -> None:
        self._write("UPDATE tasks SET state = 'running', started = ? WHERE id = ?", (when, task_id))

    def finished(self, task_id: str, state: str, when: float, error: str | None = None,
                 result: dict | None = None) -> None:
        """A finished task keeps its record (and result); its request body is dropped."""
        self._write("UPDATE tasks SET state = ?, finished = ?, error = ?, result = ?, payload = NULL WHERE id = ?",
                    (state, when, error, None if result is None else json.dumps(result), task_id))
        self._write("DELETE FROM tasks WHERE finished IS NOT NULL AND seq <= "
                    "(SELECT seq FROM tasks WHERE finished IS NOT NULL ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                    (KEEP_FINISHED,))

    def get(self, task_id: str) -> TaskRecord | None:
        rows = self._read(f"{_SELECT} WHERE id = ?", (task_id,))
        return _record(rows[0]) if rows else None

    def unfinished(self) -> list[TaskRecord]:
        """Queued and running records, in submission order."""
        rows = self._read(f"{_SELECT} WHERE state IN ('queued', 'running') ORDER BY seq", ())
        return [_record(row) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _record(row: tuple[Any, ...]) -> TaskRecord:
    payload, result = (None if v is None else json.loads(v) for v in row[8:10])
    return TaskRecord(*row[:8], payload=payload, result=result)
