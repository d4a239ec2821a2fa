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
