"""Upgrading the state database: an old schema is brought up to date with every case,
event and queued mail kept; a failing migration changes nothing; a newer schema is refused."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.adapters import store as store_mod
from bot.adapters.store import MIGRATIONS, SCHEMA_VERSION, Store

NOW = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)


def _old_database(path: Path, version: int = 1) -> None:
    """A state database as dkimbot with schema ``version`` left it, with one case in it."""
    db = sqlite3.connect(path)
    for v in range(1, version + 1):
        db.executescript(MIGRATIONS[v])
    db.execute("INSERT INTO meta(key, value) VALUES ('schema_version', ?)", (str(version),))
    db.execute("INSERT INTO meta(key, value) VALUES ('imap:host:user:INBOX', '7:42')")
    db.execute(
        "INSERT INTO cases (id, ref, facility, admin_email, domain, selector, selectors, state, "
        "created_at, updated_at, state_since, next_check_at, reminders_sent) "
        "VALUES (1, 'DKIM-0001', 'ホテルさくら', 'info@sakura.test', 'sakura.test', 'sel1', '[\"sel1\"]', "
        "'awaiting_dkim', ?, ?, ?, ?, 1)", (NOW.isoformat(),) * 4,
    )
    db.execute("INSERT INTO events (case_id, at, kind, detail) VALUES (1, ?, 'key_assigned', '{}')",
               (NOW.isoformat(),))
    db.execute(
        "INSERT INTO outbox (message_id, kind, case_ids, sender, recipients, raw, created_at, next_attempt_at) "
        "VALUES ('<m1@489ban.net>', 'request_reply', '[1]', 's@489ban.net', '[\"a@sakura.test\"]', x'00', ?, ?)",
        (NOW.isoformat(), NOW.isoformat()),
    )
    db.execute("INSERT INTO handled (key, message_id, handled_at, outcome) VALUES ('imap:INBOX:7:42', '<r@x>', ?, 'ok')",
               (NOW.isoformat(),))
    db.commit()
    db.close()


def _assert_kept(store: Store) -> None:
    case = store.find_case("DKIM-0001")
    assert case is not None
    assert (case.facility, case.domain, case.selectors, case.state, case.reminders_sent) == (
        "ホテルさくら", "sakura.test", ["sel1"], "awaiting_dkim", 1)
    assert [e["kind"] for e in store.events(case.id)] == ["key_assigned"]
    assert [m["message_id"] for m in store.mails_for_case(case.id)] == ["<m1@489ban.net>"]
    assert [r.message_id for r in store.pending_mail(NOW)] == ["<m1@489ban.net>"]
    assert store.is_handled("imap:INBOX:7:42", None) and store.is_handled("other", "<r@x>")
    assert store.get_meta("imap:host:user:INBOX") == "7:42"


def test_the_oldest_schema_is_upgraded_with_every_case_kept(tmp_path):
    path = tmp_path / "dkimbot.sqlite3"
    _old_database(path, version=1)
    store = Store(path)
    try:
        assert store.schema_version() == SCHEMA_VERSION
        _assert_kept(store)
    finally:
        store.close()
    store = Store(path)  # opening again migrates nothing
    try:
        assert store.schema_version() == SCHEMA_VERSION
        _assert_kept(store)
    finally:
        store.close()


def test_a_new_migration_adds_its_column_and_keeps_the_cases(tmp_path, monkeypatch):
    path = tmp_path / "dkimbot.sqlite3"
    _old_database(path, version=SCHEMA_VERSION)
    nxt = SCHEMA_VERSION + 1
    monkeypatch.setitem(MIGRATIONS, nxt, "ALTER TABLE cases ADD COLUMN note TEXT NOT NULL DEFAULT 'kept'")
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", nxt)
    store = Store(path)
    try:
        assert store.schema_version() == nxt
        _assert_kept(store)
        assert store.db.execute("SELECT note FROM cases WHERE id=1").fetchone()[0] == "kept"
    finally:
        store.close()


def test_a_failing_migration_changes_nothing(tmp_path, monkeypatch):
    path = tmp_path / "dkimbot.sqlite3"
    _old_database(path, version=SCHEMA_VERSION)
    nxt = SCHEMA_VERSION + 1
    monkeypatch.setitem(MIGRATIONS, nxt, "CREATE TABLE half (a); UPDATE cases SET state='cancelled'; INSERT INTO nowhere VALUES (1)")
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", nxt)
    with pytest.raises(sqlite3.Error):
        Store(path)
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", SCHEMA_VERSION)
    store = Store(path)
    try:
        assert store.schema_version() == SCHEMA_VERSION
        _assert_kept(store)  # the UPDATE was rolled back with the rest
        assert store.db.execute("SELECT 1 FROM sqlite_master WHERE name='half'").fetchone() is None
    finally:
        store.close()


def test_a_newer_schema_is_refused_with_a_clear_message(tmp_path):
    path = tmp_path / "dkimbot.sqlite3"
    _old_database(path, version=SCHEMA_VERSION)
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    with pytest.raises(RuntimeError, match="newer than this dkimbot"):
        Store(path)
