"""Units of work: one pass is poll_inbox_once → recheck_due_once → remind_due_once →
flush_outbox_once. Each is a plain function over a ``Bot`` so tests call them directly.

Every decision (a case's new state, its events, the mails it causes, the handled mark
of the message that caused it) is one store transaction; mail leaves only through the
outbox, delivered by ``flush_outbox_once``.

A pass imports a flow only when the store or the config says that flow has work
(``_STEPS``): a cron ``run --once`` with nothing to do loads the store, the intake and
a few light flows, not the mail parser, the templates' mail builder, the checks or the
DMARC report reader (benchmarks/bench_startup.py, tests/test_idle_imports.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from bot.core.cases import WAITING, WATCHED, State, time_event
from bot.core.mailkinds import MailKind
from bot.faults import maybe_crash
from bot.flows.runtime import Bot, PassLocked, PassResult, pass_lock, utcnow

if TYPE_CHECKING:
    from bot.config import Config
    from bot.core.rows import CaseRow

__all__ = [
    "Bot", "PassLocked", "PassResult", "pass_lock", "utcnow", "run_pass", "run_locked_pass",
    "poll_inbox_once",
    "process_message", "recheck_due_once", "remind_due_once", "flush_outbox_once",
    "staff_cancel", "staff_retry", "staff_resend",
]

log = logging.getLogger("dkimbot")


# -- intake ----------------------------------------------------------------------------------


def poll_inbox_once(bot: Bot) -> int:
    """Read new mail and decide on each message; returns how many messages were handled."""
    from bot.adapters.intake import HeaderFilter, ImapMailbox, MaildirMailbox

    cfg = bot.cfg
    store = bot.store
    header_filter = HeaderFilter(
        _subject_is_request, lambda ids: store.case_for_message_id(ids) is not None
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


def _subject_is_request(subject: str) -> bool:
    # The request parser (the email package, the mail text decoder) is imported at the
    # first subject read: an empty mailbox asks nothing.
    from bot.core.request import subject_is_request

    return subject_is_request(subject)


MAX_MESSAGE_FAILURES = 3


def _message_failed(bot: Bot, key: str, raw: bytes, exc: Exception) -> None:
    """A message that fails is retried next pass; after 3 failures staff get it instead.

    Like Mailman's "bad" queue: a poison message must neither loop forever nor vanish.
    """
    from bot.flows.compose import enqueue_mail

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
    from bot.flows.onboarding import decide_message
    from bot.flows.prepare import Prepared, prepare_message

    cfg = bot.cfg
    # What the mail's content controls (parsing, deciding) runs under the message's time
    # budget (issue 11); the prepare phase's DNS and key work is bounded by its own timeouts.
    budget = cfg.intake.message_time_budget_seconds
    with time_budget(budget, f"reading message {key}"):
        parsed = parse_message(raw, own_addresses=[cfg.service.support_address],
                               staff_addresses=[*cfg.service.staff_cc, cfg.service.notify_address],
                               own_domains=[*cfg.service.own_domains, cfg.bot_domain],
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
    for step in _STEPS:
        if step.due(bot, bot.clock()):
            _run_step(bot, step, result)
    sent, errors = _flush_if_due(bot)
    result.mails_sent = sent
    result.errors += errors
    try:
        from bot.flows.digest import digest_once

        # After delivery, so the digest tells this pass's delivery errors too; once a day.
        if digest_once(bot) and not errors:
            result.mails_sent += _flush_if_due(bot)[0]
    except Exception as exc:  # a broken digest template must not stop the bot
        log.exception("daily digest failed")
        result.errors.append(f"daily digest failed: {type(exc).__name__}: {exc}")
    if not result.errors and bot.cfg.service.heartbeat_url:
        from bot.adapters.heartbeat import ping

        ping(bot.cfg.service.heartbeat_url)  # the dead-man's switch: only after a good pass
    return result


def run_locked_pass(cfg: Config, *, wait: bool = False) -> PassResult:
    """One pass under the state-dir lock, the ``Bot`` opened and closed around it: cron's
    ``run --once`` and each of the daemon's passes. Raises ``PassLocked`` when another
    pass holds the lock and ``wait`` is False."""
    with pass_lock(cfg, wait=wait):
        bot = Bot.open(cfg)
        try:
            return run_pass(bot)
        finally:
            bot.close()


@dataclass(frozen=True)
class _Step:
    """One unit of a pass between intake and delivery.

    ``due`` asks the store or the config, without importing the flow, whether the flow
    could find anything to do: it is the flow's own first question (or a wider one), so
    False means the flow would have returned at once. ``run`` imports the flow and runs
    it, adding to the pass's result. ``guarded``: an exception is logged and reported as
    ``"<name> failed: <type>"`` and the pass goes on (mail still goes out); unguarded
    steps raise, as they always did.
    """

    name: str
    due: Callable[[Bot, datetime], bool]
    run: Callable[[Bot, PassResult], None]
    guarded: bool = True


def _run_step(bot: Bot, step: _Step, result: PassResult) -> None:
    if not step.guarded:
        step.run(bot, result)
        return
    try:
        step.run(bot, result)
    except Exception as exc:  # noqa: BLE001 -- logged with its traceback; the pass goes on to delivery
        log.exception("%s failed", step.name)
        result.errors.append(f"{step.name} failed: {type(exc).__name__}")


def _flush_if_due(bot: Bot) -> tuple[int, list[str]]:
    """Deliver the outbox (``flush_outbox_once``) when it holds mail due now or rows a
    killed pass left in ``sending``; an empty outbox imports no transport."""
    if not bot.store.in_doubt_mail() and not bot.store.pending_mail(bot.clock()):
        return 0, []
    return flush_outbox_once(bot)


# -- the steps: each imports its flow only when it runs --------------------------------------


def _confirmations(bot: Bot, result: PassResult) -> None:
    # Proof of control (bot/flows/confirm.py): publish what was confirmed, before the
    # checks look at it; held confirmation mails, the reminder, expiry. Both walk only
    # these two kinds of rows.
    if bot.store.confirmations_with_status("confirmed") or bot.store.confirmations_with_status("pending"):
        from bot.flows.confirm import confirm_due_once, publish_confirmed_once

        publish_confirmed_once(bot)
        confirm_due_once(bot)
    # A light module (its own question, held notes, is asked of staffgate; it imports
    # compose only to send).
    from bot.flows.staffnotes import release_held_once

    release_held_once(bot)  # staff notes merged after their hour (bot/flows/staffgate.py)


def _rechecks(bot: Bot, result: PassResult) -> None:
    result.checks = recheck_due_once(bot)


def _forward_held(bot: Bot, result: PassResult) -> None:
    from bot.flows.replyforward import forward_held_once

    # After the rechecks: a held reply whose case just moved on needs no human.
    forward_held_once(bot)


def _resolver(bot: Bot, result: PassResult) -> None:
    if result.checks:  # cases were checked: was a failure ours (our resolver) or theirs?
        from bot.adapters.health import resolver_down

        dns_down = resolver_down(bot.cfg.dns)  # our resolver, not a facility's name server
        if dns_down:
            result.errors.append(dns_down)


def _monitor(bot: Bot, result: PassResult) -> None:
    from bot.flows.monitor import monitor_due_once

    result.checks += monitor_due_once(bot)


def _rotations(bot: Bot, result: PassResult) -> None:
    from bot.flows.rotation import rotation_once

    result.checks += rotation_once(bot)


def _proof(bot: Bot, result: PassResult) -> None:
    from bot.flows.proof import proof_once

    result.checks += proof_once(bot)


def _reports(bot: Bot, result: PassResult) -> None:
    from bot.flows.dmarcnotify import reports_once

    result.errors += reports_once(bot)  # [reports]: DMARC aggregate reports (off by default)


def _reminders(bot: Bot, result: PassResult) -> None:
    remind_due_once(bot)


def _always(bot: Bot, now: datetime) -> bool:
    return True


def _reminder_due(bot: Bot, now: datetime) -> bool:
    """remind_due_once's own test, case by case (``cases.time_event``, pure): a case that
    waits but is not yet owed a reminder or an escalation needs no import of the flow."""
    after = timedelta(hours=bot.cfg.schedule.reminder_after_hours)
    return any(time_event(State(c.state), c.state_since, c.reminders_sent, now, after,
                          bot.cfg.schedule.max_reminders) is not None
               for c in bot.store.list_cases(_REMINDED))


_RECHECKED = tuple(s.value for s in (*WAITING, State.ESCALATED))  # recheck_due_once's states
_REMINDED = tuple(s.value for s in (State.NEEDS_INFO, *WAITING))  # remind_due_once's
_WATCHED = tuple(s.value for s in WATCHED)  # monitor_due_once's

# In the pass's order. The names are the flows' (they appear in errors and logs).
_STEPS: tuple[_Step, ...] = (
    _Step("confirmations", _always, _confirmations),  # asks its two questions itself
    _Step("recheck_due_once", lambda bot, now: bool(bot.store.due_cases(_RECHECKED, now)), _rechecks),
    _Step("forward_held_once", _always, _forward_held),  # a light module: reads one meta row
    _Step("resolver_down", _always, _resolver, guarded=False),
    _Step("monitor_due_once", lambda bot, now: bool(bot.store.due_cases(_WATCHED, now)), _monitor),
    _Step("rotation_once", lambda bot, now: bool(bot.store.due_rotations(now)), _rotations),
    _Step("proof_once", lambda bot, now: bot.cfg.proof.enabled, _proof),
    _Step("reports_once", lambda bot, now: bot.cfg.reports.enabled, _reports),
    _Step("remind_due_once", _reminder_due, _reminders, guarded=False),
)


# -- the flows' units, importable from here as before (each imports its flow when called) ---


def recheck_due_once(bot: Bot, *, workers: int | None = None) -> int:
    from bot.flows.rechecks import recheck_due_once as recheck

    return recheck(bot) if workers is None else recheck(bot, workers=workers)


def remind_due_once(bot: Bot) -> int:
    from bot.flows.rechecks import remind_due_once as remind

    return remind(bot)


def flush_outbox_once(bot: Bot) -> tuple[int, list[str]]:
    from bot.flows.delivery import flush_outbox_once as flush

    return flush(bot)


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
    from bot.flows.compose import enqueue_mail, key_records

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
