"""One writer for the tests' dkimbot configs on the real test servers.

Test modules used to carry their own copy of the same TOML template (IMAP on the test
Dovecot, SMTP to the sink, DNS at the test BIND); they now build it from these sections
and change only what they need. ``None`` leaves a key out (so the bot's default applies),
exactly as the hand-written templates did by not naming it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conftest import SUPPORT_ADDRESS

STAFF = "staff@489ban.net"

Sections = dict[str, dict[str, Any]]


def toml_value(value: Any) -> str:
    """A TOML literal for the values test configs use (str, bool, int, float, lists)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a TOML basic string
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML literal for {value!r}")


def write_toml(path: Path, sections: Sections, raw: dict[str, str] | None = None) -> Path:
    """Write ``sections`` (keys whose value is None left out), then any raw lines per section."""
    raw = raw or {}
    lines: list[str] = []
    for name in dict.fromkeys([*sections, *raw]):
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in sections.get(name, {}).items() if v is not None]
        if raw.get(name):
            lines.append(raw[name])
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def service(saas_zone: str | None = None, *, dmarc_rua: bool = True, **extra: Any) -> dict[str, Any]:
    """[service]: the support address, staff in Cc, and the SaaS zone's SPF include/DMARC rua."""
    section: dict[str, Any] = {"support_address": SUPPORT_ADDRESS, "staff_cc": [STAFF]}
    if saas_zone is not None:
        section.update(sending_ips=["203.0.113.10"], spf_include=f"_spf.{saas_zone}")
        if dmarc_rua:
            section["dmarc_rua"] = f"mailto:dmarc@{saas_zone}"
    return {**section, **extra}


def imap(dovecot: Any, username: str = SUPPORT_ADDRESS, *, password_env: str | None = "TEST_IMAP_PASSWORD",
         timeout: float | None = 10, **extra: Any) -> dict[str, Any]:
    """[intake] on the test Dovecot, plain IMAP on loopback."""
    return {"kind": "imap", "host": dovecot.host, "port": dovecot.port, "tls": "none",
            "username": username, "password_env": password_env, "folder": "INBOX",
            "timeout": timeout, **extra}


def smtp_out(smtp: Any, *, timeout: float | None = 10) -> dict[str, Any]:
    """[outbound] to the test SMTP sink."""
    return {"kind": "smtp", "host": smtp.host, "port": smtp.port, "tls": "none", "timeout": timeout}


def dns(bind: Any, *, port: int | None = None, timeout: float | None = 2.0, **extra: Any) -> dict[str, Any]:
    """[dns] at the test BIND (its port for every query, authoritative ones too)."""
    return {"nameservers": [bind.host], "port": port or bind.port, "timeout": timeout, **extra}


def server_config(tmp_path: Path, dovecot: Any, bind: Any, smtp: Any, *, saas_zone: str | None,
                  username: str = SUPPORT_ADDRESS, io_timeout: float = 10, dns_timeout: float = 2.0,
                  dns_port: int | None = None, keys: dict[str, Any] | None = None,
                  schedule: dict[str, Any] | None = None, service_extra: dict[str, Any] | None = None,
                  intake_extra: dict[str, Any] | None = None, raw: dict[str, str] | None = None,
                  name: str = "dkimbot.toml") -> Path:
    """The whole config on Dovecot + BIND + the SMTP sink, state under ``tmp_path/state``."""
    sections: Sections = {
        "service": service(saas_zone, **(service_extra or {})),
        "intake": imap(dovecot, username, timeout=io_timeout, **(intake_extra or {})),
        "outbound": smtp_out(smtp, timeout=io_timeout),
        "dns": dns(bind, port=dns_port, timeout=dns_timeout),
    }
    if keys:
        sections["keys"] = keys
    sections["schedule"] = schedule or {}
    sections["state"] = {"dir": str(tmp_path / "state")}
    return write_toml(tmp_path / name, sections, raw)
