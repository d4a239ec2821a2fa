"""What a flow is handed: the few parts of the runtime a unit of work may use.

A flow's signature is its dependency list. A flow that needs one or two things takes
them as plain values (``store: Store``, ``cfg: Config``, ``now: datetime``, a
``DnsLookup``, a ``KeyStore``); a flow that needs several takes one of the capabilities
below, each a Protocol naming exactly those parts. ``bot.flows.runtime.Bot`` has all of
them, so the application (a pass, the CLI, the staff site) keeps one ``Bot`` and hands
it in; a test hands in a ``Bot`` or any small object with the same attributes, and
``mypy --strict`` proves that a flow typed ``Office`` never mails, asks DNS or opens a
key file. Flows never import ``Bot`` (``tests/test_layers.py``).

The parts are read-only properties here so that a dataclass field, a property (the
lazily opened key store) or a frozen dataclass all satisfy them.

* ``Office``     cfg + store + clock: decide and record (events, limits, schedules).
* ``MailDesk``   an ``Office`` that also renders mail: everything ``compose.enqueue_mail``
                 needs, so every flow that may write to a facility or to staff.
* ``Lookout``    an ``Office`` that asks DNS (a fresh client per call, see below).
* ``KeyDesk``    a ``Lookout`` with the key store: choose a selector (asks DNS), make
                 or load a key, put it into the signer.
* ``MailLookout`` a ``MailDesk`` that also asks DNS (DMARC reports, managed publishing).
* ``Workbench``  all of it: the units that check DNS, install keys and mail in one go
                 (a recheck, the watch, a rotation, a rekey, a request's decision).

``dns_client()`` stays a factory, not a value: each call is a fresh client with its own
per-pass cache (``adapters/dnsclient.py``), and importing dnspython is left to the
first flow that really asks (an idle pass never does).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # the types only: an idle pass imports neither dnspython nor cryptography
    from bot.adapters.dnsclient import DnsClient
    from bot.adapters.keys import KeyStore
    from bot.adapters.mailrender import MailRenderer
    from bot.adapters.store import Store
    from bot.config import Config


class Office(Protocol):
    """The operator's settings, the cases and the time: enough to decide and record."""

    @property
    def cfg(self) -> Config: ...

    @property
    def store(self) -> Store: ...

    @property
    def clock(self) -> Callable[[], datetime]: ...


class MailDesk(Office, Protocol):
    """An ``Office`` that renders mail templates into the outbox."""

    @property
    def renderer(self) -> MailRenderer | None: ...


class Lookout(Office, Protocol):
    """An ``Office`` that asks DNS with the operator's resolver settings."""

    def dns_client(self) -> DnsClient: ...


class KeyDesk(Lookout, Protocol):
    """A ``Lookout`` that keeps keys: chooses selectors, makes, loads and installs DKIM keys."""

    @property
    def keystore(self) -> KeyStore: ...


class MailLookout(MailDesk, Lookout, Protocol):
    """A ``MailDesk`` that asks DNS (DMARC reports, managed-zone publishing); no keys."""


class Workbench(MailDesk, KeyDesk, Protocol):
    """Everything: for the units that look at DNS, install keys and mail in one go."""
