"""Config loading: the SPEC §7 keys, defaults, and one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bot.config import ConfigError, load_config


def test_it_defaults_to_maildir_and_outbox_directory(tmp_path):
    cfg = load_config(None, state_dir=tmp_path)
    assert cfg.intake.kind == "maildir" and cfg.outbound.kind == "directory"
    assert cfg.keys.bits == 2048 and cfg.keys.selector == "yoyakuban{YYYYMM}"
    assert cfg.dns.nameservers == []


def test_it_reads_the_spec_example_and_secrets_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DKIMBOT_IMAP_PASSWORD", "s3cret")
    monkeypatch.setenv("DKIMBOT_KEY_PASSPHRASE", "pass phrase")
    p = tmp_path / "c.toml"
    p.write_text(
        """
[service]
support_address = "support@489ban.net"
staff_cc = ["staff@489ban.net"]
sending_ips = ["203.0.113.10"]
spf_include = "_spf.489ban.net"
dmarc_rua = "mailto:dmarc@489ban.net"
[intake]
kind = "imap"
host = "127.0.0.1"
port = 993
tls = "ssl"
username = "support@489ban.net"
password_env = "DKIMBOT_IMAP_PASSWORD"
folder = "INBOX"
[outbound]
kind = "smtp"
port = 587
tls = "starttls"
[dns]
nameservers = []
port = 53
timeout = 3
[keys]
algorithm = "rsa"
bits = 2048
ed25519 = false
selector = "yoyakuban{YYYYMM}"
passphrase_env = "DKIMBOT_KEY_PASSPHRASE"
[signer]
keytable = "state/signer/KeyTable"
[schedule]
check_interval_seconds = 300
reminder_after_hours = 72
max_reminders = 2
[state]
dir = "state"
""",
        encoding="utf-8",
    )
    cfg = load_config(p)
    assert cfg.intake.password == "s3cret"
    assert cfg.keys.passphrase == "pass phrase"
    assert cfg.dns.timeout == 3.0
    assert str(cfg.state_path(cfg.signer.keytable)) == "state/signer/KeyTable"
    assert "s3cret" not in repr(cfg.intake.__dict__.keys())


@pytest.mark.parametrize(
    "text,needle",
    [
        ("[intake]\nkind = 'pop3'\n", "kind must be"),
        ("[keys]\nbits = 1536\n", "bits must be"),
        ("[dns]\nport = 'x'\n", "port must be int"),
        ("[nonsense]\na = 1\n", "unknown config key"),
        ("[service\n", "invalid TOML"),
    ],
)
def test_it_rejects_a_bad_config_with_one_clear_line(tmp_path, text, needle):
    p = tmp_path / "c.toml"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_the_cli_prints_one_line_and_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "bot", "--config", str(tmp_path / "missing.toml"), "status"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip() == f"dkimbot: config file not found: {tmp_path / 'missing.toml'}"


@pytest.mark.parametrize(
    "section,env_key",
    [("keys", "passphrase_env"), ("intake", "password_env"), ("outbound", "password_env"),
     ("proof", "imap_password_env"), ("dns", "tsig_secret_env")],
)
def test_a_secret_env_naming_an_unset_variable_is_an_error(tmp_path, monkeypatch, section, env_key):
    # Without the variable a cron job would store keys unencrypted or log in without a password.
    monkeypatch.delenv("DKIMBOT_UNSET_SECRET", raising=False)
    p = tmp_path / "c.toml"
    p.write_text(f'[{section}]\n{env_key} = "DKIMBOT_UNSET_SECRET"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert "DKIMBOT_UNSET_SECRET" in str(exc.value) and "not set" in str(exc.value)
    assert "\n" not in str(exc.value)
    monkeypatch.setenv("DKIMBOT_UNSET_SECRET", "from-env")
    cfg = load_config(p)
    field = {"keys": "passphrase", "proof": "imap_password", "dns": "tsig_secret"}.get(section, "password")
    assert getattr(getattr(cfg, section), field) == "from-env"


def test_literal_secrets_still_work_and_repr_shows_no_secret(tmp_path, monkeypatch):
    monkeypatch.delenv("DKIMBOT_UNSET_SECRET", raising=False)
    p = tmp_path / "c.toml"
    p.write_text('[intake]\npassword = "imap-pw-literal"\n[outbound]\npassword = "smtp-pw-literal"\n'
                 '[keys]\npassphrase = "key-pp-literal"\n[dns]\ntsig_secret = "tsig-literal"\n'
                 '[proof]\nimap_password_env = "DKIMBOT_UNSET_SECRET"\nimap_password = "proof-pw-literal"\n',
                 encoding="utf-8")
    cfg = load_config(p)
    assert (cfg.intake.password, cfg.outbound.password, cfg.keys.passphrase, cfg.dns.tsig_secret,
            cfg.proof.imap_password) == ("imap-pw-literal", "smtp-pw-literal", "key-pp-literal",
                                         "tsig-literal", "proof-pw-literal")
    text = repr(cfg)
    for secret in ("imap-pw-literal", "smtp-pw-literal", "key-pp-literal", "tsig-literal", "proof-pw-literal"):
        assert secret not in text


def test_the_cli_refuses_an_unset_passphrase_variable_with_exit_2(tmp_path):
    import os

    p = tmp_path / "c.toml"
    p.write_text('[keys]\npassphrase_env = "DKIMBOT_UNSET_SECRET"\n', encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "DKIMBOT_UNSET_SECRET"}
    r = subprocess.run([sys.executable, "-m", "bot", "--config", str(p), "--state-dir", str(tmp_path / "s"),
                        "status"], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == ("dkimbot: [keys] passphrase_env names the environment variable "
                                "DKIMBOT_UNSET_SECRET, which is not set")
