"""The step queue: Huey, used as a wake-up list of steps to run.

A task carries only a step key, `(event_id, rule, index)`. Huey removes a
task from its store when a worker takes it, so a task can be lost (a worker
killed mid-step); the journal, not this queue, is the record of what is
owed, and its recovery pass enqueues a lost step again. A task may
therefore arrive twice: workers claim the step in the journal first and
drop a task whose step is not theirs to run.

recflow runs its own worker threads instead of Huey's consumer, so that the
web server keeps its signal handlers; this module moves delayed tasks from
Huey's schedule to its queue (`move_due`) as the consumer's scheduler would.
"""

from __future__ import annotations

import itertools
import logging
import os
import sqlite3
import threading
from collections.abc import Sequence
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import huey
from huey.storage import RedisStorage, SqliteStorage

from recflow.errors import BackendError

logger = logging.getLogger(__name__)

QUEUE_NAME = "recflow"


class StepKey(NamedTuple):
    """One step of one rule for one event: what a task names."""

    event_id: str
    rule: str
    step_index: int


class Backend(NamedTuple):
    """A parsed backend URL: `kind` is "sqlite" or "redis"."""

    kind: str
    location: str  # a file path for sqlite, the URL itself for redis


def parse_backend(url: str, base_dir: str = ".") -> Backend:
    """Split a backend URL; a relative SQLite path is relative to `base_dir`.

    `sqlite:///var/recflow.db` is relative and `sqlite:////srv/recflow.db`
    absolute, as in SQLAlchemy's URLs.
    """
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
        if not path:
            raise BackendError(f"backend {url!r}: no file path after sqlite:///")
        if not os.path.isabs(path):
            path = os.path.normpath(os.path.join(base_dir, path))
        return Backend("sqlite", path)
    if url.startswith(("redis://", "rediss://", "unix://")):
        return Backend("redis", url)
    scheme = urlsplit(url).scheme or url
    raise BackendError(
        f"backend {scheme!r} is not supported: use sqlite:///PATH or redis://HOST:PORT/DB"
    )


_write_locks: dict[str, threading.Lock] = {}
_write_locks_guard = threading.Lock()


def sqlite_write_lock(path: str) -> threading.Lock:
    """The lock this process's writers to the SQLite file `path` take turns on.

    SQLite lets one writer in at a time and makes the others poll, sleeping
    1, 2, 5... ms between tries: a committer that runs into a worker's
    transaction would lose milliseconds each time. Within a process, the
    journal and Huey's storage wait on this lock instead, and are woken as
    soon as it is free; other processes still meet SQLite's own busy wait.
    """
    key = os.path.realpath(path)
    with _write_locks_guard:
        return _write_locks.setdefault(key, threading.Lock())


class _SqliteStorage(SqliteStorage):
    """Huey's SQLite storage with `synchronous=NORMAL` and batched enqueues.

    The journal commits what is owed with a full fsync; a queue entry lost
    to a power cut is found again by the recovery pass, so enqueueing need
    not pay for an fsync of its own. WAL with NORMAL never corrupts the file.

    `insert_tasks` writes into Huey's own `task` table (its columns `queue`,
    `data`, `priority`, as `SqliteStorage.enqueue` does, one row each), so it
    depends on that schema; `tests/test_queue.py` checks that such a task is
    taken by `StepQueue.take`, which would fail if a Huey release changed it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Huey's lock guards its one connection; sharing the journal's makes
        # their writes take turns without SQLite's sleeping busy wait.
        self.lock = sqlite_write_lock(self.filename)

    def _create_connection(self) -> Any:
        conn = super()._create_connection()
        conn.execute("pragma synchronous=NORMAL")
        return conn

    def enqueue_many(self, blobs: list[bytes]) -> None:
        """Enqueue serialised tasks, all in one transaction."""
        with self.db(commit=True) as cursor:
            self.insert_tasks(cursor, blobs)

    def insert_tasks(self, cursor: sqlite3.Cursor | sqlite3.Connection, blobs: list[bytes]) -> None:
        """Insert serialised tasks in the transaction `cursor` has open, on this file.

        One multi-row statement rather than `executemany`, which lets go of
        the GIL and takes it back for every row.
        """
        if not blobs:
            return
        values = [value for blob in blobs for value in (self.name, self.to_blob(blob))]
        marks = ", ".join(["(?, ?, 0)"] * len(blobs))  # parameter marks only
        sql = "insert into task (queue, data, priority) values " + marks  # noqa: S608
        cursor.execute(sql, values)


class _RedisStorage(RedisStorage):
    """Huey's Redis storage with batched enqueues: one LPUSH for many tasks.

    LPUSH with several values pushes them in order onto the head, and Huey
    pops from the tail, so they are taken in the order given.
    """

    def enqueue_many(self, blobs: list[bytes]) -> None:
        """Enqueue serialised tasks in one round trip."""
        self.conn.lpush(self.queue_key, *blobs)


class StepQueue:
    """Enqueue step keys now or later, and take them, through one Huey."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        try:
            if backend.kind == "sqlite":
                os.makedirs(os.path.dirname(backend.location) or ".", exist_ok=True)
                self.huey: huey.Huey = huey.Huey(
                    QUEUE_NAME,
                    results=False,
                    storage_class=_SqliteStorage,
                    filename=backend.location,
                    timeout=10,
                )
            else:
                try:
                    import redis
                except ImportError:
                    raise BackendError(
                        "a redis:// backend needs the redis package: pip install 'recflow[redis]'"
                    ) from None
                # Socket timeouts, so that a Redis gone silent (a network cut)
                # fails a worker's read instead of hanging it; above the
                # 1 s blocking read that Huey's dequeue waits for work.
                pool = redis.ConnectionPool.from_url(
                    backend.location, socket_timeout=10, socket_connect_timeout=5
                )
                self.huey = huey.Huey(
                    QUEUE_NAME,
                    results=False,
                    storage_class=_RedisStorage,
                    connection_pool=pool,
                )
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(f"cannot open the queue {backend.location}: {exc}") from exc
        # The body never runs: workers read the task's arguments and run the
        # step themselves, so that the journal decides whether it runs.
        self._task = self.huey.task(name="recflow.step")(_never_called)
        self._storage: _SqliteStorage | _RedisStorage = self.huey.storage
        # Wakes this process's idle workers as soon as it enqueues something.
        self.wakeup = threading.Event()
        self._ids = os.urandom(6).hex()
        self._count = itertools.count(1)

    def put(self, key: StepKey, delay: float = 0.0) -> None:
        """Enqueue one step, to be taken after `delay` seconds."""
        args = (key.event_id, key.rule, key.step_index)
        if delay > 0:
            self._task.schedule(args=args, delay=delay)
        else:
            self._task(*args)
            self.wakeup.set()

    def put_many(self, keys: Sequence[StepKey]) -> None:
        """Enqueue steps to run now, in one transaction (one round trip on Redis).

        Errors are logged, not raised: the recovery pass resends what is owed.
        """
        if not keys:
            return
        try:
            self._storage.enqueue_many(self._serialize(keys))
        except Exception as exc:
            _log_lost(keys, exc)
            return
        self.wakeup.set()

    def shares_file(self, path: str) -> bool:
        """True when this queue is SQLite and lives in the file `path`."""
        return self.backend.kind == "sqlite" and self.backend.location == path

    def put_many_in(self, conn: sqlite3.Connection, keys: Sequence[StepKey]) -> None:
        """Enqueue steps through `conn`, inside the transaction it has open.

        For a journal in the same SQLite file (`shares_file`): the tasks
        then commit, or not, with what the journal writes. The caller sets
        `wakeup` once that transaction has committed. A failed insert is
        undone alone (a savepoint) and logged: the journal's commit goes on,
        and the recovery pass enqueues those steps.
        """
        if not keys:
            return
        storage = self._storage
        if not isinstance(storage, _SqliteStorage):
            raise TypeError("put_many_in needs a SQLite queue")
        conn.execute("savepoint recflow_tasks")
        try:
            storage.insert_tasks(conn, self._serialize(keys))
        except Exception as exc:
            conn.execute("rollback to recflow_tasks")
            _log_lost(keys, exc)
        conn.execute("release recflow_tasks")

    def _serialize(self, keys: Sequence[StepKey]) -> list[bytes]:
        # Huey names each task with a uuid4, a system call each (os.urandom)
        # that lets go of the GIL; a counter under a random prefix is as
        # unique, and recflow never looks tasks up by id.
        make = self._task.task_class
        return [
            self.huey.serialize_task(make(tuple(key), None, id=f"{self._ids}-{next(self._count)}"))
            for key in keys
        ]

    def take(self) -> StepKey | None:
        """The next step key due now, or None when the queue is empty."""
        task = self.huey.dequeue()
        if task is None:
            return None
        if not self.huey.ready_to_run(task):
            self.huey.add_schedule(task)
            return None
        event_id, rule, index = task.args
        return StepKey(str(event_id), str(rule), int(index))

    def move_due(self) -> int:
        """Move delayed tasks whose time has come to the queue; how many."""
        tasks = self.huey.read_schedule()
        for task in tasks:
            self.huey.enqueue(task)
        if tasks:
            self.wakeup.set()
        return len(tasks)

    def pending(self) -> int:
        """Tasks waiting in the queue (not counting delayed ones)."""
        return int(self.huey.pending_count())

    def flush(self) -> None:
        """Forget every queued and scheduled task (the journal stays)."""
        self.huey.storage.flush_queue()
        self.huey.storage.flush_schedule()


def _log_lost(keys: Sequence[StepKey], exc: Exception) -> None:
    first = keys[0]
    logger.warning(
        "could not enqueue %d steps (%s/%s/%d first), the recovery pass will: %s",
        len(keys),
        first.event_id,
        first.rule,
        first.step_index,
        exc,
    )


def _never_called(event_id: str, rule: str, index: int) -> None:
    raise RuntimeError("recflow steps are run by recflow.worker, not by Huey's consumer")
