"""The daily staff digest: cases by state, stuck cases, escalations, delivery and DNS errors.

Sent at most once per UTC day, from any pass (``run --once`` from cron or the daemon's
tick), once the day's ``[schedule] digest_hour`` has come. The day it was sent is stored
in the store's meta table in the same transaction that queues the mail, so a crash never
sends two digests for one day nor skips one. ``dkimbot digest`` prints or sends it now.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from bot.adapters.store import Store
from bot.core.cases import WAITING, State
from bot.core.mailkinds import MailKind
from bot.core.rows import CaseRow
from bot.faults import maybe_crash
from bot.flows.desks import MailDesk, Office
from bot.flows.staffgate import held_notes

log = logging.getLogger("dkimbot")

META_KEY = "digest:last_date"
REJECTED_SHOWN = timedelta(days=7)  # a rejected case counts in the totals this long
STARTED_KEY = "digest:started"  # when the bot first looked at the digest (ISO time)


def _listed_cases(store: Store, now: datetime) -> list[CaseRow]:
    # A rejected request is told why at once and needs nobody after that: it leaves the
    # totals a week later instead of counting forever.
    return [c for c in store.list_cases()
            if not (c.state == State.REJECTED and now - c.state_since >= REJECTED_SHOWN)]


def _stuck(cases: list[CaseRow], now: datetime, stuck_after_days: float) -> list[dict[str, Any]]:
    """Cases waiting on the facility longer than ``stuck_after_days``."""
    stuck_after = timedelta(days=stuck_after_days)
    waiting = (State.NEEDS_INFO, *WAITING)
    return [
        {"ref": c.ref, "facility": c.facility, "domain": c.domain, "state": c.state,
         "days": (now - c.state_since).days, "reminders": c.reminders_sent}
        for c in cases if c.state in waiting and now - c.state_since >= stuck_after
    ]


def _escalated(store: Store, cases: list[CaseRow], now: datetime, day_ago: datetime) -> list[dict[str, Any]]:
    """Escalated cases with the subject of their last staff escalation."""
    escalated = []
    for c in cases:
        if c.state != State.ESCALATED:
            continue
        reasons = [e for e in store.events(c.id) if e["kind"] == "mail_queued"
                   and e["detail"].get("kind") == "staff_escalation"]
        escalated.append({
            "ref": c.ref, "facility": c.facility, "domain": c.domain, "from": c.resume_state or "-",
            "days": (now - c.state_since).days,
            "why": reasons[-1]["detail"].get("subject", "") if reasons else "",
            "new": c.state_since >= day_ago,
        })
    return escalated


def _delivery(store: Store, cases: list[CaseRow], day_ago: datetime) -> list[dict[str, Any]]:
    """Outbox rows that failed or are being retried since ``day_ago``."""
    refs = {c.id: c.ref for c in cases}
    return [
        {"refs": ",".join(refs.get(i, "?") for i in json.loads(r["case_ids"])) or "-",
         "kind": r["kind"], "status": r["status"], "attempts": r["attempts"],
         "error": (r["last_error"] or "")[:200], "message_id": r["message_id"]}
        for r in store.delivery_problems(day_ago)
    ]


def _watch(cases: list[CaseRow], signing_grace_days: float) -> list[dict[str, Any]]:
    """Watched domains whose record is gone: staff must act before signing stops."""
    grace = timedelta(days=signing_grace_days)
    return [
        {"ref": c.ref, "facility": c.facility, "domain": c.domain, "state": c.state,
         "since": c.state_since.isoformat(timespec="minutes"),
         "deadline": (c.state_since + grace).isoformat(timespec="minutes") if c.state == State.DKIM_LOST else None}
        for c in cases if c.state in (State.DKIM_LOST, State.SIGNING_STOPPED)
    ]


def build_digest(office: Office, now: datetime | None = None) -> dict[str, Any]:
    """The digest's content (template context), read from the store only."""
    # Here, not at the top: the DMARC section's module queues mail (compose), which a
    # pass imports only when it has mail to write (bot/app/jobs.py).
    from bot.flows.dmarcnotify import digest_section as dmarc_digest_section

    now = now or office.clock()
    store, schedule = office.store, office.cfg.schedule
    day_ago = now - timedelta(days=1)
    cases = _listed_cases(store, now)
    by_state = Counter(c.state for c in cases)
    events = store.events_since(day_ago)
    in_doubt = [{"ref": e["ref"], "message_id": e["detail"].get("message_id"), "kind": e["detail"].get("kind")}
                for e in events if e["kind"] == "delivery_in_doubt"]
    dns = Counter(e["ref"] for e in events if e["detail"].get("event") == "dns_error")
    return {
        "date": now.date().isoformat(),
        "total": len(cases),
        "by_state": sorted(by_state.items(), key=lambda kv: [s.value for s in State].index(kv[0])
                           if kv[0] in [s.value for s in State] else 99),
        "stuck": _stuck(cases, now, schedule.stuck_after_days),
        "stuck_days": schedule.stuck_after_days,
        "escalated": _escalated(store, cases, now, day_ago),
        "delivery": _delivery(store, cases, day_ago),
        "in_doubt": in_doubt,
        "dns_errors": sorted(dns.items()),
        "watch": _watch(cases, schedule.signing_grace_days),
        "new_cases": sum(1 for c in cases if c.created_at >= day_ago),
        # Staff notes held back by the flood gate (bot/flows/staffgate.py), not yet merged.
        "held": [{"ref": e["ref"] or "-", "at": e["at"], "why": e["detail"].get("why", ""),
                  "subject": e["detail"].get("subject", "")} for e in held_notes(store, day_ago)],
        "completed_today": sum(1 for e in events if e["to_state"] == State.COMPLETED
                               and e["from_state"] != State.COMPLETED),
        "dmarc": dmarc_digest_section(office.cfg, store, now),
    }


def render_digest(desk: MailDesk, now: datetime | None = None) -> tuple[str, str]:
    """(subject, body) as staff will read them."""
    assert desk.renderer is not None
    ctx = {"service": desk.cfg.service, "refs": "", "subject_refs": "", "addressees": [], "case": {},
           **build_digest(desk, now)}
    return desk.renderer.render(MailKind.STAFF_DIGEST, ctx)


def send_digest(desk: MailDesk) -> str | None:
    """Queue today's digest now and remember the date; returns its Message-ID."""
    from bot.flows.compose import enqueue_mail

    now = desk.clock()
    with desk.store.transaction():
        message_id = enqueue_mail(desk, MailKind.STAFF_DIGEST, [], build_digest(desk, now), staff_only=True)
        desk.store.set_meta(META_KEY, now.date().isoformat())
        maybe_crash("digest.decided")
    log.info("-: daily digest queued (%s)", message_id)
    return message_id


def digest_due(office: Office, now: datetime | None = None) -> bool:
    now = now or office.clock()
    if office.cfg.schedule.digest_hour < 0 or not office.cfg.service.staff_cc:
        return False
    if now.hour < office.cfg.schedule.digest_hour:
        return False
    return office.store.get_meta(META_KEY) != now.date().isoformat()


def digest_once(desk: MailDesk) -> int:
    """The pass's unit: send the digest if today's is due. Returns 1 when one was queued."""
    # A new installation has no day worth summarising yet: the first digest goes out
    # once the bot has run for a full day (then daily after digest_hour).
    now = desk.clock()
    started = desk.store.get_meta(STARTED_KEY)
    if started is None:
        with desk.store.transaction():
            desk.store.set_meta(STARTED_KEY, now.isoformat())
        return 0
    if now - datetime.fromisoformat(started) < timedelta(days=1) or not digest_due(desk, now):
        return 0
    if not needs_a_human(build_digest(desk, now)):
        # Nothing to decide today: no mail (a digest of "none"s teaches staff to skip it).
        with desk.store.transaction():
            desk.store.set_meta(META_KEY, now.date().isoformat())
        log.info("-: daily digest skipped: nothing for a human today")
        return 0
    send_digest(desk)
    return 1


def needs_a_human(digest: dict[str, Any]) -> bool:
    """True when the digest lists something staff must look at: an escalation, a stuck
    case, a delivery error, a mail sent twice, a lost record or stopped signing. Counts
    and DNS errors (retried by the bot) alone are not worth a mail."""
    return any(digest.get(k) for k in ("escalated", "stuck", "delivery", "in_doubt", "watch"))


def digest_command(desk: MailDesk, print_only: bool) -> int:
    """``dkimbot digest``: send today's digest now (and deliver), or only print it."""
    import sys

    if print_only:
        subject, body = render_digest(desk)
        sys.stdout.write(f"Subject: {subject}\n\n{body}")
        return 0
    from bot.flows.delivery import flush_outbox_once
    from bot.flows.runtime import pass_lock

    with pass_lock(desk.cfg, wait=True):
        send_digest(desk)
        _sent, errors = flush_outbox_once(desk)
    for err in errors:
        print(f"dkimbot: {err}", file=sys.stderr)
    return 1 if errors else 0
