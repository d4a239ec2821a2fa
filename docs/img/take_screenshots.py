"""Make docs/img/staff-case-list.png: the staff site's case list over 400 sample cases.

    python3 docs/img/take_screenshots.py

Fills a scratch state directory the way benchmarks/bench_web.py does (made-up
facilities on example.jp), starts the real ``dkimbot web`` on loopback, logs in and
takes the screenshot with Debian's chromium (Playwright; no browser download).
"""

from __future__ import annotations

import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_web import PASSWORD, Site, fill

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def main() -> None:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as work:
        state = Path(work) / "state"
        fill(state, 400, datetime.now(UTC))
        site = Site(state)
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1200, "height": 640}, locale="ja-JP")
                page.goto(f"http://127.0.0.1:{site.port}/login")
                page.fill("input[name=name]", "bench")
                page.fill("input[name=password]", PASSWORD)
                page.click("button[type=submit]")
                page.wait_for_selector("table.cases")
                page.screenshot(path=str(HERE / "staff-case-list.png"))
                page.goto(f"http://127.0.0.1:{site.port}/charts")
                page.screenshot(path=str(HERE / "staff-charts.png"), full_page=True)
                browser.close()
        finally:
            site.close()


if __name__ == "__main__":
    main()
