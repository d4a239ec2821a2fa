"""DMARC aggregate report parsing (pure): the corpus of receivers' shapes, and hostile input.

bot/core/dmarcxml.py and bot/core/dmarcmail.py take bytes and return values, so these
tests need no server; the pass over real Dovecot is tests/test_dmarc_dovecot.py.
"""

from __future__ import annotations

import gzip
import io
import zipfile
from datetime import UTC, datetime
from typing import Any

import dmarckit
import pytest

from bot.core.dmarcmail import documents_in, read_report_mail
from bot.core.dmarcxml import ReportError, parse_aggregate

NOW = datetime(2026, 11, 25, tzinfo=UTC)
MiB = 1024 * 1024


def corpus(name: str) -> bytes:
    return (dmarckit.CORPUS / name).read_bytes()


@pytest.mark.parametrize("name, schema, reporter, rows, messages", [
    ("google.xml", "draft", "google.com", 3, 137),
    ("yahoo.xml", "draft", "Yahoo", 2, 49),
    ("microsoft.xml", "rfc7489", "Outlook.com", 2, 29),
    ("fastmail.xml", "rfc7489", "FastMail Pty Ltd", 2, 3),
    ("mimecast.xml", "draft", "Mimecast", 1, 6),
    ("dmarcbis.xml", "dmarcbis", "reporter.test", 2, 12),
])
def test_corpus_reports_parse_with_their_shapes(name: str, schema: str, reporter: str, rows: int, messages: int) -> None:
    report = parse_aggregate(corpus(name), now=NOW)
    assert (report.schema, report.reporter, len(report.rows), report.messages) == (schema, reporter, rows, messages)
    assert report.domain == dmarckit.DOMAIN
    assert report.begin.tzinfo is not None and report.begin <= report.end


def test_dmarcbis_fields_and_disposition_pass() -> None:
    report = parse_aggregate(corpus("dmarcbis.xml"), now=NOW)
    assert report.policy["np"] == "none" and report.policy["discovery_method"] == "treewalk"
    ours = report.rows[0]
    assert (ours.disposition, ours.dkim_eval, ours.dmarc_pass) == ("pass", "pass", True)
    assert ours.dkim[0].selector == "yoyakuban202611"


def test_alignment_comes_from_policy_evaluated() -> None:
    # Yahoo's newsletter row: DKIM and SPF pass, but for another domain: DMARC fails.
    row = parse_aggregate(corpus("yahoo.xml"), now=NOW).rows[1]
    assert row.dkim[0].result == "pass" and row.spf[0].result == "pass"
    assert not row.dmarc_pass


@pytest.mark.parametrize("envelope", dmarckit.ENVELOPES, ids=[e[0] for e in dmarckit.ENVELOPES])
def test_every_wrapping_yields_the_xml(envelope: tuple[str, str, str, str]) -> None:
    name, sender, wrapping, filename = envelope
    xml = corpus(name)
    mail = read_report_mail(dmarckit.report_mail(xml, sender, wrapping, filename), 20 * MiB)
    assert mail.documents == [xml] and mail.errors == []
    assert mail.from_domain == sender.rpartition("@")[2]


# -- hostile input ------------------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">]>
<feedback><report_metadata><org_name>&lol4;</org_name></report_metadata></feedback>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE feedback [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<feedback><report_metadata><org_name>&xxe;</org_name></report_metadata></feedback>"""


def _with(xml: bytes, old: bytes, new: bytes) -> bytes:
    assert old in xml
    return xml.replace(old, new, 1)


@pytest.mark.parametrize("xml, code", [
    (BILLION_LAUGHS, "entities"),
    (EXTERNAL_ENTITY, "entities"),
    (b"<feedback><report_metadata>", "malformed"),
    (b"<html><body>not a report</body></html>", "not_aggregate"),
    (_with(corpus("google.xml"), b"<count>120</count>", b"<count>-5</count>"), "bad_count"),
    (_with(corpus("google.xml"), b"<count>120</count>", b"<count>99999999999</count>"), "bad_count"),
    (_with(corpus("google.xml"), b"<count>120</count>", b"<count>many</count>"), "malformed"),
    (_with(corpus("google.xml"), b"<begin>1795132800</begin>", b"<begin>1895132800</begin>"), "future_dates"),
    (_with(corpus("google.xml"), b"<end>1795219199</end>", b"<end>1795000000</end>"), "bad_dates"),
    (_with(corpus("microsoft.xml"), b"<version>1.0</version>", b"<version>3.0</version>"), "unknown_schema"),
    (_with(corpus("dmarcbis.xml"), b"dmarc-2.0", b"dmarc-9.0"), "unknown_schema"),
    (_with(corpus("google.xml"), b"<source_ip>192.0.2.77</source_ip>", b"<source_ip>localhost</source_ip>"), "malformed"),
])
def test_hostile_xml_is_refused_with_a_code(xml: bytes, code: str) -> None:
    with pytest.raises(ReportError) as info:
        parse_aggregate(xml, now=NOW)
    assert info.value.code == code


def test_billion_laughs_is_refused_before_expanding() -> None:
    # Refused at the DOCTYPE: nothing is expanded, so the error comes at once and small.
    with pytest.raises(ReportError) as info:
        parse_aggregate(BILLION_LAUGHS, now=NOW)
    assert "lol" not in str(info.value)


def test_zip_bomb_stops_at_the_limit() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("report.xml", b"<?xml version='1.0'?><feedback>" + b" " * (64 * MiB))
    bomb = buf.getvalue()
    assert len(bomb) < MiB  # 64 MiB behind less than 1 MiB
    with pytest.raises(ReportError) as info:
        documents_in(bomb, 4 * MiB)
    assert info.value.code == "oversized"


def test_gzip_bomb_stops_at_the_limit() -> None:
    bomb = gzip.compress(b"<?xml version='1.0'?><feedback>" + b"\0" * (64 * MiB))
    with pytest.raises(ReportError) as info:
        documents_in(bomb, 4 * MiB)
    assert info.value.code == "oversized"


def test_truncated_gzip_and_corrupt_zip_are_malformed() -> None:
    data = gzip.compress(corpus("google.xml"))
    with pytest.raises(ReportError) as info:
        documents_in(data[: len(data) // 2], MiB)
    assert info.value.code == "malformed"
    with pytest.raises(ReportError) as info:
        documents_in(b"PK\x03\x04" + b"\x00" * 100, MiB)
    assert info.value.code == "malformed"


def test_gzip_with_trailing_bytes_still_reads() -> None:
    # Some gateways pad the attachment after the gzip member.
    assert documents_in(gzip.compress(corpus("google.xml")) + b"\r\n\r\n", MiB) == [corpus("google.xml")]


def test_a_mail_with_a_bomb_and_a_good_report_keeps_the_good_one() -> None:
    from email.message import EmailMessage

    msg = EmailMessage()
    msg["From"] = "noreply-dmarc-support@google.com"
    msg.set_content("two attachments")
    msg.add_attachment(gzip.compress(b"<feedback>" + b"\0" * (8 * MiB)), maintype="application",
                       subtype="gzip", filename="bomb.xml.gz")
    msg.add_attachment(corpus("google.xml"), maintype="text", subtype="xml", filename="ok.xml")
    mail = read_report_mail(msg.as_bytes(), MiB)
    assert mail.documents == [corpus("google.xml")]
    assert [e.code for e in mail.errors] == ["oversized"]


def test_the_limit_holds_for_a_whole_mail_not_each_part() -> None:
    """Review 2026-12-01: 10 gzip parts each just under the limit (a 280 KB mail at the
    default 20 MiB) held 210 MB of XML at once; a 10 MB mail could hold gigabytes."""
    from email.message import EmailMessage

    part = gzip.compress(b"<?xml version='1.0'?><feedback>" + b" " * (MiB - 100) + b"</feedback>")
    msg = EmailMessage()
    msg["From"] = "noreply-dmarc-support@google.com"
    msg.set_content("many parts")
    for i in range(6):
        msg.add_attachment(part, maintype="application", subtype="gzip", filename=f"r{i}.xml.gz")
    mail = read_report_mail(msg.as_bytes(), 2 * MiB)
    assert sum(map(len, mail.documents)) <= 2 * MiB
    assert len(mail.documents) == 2 and [e.code for e in mail.errors] == ["oversized"]

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(3):
            zf.writestr(f"r{i}.xml", b"<?xml version='1.0'?><feedback>" + b" " * (MiB - 100) + b"</feedback>")
    with pytest.raises(ReportError) as info:
        documents_in(buf.getvalue(), 2 * MiB)  # three members of 1 MiB: past 2 MiB together
    assert info.value.code == "oversized"


def test_one_mail_that_breaks_the_store_step_is_its_own_outcome(tmp_path, monkeypatch) -> None:
    """A bug while storing one mail rolls back its batch; the others are stored alone."""
    import bot.flows.dmarcintake as intake
    from bot.adapters.intake import MaildirMailbox
    from bot.config import load_config
    from bot.flows.runtime import Bot

    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text(f'[reports]\nkind = "maildir"\npath = "rua"\n[service]\nsending_ips = ["0.0.0.0/0"]\n'
                        f'[state]\ndir = "{tmp_path / "state"}"\n')
    bot = Bot.open(load_config(cfg_path), clock=lambda: NOW)
    try:
        dmarckit.completed_case(bot.store, dmarckit.DOMAIN, NOW)
        box = MaildirMailbox(bot.cfg.state_path("rua"))
        for name, raw in dmarckit.corpus_mails()[:3]:
            box.deliver(raw)
        real = intake.store_report

        def broken_for_yahoo(cfg: Any, store: Any, report: Any, mail: Any, key: str, now: datetime,
                             authenticated: str = "") -> str:
            if report.reporter == "Yahoo":
                raise RuntimeError("bug")
            return real(cfg, store, report, mail, key, now, authenticated)

        monkeypatch.setattr(intake, "store_report", broken_for_yahoo)
        assert intake.intake_once(bot) == {"stored": 2, "error": 1}
        assert intake.intake_once(bot) == {}  # the failed mail is not retried forever
    finally:
        bot.close()


def test_an_idn_domain_is_stored_as_cases_store_it() -> None:
    xml = corpus("google.xml").replace(b"ryokan-kaede.test", "旅館かえで.test".encode())
    report = parse_aggregate(xml, now=NOW)
    assert report.domain == "旅館かえで.test".encode("idna").decode() == report.rows[0].header_from


def test_old_rows_are_forgotten_after_400_days_but_a_resent_report_stays_a_duplicate(tmp_path) -> None:
    from datetime import timedelta

    from bot.adapters.intake import MaildirMailbox
    from bot.config import load_config
    from bot.flows.dmarcnotify import reports_once, summary
    from bot.flows.runtime import Bot

    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text(f'[reports]\nkind = "maildir"\npath = "rua"\n[service]\nsending_ips = ["0.0.0.0/0"]\n'
                        f'[state]\ndir = "{tmp_path / "state"}"\n')
    now = [NOW]
    bot = Bot.open(load_config(cfg_path), clock=lambda: now[0])
    try:
        with bot.store.transaction():
            bot.store.create_case(state="needs_info", now=NOW, domain=dmarckit.DOMAIN)
        box = MaildirMailbox(bot.cfg.state_path("rua"))
        name, raw = dmarckit.corpus_mails()[0]
        box.deliver(raw)
        assert reports_once(bot) == []
        assert summary(bot.store, dmarckit.DOMAIN, 30, bot.clock().date()).messages == 137
        now[0] = NOW + timedelta(days=394)  # the report is of NOW - 5 days: 399 days old
        reports_once(bot)
        assert summary(bot.store, dmarckit.DOMAIN, 500, bot.clock().date()).messages == 137
        now[0] = NOW + timedelta(days=406)
        box.deliver(raw)  # the same report again, a year later
        reports_once(bot)
        assert summary(bot.store, dmarckit.DOMAIN, 500, bot.clock().date()).messages == 0
        assert bot.store.dmarc_mail_counts(now[0] - timedelta(days=1)) == {"duplicate": 1}
    finally:
        bot.close()


def test_with_authserv_id_only_mail_our_receiver_authenticated_is_taken_at_its_word(tmp_path) -> None:
    """[reports] authserv_id: a report mail is believed to come from its From domain only
    when our own receiving server's (topmost) Authentication-Results passed it."""
    from bot.adapters.intake import MaildirMailbox
    from bot.config import load_config
    from bot.flows.dmarcintake import intake_once
    from bot.flows.dmarcnotify import summary
    from bot.flows.runtime import Bot

    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text(f'[reports]\nkind = "maildir"\npath = "rua"\nauthserv_id = "mx.489ban.test"\n'
                        f'[service]\nsending_ips = ["0.0.0.0/0", "::/0"]\n[state]\ndir = "{tmp_path / "state"}"\n')
    bot = Bot.open(load_config(cfg_path), clock=lambda: NOW)
    try:
        dmarckit.completed_case(bot.store, dmarckit.DOMAIN, NOW)
        box = MaildirMailbox(bot.cfg.state_path("rua"))
        good = corpus("google.xml")

        def mail(report_id: str, *ar: str) -> bytes:
            raw = dmarckit.report_mail(good.replace(b"8437265093854712345", report_id.encode()),
                                       "noreply-dmarc-support@google.com", "zip+text", "g.zip")
            return b"".join(f"Authentication-Results: {a}\r\n".encode() for a in ar) + raw

        box.deliver(mail("passed", "mx.489ban.test; dkim=pass header.d=google.com header.s=20230601; "
                                   "dmarc=pass header.from=google.com"))
        box.deliver(mail("no-header"))
        # A header from someone else's server, and ours lower down: only the topmost of ours counts.
        box.deliver(mail("forged-header", "evil.test; dkim=pass header.d=google.com",
                         "mx.489ban.test; dkim=fail header.d=google.com; dmarc=fail header.from=google.com"))
        box.deliver(mail("other-signer", "mx.489ban.test; dkim=pass header.d=mailer.test; spf=pass"))
        assert intake_once(bot)["stored"] == 4
        reporters = set(summary(bot.store, dmarckit.DOMAIN, 30, bot.clock().date()).sources[0].reporters)
        assert reporters == {"google.com", "google.com (unauthenticated mail from google.com)"}
        rows = bot.store.dmarc_source_rows(dmarckit.DOMAIN, "2026-11-01")
        by_reporter: dict[str, int] = {}
        for r in rows:
            by_reporter[r["reporter"]] = by_reporter.get(r["reporter"], 0) + int(r["messages"])
        assert by_reporter == {"google.com": 137, "google.com (unauthenticated mail from google.com)": 3 * 137}
        # Only the report our server authenticated is what a facility may be told, by its domain.
        told = summary(bot.store, dmarckit.DOMAIN, 30, bot.clock().date(), verified_only=True)
        assert told.messages == 137 and {r for s in told.sources for r in s.reporters} == {"google.com"}
    finally:
        bot.close()


@pytest.mark.parametrize("name, email, sent_from, label", [
    ("google.xml", None, "google.com", "google.com"),
    ("microsoft.xml", None, "microsoft.com", "Outlook.com"),
    ("yahoo.xml", None, "yahoo.com", "Yahoo"),
    # Review 2026-12-01: a contact address at the sender's own domain made any name pass.
    ("google.xml", "noreply@evil.test", "evil.test", "google.com (via evil.test)"),
    ("microsoft.xml", "dmarc@evil.test", "evil.test", "Outlook.com (via evil.test)"),
])
def test_a_reporter_name_that_is_a_domain_must_be_the_senders(name: str, email: str | None, sent_from: str,
                                                               label: str) -> None:
    import re

    from bot.flows.dmarcintake import reporter_label

    xml = corpus(name)
    if email is not None:
        xml = re.sub(rb"<email>[^<]*</email>", f"<email>{email}</email>".encode(), xml, count=1)
    assert reporter_label(parse_aggregate(xml, now=NOW), sent_from) == label


@pytest.mark.servers
def test_a_scoped_ipv6_source_neither_parses_nor_breaks_the_pass(tmp_path, bind) -> None:
    """Review 2026-12-01: ``fe80::1%eth0`` parsed as an address, was stored, and naming
    it (``reverse_pointer``) raised: the pass's DMARC step failed (no alerts, no facility
    mails, ``run --once`` exit 1, no heartbeat) for every such report anyone mailed in.
    An address with a zone index is no mail source: the record is malformed."""
    from datetime import timedelta

    from bot.adapters.intake import MaildirMailbox
    from bot.app.jobs import run_pass
    from bot.config import load_config
    from bot.flows.runtime import Bot

    xml = dmarckit.google_style_xml(dmarckit.DOMAIN, NOW - timedelta(days=2), "scoped-1",
                                    [("198.51.100.7", 3, "fail", "fail"), ("fe80::1%eth0", 2, "fail", "fail")])
    with pytest.raises(ReportError) as info:
        parse_aggregate(xml, now=NOW)
    assert info.value.code == "malformed"

    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text(f'[reports]\nkind = "maildir"\npath = "rua"\n[service]\nsending_ips = ["203.0.113.10"]\n'
                        f'[dns]\nnameservers = ["{bind.host}"]\nport = {bind.port}\ntimeout = 1.0\n'
                        f'[intake]\nkind = "maildir"\n[outbound]\nkind = "directory"\n'
                        f'[state]\ndir = "{tmp_path / "state"}"\n')
    bot = Bot.open(load_config(cfg_path), clock=lambda: NOW)
    try:
        dmarckit.completed_case(bot.store, dmarckit.DOMAIN, NOW - timedelta(days=3))
        MaildirMailbox(bot.cfg.state_path("rua")).deliver(
            dmarckit.google_mail(xml, dmarckit.DOMAIN, NOW - timedelta(days=2)))
        assert run_pass(bot).errors == []
        assert bot.store.dmarc_mail_counts(NOW - timedelta(days=1)) == {"malformed": 1}
    finally:
        bot.close()
