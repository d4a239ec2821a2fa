"""The SaaS's facility registry: a CSV of facilities and their admin addresses.

``[registry] file`` names it (relative paths under the state dir). A request whose admin
address is listed counts as proven: the SaaS already knows that address as the
facility's, so no confirmation mail is needed (bot/flows/confirm.py). The file is
re-read when its modification time or size changes, so the operator's nightly export
takes effect at the next pass without a restart.

Format: a header row with an ``admin_email`` column (``facility`` optional, other
columns ignored), UTF-8 (a BOM is fine). A file that cannot be read counts as an empty
registry (logged): a broken export must not confirm anyone.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

from bot.core.authority import fold_address

log = logging.getLogger("dkimbot")


@dataclass
class Registry:
    path: Path | None
    _stamp: tuple[int, int] | None = None
    _admins: frozenset[str] = field(default_factory=frozenset)

    def _load(self) -> None:
        if self.path is None:
            return
        try:
            st = self.path.stat()
        except OSError as exc:
            if self._stamp is not None or self._admins:
                log.warning("registry %s unreadable (%s): treated as empty", self.path, type(exc).__name__)
            self._stamp, self._admins = None, frozenset()
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        try:
            text = self.path.read_text(encoding="utf-8-sig")
            rows = csv.DictReader(io.StringIO(text))
            if not rows.fieldnames or "admin_email" not in [f.strip().lower() for f in rows.fieldnames]:
                raise ValueError("no admin_email column")
            key = next(f for f in rows.fieldnames if f.strip().lower() == "admin_email")
            admins = {fold_address(r[key]) for r in rows if r.get(key) and "@" in r[key]}
        except (OSError, UnicodeDecodeError, ValueError, csv.Error) as exc:
            log.warning("registry %s unreadable (%s: %s): treated as empty", self.path, type(exc).__name__, exc)
            admins = set()
        self._stamp, self._admins = stamp, frozenset(admins)
        log.info("registry %s: %d admin addresses", self.path, len(self._admins))

    def lists(self, address: str | None) -> bool:
        """Is ``address`` a listed admin address (re-reading the file when it changed)?"""
        if not address or self.path is None:
            return False
        self._load()
        return fold_address(address) in self._admins


_REGISTRIES: dict[Path, Registry] = {}


def registry_for(path: Path | None) -> Registry:
    """One Registry per file per process (its cache survives across passes of the daemon)."""
    if path is None:
        return Registry(None)
    reg = _REGISTRIES.get(path)
    if reg is None:
        reg = _REGISTRIES[path] = Registry(path)
    return reg
