"""Every paste mistake of issue 12 is named by ``dkimbot check --json`` against a real
BIND zone holding it (RFC 2136 updates, tests/servers.py): never "ok" for a record a
receiver rejects. SPF: a full-width space (U+3000) between terms, a no-break space, a
TAB or CR LF inside, a numeric or dash top label, a prefix length with a leading zero,
``ptr/24``, full-width letters in a domain. DMARC and DKIM: a full-width space, a BOM,
a zero-width space, smart quotes."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from configkit import dns, service, write_toml

pytestmark = pytest.mark.servers

SEL = "yoyakuban202611"
ED_KEY = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="


@pytest.fixture(scope="module")
def saas(bind):
    zone = f"saas{secrets.token_hex(3)}.test"
    bind.add_zone(zone, (f"ns1.{zone}", f"ns2.{zone}"))
    bind.update(zone, "_spf", "TXT", ["v=spf1 ip4:203.0.113.10 -all"])
    bind.update(zone, "*._report._dmarc", "TXT", ["v=DMARC1"])
    return zone


def check_json(tmp_path: Path, bind, saas: str, domain: str) -> dict:
    cfg = write_toml(tmp_path / "dkimbot.toml", {
        "service": service(saas), "dns": dns(bind), "state": {"dir": str(tmp_path / "state")}})
    r = subprocess.run([sys.executable, "-m", "bot", "--config", str(cfg), "check", domain,
                        "--selector", SEL, "--json"], capture_output=True, timeout=120, check=False)
    assert r.returncode in (0, 1), r.stderr.decode()
    return json.loads(r.stdout)


def zone_with(bind, saas: str, spf: str, dmarc: str = "v=DMARC1; p=none",
              dkim: str = f"v=DKIM1; k=ed25519; p={ED_KEY}") -> str:
    z = f"h{secrets.token_hex(4)}.test"
    bind.add_zone(z, (f"ns1.{z}", f"ns2.{z}"))
    bind.update(z, "@", "TXT", [spf])
    bind.update(z, "_dmarc", "TXT", [dmarc])
    bind.update(z, f"{SEL}._domainkey", "TXT", [dkim])
    bind.update(z, "mail", "A", ["203.0.113.10"])
    return z


def inc(saas: str) -> str:
    return f"include:_spf.{saas}"


# (name, SPF record with the mistake, code, words the message must contain, the fix)
SPF_CASES = [
    ("full-width space", "v=spf1 mx\u3000{inc} -all", "spf_pasted_character", ["全角スペース", "「mx」と"],
     "v=spf1 mx {inc} -all"),
    ("no-break space", "v=spf1 mx\u00a0{inc} -all", "spf_pasted_character", ["ノーブレークスペース"],
     "v=spf1 mx {inc} -all"),
    ("TAB", "v=spf1 mx\t{inc} -all", "spf_pasted_character", ["タブ", "10文字目"],
     "v=spf1 mx {inc} -all"),
    ("CR LF", "v=spf1 mx\r\n{inc} -all", "spf_pasted_character", ["改行（CR）", "改行（LF）"],
     "v=spf1 mx {inc} -all"),
    ("numeric top label", "v=spf1 a:mail.example.123 {inc} -all", "spf_syntax",
     ["1番目の項目「a:mail.example.123」", "「123」"], "v=spf1 {inc} -all"),
    ("dash top label", "v=spf1 a:mail.example.-jp {inc} -all", "spf_syntax",
     ["「a:mail.example.-jp」", "「-jp」"], "v=spf1 {inc} -all"),
    ("leading-zero prefix", "v=spf1 ip4:198.51.100.0/024 {inc} -all", "spf_syntax",
     ["「ip4:198.51.100.0/024」", "プレフィックス長"], "v=spf1 ip4:198.51.100.0/24 {inc} -all"),
    ("ptr prefix", "v=spf1 ptr/24 {inc} -all", "spf_syntax", ["「ptr/24」"], "v=spf1 ptr {inc} -all"),
    ("zero-width space in v=spf1", "v=spf\u200b1 {inc} -all", "spf_pasted_character",
     ["ゼロ幅スペース", "「v=spf1」の途中"], "v=spf1 {inc} -all"),
    ("full-width letters", "v=spf1 a:\uff4d\uff41\uff49\uff4c.{z} {inc} -all", "spf_pasted_character",
     ["全角文字「ｍａｉｌ」"], "v=spf1 a:mail.{z} {inc} -all"),
]


@pytest.mark.parametrize("name, record, code, words, fix", SPF_CASES, ids=[c[0] for c in SPF_CASES])
def test_spf_paste_mistakes_are_named_by_check_json(tmp_path, bind, saas, name, record, code, words, fix):
    z = f"h{secrets.token_hex(4)}.test"
    spf = record.format(inc=inc(saas), z=z)
    bind.add_zone(z, (f"ns1.{z}", f"ns2.{z}"))
    bind.update(z, "@", "TXT", [spf])
    bind.update(z, "mail", "A", ["203.0.113.10"])
    out = check_json(tmp_path, bind, saas, z)["spf"]
    assert out["ok"] is False, name
    [d] = [d for d in out["diagnoses"] if d["severity"] == "error"]
    assert d["code"] == code
    for w in words:
        assert w.format(z=z) in d["message"], (w, d["message"])
    want = fix.format(inc=inc(saas), z=z)
    assert d["detail"]["fix"] == want and d["message"].endswith(want)


def test_the_fix_for_a_full_width_space_passes_once_published(tmp_path, bind, saas):
    """The record the diagnosis gives is one receivers accept: published, SPF is ok."""
    z = zone_with(bind, saas, f"v=spf1 mx\u3000{inc(saas)} -all")
    fix = check_json(tmp_path, bind, saas, z)["spf"]["diagnoses"][0]["detail"]["fix"]
    bind.update(z, "@", "TXT", [fix])
    assert check_json(tmp_path, bind, saas, z)["spf"]["ok"] is True


@pytest.mark.parametrize("dmarc, words", [
    ("v=DMARC1;\u3000p=reject", ["全角スペース"]),
    ("\ufeffv=DMARC1; p=none", ["BOM"]),
    ("v=DMARC1; p=\u201creject\u201d", ["全角の引用符「“」"]),
    ("v=DMARC1;\u200b p=none", ["ゼロ幅スペース"]),
])
def test_dmarc_pasted_characters_are_named_by_check_json(tmp_path, bind, saas, dmarc, words):
    z = zone_with(bind, saas, f"v=spf1 {inc(saas)} -all", dmarc=dmarc)
    out = check_json(tmp_path, bind, saas, z)["dmarc"]
    assert out["ok"] is False
    [d] = [d for d in out["diagnoses"] if d["code"] == "dmarc_pasted_character"]
    assert all(w in d["message"] for w in words), d["message"]
    assert d["detail"]["fix"].startswith("v=DMARC1; p=")


@pytest.mark.parametrize("dkim, words", [
    (f"v=DKIM1;\u3000k=ed25519; p={ED_KEY}", ["全角スペース"]),
    (f"\ufeffv=DKIM1; k=ed25519; p={ED_KEY}", ["BOM"]),
    (f"v=DKIM1; k=ed25519; p={ED_KEY[:20]}\u200b{ED_KEY[20:]}", ["ゼロ幅スペース"]),
])
def test_dkim_pasted_characters_are_named_by_check_json(tmp_path, bind, saas, dkim, words):
    z = zone_with(bind, saas, f"v=spf1 {inc(saas)} -all", dkim=dkim)
    out = check_json(tmp_path, bind, saas, z)["dkim"]
    assert out["ok"] is False
    [d] = [d for d in out["diagnoses"] if d["code"] == "dkim_pasted_character"]
    assert all(w in d["message"] for w in words), d["message"]


def test_a_cut_ed25519_key_is_named_by_check_json(tmp_path, bind, saas):
    z = zone_with(bind, saas, f"v=spf1 {inc(saas)} -all",
                  dkim="v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7")
    out = check_json(tmp_path, bind, saas, z)["dkim"]
    assert out["ok"] is False and "dkim_truncated" in [d["code"] for d in out["diagnoses"]]


def test_the_clean_records_are_ok(tmp_path, bind, saas):
    """The same zone without the mistakes passes: the diagnoses above come from them."""
    z = zone_with(bind, saas, f"v=spf1 mx {inc(saas)} -all")
    out = check_json(tmp_path, bind, saas, z)
    assert out["spf"]["ok"] and out["dmarc"]["ok"] and out["dkim"]["ok"], json.dumps(out, ensure_ascii=False)
