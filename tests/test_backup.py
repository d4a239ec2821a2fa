"""``dkimbot backup`` / ``dkimbot restore`` (issue 14) on the real servers: a backup taken
in the middle of a flow (a mail still waiting in the outbox, a write transaction open),
restored into a new state directory, and the flow finishes there: every mail sent
exactly once, the restored (still encrypted) key signs, the signer files follow the new
config. Dovecot, BIND (two name servers) and the SMTP sink; passes in-process with a
clock the test moves."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import pytest
from keyflow import (
    Clock,
    body_of,
    boxes,
    case_mails,
    open_bot,
    publish_box,
    request_mail,
    saas_zone,
    write_config,
)

from bot.app import jobs

pytestmark = pytest.mark.servers

PASSPHRASE = "backup passphrase"


def dkimbot(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bot", "--config", str(cfg), *args], capture_output=True,
                          text=True, timeout=120, check=False, env=dict(os.environ))


def private_dirs(state: Path) -> set[str]:
    """The directories under ``state`` (and itself, as ".") whose mode is 0700."""
    return {str(p.relative_to(state)) for p in [state, *state.rglob("*")]
            if p.is_dir() and stat.S_IMODE(p.stat().st_mode) == 0o700}


def kinds(smtp: Any) -> list[str]:
    return [str(m.message["Subject"]) for m in case_mails(smtp)]


def test_a_backup_mid_flow_restores_into_a_new_dir_and_the_flow_finishes_there(
        tmp_path: Path, dovecot: Any, bind: Any, smtp: Any) -> None:
    domain = f"backup-{os.urandom(3).hex()}.test"
    bind.add_zone(domain, (f"ns1.{domain}", f"ns2.{domain}"))
    saas_zone(bind, domain)
    mailbox = f"k5-backup-{os.urandom(3).hex()}@489ban.net"
    (tmp_path / "a").mkdir()
    cfg_a = write_config(tmp_path / "a", dovecot, bind, smtp, mailbox=mailbox, keys={"passphrase": PASSPHRASE})
    smtp.clear()
    clock = Clock()

    # In A: the request is read and answered, but the SMTP server is refusing for now
    # (451): the reply waits in the outbox.
    dovecot.append(mailbox, request_mail(domain, make_msgid(domain=domain)))
    smtp.fail_with = 451
    bot = open_bot(cfg_a, clock)
    try:
        jobs.run_pass(bot)
        [case] = bot.store.list_cases()
        assert case.state == "awaiting_dkim" and smtp.messages == []
        assert [m["status"] for m in bot.store.mails_for_case(case.id)] == ["pending"]
    finally:
        bot.close()

    # The backup runs while another connection holds a write transaction open (a pass
    # in the middle of a decision): it neither waits for it nor copies its half.
    writer = sqlite3.connect(tmp_path / "a" / "state" / "dkimbot.sqlite3", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO events (case_id, at, kind, detail) VALUES (?, '2026-01-01', 'half_done', '{}')",
                   (case.id,))
    archive = tmp_path / "dkimbot-backup.tar.gz"
    r = dkimbot(cfg_a, "backup", str(archive))
    writer.execute("ROLLBACK")
    writer.close()
    assert r.returncode == 0, r.stderr
    assert "1 cases, 1 stored keys" in r.stdout
    assert (archive.stat().st_mode & 0o077) == 0
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        [keyname] = [n for n in names if n.startswith("keys/")]
        stored = tar.extractfile(keyname).read()  # type: ignore[union-attr]
    assert names[0] == "manifest.json" and "dkimbot.sqlite3" in names
    assert b"BEGIN ENCRYPTED PRIVATE KEY" in stored and b"BEGIN PRIVATE KEY" not in stored

    # A new machine: the same servers, another state directory (signer inside it).
    (tmp_path / "b").mkdir()
    cfg_b = tmp_path / "b" / "dkimbot.toml"
    cfg_b.write_text(cfg_a.read_text().replace(str(tmp_path / "a" / "state"), str(tmp_path / "b" / "state")))
    r = dkimbot(cfg_b, "restore", str(archive))
    assert r.returncode == 0, r.stderr
    assert "1 cases, 1 stored keys" in r.stdout
    # Every directory a fresh install made private (state, keys/, keys/<domain>/, the
    # signer's) is private after the restore too (keys/ was left 0755), key files 0600.
    state_a, state_b = tmp_path / "a" / "state", tmp_path / "b" / "state"
    private_a = private_dirs(state_a)
    assert {"keys", f"keys/{domain}"} <= private_a, private_a
    assert private_a <= private_dirs(state_b), (private_a, private_dirs(state_b))
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in (state_b / "keys").rglob("*") if p.is_file()
               and not p.name.startswith("."))
    assert dkimbot(cfg_b, "show", case.ref).returncode == 0
    assert "half_done" not in dkimbot(cfg_b, "show", case.ref, "--json").stdout

    # The flow finishes in B: the waiting reply goes out once, then DKIM, DMARC, done.
    smtp.fail_with = None
    clock.advance(minutes=5)
    bot = open_bot(cfg_b, clock)
    try:
        jobs.run_pass(bot)
        assert len(case_mails(smtp)) == 1
        publish_box(bind, domain, body_of(case_mails(smtp)[-1].raw), f"{case.selector}._domainkey.{domain}")
        clock.advance(minutes=30)
        jobs.run_pass(bot)
        assert bot.store.get_case(case.id).state == "awaiting_dmarc"
        [dmarc] = boxes(body_of(case_mails(smtp)[-1].raw))
        bind.update(domain, "_dmarc", "TXT", [dmarc["value"]])
        bind.update(domain, "@", "TXT", [f"v=spf1 include:_spf.{saas_zone(bind, domain)} ~all"])
        clock.advance(minutes=30)
        jobs.run_pass(bot)
        assert bot.store.get_case(case.id).state == "completed"
        jobs.run_pass(bot)
    finally:
        bot.close()
    subjects = kinds(smtp)
    assert len(subjects) == 3, subjects  # record, DKIM active, completion: each once
    assert "設定のご案内" in subjects[0] and "完了" in subjects[-1]
    ids = [m.message["Message-ID"] for m in case_mails(smtp)]
    assert len(set(ids)) == 3
    # The key went into B's signer, not A's.
    assert f"*@{domain}" in (tmp_path / "b" / "state" / "signer" / "SigningTable").read_text()
    assert not (tmp_path / "a" / "state" / "signer" / "SigningTable").exists()

    # B is not empty now: a second restore refuses, --force writes over it.
    r = dkimbot(cfg_b, "restore", str(archive))
    assert r.returncode == 1 and "is not empty" in r.stderr and "--force" in r.stderr
    assert "completed" in dkimbot(cfg_b, "status").stdout
    r = dkimbot(cfg_b, "restore", str(archive), "--force")
    assert r.returncode == 0, r.stderr
    assert "awaiting_dkim" in dkimbot(cfg_b, "status").stdout


@contextmanager
def _demo_backup(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """The demo's kept state (a completed case with an installed key) backed up to
    ``tmp_path/b.tgz``: yields (the demo's dir, its config); the dir is removed after."""
    demo = subprocess.run([sys.executable, "-m", "bot", "demo", "--keep"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, check=False)
    assert demo.returncode == 0, demo.stderr
    kept = Path(demo.stdout.strip().splitlines()[-1].removeprefix("(kept ").rstrip(")"))
    try:
        cfg = kept / "dkimbot.toml"
        assert dkimbot(cfg, "backup", str(tmp_path / "b.tgz")).returncode == 0
        yield kept, cfg
    finally:
        subprocess.run(["rm", "-rf", str(kept)], check=False)


def test_signer_key_paths_follow_the_new_keys_dir(tmp_path: Path) -> None:
    """The demo's state (a completed case with an installed key) into another directory:
    the KeyTable names the key file where the new config keeps it."""
    with _demo_backup(tmp_path) as (kept, cfg):
        other = tmp_path / "elsewhere"
        cfg2 = tmp_path / "c2.toml"
        cfg2.write_text(cfg.read_text().replace(str(kept / "state"), str(other)))
        r = dkimbot(cfg2, "restore", str(tmp_path / "b.tgz"))
        assert r.returncode == 0, r.stderr
        keytable = (other / "signer" / "KeyTable").read_text()
        path = Path(keytable.split(":")[-1].strip())
        assert path.parent == other / "signer" / "keys" and path.is_file()
        assert (path.stat().st_mode & 0o777) == 0o600
        assert str(kept) not in keytable


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root (CI runs as root)")
def test_restored_signer_keys_get_the_owner_and_modes_an_install_gives(tmp_path: Path) -> None:
    """Restored where the signer runs as another user ([signer] key_owner/key_group/
    key_mode): the key files and their directory are owned and moded as install_key
    leaves them (tests/test_signer_config.py), so the signer can read them at once."""
    import grp
    import pwd

    with _demo_backup(tmp_path) as (kept, cfg):
        other = tmp_path / "elsewhere"
        cfg2 = tmp_path / "c2.toml"
        text = cfg.read_text().replace(str(kept / "state"), str(other))
        signer = 'key_owner = "daemon"\nkey_group = "daemon"\nkey_mode = 0o640\n'
        cfg2.write_text(text.replace("[signer]\n", "[signer]\n" + signer) if "[signer]\n" in text
                        else text + "\n[signer]\n" + signer)
        # An unknown owner is refused before anything is written.
        cfg3 = tmp_path / "c3.toml"
        cfg3.write_text(cfg2.read_text().replace('key_owner = "daemon"', 'key_owner = "no-such-user-dkimbot"')
                        .replace(str(other), str(tmp_path / "third")))
        r = dkimbot(cfg3, "restore", str(tmp_path / "b.tgz"))
        assert r.returncode != 0 and "no-such-user-dkimbot" in r.stderr
        assert not (tmp_path / "third" / "dkimbot.sqlite3").exists()

        r = dkimbot(cfg2, "restore", str(tmp_path / "b.tgz"))
        assert r.returncode == 0, r.stderr
        user, group = pwd.getpwnam("daemon"), grp.getgrnam("daemon")
        keys = sorted((other / "signer" / "keys").iterdir())
        assert keys
        for path in keys:
            st = path.stat()
            assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (user.pw_uid, group.gr_gid, 0o640), path
        directory = (other / "signer" / "keys").stat()
        assert (directory.st_uid, directory.st_gid, stat.S_IMODE(directory.st_mode)) == \
            (user.pw_uid, group.gr_gid, 0o750)


def test_a_damaged_or_foreign_archive_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[state]\ndir = "{tmp_path / "state"}"\n')
    evil = tmp_path / "evil.tgz"
    with tarfile.open(evil, "w:gz") as tar:
        info = tarfile.TarInfo("../../etc/cron.d/x")
        info.size = 0
        tar.addfile(info)
    r = dkimbot(cfg, "restore", str(evil))
    assert r.returncode == 1 and "unexpected member" in r.stderr
    assert not (tmp_path / "state").exists()
    junk = tmp_path / "junk.tgz"
    junk.write_bytes(b"\x1f\x8b" + os.urandom(200))
    r = dkimbot(cfg, "restore", str(junk))
    assert r.returncode == 1 and "cannot read" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "state").exists()
    r = dkimbot(cfg, "backup", str(tmp_path / "x.tgz"))
    assert r.returncode == 1 and "nothing to back up" in r.stderr
