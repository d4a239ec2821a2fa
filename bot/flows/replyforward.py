"""A facility's reply the bot cannot act on: acknowledged, and forwarded to staff once,
unless the same pass resolves it.

A question (「設定方法がわかりません」) used to go silently to staff: the clerk heard
nothing and wrote again. Now the facility gets a short acknowledgement (「担当者より改めて
ご連絡します」, ``templates/reply_ack.txt``) together with the staff forward.

A reply to a case the bot is waiting on is rechecked at once in the same pass; a reply
staff would have been asked about (「直しました」 before it was understood, 「SPFも変え
ましたが…」) is often answered by that very recheck, which moves the case on. So such a
reply is *held* (in the store's meta table, in the intake transaction) and decided after
the pass's rechecks (``forward_held_once``): if its case moved on since and the reply was
not a question, the recheck's own mail answered it and nothing goes to staff (event
``facility_reply_resolved``); otherwise it is acknowledged (questions) and forwarded,
once, and the hold is cleared in the same transaction. A crash in between leaves it held
for the next pass.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

from bot.adapters.store import Store
from bot.core.cases import State
from bot.core.mailkinds import MailKind
from bot.core.rows import CaseRow
from bot.flows.desks import MailDesk

log = logging.getLogger("dkimbot")

HELD_KEY = "replies:held"

# A move from the state a reply was held in to one of these answers the reply by itself.
_FORWARD_OF = {
    State.AWAITING_DKIM: (State.AWAITING_DMARC, State.AWAITING_FINAL, State.COMPLETED),
    State.AWAITING_DMARC: (State.AWAITING_FINAL, State.COMPLETED),
    State.AWAITING_FINAL: (State.COMPLETED,),
}


def _held(store: Store) -> list[dict[str, Any]]:
    raw = store.get_meta(HELD_KEY)
    if not raw:
        return []
    try:
        items = json.loads(raw)
    except ValueError:
        log.warning("held replies unreadable; dropping them (%d bytes)", len(raw))
        return []
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []


def hold(store: Store, now: datetime, case: CaseRow, *, sender: str | None, message_id: str | None, text: str,
         reading: str) -> None:
    """Remember a reply for ``forward_held_once`` (call inside the intake transaction)."""
    held = _held(store)
    held.append({"case_id": case.id, "state": case.resume_state if case.state == State.ESCALATED
                 and case.resume_state else case.state, "sender": sender, "message_id": message_id,
                 "text": text[:4000], "reading": reading})
    store.set_meta(HELD_KEY, json.dumps(held, ensure_ascii=False))
    store.add_event(case.id, now, "facility_reply_held", detail={"reading": reading})


def forward(desk: MailDesk, case: CaseRow, *, sender: str | None, message_id: str | None, text: str,
            reading: str, rechecked: bool) -> None:
    """Acknowledge a question to the facility and forward the reply to staff (inside the
    caller's transaction)."""
    from bot.flows.compose import enqueue_mail

    desk.store.add_event(case.id, desk.clock(), "facility_reply_forwarded",
                         detail={"excerpt": text.strip()[:400], "reading": reading})
    if reading == "question":
        waiting = case.state in (State.AWAITING_DKIM, State.AWAITING_DMARC, State.AWAITING_FINAL,
                                 State.ESCALATED)
        enqueue_mail(desk, MailKind.REPLY_ACK, [case], {"still_checking": waiting})
    enqueue_mail(
        desk, MailKind.STAFF_ESCALATION, [case],
        {
            "reason_title": ("facility asked a question; acknowledged, please answer" if reading == "question"
                             else "facility replied; the bot cannot act on it"),
            "reason": f"A reply from {sender or 'unknown sender'} (Message-ID {message_id}) "
                      f"arrived while the case is {case.state}"
                      + (" (rechecked at once; no change)" if rechecked else "")
                      + f":\n\n{text.strip()[:4000]}",
            "decide_hint": ("The facility was told a person will answer. Reply to its mail."
                            if reading == "question" else "Answer the facility yourself (reply to its mail)."),
            "diagnoses": [],
        },
        staff_only=True,
    )


def forward_held_once(desk: MailDesk) -> int:
    """After the pass's rechecks: forward each held reply whose case did not move on."""
    held = _held(desk.store)
    if not held:
        return 0
    sent = 0
    with desk.store.transaction():
        for item in held:
            try:
                case = desk.store.get_case(int(item["case_id"]))
            except (KeyError, LookupError, ValueError, TypeError):
                log.warning("held reply for an unknown case dropped")
                continue
            was = State(item.get("state") or case.state)
            now_state = State(case.resume_state) if case.state == State.ESCALATED and case.resume_state \
                else State(case.state)
            # A question still goes to a person (「解約したいのですが」 is not answered by a
            # completed check); words the bot could not read are answered by the progress.
            if item.get("reading") != "question" and now_state in _FORWARD_OF.get(was, ()):
                desk.store.add_event(case.id, desk.clock(), "facility_reply_resolved", detail={
                    "reading": item.get("reading"), "from_state": was.value, "to_state": now_state.value})
                log.info("%s: the facility's reply was answered by this pass's check; not forwarded", case.ref)
                continue
            forward(desk, case, sender=item.get("sender"), message_id=item.get("message_id"),
                    text=str(item.get("text") or ""), reading=str(item.get("reading") or "unrecognised"),
                    rechecked=True)
            sent += 1
        desk.store.set_meta(HELD_KEY, "[]")
    return sent
