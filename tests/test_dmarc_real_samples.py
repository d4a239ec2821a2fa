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
