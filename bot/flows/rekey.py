"""A new, shorter key for a case still waiting for its DKIM record (SPEC §8).

Some DNS panels keep only the first 255 bytes of a TXT value, so a 2048-bit record
comes back cut off (``dkim_truncated``). A 1024-bit RSA record (≈ 234 bytes) fits in one
string. The ``dkim_problem`` mail offers it; the offer is kept two ways:

* the facility replies asking for it (「短い鍵を希望します」, 「1024ビットでお願いします」)
  while the case's last diagnosis was ``dkim_truncated`` → ``answer_short_key_wish``;
* staff run ``dkimbot rekey CASE --bits 1024`` (any case in ``awaiting_dkim``).

Either way the case gets a new selector (never one in use in DNS or used before,
``keyplan.choose_selector``) with a new key of that size, the old key is marked retired
(it was never installed: the case had not passed the DKIM step), the case's reminder
clock starts again, and the facility receives the new record and is told to delete the
cut-off one (``templates/dkim_rekey.txt``). Every case of the domain waiting on the same
selectors moves together (facilities sharing a domain share one record).
"""

from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from bot.adapters.store import Store
from bot.core import cases as sm
from bot.core.cases import State
from bot.core.mailkinds import MailKind
from bot.core.records import DkimKey
from bot.core.requestplan import NotPrepared
from bot.core.rows import CaseRow
from bot.flows.desks import KeyDesk, Workbench

log = logging.getLogger("dkimbot")

# Checked on the NFKC-normalised words of the facility (full-width １０２４ → 1024).
_SHORT_KEY_WISH = re.compile(r"1024|短い(?:鍵|キー|公開鍵|もの|方|ほう)|鍵を短く|短くして|短鍵")


class RekeyError(Exception):
    """The case cannot get a new key now; the message says why (for staff)."""


def asks_for_short_key(text: str) -> bool:
    """True when the facility's own words ask for the shorter key."""
    return bool(_SHORT_KEY_WISH.search(unicodedata.normalize("NFKC", text or "")))


def _waiting_for_dkim(case: CaseRow) -> bool:
    return case.state == State.AWAITING_DKIM or (
        case.state == State.ESCALATED and case.resume_state == State.AWAITING_DKIM)


def short_key_was_offered(case: CaseRow) -> bool:
    """The last problem mail of the case reported a record cut off (and so offered it)."""
    return "dkim:dkim_truncated" in (case.last_notice or "")


@dataclass(frozen=True)
class NewKey:
    """The slow half of a rekey, made before any transaction: the new selector (DNS was
    asked) and its key file, with the domain's recorded selectors at that time."""

    selector: str
    key: DkimKey
    known: frozenset[str]


def new_key(desk: KeyDesk, case: CaseRow, bits: int) -> NewKey:
    """Choose a new selector for ``case``'s domain (asks DNS) and write its RSA key file."""
    from bot.core.records import render_selector
    from bot.flows.selectors import choose_selector

    domain = case.domain or ""
    old = list(case.selectors or ([case.selector] if case.selector else []))
    stored = [k["selector"] for k in desk.store.domain_keys(domain)]
    selector = choose_selector(desk, domain, render_selector(desk.cfg.keys.selector, desk.clock()),
                               with_ed25519=False, exclude=[*stored, *old])
    return NewKey(selector, desk.keystore.load_or_create(domain, selector, "rsa", bits), frozenset(stored))


def rekey_case(bench: Workbench, case: CaseRow, bits: int, *, reason: str, who: str = "bot",
               made: NewKey | None = None) -> list[CaseRow]:
    """Give ``case`` (and the cases sharing its record) a new RSA key of ``bits`` under a
    new selector and queue the mail with the new record. Runs in the caller's transaction
    when there is one, and then takes ``made`` (prepared before it: no DNS or key
    generation under the write lock); returns the updated cases."""
    from bot.flows.compose import enqueue_mail, key_records

    if not _waiting_for_dkim(case):
        raise RekeyError(f"{case.ref} is {case.state}; a new key is only made before the DKIM step "
                         "(after it, use 'dkimbot rotate')")
    if bits not in (1024, 2048, 3072, 4096):
        raise RekeyError(f"{bits} bits: RSA keys are 1024, 2048, 3072 or 4096 bits")
    domain = case.domain or ""
    old = list(case.selectors or ([case.selector] if case.selector else []))
    stored = {k["selector"]: k for k in bench.store.domain_keys(domain)}
    rsa_old = [s for s in old if stored.get(s, {}).get("algorithm", "rsa") == "rsa"]
    kept = [s for s in old if s not in rsa_old]  # an Ed25519 record is short: it stays
    now = bench.clock()
    made = made or new_key(bench, case, bits)
    selector, key = made.selector, made.key
    new = [selector, *kept]
    group = [c for c in bench.store.cases_for_domain(domain)
             if _waiting_for_dkim(c) and list(c.selectors or [c.selector or ""]) == old]
    if case.id not in [c.id for c in group]:
        group.insert(0, case)
    due = sm.next_check_at(now, now, bench.cfg.schedule)
    with bench.store.transaction():
        bench.store.record_key(domain, selector, key.algorithm, key.bits, key.public_b64, now)
        for sel in rsa_old:
            bench.store.retire_key(domain, sel, now)
        updated = []
        for c in group:
            fields: dict[str, Any] = {"selector": new[0], "selectors": new, "last_notice": None, "next_check_at": due,
                                      "reminders_sent": 0}
            rekeyed = {"old_selectors": old, "new_selectors": new, "bits": bits, "reason": reason, "by": who}
            if c.state == State.ESCALATED:
                updated.append(bench.store.transition(c.id, State.AWAITING_DKIM, now, expected_state=c.state,
                                                      event="rekeyed", detail=rekeyed, resume_state=None,
                                                      **fields))
                continue
            fields["state_since"] = now  # a new record to publish: the reminder clock starts again
            updated.append(bench.store.update_case(c.id, now, **fields))
            bench.store.add_event(c.id, now, "rekeyed", c.state, State.AWAITING_DKIM, rekeyed)
        enqueue_mail(bench, MailKind.DKIM_REKEY, updated, {
            "records": key_records(bench.store, updated[0]),
            "old": [{"fqdn": f"{s}._domainkey.{domain}", "host_label": f"{s}._domainkey"} for s in rsa_old],
            "bits": bits,
            "reason": reason,
        })
    log.info("%s: new %d-bit key %s (was %s; %s)", ",".join(c.ref for c in updated), bits, selector,
             ",".join(old), reason)
    return updated


def wants_short_key(store: Store, case: CaseRow, text: str) -> bool:
    """A reply asking for the short key to a case that offered it: its record was cut
    off, or a reminder asked whether the panel refused the long value (nothing in DNS a
    day after 「設定しました」, ``reminders.panel_may_have_refused``)."""
    if not (_waiting_for_dkim(case) and asks_for_short_key(text)):
        return False
    return short_key_was_offered(case) or any(
        e["kind"] == "reminder" and (e.get("detail") or {}).get("offered_short_key")
        for e in store.events(case.id))


def answer_short_key_wish(bench: Workbench, case: CaseRow, text: str, thread_fields: dict[str, Any],
                          made: NewKey | None = None, failure: Exception | None = None) -> bool:
    """A reply to a case whose record was cut off, asking for the short key: make it.

    ``thread_fields`` (thread_last, thread_refs) are stored first, so the new record's
    mail answers the facility's reply. Returns False (nothing done) when the reply is
    not that wish, the case is past the DKIM step, or no cut-off record was reported:
    the reply then takes its usual way (a recheck, and staff when it is a question).
    """
    if not wants_short_key(bench.store, case, text):
        return False
    # Inside the decision's transaction: the key ``made`` by the prepare phase, if it still
    # fits (no key recorded for the domain since); ``failure``: what preparing it met.
    known = frozenset(k["selector"] for k in bench.store.domain_keys(case.domain or ""))
    if made is None or made.known != known:
        raise NotPrepared(case.domain or "", "the shorter key", failure)
    now = bench.clock()
    case = bench.store.update_case(case.id, now, **thread_fields)
    bench.store.add_event(case.id, now, "facility_reply", detail={"excerpt": text.strip()[:400],
                                                                  "reading": "short_key_wish"})
    rekey_case(bench, case, 1024, reason="the facility asked for the shorter key after a cut-off record",
               who="facility", made=made)
    return True
