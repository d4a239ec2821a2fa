"""Helpers for the worker tests (crash safety, overlap, outages, schedule): a config on
the real test servers with a mailbox of the test's own, the facility's side of the flow
(publish what the mails say), and the accounting of what each facility received."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from configkit import server_config
from conftest import SUPPORT_ADDRESS
from test_e2e import body_of, boxes, request_mail, zone_file_strings

IMAP_PASSWORD = "secret"
STAFF = "staff@489ban.net"
SAAS_ZONE = "worker-saas.test"  # our own zone: fixtures are shared across the session


def write_config(tmp_path: Path, dovecot: Any, bind: Any, smtp: Any, *, imap_user: str,
                 dns_timeout: float = 1.0, **schedule: Any) -> Path:
    """A config on the real servers; 1024-bit keys so a pass stays quick."""
    sched = {"check_interval_seconds": 0, "reminder_after_hours": 72, "max_reminders": 2, **schedule}
    return server_config(tmp_path, dovecot, bind, smtp, saas_zone=SAAS_ZONE, username=imap_user,
                         io_timeout=5, dns_timeout=dns_timeout, keys={"bits": 1024}, schedule=sched)


def dkimbot_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DKIMBOT_CRASH_AT"}
    return dict(env, TEST_IMAP_PASSWORD=IMAP_PASSWORD, **extra)


def dkimbot(cfg: Path, *args: str, crash_at: str | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
    extra = {"DKIMBOT_CRASH_AT": crash_at} if crash_at else {}
    return subprocess.run(
        [sys.executable, "-m", "bot", "--config", str(cfg), *args],
        capture_output=True, env=dkimbot_env(**extra), timeout=timeout,
    )


def start_dkimbot(cfg: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bot", "--config", str(cfg), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dkimbot_env(),
    )


def cases(cfg: Path) -> list[dict[str, Any]]:
    r = dkimbot(cfg, "status", "--json")
    assert r.returncode == 0, r.stderr.decode()
    return json.loads(r.stdout)


def show(cfg: Path, ref: str) -> dict[str, Any]:
    r = dkimbot(cfg, "show", ref, "--json")
    assert r.returncode == 0, r.stderr.decode()
    return json.loads(r.stdout)


def setup_domain(bind: Any, domain: str) -> None:
    bind.add_zone(domain, ("ns1." + domain, "ns2." + domain))


def setup_saas_zone(bind: Any, domains: list[str]) -> None:
    if SAAS_ZONE not in bind.zones:
        bind.add_zone(SAAS_ZONE)
        bind.update(SAAS_ZONE, "_spf", "TXT", ["v=spf1 ip4:203.0.113.10 -all"])
    for d in domains:
        bind.update(SAAS_ZONE, f"{d}._report._dmarc", "TXT", ["v=DMARC1"])


def received_for(smtp: Any, domain: str) -> list[Any]:
    """Mails the SMTP sink accepted that went to this facility's domain."""
    return [m for m in list(smtp.messages) if any(r.endswith("@" + domain) for r in m.rcpt_tos)]


def publish_dkim(bind: Any, smtp: Any, domain: str) -> None:
    """The facility copies the record box of its request reply into its zone."""
    for m in received_for(smtp, domain):
        body = body_of(m.raw)
        for box in boxes(body):
            if "._domainkey." in box["host"]:
                label = box["host"][: -len(domain) - 1]
                bind.update(domain, label, "TXT", [zone_file_strings(body, box["host"])])
                return
    raise AssertionError(f"no DKIM record box mailed to {domain}")


def publish_dmarc_spf(bind: Any, smtp: Any, domain: str) -> None:
    for m in received_for(smtp, domain):
        for box in boxes(body_of(m.raw)):
            if box["host"] == f"_dmarc.{domain}":
                bind.update(domain, "_dmarc", "TXT", [box["value"]])
                bind.update(domain, "@", "TXT", [f"v=spf1 include:_spf.{SAAS_ZONE} ~all"])
                return
    raise AssertionError(f"no DMARC record box mailed to {domain}")


@dataclass
class Delivery:
    """What the SMTP sink got for one case, matched against the bot's outbox."""

    kinds: list[str]                 # outbox kinds of the case, in order
    statuses: list[str]
    copies: dict[str, int]           # Message-ID -> copies the sink received
    in_doubt: set[str]               # Message-IDs the bot recorded as delivery_in_doubt


def deliveries(cfg: Path, smtp: Any, ref: str) -> Delivery:
    shown = show(cfg, ref)
    mails = shown["mails"]
    counts = collections.Counter(m.message["Message-ID"] for m in list(smtp.messages))
    return Delivery(
        kinds=[m["kind"] for m in mails],
        statuses=[m["status"] for m in mails],
        copies={m["message_id"]: counts.get(m["message_id"], 0) for m in mails},
        in_doubt={e["detail"]["message_id"] for e in shown["events"] if e["kind"] == "delivery_in_doubt"},
    )


__all__ = [
    "IMAP_PASSWORD",
    "SAAS_ZONE",
    "STAFF",
    "SUPPORT_ADDRESS",
    "Delivery",
    "body_of",
    "boxes",
    "cases",
    "deliveries",
    "dkimbot",
    "publish_dkim",
    "publish_dmarc_spf",
    "received_for",
    "request_mail",
    "setup_domain",
    "setup_saas_zone",
    "show",
    "start_dkimbot",
    "write_config",
]
