"""Issue 11: a case belongs to its parties, and the bot mails no third party.

Through real Dovecot (the support mailbox), BIND (the DNS the bot asks) and the SMTP
sink. Before the fix: a second request from a stranger replaced a case's requester (the
DKIM-active mail went to the stranger); `Re: [DKIM-0001]` with new fields from a
stranger rewrote a needs_info case; a stranger's 「1024ビットで」 rekeyed someone
else's case; one mail listing 50 facilities with `victim+N@target.example` contacts was
answered to 52 recipients, and 20 such mails made 1,000 cases and keys.
"""

from __future__ import annotations

import email
import email.policy
import uuid
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path

import pytest
from configkit import dns, imap, service, smtp_out, write_toml
from conftest import SUPPORT_ADDRESS
from test_e2e import body_of

from bot.app.jobs import Bot, run_pass
from bot.config import load_config
from bot.core.authority import fold_address, reply_standing

pytestmark = pytest.mark.servers
PASSWORD = "pw-parties"
STAFF = "staff@489ban.net"


def mail(frm: str, subject: str, body: str, *, in_reply_to: str | None = None) -> bytes:
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = frm
    msg["To"] = SUPPORT_ADDRESS
    msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = make_msgid(domain="sender.test")
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
        msg["References"] = in_reply_to
    msg.set_content(body, charset="utf-8")
    return msg.as_bytes()


def block(name: str, domain: str, contact: str | None = None) -> str:
    return (f"[施設名]\n{name}\n[担当者様のお名前]\n山田 太郎\n"
            f"[担当者様のメールアドレス]\n{contact or 'yamada@' + domain}\n[担当者様の電話番号]\n03-1234-5678\n"
            f"[予約番で使用する管理用メールアドレス]\ninfo@{domain}\n")


class World:
    def __init__(self, tmp_path: Path, dovecot, bind, smtp, monkeypatch) -> None:
        self.tag = uuid.uuid4().hex[:6]
        self.user = f"support-{self.tag}@489ban.net"
        dovecot.add_user(self.user, PASSWORD)
        monkeypatch.setenv("TEST_IMAP_PASSWORD", PASSWORD)
        smtp.clear()
        self.cfg = load_config(write_toml(tmp_path / "c.toml", {
            "service": service(max_mails_per_address_per_day=100),
            "intake": imap(dovecot, self.user),
            "outbound": smtp_out(smtp),
            "dns": dns(bind),
            "keys": {"bits": 1024},
            "schedule": {"check_interval_seconds": 3600},
            "state": {"dir": str(tmp_path / "state")},
        }))
        self.bot = Bot.open(self.cfg)
        self.dovecot, self.smtp = dovecot, smtp

    def deliver(self, raw: bytes) -> None:
        self.dovecot.append(self.user, raw)

    def run(self) -> list:
        before = len(self.smtp.messages)
        run_pass(self.bot)
        return self.smtp.messages[before:]


def to_of(m) -> set[str]:
    return {a.lower() for a in m.rcpt_tos}


def test_a_strangers_repeat_request_does_not_take_the_case(tmp_path, dovecot, bind, smtp, monkeypatch):
    w = World(tmp_path, dovecot, bind, smtp, monkeypatch)
    domain = f"ryokan-{w.tag}.test"
    w.deliver(mail(f"yamada@{domain}", "DKIM、DMARC設定希望", block("旅館A", domain)))
    w.run()
    [case] = w.bot.store.list_cases()
    w.deliver(mail("mallory@evil.example", "DKIM、DMARC設定希望", block("旅館A", domain)))
    new = w.run()
    after = w.bot.store.get_case(case.id)
    assert after.requester == f"yamada@{domain}" and after.selectors == case.selectors
    # Neither case is proven yet: the stranger's request is a case with a key of its own
    # (tests/test_security_squatting.py), which learns nothing of the facility's.
    [theirs] = [c for c in w.bot.store.list_cases() if c.id != case.id]
    assert theirs.requester == "mallory@evil.example" and set(theirs.selectors).isdisjoint(case.selectors)
    [to_mallory] = [m for m in new if "mallory@evil.example" in to_of(m)]
    text = body_of(to_mallory.raw)
    assert case.ref not in text and f"{case.selector}._domainkey" not in text
    # The contact it names (the facility's yamada@) is not mailed before any proof.
    assert not [m for m in new if f"yamada@{domain}" in to_of(m)]


def needs_info_case(w: World, domain: str):
    """sato@domain's request without the admin address: the one case waits in needs_info."""
    incomplete = block("ホテルB", domain).replace(f"info@{domain}", "")
    w.deliver(mail(f"sato@{domain}", "DKIM、DMARC設定希望", incomplete))
    w.run()
    [case] = w.bot.store.list_cases()
    assert case.state == "needs_info"
    return case


def test_a_strangers_reply_does_not_rewrite_a_needs_info_case(tmp_path, dovecot, bind, smtp, monkeypatch):
    w = World(tmp_path, dovecot, bind, smtp, monkeypatch)
    domain = f"hotel-{w.tag}.test"
    case = needs_info_case(w, domain)
    evil = f"evil-{w.tag}.test"
    w.deliver(mail("mallory@evil.example", f"Re: [{case.ref}] 修正します", block("ホテルB", evil, "m@evil.example")))
    new = w.run()
    after = w.bot.store.get_case(case.id)
    assert (after.requester, after.contact_email, after.domain, after.state) == \
        (case.requester, case.contact_email, None, "needs_info")
    assert [c.id for c in w.bot.store.list_cases()] == [case.id]
    assert not [m for m in new if "mallory@evil.example" in to_of(m)]
    assert "reply_refused" in [e["kind"] for e in w.bot.store.events(case.id)]
    assert any(to_of(m) == {STAFF} for m in new)

    # The facility itself, answering the bot's mail, completes it.
    ask = next(m for m in smtp.messages if f"sato@{domain}" in to_of(m))
    w.deliver(mail(f"sato@{domain}", f"Re: [{case.ref}]", block("ホテルB", domain),
                   in_reply_to=ask.message["Message-ID"]))
    w.run()
    assert w.bot.store.get_case(case.id).state == "awaiting_dkim"


def test_a_strangers_rekey_wish_changes_nothing(tmp_path, dovecot, bind, smtp, monkeypatch):
    w = World(tmp_path, dovecot, bind, smtp, monkeypatch)
    domain = f"inn-{w.tag}.test"
    w.deliver(mail(f"yamada@{domain}", "DKIM、DMARC設定希望", block("宿C", domain)))
    w.run()
    [case] = w.bot.store.list_cases()
    # Subject reference only, and even with the requester's From forged: no thread, no token.
    for frm in ("mallory@evil.example", f"yamada@{domain}"):
        w.deliver(mail(frm, f"Re: [{case.ref}] 鍵について", "1024ビットでお願いします。"))
    new = w.run()
    after = w.bot.store.get_case(case.id)
    assert after.selectors == case.selectors
    assert [e["kind"] for e in w.bot.store.events(case.id)].count("reply_refused") == 2
    assert not [m for m in new if "mallory@evil.example" in to_of(m)]
    assert not any(e["kind"] == "dkim_rekey" for e in w.bot.store.events(case.id))


def test_no_fan_out_to_third_parties(tmp_path, dovecot, bind, smtp, monkeypatch):
    w = World(tmp_path, dovecot, bind, smtp, monkeypatch)
    # 50 facilities in one mail: over max_facilities_per_mail (10): nothing made, staff told.
    fifty = "\n".join(block(f"施設{n}", f"f{n}-{w.tag}.test", f"victim+{n}@target.example") for n in range(50))
    w.deliver(mail("mallory@evil.example", "DKIM、DMARC設定希望", fifty))
    new = w.run()
    assert w.bot.store.list_cases() == []
    assert [to_of(m) for m in new] == [{STAFF}]
    # Mails of 5 facilities each, contacts on another domain: answered to the sender
    # alone, and at most max_new_cases_per_sender_per_day (20) cases for the sender
    # however many mails, however the address is dressed (+tags).
    for k in range(6):
        five = "\n".join(block(f"施設{k}-{n}", f"g{k}x{n}-{w.tag}.test", f"victim+{k}{n}@target.example")
                         for n in range(5))
        w.deliver(mail(f"mallory+{k}@evil.example", "DKIM、DMARC設定希望", five))
    new = w.run()
    assert len(w.bot.store.list_cases()) == 20
    assert not [m for m in new if any(a.endswith("@target.example") for a in to_of(m))]
    facility_mail = [m for m in new if to_of(m) != {STAFF}]
    assert all(to_of(m) <= {f"mallory+{k}@evil.example" for k in range(6)} | {STAFF} for m in facility_mail)
    assert len(w.bot.keystore.selectors(f"g0x0-{w.tag}.test")) == 1
    assert not list((w.cfg.state_dir / "keys").glob(f"g5x*-{w.tag}.test"))  # no keys past the limit


def test_addresses_fold_for_the_limits():
    assert fold_address("Victim+7@Target.example") == "victim@target.example"
    assert fold_address("a.b.c+x@googlemail.com") == fold_address("abc@gmail.com")
    assert fold_address("a.b@example.jp") == "a.b@example.jp"  # dots matter elsewhere


def test_a_reply_acts_only_from_a_party_answering_the_bots_mail():
    class Case:
        requester, contact_email, admin_email = "yamada@hotel.test", "sato@hotel.test", "info@hotel.test"

    assert reply_standing(Case(), ["yamada@hotel.test"], threads_on_bot_mail=True, carries_token=False).may_act
    assert reply_standing(Case(), ["info+x@hotel.test"], threads_on_bot_mail=False, carries_token=True).may_act
    assert not reply_standing(Case(), ["yamada@hotel.test"], threads_on_bot_mail=False, carries_token=False).may_act
    assert not reply_standing(Case(), ["m@evil.test"], threads_on_bot_mail=True, carries_token=True).may_act


def test_twenty_spoofed_replies_make_one_staff_mail_then_one_merged(tmp_path, dovecot, bind, smtp, monkeypatch):
    from datetime import timedelta

    w = World(tmp_path, dovecot, bind, smtp, monkeypatch)
    now = [datetime.now(UTC)]
    w.bot.clock = lambda: now[0]
    domain = f"flood-{w.tag}.test"
    w.deliver(mail(f"yamada@{domain}", "DKIM、DMARC設定希望", block("宿D", domain)))
    w.run()
    [case] = w.bot.store.list_cases()
    for n in range(20):
        w.deliver(mail(f"spoof{n}@evil.example", f"Re: [{case.ref}] 至急", f"変更してください {n}"))
    new = w.run()
    staff = [m for m in new if to_of(m) == {STAFF}]
    assert len(staff) == 1
    assert [e["kind"] for e in w.bot.store.events(case.id)].count("reply_refused") == 20
    from bot.flows.digest import build_digest

    assert len(build_digest(w.bot)["held"]) == 19
    now[0] += timedelta(minutes=61)
    new = w.run()
    [merged] = [m for m in new if to_of(m) == {STAFF}]
    assert "19 more notes" in merged.message["Subject"]
    assert "変更してください 19" in body_of(merged.raw)
    assert build_digest(w.bot)["held"] == []


def test_a_lookalike_of_an_own_domain_is_rejected_like_it(tmp_path, dovecot, bind, smtp, monkeypatch):
    w = World(tmp_path, dovecot, bind, smtp, monkeypatch)
    w.deliver(mail("mallory@evil.example", "DKIM、DMARC設定希望",
                   block("偽", "489bаn.net").replace("yamada@489bаn.net", "m@evil.example")))  # Cyrillic а
    w.run()
    [case] = w.bot.store.list_cases()
    assert case.state == "rejected" and case.domain == "xn--489bn-7ve.net"
    assert w.bot.store.domain_keys(case.domain) == []


def test_the_per_address_limit_folds_plus_tags(tmp_path, dovecot, bind, smtp, monkeypatch):
    w = World(tmp_path, dovecot, bind, smtp, monkeypatch)
    w.cfg.service.max_mails_per_address_per_day = 2
    for k in range(3):
        domain = f"tag{k}-{w.tag}.test"
        w.deliver(mail(f"owner+{k}@multi-{w.tag}.test", "DKIM、DMARC設定希望", block(f"宿{k}", domain)))
    new = w.run()
    to_owner = [m for m in new if any(a.startswith("owner+") for a in to_of(m))]
    assert len(to_owner) == 2  # a+1@, a+2@ and a+3@ are one mailbox: the third reply is held
    suppressed = [e for c in w.bot.store.list_cases() for e in w.bot.store.events(c.id)
                  if e["kind"] == "mail_suppressed"]
    assert len(suppressed) == 1


def test_a_contact_at_the_strangers_free_mail_domain_is_not_mailed(tmp_path, dovecot, bind, smtp, monkeypatch):
    """Review 2026-12-01: "same domain as the requester" let mallory@gmail.com name any
    gmail.com mailbox as the contact of each of ten facilities, and the one reply went to
    all of them. A free-mail domain is shared by strangers: its other mailboxes are not
    the requester's colleagues."""
    w = World(tmp_path, dovecot, bind, smtp, monkeypatch)
    blocks = []
    for i in range(3):
        domain = f"inn{i}-{w.tag}.test"
        bind.add_zone(domain, (f"ns1.{domain}",))
        blocks.append(block(f"宿{i}", domain, f"victim.{i}@gmail.com"))
    w.deliver(mail("mallory@gmail.com", "DKIM、DMARC設定希望", "\n".join(blocks)))
    new = w.run()
    assert {c.state for c in w.bot.store.list_cases()} == {"awaiting_dkim"}
    assert [to_of(m) - {STAFF} for m in new] == [{"mallory@gmail.com"}]
    # A colleague at the requester's own company domain is still copied.
    domain = f"hotel-{w.tag}.test"
    bind.add_zone(domain, (f"ns1.{domain}",))
    w.deliver(mail(f"sato@{domain}", "DKIM、DMARC設定希望", block("ホテルD", domain)))
    assert [to_of(m) - {STAFF} for m in w.run()] == [{f"sato@{domain}", f"yamada@{domain}"}]
