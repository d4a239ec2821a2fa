"""dkimpy's DKIM key records (tests/conformance/dkimpy/records.json, from the dkimpy 1.1.8
sdist's dkim/tests) judged by bot.checks.dnscheck against dkimpy's ``evaluate_pk``:
usable (no diagnosis) exactly when dkimpy loads the key and its verify() would accept its size, except the deliberate
differences below. Derived cases: each distinct suite key cut in half (a truncated paste),
and the cut Ed25519 key a reviewer found judged usable."""

from __future__ import annotations

import json
import re
from pathlib import Path

import dkim
from conformance.results import SuiteResult

from bot.checks.dnscheck import dkim_record_codes

DATA = Path(__file__).parent / "dkimpy" / "records.json"

# dkimpy's verdict is evaluate_pk (the key loads) plus dkim.verify's default minkey: an
# RSA key under 1024 bits loads but every verify() refuses it (RFC 8301 §3.2).
MINKEY = 1024
# s=tlsrpt: a TLS-report key (RFC 8460 §3); evaluate_pk serves both uses, we judge keys
# for mail only.
TLSRPT_REASON = "s=tlsrpt: a key for TLS reports (RFC 8460), not usable for mail"


def cases() -> list[tuple[str, str]]:
    records = [(r["source"], r["record"]) for r in json.loads(DATA.read_text())["records"]]
    derived: list[tuple[str, str]] = []
    seen: set[str] = set()
    for source, text in records:
        m = re.search(r"p=([A-Za-z0-9+/=\s]+)", text)
        key = re.sub(r"\s+", "", m.group(1)) if m else ""
        if key and key not in seen:
            seen.add(key)
            k = "ed25519" if "k=ed25519" in text and "ed25519-" not in text else "rsa"
            derived.append((f"derived: {source} cut in half",
                            f"v=DKIM1; k={k}; p={key[:len(key) // 2]}"))
    derived.append(("derived: the cut Ed25519 key of issue 12",
                    "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7"))
    return records + derived


def dkimpy_usable(text: str) -> bool:
    try:
        _pk, keysize, ktag, _tlsrpt = dkim.evaluate_pk(b"sel._domainkey.example.com", text.encode())
    except Exception:  # noqa: BLE001 - any refusal by dkimpy is "not usable"; we compare verdicts
        return False
    return ktag == b"ed25519" or (keysize or 0) >= MINKEY


def run() -> SuiteResult:
    all_cases = cases()
    res = SuiteResult("DKIM key records (dkimpy)", len(all_cases), 0)
    for source, text in all_cases:
        codes = dkim_record_codes(text)
        ours, theirs = not codes, dkimpy_usable(text)
        if ours == theirs:
            res.passed += 1
        elif re.search(r"\bs=tlsrpt\b", text) and theirs:
            res.deviations[source] = TLSRPT_REASON
        else:
            res.failures.append(f"{source}: ours usable={ours} {codes}, dkimpy usable={theirs}")
    return res
