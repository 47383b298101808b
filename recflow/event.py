"""The recording event: what one callback says, typed and immutable.

Pure: no I/O. The receiver builds an `Event` from the parameters of a
request; rules, templates and actions read it; the journal stores
`to_dict()` and workers rebuild it with `from_dict()`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from email.utils import parsedate_to_datetime
from types import MappingProxyType
from typing import Any

from recflow.errors import RequestError

STATUSES = ("in-progress", "completed", "absent", "failed")

# Parameters that hold a provider's ids, checked by `_check_id`.
ID_PARAMS = ("AccountSid", "CallSid", "RecordingSid", "ConferenceSid")
_ID_MAX = 64
_ID = re.compile(rf"[A-Za-z0-9_-]{{1,{_ID_MAX}}}")

REQUIRED = ("AccountSid", "RecordingSid", "RecordingUrl", "RecordingStatus")

# Event field -> callback parameter, in the order of the design's table.
FIELDS = {
    "account_sid": "AccountSid",
    "call_sid": "CallSid",
    "recording_sid": "RecordingSid",
    "recording_url": "RecordingUrl",
    "status": "RecordingStatus",
    "duration": "RecordingDuration",
    "channels": "RecordingChannels",
    "source": "RecordingSource",
    "start_time": "RecordingStartTime",
    "track": "RecordingTrack",
    "conference_sid": "ConferenceSid",
    "error_code": "ErrorCode",
}


@dataclasses.dataclass(frozen=True)
class Event:
    """One recording status callback, as rules and actions see it."""

    account_sid: str
    call_sid: str
    recording_sid: str
    recording_url: str
    status: str
    duration: int | None = None
    channels: int | None = None
    source: str | None = None
    start_time: datetime | None = None
    track: str | None = None
    conference_sid: str | None = None
    error_code: str | None = None
    params: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    @property
    def id(self) -> str:
        """The dedupe key: one per (account, recording, status)."""
        return event_id(self.account_sid, self.recording_sid, self.status)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; `start_time` as ISO 8601."""
        # The receiver calls this for every callback: field names are looked
        # up once (`_FIELD_NAMES`), not through `dataclasses.fields` each time.
        out = {name: getattr(self, name) for name in _FIELD_NAMES}
        if isinstance(out["start_time"], datetime):
            out["start_time"] = out["start_time"].isoformat()
        out["params"] = dict(out["params"])
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Event:
        """Rebuild an event stored with `to_dict()`."""
        values = dict(data)
        if values.get("start_time"):
            values["start_time"] = datetime.fromisoformat(values["start_time"])
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


_FIELD_NAMES = tuple(field.name for field in dataclasses.fields(Event))


def event_id(account_sid: str, recording_sid: str, status: str) -> str:
    """A stable id derived from the triple the providers repeat on retries."""
    raw = "\x1f".join((account_sid, recording_sid, status)).encode()
    return hashlib.sha256(raw).hexdigest()[:32]


def params_from_pairs(*sources: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Merge parameter pairs; the first source and first occurrence win.

    The receiver passes the body first, then the query string, so a
    parameter the provider sent is never shadowed by one the user appended
    to the callback URL.
    """
    params: dict[str, str] = {}
    for pairs in sources:
        for name, value in pairs:
            params.setdefault(name, value)
    return params


def params_from_json(document: Any) -> dict[str, str]:
    """Flatten a JSON callback body into string parameters.

    Numbers and booleans keep their JSON text, nested values become JSON,
    nulls are left out: the same strings a form body would have carried.
    """
    if not isinstance(document, dict):
        raise RequestError(400, "JSON body must be an object")
    params: dict[str, str] = {}
    for name, value in document.items():
        if value is None:
            continue
        if isinstance(value, str):
            params[name] = value
        else:
            params[name] = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return params


def parse_event(params: Mapping[str, str]) -> Event:
    """Build an `Event` from callback parameters, or raise a 400.

    Required fields must be present and non-empty; optional numbers that
    are missing, empty, negative or garbage become None (unknown), as the
    providers send `-1` for a recording still in progress.
    """
    missing = [name for name in REQUIRED if not params.get(name, "").strip()]
    if missing:
        raise RequestError(400, f"missing required field {missing[0]}")
    for name in ID_PARAMS:
        if name in params and (name in REQUIRED or params[name]):
            _check_id(name, params[name])

    return Event(
        account_sid=params["AccountSid"],
        call_sid=params.get("CallSid", ""),
        recording_sid=params["RecordingSid"],
        recording_url=params["RecordingUrl"],
        status=params["RecordingStatus"],
        duration=_count(params.get("RecordingDuration")),
        channels=_count(params.get("RecordingChannels")),
        source=params.get("RecordingSource") or None,
        start_time=_datetime(params.get("RecordingStartTime")),
        track=params.get("RecordingTrack") or None,
        conference_sid=params.get("ConferenceSid") or None,
        error_code=params.get("ErrorCode") or None,
        params=params,
    )


# Larger counts (a duration of 1e308 seconds) are garbage, hence unknown.
_MAX_COUNT = 2**31 - 1


def _count(raw: str | None) -> int | None:
    if raw is None or not raw.isascii():  # float() would read other scripts' digits
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    if not 0 <= value <= _MAX_COUNT:  # also false for NaN
        return None
    return int(value)


def _check_id(name: str, value: str) -> None:
    """Refuse an id that no provider sends and that would be unsafe in a path.

    Ids are not checked against a provider's pattern (Twilio's `RE` + 32
    hex digits, SignalWire's UUIDs): only that they are short words of
    letters, digits, `-` and `_`, since rules put them in file and object
    names (`{{ event.recording_sid }}.wav`).
    """
    if not _ID.fullmatch(value):
        raise RequestError(
            400,
            f"malformed field {name}",
            f"{name} must be 1 to {_ID_MAX} letters, digits, '-' or '_'",
        )


def _datetime(raw: str | None) -> datetime | None:
    if not raw:
        return None
    try:
        return parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        pass
    try:
        return datetime.fromisoformat(raw)
    except ValueError:
        return None
