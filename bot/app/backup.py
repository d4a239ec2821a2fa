"""``dkimbot backup FILE`` and ``dkimbot restore FILE [--force]``.

The state directory holds every private key and the only record of every case. A backup
is one tar.gz: ``manifest.json`` (what, when, from where, a SHA-256 per file), the database
(``Store.backup_to``: SQLite's online backup, consistent while a pass is writing), the key
store's files exactly as stored (encrypted when a passphrase is configured: never
decrypted for the backup), and the signer's KeyTable, SigningTable and key files.

Order matters for consistency without stopping passes. A key file is written before the
transaction that records it, and the signer's files before the commit that marks a key
installed; so the database is copied first and the files after it: every key the copied
database knows is already on disk, and a file newer than the copy is at worst an unused
extra that the restored bot's flow reinstalls or ignores idempotently.

Restore writes into an empty state directory (``--force``: over an existing one, under
the pass lock), puts the signer files where *this* config's ``[signer]`` says, rewrites
the KeyTable's key paths from the old keys directory to the new one, and runs the
reload command.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bot.config import Config

log = logging.getLogger("dkimbot")

FORMAT = "dkimbot-backup-1"
DB_NAME = "dkimbot.sqlite3"
# The only member names a backup may hold: nothing absolute, no "..", no links.
_MEMBER = re.compile(r"(?:manifest\.json|dkimbot\.sqlite3|signer/(?:KeyTable|SigningTable)"
                     r"|keys/[a-z0-9.-]+/[A-Za-z0-9._-]+\.pem|signer/keys/[A-Za-z0-9._-]+)")


class BackupError(Exception):
    """A backup or restore that cannot go on; the message is one line for the operator."""


@dataclass(frozen=True)
class Summary:
    cases: int
    keys: int
    signer_keys: int
    lines: list[str]


def _files(root: Path, pattern: str) -> list[Path]:
    return sorted(p for p in root.glob(pattern) if p.is_file() and not p.name.startswith("."))


def make_backup(cfg: Config, target: Path) -> Summary:
    from bot.adapters.signer import keys_dir
    from bot.adapters.store import Store

    db_path = cfg.state_dir / DB_NAME
    if not db_path.is_file():
        raise BackupError(f"no database at {db_path}: nothing to back up")
    target = target.absolute()
    if not target.parent.is_dir():
        raise BackupError(f"{target.parent} is not a directory; make it first")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    os.chmod(tmp_name, 0o600)  # it holds private keys: never readable by others, even for a moment
    checksums: dict[str, str] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="dkimbot-backup-", dir=cfg.state_dir) as scratch:
            copy = Path(scratch) / DB_NAME
            store = Store(db_path)
            try:
                store.backup_to(copy)  # first: see the module docstring
                cases = len(store.list_cases())
                schema = store.schema_version()
            finally:
                store.close()
            members: list[tuple[str, bytes]] = [(DB_NAME, copy.read_bytes())]
            keys = _files(cfg.state_dir / "keys", "*/*.pem")
            members += [(f"keys/{p.parent.name}/{p.name}", p.read_bytes()) for p in keys]
            signer_dir = keys_dir(cfg).absolute()
            for name, path in (("signer/KeyTable", cfg.state_path(cfg.signer.keytable)),
                               ("signer/SigningTable", cfg.state_path(cfg.signer.signingtable))):
                if path.is_file():
                    members.append((name, path.read_bytes()))
            signer_keys = _files(signer_dir, "*")
            members += [(f"signer/keys/{p.name}", p.read_bytes()) for p in signer_keys]
        for name, data in members:
            checksums[name] = hashlib.sha256(data).hexdigest()
        manifest = {
            "format": FORMAT, "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "schema_version": schema, "state_dir": str(cfg.state_dir.absolute()),
            "signer_keys_dir": str(signer_dir), "cases": cases, "files": checksums,
        }
        with tarfile.open(tmp_name, "w:gz") as tar:
            for name, data in [("manifest.json", json.dumps(manifest, indent=1).encode()), *members]:
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o600, int(datetime.now(UTC).timestamp())
                tar.addfile(info, io.BytesIO(data))
        with open(tmp_name, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    lines = [(f"backup {target}: {cases} cases, {len(keys)} stored keys, "
              f"{len(signer_keys)} signer key files, schema {schema}")]
    return Summary(cases, len(keys), len(signer_keys), lines)


def _read_archive(source: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(source, "r:gz") as tar:
            for member in tar:
                if not member.isfile() or not _MEMBER.fullmatch(member.name) or ".." in member.name:
                    raise BackupError(f"{source}: unexpected member {member.name!r}; not a dkimbot backup")
                reader = tar.extractfile(member)
                files[member.name] = reader.read() if reader is not None else b""
    except (OSError, EOFError, zlib.error, tarfile.TarError) as exc:  # gzip errors are OSError
        raise BackupError(f"cannot read {source}: {exc}") from None
    try:
        manifest = json.loads(files.pop("manifest.json"))
    except (KeyError, ValueError):
        raise BackupError(f"{source}: no readable manifest.json; not a dkimbot backup") from None
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{source}: format {manifest.get('format')!r}, expected {FORMAT}")
    expected: dict[str, str] = manifest.get("files", {})
    if set(expected) != set(files):
        raise BackupError(f"{source}: files and manifest disagree; the archive is incomplete")
    for name, data in files.items():
        if hashlib.sha256(data).hexdigest() != expected[name]:
            raise BackupError(f"{source}: {name} does not match its checksum; the archive is damaged")
    return manifest, files


def _rewrite_keytable(text: str, old_dir: str, new_dir: Path) -> str:
    """KeyTable paths into the old keys directory point into the new one instead."""
    out = []
    for line in text.splitlines():
        head, sep, path = line.rpartition(":")
        if sep and os.path.dirname(path.strip()) == old_dir.rstrip("/"):
            line = f"{head}:{new_dir / os.path.basename(path.strip())}"
        out.append(line)
    return "".join(f"{line}\n" for line in out)


def restore_backup(cfg: Config, source: Path, *, force: bool) -> Summary:
    from bot.adapters.keys import ensure_private_dir, ensure_private_dirs_to, write_file_atomic
    from bot.adapters.signer import SignerInstallError, key_owner_ids, keys_dir, place_key_files, run_reload
    from bot.adapters.store import Store
    from bot.flows.runtime import pass_lock

    manifest, files = _read_archive(source)  # all checked before anything is written
    if any(n.startswith("signer/keys/") for n in files):
        try:
            key_owner_ids(cfg)  # an unknown [signer] key_owner is refused before anything is written
        except SignerInstallError as exc:
            raise BackupError(str(exc)) from None
    state = cfg.state_dir
    present = sorted(p.name for p in state.iterdir()) if state.is_dir() else []
    if present and not force:
        raise BackupError(f"{state} is not empty ({', '.join(present[:5])}{', …' if len(present) > 5 else ''}); "
                          "restore into an empty state directory, or add --force to write over it")
    ensure_private_dir(state)
    lines: list[str] = []
    with pass_lock(cfg, wait=True):
        db_tmp = state / f".{DB_NAME}.restore"
        db_tmp.write_bytes(files[DB_NAME])
        os.chmod(db_tmp, 0o600)
        for suffix in ("-wal", "-shm"):  # a forced restore: the old journal must not replay
            (state / f"{DB_NAME}{suffix}").unlink(missing_ok=True)
        os.replace(db_tmp, state / DB_NAME)
        keys = [n for n in files if n.startswith("keys/")]
        for name in keys:
            path = state / name
            ensure_private_dirs_to(state, path.parent)  # keys/ too (mkdir -p left it 0755)
            write_file_atomic(path, files[name], 0o600)  # as stored: still encrypted
        signer_keys = [n for n in files if n.startswith("signer/keys/")]
        new_keys_dir = keys_dir(cfg).absolute()
        if signer_keys:  # owner, group and modes as an install leaves them ([signer] key_*)
            place_key_files(cfg, {Path(n).name: files[n] for n in signer_keys})
        for name, path in (("signer/KeyTable", cfg.state_path(cfg.signer.keytable)),
                           ("signer/SigningTable", cfg.state_path(cfg.signer.signingtable))):
            if name not in files:
                continue
            text = files[name].decode("utf-8")
            if name.endswith("KeyTable"):
                text = _rewrite_keytable(text, manifest.get("signer_keys_dir", ""), new_keys_dir)
            if not path.parent.exists():  # as the signer install makes a table directory
                ensure_private_dir(path.parent, 0o750 if cfg.signer.key_group.strip() else 0o700)
            write_file_atomic(path, text.encode("utf-8"), 0o644)
        store = Store(state / DB_NAME)  # upgrades an older schema, refuses a newer one
        try:
            cases = len(store.list_cases())
        finally:
            store.close()
        if files.keys() & {"signer/KeyTable", "signer/SigningTable"} and cfg.signer.reload_command.strip():
            try:
                run_reload(cfg)
                lines.append("signer reloaded")
            except SignerInstallError as exc:
                lines.append(f"warning: {exc}; run the reload by hand once the signer runs")
    lines.insert(0, f"restored {source} (made {manifest.get('created_at')}) into {state}: {cases} cases, "
                    f"{len(keys)} stored keys, {len(signer_keys)} signer key files")
    return Summary(cases, len(keys), len(signer_keys), lines)
