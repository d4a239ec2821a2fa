"""A request-like mail over ``[intake] max_message_bytes``: never fetched, staff told once.

The size limit protects the pass (a 40 MB scan of a form must not stall intake), but a
facility that attached a huge PDF to its request must not be ignored silently: staff get
a short note naming the message, its size and the limit, and the message stays in the
mailbox untouched. The note is sent once per message: the handled mark (IMAP key and
Message-ID) is written in the same transaction as the note, so neither a second pass nor
a UIDVALIDITY change repeats it. Only the header lines intake read to select the message
are looked at, so auto-replies, bounces and lists still get nothing.
"""

from __future__ import annotations

import logging

from bot.core.mailkinds import MailKind
from bot.flows.compose import enqueue_mail
from bot.flows.desks import MailDesk

log = logging.getLogger("dkimbot")


def note_oversized(desk: MailDesk, key: str, size: int, header: bytes) -> str:
    """Record an oversized message as handled and tell staff about it; returns the outcome."""
    from bot.core.request import parse_message

    cfg = desk.cfg
    store = desk.store
    limit = cfg.intake.max_message_bytes
    # Headers alone: an empty body is enough for the subject, sender and no-reply rules.
    head = header.rstrip(b"\r\n") + b"\r\n\r\n"
    parsed = parse_message(head, own_addresses=[cfg.service.support_address])
    now = desk.clock()
    with store.transaction():
        if store.is_handled(key, parsed.message_id, parsed.fingerprint):
            store.mark_handled(key, parsed.message_id, now, "duplicate", parsed.fingerprint)
            return "duplicate"
        if parsed.no_reply_reason:
            outcome = f"ignored: {parsed.no_reply_reason} (too large to read: {size} bytes)"
        else:
            outcome = f"skipped: too large ({size} bytes > {limit})"
            enqueue_mail(desk, MailKind.STAFF_ESCALATION, [], {
                "reason_title": "a message is too large to read",
                "reason": (
                    f"Message-ID: {parsed.message_id or '(none)'}\n"
                    f"From:       {parsed.from_addr or '(unknown)'}\n"
                    f"Subject:    {parsed.subject or '(none)'}\n"
                    f"Size:       {size} bytes, over the limit [intake] max_message_bytes = {limit}\n"
                    f"Mailbox:    {key}\n\n"
                    "The bot did not read it; it is left in the mailbox untouched."
                ),
                "decide_hint": "Read it in the mailbox and handle it by hand "
                               "(or raise [intake] max_message_bytes).",
                "diagnoses": [],
            }, staff_only=True)
        store.mark_handled(key, parsed.message_id, now, outcome, parsed.fingerprint)
    log.warning("message %s (%s): %s", key, parsed.message_id, outcome)
    return outcome
