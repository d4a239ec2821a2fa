"""Failed checks in a row, per case: the ``attempt`` of ``cases.dns_error_delay``, and
the guard that keeps one case's unexpected exception from stopping a pass.

A DNS failure (timeout, SERVFAIL, REFUSED) is retried "soon, then less often": the
n-th failed check in a row waits ``dns_error_delay(base, n)``; the first good answer
starts the count again. The count lives in the store's ``meta`` table under
``check_failures:<case id>`` (no schema change; a row exists only while a case is
failing), written in the caller's transaction so it moves with the case's
``next_check_at``.

A check that raised (a bug, a broken key row, a name dnspython rejects) counts as a
failed check too: the case is logged with its ref, gets a ``check_failed`` event and
is retried with the same backoff, and the pass goes on with the other cases and the
delivery of mail.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from bot.adapters.store import Store
from bot.core import cases as sm
from bot.core.rows import CaseRow
from bot.flows.desks import Office

log = logging.getLogger("dkimbot")

_PREFIX = "check_failures:"


def _key(case_id: int) -> str:
    return f"{_PREFIX}{case_id}"


def failures_in_a_row(store: Store, case_id: int) -> int:
    """Failed checks of this case since its last clean answer (0 when none)."""
    value = store.get_meta(_key(case_id))
    try:
        return max(0, int(value or 0))
    except ValueError:  # a hand-edited row must not stop the checks
        return 0


def note_failure(store: Store, case_id: int) -> int:
    """One more failed check; return the new count (the ``attempt`` to back off by)."""
    count = failures_in_a_row(store, case_id) + 1
    store.set_meta(_key(case_id), str(count))
    return count


def note_success(store: Store, case_id: int) -> None:
    """A clean answer: the next failure is a first one again."""
    if store.get_meta(_key(case_id)) is not None:
        store.delete_meta(_key(case_id))


def record_check_crash(office: Office, case: CaseRow, exc: BaseException, where: str) -> None:
    """A case's check raised: log it with the case ref, record a ``check_failed``
    event, and back its next check off like a DNS error. Never raises for a store
    that still works: the pass must go on to the other cases and to delivery."""
    now: datetime = office.clock()
    log.error("%s: %s of %s failed: %s: %s", case.ref, where, case.domain,
              type(exc).__name__, exc, exc_info=exc)
    with office.store.transaction():
        attempt = note_failure(office.store, case.id)
        delay = sm.dns_error_delay(office.cfg.schedule.check_interval_seconds, attempt)
        office.store.update_case(case.id, now, next_check_at=now + delay)
        detail: dict[str, Any] = {"where": where, "error": f"{type(exc).__name__}: {exc}",
                                  "attempt": attempt}
        office.store.add_event(case.id, now, "check_failed", case.state, case.state, detail)
