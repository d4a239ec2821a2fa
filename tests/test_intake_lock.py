"""SQLite's write lock is never held across DNS: a slow name server must not lock out
``dkimbot status`` (nor any other writer) while a pass handles a request.

Real Dovecot and a DNS proxy in front of the test BIND that never answers ("drop"), so
every lookup of the request (selector choice, the look before the first reply) runs
into the [dns] timeout. While the pass is waiting on DNS, another process's
``dkimbot status --json`` and another connection's ``BEGIN IMMEDIATE`` must get through
at once. Before bot/flows/prepare.py both waited for the whole DNS timeout chain (seconds;
with many facilities past SQLite's 30 s busy timeout: "database is locked").
"""

from __future__ import annotations

import json
import sqlite3
import stat
import threading
import time
import uuid

import pytest
from configkit import server_config
from servers import DelayingDnsProxy
from workerkit import IMAP_PASSWORD, SAAS_ZONE, dkimbot, request_mail, setup_domain, start_dkimbot

from bot.adapters.store import Store

pytestmark = pytest.mark.servers


def _write_lock_wait(db_path: str) -> float:
    """Seconds another connection waits for SQLite's write lock (released at once)."""
    db = sqlite3.connect(db_path, timeout=30, isolation_level=None)
    try:
        start = time.monotonic()
        db.execute("BEGIN IMMEDIATE")
        waited = time.monotonic() - start
        db.execute("ROLLBACK")
        return waited
    finally:
        db.close()


def test_a_request_waiting_on_dns_does_not_lock_the_store(tmp_path, dovecot, bind, smtp):
    tag = uuid.uuid4().hex[:6]
    user = f"lock-{tag}@489ban.net"
    dovecot.add_user(user, IMAP_PASSWORD)
    dovecot.reset(user)
    domain = f"lock-{tag}.test"
    setup_domain(bind, domain)
    with DelayingDnsProxy(bind.host, bind.port, mode="drop") as proxy:
        cfg = server_config(tmp_path, dovecot, bind, smtp, saas_zone=SAAS_ZONE, username=user,
                            io_timeout=5, dns_timeout=1.0, dns_port=proxy.port, keys={"bits": 1024},
                            schedule={"check_interval_seconds": 3600})
        # A first pass creates the database (nothing in the mailbox yet).
        r = dkimbot(cfg, "run", "--once")
        assert r.returncode == 0, r.stderr.decode()
        db_path = str(tmp_path / "state" / "dkimbot.sqlite3")
        dovecot.append(user, request_mail(domain, f"<req.{tag}@{domain}>"))
        proxy.reset_counters()

        started = time.monotonic()
        run = start_dkimbot(cfg, "run", "--once")
        try:
            while proxy.queries == 0:  # the pass has read the mail and is asking DNS
                assert run.poll() is None, run.stderr.read().decode() if run.stderr else ""
                assert time.monotonic() - started < 30, "the pass never asked DNS"
                time.sleep(0.02)
            time.sleep(0.3)  # well inside the first 1 s timeout

            lock_waits = [_write_lock_wait(db_path)]
            t0 = time.monotonic()
            status = dkimbot(cfg, "status", "--json")
            status_took = time.monotonic() - t0
            lock_waits.append(_write_lock_wait(db_path))
            still_running = run.poll() is None
        finally:
            out, err = run.communicate(timeout=120)
        pass_took = time.monotonic() - started
        assert run.returncode == 0, err.decode()

    assert max(lock_waits) < 0.5, f"the write lock was held across DNS: waited {lock_waits}"
    assert status_took < 1.5, f"dkimbot status waited {status_took:.1f} s for the pass"
    # The pass was still waiting on DNS while both got through.
    assert still_running and pass_took > 2.5, pass_took
    assert status.returncode == 0, status.stderr.decode()
    assert json.loads(status.stdout) == []  # it saw the store as it was: nothing decided yet
    # ...and the request was still decided as before (DNS down: the configured selector).
    [case] = json.loads(dkimbot(cfg, "status", "--json").stdout)
    assert (case["domain"], case["state"]) == (domain, "awaiting_dkim")
    assert case["selectors"] and len(smtp_for(smtp, domain)) == 1


def smtp_for(smtp: object, domain: str) -> list[object]:
    return [m for m in list(smtp.messages) if any(r.endswith("@" + domain) for r in m.rcpt_tos)]


def test_opening_a_current_store_neither_waits_for_a_writer_nor_writes(tmp_path):
    path = tmp_path / "state" / "dkimbot.sqlite3"
    Store(path).close()
    path.chmod(0o640)  # an operator's choice; reading must not undo it
    writer = sqlite3.connect(str(path), timeout=30, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # a pass deciding something
    opened: list[float] = []

    def open_and_read() -> None:
        t0 = time.monotonic()
        store = Store(path)
        store.list_cases()
        opened.append(time.monotonic() - t0)
        store.close()

    reader = threading.Thread(target=open_and_read, daemon=True)
    try:
        reader.start()
        reader.join(3)
        assert opened and opened[0] < 1.0, "Store() queued behind a writer for a current schema"
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        reader.join(35)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


# --------------------------------------------------------------------------- races between
# the prepare phase (no transaction) and the decision (one transaction)


def _two_bots(tmp_path, bind):
    from bot.config import load_config
    from bot.app.jobs import Bot
    from configkit import dns, service, write_toml

    cfg_file = write_toml(tmp_path / "c.toml", {
        "service": service(),
        "dns": dns(bind, timeout=1.0),
        "keys": {"bits": 1024},
        "schedule": {"check_interval_seconds": 3600},
        "state": {"dir": str(tmp_path / "state")},
    })
    cfg = load_config(cfg_file)
    return Bot.open(cfg), Bot.open(cfg)  # two connections, as two processes would have


def test_a_message_decided_by_another_process_meanwhile_is_a_duplicate(tmp_path, bind, monkeypatch):
    import bot.flows.prepare as prepare_mod
    from bot.app.jobs import process_message

    domain = f"race1-{uuid.uuid4().hex[:6]}.test"
    setup_domain(bind, domain)
    ours, other = _two_bots(tmp_path, bind)
    raw = request_mail(domain, f"<race1@{domain}>")
    real = prepare_mod.prepare_message

    def prepare_then_lose_the_race(bot, parsed):
        prepared = real(bot, parsed)
        monkeypatch.setattr(prepare_mod, "prepare_message", real)
        assert process_message(other, "other-copy", raw).startswith("request")
        return prepared

    monkeypatch.setattr(prepare_mod, "prepare_message", prepare_then_lose_the_race)
    assert process_message(ours, "our-copy", raw) == "duplicate"  # the handled check still wins
    [case] = ours.store.list_cases()
    assert [k["selector"] for k in ours.store.domain_keys(domain)] == case.selectors
    assert len(ours.store.db.execute("SELECT * FROM outbox").fetchall()) == 1


def test_two_requests_for_one_domain_prepared_together_share_one_key(tmp_path, bind, monkeypatch):
    import bot.flows.prepare as prepare_mod
    from bot.app.jobs import process_message

    domain = f"race2-{uuid.uuid4().hex[:6]}.test"
    setup_domain(bind, domain)
    ours, other = _two_bots(tmp_path, bind)
    first = request_mail(domain, f"<race2a@{domain}>")
    second = request_mail(domain, f"<race2b@{domain}>").replace(
        f"info@{domain}".encode(), f"front@{domain}".encode()).replace(  # another facility
        "ホテルさくら".encode("iso-2022-jp"), "旅館もみじ".encode("iso-2022-jp"))
    real = prepare_mod.prepare_message

    def prepare_then_lose_the_race(bot, parsed):
        prepared = real(bot, parsed)
        [ours_chosen, *_] = prepared.keys[domain].selectors  # chosen before the other decided
        # Meanwhile another sender takes that selector in DNS, so the other process
        # chooses a different one: the decision must follow the store, not what we prepared.
        bind.update(domain, f"{ours_chosen}._domainkey", "TXT", ["v=DKIM1; k=rsa; p=QUJD"])
        monkeypatch.setattr(prepare_mod, "prepare_message", real)
        assert process_message(other, "first", first).startswith("request")
        return prepared

    monkeypatch.setattr(prepare_mod, "prepare_message", prepare_then_lose_the_race)
    assert process_message(ours, "second", second).startswith("request")
    found = ours.store.cases_for_domain(domain)
    assert len(found) == 2 and {c.facility for c in found} == {"ホテルさくら", "旅館もみじ"}
    assert found[0].selectors == found[1].selectors  # one shared key
    assert [k["selector"] for k in ours.store.domain_keys(domain)] == found[0].selectors
