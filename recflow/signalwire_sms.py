"""SMS through SignalWire, as an apprise service: `signalwire://`.

apprise has no SignalWire service, so recflow adds one::

    signalwire://{project}:{api_token}@{space}/{from}/{to}[/{to2}...]

for example
`signalwire://b3877c40-...:PTxxxx@example.signalwire.com/+15551230000/+15557654321`.
Each target gets one `POST https://{space}/api/laml/2010-04-01/Accounts/{project}/Messages.json`
with `From`, `To` and `Body`, authenticated with the project id and API
token. The title, if any, is folded into the body, as SMS has no title.
`?from=` and `?to=` (comma-separated) may replace the path segments.

`?base=http://127.0.0.1:9000` sends to another scheme, host and port than
`https://{space}`: for a local emulator of the API in tests and trials.
apprise's own `?cto=` (connect) and `?rto=` (read) timeouts, in seconds,
apply to each request.

`register()` adds the service to apprise's plugin manager; the `notify`
action calls it when the plugin manager loads it, not when recflow is
imported.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

import httpx
from apprise import NotifyType
from apprise.plugins import base as apprise_base
from apprise.utils.parse import parse_phone_no

from recflow import provider
from recflow.errors import ActionError

logger = logging.getLogger(__name__)

SCHEMA = "signalwire"
API_PATH = "/api/laml/2010-04-01"

# apprise types its service attributes as None on the base class, which
# every service overrides; seen as Any, the subclass type-checks as written.
NotifyBase: Any = apprise_base.NotifyBase


class NotifySignalWire(NotifyBase):
    """Send SMS through SignalWire's compatibility (LaML) API."""

    service_name = "SignalWire"
    service_url = "https://signalwire.com/"
    secure_protocol = SCHEMA
    # SignalWire splits long texts into segments; 1600 characters is its limit.
    body_maxlen = 1600
    title_maxlen = 0
    request_rate_per_sec = 0.2

    templates = ("{schema}://{project}:{token}@{space}/{from_phone}/{targets}",)

    def __init__(
        self,
        project: str,
        token: str,
        space: str,
        source: str,
        targets: list[str] | None = None,
        base: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not project or not token or not space:
            raise TypeError("signalwire:// needs project:token@space")
        self.project = project
        self.token = token
        self.space = space
        self.source = _e164(source) if source else ""
        self.targets = [_e164(t) for t in parse_phone_no(targets or [], prefix=True) if t]
        if not self.source or not self.targets:
            raise TypeError("signalwire:// needs a from number and at least one to number")
        self.base: str | None = None
        if base:
            parts = urlsplit(base)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise TypeError(f"signalwire:// base must be http(s)://host[:port], not {base}")
            self.base = f"{parts.scheme}://{parts.netloc}"

    @property
    def api_url(self) -> str:
        host = self.space if self.port is None else f"{self.space}:{self.port}"
        return (self.base or f"https://{host}") + API_PATH

    @property
    def url_identifier(self) -> tuple[str, ...]:
        return (self.secure_protocol, self.project, self.token, self.space, self.source)

    def send(
        self, body: str, title: str = "", notify_type: NotifyType = NotifyType.INFO, **kwargs: Any
    ) -> bool:
        ok = True
        timeout = httpx.Timeout(self.socket_read_timeout, connect=self.socket_connect_timeout)
        for target in self.targets:
            self.throttle()
            try:
                provider.send_message(
                    self.api_url,
                    self.project,
                    self.token,
                    sender=self.source,
                    to=target,
                    body=body,
                    timeout=timeout,
                )
            except ActionError as exc:
                self.logger.warning("Failed to send SignalWire SMS to %s: %s", target, exc)
                ok = False
                continue
            self.logger.info("Sent SignalWire SMS to %s.", target)
        return ok

    def url(self, privacy: bool = False, *args: Any, **kwargs: Any) -> str:
        params = self.url_parameters(*args, privacy=privacy, **kwargs)
        if self.base:
            params["base"] = self.base
        space = self.space if self.port is None else f"{self.space}:{self.port}"
        return "{schema}://{project}:{token}@{space}/{source}/{targets}?{params}".format(
            schema=self.secure_protocol,
            project=self.quote(self.project, safe=""),
            token=self.pprint(self.token, privacy, safe=""),
            space=space,
            source=self.quote(self.source, safe="+"),
            targets="/".join(self.quote(t, safe="+") for t in self.targets),
            params=self.urlencode(params),
        )

    def __len__(self) -> int:
        return len(self.targets)

    @staticmethod
    def parse_url(url: str) -> dict[str, Any] | None:
        results = NotifyBase.parse_url(url, verify_host=False)
        if not results:
            return results
        qsd = results["qsd"]
        path = NotifySignalWire.split_path(results["fullpath"])
        results["project"] = NotifySignalWire.unquote(results["user"] or "")
        results["token"] = NotifySignalWire.unquote(results["password"] or "")
        results["space"] = NotifySignalWire.unquote(results["host"] or "")
        results["source"] = qsd.get("from") or (path.pop(0) if path else "")
        results["targets"] = path + NotifySignalWire.parse_phone_no(qsd.get("to", ""))
        if qsd.get("base"):
            results["base"] = qsd["base"]
        return results


def _e164(number: str) -> str:
    """A number as the API wants it: `+` and digits (an alphanumeric sender is kept)."""
    digits = "".join(c for c in number if c.isdigit())
    if digits and not any(c.isalpha() for c in number):
        return "+" + digits
    return number


def register() -> None:
    """Make `signalwire://` known to apprise; calling it again does nothing."""
    from apprise.apprise import N_MGR

    if SCHEMA not in N_MGR:
        N_MGR.add(NotifySignalWire, schemas=SCHEMA)
