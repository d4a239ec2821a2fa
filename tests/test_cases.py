"""The state machine, tested from its table: pure, no servers."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import pytest

from bot.core import cases as sm
from bot.core.cases import Event, State

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=timezone.utc)


@dataclass
class D:
    code: str
    severity: str = "error"
    message: str = ""


@dataclass
class Area:
    ok: bool
    diagnoses: list[D] = field(default_factory=list)


def area(*codes: str, ok: bool | None = None) -> Area:
    ds = [D(c, "warning" if c in ("dkim_testing_mode", "dmarc_inherited") else "error") for c in codes]
    return Area(ok=ok if ok is not None else all(d.severity == "warning" for d in ds), diagnoses=ds)


@dataclass
class Report:
    dkim: Area = field(default_factory=lambda: area())
    dmarc: Area = field(default_factory=lambda: area())
    spf: Area = field(default_factory=lambda: area())
    alignment: Area = field(default_factory=lambda: area())


def test_it_has_one_row_per_meaningful_pair_and_only_known_states():
    for (state, event), (nxt, mails) in sm.TRANSITIONS.items():
        assert isinstance(state, State) and isinstance(event, Event)
        assert nxt is None or isinstance(nxt, State)
        assert all(isinstance(m, str) for m in mails)
    # Terminal states never move by a check or a clock event.
    for state in sm.TERMINAL:
        assert not [k for k in sm.TRANSITIONS if k[0] == state]


@pytest.mark.parametrize(
    "state,report,proof,expected",
    [
        (State.AWAITING_DKIM, Report(dkim=area("dkim_not_published")), None, Event.DKIM_MISSING),
        (State.AWAITING_DKIM, Report(dkim=area("dkim_quoted")), None, Event.DKIM_WRONG),
        (State.AWAITING_DKIM, Report(dkim=area("dns_error")), None, Event.DNS_ERROR),
        (State.AWAITING_DKIM, Report(dkim=area()), True, Event.DKIM_PROVEN),
        (State.AWAITING_DKIM, Report(dkim=area()), False, Event.DKIM_PROOF_FAILED),
        (State.AWAITING_DKIM, Report(dkim=area("dkim_testing_mode")), True, Event.DKIM_PROVEN),
        (State.AWAITING_DMARC, Report(dmarc=area("dmarc_not_published")), None, Event.DMARC_MISSING),
        (State.AWAITING_DMARC, Report(dmarc=area("dmarc_syntax")), None, Event.DMARC_WRONG),
        (State.AWAITING_DMARC, Report(spf=area("spf_not_authorized")), None, Event.FINAL_FAILED),
        (State.AWAITING_DMARC, Report(), None, Event.FINAL_OK),
        (State.AWAITING_DMARC, Report(spf=area("dns_error")), None, Event.DNS_ERROR),
        (State.AWAITING_FINAL, Report(dkim=area("dkim_not_published")), None, Event.DKIM_MISSING),
        (State.AWAITING_FINAL, Report(), None, Event.FINAL_OK),
    ],
)
def test_it_classifies_a_check_into_the_event_it_means(state, report, proof, expected):
    assert sm.classify_check(state, report, proof) == expected


def test_it_walks_the_happy_path():
    d = sm.decide(State.AWAITING_DKIM, Event.DKIM_PROVEN)
    assert (d.next_state, d.mails) == (State.AWAITING_DMARC, ["dkim_active"])
    d = sm.decide(State.AWAITING_DMARC, Event.FINAL_OK)
    assert (d.next_state, d.mails) == (State.COMPLETED, ["completion_report"])


def test_it_mails_a_wrong_record_once_per_distinct_diagnosis():
    r1 = Report(dkim=area("dkim_quoted"))
    first = sm.decide(State.AWAITING_DKIM, Event.DKIM_WRONG, report=r1)
    assert first.mails == ["dkim_problem"] and first.notice
    again = sm.decide(State.AWAITING_DKIM, Event.DKIM_WRONG, report=r1, last_notice=first.notice)
    assert again.mails == [] and again.next_state == State.AWAITING_DKIM
    r2 = Report(dkim=area("dkim_doubled_domain"))
    other = sm.decide(State.AWAITING_DKIM, Event.DKIM_WRONG, report=r2, last_notice=first.notice)
    assert other.mails == ["dkim_problem"] and other.notice != first.notice


def test_it_answers_a_facility_reply_even_when_the_diagnosis_is_unchanged():
    r = Report(dkim=area("dkim_quoted"))
    first = sm.decide(State.AWAITING_DKIM, Event.DKIM_WRONG, report=r)
    again = sm.decide(State.AWAITING_DKIM, Event.DKIM_WRONG, report=r, last_notice=first.notice,
                      reply_pending=True)
    assert again.mails == ["dkim_problem"]


def test_it_does_not_mail_a_missing_record_unless_the_facility_said_it_is_done():
    r = Report(dkim=area("dkim_not_published"))
    assert sm.decide(State.AWAITING_DKIM, Event.DKIM_MISSING, report=r).mails == []
    assert sm.decide(State.AWAITING_DKIM, Event.DKIM_MISSING, report=r, reply_pending=True).mails == ["dkim_problem"]


def test_it_never_mails_a_facility_about_a_dns_error():
    for state in sm.WAITING:
        d = sm.decide(state, Event.DNS_ERROR, reply_pending=True)
        assert d.mails == [] and d.next_state == state


def test_an_escalated_case_resumes_by_itself_and_stays_quiet_otherwise():
    d = sm.decide(State.AWAITING_DKIM, Event.DKIM_PROOF_FAILED)
    assert d.next_state == State.ESCALATED and d.resume_state == State.AWAITING_DKIM
    assert d.mails == ["staff_escalation"]
    still = sm.decide(State.ESCALATED, Event.DKIM_PROOF_FAILED, resume_state=State.AWAITING_DKIM)
    assert still.next_state == State.ESCALATED and still.mails == []
    quiet = sm.decide(State.ESCALATED, Event.DKIM_WRONG, resume_state=State.AWAITING_DKIM,
                      report=Report(dkim=area("dkim_quoted")))
    assert quiet.next_state == State.ESCALATED and quiet.mails == []
    back = sm.decide(State.ESCALATED, Event.DKIM_PROVEN, resume_state=State.AWAITING_DKIM)
    assert back.next_state == State.AWAITING_DMARC and back.mails == ["dkim_active"]
    assert back.resume_state is None


def test_reminders_then_escalation_on_the_clock():
    h = timedelta(hours=72)
    args = dict(reminder_after=h, max_reminders=2)
    assert sm.time_event(State.AWAITING_DKIM, T0, 0, T0 + h - timedelta(seconds=1), **args) is None
    assert sm.time_event(State.AWAITING_DKIM, T0, 0, T0 + h, **args) == Event.REMINDER_DUE
    assert sm.time_event(State.AWAITING_DKIM, T0, 1, T0 + h, **args) is None
    assert sm.time_event(State.AWAITING_DKIM, T0, 1, T0 + 2 * h, **args) == Event.REMINDER_DUE
    assert sm.time_event(State.AWAITING_DKIM, T0, 2, T0 + 3 * h, **args) == Event.STALLED
    assert sm.time_event(State.COMPLETED, T0, 0, T0 + 10 * h, **args) is None
    d = sm.decide(State.AWAITING_DKIM, Event.STALLED)
    assert d.next_state == State.ESCALATED and d.mails == ["staff_escalation"]


def test_checks_are_frequent_first_then_slower():
    base = 300
    early = sm.next_check_delay(timedelta(minutes=10), base)
    day = sm.next_check_delay(timedelta(hours=5), base)
    late = sm.next_check_delay(timedelta(days=3), base)
    assert early < day < late <= timedelta(hours=6)
    assert sm.next_check_delay(timedelta(days=3), 0) == timedelta(0)
    assert sm.dns_error_delay(300, 1) < sm.dns_error_delay(300, 4) <= timedelta(hours=1)


@pytest.mark.parametrize(
    "domain,expected",
    [("gmail.com", "freemail"), ("docomo.ne.jp", "freemail"), ("i.softbank.jp", "freemail"),
     ("489ban.net", "own"), ("mail.489ban.net", "own"), ("hotel-sakura.jp", None),
     ("notgmail.com", None)],
)
def test_it_classifies_domains_that_cannot_get_a_key(domain, expected):
    got = sm.classify_domain(domain, freemail=["gmail.com", "docomo.ne.jp", "i.softbank.jp"], own=["489ban.net"])
    assert got == expected


def test_a_resumed_case_follows_the_once_per_diagnosis_rule():
    # Escalated while awaiting DMARC; the final check now fails on SPF.
    r = Report(spf=area("spf_not_authorized"))
    first = sm.decide(State.ESCALATED, Event.FINAL_FAILED, resume_state=State.AWAITING_DMARC, report=r)
    assert first.next_state == State.AWAITING_FINAL and first.mails == ["final_problem"]
    assert first.resume_state is None and first.notice
    again = sm.decide(State.AWAITING_FINAL, Event.FINAL_FAILED, last_notice=first.notice, report=r)
    assert again.mails == []


def test_a_resumed_dkim_step_does_not_ask_for_dmarc_twice():
    r = Report(dmarc=area("dmarc_syntax"))
    active = sm.decide(State.ESCALATED, Event.DKIM_PROVEN, resume_state=State.AWAITING_DKIM, report=r)
    assert active.next_state == State.AWAITING_DMARC and active.mails == ["dkim_active"]
    chained = sm.decide(State.AWAITING_DMARC, Event.DMARC_WRONG, last_notice=active.notice, report=r)
    assert chained.mails == []


# ------------------------------------------------------------------ one visit (issue 13)


def test_dkim_proven_with_dmarc_already_right_skips_the_dmarc_request_mail():
    # The first mail asked for every record: with DMARC right too, "now DMARC please" is
    # not sent; the chained final check mails the result.
    d = sm.decide(State.AWAITING_DKIM, Event.DKIM_PROVEN, report=Report())
    assert d.next_state == State.AWAITING_DMARC and d.mails == [] and d.skipped == ["dkim_active"]
    final = sm.decide(State.AWAITING_DMARC, sm.classify_check(State.AWAITING_DMARC, Report(), None),
                      report=Report())
    assert final.next_state == State.COMPLETED and final.mails == ["completion_report"]


@pytest.mark.parametrize("dmarc", [area("dmarc_not_published", ok=False), area("dmarc_syntax", ok=False)])
def test_dkim_proven_with_dmarc_not_right_walks_the_stage(dmarc):
    d = sm.decide(State.AWAITING_DKIM, Event.DKIM_PROVEN, report=Report(dmarc=dmarc))
    assert d.mails == ["dkim_active"] and d.skipped == []


def test_a_dns_error_elsewhere_keeps_the_dkim_active_mail():
    # Undecided by a DNS error: the facility still hears that signing started.
    d = sm.decide(State.AWAITING_DKIM, Event.DKIM_PROVEN, report=Report(spf=area("dns_error", ok=False)))
    assert d.mails == ["dkim_active"]
    assert not sm.already_ahead(None)
