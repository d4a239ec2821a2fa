"""The state store: SQLite under the state dir (cases, events, handled mail, outbox, keys).

Every decision is written in one transaction (``Store.transaction()``): the case's new
state, its event rows and the mails it causes. Delivery reads the outbox afterwards, so
a crash between deciding and sending sends the mail later, never twice, never not at all.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.core.cases import ADOPTED_STATE, INITIAL_STATES, move_allowed
from bot.core.rows import CaseRow, OutboxRow, now_iso, parse_iso  # re-exported for callers

if TYPE_CHECKING:  # DMARC report rows: only the reports step imports their module
    from bot.core.dmarcstats import DmarcRowIn

SCHEMA_VERSION = 9

# Each entry upgrades the schema from version N-1 to N; never edit a shipped one.
MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE cases (
        id INTEGER PRIMARY KEY,
        ref TEXT UNIQUE,
        facility TEXT, contact_name TEXT, contact_email TEXT, contact_phone TEXT,
        admin_email TEXT, domain TEXT, selector TEXT, selectors TEXT NOT NULL DEFAULT '[]',
        state TEXT NOT NULL,
        requester TEXT,
        thread_root TEXT, thread_last TEXT, thread_refs TEXT NOT NULL DEFAULT '[]',
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL, state_since TEXT NOT NULL,
        next_check_at TEXT,
        reminders_sent INTEGER NOT NULL DEFAULT 0,
        last_notice TEXT,
        reply_pending INTEGER NOT NULL DEFAULT 0,
        resume_state TEXT,
        problems TEXT NOT NULL DEFAULT '[]'
    );
    CREATE INDEX cases_domain ON cases(domain);
    CREATE INDEX cases_due ON cases(state, next_check_at);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        case_id INTEGER REFERENCES cases(id),
        at TEXT NOT NULL,
        kind TEXT NOT NULL,
        from_state TEXT, to_state TEXT,
        detail TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX events_case ON events(case_id);
    CREATE TABLE handled (
        key TEXT PRIMARY KEY,
        message_id TEXT,
        handled_at TEXT NOT NULL,
        outcome TEXT NOT NULL
    );
    CREATE INDEX handled_msgid ON handled(message_id);
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        message_id TEXT UNIQUE NOT NULL,
        kind TEXT NOT NULL,
        case_ids TEXT NOT NULL DEFAULT '[]',
        sender TEXT NOT NULL,
        recipients TEXT NOT NULL,
        raw BLOB NOT NULL,
        created_at TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at TEXT NOT NULL,
        sent_at TEXT,
        last_error TEXT
    );
    CREATE INDEX outbox_pending ON outbox(status, next_attempt_at);
    CREATE TABLE domain_keys (
        domain TEXT NOT NULL,
        selector TEXT NOT NULL,
        algorithm TEXT NOT NULL,
        bits INTEGER NOT NULL,
        public_b64 TEXT NOT NULL,
        created_at TEXT NOT NULL,
        installed_at TEXT,
        retired_at TEXT,
        PRIMARY KEY (domain, selector)
    );
    """,
    # Key rotation (bot/flows/rotation.py): one row per `dkimbot rotate`, per domain.
    2: """
    CREATE TABLE rotations (
        id INTEGER PRIMARY KEY,
        domain TEXT NOT NULL,
        old_selectors TEXT NOT NULL,
        new_selectors TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending',
        created_at TEXT NOT NULL,
        next_check_at TEXT NOT NULL,
        done_at TEXT,
        detail TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX rotations_due ON rotations(status, next_check_at);
    """,
    # A handled mail is known by its Message-ID *and* what it says (request.py:
    # message_fingerprint): a Message-ID reused for a different mail is a new mail.
    # Rows from before keep NULL and still match by Message-ID alone.
    3: """
    ALTER TABLE handled ADD COLUMN fingerprint TEXT;
    CREATE INDEX handled_fingerprint ON handled(fingerprint);
    """,
    # End-to-end proof (bot/flows/proof.py): one row per probe sent to the [proof] mailbox.
    4: """
    CREATE TABLE proofs (
        id INTEGER PRIMARY KEY,
        case_id INTEGER NOT NULL REFERENCES cases(id),
        message_id TEXT UNIQUE NOT NULL,
        domain TEXT NOT NULL,
        address TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'waiting',
        created_at TEXT NOT NULL,
        deadline_at TEXT NOT NULL,
        done_at TEXT,
        result TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX proofs_waiting ON proofs(status, deadline_at);
    CREATE INDEX proofs_case ON proofs(case_id);
    """,
    # DMARC aggregate reports (bot/flows/dmarcreports.py): one row per report (unique per
    # reporter and report id: a report sent twice counts once), its records by day,
    # reporter and source IP, the names of source addresses, and every report mail's outcome.
    5: """
    CREATE TABLE dmarc_reports (
        id INTEGER PRIMARY KEY,
        reporter TEXT NOT NULL,
        report_id TEXT NOT NULL,
        reporter_email TEXT NOT NULL DEFAULT '',
        sent_by TEXT NOT NULL DEFAULT '',
        domain TEXT NOT NULL,
        begin_at TEXT NOT NULL,
        end_at TEXT NOT NULL,
        received_at TEXT NOT NULL,
        schema TEXT NOT NULL,
        policy_p TEXT NOT NULL DEFAULT '',
        flags TEXT NOT NULL DEFAULT '[]',
        messages INTEGER NOT NULL,
        mail_key TEXT NOT NULL DEFAULT '',
        UNIQUE (reporter, report_id)
    );
    CREATE INDEX dmarc_reports_domain ON dmarc_reports(domain, begin_at);
    CREATE TABLE dmarc_rows (
        id INTEGER PRIMARY KEY,
        report INTEGER NOT NULL REFERENCES dmarc_reports(id),
        domain TEXT NOT NULL,
        day TEXT NOT NULL,
        reporter TEXT NOT NULL,
        source_ip TEXT NOT NULL,
        ours INTEGER NOT NULL,
        messages INTEGER NOT NULL,
        dmarc_pass INTEGER NOT NULL,
        dkim_result TEXT NOT NULL, dkim_aligned INTEGER NOT NULL, dkim_domain TEXT NOT NULL DEFAULT '',
        spf_result TEXT NOT NULL, spf_aligned INTEGER NOT NULL, spf_domain TEXT NOT NULL DEFAULT '',
        disposition TEXT NOT NULL,
        header_from TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX dmarc_rows_domain_day ON dmarc_rows(domain, day);
    CREATE TABLE dmarc_sources (
        ip TEXT PRIMARY KEY,
        name TEXT,
        how TEXT NOT NULL,
        checked_at TEXT NOT NULL
    );
    CREATE TABLE dmarc_mail (
        key TEXT PRIMARY KEY,
        at TEXT NOT NULL,
        outcome TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX dmarc_mail_at ON dmarc_mail(at);
    """,
    # The staff site (bot/web/): accounts (argon2 hashes), sessions (only a hash of the
    # cookie's value is kept, so a copy of the database logs nobody in), and wrong
    # passwords in a row per account name and per client address (login slow-down).
    6: """
    CREATE TABLE staff (
        name TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE staff_sessions (
        token_hash TEXT PRIMARY KEY,
        name TEXT NOT NULL REFERENCES staff(name) ON DELETE CASCADE,
        csrf TEXT NOT NULL,
        created_at TEXT NOT NULL,
        expires_at TEXT NOT NULL
    );
    CREATE INDEX staff_sessions_name ON staff_sessions(name);
    CREATE TABLE login_failures (
        key TEXT PRIMARY KEY,
        failures INTEGER NOT NULL,
        last_at TEXT NOT NULL
    );
    """,
    # The daily mail limits count the last day's outbox rows for every mail queued. By
    # created_at through this index, the rows' stored mail (raw, before created_at in the
    # record) is never read: 2-3x less per count with 1,500 mails in a day (issue 16).
    7: """
    CREATE INDEX outbox_created ON outbox(created_at);
    """,
    # Proof of control (bot/flows/confirm.py): the managed flow publishes only after the
    # domain's admin address confirmed (a one-time token), the registry listed it, or staff
    # confirmed by hand; managed_records are the exact values the bot wrote by RFC 2136,
    # so a cancel removes those and nothing else.
    8: """
    CREATE TABLE confirmations (
        id INTEGER PRIMARY KEY,
        case_id INTEGER NOT NULL REFERENCES cases(id),
        domain TEXT NOT NULL,
        address TEXT NOT NULL,
        token TEXT UNIQUE,
        status TEXT NOT NULL DEFAULT 'pending',
        how TEXT,
        created_at TEXT NOT NULL,
        mailed_at TEXT,
        reminded_at TEXT,
        done_at TEXT,
        detail TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX confirmations_case ON confirmations(case_id);
    CREATE INDEX confirmations_status ON confirmations(status);
    CREATE TABLE managed_records (
        id INTEGER PRIMARY KEY,
        case_id INTEGER NOT NULL REFERENCES cases(id),
        zone TEXT NOT NULL,
        server TEXT NOT NULL,
        owner TEXT NOT NULL,
        value TEXT NOT NULL,
        published_at TEXT NOT NULL,
        removed_at TEXT
    );
    CREATE INDEX managed_records_case ON managed_records(case_id);
    """,
    # DMARC reports: the organisational domain that authenticated the report mail (DKIM,
    # or our receiving server's Authentication-Results), '' when nothing did. Only
    # authenticated rows drive facility mails, the p=quarantine advice and staff alerts;
    # reports stored before this (never authenticated) count as unverified.
    9: """
    ALTER TABLE dmarc_reports ADD COLUMN verified_by TEXT NOT NULL DEFAULT '';
    ALTER TABLE dmarc_rows ADD COLUMN verified_by TEXT NOT NULL DEFAULT '';
    CREATE INDEX dmarc_rows_verified ON dmarc_rows(domain, verified_by, day);
    """,
}



__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "CaseRow", "OutboxRow", "StaleCase", "Store", "now_iso",
           "parse_iso"]


class StaleCase(Exception):
    """The case is no longer in the state the caller decided from (another process moved it)."""


_CASE_COLUMNS = {
    "facility", "contact_name", "contact_email", "contact_phone", "admin_email", "domain",
    "selector", "selectors", "state", "requester", "thread_root", "thread_last", "thread_refs",
    "updated_at", "state_since", "next_check_at", "reminders_sent", "last_notice",
    "reply_pending", "resume_state", "problems",
}


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return now_iso(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return int(value)
    return value


class Store:
    """SQLite access. One connection per process; WAL so readers never block a pass."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        self._depth = 0
        if readonly:
            # The staff site's reads: a read-only connection never takes the write lock,
            # so a page never delays a pass (WAL: readers see the last commit and go on).
            self.db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                                      isolation_level=None, timeout=30, check_same_thread=False)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA query_only=ON")
            self._check_version(self.schema_version())
            return
        if not path.parent.is_dir():
            path.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(path.parent, 0o700)
        self.db = sqlite3.connect(str(path), isolation_level=None, timeout=30)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=ON")
        if self._migrate():
            # Only a new or upgraded database: opening a current one (dkimbot status,
            # show, check) changes nothing on disk.
            try:
                os.chmod(path, 0o600)
            except OSError:
                pass

    def close(self) -> None:
        self.db.close()

    def backup_to(self, target: Path) -> None:
        """Copy the database to ``target`` while passes may be writing: SQLite's online
        backup API copies the last committed state (WAL readers block no writer), so the
        copy is one consistent moment, never a half-written transaction."""
        dest = sqlite3.connect(str(target))
        try:
            self.db.backup(dest)
        finally:
            dest.close()

    # -- schema ---------------------------------------------------------------------------

    def schema_version(self) -> int:
        exists = self.db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
        ).fetchone()
        if not exists:
            return 0
        row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return int(row["value"]) if row else 0

    def _check_version(self, current: int) -> None:
        if current > SCHEMA_VERSION:
            raise RuntimeError(
                f"state database {self.path} has schema {current}, newer than this "
                f"dkimbot ({SCHEMA_VERSION}); upgrade dkimbot"
            )

    def _migrate(self) -> bool:
        """Upgrade the schema to SCHEMA_VERSION; True when anything was written.

        The version is read first without a write transaction, so opening a current
        database (every pass, every ``dkimbot status``) never queues behind a pass that
        holds the write lock; BEGIN IMMEDIATE only for a real upgrade, re-checked inside
        it because another process may have upgraded meanwhile.
        """
        current = self.schema_version()
        self._check_version(current)
        if current == SCHEMA_VERSION:
            return False
        with self.transaction():
            current = self.schema_version()
            self._check_version(current)
            if current == SCHEMA_VERSION:
                return False
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[version].split(";"):
                    if statement.strip():
                        self.db.execute(statement)
                self.db.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
                    (str(version),),
                )
        return True

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE … COMMIT. A nested use is a SAVEPOINT inside the outer
        transaction: it commits with the outer one, and when it raises only its own
        writes are undone (a pass that commits many cases' decisions together keeps
        each decision whole)."""
        if self._depth:
            name = f"nested{self._depth}"
            self.db.execute(f"SAVEPOINT {name}")
            self._depth += 1
            try:
                yield
            except BaseException:
                self.db.execute(f"ROLLBACK TO {name}")
                self.db.execute(f"RELEASE {name}")
                raise
            else:
                self.db.execute(f"RELEASE {name}")
            finally:
                self._depth -= 1
            return
        self.db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        else:
            self.db.execute("COMMIT")
        finally:
            self._depth = 0

    # -- meta -------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row["value"] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # -- cases ------------------------------------------------------------------------------

    def create_case(self, *, state: str, now: datetime, adopted: bool = False, **fields: Any) -> CaseRow:
        if state not in INITIAL_STATES and not (adopted and state == ADOPTED_STATE):
            raise ValueError(f"a case cannot start in {state}")
        cols = {k: _encode(v) for k, v in fields.items() if k in _CASE_COLUMNS}
        unknown = set(fields) - _CASE_COLUMNS
        if unknown:
            raise ValueError(f"unknown case fields: {sorted(unknown)}")
        cols.update(
            state=state, created_at=now_iso(now), updated_at=now_iso(now),
            state_since=now_iso(now),
        )
        names = ", ".join(cols)
        marks = ", ".join("?" for _ in cols)
        cur = self.db.execute(f"INSERT INTO cases ({names}) VALUES ({marks})", tuple(cols.values()))
        case_id = int(cur.lastrowid or 0)
        self.db.execute("UPDATE cases SET ref=? WHERE id=?", (f"DKIM-{case_id:04d}", case_id))
        return self.get_case(case_id)

    def update_case(self, case_id: int, now: datetime, **fields: Any) -> CaseRow:
        """Change a case's fields other than its state (``transition`` changes the state)."""
        unknown = set(fields) - _CASE_COLUMNS
        if unknown:
            raise ValueError(f"unknown case fields: {sorted(unknown)}")
        if "state" in fields:
            raise ValueError("update_case does not change a case's state; use Store.transition")
        fields = dict(fields, updated_at=now)
        assignments = ", ".join(f"{k}=?" for k in fields)
        self.db.execute(
            f"UPDATE cases SET {assignments} WHERE id=?",
            (*(_encode(v) for v in fields.values()), case_id),
        )
        return self.get_case(case_id)

    def transition(self, case_id: int, to_state: str, now: datetime, *, expected_state: str,
                   event: str, detail: dict[str, Any] | None = None, **fields: Any) -> CaseRow:
        """The one way a case changes state.

        The move must be in ``cases.MOVES``; the UPDATE names the state the caller decided
        from (compare-and-swap: ``StaleCase`` if another process moved the case since it
        was read) and the event (``event``, from → to, ``detail``) is written in the same
        transaction. ``state_since`` becomes ``now``; ``fields`` are set with it.
        """
        if not move_allowed(expected_state, to_state):
            raise ValueError(f"no move from {expected_state} to {to_state} (bot/core/cases.py MOVES)")
        unknown = set(fields) - (_CASE_COLUMNS - {"state", "state_since", "updated_at"})
        if unknown:
            raise ValueError(f"unknown or reserved case fields: {sorted(unknown)}")
        cols = {**fields, "state": to_state, "state_since": now, "updated_at": now}
        assignments = ", ".join(f"{k}=?" for k in cols)
        with self.transaction():
            cur = self.db.execute(
                f"UPDATE cases SET {assignments} WHERE id=? AND state=?",
                (*(_encode(v) for v in cols.values()), case_id, str(expected_state)),
            )
            if cur.rowcount != 1:
                now_state = self.db.execute("SELECT state FROM cases WHERE id=?", (case_id,)).fetchone()
                raise StaleCase(f"case {case_id} is {now_state['state'] if now_state else 'gone'}, "
                                f"not {expected_state}: not moved to {to_state}")
            self.add_event(case_id, now, event, str(expected_state), str(to_state), detail)
        return self.get_case(case_id)

    def get_case(self, case_id: int) -> CaseRow:
        row = self.db.execute("SELECT * FROM cases WHERE id=?", (case_id,)).fetchone()
        if row is None:
            raise KeyError(case_id)
        return CaseRow.from_row(dict(row))

    def find_case(self, ref: str) -> CaseRow | None:
        ref = ref.strip().upper()
        if ref.isdigit():
            ref = f"DKIM-{int(ref):04d}"
        row = self.db.execute("SELECT * FROM cases WHERE ref=?", (ref,)).fetchone()
        return CaseRow.from_row(dict(row)) if row else None

    def list_cases(self, states: tuple[str, ...] | None = None) -> list[CaseRow]:
        if states:
            marks = ", ".join("?" for _ in states)
            rows = self.db.execute(
                f"SELECT * FROM cases WHERE state IN ({marks}) ORDER BY id", states
            ).fetchall()
        else:
            rows = self.db.execute("SELECT * FROM cases ORDER BY id").fetchall()
        return [CaseRow.from_row(dict(r)) for r in rows]

    def due_cases(self, states: tuple[str, ...], now: datetime) -> list[CaseRow]:
        marks = ", ".join("?" for _ in states)
        rows = self.db.execute(
            f"SELECT * FROM cases WHERE state IN ({marks}) "
            "AND (next_check_at IS NULL OR next_check_at <= ?) ORDER BY id",
            (*states, now_iso(now)),
        ).fetchall()
        return [CaseRow.from_row(dict(r)) for r in rows]

    def cases_for_domain(self, domain: str) -> list[CaseRow]:
        rows = self.db.execute(
            "SELECT * FROM cases WHERE domain=? ORDER BY id", (domain,)
        ).fetchall()
        return [CaseRow.from_row(dict(r)) for r in rows]

    def case_for_message_id(self, message_ids: list[str]) -> CaseRow | None:
        """The case a reply belongs to, found by the Message-IDs of the bot's own mails."""
        for mid in message_ids:
            row = self.db.execute(
                "SELECT case_ids FROM outbox WHERE message_id=?", (mid,)
            ).fetchone()
            if row:
                ids = json.loads(row["case_ids"])
                if ids:
                    return self.get_case(ids[0])
            row = self.db.execute(
                "SELECT * FROM cases WHERE thread_root=? ORDER BY id LIMIT 1", (mid,)
            ).fetchone()
            if row:
                return CaseRow.from_row(dict(row))
        return None

    # -- events -----------------------------------------------------------------------------

    def add_event(
        self, case_id: int | None, now: datetime, kind: str,
        from_state: str | None = None, to_state: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        self.db.execute(
            "INSERT INTO events (case_id, at, kind, from_state, to_state, detail) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (case_id, now_iso(now), kind, from_state, to_state,
             json.dumps(detail or {}, ensure_ascii=False, default=str)),
        )

    def case_has_event(self, case_id: int, kinds: Collection[str]) -> bool:
        """Did ``case_id`` ever record an event of one of ``kinds``?"""
        marks = ",".join("?" * len(kinds))
        row = self.db.execute(f"SELECT 1 FROM events WHERE case_id=? AND kind IN ({marks}) LIMIT 1",
                              (case_id, *kinds)).fetchone()
        return row is not None

    def events(self, case_id: int) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT * FROM events WHERE case_id=? ORDER BY id", (case_id,)
        ).fetchall()
        return [dict(r, detail=json.loads(r["detail"])) for r in rows]

    # -- handled messages -------------------------------------------------------------------

    def is_handled(self, key: str, message_id: str | None, fingerprint: str | None = None) -> bool:
        """Was this mailbox entry, or another copy of the same mail, handled already?

        A copy is the same Message-ID with the same fingerprint (or a row recorded before
        fingerprints, or a caller that has none); without a Message-ID, the fingerprint
        alone. The same Message-ID on a mail that says something else is not a copy:
        some mailers reuse one Message-ID, and dropping such a mail loses a request.
        """
        if self.db.execute("SELECT 1 FROM handled WHERE key=?", (key,)).fetchone():
            return True
        if message_id:
            if fingerprint is None:
                row = self.db.execute("SELECT 1 FROM handled WHERE message_id=?", (message_id,)).fetchone()
            else:
                row = self.db.execute(
                    "SELECT 1 FROM handled WHERE message_id=? AND (fingerprint IS NULL OR fingerprint=?)",
                    (message_id, fingerprint),
                ).fetchone()
            return row is not None
        if fingerprint:
            return self.db.execute(
                "SELECT 1 FROM handled WHERE message_id IS NULL AND fingerprint=?", (fingerprint,)
            ).fetchone() is not None
        return False

    def mark_handled(self, key: str, message_id: str | None, now: datetime, outcome: str,
                     fingerprint: str | None = None) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO handled (key, message_id, handled_at, outcome, fingerprint) "
            "VALUES (?, ?, ?, ?, ?)",
            (key, message_id, now_iso(now), outcome, fingerprint),
        )

    # -- outbox -----------------------------------------------------------------------------

    def enqueue(
        self, *, message_id: str, kind: str, case_ids: list[int], sender: str,
        recipients: list[str], raw: bytes, now: datetime,
    ) -> None:
        self.db.execute(
            "INSERT INTO outbox (message_id, kind, case_ids, sender, recipients, raw, created_at, "
            "next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (message_id, kind, json.dumps(case_ids), sender, json.dumps(recipients), raw,
             now_iso(now), now_iso(now)),
        )

    def pending_mail(self, now: datetime) -> list[OutboxRow]:
        rows = self.db.execute(
            "SELECT * FROM outbox WHERE status='pending' AND next_attempt_at <= ? ORDER BY id",
            (now_iso(now),),
        ).fetchall()
        return [
            OutboxRow(
                id=r["id"], message_id=r["message_id"], kind=r["kind"],
                case_ids=json.loads(r["case_ids"]), sender=r["sender"],
                recipients=json.loads(r["recipients"]), raw=r["raw"], status=r["status"],
                attempts=r["attempts"], next_attempt_at=datetime.fromisoformat(r["next_attempt_at"]),
                last_error=r["last_error"],
            )
            for r in rows
        ]

    def sent_case_ids_since(self, kinds: Collection[str], since: datetime) -> list[list[int]]:
        """The case ids of each mail of these kinds handed to SMTP at or after ``since``."""
        marks = ",".join("?" * len(kinds))
        rows = self.db.execute(f"SELECT case_ids FROM outbox WHERE kind IN ({marks}) AND status='sent' "
                               "AND sent_at >= ?", (*kinds, now_iso(since))).fetchall()
        return [json.loads(r["case_ids"]) for r in rows]

    def global_events_since(self, kind: str, since: datetime) -> int:
        """Events of ``kind`` recorded on no case (pass-wide ones) at or after ``since``."""
        row = self.db.execute("SELECT COUNT(*) FROM events WHERE case_id IS NULL AND kind=? AND at >= ?",
                              (kind, now_iso(since))).fetchone()
        return int(row[0])

    def mark_sent(self, outbox_id: int, now: datetime) -> None:
        self.db.execute(
            "UPDATE outbox SET status='sent', sent_at=?, attempts=attempts+1, last_error=NULL "
            "WHERE id=?",
            (now_iso(now), outbox_id),
        )

    def mark_retry(self, outbox_id: int, next_at: datetime, error: str) -> None:
        self.db.execute(
            "UPDATE outbox SET status='pending', attempts=attempts+1, next_attempt_at=?, "
            "last_error=? WHERE id=?",
            (now_iso(next_at), error, outbox_id),
        )

    def mark_sending(self, outbox_id: int) -> bool:
        """Claim a row for delivery (compare-and-swap: False if another sender has it).

        Committed before SMTP is spoken: a row found 'sending' after a crash is in doubt.
        """
        cur = self.db.execute("UPDATE outbox SET status='sending' WHERE id=? AND status='pending'", (outbox_id,))
        return cur.rowcount == 1

    def mark_unsent(self, outbox_id: int, error: str | None) -> None:
        """Back to 'pending' without using up an attempt (the server, not the mail, failed)."""
        self.db.execute(
            "UPDATE outbox SET status='pending', last_error=? WHERE id=? AND status='sending'",
            (error, outbox_id),
        )

    def in_doubt_mail(self) -> list[tuple[int, str, str, list[int]]]:
        """(id, message_id, kind, case_ids) of rows a crash left between 'sending' and 'sent'."""
        rows = self.db.execute(
            "SELECT id, message_id, kind, case_ids FROM outbox WHERE status='sending' ORDER BY id"
        ).fetchall()
        return [(r["id"], r["message_id"], r["kind"], json.loads(r["case_ids"])) for r in rows]

    def mark_failed(self, outbox_id: int, now: datetime, error: str) -> None:
        self.db.execute(
            "UPDATE outbox SET status='failed', attempts=attempts+1, last_error=?, sent_at=? "
            "WHERE id=?",
            (error, now_iso(now), outbox_id),
        )

    def mails_for_case(self, case_id: int, *, with_raw: bool = False) -> list[dict[str, Any]]:
        raw = ", raw" if with_raw else ""
        # The case's rows picked in SQLite (json_each), not every mail ever decoded in
        # Python: a reply asks this, and the outbox grows with the whole base (issue 16).
        rows = self.db.execute(
            "SELECT id, message_id, kind, case_ids, recipients, status, created_at, sent_at, "
            f"attempts, last_error{raw} FROM outbox "
            "WHERE EXISTS (SELECT 1 FROM json_each(outbox.case_ids) WHERE value = ?) ORDER BY id",
            (case_id,),
        ).fetchall()
        return [dict(r) for r in rows]

    def facility_mails_since(self, case_id: int, since: datetime) -> int:
        """Facility mails (not ``staff_*``) queued since ``since`` for ``case_id``; counted
        in SQLite (json_each), not by decoding every row of the day in Python."""
        row = self.db.execute(
            "SELECT COUNT(*) AS n FROM outbox WHERE created_at >= ? "
            "AND kind NOT LIKE 'staff\\_%' ESCAPE '\\' "
            "AND EXISTS (SELECT 1 FROM json_each(outbox.case_ids) WHERE value = ?)",
            (now_iso(since), case_id),
        ).fetchone()
        return int(row["n"])

    # -- keys -------------------------------------------------------------------------------

    def record_key(
        self, domain: str, selector: str, algorithm: str, bits: int, public_b64: str,
        now: datetime,
    ) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO domain_keys (domain, selector, algorithm, bits, public_b64, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (domain, selector, algorithm, bits, public_b64, now_iso(now)),
        )

    def domain_keys(self, domain: str) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT * FROM domain_keys WHERE domain=? ORDER BY created_at, selector", (domain,)
        ).fetchall()
        return [dict(r) for r in rows]

    def adopt_case(
        self, *, domain: str, keys: list[tuple[str, str, int, str]], now: datetime,
        next_check_at: datetime, detail: dict[str, Any],
    ) -> CaseRow:
        """A domain signed before dkimbot (``dkimbot adopt``): a ``completed`` case, its
        keys (selector, algorithm, bits, public key) recorded as installed, and its
        ``adopted`` event, in one transaction."""
        selectors = [k[0] for k in keys]
        with self.transaction():
            case = self.create_case(state=ADOPTED_STATE, now=now, adopted=True, domain=domain,
                                    selector=selectors[0], selectors=selectors, next_check_at=next_check_at)
            for selector, algorithm, bits, public_b64 in keys:
                self.record_key(domain, selector, algorithm, bits, public_b64, now)
                self.mark_key_installed(domain, selector, now)
            self.add_event(case.id, now, "adopted", None, str(ADOPTED_STATE), detail)
        return self.get_case(case.id)

    def mark_key_installed(self, domain: str, selector: str, now: datetime) -> None:
        self.db.execute(
            "UPDATE domain_keys SET installed_at=? WHERE domain=? AND selector=?",
            (now_iso(now), domain, selector),
        )

    def retire_key(self, domain: str, selector: str, now: datetime) -> None:
        """A key replaced (rotation, rekey): kept for the record, never offered again."""
        self.db.execute(
            "UPDATE domain_keys SET retired_at=? WHERE domain=? AND selector=?",
            (now_iso(now), domain, selector),
        )

    # -- meta (beyond get/set) --------------------------------------------------------------

    def delete_meta(self, key: str) -> None:
        self.db.execute("DELETE FROM meta WHERE key=?", (key,))

    # -- reports over events and the outbox (digest, rate limit, cli) -----------------------

    def events_since(self, since: datetime) -> list[dict[str, Any]]:
        """Every event at or after ``since`` with its case's ref, oldest first."""
        rows = self.db.execute(
            "SELECT e.*, c.ref FROM events e LEFT JOIN cases c ON c.id = e.case_id "
            "WHERE e.at >= ? ORDER BY e.id", (now_iso(since),),
        ).fetchall()
        return [dict(r, detail=json.loads(r["detail"])) for r in rows]

    def delivery_problems(self, since: datetime) -> list[dict[str, Any]]:
        """Outbox rows with an error: still unsent, or created since ``since``."""
        rows = self.db.execute(
            "SELECT message_id, kind, case_ids, status, attempts, last_error FROM outbox "
            "WHERE last_error IS NOT NULL AND (status != 'sent' OR created_at >= ?) ORDER BY id",
            (now_iso(since),),
        ).fetchall()
        return [dict(r) for r in rows]

    def facility_recipient_lists(self, since: datetime, address: str) -> list[list[str]]:
        """Recipient lists of facility mails (not ``staff_*``) queued since ``since`` whose
        recipients mention ``address`` (a cheap prefilter; the caller compares exactly)."""
        rows = self.db.execute(
            "SELECT recipients FROM outbox WHERE created_at >= ? AND kind NOT LIKE 'staff\\_%' ESCAPE '\\' "
            "AND lower(recipients) LIKE ?",
            (now_iso(since), f"%{address}%"),
        ).fetchall()
        return [list(json.loads(r["recipients"])) for r in rows]

    def outbox_status(self, message_id: str) -> dict[str, Any] | None:
        """``status`` and ``last_error`` of one outbox mail."""
        row = self.db.execute(
            "SELECT status, last_error FROM outbox WHERE message_id=?", (message_id,)
        ).fetchone()
        return dict(row) if row else None

    def outbox_of_kind(self, kind: str) -> dict[str, dict[str, Any]]:
        """message_id → (message_id, status, last_error) of every outbox mail of ``kind``."""
        rows = self.db.execute(
            "SELECT message_id, status, last_error FROM outbox WHERE kind=?", (kind,)
        ).fetchall()
        return {r["message_id"]: dict(r) for r in rows}

    # -- rotations --------------------------------------------------------------------------

    def add_rotation(self, domain: str, old: list[str], new: list[str], now: datetime) -> dict[str, Any]:
        """A pending rotation of ``domain`` from ``old`` to ``new`` selectors; the new row."""
        cur = self.db.execute(
            "INSERT INTO rotations (domain, old_selectors, new_selectors, status, created_at, next_check_at) "
            "VALUES (?, ?, ?, 'pending', ?, ?)",
            (domain, json.dumps(old), json.dumps(new), now_iso(now), now_iso(now)),
        )
        row = self.db.execute("SELECT * FROM rotations WHERE id=?", (cur.lastrowid,)).fetchone()
        return dict(row)

    def rotations_for_domain(self, domain: str) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT * FROM rotations WHERE domain=? ORDER BY id", (domain,)).fetchall()
        return [dict(r) for r in rows]

    def due_rotations(self, now: datetime) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT * FROM rotations WHERE status='pending' AND next_check_at <= ? ORDER BY id",
            (now_iso(now),),
        ).fetchall()
        return [dict(r) for r in rows]

    _ROTATION_COLUMNS = frozenset({"status", "next_check_at", "done_at", "detail"})

    def update_rotation(self, rotation_id: int, **fields: Any) -> None:
        unknown = set(fields) - self._ROTATION_COLUMNS
        if unknown:
            raise ValueError(f"unknown rotation fields: {sorted(unknown)}")
        values = {k: _encode(v) for k, v in fields.items()}
        assignments = ", ".join(f"{k}=?" for k in values)
        self.db.execute(f"UPDATE rotations SET {assignments} WHERE id=?", (*values.values(), rotation_id))

    # -- proofs -----------------------------------------------------------------------------

    def add_proof(self, case_id: int, message_id: str, domain: str | None, address: str,
                  now: datetime, deadline: datetime) -> None:
        self.db.execute(
            "INSERT INTO proofs (case_id, message_id, domain, address, created_at, deadline_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (case_id, message_id, domain, address, now_iso(now), now_iso(deadline)),
        )

    def proofs_for_case(self, case_id: int) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT * FROM proofs WHERE case_id=? ORDER BY id", (case_id,)).fetchall()
        return [dict(r, result=json.loads(r["result"])) for r in rows]

    def has_proof(self, case_id: int) -> bool:
        return self.db.execute("SELECT 1 FROM proofs WHERE case_id=?", (case_id,)).fetchone() is not None

    def waiting_proofs(self) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT * FROM proofs WHERE status='waiting' ORDER BY id").fetchall()
        return [dict(r) for r in rows]

    def finish_proof(self, proof_id: int, status: str, now: datetime, result: dict[str, Any]) -> None:
        self.db.execute("UPDATE proofs SET status=?, done_at=?, result=? WHERE id=?",
                        (status, now_iso(now), json.dumps(result, ensure_ascii=False), proof_id))

    # -- DMARC aggregate reports ------------------------------------------------------------

    def dmarc_mail_seen(self, key: str) -> bool:
        return self.db.execute("SELECT 1 FROM dmarc_mail WHERE key=?", (key,)).fetchone() is not None

    def record_dmarc_mail(self, key: str, now: datetime, outcome: str, detail: str = "") -> None:
        """A report mail's outcome ("stored", "duplicate", "no_case", "malformed", ...)."""
        self.db.execute("INSERT OR REPLACE INTO dmarc_mail (key, at, outcome, detail) VALUES (?, ?, ?, ?)",
                        (key, now_iso(now), outcome, detail[:500]))

    def dmarc_mail_counts(self, since: datetime) -> dict[str, int]:
        rows = self.db.execute("SELECT outcome, COUNT(*) AS n FROM dmarc_mail WHERE at >= ? GROUP BY outcome",
                               (now_iso(since),)).fetchall()
        return {r["outcome"]: int(r["n"]) for r in rows}

    def add_dmarc_report(
        self, *, reporter: str, report_id: str, reporter_email: str, sent_by: str, domain: str,
        begin: datetime, end: datetime, now: datetime, schema: str, policy_p: str, flags: list[str],
        mail_key: str, rows: list[DmarcRowIn], verified_by: str = "",
    ) -> bool:
        """Store one report and its rows; False (nothing written) when the same reporter's
        report id is already stored. ``verified_by``: the organisational domain that
        authenticated the report mail, '' when unverified."""
        cur = self.db.execute(
            "INSERT OR IGNORE INTO dmarc_reports (reporter, report_id, reporter_email, sent_by, domain, "
            "begin_at, end_at, received_at, schema, policy_p, flags, messages, mail_key, verified_by) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (reporter, report_id, reporter_email, sent_by, domain, now_iso(begin), now_iso(end),
             now_iso(now), schema, policy_p, json.dumps(flags), sum(r.messages for r in rows), mail_key,
             verified_by),
        )
        if cur.rowcount != 1:
            return False
        pk = int(cur.lastrowid or 0)
        self.db.executemany(
            "INSERT INTO dmarc_rows (report, domain, day, reporter, source_ip, ours, messages, dmarc_pass, "
            "dkim_result, dkim_aligned, dkim_domain, spf_result, spf_aligned, spf_domain, disposition, "
            "header_from, verified_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(pk, domain, r.day, reporter, r.source_ip, int(r.ours), r.messages, int(r.dmarc_pass),
              r.dkim_result, int(r.dkim_aligned), r.dkim_domain, r.spf_result, int(r.spf_aligned),
              r.spf_domain, r.disposition, r.header_from, verified_by) for r in rows],
        )
        return True

    def dmarc_source_rows(self, domain: str, since_day: str, *, verified_only: bool = False) -> list[dict[str, Any]]:
        """Per source IP and reporter since ``since_day`` (YYYY-MM-DD): message sums.

        ``verified_only``: authenticated reports only, each reporter named by the domain
        that authenticated it (what a facility may be told), never by the report's text."""
        who = "r.verified_by" if verified_only else "r.reporter"
        rows = self.db.execute(
            f"SELECT r.source_ip AS ip, {who} AS reporter, MAX(r.ours) AS ours, "
            "SUM(r.messages) AS messages, SUM(r.messages * r.dmarc_pass) AS dmarc_pass, "
            "SUM(r.messages * r.dkim_aligned) AS dkim_aligned, SUM(r.messages * r.spf_aligned) AS spf_aligned, "
            "SUM(CASE WHEN r.dkim_result = 'pass' THEN r.messages ELSE 0 END) AS dkim_pass, "
            "SUM(CASE WHEN r.spf_result = 'pass' THEN r.messages ELSE 0 END) AS spf_pass, "
            "GROUP_CONCAT(DISTINCT NULLIF(r.dkim_domain, '')) AS dkim_domains, "
            "MIN(r.day) AS first_day, MAX(r.day) AS last_day, MAX(s.name) AS name "
            "FROM dmarc_rows r LEFT JOIN dmarc_sources s ON s.ip = r.source_ip "
            "WHERE r.domain = ? AND r.day >= ? " + ("AND r.verified_by != '' " if verified_only else "")
            + f"GROUP BY r.source_ip, {who} ORDER BY r.source_ip, {who}",
            (domain, since_day),
        ).fetchall()
        return [dict(r) for r in rows]

    def dmarc_days(self, domain: str, since_day: str) -> list[dict[str, Any]]:
        """Per day since ``since_day``: messages, DMARC passes, and those of our own IPs;
        ``unverified``: the messages of them in reports whose mail was not authenticated."""
        rows = self.db.execute(
            "SELECT day, SUM(messages) AS messages, SUM(messages * dmarc_pass) AS dmarc_pass, "
            "SUM(messages * ours) AS ours_messages, SUM(messages * ours * dmarc_pass) AS ours_pass, "
            "SUM(CASE WHEN verified_by = '' THEN messages ELSE 0 END) AS unverified "
            "FROM dmarc_rows WHERE domain = ? AND day >= ? GROUP BY day ORDER BY day",
            (domain, since_day),
        ).fetchall()
        return [dict(r) for r in rows]

    def dmarc_first_day(self, domain: str, *, verified_only: bool = False) -> str | None:
        row = self.db.execute("SELECT MIN(day) AS d FROM dmarc_rows WHERE domain = ?"
                              + (" AND verified_by != ''" if verified_only else ""), (domain,)).fetchone()
        return row["d"] if row else None

    def dmarc_latest_policy(self, domain: str, *, verified_only: bool = False) -> str:
        row = self.db.execute("SELECT policy_p FROM dmarc_reports WHERE domain = ?"
                              + (" AND verified_by != ''" if verified_only else "")
                              + " ORDER BY begin_at DESC, id DESC LIMIT 1", (domain,)).fetchone()
        return str(row["policy_p"]) if row else ""

    def dmarc_domains(self, since_day: str) -> list[str]:
        rows = self.db.execute("SELECT DISTINCT domain FROM dmarc_rows WHERE day >= ? ORDER BY domain",
                               (since_day,)).fetchall()
        return [r["domain"] for r in rows]

    def dmarc_ours_failing(self, received_since: datetime, *, verified: bool = True) -> list[dict[str, Any]]:
        """Our own IPs' DMARC failures in reports received since then, per domain and
        reporter: of authenticated reports (``verified``), or of the unverified ones."""
        rows = self.db.execute(
            "SELECT r.domain AS domain, r.reporter AS reporter, "
            "SUM(r.messages * (1 - r.dmarc_pass)) AS failed, SUM(r.messages) AS messages, "
            "GROUP_CONCAT(DISTINCT r.source_ip) AS ips "
            "FROM dmarc_rows r JOIN dmarc_reports p ON p.id = r.report "
            "WHERE r.ours = 1 AND p.received_at >= ? AND (r.verified_by != '') = ? GROUP BY r.domain, r.reporter "
            "HAVING failed > 0 ORDER BY r.domain, r.reporter",
            (now_iso(received_since), int(verified)),
        ).fetchall()
        return [dict(r) for r in rows]

    def dmarc_flagged_reports(self, received_since: datetime) -> list[dict[str, Any]]:
        """Reports kept but marked (unverified reporter, rows for other domains) since then."""
        rows = self.db.execute(
            "SELECT reporter, report_id, domain, sent_by, flags, messages FROM dmarc_reports "
            "WHERE received_at >= ? AND flags != '[]' ORDER BY id", (now_iso(received_since),),
        ).fetchall()
        return [dict(r, flags=json.loads(r["flags"])) for r in rows]

    def prune_dmarc(self, before_day: str) -> int:
        """Forget report rows and report-mail outcomes older than ``before_day`` (the
        reports' ids stay, so an old report sent again still counts as a duplicate)."""
        cur = self.db.execute("DELETE FROM dmarc_rows WHERE day < ?", (before_day,))
        self.db.execute("DELETE FROM dmarc_mail WHERE at < ?", (before_day,))
        return int(cur.rowcount or 0)

    def dmarc_unnamed_sources(self, ips: list[str], checked_before: datetime) -> list[str]:
        """Which of ``ips`` have no name yet and were not looked up since ``checked_before``."""
        out = []
        for ip in ips:
            row = self.db.execute("SELECT name, checked_at FROM dmarc_sources WHERE ip=?", (ip,)).fetchone()
            if row is None or (row["name"] is None and row["checked_at"] < now_iso(checked_before)):
                out.append(ip)
        return out

    def set_dmarc_source(self, ip: str, name: str | None, how: str, now: datetime) -> None:
        self.db.execute("INSERT OR REPLACE INTO dmarc_sources (ip, name, how, checked_at) VALUES (?, ?, ?, ?)",
                        (ip, name, how, now_iso(now)))

    # -- staff site: accounts, sessions, login slow-down (bot/web/) -------------------------

    def add_staff(self, name: str, password_hash: str, now: datetime) -> bool:
        """False when the name is taken (the old password stays)."""
        cur = self.db.execute(
            "INSERT OR IGNORE INTO staff (name, password_hash, created_at) VALUES (?, ?, ?)",
            (name, password_hash, now_iso(now)),
        )
        return cur.rowcount == 1

    def remove_staff(self, name: str) -> bool:
        """Remove an account and end its sessions at once."""
        with self.transaction():
            self.db.execute("DELETE FROM staff_sessions WHERE name=?", (name,))
            cur = self.db.execute("DELETE FROM staff WHERE name=?", (name,))
        return cur.rowcount == 1

    def list_staff(self) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT s.name, s.created_at, (SELECT COUNT(*) FROM staff_sessions t "
            "WHERE t.name = s.name) AS sessions FROM staff s ORDER BY s.name"
        ).fetchall()
        return [dict(r) for r in rows]

    def staff_password_hash(self, name: str) -> str | None:
        row = self.db.execute("SELECT password_hash FROM staff WHERE name=?", (name,)).fetchone()
        return str(row["password_hash"]) if row else None

    def set_staff_password_hash(self, name: str, password_hash: str) -> None:
        """A rehash on login when the hasher's parameters were raised."""
        self.db.execute("UPDATE staff SET password_hash=? WHERE name=?", (password_hash, name))

    def create_session(self, token_hash: str, name: str, csrf: str, now: datetime,
                       expires: datetime) -> None:
        with self.transaction():
            self.db.execute("DELETE FROM staff_sessions WHERE expires_at <= ?", (now_iso(now),))
            self.db.execute(
                "INSERT INTO staff_sessions (token_hash, name, csrf, created_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (token_hash, name, csrf, now_iso(now), now_iso(expires)),
            )

    def session(self, token_hash: str, now: datetime) -> tuple[str, str, datetime, datetime] | None:
        """(staff name, CSRF token, created, expires) of a live session of an existing account."""
        row = self.db.execute(
            "SELECT t.name, t.csrf, t.created_at, t.expires_at FROM staff_sessions t "
            "JOIN staff s ON s.name = t.name WHERE t.token_hash=? AND t.expires_at > ?",
            (token_hash, now_iso(now)),
        ).fetchone()
        if row is None:
            return None
        return (str(row["name"]), str(row["csrf"]), datetime.fromisoformat(row["created_at"]),
                datetime.fromisoformat(row["expires_at"]))

    def extend_session(self, token_hash: str, expires: datetime) -> bool:
        """Move a session's end (the idle limit slides with each page, bot/web/auth.py).
        Waits at most 0.2 s for the write lock: a page must not wait for a pass, and a
        slide left out is made by the next page. False when it was left out."""
        self.db.execute("PRAGMA busy_timeout = 200")
        try:
            with self.transaction():
                self.db.execute("UPDATE staff_sessions SET expires_at=? WHERE token_hash=?",
                                (now_iso(expires), token_hash))
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            return False
        return True

    def delete_session(self, token_hash: str) -> None:
        self.db.execute("DELETE FROM staff_sessions WHERE token_hash=?", (token_hash,))

    def end_sessions(self, name: str) -> None:
        self.db.execute("DELETE FROM staff_sessions WHERE name=?", (name,))

    def login_failures(self, key: str) -> tuple[int, datetime | None]:
        """Wrong passwords in a row for ``key`` (an account name or a client address)."""
        row = self.db.execute("SELECT failures, last_at FROM login_failures WHERE key=?", (key,)).fetchone()
        return (int(row["failures"]), datetime.fromisoformat(row["last_at"])) if row else (0, None)

    def note_login_failure(self, key: str, now: datetime) -> None:
        # Rows of names nobody tried for a day go: made-up names must not pile up.
        self.db.execute("DELETE FROM login_failures WHERE last_at < ?", (now_iso(now - timedelta(days=1)),))
        self.db.execute(
            "INSERT INTO login_failures (key, failures, last_at) VALUES (?, 1, ?) "
            "ON CONFLICT(key) DO UPDATE SET failures = failures + 1, last_at = excluded.last_at",
            (key, now_iso(now)),
        )

    def clear_login_failures(self, key: str) -> None:
        self.db.execute("DELETE FROM login_failures WHERE key=?", (key,))

    # -- staff site: the case list and the charts (read-only) -----------------------------

    def case_page(
        self, *, states: tuple[str, ...] = (), search: str = "", stuck_states: tuple[str, ...] = (),
        stuck_before: datetime | None = None, active_states: tuple[str, ...] = (),
        offset: int = 0, limit: int = 100,
    ) -> tuple[list[CaseRow], int]:
        """One page of cases, stuck ones first, then the longest in their state; and the count.

        Stuck: in ``stuck_states`` since before ``stuck_before``. ``search`` matches the
        reference, the domain or the facility name (substring, case-insensitive).
        """
        where: list[str] = []
        args: list[Any] = []
        if states:
            where.append(f"state IN ({', '.join('?' for _ in states)})")
            args += states
        if search:
            pattern = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            where.append("(ref LIKE ? ESCAPE '\\' OR domain LIKE ? ESCAPE '\\' OR facility LIKE ? ESCAPE '\\')")
            args += [pattern, pattern, pattern]
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        total = int(self.db.execute(f"SELECT COUNT(*) FROM cases{clause}", args).fetchone()[0])
        stuck_marks = ", ".join("?" for _ in stuck_states) or "NULL"
        active_marks = ", ".join("?" for _ in active_states) or "NULL"
        order = (f"(state IN ({stuck_marks}) AND state_since <= ?) DESC, "
                 f"(state IN ({active_marks})) DESC, state_since ASC, id ASC")
        cutoff = now_iso(stuck_before) if stuck_before else ""
        # Sort the ids only, then read the page's rows: a sorter holding whole rows up to
        # OFFSET made the last page of 10,000 cases four times slower than the first.
        ids = [int(r[0]) for r in self.db.execute(
            f"SELECT id FROM cases{clause} ORDER BY {order} LIMIT ? OFFSET ?",
            (*args, *stuck_states, cutoff, *active_states, limit, offset),
        )]
        if not ids:
            return [], total
        rows = {int(r["id"]): r for r in self.db.execute(
            f"SELECT * FROM cases WHERE id IN ({', '.join('?' for _ in ids)})", ids)}
        return [CaseRow.from_row(rows[i]) for i in ids], total

    def state_counts(self) -> dict[str, int]:
        rows = self.db.execute("SELECT state, COUNT(*) AS n FROM cases GROUP BY state").fetchall()
        return {str(r["state"]): int(r["n"]) for r in rows}

    def case_summaries(self) -> list[tuple[int, datetime, str, str | None]]:
        """(id, created_at, state, last_notice) of every case, for the charts."""
        rows = self.db.execute("SELECT id, created_at, state, last_notice FROM cases ORDER BY id").fetchall()
        return [(int(r["id"]), datetime.fromisoformat(r["created_at"]), str(r["state"]), r["last_notice"])
                for r in rows]

    def first_reached(self, states: tuple[str, ...]) -> dict[int, dict[str, datetime]]:
        """case id -> {state: when the case first entered it} (from the event log)."""
        marks = ", ".join("?" for _ in states)
        rows = self.db.execute(
            f"SELECT case_id, to_state, MIN(at) AS at FROM events WHERE to_state IN ({marks}) "
            "AND (from_state IS NULL OR from_state != to_state) AND case_id IS NOT NULL "
            "GROUP BY case_id, to_state", states,
        ).fetchall()
        out: dict[int, dict[str, datetime]] = {}
        for r in rows:
            out.setdefault(int(r["case_id"]), {})[str(r["to_state"])] = datetime.fromisoformat(r["at"])
        return out
    # -- proof of control (bot/flows/confirm.py) ---------------------------------------------

    def add_confirmation(self, *, case_id: int, domain: str, address: str, token: str | None,
                         status: str, how: str | None, now: datetime) -> int:
        cur = self.db.execute(
            "INSERT INTO confirmations (case_id, domain, address, token, status, how, created_at, done_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (case_id, domain, address, token, status, how, now_iso(now),
             now_iso(now) if status != "pending" else None),
        )
        return int(cur.lastrowid or 0)

    def confirmation_for_case(self, case_id: int) -> dict[str, Any] | None:
        row = self.db.execute(
            "SELECT * FROM confirmations WHERE case_id=? ORDER BY id DESC LIMIT 1", (case_id,)
        ).fetchone()
        return dict(row) if row else None

    def confirmation_by_token(self, token: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM confirmations WHERE token=?", (token,)).fetchone()
        return dict(row) if row else None

    def confirmations_with_status(self, status: str) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT * FROM confirmations WHERE status=? ORDER BY id", (status,)
        ).fetchall()
        return [dict(r) for r in rows]

    def set_confirmation(self, confirmation_id: int, now: datetime, *, status: str | None = None,
                         how: str | None = None, mailed: bool = False, reminded: bool = False,
                         detail: dict[str, Any] | None = None) -> None:
        sets, args = [], []
        if status is not None:
            sets += ["status=?", "done_at=?"]
            args += [status, now_iso(now)]
        if how is not None:
            sets.append("how=?")
            args.append(how)
        if mailed:
            sets.append("mailed_at=?")
            args.append(now_iso(now))
        if reminded:
            sets.append("reminded_at=?")
            args.append(now_iso(now))
        if detail is not None:
            sets.append("detail=?")
            args.append(json.dumps(detail, ensure_ascii=False, default=str))
        if sets:
            self.db.execute(f"UPDATE confirmations SET {', '.join(sets)} WHERE id=?", (*args, confirmation_id))

    def confirmation_mails_in_zone_since(self, zone: str, since: datetime) -> int:
        """Confirmation mails (first or reminder) sent since ``since`` to ``zone`` or any
        name under it (a stranger picks the labels: r1.victim, r2.victim, ...)."""
        under = "." + zone
        row = self.db.execute(
            "SELECT (SELECT count(*) FROM confirmations WHERE (domain=? OR substr(domain, -?)=?) "
            "AND mailed_at >= ?) + (SELECT count(*) FROM confirmations WHERE "
            "(domain=? OR substr(domain, -?)=?) AND reminded_at >= ?)",
            (zone, len(under), under, now_iso(since), zone, len(under), under, now_iso(since)),
        ).fetchone()
        return int(row[0])

    def add_managed_record(self, case_id: int, zone: str, server: str, owner: str, value: str,
                           now: datetime) -> None:
        self.db.execute(
            "INSERT INTO managed_records (case_id, zone, server, owner, value, published_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (case_id, zone, server, owner, value, now_iso(now)),
        )

    def managed_records(self, case_id: int) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT * FROM managed_records WHERE case_id=? AND removed_at IS NULL ORDER BY id", (case_id,)
        ).fetchall()
        return [dict(r) for r in rows]

    def mark_managed_records_removed(self, record_ids: list[int], now: datetime) -> None:
        for rid in record_ids:
            self.db.execute("UPDATE managed_records SET removed_at=? WHERE id=?", (now_iso(now), rid))

    def staff_mails_since(self, since: datetime) -> list[dict[str, Any]]:
        """Staff mails (``staff_*``) queued since ``since``: kind and case ids (the staff gate)."""
        rows = self.db.execute(
            "SELECT kind, case_ids FROM outbox WHERE created_at >= ? AND kind LIKE 'staff\\_%' ESCAPE '\\'",
            (now_iso(since),),
        ).fetchall()
        return [{"kind": r["kind"], "case_ids": json.loads(r["case_ids"])} for r in rows]

    def requesters_since(self, since: datetime) -> list[str | None]:
        """The requester of every case opened since ``since`` (per-sender daily limit)."""
        rows = self.db.execute("SELECT requester FROM cases WHERE created_at >= ?", (now_iso(since),)).fetchall()
        return [r["requester"] for r in rows]

    def bot_message_ids(self, case_id: int) -> set[str]:
        """Message-IDs of the facility mails the bot queued for ``case_id`` (not staff mail)."""
        return {m["message_id"] for m in self.mails_for_case(case_id) if not str(m["kind"]).startswith("staff_")}
