"""The staff site under load of data: how long the case list takes with 10,000 cases.

Two state directories are filled through the store (the same mix of states, diagnoses
and events in both): ``web_cases`` cases (10,000) and a baseline of 100. Each gets the
real ``dkimbot web`` (uvicorn, a process of its own); a staff account logs in over HTTP
and the pages are fetched over loopback, interleaved between the two sites, median of
``web_repeats``. Figures: the first page of the list (stuck first, 100 rows), the list
filtered by state, a search, the last page, the charts and a case page; each against
the same page of the 100-case site (the ratio shows what the 10,000 cost) and the list
against the issue's 300 ms.
"""

from __future__ import annotations

import http.client
import random
import re
import socket
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from common import REPO, Sizes

STATES = (("awaiting_dkim", 40), ("awaiting_dmarc", 12), ("awaiting_final", 5), ("completed", 30),
          ("escalated", 4), ("needs_info", 4), ("cancelled", 2), ("rejected", 2), ("dkim_lost", 1))
NOTICES = {
    "awaiting_dkim": ["dkim_missing|dkim:dkim_not_published", "dkim_wrong|dkim:dkim_truncated",
                      "dkim_wrong|dkim:dkim_doubled_domain", "dkim_wrong|dkim:dkim_quoted", None],
    "awaiting_dmarc": ["dmarc_missing|dmarc:dmarc_not_published", "dmarc_wrong|dmarc:dmarc_syntax"],
    "awaiting_final": ["final_failed|spf:spf_not_authorized"],
    "escalated": ["dkim_missing|dkim:dkim_not_published"],
}
PATHS = {"awaiting_dkim": [], "needs_info": [], "rejected": [], "awaiting_dmarc": ["awaiting_dmarc"],
         "awaiting_final": ["awaiting_dmarc", "awaiting_final"], "completed": ["awaiting_dmarc", "completed"],
         "escalated": ["escalated"], "cancelled": ["cancelled"],
         "dkim_lost": ["awaiting_dmarc", "completed", "dkim_lost"]}
FACILITIES = ("ホテル", "旅館", "温泉宿", "ペンション", "リゾート", "民宿")
PLACES = ("さくら", "松風", "富士見", "海辺", "山の湯", "白樺", "月見", "花水木")
PASSWORD = "benchmark password"


def _dns_evidence(domain: str, selector: str, code: str | None) -> dict[str, Any]:
    diag = [{"code": code, "message": f"{selector}._domainkey.{domain} の DKIM レコードを確認してください。",
             "severity": "error", "detail": {}}] if code else []
    return {"dkim": {"ok": not code, "diagnoses": diag,
                     "found": {"name": f"{selector}._domainkey.{domain}",
                               "servers": {"192.0.2.1": [], "192.0.2.2": []}}},
            "dmarc": {"ok": False, "diagnoses": [], "found": {}},
            "spf": {"ok": True, "diagnoses": [], "found": {}},
            "alignment": {"ok": True, "diagnoses": [], "found": {}}}


def fill(state_dir: Path, cases: int, now: datetime, seed: int = 7) -> None:
    """``cases`` cases with events, made through the store as the bot would record them."""
    from bot.adapters.store import Store
    from bot.web.accounts import hash_password

    rng = random.Random(seed)
    population = [s for s, weight in STATES for _ in range(weight)]
    store = Store(state_dir / "dkimbot.sqlite3")
    try:
        with store.transaction():
            store.add_staff("bench", hash_password(PASSWORD), now)
            for i in range(cases):
                state = rng.choice(population)
                created = now - timedelta(days=rng.uniform(0, 84))
                since = created + (now - created) * rng.uniform(0, 1)
                domain = f"hotel-{i:05d}.example.jp"
                selector = "yoyakuban202611"
                notice = rng.choice(NOTICES.get(state, [None]))
                initial = state if state in ("needs_info", "rejected") else "awaiting_dkim"
                case = store.create_case(
                    state=initial, now=created,
                    facility=f"{rng.choice(FACILITIES)}{rng.choice(PLACES)}{i}", domain=domain,
                    selector=selector, selectors=[selector], requester=f"info@{domain}",
                    contact_email=f"info@{domain}")
                store.add_event(case.id, created, "key_assigned", None, initial, {"domain": domain})
                code = notice.partition("|")[2].partition(":")[2] if notice else None
                store.add_event(case.id, created + timedelta(hours=1), "check", initial, initial,
                                {"event": "dkim_wrong", "dns": _dns_evidence(domain, selector, code)})
                # Through the moves the bot makes (Store.transition writes each event).
                path = PATHS[state]
                current = initial
                for step, to_state in enumerate(path, 1):
                    at = since if step == len(path) else created + (since - created) * step / len(path)
                    store.transition(case.id, to_state, at, expected_state=current, event="transition",
                                     resume_state="awaiting_dkim" if to_state == "escalated" else None)
                    current = to_state
                store.update_case(case.id, since, last_notice=notice,
                                  next_check_at=now + timedelta(minutes=rng.uniform(-10, 600)))
    finally:
        store.close()


class Site:
    """``dkimbot web`` on a state directory, and one logged-in HTTP client for it."""

    def __init__(self, state_dir: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        config = state_dir.parent / f"{state_dir.name}.toml"
        config.write_text(f'[state]\ndir = "{state_dir}"\n')
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bot", "--config", str(config), "web", "--port", str(self.port)],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.cookie = ""
        deadline = time.monotonic() + 30
        while True:
            try:
                self.get("/login")
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("dkimbot web did not start") from None
                time.sleep(0.1)
        self.login()

    def request(self, method: str, path: str, body: str = "", cookie: str = "") -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            headers = {"Cookie": cookie or self.cookie}
            if body:
                headers["Content-Type"] = "application/x-www-form-urlencoded"
            conn.request(method, path, body=body.encode(), headers=headers)
            response = conn.getresponse()
            cookies = "; ".join(v.split(";", 1)[0] for k, v in response.getheaders() if k.lower() == "set-cookie")
            return response.status, {"set-cookie": cookies}, response.read()
        finally:
            conn.close()

    def get(self, path: str) -> bytes:
        status, _, body = self.request("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status}")
        return body

    def login(self) -> None:
        from urllib.parse import urlencode

        _, headers, page = self.request("GET", "/login")
        token = re.search(rb'name="token" value="([^"]+)"', page)
        assert token
        form = urlencode({"token": token.group(1).decode(), "name": "bench", "password": PASSWORD, "next": "/"})
        status, headers, _ = self.request("POST", "/login", form, cookie=headers["set-cookie"])
        if status != 303:
            raise RuntimeError(f"login: {status}")
        self.cookie = headers["set-cookie"]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


def _timed(site: Site, path: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    if path == "/login":  # the page a browser without a session gets
        status, _, body = site.request("GET", path, cookie="none=1")
        assert status == 200
    else:
        body = site.get(path)
    return time.perf_counter() - t0, len(body)


def run(sizes: Sizes, work: Path) -> dict[str, Any]:
    now = datetime.now(UTC)
    big_dir, small_dir = work / "big" / "state", work / "small" / "state"
    for d in (big_dir, small_dir):
        d.parent.mkdir(parents=True)
    t0 = time.perf_counter()
    fill(big_dir, sizes.web_cases, now)
    fill_seconds = time.perf_counter() - t0
    fill(small_dir, 100, now)
    big, small = Site(big_dir), Site(small_dir)
    pages = {"list": "/", "list_filtered": "/?state=awaiting_dkim", "search": "/?q=%E3%81%95%E3%81%8F%E3%82%89",
             "charts": "/charts", "case": "/cases/DKIM-0050", "login": "/login"}
    last_page = -(-sizes.web_cases // 100)
    try:
        times: dict[str, list[float]] = {f"{side}_{name}": [] for side in ("big", "small") for name in pages}
        times["big_last_page"] = []
        sizes_bytes: dict[str, int] = {}
        for site in (big, small):  # warm up: first requests import and compile templates
            for path in pages.values():
                _timed(site, path)
        for _ in range(sizes.web_repeats):
            for name, path in pages.items():
                for side, site in (("big", big), ("small", small)):
                    seconds, length = _timed(site, path)
                    times[f"{side}_{name}"].append(seconds)
                    sizes_bytes[f"{side}_{name}"] = length
            seconds, _ = _timed(big, f"/?page={last_page}")
            times["big_last_page"].append(seconds)
        rows_on_page = big.get("/").count(b'<a href="/cases/DKIM-')
    finally:
        big.close()
        small.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "cases": sizes.web_cases,
        "baseline_cases": 100,
        "repeats": sizes.web_repeats,
        "fill_seconds": fill_seconds,
        "rows_on_page": rows_on_page,
        "list_ms": med["big_list"] * 1000,
        "list_baseline_ms": med["small_list"] * 1000,
        "list_ratio": med["big_list"] / med["small_list"],
        "list_max_ms": max(times["big_list"]) * 1000,
        "list_filtered_ms": med["big_list_filtered"] * 1000,
        "search_ms": med["big_search"] * 1000,
        "last_page_ms": med["big_last_page"] * 1000,
        "charts_ms": med["big_charts"] * 1000,
        "charts_baseline_ms": med["small_charts"] * 1000,
        "case_ms": med["big_case"] * 1000,
        "case_baseline_ms": med["small_case"] * 1000,
        "login_ms": med["big_login"] * 1000,
        "list_bytes": sizes_bytes["big_list"],
        "target_met": med["big_list"] < 0.300,
    }
