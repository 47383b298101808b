"""Which URL is the event's recording: checked before any media is fetched.

A signed callback's `RecordingUrl` is only trusted to name a recording of
the account that signed it. The actions fetch it with the account's
credentials and `delete` removes `Recordings/{RecordingSid}`, so the URL
must be exactly that recording under the provider's API:
`{api_url}/Accounts/{account}/Recordings/{sid}`, bare or with `.wav` or
`.mp3`. Anything else (a call, a list of recordings, another account's
resource, another recording's id) is refused for good, before any
request: it never becomes a fetch of another API resource with the
account's credentials, nor the deletion of a recording that was not the
one stored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

from recflow.config import ProviderConfig
from recflow.errors import ActionError
from recflow.media import origin_of

if TYPE_CHECKING:
    from recflow.context import StepContext

_EXTENSIONS = ("", ".wav", ".mp3")


def recording_url(provider: ProviderConfig, recording_sid: str) -> str:
    """The URL of recording `recording_sid` of `provider`'s account, built from the id."""
    account = quote(provider.account_sid, safe="")
    return f"{provider.api_url}/Accounts/{account}/Recordings/{quote(recording_sid, safe='')}"


def check_recording_url(ctx: StepContext) -> None:
    """Refuse, permanently, an event whose RecordingUrl is not its own recording."""
    sid = ctx.event.recording_sid
    expected = recording_url(ctx.provider, sid)
    given = urlsplit(ctx.event.recording_url)
    wanted = urlsplit(expected)
    same_place = (
        given.username is None
        and given.password is None
        and origin_of(ctx.event.recording_url) == origin_of(expected)
        and any(given.path == wanted.path + ext for ext in _EXTENSIONS)
    )
    if not same_place:
        found = (origin_of(ctx.event.recording_url) + given.path)[:200]
        raise ActionError(
            f"RecordingUrl {found!r} is not recording {sid} of account"
            f" {ctx.provider.account_sid} under provider {ctx.provider.name}'s API"
            f" ({expected}): refused",
            permanent=True,
        )
