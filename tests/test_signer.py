"""The signer: OpenDKIM tables, signing with dkimpy, the sign filter, the probe (pure, no DNS)."""

from __future__ import annotations

import io
import stat
from pathlib import Path

import dkim
import pytest

from bot.config import Config
from bot.adapters.keys import DkimKey, KeyStore, ed25519_selector
from bot.adapters.signer import (
    EX_TEMPFAIL,
    SignerInstallError,
    UnsignableMessage,
    install_key,
    installed_selectors,
    key_file_path,
    prove_signing,
    sign_filter,
    sign_message,
    uninstall_key,
)

DOMAIN = "hotel.test"
SEL = "yoyakuban202611"
MESSAGE = (
    b"From: =?UTF-8?B?5pel5pys?= <info@hotel.test>\r\n"
    b"To: guest@example.test\r\n"
    b"Subject: booking 1234\r\n"
    b"Date: Thu, 05 Nov 2026 09:30:00 +0900\r\n"
    b"Message-ID: <1234@hotel.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"X-Mailer: yoyakuban\r\n"
    b"\r\n"
    b"Your booking is confirmed.\r\n"
)


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return Config(state_dir=tmp_path / "state")


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    return KeyStore(tmp_path / "state" / "keys", "pass phrase")


def _tables(cfg: Config) -> tuple[str, str]:
    return (
        cfg.state_path(cfg.signer.keytable).read_text(),
        cfg.state_path(cfg.signer.signingtable).read_text(),
    )


def _install(cfg: Config, store: KeyStore, domain: str = DOMAIN, selector: str = SEL,
             algorithm: str = "rsa", bits: int = 1024) -> DkimKey:
    key = store.load_or_create(domain, selector, algorithm, bits)
    install_key(cfg, key, store.private_pem(domain, selector))
    return key


class FakeDns:
    """dkimpy's dnsfunc over a dict: name (with trailing dot) → TXT value."""

    def __init__(self, *keys: DkimKey) -> None:
        self.records = {(k.fqdn + ".").encode(): k.record.encode() for k in keys}
        self.asked: list[bytes] = []

    def __call__(self, name: bytes, timeout: int = 5) -> bytes | None:
        self.asked.append(name)
        return self.records.get(name)


def _verify_all(message: bytes, dns: FakeDns) -> list[bool]:
    verifier = dkim.DKIM(message)
    count = sum(1 for name, _ in dkim.rfc822_parse(message)[0] if name.lower() == b"dkim-signature")
    results = []
    for i in range(count):
        try:
            results.append(bool(verifier.verify(idx=i, dnsfunc=dns)))
        except dkim.DKIMException:  # dkimpy raises for a body hash mismatch
            results.append(False)
    return results


# --------------------------------------------------------------------------- install


def test_it_writes_opendkim_tables_and_a_private_key_file(cfg: Config, store: KeyStore) -> None:
    _install(cfg, store)
    path = key_file_path(cfg, DOMAIN, SEL)
    keytable, signingtable = _tables(cfg)
    assert keytable == f"{SEL}._domainkey.{DOMAIN} {DOMAIN}:{SEL}:{path}\n"
    assert signingtable == f"*@{DOMAIN} {SEL}._domainkey.{DOMAIN}\n"
    assert path.is_absolute()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    # Unencrypted for OpenDKIM, and the same key as in the store.
    assert path.read_bytes() == store.private_pem(DOMAIN, SEL)
    assert installed_selectors(cfg, DOMAIN) == [SEL]
    assert installed_selectors(cfg, "other.test") == []


def test_it_is_idempotent_and_keeps_other_domains(cfg: Config, store: KeyStore) -> None:
    kt = cfg.state_path(cfg.signer.keytable)
    st = cfg.state_path(cfg.signer.signingtable)
    kt.parent.mkdir(parents=True)
    kt.write_text("# managed by hand\nold._domainkey.other.test other.test:old:/etc/keys/old\n")
    st.write_text("# signing\n*@other.test old._domainkey.other.test\n")
    _install(cfg, store)
    first = _tables(cfg)
    _install(cfg, store)
    assert _tables(cfg) == first
    keytable, signingtable = first
    assert keytable.startswith("# managed by hand\nold._domainkey.other.test other.test:old:/etc/keys/old\n")
    assert signingtable.startswith("# signing\n*@other.test old._domainkey.other.test\n")
    assert keytable.count(DOMAIN + ":") == 1 and signingtable.count(f"*@{DOMAIN} ") == 1
    assert installed_selectors(cfg, "other.test") == ["old"]
    leftovers = [p.name for p in kt.parent.rglob("*") if ".tmp-" in p.name]
    assert leftovers == []


def test_it_installs_both_keys_for_dual_signing(cfg: Config, store: KeyStore) -> None:
    _install(cfg, store)
    _install(cfg, store, selector=ed25519_selector(SEL), algorithm="ed25519")
    assert installed_selectors(cfg, DOMAIN) == [SEL, ed25519_selector(SEL)]
    _, signingtable = _tables(cfg)
    assert signingtable.splitlines() == [
        f"*@{DOMAIN} {SEL}._domainkey.{DOMAIN}",
        f"*@{DOMAIN} {ed25519_selector(SEL)}._domainkey.{DOMAIN}",
    ]


def test_it_runs_the_reload_command(cfg: Config, store: KeyStore, tmp_path: Path) -> None:
    marker = tmp_path / "reloaded"
    cfg.signer.reload_command = f"echo reloaded >> {marker}"
    _install(cfg, store)
    assert marker.read_text() == "reloaded\n"


def test_a_failing_reload_restores_the_previous_tables(cfg: Config, store: KeyStore) -> None:
    _install(cfg, store)
    before = _tables(cfg)
    new = store.load_or_create("new.test", "s1", "rsa", 1024)
    pem = store.private_pem("new.test", "s1")
    cfg.signer.reload_command = "echo 'opendkim: config error' >&2; exit 3"
    with pytest.raises(SignerInstallError) as info:
        install_key(cfg, new, pem)
    assert "status 3" in str(info.value) and "config error" in str(info.value)
    assert b"PRIVATE" not in str(info.value).encode() and new.public_b64[:30] not in str(info.value)
    assert _tables(cfg) == before
    assert not key_file_path(cfg, "new.test", "s1").exists()
    assert installed_selectors(cfg, "new.test") == []


def test_a_failing_first_install_leaves_no_tables(cfg: Config, store: KeyStore) -> None:
    cfg.signer.reload_command = "false"
    key = store.load_or_create(DOMAIN, SEL, "rsa", 1024)
    with pytest.raises(SignerInstallError):
        install_key(cfg, key, store.private_pem(DOMAIN, SEL))
    assert not cfg.state_path(cfg.signer.keytable).exists()
    assert not cfg.state_path(cfg.signer.signingtable).exists()
    assert installed_selectors(cfg, DOMAIN) == []


def test_a_hanging_reload_times_out_and_restores(cfg: Config, store: KeyStore) -> None:
    cfg.signer.reload_command = "sleep 30"
    cfg.signer.reload_timeout = 0.5
    key = store.load_or_create(DOMAIN, SEL, "rsa", 1024)
    with pytest.raises(SignerInstallError, match="timed out"):
        install_key(cfg, key, store.private_pem(DOMAIN, SEL))
    assert installed_selectors(cfg, DOMAIN) == []


def test_it_refuses_a_private_key_that_is_not_the_records(cfg: Config, store: KeyStore) -> None:
    key = store.load_or_create(DOMAIN, SEL, "rsa", 1024)
    store.load_or_create(DOMAIN, "other", "rsa", 1024)
    with pytest.raises(SignerInstallError, match="does not match"):
        install_key(cfg, key, store.private_pem(DOMAIN, "other"))


def test_rotation_retires_the_old_selector_in_one_step(cfg: Config, store: KeyStore) -> None:
    _install(cfg, store, selector="old")
    new = store.load_or_create(DOMAIN, "new", "rsa", 1024)
    install_key(cfg, new, store.private_pem(DOMAIN, "new"), retire=["old"])
    assert installed_selectors(cfg, DOMAIN) == ["new"]
    assert "old._domainkey" not in "".join(_tables(cfg))
    assert not key_file_path(cfg, DOMAIN, "old").exists()


def test_uninstall_removes_the_entries_and_the_key_file(cfg: Config, store: KeyStore) -> None:
    _install(cfg, store)
    _install(cfg, store, domain="other.test")
    assert uninstall_key(cfg, DOMAIN, SEL) is True
    assert installed_selectors(cfg, DOMAIN) == []
    assert installed_selectors(cfg, "other.test") == [SEL]
    assert not key_file_path(cfg, DOMAIN, SEL).exists()
    assert uninstall_key(cfg, DOMAIN, SEL) is False


def test_uninstall_with_a_failing_reload_keeps_signing(cfg: Config, store: KeyStore) -> None:
    _install(cfg, store)
    before = _tables(cfg)
    cfg.signer.reload_command = "exit 1"
    with pytest.raises(SignerInstallError):
        uninstall_key(cfg, DOMAIN, SEL)
    assert _tables(cfg) == before
    assert key_file_path(cfg, DOMAIN, SEL).exists()


# --------------------------------------------------------------------------- signing


def test_it_signs_relaxed_with_from_oversigned_and_verifies(cfg: Config, store: KeyStore) -> None:
    key = _install(cfg, store, bits=2048)
    signed = sign_message(cfg, MESSAGE)
    assert signed.endswith(MESSAGE)
    dns = FakeDns(key)
    assert _verify_all(signed, dns) == [True]
    assert dns.asked == [(key.fqdn + ".").encode()]
    header = dkim.rfc822_parse(signed)[0][0][1].replace(b"\r\n", b"")
    tags = dkim.util.parse_tag_value(header)
    assert tags[b"c"] == b"relaxed/relaxed" and tags[b"d"] == DOMAIN.encode() and tags[b"s"] == SEL.encode()
    signed_headers = [h.strip() for h in tags[b"h"].split(b":")]
    assert signed_headers.count(b"from") == 2
    for name in (b"to", b"subject", b"date", b"message-id", b"mime-version", b"content-type"):
        assert name in signed_headers
    assert b"x-mailer" not in signed_headers
    # Oversigning: a second From added in transit breaks the signature.
    assert _verify_all(b"From: evil@attacker.test\r\n" + signed, dns) == [False]
    # Relaxed body canonicalization tolerates trailing whitespace changes, not content.
    assert _verify_all(signed.replace(b"confirmed.", b"cancelled."), dns) == [False]


def test_dual_signing_gives_two_signatures_that_verify(cfg: Config, store: KeyStore) -> None:
    rsa_key = _install(cfg, store)
    ed_key = _install(cfg, store, selector=ed25519_selector(SEL), algorithm="ed25519")
    signed = sign_message(cfg, MESSAGE)
    headers = dkim.rfc822_parse(signed)[0]
    assert [n for n, _ in headers[:2]] == [b"DKIM-Signature", b"DKIM-Signature"]
    assert b"a=rsa-sha256" in headers[0][1]  # RSA first: verifiers that read only one
    assert b"a=ed25519-sha256" in headers[1][1]
    assert _verify_all(signed, FakeDns(rsa_key, ed_key)) == [True, True]
    # Each verifies on its own key only.
    assert _verify_all(signed, FakeDns(ed_key)) == [False, True]


def test_it_passes_unknown_domains_through_unchanged(cfg: Config, store: KeyStore) -> None:
    _install(cfg, store)
    other = MESSAGE.replace(b"info@hotel.test", b"info@ryokan.test")
    assert sign_message(cfg, other) == other
    no_from = b"To: a@b.test\r\nSubject: x\r\n\r\nbody\r\n"
    assert sign_message(cfg, no_from) == no_from


def test_it_matches_the_from_domain_case_insensitively(cfg: Config, store: KeyStore) -> None:
    key = _install(cfg, store)
    upper = MESSAGE.replace(b"info@hotel.test", b"Info@HOTEL.Test")
    assert _verify_all(sign_message(cfg, upper), FakeDns(key)) == [True]


def test_it_keeps_lf_line_endings(cfg: Config, store: KeyStore) -> None:
    key = _install(cfg, store)
    lf = MESSAGE.replace(b"\r\n", b"\n")
    signed = sign_message(cfg, lf)
    assert b"\r" not in signed
    assert _verify_all(signed, FakeDns(key)) == [True]


def test_several_from_domains_are_unsignable(cfg: Config, store: KeyStore) -> None:
    _install(cfg, store)
    with pytest.raises(UnsignableMessage):
        sign_message(cfg, b"From: a@hotel.test, b@other.test\r\nSender: a@hotel.test\r\n\r\nx\r\n")
    with pytest.raises(UnsignableMessage):
        sign_message(cfg, b"From: a@hotel.test\r\nFrom: b@hotel.test\r\n\r\nx\r\n")


# --------------------------------------------------------------------------- filter


def _filter(cfg: Config, raw: bytes) -> tuple[int, bytes, str]:
    out, err = io.BytesIO(), io.StringIO()
    code = sign_filter(cfg, io.BytesIO(raw), out, err)
    return code, out.getvalue(), err.getvalue()


def test_the_filter_signs(cfg: Config, store: KeyStore) -> None:
    key = _install(cfg, store)
    code, out, err = _filter(cfg, MESSAGE)
    assert code == 0 and err == ""
    assert _verify_all(out, FakeDns(key)) == [True]


def test_the_filter_passes_through_with_a_note(cfg: Config) -> None:
    code, out, err = _filter(cfg, MESSAGE)
    assert (code, out) == (0, MESSAGE)
    assert err.count("\n") == 1 and "no DKIM key installed for hotel.test" in err


def test_the_filter_passes_malformed_messages_through(cfg: Config, store: KeyStore) -> None:
    _install(cfg, store)
    bad = b"From: info@hotel.test\r\nthis is not a header\r\n\r\nbody\r\n"
    code, out, err = _filter(cfg, bad)
    assert (code, out) == (0, bad)
    assert "malformed" in err and err.count("\n") == 1


def test_the_filter_tempfails_when_an_installed_key_is_unusable(cfg: Config, store: KeyStore) -> None:
    _install(cfg, store)
    path = key_file_path(cfg, DOMAIN, SEL)
    secret = path.read_bytes()
    path.write_bytes(b"damaged")
    code, out, err = _filter(cfg, MESSAGE)
    assert code == EX_TEMPFAIL and out == b""
    assert "hotel.test" in err and "damaged" not in err
    path.unlink()
    code, out, err = _filter(cfg, MESSAGE)
    assert code == EX_TEMPFAIL and out == b"" and secret.decode()[40:80] not in err


# --------------------------------------------------------------------------- proof


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_the_probe_verifies_against_the_record(cfg: Config, store: KeyStore, algorithm: str) -> None:
    key = _install(cfg, store, algorithm=algorithm)
    ok, why = prove_signing(cfg, key, store.private_pem(DOMAIN, SEL), FakeDns(key))
    assert ok, why
    assert "verified" in why


def test_the_probe_fails_when_dns_serves_another_key(cfg: Config, store: KeyStore) -> None:
    key = _install(cfg, store)
    other = store.load_or_create(DOMAIN, "x", "rsa", 1024)
    wrong = FakeDns()
    wrong.records[(key.fqdn + ".").encode()] = other.record.encode()
    ok, why = prove_signing(cfg, key, store.private_pem(DOMAIN, SEL), wrong)
    assert not ok and "different public key" in why


def test_the_probe_fails_without_a_record(cfg: Config, store: KeyStore) -> None:
    key = _install(cfg, store)
    ok, why = prove_signing(cfg, key, store.private_pem(DOMAIN, SEL), FakeDns())
    assert not ok and "no DKIM record" in why


def test_the_probe_reports_a_dns_failure(cfg: Config, store: KeyStore) -> None:
    key = _install(cfg, store)

    def broken(name: bytes, timeout: int = 5) -> bytes:
        raise TimeoutError("no answer")

    ok, why = prove_signing(cfg, key, store.private_pem(DOMAIN, SEL), broken)
    assert not ok and "DNS lookup" in why and "TimeoutError" in why


def test_the_probe_notices_a_different_installed_key_file(cfg: Config, store: KeyStore) -> None:
    key = _install(cfg, store)
    store.load_or_create(DOMAIN, "x", "rsa", 1024)
    key_file_path(cfg, DOMAIN, SEL).write_bytes(store.private_pem(DOMAIN, "x"))
    ok, why = prove_signing(cfg, key, store.private_pem(DOMAIN, SEL), FakeDns(key))
    assert not ok and "installed in the signer" in why


def test_the_probe_explanation_never_contains_key_material(cfg: Config, store: KeyStore) -> None:
    key = _install(cfg, store)
    pem = store.private_pem(DOMAIN, SEL)
    body = b"".join(pem.splitlines()[1:-1]).decode()
    for dns in (FakeDns(key), FakeDns()):
        _, why = prove_signing(cfg, key, pem, dns)
        assert body[:24] not in why and "PRIVATE" not in why
