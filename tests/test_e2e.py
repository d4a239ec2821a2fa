"""One facility from its request mail to the completion report, on real servers.

Dovecot (IMAP), BIND 9 (authoritative, RFC 2136) and an SMTP sink on 127.0.0.1; the
bot runs as the real ``dkimbot`` command. The facility's side is played by the test:
it reads the bot's mails from the SMTP sink and publishes exactly what they say.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import stat
import subprocess
import sys
import uuid
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from datetime import datetime, timezone
from pathlib import Path

import pytest

from configkit import server_config
from conftest import SUPPORT_ADDRESS, SUPPORT_PASSWORD

pytestmark = pytest.mark.servers

STAFF = "staff@489ban.net"
# The SaaS zone other test modules share (test_e2e itself uses a zone of its own).
SAAS_ZONE = "yoyakuban-saas.test"


def write_config(tmp_path: Path, dovecot, bind, smtp, saas_zone: str = "yoyakuban-saas.test", **schedule) -> Path:
    sched = {"check_interval_seconds": 0, "reminder_after_hours": 72, "max_reminders": 2, **schedule}
    return server_config(tmp_path, dovecot, bind, smtp, saas_zone=saas_zone, schedule=sched)


def dkimbot(cfg: Path, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, TEST_IMAP_PASSWORD=SUPPORT_PASSWORD)
    return subprocess.run(
        [sys.executable, "-m", "bot", "--config", str(cfg), *args],
        input=stdin, capture_output=True, env=env, timeout=120,
    )


def status(cfg: Path) -> list[dict]:
    r = dkimbot(cfg, "status", "--json")
    assert r.returncode == 0, r.stderr.decode()
    return json.loads(r.stdout)


def request_mail(domain: str, message_id: str) -> bytes:
    """An Outlook-style request: ISO-2022-JP, the help page's five fields."""
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = f"山田 太郎 <yamada@{domain}>"
    msg["To"] = SUPPORT_ADDRESS
    msg["Subject"] = "DKIM、DMARC設定希望"
    msg["Date"] = format_datetime(datetime.now(timezone.utc))
    msg["Message-ID"] = message_id
    msg["X-Mailer"] = "Microsoft Outlook 16.0"
    msg.set_content(
        "予約番サポート御中\n\nお世話になっております。\n\n"
        "[施設名]\nホテルさくら\n[担当者様のお名前]\n山田 太郎\n"
        f"[担当者様のメールアドレス]\nyamada@{domain}\n[担当者様の電話番号]\n03-1234-5678\n"
        f"[予約番で使用する管理用メールアドレス]\ninfo@{domain}\n\nよろしくお願いいたします。\n",
        charset="iso-2022-jp",
    )
    return msg.as_bytes()


def unrelated_mail() -> bytes:
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = "guest@example.org"
    msg["To"] = SUPPORT_ADDRESS
    msg["Subject"] = "宿泊予約の変更について"
    msg["Message-ID"] = make_msgid(domain="example.org")
    msg.set_content("3月の予約を変更したいのですが。", charset="utf-8")
    return msg.as_bytes()


def body_of(raw: bytes) -> str:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    return msg.get_body(preferencelist=("plain",)).get_content().replace("\r\n", "\n")


def boxes(body: str) -> list[dict[str, str]]:
    """The record boxes of a mail, read the way a person copying them would: ``host`` is
    the full name the box's second line gives, ``value`` the line under 値 (the panel's
    form of the value). ``box_fields`` gives the first lines (the host field)."""
    out = []
    for block in re.findall(r"━+\n(.*?)\n━+", body, re.S):
        lines = block.splitlines()
        first = re.match(r"(?:ホスト名|名前)：(.+)", lines[0])
        if first is None:
            continue
        field = first.group(1).strip()
        full = re.search(r"：([\x21-\x7e]+)）$", lines[1]) if len(lines) > 1 else None
        host = full.group(1) if full else field
        rtype = next(l for l in lines if l.startswith("種類")).split("：")[1].strip()
        value_index = next(i for i, l in enumerate(lines) if l.startswith("値"))
        out.append({"host": host, "type": rtype, "value": lines[value_index + 1]})
        del field
    return out


def dkim_boxes(body: str) -> list[dict[str, str]]:
    """The DKIM record boxes only (the first mail also boxes DMARC and SPF)."""
    return [b for b in boxes(body) if "._domainkey." in b["host"]]


def box_fields(body: str) -> list[str]:
    """What each record box says goes in the panel's host field (its first line)."""
    return [m.group(1).strip() for m in re.finditer(r"━+\n(?:ホスト名|名前)：(.+)", body)]


def zone_file_strings(body: str, fqdn: str) -> list[str]:
    line = next(l for l in body.splitlines() if l.startswith(fqdn + ". IN TXT"))
    return re.findall(r'"([^"]*)"', line)


def assert_bot_headers(msg, *, to: str, in_reply_to: str, ref: str) -> None:
    assert msg["From"].addresses[0].addr_spec == SUPPORT_ADDRESS
    assert [a.addr_spec for a in msg["To"].addresses] == [to]
    assert [a.addr_spec for a in msg["Cc"].addresses] == [STAFF]
    assert f"[{ref}]" in msg["Subject"]
    assert msg["Message-ID"] and msg["Date"]
    assert msg["In-Reply-To"].strip() == in_reply_to  # may be folded onto its own line
    assert in_reply_to in msg["References"]
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["X-Dkimbot-Loop"]
    assert msg.get_content_charset() == "utf-8"


def test_it_takes_a_facility_from_request_to_completion_report(tmp_path, dovecot, bind, smtp):
    domain = f"hotel-sakura-{uuid.uuid4().hex[:6]}.test"
    saas_zone = f"saas-{uuid.uuid4().hex[:8]}.test"  # fixtures are session-wide: a zone of our own
    bind.add_zone(domain, ("ns1." + domain, "ns2." + domain))
    bind.add_zone(saas_zone)
    bind.update(saas_zone, "_spf", "TXT", ["v=spf1 ip4:203.0.113.10 -all"])
    bind.update(saas_zone, f"{domain}._report._dmarc", "TXT", ["v=DMARC1"])
    dovecot.reset(SUPPORT_ADDRESS)
    smtp.clear()
    cfg = write_config(tmp_path, dovecot, bind, smtp, saas_zone)
    request_id = make_msgid(domain=domain)
    dovecot.append(SUPPORT_ADDRESS, unrelated_mail())
    dovecot.append(SUPPORT_ADDRESS, request_mail(domain, request_id))
    flags_before = {uid: flags for uid, flags, _ in dovecot.fetch_all(SUPPORT_ADDRESS)}

    # Steps 1-3: the request is read, a key made, the record mailed.
    r = dkimbot(cfg, "run", "--once")
    assert r.returncode == 0, r.stderr.decode()
    assert len(smtp.messages) == 1
    first = smtp.messages[0]
    assert sorted(first.rcpt_tos) == sorted([f"yamada@{domain}", STAFF])
    msg = first.message
    [case] = status(cfg)
    assert case["state"] == "awaiting_dkim" and case["domain"] == domain
    assert case["facility"] == "ホテルさくら" and case["admin_email"] == f"info@{domain}"
    ref, selector = case["case"], case["selector"]
    updated = datetime.fromisoformat(case["updated_at"])  # ISO 8601 with its offset (SPEC §5)
    assert updated.tzinfo is not None and abs(datetime.now(timezone.utc) - updated).total_seconds() < 300
    assert re.fullmatch(r"yoyakuban\d{6}", selector)
    assert_bot_headers(msg, to=f"yamada@{domain}", in_reply_to=request_id, ref=ref)
    body = body_of(first.raw)
    assert "ホテルさくら ご担当者様" in body
    # One visit: DKIM, DMARC p=none and a new SPF record, all in the first mail.
    dkim_box, dmarc_first, spf_first = boxes(body)
    fqdn = f"{selector}._domainkey.{domain}"
    assert dkim_box["host"] == fqdn and dkim_box["type"] == "TXT"
    assert dmarc_first["host"] == f"_dmarc.{domain}" and spf_first["host"] == domain
    assert spf_first["value"] == f"v=spf1 include:_spf.{saas_zone} ~all"
    assert box_fields(body)[:2] == [f"{selector}._domainkey", "_dmarc"]  # the label panels want, first
    assert dkim_box["value"].startswith("v=DKIM1; k=rsa; p=")
    strings = zone_file_strings(body, fqdn)
    assert "".join(strings) == dkim_box["value"] and all(len(s) <= 255 for s in strings)
    assert len(strings) == 2  # a 2048-bit key: 255 + the rest

    # Nothing published yet: a pass changes nothing and mails nothing.
    r = dkimbot(cfg, "run", "--once")
    assert r.returncode == 0, r.stderr.decode()
    assert len(smtp.messages) == 1 and status(cfg)[0]["state"] == "awaiting_dkim"

    # Step 4: the facility publishes the record exactly as the mail gives it.
    bind.update(domain, f"{selector}._domainkey", "TXT", [strings])
    # Steps 5-7: DNS is right on both name servers; the key is installed, proven, announced.
    r = dkimbot(cfg, "run", "--once")
    assert r.returncode == 0, r.stderr.decode()
    assert status(cfg)[0]["state"] == "awaiting_dmarc"
    assert len(smtp.messages) == 2
    active = smtp.messages[1]
    assert_bot_headers(active.message, to=f"yamada@{domain}", in_reply_to=msg["Message-ID"], ref=ref)
    active_body = body_of(active.raw)
    assert "DKIM署名を開始しました" in active.message["Subject"]
    [dmarc_box] = boxes(active_body)
    assert dmarc_box["host"] == f"_dmarc.{domain}"
    assert dmarc_box["value"] == f"v=DMARC1; p=none; rua=mailto:dmarc@{saas_zone}"
    state = tmp_path / "state"
    keytable = (state / "signer" / "KeyTable").read_text()
    assert f"{fqdn} {domain}:{selector}:" in keytable
    assert f"*@{domain} {fqdn}" in (state / "signer" / "SigningTable").read_text()
    keyfile = Path(keytable.split(":")[-1].strip())
    assert stat.S_IMODE(keyfile.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in keyfile.read_bytes()

    # The installed key really signs: `dkimbot sign` output verifies against BIND.
    import dkim

    booking = (f"From: info@{domain}\r\nTo: guest@example.org\r\nSubject: booking\r\n"
               f"Message-ID: <b1@{domain}>\r\nDate: {format_datetime(datetime.now(timezone.utc))}\r\n"
               "\r\nThank you for your booking.\r\n").encode()
    signed = dkimbot(cfg, "sign", stdin=booking)
    assert signed.returncode == 0 and signed.stdout.startswith(b"DKIM-Signature:")
    res = bind.resolver()

    def dnsfunc(name, timeout=5):
        answer = res.resolve(name.decode().rstrip("."), "TXT")
        return b"".join(b"".join(rd.strings) for rd in answer)

    assert dkim.verify(signed.stdout, dnsfunc=dnsfunc)

    # Step 8: DMARC p=none and SPF, as the facility would paste them.
    bind.update(domain, "_dmarc", "TXT", [dmarc_box["value"]])
    bind.update(domain, "@", "TXT", [f"v=spf1 include:_spf.{saas_zone} ~all"])
    # Step 9: the final check and the completion report.
    r = dkimbot(cfg, "run", "--once")
    assert r.returncode == 0, r.stderr.decode()
    assert status(cfg)[0]["state"] == "completed"
    assert len(smtp.messages) == 3
    report = smtp.messages[2]
    assert_bot_headers(report.message, to=f"yamada@{domain}", in_reply_to=active.message["Message-ID"], ref=ref)
    report_body = body_of(report.raw)
    assert "設定が全て完了しました" in report_body
    for item in ("・SPF：合格", "・DKIM：合格", "・DMARC：合格", "・DMARCアライメント：合格"):
        assert item in report_body
    # Gmail's and Yahoo's sender requirements, item by item.
    assert "【GmailやYahoo!メールの送信者の要件】" in report_body
    assert report_body.count("：満たしています") == 4 and "満たしていません" not in report_body
    assert "1024ビット以上であること：満たしています（2048ビット）" in report_body

    # One more pass changes nothing and sends nothing.
    before = status(cfg)
    r = dkimbot(cfg, "run", "--once")
    assert r.returncode == 0, r.stderr.decode()
    assert len(smtp.messages) == 3
    assert status(cfg) == before
    ids = [m.message["Message-ID"] for m in smtp.messages]
    assert len(set(ids)) == len(ids)

    # The shared mailbox is exactly as it was: nothing marked read, moved or deleted.
    after = {uid: flags for uid, flags, _ in dovecot.fetch_all(SUPPORT_ADDRESS)}
    assert after == flags_before

    # The event log shows every transition with the DNS answers seen.
    shown = dkimbot(cfg, "show", ref, "--json")
    events = json.loads(shown.stdout)["events"]
    moves = [(e["from_state"], e["to_state"]) for e in events if e["kind"] == "transition"]
    assert moves == [("awaiting_dkim", "awaiting_dmarc"), ("awaiting_dmarc", "completed")]
    proven = next(e for e in events if e["kind"] == "transition")
    assert proven["detail"]["proof"]["ok"] is True
    assert proven["detail"]["dns"]["dkim"]["ok"] is True
