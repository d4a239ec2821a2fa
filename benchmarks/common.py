"""Shared pieces of the benchmarks: sizes, the real servers, mail generators, meters.

Everything here is for measuring only; nothing in ``bot/`` imports it. The servers are
the tests' own (``tests/servers.py``), so a benchmark runs against exactly what the
test suite runs against: Dovecot, BIND 9, the SMTP sink and the delaying DNS proxy,
all on 127.0.0.0/8.
"""

from __future__ import annotations

import email.policy
import imaplib
import os
import random
import socket
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any, Self

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # `import servers`, as tests/conftest.py does

SUPPORT = "support@489ban.net"
PASSWORD = "bench-secret"


# --------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class Sizes:
    """How big each scenario is; ``--quick`` shrinks everything for a sanity run."""

    big_mailbox: int = 20_000
    small_mailbox: int = 10
    idle_repeats: int = 7
    new_unrelated: int = 5_000
    new_requests: int = 50
    recheck_cases: int = 5_000
    dns_delay: float = 0.05
    checkdmarc_domains: int = 40
    latency_replies: int = 50
    latency_window: float = 120.0   # the replies arrive at random over this many seconds
    latency_poll_interval: int = 60  # the daemon's default poll_interval_seconds
    startup_repeats: int = 30
    # A commit whose idle `run --once` is timed interleaved with this tree's (bench_startup.py);
    # 0423efe: the flat bot/ just before the layered packages (issue 10). "" for none.
    startup_baseline: str = "0423efe"
    key_repeats: dict[str, int] = field(default_factory=lambda: {
        "rsa1024": 10, "rsa2048": 10, "rsa3072": 5, "rsa4096": 3, "ed25519": 50})
    dmarc_reports: int = 2_000        # DMARC aggregate reports (bench_dmarc.py); big ones: 1/20 of it
    dmarc_records: int = 10
    dmarc_big_records: int = 1_000
    web_cases: int = 10_000
    web_repeats: int = 15


FULL = Sizes()
QUICK = Sizes(big_mailbox=400, small_mailbox=10, idle_repeats=3, new_unrelated=200, new_requests=5,
              recheck_cases=60, startup_repeats=3, startup_baseline="HEAD", checkdmarc_domains=5,
              latency_replies=4, latency_window=6.0, latency_poll_interval=5,
              key_repeats={"rsa1024": 1, "rsa2048": 1, "rsa3072": 1, "rsa4096": 1, "ed25519": 3},
              dmarc_reports=100, dmarc_records=10, dmarc_big_records=200,
              web_cases=300, web_repeats=3)


# --------------------------------------------------------------------------- meters


def median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of this process's RSS (Linux ≥ 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_mib(field_name: str = "VmHWM") -> float:
    """VmHWM (peak RSS since the last reset) or VmRSS of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class ImapMeter:
    """Counts what dkimbot's IMAP client receives, by patching imaplib (benchmark only).

    imapclient speaks through imaplib.IMAP4, whose ``readline`` (lines) and ``read``
    (literals) see every byte the server sends; ``send`` sees every command line
    (imapclient writes its commands through it), so full-body fetches
    (``BODY.PEEK[]``) are counted apart from header fetches.
    """

    def __init__(self) -> None:
        self.bytes_in = 0
        self.commands: dict[str, int] = {}
        self.body_fetches = 0
        self._saved: dict[str, Any] = {}

    def __enter__(self) -> Self:
        meter = self
        orig_read, orig_readline, orig_send = imaplib.IMAP4.read, imaplib.IMAP4.readline, imaplib.IMAP4.send
        self._saved = {"read": orig_read, "readline": orig_readline, "send": orig_send}

        def read(self: imaplib.IMAP4, size: int) -> bytes:
            data = orig_read(self, size)
            meter.bytes_in += len(data)
            return data

        def readline(self: imaplib.IMAP4) -> bytes:
            data = orig_readline(self)
            meter.bytes_in += len(data)
            return data

        def send(self: imaplib.IMAP4, data: bytes) -> None:
            # imapclient writes each command line itself through IMAP4.send.
            words = data.split(b" ", 3)
            if len(words) >= 2 and words[0][:1].isalpha() and not data.startswith(b"\r"):
                name = (words[2] if words[1].upper() == b"UID" and len(words) > 2 else words[1]).upper()
                meter.commands[name.decode(errors="replace")] = meter.commands.get(name.decode(errors="replace"), 0) + 1
                if name == b"FETCH" and b"BODY.PEEK[]" in data.upper():
                    meter.body_fetches += 1
            return orig_send(self, data)

        imaplib.IMAP4.read, imaplib.IMAP4.readline, imaplib.IMAP4.send = read, readline, send
        return self

    def __exit__(self, *exc: object) -> None:
        for name, value in self._saved.items():
            setattr(imaplib.IMAP4, name, value)


# --------------------------------------------------------------------------- mail


_UNRELATED_SUBJECTS = (
    "宿泊予約の変更について", "【予約番】ご請求書送付のお知らせ", "Re: 3月の団体予約", "お問い合わせ（料金プラン）",
    "領収書の再発行のお願い", "システムメンテナンスのお知らせ", "Re: Re: キャンセル料について",
    "Undelivered Mail Returned to Sender", "Weekly newsletter", "管理画面にログインできません",
)


def unrelated_mail(rng: random.Random, i: int) -> bytes:
    """Mail a support mailbox really gets: guests, invoices, bounces, newsletters.

    Sizes vary like a real mailbox: mostly short text, some HTML, one in twenty with a
    PDF-sized attachment (which is what makes fetching bodies needlessly expensive).
    """
    msg = EmailMessage(policy=email.policy.SMTP)
    kind = rng.random()
    msg["From"] = f"guest{i}@example-{i % 97}.org"
    msg["To"] = SUPPORT
    msg["Subject"] = _UNRELATED_SUBJECTS[i % len(_UNRELATED_SUBJECTS)]
    msg["Date"] = format_datetime(datetime(2024, 1, 1, tzinfo=UTC) + timedelta(minutes=i))
    msg["Message-ID"] = make_msgid(idstring=f"u{i}", domain=f"example-{i % 97}.org")
    if i % 10 == 2:  # a reply to a thread the bot never took part in
        msg["In-Reply-To"] = f"<thread{i}@example-{i % 97}.org>"
        msg["References"] = f"<thread{i}@example-{i % 97}.org>"
    if i % 10 == 8:
        msg["List-Id"] = "<news.example.org>"
        msg["Precedence"] = "bulk"
    body = "いつもお世話になっております。\n" + "ご確認のほど、よろしくお願いいたします。\n" * rng.randint(3, 40)
    msg.set_content(body, charset="utf-8")
    if kind > 0.75:
        msg.add_alternative(f"<html><body><p>{body.replace(chr(10), '<br>')}</p>{'<p>&nbsp;</p>' * 300}</body></html>",
                            subtype="html", charset="utf-8")
    if kind > 0.95:
        msg.add_attachment(rng.randbytes(60_000), maintype="application", subtype="pdf", filename="invoice.pdf")
    return msg.as_bytes()


def request_mail(domain: str, facility: str, i: int) -> bytes:
    """A request as the help page asks for it (ISO-2022-JP, the five fields)."""
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = f"山田 太郎 <yamada@{domain}>"
    msg["To"] = SUPPORT
    msg["Subject"] = "DKIM、DMARC設定希望"
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = make_msgid(idstring=f"req{i}", domain=domain)
    msg.set_content(
        "予約番サポート御中\n\nお世話になっております。\n\n"
        f"[施設名]\n{facility}\n[担当者様のお名前]\n山田 太郎\n"
        f"[担当者様のメールアドレス]\nyamada@{domain}\n[担当者様の電話番号]\n03-1234-5678\n"
        f"[予約番で使用する管理用メールアドレス]\ninfo@{domain}\n\nよろしくお願いいたします。\n",
        charset="iso-2022-jp",
    )
    return msg.as_bytes()


def fill_maildir(dovecot: Any, user: str, messages: Iterator[bytes]) -> tuple[int, int]:
    """Write messages straight into the user's Maildir ``new/`` (as the mail user).

    20,000 IMAP APPENDs over one connection take over a minute (≈3.7 ms each here);
    files written before Dovecot first opens the folder take a second or two, and
    Dovecot indexes them at the first SELECT exactly as if an MTA had delivered them.
    Returns (count, total bytes).
    """
    home = dovecot.mail_root / user
    maildir = home / "Maildir"
    uid, gid = dovecot._uid, dovecot._gid  # the mail user Dovecot runs the mailbox as
    for sub in ("", "cur", "new", "tmp"):
        d = maildir / sub
        d.mkdir(parents=True, exist_ok=True)
        os.chown(d, uid, gid)
        d.chmod(0o700)
    count = total = 0
    host = socket.gethostname()
    base = int(time.time())
    for raw in messages:
        count += 1
        total += len(raw)
        path = maildir / "new" / f"{base}.M{count}P{os.getpid()}.{host},S={len(raw)}"
        with open(path, "wb") as fh:
            fh.write(raw)
        os.chown(path, uid, gid)
    return count, total


def imap_config(path: Path, state: Path, dovecot: Any, user: str, *, dns: tuple[str, int] | None = None,
                smtp: Any = None, extra: str = "") -> Path:
    """A dkimbot TOML for one benchmark bot (password via $BENCH_IMAP_PASSWORD)."""
    outbound = (f'kind = "smtp"\nhost = "{smtp.host}"\nport = {smtp.port}\ntls = "none"\ntimeout = 10\n'
                if smtp else 'kind = "directory"\n')
    dns_part = f'nameservers = ["{dns[0]}"]\nport = {dns[1]}\ntimeout = 2.0\n' if dns else 'nameservers = ["127.0.0.1"]\n'
    path.write_text(f"""
[service]
support_address = "{SUPPORT}"
staff_cc = ["staff@489ban.net"]

[intake]
kind = "imap"
host = "{dovecot.host}"
port = {dovecot.port}
tls = "none"
username = "{user}"
password_env = "BENCH_IMAP_PASSWORD"
timeout = 30

[outbound]
{outbound}
[dns]
{dns_part}
{extra}
[state]
dir = "{state}"
""", encoding="utf-8")
    os.environ["BENCH_IMAP_PASSWORD"] = PASSWORD
    return path


@contextmanager
def quiet_logging() -> Iterator[None]:
    """The bot logs every message and transition at INFO: keep the table readable."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    yield
