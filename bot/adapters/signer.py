"""The signer: installing keys for OpenDKIM, signing outgoing mail, proving it verifies.

A mistake here silently breaks every booking mail of a hotel, so every change is
all-or-nothing: key file and tables are written atomically (temp file, fsync, rename),
the reload command is run, and if it fails the previous files are put back.

The tables are OpenDKIM's own format (``KeyTable`` and a ``refile:`` ``SigningTable``),
so the same files drive OpenDKIM and :func:`sign_message` (dkimpy), and the two can
never disagree about which key signs which domain:

    KeyTable:      <selector>._domainkey.<domain>  <domain>:<selector>:<key file>
    SigningTable:  *@<domain>  <selector>._domainkey.<domain>

With dual signing (RSA + Ed25519) a domain has two SigningTable lines; OpenDKIM then
needs ``MultipleSignatures yes`` to apply both. Key files in the signer's directory are
unencrypted PKCS#8 PEM (OpenDKIM must read them), mode ``[signer] key_mode`` (0600).

``dkimbot sign`` (:func:`sign_filter`) is a sendmail-style filter; its exit codes:

- 0: the message is on stdout, signed; or unchanged when its From domain has no
  installed key, it has no From address, or it cannot be signed as written (several
  From domains, a malformed header). Such a message would go out exactly as it would
  without the filter, and refusing it would turn a formatting quirk into a lost
  booking mail; a one-line note on stderr says why it was not signed.
- 75 (EX_TEMPFAIL): a key is installed for the domain but could not be used (file
  unreadable, damaged). Nothing is written to stdout: the mailer must keep the message
  and retry, because sending it unsigned would fail DMARC for a domain that relies on
  the signature.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import grp
import os
import pwd
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TextIO

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from bot.adapters.dkimsign import sign_rsa
from bot.adapters.keys import (
    DkimKey,
    KeyStoreError,
    PrivateKey,
    dkim_key_from_private,
    ensure_private_dir,
    file_lock,
    fsync_dir,
    load_private_pem,
    validate_domain,
    validate_selector,
    write_file_atomic,
)
from bot.config import Config, child_environment
from bot.core.signertables import (
    InstalledKey,
    keyname_for,
    parse_keytable,
    signing_keys,
    updated_keytable,
    updated_signingtable,
)

EX_TEMPFAIL = 75

# Signed when present (RFC 6376 §5.4.1's list of what a receiver shows or threads on).
SIGNED_HEADERS = (
    "From", "To", "Cc", "Subject", "Date", "Message-ID", "Reply-To", "In-Reply-To",
    "References", "MIME-Version", "Content-Type", "Content-Transfer-Encoding",
)
# Listed once more than they occur ("oversigned", RFC 6376 §8.15): a From added in
# transit then breaks the signature instead of being displayed as the sender.
OVERSIGNED_HEADERS = ("From",)

PROBE_LOCALPART = "dkimbot-probe"

DnsFunc = Callable[..., bytes | None]


class SignerError(Exception):
    """Signing failed on our side (key file missing or damaged); never contains key material."""


class SignerInstallError(SignerError):
    """Installing or removing a key failed; the previous tables are in place again."""


class UnsignableMessage(SignerError):
    """The message cannot be signed as written (several From domains, malformed header)."""


@dataclass
class SignResult:
    """What :func:`sign_report` did, for the filter's note on stderr."""

    message: bytes
    domain: str | None
    selectors: list[str] = field(default_factory=list)
    note: str | None = None  # why it was not signed, when it was not


# --------------------------------------------------------------------------- tables


def keys_dir(cfg: Config) -> Path:
    return cfg.state_path(cfg.signer.keys_dir)


def key_file_path(cfg: Config, domain: str, selector: str) -> Path:
    """Absolute, because OpenDKIM resolves KeyTable paths from its own working dir."""
    name = f"{validate_selector(selector)}._domainkey.{validate_domain(domain)}.private"
    return (keys_dir(cfg) / name).absolute()


def _table_paths(cfg: Config) -> tuple[Path, Path]:
    return cfg.state_path(cfg.signer.keytable), cfg.state_path(cfg.signer.signingtable)


def _read_optional(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def installed_keys(cfg: Config, domain: str) -> list[InstalledKey]:
    """The keys OpenDKIM would sign ``domain``'s mail with, in SigningTable order."""
    keytable_path, signingtable_path = _table_paths(cfg)
    keytable = (_read_optional(keytable_path) or b"").decode("utf-8", "replace")
    signing = (_read_optional(signingtable_path) or b"").decode("utf-8", "replace")
    return signing_keys(keytable, signing, domain)


def installed_selectors(cfg: Config, domain: str) -> list[str]:
    return [k.selector for k in installed_keys(cfg, domain)]


# --------------------------------------------------------------------------- install


def key_owner_ids(cfg: Config) -> tuple[int, int] | None:
    """(uid, gid) for ``[signer] key_owner`` / ``key_group`` (-1: leave as is); None: neither set."""
    owner, group = cfg.signer.key_owner.strip(), cfg.signer.key_group.strip()
    if not owner and not group:
        return None
    try:
        uid = -1 if not owner else int(owner) if owner.isdigit() else pwd.getpwnam(owner).pw_uid
        gid = -1 if not group else int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise SignerInstallError(
            f"[signer] key_owner {owner!r} / key_group {group!r}: no such user or group"
        ) from None
    return uid, gid


def _prepare_dirs(cfg: Config, owner: tuple[int, int] | None) -> None:
    # The key directory holds unencrypted keys: 0700, or 0750 when the signer reads it
    # through a group. Table directories get the same treatment only when we create them.
    mode = 0o750 if cfg.signer.key_group.strip() else 0o700
    for table in _table_paths(cfg):
        if not table.parent.exists():
            ensure_private_dir(table.parent, mode)
    directory = keys_dir(cfg)
    ensure_private_dir(directory, mode)
    if owner is not None:
        os.chown(directory, owner[0], owner[1])


def place_key_files(cfg: Config, files: dict[str, bytes]) -> None:
    """Write key files (name → PEM) into ``keys_dir`` as ``install_key`` leaves them: the
    directory 0700/0750 and the files ``key_mode``, both owned by ``key_owner`` /
    ``key_group`` (``dkimbot restore``: a restored signer must be able to read them)."""
    owner = key_owner_ids(cfg)
    _prepare_dirs(cfg, owner)
    directory = keys_dir(cfg)
    for name, pem in files.items():
        write_file_atomic(directory / Path(name).name, pem, cfg.signer.key_mode, owner=owner)


def _write_table(path: Path, text: str) -> None:
    # Tables hold names and paths, no secret: keep their mode (OpenDKIM must read them).
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o644
    write_file_atomic(path, text.encode("utf-8"), mode)


def _restore(path: Path, previous: bytes | None, mode: int = 0o644) -> None:
    if previous is None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            fsync_dir(path.parent)
    else:
        write_file_atomic(path, previous, mode)


_SECRETISH = re.compile(r"PRIVATE KEY|[A-Za-z0-9+/=]{40,}")


def run_reload(cfg: Config) -> None:
    """Run ``[signer] reload_command`` in a shell with a timeout; raise SignerInstallError."""
    command = cfg.signer.reload_command.strip()
    if not command:
        return
    timeout = cfg.signer.reload_timeout
    # Its own session, so a timeout kills the whole process group, not just the shell.
    proc = subprocess.Popen(
        command, shell=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, start_new_session=True, env=child_environment(),
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise SignerInstallError(f"the signer reload command timed out after {timeout:g} s") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in output.decode("utf-8", "replace").splitlines() if ln.strip()]
        # The command's own words help the operator; anything that looks like key data is cut.
        tail = "" if not lines else ": " + _SECRETISH.sub("[…]", lines[-1])[:200]
        raise SignerInstallError(f"the signer reload command exited with status {proc.returncode}{tail}")


def _check_pem_matches(key: DkimKey, private_pem: bytes) -> PrivateKey:
    what = f"{key.domain} selector {key.selector}"
    try:
        private = load_private_pem(private_pem, None, what=what)
    except KeyStoreError as exc:
        raise SignerInstallError(str(exc)) from None
    if dkim_key_from_private(key.domain, key.selector, private).public_b64 != key.public_b64:
        raise SignerInstallError(f"the private key given for {what} does not match its public record")
    return private


def install_key(cfg: Config, key: DkimKey, private_pem: bytes, *, retire: Iterable[str] = ()) -> None:
    """Install ``key`` for signing ``key.domain``'s mail, then reload the signer.

    Idempotent: installing the same key again rewrites nothing but still reloads (a run
    that crashed before its reload completes it). Other domains' lines and other
    selectors of this domain are kept; selectors in ``retire`` are removed in the same
    step (key rotation: the new key takes over in one reload). If the reload fails, the
    previous tables and key file are put back and SignerInstallError is raised.
    """
    domain, selector = validate_domain(key.domain), validate_selector(key.selector)
    private = _check_pem_matches(key, private_pem)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    retired = {keyname_for(domain, validate_selector(s)) for s in retire if s != selector}
    keytable_path, signingtable_path = _table_paths(cfg)
    owner = key_owner_ids(cfg)
    _prepare_dirs(cfg, owner)
    key_path = key_file_path(cfg, domain, selector)
    name = keyname_for(domain, selector)
    with file_lock(keytable_path.parent / ".dkimbot-signer.lock"):
        old_keytable = _read_optional(keytable_path)
        old_signing = _read_optional(signingtable_path)
        old_key = _read_optional(key_path)
        new_keytable = updated_keytable(
            (old_keytable or b"").decode("utf-8"), {name: f"{domain}:{selector}:{key_path}"}, retired
        )
        new_signing = updated_signingtable((old_signing or b"").decode("utf-8"), domain, [name], retired)
        try:
            if old_key != pem:
                write_file_atomic(key_path, pem, cfg.signer.key_mode, owner=owner)
            # KeyTable first: a SigningTable line must never name a key OpenDKIM lacks.
            if old_keytable is None or new_keytable.encode() != old_keytable:
                _write_table(keytable_path, new_keytable)
            if old_signing is None or new_signing.encode() != old_signing:
                _write_table(signingtable_path, new_signing)
            run_reload(cfg)
        except BaseException as exc:
            _rollback(cfg, keytable_path, old_keytable, signingtable_path, old_signing, key_path, old_key)
            if isinstance(exc, SignerInstallError):
                raise
            if isinstance(exc, OSError):
                raise SignerInstallError(f"installing the key for {domain} failed: {exc.strerror}") from None
            raise
        # Only after the reload: until then the running signer may still read these files.
        # (Parsed only when something retires: the whole table per install was ~8% of a
        # 5,000-case check pass's CPU with 250 installs, and grows with the installed keys.)
        old_table = parse_keytable((old_keytable or b"").decode("utf-8")) if retired else {}
        for gone in retired:
            entry = old_table.get(gone)
            if entry is not None and entry.path.parent == key_path.parent:
                with contextlib.suppress(FileNotFoundError):
                    entry.path.unlink()


def _rollback(
    cfg: Config, keytable_path: Path, old_keytable: bytes | None, signingtable_path: Path,
    old_signing: bytes | None, key_path: Path, old_key: bytes | None,
) -> None:
    # SigningTable first (the reverse of installing), so no moment names a missing key.
    _restore(signingtable_path, old_signing)
    _restore(keytable_path, old_keytable)
    _restore(key_path, old_key, cfg.signer.key_mode)


def uninstall_key(cfg: Config, domain: str, selector: str) -> bool:
    """Remove ``selector`` from the signer's tables, reload, then delete its key file.

    Returns False when it was not installed. On a reload failure the previous tables are
    restored and SignerInstallError is raised.
    """
    domain, selector = validate_domain(domain), validate_selector(selector)
    keytable_path, signingtable_path = _table_paths(cfg)
    name = keyname_for(domain, selector)
    if not keytable_path.parent.exists():
        return False
    with file_lock(keytable_path.parent / ".dkimbot-signer.lock"):
        old_keytable = _read_optional(keytable_path)
        old_signing = _read_optional(signingtable_path)
        entry = parse_keytable((old_keytable or b"").decode("utf-8")).get(name)
        new_signing = updated_signingtable((old_signing or b"").decode("utf-8"), domain, [], {name})
        new_keytable = updated_keytable((old_keytable or b"").decode("utf-8"), {}, {name})
        changed = (old_signing is not None and new_signing.encode() != old_signing) or (
            old_keytable is not None and new_keytable.encode() != old_keytable
        )
        if not changed:
            return False
        try:
            if old_signing is not None:
                _write_table(signingtable_path, new_signing)
            if old_keytable is not None:
                _write_table(keytable_path, new_keytable)
            run_reload(cfg)
        except BaseException as exc:
            _restore(keytable_path, old_keytable)
            _restore(signingtable_path, old_signing)
            if isinstance(exc, OSError):
                raise SignerInstallError(f"removing the key for {domain} failed: {exc.strerror}") from None
            raise
        if entry is not None and entry.path.parent == keys_dir(cfg).absolute():
            with contextlib.suppress(FileNotFoundError):
                entry.path.unlink()
        return True


# --------------------------------------------------------------------------- signing


def _linesep(raw: bytes) -> bytes:
    # The signature header is prepended as-is, so it must end lines like the message does
    # (a filter fed LF text by a local mailer must not hand back a mix).
    first = raw.find(b"\n")
    return b"\r\n" if first > 0 and raw[first - 1 : first] == b"\r" else b"\n" if first >= 0 else b"\r\n"


def parse_from_domain(headers: list[list[bytes]]) -> str | None:
    """The one domain of the From field(s); None when there is no From address.

    Raises UnsignableMessage when the From header names several domains or several
    From fields exist (RFC 5322 §3.6 allows exactly one; DMARC cannot evaluate more).
    """
    values = [v for n, v in headers if n.lower() == b"from"]
    if not values:
        return None
    if len(values) > 1:
        raise UnsignableMessage("the message has several From header fields")
    text = re.sub(r"\r?\n", "", values[0].decode("utf-8", "replace"))
    domains = set()
    for _, addr in email.utils.getaddresses([text]):
        if "@" in addr:
            domain = addr.rpartition("@")[2].strip().rstrip(".").lower()
            try:
                domain = domain.encode("idna").decode("ascii")
            except UnicodeError:
                raise UnsignableMessage("the From domain is not a valid domain name") from None
            domains.add(domain)
    if len(domains) > 1:
        raise UnsignableMessage("the From header names several domains")
    return domains.pop() if domains else None


def header_list(headers: list[list[bytes]]) -> list[bytes]:
    """Our headers as often as they occur, From once more (oversigned)."""
    counts: dict[bytes, int] = {}
    for name, _ in headers:
        counts[name.lower()] = counts.get(name.lower(), 0) + 1
    chosen: list[bytes] = []
    for wanted in SIGNED_HEADERS:
        n = counts.get(wanted.lower().encode(), 0)
        if wanted in OVERSIGNED_HEADERS:
            n += 1
        chosen.extend([wanted.encode()] * n)
    return chosen


def sign_with_key(raw: bytes, domain: str, selector: str, private: PrivateKey,
                  headers: list[list[bytes]] | None = None) -> bytes:
    """One DKIM-Signature header (with its line ending) for ``raw``; relaxed/relaxed."""
    if headers is None:
        headers, _ = dkim.rfc822_parse(raw)
    common = {
        "canonicalize": (b"relaxed", b"relaxed"),
        "include_headers": header_list(headers),
        "linesep": _linesep(raw),
    }
    if isinstance(private, ed25519.Ed25519PrivateKey):
        # dkimpy (via PyNaCl) wants the 32-byte seed in base64 (RFC 8463 §3).
        seed = private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        signed: bytes = dkim.sign(raw, selector.encode(), domain.encode(), base64.b64encode(seed),
                                  signature_algorithm=b"ed25519-sha256", **common)
        return signed
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # dkimpy's header, OpenSSL's RSA: byte-identical to dkim.sign (bot/adapters/dkimsign.py).
    return sign_rsa(raw, selector.encode(), domain.encode(), private, pem, canonicalize=(b"relaxed", b"relaxed"),
                    include_headers=header_list(headers), linesep=_linesep(raw))


def _load_installed(entry: InstalledKey) -> PrivateKey:
    what = f"{entry.domain} selector {entry.selector}"
    try:
        data = entry.path.read_bytes()
    except OSError as exc:
        raise SignerError(f"cannot read the installed key file for {what}: {exc.strerror}") from None
    try:
        return load_private_pem(data, None, what=what)
    except KeyStoreError as exc:
        raise SignerError(str(exc)) from None


def sign_report(cfg: Config, raw: bytes) -> SignResult:
    """Sign ``raw`` with every installed key of its From domain; say what was done.

    Raises UnsignableMessage (message's fault) or SignerError (ours).
    """
    try:
        headers, _ = dkim.rfc822_parse(raw)
    except dkim.MessageFormatError:
        raise UnsignableMessage("the message header is malformed") from None
    domain = parse_from_domain(headers)
    if domain is None:
        return SignResult(raw, None, note="no From address; passed through unsigned")
    entries = installed_keys(cfg, domain)
    if not entries:
        return SignResult(raw, domain, note=f"no DKIM key installed for {domain}; passed through unsigned")
    loaded = [(entry, _load_installed(entry)) for entry in entries]
    # RSA on top: receivers that look at the first signature only (and many do not know
    # Ed25519 yet, RFC 8463 §5) then meet the one they can verify.
    loaded.sort(key=lambda pair: 0 if isinstance(pair[1], rsa.RSAPrivateKey) else 1)
    signatures = []
    for entry, private in loaded:
        try:
            signatures.append(sign_with_key(raw, domain, entry.selector, private, headers))
        except dkim.DKIMException as exc:
            if isinstance(exc, (dkim.MessageFormatError, dkim.ParameterError)):
                raise UnsignableMessage(f"the message cannot be signed: {str(exc)[:120]}") from None
            raise SignerError(f"signing for {domain} selector {entry.selector} failed") from None
    return SignResult(b"".join(signatures) + raw, domain, [e.selector for e, _ in loaded])


def sign_message(cfg: Config, raw: bytes) -> bytes:
    """``raw`` with a DKIM-Signature per installed key of its From domain prepended.

    A message whose From domain has no installed key (or that has no From) comes back
    unchanged. Raises UnsignableMessage or SignerError as :func:`sign_report`.
    """
    return sign_report(cfg, raw).message


def sign_filter(cfg: Config, stdin: BinaryIO, stdout: BinaryIO, stderr: TextIO) -> int:
    """``dkimbot sign``: read a message, write it signed; exit codes in the module docstring."""
    raw = stdin.read()
    try:
        result = sign_report(cfg, raw)
    except UnsignableMessage as exc:
        stdout.write(raw)
        stdout.flush()
        print(f"dkimbot sign: {exc}; passed through unsigned", file=stderr)
        return 0
    except SignerError as exc:
        print(f"dkimbot sign: {exc}; message not passed on, retry later", file=stderr)
        return EX_TEMPFAIL
    stdout.write(result.message)
    stdout.flush()
    if result.note:
        print(f"dkimbot sign: {result.note}", file=stderr)
    return 0


# --------------------------------------------------------------------------- proof


def build_probe(domain: str, now: float | None = None) -> bytes:
    """A small message From ``dkimbot-probe@<domain>`` to sign and verify."""
    when = time.time() if now is None else now
    addr = f"{PROBE_LOCALPART}@{domain}"
    lines = [
        f"From: {addr}",
        f"To: {addr}",
        "Subject: dkimbot DKIM signing probe",
        f"Date: {email.utils.formatdate(when, localtime=False)}",
        f"Message-ID: {email.utils.make_msgid('dkimbot-probe', domain=domain)}",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        "This message proves that the installed DKIM key signs mail that verifies.",
        "",
    ]
    return "\r\n".join(lines).encode("ascii")


def _published_p(dnsfunc: DnsFunc, key: DkimKey) -> tuple[str | None, str | None]:
    """(p= value served, error explanation)."""
    name = (key.fqdn + ".").encode("ascii")
    try:
        answer = dnsfunc(name, timeout=5)
    except Exception as exc:  # noqa: BLE001 - any resolver failure is a "could not check"
        return None, f"the DNS lookup of {key.fqdn} failed ({type(exc).__name__})"
    if not answer:
        return None, f"no DKIM record was found at {key.fqdn}"
    try:
        tags = dkim.util.parse_tag_value(answer)
    except Exception:  # noqa: BLE001 - dkimpy raises several unrelated types here
        return None, f"the record at {key.fqdn} is not a valid DKIM tag list"
    p = re.sub(rb"\s+", b"", tags.get(b"p", b"")).decode("ascii", "replace")
    return p, None


def prove_signing(cfg: Config, key: DkimKey, private_pem: bytes, dnsfunc: DnsFunc) -> tuple[bool, str]:
    """Sign a probe with ``key`` and verify it through ``dnsfunc``; (ok, one English sentence).

    Also checks, when ``key`` is installed, that the installed key file is this key: the
    signer signs with that file, not with ``private_pem``.
    """
    what = f"{key.fqdn} ({key.algorithm})"
    try:
        private = load_private_pem(private_pem, None, what=f"{key.domain} selector {key.selector}")
    except KeyStoreError as exc:
        return False, str(exc)
    if dkim_key_from_private(key.domain, key.selector, private).public_b64 != key.public_b64:
        return False, f"the private key for {what} does not match its public record"
    for entry in installed_keys(cfg, key.domain):
        if entry.selector == key.selector:
            try:
                installed = _load_installed(entry)
            except SignerError as exc:
                return False, str(exc)
            if dkim_key_from_private(key.domain, key.selector, installed).public_b64 != key.public_b64:
                return False, f"the key file installed in the signer for {what} is a different key"
    served, problem = _published_p(dnsfunc, key)
    if problem:
        return False, problem
    if served != key.public_b64:
        return False, f"DNS serves a different public key at {key.fqdn} than the one installed"
    probe = build_probe(key.domain)
    try:
        signed = sign_with_key(probe, key.domain, key.selector, private) + probe
    except dkim.DKIMException:
        return False, f"signing the probe with {what} failed"
    verifier = dkim.DKIM(signed, minkey=1024)
    try:
        ok = verifier.verify(dnsfunc=dnsfunc)
    except dkim.DKIMException as exc:
        return False, f"the probe signed with {what} did not verify: {str(exc)[:160]}"
    if not ok:
        return False, f"the probe signed with {what} did not verify against DNS"
    return True, f"a probe signed with {what} verified against the published DNS record"
