"""Which selectors a domain gets, and whether all of them are published.

Two jobs that both deal in *sets* of selectors (RSA plus, with ``[keys] ed25519``, an
Ed25519 one for dual signing):

* ``choose_selector`` picks the selector for a new key. SPEC §8 "look before
  instructing": a selector name the domain already uses in DNS (another sender's key,
  a record left from an earlier provider) is never reused, because telling the facility
  to *replace* it would break whoever signs with it. A DNS failure while looking never
  blocks a request: the configured pattern is used and the failure logged.
* ``check_dkim_selectors`` / ``check_case_domain`` run the DKIM check for every selector
  of a case and fold the verdicts into one ``dkim`` area, so a case advances only when
  every record it was sent is right on every authoritative server.
"""

from __future__ import annotations

import logging
import string
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from bot.checks.wildcard import wildcard_txt
from bot.config import ServiceConfig
from bot.core.dnsresults import DnsLookup
from bot.core.records import ed25519_selector, validate_selector

log = logging.getLogger("dkimbot")

# "yoyakuban202605" taken → "yoyakuban202605a", "…b", …; after "z", "…-2", "…-3", …
# At most this many candidates are looked up in DNS. Those the bot already used for the
# domain are skipped without a lookup and do not count: forty strangers' unproven
# requests for one domain (a case and a selector each) used to exhaust the candidates, so
# the facility's own request failed with "no free selector" (review, 2026-12-01).
_MAX_CANDIDATES = 40


class SelectorLookupFailed(Exception):
    """DNS gave no usable answer for a candidate selector (never "it is free")."""


def selector_candidates(base: str) -> Iterable[str]:
    """``base``, then ``base`` + a, b, …, z, then ``base-2``, ``base-3``, …"""
    yield base
    for letter in string.ascii_lowercase:
        yield f"{base}{letter}"
    n = 2
    while True:
        yield f"{base}-{n}"
        n += 1


def _dkim_key_of(text: str) -> str | None:
    from bot.checks.dnscheck import parse_dkim_record

    try:
        return parse_dkim_record(text).key
    except Exception:  # noqa: BLE001 - any unparsable TXT is simply "not our key"
        return None


def selector_in_use(client: DnsLookup, domain: str, selector: str, own_public_b64: str | None,
                    wildcard: frozenset[str] = frozenset()) -> bool:
    """True when ``<selector>._domainkey.<domain>`` holds a TXT record that is not our key.

    Any TXT there counts (a DKIM record of another sender, or junk someone left): we
    would otherwise have to tell the facility to overwrite it. Our own key (a crash
    between making the key and recording the case) does not, nor does a record that
    ``wildcard`` holds (what a wildcard gives every name: a record published at the
    selector replaces it, nothing is overwritten). Raises SelectorLookupFailed when no
    server gave a definite answer.
    """
    name = f"{selector}._domainkey.{domain}"
    answers = client.authoritative_txt(name)
    definite = [recs for recs in answers.values() if isinstance(recs, list)]
    records = [r for recs in definite for r in recs if str(r) not in wildcard]
    if records:
        return any(own_public_b64 is None or _dkim_key_of(str(r)) != own_public_b64 for r in records)
    if not definite or len(definite) < len(answers):
        # A server that did not answer may be the one holding the record.
        failures = [str(a) for a in answers.values() if not isinstance(a, list)]
        raise SelectorLookupFailed("; ".join(failures) or f"no answer for {name}")
    return False


def first_allowed_selector(base: str, *, with_ed25519: bool, exclude: Iterable[str] = ()) -> str:
    """The first candidate from ``base`` the bot has not used for the domain, without
    asking DNS (what ``choose_selector`` falls back to when DNS gives no answer)."""
    validate_selector(base)
    excluded = {s.lower() for s in exclude}
    for candidate in selector_candidates(base):  # ends: only finitely many are excluded
        names = [candidate, ed25519_selector(candidate)] if with_ed25519 else [candidate]
        if not any(n in excluded for n in names):
            return candidate
    raise AssertionError("unreachable")


def choose_selector(
    client: DnsLookup, domain: str, base: str, *, with_ed25519: bool, exclude: Iterable[str] = (),
    own_key: Callable[[str], str | None] = lambda selector: None,
) -> str:
    """The first candidate from ``base`` that is free in DNS (and, for dual signing, whose
    Ed25519 companion is free too) and not in ``exclude`` (selectors the bot already used
    for this domain). On a DNS failure: the first candidate not excluded, logged."""
    validate_selector(base)
    excluded = {s.lower() for s in exclude}
    first_allowed: str | None = None
    wildcard: frozenset[str] | None = None  # asked once the first candidate looks taken
    looked = 0
    for candidate in selector_candidates(base):
        names = [candidate, ed25519_selector(candidate)] if with_ed25519 else [candidate]
        if any(n in excluded for n in names):
            continue
        if looked >= _MAX_CANDIDATES:
            break
        looked += 1
        if first_allowed is None:
            first_allowed = candidate
        try:
            taken = [n for n in names if selector_in_use(client, domain, n, own_key(n), wildcard or frozenset())]
            if taken and wildcard is None:
                # A wildcard TXT answered every candidate with "no free selector" and the
                # request failed on every pass (review, 2026-12-01): what a name nobody
                # publishes answers is set aside (bot/checks/wildcard.py, one query).
                wildcard = wildcard_txt(client, domain) or frozenset()
                taken = [n for n in names if selector_in_use(client, domain, n, own_key(n), wildcard)]
        except SelectorLookupFailed as exc:
            log.warning("selector check for %s failed (%s); using %s without looking",
                        domain, exc, first_allowed)
            return first_allowed
        if not taken:
            if candidate != base:
                log.info("selector %s is in use at %s; using %s", base, domain, candidate)
            return candidate
    raise ValueError(f"no free selector for {domain} among {_MAX_CANDIDATES} candidates from {base!r}")


# --------------------------------------------------------------------------- checking


def check_dkim_each(client: DnsLookup, domain: str, expected: Mapping[str, str | None]) -> dict[str, Any]:
    """selector → its ``check_dkim`` AreaResult (one shared client: each name asked once)."""
    from bot.checks.dnscheck import check_dkim

    if not expected:
        raise ValueError(f"no selector to check for {domain}")
    return {sel: check_dkim(client, domain, sel, exp) for sel, exp in expected.items()}


def fold_dkim(results: Mapping[str, Any]) -> Any:
    """Several selectors' DKIM AreaResults as one: ok only when every one is ok.

    Diagnoses are concatenated (each names its own record). ``found`` is the first
    selector's evidence (what single-selector readers use: servers, verdicts) plus
    ``selectors``: each selector's own evidence.
    """
    from bot.core.dnsresults import AreaResult

    first = next(iter(results.values()))
    if len(results) == 1:
        return first
    found: dict[str, Any] = dict(first.found)
    found["selectors"] = {sel: r.found for sel, r in results.items()}
    diagnoses = [d for r in results.values() for d in r.diagnoses]
    return AreaResult(all(r.ok for r in results.values()), diagnoses, found)


def check_dkim_selectors(client: DnsLookup, domain: str, expected: Mapping[str, str | None]) -> Any:
    """``check_dkim`` for every selector, folded into one AreaResult (``fold_dkim``)."""
    return fold_dkim(check_dkim_each(client, domain, expected))


def check_case_domain(client: DnsLookup, domain: str, expected: Mapping[str, str | None], service_cfg: ServiceConfig,
                      *, dkim_first: bool = False) -> Any:
    """``check_domain`` with the DKIM area covering every selector in ``expected``.

    ``dkim_first`` (a case still waiting for its DKIM record): DMARC, SPF and alignment
    are asked only once DKIM is right. Until then nothing is decided or mailed from them
    (``cases.classify_check``), and skipping them halves the queries of a waiting domain.
    """
    from bot.checks.dnscheck import check_domain
    from bot.core.dnsresults import AreaResult, CheckReport

    if dkim_first:
        dkim = check_dkim_selectors(client, domain, expected)
        if not dkim.ok:
            why = "asked once the DKIM record is right"
            return CheckReport(dkim, *(AreaResult(True, [], {"skipped": why}) for _ in range(3)))
    selectors = list(expected)
    report = check_domain(client, domain, selectors[0], expected[selectors[0]], service_cfg)
    if len(selectors) > 1:
        report.dkim = check_dkim_selectors(client, domain, expected)
    return report
