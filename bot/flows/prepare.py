"""The slow half of deciding on a request, done before the write transaction.

Deciding on a request needs network and CPU time: the selector choice asks the
domain's name servers (``keyplan.choose_selector``), a new key is generated
(``KeyStore.load_or_create``), a managed zone is looked up (its RFC 2136 update waits for the admin's confirmation:
``bot/flows/confirm.py``) and the first reply looks at the domain's DNS
(``lookahead.look_bounded``: up to 3 × [dns] timeout). Done inside
``process_message``'s ``BEGIN IMMEDIATE`` transaction, all of that held SQLite's write
lock, so ``dkimbot status`` (and every other writer) waited for a hung name server and
could hit the 30 s busy timeout ("database is locked").

So a message is handled in two phases:

* **prepare** (this module, outside any transaction): walk the request's facilities the
  way ``onboarding.handle_request`` will, reading the store without locking it, and do
  the I/O each one will need: choose the selector and create the key files (idempotent
  per domain + selector, so a crash or a second run reuses them), find a managed
  zone, look at the domain's DNS. The results are a ``Prepared``.
* **decide** (``onboarding.handle_request`` in the transaction): re-reads the store and
  takes a prepared result only when it still fits (``Prepared.keys_for`` checks that no
  key was recorded for the domain since; a live case of the domain wins over the
  prepared key, so two requests for one domain still share one key). Both phases walk
  the same plan (``core.requestplan.plan_facility``). Anything the walk did not foresee
  (another process changed the store meanwhile) raises ``NotPrepared``: the transaction
  is rolled back and ``process_message`` prepares again. No DNS query, key generation
  or RFC 2136 update ever runs inside the transaction.

Prepared work the decision does not use is harmless: an unused key file is never
published or installed (the next choice of that selector reuses it, ``_own_key``), and
a lookahead is only read.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bot.adapters.store import Store
from bot.config import Config
from bot.core.cases import State
from bot.core.records import ed25519_selector, render_selector
from bot.core.request import ParsedMail
from bot.core.requestplan import Continued, NotPrepared, Step, over_limit, plan_facility
from bot.core.rows import CaseRow
from bot.faults import maybe_crash
from bot.flows.desks import KeyDesk, Lookout
from bot.flows.matching import existing_case, key_holders, new_cases_left, party_guard, reply_target

if TYPE_CHECKING:
    from bot.adapters.dnsclient import DnsClient


log = logging.getLogger("dkimbot")


def not_prepared(prepared: Prepared | None, domain: str, what: str) -> NotPrepared:
    """The ``NotPrepared`` to raise for ``domain``, with what the prepare phase met, if anything."""
    return NotPrepared(domain, what, prepared.failed.get(domain) if prepared is not None else None)


@dataclass
class PreparedKeys:
    """A new key set for a domain: selectors (RSA first, then the Ed25519 companion)
    with their key files written, and the domain's recorded selectors when chosen."""

    selectors: list[str]
    keys: list[Any]  # bot.keys.DkimKey, parallel to selectors
    known: frozenset[str]  # domain_keys selectors at the time of the choice


@dataclass
class Prepared:
    """What the prepare phase did for one message (empty: nothing slow was needed)."""

    keys: dict[str, PreparedKeys] = field(default_factory=dict)
    # domain → its managed zone (bot/flows/confirm.py ManagedZone) or None: looked up
    # here; nothing is published before the admin address confirms (issue 11).
    zones: dict[str, Any] = field(default_factory=dict)
    # domain → Lookahead | None: the ``seen`` cache of ``lookahead.looked_for_reply``
    seen: dict[str, Any] = field(default_factory=dict)
    # domain → what went wrong preparing it (the decision re-raises it if it needs the work)
    failed: dict[str, Exception] = field(default_factory=dict)
    # case id → the shorter key a facility's reply asks for (bot/flows/rekey.py NewKey)
    rekeys: dict[int, Any] = field(default_factory=dict)

    def keys_for(self, store: Store, domain: str) -> PreparedKeys | None:
        """The prepared keys of ``domain`` when they still fit the store (no key
        recorded for the domain since they were chosen; call inside the transaction)."""
        pk = self.keys.get(domain)
        if pk is None:
            return None
        now_known = frozenset(k["selector"] for k in store.domain_keys(domain))
        return pk if now_known == pk.known else None


def key_bits_for(cfg: Config, found: Any) -> int:
    """The RSA key size for a domain: ``[keys] bits``, but 1024 when its DNS host is known
    to refuse TXT values over 255 characters (さくら): a 2048-bit value (~410
    characters) could not be saved there, and 1024 bits still meets Gmail's and Yahoo's
    minimum. ``found`` is the domain's ``Lookahead`` (or None)."""
    bits = cfg.keys.bits
    provider = getattr(found, "provider", None)
    if provider is not None and provider.caps_txt_at_255 and cfg.keys.algorithm == "rsa" and bits > 1024:
        return 1024
    return bits


def prepare_keys(desk: KeyDesk, domain: str, bits: int | None = None, *, look: bool = True) -> PreparedKeys:
    """Choose a new selector for ``domain`` (asks DNS unless ``look`` is False) and create
    its key file(s)."""
    from bot.flows.selectors import choose_selector

    cfg = desk.cfg
    algorithm = cfg.keys.algorithm
    known = frozenset(k["selector"] for k in desk.store.domain_keys(domain))
    dual = cfg.keys.ed25519 and algorithm != "ed25519"
    # Never a selector the domain already uses in DNS, nor one the bot used before (SPEC §8).
    selector = choose_selector(desk, domain, render_selector(cfg.keys.selector, desk.clock()),
                               with_ed25519=dual, exclude=known, look=look)
    key = desk.keystore.load_or_create(domain, selector, algorithm, bits or cfg.keys.bits)
    maybe_crash("key.written")
    selectors, keys = [selector], [key]
    if dual:
        ed_sel = ed25519_selector(selector)
        keys.append(desk.keystore.load_or_create(domain, ed_sel, "ed25519", 256))
        selectors.append(ed_sel)
    return PreparedKeys(selectors, keys, known)


def prepare_message(desk: KeyDesk, parsed: ParsedMail) -> Prepared:
    """Do the I/O ``onboarding.decide_message`` will need for ``parsed``; no transaction.

    Walks the plan ``handle_request`` will execute (``core.requestplan``); a step that
    fails here is logged and recorded in ``failed``: the decision raises it if it needs
    that step (and the message fails, to be retried by the next pass).
    """
    out = Prepared()
    if parsed.no_reply_reason or parsed.sender_problem:  # nothing is made for either
        return out
    target = reply_target(desk.store, parsed)
    if not (parsed.facilities and (parsed.is_request or (target and target.state == State.NEEDS_INFO))):
        if target is not None:
            _prepare_reply(desk, out, target, parsed)
        return out
    cfg = desk.cfg
    if over_limit(parsed.facilities, cfg.intake.max_facilities_per_mail):
        return out
    requester = parsed.reply_address
    own = [*cfg.service.own_domains, cfg.bot_domain]
    assigned: set[str] = set()  # domains an earlier facility of this mail gets a case on
    left = new_cases_left(desk, requester)  # no keys beyond the sender's daily limit (issue 11)
    dns_deadline = time.monotonic() + 2 * _look_budget(desk.cfg)
    for f in parsed.facilities:
        found = existing_case(desk.store, f, requester, target)
        if found is None and left is not None:
            if left <= 0:
                continue
            left -= 1
        existing = Continued(found.id, found.state, found.domain) if found is not None else None
        plan = plan_facility(f, existing, freemail=cfg.service.freemail_domains, own=own)
        if plan.step not in (Step.RESEND, Step.ASSIGN_KEY):
            continue
        domain = plan.domain or ""
        verdict, live = party_guard(desk.store, f, domain, requester, found)
        if verdict == "in_progress":
            continue  # nothing is made for a non-party (the decision tells them so)
        if verdict == "join":
            plan = plan_facility(f, Continued(live.id, live.state, live.domain) if live else None,
                                 freemail=cfg.service.freemail_domains, own=own)
        if domain not in out.seen:
            # Looked at first: the DNS host decides the key size (さくら: 1024 bits). Once
            # this mail's DNS budget is spent, the rest are answered without looking: a
            # stranger's ten domains on name servers that never answer must not hold the
            # pass for minutes (red team, issue 11).
            if time.monotonic() < dns_deadline:
                out.seen[domain] = look_at(desk.cfg, desk.dns_client(), domain)
            else:
                log.warning("DNS budget of %s spent: %s answered without looking", parsed.message_id, domain)
                out.seen[domain] = None
        if plan.step == Step.ASSIGN_KEY and domain not in assigned:
            try:
                _prepare_new_case(desk, out, domain, found, requester)
            except Exception as exc:  # noqa: BLE001 -- logged; re-raised by the decision if it needs it
                log.warning("preparing a key for %s failed (%s: %s)", domain, type(exc).__name__, exc)
                out.failed[domain] = exc
        if plan.step == Step.ASSIGN_KEY:
            assigned.add(domain)
    return out


def _prepare_reply(desk: KeyDesk, out: Prepared, case: CaseRow, parsed: ParsedMail) -> None:
    """A reply asking for the shorter key (``rekey.answer_short_key_wish``): its selector
    (asks DNS) and key file, made here."""
    from bot.core.replies import read_reply
    from bot.flows.rekey import new_key, wants_short_key

    reading = read_reply(parsed.body_text or "")
    if not wants_short_key(desk.store, case, reading.new_text or parsed.body_text or ""):
        return
    try:
        out.rekeys[case.id] = new_key(desk, case, 1024)
    except Exception as exc:  # noqa: BLE001 -- logged; re-raised by the decision, which needs it
        log.warning("preparing the shorter key for %s failed (%s: %s)", case.ref, type(exc).__name__, exc)
        out.failed[case.domain or ""] = exc


def _prepare_new_case(desk: KeyDesk, out: Prepared, domain: str, existing: CaseRow | None,
                      requester: str | None) -> None:
    """Keys (unless the new case shares a live case's: ``matching.key_holders``) and, for
    a managed zone with no case to share with, the zone lookup (its RFC 2136 update waits
    for the admin's confirmation: bot/flows/confirm.py), in the order handle_request does them."""
    holders = key_holders(desk.store, domain, requester, existing.id if existing is not None else None)
    if not holders:
        # A domain whose look gave no answer is not asked again for its selector: name
        # servers that never answer cost one bounded look, not that and every selector's
        # timeouts (red team, issue 11).
        out.keys[domain] = prepare_keys(desk, domain, key_bits_for(desk.cfg, out.seen.get(domain)),
                                        look=out.seen.get(domain) is not None)
    if not desk.cfg.dns.managed_nameservers or any(c.facility for c in holders):
        return
    from bot.flows.confirm import managed_zone_for

    out.zones[domain] = managed_zone_for(desk, domain)


def _look_budget(cfg: Config) -> float:
    from bot.checks import lookahead

    return lookahead.look_budget(cfg.dns.timeout)


def look_at(cfg: Config, client: DnsClient, domain: str) -> Any:
    """What the domain's DNS holds before the first reply (``lookahead.look_bounded``:
    a fresh client, within 3 × [dns] timeout; None when it failed or took too long)."""
    from bot.checks import lookahead

    return lookahead.look_bounded(client, cfg.service, domain,
                                  lookahead.look_budget(cfg.dns.timeout))


def looked_for_reply(lookout: Lookout, case: CaseRow, records: list[dict[str, str]],
                     seen: dict[str, Any]) -> dict[str, Any]:
    """The request_reply item keys for one case, looking at its domain once per mail
    (``seen`` caches per domain) and recording what was seen in the case's events."""
    from bot.checks import lookahead

    domain = case.domain or ""
    if domain not in seen:
        seen[domain] = look_at(lookout.cfg, lookout.dns_client(), domain)
    found = seen[domain]
    now = lookout.clock()
    if found is None:
        lookout.store.add_event(case.id, now, "dns_lookahead", detail={"domain": domain, "ok": False})
        return lookahead.reply_context(None, records, lookout.cfg.service)
    lookout.store.add_event(case.id, now, "dns_lookahead", detail={"ok": True, **found.to_event()})
    return lookahead.reply_context(found, records, lookout.cfg.service)
