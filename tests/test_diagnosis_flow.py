"""Each mistake a facility makes, through the whole bot, on the real BIND (issue 4).

A zone per mistake, published by RFC 2136 update; the bot runs in-process
(``jobs.run_pass`` on a ``Bot``) with a Maildir inbox and the directory outbox, so the
mails checked here are the exact bytes it would send. For each mistake: its diagnosis
code in ``dkimbot show``, the mail (what was found, where, what exactly to change, the
record box), no second mail for the unchanged mistake, a mail for a different one, and
the case moving on once the record is fixed. A DNS error never reaches the facility.
Also: the 1024-bit offer taken up by a reply (and by ``dkimbot rekey``), the look at the
domain's DNS before the first reply, provider-aware instructions, and one query per
name per pass.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import io
import json
import os
import re
import secrets
from collections import Counter
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

import pytest
from conftest import SUPPORT_ADDRESS
from test_dnscheck_bind import raw_update
from test_e2e import box_fields, boxes, request_mail

pytestmark = pytest.mark.servers

STAFF = "staff@489ban.net"


def strings(value: str, limit: int = 255) -> list[str]:
    return [value[i:i + limit] for i in range(0, len(value), limit)]


@pytest.fixture(scope="module")
def saas(bind) -> str:
    zone = f"saas{secrets.token_hex(3)}.test"
    bind.add_zone(zone, (f"ns1.{zone}", f"ns2.{zone}"))
    bind.update(zone, "_spf", "TXT", ["v=spf1 ip4:203.0.113.10 -all"])
    bind.update(zone, "*._report._dmarc", "TXT", ["v=DMARC1"])
    return zone


class Flow:
    """One facility's domain and a bot of its own; the test plays the facility."""

    def __init__(self, tmp_path: Path, bind: Any, saas: str, *, nameservers: Any = None,
                 servers: Any = None, bits: int = 2048, prefix: str = "m") -> None:
        from bot.config import load_config
        from bot.adapters.intake import MaildirMailbox
        from bot.flows.runtime import Bot

        self.bind = bind
        self.saas = saas
        self.domain = f"{prefix}{secrets.token_hex(4)}.test"
        bind.add_zone(self.domain, nameservers or (f"ns1.{self.domain}", f"ns2.{self.domain}"),
                      servers=servers)
        tmp_path.mkdir(parents=True, exist_ok=True)
        cfg = tmp_path / "dkimbot.toml"
        cfg.write_text(f"""
[service]
support_address = "{SUPPORT_ADDRESS}"
staff_cc = ["{STAFF}"]
sending_ips = ["203.0.113.10"]
spf_include = "_spf.{saas}"
dmarc_rua = "mailto:dmarc@{saas}"
max_mails_per_case_per_day = 50
max_mails_per_address_per_day = 100

[intake]
kind = "maildir"

[outbound]
kind = "directory"

[dns]
nameservers = ["127.0.0.1"]
port = {bind.port}
timeout = 1.0

[keys]
bits = {bits}

[schedule]
check_interval_seconds = 0

[state]
dir = "{tmp_path / 'state'}"
""", encoding="utf-8")
        self.cfg_path = cfg
        self.cfg = load_config(cfg)
        self.bot = Bot.open(self.cfg)
        self.inbox = MaildirMailbox(self.cfg.state_path(self.cfg.intake.maildir))
        self.outbox = self.cfg.state_path(self.cfg.outbound.directory)
        self._seen: set[str] = set()
        self.last_mail: EmailMessage | None = None

    # -- the bot
    def run(self) -> list[EmailMessage]:
        """One pass; the mails it sent (facility mails, in order)."""
        from bot.app.jobs import run_pass

        result = run_pass(self.bot)
        assert not [e for e in result.errors if "resolver" not in e], result.errors
        out = []
        if self.outbox.exists():
            for p in sorted(self.outbox.glob("*.eml"), key=lambda p: p.stat().st_mtime_ns):
                if p.name in self._seen:
                    continue
                self._seen.add(p.name)
                msg = email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
                if f"yamada@{self.domain}" in str(msg["To"]):
                    out.append(msg)
                    self.last_mail = msg
        return out

    def request(self) -> EmailMessage:
        self.inbox.deliver(request_mail(self.domain, make_msgid(domain=self.domain)))
        [reply] = self.run()
        case = self.case
        self.selector = case.selector
        self.fqdn = f"{case.selector}._domainkey.{self.domain}"
        self.label = f"{case.selector}._domainkey"
        [box] = [b for b in boxes(body(reply)) if b["host"] == self.fqdn]
        # The record's value (a panel that wants it quoted gets "…" "…" in the box).
        self.value = "".join(re.findall(r'"([^"]*)"', box["value"])) if box["value"].startswith('"') else box["value"]
        return reply

    def reply(self, text: str) -> list[EmailMessage]:
        msg = EmailMessage(policy=email.policy.SMTP)
        msg["From"] = f"山田 太郎 <yamada@{self.domain}>"
        msg["To"] = SUPPORT_ADDRESS
        msg["Subject"] = "Re: " + str(self.last_mail["Subject"])
        msg["Date"] = format_datetime(datetime.now(UTC))
        msg["Message-ID"] = make_msgid(domain=self.domain)
        msg["In-Reply-To"] = msg["References"] = str(self.last_mail["Message-ID"])
        msg.set_content(text, charset="iso-2022-jp")
        self.inbox.deliver(msg.as_bytes())
        return self.run()

    @property
    def case(self) -> Any:
        [case] = self.bot.store.list_cases()
        return case

    def show(self) -> dict[str, Any]:
        """`dkimbot show CASE --json`, through the CLI's own code."""
        from bot.app import cli

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert cli.main(["--config", str(self.cfg_path), "show", self.case.ref, "--json"]) == 0
        return json.loads(out.getvalue())

    def seen_codes(self) -> list[set[str]]:
        """Per check event in the log: the error/warning codes of every area."""
        out = []
        for e in self.show()["events"]:
            dns = e["detail"].get("dns")
            if dns:
                out.append({d["code"] for area in dns.values() for d in area.get("diagnoses", [])})
        return out

    # -- the facility's DNS
    def publish(self, name: str, values: list[Any], rdtype: str = "TXT", **kw: Any) -> None:
        self.bind.update(self.domain, name, rdtype, values, **kw)

    def delete(self, name: str, rdtype: str = "TXT") -> None:
        self.bind.delete(self.domain, name, rdtype)

    def publish_right_dkim(self) -> None:
        self.publish(self.label, [strings(self.value)])

    def to_awaiting_dmarc(self) -> EmailMessage:
        self.request()
        self.publish_right_dkim()
        [active] = self.run()
        assert self.case.state == "awaiting_dmarc"
        return active


def body(msg: EmailMessage) -> str:
    text = msg.get_body(preferencelist=("plain",)).get_content().replace("\r\n", "\n")
    if os.environ.get("DKIMBOT_TEST_DUMP"):  # read the mails as the clerk would: pytest -s
        print(f"\n===== {msg['Subject']}\n{text}")
    return text


@pytest.fixture
def flow(tmp_path, bind, saas):
    made: list[Flow] = []

    def make(**kw: Any) -> Flow:
        f = Flow(tmp_path / f"f{len(made)}", bind, saas, **kw)
        made.append(f)
        return f

    yield make
    for f in made:
        f.bot.close()


def assert_polite_problem_mail(msg: EmailMessage, f: Flow) -> str:
    text = body(msg)
    assert f"[{f.case.ref}]" in msg["Subject"] and "修正をお願いします" in msg["Subject"]
    assert "ホテルさくら ご担当者様" in text
    assert "【ご対応のお願い】" in text and "1. " in text and "2. " in text
    assert "このメールにご返信ください" in text or "ご返信ください" in text
    return text


# ------------------------------------------------------------------ DKIM mistakes

DKIM_MISTAKES = {
    # name: (publish the mistake, its code, what the mail must say)
    "doubled_domain": (lambda f: f.publish(f"{f.fqdn}.{f.domain}.", [strings(f.value)]), "dkim_doubled_domain",
                       lambda f: [f"「{f.fqdn}.{f.domain}」に登録されています", f"正しいホスト名は「{f.fqdn}」",
                                  f"「{f.label}」とだけ入力", "削除してください"]),
    "missing_domainkey": (lambda f: f.publish(f.selector, [strings(f.value)]), "dkim_missing_domainkey",
                          lambda f: [f"「{f.selector}.{f.domain}」に登録されています", "「._domainkey」が抜けています",
                                     f"「{f.label}」とだけ入力"]),
    "apex": (lambda f: f.publish("@", [strings(f.value)]), "dkim_wrong_location",
             lambda f: [f"「{f.domain}」に登録されています", "ホスト名の欄が空欄のまま", f"「{f.label}」とだけ入力"]),
    "truncated": (lambda f: f.publish(f.label, [f.value[:255]]), "dkim_truncated",
                  lambda f: ["途中で切れています", "255文字で途切れており、後半が欠けています", "最後の文字まで",
                             "1024ビット", "「短い鍵希望」とご返信ください"]),
    "quotes": (lambda f: f.publish(f.label, [strings(f'"{f.value[:200]}" "{f.value[200:]}"')]), "dkim_quoted",
               lambda f: ['"（ダブルクォーテーション）', "引用符などを付けずに", "「v=DKIM1」から始まる"]),
    "key_mismatch": (lambda f: f.publish(f.label, [strings(f.value[:-40] + "A" * 36 + f.value[-4:])]),
                     "dkim_key_mismatch", lambda f: ["一致しません", "置き換えてください"]),
    "several": (lambda f: f.publish(f.label, [strings(f.value), "v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQC"]),
                "dkim_multiple_records", lambda f: ["TXT レコードが 2 件", "1件だけ", "削除してください"]),
    "one_of_two_servers": (lambda f: f.publish(f.label, [strings(f.value)], servers=["127.0.0.1"]),
                           "dkim_partial_nameservers",
                           lambda f: ["2 台のうち 1 台", f"ns2.{f.domain}", "すべてのサーバー"]),
}


@pytest.mark.parametrize("mistake", list(DKIM_MISTAKES))
def test_a_dkim_mistake_is_named_mailed_once_and_fixing_it_moves_the_case_on(flow, mistake):
    publish, code, phrases = DKIM_MISTAKES[mistake]
    f = flow()
    f.request()
    assert f.run() == []  # nothing published: no mail

    publish(f)
    [mail] = f.run()
    assert f.case.state == "awaiting_dkim"
    assert code in f.seen_codes()[-1]
    text = assert_polite_problem_mail(mail, f)
    for phrase in phrases(f):
        assert phrase in text, (phrase, text)
    [box] = boxes(text)  # the record to publish, exactly
    assert box == {"host": f.fqdn, "type": "TXT", "value": f.value}
    assert box_fields(text) == [f.label]  # the host field first: the label, not the full name

    # Unchanged: not mailed again, however often it is checked.
    assert f.run() == [] and f.run() == []
    # A "done" reply with the mistake still there is answered (the facility asked).
    [again] = f.reply("設定しました。ご確認をお願いいたします。")
    assert "修正をお願いします" in again["Subject"] and DKIM_MISTAKES[mistake][2](f)[0] in body(again)
    assert f.run() == []

    # A different mistake is a new diagnosis: mailed.
    for wrong in (f"{f.fqdn}.{f.domain}.", f.selector, "@"):
        f.delete(wrong)
    other = "dkim_key_mismatch" if code != "dkim_key_mismatch" else "dkim_quoted"
    DKIM_MISTAKES["key_mismatch" if other == "dkim_key_mismatch" else "quotes"][0](f)
    [second] = f.run()
    assert other in f.seen_codes()[-1] and code not in f.seen_codes()[-1]
    assert_polite_problem_mail(second, f)

    # Fixed: the key is installed and proven, DKIM is announced, the case moves on.
    f.publish_right_dkim()
    [active] = f.run()
    assert f.case.state == "awaiting_dmarc"
    assert "DKIM署名を開始しました" in active["Subject"]
    moves = [(e["from_state"], e["to_state"]) for e in f.show()["events"] if e["kind"] == "transition"]
    assert moves == [("awaiting_dkim", "awaiting_dmarc")]


def test_testing_mode_is_a_warning_and_the_case_still_moves_on(flow):
    f = flow()
    f.request()
    f.publish(f.label, [strings(f.value.replace("k=rsa;", "k=rsa; t=y;"))])
    [active] = f.run()
    assert f.case.state == "awaiting_dmarc" and "DKIM署名を開始しました" in active["Subject"]
    assert "dkim_testing_mode" in f.seen_codes()[-1]


def test_a_dns_error_is_never_mailed_to_the_facility(flow, bind):
    # ns2 is listed but does not serve the zone: it answers REFUSED.
    f = flow(servers=["127.0.0.1"], prefix="lame")
    f.request()
    for _ in range(3):
        assert f.run() == []
    f.publish_right_dkim()  # even a right record: one server cannot confirm it
    assert f.run() == [] and f.run() == []
    assert f.case.state == "awaiting_dkim"
    seen = f.seen_codes()
    assert seen and all("dns_error" in codes and not {"dkim_not_published", "dkim_partial_nameservers"} & codes
                        for codes in seen)
    mails = [m["kind"] for m in f.show()["mails"]]
    assert mails == ["request_reply"]


def test_a_dns_error_after_a_mailed_mistake_does_not_resend_it(flow, bind):
    f = flow()
    f.request()
    DKIM_MISTAKES["quotes"][0](f)
    assert len(f.run()) == 1
    bind.stop()
    try:
        assert f.run() == []
    finally:
        bind.start()
    assert f.run() == []  # the same mistake as before the outage: still not mailed again
    assert "dns_error" in set().union(*f.seen_codes())


# ------------------------------------------------------------------ DMARC mistakes


def test_dmarc_mistakes_each_mailed_once_then_fixed(flow, saas):
    f = flow()
    f.to_awaiting_dmarc()
    dmarc = f"_dmarc.{f.domain}"
    steps = [
        ("dmarc_syntax", lambda: f.publish("_dmarc", ["v=DMARC1; p=nothing; pct=150"]),
         [f"「{dmarc}」の DMARC レコード「v=DMARC1; p=nothing; pct=150」に誤りがあります", "「p=nothing」",
          "「pct=150」"]),
        ("dmarc_wrong_location", lambda: (f.delete("_dmarc"), f.publish("dmarc", ["v=DMARC1; p=none"])),
         [f"「dmarc.{f.domain}」に登録されています", "アンダースコア「_」が抜けています", "「_dmarc」とだけ入力"]),
        ("dmarc_multiple_records", lambda: (f.delete("dmarc"),
                                            f.publish("_dmarc", ["v=DMARC1; p=none", "v=DMARC1; p=reject"])),
         ["2 件登録されています", "1件だけ", "ほかは削除してください"]),
    ]
    for code, publish, phrases in steps:
        publish()
        [mail] = f.run()
        assert code in f.seen_codes()[-1]
        text = assert_polite_problem_mail(mail, f)
        for phrase in phrases:
            assert phrase in text, (phrase, text)
        [box] = boxes(text)
        assert box["host"] == dmarc and box["value"].startswith("v=DMARC1; p=")
        assert "追加せずに内容を置き換えてください" in text
        assert f.run() == []  # unchanged: not again
    # The strictest policy seen (p=reject of the two) is kept, never downgraded.
    assert box["value"] == f"v=DMARC1; p=reject; rua=mailto:dmarc@{saas}"
    f.publish("_dmarc", [box["value"]])
    f.publish("@", [f"v=spf1 include:_spf.{saas} ~all"])
    [report] = f.run()
    assert f.case.state == "completed" and "設定が全て完了しました" in body(report)


# ------------------------------------------------------------------ SPF mistakes


def test_spf_mistakes_in_the_final_check(flow, saas):
    f = flow()
    f.to_awaiting_dmarc()
    f.publish("_dmarc", [f"v=DMARC1; p=none; rua=mailto:dmarc@{saas}"])
    f.publish("@", ["v=spf1 mx -all"])
    [mail] = f.run()
    assert f.case.state == "awaiting_final"
    assert "spf_not_authorized" in f.seen_codes()[-1]
    text = body(mail)
    merged = f"v=spf1 mx include:_spf.{saas} -all"
    assert "今の SPF レコード「v=spf1 mx -all」を、次の値に書き換えてください" in text
    assert "SPF レコードを2件にせず" in text
    assert {"host": f.domain, "type": "TXT", "value": merged} in boxes(text)
    assert f.run() == []

    for i in range(10):
        f.publish(f"x{i}", ["192.0.2.1"], rdtype="A")
    many = " ".join(f"a:x{i}.{f.domain}" for i in range(10))
    f.publish("@", [f"v=spf1 {many} include:_spf.{saas} -all"])
    [mail] = f.run()
    assert "spf_too_many_lookups" in f.seen_codes()[-1]
    text = body(mail)
    assert "DNS を 11 回参照する必要があり" in text and "上限の 10 回" in text
    assert f.run() == []

    f.publish("@", [merged])
    [report] = f.run()
    assert f.case.state == "completed" and "・SPF：合格" in body(report)


# ------------------------------------------------------------------ the 1024-bit offer


def test_a_cut_off_record_and_the_reply_asking_for_the_short_key(flow):
    f = flow()
    f.request()
    old_selector = f.selector
    f.publish(f.label, [f.value[:255]])  # the host kept only the first string
    [problem] = f.run()
    assert "「短い鍵希望」とご返信ください" in body(problem)
    [new_mail] = f.reply("短い鍵を希望します。よろしくお願いします。")
    case = f.case
    assert case.state == "awaiting_dkim" and case.selector != old_selector
    text = body(new_mail)
    assert "短い鍵（1024ビット）" in new_mail["Subject"]
    assert f"{old_selector}._domainkey.{f.domain}" in text and "削除してください" in text
    [box] = boxes(text)
    assert box["host"] == f"{case.selector}._domainkey.{f.domain}"
    assert len(box["value"]) <= 255  # fits the panel's one string
    keys = {k["selector"]: k for k in f.bot.store.domain_keys(f.domain)}
    assert keys[case.selector]["bits"] == 1024 and keys[old_selector]["retired_at"]
    assert any(e["kind"] == "rekeyed" for e in f.show()["events"])
    # The facility publishes the short record as one string: proven, DKIM active.
    f.delete(f.label)
    f.publish(f"{case.selector}._domainkey", [box["value"]])
    [active] = f.run()
    assert f.case.state == "awaiting_dmarc" and "DKIM署名を開始しました" in active["Subject"]


def test_a_short_key_wish_without_a_cut_off_record_goes_to_staff(flow):
    f = flow()
    f.request()
    selector = f.selector
    f.reply("1024ビットの鍵にしていただけますか。")
    assert f.case.selector == selector
    assert "facility_reply_forwarded" in [e["kind"] for e in f.show()["events"]]


def test_staff_rekey_command(flow):
    from bot.app import cli

    f = flow()
    f.request()
    old = f.selector
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["--config", str(f.cfg_path), "rekey", f.case.ref, "--bits", "1024"]) == 0
    assert f.case.selector != old and "1024 bits" in out.getvalue()
    [mail] = f.run()  # the command delivered it; this pass only collects it
    assert "1024ビット" in mail["Subject"]
    with contextlib.redirect_stderr(io.StringIO()) as err:
        assert cli.main(["--config", str(f.cfg_path), "rekey", f.case.ref, "--bits", "512"]) == 2
    assert "1024, 2048" in err.getvalue()
    f.publish_right_dkim()  # the old record no longer counts
    assert f.run() == [] and f.case.state == "awaiting_dkim"


# ------------------------------------------------------------------ look before instructing


def test_existing_spf_and_dmarc_are_edited_not_duplicated(flow, saas):
    f = flow()
    f.publish("@", ["v=spf1 mx -all"])
    f.publish("_dmarc", ["v=DMARC1; p=quarantine"])
    reply = f.request()
    text = body(reply)
    merged = f"v=spf1 mx include:_spf.{saas} -all"
    assert "【御社のDNSに既にあるレコードについて】" in text
    assert "SPFレコード「v=spf1 mx -all」が既に登録されています" in text
    assert "新しく追加せずに、この1件を次の内容に書き換えてください" in text
    assert {"host": f.domain, "type": "TXT", "value": merged} in boxes(text)
    assert f"DMARCレコード「v=DMARC1; p=quarantine」が既に「_dmarc.{f.domain}」に登録されています" in text
    [looked] = [e for e in f.show()["events"] if e["kind"] == "dns_lookahead"]
    assert looked["detail"]["spf"]["status"] == "needs_change" and looked["detail"]["spf"]["fix"] == merged
    assert looked["detail"]["dmarc"]["status"] == "valid"
    # No box asks for a second DMARC record; with SPF edited and DKIM published, the
    # next mail is the last one: signing started and everything complete.
    assert not [b for b in boxes(text) if b["host"] == f"_dmarc.{f.domain}"]
    f.publish("@", [merged])
    f.publish_right_dkim()
    [done] = f.run()
    assert "DKIM署名を開始し、DKIM、DMARC設定が完了しました" in done["Subject"]
    assert f.case.state == "completed"


def test_a_cname_at_dmarc_is_noticed_before_the_first_reply(flow, bind, saas):
    f = flow()
    bind.update(saas, f"{f.domain}.dmarc", "TXT", ["v=DMARC1; p=reject"])
    raw_update(bind, f.domain, f"_dmarc.{f.domain}.", "CNAME", f"{f.domain}.dmarc.{saas}.")
    text = body(f.request())
    assert f"「_dmarc.{f.domain}」は別名（CNAME）として「{f.domain}.dmarc.{saas}」を指しています" in text
    [looked] = [e for e in f.show()["events"] if e["kind"] == "dns_lookahead"]
    assert looked["detail"]["dmarc"]["cname"] == f"{f.domain}.dmarc.{saas}"


def test_a_dead_dns_never_blocks_the_first_reply(flow, bind):
    f = flow()
    bind.stop()
    try:
        reply = f.request()
    finally:
        bind.start()
    assert "【御社のDNSに既にあるレコードについて】" not in body(reply)
    # Nothing known about DMARC and SPF: no promise of one visit, they come after DKIM.
    assert "一度の作業で完了します" not in body(reply) and "改めてご案内します" in body(reply)
    [looked] = [e for e in f.show()["events"] if e["kind"] == "dns_lookahead"]
    # Recorded either way: nothing seen (over budget), or what answered before the outage bit.
    assert looked["detail"]["ok"] is False or looked["detail"]["dmarc"] is None


# ------------------------------------------------------------------ provider-aware instructions


def test_a_route53_zone_gets_the_quoted_form_and_it_works(flow):
    ns = {f"ns-{n}.awsdns-{n % 64:02d}.{tld}": addr
          for n, tld, addr in ((1234, "com", "127.0.0.1"), (567, "net", "127.0.0.2"))}
    f = flow(nameservers=ns, prefix="r53")
    text = body(f.request())
    assert "「Amazon Route 53」で管理されているようです" in text
    assert f"ホスト名の欄には「{f.label}」とだけ入力してください" in text
    quoted = next(line for line in text.splitlines() if line.startswith('"v=DKIM1'))
    parts = [p.strip('"') for p in quoted.split('" "')]
    assert "".join(parts) == f.value and all(len(p) <= 255 for p in parts)
    [looked] = [e for e in f.show()["events"] if e["kind"] == "dns_lookahead"]
    assert looked["detail"]["provider"] == "route53"
    f.publish(f.label, [parts])  # what Route 53 stores for that input: one record, two strings
    f.run()
    assert f.case.state == "awaiting_dmarc"


# ------------------------------------------------------------------ scale: one query per name per pass


def test_one_pass_asks_each_name_once(flow, bind, monkeypatch):
    from bot.adapters.dnsclient import DnsClient
    from bot.app.jobs import recheck_due_once

    f = flow()
    f.request()
    for n in range(3):  # more facilities of the same domain (one record, one check)
        f.inbox.deliver(request_mail(f.domain, make_msgid(domain=f.domain)).replace(
            b"info@", f"info{n}@".encode()))
    f.run()
    assert len(f.bot.store.list_cases()) == 4
    sent: Counter[tuple[Any, ...]] = Counter()

    class Counting(DnsClient):
        def _direct(self, name, rdtype, server):
            sent[("direct", name, rdtype, server)] += 1
            return super()._direct(name, rdtype, server)

        def _resolve(self, name, rdtype):
            sent[("resolver", name, rdtype)] += 1
            return super()._resolve(name, rdtype)

    monkeypatch.setattr(f.bot, "dns_client", lambda: Counting(f.cfg.dns))
    DKIM_MISTAKES["doubled_domain"][0](f)
    assert recheck_due_once(f.bot) >= 1
    assert sent and max(sent.values()) == 1, [k for k, v in sent.items() if v > 1]


# ------------------------------------------------------------------ pasted characters (issue 12)


def test_pasted_characters_reach_the_problem_mails_with_the_record_to_paste(flow, saas):
    """A full-width space in the DMARC record, then in the SPF record: each named in its
    problem mail (what, where) with the corrected record boxed; pasting the box completes."""
    f = flow()
    f.to_awaiting_dmarc()
    f.publish("_dmarc", ["v=DMARC1;\u3000p=none"])
    [mail] = f.run()
    assert "dmarc_pasted_character" in f.seen_codes()[-1]
    text = assert_polite_problem_mail(mail, f)
    assert "10文字目の全角スペース（「v=DMARC1;」と「p=none」の間）" in text, text
    [box] = boxes(text)
    assert box["value"] == f"v=DMARC1; p=none; rua=mailto:dmarc@{saas}"
    assert f.run() == []  # the same mistake is not mailed again
    f.publish("_dmarc", [box["value"]])
    f.publish("@", [f"v=spf1 mx\u3000include:_spf.{saas} -all"])
    [mail] = f.run()
    assert f.case.state == "awaiting_final"
    assert "spf_pasted_character" in f.seen_codes()[-1]
    text = body(mail)
    assert "全角スペース（「mx」と「include:_spf." in text, text
    fixed = f"v=spf1 mx include:_spf.{saas} -all"
    assert {"host": f.domain, "type": "TXT", "value": fixed} in boxes(text)
    f.publish("@", [fixed])
    [report] = f.run()
    assert f.case.state == "completed"
