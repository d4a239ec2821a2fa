"""Units of work: one pass is poll_inbox_once → recheck_due_once → remind_due_once →
flush_outbox_once. Each is a plain function over a ``Bot`` so tests call them directly.

Every decision (a case's new state, its events, the mails it causes, the handled mark
of the message that caused it) is one store transaction; mail leaves only through the
outbox, delivered by ``flush_outbox_once``.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from bot import cases as sm
from bot.cases import Event, State
from bot.config import Config
from bot.mailout import DeliveryError, MailRenderer, build_message, make_transport
from bot.store import CaseRow, Store

log = logging.getLogger("dkimbot")


class PassLocked(Exception):
    """Another pass holds the state-dir lock."""


@contextmanager
def pass_lock(cfg: Config, wait: bool = False) -> Iterator[None]:
    """One pass at a time per state dir (cron overlap, daemon + cron)."""
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    path = cfg.state_dir / "dkimbot.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise PassLocked(f"another dkimbot pass is running on {cfg.state_dir}") from None
        yield
    finally:
        os.close(fd)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Bot:
    """Everything a pass needs, injected so tests and the demo can swap clock and servers."""

    cfg: Config
    store: Store
    clock: Callable[[], datetime] = utcnow
    renderer: MailRenderer | None = None
    _keystore: Any = None

    def __post_init__(self) -> None:
        if self.renderer is None:
            self.renderer = MailRenderer(self.cfg.templates_dir)

    @classmethod
    def open(cls, cfg: Config, clock: Callable[[], datetime] = utcnow) -> Bot:
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(cfg.state_dir, 0o700)
        return cls(cfg=cfg, store=Store(cfg.state_dir / "dkimbot.sqlite3"), clock=clock)

    @property
    def keystore(self) -> Any:
        if self._keystore is None:
            from bot.keys import KeyStore

            self._keystore = KeyStore(self.cfg.state_dir / "keys", self.cfg.keys.passphrase)
        return self._keystore

    def dns_client(self) -> Any:
        from bot.dnscheck import DnsClient

        return DnsClient(self.cfg.dns)

    def close(self) -> None:
        self.store.close()


@dataclass
class PassResult:
    messages: int = 0
    checks: int = 0
    mails_sent: int = 0
    errors: list[str] = field(default_factory=list)


# -- mail composition -----------------------------------------------------------------------


def _record_box(domain: str, fqdn: str, value: str, rtype: str = "TXT") -> dict[str, str]:
    from bot.keys import render_zone_line

    label = fqdn[: -len(domain) - 1] if fqdn.endswith("." + domain) else "@"
    return {
        "fqdn": fqdn, "domain": domain, "host_label": label, "type": rtype, "value": value,
        "zone_line": render_zone_line(fqdn, value),
    }


def key_records(bot: Bot, case: CaseRow) -> list[dict[str, str]]:
    """The DKIM record box(es) of a case's domain, from the stored public keys."""
    boxes = []
    if not case.domain:
        return boxes
    keys = {k["selector"]: k for k in bot.store.domain_keys(case.domain)}
    for selector in case.selectors or ([case.selector] if case.selector else []):
        k = keys.get(selector)
        if k is None:
            continue
        value = f"v=DKIM1; k={k['algorithm']}; p={k['public_b64']}"
        boxes.append(_record_box(case.domain, f"{selector}._domainkey.{case.domain}", value))
    return boxes


def _addressees(names: list[str | None]) -> list[str]:
    out: list[str] = []
    for n in names:
        n = n or "ご担当者"
        if n not in out:
            out.append(n)
    return out


def _case_recipients(bot: Bot, case: CaseRow) -> list[str]:
    to = [case.requester] if case.requester else []
    if bot.cfg.service.cc_contact and case.contact_email and case.contact_email not in to:
        to.append(case.contact_email)
    return [a for a in to if a]


def enqueue_mail(
    bot: Bot, kind: str, cases_: list[CaseRow], context: dict[str, Any], *,
    to: list[str] | None = None, staff_only: bool = False,
    in_reply_to: str | None = None, references: list[str] | None = None,
) -> str | None:
    """Render and queue one mail (inside the caller's transaction). Returns its Message-ID."""
    cfg = bot.cfg
    now = bot.clock()
    refs = [c.ref for c in cases_]
    primary = cases_[0] if cases_ else None
    if not staff_only and primary is not None:
        # Loop and rate safety: a bounded number of facility mails per case per day.
        sent_today = bot.store.facility_mails_since(primary.id, now - timedelta(days=1))
        if sent_today >= cfg.service.max_mails_per_case_per_day:
            bot.store.add_event(primary.id, now, "mail_suppressed",
                                detail={"kind": kind, "reason": "daily mail limit reached"})
            log.warning("%s: %s mail suppressed (daily limit %d)", primary.ref, kind,
                        cfg.service.max_mails_per_case_per_day)
            return None
    ctx = {
        "service": cfg.service,
        "refs": "、".join(refs),
        "subject_refs": "".join(f"[{r}]" for r in refs),
        "addressees": _addressees([c.facility for c in cases_]),
        "case": primary.to_json() | {"ref": primary.ref} if primary else {},
        **context,
    }
    assert bot.renderer is not None
    subject, body = bot.renderer.render(kind, ctx)
    if staff_only:
        recipients, cc = list(cfg.service.staff_cc), []
    else:
        recipients = to if to is not None else (_case_recipients(bot, primary) if primary else [])
        cc = list(cfg.service.staff_cc)
    if not recipients:
        recipients, cc = list(cfg.service.staff_cc), []
    if primary is not None and in_reply_to is None:
        in_reply_to = primary.thread_last
        references = primary.thread_refs
    mail = build_message(
        cfg, kind=kind, subject=subject, body=body, to=recipients, cc=cc, now=now,
        in_reply_to=in_reply_to, references=references, case_refs=refs,
    )
    bot.store.enqueue(
        message_id=mail.message_id, kind=kind, case_ids=[c.id for c in cases_],
        sender=mail.sender, recipients=mail.recipients, raw=mail.raw, now=now,
    )
    if not staff_only:
        for c in cases_:
            thread = list(c.thread_refs)
            thread.append(mail.message_id)
            bot.store.update_case(c.id, now, thread_last=mail.message_id, thread_refs=thread[-30:])
    for c in cases_:
        bot.store.add_event(c.id, now, "mail_queued", detail={"kind": kind, "message_id": mail.message_id,
                                                              "subject": subject})
    log.info("%s: queued %s mail %s", ",".join(refs) or "-", kind, mail.message_id)
    return mail.message_id


# -- intake ----------------------------------------------------------------------------------


def poll_inbox_once(bot: Bot) -> int:
    """Read new mail and decide on each message; returns how many messages were handled."""
    from bot.intake import HeaderFilter, ImapMailbox, MaildirMailbox
    from bot.request import subject_is_request

    cfg = bot.cfg
    store = bot.store
    header_filter = HeaderFilter(
        subject_is_request, lambda ids: store.case_for_message_id(ids) is not None
    )

    def skipped(key: str, why: str) -> None:
        with store.transaction():
            store.mark_handled(key, None, bot.clock(), f"skipped: {why}")
        if why.startswith("too large"):
            log.warning("message %s skipped: %s", key, why)

    def progress(mkey: str, value: str) -> None:
        with store.transaction():
            store.set_meta(mkey, value)

    count = 0
    if cfg.intake.kind == "imap":
        mailbox: Any = ImapMailbox(cfg, store.get_meta)
        messages = mailbox.fetch_new(
            lambda key: store.is_handled(key, None), header_filter,
            cfg.intake.max_message_bytes, skipped, progress,
        )
    else:
        mailbox = MaildirMailbox(cfg.state_path(cfg.intake.maildir))
        messages = mailbox.fetch_new(
            lambda key: store.is_handled(key, None), header_filter,
            cfg.intake.max_message_bytes, skipped,
        )
    try:
        for message in messages:
            try:
                process_message(bot, message.key, message.raw)
            except Exception as exc:  # our bug or a broken template: never lose the mail
                _message_failed(bot, message.key, message.raw, exc)
            count += 1
    finally:
        mailbox.close()
    return count


MAX_MESSAGE_FAILURES = 3


def _message_failed(bot: Bot, key: str, raw: bytes, exc: Exception) -> None:
    """A message that fails is retried next pass; after 3 failures staff get it instead.

    Like Mailman's "bad" queue: a poison message must neither loop forever nor vanish.
    """
    log.exception("message %s failed: %s", key, type(exc).__name__)
    store = bot.store
    counter = f"failures:{key}"
    with store.transaction():
        failures = int(store.get_meta(counter) or 0) + 1
        store.set_meta(counter, str(failures))
        if failures < MAX_MESSAGE_FAILURES:
            return
        store.mark_handled(key, None, bot.clock(), f"failed: {type(exc).__name__}")
        headers = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0][:2000]
        enqueue_mail(bot, "staff_escalation", [], {
            "reason_title": "a message could not be processed",
            "reason": f"Message {key} failed {failures} times ({type(exc).__name__}: {exc}).\n"
                      f"It is left in the mailbox untouched. Its headers:\n\n"
                      + headers.decode("utf-8", "replace"),
            "decide_hint": "Handle this request by hand; the bot will not retry it.",
            "diagnoses": [],
        }, staff_only=True)


def process_message(bot: Bot, key: str, raw: bytes) -> str:
    """Decide on one message and record it as handled, in one transaction."""
    from bot.request import parse_message

    cfg = bot.cfg
    parsed = parse_message(raw, own_addresses=[cfg.service.support_address])
    store = bot.store
    with store.transaction():
        if store.is_handled(key, parsed.message_id):
            store.mark_handled(key, parsed.message_id, bot.clock(), "duplicate")
            return "duplicate"
        outcome = _decide_message(bot, parsed)
        store.mark_handled(key, parsed.message_id, bot.clock(), outcome)
    log.info("message %s: %s", parsed.message_id or key, outcome)
    return outcome


def _reply_target(bot: Bot, parsed: Any) -> CaseRow | None:
    for ref in parsed.case_refs:
        case = bot.store.find_case(ref)
        if case is not None:
            return case
    ids = [i for i in [parsed.in_reply_to, *reversed(parsed.references)] if i]
    return bot.store.case_for_message_id(ids) if ids else None


def _decide_message(bot: Bot, parsed: Any) -> str:
    if parsed.no_reply_reason:
        return f"ignored: {parsed.no_reply_reason}"
    target = _reply_target(bot, parsed)
    if parsed.facilities and (parsed.is_request or (target and target.state == State.NEEDS_INFO)):
        handle_request(bot, parsed, target)
        return f"request: {len(parsed.facilities)} facilities"
    if target is not None:
        handle_reply(bot, target, parsed)
        return f"reply to {target.ref}"
    if parsed.is_request:
        handle_request(bot, parsed, None)
        return "request without fields"
    return "not for us"


def handle_reply(bot: Bot, case: CaseRow, parsed: Any) -> None:
    """A facility answered: check its case at once and answer what we then see."""
    now = bot.clock()
    thread = list(case.thread_refs)
    if parsed.message_id:
        thread.append(parsed.message_id)
    fields: dict[str, Any] = dict(thread_last=parsed.message_id or case.thread_last, thread_refs=thread[-30:])
    excerpt = (parsed.body_text or "").strip()[:400]
    if case.state in (*sm.WAITING, State.ESCALATED):
        fields.update(next_check_at=now, reply_pending=True)
        bot.store.update_case(case.id, now, **fields)
        bot.store.add_event(case.id, now, "facility_reply", detail={"excerpt": excerpt})
        log.info("%s: facility replied; checking now", case.ref)
        return
    bot.store.update_case(case.id, now, **fields)
    bot.store.add_event(case.id, now, "facility_reply_forwarded", detail={"excerpt": excerpt})
    enqueue_mail(
        bot, "staff_escalation", [bot.store.get_case(case.id)],
        {
            "reason_title": "facility replied; the bot cannot act on it",
            "reason": f"A reply arrived while the case is {case.state}:\n\n{excerpt}",
            "decide_hint": "Answer the facility yourself (reply to its mail).",
            "diagnoses": [],
        },
        staff_only=True,
    )


def _existing_case(bot: Bot, facility: Any, requester: str | None, target: CaseRow | None) -> CaseRow | None:
    """The case a request continues: a repeat of an active one, or a needs_info one completed."""
    if target is not None and target.state == State.NEEDS_INFO:
        return target
    candidates = bot.store.list_cases(tuple(s.value for s in sm.ACTIVE) + (State.COMPLETED.value,))
    name = facility.facility_name
    for c in candidates:
        if facility.admin_email and c.admin_email == facility.admin_email and (not name or c.facility == name):
            return c
    for c in candidates:
        if c.state == State.NEEDS_INFO and requester and c.requester == requester and name and c.facility == name:
            return c
    return None


def _choose_key(bot: Bot, domain: str) -> list[str]:
    """Facilities of one domain share one key: reuse the domain's live selector(s)."""
    from bot.keys import render_selector

    for c in bot.store.cases_for_domain(domain):
        if c.selectors and c.state not in (State.REJECTED, State.CANCELLED):
            return list(c.selectors)
    cfg = bot.cfg
    now = bot.clock()
    selector = render_selector(cfg.keys.selector, now)
    algorithm = cfg.keys.algorithm
    selectors = [selector]
    key = bot.keystore.load_or_create(domain, selector, algorithm, cfg.keys.bits)
    bot.store.record_key(domain, selector, key.algorithm, key.bits, key.public_b64, now)
    if cfg.keys.ed25519 and algorithm != "ed25519":
        from bot.keys import ed25519_selector

        ed_sel = ed25519_selector(selector)
        ed = bot.keystore.load_or_create(domain, ed_sel, "ed25519", 256)
        bot.store.record_key(domain, ed_sel, ed.algorithm, ed.bits, ed.public_b64, now)
        selectors.append(ed_sel)
    return selectors


_PROBLEM_WHAT = {
    "facility_name": "施設名", "contact_name": "お名前", "contact_email": "メールアドレス",
    "contact_phone": "電話番号", "admin_email": "メールアドレス",
}


def handle_request(bot: Bot, parsed: Any, target: CaseRow | None) -> None:
    """One reply per request mail, listing every facility it named."""
    from bot.request import FIELD_LABELS

    cfg = bot.cfg
    store = bot.store
    now = bot.clock()
    requester = parsed.from_addr
    thread_refs = [*parsed.references, *([parsed.message_id] if parsed.message_id else [])]
    base = dict(requester=requester, thread_root=parsed.message_id,
                thread_last=parsed.message_id, thread_refs=thread_refs[-30:])
    items: list[dict[str, Any]] = []
    touched: list[CaseRow] = []
    facilities = list(parsed.facilities)
    if not facilities:
        from bot.request import Facility, FieldProblem, FIELDS

        facilities = [Facility(None, None, None, None, None,
                               tuple(FieldProblem(f, "missing", None) for f in FIELDS))]
    domains_in_mail: dict[str, list[str]] = {}
    for f in facilities:
        fields = dict(
            facility=f.facility_name, contact_name=f.contact_name, contact_email=f.contact_email,
            contact_phone=f.contact_phone, admin_email=f.admin_email,
        )
        existing = _existing_case(bot, f, requester, target)
        if f.problems:
            problems = [
                {"field": p.field, "label": FIELD_LABELS[p.field], "kind": p.kind, "value": p.value,
                 "what": _PROBLEM_WHAT.get(p.field, "値")}
                for p in f.problems
            ]
            if existing is not None and existing.state == State.NEEDS_INFO:
                case = store.update_case(existing.id, now, problems=problems, **fields, **base)
                store.add_event(case.id, now, "still_incomplete", detail={"problems": problems})
            else:
                case = store.create_case(state=State.NEEDS_INFO, now=now, problems=problems, **fields, **base)
                store.add_event(case.id, now, "request_received", None, State.NEEDS_INFO,
                                {"problems": problems})
            touched.append(case)
            items.append({"kind": "needs_info", "ref": case.ref, "facility": f.facility_name,
                          "problems": problems, "fields": {
                              "facility_name": f.facility_name, "contact_name": f.contact_name,
                              "contact_email": f.contact_email, "contact_phone": f.contact_phone,
                              "admin_email": f.admin_email}})
            continue
        domain = f.domain
        reason = sm.classify_domain(
            domain, freemail=cfg.service.freemail_domains,
            own=[*cfg.service.own_domains, cfg.bot_domain],
        )
        if reason:
            if existing is not None and existing.state == State.NEEDS_INFO:
                case = store.update_case(existing.id, now, state=State.REJECTED, state_since=now,
                                         domain=domain, problems=[], **fields, **base)
            else:
                case = store.create_case(state=State.REJECTED, now=now, domain=domain, **fields, **base)
            store.add_event(case.id, now, "rejected", existing.state if existing else None,
                            State.REJECTED, {"reason": reason, "domain": domain})
            touched.append(case)
            items.append({"kind": "rejected", "ref": case.ref, "facility": f.facility_name,
                          "admin_email": f.admin_email, "domain": domain, "reason": reason})
            continue
        if existing is not None and existing.state != State.NEEDS_INFO and existing.domain == domain:
            store.add_event(existing.id, now, "repeat_request", detail={"message_id": parsed.message_id})
            case = store.update_case(existing.id, now, **base) if existing.state != State.COMPLETED else existing
            touched.append(case)
            items.append({"kind": "resend", "ref": case.ref, "facility": case.facility,
                          "admin_email": case.admin_email, "domain": domain,
                          "records": key_records(bot, case), "shared_with": [],
                          "provider_hint": None})
            continue
        selectors = _choose_key(bot, domain)
        due = now + sm.next_check_delay(timedelta(0), cfg.schedule.check_interval_seconds)
        if existing is not None:
            case = store.update_case(
                existing.id, now, state=State.AWAITING_DKIM, state_since=now, domain=domain,
                selector=selectors[0], selectors=selectors, problems=[], next_check_at=due,
                reminders_sent=0, last_notice=None, **fields, **base,
            )
        else:
            case = store.create_case(
                state=State.AWAITING_DKIM, now=now, domain=domain, selector=selectors[0],
                selectors=selectors, next_check_at=due, **fields, **base,
            )
        store.add_event(case.id, now, "key_assigned", existing.state if existing else None,
                        State.AWAITING_DKIM, {"domain": domain, "selectors": selectors})
        others = [c.facility for c in store.cases_for_domain(domain)
                  if c.id != case.id and c.state not in (State.REJECTED, State.CANCELLED) and c.facility]
        domains_in_mail.setdefault(domain, []).append(case.facility or "")
        touched.append(case)
        items.append({"kind": "record", "ref": case.ref, "facility": case.facility,
                      "admin_email": case.admin_email, "domain": domain,
                      "records": key_records(bot, case), "shared_with": others,
                      "provider_hint": None})
    # Within one mail, a second facility of the same domain points at the same record.
    kinds = {i["kind"] for i in items}
    if kinds & {"record", "resend"}:
        subject_text = "DKIM設定のご案内：DNSへのレコード登録のお願い"
    elif kinds == {"needs_info"}:
        subject_text = "DKIM、DMARC設定のお申し込み内容のご確認のお願い"
    else:
        subject_text = "DKIM、DMARC設定のお申し込みについて"
    to = [requester] if requester else []
    if cfg.service.cc_contact:
        for c in touched:
            if c.contact_email and c.contact_email not in to and c.state != State.NEEDS_INFO:
                to.append(c.contact_email)
    touched = [store.get_case(c.id) for c in touched]
    enqueue_mail(
        bot, "request_reply", touched,
        {"items": items, "subject_text": subject_text,
         "records": any(i["kind"] in ("record", "resend") for i in items)},
        to=to, in_reply_to=parsed.message_id, references=thread_refs,
    )


# -- DNS rechecks ----------------------------------------------------------------------------


def _expected_key(bot: Bot, case: CaseRow) -> str:
    for k in bot.store.domain_keys(case.domain or ""):
        if k["selector"] == case.selector:
            return str(k["public_b64"])
    raise LookupError(f"{case.ref}: no stored key for {case.domain}/{case.selector}")


def recheck_due_once(bot: Bot, *, workers: int = 32) -> int:
    """Check every due case; each domain is checked once per pass, domains concurrently."""
    from bot.dnscheck import check_domain

    now = bot.clock()
    states = (*sm.WAITING, State.ESCALATED)
    due = [c for c in bot.store.due_cases(tuple(s.value for s in states), now)
           if c.state != State.ESCALATED or c.resume_state]
    if not due:
        return 0
    client = bot.dns_client()
    # Expected keys are read here: the store's connection belongs to this thread.
    jobs: dict[tuple[str, str], str] = {}
    for c in due:
        if c.domain and c.selector and (c.domain, c.selector) not in jobs:
            jobs[(c.domain, c.selector)] = _expected_key(bot, c)

    def run(item: tuple[tuple[str, str], str]) -> tuple[tuple[str, str], Any]:
        (domain, selector), expected = item
        return (domain, selector), check_domain(client, domain, selector, expected, bot.cfg.service)

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(jobs)))) as pool:
        reports = dict(pool.map(run, jobs.items()))
    for case in due:
        report = reports.get((case.domain or "", case.selector or ""))
        if report is not None:
            apply_check(bot, case, report, client)
    return len(due)


def install_and_prove(bot: Bot, case: CaseRow, client: Any) -> tuple[bool, str]:
    """Install the case's key(s) into the signer, then sign a probe and verify it via DNS."""
    from bot import signer
    from bot.dnscheck import make_dkim_dnsfunc

    assert case.domain
    dnsfunc = make_dkim_dnsfunc(client)
    notes = []
    for selector in case.selectors or [case.selector]:
        key = bot.keystore.get(case.domain, selector)
        if key is None:
            return False, f"no private key stored for {selector}._domainkey.{case.domain}"
        pem = bot.keystore.private_pem(case.domain, selector)
        signer.install_key(bot.cfg, key, pem)
        ok, why = signer.prove_signing(bot.cfg, key, pem, dnsfunc)
        notes.append(f"{selector}: {why}")
        if not ok:
            try:
                signer.uninstall_key(bot.cfg, case.domain, selector)
            except Exception as exc:  # the escalation says what to clean up by hand
                notes.append(f"uninstall failed: {type(exc).__name__}")
            return False, "; ".join(notes)
        bot.store.mark_key_installed(case.domain, selector, bot.clock())
    return True, "; ".join(notes)


def _report_evidence(report: Any) -> dict[str, Any]:
    out = report.to_json()
    for name in ("dkim", "dmarc", "spf", "alignment"):
        area = getattr(report, name)
        out[name]["found"] = getattr(area, "found", {})
    return out


def apply_check(bot: Bot, case: CaseRow, report: Any, client: Any) -> None:
    """Turn one DNS report into decisions for a case (chained while the case moves on)."""
    cfg = bot.cfg
    for _ in range(4):  # awaiting_dkim → awaiting_dmarc → completed at most
        now = bot.clock()
        state = State(case.state)
        effective = State(case.resume_state) if state == State.ESCALATED and case.resume_state else state
        proof: tuple[bool, str] | None = None
        if effective == State.AWAITING_DKIM and report.dkim.ok:
            try:
                proof = install_and_prove(bot, case, client)
            except Exception as exc:
                log.exception("%s: installing the key failed", case.ref)
                proof = (False, f"install failed: {type(exc).__name__}: {exc}")
        event = sm.classify_check(effective, report, proof[0] if proof else None)
        decision = sm.decide(
            state, event, resume_state=State(case.resume_state) if case.resume_state else None,
            last_notice=case.last_notice, reply_pending=case.reply_pending, report=report,
        )
        with bot.store.transaction():
            fields: dict[str, Any] = {"reply_pending": False, "last_notice": decision.notice}
            if event == Event.DNS_ERROR:
                fields["next_check_at"] = now + sm.dns_error_delay(cfg.schedule.check_interval_seconds, 1)
            else:
                since = now if decision.changes_state else case.state_since
                fields["next_check_at"] = now + sm.next_check_delay(now - since, cfg.schedule.check_interval_seconds)
            if decision.changes_state:
                fields.update(state=decision.next_state, state_since=now, reminders_sent=0,
                              resume_state=decision.resume_state)
            elif decision.resume_state != (State(case.resume_state) if case.resume_state else None):
                fields["resume_state"] = decision.resume_state
            if decision.next_state == State.COMPLETED:
                # Completed domains are watched daily (SPEC §8).
                fields["next_check_at"] = now + timedelta(days=1)
            updated = bot.store.update_case(case.id, now, **fields)
            if decision.changes_state or decision.mails or event == Event.DNS_ERROR:
                detail: dict[str, Any] = {"event": event.value, "dns": _report_evidence(report)}
                if proof:
                    detail["proof"] = {"ok": proof[0], "detail": proof[1]}
                bot.store.add_event(case.id, now, "transition" if decision.changes_state else "check",
                                    state.value, decision.next_state.value, detail)
                if decision.changes_state:
                    log.info("%s: %s -> %s (%s)", case.ref, state.value, decision.next_state.value, event.value)
            for kind in decision.mails:
                _enqueue_check_mail(bot, kind, updated, report, proof)
        case = bot.store.get_case(case.id)
        if not decision.changes_state or State(case.state) not in sm.WAITING:
            return


def _dmarc_context(bot: Bot, case: CaseRow, report: Any) -> dict[str, Any]:
    from bot.dnscheck import suggest_dmarc_record

    found = getattr(report.dmarc, "found", {}) or {}
    errors = [d for d in report.dmarc.diagnoses if getattr(d, "severity", "error") == "error"]
    status = "ok" if report.dmarc.ok else ("missing" if [d.code for d in errors] == ["dmarc_not_published"] else "invalid")
    suggestion = suggest_dmarc_record(found.get("tags") or None, bot.cfg.service.dmarc_rua or None)
    domain = case.domain or ""
    return {
        "status": status,
        "record": found.get("record"),
        "location": found.get("location") or f"_dmarc.{domain}",
        "diagnoses": errors,
        "box": _record_box(domain, f"_dmarc.{domain}", suggestion),
    }


def _final_rows(report: Any, case: CaseRow) -> list[dict[str, Any]]:
    def text(area: Any, ok_text: str) -> str:
        if area.ok:
            return ok_text
        return " ".join(d.message for d in area.diagnoses)

    dmarc_found = getattr(report.dmarc, "found", {}) or {}
    policy = dmarc_found.get("policy") or (dmarc_found.get("tags") or {}).get("p", "")
    return [
        {"name": "SPF", "ok": report.spf.ok, "text": text(report.spf, "弊社の送信サーバーが許可されています。")},
        {"name": "DKIM", "ok": report.dkim.ok, "text": text(report.dkim, f"セレクタ {case.selector} の公開鍵が正しく公開されています。")},
        {"name": "DMARC", "ok": report.dmarc.ok, "text": text(report.dmarc, f"ポリシー p={policy} のレコードが公開されています。")},
        {"name": "DMARCアライメント", "ok": report.alignment.ok,
         "text": text(report.alignment, f"DKIM署名のドメインと送信元アドレスのドメイン（{case.domain}）が一致しています。")},
    ]


def _fix_boxes(report: Any, case: CaseRow) -> list[dict[str, str]]:
    boxes = []
    domain = case.domain or ""
    for d in [*report.spf.diagnoses, *report.dmarc.diagnoses]:
        fix = (getattr(d, "detail", {}) or {}).get("fix")
        if fix:
            host = (d.detail or {}).get("fix_host") or (domain if d.code.startswith("spf") else f"_dmarc.{domain}")
            box = _record_box(domain, host, fix)
            if box not in boxes:
                boxes.append(box)
    return boxes


def _enqueue_check_mail(bot: Bot, kind: str, case: CaseRow, report: Any, proof: tuple[bool, str] | None) -> None:
    if kind == "dkim_problem":
        truncated = any(d.code == "dkim_truncated" for d in report.dkim.diagnoses)
        hint = ("お使いのDNS管理画面では、長い値が途中で切れてしまうようです。短い鍵（1024ビット）"
                "をご希望の場合は、このメールに「短い鍵希望」とご返信ください。" if truncated else "")
        ctx = {"diagnoses": report.dkim.diagnoses, "records": key_records(bot, case), "extra_hint": hint}
    elif kind == "dkim_active":
        servers = sorted((getattr(report.dkim, "found", {}) or {}).get("servers", {}) or [])
        ctx = {"nameservers": servers or ["権威DNSサーバー"], "dmarc": _dmarc_context(bot, case, report)}
    elif kind == "dmarc_problem":
        ctx = {"diagnoses": report.dmarc.diagnoses, "dmarc": _dmarc_context(bot, case, report)}
    elif kind == "final_problem":
        diags = [d for a in (report.dkim, report.dmarc, report.spf, report.alignment) for d in a.diagnoses
                 if getattr(d, "severity", "error") == "error"]
        ctx = {"diagnoses": diags, "fixes": _fix_boxes(report, case)}
    elif kind == "completion_report":
        ctx = {"results": _final_rows(report, case)}
    elif kind == "staff_escalation":
        ctx = {
            "reason_title": "DKIM record is right but the signing proof failed",
            "reason": proof[1] if proof else "unknown",
            "decide_hint": "Check the signer (KeyTable/SigningTable, key files, reload command); "
                           "then run 'dkimbot retry'.",
            "diagnoses": report.dkim.diagnoses,
        }
        enqueue_mail(bot, kind, [case], ctx, staff_only=True)
        return
    else:
        raise ValueError(f"no context for mail kind {kind}")
    enqueue_mail(bot, kind, [case], ctx)


# -- reminders -------------------------------------------------------------------------------

_WAITING_FOR = {
    State.NEEDS_INFO: "お申し込み内容のご確認",
    State.AWAITING_DKIM: "DKIMレコード（公開鍵）のDNSへの登録",
    State.AWAITING_DMARC: "DMARCレコードのDNSへの登録",
    State.AWAITING_FINAL: "最終確認で見つかった点の修正",
}


def remind_due_once(bot: Bot) -> int:
    cfg = bot.cfg
    now = bot.clock()
    count = 0
    for case in bot.store.list_cases(tuple(s.value for s in (State.NEEDS_INFO, *sm.WAITING))):
        event = sm.time_event(
            State(case.state), case.state_since, case.reminders_sent, now,
            timedelta(hours=cfg.schedule.reminder_after_hours), cfg.schedule.max_reminders,
        )
        if event is None:
            continue
        decision = sm.decide(State(case.state), event)
        with bot.store.transaction():
            if event == Event.REMINDER_DUE:
                updated = bot.store.update_case(case.id, now, reminders_sent=case.reminders_sent + 1)
                bot.store.add_event(case.id, now, "reminder", detail={"number": updated.reminders_sent})
                records = key_records(bot, case) if case.state == State.AWAITING_DKIM else []
                enqueue_mail(bot, "reminder", [updated], {
                    "reminder_number": updated.reminders_sent,
                    "waiting_for": _WAITING_FOR[State(case.state)],
                    "records": records, "diagnoses": [],
                })
            else:
                updated = bot.store.update_case(
                    case.id, now, state=State.ESCALATED, state_since=now,
                    resume_state=decision.resume_state,
                )
                bot.store.add_event(case.id, now, "transition", case.state, State.ESCALATED,
                                    {"event": event.value, "reminders_sent": case.reminders_sent})
                enqueue_mail(bot, "staff_escalation", [updated], {
                    "reason_title": f"no progress after {case.reminders_sent} reminders",
                    "reason": f"The case has been {case.state} since {case.state_since.isoformat()} "
                              f"and {case.reminders_sent} reminders brought no change.",
                    "decide_hint": "Contact the facility by phone "
                                   f"({case.contact_phone or 'no number'}) or cancel the case.",
                    "diagnoses": [],
                }, staff_only=True)
                log.info("%s: %s -> escalated (stalled)", case.ref, case.state)
        count += 1
    return count


# -- delivery --------------------------------------------------------------------------------


def flush_outbox_once(bot: Bot) -> tuple[int, list[str]]:
    """Deliver pending mail. Transient failures back off; a 5xx escalates the case."""
    from bot.signer import sign_message

    now = bot.clock()
    pending = bot.store.pending_mail(now)
    if not pending:
        return 0, []
    transport = make_transport(bot.cfg)
    sent = 0
    errors: list[str] = []
    try:
        for row in pending:
            raw = row.raw
            try:
                raw = sign_message(bot.cfg, raw)  # the bot's own mail, when its domain has a key
            except Exception as exc:
                log.warning("signing outgoing %s failed (%s); sending unsigned", row.message_id, type(exc).__name__)
            try:
                transport.send(row.sender, row.recipients, raw, row.message_id)
            except DeliveryError as exc:
                with bot.store.transaction():
                    if exc.permanent:
                        bot.store.mark_failed(row.id, now, str(exc))
                        _escalate_delivery_failure(bot, row, str(exc))
                    else:
                        delay = timedelta(seconds=min(3600, 60 * 2 ** min(row.attempts, 6)))
                        bot.store.mark_retry(row.id, now + delay, str(exc))
                log.warning("delivery of %s failed: %s", row.message_id, exc)
                if not exc.permanent:
                    errors.append(str(exc))
                    break  # the server is down: the rest waits for the next pass
                continue
            with bot.store.transaction():
                bot.store.mark_sent(row.id, bot.clock())
            sent += 1
    finally:
        transport.close()
    return sent, errors


def _escalate_delivery_failure(bot: Bot, row: Any, error: str) -> None:
    if row.kind.startswith("staff_"):
        return  # never escalate an escalation: that is how mail loops start
    for case_id in row.case_ids:
        case = bot.store.get_case(case_id)
        now = bot.clock()
        if case.state not in (State.ESCALATED, *sm.TERMINAL):
            case = bot.store.update_case(case.id, now, state=State.ESCALATED, state_since=now,
                                         resume_state=case.state)
        bot.store.add_event(case.id, now, "delivery_failed", detail={"message_id": row.message_id, "error": error})
        enqueue_mail(bot, "staff_escalation", [case], {
            "reason_title": "mail to the facility was rejected",
            "reason": f"The {row.kind} mail {row.message_id} to {', '.join(row.recipients)} was "
                      f"rejected permanently:\n{error}",
            "decide_hint": "Find a working address for the facility and run 'dkimbot resend'.",
            "diagnoses": [],
        }, staff_only=True)


# -- one pass --------------------------------------------------------------------------------


def run_pass(bot: Bot) -> PassResult:
    """Intake, due checks, reminders, delivery. Server failures are reported, not raised."""
    from bot.intake import IntakeError

    result = PassResult()
    try:
        result.messages = poll_inbox_once(bot)
    except IntakeError as exc:
        result.errors.append(str(exc))
        log.error("%s", exc)
    result.checks = recheck_due_once(bot)
    remind_due_once(bot)
    sent, errors = flush_outbox_once(bot)
    result.mails_sent = sent
    result.errors += errors
    return result


# -- staff actions ---------------------------------------------------------------------------


def staff_cancel(bot: Bot, case: CaseRow, who: str = "staff") -> CaseRow:
    now = bot.clock()
    with bot.store.transaction():
        updated = bot.store.update_case(case.id, now, state=State.CANCELLED, state_since=now, next_check_at=None)
        bot.store.add_event(case.id, now, "staff_cancel", case.state, State.CANCELLED, {"by": who})
    return updated


def staff_retry(bot: Bot, case: CaseRow, who: str = "staff") -> CaseRow:
    """Check now; an escalated case goes back to where it was, with fresh reminders."""
    now = bot.clock()
    fields: dict[str, Any] = {"next_check_at": now, "reminders_sent": 0}
    to_state = case.state
    if case.state == State.ESCALATED and case.resume_state:
        fields.update(state=case.resume_state, resume_state=None, state_since=now)
        to_state = case.resume_state
    with bot.store.transaction():
        updated = bot.store.update_case(case.id, now, **fields)
        bot.store.add_event(case.id, now, "staff_retry", case.state, to_state, {"by": who})
    return updated


def staff_resend(bot: Bot, case: CaseRow, who: str = "staff") -> str | None:
    """Send the facility its record(s) again (the same key; never a new one)."""
    now = bot.clock()
    with bot.store.transaction():
        bot.store.add_event(case.id, now, "staff_resend", detail={"by": who})
        item = {"kind": "resend", "ref": case.ref, "facility": case.facility,
                "admin_email": case.admin_email, "domain": case.domain,
                "records": key_records(bot, case), "shared_with": [], "provider_hint": None}
        return enqueue_mail(bot, "request_reply", [case], {
            "items": [item], "subject_text": "DKIM設定のご案内：DNSへのレコード登録のお願い（再送）",
            "records": True,
        })

