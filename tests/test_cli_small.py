"""Small command-line answers a new user meets first: a malformed domain for
``dkimbot reports`` is named (exit 2, one line), ``reports`` says plainly when no
aggregate reports are being collected, and every argument has help text."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from bot.app.cli import build_parser


def _dkimbot(tmp_path: Path, extra: str, *args: str) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[state]\ndir = "{tmp_path / "state"}"\n{extra}', encoding="utf-8")
    return subprocess.run([sys.executable, "-m", "bot", "--config", str(cfg), *args],
                          capture_output=True, text=True, timeout=120, check=False)


def test_reports_for_a_malformed_domain_is_exit_2_and_one_line(tmp_path: Path) -> None:
    r = _dkimbot(tmp_path, "", "reports", "bad domain")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "'bad domain' is not a domain name" in r.stderr


def test_reports_says_when_reports_are_not_collected(tmp_path: Path) -> None:
    r = _dkimbot(tmp_path, "", "reports", "hotel-sakura.test")
    assert r.returncode == 0
    assert "DMARC aggregate reports are not being collected" in r.stderr
    assert "hotel-sakura.test: 0 messages" in r.stdout
    collected = tmp_path / "collected"
    collected.mkdir()
    r = _dkimbot(collected, '[reports]\nkind = "maildir"\n', "reports", "hotel-sakura.test")
    assert r.returncode == 0, r.stderr
    assert "not being collected" not in r.stderr


def test_every_argument_of_every_command_has_help_text() -> None:
    parser = build_parser()
    missing = []

    def walk(p: argparse.ArgumentParser, path: str) -> None:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            elif not action.help:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")

    walk(parser, "dkimbot")
    assert missing == []
