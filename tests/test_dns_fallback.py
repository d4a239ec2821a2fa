"""When a zone's name servers cannot be found, the configured resolver answers instead
(issue 4: "fall back to the configured resolver"). Real BIND."""

from __future__ import annotations

import secrets

import pytest

from bot.config import DnsConfig
from bot.adapters.dnsclient import DnsClient
from bot.checks.dnscheck import check_dkim
from test_dnscheck_bind import PUB, RECORD, SEL, strings

pytestmark = pytest.mark.servers


def test_a_zone_whose_name_servers_have_no_address_is_asked_through_the_resolver(bind):
    zone = f"fb{secrets.token_hex(4)}.test"
    bind.add_zone(zone, servers=["127.0.0.1"])
    bind.update(zone, f"{SEL}._domainkey", "TXT", [strings(RECORD)])
    # The zone's only NS now names a host nobody can resolve. (BIND keeps the last NS of
    # a zone, so the new one is added and the old one removed in one update.)
    import dns.query
    import dns.rcode
    import dns.tsig
    import dns.tsigkeyring
    import dns.update

    keyring = dns.tsigkeyring.from_text({bind.tsig_key_name: bind.tsig_secret})
    upd = dns.update.UpdateMessage(zone + ".", keyring=keyring, keyname=bind.tsig_key_name,
                                   keyalgorithm=dns.tsig.HMAC_SHA256)
    upd.add(zone + ".", 300, "NS", "ns.nowhere.invalid.")
    upd.delete(zone + ".", "NS", f"ns1.{zone}.")
    assert dns.query.tcp(upd, "127.0.0.1", port=bind.port, timeout=5).rcode() == dns.rcode.NOERROR
    client = DnsClient(DnsConfig(nameservers=["127.0.0.1"], port=bind.port, timeout=2.0))
    answers = client.authoritative_txt(f"{SEL}._domainkey.{zone}")
    assert list(answers) == ["resolver"]
    assert [str(r) for r in answers["resolver"]] == [RECORD]
    res = check_dkim(client, zone, SEL, PUB)
    assert res.ok, [d.code for d in res.diagnoses]
