"""No DNS query, key generation or RFC 2136 update inside the write transaction.

``process_message`` prepares a request's slow work first (bot/flows/prepare.py) and
decides in one SQLite transaction. Here the store changes between the two (another
process records a key for the domain, so the prepared key no longer fits): the decision
must not fall back to asking DNS or making a key under the write lock; it rolls back and
prepares again. Every socket operation and every key creation of the run is checked
against the store's transaction depth. Real BIND.
"""

from __future__ import annotations

import logging
import socket
import uuid
from typing import Any

import pytest
from configkit import dns, service, write_toml
from workerkit import request_mail, setup_domain

pytestmark = pytest.mark.servers


def _bots(tmp_path: Any, bind: Any) -> tuple[Any, Any]:
    from bot.app.jobs import Bot
    from bot.config import load_config

    cfg = load_config(write_toml(tmp_path / "c.toml", {
        "service": service(), "dns": dns(bind, timeout=1.0), "keys": {"bits": 1024},
        "schedule": {"check_interval_seconds": 3600}, "state": {"dir": str(tmp_path / "state")},
    }))
    return Bot.open(cfg), Bot.open(cfg)  # two connections, as two processes would have


def instrument(monkeypatch: Any, store: Any) -> list[str]:
    """Record every socket operation and key creation made while ``store`` holds its
    write transaction."""
    import bot.adapters.keys as keys_mod

    inside: list[str] = []

    def watch(name: str, real: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if store._depth:
                inside.append(name)
            return real(*args, **kwargs)
        return wrapper

    for method in ("connect", "send", "sendto", "sendall", "recv", "recvfrom"):
        monkeypatch.setattr(socket.socket, method, watch(f"socket.{method}", getattr(socket.socket, method)))
    monkeypatch.setattr(keys_mod.KeyStore, "load_or_create",
                        watch("KeyStore.load_or_create", keys_mod.KeyStore.load_or_create))
    return inside


def test_a_stale_preparation_is_prepared_again_outside_the_transaction(tmp_path, bind, monkeypatch, caplog):
    import bot.flows.prepare as prepare_mod
    from bot.app.jobs import process_message

    domain = f"slow-{uuid.uuid4().hex[:6]}.test"
    setup_domain(bind, domain)
    ours, other = _bots(tmp_path, bind)
    inside = instrument(monkeypatch, ours.store)
    real = prepare_mod.prepare_message
    calls: list[int] = []

    def prepare_then_the_store_moves(bot: Any, parsed: Any) -> Any:
        prepared = real(bot, parsed)
        calls.append(1)
        if len(calls) == 1:  # another process records a key for the domain meanwhile
            with other.store.transaction():
                other.store.record_key(domain, "elsewhere1", "rsa", 1024, "QUJD", other.clock())
        return prepared

    monkeypatch.setattr(prepare_mod, "prepare_message", prepare_then_the_store_moves)
    with caplog.at_level(logging.INFO, logger="dkimbot"):
        outcome = process_message(ours, "m1", request_mail(domain, f"<slow@{domain}>"))
    assert outcome.startswith("request")
    assert len(calls) == 2 and "preparing again" in caplog.text
    assert inside == []
    [case] = ours.store.cases_for_domain(domain)
    assert case.state == "awaiting_dkim" and case.selectors and case.selectors[0] != "elsewhere1"
    assert ours.keystore.exists(domain, case.selectors[0])


def test_the_watch_sees_work_inside_a_transaction(tmp_path, bind, monkeypatch):
    """The instrument itself: a DNS query and a key made inside the transaction are caught."""
    ours, _ = _bots(tmp_path, bind)
    inside = instrument(monkeypatch, ours.store)
    ours.dns_client().lookup("outside.test", "TXT")
    assert inside == []
    with ours.store.transaction():
        ours.dns_client().lookup("inside.test", "TXT")
        ours.keystore.load_or_create("inside.test", "s1", "rsa", 1024)
    assert any(n.startswith("socket.") for n in inside) and "KeyStore.load_or_create" in inside
