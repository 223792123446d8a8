"""The durable prompt queue and history: one SQLite file in WAL mode, so a crash loses nothing.

Every item moves through one explicit state machine:

    pending → running → success | error | interrupted

`recover()` runs once at start: an item left `running` by a crash goes back to `pending` the first time
and becomes `error` the second time, so a prompt that kills the server cannot crash it forever.
Wall-clock times are stored for people; ordering never trusts them: every change takes the next value of a
persisted sequence counter, which only grows, across restarts and clock changes alike.
"""
from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, no single-instance check
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("sumi.queue")
HISTORY_CAP = 10000
SECRET_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")
SECRET_MARKERS = ("token", "api_key", "apikey", "password", "secret")
CRASHED_TWICE = "the server stopped twice while running this prompt"


class State(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    ERROR = "error"
    INTERRUPTED = "interrupted"


FINISHED = (State.SUCCESS, State.ERROR, State.INTERRUPTED)
TRANSITIONS = {
    State.PENDING: {State.RUNNING},
    State.RUNNING: {State.SUCCESS, State.ERROR, State.INTERRUPTED},
}
# Only recover() and release() may take a running item back to pending (or fail it without a run).
RESTART_TRANSITIONS = {State.RUNNING: {State.PENDING, State.ERROR}}


class InvalidTransition(Exception):
    """A state change the machine does not allow (finishing a pending item, re-running a finished one…)."""


class DuplicatePromptId(ValueError):
    """A prompt id that is already queued or in history."""


class StoreInUse(RuntimeError):
    """Another PromptStore (another server) holds this database: two workers would re-run each other's prompts."""


def is_secret(key: str) -> bool:
    lowered = key.lower()
    return key in SECRET_KEYS or any(marker in lowered for marker in SECRET_MARKERS)


def split_secrets(extra_data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(extra_data without credentials, the credentials). Only top-level keys: extra_pnginfo is user content."""
    public = {k: v for k, v in extra_data.items() if not is_secret(k)}
    return public, {k: v for k, v in extra_data.items() if is_secret(k)}


@dataclass
class QueueItem:
    """One prompt as stored; `as_comfy()` is ComfyUI's `[number, prompt_id, prompt, extra_data, outputs]`."""

    prompt_id: str
    number: float
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    outputs_to_execute: list[str]
    state: State
    attempts: int
    queued_at: float
    started_at: float | None = None
    finished_at: float | None = None

    def as_comfy(self) -> list[Any]:
        number = int(self.number) if float(self.number).is_integer() else self.number
        return [number, self.prompt_id, self.prompt, self.extra_data, self.outputs_to_execute]


SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,   -- insertion order: the tie-break after number
    prompt_id TEXT NOT NULL UNIQUE,
    number REAL NOT NULL,
    prompt TEXT NOT NULL,
    extra_data TEXT NOT NULL,                -- secrets already stripped
    outputs_to_execute TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    changed INTEGER NOT NULL,                -- sequence number of the last state change
    finished INTEGER,                        -- sequence number when it finished: history order
    queued_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    outputs TEXT,
    messages TEXT,
    meta TEXT,
    workflow_id TEXT                         -- the editor workflow's id (extra_pnginfo.workflow.id), for job lists
);
CREATE INDEX IF NOT EXISTS items_pending ON items (state, number, seq);
CREATE INDEX IF NOT EXISTS items_history ON items (finished);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value REAL NOT NULL);
"""
# Added after the first release: created on databases that predate them.
MIGRATIONS = (("workflow_id", "ALTER TABLE items ADD COLUMN workflow_id TEXT"),)
# Covers job-list queries: a page is found in the index alone (filtered and ordered there), then only its
# rows are read; a row's later columns sit past its large prompt and extra_data, which cost to walk through.
INDEXES = """
CREATE INDEX IF NOT EXISTS items_jobs ON items (queued_at, seq, state, started_at, finished_at, workflow_id);
"""
JOB_COLUMNS = "prompt_id, number, state, queued_at, started_at, finished_at, workflow_id, outputs, messages, meta"
JOB_ORDERS = ("created", "duration")
COLUMNS = "prompt_id, number, prompt, extra_data, outputs_to_execute, state, attempts, queued_at, started_at, " \
          "finished_at"


def _dumps(value: Any) -> str:
    return json.dumps(value, default=repr)


class PromptStore:
    """Queue and history of prompts in one SQLite database; safe to share between threads."""

    def __init__(self, path: str | Path, history_cap: int = HISTORY_CAP) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.history_cap = history_cap
        self._lock = threading.RLock()
        self._lock_file = self._claim()
        try:
            # One connection behind a lock: writes are tiny, and SQLite serialises writers anyway.
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: a committed item survives a crash or kill -9 of the server (only an OS crash or power
            # cut can lose the last commits); FULL would add an fsync per commit, doubling a cached round trip.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
            present = {row[1] for row in self._db.execute("PRAGMA table_info(items)")}
            for column, statement in MIGRATIONS:
                if column not in present:
                    self._db.execute(statement)
            self._db.executescript(INDEXES)
        except BaseException:
            self._lock_file.close()
            raise

    def _claim(self) -> Any:
        """Hold an exclusive lock on `<db>.lock` for the store's lifetime, so a second server on the same
        database refuses to start instead of re-queuing the first one's running prompt (the OS drops the
        lock when the process dies, kill -9 included)."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        handle = open(lock_path, "a+b")  # held open until close()
        if fcntl is None:
            return handle
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.close()
            raise StoreInUse(f"the queue database {self.path} is in use by another Sumi server (it holds "
                             f"{lock_path}); stop that server, or give this one another --database or "
                             "--user-directory") from exc
        return handle

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self._lock_file.close()  # releases the lock

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise

    def _rollback(self) -> None:
        """Roll back what is still open; never raise over the error that got us here."""
        try:
            if self._db.in_transaction:  # not when SQLite already rolled back by itself
                self._db.execute("ROLLBACK")
        except sqlite3.Error:
            log.exception("rollback failed")

    def _bump(self, db: sqlite3.Connection, name: str, at_least: float = 0) -> float:
        row = db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        value = max((row[0] if row else 0) + 1, at_least)
        db.execute("INSERT OR REPLACE INTO counters (name, value) VALUES (?, ?)", (name, value))
        return value

    def _stamp(self, db: sqlite3.Connection) -> tuple[int, float]:
        """(next change sequence number, wall time never earlier than the last one stored)."""
        seq = int(self._bump(db, "change"))
        row = db.execute("SELECT value FROM counters WHERE name = 'wall'").fetchone()
        wall = max(time.time(), row[0] if row else 0.0)
        db.execute("INSERT OR REPLACE INTO counters (name, value) VALUES ('wall', ?)", (wall,))
        return seq, wall

    def next_number(self) -> int:
        """The server's priority counter (ComfyUI's `number`), persisted so new prompts queue after old ones."""
        with self._tx() as db:
            return int(self._bump(db, "number")) - 1

    # -- queue -------------------------------------------------------------------------------------------

    def enqueue(self, prompt_id: str, number: float, prompt: dict[str, Any], extra_data: dict[str, Any],
                outputs_to_execute: list[str]) -> QueueItem:
        """Store a pending prompt; credentials in extra_data are dropped here, never written."""
        if not math.isfinite(number):
            raise ValueError(f"number must be finite, not {number}")
        public, _ = split_secrets(extra_data)
        try:
            with self._tx() as db:
                seq, wall = self._stamp(db)
                db.execute("INSERT INTO items (prompt_id, number, prompt, extra_data, outputs_to_execute, state, "
                           "changed, queued_at, workflow_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (prompt_id, float(number), _dumps(prompt), _dumps(public), _dumps(outputs_to_execute),
                            State.PENDING, seq, wall, workflow_id_of(public)))
                if number >= 0:  # keep the server counter above explicit numbers, as later prompts must follow
                    row = db.execute("SELECT value FROM counters WHERE name = 'number'").fetchone()
                    if row is None or row[0] <= number:
                        db.execute("INSERT OR REPLACE INTO counters (name, value) VALUES ('number', ?)",
                                   (float(int(number) + 1),))
        except sqlite3.IntegrityError as exc:
            if "UNIQUE" in str(exc) and "items.prompt_id" in str(exc):
                raise DuplicatePromptId(f"prompt id {prompt_id!r} is already queued or in history") from exc
            raise
        return QueueItem(prompt_id, float(number), prompt, public, list(outputs_to_execute), State.PENDING, 0, wall)

    def claim_next(self) -> QueueItem | None:
        """Atomically take the pending item with the lowest number (then oldest) and mark it running."""
        with self._tx() as db:
            row = db.execute("SELECT prompt_id FROM items WHERE state = ? ORDER BY number, seq LIMIT 1",
                             (State.PENDING,)).fetchone()
            if row is None:
                return None
            self._move(db, row[0], State.RUNNING)
            return self._get(db, row[0])

    def _move(self, db: sqlite3.Connection, prompt_id: str, to: State, *,
              edges: dict[State, set[State]] = TRANSITIONS, **columns: Any) -> None:
        current = self._state(db, prompt_id)
        if current is None:
            raise KeyError(prompt_id)
        if to not in edges.get(current, set()):
            raise InvalidTransition(f"prompt {prompt_id}: {current} → {to} is not allowed")
        seq, wall = self._stamp(db)
        sets = {"state": to.value, "changed": seq, **columns}
        if to is State.RUNNING:
            sets["started_at"] = wall
            db.execute("UPDATE items SET attempts = attempts + 1 WHERE prompt_id = ?", (prompt_id,))
        if to in FINISHED:
            sets["finished"], sets["finished_at"] = seq, wall
        assignments = ", ".join(f"{name} = ?" for name in sets)
        db.execute(f"UPDATE items SET {assignments} WHERE prompt_id = ?", (*sets.values(), prompt_id))

    def finish(self, prompt_id: str, state: State | str, outputs_ui: dict[str, Any] | None = None,
               status_messages: list[Any] | None = None, meta: dict[str, Any] | None = None) -> None:
        """running → success | error | interrupted, with what history shows; then trims history to its cap."""
        state = State(state)
        if state not in FINISHED:
            raise InvalidTransition(f"finish() takes a final state, not {state}")
        with self._tx() as db:
            self._move(db, prompt_id, state, outputs=_dumps(outputs_ui or {}),
                       messages=_dumps(status_messages or []), meta=_dumps(meta or {}))
            excess = db.execute("SELECT COUNT(*) FROM items WHERE finished IS NOT NULL").fetchone()[0] \
                - self.history_cap
            if excess > 0:
                db.execute("DELETE FROM items WHERE seq IN (SELECT seq FROM items WHERE finished IS NOT NULL "
                           "ORDER BY finished LIMIT ?)", (excess,))

    def release(self, prompt_id: str) -> None:
        """running → pending for a clean shutdown: the prompt resumes after restart and the try is not counted."""
        with self._tx() as db:
            self._move(db, prompt_id, State.PENDING, edges=RESTART_TRANSITIONS)
            db.execute("UPDATE items SET attempts = MAX(attempts - 1, 0) WHERE prompt_id = ?", (prompt_id,))

    def recover(self) -> tuple[list[str], list[str]]:
        """After a crash: items left running are re-queued once, failed the second time. Returns (requeued, failed)."""
        requeued, failed = [], []
        with self._tx() as db:
            rows = db.execute("SELECT prompt_id, attempts FROM items WHERE state = ? ORDER BY seq",
                              (State.RUNNING,)).fetchall()
            for prompt_id, attempts in rows:
                if attempts >= 2:
                    message = ["execution_error", {"prompt_id": prompt_id, "node_id": None, "node_type": None,
                                                   "executed": [], "exception_message": CRASHED_TWICE,
                                                   "exception_type": "ServerStopped", "traceback": [],
                                                   "current_inputs": {}, "current_outputs": [],
                                                   "timestamp": int(time.time() * 1000)}]
                    self._move(db, prompt_id, State.ERROR, edges=RESTART_TRANSITIONS, outputs="{}",
                               messages=_dumps([message]), meta="{}")
                    failed.append(prompt_id)
                else:
                    self._move(db, prompt_id, State.PENDING, edges=RESTART_TRANSITIONS)
                    requeued.append(prompt_id)
        return requeued, failed

    def _state(self, db: sqlite3.Connection, prompt_id: str) -> State | None:
        row = db.execute("SELECT state FROM items WHERE prompt_id = ?", (prompt_id,)).fetchone()
        return State(row[0]) if row else None

    def _get(self, db: sqlite3.Connection, prompt_id: str) -> QueueItem | None:
        row = db.execute(f"SELECT {COLUMNS} FROM items WHERE prompt_id = ?", (prompt_id,)).fetchone()
        return _item(row) if row else None

    def get(self, prompt_id: str) -> QueueItem | None:
        with self._lock:
            return self._get(self._db, prompt_id)

    def _items(self, state: State) -> list[QueueItem]:
        with self._lock:
            rows = self._db.execute(f"SELECT {COLUMNS} FROM items WHERE state = ? ORDER BY number, seq",
                                    (state,)).fetchall()
        return [_item(row) for row in rows]

    def snapshot(self) -> tuple[list[QueueItem], list[QueueItem]]:
        """(pending, running) read together: no item is claimed between the two reads."""
        with self._lock:
            return self._items(State.PENDING), self._items(State.RUNNING)

    def pending(self) -> list[QueueItem]:
        return self._items(State.PENDING)

    def running(self) -> list[QueueItem]:
        return self._items(State.RUNNING)

    def queue_remaining(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM items WHERE state IN (?, ?)",
                                    (State.PENDING, State.RUNNING)).fetchone()[0]

    def delete_pending(self, prompt_ids: Iterable[str]) -> int:
        """Remove pending items (a running or finished item is untouched); returns how many went."""
        ids = list(prompt_ids)
        with self._tx() as db:
            return sum(db.execute("DELETE FROM items WHERE prompt_id = ? AND state = ?",
                                  (pid, State.PENDING)).rowcount for pid in ids)

    def clear_pending(self) -> int:
        with self._tx() as db:
            return db.execute("DELETE FROM items WHERE state = ?", (State.PENDING,)).rowcount

    # -- history -----------------------------------------------------------------------------------------

    def history(self, max_items: int | None = None, offset: int | None = None) -> dict[str, dict[str, Any]]:
        """Finished prompts in finishing order, ComfyUI's shape. A negative offset with max_items gives the last N."""
        with self._lock:
            total = self._db.execute("SELECT COUNT(*) FROM items WHERE finished IS NOT NULL").fetchone()[0]
            if offset is None or offset < 0:
                offset = max(total - max_items, 0) if max_items is not None else 0
            limit = -1 if max_items is None else max(max_items, 0)
            rows = self._db.execute(f"SELECT {COLUMNS}, outputs, messages, meta FROM items "
                                    "WHERE finished IS NOT NULL ORDER BY finished LIMIT ? OFFSET ?",
                                    (limit, offset)).fetchall()
        return {row[0]: _entry(row) for row in rows}

    def history_item(self, prompt_id: str) -> dict[str, dict[str, Any]]:
        """`{prompt_id: entry}`, or `{}` when it has not finished (or never existed)."""
        with self._lock:
            row = self._db.execute(f"SELECT {COLUMNS}, outputs, messages, meta FROM items "
                                   "WHERE prompt_id = ? AND finished IS NOT NULL", (prompt_id,)).fetchone()
        return {row[0]: _entry(row)} if row else {}

    def delete_history(self, prompt_ids: Iterable[str]) -> int:
        ids = list(prompt_ids)
        with self._tx() as db:
            return sum(db.execute("DELETE FROM items WHERE prompt_id = ? AND finished IS NOT NULL",
                                  (pid,)).rowcount for pid in ids)

    def clear_history(self) -> int:
        with self._tx() as db:
            return db.execute("DELETE FROM items WHERE finished IS NOT NULL").rowcount


    # -- jobs (every item, any state, a page at a time) ----------------------------------------------------

    def jobs(self, states: Iterable[State] = tuple(State), *, order: str = "created", descending: bool = True,
             limit: int | None = None, offset: int = 0, workflow_id: str | None = None) -> tuple[list[JobRow], int]:
        """(one page of items in `states`, how many there are in all). `order`: "created" (queued time) or
        "duration" (run time so far; items that never started last). Ties keep insertion order."""
        if order not in JOB_ORDERS:
            raise ValueError(f"order must be one of {', '.join(JOB_ORDERS)}, not {order!r}")
        wanted = [State(s).value for s in states]
        if not wanted:
            return [], 0
        where = f"state IN ({', '.join('?' * len(wanted))})"
        params: list[Any] = list(wanted)
        if workflow_id is not None:
            where += " AND workflow_id = ?"
            params.append(workflow_id)
        direction = "DESC" if descending else "ASC"
        if order == "created":
            order_by = f"queued_at {direction}, seq {direction}"
            order_params: list[Any] = []
        else:
            duration = "(COALESCE(finished_at, ?) - started_at)"
            order_by = f"started_at IS NULL, {duration} {direction}, seq {direction}"
            order_params = [time.time()]
        with self._lock:
            total = self._db.execute(f"SELECT COUNT(*) FROM items WHERE {where}", params).fetchone()[0]
            page = [row[0] for row in self._db.execute(
                f"SELECT seq FROM items INDEXED BY items_jobs WHERE {where} ORDER BY {order_by} LIMIT ? OFFSET ?",
                (*params, *order_params, -1 if limit is None else max(limit, 0), max(offset, 0)))]
            found = {}
            for start in range(0, len(page), 500):  # SQLite's bound-parameter limit, in chunks
                chunk = page[start:start + 500]
                found.update((row[0], row[1:]) for row in self._db.execute(
                    f"SELECT seq, {JOB_COLUMNS} FROM items WHERE seq IN ({', '.join('?' * len(chunk))})", chunk))
        rows = [found[seq] for seq in page if seq in found]
        return [_job(row) for row in rows], total

    def job(self, prompt_id: str) -> tuple[JobRow, QueueItem] | None:
        """One item with everything stored about it (its prompt and extra_data too), or None."""
        with self._lock:
            row = self._db.execute(f"SELECT {JOB_COLUMNS} FROM items WHERE prompt_id = ?",
                                   (prompt_id,)).fetchone()
            item = self._get(self._db, prompt_id)
        return (_job(row), item) if row is not None and item is not None else None


@dataclass
class JobRow:
    """What a job list shows of an item: no prompt, no extra_data (they can be large)."""

    prompt_id: str
    number: float
    state: State
    queued_at: float
    started_at: float | None
    finished_at: float | None
    workflow_id: str | None
    outputs: dict[str, Any]
    messages: list[Any]
    meta: dict[str, Any]


def workflow_id_of(extra_data: dict[str, Any]) -> str | None:
    """The id ComfyUI's editor gives a workflow (`extra_pnginfo.workflow.id`), if the prompt carries one."""
    pnginfo = extra_data.get("extra_pnginfo")
    workflow = pnginfo.get("workflow") if isinstance(pnginfo, dict) else None
    wid = workflow.get("id") if isinstance(workflow, dict) else None
    return str(wid) if isinstance(wid, (str, int)) and not isinstance(wid, bool) else None


def _job(row: tuple[Any, ...]) -> JobRow:
    pid, number, state, queued, started, finished, wid, outputs, messages, meta = row
    return JobRow(pid, number, State(state), queued, started, finished, wid, json.loads(outputs) if outputs else {},
                  json.loads(messages) if messages else [], json.loads(meta) if meta else {})


def _item(row: tuple[Any, ...]) -> QueueItem:
    pid, number, prompt, extra, outputs, state, attempts, queued, started, finished = row[:10]
    return QueueItem(pid, number, json.loads(prompt), json.loads(extra), json.loads(outputs), State(state),
                     attempts, queued, started, finished)


def _entry(row: tuple[Any, ...]) -> dict[str, Any]:
    item = _item(row)
    outputs, messages, meta = (json.loads(v) if v else None for v in row[10:13])
    return {"prompt": item.as_comfy(), "outputs": outputs or {},
            # ComfyUI has no "interrupted" status string: an interrupted prompt reads as a not-completed error.
            "status": {"status_str": "success" if item.state is State.SUCCESS else "error",
                       "completed": item.state is State.SUCCESS, "messages": messages or []},
            "meta": meta or {}}
