"""What a wildcard TXT record answers for a selector nobody has published.

A zone with ``*._domainkey TXT "..."`` or ``* TXT "v=spf1 -all"`` (a common way to say
"these names send no mail") answers *every* unpublished name below ``_domainkey`` with
that record (RFC 4592). So before a facility publishes its key, its selector's name
already "has" a TXT record, and taken at face value it is a wrong DKIM record (the
check) or a selector in use (the selector choice).

One query tells them apart: a sibling name nobody can have published,
``<probe label>._domainkey.<domain>``. It has the same closest encloser as an
unpublished selector (``_domainkey.<domain>`` when that exists, else the domain), so the
same wildcard, if any, answers both, ``*._domainkey`` and ``*`` alike. The probe label
is random per process (nobody can publish it ahead) but fixed within it, so every
selector of a domain in one pass shares the one cached answer. Asked on one server
only: a wildcard is part of the zone, on every server or on none.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from bot.core.dnsresults import DnsLookup, Lookup

# 20 characters: a valid selector-shaped label nobody publishes.
PROBE_LABEL = f"dkimbot-none-{secrets.token_hex(4)}"


def probe_name(domain: str) -> str:
    """The sibling name whose answer is what a wildcard gives an unpublished selector."""
    return f"{PROBE_LABEL}._domainkey.{domain}"


def wildcard_txt(client: DnsLookup, domain: str) -> frozenset[str] | None:
    """The TXT records a wildcard synthesizes for unpublished names under
    ``_domainkey.<domain>``: empty when there is no wildcard, None when the one server
    asked gave no definite answer (the caller then keeps its answer as it is)."""
    answer = client.authoritative_first(probe_name(domain), "TXT")
    if not isinstance(answer, Lookup):
        return None
    return frozenset(str(r) for r in answer.records)


def from_wildcard(records: Sequence[str], wildcard: frozenset[str] | None) -> bool:
    """True when ``records`` (one server's answer at a selector) is exactly the
    wildcard's answer: nothing is published at the selector itself."""
    return bool(records) and bool(wildcard) and frozenset(records) == wildcard
