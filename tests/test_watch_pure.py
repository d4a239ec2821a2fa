"""Pure logic of the after-completion watch and of folding several selectors' DKIM checks."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from bot.core import cases as sm
from bot.core.cases import Event, State
from bot.adapters.dnsclient import AreaResult, Diagnosis
from bot.checks.keyplan import fold_dkim
from bot.flows.monitor import classify_watch

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=timezone.utc)
GRACE = timedelta(days=5)


def area(*codes: str) -> AreaResult:
    ds = [Diagnosis(c, c, "warning" if c == "dkim_testing_mode" else "error") for c in codes]
    return AreaResult(all(d.severity == "warning" for d in ds), ds, {"servers": {}})


@pytest.mark.parametrize(
    "state,dkim,now,expected",
    [
        (State.COMPLETED, area(), T0, Event.DKIM_OK),
        (State.COMPLETED, area("dkim_testing_mode"), T0, Event.DKIM_OK),
        (State.COMPLETED, area("dkim_not_published"), T0, Event.DKIM_GONE),
        (State.COMPLETED, area("dkim_key_mismatch"), T0, Event.DKIM_GONE),
        (State.COMPLETED, area("dns_error"), T0, Event.DNS_ERROR),
        # A failing server next to one saying "missing" is not a clean answer.
        (State.COMPLETED, area("dns_error", "dkim_not_published"), T0, Event.DNS_ERROR),
        (State.DKIM_LOST, area("dkim_not_published"), T0 + GRACE - timedelta(seconds=1), Event.DKIM_GONE),
        (State.DKIM_LOST, area("dkim_not_published"), T0 + GRACE, Event.GRACE_EXPIRED),
        (State.DKIM_LOST, area("dns_error"), T0 + GRACE * 2, Event.DNS_ERROR),
        (State.DKIM_LOST, area(), T0 + GRACE * 2, Event.DKIM_OK),
    ],
)
def test_it_classifies_a_watched_check(state, dkim, now, expected):
    assert classify_watch(state, dkim, now=now, since=T0, grace=GRACE) == expected


def test_the_table_warns_counts_down_and_stops_signing_only_after_the_grace_period():
    lost = sm.decide(State.COMPLETED, Event.DKIM_GONE)
    assert (lost.next_state, lost.mails) == (State.DKIM_LOST, ["dkim_lost", "staff_escalation"])
    assert sm.decide(State.DKIM_LOST, Event.DKIM_GONE).mails == []
    back = sm.decide(State.DKIM_LOST, Event.DKIM_OK)
    assert (back.next_state, back.mails) == (State.COMPLETED, ["dkim_restored"])
    stop = sm.decide(State.DKIM_LOST, Event.GRACE_EXPIRED)
    assert (stop.next_state, stop.mails) == (State.SIGNING_STOPPED, ["signing_stopped", "staff_escalation"])
    for state in sm.WATCHED:
        d = sm.decide(state, Event.DNS_ERROR)
        assert (d.next_state, d.mails) == (state, [])
    assert sm.decide(State.SIGNING_STOPPED, Event.DKIM_PROVEN).next_state == State.COMPLETED


def test_folding_selectors_requires_every_one_and_keeps_each_diagnosis():
    both = fold_dkim({"s1": area(), "s1-ed": area()})
    assert both.ok and set(both.found["selectors"]) == {"s1", "s1-ed"}
    one = fold_dkim({"s1": area(), "s1-ed": area("dkim_not_published")})
    assert not one.ok and one.codes == ["dkim_not_published"]
    two = fold_dkim({"s1": area("dkim_not_published"), "s1-ed": area("dkim_not_published")})
    assert two.codes == ["dkim_not_published", "dkim_not_published"]

    class Report:
        dkim = two
        dmarc = spf = alignment = area()

    # Both missing is still "missing" (no problem mail), not "wrong".
    assert sm.classify_check(State.AWAITING_DKIM, Report(), None) == Event.DKIM_MISSING
