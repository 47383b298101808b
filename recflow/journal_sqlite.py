"""The journal in SQLite, in the same file as Huey's queue.

The receiver's commit (`record_and_enqueue`) writes the events, their
first steps and Huey's tasks for those steps in one transaction.

WAL mode with `synchronous=FULL`: a commit returns only once it is on disk,
so an event the receiver acknowledged survives `kill -9` and a power cut.
Writers take the write lock up front (`BEGIN IMMEDIATE`) so that two
processes sharing the file never deadlock upgrading a read lock; each
thread has its own connection.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from recflow.errors import BackendError
from recflow.journal import Claim, Journal, NewEvent, Owner, first_step_keys
from recflow.queue import StepKey, StepQueue, sqlite_write_lock

logger = logging.getLogger(__name__)

# The schema's version, in the file's `user_version`. Version 0 keyed each
# step by its event's id, a hash: every commit of the receiver wrote its
# steps into random pages of that key's index, as many pages as events.
# Version 1 keys a step by its event's `seq`, in the order events are
# recorded, so a commit's steps go into the last pages of the index
# (`bench/README.md`: about a tenth less CPU per callback in the commit
# process). A seq may be given again once its event row is deleted: what
# deletes an event (no command does yet) must delete its steps with it.
_VERSION = 1

# How long opening the file waits for another process's write transaction,
# an upgrade above all: one takes about 5 s per 200,000 events. It waits in
# turns of OPEN_TURN seconds: SQLite's busy wait cannot be interrupted, so
# a turn is how soon the wait is logged, and how long Ctrl-C takes.
OPEN_WAIT = 30 * 60.0
OPEN_TURN = 1.0

_SCHEMA = (
    """create table if not exists journal_events (
        seq integer primary key,
        id text not null unique,
        account_sid text not null,
        recording_sid text not null,
        status text not null,
        received_at real not null,
        data text not null,
        rules text not null)""",
    "create index if not exists journal_events_received on journal_events (received_at)",
    """create table if not exists journal_steps (
        event integer not null,
        rule text not null,
        idx integer not null,
        rule_pos integer not null,
        step_id text,
        action text not null,
        state text not null,
        attempts integer not null default 0,
        next_at real not null,
        lease_until real,
        owner text,
        error text,
        outputs text,
        updated_at real not null,
        primary key (event, rule, idx)) without rowid""",
    "create index if not exists journal_steps_state on journal_steps (state, next_at)",
    """create table if not exists journal_runs (
        event_id text not null,
        rule text not null,
        idx integer not null,
        attempt integer not null,
        started_at real not null,
        ended_at real,
        outcome text not null,
        error text,
        outputs text)""",
    "create index if not exists journal_runs_step on journal_runs (event_id, rule, idx)",
)

# Version 0 to 1, in the transaction that opens the file: the old tables
# are renamed, copied into the new ones (events in the order received) and
# dropped. Runs keep their event ids.
_FROM_VERSION_0 = (
    "drop index if exists journal_events_received",
    "drop index if exists journal_steps_state",
    "alter table journal_events rename to journal_events_v0",
    "alter table journal_steps rename to journal_steps_v0",
    *_SCHEMA,
    """insert into journal_events
        (id, account_sid, recording_sid, status, received_at, data, rules)
        select id, account_sid, recording_sid, status, received_at, data, rules
        from journal_events_v0 order by received_at, rowid""",
    """insert into journal_steps
        select e.seq, s.rule, s.idx, s.rule_pos, s.step_id, s.action, s.state,
        s.attempts, s.next_at, s.lease_until, s.owner, s.error, s.outputs, s.updated_at
        from journal_steps_v0 s join journal_events e on e.id = s.event_id""",
)
# Steps of no event (only a file edited by hand has them) are not copied:
# counted before the old tables go.
_LEFT_OUT_OF_VERSION_0 = (
    "select (select count(*) from journal_steps_v0) - (select count(*) from journal_steps)"
)
_DROP_VERSION_0 = ("drop table journal_events_v0", "drop table journal_steps_v0")

# A step's key, (event id, rule, index), as the condition on journal_steps.
_STEP = "event = (select seq from journal_events where id = ?) and rule = ? and idx = ?"
# journal_steps with its event's id, for what lists step keys.
_STEPS_WITH_IDS = "journal_steps s join journal_events e on e.seq = s.event"


class SqliteJournal(Journal):
    """The journal tables in one SQLite file shared by every process."""

    def __init__(
        self,
        path: str,
        busy_timeout: float = 10.0,
        checkpoint_pages: int | None = None,
        upgrade: bool = True,
    ) -> None:
        """`checkpoint_pages`: the WAL size, in pages, past which this process's
        commits checkpoint it (SQLite's default, 1,000, when None). `upgrade`:
        bring a file of an earlier schema up to this one; when False (the
        commands that read the journal), such a file is refused instead.
        """
        self.path = path
        self._busy_timeout = busy_timeout
        self._checkpoint_pages = checkpoint_pages
        self._local = threading.local()
        self._lock = sqlite_write_lock(path)
        try:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            created = not os.path.exists(path)
            self._open_tables(upgrade)
        except OSError as exc:
            raise BackendError(f"cannot open the journal {path}: {exc}") from exc
        if created:
            logger.info("journal %s: a new file, created", path)

    def _open_tables(self, upgrade: bool) -> None:
        """Create or upgrade the tables, waiting out another process's upgrade.

        An upgrade holds the file's write lock far longer than the busy
        timeout that suits a callback's commit. A process opening the file
        meanwhile (another receiver, a worker, `recflow events`) waits for it
        and says so, instead of failing with "database is locked". Any other
        error names the file.
        """
        deadline = time.monotonic() + OPEN_WAIT
        warned = False
        while True:
            try:
                self._open_once(upgrade)
                return
            except (BackendError, sqlite3.Error) as exc:
                cause = exc.__cause__ if isinstance(exc, BackendError) else exc
                if cause is None:
                    raise  # our own words: a later schema, an upgrade not ours to make
                if not _is_busy(cause):
                    raise BackendError(f"cannot open the journal {self.path}: {cause}") from cause
                if time.monotonic() >= deadline:
                    raise BackendError(
                        f"cannot open the journal {self.path}: another process has held"
                        f" its write lock for {OPEN_WAIT / 60:g} minutes"
                    ) from cause
            if not warned:
                logger.warning(
                    "journal %s: another process is writing it, an upgrade perhaps;"
                    " waiting up to %g minutes for it to finish",
                    self.path,
                    OPEN_WAIT / 60,
                )
                warned = True

    def _open_once(self, upgrade: bool) -> None:
        turn = min(OPEN_TURN, self._busy_timeout)
        # The schema version first, read without changing the file: a file
        # of a later recflow, or of another application, is refused before
        # anything switches it to WAL.
        probe = sqlite3.connect(self.path, timeout=turn)
        try:
            (version,) = probe.execute("pragma user_version").fetchone()
            earlier = _has_version_0_steps(probe)
            _refuse_foreign(probe, self.path)
        finally:
            probe.close()
        _refuse_later(version, self.path)
        if earlier and not upgrade:
            _refuse_earlier(self.path)

        started = time.monotonic()
        conn = self._conn()  # the connection `_write` uses, in a turn's busy wait
        conn.execute(f"pragma busy_timeout = {int(turn * 1000)}")
        try:
            with self._write():
                upgraded = _create_or_upgrade(conn, self.path, upgrade)
        finally:
            conn.execute(f"pragma busy_timeout = {int(self._busy_timeout * 1000)}")
        if upgraded:
            logger.warning(
                "journal %s: upgraded to schema version %d in %.1f s",
                self.path,
                _VERSION,
                time.monotonic() - started,
            )
            # The upgrade's pages fill the WAL, as large as the tables: give
            # the disk back now rather than keep it until the last process ends.
            with contextlib.suppress(sqlite3.Error):
                conn.execute("pragma wal_checkpoint(TRUNCATE)")

    # -- connections ------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None)
            conn.execute("pragma journal_mode=wal")
            conn.execute("pragma synchronous=FULL")
            if self._checkpoint_pages is not None:
                conn.execute(f"pragma wal_autocheckpoint={int(self._checkpoint_pages)}")
            self._local.conn = conn
            self._local.synchronous = "FULL"
        return conn

    @contextlib.contextmanager
    def _write(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """A write transaction; `durable=False` commits without an fsync.

        A durable commit is on disk when it returns. A worker's commits
        (claims, outcomes, leases) are not: they reach the disk with the next
        durable commit or checkpoint. `kill -9` loses neither (the WAL is in
        the operating system's cache); a power cut may lose the last worker
        outcomes, and those steps then run again, as at-least-once allows.
        The receiver's commit is always durable.
        """
        conn = self._conn()
        synchronous = "FULL" if durable else "NORMAL"
        with self._lock:
            try:
                if self._local.synchronous != synchronous:
                    conn.execute(f"pragma synchronous={synchronous}")
                    self._local.synchronous = synchronous
                conn.execute("begin immediate")
                try:
                    yield conn
                except BaseException:
                    # SQLite may have rolled back already (a full disk, say):
                    # a rollback then would hide the error that ended it.
                    if conn.in_transaction:
                        conn.execute("rollback")
                    raise
                conn.execute("commit")
            except sqlite3.Error as exc:
                raise BackendError(f"journal: {exc}") from exc

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._conn().execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise BackendError(f"journal: {exc}") from exc

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def ping(self) -> bool:
        try:
            return self._read("select 1") == [(1,)]
        except BackendError:
            return False

    # -- the receiver -----------------------------------------------------

    def record(self, events: Sequence[NewEvent], now: float) -> list[bool]:
        return self._record(events, now, None)

    def record_and_enqueue(
        self, events: Sequence[NewEvent], now: float, queue: StepQueue
    ) -> list[bool]:
        """Record and enqueue in one transaction when the queue is in this file.

        One commit, one fsync, and a task can no longer be lost between the
        two; a queue elsewhere gets its tasks after the commit, as in the
        base class.
        """
        if not queue.shares_file(self.path):
            return super().record_and_enqueue(events, now, queue)
        fresh = self._record(events, now, queue)
        queue.wakeup.set()
        return fresh

    def _record(
        self, events: Sequence[NewEvent], now: float, queue: StepQueue | None
    ) -> list[bool]:
        # One statement per table, whatever the size of the group: sqlite3
        # lets go of the GIL around every statement and every row of an
        # executemany, and each time it takes it back it may wait for the
        # receiver's event loop (up to the interpreter's switch interval).
        # The write lock is held from `begin immediate`, so ids found absent
        # here are still absent when inserted.
        ids = [event.id for event in events]
        with self._write() as conn:
            known = {
                row[0]
                for row in conn.execute(
                    f"select id from journal_events where id in ({_marks(len(ids))})",  # noqa: S608
                    ids,
                )
            }
            fresh: list[bool] = []
            for event in events:
                fresh.append(event.id not in known)
                known.add(event.id)  # the same event twice in a group: the first wins
            new_events = [event for event, new in zip(events, fresh, strict=True) if new]
            # Each new event's seq, numbered here rather than by SQLite so that
            # its steps can name it in the same statement's worth of rows.
            (last,) = conn.execute("select coalesce(max(seq), 0) from journal_events").fetchone()
            event_rows = [
                value
                for seq, event in enumerate(new_events, last + 1)
                for value in (
                    seq,
                    event.id,
                    event.data["account_sid"],
                    event.data["recording_sid"],
                    event.data["status"],
                    event.received_at,
                    json.dumps(event.data),
                    json.dumps(list(event.rules)),
                )
            ]
            step_rows = [
                value
                for seq, event in enumerate(new_events, last + 1)
                for pos, (rule, action, step_id) in enumerate(event.first_steps)
                for value in (seq, rule, pos, step_id, action, now, now)
            ]
            # The SQL below is built from parameter marks only (`_rows`).
            if event_rows:
                sql = "insert into journal_events values " + _rows(len(new_events), 8)  # noqa: S608
                conn.execute(sql, event_rows)
            if step_rows:
                columns = "event, rule, rule_pos, step_id, action, next_at, updated_at, idx, state"
                marks = _rows(len(step_rows) // 7, 7, "0, 'queued'")
                sql = f"insert into journal_steps ({columns}) values {marks}"  # noqa: S608
                conn.execute(sql, step_rows)
            if queue is not None:
                queue.put_many_in(conn, first_step_keys(events, fresh))
        return fresh

    # -- workers ------------------------------------------------------------

    def claim(self, key: StepKey, owner: Owner, lease: float, now: float) -> Claim | None:
        with self._write(durable=False) as conn:
            found = conn.execute(
                "select seq, data from journal_events where id = ?", (key.event_id,)
            ).fetchone()
            if found is None:
                return None
            seq, data = found
            step = (seq, key.rule, key.step_index)
            cursor = conn.execute(
                "update journal_steps set state = 'running', attempts = attempts + 1,"
                " lease_until = ?, owner = ?, updated_at = ?"
                " where event = ? and rule = ? and idx = ?"
                " and ((state = 'queued' and next_at <= ?)"
                " or (state = 'running' and lease_until <= ?))",
                (now + lease, str(owner), now, *step, now, now),
            )
            if cursor.rowcount != 1:
                return None
            (attempt,) = conn.execute(
                "select attempts from journal_steps where event = ? and rule = ? and idx = ?",
                step,
            ).fetchone()
            conn.execute(
                "update journal_runs set ended_at = ?, outcome = 'lost',"
                " error = 'the worker running it stopped'"
                " where event_id = ? and rule = ? and idx = ? and ended_at is null",
                (now, *key),
            )
            conn.execute(
                "insert into journal_runs (event_id, rule, idx, attempt, started_at, outcome)"
                " values (?, ?, ?, ?, ?, 'running')",
                (*key, attempt, now),
            )
            previous = conn.execute(
                "select action, step_id, outputs from journal_steps"
                " where event = ? and rule = ? and idx < ? and state = 'done' order by idx",
                step,
            ).fetchall()
        return Claim(
            key=key,
            attempt=attempt,
            event=json.loads(data),
            previous=tuple((a, s, json.loads(o or "{}")) for a, s, o in previous),
        )

    def renew(self, keys: Sequence[StepKey], owner: Owner, lease_until: float) -> None:
        with self._write(durable=False) as conn:
            for key in keys:
                conn.execute(
                    f"update journal_steps set lease_until = ? where {_STEP}"  # noqa: S608
                    " and state = 'running' and owner = ?",
                    (lease_until, *key, str(owner)),
                )

    def succeed(
        self,
        claim: Claim,
        owner: Owner,
        outputs: Mapping[str, Any],
        now: float,
        next_step: tuple[str, str | None] | None,
    ) -> bool:
        text = json.dumps(outputs, default=str)
        key = claim.key
        with self._write(durable=False) as conn:
            self._end_run(conn, claim, now, "done", None, text)
            cursor = conn.execute(
                "update journal_steps set state = 'done', outputs = ?, error = null,"  # noqa: S608
                f" lease_until = null, owner = null, updated_at = ? where {_STEP}"
                " and state = 'running' and owner = ? and attempts = ?",
                (text, now, *key, str(owner), claim.attempt),
            )
            if cursor.rowcount != 1:
                return False
            if next_step is not None:
                action, step_id = next_step
                conn.execute(
                    "insert or ignore into journal_steps (event, rule, idx, rule_pos,"  # noqa: S608
                    " step_id, action, state, next_at, updated_at)"
                    " select event, rule, idx + 1, rule_pos, ?, ?, 'queued', ?, ?"
                    f" from journal_steps where {_STEP}",
                    (step_id, action, now, now, *key),
                )
        return True

    def fail(
        self, claim: Claim, owner: Owner, error: str, now: float, retry_at: float | None
    ) -> bool:
        key = claim.key
        with self._write(durable=False) as conn:
            self._end_run(conn, claim, now, "error" if retry_at else "failed", error, None)
            cursor = conn.execute(
                "update journal_steps set state = ?, next_at = ?, error = ?,"  # noqa: S608
                f" lease_until = null, owner = null, updated_at = ? where {_STEP}"
                " and state = 'running' and owner = ? and attempts = ?",
                (
                    "queued" if retry_at is not None else "failed",
                    retry_at if retry_at is not None else now,
                    error,
                    now,
                    *key,
                    str(owner),
                    claim.attempt,
                ),
            )
        return cursor.rowcount == 1

    @staticmethod
    def _end_run(
        conn: sqlite3.Connection,
        claim: Claim,
        now: float,
        outcome: str,
        error: str | None,
        outputs: str | None,
    ) -> None:
        conn.execute(
            "update journal_runs set ended_at = ?, outcome = ?, error = ?, outputs = ?"
            " where event_id = ? and rule = ? and idx = ? and attempt = ? and ended_at is null",
            (now, outcome, error, outputs, *claim.key, claim.attempt),
        )

    def overdue(self, now: float, grace: float, owner: Owner) -> list[StepKey]:
        keys = [
            StepKey(*row)
            for row in self._read(
                f"select e.id, s.rule, s.idx from {_STEPS_WITH_IDS}"  # noqa: S608
                " where s.state = 'queued' and s.next_at <= ?",
                (now - grace,),
            )
        ]
        columns = "e.id, s.rule, s.idx, s.lease_until, s.owner"
        running = self._read(
            f"select {columns} from {_STEPS_WITH_IDS} where s.state = 'running'"  # noqa: S608
        )
        dead = [row for row in running if row[3] > now and owner.knows_dead(row[4] or "")]
        if dead:
            with self._write(durable=False) as conn:
                for *key, _, holder in dead:
                    conn.execute(
                        f"update journal_steps set lease_until = 0 where {_STEP}"  # noqa: S608
                        " and owner = ?",
                        (*key, holder),
                    )
        keys.extend(StepKey(e, r, i) for e, r, i, until, _ in running if until <= now)
        keys.extend(StepKey(e, r, i) for e, r, i, _, _ in dead)
        return keys

    # -- the command line -----------------------------------------------------

    def retry(self, event_id: str | None, now: float) -> list[StepKey]:
        # Every failed step when event_id is null, else those of that event.
        with self._write() as conn:
            keys = [
                StepKey(*row)
                for row in conn.execute(
                    f"select e.id, s.rule, s.idx from {_STEPS_WITH_IDS}"  # noqa: S608
                    " where s.state = 'failed' and (?1 is null or e.id = ?1)",
                    (event_id,),
                ).fetchall()
            ]
            conn.execute(
                "update journal_steps set state = 'queued', attempts = 0, next_at = ?2,"
                " updated_at = ?2 where state = 'failed' and (?1 is null"
                " or event = (select seq from journal_events where id = ?1))",
                (event_id, now),
            )
        return keys

    def list_events(self, limit: int = 20, failed_only: bool = False) -> list[dict[str, Any]]:
        rows = self._read(
            "select seq, id, data, received_at, rules from journal_events e"
            " where not ?1 or exists (select 1 from journal_steps s"
            " where s.event = e.seq and s.state = 'failed')"
            " order by received_at desc, id limit ?2",
            (failed_only, limit),
        )
        return [self._event(row) for row in rows]

    def get_event(self, id_prefix: str) -> dict[str, Any] | None:
        rows = self._read(
            "select seq, id, data, received_at, rules from journal_events"
            " where id >= ? and id < ? limit 2",
            (id_prefix, id_prefix + "\U0010ffff"),
        )
        if len(rows) > 1:
            raise LookupError(f"event id prefix {id_prefix!r} matches more than one event")
        if not rows:
            return None
        event = self._event(rows[0])
        runs = self._read(
            "select rule, idx, attempt, started_at, ended_at, outcome, error"
            " from journal_runs where event_id = ? order by rowid",
            (event["id"],),
        )
        for step in event["steps"]:
            step["runs"] = [
                {
                    "attempt": attempt,
                    "started_at": _iso(started),
                    "ended_at": _iso(ended),
                    "outcome": outcome,
                    "error": error,
                }
                for rule, idx, attempt, started, ended, outcome, error in runs
                if rule == step["rule"] and idx == step["index"]
            ]
        return event

    def _event(self, row: tuple[Any, ...]) -> dict[str, Any]:
        seq, event_id, data_text, received_at, rules = row
        data = json.loads(data_text)
        steps = self._read(
            "select rule, idx, step_id, action, state, attempts, error, outputs, next_at"
            " from journal_steps where event = ? order by rule_pos, idx",
            (seq,),
        )
        return {
            "id": event_id,
            "account_sid": data["account_sid"],
            "recording_sid": data["recording_sid"],
            "status": data["status"],
            "received_at": _iso(received_at),
            "rules": json.loads(rules),
            "steps": [
                {
                    "rule": rule,
                    "index": idx,
                    "id": step_id,
                    "action": action,
                    "state": state,
                    "attempts": attempts,
                    "error": error,
                    "outputs": json.loads(outputs) if outputs else None,
                    "next_at": _iso(next_at) if state == "queued" else None,
                }
                for rule, idx, step_id, action, state, attempts, error, outputs, next_at in steps
            ],
            "event": data,
        }


def _create_or_upgrade(conn: sqlite3.Connection, path: str, upgrade: bool) -> bool:
    """Create the tables, or bring an earlier version's up to this one;
    whether it upgraded them.

    Runs in a write transaction: of several processes opening one file at
    once, the first upgrades it and the others find it done. A file made
    by a later recflow is refused rather than written in a shape it does
    not expect. The probe in `_open_once` checked the same before the
    transaction; checked again here, in it, for whatever another process
    did to the file in between.
    """
    (version,) = conn.execute("pragma user_version").fetchone()
    _refuse_later(version, path)
    earlier = _has_version_0_steps(conn)
    if earlier and not upgrade:
        _refuse_earlier(path)
    if earlier:
        logger.warning("journal %s: upgrading its tables to schema version %d", path, _VERSION)
        for statement in _FROM_VERSION_0:
            conn.execute(statement)
        (left_out,) = conn.execute(_LEFT_OUT_OF_VERSION_0).fetchone()
        if left_out:
            logger.warning(
                "journal %s: %d steps whose event is not in the file (was it edited?)"
                " are left out of the upgrade",
                path,
                left_out,
            )
        for statement in _DROP_VERSION_0:
            conn.execute(statement)
    else:
        for statement in _SCHEMA:
            conn.execute(statement)
    if upgrade or version != _VERSION:
        # Written on every opening by serve and worker: a file they cannot
        # write (read-only, immutable) is refused now, not at the first
        # callback, which would get 503. The commands that only look do not
        # write it, and can read a file they cannot write.
        conn.execute(f"pragma user_version = {_VERSION}")
    return earlier


# The tables Huey's SQLite storage makes beside ours (huey/storage.py).
_HUEY_TABLES = frozenset({"kv", "schedule", "task", "counter"})


def _refuse_foreign(conn: sqlite3.Connection, path: str) -> None:
    """Refuse a file of another application's, rather than add our tables to
    it: a `backend:` pointing at the wrong database is a mistake to report."""
    tables = {
        name
        for (name,) in conn.execute("select name from sqlite_master where type = 'table'")
        if not name.startswith("sqlite_")
    }
    foreign = sorted(tables - _HUEY_TABLES)
    if "journal_events" not in tables and foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise BackendError(
            f"the file {path} holds tables that are not recflow's ({shown}):"
            " point backend: at a file of recflow's own"
        )


def _has_version_0_steps(conn: sqlite3.Connection) -> bool:
    columns = {row[1] for row in conn.execute("pragma table_info(journal_steps)")}
    return "event_id" in columns


def _refuse_earlier(path: str) -> None:
    raise BackendError(
        f"the journal {path} has the tables of an earlier recflow (schema version 0):"
        " `recflow serve` or `recflow worker` of this release upgrades them when it"
        " starts (docs/deploying.md: Upgrading recflow)"
    )


def _refuse_later(version: int, path: str) -> None:
    if version > _VERSION:
        raise BackendError(
            f"the journal {path} was made by a later recflow (schema version {version},"
            f" this one knows {_VERSION}): run that release, or point backend: elsewhere"
        )


def _is_busy(exc: BaseException | None) -> bool:
    """Whether `exc` is SQLite's "database is locked": another writer."""
    return isinstance(exc, sqlite3.OperationalError) and exc.sqlite_errorcode in (
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
    )


def _marks(count: int) -> str:
    """`count` parameter marks, for `in (...)`."""
    return ", ".join("?" * count)


def _rows(count: int, width: int, constants: str = "") -> str:
    """`count` rows of `width` parameter marks each, then `constants`, for
    one multi-row `values` clause; only marks and our own SQL literals."""
    row = "(" + ", ".join("?" * width) + (", " + constants if constants else "") + ")"
    return ", ".join([row] * count)


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).isoformat(
        timespec="milliseconds"
    )
