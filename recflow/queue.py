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

import logging
import os
import threading
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import huey
from huey.storage import SqliteStorage

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


class _SqliteStorage(SqliteStorage):
    """Huey's SQLite storage with `synchronous=NORMAL` on its connections.

    The journal commits what is owed with a full fsync; a queue entry lost
    to a power cut is found again by the recovery pass, so enqueueing need
    not pay for an fsync of its own. WAL with NORMAL never corrupts the file.
    """

    def _create_connection(self) -> Any:
        conn = super()._create_connection()
        conn.execute("pragma synchronous=NORMAL")
        return conn


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
                self.huey = huey.RedisHuey(QUEUE_NAME, results=False, connection_pool=pool)
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(f"cannot open the queue: {exc}") from exc
        # The body never runs: workers read the task's arguments and run the
        # step themselves, so that the journal decides whether it runs.
        self._task = self.huey.task(name="recflow.step")(_never_called)
        # Wakes this process's idle workers as soon as it enqueues something.
        self.wakeup = threading.Event()

    def put(self, key: StepKey, delay: float = 0.0) -> None:
        """Enqueue one step, to be taken after `delay` seconds."""
        args = (key.event_id, key.rule, key.step_index)
        if delay > 0:
            self._task.schedule(args=args, delay=delay)
        else:
            self._task(*args)
            self.wakeup.set()

    def put_many(self, keys: list[StepKey]) -> None:
        """Enqueue steps to run now; errors are logged, recovery resends."""
        for key in keys:
            try:
                self.put(key)
            except Exception as exc:
                logger.warning(
                    "could not enqueue step %s/%s/%d, the recovery pass will: %s",
                    key.event_id,
                    key.rule,
                    key.step_index,
                    exc,
                )

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


def _never_called(event_id: str, rule: str, index: int) -> None:
    raise RuntimeError("recflow steps are run by recflow.worker, not by Huey's consumer")
