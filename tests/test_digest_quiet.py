"""The staff digest says only what a human must see (issue 13): no mail on a quiet day,
rejected requests leave the totals after a week, lost records listed with their deadline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bot.config import load_config
from bot.flows.digest import META_KEY, build_digest, digest_once, needs_a_human, render_digest
from bot.flows.runtime import Bot

T0 = datetime(2026, 12, 1, 1, 0, tzinfo=UTC)


PATHS = {  # how a case reaches a state, one allowed move at a time (Store.transition)
    "escalated": ["escalated"],
    "dkim_lost": ["awaiting_dmarc", "completed", "dkim_lost"],
    "signing_stopped": ["awaiting_dmarc", "completed", "dkim_lost", "signing_stopped"],
}


def make_case(bot, state, now, **fields):
    """A case in ``state`` since ``now``: begun in awaiting_dkim (or rejected) and moved."""
    if state in ("awaiting_dkim", "rejected"):
        return bot.store.create_case(state=state, now=now, **fields)
    case = bot.store.create_case(state="awaiting_dkim", now=now, **fields)
    for step in PATHS[state]:
        case = bot.store.transition(case.id, step, now, expected_state=case.state, event="test")
    return case


def open_bot(tmp_path, now):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[service]\nstaff_cc = ["staff@489ban.net"]\n[outbound]\nkind = "directory"\n'
                   f'[schedule]\nsigning_grace_days = 5\n[state]\ndir = "{tmp_path / "state"}"\n')
    return Bot.open(load_config(cfg), clock=lambda: now[0])


def test_a_quiet_day_sends_no_digest_and_a_day_with_an_escalation_does(tmp_path):
    now = [T0]
    bot = open_bot(tmp_path, now)
    try:
        with bot.store.transaction():
            bot.store.create_case(state="awaiting_dkim", now=now[0], facility="ホテルさくら", domain="a.test")
        assert digest_once(bot) == 0  # the first pass only starts the clock
        now[0] += timedelta(days=1)
        assert digest_once(bot) == 0  # a case simply waiting: nothing for a human
        assert bot.store.get_meta(META_KEY) == now[0].date().isoformat()  # the day is done
        assert not list((tmp_path / "state" / "outbox").glob("*.eml"))  # no mail queued either
        now[0] += timedelta(days=1)
        with bot.store.transaction():
            make_case(bot, "escalated", now[0], facility="旅館もみじ", domain="b.test")
        assert digest_once(bot) == 1
    finally:
        bot.close()


def test_rejected_cases_leave_the_totals_after_a_week(tmp_path):
    now = [T0]
    bot = open_bot(tmp_path, now)
    try:
        with bot.store.transaction():
            bot.store.create_case(state="rejected", now=T0, facility="民宿うみ", domain="gmail.com")
            bot.store.create_case(state="awaiting_dkim", now=T0, facility="ホテルさくら", domain="a.test")
        assert build_digest(bot, T0 + timedelta(days=6))["total"] == 2
        later = build_digest(bot, T0 + timedelta(days=8))
        assert later["total"] == 1 and "rejected" not in dict(later["by_state"])
    finally:
        bot.close()


def test_lost_records_are_listed_with_the_time_signing_stops(tmp_path):
    now = [T0]
    bot = open_bot(tmp_path, now)
    try:
        with bot.store.transaction():
            lost = make_case(bot, "dkim_lost", T0, facility="ホテルさくら", domain="a.test")
            make_case(bot, "signing_stopped", T0, facility="旅館もみじ", domain="b.test")
        digest = build_digest(bot, T0 + timedelta(days=1))
        assert needs_a_human(digest)
        _subject, body = render_digest(bot, T0 + timedelta(days=1))
        section = body.split("DKIM record lost after completion")[1].split("Delivery errors")[0]
        assert f"{lost.ref} ホテルさくら (a.test) dkim_lost" in section
        assert f"signing stops {(T0 + timedelta(days=5)).isoformat(timespec='minutes')} UTC" in section
        assert "signing_stopped" in section and "signing stopped" in section
    finally:
        bot.close()
