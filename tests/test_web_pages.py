"""What the staff site's list and charts say, over a real SQLite store with known cases:
stuck cases first, filters, search, pages; the funnel per week, days to completion and
the diagnoses that keep cases waiting."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from starlette.testclient import TestClient

from bot.adapters.store import Store
from bot.config import WebConfig, load_config
from bot.web import charts
from bot.web.accounts import hash_password
from bot.web.app import create_app

NOW = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)  # a Monday, 12:00 JST
PASSWORD = "correct horse battery"


def _store(tmp_path: Path) -> Store:
    return Store(tmp_path / "state" / "dkimbot.sqlite3")


# How a case gets to each state, through the moves the bot makes (Store.transition).
PATHS = {"awaiting_dkim": [], "awaiting_dmarc": ["awaiting_dmarc"], "completed": ["awaiting_dmarc", "completed"],
         "escalated": ["escalated"], "cancelled": ["cancelled"]}


def _case(store: Store, n: int, state: str, *, created: datetime, since: datetime,
          notice: str | None = None, reached: dict[str, datetime] | None = None,
          facility: str | None = None) -> str:
    """A case created at ``created`` that arrived in ``state`` at ``since`` (steps before it
    at the times in ``reached``, else at ``since``)."""
    initial = state if state in ("needs_info", "rejected") else "awaiting_dkim"
    case = store.create_case(state=initial, now=created, facility=facility or f"ホテル{n}",
                             domain=f"hotel{n}.test", selector="s1", selectors=["s1"])
    current = initial
    for to_state in PATHS.get(state, []):
        at = (reached or {}).get(to_state, since)
        case = store.transition(case.id, to_state, at, expected_state=current, event="transition",
                                resume_state="awaiting_dkim" if to_state == "escalated" else None)
        current = to_state
    store.update_case(case.id, since, last_notice=notice, next_check_at=NOW + timedelta(hours=1))
    return case.ref


def _client(tmp_path: Path, page_size: int = 100) -> TestClient:
    cfg = load_config(None, state_dir=tmp_path / "state")
    cfg.web = WebConfig(page_size=page_size)
    store = _store(tmp_path)
    store.add_staff("tanaka", hash_password(PASSWORD), NOW)
    store.close()
    client = TestClient(create_app(cfg, clock=lambda: NOW), follow_redirects=False)
    token = re.search(r'name="token" value="([^"]+)"', client.get("/login").text)
    assert token
    r = client.post("/login", data={"token": token.group(1), "name": "tanaka", "password": PASSWORD})
    assert r.status_code == 303
    return client


def _refs(html: str) -> list[str]:
    return re.findall(r'<td><a href="/cases/(DKIM-\d+)">', html)


def test_the_list_puts_stuck_cases_first_and_filters_searches_and_pages(tmp_path):
    store = _store(tmp_path)
    with store.transaction():
        fresh = _case(store, 1, "awaiting_dkim", created=NOW - timedelta(days=1), since=NOW - timedelta(days=1),
                      notice="dkim_wrong|dkim:dkim_truncated,dmarc:dmarc_not_published")
        done = _case(store, 2, "completed", created=NOW - timedelta(days=40), since=NOW - timedelta(days=30))
        stuck = _case(store, 3, "awaiting_dmarc", created=NOW - timedelta(days=20), since=NOW - timedelta(days=9),
                      notice="dmarc_missing|dmarc:dmarc_not_published", facility="旅館もみじ")
        stuck_longer = _case(store, 4, "escalated", created=NOW - timedelta(days=30), since=NOW - timedelta(days=12))
    store.close()
    client = _client(tmp_path)
    page = client.get("/").text
    # Stuck (active and 7 days or more in the state), longest first; then active; then the rest.
    assert _refs(page) == [stuck_longer, stuck, fresh, done]
    rows = page.split("<tbody>")[1]
    assert rows.count("stuck-mark") == 2
    # The last diagnosis is the one the state waits on: DKIM for a case waiting for DKIM.
    fresh_row = rows.split(fresh, 1)[1].split("</tr>")[0]
    assert "DKIMが255文字で切断" in fresh_row and "DMARC未公開" not in fresh_row
    assert _refs(client.get("/?state=completed").text) == [done]
    assert _refs(client.get("/", params={"q": "もみじ"}).text) == [stuck]
    assert _refs(client.get("/", params={"q": "hotel1.test"}).text) == [fresh]
    assert _refs(client.get("/", params={"q": fresh.lower()}).text) == [fresh]
    assert _refs(client.get("/", params={"q": "%"}).text) == []  # LIKE wildcards are literal


def test_pages_of_the_list(tmp_path):
    store = _store(tmp_path)
    with store.transaction():
        refs = [_case(store, n, "awaiting_dkim", created=NOW - timedelta(days=n), since=NOW - timedelta(days=n))
                for n in range(1, 6)]
    store.close()
    client = _client(tmp_path, page_size=2)
    first, second, third = (client.get(f"/?page={p}").text for p in (1, 2, 3))
    assert _refs(first) + _refs(second) + _refs(third) == list(reversed(refs))
    assert "1 / 3 ページ" in first and "次へ" in first and "前へ" not in first
    assert _refs(client.get("/?page=99").text) == []
    assert client.get("/?page=x").status_code == 200


def test_the_charts_count_the_funnel_completion_days_and_waiting_diagnoses(tmp_path):
    store = _store(tmp_path)
    this_week = NOW - timedelta(hours=1)           # Monday 11:00 JST
    last_week = NOW - timedelta(days=3)            # Friday of the week before
    with store.transaction():
        _case(store, 1, "completed", created=last_week, since=last_week + timedelta(days=2),
              reached={"awaiting_dmarc": last_week + timedelta(days=1), "completed": last_week + timedelta(days=2)})
        _case(store, 2, "awaiting_dmarc", created=last_week, since=last_week + timedelta(hours=5),
              notice="dmarc_missing|dmarc:dmarc_not_published",
              reached={"awaiting_dmarc": last_week + timedelta(hours=5)})
        _case(store, 3, "awaiting_dkim", created=this_week, since=this_week,
              notice="dkim_wrong|dkim:dkim_truncated,spf:spf_not_published")
        _case(store, 4, "awaiting_dkim", created=this_week, since=this_week)
        _case(store, 5, "rejected", created=this_week, since=this_week)
    data = charts.gather(store, NOW, weeks=3)
    store.close()
    assert [w.start for w in data.weeks] == ["2026-11-16", "2026-11-23", "2026-11-30"]
    assert [w.counts for w in data.weeks] == [(0, 0, 0, 0), (2, 2, 1, 1), (2, 0, 0, 0)]
    assert data.completion_days == [2.0]
    assert dict(data.waiting_on) == {"dmarc_not_published": 1, "dkim_truncated": 1, "not_checked_yet": 1}
    assert data.waiting_total == 3
    svg = str(charts.waiting_svg(data))
    assert "DKIMが255文字で切断" in svg and svg.startswith("<svg") and "<script" not in svg
    assert "中央値 2.0日（1件）" in str(charts.completion_svg(data))


def test_an_area_the_check_did_not_ask_is_shown_as_not_checked(tmp_path):
    """A check made while DKIM was still wrong did not ask DMARC, SPF or alignment:
    the case page says 未確認 for them, not OK."""
    from bot.core.dnsresults import AreaResult, CheckReport, Diagnosis

    store = _store(tmp_path)
    with store.transaction():
        ref = _case(store, 1, "awaiting_dkim", created=NOW - timedelta(days=1), since=NOW - timedelta(days=1))
        skipped = AreaResult(True, [], {"skipped": "asked once the DKIM record is right"})
        dkim = AreaResult(False, [Diagnosis("dkim_quoted", "引用符が含まれています。")], {})
        [case] = store.list_cases()
        store.add_event(case.id, NOW, "check", detail={"dns": CheckReport(dkim, skipped, skipped, skipped).to_json()})
    store.close()
    html = _client(tmp_path).get(f"/cases/{ref}").text
    verdicts = re.findall(r'<td class="verdict">(.*?)</td>', html, re.DOTALL)
    # The check is shown where the page lists the latest check and in the event log: four
    # areas each time, DKIM NG and the three others not checked.
    assert verdicts and len(verdicts) % 4 == 0
    for i in range(0, len(verdicts), 4):
        assert verdicts[i] == "NG"
        assert all(v.startswith("未確認") and "asked once the DKIM record is right" in v for v in verdicts[i + 1:i + 4])
