"""What an action gets besides its parameters: the step's context.

An action knows this object and nothing else of recflow's machinery: not
the web app, the queue or the journal. Workers build it for each attempt.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from recflow.config import ProviderConfig
    from recflow.event import Event


@dataclasses.dataclass(frozen=True)
class StepContext:
    """The event, what earlier steps produced, and how to reach the provider.

    - `steps`: outputs of earlier steps of this rule that have an `id`.
    - `previous`: `(action name, outputs)` of every earlier step of this
      rule, in order, `id` or not; `delete` uses it to find the `store`.
    - `provider`: the provider account the event belongs to; `media` and
      `provider_api` use its origin and credentials.
    """

    event: Event
    rule: str
    step_index: int
    step_id: str | None
    attempt: int
    steps: Mapping[str, Mapping[str, Any]]
    previous: tuple[tuple[str, Mapping[str, Any]], ...]
    provider: ProviderConfig
    logger: logging.Logger
    secrets: frozenset[str] = frozenset()

    def open_media(self, fmt: str | None = None) -> Any:
        """Open the recording's audio as a stream: a context manager.

        `fmt` is `"wav"`, `"mp3"` or None (the URL as the provider sent
        it). Only the event's own recording is fetched
        (`recflow.recording.check_recording_url`), from the provider's own
        origin, with its credentials; see `recflow.media.open_media` for
        what the yielded object offers.
        """
        from recflow.media import open_media
        from recflow.recording import check_recording_url

        check_recording_url(self)
        return open_media(self.event.recording_url, self.provider, fmt)
