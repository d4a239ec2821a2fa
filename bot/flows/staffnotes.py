"""Held staff notes (bot/flows/staffgate.py) sent as one merged mail per case once the
hour since that case's last escalation is over (a module of its own: it queues mail
through compose, which itself asks the gate)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from bot.core.mailkinds import MailKind
from bot.flows.desks import MailDesk
from bot.flows.staffgate import RELEASED, held_notes, recent_escalations


def release_held_once(desk: MailDesk) -> int:
    """One merged mail per case whose held notes have waited out the hour; returns how many."""
    now = desk.clock()
    by_case: dict[int, list[dict[str, Any]]] = {}
    for e in held_notes(desk.store, now - timedelta(days=2)):
        if e["case_id"] is not None and e["detail"].get("why") == "merged":
            by_case.setdefault(e["case_id"], []).append(e)
    sent = 0
    for case_id, notes in by_case.items():
        recent = recent_escalations(desk.store, now)
        if any(case_id in r["case_ids"] for r in recent):
            continue  # the hour since the last one is not over
        if 0 < desk.cfg.service.max_staff_mails_per_hour <= len(recent):
            break  # the rest waits (and the digest lists it)
        from bot.flows.compose import enqueue_mail  # here: an idle pass has no notes and renders nothing

        case = desk.store.get_case(case_id)
        text = "\n\n".join(f"--- {n['at']}: {n['detail'].get('subject', '')}\n{n['detail'].get('text', '')}"
                           for n in notes)
        with desk.store.transaction():
            enqueue_mail(desk, MailKind.STAFF_ESCALATION, [case], {
                "reason_title": f"{len(notes)} more notes about this case (merged)",
                "reason": f"These arrived within an hour of an earlier escalation and were held:\n\n{text}"[:20000],
                "decide_hint": "Read them together; one decision usually answers all of them.",
                "diagnoses": []}, staff_only=True, merged_release=True)
            desk.store.add_event(case_id, now, RELEASED, detail={"ids": [n["id"] for n in notes]})
        sent += 1
    return sent
