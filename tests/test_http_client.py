"""The per-thread HTTP client: reused, and neutral between the steps that share it."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest
from emulator import serve_app
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from recflow import http_client


async def _echo(request: Request) -> Response:
    """Answers with what the request carried, and tries to set a cookie."""
    answer = JSONResponse(
        {
            "cookie": request.headers.get("cookie"),
            "authorization": request.headers.get("authorization"),
        }
    )
    answer.set_cookie("session", "account-one")
    return answer


async def _moved(request: Request) -> Response:
    return RedirectResponse("/echo", status_code=302)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    app = Starlette(routes=[Route("/echo", _echo), Route("/moved", _moved)])
    with serve_app(app) as url:
        yield url


def test_one_client_per_thread_one_ssl_context() -> None:
    mine = http_client.client()
    seen: list[httpx.Client] = []
    thread = threading.Thread(target=lambda: seen.append(http_client.client()))
    thread.start()
    thread.join()
    assert http_client.client() is mine
    assert seen[0] is not mine
    assert http_client.ssl_context() is http_client.ssl_context()


def test_cookies_and_auth_do_not_carry_to_the_next_request(server: str) -> None:
    client = http_client.client()
    first = client.get(server + "/echo", auth=("AC1", "token-one"))
    assert "set-cookie" in first.headers
    assert first.json()["authorization"].startswith("Basic ")
    second = client.get(server + "/echo").json()
    assert second == {"cookie": None, "authorization": None}


def test_redirects_are_left_to_the_caller(server: str) -> None:
    answer = http_client.client().get(server + "/moved")
    assert answer.status_code == 302
    assert answer.headers["location"] == "/echo"
