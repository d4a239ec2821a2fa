"""Many UDP DNS queries in flight from few threads: one I/O thread waits on them all.

A check pass asks thousands of names, each answer 50 ms or more away. With one
blocking query per thread, the queries in flight are bounded by the threads, and every
extra thread costs CPU in GIL hand-offs (measured on the rechecks benchmark: 160
workers instead of 32 raised the CPU per case by ~40%). Here a thread sends all the
queries it already knows it needs (every server of a zone, every wrong-place probe) at
once and then waits for their futures; one I/O thread receives every answer with epoll.

dnspython still builds and parses every message (its asyncio API was measured first:
no cheaper per query, ~250 µs under load either way); only the waiting moved. Each
query has a socket of its own, so a random source port of its own as with
``dns.query.udp``, connected to the server, so datagrams from anywhere else are never
read; a datagram that is not the answer to the question asked
(``Message.is_response``) or does not parse is ignored, as ``dns.query.udp`` does with
``ignore_unexpected`` / ``ignore_errors``, until the deadline.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

import dns.exception
import dns.inet
import dns.message

log = logging.getLogger("dkimbot")

# How often expired queries are looked for when no answer arrives (seconds).
_TICK = 0.02


@dataclass
class _Pending:
    sock: socket.socket
    query: dns.message.Message
    future: Future[dns.message.Message]
    deadline: float


class UdpMux:
    """Send a query now, get its answer later: ``query()`` returns a Future that holds
    the response, ``dns.exception.Timeout`` after ``timeout`` seconds, or the
    ``OSError`` the socket gave (an ICMP "port unreachable" on a connected socket)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._wake = threading.Event()
        self._epoll: select.epoll | None = None
        self._owner_pid = -1
        self._thread: threading.Thread | None = None

    def query(self, q: dns.message.Message, where: str, port: int, timeout: float
              ) -> Future[dns.message.Message]:
        fut: Future[dns.message.Message] = Future()
        try:
            sock = socket.socket(dns.inet.af_for_address(where), socket.SOCK_DGRAM)
        except (OSError, ValueError) as exc:
            fut.set_exception(exc if isinstance(exc, OSError) else OSError(str(exc)))
            return fut
        try:
            sock.setblocking(False)
            sock.connect((where, port))
            sock.send(q.to_wire())
        except OSError as exc:
            sock.close()
            fut.set_exception(exc)
            return fut
        with self._lock:
            epoll = self._ensure_running()
            self._pending[sock.fileno()] = _Pending(sock, q, fut, time.monotonic() + timeout)
            # Level-triggered: an answer that came before this line is still seen.
            epoll.register(sock.fileno(), select.EPOLLIN)
        self._wake.set()
        return fut

    def _ensure_running(self) -> select.epoll:
        """The I/O thread of this process (started lazily; again after a fork)."""
        if self._owner_pid != os.getpid() or self._epoll is None or self._thread is None:
            self._epoll = select.epoll()
            self._pending = {}
            self._owner_pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="dns-mux", daemon=True)
            self._thread.start()
        return self._epoll

    def _finish(self, fd: int) -> _Pending | None:
        with self._lock:
            item = self._pending.pop(fd, None)
            if item is not None and self._epoll is not None:
                try:
                    self._epoll.unregister(fd)
                except OSError:
                    pass  # already gone: nothing to undo
        if item is not None:
            item.sock.close()
        return item

    def _run(self) -> None:
        epoll = self._epoll
        assert epoll is not None
        last_sweep = time.monotonic()
        while True:
            with self._lock:
                idle = not self._pending
                if idle:
                    self._wake.clear()
            if idle:
                self._wake.wait()
                continue
            for fd, _events in epoll.poll(_TICK):
                try:
                    self._receive(fd)
                except Exception as exc:  # noqa: BLE001 - this thread must outlive any one answer
                    # Every query waits on this thread: dying here would hang them all.
                    log.error("DNS multiplexer: dropping an answer it could not handle: %r", exc)
                    item = self._finish(fd)
                    if item is not None:
                        item.future.set_exception(OSError(f"unreadable answer: {exc!r}"))
            now = time.monotonic()
            if now - last_sweep >= _TICK:
                last_sweep = now
                with self._lock:
                    expired = [fd for fd, p in self._pending.items() if p.deadline <= now]
                for fd in expired:
                    item = self._finish(fd)
                    if item is not None:
                        item.future.set_exception(dns.exception.Timeout())  # type: ignore[no-untyped-call]

    def _receive(self, fd: int) -> None:
        with self._lock:
            item = self._pending.get(fd)
        if item is None:
            return
        try:
            wire = item.sock.recv(65535)
        except BlockingIOError:
            return
        except OSError as exc:  # e.g. ECONNREFUSED: nothing listens at that address
            if self._finish(fd) is not None:
                item.future.set_exception(exc)
            return
        try:
            response = dns.message.from_wire(wire, keyring=item.query.keyring,
                                             request_mac=item.query.request_mac)
        except dns.exception.DNSException as exc:
            # A malformed datagram is not the answer: keep waiting for the real one.
            log.debug("ignoring an unparsable DNS datagram: %s", exc)
            return
        if not item.query.is_response(response):
            return
        if self._finish(fd) is not None:
            item.future.set_result(response)


_MUX = UdpMux()


def shared_mux() -> UdpMux:
    """The process's one multiplexer (one I/O thread however many clients)."""
    return _MUX
