"""A mail nested thousands of MIME levels deep (a crafted "MIME bomb"): Python's email
parser would raise RecursionError on every pass (three tracebacks, then an escalation).
It is read by its headers alone, handled once with a clear outcome and one staff note;
the other mail of the same pass is handled as usual (Maildir intake, real BIND and SMTP)."""

from __future__ import annotations

import logging
import uuid

import pytest
from test_e2e import request_mail
from test_request_routing import make_bot

from bot.app.jobs import run_pass
from bot.core import request
from bot.core.request import parse_message


def nested_request(depth: int, domain: str) -> bytes:
    """A request-like mail of ``depth`` multipart/mixed parts, each inside the last."""
    head = (f"From: yamada@{domain}\r\nTo: support@489ban.net\r\nSubject: DKIM、DMARC設定希望\r\n"
            f"Message-ID: <bomb-{uuid.uuid4().hex}@{domain}>\r\nMIME-Version: 1.0\r\n")
    opening = "".join(f'--b{i - 1}\r\nContent-Type: multipart/mixed; boundary="b{i}"\r\n\r\n'
                      for i in range(1, depth))
    leaf = f"--b{depth - 1}\r\nContent-Type: text/plain\r\n\r\n[施設名]\r\nホテル\r\n--b{depth - 1}--\r\n"
    closing = "".join(f"--b{i}--\r\n" for i in range(depth - 2, -1, -1))
    return (head + 'Content-Type: multipart/mixed; boundary="b0"\r\n\r\n'
            + opening + leaf + closing).encode("utf-8")


def test_a_deeply_nested_mail_is_read_by_its_headers_only() -> None:
    parsed = parse_message(nested_request(2000, "bomb.test"))
    assert parsed.malformed and "nested MIME containers" in parsed.malformed
    assert parsed.is_request and parsed.from_addr == "yamada@bomb.test"
    assert parsed.facilities == () and parsed.body_text == ""
    # A mail of ordinary depth is read as before.
    normal = parse_message(nested_request(5, "ok.test"))
    assert normal.malformed is None and "ホテル" in normal.body_text


def test_the_parser_recursing_too_deep_is_caught_even_past_the_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(request, "MAX_MIME_CONTAINERS", 10**6)  # the scan lets it through
    parsed = parse_message(nested_request(3000, "bomb.test"))
    assert parsed.malformed == "MIME structure nested too deeply to read"
    assert parsed.subject == "DKIM、DMARC設定希望" and parsed.facilities == ()


@pytest.mark.servers
def test_a_mime_bomb_in_the_inbox_is_noted_to_staff_once_and_other_mail_is_answered(
        tmp_path, bind, smtp, caplog: pytest.LogCaptureFixture) -> None:
    domain = f"bomb-{uuid.uuid4().hex[:6]}.test"
    good = f"good-{uuid.uuid4().hex[:6]}.test"
    bind.add_zone(good)
    smtp.clear()
    bot, inbox = make_bot(tmp_path, bind, smtp)
    inbox.deliver(nested_request(2000, domain))
    inbox.deliver(request_mail(good, f"<g-{uuid.uuid4().hex}@{good}>"))
    with caplog.at_level(logging.INFO, logger="dkimbot"):
        result = run_pass(bot)
        run_pass(bot)
        run_pass(bot)
    assert result.messages == 2 and not result.errors
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert any("malformed: 2000 nested MIME containers" in r.getMessage() for r in caplog.records)
    # The other request of the same pass got its case and its reply.
    [case] = bot.store.list_cases()
    assert case.domain == good
    staff = [m for m in smtp.messages if m.rcpt_tos == ["staff@489ban.net"]]
    facility = [m for m in smtp.messages if m.rcpt_tos != ["staff@489ban.net"]]
    assert len(facility) == 1 and f"yamada@{good}" in facility[0].rcpt_tos
    # One note to staff, not three failures and an escalation; nothing to the sender.
    [note] = staff
    assert "malformed MIME" in str(note.message["Subject"])
    assert not [m for m in smtp.messages if f"yamada@{domain}" in m.rcpt_tos]
    bot.close()
