"""Sessions, CSRF tokens and the login slow-down of the staff site.

* A session is a random 256-bit token in an HttpOnly, SameSite=Strict cookie; the store
  keeps only its SHA-256, with the staff name, the session's CSRF token, when it began
  and when it ends. It ends ``[web] session_idle_minutes`` after its last page (the end
  slides forward as pages are opened, written at most every tenth of that time, so a
  busy staff member costs a write a few minutes, not one per page) and never later than
  ``session_hours`` after login. Every login makes a new token (a token planted before
  login is worthless), and logout deletes the row.
* Every state-changing form carries the session's CSRF token; a POST without the right
  one is refused (403) before anything is read from the form's action. The login form,
  which has no session yet, uses a double-submit token (a cookie and a field that must
  match), so another site cannot log a browser into an account of its choosing.
* Five wrong passwords in a row for an account name slow further attempts for that name:
  30 s after the fifth, doubling with each further miss, at most 15 minutes; a client
  address gets the same after twenty misses over any names. A right password clears
  the name's count. The wait is enforced before the password is checked, so guessing
  during it learns nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from bot.adapters.store import Store
from bot.config import WebConfig

SESSION_COOKIE = "dkimbot_session"
LOGIN_COOKIE = "dkimbot_login"
NAME_FREE_MISSES = 5
ADDRESS_FREE_MISSES = 20
FIRST_WAIT = timedelta(seconds=30)
LONGEST_WAIT = timedelta(minutes=15)


@dataclass(frozen=True)
class Session:
    name: str
    csrf: str
    token_hash: str
    created: datetime
    expires: datetime


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def session_end(created: datetime, now: datetime, cfg: WebConfig) -> datetime:
    """When a session used at ``now`` ends: idle limit from now, capped by its lifetime."""
    lifetime = created + timedelta(hours=cfg.session_hours)
    if cfg.session_idle_minutes <= 0:
        return lifetime
    return min(now + timedelta(minutes=cfg.session_idle_minutes), lifetime)


def start_session(store: Store, name: str, now: datetime, cfg: WebConfig) -> str:
    """A new session for ``name``; returns the cookie's value (kept nowhere else)."""
    token = new_token()
    store.create_session(token_hash(token), name, new_token(), now, session_end(now, now, cfg))
    return token


def find_session(store: Store, token: str | None, now: datetime) -> Session | None:
    if not token or len(token) > 100:
        return None
    digest = token_hash(token)
    found = store.session(digest, now)
    return Session(found[0], found[1], digest, found[2], found[3]) if found else None


def new_end(session: Session, now: datetime, cfg: WebConfig) -> datetime | None:
    """The session's end to write after a page at ``now``, or None when the stored one is
    close enough (less than a tenth of the idle limit behind): a write every few minutes
    per busy staff member, not one per page."""
    end = session_end(session.created, now, cfg)
    step = timedelta(minutes=cfg.session_idle_minutes) / 10
    return end if end - session.expires > step else None


def same_token(expected: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(expected.encode(), (given or "").encode())


def wait_after(failures: int, last_at: datetime | None, free: int, now: datetime) -> timedelta:
    """How long a login for a key with ``failures`` misses in a row must still wait."""
    if failures < free or last_at is None:
        return timedelta(0)
    doublings: int = min(failures - free, 10)
    wait: timedelta = min(FIRST_WAIT * (2**doublings), LONGEST_WAIT)
    left: timedelta = last_at + wait - now
    return max(timedelta(0), left)


def login_wait(store: Store, name: str, address: str, now: datetime) -> timedelta:
    by_name = wait_after(*store.login_failures(f"name:{name.lower()}"), NAME_FREE_MISSES, now)
    by_address = wait_after(*store.login_failures(f"addr:{address}"), ADDRESS_FREE_MISSES, now)
    return max(by_name, by_address)


def note_miss(store: Store, name: str, address: str, now: datetime) -> None:
    with store.transaction():
        store.note_login_failure(f"name:{name.lower()}", now)
        store.note_login_failure(f"addr:{address}", now)


def note_success(store: Store, name: str, address: str) -> None:
    with store.transaction():
        store.clear_login_failures(f"name:{name.lower()}")
        store.clear_login_failures(f"addr:{address}")


def _trusted(peer: str | None, cfg: WebConfig) -> bool:
    if not peer or not cfg.trusted_proxies:
        return False
    try:
        address = ipaddress.ip_address(peer)
        return any(address in ipaddress.ip_network(net, strict=False) for net in cfg.trusted_proxies)
    except ValueError:
        return False


def client_address(peer: str | None, forwarded_for: str | None, cfg: WebConfig) -> str:
    """The browser's address: the proxy's X-Forwarded-For only when the peer is trusted."""
    if forwarded_for and _trusted(peer, cfg):
        return forwarded_for.split(",")[-1].strip() or (peer or "-")
    return peer or "-"


def behind_tls(peer: str | None, forwarded_proto: str | None, scheme: str, cfg: WebConfig) -> bool:
    """Whether the cookie gets ``Secure``: configured, served over TLS, or a trusted proxy says so."""
    if cfg.secure_cookies or scheme == "https":
        return True
    return (forwarded_proto or "").strip().lower() == "https" and _trusted(peer, cfg)
