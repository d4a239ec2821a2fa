"""Names as written, text read exactly or flagged (issue 12).

Pure: eucJP-ms and ISO-2022-JP-2004 fixtures of tests/corpus read without a U+FFFD; the
broken-bytes fixture counts its U+FFFD and stores no garbled name; names keep ① ㈱ 髙 ﾅｶﾑﾗ
while labels and addresses are matched through NFKC. On the real servers (Maildir intake,
SMTP sink, BIND): the case's facility name is the one written, and an undecodable request
is recorded on its case and reported to staff."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from configkit import dns, service, smtp_out, write_toml

from bot.config import load_config
from bot.core.mailtext import decode_bytes
from bot.core.request import parse_facilities, parse_message

CORPUS = Path(__file__).parent / "corpus"


@pytest.mark.parametrize("name, undecodable", [
    ("claws_eucjpms_nec_ibm", 0), ("iso2022jp2004_jisx0213", 0), ("becky_iso2022jp_nec_chars", 0),
    ("broken_eucjp_bytes_in_name", 2),
])
def test_replacement_characters_are_counted(name, undecodable):
    parsed = parse_message((CORPUS / f"{name}.eml").read_bytes())
    assert parsed.undecodable == undecodable
    assert ("\ufffd" in parsed.body_text) == bool(undecodable)


def test_eucjp_ms_reads_nec_and_ibm_characters_and_plain_eucjp_stays_as_it_was():
    # ① = NEC row 13 (EUC 0xADA1), 髙 = NEC-selected IBM row 90 (EUC 0xFCE2)
    assert decode_bytes(b"\xad\xa1\xa5\xc1\xa5\xa7\xa5\xc3\xa5\xaf\xa5\xa4\xa5\xf3", "EUC-JP") == "①チェックイン"
    assert decode_bytes(b"\xfc\xe2\xb8\xb6", "EUC-JP") == "髙原"
    # What the standard codec reads stays read its way (0xA1C1 is U+301C WAVE DASH there).
    assert decode_bytes(b"\xa5\xdb\xa5\xc6\xa5\xeb\xa1\xc1", "EUC-JP") == "ホテル\u301c"


def test_iso2022jp_2004_reads_jis_x_0213():
    raw = "山﨑様".encode("iso2022_jp_2004")
    assert b"\x1b$(Q" in raw
    assert decode_bytes(raw, "ISO-2022-JP-2004") == "山﨑様"
    assert decode_bytes(raw, "ISO-2022-JP") == "山﨑様"  # a mislabelled one too


def test_undecodable_bytes_are_never_hidden_behind_a_clean_guess():
    text = decode_bytes(b"\xa4\xa2\xff\xfe\xa4\xa4", "EUC-JP")
    assert text.startswith("あ") and "\ufffd" in text


def test_names_keep_their_characters_labels_and_addresses_are_normalised():
    [f] = parse_facilities("【施設名】：髙原ホテル①号館\n［担当者様のお名前］ﾅｶﾑﾗ　ｹﾝ\n"
                           "管理用メールアドレス：ｉｎｆｏ＠ｔａｋａｈａｒａ.jp\n")
    assert f.facility_name == "髙原ホテル①号館"
    assert f.contact_name == "ﾅｶﾑﾗ ｹﾝ"
    assert f.admin_email == "info@takahara.jp" and f.domain == "takahara.jp"
    [g] = parse_facilities("施設名\n㈱山海リゾート\n")
    assert g.facility_name == "㈱山海リゾート"


def make_bot(tmp_path, bind, smtp):
    from bot.adapters.intake import MaildirMailbox
    from bot.app.jobs import Bot

    cfg_file = write_toml(tmp_path / "c.toml", {
        "service": service(), "intake": {"kind": "maildir"}, "outbound": smtp_out(smtp),
        "dns": dns(bind, timeout=1.0), "keys": {"bits": 1024},
        "schedule": {"check_interval_seconds": 3600}, "state": {"dir": str(tmp_path / "state")}})
    cfg = load_config(cfg_file)
    return Bot.open(cfg), MaildirMailbox(cfg.state_path(cfg.intake.maildir))


@pytest.mark.servers
def test_the_case_holds_the_name_as_written(tmp_path, bind, smtp):
    from bot.app.jobs import run_pass

    domain = f"takahara-{uuid.uuid4().hex[:6]}.test"
    bind.add_zone(domain)
    raw = (CORPUS / "claws_eucjpms_nec_ibm.eml").read_bytes().replace(b"takahara-hotel.jp", domain.encode())
    smtp.clear()
    bot, inbox = make_bot(tmp_path, bind, smtp)
    try:
        inbox.deliver(raw)
        run_pass(bot)
        [case] = bot.store.list_cases()
        assert case.facility == "髙原ホテル①号館" and case.contact_name == "山﨑 花子"
        [reply] = smtp.messages
        assert "■ 髙原ホテル①号館" in reply.message.get_body(("plain",)).get_content()
    finally:
        bot.close()


@pytest.mark.servers
def test_an_undecodable_request_is_recorded_and_staff_are_told(tmp_path, bind, smtp):
    from bot.app.jobs import run_pass

    smtp.clear()
    bot, inbox = make_bot(tmp_path, bind, smtp)
    try:
        inbox.deliver((CORPUS / "broken_eucjp_bytes_in_name.eml").read_bytes())
        run_pass(bot)
        [case] = bot.store.list_cases()
        assert case.state == "needs_info" and case.facility is None
        [event] = [e for e in bot.store.events(case.id) if e["kind"] == "undecodable_text"]
        assert event["detail"]["replacement_characters"] == 2
        subjects = [str(m.message["Subject"]) for m in smtp.messages]
        assert any("could not be decoded" in s for s in subjects), subjects
        facility_reply = [m for m in smtp.messages if "ogawa@ogawa-inn.jp" in m.rcpt_tos]
        assert len(facility_reply) == 1
        assert "[施設名]" in facility_reply[0].message.get_body(("plain",)).get_content()
    finally:
        bot.close()
