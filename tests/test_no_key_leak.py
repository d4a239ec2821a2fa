"""No private key material and no passphrase in anything dkimbot outputs (issue 5).

A full flow on the real servers (Dovecot, BIND, SMTP sink) through the real `dkimbot`
command, with the keys encrypted at rest by a passphrase from the environment, dual
signing, a wrong passphrase on the way (the error path) and a key rotation. Every
stdout and stderr of every command (`run --once -v`, `status`, `show`, `check`, `sign`,
`rotate`), every mail the SMTP sink received, and the state database are searched for
the private keys (PEM body lines, encrypted and not; the base64 of their DER; the
Ed25519 seed) and for the passphrases.
"""

from __future__ import annotations

import base64
import json
from email.utils import make_msgid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from keyflow import (case_mails, body_of, booking, boxes, dkimbot_cmd, publish_box, request_mail, saas_zone,
                     write_config)

pytestmark = pytest.mark.servers

PASSPHRASE = "k5 correct horse battery staple"
WRONG = "k5 wrong passphrase 0451"


def pem_body_lines(pem: bytes) -> list[str]:
    return [line for line in pem.decode().splitlines() if line and not line.startswith("-----")]


def secrets_of(state: Path) -> set[str]:
    """Every string that would betray a private key, from the store and the signer's files."""
    from bot.adapters.keys import public_b64_of

    needles: set[str] = set()
    public_keys: list[str] = []
    files = sorted((state / "keys").rglob("*.pem")) + sorted((state / "signer" / "keys").glob("*"))
    assert len(files) >= 4
    for path in files:
        data = path.read_bytes()
        needles.update(pem_body_lines(data))
        key = serialization.load_pem_private_key(data, password=PASSPHRASE.encode()
                                                 if b"ENCRYPTED" in data else None)
        public_keys.append(public_b64_of(key))
        for fmt in (serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL):
            if isinstance(key, ed25519.Ed25519PrivateKey) and fmt != serialization.PrivateFormat.PKCS8:
                continue
            pem = key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
            der = key.private_bytes(serialization.Encoding.DER, fmt, serialization.NoEncryption())
            needles.update(pem_body_lines(pem))
            needles.add(base64.b64encode(der).decode())
        if isinstance(key, ed25519.Ed25519PrivateKey):
            seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                     serialization.NoEncryption())
            needles.add(base64.b64encode(seed).decode())  # what the signer hands dkimpy
            needles.add(seed.hex())
    # The last line of a PEM is short, and an RSA private key holds its public modulus:
    # only strings that say something beyond the published p= values count.
    return {n for n in needles if len(n) >= 24 and not any(n in p for p in public_keys)}


def test_nothing_dkimbot_outputs_contains_a_private_key_or_the_passphrase(tmp_path, dovecot, bind, smtp):
    domain = "leak-check.test"
    bind.add_zone(domain, ("ns1." + domain, "ns2." + domain))
    saas_zone(bind, domain)
    mailbox = "k5-leak@489ban.net"
    cfg = write_config(tmp_path, dovecot, bind, smtp, mailbox=mailbox,
                       keys={"bits": 2048, "ed25519": True, "passphrase_env": "K5_KEY_PASSPHRASE"})
    smtp.clear()
    outputs: list[tuple[str, bytes]] = []

    def run(*args: str, stdin: bytes | None = None, passphrase: str = PASSPHRASE, ok: bool = True):
        r = dkimbot_cmd(cfg, *args, stdin=stdin, env={"K5_KEY_PASSPHRASE": passphrase})
        outputs.append((" ".join(args) + " [stdout]", r.stdout))
        outputs.append((" ".join(args) + " [stderr]", r.stderr))
        if ok:
            assert r.returncode == 0, (args, r.stderr.decode())
        return r

    def case_json() -> dict:
        [c] = json.loads(run("status", "--json").stdout)
        return c

    dovecot.append(mailbox, request_mail(domain, make_msgid(domain=domain)))
    run("-v", "run", "--once")
    first = body_of(case_mails(smtp)[-1].raw)
    c = case_json()
    ref, selectors = c["case"], c["selectors"]
    assert len(selectors) == 2
    state = tmp_path / "state"
    assert all(p.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
               for p in (state / "keys" / domain).glob("*.pem"))
    for sel in selectors:
        publish_box(bind, domain, first, f"{sel}._domainkey.{domain}")

    # A wrong passphrase: found before anything is written (issue 11: exit 2, one line
    # naming the passphrase's variable, not its value); the case is untouched, nothing leaks.
    wrong = run("-v", "run", "--once", passphrase=WRONG, ok=False)
    assert wrong.returncode == 2 and b"passphrase" in wrong.stderr
    assert case_json()["state"] == "awaiting_dkim"
    # The right one: the pass goes on as if nothing happened.
    run("-v", "run", "--once")
    assert case_json()["state"] == "awaiting_dmarc"
    [dmarc] = boxes(body_of(case_mails(smtp)[-1].raw))
    bind.update(domain, "_dmarc", "TXT", [dmarc["value"]])
    bind.update(domain, "@", "TXT", [f"v=spf1 include:_spf.{saas_zone(bind, domain)} ~all"])
    run("-v", "run", "--once")
    assert case_json()["state"] == "completed"

    run("status")
    run("show", ref)
    run("show", ref, "--json")
    run("check", domain)
    run("check", domain, "--json")
    signed = run("sign", stdin=booking(domain))
    assert signed.stdout.count(b"DKIM-Signature:") == 2
    run("sign", stdin=b"From: nobody@elsewhere.test\r\nSubject: x\r\n\r\nx\r\n")

    rotated = run("-v", "rotate", domain)
    assert b"pending rotation" in rotated.stdout
    new = json.loads(run("status", "--json").stdout)[0]
    rotation_mail = body_of(case_mails(smtp)[-1].raw)
    for b in boxes(rotation_mail):
        publish_box(bind, domain, rotation_mail, b["host"])
    run("-v", "run", "--once")
    assert "古いレコードは削除できます" in case_mails(smtp)[-1].message["Subject"]
    after = case_json()
    assert after["selectors"] != selectors and new["selectors"] == selectors
    run("-v", "rotate", domain)  # a second rotation: keys made again, record mailed
    resigned = run("sign", stdin=booking(domain))
    assert resigned.stdout.count(b"DKIM-Signature:") == 2
    run("show", ref, "--json")

    # Everything that left dkimbot, plus what it keeps in its database.
    mails = [(f"mail {m.message['Subject']}", m.raw) for m in smtp.messages]  # digests too
    assert len(mails) >= 6  # (a wrong passphrase no longer escalates: it stops the pass first)
    stored = [(p.name, p.read_bytes()) for p in sorted(state.glob("dkimbot.sqlite3*"))]
    needles = secrets_of(state)
    assert len(needles) > 20
    haystacks = outputs + mails + stored
    for where, data in haystacks:
        text = data.decode("utf-8", "replace")
        # Encoded-word or base64 transfer encoding could hide a leak from a plain search.
        if where.startswith("mail "):
            import email
            import email.policy

            msg = email.message_from_bytes(data, policy=email.policy.default)
            text += "\n".join(str(part.get_content()) for part in msg.walk()
                              if part.get_content_maintype() == "text")
        assert "PRIVATE KEY" not in text, where
        assert PASSPHRASE not in text and WRONG not in text, where
        leaked = [n for n in needles if n in text]
        assert not leaked, f"{where} contains key material ({len(leaked)} strings)"
    assert any("KeyPassphraseError" in d.decode("utf-8", "replace") or "passphrase" in d.decode("utf-8", "replace")
               for w, d in haystacks if "[stderr]" in w or w.startswith("mail ")), "the wrong-passphrase error was reported"
