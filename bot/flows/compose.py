"""Composing mails: record boxes, recipients, threading, the daily limits (per case here,
per address in ``bot/flows/ratelimit.py``).

``enqueue_mail`` renders a template and queues the message in the outbox inside the
caller's transaction, so a mail exists exactly when the decision that caused it does.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from bot.adapters.mailout import RenderedMail, build_message
from bot.adapters.store import Store
from bot.config import Config
from bot.core.authority import may_copy_contact
from bot.core.mailkinds import MailKind
from bot.core.providers import Provider, by_key
from bot.core.records import dkim_box
from bot.core.rows import CaseRow
from bot.flows.desks import MailDesk

log = logging.getLogger("dkimbot")


def case_provider(store: Store, case: CaseRow) -> Provider | None:
    """The DNS host seen before the case's first reply (its ``dns_lookahead`` event)."""
    for event in reversed(store.events(case.id)):
        if event["kind"] == "dns_lookahead":
            return by_key((event.get("detail") or {}).get("provider"))
    return None


def first_mail_asks(store: Store, case: CaseRow) -> set[str]:
    """Which of DMARC and SPF the case's first mail already asked for (one visit), read
    from what was seen before it (the ``dns_lookahead`` event)."""
    for event in reversed(store.events(case.id)):
        if event["kind"] == "dns_lookahead":
            d = event.get("detail") or {}
            asked = set()
            if d.get("dmarc_missing") or (d.get("dmarc") or {}).get("fix"):
                asked.add("DMARC")
            if d.get("spf_new") or (d.get("spf") or {}).get("fix"):
                asked.add("SPF")
            return asked
    return set()


def key_records(store: Store, case: CaseRow, provider: Provider | None = None) -> list[dict[str, str]]:
    """The DKIM record box(es) of a case's domain, from the stored public keys, for the
    panel of ``provider`` (default: the one seen when the case began)."""
    boxes: list[dict[str, str]] = []
    if not case.domain:
        return boxes
    if provider is None:
        provider = case_provider(store, case)
    keys = {k["selector"]: k for k in store.domain_keys(case.domain)}
    for selector in case.selectors or ([case.selector] if case.selector else []):
        k = keys.get(selector)
        if k is None:
            continue
        boxes.append(dkim_box(case.domain, selector, k["algorithm"], k["public_b64"], provider=provider))
    return boxes


def _addressees(names: list[str | None]) -> list[str]:
    # A case without a facility name (a request whose fields were not found) is greeted
    # with "ご担当者様" alone; the template adds the name in front when there is one.
    out: list[str] = []
    for n in names:
        n = n or ""
        if n not in out:
            out.append(n)
    return out


def _case_recipients(cfg: Config, case: CaseRow) -> list[str]:
    to = [case.requester] if case.requester else []
    # A contact on another domain is recorded, never mailed (no mail to third parties).
    if (cfg.service.cc_contact and case.contact_email and case.contact_email not in to
            and may_copy_contact(case, case.requester, shared_domains=cfg.service.freemail_domains)):
        to.append(case.contact_email)
    return [a for a in to if a]


def enqueue_mail(
    desk: MailDesk, kind: MailKind, cases_: list[CaseRow], context: dict[str, Any], *,
    to: list[str] | None = None, staff_only: bool = False,
    in_reply_to: str | None = None, references: list[str] | None = None,
    merged_release: bool = False,
) -> str | None:
    """Render and queue one mail (inside the caller's transaction). Returns its Message-ID."""
    cfg = desk.cfg
    now = desk.clock()
    refs = [c.ref for c in cases_]
    primary = cases_[0] if cases_ else None
    if not staff_only and primary is not None and _over_case_limit(desk.store, cfg, kind, primary, now):
        return None
    subject, body = _render(desk, kind, cases_, context)
    if staff_only:
        from bot.flows.staffgate import hold_staff_mail

        if hold_staff_mail(desk, kind, cases_, subject, body, merged_release=merged_release):
            return None  # merged later or listed in the digest (bot/flows/staffgate.py)
    addressed = _addressed(desk, kind, cases_, to, staff_only)
    if addressed is None:
        return None
    recipients, cc = addressed
    if primary is not None and in_reply_to is None:
        in_reply_to = primary.thread_last
        references = primary.thread_refs
    mail = build_message(
        cfg, kind=kind, subject=subject, body=body, to=recipients, cc=cc, now=now,
        in_reply_to=in_reply_to, references=references, case_refs=refs,
    )
    _record_queued(desk.store, kind, cases_, mail, subject, staff_only, now)
    log.info("%s: queued %s mail %s", ",".join(refs) or "-", kind, mail.message_id)
    return mail.message_id


def _over_case_limit(store: Store, cfg: Config, kind: MailKind, case: CaseRow, now: datetime) -> bool:
    """Loop and rate safety: a bounded number of facility mails per case per day (the
    suppressed mail is recorded as an event)."""
    sent_today = store.facility_mails_since(case.id, now - timedelta(days=1))
    if sent_today < cfg.service.max_mails_per_case_per_day:
        return False
    store.add_event(case.id, now, "mail_suppressed", detail={"kind": kind, "reason": "daily mail limit reached"})
    log.warning("%s: %s mail suppressed (daily limit %d)", case.ref, kind, cfg.service.max_mails_per_case_per_day)
    return True


def _render(desk: MailDesk, kind: MailKind, cases_: list[CaseRow], context: dict[str, Any]) -> tuple[str, str]:
    """(subject, body) of ``kind`` for ``cases_``: the common fields, then the caller's."""
    refs = [c.ref for c in cases_]
    primary = cases_[0] if cases_ else None
    ctx = {
        "service": desk.cfg.service,
        "refs": "、".join(refs),
        "subject_refs": "".join(f"[{r}]" for r in refs),
        "addressees": _addressees([c.facility for c in cases_]),
        "case": primary.to_json() | {"ref": primary.ref} if primary else {},
        **context,
    }
    assert desk.renderer is not None
    return desk.renderer.render(kind, ctx)


def _addressed(desk: MailDesk, kind: MailKind, cases_: list[CaseRow], to: list[str] | None,
               staff_only: bool) -> tuple[list[str], list[str]] | None:
    """(recipients, cc) of the mail; None when the per-address limit holds back every
    recipient (the mail is then not queued at all)."""
    staff_cc = list(desk.cfg.service.staff_cc)
    primary = cases_[0] if cases_ else None
    if staff_only:
        recipients, cc = staff_cc, []
    else:
        recipients = to if to is not None else (_case_recipients(desk.cfg, primary) if primary else [])
        cc = list(staff_cc)
    if not recipients:
        return list(staff_cc), []
    if not staff_only:
        from bot.flows.ratelimit import limit_recipients

        # Per address, across cases: stops a loop that opens a new case per message.
        recipients = limit_recipients(desk, kind, [c.id for c in cases_], recipients)
        if not recipients:
            return None
    return recipients, cc


def _record_queued(store: Store, kind: MailKind, cases_: list[CaseRow], mail: RenderedMail, subject: str,
                   staff_only: bool, now: datetime) -> None:
    """Put the mail in the outbox, thread the cases on it (facility mail) and record it."""
    store.enqueue(
        message_id=mail.message_id, kind=kind, case_ids=[c.id for c in cases_],
        sender=mail.sender, recipients=mail.recipients, raw=mail.raw, now=now,
    )
    if not staff_only:
        for c in cases_:
            thread = list(c.thread_refs)
            thread.append(mail.message_id)
            store.update_case(c.id, now, thread_last=mail.message_id, thread_refs=thread[-30:])
    for c in cases_:
        store.add_event(c.id, now, "mail_queued", detail={"kind": kind, "message_id": mail.message_id,
                                                          "subject": subject})
