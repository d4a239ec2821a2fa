"""Issue 11: a stranger's request for a domain on the operator's name servers.

Real Dovecot (the support mailbox), real BIND (the operator's zone holds the name
server; the facility's zone is served by it and takes TSIG-signed RFC 2136 updates)
and the SMTP sink. Before the fix one mail from mallory@evil.example made the bot
publish DKIM and DMARC in victim's zone and install the key for signing.
"""

from __future__ import annotations

import email
import email.policy
import re
import uuid
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path

import pytest
from configkit import dns, imap, service, smtp_out, write_toml
from conftest import SUPPORT_ADDRESS
from test_e2e import body_of

from bot.adapters import signer
from bot.app.jobs import Bot, run_pass
from bot.config import load_config
from bot.flows.cancel import cancel_case

pytestmark = pytest.mark.servers

PASSWORD = "pw-security"


def mail(frm: str, subject: str, body: str, *, in_reply_to: str | None = None,
         message_id: str | None = None) -> bytes:
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = frm
    msg["To"] = SUPPORT_ADDRESS
    msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = message_id or make_msgid(domain="sender.test")
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
        msg["References"] = in_reply_to
    msg.set_content(body, charset="utf-8")
    return msg.as_bytes()


def request_body(domain: str, admin: str, contact: str | None = None) -> str:
    return ("[施設名]\n旅館テスト\n[担当者様のお名前]\n山田 太郎\n"
            f"[担当者様のメールアドレス]\n{contact or admin}\n[担当者様の電話番号]\n03-1234-5678\n"
            f"[予約番で使用する管理用メールアドレス]\n{admin}\n")


class World:
    def __init__(self, tmp_path: Path, dovecot, bind, smtp, monkeypatch, *, registry: str | None = None,
                 clock=None) -> None:
        tag = uuid.uuid4().hex[:6]
        self.tag = tag
        self.ops = f"ops-{tag}.test"          # the operator's own zone: holds its name server
        self.domain = f"victim-{tag}.test"    # a facility's zone served by the operator
        self.saas = f"saas-{tag}.test"
        bind.add_zone(self.ops, servers=[bind.addresses[0]])
        bind.add_zone(self.domain, (f"ns1.{self.ops}",), servers=[bind.addresses[0]])
        bind.add_zone(self.saas)
        bind.update(self.saas, "_spf", "TXT", ["v=spf1 ip4:203.0.113.10 -all"])
        self.user = f"support-{tag}@489ban.net"
        dovecot.add_user(self.user, PASSWORD)
        monkeypatch.setenv("TEST_IMAP_PASSWORD", PASSWORD)
        smtp.clear()
        sections = {
            "service": service(spf_include=f"_spf.{self.saas}"),
            "intake": imap(dovecot, self.user),
            "outbound": smtp_out(smtp),
            "dns": dns(bind, managed_nameservers=[f"ns1.{self.ops}"], tsig_key_name=bind.tsig_key_name,
                       tsig_secret=bind.tsig_secret),
            "schedule": {"check_interval_seconds": 0, "confirm_wait_hours": 24},
            "state": {"dir": str(tmp_path / "state")},
        }
        if registry is not None:
            sections["registry"] = {"file": registry}
        self.cfg = load_config(write_toml(tmp_path / "c.toml", sections))
        self.bot = Bot.open(self.cfg, clock=clock) if clock else Bot.open(self.cfg)
        self.dovecot, self.bind, self.smtp = dovecot, bind, smtp

    def deliver(self, raw: bytes) -> None:
        self.dovecot.append(self.user, raw)

    def published(self, selector: str) -> list:
        return self.bind.txt(f"{selector}._domainkey.{self.domain}")


def test_a_strangers_managed_request_publishes_nothing_until_the_admin_confirms(tmp_path, dovecot, bind, smtp,
                                                                                 monkeypatch):
    w = World(tmp_path, dovecot, bind, smtp, monkeypatch)
    admin = f"ceo@{w.domain}"
    w.deliver(mail("Mallory <mallory@evil.example>", "DKIM、DMARC設定希望", request_body(w.domain, admin)))
    run_pass(w.bot)
    [case] = w.bot.store.list_cases()
    assert case.state == "awaiting_confirmation"
    # Nothing in BIND, nothing in the signer.
    assert w.published(case.selector) == [] and bind.txt(f"_dmarc.{w.domain}") == []
    assert signer.installed_selectors(w.cfg, w.domain) == []
    # The stranger is told a confirmation went to the admin; the admin gets the token.
    to_mallory = [m for m in smtp.messages if "mallory@evil.example" in m.message["To"]]
    to_admin = [m for m in smtp.messages if admin in m.message["To"]]
    assert len(to_mallory) == 1 and len(to_admin) == 1
    assert "確認" in to_mallory[0].message["Subject"]
    token = re.search(r"DKIMC-[A-Z0-9]{4}-[A-Z0-9]{4}-[A-Z0-9]{4}", body_of(to_admin[0].raw)).group(0)
    assert token not in body_of(to_mallory[0].raw)

    # Mallory answers her own mail ("done", no token): still nothing.
    mallory_reply_to = to_mallory[0].message["Message-ID"]
    w.deliver(mail("mallory@evil.example", f"Re: [{case.ref}] 確認", "確認しました。設定してください。",
                   in_reply_to=mallory_reply_to))
    run_pass(w.bot)
    assert w.bot.store.get_case(case.id).state == "awaiting_confirmation"
    assert w.published(case.selector) == [] and signer.installed_selectors(w.cfg, w.domain) == []

    # The admin replies to the confirmation mail, quoting it: published, installed, proved.
    w.deliver(mail(admin, f"Re: {to_admin[0].message['Subject']}",
                   "お願いします。\n\n> 確認コード：" + token,
                   in_reply_to=to_admin[0].message["Message-ID"]))
    run_pass(w.bot)
    key = w.bot.keystore.get(w.domain, case.selector)
    assert b"".join(w.published(case.selector)[0]).decode() == key.record
    assert bind.txt(f"_dmarc.{w.domain}") == [[b"v=DMARC1; p=none"]]
    assert signer.installed_selectors(w.cfg, w.domain) == [case.selector]
    after = w.bot.store.get_case(case.id)
    assert after.state in ("awaiting_dmarc", "awaiting_final")
    kinds = [e["kind"] for e in w.bot.store.events(case.id)]
    assert "confirmed" in kinds and "managed_publish" in kinds

    # The token is one-time: a replay changes nothing and confirms nothing else.
    w.deliver(mail(admin, "Re: again", token, in_reply_to=to_admin[0].message["Message-ID"]))
    run_pass(w.bot)
    assert "confirmation_token_stale" in [e["kind"] for e in w.bot.store.events(case.id)]

    # Cancel removes exactly what the bot wrote; a record someone else added stays.
    bind.add(w.domain, "_dmarc", "TXT", ["v=DMARC1; p=reject"])
    result = cancel_case(w.bot, w.bot.store.get_case(case.id))
    assert sorted(result.unpublished) == sorted([f"{case.selector}._domainkey.{w.domain}", f"_dmarc.{w.domain}"])
    assert w.published(case.selector) == []
    assert bind.txt(f"_dmarc.{w.domain}") == [[b"v=DMARC1; p=reject"]]
    assert signer.installed_selectors(w.cfg, w.domain) == []
    w.bot.close()


def test_a_registry_listed_admin_is_published_at_once_and_completes(tmp_path, dovecot, bind, smtp, monkeypatch):
    registry = tmp_path / "facilities.csv"
    w = World(tmp_path, dovecot, bind, smtp, monkeypatch, registry=str(registry))
    admin = f"info@{w.domain}"
    registry.write_text(f"facility,admin_email\n旅館テスト,{admin}\n", encoding="utf-8")
    w.deliver(mail(f"山田 <{admin}>", "DKIM、DMARC設定希望", request_body(w.domain, admin)))
    run_pass(w.bot)
    [case] = w.bot.store.list_cases()
    key = w.bot.keystore.get(w.domain, case.selector)
    assert b"".join(w.published(case.selector)[0]).decode() == key.record
    assert w.bot.store.get_case(case.id).state in ("awaiting_dmarc", "awaiting_final")
    assert not [m for m in smtp.messages if "確認のお願い" in m.message["Subject"]]
    # Only SPF is the facility's: once it includes ours, the case completes.
    bind.update(w.domain, "@", "TXT", [f"v=spf1 include:_spf.{w.saas} ~all"])
    run_pass(w.bot)
    assert w.bot.store.get_case(case.id).state == "completed"
    w.bot.close()


def test_the_registry_is_reread_when_it_changes(tmp_path, dovecot, bind, smtp, monkeypatch):
    registry = tmp_path / "facilities.csv"
    registry.write_text("admin_email\nsomeone@else.test\n", encoding="utf-8")
    w = World(tmp_path, dovecot, bind, smtp, monkeypatch, registry=str(registry))
    admin = f"info@{w.domain}"
    from bot.adapters.registry import registry_for

    reg = registry_for(registry)
    assert not reg.lists(admin)
    registry.write_text(f"admin_email\nsomeone@else.test\n{admin}\n", encoding="utf-8")
    assert reg.lists(admin)
    w.bot.close()


def test_the_operators_own_zones_never_get_records(tmp_path, dovecot, bind, smtp, monkeypatch):
    w = World(tmp_path, dovecot, bind, smtp, monkeypatch)
    body = request_body(w.ops, f"ceo@{w.ops}")
    w.deliver(mail("mallory@evil.example", "DKIM、DMARC設定希望", body))
    run_pass(w.bot)
    [case] = w.bot.store.list_cases()
    assert case.state == "rejected"
    assert bind.txt(f"_dmarc.{w.ops}") == []
    assert not [m for m in smtp.messages if f"ceo@{w.ops}" in m.message["To"]]
    w.bot.close()


def test_an_unconfirmed_request_is_reminded_once_then_expires_and_staff_are_told(tmp_path, dovecot, bind, smtp,
                                                                                 monkeypatch):
    now = [datetime.now(UTC)]
    w = World(tmp_path, dovecot, bind, smtp, monkeypatch, clock=lambda: now[0])
    admin = f"ceo@{w.domain}"
    w.deliver(mail("mallory@evil.example", "DKIM、DMARC設定希望", request_body(w.domain, admin)))
    run_pass(w.bot)
    [case] = w.bot.store.list_cases()

    def to_admin() -> int:
        return len([m for m in smtp.messages if admin in m.message["To"]])

    assert to_admin() == 1
    now[0] += timedelta(hours=12)
    run_pass(w.bot)
    assert to_admin() == 1
    now[0] += timedelta(hours=13)  # past confirm_wait_hours = 24: the one reminder
    run_pass(w.bot)
    assert to_admin() == 2
    now[0] += timedelta(hours=25)
    run_pass(w.bot)
    assert to_admin() == 2
    assert w.bot.store.get_case(case.id).state == "cancelled"
    staff = [m for m in smtp.messages if "never confirmed" in m.message["Subject"]]
    assert len(staff) == 1
    assert w.published(case.selector) == [] and signer.installed_selectors(w.cfg, w.domain) == []
    w.bot.close()


def test_staff_confirm_publishes_and_is_recorded(tmp_path, dovecot, bind, smtp, monkeypatch):
    from bot.flows.confirm import staff_confirm

    w = World(tmp_path, dovecot, bind, smtp, monkeypatch)
    admin = f"ceo@{w.domain}"
    w.deliver(mail(f"ceo <{admin}>", "DKIM、DMARC設定希望", request_body(w.domain, admin)))
    run_pass(w.bot)
    [case] = w.bot.store.list_cases()
    assert w.published(case.selector) == []
    staff_confirm(w.bot, case, who="staff:test")
    key = w.bot.keystore.get(w.domain, case.selector)
    assert b"".join(w.published(case.selector)[0]).decode() == key.record
    events = w.bot.store.events(case.id)
    assert any(e["kind"] == "staff_confirm" and e["detail"]["by"] == "staff:test" for e in events)
    w.bot.close()


def test_a_repeated_request_while_waiting_sends_no_second_token(tmp_path, dovecot, bind, smtp, monkeypatch):
    w = World(tmp_path, dovecot, bind, smtp, monkeypatch)
    admin = f"ceo@{w.domain}"
    for _ in range(2):
        w.deliver(mail("Mallory <mallory@evil.example>", "DKIM、DMARC設定希望", request_body(w.domain, admin)))
        run_pass(w.bot)
    [case] = w.bot.store.list_cases()
    assert case.state == "awaiting_confirmation"
    assert len([m for m in smtp.messages if admin in m.message["To"]]) == 1
    to_mallory = [m for m in smtp.messages if "mallory@evil.example" in m.message["To"]]
    assert len(to_mallory) == 2 and all("v=DKIM1" not in body_of(m.raw) for m in to_mallory)
    w.bot.close()


def test_a_subdomain_of_a_managed_zone_waits_for_its_admin_too(tmp_path, dovecot, bind, smtp, monkeypatch):
    w = World(tmp_path, dovecot, bind, smtp, monkeypatch)
    sub = f"mail.{w.domain}"
    admin = f"ceo@{sub}"
    w.deliver(mail("mallory@evil.example", "DKIM、DMARC設定希望", request_body(sub, admin)))
    run_pass(w.bot)
    [case] = w.bot.store.list_cases()
    assert (case.domain, case.state) == (sub, "awaiting_confirmation")
    assert bind.txt(f"{case.selector}._domainkey.{sub}") == [] and bind.txt(f"_dmarc.{sub}") == []
    assert signer.installed_selectors(w.cfg, sub) == []
    assert len([m for m in smtp.messages if admin in m.message["To"]]) == 1
    w.bot.close()
