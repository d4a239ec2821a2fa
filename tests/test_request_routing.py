"""Who a request's reply goes to, and a request too large to act on (real servers)."""

from __future__ import annotations

import email.policy
import uuid
from email.message import EmailMessage

import pytest

from bot.config import load_config
from configkit import dns, service, smtp_out, write_toml
from bot.adapters.intake import MaildirMailbox
from bot.app.jobs import Bot, run_pass
from test_e2e import request_mail

pytestmark = pytest.mark.servers


def make_bot(tmp_path, bind, smtp, **intake):
    cfg_file = write_toml(tmp_path / "c.toml", {
        "service": service(),
        "intake": {"kind": "maildir", **intake},
        "outbound": smtp_out(smtp),
        "dns": dns(bind, timeout=1.0),
        "keys": {"bits": 1024},
        "schedule": {"check_interval_seconds": 3600},
        "state": {"dir": str(tmp_path / "state")},
    })
    cfg = load_config(cfg_file)
    return Bot.open(cfg), MaildirMailbox(cfg.state_path(cfg.intake.maildir))


def test_a_web_form_request_is_answered_at_its_reply_to(tmp_path, bind, smtp):
    domain = f"form-{uuid.uuid4().hex[:6]}.test"
    bind.add_zone(domain)
    smtp.clear()
    bot, inbox = make_bot(tmp_path, bind, smtp)
    raw = request_mail(domain, f"<f-{uuid.uuid4().hex}@{domain}>")
    msg = email.message_from_bytes(raw, policy=email.policy.SMTP)
    msg.replace_header("From", "Form <noreply@forms.example.org>")
    msg["Reply-To"] = f"山田 太郎 <yamada@{domain}>"
    inbox.deliver(msg.as_bytes())
    run_pass(bot)
    [reply] = smtp.messages
    assert [a.addr_spec for a in reply.message["To"].addresses] == [f"yamada@{domain}"]
    assert "noreply@forms.example.org" not in reply.rcpt_tos
    assert bot.store.list_cases()[0].requester == f"yamada@{domain}"
    bot.close()


def test_a_mail_naming_too_many_facilities_goes_to_staff_without_keys(tmp_path, bind, smtp):
    domain = f"bulk-{uuid.uuid4().hex[:6]}.test"
    smtp.clear()
    bot, inbox = make_bot(tmp_path, bind, smtp, max_facilities_per_mail=3)
    blocks = "".join(
        f"[施設名]\nホテル{i}\n[担当者様のお名前]\n山田 太郎\n[担当者様のメールアドレス]\nyamada@{domain}\n"
        f"[担当者様の電話番号]\n03-1234-5678\n[予約番で使用する管理用メールアドレス]\ninfo{i}@{domain}\n\n"
        for i in range(4)
    )
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = f"yamada@{domain}"
    msg["To"] = "support@489ban.net"
    msg["Subject"] = "DKIM、DMARC設定希望"
    msg["Message-ID"] = f"<bulk-{uuid.uuid4().hex}@{domain}>"
    msg.set_content(blocks, charset="utf-8")
    inbox.deliver(msg.as_bytes())
    run_pass(bot)
    assert bot.store.list_cases() == []
    assert not (bot.cfg.state_dir / "keys" / domain).exists()
    [staff] = smtp.messages
    assert staff.rcpt_tos == ["staff@489ban.net"]
    assert "4 facilities" in staff.message["Subject"]
    run_pass(bot)
    assert len(smtp.messages) == 1  # handled once, not escalated again
    bot.close()
