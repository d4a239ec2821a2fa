"""The IMAP header pre-filter agrees with the parser on every corpus fixture.

The filter decides from headers alone which messages are fetched at all, so a request it
misjudges is never read: for every fixture, it must want exactly the mails the full
parser calls a request or a case reply.
"""

from __future__ import annotations

import email.parser
import email.policy
from pathlib import Path

import pytest

from bot.adapters.intake import HeaderFilter
from bot.core.request import parse_message, subject_is_request

CORPUS = Path(__file__).parent / "corpus"
FIXTURES = sorted(CORPUS.glob("*.eml"))


def _headers(raw: bytes) -> bytes:
    return raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]


@pytest.mark.parametrize("eml", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_the_header_filter_wants_what_the_parser_reads_as_request_or_reply(eml: Path) -> None:
    raw = eml.read_bytes()
    parsed = parse_message(raw)
    wanted = HeaderFilter(subject_is_request, lambda ids: False).wants(_headers(raw))
    assert wanted == (parsed.is_request or bool(parsed.case_refs))


def test_it_wants_a_reply_known_only_by_in_reply_to() -> None:
    raw = (CORPUS / "reply_in_reply_to_only_done.eml").read_bytes()
    seen: list[list[str]] = []

    def known(ids: list[str]) -> bool:
        seen.append(ids)
        return "<dkimbot.0013.1@489ban.net>" in ids

    assert HeaderFilter(subject_is_request, known).wants(_headers(raw))
    assert seen and "<orig3@midorisou.co.jp>" in seen[0]
    assert not HeaderFilter(subject_is_request, lambda ids: False).wants(_headers(raw))


def test_the_stdlib_decoder_alone_would_miss_the_mislabelled_subject() -> None:
    """Why the filter uses bot.mailtext's decoder (bug_header_filter_cp932_subject_labelled_jis)."""
    raw = (CORPUS / "bug_header_filter_cp932_subject_labelled_jis.eml").read_bytes()
    stdlib = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(_headers(raw))
    assert not subject_is_request(str(stdlib["Subject"]))
    assert HeaderFilter(subject_is_request, lambda ids: False).wants(_headers(raw))


@pytest.mark.parametrize("subject", ["Re: ［ＤＫＩＭ－００１２］ 設定しました", "Re: [DKIM - 12] 設定しました",
                                     "Re: [dkim-0012] done"])
def test_it_wants_a_case_reference_however_it_is_typed(subject: str) -> None:
    from email.header import Header

    head = f"From: a@hotel.test\r\nSubject: {Header(subject, 'utf-8').encode()}\r\n".encode()
    assert HeaderFilter(lambda s: False, lambda ids: False).wants(head)
    assert parse_message(head + b"\r\nbody\r\n").case_refs
