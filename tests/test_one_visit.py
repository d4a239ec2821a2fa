"""One visit to the DNS panel (issue 13), on the real servers.

The bot runs in-process (``jobs.run_pass`` on a ``Bot`` with a clock of the test's own)
against Dovecot (the support mailbox, IMAP), BIND 9 (the facility's zone, published by
RFC 2136 exactly as the mails say) and the SMTP sink (every mail the bot sends). The
test plays the ryokan: it reads the mails from the sink, publishes what the boxes say,
and replies.

What a facility must get: all its records in the first mail; exactly two mails when it
publishes all of them; the staged flow when it publishes DKIM only; a short key from the
start on さくら; an acknowledgement for a question; no escalation for 「直しました」;
"already complete" for a repeated request after completion; and, a day after
「設定しました」 with nothing in DNS, the offer of the short key.
"""

from __future__ import annotations

import email
import email.policy
import os
import re
import secrets
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

import pytest
from configkit import server_config
from conftest import SUPPORT_ADDRESS, SUPPORT_PASSWORD
from test_diagnosis_flow import saas, strings  # noqa: F401 - saas is a fixture
from test_e2e import box_fields, boxes, request_mail

pytestmark = pytest.mark.servers

STAFF = "staff@489ban.net"


def text_of(msg: EmailMessage) -> str:
    return msg.get_body(preferencelist=("plain",)).get_content().replace("\r\n", "\n")


def dump(msg: EmailMessage) -> None:
    if os.environ.get("DKIMBOT_TEST_DUMP"):  # read them as the ryokan owner would: pytest -s
        print(f"\n===== {msg['Subject']}\n{text_of(msg)}")


def record_value(box_value: str) -> str:
    """What a panel stores for the box's value (a quoted "…" "…" form is joined)."""
    if box_value.startswith('"'):
        return "".join(re.findall(r'"([^"]*)"', box_value))
    return box_value


class Ryokan:
    """One facility's zone, a support mailbox of its own on Dovecot, a bot of its own."""

    def __init__(self, tmp_path: Path, dovecot: Any, bind: Any, smtp: Any, saas_zone: str,
                 monkeypatch: Any, *, nameservers: Any = None, prefix: str = "ov") -> None:
        from bot.config import load_config
        from bot.flows.runtime import Bot

        token = secrets.token_hex(4)
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.bind, self.smtp, self.dovecot = bind, smtp, dovecot
        self.domain = f"{prefix}{token}.test"
        bind.add_zone(self.domain, nameservers or (f"ns1.{self.domain}", f"ns2.{self.domain}"))
        self.mailbox = f"ov-{token}@489ban.net"
        dovecot.add_user(self.mailbox, SUPPORT_PASSWORD)
        monkeypatch.setenv("TEST_IMAP_PASSWORD", SUPPORT_PASSWORD)
        cfg = server_config(tmp_path, dovecot, bind, smtp, saas_zone=saas_zone, username=self.mailbox,
                            schedule={"check_interval_seconds": 0, "reminder_after_hours": 72},
                            service_extra={"max_mails_per_case_per_day": 50,
                                           "max_mails_per_address_per_day": 100})
        self.now = datetime.now(UTC).replace(microsecond=0)
        self.bot = Bot.open(load_config(cfg), clock=lambda: self.now)
        self._seen = len(smtp.messages)
        self.mails: list[EmailMessage] = []   # every facility mail, in order
        self.staff: list[EmailMessage] = []   # staff-only mails about this domain
        self.last: EmailMessage | None = None

    def close(self) -> None:
        self.bot.close()

    # -- the bot
    def run(self) -> list[EmailMessage]:
        """One pass; the facility mails it sent."""
        from bot.app.jobs import run_pass

        result = run_pass(self.bot)
        assert not [e for e in result.errors if "resolver" not in e], result.errors
        out = []
        for m in self.smtp.messages[self._seen:]:
            msg = m.message
            if f"yamada@{self.domain}" in m.rcpt_tos:
                dump(msg)
                out.append(msg)
                self.last = msg
            elif self.domain in str(msg.get("Subject", "")) + text_of(msg):
                self.staff.append(msg)
        self._seen = len(self.smtp.messages)
        self.mails += out
        return out

    def later(self, **delta: float) -> list[EmailMessage]:
        self.now += timedelta(**delta)
        return self.run()

    def request(self) -> EmailMessage:
        self.dovecot.append(self.mailbox, request_mail(self.domain, make_msgid(domain=self.domain)))
        [first] = self.run()
        return first

    def reply(self, text: str) -> list[EmailMessage]:
        assert self.last is not None
        msg = EmailMessage(policy=email.policy.SMTP)
        msg["From"] = f"山田 太郎 <yamada@{self.domain}>"
        msg["To"] = SUPPORT_ADDRESS
        msg["Subject"] = "Re: " + str(self.last["Subject"])
        msg["Date"] = format_datetime(self.now)
        msg["Message-ID"] = make_msgid(domain=self.domain)
        msg["In-Reply-To"] = msg["References"] = str(self.last["Message-ID"])
        msg.set_content(text, charset="iso-2022-jp")
        self.dovecot.append(self.mailbox, msg.as_bytes())
        return self.run()

    @property
    def case(self) -> Any:
        [case] = self.bot.store.list_cases()
        return case

    def kinds(self) -> list[str]:
        return [m["kind"] for m in self.bot.store.mails_for_case(self.case.id)]

    # -- the facility's DNS, as the boxes say
    def publish(self, box: dict[str, str]) -> None:
        name = box["host"]
        label = "@" if name == self.domain else name.removesuffix("." + self.domain)
        self.bind.update(self.domain, label, "TXT", [strings(record_value(box["value"]))])

    def boxes_of(self, msg: EmailMessage) -> dict[str, dict[str, str]]:
        """The boxes of a mail by kind: "dkim", "dmarc", "spf"."""
        out = {}
        for b in boxes(text_of(msg)):
            kind = "dkim" if "._domainkey." in b["host"] else "dmarc" if b["host"].startswith("_dmarc.") else "spf"
            out[kind] = b
        return out


@pytest.fixture
def ryokan(tmp_path, dovecot, bind, smtp, saas, monkeypatch):  # noqa: F811 - saas is the imported fixture
    made: list[Ryokan] = []

    def make(**kw: Any) -> Ryokan:
        r = Ryokan(tmp_path / f"r{len(made)}", dovecot, bind, smtp, saas, monkeypatch, **kw)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


# ------------------------------------------------------------------ one visit


def test_publishing_all_three_records_after_the_first_mail_gives_exactly_two_mails(ryokan, saas):  # noqa: F811
    r = ryokan()
    first = r.request()
    text = text_of(first)
    # The three-line overview: why (Gmail/Yahoo 2024), what (DKIM, then DMARC and SPF), how long.
    overview = text.split("【概要】", 1)[1].split("■", 1)[0]
    assert "2024年" in overview and "Gmail" in overview and "Yahoo" in overview
    assert "DKIM（必須）" in overview and "DMARC" in overview and "SPF" in overview
    assert "一度の作業で完了します" in overview
    got = r.boxes_of(first)
    assert set(got) == {"dkim", "dmarc", "spf"}
    assert got["dmarc"]["value"] == f"v=DMARC1; p=none; rua=mailto:dmarc@{saas}"
    assert got["spf"]["value"] == f"v=spf1 include:_spf.{saas} ~all"
    assert "「rua=」は" in text and "「p=none」は" in text  # the tags explained where they appear
    assert "送信サーバーもこのレコードに含める必要があります" in text  # a new SPF record's warning
    assert r.case.state == "awaiting_dkim"

    for kind in ("dkim", "dmarc", "spf"):
        r.publish(got[kind])
    [done] = r.run()
    assert r.case.state == "completed"
    assert "DKIM署名を開始し、DKIM、DMARC設定が完了しました" in str(done["Subject"])
    body = text_of(done)
    assert "DKIMの電子署名を付けて送信します" in body and "これ以上必要ありません" in body
    assert r.run() == [] and r.later(hours=1) == []
    assert r.kinds() == ["request_reply", "completion_report"]
    assert len(r.mails) == 2
    # Signing started only after the DKIM record was proven: the key is in the signer and
    # the transition that proved it carries the proof.
    from bot.adapters.signer import installed_selectors

    assert installed_selectors(r.bot.cfg, r.domain) == [r.case.selector]
    moves = [(e["from_state"], e["to_state"], e["detail"]) for e in r.bot.store.events(r.case.id)
             if e["kind"] == "transition"]
    assert [(a, b) for a, b, _ in moves] == [("awaiting_dkim", "awaiting_dmarc"), ("awaiting_dmarc", "completed")]
    assert moves[0][2]["proof"]["ok"] is True and moves[0][2]["skipped_mails"] == ["dkim_active"]


def test_publishing_dkim_only_walks_the_stages(ryokan, saas):  # noqa: F811
    r = ryokan()
    got = r.boxes_of(r.request())
    r.publish(got["dkim"])
    [active] = r.run()
    assert r.case.state == "awaiting_dmarc"
    assert "DKIM署名を開始しました：次はDMARCの設定をお願いします" in str(active["Subject"])
    assert "最初のメールでお送りしたものと同じです" in text_of(active)
    assert r.boxes_of(active)["dmarc"]["value"] == got["dmarc"]["value"]
    r.publish(got["dmarc"])
    [final] = r.run()
    assert r.case.state == "awaiting_final"
    assert "最終確認の結果：あと1点の修正で完了です" in str(final["Subject"])
    assert r.boxes_of(final)["spf"]["value"] == got["spf"]["value"]
    r.publish(got["spf"])
    [done] = r.run()
    assert r.case.state == "completed" and "DKIM署名を開始し" not in str(done["Subject"])
    assert r.kinds() == ["request_reply", "dkim_active", "final_problem", "completion_report"]


def test_a_sakura_zone_gets_a_key_that_fits_255_characters_from_the_start(ryokan):
    r = ryokan(nameservers={"ns1.dns.ne.jp": "127.0.0.1", "ns2.dns.ne.jp": "127.0.0.2"}, prefix="sakura")
    first = r.request()
    text = text_of(first)
    dkim = r.boxes_of(first)["dkim"]
    assert len(dkim["value"]) <= 255 and not dkim["value"].startswith('"')
    [key] = r.bot.store.domain_keys(r.domain)
    assert key["bits"] == 1024
    assert "「さくらインターネット」で管理されているようです" in text
    assert "255文字までしか登録できない" in text and "1024ビット" in text  # and why
    assert box_fields(text)[0] == f"{r.case.selector}._domainkey"
    [looked] = [e for e in r.bot.store.events(r.case.id) if e["kind"] == "dns_lookahead"]
    assert looked["detail"]["provider"] == "sakura"
    # Pasted as one string, as the panel stores it: proven.
    r.bind.update(r.domain, f"{r.case.selector}._domainkey", "TXT", [dkim["value"]])
    r.run()
    assert r.case.state in ("awaiting_dmarc", "awaiting_final", "completed")


# ------------------------------------------------------------------ replies


def test_a_question_is_acknowledged_and_forwarded_to_staff_once(ryokan):
    r = ryokan()
    r.request()
    [ack] = r.reply("お世話になっております。\n設定方法がわかりません。お名前.comのどこに入力すればよいでしょうか。\n")
    assert "担当者より改めてご連絡します" in text_of(ack)
    assert "ご返信を承りました" in str(ack["Subject"])
    forwards = [m for m in r.staff if "ESCALATION" in str(m["Subject"])]
    assert len(forwards) == 1 and "設定方法がわかりません" in text_of(forwards[0])
    assert r.run() == [] and [m for m in r.staff if "ESCALATION" in str(m["Subject"])] == forwards
    assert r.case.state == "awaiting_dkim"


def test_naoshimashita_rechecks_at_once_without_an_escalation(ryokan):
    r = ryokan()
    got = r.boxes_of(r.request())
    name = got["dkim"]["host"].removesuffix("." + r.domain)
    value = got["dkim"]["value"]
    r.bind.update(r.domain, name, "TXT", [strings(f'"{value}"')])  # pasted with its quotes
    [problem] = r.run()
    assert "修正をお願いします" in str(problem["Subject"])
    r.publish(got["dkim"])
    [active] = r.reply("直しました。よろしくお願いします。")
    assert "DKIM署名を開始しました" in str(active["Subject"])
    r.publish(got["dmarc"])
    r.publish(got["spf"])
    [done] = r.reply("SPFも直しました。")
    assert r.case.state == "completed" and "完了しました" in str(done["Subject"])
    assert [m for m in r.staff if "ESCALATION" in str(m["Subject"])] == []
    readings = [e["detail"].get("reading") for e in r.bot.store.events(r.case.id) if e["kind"] == "facility_reply"]
    assert readings == ["done", "done"]


def test_a_reply_the_same_pass_resolves_is_not_escalated(ryokan):
    r = ryokan()
    got = r.boxes_of(r.request())
    for kind in ("dkim", "dmarc", "spf"):
        r.publish(got[kind])
    [done] = r.reply("今朝、業者さんがDNSの作業に来ました。")  # nothing the rules act on
    assert r.case.state == "completed" and "完了しました" in str(done["Subject"])
    assert [m for m in r.staff if "ESCALATION" in str(m["Subject"])] == []
    kinds = [e["kind"] for e in r.bot.store.events(r.case.id)]
    assert "facility_reply_held" in kinds and "facility_reply_resolved" in kinds
    assert "facility_reply_forwarded" not in kinds


def test_a_question_is_forwarded_even_when_the_same_pass_completes_the_case(ryokan):
    r = ryokan()
    got = r.boxes_of(r.request())
    for kind in ("dkim", "dmarc", "spf"):
        r.publish(got[kind])
    mails = r.reply("設定しましたが、来月で解約したいのですが、どうすればよいですか？")
    assert r.case.state == "completed"
    subjects = sorted(str(m["Subject"]) for m in mails)
    assert len(subjects) == 2 and "設定が完了しました" in subjects[0] and "ご返信を承りました" in subjects[1]
    [forward] = [m for m in r.staff if "ESCALATION" in str(m["Subject"])]
    assert "解約したい" in text_of(forward)


def test_a_completed_facility_asking_again_is_told_setup_is_complete(ryokan):
    r = ryokan()
    got = r.boxes_of(r.request())
    for kind in ("dkim", "dmarc", "spf"):
        r.publish(got[kind])
    r.run()
    assert r.case.state == "completed"
    [again] = (r.dovecot.append(r.mailbox, request_mail(r.domain, make_msgid(domain=r.domain))), r.run())[1]
    text = text_of(again)
    assert "既に完了しています" in str(again["Subject"]) and "既に完了しています" in text
    assert "御社でのご対応は必要ありません" in text
    assert "新しく追加" not in text and "ホスト名：" not in text  # records for reference only
    assert f"名前：{got['dkim']['host']}" in text and got["dkim"]["value"] in text
    assert r.case.state == "completed" and len(r.bot.store.domain_keys(r.domain)) == 1


def test_a_day_after_done_with_nothing_in_dns_the_reminder_offers_the_short_key(ryokan):
    r = ryokan()
    r.request()
    [seen] = r.reply("設定しました。")  # nothing in DNS yet: told what the check sees
    assert "見つかりませんでした" in text_of(seen)
    reminder = next(m for m in r.later(hours=73) if "再度のお願い" in str(m["Subject"]))
    text = text_of(reminder)
    assert "保存できなかった" in text and "「短い鍵希望」" in text
    # Still one visit from the reminder alone: the DMARC and SPF asks come along.
    assert set(r.boxes_of(reminder)) == {"dkim", "dmarc", "spf"} and "登録済みの場合は" in text
    [rekey] = r.reply("短い鍵希望です。")
    assert "1024ビット" in str(rekey["Subject"])
    assert {k["bits"] for k in r.bot.store.domain_keys(r.domain) if not k["retired_at"]} == {1024}
