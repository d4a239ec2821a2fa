"""Which case a mail belongs to: the one it answers, or the one a request continues.

Used by ``prepare`` (before the transaction, to foresee the decision) and by
``onboarding`` (inside it, to make the decision); read-only store queries.
"""

from __future__ import annotations

from bot.core import cases as sm
from bot.core.cases import State
from bot.core.request import Facility, ParsedMail
from bot.core.rows import CaseRow
from bot.flows.runtime import Bot


def reply_target(bot: Bot, parsed: ParsedMail) -> CaseRow | None:
    """The case a mail answers: a case reference in its subject, else its threading."""
    for ref in parsed.case_refs:
        case = bot.store.find_case(ref)
        if case is not None:
            return case
    ids = [i for i in [parsed.in_reply_to, *reversed(parsed.references)] if i]
    return bot.store.case_for_message_id(ids) if ids else None


def existing_case(bot: Bot, facility: Facility, requester: str | None, target: CaseRow | None) -> CaseRow | None:
    """The case a request continues: a repeat of an active one, or a needs_info one completed."""
    if target is not None and target.state == State.NEEDS_INFO:
        return target
    candidates = bot.store.list_cases(tuple(s.value for s in sm.ACTIVE) + (State.COMPLETED.value,))
    name = facility.facility_name
    for c in candidates:
        if facility.admin_email and c.admin_email == facility.admin_email and (not name or c.facility == name):
            return c
    for c in candidates:
        if c.state == State.NEEDS_INFO and requester and c.requester == requester and name and c.facility == name:
            return c
    return None
