"""Every mail a facility receives, read mechanically for the house style (SPEC §6).

The mails come from the real code paths on the real BIND: a request with several
facilities (a good one with an existing SPF record, one lacking a field, free mail, the
SaaS's own domain), a repeated request, each DKIM mistake, DKIM active with DMARC
missing / invalid / already fine, a DMARC mistake, an SPF fix in the final check, the
completion report, reminders in each waiting state, a lost and restored record, signing
stopped, a key rotation, the short-key offer, a managed zone, the staff escalations and
the digest. A clock of the test's own moves time forward.

Each facility mail must: open with 「… ご担当者様」; end its sentences in です/ます
form; carry no English sentence; set every record in a ruled box whose ホスト名 line holds
only the name and whose value is one ASCII line equal to the record; give the case
reference and "reply to this mail"; number its steps where it asks for something; never
leave two blank lines in a row; use one term for the control panel. Staff mails must say
what the bot saw and what to decide. ``DKIMBOT_TEST_DUMP=1 pytest -s`` prints them all.
"""

from __future__ import annotations

import uuid

import email
import email.policy
import os
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any

import pytest
from conftest import SUPPORT_ADDRESS
from test_diagnosis_flow import Flow, saas, strings  # noqa: F401 - saas is a fixture

from bot.core.records import APEX_FIELD

pytestmark = pytest.mark.servers

STAFF = "staff@489ban.net"
RULE = "━"

# Sentence endings of polite plain Japanese (です/ます form, and the request forms).
POLITE_END = re.compile(
    r"(ます|ません|ました|ましょう|です|でした|ください|ございます|ございません|いたします|"
    r"お願いします|お願いいたします|ありません)$")
# Three English words in a row: a sentence or phrase in English leaking into a mail.
ENGLISH_RUN = re.compile(r"[A-Za-z]{2,}(?:[ ,']+[A-Za-z]{2,}){2,}")
FULL_WIDTH = re.compile(r"[^\x21-\x7e]")  # anything but printable ASCII without space


# ------------------------------------------------------------------ reading a mail


def text_of(msg: EmailMessage) -> str:
    text = msg.get_body(preferencelist=("plain",)).get_content().replace("\r\n", "\n")
    if os.environ.get("DKIMBOT_TEST_DUMP"):
        print(f"\n===== {msg['Subject']}\n{text}")
    return text


def parse_boxes(text: str) -> list[dict[str, str]]:
    """Each ruled box: its lines, the host line (the panel's host field), the full name
    from the second line, the type, and the value line."""
    out = []
    for block in re.findall(rf"^{RULE}+\n(.*?)\n{RULE}+$", text, re.DOTALL | re.MULTILINE):
        lines = block.splitlines()
        host_line = lines[0]
        full = re.search(r"：([\x21-\x7e]+)）$", lines[1]) if len(lines) > 1 else None
        type_line = next(line for line in lines if line.startswith("種類"))
        label = next(i for i, line in enumerate(lines) if line.startswith("値"))
        out.append({"host_line": host_line, "type_line": type_line,
                    "fqdn": full.group(1) if full else host_line.split("：", 1)[-1],
                    "note_line": lines[1] if len(lines) > 1 else "",
                    "value_line": lines[label + 1] if label + 1 < len(lines) else "",
                    "after_value": "\n".join(lines[label + 2:])})
    return out


def unquoted(value: str) -> str:
    """A box value in a panel's quoted form ("…" "…") as the one record value it stores."""
    if value.startswith('"') and value.endswith('"'):
        return "".join(re.findall(r'"([^"]*)"', value))
    return value


# A line that ends mid-sentence, followed by more of the sentence: a hard wrap. The mail
# client wraps prose itself; a fixed break at ~40 characters breaks raggedly on a phone.
_CONTINUES = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff、A-Za-z0-9]$")
_STARTS_BLOCK = re.compile(r"^(?:[・■【※（(\[「━　 ]|\d+\. |[①-⑩]|v=|txt |\"|---)")


def hard_wraps(text: str) -> list[str]:
    """Lines of prose broken inside a sentence (boxes, the technical section, the form
    to fill in, label lines and the signature are not prose)."""
    body = re.sub(rf"^{RULE}+\n.*?\n{RULE}+$", "", text, flags=re.DOTALL | re.MULTILINE)
    body = body.split("――――", 1)[0]
    body = re.sub(r"【技術担当者様向け】.*?(?=\n\n\S*ご不明な点|\Z)", "", body, flags=re.DOTALL)
    found = []
    lines = body.splitlines()
    for a, b in zip(lines, lines[1:]):
        if not a.strip() or not b.strip():
            continue
        if a.rstrip().endswith("様") or "：" in a or re.match(r"[\[①-⑩■【]", a):
            continue
        if _CONTINUES.search(a.rstrip()) and not _STARTS_BLOCK.match(b):
            found.append(f"{a[-20:]!r} / {b[:20]!r}")
    return found


def _prose(text: str) -> str:
    """The text a person reads as sentences: boxes, zone lines and the signature left out."""
    text = re.sub(rf"^{RULE}+\n.*?\n{RULE}+$", "", text, flags=re.DOTALL | re.MULTILINE)
    text = text.split("――――", 1)[0]
    keep = []
    for line in text.splitlines():
        s = line.strip()
        if " IN TXT " in s or s.startswith(('"v=', "v=")):
            continue  # zone-file and pasteable forms, for copying, not reading
        keep.append(line)
    return "\n".join(keep)


def sentences(prose: str) -> list[str]:
    """Sentences ended by 。 outside brackets, each with a trailing （…） note, closing
    brackets and a leading bullet or heading stripped."""
    flat = re.sub(r"\n\s*", "", prose)
    out, depth, cur = [], 0, ""
    for ch in flat:
        depth += ch in "（("
        depth -= ch in "）)" and depth > 0
        if ch == "。" and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    cleaned = []
    for s in out:
        s = s.strip()
        while True:  # a note in brackets after the verb: "…です（…）。"
            m = re.search(r"（[^（）]*）$", s)
            if not m:
                break
            s = s[:m.start()].rstrip("」』")
        s = re.sub(r"^.*[・■】]", "", s)
        if s:
            cleaned.append(s)
    return cleaned


def check_facility_mail(msg: EmailMessage, *, ref: str, facility: str,
                        records: Iterable[tuple[str, str, str]] = (), action: bool = True,
                        reply: bool = True, allow_quoted: bool = False) -> str:
    """Assert the house rules on one facility mail; return its text for further checks."""
    text = text_of(msg)
    subject = str(msg["Subject"])
    problems: list[str] = []
    if not subject.startswith(f"[{ref}]"):
        problems.append(f"subject lacks the case ref first: {subject}")
    if ENGLISH_RUN.search(re.sub(r"\[[^]]*\]|（[^）]*）|[a-z0-9.-]+\.[a-z]{2,}", "", subject)):
        problems.append(f"English in the subject: {subject}")
    first = text.lstrip("\n").splitlines()[0]
    if not (first.endswith("ご担当者様") and facility in first):
        problems.append(f"not addressed to 「{facility} ご担当者様」: {first!r}")
    if "\n\n\n" in text:
        at = text.index("\n\n\n")
        problems.append(f"two blank lines in a row near: {text[max(0, at - 60):at]!r}")
    if reply and ref not in text:
        problems.append(f"case ref {ref} missing from the body")
    if reply and "このメールにご返信ください" not in text:
        problems.append("no 'reply to this mail' instruction")
    prose = _prose(text)
    for line in prose.splitlines():
        bare = re.sub(r"「[^」]*」|[\w.+-]+@[\w.-]+|https?://\S+", "", line)
        m = ENGLISH_RUN.search(bare)
        if m:
            problems.append(f"English in a facility mail: {line.strip()!r}")
    for s in sentences(prose):
        if not POLITE_END.search(s):
            problems.append(f"sentence not in です/ます form: …{s[-40:]!r}")
    if action and not (re.search(r"^1\. ", text, re.MULTILINE) and re.search(r"^2\. ", text, re.MULTILINE)):
        problems.append("asks for an action but has no numbered steps")
    for wrong, right in (("DNS管理画面", "DNSの管理画面"), ("ホスト：", "ホスト名：")):
        if wrong in text:
            problems.append(f"terminology: {wrong!r} (use {right!r})")
    for wrap in hard_wraps(text):
        problems.append(f"hard wrap in prose: {wrap}")
    if re.search(rf"{RULE}{{17,}}", text):
        problems.append("a rule longer than a phone line (16)")
    found = parse_boxes(text)
    for box in found:
        field = box["host_line"].split("：", 1)[1] if box["host_line"].startswith(("ホスト名：", "名前：")) else ""
        if not (re.fullmatch(r"[\x21-\x7e]+", field) or field == APEX_FIELD):
            problems.append(f"host line holds more than the host field: {box['host_line']!r}")
        if box["host_line"].startswith("ホスト名：") and field not in ("@", APEX_FIELD) and "." in box["fqdn"]:
            # The label first: a panel appends the domain, the full name is only the note.
            if field == box["fqdn"] or not box["fqdn"].startswith(field + "."):
                problems.append(f"box does not lead with the label: {box['host_line']!r} / {box['fqdn']}")
        v = box["value_line"]
        if not v or FULL_WIDTH.search(v.replace(" ", "")) or v != v.strip():
            problems.append(f"value line not one clean ASCII line: {v!r}")
        if " IN TXT " in v or (v.startswith('"') and not allow_quoted):
            problems.append(f"zone-file form in the box: {v[:40]!r}")
        if box["after_value"].strip():
            problems.append(f"text after the value inside the box: {box['after_value']!r}")
    got = {(b["fqdn"], b["type_line"].split("：", 1)[1].strip(), unquoted(b["value_line"]))
           for b in found}
    for rec in records:
        if rec not in got:
            problems.append(f"record not in a box exactly: {rec} (boxes: {sorted(got)})")
    assert not problems, f"{subject}\n" + "\n".join(f"- {p}" for p in problems) + f"\n\n{text}"
    return text


def check_staff_mail(msg: EmailMessage) -> str:
    text = text_of(msg)
    # A field the case does not have is left out, never shown as 「Domain : None」.
    assert not re.search(r"^\w+\s*: (None)?$", text, re.MULTILINE), text
    assert not re.search(r"[\u3040-\u30ff]", str(msg["Subject"])), msg["Subject"]
    assert "\n\n\n" not in text, text
    if "ESCALATION" in str(msg["Subject"]):
        assert "What the bot saw:" in text and "What to decide:" in text, text
        saw = text.split("What the bot saw:", 1)[1].split("What to decide:", 1)
        assert saw[0].strip() and saw[1].strip(), text
    return text


# ------------------------------------------------------------------ the facility's side


class CopyFlow(Flow):
    """A Flow with a clock of its own, which also keeps the staff-only mails."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.now = datetime.now(UTC).replace(microsecond=0)
        self.bot.clock = lambda: self.now
        self.staff: list[EmailMessage] = []

    def run(self) -> list[EmailMessage]:
        from bot.app.jobs import run_pass

        run_pass(self.bot)
        return self.collect()

    def collect(self) -> list[EmailMessage]:
        out = []
        for p in sorted(self.outbox.glob("*.eml"), key=lambda p: p.stat().st_mtime_ns):
            if p.name in self._seen:
                continue
            self._seen.add(p.name)
            msg = email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
            if f"yamada@{self.domain}" in str(msg["To"]):
                out.append(msg)
                self.last_mail = msg
            else:
                self.staff.append(msg)
        return out

    def later(self, **delta: float) -> list[EmailMessage]:
        self.now += timedelta(**delta)
        return self.run()

    def deliver(self, subject: str, text: str, in_reply_to: str | None = None) -> None:
        msg = EmailMessage(policy=email.policy.SMTP)
        msg["From"] = f"山田 太郎 <yamada@{self.domain}>"
        msg["To"] = SUPPORT_ADDRESS
        msg["Subject"] = subject
        msg["Date"] = format_datetime(self.now)
        msg["Message-ID"] = make_msgid(domain=self.domain)
        if in_reply_to:
            msg["In-Reply-To"] = msg["References"] = in_reply_to
        msg.set_content(text, charset="iso-2022-jp")
        self.inbox.deliver(msg.as_bytes())

    def check_others(self, mails: list[EmailMessage], ref: str) -> list[EmailMessage]:
        """Check the mails of the other cases (reminders of the request lacking a field);
        return those of ``ref``."""
        mine = []
        for m in mails:
            if f"[{ref}]" in str(m["Subject"]):
                mine.append(m)
                continue
            case = next(c for c in self.bot.store.list_cases() if f"[{c.ref}]" in str(m["Subject"]))
            check_facility_mail(m, ref=case.ref, facility=case.facility)
        return mine

    def dkim(self, selector: str | None = None) -> tuple[str, str, str]:
        sel = selector or self.case.selector
        key = self.bot.keystore.get(self.domain, sel)
        return (f"{sel}._domainkey.{self.domain}", "TXT", key.record)

    def case_of(self, facility: str) -> Any:
        return next(c for c in self.bot.store.list_cases() if c.facility == facility)


def block(name: str, admin: str, phone: str = "03-1234-5678", contact: str = "") -> str:
    return (f"[施設名]\n{name}\n[担当者様のお名前]\n山田 太郎\n"
            f"[担当者様のメールアドレス]\n{contact}\n[担当者様の電話番号]\n{phone}\n"
            f"[予約番で使用する管理用メールアドレス]\n{admin}\n")


@pytest.fixture
def copyflow(tmp_path, bind, saas):  # noqa: F811 - saas is the imported fixture
    made: list[CopyFlow] = []

    def make(**kw: Any) -> CopyFlow:
        f = CopyFlow(tmp_path / f"f{len(made)}", bind, saas, **kw)
        made.append(f)
        return f

    yield make
    for f in made:
        f.bot.close()


def one(mails: list[EmailMessage], kind_in_subject: str = "") -> EmailMessage:
    assert len(mails) == 1, [str(m["Subject"]) for m in mails]
    assert kind_in_subject in str(mails[0]["Subject"]), mails[0]["Subject"]
    return mails[0]


# ------------------------------------------------------------------ the whole life of a domain


def test_every_mail_of_a_domain_life_reads_right(copyflow, saas):  # noqa: F811
    f = copyflow(bits=1024)
    d = f.domain
    f.publish("@", ["v=spf1 mx -all"])  # an SPF record already there: edit, never add
    contact = f"yamada@{d}"
    body = ("予約番サポート御中\n\nお世話になっております。3施設分お願いします。\n\n"
            + block("ホテルさくら", f"info@{d}", contact=contact) + "\n"
            + block("旅館もみじ", f"momiji@{d}", phone="", contact="yamada@") + "\n"
            + block("民宿うみ", "umi.minshuku@gmail.com", contact=contact) + "\n"
            + block("ペンションやま", "yama@489ban.net", contact=contact))
    f.deliver("DKIM、DMARC設定希望", body)
    reply = one(f.run())
    # The rejected facilities are named in the subject, not hidden behind the record request.
    assert "民宿うみ、ペンションやま：お受けできないドメインです" in str(reply["Subject"])
    sakura = f.case_of("ホテルさくら")
    refs = [c.ref for c in f.bot.store.list_cases()]
    spf_fix = (d, "TXT", f"v=spf1 mx include:_spf.{saas} -all")
    text = check_facility_mail(reply, ref=sakura.ref, facility="ホテルさくら",
                               records=[f.dkim(sakura.selector), spf_fix])
    for ref in refs:
        assert ref in text
    for name in ("旅館もみじ", "民宿うみ", "ペンションやま"):
        assert f"■ {name}" in text
    assert "[担当者様の電話番号]" in text  # the form to fill in again
    assert "無料メールサービス" in text and "弊社が管理しているドメイン" in text
    assert "DKIM（" in text  # the technical word explained once

    # The same request again: the same record, no new key.
    f.deliver("Re: DKIM、DMARC設定希望", block("ホテルさくら", f"info@{d}", contact=contact),
              str(reply["Message-ID"]))
    resend = one(f.run())
    assert "新しい鍵は作っていません" in check_facility_mail(
        resend, ref=sakura.ref, facility="ホテルさくら", records=[f.dkim(sakura.selector)])

    # A question: acknowledged to the facility (and forwarded to staff).
    f.deliver("Re: DKIM、DMARC設定希望", "設定方法がわかりません。どこに入力すればよいですか？",
              str(resend["Message-ID"]))
    ack = one(f.run(), "ご返信を承りました")
    assert "担当者より改めてご連絡します" in check_facility_mail(
        ack, ref=sakura.ref, facility="ホテルさくら", action=False)

    label = f"{sakura.selector}._domainkey"
    value = f.dkim(sakura.selector)[2]
    # Mistakes, each mailed once with the right record in the box.
    for publish in (
        lambda: f.publish(f"{label}.{d}.{d}.", [strings(value)]),            # doubled domain
        lambda: f.publish(label, [strings('"' + value + '"')]),          # literal quotes
        lambda: f.publish(label, [strings("v=DKIM1; k=rsa; p=AAAA")]),   # another key
    ):
        f.delete(label)
        f.delete(f"{label}.{d}.{d}.")
        publish()
        f.reply("設定しました。")
        f.collect()
        problem = f.last_mail
        assert "修正をお願いします" in str(problem["Subject"])
        check_facility_mail(problem, ref=sakura.ref, facility="ホテルさくら",
                            records=[f.dkim(sakura.selector)])

    # Reminders while DKIM is awaited (and for the request still lacking a field).
    reminders = f.later(hours=73)
    assert {str(m["Subject"]).split("]")[0] + "]" for m in reminders} >= {f"[{sakura.ref}]"}
    for m in reminders:
        case = next(c for c in f.bot.store.list_cases() if f"[{c.ref}]" in str(m["Subject"]))
        recs = [f.dkim(case.selector)] if case.state == "awaiting_dkim" else []
        t = check_facility_mail(m, ref=case.ref, facility=case.facility, records=recs)
        if case.state == "needs_info":
            assert "[担当者様の電話番号]" in t and "DNS" not in str(m["Subject"])

    # DKIM right, DMARC missing: dkim_active asks for DMARC.
    f.delete(label)
    f.publish(label, [strings(value)])
    active = one(f.later(minutes=5), "DKIM署名を開始しました")
    dmarc = (f"_dmarc.{d}", "TXT", f"v=DMARC1; p=none; rua=mailto:dmarc@{saas}")
    t = check_facility_mail(active, ref=sakura.ref, facility="ホテルさくら", records=[dmarc])
    assert "DMARC（" in t

    reminder = one(f.check_others(f.later(hours=73), sakura.ref), "DNS設定のお願い")
    t = check_facility_mail(reminder, ref=sakura.ref, facility="ホテルさくら", records=[dmarc])
    assert "DMARC" in t

    # DMARC in the wrong place, then right; SPF still lacks the include.
    f.publish("dmarc", ["v=DMARC1; p=none"])
    f.reply("DMARCを設定しました。")
    f.collect()
    check_facility_mail(f.last_mail, ref=sakura.ref, facility="ホテルさくら",
                        records=[(f"_dmarc.{d}", "TXT", f"v=DMARC1; p=none; rua=mailto:dmarc@{saas}")])
    f.delete("dmarc")
    f.publish("_dmarc", [f"v=DMARC1; p=none; rua=mailto:dmarc@{saas}"])
    f.reply("修正しました。")
    f.collect()
    final = f.last_mail
    assert "最終確認" in str(final["Subject"])
    t = check_facility_mail(final, ref=sakura.ref, facility="ホテルさくら", records=[spf_fix])
    assert "SPF（" in t

    reminder = one(f.check_others(f.later(hours=73), sakura.ref), "DNS設定のお願い")
    check_facility_mail(reminder, ref=sakura.ref, facility="ホテルさくら", records=[spf_fix])

    f.delete("@")
    f.publish("@", [f"v=spf1 mx include:_spf.{saas} -all"])
    f.reply("SPFも直しました。")
    f.collect()
    done = f.last_mail
    assert "完了しました" in str(done["Subject"])
    check_facility_mail(done, ref=sakura.ref, facility="ホテルさくら", action=False)
    assert f.case_of("ホテルさくら").state == "completed"

    # After completion: the record vanishes, signing stops after the grace, it comes back.
    f.delete(label)
    # The daily watch comes at the domain's phase of the day, 1 to 25 hours after the last
    # check (bot/core/watchtime.py): a day and two hours always reaches it.
    lost = one(f.check_others(f.later(days=1, hours=2), sakura.ref), "【重要】")
    check_facility_mail(lost, ref=sakura.ref, facility="ホテルさくら", records=[f.dkim(sakura.selector)])
    stopped = f.check_others(f.later(days=6), sakura.ref)
    check_facility_mail(one(stopped, "停止"), ref=sakura.ref, facility="ホテルさくら",
                        records=[f.dkim(sakura.selector)])
    f.publish(label, [strings(value)])
    restored = f.check_others(f.later(days=1, hours=2), sakura.ref)
    check_facility_mail(one(restored, "再び確認できました"), ref=sakura.ref, facility="ホテルさくら",
                        action=False)

    # The same request once more, after completion: told it is complete, records for reference.
    f.deliver("DKIM、DMARC設定希望", block("ホテルさくら", f"info@{d}", contact=contact))
    complete = one(f.check_others(f.run(), sakura.ref), "既に完了しています")
    check_facility_mail(complete, ref=sakura.ref, facility="ホテルさくら", action=False,
                        records=[f.dkim(sakura.selector)])

    # A key rotation: add the new record, then the old one may go.
    from bot.flows.rotation import start_rotation

    with f.bot.store.transaction():
        rotation = start_rotation(f.bot, d)
    new_sel = rotation.new_selectors[0]
    record = one(f.check_others(f.run(), sakura.ref), "鍵の更新")
    check_facility_mail(record, ref=sakura.ref, facility="ホテルさくら",
                        records=[f.dkim(new_sel)], reply=True)
    f.publish(f"{new_sel}._domainkey", [strings(f.dkim(new_sel)[2])])
    switched = one(f.later(hours=1), "切り替えが完了しました")
    t = check_facility_mail(switched, ref=sakura.ref, facility="ホテルさくら")
    assert f"{sakura.selector}._domainkey.{d}" in t

    # Staff mails: escalations (stalled needs_info, …) say what was seen and what to decide.
    assert f.staff, "no staff mail at all"
    for m in f.staff:
        check_staff_mail(m)
    # Among them the stalled request that still lacks fields (no domain, no selector yet).
    assert any("needs_info" in text_of(m) and "旅館もみじ" in text_of(m) and "Domain" not in text_of(m)
               for m in f.staff if "ESCALATION" in str(m["Subject"]))


def test_dkim_active_when_dmarc_is_already_fine_or_invalid(copyflow, saas):  # noqa: F811
    ok = copyflow(bits=1024)
    ok.publish("_dmarc", ["v=DMARC1; p=quarantine"])
    ok.request()
    ok.publish_right_dkim()
    # DMARC was already fine: no "now DMARC please" mail; the final check follows at once
    # and its one mail says that signing started and what is left (SPF lacks our include).
    [final] = ok.run()
    assert "DKIM署名を開始しました：あと1点の修正で完了です" in str(final["Subject"])
    t = check_facility_mail(final, ref=ok.case.ref, facility="ホテルさくら",
                            records=[(ok.domain, "TXT", f"v=spf1 include:_spf.{saas} ~all")])
    assert "DKIMの電子署名を付けて送信します" in t

    bad = copyflow(bits=1024)
    bad.publish("_dmarc", ["v=DMARC1; p=nothing; pct=150"])
    bad.request()
    bad.publish_right_dkim()
    active = one(bad.run(), "DMARC")
    check_facility_mail(active, ref=bad.case.ref, facility="ホテルさくら",
                        records=[(f"_dmarc.{bad.domain}", "TXT", f"v=DMARC1; p=none; rua=mailto:dmarc@{saas}")])


def test_each_dkim_mistake_and_the_short_key_offer(copyflow):
    f = copyflow()
    f.request()
    value = f.value
    for publish in (
        lambda: f.publish(f.selector + "._domainkey", [[value[:255]]]),       # cut at 255
        lambda: f.publish(f.selector, [strings(value)]),                       # no _domainkey
        lambda: f.publish("@", [strings(value)]),                              # host left empty
        lambda: f.publish(f.label, [strings(value), ["v=DKIM1; k=rsa; p=AB"]]),  # two records
    ):
        for name in (f.label, f.selector, "@"):
            f.delete(name)
        publish()
        f.reply("設定しました。")
        f.collect()
        check_facility_mail(f.last_mail, ref=f.case.ref, facility="ホテルさくら",
                            records=[f.dkim(f.selector)])
    for name in (f.label, f.selector, "@"):
        f.delete(name)
    f.publish(f.label, [[value[:255]]])
    f.reply("設定しました。")
    f.collect()
    t = check_facility_mail(f.last_mail, ref=f.case.ref, facility="ホテルさくら",
                            records=[f.dkim(f.selector)])
    assert "短い鍵希望" in t
    [rekey] = f.reply("短い鍵希望です。")
    new_sel = f.case.selector
    t = check_facility_mail(rekey, ref=f.case.ref, facility="ホテルさくら", records=[f.dkim(new_sel)])
    assert f"{f.selector}._domainkey.{f.domain}" in t  # the old one to delete, by name


def test_provider_hint_and_managed_zone_mails(copyflow, tmp_path, bind, saas):  # noqa: F811
    ns = {f"ns-{n}.awsdns-{n % 64:02d}.{tld}": addr
          for n, tld, addr in ((1234, "com", "127.0.0.1"), (567, "net", "127.0.0.2"))}
    f = copyflow(nameservers=ns, prefix="r53")
    reply = f.request()
    check_facility_mail(reply, ref=f.case.ref, facility="ホテルさくら", records=[f.dkim()], allow_quoted=True)

    # The operator's name server lives in a zone of its own (issue 11: the operator's zones
    # never get records), and the admin address is in the facility registry (proof of control).
    ops_ns = f"ns1.ops-{uuid.uuid4().hex[:6]}.test"
    m = copyflow(prefix="managed", nameservers={ops_ns: "127.0.0.1"})
    (tmp_path / "facilities.csv").write_text(f"admin_email\ninfo@{m.domain}\n", encoding="utf-8")
    text = m.cfg_path.read_text().replace(
        "[dns]\n", f'[dns]\nmanaged_nameservers = ["{ops_ns}"]\n'
                   f'tsig_key_name = "{bind.tsig_key_name}"\ntsig_secret = "{bind.tsig_secret}"\n')
    text += f'\n[registry]\nfile = "{tmp_path / "facilities.csv"}"\n'
    m.cfg_path.write_text(text)
    from bot.config import load_config
    from bot.flows.runtime import Bot

    m.bot.close()
    m.cfg = load_config(m.cfg_path)
    m.bot = Bot.open(m.cfg, clock=lambda: m.now)
    m.deliver("DKIM、DMARC設定希望", "[施設名]\nホテルさくら\n[担当者様のお名前]\n山田 太郎\n"
              f"[担当者様のメールアドレス]\nyamada@{m.domain}\n[担当者様の電話番号]\n03-1234-5678\n"
              f"[予約番で使用する管理用メールアドレス]\ninfo@{m.domain}\n")
    mails = m.run()
    first = mails[0]
    t = check_facility_mail(first, ref=m.case.ref, facility="ホテルさくら", action=False,
                            records=[m.dkim()])
    assert "御社でのご対応は必要ありません" in t


def test_staff_digest_and_escalations_say_what_to_decide(copyflow):
    from bot.flows.digest import render_digest

    f = copyflow(bits=1024)
    f.request()
    for _ in range(3):
        f.later(hours=73)
    assert f.case.state == "escalated"
    [esc] = [m for m in f.staff if "ESCALATION" in str(m["Subject"])]
    t = check_staff_mail(esc)
    assert "reminders" in t and f"{f.selector}._domainkey.{f.domain}" in t
    subject, body = render_digest(f.bot)
    assert "escalated" in subject and f.case.ref in body
    assert "\n\n\n" not in body
