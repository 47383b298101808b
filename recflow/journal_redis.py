"""The journal in Redis, shared by receivers and workers on many machines.

Every change of state is one Lua script, so it is atomic like a SQLite
transaction: two receivers recording the same event at once get one True
between them (the event hash is created with HSETNX inside the script), and
two workers claiming one step get one claim. Keys, all under
``recflow:journal:``::

    event:ID              hash: data, received_at, rules (JSON)
    events                sorted set of event ids by received_at (listing)
    ids                   sorted set of event ids, all scored 0 (id prefixes)
    failed                sorted set of ids with a failed step, by received_at
    steps:ID              sorted set of the event's steps, by rule then index
    step:ID:INDEX:RULE    hash: state, attempts, next_at, lease_until, owner...
    runs:ID:INDEX:RULE    list of JSON runs, one per attempt
    due                   sorted set of queued steps by next_at (recovery)
    running               sorted set of running steps by lease_until (recovery)

A step is named by its *member*, ``ID:INDEX:RULE``: the rule comes last,
so a rule name may hold any character, while an event id may not hold a
colon (recflow's ids are hex digests). Times are stored as the text of
Python floats, so they round-trip exactly; the scripts only compare them.

How durable an acknowledged callback is depends on the server: with
``appendonly yes`` and ``appendfsync always`` Redis answers a write only
once it is on disk, as the SQLite journal does; ``everysec`` may lose the
last second of callbacks on a power cut of the Redis machine.

A known shortcoming: the scripts build key names from their arguments, so
this works with one Redis server (a primary, with replicas if you like),
not with Redis Cluster, where a script must name every key it touches in
advance.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, cast
from urllib.parse import urlsplit

import redis

from recflow.errors import BackendError
from recflow.journal import Claim, Journal, NewEvent, Owner
from recflow.queue import StepKey

logger = logging.getLogger(__name__)

PREFIX = "recflow:journal:"

# Shared by every script: ARGV[1] is the key prefix. The steps of an event
# sort by rule position * 65536 + index, so by rule, then index in the rule.
_LUA_HEAD = """
local P = ARGV[1]
local function end_run(member, attempt, now, outcome, err, outputs)
  local key = P .. 'runs:' .. member
  local last = redis.call('LINDEX', key, -1)
  if not last then return end
  local run = cjson.decode(last)
  if run.attempt ~= tonumber(attempt) or run.ended_at ~= nil then return end
  run.ended_at = now
  run.outcome = outcome
  if err then run.error = err end
  if outputs then run.outputs = outputs end
  redis.call('LSET', key, -1, cjson.encode(run))
end
"""

# ARGV: prefix, now, JSON list of events. Returns 1 (new) or 0 per event.
_RECORD = """
local now = ARGV[2]
local out = {}
for n, ev in ipairs(cjson.decode(ARGV[3])) do
  local key = P .. 'event:' .. ev.id
  if redis.call('HSETNX', key, 'data', ev.data) == 0 then
    out[n] = 0
  else
    redis.call('HSET', key, 'received_at', ev.received_at, 'rules', ev.rules)
    redis.call('ZADD', P .. 'events', ev.received_at, ev.id)
    redis.call('ZADD', P .. 'ids', 0, ev.id)
    for pos, st in ipairs(ev.steps) do
      local member = ev.id .. ':0:' .. st.rule
      local fields = {'event_id', ev.id, 'rule', st.rule, 'idx', '0',
        'rule_pos', tostring(pos - 1), 'action', st.action, 'state', 'queued',
        'attempts', '0', 'next_at', now, 'updated_at', now}
      if st.step_id ~= cjson.null then
        table.insert(fields, 'step_id')
        table.insert(fields, st.step_id)
      end
      redis.call('HSET', P .. 'step:' .. member, unpack(fields))
      redis.call('ZADD', P .. 'steps:' .. ev.id, (pos - 1) * 65536, member)
      redis.call('ZADD', P .. 'due', now, member)
    end
    out[n] = 1
  end
end
return out
"""

# ARGV: prefix, member, now, lease_until, owner. Returns the attempt, or nil.
_CLAIM = """
local member, now, until_ = ARGV[2], ARGV[3], ARGV[4]
local key = P .. 'step:' .. member
local f = redis.call('HMGET', key, 'state', 'next_at', 'lease_until')
local t = tonumber(now)
local due = f[1] == 'queued' and tonumber(f[2]) <= t
local expired = f[1] == 'running' and tonumber(f[3] or '0') <= t
if not (due or expired) then return false end
local attempt = redis.call('HINCRBY', key, 'attempts', 1)
redis.call('HSET', key, 'state', 'running', 'lease_until', until_, 'owner', ARGV[5],
  'updated_at', now)
redis.call('ZREM', P .. 'due', member)
redis.call('ZADD', P .. 'running', until_, member)
local runs = P .. 'runs:' .. member
local last = redis.call('LINDEX', runs, -1)
if last then
  local run = cjson.decode(last)
  if run.ended_at == nil then
    run.ended_at = now
    run.outcome = 'lost'
    run.error = 'the worker running it stopped'
    redis.call('LSET', runs, -1, cjson.encode(run))
  end
end
redis.call('RPUSH', runs, cjson.encode({attempt = attempt, started_at = now,
  outcome = 'running'}))
return attempt
"""

# The lease check of succeed and fail: the step is still this claim's.
_HELD = """
local member, owner, attempt, now = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local key = P .. 'step:' .. member
local f = redis.call('HMGET', key, 'state', 'owner', 'attempts', 'rule_pos', 'event_id',
  'rule', 'idx')
if f[1] ~= 'running' or f[2] ~= owner or f[3] ~= attempt then return 0 end
redis.call('ZREM', P .. 'running', member)
redis.call('HDEL', key, 'lease_until', 'owner')
"""

# ARGV: prefix, member, owner, attempt, now, outputs, next member ('' for
# none), next action, next step id ('' for none). Returns 1, or 0 if lost.
_SUCCEED = """
local outputs, next_member = ARGV[6], ARGV[7]
end_run(member, attempt, now, 'done', nil, outputs)
redis.call('HSET', key, 'state', 'done', 'outputs', outputs, 'updated_at', now)
redis.call('HDEL', key, 'error')
if next_member ~= '' and redis.call('EXISTS', P .. 'step:' .. next_member) == 0 then
  local idx = tonumber(f[7]) + 1
  local fields = {'event_id', f[5], 'rule', f[6], 'idx', tostring(idx), 'rule_pos', f[4],
    'action', ARGV[8], 'state', 'queued', 'attempts', '0', 'next_at', now, 'updated_at', now}
  if ARGV[9] ~= '' then
    table.insert(fields, 'step_id')
    table.insert(fields, ARGV[9])
  end
  redis.call('HSET', P .. 'step:' .. next_member, unpack(fields))
  redis.call('ZADD', P .. 'steps:' .. f[5], tonumber(f[4]) * 65536 + idx, next_member)
  redis.call('ZADD', P .. 'due', now, next_member)
end
return 1
"""

# ARGV: prefix, member, owner, attempt, now, error, retry_at ('' when the
# step fails for good). Returns 1, or 0 if the lease was lost.
_FAIL = """
local err, retry_at = ARGV[6], ARGV[7]
if retry_at ~= '' then
  end_run(member, attempt, now, 'error', err, nil)
  redis.call('HSET', key, 'state', 'queued', 'next_at', retry_at, 'error', err,
    'updated_at', now)
  redis.call('ZADD', P .. 'due', retry_at, member)
else
  end_run(member, attempt, now, 'failed', err, nil)
  redis.call('HSET', key, 'state', 'failed', 'next_at', now, 'error', err, 'updated_at', now)
  local received = redis.call('HGET', P .. 'event:' .. f[5], 'received_at')
  redis.call('ZADD', P .. 'failed', received or now, f[5])
end
return 1
"""

# ARGV: prefix, lease_until, owner, members... Extends the owner's leases.
_RENEW = """
for i = 4, #ARGV do
  local key = P .. 'step:' .. ARGV[i]
  local f = redis.call('HMGET', key, 'state', 'owner')
  if f[1] == 'running' and f[2] == ARGV[3] then
    redis.call('HSET', key, 'lease_until', ARGV[2])
    redis.call('ZADD', P .. 'running', ARGV[2], ARGV[i])
  end
end
return 0
"""

# ARGV: prefix, member, holder. Ends the lease of a step a dead process held.
_RELEASE = """
local key = P .. 'step:' .. ARGV[2]
local f = redis.call('HMGET', key, 'state', 'owner')
if f[1] ~= 'running' or f[2] ~= ARGV[3] then return 0 end
redis.call('HSET', key, 'lease_until', '0')
redis.call('ZADD', P .. 'running', 0, ARGV[2])
return 1
"""

# ARGV: prefix, event id ('' for every event), now. Returns the members
# queued again.
_RETRY = """
local now = ARGV[3]
local ids = {ARGV[2]}
if ARGV[2] == '' then ids = redis.call('ZRANGE', P .. 'failed', 0, -1) end
local out = {}
for _, id in ipairs(ids) do
  for _, member in ipairs(redis.call('ZRANGE', P .. 'steps:' .. id, 0, -1)) do
    local key = P .. 'step:' .. member
    if redis.call('HGET', key, 'state') == 'failed' then
      redis.call('HSET', key, 'state', 'queued', 'attempts', '0', 'next_at', now,
        'updated_at', now)
      redis.call('ZADD', P .. 'due', now, member)
      table.insert(out, member)
    end
  end
  redis.call('ZREM', P .. 'failed', id)
end
return out
"""


class RedisJournal(Journal):
    """The journal in one Redis database, shared by every process."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = PREFIX,
        socket_timeout: float = 5.0,
        connect_timeout: float = 2.0,
    ) -> None:
        self.url = url
        self.prefix = prefix
        try:
            self._redis = redis.Redis.from_url(
                url,
                socket_timeout=socket_timeout,
                socket_connect_timeout=connect_timeout,
                health_check_interval=30,
            )
            # redis-py checks the port and database only when it connects.
            parts = urlsplit(url)
            _ = parts.port
            database = parts.path.strip("/")
            if database and not database.isdigit():
                raise ValueError(f"the database {database!r} is not a number")
        except ValueError as exc:
            raise BackendError(f"backend {_shown(url)}: {exc}") from exc
        script = self._redis.register_script
        self._record = script(_LUA_HEAD + _RECORD)
        self._claim = script(_LUA_HEAD + _CLAIM)
        self._succeed = script(_LUA_HEAD + _HELD + _SUCCEED)
        self._fail = script(_LUA_HEAD + _HELD + _FAIL)
        self._renew = script(_LUA_HEAD + _RENEW)
        self._release = script(_LUA_HEAD + _RELEASE)
        self._retry = script(_LUA_HEAD + _RETRY)

    # -- connections ------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        # Any Redis failure (refused, timed out, a read-only replica, out of
        # memory) is the backend's: the receiver answers 503 and the
        # provider tries again.
        try:
            yield
        except redis.RedisError as exc:
            raise BackendError(f"journal at {_shown(self.url)}: {exc}") from exc

    def close(self) -> None:
        self._redis.close()

    def ping(self) -> bool:
        try:
            return bool(self._redis.ping())
        except redis.RedisError:
            return False

    def _key(self, kind: str, name: str) -> str:
        return f"{self.prefix}{kind}:{name}"

    # -- the receiver -----------------------------------------------------

    def record(self, events: Sequence[NewEvent], now: float) -> list[bool]:
        if not events:
            return []
        payload = []
        for event in events:
            if ":" in event.id:
                raise BackendError(f"event id {event.id!r} holds a colon")
            payload.append(
                {
                    "id": event.id,
                    "data": json.dumps(event.data),
                    "received_at": repr(event.received_at),
                    "rules": json.dumps(list(event.rules)),
                    "steps": [
                        {"rule": rule, "action": action, "step_id": step_id}
                        for rule, action, step_id in event.first_steps
                    ],
                }
            )
        # Raw UTF-8 rather than \\u escapes: the script then builds step
        # names byte for byte as `_member` does.
        text = json.dumps(payload, ensure_ascii=False)
        with self._errors():
            fresh = self._record(args=[self.prefix, repr(now), text])
        return [bool(flag) for flag in fresh]

    # -- workers ------------------------------------------------------------

    def claim(self, key: StepKey, owner: Owner, lease: float, now: float) -> Claim | None:
        member = _member(key)
        with self._errors():
            attempt = self._claim(
                args=[self.prefix, member, repr(now), repr(now + lease), str(owner)]
            )
            if attempt is None:
                return None
            # The event and the steps already done never change again, so
            # they can be read after the claim, outside the script.
            pipe = self._redis.pipeline(transaction=False)
            pipe.hget(self._key("event", key.event_id), "data")
            for index in range(key.step_index):
                name = _member(StepKey(key.event_id, key.rule, index))
                pipe.hmget(self._key("step", name), "action", "step_id", "outputs", "state")
            data, *earlier = pipe.execute()
        previous = tuple(
            (_text(action), _text(step_id) if step_id else None, json.loads(outputs or b"{}"))
            for action, step_id, outputs, state in earlier
            if state == b"done"
        )
        return Claim(key=key, attempt=int(attempt), event=json.loads(data), previous=previous)

    def renew(self, keys: Sequence[StepKey], owner: Owner, lease_until: float) -> None:
        if not keys:
            return
        with self._errors():
            self._renew(args=[self.prefix, repr(lease_until), str(owner), *map(_member, keys)])

    def succeed(
        self,
        claim: Claim,
        owner: Owner,
        outputs: Mapping[str, Any],
        now: float,
        next_step: tuple[str, str | None] | None,
    ) -> bool:
        key = claim.key
        following = ["", "", ""]
        if next_step is not None:
            action, step_id = next_step
            name = _member(StepKey(key.event_id, key.rule, key.step_index + 1))
            following = [name, action, step_id or ""]
        args = [
            self.prefix,
            _member(key),
            str(owner),
            str(claim.attempt),
            repr(now),
            json.dumps(outputs, default=str),
            *following,
        ]
        with self._errors():
            return bool(self._succeed(args=args))

    def fail(
        self, claim: Claim, owner: Owner, error: str, now: float, retry_at: float | None
    ) -> bool:
        args = [
            self.prefix,
            _member(claim.key),
            str(owner),
            str(claim.attempt),
            repr(now),
            error,
            "" if retry_at is None else repr(retry_at),
        ]
        with self._errors():
            return bool(self._fail(args=args))

    def overdue(self, now: float, grace: float, owner: Owner) -> list[StepKey]:
        with self._errors():
            queued: list[bytes] = cast(
                list, self._redis.zrangebyscore(self.prefix + "due", "-inf", now - grace)
            )
            running: list[tuple[bytes, float]] = cast(
                list, self._redis.zrange(self.prefix + "running", 0, -1, withscores=True)
            )
            held = [(member, until) for member, until in running if until > now]
            holders: list[Any] = []
            if held:
                pipe = self._redis.pipeline(transaction=False)
                for member, _ in held:
                    pipe.hget(self._key("step", _text(member)), "owner")
                holders = pipe.execute()
            released = []
            for (member, _), holder in zip(held, holders, strict=True):
                dead = holder is not None and owner.knows_dead(_text(holder))
                if dead and self._release(args=[self.prefix, member, holder]):
                    logger.info(
                        "step %s was held by %s, which is gone: released",
                        _text(member),
                        _text(holder),
                    )
                    released.append(member)
        keys = [_step_key(member) for member in queued]
        keys.extend(_step_key(member) for member, until in running if until <= now)
        keys.extend(_step_key(member) for member in released)
        return keys

    # -- the command line -----------------------------------------------------

    def retry(self, event_id: str | None, now: float) -> list[StepKey]:
        with self._errors():
            members = self._retry(args=[self.prefix, event_id or "", repr(now)])
        return [_step_key(member) for member in members]

    def list_events(self, limit: int = 20, failed_only: bool = False) -> list[dict[str, Any]]:
        index = self.prefix + ("failed" if failed_only else "events")
        with self._errors():
            found = cast(list, self._redis.zrevrange(index, 0, limit - 1))
            return self._events([_text(i) for i in found])

    def get_event(self, id_prefix: str) -> dict[str, Any] | None:
        low = id_prefix.encode()
        with self._errors():
            # 0xff never occurs in UTF-8, so it sorts after every id with the prefix.
            found: list[bytes] = cast(
                list,
                self._redis.zrangebylex(
                    self.prefix + "ids", b"[" + low, b"[" + low + b"\xff", start=0, num=2
                ),
            )
            if len(found) > 1:
                raise LookupError(f"event id prefix {id_prefix!r} matches more than one event")
            if not found:
                return None
            (event,) = self._events([_text(found[0])])
            pipe = self._redis.pipeline(transaction=False)
            for step in event["steps"]:
                name = _member(StepKey(event["id"], step["rule"], step["index"]))
                pipe.lrange(self._key("runs", name), 0, -1)
            every_runs = pipe.execute()
        for step, runs in zip(event["steps"], every_runs, strict=True):
            step["runs"] = [_run(json.loads(run)) for run in runs]
        return event

    def _events(self, ids: list[str]) -> list[dict[str, Any]]:
        """The events named by `ids`, in that order, with their steps.

        One consistent snapshot: the step lists are WATCHed while the steps
        are read, so a worker finishing a step and queueing the next one
        between the two reads (one atomic script) makes the read start
        over, instead of showing the finished step without its successor.
        """
        read: dict[str, list[Any]] = {}

        def snapshot(pipe: Any) -> None:
            read["heads"] = [
                pipe.hmget(self._key("event", event_id), "data", "received_at", "rules")
                for event_id in ids
            ]
            read["members"] = [pipe.zrange(self._key("steps", event_id), 0, -1) for event_id in ids]
            pipe.multi()
            for names in read["members"]:
                for name in names:
                    pipe.hgetall(self._key("step", _text(name)))

        watched = [self._key("steps", event_id) for event_id in ids]
        steps = iter(self._redis.transaction(snapshot, *watched) or [])
        heads, members = read["heads"], read["members"]
        events = []
        for event_id, (data_text, received_at, rules), names in zip(
            ids, heads, members, strict=True
        ):
            data = json.loads(data_text)
            events.append(
                {
                    "id": event_id,
                    "account_sid": data["account_sid"],
                    "recording_sid": data["recording_sid"],
                    "status": data["status"],
                    "received_at": _iso(float(received_at)),
                    "rules": json.loads(rules),
                    "steps": [_step(next(steps)) for _ in names],
                    "event": data,
                }
            )
        return events


def _member(key: StepKey) -> str:
    return f"{key.event_id}:{key.step_index}:{key.rule}"


def _step_key(member: bytes | str) -> StepKey:
    event_id, index, rule = _text(member).split(":", 2)
    return StepKey(event_id, rule, int(index))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _step(fields: Mapping[bytes, bytes]) -> dict[str, Any]:
    """A step hash in the shape `recflow events --json` prints."""
    get = {_text(k): _text(v) for k, v in fields.items()}.get
    state = get("state")
    outputs = get("outputs")
    return {
        "rule": get("rule"),
        "index": int(get("idx") or 0),
        "id": get("step_id"),
        "action": get("action"),
        "state": state,
        "attempts": int(get("attempts") or 0),
        "error": get("error"),
        "outputs": json.loads(outputs) if outputs else None,
        "next_at": _iso(float(get("next_at") or 0)) if state == "queued" else None,
    }


def _run(run: Mapping[str, Any]) -> dict[str, Any]:
    """A run as `recflow events show` prints it."""
    ended = run.get("ended_at")
    return {
        "attempt": int(run["attempt"]),
        "started_at": _iso(float(run["started_at"])),
        "ended_at": _iso(float(ended)) if ended is not None else None,
        "outcome": run["outcome"],
        "error": run.get("error"),
    }


def _shown(url: str) -> str:
    """The URL without its password, for errors and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}"
    with contextlib.suppress(ValueError):
        if parts.port:
            netloc += f":{parts.port}"
    return parts._replace(netloc=netloc).geturl()


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).isoformat(
        timespec="milliseconds"
    )
