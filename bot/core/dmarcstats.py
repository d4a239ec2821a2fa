"""What a facility's DMARC aggregate reports add up to (pure: stored sums in, verdicts out).

``summarise`` folds the store's per-(source IP, reporter) sums into one line per
source; ``advice`` says what an unaligned sender needs; ``quarantine_ready`` decides
whether a facility can be advised to move from ``p=none`` to ``p=quarantine``: every
source passed DMARC over the whole window, with enough mail to mean something, and
the reports really cover the window (three good days are not thirty).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

QUARANTINE_WINDOW_DAYS = 30


@dataclass(frozen=True)
class DmarcRowIn:
    """One report record as stored (bot/flows/dmarcintake.py builds them, the store writes them)."""

    day: str
    source_ip: str
    ours: bool
    messages: int
    dmarc_pass: bool
    dkim_result: str
    dkim_aligned: bool
    dkim_domain: str
    spf_result: str
    spf_aligned: bool
    spf_domain: str
    disposition: str
    header_from: str


@dataclass(frozen=True)
class SourceStat:
    ip: str
    name: str | None          # reverse DNS name, when known
    ours: bool                # one of [service] sending_ips
    messages: int
    dmarc_pass: int
    dkim_aligned: int
    spf_aligned: int
    dkim_pass: int            # DKIM passed for some domain, aligned or not
    dkim_domains: tuple[str, ...]
    reporters: tuple[str, ...]

    @property
    def failing(self) -> int:
        return self.messages - self.dmarc_pass

    @property
    def advice(self) -> tuple[str, ...]:
        """What would make this sender pass: "dkim" (sign with the facility's domain),
        "dkim_domain" (it signs, but with another domain), "spf" (add it to SPF)."""
        if not self.failing:
            return ()
        out = ["dkim_domain" if self.dkim_pass > self.dkim_aligned else "dkim"]
        if self.spf_aligned < self.messages:
            out.append("spf")
        return tuple(out)

    def to_json(self) -> dict[str, Any]:
        return {"ip": self.ip, "name": self.name, "messages": self.messages, "dmarc_pass": self.dmarc_pass,
                "ours": self.ours, "reporters": list(self.reporters), "dkim_aligned": self.dkim_aligned,
                "spf_aligned": self.spf_aligned, "advice": list(self.advice)}


@dataclass(frozen=True)
class DomainSummary:
    domain: str
    days: int
    sources: tuple[SourceStat, ...]

    @property
    def messages(self) -> int:
        return sum(s.messages for s in self.sources)

    @property
    def dmarc_pass(self) -> int:
        return sum(s.dmarc_pass for s in self.sources)

    @property
    def ours(self) -> tuple[SourceStat, ...]:
        return tuple(s for s in self.sources if s.ours)

    @property
    def failing_others(self) -> tuple[SourceStat, ...]:
        return tuple(s for s in self.sources if not s.ours and s.failing)

    def to_json(self) -> dict[str, Any]:
        return {"domain": self.domain, "days": self.days, "messages": self.messages,
                "dmarc_pass": self.dmarc_pass, "sources": [s.to_json() for s in self.sources]}


def percent(part: int, whole: int) -> str:
    """A share for people: "100%", "99.5%", "0%"; "-" when there is nothing."""
    if whole <= 0:
        return "-"
    value = 100.0 * part / whole
    if part != whole and value >= 99.95:
        return "99.9%"  # never round a failure away into "100%"
    return f"{value:.1f}%".replace(".0%", "%")


def _int(row: Mapping[str, Any], key: str) -> int:
    return int(row.get(key) or 0)


def summarise(domain: str, days: int, rows: Iterable[Mapping[str, Any]]) -> DomainSummary:
    """One SourceStat per IP from rows of (ip, reporter) sums, most mail first."""
    by_ip: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_ip.setdefault(str(row["ip"]), []).append(row)
    sources = []
    for ip, group in by_ip.items():
        domains = sorted({d for r in group for d in str(r.get("dkim_domains") or "").split(",") if d})
        sources.append(SourceStat(
            ip=ip, name=next((str(r["name"]) for r in group if r.get("name")), None),
            ours=any(bool(r.get("ours")) for r in group),
            messages=sum(_int(r, "messages") for r in group),
            dmarc_pass=sum(_int(r, "dmarc_pass") for r in group),
            dkim_aligned=sum(_int(r, "dkim_aligned") for r in group),
            spf_aligned=sum(_int(r, "spf_aligned") for r in group),
            dkim_pass=sum(_int(r, "dkim_pass") for r in group),
            dkim_domains=tuple(domains),
            reporters=tuple(sorted({str(r["reporter"]) for r in group}, key=str.lower)),
        ))
    sources.sort(key=lambda s: (not s.ours, -s.messages, s.ip))
    return DomainSummary(domain=domain, days=days, sources=tuple(sources))


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str     # English, for staff and the event log


def quarantine_ready(summary: DomainSummary, first_day: str | None, today: date, min_messages: int,
                     current_policy: str) -> Readiness:
    """Advise p=quarantine only when every source passed DMARC for the whole window."""
    if current_policy in ("quarantine", "reject"):
        return Readiness(False, f"the published policy is already p={current_policy}")
    window_start = today - timedelta(days=QUARANTINE_WINDOW_DAYS)
    if first_day is None or date.fromisoformat(first_day) > window_start + timedelta(days=1):
        return Readiness(False, f"reports cover less than {QUARANTINE_WINDOW_DAYS} days (first {first_day or 'none'})")
    if summary.messages < min_messages:
        return Readiness(False, f"{summary.messages} messages in {QUARANTINE_WINDOW_DAYS} days, "
                                f"fewer than {min_messages}")
    failing = [s for s in summary.sources if s.failing]
    if failing:
        return Readiness(False, f"{len(failing)} source(s) failed DMARC, "
                                f"e.g. {failing[0].ip} ({failing[0].failing} messages)")
    return Readiness(True, f"all {summary.messages} messages from {len(summary.sources)} source(s) passed DMARC "
                           f"over {QUARANTINE_WINDOW_DAYS} days")
