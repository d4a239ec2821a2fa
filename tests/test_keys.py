"""Keys: selector names, the TXT record and its zone-file form, the key store at rest."""

from __future__ import annotations

import base64
import os
import re
import stat
import threading
from datetime import datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from bot.adapters.keys import (
    DkimKey,
    KeyPassphraseError,
    KeyStore,
    KeyStoreError,
    ed25519_selector,
    render_selector,
    render_zone_line,
    split_txt_strings,
)

NOW = datetime(2026, 11, 5, 9, 30)
PASSPHRASE = "correct horse battery staple"


# --------------------------------------------------------------------------- selector


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("yoyakuban{YYYYMM}", "yoyakuban202611"),
        ("yb{YYYY}-{MM}-{DD}", "yb2026-11-05"),
        ("s{YYYYMMDD}", "s20261105"),
        ("Yoyakuban{YYYYMM}", "yoyakuban202611"),  # DNS is case-insensitive: folded
        ("fixed", "fixed"),
    ],
)
def test_it_renders_selector_patterns(pattern: str, expected: str) -> None:
    assert render_selector(pattern, NOW) == expected


@pytest.mark.parametrize(
    ("pattern", "fragment"),
    [
        ("yoyakuban_{YYYYMM}", "not a valid DNS label"),
        ("yoyaku.ban{YYYYMM}", "not a valid DNS label"),
        ("-yb{YYYY}", "not a valid DNS label"),
        ("yb{YYYY}-", "not a valid DNS label"),
        ("予約{YYYY}", "not a valid DNS label"),
        ("x" * 60 + "{YYYY}", "at most 63"),
        ("yb{YYMM}", "unknown placeholder {YYMM}"),
        ("", "empty"),
    ],
)
def test_it_refuses_selectors_that_are_not_dns_labels(pattern: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment.replace("{", r"\{").replace("}", r"\}")):
        render_selector(pattern, NOW)


def test_it_derives_a_distinct_valid_ed25519_selector() -> None:
    sel = ed25519_selector("yoyakuban202611")
    assert sel != "yoyakuban202611"
    assert render_selector(sel, NOW) == sel  # a valid label on its own
    with pytest.raises(ValueError):
        ed25519_selector("x" * 63)


# --------------------------------------------------------------------------- records


@pytest.mark.parametrize("bits", [1024, 2048, 3072, 4096])
def test_it_renders_rsa_records_with_spki_der(tmp_path: Path, bits: int) -> None:
    store = KeyStore(tmp_path / "keys", None)
    key = store.load_or_create("hotel.test", "sel", "rsa", bits)
    assert key.algorithm == "rsa" and key.bits == bits
    assert key.record == f"v=DKIM1; k=rsa; p={key.public_b64}"
    assert "\n" not in key.record
    public = serialization.load_der_public_key(base64.b64decode(key.public_b64))
    assert isinstance(public, rsa.RSAPublicKey)
    assert public.key_size == bits
    assert public.public_numbers().e == 65537
    assert key.fqdn == "sel._domainkey.hotel.test"
    assert key.host_label == "sel._domainkey"


def test_it_renders_ed25519_records_with_the_raw_key(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys", None)
    key = store.load_or_create("hotel.test", "sel-ed", "ed25519", 0)
    assert key.record.startswith("v=DKIM1; k=ed25519; p=")
    raw = base64.b64decode(key.public_b64)
    assert len(raw) == 32  # RFC 8463 §4.2: the bare key, not SubjectPublicKeyInfo
    ed25519.Ed25519PublicKey.from_public_bytes(raw)


@pytest.mark.parametrize("length", [0, 1, 254, 255, 256, 410, 510, 511, 800])
def test_it_splits_txt_values_into_strings_of_at_most_255_bytes(length: int) -> None:
    value = ("v=DKIM1; k=rsa; p=" + "A" * 1000)[:length]
    parts = split_txt_strings(value)
    assert "".join(parts) == value
    assert all(len(p.encode()) <= 255 for p in parts)
    assert all(len(p) == 255 for p in parts[:-1])


def test_it_splits_a_2048_bit_record_in_two(tmp_path: Path) -> None:
    key = KeyStore(tmp_path / "keys", None).load_or_create("hotel.test", "sel", "rsa", 2048)
    parts = split_txt_strings(key.record)
    assert len(parts) == 2 and len(parts[0]) == 255
    assert "".join(parts) == key.record


def test_it_refuses_to_split_non_ascii() -> None:
    with pytest.raises(ValueError):
        split_txt_strings("v=DKIM1; n=日本")


def test_it_renders_the_zone_line_with_quoted_strings() -> None:
    value = "v=DKIM1; k=rsa; p=" + "B" * 400
    line = render_zone_line("yoyakuban202611._domainkey.hotel.jp", value)
    assert line.startswith('yoyakuban202611._domainkey.hotel.jp. IN TXT ( "v=DKIM1; k=rsa; p=')
    assert line.endswith('" )')
    inner = line[line.index("(") + 1 : line.rindex(")")]
    strings = re.findall(r'"((?:[^"\\]|\\.)*)"', inner)
    assert re.fullmatch(r'(\s*"[^"]*")+\s*', inner)  # nothing but quoted strings
    assert len(strings) == 2
    assert "".join(strings) == value
    assert max(len(s) for s in strings) <= 255
    # An already absolute name is not given a second dot.
    assert render_zone_line("a._domainkey.hotel.jp.", "x").startswith("a._domainkey.hotel.jp. IN")


def test_dkim_key_zone_line_matches_render(tmp_path: Path) -> None:
    key = DkimKey("hotel.jp", "s", "rsa", 2048, "QUJD")
    assert key.zone_line == 's._domainkey.hotel.jp. IN TXT ( "v=DKIM1; k=rsa; p=QUJD" )'


# --------------------------------------------------------------------------- store


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_it_stores_keys_with_private_modes(tmp_path: Path) -> None:
    old = os.umask(0o022)  # a permissive umask must not widen anything
    try:
        store = KeyStore(tmp_path / "keys", None)
        store.load_or_create("hotel.test", "sel", "rsa", 1024)
    finally:
        os.umask(old)
    path = store.path("hotel.test", "sel")
    assert path == tmp_path / "keys" / "hotel.test" / "sel.pem"
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    assert _mode(tmp_path / "keys") == 0o700
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    leftovers = [p.name for p in path.parent.iterdir() if ".tmp-" in p.name]
    assert leftovers == []


def test_it_tightens_an_existing_wide_directory(tmp_path: Path) -> None:
    (tmp_path / "keys" / "hotel.test").mkdir(parents=True, mode=0o755)
    os.chmod(tmp_path / "keys" / "hotel.test", 0o755)
    KeyStore(tmp_path / "keys", None).load_or_create("hotel.test", "sel", "ed25519", 0)
    assert _mode(tmp_path / "keys" / "hotel.test") == 0o700


def test_it_is_idempotent_per_domain_and_selector(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys", PASSPHRASE)
    first = store.load_or_create("hotel.test", "sel", "rsa", 1024)
    before = store.path("hotel.test", "sel").read_bytes()
    # A new process (a run after a crash before the DB commit) reuses the same key.
    again = KeyStore(tmp_path / "keys", PASSPHRASE).load_or_create("hotel.test", "sel", "rsa", 1024)
    assert again == first
    assert store.path("hotel.test", "sel").read_bytes() == before
    assert store.get("hotel.test", "sel") == first
    other = store.load_or_create("hotel.test", "sel2", "rsa", 1024)
    assert other.public_b64 != first.public_b64
    assert store.selectors("hotel.test") == ["sel", "sel2"]


def test_it_makes_one_key_when_two_threads_race(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys", None)
    results: list[DkimKey] = []
    threads = [
        threading.Thread(target=lambda: results.append(store.load_or_create("hotel.test", "s", "rsa", 2048)))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({r.public_b64 for r in results}) == 1


def test_it_refuses_an_algorithm_change_under_one_selector(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys", None)
    store.load_or_create("hotel.test", "sel", "rsa", 1024)
    with pytest.raises(KeyStoreError, match="already holds a rsa key"):
        store.load_or_create("hotel.test", "sel", "ed25519", 0)


def test_it_keeps_an_existing_key_of_another_size(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys", None)
    first = store.load_or_create("hotel.test", "sel", "rsa", 1024)
    assert store.load_or_create("hotel.test", "sel", "rsa", 2048) == first
    assert first.bits == 1024


@pytest.mark.parametrize("domain", ["../etc", "hotel.test/../x", "HOTEL.test", "localhost", ""])
def test_it_refuses_domains_that_could_escape_the_store(tmp_path: Path, domain: str) -> None:
    with pytest.raises(ValueError):
        KeyStore(tmp_path / "keys", None).load_or_create(domain, "sel", "rsa", 1024)


def test_it_refuses_unknown_algorithms_and_sizes(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys", None)
    with pytest.raises(ValueError):
        store.load_or_create("hotel.test", "sel", "dsa", 1024)
    with pytest.raises(ValueError):
        store.load_or_create("hotel.test", "sel", "rsa", 512)


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_it_encrypts_at_rest_and_round_trips(tmp_path: Path, algorithm: str) -> None:
    store = KeyStore(tmp_path / "keys", PASSPHRASE)
    key = store.load_or_create("hotel.test", "sel", algorithm, 1024)
    on_disk = store.path("hotel.test", "sel").read_bytes()
    assert on_disk.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    pem = store.private_pem("hotel.test", "sel")
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert pem not in on_disk
    private = serialization.load_pem_private_key(pem, password=None)
    again = serialization.load_pem_private_key(on_disk, password=PASSPHRASE.encode())
    assert private.private_numbers() == again.private_numbers() if algorithm == "rsa" else True
    assert store.algorithm_of("hotel.test", "sel") == algorithm
    assert store.get("hotel.test", "sel") == key


def test_it_reports_a_wrong_passphrase_without_secrets(tmp_path: Path) -> None:
    KeyStore(tmp_path / "keys", PASSPHRASE).load_or_create("hotel.test", "sel", "rsa", 1024)
    on_disk = (tmp_path / "keys" / "hotel.test" / "sel.pem").read_text()
    wrong = "not the passphrase"
    with pytest.raises(KeyPassphraseError) as info:
        KeyStore(tmp_path / "keys", wrong).private_pem("hotel.test", "sel")
    message = str(info.value)
    assert "passphrase does not decrypt" in message and "hotel.test" in message
    for secret in (wrong, PASSPHRASE, "BEGIN", on_disk.splitlines()[1][:20]):
        assert secret not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_it_reports_a_missing_passphrase_clearly(tmp_path: Path) -> None:
    KeyStore(tmp_path / "keys", PASSPHRASE).load_or_create("hotel.test", "sel", "ed25519", 0)
    with pytest.raises(KeyPassphraseError, match="encrypted and no passphrase is configured"):
        KeyStore(tmp_path / "keys", None).get("hotel.test", "sel")


def test_it_reads_a_key_stored_before_a_passphrase_was_set(tmp_path: Path) -> None:
    key = KeyStore(tmp_path / "keys", None).load_or_create("hotel.test", "sel", "rsa", 1024)
    assert KeyStore(tmp_path / "keys", PASSPHRASE).get("hotel.test", "sel") == key


def test_it_reports_a_corrupt_file_without_its_contents(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys", None)
    store.load_or_create("hotel.test", "sel", "rsa", 1024)
    path = store.path("hotel.test", "sel")
    garbage = b"-----BEGIN PRIVATE KEY-----\nSECRETSECRETSECRET\n-----END PRIVATE KEY-----\n"
    path.write_bytes(garbage)
    with pytest.raises(KeyStoreError) as info:
        store.private_pem("hotel.test", "sel")
    assert "SECRET" not in str(info.value) and "corrupt" in str(info.value)


def test_it_has_no_key_for_unknown_selectors(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys", None)
    assert store.get("hotel.test", "nope") is None
    assert store.selectors("hotel.test") == []
    with pytest.raises(KeyStoreError, match="no private key stored"):
        store.private_pem("hotel.test", "nope")


def test_repr_hides_the_passphrase(tmp_path: Path) -> None:
    assert PASSPHRASE not in repr(KeyStore(tmp_path, PASSPHRASE))
