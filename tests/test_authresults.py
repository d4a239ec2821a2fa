"""Authentication-Results (RFC 8601) as real receivers write them, parsed into items; and
the proof's verdict on them (bot/core/authresults.py, bot/flows/proof.py judge). Pure: no servers."""

from __future__ import annotations

import pytest

from bot.core.authresults import AuthResultsError, parse_authentication_results
from bot.flows.proof import aligned, ar_headers, choose_results, judge

GMAIL = (
    "mx.google.com;\r\n       dkim=pass header.i=@x.jp header.s=sel header.b=abc;\r\n"
    "       spf=pass (google.com: domain of info@x.jp designates 203.0.113.10 as permitted sender)"
    " smtp.mailfrom=info@x.jp;\r\n       dmarc=pass (p=NONE sp=NONE dis=NONE) header.from=x.jp"
)
YAHOO = ("atlas-production.v2.mail-mx.bf1.yahoo.com; dkim=pass header.i=@x.jp header.s=sel; "
         "spf=pass smtp.mailfrom=x.jp; dmarc=pass(p=REJECT) header.from=x.jp;")
MICROSOFT = ("spf=pass (sender IP is 203.0.113.10) smtp.mailfrom=x.jp; dkim=pass (signature was verified) "
             "header.d=x.jp;dmarc=pass action=none header.from=x.jp;compauth=pass reason=100")


def items(value: str) -> list[tuple[str, str, dict[str, str]]]:
    return [(r.method, r.result, r.props) for r in parse_authentication_results(value).results]


def test_it_reads_gmails_header_item_by_item():
    ar = parse_authentication_results(GMAIL)
    assert ar.authserv_id == "mx.google.com" and ar.version is None
    assert items(GMAIL) == [
        ("dkim", "pass", {"header.i": "@x.jp", "header.s": "sel", "header.b": "abc"}),
        ("spf", "pass", {"smtp.mailfrom": "info@x.jp"}),
        ("dmarc", "pass", {"header.from": "x.jp"}),
    ]
    assert ar.results[0].dkim_domain == "x.jp"  # from header.i when there is no header.d
    assert ar.results[1].comment.startswith("google.com: domain of info@x.jp")
    assert ar.results[2].comment == "p=NONE sp=NONE dis=NONE"


def test_it_reads_yahoos_comment_glued_to_the_result_and_the_trailing_semicolon():
    ar = parse_authentication_results(YAHOO)
    assert ar.authserv_id == "atlas-production.v2.mail-mx.bf1.yahoo.com"
    assert items(YAHOO) == [
        ("dkim", "pass", {"header.i": "@x.jp", "header.s": "sel"}),
        ("spf", "pass", {"smtp.mailfrom": "x.jp"}),
        ("dmarc", "pass", {"header.from": "x.jp"}),
    ]
    assert ar.results[2].comment == "p=REJECT"


def test_it_reads_microsofts_header_without_authserv_id_and_with_bare_pairs():
    ar = parse_authentication_results(MICROSOFT)
    assert ar.authserv_id == ""
    assert [(r.method, r.result) for r in ar.results] == [
        ("spf", "pass"), ("dkim", "pass"), ("dmarc", "pass"), ("compauth", "pass")]
    dkim, dmarc, compauth = ar.results[1], ar.results[2], ar.results[3]
    assert dkim.dkim_domain == "x.jp" and dkim.comment == "signature was verified"
    assert dmarc.extra == {"action": "none"} and dmarc.props == {"header.from": "x.jp"}
    assert compauth.reason == "100"


def test_it_keeps_a_version_quotes_spaces_around_equals_and_a_base64_value_with_equals():
    value = ('example.net 1; dkim = fail reason="signature did not verify" header.d=x.jp '
             'header.b=ab/+c=; spf=softfail smtp.mailfrom="a b"@x.jp')
    ar = parse_authentication_results(value)
    assert (ar.authserv_id, ar.version) == ("example.net", "1")
    dkim, spf = ar.results
    assert (dkim.method, dkim.result, dkim.reason) == ("dkim", "fail", "signature did not verify")
    assert dkim.props["header.b"] == "ab/+c="
    assert spf.props["smtp.mailfrom"] == '"a b"@x.jp'  # a quoted local part stays an address
    assert dkim.reason == "signature did not verify"  # a wholly quoted value is unquoted


def test_none_means_no_results_and_an_empty_header_is_an_error():
    assert parse_authentication_results("mx.example.org; none").results == []
    assert parse_authentication_results("mx.example.org (nested (comment)); dkim=none").results[0].result == "none"
    with pytest.raises(AuthResultsError):
        parse_authentication_results("  ")


def test_the_receivers_own_header_is_chosen_top_first_or_by_authserv_id():
    raw = (f"Authentication-Results: {GMAIL}\r\nAuthentication-Results: relay.example; dkim=fail\r\n"
           "Subject: x\r\n\r\n").encode()
    headers = ar_headers(raw)
    assert len(headers) == 2
    assert choose_results(headers).authserv_id == "mx.google.com"
    assert choose_results(headers, "relay.example").results[0].result == "fail"
    assert choose_results(headers, "mx.other.example") is None


def test_the_verdict_needs_an_aligned_dkim_pass_and_escalates_a_fail():
    ok = judge(parse_authentication_results(GMAIL), "x.jp")
    assert ok.ok and ok.dkim_ok and ok.dmarc_ok and ok.spf_ok
    assert ok.items[0] == {"method": "dkim", "result": "pass", "detail": "header.i=@x.jp header.s=sel",
                           "comment": ""}
    failed = judge(parse_authentication_results(
        "mx.test; dkim=fail header.d=x.jp header.s=sel; dmarc=fail header.from=x.jp"), "x.jp")
    assert not failed.ok and not failed.dkim_ok and failed.dmarc_result == "fail"
    assert len(failed.problems) == 2 and "dkim=fail header.d=x.jp" in failed.problems[0]
    # A pass for someone else's domain (the ESP's) is not the facility's DKIM.
    other = judge(parse_authentication_results("mx.test; dkim=pass header.d=esp.example; dmarc=none"), "x.jp")
    assert not other.dkim_ok and not other.ok
    assert aligned("mail.x.jp", "x.jp") and aligned("x.jp", "news.x.jp") and not aligned("xx.jp", "x.jp")


def test_alignment_follows_the_public_suffix_list():
    from bot.flows.proof import aligned

    assert aligned("hotel.co.jp", "hotel.co.jp")
    assert aligned("mail.hotel.co.jp", "hotel.co.jp")
    assert not aligned("co.jp", "hotel.co.jp")  # a public suffix is no one's domain
    assert not aligned("other.co.jp", "hotel.co.jp")
    assert not aligned(None, "hotel.co.jp")
