"""The DNS wire format of the check pass's direct queries, without dnspython's objects.

A check pass sends ~34,000 queries for 5,000 domains. dnspython built each query as a
``Message`` (``make_query`` + ``to_wire``, ~50 µs) and parsed each answer into rrsets of
immutable rdata objects (``from_wire``, ~120 µs): together a quarter of the pass's CPU
(py-spy, 5,000 cases), on the one core the GIL allows. A direct query is always the same
few bytes (a header, one question, the EDNS OPT record), and of an answer the checks
read the header, the question (to match it), the answer section's records of one type
(or a CNAME) and the OPT record's extended rcode. This module does exactly that, and
nothing else, keeping dnspython's rules where it matters:

* ``build_query`` gives the bytes ``dns.message.make_query(name, type, use_edns=0,
  payload=1232)`` with RD cleared gives (tests/test_dnswire.py compares them).
* ``read_reply`` accepts a datagram only when dnspython's ``Message.is_response`` would
  (QR set, same ID and opcode, the same question, or an empty question with
  FORMERR/SERVFAIL/NOTIMP/REFUSED), and reads its structure as strictly as ``from_wire``:
  compression pointers only backwards and at most 16 in a chain, label types, names of
  at most 255 bytes, every record inside the datagram, no trailing bytes, OPT only once
  and only in the additional section, no TSIG (none was asked for). What it does not do
  is decode the rdata of records nobody reads (authority, additional): a datagram that
  matches the question but carries a malformed record there is taken, where dnspython
  would have dropped it. That takes nothing from spoofing resistance: whoever can match
  the ID, the source port and the question can send well-formed records as easily.
* ``Reply.records`` follows CNAMEs inside the answer section as dnspython's rrsets
  do (the first rrset of the name and type, its duplicates removed, in order).

Anything other than TXT, CNAME and A/AAAA is decoded by dnspython's own rdata classes.
"""

from __future__ import annotations

import re
import socket
import struct
from dataclasses import dataclass
from typing import Any

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype

QR = 0x8000
AA = 0x0400
TC = 0x0200
RD = 0x0100
_OPCODE = 0x7800
IN = 1
A, NS, CNAME, SOA, AAAA, TXT, OPT, TSIG = 1, 2, 5, 6, 28, 16, 41, 250
FORMERR, SERVFAIL, NOTIMP, REFUSED = 1, 2, 4, 5
_NO_QUESTION_OK = frozenset((FORMERR, SERVFAIL, NOTIMP, REFUSED))
# EDNS(0), 1232-byte payload (DNS Flag Day 2020), no flags, no options.
_OPT_RR = b"\x00" + struct.pack("!HHIH", OPT, 1232, 0, 0)
_HEADER = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")
_QTAIL = struct.Struct("!HH")
_MAX_POINTERS = 16  # dnspython's MAX_COMPRESSION_POINTER_CHAIN


class WireError(Exception):
    """A datagram that is not a well-formed DNS message."""


Labels = tuple[bytes, ...]  # lower-case labels, the root's empty one last


def labels_of(name: dns.name.Name) -> Labels:
    """A name as this module compares names (DNS names are case-insensitive, ASCII)."""
    return tuple(label.lower() for label in name.labels)


def build_query(qid: int, qname: bytes, rdtype: int, *, edns: bool = True, rd: bool = False) -> bytes:
    """A query, without recursion desired unless ``rd``: ``qname`` in wire form
    (``Name.to_wire()``)."""
    return (_HEADER.pack(qid, RD if rd else 0, 1, 0, 0, 1 if edns else 0) + qname
            + _QTAIL.pack(rdtype, IN) + (_OPT_RR if edns else b""))


def _read_name(wire: bytes, pos: int) -> tuple[Labels, int]:
    """(lower-case labels, offset after the name), following compression pointers
    with dnspython's checks (``dns.name.from_wire_parser``)."""
    labels: list[bytes] = []
    end = len(wire)
    start = biggest = pos
    after = -1
    hops = 0
    length = 1
    while True:
        if pos >= end:
            raise WireError("name runs past the message")
        count = wire[pos]
        if count == 0:
            pos += 1
            break
        if count < 64:
            if pos + 1 + count > end:
                raise WireError("label runs past the message")
            labels.append(wire[pos + 1:pos + 1 + count].lower())
            length += count + 1
            pos += count + 1
        elif count >= 192:
            if pos + 2 > end:
                raise WireError("pointer runs past the message")
            target = ((count & 0x3F) << 8) | wire[pos + 1]
            if after < 0:
                after = pos + 2
            if target >= biggest:
                raise WireError("compression pointer not backwards")
            hops += 1
            if hops > _MAX_POINTERS:
                raise WireError("compression pointer chain too long")
            biggest = target
            end = start  # the target must not overlap this name (dnspython: restrict_end)
            pos = start = target
        else:
            raise WireError("bad label type")
    if length > 255:
        raise WireError("name too long")
    labels.append(b"")
    return tuple(labels), (after if after >= 0 else pos)


@dataclass(frozen=True, slots=True)
class Record:
    """One answer or authority record: its owner, type, class and where its rdata lies."""

    name: Labels
    rdtype: int
    rdclass: int
    start: int
    length: int


@dataclass(frozen=True, slots=True)
class Reply:
    """What the checks read of an answer."""

    wire: bytes
    flags: int
    rcode: int  # with the extended bits of the OPT record, as dnspython's ``rcode()``
    answer: tuple[Record, ...]
    authority: tuple[Record, ...]  # owner and type only are read (their rdata is not checked)

    def rdata(self, record: Record) -> bytes:
        return self.wire[record.start:record.start + record.length]

    def rrset(self, name: Labels, rdtype: int) -> list[Record]:
        """The records dnspython's first rrset of ``name``/``rdtype`` would hold: the
        class of the first such record, duplicates (equal rdata) left out, in order."""
        first = next((r for r in self.answer if r.name == name and r.rdtype == rdtype), None)
        if first is None:
            return []
        seen: set[Any] = set()
        out: list[Record] = []
        for r in self.answer:
            if r.name == name and r.rdtype == rdtype and r.rdclass == first.rdclass:
                key = self._identity(r)
                if key not in seen:
                    seen.add(key)
                    out.append(r)
        return out

    def _identity(self, record: Record) -> Any:
        """What makes two records' data equal (names in rdata compare case-insensitively)."""
        if record.rdtype in (CNAME, NS):
            return self.target(record)
        if record.rdtype == TXT or record.rdtype in (A, AAAA) and record.rdclass == IN:
            return self.rdata(record)
        return self.value(record)

    def target(self, record: Record) -> Labels:
        """The name a CNAME (or NS) record points to."""
        labels, after = _read_name(self.wire, record.start)
        if after != record.start + record.length:
            raise WireError("CNAME rdata length")
        return labels

    def value(self, record: Record) -> Any:
        """TXT: the strings; A/AAAA of class IN: the address text; else dnspython's rdata
        object (its classes know the rest, other classes' addresses too)."""
        data = self.rdata(record)
        if record.rdtype == TXT:
            return txt_strings(data)
        if record.rdtype == A and record.rdclass == IN:
            return socket.inet_ntop(socket.AF_INET, data)
        if record.rdtype == AAAA and record.rdclass == IN:
            return socket.inet_ntop(socket.AF_INET6, data)
        return dns.rdata.from_wire(dns.rdataclass.RdataClass.make(record.rdclass),
                                   dns.rdatatype.RdataType.make(record.rdtype),
                                   self.wire, record.start, record.length)

    def _check(self, record: Record) -> None:
        """Decode one answer record as dnspython's ``from_wire`` would: a record that
        does not decode makes the datagram malformed."""
        if record.rdtype in (CNAME, NS):
            self.target(record)
        elif record.rdclass == IN and (record.rdtype == A and record.length != 4
                                       or record.rdtype == AAAA and record.length != 16):
            raise WireError("address of the wrong length")
        else:
            try:
                self.value(record)
            except WireError:
                raise
            except Exception as exc:  # noqa: BLE001 - dnspython's rdata classes raise many kinds
                raise WireError(f"undecodable {record.rdtype} record: {exc!r}") from None


_PLAIN_LABEL = re.compile(rb"[a-z0-9_*-]+")


def name_text(labels: Labels) -> str:
    """A name as the checks write it: lower case, no final dot, dnspython's escapes
    (``Name.to_text``; letters, digits, ``-``, ``_`` and ``*`` need none)."""
    if len(labels) > 1 and all(_PLAIN_LABEL.fullmatch(label) for label in labels[:-1]):
        return b".".join(labels[:-1]).decode("ascii")
    return dns.name.Name(labels).to_text(omit_final_dot=True).lower()


def txt_strings(data: bytes) -> tuple[bytes, ...]:
    """A TXT rdata's character-strings; at least one, each inside the rdata."""
    strings: list[bytes] = []
    pos = 0
    while pos < len(data):
        n = data[pos]
        if pos + 1 + n > len(data):
            raise WireError("TXT string runs past its record")
        strings.append(data[pos + 1:pos + 1 + n])
        pos += 1 + n
    if not strings:
        raise WireError("TXT record without a string")
    return tuple(strings)


@dataclass(frozen=True, slots=True)
class Question:
    """What a reply must match: the query's ID, name, type (class IN, opcode QUERY)."""

    qid: int
    name: Labels
    rdtype: int


def read_reply(wire: bytes, question: Question) -> Reply | None:
    """The reply, or None when the datagram is well formed but not the answer to
    ``question``; WireError when it is not a DNS message at all."""
    if len(wire) < 12:
        raise WireError("short header")
    qid, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(wire)
    pos = 12
    questions: set[tuple[Labels, int, int]] = set()
    for _ in range(qdcount):
        name, pos = _read_name(wire, pos)
        if pos + 4 > len(wire):
            raise WireError("question runs past the message")
        rdtype, rdclass = _QTAIL.unpack_from(wire, pos)
        pos += 4
        questions.add((name, rdtype, rdclass))
    answer: list[Record] = []
    authority: list[Record] = []
    ednsflags = 0
    seen_opt = False
    for section, count in ((1, ancount), (2, nscount), (3, arcount)):
        for _ in range(count):
            name, pos = _read_name(wire, pos)
            if pos + 10 > len(wire):
                raise WireError("record header runs past the message")
            rdtype, rdclass, ttl, rdlen = _RR.unpack_from(wire, pos)
            pos += 10
            if pos + rdlen > len(wire):
                raise WireError("record data runs past the message")
            if rdtype == TSIG:
                raise WireError("a TSIG record in an answer to an unsigned query")
            if rdtype == OPT:
                if section != 3 or seen_opt or name != (b"",):
                    raise WireError("misplaced OPT record")
                seen_opt = True
                ednsflags = ttl
            elif section < 3:
                (answer if section == 1 else authority).append(Record(name, rdtype, rdclass, pos, rdlen))
            pos += rdlen
    if pos != len(wire):
        raise WireError("trailing bytes")
    rcode = (flags & 0x000F) | ((ednsflags >> 20) & 0x0FF0)
    # dnspython's Message.is_response, for a one-question QUERY without TSIG.
    if not flags & QR or qid != question.qid or flags & _OPCODE:
        return None
    if not (qdcount == 0 and rcode in _NO_QUESTION_OK) and questions != {(question.name, question.rdtype, IN)}:
        return None
    reply = Reply(wire, flags, rcode, tuple(answer), tuple(authority))
    for record in answer:
        reply._check(record)
    return reply
