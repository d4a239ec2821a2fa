"""DMARC parsing is as tolerant as receivers are, and no more (pure)."""

from bot.checks.dmarc import parse_dmarc


def test_empty_parts_are_not_a_problem():
    for text in ("v=DMARC1; p=none;", "v=DMARC1; p=none;;", "v=DMARC1;; p=none; ;"):
        rec = parse_dmarc(text)
        assert rec.problems == [], (text, rec.problems)
        assert rec.tags["p"] == "none"


def test_real_mistakes_still_are():
    assert parse_dmarc("v=DMARC1; p=nothing").problems
    assert parse_dmarc("p=none; v=DMARC1").problems
    assert parse_dmarc("v=DMARC1; p=none; pct").problems
