"""Operating dkimbot: log lines an operator can grep, and a daemon that stops cleanly
(SIGTERM/SIGINT in the middle of a pass finish that pass first). Real processes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from bot.config import load_config
from configkit import dns, imap, smtp_out, write_toml
from bot.adapters.intake import MaildirMailbox
from test_e2e import request_mail

pytestmark = pytest.mark.servers

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) \S")


def setup(tmp_path: Path, bind, *, requests: int, bits: int = 1024) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = write_toml(tmp_path / "c.toml", {
        "dns": dns(bind, timeout=1.0),
        "keys": {"bits": bits},
        "schedule": {"check_interval_seconds": 3600, "poll_interval_seconds": 5},
        "state": {"dir": str(tmp_path / "state")},
    })
    inbox = MaildirMailbox(load_config(cfg).state_path("inbox"))
    for _ in range(requests):
        domain = f"ops-{uuid.uuid4().hex[:8]}.test"
        inbox.deliver(request_mail(domain, f"<{uuid.uuid4().hex}@{domain}>"))
    return cfg


def dkimbot(cfg: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bot", "--config", str(cfg), *args],
                          capture_output=True, text=True, timeout=120)


def test_each_log_line_is_one_line_and_names_the_case(tmp_path, bind):
    cfg = setup(tmp_path, bind, requests=2)
    r = dkimbot(cfg, "run", "--once")
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert lines and all(LOG_LINE.match(line) for line in lines), lines
    queued = [line for line in lines if "queued request_reply" in line]
    assert len(queued) == 2 and all(re.search(r" DKIM-\d{4}: queued", q) for q in queued)
    assert not any(" DEBUG " in line for line in lines)
    # --verbose adds the debug lines, still one line each.
    cfg2 = setup(tmp_path / "v", bind, requests=1)
    r = dkimbot(cfg2, "--verbose", "run", "--once")
    assert r.returncode == 0, r.stderr
    assert any(" DEBUG " in line for line in r.stderr.splitlines())


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_the_daemon_finishes_the_running_pass_then_stops(tmp_path, bind, signum):
    # 4096-bit keys for a dozen domains: a pass long enough to be interrupted.
    cfg = setup(tmp_path, bind, requests=12, bits=4096)
    log = tmp_path / "daemon.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "bot", "--config", str(cfg), "daemon"],
                                stdout=fh, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while "queued request_reply" not in log.read_text():  # the first pass is under way
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        os.kill(proc.pid, signum)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert "finishing the current pass" in text and "daemon stopped" in text
    assert "Traceback" not in text
    # The pass that was running when the signal came finished: every request answered.
    outbox = tmp_path / "state" / "outbox"
    assert len(list(outbox.glob("*.eml"))) == 12
    # ...and no second pass started after the signal.
    assert text.count("queued request_reply") == 12


def test_verbose_logs_keep_mail_addresses_out(tmp_path, bind, dovecot, smtp):
    from conftest import SUPPORT_ADDRESS, SUPPORT_PASSWORD

    domain = f"quiet-{uuid.uuid4().hex[:6]}.test"
    dovecot.reset(SUPPORT_ADDRESS)
    smtp.clear()
    dovecot.append(SUPPORT_ADDRESS, request_mail(domain, f"<{uuid.uuid4().hex}@{domain}>"))
    cfg = write_toml(tmp_path / "c.toml", {
        "intake": imap(dovecot, password_env=None, timeout=None, password=SUPPORT_PASSWORD),
        "outbound": smtp_out(smtp, timeout=None),
        "dns": dns(bind, timeout=1.0),
        "keys": {"bits": 1024},
        "schedule": {"check_interval_seconds": 3600},
        "state": {"dir": str(tmp_path / "state")},
    })
    r = dkimbot(cfg, "--verbose", "run", "--once")
    assert r.returncode == 0, r.stderr
    assert len(smtp.messages) == 1
    assert " DEBUG " in r.stderr
    assert f"yamada@{domain}" not in r.stderr and f"info@{domain}" not in r.stderr
    assert "山田" not in r.stderr
