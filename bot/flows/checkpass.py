"""The shape of a checking pass, shared by the rechecks of waiting cases and the daily
watch of completed ones: DNS concurrently, decisions in due order, commits in groups.

* Each domain (with its selectors) is checked once per pass, on a bounded pool of
  worker threads over one ``DnsClient`` (its cache asks each name once; its multiplexer
  keeps many queries in flight from few threads, ``bot/adapters/dnsmux.py``).
* Each case is applied on the pass's own thread (the store's connection lives there)
  as soon as its domain's answers are in, while later domains are still being asked.
* Group commit: every case whose answers are in is applied in one transaction, each
  case in a savepoint of its own, so a decision stays whole and one case's crash
  undoes only that case; one fsync for many cases instead of one each (~2-3 ms each
  on this VM: 5,000 of them alone were longer than the whole target pass). A group
  starts only once its first case's answers are in, and lasts at most
  ``GROUP_COMMIT_SECONDS`` (waiting for further answers within it), so a staff action
  that writes waits half a second at most.
* One domain's trouble (a missing key row, a check that raises) is recorded on its
  cases (``record_check_crash``); the other cases and the rest of the pass go on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

from bot.core.rows import CaseRow
from bot.flows.backoff import record_check_crash
from bot.flows.desks import Office

K = TypeVar("K", bound=Hashable)

# One commit per at most this many applied cases, and no transaction held longer than
# this, so a staff command (`dkimbot cancel`) waits a moment at most.
GROUP_COMMIT_CASES = 200
GROUP_COMMIT_SECONDS = 0.5
# Threads asking DNS. Each sends all it knows it needs at once (a zone's servers, the
# wrong-place probes), so 64 threads keep a few hundred queries in flight.
WORKERS = 64


def check_and_apply(office: Office, due: list[CaseRow], key_of: Callable[[CaseRow], K | None],
                    prepare: Callable[[K], Any], check: Callable[[K, Any], Any],
                    apply: Callable[[CaseRow, Any], None], where: str, *, workers: int = WORKERS) -> None:
    """``prepare(key)`` on this thread (store reads), ``check(key, prepared)`` on the pool,
    ``apply(case, result)`` on this thread in due order; cases whose key is None are
    left alone."""
    prepared: dict[K, Any] = {}
    broken: dict[K, Exception] = {}
    order: list[tuple[CaseRow, K]] = []
    for case in due:
        key = key_of(case)
        if key is None:
            continue
        order.append((case, key))
        if key not in prepared and key not in broken:
            try:
                prepared[key] = prepare(key)
            except Exception as exc:  # noqa: BLE001 - recorded on each case of the key below
                broken[key] = exc
    if not order:
        return
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(prepared) or 1)),
                            thread_name_prefix="check") as pool:
        futures: dict[K, Future[Any]] = {key: pool.submit(check, key, p) for key, p in prepared.items()}
        i = 0
        while i < len(order):
            first = futures.get(order[i][1])
            if first is not None:
                wait([first])  # outside any transaction: never hold the write lock for DNS
            started = time.monotonic()
            with office.store.transaction():
                applied = 0
                while i < len(order) and applied < GROUP_COMMIT_CASES \
                        and time.monotonic() - started < GROUP_COMMIT_SECONDS:
                    case, key = order[i]
                    future = futures.get(key)
                    if applied and future is not None and not future.done():
                        # Wait for it within the group's half second rather than commit
                        # a handful of cases (an fsync each time) and start again.
                        left = GROUP_COMMIT_SECONDS - (time.monotonic() - started)
                        if left <= 0 or not wait([future], timeout=left).done:
                            break  # commit what is in; wait for the rest outside
                    i += 1
                    applied += 1
                    try:
                        if key in broken:
                            raise broken[key]
                        assert future is not None
                        with office.store.transaction():  # this case's savepoint
                            apply(case, future.result())
                    except Exception as exc:  # noqa: BLE001 - one domain's trouble stays its own
                        record_check_crash(office, office.store.get_case(case.id), exc, where)
