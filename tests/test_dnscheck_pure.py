"""Pure parts of the DNS checks: record parsers, SPF evaluation over a fake DNS (compared
with pyspf over the same data), DMARC suggestions, alignment, report rendering."""

from __future__ import annotations

import ipaddress
import json

import pytest
import spf as pyspf

from bot.checks import dnscheck
from bot.checks.dmarc import organizational_domain, parse_dmarc, suggest_dmarc_record
from bot.checks.dnscheck import (
    AreaResult,
    CheckReport,
    Diagnosis,
    check_alignment,
    format_report_table,
    parse_dkim_record,
)
from bot.adapters.dnsclient import DnsFailure, Lookup, TxtRecord
from bot.checks.spf import (
    SpfEvaluator,
    _Ctx,
    analyse_spf,
    expand_macros,
    merge_spf_records,
    parse_spf,
)

KEY = "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAx" + "A" * 300 + "IDAQAB"

# ------------------------------------------------------------------ DKIM record parsing


def test_it_accepts_whitespace_inside_p():
    rec = parse_dkim_record(f"v=DKIM1; k=rsa; p={KEY[:100]} {KEY[100:200]}\t{KEY[200:]}")
    assert rec.syntax_ok and not rec.junk and rec.key == KEY


@pytest.mark.parametrize("value, junk_fragment", [
    (f'"v=DKIM1; k=rsa; p={KEY}"', '"'),
    (f'"v=DKIM1; k=rsa; p={KEY[:200]}" "{KEY[200:]}"', '"'),
    (f'\\"v=DKIM1; k=rsa; p={KEY}\\"', "\\"),
    (f"v=DKIM1;; k=rsa; p={KEY}", ";"),
    (f'sel._domainkey IN TXT ( "v=DKIM1; k=rsa; p={KEY}" )', "先頭"),
])
def test_it_names_pasted_junk_and_still_reads_the_key(value, junk_fragment):
    rec = parse_dkim_record(value)
    assert any(junk_fragment in j for j in rec.junk)
    assert rec.key == KEY
    v = dnscheck._judge_record(rec, KEY)
    assert v.codes == ["dkim_quoted"]


@pytest.mark.parametrize("value, problem", [
    (f"k=rsa; v=DKIM1; p={KEY}", "先頭"),
    (f"v=DKIM2; p={KEY}", "v=DKIM1"),
    (f"v=DKIM1; k=dsa; p={KEY}", "k=dsa"),
    ("v=DKIM1; k=rsa", "p="),
    (f"v=DKIM1; k=rsa; p={KEY}; p={KEY}", "2回"),
    ("v=DKIM1; k=rsa; p=abc$def", "使えない文字"),
    (f"v=DKIM1; s=ftp; p={KEY}", "s=ftp"),
])
def test_it_reports_rfc6376_syntax(value, problem):
    rec = parse_dkim_record(value)
    assert any(problem in p for p in rec.problems), rec.problems
    assert "dkim_syntax" in dnscheck._judge_record(rec, KEY).codes


def test_a_trailing_semicolon_is_legal():
    assert parse_dkim_record(f"v=DKIM1; k=rsa; p={KEY};").syntax_ok


def test_truncation_at_255_offers_a_1024_bit_key():
    value = f"v=DKIM1; k=rsa; p={KEY}"[:255]
    v = dnscheck._judge_record(parse_dkim_record(value), KEY)
    assert v.codes == ["dkim_truncated"] and v.offer_1024


def test_a_different_key_is_a_mismatch_and_t_y_is_testing():
    other = "MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQC" + "B" * 40
    assert dnscheck._judge_record(parse_dkim_record(f"v=DKIM1; p={other}"), KEY).codes == ["dkim_key_mismatch"]
    v = dnscheck._judge_record(parse_dkim_record(f"v=DKIM1; t=y; p={KEY}"), KEY)
    assert v.good and v.testing


# ------------------------------------------------------------------ DMARC


@pytest.mark.parametrize("value, ok", [
    ("v=DMARC1; p=none", True),
    (("v=DMARC1; p=reject; sp=quarantine; adkim=s; aspf=r; pct=50; fo=0:d; rf=afrf; ri=86400; "
      "rua=mailto:a@example.jp,mailto:b@example.com!10m; ruf=mailto:f@example.jp;"), True),
    ("p=none; v=DMARC1", False),
    ("v=DMARC1; rua=mailto:a@example.jp", False),
    ("v=DMARC1; p=monitor", False),
    ("v=DMARC1; p=none; pct=101", False),
    ("v=DMARC1; p=none; adkim=x", False),
    ("v=DMARC1; p=none; fo=2", False),
    ("v=DMARC1; p=none; rua=dmarc@example.jp", False),
    ('"v=DMARC1; p=none"', False),
    ("v=DMARC1; p=none; p=reject", False),
])
def test_it_parses_dmarc_per_rfc7489(value, ok):
    assert parse_dmarc(value).valid is ok


def test_unknown_dmarc_tags_are_only_a_warning():
    rec = parse_dmarc("v=DMARC1; p=none; rau=mailto:a@example.jp")
    assert rec.valid and [p.kind for p in rec.problems] == ["unknown"]


def test_the_suggestion_never_downgrades_an_existing_policy():
    rua = "mailto:dmarc@489ban.net"
    assert suggest_dmarc_record(None, rua) == f"v=DMARC1; p=none; rua={rua}"
    assert suggest_dmarc_record(None, "") == "v=DMARC1; p=none"
    for p in ("quarantine", "reject"):
        s = suggest_dmarc_record(parse_dmarc(f"v=DMARC1; p={p}; pct=20").tags, rua)
        assert s == f"v=DMARC1; p={p}; pct=20; rua={rua}"
    # a typo keeps its intent; an existing rua is kept, ours added once
    s = suggest_dmarc_record({"v": "DMARC1", "p": "rejct", "rua": "mailto:x@hotel.jp"}, rua)
    assert s == f"v=DMARC1; p=reject; rua=mailto:x@hotel.jp,{rua}"
    assert suggest_dmarc_record(parse_dmarc(s).tags, rua) == s


def test_organizational_domain_uses_the_public_suffix_list():
    assert organizational_domain("mail.hotel.co.jp") == "hotel.co.jp"
    assert organizational_domain("HOTEL.co.jp.") == "hotel.co.jp"
    assert organizational_domain("a.b.ryokan.kyoto.jp") == "ryokan.kyoto.jp"
    assert organizational_domain("www.ryokan.co.test") == "co.test"  # .test is no suffix


def test_alignment_relaxed_and_strict():
    assert check_alignment("mail.hotel.co.jp", "hotel.co.jp").ok
    assert not check_alignment("mail.hotel.co.jp", "hotel.co.jp", "s").ok
    assert check_alignment("hotel.co.jp", "HOTEL.co.jp.", "s").ok
    res = check_alignment("hotel.co.jp", "other.co.jp")
    assert not res.ok and res.codes == ["dkim_not_aligned"]


# ------------------------------------------------------------------ SPF over a fake DNS

ZONE: dict[tuple[str, str], list] = {
    ("hotel.test", "TXT"): ["v=spf1 mx a:mail.hotel.test include:_spf.saas.test -all"],
    ("hotel.test", "MX"): [(10, "mx.hotel.test")],
    ("mx.hotel.test", "A"): ["192.0.2.25"],
    ("mail.hotel.test", "A"): ["192.0.2.26"],
    ("_spf.saas.test", "TXT"): ["v=spf1 ip4:203.0.113.0/28 ip6:2001:db8::/32 ~all"],
    ("soft.test", "TXT"): ["v=spf1 ip4:198.51.100.1 ~all"],
    ("redir.test", "TXT"): ["v=spf1 redirect=_spf.saas.test"],
    ("nx.test", "TXT"): ["v=spf1 include:missing.test -all"],
    ("loop.test", "TXT"): ["v=spf1 include:loop.test -all"],
    ("macro.test", "TXT"): ["v=spf1 exists:%{ir}.allow.macro.test -all"],
    ("10.113.0.203.allow.macro.test", "A"): ["127.0.0.2"],
    ("voids.test", "TXT"): ["v=spf1 a:n1.test a:n2.test a:n3.test ip4:203.0.113.10 -all"],
    ("many.test", "TXT"): ["v=spf1 " + " ".join(f"a:h{i}.test" for i in range(11)) + " -all"],
    ("two.test", "TXT"): ["v=spf1 -all", "v=spf1 +all"],
    ("neutral.test", "TXT"): ["v=spf1 ?all"],
    ("cidr.test", "TXT"): ["v=spf1 a:mail.hotel.test/24 -all"],
}
for i in range(11):
    ZONE[(f"h{i}.test", "A")] = ["192.0.2.1"]


def fake_lookup(name: str, rdtype: str):
    name = name.lower().rstrip(".")
    if (name, rdtype) in ZONE:
        vals = ZONE[(name, rdtype)]
        return Lookup(name, rdtype, "NOERROR", tuple(TxtRecord(v) if rdtype == "TXT" else v for v in vals))
    if name.startswith("fail."):
        return DnsFailure("SERVFAIL", "fake", name)
    if any(k[0] == name for k in ZONE):
        return Lookup(name, rdtype, "NOERROR")
    return Lookup(name, rdtype, "NXDOMAIN")


def pyspf_lookup(name, qtype, strict=True, timeout=None):
    ans = fake_lookup(name, qtype)
    if isinstance(ans, DnsFailure):
        raise pyspf.TempError("DNS " + ans.reason)
    out = []
    for r in ans.records:
        if qtype == "TXT":
            out.append(((name, qtype), list(r.strings)))
        elif qtype == "MX":
            out.append(((name, qtype), (r[0], r[1])))
        else:
            out.append(((name, qtype), r))
    return out


CASES = [
    ("203.0.113.10", "hotel.test", "pass"),
    ("192.0.2.25", "hotel.test", "pass"),
    ("192.0.2.26", "hotel.test", "pass"),
    ("192.0.2.99", "hotel.test", "fail"),
    ("2001:db8::1", "hotel.test", "pass"),
    ("198.51.100.1", "soft.test", "pass"),
    ("198.51.100.2", "soft.test", "softfail"),
    ("203.0.113.10", "redir.test", "pass"),
    ("203.0.113.99", "redir.test", "softfail"),
    ("203.0.113.10", "nx.test", "permerror"),
    ("203.0.113.10", "loop.test", "permerror"),
    ("203.0.113.10", "macro.test", "pass"),
    ("203.0.113.11", "macro.test", "fail"),
    ("203.0.113.10", "voids.test", "permerror"),
    ("203.0.113.10", "many.test", "permerror"),
    ("203.0.113.10", "two.test", "permerror"),
    ("203.0.113.10", "nothing.test", "none"),
    ("203.0.113.10", "neutral.test", "neutral"),
    ("192.0.2.200", "cidr.test", "pass"),
    ("192.0.3.1", "cidr.test", "fail"),
]


@pytest.mark.parametrize("ip, domain, expected", CASES)
def test_spf_evaluation_agrees_with_pyspf(ip, domain, expected, monkeypatch):
    ours, _ = SpfEvaluator(fake_lookup).check_host(ip, domain)
    monkeypatch.setattr(pyspf, "DNSLookup", pyspf_lookup)
    theirs = pyspf.query(i=ip, s=f"postmaster@{domain}", h=domain).check()[0]
    assert ours == expected
    assert ours == theirs


def test_spf_analysis_counts_lookups_and_voids():
    rec = parse_spf(ZONE[("hotel.test", "TXT")][0])
    a = analyse_spf(rec, "hotel.test", fake_lookup)
    assert (a.lookups, a.voids) == (3, 0)
    assert analyse_spf(parse_spf(ZONE[("many.test", "TXT")][0]), "many.test", fake_lookup).lookups == 11
    assert analyse_spf(parse_spf(ZONE[("voids.test", "TXT")][0]), "voids.test", fake_lookup).voids == 3


def test_a_dns_failure_is_a_temperror_not_a_verdict():
    ZONE[("tmp.test", "TXT")] = ["v=spf1 include:fail.example -all"]
    assert SpfEvaluator(fake_lookup).check_host("203.0.113.10", "tmp.test")[0] == "temperror"


def test_macros_expand_per_rfc7208_examples():
    ctx = _Ctx(ipaddress.ip_address("192.0.2.3"), "strong-bad@email.example.com", "h")
    d = "email.example.com"
    assert expand_macros("%{s}", ctx, d) == "strong-bad@email.example.com"
    assert expand_macros("%{d4}", ctx, d) == "email.example.com"
    assert expand_macros("%{d2}", ctx, d) == "example.com"
    assert expand_macros("%{ir}.%{v}._spf.%{d2}", ctx, d) == "3.2.0.192.in-addr._spf.example.com"
    assert expand_macros("%{lr-}.lp._spf.%{d2}", ctx, d) == "bad.strong.lp._spf.example.com"
    ctx6 = _Ctx(ipaddress.ip_address("2001:db8::cb01"), "a@b.c", "h")
    assert expand_macros("%{ir}.%{v}._spf.%{d2}", ctx6, d) == (
        "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com")


@pytest.mark.parametrize("records, expected", [
    (["v=spf1 mx -all"], "v=spf1 mx include:_spf.489ban.net -all"),
    (["v=spf1 mx ~all exp=why.%{d}"], "v=spf1 mx include:_spf.489ban.net ~all exp=why.%{d}"),
    (["v=spf1 redirect=_spf.hoster.jp"], "v=spf1 include:_spf.489ban.net redirect=_spf.hoster.jp"),
    (["v=spf1 ip4:192.0.2.1"], "v=spf1 ip4:192.0.2.1 include:_spf.489ban.net"),
    (["v=spf1 include:_spf.489ban.net -all"], "v=spf1 include:_spf.489ban.net -all"),
    (["v=spf1 mx -all", "v=spf1 include:_spf.hoster.jp ~all"],
     "v=spf1 include:_spf.hoster.jp mx include:_spf.489ban.net -all"),  # sorted, strictest all
])
def test_the_spf_fix_is_one_merged_record(records, expected):
    assert merge_spf_records(records, ["include:_spf.489ban.net"]) == expected


@pytest.mark.parametrize("value", [
    "v=spf1 ip4:1.2.3 -all", "v=spf1 include -all", "v=spf1 foo:bar -all",
    "v=spf1 a/33 -all", "v=spf1 redirect=a.jp redirect=b.jp", "v=spf1 -all:x",
    '"v=spf1 -all"', "v=spf1 ip6:1.2.3.4 -all",
])
def test_spf_syntax_errors(value):
    assert parse_spf(value).problems


# ------------------------------------------------------------------ reports


def _report(dkim_ok=True, codes=("dns_error",)) -> CheckReport:
    bad = AreaResult(False, [Diagnosis(c, "メッセージです。") for c in codes], {})
    good = AreaResult(True, [], {})
    return CheckReport(good if dkim_ok else bad, good, good, good)


def test_the_json_has_the_spec_shape():
    data = json.loads(json.dumps(_report(False, ("dkim_not_published",)).to_json()))
    assert set(data) == {"dkim", "dmarc", "spf", "alignment"}
    assert data["dkim"]["ok"] is False
    assert data["dkim"]["diagnoses"][0]["code"] == "dkim_not_published"
    assert data["dkim"]["diagnoses"][0]["message"] == "メッセージです。"
    assert data["spf"] == {"ok": True, "diagnoses": [], "found": {}}


def test_exit_codes_and_table():
    assert dnscheck.exit_code(_report(False)) == 2
    assert dnscheck.exit_code(_report(False, ("dns_error", "dkim_syntax"))) == 1
    assert dnscheck.exit_code(_report(True)) == 0
    table = format_report_table(_report(False, ("dkim_syntax",)))
    assert "dkim" in table and "FAIL" in table and "dkim_syntax" in table
