"""Issue 11's manual confirmation of proof of control, from the staff site: a stranger's
request for a domain on the operator's name servers waits; a staff member confirms it on
the case page (CSRF, then a confirmation step) and the records are published in BIND by
RFC 2136, recorded under the staff member's name. Real Dovecot, BIND and SMTP sink."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from starlette.testclient import TestClient
from test_security_managed import World, mail, request_body

from bot.adapters import signer
from bot.app.jobs import run_pass
from bot.web.accounts import hash_password
from bot.web.app import create_app

pytestmark = pytest.mark.servers
PASSWORD = "correct horse battery"


def test_staff_confirm_from_the_case_page(tmp_path, dovecot, bind, smtp, monkeypatch):
    w = World(tmp_path, dovecot, bind, smtp, monkeypatch)
    admin = f"ceo@{w.domain}"
    w.deliver(mail("Mallory <mallory@evil.example>", "DKIM、DMARC設定希望", request_body(w.domain, admin)))
    run_pass(w.bot)
    [case] = w.bot.store.list_cases()
    assert case.state == "awaiting_confirmation"
    w.bot.store.add_staff("tanaka", hash_password(PASSWORD), datetime.now(UTC))

    client = TestClient(create_app(w.cfg), follow_redirects=False)
    token = re.search(r'name="token" value="([^"]+)"', client.get("/login").text)
    assert token
    assert client.post("/login", data={"token": token.group(1), "name": "tanaka",
                                       "password": PASSWORD}).status_code == 303
    page = client.get(f"/cases/{case.ref}").text
    assert "管理確認待ち" in page and 'value="confirm"' in page
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)
    assert csrf

    # Without the session's token: refused, nothing published.
    assert client.post(f"/cases/{case.ref}/action", data={"action": "confirm", "confirmed": "yes",
                                                           "csrf": "forged"}).status_code == 403
    # With it: first the confirmation step, still nothing published.
    r = client.post(f"/cases/{case.ref}/action", data={"action": "confirm", "csrf": csrf.group(1)})
    assert r.status_code == 200 and "本当に実行しますか" in r.text and admin in r.text
    assert w.published(case.selector) == [] and signer.installed_selectors(w.cfg, w.domain) == []
    # Confirmed: the same flow as `dkimbot confirm` publishes by RFC 2136 into BIND.
    r = client.post(f"/cases/{case.ref}/action", data={"action": "confirm", "csrf": csrf.group(1),
                                                       "confirmed": "yes"})
    assert r.status_code == 303
    key = w.bot.keystore.get(w.domain, case.selector)
    assert b"".join(w.published(case.selector)[0]).decode() == key.record
    events = w.bot.store.events(case.id)
    assert [e["detail"]["by"] for e in events if e["kind"] == "staff_confirm"] == ["tanaka"]
    page = client.get(f"/cases/{case.ref}").text
    assert "staff_confirm" in page and "操作: tanaka" in page
    assert w.bot.store.get_case(case.id).state != "awaiting_confirmation"
    # A second confirmation is refused with the reason; nothing else changes.
    r = client.post(f"/cases/{case.ref}/action", data={"action": "confirm", "csrf": csrf.group(1),
                                                       "confirmed": "yes"})
    assert r.status_code == 303
    assert "実行できませんでした" in client.get(f"/cases/{case.ref}").text
    assert [e["kind"] for e in w.bot.store.events(case.id)].count("staff_confirm") == 1
    w.bot.close()
