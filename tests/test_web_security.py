"""The staff site's guards, through its real ASGI application over a real SQLite store:
sessions on every page, CSRF on every action, escaping, the login slow-down, a new
session id at login, cookie flags, and reads that never wait for a pass."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from bot.adapters.store import Store
from bot.config import Config, WebConfig, load_config
from bot.web.app import create_app

PASSWORD = "correct horse battery"
XSS = "<script>alert(1)</script>"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def _config(tmp_path: Path, **web: object) -> Config:
    cfg = load_config(None, state_dir=tmp_path / "state")
    cfg.web = WebConfig(**web)  # type: ignore[arg-type]
    return cfg


def _add_staff(cfg: Config, name: str, password: str = PASSWORD) -> None:
    """Through the real command: password on stdin."""
    toml = cfg.state_dir.parent / "web.toml"
    toml.write_text(f'[state]\ndir = "{cfg.state_dir}"\n')
    r = subprocess.run([sys.executable, "-m", "bot", "--config", str(toml), "staff", "add", name],
                       input=password + "\n", capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr


def _case(cfg: Config, facility: str = "ホテルさくら", domain: str = "hotel-sakura.test") -> str:
    store = Store(cfg.state_dir / "dkimbot.sqlite3")
    try:
        now = datetime(2026, 11, 20, tzinfo=UTC)
        with store.transaction():
            case = store.create_case(state="awaiting_dkim", now=now, facility=facility, domain=domain,
                                     selector="yoyakuban202611", selectors=["yoyakuban202611"],
                                     requester=f"info@{domain}", next_check_at=now)
            store.add_event(case.id, now, "key_assigned", None, "awaiting_dkim", {"domain": domain})
        return case.ref
    finally:
        store.close()


def _state_of(cfg: Config, ref: str) -> tuple[str, int, int]:
    """(state, events, outbox rows): what an action would change."""
    store = Store(cfg.state_dir / "dkimbot.sqlite3", readonly=True)
    try:
        case = store.find_case(ref)
        assert case is not None
        return case.state, len(store.events(case.id)), len(store.mails_for_case(case.id))
    finally:
        store.close()


def _login_token(client: TestClient) -> str:
    page = client.get("/login")
    match = re.search(r'name="token" value="([^"]+)"', page.text)
    assert match, page.text
    return match.group(1)


def _login(client: TestClient, name: str = "tanaka", password: str = PASSWORD, **extra: str):
    return client.post("/login", data={"token": _login_token(client), "name": name, "password": password,
                                       "next": "/", **extra})


def _csrf(page_text: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page_text)
    assert match
    return match.group(1)


@pytest.fixture()
def site(tmp_path):
    cfg = _config(tmp_path)
    _add_staff(cfg, "tanaka")
    clock = Clock()
    client = TestClient(create_app(cfg, clock=clock), follow_redirects=False)
    return cfg, clock, client


def test_every_page_but_login_needs_a_session(site):
    cfg, _clock, client = site
    ref = _case(cfg)
    for path in ("/", f"/cases/{ref}", "/digest", "/charts", "/?state=awaiting_dkim&q=sakura"):
        r = client.get(path)
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next="), path
    for path in (f"/cases/{ref}/action", "/logout"):
        r = client.post(path, data={"action": "note", "text": "x", "csrf": "x"})
        assert r.status_code == 403, path
    # A made-up session cookie is no session.
    client.cookies.set("dkimbot_session", "made-up-token")
    assert client.get("/").status_code == 303
    assert client.get("/login").status_code == 200
    assert _state_of(cfg, ref) == ("awaiting_dkim", 1, 0)


def test_an_action_without_a_valid_csrf_token_is_refused_and_changes_nothing(site):
    cfg, _clock, client = site
    ref = _case(cfg)
    assert _login(client).status_code == 303
    page = client.get(f"/cases/{ref}")
    assert page.status_code == 200
    good = _csrf(page.text)
    before = _state_of(cfg, ref)
    for token in (None, "", "wrong", good[:-1] + ("A" if good[-1] != "A" else "B")):
        for action in ("cancel", "note", "retry", "rekey"):
            data = {"action": action, "confirmed": "yes", "text": "should not be recorded"}
            if token is not None:
                data["csrf"] = token
            r = client.post(f"/cases/{ref}/action", data=data)
            assert r.status_code == 403, (token, action)
    assert _state_of(cfg, ref) == before
    # Another staff member's token does not work in this session either.
    _add_staff(cfg, "suzuki")
    other = TestClient(client.app, follow_redirects=False)
    assert _login(other, "suzuki").status_code == 303
    r = client.post(f"/cases/{ref}/action", data={"action": "cancel", "confirmed": "yes",
                                                   "csrf": _csrf(other.get(f"/cases/{ref}").text)})
    assert r.status_code == 403
    assert _state_of(cfg, ref) == before
    # The right token works, and the note is recorded under the staff member's name.
    r = client.post(f"/cases/{ref}/action", data={"action": "note", "text": "電話で説明済み", "csrf": good})
    assert r.status_code == 303
    store = Store(cfg.state_dir / "dkimbot.sqlite3", readonly=True)
    case = store.find_case(ref)
    assert case is not None
    notes = [e for e in store.events(case.id) if e["kind"] == "staff_note"]
    store.close()
    assert [(n["detail"]["by"], n["detail"]["text"]) for n in notes] == [("tanaka", "電話で説明済み")]


def test_a_destructive_action_asks_first(site):
    cfg, _clock, client = site
    ref = _case(cfg)
    _login(client)
    csrf = _csrf(client.get(f"/cases/{ref}").text)
    r = client.post(f"/cases/{ref}/action", data={"action": "cancel", "csrf": csrf})
    assert r.status_code == 200 and "本当に実行しますか" in r.text and 'name="confirmed" value="yes"' in r.text
    assert _state_of(cfg, ref)[0] == "awaiting_dkim"
    r = client.post(f"/cases/{ref}/action", data={"action": "cancel", "csrf": csrf, "confirmed": "yes"})
    assert r.status_code == 303
    assert _state_of(cfg, ref)[0] == "cancelled"
    page = client.get(f"/cases/{ref}").text
    assert "staff_cancel" in page and "操作: tanaka" in page and "DKIM" in page


def test_a_facility_name_with_markup_renders_as_text(site):
    cfg, _clock, client = site
    ref = _case(cfg, facility=XSS, domain="xss.test")
    _login(client)
    for path in ("/", f"/cases/{ref}", "/?q=script", "/digest"):
        text = client.get(path).text
        assert XSS not in text, path
        if path != "/digest":
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text, path
    # And a search for markup is echoed as text.
    r = client.get("/", params={"q": XSS})
    assert XSS not in r.text and "&lt;script&gt;" in r.text
    # No script may run even if something slipped through: the policy forbids all scripts.
    assert "default-src 'none'" in r.headers["content-security-policy"]


def test_five_wrong_passwords_in_a_row_slow_further_attempts(site):
    _cfg, clock, client = site
    for _ in range(5):
        r = _login(client, password="wrong password")
        assert r.status_code == 401 and "名前またはパスワードが違います" in r.text
        assert "dkimbot_session" not in r.headers.get("set-cookie", "")
    # The sixth attempt waits, even with the right password (guessing during the wait
    # learns nothing), and says how long.
    r = _login(client)
    assert r.status_code == 429 and "お待ちください" in r.text
    assert "dkimbot_session" not in r.headers.get("set-cookie", "")
    clock.now += timedelta(seconds=20)
    assert _login(client).status_code == 429
    clock.now += timedelta(seconds=11)  # 30 s after the fifth miss
    r = _login(client)
    assert r.status_code == 303 and "dkimbot_session=" in r.headers["set-cookie"]
    client.cookies.clear()
    # A success clears the count: four misses do not slow the next login.
    for _ in range(4):
        assert _login(client, password="wrong again!").status_code == 401
    assert _login(client).status_code == 303
    client.cookies.clear()
    # Each further miss after the fifth doubles the wait: 30 s, 60 s, 120 s, 240 s, ...
    for _ in range(5):
        assert _login(client, password="wrong password").status_code == 401
    for wait in (30, 60, 120, 240):
        r = _login(client, password="wrong password")
        assert r.status_code == 429 and f"あと{wait}秒" in r.text
        clock.now += timedelta(seconds=wait)
        assert _login(client, password="wrong password").status_code == 401
    # A day later the misses are forgotten (made-up names do not pile up in the store).
    clock.now += timedelta(days=2)
    assert _login(client, password="wrong password").status_code == 401
    assert _login(client).status_code == 303


def _login_with(app, old_session: str | None) -> tuple[str, str]:
    """Log in from a fresh browser that carries ``old_session``; (new session id, Set-Cookie)."""
    browser = TestClient(app, follow_redirects=False)
    token = _login_token(browser)
    if old_session:
        browser.cookies.set("dkimbot_session", old_session)
    r = browser.post("/login", data={"token": token, "name": "tanaka", "password": PASSWORD, "next": "/"})
    assert r.status_code == 303
    new = r.cookies.get("dkimbot_session")
    assert new
    return new, r.headers["set-cookie"]


def _browser(app, session: str) -> TestClient:
    return TestClient(app, follow_redirects=False, cookies={"dkimbot_session": session})


def test_the_session_id_changes_at_login_and_ends_at_logout(site):
    cfg, _clock, client = site
    app = client.app
    # A session id planted before login (fixation) is not kept.
    first, cookie = _login_with(app, "planted-by-someone-else")
    assert first != "planted-by-someone-else"
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie
    assert _browser(app, first).get("/").status_code == 200
    # Logging in again with a live session makes a new id, and the old one is dead.
    second, _ = _login_with(app, first)
    assert second != first
    assert _browser(app, first).get("/").status_code == 303
    me = _browser(app, second)
    home = me.get("/")
    assert home.status_code == 200
    # Logout needs the CSRF token, then the session is gone for good.
    assert me.post("/logout", data={"csrf": "nope"}).status_code == 403
    r = me.post("/logout", data={"csrf": _csrf(home.text)})
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert _browser(app, second).get("/").status_code == 303
    # The database keeps only hashes of session ids.
    third, _ = _login_with(app, None)
    db = sqlite3.connect(cfg.state_dir / "dkimbot.sqlite3")
    stored = [row[0] for row in db.execute("SELECT token_hash FROM staff_sessions")]
    db.close()
    assert len(stored) == 1 and third not in stored and first not in stored


def test_login_needs_the_login_forms_token_and_redirects_only_locally(site):
    _cfg, _clock, client = site
    r = client.post("/login", data={"name": "tanaka", "password": PASSWORD})
    assert r.status_code == 403
    r = _login(client, next="//evil.example/steal")
    assert r.status_code == 303 and r.headers["location"] == "/"
    # A wrong password keeps where the login was going (escaped, and only a local path).
    client.cookies.clear()
    r = _login(client, password="wrong password", next="/cases/DKIM-0001")
    assert r.status_code == 401 and 'name="next" value="/cases/DKIM-0001"' in r.text
    r = _login(client, password="wrong password", next='/"><b>x')
    assert r.status_code == 401 and '"><b>' not in r.text


def test_secure_cookies_behind_a_trusted_tls_proxy_only(tmp_path):
    """The cookie gets Secure when a trusted proxy says the browser used https, or by config."""
    cfg = _config(tmp_path, trusted_proxies=["127.0.0.0/8"])
    https = {"X-Forwarded-Proto": "https"}

    def login_cookie(config: Config, peer: str, headers: dict[str, str]) -> str:
        browser = TestClient(create_app(config), follow_redirects=False, client=(peer, 50000))
        return browser.get("/login", headers=headers).headers["set-cookie"]

    assert "Secure" in login_cookie(cfg, "127.0.0.1", https)
    assert "Secure" not in login_cookie(cfg, "127.0.0.1", {})
    assert "Secure" not in login_cookie(cfg, "198.51.100.7", https)  # anyone can send the header
    assert "Secure" in login_cookie(_config(tmp_path, secure_cookies=True), "198.51.100.7", {})
    # Behind TLS the session cookie itself is Secure too (the browser speaks https to the proxy).
    _add_staff(cfg, "tanaka")
    browser = TestClient(create_app(_config(tmp_path, secure_cookies=True)), follow_redirects=False,
                         base_url="https://testserver")
    r = _login(browser)
    assert r.status_code == 303 and "Secure" in r.headers["set-cookie"]


def test_pages_render_while_a_pass_holds_the_write_lock(site):
    """Reads use a read-only connection: a pass's open write transaction does not stall them.
    Nor does the session's sliding idle limit, due here (10 minutes after login): its write
    waits 0.2 s for the lock, then is left for a later page."""
    cfg, clock, client = site
    ref = _case(cfg)
    _login(client)
    clock.now += timedelta(minutes=10)
    writer = sqlite3.connect(cfg.state_dir / "dkimbot.sqlite3", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("UPDATE cases SET facility='changing' WHERE ref=?", (ref,))
    try:
        started = time.monotonic()
        for path in ("/", f"/cases/{ref}", "/charts", "/digest"):
            r = client.get(path)
            assert r.status_code == 200, path
            assert "changing" not in r.text  # the last commit, not the open transaction
        assert time.monotonic() - started < 10  # the store's busy timeout is 30 s
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    # The lock gone, the next page slides the limit: 25 minutes later the session lives on.
    assert client.get("/").status_code == 200
    clock.now += timedelta(minutes=25)
    assert client.get("/").status_code == 200


def test_staff_accounts_from_the_command_line(tmp_path):
    cfg = _config(tmp_path)
    toml = tmp_path / "web.toml"
    toml.write_text(f'[state]\ndir = "{cfg.state_dir}"\n')

    def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "bot", "--config", str(toml), "staff", *args],
                              input=stdin, capture_output=True, text=True, timeout=60, check=False)

    assert run("add", "sato", stdin="short\n").returncode == 2  # too short: nothing stored
    assert run("add", "bad name!", stdin=PASSWORD + "\n").returncode == 2
    assert run("add", "sato", stdin=PASSWORD + "\n").returncode == 0
    assert run("add", "sato", stdin="another password\n").returncode == 1
    listed = run("list")
    assert listed.returncode == 0 and listed.stdout.startswith("sato\t")
    db = sqlite3.connect(cfg.state_dir / "dkimbot.sqlite3")
    [(stored,)] = db.execute("SELECT password_hash FROM staff WHERE name='sato'").fetchall()
    db.close()
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    client = TestClient(create_app(cfg), follow_redirects=False)
    assert _login(client, "sato").status_code == 303
    assert client.get("/").status_code == 200
    # A new password ends the sessions; so does removing the account.
    assert run("passwd", "sato", stdin="a new password here\n").returncode == 0
    assert client.get("/").status_code == 303
    assert _login(client, "sato").status_code == 401
    assert _login(client, "sato", "a new password here").status_code == 303
    assert run("remove", "sato").returncode == 0
    assert client.get("/").status_code == 303
    assert run("remove", "sato").returncode == 1
    assert "no staff accounts" in run("list").stdout
