"""The `delete` action: remove the recording at the provider, once it is safely stored.

It refuses to run unless an earlier step of the same rule is a `store`
that wrote a non-empty object, and, when the provider announces the
media's size, that the stored size equals it: a recording deleted before
it is kept is lost for good. A recording that is already gone counts as
done, so a repeated step does no harm.

What it checks and what it deletes derive from one id, the event's
RecordingSid: the RecordingUrl (which `store` fetched) must be that
recording's URL under the provider's API, the size check HEADs the URL
built from the id, and the DELETE goes to `Recordings/{sid}.json`. A
callback pairing one recording's URL with another's id deletes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from recflow import media, provider
from recflow.context import StepContext
from recflow.errors import ActionError
from recflow.hookspecs import hookimpl
from recflow.plugins import ActionSpec
from recflow.recording import check_recording_url, recording_url

SCHEMA: dict[str, Any] = {
    "type": ["object", "null"],
    "additionalProperties": False,
    "properties": {},
}


def run(params: dict[str, Any] | None, ctx: StepContext) -> dict[str, Any]:
    """Delete the recording; outputs `deleted` (false when it was already gone)."""
    stored = _verified_store(ctx)
    check_recording_url(ctx)
    sid = ctx.event.recording_sid
    announced = _announced_length(ctx, stored)
    if announced is not None and announced != stored["bytes"]:
        raise ActionError(
            f"not deleting recording {sid}: the provider has {announced} bytes"
            f" but the store step kept {stored['bytes']}",
            permanent=True,
        )
    deleted = provider.delete_recording(ctx.provider, sid)
    ctx.logger.info(
        "delete: recording %s %s at provider %s",
        sid,
        "deleted" if deleted else "was already gone",
        ctx.provider.name,
    )
    return {"deleted": deleted}


def _verified_store(ctx: StepContext) -> Mapping[str, Any]:
    """The outputs of the last earlier `store` step, if it kept a non-empty object."""
    for action, outputs in reversed(ctx.previous):
        if action != "store":
            continue
        size = outputs.get("bytes")
        if isinstance(size, int) and size > 0:
            return outputs
        raise ActionError(
            f"not deleting recording {ctx.event.recording_sid}: the store step kept no bytes",
            permanent=True,
        )
    raise ActionError(
        f"not deleting recording {ctx.event.recording_sid}: no store step ran before it"
        " in this rule",
        permanent=True,
    )


def _announced_length(ctx: StepContext, stored: Mapping[str, Any]) -> int | None:
    """The provider's size for the stored format; None when it does not say or is gone."""
    url = recording_url(ctx.provider, ctx.event.recording_sid)
    return media.head_length(url, ctx.provider, stored.get("format"))


@hookimpl
def register_actions(register: Any) -> None:
    register(
        ActionSpec(
            name="delete",
            run=run,
            schema=SCHEMA,
            outputs=("deleted",),
            description="delete the recording at the provider after a verified store",
        )
    )
