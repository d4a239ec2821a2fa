"""Start-up: `dkimbot run --once` with nothing to do, against `python -c pass`.

The embedded default config (a Maildir inbox, an outbox directory) in a fresh working
directory; a first run creates the state, then both commands run alternately and the
medians are compared. ``python -X importtime`` of one idle run lists which heavy
libraries it loaded: an idle cron pass should load none of them.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import REPO, Sizes

# Libraries that cost tens of milliseconds each and that an idle pass does not need.
HEAVY = ("dkim", "dns.query", "dns.resolver", "jinja2", "imapclient", "apscheduler", "email_validator",
         "publicsuffixlist", "nacl", "cryptography.hazmat.primitives.asymmetric.rsa", "trio", "httpcore2")


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} exited {proc.returncode}: {proc.stderr.decode(errors='replace')[-500:]}")
    return seconds


def import_profile(cwd: Path, env: dict[str, str]) -> tuple[list[str], float, list[tuple[str, float]]]:
    """(heavy modules imported, total import ms, the 8 costliest top-level imports)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "bot", "run", "--once"], cwd=cwd,
                          env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    modules: dict[str, tuple[int, int, int]] = {}  # name -> (self us, cumulative us, depth)
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line or "self [us]" in line:
            continue
        self_part, cum_part, raw_name = line.split("|", 2)
        self_us = int(self_part.split(":")[1])
        cum_us = int(cum_part)
        depth = (len(raw_name) - len(raw_name.lstrip(" ")) - 1) // 2  # two spaces per level
        name = raw_name.strip()
        modules[name] = (self_us, cum_us, depth)
    heavy = [h for h in HEAVY if h in modules]
    total_ms = sum(s for s, _c, _d in modules.values()) / 1000
    top = sorted(((n, c / 1000) for n, (_s, c, d) in modules.items() if d == 0), key=lambda x: -x[1])[:8]
    return heavy, total_ms, top


def run(sizes: Sizes, work: Path) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("PYTHONSTARTUP", None)
    bot_cmd = [sys.executable, "-m", "bot", "run", "--once"]
    py_cmd = [sys.executable, "-c", "pass"]
    _run(bot_cmd, work, env)  # creates ./state (the embedded default's state dir)
    bot_times, py_times = [], []
    for _ in range(sizes.startup_repeats):
        py_times.append(_run(py_cmd, work, env))
        bot_times.append(_run(bot_cmd, work, env))
    heavy, import_ms, top = import_profile(work, env)
    b, p = statistics.median(bot_times), statistics.median(py_times)
    return {
        "run_once_ms": b * 1000, "python_ms": p * 1000, "ratio": b / p,
        "heavy_imported": heavy, "import_ms": import_ms, "top_imports": top,
        "target_met": not heavy,
    }
