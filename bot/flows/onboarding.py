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
from bot.adapters.store import Store
from bot.core import cases as sm
from bot.core.authority import Standing, answers_bot_mail, may_copy_contact
from bot.core.authority import reply_standing as authority_standing
from bot.core.cases import State
from bot.core.mailkinds import MailKind
from bot.core.replies import read_reply
from bot.core.request import Facility, ParsedMail
from bot.core.requestplan import Continued, FacilityPlan, Step, facilities_of, over_limit, plan_facility
from bot.core.rows import CaseRow
from bot.flows.compose import enqueue_mail, key_records
from bot.flows.desks import MailDesk, MailLookout, Workbench
from bot.flows.matching import existing_case, key_holders, new_cases_left, party_guard, reply_target
from bot.flows.prepare import looked_for_reply, not_prepared

if TYPE_CHECKING:
    from bot.flows.prepare import Prepared

log = logging.getLogger("dkimbot")


def decide_message(bench: Workbench, parsed: ParsedMail, prepared: Prepared | None = None) -> str:
    if parsed.no_reply_reason:
        return f"ignored: {parsed.no_reply_reason}"
    if parsed.malformed:
        from bot.flows.malformed import note_malformed

        return note_malformed(bench, parsed)
    if parsed.sender_problem:  # no reply to anyone, nothing changes: staff are told
        from bot.flows.sendernote import note_unusable_sender

        return note_unusable_sender(bench, parsed)
    from bot.flows.confirm import confirm_by_token

    confirmed = confirm_by_token(bench.store, bench.clock(), parsed)
    if confirmed is not None:
        return confirmed
    target = reply_target(bench.store, parsed)
    # A reply acts on its case only from a party answering the bot's mail (bot/core/authority.py).
    standing = reply_standing(bench.store, target, parsed) if target is not None else None
    if target is not None and standing is not None and not standing.may_act:
        if not parsed.is_request or target.state == State.NEEDS_INFO:
            refuse_reply(bench, target, parsed, standing.why)
            return f"reply to {target.ref} refused: not a party"
        target = None  # a new request that merely names a case: decided as a request
    if parsed.facilities and (parsed.is_request or (target and target.state == State.NEEDS_INFO)):
        handle_request(bench, parsed, target, prepared)
        return f"request: {len(parsed.facilities)} facilities"
    if target is not None:
        handle_reply(bench, target, parsed, prepared)
        return f"reply to {target.ref}"
    if parsed.is_request:
        handle_request(bench, parsed, None)
        return "request without fields"
    return "not for us"


def reply_standing(store: Store, case: CaseRow, parsed: ParsedMail) -> Standing:
    """May this mail act on ``case``: from a party, threading onto the bot's mail on it."""
    from bot.core.authority import tokens_in

    token = store.confirmation_for_case(case.id)
    carries = bool(token and token.get("token") and token["token"] in
                   tokens_in(f"{parsed.subject}\n{parsed.body_text or ''}"))
    return authority_standing(
        case, [parsed.from_addr, parsed.reply_to],
        threads_on_bot_mail=answers_bot_mail(parsed.in_reply_to, parsed.references,
                                             store.bot_message_ids(case.id)),
        carries_token=carries)


def refuse_reply(desk: MailDesk, case: CaseRow, parsed: ParsedMail, why: str) -> None:
    """Anything about a case from someone who may not act on it: staff see it, nothing changes."""
    now = desk.clock()
    desk.store.add_event(case.id, now, "reply_refused", detail={
        "from": parsed.from_addr, "reply_to": parsed.reply_to, "message_id": parsed.message_id, "why": why})
    log.warning("%s: a mail about the case changes nothing: %s", case.ref, why)
    enqueue_mail(desk, MailKind.STAFF_ESCALATION, [case], {
        "reason_title": "a mail about the case from someone who may not act on it",
        "reason": f"A mail from {parsed.from_addr or 'unknown sender'}"
                  f"{' (Reply-To ' + parsed.reply_to + ')' if parsed.reply_to else ''} "
                  f"(Message-ID {parsed.message_id}) names this case, but {why}. "
                  f"Nothing was changed.\n\n{(parsed.body_text or '').strip()[:2000]}",
        "decide_hint": "If the sender is the facility's, answer them yourself; otherwise nothing to do.",
        "diagnoses": []}, staff_only=True)


def handle_reply(bench: Workbench, case: CaseRow, parsed: ParsedMail, prepared: Prepared | None = None) -> None:
    """A facility answered: check its case at once and answer what we then see."""
    now = bench.clock()
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
    if answer_short_key_wish(bench, case, reading.new_text or parsed.body_text or "", fields, made, failure):
        return
    from bot.flows.replyforward import forward, hold

    text = (reading.new_text or parsed.body_text or "").strip()
    if case.state in (*sm.WAITING, State.ESCALATED):
        # Always recheck at once; only a "done" reply must get an answer from the check
        # (a question gets its answer from staff, a "thanks" needs none).
        fields.update(next_check_at=now, reply_pending=reading.reason == "done")
        bench.store.update_case(case.id, now, **fields)
        bench.store.add_event(case.id, now, "facility_reply", detail={"excerpt": excerpt, "reading": reading.reason})
        log.info("%s: facility replied (%s); checking now", case.ref, reading.reason)
        if reading.can_act:
            return
        # Decided after this pass's recheck: if that moves the case on, its mail answers
        # the reply and staff are not asked (bot/flows/replyforward.py).
        hold(bench.store, bench.clock(), bench.store.get_case(case.id), sender=parsed.from_addr,
             message_id=parsed.message_id, text=text, reading=reading.reason)
        return
    bench.store.update_case(case.id, now, **fields)
    forward(bench, bench.store.get_case(case.id), sender=parsed.from_addr, message_id=parsed.message_id,
            text=text, reading=reading.reason, rechecked=False)


def _choose_key(store: Store, now: datetime, domain: str, holders: list[CaseRow],
                prepared: Prepared | None) -> list[str]:
    """The selectors of the cases the new one shares a key with (``matching.key_holders``),
    or the keys the prepare phase made for it.

    Never makes a key or asks DNS here (this runs inside the write transaction): what the
    prepare phase did not foresee is ``NotPrepared``, and ``process_message`` prepares
    again outside the transaction."""
    if holders:
        return list(holders[0].selectors)
    ready = prepared.keys_for(store, domain) if prepared is not None else None
    if ready is None:
        raise not_prepared(prepared, domain, "a key")
    for key in ready.keys:
        store.record_key(domain, key.selector, key.algorithm, key.bits, key.public_b64, now)
    return list(ready.selectors)


_PROBLEM_WHAT = {
    "facility_name": "施設名", "contact_name": "お名前", "contact_email": "メールアドレス",
    "contact_phone": "電話番号", "admin_email": "メールアドレス",
}


@dataclass
class _Reply:
    """What one request mail's reply is being built from, facility by facility."""

    desk: MailLookout
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
        records = key_records(self.desk.store, case, getattr(self.seen[domain], "provider", None))
        return {"records": records, **looked_for_reply(self.desk, case, records, self.seen)}


def handle_request(desk: MailLookout, parsed: ParsedMail, target: CaseRow | None,
                   prepared: Prepared | None = None) -> None:
    """One reply per request mail, listing every facility it named: each facility's step
    is planned (``core.requestplan``) and carried out here, inside the transaction."""
    cfg = desk.cfg
    requester = parsed.reply_address
    thread_refs = [*parsed.references, *([parsed.message_id] if parsed.message_id else [])]
    if over_limit(parsed.facilities, cfg.intake.max_facilities_per_mail):
        _hand_over_limit(desk, parsed, requester, cfg.intake.max_facilities_per_mail)
        return
    # Look before instructing (SPEC §8): each domain once per mail, done before the transaction.
    reply = _Reply(desk, parsed, prepared, desk.clock(),
                   dict(requester=requester, thread_root=parsed.message_id,
                        thread_last=parsed.message_id, thread_refs=thread_refs[-30:]),
                   dict(prepared.seen) if prepared is not None else {})
    own = [*cfg.service.own_domains, cfg.bot_domain]
    left = new_cases_left(desk, requester)  # per sender and day (issue 11): cases and keys
    limited: list[str | None] = []
    for f in facilities_of(parsed.facilities):
        found = existing_case(desk.store, f, requester, target)
        if found is None and left is not None:
            if left <= 0:
                limited.append(f.facility_name)
                reply.items.append({"kind": "limited", "ref": None, "facility": f.facility_name,
                                    "admin_email": f.admin_email, "domain": f.domain})
                continue
            left -= 1
        existing = Continued(found.id, found.state, found.domain) if found is not None else None
        plan = plan_facility(f, existing, freemail=cfg.service.freemail_domains, own=own)
        if plan.step in (Step.RESEND, Step.ASSIGN_KEY):
            guarded = _guard(reply, plan, found, requester)
            if guarded is None:
                continue
            plan = guarded
        _STEPS[plan.step](reply, plan)
    if limited:
        _note_limited(desk, parsed, requester, len(limited))
    _send_reply(reply, requester, thread_refs)


def _guard(r: _Reply, plan: FacilityPlan, found: CaseRow | None,
           requester: str | None) -> FacilityPlan | None:
    """A domain with live cases belongs to their parties (``matching.party_guard``):
    None when the facility was answered as "in progress" (nothing changed), else the plan
    to carry out (a party's request for a facility a live case covers repeats that case,
    and its own unfinished request is superseded)."""
    desk, store, f = r.desk, r.desk.store, plan.facility
    domain = plan.domain or ""
    verdict, live = party_guard(desk.store, f, domain, requester, found)
    if verdict == "in_progress" and live is not None:
        _note_in_progress(desk, live, r.parsed, requester)
        r.items.append({"kind": "in_progress", "ref": None, "facility": f.facility_name,
                        "admin_email": f.admin_email, "domain": domain})
        return None
    if verdict == "join" and live is not None:
        if found is not None:
            store.transition(found.id, State.CANCELLED, r.now, expected_state=found.state,
                             event="superseded", detail={"by": live.ref}, next_check_at=None)
        return FacilityPlan(Step.RESEND, f, domain, Continued(live.id, live.state, live.domain))
    return plan


def _note_in_progress(desk: MailDesk, live: CaseRow, parsed: Any, requester: str | None) -> None:
    now = desk.clock()
    desk.store.add_event(live.id, now, "request_by_non_party", detail={
        "from": parsed.from_addr, "reply_to": parsed.reply_to, "message_id": parsed.message_id})
    enqueue_mail(desk, MailKind.STAFF_ESCALATION, [live], {
        "reason_title": "a request for a domain in progress, from someone who is not its party",
        "reason": f"{requester or 'an unknown sender'} (Message-ID {parsed.message_id}) asked for "
                  f"{live.domain}, which case {live.ref} already covers. Nothing was changed; the "
                  "sender was told politely that the domain is already in progress.",
        "decide_hint": "If the sender is the facility's (a colleague), cancel or hand over the case "
                       "yourself; otherwise nothing to do.",
        "diagnoses": []}, staff_only=True)


def _note_limited(desk: MailDesk, parsed: Any, requester: str | None, count: int) -> None:
    cap = desk.cfg.service.max_new_cases_per_sender_per_day
    log.warning("request %s: %d facilities over the per-sender daily limit", parsed.message_id, count)
    enqueue_mail(desk, MailKind.STAFF_ESCALATION, [], {
        "reason_title": "a sender is over the daily limit of new cases",
        "reason": f"{requester} sent {parsed.message_id}; {count} of its facilities were not taken "
                  f"(over [service] max_new_cases_per_sender_per_day = {cap}). No case and no key "
                  "was made for them.",
        "decide_hint": "If the sender is genuine (a group's IT person), ask them to send the rest "
                       "tomorrow or raise the limit.",
        "diagnoses": []}, staff_only=True)


def _fields(f: Facility) -> dict[str, Any]:
    return dict(facility=f.facility_name, contact_name=f.contact_name, contact_email=f.contact_email,
                contact_phone=f.contact_phone, admin_email=f.admin_email)


def _needs_info(r: _Reply, plan: FacilityPlan) -> None:
    from bot.core.request import FIELD_LABELS

    f, store, now = plan.facility, r.desk.store, r.now
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


def _reject(r: _Reply, plan: FacilityPlan, detail: dict[str, Any] | None = None) -> None:
    f, store, now, domain = plan.facility, r.desk.store, r.now, plan.domain
    rejected = {"reason": plan.reason, "domain": domain, **(detail or {})}
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
    store, now = r.desk.store, r.now
    assert plan.existing is not None
    existing = store.get_case(plan.existing.id)
    store.add_event(existing.id, now, "repeat_request", detail={"message_id": r.parsed.message_id})
    # The thread moves on; the requester stays who it was (a party asked again, issue 11).
    thread = {k: v for k, v in r.base.items() if k != "requester"}
    case = store.update_case(existing.id, now, **thread) if existing.state != State.COMPLETED else existing
    r.touched.append(case)
    if case.state == State.COMPLETED:
        # Setup is done: say so, with its records for reference; nothing to add.
        r.items.append({"kind": "complete", "ref": case.ref, "facility": case.facility,
                        "admin_email": case.admin_email, "domain": plan.domain,
                        "records": key_records(r.desk.store, case), "shared_with": [], "asks": [],
                        "existing": [], "provider_hint": None})
        return
    # Waiting for the admin's confirmation: say so again (no second token mail, no records).
    kind = "confirming" if existing.state == State.AWAITING_CONFIRMATION else "resend"
    r.items.append({"kind": kind, "ref": case.ref, "facility": case.facility,
                    "admin_email": case.admin_email, "domain": plan.domain,
                    "shared_with": [], **r.lookahead(case)})


def _assign_key(r: _Reply, plan: FacilityPlan) -> None:
    desk, store, now, domain = r.desk, r.desk.store, r.now, plan.domain or ""
    skip = plan.existing.id if plan.existing is not None else None
    # The cases whose key this one shares (proven ones, or the requester's own): a
    # stranger's unproven case of the domain is neither shared nor waited for.
    holders = key_holders(desk.store, domain, r.base.get("requester"), skip)
    others_before = [c for c in holders if c.facility]
    zone = None
    if desk.cfg.dns.managed_nameservers and not others_before:
        # The simplified flow: our own name servers. Nothing is published until the
        # domain's admin address proved control (bot/flows/confirm.py, issue 11).
        if r.prepared is None or domain not in r.prepared.zones:
            raise not_prepared(r.prepared, domain, "the managed zone's lookup")
        zone = r.prepared.zones[domain]
        refusal = zone.refusal(desk.cfg.dns.managed_nameservers) if zone is not None else None
        if refusal:
            # The operator's own zones never get records from a request.
            _reject(r, FacilityPlan(Step.REJECT, plan.facility, domain, plan.existing, "own"), {"why": refusal})
            return
    selectors = _choose_key(desk.store, desk.clock(), domain, holders, r.prepared)
    # Nothing to check before the admin address confirms (awaiting_confirmation).
    due = sm.next_check_at(now, now, desk.cfg.schedule) if zone is None else None
    start = State.AWAITING_CONFIRMATION if zone is not None else State.AWAITING_DKIM
    assigned = {"domain": domain, "selectors": selectors}
    if plan.existing is not None:
        case = store.transition(
            plan.existing.id, start, now, expected_state=plan.existing.state,
            event="key_assigned", detail=assigned, domain=domain,
            selector=selectors[0], selectors=selectors, problems=[], next_check_at=due,
            reminders_sent=0, last_notice=None, **_fields(plan.facility), **r.base,
        )
    else:
        case = store.create_case(
            state=start, now=now, domain=domain, selector=selectors[0],
            selectors=selectors, next_check_at=due, **_fields(plan.facility), **r.base,
        )
        store.add_event(case.id, now, "key_assigned", None, start, assigned)
    others = [c.facility for c in others_before]
    kind = "record"
    if zone is not None:
        from bot.flows.confirm import open_confirmation

        case, how = open_confirmation(desk, case, zone)
        kind = "managed" if how == "registry" else "confirming"
    r.touched.append(case)
    r.items.append({"kind": kind, "ref": case.ref,
                    "facility": case.facility,
                    "admin_email": case.admin_email, "domain": domain, "shared_with": others,
                    "bits": min((k["bits"] for k in store.domain_keys(domain)
                                 if k["selector"] in selectors and k["algorithm"] == "rsa"), default=None),
                    **r.lookahead(case)})


_STEPS: dict[Step, Callable[[_Reply, FacilityPlan], None]] = {
    Step.NEEDS_INFO: _needs_info, Step.REJECT: _reject, Step.RESEND: _resend, Step.ASSIGN_KEY: _assign_key,
}


def _hand_over_limit(desk: MailDesk, parsed: ParsedMail, requester: str | None, limit: int) -> None:
    count = len(parsed.facilities)
    enqueue_mail(desk, MailKind.STAFF_ESCALATION, [], {
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
    desk, parsed, items = r.desk, r.parsed, r.items
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
    elif kinds <= {"confirming", "managed"}:
        subject_text = "DKIM設定のお申し込みを承りました（管理用メールアドレスへの確認をお送りしました）"
    elif kinds == {"in_progress"}:
        subject_text = "DKIM設定のお申し込みについて（既にお手続き中のドメインです）"
    else:
        subject_text = "DKIM、DMARC設定のお申し込みについて"
    rejected = [i.get("facility") or show_domain_ja(i.get("domain")) for i in items if i["kind"] == "rejected"]
    if rejected:
        # A rejected facility must not hide behind another one's "please register" subject.
        names = "、".join(n for n in rejected if n) or "一部の施設"
        subject_text += (f"（{names}）" if kinds == {"rejected"} else f"／{names}：お受けできないドメインです")
    to = [requester] if requester else []
    if desk.cfg.service.cc_contact:
        for c in r.touched:
            # A contact on another domain is recorded, never mailed (issue 11: no third parties).
            if c.contact_email and c.contact_email not in to and may_copy_contact(
                    c, requester, shared_domains=desk.cfg.service.freemail_domains):
                to.append(c.contact_email)
    undecodable = getattr(parsed, "undecodable", 0)
    if undecodable:
        _report_undecodable(desk, parsed, r.touched, undecodable, r.now)
    touched = [desk.store.get_case(c.id) for c in r.touched]
    enqueue_mail(
        desk, MailKind.REQUEST_REPLY, touched,
        {"items": items, "subject_text": subject_text,
         "records": any(i["kind"] in ("record", "resend") for i in items)},
        to=to, in_reply_to=parsed.message_id, references=thread_refs,
    )


def _report_undecodable(desk: MailDesk, parsed: ParsedMail, cases: list[CaseRow], count: int, now: datetime) -> None:
    """Text that could not be decoded exactly is never passed off as read: each case of
    the mail records it, and staff get a note (a name holding such characters was not
    stored; the reply asks the facility to write it again)."""
    for c in cases:
        desk.store.add_event(c.id, now, "undecodable_text", detail={
            "replacement_characters": count, "message_id": parsed.message_id})
    refs = ", ".join(c.ref for c in cases) or "no case"
    log.warning("request %s: %d characters could not be decoded (%s)", parsed.message_id, count, refs)
    enqueue_mail(desk, MailKind.STAFF_ESCALATION, cases, {
        "reason_title": f"{count} characters of a request could not be decoded",
        "reason": f"The mail {parsed.message_id or '(no Message-ID)'} has {count} characters its charset "
                  "could not carry (shown as U+FFFD). Names holding them were not stored; the facility "
                  f"is asked to write those fields again. Cases: {refs}.",
        "decide_hint": "Read the original mail in the mailbox; correct a name by hand if the reply "
                       "does not bring it.",
        "diagnoses": []}, staff_only=True)
