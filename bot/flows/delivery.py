"""The one window SMTP cannot close, handled honestly: mail in doubt after a crash.

Before a mail is handed to SMTP its outbox row is marked ``sending`` and committed;
after the server's 250 it is marked ``sent``. A process killed between the 250 and that
commit leaves a row in ``sending`` that may or may not have been delivered. Nothing on
our side can tell which: the server's acceptance and our commit are two machines' acts,
and SMTP has no "did you get <Message-ID>?" command (RFC 1047 describes exactly this
duplicate window). A careful MTA (Postfix, Exim) resolves it the same way we do: never
lose the mail, deliver it again. The copy carries the same Message-ID, so mail clients
that de-duplicate by it (Gmail does) show it once; the event log and the daily digest
name every such mail so staff know.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from bot.adapters.mailout import DeliveryError, DirectoryTransport, SmtpTransport, make_transport, scrub_addresses
from bot.adapters.store import Store
from bot.config import Config
from bot.core.rows import OutboxRow
from bot.faults import maybe_crash
from bot.flows.desks import MailDesk
from bot.flows.escalation import escalate_delivery_failure

log = logging.getLogger("dkimbot")


def reconcile_in_doubt(store: Store, clock: Callable[[], datetime]) -> int:
    """Put rows a crash left in ``sending`` back in the queue, recording the doubt."""
    rows = store.in_doubt_mail()
    if not rows:
        return 0
    now = clock()
    with store.transaction():
        for outbox_id, message_id, kind, case_ids in rows:
            store.mark_unsent(outbox_id, "in doubt: a pass died while sending it; sent again")
            for case_id in case_ids:
                store.add_event(case_id, now, "delivery_in_doubt",
                                detail={"message_id": message_id, "kind": kind})
            refs = ",".join(store.get_case(c).ref for c in case_ids) or "-"
            log.warning("%s: %s mail %s may have been delivered before a crash; sending it again "
                        "(same Message-ID)", refs, kind, message_id)
    return len(rows)


def flush_outbox_once(desk: MailDesk) -> tuple[int, list[str]]:
    """Deliver pending mail. Transient failures back off; a 5xx escalates the case."""
    reconcile_in_doubt(desk.store, desk.clock)  # rows a killed pass left between 'sending' and 'sent'
    now = desk.clock()
    pending = desk.store.pending_mail(now)
    if not pending:
        return 0, []
    from bot.flows.replycap import ReplyCap

    transport = make_transport(desk.cfg)
    cap = ReplyCap(desk)  # request replies per hour, all senders together
    held = cap.held_ids(pending)
    if cap.report():  # staff told (once a day): the note goes out in this run
        pending = desk.store.pending_mail(desk.clock())
    sent = 0
    errors: list[str] = []
    try:
        for row in pending:
            if row.id in held:
                continue  # stays pending: leaves when a later hour allows
            done, stop = _deliver_one(desk, transport, row, now)
            sent += done
            if stop is not None:
                errors.append(stop)
                break  # the server is down: the rest waits for the next pass
    finally:
        transport.close()
    return sent, errors


def _signed(cfg: Config, row: OutboxRow) -> bytes:
    """The row's message signed by the bot's own key when its domain has one, else as it is."""
    # Only now: the signer pulls in dkimpy and all of dnspython (~0.1-0.5 s of imports),
    # which an idle cron pass must not pay (benchmarks/bench_startup.py).
    from bot.adapters.signer import sign_message

    try:
        return sign_message(cfg, row.raw)
    except Exception as exc:  # noqa: BLE001 -- logged; an unsigned mail beats no mail
        log.warning("signing outgoing %s failed (%s); sending unsigned", row.message_id, type(exc).__name__)
        return row.raw


def _deliver_one(desk: MailDesk, transport: DirectoryTransport | SmtpTransport, row: OutboxRow,
                 now: datetime) -> tuple[bool, str | None]:
    """Send one outbox row: (sent, why the rest must wait: the server is down)."""
    raw = _signed(desk.cfg, row)
    with desk.store.transaction():
        claimed = desk.store.mark_sending(row.id)
    if not claimed:
        return False, None  # sent or claimed meanwhile by another sender
    maybe_crash("outbox.sending")
    try:
        refused = transport.send(row.sender, row.recipients, raw, row.message_id)
    except DeliveryError as exc:
        said = _not_delivered(desk, row, exc, now)
        return False, (None if exc.permanent else said)
    except Exception as exc:  # noqa: BLE001 - this mail's own trouble: fail it, never block the rest
        log.warning("delivery of %s failed for good (%s); the rest of the outbox goes on",
                    row.message_id, type(exc).__name__)
        transport.close()
        with desk.store.transaction():
            desk.store.mark_failed(row.id, now, f"{type(exc).__name__}: {exc}")
            escalate_delivery_failure(desk, row, f"{type(exc).__name__}: {exc}")
        return False, None
    maybe_crash("smtp.accepted")  # the window bot/flows/delivery.py explains
    with desk.store.transaction():
        desk.store.mark_sent(row.id, desk.clock())
        if refused:  # some recipients refused, the rest accepted: see bot/flows/refusals.py
            from bot.flows.refusals import handle_refused

            handle_refused(desk, row, refused)
    maybe_crash("outbox.sent")
    log.debug("sent %s (%s) to %d recipients", row.message_id, row.kind, len(row.recipients))
    return True, None


def _not_delivered(desk: MailDesk, row: OutboxRow, exc: DeliveryError, now: datetime) -> str:
    """Record a server's refusal of ``row`` (retry later, fail and escalate, or just
    unsend when the server is down) and return it with addresses scrubbed."""
    with desk.store.transaction():
        if exc.server_down:
            desk.store.mark_unsent(row.id, str(exc))  # not this mail's fault: no backoff
        elif exc.permanent:
            desk.store.mark_failed(row.id, now, str(exc))
            escalate_delivery_failure(desk, row, exc.detail())
        else:
            delay = timedelta(seconds=min(3600, 60 * 2 ** min(row.attempts, 6)))
            desk.store.mark_retry(row.id, now + delay, str(exc))
    # A server's answer may quote the address it refuses: addresses stay out of logs.
    said = scrub_addresses(str(exc), row.recipients)
    log.warning("delivery of %s failed: %s", row.message_id, said)
    return said
