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

from bot.core.cases import WAITING, State
from bot.core.mailkinds import MailKind
from bot.faults import maybe_crash
from bot.flows.dmarcnotify import digest_section as dmarc_digest_section
from bot.flows.runtime import Bot
from bot.flows.staffgate import held_notes

log = logging.getLogger("dkimbot")

META_KEY = "digest:last_date"
REJECTED_SHOWN = timedelta(days=7)  # a rejected case counts in the totals this long
STARTED_KEY = "digest:started"  # when the bot first looked at the digest (ISO time)


def _events_since(bot: Bot, since: datetime) -> list[dict[str, Any]]:
    return bot.store.events_since(since)


def build_digest(bot: Bot, now: datetime | None = None) -> dict[str, Any]:
    """The digest's content (template context), read from the store only."""
    now = now or bot.clock()
    cfg = bot.cfg.schedule
    day_ago = now - timedelta(days=1)
    # A rejected request is told why at once and needs nobody after that: it leaves the
    # totals a week later instead of counting forever.
    cases = [c for c in bot.store.list_cases()
             if not (c.state == State.REJECTED and now - c.state_since >= REJECTED_SHOWN)]
    by_state = Counter(c.state for c in cases)
    stuck_after = timedelta(days=cfg.stuck_after_days)
    waiting = (State.NEEDS_INFO, *WAITING)
    stuck = [
        {"ref": c.ref, "facility": c.facility, "domain": c.domain, "state": c.state,
         "days": (now - c.state_since).days, "reminders": c.reminders_sent}
        for c in cases if c.state in waiting and now - c.state_since >= stuck_after
    ]
    events = _events_since(bot, day_ago)
    escalated = []
    for c in cases:
        if c.state != State.ESCALATED:
            continue
        reasons = [e for e in bot.store.events(c.id) if e["kind"] == "mail_queued"
                   and e["detail"].get("kind") == "staff_escalation"]
        escalated.append({
            "ref": c.ref, "facility": c.facility, "domain": c.domain, "from": c.resume_state or "-",
            "days": (now - c.state_since).days,
            "why": reasons[-1]["detail"].get("subject", "") if reasons else "",
            "new": c.state_since >= day_ago,
        })
    rows = bot.store.delivery_problems(day_ago)
    refs = {c.id: c.ref for c in cases}
    delivery = [
        {"refs": ",".join(refs.get(i, "?") for i in json.loads(r["case_ids"])) or "-",
         "kind": r["kind"], "status": r["status"], "attempts": r["attempts"],
         "error": (r["last_error"] or "")[:200], "message_id": r["message_id"]}
        for r in rows
    ]
    in_doubt = [{"ref": e["ref"], "message_id": e["detail"].get("message_id"), "kind": e["detail"].get("kind")}
                for e in events if e["kind"] == "delivery_in_doubt"]
    dns = Counter(e["ref"] for e in events if e["detail"].get("event") == "dns_error")
    grace = timedelta(days=bot.cfg.schedule.signing_grace_days)
    # Watched domains whose record is gone: staff must act before signing stops.
    watch = [
        {"ref": c.ref, "facility": c.facility, "domain": c.domain, "state": c.state,
         "since": c.state_since.isoformat(timespec="minutes"),
         "deadline": (c.state_since + grace).isoformat(timespec="minutes") if c.state == State.DKIM_LOST else None}
        for c in cases if c.state in (State.DKIM_LOST, State.SIGNING_STOPPED)
    ]
    return {
        "date": now.date().isoformat(),
        "total": len(cases),
        "by_state": sorted(by_state.items(), key=lambda kv: [s.value for s in State].index(kv[0])
                           if kv[0] in [s.value for s in State] else 99),
        "stuck": stuck,
        "stuck_days": cfg.stuck_after_days,
        "escalated": escalated,
        "delivery": delivery,
        "in_doubt": in_doubt,
        "dns_errors": sorted(dns.items()),
        "watch": watch,
        "new_cases": sum(1 for c in cases if c.created_at >= day_ago),
        # Staff notes held back by the flood gate (bot/flows/staffgate.py), not yet merged.
        "held": [{"ref": e["ref"] or "-", "at": e["at"], "why": e["detail"].get("why", ""),
                  "subject": e["detail"].get("subject", "")} for e in held_notes(bot, day_ago)],
        "completed_today": sum(1 for e in events if e["to_state"] == State.COMPLETED
                               and e["from_state"] != State.COMPLETED),
        "dmarc": dmarc_digest_section(bot, now),
    }


def render_digest(bot: Bot, now: datetime | None = None) -> tuple[str, str]:
    """(subject, body) as staff will read them."""
    assert bot.renderer is not None
    ctx = {"service": bot.cfg.service, "refs": "", "subject_refs": "", "addressees": [], "case": {},
           **build_digest(bot, now)}
    return bot.renderer.render(MailKind.STAFF_DIGEST, ctx)


def send_digest(bot: Bot) -> str | None:
    """Queue today's digest now and remember the date; returns its Message-ID."""
    from bot.flows.compose import enqueue_mail

    now = bot.clock()
    with bot.store.transaction():
        message_id = enqueue_mail(bot, MailKind.STAFF_DIGEST, [], build_digest(bot, now), staff_only=True)
        bot.store.set_meta(META_KEY, now.date().isoformat())
        maybe_crash("digest.decided")
    log.info("-: daily digest queued (%s)", message_id)
    return message_id


def digest_due(bot: Bot, now: datetime | None = None) -> bool:
    now = now or bot.clock()
    if bot.cfg.schedule.digest_hour < 0 or not bot.cfg.service.staff_cc:
        return False
    if now.hour < bot.cfg.schedule.digest_hour:
        return False
    return bot.store.get_meta(META_KEY) != now.date().isoformat()


def digest_once(bot: Bot) -> int:
    """The pass's unit: send the digest if today's is due. Returns 1 when one was queued."""
    # A new installation has no day worth summarising yet: the first digest goes out
    # once the bot has run for a full day (then daily after digest_hour).
    now = bot.clock()
    started = bot.store.get_meta(STARTED_KEY)
    if started is None:
        with bot.store.transaction():
            bot.store.set_meta(STARTED_KEY, now.isoformat())
        return 0
    if now - datetime.fromisoformat(started) < timedelta(days=1) or not digest_due(bot, now):
        return 0
    if not needs_a_human(build_digest(bot, now)):
        # Nothing to decide today: no mail (a digest of "none"s teaches staff to skip it).
        with bot.store.transaction():
            bot.store.set_meta(META_KEY, now.date().isoformat())
        log.info("-: daily digest skipped: nothing for a human today")
        return 0
    send_digest(bot)
    return 1


def needs_a_human(digest: dict[str, Any]) -> bool:
    """True when the digest lists something staff must look at: an escalation, a stuck
    case, a delivery error, a mail sent twice, a lost record or stopped signing. Counts
    and DNS errors (retried by the bot) alone are not worth a mail."""
    return any(digest.get(k) for k in ("escalated", "stuck", "delivery", "in_doubt", "watch"))


def digest_command(bot: Bot, print_only: bool) -> int:
    """``dkimbot digest``: send today's digest now (and deliver), or only print it."""
    import sys

    if print_only:
        subject, body = render_digest(bot)
        sys.stdout.write(f"Subject: {subject}\n\n{body}")
        return 0
    from bot.flows.delivery import flush_outbox_once
    from bot.flows.runtime import pass_lock

    with pass_lock(bot.cfg, wait=True):
        send_digest(bot)
        _sent, errors = flush_outbox_once(bot)
    for err in errors:
        print(f"dkimbot: {err}", file=sys.stderr)
    return 1 if errors else 0
