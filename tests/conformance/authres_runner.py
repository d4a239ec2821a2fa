"""Authentication-Results headers from authres 1.2.0's doctests
(tests/conformance/authres/cases.json: each header with what authres itself parses) and
RFC 8601's examples (tests/conformance/rfc/rfc8601-examples.json) against
bot.core.authresults.parse_authentication_results: authserv-id, and per result the
method, result, reason and ptype.property values."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conformance.results import SuiteResult

from bot.core.authresults import AuthResultsError, parse_authentication_results

HERE = Path(__file__).parent

# authres doctest line -> why dkimbot reads what authres refuses. Both are real receivers'
# shapes; the bot must read a receiver's verdict rather than drop the whole header.
DEVIATIONS = {
    579: "an unquoted IPv6 address as policy.iprev value (not a valid RFC 8601 value): authres "
         "refuses the header, dkimbot reads the address and the spf result after it",
    753: "a stray ';' inside a result (header.d=none;thehesiod.com), as a real receiver wrote it: "
         "authres refuses the header, dkimbot skips the stray segment and reads the dmarc result",
}


def _ours(value: str) -> dict[str, Any]:
    try:
        ar = parse_authentication_results(value)
    except AuthResultsError as exc:
        return {"error": str(exc)}
    return {"authserv_id": ar.authserv_id, "version": ar.version, "results": [
        {"method": r.method, "result": r.result, "reason": r.reason, "props": dict(r.props)}
        for r in ar.results]}


def _same(ours: dict[str, Any], want: dict[str, Any], *, version: bool) -> bool:
    keys = ("authserv_id", "results", "version") if version else ("authserv_id", "results")
    return all(ours.get(k) == want.get(k) for k in keys)


def run_authres() -> SuiteResult:
    cases = json.loads((HERE / "authres" / "cases.json").read_text())["cases"]
    res = SuiteResult("Authentication-Results authres 1.2.0 doctests", len(cases), 0)
    for c in cases:
        want = c["authres"]
        want = {**want, "authserv_id": want.get("authserv_id", "").lower()} if "error" not in want else want
        ours = _ours(c["value"])
        if "error" not in want and _same(ours, want, version=False):
            res.passed += 1
        elif "error" in want and c["line"] in DEVIATIONS and "error" not in ours:
            res.deviations[f"line {c['line']}"] = DEVIATIONS[c["line"]]
        else:
            res.failures.append(f"line {c['line']}: ours {ours}, authres {want}")
    return res


def run_rfc8601() -> SuiteResult:
    cases = json.loads((HERE / "rfc" / "rfc8601-examples.json").read_text())["cases"]
    res = SuiteResult("Authentication-Results RFC 8601 examples", len(cases), 0)
    for c in cases:
        ours = _ours(c["value"])
        if _same(ours, c, version=True):
            res.passed += 1
        else:
            res.failures.append(f"{c['section']}: ours {ours}")
    return res
