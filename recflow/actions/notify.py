"""The `notify` action: email, SMS or chat through apprise, with the audio attached.

`to` is one apprise URL or a list (`mailto://`, `twilio://`, `slack://`,
and recflow's own `signalwire://`, see `recflow.signalwire_sms`). With
`attach: true` the audio goes along: the object an earlier `store` step
wrote when it can be read back with default credentials, else the
recording fetched once from the provider. Past `attach_max_bytes` (20 MB
by default, as most mail servers refuse more) the message goes without it
and its body says where the audio is.

Every send has a deadline: apprise's `cto` (connect) and `rto` (read)
timeouts are added to each URL that does not set its own, and the whole
call is limited to `timeout` seconds per URL. apprise does not raise on
failure; its per-service log (warnings and errors, and the DEBUG detail
when the `apprise` logger is set to DEBUG) is turned into the step's
error, with secrets and URL passwords masked.

The attachment is named after the recording (`{sid}.wav`), made safe as
one file name, whatever the path the stored object has. `recflow check`
runs `check` on each notify step: every `to` URL, rendered against the
sample event, must be one apprise can read (nothing is sent).

Known shortcomings: when one of several URLs fails, the step fails and
its retry sends again to the URLs that had succeeded. At the default log
level apprise's reasons are terse ("Sending email to ... failed"): the
server's own reply (an SMTP 550) is only in its DEBUG records.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import apprise
import fsspec

from recflow import signalwire_sms
from recflow.context import StepContext
from recflow.errors import ActionError
from recflow.hookspecs import hookimpl
from recflow.plugins import ActionSpec
from recflow.recording import check_recording_url
from recflow.secrets import Redactor
from recflow.templates import filename

logger = logging.getLogger(__name__)

DEFAULT_MAX_ATTACH = 20_000_000
DEFAULT_TIMEOUT = 30.0
CHUNK_SIZE = 1024 * 1024
# What `recflow check` renders for a value only a callback or a step provides.
_PLACEHOLDER = re.compile(r"<(params|steps)\.[^>]*>")
_URL_PASSWORD = re.compile(r"(://[^/:@]*:)[^/@]*@")

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["to"],
    "properties": {
        "to": {
            "oneOf": [
                {"type": "string", "minLength": 1},
                {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
            ]
        },
        "title": {"type": "string"},
        "body": {"type": "string"},
        "format": {"enum": ["text", "markdown", "html"], "default": "text"},
        "attach": {"type": "boolean", "default": False},
        "attach_max_bytes": {"type": "integer", "minimum": 0, "default": DEFAULT_MAX_ATTACH},
        "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 600},
    },
}


def run(params: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    """Send the message to every URL in `to`; outputs `sent` (how many services took it)."""
    signalwire_sms.register()
    redactor = Redactor(ctx.secrets)
    urls = [params["to"]] if isinstance(params["to"], str) else list(params["to"])
    timeout = float(params.get("timeout") or DEFAULT_TIMEOUT)
    title = params.get("title") or ""
    body = params.get("body") or title or f"Recording {ctx.event.recording_sid}"

    notifier = apprise.Apprise()
    for url in urls:
        if not notifier.add(with_deadline(url, timeout)):
            raise ActionError(
                f"notify: {redactor.mask(url)} is not a usable apprise URL", permanent=True
            )

    with tempfile.TemporaryDirectory(prefix="recflow-notify-") as tmp:
        attachment = None
        if params.get("attach"):
            limit = int(params.get("attach_max_bytes", DEFAULT_MAX_ATTACH))
            try:
                attachment, note = _attachment(ctx, Path(tmp), limit)
            except OSError as exc:
                reason = exc.strerror or _one_line(exc)
                raise ActionError(f"notify: cannot prepare the attachment: {reason}") from None
            body += note
        result = notifier.notify(
            body=body,
            title=title,
            body_format=params.get("format") or "text",
            attach=attachment,
            timeout=timeout * len(urls),
            log_level=logging.DEBUG,
        )

    failed = [service for service in result if not service]
    if failed or not result:
        reasons = "; ".join(_reason(service) for service in failed) or result.status.name
        raise ActionError(redactor.mask(f"notify failed: {reasons}"))
    ctx.logger.info(
        "notify: recording %s sent to %d service(s)%s",
        ctx.event.recording_sid,
        result.success_count,
        " with the audio" if attachment else "",
    )
    return {"sent": result.success_count}


def with_deadline(url: str, timeout: float) -> str:
    """`url` with apprise's connect and read timeouts added unless it sets them."""
    query = urlsplit(url).query
    given = {name for name, _ in parse_qsl(query)}
    extra = [
        f"{name}={value:g}"
        for name, value in (("cto", min(10.0, timeout)), ("rto", timeout))
        if name not in given
    ]
    if not extra:
        return url
    fragment = ""
    if "#" in url:
        url, fragment = url.split("#", 1)
        fragment = "#" + fragment
    joiner = "&" if "?" in url else "?"
    return url + joiner + "&".join(extra) + fragment


def _reason(service: Any) -> str:
    """What went wrong for one service: its warnings and errors, else its last words."""
    entries = list(service.logs())
    serious = [e.message for e in entries if e.level in ("WARNING", "ERROR", "CRITICAL")]
    details = [e.message for e in entries if e.level == "DEBUG" and "xception" in e.message]
    words = serious + details[-1:] or [e.message for e in entries[-2:]] or ["no reason given"]
    return f"{service.name}: " + " ".join(words)


def _attachment(ctx: StepContext, tmp: Path, limit: int) -> tuple[str | None, str]:
    """A local file of the audio to attach (or None) and a note to add to the body."""
    stored = next(
        (outputs for action, outputs in reversed(ctx.previous) if action == "store"), None
    )
    fmt = (stored or {}).get("format") or "wav"
    # One plain file name in `tmp`, whatever the id or the stored path hold.
    target = tmp / filename(f"{ctx.event.recording_sid}.{fmt}")
    where = (stored or {}).get("url") or ctx.event.recording_url
    size = (stored or {}).get("bytes")
    if isinstance(size, int) and size > limit:
        return None, _too_large(size, where)
    if stored and stored.get("url") and _copy_stored(str(stored["url"]), target, limit):
        return str(target), ""
    check_recording_url(ctx)
    with ctx.open_media(fmt) as media:
        if media.length is not None and media.length > limit:
            return None, _too_large(media.length, where)
        received = 0
        with target.open("wb") as out:
            for chunk in media.iter_bytes(CHUNK_SIZE):
                received += len(chunk)
                if received > limit:
                    return None, _too_large(None, where)
                out.write(chunk)
    return str(target), ""


def _copy_stored(url: str, target: Path, limit: int) -> bool:
    """Copy what `store` wrote; False when it cannot be read here (it may need options)."""
    try:
        with fsspec.open(url, "rb") as source, target.open("wb") as out:
            shutil.copyfileobj(source, out, CHUNK_SIZE)
    except Exception as exc:  # any store's error: fall back to the provider's copy
        logger.debug("stored audio not readable here (%s): fetching it instead", exc)
        return False
    return target.stat().st_size <= limit


def check(params: Mapping[str, Any]) -> list[str]:
    """`to` URLs that apprise cannot read: an unknown service or a malformed URL.

    Only parses; nothing is sent. A URL holding a template placeholder
    (`<params.x>`, `<steps.a.url>`) is not judged.
    """
    signalwire_sms.register()
    to = params.get("to") or []
    urls = [to] if isinstance(to, str) else [str(url) for url in to]
    problems = []
    for url in urls:
        if _PLACEHOLDER.search(url) or _readable(url):
            continue
        scheme = url.partition("://")[0] if "://" in url else ""
        if scheme and scheme.lower() not in _apprise_schemes():
            problems.append(f"to: {scheme}:// is not a service apprise knows")
        else:
            shown = _URL_PASSWORD.sub(r"\1***@", url)
            problems.append(f"to: apprise cannot read the URL {shown!r}; check its form")
    return problems


def _readable(url: str) -> bool:
    """Whether apprise can load `url`, without its error log: the caller reports it."""
    apprise_logger = logging.getLogger("apprise")
    level = apprise_logger.level
    apprise_logger.setLevel(logging.CRITICAL + 1)
    try:
        return bool(apprise.Apprise().add(url))
    finally:
        apprise_logger.setLevel(level)


def _apprise_schemes() -> set[str]:
    schemes: set[str] = set()
    for service in apprise.Apprise().details()["schemas"]:
        for key in ("protocols", "secure_protocols"):
            value = service.get(key) or ()
            schemes.update(p.lower() for p in ([value] if isinstance(value, str) else value))
    return schemes


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _too_large(size: int | None, where: str) -> str:
    amount = f" ({size / 1e6:.1f} MB)" if size is not None else ""
    return f"\n\nThe audio{amount} is too large to attach; it is at {where}"


@hookimpl
def register_actions(register: Any) -> None:
    signalwire_sms.register()
    register(
        ActionSpec(
            name="notify",
            run=run,
            schema=SCHEMA,
            outputs=("sent",),
            description="send email, SMS or chat through apprise, optionally with the audio",
            check=check,
        )
    )
