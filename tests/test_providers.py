"""The DNS-host table (bot/core/providers.py): pure, NS names in, what the panel wants out."""

from __future__ import annotations

import pytest

from bot.core.providers import PROVIDERS, hint, hint_for, identify

LONG = "v=DKIM1; k=rsa; p=" + "A" * 392  # a 2048-bit record's length: over one string
SHORT = "v=DKIM1; k=rsa; p=" + "B" * 216  # 1024 bits: fits one string


def rec(value: str = LONG, label: str = "yoyakuban202605._domainkey") -> dict[str, str]:
    return {"host_label": label, "fqdn": f"{label}.hotel.jp", "value": value}


@pytest.mark.parametrize("names, key", [
    (["dns1.onamae.com", "dns2.onamae.com"], "onamae"),
    (["01.dnsv.jp", "02.dnsv.jp"], "onamae"),
    (["ns1.dns.ne.jp", "ns2.dns.ne.jp"], "sakura"),
    (["ns1.xserver.jp.", "NS2.XSERVER.JP"], "xserver"),
    (["dns01.muumuu-domain.com", "dns02.muumuu-domain.com"], "muumuu"),
    (["ns1.value-domain.com", "ns2.value-domain.com"], "value-domain"),
    (["kate.ns.cloudflare.com", "rob.ns.cloudflare.com"], "cloudflare"),
    (["ns-1234.awsdns-18.com", "ns-567.awsdns-06.net", "ns-1.awsdns-00.co.uk"], "route53"),
    (["ns-cloud-a1.googledomains.com", "ns-cloud-a2.googledomains.com"], "gcloud"),
    (["ns01.domaincontrol.com", "ns02.domaincontrol.com"], "godaddy"),
])
def test_known_hosts_are_recognised(names, key):
    assert identify(names).key == key


@pytest.mark.parametrize("names", [
    [],
    ["ns1.hotel-sakura.jp", "ns2.hotel-sakura.jp"],           # its own servers
    ["dns1.onamae.com", "kate.ns.cloudflare.com"],           # two hosts: a migration
    ["dns1.onamae.com", "ns1.example.net"],                  # one unknown server among them
    ["dns1.onamae.com.evil.example", "ns1.dns.ne.jp.example"],  # look-alikes
    ["ns-cloud-a1.googledomains.com.example"],
])
def test_unknown_mixed_or_lookalike_hosts_get_no_hint(names):
    assert identify(names) is None
    assert hint_for(names, [rec()]) is None


def test_every_provider_has_a_valid_table_row():
    keys = [p.key for p in PROVIDERS]
    assert len(keys) == len(set(keys))
    for p in PROVIDERS:
        assert p.host_field in ("label", "either") and p.long_values in ("single", "quoted", "lines", "capped")
        assert p.ns_patterns and p.name and p.panel


def test_a_label_host_says_to_enter_only_the_label():
    h = hint_for(["dns1.onamae.com"], [rec()])
    assert "「お名前.com」" in h["text"][0]
    assert "「yoyakuban202605._domainkey」とだけ入力" in h["text"][1]
    assert "途中で区切らずに" in h["text"][2] and h["paste"] == []


def test_quoted_hosts_get_the_value_as_strings_of_at_most_255_bytes():
    from bot.core.records import record_box

    provider = identify(["ns-1.awsdns-00.com"])
    h = hint(provider, [rec()])
    # The box holds the quoted form itself (nothing extra to paste); the hint says why.
    assert h["paste"] == [] and "ダブルクォーテーション" in h["text"][2]
    box = record_box("hotel.jp", "yoyakuban202605._domainkey.hotel.jp", LONG, provider=provider)
    parts = box["paste"][1:-1].split('" "')
    assert "".join(parts) == LONG and [len(p) for p in parts] == [255, len(LONG) - 255]
    assert box["field"] == "yoyakuban202605._domainkey"
    # Route 53 wants even a short value in quotes; Cloud DNS only a long one.
    assert record_box("hotel.jp", "s._domainkey.hotel.jp", SHORT, provider=provider)["paste"] == f'"{SHORT}"'
    gcloud = identify(["ns-cloud-a1.googledomains.com"])
    assert record_box("hotel.jp", "s._domainkey.hotel.jp", SHORT, provider=gcloud)["paste"] == SHORT
    assert len(hint(gcloud, [rec(SHORT)])["text"]) == 2


def test_sakura_caps_txt_values_and_says_why_the_key_is_short():
    sakura = identify(["ns1.dns.ne.jp", "ns2.dns.ne.jp"])
    assert sakura.caps_txt_at_255
    assert "1024ビット" in hint(sakura, [rec(SHORT)])["text"][-1]
    assert "「短い鍵希望」" in hint(sakura, [rec()])["text"][-1]  # a long key there: offer the short one
    assert not any(p.caps_txt_at_255 for p in PROVIDERS if p.key != "sakura")


@pytest.mark.parametrize("ns, field", [
    (None, "yoyakuban202605._domainkey"),
    (["dns1.onamae.com"], "yoyakuban202605._domainkey"),
    (["ns1.dns.ne.jp"], "yoyakuban202605._domainkey"),
])
def test_a_box_leads_with_the_label_and_gives_the_full_name_second(ns, field):
    from bot.core.records import record_box

    box = record_box("hotel.jp", "yoyakuban202605._domainkey.hotel.jp", SHORT, provider=identify(ns) if ns else None)
    assert box["field"] == field and box["field_note"].endswith("：yoyakuban202605._domainkey.hotel.jp）")
    assert '"' not in box["paste"] and box["zone_line"].startswith("yoyakuban202605._domainkey.hotel.jp. IN TXT")


@pytest.mark.parametrize("ns, field", [
    (None, "空欄のままにしてください（空欄にできない場合は「@」）"),
    (["dns1.onamae.com"], "空欄のままにしてください（空欄にできない場合は「@」）"),
    (["ns1.dns.ne.jp"], "@"),
])
def test_the_apex_box_says_empty_or_at_per_panel(ns, field):
    from bot.core.records import record_box

    box = record_box("hotel.jp", "hotel.jp", "v=spf1 include:_spf.489ban.net ~all", provider=identify(ns) if ns else None)
    assert box["field"] == field and box["host_label"] == "@"


def test_value_domain_gets_its_line_format():
    h = hint(identify(["ns1.value-domain.com"]), [rec(SHORT), rec(SHORT, "yoyakuban202605-ed._domainkey")])
    assert h["paste"] == [f"txt yoyakuban202605._domainkey {SHORT}", f"txt yoyakuban202605-ed._domainkey {SHORT}"]
    assert "種類 ホスト名 値" in h["text"][1]


def test_cloudflare_accepts_either_host_form():
    h = hint_for(["kate.ns.cloudflare.com"], [rec()])
    assert "ドメイン名まで入力しても同じ意味" in h["text"][1]
