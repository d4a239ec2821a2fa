"""The staff site's DMARC chart ([reports] on): each facility's pass rate per day at the
receivers, from reports taken in by the real intake; facilities whose own (予約番) mail
fails come first, in red. Through the real ASGI application over a real SQLite store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dmarckit
from starlette.testclient import TestClient
from test_web_security import Clock, _add_staff, _config, _login

from bot.adapters.intake import MaildirMailbox
from bot.adapters.store import Store
from bot.config import ReportsConfig
from bot.flows.dmarcintake import intake_once
from bot.flows.runtime import Bot
from bot.web.app import create_app


def _reports_site(tmp_path, enabled: bool = True):  # type: ignore[no-untyped-def]
    cfg = _config(tmp_path)
    cfg.reports = ReportsConfig(enabled=enabled, kind="maildir", path="rua")
    cfg.dns.nameservers, cfg.dns.port, cfg.dns.timeout = ["127.0.0.1"], 9, 0.2  # PTR: loopback only
    _add_staff(cfg, "tanaka")
    return cfg


def test_the_charts_page_shows_each_facilitys_dmarc_pass_rate(tmp_path) -> None:
    cfg = _reports_site(tmp_path)
    clock = Clock()
    store = Store(cfg.state_dir / "dkimbot.sqlite3")
    bot = Bot(cfg=cfg, store=store, clock=clock)
    try:
        since = datetime(2026, 11, 1, tzinfo=UTC)
        dmarckit.completed_case(store, dmarckit.DOMAIN, since)
        dmarckit.completed_case(store, "ryokan-sugi.test", since)
        box = MaildirMailbox(cfg.state_path("rua"))
        for _name, raw in dmarckit.corpus_mails():
            box.deliver(raw)
        day = datetime(2026, 11, 22, tzinfo=UTC)
        xml = dmarckit.google_style_xml("ryokan-sugi.test", day, "s-1", [("203.0.113.10", 7, "fail", "fail"),
                                                                        ("203.0.113.10", 3, "pass", "fail")])
        box.deliver(dmarckit.google_mail(xml, "ryokan-sugi.test", day))
        assert intake_once(bot)["stored"] == 7
    finally:
        store.close()
    client = TestClient(create_app(cfg, clock=clock), follow_redirects=False)
    _login(client)
    page = client.get("/charts")
    assert page.status_code == 200
    text = page.text
    assert "施設ごとのDMARC合格率" in text
    # The corpus' hand-counted figures; the facility whose own mail failed comes first, in red.
    assert "93.6%（221/236通）" in text
    # These report mails are not DKIM-signed: shown, and marked as unverified.
    assert "30%（3/10通） 予約番不合格7 未検証10" in text
    assert "<th>未検証</th>" in text
    assert text.index("ryokan-sugi.test") < text.index(dmarckit.DOMAIN)
    assert '#c0392b">ryokan-sugi.test</text>' in text
    # One bar per reported day: 2026-11-20, 21 and 22 for the corpus domain.
    for d in ("2026-11-20: 174/186 合格、予約番 160/160", "2026-11-21: 31/32 合格、予約番 27/27",
              "2026-11-22: 16/18 合格、予約番 16/16"):
        assert d in text, d
    clock.now += timedelta(days=40)  # out of the 30-day window (the session too: log in again)
    _login(client)
    assert "まだレポートはありません" in client.get("/charts").text


def test_without_reports_the_charts_page_says_so(tmp_path) -> None:
    cfg = _reports_site(tmp_path, enabled=False)
    client = TestClient(create_app(cfg, clock=Clock()), follow_redirects=False)
    _login(client)
    text = client.get("/charts").text
    assert "DMARCレポートの読み取り（[reports]）は設定されていません" in text
    assert "施設ごとのDMARC合格率" not in text
