"""A facility address refused at RCPT TO while staff (always in Cc) are accepted, through the
real ``dkimbot`` command on the real Dovecot, BIND and SMTP sink: a 5xx escalates the case
to staff with the address and the server's answer; a 4xx is sent again to that address
only (nobody gets a second copy). And addresses stay out of the logs (stderr), for the
refusal and for a mail held back by the per-address daily limit.
"""

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
    request_mail,
    setup_domain,
    setup_saas_zone,
    show,
)

pytestmark = pytest.mark.servers


def _setup(tmp_path: Path, dovecot, bind, smtp, name: str, **service: object) -> tuple[Path, str]:
    user = f"{name}@489ban.net"
    dovecot.add_user(user, IMAP_PASSWORD)
    dovecot.reset(user)
    domain = f"{name}.test"
    setup_domain(bind, domain)
    setup_saas_zone(bind, [domain])
    dovecot.append(user, request_mail(domain, f"<req.{time.time_ns()}@{domain}>"))
    cfg = server_config(tmp_path, dovecot, bind, smtp, saas_zone=SAAS_ZONE, username=user, io_timeout=5,
                        dns_timeout=1.0, keys={"bits": 1024}, service_extra=service,
                        schedule={"check_interval_seconds": 0, "reminder_after_hours": 72, "max_reminders": 2})
    return cfg, domain


def _run(cfg: Path, *args: str, log: list[str]) -> str:
    # The default (INFO) level, as cron runs it; -v adds IMAP protocol traces, raw mail and all.
    r = dkimbot(cfg, *args)
    out = r.stdout.decode() + r.stderr.decode()
    log.append(r.stderr.decode())
    assert r.returncode == 0, out
    return out


def test_a_refused_facility_address_escalates_and_no_address_reaches_the_log(tmp_path, dovecot, bind, smtp):
    smtp.clear()
    cfg, domain = _setup(tmp_path, dovecot, bind, smtp, "rcpt5xx", max_mails_per_address_per_day=1)
    log: list[str] = []
    smtp.fail_next(1, 550, f"5.1.1 <yamada@{domain}>: Recipient address rejected: User unknown", stage="rcpt")
    _run(cfg, "run", "--once", log=log)

    [(code, _, [bounced])] = smtp.rejected
    assert code == 550 and bounced.endswith("@" + domain)
    [reply] = list(smtp.messages)
    assert bounced not in reply.rcpt_tos and STAFF in reply.rcpt_tos  # staff (Cc) got it
    [case] = cases(cfg)
    ref = case["case"]
    assert case["state"] == "escalated"
    shown = show(cfg, ref)
    [refused] = [e for e in shown["events"] if e["kind"] == "recipients_refused"]
    assert "User unknown" in refused["detail"]["refused"][bounced]
    [failed] = [e for e in shown["events"] if e["kind"] == "delivery_failed"]
    assert failed["detail"]["recipients"] == [bounced]

    # The next pass sends the escalation: staff learn which address and what the server said.
    _run(cfg, "run", "--once", log=log)
    [escalation] = [m for m in smtp.messages if "ESCALATION" in m.message["Subject"]]
    assert escalation.rcpt_tos == [STAFF]
    assert ref in escalation.message["Subject"]
    text = body_of(escalation.raw)
    assert bounced in text and "550" in text and "User unknown" in text and "dkimbot resend" in text
    # Nothing more: the accepted recipients are not mailed again, the refused one not retried.
    count = len(smtp.messages)
    _run(cfg, "run", "--once", log=log)
    assert len(smtp.messages) == count

    # A resend today exceeds the per-address limit (1): held back, recorded, logged without addresses.
    _run(cfg, "resend", ref, log=log)
    suppressed = [e for e in show(cfg, ref)["events"] if e["kind"] == "mail_suppressed"]
    assert suppressed and suppressed[-1]["detail"]["addresses"]
    assert len(smtp.messages) == count

    everything = "\n".join(log)
    assert "refused 1 of" in everything and "daily limit" in everything  # both paths logged
    for address in (f"yamada@{domain}", f"info@{domain}"):  # Message-IDs may name the domain
        assert address not in everything, everything


def test_a_4xx_at_rcpt_is_sent_again_to_that_address_only(tmp_path, dovecot, bind, smtp):
    smtp.clear()
    cfg, domain = _setup(tmp_path, dovecot, bind, smtp, "rcpt4xx")
    log: list[str] = []
    smtp.fail_next(1, 451, "4.3.0 mailbox busy, try later", stage="rcpt")
    _run(cfg, "run", "--once", log=log)
    [(code, _, [deferred])] = smtp.rejected
    assert code == 451 and deferred.endswith("@" + domain)
    [first] = list(smtp.messages)
    assert deferred not in first.rcpt_tos and STAFF in first.rcpt_tos

    _run(cfg, "run", "--once", log=log)
    [_, again] = list(smtp.messages)
    assert again.rcpt_tos == [deferred]  # staff and the other contact are not mailed twice
    assert body_of(again.raw) == body_of(first.raw)
    assert again.message["Subject"] == first.message["Subject"]
    assert again.message["In-Reply-To"] == first.message["In-Reply-To"]
    [case] = cases(cfg)
    assert case["state"] == "awaiting_dkim"  # a 4xx is not the facility's problem
    shown = show(cfg, case["case"])
    [refused] = [e for e in shown["events"] if e["kind"] == "recipients_refused"]
    assert refused["detail"]["retry_message_id"] == again.message["Message-ID"]
    assert [m["status"] for m in shown["mails"]] == ["sent", "sent"]

    _run(cfg, "run", "--once", log=log)
    assert len(smtp.messages) == 2
    assert deferred not in "\n".join(log)
