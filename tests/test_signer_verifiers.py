"""Independent verifiers accept what the signer makes, through a real DNS server.

The record is published in the real BIND of tests/servers.py (127.0.0.1 only), then:
Perl's Mail::DKIM verifies a message from ``dkimbot sign`` (bot.signer.sign_filter),
OpenDKIM's ``opendkim-testkey`` accepts the installed KeyTable through an unbound
resolver configuration forwarding to that BIND, and dkimpy verifies the Ed25519
signature through a dnsfunc that queries the BIND with dnspython. A missing binary is
a failure, not a skip: CI installs them.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import dkim
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from bot.config import Config
from bot.adapters.keys import DkimKey, KeyStore, ed25519_selector, split_txt_strings
from bot.adapters.signer import install_key, prove_signing, sign_filter

pytestmark = pytest.mark.servers

ZONE = "verify-signer.test"
SEL = "yoyakuban202611"
MESSAGE = (
    b"From: Hotel Verify <info@verify-signer.test>\r\n"
    b"To: guest@example.test\r\n"
    b"Subject: booking confirmed\r\n"
    b"Date: Thu, 05 Nov 2026 09:30:00 +0900\r\n"
    b"Message-ID: <verify-1@verify-signer.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=us-ascii\r\n"
    b"\r\n"
    b"Your booking is confirmed.\r\n"
)

PERL_VERIFIER = r"""
use strict;
use warnings;
use Mail::DKIM::Verifier;
use Net::DNS::Resolver;
# Only the test server: never the machine's resolver.
my $res = Net::DNS::Resolver->new(nameservers => ['127.0.0.1'], port => $ENV{DKIM_DNS_PORT},
                                  recurse => 0, udp_timeout => 5, tcp_timeout => 5, retry => 1);
Mail::DKIM::DNS::resolver($res);
my $v = Mail::DKIM::Verifier->new();
binmode STDIN;
while (my $line = <STDIN>) {
    $line =~ s/\r?\n\z/\r\n/;
    $v->PRINT($line);
}
$v->CLOSE();
foreach my $sig ($v->signatures) {
    printf "%s %s %s %s\n", $sig->algorithm, $sig->selector, $sig->result, ($sig->result_detail // '');
}
printf "overall %s\n", $v->result;
"""


def _need(binary: str, package: str) -> str:
    path = shutil.which(binary, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if path is None:
        pytest.fail(f"{binary} is missing: apt-get install -y {package}", pytrace=False)
    return path


def _need_perl_module(module: str, package: str) -> None:
    perl = _need("perl", "perl")
    if subprocess.run([perl, f"-M{module}", "-e", "1"], capture_output=True).returncode != 0:
        pytest.fail(f"Perl module {module} is missing: apt-get install -y {package}", pytrace=False)


@pytest.fixture(scope="module")
def published(bind, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A domain with an RSA-2048 and an Ed25519 key, both installed and published in BIND."""
    root = tmp_path_factory.mktemp("signer-verifiers")
    cfg = Config(state_dir=root / "state")
    store = KeyStore(root / "state" / "keys", "a passphrase")
    bind.add_zone(ZONE)
    keys: list[DkimKey] = []
    for selector, algorithm, bits in ((SEL, "rsa", 2048), (ed25519_selector(SEL), "ed25519", 0)):
        key = store.load_or_create(ZONE, selector, algorithm, bits)
        install_key(cfg, key, store.private_pem(ZONE, selector))
        # As a facility would publish it: one record, the value in ≤255-byte strings.
        bind.update(ZONE, key.host_label, "TXT", [split_txt_strings(key.record)])
        keys.append(key)
    return {"cfg": cfg, "store": store, "rsa": keys[0], "ed25519": keys[1], "root": root}


def bind_dnsfunc(bind):
    """dkimpy's dnsfunc asking only the test BIND (127.0.0.1) with dnspython."""

    def dnsfunc(name: bytes | str, timeout: float = 5) -> bytes:
        qname = name.decode() if isinstance(name, bytes) else name
        response = dns.query.udp(dns.message.make_query(qname, "TXT"), "127.0.0.1", port=bind.port,
                                 timeout=timeout)
        if response.rcode() != dns.rcode.NOERROR:
            return b""
        for rrset in response.answer:
            if rrset.rdtype == dns.rdatatype.TXT:
                return b"".join(next(iter(rrset)).strings)
        return b""

    return dnsfunc


def _signed(cfg: Config) -> bytes:
    out, err = io.BytesIO(), io.StringIO()
    assert sign_filter(cfg, io.BytesIO(MESSAGE), out, err) == 0, err.getvalue()
    assert err.getvalue() == ""
    return out.getvalue()


def test_the_published_record_is_served_in_two_strings(bind, published) -> None:
    key: DkimKey = published["rsa"]  # type: ignore[assignment]
    answer = bind.query(key.fqdn + ".", "TXT")
    strings = next(iter(answer.answer[0])).strings
    assert len(strings) == 2 and b"".join(strings).decode() == key.record


def test_perl_mail_dkim_verifies_the_sign_filter_output(bind, published) -> None:
    _need_perl_module("Mail::DKIM::Verifier", "libmail-dkim-perl")
    _need_perl_module("Net::DNS::Resolver", "libnet-dns-perl")
    script = Path(published["root"]) / "verify.pl"  # type: ignore[arg-type]
    script.write_text(PERL_VERIFIER)
    env = {**os.environ, "DKIM_DNS_PORT": str(bind.port),
           # Belt and braces: any resolver Net::DNS makes on its own also asks only BIND.
           "RES_NAMESERVERS": "127.0.0.1", "RES_OPTIONS": f"port:{bind.port}"}
    result = subprocess.run(["perl", str(script)], input=_signed(published["cfg"]),  # type: ignore[arg-type]
                            capture_output=True, env=env, timeout=60)
    report = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    lines = dict(line.split(" ", 1) for line in report.splitlines())
    assert lines["overall"].startswith("pass"), report
    # The RSA signature itself passes (Perl needs CryptX for Ed25519; dkimpy covers that).
    assert lines["rsa-sha256"].split()[:2] == [SEL, "pass"], report


def _unbound_conf(directory: Path, port: int) -> Path:
    conf = directory / "unbound.conf"
    conf.write_text(f"""server:
    do-not-query-localhost: no
    # unbound answers .test itself (RFC 6761) unless told not to.
    local-zone: "test." nodefault
    domain-insecure: "test."
    username: ""
    chroot: ""
    directory: "{directory}"
    module-config: "iterator"
forward-zone:
    name: "."
    forward-addr: 127.0.0.1@{port}
""")
    return conf


def test_opendkim_testkey_accepts_the_installed_keys(bind, published, tmp_path: Path) -> None:
    testkey = _need("opendkim-testkey", "opendkim-tools")
    cfg: Config = published["cfg"]  # type: ignore[assignment]
    rsa_key: DkimKey = published["rsa"]  # type: ignore[assignment]
    conf = tmp_path / "opendkim.conf"
    conf.write_text(
        f"ResolverConfiguration {_unbound_conf(tmp_path, bind.port)}\n"
        f"KeyTable file:{cfg.state_path(cfg.signer.keytable)}\n"
        f"SigningTable refile:{cfg.state_path(cfg.signer.signingtable)}\n"
    )
    # The key as the KeyTable names it: the very file OpenDKIM would sign with.
    # (opendkim-testkey 2.11 compares RSA keys only: "EVP_PKEY_get1_RSA() failed" for
    # Ed25519, whose file it does load; dkimpy checks the Ed25519 key below.)
    keytable = cfg.state_path(cfg.signer.keytable).read_text().splitlines()
    entry = next(line for line in keytable if line.startswith(rsa_key.fqdn + " "))
    domain, selector, keyfile = entry.split(None, 1)[1].split(":", 2)
    result = subprocess.run(
        [testkey, "-x", str(conf), "-d", domain, "-s", selector, "-k", keyfile, "-vvv"],
        capture_output=True, text=True, timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "key OK" in output, output


def test_opendkim_testkey_rejects_a_key_that_is_not_published(bind, published, tmp_path: Path) -> None:
    """The check above is real: a key whose record differs is refused."""
    testkey = _need("opendkim-testkey", "opendkim-tools")
    store = KeyStore(tmp_path / "keys", None)
    other = store.load_or_create(ZONE, SEL, "rsa", 2048)  # same name, a key never published
    keyfile = tmp_path / "other.pem"
    keyfile.write_bytes(store.private_pem(ZONE, SEL))
    keyfile.chmod(0o600)
    conf = tmp_path / "opendkim.conf"
    conf.write_text(f"ResolverConfiguration {_unbound_conf(tmp_path, bind.port)}\n")
    result = subprocess.run([testkey, "-x", str(conf), "-d", ZONE, "-s", SEL, "-k", str(keyfile), "-vvv"],
                            capture_output=True, text=True, timeout=60)
    assert other.public_b64 != published["rsa"].public_b64  # type: ignore[attr-defined]
    assert result.returncode != 0 and "key OK" not in result.stdout + result.stderr


def test_dkimpy_verifies_both_signatures_through_bind(bind, published) -> None:
    signed = _signed(published["cfg"])  # type: ignore[arg-type]
    verifier = dkim.DKIM(signed)
    dnsfunc = bind_dnsfunc(bind)
    headers = [v for n, v in dkim.rfc822_parse(signed)[0] if n.lower() == b"dkim-signature"]
    assert b"a=rsa-sha256" in headers[0] and b"a=ed25519-sha256" in headers[1]
    assert verifier.verify(idx=0, dnsfunc=dnsfunc) is True
    assert verifier.verify(idx=1, dnsfunc=dnsfunc) is True  # Ed25519, RFC 8463


@pytest.mark.parametrize("which", ["rsa", "ed25519"])
def test_the_probe_proves_signing_through_bind(bind, published, which: str) -> None:
    key: DkimKey = published[which]  # type: ignore[assignment]
    store: KeyStore = published["store"]  # type: ignore[assignment]
    ok, why = prove_signing(published["cfg"], key, store.private_pem(ZONE, key.selector),  # type: ignore[arg-type]
                            bind_dnsfunc(bind))
    assert ok, why


def test_the_probe_fails_when_bind_serves_a_truncated_record(bind, published) -> None:
    key: DkimKey = published["rsa"]  # type: ignore[assignment]
    store: KeyStore = published["store"]  # type: ignore[assignment]
    name = "cut._domainkey"
    bind.update(ZONE, name, "TXT", [key.record[:255]])  # a control panel that cut it at 255
    cut = DkimKey(ZONE, "cut", "rsa", 2048, key.public_b64)
    ok, why = prove_signing(published["cfg"], cut, store.private_pem(ZONE, SEL), bind_dnsfunc(bind))  # type: ignore[arg-type]
    assert not ok and "different public key" in why
