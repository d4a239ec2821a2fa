"""Recipients refused at RCPT TO while the others were accepted.

smtplib's ``sendmail`` succeeds as long as one recipient is accepted and only reports
the rest. Staff are always in Cc, so a facility address with a typo is refused while
the mail still "goes out": without this module the row was marked sent and the facility
never heard from us. Here, in the same transaction that marks the row sent:

- a 5xx for a facility address escalates the case to staff with the server's answer
  (``escalation.escalate_delivery_failure``'s mail, naming the refused address);
- a 4xx goes into a new outbox row for the refused addresses only, so nobody who already
  has the mail (staff, the other contact) gets it twice. The row needs its own
  Message-ID (the outbox keys on it); In-Reply-To/References stay, so it threads the same.

Addresses go to events and staff mail only; the log gets counts and Message-IDs.
"""

from __future__ import annotations

import logging

from bot.adapters.mailout import Refused, describe_refused, new_message_id
from bot.core.rows import OutboxRow
from bot.flows.desks import MailDesk, Office
from bot.flows.escalation import escalate_delivery_failure

log = logging.getLogger("dkimbot")


def _with_message_id(raw: bytes, old: str, new: str) -> bytes:
    """``raw`` with its Message-ID header set to ``new``; the rest byte for byte the same."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    line = b"Message-ID: " + old.encode("ascii")
    if sep and head.count(line) == 1:
        return head.replace(line, b"Message-ID: " + new.encode("ascii")) + sep + body
    # Not the shape build_message writes: let the email package do it.
    import email
    from email.policy import SMTP

    msg = email.message_from_bytes(raw, policy=SMTP)
    del msg["Message-ID"]
    msg["Message-ID"] = new
    return msg.as_bytes()


def requeue_for(office: Office, row: OutboxRow, addresses: list[str]) -> str:
    """Queue ``row``'s mail again for ``addresses`` only; returns the new Message-ID."""
    message_id = new_message_id(office.cfg.bot_domain)
    office.store.enqueue(
        message_id=message_id, kind=row.kind, case_ids=list(row.case_ids), sender=row.sender,
        recipients=addresses, raw=_with_message_id(row.raw, row.message_id, message_id),
        now=office.clock(),
    )
    return message_id


def handle_refused(desk: MailDesk, row: OutboxRow, refused: Refused) -> None:
    """Act on the recipients refused in an otherwise accepted delivery of ``row``.

    Runs inside the caller's transaction (the one that marks the row sent).
    """
    if not refused:
        return
    now = desk.clock()
    staff = {a.strip().lower() for a in desk.cfg.service.staff_cc}
    permanent = {a: v for a, v in refused.items() if 500 <= v[0] < 600}
    transient = {a: v for a, v in refused.items() if a not in permanent}
    retry_id = requeue_for(desk, row, list(transient)) if transient else None
    facility_bounced = {a: v for a, v in permanent.items() if a.strip().lower() not in staff}
    for case_id in row.case_ids:
        desk.store.add_event(case_id, now, "recipients_refused", detail={
            "message_id": row.message_id, "kind": row.kind,
            "refused": {a: f"{code} {text}".rstrip() for a, (code, text) in refused.items()},
            "retry_message_id": retry_id,
        })
    escalated = bool(facility_bounced) and not row.kind.startswith("staff_")
    if escalated:
        escalate_delivery_failure(desk, row, describe_refused(facility_bounced),
                                  recipients=list(facility_bounced))
    refs = ",".join(desk.store.get_case(c).ref or str(c) for c in row.case_ids) or "-"
    codes = ",".join(sorted({str(code) for code, _ in refused.values()}))
    log.warning("%s: %s mail %s: the server refused %d of %d recipients (%s); %s%s", refs, row.kind,
                row.message_id, len(refused), len(row.recipients), codes,
                f"{len(transient)} queued again as {retry_id}" if retry_id else "none queued again",
                "; staff alerted" if escalated else "")
