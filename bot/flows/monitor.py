"""After completion: watch the DKIM records daily and stop signing only after a grace period.

SPEC §8 "after completion, keep watching". A completed domain is rechecked once a day
(``rechecks`` sets ``next_check_at`` to a day after completion). When a record of the
case's selectors disappears or changes, the facility and staff are warned and the case
goes to ``dkim_lost``; the key keeps signing for ``[schedule] signing_grace_days`` (a DNS
mishap fixed within days must not cost a hotel its DMARC pass), and only then leaves the
signer (``signing_stopped``), so mail never goes out with a signature that must fail
for longer than that. A record back within the grace period stops the countdown (and
says so); a record back after it reinstalls the key, proves it and resumes signing.

A DNS failure (timeout, SERVFAIL, REFUSED) is never evidence: it neither starts nor
advances the countdown.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from bot.adapters.store import Store
from bot.config import Config
from bot.core import cases as sm
from bot.core.cases import Event, State, classify_watch
from bot.core.dnsresults import AreaResult, DnsLookup
from bot.core.mailkinds import MailKind
from bot.core.rows import CaseRow
from bot.core.watchtime import next_watch
from bot.flows.backoff import (
    failures_in_a_row,
    note_failure,
    note_success,
)
from bot.flows.checkpass import check_and_apply
from bot.flows.compose import enqueue_mail, key_records
from bot.flows.desks import KeyDesk, MailDesk, Office, Workbench

log = logging.getLogger("dkimbot")

JST = ZoneInfo("Asia/Tokyo")


def grace_deadline(case: CaseRow, grace: timedelta) -> datetime:
    return case.state_since + grace


_WEEKDAYS = "月火水木金土日"


def _jst(when: datetime) -> str:
    """「12月16日（水）14時（日本時間）」: how a Japanese clerk reads a deadline (the
    minutes only when they are not zero; no year: a deadline is days away)."""
    local = when.astimezone(JST)
    minute = f"{local.minute}分" if local.minute else ""
    return f"{local.month}月{local.day}日（{_WEEKDAYS[local.weekday()]}）{local.hour}時{minute}（日本時間）"


def monitor_due_once(bench: Workbench) -> int:
    """Check every due watched case (completed, dkim_lost, signing_stopped); return how many."""
    now = bench.clock()
    due = [c for c in bench.store.due_cases(tuple(s.value for s in sm.WATCHED), now)
           if c.domain and (c.selectors or c.selector)]
    if not due:
        return 0
    # After the due check: keyplan imports the key module (cryptography), which an
    # idle cron pass does not need (benchmarks/bench_startup.py).
    from bot.checks.keyplan import check_dkim_each
    from bot.flows.selectors import expected_keys

    client = bench.dns_client()
    # The same path as the rechecks (bot/flows/checkpass.py): domains concurrently, one
    # watched case's trouble recorded on that case, decisions committed in groups.
    check_and_apply(
        bench, due, _watch_key, lambda key: expected_keys(bench.store, key[0], key[1]),
        lambda key, expected: check_dkim_each(client, key[0], expected),
        lambda case, result: apply_watch(bench, bench.store.get_case(case.id), result, client),
        "watch check")
    return len(due)


def _watch_key(case: CaseRow) -> tuple[str, tuple[str, ...]] | None:
    return (case.domain or "", tuple(case.selectors or [case.selector or ""]))


def apply_watch(bench: Workbench, case: CaseRow, per_selector: dict[str, Any], client: DnsLookup | None) -> None:
    """One watched case, one DKIM observation: decide, act on the signer, record, mail."""
    from bot.checks.keyplan import fold_dkim

    now = bench.clock()
    grace = timedelta(days=bench.cfg.schedule.signing_grace_days)
    state = State(case.state)
    dkim = fold_dkim(per_selector)
    event = classify_watch(state, dkim, now=now, since=case.state_since, grace=grace)
    detail: dict[str, Any] = {"event": event.value, "dns": {"dkim": dkim.to_json()}}
    if state == State.SIGNING_STOPPED and event == Event.DKIM_OK:
        event = _reinstall(bench, case, client, detail)
    removed: list[str] = []
    if event == Event.GRACE_EXPIRED:
        removed, problem = _stop_signing(bench.cfg, case, per_selector)
        detail["removed_selectors"] = removed
        if problem:
            _uninstall_failed(bench, case, now, detail, problem, dkim)
            return
    decision = sm.decide(state, event)
    nxt = decision.next_state
    next_check = _next_watch_check(bench, case, event, decision, now, grace)
    with bench.store.transaction():
        if event == Event.DNS_ERROR:
            note_failure(bench.store, case.id)
        else:
            note_success(bench.store, case.id)
        updated = _record(bench.store, case, now, "transition" if decision.changes_state else "check",
                          state, nxt, detail, next_check=next_check,
                          changes_state=decision.changes_state, log_event=decision.changes_state
                          or event == Event.DNS_ERROR or "proof" in detail)
        for kind in decision.mails:
            _enqueue(bench, kind, updated, dkim, was=state, removed=removed, grace=grace)
    if decision.changes_state:
        log.info("%s: %s -> %s (%s)", case.ref, state.value, nxt.value, event.value)


def _reinstall(desk: KeyDesk, case: CaseRow, client: DnsLookup | None, detail: dict[str, Any]) -> Event:
    """The record is back after the key left the signer: reinstall and prove before
    claiming anything (the proof goes into ``detail``); DKIM_PROVEN or DKIM_PROOF_FAILED."""
    from bot.flows.rechecks import install_and_prove

    try:
        ok, why = install_and_prove(desk, case, client or desk.dns_client())
    except Exception as exc:  # the signer is ours: log, stay, retry next check
        log.exception("%s: reinstalling the key failed", case.ref)
        ok, why = False, f"install failed: {type(exc).__name__}"
    event = Event.DKIM_PROVEN if ok else Event.DKIM_PROOF_FAILED
    detail.update(event=event.value, proof={"ok": ok, "detail": why})
    return event


def _uninstall_failed(desk: MailDesk, case: CaseRow, now: datetime, detail: dict[str, Any], problem: str,
                      dkim: AreaResult) -> None:
    """The key could not leave the signer: stay in dkim_lost, retry soon, tell staff once."""
    state = State(case.state)
    detail["uninstall_error"] = problem
    _record(desk.store, case, now, "check", state, state, detail,
            next_check=now + sm.dns_error_delay(desk.cfg.schedule.check_interval_seconds, 1))
    with desk.store.transaction():
        if case.last_notice != "uninstall_failed":
            desk.store.update_case(case.id, now, last_notice="uninstall_failed")
            enqueue_mail(desk, MailKind.STAFF_ESCALATION, [case], _staff_context(
                case, "the DKIM key could not be removed from the signer",
                f"The grace period ended but removing the key failed: {problem}",
                "Fix the signer (tables, reload command); the bot retries by itself.",
                dkim), staff_only=True)


def _next_watch_check(office: Office, case: CaseRow, event: Event, decision: sm.Decision, now: datetime,
                      grace: timedelta) -> datetime:
    """When to look again: soon after a DNS error (then less often), daily at the
    domain's own time once completed, never past the end of a grace period."""
    schedule = office.cfg.schedule
    if event == Event.DNS_ERROR:
        # Soon, then less often; the count is written with the case.
        attempt = failures_in_a_row(office.store, case.id) + 1
        next_check = now + sm.dns_error_delay(schedule.check_interval_seconds, attempt)
    elif decision.next_state == State.COMPLETED:
        next_check = next_watch(case.domain or "", now)  # SPEC §8: daily, at the domain's own time
    else:
        since = now if decision.changes_state else case.state_since
        next_check = sm.next_check_at(now, since, schedule)
    if decision.next_state == State.DKIM_LOST:
        # Never sleep past the end of the grace period.
        deadline = (now if decision.changes_state else case.state_since) + grace
        next_check = min(next_check, deadline)
    return next_check


def _record(store: Store, case: CaseRow, now: datetime, kind: str, state: State, nxt: State,
            detail: dict[str, Any], *, next_check: datetime, changes_state: bool = False,
            log_event: bool = True) -> CaseRow:
    with store.transaction():
        if changes_state:
            return store.transition(case.id, nxt, now, expected_state=state, event=kind,
                                    detail=detail, next_check_at=next_check, last_notice=None)
        updated = store.update_case(case.id, now, next_check_at=next_check)
        if log_event:
            store.add_event(case.id, now, kind, state.value, nxt.value, detail)
    return updated


def _stop_signing(cfg: Config, case: CaseRow, per_selector: dict[str, Any]) -> tuple[list[str], str | None]:
    """Remove from the signer every selector whose record is not right; (removed, error)."""
    from bot.adapters import signer

    assert case.domain
    removed: list[str] = []
    for sel, area in per_selector.items():
        if area.ok:
            continue  # its record is fine: that signature still verifies
        try:
            signer.uninstall_key(cfg, case.domain, sel)
        except Exception as exc:  # noqa: BLE001 - reported to staff, retried
            return removed, f"{sel}: {type(exc).__name__}: {exc}"
        removed.append(sel)
        log.warning("%s: removed %s._domainkey.%s from the signer (record lost for the grace period)",
                    case.ref, sel, case.domain)
    return removed, None


def _staff_context(case: CaseRow, title: str, reason: str, hint: str, dkim: AreaResult) -> dict[str, Any]:
    return {"reason_title": title, "reason": reason, "decide_hint": hint,
            "diagnoses": [d for d in dkim.diagnoses if d.severity == "error"]}


def _enqueue(desk: MailDesk, kind: MailKind, case: CaseRow, dkim: AreaResult, *, was: State, removed: list[str],
             grace: timedelta) -> None:
    errors = [d for d in dkim.diagnoses if d.severity == "error"]
    if kind == "dkim_lost":
        enqueue_mail(desk, kind, [case], {
            "diagnoses": errors, "records": key_records(desk.store, case),
            "grace_days": _days(grace), "deadline": _jst(grace_deadline(case, grace)),
        })
    elif kind == "dkim_restored":
        enqueue_mail(desk, kind, [case], {"was_stopped": was == State.SIGNING_STOPPED})
    elif kind == "signing_stopped":
        enqueue_mail(desk, kind, [case], {
            "diagnoses": errors, "records": key_records(desk.store, case), "grace_days": _days(grace),
            "removed": [f"{s}._domainkey.{case.domain}" for s in removed],
        })
    elif kind == "staff_escalation":
        if case.state == State.DKIM_LOST:
            ctx = _staff_context(
                case, "DKIM record lost after completion",
                f"A DKIM record of {case.domain} disappeared or changed. The key keeps signing "
                f"until {grace_deadline(case, grace).isoformat()} (grace period {_days(grace)} days); "
                "then it is removed from the signer unless the record is back.",
                "Contact the facility if the record does not come back; nothing to do if it does.", dkim)
        else:
            ctx = _staff_context(
                case, "DKIM signing stopped: the record stayed missing",
                f"The grace period ended; removed from the signer: {', '.join(removed) or '-'}. "
                "Mail of this domain now goes out without those signatures.",
                "Contact the facility; once the record is back the bot reinstalls the key by itself.", dkim)
        enqueue_mail(desk, kind, [case], ctx, staff_only=True)
    else:
        raise ValueError(f"no context for mail kind {kind}")


def _days(grace: timedelta) -> str:
    days = grace.total_seconds() / 86400
    return str(int(days)) if days == int(days) else f"{days:g}"
