"""Issue 11, red team: attacks a stranger can mount by mail alone, each on real servers.

Through real Dovecot (the support mailbox), BIND (the DNS the bot asks) and the SMTP
sink, with the harness of ``test_security_parties``.
"""

from __future__ import annotations

import pytest
from test_security_parties import World, block, mail, to_of

pytestmark = pytest.mark.servers


def test_a_forged_from_without_the_thread_does_not_complete_a_needs_info_case(
        tmp_path, dovecot, bind, smtp, monkeypatch):
    """A fresh request (no subject reference, no In-Reply-To) with the From of a
    needs_info case's requester and the same facility name used to continue that case:
    a stranger who forged the From chose its domain, admin and contact addresses."""
    w = World(tmp_path, dovecot, bind, smtp, monkeypatch)
    domain = f"hotel-{w.tag}.test"
    incomplete = block("ホテルB", domain).replace(f"info@{domain}", "")
    w.deliver(mail(f"sato@{domain}", "DKIM、DMARC設定希望", incomplete))
    w.run()
    [case] = w.bot.store.list_cases()
    assert case.state == "needs_info"
    evil = f"evil-{w.tag}.test"
    w.deliver(mail(f"sato@{domain}", "DKIM、DMARC設定希望", block("ホテルB", evil, "m@evil.example")))
    w.run()
    after = w.bot.store.get_case(case.id)
    assert (after.state, after.domain, after.admin_email, after.contact_email) == \
        ("needs_info", None, None, case.contact_email)

    # The facility itself, answering the bot's mail, still completes it.
    ask = next(m for m in smtp.messages if f"sato@{domain}" in to_of(m))
    w.deliver(mail(f"sato@{domain}", f"Re: [{case.ref}]", block("ホテルB", domain),
                   in_reply_to=ask.message["Message-ID"]))
    w.run()
    done = w.bot.store.get_case(case.id)
    assert (done.state, done.domain) == ("awaiting_dkim", domain)


def test_subdomains_of_one_managed_zone_get_one_confirmation_mail_a_day(tmp_path, dovecot, bind, smtp, monkeypatch):
    """One confirmation mail per domain per day was counted per *requested* domain: one
    stranger's mail naming info@r1.victim, info@r2.victim, ... (any label he likes, all in
    one zone on our name servers) made the bot mail the victim's mail server once per
    label. Now the zone counts: the rest wait (held), staff-free, nothing published."""
    from test_security_managed import World as ManagedWorld
    from test_security_managed import mail as mmail
    from test_security_managed import request_body

    from bot.app.jobs import run_pass

    w = ManagedWorld(tmp_path, dovecot, bind, smtp, monkeypatch)
    body = "\n".join(request_body(f"r{i}.{w.domain}", f"info@r{i}.{w.domain}").replace("旅館テスト", f"旅館{i}")
                     for i in range(4))
    w.deliver(mmail("Mallory <mallory@evil.example>", "DKIM、DMARC設定希望", body))
    run_pass(w.bot)
    cases = w.bot.store.list_cases()
    assert len(cases) == 4 and {c.state for c in cases} == {"awaiting_confirmation"}
    to_zone = [m for m in smtp.messages if any(a.endswith(w.domain) for a in to_of(m))]
    assert len(to_zone) == 1


def test_a_huge_references_header_is_read_as_its_root_and_newest_ids():
    """40,000 ids in References were each looked up in the store (twice per message, the
    cases' thread roots unindexed): with 5,000 cases one such mail kept a pass busy for
    tens of seconds. Now at most MAX_REFERENCES ids are read: the root and the newest."""
    from bot.core.request import MAX_REFERENCES, parse_message

    ids = [f"<{i:08d}@evil.example>" for i in range(40_000)]
    raw = ("From: m@evil.example\r\nTo: support@489ban.net\r\nSubject: Re: x\r\n"
           f"Message-ID: <q@evil.example>\r\nReferences: {' '.join(ids)}\r\n\r\nbody\r\n").encode()
    refs = parse_message(raw).references
    assert len(refs) == MAX_REFERENCES
    assert refs[0] == ids[0] and refs[-1] == ids[-1] and refs[1] == ids[-(MAX_REFERENCES - 1)]


def test_requests_held_for_a_zones_daily_mail_expire_instead_of_mailing_for_days(
        tmp_path, dovecot, bind, smtp, monkeypatch):
    """With one confirmation mail a day per zone, the requests held behind it used to wait
    for their turn forever: a stranger's N names in one zone meant N days of mail to it.
    A request whose confirmation could not be mailed within twice confirm_wait_hours
    expires like an unanswered one (cancelled, staff told, nothing published)."""
    from datetime import UTC, datetime, timedelta

    from test_security_managed import World as ManagedWorld
    from test_security_managed import mail as mmail
    from test_security_managed import request_body

    from bot.app.jobs import run_pass

    now = [datetime.now(UTC)]
    w = ManagedWorld(tmp_path, dovecot, bind, smtp, monkeypatch, clock=lambda: now[0])  # confirm_wait_hours 24
    body = "\n".join(request_body(f"r{i}.{w.domain}", f"info@r{i}.{w.domain}").replace("旅館テスト", f"旅館{i}")
                     for i in range(3))
    w.deliver(mmail("Mallory <mallory@evil.example>", "DKIM、DMARC設定希望", body))

    def to_zone() -> int:
        return len([m for m in smtp.messages if any(a.endswith(w.domain) for a in to_of(m))])

    run_pass(w.bot)
    assert to_zone() == 1
    now[0] += timedelta(hours=25)  # the first one's reminder takes the day's mail
    run_pass(w.bot)
    assert to_zone() == 2
    now[0] += timedelta(hours=25)
    run_pass(w.bot)
    assert to_zone() == 2
    assert {c.state for c in w.bot.store.list_cases()} == {"cancelled"}
    for c in w.bot.store.list_cases():
        assert bind.txt(f"{c.selector}._domainkey.{c.domain}") == []
    w.bot.close()
