"""The direct query's rarer paths, now that its bytes are built and read by
bot/adapters/dnswire.py: an answer too big for UDP is asked again over TCP (real BIND),
a server from before EDNS gets the question again without it, and silence is asked
once more before it is a timeout (a UDP server of the test's own)."""

from __future__ import annotations

import secrets

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest
from servers import UdpResponder

from bot.adapters.dnsclient import DnsClient
from bot.config import DnsConfig
from bot.core.dnsresults import DnsFailure, Lookup

pytestmark = pytest.mark.servers


def test_an_answer_over_1232_bytes_is_read_over_tcp(bind):
    zone = f"big{secrets.token_hex(4)}.test"
    bind.add_zone(zone, servers=["127.0.0.1"])
    values = [f"record {i} " + "x" * 240 for i in range(8)]  # ~2 KB: truncated over UDP
    bind.update(zone, "big", "TXT", values)
    client = DnsClient(DnsConfig(nameservers=["127.0.0.1"], port=bind.port, timeout=2.0))
    answer = client.query_direct(f"big.{zone}", "TXT", "127.0.0.1")
    assert isinstance(answer, Lookup)
    assert sorted(str(r) for r in answer.records) == sorted(values)
    assert client.queries_sent == 2  # UDP, then the same question over TCP


class OldServer(UdpResponder):
    """Answers FORMERR to a query with EDNS, a TXT answer to one without; or nothing
    to the first ``silent`` queries."""

    def __init__(self, *, silent: int = 0) -> None:
        self.silent = silent
        self.seen: list[bool] = []  # whether each query had EDNS
        super().__init__(self._answer)

    def _answer(self, wire: bytes) -> list[bytes]:
        query = dns.message.from_wire(wire)
        self.seen.append(query.edns >= 0)
        if len(self.seen) <= self.silent:
            return []
        reply = dns.message.make_response(query)
        if query.edns >= 0 and not self.silent:
            reply.set_rcode(dns.rcode.FORMERR)
        else:
            reply.flags |= dns.flags.AA
            reply.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "TXT", '"v=DKIM1; p=AB"'))
        return [reply.to_wire()]


def test_a_server_before_edns_is_asked_again_without_it():
    server = OldServer()
    try:
        client = DnsClient(DnsConfig(nameservers=["127.0.0.1"], port=server.port, timeout=2.0))
        answer = client.query_direct("sel._domainkey.old.test", "TXT", "127.0.0.1")
        assert isinstance(answer, Lookup) and [str(r) for r in answer.records] == ["v=DKIM1; p=AB"]
        assert server.seen == [True, False]
    finally:
        server.sock.close()


def test_silence_is_asked_once_more_then_a_timeout():
    server = OldServer(silent=1)
    try:
        client = DnsClient(DnsConfig(nameservers=["127.0.0.1"], port=server.port, timeout=0.6))
        answer = client.query_direct("sel._domainkey.lossy.test", "TXT", "127.0.0.1")
        assert isinstance(answer, Lookup)  # the second try was answered
        assert server.seen == [True, True]
        dead = OldServer(silent=10)
        try:
            client = DnsClient(DnsConfig(nameservers=["127.0.0.1"], port=dead.port, timeout=0.6))
            failure = client.query_direct("sel._domainkey.dead.test", "TXT", "127.0.0.1")
            assert isinstance(failure, DnsFailure) and failure.reason == "timeout"
            assert dead.seen == [True, True]
        finally:
            dead.sock.close()
    finally:
        server.sock.close()
