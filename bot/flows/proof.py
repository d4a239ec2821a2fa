"""End-to-end proof (SPEC §8, optional): a signed probe to a real receiver, its verdict read back.

When a case completes (or on ``dkimbot proof CASE``) a small probe goes From
``[proof] from_localpart@<facility domain>`` To ``[proof] address`` through the outbox,
so the ordinary transport delivers it and ``flush_outbox_once`` DKIM-signs it with the
domain's installed key(s) exactly as the facility's own mail is signed. It is queued
with no case attached: it is not facility mail, so the per-case and per-address daily
limits must not count it. A ``proofs`` row remembers it.

Each pass ``proof_once`` reads the proof mailbox (IMAP, read-only, BODY.PEEK: the
mailbox may be a person's), finds each waiting probe by its Message-ID and parses the
receiver's ``Authentication-Results`` (bot/core/authresults.py) into items. The case's events
get the items; staff get the item-by-item report (and the facility too, if
``notify_facility``); a DKIM result other than pass for the facility's domain, or a
DMARC fail, escalates to staff. A probe not found within ``wait_minutes`` is reported
as not received, but only after a successful read: a mailbox we could not open says
nothing about the probe.
"""

from __future__ import annotations

import email
import email.policy
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from typing import Any

from bot.adapters.mailout import LOOP_HEADER
from bot.adapters.store import Store
from bot.config import Config
from bot.core.authresults import (
    AuthResult,
    AuthResults,
    AuthResultsError,
    parse_authentication_results,
)
from bot.core.cases import State
from bot.core.mailkinds import MailKind
from bot.core.rows import CaseRow, parse_iso
from bot.flows.compose import enqueue_mail
from bot.flows.desks import MailDesk, Office

log = logging.getLogger("dkimbot")

PROOF_HEADER = "X-Dkimbot-Proof"
# A case completed longer ago than this gets no automatic probe: turning the feature on
# must not send one for every case the bot ever completed. `dkimbot proof` still can.
AUTO_PROBE_WITHIN = timedelta(days=7)
# States in which the domain's key is installed in the signer, so a probe means something.
PROVABLE = (State.AWAITING_DMARC, State.AWAITING_FINAL, State.COMPLETED, State.DKIM_LOST)


class ProofError(Exception):
    """A probe cannot be sent for this case; the message is one line for staff."""


class ProofMailboxError(Exception):
    """The proof mailbox cannot be read now; tried again next pass."""


@dataclass
class Verdict:
    """The receiver's results for one probe, judged for the facility's domain."""

    authserv_id: str
    items: list[dict[str, Any]]   # one per result: method, result, detail (for events and mails)
    dkim_ok: bool                 # a dkim=pass whose signing domain aligns with the From domain
    dmarc_ok: bool
    spf_ok: bool
    dmarc_result: str | None
    problems: list[str]           # English, for staff; empty when nothing needs a human

    @property
    def ok(self) -> bool:
        return not self.problems


# -- pure ------------------------------------------------------------------------------------


def aligned(signing_domain: str | None, from_domain: str) -> bool:
    """DMARC relaxed alignment (RFC 7489 §3.1.1): the same organisational domain (PSL)."""
    if not signing_domain:
        return False
    from bot.checks.dnscheck import check_alignment

    return check_alignment(from_domain, signing_domain, "r").ok


def choose_results(headers: list[str], authserv_id: str = "") -> AuthResults | None:
    """The receiver's own Authentication-Results among a message's headers (top first).

    RFC 8601 §5: only results from a trusted authserv-id count; without one configured,
    the topmost header, which the last hop (the receiver) prepended, is taken.
    """
    for value in headers:
        try:
            parsed = parse_authentication_results(value)
        except AuthResultsError:
            continue
        if not authserv_id or parsed.authserv_id == authserv_id.lower():
            return parsed
    return None


def judge(results: AuthResults, domain: str) -> Verdict:
    """Item by item, and whether anything needs a human (dkim not passing, DMARC fail)."""
    items = [_item(r) for r in results.results]
    dkims = results.by_method("dkim")
    dkim_ok = any(r.result == "pass" and aligned(r.dkim_domain, domain) for r in dkims)
    dmarcs = results.by_method("dmarc")
    dmarc_result = dmarcs[0].result if dmarcs else None
    spf_ok = any(r.result == "pass" for r in results.by_method("spf"))
    problems: list[str] = []
    if not dkim_ok:
        seen = ", ".join(r.describe() for r in dkims) or "no dkim result at all"
        problems.append(f"the receiver did not pass the DKIM signature of {domain}: {seen}")
    if dmarc_result in ("fail", "permerror"):
        problems.append(f"the receiver's DMARC result for {domain} is {dmarc_result}")
    return Verdict(authserv_id=results.authserv_id, items=items, dkim_ok=dkim_ok,
                   dmarc_ok=dmarc_result == "pass", spf_ok=spf_ok, dmarc_result=dmarc_result,
                   problems=problems)


def _item(r: AuthResult) -> dict[str, Any]:
    keep = ("header.d", "header.i", "header.s", "header.from", "smtp.mailfrom", "policy.dmarc")
    detail = " ".join(f"{k}={v}" for k, v in r.props.items() if k in keep)
    return {"method": r.method, "result": r.result, "detail": detail, "comment": r.comment}


def receiver_requirements(verdict: Verdict, rsa_bits: list[int]) -> list[dict[str, Any]]:
    """Gmail's and Yahoo's sender requirements, judged from what the receiver saw."""
    shortest = min(rsa_bits) if rsa_bits else None
    return [
        {"name": "SPFまたはDKIMによる認証に合格していること", "ok": verdict.spf_ok or verdict.dkim_ok},
        {"name": "DMARCのレコードが公開されていること",
         "ok": verdict.dmarc_result not in (None, "none")},
        {"name": "送信元アドレスのドメインとDKIM署名のドメインが一致していること", "ok": verdict.dkim_ok},
        {"name": "DKIMの鍵の長さが1024ビット以上であること", "ok": shortest is None or shortest >= 1024,
         "note": f"（{shortest}ビット）" if shortest else "（Ed25519）"},
    ]


def build_probe(cfg: Config, case: CaseRow, now: datetime) -> tuple[str, str, bytes]:
    """(Message-ID, From address, raw) of a probe for ``case``; unsigned (the outbox signs)."""
    domain = case.domain or ""
    message_id = f"<dkimbot-proof.{uuid.uuid4().hex}@{domain}>"
    sender = f"{cfg.proof.from_localpart}@{domain}"
    msg = EmailMessage(policy=SMTP)
    msg["From"] = Address(display_name="", username=cfg.proof.from_localpart, domain=domain)
    msg["To"] = cfg.proof.address
    # No case reference in the subject: if the proof mailbox is the support mailbox,
    # intake must not take the probe for a facility's reply.
    msg["Subject"] = f"dkimbot DKIM/DMARC proof for {domain}"
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = message_id
    msg["Auto-Submitted"] = "auto-generated"
    msg[LOOP_HEADER] = cfg.bot_domain
    msg[PROOF_HEADER] = case.ref
    msg.set_content(
        f"This automatic message proves that mail from {domain} is DKIM-signed and passes\n"
        f"DMARC at a real receiver ({case.ref}). It needs no answer and can be deleted.\n",
        charset="us-ascii",
    )
    return message_id, sender, msg.as_bytes()


# -- queueing --------------------------------------------------------------------------------


def queue_probe(office: Office, case: CaseRow, by: str = "bot") -> str:
    """Queue one probe for ``case`` (its own transaction); returns its Message-ID."""
    from bot.adapters.signer import installed_keys

    cfg = office.cfg
    if not cfg.proof.enabled:
        raise ProofError("the end-to-end proof is off ([proof] enabled = false)")
    if not case.domain or case.state not in PROVABLE:
        raise ProofError(f"{case.ref} is {case.state}: its key is not signing mail yet")
    if not installed_keys(cfg, case.domain):
        raise ProofError(f"no DKIM key for {case.domain} is installed in the signer")
    now = office.clock()
    message_id, sender, raw = build_probe(cfg, case, now)
    deadline = now + timedelta(minutes=cfg.proof.wait_minutes)
    with office.store.transaction():
        office.store.enqueue(message_id=message_id, kind="proof_probe", case_ids=[], sender=sender,
                             recipients=[cfg.proof.address], raw=raw, now=now)
        office.store.add_proof(case.id, message_id, case.domain, cfg.proof.address, now, deadline)
        office.store.add_event(case.id, now, "proof_sent", detail={
            "message_id": message_id, "to": cfg.proof.address, "by": by,
            "wait_minutes": cfg.proof.wait_minutes})
    log.info("%s: proof probe %s queued for %s", case.ref, message_id, case.domain)
    return message_id


def proofs_for(store: Store, case_id: int) -> list[dict[str, Any]]:
    return store.proofs_for_case(case_id)


def _auto_probes(office: Office) -> int:
    now = office.clock()
    count = 0
    for case in office.store.list_cases((State.COMPLETED.value,)):
        if now - case.state_since > AUTO_PROBE_WITHIN:
            continue
        if office.store.has_proof(case.id):
            continue
        try:
            queue_probe(office, case)
        except ProofError as exc:
            log.warning("%s: no proof probe: %s", case.ref, exc)
            continue
        count += 1
    return count


# -- reading back ----------------------------------------------------------------------------


def fetch_probe_headers(cfg: Config, message_ids: list[str]) -> dict[str, bytes]:
    """The header block of each probe found in the proof mailbox, by Message-ID.

    Read-only (EXAMINE) and BODY.PEEK: the bot never marks or moves anything there.
    """
    from bot.adapters.intake import connect_imap

    p = cfg.proof
    try:
        client = connect_imap(p.imap_host, p.imap_port, p.imap_tls, p.imap_username,
                              p.imap_password, p.imap_timeout)
    except Exception as exc:  # noqa: BLE001 - socket, TLS and IMAP errors alike: try again next pass
        raise ProofMailboxError(f"proof mailbox {p.imap_host}:{p.imap_port} unavailable: {exc}") from None
    found: dict[str, bytes] = {}
    try:
        client.select_folder(p.imap_folder, readonly=True)
        for mid in message_ids:
            # The unique part only: HEADER search is a substring match, and some servers
            # mishandle the angle brackets.
            token = mid.strip("<>").partition("@")[0]
            uids = client.search(["HEADER", "Message-ID", token])
            if not uids:
                continue
            data = client.fetch(uids, ["BODY.PEEK[HEADER]"])
            for uid in sorted(data):
                header = bytes(data[uid].get(b"BODY[HEADER]") or b"")
                msg = email.message_from_bytes(header, policy=email.policy.compat32)
                if (msg.get("Message-ID") or "").strip() == mid:
                    found[mid] = header
                    break
    except Exception as exc:  # noqa: BLE001 - a server dying mid-read: try again next pass
        raise ProofMailboxError(f"proof mailbox {p.imap_host}:{p.imap_port} failed: {exc}") from None
    finally:
        try:
            client.logout()
        except Exception:  # noqa: BLE001, S110 - the connection is going away anyway
            pass
    return found


def ar_headers(header: bytes) -> list[str]:
    """Every Authentication-Results value of a header block, top first, unfolded."""
    msg = email.message_from_bytes(header, policy=email.policy.compat32)
    return [" ".join(str(v).split()) for v in msg.get_all("Authentication-Results") or []]


def proof_once(desk: MailDesk) -> int:
    """Queue probes for newly completed cases; read back waiting ones. Returns probes settled."""
    cfg = desk.cfg
    if not cfg.proof.enabled:
        return 0
    _auto_probes(desk)
    waiting = desk.store.waiting_proofs()
    if not waiting:
        return 0
    outbox = desk.store.outbox_of_kind("proof_probe")
    sent = [p["message_id"] for p in waiting if outbox.get(p["message_id"], {}).get("status") == "sent"]
    try:
        found = fetch_probe_headers(cfg, sent) if sent else {}
    except ProofMailboxError as exc:
        log.warning("proof: %s", exc)
        return 0  # nothing can be said about any probe until the mailbox can be read
    now = desk.clock()
    settled = 0
    for proof in waiting:
        mid = proof["message_id"]
        if mid in found:
            _record_result(desk, proof, found[mid])
        elif now >= (parse_iso(proof["deadline_at"]) or now):
            row = outbox.get(mid, {})
            why = (f"the probe could not be delivered: {row.get('last_error')}"
                   if row.get("status") in ("failed", "pending") else
                   f"the probe was not in the proof mailbox {cfg.proof.imap_folder} after "
                   f"{cfg.proof.wait_minutes:g} minutes")
            _record_missing(desk, proof, why)
        else:
            continue
        settled += 1
    return settled


def _finish(store: Store, now: datetime, proof: dict[str, Any], status: str, result: dict[str, Any]) -> None:
    store.finish_proof(proof["id"], status, now, result)


def _record_result(desk: MailDesk, proof: dict[str, Any], header: bytes) -> None:
    case = desk.store.get_case(proof["case_id"])
    domain = proof["domain"]
    chosen = choose_results(ar_headers(header), desk.cfg.proof.authserv_id)
    if chosen is None:
        verdict = Verdict(authserv_id="", items=[], dkim_ok=False, dmarc_ok=False, spf_ok=False,
                          dmarc_result=None,
                          problems=["the probe arrived without an Authentication-Results header"
                                    + (f" from {desk.cfg.proof.authserv_id}" if desk.cfg.proof.authserv_id else "")])
    else:
        verdict = judge(chosen, domain)
    now = desk.clock()
    detail = {"message_id": proof["message_id"], "authserv_id": verdict.authserv_id,
              "items": verdict.items, "dkim_ok": verdict.dkim_ok, "dmarc_ok": verdict.dmarc_ok,
              "ok": verdict.ok, "problems": verdict.problems}
    rsa_bits = [k["bits"] for k in desk.store.domain_keys(domain)
                if k["algorithm"] == "rsa" and k["installed_at"] and not k["retired_at"]]
    requirements = receiver_requirements(verdict, rsa_bits)
    with desk.store.transaction():
        _finish(desk.store, desk.clock(), proof, "received", detail)
        desk.store.add_event(case.id, now, "proof_result", detail=detail)
        ctx = {"received": True, "proof": proof, "verdict": verdict, "requirements": requirements}
        if verdict.ok:
            enqueue_mail(desk, MailKind.STAFF_PROOF_REPORT, [case], ctx, staff_only=True)
            if desk.cfg.proof.notify_facility:
                enqueue_mail(desk, MailKind.PROOF_REPORT, [case], ctx)
        else:
            items = "\n".join(f"  {i['method']}={i['result']} {i['detail']}".rstrip() for i in verdict.items)
            enqueue_mail(desk, MailKind.STAFF_ESCALATION, [case], {
                "reason_title": "the end-to-end proof failed at the receiver",
                "reason": f"The probe {proof['message_id']} to {proof['address']} arrived, but:\n"
                          + "\n".join(f"- {p}" for p in verdict.problems)
                          + f"\n\nThe receiver's results ({verdict.authserv_id or 'no authserv-id'}):\n"
                          + (items or "  (none)"),
                "decide_hint": "Compare the published DKIM record with the installed key "
                               f"('dkimbot check {domain}'); fix the signer or ask the facility, "
                               f"then 'dkimbot proof {case.ref}' to prove it again.",
                "diagnoses": [],
            }, staff_only=True)
    log.info("%s: proof %s: %s", case.ref, proof["message_id"],
             "; ".join(f"{i['method']}={i['result']}" for i in verdict.items) or "no results")


def _record_missing(desk: MailDesk, proof: dict[str, Any], why: str) -> None:
    case = desk.store.get_case(proof["case_id"])
    now = desk.clock()
    detail = {"message_id": proof["message_id"], "why": why}
    with desk.store.transaction():
        _finish(desk.store, desk.clock(), proof, "not_received", detail)
        desk.store.add_event(case.id, now, "proof_not_received", detail=detail)
        enqueue_mail(desk, MailKind.STAFF_PROOF_REPORT, [case], {
            "received": False, "proof": proof, "why": why, "verdict": None, "requirements": [],
        }, staff_only=True)
    log.warning("%s: proof %s not received: %s", case.ref, proof["message_id"], why)
