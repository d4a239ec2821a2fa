"""The public suffix list is parsed once per process even when a pass's DNS workers
ask for it at the same moment (each parse costs ~0.5 s of CPU)."""

from __future__ import annotations

import threading
import time

import pytest

from bot.checks import dmarc


def test_concurrent_first_use_parses_the_list_once(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[int] = []
    real = dmarc.PublicSuffixList

    def slow_build() -> object:
        built.append(1)
        time.sleep(0.05)  # widen the window in which other workers arrive
        return real()

    monkeypatch.setattr(dmarc, "PublicSuffixList", slow_build)
    monkeypatch.setattr(dmarc, "_PSL", [])
    start = threading.Barrier(8)
    seen: list[str] = []

    def worker() -> None:
        start.wait()
        seen.append(dmarc.organizational_domain("mail.ryokan.co.jp"))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert built == [1]
    assert seen == ["ryokan.co.jp"] * 8
