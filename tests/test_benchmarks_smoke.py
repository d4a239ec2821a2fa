"""The benchmark runner still runs (CI does not run the benchmarks themselves).

`benchmarks/run.py --quick` with every scenario against the real servers; no timing is
asserted, only that each scenario finished and the table has its rows. A scenario that
raises (an interface it uses changed) shows up as a FAILED row and a non-zero exit.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.servers

REPO = Path(__file__).resolve().parent.parent


def test_quick_benchmark_run_prints_every_row(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick", "--json", str(out)],
        capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = proc.stdout
    for figure in ("idle pass", "catch-up pass, bodies fetched", "first pass", "recheck pass",
                   "peak DNS queries in flight", "`dkimbot run --once`", "vs the same of HEAD (interleaved)",
                   "key generation rsa2048",
                   "two facilities of one domain", "DMARC reports, 10 records each",
                   "staff site case list", "IMAP IDLE, p50 / p95", "polling every",
                   "DNS queries per domain", "CPU per case", "checkdmarc SPF+DMARC"):
        assert figure in table, f"no {figure!r} row in:\n{table}"
    assert "FAILED" not in table
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"idle", "first_pass", "rechecks", "latency", "startup", "keys", "dmarc", "web"}
    # Counts, not times: the runner measured what it claims to have measured.
    assert results["rechecks"]["checked"] == results["rechecks"]["cases"]
    assert results["rechecks"]["queries"] > 0
    # Every reply got its result mail, with IMAP IDLE and by polling alike.
    for mode in ("idle", "polling"):
        assert results["latency"][mode]["answered"] == results["latency"][mode]["replies"] > 0
    assert results["rechecks"]["checkdmarc"]["checkdmarc_queries"] > 0
    assert results["idle"]["catchup_messages_handled"] == 0
    # The start-up baseline was really unpacked (git archive HEAD) and ran an idle pass.
    assert results["startup"]["baseline_modules"] > 0 and results["startup"]["baseline_ms"] > 0
    assert results["dmarc"]["small"]["reports"] == 100 and results["dmarc"]["big"]["records_per_report"] == 200
    assert results["first_pass"]["cases"] == results["first_pass"]["requests"]
    assert results["web"]["rows_on_page"] == 100  # the list page really showed a page of cases
