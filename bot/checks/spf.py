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

from bot.core.dnsresults import (
    AreaResult,
    Diagnosis,
    DnsLookup,
    DnsFailure,
    Lookup,
    normalize_name,
)

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

    @property
    def valid(self) -> bool:
        return not self.problems

    def modifier(self, name: str) -> Term | None:
        return next((t for t in self.terms if t.modifier and t.name == name), None)

    @property
    def mechanisms(self) -> list[Term]:
        return [t for t in self.terms if not t.modifier]


def is_spf_record(text: str) -> bool:
    """RFC 7208 §4.5: exactly "v=spf1" followed by a space or the end."""
    low = text.lower()
    return low == "v=spf1" or low.startswith("v=spf1 ")


def is_spf_candidate(text: str) -> bool:
    """Meant as SPF, even if broken (quoted, leading junk)."""
    return "v=spf1" in text.lower()


_MACRO_RE = re.compile(r"%\{([slodiphcrtvSLODIPHCRTV])([0-9]*)(r?)([.\-+,/_=]*)\}|%%|%_|%-",
                       re.IGNORECASE)
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9\-_.]*$")


def _valid_domain_spec(spec: str) -> bool:
    if not spec or " " in spec:
        return False
    rest = _MACRO_RE.sub("x", spec)
    if "%" in rest:
        return False
    if _MACRO_RE.search(spec):
        return True  # ends with a macro or a label: checked at expansion time
    labels = spec.rstrip(".").split(".")
    return len(labels) >= 2 and all(0 < len(lab) < 64 for lab in labels) and \
        bool(re.fullmatch(r"[A-Za-z0-9-]*[A-Za-z][A-Za-z0-9-]*|[A-Za-z0-9-]+", labels[-1]))


def _parse_cidr(arg: str, t: Term) -> str | None:
    """Split "domain/24//64" into domain and prefix lengths; None if malformed."""
    m = re.fullmatch(r"(.*?)(?:/(\d+))?(?://(\d+))?", arg)
    if not m:
        return None
    spec, c4, c6 = m.groups()
    if c4 is not None:
        if len(c4) > 1 and c4.startswith("0") or int(c4) > 32:
            return None
        t.cidr4 = int(c4)
    if c6 is not None:
        if len(c6) > 1 and c6.startswith("0") or int(c6) > 128:
            return None
        t.cidr6 = int(c6)
    return spec


def parse_spf(text: str) -> SpfRecord:
    """Parse one SPF record; every problem is listed, the record is still usable for
    merging where the terms themselves are sound."""
    rec = SpfRecord(text)
    if not is_spf_record(text.strip()):
        rec.problems.append("record does not start with 'v=spf1 '")
        body = text.lower().split("v=spf1", 1)[-1] if is_spf_candidate(text) else text
        body = body.replace('"', " ").replace("\\", " ")
    else:
        body = text.strip()[6:]
    seen_mods: set[str] = set()
    for raw in body.split():
        t = _parse_term(raw)
        if isinstance(t, str):
            rec.problems.append(t)
            continue
        if t.modifier and t.name in ("redirect", "exp"):
            if t.name in seen_mods:
                rec.problems.append(f"modifier {t.name}= appears twice")
            seen_mods.add(t.name)
        rec.terms.append(t)
    return rec


def _parse_term(raw: str) -> Term | str:
    qualifier = "+"
    body = raw
    if body[:1] in "+-~?":
        qualifier, body = body[0], body[1:]
    m = re.fullmatch(r"([A-Za-z][A-Za-z0-9\-_.]*)=(.*)", body)
    if m and qualifier == "+" and raw[:1] not in "+-~?":
        name, value = m.group(1).lower(), m.group(2)
        if name in ("redirect", "exp") and not _valid_domain_spec(value):
            return f"invalid domain in {raw!r}"
        if name not in ("redirect", "exp") and not _NAME_RE.match(name):
            return f"invalid modifier {raw!r}"
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
        return f"unknown mechanism {raw!r}"
    if name == "all":
        return t if not arg and not sep else f"'all' takes no argument: {raw!r}"
    if name in ("ip4", "ip6"):
        try:
            net = ipaddress.ip_network(arg, strict=False)
        except ValueError:
            return f"invalid address in {raw!r}"
        if (name == "ip4") != (net.version == 4):
            return f"wrong address family in {raw!r}"
        t.arg = arg
        return t
    if name in ("include", "exists"):
        if not sep or not _valid_domain_spec(arg):
            return f"{name} needs a domain: {raw!r}"
        t.arg = arg
        return t
    spec = _parse_cidr(arg, t) if name in ("a", "mx") else arg
    if spec is None:
        return f"invalid prefix length in {raw!r}"
    if sep and not _valid_domain_spec(spec):
        return f"invalid domain in {raw!r}"
    t.arg = spec or None
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
        value = {"s": ctx.sender, "l": local or "postmaster", "o": sdomain, "d": domain,
                 "i": ip_text, "p": "unknown", "v": "in-addr" if ctx.ip.version == 4 else "ip6",
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
        ctx = _Ctx(ipaddress.ip_address(ip), sender or f"postmaster@{domain}", helo or domain)
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
        ans = self._lookup(name, rdtype)
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
            rev = ctx.ip.reverse_pointer
            names = self._query(ctx, rev, "PTR")[:MAX_MX_PTR_NAMES]
            for host in names:
                # RFC 7208 §5.5: a validated name (forward-confirmed) in the target domain.
                validated = str(ctx.ip) in self._addresses(ctx, host, count_void=False)
                if validated and (host == target or host.endswith("." + target)):
                    return True
            return False
        raise PermError(f"unknown mechanism {t.name}")


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
        for t in parse_spf(text).terms:
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
    if not records and not broken:
        fix = "v=spf1 " + " ".join(add) + " ~all"
        found["suggested"] = fix
        diags.append(Diagnosis(
            "spf_not_published",
            f"{domain} に SPF レコードが見つかりませんでした。ホスト名は空欄（ドメイン名そのもの「{domain}」）、"
            f"種類「TXT」、値「{fix}」で登録してください。",
            "error", {"name": domain, "fix": fix, "fix_host": domain}))
        return AreaResult(False, diags, found)
    if len(records) + len(broken) > 1:
        fix = merge_spf_records(records + broken, add)
        found["suggested"] = fix
        diags.append(Diagnosis(
            "spf_multiple_records",
            f"{domain} に SPF レコード（v=spf1 で始まる TXT レコード）が {len(records) + len(broken)} 件あります。"
            "SPF レコードが複数あると、すべて無効として扱われます。"
            f"次の1件にまとめ、ほかの SPF レコードは削除してください：{fix}",
            "error", {"name": domain, "records": records + broken, "fix": fix,
                      "fix_host": domain}))
        return AreaResult(False, diags, found)
    text = (records or broken)[0]
    rec = parse_spf(text)
    found["record"] = text
    if rec.problems:
        fix = merge_spf_records([text], add)
        found["suggested"] = fix
        diags.append(Diagnosis(
            "spf_syntax",
            # The problems stay in English in the detail (staff); the clerk gets the fix.
            f"{domain} の SPF レコード「{text}」の書き方に誤りがあります。"
            f"引用符などを付けずに、次の値に修正してください：{fix}",
            "error", {"name": domain, "record": text, "problems": rec.problems, "fix": fix,
                      "fix_host": domain}))
        return AreaResult(False, diags, found)

    lookup: LookupFn = client.lookup
    analysis = analyse_spf(rec, domain, lookup)
    found.update(dns_lookups=analysis.lookups, void_lookups=analysis.voids,
                 lookups_per_term=analysis.per_term)
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
            f"上限の {MAX_VOID_LOOKUPS} 件を超えています。存在しないドメインを指す include や a、mx を削除してください。",
            "error", {"name": domain, "void_lookups": analysis.voids,
                      "problems": analysis.problems}))
    if analysis.problems:
        found["problems"] = analysis.problems

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
    return AreaResult(not [d for d in diags if d.severity == "error"], diags, found)


def _dns_error(name: str, evidence: Any) -> Diagnosis:
    return Diagnosis(
        "dns_error",
        f"{name} の SPF レコードの確認中に DNS サーバーから応答が得られませんでした。"
        "時間をおいて自動的に再確認します。",
        "error", {"name": name, "evidence": evidence})
