"""The dead-man's switch: an HTTP GET to ``[service] heartbeat_url`` after each pass that
ended without a server error (Healthchecks, Uptime Kuma, Cronitor and the like alert
when the pings stop). A pass that failed sends nothing, so a bot that is down, stuck or
failing every pass all look the same to the monitor: silence. The ping itself failing
never fails the pass: it is logged, and the monitor notices the missing ping.
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.parse
import urllib.request

log = logging.getLogger("dkimbot")

TIMEOUT_SECONDS = 10.0


def ping(url: str, timeout: float = TIMEOUT_SECONDS) -> bool:
    """GET ``url``; True on a 2xx answer. Never raises for network trouble."""
    request = urllib.request.Request(url, headers={"User-Agent": "dkimbot-heartbeat"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        log.warning("heartbeat: %s answered %d", _host(url), exc.code)
        return False
    except (urllib.error.URLError, OSError, ValueError) as exc:
        log.warning("heartbeat: %s unreachable: %s", _host(url), getattr(exc, "reason", exc))
        return False
    if not 200 <= status < 300:
        log.warning("heartbeat: %s answered %d", _host(url), status)
        return False
    log.debug("heartbeat: pinged %s", _host(url))
    return True


def _host(url: str) -> str:
    """The host only: a check's URL path is its secret token, not for the logs."""
    return urllib.parse.urlsplit(url).netloc or "?"
