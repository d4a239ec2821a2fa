"""The mails a DNS check causes, and their contexts: the DMARC box, the fixes, the final
report's rows. Used by ``rechecks`` (the mail a check decides) and ``reminders`` (the
same boxes again, so a reminder alone suffices).
"""

from __future__ import annotations

from typing import Any

from bot.adapters.store import Store
from bot.config import Config
from bot.core.dnsresults import AreaResult, CheckReport
from bot.core.mailkinds import MailKind
from bot.core.providers import Provider
from bot.core.records import record_box
from bot.core.rows import CaseRow
from bot.flows.compose import case_provider, enqueue_mail, first_mail_asks, key_records
from bot.flows.desks import MailDesk


def dmarc_context(cfg: Config, store: Store, case: CaseRow, report: CheckReport) -> dict[str, Any]:
    """The DMARC part of a mail: what was found, the diagnoses, the record to publish."""
    # Here, not at the top: the checks pull in dnspython, which an idle pass never needs.
    from bot.checks.dmarc import suggest_dmarc_record

    found = getattr(report.dmarc, "found", {}) or {}
    errors = [d for d in report.dmarc.diagnoses if getattr(d, "severity", "error") == "error"]
    missing = [d.code for d in errors] == ["dmarc_not_published"]
    status = "ok" if report.dmarc.ok else ("missing" if missing else "invalid")
    # check_dmarc's own suggestion: for several records it is the strictest one merged,
    # so the box says what the diagnosis says.
    suggestion = found.get("suggested") or suggest_dmarc_record(found.get("tags") or None,
                                                                cfg.service.dmarc_rua or None)
    domain = case.domain or ""
    return {
        "status": status,
        "record": found.get("record"),
        "location": found.get("location") or f"_dmarc.{domain}",
        "diagnoses": errors,
        "box": record_box(domain, f"_dmarc.{domain}", suggestion, provider=case_provider(store, case)),
    }


def final_rows(report: CheckReport, case: CaseRow) -> list[dict[str, Any]]:
    def text(area: AreaResult, ok_text: str) -> str:
        if area.ok:
            return ok_text
        return " ".join(d.message for d in area.diagnoses)

    dmarc_found = getattr(report.dmarc, "found", {}) or {}
    policy = dmarc_found.get("policy") or (dmarc_found.get("tags") or {}).get("p", "")
    return [
        {"name": "SPF", "ok": report.spf.ok, "text": text(report.spf, "弊社の送信サーバーが許可されています。")},
        {"name": "DKIM", "ok": report.dkim.ok, "text": text(
            report.dkim, f"DKIMの公開鍵（{case.selector}._domainkey.{case.domain}）が正しく公開されています。")},
        {"name": "DMARC", "ok": report.dmarc.ok, "text": text(
            report.dmarc, f"DMARCのレコード（p={policy}）が正しく公開されています。")},
        {"name": "DMARCアライメント", "ok": report.alignment.ok, "text": text(
            report.alignment, f"DKIM署名のドメインと送信元アドレスのドメイン（{case.domain}）が一致しています。")},
    ]


def sender_requirements(store: Store, report: CheckReport, case: CaseRow) -> list[dict[str, Any]]:
    """Gmail's and Yahoo's 2024 sender requirements, item by item (SPEC §8)."""
    selectors = case.selectors or [case.selector or ""]
    rsa_bits = [k["bits"] for k in store.domain_keys(case.domain or "")
                if k["selector"] in selectors and k["algorithm"] == "rsa"]
    shortest = min(rsa_bits) if rsa_bits else None
    return [
        {"name": "SPFまたはDKIMによる認証に合格していること", "ok": bool(report.spf.ok or report.dkim.ok)},
        {"name": "DMARCのレコードが公開されていること", "ok": bool(report.dmarc.ok)},
        {"name": "送信元アドレスのドメインとDKIM署名のドメインが一致していること",
         "ok": bool(report.alignment.ok)},
        {"name": "DKIMの鍵の長さが1024ビット以上であること",
         "ok": shortest is None or shortest >= 1024,
         "note": f"（{shortest}ビット）" if shortest else "（Ed25519）"},
    ]


def fix_boxes(report: CheckReport, case: CaseRow, provider: Provider | None = None) -> list[dict[str, str]]:
    boxes: list[dict[str, str]] = []
    domain = case.domain or ""
    for d in [*report.spf.diagnoses, *report.dmarc.diagnoses]:
        fix = (getattr(d, "detail", {}) or {}).get("fix")
        if fix:
            host = (d.detail or {}).get("fix_host") or (domain if d.code.startswith("spf") else f"_dmarc.{domain}")
            box = record_box(domain, host, fix, provider=provider)
            if box not in boxes:
                boxes.append(box)
    return boxes


def enqueue_check_mail(desk: MailDesk, kind: MailKind, case: CaseRow, report: CheckReport,
                       proof: tuple[bool, str] | None, *, signing_started: bool = False) -> None:
    """Queue the mail ``kind`` a check decided. ``signing_started``: DKIM was proven in
    this very check and its own announcement skipped (one visit: the next stage was
    already satisfied), so this mail says that signing started."""
    if kind == "dkim_problem":
        truncated = any(d.code == "dkim_truncated" for d in report.dkim.diagnoses)
        # The diagnosis explains the short-key offer; the step only says how to take it up.
        hint = ("（DNSの管理画面で値が途中で切れてしまう場合は、2.の代わりに「短い鍵希望」と"
                "ご返信ください）" if truncated else "")
        ctx = {"diagnoses": report.dkim.diagnoses, "records": key_records(desk.store, case), "extra_hint": hint}
    elif kind == "dkim_active":
        found = getattr(report.dkim, "found", {}) or {}
        names = found.get("server_names") or {}
        # By name, as the clerk's panel shows them ("ns1.dns.ne.jp"), not by address.
        servers = sorted({names.get(s, s) for s in (found.get("servers", {}) or [])})
        ctx = {"nameservers": servers or ["権威DNSサーバー"],
               "dmarc": dmarc_context(desk.cfg, desk.store, case, report),
               "dmarc_asked": "DMARC" in first_mail_asks(desk.store, case)}
    elif kind == "dmarc_problem":
        ctx = {"diagnoses": report.dmarc.diagnoses, "dmarc": dmarc_context(desk.cfg, desk.store, case, report)}
    elif kind == "final_problem":
        diags = [d for a in (report.dkim, report.dmarc, report.spf, report.alignment) for d in a.diagnoses
                 if getattr(d, "severity", "error") == "error"]
        if diags and all(d.code == "spf_not_authorized" and (d.detail or {}).get("include_present")
                         for d in diags):
            # The facility's SPF already includes ours and still does not pass our sending
            # IPs: our include is wrong, not their record. Asking them would waste their day.
            enqueue_mail(desk, MailKind.STAFF_ESCALATION, [case], {
                "reason_title": "our SPF include does not authorise our sending IPs",
                "reason": f"{case.domain}'s SPF record includes {desk.cfg.service.spf_include}, yet "
                          f"these sending IPs do not pass: {diags[0].detail.get('results')}.\n"
                          f"Trace: {diags[0].detail.get('trace')}",
                "decide_hint": "Fix the SaaS's own SPF include (or [service] sending_ips); the case "
                               "completes by itself at the next check. The facility was not mailed.",
                "diagnoses": diags,
            }, staff_only=True)
            return
        ctx = {"diagnoses": diags, "fixes": fix_boxes(report, case, case_provider(desk.store, case)),
               "signing_started": signing_started, "remaining": len(diags)}
    elif kind == "completion_report":
        ctx = {"results": final_rows(report, case),
               "requirements": sender_requirements(desk.store, report, case), "signing_started": signing_started}
    elif kind == "staff_escalation":
        ctx = {
            "reason_title": "DKIM record is right but the signing proof failed",
            "reason": proof[1] if proof else "unknown",
            "decide_hint": "Check the signer (KeyTable/SigningTable, key files, reload command); "
                           "then run 'dkimbot retry'.",
            "diagnoses": report.dkim.diagnoses,
        }
        enqueue_mail(desk, kind, [case], ctx, staff_only=True)
        return
    else:
        raise ValueError(f"no context for mail kind {kind}")
    enqueue_mail(desk, kind, [case], ctx)
