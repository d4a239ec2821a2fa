"""A selector already present in the domain's DNS is never reused (SPEC §8), on the real BIND;
a DNS failure while looking never blocks a request."""

from __future__ import annotations

import base64
import logging
from email.utils import make_msgid

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bot.app import jobs
from bot.checks.keyplan import selector_candidates
from bot.flows.selectors import choose_selector
from bot.adapters.keys import render_selector
from keyflow import Clock, body_of, boxes, case_mails, dkim_boxes, open_bot, request_mail, write_config

pytestmark = pytest.mark.servers


def foreign_record() -> str:
    """Another sender's DKIM key, as a hoster or an earlier provider would have left it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()


def test_candidates_go_through_letters_then_numbers():
    gen = selector_candidates("yoyakuban202611")
    first = [next(gen) for _ in range(28)]
    assert first[:3] == ["yoyakuban202611", "yoyakuban202611a", "yoyakuban202611b"]
    assert first[26:] == ["yoyakuban202611z", "yoyakuban202611-2"]


def test_a_request_skips_a_selector_another_sender_publishes(tmp_path, dovecot, bind, smtp):
    domain = "taken-onsen.test"
    bind.add_zone(domain, ("ns1." + domain, "ns2." + domain))
    mailbox = "k5-taken@489ban.net"
    cfg_path = write_config(tmp_path, dovecot, bind, smtp, mailbox=mailbox)
    clock = Clock()
    base = render_selector("yoyakuban{YYYYMM}", clock())
    bind.update(domain, f"{base}._domainkey", "TXT", [foreign_record()])
    # "…a" holds something else (not even DKIM): also taken.
    bind.update(domain, f"{base}a._domainkey", "TXT", ["google-site-verification=abc"])
    smtp.clear()
    bot = open_bot(cfg_path, clock)
    try:
        dovecot.append(mailbox, request_mail(domain, make_msgid(domain=domain)))
        jobs.run_pass(bot)
        [case] = bot.store.list_cases()
        assert case.selector == f"{base}b"
        [box] = dkim_boxes(body_of(case_mails(smtp)[-1].raw))
        assert box["host"] == f"{base}b._domainkey.{domain}"
    finally:
        bot.close()


def test_dual_signing_needs_the_ed25519_name_free_too(tmp_path, dovecot, bind, smtp):
    domain = "taken-ed.test"
    bind.add_zone(domain, ("ns1." + domain,))
    cfg_path = write_config(tmp_path, dovecot, bind, smtp, mailbox="k5-taken-ed@489ban.net",
                            keys={"ed25519": True})
    clock = Clock()
    base = render_selector("yoyakuban{YYYYMM}", clock())
    bind.update(domain, f"{base}-ed._domainkey", "TXT", [foreign_record()])
    bot = open_bot(cfg_path, clock)
    try:
        assert choose_selector(bot, domain, base, with_ed25519=True) == f"{base}a"
        assert choose_selector(bot, domain, base, with_ed25519=False) == base
    finally:
        bot.close()


def test_our_own_key_at_the_selector_is_not_someone_else(tmp_path, dovecot, bind, smtp):
    """A crash after making the key and before recording the case: the record is ours."""
    domain = "own-key.test"
    bind.add_zone(domain, ("ns1." + domain,))
    cfg_path = write_config(tmp_path, dovecot, bind, smtp, mailbox="k5-own@489ban.net")
    clock = Clock()
    base = render_selector("yoyakuban{YYYYMM}", clock())
    bot = open_bot(cfg_path, clock)
    try:
        key = bot.keystore.load_or_create(domain, base, "rsa", 1024)
        bind.update(domain, f"{base}._domainkey", "TXT", [[s for s in (key.record[:255], key.record[255:]) if s]])
        assert choose_selector(bot, domain, base, with_ed25519=False) == base
        # ...but a selector the bot recorded before is never handed out again.
        assert choose_selector(bot, domain, base, with_ed25519=False, exclude=[base]) == f"{base}a"
    finally:
        bot.close()


def test_a_dns_failure_while_looking_does_not_block_the_request(tmp_path, dovecot, bind, smtp, caplog):
    from servers import free_port

    domain = "dns-down.test"
    dead = free_port()  # nothing listens there: every query times out
    cfg_path = write_config(tmp_path, dovecot, bind, smtp, mailbox="k5-dnsdown@489ban.net",
                            dns_port=dead, dns_timeout=0.4)
    clock = Clock()
    bot = open_bot(cfg_path, clock)
    try:
        with caplog.at_level(logging.WARNING, logger="dkimbot"):
            outcome = jobs.process_message(bot, "k5-dnsdown-1", request_mail(domain, make_msgid(domain=domain)))
        assert outcome.startswith("request")
        [case] = bot.store.list_cases()
        assert case.state == "awaiting_dkim"
        assert case.selector == render_selector("yoyakuban{YYYYMM}", clock())
        # Logged either way: the look gave no answer, so the selector is not asked again.
        assert any("selector check for dns-down.test failed" in r.getMessage()
                   or "selector for dns-down.test chosen without looking" in r.getMessage() for r in caplog.records)
        assert [m["kind"] for m in bot.store.mails_for_case(case.id)] == ["request_reply"]
    finally:
        bot.close()


@pytest.mark.parametrize("wildcard", ["*", "*._domainkey"])
def test_a_wildcard_txt_does_not_make_every_selector_taken(tmp_path, dovecot, bind, smtp, wildcard):
    """Review 2026-12-01: a zone with a wildcard TXT (``* TXT "v=spf1 -all"`` for names
    that send no mail, or ``*._domainkey``) answered for all 40 candidates: "no free
    selector", the request failed on every pass and reached staff as unprocessable. The
    wildcard's record is not a selector in use; one published at a candidate still is."""
    domain = f"wild{len(wildcard)}.test"
    bind.add_zone(domain, ("ns1." + domain,))
    bind.update(domain, wildcard, "TXT", ["v=spf1 -all"])
    mailbox = f"k5-wild{len(wildcard)}@489ban.net"
    cfg_path = write_config(tmp_path, dovecot, bind, smtp, mailbox=mailbox)
    clock = Clock()
    base = render_selector("yoyakuban{YYYYMM}", clock())
    smtp.clear()
    bot = open_bot(cfg_path, clock)
    try:
        dovecot.append(mailbox, request_mail(domain, make_msgid(domain=domain)))
        jobs.run_pass(bot)
        [case] = bot.store.list_cases()
        assert (case.state, case.selector) == ("awaiting_dkim", base)
        bind.update(domain, f"{base}a._domainkey", "TXT", [foreign_record()])
        assert choose_selector(bot, domain, base, with_ed25519=False, exclude=[base]) == f"{base}b"
    finally:
        bot.close()
