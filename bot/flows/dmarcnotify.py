"""What the stored DMARC reports tell people: staff alerts, the facility's report mail,
the digest's section and ``dkimbot reports``.

* **Staff, the same day**: 予約番's own sending IPs failing DMARC at a receiver is a
  signer or key problem the DNS checks cannot see; the first report of the day that
  shows it raises a staff escalation mail (reporter and count), once per domain a day.
* **The facility**, ``[reports] facility_report_days`` after completion: how many mails
  receivers saw in the last 30 days, the share that passed, 予約番's mail apart, and every
  other sender that fails with what to do. When every source passed DMARC for 30 days
  with ``quarantine_min_messages`` or more, the mail advises ``p=quarantine`` with the
  exact record (their record with only ``p`` changed) — advice only: the bot never
  changes a facility's DMARC record. A facility told before it was ready gets one more
  mail when it becomes ready.

All three use **authenticated** reports only (``verified_by``, bot/flows/dmarcauth.py):
the rua address is public, and a forged report must not put a stranger's words in a
mail to a facility, make it look ready for p=quarantine, or page staff. Unverified
reports are counted and listed for staff (the digest, ``dkimbot reports``, the site).
"""

from __future__ import annotations

import logging
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from bot.adapters.store import CaseRow, Store
from bot.config import Config
from bot.core.cases import State
from bot.core.dmarcstats import (
    QUARANTINE_WINDOW_DAYS,
    DomainSummary,
    Readiness,
    percent,
    quarantine_ready,
    summarise,
)
from bot.core.mailkinds import MailKind
from bot.core.records import record_box
from bot.flows.compose import enqueue_mail
from bot.flows.desks import Lookout, MailDesk, MailLookout

if TYPE_CHECKING:
    from bot.adapters.dnsclient import DnsClient


log = logging.getLogger("dkimbot")

ALERT_META = "dmarc:alerted:"          # + domain → the UTC date of its last alert
PRUNE_META = "dmarc:pruned"            # the UTC date rows were last pruned
KEEP_DAYS = 400                        # report rows older than this are forgotten
SENT_EVENT = "dmarc_report_sent"
ADVISED_EVENT = "dmarc_quarantine_advised"


def summary(store: Store, domain: str, days: int, today: date, *, verified_only: bool = False) -> DomainSummary:
    """Every stored report (staff: unverified ones under their marked names), or only the
    authenticated ones, each reporter named by its authenticated domain (``verified_only``)."""
    since = (today - timedelta(days=days)).isoformat()
    return summarise(domain, days, store.dmarc_source_rows(domain, since, verified_only=verified_only))


def readiness(cfg: Config, store: Store, domain: str, today: date) -> tuple[Readiness, DomainSummary]:
    """p=quarantine readiness from authenticated reports only: a forged, backdated report
    must neither make a facility look ready nor set when its reports began."""
    window = summary(store, domain, QUARANTINE_WINDOW_DAYS, today, verified_only=True)
    verdict = quarantine_ready(window, store.dmarc_first_day(domain, verified_only=True), today,
                               cfg.reports.quarantine_min_messages,
                               store.dmarc_latest_policy(domain, verified_only=True))
    return verdict, window


def quarantine_record(cfg: Config, dns: DnsClient, domain: str) -> str:
    """The facility's DMARC record with p=quarantine (what DNS has now, else a new one)."""
    from bot.adapters.dnsclient import DnsQueryError
    from bot.checks.dmarc import is_dmarc_candidate, parse_dmarc, suggest_dmarc_record

    tags: dict[str, str] = {}
    try:
        found = [t for t in dns.query_txt(f"_dmarc.{domain}") if is_dmarc_candidate(t)]
    except DnsQueryError as exc:
        log.warning("%s: DMARC record not read for the quarantine advice (%s); suggesting a new one", domain, exc)
        found = []
    if len(found) == 1:
        tags = dict(parse_dmarc(found[0]).tags)
    tags["p"] = "quarantine"
    return suggest_dmarc_record(tags, cfg.service.dmarc_rua)


def _live_case(store: Store, domain: str) -> CaseRow | None:
    cases = [c for c in store.cases_for_domain(domain) if c.state not in (State.REJECTED, State.CANCELLED)]
    return cases[-1] if cases else None


def alert_ours_failing(desk: MailDesk) -> int:
    """Same-day staff mail when our own IPs fail DMARC in today's reports."""
    now = desk.clock()
    today = now.date().isoformat()
    midnight = datetime.combine(now.date(), datetime.min.time(), tzinfo=now.tzinfo)
    by_domain: dict[str, list[dict[str, Any]]] = {}
    for row in desk.store.dmarc_ours_failing(midnight):
        by_domain.setdefault(row["domain"], []).append(row)
    sent = 0
    for domain, rows in by_domain.items():
        if desk.store.get_meta(ALERT_META + domain) == today:
            continue
        case = _live_case(desk.store, domain)
        lines = "\n".join(f"- {r['reporter']}: {r['failed']} of {r['messages']} messages from {r['ips']} failed DMARC"
                          for r in rows)
        with desk.store.transaction():
            enqueue_mail(desk, MailKind.STAFF_ESCALATION, [case] if case else [], {
                "reason_title": f"{desk.cfg.service.saas_name} mail for {domain} fails DMARC at receivers",
                "reason": f"DMARC aggregate reports received today show mail from our own sending IPs "
                          f"for {domain} failing DMARC (neither aligned DKIM nor aligned SPF passed):\n{lines}",
                "decide_hint": f"DNS checks cannot see this: compare the signer's key with the published record "
                               f"('dkimbot check {domain}'), check that the outgoing mail is signed, and see "
                               f"'dkimbot reports {domain}'.",
                "diagnoses": [],
            }, staff_only=True)
            desk.store.set_meta(ALERT_META + domain, today)
            if case is not None:
                desk.store.add_event(case.id, now, "dmarc_ours_failing", detail={"reporters": rows})
        log.warning("%s: our mail fails DMARC at %s", domain, ", ".join(r["reporter"] for r in rows))
        sent += 1
    return sent


def facility_context(lookout: Lookout, case: CaseRow, today: date) -> dict[str, Any]:
    domain = case.domain or ""
    verdict, window = readiness(lookout.cfg, lookout.store, domain, today)
    ours = window.ours
    ours_messages = sum(s.messages for s in ours)
    ours_pass = sum(s.dmarc_pass for s in ours)
    # Addresses and numbers, reporters by their authenticated domain: no PTR name and no
    # text of a report reaches a facility (a stranger can publish either).
    others = [{"ip": s.ip, "messages": s.messages, "failing": s.failing,
               "reporters": "、".join(s.reporters), "advice": s.advice} for s in window.failing_others]
    record = quarantine_record(lookout.cfg, lookout.dns_client(), domain) if verdict.ready else ""
    return {
        "domain": domain, "days": QUARANTINE_WINDOW_DAYS, "messages": window.messages,
        "dmarc_pass": window.dmarc_pass, "pass_share": percent(window.dmarc_pass, window.messages),
        "ours_messages": ours_messages, "ours_pass": ours_pass, "ours_share": percent(ours_pass, ours_messages),
        "reporters": sorted({r for s in window.sources for r in s.reporters}, key=str.lower),
        "others_failing": others, "advise_quarantine": verdict.ready,
        "quarantine_record": record, "report_days": lookout.cfg.reports.facility_report_days,
        # The same box as every other mail (host field first, the full name second).
        "quarantine_box": record_box(domain, f"_dmarc.{domain}", record),
        "min_messages": lookout.cfg.reports.quarantine_min_messages, "readiness": verdict.reason,
    }


def _send_facility_report(desk: MailDesk, case: CaseRow, ctx: dict[str, Any], first: bool) -> None:
    now = desk.clock()
    with desk.store.transaction():
        mid = enqueue_mail(desk, MailKind.DMARC_REPORT, [case], {**ctx, "first": first})
        detail = {"message_id": mid, "messages": ctx["messages"], "dmarc_pass": ctx["dmarc_pass"],
                  "others_failing": len(ctx["others_failing"]), "advise_quarantine": ctx["advise_quarantine"],
                  "readiness": ctx["readiness"]}
        desk.store.add_event(case.id, now, SENT_EVENT, detail=detail)
        if ctx["advise_quarantine"]:
            desk.store.add_event(case.id, now, ADVISED_EVENT, detail={"record": ctx["quarantine_record"]})
    log.info("%s: DMARC report mail queued (%s messages, %s passed%s)", case.ref, ctx["messages"],
             ctx["pass_share"], ", p=quarantine advised" if ctx["advise_quarantine"] else "")


def facility_reports_once(desk: MailLookout) -> int:
    """The facility's report mail when due, and the quarantine advice once it is ready."""
    now = desk.clock()
    due_after = timedelta(days=desk.cfg.reports.facility_report_days)
    sent = 0
    for case in desk.store.list_cases((State.COMPLETED.value,)):
        if not case.domain or now - case.state_since < due_after:
            continue
        kinds = {e["kind"] for e in desk.store.events(case.id)}
        if ADVISED_EVENT in kinds:
            continue
        first = SENT_EVENT not in kinds
        if not first and not readiness(desk.cfg, desk.store, case.domain, now.date())[0].ready:
            continue
        ctx = facility_context(desk, case, now.date())
        if ctx["messages"] == 0:
            continue  # no report yet: nothing to tell; asked again next pass
        _send_facility_report(desk, case, ctx, first)
        sent += 1
    return sent


def digest_section(cfg: Config, store: Store, now: datetime) -> dict[str, Any]:
    """The digest's DMARC part: report mails of the last day, our failures, who is ready."""
    if not cfg.reports.enabled:
        return {"enabled": False}
    day_ago = now - timedelta(days=1)
    failing = store.dmarc_ours_failing(day_ago)
    ready = []
    since = (now.date() - timedelta(days=QUARANTINE_WINDOW_DAYS)).isoformat()
    for domain in store.dmarc_domains(since):
        verdict, window = readiness(cfg, store, domain, now.date())
        if verdict.ready:
            case = _live_case(store, domain)
            ready.append({"domain": domain, "ref": case.ref if case else "-", "messages": window.messages,
                          "sources": len(window.sources)})
    waiting = timedelta(days=cfg.reports.facility_report_days)
    # "No report yet" counts authenticated reports: a forged one must not silence it.
    silent = [{"ref": c.ref, "domain": c.domain, "days": (now - c.state_since).days}
              for c in store.list_cases((State.COMPLETED.value,))
              if c.domain and now - c.state_since >= waiting
              and store.dmarc_first_day(c.domain, verified_only=True) is None]
    flagged = store.dmarc_flagged_reports(day_ago)
    return {"enabled": True, "silent": silent, "mail_counts": sorted(store.dmarc_mail_counts(day_ago).items()),
            "failing": failing, "ready": ready, "flagged": flagged,
            "unverified": sum(1 for f in flagged if "reporter_unverified" in f["flags"]),
            "unverified_failing": store.dmarc_ours_failing(day_ago, verified=False)}


def reports_once(desk: MailLookout) -> list[str]:
    """The pass's unit ([reports] on): read new reports, alert staff, mail facilities.

    Returns the mailbox's error (one line) when it could not be read; the alerts and
    facility mails still run on what is stored.
    """
    from bot.adapters.reportbox import ReportsMailboxError
    from bot.flows.dmarcintake import intake_once

    if not desk.cfg.reports.enabled:
        return []
    errors: list[str] = []
    try:
        intake_once(desk)
    except ReportsMailboxError as exc:
        errors.append(str(exc))
    alert_ours_failing(desk)
    facility_reports_once(desk)
    today = desk.clock().date()
    if desk.store.get_meta(PRUNE_META) != today.isoformat():
        with desk.store.transaction():
            pruned = desk.store.prune_dmarc((today - timedelta(days=KEEP_DAYS)).isoformat())
            desk.store.set_meta(PRUNE_META, today.isoformat())
        if pruned:
            log.info("DMARC reports: %d rows older than %d days forgotten", pruned, KEEP_DAYS)
    return errors
