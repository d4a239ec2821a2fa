"""DMARC and DKIM key records from the field's own suites (tests/conformance/: checkdmarc
5.15.5's test records, RFC 7489 Appendix B, dkimpy 1.1.8's dkim/tests records), each
agreeing or listed as a deliberate difference with its reason in its runner."""

from __future__ import annotations

import pytest
from conformance import authres_runner, dkim_runner, dmarc_runner

from bot.checks.dmarc import parse_dmarc
from bot.checks.dnscheck import dkim_record_codes


def test_checkdmarc_records_agree_or_are_listed():
    res = dmarc_runner.run_checkdmarc()
    print(res.line)
    assert res.failures == []
    assert set(res.deviations) == set(dmarc_runner.DEVIATIONS)  # each listed one still differs
    assert res.total == 41


def test_rfc7489_appendix_b_records_and_alignment_examples_agree():
    res = dmarc_runner.run_rfc7489()
    print(res.line)
    assert res.failures == [] and res.passed == res.total == 17


def test_dkimpy_records_agree_with_evaluate_pk_or_are_listed():
    res = dkim_runner.run()
    print(res.line)
    assert res.failures == []
    assert list(res.deviations) == ["dkim/tests/data/test_tlsrpt.txt"]


def test_the_cut_ed25519_key_is_not_usable():
    assert dkim_record_codes("v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7") == ["dkim_truncated"]
    assert dkim_record_codes("v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=") == []


@pytest.mark.parametrize("record, code", [
    ("v=DKIM1;\u3000k=rsa; p=MIIB", "dkim_pasted_character"),
    ("\ufeffv=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=", "dkim_pasted_character"),
    ("v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQH\u200bOg7hcvPapiMlrwIaaPcHURo=", "dkim_pasted_character"),
])
def test_pasted_characters_in_a_dkim_record_are_named(record, code):
    assert code in dkim_record_codes(record)


@pytest.mark.parametrize("record, kind", [
    ("v=DMARC1;\u3000p=reject", "pasted"),
    ("\ufeffv=DMARC1; p=none", "pasted"),
    ("v=DMARC1; p=\u201creject\u201d", "pasted"),
    (" v=DMARC1; p=reject", "leading_space"),
])
def test_dmarc_records_receivers_reject_are_invalid_and_named(record, kind):
    rec = parse_dmarc(record)
    assert not rec.valid and kind in [p.kind for p in rec.problems]


def test_authres_doctest_headers_agree_or_are_listed():
    res = authres_runner.run_authres()
    print(res.line)
    assert res.failures == []
    assert set(res.deviations) == {f"line {n}" for n in authres_runner.DEVIATIONS}


def test_rfc8601_examples_agree():
    res = authres_runner.run_rfc8601()
    print(res.line)
    assert res.failures == [] and res.passed == res.total


def test_the_comment_heavy_example_and_a_quoted_authserv_id():
    from bot.core.authresults import parse_authentication_results

    ar = parse_authentication_results(
        "foo.example.net (foobar) 1 (baz); dkim (Because I like it) / 1 (One yay) = (wait for it) "
        "fail policy (A dot can go here) . (like that) expired (this surprised me) = (as I wasn't "
        "expecting it) 1362471462")
    [r] = ar.results
    assert (ar.authserv_id, ar.version, r.method, r.result) == ("foo.example.net", "1", "dkim", "fail")
    assert r.props == {"policy.expired": "1362471462"}
    assert parse_authentication_results('"mx.google.com"; dkim=pass').authserv_id == "mx.google.com"
    # A dot at the end of a value stays with the value.
    [r] = parse_authentication_results("mx; dkim=pass header.d=x.jp. header.s=sel").results
    assert r.props == {"header.d": "x.jp.", "header.s": "sel"}
