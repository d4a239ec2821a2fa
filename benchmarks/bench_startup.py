"""Start-up: `dkimbot run --once` with nothing to do, against `python -c pass` and
against the same command of an earlier commit.

The embedded default config (a Maildir inbox, an outbox directory) in a fresh working
directory per tree, with bytecode compiled once, as an installed dkimbot has it
(``PYTHONPYCACHEPREFIX`` under the work directory; ``PYTHONDONTWRITEBYTECODE`` dropped).
A first run creates the state and the bytecode, then the commands run interleaved
(``python -c pass``, the baseline commit's ``run --once``, this tree's, the two trees'
order swapped every round so neither always follows the other) and the medians are
compared. The baseline commit's ``bot/`` is unpacked with ``git archive`` (default
0423efe, the flat ``bot/`` before the layered packages; ``Sizes.startup_baseline``, e.g.
``DKIMBOT_BENCH_SIZES='{"startup_baseline": "1b0a574"}'``). ``python -X importtime`` of
one idle run per tree lists which heavy libraries it loaded (an idle cron pass should
load none) and how many modules.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import REPO, Sizes

# Libraries that cost tens of milliseconds each and that an idle pass does not need
# (tests/test_idle_imports.py holds a longer list, with dkimbot's own work-only modules).
HEAVY = ("dkim", "dns.query", "dns.resolver", "jinja2", "imapclient", "apscheduler", "email_validator",
         "publicsuffixlist", "nacl", "cryptography.hazmat.primitives.asymmetric.rsa", "trio", "httpcore2",
         "defusedxml", "smtplib", "ssl", "email.parser")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(argv: list[str], cwd: Path, env: dict[str, str], cpu: list[float] | None = None) -> float:
    """Wall seconds of one command; its CPU seconds (user + system) appended to ``cpu``,
    which a busy machine disturbs less than the wall time."""
    t0, c0 = time.perf_counter(), _children_cpu()
    proc = subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    seconds = time.perf_counter() - t0
    if cpu is not None:
        cpu.append(_children_cpu() - c0)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} exited {proc.returncode}: {proc.stderr.decode(errors='replace')[-500:]}")
    return seconds


def import_profile(cwd: Path, env: dict[str, str]) -> tuple[list[str], float, list[tuple[str, float]], int]:
    """(heavy modules imported, total import ms, the 8 costliest top-level imports, modules)."""
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
    return heavy, total_ms, top, len(modules)


def baseline_tree(commit: str, work: Path) -> Path | str:
    """The commit's ``bot/`` (and what it reads beside it) unpacked under ``work``, or why not."""
    dest = work / f"baseline-{commit}"
    dest.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "bot", "templates", "pyproject.toml"],
                             capture_output=True, check=False)
    if archive.returncode != 0:  # a copy without history (an sdist, a shallow clone)
        return f"no baseline: git archive {commit}: {archive.stderr.decode(errors='replace').strip()[:200]}"
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def _env(tree: Path, pycache: Path) -> dict[str, str]:
    """As cron runs it from an installed tree: with compiled bytecode (a shell or CI with
    PYTHONDONTWRITEBYTECODE would compile every module on every run and time the
    compiler), kept under the work directory rather than in the checkout."""
    env = dict(os.environ, PYTHONPATH=str(tree) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYTHONPYCACHEPREFIX=str(pycache))
    env.pop("PYTHONSTARTUP", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def run(sizes: Sizes, work: Path) -> dict[str, Any]:
    bot_cmd = [sys.executable, "-m", "bot", "run", "--once"]
    py_cmd = [sys.executable, "-c", "pass"]
    pycache = work / "pycache"
    trees: dict[str, tuple[Path, dict[str, str]]] = {"this": (work / "this", _env(REPO, pycache))}
    base = baseline_tree(sizes.startup_baseline, work) if sizes.startup_baseline else "no baseline asked for"
    if isinstance(base, Path):
        trees["baseline"] = (work / "base", _env(base, pycache))
    for cwd, env in trees.values():
        cwd.mkdir()
        _run(bot_cmd, cwd, env)  # creates ./state (the embedded default's state dir) and the bytecode
    times: dict[str, list[float]] = {name: [] for name in trees}
    cpu: dict[str, list[float]] = {name: [] for name in trees}
    py_times = []
    load_before = os.getloadavg()[0]
    for i in range(sizes.startup_repeats):
        py_times.append(_run(py_cmd, work, trees["this"][1]))
        for name in (list(trees) if i % 2 == 0 else list(reversed(trees))):
            cwd, env = trees[name]
            times[name].append(_run(bot_cmd, cwd, env, cpu[name]))
    load_after = os.getloadavg()[0]
    heavy, import_ms, top, modules = import_profile(*trees["this"])
    b, p = statistics.median(times["this"]), statistics.median(py_times)
    out: dict[str, Any] = {
        "run_once_ms": b * 1000, "python_ms": p * 1000, "ratio": b / p,
        "run_once_cpu_ms": statistics.median(cpu["this"]) * 1000,
        "heavy_imported": heavy, "import_ms": import_ms, "top_imports": top, "modules_imported": modules,
        "repeats": sizes.startup_repeats, "load": [load_before, load_after],
        "target_met": not heavy, "baseline": sizes.startup_baseline,
    }
    if "baseline" in trees:
        base_heavy, _ms, _top, base_modules = import_profile(*trees["baseline"])
        bb = statistics.median(times["baseline"])
        bc = statistics.median(cpu["baseline"])
        out.update(baseline_ms=bb * 1000, vs_baseline=b / bb, baseline_heavy=base_heavy,
                   baseline_modules=base_modules, baseline_cpu_ms=bc * 1000,
                   cpu_vs_baseline=statistics.median(cpu["this"]) / bc)
    else:
        out["baseline_missing"] = base
    return out
