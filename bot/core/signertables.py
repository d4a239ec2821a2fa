"""OpenDKIM's KeyTable and SigningTable as text: parse them, and compute the new text
when a key is added or removed. Pure; ``bot/adapters/signer.py`` reads and writes the
files (atomically, with the reload) around these.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class InstalledKey:
    """One KeyTable entry that the SigningTable uses for a domain."""

    keyname: str
    domain: str
    selector: str
    path: Path


def keyname_for(domain: str, selector: str) -> str:
    return f"{selector}._domainkey.{domain}"


def entries(text: str) -> list[tuple[str, str]]:
    """(first field, rest) of each non-comment line of an OpenDKIM table."""
    out = []
    for line in text.splitlines():
        stripped = line.split("#", 1)[0].strip()
        if not stripped:
            continue
        parts = stripped.split(None, 1)
        out.append((parts[0], parts[1].strip() if len(parts) > 1 else ""))
    return out


def parse_keytable(text: str) -> dict[str, InstalledKey]:
    """keyname (lower case) → entry, from KeyTable lines ``keyname domain:selector:path``."""
    table: dict[str, InstalledKey] = {}
    for name, value in entries(text):
        pieces = value.split(":", 2)
        if len(pieces) == 3:
            table[name.lower()] = InstalledKey(name, pieces[0].lower(), pieces[1], Path(pieces[2]))
    return table


def signing_keys(keytable: str, signingtable: str, domain: str) -> list[InstalledKey]:
    """The KeyTable entries the SigningTable uses for ``*@domain``, in SigningTable order."""
    pattern = f"*@{domain.lower()}"
    uses = [(pat, keyname) for pat, keyname in entries(_lines_with(signingtable, {pattern}))
            if pat.lower() == pattern]
    if not uses:
        return []
    table = parse_keytable(_lines_with(keytable, {keyname.lower() for _pat, keyname in uses}))
    found: list[InstalledKey] = []
    for _pat, keyname in uses:
        entry = table.get(keyname.lower())
        if entry is not None and entry not in found:
            found.append(entry)
    return found


def _lines_with(text: str, needles: set[str]) -> str:
    """The lines of ``text`` that hold one of ``needles`` (lower-case ASCII) in any case:
    a line whose field equals a needle, ignoring case, holds it. The check pass proves
    hundreds of keys against tables of every installed key: parsing only these lines
    keeps that from growing with the square of the keys (it was 10% of the pass's CPU
    at 250 keys). Not ASCII: the whole text (``str.lower`` may change lengths there)."""
    if not all(n.isascii() for n in needles):
        return text
    return "\n".join(line for line in text.splitlines() if any(n in line.lower() for n in needles))


def updated_keytable(text: str, add: dict[str, str], remove: set[str]) -> str:
    """Replace/append the lines of ``add`` (keyname → value), drop ``remove``; keep the rest."""
    lines: list[str] = []
    pending = dict(add)
    for line in text.splitlines():
        stripped = line.split("#", 1)[0].strip()
        name = stripped.split(None, 1)[0].lower() if stripped else ""
        if name in remove:
            continue
        if name in pending:
            lines.append(f"{name} {pending.pop(name)}")
            continue
        lines.append(line)
    lines.extend(f"{name} {value}" for name, value in pending.items())
    return "".join(line + "\n" for line in lines)


def updated_signingtable(text: str, domain: str, add: list[str], remove: set[str]) -> str:
    """Ensure ``*@domain keyname`` for each of ``add``; drop the domain's lines for ``remove``."""
    pattern = f"*@{domain}"
    lines: list[str] = []
    present: set[str] = set()
    last_of_domain = -1
    for line in text.splitlines():
        stripped = line.split("#", 1)[0].strip()
        parts = stripped.split() if stripped else []
        if len(parts) >= 2 and parts[0].lower() == pattern:
            keyname = parts[1].lower()
            if keyname in remove or keyname in present:
                continue
            present.add(keyname)
            lines.append(line)
            last_of_domain = len(lines) - 1
            continue
        lines.append(line)
    new = [f"{pattern} {k}" for k in add if k not in present]
    # Next to the domain's other lines, so a reader sees a domain's keys together.
    at = last_of_domain + 1 if last_of_domain >= 0 else len(lines)
    lines[at:at] = new
    return "".join(line + "\n" for line in lines)
