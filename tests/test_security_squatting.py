"""Domain squatting: a stranger's unproven request for a domain holds nothing.

A stranger mails support@ first, naming a facility of someone else's domain (its real
admin address, even its real name). Before the domain's own people prove control (the
DKIM record on every authoritative server and a verified probe; in a managed zone the
admin address's confirmation) that case is only the stranger's claim. Through real
Dovecot (the support mailbox), BIND (the facility's zone) and the SMTP sink:

* the contact the stranger names (the facility's own yamada@) is not mailed the
  stranger's record (publishing it would have carried the stranger's case on);
* the facility's own request, from its admin address or a colleague, gets a case and a
  record of its own at once (before: a colleague was told "already in progress" and got
  nothing; the admin address was answered on the stranger's case, whose later mails,
  DKIM active included, went to the stranger);
* publishing it carries on the facility's case only: nothing about it reaches the
  stranger, the stranger's key is never installed, the stranger's case is untouched;
* once the domain is proven, the stranger asking again is told it is in progress, and
  learns nothing of the case.
"""

from __future__ import annotations

import pytest
from test_e2e import body_of, dkim_boxes
from test_security_parties import STAFF, World, block, mail, to_of

pytestmark = pytest.mark.servers
MALLORY = "mallory@evil.example"


def _records(messages, address: str) -> list[str]:
    return [b["value"] for m in messages if address in to_of(m) for b in dkim_boxes(body_of(m.raw))]


@pytest.mark.parametrize("local", ["info", "sato"])  # the admin address the stranger named; a colleague
def test_a_strangers_early_request_neither_blocks_nor_follows_the_facility(
        tmp_path, dovecot, bind, smtp, monkeypatch, local):
    w = World(tmp_path, dovecot, bind, smtp, monkeypatch)
    domain = f"squat-{local}-{w.tag}.test"
    bind.add_zone(domain, (f"ns1.{domain}", f"ns2.{domain}"))
    real = f"{local}@{domain}"

    # The stranger asks first, for the real facility by its real name and admin address.
    # Its contact: the facility's own yamada@, who must not be mailed the stranger's record.
    w.deliver(mail(MALLORY, "DKIM、DMARC設定希望", block("ホテル海風", domain)))
    first = w.run()
    [squat] = w.bot.store.list_cases()
    assert squat.state == "awaiting_dkim" and squat.requester == MALLORY
    assert not [m for m in first if to_of(m) - {MALLORY, STAFF}]  # nobody else was mailed

    # The facility's own request: a case and a record of its own, at once.
    w.deliver(mail(real, "DKIM、DMARC設定希望", block("ホテル海風", domain)))
    second = w.run()
    assert not [m for m in second if MALLORY in to_of(m)]
    [reply] = [m for m in second if real in to_of(m)]
    text = body_of(reply.raw)
    assert "既に別のお申し込みで" not in text and MALLORY not in text and squat.ref not in text
    [value] = _records(second, real)
    mine = next(c for c in w.bot.store.list_cases() if c.id != squat.id)
    assert (mine.requester, mine.state, mine.domain) == (real, "awaiting_dkim", domain)
    assert set(mine.selectors).isdisjoint(squat.selectors)  # its own key, not the stranger's
    assert w.bot.store.get_case(squat.id) == squat  # the stranger's case is untouched

    # The facility publishes its record and says so: its case goes on, the stranger's not.
    bind.update(domain, f"{mine.selector}._domainkey", "TXT", [value])
    w.deliver(mail(real, f"Re: [{mine.ref}]", "設定しました。", in_reply_to=reply.message["Message-ID"]))
    third = w.run()
    assert w.bot.store.get_case(mine.id).state == "awaiting_dmarc"
    assert any("DKIM署名を開始しました" in str(m.message["Subject"]) and real in to_of(m) for m in third)
    assert not [m for m in third if MALLORY in to_of(m)]
    assert w.bot.store.get_case(squat.id).state == "awaiting_dkim"
    keytable = w.cfg.state_path(w.cfg.signer.keytable).read_text()
    assert f"{mine.selector}._domainkey.{domain}" in keytable
    assert not any(f"{s}._domainkey" in keytable for s in squat.selectors)

    # Now the domain is proven: the stranger asking again is told it is in progress, no more.
    w.deliver(mail(MALLORY, "DKIM、DMARC設定希望", block("ホテル海風", domain, MALLORY)))
    fourth = w.run()
    [to_mallory] = [m for m in fourth if MALLORY in to_of(m)]
    text = body_of(to_mallory.raw)
    assert "既に別のお申し込みで" in text
    assert "v=DKIM1" not in text and mine.ref not in text and real not in text and mine.selector not in text
    assert w.bot.store.get_case(mine.id).requester == real
    assert len(w.bot.store.list_cases()) == 2


def test_a_strangers_daily_requests_in_a_managed_zone_do_not_starve_the_admins_own(
        tmp_path, dovecot, bind, smtp, monkeypatch):
    """The simplified flow (our name servers, RFC 2136 on BIND): one confirmation mail a
    day per zone. A stranger asking for the domain first (and again each day) used to
    hold the admin's own request behind that mail until it expired unconfirmed; now a
    request mailed from the admin address gets its token at once, confirms its own case
    only, and nothing about it reaches the stranger."""
    import re
    from datetime import UTC, datetime, timedelta

    from test_security_managed import World as ManagedWorld
    from test_security_managed import mail as mmail
    from test_security_managed import request_body

    now = [datetime.now(UTC)]
    w = ManagedWorld(tmp_path, dovecot, bind, smtp, monkeypatch, clock=lambda: now[0])
    admin = f"ceo@{w.domain}"

    def run() -> list:
        before = len(smtp.messages)
        from bot.app.jobs import run_pass

        run_pass(w.bot)
        return smtp.messages[before:]

    w.deliver(mmail(MALLORY, "DKIM、DMARC設定希望", request_body(w.domain, admin, MALLORY)))
    run()
    [squat] = w.bot.store.list_cases()
    assert squat.state == "awaiting_confirmation"

    # The admin's own request, the same day: its own case, its token mailed at once.
    w.deliver(mmail(admin, "DKIM、DMARC設定希望", request_body(w.domain, admin)))
    second = run()
    mine = next(c for c in w.bot.store.list_cases() if c.id != squat.id)
    assert (mine.requester, mine.state) == (admin, "awaiting_confirmation")
    assert set(mine.selectors).isdisjoint(squat.selectors)
    found = [(t, m) for m in second if admin in to_of(m)
             for t in re.findall(r"DKIMC-[A-Z0-9]{4}-[A-Z0-9]{4}-[A-Z0-9]{4}", body_of(m.raw))]
    [token] = {t for t, _ in found}
    confirmation = found[0][1].message
    assert not [m for m in second if MALLORY in to_of(m)]

    # The admin answers with it: its case is confirmed and published, the stranger's not.
    now[0] += timedelta(minutes=5)
    w.deliver(mmail(admin, f"Re: {confirmation['Subject']}", f"お願いします。\n\n> 確認コード：{token}",
                    in_reply_to=confirmation["Message-ID"]))
    third = run()
    assert w.bot.store.get_case(mine.id).state not in ("awaiting_confirmation", "cancelled")
    assert w.published(mine.selector) != []
    assert w.bot.store.get_case(squat.id).state == "awaiting_confirmation"
    assert w.published(squat.selector) == []
    assert not [m for m in third if MALLORY in to_of(m)]


def test_forty_strangers_do_not_use_up_the_domains_selectors(tmp_path, dovecot, bind, smtp, monkeypatch):
    """Review 2026-12-01: each stranger's unproven request for a domain gets a selector of
    its own, and only 40 candidates were tried: forty forged senders (one mail each) made
    the facility's own request fail with "no free selector" on every pass, for the rest of
    the month. Selectors the bot already used are skipped without counting."""
    w = World(tmp_path, dovecot, bind, smtp, monkeypatch)
    domain = f"exhaust-{w.tag}.test"
    bind.add_zone(domain, (f"ns1.{domain}",))
    for n in range(40):
        w.deliver(mail(f"m{n}@evil{n}.example", "DKIM、DMARC設定希望", block("ホテル海風", domain)))
    w.run()
    strangers = w.bot.store.list_cases()
    assert len(strangers) == 40
    w.deliver(mail(f"info@{domain}", "DKIM、DMARC設定希望", block("ホテル海風", domain)))
    out = w.run()
    [mine] = [c for c in w.bot.store.list_cases() if c.requester == f"info@{domain}"]
    assert mine.state == "awaiting_dkim"
    assert mine.selector not in {s for c in strangers for s in c.selectors}
    assert [value for value in _records(out, f"info@{domain}")]  # its record was mailed
