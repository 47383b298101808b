"""The receiver: the Starlette app providers post their callbacks to.

`create_app(config, host, pipeline)` serves the callback path (POST and
GET), `GET /healthz`, and any route a plugin registers. A callback goes
through these checks in this order, and the first that fails answers:

1. body size: 413, from `Content-Length` before reading anything, else
   while the body streams in, stopping as soon as it passes the limit; a
   request not received whole within `server.read_timeout` seconds gets
   408 from `recflow serve`'s HTTP protocol (`recflow.http_limits`), so a
   client sending a byte at a time cannot hold the server;
2. content type: 415 unless `application/x-www-form-urlencoded` or
   `application/json` (a `charset` other than UTF-8 is refused too), or
   when a `Content-Encoding` (gzip, say) compresses the body; a GET
   carries its parameters in the query and has no body;
3. parsing: 400 for broken JSON, bytes that are not UTF-8, or more than
   `MAX_PARAMS` parameters in the body or in the query;
4. account and signature: 403 when `AccountSid` names no provider or no
   signature matches (see `recflow.verify`);
5. required fields: 400 (`recflow.event.parse_event`).

Then the event goes to the pipeline with the rules it matches, and the
answer is 204 once the pipeline has committed it (a known duplicate gets
204 too), or 503 when the backend cannot commit. Error bodies have one
shape, `{"error": "<generic reason>"}`; the detail is logged under the
request id, which every answer carries in `X-Request-Id`.

The web app knows verification, parsing and the pipeline's `submit`; it
never imports an action.

Known shortcomings: the signed URL is rebuilt from the `Host` header (or,
from a trusted proxy, the first `X-Forwarded-Proto` and `X-Forwarded-Host`
values), the raw path and the raw query. `X-Forwarded-Port`, RFC 7239's
`Forwarded` header and an ASGI `root_path` (an app mounted under a prefix)
are not read; set `server.public_url` when they matter.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Lifespan, Receive, Scope, Send

from recflow import http_limits, rules, verify
from recflow.config import Config, RuleConfig
from recflow.errors import BackendError, ConfigError, RequestError
from recflow.event import REQUIRED, Event, params_from_json, params_from_pairs, parse_event
from recflow.plugins import PluginHost

logger = logging.getLogger(__name__)

# A real callback has about fifteen parameters; a thousand is generous and
# still keeps a hostile body from costing much to parse.
MAX_PARAMS = 1000

HEALTH_PATH = "/healthz"

_UTF8 = (None, "utf-8", "utf8")


class Pipeline(Protocol):
    """What the receiver needs from `recflow.pipeline`."""

    async def submit(self, event: Event, rules: Sequence[RuleConfig]) -> bool: ...

    async def healthy(self) -> bool: ...


def create_app(
    config: Config,
    host: PluginHost,
    pipeline: Pipeline,
    *,
    lifespan: Lifespan[Starlette] | None = None,
    workers_problem: Callable[[], str | None] | None = None,
) -> Starlette:
    """The receiver app; `lifespan` lets `recflow serve` start the workers.

    `workers_problem()`, if given, says why the workers beside this
    receiver may not be running; `/healthz` reports it.

    Raises `ConfigError` when a plugin route clashes with the callback
    path, `/healthz`, or another plugin's route.
    """
    receiver = _Receiver(config, pipeline, workers_problem)
    routes: list[BaseRoute] = [
        # An ASGI app, not a `Request -> Response` function: see `_Receiver`.
        Route(config.server.path, receiver, methods=["GET", "POST"]),
        Route(HEALTH_PATH, receiver.healthz, methods=["GET"]),
    ]
    routes += _plugin_routes(host, {config.server.path, HEALTH_PATH})
    app = _ReceiverApp(
        receiver,
        config.server.path,
        routes=routes,
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )
    # A trailing-slash redirect would build its Location from the Host
    # header and the raw query (a 500 on a query that is not UTF-8); the
    # providers call one exact URL, so anything else is simply a 404.
    app.router.redirect_slashes = False
    return app


class _ReceiverApp(Starlette):
    """Starlette, with the callback path served ahead of its middleware.

    A callback for the exact callback path, by GET, POST or HEAD, goes
    straight to the receiver: it catches its own errors and answers every
    request itself, so Starlette's error and exception middleware and its
    router have nothing to add, and cost about a tenth of the receiver's
    time at a few thousand callbacks a second (`bench/bench_peers.py`).
    Everything else, the same path by another method included (405), goes
    through Starlette as usual; the route stays in its route table.
    """

    def __init__(self, receiver: _Receiver, path: str, **options: Any) -> None:
        super().__init__(**options)
        self._receiver = receiver
        self._path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == self._path
            and scope["method"] in _FAST_METHODS
        ):
            await self._receiver(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


_FAST_METHODS = frozenset({"GET", "POST", "HEAD"})


@dataclasses.dataclass
class _Seen:
    """What is known of a callback so far, for its one log line."""

    request_id: str
    account: str = "-"
    recording: str = "-"
    status: str = "-"


class _Receiver:
    """The callback path, as a plain ASGI app.

    The hot path of the service: it reads the raw scope and messages and
    sends its answer itself, without building a Starlette `Request` and
    `Response` and their wrappers, which cost as much as all of recflow's
    own checks at a few thousand callbacks a second (`bench/bench_peers.py`).
    Starlette still routes to it and answers 404 and 405.
    """

    def __init__(
        self,
        config: Config,
        pipeline: Pipeline,
        workers_problem: Callable[[], str | None] | None = None,
    ) -> None:
        self.config = config
        self.pipeline = pipeline
        self.workers_problem = workers_problem
        self.proxies = config.server.trusted_proxies
        # Request ids: a random prefix per app and a counter, unique within
        # a run and across restarts in practice; no system call per request
        # (a uuid4 each cost one, and a GIL hand-off with the committer).
        self._id_prefix = os.urandom(4).hex()
        self._id_counter = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        seen = _Seen(request_id=f"{self._id_prefix}{next(self._id_counter):08x}")
        try:
            event, matched, new = await self._accept(scope, receive, seen)
        except RequestError as exc:
            self._log_refusal(seen, exc.status, exc.detail)
            await _error(exc.status, exc.reason, seen.request_id)(scope, receive, send)
            return
        except BackendError as exc:
            self._log_refusal(seen, 503, f"backend cannot commit: {exc}")
            await _error(503, "backend unavailable", seen.request_id)(scope, receive, send)
            return
        except Exception:
            logger.exception("callback %s failed on an unexpected error", seen.request_id)
            await _error(500, "internal error", seen.request_id)(scope, receive, send)
            return
        logger.info(
            "callback %s account=%s recording=%s status=%s rules=%s %s -> 204",
            seen.request_id,
            event.account_sid,
            event.recording_sid,
            event.status,
            ",".join(rule.name for rule in matched) or "-",
            "new" if new else "duplicate",
        )
        await send(
            {
                "type": "http.response.start",
                "status": 204,
                "headers": [(b"x-request-id", seen.request_id.encode())],
            }
        )
        await send({"type": "http.response.body", "body": b""})

    async def healthz(self, request: Request) -> Response:
        try:
            ok = await self.pipeline.healthy()
        except Exception:
            logger.exception("health check of the backend raised")
            ok = False
        if not ok:
            return JSONResponse({"error": "backend unavailable"}, status_code=503)

        # Callbacks are still received and kept: a 200, so that a load
        # balancer keeps sending them here, with the workers' trouble said.
        problem = self.workers_problem() if self.workers_problem else None
        if problem:
            return JSONResponse({"status": "degraded", "workers": problem})
        return JSONResponse({"status": "ok"})

    async def _accept(
        self, scope: Scope, receive: Receive, seen: _Seen
    ) -> tuple[Event, Sequence[RuleConfig], bool]:
        headers = _headers(scope)
        limit = self.config.server.max_body_bytes
        _check_content_length(headers.get("content-length"), limit)
        raw_body = b""
        media: str | None = None
        if scope["method"] == "POST":
            raw_body = await _read_body(scope, receive, limit)
            media = _media_type(headers.get("content-type"))
            if "content-encoding" in headers:
                _check_content_encoding(scope)

        query_pairs = _parse_pairs(scope.get("query_string", b""), "query string")
        body_pairs: list[tuple[str, str]] | None = None
        document: dict[str, Any] = {}
        if media == verify.FORM:
            body_pairs = _parse_pairs(raw_body, "form body")
            params = params_from_pairs(body_pairs, query_pairs)
        elif media == verify.JSON:
            document = _parse_json(raw_body)
            params = params_from_pairs(params_from_json(document).items(), query_pairs)
        else:
            params = params_from_pairs(query_pairs)
        seen.account = params.get("AccountSid", "-")
        seen.recording = params.get("RecordingSid", "-")
        seen.status = params.get("RecordingStatus", "-")

        self._check_signature(scope, headers, params, media, raw_body, body_pairs, seen)
        for name in REQUIRED:
            # A form can only carry strings; JSON must too, for these.
            if name in document and not isinstance(document[name], str):
                raise RequestError(400, f"malformed required field {name}")
        event = parse_event(params)
        matched = rules.match(self.config.rules, event)
        new = await self.pipeline.submit(event, matched)
        return event, matched, new

    def _check_signature(
        self,
        scope: Scope,
        headers: dict[str, str],
        params: dict[str, str],
        media: str | None,
        raw_body: bytes,
        body_pairs: list[tuple[str, str]] | None,
        seen: _Seen,
    ) -> None:
        account = params.get("AccountSid", "")
        provider = self.config.provider_for(account)
        if provider is None:
            raise RequestError(403, "forbidden", "AccountSid matches no configured provider")
        if not self.config.server.verify_signatures:
            logger.warning(
                "callback %s accepted without a signature check: server.verify_signatures is false",
                seen.request_id,
            )
            return
        url = self._signed_url(scope, headers)
        signatures = verify.signature_values(scope["headers"])
        if not signatures:
            raise RequestError(403, "forbidden", f"no signature header; signed URL {url}")
        ok = verify.signatures_valid(
            url, signatures, media, raw_body, body_pairs, provider.signing_keys
        )
        if not ok:
            raise RequestError(
                403,
                "forbidden",
                f"signature matches no key of provider {provider.name} for URL {url}",
            )

    def _signed_url(self, scope: Scope, headers: dict[str, str]) -> str:
        """The URL the provider called, as it saw it, byte for byte."""
        query = scope.get("query_string", b"").decode("utf-8", "replace")
        base = self.config.server.public_url
        if not base:
            scheme = scope.get("scheme", "http")
            authority = headers.get("host") or _server_authority(scope)
            if self._from_trusted_proxy(scope):
                scheme = _first(headers.get("x-forwarded-proto")) or scheme
                authority = _first(headers.get("x-forwarded-host")) or authority
            raw_path = scope.get("raw_path") or scope["path"].encode()
            base = f"{scheme}://{authority}{raw_path.decode('utf-8', 'replace')}"
        if query:
            base += ("&" if "?" in base else "?") + query
        return base

    def _from_trusted_proxy(self, scope: Scope) -> bool:
        client = scope.get("client")
        if not client or not self.proxies:
            return False
        try:
            peer = ipaddress.ip_address(client[0])
        except ValueError:
            return False
        return any(peer in network for network in self.proxies)

    def _log_refusal(self, seen: _Seen, status: int, detail: str) -> None:
        logger.info(
            "callback %s account=%s recording=%s status=%s -> %d: %s",
            seen.request_id,
            seen.account,
            seen.recording,
            seen.status,
            status,
            detail,
        )


def _headers(scope: Scope) -> dict[str, str]:
    """The request headers by lowercase name, the first of a repeated one.

    One pass over the raw list; Starlette's `Headers` would walk it again
    for every header looked up. Signature headers, whose every value
    counts, are read from the raw list by `verify.signature_values`.
    """
    headers: dict[str, str] = {}
    for name, value in scope["headers"]:
        headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    return headers


def _check_content_length(raw: str | None, limit: int) -> None:
    if raw is None:
        return
    try:
        length = int(raw)
    except ValueError:
        raise RequestError(400, "malformed request", f"bad Content-Length {raw!r}") from None
    if length > limit:
        raise RequestError(413, "body too large", f"Content-Length {length} is over {limit} bytes")


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole body, refused as soon as it passes `limit` bytes.

    No deadline here: `recflow serve`'s HTTP protocol gives the whole
    request, head and body, `server.read_timeout` seconds, then answers
    408 itself and closes the connection, which ends this read (see
    `recflow.http_limits`). An `asyncio.timeout` per request cost the event
    loop a timer, a task lookup and a cyclic garbage collection now and then.
    """
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            if scope.get(http_limits.TIMED_OUT):
                raise RequestError(
                    408, "request timeout", f"body not complete in time ({size} bytes)"
                )
            raise RequestError(400, "malformed request", "client disconnected mid-body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestError(413, "body too large", f"body passed {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _media_type(header: str | None) -> str:
    """The bare media type of a POST, or a 415 for what we do not read."""
    media, _, rest = (header or "").partition(";")
    media = media.strip().lower()
    charset = None
    for parameter in rest.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
    if media not in (verify.FORM, verify.JSON) or charset not in _UTF8:
        raise RequestError(
            415, "unsupported content type", f"content type {header!r} is not accepted"
        )
    return media


def _check_content_encoding(scope: Scope) -> None:
    """A 415 for a compressed body: the providers send theirs as is.

    Read as it came, a gzip body would be refused by its signature (403),
    which would send whoever debugs it after the wrong key. Every coding of
    every Content-Encoding header counts (`identity` then `gzip` is gzip).
    """
    values = [
        value.decode("latin-1")
        for name, value in scope["headers"]
        if name.lower() == b"content-encoding"
    ]
    codings = [coding.strip().lower() for value in values for coding in value.split(",")]
    if any(coding not in ("", "identity") for coding in codings):
        header = ", ".join(values)
        raise RequestError(
            415,
            "unsupported content encoding",
            f"content encoding {header!r} is not accepted: send the body uncompressed",
        )


def _parse_pairs(raw: bytes, what: str) -> list[tuple[str, str]]:
    """Name/value pairs of a form body or query, as `parse_qsl` reads them.

    The same result as `urllib.parse.parse_qsl(text, keep_blank_values=True,
    errors="strict", max_num_fields=MAX_PARAMS)` (held to it by a property
    test), in half the time: a field with neither `%` nor `+` in it, most
    of a callback's, is taken as it is instead of going through `unquote`.
    """
    if not raw:
        return []
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _not_utf8(what) from None
    if text.count("&") >= MAX_PARAMS:
        raise RequestError(400, "too many parameters", f"{what} has more than {MAX_PARAMS} fields")
    pairs: list[tuple[str, str]] = []
    try:
        for field in text.split("&"):
            if not field:
                continue
            name, _, value = field.partition("=")
            if "%" in name or "+" in name:
                name = unquote(name.replace("+", " "), errors="strict")
            if "%" in value or "+" in value:
                value = unquote(value.replace("+", " "), errors="strict")
            pairs.append((name, value))
    except UnicodeDecodeError:
        raise _not_utf8(what) from None
    return pairs


def _not_utf8(what: str) -> RequestError:
    """The 400 for a query string or form body that is not UTF-8."""
    where = "query string" if what == "query string" else "body"
    return RequestError(400, f"malformed {where}", f"{what} is not valid UTF-8")


def _parse_json(raw: bytes) -> dict[str, Any]:
    try:
        document = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError:
        raise RequestError(400, "malformed body", "JSON body is not valid UTF-8") from None
    except (ValueError, RecursionError) as exc:
        raise RequestError(400, "malformed body", f"JSON body does not parse: {exc}") from None
    if not isinstance(document, dict):
        raise RequestError(400, "malformed body", "JSON body is not an object")
    if len(document) > MAX_PARAMS:
        raise RequestError(400, "too many parameters", f"JSON body has over {MAX_PARAMS} keys")
    return document


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _first(header: str | None) -> str | None:
    """The first value of a comma-separated forwarding header."""
    if not header:
        return None
    return header.split(",")[0].strip() or None


def _server_authority(scope: Scope) -> str:
    server = scope.get("server")
    if not server:
        return "localhost"
    host, port = server[0], server[1]
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}" if port is not None else host


def _plugin_routes(host: PluginHost, taken: set[str]) -> list[BaseRoute]:
    routes: list[BaseRoute] = []
    owners = {path: "recflow" for path in taken}

    for impl in host.pm.hook.register_routes.get_hookimpls():
        plugin = host.pm.get_name(impl.plugin) or repr(impl.plugin)

        def register(
            path: str,
            endpoint: Callable[..., Any],
            methods: list[str] | None = None,
            _plugin: str = plugin,
        ) -> None:
            if path in owners:
                raise ConfigError(
                    f"plugin {_plugin}: route {path!r} clashes with one of {owners[path]}"
                )
            owners[path] = f"plugin {_plugin}"
            routes.append(Route(path, endpoint, methods=methods))

        impl.function(**{arg: register for arg in impl.argnames})
    return routes


def _error(status: int, reason: str, request_id: str | None = None) -> JSONResponse:
    headers = {"X-Request-Id": request_id} if request_id else None
    return JSONResponse({"error": reason}, status_code=status, headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 and 405, in our error shape."""
    assert isinstance(exc, HTTPException)
    response = _error(exc.status_code, str(exc.detail).lower())
    if exc.headers:
        response.headers.update(exc.headers)
    return response
