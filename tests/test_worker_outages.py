"""Overlapping passes and server outages, against the real Dovecot, BIND and SMTP sink.

* Two passes on the same requests (two ``run --once`` at once; the daemon and cron):
  each request is answered once.
* SMTP, IMAP and DNS each stopped before or in the middle of a pass, then started again:
  ``run --once`` ends non-zero with one line naming the server (no traceback, no hang),
  nothing is lost or doubled, and what was held is delivered once afterwards.
"""

from __future__ import annotations

import collections
import fcntl
import os
import signal
import time
from datetime import timedelta
from pathlib import Path

import pytest
from workerkit import (
    IMAP_PASSWORD,
    cases,
    deliveries,
    dkimbot,
    publish_dkim,
    received_for,
    request_mail,
    setup_domain,
    setup_saas_zone,
    start_dkimbot,
    write_config,
)

from bot import faults
from bot.config import load_config
from bot.app.jobs import run_pass
from bot.flows.runtime import Bot, utcnow

pytestmark = pytest.mark.servers


def _setup(tmp_path: Path, dovecot, bind, smtp, name: str, n: int = 2, **schedule) -> tuple[Path, str, list[str]]:
    smtp.clear()  # the sink is session-wide: "no Message-ID twice" is about this test's mail
    user = f"{name}@489ban.net"
    dovecot.add_user(user, IMAP_PASSWORD)
    dovecot.reset(user)
    domains = [f"{name}-{chr(97 + i)}.test" for i in range(n)]
    for d in domains:
        setup_domain(bind, d)
    setup_saas_zone(bind, domains)
    return write_config(tmp_path, dovecot, bind, smtp, imap_user=user, **schedule), user, domains


def _request(dovecot, user: str, domain: str) -> None:
    dovecot.append(user, request_mail(domain, f"<req.{time.time_ns()}@{domain}>"))


def _answered_once(cfg: Path, smtp, domains: list[str]) -> None:
    found = cases(cfg)
    assert sorted(c["domain"] for c in found) == sorted(domains), "one case per request"
    for d in domains:
        got = received_for(smtp, d)
        assert len(got) == 1, f"{d} got {len(got)} replies"
    ids = collections.Counter(m.message["Message-ID"] for m in smtp.messages)
    assert max(ids.values()) == 1


def _error_lines(stderr: bytes) -> list[str]:
    text = stderr.decode()
    assert "Traceback" not in text, text
    return [line for line in text.splitlines() if line.startswith("dkimbot: ")]


def _open_bot(cfg: Path, monkeypatch, clock=utcnow) -> Bot:
    monkeypatch.setenv("TEST_IMAP_PASSWORD", IMAP_PASSWORD)
    return Bot.open(load_config(cfg), clock=clock)


# ----------------------------------------------------------------------------- overlap


def test_two_passes_started_together_answer_each_request_once(tmp_path, dovecot, bind, smtp):
    cfg, user, domains = _setup(tmp_path, dovecot, bind, smtp, "overlap", n=3)
    for d in domains:
        _request(dovecot, user, d)
    procs = [start_dkimbot(cfg, "run", "--once") for _ in range(2)]
    results = [(p.wait(60), p.stderr.read()) for p in procs]
    for rc, err in results:
        assert rc in (0, 75), err.decode()
        if rc == 75:
            assert _error_lines(err) == [
                f"dkimbot: another dkimbot pass is running on {tmp_path / 'state'}; not starting a second one"]
    r = dkimbot(cfg, "run", "--once")  # whatever a refused pass left is done now
    assert r.returncode == 0, r.stderr.decode()
    _answered_once(cfg, smtp, domains)


def test_a_running_pass_makes_run_once_exit_75_and_wait_waits(tmp_path, dovecot, bind, smtp):
    cfg, user, domains = _setup(tmp_path, dovecot, bind, smtp, "locked", n=1)
    _request(dovecot, user, domains[0])
    state = tmp_path / "state"
    state.mkdir(parents=True, exist_ok=True)
    fd = os.open(state / "dkimbot.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)  # what a running pass holds
    try:
        t0 = time.monotonic()
        r = dkimbot(cfg, "run", "--once")
        assert r.returncode == 75 and time.monotonic() - t0 < 10
        assert len(_error_lines(r.stderr)) == 1
        waiting = start_dkimbot(cfg, "run", "--once", "--wait")
        time.sleep(1.0)
        assert waiting.poll() is None, "--wait must wait for the running pass"
        assert not received_for(smtp, domains[0])
    finally:
        os.close(fd)
    assert waiting.wait(60) == 0, waiting.stderr.read().decode()
    _answered_once(cfg, smtp, domains)


def test_the_daemon_and_cron_together_answer_each_request_once(tmp_path, dovecot, bind, smtp):
    cfg, user, domains = _setup(tmp_path, dovecot, bind, smtp, "daemoncron", n=3,
                                poll_interval_seconds=5)
    daemon = start_dkimbot(cfg, "daemon")
    try:
        for d in domains:
            _request(dovecot, user, d)
            rc = dkimbot(cfg, "run", "--once").returncode  # cron, racing the daemon's ticks
            assert rc in (0, 75)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(received_for(smtp, d) for d in domains):
            time.sleep(0.2)
    finally:
        daemon.send_signal(signal.SIGTERM)
        rc = daemon.wait(60)
    log = daemon.stderr.read().decode()
    assert rc == 0, log
    assert "daemon stopped" in log and "Traceback" not in log
    _answered_once(cfg, smtp, domains)


# ----------------------------------------------------------------------------- SMTP


def test_smtp_down_holds_the_mail_and_sends_it_once_when_back(tmp_path, dovecot, bind, smtp):
    cfg, user, domains = _setup(tmp_path, dovecot, bind, smtp, "smtpdown", n=1)
    _request(dovecot, user, domains[0])
    smtp.stop()
    try:
        t0 = time.monotonic()
        r = dkimbot(cfg, "run", "--once")
        assert time.monotonic() - t0 < 30
        assert r.returncode == 1
        [line] = _error_lines(r.stderr)
        assert f"SMTP {smtp.host}:{smtp.port}" in line
        [case] = cases(cfg)
        assert case["state"] == "awaiting_dkim"  # the decision stands; only the mail waits
        r = dkimbot(cfg, "run", "--once")  # still down: still held, still one line
        assert r.returncode == 1 and len(_error_lines(r.stderr)) == 1
    finally:
        smtp.start()
    r = dkimbot(cfg, "run", "--once")  # no backoff: the server, not the mail, had failed
    assert r.returncode == 0, r.stderr.decode()
    _answered_once(cfg, smtp, domains)
    assert deliveries(cfg, smtp, case["case"]).statuses == ["sent"]


def test_smtp_stopped_in_the_middle_of_a_pass_loses_and_doubles_nothing(tmp_path, dovecot, bind, smtp, monkeypatch):
    cfg, user, domains = _setup(tmp_path, dovecot, bind, smtp, "smtpmid", n=3)
    for d in domains:
        _request(dovecot, user, d)
    bot = _open_bot(cfg, monkeypatch)
    try:
        with faults.on("outbox.sent", smtp.stop, n=1):  # the first mail leaves, then SMTP dies
            result = run_pass(bot)
        assert result.mails_sent == 1
        assert len(result.errors) == 1 and f"SMTP {smtp.host}:{smtp.port}" in result.errors[0]
        assert sum(bool(received_for(smtp, d)) for d in domains) == 1
        smtp.start()
        result = run_pass(bot)
        assert result.errors == [] and result.mails_sent == 2
    finally:
        smtp.start()
        bot.close()
    _answered_once(cfg, smtp, domains)


# ----------------------------------------------------------------------------- IMAP


def test_imap_down_is_one_line_and_the_request_is_answered_once_when_back(tmp_path, dovecot, bind, smtp):
    cfg, user, domains = _setup(tmp_path, dovecot, bind, smtp, "imapdown", n=1)
    _request(dovecot, user, domains[0])
    dovecot.stop()
    try:
        t0 = time.monotonic()
        r = dkimbot(cfg, "run", "--once")
        assert time.monotonic() - t0 < 30
        assert r.returncode == 1
        [line] = _error_lines(r.stderr)
        assert f"IMAP {dovecot.host}:{dovecot.port}" in line
        assert cases(cfg) == [] and not received_for(smtp, domains[0])
    finally:
        dovecot.start()
    r = dkimbot(cfg, "run", "--once")
    assert r.returncode == 0, r.stderr.decode()
    _answered_once(cfg, smtp, domains)


def test_imap_stopped_in_the_middle_of_a_pass_loses_and_doubles_nothing(tmp_path, dovecot, bind, smtp, monkeypatch):
    cfg, user, domains = _setup(tmp_path, dovecot, bind, smtp, "imapmid", n=3)
    for d in domains:
        _request(dovecot, user, d)
    bot = _open_bot(cfg, monkeypatch)
    try:
        with faults.on("message.committed", dovecot.stop, n=1):  # after the first request
            result = run_pass(bot)
        assert len(bot.store.list_cases()) == 1  # the first request was decided
        assert len(result.errors) == 1 and f"IMAP {dovecot.host}:{dovecot.port}" in result.errors[0]
        assert result.mails_sent == 1  # the decided reply still left in the same pass
        dovecot.start()
        result = run_pass(bot)
        assert result.errors == [] and result.messages == 2
    finally:
        dovecot.start()
        bot.close()
    _answered_once(cfg, smtp, domains)


# ----------------------------------------------------------------------------- DNS


def test_dns_down_is_never_told_to_the_facility_and_the_case_moves_on_when_back(
        tmp_path, dovecot, bind, smtp, monkeypatch):
    cfg, user, domains = _setup(tmp_path, dovecot, bind, smtp, "dnsdown", n=2)
    a, b = domains
    _request(dovecot, user, a)
    r = dkimbot(cfg, "run", "--once")
    assert r.returncode == 0, r.stderr.decode()
    publish_dkim(bind, smtp, a)
    _request(dovecot, user, b)
    bind.stop()
    try:
        # Whole pass with DNS down: b's request is still answered; a is not "not published".
        t0 = time.monotonic()
        r = dkimbot(cfg, "run", "--once")
        assert time.monotonic() - t0 < 60
        assert r.returncode == 1
        [line] = _error_lines(r.stderr)
        assert f"DNS resolver {bind.host}:{bind.port}" in line
        assert len(received_for(smtp, a)) == 1 and len(received_for(smtp, b)) == 1
        states = {c["domain"]: c["state"] for c in cases(cfg)}
        assert states == {a: "awaiting_dkim", b: "awaiting_dkim"}
    finally:
        bind.start()
    # DNS back, later (the DNS-error backoff has passed): a moves on, once.
    bot = _open_bot(cfg, monkeypatch, clock=lambda: utcnow() + timedelta(hours=1))
    try:
        result = run_pass(bot)
        assert result.errors == []
    finally:
        bot.close()
    states = {c["domain"]: c["state"] for c in cases(cfg)}
    assert states[a] == "awaiting_dmarc"
    [case_a] = [c for c in cases(cfg) if c["domain"] == a]
    got = deliveries(cfg, smtp, case_a["case"])
    assert got.kinds == ["request_reply", "dkim_active"] and set(got.copies.values()) == {1}
    events = dkimbot(cfg, "show", case_a["case"], "--json")
    assert b'"dns_error"' in events.stdout  # the outage is in the case's log, not in a mail


def test_dns_stopped_in_the_middle_of_a_pass_postpones_checks_only(tmp_path, dovecot, bind, smtp, monkeypatch):
    cfg, user, domains = _setup(tmp_path, dovecot, bind, smtp, "dnsmid", n=2)
    a, b = domains
    _request(dovecot, user, a)
    bot = _open_bot(cfg, monkeypatch)
    try:
        assert run_pass(bot).errors == []
        publish_dkim(bind, smtp, a)
        _request(dovecot, user, b)
        with faults.on("message.committed", bind.stop, n=1):  # b decided, then DNS dies
            result = run_pass(bot)
        assert len(result.errors) == 1 and "DNS resolver" in result.errors[0]
        assert [c.state for c in bot.store.list_cases()] == ["awaiting_dkim", "awaiting_dkim"]
        bind.start()
        bot.clock = lambda: utcnow() + timedelta(hours=1)
        assert run_pass(bot).errors == []
        assert bot.store.list_cases()[0].state == "awaiting_dmarc"
    finally:
        bind.start()
        bot.close()
    assert [len(received_for(smtp, d)) for d in domains] == [2, 1]
