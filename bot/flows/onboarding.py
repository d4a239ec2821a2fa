"""Deciding on one incoming message: a request (new, repeated, completed after
needs_info), a facility's reply to a case, or nothing for us.

Runs inside ``process_message``'s transaction: cases, events, the reply mail and the
handled mark are committed together. The slow part (DNS, key generation, a managed
zone's update) is done before it, by ``bot.flows.prepare.prepare_message``; what it prepared is
passed in as ``prepared`` and used only when it still fits the store.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from bot.adapters.mailout import show_domain_ja
from bot.core import cases as sm
from bot.core.cases import State
from bot.core.mailkinds import MailKind
from bot.core.replies import read_reply
from bot.core.request import Facility, ParsedMail
from bot.core.requestplan import Continued, FacilityPlan, Step, facilities_of, over_limit, plan_facility
from bot.core.rows import CaseRow
from bot.flows.compose import enqueue_mail, key_records
from bot.flows.matching import existing_case, reply_target
from bot.flows.prepare import looked_for_reply, not_prepared
from bot.flows.runtime import Bot

if TYPE_CHECKING:
    from bot.flows.prepare import Prepared

log = logging.getLogger("dkimbot")


def decide_message(bot: Bot, parsed: ParsedMail, prepared: Prepared | None = None) -> str:
    if parsed.no_reply_reason:
        return f"ignored: {parsed.no_reply_reason}"
    target = reply_target(bot, parsed)
    if parsed.facilities and (parsed.is_request or (target and target.state == State.NEEDS_INFO)):
        handle_request(bot, parsed, target, prepared)
        return f"request: {len(parsed.facilities)} facilities"
    if target is not None:
        handle_reply(bot, target, parsed, prepared)
        return f"reply to {target.ref}"
    if parsed.is_request:
        handle_request(bot, parsed, None)
        return "request without fields"
    return "not for us"


def handle_reply(bot: Bot, case: CaseRow, parsed: ParsedMail, prepared: Prepared | None = None) -> None:
    """A facility answered: check its case at once and answer what we then see."""
    now = bot.clock()
    thread = list(case.thread_refs)
    if parsed.message_id:
        thread.append(parsed.message_id)
    fields: dict[str, Any] = dict(thread_last=parsed.message_id or case.thread_last, thread_refs=thread[-30:])
    reading = read_reply(parsed.body_text or "")
    excerpt = (reading.new_text or (parsed.body_text or "")).strip()[:400]
    from bot.flows.rekey import answer_short_key_wish

    # The dkim_problem mail offered a shorter key for a cut-off record (SPEC §8).
    made = prepared.rekeys.get(case.id) if prepared is not None else None
    failure = prepared.failed.get(case.domain or "") if prepared is not None else None
    if answer_short_key_wish(bot, case, reading.new_text or parsed.body_text or "", fields, made, failure):
        return
    from bot.flows.replyforward import forward, hold

    text = (reading.new_text or parsed.body_text or "").strip()
    if case.state in (*sm.WAITING, State.ESCALATED):
        # Always recheck at once; only a "done" reply must get an answer from the check
        # (a question gets its answer from staff, a "thanks" needs none).
        fields.update(next_check_at=now, reply_pending=reading.reason == "done")
        bot.store.update_case(case.id, now, **fields)
        bot.store.add_event(case.id, now, "facility_reply", detail={"excerpt": excerpt, "reading": reading.reason})
        log.info("%s: facility replied (%s); checking now", case.ref, reading.reason)
        if reading.can_act:
            return
        # Decided after this pass's recheck: if that moves the case on, its mail answers
        # the reply and staff are not asked (bot/flows/replyforward.py).
        hold(bot, bot.store.get_case(case.id), sender=parsed.from_addr, message_id=parsed.message_id,
             text=text, reading=reading.reason)
        return
    bot.store.update_case(case.id, now, **fields)
    forward(bot, bot.store.get_case(case.id), sender=parsed.from_addr, message_id=parsed.message_id,
            text=text, reading=reading.reason, rechecked=False)


def _shared_selectors(bot: Bot, domain: str) -> list[str] | None:
    """Facilities of one domain share one key: the domain's live selector(s), if any."""
    for c in bot.store.cases_for_domain(domain):
        if c.selectors and c.state not in (State.REJECTED, State.CANCELLED):
            return list(c.selectors)
    return None


def _choose_key(bot: Bot, domain: str, prepared: Prepared | None) -> list[str]:
    """The domain's shared selectors, or the keys the prepare phase made for it.

    Never makes a key or asks DNS here (this runs inside the write transaction): what the
    prepare phase did not foresee is ``NotPrepared``, and ``process_message`` prepares
    again outside the transaction."""
    shared = _shared_selectors(bot, domain)
    if shared is not None:
        return shared
    ready = prepared.keys_for(bot, domain) if prepared is not None else None
    if ready is None:
        raise not_prepared(prepared, domain, "a key")
    now = bot.clock()
    for key in ready.keys:
        bot.store.record_key(domain, key.selector, key.algorithm, key.bits, key.public_b64, now)
    return list(ready.selectors)


_PROBLEM_WHAT = {
    "facility_name": "施設名", "contact_name": "お名前", "contact_email": "メールアドレス",
    "contact_phone": "電話番号", "admin_email": "メールアドレス",
}


@dataclass
class _Reply:
    """What one request mail's reply is being built from, facility by facility."""

    bot: Bot
    parsed: Any
    prepared: Prepared | None
    now: datetime
    base: dict[str, Any]                 # thread fields every touched case gets
    seen: dict[str, Any]                 # domain → lookahead (prepared before the transaction)
    items: list[dict[str, Any]] = field(default_factory=list)
    touched: list[CaseRow] = field(default_factory=list)

    def lookahead(self, case: CaseRow) -> dict[str, Any]:
        """The item keys from the look at the domain: ``records`` (boxes for its panel),
        ``provider_hint``, ``asks`` (DMARC/SPF to register in the same visit), ``existing``."""
        domain = case.domain or ""
        if domain not in self.seen:
            raise not_prepared(self.prepared, domain, "a look at its DNS")
        records = key_records(self.bot, case, getattr(self.seen[domain], "provider", None))
        return {"records": records, **looked_for_reply(self.bot, case, records, self.seen)}


def handle_request(bot: Bot, parsed: ParsedMail, target: CaseRow | None, prepared: Prepared | None = None) -> None:
    """One reply per request mail, listing every facility it named: each facility's step
    is planned (``core.requestplan``) and carried out here, inside the transaction."""
    cfg = bot.cfg
    requester = parsed.reply_address
    thread_refs = [*parsed.references, *([parsed.message_id] if parsed.message_id else [])]
    if over_limit(parsed.facilities, cfg.intake.max_facilities_per_mail):
        _hand_over_limit(bot, parsed, requester, cfg.intake.max_facilities_per_mail)
        return
    # Look before instructing (SPEC §8): each domain once per mail, done before the transaction.
    reply = _Reply(bot, parsed, prepared, bot.clock(),
                   dict(requester=requester, thread_root=parsed.message_id,
                        thread_last=parsed.message_id, thread_refs=thread_refs[-30:]),
                   dict(prepared.seen) if prepared is not None else {})
    own = [*cfg.service.own_domains, cfg.bot_domain]
    for f in facilities_of(parsed.facilities):
        found = existing_case(bot, f, requester, target)
        existing = Continued(found.id, found.state, found.domain) if found is not None else None
        plan = plan_facility(f, existing, freemail=cfg.service.freemail_domains, own=own)
        _STEPS[plan.step](reply, plan)
    _send_reply(reply, requester, thread_refs)


def _fields(f: Facility) -> dict[str, Any]:
    return dict(facility=f.facility_name, contact_name=f.contact_name, contact_email=f.contact_email,
                contact_phone=f.contact_phone, admin_email=f.admin_email)


def _needs_info(r: _Reply, plan: FacilityPlan) -> None:
    from bot.core.request import FIELD_LABELS

    f, store, now = plan.facility, r.bot.store, r.now
    problems = [
        {"field": p.field, "label": FIELD_LABELS[p.field], "kind": p.kind, "value": p.value,
         "what": _PROBLEM_WHAT.get(p.field, "値")}
        for p in f.problems
    ]
    if plan.continues is not None:
        case = store.update_case(plan.continues, now, problems=problems, **_fields(f), **r.base)
        store.add_event(case.id, now, "still_incomplete", detail={"problems": problems})
    else:
        case = store.create_case(state=State.NEEDS_INFO, now=now, problems=problems, **_fields(f), **r.base)
        store.add_event(case.id, now, "request_received", None, State.NEEDS_INFO, {"problems": problems})
    r.touched.append(case)
    r.items.append({"kind": "needs_info", "ref": case.ref, "facility": f.facility_name,
                    "problems": problems, "fields": {
                        "facility_name": f.facility_name, "contact_name": f.contact_name,
                        "contact_email": f.contact_email, "contact_phone": f.contact_phone,
                        "admin_email": f.admin_email}})


def _reject(r: _Reply, plan: FacilityPlan) -> None:
    f, store, now, domain = plan.facility, r.bot.store, r.now, plan.domain
    rejected = {"reason": plan.reason, "domain": domain}
    if plan.continues is not None and plan.existing is not None:
        case = store.transition(plan.continues, State.REJECTED, now, expected_state=plan.existing.state,
                                event="rejected", detail=rejected,
                                domain=domain, problems=[], **_fields(f), **r.base)
    else:
        case = store.create_case(state=State.REJECTED, now=now, domain=domain, **_fields(f), **r.base)
        store.add_event(case.id, now, "rejected", plan.existing.state if plan.existing else None,
                        State.REJECTED, rejected)
    r.touched.append(case)
    r.items.append({"kind": "rejected", "ref": case.ref, "facility": f.facility_name,
                    "admin_email": f.admin_email, "domain": domain, "reason": plan.reason})


def _resend(r: _Reply, plan: FacilityPlan) -> None:
    store, now = r.bot.store, r.now
    assert plan.existing is not None
    existing = store.get_case(plan.existing.id)
    store.add_event(existing.id, now, "repeat_request", detail={"message_id": r.parsed.message_id})
    case = store.update_case(existing.id, now, **r.base) if existing.state != State.COMPLETED else existing
    r.touched.append(case)
    if case.state == State.COMPLETED:
        # Setup is done: say so, with its records for reference; nothing to add.
        r.items.append({"kind": "complete", "ref": case.ref, "facility": case.facility,
                        "admin_email": case.admin_email, "domain": plan.domain,
                        "records": key_records(r.bot, case), "shared_with": [], "asks": [],
                        "existing": [], "provider_hint": None})
        return
    r.items.append({"kind": "resend", "ref": case.ref, "facility": case.facility,
                    "admin_email": case.admin_email, "domain": plan.domain,
                    "shared_with": [], **r.lookahead(case)})


def _assign_key(r: _Reply, plan: FacilityPlan) -> None:
    bot, store, now, domain = r.bot, r.bot.store, r.now, plan.domain or ""
    selectors = _choose_key(bot, domain, r.prepared)
    due = sm.next_check_at(now, now, bot.cfg.schedule)
    assigned = {"domain": domain, "selectors": selectors}
    if plan.existing is not None:
        case = store.transition(
            plan.existing.id, State.AWAITING_DKIM, now, expected_state=plan.existing.state,
            event="key_assigned", detail=assigned, domain=domain,
            selector=selectors[0], selectors=selectors, problems=[], next_check_at=due,
            reminders_sent=0, last_notice=None, **_fields(plan.facility), **r.base,
        )
    else:
        case = store.create_case(
            state=State.AWAITING_DKIM, now=now, domain=domain, selector=selectors[0],
            selectors=selectors, next_check_at=due, **_fields(plan.facility), **r.base,
        )
        store.add_event(case.id, now, "key_assigned", None, State.AWAITING_DKIM, assigned)
    others = [c.facility for c in store.cases_for_domain(domain)
              if c.id != case.id and c.state not in (State.REJECTED, State.CANCELLED) and c.facility]
    r.touched.append(case)
    managed = _managed_publish(r, case, selectors) if bot.cfg.dns.managed_nameservers and not others else None
    r.items.append({"kind": "managed" if managed else "record", "ref": case.ref,
                    "facility": case.facility,
                    "admin_email": case.admin_email, "domain": domain, "shared_with": others,
                    "bits": min((k["bits"] for k in store.domain_keys(domain)
                                 if k["selector"] in selectors and k["algorithm"] == "rsa"), default=None),
                    **r.lookahead(case)})


def _managed_publish(r: _Reply, case: CaseRow, selectors: list[str]) -> Any:
    """The simplified flow: our own name servers, so we published (before the transaction)
    and the facility rests. Records what the RFC 2136 update did; a failure goes to staff."""
    domain = case.domain or ""
    done, managed = r.prepared.managed_for(domain, selectors) if r.prepared else (False, None)
    if not done:
        raise not_prepared(r.prepared, domain, "the managed zone's update")
    if managed is not None:
        r.bot.store.add_event(case.id, r.now, "managed_publish", detail={
            "zone": managed.zone, "nameservers": managed.nameservers,
            "published": managed.published, "error": managed.error})
        if managed.error:
            enqueue_mail(r.bot, MailKind.STAFF_ESCALATION, [case], {
                "reason_title": "publishing in a managed zone failed",
                "reason": f"Zone {managed.zone} is served by our name servers "
                          f"({', '.join(managed.nameservers)}), but the RFC 2136 update "
                          f"failed: {managed.error}",
                "decide_hint": "Publish the DKIM record in the zone by hand; the bot "
                               "keeps checking and continues by itself.",
                "diagnoses": []}, staff_only=True)
    return managed


_STEPS: dict[Step, Callable[[_Reply, FacilityPlan], None]] = {
    Step.NEEDS_INFO: _needs_info, Step.REJECT: _reject, Step.RESEND: _resend, Step.ASSIGN_KEY: _assign_key,
}


def _hand_over_limit(bot: Bot, parsed: ParsedMail, requester: str | None, limit: int) -> None:
    count = len(parsed.facilities)
    enqueue_mail(bot, MailKind.STAFF_ESCALATION, [], {
        "reason_title": f"a request names {count} facilities",
        "reason": f"The mail {parsed.message_id or '(no Message-ID)'} from {requester} names "
                  f"{count} facilities, over [intake] max_facilities_per_mail = {limit}. "
                  "No case and no key was made; the mail is left in the mailbox untouched.",
        "decide_hint": "Check the mail. If it is genuine, ask the sender to send it in parts "
                       f"of at most {limit} facilities (or raise the limit for the next ones).",
        "diagnoses": []}, staff_only=True)
    log.warning("request %s names %d facilities (limit %d): handed to staff",
                parsed.message_id, count, limit)


def _send_reply(r: _Reply, requester: str | None, thread_refs: list[str]) -> None:
    """The one reply mail: its subject says what the facilities must do."""
    bot, parsed, items = r.bot, r.parsed, r.items
    # Within one mail, a second facility of the same domain points at the same record.
    kinds = {i["kind"] for i in items}
    if kinds & {"record", "resend"}:
        subject_text = "DKIM・DMARC設定のご案内：DNSへの設定（レコード）の登録のお願い"
    elif kinds == {"managed"}:
        subject_text = "DKIM設定のお申し込みを承りました（DNSの設定は弊社で行います）"
    elif kinds == {"needs_info"}:
        subject_text = "DKIM、DMARC設定のお申し込み内容のご確認のお願い"
    elif kinds == {"complete"}:
        subject_text = "DKIM、DMARCの設定は既に完了しています"
    elif kinds == {"rejected"}:
        subject_text = "DKIM設定をお受けできませんでした"
    else:
        subject_text = "DKIM、DMARC設定のお申し込みについて"
    rejected = [i.get("facility") or show_domain_ja(i.get("domain")) for i in items if i["kind"] == "rejected"]
    if rejected:
        # A rejected facility must not hide behind another one's "please register" subject.
        names = "、".join(n for n in rejected if n) or "一部の施設"
        subject_text += (f"（{names}）" if kinds == {"rejected"} else f"／{names}：お受けできないドメインです")
    to = [requester] if requester else []
    if bot.cfg.service.cc_contact:
        for c in r.touched:
            if c.contact_email and c.contact_email not in to and c.state != State.NEEDS_INFO:
                to.append(c.contact_email)
    undecodable = getattr(parsed, "undecodable", 0)
    if undecodable:
        _report_undecodable(bot, parsed, r.touched, undecodable, r.now)
    touched = [bot.store.get_case(c.id) for c in r.touched]
    enqueue_mail(
        bot, MailKind.REQUEST_REPLY, touched,
        {"items": items, "subject_text": subject_text,
         "records": any(i["kind"] in ("record", "resend") for i in items)},
        to=to, in_reply_to=parsed.message_id, references=thread_refs,
    )


def _report_undecodable(bot: Bot, parsed: ParsedMail, cases: list[CaseRow], count: int, now: datetime) -> None:
    """Text that could not be decoded exactly is never passed off as read: each case of
    the mail records it, and staff get a note (a name holding such characters was not
    stored; the reply asks the facility to write it again)."""
    for c in cases:
        bot.store.add_event(c.id, now, "undecodable_text", detail={
            "replacement_characters": count, "message_id": parsed.message_id})
    refs = ", ".join(c.ref for c in cases) or "no case"
    log.warning("request %s: %d characters could not be decoded (%s)", parsed.message_id, count, refs)
    enqueue_mail(bot, MailKind.STAFF_ESCALATION, cases, {
        "reason_title": f"{count} characters of a request could not be decoded",
        "reason": f"The mail {parsed.message_id or '(no Message-ID)'} has {count} characters its charset "
                  "could not carry (shown as U+FFFD). Names holding them were not stored; the facility "
                  f"is asked to write those fields again. Cases: {refs}.",
        "decide_hint": "Read the original mail in the mailbox; correct a name by hand if the reply "
                       "does not bring it.",
        "diagnoses": []}, staff_only=True)
