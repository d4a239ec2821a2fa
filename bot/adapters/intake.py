"""Intake: read new mail from the support mailbox (IMAP) or the embedded Maildir.

The mailbox is shared with humans, so the bot only ever reads: the IMAP folder is opened
read-only (EXAMINE) and bodies are fetched with BODY.PEEK, which never sets \\Seen.
Progress is remembered as (UIDVALIDITY, last UID) in the store; a new UIDVALIDITY
means the UIDs were renumbered and the folder is read again (handled Message-IDs
keep that from answering anything twice).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bot.config import Config

if TYPE_CHECKING:
    from imapclient import IMAPClient  # untyped library: Any to mypy

log = logging.getLogger(__name__)

# Headers that decide whether a message's body is worth fetching at all.
HEADER_FIELDS = (
    "SUBJECT FROM MESSAGE-ID IN-REPLY-TO REFERENCES AUTO-SUBMITTED PRECEDENCE LIST-ID "
    "X-AUTO-RESPONSE-SUPPRESS RETURN-PATH CONTENT-TYPE X-DKIMBOT-LOOP"
)

@dataclass
class InboxMessage:
    key: str                 # stable identity: "imap:<folder>:<uidvalidity>:<uid>" or "maildir:<name>"
    raw: bytes
    size: int
    # Over [intake] max_message_bytes: never fetched, so ``raw`` is empty and this holds
    # the header lines read to select it; the caller tells staff instead of parsing it.
    oversized_header: bytes | None = None


class IntakeError(Exception):
    """The mailbox cannot be read now (server down, login refused); retried next pass."""


class HeaderFilter:
    """Decide from headers alone whether the bot must read a message's body.

    A message is a candidate when its subject looks like a request or a case reply, or it
    answers one of the bot's own mails. Everything else is left alone (never fetched).
    """

    def __init__(self, is_request_subject: Callable[[str], bool], known_ids: Callable[[list[str]], bool]):
        self.is_request_subject = is_request_subject
        self.known_ids = known_ids

    def wants(self, header_bytes: bytes) -> bool:
        # Imported at the first message: an empty mailbox (an idle cron pass) reads none.
        import email.parser
        import email.policy

        from bot.core.mailtext import decode_header_value

        # compat32 + raw values + our own decoder, exactly as bot/core/request.py reads the
        # subject: the stdlib's decoder turns a mislabelled encoded word (CP932 bytes
        # labelled ISO-2022-JP, as some mailers send) into U+FFFD, and such a request
        # would never be fetched (fixture mislabelled_charsets).
        msg = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(header_bytes)
        raw = {name.lower(): value for name, value in reversed(list(msg.raw_items()))
               if isinstance(name, str) and isinstance(value, str)}
        try:
            subject = re.sub(r"\s+", " ", decode_header_value(raw.get("subject"))).strip()
        except Exception:  # noqa: BLE001 -- a broken encoded-word: the full parser judges (and logs) it
            return True
        from bot.core.request import case_refs_in  # one definition of a case reference

        if case_refs_in(subject) or self.is_request_subject(subject):
            return True
        ids: list[str] = []
        for name in ("in-reply-to", "references"):
            ids += re.findall(r"<[^<>\s]+>", raw.get(name, ""))
        return bool(ids) and self.known_ids(ids)


def maildir_files(path: Path) -> list[tuple[str, Path]]:
    """A Maildir's messages (new/ and cur/), oldest first: (the name without its ``:2,``
    flags, which stays the same when a reader marks the message seen, and the file).
    A missing new/ or cur/ is an empty one; dot files are not messages."""
    found: list[tuple[float, str, Path]] = []
    for sub in ("new", "cur"):
        folder = path / sub
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            if entry.is_file() and not entry.name.startswith("."):
                found.append((entry.stat().st_mtime, entry.name, Path(entry.path)))
    return [(name.split(":2,")[0], file) for _, name, file in sorted(found)]


class MaildirMailbox:
    """The embedded default inbox: a Maildir under the state dir, read in place."""

    def __init__(self, path: Path) -> None:
        self.path = path
        for sub in ("new", "cur", "tmp"):
            (path / sub).mkdir(parents=True, exist_ok=True)

    def fetch_new(
        self, last_seen: Callable[[str], bool], header_filter: HeaderFilter,
        max_bytes: int, on_skipped: Callable[[str, str], None],
    ) -> Iterator[InboxMessage]:
        for name, path in maildir_files(self.path):
            key = "maildir:" + name
            if last_seen(key):
                continue
            size = path.stat().st_size
            with open(path, "rb") as fh:
                head = fh.read(64 * 1024).split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
            if not header_filter.wants(head):
                on_skipped(key, "not a request or reply")
                continue
            if size > max_bytes:
                yield InboxMessage(key=key, raw=b"", size=size, oversized_header=head)
                continue
            yield InboxMessage(key=key, raw=path.read_bytes(), size=size)

    def close(self) -> None:
        pass

    def deliver(self, raw: bytes) -> Path:
        """Put a message in new/ the way an MTA would (used by the demo and tests)."""
        import time
        import uuid

        name = f"{time.time():.6f}.{uuid.uuid4().hex}.dkimbot"
        tmp = self.path / "tmp" / name
        tmp.write_bytes(raw)
        final = self.path / "new" / name
        os.replace(tmp, final)
        return final


def connect_imap(host: str, port: int, tls: str, username: str, password: str, timeout: float) -> IMAPClient:
    """A logged-in IMAPClient ("ssl", "starttls" or "none"); raises what the library raises."""
    import ssl

    from imapclient import IMAPClient  # heavy import, only when IMAP is used

    if tls == "ssl":
        client = IMAPClient(host, port=port, ssl=True, timeout=timeout,
                            ssl_context=ssl.create_default_context())
    else:
        client = IMAPClient(host, port=port, ssl=False, timeout=timeout)
        if tls == "starttls":
            client.starttls(ssl.create_default_context())
    client.login(username, password)
    return client


class ImapMailbox:
    """IMAP intake with imapclient: EXAMINE, incremental by UID, headers first."""

    def __init__(self, cfg: Config, state_get: Callable[[str], str | None]) -> None:
        self.cfg = cfg.intake
        self.state_get = state_get
        self.client: IMAPClient | None = None
        self.uidvalidity: int | None = None
        self.progress: tuple[str, str] | None = None  # (meta key, value) to store after the pass

    def _connect(self) -> IMAPClient:
        c = self.cfg
        try:
            return connect_imap(c.host, c.port, c.tls, c.username, c.password, c.timeout)
        except Exception as exc:  # noqa: BLE001 -- socket, IMAPClient.Error, TLS: reported as IntakeError
            raise IntakeError(f"IMAP {c.host}:{c.port} unavailable: {exc}") from None

    def meta_key(self) -> str:
        return f"imap:{self.cfg.host}:{self.cfg.username}:{self.cfg.folder}"

    def fetch_new(
        self, last_seen: Callable[[str], bool], header_filter: HeaderFilter,
        max_bytes: int, on_skipped: Callable[[str, str], None],
        on_progress: Callable[[str, str], None] | None = None,
    ) -> Iterator[InboxMessage]:
        """New messages; a server that dies or stalls mid-way is an IntakeError, never a traceback."""
        import imaplib

        try:
            yield from self._fetch_new(last_seen, header_filter, max_bytes, on_skipped, on_progress)
        except (imaplib.IMAP4.error, OSError) as exc:  # imapclient's errors derive from IMAP4.error
            c = self.cfg
            raise IntakeError(f"IMAP {c.host}:{c.port} failed: {exc or type(exc).__name__}") from None

    def _fetch_new(
        self, last_seen: Callable[[str], bool], header_filter: HeaderFilter,
        max_bytes: int, on_skipped: Callable[[str, str], None],
        on_progress: Callable[[str, str], None] | None = None,
    ) -> Iterator[InboxMessage]:
        client = self._connect()
        self.client = client
        try:
            info = client.select_folder(self.cfg.folder, readonly=True)
        except Exception as exc:  # noqa: BLE001 -- any server or library error: reported as IntakeError
            raise IntakeError(f"IMAP folder {self.cfg.folder!r} cannot be opened: {exc}") from None
        uidvalidity = int(info.get(b"UIDVALIDITY", 0))
        mkey = self.meta_key()
        stored = self.state_get(mkey)
        last_uid = 0
        if stored:
            validity, _, uid = stored.partition(":")
            if int(validity) == uidvalidity:
                last_uid = int(uid)
            else:
                log.warning("IMAP UIDVALIDITY changed (%s -> %s): rereading folder", validity, uidvalidity)
        uids = [u for u in client.search(["UID", f"{last_uid + 1}:*"]) if u > last_uid]
        uids.sort()
        batch = max(1, self.cfg.header_batch)
        fields = f"BODY.PEEK[HEADER.FIELDS ({HEADER_FIELDS})]"
        for start in range(0, len(uids), batch):
            chunk = uids[start:start + batch]
            heads = client.fetch(chunk, [fields, "RFC822.SIZE"])
            for uid in chunk:
                data = heads.get(uid)
                if data is None:
                    continue  # expunged meanwhile
                key = f"imap:{self.cfg.folder}:{uidvalidity}:{uid}"
                header = next((v for k, v in data.items() if k.startswith(b"BODY[HEADER")), b"")
                size = int(data.get(b"RFC822.SIZE", 0))
                if not header_filter.wants(header or b""):
                    continue
                if last_seen(key):
                    continue
                if size > max_bytes:
                    yield InboxMessage(key=key, raw=b"", size=size, oversized_header=bytes(header or b""))
                    continue
                body = client.fetch([uid], ["BODY.PEEK[]"]).get(uid, {})
                raw = body.get(b"BODY[]")
                if raw is None:
                    continue
                yield InboxMessage(key=key, raw=bytes(raw), size=size)
            # Everything up to here was handled (or deliberately left alone).
            if on_progress is not None:
                on_progress(mkey, f"{uidvalidity}:{chunk[-1]}")

    def close(self) -> None:
        if self.client is not None:
            try:
                self.client.logout()
            except Exception as exc:  # noqa: BLE001 -- the connection is being dropped anyway
                log.debug("IMAP logout failed: %s", type(exc).__name__)
            self.client = None
