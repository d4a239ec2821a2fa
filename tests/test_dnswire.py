"""bot/adapters/dnswire.py against dnspython, the reference it replaces on the check
pass's hot path: the same query bytes as ``make_query``, the same verdict as
``Message.is_response`` on which datagram is the answer, the same records as its
rrsets, and on thousands of damaged datagrams nothing but ``WireError`` or an answer
dnspython also reads the same way (pure: no sockets)."""

from __future__ import annotations

import random

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from bot.adapters import dnswire
from bot.adapters.dnsclient import _rdata_value, _records_from_reply

KEY = "v=DKIM1; k=rsa; p=" + "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA" * 9


def _query(name: str, rdtype: str = "TXT", qid: int = 4660, *, edns: bool = True) -> dns.message.Message:
    q = (dns.message.make_query(name, rdtype, use_edns=0, payload=1232, id=qid) if edns
         else dns.message.make_query(name, rdtype, id=qid))
    q.flags &= ~dns.flags.RD
    return q


def _question(q: dns.message.Message) -> dnswire.Question:
    return dnswire.Question(q.id, dnswire.labels_of(q.question[0].name), q.question[0].rdtype)


@pytest.mark.parametrize("name", ["sel._domainkey.ryokan.test", "ryokan.test", "_dmarc.EXAMPLE.jp",
                                  "a-b.c_d.xn--eckwd4c7c.xn--zckzah", "."])
@pytest.mark.parametrize("rdtype", ["TXT", "NS", "A", "AAAA", "MX", "SOA", "CNAME"])
@pytest.mark.parametrize("edns", [True, False])
def test_query_bytes_are_dnspythons(name, rdtype, edns):
    q = _query(name, rdtype, qid=51966, edns=edns)
    qname = dns.name.from_text(name)
    assert dnswire.build_query(51966, qname.to_wire(), dns.rdatatype.from_text(rdtype), edns=edns) == q.to_wire()


def _response(q: dns.message.Message, rcode: int = 0, *, answer: list[dns.rrset.RRset] = (),
              authority: list[dns.rrset.RRset] = (), aa: bool = True, ext_rcode: int = 0) -> dns.message.Message:
    r = dns.message.make_response(q)
    if aa:
        r.flags |= dns.flags.AA
    r.set_rcode(rcode | (ext_rcode << 4))
    r.answer.extend(answer)
    r.authority.extend(authority)
    return r


def _txt(name: str, *values: str, rdclass: str = "IN") -> dns.rrset.RRset:
    return dns.rrset.from_text(name, 300, rdclass, "TXT",
                               *(" ".join(f'"{v[i:i + 255]}"' for i in range(0, max(len(v), 1), 255)) for v in values))


SOA = dns.rrset.from_text("ryokan.test.", 60, "IN", "SOA", "ns1.h.test. hostmaster.ryokan.test. 1 3600 600 86400 60")
NS = dns.rrset.from_text("ryokan.test.", 60, "IN", "NS", "ns1.h.test.", "ns2.h.test.")


def _responses() -> list[tuple[dns.message.Message, bytes]]:
    """(query, answer wire) pairs of every shape the checks meet, and some they should not."""
    name = "sel._domainkey.ryokan.test."
    q = _query(name)
    out = [
        (q, _response(q, dns.rcode.NXDOMAIN, authority=[SOA]).to_wire()),
        (q, _response(q, authority=[SOA]).to_wire()),                       # NODATA
        (q, _response(q, answer=[_txt(name, KEY)], authority=[NS]).to_wire()),
        (q, _response(q, answer=[_txt(name, KEY, "v=spf1 -all", KEY)]).to_wire()),  # a duplicate
        (q, _response(q, answer=[_txt(name, "")]).to_wire()),              # one empty string
        (q, _response(q, aa=False, authority=[NS]).to_wire()),              # a referral
        (q, _response(q, dns.rcode.SERVFAIL).to_wire()),
        (q, _response(q, ext_rcode=1).to_wire()),                           # BADVERS (16)
        (q, _response(q, answer=[dns.rrset.from_text(name, 60, "IN", "CNAME", "key.hoster.test."),
                                 _txt("key.hoster.test.", KEY)]).to_wire()),
        (q, _response(q, answer=[dns.rrset.from_text(name, 60, "IN", "CNAME", "elsewhere.test.")]).to_wire()),
        (q, _response(q, answer=[dns.rrset.from_text(name, 60, "IN", "CNAME", "a.test."),
                                 dns.rrset.from_text("a.test.", 60, "IN", "CNAME", "b.test."),
                                 _txt("b.test.", "v=DKIM1; p=")]).to_wire()),
        (q, _response(q, answer=[_txt(name.upper(), KEY)]).to_wire()),     # names are case-insensitive
        (q, _response(q, answer=[_txt(name, "other class", rdclass="CH"), _txt(name, KEY)]).to_wire()),
    ]
    for rdtype, rrset in (("A", dns.rrset.from_text("ns1.h.test.", 60, "IN", "A", "127.0.0.1", "127.0.0.2")),
                          ("AAAA", dns.rrset.from_text("ns1.h.test.", 60, "IN", "AAAA", "::1")),
                          ("NS", NS),
                          ("MX", dns.rrset.from_text("ryokan.test.", 60, "IN", "MX", "10 Mail.Ryokan.test.")),
                          ("SOA", SOA)):
        qq = _query(str(rrset.name), rdtype)
        out.append((qq, _response(qq, answer=[rrset]).to_wire()))
    bare = dns.message.make_response(q)
    bare.question = []
    bare.set_rcode(dns.rcode.REFUSED)
    out.append((q, bare.to_wire()))                                       # REFUSED, no question: accepted
    bare.set_rcode(dns.rcode.NOERROR)
    out.append((q, bare.to_wire()))                                       # NOERROR, no question: not ours
    for change in ("id", "qr", "opcode", "name", "type"):
        r = _response(q, answer=[_txt(name, KEY)])
        if change == "id":
            r.id ^= 1
        elif change == "qr":
            r.flags &= ~dns.flags.QR
        elif change == "opcode":
            r.set_opcode(dns.opcode.NOTIFY)
        else:
            other = _query("other._domainkey.ryokan.test." if change == "name" else name,
                           "TXT" if change == "name" else "NS")
            r.question = list(other.question)
        out.append((q, r.to_wire()))
    return out


def _reference(q: dns.message.Message, wire: bytes) -> tuple[str, object]:
    """What dnspython makes of ``wire``: ("error", None), ("other", None) or
    ("answer", (flags, rcode, records, target))."""
    try:
        m = dns.message.from_wire(wire)
    except Exception:  # noqa: BLE001 - any refusal of dnspython's is "not a message"
        return "error", None
    if not q.is_response(m):
        return "other", None
    rdtype = dns.rdatatype.to_text(q.question[0].rdtype)
    name, target = q.question[0].name, None
    records: list[object] = []
    for _ in range(10):
        rrset = next((r for r in m.answer if r.name == name and r.rdtype == q.question[0].rdtype), None)
        if rrset is not None:
            try:
                records = [_rdata_value(rdtype, rd) for rd in rrset]
            except AttributeError as exc:
                # An address record of a class dnspython has no class for: it keeps it
                # as generic rdata, which neither client can read (both raise).
                return "crash", type(exc).__name__
            break
        alias = next((r for r in m.answer if r.name == name and r.rdtype == dns.rdatatype.CNAME), None)
        if alias is None:
            break
        name = alias[0].target
        target = name.to_text(omit_final_dot=True).lower()
    return "answer", (int(m.flags), int(m.rcode()), records, target)


def _ours(q: dns.message.Message, wire: bytes) -> tuple[str, object]:
    try:
        reply = dnswire.read_reply(wire, _question(q))
    except dnswire.WireError:
        return "error", None
    if reply is None:
        return "other", None
    try:
        records, target = _records_from_reply(reply, dnswire.labels_of(q.question[0].name),
                                              dns.rdatatype.to_text(q.question[0].rdtype))
    except AttributeError as exc:
        return "crash", type(exc).__name__
    return "answer", (reply.flags, reply.rcode, records, target)


@pytest.mark.parametrize("index", range(len(_responses())))
def test_every_shape_reads_as_dnspython_reads_it(index):
    q, wire = _responses()[index]
    assert _ours(q, wire) == _reference(q, wire)


def test_the_shapes_cover_taken_and_refused_answers():
    verdicts = [_reference(q, w)[0] for q, w in _responses()]
    assert verdicts.count("answer") >= 15 and verdicts.count("other") == 6


def test_damaged_datagrams_are_refused_or_read_as_dnspython_reads_them():
    """Truncated, flipped and spliced bytes: never another exception than WireError,
    never an answer dnspython would not match, and where both read an answer, the same."""
    rng = random.Random(16)
    shapes = _responses()
    taken = lenient = 0
    for _ in range(6000):
        q, wire = rng.choice(shapes)
        data = bytearray(wire)
        for _ in range(rng.randint(1, 3)):
            how = rng.random()
            if how < 0.3 and len(data) > 12:
                del data[rng.randrange(12, len(data)):]
            elif how < 0.8:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif len(data) > 13:
                a = rng.randrange(12, len(data))
                data[a:rng.randrange(a, len(data))] = bytes([192, rng.randrange(256)])
        ours, theirs = _ours(q, bytes(data)), _reference(q, bytes(data))
        if "crash" in (ours[0], theirs[0]):
            assert ours == theirs  # the same unreadable record breaks both alike
            continue
        if ours[0] == "answer":
            taken += 1
            if theirs[0] == "error":
                # Taken where dnspython refused it: only for damage in a record nobody reads.
                lenient += 1
                continue
            assert theirs == ours
        elif theirs[0] == "answer":
            pytest.fail(f"dnspython reads an answer this module refused: {bytes(data)!r}")
    assert taken > 500 and lenient < taken


def test_compression_pointers_must_point_backwards():
    q = _query("ryokan.test.")
    header = dnswire.build_query(q.id, b"", 16, edns=False)[:12]
    looped = bytearray(header)
    looped[2] |= 0x80  # QR
    looped += b"\xc0\x0c" + b"\x00\x10\x00\x01"  # the question's name points at itself
    with pytest.raises(dnswire.WireError):
        dnswire.read_reply(bytes(looped), _question(q))
