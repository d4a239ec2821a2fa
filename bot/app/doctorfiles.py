"""The doctor's checks of this host: the signer's files and reload, the stored keys
against the passphrase, the state directory's permissions (``bot.app.doctor`` runs them
with the server checks). Writability is tried for real (a temporary file made and
removed, a table opened for appending and closed unwritten), since root passes every
``os.access`` test, also on an immutable file or a read-only mount.
"""

from __future__ import annotations

import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bot.config import Config

# Decrypting a key is slow by design (PBKDF); a few hundred cover a real check.
MAX_KEYS_TRIED = 200


@dataclass(frozen=True)
class Finding:
    ok: bool | None  # None: does not apply to this configuration
    name: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        mark = {True: "✔", False: "✖", None: "–"}[self.ok]
        text = f"{mark} {self.name}: {self.detail}"
        return f"{text} — fix: {self.fix}" if self.ok is False and self.fix else text


def check_signer(cfg: Config) -> list[Finding]:
    from bot.adapters.signer import SignerInstallError, keys_dir, run_reload

    s = cfg.signer
    out = [writable_file_finding("signer KeyTable", cfg.state_path(s.keytable)),
           writable_file_finding("signer SigningTable", cfg.state_path(s.signingtable)),
           writable_dir_finding("signer keys dir", keys_dir(cfg),
                                 "make it a directory the bot's user can write (the signer only reads it)")]
    if not s.reload_command.strip():
        out.append(Finding(None, "signer reload", "no [signer] reload_command (the signer rereads its tables itself)"))
        return out
    try:
        run_reload(cfg)
        out.append(Finding(True, "signer reload", f"`{s.reload_command}` succeeded"))
    except SignerInstallError as exc:
        out.append(Finding(False, "signer reload", str(exc),
                           "run [signer] reload_command by hand as the bot's user and fix what it says"))
    return out

def check_keys(cfg: Config) -> list[Finding]:
    from bot.adapters.keys import KeyStoreError, load_private_pem

    folder = cfg.state_dir / "keys"
    files = sorted(folder.glob("*/*.pem")) if folder.is_dir() else []
    if not files:
        return [Finding(True, "stored keys", f"none yet under {folder}")]
    passphrase = cfg.keys.passphrase
    plain = 0
    tried = files[:MAX_KEYS_TRIED]
    for path in tried:
        what = f"{path.parent.name} selector {path.stem}"
        try:
            data = path.read_bytes()
            load_private_pem(data, passphrase, what=what)
        except KeyStoreError as exc:
            return [Finding(False, "stored keys", str(exc),
                            "set the environment variable named by [keys] passphrase_env to the passphrase "
                            "the keys were stored with")]
        except OSError as exc:
            return [Finding(False, "stored keys", f"cannot read {path}: {exc.strerror}",
                            "run the bot as the user that owns the state directory")]
        plain += b"ENCRYPTED" not in data[:64]
    how = "decrypt with the passphrase" if passphrase else "read (no passphrase configured: stored unencrypted)"
    detail = f"{len(tried)} of {len(files)} key files {how}"
    if passphrase and plain:
        detail += f"; {plain} were stored before the passphrase was set and are not encrypted"
    return [Finding(True, "stored keys", detail)]

def check_state_dir(cfg: Config) -> list[Finding]:
    state = cfg.state_dir
    if not state.exists():
        parent = nearest_existing(state)
        if not can_create_in(parent):
            return [Finding(False, "state dir", f"{state} does not exist and {parent} is not writable",
                            f"create {state} (mode 0700) owned by the bot's user")]
        return [Finding(True, "state dir", f"{state} will be made (mode 0700) by the first pass")]
    problems = []
    for path in [state, state / "dkimbot.sqlite3", state / "keys"]:
        if path.exists():
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & 0o077:
                problems.append(f"{path} is mode {mode:04o}")
            if path.stat().st_uid != os.geteuid():
                problems.append(f"{path} belongs to uid {path.stat().st_uid}, not the bot's {os.geteuid()}")
    if problems:
        return [Finding(False, "state dir", "; ".join(problems),
                        f"chown -R the bot's user {state} && chmod -R go-rwx {state} (it holds private keys)")]
    if not can_create_in(state):
        return [Finding(False, "state dir", f"{state} is not writable", f"make {state} writable by the bot's user")]
    return [Finding(True, "state dir", f"{state}: only the bot's user can read it, and it can write")]


def nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def can_create_in(directory: Path) -> bool:
    """A real try (a temporary file, removed), not os.access: root passes os.access on an
    immutable or read-only-mounted directory, and so would a doctor that only asked."""
    try:
        fd, name = tempfile.mkstemp(prefix=".dkimbot-doctor-", dir=directory)
    except OSError:
        return False
    os.close(fd)
    os.unlink(name)
    return True


def writable_dir_finding(name: str, path: Path, fix: str) -> Finding:
    where = path if path.exists() else nearest_existing(path)
    if not where.is_dir():
        return Finding(False, name, f"{where} is not a directory", fix)
    if not can_create_in(where):
        return Finding(False, name, f"cannot create files in {where}", fix)
    note = "" if where == path else f" (not there yet; {where} lets the bot make it)"
    return Finding(True, name, f"{path} writable{note}")


def writable_file_finding(name: str, path: Path) -> Finding:
    """The bot rewrites a table as temp file + rename in its directory, so both the
    directory and (for an existing table) the file must take writes."""
    fix = f"make {path} and its directory writable by the bot's user (and readable by the signer)"
    directory = writable_dir_finding(name, path.parent, fix)
    if not directory.ok:
        return directory
    if path.exists():
        try:
            with open(path, "ab"):  # opened for appending and closed: not a byte written
                pass
        except OSError as exc:
            return Finding(False, name, f"{path}: {exc.strerror}", fix)
        return Finding(True, name, f"{path} writable")
    return Finding(True, name, f"{path} will be made by the first key install ({path.parent} writable)")
