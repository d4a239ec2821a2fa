"""Real aggregate reports as receivers sent them (parsedmarc's samples/aggregate, Apache-2.0,
see tests/corpus/dmarc_reports/README.md): each parses with the shape it was sent in, its
totals equal an independent count of its <record>/<count> elements, and the one malformed
sample is refused as malformed (counted and skipped by a pass), never misread."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.core.dmarcmail import documents_in
from bot.core.dmarcxml import ReportError, parse_aggregate

REAL = Path(__file__).parent / "corpus" / "dmarc_reports" / "real"
NOW = datetime(2026, 12, 1, tzinfo=UTC)

# name: (schema, reporter) as the receiver wrote it
SHAPES = {
    "microsoft.xml": ("rfc7489", "Outlook.com"),
    "fastmail.xml.gz": ("rfc7489", "FastMail Pty Ltd"),
    "infonacot.xml.zip": ("draft", "XYZ Corporation"),
    "example-net.xml": ("rfc7489", "example.net"),
    "usssa.xml": ("rfc7489", "usssa.com"),
    "veeam.xml": ("draft", "veeam.com"),
    "addisonfoods.xml": ("rfc7489", "addisonfoods.com"),
    "rfc9990-example.xml": ("dmarcbis", "example.net"),
    "old-draft-wiki.xml": ("draft", "acme.com"),
}


def _documents(name: str) -> list[bytes]:
    docs = documents_in((REAL / name).read_bytes(), 10 * 1024 * 1024)
    assert len(docs) == 1, name
    return docs


def test_every_sample_is_listed() -> None:
    on_disk = {p.name for p in REAL.iterdir() if not p.name.startswith("LICENSE")}
    assert on_disk == {*SHAPES, "ikea.xml"}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_a_real_report_parses_with_independently_counted_totals(name: str) -> None:
    (doc,) = _documents(name)
    report = parse_aggregate(doc, now=NOW)
    assert (report.schema, report.reporter) == SHAPES[name]
    assert report.domain == "real-facility.test"
    assert len(report.rows) == len(re.findall(rb"<record>", doc))
    assert report.messages == sum(int(c) for c in re.findall(rb"<count>\s*(\d+)\s*</count>", doc))
    assert all(row.source_ip for row in report.rows)


def test_a_malformed_real_report_is_refused_not_misread() -> None:
    # ikea.xml opens with an unclosed <xs:schema> around <feedback> (as sent): not XML.
    (doc,) = _documents("ikea.xml")
    with pytest.raises(ReportError, match="malformed"):
        parse_aggregate(doc, now=NOW)


# -- through a real Dovecot folder and a pass ------------------------------------------------

# The 2018 samples (one 400-day window; old-draft-wiki is from 2012 and rfc9990/microsoft
# from 2023-24, so they stay in the pure tests above): file → MIME type as mailed.
MAILED_2018 = {
    "fastmail.xml.gz": ("application", "gzip"),
    "infonacot.xml.zip": ("application", "zip"),
    "example-net.xml": ("text", "xml"),
    "usssa.xml": ("text", "xml"),
    "veeam.xml": ("text", "xml"),
    "addisonfoods.xml": ("text", "xml"),
    "ikea.xml": ("text", "xml"),
}


def _mail(name: str, n: int) -> bytes:
    from email.message import EmailMessage
    from email.utils import make_msgid

    maintype, subtype = MAILED_2018[name]
    msg = EmailMessage()
    msg["From"] = f"dmarc-reports@sender{n}.example"
    msg["To"] = "dmarc@489ban.net"
    msg["Subject"] = f"Report domain: real-facility.test Submitter: sender{n}.example"
    msg["Message-ID"] = make_msgid(domain=f"sender{n}.example")
    msg.set_content("DMARC aggregate report attached.\n")
    msg.add_attachment((REAL / name).read_bytes(), maintype=maintype, subtype=subtype, filename=name)
    return msg.as_bytes()


@pytest.mark.servers
def test_real_reports_flow_from_dovecot_into_the_figures(tmp_path, dovecot, bind, smtp) -> None:
    from datetime import timedelta

    import dmarckit
    from keyflow import Clock, open_bot
    from test_dmarc_dovecot import reports_config

    from bot.app import jobs
    from bot.flows.dmarcnotify import summary

    smtp.clear()
    cfg, rua = reports_config(tmp_path, dovecot, bind, smtp, "real")
    for n, name in enumerate(MAILED_2018):
        dovecot.append(rua, _mail(name, n))
    clock = Clock(datetime(2018, 10, 10, 6, 0, tzinfo=UTC))
    bot = open_bot(cfg, clock)
    try:
        dmarckit.completed_case(bot.store, "real-facility.test", clock.now - timedelta(days=300),
                                facility="旅館リアル", admin_email="admin@real-facility.test",
                                requester="admin@real-facility.test")
        assert jobs.run_pass(bot).errors == []
        counts = bot.store.dmarc_mail_counts(clock.now - timedelta(days=1))
        assert counts.get("stored") == 6 and counts.get("malformed") == 1, counts
        # Counted by hand from the files: rows whose header_from is the facility's domain
        # (FastMail's one row names example.com: kept, marked, not the facility's mail).
        expected = 0
        for name in MAILED_2018:
            if name != "ikea.xml":
                (doc,) = _documents(name)
                for record in re.findall(rb"<record>.*?</record>", doc, flags=re.S):
                    if b"<header_from>real-facility.test</header_from>" in record:
                        expected += int(re.search(rb"<count>\s*(\d+)\s*</count>", record).group(1))
        result = summary(bot.store, "real-facility.test", 300, bot.clock().date())
        assert result.messages == expected == 6
        assert {s.ip for s in result.sources} == {"198.51.100.3", "198.51.100.5", "198.51.100.6", "198.51.100.7"}
        stored = dovecot.fetch_all(rua)
        assert len(stored) == len(MAILED_2018) and all("\\Seen" not in f for _u, f, _r in stored)
    finally:
        bot.close()
