"""Property tests of bot/core/request.py: it never crashes, and formatting never changes meaning."""

from __future__ import annotations

import base64

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bot.core.request import FIELD_LABELS, FIELDS, parse_facilities, parse_message

# Values as a facility would write them, already in their normalised form.
NAMES = ["ホテル桜", "旅館 みどり荘", "髙橋旅館", "Hotel Sakura Kyoto", "海辺の宿 潮騒", "(株)さくら ホテル1号館"]
PEOPLE = ["山田 太郎", "佐藤 花子", "髙橋 一郎", "Taro Yamada", "中村"]
EMAILS = ["yamada@hotel-sakura.jp", "sato@midorisou.co.jp", "front.desk+dkim@ryokan-b.ne.jp", "info@xn--ddkyb8bu166a.jp"]
PHONES = ["03-1234-5678", "0467-23-4567", "090-1234-5678", "0120-123-456", "0312345678"]

LABEL_SPELLINGS = {
    "facility_name": ["施設名", "宿泊施設名"],
    "contact_name": ["担当者様のお名前", "担当者名", "ご担当者様のお名前"],
    "contact_email": ["担当者様のメールアドレス", "担当者メールアドレス", "連絡先メール"],
    "contact_phone": ["担当者様の電話番号", "電話番号", "TEL"],
    "admin_email": ["予約番で使用する管理用メールアドレス", "管理用メールアドレス", "管理用アドレス"],
}
BRACKETS = [("[", "]"), ("［", "］"), ("【", "】"), ("<", ">"), ("■", ""), ("・", ""), ("", "")]
SEPARATORS = [" ", "　", ":", "：", ": ", "：　", "\t"]


def fullwidth(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else ("\u3000" if c == " " else c) for c in text)


facility_values = st.fixed_dictionaries({
    "facility_name": st.sampled_from(NAMES), "contact_name": st.sampled_from(PEOPLE),
    "contact_email": st.sampled_from(EMAILS), "contact_phone": st.sampled_from(PHONES),
    "admin_email": st.sampled_from(EMAILS),
})


# Names are kept as written (only their spacing is tidied); addresses and numbers are
# read through NFKC, so their full-width forms mean the same.
AS_WRITTEN = ("facility_name", "contact_name")


@st.composite
def formatted_line(draw: st.DrawFn, field: str, value: str) -> tuple[str, str]:
    """(the line, the value the parser must give for it)."""
    label = draw(st.sampled_from(LABEL_SPELLINGS[field]))
    opener, closer = draw(st.sampled_from(BRACKETS))
    next_line = draw(st.booleans())
    if next_line and opener in ("", "■", "・") and field == "contact_name" and label == "担当者名":
        label = "担当者様のお名前"
    expected = value
    if draw(st.booleans()):
        value = fullwidth(value)
        if field in AS_WRITTEN:
            expected = " ".join(value.split())
    indent = draw(st.sampled_from(["", " ", "　", "　　"]))
    if next_line:
        return f"{opener}{label}{closer}\n{indent}{value}", expected
    sep = draw(st.sampled_from(SEPARATORS))
    if not opener and sep.strip() == "" and field == "facility_name" and " " in value and label == "施設名":
        sep = "："
    return f"{opener}{label}{closer}{sep}{value}", expected


@st.composite
def request_text(draw: st.DrawFn) -> tuple[str, list[dict[str, str]]]:
    facilities = draw(st.lists(facility_values, min_size=1, max_size=3))
    blocks = []
    expected = []
    for values in facilities:
        order = list(FIELDS)
        # Order within a block may change, but the block must open with a field that
        # does not repeat the previous block's last one (a repeat is what starts a block).
        rest = draw(st.permutations(order[1:]))
        order = ["facility_name", *rest]
        drawn = {field: draw(formatted_line(field, values[field])) for field in order}
        lines = [drawn[field][0] for field in order]
        expected.append({field: drawn[field][1] for field in FIELDS})
        gap = draw(st.sampled_from(["\n", "\n\n", "\n\n\n"]))
        blocks.append(gap.join(lines) if draw(st.booleans()) else "\n".join(lines))
    separator = draw(st.sampled_from(["\n\n", "\n", "\n──────────\n"]))
    greeting = draw(st.sampled_from(["", "ご担当者様\n\nいつもお世話になっております。\n\n"]))
    closing = draw(st.sampled_from(["", "\n\nよろしくお願いいたします。\n", "\n-- \nホテル桜 山田\nTEL 03-9999-9999\n"]))
    return greeting + separator.join(blocks) + closing, expected


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request_text())
def test_a_reformatted_request_yields_the_same_facilities(case: tuple[str, list[dict[str, str]]]) -> None:
    text, facilities = case
    parsed = parse_facilities(text)
    assert [{field: getattr(f, field) for field in FIELDS} for f in parsed] == facilities, text
    assert all(f.problems == () for f in parsed)


@settings(max_examples=50, deadline=None)
@given(request_text(), st.sampled_from(["utf-8", "cp932", "euc_jp"]), st.sampled_from(["8bit", "base64"]))
def test_the_same_request_reads_the_same_in_every_charset(case: tuple[str, list[dict[str, str]]],
                                                          charset: str, cte: str) -> None:
    text, facilities = case
    try:
        body = text.replace("\n", "\r\n").encode(charset)
    except UnicodeEncodeError:
        assume(False)  # 髙 has no EUC-JP code; such a facility writes in another charset
        return
    if cte == "base64":
        body = base64.encodebytes(body)
    label = {"cp932": "Shift_JIS", "euc_jp": "EUC-JP"}.get(charset, charset)
    raw = (f"From: a@hotel-sakura.jp\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
           f"Content-Type: text/plain; charset={label}\r\nContent-Transfer-Encoding: {cte}\r\n\r\n").encode() + body
    parsed = parse_message(raw)
    assert [{field: getattr(f, field) for field in FIELDS} for f in parsed.facilities] == facilities


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=3000))
def test_arbitrary_bytes_never_crash(raw: bytes) -> None:
    parse_message(raw)


MIME_PIECES = [
    b"From: ", b"Subject: ", b"Content-Type: ", b"multipart/mixed; boundary=x", b"text/html; charset=",
    b"iso-2022-jp", b"shift_jis", b"utf-8", b"Content-Transfer-Encoding: ", b"base64", b"quoted-printable",
    b"=?utf-8?B?", b"=?iso-2022-jp?Q?", b"?=", b"--x\r\n", b"--x--", b"\r\n", b"\n", b"\r\n\r\n", b"\x1b$B",
    b"\x1b(B", b"\x1b(I", b"<", b">", b"<br>", b"<blockquote>", b"&amp;", b"&#x", b"[", b"]", b"\x82\xa0",
    b"\xa4\xa2", b"\xe3\x81\x82", b"=E3=81", b"format=flowed; delsp=yes", b"message/rfc822",
    b"multipart/report", "[施設名]".encode(), b"@", b"Auto-Submitted: ", b"; charset*=utf-8''",
    b"name=\"a.pdf\"", b"Content-Disposition: attachment",
]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(MIME_PIECES), st.binary(max_size=8)), max_size=60))
def test_mime_shaped_garbage_never_crashes(pieces: list[bytes]) -> None:
    parsed = parse_message(b"".join(pieces))
    assert isinstance(parsed.body_text, str)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_arbitrary_text_never_crashes_the_field_reader(text: str) -> None:
    for facility in parse_facilities(text):
        assert {p.field for p in facility.problems} <= set(FIELD_LABELS)
