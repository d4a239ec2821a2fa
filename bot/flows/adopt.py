"""``dkimbot adopt``: take in the domains the operator had already signed by hand.

The SaaS onboarded facilities before dkimbot existed: their keys are in OpenDKIM's
KeyTable/SigningTable. Each domain there whose published record matches its key on
every authoritative name server becomes a ``completed`` case (event ``adopted``, with the
DNS evidence), so it is watched daily, can be rotated, and shows in the digest, exactly
like a domain the bot onboarded itself. Nobody is mailed: the facility did nothing new,
and the case has no facility address (later warnings about it go to staff).

A domain whose record does not match (or cannot be read, or has no usable key file) is
listed with the reason and not adopted: adopting it would start a watch that warns at
once, or sign with a key DNS does not vouch for. A domain that already has a live case
is left alone, so running adopt again changes nothing.

The private key is copied into the bot's key store (encrypted when a passphrase is
configured) because reinstalling a key after ``signing_stopped`` and rotating read it
from there. When the tables read are not the ``[signer]`` ones, the key is also
installed into the ``[signer]`` tables so the bot's signer signs for it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from bot.adapters.store import Store
from bot.core.cases import State
from bot.core.signertables import InstalledKey, entries, parse_keytable
from bot.flows.desks import KeyDesk

log = logging.getLogger("dkimbot")

# A case in one of these is not live: the domain may be adopted again.
_ENDED = {State.CANCELLED.value, State.REJECTED.value}


@dataclass
class Candidate:
    domain: str
    keys: list[InstalledKey]
    verdict: str = ""              # "adopt", "adopted", "known", "mismatch", "error"
    reason: str = ""
    ref: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)


def read_tables(keytable: Path, signingtable: Path) -> list[Candidate]:
    """Domain → its keys, from the SigningTable's ``*@domain`` (or ``domain``) lines."""
    table = parse_keytable(keytable.read_text(encoding="utf-8"))
    by_domain: dict[str, Candidate] = {}
    for pattern, keyname in entries(signingtable.read_text(encoding="utf-8")):
        domain = pattern.lower().removeprefix("*@").removeprefix("@")
        entry = table.get(keyname.split()[0].lower()) if keyname else None
        cand = by_domain.setdefault(domain, Candidate(domain, []))
        if "*" in domain or "@" in domain:
            cand.verdict, cand.reason = "error", f"pattern {pattern!r} is not one whole domain"
        elif entry is None:
            cand.verdict, cand.reason = "error", f"KeyTable has no entry {keyname!r}"
        elif entry.domain != domain:
            cand.verdict, cand.reason = "error", f"KeyTable entry {keyname!r} signs as {entry.domain}"
        elif entry not in cand.keys:
            cand.keys.append(entry)
    return sorted(by_domain.values(), key=lambda c: c.domain)


def judge(store: Store, cand: Candidate, client: Any) -> Any:
    """Fill in the verdict; return the (domain, selector) → DkimKey and PEM data to adopt."""
    from bot.adapters.keys import KeyStoreError, dkim_key_from_private, load_private_pem
    from bot.checks.keyplan import check_dkim_each, fold_dkim

    known = [c for c in store.cases_for_domain(cand.domain) if c.state not in _ENDED]
    if known:
        cand.verdict, cand.ref = "known", known[0].ref
        cand.reason = f"already a case ({known[0].ref}, {known[0].state})"
        return {}
    if cand.verdict == "error":
        return {}
    loaded: dict[str, Any] = {}
    for entry in cand.keys:
        try:
            private = load_private_pem(entry.path.read_bytes(), None, what=f"{cand.domain} {entry.selector}")
        except (OSError, KeyStoreError) as exc:
            cand.verdict = "error"
            cand.reason = f"key file {entry.path}: {getattr(exc, 'strerror', None) or exc}"
            return {}
        loaded[entry.selector] = (dkim_key_from_private(cand.domain, entry.selector, private), private)
    expected = {sel: key.public_b64 for sel, (key, _) in loaded.items()}
    dkim = fold_dkim(check_dkim_each(client, cand.domain, expected))
    cand.evidence = dkim.found
    if dkim.ok:
        cand.verdict = "adopt"
        cand.reason = f"{', '.join(expected)}: the record matches the key on every authoritative server"
        return loaded
    codes = sorted({d.code for d in dkim.diagnoses})
    cand.verdict, cand.reason = "mismatch", f"{', '.join(expected)}: {', '.join(codes) or 'not right in DNS'}"
    return {}


def adopt(desk: KeyDesk, keytable: Path, signingtable: Path, *, dry_run: bool) -> list[Candidate]:
    from bot.adapters import signer
    from bot.adapters.keys import unencrypted_pkcs8

    cfg = desk.cfg
    candidates = read_tables(keytable, signingtable)
    own_tables = (keytable.resolve() == cfg.state_path(cfg.signer.keytable).resolve())
    client = desk.dns_client()
    for cand in candidates:
        loaded = judge(desk.store, cand, client)
        if cand.verdict != "adopt" or dry_run:
            continue
        now = desk.clock()
        for selector, (key, private) in loaded.items():
            desk.keystore.import_key(cand.domain, selector, private)
            if not own_tables and selector not in signer.installed_selectors(cfg, cand.domain):
                signer.install_key(cfg, key, unencrypted_pkcs8(private))
        case = desk.store.adopt_case(
            domain=cand.domain, now=now,
            keys=[(k.selector, k.algorithm, k.bits, k.public_b64) for k, _ in loaded.values()],
            next_check_at=now + timedelta(days=1),
            detail={"keytable": str(keytable), "signingtable": str(signingtable),
                    "selectors": list(loaded), "dkim": cand.evidence},
        )
        cand.verdict, cand.ref = "adopted", case.ref
        log.info("%s: %s adopted as completed (selectors %s)", case.ref, cand.domain, ", ".join(loaded))
    return candidates


def adopt_command(desk: KeyDesk, keytable: str | None, signingtable: str | None, dry_run: bool) -> int:
    cfg = desk.cfg
    kt = Path(keytable) if keytable else cfg.state_path(cfg.signer.keytable)
    st = Path(signingtable) if signingtable else cfg.state_path(cfg.signer.signingtable)
    for path in (kt, st):
        if not path.is_file():
            print(f"dkimbot: no such table: {path}")
            return 2
    found = adopt(desk, kt, st, dry_run=dry_run)
    words = {"adopt": "would adopt", "adopted": "adopted", "known": "known", "mismatch": "not adopted",
             "error": "not adopted"}
    for cand in found:
        ref = f" {cand.ref}" if cand.ref and cand.verdict == "adopted" else ""
        print(f"{words[cand.verdict]}{ref}: {cand.domain}: {cand.reason}")
    refused = [c for c in found if c.verdict in ("mismatch", "error")]
    done = sum(c.verdict in ("adopt", "adopted") for c in found)
    print(f"{done} {'to adopt' if dry_run else 'adopted'}, {len(refused)} not adopted, "
          f"{sum(c.verdict == 'known' for c in found)} already known")
    return 1 if refused else 0
