"""The first staff digest waits until the bot has run a full day (no digest at install,
none when a first pass and the next straddle midnight)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bot.config import load_config
from bot.flows.digest import digest_once
from bot.flows.runtime import Bot


def test_the_first_digest_waits_a_full_day(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[outbound]\nkind = "directory"\n[state]\ndir = "{tmp_path / "state"}"\n')
    now = [datetime(2026, 11, 28, 23, 59, 30, tzinfo=UTC)]
    bot = Bot.open(load_config(cfg), clock=lambda: now[0])
    with bot.store.transaction():  # something for a human: a quiet day sends no digest
        case = bot.store.create_case(state="awaiting_dkim", now=now[0], facility="ホテルさくら", domain="sakura.test")
        bot.store.transition(case.id, "escalated", now[0], expected_state="awaiting_dkim", event="test")
    try:
        assert digest_once(bot) == 0          # 23:59:30, the first pass
        now[0] += timedelta(minutes=1)        # 00:00:30 the next day, digest_hour 0
        assert digest_once(bot) == 0
        now[0] += timedelta(hours=23, minutes=58)
        assert digest_once(bot) == 0          # still under a day since the first pass
        now[0] += timedelta(minutes=2)
        assert digest_once(bot) == 1          # a full day: the first digest
        assert digest_once(bot) == 0          # once a day
        now[0] += timedelta(days=1)
        assert digest_once(bot) == 1
    finally:
        bot.close()
