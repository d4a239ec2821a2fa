"""Who may make the bot act on a case, and on which zones it may act. Pure: no I/O.

The support address is public: every mail is a stranger's until the domain's own people
are proven (issue 11, README "Security model"). The rules here are small on purpose so
they can be read in one sitting:

* a case's **parties** are its requester, its contact address and its admin address;
* a reply **acts** on a case (recheck, rekey, corrected fields) only when it comes from a
  party *and* answers a mail the bot sent on that case (In-Reply-To/References) or
  carries the case's confirmation token;
* the bot **publishes** in a zone of the operator's name servers only after the admin
  address proved control (token, registry, staff), and never in the operator's own zones;
* per-sender limits count an address with its ``+tag`` (and, at gmail.com, its dots)
  folded away, so ``a+1@`` and ``a.b@`` are not new senders.
"""

from __future__ import annotations

import re
import secrets
import unicodedata
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Protocol


class CaseParties(Protocol):
    requester: str | None
    contact_email: str | None
    admin_email: str | None


def parties(case: CaseParties) -> frozenset[str]:
    """The addresses that may act for a case (folded, so a +tag of a party is the party)."""
    return frozenset(fold_address(a) for a in (case.requester, case.contact_email, case.admin_email) if a)


def is_party(case: CaseParties, senders: Iterable[str | None]) -> bool:
    own = parties(case)
    return any(fold_address(s) in own for s in senders if s)


def answers_bot_mail(in_reply_to: str | None, references: Iterable[str], bot_ids: Collection[str]) -> bool:
    """Does a mail thread onto one the bot sent (by Message-ID, as mailers thread replies)?"""
    ids = [i for i in (in_reply_to, *references) if i]
    return any(i in bot_ids for i in ids)


@dataclass(frozen=True)
class Standing:
    """May a reply act on a case, and if not, why (for the staff note and the event)."""

    may_act: bool
    why: str


def reply_standing(case: CaseParties, senders: Iterable[str | None], *, threads_on_bot_mail: bool,
                   carries_token: bool) -> Standing:
    party = is_party(case, senders)
    if not party:
        return Standing(False, "the sender is not a party of the case (requester, contact, admin address)")
    if not (threads_on_bot_mail or carries_token):
        return Standing(False, "the mail does not answer a mail the bot sent on the case, nor carry its token")
    return Standing(True, "party, answering the bot's mail" if threads_on_bot_mail else "party, with the case's token")


# A case is *proven* once the domain's own people acted on it: in the normal flow the
# exact DKIM record went up on every authoritative server and a probe verified
# (dkim_proven: every state past awaiting_dkim), in the simplified flow the admin address
# confirmed (token, registry, staff), or staff adopted a domain already signed. Before
# that, a case is only a claim by whoever mailed support@.
PROVEN_STATES = frozenset({"awaiting_dmarc", "awaiting_final", "completed", "dkim_lost", "signing_stopped"})
PROOF_EVENTS = frozenset({"dkim_proven", "confirmed", "adopted"})


def is_proven(state: str, event_kinds: Iterable[str]) -> bool:
    """Has the domain's own side proved control on this case (see above)?"""
    return state in PROVEN_STATES or any(k in PROOF_EVENTS for k in event_kinds)


def same_requester(case: CaseParties, sender: str | None) -> bool:
    """Is ``sender`` the address that opened the case (folded)? Before a case is proven its
    contact and admin addresses are only what the requester wrote, so they do not make
    their owners part of the requester's case."""
    return bool(sender and case.requester and fold_address(sender) == fold_address(case.requester))


class CaseContact(CaseParties, Protocol):
    domain: str | None
    state: str


def may_copy_contact(case: CaseContact, requester: str | None, *, shared_domains: Collection[str]) -> bool:
    """Is the contact address copied on the case's facility mail? Only when it is at the
    requester's domain, or at the facility's own domain once the domain's people proved
    control: a stranger must not make the bot mail addresses of their choosing, nor hand
    the real facility a record whose publication would carry the stranger's case on.
    A requester at a domain many strangers share (``shared_domains``: the free-mail list)
    does not make the other mailboxes there colleagues: mallory@gmail.com naming
    victim@gmail.com as contact got victim the reply (review, 2026-12-01)."""
    contact = (case.contact_email or "").lower()
    if not contact or case.state in ("needs_info", "awaiting_confirmation", "rejected"):
        return False
    domain = contact.rpartition("@")[2]
    requester_domain = (requester or "").lower().rpartition("@")[2]
    shared = any(_at_or_under(requester_domain, s.lower().rstrip(".")) for s in shared_domains)
    allowed = set() if shared else {requester_domain}
    if case.state in PROVEN_STATES:
        allowed.add((case.domain or "").lower())
    return domain in allowed - {""}


# -- addresses ---------------------------------------------------------------------------------

_DOT_FOLDING = frozenset({"gmail.com", "googlemail.com"})


def fold_address(address: str) -> str:
    """One mailbox, one key: lower case, ``+tag`` dropped, and gmail.com's dots dropped."""
    local, at, domain = address.strip().lower().rpartition("@")
    if not at:
        return address.strip().lower()
    local = local.split("+", 1)[0] or local
    if domain in _DOT_FOLDING:
        local = local.replace(".", "")
        domain = "gmail.com"
    return f"{local}@{domain}"


# -- zones -------------------------------------------------------------------------------------


def _pattern_base(pattern: str) -> str:
    p = pattern.lower().rstrip(".")
    return p.lstrip("*").lstrip(".")


def _at_or_under(name: str, parent: str) -> bool:
    return bool(parent) and (name == parent or name.endswith("." + parent))


def operator_zone(zone: str, ns_names: Iterable[str], managed: Iterable[str]) -> str | None:
    """Why ``zone`` is the operator's own and must never get records from a request, or None.

    The operator's zones are those holding its name servers: the domain a
    ``managed_nameservers`` entry names (``ns1.489ban.net`` → 489ban.net and below), and
    any zone that serves its own name servers (in-bailiwick NS: infrastructure, not a
    facility's domain).
    """
    z = zone.lower().rstrip(".")
    for pattern in managed:
        base = _pattern_base(pattern)
        # "ns1.489ban.net": its parent domain is the operator's; ".489ban.net": itself.
        parent = base if pattern.lstrip("*").startswith(".") else base.partition(".")[2]
        if _at_or_under(z, parent) or _at_or_under(parent, z):
            return f"zone {z} holds the operator's name servers ({pattern})"
    for ns in ns_names:
        if _at_or_under(ns.lower().rstrip("."), z):
            return f"zone {z} serves its own name server {ns}"
    return None


# -- look-alikes (UTS #39) ---------------------------------------------------------------------

_SPOOF: list[object] = []


def skeleton(text: str) -> str:
    """The UTS #39 confusable skeleton of ``text`` (ICU's SpoofChecker.getSkeleton, via
    PyICU; lower-cased first, as domain names compare case-insensitively). Two strings
    with the same skeleton look alike: "489bаn.net" (Cyrillic а) and "489ban.net"."""
    if not _SPOOF:
        import icu  # PyICU (pyicu-wheels): ~0.1 s to import, only when a domain is judged

        _SPOOF.append(icu.SpoofChecker())
    checker = _SPOOF[0]
    return str(checker.getSkeleton(0, text.lower()))  # type: ignore[attr-defined]


def _unicode_domain(domain: str) -> str:
    try:
        return domain.encode("ascii").decode("idna").lower()
    except UnicodeError:
        return domain.lower()


def lookalike_of(domain: str, own: Iterable[str]) -> str | None:
    """The own domain ``domain`` (or a parent of it) is a confusable of, or None.

    An admin address at "489bаn.net" would otherwise get a key that signs as the
    operator's look-alike; it is rejected like the own domain itself (issue 11).
    """
    labels = _unicode_domain(domain.rstrip(".")).split(".")
    wanted = {skeleton(_unicode_domain(o.rstrip("."))): o for o in own if o}
    for i in range(len(labels) - 1):
        suffix = ".".join(labels[i:])
        hit = wanted.get(skeleton(suffix))
        if hit is not None:
            return hit
    return None


# -- confirmation tokens -----------------------------------------------------------------------

# Crockford-style alphabet: no 0/O, 1/I/L, so a token read aloud or retyped survives.
_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
TOKEN_PREFIX = "DKIMC"
_TOKEN = re.compile(rf"{TOKEN_PREFIX}-([{_ALPHABET}]{{4}})-([{_ALPHABET}]{{4}})-([{_ALPHABET}]{{4}})")


def new_token() -> str:
    """A one-time confirmation token: 12 symbols of 31, about 59 bits."""
    groups = ["".join(secrets.choice(_ALPHABET) for _ in range(4)) for _ in range(3)]
    return "-".join([TOKEN_PREFIX, *groups])


def tokens_in(text: str) -> list[str]:
    """The confirmation tokens a mail carries (full-width or lower-case typing too)."""
    norm = unicodedata.normalize("NFKC", text[:200_000]).upper()
    found: list[str] = []
    for m in _TOKEN.finditer(norm):
        token = "-".join([TOKEN_PREFIX, *m.groups()])
        if token not in found:
            found.append(token)
    return found
