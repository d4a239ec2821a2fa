"""DMARC aggregate reports: the [reports] mailbox → stored rows per facility domain.

Each new mail is read (bot/adapters/reportbox.py), its XML documents taken out and
parsed (bot/core/dmarcmail.py, bot/core/dmarcxml.py), and every report for a domain
that has a case is stored with its rows in one transaction together with the mail's
outcome, so a crash neither loses nor doubles a report. A report for a domain without
a case is counted (``no_case``) and dropped; a malformed, hostile or oversized one is
counted under its code and skipped; a report already stored (same reporter, same report
id) counts once. Nothing here stops the pass: one bad mail is one counted outcome.

Marking by reporter: the reporter is the report's org_name; when the mail's From domain
is not the organisation of the report's own contact address (or of the org_name, when
that is a domain), anyone could have sent it, so the reporter is stored as
``"<org_name> (via <From domain>)"``: shown as such to staff, and never able to shadow
the real reporter's report ids. A report is **verified** (``verified_by``, the domain
that vouches for it) only when its name belongs to the From domain's organisation *and*
the mail is authenticated as that organisation's (bot/flows/dmarcauth.py: DKIM, or our
receiving server's Authentication-Results); otherwise it is stored unverified, as
``"<org_name> (unauthenticated mail from <From domain>)"`` or the "via" name: staff see
it, but only verified reports drive facility mails, the p=quarantine advice and alerts.
Records for a header_from outside the report's domain are not the facility's mail:
they are dropped and the report is flagged ``foreign_rows``.
"""

from __future__ import annotations

import ipaddress
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from bot.adapters.reportbox import ReportMessage, open_report_mailbox
from bot.adapters.store import Store
from bot.config import Config
from bot.core.cases import State
from bot.core.dmarcmail import ReportMail, read_report_mail
from bot.core.dmarcstats import DmarcRowIn
from bot.core.dmarcxml import AggregateReport, ReportError, ReportRow, parse_aggregate
from bot.flows.desks import Lookout, Office
from bot.flows.dmarcauth import DnsFunc, authenticated_org, org_of

log = logging.getLogger("dkimbot")

BATCH = 50                        # report mails stored per transaction
BATCH_BYTES = 32 * 1024 * 1024    # ... or fewer, when they are big
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


# Reporters whose org_name is a domain of theirs they do not send from.
_REPORTER_ORGS = {"outlook.com": "microsoft.com"}  # "Outlook.com", from dmarcreport@microsoft.com


def reporter_label(report: AggregateReport, from_domain: str) -> str:
    """The reporter, marked with the sending domain when the two do not belong together."""
    name = report.reporter
    key = name.lower()
    claimed = report.email.rpartition("@")[2]
    if not from_domain:
        return f"{name} (via unknown sender)"
    own = org_of(from_domain)
    if "." in key and " " not in key:
        # A name that is a domain claims that organisation, whatever the contact address
        # says: "google.com" with a contact at evil.test, mailed from evil.test, passed
        # for Google (review, 2026-12-01).
        named = org_of(key)
        return name if own in (named, _REPORTER_ORGS.get(named)) else f"{name} (via {own})"
    if claimed and org_of(claimed) == own:
        return name
    if "".join(ch for ch in key if ch.isalnum()) == own.partition(".")[0]:
        return name  # "Yahoo" sending from yahoo.com
    return f"{name} (via {own})"


def stored_reporter(report: AggregateReport, from_domain: str, authenticated: str) -> tuple[str, str]:
    """(the reporter as stored, the domain that vouches for it or "").

    A report is verified only when its mail is authenticated as its From domain's
    organisation (``authenticated``, bot/flows/dmarcauth.py) *and* its own name belongs
    to that organisation; anything else is kept under a marked name, unverified.
    """
    label = reporter_label(report, from_domain)
    if label != report.reporter:
        return label, ""
    if not authenticated:
        return f"{report.reporter} (unauthenticated mail from {org_of(from_domain)})", ""
    return label, authenticated


def _aligned(domain: str, header_from: str) -> bool:
    return bool(domain) and org_of(domain) == org_of(header_from)


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


def _is_facility_domain(store: Store, domain: str) -> bool:
    return any(c.state != State.REJECTED for c in store.cases_for_domain(domain))


def store_report(cfg: Config, store: Store, report: AggregateReport, mail: ReportMail, key: str,
                 now: datetime, authenticated: str = "") -> str:
    """Store one parsed report (inside the caller's transaction); returns the outcome.
    ``authenticated``: the organisation that authenticated the mail ("" for none)."""
    if not _is_facility_domain(store, report.domain):
        return "no_case"
    ours = OurAddresses(cfg.service.sending_ips)
    reporter, verified_by = stored_reporter(report, mail.from_domain, authenticated)
    flags = ["reporter_unverified"] if not verified_by else []
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
    added = store.add_dmarc_report(
        reporter=reporter, report_id=report.report_id, reporter_email=report.email, sent_by=mail.from_domain,
        domain=report.domain, begin=report.begin, end=report.end, now=now, schema=report.schema,
        policy_p=report.policy.get("p", "").lower(), flags=flags, mail_key=key, rows=rows,
        verified_by=verified_by,
    )
    return "stored" if added else "duplicate"


@dataclass
class ReadMail:
    """One report mail read and parsed (outside any transaction): what to store."""

    key: str
    mail: ReportMail
    authenticated: str = ""   # the organisation that authenticated the mail (dmarcauth), "" if none
    reports: list[AggregateReport] = field(default_factory=list)
    outcomes: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)


def read_message(message: ReportMessage, max_bytes: int, now: datetime) -> ReadMail:
    """Decompress and parse (pure work, no store): errors become counted outcomes."""
    if message.oversized:
        return ReadMail(message.key, ReportMail(from_domain="", subject=""), outcomes=["oversized"],
                        details=[f"mail of {message.size} bytes not fetched"])
    mail = read_report_mail(message.raw, max_bytes)
    read = ReadMail(message.key, mail, outcomes=[e.code for e in mail.errors], details=[e.message for e in mail.errors])
    for doc in mail.documents:
        try:
            read.reports.append(parse_aggregate(doc, now=now))
        except ReportError as exc:
            read.outcomes.append(exc.code)
            read.details.append(exc.message)
    # A batch holds 50 read mails until it is stored: not their XML, which is parsed.
    mail.documents.clear()
    return read


def store_mail(cfg: Config, store: Store, read: ReadMail, now: datetime) -> tuple[str, list[str]]:
    """Store a read mail's reports and its outcome (inside the caller's transaction)."""
    outcomes, details, ips = list(read.outcomes), list(read.details), []
    for report in read.reports:
        outcome = store_report(cfg, store, report, read.mail, read.key, now, read.authenticated)
        outcomes.append(outcome)
        details.append(f"{report.reporter} {report.report_id} {report.domain} {report.messages} msgs")
        if outcome == "stored":
            ips += [r.source_ip for r in report.rows]
    final = ",".join(sorted(set(outcomes))) if outcomes else "no_report"
    store.record_dmarc_mail(read.key, now, final, "; ".join(details))
    if final != "stored":
        log.info("DMARC report mail %s: %s (%s)", read.key, final, "; ".join(details)[:300])
    return final, ips


Authenticate = Callable[[ReportMessage, ReportMail], str]


def authenticate_with(cfg: Config, dnsfunc: Callable[[], DnsFunc]) -> Authenticate:
    """The organisation that authenticated a report mail ("" for none; bot/flows/dmarcauth.py).
    A verifier's bug on one mail leaves that mail unverified, never the pass stopped."""

    def authenticate(message: ReportMessage, mail: ReportMail) -> str:
        if message.oversized or not mail.from_domain:
            return ""
        try:
            return authenticated_org(message.raw, mail.from_domain, mail.auth_results,
                                     cfg.reports.authserv_id, dnsfunc)
        except Exception:  # dkimpy or DNS failing in a way not foreseen: unverified, logged
            log.exception("DMARC report mail %s: authentication not checked; kept as unverified", message.key)
            return ""

    return authenticate


def _read_all(office: Office, messages: list[ReportMessage], authenticate: Authenticate) -> list[ReadMail]:
    now = office.clock()
    reads = []
    for m in messages:
        try:
            read = read_message(m, office.cfg.reports.max_report_bytes, now)
            if read.reports:
                read.authenticated = authenticate(m, read.mail)
            reads.append(read)
        except Exception as exc:  # a parser bug on one mail: that mail's outcome, not the pass's end
            log.exception("DMARC report mail %s could not be read", m.key)
            reads.append(ReadMail(m.key, ReportMail(from_domain="", subject=""), outcomes=["error"],
                                  details=[f"{type(exc).__name__}: {exc}"]))
    return reads


def take_messages(office: Office, messages: list[ReportMessage],
                  authenticate: Authenticate) -> list[tuple[str, list[str]]]:
    """Read, then store a batch of mails in one transaction (a commit costs more than
    parsing a small report). If storing fails (a bug), the batch is rolled back and each
    mail is taken alone, so one mail's failure is that mail's outcome only."""
    now = office.clock()
    reads = _read_all(office, messages, authenticate)
    try:
        with office.store.transaction():
            return [store_mail(office.cfg, office.store, r, now) for r in reads]
    except Exception:
        if len(reads) == 1:
            raise
        log.warning("DMARC report batch of %d failed; taking the mails one by one", len(reads))
    results = []
    for message in messages:
        try:
            results += take_messages(office, [message], authenticate)
        except Exception as exc:  # our bug on one mail must not stop the others nor loop forever
            log.exception("DMARC report mail %s failed", message.key)
            with office.store.transaction():
                office.store.record_dmarc_mail(message.key, office.clock(), "error", f"{type(exc).__name__}: {exc}")
            results.append(("error", []))
    return results


def name_sources(lookout: Lookout, ips: list[str]) -> int:
    """Reverse DNS (PTR, via the configured resolver) for other senders' addresses.

    At most PTR_PER_PASS new addresses a pass, asked at once (a pool as the DNS checks
    use), so a slow or dead resolver costs one timeout, not twenty in a row.
    """
    from bot.adapters.dnsclient import DnsFailure
    from bot.checks.dnscheck import map_concurrently

    ours = OurAddresses(lookout.cfg.service.sending_ips)
    now = lookout.clock()
    todo = lookout.store.dmarc_unnamed_sources(sorted({ip for ip in ips if ip not in ours}), now - PTR_RETRY)
    if not todo:
        return 0
    client = lookout.dns_client()
    batch = todo[:PTR_PER_PASS]
    answers = map_concurrently(lambda ip: client.lookup(ipaddress.ip_address(ip).reverse_pointer, "PTR"),
                               batch, max_workers=PTR_PER_PASS)
    named = 0
    with lookout.store.transaction():
        for ip, answer in zip(batch, answers, strict=True):
            if isinstance(answer, DnsFailure):
                continue  # asked again next pass
            name = str(answer.records[0]) if answer.records else None
            lookout.store.set_dmarc_source(ip, name, "ptr" if name else "none", now)
            named += bool(name)
    return named


def intake_once(lookout: Lookout) -> Counter[str]:
    """Read every new report mail; returns outcomes counted. Raises ReportsMailboxError."""
    cfg = lookout.cfg
    store = lookout.store
    box = open_report_mailbox(cfg.reports, cfg.state_path(cfg.reports.path), store.get_meta)
    counts: Counter[str] = Counter()
    ips: list[str] = []
    batch: list[ReportMessage] = []
    dnsfuncs: list[DnsFunc] = []

    def dnsfunc() -> DnsFunc:
        """One DNS client for the pass's DKIM keys, made when the first signature needs it."""
        from bot.checks.dnscheck import make_dkim_dnsfunc

        if not dnsfuncs:
            dnsfuncs.append(make_dkim_dnsfunc(lookout.dns_client()))
        return dnsfuncs[0]

    authenticate = authenticate_with(cfg, dnsfunc)

    def flush() -> None:
        for outcome, new_ips in take_messages(lookout, batch, authenticate) if batch else []:
            counts[outcome] += 1
            ips.extend(new_ips)
        batch.clear()

    try:
        for message in box.messages(store.dmarc_mail_seen):
            batch.append(message)
            if len(batch) >= BATCH or sum(m.size for m in batch) >= BATCH_BYTES:
                flush()
        flush()
        progress = box.progress()
        if progress is not None:
            with store.transaction():
                store.set_meta(*progress)
    finally:
        box.close()
    if ips:
        name_sources(lookout, ips)
    if counts:
        log.info("DMARC report mails: %s", ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return counts
