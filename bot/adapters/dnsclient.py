"""DNS access for the checks, and the result values every check returns.

Two ways to ask:

* ``DnsClient.lookup`` goes through the configured resolver (or the system one), for
  names outside the facility's control (SPF includes, report-authorisation records).
* ``DnsClient.authoritative_*`` finds the zone cut of a name, the zone's name servers
  and their addresses, and asks every address directly with recursion off. A record
  the clerk has just published is visible at once (no resolver cache, no negative
  caching), and a zone whose servers disagree is noticed (``dkim_partial_nameservers``).

Every query goes to ``cfg.port`` (test benches run BIND on an unprivileged port). One
``DnsClient`` is one pass: each (name, type, server) is asked at most once, even when
many threads want it at the same moment, so a pass over thousands of domains sharing
a hoster's name servers does not hammer them.
"""

from __future__ import annotations

import _thread
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import dns.exception
import dns.flags
import dns.inet
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver

from bot.adapters import dnswire
from bot.adapters.dnsmux import Batch, Pending, shared_mux
from bot.config import DnsConfig
from bot.core.dnsresults import (  # the values the checks use; re-exported for callers
    MAX_ALIAS_HOPS,
    MAX_NAME_TEXT,
    Answer,
    AreaResult,
    CheckReport,
    Diagnosis,
    DnsFailure,
    DnsQueryError,
    Lookup,
    TxtRecord,
    normalize_name,
)

__all__ = [
    "MAX_ALIAS_HOPS", "MAX_NAME_TEXT", "Answer", "AreaResult", "CheckReport", "Diagnosis",
    "DnsClient", "DnsFailure", "DnsQueryError", "Lookup", "TxtRecord", "normalize_name",
]

T = TypeVar("T")


@dataclass(frozen=True)
class _Alias:
    """Internal: one server's answer was only an alias out of its zone; the caller
    chases ``target`` (outside the shared cache, see ``DnsClient.query_direct``)."""

    target: str



def _rdata_value(rdtype: str, rdata: Any) -> Any:
    if rdtype == "TXT":
        return TxtRecord(tuple(rdata.strings))
    if rdtype in ("A", "AAAA"):
        return rdata.address
    if rdtype == "MX":
        return (int(rdata.preference), rdata.exchange.to_text(omit_final_dot=True).lower())
    if rdtype in ("NS", "PTR", "CNAME"):
        return rdata.target.to_text(omit_final_dot=True).lower()
    if rdtype == "SOA":
        return rdata.mname.to_text(omit_final_dot=True).lower()
    return rdata.to_text()


_RDTYPES = {"TXT": dnswire.TXT, "NS": dnswire.NS, "A": dnswire.A, "AAAA": dnswire.AAAA, "CNAME": dnswire.CNAME}


def _records_from_reply(reply: dnswire.Reply, qname: dnswire.Labels, rdtype: str
                        ) -> tuple[list[Any], str | None]:
    """Follow CNAMEs inside one answer section; return (records, final alias target)."""
    want = _RDTYPES.get(rdtype) or int(dns.rdatatype.from_text(rdtype))
    name = qname
    target: str | None = None
    for _ in range(10):
        rrset = reply.rrset(name, want)
        if rrset:
            if want == dnswire.TXT:
                return [TxtRecord(reply.value(r)) for r in rrset], target
            if want in (dnswire.A, dnswire.AAAA) and rrset[0].rdclass == dnswire.IN:
                return [reply.value(r) for r in rrset], target
            return [_rdata_value(rdtype, reply.value(r)) for r in rrset], target
        alias = reply.rrset(name, dnswire.CNAME)
        if not alias:
            break
        name = reply.target(alias[0])
        target = dnswire.name_text(name)
    return [], target


@dataclass(frozen=True)
class _Qname:
    """A name to ask, in the forms a query needs (made once per name per pass: each is
    asked of every server, and dnspython's ``from_text`` was 8% of the pass's CPU)."""

    name: dns.name.Name
    wire: bytes
    labels: dnswire.Labels


@dataclass
class _Sent:
    """A direct query on its way: what the TCP retry and the EDNS fallback need."""

    qname: dns.name.Name
    rdtype: str
    qid: int
    edns: bool
    pending: Pending


class _Slot:
    """One cache entry: its value once computed; callers that come first wait on it.

    ``concurrent.futures.Future`` did this with a condition variable each (an RLock, a
    deque, notify_all); 34,000 of them a pass. Here a bare lock held until the value
    is in is all a waiter needs. Entries are claimed with ``dict.setdefault``, atomic
    for these keys (tuples of str), so no pass-wide lock is held while claiming:
    64 threads queued on that lock, each wait a GIL hand-off."""

    __slots__ = ("_pending", "_value", "_error")

    def __init__(self) -> None:
        self._pending = _thread.allocate_lock()
        self._pending.acquire()
        self._value: Any = None
        self._error: BaseException | None = None

    @classmethod
    def holding(cls, value: Any) -> _Slot:
        slot = cls()
        slot.set_result(value)
        return slot

    def set_result(self, value: Any) -> None:
        self._value = value
        self._pending.release()

    def set_exception(self, exc: BaseException) -> None:
        self._error = exc
        self._pending.release()

    def done(self) -> bool:
        return not self._pending.locked()

    def exception(self) -> BaseException | None:
        return self._error

    def result(self) -> Any:
        if self._pending.locked():
            with self._pending:  # released when the value is in; then passed on at once
                pass
        if self._error is not None:
            raise self._error
        return self._value


class QueryIds:
    """Unpredictable 16-bit query IDs from the OS's CSPRNG, 2,048 per read: dnspython
    asks ``SystemRandom`` for each one, a system call per query (a tenth of a check
    pass's CPU in the first profile)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: list[int] = []

    def next(self) -> int:
        with self._lock:
            if not self._pool:
                raw = os.urandom(4096)
                self._pool = [int.from_bytes(raw[i:i + 2], "big") for i in range(0, len(raw), 2)]
            return self._pool.pop()


QUERY_IDS = QueryIds()


class DnsClient:
    """A pass's view of DNS: the configured resolver plus direct authoritative queries,
    with a thread-safe per-pass cache (see the module docstring)."""

    def __init__(self, cfg: DnsConfig):
        self.cfg = cfg
        self.port = int(cfg.port)
        self.timeout = float(cfg.timeout)
        if cfg.nameservers:
            self.resolver = dns.resolver.Resolver(configure=False)
            self.resolver.nameservers = list(cfg.nameservers)
        else:
            self.resolver = dns.resolver.Resolver()
        self.resolver.port = self.port
        self.resolver.timeout = self.timeout
        # dnspython's lifetime bounds the whole resolution across all servers.
        self.resolver.lifetime = self.timeout * max(1, len(self.resolver.nameservers))
        self._cache: dict[tuple[Any, ...], _Slot] = {}
        self._local = threading.local()
        self._sends: list[None] = []  # list.append is atomic: no lock per query
        self._names: dict[str, _Qname] = {}
        self._mux = shared_mux()
        self._ids = QUERY_IDS

    # -- cache -------------------------------------------------------------

    def _qname(self, name: str) -> _Qname:
        """``name`` as a query name; the ``dns.name.from_text`` errors of a name that
        cannot be asked (too long, an empty label)."""
        q = self._names.get(name)
        if q is None:
            parsed = dns.name.from_text(name)
            q = self._names[name] = _Qname(parsed, parsed.to_wire() or b"", dnswire.labels_of(parsed))
        return q

    def _cached(self, key: tuple[Any, ...], compute: Callable[[], T]) -> T:
        """Compute once per key per pass; concurrent callers wait for the first.
        Exceptions (programming errors) propagate: they are never turned into DNS
        failures, so a bug cannot masquerade as "the facility's DNS is down".

        A ``compute`` never waits, directly or through another key, for a key that may
        be waiting for it: CNAME chases run outside the cache (``query_direct``), so two
        threads each owning one end of an alias loop cannot wait on each other."""
        owned: set[tuple[Any, ...]] = self._local.__dict__.setdefault("owned", set())
        if key in owned:
            # The same thread re-entering its own key would wait on itself forever.
            raise RuntimeError(f"re-entrant DNS lookup of {key}")
        fut = self._cache.get(key)
        owner = False
        if fut is None:
            claim = _Slot()
            fut = self._cache.setdefault(key, claim)
            owner = fut is claim
        if owner:
            owned.add(key)
            try:
                fut.set_result(compute())
            except BaseException as exc:
                fut.set_exception(exc)
                raise
            finally:
                owned.discard(key)
        result: T = fut.result()
        return result

    def clear_cache(self) -> None:
        self._cache.clear()

    @property
    def queries_sent(self) -> int:
        return len(self._sends)

    def _count(self) -> None:
        self._sends.append(None)

    # -- through the resolver ---------------------------------------------

    def lookup(self, name: str, rdtype: str) -> Answer:
        """Ask the configured resolver; CNAMEs are followed by the resolver."""
        name = normalize_name(name)
        return self._cached(("resolver", name, rdtype), lambda: self._resolve(name, rdtype))

    def _resolve(self, name: str, rdtype: str) -> Answer:
        self._count()
        try:
            ans = self.resolver.resolve(name, rdtype, raise_on_no_answer=False, search=False)
        except dns.resolver.NXDOMAIN:
            return Lookup(name, rdtype, "NXDOMAIN")
        except dns.resolver.LifetimeTimeout:
            return DnsFailure("timeout", "resolver", name)
        except dns.resolver.NoNameservers as exc:
            return DnsFailure(_rcode_from_nonameservers(exc), "resolver", name)
        except (dns.exception.DNSException, OSError, ValueError) as exc:
            return DnsFailure(type(exc).__name__, "resolver", name)
        records = [_rdata_value(rdtype, rd) for rd in ans.rrset] if ans.rrset else []
        canonical = ans.canonical_name.to_text(omit_final_dot=True).lower()
        return Lookup(name, rdtype, "NOERROR", tuple(records),
                      canonical if canonical != name else None)

    def query_txt(self, name: str) -> list[str]:
        """TXT records via the resolver; [] when none; DnsQueryError on failure."""
        ans = self.lookup(name, "TXT")
        if isinstance(ans, DnsFailure):
            raise DnsQueryError(ans)
        return list(ans.records)

    # -- zone cut and name servers -------------------------------------------

    def zone_for(self, name: str) -> str | DnsFailure:
        """The apex of the zone holding ``name``: the owner of the SOA in the answer
        or, for NODATA/NXDOMAIN, in the authority section (one query, usually)."""
        name = normalize_name(name)
        return self._cached(("zone", name), lambda: self._find_zone(name))

    def _find_zone(self, name: str) -> str | DnsFailure:
        labels = name.split(".")
        first_failure: DnsFailure | None = None
        for i in range(len(labels)):
            candidate = ".".join(labels[i:])
            found = self._zone_probe(candidate)
            if isinstance(found, str):
                self._remember_zone(name, found)
                return found
            if isinstance(found, DnsFailure):
                # A failure low in the tree may be an unserved name (REFUSED); a
                # parent may still answer. Remember the first for the report.
                first_failure = first_failure or found
        return first_failure or DnsFailure("no_zone", None, name)

    def _remember_zone(self, name: str, zone: str) -> None:
        """Every name between ``name`` and its zone apex is in that zone too (there is
        no cut in between, or the SOA would have been another's). Remembering them
        saves one query per further name under the same domain (_dmarc, probes)."""
        labels = name.split(".")
        for i in range(1, len(labels)):
            ancestor = ".".join(labels[i:])
            if len(ancestor) < len(zone) or not (ancestor == zone or ancestor.endswith("." + zone)):
                break
            self._seed(("zone", ancestor), zone)

    def _known_zone(self, name: str) -> tuple[str, bool] | None:
        """(zone, exact) from the cache: the name's own, else its nearest ancestor's."""
        labels = name.split(".")
        for i in range(len(labels)):
            fut = self._cache.get(("zone", ".".join(labels[i:])))
            if fut is not None and fut.done() and fut.exception() is None \
                    and isinstance(fut.result(), str):
                return fut.result(), i == 0
        return None

    def _zone_probe(self, name: str) -> str | DnsFailure | None:
        """One query that tells the zone of ``name``: its NS. At a zone apex the answer
        holds the zone's NS set, which is kept as the zone's NS lookup (so a domain that
        is its own zone, the usual case, costs one query for zone and servers together);
        below an apex the negative answer carries the zone's SOA in its authority section."""
        self._count()
        quick = self._zone_probe_quick(name)
        if quick is not None:
            return quick[0]
        try:
            ans = self.resolver.resolve(name, "NS", raise_on_no_answer=False, search=False)
            response: dns.message.Message | None = ans.response
        except dns.resolver.NXDOMAIN as exc:
            responses: dict[Any, dns.message.Message] = exc.responses()  # type: ignore[no-untyped-call]
            response = next(iter(responses.values()), None)
        except dns.resolver.LifetimeTimeout:
            return DnsFailure("timeout", "resolver", name)
        except dns.resolver.NoNameservers as exc:
            return DnsFailure(_rcode_from_nonameservers(exc), "resolver", name)
        except (dns.exception.DNSException, OSError, ValueError) as exc:
            return DnsFailure(type(exc).__name__, "resolver", name)
        if response is None:
            return None
        question = dnswire.Question(response.id, self._qname(name).labels, dnswire.NS)
        return self._zone_from_reply(name, dnswire.read_reply(response.to_wire(), question))

    def _zone_probe_quick(self, name: str) -> tuple[str | None] | None:
        """The zone probe through the multiplexer, as dnspython's resolver would ask it
        (recursion desired, no EDNS, the first configured resolver, ``timeout``), read as
        bytes: a resolver's NS lookup cost ~0.5 ms of CPU, a tenth of the pass. Only a
        NOERROR or NXDOMAIN answer is taken (what the resolver takes from its first
        server); anything else (silence, SERVFAIL, a truncated answer, an address that
        is not plain IP) is None, and the probe is asked through the resolver itself,
        with its retries, its other servers and TCP."""
        servers = self.resolver.nameservers
        first = servers[0] if servers else None
        if not isinstance(first, str) or not dns.inet.is_address(first) or "%" in first:
            return None
        try:
            qname = self._qname(name)
        except dns.exception.DNSException:
            return None
        qid = self._ids.next()
        question = dnswire.Question(qid, qname.labels, dnswire.NS)
        wire = dnswire.build_query(qid, qname.wire, dnswire.NS, edns=False, rd=True)
        pending = self._mux.query(wire, question, first, self.port, self.timeout)
        try:
            reply = pending.result(timeout=self.timeout + 5)
        except (dns.exception.Timeout, OSError):
            return None
        if reply.rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN) or reply.flags & dnswire.TC:
            return None
        return (self._zone_from_reply(name, reply),)

    def _zone_from_reply(self, name: str, reply: dnswire.Reply | None) -> str | None:
        """The zone an NS answer for ``name`` tells (see ``_zone_probe``)."""
        if reply is None:
            return None
        qname = self._qname(name).labels
        ns = reply.rrset(qname, dnswire.NS)
        if ns:
            targets = tuple(dnswire.name_text(reply.target(r)) for r in ns)
            self._seed(("resolver", name, "NS"), Lookup(name, "NS", "NOERROR", targets))
            return name
        for section in (reply.answer, reply.authority):
            for record in section:
                if record.rdtype == dnswire.SOA:
                    return dnswire.name_text(record.name)
        # An authoritative-only server used as resolver (test benches, an operator's
        # own servers) answers a delegated name with a referral: its NS owner is the cut.
        for record in reply.authority:
            if record.rdtype == dnswire.NS and not reply.flags & dnswire.AA:
                return dnswire.name_text(record.name)
        return None

    def _seed(self, key: tuple[Any, ...], value: Any) -> None:
        """Remember an answer learnt on the way (not asked for under ``key``)."""
        if key not in self._cache:
            self._cache.setdefault(key, _Slot.holding(value))

    def nameserver_addresses(self, zone: str) -> dict[str, list[str]]:
        """NS host name -> its addresses (A and AAAA), via the resolver."""
        zone = normalize_name(zone)
        return self._cached(("nsaddr", zone), lambda: self._ns_addresses(zone))

    def _ns_addresses(self, zone: str) -> dict[str, list[str]]:
        ns = self.lookup(zone, "NS")
        names: list[str] = []
        if isinstance(ns, Lookup):
            names = list(ns.records) or self._referral_ns(zone)
        out: dict[str, list[str]] = {}
        for host in sorted(set(names)):
            addrs: list[str] = []
            for rdtype in ("A", "AAAA"):
                ans = self.lookup(host, rdtype)
                if isinstance(ans, Lookup):
                    addrs.extend(ans.records)
            out[host] = addrs
        return out

    def _referral_ns(self, zone: str) -> list[str]:
        """The NS names of a referral for ``zone`` (see _zone_probe), if the resolver is
        an authoritative server of the parent zone."""
        self._count()
        try:
            ans = self.resolver.resolve(zone, "NS", raise_on_no_answer=False, search=False)
        except (dns.exception.DNSException, OSError, ValueError):
            return []
        qname = dns.name.from_text(zone)
        return [rd.target.to_text(omit_final_dot=True).lower()
                for rrset in ans.response.authority
                if rrset.rdtype == dns.rdatatype.NS and rrset.name == qname for rd in rrset]

    # -- direct authoritative queries ----------------------------------------

    def query_direct(self, name: str, rdtype: str, server: str, *,
                     _chain: tuple[str, ...] = ()) -> Answer:
        """Ask one server directly, recursion off, at the configured port.

        An alias into another zone is chased here, after the cached single-server
        answer, never inside it: ``_chain`` (the names already on this chase) ends a
        loop with ``cname_loop`` on whichever thread closes it."""
        name = normalize_name(name)
        raw = self._cached(("direct", name, rdtype, server),
                           lambda: self._direct(name, rdtype, server))
        if not isinstance(raw, _Alias):
            return raw
        chain = (*_chain, name)
        if raw.target in chain or len(chain) > MAX_ALIAS_HOPS:
            return DnsFailure("cname_loop", server, name)
        chased = self.authoritative_merged(raw.target, rdtype, _chain=chain)
        if isinstance(chased, DnsFailure):
            return chased
        return Lookup(name, rdtype, chased.rcode, chased.records, raw.target)

    def _direct(self, name: str, rdtype: str, server: str) -> Answer | _Alias:
        try:
            qname = self._qname(name)
        except dns.name.NameTooLong:
            return DnsFailure("name_too_long", server, name)
        except dns.exception.DNSException as exc:  # an empty or over-long label
            return DnsFailure(type(exc).__name__, server, name)
        # Sent already by ``prefetch`` (with others, at once), or sent now.
        sent = self._started().pop((name, rdtype, server), None) or self._send(name, rdtype, server)
        reply = None
        # Two tries: a lost UDP datagram is common on the open Internet and must not
        # become a "DNS error" in a facility's case history.
        for attempt in range(2):
            try:
                # The multiplexer ends every query by its deadline; the wait's own bound
                # is only a guard against a bug there hanging the pass.
                reply = sent.pending.result(timeout=self.timeout + 5)
                if reply.rcode == dns.rcode.FORMERR and sent.edns:
                    # A server from before EDNS (RFC 6891 §7): the same question without it.
                    sent = self._send(name, rdtype, server, edns=False)
                    reply = sent.pending.result(timeout=self.timeout + 5)
                if reply.flags & dnswire.TC:
                    self._count()  # too big for UDP: the same question over TCP
                    reply = self._tcp(sent, server)
                break
            except dns.exception.Timeout:
                if attempt == 1:
                    return DnsFailure("timeout", server, name)
                sent = self._send(name, rdtype, server)
            except OSError:
                return DnsFailure("unreachable", server, name)
            except dns.exception.DNSException as exc:
                return DnsFailure(type(exc).__name__, server, name)
        assert reply is not None
        rcode = reply.rcode
        if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            return DnsFailure(dns.rcode.to_text(dns.rcode.Rcode.make(rcode)), server, name)
        records, target = _records_from_reply(reply, qname.labels, rdtype)
        if not records and target is None and not reply.flags & dnswire.AA:
            # A referral or a lame server: it does not hold this name's zone.
            return DnsFailure("not_authoritative", server, name)
        if rcode == dns.rcode.NXDOMAIN and target is None:
            return Lookup(name, rdtype, "NXDOMAIN")
        if not records and target is not None:
            # An alias into another zone: the answer lives with that zone's servers,
            # asked by the caller (query_direct), outside this cached computation.
            return _Alias(target)
        return Lookup(name, rdtype, "NOERROR", tuple(records), target)

    def _tcp(self, sent: _Sent, server: str) -> dnswire.Reply:
        """The same question over TCP (dnspython's client; rare: only for answers over
        1,232 bytes), read like a UDP answer."""
        query = self._message(sent)
        response = dns.query.tcp(query, server, timeout=self.timeout, port=self.port)
        reply = dnswire.read_reply(response.to_wire(),
                                   dnswire.Question(sent.qid, dnswire.labels_of(sent.qname),
                                                    int(dns.rdatatype.from_text(sent.rdtype))))
        if reply is None:
            raise dns.exception.FormError("TCP answer to another question")  # type: ignore[no-untyped-call]
        return reply

    @staticmethod
    def _message(sent: _Sent) -> dns.message.Message:
        """The dnspython message of the bytes ``_send`` sent (same ID, same flags)."""
        query = (dns.message.make_query(sent.qname, sent.rdtype, use_edns=0, payload=1232, id=sent.qid)
                 if sent.edns else dns.message.make_query(sent.qname, sent.rdtype, id=sent.qid))
        query.flags &= ~dns.flags.RD
        return query

    def _send(self, name: str, rdtype: str, server: str, *, edns: bool = True,
              batch: Batch | None = None) -> _Sent:
        # EDNS(0) with 1232 bytes (DNS Flag Day 2020): a 2048-bit DKIM record with the
        # zone's NS in the authority section fits, where 512 bytes made every such
        # answer come back truncated and be asked again over TCP. Recursion off: an
        # authoritative answer or nothing. The bytes are dnspython's make_query's
        # (tests/test_dnswire.py), built without its message objects.
        qname = self._qname(name)
        qid = self._ids.next()
        rdtype_value = _RDTYPES.get(rdtype) or int(dns.rdatatype.from_text(rdtype))
        wire = dnswire.build_query(qid, qname.wire, rdtype_value, edns=edns)
        question = dnswire.Question(qid, qname.labels, rdtype_value)
        self._count()
        return _Sent(qname.name, rdtype, qid, edns,
                     self._mux.query(wire, question, server, self.port, self.timeout / 2, batch))

    def _started(self) -> dict[tuple[str, str, str], _Sent]:
        """This thread's queries sent by ``prefetch`` and not yet read."""
        started: dict[tuple[str, str, str], _Sent] = self._local.__dict__.setdefault("started", {})
        return started

    def prefetch(self, names: list[tuple[str, str]], *, first_server_only: bool = False) -> None:
        """Ask the authoritative servers for several names at once (one round trip
        instead of one each); the answers land in the cache, where the checks read
        them in their own order. Names under a zone not yet known are left to the
        checks. ``first_server_only``: the server ``authoritative_first`` asks."""
        by_key: list[tuple[str, str, str]] = []
        for raw_name, rdtype in names:
            name = normalize_name(raw_name)
            if not name or len(name) > MAX_NAME_TEXT:
                continue
            known = self._known_zone(name)
            if known is None:
                continue
            addrs = self._zone_addresses(known[0])
            for addr in addrs[:1] if first_server_only else addrs:
                by_key.append((name, rdtype, addr))
        self._fan_out(by_key)

    def _fan_out(self, keys: list[tuple[str, str, str]]) -> None:
        """Send every (name, type, server) not yet in the cache at once, then read each
        answer into the cache (through ``_direct``). The keys are claimed in the cache
        before anything is sent, so two threads never send the same question; alias
        chases are left to the caller, as in ``query_direct``."""
        mine: list[tuple[tuple[str, str, str], _Slot]] = []
        for key in dict.fromkeys(keys):
            if ("direct", *key) not in self._cache:
                claim = _Slot()
                if self._cache.setdefault(("direct", *key), claim) is claim:
                    mine.append((key, claim))
        if not mine:
            return
        started = self._started()
        batch = Batch()
        for (name, rdtype, addr), _fut in mine:
            try:
                started[(name, rdtype, addr)] = self._send(name, rdtype, addr, batch=batch)
            except dns.exception.DNSException:
                continue  # an unaskable name: _direct says why
        # Sleep once for all of them (one wake-up, not one per answer), then read.
        batch.wait(self.timeout / 2)
        owned: set[tuple[Any, ...]] = self._local.__dict__.setdefault("owned", set())
        try:
            for (name, rdtype, addr), fut in mine:
                owned.add(("direct", name, rdtype, addr))
                try:
                    fut.set_result(self._direct(name, rdtype, addr))
                finally:
                    owned.discard(("direct", name, rdtype, addr))
        except BaseException as exc:
            # Never leave a claimed answer unset: other threads wait for it.
            for _key, fut in mine:
                if not fut.done():
                    fut.set_exception(exc)
            raise
        finally:
            started.clear()

    def _zone_addresses(self, zone: str) -> list[str]:
        hosts = self.nameserver_addresses(zone)
        return sorted(a for host in sorted(hosts) for a in hosts[host])

    def authoritative_lookup(self, name: str, rdtype: str, *,
                             _chain: tuple[str, ...] = ()) -> dict[str, Answer]:
        """Per authoritative server address, its answer. When the zone's servers
        cannot be found, the configured resolver's answer under the key "resolver"."""
        name = normalize_name(name)
        if len(name) > MAX_NAME_TEXT:
            # Not askable at all (a probe built from a long domain): say so, clean.
            return {"resolver": DnsFailure("name_too_long", None, name)}
        known = self._known_zone(name)
        if known is not None and not known[1]:
            # Guess the zone of an ancestor; a referral from every server means a
            # delegation below it, and then the name's own zone is looked up.
            answers = self._ask_zone(known[0], name, rdtype, _chain)
            # The right zone's servers never refer a name of their own zone elsewhere.
            if not any(isinstance(a, DnsFailure) and a.reason == "not_authoritative"
                       for a in answers.values()):
                # Its servers answered for it: the name is in that zone (a later
                # zone_for, e.g. for the servers' names in a mail, asks nothing).
                self._seed(("zone", name), known[0])
                return answers
        zone = self.zone_for(name)
        return self._ask_zone(zone, name, rdtype, _chain)

    def _ask_zone(self, zone: str | DnsFailure, name: str, rdtype: str,
                  _chain: tuple[str, ...] = ()) -> dict[str, Answer]:
        hosts = self.nameserver_addresses(zone) if isinstance(zone, str) else {}
        if not any(hosts.values()):
            return {"resolver": self.lookup(name, rdtype)}
        out: dict[str, Answer] = {}
        # Every server at once: one round trip for the zone, not one per server.
        self._fan_out([(name, rdtype, a) for addrs in hosts.values() for a in addrs])
        for addrs in hosts.values():
            answers = {addr: self.query_direct(name, rdtype, addr, _chain=_chain) for addr in addrs}
            # A host without IPv6 routing cannot reach AAAA addresses; that says
            # nothing about the zone when another address of the same server answered.
            reachable = [a for a, r in answers.items()
                         if not (isinstance(r, DnsFailure) and r.reason == "unreachable")]
            for addr, ans in answers.items():
                if addr in reachable or not reachable:
                    out[addr] = ans
        return out

    def authoritative_first(self, name: str, rdtype: str) -> Answer:
        """One server's answer, for the wrong-place probes: a record a panel put in the
        wrong place is on every server of the zone or on none, so asking all of them
        would only double the queries. The zone's first server (a stable order, so the
        apex answer is shared with the other checks) unless it fails; then the next."""
        name = normalize_name(name)
        if len(name) > MAX_NAME_TEXT:
            return DnsFailure("name_too_long", None, name)
        known = self._known_zone(name)
        zone: str | DnsFailure = known[0] if known is not None else self.zone_for(name)
        addrs = self._zone_addresses(zone) if isinstance(zone, str) else []
        failure: DnsFailure | None = None
        for addr in addrs:
            ans = self.query_direct(name, rdtype, addr)
            if isinstance(ans, Lookup):
                return ans
            if ans.reason == "not_authoritative":
                break  # a delegation below the guessed zone: the full path finds it
            failure = failure or ans
        if failure is not None:
            return failure
        return self.authoritative_merged(name, rdtype)

    def authoritative_txt(self, name: str) -> dict[str, list[TxtRecord] | DnsFailure]:
        """Per authoritative server address: its TXT records at ``name`` or a failure."""
        out: dict[str, list[TxtRecord] | DnsFailure] = {}
        for server, ans in self.authoritative_lookup(name, "TXT").items():
            out[server] = ans if isinstance(ans, DnsFailure) else list(ans.records)
        return out

    def authoritative_merged(self, name: str, rdtype: str, *,
                             _chain: tuple[str, ...] = ()) -> Answer:
        """One answer for ``name``: the first server that answered (servers are meant
        to agree; the DKIM check compares them, the others need one view)."""
        answers = self.authoritative_lookup(name, rdtype, _chain=_chain)
        for ans in answers.values():
            if isinstance(ans, Lookup):
                return ans
        return next(iter(answers.values()), DnsFailure("no_answer", None, name))


def _rcode_from_nonameservers(exc: dns.resolver.NoNameservers) -> str:
    """The rcode (SERVFAIL, REFUSED, …) the servers gave, for the evidence."""
    for err in exc.kwargs.get("errors", []) or []:
        for part in err:
            if isinstance(part, dns.message.Message):
                return dns.rcode.to_text(part.rcode())
            text = str(part)
            for code in ("SERVFAIL", "REFUSED", "NOTIMP", "FORMERR"):
                if code in text:
                    return code
    return "no_nameservers"
