"""What a request mail means, facility by facility: a plan of intended steps, decided
from values alone (the facility as parsed, the case it continues, the domain rules).

``bot/flows/prepare.py`` reads the same plan before the write transaction (to make keys,
look at DNS and publish in a managed zone) and ``bot/flows/onboarding.py`` executes it
inside the transaction, so the two can never disagree about which branch a facility
takes. No I/O here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from bot.core.authority import lookalike_of
from bot.core.cases import State, classify_domain
from bot.core.request import FIELDS, Facility, FieldProblem


class NotPrepared(Exception):
    """The decision needs slow work (DNS, a key, an RFC 2136 update) the prepare phase did
    not do; raised inside the write transaction, which then rolls back, and the caller
    prepares again. ``failure`` is what the prepare phase met doing it, if anything."""

    def __init__(self, domain: str, what: str, failure: Exception | None = None) -> None:
        super().__init__(f"{what} for {domain} was not prepared")
        self.domain = domain
        self.failure = failure


class Step(StrEnum):
    NEEDS_INFO = "needs_info"    # fields missing or invalid: ask for them
    REJECT = "reject"            # a domain we cannot serve (freemail, our own)
    RESEND = "resend"            # a repeat of a live case of the same domain: the same record again
    ASSIGN_KEY = "assign_key"    # a key (new, or the domain's shared one) and the DKIM step


@dataclass(frozen=True)
class Continued:
    """The case a facility's request continues (``flows.matching.existing_case``)."""

    id: int
    state: str
    domain: str | None


@dataclass(frozen=True)
class FacilityPlan:
    step: Step
    facility: Facility
    domain: str | None
    existing: Continued | None     # the case found for this facility, if any
    reason: str | None = None      # REJECT: "freemail" | "own"

    @property
    def continues(self) -> int | None:
        """The case this step changes in place; None: a new case is made.

        A needs_info case is completed in place; a live case of the same domain gets the
        record again; a case of another domain starts over with the new one."""
        if self.existing is None:
            return None
        if self.step in (Step.NEEDS_INFO, Step.REJECT):
            return self.existing.id if self.existing.state == State.NEEDS_INFO else None
        return self.existing.id


def facilities_of(facilities: Sequence[Facility]) -> list[Facility]:
    """The facilities to plan: a request without any becomes one with every field missing."""
    if facilities:
        return list(facilities)
    return [Facility(None, None, None, None, None, tuple(FieldProblem(f, "missing", None) for f in FIELDS))]


def over_limit(facilities: Sequence[Facility], limit: int) -> bool:
    """More facilities than ``[intake] max_facilities_per_mail`` (0: no limit): staff decide."""
    return bool(limit) and len(facilities) > limit


def plan_facility(facility: Facility, existing: Continued | None, *, freemail: Sequence[str],
                  own: Sequence[str]) -> FacilityPlan:
    """The step for one facility of a request."""
    if facility.problems:
        return FacilityPlan(Step.NEEDS_INFO, facility, None, existing)
    domain = facility.domain
    reason = classify_domain(domain or "", freemail=list(freemail), own=list(own))
    if reason is None and domain and lookalike_of(domain, own) is not None:
        reason = "own"  # a UTS #39 confusable of an own domain ("489bаn.net"): issue 11
    if reason:
        return FacilityPlan(Step.REJECT, facility, domain, existing, reason)
    if existing is not None and existing.state != State.NEEDS_INFO and existing.domain == domain:
        return FacilityPlan(Step.RESEND, facility, domain, existing)
    return FacilityPlan(Step.ASSIGN_KEY, facility, domain, existing)
