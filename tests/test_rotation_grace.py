"""Key rotation and the after-completion grace period end to end, with the clock moved.

Real BIND (two name servers), Dovecot and the SMTP sink; passes run in-process
(``jobs.run_pass``) with the Bot's clock moved by the test: no sleeping.
"""

from __future__ import annotations

from datetime import timedelta
from email.utils import make_msgid

import pytest

from bot.core.watchtime import next_watch

from bot.app import jobs

from bot.flows import rotation
from bot.adapters.signer import installed_selectors, sign_message
from keyflow import (case_mails, STAFF, Clock, body_of, booking, boxes, open_bot, publish_box, request_mail,
                     saas_zone, verify_all, write_config)

pytestmark = pytest.mark.servers


def sent(smtp, start: int) -> list:
    return list(case_mails(smtp)[start:])


def kinds(bot, case_id: int) -> list[str]:
    return [m["kind"] for m in bot.store.mails_for_case(case_id)]


def complete_case(bot, bind, smtp, dovecot, mailbox, domain, clock):
    """Request → record published → DKIM active → DMARC + SPF → completed."""
    dovecot.append(mailbox, request_mail(domain, make_msgid(domain=domain)))
    jobs.run_pass(bot)
    [case] = bot.store.list_cases()
    body = body_of(case_mails(smtp)[-1].raw)
    publish_box(bind, domain, body, f"{case.selector}._domainkey.{domain}")
    clock.advance(minutes=30)
    jobs.run_pass(bot)
    active = body_of(case_mails(smtp)[-1].raw)
    [dmarc] = boxes(active)
    bind.update(domain, "_dmarc", "TXT", [dmarc["value"]])
    bind.update(domain, "@", "TXT", [f"v=spf1 include:_spf.{saas_zone(bind, domain)} ~all"])
    clock.advance(minutes=30)
    jobs.run_pass(bot)
    case = bot.store.get_case(case.id)
    assert case.state == "completed", kinds(bot, case.id)
    return case


def test_rotation_switches_only_after_the_new_record_verifies_everywhere(tmp_path, dovecot, bind, smtp):
    domain = "rotate-hotel.test"
    bind.add_zone(domain, ("ns1." + domain, "ns2." + domain))
    saas_zone(bind, domain)
    mailbox = "k5-rotate@489ban.net"
    cfg_path = write_config(tmp_path, dovecot, bind, smtp, mailbox=mailbox)
    smtp.clear()
    clock = Clock()
    bot = open_bot(cfg_path, clock)
    try:
        case = complete_case(bot, bind, smtp, dovecot, mailbox, domain, clock)
        old = case.selector
        clock.advance(days=1, minutes=1)

        r = rotation.start_rotation(bot, domain)
        jobs.flush_outbox_once(bot)
        [new] = r.new_selectors
        assert new != old and r.old_selectors == [old]
        mail = case_mails(smtp)[-1]
        body = body_of(mail.raw)
        assert "DKIM鍵の更新" in mail.message["Subject"]
        assert [b["host"] for b in boxes(body)] == [f"{new}._domainkey.{domain}"]
        assert f"{old}._domainkey.{domain}" in body and "まだ削除しないでください" in body
        with pytest.raises(rotation.RotationError, match="already rotating"):
            rotation.start_rotation(bot, domain)

        # Not published yet: the old key keeps signing.
        clock.advance(minutes=10)
        jobs.run_pass(bot)
        assert installed_selectors(bot.cfg, domain) == [old]
        assert rotation.rotations_for(bot.store, domain)[-1].status == "pending"

        # On one of the two name servers only: still the old key.
        publish_box(bind, domain, body, f"{new}._domainkey.{domain}", servers=["127.0.0.1"])
        clock.advance(minutes=10)
        before = len(case_mails(smtp))
        jobs.run_pass(bot)
        assert installed_selectors(bot.cfg, domain) == [old]
        assert len(case_mails(smtp)) == before

        # Everywhere: proven, switched in one step, old record declared safe to delete.
        publish_box(bind, domain, body, f"{new}._domainkey.{domain}")
        clock.advance(minutes=10)
        jobs.run_pass(bot)
        assert installed_selectors(bot.cfg, domain) == [new]
        assert rotation.rotations_for(bot.store, domain)[-1].status == "done"
        case = bot.store.get_case(case.id)
        assert (case.state, case.selector, case.selectors) == ("completed", new, [new])
        done = case_mails(smtp)[-1]
        done_body = body_of(done.raw)
        assert "古いレコードは削除できます" in done.message["Subject"]
        assert f"ホスト名：{old}._domainkey（ドメイン名まで入力する画面では {old}._domainkey.{domain}）" in done_body
        assert STAFF in done.rcpt_tos
        keys = {k["selector"]: k for k in bot.store.domain_keys(domain)}
        assert keys[old]["retired_at"] and keys[new]["installed_at"] and not keys[new]["retired_at"]
        assert verify_all(sign_message(bot.cfg, booking(domain)), bind) == [(new, "rsa-sha256", True)]

        # Deleting the old record now is harmless: the daily watch sees nothing wrong.
        bind.delete(domain, f"{old}._domainkey")
        clock.advance(days=1, minutes=1)
        before = len(case_mails(smtp))
        jobs.run_pass(bot)
        assert bot.store.get_case(case.id).state == "completed" and len(case_mails(smtp)) == before
    finally:
        bot.close()


def test_a_lost_record_warns_counts_down_and_only_then_stops_signing(tmp_path, dovecot, bind, smtp):
    domain = "grace-ryokan.test"
    bind.add_zone(domain, ("ns1." + domain, "ns2." + domain))
    saas_zone(bind, domain)
    mailbox = "k5-grace@489ban.net"
    cfg_path = write_config(tmp_path, dovecot, bind, smtp, mailbox=mailbox,
                            schedule={"signing_grace_days": 5})
    smtp.clear()
    clock = Clock()
    bot = open_bot(cfg_path, clock)
    try:
        case = complete_case(bot, bind, smtp, dovecot, mailbox, domain, clock)
        sel = case.selector
        fqdn = f"{sel}._domainkey.{domain}"
        record = bind.txt(fqdn)
        # Completed: watched daily, at the domain's own time of day (bot/core/watchtime.py).
        assert case.next_check_at == next_watch(domain, clock())
        assert timedelta(hours=1) < case.next_check_at - clock() <= timedelta(hours=25)

        # Checked daily, not every pass: a pass before the domain's slot does not look.
        bind.delete(domain, f"{sel}._domainkey")
        clock.advance(seconds=(case.next_check_at - clock()).total_seconds() - 60)
        jobs.run_pass(bot)
        assert bot.store.get_case(case.id).state == "completed"
        bind.update(domain, f"{sel}._domainkey", "TXT", record)

        # A transient DNS failure never starts the countdown.
        good_port = bot.cfg.dns.port
        from servers import free_port
        bot.cfg.dns.port, bot.cfg.dns.timeout = free_port(), 0.4
        clock.advance(days=1)
        before = len(case_mails(smtp))
        jobs.run_pass(bot)
        assert bot.store.get_case(case.id).state == "completed"
        assert len(case_mails(smtp)) == before
        assert bot.store.events(case.id)[-1]["detail"]["event"] == "dns_error"
        bot.cfg.dns.port, bot.cfg.dns.timeout = good_port, 2.0

        # The record disappears: facility and staff warned, signing continues.
        bind.delete(domain, f"{sel}._domainkey")
        clock.advance(days=1)
        before = len(case_mails(smtp))
        jobs.run_pass(bot)
        case = bot.store.get_case(case.id)
        assert case.state == "dkim_lost"
        new = sent(smtp, before)
        assert len(new) == 2
        facility = next(m for m in new if "ESCALATION" not in m.message["Subject"])
        staff = next(m for m in new if "ESCALATION" in m.message["Subject"])
        assert staff.rcpt_tos == [STAFF]
        assert "DKIMのレコードが確認できなくなりました" in facility.message["Subject"]
        lost_body = body_of(facility.raw)
        assert "5日間" in lost_body and [b["host"] for b in boxes(lost_body)] == [fqdn]
        assert installed_selectors(bot.cfg, domain) == [sel]

        # Back within the grace period: countdown stopped, said so.
        clock.advance(days=2)
        bind.update(domain, f"{sel}._domainkey", "TXT", record)
        before = len(case_mails(smtp))
        jobs.run_pass(bot)
        assert bot.store.get_case(case.id).state == "completed"
        [restored] = sent(smtp, before)
        assert "署名の停止は行いません" in body_of(restored.raw)

        # Lost again: the countdown starts afresh and runs its full length.
        bind.delete(domain, f"{sel}._domainkey")
        clock.advance(days=1, minutes=1)
        jobs.run_pass(bot)
        assert bot.store.get_case(case.id).state == "dkim_lost"
        clock.advance(days=4, hours=23)
        jobs.run_pass(bot)
        assert bot.store.get_case(case.id).state == "dkim_lost"
        assert installed_selectors(bot.cfg, domain) == [sel]
        # Still signing during the grace period (that signature cannot verify right now).
        assert verify_all(sign_message(bot.cfg, booking(domain)), bind) == [(sel, "rsa-sha256", False)]

        # Past the grace period: the key leaves the signer; facility and staff told.
        clock.advance(hours=1, minutes=1)
        before = len(case_mails(smtp))
        jobs.run_pass(bot)
        assert bot.store.get_case(case.id).state == "signing_stopped"
        assert installed_selectors(bot.cfg, domain) == []
        assert sign_message(bot.cfg, booking(domain)) == booking(domain)
        subjects = [m.message["Subject"] for m in sent(smtp, before)]
        assert any("DKIM署名を停止しました" in s for s in subjects)
        assert any("ESCALATION" in s for s in subjects)

        # The record comes back later: reinstalled, proven, signing resumed.
        bind.update(domain, f"{sel}._domainkey", "TXT", record)
        clock.advance(hours=6)
        before = len(case_mails(smtp))
        jobs.run_pass(bot)
        assert bot.store.get_case(case.id).state == "completed"
        assert installed_selectors(bot.cfg, domain) == [sel]
        [resumed] = sent(smtp, before)
        assert "署名を再開しました" in body_of(resumed.raw)
        assert verify_all(sign_message(bot.cfg, booking(domain)), bind) == [(sel, "rsa-sha256", True)]
        moves = [(e["from_state"], e["to_state"]) for e in bot.store.events(case.id) if e["kind"] == "transition"]
        assert moves[-5:] == [("completed", "dkim_lost"), ("dkim_lost", "completed"),
                              ("completed", "dkim_lost"), ("dkim_lost", "signing_stopped"),
                              ("signing_stopped", "completed")]
    finally:
        bot.close()
