"""The OpenSPF test suites (tests/conformance/spf/, from pyspf's test/ folder) served to
the project's SPF evaluator in process.

``SuiteDns`` answers ``lookup(name, rdtype)`` the way ``DnsClient.lookup`` does (a
``Lookup`` or a ``DnsFailure``) from a scenario's ``zonedata``, with the rules of pyspf's
own driver (test/testspf.py): SPF-type records are copied to TXT where a name has no TXT
of its own, ``TXT: NONE`` means no TXT record, a bare ``TIMEOUT`` times out every type not
listed before it, ``<type>: TIMEOUT`` times out that type, a missing name is NXDOMAIN (a
name under ``error.`` times out). Pure logic: the evaluator under test does the rest.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bot.core.dnsresults import DnsFailure, Lookup, TxtRecord

HERE = Path(__file__).parent / "spf"
SUITES = {"rfc7208": HERE / "rfc7208-tests.yml", "rfc4408": HERE / "rfc4408-tests.yml"}


def _txt_bytes(value: str) -> bytes:
    # The YAML writes raw octets as \xNN escapes (code points < 256); anything else is text.
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


@dataclass
class SuiteDns:
    """One scenario's zone data as a lookup function (and a query counter)."""

    zone: dict[str, list[Any]]
    queries: int = 0

    @classmethod
    def from_zonedata(cls, zonedata: dict[str, list[Any]]) -> SuiteDns:
        zone: dict[str, list[Any]] = {}
        for name, rrs in zonedata.items():
            entries: list[Any] = []
            has_txt = any(isinstance(r, dict) and "TXT" in r for r in rrs)
            spf_as_txt: list[Any] = []
            for r in rrs:
                if r == "TIMEOUT":
                    entries.append("TIMEOUT")
                    continue
                ((rtype, value),) = r.items()
                if rtype == "SPF" and not has_txt:
                    spf_as_txt.append(("TXT", value))
                entries.append((rtype, value))
            zone[name.lower().rstrip(".")] = entries + spf_as_txt
        return cls(zone)

    def __call__(self, name: str, rdtype: str) -> Lookup | DnsFailure:
        self.queries += 1
        name = name.lower().rstrip(".")
        # A resolver follows CNAMEs (DnsClient.lookup does the same).
        for _ in range(8):
            alias = [v for t, v in self._entries(name) if t == "CNAME"]
            if not alias or rdtype == "CNAME":
                break
            name = str(alias[0]).lower().rstrip(".")
        return self._answer(name, rdtype)

    def _entries(self, name: str) -> list[tuple[str, Any]]:
        return [e for e in self.zone.get(name, []) if e != "TIMEOUT"]

    def _answer(self, name: str, rdtype: str) -> Lookup | DnsFailure:
        if any(len(label) > 63 for label in name.split(".")):
            return DnsFailure("label too long", "suite", name)
        entries = self.zone.get(name)
        if entries is None:
            if name.startswith("error."):
                return DnsFailure("timeout", "suite", name)
            return Lookup(name, rdtype, "NXDOMAIN")
        records: list[Any] = []
        typed = False
        for entry in entries:
            if entry == "TIMEOUT":
                if not typed:
                    return DnsFailure("timeout", "suite", name)
                break
            rtype, value = entry
            if rtype != rdtype or value == "NONE":  # "TXT: NONE" only stops the SPF copy
                continue
            typed = True
            if value == "TIMEOUT":
                return DnsFailure("timeout", "suite", name)
            records.append(_record(rdtype, value))
        return Lookup(name, rdtype, "NOERROR", tuple(records))


def _record(rdtype: str, value: Any) -> Any:
    if rdtype in ("TXT", "SPF"):
        parts = value if isinstance(value, list) else [value]
        return TxtRecord(tuple(_txt_bytes(str(p)) for p in parts))
    if rdtype == "MX":
        pref, host = value
        return (int(pref), str(host).lower().rstrip("."))
    if rdtype == "AAAA":
        return str(ipaddress.IPv6Address(value))
    return str(value).lower().rstrip(".") if rdtype in ("PTR", "CNAME") else str(value)


@dataclass
class SpfCase:
    suite: str
    scenario: str
    name: str
    host: str
    mailfrom: str
    helo: str
    results: tuple[str, ...]      # acceptable results, the first preferred
    spec: str
    zonedata: dict[str, list[Any]] = field(repr=False, default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.suite}:{self.name}"


def load_cases(suite: str) -> list[SpfCase]:
    out: list[SpfCase] = []
    with SUITES[suite].open("rb") as fh:
        for scenario in yaml.safe_load_all(fh):
            for name, t in scenario["tests"].items():
                res = t["result"]
                out.append(SpfCase(suite, scenario["description"], name, str(t["host"]),
                                   str(t.get("mailfrom", "")), str(t.get("helo", "")),
                                   tuple(res) if isinstance(res, list) else (res,),
                                   str(t.get("spec", "")), scenario.get("zonedata") or {}))
    return out


Evaluate = Callable[[SuiteDns, str, str, str], str]


@dataclass
class Outcome:
    case: SpfCase
    got: str
    queries: int

    @property
    def passed(self) -> bool:
        return self.got in self.case.results


def run_cases(cases: list[SpfCase], evaluate: Evaluate) -> Iterator[Outcome]:
    for case in cases:
        dns = SuiteDns.from_zonedata(case.zonedata)
        got = evaluate(dns, case.host, case.mailfrom, case.helo)
        yield Outcome(case, got, dns.queries)
