"""Fault injection for the crash-safety tests: kill the process at a named point.

``DKIMBOT_CRASH_AT=<point>[:<n>]`` makes the n-th arrival (default the first) at
``maybe_crash(<point>)`` end the process with SIGKILL: no ``finally``, no atexit, no
SQLite rollback, exactly what a power cut or ``kill -9`` does. In-process tests can
register a callback instead (``on(point, fn)``), e.g. to stop a server in the middle of a
pass. Unset, ``maybe_crash`` is one global read and a return: nothing for production.

The points sit where a crash is most dangerous: between an effect outside the database
(a key file, the signer tables, a mail handed to SMTP) and the commit that records it.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

ENV = "DKIMBOT_CRASH_AT"

#: Every point the code calls, and what has happened (and not yet) when it is reached.
POINTS: dict[str, str] = {
    "message.decided": "a message's case, events, reply mail and handled mark written, not committed",
    "message.committed": "a message's decision committed; IMAP progress not yet stored",
    "imap.progress": "IMAP progress (UIDVALIDITY:UID) committed for a batch of messages",
    "key.written": "a new private key file written; the case that uses it not committed",
    "check.proven": "key installed into the signer and proven; the transition not committed",
    "check.decided": "a DNS check's transition, events and mails written, not committed",
    "check.committed": "a DNS check's transition written in its savepoint (the pass commits cases in groups)",
    "reminder.decided": "a reminder or stall escalation written, not committed",
    "outbox.sending": "an outbox row marked 'sending' and committed; SMTP not yet spoken",
    "smtp.accepted": "the SMTP server accepted a mail (250 after DATA); not yet marked sent",
    "outbox.sent": "a mail marked sent and committed",
    "digest.decided": "the daily digest queued and its date stored, not committed",
}


def _parse(spec: str | None) -> tuple[str, int] | None:
    if not spec:
        return None
    point, _, count = spec.partition(":")
    if point not in POINTS:
        # A typo must not make a crash test pass by never crashing.
        print(f"dkimbot: {ENV}={spec!r} names no crash point; known: {', '.join(POINTS)}",
              file=sys.stderr)
        os._exit(2)
    return point, int(count or 1)


_armed: tuple[str, int] | None = _parse(os.environ.get(ENV))
_hooks: dict[str, tuple[int, Callable[[], None]]] = {}
_seen: dict[str, int] = {}


def maybe_crash(point: str) -> None:
    """Die here (SIGKILL) when ``DKIMBOT_CRASH_AT`` names this point and arrival."""
    if _armed is None and not _hooks:
        return
    if point not in POINTS:
        raise ValueError(f"unknown crash point {point!r}")
    _seen[point] = n = _seen.get(point, 0) + 1
    hook = _hooks.get(point)
    if hook is not None and hook[0] == n:
        hook[1]()
    if _armed is not None and _armed == (point, n):
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
        os._exit(137)  # not reached; SIGKILL cannot be caught


@contextmanager
def on(point: str, action: Callable[[], None], n: int = 1) -> Iterator[None]:
    """In-process tests: run ``action`` at the n-th arrival at ``point`` in this block."""
    if point not in POINTS:
        raise ValueError(f"unknown crash point {point!r}")
    _hooks[point] = (n, action)
    _seen.pop(point, None)
    try:
        yield
    finally:
        _hooks.pop(point, None)
        _seen.pop(point, None)
