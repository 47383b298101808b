"""Limits uvicorn's HTTP protocol lacks: a request deadline and a header size cap.

uvicorn waits forever for a request once a connection opened (its
keep-alive timeout only runs between requests), and its httptools parser
keeps any amount of header bytes. A client that opens connections and
sends a byte now and then, or megabytes of headers, would hold the
server's memory and sockets. `protocol_class(timeout)` returns the
httptools protocol with both limits: a request, head and body, must arrive
whole within `timeout` seconds of its first byte (or of the connection)
and its head must stay under `MAX_HEADER_BYTES`; else the connection gets
a 408 or 431 and is closed.

The deadline lives here rather than in the app, because one timer per
request in the protocol costs far less than an `asyncio.timeout` around
the app's body read. When it cuts a body short, it marks the request's
scope with `TIMED_OUT`, so that the app, whose read then ends, logs the
408 under its request id.

Known shortcoming: this builds on uvicorn's `HttpToolsProtocol` and its
parser callbacks, which are not a public API; a uvicorn upgrade that
renames them breaks `recflow serve` at start, not silently.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger(__name__)

# A callback's headers are well under 2 KiB; proxies add a few hundred
# bytes. 32 KiB leaves room and bounds what one connection can hold.
MAX_HEADER_BYTES = 32 * 1024


# The scope key set on a request whose body the deadline cut short.
TIMED_OUT = "recflow.timed_out"


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request we refuse."""


class _GuardedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with a deadline on each request and a size cap on its head."""

    header_timeout: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._raw_head_bytes = 0
        self._refusal: tuple[int, str] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None:
            return
        # The parser keeps a header that has not ended yet in memory, out of
        # `on_header`'s sight: bytes that come while a head is incomplete are
        # counted here too. Counted before parsing, and reset when a request
        # begins, so a chunk ending one request's body and starting the next
        # one's head is never held against the new head (it may go uncounted:
        # the cap then holds within one chunk).
        if not self._head_complete():
            self._raw_head_bytes += len(data)
        super().data_received(data)
        if (
            self._refusal is None
            and self._raw_head_bytes > MAX_HEADER_BYTES
            and not self._head_complete()
        ):
            self._refusal = (431, "Request Header Fields Too Large")
            self._answer(*self._refusal)

    def _head_complete(self) -> bool:
        """True once the current request's head is parsed (uvicorn made its cycle)."""
        cycle = self.cycle
        return cycle is not None and cycle.scope is self.scope

    def send_400_response(self, msg: str) -> None:
        # uvicorn answers 400 to any parser error; a refusal of ours says why.
        if self._refusal is None:
            super().send_400_response(msg)
        else:
            self._answer(*self._refusal)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._raw_head_bytes = 0
        self._arm()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value))
        super().on_header(name, value)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEADER_BYTES:
            self._refusal = (431, "Request Header Fields Too Large")
            # httptools turns this into a parser error; send_400_response answers.
            raise _Refused(self._refusal[1])

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.header_timeout, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        self._refusal = (408, "Request Timeout")
        cycle = getattr(self, "cycle", None)
        if cycle is not None and cycle.scope is getattr(self, "scope", None):
            # The head arrived, the body did not.
            if cycle.response_started:
                # Answered already (a 413 from Content-Length, say) while the
                # body never came: no second answer, just let go.
                self.transport.close()
                return
            # The app is reading this request's body: let it say why it ends.
            cycle.scope[TIMED_OUT] = True  # type: ignore[index]
        self._answer(*self._refusal)

    def _answer(self, status: int, reason: str) -> None:
        self._disarm()
        if self.transport.is_closing():
            return
        peer = f"{self.client[0]}:{self.client[1]}" if self.client else "-"
        logger.info("connection from %s closed: %d %s", peer, status, reason)
        body = json.dumps({"error": reason.lower()}, separators=(",", ":")).encode()
        head = (
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        self.transport.close()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # An app still at work on this connection (a pipelined request
            # awaiting its commit) now finds it gone instead of writing to a
            # closed transport; the transport's own end wakes its reads.
            cycle.disconnected = True


def protocol_class(header_timeout: float) -> type[asyncio.Protocol]:
    """The uvicorn `http=` protocol with the given header deadline in seconds."""
    return type(
        "RecflowHttpProtocol",
        (_GuardedHttpToolsProtocol,),
        {"header_timeout": header_timeout},
    )
