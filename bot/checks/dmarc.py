"""DMARC (RFC 7489): parse a record, find the one that governs a domain, suggest a fix.

Layers as in checkdmarc: ``parse_*`` and ``suggest_*`` are pure; ``check_dmarc`` asks DNS
through a ``DnsClient`` and returns an ``AreaResult`` (never raises for the domain's
own problems). Messages are plain Japanese for a facility clerk; ``detail`` holds the
evidence for the event log.
"""

from __future__ import annotations

import difflib
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from publicsuffixlist import PublicSuffixList

from bot.core.dnsresults import (
    RETRY_BY_BOT,
    AreaResult,
    Diagnosis,
    DnsFailure,
    DnsLookup,
    Lookup,
    normalize_name,
)
from bot.core.recordtext import PastedChar, clean_pasted, describe_all_ja, find_pasted

POLICIES = ("none", "quarantine", "reject")
# The order tags are written in when we suggest a record: v and p first (RFC 7489
# §6.4 requires v first; the ABNF lists p next, and some receivers insist on it).
TAG_ORDER = ("v", "p", "sp", "adkim", "aspf", "pct", "fo", "rf", "ri", "rua", "ruf")
# RFC 7489 tags plus DMARCbis' np/psd/t, which receivers already see in the wild.
KNOWN_TAGS = frozenset(TAG_ORDER) | {"np", "psd", "t"}
# Named, but receivers still use the record: an unknown tag is ignored (RFC 7489 §6.3);
# p= later than second breaks RFC 7489's ABNF order, which no receiver we know enforces
# (OpenDMARC reads tags in any order, DMARCbis allows it).
SOFT_PROBLEMS = frozenset({"unknown", "order"})


_PSL: list[PublicSuffixList] = []
_PSL_LOCK = threading.Lock()


def _psl() -> PublicSuffixList:
    # Built once (it parses the list shipped inside the package: offline, SPEC §4), under
    # a lock: a pass's DNS workers ask for it at once, and an lru_cache let each of them
    # parse it (~0.5 s of CPU each) on a cold start, i.e. on every cron run.
    if not _PSL:
        with _PSL_LOCK:
            if not _PSL:
                _PSL.append(PublicSuffixList())
    return _PSL[0]


def organizational_domain(domain: str) -> str:
    """RFC 7489 §3.2: the public suffix plus one label (``mail.hotel.co.jp`` →
    ``hotel.co.jp``). A name that is itself a public suffix is its own."""
    domain = normalize_name(domain)
    return _psl().privatesuffix(domain) or domain


@dataclass
class DmarcProblem:
    tag: str        # the tag at fault ("" for the record as a whole)
    kind: str       # "quoted", "pasted", "leading_space", "v_not_first", "bad_tag", "duplicate",
    #                 "missing", "invalid"; warnings: "unknown", "order"
    value: str = ""

    def ja(self) -> str:
        """The problem in plain Japanese, for the facility mail."""
        if self.kind == "pasted":
            return f"{self.value}が入っています（受信側はこのレコードを正しく読めません）"
        if self.kind == "leading_space":
            return "先頭に空白があります（受信側は「v=DMARC1」で始まらないレコードを無視します）"
        if self.kind == "order":
            return "「p=」は「v=DMARC1」のすぐ後に書くのが正式な形です"
        if self.kind == "quoted":
            return "値に「\"」（引用符）などの余分な文字が含まれています"
        if self.kind == "v_not_first":
            return "先頭が「v=DMARC1」で始まっていません"
        if self.kind == "bad_tag":
            return f"「{self.value}」の部分の書き方が正しくありません（「名前=値」を「;」で区切ります）"
        if self.kind == "duplicate":
            return f"「{self.tag}=」が2回以上書かれています"
        if self.kind == "missing":
            return f"必須の「{self.tag}=」がありません"
        if self.kind == "unknown":
            return f"「{self.tag}=」は DMARC の項目ではありません（書き間違いの可能性があります）"
        allowed = {
            "p": "none / quarantine / reject", "sp": "none / quarantine / reject",
            "np": "none / quarantine / reject", "adkim": "r / s", "aspf": "r / s",
            "pct": "0〜100 の数字", "fo": "0 / 1 / d / s", "rf": "afrf",
            "ri": "秒数（数字）", "rua": "mailto:アドレス", "ruf": "mailto:アドレス",
        }.get(self.tag, "")
        hint = f"（使える値: {allowed}）" if allowed else ""
        return f"「{self.tag}={self.value}」の値が正しくありません{hint}"

    def to_json(self) -> dict[str, str]:
        return {"tag": self.tag, "kind": self.kind, "value": self.value}


@dataclass
class DmarcRecord:
    text: str
    tags: dict[str, str] = field(default_factory=dict)
    problems: list[DmarcProblem] = field(default_factory=list)
    pasted: list[PastedChar] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not [p for p in self.problems if p.kind not in SOFT_PROBLEMS]

    @property
    def policy(self) -> str | None:
        p = self.tags.get("p", "").lower()
        return p if p in POLICIES else None


def is_dmarc_candidate(text: str) -> bool:
    """A TXT value meant as DMARC, including broken ones (quoted, v not first)."""
    return "v=dmarc1" in re.sub(r"\s+", "", clean_pasted(text)).lower()


_URI_RE = re.compile(r"^mailto:([^@\s!,]+)@([A-Za-z0-9.-]+\.[A-Za-z0-9-]+)(![0-9]+[kmgtKMGT]?)?$")


def parse_report_uris(value: str) -> list[str] | None:
    """``rua``/``ruf`` (RFC 7489 §6.4): comma-separated mailto URIs with an optional
    ``!size``. None when any entry is malformed."""
    uris = [u.strip() for u in value.split(",")]
    if not uris or any(not _URI_RE.match(u) for u in uris):
        return None
    return uris


def uri_domain(uri: str) -> str:
    m = _URI_RE.match(uri.strip())
    return normalize_name(m.group(2)) if m else ""


def parse_dmarc(text: str) -> DmarcRecord:
    """Parse one DMARC TXT value; every problem found is listed (not only the first),
    so a clerk fixes them in one go."""
    rec = DmarcRecord(text)
    # TAB is legal white space around ';' and '=' (RFC 7489 §6.4 WSP); other pasted
    # characters (full-width space, BOM, zero-width, smart quotes) are not.
    rec.pasted = [c for c in find_pasted(text) if c.char != "\t"]
    if rec.pasted:
        rec.problems.append(DmarcProblem("", "pasted", describe_all_ja(rec.pasted)))
        text = clean_pasted(text)
    elif text[:1] in (" ", "\t"):
        rec.problems.append(DmarcProblem("", "leading_space"))
    body = text.strip(" \t")
    if any(c in body for c in "\"\\"):
        rec.problems.append(DmarcProblem("", "quoted"))
        body = body.replace("\\", "").replace('"', "").strip()
    # Empty parts (a trailing ";", or ";;" inside) are skipped: the ABNF allows only one
    # trailing separator, but receivers (Gmail, OpenDMARC) accept either, so telling a
    # clerk to fix it would cost them a DNS change for nothing.
    specs = [s.strip() for s in body.split(";") if s.strip()]
    for i, spec in enumerate(specs):
        name, sep, value = spec.partition("=")
        name, value = name.strip().lower(), value.strip()
        if not sep or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            rec.problems.append(DmarcProblem("", "bad_tag", spec))
            continue
        if name in rec.tags:
            rec.problems.append(DmarcProblem(name, "duplicate", value))
            continue
        rec.tags[name] = value
        if i == 0 and not (name == "v" and value == "DMARC1") or i > 0 and name == "v":
            rec.problems.append(DmarcProblem("v", "v_not_first", spec))
        if name == "p" and i != 1 and "v" in rec.tags:
            rec.problems.append(DmarcProblem("p", "order", spec))
    if "v" not in rec.tags and not any(p.kind == "v_not_first" for p in rec.problems):
        rec.problems.append(DmarcProblem("v", "v_not_first", ""))
    for name, value in rec.tags.items():
        problem = _check_tag(name, value)
        if problem:
            rec.problems.append(problem)
    if "p" not in rec.tags:
        rec.problems.append(DmarcProblem("p", "missing"))
    return rec


def _check_tag(name: str, value: str) -> DmarcProblem | None:
    low = value.lower()
    if name in ("p", "sp", "np"):
        ok = low in POLICIES
    elif name in ("adkim", "aspf"):
        ok = low in ("r", "s")
    elif name == "pct":
        ok = value.isdigit() and 0 <= int(value) <= 100
    elif name == "fo":
        ok = all(part.strip() in ("0", "1", "d", "s") for part in low.split(":"))
    elif name == "rf":
        ok = all(part.strip() == "afrf" for part in low.split(":"))
    elif name == "ri":
        ok = value.isdigit() and int(value) < 2**32
    elif name in ("rua", "ruf"):
        ok = parse_report_uris(value) is not None
    elif name == "psd":
        ok = low in ("y", "n", "u")   # DMARCbis
    elif name == "t":
        ok = low in ("y", "n")        # DMARCbis
    elif name == "v":
        ok = True
    else:
        return DmarcProblem(name, "unknown", value)
    return None if ok else DmarcProblem(name, "invalid", value)


def _merge_rua(existing: str, rua: str) -> str:
    parts = [u.strip() for u in existing.split(",") if u.strip()] if existing else []
    if rua:
        bare = {p.split("!")[0].lower() for p in parts}
        if rua.split("!")[0].lower() not in bare:
            parts.append(rua)
    return ",".join(parts)


def suggest_dmarc_record(existing: Mapping[str, str] | None, rua: str | None = "") -> str:
    """The one DMARC record to publish. With nothing existing: ``p=none`` (monitoring,
    as the help page promises). With an existing record: its policy and valid tags
    are kept (a stricter ``p`` is never downgraded), invalid optional tags dropped,
    our ``rua`` added to its report addresses."""
    rua = (rua or "").strip()
    if rua and not rua.lower().startswith("mailto:"):
        rua = "mailto:" + rua
    if not existing:
        return "v=DMARC1; p=none" + (f"; rua={rua}" if rua else "")
    tags = {k.lower(): v.strip() for k, v in existing.items()}
    p = tags.get("p", "").lower()
    if p not in POLICIES:
        # A typo ("rejct") still says what the owner wanted; honour it rather than
        # silently suggesting the weakest policy. Failing that, sp= if valid.
        close = difflib.get_close_matches(p, POLICIES, n=1, cutoff=0.6)
        sp = tags.get("sp", "").lower()
        p = close[0] if close else (sp if sp in POLICIES else "none")
    out = {"v": "DMARC1", "p": p}
    for name in TAG_ORDER[2:]:
        if name in tags and _check_tag(name, tags[name]) is None:
            out[name] = tags[name].lower() if name in ("sp", "adkim", "aspf") else tags[name]
    merged = _merge_rua(out.get("rua", ""), rua)
    if merged:
        out["rua"] = merged
    return "; ".join(f"{k}={v}" for k, v in out.items())


# ---------------------------------------------------------------------------
# check_dmarc
# ---------------------------------------------------------------------------


def _pick_view(answers: Mapping[str, Any]) -> Lookup | DnsFailure:
    """One view of a name across its servers: prefer a server that has records."""
    lookups = [a for a in answers.values() if isinstance(a, Lookup)]
    with_records = [a for a in lookups if a.records]
    if with_records:
        return with_records[0]
    if lookups:
        return lookups[0]
    return next((a for a in answers.values() if isinstance(a, DnsFailure)),
                DnsFailure("no_answer"))


def _evidence(answers: Mapping[str, Any]) -> dict[str, Any]:
    return {server: a.to_json() for server, a in answers.items()}


def _dns_error(name: str, answers: Mapping[str, Any]) -> Diagnosis:
    return Diagnosis(
        "dns_error",
        f"{name} の確認中に DNS サーバーから応答が得られませんでした。"
        "一時的な問題の可能性があるため、" + RETRY_BY_BOT,
        "error", {"name": name, "servers": _evidence(answers)})


def check_dmarc(client: DnsLookup, domain: str, rua: str | None = "") -> AreaResult:
    """The DMARC record governing ``domain`` (its own, else its organisational
    domain's), its syntax, wrong places it was put, and its report authorisation."""
    domain = normalize_name(domain)
    name = f"_dmarc.{domain}"
    answers = client.authoritative_lookup(name, "TXT")
    view = _pick_view(answers)
    found: dict[str, Any] = {"name": name, "servers": _evidence(answers), "record": None,
                             "location": None, "tags": {}, "policy": None}
    diags: list[Diagnosis] = []
    if isinstance(view, DnsFailure):
        diags.append(_dns_error(name, answers))
        return AreaResult(False, diags, found)
    if view.cname:
        found["cname"] = view.cname
        diags.append(Diagnosis(
            "dmarc_cname",
            f"「{name}」は別名（CNAME）として「{view.cname}」を指しています。"
            f"DMARC レコードを変更する場合は「{view.cname}」側を変更するか、"
            "CNAME を削除してから TXT レコードを登録してください（同じ名前に CNAME と TXT は共存できません）。",
            "warning", {"name": name, "target": view.cname}))
    candidates = [r for r in view.records if is_dmarc_candidate(r)]
    if len(candidates) > 1:
        return _several(candidates, name, rua, found, diags)
    if len(candidates) == 1:
        rec = parse_dmarc(candidates[0])
        _describe(found, rec, name, rec.policy)
        found["suggested"] = suggest_dmarc_record(rec.tags, rua)
        diags.extend(_syntax_diagnoses(rec, name, rua))
        if rec.valid:
            diags.extend(_check_rua(client, domain, rec))
        return AreaResult(not _errors(diags), diags, found)
    _wrong_places(client, domain, name, found, diags)
    inherited = _inherited(client, domain, name, found, diags)
    if inherited is not None:
        return inherited
    if found.get("wrong_location"):
        # The record exists, only in the wrong place: the wrong-place diagnosis says
        # where it belongs; "not found" next to it would contradict it.
        wrong_rec = parse_dmarc(found["wrong_location"][0]["record"])
        found["suggested"] = suggest_dmarc_record(wrong_rec.tags if wrong_rec.valid else None, rua)
        return AreaResult(False, diags, found)
    suggestion = suggest_dmarc_record(None, rua)
    found["suggested"] = suggestion
    diags.append(Diagnosis(
        "dmarc_not_published",
        f"{domain} の DMARC レコードが見つかりませんでした。"
        f"ホスト名「_dmarc」（ドメイン名を含めると「{name}」）、種類「TXT」、"
        f"値「{suggestion}」で登録してください。",
        "error", {"name": name, "fix": suggestion, "fix_host": name}))
    return AreaResult(False, diags, found)


def _several(candidates: list[Any], name: str, rua: str | None, found: dict[str, Any],
             diags: list[Diagnosis]) -> AreaResult:
    """More than one DMARC record: receivers use none; suggest the strictest, merged."""
    parsed = [parse_dmarc(r) for r in candidates]
    # The strictest valid policy among them (their order in DNS is arbitrary): an
    # existing stricter policy is never suggested away (SPEC §4).
    valid = [p for p in parsed if p.valid]
    best = max(valid, key=lambda p: POLICIES.index((p.policy or "none").lower())) if valid else parsed[0]
    suggestion = suggest_dmarc_record(best.tags, rua)
    found.update(record=list(candidates), location=name, suggested=suggestion)
    diags.append(Diagnosis(
        "dmarc_multiple_records",
        f"「{name}」に DMARC レコードが {len(candidates)} 件登録されています。"
        "DMARC レコードは1件だけにする必要があり、複数あると受信側はどれも使いません。"
        f"次の1件にまとめ、ほかは削除してください：{suggestion}",
        "error", {"name": name, "records": list(candidates), "fix": suggestion,
                  "fix_host": name}))
    return AreaResult(False, diags, found)


def _wrong_places(client: DnsLookup, domain: str, name: str, found: dict[str, Any],
                  diags: list[Diagnosis]) -> None:
    """Nothing at _dmarc.<domain>: look where clerks put it by mistake (all at once, on
    one server: a panel's mistake is on every server or on none)."""
    client.prefetch([(f"dmarc.{domain}", "TXT"), (f"_dmarc.{domain}.{domain}", "TXT"), (domain, "TXT")],
                    first_server_only=True)
    for wrong, why in (
        (f"dmarc.{domain}", "先頭のアンダースコア「_」が抜けています"),
        (f"_dmarc.{domain}.{domain}", "ホスト名の欄にドメイン名まで入力されたため、ドメイン名が二重に付いています"),
        (domain, "ホスト名の欄が空欄のまま登録されたようです"),
    ):
        # One server: a record in the wrong place is a panel's doing, on all or none.
        other = client.authoritative_first(wrong, "TXT")
        if isinstance(other, Lookup) and any(is_dmarc_candidate(r) for r in other.records):
            rec_text = next(r for r in other.records if is_dmarc_candidate(r))
            found.setdefault("wrong_location", []).append({"name": wrong, "record": rec_text})
            diags.append(Diagnosis(
                "dmarc_wrong_location",
                f"DMARC レコードが「{wrong}」に登録されていますが、正しいホスト名は「{name}」です"
                f"（{why}）。ホスト名の欄には「_dmarc」とだけ入力し、誤った場所のレコードは削除してください。",
                "error", {"found_at": wrong, "expected": name, "record": rec_text}))


def _inherited(client: DnsLookup, domain: str, name: str, found: dict[str, Any],
               diags: list[Diagnosis]) -> AreaResult | None:
    """The organisational domain's record, when ``domain`` has none of its own: the
    verdict (inherited, or a DNS error), or None to go on."""
    org = organizational_domain(domain)
    if org != domain:
        org_name = f"_dmarc.{org}"
        org_answers = client.authoritative_lookup(org_name, "TXT")
        org_view = _pick_view(org_answers)
        found["organizational_domain"] = {"name": org_name, "servers": _evidence(org_answers)}
        if isinstance(org_view, DnsFailure):
            diags.append(_dns_error(org_name, org_answers))
            return AreaResult(False, diags, found)
        org_records = [r for r in org_view.records if is_dmarc_candidate(r)]
        if len(org_records) == 1 and parse_dmarc(org_records[0]).valid:
            rec = parse_dmarc(org_records[0])
            policy = (rec.tags.get("sp") or rec.tags["p"]).lower()
            _describe(found, rec, org_name, policy)
            found["inherited"] = True
            diags.append(Diagnosis(
                "dmarc_inherited",
                f"{domain} 自体には DMARC レコードがありませんが、上位のドメイン {org} の "
                f"DMARC レコード（ポリシー {policy}）が適用されています。このままで問題ありません。",
                "warning", {"name": name, "inherited_from": org_name, "record": str(rec.text)}))
            diags.extend(_check_rua(client, org, rec))
            return AreaResult(not _errors(diags), diags, found)
    return None


def _errors(diags: list[Diagnosis]) -> list[Diagnosis]:
    return [d for d in diags if d.severity == "error"]


def _describe(found: dict[str, Any], rec: DmarcRecord, location: str, policy: str | None) -> None:
    found.update(record=str(rec.text), location=location, tags=dict(rec.tags), policy=policy,
                 problems=[p.to_json() for p in rec.problems])


def _syntax_diagnoses(rec: DmarcRecord, name: str, rua: str | None) -> list[Diagnosis]:
    hard = [p for p in rec.problems if p.kind not in SOFT_PROBLEMS]
    soft = [p for p in rec.problems if p.kind in SOFT_PROBLEMS]
    out: list[Diagnosis] = []
    fix = suggest_dmarc_record(rec.tags, rua)
    if hard:
        out.append(Diagnosis(
            # A pasted character gets its own name: the record looks right on screen.
            "dmarc_pasted_character" if rec.pasted else "dmarc_syntax",
            f"「{name}」の DMARC レコード「{rec.text}」に誤りがあります："
            + "、".join(p.ja() for p in hard)
            + f"。値を次のように修正してください：{fix}",
            "error", {"name": name, "record": str(rec.text),
                      "problems": [p.to_json() for p in hard], "fix": fix, "fix_host": name,
                      "pasted": [c.to_json() for c in rec.pasted]}))
    if soft:
        # Unknown tags are ignored by receivers (RFC 7489 §6.3) but usually a typo; the
        # tag order is RFC 7489's ABNF, not what receivers check.
        order = any(p.kind == "order" for p in soft)
        out.append(Diagnosis(
            "dmarc_tag_order" if order and len(soft) == 1 else "dmarc_syntax",
            f"「{name}」の DMARC レコードに気になる点があります："
            + "、".join(p.ja() for p in soft) + "。動作には影響しませんが、"
            + (f"次の形に整えることをお勧めします：{fix}" if order else "ご確認ください。"),
            "warning", {"name": name, "problems": [p.to_json() for p in soft], "fix": fix}))
    return out


def _check_rua(client: DnsLookup, policy_domain: str, rec: DmarcRecord) -> list[Diagnosis]:
    """RFC 7489 §7.1: a report address in another organisational domain receives
    reports only if that domain publishes ``<policy-domain>._report._dmarc.<dest>``."""
    out: list[Diagnosis] = []
    own_org = organizational_domain(policy_domain)
    for tag in ("rua", "ruf"):
        for uri in parse_report_uris(rec.tags.get(tag, "")) or []:
            dest = uri_domain(uri)
            if not dest or organizational_domain(dest) == own_org:
                continue
            auth = f"{policy_domain}._report._dmarc.{dest}"
            ans = client.lookup(auth, "TXT")
            if isinstance(ans, DnsFailure):
                continue  # unknown, not wrong: the next pass asks again
            if any(str(r).strip().startswith("v=DMARC1") for r in ans.records):
                continue
            address = uri.split(":", 1)[1].split("!")[0]
            out.append(Diagnosis(
                "dmarc_rua_not_authorized",
                f"DMARC レポートの送付先 {address} は別のドメイン（{dest}）のため、"
                f"{dest} 側に「{auth}」という TXT レコード（値 v=DMARC1）が必要ですが、見つかりませんでした。"
                "このままではレポートが届きません。送付先ドメインの管理者に登録を依頼してください。",
                "warning", {"tag": tag, "uri": uri, "authorization_name": auth,
                            "answer": ans.to_json()}))
    return out
