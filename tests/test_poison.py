"""A message the bot fails on is retried, never lost; after 3 failures staff get it.

The failure is real (a broken template staff might save), the mailbox a real Dovecot.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest

from bot.adapters.mailout import shipped_templates_dir
from bot.config import load_config
from bot.app.jobs import Bot, run_pass
from configkit import imap, service, smtp_out, write_toml
from conftest import SUPPORT_ADDRESS, SUPPORT_PASSWORD
from test_e2e import request_mail

pytestmark = pytest.mark.servers


def make_bot(tmp_path: Path, dovecot, smtp, templates: Path) -> Bot:
    cfg_file = write_toml(tmp_path / "c.toml", {
        "service": service(),
        "intake": imap(dovecot, password_env=None, timeout=None, folder=None, password=SUPPORT_PASSWORD),
        "outbound": smtp_out(smtp, timeout=None),
        "schedule": {"check_interval_seconds": 3600},
        "state": {"dir": str(tmp_path / "state"), "templates_dir": str(templates)},
    })
    return Bot.open(load_config(cfg_file))


def test_a_failing_message_is_retried_and_then_handed_to_staff(tmp_path, dovecot, smtp):
    templates = tmp_path / "templates"
    shutil.copytree(shipped_templates_dir(), templates)
    good = (templates / "request_reply.txt").read_text(encoding="utf-8")
    (templates / "request_reply.txt").write_text(good.replace("{{ subject_text }}", "{{ no_such_var }}"),
                                                  encoding="utf-8")
    dovecot.reset(SUPPORT_ADDRESS)
    smtp.clear()
    domain = f"poison-{uuid.uuid4().hex[:6]}.test"
    msgid = f"<{uuid.uuid4().hex}@{domain}>"
    dovecot.append(SUPPORT_ADDRESS, request_mail(domain, msgid))

    bot = make_bot(tmp_path, dovecot, smtp, templates)
    run_pass(bot)
    assert smtp.messages == [] and bot.store.list_cases() == []  # rolled back, not lost
    assert not bot.store.is_handled("x", msgid)

    # Staff fix the template: the next pass sees the message again and answers it once.
    (templates / "request_reply.txt").write_text(good, encoding="utf-8")
    run_pass(bot)
    assert len(smtp.messages) == 1
    assert smtp.messages[0].message["In-Reply-To"].strip() == msgid
    run_pass(bot)
    assert len(smtp.messages) == 1
    bot.close()


def test_a_message_failing_three_times_goes_to_staff_once(tmp_path, dovecot, smtp):
    templates = tmp_path / "templates"
    shutil.copytree(shipped_templates_dir(), templates)
    text = (templates / "request_reply.txt").read_text(encoding="utf-8")
    (templates / "request_reply.txt").write_text(text.replace("{{ subject_text }}", "{{ no_such_var }}"),
                                                  encoding="utf-8")
    dovecot.reset(SUPPORT_ADDRESS)
    smtp.clear()
    domain = f"poison-{uuid.uuid4().hex[:6]}.test"
    dovecot.append(SUPPORT_ADDRESS, request_mail(domain, f"<{uuid.uuid4().hex}@{domain}>"))
    bot = make_bot(tmp_path, dovecot, smtp, templates)
    for _ in range(5):
        run_pass(bot)
    assert len(smtp.messages) == 1
    staff = smtp.messages[0]
    assert staff.rcpt_tos == ["staff@489ban.net"]
    assert "ESCALATION" in staff.message["Subject"]
    assert "could not be processed" in staff.message["Subject"]
    bot.close()
