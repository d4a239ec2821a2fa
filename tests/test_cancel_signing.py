"""`dkimbot cancel` past the DKIM step (real Dovecot, BIND, SMTP sink; the real command):
a cancelled case is not watched, so its key must leave the signer, unless another live
case of the same domain shares it (that case's monitoring still covers the key)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from workerkit import (
    IMAP_PASSWORD,
    cases,
    dkimbot,
    publish_dkim,
    request_mail,
    setup_domain,
    setup_saas_zone,
    show,
    write_config,
)

pytestmark = pytest.mark.servers


def _to_awaiting_dmarc(tmp_path: Path, dovecot, bind, smtp, name: str, facilities: int) -> tuple[Path, str]:
    """``facilities`` facilities of one domain (one shared key) through the DKIM step."""
    smtp.clear()
    user = f"{name}@489ban.net"
    dovecot.add_user(user, IMAP_PASSWORD)
    dovecot.reset(user)
    domain = f"{name}.test"
    setup_domain(bind, domain)
    setup_saas_zone(bind, [domain])
    for n in range(facilities):  # another facility: its own admin address, the same domain
        raw = request_mail(domain, f"<req.{time.time_ns()}@{domain}>")
        dovecot.append(user, raw.replace(b"info@", f"info{n}@".encode()) if n else raw)
    tmp_path.mkdir()
    cfg = write_config(tmp_path, dovecot, bind, smtp, imap_user=user)
    r = dkimbot(cfg, "run", "--once")
    assert r.returncode == 0, r.stderr.decode()
    publish_dkim(bind, smtp, domain)
    r = dkimbot(cfg, "run", "--once")
    assert r.returncode == 0, r.stderr.decode()
    assert [c["state"] for c in cases(cfg)] == ["awaiting_dmarc"] * facilities
    assert _signs(tmp_path, domain)
    return cfg, domain


def _signs(tmp_path: Path, domain: str) -> bool:
    """Whether the signer's tables still name the domain (SigningTable and KeyTable)."""
    signer = tmp_path / "state" / "signer"
    tables = [(signer / name).read_text(encoding="utf-8") if (signer / name).exists() else ""
              for name in ("SigningTable", "KeyTable")]
    in_tables = [any(domain in line for line in t.splitlines() if not line.startswith("#")) for t in tables]
    assert in_tables[0] == in_tables[1], tables  # never one without the other
    return in_tables[0]


def test_cancelling_a_case_past_the_dkim_step_stops_signing(tmp_path, dovecot, bind, smtp):
    where = tmp_path / "one"
    cfg, domain = _to_awaiting_dmarc(where, dovecot, bind, smtp, "cancelsign", 1)
    [case] = cases(cfg)
    r = dkimbot(cfg, "cancel", case["case"])
    assert r.returncode == 0, r.stderr.decode()
    assert not _signs(where, domain)
    out = r.stdout.decode()
    assert f"{case['case']}: cancelled" in out and "removed from the signer: " in out and domain in out
    [event] = [e for e in show(cfg, case["case"])["events"] if e["kind"] == "staff_cancel"]
    assert event["detail"]["signer_removed"] and event["from_state"] == "awaiting_dmarc"
    assert not list((where / "state" / "signer" / "keys").glob(f"*{domain}*"))  # the key file too


def test_a_key_shared_with_a_live_case_keeps_signing_until_the_last_is_cancelled(tmp_path, dovecot, bind, smtp):
    where = tmp_path / "two"
    cfg, domain = _to_awaiting_dmarc(where, dovecot, bind, smtp, "cancelshared", 2)
    first, second = cases(cfg)
    r = dkimbot(cfg, "cancel", first["case"])
    assert r.returncode == 0, r.stderr.decode()
    assert f"used by live case {second['case']}" in r.stdout.decode()
    assert _signs(where, domain)  # the second case is still watched: its key keeps signing
    [event] = [e for e in show(cfg, first["case"])["events"] if e["kind"] == "staff_cancel"]
    assert event["detail"]["signer_removed"] == [] and event["detail"]["signer_kept"]

    r = dkimbot(cfg, "cancel", second["case"])
    assert r.returncode == 0, r.stderr.decode()
    assert not _signs(where, domain)
    assert "removed from the signer" in r.stdout.decode()
