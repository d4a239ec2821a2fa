"""Rate safety per address: at most N facility mails to one address in 24 hours.

The per-case cap (``max_mails_per_case_per_day``) does not stop a loop that opens a new
case with every message (an auto-responder that answers each of our mails with a fresh
"request", a mail-bombed form); a cap per recipient address does. Staff addresses are
never limited: escalations must always arrive. What is held back is recorded as an
event on each case the mail was for, so ``dkimbot show`` tells why a facility heard
nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from bot.adapters.store import Store
from bot.core.authority import fold_address
from bot.flows.desks import Office

log = logging.getLogger("dkimbot")


def mails_to_address_since(store: Store, address: str, since: datetime) -> int:
    """Facility mails (not ``staff_*``) queued since ``since`` with ``address`` among their recipients."""
    # One mailbox, one count: "a+1@x" and "a+2@x" (and "a.b@gmail.com", "ab@gmail.com")
    # are the same person's (issue 11); the prefilter matches the domain only.
    wanted = fold_address(address)
    domain = wanted.rpartition("@")[2]
    lists = store.facility_recipient_lists(since, "mail.com" if domain == "gmail.com" else "@" + domain)
    return sum(1 for recipients in lists if wanted in (fold_address(a) for a in recipients))


def limit_recipients(
    office: Office, kind: str, case_ids: Sequence[int], recipients: list[str],
) -> list[str]:
    """The recipients still under their daily limit (staff always are).

    Addresses held back are recorded as a ``mail_suppressed`` event on each case; an
    empty result means the whole mail is suppressed and must not be queued.
    """
    cfg = office.cfg
    limit = cfg.service.max_mails_per_address_per_day
    if limit <= 0:
        return recipients  # 0: no per-address limit
    now = office.clock()
    staff = {a.strip().lower() for a in cfg.service.staff_cc}
    since = now - timedelta(days=1)
    kept: list[str] = []
    held: list[str] = []
    for address in recipients:
        if address.strip().lower() in staff or mails_to_address_since(office.store, address, since) < limit:
            kept.append(address)
        else:
            held.append(address)
    if held:
        for case_id in case_ids:
            office.store.add_event(case_id, now, "mail_suppressed", detail={
                "kind": kind, "reason": "daily mail limit per address reached",
                "addresses": held, "limit": limit, "whole_mail": not kept,
            })
        # Counts and case refs only: the addresses are in the events (addresses stay out of logs).
        refs = ",".join(office.store.get_case(c).ref or str(c) for c in case_ids) or "-"
        log.warning("%s: %s mail %s for %d of %d recipients (daily limit %d per address)", refs, kind,
                    "suppressed" if not kept else "not sent", len(held), len(recipients), limit)
    return kept
