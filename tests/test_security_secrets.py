"""Issue 11, secrets: an empty passphrase variable, a wrong passphrase, and what the
signer's reload command may see. The bot runs as the real ``dkimbot`` command.

Before the fix `DKIMBOT_KEY_PASSPHRASE=""` ran and stored keys unencrypted; a wrong
passphrase let the pass go on (cases escalated, new keys written under the wrong
passphrase); `reload_command` inherited the passphrase.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from configkit import write_toml
from test_security_intake import raw_mail, request_body

from bot.adapters.keys import KeyStore


def dkimbot(cfg: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("DKIMBOT_")} | env
    return subprocess.run([sys.executable, "-m", "bot", "--config", str(cfg), *args],
                          capture_output=True, text=True, env=full, timeout=120)


def config(tmp_path: Path, **signer: str) -> Path:
    return write_toml(tmp_path / "c.toml", {
        "dns": {"nameservers": ["127.0.0.1"], "port": 9, "timeout": 0.2},
        "keys": {"bits": 1024, "passphrase_env": "DKIMBOT_KEY_PASSPHRASE"},
        "signer": dict(signer),
        "state": {"dir": str(tmp_path / "state")},
    })


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_an_empty_passphrase_variable_is_a_config_error(tmp_path):
    cfg = config(tmp_path)
    r = dkimbot(cfg, "run", "--once", env={"DKIMBOT_KEY_PASSPHRASE": ""})
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "DKIMBOT_KEY_PASSPHRASE" in r.stderr and "empty" in r.stderr
    assert not (tmp_path / "state" / "keys").exists()


def test_a_wrong_passphrase_stops_before_anything_is_written(tmp_path):
    cfg = config(tmp_path)
    state = tmp_path / "state"
    # A key stored under the right passphrase, and a request waiting in the Maildir.
    KeyStore(state / "keys", "right horse battery").load_or_create("stored.test", "sel1", "rsa", 1024)
    r = dkimbot(cfg, "status", env={"DKIMBOT_KEY_PASSPHRASE": "right horse battery"})
    assert r.returncode == 0, r.stderr
    inbox = state / "inbox" / "new"
    inbox.mkdir(parents=True, exist_ok=True)
    (inbox / "1.request").write_bytes(raw_mail("yamada@wrongpass.test", "DKIM、DMARC設定希望",
                                               request_body("wrongpass.test")))
    before = snapshot(state)

    r = dkimbot(cfg, "run", "--once", env={"DKIMBOT_KEY_PASSPHRASE": "wrong"})
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "passphrase" in r.stderr, r.stderr
    assert snapshot(state) == before  # no key, no case, no mail, the request still waiting

    r = dkimbot(cfg, "run", "--once", env={"DKIMBOT_KEY_PASSPHRASE": "right horse battery"})
    assert r.returncode in (0, 1), r.stderr  # 1: the DNS of this test answers nothing
    assert (state / "keys" / "wrongpass.test").is_dir()


def test_the_reload_command_never_sees_the_secrets(tmp_path):
    seen = tmp_path / "reload-env.txt"
    cfg = config(tmp_path, reload_command=f"env > {seen}")
    from bot.adapters.signer import run_reload
    from bot.config import load_config

    old = dict(os.environ)
    try:
        os.environ["DKIMBOT_KEY_PASSPHRASE"] = "s3cret-passphrase"
        os.environ["DKIMBOT_OTHER_TOKEN"] = "other-s3cret"
        os.environ["UNRELATED_VARIABLE"] = "kept"
        run_reload(load_config(cfg))
    finally:
        os.environ.clear()
        os.environ.update(old)
    env = seen.read_text()
    assert "s3cret" not in env and "DKIMBOT_" not in env
    assert "UNRELATED_VARIABLE=kept" in env
