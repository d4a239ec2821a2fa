"""Units of work: one pass is poll_inbox_once → recheck_due_once → remind_due_once →
flush_outbox_once. Each is a plain function over a ``Bot`` so tests call them directly.

Every decision (a case's new state, its events, the mails it causes, the handled mark
of the message that caused it) is one store transaction; mail leaves only through the
outbox, delivered by ``flush_outbox_once``.
"""

from __future__ import annotations

import logging
from typing import Any

from bot.core.cases import State
from bot.core.mailkinds import MailKind
from bot.core.rows import CaseRow
from bot.faults import maybe_crash
from bot.flows.compose import enqueue_mail, key_records
from bot.flows.delivery import flush_outbox_once
from bot.flows.onboarding import decide_message
from bot.flows.rechecks import recheck_due_once, remind_due_once
from bot.flows.runtime import Bot, PassLocked, PassResult, pass_lock, utcnow

__all__ = [
    "Bot", "PassLocked", "PassResult", "pass_lock", "utcnow", "run_pass", "poll_inbox_once",
    "process_message", "recheck_due_once", "remind_due_once", "flush_outbox_once",
    "staff_cancel", "staff_retry", "staff_resend",
]

log = logging.getLogger("dkimbot")


# -- intake ----------------------------------------------------------------------------------


def poll_inbox_once(bot: Bot) -> int:
    """Read new mail and decide on each message; returns how many messages were handled."""
    from bot.adapters.intake import HeaderFilter, ImapMailbox, MaildirMailbox
    from bot.core.request import subject_is_request

    cfg = bot.cfg
    store = bot.store
    header_filter = HeaderFilter(
        subject_is_request, lambda ids: store.case_for_message_id(ids) is not None
    )

    def skipped(key: str, why: str) -> None:
        # Only mail the header filter ruled out comes here; an oversized request-like
        # mail is yielded (oversized_header) and noted to staff by bot/flows/oversized.py.
        with store.transaction():
            store.mark_handled(key, None, bot.clock(), f"skipped: {why}")

    # A message that failed (and will be retried) holds the IMAP progress where it is,
    # so the next pass sees it again; handled messages after it are skipped by key.
    held: list[str] = []

    def progress(mkey: str, value: str) -> None:
        if held:
            return
        with store.transaction():
            store.set_meta(mkey, value)
        maybe_crash("imap.progress")

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
                if message.oversized_header is not None:
                    from bot.flows.oversized import note_oversized

                    note_oversized(bot, message.key, message.size, message.oversized_header)
                else:
                    process_message(bot, message.key, message.raw)
            except Exception as exc:  # noqa: BLE001 -- our bug or a broken template: logged, never lose the mail
                _message_failed(bot, message.key, message.raw, exc)
                if not store.is_handled(message.key, None):
                    held.append(message.key)
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
        enqueue_mail(bot, MailKind.STAFF_ESCALATION, [], {
            "reason_title": "a message could not be processed",
            "reason": f"Message {key} failed {failures} times ({type(exc).__name__}: {exc}).\n"
                      f"It is left in the mailbox untouched. Its headers:\n\n"
                      + headers.decode("utf-8", "replace"),
            "decide_hint": "Handle this request by hand; the bot will not retry it.",
            "diagnoses": [],
        }, staff_only=True)


# A decision that finds the prepared work stale rolls back and prepares again; a third
# miss (or a prepare step that keeps failing) fails the message, retried next pass.
PREPARE_ATTEMPTS = 3


def process_message(bot: Bot, key: str, raw: bytes) -> str:
    """Decide on one message and record it as handled, in one transaction.

    The slow part (DNS lookups, key generation, a managed zone's update) is prepared
    first, outside the transaction (bot/flows/prepare.py), so SQLite's write lock is held only
    for the store writes and a concurrent ``dkimbot status`` never waits for DNS.
    """
    from bot.core.request import parse_message
    from bot.core.requestplan import NotPrepared
    from bot.flows.budget import time_budget
    from bot.flows.prepare import Prepared, prepare_message

    cfg = bot.cfg
    # What the mail's content controls (parsing, deciding) runs under the message's time
    # budget (issue 11); the prepare phase's DNS and key work is bounded by its own timeouts.
    budget = cfg.intake.message_time_budget_seconds
    with time_budget(budget, f"reading message {key}"):
        parsed = parse_message(raw, own_addresses=[cfg.service.support_address],
                               max_text_chars=cfg.intake.max_text_chars)
    # Counts and codes only: addresses and names stay out of the logs.
    log.debug("message %s (%s): request=%s, %d facilities, case refs %s, no-reply: %s, %d bytes",
              key, parsed.message_id, parsed.is_request, len(parsed.facilities),
              ",".join(parsed.case_refs) or "-", parsed.no_reply_reason or "-", len(raw))
    store = bot.store
    # A copy of a handled mail needs no preparing; the check inside the transaction
    # still decides (another process may handle it between the two).
    handled = store.is_handled(key, parsed.message_id, parsed.fingerprint)
    for attempt in range(1, PREPARE_ATTEMPTS + 1):
        prepared = Prepared() if handled else prepare_message(bot, parsed)
        try:
            with store.transaction():
                if store.is_handled(key, parsed.message_id, parsed.fingerprint):
                    store.mark_handled(key, parsed.message_id, bot.clock(), "duplicate", parsed.fingerprint)
                    log.info("message %s (%s): a copy of a mail already handled", key, parsed.message_id)
                    return "duplicate"
                with time_budget(budget, f"deciding on message {key}"):
                    outcome = decide_message(bot, parsed, prepared)
                store.mark_handled(key, parsed.message_id, bot.clock(), outcome, parsed.fingerprint)
                maybe_crash("message.decided")
            break
        except NotPrepared as exc:  # rolled back: the store moved on since the prepare phase
            if attempt == PREPARE_ATTEMPTS:
                raise (exc.failure or exc) from None
            log.info("message %s: %s; preparing again (%d)", key, exc, attempt)
    maybe_crash("message.committed")
    log.info("message %s: %s", parsed.message_id or key, outcome)
    return outcome


# -- one pass --------------------------------------------------------------------------------


def run_pass(bot: Bot) -> PassResult:
    """Intake, due checks, reminders, delivery. Server failures are reported, not raised."""
    from bot.adapters.intake import IntakeError

    result = PassResult()
    try:
        result.messages = poll_inbox_once(bot)
    except IntakeError as exc:
        result.errors.append(str(exc))  # the caller reports it: one line, no traceback
    try:
        from bot.flows.confirm import confirm_due_once, publish_confirmed_once

        # Proof of control (bot/flows/confirm.py): publish what was confirmed, before the
        # checks look at it; held confirmation mails, the reminder, expiry.
        publish_confirmed_once(bot)
        confirm_due_once(bot)
        from bot.flows.staffnotes import release_held_once

        release_held_once(bot)  # staff notes merged after their hour (bot/flows/staffgate.py)
    except Exception as exc:  # a confirmation's trouble must not stop the checks and delivery
        log.exception("confirmations failed")
        result.errors.append(f"confirmations failed: {type(exc).__name__}")
    try:
        result.checks = recheck_due_once(bot)
    except Exception as exc:  # each case is guarded inside; this is the last line: mail still goes out
        log.exception("recheck_due_once failed")
        result.errors.append(f"recheck_due_once failed: {type(exc).__name__}")
    try:
        from bot.flows.replyforward import forward_held_once

        # After the rechecks: a held reply whose case just moved on needs no human.
        forward_held_once(bot)
    except Exception as exc:  # the replies stay held for the next pass; mail still goes out
        log.exception("forward_held_once failed")
        result.errors.append(f"forward_held_once failed: {type(exc).__name__}")
    if result.checks:
        from bot.adapters.health import resolver_down

        dns_down = resolver_down(bot.cfg.dns)  # our resolver, not a facility's name server
        if dns_down:
            result.errors.append(dns_down)
    result.checks += _watch_and_rotate(bot, result)
    try:
        from bot.flows.dmarcnotify import reports_once

        result.errors += reports_once(bot)  # [reports]: DMARC aggregate reports (off by default)
    except Exception as exc:  # a bug there must not stop delivery
        log.exception("reports_once failed")
        result.errors.append(f"reports_once failed: {type(exc).__name__}")
    remind_due_once(bot)
    sent, errors = flush_outbox_once(bot)
    result.mails_sent = sent
    result.errors += errors
    try:
        from bot.flows.digest import digest_once

        # After delivery, so the digest tells this pass's delivery errors too; once a day.
        if digest_once(bot) and not errors:
            result.mails_sent += flush_outbox_once(bot)[0]
    except Exception as exc:  # a broken digest template must not stop the bot
        log.exception("daily digest failed")
        result.errors.append(f"daily digest failed: {type(exc).__name__}: {exc}")
    if not result.errors and bot.cfg.service.heartbeat_url:
        from bot.adapters.heartbeat import ping

        ping(bot.cfg.service.heartbeat_url)  # the dead-man's switch: only after a good pass
    return result


def _watch_and_rotate(bot: Bot, result: PassResult) -> int:
    """After-completion monitoring, key rotations and the end-to-end proof (off unless
    [proof] enabled); a bug there must not stop delivery."""
    from bot.flows.monitor import monitor_due_once
    from bot.flows.proof import proof_once
    from bot.flows.rotation import rotation_once

    checks = 0
    for job in (monitor_due_once, rotation_once, proof_once):
        try:
            checks += job(bot)
        except Exception as exc:
            log.exception("%s failed", job.__name__)
            result.errors.append(f"{job.__name__} failed: {type(exc).__name__}")
    return checks


# -- staff actions ---------------------------------------------------------------------------


def staff_cancel(bot: Bot, case: CaseRow, who: str = "staff") -> CaseRow:
    """Cancel; its key leaves the signer unless another live case of the domain uses it
    (a cancelled case is not watched). See bot/flows/cancel.py; raises CancelError."""
    from bot.flows.cancel import cancel_case

    return cancel_case(bot, case, who).case


def staff_retry(bot: Bot, case: CaseRow, who: str = "staff") -> CaseRow:
    """Check now; an escalated case goes back to where it was, with fresh reminders."""
    now = bot.clock()
    with bot.store.transaction():
        if case.state == State.ESCALATED and case.resume_state:
            return bot.store.transition(case.id, case.resume_state, now, expected_state=case.state,
                                        event="staff_retry", detail={"by": who}, next_check_at=now,
                                        reminders_sent=0, resume_state=None)
        updated = bot.store.update_case(case.id, now, next_check_at=now, reminders_sent=0)
        bot.store.add_event(case.id, now, "staff_retry", case.state, case.state, {"by": who})
    return updated


def staff_resend(bot: Bot, case: CaseRow, who: str = "staff") -> str | None:
    """Send the facility its record(s) again (the same key; never a new one)."""
    now = bot.clock()
    with bot.store.transaction():
        bot.store.add_event(case.id, now, "staff_resend", detail={"by": who})
        item = {"kind": "resend", "ref": case.ref, "facility": case.facility,
                "admin_email": case.admin_email, "domain": case.domain,
                "records": key_records(bot.store, case), "shared_with": [], "provider_hint": None}
        return enqueue_mail(bot, MailKind.REQUEST_REPLY, [case], {
            "items": [item], "subject_text": "DKIM設定のご案内：DNSへの設定（レコード）の登録のお願い（再送）",
            "records": True,
        })
