"""DMARC aggregate reports on the real servers: report mails in a Dovecot folder are read
by a pass (read-only), stored per facility, and come out of ``dkimbot reports --json``
with the hand-counted totals; source names come from PTR records in BIND; hostile mails
are counted and skipped without stopping the pass.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dmarckit
import pytest
from configkit import server_config
from keyflow import Clock, open_bot

from bot.app import jobs

pytestmark = pytest.mark.servers

PASSWORD = "k17-secret"
STAFF = "staff@489ban.net"


def reports_config(tmp_path: Path, dovecot: Any, bind: Any, smtp: Any, name: str, *,
                   extra: dict[str, Any] | None = None) -> tuple[Path, str]:
    """A config whose [reports] mailbox is a fresh Dovecot user of the test's own."""
    rua, support = f"rua-{name}@489ban.net", f"support-{name}@489ban.net"
    for user in (rua, support):
        dovecot.add_user(user, PASSWORD)
        dovecot.reset(user)
    lines = ['kind = "imap"', f'host = "{dovecot.host}"', f"port = {dovecot.port}", 'tls = "none"',
             f'username = "{rua}"', 'password_env = "K17_PASSWORD"', "timeout = 10.0"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in (extra or {}).items()]
    cfg = server_config(tmp_path, dovecot, bind, smtp, saas_zone="k5-saas.test", username=support,
                        intake_extra={"password_env": "K17_PASSWORD"}, raw={"reports": "\n".join(lines)},
                        service_extra={"max_mails_per_case_per_day": 20})
    os.environ["K17_PASSWORD"] = PASSWORD
    return cfg, rua


def completed_case(bot: Any, domain: str, since: datetime) -> Any:
    return dmarckit.completed_case(bot.store, domain, since, facility="旅館テスト",
                                   admin_email=f"admin@{domain}", requester=f"admin@{domain}")


def reports_cli(cfg: Path, domain: str, days: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "bot", "--config", str(cfg), "reports", domain,
                          "--days", str(days), "--json"], capture_output=True, timeout=120,
                         env=dict(os.environ, K17_PASSWORD=PASSWORD), check=True)
    return json.loads(out.stdout)


def test_corpus_reports_flow_from_dovecot_to_the_json(tmp_path, dovecot, bind, smtp):
    smtp.clear()
    domain = dmarckit.DOMAIN
    bind.add_zone(domain)
    bind.add_zone("100.51.198.in-addr.arpa")
    bind.update("100.51.198.in-addr.arpa", "25", "PTR", ["mail.ryokan-kaede.test."])
    cfg, rua = reports_config(tmp_path, dovecot, bind, smtp, "corpus")
    for _name, raw in dmarckit.signed_corpus_mails(bind):  # each signed by its reporter (DKIM key in BIND)
        dovecot.append(rua, raw)
    clock = Clock(datetime(2026, 11, 23, 6, 0, tzinfo=UTC))
    bot = open_bot(cfg, clock)
    try:
        completed_case(bot, domain, clock.now - timedelta(days=13))
        result = jobs.run_pass(bot)
        assert result.errors == []
        assert bot.store.dmarc_mail_counts(clock.now - timedelta(days=1)) == {
            "stored": 6, "no_case": 1, "duplicate": 1}
        # Read-only: nothing marked \Seen, nothing moved.
        stored = dovecot.fetch_all(rua)
        assert len(stored) == 8 and all("\\Seen" not in flags for _uid, flags, _raw in stored)

        # The figures, hand-counted from the corpus (tests/corpus/dmarc_reports/README.md).
        days = (datetime.now(UTC).date() - datetime(2026, 11, 20).date()).days + 1
        got = reports_cli(cfg, domain, days)
        assert (got["domain"], got["days"], got["messages"], got["dmarc_pass"]) == (
            domain, days, dmarckit.EXPECTED["messages"], dmarckit.EXPECTED["dmarc_pass"])
        assert {s["ip"]: (s["messages"], s["dmarc_pass"], s["ours"], s["reporters"]) for s in got["sources"]} \
            == dmarckit.EXPECTED["sources"]
        names = {s["ip"]: s["name"] for s in got["sources"]}
        assert names["198.51.100.25"] == "mail.ryokan-kaede.test"  # PTR in BIND
        assert names["198.51.100.60"] is None                       # no PTR: no name
        assert reports_cli(cfg, "other-hotel.test", days)["messages"] == 0  # no case: dropped

        # Incremental: a second pass reads nothing old; one new mail is one new outcome.
        jobs.run_pass(bot)
        assert sum(bot.store.dmarc_mail_counts(clock.now - timedelta(days=1)).values()) == 8
        xml = dmarckit.google_style_xml(domain, datetime(2026, 11, 22, tzinfo=UTC), "new-1",
                                        [("203.0.113.10", 4, "pass", "fail")])
        dovecot.append(rua, dmarckit.google_mail(xml, domain, datetime(2026, 11, 22, tzinfo=UTC)))
        jobs.run_pass(bot)
        assert bot.store.dmarc_mail_counts(clock.now - timedelta(days=1))["stored"] == 7
        assert reports_cli(cfg, domain, days)["messages"] == dmarckit.EXPECTED["messages"] + 4
        # Everything from our IPs passed: no staff alert; 13 days after completion: no facility mail yet.
        assert smtp.messages == []
    finally:
        bot.close()


def _zip_bomb() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("google.com!x!1!2.xml", b"<?xml version='1.0'?><feedback>" + b" " * (48 * 1024 * 1024))
    return buf.getvalue()


def test_hostile_report_mails_are_counted_and_skipped_and_the_pass_goes_on(tmp_path, dovecot, bind, smtp):
    smtp.clear()
    domain = "ryokan-kusu.test"
    cfg, rua = reports_config(tmp_path, dovecot, bind, smtp, "hostile",
                              extra={"max_report_bytes": 4 * 1024 * 1024, "max_message_bytes": 2 * 1024 * 1024})
    day = datetime(2026, 11, 20, tzinfo=UTC)
    good = dmarckit.google_style_xml(domain, day, "g-1", [("203.0.113.10", 30, "pass", "fail"),
                                                          ("192.0.2.9", 2, "fail", "fail")])
    from test_dmarc_parse import BILLION_LAUGHS, EXTERNAL_ENTITY

    def attach(xml: bytes, sender: str = "noreply-dmarc-support@google.com") -> bytes:
        return dmarckit.report_mail(xml, sender, "xml", "r.xml", domain=domain)

    # A forged "google.com" report from evil.test reusing the real report id, claiming a
    # row for another facility's domain too.
    forged = dmarckit.google_style_xml(domain, day, "g-1", [("192.0.2.66", 50, "pass", "pass")])
    forged = forged.replace(b"</feedback>", b"<record><row><source_ip>192.0.2.66</source_ip><count>9</count>"
                            b"<policy_evaluated><disposition>none</disposition><dkim>pass</dkim><spf>pass</spf>"
                            b"</policy_evaluated></row><identifiers><header_from>other-facility.test</header_from>"
                            b"</identifiers><auth_results></auth_results></record></feedback>")
    hostile = [
        ("entities", attach(BILLION_LAUGHS)),
        ("entities", attach(EXTERNAL_ENTITY)),
        ("oversized", _bomb_mail(domain)),  # a 48 MiB XML behind a ~50 KB zip, as Google wraps it
        ("future_dates", attach(dmarckit.google_style_xml(domain, datetime(2027, 6, 1, tzinfo=UTC),
                                                          "f-1", [("203.0.113.10", 1, "pass", "pass")]))),
        ("bad_count", attach(good.replace(b"<count>30</count>", b"<count>-30</count>"))),
        ("unknown_schema", attach(good.replace(b"<feedback>", b"<feedback><version>7.0</version>"))),
        ("malformed", attach(good[: len(good) // 2])),
        ("no_report", dmarckit.report_mail(b"", "someone@example.test", "xml", "x.txt", domain=domain)),
        ("stored", attach(forged, "attacker@evil.test")),
        ("stored", dmarckit.signed(dmarckit.google_mail(good, domain, day), "google.com")),
    ]
    dmarckit.publish_key(bind, "google.com")
    big = dmarckit.report_mail(b"<feedback>" + b" " * (3 * 1024 * 1024) + b"</feedback>",
                               "noreply-dmarc-support@google.com", "xml", "big.xml", domain=domain)
    hostile.append(("oversized", big))  # over max_message_bytes: never fetched
    for _expected, raw in hostile:
        dovecot.append(rua, raw)
    clock = Clock(datetime(2026, 11, 23, 6, 0, tzinfo=UTC))
    bot = open_bot(cfg, clock)
    try:
        completed_case(bot, domain, clock.now - timedelta(days=2))
        result = jobs.run_pass(bot)
        assert result.errors == []
        counts = bot.store.dmarc_mail_counts(clock.now - timedelta(days=1))
        expected: dict[str, int] = {}
        for outcome, _raw in hostile:
            expected[outcome] = expected.get(outcome, 0) + 1
        assert counts == expected
        days = (datetime.now(UTC).date() - day.date()).days + 1
        got = reports_cli(cfg, domain, days)
        by_ip = {s["ip"]: s for s in got["sources"]}
        # The forged report is kept, marked by its sender, and did not shadow the real one.
        assert by_ip["192.0.2.66"]["reporters"] == ["google.com (via evil.test)"]
        assert by_ip["192.0.2.66"]["messages"] == 50      # the other facility's row was dropped
        assert by_ip["203.0.113.10"]["reporters"] == ["google.com"]
        assert got["messages"] == 30 + 2 + 50 and got["dmarc_pass"] == 30 + 50
        assert "other-facility.test" not in json.dumps(got)
        from bot.flows.digest import render_digest

        _subject, digest = render_digest(bot)
        assert (f"{domain}: google.com (via evil.test) report g-1 from evil.test, 50 messages: "
                "reporter_unverified, foreign_rows:9") in digest
    finally:
        bot.close()


def _bomb_mail(domain: str) -> bytes:
    from email.message import EmailMessage

    msg = EmailMessage()
    msg["From"] = "noreply-dmarc-support@google.com"
    msg["To"] = "dmarc@489ban.net"
    msg["Subject"] = f"Report domain: {domain} Submitter: google.com Report-ID: <bomb>"
    msg.set_content("This is an aggregate report from google.com.\n")
    msg.add_attachment(_zip_bomb(), maintype="application", subtype="zip", filename="bomb.zip")
    return msg.as_bytes()
