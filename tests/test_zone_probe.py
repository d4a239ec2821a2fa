"""The zone probe (one NS query that tells a name's zone) asked through the
multiplexer and read as bytes gives what dnspython's resolver path gives, on real BIND:
at an apex (and its NS set kept), below an apex (SOA in the authority section), for a
name that does not exist; a name no served zone holds (BIND refuses it) and a resolver
that refuses are asked again through dnspython's resolver (its retries and other
servers), as before."""

from __future__ import annotations

import secrets
from typing import Any

import dns.message
import dns.rcode
import pytest
from servers import UdpResponder

from bot.adapters.dnsclient import DnsClient
from bot.config import DnsConfig

pytestmark = pytest.mark.servers


class ResolverOnly(DnsClient):
    """The probe as it was: dnspython's resolver only."""

    def _zone_probe_quick(self, name: str) -> Any:
        return None


class Spy(DnsClient):
    def __init__(self, cfg: DnsConfig) -> None:
        super().__init__(cfg)
        self.quick: list[Any] = []

    def _zone_probe_quick(self, name: str) -> Any:
        got = super()._zone_probe_quick(name)
        self.quick.append(got)
        return got


def test_the_quick_probe_tells_what_the_resolver_tells(bind):
    zone = f"probe{secrets.token_hex(4)}.test"
    bind.add_zone(zone, (f"ns1.{zone}", f"ns2.{zone}"))
    bind.update(zone, f"sel._domainkey.{zone}.", "TXT", ['"v=DKIM1; p=AB"'])
    names = [zone, f"sel._domainkey.{zone}", f"_domainkey.{zone}", f"nothing.here.{zone}",
             f"unserved{secrets.token_hex(3)}.invalid", "test"]
    cfg = DnsConfig(nameservers=["127.0.0.1"], port=bind.port, timeout=2.0)
    for name in names:
        quick, slow = Spy(cfg), ResolverOnly(cfg)
        assert quick._zone_probe(name) == slow._zone_probe(name), name
        if name.endswith(zone):
            assert quick.quick and quick.quick[0] is not None, name  # it did take the quick path
        else:  # BIND refuses names of zones it does not serve: the resolver's way, as before
            assert quick.quick == [None], name
        # BIND rotates an rrset's order from one answer to the next (its readers sort it).
        seeded = {k: sorted(f.result().records) for k, f in quick._cache.items()}
        expected = {k: sorted(f.result().records) for k, f in slow._cache.items()}
        assert seeded == expected, name
    apex = Spy(cfg)
    assert apex.zone_for(f"sel._domainkey.{zone}") == zone
    assert sorted(apex.lookup(zone, "NS").records) == [f"ns1.{zone}", f"ns2.{zone}"]


class Refusing(UdpResponder):
    """A resolver that refuses every query (a lame or misconfigured one)."""

    def __init__(self) -> None:
        self.asked = 0
        super().__init__(self._refuse, host="127.0.0.2")

    def _refuse(self, wire: bytes) -> list[bytes]:
        self.asked += 1
        reply = dns.message.make_response(dns.message.from_wire(wire))
        reply.set_rcode(dns.rcode.REFUSED)
        return [reply.to_wire()]


def test_a_refusal_is_asked_again_through_the_resolver():
    server = Refusing()
    try:
        client = Spy(DnsConfig(nameservers=["127.0.0.2"], port=server.port, timeout=1.0))
        assert client._zone_probe("ryokan.test") == ResolverOnly(
            DnsConfig(nameservers=["127.0.0.2"], port=server.port, timeout=1.0))._zone_probe("ryokan.test")
        assert client.quick == [None]
        assert server.asked >= 3  # the quick one, then the resolver's own for each client
    finally:
        server.sock.close()
