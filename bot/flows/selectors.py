"""A case's selectors against the store and the key files: which selector a new key
gets (``keyplan.choose_selector`` asks DNS; here we add what the bot already holds), and
which public key each selector of a case is expected to publish."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from bot.adapters.store import Store
from bot.flows.desks import KeyDesk

if TYPE_CHECKING:
    from bot.adapters.keys import KeyStore


log = logging.getLogger("dkimbot")


def own_key(store: Store, keystore: KeyStore, domain: str, selector: str) -> str | None:
    """Our public key for ``domain``/``selector``: recorded, or a key file a crash left."""
    for k in store.domain_keys(domain):
        if k["selector"] == selector:
            return str(k["public_b64"])
    key = keystore.get(domain, selector) if keystore.exists(domain, selector) else None
    return key.public_b64 if key is not None else None


def choose_selector(keydesk: KeyDesk, domain: str, base: str, *, with_ed25519: bool,
                    exclude: Iterable[str] = (), look: bool = True) -> str:
    """``keyplan.choose_selector`` through a fresh DNS client, our own keys not counted as
    taken; ``look=False``: the domain's DNS just gave no answer, so the first allowed
    candidate without asking again (what a failed check would give, minus its timeouts)."""
    from bot.checks import keyplan

    if not look:
        log.warning("selector for %s chosen without looking (its DNS gave no answer)", domain)
        return keyplan.first_allowed_selector(base, with_ed25519=with_ed25519, exclude=exclude)
    return keyplan.choose_selector(
        keydesk.dns_client(), domain, base, with_ed25519=with_ed25519, exclude=exclude,
        own_key=lambda sel: own_key(keydesk.store, keydesk.keystore, domain, sel))


def expected_keys(store: Store, domain: str, selectors: Iterable[str]) -> dict[str, str]:
    """selector → stored public key; LookupError for a selector the bot has no key for."""
    stored = {k["selector"]: str(k["public_b64"]) for k in store.domain_keys(domain)}
    out: dict[str, str] = {}
    for sel in selectors:
        if sel not in stored:
            raise LookupError(f"no stored key for {domain}/{sel}")
        out[sel] = stored[sel]
    return out
