"""The OpenSPF test suites (RFC 7208 and RFC 4408 editions, tests/conformance/spf/, with
their licences) against the project's SPF evaluator; the zone data is served in process
(tests/conformance/spfsuite.py). Every case agrees, or is listed in
tests/conformance/spf_runner.py DEVIATIONS with its reason."""

from __future__ import annotations

import pytest
from conformance import spf_runner
from conformance.spfsuite import SuiteDns, load_cases


@pytest.mark.parametrize("suite, total", [("rfc7208", 203), ("rfc4408", 191)])
def test_every_openspf_case_agrees_or_is_a_listed_deviation(suite, total):
    res = spf_runner.run(suite)
    print(res.line)
    assert res.total == total
    assert res.failures == []
    # A listed deviation that now agrees must be taken off the list.
    assert set(res.deviations) == {k for k in spf_runner.DEVIATIONS if k.startswith(suite + ":")}


def test_the_fake_dns_follows_the_drivers_rules():
    [case] = [c for c in load_cases("rfc7208") if c.name == "txttimeout"]
    dns = SuiteDns.from_zonedata(case.zonedata)
    # "TXT: NONE" then a bare TIMEOUT: the TXT query times out, it is not "no record".
    assert type(dns("txttimeout.example.net", "TXT")).__name__ == "DnsFailure"
    assert dns("both.example.net", "TXT").records == ("v=spf1 -all",)
    assert dns("nowhere.example.net", "TXT").rcode == "NXDOMAIN"


@pytest.mark.parametrize("name, record, expected", [
    ("full-width space", "v=spf1 a:mail.example.jp\u3000-all", "permerror"),
    ("tab", "v=spf1 a:mail.example.jp\t-all", "permerror"),
    ("numeric top label", "v=spf1 a:mail.example.123 -all", "permerror"),
    ("dash top label", "v=spf1 a:mail.example.-jp -all", "permerror"),
    ("leading-zero prefix", "v=spf1 ip4:198.51.100.0/024 -all", "permerror"),
    ("ptr prefix", "v=spf1 ptr/24 -all", "permerror"),
    ("correct", "v=spf1 ip4:198.51.100.0/24 -all", "pass"),
])
def test_paste_mistakes_are_permerror_like_receivers_say(name, record, expected):
    zone = {"hotel.example": [{"TXT": record}], "mail.example.jp": [{"A": "198.51.100.7"}]}
    got = spf_runner.evaluate(SuiteDns.from_zonedata(zone), "198.51.100.7", "a@hotel.example",
                              "mx.hotel.example")
    assert got == expected, name
