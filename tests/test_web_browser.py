"""The staff site in a real headless browser (Debian's chromium driven by Playwright),
served by the real ``dkimbot web`` (uvicorn) over cases made by real passes on the real
Dovecot, BIND and SMTP sink: log in, filter the list, open a case, read its timeline and
mails, act on it and see the action in the event log, log out. A screenshot of every
page goes to test-artifacts/web/ (git-ignored; CI keeps it as the run's artifact)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

import pytest
from conftest import SUPPORT_ADDRESS
from playwright.sync_api import Page, expect, sync_playwright
from workerkit import (
    IMAP_PASSWORD,
    cases,
    dkimbot,
    dkimbot_env,
    received_for,
    request_mail,
    setup_domain,
    setup_saas_zone,
    write_config,
)

pytestmark = pytest.mark.servers

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "web"
PASSWORD = "correct horse battery"
XSS = "<script>alert(1)</script>"


def _request(domain: str, facility: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"担当 <owner@{domain}>"
    msg["To"] = SUPPORT_ADDRESS
    msg["Subject"] = "DKIM、DMARC設定希望"
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = f"<req.{time.time_ns()}@{domain}>"
    msg.set_content(
        f"[施設名]\n{facility}\n[担当者様のお名前]\n佐藤 花子\n[担当者様のメールアドレス]\nowner@{domain}\n"
        f"[担当者様の電話番号]\n03-1111-2222\n[予約番で使用する管理用メールアドレス]\ninfo@{domain}\n")
    return msg.as_bytes()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"dkimbot web exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"dkimbot web did not answer at {url}")


@pytest.fixture()
def site(tmp_path, dovecot, bind, smtp):
    """Two cases made by real passes: one with a wrong DKIM record (a check with evidence,
    a problem mail), one whose facility name is markup; an account; the site running."""
    user = "webui@489ban.net"
    dovecot.add_user(user, IMAP_PASSWORD)
    dovecot.reset(user)
    good, odd = "webui-sakura.test", "webui-xss.test"
    for domain in (good, odd):
        setup_domain(bind, domain)
    setup_saas_zone(bind, [good, odd])
    dovecot.append(user, request_mail(good, f"<req.{time.time_ns()}@{good}>"))
    dovecot.append(user, _request(odd, XSS))
    cfg = write_config(tmp_path, dovecot, bind, smtp, imap_user=user)
    assert dkimbot(cfg, "run", "--once").returncode == 0
    by_domain = {c["domain"]: c for c in cases(cfg)}
    assert set(by_domain) == {good, odd}
    # The facility publishes a record at the right name with the wrong key.
    selector = by_domain[good]["selector"]
    bind.update(good, f"{selector}._domainkey", "TXT",
                ["v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDwrongwrongwrong"])
    r = dkimbot(cfg, "run", "--once")
    assert r.returncode == 0, r.stderr.decode()
    r = subprocess.run([sys.executable, "-m", "bot", "--config", str(cfg), "staff", "add", "tanaka"],
                       input=(PASSWORD + "\n").encode(), capture_output=True, env=dkimbot_env(), timeout=60,
                       check=False)
    assert r.returncode == 0, r.stderr.decode()
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bot", "--config", str(cfg), "web", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dkimbot_env())
    try:
        _wait_for(f"http://127.0.0.1:{port}/login", proc)
        yield {"cfg": cfg, "url": f"http://127.0.0.1:{port}", "good": by_domain[good], "odd": by_domain[odd],
               "smtp": smtp}
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_staff_work_a_case_in_a_real_browser(site):
    url, good, odd = site["url"], site["good"], site["odd"]
    dialogs: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900}, locale="ja-JP")
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))

            # Every page but the login page sends a stranger to the login page.
            page.goto(f"{url}/cases/{good['case']}")
            expect(page.locator("h1")).to_have_text("ログイン")
            _shot(page, "01-login")
            page.fill("input[name=name]", "tanaka")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            # Back where the link pointed, now logged in.
            expect(page.locator("h1")).to_contain_text(good["case"])
            page.goto(url + "/")

            # The list: both cases, with the facility name that is markup shown as text.
            expect(page.locator("table.cases tbody tr")).to_have_count(2)
            expect(page.get_by_role("cell", name=XSS, exact=True)).to_be_visible()
            _shot(page, "02-case-list")

            # Filter by state and search by domain.
            page.select_option("select[name=state]", "awaiting_dkim")
            page.fill("input[name=q]", "webui-sakura")
            page.click("form.filter button")
            rows = page.locator("table.cases tbody tr")
            expect(rows).to_have_count(1)
            expect(rows.first).to_contain_text(good["case"])
            expect(rows.first).to_contain_text("DKIM待ち")
            expect(rows.first).to_contain_text("公開鍵の不一致")  # the last diagnosis
            _shot(page, "03-case-list-filtered")
            page.fill("input[name=q]", "no-such-facility")
            page.click("form.filter button")
            expect(page.locator("table.cases tbody")).to_contain_text("該当する案件はありません")

            # The case page: timeline with the DNS evidence, the mails with their text.
            page.goto(url + "/")
            page.click(f"text={good['case']}")
            expect(page.locator("h1")).to_contain_text(good["case"])
            timeline = page.locator("ol.timeline")
            expect(timeline).to_contain_text("key_assigned")
            check = timeline.locator("li.ev-check").first
            expect(check).to_contain_text("dkim_key_mismatch")
            check.locator("details summary", has_text="DNSの応答").first.click()
            expect(check).to_contain_text("wrongwrongwrong")  # what BIND answered
            mails = page.locator("details.mail-item")
            expect(mails.filter(has_text="request_reply")).to_have_count(1)
            problem = mails.filter(has_text="dkim_problem")
            expect(problem).to_have_count(1)
            problem.locator("summary").click()
            expect(problem.locator("pre.mail")).to_contain_text("v=DKIM1")
            expect(page.locator("section", has_text="施設が公開するレコード")).to_contain_text(
                f"{good['selector']}._domainkey")
            _shot(page, "04-case")

            # An action: resend; it is in the event log under the staff member's name,
            # and the facility got the mail on the real SMTP sink.
            before = len(received_for(site["smtp"], "webui-sakura.test"))
            page.click("button[value=resend]")
            expect(page.locator(".flash")).to_contain_text(f"{good['case']}: awaiting_dkim")
            resent = page.locator("ol.timeline li.ev-staff_resend")
            expect(resent).to_have_count(1)
            expect(resent).to_contain_text("操作: tanaka")
            assert len(received_for(site["smtp"], "webui-sakura.test")) == before + 1
            _shot(page, "05-case-after-resend")

            # A note, then a destructive action behind its confirmation step.
            page.fill("textarea[name=text]", "お電話で設定方法をご案内済み")
            page.click("form.note button")
            expect(page.locator("ol.timeline li.ev-staff_note")).to_contain_text("お電話で設定方法をご案内済み")
            page.click("button[value=cancel]")
            expect(page.locator("h1")).to_contain_text("本当に実行しますか")
            _shot(page, "06-confirm-cancel")
            page.click("text=やめる")
            expect(page.locator("h1 .state")).to_have_text("DKIM待ち")
            page.click("button[value=cancel]")
            page.click("button.danger")
            expect(page.locator("h1 .state")).to_have_text("取消")
            expect(page.locator("ol.timeline li.ev-staff_cancel")).to_contain_text("操作: tanaka")

            # The case with the markup name: text on its page too, and nothing ran.
            page.goto(f"{url}/cases/{odd['case']}")
            expect(page.locator("dl.summary")).to_contain_text(XSS)

            page.goto(url + "/charts")
            for heading in ("週ごとのファネル", "完了までの日数", "案件を止めている診断"):
                expect(page.locator("section.chart", has_text=heading).locator("svg")).to_have_count(1)
            _shot(page, "07-charts")
            page.goto(url + "/digest")
            expect(page.locator("pre.mail")).to_contain_text("awaiting_dkim")
            _shot(page, "08-digest")

            # Log out: the session is gone, pages need a login again.
            page.click("form.logout button")
            expect(page.locator("h1")).to_have_text("ログイン")
            page.goto(url + "/")
            expect(page.locator("h1")).to_have_text("ログイン")
            _shot(page, "09-logged-out")
        finally:
            browser.close()
    assert dialogs == []  # no alert(): the markup never ran
    assert os.path.getsize(ARTIFACTS / "02-case-list.png") > 10_000
