"""The DNS multiplexer (bot/adapters/dnsmux.py) on loopback UDP servers of the test's
own: only the answer to the question asked is taken, junk and forged IDs are ignored
until the deadline, silence is a timeout, a closed port an error, never a hang."""

from __future__ import annotations

import socket

import dns.exception
import dns.message
import dns.name
import dns.rrset
import pytest
from servers import UdpResponder

from bot.adapters import dnswire
from bot.adapters.dnsmux import Batch, UdpMux


def _answer(wire: bytes, *, id_offset: int = 0, text: str = "v=DKIM1") -> bytes:
    query = dns.message.from_wire(wire)
    response = dns.message.make_response(query)
    response.id = (response.id + id_offset) % 65536
    response.answer.append(dns.rrset.from_text(query.question[0].name, 300, "IN", "TXT", f'"{text}"'))
    return response.to_wire()


def _query(name: str = "sel._domainkey.example.test", qid: int = 4321) -> tuple[bytes, dnswire.Question]:
    qname = dns.name.from_text(name)
    wire = dnswire.build_query(qid, qname.to_wire(), dnswire.TXT)
    return wire, dnswire.Question(qid, dnswire.labels_of(qname), dnswire.TXT)


def _strings(reply: dnswire.Reply) -> list[tuple[bytes, ...]]:
    return [reply.value(r) for r in reply.answer]


def test_junk_and_forged_answers_are_ignored_and_the_real_one_taken():
    server = UdpResponder(lambda wire: [b"\x00junk", _answer(wire, id_offset=1, text="forged"), _answer(wire)])
    try:
        reply = UdpMux().query(*_query(), "127.0.0.1", server.port, 2.0).result(timeout=5)
        assert _strings(reply) == [(b"v=DKIM1",)]
    finally:
        server.close()


def test_an_answer_with_our_id_to_another_question_is_ignored():
    def other_question(wire: bytes) -> bytes:
        query = dns.message.from_wire(wire)
        forged = dns.message.make_response(dns.message.make_query("other.example.test", "TXT", id=query.id))
        forged.answer.append(dns.rrset.from_text("other.example.test.", 300, "IN", "TXT", '"forged"'))
        return forged.to_wire()

    server = UdpResponder(lambda wire: [other_question(wire), _answer(wire)])
    try:
        reply = UdpMux().query(*_query(), "127.0.0.1", server.port, 2.0).result(timeout=5)
        assert _strings(reply) == [(b"v=DKIM1",)]
    finally:
        server.close()


def test_silence_is_a_timeout_at_the_deadline():
    server = UdpResponder(lambda wire: [])
    try:
        future = UdpMux().query(*_query(), "127.0.0.1", server.port, 0.3)
        with pytest.raises(dns.exception.Timeout):
            future.result(timeout=5)
    finally:
        server.close()


def test_a_closed_port_is_an_error_not_a_hang():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now: the kernel answers "port unreachable"
    future = UdpMux().query(*_query(), "127.0.0.1", port, 2.0)
    with pytest.raises((OSError, dns.exception.Timeout)):
        future.result(timeout=5)


def test_many_queries_in_flight_each_gets_its_own_answer():
    server = UdpResponder(lambda wire: [_answer(wire, text=dns.message.from_wire(wire).question[0].name.to_text())])
    try:
        mux = UdpMux()
        names = [f"n{i}.example.test" for i in range(200)]
        batch = Batch()  # one wake-up for all 200
        pending = [mux.query(*_query(n, i), "127.0.0.1", server.port, 5.0, batch) for i, n in enumerate(names)]
        assert batch.wait(10)
        assert all(p.done() for p in pending)
        got = [_strings(p.result(timeout=0))[0][0].decode() for p in pending]
        assert got == [n + "." for n in names]
    finally:
        server.close()
