"""The store's rows as values: a case (``CaseRow``) and an outbox mail (``OutboxRow``),
and the one timestamp format the store writes. Pure: the SQL is ``bot/adapters/store.py``;
flows and the core pass these around without importing the store.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


def now_iso(now: datetime) -> str:
    return now.astimezone(UTC).isoformat(timespec="seconds")


def parse_iso(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


@dataclass
class CaseRow:
    """One facility's case, as stored."""

    id: int
    ref: str
    facility: str | None
    contact_name: str | None
    contact_email: str | None
    contact_phone: str | None
    admin_email: str | None
    domain: str | None
    selector: str | None
    selectors: list[str]
    state: str
    requester: str | None
    thread_root: str | None
    thread_last: str | None
    thread_refs: list[str]
    created_at: datetime
    updated_at: datetime
    state_since: datetime
    next_check_at: datetime | None
    reminders_sent: int
    last_notice: str | None
    reply_pending: bool
    resume_state: str | None
    problems: list[dict[str, Any]]

    @classmethod
    def from_row(cls, d: Mapping[str, Any]) -> CaseRow:
        """From a ``cases`` row as a mapping of column → value (the store passes ``dict(row)``)."""
        return cls(
            id=d["id"], ref=d["ref"], facility=d["facility"], contact_name=d["contact_name"],
            contact_email=d["contact_email"], contact_phone=d["contact_phone"],
            admin_email=d["admin_email"], domain=d["domain"], selector=d["selector"],
            selectors=json.loads(d["selectors"]), state=d["state"], requester=d["requester"],
            thread_root=d["thread_root"], thread_last=d["thread_last"],
            thread_refs=json.loads(d["thread_refs"]),
            created_at=datetime.fromisoformat(d["created_at"]),
            updated_at=datetime.fromisoformat(d["updated_at"]),
            state_since=datetime.fromisoformat(d["state_since"]),
            next_check_at=parse_iso(d["next_check_at"]), reminders_sent=d["reminders_sent"],
            last_notice=d["last_notice"], reply_pending=bool(d["reply_pending"]),
            resume_state=d["resume_state"], problems=json.loads(d["problems"]),
        )

    def to_json(self) -> dict[str, Any]:
        """The public shape of ``dkimbot status --json`` (SPEC §5)."""
        return {
            "case": self.ref,
            "facility": self.facility,
            "admin_email": self.admin_email,
            "domain": self.domain,
            "selector": self.selector,
            "selectors": self.selectors,
            "state": self.state,
            "requester": self.requester,
            "contact_email": self.contact_email,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "state_since": self.state_since.isoformat(),
            "next_check_at": self.next_check_at.isoformat() if self.next_check_at else None,
            "reminders_sent": self.reminders_sent,
            "problems": self.problems,
        }


@dataclass
class OutboxRow:
    id: int
    message_id: str
    kind: str
    case_ids: list[int]
    sender: str
    recipients: list[str]
    raw: bytes
    status: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
