"""A mail whose MIME structure is nested too deeply to read: staff told once, no reply.

Python's email parser recurses once per nesting level; a crafted mail with thousands of
nested parts would raise RecursionError on every pass and reach staff only as a
traceback-laden escalation after three failures. ``parse_message`` reads such a mail's
headers alone and names why (``ParsedMail.malformed``); here it becomes one outcome and
one short staff note, written in the transaction that marks the message handled, so a
second pass does not repeat it. Nothing is sent to the sender: a facility that really
wrote is answered by hand.
"""

from __future__ import annotations

import logging

from bot.core.mailkinds import MailKind
from bot.core.request import ParsedMail
from bot.flows.compose import enqueue_mail
from bot.flows.desks import MailDesk

log = logging.getLogger("dkimbot")


def note_malformed(desk: MailDesk, parsed: ParsedMail) -> str:
    """Queue the staff note for an unreadable mail (inside the caller's transaction);
    returns the message's outcome."""
    why = parsed.malformed or "unreadable"
    enqueue_mail(desk, MailKind.STAFF_ESCALATION, [], {
        "reason_title": "a message could not be read (malformed MIME)",
        "reason": (
            f"Message-ID: {parsed.message_id or '(none)'}\n"
            f"From:       {parsed.from_addr or '(unknown)'}\n"
            f"Subject:    {parsed.subject or '(none)'}\n"
            f"Why:        {why}\n\n"
            "Only its headers were read; no case was opened and nothing was sent to the sender. "
            "It is left in the mailbox untouched."
        ),
        "decide_hint": "Read it in the mailbox; if it is a real request, answer it by hand.",
        "diagnoses": [],
    }, staff_only=True)
    log.warning("message %s: malformed: %s", parsed.message_id, why)
    return f"malformed: {why}"
