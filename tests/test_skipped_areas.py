"""The staff escalation of a stalled case lists the last check's areas: one that check
did not ask (DKIM was still wrong) says "skipped", never "ok"."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from bot.config import load_config
from bot.core.dnsresults import AreaResult, CheckReport, Diagnosis
from bot.flows.escalation import stall_context
from bot.flows.runtime import Bot

NOW = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)


def test_the_stall_escalation_calls_unasked_areas_skipped(tmp_path: Path) -> None:
    bot = Bot.open(load_config(None, state_dir=tmp_path / "state"), clock=lambda: NOW)
    with bot.store.transaction():
        case = bot.store.create_case(state="awaiting_dkim", now=NOW - timedelta(days=3), facility="ホテル",
                                     domain="hotel.test", selector="s1", selectors=["s1"])
        skipped = AreaResult(True, [], {"skipped": "asked once the DKIM record is right"})
        dkim = AreaResult(False, [Diagnosis("dkim_quoted", "引用符が含まれています。")], {})
        bot.store.add_event(case.id, NOW - timedelta(days=1), "check",
                            detail={"dns": CheckReport(dkim, skipped, skipped, skipped).to_json()})
    [case] = bot.store.list_cases()
    reason = stall_context(bot.store, case)["reason"]
    lines = {line.split()[0]: line for line in reason.splitlines() if line.startswith("  ")}
    assert "NOT OK" in lines["dkim"] and "dkim_quoted" in lines["dkim"]
    for area in ("dmarc", "spf", "alignment"):
        assert lines[area].split()[1:] == ["skipped", "(asked", "once", "the", "DKIM", "record", "is", "right)"]
    bot.close()
