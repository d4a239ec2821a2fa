"""SPF evaluation: the project's evaluator against pyspf on the OpenSPF suites' 394 cases,
both fed by the same in-process zone data (tests/conformance/spfsuite.py), interleaved
in one process; CPU time per case (median of rounds), ratio, and DNS queries asked.

    python3 benchmarks/bench_spf.py [--rounds 15]

Why it exists: DESIGN.md "SPF: own evaluator, held to the OpenSPF suites" chose between
fixing our evaluator and evaluating through pyspf with our DNS client by these figures.
pyspf resolves through its module-global ``spf.DNSLookup``; here it is pointed at the
same lookup function for the measurement only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import spf as pyspf
from conformance import spf_runner
from conformance.spfsuite import SuiteDns, load_cases

from bot.core.dnsresults import DnsFailure


def _pyspf(dns: SuiteDns, ip: str, mailfrom: str, helo: str) -> str:
    def lookup(name: str, qtype: str, strict: bool = True, timeout: float | None = None
               ) -> list[tuple[tuple[str, str], Any]]:
        ans = dns(name, qtype)
        if isinstance(ans, DnsFailure):
            raise pyspf.TempError("DNS " + ans.reason)
        return [((name, qtype), list(r.strings) if qtype in ("TXT", "SPF") else r)
                for r in ans.records]

    pyspf.DNSLookup = lookup
    return str(pyspf.query(i=ip, s=mailfrom, h=helo).check()[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    cases = load_cases("rfc7208") + load_cases("rfc4408")
    zones = [(c, c.zonedata) for c in cases]
    times: dict[str, list[float]] = {"ours": [], "pyspf": []}
    agree: dict[str, int] = {}
    queries: dict[str, int] = {}
    for _ in range(args.rounds):
        for label, fn in (("ours", spf_runner.evaluate), ("pyspf", _pyspf)):
            ok = asked = 0
            t0 = time.process_time()
            for case, zonedata in zones:
                dns = SuiteDns.from_zonedata(zonedata)
                ok += fn(dns, case.host, case.mailfrom, case.helo) in case.results
                asked += dns.queries
            times[label].append((time.process_time() - t0) / len(cases) * 1000)
            agree[label], queries[label] = ok, asked
    ours, theirs = statistics.median(times["ours"]), statistics.median(times["pyspf"])
    print(json.dumps({
        "cases": len(cases),
        "agree": agree,
        "cpu_ms_per_case_median": {"ours": round(ours, 4), "pyspf": round(theirs, 4)},
        "pyspf_over_ours": round(theirs / ours, 2),
        "dns_queries": queries,
        "note": "CPU includes building each case's zone (the same for both)",
    }, indent=2))


if __name__ == "__main__":
    main()
