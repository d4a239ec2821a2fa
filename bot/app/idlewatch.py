"""IMAP IDLE for the daemon: a mail in the support folder starts a pass within seconds.

A facility that has just pasted its record and replied 「設定しました」 is still looking
at its DNS panel; polling every minute (or a cron job every five) makes it wait that
long before its reply is even read. The watcher holds one more IMAP connection, in IDLE
on the support folder (read-only, EXAMINE), and asks the daemon for a pass when the
server reports new mail (EXISTS/RECENT). The pass itself reads the mail as always (its
own connection, its own UID progress), so the watcher never touches a message.

* RFC 2177: the client re-issues IDLE at least every 29 minutes; here every
  ``[intake] idle_renew_seconds`` (25 minutes by default), with a NOOP in between, which
  also finds a connection that died without a word (a NAT that forgot it).
* A server that drops the connection (restart, network) is reconnected with backoff,
  1 s doubling to 5 minutes; every reconnect asks for a pass, since mail may have come
  while no one listened.
* A server without IDLE in its CAPABILITY: the watcher says so once and stops; the
  daemon's polling interval (which stays in force with IDLE too) does the work.
"""

from __future__ import annotations

import imaplib
import logging
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from bot.adapters.intake import connect_imap
from bot.config import IntakeConfig

log = logging.getLogger("dkimbot")

MIN_BACKOFF = 1.0
MAX_BACKOFF = 300.0
# How long one idle_check waits: also how soon a stop request is noticed.
CHECK_SECONDS = 1.0


def announces_new_mail(responses: list[Any]) -> bool:
    """Whether untagged IDLE responses (imapclient's ``idle_check`` tuples, e.g.
    ``(3, b'EXISTS')``) say a message arrived. EXPUNGE and FETCH (flags) do not."""
    return any(isinstance(r, tuple) and len(r) >= 2 and r[1] in (b"EXISTS", b"RECENT")
               for r in responses)


class IdleWatcher:
    """A thread that calls ``wake(reason)`` when new mail may be in the support folder."""

    def __init__(self, cfg: IntakeConfig, wake: Callable[[str], None], stop: threading.Event) -> None:
        self.cfg = cfg
        self.wake = wake
        self.stop = stop
        self.idling = threading.Event()  # set while an IDLE is in force (tests, logs)
        self.sessions = 0                # connections that reached IDLE
        self.renewals = 0                # IDLEs re-issued on a live connection
        self.supported: bool | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="imap-idle", daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        backoff = MIN_BACKOFF
        c = self.cfg
        while not self.stop.is_set():
            before = self.sessions
            try:
                if not self._session():
                    log.info("IMAP %s:%d offers no IDLE; new mail is read every poll interval",
                             c.host, c.port)
                    return
            except (imaplib.IMAP4.error, OSError, ssl.SSLError) as exc:
                # imapclient's errors derive from IMAP4.error; socket and TLS errors from OSError.
                self.idling.clear()
                if self.stop.is_set():
                    return
                if self.sessions > before:
                    backoff = MIN_BACKOFF  # it worked until now: try again at once-ish
                log.warning("IMAP IDLE on %s:%d lost (%s); reconnecting in %.0f s",
                            c.host, c.port, exc or type(exc).__name__, backoff)
            if self.stop.wait(backoff):
                return
            backoff = min(backoff * 2, MAX_BACKOFF)

    def _session(self) -> bool:
        """One connection: IDLE until stopped or the connection fails (raises).
        False when the server has no IDLE."""
        c = self.cfg
        client = connect_imap(c.host, c.port, c.tls, c.username, c.password, c.timeout)
        try:
            self.supported = b"IDLE" in client.capabilities()
            if not self.supported:
                client.logout()
                return False
            client.select_folder(c.folder, readonly=True)
            self.sessions += 1
            log.info("IMAP IDLE on %s:%d %s: new mail starts a pass at once", c.host, c.port, c.folder)
            self.wake("IMAP connected")  # mail may have come while no one listened
            while not self.stop.is_set():
                self._idle_once(client)
                client.noop()  # between IDLEs: a dead connection shows here
                self.renewals += 1
            client.logout()
        except BaseException:
            self.idling.clear()
            try:
                client.shutdown()  # the socket only: the session is already broken
            except (imaplib.IMAP4.error, OSError):
                pass  # nothing left to close
            raise
        return True

    def _idle_once(self, client: Any) -> None:
        """One IDLE of at most ``idle_renew_seconds``; wakes the daemon on new mail."""
        client.idle()
        self.idling.set()
        renew_at = time.monotonic() + self.cfg.idle_renew_seconds
        while not self.stop.is_set():
            left = renew_at - time.monotonic()
            if left <= 0:
                break
            responses = client.idle_check(timeout=min(CHECK_SECONDS, left))
            if announces_new_mail(responses):
                self.wake("new mail")
        self.idling.clear()
        client.idle_done()
