"""Operations (issue 14): the contrib/ systemd unit and cron file name real commands and
options; ``--log-format json`` gives one object per line with the text lines' fields and
no personal data; ``[service] heartbeat_url`` is pinged after each good pass and only then,
against a loopback HTTP server."""

from __future__ import annotations

import configparser
import json
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def dkimbot(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bot", *args], cwd=cwd or ROOT, capture_output=True, text=True,
                          timeout=120, check=False)


def parses(command: str) -> None:
    """The dkimbot part of a command line is accepted by dkimbot's own parser."""
    from bot.app.cli import build_parser

    words = shlex.split(command.replace("$(date +\\%F)", "DATE"))
    start = next(i for i, w in enumerate(words) if w == "dkimbot" or w.endswith("bin/dkimbot"))
    argv = []
    for w in words[start + 1:]:
        if w in ("&&", ";", "|") or w.startswith("2>"):
            break
        argv.append(w)
    build_parser().parse_args(argv)  # SystemExit (a failure here) for a wrong command or option


def test_the_systemd_unit_runs_the_daemon_as_an_unprivileged_user() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(ROOT / "contrib" / "systemd" / "dkimbot.service")
    assert {"Unit", "Service", "Install"} <= set(unit.sections())
    service = unit["Service"]
    assert service["User"] not in ("", "root")
    assert service["KillSignal"] == "SIGTERM"
    exec_start = service["ExecStart"]
    assert exec_start.split()[-1] == "daemon" and "--log-format json" in exec_start
    parses(exec_start)


def test_the_cron_file_lines_are_valid_and_name_real_commands() -> None:
    jobs = [line for line in (ROOT / "contrib" / "cron" / "dkimbot").read_text().splitlines()
            if line.strip() and not line.startswith("#") and "=" not in line.split()[0]]
    assert len(jobs) == 2
    for line in jobs:
        fields = line.split(None, 6)
        assert all(re.fullmatch(r"[\d*/,-]+", f) for f in fields[:5]), line
        assert fields[5] == "dkimbot", line  # the user
        parses(fields[6])
    assert any("run --once" in j for j in jobs) and any(" backup " in j for j in jobs)


def test_json_logs_have_the_text_fields_and_no_personal_data(tmp_path: Path) -> None:
    text = dkimbot("demo", cwd=tmp_path)
    as_json = dkimbot("--log-format", "json", "demo", cwd=tmp_path)
    assert text.returncode == 0 and as_json.returncode == 0, as_json.stderr
    text_lines = text.stderr.splitlines()
    objects = [json.loads(line) for line in as_json.stderr.splitlines()]  # every line is one object
    assert objects and len(objects) == len(text_lines)

    def shape(s: str) -> str:  # ids, keys and numbers differ between two runs
        return re.sub(r"[0-9a-f]{8,}|\d+", "N", s)

    for obj, line in zip(objects, text_lines, strict=True):
        assert set(obj) <= {"time", "level", "message", "case", "traceback"}
        _, _, level, message = line.split(" ", 3)  # "<date> <time> <level> <message>"
        assert obj["level"] == level and shape(obj["message"]) == shape(message)
        if obj["message"].startswith("DKIM-"):
            assert obj["case"] == obj["message"].split(":")[0]
    assert any("case" in o for o in objects)
    for needle in ("tanaka@", "info@ryokan", "田中", "PRIVATE KEY"):
        assert needle not in as_json.stderr


class Hits:
    def __init__(self) -> None:
        self.paths: list[str] = []
        self.status = 200


@pytest.fixture
def monitor() -> Iterator[tuple[str, Hits]]:
    """A Healthchecks stand-in on loopback: records each GET."""
    hits = Hits()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.paths.append(self.path)
            self.send_response(hits.status)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hits
    server.shutdown()
    server.server_close()


def config(tmp_path: Path, heartbeat: str, **intake: object) -> Path:
    service = f'[service]\nheartbeat_url = "{heartbeat}"\n' if heartbeat else ""
    lines = [service, f'[state]\ndir = "{tmp_path / "state"}"\n']
    if intake:
        lines.append("[intake]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in intake.items()))
    path = tmp_path / "c.toml"
    path.write_text("\n".join(lines))
    return path


def test_the_heartbeat_is_pinged_after_each_good_pass(tmp_path: Path, monitor: tuple[str, Hits]) -> None:
    url, hits = monitor
    cfg = config(tmp_path, f"{url}/ping/0b9c-secret-token")
    for expected in (1, 2):
        r = dkimbot("--config", str(cfg), "run", "--once", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert hits.paths == ["/ping/0b9c-secret-token"] * expected


def test_a_failing_pass_sends_no_heartbeat(tmp_path: Path, monitor: tuple[str, Hits]) -> None:
    from servers import free_port

    url, hits = monitor
    cfg = config(tmp_path, f"{url}/ping/x", kind="imap", host="127.0.0.1", port=free_port(udp=False), tls="none",
                 username="u", password="p", timeout=2.0)
    r = dkimbot("--config", str(cfg), "run", "--once", cwd=tmp_path)
    assert r.returncode == 1 and "IMAP" in r.stderr
    assert hits.paths == []  # silence is what tells the monitor


def test_with_json_logs_the_commands_own_error_lines_are_json_too(tmp_path: Path) -> None:
    from servers import free_port

    cfg = config(tmp_path, "", kind="imap", host="127.0.0.1", port=free_port(udp=False), tls="none",
                 username="u", password="p", timeout=2.0)
    r = dkimbot("--config", str(cfg), "--log-format", "json", "run", "--once", cwd=tmp_path)
    assert r.returncode == 1
    objects = [json.loads(line) for line in r.stderr.splitlines()]  # not one plain line
    errors = [o for o in objects if o["level"] == "ERROR" and o["message"].startswith("dkimbot: IMAP 127.0.0.1")]
    assert errors and set(errors[0]) == {"time", "level", "message"}


def test_a_dead_monitor_does_not_fail_the_pass_and_its_token_stays_out_of_the_log(
        tmp_path: Path, monitor: tuple[str, Hits]) -> None:
    url, hits = monitor
    hits.status = 500
    cfg = config(tmp_path, f"{url}/ping/secret-token-123")
    r = dkimbot("--config", str(cfg), "run", "--once", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert hits.paths == ["/ping/secret-token-123"]
    assert "heartbeat: 127.0.0.1" in r.stderr and "answered 500" in r.stderr
    assert "secret-token-123" not in r.stderr


def test_a_heartbeat_url_that_is_not_http_is_a_config_error(tmp_path: Path) -> None:
    cfg = config(tmp_path, "file:///etc/passwd")
    r = dkimbot("--config", str(cfg), "run", "--once", cwd=tmp_path)
    assert r.returncode == 2 and "heartbeat_url must be an http" in r.stderr
