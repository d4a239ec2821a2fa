"""An idle ``dkimbot run --once`` imports nothing it does not need.

A cron pass runs every few minutes and almost always has nothing to do; what it imports
is most of its cost (README "Benchmarks", start-up). ``bot/app/jobs.py`` imports a flow
only when the store or the config says the flow has work, and the adapters import their
libraries at first use. This runs the real command, as cron does, on the embedded
default config (an empty Maildir inbox, an outbox directory) in a fresh directory, and
reads ``python -X importtime``: every module the process imported, at any depth.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Libraries that cost milliseconds to tens of milliseconds each and that a pass with
# nothing to do never calls (benchmarks/bench_startup.py reports the same kind).
HEAVY_LIBRARIES = (
    "dkim", "dns", "jinja2", "imapclient", "apscheduler", "email_validator", "publicsuffixlist",
    "nacl", "cryptography", "trio", "httpcore", "defusedxml", "spf", "smtplib", "ssl", "imaplib",
    "email.parser", "html.parser", "zoneinfo", "concurrent.futures", "uuid", "csv",
)

# The parts of dkimbot that only a pass with such work needs: reading a mail, writing
# one, sending, checking DNS, the watch, rotations, proofs, confirmations, DMARC reports.
WORK_ONLY = (
    "bot.core.request", "bot.core.mailtext", "bot.core.requestplan", "bot.core.replies",
    "bot.core.dnsresults", "bot.core.dmarcxml", "bot.core.dmarcmail", "bot.core.dmarcstats",
    "bot.core.authresults", "bot.checks", "bot.adapters.mailout", "bot.adapters.dnsclient",
    "bot.adapters.keys", "bot.adapters.signer", "bot.adapters.reportbox", "bot.adapters.registry",
    "bot.flows.onboarding", "bot.flows.prepare", "bot.flows.compose", "bot.flows.delivery",
    "bot.flows.rechecks", "bot.flows.monitor", "bot.flows.rotation", "bot.flows.proof",
    "bot.flows.confirm", "bot.flows.managed", "bot.flows.dmarcnotify", "bot.flows.dmarcintake",
    "bot.app.show", "bot.app.actions",
)


def imported(code: list[str], cwd: Path) -> set[str]:
    """Every module the Python command ``code`` imported (``-X importtime``)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("PYTHONSTARTUP", None)
    proc = subprocess.run([sys.executable, "-X", "importtime", *code], cwd=cwd, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines()
            if line.startswith("import time:") and "self [us]" not in line}


def unwanted(modules: set[str]) -> list[str]:
    """The heavy libraries and work-only dkimbot modules among ``modules`` (a package
    counts with everything under it)."""
    names = HEAVY_LIBRARIES + WORK_ONLY
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in names))


def test_an_idle_run_once_imports_only_what_it_needs(tmp_path: Path) -> None:
    run_once = ["-m", "bot", "run", "--once"]
    imported(run_once, tmp_path)  # the first pass makes ./state (the embedded default's)
    assert (tmp_path / "state" / "dkimbot.sqlite3").exists()
    modules = imported(run_once, tmp_path)
    assert "bot.app.jobs" in modules and "bot.adapters.store" in modules  # it really ran a pass
    assert unwanted(modules) == []


# Cases that wait, but for nothing due now: a request waiting for its DKIM record (its
# next check tomorrow, its first reminder days away), one waiting for the facility's
# answer, and a completed (adopted) domain whose daily watch is tomorrow.
WAITING_CASES = """
from datetime import UTC, datetime, timedelta
from bot.config import load_config
from bot.flows.runtime import Bot
bot = Bot.open(load_config(None))
now, later = datetime.now(UTC), datetime.now(UTC) + timedelta(days=1)
with bot.store.transaction():
    bot.store.create_case(state="awaiting_dkim", now=now, domain="hotel-a.example", selector="s1",
                          next_check_at=later)
    bot.store.create_case(state="needs_info", now=now, next_check_at=later)
bot.store.adopt_case(domain="hotel-b.example", keys=[("s2", "rsa", 2048, "MIIB")], now=now,
                     next_check_at=later, detail={})
assert len(bot.store.list_cases()) == 3
bot.close()
"""


def test_a_pass_with_cases_but_nothing_due_imports_no_flow(tmp_path: Path) -> None:
    imported(["-m", "bot", "run", "--once"], tmp_path)
    imported(["-c", WAITING_CASES], tmp_path)
    modules = imported(["-m", "bot", "run", "--once"], tmp_path)
    assert unwanted(modules) == []


def test_the_check_sees_a_heavy_import(tmp_path: Path) -> None:
    # The same idle pass after importing what a busy one would: the check must name it.
    busy = ["-c", "import jinja2, bot.flows.compose; from bot.app.cli import main; "
                  "raise SystemExit(main(['run', '--once']))"]
    found = unwanted(imported(busy, tmp_path))
    assert "jinja2" in found and "bot.flows.compose" in found and "bot.adapters.mailout" in found
