"""Helpers for the key tests (dual signing, selector choice, rotation, grace period, leaks):
a config on the real servers with a mailbox of the test's own, a clock the test moves,
the facility's side (publish what the mails say) and dkimpy verification through BIND."""

from __future__ import annotations

import email
import email.policy
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import dkim

from configkit import server_config
from test_e2e import body_of, boxes, dkim_boxes, request_mail, zone_file_strings

__all__ = ["body_of", "boxes", "dkim_boxes", "request_mail", "zone_file_strings", "Clock", "write_config",
           "open_bot", "saas_zone", "publish_box", "dnsfunc_for", "verify_all", "booking",
           "dkimbot_cmd", "case_mails", "STAFF", "MAILBOX_PASSWORD"]

STAFF = "staff@489ban.net"
MAILBOX_PASSWORD = "k5-secret"
SAAS = "k5-saas.test"


@dataclass
class Clock:
    """The bot's clock; the test moves it (no sleeping)."""

    now: datetime = field(default_factory=lambda: datetime.now(timezone.utc).replace(microsecond=0))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


def saas_zone(bind: Any, domain: str) -> str:
    """The SaaS's own zone (SPF include, rua authorisation for ``domain``), served once."""
    if SAAS not in bind.zones:
        bind.add_zone(SAAS)
        bind.update(SAAS, "_spf", "TXT", ["v=spf1 ip4:203.0.113.10 -all"])
    bind.update(SAAS, f"{domain}._report._dmarc", "TXT", ["v=DMARC1"])
    return SAAS


def write_config(tmp_path: Path, dovecot: Any, bind: Any, smtp: Any, *, mailbox: str,
                 keys: dict[str, Any] | None = None, schedule: dict[str, Any] | None = None,
                 dns_port: int | None = None, dns_timeout: float = 2.0) -> Path:
    """A TOML config on the real servers, with the test's own IMAP mailbox."""
    dovecot.add_user(mailbox, MAILBOX_PASSWORD)
    dovecot.reset(mailbox)
    sched = {"check_interval_seconds": 0, "reminder_after_hours": 720, "max_reminders": 2,
             **(schedule or {})}
    cfg = server_config(
        tmp_path, dovecot, bind, smtp, saas_zone=SAAS, username=mailbox, dns_port=dns_port,
        dns_timeout=dns_timeout, keys={"bits": 1024, **(keys or {})}, schedule=sched,
        service_extra={"max_mails_per_case_per_day": 20},
        intake_extra={"password_env": "K5_IMAP_PASSWORD"},
    )
    os.environ["K5_IMAP_PASSWORD"] = MAILBOX_PASSWORD
    return cfg


def open_bot(cfg_path: Path, clock: Clock) -> Any:
    from bot.config import load_config
    from bot.flows.runtime import Bot

    return Bot.open(load_config(cfg_path), clock=clock)


def publish_box(bind: Any, domain: str, body: str, fqdn: str, *, servers: list[str] | None = None) -> None:
    """Publish a record exactly as the mail's zone-file form gives it."""
    strings = zone_file_strings(body, fqdn)
    bind.update(domain, fqdn + ".", "TXT", [strings], servers=servers)


def case_mails(smtp: Any) -> list[Any]:
    """The mails about cases (each names its case in X-Dkimbot-Case), in order; not digests."""
    return [m for m in smtp.messages if m.message["X-Dkimbot-Case"]]


def dnsfunc_for(bind: Any) -> Any:
    res = bind.resolver()

    def dnsfunc(name: bytes | str, timeout: float = 5) -> bytes:
        import dns.exception

        name = name.decode() if isinstance(name, bytes) else name
        try:
            answer = res.resolve(name.rstrip("."), "TXT")
        except dns.exception.DNSException:
            return b""  # dkimpy: "missing public key", the signature does not verify
        return b"".join(b"".join(rd.strings) for rd in answer)

    return dnsfunc


def verify_all(signed: bytes, bind: Any) -> list[tuple[str, str, bool]]:
    """(selector, algorithm, verified) for every DKIM-Signature of ``signed``, via BIND."""
    msg = email.message_from_bytes(signed, policy=email.policy.compat32)
    sigs = msg.get_all("DKIM-Signature") or []
    d = dkim.DKIM(signed)
    out = []
    for i, sig in enumerate(sigs):
        tags = dict(t.strip().split("=", 1) for t in re.sub(r"\s+", "", sig).split(";") if "=" in t)
        out.append((tags["s"], tags["a"], bool(d.verify(idx=i, dnsfunc=dnsfunc_for(bind)))))
    return out


def booking(domain: str) -> bytes:
    return (f"From: info@{domain}\r\nTo: guest@example.org\r\nSubject: booking\r\n"
            f"Message-ID: <b1@{domain}>\r\nDate: Mon, 02 Nov 2026 09:00:00 +0000\r\n"
            "\r\nThank you for your booking.\r\n").encode()


def dkimbot_cmd(cfg: Path, *args: str, stdin: bytes | None = None,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, K5_IMAP_PASSWORD=MAILBOX_PASSWORD, **(env or {}))
    return subprocess.run([sys.executable, "-m", "bot", "--config", str(cfg), *args],
                          input=stdin, capture_output=True, env=full_env, timeout=120)
