"""The simplified flow: a zone on the operator's own name servers is set up by the bot.

Real BIND with the harness's TSIG key standing in for the operator's; the facility does
nothing but publish SPF (which the bot never edits for it).
"""

from __future__ import annotations

import uuid

import pytest

from bot.config import load_config
from bot.adapters.intake import MaildirMailbox
from bot.app.jobs import Bot, run_pass
from configkit import dns, service, smtp_out, write_toml
from test_e2e import body_of, request_mail

pytestmark = pytest.mark.servers


def test_a_managed_domain_is_published_by_the_bot_and_completes(tmp_path, bind, smtp):
    tag = uuid.uuid4().hex[:6]
    domain = f"managed-{tag}.test"
    saas = f"saas-{tag}.test"
    ops = f"ops-{tag}.test"  # the operator's zone holds its name server (issue 11: never a facility's)
    bind.add_zone(ops, servers=[bind.addresses[0]])
    bind.add_zone(domain, (f"ns1.{ops}",), servers=[bind.addresses[0]])
    bind.add_zone(saas)
    bind.update(saas, "_spf", "TXT", ["v=spf1 ip4:203.0.113.10 -all"])
    smtp.clear()
    # The admin address is in the SaaS's facility registry: proof of control without a
    # confirmation mail (tests/test_security_managed.py covers the confirmation itself).
    registry = tmp_path / "facilities.csv"
    registry.write_text(f"admin_email\ninfo@{domain}\n", encoding="utf-8")
    cfg_file = write_toml(tmp_path / "c.toml", {
        "service": service(spf_include=f"_spf.{saas}"),
        "outbound": smtp_out(smtp, timeout=None),
        "dns": dns(bind, managed_nameservers=[f".{ops}"], tsig_key_name=bind.tsig_key_name,
                   tsig_secret=bind.tsig_secret),
        "schedule": {"check_interval_seconds": 0},
        "registry": {"file": str(registry)},
        "state": {"dir": str(tmp_path / "state")},
    })
    cfg = load_config(cfg_file)
    bot = Bot.open(cfg)
    MaildirMailbox(cfg.state_path(cfg.intake.maildir)).deliver(request_mail(domain, f"<r-{tag}@{domain}>"))

    run_pass(bot)
    [case] = bot.store.list_cases()
    # The bot published DKIM and DMARC itself, in the real zone...
    fqdn = f"{case.selector}._domainkey.{domain}"
    published = b"".join(bind.txt(fqdn)[0]).decode()
    key = bot.keystore.get(domain, case.selector)
    assert published == key.record
    assert bind.txt(f"_dmarc.{domain}") == [[b"v=DMARC1; p=none"]]
    events = [e["kind"] for e in bot.store.events(case.id)]
    assert "managed_publish" in events
    # ...and told the facility there is nothing to do.
    first = smtp.messages[0]
    assert "弊社で行います" in first.message["Subject"]
    assert "御社でのご対応は必要ありません" in body_of(first.raw)
    # The same pass (interval 0) already saw DKIM right, installed and proved it.
    assert bot.store.get_case(case.id).state in ("awaiting_dmarc", "awaiting_final")

    # Only SPF is the facility's: once it includes ours, the case completes.
    bind.update(domain, "@", "TXT", [f"v=spf1 include:_spf.{saas} ~all"])
    run_pass(bot)
    assert bot.store.get_case(case.id).state == "completed"
    assert any("設定が完了しました" in m.message["Subject"] for m in smtp.messages)
    bot.close()


def test_a_domain_on_other_name_servers_gets_the_normal_instructions(tmp_path, bind, smtp):
    tag = uuid.uuid4().hex[:6]
    domain = f"selfrun-{tag}.test"
    bind.add_zone(domain)
    smtp.clear()
    cfg_file = write_toml(tmp_path / "c.toml", {
        "outbound": smtp_out(smtp, timeout=None),
        "dns": dns(bind, timeout=None, managed_nameservers=[".489ban.net"],
                   tsig_key_name=bind.tsig_key_name, tsig_secret=bind.tsig_secret),
        "schedule": {"check_interval_seconds": 3600},
        "state": {"dir": str(tmp_path / "state")},
    })
    cfg = load_config(cfg_file)
    bot = Bot.open(cfg)
    MaildirMailbox(cfg.state_path(cfg.intake.maildir)).deliver(request_mail(domain, f"<r-{tag}@{domain}>"))
    run_pass(bot)
    [case] = bot.store.list_cases()
    assert bind.txt(f"{case.selector}._domainkey.{domain}") == []
    assert "managed_publish" not in [e["kind"] for e in bot.store.events(case.id)]
    assert "DNSへの設定（レコード）の登録のお願い" in smtp.messages[0].message["Subject"]
    bot.close()
