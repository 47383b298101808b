"""The signalwire:// apprise service: its URL, its masking, and real sends to the emulator."""

from __future__ import annotations

import apprise
import pytest
from emulator import ACCOUNT, TOKEN, Emulator

from recflow import signalwire_sms

SPACE = "example.signalwire.com"


@pytest.fixture(autouse=True)
def registered() -> None:
    signalwire_sms.register()


def service(url: str) -> signalwire_sms.NotifySignalWire:
    notifier = apprise.Apprise()
    assert notifier.add(url), f"apprise refused {url}"
    found = notifier[0]
    assert isinstance(found, signalwire_sms.NotifySignalWire)
    return found


@pytest.mark.parametrize(
    ("url", "api_url", "source", "targets"),
    [
        pytest.param(
            f"signalwire://p1:tok@{SPACE}/+15551230000/+15557654321",
            f"https://{SPACE}/api/laml/2010-04-01",
            "+15551230000",
            ["+15557654321"],
            id="one-target",
        ),
        pytest.param(
            f"signalwire://p1:tok@{SPACE}/15551230000/15557654321/+15557654322",
            f"https://{SPACE}/api/laml/2010-04-01",
            "+15551230000",
            ["+15557654321", "+15557654322"],
            id="two-targets-no-plus",
        ),
        pytest.param(
            f"signalwire://p1:tok@{SPACE}?from=+15551230000&to=+15557654321,+15557654322",
            f"https://{SPACE}/api/laml/2010-04-01",
            "+15551230000",
            ["+15557654321", "+15557654322"],
            id="query-from-to",
        ),
        pytest.param(
            f"signalwire://p1:tok@{SPACE}/+15551230000/+15557654321?base=http://127.0.0.1:9000",
            "http://127.0.0.1:9000/api/laml/2010-04-01",
            "+15551230000",
            ["+15557654321"],
            id="base-override",
        ),
        pytest.param(
            "signalwire://p1:tok@localhost:8443/+15551230000/+15557654321",
            "https://localhost:8443/api/laml/2010-04-01",
            "+15551230000",
            ["+15557654321"],
            id="space-with-port",
        ),
    ],
)
def test_parses_urls(url: str, api_url: str, source: str, targets: list[str]) -> None:
    found = service(url)
    assert (found.api_url, found.source, found.targets) == (api_url, source, targets)
    assert found.project == "p1"


@pytest.mark.parametrize(
    "url",
    [
        pytest.param(f"signalwire://{SPACE}/+15551230000/+15557654321", id="no-credentials"),
        pytest.param(f"signalwire://p1:tok@{SPACE}/+15551230000", id="no-target"),
        pytest.param(f"signalwire://p1:tok@{SPACE}/+1555/+1555?base=ftp://x", id="bad-base"),
    ],
)
def test_refuses_incomplete_urls(url: str) -> None:
    assert not apprise.Apprise().add(url)


def test_printed_url_masks_the_token() -> None:
    found = service(f"signalwire://p1:SuperSecretToken@{SPACE}/+15551230000/+15557654321")
    assert "SuperSecretToken" not in found.url(privacy=True)
    assert "SuperSecretToken" in found.url()
    again = service(found.url())
    assert (again.token, again.targets) == ("SuperSecretToken", ["+15557654321"])


def test_register_twice_is_harmless() -> None:
    signalwire_sms.register()
    signalwire_sms.register()
    assert service(f"signalwire://p1:t@{SPACE}/+15551230000/+15557654321")


def test_sends_one_message_per_target(emulator: Emulator) -> None:
    notifier = apprise.Apprise()
    notifier.add(
        f"signalwire://{ACCOUNT}:{TOKEN}@{SPACE}/+15551230000/+15557654321/+15557654322"
        f"?base={emulator.base_url}"
    )
    assert notifier.notify(body="Recording stored", title="recflow")
    assert [(m["From"], m["To"]) for m in emulator.messages] == [
        ("+15551230000", "+15557654321"),
        ("+15551230000", "+15557654322"),
    ]
    assert all(m["Body"].endswith("Recording stored") for m in emulator.messages)
    assert all(r.headers["authorization"].startswith("Basic ") for r in emulator.requests)


def test_wrong_token_fails(emulator: Emulator) -> None:
    notifier = apprise.Apprise()
    notifier.add(
        f"signalwire://{ACCOUNT}:nope@{SPACE}/+15551230000/+15557654321?base={emulator.base_url}"
    )
    assert not notifier.notify(body="x")
    assert emulator.messages == []
