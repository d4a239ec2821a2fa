"""How many DNS queries a check costs, on real BIND (two name servers, as most
facilities have): the limit of issue 16 is about 3 per server plus the zone's NS once,
and the wrong-place probes only for a missing record, on one server."""

from __future__ import annotations

import secrets
from collections import Counter
from typing import Any

import pytest

from bot.adapters.dnsclient import DnsClient
from bot.checks.keyplan import check_case_domain
from bot.config import DnsConfig, ServiceConfig
from bot.core.cases import same_notice
from bot.core.dnsresults import AreaResult, CheckReport, Diagnosis

pytestmark = pytest.mark.servers

SEL = "yoyakuban202612"
KEY = "MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQC1TaNgLlSyQMNWVLNLvyY"


class Counting(DnsClient):
    def __init__(self, cfg: DnsConfig) -> None:
        super().__init__(cfg)
        self.sent: Counter[tuple[Any, ...]] = Counter()

    def _send(self, qname: Any, rdtype: str, server: str, **kw: Any) -> Any:
        self.sent[("direct", str(qname).rstrip("."), rdtype, server)] += 1
        return super()._send(qname, rdtype, server, **kw)

    def _resolve(self, name: str, rdtype: str) -> Any:
        self.sent[("resolver", name, rdtype)] += 1
        return super()._resolve(name, rdtype)

    def _zone_probe(self, name: str) -> Any:
        self.sent[("zone", name)] += 1
        return super()._zone_probe(name)

    def direct(self, server: str | None = None) -> list[tuple[Any, ...]]:
        return [k for k in self.sent if k[0] == "direct" and (server is None or k[3] == server)]


@pytest.fixture
def hoster(bind) -> str:
    """A DNS hoster's two name servers (127.0.0.1, 127.0.0.2), in a zone of its own."""
    z = f"hoster{secrets.token_hex(3)}.test"
    bind.add_zone(z, {f"ns1.{z}": "127.0.0.1", f"ns2.{z}": "127.0.0.2"})
    return z


def _domain(bind, hoster: str) -> str:
    d = f"budget{secrets.token_hex(4)}.test"
    bind.add_zone(d, {f"ns1.{hoster}": "127.0.0.1", f"ns2.{hoster}": "127.0.0.2"})
    return d


def _cfg(bind) -> DnsConfig:
    return DnsConfig(nameservers=["127.0.0.1"], port=bind.port, timeout=2.0)


def test_a_domain_waiting_for_dkim_costs_its_zone_dkim_on_both_servers_and_probes_on_one(bind, hoster):
    domain = _domain(bind, hoster)
    client = Counting(_cfg(bind))
    report = check_case_domain(client, domain, {SEL: KEY}, ServiceConfig(), dkim_first=True)
    assert report.dkim.codes == ["dkim_not_published"]
    assert report.dmarc.found.get("skipped") and report.spf.found.get("skipped")
    assert all(v == 1 for v in client.sent.values()), client.sent  # nothing asked twice
    # One query finds the zone and its name servers together (NS at the apex); names
    # under the domain are not asked for a zone of their own.
    assert [k for k in client.sent if k[0] == "zone"] == [("zone", domain)]
    assert ("resolver", domain, "NS") not in client.sent
    # DKIM on both servers; the wrong-place probes on the first only (RFC 8020: nothing
    # below an NXDOMAIN _domainkey is asked); no DMARC, no SPF while DKIM is not right.
    second = client.direct("127.0.0.2")
    assert second == [("direct", f"{SEL}._domainkey.{domain}", "TXT", "127.0.0.2")]
    first = {k[1] for k in client.direct("127.0.0.1")}
    assert first == {f"{SEL}._domainkey.{domain}", f"{SEL}._domainkey.{domain}.{domain}",
                     f"{SEL}.{domain}", f"_domainkey.{domain}", domain}
    assert not any("_dmarc" in k[1] for k in client.direct())
    assert len(client.direct()) + 1 <= 8  # the limit per domain (zone + direct)


def test_a_domain_past_dkim_costs_three_names_on_each_server_and_the_hoster_once(bind, hoster):
    domains = [_domain(bind, hoster) for _ in range(2)]
    for d in domains:
        bind.update(d, f"{SEL}._domainkey", "TXT", [f"v=DKIM1; k=rsa; p={KEY}"])
        bind.update(d, "_dmarc", "TXT", ["v=DMARC1; p=none"])
        bind.update(d, "@", "TXT", ["v=spf1 -all"])
    client = Counting(_cfg(bind))
    for d in domains:
        check_case_domain(client, d, {SEL: KEY}, ServiceConfig(), dkim_first=True)
    assert all(v == 1 for v in client.sent.values()), client.sent
    for d in domains:
        for server in ("127.0.0.1", "127.0.0.2"):
            mine = {k[1] for k in client.direct(server) if k[1].endswith(d)}
            assert mine == {f"{SEL}._domainkey.{d}", f"_dmarc.{d}", d}, (server, mine)
    assert sorted(k for k in client.sent if k[0] == "zone") == sorted(("zone", d) for d in domains)
    # The hoster's name server addresses: asked once for both domains.
    assert client.sent[("resolver", f"ns1.{hoster}", "A")] == 1


def _report(dkim_codes: list[str], skipped: bool) -> CheckReport:
    def area(codes: list[str]) -> AreaResult:
        return AreaResult(not codes, [Diagnosis(c, c) for c in codes])

    rest = [AreaResult(True, [], {"skipped": "DKIM first"}) if skipped else area(["dmarc_not_published"])
            for _ in range(3)]
    return CheckReport(area(dkim_codes), *rest)


def test_a_notice_recorded_with_dmarc_codes_is_the_same_once_dmarc_is_not_asked():
    old = "dkim_wrong|dkim:dkim_quoted,dmarc:dmarc_not_published"
    report = _report(["dkim_quoted"], skipped=True)
    assert same_notice("dkim_wrong|dkim:dkim_quoted", old, report)
    assert not same_notice("dkim_wrong|dkim:dkim_truncated", old, _report(["dkim_truncated"], skipped=True))
    # When DMARC is asked, a change in it is a change.
    assert not same_notice("dkim_wrong|dkim:dkim_quoted", old, _report(["dkim_quoted"], skipped=False))


WILDCARDS = {
    # name: (owner of the wildcard, its value)
    "star_spf": ("*", "v=spf1 -all"),
    "domainkey_spf": ("*._domainkey", "v=spf1 -all"),
    "domainkey_foreign_key": ("*._domainkey", "v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDwxyz"),
}


@pytest.mark.parametrize("wildcard", list(WILDCARDS))
def test_a_wildcard_answering_the_selector_is_not_published_with_one_probe_more(bind, hoster, wildcard):
    """Review 2026-12-01: a wildcard TXT answers the selector before the facility has
    published anything; that is "not published" (with a note on the wildcard), never a
    wrongly written record. One sibling query on one server finds it out, and the
    domain stays within the limit of 8."""
    from bot.checks.wildcard import PROBE_LABEL

    owner, value = WILDCARDS[wildcard]
    domain = _domain(bind, hoster)
    bind.update(domain, owner, "TXT", [value])
    client = Counting(_cfg(bind))
    report = check_case_domain(client, domain, {SEL: KEY}, ServiceConfig(), dkim_first=True)
    assert report.dkim.codes == ["dkim_not_published"], report.dkim.diagnoses
    [diag] = report.dkim.diagnoses
    assert diag.detail["wildcard"] == [value] and "ワイルドカードのレコード" in diag.message
    assert f"「{value}」が返ります" in diag.message
    assert report.dkim.found["servers"] == {s: [value] for s in ("127.0.0.1", "127.0.0.2")}
    assert all(v == 1 for v in client.sent.values()), client.sent
    probes = [k for k in client.direct() if k[1].startswith(PROBE_LABEL)]
    assert probes == [("direct", f"{PROBE_LABEL}._domainkey.{domain}", "TXT", "127.0.0.1")]
    assert len(client.direct()) + 1 <= 8, sorted(client.direct())


def test_the_facilitys_own_wrong_record_costs_no_wildcard_probe(bind, hoster):
    """A record carrying our key (here quoted) is the facility's: no wildcard gives it,
    so it is judged as before without the extra query."""
    from bot.checks.wildcard import PROBE_LABEL

    domain = _domain(bind, hoster)
    bind.update(domain, "*", "TXT", ["v=spf1 -all"])
    bind.update(domain, f"{SEL}._domainkey", "TXT", [f'"v=DKIM1; k=rsa; p={KEY}"'])
    client = Counting(_cfg(bind))
    report = check_case_domain(client, domain, {SEL: KEY}, ServiceConfig(), dkim_first=True)
    assert report.dkim.codes == ["dkim_quoted"]
    assert not [k for k in client.direct() if PROBE_LABEL in k[1]]
    assert len(client.direct()) == 2  # the selector on both servers, nothing else
