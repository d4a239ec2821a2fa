"""``dkimbot adopt`` on real BIND (issue 14): domains signed by hand in OpenDKIM tables
become completed cases when their record matches the key on every authoritative server;
the others are listed, not adopted; nobody is mailed; a second run changes nothing; the
adopted case is watched, rotatable and in the digest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from configkit import dns, service, write_toml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bot.adapters.keys import dkim_key_from_private, split_txt_strings

pytestmark = pytest.mark.servers

PASSPHRASE = "adopt passphrase"


def opendkim_key(directory: Path, domain: str, selector: str) -> tuple[Path, str]:
    """A key file as opendkim-genkey writes it (traditional PEM, unencrypted) and its record."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    path = directory / f"{domain}.{selector}.private"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return path, dkim_key_from_private(domain, selector, key).record


@pytest.fixture
def world(tmp_path: Path, bind: Any) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    right, wrong, partial, absent = (f"{n}-{tag}.test" for n in ("right", "wrong", "partial", "absent"))
    for zone in (right, wrong, partial, absent):
        bind.add_zone(zone, (f"ns1.{zone}", f"ns2.{zone}"))  # two authoritative servers each
    keys = tmp_path / "opendkim" / "keys"
    keys.mkdir(parents=True)
    kt, st = [], []
    for domain in (right, wrong, partial, absent):
        path, record = opendkim_key(keys, domain, "mail2023")
        kt.append(f"{domain.split('-')[0]}-key {domain}:mail2023:{path}")  # hand-made key names
        st.append(f"*@{domain} {domain.split('-')[0]}-key")
        if domain == right:
            bind.update(domain, "mail2023._domainkey", "TXT", [split_txt_strings(record)])
        if domain == partial:  # only one of the two name servers has it
            bind.update(domain, "mail2023._domainkey", "TXT", [split_txt_strings(record)],
                        servers=[bind.addresses[0]])
    _, other = opendkim_key(tmp_path, wrong, "mail2023")
    bind.update(wrong, "mail2023._domainkey", "TXT", [split_txt_strings(other)])
    (tmp_path / "opendkim" / "KeyTable").write_text("# made by hand\n" + "\n".join(kt) + "\n")
    (tmp_path / "opendkim" / "SigningTable").write_text("\n".join(st) + "\n")
    cfg = write_toml(tmp_path / "dkimbot.toml", {
        "service": service(),
        "dns": dns(bind),
        "keys": {"passphrase": PASSPHRASE},
        "state": {"dir": str(tmp_path / "state")},
    })
    return {"cfg": cfg, "tmp": tmp_path, "right": right, "wrong": wrong, "partial": partial, "absent": absent,
            "tables": ["--keytable", str(tmp_path / "opendkim" / "KeyTable"),
                       "--signingtable", str(tmp_path / "opendkim" / "SigningTable")]}


def dkimbot(world: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bot", "--config", str(world["cfg"]), *args],
                          cwd=world["tmp"], capture_output=True, text=True, timeout=120, check=False)


def status(world: dict[str, Any]) -> list[dict[str, Any]]:
    r = dkimbot(world, "status", "--json")
    assert r.returncode == 0, r.stderr
    return list(json.loads(r.stdout))


def outbox(world: dict[str, Any]) -> list[Path]:
    box = world["tmp"] / "state" / "outbox"
    return sorted(box.glob("*.eml")) if box.exists() else []


def test_dry_run_lists_and_changes_nothing(world: dict[str, Any]) -> None:
    r = dkimbot(world, "adopt", "--dry-run", *world["tables"])
    assert r.returncode == 1, r.stdout + r.stderr  # some domains cannot be adopted
    out = r.stdout
    assert f"would adopt: {world['right']}: mail2023: the record matches" in out
    assert f"not adopted: {world['wrong']}: mail2023: dkim_key_mismatch" in out
    assert f"not adopted: {world['partial']}: mail2023: dkim_partial_nameservers" in out
    assert f"not adopted: {world['absent']}: mail2023: dkim_not_published" in out
    assert "1 to adopt, 3 not adopted, 0 already known" in out
    assert status(world) == []
    assert not (world["tmp"] / "state" / "keys").exists()


def test_adopt_makes_a_completed_case_without_mail_and_is_idempotent(world: dict[str, Any]) -> None:
    r = dkimbot(world, "adopt", *world["tables"])
    assert r.returncode == 1 and f"adopted DKIM-0001: {world['right']}" in r.stdout, r.stdout + r.stderr
    (case,) = status(world)
    assert (case["case"], case["domain"], case["selector"], case["state"]) == \
        ("DKIM-0001", world["right"], "mail2023", "completed")
    assert outbox(world) == []  # nobody mailed
    shown = json.loads(dkimbot(world, "show", "DKIM-0001", "--json").stdout)
    adopted = [e for e in shown["events"] if e["kind"] == "adopted"]
    assert adopted and adopted[0]["to_state"] == "completed"
    # The key is now in the bot's store, encrypted at rest.
    stored = (world["tmp"] / "state" / "keys" / world["right"] / "mail2023.pem").read_bytes()
    assert b"ENCRYPTED" in stored
    # The tables read were not [signer]'s: the bot's signer now signs for the domain.
    own = (world["tmp"] / "state" / "signer" / "SigningTable").read_text()
    assert f"*@{world['right']}" in own and world["wrong"] not in own

    again = dkimbot(world, "adopt", *world["tables"])
    assert f"known: {world['right']}: already a case (DKIM-0001, completed)" in again.stdout
    assert "0 adopted, 3 not adopted, 1 already known" in again.stdout
    assert len(status(world)) == 1 and outbox(world) == []


def test_the_signer_tables_themselves_are_the_default(world: dict[str, Any]) -> None:
    """With no paths, [signer]'s tables are read; the key is already there and stays put."""
    t = world["tmp"] / "opendkim"
    text = world["cfg"].read_text() + (f'\n[signer]\nkeytable = "{t / "KeyTable"}"\n'
                                       f'signingtable = "{t / "SigningTable"}"\n')
    world["cfg"].write_text(text)
    before = (t / "KeyTable").read_text(), (t / "SigningTable").read_text()
    r = dkimbot(world, "adopt")
    assert f"adopted DKIM-0001: {world['right']}" in r.stdout, r.stdout + r.stderr
    assert ((t / "KeyTable").read_text(), (t / "SigningTable").read_text()) == before


def test_an_adopted_case_is_watched_rotatable_and_in_the_digest(world: dict[str, Any], bind: Any) -> None:
    from keyflow import Clock

    from bot.app.jobs import Bot
    from bot.config import load_config
    from bot.flows.monitor import monitor_due_once

    assert dkimbot(world, "adopt", *world["tables"]).stdout.count("adopted DKIM-") == 1
    bot = Bot.open(load_config(world["cfg"]), clock=Clock())
    try:
        case = bot.store.find_case("DKIM-0001")
        assert case is not None and case.next_check_at is not None
        assert timedelta(hours=23) < case.next_check_at - bot.clock() <= timedelta(days=1)
        # A day later the watch checks it; the record then vanishes and it warns staff.
        bot.clock.advance(days=1, minutes=1)  # type: ignore[attr-defined]
        assert monitor_due_once(bot) == 1
        assert bot.store.get_case(case.id).state == "completed"
        bind.delete(world["right"], "mail2023._domainkey", "TXT")
        bot.clock.advance(days=1, minutes=1)  # type: ignore[attr-defined]
        assert monitor_due_once(bot) == 1
        assert bot.store.get_case(case.id).state == "dkim_lost"
    finally:
        bot.close()
    digest = dkimbot(world, "digest", "--print")
    assert digest.returncode == 0 and "dkim_lost" in digest.stdout


def test_rotate_works_on_an_adopted_domain(world: dict[str, Any]) -> None:
    dkimbot(world, "adopt", *world["tables"])
    r = dkimbot(world, "rotate", world["right"])
    assert r.returncode == 0, r.stdout + r.stderr
    mails = [p.read_text(errors="replace") for p in outbox(world)]
    assert len(mails) == 1 and "staff@489ban.net" in mails[0]  # no facility address: staff get it
    assert os.path.exists(world["tmp"] / "state" / "keys" / world["right"])
