"""Fetching a recording's audio from its provider, as a stream.

Media comes only from the origin of the provider's API, with the account's
Basic auth, and only that origin ever sees the credentials: redirects are
followed one hop at a time here rather than by httpx, so each hop is
checked before it is requested. A hop to another origin gets no
credentials, and a hop that leaves the provider's origin for a loopback,
private or link-local address is refused (a provider that redirects to
short-lived URLs uses public hosts).

How answers map to failures, so the worker knows whether to try again:

- 404: the provider has not finished writing the file yet: retried.
- 401, 403: wrong credentials, which waiting will not fix: permanent.
- 5xx, a refused connection, a timeout, a transfer that breaks: retried.
- a 2xx that is not audio (an error page, JSON metadata): permanent.

Known shortcoming: a host name is resolved to check it is public, then
resolved again by httpx when it connects, so a DNS answer that changes in
between (rebinding) is not caught.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import logging
import posixpath
import socket
from collections.abc import Iterator
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

from recflow import http_client
from recflow.config import ProviderConfig
from recflow.errors import ActionError

logger = logging.getLogger(__name__)

FORMATS = ("wav", "mp3")
MAX_REDIRECTS = 5
TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=60.0, pool=10.0)
CHUNK_SIZE = 64 * 1024

_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_of(url: str) -> str:
    """scheme://host[:port], lower case, without a default port or credentials."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None or port == _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def media_url(recording_url: str, fmt: str | None) -> str:
    """The URL of the recording in format `fmt`: `.wav` or `.mp3` appended.

    The providers serve WAV at the bare URL and at `.wav`, MP3 at `.mp3`.
    An extension already present is replaced, so `fmt` always wins.
    """
    if fmt is None:
        return recording_url
    if fmt not in FORMATS:
        raise ActionError(f"unknown media format {fmt!r}: use wav or mp3", permanent=True)
    parts = urlsplit(recording_url)
    root, ext = posixpath.splitext(parts.path)
    path = (root if ext.lower() in (".wav", ".mp3", ".json") else parts.path) + "." + fmt
    return urlunsplit(parts._replace(path=path))


class Media:
    """An open media answer: what it is, how long, and its bytes, once.

    `iter_bytes` raises a retryable `ActionError` when the transfer breaks
    or ends short of the announced `length`.
    """

    def __init__(self, response: httpx.Response, url: str) -> None:
        self._response = response
        self.url = url
        self.content_type = response.headers.get("content-type", "").split(";")[0].strip()
        raw_length = response.headers.get("content-length")
        self.length: int | None = int(raw_length) if raw_length and raw_length.isdigit() else None
        self._head = b""
        self._chunks: Iterator[bytes] | None = None

    def _start(self) -> None:
        """Read the first bytes so a non-audio body fails before anything is written."""
        self._chunks = self._response.iter_bytes()
        head = b""
        try:
            while len(head) < 4:
                head += next(self._chunks)
        except StopIteration:
            pass
        except httpx.HTTPError as exc:
            raise ActionError(
                f"media transfer broke after {len(head)} bytes: {_reason(exc)}"
            ) from None
        self._head = head
        if not self.content_type.startswith("audio/") or not looks_like_audio(head):
            kind = self.content_type or "no content type"
            raise ActionError(
                f"media URL answered {kind}, not audio ({head[:16]!r}...)", permanent=True
            )

    def iter_bytes(self, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """The body in chunks of about `chunk_size` bytes, checked for length."""
        if self._chunks is None:
            raise RuntimeError("iter_bytes can be called only once")
        chunks, self._chunks = self._chunks, None
        received = 0
        # Pieces are joined once per chunk handed out (one copy; none when
        # a piece is already big enough): buffering each megabyte in a
        # bytearray and copying it out again was a tenth of a worker's time.
        parts: list[bytes] = []
        pending = 0
        try:
            for piece in itertools.chain((self._head,), chunks):
                parts.append(piece)
                pending += len(piece)
                if pending >= chunk_size:
                    yield parts[0] if len(parts) == 1 else b"".join(parts)
                    received, parts, pending = received + pending, [], 0
        except httpx.HTTPError as exc:
            raise ActionError(
                f"media transfer broke after {received + pending} bytes: {_reason(exc)}"
            ) from None
        if pending:
            received += pending
            yield b"".join(parts)
        if self.length is not None and received != self.length:
            raise ActionError(f"media transfer ended at {received} of {self.length} bytes")


def looks_like_audio(head: bytes) -> bool:
    """True when `head` starts like a WAV (RIFF), an MP3 (ID3 or a frame sync)."""
    if head.startswith((b"RIFF", b"ID3")):
        return True
    return len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0


@contextlib.contextmanager
def open_media(
    recording_url: str,
    provider: ProviderConfig,
    fmt: str | None = None,
    *,
    allow_private_redirects: bool = False,
) -> Iterator[Media]:
    """Open the recording's audio; yields a `Media`. See the module docstring.

    `allow_private_redirects` lets a redirect reach a private or loopback
    address on another origin: for a self-hosted setup, and for tests
    where every server is on 127.0.0.1.
    """
    url = media_url(recording_url, fmt)
    _check_own_origin(url, provider)
    response = _request(http_client.client(), "GET", url, provider, allow_private_redirects)
    try:
        media = Media(response, str(response.url))
        media._start()
        yield media
    finally:
        response.close()


def head_length(
    recording_url: str,
    provider: ProviderConfig,
    fmt: str | None = None,
    *,
    allow_private_redirects: bool = False,
) -> int | None:
    """The provider's announced size of the media; None when it does not say or is gone."""
    url = media_url(recording_url, fmt)
    _check_own_origin(url, provider)
    try:
        response = _request(http_client.client(), "HEAD", url, provider, allow_private_redirects)
    except _NotFound:
        return None
    response.close()
    raw = response.headers.get("content-length", "")
    return int(raw) if raw.isdigit() else None


def _check_own_origin(url: str, provider: ProviderConfig) -> None:
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        raise ActionError("media URL carries credentials of its own: refused", permanent=True)
    if parts.scheme.lower() not in _DEFAULT_PORTS or origin_of(url) != origin_of(provider.origin):
        raise ActionError(
            f"media URL {origin_of(url)} is not on provider {provider.name}'s API origin"
            f" {origin_of(provider.origin)}: refused",
            permanent=True,
        )


def _request(
    client: httpx.Client, method: str, url: str, provider: ProviderConfig, allow_private: bool
) -> httpx.Response:
    """Send `method` to `url`, following redirects hop by hop; a 2xx response, streaming."""
    own_origin = origin_of(provider.origin)
    for _hop in range(MAX_REDIRECTS + 1):
        same_origin = origin_of(url) == own_origin
        auth = (provider.account_sid, provider.api_token) if same_origin else None
        request = client.build_request(method, url, timeout=TIMEOUT)
        try:
            response = client.send(request, auth=auth, stream=True)
        except httpx.HTTPError as exc:
            raise ActionError(f"media fetch failed: {_reason(exc)}") from None
        if response.is_redirect:
            response.close()
            location = response.headers.get("location", "")
            url = urljoin(url, location)
            _check_redirect(url, own_origin, allow_private)
            logger.debug("media redirect to %s", origin_of(url))
            continue
        if response.is_success:
            return response
        response.close()
        raise _status_error(response.status_code)
    raise ActionError(f"media URL redirected more than {MAX_REDIRECTS} times", permanent=True)


def _check_redirect(url: str, own_origin: str, allow_private: bool) -> None:
    parts = urlsplit(url)
    if parts.scheme.lower() not in _DEFAULT_PORTS or not parts.hostname:
        raise ActionError(f"media redirect to an unusable URL ({parts.scheme}:)", permanent=True)
    if origin_of(url) == own_origin or allow_private:
        return
    for address in _addresses(parts.hostname, parts.port or _DEFAULT_PORTS[parts.scheme]):
        if not address.is_global:
            raise ActionError(
                f"media redirect to non-public address {address} refused", permanent=True
            )


def _addresses(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise ActionError(f"media redirect host {host} does not resolve: {exc}") from None
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


class _NotFound(ActionError):
    """A 404: right after a callback, the provider has not written the file yet."""


def _status_error(status: int) -> ActionError:
    if status == 404:
        return _NotFound("media not ready yet (404)")
    if status in (401, 403):
        return ActionError(
            f"media fetch refused ({status}): check the provider's account id and API token",
            permanent=True,
        )
    if status >= 500 or status in (408, 429):
        return ActionError(f"media fetch failed at the provider ({status})")
    return ActionError(f"media fetch answered {status}", permanent=True)


def _reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
