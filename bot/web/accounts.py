"""Staff accounts: argon2id password hashes in the store, and ``dkimbot staff add|remove|passwd|list``.

The password is never an argument (it would sit in the shell history and in ``ps``):
it is read from standard input (one line, for scripts) or asked for twice at a prompt.
"""

from __future__ import annotations

import getpass
import re
from datetime import UTC, datetime
from typing import TextIO

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from bot.adapters.store import Store
from bot.config import Config

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
MIN_PASSWORD = 10

# argon2id with the library's defaults (RFC 9106's second recommendation, 64 MiB).
_hasher = PasswordHasher()
# Verified when the name is unknown, so a wrong name costs as long as a wrong password
# (the response time does not tell which names exist).
_DUMMY_HASH = _hasher.hash("not a password of anybody")


class AccountError(Exception):
    """A bad name or password; one line for the operator."""


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"a password needs at least {MIN_PASSWORD} characters")
    return _hasher.hash(password)


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise AccountError("a staff name is 1-64 letters, digits, '.', '_', '@' or '-', "
                           "starting with a letter or digit")
    return name


def verify(store: Store, name: str, password: str) -> bool:
    """True when ``password`` is the account's; rehashes when the parameters were raised."""
    stored = store.staff_password_hash(name)
    try:
        _hasher.verify(stored or _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return False
    if stored is None:
        return False
    if _hasher.check_needs_rehash(stored):
        store.set_staff_password_hash(name, _hasher.hash(password))
    return True


def read_password(stdin: TextIO, stderr: TextIO) -> str:
    if stdin.isatty():
        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            raise AccountError("the two passwords differ")
        return first
    line = stdin.readline()
    return line.rstrip("\r\n")


def staff_command(cfg: Config, command: str, name: str | None, stdin: TextIO, stdout: TextIO,
                  stderr: TextIO) -> int:
    """``dkimbot staff add|remove|passwd|list``: exit 0 done, 1 nothing to do, 2 bad input."""
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    store = Store(cfg.state_dir / "dkimbot.sqlite3")
    now = datetime.now(UTC)
    try:
        if command == "list":
            rows = store.list_staff()
            stdout.writelines(f"{row['name']}\tcreated {row['created_at']}\t{row['sessions']} session(s)\n"
                              for row in rows)
            if not rows:
                stdout.write("no staff accounts (add one: dkimbot staff add NAME)\n")
            return 0
        name = check_name(name or "")
        if command == "remove":
            if not store.remove_staff(name):
                stderr.write(f"dkimbot: no staff account {name}\n")
                return 1
            stdout.write(f"removed {name} (its sessions ended)\n")
            return 0
        exists = store.staff_password_hash(name) is not None
        if command == "add" and exists:
            stderr.write(f"dkimbot: staff account {name} exists (dkimbot staff passwd {name} sets a new password)\n")
            return 1
        if command == "passwd" and not exists:
            stderr.write(f"dkimbot: no staff account {name}\n")
            return 1
        password_hash = hash_password(read_password(stdin, stderr))
        if command == "add":
            store.add_staff(name, password_hash, now)
            stdout.write(f"added {name}\n")
        else:
            with store.transaction():
                store.set_staff_password_hash(name, password_hash)
                store.end_sessions(name)
            stdout.write(f"new password for {name} (its sessions ended)\n")
        return 0
    except AccountError as exc:
        stderr.write(f"dkimbot: {exc}\n")
        return 2
    finally:
        store.close()
