"""DMARC records of checkdmarc's tests (tests/conformance/checkdmarc/records.json) and
RFC 7489 Appendix B (tests/conformance/rfc/rfc7489-appendix-b.json) against
bot.checks.dmarc.parse_dmarc (valid = receivers use it: no error-level problem) and
bot.checks.dnscheck.check_alignment."""

from __future__ import annotations

import json
from pathlib import Path

from conformance.results import SuiteResult

from bot.checks.dmarc import parse_dmarc
from bot.checks.dnscheck import check_alignment

HERE = Path(__file__).parent

# Test -> why dkimbot differs from checkdmarc on purpose. Each still gets a named
# diagnosis (a warning or an error); only the severity differs.
DEVIATIONS = {
    "testDMARCInvalidTag": "an unknown tag (xyz=) is ignored by receivers (RFC 7489 §6.3): a warning "
                           "naming it (likely a typo), not an error that would hold up the case",
    "testDMARCPTagPosition": "p= after sp= breaks RFC 7489's ABNF order, but receivers (OpenDMARC; "
                             "DMARCbis allows any order after v=) apply it: dmarc_tag_order warning "
                             "with the reordered record, not an error",
    "testDMARCbisMissingPTagWarning": "no p=: at best a receiver acts as p=none (RFC 7489 §6.6.3); the "
                                      "onboarding needs a policy, so dkimbot asks for p= (an error); "
                                      "checkdmarc only warns",
}


def _valid(text: str) -> bool:
    return parse_dmarc(text).valid


def run_checkdmarc() -> SuiteResult:
    cases = json.loads((HERE / "checkdmarc" / "records.json").read_text())["cases"]
    res = SuiteResult("DMARC checkdmarc 5.15.5", len(cases), 0)
    for c in cases:
        ours = _valid(c["record"])
        named = bool(parse_dmarc(c["record"]).problems)
        if ours == c["valid"]:
            res.passed += 1
        elif c["test"] in DEVIATIONS and (named or not c["valid"]):
            res.deviations[c["test"]] = DEVIATIONS[c["test"]]
        else:
            res.failures.append(f"{c['test']}: {c['record']!r} ours valid={ours}, checkdmarc {c['valid']}")
    return res


def run_rfc7489() -> SuiteResult:
    data = json.loads((HERE / "rfc" / "rfc7489-appendix-b.json").read_text())
    total = len(data["dmarc_records"]) + 2 * len(data["alignment"])
    res = SuiteResult("DMARC RFC 7489 Appendix B", total, 0)
    for c in data["dmarc_records"]:
        rec = parse_dmarc(c["record"])
        if rec.valid == c["valid"] and rec.policy == c["policy"]:
            res.passed += 1
        else:
            res.failures.append(f"{c['section']}: valid={rec.valid} policy={rec.policy}")
    for c in data["alignment"]:
        for mode, key in (("s", "strict"), ("r", "relaxed")):
            got = check_alignment(c["from"], c["auth"], mode).ok
            if got == c[key]:
                res.passed += 1
            else:
                res.failures.append(f"{c['section']} {key}: aligned={got}, RFC {c[key]}")
    return res

