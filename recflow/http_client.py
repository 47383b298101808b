"""The HTTP client that actions use to reach providers and webhooks: one per thread.

Building an `httpx.Client` builds an SSL context, which loads the system's
CA certificates: a few tens of milliseconds with the GIL held, even for a
plain-HTTP URL. Done once per step, it was most of a worker's time. So the
SSL context is built once per process and shared (an `ssl.SSLContext` may
be used by many threads), and each thread keeps one client, whose pool
keeps connections to a provider open between steps.

Each thread has its own client so that no lock is needed around a pool
and a streamed media body in one worker never waits for another's. The
client is neutral, so that sharing it between steps is safe:

- no default auth, headers or base URL: each call passes its own auth
  and timeout;
- redirects are not followed: callers that follow them check each hop;
- cookies are neither stored nor sent, so nothing one account's answer
  sets reaches a request made for another.

A client made before a `fork` is not reused in the child, whose pool
would share the parent's sockets.
"""

from __future__ import annotations

import http.cookiejar
import os
import ssl
import threading

import httpx

# Idle connections close before the usual servers' keep-alive (5 s for
# uvicorn, nginx's 75 s), so a request rarely meets one the server is closing.
LIMITS = httpx.Limits(max_connections=8, max_keepalive_connections=4, keepalive_expiry=2.0)
DEFAULT_TIMEOUT = httpx.Timeout(15.0, connect=10.0)

# A policy that accepts no domain: answers' Set-Cookie headers are dropped.
_NO_COOKIES = http.cookiejar.DefaultCookiePolicy(allowed_domains=[])

_local = threading.local()
_ssl_lock = threading.Lock()
_ssl_context: ssl.SSLContext | None = None


def ssl_context() -> ssl.SSLContext:
    """The process's SSL context for outgoing HTTPS, built on first use.

    httpx's own defaults, read once: certifi's CA bundle, or
    `SSL_CERT_FILE` / `SSL_CERT_DIR` when set.
    """
    global _ssl_context
    with _ssl_lock:
        if _ssl_context is None:
            _ssl_context = httpx.create_ssl_context()
        return _ssl_context


def client() -> httpx.Client:
    """This thread's client (see the module docstring for what it never does)."""
    pid = os.getpid()
    current: httpx.Client | None = getattr(_local, "client", None)
    if current is None or getattr(_local, "pid", None) != pid:
        current = httpx.Client(
            verify=ssl_context(),
            follow_redirects=False,
            cookies=http.cookiejar.CookieJar(_NO_COOKIES),
            limits=LIMITS,
            timeout=DEFAULT_TIMEOUT,
        )
        _local.client, _local.pid = current, pid
    return current
