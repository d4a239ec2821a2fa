"""``dkimbot doctor``: before go-live, every connection and permission the bot needs,
checked against the real servers, one line each with ✔/✖ and the fix.

Nothing is changed anywhere: IMAP is opened with EXAMINE (read-only), SMTP gets EHLO,
STARTTLS and AUTH but no MAIL FROM, the TSIG key is tried with an RFC 2136 update that
holds only a prerequisite ("the zone's SOA exists") and no change, the signer's files are
opened for appending and closed unwritten (a temporary file is made and removed beside
them), stored keys are decrypted in memory only. The reload command is run, since a
signer that cannot be reloaded is what the operator needs to know before go-live.

The system clock is compared with what a server said its time was: the time in a TSIG
-signed DNS answer (BIND signs its answer with its own clock) and a date in the SMTP
greeting when the server gives one (Sendmail, Exim do; Postfix, aiosmtpd do not).
"""

from __future__ import annotations

import logging
import os
import re
import smtplib
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TextIO

from bot.app.doctorfiles import (
    Finding,
    check_keys,
    check_signer,
    check_state_dir,
    writable_dir_finding,
)
from bot.config import Config

log = logging.getLogger("dkimbot")

# More than this between our clock and a server's is worth fixing: DKIM signatures carry
# t= and x=, TSIG refuses beyond 300 s, and the schedule's "due" times drift.
MAX_CLOCK_SKEW_SECONDS = 60.0


@dataclass
class Doctor:
    """Runs the checks in order; the servers' clock readings are gathered on the way."""

    cfg: Config
    clocks: list[tuple[str, datetime]] = field(default_factory=list)

    def run(self) -> list[Finding]:
        checks: list[tuple[str, Callable[[], list[Finding]]]] = [
            ("config", self.check_config),
            ("IMAP", self.check_intake),
            ("proof mailbox", self.check_proof),
            ("report mailbox", self.check_reports),
            ("SMTP", self.check_smtp),
            ("DNS", self.check_resolvers),
            ("name servers", self.check_managed_servers),
            ("TSIG", self.check_tsig),
            ("signer", lambda: check_signer(self.cfg)),
            ("keys", lambda: check_keys(self.cfg)),
            ("state dir", lambda: check_state_dir(self.cfg)),
            ("clock", self.check_clock),
        ]
        findings: list[Finding] = []
        for name, check in checks:
            try:
                findings.extend(check())
            except Exception as exc:  # a doctor reports, it never stops half-way
                log.debug("doctor: %s check failed unexpectedly", name, exc_info=True)
                findings.append(Finding(False, name, f"the check itself failed: {type(exc).__name__}: {exc}",
                                        "run with -v for the traceback and report it"))
        return findings

    # -- config ------------------------------------------------------------
    def check_config(self) -> list[Finding]:
        c = self.cfg
        inbound = (f"imap {c.intake.host}:{c.intake.port}" if c.intake.kind == "imap"
                   else f"maildir {c.state_path(c.intake.maildir)}")
        outbound = (f"smtp {c.outbound.host}:{c.outbound.port}" if c.outbound.kind == "smtp"
                    else f"directory {c.state_path(c.outbound.directory)}")
        detail = f"{c.source} read; intake {inbound}, outbound {outbound}, state {c.state_dir}"
        if c.templates_dir is not None:
            detail += f", templates override {c.templates_dir}"
        return [Finding(True, "config", detail)]

    # -- IMAP ----------------------------------------------------------------
    def check_intake(self) -> list[Finding]:
        i = self.cfg.intake
        if i.kind == "maildir":
            path = self.cfg.state_path(i.maildir)
            return [writable_dir_finding("intake Maildir", path, "make it a directory the bot's user can write")]
        return [self._imap("IMAP", i.host, i.port, i.tls, i.username, i.password, i.timeout, i.folder,
                           "[intake]")]

    def check_proof(self) -> list[Finding]:
        p = self.cfg.proof
        if not p.enabled:
            return [Finding(None, "proof mailbox", "[proof] is off")]
        return [self._imap("proof mailbox", p.imap_host, p.imap_port, p.imap_tls, p.imap_username,
                           p.imap_password, p.imap_timeout, p.imap_folder, "[proof]")]

    def check_reports(self) -> list[Finding]:
        r = self.cfg.reports
        if not r.enabled:
            return [Finding(None, "report mailbox", "[reports] is off")]
        if r.kind == "maildir":
            path = self.cfg.state_path(r.path)
            ok = (path / "new").is_dir() and os.access(path / "new", os.R_OK | os.X_OK)
            return [Finding(ok, "report mailbox", f"maildir {path}" + ("" if ok else ": no readable new/ folder"),
                            "" if ok else "point [reports] path at the Maildir the rua address delivers to")]
        return [self._imap("report mailbox", r.host, r.port, r.tls, r.username, r.password, r.timeout, r.folder,
                           "[reports]")]

    def _imap(self, name: str, host: str, port: int, tls: str, username: str, password: str,
              timeout: float, folder: str, section: str) -> Finding:
        from imapclient.exceptions import IMAPClientError, LoginError

        from bot.adapters.intake import connect_imap

        where = f"{host}:{port} ({tls})"
        try:
            client = connect_imap(host, port, tls, username, password, timeout)
        except LoginError as exc:
            return Finding(False, name, f"{where}: login refused for {username}: {_text(exc)}",
                           f"check {section} {_key(section, 'username')} and the password "
                           f"{_key(section, 'password_env')} names")
        except ssl.SSLError as exc:
            return Finding(False, name, f"{where}: TLS failed: {exc}",
                           f"check {section} {_key(section, 'tls')} (ssl on 993, starttls or none on 143) "
                           "and the server's certificate")
        except (OSError, IMAPClientError) as exc:
            return Finding(False, name, f"{where}: cannot connect: {_text(exc)}",
                           f"check {section} {_key(section, 'host')} and {_key(section, 'port')}, and that "
                           "the IMAP server runs and is reachable")
        try:
            info = client.select_folder(folder, readonly=True)  # EXAMINE: nothing is marked
            count = info.get(b"EXISTS", "?")
            return Finding(True, name, f"{where}: login as {username}, EXAMINE {folder} ({count} messages)")
        except IMAPClientError as exc:
            return Finding(False, name, f"{where}: EXAMINE {folder} failed: {_text(exc)}",
                           f"set {section} {_key(section, 'folder')} to a folder that exists (e.g. INBOX)")
        finally:
            try:
                client.logout()
            except (OSError, IMAPClientError) as exc:
                log.debug("doctor: IMAP logout: %s", exc)

    # -- SMTP ----------------------------------------------------------------
    def check_smtp(self) -> list[Finding]:
        o = self.cfg.outbound
        if o.kind == "directory":
            path = self.cfg.state_path(o.directory)
            return [writable_dir_finding("outbox directory", path, "make it a directory the bot's user can write")]
        where = f"{o.host}:{o.port} ({o.tls})"
        steps: list[str] = []
        conn: smtplib.SMTP | None = None
        try:
            if o.tls == "ssl":
                conn = smtplib.SMTP_SSL(timeout=o.timeout, context=ssl.create_default_context())
            else:
                conn = smtplib.SMTP(timeout=o.timeout)
            # Connecting here rather than in the constructor keeps the greeting (for the
            # clock); smtplib takes the TLS server name from _host, which only the
            # constructor sets.
            conn._host = o.host  # type: ignore[attr-defined]
            code, banner = conn.connect(o.host, o.port)
            if code != 220:
                return [Finding(False, "SMTP", f"{where}: greeting {code} {_text(banner)}",
                                "the server is not accepting connections from this host")]
            self._clock_from_banner(_text(banner))
            steps.append("connect")
            code, _ = conn.ehlo()
            if code != 250:
                return [Finding(False, "SMTP", f"{where}: EHLO answered {code}", "check the server's HELO rules")]
            steps.append("EHLO")
            if o.tls == "starttls":
                conn.starttls(context=ssl.create_default_context())
                conn.ehlo()
                steps.append("STARTTLS")
            if o.username:
                conn.login(o.username, o.password)
                steps.append(f"AUTH as {o.username}")
        except smtplib.SMTPAuthenticationError as exc:
            return [Finding(False, "SMTP", f"{where}: login refused for {o.username}: {exc.smtp_code}",
                            "check [outbound] username and the password password_env names")]
        except smtplib.SMTPNotSupportedError as exc:
            return [Finding(False, "SMTP", f"{where}: after {', '.join(steps)}: {exc}",
                            "the server does not offer what [outbound] tls/username ask for; change those")]
        except (OSError, smtplib.SMTPException) as exc:
            done = f" after {', '.join(steps)}" if steps else ""
            return [Finding(False, "SMTP", f"{where}: failed{done}: {_text(exc)}",
                            "check [outbound] host, port and tls, and that the server runs and is reachable")]
        finally:
            if conn is not None:
                try:
                    conn.quit()
                except (OSError, smtplib.SMTPException) as exc:
                    log.debug("doctor: SMTP quit: %s", exc)
        return [Finding(True, "SMTP", f"{where}: {', '.join(steps)}; nothing sent")]

    def _clock_from_banner(self, banner: str) -> None:
        m = re.search(r"(?:[A-Z][a-z]{2}, )?\d{1,2} [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d [+-]\d{4}", banner)
        if m:
            try:
                self.clocks.append(("the SMTP greeting", parsedate_to_datetime(m.group(0))))
            except (TypeError, ValueError):
                log.debug("doctor: SMTP greeting date unreadable: %s", m.group(0))

    # -- DNS -----------------------------------------------------------------
    def check_resolvers(self) -> list[Finding]:
        from bot.adapters.dnsprobe import probe_resolvers

        return [Finding(ok, "DNS resolver", detail, fix) for ok, detail, fix in probe_resolvers(self.cfg)]

    def check_managed_servers(self) -> list[Finding]:
        from bot.adapters.dnsprobe import probe_managed_servers

        return [Finding(ok, "name server", detail, fix) for ok, detail, fix in probe_managed_servers(self.cfg)]

    def check_tsig(self) -> list[Finding]:
        from bot.adapters.dnsprobe import probe_update

        result = probe_update(self.cfg)
        if result.server_time is not None:
            self.clocks.append((f"the update server {result.server} (TSIG)", result.server_time))
        return [Finding(result.ok, "TSIG update", result.detail, result.fix)]

    # -- signer, keys, state --------------------------------------------------
    def check_clock(self) -> list[Finding]:
        if not self.clocks:
            return [Finding(None, "clock", "no server told its time (used: TSIG-signed DNS answers, a date in "
                                           "the SMTP greeting)")]
        now = datetime.now(UTC)
        worst_source, worst = max(((s, (now - t).total_seconds()) for s, t in self.clocks), key=lambda x: abs(x[1]))
        detail = f"{abs(worst):.0f} s {'ahead of' if worst > 0 else 'behind'} {worst_source}"
        if abs(worst) > MAX_CLOCK_SKEW_SECONDS:
            return [Finding(False, "clock", detail, "synchronise the system clock (chrony, systemd-timesyncd)")]
        others = f" and {len(self.clocks) - 1} more" if len(self.clocks) > 1 else ""
        return [Finding(True, "clock", f"within {MAX_CLOCK_SKEW_SECONDS:.0f} s: {detail}{others}")]


def _key(section: str, key: str) -> str:
    """The config key's name in its section: [proof] spells its IMAP keys imap_*."""
    return f"imap_{key}" if section == "[proof]" else key


def _text(exc: object) -> str:
    value = exc.decode("utf-8", "replace") if isinstance(exc, bytes) else str(exc)
    return " ".join(value.split())[:200] or type(exc).__name__


def run_doctor(cfg: Config, out: TextIO) -> int:
    findings = Doctor(cfg).run()
    for finding in findings:
        print(finding.line(), file=out)
    failed = [f for f in findings if f.ok is False]
    print(f"{len(failed)} problem(s) found" if failed else "all checks passed", file=out)
    return 1 if failed else 0
