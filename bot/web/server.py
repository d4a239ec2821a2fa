"""``dkimbot web``: the staff site under uvicorn (one process; blocking work in its threads)."""

from __future__ import annotations

import logging
import sys

from bot.adapters.store import Store
from bot.config import Config

log = logging.getLogger("dkimbot")


def serve(cfg: Config, host: str | None = None, port: int | None = None) -> int:
    import uvicorn

    from bot.web.app import create_app

    host = host or cfg.web.host
    port = port or cfg.web.port
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    store = Store(cfg.state_dir / "dkimbot.sqlite3")  # creates or upgrades the schema once
    try:
        if not store.list_staff():
            print("dkimbot: no staff accounts yet; add one with: dkimbot staff add NAME", file=sys.stderr)
    finally:
        store.close()
    log.info("staff site on http://%s:%d/ (state %s)", host, port, cfg.state_dir)
    # proxy_headers off: X-Forwarded-* are believed only from [web] trusted_proxies (bot/web/auth.py).
    uvicorn.run(create_app(cfg), host=host, port=port, proxy_headers=False, server_header=False,
                access_log=False, log_level="warning")
    return 0
