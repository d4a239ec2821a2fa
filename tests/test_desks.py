"""Flows take what they use (DESIGN.md rule 11): a flow typed with a capability of
``bot/flows/desks.py`` runs on any object with exactly those parts, not only on the
runtime ``Bot``; a flow that takes a plain ``Store`` runs on the store alone."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bot.adapters.store import Store
from bot.config import Config, load_config
from bot.flows.compose import key_records
from bot.flows.digest import build_digest
from bot.flows.runtime import Bot

NOW = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)


@dataclass(frozen=True)
class JustAnOffice:
    """cfg, store and clock and nothing else: no renderer, no DNS client, no key store."""

    cfg: Config
    store: Store
    clock: Callable[[], datetime]


def _store(tmp_path: Path) -> tuple[Config, Store]:
    cfg = load_config(None, state_dir=tmp_path / "state")
    cfg.state_dir.mkdir(parents=True)
    return cfg, Store(cfg.state_dir / "dkimbot.sqlite3")


def test_the_digest_is_built_from_an_office_alone(tmp_path: Path) -> None:
    cfg, store = _store(tmp_path)
    with store.transaction():
        stuck = store.create_case(state="awaiting_dkim", now=NOW - timedelta(days=10), facility="旅館かえで",
                                  domain="kaede.test", selector="s1", selectors=["s1"])
        store.create_case(state="awaiting_dkim", now=NOW - timedelta(days=1), facility="ホテル",
                          domain="hotel.test", selector="s1", selectors=["s1"])
    office = JustAnOffice(cfg, store, lambda: NOW)
    digest = build_digest(office)
    assert digest["total"] == 2
    assert [s["ref"] for s in digest["stuck"]] == [stuck.ref]
    # The same content as through the runtime object the application holds.
    assert digest == build_digest(Bot(cfg=cfg, store=store, clock=lambda: NOW))
    store.close()


def test_a_case_record_box_comes_from_the_store_alone(tmp_path: Path) -> None:
    _cfg, store = _store(tmp_path)
    with store.transaction():
        case = store.create_case(state="awaiting_dkim", now=NOW, facility="旅館かえで",
                                 domain="kaede.test", selector="s1", selectors=["s1"])
        store.record_key("kaede.test", "s1", "rsa", 1024, "MIGfMA0GCSqGSIb3DQEBAQUAA4GN", NOW)
    [box] = key_records(store, case)
    assert "s1._domainkey.kaede.test" in box.values()
    assert any("v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GN" in v for v in box.values())
    store.close()
