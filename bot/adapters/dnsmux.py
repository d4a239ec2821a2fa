"""Many UDP DNS queries in flight from few threads: one I/O thread waits on them all.

A check pass asks thousands of names, each answer 50 ms or more away. With one
blocking query per thread, the queries in flight are bounded by the threads, and every
extra thread costs CPU in GIL hand-offs (measured on the rechecks benchmark: 160
workers instead of 32 raised the CPU per case by ~40%). Here a thread sends all the
queries it already knows it needs (every server of a zone, every wrong-place probe) at
once as one ``Batch`` and sleeps once; one I/O thread receives every answer with epoll
and wakes the sender when the last answer of its batch is in (a ``Future`` per query
woke it, or at least took a condition's lock and notified, once per answer: 5% of the
pass's GIL time at 5,000 cases).

Queries and answers are bytes (``bot/adapters/dnswire.py``: dnspython's message
objects were a quarter of the pass's CPU; its asyncio API was measured first: no
cheaper per query). Each query has a socket of its own, so a random source port of its
own as with ``dns.query.udp``, connected to the server, so datagrams from anywhere else
are never read; a datagram that is not the answer to the question asked (same ID,
question and opcode: ``dnswire.read_reply``, dnspython's ``Message.is_response``) or
does not parse is ignored, as ``dns.query.udp`` does with ``ignore_unexpected`` /
``ignore_errors``, until the deadline.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
import time

import dns.exception
import dns.inet

from bot.adapters.dnswire import Question, Reply, WireError, read_reply

log = logging.getLogger("dkimbot")

# How often expired queries are looked for when no answer arrives (seconds).
_TICK = 0.02


class Batch:
    """Queries one thread sent together; it sleeps until every one of them is done.

    A count of queries not yet done plus a lock held until it reaches zero (the
    cheapest wake-up CPython has: one futex). The sender holds one count of its own
    until it starts waiting, so answers that arrive while it is still sending never
    wake it early."""

    def __init__(self) -> None:
        self._count_lock = threading.Lock()
        self._left = 1
        self._done = threading.Lock()
        self._done.acquire()
        self._sender_waiting = False

    def _add(self) -> None:
        with self._count_lock:
            self._left += 1

    def _one_done(self) -> None:
        with self._count_lock:
            self._left -= 1
            last = self._left == 0
        if last:
            self._done.release()

    def wait(self, timeout: float) -> bool:
        """Sleep until every query of the batch is done or ``timeout`` passed; True
        when all are done (and at once on every later call)."""
        if not self._sender_waiting:
            self._sender_waiting = True
            self._one_done()
        if self._done.acquire(timeout=max(0.0, timeout)):
            self._done.release()  # stays done for later waits
            return True
        return False


class Pending:
    """One query in flight: its answer (a ``Reply``), or why there is none."""

    __slots__ = ("question", "sock", "deadline", "batch", "reply", "error")

    def __init__(self, question: Question, batch: Batch) -> None:
        self.question = question
        self.batch = batch
        self.sock: socket.socket | None = None
        self.deadline = 0.0
        self.reply: Reply | None = None
        self.error: BaseException | None = None

    def done(self) -> bool:
        return self.reply is not None or self.error is not None

    def result(self, timeout: float) -> Reply:
        """The answer; ``dns.exception.Timeout`` when there was none by the query's
        deadline (or ``timeout`` here, a guard only), else the socket's ``OSError``."""
        if not self.done():
            self.batch.wait(timeout)
        if self.reply is not None:
            return self.reply
        if self.error is not None:
            raise self.error
        raise dns.exception.Timeout

    def _complete(self, reply: Reply | None, error: BaseException | None) -> None:
        self.reply, self.error = reply, error
        self.batch._one_done()


_FAMILY: dict[str, socket.AddressFamily] = {}


def _family(where: str) -> socket.AddressFamily:
    family = _FAMILY.get(where)
    if family is None:
        family = _FAMILY[where] = socket.AddressFamily(dns.inet.af_for_address(where))
    return family


class UdpMux:
    """Send a query now, read its answer later: ``query()`` returns a ``Pending`` that
    the I/O thread completes with the answer, ``dns.exception.Timeout`` after
    ``timeout`` seconds, or the ``OSError`` the socket gave (an ICMP "port unreachable"
    on a connected socket)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[int, Pending] = {}
        self._wake = threading.Event()
        self._epoll: select.epoll | None = None
        self._owner_pid = -1
        self._thread: threading.Thread | None = None

    def query(self, wire: bytes, question: Question, where: str, port: int, timeout: float,
              batch: Batch | None = None) -> Pending:
        pending = Pending(question, batch or Batch())
        pending.batch._add()
        try:
            sock = socket.socket(_family(where), socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        except (OSError, ValueError) as exc:
            pending._complete(None, exc if isinstance(exc, OSError) else OSError(str(exc)))
            return pending
        try:
            sock.connect((where, port))
            sock.send(wire)
        except OSError as exc:
            sock.close()
            pending._complete(None, exc)
            return pending
        pending.sock = sock
        pending.deadline = time.monotonic() + timeout
        with self._lock:
            epoll = self._ensure_running()
            self._pending[sock.fileno()] = pending
            # Level-triggered: an answer that came before this line is still seen.
            epoll.register(sock.fileno(), select.EPOLLIN)
        self._wake.set()
        return pending

    def _ensure_running(self) -> select.epoll:
        """The I/O thread of this process (started lazily; again after a fork)."""
        if self._owner_pid != os.getpid() or self._epoll is None or self._thread is None:
            self._epoll = select.epoll()
            self._pending = {}
            self._owner_pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="dns-mux", daemon=True)
            self._thread.start()
        return self._epoll

    def _finish(self, fd: int, reply: Reply | None, error: BaseException | None) -> None:
        with self._lock:
            item = self._pending.pop(fd, None)
        if item is not None:
            assert item.sock is not None
            # Closing the socket also takes it out of the epoll set (it is nowhere else).
            item.sock.close()
            item._complete(reply, error)

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
                    self._finish(fd, None, OSError(f"unreadable answer: {exc!r}"))
            now = time.monotonic()
            if now - last_sweep >= _TICK:
                last_sweep = now
                with self._lock:
                    expired = [fd for fd, p in self._pending.items() if p.deadline <= now]
                for fd in expired:
                    self._finish(fd, None, dns.exception.Timeout())  # type: ignore[no-untyped-call]

    def _receive(self, fd: int) -> None:
        item = self._pending.get(fd)  # only this thread removes entries
        if item is None or item.sock is None:
            return
        try:
            wire = item.sock.recv(65535)
        except BlockingIOError:
            return
        except OSError as exc:  # e.g. ECONNREFUSED: nothing listens at that address
            self._finish(fd, None, exc)
            return
        try:
            reply = read_reply(wire, item.question)
        except WireError as exc:
            # A malformed datagram is not the answer: keep waiting for the real one.
            log.debug("ignoring an unparsable DNS datagram: %s", exc)
            return
        if reply is not None:  # else the answer to another question: not ours
            self._finish(fd, reply, None)


_MUX = UdpMux()


def shared_mux() -> UdpMux:
    """The process's one multiplexer (one I/O thread however many clients)."""
    return _MUX
