"""kill -9 at every dangerous point of the full flow, run again, and get the same result.

The flow is tests/test_e2e.py's, for two facilities whose requests arrive in one mailbox
(real Dovecot, BIND, SMTP sink): request → record mail → DKIM published → key installed
and proven, DMARC asked for → DMARC and SPF published → completion report. Each pass of
the flow is first run with ``DKIMBOT_CRASH_AT=<point>[:n]`` (the process SIGKILLs itself
at the n-th arrival at that point: no cleanup, no rollback, like a power cut), then run
again without it. At the end every facility must have received exactly its three mails,
both cases must be completed, and no Message-ID may have arrived twice.

The one honest exception is ``smtp.accepted``: killed after the SMTP server said 250 and
before the bot recorded it, nobody on the sending side can know the mail left, so it is
sent again, with the same Message-ID (bot/flows/delivery.py explains why no SMTP client can do
better without the receiver's help). The test asserts exactly that: nothing lost, the
duplicate only for mails the bot itself flagged ``delivery_in_doubt``, at most two copies.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from workerkit import (
    IMAP_PASSWORD,
    cases,
    deliveries,
    dkimbot,
    publish_dkim,
    publish_dmarc_spf,
    received_for,
    request_mail,
    setup_domain,
    setup_saas_zone,
    write_config,
)

from bot.faults import POINTS

pytestmark = pytest.mark.servers

EXPECTED_KINDS = ["request_reply", "dkim_active", "completion_report"]

# Every point the flow reaches; ":2" crashes at the second arrival (the second message,
# the second key, the second mail of a pass) so work half done across items is covered.
CRASHES = [
    "message.decided", "message.decided:2", "message.committed", "message.committed:2",
    "imap.progress", "key.written", "key.written:2", "check.proven", "check.proven:2",
    "check.decided", "check.committed", "outbox.sending", "outbox.sending:2",
    "smtp.accepted", "smtp.accepted:2", "outbox.sent", "outbox.sent:2",
]


def test_it_knows_every_crash_point_it_uses():
    for spec in CRASHES:
        assert spec.split(":")[0] in POINTS


def test_an_unknown_crash_point_is_refused_not_ignored(tmp_path):
    # A typo in DKIMBOT_CRASH_AT must fail loudly, or a crash test would pass by never crashing.
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[state]\ndir = "{tmp_path}/state"\n')
    r = dkimbot(cfg, "status", crash_at="no.such.point")
    assert r.returncode == 2 and b"names no crash point" in r.stderr


def _pass(cfg: Path, crash_at: str | None, kills: list[str], what: str) -> None:
    r = dkimbot(cfg, "run", "--once", crash_at=crash_at)
    if r.returncode == -signal.SIGKILL:
        kills.append(what)
    else:
        assert r.returncode == 0, r.stderr.decode()
    # Run again, uninterrupted: it must finish what the killed pass left.
    r = dkimbot(cfg, "run", "--once")
    assert r.returncode == 0, r.stderr.decode()


@pytest.mark.parametrize("crash_at", CRASHES)
def test_it_ends_as_an_uninterrupted_run_after_kill_9(tmp_path, dovecot, bind, smtp, crash_at):
    tag = crash_at.replace(".", "-").replace(":", "-")
    user = f"crash-{tag}@489ban.net"
    dovecot.add_user(user, IMAP_PASSWORD)
    dovecot.reset(user)
    domains = [f"{tag}-a.test", f"{tag}-b.test"]
    for d in domains:
        setup_domain(bind, d)
    setup_saas_zone(bind, domains)
    cfg = write_config(tmp_path, dovecot, bind, smtp, imap_user=user)
    for d in domains:
        dovecot.append(user, request_mail(d, f"<req.{time.time_ns()}@{d}>"))

    kills: list[str] = []
    _pass(cfg, crash_at, kills, "request")
    for d in domains:
        publish_dkim(bind, smtp, d)
    _pass(cfg, crash_at, kills, "dkim")
    for d in domains:
        publish_dmarc_spf(bind, smtp, d)
    _pass(cfg, crash_at, kills, "final")
    assert kills, f"{crash_at} was never reached: the test would prove nothing"

    # One more pass changes nothing and sends nothing.
    before = (cases(cfg), len(smtp.messages))
    r = dkimbot(cfg, "run", "--once")
    assert r.returncode == 0, r.stderr.decode()
    assert (cases(cfg), len(smtp.messages)) == before

    found = cases(cfg)
    assert sorted(c["domain"] for c in found) == sorted(domains)  # one case per request
    for case in found:
        assert case["state"] == "completed", case
        got = deliveries(cfg, smtp, case["case"])
        assert got.kinds == EXPECTED_KINDS
        assert set(got.statuses) == {"sent"}
        assert all(n >= 1 for n in got.copies.values()), "a mail was lost"
        doubled = {mid for mid, n in got.copies.items() if n > 1}
        if crash_at.startswith("smtp.accepted"):
            # The window no SMTP client can close: sent again, same Message-ID, flagged.
            assert doubled <= got.in_doubt and all(n <= 2 for n in got.copies.values())
        else:
            assert not doubled, f"Message-IDs delivered twice: {doubled}"
            assert all(n == 1 for n in got.copies.values())
        # Nothing else reached the facility's domain (no stray problem mail, no escalation).
        assert {m.message["Message-ID"] for m in received_for(smtp, case["domain"])} == set(got.copies)
    assert all(not m.message["Subject"].count("ESCALATION") for d in domains for m in received_for(smtp, d))
    if crash_at.startswith("smtp.accepted"):
        assert any(deliveries(cfg, smtp, c["case"]).in_doubt for c in found)
    # The mailbox is read-only to the bot, crash or not.
    assert all("\\Seen" not in flags for _, flags, _ in dovecot.fetch_all(user))
