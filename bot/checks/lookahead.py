"""Look before instructing (SPEC §8): read a domain's DNS before the first reply.

What the first reply must know: who hosts the DNS (``bot.core.providers``: what that panel
wants), whether a DMARC or SPF record already exists (to be *edited*, never
duplicated: the reply says "you already have X; change it to Y" with the merged
record), and whether ``_dmarc`` is an alias (CNAME) into someone else's zone.

It must never block or fail a request: the whole look runs on a daemon thread with a
time budget derived from ``[dns] timeout``; a DNS failure, a timeout or a bug gives
``None`` (logged) and the request goes on without the extra information. The caller
records what was seen in the case's event log (``to_event``).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from bot.config import ServiceConfig
from bot.core.dnsresults import DnsLookup

log = logging.getLogger("dkimbot")


@dataclass
class Lookahead:
    domain: str
    ns_names: list[str] = field(default_factory=list)
    provider: Any = None                      # bot.providers.Provider | None
    dmarc: dict[str, Any] | None = None       # an existing DMARC record, and what to do with it
    spf: dict[str, Any] | None = None         # an existing SPF record, and what to do with it
    notes: list[str] = field(default_factory=list)  # English, for the event log

    def to_event(self) -> dict[str, Any]:
        return {
            "domain": self.domain, "nameservers": self.ns_names,
            "provider": self.provider.key if self.provider else None,
            "dmarc": self.dmarc, "spf": self.spf, "notes": self.notes,
        }


def _dmarc_view(area: Any, domain: str) -> dict[str, Any] | None:
    """What the first reply says about an existing DMARC record (None: there is none)."""
    codes = {d.code for d in area.diagnoses}
    found = area.found or {}
    if "dns_error" in codes:
        return None
    cname = found.get("cname")
    if found.get("record") is None and not cname:
        wrong = found.get("wrong_location") or []
        if wrong:
            return {"status": "wrong_location", "location": wrong[0]["name"], "record": wrong[0]["record"],
                    "expected": f"_dmarc.{domain}", "fix": found.get("suggested")}
        return None
    record = found.get("record")
    if isinstance(record, list):
        status = "multiple"
    elif "dmarc_inherited" in codes:
        status = "inherited"
    elif area.ok:
        status = "valid"
    else:
        status = "invalid"
    return {
        "status": status, "location": found.get("location") or f"_dmarc.{domain}",
        "record": record, "policy": found.get("policy"), "cname": cname,
        "fix": None if status in ("valid", "inherited") else found.get("suggested"),
        "codes": sorted(codes),
    }


def _spf_view(area: Any) -> dict[str, Any] | None:
    """What the first reply says about an existing SPF record (None: there is none)."""
    codes = {d.code for d in area.diagnoses}
    if not area.found.get("records") or "dns_error" in codes or "spf_not_published" in codes:
        return None
    fix = next((d.detail.get("fix") for d in area.diagnoses if d.detail.get("fix")), None)
    if area.ok:
        status = "authorized"
    elif "spf_multiple_records" in codes:
        status = "multiple"
    elif fix:
        status = "needs_change"
    else:
        status = "problem"  # too many lookups and the like: the final check explains
    return {"status": status, "records": list(area.found.get("records") or []), "fix": fix,
            "codes": sorted(codes),
            "message": " ".join(d.message for d in area.diagnoses if d.severity == "error") or None}


def look(client: DnsLookup, service: ServiceConfig, domain: str) -> Lookahead:
    """Read the domain's NS, DMARC and SPF (may raise; see ``look_bounded``)."""
    from bot.checks.dmarc import check_dmarc
    from bot.checks.spf import check_spf
    from bot.core.dnsresults import Lookup
    from bot.core.providers import identify

    out = Lookahead(domain)
    zone = client.zone_for(domain)
    if isinstance(zone, str):
        ns = client.lookup(zone, "NS")
        if isinstance(ns, Lookup):
            out.ns_names = sorted(str(r).rstrip(".").lower() for r in ns.records)
        if not out.ns_names:
            out.ns_names = sorted(client.nameserver_addresses(zone))
        out.provider = identify(out.ns_names)
    else:
        out.notes.append(f"zone of {domain} not found: {zone}")
    out.dmarc = _dmarc_view(check_dmarc(client, domain, service.dmarc_rua), domain)
    out.spf = _spf_view(check_spf(client, domain, service.sending_ips, service.spf_include))
    return out


def look_budget(dns_timeout: float) -> float:
    """The default time budget of a look: 3 × [dns] timeout, at least 2 s."""
    return max(2.0, 3 * float(dns_timeout))


def look_bounded(client: DnsLookup, service: ServiceConfig, domain: str, budget: float) -> Lookahead | None:
    """``look`` within ``budget`` seconds (callers use ``look_budget``).

    A daemon thread, so a hung name server can neither hold the request nor keep the
    process alive at exit. Any failure is logged and gives None.
    """
    result: list[Lookahead] = []
    failure: list[BaseException] = []

    def work() -> None:
        try:
            result.append(look(client, service, domain))
        except BaseException as exc:  # noqa: BLE001 - reported below, never raised into a request
            failure.append(exc)

    thread = threading.Thread(target=work, name=f"lookahead-{domain}", daemon=True)
    thread.start()
    thread.join(budget)
    if result:
        return result[0]
    if failure:
        log.warning("looking at %s before the first reply failed (%s: %s); replying without it",
                    domain, type(failure[0]).__name__, failure[0])
    else:
        log.warning("looking at %s before the first reply took over %.1f s; replying without it",
                    domain, budget)
    return None


def reply_context(found: Lookahead | None, records: list[dict[str, str]]) -> dict[str, Any]:
    """The request_reply item keys: ``provider_hint`` and ``existing`` (notes with boxes)."""
    from bot.core.providers import hint
    from bot.core.records import record_box

    if found is None:
        return {"provider_hint": None, "existing": []}
    domain = found.domain
    existing: list[dict[str, Any]] = []
    spf = found.spf
    if spf is not None:
        current = "」「".join(spf["records"])
        if spf["status"] == "authorized":
            existing.append({"text": f"SPFレコード「{current}」が既に登録されており、弊社の送信サーバーも"
                                     "含まれています。SPFについてのご対応は不要です。", "box": None})
        elif spf["status"] in ("needs_change", "multiple") and spf["fix"]:
            what = ("SPFレコードが複数（" + f"「{current}」" + "）登録されています。"
                    "SPFレコードは1件だけにする必要があるため、"
                    "1件にまとめ、ほかは削除してください" if spf["status"] == "multiple" else
                    f"SPFレコード「{current}」が既に登録されています。弊社の送信サーバーを加えるため、"
                    "新しく追加せずに、この1件を次の内容に書き換えてください")
            existing.append({"text": what + "（SPFレコードが2件になると、どちらも無効になってしまいます）。",
                             "box": record_box(domain, domain, spf["fix"])})
        elif spf.get("message"):
            existing.append({"text": f"SPFレコード「{current}」が既に登録されています。{spf['message']}",
                             "box": None})
    dmarc = found.dmarc
    if dmarc is not None:
        record = dmarc["record"]
        shown = "」「".join(record) if isinstance(record, list) else (record or "")
        if dmarc.get("cname"):
            existing.append({"text": f"「_dmarc.{domain}」は別名（CNAME）として「{dmarc['cname']}」を指しています。"
                                     "DMARCの設定を変える場合は、その指し先を管理している方にご相談ください"
                                     "（同じ名前にTXTレコードを追加することはできません）。", "box": None})
        elif dmarc["status"] == "valid":
            existing.append({"text": f"DMARCレコード「{shown}」が既に「{dmarc['location']}」に登録されています。"
                                     "新しく追加する必要はありません。", "box": None})
        elif dmarc["status"] == "inherited":
            existing.append({"text": f"上位のドメインのDMARCレコード「{shown}」（{dmarc['location']}）が"
                                     "御社のドメインにも適用されています。新しく追加する必要はありません。",
                             "box": None})
        elif dmarc["status"] == "wrong_location":
            existing.append({"text": f"DMARCレコード「{shown}」が「{dmarc['location']}」に登録されていますが、"
                                     f"正しい場所は「{dmarc['expected']}」です。DKIMの確認後に、"
                                     "正しい場所への移し方をご案内します。", "box": None})
        else:
            existing.append({"text": f"DMARCレコード「{shown}」が既に「{dmarc['location']}」に登録されていますが、"
                                     "誤りがあります。DKIMの確認後に、新しく追加するのではなく、"
                                     "この既存のレコードの修正内容をご案内します。", "box": None})
    return {"provider_hint": hint(found.provider, records) if found.provider and records else None,
            "existing": existing}
