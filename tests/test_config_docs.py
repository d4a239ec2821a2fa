"""The documentation keeps up with the code: every key ``bot/config.py`` accepts (derived
from its dataclasses, so a key added tomorrow is seen) is shown in a TOML example of
README.md under its section, with its default, and listed in docs/CONTRACT.md §7's
table; README's "Mail templates" names every file in templates/."""

from __future__ import annotations

import re
from pathlib import Path

from bot.config import accepted_keys

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
CONTRACT = (ROOT / "docs" / "CONTRACT.md").read_text(encoding="utf-8")


def readme_toml_keys() -> dict[str, set[str]]:
    """Keys shown in README's ```toml blocks, per [section]; a commented-out line
    (``# key = default``) counts: it shows the key and its default."""
    shown: dict[str, set[str]] = {}
    for block in re.findall(r"```toml\n(.*?)```", README, re.DOTALL):
        section = None
        for line in block.splitlines():
            head = re.match(r"\s*#?\s*\[(\w+)\]", line)
            if head:
                section = head.group(1)
                continue
            key = re.match(r"\s*#?\s*([a-z_][a-z0-9_]*)\s*=", line)
            if key and section:
                shown.setdefault(section, set()).add(key.group(1))
    return shown


def test_every_accepted_key_is_shown_in_readme_with_its_section() -> None:
    shown = readme_toml_keys()
    missing = sorted(f"[{section}] {key}" for section, keys in accepted_keys().items()
                     for key in keys if key not in shown.get(section, set()))
    assert missing == []


def test_every_accepted_key_is_in_the_contracts_table() -> None:
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `\[(\w+)\]` \| (.*) \|$", CONTRACT, re.MULTILINE)}
    missing = sorted(f"[{section}] {key}" for section, keys in accepted_keys().items()
                     for key in keys if f"`{key}`" not in rows.get(section, ""))
    assert missing == []


def test_readme_shows_no_key_the_code_does_not_accept() -> None:
    accepted = accepted_keys()
    unknown = sorted(f"[{section}] {key}" for section, keys in readme_toml_keys().items()
                     for key in keys if section in accepted and key not in accepted[section])
    assert unknown == []


def test_the_mail_templates_section_names_every_template() -> None:
    section = README.split("## Mail templates", 1)[1].split("\n## ", 1)[0]
    missing = sorted(p.stem for p in (ROOT / "templates").glob("*.txt") if f"`{p.stem}`" not in section)
    assert missing == []
