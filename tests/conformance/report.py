"""Print each conformance suite's pass count, one line each (``bash .ci/run`` runs this
before pytest; the same runners are asserted in tests/test_conformance_*.py).

    python3 tests/conformance/report.py

Exit status 1 when any case disagrees without being a listed deliberate deviation.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent.parent), str(HERE.parent)]

from conformance import authres_runner, dkim_runner, dmarc_runner, spf_runner
from conformance.results import SuiteResult

RUNNERS: list[Callable[[], SuiteResult]] = [
    lambda: spf_runner.run("rfc7208"),
    lambda: spf_runner.run("rfc4408"),
    dmarc_runner.run_checkdmarc,
    dmarc_runner.run_rfc7489,
    dkim_runner.run,
    authres_runner.run_authres,
    authres_runner.run_rfc8601,
]


def main() -> int:
    failed = 0
    for runner in RUNNERS:
        res = runner()
        print(res.line)
        for why in res.failures:
            print(f"    FAILED {why}")
        for case, reason in res.deviations.items():
            print(f"    deliberate: {case}: {reason}")
        failed += len(res.failures)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
