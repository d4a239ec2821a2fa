"""The DMARC report mailbox ([reports]): IMAP or a Maildir, read-only and incremental.

The rua mailbox may be read by people or other tools too, so it is treated like the
support mailbox: the folder is opened with EXAMINE, bodies are fetched with
BODY.PEEK (no \\Seen), nothing is moved or deleted. Progress is (UIDVALIDITY, last UID)
kept by the caller in the store's meta table; a new UIDVALIDITY rereads the folder
(every mail's key and every report's id are remembered, so nothing counts twice).
"""

from __future__ import annotations

import imaplib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bot.adapters.intake import connect_imap, maildir_files
from bot.config import ReportsConfig

log = logging.getLogger(__name__)

BODY_BATCH = 25
SIZE_BATCH = 1000


@dataclass
class ReportMessage:
    key: str          # "dmarc:imap:<folder>:<uidvalidity>:<uid>" or "dmarc:maildir:<name>"
    raw: bytes        # empty when oversized (never fetched)
    size: int
    oversized: bool = False


class ReportsMailboxError(Exception):
    """The report mailbox cannot be read now; tried again next pass."""


class _Imap(Protocol):
    """The part of imapclient.IMAPClient used here."""

    def select_folder(self, folder: str, readonly: bool = False) -> dict[bytes, Any]: ...
    def search(self, criteria: list[str]) -> list[int]: ...
    def fetch(self, messages: list[int], data: list[str]) -> dict[int, dict[bytes, Any]]: ...
    def logout(self) -> bytes: ...


class ReportMailbox(Protocol):
    def messages(self, seen: Callable[[str], bool]) -> Iterator[ReportMessage]: ...
    def progress(self) -> tuple[str, str] | None: ...
    def close(self) -> None: ...


class MaildirReports:
    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes

    def messages(self, seen: Callable[[str], bool]) -> Iterator[ReportMessage]:
        for name, path in maildir_files(self.path):
            key = "dmarc:maildir:" + name
            if seen(key):
                continue
            size = path.stat().st_size
            if size > self.max_bytes:
                yield ReportMessage(key, b"", size, oversized=True)
            else:
                yield ReportMessage(key, path.read_bytes(), size)

    def progress(self) -> tuple[str, str] | None:
        return None  # every file's key is remembered instead

    def close(self) -> None:
        return None


class ImapReports:
    def __init__(self, cfg: ReportsConfig, stored_progress: str | None) -> None:
        self.cfg = cfg
        self.stored = stored_progress
        self._progress: tuple[str, str] | None = None
        self.client: _Imap | None = None

    def meta_key(self) -> str:
        return f"dmarc:imap:{self.cfg.host}:{self.cfg.username}:{self.cfg.folder}"

    def messages(self, seen: Callable[[str], bool]) -> Iterator[ReportMessage]:
        c = self.cfg
        try:
            yield from self._messages(seen)
        except (imaplib.IMAP4.error, OSError) as exc:  # imapclient's errors derive from IMAP4.error
            raise ReportsMailboxError(f"report mailbox {c.host}:{c.port} failed: {exc or type(exc).__name__}") from None

    def _messages(self, seen: Callable[[str], bool]) -> Iterator[ReportMessage]:
        c = self.cfg
        try:
            client: _Imap = connect_imap(c.host, c.port, c.tls, c.username, c.password, c.timeout)
        except (imaplib.IMAP4.error, OSError) as exc:
            raise ReportsMailboxError(f"report mailbox {c.host}:{c.port} unavailable: {exc}") from None
        self.client = client
        info = client.select_folder(c.folder, readonly=True)  # EXAMINE
        validity = int(info.get(b"UIDVALIDITY", 0))
        last = 0
        if self.stored:
            old, _, last_text = self.stored.partition(":")
            if old == str(validity):
                last = int(last_text)
            else:
                log.warning("report mailbox UIDVALIDITY changed (%s -> %s): rereading", old, validity)
        uids = sorted(u for u in client.search(["UID", f"{last + 1}:*"]) if u > last)
        if not uids:
            return
        sizes: dict[int, dict[bytes, Any]] = {}
        for start in range(0, len(uids), SIZE_BATCH):  # bounded commands on a long catch-up
            sizes.update(client.fetch(uids[start:start + SIZE_BATCH], ["RFC822.SIZE"]))
        wanted: list[int] = []
        for uid in uids:
            key = f"dmarc:imap:{c.folder}:{validity}:{uid}"
            size = int(sizes.get(uid, {}).get(b"RFC822.SIZE", 0))
            if uid not in sizes or seen(key):
                continue
            if size > c.max_message_bytes:
                yield ReportMessage(key, b"", size, oversized=True)
            else:
                wanted.append(uid)
        for start in range(0, len(wanted), BODY_BATCH):
            chunk = wanted[start:start + BODY_BATCH]
            bodies = client.fetch(chunk, ["BODY.PEEK[]", "RFC822.SIZE"])
            for uid in chunk:
                body = bodies.get(uid, {}).get(b"BODY[]")
                if body is not None:
                    yield ReportMessage(f"dmarc:imap:{c.folder}:{validity}:{uid}", bytes(body), len(body))
        self._progress = (self.meta_key(), f"{validity}:{uids[-1]}")

    def progress(self) -> tuple[str, str] | None:
        """(meta key, "UIDVALIDITY:UID") once every new message was yielded."""
        return self._progress

    def close(self) -> None:
        if self.client is not None:
            try:
                self.client.logout()
            except (imaplib.IMAP4.error, OSError) as exc:  # the connection is going away anyway
                log.debug("report mailbox logout: %s", exc)
            self.client = None


def open_report_mailbox(cfg: ReportsConfig, maildir: Path, get_meta: Callable[[str], str | None]) -> ReportMailbox:
    if cfg.kind == "maildir":
        return MaildirReports(maildir, cfg.max_message_bytes)
    box = ImapReports(cfg, None)
    box.stored = get_meta(box.meta_key())
    return box
