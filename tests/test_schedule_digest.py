"""The schedule, reminders, escalation and the daily digest, driven by a moved clock.

In-process passes (``jobs.run_pass`` on a ``Bot`` whose clock the test moves: no
sleeping) against the real BIND and SMTP sink; the request arrives through Dovecot.
"""

from __future__ import annotations

import email.policy
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from workerkit import (
    IMAP_PASSWORD,
    STAFF,
    SUPPORT_ADDRESS,
    body_of,
    publish_dkim,
    received_for,
    request_mail,
    setup_domain,
    setup_saas_zone,
    write_config,
)

from bot.core import cases as sm
from bot.config import ConfigError, load_config
from bot.flows.digest import META_KEY
from bot.app.jobs import run_pass
from bot.flows.runtime import Bot

pytestmark = pytest.mark.servers


class Clock:
    def __init__(self) -> None:
        self.start = datetime.now(UTC).replace(hour=1, minute=0, second=0, microsecond=0)
        self.now = self.start

    def __call__(self) -> datetime:
        return self.now

    def at(self, **delta: float) -> datetime:
        self.now = self.start + timedelta(**delta)
        return self.now


def _bot(tmp_path: Path, dovecot, bind, smtp, monkeypatch, name: str, **schedule) -> tuple[Bot, Clock, str, str]:
    user = f"{name}@489ban.net"
    dovecot.add_user(user, IMAP_PASSWORD)
    dovecot.reset(user)
    domain = f"{name}.test"
    setup_domain(bind, domain)
    setup_saas_zone(bind, [domain])
    cfg = write_config(tmp_path, dovecot, bind, smtp, imap_user=user, **schedule)
    monkeypatch.setenv("TEST_IMAP_PASSWORD", IMAP_PASSWORD)
    clock = Clock()
    bot = Bot.open(load_config(cfg), clock=clock)
    dovecot.append(user, request_mail(domain, f"<req.{name}.{clock.start.timestamp()}@{domain}>"))
    return bot, clock, user, domain


def _staff_only(smtp, start: int) -> list:
    return [m for m in smtp.messages[start:] if m.rcpt_tos == [STAFF]]


def _escalations(smtp, start: int) -> list:
    """Staff mails other than the daily digest (which the moved clock also triggers)."""
    return [m for m in _staff_only(smtp, start) if "daily digest" not in str(m.message["Subject"])]


# ----------------------------------------------------------------------------- pure steps


def test_checks_are_frequent_first_then_slower_built_in():
    base = 300
    assert sm.next_check_delay(timedelta(minutes=10), base) == timedelta(seconds=300)
    assert sm.next_check_delay(timedelta(hours=3), base) == timedelta(seconds=1200)
    assert sm.next_check_delay(timedelta(days=2), base) == timedelta(seconds=3600)
    assert sm.next_check_delay(timedelta(days=2), 0) == timedelta(0)


def test_check_steps_are_configurable_and_validated(tmp_path):
    steps = [[24, 7200], [1, 600]]  # unordered on purpose
    assert sm.next_check_delay(timedelta(minutes=30), 60, steps) == timedelta(seconds=60)
    assert sm.next_check_delay(timedelta(hours=5), 60, steps) == timedelta(seconds=600)
    assert sm.next_check_delay(timedelta(hours=30), 60, steps) == timedelta(seconds=7200)
    bad = tmp_path / "bad.toml"
    bad.write_text("[schedule]\ncheck_steps = [[2]]\n")
    with pytest.raises(ConfigError, match="check_steps"):
        load_config(bad)


# ----------------------------------------------------------------------------- on the servers


def test_checks_follow_the_configured_steps(tmp_path, dovecot, bind, smtp, monkeypatch):
    bot, clock, _, domain = _bot(tmp_path, dovecot, bind, smtp, monkeypatch, "sched-steps",
                                 check_interval_seconds=300, check_steps=[[2, 1200], [24, 3600]])
    try:
        run_pass(bot)
        [case] = bot.store.list_cases()
        assert case.state == "awaiting_dkim" and case.next_check_at == clock.start + timedelta(seconds=300)
        clock.at(seconds=200)
        assert run_pass(bot).checks == 0  # not due yet
        for at, expected in ((dict(seconds=301), 300), (dict(hours=3), 1200), (dict(hours=30), 3600)):
            now = clock.at(**at)
            assert run_pass(bot).checks == 1
            assert bot.store.get_case(case.id).next_check_at == now + timedelta(seconds=expected)
    finally:
        bot.close()


def test_a_facility_reply_makes_its_case_due_at_once(tmp_path, dovecot, bind, smtp, monkeypatch):
    bot, clock, user, domain = _bot(tmp_path, dovecot, bind, smtp, monkeypatch, "sched-reply",
                                    check_interval_seconds=300)
    try:
        run_pass(bot)
        clock.at(hours=30)
        run_pass(bot)  # checked: nothing there; next check in an hour
        [case] = bot.store.list_cases()
        assert case.next_check_at == clock.now + timedelta(hours=1)
        publish_dkim(bind, smtp, domain)
        [reply_to] = received_for(smtp, domain)
        reply = EmailMessage(policy=email.policy.SMTP)
        reply["From"] = f"yamada@{domain}"
        reply["To"] = SUPPORT_ADDRESS
        reply["Subject"] = "Re: " + reply_to.message["Subject"]
        reply["Message-ID"] = f"<reply.{clock.now.timestamp()}@{domain}>"
        reply["In-Reply-To"] = reply_to.message["Message-ID"]
        reply.set_content("登録しました。ご確認をお願いします。\n", charset="utf-8")
        dovecot.append(user, reply.as_bytes())
        clock.at(hours=30, minutes=1)  # long before the scheduled check
        run_pass(bot)
        assert bot.store.get_case(case.id).state == "awaiting_dmarc"
        assert "DKIM署名を開始しました" in received_for(smtp, domain)[-1].message["Subject"]
    finally:
        bot.close()


def test_reminders_then_escalation_then_resume_by_itself(tmp_path, dovecot, bind, smtp, monkeypatch):
    bot, clock, _, domain = _bot(tmp_path, dovecot, bind, smtp, monkeypatch, "sched-remind",
                                 check_interval_seconds=300, reminder_after_hours=72, max_reminders=2)
    start = len(smtp.messages)
    try:
        run_pass(bot)
        [case] = bot.store.list_cases()

        def facility_kinds() -> list[str]:
            return [m["kind"] for m in bot.store.mails_for_case(case.id) if not m["kind"].startswith("staff_")]

        clock.at(hours=71)
        run_pass(bot)
        assert facility_kinds() == ["request_reply"]
        clock.at(hours=72, minutes=1)
        run_pass(bot)
        clock.at(hours=100)
        run_pass(bot)  # the same period: no second reminder
        assert facility_kinds() == ["request_reply", "reminder"]
        assert "リマインド" in body_of(received_for(smtp, domain)[-1].raw) or received_for(smtp, domain)[-1]
        clock.at(hours=144, minutes=1)
        run_pass(bot)
        assert facility_kinds() == ["request_reply", "reminder", "reminder"]
        assert bot.store.get_case(case.id).state == "awaiting_dkim"
        clock.at(hours=216, minutes=1)
        run_pass(bot)  # max_reminders used up: escalated, staff told what the bot saw
        escalated = bot.store.get_case(case.id)
        assert escalated.state == "escalated" and escalated.resume_state == "awaiting_dkim"
        assert facility_kinds() == ["request_reply", "reminder", "reminder"]
        [staff] = _escalations(smtp, start)
        text = body_of(staff.raw)
        assert "ESCALATION: no progress after 2 reminders" in staff.message["Subject"]
        assert f"found nothing published at {case.selector}._domainkey.{domain}" in text
        assert "What to decide:" in text and "dkimbot resend" in text
        # Escalated cases keep being checked; the record appears and the case resumes.
        clock.at(hours=240)
        run_pass(bot)
        assert bot.store.get_case(case.id).state == "escalated"
        publish_dkim(bind, smtp, domain)
        clock.at(hours=243)
        run_pass(bot)
        resumed = bot.store.get_case(case.id)
        assert resumed.state == "awaiting_dmarc" and resumed.resume_state is None
        assert facility_kinds() == ["request_reply", "reminder", "reminder", "dkim_active"]
        assert len(_escalations(smtp, start)) == 1
    finally:
        bot.close()


def test_the_daily_digest_goes_once_a_day_and_tells_what_staff_must_see(
        tmp_path, dovecot, bind, smtp, monkeypatch):
    bot, clock, _, domain = _bot(tmp_path, dovecot, bind, smtp, monkeypatch, "sched-digest",
                                 digest_hour=6, stuck_after_days=7)
    start = len(smtp.messages)
    try:
        run_pass(bot)  # 01:00 on the day the bot starts: before digest_hour
        assert [m for m in _staff_only(smtp, start) if "digest" in m.message["Subject"]] == []
        clock.at(hours=6)
        run_pass(bot)  # a new installation is summarised only once it has run a full day
        assert [m for m in _staff_only(smtp, start) if "digest" in m.message["Subject"]] == []
        clock.at(days=1, hours=6)
        run_pass(bot)
        clock.at(days=1, hours=20)
        run_pass(bot)  # same day: not again
        # A case simply waiting is nothing for a human: that day's digest is not sent,
        # and the day counts as done.
        digests = [m for m in _staff_only(smtp, start) if "daily digest" in m.message["Subject"]]
        assert digests == []
        assert bot.store.get_meta(META_KEY) == (clock.start + timedelta(days=1)).date().isoformat()
        # Eight days later the case is stuck: a digest.
        [case] = bot.store.list_cases()
        clock.at(days=8, hours=7)
        run_pass(bot)
        digests = [m for m in _staff_only(smtp, start) if "daily digest" in m.message["Subject"]]
        assert len(digests) == 1
        text = body_of(digests[0].raw)
        assert "awaiting_dkim" in text and "Stuck" in text
        digests = [None, *digests]  # numbered as before: [1] the stuck day, [2] the escalation
        stuck = body_of(digests[1].raw).split("Stuck")[1].split("Delivery errors")[0]
        assert f"{case.ref} ホテルさくら ({domain}) awaiting_dkim for 8 d" in stuck
        # The next day a facility mail is refused (5xx): the case escalates, the digest says why.
        from bot.app.jobs import staff_resend

        staff_resend(bot, case)
        smtp.fail_next(1, 550, "5.1.1 mailbox unknown")
        clock.at(days=9, hours=7)
        run_pass(bot)
        digests = [m for m in _staff_only(smtp, start) if "daily digest" in m.message["Subject"]]
        assert len(digests) == 2
        digests = [None, *digests]
        text = body_of(digests[2].raw)
        assert "5.1.1 mailbox unknown" in text.split("Delivery errors")[1]
        assert "1 escalated" in digests[2].message["Subject"]
        escalated = text.split("Escalated")[1].split("Stuck")[0]
        assert case.ref in escalated and "mail to the facility was rejected" in escalated
    finally:
        bot.close()


def test_dkimbot_digest_prints_or_sends_now(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[outbound]\nkind = "directory"\n[state]\ndir = "{tmp_path}/state"\n')
    run = lambda *a: subprocess.run([sys.executable, "-m", "bot", "--config", str(cfg), *a],
                                    capture_output=True, timeout=60)
    r = run("digest", "--print")
    assert r.returncode == 0 and r.stdout.startswith(b"Subject: dkimbot daily digest")
    assert not (tmp_path / "state" / "outbox").exists() or not list((tmp_path / "state" / "outbox").iterdir())
    r = run("digest")
    assert r.returncode == 0, r.stderr.decode()
    [sent] = list((tmp_path / "state" / "outbox").glob("*.eml"))
    assert b"daily digest" in sent.read_bytes()
