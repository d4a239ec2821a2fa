"""Proof of control before the bot publishes anything by itself (the simplified flow).

In a zone of the operator's own name servers the bot could publish for anyone who mails
support@, so it publishes only after the domain's own people proved control:

* a **token**: a confirmation mail goes to the admin address (it is at the domain) with
  a one-time token; a reply carrying it confirms. One reminder, then the request expires
  (the case is cancelled) and staff are told;
* the **registry** (``[registry] file``) lists the admin address: confirmed at once;
* **staff** confirm by hand (``dkimbot confirm CASE``, or the staff page), recorded as a
  staff event.

Confirmation is a transition inside the message's transaction; the RFC 2136 update
itself runs outside any transaction (``publish_confirmed_once``, early in each pass), so
SQLite's write lock never waits for a name server. What was written is kept
(``managed_records``), so a cancel removes exactly those values and nothing else.
At most one confirmation mail (first or reminder) goes to a managed zone per day: the worst a
stranger can cause is that mail and a note to staff.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from bot.adapters.registry import registry_for
from bot.adapters.store import Store
from bot.config import Config
from bot.core.authority import new_token, operator_zone, same_requester, tokens_in
from bot.core.cases import Event, State
from bot.core.mailkinds import MailKind
from bot.core.rows import CaseRow, parse_iso
from bot.flows.compose import enqueue_mail, key_records
from bot.flows.desks import Lookout, MailDesk, MailLookout, Office

log = logging.getLogger("dkimbot")


class ConfirmError(Exception):
    """Staff asked to confirm a case that is not waiting for confirmation (one line)."""


@dataclass(frozen=True)
class ManagedZone:
    zone: str
    nameservers: list[str]
    addresses: list[str]

    def refusal(self, managed: list[str]) -> str | None:
        """Why this zone must never get records from a request (the operator's own), or None."""
        return operator_zone(self.zone, self.nameservers, managed)


def managed_zone_for(lookout: Lookout, domain: str) -> ManagedZone | None:
    """The zone of ``domain`` when every name server of it is the operator's (DNS I/O)."""
    if not lookout.cfg.dns.managed_nameservers:
        return None
    from bot.flows.managed import find_managed_zone

    found = find_managed_zone(lookout.dns_client(), lookout.cfg, domain)
    return ManagedZone(found[0], list(found[1]), list(found[2])) if found else None


def _registry_lists(cfg: Config, address: str | None) -> bool:
    path = cfg.state_path(cfg.registry.file) if cfg.registry.file else None
    return registry_for(path).lists(address)


def _confirmed(store: Store, now: datetime, case: CaseRow, how: str, detail: dict[str, Any]) -> CaseRow:
    """awaiting_confirmation → awaiting_dkim (TRANSITIONS: CONFIRMED); the publish follows."""
    updated = store.transition(case.id, State.AWAITING_DKIM, now, expected_state=case.state,
                               event=Event.CONFIRMED.value, detail={"how": how, **detail},
                               next_check_at=now, reminders_sent=0)
    log.info("%s: control of %s confirmed (%s)", case.ref, case.domain, how)
    return updated


def _zone_mail_allowed(store: Store, zone: str, now: datetime, case: CaseRow) -> bool:
    """One confirmation mail a day per managed zone, not per requested name: a stranger
    naming info@r1.victim, info@r2.victim, ... must not make the bot mail the victim's
    mail server once per label he invents (red team, issue 11).

    A request mailed from its admin address itself is not held: its reply goes to that
    address anyway, so its token mail reaches no one new, and a stranger's requests for
    the zone (one a day is enough) must not keep the domain's own admin waiting until
    its request expires (domain squatting)."""
    if same_requester(case, case.admin_email):
        return True
    return store.confirmation_mails_in_zone_since(zone, now - timedelta(days=1)) == 0


def _zone_of(store: Store, case: CaseRow, domain: str) -> str:
    """The managed zone recorded when the confirmation was opened (else the domain)."""
    for event in reversed(store.events(case.id)):
        if event["kind"] == "confirmation_opened":
            zone = (event.get("detail") or {}).get("zone")
            if isinstance(zone, str) and zone:
                return zone
    return domain


def _mail(desk: MailDesk, case: CaseRow, row: dict[str, Any], *, reminder: bool) -> None:
    enqueue_mail(desk, MailKind.CONFIRM_REQUEST, [case], {
        "token": row["token"], "reminder": reminder, "admin_email": row["address"],
        "domain": case.domain, "requester": case.requester or "",
        "wait_hours": int(desk.cfg.schedule.confirm_wait_hours),
    }, to=[row["address"]], in_reply_to="", references=[])
    desk.store.set_confirmation(row["id"], desk.clock(), mailed=not reminder, reminded=reminder)


def open_confirmation(desk: MailDesk, case: CaseRow, zone: ManagedZone) -> tuple[CaseRow, str]:
    """Inside the request's transaction: start proving control of ``case``'s domain.

    Returns the case and how it went: "registry" (confirmed at once), "mailed" (the
    token went to the admin address) or "held" (a confirmation mail went to this domain
    in the last day; ``confirm_due_once`` sends it once the day is over).
    """
    now = desk.clock()
    assert case.domain and case.admin_email
    store = desk.store
    if _registry_lists(desk.cfg, case.admin_email):
        store.add_confirmation(case_id=case.id, domain=case.domain, address=case.admin_email,
                               token=None, status="confirmed", how="registry", now=now)
        return _confirmed(desk.store, desk.clock(), case, "registry", {"zone": zone.zone}), "registry"
    token = new_token()
    cid = store.add_confirmation(case_id=case.id, domain=case.domain, address=case.admin_email,
                                 token=token, status="pending", how=None, now=now)
    store.add_event(case.id, now, "confirmation_opened", detail={
        "zone": zone.zone, "nameservers": zone.nameservers, "address": case.admin_email})
    if not _zone_mail_allowed(desk.store, zone.zone, now, case):
        store.add_event(case.id, now, "confirmation_mail_held", detail={
            "reason": f"a confirmation mail went to the zone {zone.zone} in the last 24 hours"})
        return case, "held"
    row = {"id": cid, "token": token, "address": case.admin_email}
    _mail(desk, case, row, reminder=False)
    return store.get_case(case.id), "mailed"


def confirm_by_token(store: Store, now: datetime, parsed: Any) -> str | None:
    """Inside the message's transaction: a mail carrying a live token confirms its case.

    Returns the outcome for the handled mark, or None when the mail carries no token
    the bot issued (then it is an ordinary mail).
    """
    text = f"{parsed.subject}\n{parsed.body_text or ''}"
    for token in tokens_in(text):
        row = store.confirmation_by_token(token)
        if row is None:
            continue
        case = store.get_case(row["case_id"])
        if row["status"] != "pending" or case.state != State.AWAITING_CONFIRMATION:
            store.add_event(case.id, now, "confirmation_token_stale", detail={
                "status": row["status"], "state": case.state, "message_id": parsed.message_id})
            return f"confirmation token of {case.ref}: already {row['status']}"
        store.set_confirmation(row["id"], now, status="confirmed", how="token", detail={
            "message_id": parsed.message_id, "from": parsed.from_addr})
        _confirmed(store, now, case, "token", {"message_id": parsed.message_id})
        return f"confirmed {case.ref} (token)"
    return None


def staff_confirm(desk: MailLookout, case: CaseRow, who: str = "staff") -> CaseRow:
    """Staff vouch for the requester (CLI ``dkimbot confirm``, the staff page): confirm
    and publish now. Raises ConfirmError when the case is not waiting for confirmation."""
    with desk.store.transaction():
        case = desk.store.get_case(case.id)
        if case.state != State.AWAITING_CONFIRMATION or not case.domain or not case.admin_email:
            raise ConfirmError(f"{case.ref} is {case.state}, not waiting for confirmation")
        now = desk.clock()
        row = desk.store.confirmation_for_case(case.id)
        if row is not None and row["status"] == "pending":
            desk.store.set_confirmation(row["id"], now, status="confirmed", how="staff", detail={"by": who})
        else:
            desk.store.add_confirmation(case_id=case.id, domain=case.domain, address=case.admin_email,
                                        token=None, status="confirmed", how="staff", now=now)
        desk.store.add_event(case.id, now, "staff_confirm", detail={"by": who})
        _confirmed(desk.store, desk.clock(), case, "staff", {"by": who})
    publish_confirmed_once(desk)
    return desk.store.get_case(case.id)


def _escalate(desk: MailDesk, case: CaseRow, title: str, reason: str, hint: str) -> None:
    enqueue_mail(desk, MailKind.STAFF_ESCALATION, [case], {
        "reason_title": title, "reason": reason, "decide_hint": hint, "diagnoses": []}, staff_only=True)


def publish_confirmed_once(desk: MailLookout) -> int:
    """Publish the records of every confirmed, not yet published case (RFC 2136, outside
    any transaction); returns how many were published."""
    from bot.flows.managed import publish_for_domain

    done = 0
    for row in desk.store.confirmations_with_status("confirmed"):
        case = desk.store.get_case(row["case_id"])
        if case.state in (State.CANCELLED, State.REJECTED) or not case.domain:
            with desk.store.transaction():
                desk.store.set_confirmation(row["id"], desk.clock(), status="void")
            continue
        zone = managed_zone_for(desk, case.domain)
        refusal = zone.refusal(desk.cfg.dns.managed_nameservers) if zone else None
        result = (publish_for_domain(desk.cfg, desk.dns_client(), case.domain, key_records(desk.store, case))
                  if zone and not refusal else None)
        now = desk.clock()
        with desk.store.transaction():
            if result is None or result.error:
                why = refusal or (result.error if result else "the zone is no longer on our name servers")
                desk.store.set_confirmation(row["id"], now, status="failed", detail={"error": why})
                desk.store.add_event(case.id, now, "managed_publish", detail={
                    "zone": zone.zone if zone else None, "published": [], "error": why})
                _escalate(desk, case, "publishing in a managed zone failed",
                          f"Control of {case.domain} was confirmed ({row['how']}), but publishing "
                          f"failed: {why}",
                          "Publish the DKIM record in the zone by hand, or cancel the case; the bot "
                          "keeps checking and continues by itself.")
                continue
            for owner, value in result.values.items():
                desk.store.add_managed_record(case.id, result.zone, result.server, owner, value, now)
            desk.store.set_confirmation(row["id"], now, status="published")
            desk.store.add_event(case.id, now, "managed_publish", detail={
                "zone": result.zone, "nameservers": result.nameservers,
                "published": result.published, "error": None})
            desk.store.update_case(case.id, now, next_check_at=now)
        done += 1
    return done


def confirm_due_once(desk: MailDesk) -> int:
    """Held first mails, the one reminder, and expiry; returns how many rows moved."""
    now = desk.clock()
    wait = timedelta(hours=desk.cfg.schedule.confirm_wait_hours)
    moved = 0
    for row in desk.store.confirmations_with_status("pending"):
        case = desk.store.get_case(row["case_id"])
        with desk.store.transaction():
            if case.state != State.AWAITING_CONFIRMATION:
                desk.store.set_confirmation(row["id"], now, status="void")
                continue
            mailed, reminded = parse_iso(row["mailed_at"]), parse_iso(row["reminded_at"])
            if mailed is None:
                created = parse_iso(row["created_at"])
                if created is not None and now >= created + 2 * wait:
                    # Held all this time (one mail a day per zone): a stranger's thousand
                    # names in one zone must not make a thousand days of mail (red team).
                    _expire(desk, case, row, now, mailed=False)
                    moved += 1
                elif _zone_mail_allowed(desk.store, _zone_of(desk.store, case, row["domain"]), now, case):
                    _mail(desk, case, row, reminder=False)
                    moved += 1
            elif reminded is None and now >= mailed + wait:
                if _zone_mail_allowed(desk.store, _zone_of(desk.store, case, row["domain"]), now, case):
                    _mail(desk, case, row, reminder=True)
                    desk.store.add_event(case.id, now, "confirmation_reminder")
                    moved += 1
            elif reminded is not None and now >= reminded + wait:
                _expire(desk, case, row, now)
                moved += 1
    return moved


def _expire(desk: MailDesk, case: CaseRow, row: dict[str, Any], now: datetime, *, mailed: bool = True) -> None:
    desk.store.set_confirmation(row["id"], now, status="expired")
    updated = desk.store.transition(case.id, State.CANCELLED, now, expected_state=case.state,
                                    event=Event.CONFIRMATION_EXPIRED.value, detail={"address": row["address"]},
                                    next_check_at=None)
    _escalate(desk, updated, "a managed-zone request was never confirmed",
              f"Nobody at {row['address']} confirmed the request for {case.domain} (requested by "
              f"{case.requester}); "
              + ("after one reminder it expired" if mailed else "its confirmation mail was never sent (one a "
                 "day per zone, and other requests for the zone went first), so it expired")
              + " and the case is cancelled. "
              "Nothing was published and no key was installed.",
              "Nothing to do unless the facility contacts you; a new request starts over.")
    log.info("%s: confirmation expired; cancelled", case.ref)


def remove_published(office: Office, case: CaseRow) -> list[str]:
    """Delete the values the bot published for ``case`` (exact rdata, RFC 2136) unless
    another live case of the domain still relies on them. Outside any transaction;
    raises on a failed update (the cancel then stops, as for the signer)."""
    from bot.flows.managed import delete_txt_values

    records = office.store.managed_records(case.id)
    if not records:
        return []
    others = [c for c in office.store.cases_for_domain(case.domain or "")
              if c.id != case.id and c.state not in (State.CANCELLED, State.REJECTED)]
    if others:
        return []
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["zone"], r["server"]), []).append(r)
    removed: list[str] = []
    for (zone, server), rows in groups.items():
        delete_txt_values(office.cfg, zone, server, [(r["owner"], r["value"]) for r in rows])
        with office.store.transaction():
            office.store.mark_managed_records_removed([r["id"] for r in rows], office.clock())
        removed += [r["owner"] for r in rows]
    return removed
