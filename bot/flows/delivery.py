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

from bot.flows.runtime import Bot

log = logging.getLogger("dkimbot")


def reconcile_in_doubt(bot: Bot) -> int:
    """Put rows a crash left in ``sending`` back in the queue, recording the doubt."""
    store = bot.store
    rows = store.in_doubt_mail()
    if not rows:
        return 0
    now = bot.clock()
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
