"""The daemon: the same pass as ``run --once``, on an interval and, with IMAP IDLE, as
soon as mail arrives.

Passes run one at a time on the daemon's own thread. Two things ask for one: an
APScheduler interval job every ``poll_interval_seconds`` (polling, for servers without
IDLE and as a safety net), and the IMAP IDLE watcher (``bot/app/idlewatch.py``) when the
server reports new mail. Requests coalesce: any number of them during a pass make one
more pass right after it, so a mail that arrives mid-pass is read at once, not at the
next tick. The state-dir lock keeps the daemon and a cron pass from overlapping; a
locked tick is tried again in a few seconds. SIGTERM/SIGINT let the running pass
finish, then the daemon stops.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from datetime import UTC, datetime
from typing import Any

from bot.config import Config

log = logging.getLogger("dkimbot")

# A pass asked for while a cron pass holds the lock is tried again this much later.
LOCKED_RETRY_SECONDS = 5.0


def _one_pass(cfg: Config) -> bool:
    """One pass; False when another pass (cron) holds the state-dir lock."""
    from bot.app.jobs import PassLocked, run_locked_pass

    try:
        result = run_locked_pass(cfg)
    except PassLocked as exc:
        log.info("%s; trying again shortly", exc)
        return False
    except Exception:  # a pass must never kill the daemon; the next request retries
        log.exception("pass failed")
        return True
    for err in result.errors:
        log.error("%s", err)
    return True


def run_daemon(cfg: Config, *, stop_event: threading.Event | None = None) -> int:
    from apscheduler.schedulers.background import BackgroundScheduler

    from bot.app.idlewatch import IdleWatcher

    stop = stop_event or threading.Event()
    wanted = threading.Event()  # "a pass is wanted": set by the timer and by IDLE

    def want(reason: str) -> None:
        log.debug("pass wanted: %s", reason)
        wanted.set()

    scheduler = BackgroundScheduler(timezone="UTC")
    interval = max(5, cfg.schedule.poll_interval_seconds)
    scheduler.add_job(
        want, "interval", args=["poll interval"], seconds=interval, id="pass",
        max_instances=1, coalesce=True, misfire_grace_time=interval,
        next_run_time=datetime.now(UTC),
    )
    watcher: IdleWatcher | None = None
    if cfg.intake.kind == "imap" and cfg.intake.idle:
        watcher = IdleWatcher(cfg.intake, want, stop)

    def handle(signum: int, _frame: Any) -> None:
        log.info("signal %d: finishing the current pass, then stopping", signum)
        stop.set()
        wanted.set()  # wake the loop at once

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)
    scheduler.start()
    if watcher is not None:
        watcher.start()
    log.info("daemon started: a pass every %d s%s (state %s)", interval,
             " and on new mail (IMAP IDLE)" if watcher else "", cfg.state_dir)
    retry_at: float | None = None
    try:
        while not stop.is_set():
            if retry_at is not None and time.monotonic() >= retry_at:
                retry_at = None
                wanted.set()
            if not wanted.wait(1.0) or stop.is_set():
                continue
            wanted.clear()  # requests from here on make another pass after this one
            if not _one_pass(cfg):
                retry_at = time.monotonic() + LOCKED_RETRY_SECONDS
    finally:
        stop.set()
        scheduler.shutdown(wait=True)
        if watcher is not None:
            watcher.join(timeout=CHECK_JOIN_SECONDS)
        log.info("daemon stopped")
    return 0


# The watcher notices a stop within one idle_check (1 s) plus a DONE/LOGOUT exchange.
CHECK_JOIN_SECONDS = 15.0
