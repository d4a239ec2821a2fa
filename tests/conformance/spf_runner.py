"""The OpenSPF suites against bot.checks.spf.SpfEvaluator (see spfsuite.py for the DNS)."""

from __future__ import annotations

from conformance.results import SuiteResult
from conformance.spfsuite import SuiteDns, load_cases, run_cases

from bot.checks.spf import SpfEvaluator

# Case id -> why dkimbot differs on purpose. Empty: every result agrees. (The suites'
# `explanation` texts are not compared: the bot evaluates its own sending IPs and never
# shows a receiver's exp= text; see NOTE.)
DEVIATIONS: dict[str, str] = {}
NOTE = "results compared; exp= explanation texts not computed (never shown by the bot)"


def evaluate(lookup: SuiteDns, ip: str, mailfrom: str, helo: str) -> str:
    """RFC 7208 §2.3/§4.3: MAIL FROM's domain, or HELO's when MAIL FROM is empty."""
    sender = mailfrom or f"postmaster@{helo}"
    domain = sender.rpartition("@")[2]
    result, _ctx = SpfEvaluator(lookup).check_host(ip, domain, sender, helo)
    return result


def run(suite: str) -> SuiteResult:
    outcomes = list(run_cases(load_cases(suite), evaluate))
    res = SuiteResult(f"SPF {suite}", len(outcomes), 0, note=NOTE)
    for o in outcomes:
        if o.passed:
            res.passed += 1
        elif o.case.id in DEVIATIONS:
            res.deviations[o.case.id] = DEVIATIONS[o.case.id]
        else:
            res.failures.append(f"{o.case.id}: expected {'/'.join(o.case.results)}, got {o.got}")
    return res

