"""One next-check rule (``cases.next_check_at``) for rechecks and the watch after completion.

The watch used to compute its own delay and ignored ``[schedule] check_steps``; here a
watched case whose record vanished is scheduled by the configured steps. Pure decision
on a real SQLite store; no DNS is asked (the DKIM verdict is handed in).
"""

from __future__ import annotations

import ast
from datetime import datetime, timedelta, timezone
from pathlib import Path

from bot.config import Config, ScheduleConfig
from bot.core import cases as sm
from bot.core.cases import State
from bot.core.dnsresults import AreaResult, Diagnosis
from bot.flows.monitor import apply_watch
from bot.flows.runtime import Bot

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)


def test_the_rule_uses_the_configured_steps() -> None:
    schedule = ScheduleConfig(check_interval_seconds=300, check_steps=[[0, 900], [2, 3600]])
    assert sm.next_check_at(T0, T0, schedule) == T0 + timedelta(seconds=900)
    assert sm.next_check_at(T0 + timedelta(hours=3), T0, schedule) == T0 + timedelta(hours=3, seconds=3600)
    builtin = ScheduleConfig(check_interval_seconds=300)
    assert sm.next_check_at(T0, T0, builtin) == T0 + timedelta(seconds=300)


def test_the_watch_honours_check_steps(tmp_path: Path) -> None:
    cfg = Config()
    cfg.state_dir = tmp_path / "state"
    cfg.schedule.check_interval_seconds = 300
    cfg.schedule.check_steps = [[0, 1800]]  # a vanished record is looked at every 30 minutes
    cfg.schedule.signing_grace_days = 5
    bot = Bot.open(cfg, clock=lambda: T0)
    try:
        with bot.store.transaction():
            case = bot.store.create_case(state=State.AWAITING_DKIM, now=T0 - timedelta(days=3),
                                         domain="hotel.test", selector="s1", selectors=["s1"],
                                         facility="テストホテル", requester="info@hotel.test")
            case = bot.store.transition(case.id, State.ESCALATED, T0 - timedelta(days=2),
                                        expected_state=State.AWAITING_DKIM, event="test",
                                        resume_state=State.AWAITING_DKIM)
            case = bot.store.transition(case.id, State.COMPLETED, T0 - timedelta(days=1),
                                        expected_state=State.ESCALATED, event="test")
        gone = AreaResult(False, [Diagnosis("dkim_not_published", "公開されていません")], {})
        apply_watch(bot, case, {"s1": gone}, client=None)
        case = bot.store.get_case(case.id)
        assert case.state == "dkim_lost"
        assert case.next_check_at == T0 + timedelta(seconds=1800)  # the step, not the built-in 300 s
    finally:
        bot.close()


def test_no_other_module_computes_a_check_delay() -> None:
    users = []
    for path in sorted((ROOT / "bot").rglob("*.py")):
        if path.name == "cases.py" and path.parent.name == "core":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute | ast.Name) and getattr(node, "attr", getattr(node, "id", "")) \
                    == "next_check_delay":
                users.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert users == []
