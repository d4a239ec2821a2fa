"""SPEC §8 end-to-end proof on the real servers: a completed case's probe goes through a
receiving MTA that, like Gmail, verifies DKIM (dkimpy, against the test BIND), judges
DMARC alignment simply, prepends Authentication-Results and files the message into a
Dovecot mailbox; the next pass reads it back (read-only) and reports item by item.

Passes run in-process with the Bot's clock moved by the test (no sleeping).
"""

from __future__ import annotations

import base64
import email
import email.policy
import os
import re
import threading
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import dkim
import dns.exception
import pytest
import servers
from configkit import server_config
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from keyflow import (
    Clock,
    body_of,
    boxes,
    dnsfunc_for,
    open_bot,
    publish_box,
    request_mail,
    saas_zone,
)

from bot.app import jobs
from bot.app.cli import main as dkimbot_main
from bot.flows.proof import proofs_for, queue_probe

pytestmark = pytest.mark.servers

STAFF = "staff@489ban.net"
PASSWORD = "proof-secret"


class ProofReceiver:
    """A receiving MTA stand-in (aiosmtpd): keeps every message like the SMTP sink, and
    files mail for ``proof_address`` into Dovecot with an Authentication-Results header."""

    def __init__(self, dovecot: Any, bind: Any, proof_address: str) -> None:
        from aiosmtpd.controller import Controller

        self.dovecot, self.bind, self.proof_address = dovecot, bind, proof_address
        self.messages: list[servers.ReceivedMessage] = []
        self.drop_probes = False  # a receiver that loses mail (spam folder, filter)
        self.host = servers.LOOPBACK
        self.port = servers.free_port((self.host,), udp=False)
        self._lock = threading.Lock()
        self._controller = Controller(self, hostname=self.host, port=self.port, ready_timeout=10)
        self._controller.start()

    def close(self) -> None:
        self._controller.stop()

    async def handle_DATA(self, server, session, envelope):
        raw = bytes(envelope.content)
        with self._lock:
            self.messages.append(servers.ReceivedMessage(envelope.mail_from, list(envelope.rcpt_tos), raw))
        if self.proof_address in envelope.rcpt_tos and not self.drop_probes:
            self.dovecot.append(self.proof_address, self.authentication_results(raw) + raw)
        return "250 Message accepted"

    def authentication_results(self, raw: bytes) -> bytes:
        msg = email.message_from_bytes(raw, policy=email.policy.compat32)
        from_domain = msg["From"].rpartition("@")[2].strip(" >").lower()
        results, passed = [], []
        verifier = dkim.DKIM(raw)
        for i, sig in enumerate(msg.get_all("DKIM-Signature") or []):
            tags = dict(t.split("=", 1) for t in re.sub(r"\s+", "", sig).split(";") if "=" in t)
            try:
                ok = verifier.verify(idx=i, dnsfunc=dnsfunc_for(self.bind))
            except dkim.DKIMException:
                ok = False
            if ok:
                passed.append(tags["d"].lower())
            results.append(f"dkim={'pass' if ok else 'fail'} header.d={tags['d']} header.s={tags['s']} "
                           f"header.b={tags['b'][:8]}")
        if not results:
            results.append("dkim=none")
        try:
            answer = self.bind.resolver().resolve(f"_dmarc.{from_domain}", "TXT")
            published = any(b"".join(r.strings).startswith(b"v=DMARC1") for r in answer)
        except dns.exception.DNSException:
            published = False
        if not published:
            dmarc = "none"
        else:  # relaxed alignment, simply: the signing domain is the From domain or its parent
            dmarc = "pass" if any(from_domain == d or from_domain.endswith("." + d) for d in passed) else "fail"
        results.append(f"dmarc={dmarc} header.from={from_domain}")
        return ("Authentication-Results: mx.test;\r\n\t" + ";\r\n\t".join(results) + "\r\n").encode()


@pytest.fixture
def world(tmp_path, dovecot, bind):
    """A facility zone, the support and proof mailboxes, the receiver, and a config."""
    made: list[Any] = []

    def make(domain: str, *, notify_facility: bool = False) -> tuple[Path, Any, Any, str]:
        bind.add_zone(domain, ("ns1." + domain, "ns2." + domain))
        saas_zone(bind, domain)
        mailbox = f"support-{domain.split('.')[0]}@489ban.net"
        proof_box = f"proof-{domain.split('.')[0]}@receiver.test"
        for user in (mailbox, proof_box):
            dovecot.add_user(user, PASSWORD)
            dovecot.reset(user)
        receiver = ProofReceiver(dovecot, bind, proof_box)
        made.append(receiver)
        proof = "\n".join([
            "enabled = true", f'address = "{proof_box}"', f'imap_host = "{dovecot.host}"',
            f"imap_port = {dovecot.port}", 'imap_tls = "none"', f'imap_username = "{proof_box}"',
            'imap_password_env = "PROOF_IMAP_PASSWORD"', "imap_timeout = 10.0", "wait_minutes = 30.0",
            f"notify_facility = {'true' if notify_facility else 'false'}",
        ])
        cfg = server_config(
            tmp_path, dovecot, bind, receiver, saas_zone="k5-saas.test", username=mailbox,
            keys={"bits": 1024}, service_extra={"max_mails_per_case_per_day": 20},
            schedule={"check_interval_seconds": 0, "reminder_after_hours": 720, "max_reminders": 2},
            intake_extra={"password_env": "PROOF_SUPPORT_PASSWORD"}, raw={"proof": proof},
        )
        os.environ["PROOF_SUPPORT_PASSWORD"] = PASSWORD
        os.environ["PROOF_IMAP_PASSWORD"] = PASSWORD
        return cfg, receiver, mailbox, proof_box

    yield make
    for receiver in made:
        receiver.close()


def complete_case(bot, bind, receiver, dovecot, mailbox, domain, clock):
    """Request → DKIM record published → DMARC + SPF → completed (the facility's side)."""
    dovecot.append(mailbox, request_mail(domain, make_msgid(domain=domain)))
    jobs.run_pass(bot)
    [case] = bot.store.list_cases()
    publish_box(bind, domain, body_of(receiver.messages[-1].raw), f"{case.selector}._domainkey.{domain}")
    clock.advance(minutes=30)
    jobs.run_pass(bot)
    [dmarc] = boxes(body_of(receiver.messages[-1].raw))
    bind.update(domain, "_dmarc", "TXT", [dmarc["value"]])
    bind.update(domain, "@", "TXT", [f"v=spf1 include:_spf.{saas_zone(bind, domain)} ~all"])
    clock.advance(minutes=30)
    jobs.run_pass(bot)
    case = bot.store.get_case(case.id)
    assert case.state == "completed", [e["kind"] for e in bot.store.events(case.id)]
    return case


def mails_to(receiver, address: str) -> list[servers.ReceivedMessage]:
    return [m for m in receiver.messages if address in m.rcpt_tos]


def test_it_proves_dkim_and_dmarc_pass_at_the_receiver_and_reports_item_by_item(world, dovecot, bind, capsys):
    domain = "proof-hotel.test"
    cfg_path, receiver, mailbox, proof_box = world(domain, notify_facility=True)
    clock = Clock()
    bot = open_bot(cfg_path, clock)
    try:
        case = complete_case(bot, bind, receiver, dovecot, mailbox, domain, clock)
        # The completing pass sent the probe: From the facility's domain, signed with its key.
        [probe] = mails_to(receiver, proof_box)
        assert probe.mail_from == f"dkimbot-proof@{domain}"
        assert f"d={domain}" in re.sub(r"\s+", "", probe.message["DKIM-Signature"])
        assert f"s={case.selector}" in re.sub(r"\s+", "", probe.message["DKIM-Signature"])
        [(_, _flags, stored)] = dovecot.fetch_all(proof_box)
        assert stored.startswith(b"Authentication-Results: mx.test;")
        assert [e["kind"] for e in bot.store.events(case.id)].count("proof_sent") == 1

        clock.advance(minutes=2)
        jobs.run_pass(bot)
        [result] = [e for e in bot.store.events(case.id) if e["kind"] == "proof_result"]
        d = result["detail"]
        assert (d["authserv_id"], d["ok"], d["dkim_ok"], d["dmarc_ok"]) == ("mx.test", True, True, True)
        assert [(i["method"], i["result"], i["detail"]) for i in d["items"]] == [
            ("dkim", "pass", f"header.d={domain} header.s={case.selector}"),
            ("dmarc", "pass", f"header.from={domain}"),
        ]
        assert proofs_for(bot.store, case.id)[0]["status"] == "received"
        # Read-only: the proof mailbox is untouched (no \Seen).
        assert "\\Seen" not in dovecot.fetch_all(proof_box)[0][1]

        [staff] = [m for m in mails_to(receiver, STAFF) if "proof:" in m.message["Subject"]]
        text = body_of(staff.raw)
        assert "dmarc=pass" in staff.message["Subject"] and case.ref in staff.message["Subject"]
        assert f"- dkim=pass header.d={domain} header.s={case.selector}" in text
        assert f"- dmarc=pass header.from={domain}" in text
        assert "OK   DKIMの鍵の長さが1024ビット以上であること（1024ビット）" in text
        [facility] = [m for m in receiver.messages if "受信確認" in m.message["Subject"]]
        assert f"yamada@{domain}" in facility.rcpt_tos
        fbody = body_of(facility.raw)
        assert "・DKIM：合格" in fbody and "・DMARC：合格" in fbody and "御社" in fbody
        assert "満たしていません" not in fbody

        # One probe per completion: later passes send none and report nothing new.
        before = len(receiver.messages)
        clock.advance(minutes=40)
        jobs.run_pass(bot)
        assert len(receiver.messages) == before and len(proofs_for(bot.store, case.id)) == 1

        # dkimbot show lists the receiver's items, one line each.
        capsys.readouterr()
        assert dkimbot_main(["--config", str(cfg_path), "show", case.ref]) == 0
        shown = capsys.readouterr().out
        assert "proof_result" in shown and f"dkim=pass header.d={domain} header.s={case.selector}" in shown
    finally:
        bot.close()


def test_a_changed_record_makes_dkim_fail_at_the_receiver_and_escalates(world, dovecot, bind, capsys):
    domain = "proof-ryokan.test"
    cfg_path, receiver, mailbox, proof_box = world(domain)
    clock = Clock()
    bot = open_bot(cfg_path, clock)
    try:
        case = complete_case(bot, bind, receiver, dovecot, mailbox, domain, clock)
        clock.advance(minutes=2)
        jobs.run_pass(bot)  # the completion probe passes
        assert [p["status"] for p in proofs_for(bot.store, case.id)] == ["received"]

        # Someone replaced the record with another key: signatures can no longer verify.
        other = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
        p = base64.b64encode(other.public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
        bind.update(domain, f"{case.selector}._domainkey", "TXT", [f"v=DKIM1; k=rsa; p={p}"])

        capsys.readouterr()
        assert dkimbot_main(["--config", str(cfg_path), "proof", case.ref]) == 0
        assert f"to {proof_box}: sent" in capsys.readouterr().out
        assert len(mails_to(receiver, proof_box)) == 2
        before = len(mails_to(receiver, STAFF))
        clock.advance(minutes=2)
        jobs.run_pass(bot)
        result = [e for e in bot.store.events(case.id) if e["kind"] == "proof_result"][-1]["detail"]
        assert (result["ok"], result["dkim_ok"]) == (False, False)
        assert [(i["method"], i["result"]) for i in result["items"]] == [("dkim", "fail"), ("dmarc", "fail")]
        [esc] = mails_to(receiver, STAFF)[before:]
        assert "ESCALATION: the end-to-end proof failed at the receiver" in esc.message["Subject"]
        text = body_of(esc.raw)
        assert f"did not pass the DKIM signature of {domain}" in text
        assert f"dkim=fail header.d={domain} header.s={case.selector}" in text
        assert f"yamada@{domain}" not in esc.rcpt_tos  # staff only
        assert bot.store.get_case(case.id).state == "completed"

        # A probe the receiver loses is reported as not received once wait_minutes pass.
        receiver.drop_probes = True
        queue_probe(bot, case, by="test")
        jobs.flush_outbox_once(bot)
        clock.advance(minutes=20)
        jobs.run_pass(bot)
        assert proofs_for(bot.store, case.id)[-1]["status"] == "waiting"
        clock.advance(minutes=11)
        before = len(mails_to(receiver, STAFF))
        jobs.run_pass(bot)
        assert proofs_for(bot.store, case.id)[-1]["status"] == "not_received"
        [missing] = mails_to(receiver, STAFF)[before:]
        assert "probe not received" in missing.message["Subject"]
        assert "was not in the proof mailbox INBOX after 30 minutes" in body_of(missing.raw)
    finally:
        bot.close()
