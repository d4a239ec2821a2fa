"""Staff mail cannot be flooded (issue 11): anyone can make the bot write to staff (a
spoofed reply, a request for a domain in progress), so escalations are gated.

* An escalation about a case that already had one within the hour is **merged**: held
  (a ``staff_mail_held`` event with its subject and text) and sent later as one mail
  listing every held note of that case, once the hour is over.
  (``bot/flows/staffnotes.py``).
* Past ``[service] max_staff_mails_per_hour`` escalations in the last hour the rest are
  **held for the digest**: the daily digest lists them; nothing is lost.

Digests, proof reports and the held notes' own merged mail pass the gate untouched
except for the hourly cap.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from bot.adapters.store import Store
from bot.core.rows import CaseRow
from bot.flows.desks import Office

log = logging.getLogger("dkimbot")

HELD = "staff_mail_held"
RELEASED = "staff_notes_released"
WINDOW = timedelta(hours=1)


def recent_escalations(store: Store, now: datetime) -> list[dict[str, Any]]:
    return [r for r in store.staff_mails_since(now - WINDOW) if r["kind"] == "staff_escalation"]


def hold_staff_mail(office: Office, kind: str, cases_: list[CaseRow], subject: str, body: str,
                    *, merged_release: bool = False) -> bool:
    """True when this staff mail is held instead of queued (recorded as an event)."""
    if kind != "staff_escalation":
        return False
    now = office.clock()
    recent = recent_escalations(office.store, now)
    ids = {c.id for c in cases_}
    why = None
    if ids and not merged_release and any(ids & set(r["case_ids"]) for r in recent):
        why = "merged"
    elif 0 < office.cfg.service.max_staff_mails_per_hour <= len(recent):
        why = "over the hourly cap"
    if why is None:
        return False
    detail = {"subject": subject, "text": body[:4000], "why": why}
    targets: list[int | None] = [*sorted(ids)] or [None]
    for case_id in targets:
        office.store.add_event(case_id, now, HELD, detail=detail)
    log.info("%s: staff mail held (%s)", ",".join(c.ref for c in cases_) or "-", why)
    return True


def held_notes(store: Store, since: datetime) -> list[dict[str, Any]]:
    """Held staff notes since ``since`` not yet sent in a merged mail (for the digest too)."""
    events = store.events_since(since)
    released = {i for e in events if e["kind"] == RELEASED for i in e["detail"].get("ids", [])}
    return [e for e in events if e["kind"] == HELD and e["id"] not in released]
