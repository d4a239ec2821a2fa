"""What a stranger's mail can put into a case through its headers and names, through the
real intake (Maildir), real BIND and the SMTP sink:

* bidi overrides and zero-width characters in a facility name never reach the case, the
  reply's subject or body, or staff (they make one name read as another).
"""

from __future__ import annotations

import email.policy
import unicodedata
import uuid
from email.message import EmailMessage
from typing import Any

import pytest
from test_request_routing import make_bot

from bot.app.jobs import run_pass

pytestmark = pytest.mark.servers

SUPPORT = "support@489ban.net"


def request(domain: str, names: list[tuple[str, str]], *, sender: str | None = None,
            reply_to: str | None = None) -> bytes:
    """A request for (facility name, admin address) pairs, From ``sender``."""
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = sender if sender is not None else f"yamada@{domain}"
    if reply_to is not None:
        msg["Reply-To"] = reply_to
    msg["To"] = SUPPORT
    msg["Subject"] = "DKIM、DMARC設定希望"
    msg["Message-ID"] = f"<s-{uuid.uuid4().hex}@{domain}>"
    msg.set_content("".join(
        f"[施設名]\n{name}\n[担当者様のお名前]\n山田 太郎\n[担当者様のメールアドレス]\nyamada@{domain}\n"
        f"[担当者様の電話番号]\n03-1234-5678\n[予約番で使用する管理用メールアドレス]\n{admin}\n\n"
        for name, admin in names), charset="utf-8")
    return msg.as_bytes()


def text_of(raw: bytes) -> str:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    body = msg.get_body(preferencelist=("plain",))
    return f"{msg['Subject']}\n{body.get_content() if body is not None else ''}"


def invisible(text: str) -> list[str]:
    return [f"U+{ord(c):04X}" for c in text if unicodedata.category(c) in ("Cf", "Cc") and c not in "\r\n\t"]


def test_bidi_and_zero_width_characters_in_names_reach_no_case_and_no_mail(
        tmp_path: Any, bind: Any, smtp: Any) -> None:
    domain = f"bidi-{uuid.uuid4().hex[:6]}.test"
    bind.add_zone(domain)
    smtp.clear()
    bot, inbox = make_bot(tmp_path, bind, smtp)
    # The second facility is refused (a free-mail admin address): its name is in the
    # reply's subject, which staff get in Cc.
    inbox.deliver(request(domain, [("ホテル\u202eるくさ\u202c\u200b本館", f"info@{domain}"),
                                   ("旅館\u2066みどり\u2069\ufeff\u00ad", "midori@gmail.com")]))
    result = run_pass(bot)
    assert result.messages == 1 and not result.errors
    assert sorted(c.facility or "" for c in bot.store.list_cases()) == ["ホテルるくさ本館", "旅館みどり"]
    [reply] = smtp.messages
    text = text_of(reply.raw)
    assert "旅館みどり" in str(email.message_from_bytes(reply.raw, policy=email.policy.default)["Subject"])
    assert "ホテルるくさ本館" in text
    assert invisible(text) == []
    bot.close()
