"""A signer that cannot be reloaded (issue 5): with the record right in DNS, the failed
install leaves no tables behind, the case is escalated to staff, and the facility is not
told DKIM is active. Once staff fix the signer, 'dkimbot retry' carries the case on.
Real Dovecot, BIND and SMTP sink; the bot runs as the ``dkimbot`` command."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from configkit import server_config
from workerkit import (
    IMAP_PASSWORD,
    SAAS_ZONE,
    STAFF,
    body_of,
    cases,
    dkimbot,
    publish_dkim,
    received_for,
    request_mail,
    setup_domain,
    setup_saas_zone,
    show,
)

pytestmark = pytest.mark.servers


def _config(tmp_path: Path, dovecot, bind, smtp, user: str, reload_command: str) -> Path:
    return server_config(
        tmp_path, dovecot, bind, smtp, saas_zone=SAAS_ZONE, username=user, io_timeout=5,
        dns_timeout=1.0, keys={"bits": 1024}, schedule={"check_interval_seconds": 0},
        raw={"signer": f"reload_command = {reload_command!r}\nreload_timeout = 5.0"},
    )


def test_a_failing_signer_reload_escalates_and_claims_nothing(tmp_path, dovecot, bind, smtp):
    smtp.clear()
    user, domain = "reloadfail@489ban.net", "reloadfail.test"
    dovecot.add_user(user, IMAP_PASSWORD)
    dovecot.reset(user)
    setup_domain(bind, domain)
    setup_saas_zone(bind, [domain])
    dovecot.append(user, request_mail(domain, f"<req.{time.time_ns()}@{domain}>"))
    cfg = _config(tmp_path, dovecot, bind, smtp, user, "exit 3")
    r = dkimbot(cfg, "run", "--once")
    assert r.returncode == 0, r.stderr.decode()
    publish_dkim(bind, smtp, domain)

    r = dkimbot(cfg, "run", "--once")
    assert r.returncode == 0, r.stderr.decode()
    [case] = cases(cfg)
    assert case["state"] == "escalated"
    signer_dir = tmp_path / "state" / "signer"
    assert not (signer_dir / "KeyTable").exists() and not (signer_dir / "SigningTable").exists()
    subjects = [m.message["Subject"] for m in received_for(smtp, domain)]
    assert len(subjects) == 1 and not any("DKIM署名を開始" in s for s in subjects)
    r = dkimbot(cfg, "run", "--once")  # the escalation queued last pass goes out now at the latest
    staff = [m for m in list(smtp.messages) if m.rcpt_tos == [STAFF]]
    assert len(staff) == 1 and case["case"] in staff[0].message["Subject"]
    assert "install failed" in body_of(staff[0].raw) or "reload" in body_of(staff[0].raw)
    events = show(cfg, case["case"])["events"]
    assert [e["to_state"] for e in events if e["kind"] == "transition"] == ["escalated"]

    # Staff fix the signer; retry installs, proves and announces.
    cfg = _config(tmp_path, dovecot, bind, smtp, user, "true")
    r = dkimbot(cfg, "retry", case["case"])
    assert r.returncode == 0, r.stderr.decode()
    r = dkimbot(cfg, "run", "--once")
    assert r.returncode == 0, r.stderr.decode()
    assert cases(cfg)[0]["state"] == "awaiting_dmarc"
    assert f"*@{domain} " in (signer_dir / "SigningTable").read_text()
    assert any("DKIM署名を開始" in m.message["Subject"] for m in received_for(smtp, domain))
