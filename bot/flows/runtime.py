"""The runtime a pass works in: the ``Bot`` (config, store, clock, lazily the key store
and DNS client), the one-pass-at-a-time lock, and the result of a pass."""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from bot.adapters.mailrender import MailRenderer
from bot.adapters.store import Store
from bot.config import Config

if TYPE_CHECKING:  # imported when first used: an idle pass needs neither
    from bot.adapters.dnsclient import DnsClient
    from bot.adapters.keys import KeyStore

log = logging.getLogger("dkimbot")


class PassLocked(Exception):
    """Another pass holds the state-dir lock."""


@contextmanager
def pass_lock(cfg: Config, wait: bool = False) -> Iterator[None]:
    """One pass at a time per state dir (cron overlap, daemon + cron)."""
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    path = cfg.state_dir / "dkimbot.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise PassLocked(f"another dkimbot pass is running on {cfg.state_dir}") from None
        yield
    finally:
        os.close(fd)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Bot:
    """Everything a pass needs, injected so tests and the demo can swap clock and servers."""

    cfg: Config
    store: Store
    clock: Callable[[], datetime] = utcnow
    renderer: MailRenderer | None = None
    _keystore: KeyStore | None = None

    def __post_init__(self) -> None:
        if self.renderer is None:
            self.renderer = MailRenderer(self.cfg.templates_dir)

    @classmethod
    def open(cls, cfg: Config, clock: Callable[[], datetime] = utcnow) -> Bot:
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(cfg.state_dir, 0o700)
        return cls(cfg=cfg, store=Store(cfg.state_dir / "dkimbot.sqlite3"), clock=clock)

    @property
    def keystore(self) -> KeyStore:
        if self._keystore is None:
            from bot.adapters.keys import KeyStore

            self._keystore = KeyStore(self.cfg.state_dir / "keys", self.cfg.keys.passphrase)
        return self._keystore

    def dns_client(self) -> DnsClient:
        from bot.adapters.dnsclient import DnsClient

        return DnsClient(self.cfg.dns)

    def close(self) -> None:
        self.store.close()


@dataclass
class PassResult:
    messages: int = 0
    checks: int = 0
    mails_sent: int = 0
    errors: list[str] = field(default_factory=list)
