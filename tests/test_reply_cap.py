"""A flood of requests from many addresses: at most N replies an hour, staff told once.

One attacker with many From addresses gets past every per-sender cap, and each request
would be answered: the bot mailing as many third parties (the forged Froms). Through
real Dovecot (the support mailbox), BIND and the SMTP sink, with
``max_unproven_mails_per_hour = 3``: six requests from six addresses make six cases,
three replies leave and one staff note; the other three wait in the outbox (a second
pass in the same hour sends nothing and tells staff nothing more); an hour later they
leave, so every sender got its one reply, exactly once. Three days later the reminders
of the six unproven cases are held the same way (``max_unproven_mails_per_hour``).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from configkit import dns, imap, service, smtp_out, write_toml
from test_security_parties import PASSWORD, STAFF, block, mail, to_of

from bot.app.jobs import Bot, run_pass
from bot.config import load_config

pytestmark = pytest.mark.servers


def _capped_bot(tmp_path, dovecot, bind, smtp, monkeypatch, *, cap: int, check_interval: int):
    """A bot on a fresh Dovecot support mailbox with ``max_unproven_mails_per_hour = cap``,
    its clock in a list the test moves; ``run()`` makes a pass and returns the mails it sent."""
    tag = uuid.uuid4().hex[:6]
    user = f"support-{tag}@489ban.net"
    dovecot.add_user(user, PASSWORD)
    monkeypatch.setenv("TEST_IMAP_PASSWORD", PASSWORD)
    smtp.clear()
    cfg = load_config(write_toml(tmp_path / "c.toml", {
        "service": service(max_unproven_mails_per_hour=cap),
        "intake": imap(dovecot, user), "outbound": smtp_out(smtp), "dns": dns(bind),
        "keys": {"bits": 1024}, "schedule": {"check_interval_seconds": check_interval},
        "state": {"dir": str(tmp_path / "state")},
    }))
    now = [datetime.now(UTC)]
    bot = Bot.open(cfg)
    bot.clock = lambda: now[0]

    def run() -> list:
        before = len(smtp.messages)
        run_pass(bot)
        return smtp.messages[before:]

    return bot, user, tag, now, run


def test_replies_to_a_flood_of_senders_are_capped_per_hour_and_none_is_lost(
        tmp_path, dovecot, bind, smtp, monkeypatch):
    bot, user, tag, now, run = _capped_bot(tmp_path, dovecot, bind, smtp, monkeypatch,
                                           cap=3, check_interval=3600)
    senders = [f"victim{n}@forged-{tag}.example" for n in range(6)]
    for n in range(6):
        bind.add_zone(f"flood{n}-{tag}.test")
    for n, sender in enumerate(senders):
        dovecot.append(user, mail(sender, "DKIM、DMARC設定希望", block(f"宿{n}", f"flood{n}-{tag}.test", sender)))

    first = run()
    assert len(bot.store.list_cases()) == 6  # every request was taken
    replies = [m for m in first if to_of(m) != {STAFF}]
    notes = [m for m in first if to_of(m) == {STAFF}]
    assert len(replies) == 3
    assert len(notes) == 1 and "hourly cap" in str(notes[0].message["Subject"])
    pending = bot.store.db.execute(
        "SELECT COUNT(*) FROM outbox WHERE kind='request_reply' AND status='pending'").fetchone()[0]
    assert pending == 3

    now[0] += timedelta(minutes=20)
    assert run() == []  # the same hour: nothing more, and staff are not told again

    now[0] += timedelta(minutes=45)
    later = run()
    assert len(later) == 3 and all(to_of(m) != {STAFF} for m in later)
    got = sorted(a for m in first + later for a in to_of(m) if a != STAFF)
    assert got == sorted(senders)  # each sender exactly one reply, none lost, none twice

    # Three days on, each case's reminder is due: the reminders are held the same way.
    now[0] += timedelta(hours=73)
    third = run()
    reminders = [m for m in third if to_of(m) != {STAFF}]
    assert len(reminders) == 3 and all("再度のお願い" in str(m.message["Subject"]) for m in reminders)
    assert len([m for m in third if to_of(m) == {STAFF}]) == 1  # a new day: told once more
    now[0] += timedelta(hours=1, minutes=5)
    fourth = run()
    assert len([m for m in fourth if to_of(m) != {STAFF}]) == 3
    assert sorted(a for m in third + fourth for a in to_of(m) if a != STAFF) == sorted(senders)
    bot.close()


def test_problem_mails_on_unproven_cases_are_capped_too(tmp_path, dovecot, bind, smtp, monkeypatch):
    """Review 2026-12-01: the attacker's own domain, six requests from six forged senders
    (six cases, each a selector of its own), then junk published at those selectors: the
    next check mailed every forged sender "please fix your record", uncapped, before the
    held reply with the record. Now those mails wait under the same hourly cap, in order."""
    bot, user, tag, now, run_all = _capped_bot(tmp_path, dovecot, bind, smtp, monkeypatch,
                                               cap=2, check_interval=0)
    domain = f"attacker-{tag}.test"
    bind.add_zone(domain)
    senders = [f"victim{n}@forged-{tag}.example" for n in range(6)]
    for n, sender in enumerate(senders):
        dovecot.append(user, mail(sender, "DKIM、DMARC設定希望", block(f"宿{n}", domain, sender)))

    def run() -> list:
        return [m for m in run_all() if to_of(m) != {STAFF}]

    first = run()
    assert len(bot.store.list_cases()) == 6 and len(first) == 2
    for case in bot.store.list_cases():
        junk = "v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDjunk"
        bind.update(domain, f"{case.selector}._domainkey", "TXT", [junk])
    later: list = []
    for _ in range(3):  # three more passes in the same hour, each checking every case
        now[0] += timedelta(minutes=5)
        later += run()
    assert later == []
    # The next hour: the held replies with the record leave first (oldest first).
    now[0] += timedelta(hours=1)
    next_hour = run()
    assert len(next_hour) == 2 and all("DNSへの設定" in str(m.message["Subject"]) for m in next_hour)
    bot.close()


def test_mails_on_proven_cases_do_not_use_up_the_hour(tmp_path, dovecot, bind, smtp, monkeypatch):
    """Mails on cases the domain's people proved are never held; they must not count
    either: four records sent again to two proven facilities left no room in the hour
    for a new facility's first reply (review 2026-12-01)."""
    from bot.app.jobs import staff_resend
    from bot.core.cases import State

    bot, user, tag, now, run_all = _capped_bot(tmp_path, dovecot, bind, smtp, monkeypatch,
                                               cap=2, check_interval=3600)

    def run() -> list:
        return [m for m in run_all() if to_of(m) != {STAFF}]

    for n in range(2):
        bind.add_zone(f"known{n}-{tag}.test")
        domain = f"known{n}-{tag}.test"
        dovecot.append(user, mail(f"a@{domain}", "DKIM、DMARC設定希望", block(f"宿{n}", domain)))
    assert len(run()) == 2
    now[0] += timedelta(minutes=61)
    for case in bot.store.list_cases():  # the facilities published their records: proven
        bot.store.transition(case.id, State.AWAITING_DMARC, now[0], expected_state=case.state, event="dkim_proven")
        for _ in range(2):
            staff_resend(bot, bot.store.get_case(case.id))
    proven_mails = run()  # never held (the records again, and what the due check found)
    assert len(proven_mails) >= 4 and all("known" in a for m in proven_mails for a in to_of(m) - {STAFF})
    bind.add_zone(f"new-{tag}.test")
    dovecot.append(user, mail(f"b@new-{tag}.test", "DKIM、DMARC設定希望", block("新しい宿", f"new-{tag}.test")))
    assert [to_of(m) - {STAFF} for m in run()] == [{f"b@new-{tag}.test", f"yamada@new-{tag}.test"}]
    bot.close()
