"""What DMARC reports make the bot say, with a moved clock on the real servers: the
facility's report mail ``facility_report_days`` after completion, the p=quarantine advice
once every source has passed for 30 days (with the exact record, read from BIND), the
same-day staff alert when our own mail fails, and the digest's section.
"""

from __future__ import annotations

import email.policy
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from typing import Any

import dmarckit
import pytest
from keyflow import Clock, open_bot
from test_dmarc_dovecot import completed_case, reports_config

from bot.app import jobs
from bot.flows.digest import build_digest, render_digest

pytestmark = pytest.mark.servers

OURS = "203.0.113.10"
OWN_SERVER = "198.51.100.99"
T0 = datetime(2026, 9, 1, tzinfo=UTC)  # the case completes at 00:00 on day 0


def body(raw: bytes) -> str:
    msg = message_from_bytes(raw, policy=email.policy.default)
    return str(msg.get_body(preferencelist=("plain",)).get_content()).replace("\r\n", "\n")  # type: ignore[union-attr]


def subject(raw: bytes) -> str:
    return str(message_from_bytes(raw, policy=email.policy.default)["Subject"])


def deliver_days(dovecot: Any, rua: str, domain: str, days: range, rows_for: Any) -> None:
    """Google's reports for those days, each DKIM-signed by google.com (key in BIND)."""
    for k in days:
        begin = T0 + timedelta(days=k)
        xml = dmarckit.google_style_xml(domain, begin, f"{domain}-{k}", rows_for(k))
        dovecot.append(rua, dmarckit.signed(dmarckit.google_mail(xml, domain, begin), "google.com"))


def facility_mails(smtp: Any, domain: str) -> list[Any]:
    return [m for m in smtp.messages if f"admin@{domain}" in m.rcpt_tos]


def test_facility_report_then_quarantine_advice_with_a_moved_clock(tmp_path, dovecot, bind, smtp):
    smtp.clear()
    domain = "ryokan-hinoki.test"
    bind.add_zone(domain)
    existing = "v=DMARC1; p=none; rua=mailto:dmarc@k5-saas.test; adkim=r"
    bind.update(domain, "_dmarc", "TXT", [existing])
    cfg, rua = reports_config(tmp_path, dovecot, bind, smtp, "hinoki", extra={"quarantine_min_messages": 100})
    dmarckit.publish_key(bind, "google.com")

    # The facility's own server fails DMARC on days 0-5 (before it is fixed); ours always passes.
    def rows(k: int) -> list[tuple[str, int, str, str]]:
        return [(OURS, 5, "pass", "fail")] + ([(OWN_SERVER, 2, "fail", "fail")] if k <= 5 else [])

    clock = Clock(T0 + timedelta(days=13, hours=6))
    bot = open_bot(cfg, clock)
    try:
        case = completed_case(bot, domain, T0)
        deliver_days(dovecot, rua, domain, range(13), rows)
        jobs.run_pass(bot)
        assert facility_mails(smtp, domain) == []  # day 13: not yet

        clock.now = T0 + timedelta(days=14, hours=6)
        deliver_days(dovecot, rua, domain, range(13, 14), rows)
        jobs.run_pass(bot)
        [first] = facility_mails(smtp, domain)
        text = body(first.raw)
        # 14 days × 5 of ours + 6 days × 2 of the facility's own server = 82 messages, 70 passed.
        assert "受信側が確認したメール：82通" in text
        assert "DMARCの認証に合格したメール：70通（85.4%）" in text
        assert "予約番から送られたメール：70通、合格は70通（100%）" in text
        assert f"・{OWN_SERVER}：12通が不合格（報告元：google.com）" in text
        assert "DKIM署名を有効にしてください" in text and "SPFレコードに追加してください" in text
        assert "p=quarantine" in text and "v=DMARC1; p=quarantine" not in text  # explained, not advised
        assert "メール認証の結果のご報告" in subject(first.raw)
        assert "staff@489ban.net" in first.rcpt_tos  # staff in Cc of everything

        # Day 20: the failures are inside the 30-day window and the reports cover 21 days: no advice.
        clock.now = T0 + timedelta(days=20, hours=6)
        deliver_days(dovecot, rua, domain, range(14, 20), rows)
        jobs.run_pass(bot)
        assert len(facility_mails(smtp, domain)) == 1

        # Day 37: the last 30 days (days 7-36) all passed, 150 messages >= 100: advised once.
        clock.now = T0 + timedelta(days=37, hours=6)
        deliver_days(dovecot, rua, domain, range(20, 37), rows)
        jobs.run_pass(bot)
        mails = facility_mails(smtp, domain)
        assert len(mails) == 2
        advice = body(mails[1].raw)
        assert "DMARCの設定を強化できる状態になりました" in subject(mails[1].raw)
        # Their own record with only p changed (tags in RFC order), copy-pasteable on one line.
        assert "\nv=DMARC1; p=quarantine; adkim=r; rua=mailto:dmarc@k5-saas.test\n" in advice
        assert "ホスト名：_dmarc\n（ドメイン名まで入力する画面では：_dmarc.ryokan-hinoki.test）" in advice
        assert "全ての送信元のメール（150通）がDMARCの認証に合格しました" in advice
        assert "弊社で変更することはございません" in advice
        # Advice only: the bot did not touch the record.
        assert [b"".join(r) for r in bind.txt(f"_dmarc.{domain}")] == [existing.encode()]
        kinds = [e["kind"] for e in bot.store.events(case.id)]
        assert kinds.count("dmarc_report_sent") == 2 and kinds.count("dmarc_quarantine_advised") == 1

        assert [r["domain"] for r in build_digest(bot)["dmarc"]["ready"]] == [domain]
        clock.now += timedelta(days=3)
        jobs.run_pass(bot)
        assert len(facility_mails(smtp, domain)) == 2  # never advised twice
    finally:
        bot.close()


def test_our_mail_failing_dmarc_alerts_staff_the_same_day_once(tmp_path, dovecot, bind, smtp):
    smtp.clear()
    domain = "ryokan-sugi.test"
    cfg, rua = reports_config(tmp_path, dovecot, bind, smtp, "sugi")
    for reporter in ("google.com", "microsoft.com"):
        dmarckit.publish_key(bind, reporter)
    clock = Clock(datetime(2026, 11, 23, 10, 0, tzinfo=UTC))
    bot = open_bot(cfg, clock)
    try:
        case = completed_case(bot, domain, clock.now - timedelta(days=3))
        silent = completed_case(bot, "ryokan-matsu.test", clock.now - timedelta(days=20))
        day = datetime(2026, 11, 22, tzinfo=UTC)
        xml = dmarckit.google_style_xml(domain, day, "s-1", [(OURS, 7, "fail", "fail"), (OURS, 3, "pass", "fail")])
        dovecot.append(rua, dmarckit.signed(dmarckit.google_mail(xml, domain, day), "google.com"))
        jobs.run_pass(bot)
        [alert] = [m for m in smtp.messages if "ESCALATION" in subject(m.raw)]
        assert alert.rcpt_tos == ["staff@489ban.net"]
        assert f"{domain} fails DMARC at receivers" in subject(alert.raw)
        assert f"- google.com: 7 of 10 messages from {OURS} failed DMARC" in body(alert.raw)
        assert case.ref in subject(alert.raw)

        # Another failing report the same day: no second alert; the digest lists the failure.
        xml2 = dmarckit.google_style_xml(domain, day, "s-2", [(OURS, 4, "fail", "fail")],
                                         org="Outlook.com", email="dmarcreport@microsoft.com")
        dovecot.append(rua, dmarckit.signed(dmarckit.report_mail(xml2, "dmarcreport@microsoft.com", "gzip", "o.xml.gz",
                                                                 domain=domain), "microsoft.com"))
        clock.now += timedelta(hours=2)
        jobs.run_pass(bot)
        assert len([m for m in smtp.messages if "ESCALATION" in subject(m.raw)]) == 1
        _subject, digest = render_digest(bot)
        assert f"{domain}: google.com 7 of 10 messages failed" in digest
        assert f"{domain}: Outlook.com 4 of 4 messages failed" in digest
        assert "stored 2" in digest
        # A facility completed 20 days ago whose receivers never sent a report: staff should look.
        assert f"{silent.ref} ryokan-matsu.test: completed 20 d ago" in digest
        assert f"{case.ref} {domain}: completed" not in digest
    finally:
        bot.close()
