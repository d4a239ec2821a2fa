"""Key rotation with overlap: `dkimbot rotate DOMAIN` and the job that finishes it.

SPEC §8: a new selector is published and verified before the old one is retired, and
the old record is only declared safe to remove afterwards. So:

1. ``start_rotation`` (the command) makes a new selector (never one in use in DNS or used
   before, ``keyplan.choose_selector``) and key(s), records a ``rotations`` row and mails
   the facility the new record(s) (``rotation_record``). The old key keeps signing.
2. ``rotation_once`` (every pass) checks the new record(s) on every authoritative server.
   When all are right, a probe signed with each new key is verified through DNS, then
   the signer switches in one reload (``install_key(..., retire=old)``), the cases move to
   the new selectors and the facility hears that the old record may go (``rotation_done``).
   A failed proof or install leaves the old key signing and escalates to staff; running
   `dkimbot rotate` again retries that rotation (same new key).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from bot.adapters.store import Store
from bot.config import Config
from bot.core import cases as sm
from bot.core.cases import State
from bot.core.dnsresults import DnsLookup
from bot.core.mailkinds import MailKind
from bot.core.rows import CaseRow
from bot.flows.compose import enqueue_mail, key_records
from bot.flows.desks import Workbench

if TYPE_CHECKING:
    from bot.adapters.keys import KeyStore


log = logging.getLogger("dkimbot")

# A domain past the DKIM step: its key is installed and signing.
ROTATABLE = (State.AWAITING_DMARC, State.AWAITING_FINAL, State.COMPLETED)


class RotationError(Exception):
    """The rotation cannot start; the message says why, for the staff member who asked."""


@dataclass
class Rotation:
    id: int
    domain: str
    old_selectors: list[str]
    new_selectors: list[str]
    status: str  # "pending" | "done" | "failed"
    created_at: datetime
    next_check_at: datetime
    done_at: datetime | None
    detail: dict[str, Any]

    @classmethod
    def from_row(cls, row: Any) -> Rotation:
        return cls(
            id=row["id"], domain=row["domain"], old_selectors=json.loads(row["old_selectors"]),
            new_selectors=json.loads(row["new_selectors"]), status=row["status"],
            created_at=datetime.fromisoformat(row["created_at"]),
            next_check_at=datetime.fromisoformat(row["next_check_at"]),
            done_at=datetime.fromisoformat(row["done_at"]) if row["done_at"] else None,
            detail=json.loads(row["detail"]),
        )


# --------------------------------------------------------------------------- storage


def rotations_for(store: Store, domain: str) -> list[Rotation]:
    return [Rotation.from_row(r) for r in store.rotations_for_domain(domain)]


def _due(store: Store, now: datetime) -> list[Rotation]:
    return [Rotation.from_row(r) for r in store.due_rotations(now)]


def _update(store: Store, rotation_id: int, **fields: Any) -> None:
    store.update_rotation(rotation_id, **fields)


def _mark_retired(store: Store, domain: str, selectors: list[str], now: datetime) -> None:
    for sel in selectors:
        store.retire_key(domain, sel, now)


def _cases(store: Store, domain: str, selectors: list[str] | None = None) -> list[CaseRow]:
    return [c for c in store.cases_for_domain(domain)
            if c.state in ROTATABLE and (selectors is None or c.selectors == selectors)]


# --------------------------------------------------------------------------- the command


def start_rotation(bench: Workbench, domain: str, who: str = "staff") -> Rotation:
    """Make the new selector and key(s), record the rotation, queue the record mail.

    A failed rotation of the domain is retried (same new key) instead of making another.
    """
    from bot.core.records import ed25519_selector, render_selector
    from bot.flows.selectors import choose_selector

    cfg = bench.cfg
    now = bench.clock()
    cases = _cases(bench.store, domain)
    if not cases:
        states = ", ".join(s.value for s in ROTATABLE)
        raise RotationError(f"{domain} has no case in {states}; only a signing domain can rotate")
    for r in rotations_for(bench.store, domain):
        if r.status == "pending":
            raise RotationError(f"{domain} is already rotating to {', '.join(r.new_selectors)} "
                                f"(since {r.created_at.isoformat()})")
        if r.status == "failed":
            with bench.store.transaction():
                _update(bench.store, r.id, status="pending", next_check_at=now)
                for c in _cases(bench.store, domain, r.old_selectors):
                    bench.store.add_event(c.id, now, "rotation_retry", detail={"new_selectors": r.new_selectors,
                                                                               "by": who})
            log.info("%s: retrying the failed rotation to %s", domain, ", ".join(r.new_selectors))
            return rotations_for(bench.store, domain)[-1]
    old = list(cases[0].selectors or [cases[0].selector or ""])
    cases = [c for c in cases if c.selectors == old]
    keys = {k["selector"]: k for k in bench.store.domain_keys(domain)}
    dual = any(keys.get(s, {}).get("algorithm") == "ed25519" for s in old) or (
        cfg.keys.ed25519 and cfg.keys.algorithm != "ed25519")
    selector = choose_selector(bench, domain, render_selector(cfg.keys.selector, now),
                               with_ed25519=dual, exclude=[*keys, *old])
    made = [bench.keystore.load_or_create(domain, selector, cfg.keys.algorithm, cfg.keys.bits)]
    if dual:
        made.append(bench.keystore.load_or_create(domain, ed25519_selector(selector), "ed25519", 256))
    new = [k.selector for k in made]
    with bench.store.transaction():
        for k in made:
            bench.store.record_key(domain, k.selector, k.algorithm, k.bits, k.public_b64, now)
        row = bench.store.add_rotation(domain, old, new, now)
        for c in cases:
            bench.store.add_event(c.id, now, "rotation_started", detail={"old_selectors": old, "new_selectors": new,
                                                                         "by": who})
        # The boxes are rendered from the new selectors; the case itself keeps the old.
        shown = CaseRow(**{**cases[0].__dict__, "selectors": new, "selector": new[0]})
        enqueue_mail(bench, MailKind.ROTATION_RECORD, cases, {
            "records": key_records(bench.store, shown),
            "old_names": [f"{s}._domainkey.{domain}" for s in old],
        })
    log.info("%s: rotation %s -> %s started", domain, ",".join(old), ",".join(new))
    return Rotation.from_row(row)


# --------------------------------------------------------------------------- the job


def rotation_once(bench: Workbench) -> int:
    """Finish every due rotation whose new record(s) verify; return how many were checked."""
    now = bench.clock()
    due = _due(bench.store, now)
    if not due:
        return 0
    client = bench.dns_client()
    for rotation in due:
        check_rotation(bench, rotation, client)
    return len(due)


def check_rotation(bench: Workbench, rotation: Rotation, client: DnsLookup) -> None:
    from bot.checks.keyplan import check_dkim_each, fold_dkim
    from bot.flows.selectors import expected_keys

    cfg = bench.cfg
    now = bench.clock()
    domain = rotation.domain
    dkim = fold_dkim(check_dkim_each(client, domain, expected_keys(bench.store, domain, rotation.new_selectors)))
    if not dkim.ok:
        codes = sorted({d.code for d in dkim.diagnoses if d.severity == "error"})
        # DNS errors in a row (kept in the rotation's detail) back off: soon, then less
        # often; any clean answer, even "not published yet", starts the count again.
        dns_errors = int(rotation.detail.get("dns_errors", 0)) + 1 if "dns_error" in codes else 0
        delay = (sm.dns_error_delay(cfg.schedule.check_interval_seconds, dns_errors) if dns_errors
                 else sm.next_check_at(now, rotation.created_at, cfg.schedule) - now)
        with bench.store.transaction():
            _update(bench.store, rotation.id, next_check_at=now + delay,
                    detail={**rotation.detail, "last_check": codes, "dns_errors": dns_errors})
        return
    ok, why = _switch(bench.cfg, bench.keystore, rotation, client)
    with bench.store.transaction():
        cases = _cases(bench.store, domain, rotation.old_selectors)
        if not ok:
            _update(bench.store, rotation.id, status="failed", detail={**rotation.detail, "failure": why})
            for c in cases:
                bench.store.add_event(c.id, now, "rotation_failed",
                                      detail={"reason": why, "dns": {"dkim": dkim.to_json()}})
            enqueue_mail(bench, MailKind.STAFF_ESCALATION, cases[:1], {
                "reason_title": f"key rotation of {domain} failed; the old key keeps signing",
                "reason": why,
                "decide_hint": f"Fix the signer, then run 'dkimbot rotate {domain}' to retry this rotation.",
                "diagnoses": [],
            }, staff_only=True)
            log.error("%s: rotation failed: %s", domain, why)
            return
        for sel in rotation.new_selectors:
            bench.store.mark_key_installed(domain, sel, now)
        _mark_retired(bench.store, domain, rotation.old_selectors, now)
        _update(bench.store, rotation.id, status="done", done_at=now, detail={**rotation.detail, "proof": why})
        updated = []
        for c in cases:
            updated.append(bench.store.update_case(c.id, now, selector=rotation.new_selectors[0],
                                                   selectors=rotation.new_selectors))
            bench.store.add_event(c.id, now, "rotation_done", detail={
                "old_selectors": rotation.old_selectors, "new_selectors": rotation.new_selectors,
                "proof": why, "dns": {"dkim": dkim.to_json()}})
        if updated:
            enqueue_mail(bench, MailKind.ROTATION_DONE, updated, {
                "new_names": [f"{s}._domainkey.{domain}" for s in rotation.new_selectors],
                "old": [{"fqdn": f"{s}._domainkey.{domain}", "host_label": f"{s}._domainkey"}
                        for s in rotation.old_selectors],
            })
    log.info("%s: signing switched to %s", domain, ", ".join(rotation.new_selectors))


def _switch(cfg: Config, keystore: KeyStore, rotation: Rotation, client: DnsLookup) -> tuple[bool, str]:
    """Prove each new key via DNS, install them retiring the old ones, prove again.

    Until the last install the old keys sign; if the installed keys then fail their
    proof, the old keys are put back (nothing was retired from DNS, so they verify).
    """
    from bot.adapters import signer
    from bot.checks.dnscheck import make_dkim_dnsfunc

    cfg = cfg
    domain = rotation.domain
    dnsfunc = make_dkim_dnsfunc(client)
    new = []
    for sel in rotation.new_selectors:
        key = keystore.get(domain, sel)
        if key is None:
            return False, f"no private key stored for {sel}._domainkey.{domain}"
        pem = keystore.private_pem(domain, sel)
        ok, why = signer.prove_signing(cfg, key, pem, dnsfunc)
        if not ok:
            return False, f"before switching: {why}"
        new.append((key, pem))
    notes = []
    try:
        for i, (key, pem) in enumerate(new):
            last = i == len(new) - 1
            signer.install_key(cfg, key, pem, retire=rotation.old_selectors if last else ())
        for key, pem in new:
            ok, why = signer.prove_signing(cfg, key, pem, dnsfunc)
            notes.append(why)
            if not ok:
                raise signer.SignerError(f"after switching: {why}")
    except Exception as exc:  # noqa: BLE001 - put the old keys back, then report
        problem = f"{type(exc).__name__}: {exc}"
        try:
            for key, _ in new:
                signer.uninstall_key(cfg, domain, key.selector)
            for sel in rotation.old_selectors:
                old_key = keystore.get(domain, sel)
                if old_key is not None and not signer_has(cfg, domain, sel):
                    signer.install_key(cfg, old_key, keystore.private_pem(domain, sel))
        except Exception as again:  # noqa: BLE001 - staff must clean up by hand
            problem += f"; restoring the old keys failed too ({type(again).__name__})"
        return False, problem
    return True, "; ".join(notes)


def signer_has(cfg: Any, domain: str, selector: str) -> bool:
    from bot.adapters.signer import installed_selectors

    return selector in installed_selectors(cfg, domain)


def describe(rotation: Rotation) -> str:
    """One line for the CLI."""
    return (f"{rotation.domain}: {rotation.status} rotation {', '.join(rotation.old_selectors)} -> "
            f"{', '.join(rotation.new_selectors)}")
