"""When a completed domain is watched next: daily, each domain at its own time of day.

SPEC §8 watches every completed domain once a day. "A day after the last check" makes a
burst of the day the base was onboarded (or migrated, or the bot was down) repeat
itself forever, and drift later by each pass's lateness. Instead each domain has a
fixed phase, a time of day taken from a hash of its name (stable across processes and
restarts, unlike ``hash()``), and its next watch is the next time the clock shows that
phase: 5,000 domains spread evenly over the day, and a late pass does not push the
domain's slot. At least ``min_gap`` separates two watches (a case completed just before
its phase is not checked again right away).
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

DAY = timedelta(days=1)


def watch_phase(domain: str) -> timedelta:
    """The domain's time of day (UTC) for its daily watch, to the second."""
    digest = hashlib.sha256(domain.strip().lower().rstrip(".").encode("utf-8")).digest()
    return timedelta(seconds=int.from_bytes(digest[:8], "big") % int(DAY.total_seconds()))


def next_watch(domain: str, now: datetime, min_gap: timedelta = timedelta(hours=1)) -> datetime:
    """The first time after ``now + min_gap`` at the domain's phase (``now`` aware)."""
    earliest = now + min_gap
    midnight = earliest.replace(hour=0, minute=0, second=0, microsecond=0)
    candidate = midnight + watch_phase(domain)
    if candidate <= earliest:
        candidate += DAY
    return candidate
