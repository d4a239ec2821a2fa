"""Staff sessions end when left idle, and in any case some hours after login.

The real ``dkimbot web`` (uvicorn) in Debian's chromium driven by Playwright, as in
tests/test_web_browser.py, with the limits shrunk to seconds
(``session_idle_minutes = 0.1``: 6 s; ``session_hours = 0.005``: 18 s): a session left
alone past the idle limit sends the next page to the login form; a session in use lives
past the idle limit (each page slides it forward) but not past its lifetime.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from playwright.sync_api import Page, expect, sync_playwright
from test_web_browser import CHROMIUM, CHROMIUM_ARGS, PASSWORD, _free_port, _wait_for
from workerkit import IMAP_PASSWORD, dkimbot_env, write_config

pytestmark = pytest.mark.servers
IDLE_S, LIFETIME_S = 6.0, 18.0


@pytest.fixture()
def site(tmp_path, dovecot, bind, smtp):
    user = "websession@489ban.net"
    dovecot.add_user(user, IMAP_PASSWORD)
    cfg = write_config(tmp_path, dovecot, bind, smtp, imap_user=user)
    with cfg.open("a", encoding="utf-8") as f:
        f.write(f"\n[web]\nsession_idle_minutes = {IDLE_S / 60}\nsession_hours = {LIFETIME_S / 3600}\n")
    r = subprocess.run([sys.executable, "-m", "bot", "--config", str(cfg), "staff", "add", "tanaka"],
                       input=(PASSWORD + "\n").encode(), capture_output=True, env=dkimbot_env(), timeout=60,
                       check=False)
    assert r.returncode == 0, r.stderr.decode()
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bot", "--config", str(cfg), "web", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dkimbot_env())
    try:
        _wait_for(f"http://127.0.0.1:{port}/login", proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _login(page: Page, url: str) -> float:
    page.goto(url + "/")
    expect(page.locator("h1")).to_have_text("ログイン")
    page.fill("input[name=name]", "tanaka")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_contain_text("案件一覧")
    return time.monotonic()


def _at(started: float, seconds: float) -> None:
    time.sleep(max(0.0, started + seconds - time.monotonic()))


def test_an_idle_session_ends_and_a_busy_one_ends_at_its_lifetime(site):
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(locale="ja-JP")
            # Left alone past the idle limit: the next page is the login form.
            started = _login(page, site)
            _at(started, IDLE_S + 1.5)
            page.goto(site + "/charts")
            expect(page.locator("h1")).to_have_text("ログイン")

            # In use: a page every 2 s keeps it alive well past the idle limit ...
            started = _login(page, site)
            for second in range(2, int(LIFETIME_S) - 3, 2):
                _at(started, second)
                page.goto(site + "/")
                expect(page.locator("h1")).to_contain_text("案件一覧")
            assert time.monotonic() - started > IDLE_S * 1.5
            # ... but not past its lifetime, however busy.
            _at(started, LIFETIME_S - 2)
            page.goto(site + "/")
            _at(started, LIFETIME_S + 1)
            page.goto(site + "/")
            expect(page.locator("h1")).to_have_text("ログイン")
        finally:
            browser.close()
