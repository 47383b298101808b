"""Secrets masking: what came from the environment never reaches a reader.

The loader collects every value it took from the environment and every
credential written inside a URL into `Config.secrets`. A `Redactor` built
from them masks text, nested data (journal rows, `--json` output) and,
through `RedactingFilter`, every log record.

Secrets shorter than `SHORT` characters (an environment value such as
``4`` for a worker count) are masked only where they stand alone as a
word: masking every ``4`` in a log line would make it unreadable while
hiding nothing a reader could not guess.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

MASK = "***"
SHORT = 4
_PREFILTER_MAX = 32

# scheme://user:password@ -- the password is group 2; users (account ids,
# mailbox names) stay readable.
_URL_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://[^\s/:@]*:)([^\s/@]+)@")


class Redactor:
    """Masks a fixed set of secrets, and URL passwords, in text and data."""

    def __init__(self, secrets: Iterable[str]) -> None:
        variants: set[str] = set()
        for secret in secrets:
            if not secret:
                continue
            variants.add(secret)
            # A password written into a URL is usually percent-encoded there.
            variants.add(quote(secret, safe=""))
        ordered = sorted(variants, key=lambda s: (-len(s), s))
        # A few substring tests are much cheaper than running the pattern
        # over every log line; past a few dozen secrets, the pattern alone.
        self._prefilter = tuple(ordered) if len(ordered) <= _PREFILTER_MAX else None
        parts = [
            re.escape(s) if len(s) >= SHORT else rf"(?<!\w){re.escape(s)}(?!\w)" for s in ordered
        ]
        self._pattern = re.compile("|".join(parts)) if parts else None

    def mask(self, text: str) -> str:
        """`text` with each secret, longest first, and each URL password as ``***``."""
        if self._pattern is not None and (
            self._prefilter is None or any(secret in text for secret in self._prefilter)
        ):
            text = self._pattern.sub(MASK, text)
        if "://" not in text:
            return text
        return _URL_CREDENTIALS.sub(rf"\g<1>{MASK}@", text)

    def mask_obj(self, obj: Any) -> Any:
        """A copy of `obj` with every string in it (keys too) masked."""
        if isinstance(obj, str):
            return self.mask(obj)
        if isinstance(obj, dict):
            return {self.mask_obj(k): self.mask_obj(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(self.mask_obj(v) for v in obj)
        return obj


# C0 and C1 control characters but tab: a newline or a terminal escape in
# a value a client sent must not start a forged log line or drive a terminal.
_CONTROLS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def escape_controls(text: str) -> str:
    """`text` with control characters shown as escapes (``\\n``, ``\\x1b``)."""
    if text.isprintable():  # the usual case, much cheaper than the pattern
        return text
    return _CONTROLS.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class RedactingFilter(logging.Filter):
    """A handler filter that masks each record's message, traceback and stack.

    The message is formatted with its arguments first, then masked, and
    the arguments are cleared, so a secret passed as a lazy ``%s``
    argument is masked too. Control characters in the message are escaped,
    so one record stays one line whatever a callback carried.
    """

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = escape_controls(self.redactor.mask(record.getMessage()))
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor.mask(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redactor.mask(record.stack_info)
        return True


def install(redactor: Redactor, logger: logging.Logger | None = None) -> RedactingFilter:
    """Mask everything the handlers of `logger` (the root by default) emit.

    Filters on handlers, not loggers, because a logger's filters do not
    see records that propagate from its children. A filter installed
    earlier is replaced, so calling this again with new secrets is safe.
    Handlers added afterwards are not covered: configure logging first.
    """
    target = logger or logging.getLogger()
    new = RedactingFilter(redactor)
    for handler in target.handlers:
        for old in [f for f in handler.filters if isinstance(f, RedactingFilter)]:
            handler.removeFilter(old)
        handler.addFilter(new)
    return new
