"""Every mail template renders, with the context the code itself builds, and no field
is left unfilled.

The list of templates comes from the directory (``templates/*.txt`` without the
``_partials``) and must be exactly ``MailKind``. Each kind is then produced by the flow
that sends it (intake, a check's decision, reminders, stall escalation, the watch after
completion, staff resend, rekey, rotation, the end-to-end proof, the digest) on a real
SQLite store; a recording renderer keeps what was rendered. The renderer is the bot's
own (jinja2 ``StrictUndefined``: a missing field raises), and the text is also checked
for leftovers (``{{``, ``None``, ``Undefined``). DNS is pointed at a closed loopback
port, so the few steps that look at DNS take their "could not look" path, as they must.
"""

from __future__ import annotations

import socket
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from bot.adapters.mailout import MailRenderer, shipped_templates_dir
from bot.config import Config
from bot.core.cases import Event, State
from bot.core.dnsresults import AreaResult, CheckReport, Diagnosis
from bot.core.mailkinds import MailKind
from bot.flows.runtime import Bot

T0 = datetime(2026, 11, 2, 0, 30, tzinfo=timezone.utc)
DOMAIN = "hotel-sakura.test"
PUB = "MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQC" + "A" * 180


def template_kinds() -> set[str]:
    return {p.stem for p in shipped_templates_dir().glob("*.txt") if not p.name.startswith("_")}


def test_the_templates_are_exactly_the_mail_kinds() -> None:
    assert template_kinds() == {k.value for k in MailKind}


class Recording(MailRenderer):
    def __init__(self) -> None:
        super().__init__(None)
        self.rendered: dict[str, list[tuple[str, str]]] = {}

    def render(self, kind: str, context: dict[str, Any]) -> tuple[str, str]:
        subject, body = super().render(kind, context)
        self.rendered.setdefault(str(kind), []).append((subject, body))
        return subject, body


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def bot(tmp_path: Path) -> Any:
    cfg = Config()
    cfg.state_dir = tmp_path / "state"
    cfg.dns.nameservers = ["127.0.0.1"]
    cfg.dns.port = _closed_port()
    cfg.dns.timeout = 0.3
    cfg.keys.bits = 1024
    cfg.service.max_mails_per_case_per_day = 100
    cfg.service.dmarc_rua = "mailto:dmarc@489ban.test"
    cfg.service.spf_include = "_spf.489ban.test"
    cfg.proof.notify_facility = True
    cfg.proof.address = "proof@receiver.test"
    cfg.schedule.digest_hour = 0
    b = Bot(cfg=cfg, store=Bot.open(cfg).store, clock=Clock(), renderer=Recording())
    yield b
    b.close()


def _area(ok: bool, *diags: tuple[str, str], **found: Any) -> AreaResult:
    return AreaResult(ok, [Diagnosis(code, text, detail={"fix": "v=spf1 include:_spf.489ban.test ~all"}
                                     if code.startswith("spf") else {}) for code, text in diags], found)


def _report(*, dkim: bool = True, dmarc: bool = True, spf: bool = True) -> CheckReport:
    return CheckReport(
        dkim=_area(dkim, *([] if dkim else [("dkim_wrong_key", "公開鍵が異なります。")]),
                   servers={"ns1.example.test": "ok"}),
        dmarc=_area(dmarc, *([] if dmarc else [("dmarc_not_published", "DMARCのレコードがありません。")]),
                    policy="none", record="v=DMARC1; p=none", tags={"v": "DMARC1", "p": "none"},
                    location=f"_dmarc.{DOMAIN}"),
        spf=_area(spf, *([] if spf else [("spf_not_authorized", "弊社の送信サーバーが含まれていません。")])),
        alignment=_area(True),
    )


def _case(bot: Any, state: State = State.AWAITING_DKIM, selector: str = "yoyakuban202611") -> Any:
    store = bot.store
    with store.transaction():
        store.record_key(DOMAIN, selector, "rsa", 2048, PUB, T0)
        case = store.create_case(state=State.AWAITING_DKIM, now=T0 - timedelta(days=4), domain=DOMAIN,
                                 selector=selector, selectors=[selector], facility="ホテルさくら",
                                 contact_name="山田 太郎", contact_email=f"yamada@{DOMAIN}",
                                 contact_phone="03-1234-5678", admin_email=f"info@{DOMAIN}",
                                 requester=f"yamada@{DOMAIN}", thread_root="<req@hotel-sakura.test>",
                                 thread_last="<req@hotel-sakura.test>", thread_refs=["<req@hotel-sakura.test>"])
    if state == State.COMPLETED:
        case = store.transition(case.id, State.AWAITING_DMARC, T0 - timedelta(days=3),
                                expected_state=State.AWAITING_DKIM, event="transition")
        case = store.transition(case.id, State.COMPLETED, T0 - timedelta(days=2),
                                expected_state=State.AWAITING_DMARC, event="transition")
    return case


def _request(subject: str, body: str) -> bytes:
    from email.message import EmailMessage

    msg = EmailMessage()
    msg["From"] = f"山田 太郎 <yamada@{DOMAIN}>"
    msg["To"] = "support@489ban.net"
    msg["Subject"] = subject
    msg["Message-ID"] = "<req2@hotel-sakura.test>"
    msg.set_content(body)
    return msg.as_bytes()


def test_every_template_renders_from_the_codes_own_contexts(bot: Any) -> None:
    from bot.app import jobs
    from bot.flows import digest, dmarcnotify, proof, rotation
    from bot.flows.checkmail import enqueue_check_mail
    from bot.flows.escalation import stall_context
    from bot.flows.monitor import apply_watch
    from bot.flows.rekey import rekey_case
    from bot.flows.reminders import reminder_context
    from bot.flows.compose import enqueue_mail

    store = bot.store
    # Intake: a request with a field missing and one for a freemail domain (no DNS needed).
    jobs.process_message(bot, "m1", _request("DKIM、DMARC設定希望",
                                             "[施設名]\nホテルもみじ\n[担当者様のお名前]\n山田 花子\n"
                                             "[担当者様のメールアドレス]\nhanako@gmail.com\n"
                                             "[担当者様の電話番号]\n03-1111-2222\n"
                                             "[予約番で使用する管理用メールアドレス]\nmomiji@gmail.com\n"))
    case = _case(bot)
    jobs.staff_resend(bot, case)                                          # request_reply with records
    with store.transaction():
        for kind, report in ((MailKind.DKIM_PROBLEM, _report(dkim=False)),
                             (MailKind.DKIM_ACTIVE, _report(dmarc=False)),
                             (MailKind.DMARC_PROBLEM, _report(dmarc=False)),
                             (MailKind.FINAL_PROBLEM, _report(spf=False)),
                             (MailKind.COMPLETION_REPORT, _report()),
                             (MailKind.STAFF_ESCALATION, _report())):
            enqueue_check_mail(bot, kind, store.get_case(case.id), report, (False, "probe not verified"))
        enqueue_mail(bot, MailKind.REMINDER, [case], reminder_context(bot, case, 1))
        enqueue_mail(bot, MailKind.STAFF_ESCALATION, [case], stall_context(bot.store, case), staff_only=True)
        # One visit (issue 13): DKIM proven with the next stage already satisfied.
        for kind, report in ((MailKind.FINAL_PROBLEM, _report(spf=False)), (MailKind.COMPLETION_REPORT, _report())):
            enqueue_check_mail(bot, kind, store.get_case(case.id), report, None, signing_started=True)
        # A question: acknowledged to the facility and forwarded to staff.
        from bot.flows.replyforward import forward

        forward(bot, store.get_case(case.id), sender=f"yamada@{DOMAIN}", message_id="<q1@hotel-sakura.test>",
                text="設定方法がわかりません。", reading="question", rechecked=False)
    rekey_case(bot, store.get_case(case.id), 1024, reason="the record is cut off", who="staff")
    # After completion: lost, restored, and lost past the grace period (signing stopped).
    done = _case(bot, State.COMPLETED, selector="watch1")
    gone = {"watch1": _area(False, ("dkim_not_published", "公開されていません。"))}
    apply_watch(bot, done, gone, client=None)
    apply_watch(bot, store.get_case(done.id), {"watch1": _area(True)}, client=None)
    # Rotation: started by staff; the switch mail as rotation_once writes it.
    started = rotation.start_rotation(bot, DOMAIN)
    with store.transaction():
        enqueue_mail(bot, MailKind.ROTATION_DONE, [store.get_case(done.id)], {
            "new_names": [f"{s}._domainkey.{DOMAIN}" for s in started.new_selectors],
            "old": [{"fqdn": f"{s}._domainkey.{DOMAIN}", "host_label": f"{s}._domainkey"}
                    for s in started.old_selectors]})
    apply_watch(bot, store.get_case(done.id), gone, client=None)
    bot.clock.now = T0 + timedelta(days=30)
    apply_watch(bot, store.get_case(done.id), gone, client=None)
    assert store.get_case(done.id).state == "signing_stopped"
    # The end-to-end proof: a receiver's Authentication-Results read back.
    with store.transaction():
        store.add_proof(done.id, "<probe@hotel-sakura.test>", DOMAIN, "proof@receiver.test", bot.clock.now,
                        bot.clock.now + timedelta(minutes=30))
    [row] = store.waiting_proofs()
    proof._record_result(bot, row, (
        "Authentication-Results: mx.receiver.test; dkim=pass header.i=@hotel-sakura.test "
        "header.s=watch1 header.b=abcd; spf=pass smtp.mailfrom=hotel-sakura.test; "
        "dmarc=pass (p=NONE sp=NONE dis=NONE) header.from=hotel-sakura.test\r\n").encode())
    # What receivers' DMARC reports say (none stored yet: the first report's wording).
    with store.transaction():
        enqueue_mail(bot, MailKind.DMARC_REPORT, [store.get_case(done.id)],
                     {**dmarcnotify.facility_context(bot, store.get_case(done.id), bot.clock.now.date()),
                      "first": True})
    # The simplified flow's one-time token to the admin address, as open_confirmation writes it.
    from bot.flows.confirm import ManagedZone, open_confirmation

    with store.transaction():
        waiting = store.create_case(state=State.AWAITING_CONFIRMATION, now=bot.clock.now,
                                    domain="managed-kaede.test", selector="s1", selectors=["s1"],
                                    facility="旅館かえで", admin_email="info@managed-kaede.test",
                                    requester="someone@sender.test")
        open_confirmation(bot, waiting, ManagedZone("managed-kaede.test", ["ns1.489ban.test"], ["127.0.0.1"]))
    subject, body = digest.render_digest(bot)
    bot.renderer.rendered.setdefault("staff_digest", []).append((subject, body))

    rendered = bot.renderer.rendered
    assert set(rendered) == template_kinds(), f"not rendered: {template_kinds() - set(rendered)}"
    for kind, texts in rendered.items():
        for subject, body in texts:
            for text in (subject, body):
                for leftover in ("{{", "}}", "{%", "Undefined", "None"):
                    assert leftover not in text, f"{kind}: {leftover!r} in {text[:400]!r}"
            assert subject.strip() and body.strip(), kind
