"""Which case a mail belongs to: the one it answers, or the one a request continues.

Used by ``prepare`` (before the transaction, to foresee the decision) and by
``onboarding`` (inside it, to make the decision); read-only store queries.
"""

from __future__ import annotations

from bot.adapters.store import Store
from bot.core import cases as sm
from bot.core.authority import PROOF_EVENTS, fold_address, is_party, is_proven, same_requester
from bot.core.cases import TERMINAL, State
from bot.core.request import Facility, ParsedMail
from bot.core.rows import CaseRow
from bot.flows.desks import Office


def reply_target(store: Store, parsed: ParsedMail) -> CaseRow | None:
    """The case a mail answers: a case reference in its subject, else its threading."""
    for ref in parsed.case_refs:
        case = store.find_case(ref)
        if case is not None:
            return case
    ids = [i for i in [parsed.in_reply_to, *reversed(parsed.references)] if i]
    return store.case_for_message_id(ids) if ids else None


def proven(store: Store, case: CaseRow) -> bool:
    """Has the domain's own side proved control on ``case`` (``authority.is_proven``)?"""
    return is_proven(case.state, ()) or store.case_has_event(case.id, tuple(PROOF_EVENTS))


def key_holders(store: Store, domain: str, requester: str | None, skip: int | None = None) -> list[CaseRow]:
    """The live cases of ``domain`` whose key (and, in a managed zone, whose confirmation)
    a new case for ``requester`` shares; empty: the new case gets a key of its own.

    Facilities of one domain share one key, but only with a case the domain's people
    proved, or, before any proof, with the requester's own cases: sharing a stranger's
    unproven key would let the real facility's publication carry the stranger's case on
    (and its mails to the stranger), and the stranger's key would wait for the real one.
    """
    live = [c for c in store.cases_for_domain(domain)
            if c.id != skip and c.state not in TERMINAL and c.selectors]
    anchor = next((c for c in live if proven(store, c)), None) or \
        next((c for c in live if same_requester(c, requester)), None)
    return [] if anchor is None else [c for c in live if c.selectors == anchor.selectors]


def existing_case(store: Store, facility: Facility, requester: str | None, target: CaseRow | None) -> CaseRow | None:
    """The case a request continues: a repeat of an active one, or a needs_info one completed.

    A needs_info case is completed only by the mail that answers it (``target``, which
    ``decide_message`` keeps only when the mail may act on it: a party threading on the
    bot's mail or carrying its token). Matching one by the From address and facility name
    would let a forged From rewrite it (red team, issue 11); a fresh mail makes a new case.
    """
    if target is not None and target.state == State.NEEDS_INFO:
        return target
    candidates = store.list_cases(tuple(s.value for s in sm.ACTIVE if s != State.NEEDS_INFO)
                                  + (State.COMPLETED.value,))
    name = facility.facility_name
    for c in candidates:
        if facility.admin_email and c.admin_email == facility.admin_email and (not name or c.facility == name):
            # An unproven case is only its requester's claim: another sender naming the
            # same facility is not continuing it (``party_guard``).
            if same_requester(c, requester) or proven(store, c):
                return c
    return None


def new_cases_left(office: Office, requester: str | None) -> int | None:
    """How many more new cases (and so keys) ``requester`` may open today; None: no limit.

    Counted by the folded address (``a+x@`` is ``a@``), over the cases opened in the last
    24 hours: one stranger's mail flood makes at most this many keys a day (issue 11).
    """
    cap = office.cfg.service.max_new_cases_per_sender_per_day
    if cap <= 0 or not requester:
        return None
    from datetime import timedelta

    me = fold_address(requester)
    since = office.clock() - timedelta(days=1)
    opened = sum(1 for r in office.store.requesters_since(since) if r and fold_address(r) == me)
    return max(0, cap - opened)


def party_guard(store: Store, facility: Facility, domain: str, requester: str | None,
                existing: CaseRow | None) -> tuple[str, CaseRow | None]:
    """Who a request for a domain with live cases may be (issue 11), read-only:

    * ("in_progress", a proven case): the domain's people proved control on a live case
      and the sender is no party of it: nothing changes, they are told the domain is in
      progress;
    * ("join", the live case): a party asks again for a facility a live case already
      covers (while its own unfinished request is still open): that case is repeated;
    * ("ok", None): decide as planned. Unproven cases hold nothing: before proof, a
      request from another sender gets a case and a key of its own (``key_holders``),
      so a stranger's early request can neither block the domain's real people nor ride
      on their DNS change, nor learn about their case.
    """
    live = [c for c in store.cases_for_domain(domain) if c.state not in TERMINAL]
    holders = [c for c in live if proven(store, c)]
    if holders and not any(is_party(c, [requester]) for c in holders):
        return "in_progress", holders[0]
    if not holders:
        holders = [c for c in live if same_requester(c, requester)]
    same = [c for c in holders if c.admin_email == facility.admin_email and is_party(c, [requester])
            and (not facility.facility_name or c.facility == facility.facility_name)]
    if same and (existing is None or existing.state == State.NEEDS_INFO) and existing not in same:
        return "join", same[0]
    return "ok", None
