"""IMAP IDLE in the daemon, on a real Dovecot of the test's own.

A mail appended by IMAP APPEND reaches the daemon within seconds while its polling
interval is an hour; IDLE is re-issued on time (RFC 2177); a Dovecot restart is
survived (reconnect, then new mail is seen again); a server without IDLE leaves the
daemon to its polling.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import pytest

import servers
from configkit import server_config
from keyflow import saas_zone
from test_e2e import request_mail

from bot.app.idlewatch import IdleWatcher, announces_new_mail
from bot.config import load_config

pytestmark = pytest.mark.servers

MAILBOX = "support@489ban.net"
PASSWORD = "idle-secret"


@pytest.fixture
def own_dovecot():
    """A Dovecot for this test alone: it gets restarted."""
    server = servers.Dovecot(users={MAILBOX: PASSWORD})
    yield server
    server.close()


def _config(tmp_path: Path, dovecot: Any, bind: Any, smtp: Any, domain: str, **intake: Any) -> Path:
    os.environ["IDLE_TEST_IMAP_PASSWORD"] = PASSWORD
    return server_config(
        tmp_path, dovecot, bind, smtp, saas_zone=saas_zone(bind, domain), username=MAILBOX,
        keys={"bits": 1024},
        schedule={"poll_interval_seconds": 3600, "check_interval_seconds": 0},
        intake_extra={"password_env": "IDLE_TEST_IMAP_PASSWORD", **intake},
    )


def _wait(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class Wakes:
    def __init__(self) -> None:
        self.reasons: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, reason: str) -> None:
        with self.lock:
            self.reasons.append(reason)

    def count(self, reason: str) -> int:
        with self.lock:
            return self.reasons.count(reason)


def test_new_mail_announcements_are_told_from_other_idle_responses():
    assert announces_new_mail([(3, b"EXISTS")])
    assert announces_new_mail([(b"OK", b"Still here"), (1, b"RECENT")])
    assert not announces_new_mail([(2, b"EXPUNGE"), (1, b"FETCH", (b"FLAGS", (b"\\Seen",)))])
    assert not announces_new_mail([])


def test_idle_sees_new_mail_renews_and_survives_a_server_restart(tmp_path, own_dovecot, bind, smtp):
    domain = f"idle-{uuid.uuid4().hex[:6]}.test"
    cfg = load_config(_config(tmp_path, own_dovecot, bind, smtp, domain, idle_renew_seconds=1.0))
    wakes, stop = Wakes(), threading.Event()
    watcher = IdleWatcher(cfg.intake, wakes, stop)
    watcher.start()
    try:
        _wait(watcher.idling.is_set, 10, "the first IDLE")
        assert wakes.count("IMAP connected") == 1  # mail that came while away is read
        # A new message: announced within seconds (the polling interval is an hour).
        t0 = time.monotonic()
        own_dovecot.append(MAILBOX, request_mail(domain, make_msgid(domain=domain)))
        _wait(lambda: wakes.count("new mail") >= 1, 10, "the new-mail announcement")
        assert time.monotonic() - t0 < 5
        # IDLE is re-issued every idle_renew_seconds (here 1 s) on the same connection.
        _wait(lambda: watcher.renewals >= 3, 10, "three IDLE renewals")
        assert watcher.sessions == 1
        # The server goes away and comes back on the same port: reconnect, and a mail
        # appended afterwards is announced again.
        own_dovecot.stop()
        _wait(lambda: not watcher.idling.is_set(), 10, "the watcher to notice the drop")
        own_dovecot.start()
        _wait(lambda: watcher.sessions == 2 and watcher.idling.is_set(), 30, "the reconnect")
        assert wakes.count("IMAP connected") == 2
        before = wakes.count("new mail")
        own_dovecot.append(MAILBOX, request_mail(domain, make_msgid(domain=domain)))
        _wait(lambda: wakes.count("new mail") > before, 10, "new mail after the restart")
    finally:
        stop.set()
        watcher.join(15)
    assert not watcher._thread or not watcher._thread.is_alive()


class NoIdleDovecot(servers.Dovecot):
    """A Dovecot that does not offer IDLE (as some hosted IMAP servers do not)."""

    def _write_config(self) -> Path:
        conf = super()._write_config()
        with open(conf, "a") as fh:
            fh.write("imap_capability = IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE LITERAL+\n")
        return conf


def test_a_server_without_idle_is_polled(tmp_path, bind, smtp):
    server = NoIdleDovecot(users={MAILBOX: PASSWORD})
    try:
        domain = f"noidle-{uuid.uuid4().hex[:6]}.test"
        cfg = load_config(_config(tmp_path, server, bind, smtp, domain))
        wakes, stop = Wakes(), threading.Event()
        watcher = IdleWatcher(cfg.intake, wakes, stop)
        watcher.start()
        watcher.join(15)
        assert watcher.supported is False and watcher.sessions == 0
        assert not watcher._thread or not watcher._thread.is_alive()
    finally:
        server.close()


def test_the_daemon_answers_a_request_within_seconds_not_at_its_poll_interval(
        tmp_path, own_dovecot, bind, smtp):
    """The daemon as cron would not run it: a process of its own, polling hourly."""
    domain = f"idled-{uuid.uuid4().hex[:6]}.test"
    bind.add_zone(domain)
    cfg = _config(tmp_path, own_dovecot, bind, smtp, domain)
    smtp.clear()
    log = tmp_path / "daemon.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "bot", "--config", str(cfg), "daemon"],
                                stdout=fh, stderr=subprocess.STDOUT)
    try:
        _wait(lambda: "new mail starts a pass" in log.read_text(), 30, "the daemon's IDLE")
        time.sleep(1.0)  # the first (start-up) pass is over: only IDLE can explain an answer
        t0 = time.monotonic()
        own_dovecot.append(MAILBOX, request_mail(domain, make_msgid(domain=domain)))
        _wait(lambda: any(f"yamada@{domain}" in m.rcpt_tos for m in smtp.messages), 20,
              "the reply at the SMTP sink")
        latency = time.monotonic() - t0
        assert latency < 10, latency  # the poll interval is 3600 s
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0, log.read_text()
    text = log.read_text()
    assert "Traceback" not in text and "daemon stopped" in text
