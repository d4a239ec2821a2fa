"""SPEC §8 loop and rate safety: at most ``[service] max_mails_per_case_per_day`` facility
mails per case in 24 hours (a suppressed one is an event); staff mail is never limited.
Pure store + renderer test: nothing is sent."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from bot.flows.compose import enqueue_mail
from bot.config import Config
from bot.flows.runtime import Bot, utcnow


def test_a_case_gets_at_most_the_daily_number_of_facility_mails_staff_never_limited(tmp_path: Path) -> None:
    cfg = Config(state_dir=tmp_path / "state")
    cfg.service.max_mails_per_case_per_day = 2
    now = utcnow()
    clock = [now]
    bot = Bot.open(cfg, clock=lambda: clock[0])
    staff_ctx = {"reason_title": "t", "reason": "r", "decide_hint": "d", "diagnoses": []}
    with bot.store.transaction():
        case = bot.store.create_case(state="awaiting_dkim", now=now, facility="ホテルさくら",
                                     requester="yamada@hotel.test", domain="hotel.test")
        item = {"kind": "resend", "ref": case.ref, "facility": case.facility, "admin_email": "info@hotel.test",
                "domain": "hotel.test", "records": [], "shared_with": [], "provider_hint": None}
        ctx = {"items": [item], "subject_text": "DKIM設定のご案内", "records": True}
        ids = [enqueue_mail(bot, "request_reply", [case], ctx) for _ in range(3)]
        staff = enqueue_mail(bot, "staff_escalation", [case], staff_ctx, staff_only=True)
    assert ids[0] and ids[1] and ids[2] is None and staff
    assert [e["kind"] for e in bot.store.events(case.id)].count("mail_suppressed") == 1
    clock[0] = now + timedelta(days=1, seconds=1)  # a day later the case may be mailed again
    with bot.store.transaction():
        assert enqueue_mail(bot, "request_reply", [case], ctx) is not None
