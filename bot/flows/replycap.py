"""A global cap on mail to unproven senders: backscatter from a flood of distinct senders.

The per-address cap (``ratelimit``) and the per-sender case cap stop one sender, not one
attacker with a thousand From addresses: each would get its one polite reply (and, days
later, its reminders; in the simplified flow a confirmation mail), and the bot would
mail a thousand third parties (the forged Froms). So at most
``[service] max_unproven_mails_per_hour`` of the mails a stranger's request alone can
cause (``KINDS``: the request reply, the reminder, the confirmation mail, the
acknowledgement of a question) leave in any hour, all senders together; the rest stay
in the outbox, pending, and leave in order as later hours allow (nothing is lost: their
cases and keys were made, the mails are already written). Mails on cases the domain's
people proved (a known facility asking again) are not held. A problem mail a DNS change
caused is held like the rest (``KINDS``: every facility kind): the zone's owner acting
proves nothing about the requester's address. An attacker's own domain, junk published
at the selectors of a flood's cases, had every forged sender mailed "please fix your
record" uncapped, before the held reply with the record (review, 2026-12-01).

Staff are told once when the cap starts holding mail (one escalation per 24 hours,
through the staff gate), with the count, never once per held mail.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from bot.core.mailkinds import MailKind
from bot.core.rows import OutboxRow
from bot.flows.compose import enqueue_mail
from bot.flows.desks import MailDesk
from bot.flows.matching import proven

log = logging.getLogger("dkimbot")

TRIPPED = "unproven_mails_held"
WINDOW = timedelta(hours=1)
KINDS = tuple(k for k in MailKind if not k.to_staff)  # every mail to a requester or admin address


class ReplyCap:
    """One delivery run's view of the cap: how many such mails it may still send."""

    def __init__(self, desk: MailDesk) -> None:
        self.desk = desk
        self.limit = desk.cfg.service.max_unproven_mails_per_hour
        self.left: int | None = None  # counted when a row first needs it
        self.held = 0

    def _unproven(self, case_ids: list[int]) -> bool:
        store = self.desk.store
        return not (case_ids and all(proven(store, store.get_case(c)) for c in case_ids))

    def _budget(self) -> int:
        """What this hour still allows. Only mails on unproven cases count: a known
        facility's mails (completion reports after an outage, say) are not held, and must
        not use up the hour's allowance for new requests either."""
        if self.left is None:
            sent = self.desk.store.sent_case_ids_since(KINDS, self.desk.clock() - WINDOW)
            self.left = self.limit - sum(1 for ids in sent if self._unproven(ids))
        return self.left

    def held_ids(self, pending: list[OutboxRow]) -> set[int]:
        """The rows of ``pending`` (oldest first) that must wait for a later hour."""
        held: set[int] = set()
        if self.limit <= 0:
            return held
        for row in pending:
            if row.kind not in KINDS or not self._unproven(row.case_ids):
                continue  # staff mail, or a known facility's: not a stranger's
            if self._budget() > 0:
                self.left = self._budget() - 1
            else:
                held.add(row.id)
        self.held = len(held)
        return held

    def report(self) -> bool:
        """Tell staff, once a day at most, that such mails are being held (outside any
        transaction); True when a staff mail was queued."""
        if not self.held:
            return False
        desk, now = self.desk, self.desk.clock()
        log.warning("%d mails to unproven senders held: over [service] max_unproven_mails_per_hour = %d",
                    self.held, self.limit)
        if desk.store.global_events_since(TRIPPED, now - timedelta(days=1)):
            return False
        with desk.store.transaction():
            desk.store.add_event(None, now, TRIPPED, detail={"held": self.held, "limit": self.limit})
            enqueue_mail(desk, MailKind.STAFF_ESCALATION, [], {
                "reason_title": "mails to unproven senders are being held (hourly cap)",
                "reason": f"More than {self.limit} replies, reminders or confirmation mails on cases "
                          "nobody has proven were due within an hour ([service] "
                          f"max_unproven_mails_per_hour); {self.held} wait in the outbox and leave in "
                          "order as each hour allows. Their cases and keys were made. Many requests "
                          "from many different addresses at once is what a flood of forged senders "
                          "looks like: each mail would go to a forged address.",
                "decide_hint": "Look at the newest cases (dkimbot status). A flood: cancel its cases "
                               "(mails already written still leave at the capped rate; no reminders "
                               "follow). A genuine rush: raise the cap. You are told again at most "
                               "once a day.",
                "diagnoses": []}, staff_only=True)
        return True
