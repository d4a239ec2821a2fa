"""What a stall escalation tells staff: what the bot last saw, and what a human decides.

"No progress after 2 reminders" alone sends staff to `dkimbot show` first; the mail
itself should carry the last DNS check (per area: fine, or the diagnosis and what was
found) or, for a request still missing fields, which fields.
"""

from __future__ import annotations

from typing import Any

from bot.adapters.store import Store
from bot.core import cases as sm
from bot.core.cases import State
from bot.core.dnsresults import stored_skip_reason
from bot.core.mailkinds import MailKind
from bot.core.rows import CaseRow, OutboxRow
from bot.flows.compose import enqueue_mail
from bot.flows.desks import MailDesk

_AREAS = ("dkim", "dmarc", "spf", "alignment")


class _Diag:
    """A diagnosis from a stored event, shaped like dnscheck.Diagnosis for the template."""

    def __init__(self, area: str, d: dict[str, Any]) -> None:
        self.code = f"{area}:{d.get('code', '?')}"
        self.message = str(d.get("message", ""))


def last_check(store: Store, case: CaseRow) -> tuple[str | None, dict[str, Any] | None]:
    """(when, dns evidence) of the case's last recorded DNS check, if any."""
    for event in reversed(store.events(case.id)):
        dns = (event.get("detail") or {}).get("dns")
        if dns:
            return str(event["at"]), dns
    return None, None


def stall_context(store: Store, case: CaseRow) -> dict[str, Any]:
    """Template context for ``staff_escalation`` when reminders are used up."""
    lines = [f"The case has been {case.state} since {case.state_since.isoformat()}; "
             f"{case.reminders_sent} reminders to {case.requester or '-'} brought no change."]
    diagnoses: list[_Diag] = []
    if case.state == State.NEEDS_INFO:
        missing = [f"{p.get('label', p.get('field'))} ({p.get('kind')}: {p.get('value') or '-'})"
                   for p in case.problems]
        lines.append("The request still lacks: " + ("; ".join(missing) or "unknown fields") + ".")
        hint = (f"Call the facility ({case.contact_phone or 'no number given'}) to get the missing "
                f"fields, or cancel the case ('dkimbot cancel {case.ref}').")
    else:
        at, dns = last_check(store, case)
        if dns is None or (at or "") < case.state_since.isoformat():
            # Checks that only confirm "still not published" record no event (they change
            # nothing and mail nothing); so no event since the state began means exactly that.
            where = {State.AWAITING_DKIM: ", ".join(f"{s}._domainkey.{case.domain}" for s in
                                                    (case.selectors or [case.selector or "?"])),
                     State.AWAITING_DMARC: f"_dmarc.{case.domain}"}.get(State(case.state), case.domain or "-")
            lines.append(f"Every DNS check since then found nothing published at {where}.")
        else:
            lines.append(f"Last DNS check ({at}):")
            for area in _AREAS:
                a = dns.get(area) or {}
                why = stored_skip_reason(a)
                if why:  # not asked (DKIM still wrong): not "ok"
                    lines.append(f"  {area:<9} skipped ({why})")
                    continue
                errors = [d for d in a.get("diagnoses", []) if d.get("severity", "error") == "error"]
                lines.append(f"  {area:<9} {'ok' if a.get('ok') else 'NOT OK'}"
                             + (": " + ", ".join(d.get("code", "?") for d in errors) if errors else ""))
                diagnoses += [_Diag(area, d) for d in errors]
        hint = (f"Call the facility ({case.contact_phone or 'no number given'}) and walk them through "
                f"publishing the record shown by 'dkimbot show {case.ref}', resend it with "
                f"'dkimbot resend {case.ref}', or cancel the case. Nothing is needed if DNS becomes "
                "right: the bot resumes by itself.")
    return {
        "reason_title": f"no progress after {case.reminders_sent} reminders",
        "reason": "\n".join(lines),
        "decide_hint": hint,
        "diagnoses": diagnoses,
    }


def escalate_delivery_failure(desk: MailDesk, row: OutboxRow, error: str, recipients: list[str] | None = None) -> None:
    """Escalate ``row``'s cases: its mail to ``recipients`` (default: all) was refused for good.

    ``error`` is the server's answer, shown to staff and kept in the event (both may name
    addresses; the log may not).
    """
    if row.kind.startswith("staff_"):
        return  # never escalate an escalation: that is how mail loops start
    for case_id in row.case_ids:
        case = desk.store.get_case(case_id)
        now = desk.clock()
        failed = {"message_id": row.message_id, "error": error, "recipients": recipients or row.recipients}
        if case.state not in (State.ESCALATED, *sm.TERMINAL, *sm.WATCHED):
            case = desk.store.transition(case.id, State.ESCALATED, now, expected_state=case.state,
                                         event="delivery_failed", detail=failed, resume_state=case.state)
        else:
            desk.store.add_event(case.id, now, "delivery_failed", detail=failed)
        enqueue_mail(desk, MailKind.STAFF_ESCALATION, [case], {
            "reason_title": "mail to the facility was rejected",
            "reason": f"The {row.kind} mail {row.message_id} to {', '.join(recipients or row.recipients)} was "
                      f"rejected permanently:\n{error}",
            "decide_hint": "Find a working address for the facility and run 'dkimbot resend'.",
            "diagnoses": [],
        }, staff_only=True)
