"""DMARC aggregate reports: the [reports] mailbox → stored rows per facility domain.

Each new mail is read (bot/adapters/reportbox.py), its XML documents taken out and
parsed (bot/core/dmarcmail.py, bot/core/dmarcxml.py), and every report for a domain
that has a case is stored with its rows in one transaction together with the mail's
outcome, so a crash neither loses nor doubles a report. A report for a domain without
a case is counted (``no_case``) and dropped; a malformed, hostile or oversized one is
counted under its code and skipped; a report already stored (same reporter, same report
id) counts once. Nothing here stops the pass: one bad mail is one counted outcome.

Marking by reporter: the reporter is the report's org_name; when the mail's From domain
is not the organisation of the report's own contact address, anyone could have sent
it, so the reporter is stored as ``"<org_name> (via <From domain>)"``: shown as such
to staff and the facility, and never able to shadow the real reporter's report ids.
Records for a header_from outside the report's domain are not the facility's mail:
they are dropped and the report is flagged ``foreign_rows``.
"""

from __future__ import annotations

import ipaddress
import logging
from collections import Counter
from datetime import datetime, timedelta

from bot.adapters.reportbox import ReportMessage, open_report_mailbox
from bot.checks.dmarc import organizational_domain
from bot.core.cases import State
from bot.core.dmarcmail import ReportMail, read_report_mail
from bot.core.dmarcstats import DmarcRowIn
from bot.core.dmarcxml import AggregateReport, ReportError, ReportRow, parse_aggregate
from bot.flows.runtime import Bot

log = logging.getLogger("dkimbot")

PTR_PER_PASS = 20                 # new source names looked up per pass (bounded DNS work)
PTR_RETRY = timedelta(days=7)     # a source without a name is asked again after this


class OurAddresses:
    """``[service] sending_ips``: single addresses or networks (203.0.113.0/28)."""

    def __init__(self, entries: list[str]) -> None:
        self.networks = []
        for entry in entries:
            try:
                self.networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                log.warning("[service] sending_ips: %r is not an address; ignored for reports", entry)

    def __contains__(self, ip: str) -> bool:
        addr = ipaddress.ip_address(ip)
        return any(addr.version == n.version and addr in n for n in self.networks)


def reporter_label(report: AggregateReport, from_domain: str) -> str:
    """The reporter, marked with the sending domain when the two do not belong together."""
    name = report.reporter
    claimed = report.email.rpartition("@")[2]
    if not from_domain:
        return f"{name} (via unknown sender)"
    own = organizational_domain(from_domain)
    if claimed and organizational_domain(claimed) == own:
        return name
    if "." in name and organizational_domain(name) == own:
        return name
    if "".join(ch for ch in name if ch.isalnum()) == own.partition(".")[0]:
        return name  # "Yahoo" sending from yahoo.com
    return f"{name} (via {own})"


def _aligned(domain: str, header_from: str) -> bool:
    return bool(domain) and organizational_domain(domain) == organizational_domain(header_from)


def _row(report: AggregateReport, row: ReportRow, ours: OurAddresses) -> DmarcRowIn:
    hf = row.header_from or report.domain
    # The DKIM and SPF results shown: an aligned pass if there is one, else what there is.
    dkim = sorted(row.dkim, key=lambda d: (d.result != "pass", not _aligned(d.domain, hf)))
    spf = sorted(row.spf, key=lambda s: (s.result != "pass", not _aligned(s.domain, hf)))
    return DmarcRowIn(
        day=report.begin.date().isoformat(), source_ip=row.source_ip, ours=row.source_ip in ours,
        messages=row.count, dmarc_pass=row.dmarc_pass,
        dkim_result=dkim[0].result if dkim else "none", dkim_aligned=row.dkim_eval == "pass",
        dkim_domain=dkim[0].domain if dkim else "",
        spf_result=spf[0].result if spf else "none", spf_aligned=row.spf_eval == "pass",
        spf_domain=spf[0].domain if spf else "", disposition=row.disposition, header_from=hf,
    )


def _is_facility_domain(bot: Bot, domain: str) -> bool:
    return any(c.state != State.REJECTED for c in bot.store.cases_for_domain(domain))


def store_report(bot: Bot, report: AggregateReport, mail: ReportMail, key: str, now: datetime) -> str:
    """Store one parsed report (inside the caller's transaction); returns the outcome."""
    if not _is_facility_domain(bot, report.domain):
        return "no_case"
    ours = OurAddresses(bot.cfg.service.sending_ips)
    reporter = reporter_label(report, mail.from_domain)
    flags = ["reporter_unverified"] if reporter != report.reporter else []
    rows, foreign = [], 0
    for r in report.rows:
        hf = r.header_from or report.domain
        if hf != report.domain and not hf.endswith("." + report.domain):
            foreign += r.count
            continue
        rows.append(_row(report, r, ours))
    if foreign:
        flags.append(f"foreign_rows:{foreign}")
        log.warning("DMARC report %s from %s: %d messages for other domains than %s dropped",
                    report.report_id, reporter, foreign, report.domain)
    added = bot.store.add_dmarc_report(
        reporter=reporter, report_id=report.report_id, reporter_email=report.email, sent_by=mail.from_domain,
        domain=report.domain, begin=report.begin, end=report.end, now=now, schema=report.schema,
        policy_p=report.policy.get("p", "").lower(), flags=flags, mail_key=key, rows=rows,
    )
    return "stored" if added else "duplicate"


def take_message(bot: Bot, message: ReportMessage) -> tuple[str, list[str]]:
    """Handle one report mail in one transaction; (outcome, IPs of stored rows)."""
    now = bot.clock()
    max_bytes = bot.cfg.reports.max_report_bytes
    outcomes: list[str] = []
    details: list[str] = []
    ips: list[str] = []
    mail = ReportMail(from_domain="", subject="")
    if message.oversized:
        outcomes.append("oversized")
        details.append(f"mail of {message.size} bytes not fetched")
    else:
        mail = read_report_mail(message.raw, max_bytes)
        for err in mail.errors:
            outcomes.append(err.code)
            details.append(err.message)
    with bot.store.transaction():
        for doc in mail.documents:
            try:
                report = parse_aggregate(doc, now=now)
            except ReportError as exc:
                outcomes.append(exc.code)
                details.append(exc.message)
                continue
            outcome = store_report(bot, report, mail, message.key, now)
            outcomes.append(outcome)
            details.append(f"{report.reporter} {report.report_id} {report.domain} {report.messages} msgs")
            if outcome == "stored":
                ips += [r.source_ip for r in report.rows]
        final = ",".join(sorted(set(outcomes))) if outcomes else "no_report"
        bot.store.record_dmarc_mail(message.key, now, final, "; ".join(details))
    if final != "stored":
        log.info("DMARC report mail %s: %s (%s)", message.key, final, "; ".join(details)[:300])
    return final, ips


def name_sources(bot: Bot, ips: list[str]) -> int:
    """Reverse DNS (PTR, via the configured resolver) for other senders' addresses."""
    from bot.adapters.dnsclient import DnsFailure

    ours = OurAddresses(bot.cfg.service.sending_ips)
    now = bot.clock()
    todo = bot.store.dmarc_unnamed_sources(sorted({ip for ip in ips if ip not in ours}), now - PTR_RETRY)
    if not todo:
        return 0
    client = bot.dns_client()
    named = 0
    for ip in todo[:PTR_PER_PASS]:
        answer = client.lookup(ipaddress.ip_address(ip).reverse_pointer, "PTR")
        if isinstance(answer, DnsFailure):
            continue  # asked again next pass
        name = str(answer.records[0]) if answer.records else None
        with bot.store.transaction():
            bot.store.set_dmarc_source(ip, name, "ptr" if name else "none", now)
        named += bool(name)
    return named


def intake_once(bot: Bot) -> Counter[str]:
    """Read every new report mail; returns outcomes counted. Raises ReportsMailboxError."""
    cfg = bot.cfg
    store = bot.store
    box = open_report_mailbox(cfg.reports, cfg.state_path(cfg.reports.path), store.get_meta)
    counts: Counter[str] = Counter()
    ips: list[str] = []
    try:
        for message in box.messages(store.dmarc_mail_seen):
            try:
                outcome, new_ips = take_message(bot, message)
            except Exception as exc:  # our bug on one mail must not stop the others nor loop forever
                log.exception("DMARC report mail %s failed", message.key)
                with store.transaction():
                    store.record_dmarc_mail(message.key, bot.clock(), "error", f"{type(exc).__name__}: {exc}")
                outcome, new_ips = "error", []
            counts[outcome] += 1
            ips += new_ips
        progress = box.progress()
        if progress is not None:
            with store.transaction():
                store.set_meta(*progress)
    finally:
        box.close()
    if ips:
        name_sources(bot, ips)
    if counts:
        log.info("DMARC report mails: %s", ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return counts
