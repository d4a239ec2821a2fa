"""Reply to answer: a facility replies 「設定しました」 and waits for the result mail.

The daemon runs as in production, a process of its own (``python -m bot daemon``), on
the tests' real servers: Dovecot (the support mailbox), BIND behind the delaying proxy
(every DNS answer 50 ms late, in a process of its own), the SMTP sink. N cases wait
for their DKIM record, which is already right in DNS, with their next scheduled check
a day away, so only the reply makes them due. The replies are appended by IMAP APPEND
at random times (a Poisson stream over ``latency_window`` seconds, the same stream in
both runs); each latency is from the APPEND's completion to the result mail (the
facility's ``dkim_active``) at the sink. Two runs on copies of one state: IMAP IDLE on,
and polling only (``[intake] idle = false``) at ``latency_poll_interval`` (the
daemon's default 60 s).
"""

from __future__ import annotations

import email.policy
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

from bench_rechecks import HOSTER, KEY_POOL, SAAS_ZONE, SELECTOR, ProxyProcess, _txt, _zone_text, preload_zones
from common import REPO, SUPPORT, Sizes

PASSWORD = "latency-secret"
# The check a reply starts, in DNS round trips one after another: the zone's NS, the
# DKIM/DMARC/apex TXT together, the SPF include, the signing proof's key (cached): the
# floor of any answer at this delay, before SMTP and the pass's own work.
ROUND_TRIPS = 3


def bot_mail_id(ref: str) -> str:
    """The Message-ID of the bot's first mail on case ``ref`` (made by ``_make_cases``)."""
    return f"<bench-{ref}@489ban.net>"


def record_mail_id(domain: str) -> str:
    return f"<record.{domain}@489ban.net>"


def reply_mail(domain: str, ref: str) -> bytes:
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["In-Reply-To"] = record_mail_id(domain)
    msg["References"] = record_mail_id(domain)
    msg["From"] = f"山田 太郎 <yamada@{domain}>"
    msg["To"] = SUPPORT
    msg["Subject"] = f"Re: 【予約番】DKIMの設定をお願いします [{ref}]"
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = make_msgid(domain=domain)
    # It answers the bot's mail (issue 11: a reply acts on a case only then).
    msg["In-Reply-To"] = msg["References"] = bot_mail_id(ref)
    msg.set_content("予約番サポート御中\n\n設定しました。ご確認をお願いいたします。\n\n山田\n", charset="utf-8")
    return msg.as_bytes()


def _config(path: Path, state: Path, dovecot: Any, user: str, smtp: Any, dns_port: int, *,
            idle: bool, poll: int) -> Path:
    path.write_text(f"""
[service]
support_address = "{SUPPORT}"
staff_cc = ["staff@489ban.net"]
sending_ips = ["203.0.113.10"]
spf_include = "_spf.{SAAS_ZONE}"

[intake]
kind = "imap"
host = "{dovecot.host}"
port = {dovecot.port}
tls = "none"
username = "{user}"
password_env = "BENCH_LATENCY_PASSWORD"
timeout = 30
idle = {"true" if idle else "false"}

[outbound]
kind = "smtp"
host = "{smtp.host}"
port = {smtp.port}
tls = "none"
timeout = 10

[dns]
nameservers = ["127.0.0.1"]
port = {dns_port}
timeout = 3.0

[schedule]
poll_interval_seconds = {poll}
check_interval_seconds = 300
digest_hour = -1

[signer]
keytable = "{state}/signer/KeyTable"
signingtable = "{state}/signer/SigningTable"
keys_dir = "{state}/signer/keys"

[state]
dir = "{state}"
""", encoding="utf-8")
    return path


def _make_cases(cfg: Any, domains: list[str], pems: list[bytes], publics: list[str]) -> list[str]:
    from bot.adapters.keys import ensure_private_dir, write_file_atomic
    from bot.flows.runtime import Bot

    now = datetime.now(UTC).replace(microsecond=0)
    bot = Bot.open(cfg)
    refs = []
    try:
        with bot.store.transaction():
            for i, domain in enumerate(domains):
                k = i % KEY_POOL
                bot.store.record_key(domain, SELECTOR, "rsa", 2048, publics[k], now)
                path = bot.keystore.path(domain, SELECTOR)
                ensure_private_dir(bot.keystore.directory)
                ensure_private_dir(path.parent)
                write_file_atomic(path, pems[k], 0o600)
                case = bot.store.create_case(
                    state="awaiting_dkim", now=now, facility=f"旅館 {i}", contact_name="山田 太郎",
                    contact_email=f"yamada@{domain}", contact_phone="03-1234-5678",
                    admin_email=f"info@{domain}", domain=domain, selector=SELECTOR, selectors=[SELECTOR],
                    requester=f"yamada@{domain}", next_check_at=now + timedelta(days=1))
                # The record mail the facility answers: a reply acts on a case only when it
                # threads onto a mail the bot sent on it (bot/core/authority.py).
                bot.store.enqueue(message_id=record_mail_id(domain), kind="request_reply", case_ids=[case.id],
                                  sender=SUPPORT, recipients=[f"yamada@{domain}"], raw=b"(sent before the run)",
                                  now=now)
                for mail in bot.store.mails_for_case(case.id):
                    bot.store.mark_sent(mail["id"], now)
                refs.append(case.ref)
                # The record mail the facility answers (sent before the benchmark starts).
                bot.store.enqueue(message_id=bot_mail_id(case.ref), kind="request_reply", case_ids=[case.id],
                                  sender=SUPPORT, recipients=[f"yamada@{domain}"], raw=b"", now=now)
            for row in bot.store.pending_mail(now):
                bot.store.mark_sent(row.id, now)
    finally:
        bot.close()
    return refs


class SinkClock:
    """Stamps each message the sink receives with the time it was first seen (10 ms)."""

    def __init__(self, smtp: Any) -> None:
        self.smtp = smtp
        self.first_seen: dict[str, float] = {}  # facility domain -> time of its first mail
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        seen = 0
        while not self._stop.wait(0.01):
            msgs = list(self.smtp.messages)
            now = time.monotonic()
            for m in msgs[seen:]:
                for rcpt in m.rcpt_tos:
                    if rcpt.startswith("yamada@"):
                        self.first_seen.setdefault(rcpt.split("@", 1)[1], now)
            seen = len(msgs)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _run_mode(sizes: Sizes, work: Path, name: str, base_state: Path, dovecot: Any, user: str, smtp: Any,
              dns_port: int, domains: list[str], refs: list[str], arrivals: list[float], *, idle: bool
              ) -> dict[str, Any]:
    state = work / f"state-{name}"
    shutil.copytree(base_state, state)
    cfg_path = _config(work / f"{name}.toml", state, dovecot, user, smtp, dns_port,
                       idle=idle, poll=sizes.latency_poll_interval)
    smtp.clear()
    log_path = work / f"{name}.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), "BENCH_LATENCY_PASSWORD": PASSWORD}
    with open(log_path, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "bot", "--config", str(cfg_path), "daemon"],
                                stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=str(work))
    clock = SinkClock(smtp)
    appended: dict[str, float] = {}
    try:
        ready = "new mail starts a pass" if idle else "daemon started"
        deadline = time.monotonic() + 60
        while ready not in log_path.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the daemon did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.05)
        time.sleep(2.0)  # its start-up pass is over: from here only replies make work
        t0 = time.monotonic()
        for at, domain, ref in zip(arrivals, domains, refs, strict=True):
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            dovecot.append(user, reply_mail(domain, ref))
            appended[domain] = time.monotonic()
        deadline = time.monotonic() + 2 * sizes.latency_poll_interval + 60
        while len(clock.first_seen) < len(domains) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        clock.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
    latencies = sorted(clock.first_seen[d] - appended[d] for d in domains if d in clock.first_seen and d in appended)
    q = statistics.quantiles(latencies, n=20, method="inclusive") if len(latencies) >= 2 else latencies * 19
    return {"replies": len(domains), "answered": len(latencies),
            "p50": statistics.median(latencies) if latencies else None, "p95": q[18] if q else None,
            "max": max(latencies) if latencies else None, "latencies": latencies}


def run(sizes: Sizes, work: Path) -> dict[str, Any]:
    import servers

    from bot.adapters.keys import generate_private_key, public_b64_of, unencrypted_pkcs8
    from bot.config import load_config

    n = sizes.latency_replies
    os.environ["BENCH_LATENCY_PASSWORD"] = PASSWORD  # for load_config here; the daemons get it too
    keys = [generate_private_key("rsa", 2048) for _ in range(KEY_POOL)]
    pems = [unencrypted_pkcs8(k) for k in keys]
    publics = [public_b64_of(k) for k in keys]
    domains = [f"reply{i:03d}.test" for i in range(n)]
    zones = {d: _zone_text(d, [
        _txt(f"{SELECTOR}._domainkey.{d}", f"v=DKIM1; k=rsa; p={publics[i % KEY_POOL]}"),
        _txt(d, f"v=spf1 include:_spf.{SAAS_ZONE} ~all")]) for i, d in enumerate(domains)}
    zones[HOSTER] = _zone_text(HOSTER, [f"ns1.{HOSTER}. IN A 127.0.0.1", f"ns2.{HOSTER}. IN A 127.0.0.2"])
    zones[SAAS_ZONE] = _zone_text(SAAS_ZONE, [_txt(f"_spf.{SAAS_ZONE}", "v=spf1 ip4:203.0.113.10 -all")])
    rng = random.Random(16)
    arrivals, t = [], 0.0
    for _ in range(n):
        arrivals.append(t)
        t += rng.expovariate(n / sizes.latency_window)

    bind = servers.Bind(start=False)
    preload_zones(bind, zones)
    proxies: ProxyProcess | None = None
    dovecot = smtp = None
    try:
        bind.start()
        port = servers.free_port(bind.addresses)
        named = {addr: inst.port for addr, inst in bind._instances.items()}
        proxies = ProxyProcess([(addr, "127.0.0.1", named[addr]) for addr in bind.addresses], port,
                               sizes.dns_delay)
        dovecot = servers.Dovecot(users={"idle@489ban.net": PASSWORD, "poll@489ban.net": PASSWORD})
        smtp = servers.SmtpSink()
        base = work / "state"
        base_cfg = load_config(_config(work / "base.toml", base, dovecot, "idle@489ban.net", smtp, port,
                                       idle=True, poll=sizes.latency_poll_interval))
        refs = _make_cases(base_cfg, domains, pems, publics)
        results = {
            "idle": _run_mode(sizes, work, "idle", base, dovecot, "idle@489ban.net", smtp, port,
                              domains, refs, arrivals, idle=True),
            "polling": _run_mode(sizes, work, "polling", base, dovecot, "poll@489ban.net", smtp, port,
                                 domains, refs, arrivals, idle=False),
        }
    finally:
        for server in (smtp, dovecot):
            if server is not None:
                server.close()
        if proxies is not None:
            proxies.close()
        bind.close()
    return {**results, "delay": sizes.dns_delay, "poll_interval": sizes.latency_poll_interval,
            "window": sizes.latency_window, "round_trips": ROUND_TRIPS,
            "floor_seconds": ROUND_TRIPS * sizes.dns_delay}
