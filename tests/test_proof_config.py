"""[proof] config (SPEC §8 end-to-end proof): off by default, validated when on. Pure."""

from __future__ import annotations

import pytest

from bot.config import ConfigError, load_config


def test_the_proof_is_off_by_default():
    cfg = load_config()
    assert cfg.proof.enabled is False and cfg.proof.address == ""


def test_an_enabled_proof_needs_an_address_and_a_mailbox(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[proof]\nenabled = true\nimap_username = \"p@x.test\"\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"\[proof\] address"):
        load_config(path)
    path.write_text("[proof]\nenabled = true\naddress = \"p@x.test\"\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"\[proof\] imap_username"):
        load_config(path)
    path.write_text("[proof]\nwait_minutes = 0\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"wait_minutes"):
        load_config(path)
    path.write_text("[proof]\nimap_tls = \"tls\"\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"imap_tls"):
        load_config(path)


def test_the_proof_mailbox_password_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_PROOF_PW", "s3cret")
    path = tmp_path / "c.toml"
    path.write_text("[proof]\nenabled = true\naddress = \"p@x.test\"\nimap_username = \"p@x.test\"\n"
                    "imap_password_env = \"MY_PROOF_PW\"\nwait_minutes = 5\n", encoding="utf-8")
    cfg = load_config(path)
    assert (cfg.proof.enabled, cfg.proof.imap_password, cfg.proof.wait_minutes) == (True, "s3cret", 5.0)
