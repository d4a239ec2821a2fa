"""Intake benchmarks against a real Dovecot: the idle pass and the first pass over new mail.

* idle: a mailbox of ``big_mailbox`` unrelated messages and one of ``small_mailbox``;
  after a first pass has caught up, a `run --once`-equivalent pass (open the bot,
  ``jobs.run_pass``, close) over each, interleaved, median of ``idle_repeats``.
  Target: big ≤ 1.2 × small. Also: the catch-up pass fetched no body of unrelated mail.
* first_pass: ``new_unrelated`` unrelated messages and ``new_requests`` requests (each
  a domain of its own, so a key is generated for each), one pass; messages per second
  and bytes received from the server against the mailbox's size.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from common import (
    PASSWORD,
    ImapMeter,
    Sizes,
    fill_maildir,
    imap_config,
    median_time,
    request_mail,
    unrelated_mail,
)


def _one_pass(cfg: Any) -> Any:
    """What `dkimbot run --once` does, minus the interpreter start-up."""
    from bot.app.jobs import Bot, pass_lock, run_pass

    with pass_lock(cfg):
        bot = Bot.open(cfg)
        try:
            result = run_pass(bot)
        finally:
            bot.close()
    if result.errors:
        raise RuntimeError(f"pass failed: {result.errors}")
    return result


def idle(sizes: Sizes, work: Path) -> dict[str, Any]:
    import servers

    from bot.config import load_config

    big_user, small_user = "big@489ban.net", "small@489ban.net"
    rng = random.Random(7)
    dovecot = servers.Dovecot(users={big_user: PASSWORD, small_user: PASSWORD})
    try:
        t0 = time.perf_counter()
        n_big, bytes_big = fill_maildir(dovecot, big_user, (unrelated_mail(rng, i) for i in range(sizes.big_mailbox)))
        fill_seconds = time.perf_counter() - t0
        n_small, _ = fill_maildir(dovecot, small_user, (unrelated_mail(rng, i) for i in range(sizes.small_mailbox)))
        cfgs = {}
        for name, user in (("big", big_user), ("small", small_user)):
            state = work / f"idle-{name}"
            cfgs[name] = load_config(imap_config(work / f"idle-{name}.toml", state, dovecot, user))
        # Catch-up: the first pass over the big mailbox reads every header once.
        with ImapMeter() as meter:
            t0 = time.perf_counter()
            first = _one_pass(cfgs["big"])
            catchup_seconds = time.perf_counter() - t0
        _one_pass(cfgs["small"])
        # Idle passes, interleaved so drift (page cache, CPU frequency) hits both alike.
        big_times: list[float] = []
        small_times: list[float] = []
        with ImapMeter() as idle_meter:
            _one_pass(cfgs["big"])
            idle_bytes = idle_meter.bytes_in
        for _ in range(sizes.idle_repeats):
            small_times.append(median_time(lambda: _one_pass(cfgs["small"]), 1)[0])
            big_times.append(median_time(lambda: _one_pass(cfgs["big"]), 1)[0])
        import statistics

        small, big = statistics.median(small_times), statistics.median(big_times)
        return {
            "big_messages": n_big, "small_messages": n_small, "big_mailbox_bytes": bytes_big,
            "fill_seconds": fill_seconds,
            "catchup_seconds": catchup_seconds, "catchup_messages_handled": first.messages,
            "catchup_bytes_received": meter.bytes_in, "catchup_body_fetches": meter.body_fetches,
            "catchup_commands": dict(meter.commands),
            "idle_bytes_received": idle_bytes,
            "idle_small_seconds": small, "idle_big_seconds": big, "idle_ratio": big / small,
            "target_met": big / small <= 1.2 and meter.body_fetches == 0,
        }
    finally:
        dovecot.close()


def first_pass(sizes: Sizes, work: Path) -> dict[str, Any]:
    import servers

    from bot.config import load_config

    user = "new@489ban.net"
    rng = random.Random(11)
    dovecot = servers.Dovecot(users={user: PASSWORD})
    smtp = servers.SmtpSink()
    bind = servers.Bind()
    try:
        n_req = sizes.new_requests
        # The facilities' domains exist (the bot looks at a domain's DNS when it
        # answers a request): each a zone of its own at a shared DNS hoster.
        for r in range(n_req):
            bind.add_zone(f"ryokan-new{r:04d}.test", ["ns1.dns-hoster.test", "ns2.dns-hoster.test"])
        every = max(1, sizes.new_unrelated // max(1, n_req))

        def messages():
            r = 0
            for i in range(sizes.new_unrelated):
                yield unrelated_mail(rng, i)
                if i % every == every - 1 and r < n_req:
                    yield request_mail(f"ryokan-new{r:04d}.test", f"旅館 新規{r}", r)
                    r += 1
            while r < n_req:
                yield request_mail(f"ryokan-new{r:04d}.test", f"旅館 新規{r}", r)
                r += 1

        total, mailbox_bytes = fill_maildir(dovecot, user, messages())
        cfg = load_config(imap_config(work / "first.toml", work / "first-state", dovecot, user, smtp=smtp,
                                      dns=(bind.host, bind.port)))
        with ImapMeter() as meter:
            t0 = time.perf_counter()
            result = _one_pass(cfg)
            seconds = time.perf_counter() - t0
        from bot.adapters.store import Store

        store = Store(cfg.state_dir / "dkimbot.sqlite3")
        try:
            cases = store.list_cases()
        finally:
            store.close()
        return {
            "messages": total, "requests": n_req, "mailbox_bytes": mailbox_bytes,
            "seconds": seconds, "messages_per_second": total / seconds,
            "bytes_received": meter.bytes_in, "bytes_fraction": meter.bytes_in / mailbox_bytes,
            "body_fetches": meter.body_fetches, "handled": result.messages,
            "cases": len(cases), "mails_sent": result.mails_sent, "smtp_received": len(smtp.messages),
            "target_met": len(cases) == n_req and meter.body_fetches == n_req,
        }
    finally:
        bind.close()
        smtp.close()
        dovecot.close()
