"""DKIM key pairs: generation, storage at rest, and the DNS records that publish them.

The private key is the one secret dkimbot holds for each facility. This module is the
only place that creates or decrypts it. Keys live under the state dir as PKCS#8 PEM,
one file per (domain, selector), directories 0700 and files 0600, encrypted with the
configured passphrase when there is one. Nothing here logs, prints or puts into an
exception message any key material, passphrase or file contents.

The pure parts (``DkimKey``, the selector name, the TXT value and its zone-file form)
live in ``bot/core/records.py``; they are re-exported here for the callers that hold a key.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import os
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from bot.core.records import (
    DkimKey,
    ed25519_selector,
    render_selector,
    render_zone_line,
    split_txt_strings,
    validate_domain,
    validate_selector,
)

__all__ = [
    "ALGORITHMS", "ED25519_BITS", "RSA_SIZES", "DkimKey", "KeyPassphraseError", "KeyStore",
    "KeyStoreError", "PrivateKey", "algorithm_of_key", "dkim_key_from_private", "ed25519_selector",
    "ensure_private_dir", "ensure_private_dirs_to", "file_lock", "fsync_dir", "generate_private_key",
    "load_private_pem",
    "public_b64_of", "render_selector", "render_zone_line", "split_txt_strings",
    "unencrypted_pkcs8", "validate_domain", "validate_selector", "write_file_atomic",
]

ALGORITHMS = ("rsa", "ed25519")
RSA_SIZES = (1024, 2048, 3072, 4096)
# An Ed25519 public key is 256 bits; recorded as ``bits`` so reports
# ("key >= 1024 bits" applies to RSA only) can tell the two apart by algorithm.
ED25519_BITS = 256

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey



class KeyStoreError(Exception):
    """A key cannot be stored or read; the message names the domain/selector, never secrets."""


class KeyPassphraseError(KeyStoreError):
    """The key is encrypted and the passphrase is missing or wrong."""


# --------------------------------------------------------------------------- keys


def generate_private_key(algorithm: str, bits: int = 2048) -> PrivateKey:
    """A fresh key: RSA with e=65537 (RFC 8301 forbids < 1024 bits) or Ed25519."""
    if algorithm == "rsa":
        if bits not in RSA_SIZES:
            raise ValueError(f"RSA key size must be one of {RSA_SIZES}, got {bits}")
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unknown key algorithm {algorithm!r}; expected 'rsa' or 'ed25519'")


def algorithm_of_key(key: PrivateKey) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return "rsa"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    raise KeyStoreError(f"unsupported key type {type(key).__name__}")


def public_b64_of(key: PrivateKey) -> str:
    """The p= value: SubjectPublicKeyInfo DER for RSA, the raw 32 bytes for Ed25519 (RFC 8463 §4.2)."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        raw = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    return base64.b64encode(raw).decode("ascii")


def dkim_key_from_private(domain: str, selector: str, key: PrivateKey) -> DkimKey:
    algorithm = algorithm_of_key(key)
    bits = key.key_size if isinstance(key, rsa.RSAPrivateKey) else ED25519_BITS
    return DkimKey(domain=domain, selector=selector, algorithm=algorithm, bits=bits,
                   public_b64=public_b64_of(key))


# Parsing an RSA private key runs OpenSSL's full key check (~40 ms for 2048 bits on a
# small VM, far more for 4096); installing and proving one key parses the same PEM
# several times (key store, signer check, probe). So parsed keys are remembered by a
# digest of (passphrase, PEM): the same bytes are checked once per process. Bounded,
# and only ever filled with keys that parsed and checked cleanly.
_PARSED: OrderedDict[bytes, PrivateKey] = OrderedDict()
_PARSED_MAX = 256
_PARSED_LOCK = threading.Lock()


def load_private_pem(data: bytes, passphrase: str | None, *, what: str) -> PrivateKey:
    """Parse PEM (encrypted or not); errors name ``what`` and never the data or passphrase."""
    secret = passphrase.encode("utf-8") if passphrase else b""
    digest = hashlib.sha256(len(secret).to_bytes(4, "big") + secret + data).digest()
    with _PARSED_LOCK:
        key = _PARSED.get(digest)
        if key is not None:
            _PARSED.move_to_end(digest)
            return key
    key = _parse_private_pem(data, passphrase, what=what)
    with _PARSED_LOCK:
        _PARSED[digest] = key
        while len(_PARSED) > _PARSED_MAX:
            _PARSED.popitem(last=False)
    return key


def _parse_private_pem(data: bytes, passphrase: str | None, *, what: str) -> PrivateKey:
    password = passphrase.encode("utf-8") if passphrase else None
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except TypeError:
        if password is None:
            raise KeyPassphraseError(
                f"the private key for {what} is encrypted and no passphrase is configured "
                "(set the environment variable named by [keys] passphrase_env)"
            ) from None
        # Stored before a passphrase was configured: still a valid key, read it as is.
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (TypeError, ValueError):
            raise KeyStoreError(f"the private key file for {what} is unreadable or corrupt") from None
    except ValueError:
        # cryptography says "Bad decrypt. Incorrect password?" for both a wrong passphrase
        # and some corruptions; an encrypted PEM header tells which one is likely.
        if password is not None and b"ENCRYPTED" in data[:64]:
            raise KeyPassphraseError(
                f"the passphrase does not decrypt the private key for {what} "
                "(check the environment variable named by [keys] passphrase_env)"
            ) from None
        raise KeyStoreError(f"the private key file for {what} is unreadable or corrupt") from None
    except Exception:  # noqa: BLE001 - cryptography's internal errors may quote input
        raise KeyStoreError(f"the private key file for {what} is unreadable or corrupt") from None
    if not isinstance(key, (rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)):
        raise KeyStoreError(f"the private key for {what} is neither RSA nor Ed25519")
    return key


def unencrypted_pkcs8(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


# --------------------------------------------------------------------------- files


def ensure_private_dir(path: Path, mode: int = 0o700) -> None:
    """Create ``path`` with ``mode``; tighten an existing one to ``mode``.

    Only ``path`` itself gets ``mode``: missing parents are created as ``mkdir -p``
    would (the default mode under the umask, typically 0755). A caller that needs the
    directories in between private too makes each of them (``ensure_private_dirs_to``)."""
    # mkdir's mode is masked by the umask only ever towards fewer bits, so a new
    # directory is never wider than ``mode`` even for an instant.
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    if (path.stat().st_mode & 0o777) != mode:
        os.chmod(path, mode)


def ensure_private_dirs_to(root: Path, path: Path, mode: int = 0o700) -> None:
    """``root``, ``path`` (inside ``root``) and every directory between them with ``mode``:
    what a restore writes into the state directory ends up as a fresh install leaves it."""
    ensure_private_dir(root, mode)
    current = root
    for part in path.relative_to(root).parts:
        current = current / part
        ensure_private_dir(current, mode)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomic(
    path: Path, data: bytes, mode: int = 0o600, *, owner: tuple[int, int] | None = None
) -> None:
    """Write ``data`` to ``path`` via a temp file in the same dir, fsync, rename, fsync dir.

    The temp file is created with O_EXCL and ``mode`` in the open call itself, so no
    moment exists where it is readable by others (the umask can only remove bits), and
    readers see either the old file or the whole new one. ``owner`` (uid, gid; -1 keeps
    one) is set on the temp file before the rename, so the final name never has another.
    """
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            if owner is not None:
                os.fchown(fd, owner[0], owner[1])
            os.fchmod(fd, mode)  # exact mode whatever the umask took away (after chown: it may clear bits)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created 0600), released on exit."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def passphrase_problem(directory: Path, passphrase: str | None) -> str | None:
    """Does ``passphrase`` open the stored keys? One line saying why not, else None.

    Tried on one encrypted key file before a pass writes anything (issue 11): a wrong
    passphrase must stop the bot, not let it write new keys under the wrong one and
    escalate every case whose key it cannot read. Keys stored unencrypted (before a
    passphrase was set) need none and prove nothing either way.
    """
    files = sorted(directory.glob("*/*.pem"), key=lambda p: p.stat().st_mtime, reverse=True) \
        if directory.is_dir() else []
    for path in files:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if b"ENCRYPTED" not in data[:64]:
            continue
        try:
            load_private_pem(data, passphrase, what=f"{path.parent.name} selector {path.stem}")
        except KeyStoreError as exc:
            return str(exc)
        return None
    return None


class KeyStore:
    """Private keys under ``directory/<domain>/<selector>.pem`` (PKCS#8 PEM)."""

    def __init__(self, directory: Path, passphrase: str | None) -> None:
        self.directory = Path(directory)
        # Empty string means "not configured" (an empty env var is no passphrase).
        self._passphrase = passphrase or None

    def __repr__(self) -> str:  # never show the passphrase, even in a debugger or a log
        return f"KeyStore({str(self.directory)!r}, encrypted={self.encrypted})"

    @property
    def encrypted(self) -> bool:
        return self._passphrase is not None

    def path(self, domain: str, selector: str) -> Path:
        # Validation keeps a hostile "domain" such as "../../etc" out of the file system.
        return self.directory / validate_domain(domain) / f"{validate_selector(selector)}.pem"

    def exists(self, domain: str, selector: str) -> bool:
        return self.path(domain, selector).is_file()

    def _read(self, domain: str, selector: str) -> PrivateKey | None:
        path = self.path(domain, selector)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise KeyStoreError(
                f"cannot read the private key file for {domain} selector {selector}: {exc.strerror}"
            ) from None
        return load_private_pem(data, self._passphrase, what=f"{domain} selector {selector}")

    def _serialize(self, key: PrivateKey) -> bytes:
        encryption: serialization.KeySerializationEncryption
        if self._passphrase:
            encryption = serialization.BestAvailableEncryption(self._passphrase.encode("utf-8"))
        else:
            encryption = serialization.NoEncryption()
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)

    def load_or_create(self, domain: str, selector: str, algorithm: str = "rsa", bits: int = 2048) -> DkimKey:
        """The key for (domain, selector), generated and stored on first use.

        Idempotent across crashes: the file is the truth, so a run that died after writing
        it and before recording the case reuses the same key; never a second key for the
        same domain and selector. An existing key of another algorithm is an error (its
        record would not be what the caller means to publish); an existing RSA key of
        another size is returned as it is (``bits`` tells its real size).
        """
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown key algorithm {algorithm!r}; expected 'rsa' or 'ed25519'")
        if algorithm == "rsa" and bits not in RSA_SIZES:
            raise ValueError(f"RSA key size must be one of {RSA_SIZES}, got {bits}")
        key = self._stored_or(domain, selector, lambda: generate_private_key(algorithm, bits))
        found = dkim_key_from_private(domain, selector, key)
        if found.algorithm != algorithm:
            raise KeyStoreError(
                f"{domain} selector {selector} already holds a {found.algorithm} key, not {algorithm}; "
                "choose another selector"
            )
        return found

    def import_key(self, domain: str, selector: str, key: PrivateKey) -> DkimKey:
        """Store a key made elsewhere (``dkimbot adopt``: a key the signer already had).
        Idempotent; a different key already stored under the name is an error."""
        stored = self._stored_or(domain, selector, lambda: key)
        if public_b64_of(stored) != public_b64_of(key):
            raise KeyStoreError(f"{domain} selector {selector} already holds another key")
        return dkim_key_from_private(domain, selector, key)

    def _stored_or(self, domain: str, selector: str, new: Callable[[], PrivateKey]) -> PrivateKey:
        """The key stored for (domain, selector), or ``new()`` written there first. The
        lock makes "check, then create" one step between concurrent processes."""
        path = self.path(domain, selector)
        ensure_private_dir(self.directory)
        ensure_private_dir(path.parent)
        with file_lock(path.parent / ".lock"):
            key = self._read(domain, selector)
            if key is None:
                self._remove_stale_temps(path)
                key = new()
                write_file_atomic(path, self._serialize(key), 0o600)
        return key

    @staticmethod
    def _remove_stale_temps(path: Path) -> None:
        # Left by a crash inside write_file_atomic; they may hold an (encrypted) key.
        for stale in path.parent.glob(f".{path.name}.tmp-*"):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()

    def get(self, domain: str, selector: str) -> DkimKey | None:
        """The public half of a stored key, or None when there is none (decrypts to derive it)."""
        key = self._read(domain, selector)
        return None if key is None else dkim_key_from_private(domain, selector, key)

    def algorithm_of(self, domain: str, selector: str) -> str | None:
        found = self.get(domain, selector)
        return None if found is None else found.algorithm

    def private_pem(self, domain: str, selector: str) -> bytes:
        """The decrypted key as unencrypted PKCS#8 PEM bytes: for the signer, in memory only."""
        key = self._read(domain, selector)
        if key is None:
            raise KeyStoreError(f"no private key stored for {domain} selector {selector}")
        return unencrypted_pkcs8(key)

    def selectors(self, domain: str) -> list[str]:
        """Selectors with a stored key for ``domain``, sorted."""
        folder = self.directory / validate_domain(domain)
        if not folder.is_dir():
            return []
        return sorted(p.stem for p in folder.glob("*.pem") if not p.name.startswith("."))
