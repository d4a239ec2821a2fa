"""Every .eml in tests/corpus parses to the result in the .json beside it.

The .json files hold the Japanese (UTF-8) so that no test source mixes charsets; the .eml
files are the bytes real mailers send (see tests/corpus/_make_corpus.py).
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest

from bot.core.request import FIELDS, ParsedMail, parse_message

CORPUS = Path(__file__).parent / "corpus"
FIXTURES = sorted(CORPUS.glob("*.eml"))


def _summary(parsed: ParsedMail) -> dict:
    return {
        "is_request": parsed.is_request,
        "no_reply": parsed.no_reply_reason is not None,
        "case_refs": list(parsed.case_refs),
        "facilities": [
            {**{field: getattr(facility, field) for field in FIELDS},
             "domain": facility.domain,
             "problems": [{"field": p.field, "kind": p.kind} for p in facility.problems]}
            for facility in parsed.facilities
        ],
    }


def test_the_corpus_is_big_enough() -> None:
    assert len(FIXTURES) >= 40
    for eml in FIXTURES:
        assert eml.with_suffix(".json").exists(), f"{eml.name} has no expected .json"


@pytest.mark.parametrize("eml", FIXTURES, ids=[path.stem for path in FIXTURES])
def test_it_parses_each_fixture_as_expected(eml: Path) -> None:
    expected = json.loads(eml.with_suffix(".json").read_text(encoding="utf-8"))
    parsed = parse_message(eml.read_bytes(), own_addresses=expected.get("own_addresses", ()))
    want = {key: expected[key] for key in ("is_request", "no_reply", "case_refs", "facilities")}
    assert _summary(parsed) == want, expected.get("note")
    if "subject" in expected:
        assert parsed.subject == expected["subject"]
    if "from_addr" in expected:
        assert parsed.from_addr == expected["from_addr"]
    if parsed.no_reply_reason is not None:
        assert parsed.no_reply_reason.isascii() and len(parsed.no_reply_reason) < 80


def test_it_reads_threading_headers() -> None:
    parsed = parse_message((CORPUS / "reply_quoted_with_case_ref.eml").read_bytes())
    assert parsed.message_id == "<reply1@hotel-sakura.jp>"
    assert parsed.in_reply_to == "<dkimbot.0007.1@489ban.net>"
    assert parsed.references == ("<orig@hotel-sakura.jp>", "<dkimbot.0007.1@489ban.net>")
    assert "設定しました" in parsed.body_text


def test_it_does_not_decode_a_3mb_attachment() -> None:
    raw = (CORPUS / "attachment_pdf_mixed.eml").read_bytes()
    head, sep, rest = raw.partition(b"X-Attachment-Id: f_lr9x8y7z0\r\n\r\n")
    _pdf_b64, boundary, tail = rest.partition(b"\r\n--000000000000f0e1d2060f1d2e40--")
    big = base64.b64encode(bytes(range(256)) * (3 * 1024 * 1024 // 256))
    lines = b"\r\n".join(big[i : i + 76] for i in range(0, len(big), 76))
    enlarged = head + sep + lines + boundary + tail
    assert len(enlarged) > 4_000_000
    started = time.perf_counter()
    parsed = parse_message(enlarged)
    elapsed = time.perf_counter() - started
    assert [f.domain for f in parsed.facilities] == ["hotel-sakura.jp"]
    assert "%PDF" not in parsed.body_text
    assert elapsed < 2.0, f"parsing took {elapsed:.2f}s"


def test_it_keeps_bounces_facility_free_even_with_a_request_inside() -> None:
    parsed = parse_message((CORPUS / "dsn_multipart_report_with_request.eml").read_bytes())
    assert parsed.no_reply_reason is not None and parsed.no_reply_reason.startswith("bounce")
    assert parsed.facilities == ()
