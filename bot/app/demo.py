"""``dkimbot demo``: the nine steps of the help page, played on the embedded default.

Everything runs in a temporary directory: a Maildir inbox, an outbox directory, and a
tiny DNS server on loopback (``bot.app.minidns``) standing in for the facility's DNS host.
The bot code is the production code; only the facility's side is scripted here.
"""

from __future__ import annotations

import email
import email.policy
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import TYPE_CHECKING

from bot.app.minidns import MiniDns
from bot.config import load_config

if TYPE_CHECKING:
    from bot.flows.runtime import Bot

DOMAIN = "ryokan-sakura.example"
REQUESTER = f"tanaka@{DOMAIN}"

REQUEST_BODY = f"""\
予約番サポートご担当者様

いつもお世話になっております。旅館さくらの田中です。
DKIM、DMARCの設定を希望します。よろしくお願いいたします。

[施設名]
旅館さくら
[担当者様のお名前]
田中 花子
[担当者様のメールアドレス]
{REQUESTER}
[担当者様の電話番号]
03-1234-5678
[予約番で使用する管理用メールアドレス]
info@{DOMAIN}
"""


def _mail(subject: str, body: str, in_reply_to: str | None = None, charset: str = "iso-2022-jp") -> bytes:
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = f"田中 花子 <{REQUESTER}>"
    msg["To"] = "support@489ban.net"
    msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = make_msgid(domain=DOMAIN)
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
        msg["References"] = in_reply_to
    msg.set_content(body, charset=charset)
    return msg.as_bytes()


class _Printer:
    def __init__(self, outbox: Path) -> None:
        self.outbox = outbox
        self.seen: set[str] = set()
        self.last_message_id: str | None = None

    def new_mails(self) -> list[email.message.EmailMessage]:
        if not self.outbox.exists():
            return []
        files = sorted((p for p in self.outbox.glob("*.eml") if p.name not in self.seen),
                       key=lambda p: p.stat().st_mtime_ns)
        out = []
        for p in files:
            self.seen.add(p.name)
            msg = email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
            out.append(msg)
        return out

    def show(self) -> None:
        for msg in self.new_mails():
            self.last_message_id = str(msg["Message-ID"])
            print("┌─ mail sent " + "─" * 60)
            for h in ("From", "To", "Cc", "Subject", "Message-ID", "In-Reply-To", "Auto-Submitted"):
                if msg[h]:
                    print(f"│ {h}: {msg[h]}")
            print("│")
            body = msg.get_body(preferencelist=("plain",))
            text = body.get_content() if body is not None else ""
            for line in text.rstrip().splitlines():
                print(f"│ {line}")
            print("└" + "─" * 72)


def _write_config(tmp: Path, dns_port: int) -> Path:
    """The demo's config: the embedded Maildir and outbound directory, DNS on ``dns_port``."""
    config = tmp / "dkimbot.toml"
    config.write_text(
        f"""
[service]
support_address = "support@489ban.net"
staff_cc = ["staff@489ban.net"]
sending_ips = ["203.0.113.10"]
spf_include = "_spf.489ban.net"
dmarc_rua = "mailto:dmarc@489ban.net"

[dns]
nameservers = ["127.0.0.1"]
port = {dns_port}
timeout = 2.0

[schedule]
check_interval_seconds = 0

[state]
dir = "{tmp / 'state'}"
""",
        encoding="utf-8",
    )
    return config


def _start_dns() -> MiniDns:
    dns_server = MiniDns().start()
    zones = dns_server.data
    zones.add_zone(DOMAIN)
    zones.add_zone("489ban.net")
    # The SaaS's own SPF include, as the real one would publish it.
    zones.set_txt("_spf.489ban.net", [["v=spf1 ip4:203.0.113.10 -all"]])
    # RFC 7489 §7.1: the SaaS authorises itself to receive the facility's DMARC reports.
    zones.set_txt(f"{DOMAIN}._report._dmarc.489ban.net", [["v=DMARC1"]])
    return dns_server


class _Demo:
    """The bot, its mailbox and outbox, and the DNS zone the demo plays on."""

    def __init__(self, bot: Bot, dns_server: MiniDns) -> None:
        from bot.adapters.intake import MaildirMailbox

        cfg = bot.cfg
        self.bot = bot
        self.zones = dns_server.data
        self.inbox = MaildirMailbox(cfg.state_path(cfg.intake.maildir))
        self.printer = _Printer(cfg.state_path(cfg.outbound.directory))
        self.steps = 0

    def step(self, title: str, flow: str) -> None:
        """The next step, numbered here so the numbers only go up, in the order shown;
        ``flow`` names the step(s) of the onboarding flow (docs/CONTRACT.md §1) it plays."""
        self.steps += 1
        print(f"\n=== step {self.steps}: {title} (flow {flow}) ===")

    def run(self) -> None:
        from bot.app.jobs import run_pass

        result = run_pass(self.bot)
        for err in result.errors:
            print(f"  (error: {err})")
        self.printer.show()
        for c in self.bot.store.list_cases():
            print(f"  state: {c.ref} {c.facility} {c.domain} → {c.state}")

    def reply(self, subject: str, body: str) -> None:
        self.inbox.deliver(_mail(subject, body, self.printer.last_message_id))


def _dkim_steps(demo: _Demo) -> str | None:
    """Steps 1 to 7: the request, the record, a pasting mistake named, DKIM proven.
    Returns the case's reference, or None when no case was opened."""
    from bot.core.records import split_txt_strings

    demo.step("the facility mails a request to support@ (ISO-2022-JP, like Outlook)", "1")
    demo.inbox.deliver(_mail("DKIM、DMARC設定希望", REQUEST_BODY))
    demo.step("dkimbot reads it, makes the key pair, and replies with the TXT record", "2–3")
    demo.run()
    cases = demo.bot.store.list_cases()
    if not cases:  # the log above says why (a broken template, say): one line, no traceback
        print("demo stopped: the request did not open a case", file=sys.stderr)
        return None
    case = cases[0]
    key = demo.bot.keystore.get(DOMAIN, case.selector or "")
    assert key is not None

    demo.step("the facility pastes the record, but with the quotes of the zone-file form", "4")
    quoted = '"' + '" "'.join(split_txt_strings(key.record)) + '"'
    demo.zones.set_txt(key.fqdn, [split_txt_strings(quoted)])  # the panel splits what was pasted
    demo.reply("Re: DKIM設定", "設定しました。")
    demo.step("the facility replies 設定しました; dkimbot checks at once and names the mistake", "5")
    demo.run()

    demo.step("the facility fixes the record (the 2048-bit value is stored as two strings)", "4 again")
    demo.zones.set_txt(key.fqdn, [split_txt_strings(key.record)])
    demo.step("dkimbot sees the right record on every name server, installs the key, proves it, "
              "and tells the facility DKIM is active, with the DMARC record to publish", "6–7")
    demo.run()
    demo.step("what the signer now holds: the key in its KeyTable and SigningTable", "6")
    cfg = demo.bot.cfg
    signer_dir = cfg.state_path(cfg.signer.keytable).parent
    for name in ("KeyTable", "SigningTable"):
        p = signer_dir / name
        if p.exists():
            print(f"  {p.name}: {p.read_text().strip()}")
    return str(case.ref)


def _dmarc_steps(demo: _Demo) -> None:
    """Steps 8 and 9: DMARC and SPF published, the final check, the completion report."""
    demo.step("the facility publishes DMARC (p=none) and its SPF record, and replies", "8")
    demo.zones.set_txt(f"_dmarc.{DOMAIN}", [["v=DMARC1; p=none; rua=mailto:dmarc@489ban.net"]])
    demo.zones.set_txt(DOMAIN, [["v=spf1 include:_spf.489ban.net ~all"]])
    demo.reply("Re: DKIM署名を開始しました", "DMARCを設定しました。")
    demo.step("dkimbot runs the final check and sends the completion report", "9")
    demo.run()


def run_demo(keep: bool = False) -> int:
    from bot.app.jobs import Bot
    from bot.app.show import show_case

    tmp = Path(tempfile.mkdtemp(prefix="dkimbot-demo-"))
    dns_server = _start_dns()
    bot = Bot.open(load_config(_write_config(tmp, dns_server.port)))
    demo = _Demo(bot, dns_server)
    try:
        print(f"dkimbot demo in {tmp} (DNS for {DOMAIN} served on 127.0.0.1:{dns_server.port})")
        ref = _dkim_steps(demo)
        if ref is None:
            return 1
        _dmarc_steps(demo)
        print("\n=== one more pass: nothing changes, nothing is sent ===")
        before = len(demo.printer.seen)
        demo.run()
        print(f"  mails sent by that pass: {len(demo.printer.seen) - before}")
        print("\nThe event log of the case (dkimbot show):")
        show_case(bot.store, bot.store.list_cases()[0], False)
        final = bot.store.list_cases()[0].state
        print(f"\ndemo finished: {ref} is {final}")
        return 0 if final == "completed" else 1
    finally:
        bot.close()
        dns_server.stop()
        if keep:
            print(f"(kept {tmp})")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
