"""DNS trouble that must stay one case's trouble, on real BIND, Dovecot and the SMTP sink.

* A domain long enough that a probe name built from it exceeds 255 octets: the check
  gives a clean answer, and mail to every facility keeps flowing.
* One case whose check raises (no stored key): logged and recorded on that case; the
  other cases are still checked (pre- and after-completion) and mail still goes out.
* Two names CNAMEd to each other, checked from two threads at once: ``cname_loop``,
  never a deadlock (the old per-thread loop detection let the threads wait on each other).
* DNS errors in a row back off (soon, then less often); a clean answer resets the count.

Passes run in-process (``jobs.run_pass``) with the Bot's clock moved by the test.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from email.utils import make_msgid
from typing import Any

import pytest
from keyflow import (
    Clock,
    body_of,
    case_mails,
    open_bot,
    publish_box,
    request_mail,
    write_config,
)

from bot.app import jobs
from bot.config import DnsConfig
from bot.adapters.dnsclient import DnsClient, DnsFailure
from bot.core.watchtime import next_watch

pytestmark = pytest.mark.servers

# 110 characters, every label within 63: a real (if unusual) domain name.
LONG_DOMAIN = "ryokan-" + "k" * 53 + "." + "onsen-" + "m" * 38 + ".test"
NORMAL_DOMAIN = "dnsrobust-normal.test"



def force_completed(bot: Any, case_id: int, now: datetime) -> None:
    """Test setup only: put a case straight into ``completed`` (due now), a jump no move
    of the bot makes (``Store.transition`` would refuse it), to test the watch."""
    from bot.core.rows import now_iso

    with bot.store.transaction():
        bot.store.db.execute("UPDATE cases SET state='completed', state_since=?, next_check_at=? WHERE id=?",
                             (now_iso(now), now_iso(now), case_id))

def mails_to(smtp: Any, domain: str) -> list[Any]:
    return [m for m in case_mails(smtp) if any(r.endswith("@" + domain) for r in m.rcpt_tos)]


def case_of(bot: Any, domain: str) -> Any:
    [case] = [c for c in bot.store.list_cases() if c.domain == domain]
    return case


def test_the_domain_is_as_long_as_the_test_says() -> None:
    assert len(LONG_DOMAIN) == 110 and max(len(label) for label in LONG_DOMAIN.split(".")) <= 63
    # With the default selector (yoyakuban{YYYYMM}) the DKIM check's doubled-name probe
    # would be over the 253-character limit of a DNS name.
    assert len(f"yoyakuban202611._domainkey.{LONG_DOMAIN}._domainkey.{LONG_DOMAIN}") > 253


def test_a_very_long_domain_does_not_stop_the_mail_of_anyone(tmp_path, dovecot, bind, smtp):
    for zone in (LONG_DOMAIN, NORMAL_DOMAIN):
        bind.add_zone(zone, ("ns1." + zone, "ns2." + zone))
    mailbox = "dnsrobust-long@489ban.net"
    cfg_path = write_config(tmp_path, dovecot, bind, smtp, mailbox=mailbox)
    smtp.clear()
    clock = Clock()
    bot = open_bot(cfg_path, clock)
    try:
        dovecot.append(mailbox, request_mail(NORMAL_DOMAIN, make_msgid(domain=NORMAL_DOMAIN)))
        dovecot.append(mailbox, request_mail(LONG_DOMAIN, make_msgid(domain=LONG_DOMAIN)))
        result = jobs.run_pass(bot)
        # Both facilities are told what to publish, in the same pass.
        assert len(mails_to(smtp, NORMAL_DOMAIN)) == 1, result
        assert len(mails_to(smtp, LONG_DOMAIN)) == 1, result
        normal, long_case = case_of(bot, NORMAL_DOMAIN), case_of(bot, LONG_DOMAIN)

        # Later passes keep working: the normal facility's record goes live and it hears so.
        body = body_of(mails_to(smtp, NORMAL_DOMAIN)[0].raw)
        publish_box(bind, NORMAL_DOMAIN, body, f"{normal.selector}._domainkey.{NORMAL_DOMAIN}")
        for _ in range(2):
            clock.advance(minutes=30)
            result = jobs.run_pass(bot)
            assert not result.errors, result.errors
        assert bot.store.get_case(normal.id).state == "awaiting_dmarc"
        assert len(mails_to(smtp, NORMAL_DOMAIN)) == 2

        # The long domain's case is checked cleanly: still waiting for its record, its
        # checks recorded as a missing record, not a crash or a DNS error.
        long_case = bot.store.get_case(long_case.id)
        assert long_case.state == "awaiting_dkim"
        events = bot.store.events(long_case.id)
        assert not [e for e in events if e["kind"] == "check_failed"], events
        checks = [e for e in events if e["detail"].get("event")]
        assert all(e["detail"]["event"] != "dns_error" for e in checks), checks

        # Published, the long domain's record is found like any other (what follows,
        # the signing proof, is the signer's business and not asserted here).
        body = body_of(mails_to(smtp, LONG_DOMAIN)[0].raw)
        publish_box(bind, LONG_DOMAIN, body, f"{long_case.selector}._domainkey.{LONG_DOMAIN}")
        clock.advance(hours=1)
        jobs.run_pass(bot)
        seen = [e for e in bot.store.events(long_case.id) if e["kind"] == "transition"][-1]
        assert seen["detail"]["dns"]["dkim"]["ok"] is True, seen
    finally:
        bot.close()


def test_one_case_that_raises_is_recorded_and_the_others_go_on(tmp_path, dovecot, bind, smtp):
    broken_domain, good_domain = "dnsrobust-broken.test", "dnsrobust-good.test"
    for zone in (broken_domain, good_domain):
        bind.add_zone(zone, ("ns1." + zone, "ns2." + zone))
    mailbox = "dnsrobust-raise@489ban.net"
    cfg_path = write_config(tmp_path, dovecot, bind, smtp, mailbox=mailbox)
    smtp.clear()
    clock = Clock()
    bot = open_bot(cfg_path, clock)
    try:
        # The broken case first: it is due before the good one, in id order.
        dovecot.append(mailbox, request_mail(broken_domain, make_msgid(domain=broken_domain)))
        dovecot.append(mailbox, request_mail(good_domain, make_msgid(domain=good_domain)))
        jobs.run_pass(bot)
        broken, good = case_of(bot, broken_domain), case_of(bot, good_domain)
        # A key row lost (a hand edit, a restore gone wrong): expected_keys raises.
        bot.store.db.execute("DELETE FROM domain_keys WHERE domain=?", (broken_domain,))
        body = body_of(mails_to(smtp, good_domain)[0].raw)
        publish_box(bind, good_domain, body, f"{good.selector}._domainkey.{good_domain}")

        clock.advance(minutes=30)
        result = jobs.run_pass(bot)
        assert bot.store.get_case(good.id).state == "awaiting_dmarc"
        assert len(mails_to(smtp, good_domain)) == 2, result  # delivered in this pass
        failed = [e for e in bot.store.events(broken.id) if e["kind"] == "check_failed"]
        assert len(failed) == 1 and "LookupError" in failed[0]["detail"]["error"]
        # Retried later, not every pass: the failure backs off like a DNS error.
        assert bot.store.get_case(broken.id).next_check_at > clock.now

        # After completion too (monitor): one watched case raising must not stop the next.
        now = clock.advance(minutes=30)
        for case in (broken, good):
            force_completed(bot, case.id, now)
        clock.advance(minutes=1)
        jobs.run_pass(bot)
        good_after = bot.store.get_case(good.id)
        assert good_after.state == "completed"
        # Watched daily, at the domain's own time of day (bot/core/watchtime.py).
        assert good_after.next_check_at == next_watch(good_after.domain or "", clock.now)
        failed = [e for e in bot.store.events(broken.id) if e["kind"] == "check_failed"]
        assert len(failed) == 2 and failed[-1]["detail"]["where"] == "watch check"
    finally:
        bot.close()


def test_a_cname_loop_checked_from_two_threads_is_a_failure_not_a_deadlock(bind):
    zone_a, zone_b = "dnsrobust-loop-a.test", "dnsrobust-loop-b.test"
    name_a, name_b = f"s1._domainkey.{zone_a}", f"s1._domainkey.{zone_b}"
    for zone in (zone_a, zone_b):
        bind.add_zone(zone, ("ns1." + zone,))
    # Across zones, so the server answers each with its alias only and the client chases.
    bind.update(zone_a, name_a + ".", "CNAME", [name_b + "."])
    bind.update(zone_b, name_b + ".", "CNAME", [name_a + "."])

    dns_cfg = DnsConfig(nameservers=["127.0.0.1"], port=bind.port, timeout=2.0)

    class Lockstep(DnsClient):
        """Both threads own their first name before either chases its alias: the
        interleaving that deadlocked, made certain instead of left to chance."""

        def __init__(self, cfg: DnsConfig) -> None:
            super().__init__(cfg)
            self.barrier = threading.Barrier(2, timeout=5)
            self.first: set[str] = set()

        def _direct(self, name: str, rdtype: str, server: str) -> Any:
            if name in (name_a, name_b) and name not in self.first:
                self.first.add(name)
                try:
                    self.barrier.wait()
                except threading.BrokenBarrierError:
                    pass
            return super()._direct(name, rdtype, server)

    client = Lockstep(dns_cfg)
    # Warm the zone cuts first so both threads go straight to the direct queries.
    assert client.zone_for(name_a) == zone_a and client.zone_for(name_b) == zone_b
    results: dict[str, Any] = {}

    def check(name: str) -> None:
        results[name] = client.authoritative_merged(name, "TXT")

    threads = [threading.Thread(target=check, args=(n,), daemon=True) for n in (name_a, name_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert not any(t.is_alive() for t in threads), "deadlock: the CNAME loop threads never finished"
    for name in (name_a, name_b):
        ans = results[name]
        assert isinstance(ans, DnsFailure) and ans.reason == "cname_loop", (name, ans)


def test_dns_errors_in_a_row_back_off_and_a_clean_answer_resets(tmp_path, dovecot, bind, smtp):
    domain = "dnsrobust-backoff.test"
    bind.add_zone(domain, ("ns1." + domain, "ns2." + domain))
    mailbox = "dnsrobust-backoff@489ban.net"
    cfg_path = write_config(tmp_path, dovecot, bind, smtp, mailbox=mailbox, dns_timeout=0.5)
    smtp.clear()
    clock = Clock()
    bot = open_bot(cfg_path, clock)
    try:
        dovecot.append(mailbox, request_mail(domain, make_msgid(domain=domain)))
        jobs.run_pass(bot)
        case = case_of(bot, domain)

        def delay_after_due_pass() -> timedelta:
            clock.now = bot.store.get_case(case.id).next_check_at + timedelta(seconds=1)
            jobs.run_pass(bot)
            return bot.store.get_case(case.id).next_check_at - clock.now

        bind.remove_zone(domain)  # the facility's DNS host refuses: a DNS error each time
        try:
            errors = [delay_after_due_pass() for _ in range(3)]
        finally:
            bind.add_zone(domain, ("ns1." + domain, "ns2." + domain))
        assert errors[0] < errors[1] < errors[2], errors  # soon, then less often
        assert errors[2] <= timedelta(hours=1)

        delay_after_due_pass()  # a clean answer (record still missing): the count restarts
        bind.remove_zone(domain)
        try:
            again = delay_after_due_pass()
        finally:
            bind.add_zone(domain, ("ns1." + domain, "ns2." + domain))
        assert again == errors[0], (again, errors)
        kinds = [e["detail"].get("event") for e in bot.store.events(case.id)]
        assert kinds.count("dns_error") == 4, kinds

        # After completion (the watch) the same: a clean look (no record: dkim_lost), then
        # errors back off and, never being evidence, leave the state alone.
        force_completed(bot, case.id, clock.now)
        delay_after_due_pass()
        watched_state = bot.store.get_case(case.id).state
        assert watched_state == "dkim_lost"
        bind.remove_zone(domain)
        try:
            watched = [delay_after_due_pass() for _ in range(2)]
        finally:
            bind.add_zone(domain, ("ns1." + domain, "ns2." + domain))
        assert watched == errors[:2], (watched, errors)
        assert bot.store.get_case(case.id).state == watched_state
    finally:
        bot.close()
