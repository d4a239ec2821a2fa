"""What a reminder mail shows: the step still awaited, what the last DNS check found,
and the record box(es) to publish, so the facility can act on the reminder alone.

A reminder that only says "please do what we asked" sends the clerk searching an old
mail; one for DMARC or the final check would have no box at all. The last recorded
check (the event that moved the case into its state, or a later mailed diagnosis) holds
what was found and the fixes, so the boxes match the earlier mail.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from bot.adapters.dnsclient import AreaResult, CheckReport, Diagnosis
from bot.adapters.store import Store
from bot.config import Config
from bot.core.cases import State
from bot.core.rows import CaseRow, now_iso
from bot.flows.desks import Office

WAITING_FOR = {
    State.NEEDS_INFO: "お申し込み内容のご記入",
    State.AWAITING_DKIM: "DKIMのレコード（公開鍵）のDNSへの登録",
    State.AWAITING_DMARC: "DMARCのレコードのDNSへの登録",
    State.AWAITING_FINAL: "最終確認で見つかった点の修正",
}


def _report_from_evidence(dns: dict[str, Any]) -> CheckReport:
    def area(name: str) -> AreaResult:
        a = dns.get(name) or {}
        diags = [Diagnosis(str(d.get("code", "")), str(d.get("message", "")), str(d.get("severity", "error")),
                           dict(d.get("detail") or {})) for d in a.get("diagnoses", [])]
        return AreaResult(bool(a.get("ok")), diags, dict(a.get("found") or {}))

    return CheckReport(area("dkim"), area("dmarc"), area("spf"), area("alignment"))


def _shown(diags: list[Diagnosis]) -> list[Diagnosis]:
    # DNS errors are ours to retry, never the facility's to read (SPEC §4).
    return [d for d in diags if d.severity == "error" and d.code != "dns_error"]


def panel_may_have_refused(store: Store, now: datetime, case: CaseRow, report: CheckReport | None) -> bool:
    """True when the facility said 「設定しました」 over a day ago, DNS still shows no DKIM
    record at all, and the key is longer than a 255-character value allows: the likeliest
    story is a panel that refused to save the long value, so the short key is offered."""
    if report is not None and {d.code for d in _shown(report.dkim.diagnoses)} - {"dkim_not_published"}:
        return False  # something *was* published: the diagnosis says what is wrong
    said_done = [e for e in store.events(case.id)
                 if e["kind"] == "facility_reply" and (e.get("detail") or {}).get("reading") == "done"]
    if not said_done or str(said_done[-1]["at"]) > now_iso(now - timedelta(days=1)):
        return False
    selectors = case.selectors or ([case.selector] if case.selector else [])
    return any(k["algorithm"] == "rsa" and k["bits"] > 1024 and k["selector"] in selectors
               for k in store.domain_keys(case.domain or ""))


def first_mail_asks_boxes(cfg: Config, store: Store, case: CaseRow) -> list[dict[str, Any]]:
    """The DMARC and SPF boxes the case's first mail asked for, rebuilt from what was seen
    before it (the ``dns_lookahead`` event), for the panel seen then."""
    from bot.checks.dmarc import suggest_dmarc_record
    from bot.core.records import record_box
    from bot.flows.compose import case_provider

    domain = case.domain or ""
    detail: dict[str, Any] = {}
    for event in reversed(store.events(case.id)):
        if event["kind"] == "dns_lookahead":
            detail = event.get("detail") or {}
            break
    provider = case_provider(store, case)
    out: list[dict[str, Any]] = []
    dmarc_fix = (detail.get("dmarc") or {}).get("fix")
    if detail.get("dmarc_missing") or dmarc_fix:
        value = dmarc_fix or suggest_dmarc_record(None, cfg.service.dmarc_rua or None)
        out.append({"name": "DMARC", "box": record_box(domain, f"_dmarc.{domain}", value, provider=provider)})
    spf_fix = detail.get("spf_new") or (detail.get("spf") or {}).get("fix")
    if spf_fix:
        out.append({"name": "SPF", "box": record_box(domain, domain, spf_fix, provider=provider)})
    return out


def reminder_context(office: Office, case: CaseRow, number: int) -> dict[str, Any]:
    """Template context for ``reminder`` (besides what ``enqueue_mail`` adds)."""
    from bot.flows.checkmail import dmarc_context, fix_boxes
    from bot.flows.compose import key_records
    from bot.flows.escalation import last_check

    state = State(case.state)
    ctx: dict[str, Any] = {"reminder_number": number, "waiting_for": WAITING_FOR[state],
                           "records": [], "diagnoses": [], "fields": {}}
    if state == State.NEEDS_INFO:
        ctx["fields"] = {"facility_name": case.facility or "", "contact_name": case.contact_name or "",
                         "contact_email": case.contact_email or "", "contact_phone": case.contact_phone or "",
                         "admin_email": case.admin_email or ""}
        return ctx
    _, dns = last_check(office.store, case)
    report = _report_from_evidence(dns) if dns else None
    if state == State.AWAITING_DKIM:
        ctx["records"] = key_records(office.store, case)
        if report is not None:
            ctx["diagnoses"] = _shown(report.dkim.diagnoses)
        ctx["refused_hint"] = panel_may_have_refused(office.store, office.clock(), case, report)
        # One visit: the DMARC and SPF records the first mail asked for come along again,
        # so a clerk who does everything from this reminder still visits the panel once.
        ctx["also"] = first_mail_asks_boxes(office.cfg, office.store, case)
    elif state == State.AWAITING_DMARC:
        if report is None:
            report = _report_from_evidence({})
        dmarc = dmarc_context(office.cfg, office.store, case, report)
        ctx["records"] = [dmarc["box"]]
        ctx["diagnoses"] = _shown(report.dmarc.diagnoses)
    elif state == State.AWAITING_FINAL and report is not None:
        from bot.flows.compose import case_provider

        ctx["records"] = fix_boxes(report, case, case_provider(office.store, case))
        ctx["diagnoses"] = _shown([d for _, a in report.areas() for d in a.diagnoses])
    return ctx
