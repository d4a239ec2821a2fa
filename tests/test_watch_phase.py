"""The daily watch of completed domains keeps each domain's time of day (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bot.core.watchtime import next_watch, watch_phase


def test_each_domain_keeps_its_time_of_day_and_late_passes_do_not_drift_it():
    start = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
    first = next_watch("ryokan-a.test", start)
    assert timedelta(hours=1) < first - start <= timedelta(hours=25)
    # Watched 7 minutes late (a slow pass): the next watch is still at the same time of day.
    second = next_watch("ryokan-a.test", first + timedelta(minutes=7))
    assert second - first == timedelta(days=1)
    assert (second - second.replace(hour=0, minute=0, second=0)) == watch_phase("ryokan-a.test")
    # Names are compared as DNS names are.
    assert watch_phase("Ryokan-A.test.") == watch_phase("ryokan-a.test")


def test_a_burst_of_completions_is_spread_over_the_day():
    now = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
    times = [next_watch(f"ryokan{i:05d}.test", now) for i in range(5000)]
    per_hour = [0] * 24
    for t in times:
        per_hour[t.hour] += 1
    # 5,000 domains completed in the same second: ~208 an hour, none near all at once.
    assert max(per_hour) < 300 and min(per_hour) > 130, per_hour
    assert all(t > now + timedelta(hours=1) for t in times)
