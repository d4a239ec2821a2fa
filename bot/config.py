"""Configuration: the TOML contract of SPEC §7, resolved into typed dataclasses.

Without a file the embedded default applies: a Maildir inbox and an outbox directory
under the state dir, the system resolver. Secrets come from environment variables
named in the file (``password_env``, ``passphrase_env``, ``tsig_secret_env``), never from
the file itself unless the operator writes them there; a named variable that is not set
is a ConfigError. Secret fields are left out of ``repr`` so a logged config shows none.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

# Free-mail and carrier domains: a DKIM key for these can never be published by a
# facility, so a request naming one is rejected with an explanation (SPEC §2).
DEFAULT_FREEMAIL_DOMAINS = (
    "gmail.com", "googlemail.com", "yahoo.co.jp", "ymail.ne.jp", "yahoo.com",
    "outlook.com", "outlook.jp", "hotmail.com", "hotmail.co.jp", "live.jp", "live.com",
    "msn.com", "icloud.com", "me.com", "mac.com", "aol.com", "aol.jp",
    "docomo.ne.jp", "ezweb.ne.jp", "au.com", "softbank.ne.jp", "i.softbank.jp",
    "disney.ne.jp", "ymobile.ne.jp", "rakuten.jp", "excite.co.jp", "nifty.com",
    "biglobe.ne.jp", "so-net.ne.jp", "ocn.ne.jp", "goo.jp", "mail.goo.ne.jp", "zoho.com",
    "proton.me", "protonmail.com", "gmx.com", "mail.com", "yandex.com", "naver.com",
)


class ConfigError(Exception):
    """The configuration cannot be used; the message is one line for the operator."""


@dataclass
class ServiceConfig:
    support_address: str = "support@489ban.net"
    staff_cc: list[str] = field(default_factory=lambda: ["staff@489ban.net"])
    sending_ips: list[str] = field(default_factory=lambda: ["203.0.113.10"])
    spf_include: str = "_spf.489ban.net"
    dmarc_rua: str = ""
    notify_address: str = "notify@489ban.net"
    own_domains: list[str] = field(default_factory=lambda: ["489ban.net"])
    freemail_domains: list[str] = field(default_factory=lambda: list(DEFAULT_FREEMAIL_DOMAINS))
    saas_name: str = "予約番"
    company_name: str = "予約番サポート"
    cc_contact: bool = True
    max_mails_per_case_per_day: int = 5
    # At most this many facility mails to one address in 24 h, whatever the case (0: no
    # limit); staff are never limited. See bot/flows/ratelimit.py.
    max_mails_per_address_per_day: int = 10
    # Staff-edited mail templates: a file here replaces the shipped one of the same name;
    # the others stay the shipped ones. Empty: only the shipped templates. A relative
    # path is relative to the config file.
    templates_dir: str = ""
    # A dead-man's switch: GET this URL after every pass without a server error
    # (Healthchecks-style monitors alert when the pings stop). Empty: none.
    heartbeat_url: str = ""
    # A stranger can mail support@ (bot/flows/confirm.py, bot/core/authority.py): new cases
    # (and so keys) opened per sender address per 24 h (0: no limit), and staff mails per
    # hour before the rest wait for the digest (escalations of one case within an hour
    # are merged into one mail).
    max_new_cases_per_sender_per_day: int = 20
    max_staff_mails_per_hour: int = 20
    # Mails a stranger's request alone can cause (reply, reminders, confirmation mail) on
    # cases nobody proved, sent per hour, all senders together (0: no cap): a flood from
    # many forged From addresses must not make the bot mail them all (bot/flows/replycap.py).
    max_unproven_mails_per_hour: int = 120


@dataclass
class IntakeConfig:
    kind: str = "maildir"
    host: str = "127.0.0.1"
    port: int = 993
    tls: str = "ssl"
    username: str = ""
    password: str = field(default="", repr=False)
    folder: str = "INBOX"
    maildir: str = "inbox"  # relative to the state dir
    timeout: float = 30.0
    max_message_bytes: int = 20 * 1024 * 1024
    # A mail naming more facilities than this goes to staff instead of making that many
    # keys at once (a pasted spreadsheet, or a hostile mail).
    max_facilities_per_mail: int = 10
    # The decoded text a request is read from is cut here (a crafted mail cannot make the
    # parser work for minutes), and one message may take at most this long to decide;
    # longer counts as a failure (staff after 3) and the pass moves on.
    max_text_chars: int = 100_000
    message_time_budget_seconds: float = 20.0
    header_batch: int = 500
    # The daemon waits in IMAP IDLE on the folder (when the server offers it) and starts
    # a pass as soon as mail arrives; polling every poll_interval_seconds stays as well.
    idle: bool = True
    # RFC 2177: IDLE is re-issued before 29 minutes (servers may log out an idle client at 30).
    idle_renew_seconds: float = 1500.0


@dataclass
class OutboundConfig:
    kind: str = "directory"
    host: str = "127.0.0.1"
    port: int = 587
    tls: str = "starttls"
    username: str = ""
    password: str = field(default="", repr=False)
    directory: str = "outbox"  # relative to the state dir
    timeout: float = 30.0


@dataclass
class DnsConfig:
    nameservers: list[str] = field(default_factory=list)
    port: int = 53
    timeout: float = 3.0
    # Name servers run by the SaaS operator: domains delegated to them get the
    # simplified flow (records published by RFC 2136 update).
    managed_nameservers: list[str] = field(default_factory=list)
    tsig_key_name: str = ""
    tsig_secret: str = field(default="", repr=False)
    tsig_algorithm: str = "hmac-sha256"
    update_server: str = ""


@dataclass
class KeysConfig:
    algorithm: str = "rsa"
    bits: int = 2048
    ed25519: bool = False
    selector: str = "yoyakuban{YYYYMM}"
    passphrase: str | None = field(default=None, repr=False)


@dataclass
class SignerConfig:
    keytable: str = "signer/KeyTable"
    signingtable: str = "signer/SigningTable"
    keys_dir: str = "signer/keys"
    reload_command: str = ""
    reload_timeout: float = 30.0
    # Who the signer (OpenDKIM) runs as: installed key files get this owner/group/mode.
    key_owner: str = ""  # user name or uid; empty: the bot's own user
    key_group: str = ""  # group name or gid; when set, keys_dir becomes 0750 for that group
    key_mode: int = 0o600


@dataclass
class ScheduleConfig:
    check_interval_seconds: int = 300
    reminder_after_hours: float = 72
    max_reminders: int = 2
    poll_interval_seconds: int = 60
    # After completion: how long a vanished/changed DKIM record is tolerated before its
    # key leaves the signer (SPEC §8; SES waits similarly), so mail never carries a
    # signature that must fail, but a short DNS mishap does not stop signing.
    signing_grace_days: float = 5
    # Slower checks the longer a case waits: [[after_hours, every_seconds], ...], e.g.
    # [[2, 1200], [24, 3600]]; empty: the built-in steps (bot/core/cases.py next_check_delay).
    check_steps: list[list[float]] = field(default_factory=list)
    # The daily staff digest (bot/flows/digest.py): sent by the first pass at or after this UTC
    # hour (0 = 09:00 in Japan), the first once the bot has run a full day; -1: never, only
    # `dkimbot digest`. A case waiting stuck_after_days in one state is listed as stuck.
    digest_hour: int = 0
    stuck_after_days: float = 7
    # The simplified flow waits for the admin address to confirm (bot/flows/confirm.py):
    # one reminder after this many hours, expiry (staff told) after twice as long.
    confirm_wait_hours: float = 72


@dataclass
class ProofConfig:
    """SPEC §8 end-to-end proof (bot/flows/proof.py): off unless ``enabled``.

    A signed probe goes From ``from_localpart@<facility domain>`` To ``address``; the bot
    reads it back from that mailbox (IMAP, read-only) and reports the receiver's verdict.
    """

    enabled: bool = False
    address: str = ""              # a mailbox the operator owns at a big receiver (Gmail, Yahoo)
    from_localpart: str = "dkimbot-proof"
    # Only results from this receiver are trusted (RFC 8601 §5); empty: the topmost
    # Authentication-Results header, the one the last hop (the receiver) added.
    authserv_id: str = ""
    wait_minutes: float = 30.0
    notify_facility: bool = False  # also mail the facility the result (proof_report.txt)
    imap_host: str = "127.0.0.1"
    imap_port: int = 993
    imap_tls: str = "ssl"
    imap_username: str = ""
    imap_password: str = field(default="", repr=False)
    imap_folder: str = "INBOX"
    imap_timeout: float = 30.0


@dataclass
class ReportsConfig:
    """DMARC aggregate reports (rua) mailbox (bot/flows/dmarcreports.py): off unless the
    [reports] section is present. Read-only like the support mailbox."""

    enabled: bool = False
    kind: str = "imap"             # "imap" or "maildir"
    host: str = "127.0.0.1"
    port: int = 993
    tls: str = "ssl"
    username: str = ""
    password: str = field(default="", repr=False)
    folder: str = "INBOX"
    path: str = "dmarc-reports"    # the Maildir, relative to the state dir
    timeout: float = 30.0
    max_message_bytes: int = 10 * 1024 * 1024   # a larger mail is not fetched (counted)
    max_report_bytes: int = 20 * 1024 * 1024    # decompressed XML per report (zip/gzip bombs)
    facility_report_days: int = 14              # the facility's report mail, days after completion
    quarantine_min_messages: int = 100          # p=quarantine advised only with this much mail in 30 days
    # The rua mailbox's own receiving server (its Authentication-Results authserv-id): when
    # set, a report mail whose sender it did not authenticate (aligned DKIM or DMARC pass)
    # is kept but marked; empty: the sender is judged by its From domain only.
    authserv_id: str = ""


@dataclass
class WebConfig:
    """The staff site (``dkimbot web``, bot/web/): where it listens and how it trusts a proxy.

    It is meant to sit behind the company's reverse proxy with TLS. The session cookie
    gets ``Secure`` when ``secure_cookies`` is on, or when a request comes from one of
    ``trusted_proxies`` with ``X-Forwarded-Proto: https`` (anyone else could send that
    header, so it is believed from those addresses only).
    """

    host: str = "127.0.0.1"
    port: int = 8025
    secure_cookies: bool = False
    trusted_proxies: list[str] = field(default_factory=list)
    session_hours: float = 12.0        # a session ends this long after login, however busy
    session_idle_minutes: float = 30.0  # ... and this long after its last page (0: no idle limit)
    page_size: int = 100


@dataclass
class RegistryConfig:
    """The SaaS's own list of facilities (bot/adapters/registry.py): a CSV with an
    ``admin_email`` column (``facility`` optional). A request whose admin address is
    listed needs no confirmation mail; empty: no registry."""

    file: str = ""


@dataclass
class Config:
    service: ServiceConfig = field(default_factory=ServiceConfig)
    intake: IntakeConfig = field(default_factory=IntakeConfig)
    outbound: OutboundConfig = field(default_factory=OutboundConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    keys: KeysConfig = field(default_factory=KeysConfig)
    signer: SignerConfig = field(default_factory=SignerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    proof: ProofConfig = field(default_factory=ProofConfig)
    reports: ReportsConfig = field(default_factory=ReportsConfig)
    web: WebConfig = field(default_factory=WebConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    state_dir: Path = Path("state")
    # The override directory of [service] templates_dir (None: the shipped templates only).
    templates_dir: Path | None = None
    source: str = "embedded default"

    def state_path(self, relative: str) -> Path:
        """Resolve a path from the config: absolute stays, relative is under the state dir."""
        p = Path(relative)
        if p.is_absolute():
            return p
        # "state/signer/KeyTable" in the SPEC example is relative to the working dir
        # when it already names the state dir; otherwise it lives inside it.
        if len(p.parts) > 1 and p.parts[0] == self.state_dir.name:
            return self.state_dir.parent / p
        return self.state_dir / p

    @property
    def bot_domain(self) -> str:
        return self.service.support_address.rpartition("@")[2].lower()


_SECTIONS: dict[str, type] = {
    "service": ServiceConfig,
    "intake": IntakeConfig,
    "outbound": OutboundConfig,
    "dns": DnsConfig,
    "keys": KeysConfig,
    "signer": SignerConfig,
    "schedule": ScheduleConfig,
    "proof": ProofConfig,
    "reports": ReportsConfig,
    "web": WebConfig,
    "registry": RegistryConfig,
}


#: The keys of [state], read by ``load_config`` itself (no dataclass of their own).
STATE_KEYS = ("dir", "templates_dir")


def accepted_keys() -> dict[str, set[str]]:
    """Every key a config file may hold, per section: the fields of each section's
    dataclass, the ``*_env`` names of its secret, and [state]'s. Derived, not listed,
    so the documentation test (tests/test_config_docs.py) sees every key added."""
    keys = {section: {f.name for f in fields(cls)} for section, cls in _SECTIONS.items()}
    for section, (_, env_key) in SECRET_KEYS.items():
        keys[section].add(env_key)
    return {**keys, "state": set(STATE_KEYS)}  # the [state] table, not a case's state


#: Names of the environment variables the loaded configs read secrets from: a child
#: process (``[signer] reload_command``) gets an environment without them.
SECRET_ENV_NAMES: set[str] = set()


def child_environment() -> dict[str, str]:
    """os.environ without the bot's secrets: every ``DKIMBOT_*`` variable and every
    variable a ``*_env`` key named (a reload command has no business with them)."""
    return {k: v for k, v in os.environ.items()
            if not k.upper().startswith("DKIMBOT_") and k not in SECRET_ENV_NAMES}


def _secret(section: str, raw: dict[str, Any], key: str, env_key: str) -> str | None:
    """A secret is given literally or by the name of an environment variable.

    A ``*_env`` naming a variable that is not set is an error, not "no secret": a cron
    job started without the variable would otherwise quietly log in without a password
    or, for [keys] passphrase_env, store new private keys unencrypted. A literal value
    written next to the ``*_env`` key stays the operator's explicit fallback.
    """
    if env_key in raw:
        name = raw.pop(env_key)
        if not isinstance(name, str) or not name:
            raise ConfigError(f"[{section}] {env_key} must be the name of an environment variable")
        SECRET_ENV_NAMES.add(name)
        value = os.environ.get(name)
        if value == "":
            # An empty passphrase would store keys unencrypted just as an unset one would.
            raise ConfigError(f"[{section}] {env_key} names the environment variable {name}, which is empty")
        if value is None and key in raw:
            return str(raw.pop(key))
        raw.pop(key, None)
        if value is None:
            raise ConfigError(f"[{section}] {env_key} names the environment variable {name}, which is not set")
        return value
    if key in raw:
        return str(raw.pop(key))
    return None


#: The secret of each section: its field (also accepted literally, for tests and the demo)
#: and the ``*_env`` key naming the environment variable that holds it (preferred).
SECRET_KEYS: dict[str, tuple[str, str]] = {
    "intake": ("password", "password_env"),
    "outbound": ("password", "password_env"),
    "reports": ("password", "password_env"),
    "proof": ("imap_password", "imap_password_env"),
    "keys": ("passphrase", "passphrase_env"),
    "dns": ("tsig_secret", "tsig_secret_env"),
}


def _build(section: str, cls: type, raw: dict[str, Any]) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"[{section}] must be a table")
    raw = dict(raw)
    extra: dict[str, Any] = {}
    if section in SECRET_KEYS:
        key, env_key = SECRET_KEYS[section]
        # An unset passphrase is None (keys stored unencrypted), an unset password "".
        extra[key] = _secret(section, raw, key, env_key) or (None if section == "keys" else "")
    defaults = cls()
    known = set(vars(defaults))
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(f"[{section}] unknown key {key!r}")
        expected = type(getattr(defaults, key))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if getattr(defaults, key) is not None and not isinstance(value, expected):
            raise ConfigError(
                f"[{section}] {key} must be {expected.__name__}, got {type(value).__name__}"
            )
        extra[key] = value
    return cls(**extra)


def _validate(cfg: Config) -> None:
    if cfg.intake.kind not in ("imap", "maildir"):
        raise ConfigError(f"[intake] kind must be 'imap' or 'maildir', got {cfg.intake.kind!r}")
    if cfg.outbound.kind not in ("smtp", "directory"):
        raise ConfigError(f"[outbound] kind must be 'smtp' or 'directory', got {cfg.outbound.kind!r}")
    for name, tls in (("intake", cfg.intake.tls), ("outbound", cfg.outbound.tls)):
        if tls not in ("ssl", "starttls", "none"):
            raise ConfigError(f"[{name}] tls must be 'ssl', 'starttls' or 'none', got {tls!r}")
    if cfg.keys.algorithm not in ("rsa", "ed25519"):
        raise ConfigError(f"[keys] algorithm must be 'rsa' or 'ed25519', got {cfg.keys.algorithm!r}")
    if cfg.keys.algorithm == "rsa" and cfg.keys.bits not in (1024, 2048, 3072, 4096):
        raise ConfigError(f"[keys] bits must be 1024, 2048, 3072 or 4096, got {cfg.keys.bits}")
    if cfg.service.heartbeat_url and not re.match(r"https?://[^/\s]+", cfg.service.heartbeat_url):
        raise ConfigError("[service] heartbeat_url must be an http:// or https:// URL, "
                          f"got {cfg.service.heartbeat_url!r}")
    if "@" not in cfg.service.support_address:
        raise ConfigError("[service] support_address must be a mail address")
    for step in cfg.schedule.check_steps:
        if (not isinstance(step, list) or len(step) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in step)):
            raise ConfigError(f"[schedule] check_steps items must be [after_hours, every_seconds], got {step!r}")
    if not (1 <= cfg.intake.idle_renew_seconds <= 29 * 60):
        raise ConfigError("[intake] idle_renew_seconds must be between 1 and 1740 (RFC 2177: "
                          f"re-issue IDLE before 29 minutes), got {cfg.intake.idle_renew_seconds}")
    if not (0 < cfg.dns.port < 65536):
        raise ConfigError(f"[dns] port out of range: {cfg.dns.port}")
    _validate_proof(cfg.proof)
    _validate_reports(cfg.reports)
    if not (0 < cfg.web.port < 65536):
        raise ConfigError(f"[web] port out of range: {cfg.web.port}")
    if cfg.web.session_hours <= 0 or cfg.web.session_idle_minutes < 0 or not (1 <= cfg.web.page_size <= 10000):
        raise ConfigError("[web] session_hours must be more than 0, session_idle_minutes 0 or more "
                          "and page_size 1..10000")


def _validate_reports(rep: ReportsConfig) -> None:
    if rep.kind not in ("imap", "maildir"):
        raise ConfigError(f"[reports] kind must be 'imap' or 'maildir', got {rep.kind!r}")
    if rep.tls not in ("ssl", "starttls", "none"):
        raise ConfigError(f"[reports] tls must be 'ssl', 'starttls' or 'none', got {rep.tls!r}")
    for name in ("facility_report_days", "quarantine_min_messages", "max_message_bytes", "max_report_bytes"):
        if getattr(rep, name) <= 0:
            raise ConfigError(f"[reports] {name} must be more than 0, got {getattr(rep, name)}")
    if rep.enabled and rep.kind == "imap" and not rep.username:
        raise ConfigError("[reports] username must name the mailbox the DMARC reports arrive in")


def _validate_proof(proof: ProofConfig) -> None:
    if proof.imap_tls not in ("ssl", "starttls", "none"):
        raise ConfigError(f"[proof] imap_tls must be 'ssl', 'starttls' or 'none', got {proof.imap_tls!r}")
    if proof.wait_minutes <= 0:
        raise ConfigError(f"[proof] wait_minutes must be more than 0, got {proof.wait_minutes}")
    if not proof.enabled:
        return
    if "@" not in proof.address:
        raise ConfigError("[proof] address must be a mail address when the proof is enabled")
    if not proof.imap_username:
        raise ConfigError("[proof] imap_username must name the mailbox the probes are read from")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", proof.from_localpart):
        raise ConfigError(f"[proof] from_localpart must be a plain local part, got {proof.from_localpart!r}")


def load_config(path: str | Path | None = None, *, state_dir: str | Path | None = None) -> Config:
    """Load ``path`` (TOML) or the embedded default; raise ConfigError with one clear line."""
    raw: dict[str, Any] = {}
    source = "embedded default"
    if path is not None:
        p = Path(path)
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {p}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {p}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"invalid TOML in {p}: {exc}") from None
        source = str(p)
    cfg = Config(source=source)
    for section, cls in _SECTIONS.items():
        if section in raw:
            table = raw.pop(section)
            setattr(cfg, section, _build(section, cls, table))
            if section == "reports" and "enabled" not in table:
                cfg.reports.enabled = True  # the section's presence turns it on
    state = raw.pop("state", {})
    if not isinstance(state, dict):
        raise ConfigError("[state] must be a table")
    state = dict(state)
    cfg.state_dir = Path(state_dir or state.pop("dir", "state"))
    # [state] templates_dir is the older spelling of [service] templates_dir, still read.
    if "templates_dir" in state:
        cfg.templates_dir = Path(state.pop("templates_dir"))
    if cfg.service.templates_dir:
        override = Path(cfg.service.templates_dir).expanduser()
        if not override.is_absolute() and path is not None:
            override = Path(path).resolve().parent / override
        cfg.templates_dir = override
    if cfg.templates_dir is not None and not cfg.templates_dir.is_dir():
        raise ConfigError(f"[service] templates_dir is not a directory: {cfg.templates_dir}")
    for key in list(state) + list(raw):
        raise ConfigError(f"unknown config key or section: {key!r}")
    _validate(cfg)
    return cfg
