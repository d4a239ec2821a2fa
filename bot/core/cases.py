"""The case state machine: pure functions from (state, observation) to a decision.

Nothing here does I/O. ``jobs.py`` gathers the observations (DNS answers, the signing
proof, the clock), calls ``decide`` and stores the decision in one transaction. Every
transition the bot can make is a row of ``TRANSITIONS``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from bot.config import ScheduleConfig
from bot.core.mailkinds import MailKind


class State(StrEnum):
    NEEDS_INFO = "needs_info"
    # The simplified flow waits for the domain's admin address to prove control (a
    # one-time token, the registry, or staff) before anything is published: bot/flows/confirm.py.
    AWAITING_CONFIRMATION = "awaiting_confirmation"
    REJECTED = "rejected"
    AWAITING_DKIM = "awaiting_dkim"
    AWAITING_DMARC = "awaiting_dmarc"
    AWAITING_FINAL = "awaiting_final"
    COMPLETED = "completed"
    DKIM_LOST = "dkim_lost"              # completed, then the record vanished/changed; grace countdown
    SIGNING_STOPPED = "signing_stopped"  # the grace period ran out; the key left the signer
    ESCALATED = "escalated"
    CANCELLED = "cancelled"


class Event(StrEnum):
    DKIM_PROVEN = "dkim_proven"              # every server serves our key; probe verified
    DKIM_PROOF_FAILED = "dkim_proof_failed"  # DNS is right but the probe did not verify
    DKIM_WRONG = "dkim_wrong"                # a record is there, but wrong (diagnosed)
    DKIM_MISSING = "dkim_missing"            # nothing published yet
    DMARC_WRONG = "dmarc_wrong"
    DMARC_MISSING = "dmarc_missing"
    FINAL_OK = "final_ok"
    FINAL_FAILED = "final_failed"
    DNS_ERROR = "dns_error"                  # transient: retried, never told to the facility
    REMINDER_DUE = "reminder_due"
    STALLED = "stalled"                      # reminders exhausted
    DKIM_OK = "dkim_ok"                      # watched domain: every selector still right
    DKIM_GONE = "dkim_gone"                  # watched domain: a record vanished or changed
    GRACE_EXPIRED = "grace_expired"          # dkim_lost for longer than signing_grace_days
    CONFIRMED = "confirmed"                  # the admin address proved control (token, registry, staff)
    CONFIRMATION_EXPIRED = "confirmation_expired"  # no confirmation after the reminder


# States in which the bot waits for the facility and checks DNS on a schedule.
WAITING = (State.AWAITING_DKIM, State.AWAITING_DMARC, State.AWAITING_FINAL)
# States from which nothing moves on by itself.
TERMINAL = (State.REJECTED, State.CANCELLED)
# After completion: the domain is rechecked daily (``bot.flows.monitor``), SPEC §8.
WATCHED = (State.COMPLETED, State.DKIM_LOST, State.SIGNING_STOPPED)
# States staff may cancel or retry.
ACTIVE = (State.NEEDS_INFO, State.AWAITING_CONFIRMATION, *WAITING, State.ESCALATED)

STAY = None  # in the table: the case keeps its state

#: (state, event) -> (next state or STAY, mail kinds caused). Problem mails are sent once
#: per distinct diagnosis (see ``decide``); STAY rows without mails only reschedule.
TRANSITIONS: dict[tuple[State, Event], tuple[State | None, tuple[MailKind, ...]]] = {
    (State.AWAITING_DKIM, Event.DKIM_PROVEN): (State.AWAITING_DMARC, (MailKind.DKIM_ACTIVE,)),
    (State.AWAITING_DKIM, Event.DKIM_PROOF_FAILED): (State.ESCALATED, (MailKind.STAFF_ESCALATION,)),
    (State.AWAITING_DKIM, Event.DKIM_WRONG): (STAY, (MailKind.DKIM_PROBLEM,)),
    (State.AWAITING_DKIM, Event.DKIM_MISSING): (STAY, ()),
    (State.AWAITING_DMARC, Event.DKIM_WRONG): (STAY, (MailKind.DKIM_PROBLEM,)),
    (State.AWAITING_DMARC, Event.DKIM_MISSING): (STAY, (MailKind.DKIM_PROBLEM,)),
    (State.AWAITING_DMARC, Event.DMARC_WRONG): (STAY, (MailKind.DMARC_PROBLEM,)),
    (State.AWAITING_DMARC, Event.DMARC_MISSING): (STAY, ()),
    (State.AWAITING_DMARC, Event.FINAL_OK): (State.COMPLETED, (MailKind.COMPLETION_REPORT,)),
    (State.AWAITING_DMARC, Event.FINAL_FAILED): (State.AWAITING_FINAL, (MailKind.FINAL_PROBLEM,)),
    (State.AWAITING_FINAL, Event.DKIM_WRONG): (STAY, (MailKind.DKIM_PROBLEM,)),
    (State.AWAITING_FINAL, Event.DKIM_MISSING): (STAY, (MailKind.DKIM_PROBLEM,)),
    (State.AWAITING_FINAL, Event.DMARC_WRONG): (STAY, (MailKind.FINAL_PROBLEM,)),
    (State.AWAITING_FINAL, Event.DMARC_MISSING): (STAY, (MailKind.FINAL_PROBLEM,)),
    (State.AWAITING_FINAL, Event.FINAL_FAILED): (STAY, (MailKind.FINAL_PROBLEM,)),
    (State.AWAITING_FINAL, Event.FINAL_OK): (State.COMPLETED, (MailKind.COMPLETION_REPORT,)),
    **{(s, Event.REMINDER_DUE): (STAY, (MailKind.REMINDER,)) for s in (State.NEEDS_INFO, *WAITING)},
    **{(s, Event.STALLED): (State.ESCALATED, (MailKind.STAFF_ESCALATION,)) for s in (State.NEEDS_INFO, *WAITING)},
    **{(s, Event.DNS_ERROR): (STAY, ()) for s in (*WAITING, State.ESCALATED)},
    # After completion (bot.monitor): warn, count down, and only then stop signing.
    (State.COMPLETED, Event.DKIM_OK): (STAY, ()),
    (State.COMPLETED, Event.DKIM_GONE): (State.DKIM_LOST, (MailKind.DKIM_LOST, MailKind.STAFF_ESCALATION)),
    (State.DKIM_LOST, Event.DKIM_GONE): (STAY, ()),
    (State.DKIM_LOST, Event.DKIM_OK): (State.COMPLETED, (MailKind.DKIM_RESTORED,)),
    (State.DKIM_LOST, Event.GRACE_EXPIRED): (State.SIGNING_STOPPED,
                                             (MailKind.SIGNING_STOPPED, MailKind.STAFF_ESCALATION)),
    (State.SIGNING_STOPPED, Event.DKIM_GONE): (STAY, ()),
    (State.SIGNING_STOPPED, Event.DKIM_PROVEN): (State.COMPLETED, (MailKind.DKIM_RESTORED,)),
    (State.SIGNING_STOPPED, Event.DKIM_PROOF_FAILED): (STAY, ()),
    **{(s, Event.DNS_ERROR): (STAY, ()) for s in WATCHED},
    # Proof of control (bot/flows/confirm.py): only then is anything published.
    (State.AWAITING_CONFIRMATION, Event.CONFIRMED): (State.AWAITING_DKIM, ()),
    (State.AWAITING_CONFIRMATION, Event.CONFIRMATION_EXPIRED): (State.CANCELLED, (MailKind.STAFF_ESCALATION,)),
}

#: The states a new case starts in (intake: a request with missing fields, a domain we
#: cannot serve, or a key assigned at once).
INITIAL_STATES = (State.NEEDS_INFO, State.REJECTED, State.AWAITING_DKIM, State.AWAITING_CONFIRMATION)

#: The state ``dkimbot adopt`` (bot/flows/adopt.py) gives a domain the operator had
#: already signed by hand, once its record is right on every authoritative server: it
#: begins completed, watched like any other (``Store.adopt_case``, event ``adopted``).
ADOPTED_STATE = State.COMPLETED


def _moves() -> dict[tuple[State, State], tuple[str, ...]]:
    causes: dict[tuple[State, State], list[str]] = {}

    def add(move: tuple[State, State], cause: str) -> None:
        if cause not in causes.setdefault(move, []):
            causes[move].append(cause)

    for (s, _e), (n, _m) in TRANSITIONS.items():
        if n is not STAY and n != s:
            add((s, n), "decide")
            if s in (State.NEEDS_INFO, *WAITING) and n != State.ESCALATED:
                # ``decide`` resumes an escalated case by itself when a check of the state
                # it was escalated from (needs_info or a waiting state) moves on.
                add((State.ESCALATED, n), "decide (resumed)")
    # intake (bot/flows/onboarding.py): a needs_info case completed by the facility
    add((State.NEEDS_INFO, State.AWAITING_DKIM), "request completed")
    add((State.NEEDS_INFO, State.REJECTED), "request completed with a domain we cannot serve")
    # intake: a repeated request (same admin address and facility) names a new domain; the
    # case starts over at the DKIM step (awaiting_dkim → awaiting_dkim resets state_since)
    for s in (*WAITING, State.ESCALATED, State.COMPLETED):
        add((s, State.AWAITING_DKIM), "request names a new domain")
    for s in (State.NEEDS_INFO, *WAITING):
        # delivery (bot/flows/escalation.py): a facility address refused for good
        add((s, State.ESCALATED), "delivery failed")
        # staff (bot/app/jobs.py staff_retry): an escalated case back where it was
        add((State.ESCALATED, s), "staff retry")
    # intake, a domain on the operator's name servers (bot/flows/confirm.py): the case
    # waits for its admin address to prove control before anything is published
    add((State.NEEDS_INFO, State.AWAITING_CONFIRMATION), "request completed (managed zone)")
    for s in (*WAITING, State.ESCALATED, State.COMPLETED):
        add((s, State.AWAITING_CONFIRMATION), "request names a new domain (managed zone)")
    # delivery: the confirmation mail to the admin address refused for good
    add((State.AWAITING_CONFIRMATION, State.ESCALATED), "delivery failed")
    add((State.ESCALATED, State.AWAITING_CONFIRMATION), "staff retry")
    # staff or the facility (bot/flows/rekey.py): a new key restarts the DKIM step
    add((State.ESCALATED, State.AWAITING_DKIM), "rekey")
    # staff (bot/flows/cancel.py): any case not yet cancelled
    for s in State:
        if s != State.CANCELLED:
            add((s, State.CANCELLED), "staff cancel")
    # intake: an unfinished request superseded by a colleague's live case of the facility
    add((State.NEEDS_INFO, State.CANCELLED), "superseded by a live case")
    return {move: tuple(c) for move, c in sorted(causes.items())}


#: Every change of a case's state the bot makes, and its causes: the rows of
#: ``TRANSITIONS`` that ``decide`` applies (DNS checks, reminders, the watch after
#: completion) and the moves made outside ``decide`` (intake, delivery, staff).
#: ``Store.transition`` refuses any (from, to) not listed here.
MOVES: dict[tuple[State, State], tuple[str, ...]] = _moves()


def move_allowed(from_state: str, to_state: str) -> bool:
    """Whether the bot ever moves a case from ``from_state`` to ``to_state`` (``MOVES``)."""
    try:
        return (State(from_state), State(to_state)) in MOVES
    except ValueError:
        return False


#: Mail kinds that report a problem: sent once per distinct diagnosis, not per check.
PROBLEM_MAILS = (MailKind.DKIM_PROBLEM, MailKind.DMARC_PROBLEM, MailKind.FINAL_PROBLEM)

#: One visit (issue 13): the first mail asks for every record at once, so a stage the
#: facility has already satisfied is skipped, not announced. ``dkim_active`` ("signing
#: started, now DMARC please") is left out when the same check already shows DMARC
#: right: the check chained right after it mails the final result (completion report or
#: the remaining problems), which then says that signing started. Signing itself still
#: starts only after the DKIM record is proven (DKIM_PROVEN).
SKIPPED_WHEN_AHEAD = ("dkim_active",)


def already_ahead(report: ReportLike | None) -> bool:
    """True when a check that proves DKIM also shows DMARC right (and nothing undecided
    by a DNS error): the next stage is satisfied, its "please" mail is not needed."""
    if report is None:
        return False
    areas = (report.dkim, report.dmarc, report.spf, report.alignment)
    return bool(report.dmarc.ok) and not any(_has_dns_error(a) for a in areas)


class AreaLike(Protocol):
    ok: bool

    @property
    def diagnoses(self) -> list[Any]: ...


class ReportLike(Protocol):
    dkim: Any
    dmarc: Any
    spf: Any
    alignment: Any


def _codes(area: AreaLike) -> list[str]:
    return [d.code for d in area.diagnoses]


def _has_dns_error(area: AreaLike) -> bool:
    return "dns_error" in _codes(area)


def _errors(area: AreaLike) -> list[str]:
    return [d.code for d in area.diagnoses if getattr(d, "severity", "error") == "error"]


def classify_check(state: State, report: ReportLike, proof_ok: bool | None) -> Event:
    """Turn one DNS check (and the signing proof, if made) into the event it means."""
    if state == State.AWAITING_DKIM:
        if report.dkim.ok:
            return Event.DKIM_PROVEN if proof_ok else Event.DKIM_PROOF_FAILED
        if _has_dns_error(report.dkim):
            return Event.DNS_ERROR
        return Event.DKIM_MISSING if set(_errors(report.dkim)) == {"dkim_not_published"} else Event.DKIM_WRONG
    # From here DKIM was proven once; the rest of the final check decides.
    areas = (report.dkim, report.dmarc, report.spf, report.alignment)
    if any(_has_dns_error(a) for a in areas):
        return Event.DNS_ERROR
    if not report.dkim.ok:
        # set(): with dual signing each selector may report its own "not published".
        return Event.DKIM_MISSING if set(_errors(report.dkim)) == {"dkim_not_published"} else Event.DKIM_WRONG
    if not report.dmarc.ok:
        return Event.DMARC_MISSING if _errors(report.dmarc) == ["dmarc_not_published"] else Event.DMARC_WRONG
    if report.spf.ok and report.alignment.ok:
        return Event.FINAL_OK
    return Event.FINAL_FAILED


def classify_watch(state: State, dkim: AreaLike, *, now: datetime, since: datetime,
                   grace: timedelta) -> Event:
    """Pure: a watched case's DKIM area (all selectors folded) → the event it means."""
    codes = [d.code for d in dkim.diagnoses]
    if "dns_error" in codes:
        return Event.DNS_ERROR  # no clean answer: never start or advance the countdown
    if dkim.ok:
        return Event.DKIM_OK
    if state == State.DKIM_LOST and now >= since + grace:
        return Event.GRACE_EXPIRED
    return Event.DKIM_GONE


def notice_signature(event: Event, report: ReportLike | None) -> str:
    """What makes two problem mails "the same diagnosis": the event and its error codes."""
    if report is None:
        return event.value
    codes: list[str] = []
    for name in ("dkim", "dmarc", "spf", "alignment"):
        codes += [f"{name}:{c}" for c in _errors(getattr(report, name))]
    return event.value + "|" + ",".join(sorted(codes))


def _skipped_areas(report: ReportLike | None) -> set[str]:
    if report is None:
        return set()
    return {name for name in ("dkim", "dmarc", "spf", "alignment")
            if (getattr(getattr(report, name), "found", None) or {}).get("skipped")}


def same_notice(signature: str, last_notice: str | None, report: ReportLike | None) -> bool:
    """Whether ``signature`` repeats ``last_notice``. Areas this check did not ask (a
    case waiting for DKIM is asked DMARC and SPF only once DKIM is right) are left out
    of the comparison, so a notice recorded when they were still asked is the same."""
    if last_notice is None:
        return False
    if signature == last_notice:
        return True
    skipped = _skipped_areas(report)
    if not skipped:
        return False
    head, _, codes = last_notice.partition("|")
    kept = [c for c in codes.split(",") if c and c.split(":", 1)[0] not in skipped]
    return f"{head}|{','.join(kept)}" == signature


@dataclass
class Decision:
    event: Event
    from_state: State
    next_state: State
    mails: list[MailKind] = field(default_factory=list)
    notice: str | None = None        # new value of the case's last_notice
    resume_state: State | None = None
    skipped: list[str] = field(default_factory=list)  # mails left out: the stage was satisfied

    @property
    def changes_state(self) -> bool:
        return self.next_state != self.from_state


def decide(
    state: State,
    event: Event,
    *,
    resume_state: State | None = None,
    last_notice: str | None = None,
    reply_pending: bool = False,
    report: ReportLike | None = None,
) -> Decision:
    """Apply one event to a case. Unknown (state, event) pairs change nothing.

    An escalated case keeps being checked as the state it was escalated from
    (``resume_state``); a step forward from there resumes it by itself.
    """
    effective = resume_state if state == State.ESCALATED and resume_state else state
    next_state, mails = TRANSITIONS.get((effective, event), (STAY, ()))
    decision = Decision(event=event, from_state=state, next_state=state, notice=last_notice,
                        resume_state=resume_state)
    if state == State.ESCALATED:
        if next_state is STAY or next_state == State.ESCALATED:
            return decision  # still escalated: staff already know, nothing to mail
        # Resumed by itself: from here on a normal step (the same notices, the same
        # once-per-diagnosis rule) from the state it was escalated from.
        decision.resume_state = None
    if any(k in SKIPPED_WHEN_AHEAD for k in mails) and already_ahead(report):
        mails = tuple(k for k in mails if k not in SKIPPED_WHEN_AHEAD)
        decision.skipped = [k for k in SKIPPED_WHEN_AHEAD]
    if next_state is not STAY:
        decision.next_state = next_state
        decision.notice = None
        if next_state == State.ESCALATED:
            decision.resume_state = state
        if MailKind.DKIM_ACTIVE in mails and report is not None:
            # dkim_active already names a wrong DMARC record and boxes its fix: the check
            # chained right after it must not mail the same ask again as dmarc_problem.
            decision.notice = notice_signature(Event.DMARC_WRONG, report)
    signature = notice_signature(event, report)
    for kind in mails:
        if kind in PROBLEM_MAILS:
            # The same diagnosis is mailed once; a facility's reply always gets an answer.
            if same_notice(signature, last_notice, report) and not reply_pending:
                continue
            decision.notice = signature
        decision.mails.append(kind)
    if (
        not decision.mails
        and reply_pending
        and event in (Event.DKIM_MISSING, Event.DMARC_MISSING)
    ):
        # The facility said "done" but nothing is there yet: tell them what we see.
        decision.mails.append(MailKind.DKIM_PROBLEM if event == Event.DKIM_MISSING else MailKind.DMARC_PROBLEM)
        decision.notice = signature
    return decision


def time_event(
    state: State, state_since: datetime, reminders_sent: int, now: datetime,
    reminder_after: timedelta, max_reminders: int,
) -> Event | None:
    """A reminder is due every ``reminder_after`` in a waiting state; after the last, escalate."""
    if state not in (State.NEEDS_INFO, *WAITING) or reminder_after <= timedelta(0):
        return None
    if now < state_since + reminder_after * (reminders_sent + 1):
        return None
    return Event.REMINDER_DUE if reminders_sent < max_reminders else Event.STALLED


def next_check_delay(
    time_in_state: timedelta, base_seconds: int, steps: Sequence[Sequence[float]] = (),
) -> timedelta:
    """Frequent checks right after the record is sent, slower later (SPEC §8).

    ``steps`` ([[after_hours, every_seconds], ...], from ``[schedule] check_steps``)
    replaces the built-in steps: every ``base_seconds`` first, then each step's interval
    once the case has waited ``after_hours`` in its state.
    """
    if base_seconds <= 0:
        return timedelta(0)
    base = timedelta(seconds=base_seconds)
    if steps:
        delay = base
        for after_hours, every_seconds in sorted((float(a), float(e)) for a, e in steps):
            if time_in_state >= timedelta(hours=after_hours):
                delay = timedelta(seconds=every_seconds)
        return delay
    if time_in_state < timedelta(hours=2):
        return base
    if time_in_state < timedelta(days=1):
        return min(base * 4, timedelta(hours=1))
    return min(base * 12, timedelta(hours=6))


def next_check_at(now: datetime, in_state_since: datetime, schedule: ScheduleConfig) -> datetime:
    """The one schedule rule: when something waiting since ``in_state_since`` is checked
    next (``next_check_delay`` with ``[schedule] check_interval_seconds`` and
    ``check_steps``). Used by rechecks, the watch after completion, intake, rekey and
    rotations alike."""
    return now + next_check_delay(now - in_state_since, schedule.check_interval_seconds,
                                  schedule.check_steps)


def dns_error_delay(base_seconds: int, attempt: int) -> timedelta:
    """Backoff for transient DNS failures: soon, then less often (capped at an hour)."""
    seconds = max(base_seconds, 60) * (2 ** min(attempt, 6))
    return timedelta(seconds=min(seconds, 3600))


def classify_domain(
    domain: str, *, freemail: list[str] | tuple[str, ...], own: list[str] | tuple[str, ...],
) -> str | None:
    """Why a domain cannot get a key: "freemail" (incl. carriers) or "own" (the SaaS's)."""
    d = domain.lower().rstrip(".")

    def under(parents: list[str] | tuple[str, ...]) -> bool:
        return any(d == p.lower() or d.endswith("." + p.lower()) for p in parents)

    if under(own):
        return "own"
    if under(freemail):
        return "freemail"
    return None
