"""Due DNS checks and reminders: observations in, decisions (via ``cases``) out.

Each domain is checked once per pass, domains concurrently; the store is only touched
on the pass's own thread. DKIM right on every server → install the key, prove it by
signing a probe, and only then tell the facility.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from bot.core import cases as sm
from bot.core.cases import Event, State
from bot.core.dnsresults import CheckReport, DnsLookup
from bot.core.mailkinds import MailKind
from bot.core.rows import CaseRow
from bot.core.watchtime import next_watch
from bot.faults import maybe_crash
from bot.flows.backoff import note_failure, note_success
from bot.flows.checkmail import enqueue_check_mail
from bot.flows.checkpass import WORKERS, check_and_apply
from bot.flows.compose import enqueue_mail
from bot.flows.desks import KeyDesk, MailDesk, Office, Workbench

log = logging.getLogger("dkimbot")


def recheck_due_once(bench: Workbench, *, workers: int = WORKERS) -> int:
    """Check every due case; each domain is checked once per pass, domains concurrently
    (``bot/flows/checkpass.py``: the pass's shape, shared with the daily watch).

    ``workers`` bounds the threads asking DNS; each sends what it already knows it needs
    at once, so the queries in flight are a few times that.
    """
    now = bench.clock()
    states = (*sm.WAITING, State.ESCALATED)
    due = [c for c in bench.store.due_cases(tuple(s.value for s in states), now)
           if c.state != State.ESCALATED or (c.resume_state and c.resume_state != State.AWAITING_CONFIRMATION)]
    if not due:
        return 0
    from bot.checks.keyplan import check_case_domain
    from bot.flows.selectors import expected_keys

    client = bench.dns_client()
    # A domain whose every due case still waits for its DKIM record is asked for DKIM
    # first; DMARC and SPF only once it is right (keyplan.check_case_domain).
    past_dkim: set[tuple[str, tuple[str, ...]]] = set()
    for c in due:
        effective = c.resume_state if c.state == State.ESCALATED and c.resume_state else c.state
        if effective != State.AWAITING_DKIM:
            past_dkim.add(_case_key(c) or ("", ()))

    def check(key: tuple[str, tuple[str, ...]], expected: dict[str, str]) -> Any:
        return check_case_domain(client, key[0], expected, bench.cfg.service, dkim_first=key not in past_dkim)

    # Every selector of a case is checked (dual signing: RSA + Ed25519 records);
    # expected keys are read on this thread (the store's).
    check_and_apply(bench, due, _case_key, lambda key: expected_keys(bench.store, key[0], key[1]), check,
                    lambda case, report: apply_check(bench, case, report, client), "DNS check",
                    workers=workers)
    return len(due)


def _case_key(case: CaseRow) -> tuple[str, tuple[str, ...]] | None:
    sels = tuple(case.selectors or ([case.selector] if case.selector else []))
    return (case.domain, sels) if case.domain and sels else None


def install_and_prove(desk: KeyDesk, case: CaseRow, client: DnsLookup) -> tuple[bool, str]:
    """Install the case's key(s) into the signer, then sign a probe and verify it via DNS."""
    from bot.adapters import signer
    from bot.checks.dnscheck import make_dkim_dnsfunc

    assert case.domain
    dnsfunc = make_dkim_dnsfunc(client)
    notes = []
    for selector in case.selectors or [case.selector or ""]:
        key = desk.keystore.get(case.domain, selector)
        if key is None:
            return False, f"no private key stored for {selector}._domainkey.{case.domain}"
        pem = desk.keystore.private_pem(case.domain, selector)
        signer.install_key(desk.cfg, key, pem)
        ok, why = signer.prove_signing(desk.cfg, key, pem, dnsfunc)
        notes.append(f"{selector}: {why}")
        if not ok:
            try:
                signer.uninstall_key(desk.cfg, case.domain, selector)
            except Exception as exc:  # noqa: BLE001 -- recorded in the escalation: what to clean up by hand
                notes.append(f"uninstall failed: {type(exc).__name__}")
            return False, "; ".join(notes)
        desk.store.mark_key_installed(case.domain, selector, desk.clock())
    return True, "; ".join(notes)


def _report_evidence(report: CheckReport) -> dict[str, Any]:
    out: dict[str, Any] = report.to_json()
    for name in ("dkim", "dmarc", "spf", "alignment"):
        area = getattr(report, name)
        out[name]["found"] = getattr(area, "found", {})
    return out


def apply_check(bench: Workbench, case: CaseRow, report: CheckReport, client: DnsLookup) -> None:
    """Turn one DNS report into decisions for a case (chained while the case moves on)."""
    signing_started = False  # DKIM proven in this chain with its announcement skipped
    for _ in range(4):  # awaiting_dkim → awaiting_dmarc → completed at most
        now = bench.clock()
        state = State(case.state)
        effective = State(case.resume_state) if state == State.ESCALATED and case.resume_state else state
        proof: tuple[bool, str] | None = None
        if effective == State.AWAITING_DKIM and report.dkim.ok:
            try:
                proof = install_and_prove(bench, case, client)
            except Exception as exc:
                log.exception("%s: installing the key failed", case.ref)
                proof = (False, f"install failed: {type(exc).__name__}: {exc}")
            maybe_crash("check.proven")
        event = sm.classify_check(effective, report, proof[0] if proof else None)
        decision = sm.decide(
            state, event, resume_state=State(case.resume_state) if case.resume_state else None,
            last_notice=case.last_notice, reply_pending=case.reply_pending, report=report,
        )
        with bench.store.transaction():
            updated = _record_check(bench, case, report, proof, event, decision, now)
            if event == Event.DKIM_PROVEN and decision.skipped:
                signing_started = True
            for kind in decision.mails:
                enqueue_check_mail(bench, kind, updated, report, proof, signing_started=signing_started)
            maybe_crash("check.decided")
        maybe_crash("check.committed")
        case = bench.store.get_case(case.id)
        if not decision.changes_state or State(case.state) not in sm.WAITING:
            return


def _record_check(office: Office, case: CaseRow, report: CheckReport, proof: tuple[bool, str] | None,
                  event: Event, decision: sm.Decision, now: datetime) -> CaseRow:
    """Inside the check's transaction: the case's next check, its move (or its fields)
    and the event with the DNS evidence; returns the case as updated."""
    state = State(case.state)
    fields = _next_fields(office, case, event, decision, now)
    detail: dict[str, Any] = {"event": event.value, "dns": _report_evidence(report)}
    if proof:
        detail["proof"] = {"ok": proof[0], "detail": proof[1]}
    if decision.skipped:
        detail["skipped_mails"] = decision.skipped
    if decision.changes_state:
        updated = office.store.transition(case.id, decision.next_state, now, expected_state=state,
                                          event="transition", detail=detail, **fields)
        log.info("%s: %s -> %s (%s)", case.ref, state.value, decision.next_state.value, event.value)
    else:
        updated = office.store.update_case(case.id, now, **fields)
        if decision.mails or event == Event.DNS_ERROR:
            office.store.add_event(case.id, now, "check", state.value, decision.next_state.value, detail)
    log.debug("%s: checked %s: %s; next check %s", case.ref, case.domain, event.value,
              fields["next_check_at"].isoformat(timespec="seconds"))
    return updated


def _next_fields(office: Office, case: CaseRow, event: Event, decision: sm.Decision,
                 now: datetime) -> dict[str, Any]:
    """The case fields a check sets: when to check next (a DNS error backs off, a
    completed domain is watched daily), the reminder count and the state to resume."""
    schedule = office.cfg.schedule
    fields: dict[str, Any] = {"reply_pending": False, "last_notice": decision.notice}
    if event == Event.DNS_ERROR:
        attempt = note_failure(office.store, case.id)  # soon, then less often
        fields["next_check_at"] = now + sm.dns_error_delay(schedule.check_interval_seconds, attempt)
    else:
        note_success(office.store, case.id)
        since = now if decision.changes_state else case.state_since
        fields["next_check_at"] = sm.next_check_at(now, since, schedule)
    if decision.changes_state:
        fields.update(reminders_sent=0, resume_state=decision.resume_state)
    elif decision.resume_state != (State(case.resume_state) if case.resume_state else None):
        fields["resume_state"] = decision.resume_state
    if decision.next_state == State.COMPLETED:
        # Completed domains are watched daily (SPEC §8).
        fields["next_check_at"] = next_watch(case.domain or "", now)
    return fields


# -- reminders -------------------------------------------------------------------------------

def remind_due_once(desk: MailDesk) -> int:
    cfg = desk.cfg
    now = desk.clock()
    count = 0
    for case in desk.store.list_cases(tuple(s.value for s in (State.NEEDS_INFO, *sm.WAITING))):
        event = sm.time_event(
            State(case.state), case.state_since, case.reminders_sent, now,
            timedelta(hours=cfg.schedule.reminder_after_hours), cfg.schedule.max_reminders,
        )
        if event is None:
            continue
        decision = sm.decide(State(case.state), event)
        with desk.store.transaction():
            if event == Event.REMINDER_DUE:
                updated = desk.store.update_case(case.id, now, reminders_sent=case.reminders_sent + 1)
                from bot.flows.reminders import reminder_context

                # The record box(es) and the last findings, so the reminder alone suffices.
                ctx = reminder_context(desk, updated, updated.reminders_sent)
                desk.store.add_event(case.id, now, "reminder", detail={
                    "number": updated.reminders_sent, "offered_short_key": bool(ctx.get("refused_hint"))})
                enqueue_mail(desk, MailKind.REMINDER, [updated], ctx)
            else:
                updated = desk.store.transition(
                    case.id, State.ESCALATED, now, expected_state=case.state, event="transition",
                    detail={"event": event.value, "reminders_sent": case.reminders_sent},
                    resume_state=decision.resume_state,
                )
                from bot.flows.escalation import stall_context

                # What the bot last saw (DNS per area, or the missing fields) and what to decide.
                enqueue_mail(desk, MailKind.STAFF_ESCALATION, [updated], stall_context(desk.store, case),
                             staff_only=True)
                log.info("%s: %s -> escalated (stalled)", case.ref, case.state)
            maybe_crash("reminder.decided")
        count += 1
    return count
