"""A mail from the null sender (``From: <>``, as bounces are) is never answered: not the
sender, not staff, no case (RFC 5321 §4.5.5). Maildir intake, real BIND and SMTP."""

from __future__ import annotations

import email.policy
import uuid

import pytest
from test_e2e import request_mail
from test_request_routing import make_bot

from bot.app.jobs import run_pass
from bot.core.request import parse_message


def null_sender_request(domain: str) -> bytes:
    msg = email.message_from_bytes(request_mail(domain, f"<n-{uuid.uuid4().hex}@{domain}>"),
                                   policy=email.policy.compat32)
    msg.replace_header("From", "<>")
    return msg.as_bytes()


def test_from_null_sender_is_an_ignored_bounce() -> None:
    parsed = parse_message(null_sender_request("null.test"))
    assert parsed.no_reply_reason == "bounce: null sender (From: <>)"
    assert parsed.facilities == ()


@pytest.mark.servers
def test_a_null_sender_request_gets_no_mail_and_no_case(tmp_path, bind, smtp) -> None:
    domain = f"null-{uuid.uuid4().hex[:6]}.test"
    bind.add_zone(domain)
    smtp.clear()
    bot, inbox = make_bot(tmp_path, bind, smtp)
    inbox.deliver(null_sender_request(domain))
    result = run_pass(bot)
    assert result.messages == 1 and not result.errors
    assert bot.store.list_cases() == []
    assert smtp.messages == []  # nobody, staff included, is mailed about a bounce
    bot.close()
