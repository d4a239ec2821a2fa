"""``dkimbot doctor`` against the real servers (issue 14): all green on a right config,
then each failure in turn (wrong password, closed port, unknown folder, bad TSIG secret,
unwritable table, wrong passphrase, failing reload) turns exactly its line red with the
fix, and the exit status says so. Dovecot, BIND with TSIG, and the SMTP sink (also with
STARTTLS and AUTH) are the tests' own, on loopback."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from configkit import dns, imap, service, smtp_out, write_toml
from servers import SmtpSink, free_port

from bot.adapters.keys import KeyStore

pytestmark = pytest.mark.servers

ROOT = Path(__file__).resolve().parent.parent
PASSPHRASE = "correct horse battery staple"


@pytest.fixture
def setup(tmp_path: Path, dovecot: Any, bind: Any, smtp: Any) -> dict[str, Any]:
    """A right configuration on the real servers, as sections to vary per test."""
    zone = f"doctor-{uuid.uuid4().hex[:8]}.test"
    bind.add_zone(zone, (f"ns1.{zone}", f"ns2.{zone}"))  # on 127.0.0.1 and 127.0.0.2
    user, password = f"support@{zone}", "imap-pw"
    dovecot.add_user(user, password)
    state = tmp_path / "state"
    # A key stored encrypted, as a running bot would have left it.
    KeyStore(state / "keys", PASSPHRASE).load_or_create(f"hotel.{zone}", "sel1", "rsa", 1024)
    os.chmod(state, 0o700)
    signer = tmp_path / "signer"
    signer.mkdir()
    (signer / "KeyTable").write_text("")
    (signer / "SigningTable").write_text("")
    return {
        "service": service(support_address=user),
        "intake": imap(dovecot, user, password_env=None, password=password),
        "outbound": smtp_out(smtp),
        "dns": dns(bind, managed_nameservers=[f".{zone}"], tsig_key_name=bind.tsig_key_name,
                   tsig_secret=bind.tsig_secret),
        "keys": {"passphrase": PASSPHRASE},
        "signer": {"keytable": str(signer / "KeyTable"), "signingtable": str(signer / "SigningTable"),
                   "keys_dir": str(signer / "keys"), "reload_command": "true"},
        "state": {"dir": str(state)},
        "_dir": tmp_path,
    }


def doctor(setup: dict[str, Any], env: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    sections = {k: v for k, v in setup.items() if not k.startswith("_")}
    cfg = write_toml(setup["_dir"] / "dkimbot.toml", sections)
    r = subprocess.run([sys.executable, "-m", "bot", "--config", str(cfg), "doctor"], cwd=setup["_dir"],
                       capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})},
                       check=False)
    lines = {}
    for line in r.stdout.splitlines():
        m = re.match(r"^([✔✖–]) ([^:]+): ", line)
        if m:
            lines[m.group(2)] = line
    return r.returncode, lines, r.stdout + r.stderr


def red(lines: dict[str, str]) -> list[str]:
    return sorted(name for name, line in lines.items() if line.startswith("✖"))


def test_a_right_config_passes_every_check(setup: dict[str, Any]) -> None:
    rc, lines, out = doctor(setup)
    assert rc == 0, out
    assert red(lines) == []
    assert "EXAMINE INBOX" in lines["IMAP"] and "login as support@" in lines["IMAP"]
    assert "connect, EHLO; nothing sent" in lines["SMTP"]
    assert "answers (SOA" in lines["DNS resolver"]
    assert "accepted (a prerequisite-only update; nothing changed)" in lines["TSIG update"]
    assert len(re.findall(r"^✔ name server: ns[12]\.doctor-\S+ 127\.0\.0\.[12]:\d+ answers for .* with authority$",
                          out, re.M)) == 2
    assert "1 of 1 key files decrypt" in lines["stored keys"]
    assert lines["signer reload"].startswith("✔") and lines["signer KeyTable"].startswith("✔")
    # The clock was read from BIND's TSIG-signed answer and is ours (same machine).
    assert re.search(r"✔ clock: within 60 s: \d+ s (ahead of|behind) the update server .* \(TSIG\)", out)
    assert out.rstrip().endswith("all checks passed")


def test_the_update_probe_changes_nothing_in_the_zone(setup: dict[str, Any], bind: Any) -> None:
    zone = setup["service"]["support_address"].split("@")[1]
    before = bind.query(zone, "SOA").answer[0][0].serial
    rc, _, out = doctor(setup)
    assert rc == 0, out
    assert bind.query(zone, "SOA").answer[0][0].serial == before  # an update would bump it


def test_a_wrong_imap_password(setup: dict[str, Any]) -> None:
    setup["intake"]["password"] = "wrong"
    rc, lines, out = doctor(setup)
    assert rc == 1 and red(lines) == ["IMAP"], out
    assert "login refused" in lines["IMAP"] and "fix: check [intake] username and the password" in lines["IMAP"]


def test_an_unknown_folder(setup: dict[str, Any]) -> None:
    setup["intake"]["folder"] = "Nosuchfolder"
    rc, lines, out = doctor(setup)
    assert rc == 1 and red(lines) == ["IMAP"], out
    assert "EXAMINE Nosuchfolder failed" in lines["IMAP"] and "fix: set [intake] folder" in lines["IMAP"]


def test_a_closed_smtp_port_and_a_closed_imap_port(setup: dict[str, Any]) -> None:
    setup["outbound"]["port"] = free_port(udp=False)
    setup["intake"]["port"] = free_port(udp=False)
    rc, lines, out = doctor(setup)
    assert rc == 1 and red(lines) == ["IMAP", "SMTP"], out
    assert "Connection refused" in lines["SMTP"] and "fix: check [outbound] host, port" in lines["SMTP"]
    assert "cannot connect" in lines["IMAP"]


def test_a_bad_tsig_secret(setup: dict[str, Any]) -> None:
    setup["dns"]["tsig_secret"] = base64.b64encode(b"not the secret at all, 32 bytes").decode()
    rc, lines, out = doctor(setup)
    assert rc == 1 and red(lines) == ["TSIG update"], out
    assert "wrong secret" in lines["TSIG update"] and "tsig_secret_env" in lines["TSIG update"]


def test_an_unknown_tsig_key_name(setup: dict[str, Any]) -> None:
    setup["dns"]["tsig_key_name"] = "no-such-key."
    rc, lines, out = doctor(setup)
    assert rc == 1 and red(lines) == ["TSIG update"], out
    assert "does not know key no-such-key." in lines["TSIG update"]


def test_a_lame_name_server_of_the_managed_zone(setup: dict[str, Any], bind: Any) -> None:
    zone = f"lame-{uuid.uuid4().hex[:8]}.test"
    bind.add_zone(zone, (f"ns1.{zone}", f"ns2.{zone}"), servers=[bind.addresses[0]])  # ns2 does not load it
    setup["dns"]["managed_nameservers"] = [f".{zone}"]
    rc, lines, out = doctor(setup)
    assert rc == 1 and red(lines) == ["name server"], out
    assert re.search(rf"^✔ name server: ns1\.{zone} ", out, re.M)
    assert re.search(rf"^✖ name server: ns2\.{zone} 127\.0\.0\.2:\d+: SOA {zone} answered REFUSED.*fix: load the zone",
                     out, re.M)


def test_a_dead_resolver(setup: dict[str, Any]) -> None:
    setup["dns"]["nameservers"] = ["127.0.0.9"]  # loopback, nothing listens
    setup["dns"]["timeout"] = 0.5
    rc, lines, out = doctor(setup)
    assert rc == 1 and "DNS resolver" in red(lines), out
    assert "127.0.0.9" in lines["DNS resolver"] and "did not answer" in lines["DNS resolver"]


@contextmanager
def immutable(path: Path) -> Iterator[None]:
    """Unwritable even for root (the tests run as root on CI): chattr +i."""
    if os.geteuid() != 0:
        path.chmod(0o444)
        yield
        path.chmod(0o644)
        return
    subprocess.run(["chattr", "+i", str(path)], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_an_unwritable_signing_table(setup: dict[str, Any]) -> None:
    table = Path(setup["signer"]["signingtable"])
    with immutable(table):
        rc, lines, out = doctor(setup)
    assert rc == 1 and red(lines) == ["signer SigningTable"], out
    assert "Operation not permitted" in lines["signer SigningTable"] or "Permission denied" in out
    assert "fix: make" in lines["signer SigningTable"]


def test_a_failing_reload_command(setup: dict[str, Any]) -> None:
    setup["signer"]["reload_command"] = "echo opendkim: not running >&2; exit 3"
    rc, lines, out = doctor(setup)
    assert rc == 1 and red(lines) == ["signer reload"], out
    assert "status 3: opendkim: not running" in lines["signer reload"]


def test_a_wrong_passphrase(setup: dict[str, Any]) -> None:
    setup["keys"]["passphrase"] = "wrong passphrase"
    rc, lines, out = doctor(setup)
    assert rc == 1 and red(lines) == ["stored keys"], out
    assert "does not decrypt" in lines["stored keys"] and "passphrase_env" in lines["stored keys"]
    assert PASSPHRASE not in out and "wrong passphrase" not in out


def test_a_state_dir_others_can_read(setup: dict[str, Any]) -> None:
    os.chmod(setup["state"]["dir"], 0o755)
    rc, lines, out = doctor(setup)
    assert rc == 1 and red(lines) == ["state dir"], out
    assert "mode 0755" in lines["state dir"] and "chmod -R go-rwx" in lines["state dir"]


def test_starttls_and_auth_are_done_and_a_wrong_smtp_password_is_named(setup: dict[str, Any]) -> None:
    with SmtpSink(starttls=True, credentials={"bot": "pw"}) as sink:
        setup["outbound"] = {**smtp_out(sink), "tls": "starttls", "username": "bot", "password": "pw"}
        env = {"SSL_CERT_FILE": str(sink.cafile)}  # the sink's self-signed CA, for this run only
        rc, lines, out = doctor(setup, env)
        assert rc == 0, out
        assert "connect, EHLO, STARTTLS, AUTH as bot; nothing sent" in lines["SMTP"]
        setup["outbound"]["password"] = "wrong"
        rc, lines, out = doctor(setup, env)
        assert rc == 1 and red(lines) == ["SMTP"], out
        assert "login refused for bot" in lines["SMTP"]
        assert sink.messages == []


def test_the_proof_mailbox_is_checked_when_enabled(setup: dict[str, Any], dovecot: Any) -> None:
    user = f"proof-{uuid.uuid4().hex[:6]}@gmail.test"
    dovecot.add_user(user, "proof-pw")
    setup["proof"] = {"enabled": True, "address": user, "imap_host": dovecot.host, "imap_port": dovecot.port,
                      "imap_tls": "none", "imap_username": user, "imap_password": "proof-pw"}
    rc, lines, out = doctor(setup)
    assert rc == 0 and f"login as {user}, EXAMINE INBOX" in lines["proof mailbox"], out
    setup["proof"]["imap_password"] = "wrong"
    rc, lines, out = doctor(setup)
    assert rc == 1 and red(lines) == ["proof mailbox"], out
    assert "fix: check [proof] imap_username and the password imap_password_env names" in lines["proof mailbox"]


def test_a_broken_config_is_the_first_red_line(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[intake]\nkind = 'pigeon'\n")
    r = subprocess.run([sys.executable, "-m", "bot", "--config", str(cfg), "doctor"], capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode == 2
    assert r.stdout.startswith("✖ config: [intake] kind must be") and "fix:" in r.stdout


def test_the_clock_check_flags_a_skewed_server() -> None:
    from datetime import UTC, datetime, timedelta

    from bot.app.doctor import Doctor
    from bot.config import Config

    d = Doctor(Config())
    d.clocks.append(("the update server 127.0.0.1 (TSIG)", datetime.now(UTC) + timedelta(minutes=5)))
    (finding,) = d.check_clock()
    assert finding.ok is False and "behind the update server" in finding.detail
    assert "chrony" in finding.fix
    d.clocks[0] = ("x", datetime.now(UTC) - timedelta(seconds=3))
    assert d.check_clock()[0].ok is True


def test_nothing_is_left_behind(setup: dict[str, Any]) -> None:
    def files() -> dict[Path, int]:
        # Directories' own mtimes move: the write test makes and removes a file in them.
        return {p.relative_to(setup["_dir"]): 0 if p.is_dir() else p.stat().st_mtime_ns
                for p in setup["_dir"].rglob("*")}

    before = files()
    rc, _, out = doctor(setup)
    assert rc == 0, out
    after = files()
    assert after.pop(Path("dkimbot.toml"))  # the test's own config file
    assert after == before  # nothing made (no signer/keys, no sqlite), nothing touched


def test_the_report_mailbox_is_checked_when_configured(setup: dict[str, Any], dovecot: Any) -> None:
    user = f"rua-{uuid.uuid4().hex[:6]}@489ban.net"
    dovecot.add_user(user, "rua-pw")
    rc, lines, out = doctor(setup)
    assert "[reports] is off" in lines["report mailbox"], out
    setup["reports"] = {"kind": "imap", "host": dovecot.host, "port": dovecot.port, "tls": "none",
                        "username": user, "password": "rua-pw"}
    rc, lines, out = doctor(setup)
    assert rc == 0 and f"login as {user}, EXAMINE INBOX" in lines["report mailbox"], out
    setup["reports"]["password"] = "wrong"
    rc, lines, out = doctor(setup)
    assert rc == 1 and red(lines) == ["report mailbox"], out
    assert "fix: check [reports] username and the password password_env names" in lines["report mailbox"]
