"""The notify action: real email to aiosmtpd, real SMS to the emulator, real failures."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from emulator import ACCOUNT, TOKEN, Emulator, audio, step_context
from mail_util import Mailbox, attachments
from port_util import free_port

from recflow.actions import notify, store
from recflow.errors import ActionError

SID = "11112222-1111-4222-8333-944455556666"


def test_email_with_the_stored_audio_attached(
    emulator: Emulator, mailbox: tuple[Mailbox, str], tmp_path: Path
) -> None:
    handler, url = mailbox
    emulator.add_recording(SID, seconds=1.0)
    stored = store.run({"to": f"file://{tmp_path}/r.wav"}, step_context(emulator, SID))
    emulator.requests.clear()
    ctx = step_context(emulator, SID, previous=(("store", stored),))
    params = {"to": [url], "title": "New recording", "body": "Stored.", "attach": True}
    assert notify.run(params, ctx) == {"sent": 1}
    (message,) = handler.messages
    assert message["Subject"] == "New recording"
    assert attachments(message) == {f"{SID}.wav": audio(1.0)}
    assert emulator.requests == [], "the stored copy is attached, not fetched again"


def test_email_attachment_fetched_when_nothing_stored(
    emulator: Emulator, mailbox: tuple[Mailbox, str]
) -> None:
    handler, url = mailbox
    emulator.add_recording(SID, seconds=1.0)
    params = {"to": url, "body": "Here it is", "attach": True}
    assert notify.run(params, step_context(emulator, SID)) == {"sent": 1}
    (message,) = handler.messages
    assert attachments(message) == {f"{SID}.wav": audio(1.0)}
    assert len(emulator.media_requests(SID)) == 1


def test_too_large_is_sent_without_audio_and_says_where(
    emulator: Emulator, mailbox: tuple[Mailbox, str]
) -> None:
    handler, url = mailbox
    stored = {"url": "s3://bucket/r.wav", "bytes": 30_000_000, "format": "wav"}
    ctx = step_context(emulator, SID, previous=(("store", stored),))
    params = {"to": url, "body": "Big one", "attach": True}
    assert notify.run(params, ctx) == {"sent": 1}
    (message,) = handler.messages
    assert attachments(message) == {}
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "too large to attach" in text
    assert "s3://bucket/r.wav" in text
    assert emulator.requests == []


def test_fetched_audio_over_the_limit_is_not_attached(
    emulator: Emulator, mailbox: tuple[Mailbox, str]
) -> None:
    handler, url = mailbox
    emulator.add_recording(SID, seconds=1.0)
    params = {"to": url, "body": "x", "attach": True, "attach_max_bytes": 1000}
    assert notify.run(params, step_context(emulator, SID)) == {"sent": 1}
    (message,) = handler.messages
    assert attachments(message) == {}
    body = message.get_body(("plain",))
    assert body is not None
    assert emulator.recording_url(SID) in body.get_content()


def test_smtp_refusal_fails_with_the_reason(
    emulator: Emulator, mailbox: tuple[Mailbox, str]
) -> None:
    handler, url = mailbox
    handler.refuse = "550 5.7.1 relaying denied"
    with pytest.raises(ActionError, match="notify failed: E-Mail") as info:
        notify.run({"to": url, "body": "x"}, step_context(emulator, SID))
    assert not info.value.permanent
    assert handler.messages == []


def test_unreachable_service_masks_credentials(emulator: Emulator) -> None:
    port = free_port()
    url = f"json://bob:hunter22@127.0.0.1:{port}/hook?token=tok-secret-1"
    ctx = step_context(emulator, SID, secrets=frozenset({"tok-secret-1"}))
    with pytest.raises(ActionError, match="notify failed") as info:
        notify.run({"to": url, "body": "x"}, ctx)
    assert "hunter22" not in str(info.value)
    assert "tok-secret-1" not in str(info.value)


def test_unusable_url_is_permanent(emulator: Emulator) -> None:
    with pytest.raises(ActionError, match="not a usable apprise URL") as info:
        notify.run({"to": "nosuchservice://x:hunter22@y", "body": "x"}, step_context(emulator, SID))
    assert info.value.permanent
    assert "hunter22" not in str(info.value)


def test_signalwire_sms_reaches_the_api(emulator: Emulator) -> None:
    url = (
        f"signalwire://{ACCOUNT}:{TOKEN}@example.signalwire.com/+15551230000/+15557654321"
        f"/+15557654322?base={emulator.base_url}"
    )
    params = {"to": url, "title": "Absent", "body": "Call CA1 recorded no audio"}
    assert notify.run(params, step_context(emulator, SID)) == {"sent": 1}
    assert [(m["From"], m["To"]) for m in emulator.messages] == [
        ("+15551230000", "+15557654321"),
        ("+15551230000", "+15557654322"),
    ]
    assert all("Call CA1 recorded no audio" in m["Body"] for m in emulator.messages)
    assert {m["path"] for m in emulator.messages} == {
        f"/api/laml/2010-04-01/Accounts/{ACCOUNT}/Messages.json"
    }


def test_signalwire_bad_token_fails_masked(emulator: Emulator) -> None:
    url = (
        f"signalwire://{ACCOUNT}:wrong-token-9@example.signalwire.com/+15551230000/+15557654321"
        f"?base={emulator.base_url}"
    )
    ctx = step_context(emulator, SID, secrets=frozenset({"wrong-token-9"}))
    with pytest.raises(ActionError, match="401") as info:
        notify.run({"to": url, "body": "x"}, ctx)
    assert "wrong-token-9" not in str(info.value)
    assert emulator.messages == []


def test_twilio_sms_request(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """apprise's twilio:// posts to api.twilio.com, fixed in its class: point that at 127.0.0.1."""
    from apprise.plugins.twilio import NotifyTwilio

    twilio_sid, twilio_token = "AC" + "0f" * 16, "authtoken77"
    emulator.token = twilio_token
    monkeypatch.setattr(
        NotifyTwilio,
        "notify_sms_url",
        emulator.base_url + "/2010-04-01/Accounts/{sid}/Messages.json",
    )
    url = f"twilio://{twilio_sid}:{twilio_token}@+15551230000/+15557654321"
    assert notify.run({"to": url, "body": "hello"}, step_context(emulator, SID)) == {"sent": 1}
    (message,) = emulator.messages
    assert message["account"] == twilio_sid
    assert (message["From"], message["To"], message["Body"]) == (
        "+15551230000",
        "+15557654321",
        "hello",
    )


@pytest.mark.parametrize(
    ("url", "timeout", "expected"),
    [
        pytest.param("json://h/x", 30, "json://h/x?cto=10&rto=30", id="plain"),
        pytest.param("json://h/x?a=1", 5, "json://h/x?a=1&cto=5&rto=5", id="query"),
        pytest.param("json://h/x?rto=2", 30, "json://h/x?rto=2&cto=10", id="own-rto"),
        pytest.param("json://h/x?cto=1&rto=2", 30, "json://h/x?cto=1&rto=2", id="own-both"),
    ],
)
def test_with_deadline(url: str, timeout: float, expected: str) -> None:
    assert notify.with_deadline(url, timeout) == expected


@pytest.mark.parametrize(
    ("params", "valid"),
    [
        pytest.param({"to": "mailto://x"}, True, id="one-url"),
        pytest.param(
            {
                "to": ["a://", "b://"],
                "title": "t",
                "body": "b",
                "format": "markdown",
                "attach": True,
                "attach_max_bytes": 5,
                "timeout": 3,
            },
            True,
            id="full",
        ),  # fmt: skip
        pytest.param({}, False, id="missing-to"),
        pytest.param({"to": []}, False, id="empty-list"),
        pytest.param({"to": "x", "format": "rtf"}, False, id="bad-format"),
        pytest.param({"to": "x", "attach": "yes"}, False, id="attach-not-bool"),
        pytest.param({"to": "x", "cc": "y"}, False, id="unknown-key"),
    ],
)
def test_schema(params: dict[str, Any], valid: bool) -> None:
    errors = list(jsonschema.Draft202012Validator(notify.SCHEMA).iter_errors(params))
    assert (not errors) is valid


def test_stored_object_in_subfolders_is_attached_under_a_plain_name(
    emulator: Emulator, mailbox: tuple[Mailbox, str], tmp_path: Path
) -> None:
    handler, url = mailbox
    sid = "tenant/2024/0a0b"  # what a `to:` template of subfolders leads to
    target = tmp_path / "tenant" / "2024" / "0a0b.wav"
    target.parent.mkdir(parents=True)
    target.write_bytes(audio(1.0))
    stored = {"url": f"file://{target}", "bytes": len(audio(1.0)), "format": "wav"}
    ctx = step_context(emulator, sid, previous=(("store", stored),))
    assert notify.run({"to": [url], "body": "x", "attach": True}, ctx) == {"sent": 1}
    (message,) = handler.messages
    assert attachments(message) == {"tenant_2024_0a0b.wav": audio(1.0)}
    assert emulator.requests == []


def test_attach_does_not_fetch_another_resource(
    emulator: Emulator, mailbox: tuple[Mailbox, str]
) -> None:
    handler, url = mailbox
    ctx = step_context(emulator, SID)
    call = f"{emulator.api_url}/Accounts/{ACCOUNT}/Calls/CA123"
    ctx = dataclasses.replace(ctx, event=dataclasses.replace(ctx.event, recording_url=call))
    with pytest.raises(ActionError, match="is not recording .* refused") as info:
        notify.run({"to": [url], "body": "x", "attach": True}, ctx)
    assert info.value.permanent
    assert emulator.requests == []
    assert handler.messages == []


@pytest.mark.parametrize(
    ("to", "problems"),
    [
        pytest.param("json://localhost", [], id="json"),
        pytest.param(["mailto://ops@example.com", "slack://a/b/c"], [], id="list"),
        pytest.param("signalwire://p:t@space/+15551230000/+15551230001", [], id="signalwire"),
        pytest.param("json://<params.host>/x", [], id="placeholder"),
        pytest.param("nonsense://foo", ["to: nonsense:// is not a service apprise knows"], id="x"),
        pytest.param(
            ["json://localhost", "mailto://u:hunter22@10.0.0.1"],
            ["to: apprise cannot read the URL 'mailto://u:***@10.0.0.1'; check its form"],
            id="malformed-masked",
        ),
    ],
)
def test_check_finds_urls_apprise_cannot_send_to(
    to: str | list[str], problems: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert notify.check({"to": to}) == problems
    captured = capsys.readouterr()
    assert "hunter22" not in captured.out + captured.err
