"""A time budget for handling one message (issue 11: one crafted mail must not stall
every pass).

The parsers are linear and the text they read is capped (``[intake] max_text_chars``),
so the budget is the backstop: reading a message or deciding on it taking longer than
``[intake] message_time_budget_seconds`` is interrupted and counts as a failure of that
message (``jobs._message_failed``: retried, staff after 3), and the pass moves on to the
next message and to delivery. The decision's transaction rolls back on the
interruption, so nothing of the message is half-written. The prepare phase's DNS
lookups and key generation are not counted: they are bounded by ``[dns] timeout`` and
do not depend on what the mail says.

The interruption is SIGALRM, which only the main thread receives: ``run --once`` (cron)
is interrupted; in the daemon's worker thread the budget is measured and logged only.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

log = logging.getLogger("dkimbot")


class MessageTimeout(Exception):
    """Handling one message took longer than its time budget."""


@contextmanager
def time_budget(seconds: float, what: str) -> Iterator[None]:
    if seconds <= 0:
        yield
        return
    interrupt = threading.current_thread() is threading.main_thread()
    started = time.monotonic()
    previous = None
    if interrupt:
        def expired(_signum: int, _frame: FrameType | None) -> None:
            raise MessageTimeout(f"{what} took longer than its budget of {seconds:g} s")

        previous = signal.signal(signal.SIGALRM, expired)
        signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        if interrupt:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)
        elapsed = time.monotonic() - started
        if elapsed > seconds and not interrupt:
            log.warning("%s took %.1f s, over its budget of %g s", what, elapsed, seconds)
