"""Issue 5 items the signer unit tests leave out: key files owned and moded for the signer
as ``[signer] key_owner`` / ``key_group`` / ``key_mode`` say (read from TOML), and the
bot's own mail DKIM-signed for the support domain when a key for it is installed.
Pure file-system and outbox-directory tests: no server."""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path

import dkim
import pytest

from bot.config import Config, load_config
from bot.adapters.keys import KeyStore
from bot.adapters.signer import SignerInstallError, install_key, key_file_path

SEL = "yoyakuban202611"


def _signer_config(tmp_path: Path, signer_lines: str) -> Config:
    path = tmp_path / "dkimbot.toml"
    path.write_text(f'[signer]\n{signer_lines}\n\n[state]\ndir = "{tmp_path / "state"}"\n', encoding="utf-8")
    return load_config(path)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root (CI runs as root)")
def test_installed_keys_get_the_configured_owner_group_and_mode(tmp_path: Path) -> None:
    user, group = pwd.getpwnam("daemon"), grp.getgrnam("daemon")  # present on every Debian
    cfg = _signer_config(tmp_path, 'key_owner = "daemon"\nkey_group = "daemon"\nkey_mode = 0o640')
    store = KeyStore(tmp_path / "state" / "keys", None)
    key = store.load_or_create("hotel.test", SEL, "rsa", 1024)
    install_key(cfg, key, store.private_pem("hotel.test", SEL))

    path = key_file_path(cfg, "hotel.test", SEL)
    st = path.stat()
    assert (st.st_uid, st.st_gid) == (user.pw_uid, group.gr_gid)
    assert stat.S_IMODE(st.st_mode) == 0o640
    directory = path.parent.stat()
    assert stat.S_IMODE(directory.st_mode) == 0o750  # the group may enter, nobody else
    assert (directory.st_uid, directory.st_gid) == (user.pw_uid, group.gr_gid)


def test_an_unknown_signer_group_is_a_clear_error_and_installs_nothing(tmp_path: Path) -> None:
    cfg = _signer_config(tmp_path, 'key_group = "no-such-group-dkimbot"')
    store = KeyStore(tmp_path / "state" / "keys", None)
    key = store.load_or_create("hotel.test", SEL, "rsa", 1024)
    with pytest.raises(SignerInstallError, match="no-such-group-dkimbot"):
        install_key(cfg, key, store.private_pem("hotel.test", SEL))
    assert not cfg.state_path(cfg.signer.keytable).exists()
    assert not key_file_path(cfg, "hotel.test", SEL).exists()


def _send_one_staff_mail(cfg: Config) -> bytes:
    from bot.flows.compose import enqueue_mail
    from bot.app.jobs import flush_outbox_once
    from bot.flows.runtime import Bot

    bot = Bot.open(cfg)
    with bot.store.transaction():
        enqueue_mail(bot, "staff_escalation", [], {
            "reason_title": "test", "reason": "the bot's own mail", "decide_hint": "nothing",
            "diagnoses": [],
        }, staff_only=True)
    sent, errors = flush_outbox_once(bot)
    assert (sent, errors) == (1, [])
    [eml] = (cfg.state_dir / cfg.outbound.directory).glob("*.eml")
    raw = eml.read_bytes()
    eml.unlink()
    return raw


def test_the_bots_own_mail_is_signed_for_the_support_domain_when_it_has_a_key(tmp_path: Path) -> None:
    cfg = Config(state_dir=tmp_path / "state")
    assert cfg.outbound.kind == "directory"
    domain = cfg.bot_domain

    unsigned = _send_one_staff_mail(cfg)  # no key for the support domain: sent as it is
    assert b"DKIM-Signature" not in unsigned

    store = KeyStore(tmp_path / "state" / "keys", None)
    key = store.load_or_create(domain, SEL, "rsa", 2048)
    install_key(cfg, key, store.private_pem(domain, SEL))
    signed = _send_one_staff_mail(cfg)
    assert signed.startswith(b"DKIM-Signature:")
    tags = dkim.util.parse_tag_value(dkim.rfc822_parse(signed)[0][0][1].replace(b"\r\n", b""))
    assert tags[b"d"] == domain.encode() and tags[b"s"] == SEL.encode()
    records = {(key.fqdn + ".").encode(): key.record.encode()}
    assert dkim.verify(signed, dnsfunc=lambda name, timeout=5: records.get(name))
