"""The daemon: APScheduler runs the same pass as ``run --once`` on an interval.

``max_instances=1`` and ``coalesce=True`` keep passes from overlapping inside the daemon;
the state-dir lock keeps the daemon and a cron pass from overlapping. SIGTERM/SIGINT let
the running pass finish, then the scheduler stops.
"""

from __future__ import annotations

import logging
import signal
import threading
from datetime import datetime, timezone
from typing import Any

from bot.config import Config

log = logging.getLogger("dkimbot")


def _one_pass(cfg: Config) -> None:
    from bot.app.jobs import Bot, PassLocked, pass_lock, run_pass

    try:
        with pass_lock(cfg, wait=False):
            bot = Bot.open(cfg)
            try:
                result = run_pass(bot)
            finally:
                bot.close()
    except PassLocked as exc:
        log.info("%s; skipping this tick", exc)
        return
    except Exception:  # a pass must never kill the daemon; the next tick retries
        log.exception("pass failed")
        return
    for err in result.errors:
        log.error("%s", err)


def run_daemon(cfg: Config, *, stop_event: threading.Event | None = None) -> int:
    from apscheduler.schedulers.background import BackgroundScheduler

    stop = stop_event or threading.Event()
    scheduler = BackgroundScheduler(timezone="UTC")
    interval = max(5, cfg.schedule.poll_interval_seconds)
    scheduler.add_job(
        _one_pass, "interval", args=[cfg], seconds=interval, id="pass",
        max_instances=1, coalesce=True, misfire_grace_time=interval,
        next_run_time=datetime.now(timezone.utc),
    )

    def handle(signum: int, _frame: Any) -> None:
        log.info("signal %d: finishing the current pass, then stopping", signum)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)
    scheduler.start()
    log.info("daemon started: a pass every %d s (state %s)", interval, cfg.state_dir)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        scheduler.shutdown(wait=True)  # waits for a running pass to finish
        log.info("daemon stopped")
    return 0

