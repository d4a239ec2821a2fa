"""Staff commands and permanent SMTP rejections, through the real ``dkimbot`` command on the
real Dovecot, BIND and SMTP sink (issue 6: "a permanent SMTP rejection (5xx) escalates the
case with the server's answer"; "staff commands resend, cancel, retry, each recorded in the
case's events").
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from workerkit import (
    IMAP_PASSWORD,
    STAFF,
    body_of,
    cases,
    dkimbot,
    received_for,
    request_mail,
    setup_domain,
    setup_saas_zone,
    show,
    write_config,
)

pytestmark = pytest.mark.servers


def _setup(tmp_path: Path, dovecot, bind, smtp, name: str) -> tuple[Path, str]:
    user = f"{name}@489ban.net"
    dovecot.add_user(user, IMAP_PASSWORD)
    dovecot.reset(user)
    domain = f"{name}.test"
    setup_domain(bind, domain)
    setup_saas_zone(bind, [domain])
    dovecot.append(user, request_mail(domain, f"<req.{time.time_ns()}@{domain}>"))
    return write_config(tmp_path, dovecot, bind, smtp, imap_user=user), domain


def _staff_only(smtp) -> list:
    return [m for m in list(smtp.messages) if m.rcpt_tos == [STAFF]]


def test_a_5xx_rejection_escalates_the_case_with_the_servers_answer(tmp_path, dovecot, bind, smtp):
    smtp.clear()
    cfg, domain = _setup(tmp_path, dovecot, bind, smtp, "reject5xx")
    answer = "5.1.1 <yamada@reject5xx.test>: Recipient address rejected: User unknown"
    smtp.fail_next(1, 550, answer)
    r = dkimbot(cfg, "run", "--once")
    assert r.returncode == 0, r.stderr.decode()  # a rejected mail is the case's problem, not the server's

    [case] = cases(cfg)
    assert case["state"] == "escalated"
    shown = show(cfg, case["case"])
    failed = [e for e in shown["events"] if e["kind"] == "delivery_failed"]
    assert len(failed) == 1 and "550" in failed[0]["detail"]["error"]
    assert "User unknown" in failed[0]["detail"]["error"]
    statuses = {m["kind"]: m["status"] for m in shown["mails"]}
    assert statuses["request_reply"] == "failed"
    assert received_for(smtp, domain) == []  # the facility got nothing
    # The escalation was queued after this pass's outbox was read: the next pass sends it.
    r = dkimbot(cfg, "run", "--once")
    assert r.returncode == 0, r.stderr.decode()
    [escalation] = _staff_only(smtp)
    assert case["case"] in escalation.message["Subject"]
    text = body_of(escalation.raw)
    assert "550" in text and "User unknown" in text and "dkimbot resend" in text

    # The rejected mail is not retried: the next pass sends nothing new.
    count = len(smtp.messages)
    r = dkimbot(cfg, "run", "--once")
    assert r.returncode == 0, r.stderr.decode()
    assert len(smtp.messages) == count


def test_resend_cancel_and_retry_are_recorded_and_do_what_they_say(tmp_path, dovecot, bind, smtp):
    smtp.clear()
    cfg, domain = _setup(tmp_path, dovecot, bind, smtp, "staffcmds")
    r = dkimbot(cfg, "run", "--once")
    assert r.returncode == 0, r.stderr.decode()
    [case] = cases(cfg)
    ref = case["case"]
    [first] = received_for(smtp, domain)

    # resend: the same record again (the same key), recorded.
    r = dkimbot(cfg, "resend", ref)
    assert r.returncode == 0, r.stderr.decode()
    r = dkimbot(cfg, "run", "--once")
    assert r.returncode == 0, r.stderr.decode()
    replies = received_for(smtp, domain)
    assert len(replies) == 2
    value_line = next(ln for ln in body_of(first.raw).splitlines() if "p=" in ln)
    assert value_line in body_of(replies[1].raw)
    kinds = [e["kind"] for e in show(cfg, ref)["events"]]
    assert kinds.count("staff_resend") == 1

    # retry: checks now; the state stays where it was (nothing published yet).
    r = dkimbot(cfg, "retry", ref)
    assert r.returncode == 0, r.stderr.decode()
    events = show(cfg, ref)["events"]
    [retry] = [e for e in events if e["kind"] == "staff_retry"]
    assert (retry["from_state"], retry["to_state"]) == ("awaiting_dkim", "awaiting_dkim")

    # cancel: the case stops; later passes neither check nor mail it.
    r = dkimbot(cfg, "cancel", ref)
    assert r.returncode == 0, r.stderr.decode()
    [case] = cases(cfg)
    assert case["state"] == "cancelled"
    [cancel] = [e for e in show(cfg, ref)["events"] if e["kind"] == "staff_cancel"]
    assert (cancel["from_state"], cancel["to_state"]) == ("awaiting_dkim", "cancelled")
    count = len(smtp.messages)
    r = dkimbot(cfg, "run", "--once")
    assert r.returncode == 0, r.stderr.decode()
    assert len(smtp.messages) == count and cases(cfg)[0]["state"] == "cancelled"

    # Actions that make no sense now are refused with one line saying why.
    for action, why in (("retry", "nothing to retry"), ("cancel", "already cancelled"),
                        ("resend", "nothing is sent")):
        r = dkimbot(cfg, action, ref)
        assert r.returncode == 1
        assert r.stderr.decode().strip() == f"dkimbot: {ref} is cancelled: " + {
            "retry": "nothing to retry; a new request from the facility starts a new case",
            "cancel": "already cancelled",
            "resend": "the case is closed; nothing is sent for it",
        }[action]
        assert why in r.stderr.decode()
    assert len(smtp.messages) == count


def test_retry_brings_an_escalated_case_back_to_where_it_was(tmp_path, dovecot, bind, smtp):
    smtp.clear()
    cfg, domain = _setup(tmp_path, dovecot, bind, smtp, "staffretry")
    smtp.fail_next(1, 550, "5.1.1 User unknown")
    r = dkimbot(cfg, "run", "--once")
    assert r.returncode == 0, r.stderr.decode()
    [case] = cases(cfg)
    assert case["state"] == "escalated"

    r = dkimbot(cfg, "retry", case["case"])
    assert r.returncode == 0, r.stderr.decode()
    assert cases(cfg)[0]["state"] == "awaiting_dkim"
    [retry] = [e for e in show(cfg, case["case"])["events"] if e["kind"] == "staff_retry"]
    assert (retry["from_state"], retry["to_state"]) == ("escalated", "awaiting_dkim")
    # The facility never got the record: resend gives it now, once.
    r = dkimbot(cfg, "resend", case["case"])
    assert r.returncode == 0, r.stderr.decode()
    r = dkimbot(cfg, "run", "--once")
    assert r.returncode == 0, r.stderr.decode()
    assert len(received_for(smtp, domain)) == 1


def _as(cfg: Path, env: dict[str, str], *args: str):
    import subprocess
    import sys

    from workerkit import dkimbot_env

    base = {k: v for k, v in dkimbot_env().items() if k not in ("SUDO_USER", "LOGNAME", "USER", "LNAME", "USERNAME")}
    return subprocess.run([sys.executable, "-m", "bot", "--config", str(cfg), *args],
                          capture_output=True, env={**base, **env}, timeout=120, check=False)


def test_command_line_actions_record_the_os_user_and_the_sudo_caller(tmp_path, dovecot, bind, smtp):
    """The event log names who acted from the shell (the site names the account): the OS
    user, and through sudo the person who ran sudo, never a bare "staff"."""
    smtp.clear()
    cfg, _domain = _setup(tmp_path, dovecot, bind, smtp, "staffwho")
    assert dkimbot(cfg, "run", "--once").returncode == 0
    [case] = cases(cfg)
    ref = case["case"]
    r = _as(cfg, {"LOGNAME": "suzuki"}, "note", ref, "電話で説明済み")
    assert r.returncode == 0, r.stderr.decode()
    r = _as(cfg, {"LOGNAME": "root", "SUDO_USER": "tanaka"}, "resend", ref)
    assert r.returncode == 0, r.stderr.decode()
    r = _as(cfg, {"LOGNAME": "root", "SUDO_USER": "tanaka"}, "cancel", ref)
    assert r.returncode == 0, r.stderr.decode()
    by = {e["kind"]: (e.get("detail") or {}).get("by") for e in show(cfg, ref)["events"]
          if e["kind"] in ("staff_note", "staff_resend", "staff_cancel")}
    assert by == {"staff_note": "cli:suzuki", "staff_resend": "cli:tanaka (sudo root)",
                  "staff_cancel": "cli:tanaka (sudo root)"}
