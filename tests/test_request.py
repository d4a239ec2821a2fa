"""Unit tests of bot/core/request.py: subject matching, labels, values, sections, no-reply rules."""

from __future__ import annotations

import pytest

from bot.core.mailtext import decode_bytes, decode_header_value, html_to_text
from bot.core.request import (
    FIELD_LABELS,
    FIELDS,
    Facility,
    FieldProblem,
    parse_facilities,
    parse_message,
    subject_is_request,
)

GOOD = """[施設名] ホテル桜
[担当者様のお名前] 山田 太郎
[担当者様のメールアドレス] yamada@hotel-sakura.jp
[担当者様の電話番号] 03-1234-5678
[予約番で使用する管理用メールアドレス] info@hotel-sakura.jp
"""
SAKURA = Facility("ホテル桜", "山田 太郎", "yamada@hotel-sakura.jp", "03-1234-5678", "info@hotel-sakura.jp", ())


# ------------------------------------------------------------------------------ subjects

@pytest.mark.parametrize("subject", [
    "DKIM、DMARC設定希望",
    "Re: DKIM、DMARC設定希望",
    "RE: Re: DKIM、DMARC設定希望",
    "Fwd: DKIM、DMARC設定希望",
    "FW: DKIM、DMARC設定希望",
    "転送: DKIM、DMARC設定希望",
    "[ホテル桜] DKIM、DMARC設定希望",
    "【至急】DKIM、DMARC設定希望（ホテル桜）",
    "ＤＫＩＭ、ＤＭＡＲＣ設定希望",
    "DKIM，DMARC設定希望",
    "DKIM,DMARC設定希望",
    "DKIM､DMARC設定希望",
    "DKIM DMARC設定希望",
    "DKIM　DMARC 設定希望",
    "DKIMDMARC設定希望",
    "dkim、dmarc設定希望",
    "DKIM・DMARC設定希望",
    "DKIM、DMARCの設定希望",
    "Re: [DKIM-0007] DKIM、DMARC設定希望",
])
def test_it_recognises_request_subjects(subject: str) -> None:
    assert subject_is_request(subject)


@pytest.mark.parametrize("subject", [
    "", "DKIM設定希望", "DMARC設定希望", "DKIM、DMARCについて", "予約番の操作方法について",
    "SPFレコード設定希望", "DMARC、DKIM設定希望",
])
def test_it_rejects_other_subjects(subject: str) -> None:
    assert not subject_is_request(subject)


def test_it_finds_case_references_in_the_subject() -> None:
    raw = ("Subject: =?UTF-8?B?" + __import__("base64").b64encode(
        "Re: [DKIM-0007] ［ＤＫＩＭ－００１２］ご案内 [DKIM-0007]".encode()).decode() + "?=\n\nbody\n").encode()
    assert parse_message(raw).case_refs == ("DKIM-0007", "DKIM-0012")


# ------------------------------------------------------------------------------ labels

def test_the_interface_constants_match_the_help_page() -> None:
    assert FIELDS == ("facility_name", "contact_name", "contact_email", "contact_phone", "admin_email")
    assert FIELD_LABELS["admin_email"] == "予約番で使用する管理用メールアドレス"


@pytest.mark.parametrize("label,field", [
    ("施設名", "facility_name"), ("宿泊施設名", "facility_name"), ("ホテル名", "facility_name"),
    ("担当者様のお名前", "contact_name"), ("担当者名", "contact_name"), ("ご担当者名", "contact_name"),
    ("ご担当者様のお名前", "contact_name"), ("お名前", "contact_name"),
    ("担当者様のメールアドレス", "contact_email"), ("担当者メールアドレス", "contact_email"),
    ("ご担当者様のメールアドレス", "contact_email"), ("連絡先メール", "contact_email"),
    ("メールアドレス", "contact_email"),
    ("担当者様の電話番号", "contact_phone"), ("電話番号", "contact_phone"), ("TEL", "contact_phone"),
    ("ＴＥＬ", "contact_phone"), ("連絡先電話番号", "contact_phone"),
    ("予約番で使用する管理用メールアドレス", "admin_email"), ("管理用メールアドレス", "admin_email"),
    ("管理用アドレス", "admin_email"), ("予約番で使用する管理用のメールアドレス", "admin_email"),
])
@pytest.mark.parametrize("form", ["[{l}] {v}", "【{l}】{v}", "{l}：{v}", "■{l}: {v}", "・{l}　{v}", "<{l}>\n{v}"])
def test_it_maps_label_variants_to_fields(label: str, field: str, form: str) -> None:
    values = {"facility_name": "旅館 みどり荘", "contact_name": "佐藤 花子", "contact_email": "sato@midorisou.co.jp",
              "contact_phone": "0467-23-4567", "admin_email": "yoyaku@midorisou.co.jp"}
    lines = [f"[{FIELD_LABELS[f]}] {values[f]}" for f in FIELDS if f != field]
    lines.insert(0, form.format(l=label, v=values[field]))
    facilities = parse_facilities("\n".join(lines))
    assert len(facilities) == 1
    assert getattr(facilities[0], field) == values[field]
    assert facilities[0].problems == ()


def test_the_most_specific_label_wins() -> None:
    text = ("[施設名] ホテル桜\n[担当者様のお名前] 山田\n[担当者様の管理用ではないメールアドレス] yamada@hotel-sakura.jp\n"
            "[担当者様の電話番号] 03-1234-5678\n[予約番で使用する管理用メールアドレス] info@hotel-sakura.jp\n")
    (facility,) = parse_facilities(text)
    assert facility.admin_email == "info@hotel-sakura.jp"


def test_admin_and_contact_addresses_are_not_confused_in_any_order() -> None:
    text = ("管理用メールアドレス：info@hotel-sakura.jp\n担当者様のメールアドレス：yamada@hotel-sakura.jp\n"
            "施設名：ホテル桜\n担当者名：山田 太郎\n電話番号：03-1234-5678\n")
    (facility,) = parse_facilities(text)
    assert facility.admin_email == "info@hotel-sakura.jp"
    assert facility.contact_email == "yamada@hotel-sakura.jp"


def test_a_detail_label_after_the_name_does_not_start_a_new_facility() -> None:
    (facility,) = parse_facilities(GOOD.replace("\n[担当者様のお名前]", "\n[施設名カナ] ホテルサクラ\n[担当者様のお名前]"))
    assert facility == SAKURA


def test_prose_that_starts_with_a_label_word_is_not_a_field() -> None:
    assert parse_facilities("電話番号を変更しました。\n施設名の表記について質問です。\nご担当者様\n") == []


# ------------------------------------------------------------------------------ values

@pytest.mark.parametrize("written,normalised", [
    ("03-1234-5678", "03-1234-5678"),
    ("０３－１２３４－５６７８", "03-1234-5678"),
    ("０３（１２３４）５６７８", "03-1234-5678"),
    ("(03)1234-5678", "03-1234-5678"),
    ("03 1234 5678", "03-1234-5678"),
    ("0312345678", "0312345678"),
    ("+81 3-1234-5678", "03-1234-5678"),
    ("+81-(0)3-1234-5678", "03-1234-5678"),
    ("+81 90 1234 5678", "090-1234-5678"),
    ("03-1234-5678（代表）", "03-1234-5678"),
    ("TEL 03ー1234ー5678", "03-1234-5678"),
])
def test_it_normalises_phone_numbers(written: str, normalised: str) -> None:
    (facility,) = parse_facilities(GOOD.replace("03-1234-5678", written))
    assert facility.contact_phone == normalised
    assert facility.problems == ()


@pytest.mark.parametrize("written", ["03-1234", "なし", "1234-5678-9012-3456", "123456789012"])
def test_it_flags_implausible_phone_numbers(written: str) -> None:
    (facility,) = parse_facilities(GOOD.replace("03-1234-5678", written))
    assert facility.contact_phone is None
    assert facility.problems == (FieldProblem("contact_phone", "invalid", written),)


@pytest.mark.parametrize("written,normalised", [
    ("ｉｎｆｏ＠ｈｏｔｅｌ－ｓａｋｕｒａ．ｊｐ", "info@hotel-sakura.jp"),
    ("Info@Hotel-Sakura.JP", "info@hotel-sakura.jp"),
    ("<info@hotel-sakura.jp>", "info@hotel-sakura.jp"),
    ("ホテル桜 <info@hotel-sakura.jp>", "info@hotel-sakura.jp"),
    ("mailto:info@hotel-sakura.jp", "info@hotel-sakura.jp"),
    ("info@hotel-sakura.jp。", "info@hotel-sakura.jp"),
    ("info@ホテル桜.jp", "info@xn--ddkyb8bu166a.jp"),
    ("info@ＨＯＴＥＬ桜.ＪＰ", "info@xn--hotel-di4k.jp"),
])
def test_it_normalises_admin_addresses_and_domains(written: str, normalised: str) -> None:
    (facility,) = parse_facilities(GOOD.replace("info@hotel-sakura.jp", written))
    assert facility.admin_email == normalised
    assert facility.domain == normalised.split("@")[1]


@pytest.mark.parametrize("written", ["info@hotel-sakura", "info@@hotel-sakura.jp", "info＠hotel,jp", "hotel-sakura.jp",
                                     "山田@hotel-sakura.jp", "info@hotel sakura.jp"])
def test_it_flags_invalid_addresses(written: str) -> None:
    (facility,) = parse_facilities(GOOD.replace("info@hotel-sakura.jp", written))
    assert facility.admin_email is None and facility.domain is None
    assert [(p.field, p.kind) for p in facility.problems] == [("admin_email", "invalid")]


def test_it_names_every_missing_field() -> None:
    (facility,) = parse_facilities("[施設名] ホテル桜\n[予約番で使用する管理用メールアドレス] info@hotel-sakura.jp\n")
    assert [(p.field, p.kind, p.value) for p in facility.problems] == [
        ("contact_name", "missing", None), ("contact_email", "missing", None), ("contact_phone", "missing", None)]


def test_a_closing_line_is_not_taken_as_a_missing_value() -> None:
    text = GOOD.replace("[施設名] ホテル桜", "[施設名]") + "\nよろしくお願いいたします。\n"
    text = "[担当者様のお名前] 山田 太郎\n" + text.replace("[担当者様のお名前] 山田 太郎\n", "")
    text = text.replace("[施設名]\n[担当者様のメールアドレス]", "[担当者様のメールアドレス]")
    text += "[施設名]\n\nよろしくお願いいたします。\n"
    facilities = parse_facilities(text)
    assert facilities[-1].facility_name is None


# ------------------------------------------------------------------------------ sections

def test_quoted_lines_never_make_facilities() -> None:
    assert parse_facilities("設定しました\n" + "".join("> " + line + "\n" for line in GOOD.splitlines())) == []
    assert parse_facilities("設定しました\n" + "".join("＞" + line + "\n" for line in GOOD.splitlines())) == []


@pytest.mark.parametrize("marker", [
    "-----Original Message-----", "----- Original Message -----", "On Tue, Jan 16, 2024 at 10:00 AM Support <support@489ban.net> wrote:",
    "2024/01/16 10:00 に Support さんは書きました:", "2024年1月16日(火) 10:00 Support <support@489ban.net>:",
    "2024/01/16 10:00、Support <support@489ban.net>のメール:",
])
def test_the_original_below_a_reply_marker_is_ignored(marker: str) -> None:
    assert parse_facilities(f"ありがとうございます。\n\n{marker}\n{GOOD}") == []


def test_a_signature_after_the_fields_is_ignored() -> None:
    text = GOOD + "\n＿＿＿＿＿＿＿＿＿＿\nホテル桜 山田\n電話番号: 03-9999-9999\nTEL 03-1111-2222\n"
    assert parse_facilities(text) == [SAKURA]
    assert parse_facilities(GOOD + "-- \nTEL: 03-9999-9999\n施設名: 別館\n") == [SAKURA]


def test_a_signature_without_a_rule_does_not_make_a_facility() -> None:
    assert parse_facilities(GOOD + "\nホテル桜 山田\nTEL: 03-9999-9999\n") == [SAKURA]


def test_only_a_request_subject_without_fields_gives_no_facility() -> None:
    assert parse_facilities("DKIMの設定をお願いします。\n") == []


# ------------------------------------------------------------------------------ decoding

def test_iso2022jp_with_nec_and_ibm_characters_decodes_like_cp50220() -> None:
    # ① and ㈱ are JIS 0x2D21 and 0x2D6A (NEC row 13), which strict ISO-2022-JP rejects.
    raw = b"\x1b$B-!-j\x1b(B"
    assert decode_bytes(raw, "iso-2022-jp") == "①㈱"
    assert decode_bytes("髙".encode("cp932"), "shift_jis") == "髙"
    assert decode_bytes("～".encode("cp932"), "Shift_JIS") == "\uff5e"


def test_it_guesses_when_the_label_lies() -> None:
    assert decode_bytes("設定希望".encode("euc_jp"), "us-ascii") == "設定希望"
    assert decode_bytes("設定希望".encode("cp932"), None) == "設定希望"
    assert decode_bytes("設定希望".encode(), "iso-8859-1") == "設定希望"
    assert decode_bytes("設定希望".encode("cp932"), "utf-8") == "設定希望"


def test_encoded_words_split_and_mislabelled() -> None:
    import base64
    raw = "設定希望".encode()
    header = f"=?UTF-8?B?{base64.b64encode(raw[:4]).decode()}?=\r\n =?UTF-8?B?{base64.b64encode(raw[4:]).decode()}?="
    assert decode_header_value(header) == "設定希望"
    assert decode_header_value("Re: =?utf-8?q?=E8=A8=AD=E5=AE=9A?= ok") == "Re: 設定 ok"
    assert decode_header_value("=?unknown-charset?B?" + base64.b64encode("設定".encode("cp932")).decode() + "?=") == "設定"


def test_html_to_text_keeps_lines_and_marks_blockquotes() -> None:
    text = html_to_text("<p>a&nbsp;b</p><table><tr><td>施設名</td><td>x&amp;y</td></tr></table><blockquote>q</blockquote>")
    assert text.splitlines() == ["a b", "施設名  x&y", "> q"]


# ------------------------------------------------------------------------------ never answered

def _mail(headers: str, body: str = GOOD) -> bytes:
    return (headers + "\nSubject: =?UTF-8?B?REtJTeOAgURNQVJD6Kit5a6a5biM5pyb?=\nContent-Type: text/plain; charset=UTF-8\n\n" + body).encode()


@pytest.mark.parametrize("headers,reason_start", [
    ("From: a@hotel.jp\nAuto-Submitted: auto-replied", "auto-submitted"),
    ("From: a@hotel.jp\nAuto-Submitted: auto-generated; owner-email=x@y", "auto-submitted"),
    ("From: a@hotel.jp\nPrecedence: junk", "precedence"),
    ("From: a@hotel.jp\nPrecedence: list", "precedence"),
    ("From: a@hotel.jp\nList-Id: <x.example.org>", "mailing list"),
    ("From: a@hotel.jp\nList-Unsubscribe: <mailto:x@example.org>", "mailing list"),
    ("From: a@hotel.jp\nX-Auto-Response-Suppress: OOF", "auto-response"),
    ("From: a@hotel.jp\nX-Autoreply: yes", "auto-reply"),
    ("From: a@hotel.jp\nX-Autorespond: yes", "auto-reply"),
    ("From: a@hotel.jp\nReturn-Path: <>", "bounce"),
    ("From: Mail Delivery System <MAILER-DAEMON@hotel.jp>", "bounce"),
    ("From: postmaster@hotel.jp", "bounce"),
    ("From: a@hotel.jp\nX-Dkimbot-Loop: anything", "loop"),
    ("From: Support <SUPPORT@489ban.net>", "own address"),
])
def test_it_never_answers_machines_lists_or_itself(headers: str, reason_start: str) -> None:
    parsed = parse_message(_mail(headers), own_addresses=["support@489ban.net"])
    assert parsed.no_reply_reason is not None and parsed.no_reply_reason.startswith(reason_start)
    assert parsed.facilities == ()
    assert parsed.is_request


def test_it_answers_a_plain_human_request() -> None:
    parsed = parse_message(_mail("From: Yamada <Yamada@Hotel-Sakura.jp>\nAuto-Submitted: no\nPrecedence: normal"))
    assert parsed.no_reply_reason is None
    assert parsed.from_addr == "yamada@hotel-sakura.jp"
    assert parsed.facilities == (SAKURA,)


def test_it_reports_a_multipart_report_as_a_bounce() -> None:
    raw = (b"From: a@hotel.jp\nContent-Type: multipart/report; report-type=delivery-status; boundary=b\n\n"
           b"--b\nContent-Type: text/plain\n\nfailed\n--b\nContent-Type: message/delivery-status\n\nAction: failed\n--b--\n")
    assert parse_message(raw).no_reply_reason.startswith("bounce")
