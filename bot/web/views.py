"""What the staff site's pages show, as plain values for the templates (Japanese labels).

Reads only: every function here takes a read-only ``Store`` (or a ``Bot`` over one).
"""

from __future__ import annotations

import email
import email.policy
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from typing import Any

from bot.adapters.store import CaseRow, Store
from bot.core.cases import ACTIVE as ACTIVE_STATES
from bot.core.cases import State
from bot.core.dnsresults import stored_skip_reason

STATE_LABELS: dict[str, str] = {
    "needs_info": "情報不足", "rejected": "受付不可", "awaiting_dkim": "DKIM待ち",
    "awaiting_dmarc": "DMARC待ち", "awaiting_final": "最終確認待ち", "completed": "完了",
    "dkim_lost": "DKIM消失", "signing_stopped": "署名停止", "escalated": "要対応",
    "cancelled": "取消", "awaiting_confirmation": "管理確認待ち",
}

# The diagnoses staff meet most; any other code is shown as it is.
DIAGNOSIS_LABELS: dict[str, str] = {
    "dkim_not_published": "DKIM未公開", "dkim_truncated": "DKIMが255文字で切断",
    "dkim_quoted": "DKIMに引用符", "dkim_doubled_domain": "ドメイン名の二重入力",
    "dkim_missing_domainkey": "_domainkeyの欠落", "dkim_wrong_location": "DKIMの登録場所違い",
    "dkim_key_mismatch": "公開鍵の不一致", "dkim_syntax": "DKIMの書式誤り",
    "dkim_multiple_records": "DKIMが複数", "dkim_partial_nameservers": "一部のネームサーバーのみ",
    "dkim_testing_mode": "テストモード(t=y)", "dmarc_not_published": "DMARC未公開",
    "dmarc_syntax": "DMARCの書式誤り", "dmarc_multiple_records": "DMARCが複数",
    "dmarc_wrong_location": "DMARCの登録場所違い", "dmarc_cname": "_dmarcがCNAME",
    "spf_not_published": "SPF未公開", "spf_not_authorized": "SPFに弊社サーバーなし",
    "spf_multiple_records": "SPFが複数", "spf_syntax": "SPFの書式誤り",
    "spf_too_many_lookups": "SPFの参照回数超過", "dns_error": "DNSエラー",
    "dkim_proof_failed": "署名の検証失敗", "dkim_gone": "DKIMレコード消失",
}

AREA_LABELS = {"dkim": "DKIM", "dmarc": "DMARC", "spf": "SPF", "alignment": "アライメント"}
ACTIVE = tuple(s.value for s in ACTIVE_STATES)  # waiting on someone: these can be stuck
CHECKED = (*ACTIVE, "completed", "dkim_lost", "signing_stopped")  # states with a next check


def state_label(state: str) -> str:
    return STATE_LABELS.get(state, state)


def diagnosis_label(code: str) -> str:
    return DIAGNOSIS_LABELS.get(code, code)


# The area a waiting state waits on: an awaiting_dkim case's notice also lists the
# DMARC and SPF findings of the same check, but only DKIM keeps it waiting yet.
WAITS_ON = {"awaiting_dkim": ("dkim",), "awaiting_dmarc": ("dmarc",)}


def notice_codes(notice: str | None, state: str | None = None) -> list[str]:
    """The diagnosis codes in a case's ``last_notice`` ("event|area:code,area:code"),
    only those of the area its state waits on when it waits on one."""
    if not notice:
        return []
    event, _, codes = notice.partition("|")
    pairs = [c.partition(":") for c in codes.split(",") if c]
    areas = WAITS_ON.get(state or "")
    found = [code or area for area, _, code in pairs if not areas or area in areas]
    return found or ([event] if not pairs else [])


def duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 0:
        return "0分"
    days, rest = divmod(seconds, 86400)
    if days:
        return f"{days}日{rest // 3600}時間"
    if rest >= 3600:
        return f"{rest // 3600}時間{rest % 3600 // 60}分"
    return f"{rest // 60}分"


def when(at: datetime | None, now: datetime) -> str:
    """A check time as staff want it: in how long, or how late."""
    if at is None:
        return "—"
    return f"{duration(at - now)}後" if at > now else "次の巡回で"


def jst(at: datetime | str | None) -> str:
    if at is None:
        return "—"
    value = datetime.fromisoformat(at) if isinstance(at, str) else at
    return (value + timedelta(hours=9)).strftime("%Y-%m-%d %H:%M") + " JST"


@dataclass(frozen=True)
class ListRow:
    ref: str
    facility: str
    domain: str
    state: str
    state_label: str
    in_state: str
    diagnosis: str
    next_check: str
    stuck: bool


def stuck_cutoff(now: datetime, stuck_after_days: float) -> datetime:
    return now - timedelta(days=stuck_after_days)


def list_rows(cases: list[CaseRow], now: datetime, stuck_after_days: float) -> list[ListRow]:
    cutoff = stuck_cutoff(now, stuck_after_days)
    rows = []
    for c in cases:
        codes = notice_codes(c.last_notice, c.resume_state if c.state == "escalated" else c.state)
        rows.append(ListRow(
            ref=c.ref, facility=c.facility or "—", domain=c.domain or "—", state=c.state,
            state_label=state_label(c.state), in_state=duration(now - c.state_since),
            diagnosis="、".join(diagnosis_label(code) for code in codes) or "—",
            next_check=when(c.next_check_at, now) if c.state in CHECKED else "—",
            stuck=c.state in ACTIVE and c.state_since <= cutoff,
        ))
    return rows


@dataclass(frozen=True)
class MailView:
    created: str
    kind: str
    status: str
    subject: str
    to: str
    text: str
    message_id: str
    error: str | None


def mail_view(row: dict[str, Any]) -> MailView:
    msg = email.message_from_bytes(row.get("raw") or b"", policy=email.policy.default)
    text = ""
    if isinstance(msg, EmailMessage):
        body = msg.get_body(preferencelist=("plain",))
        if body is not None and isinstance(body, EmailMessage):
            try:
                text = str(body.get_content())
            except (LookupError, ValueError) as exc:  # an unknown charset: show why, not nothing
                text = f"(本文を表示できません: {exc})"
    parts = []
    for header in ("To", "Cc"):
        values = msg.get_all(header) or []
        if values:
            parts.append(f"{header}: " + ", ".join(map(str, values)))
    to = " / ".join(parts)
    return MailView(
        created=jst(row["created_at"]), kind=row["kind"], status=row["status"],
        subject=str(msg.get("Subject", "")), to=to, text=text,
        message_id=row["message_id"], error=row.get("last_error"),
    )


@dataclass(frozen=True)
class Finding:
    area: str
    ok: bool
    diagnoses: list[dict[str, Any]]
    servers: dict[str, Any]
    name: str
    skipped: str = ""  # why the area was not asked: shown as 未確認, not as OK


def findings(dns: dict[str, Any] | None) -> list[Finding]:
    """One row per area of a check's evidence: verdict, diagnoses, each server's answer."""
    out: list[Finding] = []
    for area in ("dkim", "dmarc", "spf", "alignment"):
        a = (dns or {}).get(area)
        if not isinstance(a, dict):
            continue
        found = a.get("found") or {}
        servers = found.get("servers") if isinstance(found, dict) else None
        out.append(Finding(
            area=AREA_LABELS[area], ok=bool(a.get("ok")), diagnoses=list(a.get("diagnoses") or []),
            servers=servers if isinstance(servers, dict) else {},
            name=str(found.get("name") or found.get("location") or "") if isinstance(found, dict) else "",
            skipped=stored_skip_reason(a) or "",
        ))
    return out


@dataclass(frozen=True)
class EventView:
    at: str
    kind: str
    move: str
    by: str
    text: str
    summary: str
    detail: str
    findings: list[Finding]


def event_view(e: dict[str, Any]) -> EventView:
    import json

    detail = dict(e["detail"])
    dns = detail.pop("dns", None)
    by = str(detail.pop("by", "") or "")
    text = str(detail.pop("text", "") or "") if e["kind"] == "staff_note" else ""
    # One line that says what happened without opening the details.
    summary = str(detail.get("subject") or detail.get("excerpt") or detail.get("event") or detail.get("reason") or "")
    move = ""
    if e["to_state"] and e["from_state"] != e["to_state"]:
        move = f"{state_label(e['from_state'] or '')} → {state_label(e['to_state'])}"
    return EventView(
        at=jst(e["at"]), kind=e["kind"], move=move, by=by, text=text, summary=summary[:300],
        detail=json.dumps(detail, ensure_ascii=False, default=str)[:1500] if detail else "",
        findings=findings(dns if isinstance(dns, dict) else None),
    )


def current_findings(events: list[dict[str, Any]]) -> tuple[str | None, list[Finding]]:
    """The last DNS check of a case: (when, its findings)."""
    for e in reversed(events):
        dns = e["detail"].get("dns")
        if isinstance(dns, dict):
            return jst(e["at"]), findings(dns)
    return None, []


def dmarc_suggestion(events: list[dict[str, Any]]) -> str | None:
    """The DMARC record the last check suggested, while DMARC is not right."""
    for e in reversed(events):
        dns = e["detail"].get("dns")
        if isinstance(dns, dict):
            dmarc = dns.get("dmarc") or {}
            found = dmarc.get("found") or {}
            if dmarc.get("ok") or not isinstance(found, dict):
                return None
            value = found.get("suggested")
            return str(value) if value else None
    return None


def page_numbers(total: int, size: int) -> int:
    return max(1, -(-total // size))


def state_choices(counts: dict[str, int]) -> list[tuple[str, str, int]]:
    return [(s.value, state_label(s.value), counts.get(s.value, 0)) for s in State]


def staff_store_check(store: Store) -> bool:
    """Whether any account exists (the login page says how to make one if not)."""
    return bool(store.list_staff())
