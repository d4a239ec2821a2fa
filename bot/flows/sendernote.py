"""A mail without a sender the bot may answer as a facility: staff told, nobody else.

``parse_message`` names why (``ParsedMail.sender_problem``): a From or Reply-To that is
not one valid address (``From: info@victim.jp@evil.test`` used to make ``@evil.test``
the requester; ``From: 山田 太郎 info@hotel.jp`` one with spaces), or one of the
operator's own addresses (``Reply-To: staff@…`` made staff the requester of a stranger's
case). Answering it could mail a third party or staff on a stranger's behalf, so no
reply is sent, no case or key is made and nothing about a case changes; staff get one
note, written in the transaction that marks the message handled (a second pass does not
repeat it). A note about a case the mail names or threads on is gated like every note
about that case (merged within the hour, ``bot/flows/staffgate.py``).
"""

from __future__ import annotations

import logging

from bot.core.mailkinds import MailKind
from bot.core.request import ParsedMail
from bot.flows.compose import enqueue_mail
from bot.flows.desks import MailDesk
from bot.flows.matching import reply_target

log = logging.getLogger("dkimbot")


def note_unusable_sender(desk: MailDesk, parsed: ParsedMail) -> str:
    """Queue the staff note (inside the caller's transaction); returns the outcome."""
    why = parsed.sender_problem or "no usable sender"
    case = reply_target(desk.store, parsed)
    if case is not None:
        desk.store.add_event(case.id, desk.clock(), "reply_refused", detail={
            "from": parsed.from_addr, "message_id": parsed.message_id, "why": why})
    enqueue_mail(desk, MailKind.STAFF_ESCALATION, [case] if case is not None else [], {
        "reason_title": "a mail without a sender the bot may answer",
        "reason": (
            f"Message-ID: {parsed.message_id or '(none)'}\n"
            f"Subject:    {parsed.subject or '(none)'}\n"
            f"Why:        {why}\n\n"
            f"{'It names or answers this case. ' if case is not None else ''}"
            "No reply was sent (it could reach a third party or staff), no case or key was made "
            "and nothing was changed.\n\n" + (parsed.body_text or "").strip()[:2000]
        ),
        "decide_hint": "If a facility really wrote it, answer them yourself from the mailbox "
                       "(or ask them to write from their own address); otherwise nothing to do.",
        "diagnoses": [],
    }, staff_only=True)
    log.warning("message %s: no usable sender: %s", parsed.message_id, why.split(":", 1)[0])
    return f"refused: {why.split(':', 1)[0]}"
