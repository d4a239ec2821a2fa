"""Only authenticated DMARC reports reach a facility, the p=quarantine advice or staff
alerts (review, 2026-12-01: the rua address is public, and reports were trusted as they
came). On the real servers: report mails DKIM-signed with dkimpy, the keys published in
BIND by RFC 2136, the mails in Dovecot, a pass with a moved clock, mail to the SMTP sink.

A report counts when its mail's DKIM signature verifies (against the bot's configured DNS)
for the From domain's organisation and the report's name belongs to that organisation.
Forged ones (unsigned, signed by the attacker's own domain, a broken signature) are
stored and shown to staff as unverified: never in a facility mail, never advice, never
an escalation.
"""

from __future__ import annotations

import email.policy
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from typing import Any

import dmarckit
import pytest
from keyflow import Clock, open_bot
from test_dmarc_dovecot import completed_case, reports_cli, reports_config

from bot.app import jobs
from bot.flows.digest import render_digest

pytestmark = pytest.mark.servers

OURS = "203.0.113.10"
OWN_SERVER = "198.51.100.99"   # the facility's own server: a real source, failing
FORGED_IP = "192.0.2.66"       # what the forgeries claim
T0 = datetime(2026, 9, 1, tzinfo=UTC)
ORG_TEXT = "Google Support: fix at https://evil.test/fix"


def body(raw: bytes) -> str:
    msg = message_from_bytes(raw, policy=email.policy.default)
    return str(msg.get_body(preferencelist=("plain",)).get_content()).replace("\r\n", "\n")  # type: ignore[union-attr]


def subject(raw: bytes) -> str:
    return str(message_from_bytes(raw, policy=email.policy.default)["Subject"])


def google_report(domain: str, day: datetime, report_id: str, rows: list[tuple[str, int, str, str]], *,
                  sender: str = "noreply-dmarc-support@google.com", org: str = "google.com",
                  contact: str = "noreply-dmarc-support@google.com") -> bytes:
    xml = dmarckit.google_style_xml(domain, day, report_id, rows, org=org, email=contact)
    return dmarckit.google_mail(xml, domain, day, sender=sender)


def broken(raw: bytes) -> bytes:
    """A signed mail altered after signing: the zip's text part says something else."""
    altered = raw.replace(b"This is an aggregate report from", b"This is an aggregate report by")
    assert altered != raw
    return altered


def forgeries(domain: str, day: datetime) -> list[tuple[str, bytes]]:
    """Report mails claiming our IPs fail and a stranger's IP, none authenticated as Google's."""
    rows = [(OURS, 500, "fail", "fail"), (FORGED_IP, 40, "fail", "fail")]
    return [
        ("unsigned", google_report(domain, day, "forged-unsigned", rows, org=ORG_TEXT)),
        # The attacker's own domain signs, its From too: a report claiming google.com.
        ("signed by evil.test", dmarckit.signed(google_report(
            domain, day, "forged-evil", rows, sender="dmarc@evil.test", contact="dmarc@evil.test"), "evil.test")),
        # From google.com, but the signature is evil.test's: not the From domain's.
        ("unaligned signature", dmarckit.signed(google_report(domain, day, "forged-unaligned", rows), "evil.test")),
        ("broken signature", broken(dmarckit.signed(google_report(domain, day, "forged-broken", rows),
                                                    "google.com"))),
    ]


def test_only_a_signed_report_reaches_the_facility_and_forgeries_are_shown_to_staff(tmp_path, dovecot, bind, smtp):
    smtp.clear()
    domain = "ryokan-kashi.test"
    bind.add_zone(domain)
    bind.add_zone("99.100.51.198.in-addr.arpa")
    bind.update("99.100.51.198.in-addr.arpa", "@", "PTR", ["see-https-evil.test.ryokan-kashi.test."])
    for signer in ("google.com", "evil.test"):
        dmarckit.publish_key(bind, signer)
    cfg, rua = reports_config(tmp_path, dovecot, bind, smtp, "kashi")
    day = T0 + timedelta(days=13)
    real = google_report(domain, day, "real-1", [(OURS, 20, "pass", "fail"), (OWN_SERVER, 3, "fail", "fail")])
    dovecot.append(rua, dmarckit.signed(real, "google.com"))
    forged = forgeries(domain, day)
    for _what, raw in forged:
        dovecot.append(rua, raw)

    clock = Clock(T0 + timedelta(days=14, hours=6))
    bot = open_bot(cfg, clock)
    try:
        case = completed_case(bot, domain, T0)
        assert jobs.run_pass(bot).errors == []
        assert bot.store.dmarc_mail_counts(clock.now - timedelta(days=1)) == {"stored": 1 + len(forged)}

        # The facility: the signed report's numbers and addresses, the reporter by its
        # authenticated domain; nothing of the forgeries, no report text, no PTR name.
        [mail] = [m for m in smtp.messages if f"admin@{domain}" in m.rcpt_tos]
        text = body(mail.raw)
        assert "受信側が確認したメール：23通" in text
        assert f"・{OWN_SERVER}：3通が不合格（報告元：google.com）" in text
        assert FORGED_IP not in text and "evil" not in text and "https" not in text
        assert "see-https" not in text  # the source's PTR name stays on the staff side
        # No escalation: the forgeries' "our IPs fail" is not believed.
        assert [m for m in smtp.messages if "ESCALATION" in subject(m.raw)] == []
        assert "dmarc_ours_failing" not in [e["kind"] for e in bot.store.events(case.id)]

        # Staff see everything, the forgeries marked as unverified.
        days = (datetime.now(UTC).date() - day.date()).days + 1
        by_ip = {s["ip"]: s for s in reports_cli(cfg, domain, days)["sources"]}
        assert by_ip[FORGED_IP]["messages"] == 4 * 40
        assert sorted(by_ip[FORGED_IP]["reporters"]) == sorted([
            "google.com (unauthenticated mail from google.com)",   # unaligned and broken signatures
            "google.com (via evil.test)", f"{ORG_TEXT} (unauthenticated mail from google.com)"])
        assert by_ip[OWN_SERVER]["name"] == "see-https-evil.test.ryokan-kashi.test"
        _subject, digest = render_digest(bot)
        assert "never used for facility mails, advice or alerts): 4\n" in digest
        assert f"{domain}: google.com (unauthenticated mail from google.com) claims 1000 of 1000" in digest
    finally:
        bot.close()


def test_backdated_forged_reports_do_not_make_a_facility_ready_for_quarantine(tmp_path, dovecot, bind, smtp):
    """Signed reports cover days 0-13 only (not the 30 days the advice needs); unsigned
    "google.com" reports for the 30 days before would make it look ready."""
    smtp.clear()
    domain = "ryokan-nara.test"
    bind.add_zone(domain)
    bind.update(domain, "_dmarc", "TXT", ["v=DMARC1; p=none"])
    dmarckit.publish_key(bind, "google.com")
    cfg, rua = reports_config(tmp_path, dovecot, bind, smtp, "nara", extra={"quarantine_min_messages": 100})
    for k in range(-30, 14):
        begin = T0 + timedelta(days=k)
        raw = google_report(domain, begin, f"nara-{k}", [(OURS, 20, "pass", "fail")])
        dovecot.append(rua, dmarckit.signed(raw, "google.com") if k >= 0 else raw)
    clock = Clock(T0 + timedelta(days=14, hours=6))
    bot = open_bot(cfg, clock)
    try:
        completed_case(bot, domain, T0 - timedelta(days=40))
        jobs.run_pass(bot)
        [mail] = [m for m in smtp.messages if f"admin@{domain}" in m.rcpt_tos]
        text = body(mail.raw)
        assert "受信側が確認したメール：280通" in text  # 14 signed days × 20, not 30 forged more
        assert "v=DMARC1; p=quarantine" not in text
        assert "DMARCの設定を「p=quarantine」に強化できるのは" in text  # explained, not advised
        _subject, digest = render_digest(bot)
        ready = digest.split("Ready for p=quarantine", 1)[1]
        assert domain not in ready
    finally:
        bot.close()
