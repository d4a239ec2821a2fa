"""``dkimbot check`` as a one-off command: what it says when the name servers do not
answer. Areas it could not ask are shown as not checked (never "OK"), and a DNS error
asks the person to try again instead of promising an automatic recheck that a one-off
command never makes. The name server is a closed port on loopback: nothing answers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bot.checks.dnscheck import format_report_table
from bot.core.dnsresults import AreaResult, CheckReport, Diagnosis


def _check(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[dns]\nnameservers = ["127.0.0.1"]\nport = 9\ntimeout = 0.3\n'
                   f'[state]\ndir = "{tmp_path / "state"}"\n', encoding="utf-8")
    return subprocess.run([sys.executable, "-m", "bot", "--config", str(cfg), "check", *args],
                          capture_output=True, text=True, timeout=120, check=False)


def test_unreachable_dns_shows_alignment_as_not_checked_and_asks_to_try_again(tmp_path: Path) -> None:
    r = _check(tmp_path, "nonexistent.example")
    assert r.returncode == 2, r.stdout + r.stderr  # failing only because DNS did not answer
    rows = {line.split()[0]: line for line in r.stdout.splitlines() if line and not line.startswith(" ")}
    assert "OK" not in rows["alignment"].split()
    assert rows["alignment"].split()[1] == "SKIPPED"
    assert "DNS ERROR" in rows["dkim"] and "DNS ERROR" in rows["dmarc"]
    assert "もう一度お試しください" in r.stdout and "自動的に再確認" not in r.stdout
    assert "Traceback" not in r.stderr


def test_the_json_marks_a_skipped_area_and_keeps_the_shape_of_the_others(tmp_path: Path) -> None:
    r = _check(tmp_path, "nonexistent.example", "--json")
    data = json.loads(r.stdout)
    assert data["alignment"]["skipped"] is True
    assert data["alignment"]["diagnoses"] == [] and "ok" in data["alignment"]
    assert "skipped" not in data["dkim"] and data["dkim"]["ok"] is False
    messages = [d["message"] for d in data["dkim"]["diagnoses"] + data["dmarc"]["diagnoses"]]
    assert messages and all("もう一度お試しください" in m and "自動的に再確認" not in m for m in messages)


def test_the_table_never_calls_a_skipped_area_ok() -> None:
    skipped = AreaResult(True, [], {"skipped": "asked once the DKIM record is right"})
    dkim = AreaResult(False, [Diagnosis("dkim_quoted", "引用符が含まれています。")], {})
    table = format_report_table(CheckReport(dkim, skipped, skipped, skipped))
    for area in ("dmarc", "spf", "alignment"):
        [row] = [line for line in table.splitlines() if line.startswith(area)]
        assert row.split()[1] == "SKIPPED" and "asked once the DKIM record is right" in row
