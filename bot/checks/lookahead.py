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
from bot.core.dnsresults import AreaResult, DnsLookup

log = logging.getLogger("dkimbot")


@dataclass
class Lookahead:
    domain: str
    ns_names: list[str] = field(default_factory=list)
    provider: Any = None                      # bot.providers.Provider | None
    dmarc: dict[str, Any] | None = None       # an existing DMARC record, and what to do with it
    spf: dict[str, Any] | None = None         # an existing SPF record, and what to do with it
    notes: list[str] = field(default_factory=list)  # English, for the event log
    spf_new: str | None = None                # no SPF record: the one to publish
    dmarc_missing: bool = False               # DMARC definitely absent (not a DNS error)
    mx_names: list[str] = field(default_factory=list)  # the domain's mail servers (MX)

    def to_event(self) -> dict[str, Any]:
        return {
            "domain": self.domain, "nameservers": self.ns_names,
            "provider": self.provider.key if self.provider else None,
            "dmarc": self.dmarc, "spf": self.spf, "notes": self.notes,
            "spf_new": self.spf_new, "dmarc_missing": self.dmarc_missing, "mx": self.mx_names,
        }


def _dmarc_view(area: AreaResult, domain: str) -> dict[str, Any] | None:
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


def _spf_view(area: AreaResult) -> dict[str, Any] | None:
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
    dmarc = check_dmarc(client, domain, service.dmarc_rua)
    out.dmarc = _dmarc_view(dmarc, domain)
    out.dmarc_missing = out.dmarc is None and {d.code for d in dmarc.diagnoses} == {"dmarc_not_published"}
    spf = check_spf(client, domain, service.sending_ips, service.spf_include)
    out.spf = _spf_view(spf)
    if {d.code for d in spf.diagnoses} == {"spf_not_published"}:
        out.spf_new = (spf.found or {}).get("suggested")
    mx = client.lookup(domain, "MX")
    if isinstance(mx, Lookup):
        out.mx_names = sorted({str(getattr(r, "exchange", r)).rstrip(".").lower() for r in mx.records} - {""})
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


def _spf_own_servers_note(found: Lookahead, include: str, existing: list[str]) -> str:
    """The warning a new or merged SPF record needs: the facility's own outgoing mail
    servers must be in it too, naming what the bot can see."""
    seen: list[str] = []
    ours = f"include:{include}" if include else ""
    for record in existing:
        seen += [t for t in record.split() if t.lower().startswith(("include:", "a:", "mx", "ip4:", "ip6:"))
                 and t.lower() != ours.lower()]
    if seen:
        return ("※今のレコードにある「" + "」「".join(seen) + "」（御社のメールサービスなど）は、"
                "そのまま残してあります。消さないでください。")
    mx = "、".join(found.mx_names)
    where = f"（このドメインのメールの受信サーバーは {mx} です）" if mx else ""
    return ("※このレコードは、このドメインのメールを送ってよいサーバーの一覧です。御社がご自身のメールソフトや"
            f"メールサービスからも「@{found.domain}」のアドレスでメールを送っている場合は、その送信サーバーも"
            f"このレコードに含める必要があります{where}。含めないと、そのメールが届きにくくなります。"
            "分からない場合は、メールサービスの会社に「SPFに含める値」をご確認ください。")


def reply_context(found: Lookahead | None, records: list[dict[str, str]],
                  service: ServiceConfig | None = None) -> dict[str, Any]:
    """The request_reply item keys: ``provider_hint``, ``asks`` (the DMARC and SPF
    records to register in the same visit as DKIM, each with its box) and ``existing``
    (notes on records already there that need nothing, or are handled later)."""
    from bot.core.providers import hint

    if found is None:
        return {"provider_hint": None, "existing": [], "asks": [], "looked": False}
    provider = found.provider
    spf_existing, spf_asks = _spf_items(found, service.spf_include if service is not None else "")
    dmarc_existing, dmarc_asks = _dmarc_items(found, service.dmarc_rua if service is not None else "")
    return {"provider_hint": hint(provider, records) if provider and records else None,
            "existing": spf_existing + dmarc_existing, "asks": dmarc_asks + spf_asks,  # DMARC asked first
            # Both DMARC and SPF seen (not lost to a DNS error): the mail can promise one visit.
            "looked": (found.dmarc is not None or found.dmarc_missing) and (found.spf is not None
                                                                              or bool(found.spf_new))}


_Items = tuple[list[dict[str, Any]], list[dict[str, Any]]]  # (notes on records already there, asks)


def _spf_items(found: Lookahead, include: str) -> _Items:
    """What the first mail says about SPF: a note on a record that needs nothing, or the
    record to add or to write over (one SPF record only)."""
    from bot.core.records import record_box

    provider, domain = found.provider, found.domain
    existing: list[dict[str, Any]] = []
    asks: list[dict[str, Any]] = []
    spf = found.spf
    if spf is not None:
        current = "」「".join(spf["records"])
        if spf["status"] == "authorized":
            existing.append({"text": f"SPFレコード「{current}」が既に登録されており、弊社の送信サーバーも"
                                     "含まれています。SPFについてのご対応は必要ありません。", "box": None})
        elif spf["status"] in ("needs_change", "multiple") and spf["fix"]:
            what = ("SPFレコードが複数（" + f"「{current}」" + "）登録されています。"
                    "SPFレコードは1件だけにする必要があるため、"
                    "次の1件にまとめ、ほかは削除してください" if spf["status"] == "multiple" else
                    f"SPFレコード「{current}」が既に登録されています。弊社の送信サーバーを加えるため、"
                    "新しく追加せずに、この1件を次の内容に書き換えてください")
            asks.append({"name": "SPF", "action": "replace",
                         "notes": [what + "（SPFレコードが2件になると、どちらも無効になってしまいます）。",
                                   _spf_own_servers_note(found, include, spf["records"])],
                         "box": record_box(domain, domain, spf["fix"], provider=provider)})
        elif spf.get("message"):
            existing.append({"text": f"SPFレコード「{current}」が既に登録されています。{spf['message']}",
                             "box": None})
    elif found.spf_new:
        asks.append({"name": "SPF", "action": "add",
                     "notes": ["御社のドメインにはSPFのレコードがまだありません。"
                               "次のレコードを新しく追加してください。",
                               _spf_own_servers_note(found, include, [])],
                     "box": record_box(domain, domain, found.spf_new, provider=provider)})
    return existing, asks


def _dmarc_items(found: Lookahead, rua: str) -> _Items:
    """What the first mail says about DMARC: a note on a record that is fine (or is
    mended after DKIM), or the record to add or to write over."""
    from bot.core.records import record_box

    provider, domain = found.provider, found.domain
    existing: list[dict[str, Any]] = []
    asks: list[dict[str, Any]] = []
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
                                     "DMARCについてのご対応は必要ありません。", "box": None})
        elif dmarc["status"] == "inherited":
            existing.append({"text": f"上位のドメインのDMARCレコード「{shown}」（{dmarc['location']}）が"
                                     "御社のドメインにも適用されています。DMARCについてのご対応は必要ありません。",
                             "box": None})
        elif dmarc.get("fix"):
            if dmarc["status"] == "wrong_location":
                note = (f"DMARCレコード「{shown}」が「{dmarc['location']}」に登録されていますが、"
                        f"正しい場所は「{dmarc['expected']}」です。次のとおり登録し、「{dmarc['location']}」の"
                        "レコードは削除してください。")
                action = "add"
            else:
                note = (f"DMARCレコード「{shown}」が既に「{dmarc['location']}」に登録されていますが、"
                        "誤りがあります。新しく追加せずに、この既存のレコードの値を次の内容に書き換えてください。")
                action = "replace"
            asks.append({"name": "DMARC", "action": action, "notes": [note],
                         "box": record_box(domain, f"_dmarc.{domain}", dmarc["fix"], provider=provider)})
        else:
            existing.append({"text": f"DMARCレコード「{shown}」が既に「{dmarc['location']}」に登録されていますが、"
                                     "誤りがあります。DKIMの確認後に、この既存のレコードの修正内容をご案内します。",
                             "box": None})
    elif found.dmarc_missing:
        from bot.checks.dmarc import suggest_dmarc_record

        asks.append({"name": "DMARC", "action": "add",
                     "notes": ["DMARCは、DKIMなどの確認に失敗したメールの扱いを、受け取った側に伝える設定です。"],
                     "box": record_box(domain, f"_dmarc.{domain}", suggest_dmarc_record(None, rua or None),
                                       provider=provider)})
    return existing, asks
