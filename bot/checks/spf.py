"""SPF (RFC 7208): parse a record, evaluate it for an address, count its DNS lookups,
and say which single merged record to publish.

Why an evaluator of our own: pyspf resolves through a module-global function and
checkdmarc only analyses (it does not evaluate an address); we need every query to go
through the pass's ``DnsClient`` (its cache, its server and port), and the lookup and
void-lookup counts as values. The tests compare verdicts with pyspf and checkdmarc.

``parse_*``/``merge_*`` are pure; ``SpfEvaluator`` takes a lookup function; ``check_spf``
returns an ``AreaResult`` with Japanese messages.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bot.checks.spfsyntax import syntax_diagnosis
from bot.core.dnsresults import (
    RETRY_BY_BOT,
    AreaResult,
    Diagnosis,
    DnsFailure,
    DnsLookup,
    Lookup,
    normalize_name,
)
from bot.core.recordtext import clean_pasted, find_pasted

MAX_LOOKUPS = 10       # RFC 7208 §4.6.4
MAX_VOID_LOOKUPS = 2   # RFC 7208 §4.6.4
MAX_MX_PTR_NAMES = 10  # RFC 7208 §4.6.4
DNS_MECHANISMS = frozenset({"include", "a", "mx", "ptr", "exists"})
MECHANISMS = DNS_MECHANISMS | {"all", "ip4", "ip6"}

LookupFn = Callable[[str, str], "Lookup | DnsFailure"]


class PermError(Exception):
    """RFC 7208 permerror: the record (or one it includes) cannot be evaluated."""


class TempError(Exception):
    """RFC 7208 temperror: DNS failed; try again later."""


@dataclass
class Term:
    text: str                 # as written, for merged records
    name: str                 # mechanism or modifier name, lower case
    qualifier: str = "+"
    arg: str | None = None    # domain-spec, ip network, or modifier value
    cidr4: int | None = None
    cidr6: int | None = None
    modifier: bool = False


@dataclass
class SpfRecord:
    text: str
    terms: list[Term] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)   # English, for the evidence
    issues: list[TermIssue] = field(default_factory=list)  # the faulty terms, by position

    @property
    def valid(self) -> bool:
        return not self.problems

    def modifier(self, name: str) -> Term | None:
        return next((t for t in self.terms if t.modifier and t.name == name), None)

    @property
    def mechanisms(self) -> list[Term]:
        return [t for t in self.terms if not t.modifier]


def valid_dns_name(name: str) -> bool:
    """A name a DNS query can carry: labels of 1-63 octets, 253 characters in all."""
    name = name.removesuffix(".")
    return 0 < len(name) <= 253 and all(0 < len(lab.encode()) < 64 for lab in name.split("."))


def valid_fqdn(domain: str) -> bool:
    """RFC 7208 §4.3: a fully qualified ASCII domain (two labels at least)."""
    return domain.isascii() and valid_dns_name(domain) and "." in domain.strip(".") \
        and not domain.startswith("[")


def is_spf_record(text: str) -> bool:
    """RFC 7208 §4.5: exactly "v=spf1" followed by a space or the end."""
    low = text.lower()
    return low == "v=spf1" or low.startswith("v=spf1 ")


def is_spf_candidate(text: str) -> bool:
    """Meant as SPF, even if broken (quoted, leading junk, a zero-width space or
    full-width letters pasted inside "v=spf1": then it is a broken record to name, not
    "no record", which would invite a second one)."""
    return "v=spf1" in text.lower() or "v=spf1" in clean_pasted(text).lower()


# RFC 7208 §7.1: macro-expand / literals. Letters c, r, t only in exp= text (§7.3).
_MACRO_RE = re.compile(r"%\{([slodiphcrtvSLODIPHCRTV])([0-9]*)(r?)([.\-+,/_=]*)\}|%%|%_|%-",
                       re.IGNORECASE)
_MACRO_ANY_RE = re.compile(r"%\{([A-Za-z])([0-9]*)(r?)([.\-+,/_=]*)\}|%%|%_|%-", re.IGNORECASE)
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9\-_.]*$")
# toplabel = ( *alphanum ALPHA *alphanum ) / ( 1*alphanum "-" *( alphanum / "-" ) alphanum )
_TOPLABEL_RE = re.compile(r"[A-Za-z0-9]*[A-Za-z][A-Za-z0-9]*|[A-Za-z0-9]+-[A-Za-z0-9-]*[A-Za-z0-9]")
_VISIBLE = frozenset(chr(c) for c in range(0x21, 0x7F))
# ip4-cidr-length = "/" ("0" / %x31-39 0*1DIGIT); ip6 likewise up to three digits
_PREFIX_RE = re.compile(r"0|[1-9][0-9]{0,2}")


def _macro_string_problem(value: str, *, exp: bool = False) -> str | None:
    """Why ``value`` is not a macro-string (RFC 7208 §7.1); None when it is one."""
    if any(ch not in _VISIBLE for ch in value):
        return "non-ASCII or control character"
    pos = 0
    for m in _MACRO_ANY_RE.finditer(value):
        if "%" in value[pos:m.start()]:
            return "a '%' not followed by '{', '%', '-' or '_'"
        letter = m.group(1)
        if letter is not None:
            if letter.lower() not in "slodiphvcrt":
                return f"unknown macro letter %{{{letter}}}"
            if letter.lower() in "crt" and not exp:
                return f"macro %{{{letter}}} is allowed only in exp= text"
        pos = m.end()
    if "%" in value[pos:]:
        return "a '%' not followed by '{', '%', '-' or '_'"
    return None


def _domain_spec_problem(spec: str) -> str | None:
    """RFC 7208 §7.1 domain-spec = macro-string domain-end; None when valid."""
    if not spec:
        return "empty domain"
    problem = _macro_string_problem(spec)
    if problem:
        return problem
    # domain-end = ( "." toplabel [ "." ] ) / macro-expand
    if _MACRO_ANY_RE.search(spec) and re.search(r"%\{[^}]*\}$", spec):
        return None
    body = spec.removesuffix(".")
    head, dot, top = body.rpartition(".")
    if not dot or not head:
        return "a domain needs at least two labels"
    if not _TOPLABEL_RE.fullmatch(top):
        return f"invalid top-level label {top!r}"
    return None


def _parse_prefix(text: str, limit: int) -> int | None:
    if not _PREFIX_RE.fullmatch(text) or int(text) > limit:
        return None
    return int(text)


def _parse_cidr(arg: str, t: Term) -> str | None:
    """Split "domain/24//64" into domain and prefix lengths; None if malformed."""
    m = re.fullmatch(r"(.*?)(?:/([0-9]+))?(?://([0-9]+))?", arg, re.DOTALL)
    if not m:
        return None
    spec, c4, c6 = m.groups()
    if c4 is not None:
        t.cidr4 = _parse_prefix(c4, 32)
        if t.cidr4 is None:
            return None
    if c6 is not None:
        t.cidr6 = _parse_prefix(c6, 128)
        if t.cidr6 is None:
            return None
    return spec


@dataclass(frozen=True)
class TermIssue:
    """One faulty term: where (1-based term number) and what (a stable kind)."""

    index: int
    term: str
    kind: str    # bad_character | unknown_mechanism | bad_domain | bad_address | bad_prefix
    #              | prefix_not_allowed | all_argument | bad_macro | duplicate_modifier
    problem: str  # English, for the evidence


def parse_spf(text: str) -> SpfRecord:
    """Parse one SPF record (RFC 7208 §4.6.1: terms separated by SP only); every problem
    is listed, the record is still usable for merging where the terms are sound."""
    rec = SpfRecord(text)
    if not is_spf_record(text):
        rec.problems.append("record does not start with 'v=spf1 '")
    seen_mods: set[str] = set()
    for index, raw in enumerate(_body_words(text), start=1):
        t = _parse_term(raw)
        if isinstance(t, tuple):
            kind, problem = t
            rec.problems.append(problem)
            rec.issues.append(TermIssue(index, raw, kind, problem))
            continue
        if t.modifier and t.name in ("redirect", "exp"):
            if t.name in seen_mods:
                problem = f"modifier {t.name}= appears twice"
                rec.problems.append(problem)
                rec.issues.append(TermIssue(index, raw, "duplicate_modifier", problem))
            seen_mods.add(t.name)
        rec.terms.append(t)
    return rec


def _body_words(text: str) -> list[str]:
    """The terms after "v=spf1", split at ASCII spaces only (RFC 7208 §4.6.1); of a
    broken record (quoted, junk before v=spf1) what follows v=spf1, without quotes."""
    if is_spf_record(text):
        body = text[6:]
    else:
        at = text.lower().find("v=spf1")
        body = text[at + 6:] if at >= 0 else text
        body = body.replace('"', " ").replace("\\", " ")
    return [w for w in body.split(" ") if w]


def repair_spf(text: str) -> tuple[str, list[str]]:
    """The record as meant: pasted characters undone (bot/core/recordtext.py), leading
    zeros of a prefix length dropped, a prefix length taken off ptr/include/exists, a
    repeated redirect=/exp= dropped; a term that cannot be repaired (a wrong domain,
    an unknown mechanism) is left out and returned as dropped."""
    cleaned = clean_pasted(text)
    rec = parse_spf(cleaned)
    if not rec.issues:
        return cleaned, []
    faulty = {i.index: i for i in rec.issues}
    kept: list[str] = []
    dropped: list[str] = []
    for index, word in enumerate(_body_words(cleaned), start=1):
        issue = faulty.get(index)
        if issue is None:
            kept.append(word)
            continue
        candidate = ""
        if issue.kind == "bad_prefix":
            candidate = re.sub(r"/0+([0-9])", r"/\1", word)
        elif issue.kind == "prefix_not_allowed":
            candidate = word.split("/", 1)[0]
        if candidate and not isinstance(_parse_term(candidate), tuple):
            kept.append(candidate)
        elif issue.kind != "duplicate_modifier":
            dropped.append(word)
    return " ".join(["v=spf1", *kept]), dropped


def _parse_term(raw: str) -> Term | tuple[str, str]:
    if any(ch not in _VISIBLE for ch in raw):
        return "bad_character", f"control or non-ASCII character in {raw!r}"
    qualifier = "+"
    body = raw
    if body[:1] in "+-~?":
        qualifier, body = body[0], body[1:]
    m = re.fullmatch(r"([A-Za-z][A-Za-z0-9\-_.]*)=(.*)", body)
    if m and raw[:1] not in "+-~?":
        name, value = m.group(1).lower(), m.group(2)
        # exp= is a domain-spec too (the name of the TXT record holding the text)
        problem = (_domain_spec_problem(value) if name in ("redirect", "exp")
                   else _macro_string_problem(value))
        if problem:
            return _domain_kind(problem), f"{problem} in {raw!r}"
        return Term(raw, name, arg=value, modifier=True)
    name, sep, arg = body.partition(":")
    if not sep:
        name, slash, rest = body.partition("/")
        arg = ""
        if slash:
            arg = "/" + rest
    name = name.lower()
    t = Term(raw, name, qualifier)
    if name not in MECHANISMS:
        return "unknown_mechanism", f"unknown mechanism {raw!r}"
    if name == "all":
        return t if not arg and not sep else ("all_argument", f"'all' takes no argument: {raw!r}")
    if name in ("ip4", "ip6"):
        return _parse_ip(raw, name, arg, sep, t)
    if name in ("include", "exists", "ptr"):
        if arg.startswith("/") or "/" in arg and name == "ptr":
            return "prefix_not_allowed", f"{name} takes no prefix length: {raw!r}"
        if name != "ptr" and not sep:
            return "bad_domain", f"{name} needs a domain: {raw!r}"
        if sep or name != "ptr":
            problem = _domain_spec_problem(arg)
            if problem:
                return _domain_kind(problem), f"{problem} in {raw!r}"
        t.arg = arg or None
        return t
    spec = _parse_cidr(arg, t)
    if spec is None:
        return "bad_prefix", f"invalid prefix length in {raw!r}"
    if sep:
        problem = _domain_spec_problem(spec)
        if problem:
            return _domain_kind(problem), f"{problem} in {raw!r}"
    elif spec:
        return "unknown_mechanism", f"unknown mechanism {raw!r}"
    t.arg = spec or None
    return t


def _domain_kind(problem: str) -> str:
    return "bad_macro" if "%" in problem or "macro" in problem else "bad_domain"


def _parse_ip(raw: str, name: str, arg: str, sep: str, t: Term) -> Term | tuple[str, str]:
    addr, slash, prefix = arg.partition("/")
    limit = 32 if name == "ip4" else 128
    if not sep or not addr:
        return "bad_address", f"{name} needs an address: {raw!r}"
    if slash and _parse_prefix(prefix, limit) is None:
        return "bad_prefix", f"invalid prefix length in {raw!r}"
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return "bad_address", f"invalid address in {raw!r}"
    if (name == "ip4") != (ip.version == 4):
        return "bad_address", f"wrong address family in {raw!r}"
    t.arg = arg
    return t


# ---------------------------------------------------------------------------
# Macros (RFC 7208 §7)
# ---------------------------------------------------------------------------


@dataclass
class _Ctx:
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    sender: str
    helo: str
    lookups: int = 0
    voids: int = 0
    trace: list[str] = field(default_factory=list)
    # %{p} (RFC 7208 §7.3): the validated name, looked up only when a macro asks for it
    validated_name: Callable[[str], str] | None = None


def expand_macros(spec: str, ctx: _Ctx, domain: str) -> str:
    local, _, sdomain = ctx.sender.rpartition("@")
    if ctx.ip.version == 4:
        ip_text = str(ctx.ip)
    else:
        ip_text = ".".join(ctx.ip.exploded.replace(":", ""))

    def one(m: re.Match[str]) -> str:
        tok = m.group(0)
        if tok == "%%":
            return "%"
        if tok == "%_":
            return " "
        if tok == "%-":
            return "%20"
        letter, digits, rev, delims = m.groups()
        if letter.lower() == "p":
            value = ctx.validated_name(domain) if ctx.validated_name else "unknown"
        else:
            value = {"s": ctx.sender, "l": local or "postmaster", "o": sdomain, "d": domain,
                 "i": ip_text, "v": "in-addr" if ctx.ip.version == 4 else "ip6",
                 "h": ctx.helo}.get(letter.lower(), "")
        parts = re.split("[" + re.escape(delims or ".") + "]", value)
        if rev:
            parts.reverse()
        if digits:
            n = int(digits)
            if n == 0:
                raise PermError("macro with zero digits")
            parts = parts[-n:]
        out = ".".join(parts)
        return urllib.parse.quote(out, safe="") if letter.isupper() else out

    result = _MACRO_RE.sub(one, spec).rstrip(".")
    while len(result) > 253 and "." in result:
        result = result.split(".", 1)[1]
    return result


# ---------------------------------------------------------------------------
# Evaluation (RFC 7208 §4, §5)
# ---------------------------------------------------------------------------


class SpfEvaluator:
    """check_host() over a lookup function (name, rdtype) -> Lookup | DnsFailure."""

    def __init__(self, lookup: LookupFn):
        self._lookup = lookup

    def get_record(self, domain: str) -> SpfRecord | None:
        """The single SPF record of ``domain``; None when there is none;
        PermError for several (RFC 7208 §4.5)."""
        ans = self._lookup(domain, "TXT")
        if isinstance(ans, DnsFailure):
            raise TempError(str(ans))
        records = [str(r) for r in ans.records if is_spf_record(str(r))]
        if len(records) > 1:
            raise PermError(f"{domain}: {len(records)} SPF records")
        return parse_spf(records[0]) if records else None

    def check_host(self, ip: str, domain: str, sender: str | None = None,
                   helo: str | None = None) -> tuple[str, _Ctx]:
        """(result, context): result is pass/fail/softfail/neutral/none/permerror/temperror."""
        domain = normalize_name(domain)
        addr = ipaddress.ip_address(ip)
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped  # RFC 7208 §5: an IPv4-mapped address is IPv4
        local, at, _ = (sender or "").rpartition("@")
        sender = f"{local or 'postmaster'}@{domain}" if at or not sender else sender
        ctx = _Ctx(addr, sender, helo or domain)
        ctx.validated_name = lambda target: self._validated_name(ctx, target)
        if not valid_fqdn(domain):
            # RFC 7208 §4.3: a malformed domain is "none", before any DNS query
            ctx.trace.append(f"none: {domain!r} is not a valid domain name")
            return "none", ctx
        try:
            result = self._check(ctx, domain, depth=0)
        except PermError as exc:
            ctx.trace.append(f"permerror: {exc}")
            return "permerror", ctx
        except TempError as exc:
            ctx.trace.append(f"temperror: {exc}")
            return "temperror", ctx
        # A redirect to a domain without SPF is a permerror (RFC 7208 §6.1).
        return ("permerror" if result == "permerror_none" else result), ctx

    def _query(self, ctx: _Ctx, name: str, rdtype: str, count_void: bool = True) -> list[Any]:
        # A name no query can carry (a label over 63, an empty label: often the result of
        # a macro) does not exist (RFC 7208 §4.8, as pyspf treats it).
        ans = self._lookup(name, rdtype) if valid_dns_name(name) else Lookup(name, rdtype, "NXDOMAIN")
        if isinstance(ans, DnsFailure):
            raise TempError(str(ans))
        if not ans.records and count_void:
            ctx.voids += 1
            if ctx.voids > MAX_VOID_LOOKUPS:
                raise PermError(f"more than {MAX_VOID_LOOKUPS} void lookups")
        return list(ans.records)

    def _count(self, ctx: _Ctx) -> None:
        ctx.lookups += 1
        if ctx.lookups > MAX_LOOKUPS:
            raise PermError(f"more than {MAX_LOOKUPS} DNS lookups")

    def _addresses(self, ctx: _Ctx, name: str, count_void: bool = True) -> list[str]:
        return self._query(ctx, name, "A" if ctx.ip.version == 4 else "AAAA", count_void)

    def _in(self, ctx: _Ctx, addrs: Sequence[str], t: Term) -> bool:
        prefix = (t.cidr4 if ctx.ip.version == 4 else t.cidr6)
        for a in addrs:
            net = ipaddress.ip_network(f"{a}/{prefix}" if prefix is not None else a, strict=False)
            if net.version == ctx.ip.version and ctx.ip in net:
                return True
        return False

    def _check(self, ctx: _Ctx, domain: str, depth: int) -> str:
        if depth > 20:
            raise PermError("include/redirect loop")
        record = self.get_record(domain)
        if record is None:
            return "none"
        if record.problems:
            raise PermError(f"{domain}: " + "; ".join(record.problems))
        ctx.trace.append(f"{domain}: {record.text}")
        for t in record.mechanisms:
            if self._match(ctx, t, domain, depth):
                ctx.trace.append(f"{domain}: matched {t.text}")
                return {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}[t.qualifier]
        redirect = record.modifier("redirect")
        if redirect is not None and redirect.arg:
            self._count(ctx)
            target = expand_macros(redirect.arg, ctx, domain)
            result = self._check(ctx, target, depth + 1)
            return "permerror_none" if result == "none" else result
        return "neutral"

    def _match(self, ctx: _Ctx, t: Term, domain: str, depth: int) -> bool:
        if t.name == "all":
            return True
        if t.name in ("ip4", "ip6"):
            net = ipaddress.ip_network(t.arg or "", strict=False)
            return net.version == ctx.ip.version and ctx.ip in net
        self._count(ctx)
        target = expand_macros(t.arg, ctx, domain) if t.arg else domain
        if t.name == "include":
            result = self._check(ctx, target, depth + 1)
            if result in ("none", "permerror_none"):
                raise PermError(f"include:{target} has no SPF record")
            return result == "pass"
        if t.name == "a":
            return self._in(ctx, self._addresses(ctx, target), t)
        if t.name == "mx":
            mxs = self._query(ctx, target, "MX")
            if len(mxs) > MAX_MX_PTR_NAMES:
                raise PermError(f"{target} has more than {MAX_MX_PTR_NAMES} MX records")
            return any(self._in(ctx, self._addresses(ctx, host, count_void=False), t)
                       for _, host in sorted(mxs))
        if t.name == "exists":
            return bool(self._query(ctx, target, "A"))
        if t.name == "ptr":
            target = target.lower()
            return any(host == target or host.endswith("." + target)
                       for host in self._validated_names(ctx))
        raise PermError(f"unknown mechanism {t.name}")

    def _validated_names(self, ctx: _Ctx) -> list[str]:
        """RFC 7208 §5.5: PTR names of the address (at most 10) whose forward lookup
        gives the address back; a DNS error for one name just skips that name."""
        names = [str(n).lower().rstrip(".")
                 for n in self._query(ctx, ctx.ip.reverse_pointer, "PTR")[:MAX_MX_PTR_NAMES]]
        out = []
        for host in names:
            try:
                addrs = self._addresses(ctx, host, count_void=False)
            except TempError:
                continue
            if any(ipaddress.ip_address(a) == ctx.ip for a in addrs):
                out.append(host)
        return out

    def _validated_name(self, ctx: _Ctx, domain: str) -> str:
        """%{p}: the target domain itself, else a subdomain of it, else any validated name."""
        try:
            names = self._validated_names(ctx)
        except (TempError, PermError):
            return "unknown"
        domain = domain.lower()
        for pick in ([n for n in names if n == domain],
                     [n for n in names if n.endswith("." + domain)], names):
            if pick:
                return pick[0]
        return "unknown"


# ---------------------------------------------------------------------------
# Static analysis: what a receiver walks for an address the record does not list
# ---------------------------------------------------------------------------


@dataclass
class SpfAnalysis:
    lookups: int = 0
    voids: int = 0
    problems: list[str] = field(default_factory=list)
    per_term: dict[str, int] = field(default_factory=dict)   # top-level term -> lookups
    temp_failures: list[str] = field(default_factory=list)


def analyse_spf(record: SpfRecord, domain: str, lookup: LookupFn) -> SpfAnalysis:
    """Count DNS-querying terms through include/redirect (as checkdmarc does), and
    void lookups: the cost of evaluating an address nothing matches."""
    out = SpfAnalysis()
    for t in record.terms:
        before = out.lookups
        _walk_term(t, domain, lookup, out, {domain}, 0)
        if out.lookups > before:
            out.per_term[t.text] = out.lookups - before
    return out


def _walk_term(t: Term, domain: str, lookup: LookupFn, out: SpfAnalysis,
               chain: set[str], depth: int) -> None:
    if t.modifier and t.name != "redirect":
        return
    if not t.modifier and t.name not in DNS_MECHANISMS:
        return
    out.lookups += 1
    if t.arg and "%" in t.arg:
        return  # depends on the sender; cannot be followed statically
    target = normalize_name(t.arg) if t.arg else domain

    def query(name: str, rdtype: str) -> list[Any]:
        ans = lookup(name, rdtype)
        if isinstance(ans, DnsFailure):
            out.temp_failures.append(str(ans))
            return []
        if not ans.records:
            out.voids += 1
        return list(ans.records)

    if t.name in ("include", "redirect"):
        if target in chain or depth > 20:
            out.problems.append(f"loop through {target}")
            return
        txt = query(target, "TXT")
        recs = [str(r) for r in txt if is_spf_record(str(r))]
        if len(recs) != 1:
            out.problems.append(f"{t.name} target {target} has {len(recs)} SPF records")
            return
        sub = parse_spf(recs[0])
        out.problems.extend(f"{target}: {p}" for p in sub.problems)
        for st in sub.terms:
            _walk_term(st, target, lookup, out, chain | {target}, depth + 1)
    elif t.name == "a":
        a, aaaa = lookup(target, "A"), lookup(target, "AAAA")
        if all(isinstance(x, Lookup) and not x.records for x in (a, aaaa)):
            out.voids += 1
    elif t.name == "mx":
        mxs = query(target, "MX")
        if len(mxs) > MAX_MX_PTR_NAMES:
            out.problems.append(f"{target} has {len(mxs)} MX records (limit 10)")
    elif t.name == "exists":
        pass  # its name is almost always a macro; a literal one costs one query


# ---------------------------------------------------------------------------
# The fix: one merged record
# ---------------------------------------------------------------------------


def authorizing_terms(spf_include: str, sending_ips: Sequence[str]) -> list[str]:
    if spf_include:
        return [f"include:{spf_include}"]
    return [f"ip{ipaddress.ip_address(ip).version}:{ip}" for ip in sending_ips]


def merge_spf_records(records: Sequence[str], add_terms: Sequence[str]) -> str:
    """One SPF record from one or several (several is itself an error): all their
    mechanisms in order, ``add_terms`` inserted before the final ``all`` (or before
    ``redirect=``), one ``all``. Never a second record."""
    mechs: list[str] = []
    mods: list[str] = []
    all_term: str | None = None
    all_qualifier = "+"
    strictness = {"-": 0, "~": 1, "?": 2, "+": 3}
    # DNS returns several records in any order: sort, so every pass (and every
    # server) suggests the same text, and one reminder mail is not followed by another.
    records = sorted(records) if len(records) > 1 else list(records)
    redirect: str | None = None
    seen: set[str] = set()
    for text in records:
        # Pasted characters undone and faulty terms repaired first: a full-width space
        # must not cost the facility the two terms it joins.
        for t in parse_spf(repair_spf(text)[0]).terms:
            key = t.text.lower()
            if t.modifier:
                if t.name == "redirect":
                    redirect = redirect or t.text
                elif key not in seen:
                    mods.append(t.text)
            elif t.name == "all":
                # Of several records' "all", keep the strictest: the owner asked for it.
                if all_term is None or strictness[t.qualifier] < strictness[all_qualifier]:
                    all_term, all_qualifier = t.text, t.qualifier
            elif key not in seen:
                mechs.append(t.text)
            seen.add(key)
    for add in add_terms:
        if add.lower() not in seen:
            mechs.append(add)
    if all_term is not None:
        tail = [all_term]
    elif redirect is not None:
        tail = [redirect]
    else:
        tail = ["~all"] if len(records) != 1 else []
    return " ".join(["v=spf1", *mechs, *tail, *mods])


# ---------------------------------------------------------------------------
# check_spf
# ---------------------------------------------------------------------------


def check_spf(client: DnsLookup, domain: str, sending_ips: Sequence[str],
              spf_include: str) -> AreaResult:
    """One record, valid syntax, ≤10 lookups and ≤2 void lookups, and every sending
    address authorised; otherwise the exact merged record to publish."""
    domain = normalize_name(domain)
    answers = client.authoritative_lookup(domain, "TXT")
    found: dict[str, Any] = {"name": domain,
                             "servers": {s: a.to_json() for s, a in answers.items()}}
    lookups = [a for a in answers.values() if isinstance(a, Lookup)]
    if not lookups:
        return AreaResult(False, [_dns_error(domain, found["servers"])], found)
    view = next((a for a in lookups if any(is_spf_candidate(str(r)) for r in a.records)),
                lookups[0])
    add = authorizing_terms(spf_include, sending_ips)
    records = [str(r) for r in view.records if is_spf_record(str(r))]
    broken = [str(r) for r in view.records
              if is_spf_candidate(str(r)) and not is_spf_record(str(r))]
    found["records"] = records + broken
    diags: list[Diagnosis] = []
    count_problem = _record_count_problem(domain, records, broken, add, found)
    if count_problem is not None:
        return AreaResult(False, [count_problem], found)
    text = (records or broken)[0]
    rec = parse_spf(text)
    found["record"] = text
    pasted = find_pasted(text)
    if rec.problems or pasted:
        # What a receiver rejects (permerror) is named: which character or term, where,
        # and the repaired record with our include (bot/checks/spfsyntax.py).
        repaired, dropped = repair_spf(text)
        fix = merge_spf_records([repaired], add)
        found["suggested"] = fix
        issues = parse_spf(clean_pasted(text)).issues if pasted else rec.issues
        diags.append(syntax_diagnosis(domain, text, pasted, issues, dropped, fix, rec.problems))
        return AreaResult(False, diags, found)

    lookup: LookupFn = client.lookup
    analysis = analyse_spf(rec, domain, lookup)
    found.update(dns_lookups=analysis.lookups, void_lookups=analysis.voids,
                 lookups_per_term=analysis.per_term)
    diags.extend(_limit_diagnoses(domain, analysis, found))

    diags.extend(_authorization(lookup, domain, text, sending_ips, add, analysis, found))
    return AreaResult(not [d for d in diags if d.severity == "error"], diags, found)


def _record_count_problem(domain: str, records: list[str], broken: list[str], add: list[str],
                          found: dict[str, Any]) -> Diagnosis | None:
    """No SPF record at all, or more than one (a permanent error at receivers, RFC 7208
    §4.5): the diagnosis with the one record to publish (also in ``found["suggested"]``)."""
    if not records and not broken:
        fix = "v=spf1 " + " ".join(add) + " ~all"
        found["suggested"] = fix
        return Diagnosis(
            "spf_not_published",
            f"{domain} に SPF レコードが見つかりませんでした。ホスト名は空欄（ドメイン名そのもの「{domain}」）、"
            f"種類「TXT」、値「{fix}」で登録してください。",
            "error", {"name": domain, "fix": fix, "fix_host": domain})
    if len(records) + len(broken) > 1:
        fix = merge_spf_records(records + broken, add)
        found["suggested"] = fix
        return Diagnosis(
            "spf_multiple_records",
            f"{domain} に SPF レコード（v=spf1 で始まる TXT レコード）が {len(records) + len(broken)} 件あります。"
            "SPF レコードが複数あると、すべて無効として扱われます。"
            f"次の1件にまとめ、ほかの SPF レコードは削除してください：{fix}",
            "error", {"name": domain, "records": records + broken, "fix": fix,
                      "fix_host": domain})
    return None


def _limit_diagnoses(domain: str, analysis: SpfAnalysis, found: dict[str, Any]) -> list[Diagnosis]:
    """RFC 7208 §4.6.4: at most 10 DNS-querying terms and 2 void lookups."""
    diags: list[Diagnosis] = []
    if analysis.lookups > MAX_LOOKUPS:
        heavy = "、".join(f"{k}（{v}回）" for k, v in analysis.per_term.items())
        diags.append(Diagnosis(
            "spf_too_many_lookups",
            f"{domain} の SPF レコードは、確認のために DNS を {analysis.lookups} 回参照する必要があり、"
            f"上限の {MAX_LOOKUPS} 回を超えています（内訳: {heavy}）。"
            "このままでは SPF が常にエラーになります。使っていない include などを削除してください。",
            "error", {"name": domain, "lookups": analysis.lookups, "per_term": analysis.per_term}))
    if analysis.voids > MAX_VOID_LOOKUPS:
        diags.append(Diagnosis(
            "spf_too_many_void_lookups",
            f"{domain} の SPF レコードには、存在しないドメインを参照している項目が {analysis.voids} 件あり、"
            f"上限の {MAX_VOID_LOOKUPS} 件を超えています。"
            "存在しないドメインを指す include や a、mx を削除してください。",
            "error", {"name": domain, "void_lookups": analysis.voids,
                      "problems": analysis.problems}))
    if analysis.problems:
        found["problems"] = analysis.problems
    return diags


def _authorization(lookup: LookupFn, domain: str, text: str, sending_ips: Sequence[str], add: list[str],
                   analysis: SpfAnalysis, found: dict[str, Any]) -> list[Diagnosis]:
    """Each of our sending addresses evaluated against the record (RFC 7208 check_host);
    the record with our include merged in when one does not pass."""
    diags: list[Diagnosis] = []
    evaluator = SpfEvaluator(lookup)
    verdicts: dict[str, str] = {}
    traces: dict[str, list[str]] = {}
    for ip in sending_ips:
        result, ctx = evaluator.check_host(ip, domain)
        verdicts[ip], traces[ip] = result, ctx.trace
    found["results"] = verdicts
    if any(v == "temperror" for v in verdicts.values()):
        diags.append(_dns_error(domain, {"results": verdicts, "trace": traces}))
    failing = {ip: v for ip, v in verdicts.items() if v not in ("pass", "temperror")}
    fix = merge_spf_records([text], add)
    already = fix == merge_spf_records([text], [])
    if failing and already and (analysis.lookups > MAX_LOOKUPS or analysis.voids > MAX_VOID_LOOKUPS):
        # The include is there; the record fails as a whole (permerror), which the
        # lookup-limit diagnosis above already explains with what to remove.
        failing = {}
    if failing:
        found["suggested"] = fix
        if already:
            message = (f"{domain} の SPF レコードには弊社の設定（{' '.join(add)}）が含まれていますが、"
                       "弊社の送信サーバーが許可されていません。弊社で確認いたします。")
        else:
            message = (f"{domain} の SPF レコードに、弊社の送信サーバーが含まれていません。"
                       f"今の SPF レコード「{text}」を、次の値に書き換えてください"
                       f"（SPF レコードを2件にせず、今の1件を修正してください）：{fix}")
        diags.append(Diagnosis("spf_not_authorized", message, "error",
                               {"name": domain, "results": failing, "trace": traces,
                                "fix": fix, "fix_host": domain, "include_present": already}))
    return diags


def _dns_error(name: str, evidence: Any) -> Diagnosis:
    return Diagnosis(
        "dns_error",
        f"{name} の SPF レコードの確認中に DNS サーバーから応答が得られませんでした。"
        + RETRY_BY_BOT,
        "error", {"name": name, "evidence": evidence})
