"""Request signatures: did this callback really come from the provider?

Pure functions, no I/O. The receiver hands over the URL the provider
called (byte for byte: raw path, raw query), the request headers, the raw
body and, for forms, the decoded body pairs; `is_valid` says whether any
signature header matches any scheme valid for the content type under any
of the account's keys.

The schemes:

- Twilio's, used by both providers for forms and GET: base64 HMAC-SHA1 over
  the URL followed by every body parameter sorted by name, each as name
  then value, a repeated name's values sorted too.
- Twilio's for JSON: the URL carries `bodySHA256=<hex>`; the signature
  covers the URL alone and the body's SHA-256 must equal that hex.
- SignalWire's for JSON: lowercase hex HMAC-SHA1 over the URL followed by
  the raw body.

A JSON body signed over the bare URL (no `bodySHA256`) matches none of
them: the signature would then say nothing about the body.

Every URL is tried with and without its default port (:443 for https, :80
for http), as the providers are not consistent about it. A non-default
port is part of the URL and is never dropped.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl, urlsplit

SIGNATURE_HEADERS = ("x-signalwire-signature", "x-twilio-signature")
_SIGNATURE_HEADER_BYTES = tuple(name.encode() for name in SIGNATURE_HEADERS)

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"

_DEFAULT_PORTS = {"https": "443", "http": "80"}


def signed_url_candidates(url: str) -> list[str]:
    """The URL as given, plus its twin with or without the default port.

    Only the authority is touched; path and query stay byte for byte.
    """
    scheme, sep, rest = url.partition("://")
    default = _DEFAULT_PORTS.get(scheme.lower())
    if not sep or default is None:
        return [url]
    end = len(rest)
    for mark in "/?#":
        found = rest.find(mark)
        if found != -1:
            end = min(end, found)
    authority, tail = rest[:end], rest[end:]
    host, colon, port = authority.rpartition(":")
    if colon and port.isdigit() and not host.endswith(":"):
        if port != default:
            return [url]
        return [url, f"{scheme}://{host}{tail}"]
    if colon and not port:
        # "host:" with an empty port means the default one.
        return [url, f"{scheme}://{host}{tail}", f"{scheme}://{host}:{default}{tail}"]
    return [url, f"{scheme}://{authority}:{default}{tail}"]


def form_signature(url: str, pairs: Iterable[tuple[str, str]], key: str) -> str:
    """Twilio's scheme: base64 HMAC-SHA1 over URL + sorted name/value pairs."""
    return _b64_hmac(key, url + _sorted_params(pairs, dedupe=False))


def json_signature(url: str, body: bytes, key: str) -> str:
    """SignalWire's JSON scheme: lowercase hex HMAC-SHA1 over URL + raw body."""
    return hmac.new(key.encode(), url.encode() + body, hashlib.sha1).hexdigest()


def is_valid(
    url: str,
    headers: Mapping[str, str],
    content_type: str | None,
    raw_body: bytes,
    form_pairs: list[tuple[str, str]] | None,
    keys: Iterable[str],
) -> bool:
    """True when any signature header matches any valid scheme under any key.

    `content_type` is the bare media type (no parameters); None or any
    other type is treated as a body-less request (GET): the URL alone is
    signed. `form_pairs` are the decoded body pairs of a form, every
    repetition kept, in any order.
    """
    return signatures_valid(url, _signatures(headers), content_type, raw_body, form_pairs, keys)


def signature_values(raw_headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    """The non-blank signature header values of an ASGI scope's raw headers."""
    found = []
    for name, value in raw_headers:
        if name.lower() in _SIGNATURE_HEADER_BYTES and (text := value.decode("latin-1").strip()):
            found.append(text)
    return found


def signatures_valid(
    url: str,
    signatures: list[str],
    content_type: str | None,
    raw_body: bytes,
    form_pairs: list[tuple[str, str]] | None,
    keys: Iterable[str],
) -> bool:
    """`is_valid`, for signature values already taken from the headers."""
    keys = [key for key in keys if key]
    if not signatures or not keys:
        return False
    candidates = signed_url_candidates(url)
    messages = _base64_messages(candidates, content_type, raw_body, form_pairs)
    valid = False
    # Every combination is computed, not the first hit returned: the work
    # done must not depend on which key or header matched.
    for key in keys:
        for message in messages:
            valid |= _matches_any(_b64_hmac(key, message), signatures)
        if content_type == JSON:
            for candidate in candidates:
                expected = json_signature(candidate, raw_body, key)
                valid |= _matches_any(expected, [s.lower() for s in signatures])
    return valid


def _base64_messages(
    candidates: list[str],
    content_type: str | None,
    raw_body: bytes,
    form_pairs: list[tuple[str, str]] | None,
) -> list[str]:
    """What the base64 scheme may have signed, for each candidate URL."""
    if content_type == JSON:
        if not _body_hash_matches(candidates[0], raw_body):
            return []
        return list(candidates)
    if content_type == FORM:
        # Twilio's own validator drops a value repeated under one name;
        # a plain signer keeps it. Both describe the same body.
        suffixes = _form_suffixes(form_pairs or [])
        return [candidate + suffix for candidate in candidates for suffix in suffixes]
    return list(candidates)


def _body_hash_matches(url: str, raw_body: bytes) -> bool:
    query = urlsplit(url).query
    claimed = [v for k, v in parse_qsl(query, keep_blank_values=True) if k == "bodySHA256"]
    if len(claimed) != 1:
        return False
    actual = hashlib.sha256(raw_body).hexdigest()
    return hmac.compare_digest(actual.encode(), claimed[0].strip().lower().encode())


def _sorted_params(pairs: Iterable[tuple[str, str]], *, dedupe: bool) -> str:
    ordered = sorted(set(pairs) if dedupe else pairs)
    return "".join([name + value for name, value in ordered])


def _form_suffixes(pairs: Iterable[tuple[str, str]]) -> list[str]:
    """The sorted-parameter texts a signer may have appended, sorted, distinct.

    Sorting the (name, value) pairs orders names, then each name's values,
    as the scheme does. The deduplicated text is built only when a pair
    repeats, since otherwise it equals the plain one.
    """
    pairs = list(pairs)
    plain = _sorted_params(pairs, dedupe=False)
    if len(set(pairs)) == len(pairs):
        return [plain]
    return sorted({plain, _sorted_params(pairs, dedupe=True)})


def _b64_hmac(key: str, message: str) -> str:
    mac = _keyed_sha1(key).copy()
    mac.update(message.encode())
    return base64.b64encode(mac.digest()).decode("ascii")


@functools.lru_cache(maxsize=64)
def _keyed_sha1(key: str) -> hmac.HMAC:
    """An HMAC-SHA1 keyed with `key`, to copy for each message.

    A copy skips what `hmac.digest` does every time (with OpenSSL 3,
    fetching the algorithm and setting the key up), a fifth of the
    signature check's time. The keys cached are the configured ones.
    """
    return hmac.new(key.encode(), digestmod=hashlib.sha1)


def _signatures(headers: Mapping[str, str]) -> list[str]:
    found = []
    for name, value in headers.items():
        if name.lower() in SIGNATURE_HEADERS and value.strip():
            found.append(value.strip())
    return found


def _matches_any(expected: str, signatures: list[str]) -> bool:
    hit = False
    for signature in signatures:
        hit |= hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace"))
    return hit
