"""What a stranger's mail can put into a case through its headers and names, through the
real intake (Maildir), real BIND and the SMTP sink:

* bidi overrides and zero-width characters in a facility name never reach the case, the
  reply's subject or body, or staff (they make one name read as another);
* a From or Reply-To that is not one valid address gets no reply anywhere (it could be a
  third party's), no case and no key: staff get one note;
* the operator's own addresses (staff, anything at the own domains) are never a
  facility's requester or contact: a request "from" or "reply to" staff is a staff note.
"""

from __future__ import annotations

import email.policy
import unicodedata
import uuid
from email.message import EmailMessage
from typing import Any

import pytest
from test_request_routing import make_bot

from bot.app.jobs import run_pass
from bot.core.request import parse_message

pytestmark = pytest.mark.servers

SUPPORT = "support@489ban.net"
STAFF = "staff@489ban.net"  # configkit's staff_cc


def request(domain: str, names: list[tuple[str, str]], *, sender: str | None = None,
            reply_to: str | None = None, contact: str | None = None) -> bytes:
    """A request for (facility name, admin address) pairs, From ``sender``."""
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = sender if sender is not None else f"yamada@{domain}"
    if reply_to is not None:
        msg["Reply-To"] = reply_to
    msg["To"] = SUPPORT
    msg["Subject"] = "DKIM、DMARC設定希望"
    msg["Message-ID"] = f"<s-{uuid.uuid4().hex}@{domain}>"
    msg.set_content("".join(
        f"[施設名]\n{name}\n[担当者様のお名前]\n山田 太郎\n"
        f"[担当者様のメールアドレス]\n{contact or f'yamada@{domain}'}\n"
        f"[担当者様の電話番号]\n03-1234-5678\n[予約番で使用する管理用メールアドレス]\n{admin}\n\n"
        for name, admin in names), charset="utf-8")
    return msg.as_bytes()


def text_of(raw: bytes) -> str:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    body = msg.get_body(preferencelist=("plain",))
    return f"{msg['Subject']}\n{body.get_content() if body is not None else ''}"


def invisible(text: str) -> list[str]:
    return [f"U+{ord(c):04X}" for c in text if unicodedata.category(c) in ("Cf", "Cc") and c not in "\r\n\t"]


def test_bidi_and_zero_width_characters_in_names_reach_no_case_and_no_mail(
        tmp_path: Any, bind: Any, smtp: Any) -> None:
    domain = f"bidi-{uuid.uuid4().hex[:6]}.test"
    bind.add_zone(domain)
    smtp.clear()
    bot, inbox = make_bot(tmp_path, bind, smtp)
    # The second facility is refused (a free-mail admin address): its name is in the
    # reply's subject, which staff get in Cc.
    inbox.deliver(request(domain, [("ホテル\u202eるくさ\u202c\u200b本館", f"info@{domain}"),
                                   ("旅館\u2066みどり\u2069\ufeff\u00ad", "midori@gmail.com")]))
    result = run_pass(bot)
    assert result.messages == 1 and not result.errors
    assert sorted(c.facility or "" for c in bot.store.list_cases()) == ["ホテルるくさ本館", "旅館みどり"]
    [reply] = smtp.messages
    text = text_of(reply.raw)
    assert "旅館みどり" in str(email.message_from_bytes(reply.raw, policy=email.policy.default)["Subject"])
    assert "ホテルるくさ本館" in text
    assert invisible(text) == []
    bot.close()


def with_raw_from(raw: bytes, value: str) -> bytes:
    """``raw`` with its From header replaced by ``value`` as a mailer wrote it (UTF-8 bytes,
    no encoding, no checks): the forms a library would refuse to build."""
    head, sep, body = raw.partition(b"\n\n")
    lines = [line for line in head.split(b"\n") if not line.lower().startswith(b"from:")]
    return b"\n".join([b"From: " + value.encode("utf-8"), *lines]) + sep + body


def staff_only(smtp: Any) -> list[str]:
    """The subjects of what the sink received, asserting every mail went to staff alone."""
    for m in smtp.messages:
        assert m.rcpt_tos == [STAFF], m.rcpt_tos
    return [str(email.message_from_bytes(m.raw, policy=email.policy.default)["Subject"]) for m in smtp.messages]


BAD_SENDERS = [
    "info@{victim}@evil.test",        # used to become the requester "@evil.test"
    "Yamada Taro info@{domain}",      # display text without <>: a requester with spaces
    "山田 太郎 info@{domain}",          # the same in Japanese, raw UTF-8
    "info@{domain} <bob@evil.test",   # an unclosed angle
    "info@{domain})<bob@evil.test>",  # the parseaddr confusion (CVE-2023-27043)
    "info@bad..{domain}",
    # Display-name defects are tolerated (Y. Yamada, encoded-words in quotes) only with
    # the address in <>: these stay refused.
    "Y. Yamada info@{domain}",
    '"=?UTF-8?B?5bGx55Sw?=" info@{domain}',
    '"=?us-ascii?Q?info?="@{domain}',  # decodes to info@…, which is not what it says
    "Y. Yamada <info@{victim}@evil.test>",
]


@pytest.mark.parametrize("form", BAD_SENDERS)
def test_a_sender_that_is_not_one_valid_address_gets_nothing_and_staff_are_told_once(
        tmp_path: Any, bind: Any, smtp: Any, form: str) -> None:
    domain = f"snd-{uuid.uuid4().hex[:6]}.test"
    bind.add_zone(domain)
    smtp.clear()
    bot, inbox = make_bot(tmp_path, bind, smtp)
    sender = form.format(domain=domain, victim=f"victim-{domain}")
    inbox.deliver(with_raw_from(request(domain, [("ホテルあおい", f"info@{domain}")]), sender))
    result = run_pass(bot)
    assert result.messages == 1 and not result.errors
    assert bot.store.list_cases() == []  # no case, no key: nothing for an unknown sender
    assert bot.store.domain_keys(domain) == []
    [subject] = staff_only(smtp)
    assert "ESCALATION" in subject and "sender" in subject
    note = email.message_from_bytes(smtp.messages[0].raw, policy=email.policy.default)
    assert "From is not" in note.get_body(preferencelist=("plain",)).get_content()
    inbox.deliver(request(domain, [("ホテルあおい", f"info@{domain}")]))  # a later good mail
    result = run_pass(bot)  # the bad one is not noted again; the good one is answered
    assert result.messages == 1 and not result.errors
    assert len(smtp.messages) == 2 and f"yamada@{domain}" in smtp.messages[1].rcpt_tos
    bot.close()


@pytest.mark.parametrize("headers", [
    {"reply_to": f"Staff <{STAFF}>"},               # replies pointed at staff
    {"sender": f"Support Staff <{STAFF}>"},         # a forged staff From
    {"reply_to": "ops@mail.489ban.net"},            # anything at (below) the own domain
])
def test_a_request_whose_reply_would_go_to_the_operator_is_a_staff_note(
        tmp_path: Any, bind: Any, smtp: Any, headers: dict[str, str]) -> None:
    domain = f"own-{uuid.uuid4().hex[:6]}.test"
    bind.add_zone(domain)
    smtp.clear()
    bot, inbox = make_bot(tmp_path, bind, smtp)
    inbox.deliver(request(domain, [("ホテルあおい", f"info@{domain}")], **headers))
    result = run_pass(bot)
    assert result.messages == 1 and not result.errors
    assert bot.store.list_cases() == []  # staff never become a stranger's requester
    [subject] = staff_only(smtp)
    assert "ESCALATION" in subject
    note = email.message_from_bytes(smtp.messages[0].raw, policy=email.policy.default)
    assert "the operator's own address" in note.get_body(preferencelist=("plain",)).get_content()
    bot.close()


def test_a_staff_address_named_as_contact_is_no_contact(tmp_path: Any, bind: Any, smtp: Any) -> None:
    domain = f"ctc-{uuid.uuid4().hex[:6]}.test"
    bind.add_zone(domain)
    smtp.clear()
    bot, inbox = make_bot(tmp_path, bind, smtp)
    inbox.deliver(request(domain, [("ホテルあおい", f"info@{domain}")], contact=STAFF))
    result = run_pass(bot)
    assert result.messages == 1 and not result.errors
    [case] = bot.store.list_cases()
    assert case.contact_email is None and case.state == "needs_info"
    assert [p["field"] for p in case.problems] == ["contact_email"]
    [reply] = smtp.messages
    assert reply.rcpt_tos == [f"yamada@{domain}", STAFF]  # the requester; staff in Cc as always
    bot.close()


@pytest.mark.parametrize(("value", "address", "problem"), [
    ("info@hotel.jp", "info@hotel.jp", None),
    ("=?utf-8?b?5bGx55Sw?= <info@hotel.jp>", "info@hotel.jp", None),
    ("山田 <info@ホテル.jp>", "info@xn--ddkyb8b.jp", None),
    ("info@hotel.jp, other@evil.test", "info@hotel.jp", None),  # the first is read
    ("\r\n =?utf-8?b?5bGx55Sw?=\r\n <info@hotel.jp>", "info@hotel.jp", None),  # folded, as a long one is
    ("info@victim.jp@evil.test", None, "From is not one valid address"),
    ("Yamada Taro info@hotel.jp", None, "From is not one valid address"),
    ("やまだ@hotel.jp", None, "From is not one valid address"),
    ('"a,b"@evil.test', None, "From is not an address the bot can answer"),
    ("info@[192.0.2.1]", None, "From is not an address the bot can answer"),
    ("Y. Yamada <info@hotel.jp>", "info@hotel.jp", None),
    ('"=?ISO-2022-JP?B?GyRCOzNFRBsoQg==?=" <info@hotel.jp>', "info@hotel.jp", None),
    ('"=?us-ascii?Q?info?="@evil.test', None, "From is not one valid address"),
    ('"=?UTF-8?B?5bGx55Sw?=" <"=?us-ascii?Q?x?="@evil.test>', None, "From is not one valid address"),
    ('"=?UTF-8?B?5bGx55Sw?=" <info@hotel.jp>bob@evil.test', None, "From is not one valid address"),
    pytest.param("x" * 2000 + "@hotel.jp", None, "From is 2009 characters long", id="too-long"),
    ("Staff <STAFF@489ban.net>", "staff@489ban.net", "From is the operator's own address"),
    ("ops+x@partner.example", "ops+x@partner.example", "From is the operator's own address"),
])
def test_the_sender_is_read_strictly(value: str, address: str | None, problem: str | None) -> None:
    raw = f"From: {value}\nSubject: DKIM、DMARC設定希望\nMessage-ID: <x@y>\n\n[施設名] a\n".encode()
    parsed = parse_message(raw, own_addresses=[SUPPORT], staff_addresses=["ops@partner.example"],
                           own_domains=["489ban.net"])
    assert parsed.from_addr == address
    assert (parsed.sender_problem or "").startswith(problem or "") and bool(parsed.sender_problem) == bool(problem)
    if problem:
        assert parsed.reply_address is None and parsed.facilities == ()


# ---------------------------------------------------------------------------------------
# Legitimate senders as Japanese mailers write them: each must still be answered.

def _b(charset: str, text: str) -> str:
    """An RFC 2047 B encoded-word of ``text`` in ``charset``."""
    import base64
    codec = {"ISO-2022-JP": "iso2022_jp"}.get(charset, charset)
    return f"=?{charset}?B?{base64.b64encode(text.encode(codec)).decode()}?="


def _q(charset: str, text: str) -> str:
    """An RFC 2047 Q encoded-word of ``text`` in ``charset``."""
    codec = {"ISO-2022-JP": "iso2022_jp"}.get(charset, charset)
    return f"=?{charset}?Q?" + "".join(f"={b:02X}" for b in text.encode(codec)) + "?="


# (form, From as raw header bytes, the address the reply must go to); {a} is the
# address at the facility's domain {d}. The forms marked "refused before" were mail that
# the strict read of 29f4f4e left unanswered (no reply, no case).
_SJIS_SO = "ソフト表".encode("cp932")  # second bytes are 0x5C ("\"): the classic Shift_JIS trap
GOOD_SENDERS: list[tuple[str, bytes, str]] = [
    ("b-iso-2022-jp", f"{_b('ISO-2022-JP', '山田太郎')} <{{a}}>".encode(), "{a}"),
    ("b-shift_jis", f"{_b('Shift_JIS', '山田太郎')} <{{a}}>".encode(), "{a}"),
    ("b-euc-jp", f"{_b('EUC-JP', '山田太郎')} <{{a}}>".encode(), "{a}"),
    ("b-utf-8", f"{_b('UTF-8', '山田太郎')} <{{a}}>".encode(), "{a}"),
    ("q-iso-2022-jp", f"{_q('ISO-2022-JP', '山田太郎')} <{{a}}>".encode(), "{a}"),
    ("q-shift_jis", f"{_q('Shift_JIS', '山田太郎')} <{{a}}>".encode(), "{a}"),
    ("q-utf-8", f"{_q('UTF-8', '山田太郎')} <{{a}}>".encode(), "{a}"),
    ("encoded-after-quote", f'"Hotel" {_b("UTF-8", "山田")} <{{a}}>'.encode(), "{a}"),
    # refused before: an encoded-word inside quotes (Becky!, old Outlook Express, web mail)
    ("encoded-in-quotes", f'"{_b("ISO-2022-JP", "山田太郎")}" <{{a}}>'.encode(), "{a}"),
    ("encoded-in-quotes-sjis", f'"{_b("Shift_JIS", "山田太郎")}" <{{a}}>'.encode(), "{a}"),
    ("encoded-and-text-in-quotes", f'"{_b("ISO-2022-JP", "山田")} Taro" <{{a}}>'.encode(), "{a}"),
    ("encoded-in-quotes-folded", (f'"{_b("ISO-2022-JP", "山田太郎ホテル")}\r\n'
                                  f' {_b("ISO-2022-JP", "フロント")}" <{{a}}>').encode(), "{a}"),
    ("encoded-comma-in-quotes", f'"{_b("UTF-8", "山田, 太郎")}" <{{a}}>'.encode(), "{a}"),
    ("encoded-then-quote", f'{_b("ISO-2022-JP", "山田")}"Front" <{{a}}>'.encode(), "{a}"),
    ("encoded-folded", (f'{_b("ISO-2022-JP", "山田太郎ホテル")}\r\n {_b("ISO-2022-JP", "フロント係")}'
                        f'\r\n <{{a}}>').encode(), "{a}"),
    ("raw-utf-8", "山田太郎 <{a}>".encode(), "{a}"),
    ("raw-utf-8-quoted", '"山田 太郎" <{a}>'.encode(), "{a}"),
    ("raw-shift_jis", "山田太郎 <".encode("cp932") + b"{a}>", "{a}"),
    ("raw-euc-jp", "山田太郎 <".encode("euc_jp") + b"{a}>", "{a}"),
    # refused before: Shift_JIS whose second byte is "\" (ソ, 表, 能, 申 ...), raw
    ("raw-shift_jis-5c", _SJIS_SO + b" <{a}>", "{a}"),
    ("raw-shift_jis-5c-quoted", b'"' + _SJIS_SO + b'" <{a}>', "{a}"),
    ("raw-iso-2022-jp", "山田太郎".encode("iso2022_jp") + b" <{a}>", "{a}"),  # refused before
    ("initial-dot", b"Y. Yamada <{a}>", "{a}"),  # refused before (obs-phrase)
    ("japanese-dot", "山田.太郎 <{a}>".encode(), "{a}"),  # refused before
    ("parenthesised-note", "山田 (フロント) <{a}>".encode(), "{a}"),
    ("bare", b"{a}", "{a}"),
    ("bare-with-comment", "{a} (山田太郎)".encode(), "{a}"),
    ("angle-only", b"<{a}>", "{a}"),
    ("upper-case", b"Yamada <YAMADA@{D}>", "{a}"),
    ("subaddress", b"Yamada <yamada+dkim@{d}>", "yamada+dkim@{d}"),
    ("long-folded", (f'{_b("UTF-8", "ホテル山田の予約担当フロント係の山田太郎")}\r\n'
                     f' {_b("UTF-8", "（代表）長い長い名前")}\r\n <{{a}}>').encode(), "{a}"),
    ("list-style", b'"Hotel via support" <{a}>', "{a}"),
    ("outlook-comma", b'"Yamada, Taro" <{a}>', "{a}"),
    ("idn-punycode", b"Yamada <yamada@{d}>", "{a}"),  # {d}: xn--… for the idn- forms
    ("idn-raw-utf-8", "yamada@{U}".encode(), "{a}"),  # {U}: the same domain in UTF-8
    ("idn-raw-utf-8-named", "山田 <yamada@{U}>".encode(), "{a}"),
]


def raw_request(domain: str, from_: bytes, reply_to: bytes | None = None) -> tuple[bytes, str]:
    """A request whose From (and Reply-To) are the raw header bytes given."""
    raw = request(domain, [("ホテルあおい", f"info@{domain}")])
    head, sep, body = raw.partition(b"\r\n\r\n")
    lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"from:")]
    extra = [b"Reply-To: " + reply_to] if reply_to is not None else []
    msg_id = str(email.message_from_bytes(raw, policy=email.policy.SMTP)["Message-ID"]).strip()
    return b"\r\n".join([b"From: " + from_, *extra, *lines]) + sep + body, msg_id


def _fill(template: bytes, domain: str) -> bytes:
    return (template.replace(b"{a}", f"yamada@{domain}".encode()).replace(b"{d}", domain.encode())
            .replace(b"{D}", domain.upper().encode()).replace(b"{U}", domain.encode().decode("idna").encode()))


def test_senders_as_japanese_mailers_write_them_are_answered_through_dovecot(
        tmp_path: Any, dovecot: Any, bind: Any, smtp: Any) -> None:
    """Every form in one mailbox on the real Dovecot, one pass: each gets its reply at
    its own address and its case; none is a staff note."""
    from conftest import SUPPORT_ADDRESS
    from test_intake_dovecot import one_pass, open_bot, write_config

    dovecot.reset(SUPPORT_ADDRESS)
    smtp.clear()
    cfg_path = write_config(tmp_path, dovecot, bind, smtp)
    expected: dict[str, tuple[str, str]] = {}  # Message-ID -> (form, reply address)
    for form, template, address in GOOD_SENDERS:
        domain = f"{form.replace('_', '-')}-{uuid.uuid4().hex[:4]}.test"
        if form.startswith("idn-"):
            domain = f"旅館{uuid.uuid4().hex[:4]}.test".encode("idna").decode()
        bind.add_zone(domain)
        raw, msg_id = raw_request(domain, _fill(template, domain))
        dovecot.append(SUPPORT_ADDRESS, raw)
        expected[msg_id] = (form, _fill(address.encode(), domain).decode())
    one_pass(cfg_path)
    answered = {str(m.message["In-Reply-To"]).strip(): m.rcpt_tos[0] for m in smtp.messages
                if m.rcpt_tos != [STAFF]}
    wrong = {form: answered.get(mid) for mid, (form, addr) in expected.items() if answered.get(mid) != addr}
    notes = [str(m.message["Subject"]) for m in smtp.messages if m.rcpt_tos == [STAFF]]
    assert wrong == {}, f"not answered at the From address: {wrong}; staff notes: {notes}"
    bot = open_bot(cfg_path)
    try:
        requesters = sorted(c.requester for c in bot.store.list_cases())
    finally:
        bot.close()
    assert requesters == sorted(addr for _, addr in expected.values())


@pytest.mark.parametrize(("from_", "reply_to"), [
    ("Yamada <yamada@{d}>", "Front Desk <front@{d}>"),  # Reply-To differs, same domain
    ('"Yamada, Taro" <yamada@{d}>', '"{enc}" <front@{d}>'),
    ("Y. Yamada <yamada@{d}>", "Y. Front <front@{d}>"),
], ids=["plain", "outlook-comma-and-encoded-in-quotes", "initial-dots"])
def test_a_reply_to_at_the_same_domain_is_answered_through_the_maildir(
        tmp_path: Any, bind: Any, smtp: Any, from_: str, reply_to: str) -> None:
    domain = f"rto-{uuid.uuid4().hex[:6]}.test"
    bind.add_zone(domain)
    smtp.clear()
    bot, inbox = make_bot(tmp_path, bind, smtp)
    fill = {"d": domain, "enc": _b("ISO-2022-JP", "フロント")}
    raw, _ = raw_request(domain, from_.format(**fill).encode(), reply_to.format(**fill).encode())
    inbox.deliver(raw)
    result = run_pass(bot)
    assert result.messages == 1 and not result.errors
    [case] = bot.store.list_cases()
    [reply] = smtp.messages
    assert reply.rcpt_tos[0] == f"front@{domain}" and STAFF in reply.rcpt_tos
    assert case.facility == "ホテルあおい"
    bot.close()


@pytest.mark.parametrize(("value", "address"), [
    ("ソフト表 <info@hotel.jp>".encode("cp932"), "info@hotel.jp"),   # 0x5C second bytes
    ("山田 <info@hotel.jp>".encode("euc_jp"), "info@hotel.jp"),
    ("山田太郎".encode("iso2022_jp") + b" <info@hotel.jp>", "info@hotel.jp"),  # raw JIS
    (b"info\x83@victim.jp <x@evil.test>", None),  # a lead byte would swallow the "@"
    (b"\x83<attacker@evil.test> <victim@hotel.jp>", None),  # ... or the "<"
])
def test_raw_8bit_senders_are_decoded_only_when_the_structure_is_kept(value: bytes, address: str | None) -> None:
    raw = b"From: " + value + b"\nSubject: x\nMessage-ID: <x@y>\n\nbody\n"
    parsed = parse_message(raw)
    assert parsed.from_addr == address and bool(parsed.sender_problem) == (address is None)
