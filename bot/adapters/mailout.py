"""Outbound mail: a rendered template (``mailrender.py``) into a threaded, UTF-8
message; deliver it (SMTP, or .eml files in a directory).

Messages are rendered when a decision is made (so the Message-ID is fixed and stored in
the outbox) and delivered later by ``flush_outbox_once``.
"""

from __future__ import annotations

import os
import smtplib
import ssl
import uuid
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address, BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, getaddresses
from pathlib import Path

from bot.adapters.mailrender import MailRenderer as MailRenderer  # re-exported: the older home
from bot.adapters.mailrender import TemplateError as TemplateError
from bot.adapters.mailrender import shipped_templates_dir as shipped_templates_dir
from bot.adapters.mailrender import show_domain as show_domain
from bot.adapters.mailrender import show_domain_ja as show_domain_ja
from bot.config import Config

LOOP_HEADER = "X-Dkimbot-Loop"


@dataclass
class RenderedMail:
    message_id: str
    kind: str
    sender: str
    recipients: list[str]
    raw: bytes


class _CachedHeaderRegistry(HeaderRegistry):
    """``email``'s registry makes a new header class (``type(...)``) every time a header
    is set or parsed: ~10% of building a mail, and a pass builds hundreds. The same
    classes, made once per header name (a benign race at worst makes one twice)."""

    def __init__(self) -> None:
        super().__init__()
        self._made: dict[str, type[BaseHeader]] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        key = name.lower()
        made = self._made.get(key)
        if made is None:
            made = self._made[key] = super().__getitem__(name)
        return made


#: SMTP's policy (CRLF, 78-column folding) with the cached registry.
MAIL_POLICY = SMTP.clone(header_factory=_CachedHeaderRegistry())


def new_message_id(domain: str) -> str:
    return f"<dkimbot.{uuid.uuid4().hex}@{domain}>"


def build_message(
    cfg: Config,
    *,
    kind: str,
    subject: str,
    body: str,
    to: list[str],
    cc: list[str],
    now: datetime,
    in_reply_to: str | None = None,
    references: list[str] | None = None,
    case_refs: list[str] | None = None,
) -> RenderedMail:
    service = cfg.service
    domain = cfg.bot_domain
    msg = EmailMessage(policy=MAIL_POLICY)
    local, _, dom = service.support_address.partition("@")
    msg["From"] = Address(service.company_name, local, dom)
    msg["To"] = ", ".join(to)
    if cc:
        msg["Cc"] = ", ".join(cc)
    msg["Subject"] = subject
    msg["Date"] = format_datetime(now)
    message_id = new_message_id(domain)
    msg["Message-ID"] = message_id
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    refs = [r for r in (references or []) if r]
    if refs:
        # Long References headers are folded by the policy; keep the last 20 ids.
        msg["References"] = " ".join(refs[-20:])
    # RFC 3834: an automatic reply; other bots must not answer it, and we recognise our own.
    msg["Auto-Submitted"] = "auto-replied"
    msg["X-Auto-Response-Suppress"] = "All"
    msg[LOOP_HEADER] = domain
    if case_refs:
        msg["X-Dkimbot-Case"] = " ".join(case_refs)
    msg.set_content(body, charset="utf-8", cte="base64")
    recipients = [addr for _, addr in getaddresses(to + cc) if addr]
    # De-duplicate while keeping order: a contact may also be the requester or staff.
    seen: set[str] = set()
    unique: list[str] = []
    for a in recipients:
        if a.lower() not in seen:
            seen.add(a.lower())
            unique.append(a)
    return RenderedMail(
        message_id=message_id, kind=kind, sender=service.support_address,
        recipients=unique, raw=msg.as_bytes(),
    )


#: Recipients the server refused at RCPT TO: address -> (SMTP code, the server's text).
Refused = dict[str, tuple[int, str]]


def _smtp_text(text: bytes | str) -> str:
    return text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)


def describe_refused(refused: Refused) -> str:
    """One line per refused address with the server's answer, for staff and events only:
    it names addresses, so it never goes to the log."""
    return "\n".join(f"{addr}: {code} {text}".rstrip() for addr, (code, text) in refused.items())


def scrub_addresses(text: str, addresses: list[str]) -> str:
    """``text`` with each of ``addresses`` replaced by ``<recipient>``: server answers may
    quote the address they refuse, and addresses stay out of the logs."""
    for addr in sorted(addresses, key=len, reverse=True):
        if addr:
            text = text.replace(addr, "<recipient>")
    return text


class DeliveryError(Exception):
    """Delivery failed; ``permanent`` decides between retrying and escalating.

    The message never names a recipient (it is logged); ``refused`` holds the per-address
    answers when the server refused every recipient at RCPT TO.
    """

    def __init__(self, message: str, *, permanent: bool, server_down: bool = False,
                 refused: Refused | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        # The server, not this message, failed (no connection, connection lost, timeout):
        # the row keeps its place and is tried again next pass, without backoff.
        self.server_down = server_down
        self.refused: Refused = refused or {}

    def detail(self) -> str:
        """The full story for staff and events (may name addresses)."""
        return f"{self}\n{describe_refused(self.refused)}" if self.refused else str(self)


class DirectoryTransport:
    """The embedded default: each message becomes a file in the outbox directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def send(self, sender: str, recipients: list[str], raw: bytes, message_id: str) -> Refused:
        """Write the message; a directory refuses no one (always an empty dict)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        name = message_id.strip("<>").replace("/", "_")
        final = self.directory / f"{name}.eml"
        tmp = self.directory / f".{name}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        return {}

    def close(self) -> None:
        pass


class SmtpTransport:
    """SMTP submission with timeouts; one connection reused for a pass."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg.outbound
        self._conn: smtplib.SMTP | None = None

    def _connect(self) -> smtplib.SMTP:
        c = self.cfg
        try:
            if c.tls == "ssl":
                conn: smtplib.SMTP = smtplib.SMTP_SSL(
                    c.host, c.port, timeout=c.timeout, context=ssl.create_default_context()
                )
            else:
                conn = smtplib.SMTP(c.host, c.port, timeout=c.timeout)
                if c.tls == "starttls":
                    conn.starttls(context=ssl.create_default_context())
            if c.username:
                conn.login(c.username, c.password)
        except smtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(f"SMTP {c.host}:{c.port} refused login: {exc.smtp_code}", permanent=False) from None
        except (OSError, smtplib.SMTPException) as exc:
            raise DeliveryError(f"SMTP {c.host}:{c.port} unreachable: {exc}", permanent=False,
                                server_down=True) from None
        return conn

    def send(self, sender: str, recipients: list[str], raw: bytes, message_id: str) -> Refused:
        """Deliver; returns the recipients refused at RCPT TO while others were accepted.

        The caller must act on them (escalate a 5xx, retry a 4xx): smtplib only reports
        them, and staff are always in Cc, so a typo'd facility address is the common case.
        """
        if self._conn is None:
            self._conn = self._connect()
        try:
            refused = self._conn.sendmail(sender, recipients, raw)
        except smtplib.SMTPRecipientsRefused as exc:
            answers = {addr: (code, _smtp_text(text)) for addr, (code, text) in exc.recipients.items()}
            codes = sorted({code for code, _ in answers.values()})
            permanent = all(500 <= c < 600 for c in codes)
            raise DeliveryError(
                f"SMTP refused all {len(answers)} recipients ({', '.join(map(str, codes))})",
                permanent=permanent, refused=answers,
            ) from None
        except (UnicodeError, ValueError, smtplib.SMTPNotSupportedError) as exc:
            # An address or header no SMTP server without SMTPUTF8 can take: this mail
            # fails for good, the connection is reset, and the rest of the outbox goes on.
            self.close()
            raise DeliveryError(f"the mail cannot be encoded for SMTP ({type(exc).__name__})",
                                permanent=True) from None
        except smtplib.SMTPResponseException as exc:
            self.close()
            text = _smtp_text(exc.smtp_error)
            raise DeliveryError(f"SMTP {exc.smtp_code} {text}", permanent=500 <= exc.smtp_code < 600) from None
        except (TimeoutError, OSError, smtplib.SMTPException) as exc:
            self.close()
            raise DeliveryError(f"SMTP {self.cfg.host}:{self.cfg.port} failed: {exc}", permanent=False,
                                server_down=True) from None
        return {addr: (code, _smtp_text(text)) for addr, (code, text) in (refused or {}).items()}

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.quit()
            except (OSError, smtplib.SMTPException):
                pass
            self._conn = None


def make_transport(cfg: Config) -> DirectoryTransport | SmtpTransport:
    if cfg.outbound.kind == "directory":
        return DirectoryTransport(cfg.state_path(cfg.outbound.directory))
    return SmtpTransport(cfg)
