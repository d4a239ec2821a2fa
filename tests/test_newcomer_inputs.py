"""Inputs a first real user sends that the rest of the suite had not: each through the
real ``dkimbot run --once`` on Dovecot, BIND and the SMTP sink.

* Two different request mails that carry the same Message-ID (web forms and some
  mailers reuse one): both are requests; neither may be dropped as a "duplicate". A
  true copy of one of them (the same mail delivered again) still gets no second reply.
* A request whose fields cannot be read (only an image attached) is greeted
  「ご担当者様」, not 「ご担当者 ご担当者様」.
"""

from __future__ import annotations

import email.policy
import uuid
from email.message import EmailMessage
from email.utils import format_datetime
from datetime import datetime, timedelta, timezone

import pytest

from workerkit import (
    SUPPORT_ADDRESS, body_of, cases, dkimbot, received_for, setup_domain, setup_saas_zone, write_config,
)

pytestmark = pytest.mark.servers

USER = "newcomer@489ban.net"
PASSWORD = "secret"  # workerkit's IMAP password


def _request(domain: str, facility: str, message_id: str, sent: datetime) -> bytes:
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = f"yamada@{domain}"
    msg["To"] = SUPPORT_ADDRESS
    msg["Subject"] = "DKIM、DMARC設定希望"
    msg["Date"] = format_datetime(sent)
    msg["Message-ID"] = message_id
    msg.set_content(
        f"[施設名]\n{facility}\n[担当者様のお名前]\n山田 太郎\n[担当者様のメールアドレス]\n"
        f"yamada@{domain}\n[担当者様の電話番号]\n03-1234-5678\n"
        f"[予約番で使用する管理用メールアドレス]\ninfo@{domain}\n",
        charset="utf-8",
    )
    return msg.as_bytes()


@pytest.fixture()
def env(tmp_path, dovecot, bind, smtp):
    dovecot.add_user(USER, PASSWORD)
    dovecot.reset(USER)
    smtp.clear()
    return write_config(tmp_path, dovecot, bind, smtp, imap_user=USER)


def test_two_different_mails_with_one_message_id_are_two_requests(env, dovecot, bind, smtp):
    tag = uuid.uuid4().hex[:6]
    first, second = f"reuse-a-{tag}.test", f"reuse-b-{tag}.test"
    for d in (first, second):
        setup_domain(bind, d)
    setup_saas_zone(bind, [first, second])
    shared_id = f"<form-{tag}@webform.test>"  # what a contact form puts on every mail
    now = datetime.now(timezone.utc)
    mail_a = _request(first, "ホテルあおい", shared_id, now - timedelta(minutes=5))
    dovecot.append(USER, mail_a)
    dovecot.append(USER, _request(second, "旅館みどり", shared_id, now))

    r = dkimbot(env, "run", "--once")
    assert r.returncode == 0, r.stderr.decode()
    by_domain = {c["domain"]: c for c in cases(env)}
    assert set(by_domain) == {first, second}, r.stderr.decode()
    assert by_domain[second]["facility"] == "旅館みどり"
    assert len(received_for(smtp, first)) == 1 and len(received_for(smtp, second)) == 1

    # The first mail delivered once more (same bytes, new UID): a copy, not a request.
    dovecot.append(USER, mail_a)
    r = dkimbot(env, "run", "--once")
    assert r.returncode == 0, r.stderr.decode()
    assert len(cases(env)) == 2
    assert len(received_for(smtp, first)) == 1 and len(received_for(smtp, second)) == 1
    assert "a copy of a mail already handled" in r.stderr.decode()


def test_a_request_without_readable_fields_is_greeted_without_a_doubled_title(env, dovecot, smtp):
    domain = f"image-only-{uuid.uuid4().hex[:6]}.test"
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = f"yamada@{domain}"
    msg["To"] = SUPPORT_ADDRESS
    msg["Subject"] = "DKIM、DMARC設定希望"
    msg["Message-ID"] = f"<img-{uuid.uuid4().hex}@{domain}>"
    msg.add_attachment(b"\x89PNG\r\n\x1a\n" + bytes(64), maintype="image", subtype="png",
                       filename="screenshot.png")
    dovecot.append(USER, msg.as_bytes())

    r = dkimbot(env, "run", "--once")
    assert r.returncode == 0, r.stderr.decode()
    [case] = cases(env)
    assert case["state"] == "needs_info"
    [reply] = received_for(smtp, domain)
    first_line = body_of(reply.raw).lstrip("\n").splitlines()[0]
    assert first_line == "ご担当者様"


@pytest.mark.parametrize("typed", ["hotel sakura.test", "info@hotel-sakura.test", "localhost"])
def test_check_names_a_typo_instead_of_reporting_a_dns_error(tmp_path, typed):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[dns]\nnameservers = ["127.0.0.1"]\nport = 9\ntimeout = 0.5\n'
                   f'[state]\ndir = "{tmp_path / "state"}"\n', encoding="utf-8")
    r = dkimbot(cfg, "check", typed)
    err = r.stderr.decode()
    assert r.returncode == 2 and r.stdout == b""
    assert f"{typed!r} cannot be checked" in err and "Traceback" not in err
