"""Dual signing (RSA + Ed25519, RFC 8463) end to end on the real BIND, Dovecot and SMTP sink:
both records in the first reply, the case advances only when both are published on every
server, and `dkimbot sign` then adds two signatures that dkimpy verifies through BIND."""

from __future__ import annotations

from email.utils import make_msgid

import pytest

from bot.app import jobs
from bot.adapters.signer import installed_selectors
from keyflow import (case_mails, Clock, body_of, booking, boxes, dkim_boxes, dkimbot_cmd, open_bot, publish_box,
                     request_mail, verify_all, write_config)

pytestmark = pytest.mark.servers


def test_it_gives_both_records_and_advances_only_when_both_are_published(tmp_path, dovecot, bind, smtp):
    domain = "dual-ryokan.test"
    bind.add_zone(domain, ("ns1." + domain, "ns2." + domain))
    mailbox = "k5-dual@489ban.net"
    cfg_path = write_config(tmp_path, dovecot, bind, smtp, mailbox=mailbox, keys={"ed25519": True})
    smtp.clear()
    clock = Clock()
    bot = open_bot(cfg_path, clock)
    try:
        dovecot.append(mailbox, request_mail(domain, make_msgid(domain=domain)))
        jobs.run_pass(bot)
        [case] = bot.store.list_cases()
        assert case.state == "awaiting_dkim"
        rsa_sel, ed_sel = case.selectors
        assert ed_sel == f"{rsa_sel}-ed"
        [reply] = case_mails(smtp)
        body = body_of(reply.raw)
        got = {b["host"]: b["value"] for b in dkim_boxes(body)}
        assert set(got) == {f"{rsa_sel}._domainkey.{domain}", f"{ed_sel}._domainkey.{domain}"}
        assert got[f"{rsa_sel}._domainkey.{domain}"].startswith("v=DKIM1; k=rsa; p=")
        assert got[f"{ed_sel}._domainkey.{domain}"].startswith("v=DKIM1; k=ed25519; p=")
        assert "DKIM（2件目）" in body

        # Only the RSA record: not enough, nothing installed, nothing mailed.
        publish_box(bind, domain, body, f"{rsa_sel}._domainkey.{domain}")
        clock.advance(minutes=10)
        jobs.run_pass(bot)
        assert bot.store.get_case(case.id).state == "awaiting_dkim"
        assert installed_selectors(bot.cfg, domain) == []
        assert len(case_mails(smtp)) == 1

        # The Ed25519 record on one name server only: still not enough.
        publish_box(bind, domain, body, f"{ed_sel}._domainkey.{domain}", servers=["127.0.0.1"])
        clock.advance(minutes=10)
        jobs.run_pass(bot)
        assert bot.store.get_case(case.id).state == "awaiting_dkim"
        assert installed_selectors(bot.cfg, domain) == []

        # Both records on both servers: both keys installed and proven, the case moves on.
        publish_box(bind, domain, body, f"{ed_sel}._domainkey.{domain}")
        clock.advance(minutes=10)
        jobs.run_pass(bot)
        case = bot.store.get_case(case.id)
        assert case.state == "awaiting_dmarc"
        assert sorted(installed_selectors(bot.cfg, domain)) == sorted([rsa_sel, ed_sel])
        assert "DKIM署名を開始しました" in case_mails(smtp)[-1].message["Subject"]
        proof = next(e for e in bot.store.events(case.id) if e["kind"] == "transition")["detail"]["proof"]
        assert proof["ok"] and rsa_sel in proof["detail"] and ed_sel in proof["detail"]
    finally:
        bot.close()

    # `dkimbot sign` (the real command): two signatures, RSA first, both verify via BIND.
    signed = dkimbot_cmd(cfg_path, "sign", stdin=booking(domain))
    assert signed.returncode == 0, signed.stderr.decode()
    results = verify_all(signed.stdout, bind)
    assert results == [(rsa_sel, "rsa-sha256", True), (ed_sel, "ed25519-sha256", True)]
