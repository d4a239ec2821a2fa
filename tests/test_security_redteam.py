"""Issue 11, red team: attacks a stranger can mount by mail alone, each on real servers.

Through real Dovecot (the support mailbox), BIND (the DNS the bot asks) and the SMTP
sink, with the harness of ``test_security_parties``.
"""

from __future__ import annotations

import pytest
from test_security_parties import World, block, mail, needs_info_case, to_of

pytestmark = pytest.mark.servers


def test_a_forged_from_without_the_thread_does_not_complete_a_needs_info_case(
        tmp_path, dovecot, bind, smtp, monkeypatch):
    """A fresh request (no subject reference, no In-Reply-To) with the From of a
    needs_info case's requester and the same facility name used to continue that case:
    a stranger who forged the From chose its domain, admin and contact addresses."""
    w = World(tmp_path, dovecot, bind, smtp, monkeypatch)
    domain = f"hotel-{w.tag}.test"
    case = needs_info_case(w, domain)
    evil = f"evil-{w.tag}.test"
    w.deliver(mail(f"sato@{domain}", "DKIM、DMARC設定希望", block("ホテルB", evil, "m@evil.example")))
    w.run()
    after = w.bot.store.get_case(case.id)
    assert (after.state, after.domain, after.admin_email, after.contact_email) == \
        ("needs_info", None, None, case.contact_email)

    # The facility itself, answering the bot's mail, still completes it.
    ask = next(m for m in smtp.messages if f"sato@{domain}" in to_of(m))
    w.deliver(mail(f"sato@{domain}", f"Re: [{case.ref}]", block("ホテルB", domain),
                   in_reply_to=ask.message["Message-ID"]))
    w.run()
    done = w.bot.store.get_case(case.id)
    assert (done.state, done.domain) == ("awaiting_dkim", domain)


def test_subdomains_of_one_managed_zone_get_one_confirmation_mail_a_day(tmp_path, dovecot, bind, smtp, monkeypatch):
    """One confirmation mail per domain per day was counted per *requested* domain: one
    stranger's mail naming info@r1.victim, info@r2.victim, ... (any label he likes, all in
    one zone on our name servers) made the bot mail the victim's mail server once per
    label. Now the zone counts: the rest wait (held), staff-free, nothing published."""
    from test_security_managed import World as ManagedWorld
    from test_security_managed import mail as mmail
    from test_security_managed import request_body

    from bot.app.jobs import run_pass

    w = ManagedWorld(tmp_path, dovecot, bind, smtp, monkeypatch)
    body = "\n".join(request_body(f"r{i}.{w.domain}", f"info@r{i}.{w.domain}").replace("旅館テスト", f"旅館{i}")
                     for i in range(4))
    w.deliver(mmail("Mallory <mallory@evil.example>", "DKIM、DMARC設定希望", body))
    run_pass(w.bot)
    cases = w.bot.store.list_cases()
    assert len(cases) == 4 and {c.state for c in cases} == {"awaiting_confirmation"}
    to_zone = [m for m in smtp.messages if any(a.endswith(w.domain) for a in to_of(m))]
    assert len(to_zone) == 1


def test_a_huge_references_header_is_read_as_its_root_and_newest_ids():
    """40,000 ids in References were each looked up in the store (twice per message, the
    cases' thread roots unindexed): with 5,000 cases one such mail kept a pass busy for
    tens of seconds. Now at most MAX_REFERENCES ids are read: the root and the newest."""
    from bot.core.request import MAX_REFERENCES, parse_message

    ids = [f"<{i:08d}@evil.example>" for i in range(40_000)]
    raw = ("From: m@evil.example\r\nTo: support@489ban.net\r\nSubject: Re: x\r\n"
           f"Message-ID: <q@evil.example>\r\nReferences: {' '.join(ids)}\r\n\r\nbody\r\n").encode()
    refs = parse_message(raw).references
    assert len(refs) == MAX_REFERENCES
    assert refs[0] == ids[0] and refs[-1] == ids[-1] and refs[1] == ids[-(MAX_REFERENCES - 1)]


def test_requests_held_for_a_zones_daily_mail_expire_instead_of_mailing_for_days(
        tmp_path, dovecot, bind, smtp, monkeypatch):
    """With one confirmation mail a day per zone, the requests held behind it used to wait
    for their turn forever: a stranger's N names in one zone meant N days of mail to it.
    A request whose confirmation could not be mailed within twice confirm_wait_hours
    expires like an unanswered one (cancelled, staff told, nothing published)."""
    from datetime import UTC, datetime, timedelta

    from test_security_managed import World as ManagedWorld
    from test_security_managed import mail as mmail
    from test_security_managed import request_body

    from bot.app.jobs import run_pass

    now = [datetime.now(UTC)]
    w = ManagedWorld(tmp_path, dovecot, bind, smtp, monkeypatch, clock=lambda: now[0])  # confirm_wait_hours 24
    body = "\n".join(request_body(f"r{i}.{w.domain}", f"info@r{i}.{w.domain}").replace("旅館テスト", f"旅館{i}")
                     for i in range(3))
    w.deliver(mmail("Mallory <mallory@evil.example>", "DKIM、DMARC設定希望", body))

    def to_zone() -> int:
        return len([m for m in smtp.messages if any(a.endswith(w.domain) for a in to_of(m))])

    run_pass(w.bot)
    assert to_zone() == 1
    now[0] += timedelta(hours=25)  # the first one's reminder takes the day's mail
    run_pass(w.bot)
    assert to_zone() == 2
    now[0] += timedelta(hours=25)
    run_pass(w.bot)
    assert to_zone() == 2
    assert {c.state for c in w.bot.store.list_cases()} == {"cancelled"}
    for c in w.bot.store.list_cases():
        assert bind.txt(f"{c.selector}._domainkey.{c.domain}") == []
    w.bot.close()


class _BlackHoleDns:
    """A name server on loopback that reads every query and never answers (what a
    stranger's own domains can delegate to): records the names it was asked."""

    def __init__(self) -> None:
        import socket
        import threading

        import dns.message
        from servers import free_port

        self.names: list[str] = []
        # One port for UDP and TCP, drawn below the ephemeral range (an ephemeral UDP
        # port's TCP twin may be another process's; seen once in a full run).
        for _ in range(20):
            self.port = free_port()
            self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                self.udp.bind(("127.0.0.1", self.port))
                self.tcp.bind(("127.0.0.1", self.port))
                break
            except OSError:  # taken between the check and the bind: another port
                self.udp.close()
                self.tcp.close()
        else:
            raise RuntimeError("no loopback port free for both UDP and TCP")
        self.tcp.listen(64)
        self._conns: list[object] = []

        def drain() -> None:
            while True:
                try:
                    data, _ = self.udp.recvfrom(4096)
                except OSError:
                    return
                try:
                    self.names.append(str(dns.message.from_wire(data).question[0].name).lower())
                except Exception:  # noqa: BLE001 -- a query we cannot read is not counted
                    continue

        def accept() -> None:
            while True:
                try:
                    self._conns.append(self.tcp.accept())
                except OSError:
                    return

        threading.Thread(target=drain, daemon=True).start()
        threading.Thread(target=accept, daemon=True).start()

    def close(self) -> None:
        self.udp.close()
        self.tcp.close()


def test_name_servers_that_never_answer_cost_one_bounded_look_per_mail(tmp_path):
    """Ten facility domains whose name servers never answer kept one mail in the pass
    for ~97 s ([dns] timeout 1 s): each domain's bounded look, then its selector check's
    timeouts. Now a domain whose look gave no answer is not asked for its selector, and
    once a mail's DNS budget (2 looks) is spent its other domains are not asked at all;
    every facility still gets its case and the reply still goes out."""
    import email.policy
    import uuid
    from email.message import EmailMessage

    from configkit import write_toml

    from bot.adapters.intake import MaildirMailbox
    from bot.app.jobs import Bot, run_pass
    from bot.config import load_config

    hole = _BlackHoleDns()
    try:
        cfg = load_config(write_toml(tmp_path / "c.toml", {
            "service": {"support_address": "support@489ban.net", "staff_cc": ["staff@489ban.net"]},
            "intake": {"kind": "maildir"}, "outbound": {"kind": "directory"},
            "dns": {"nameservers": ["127.0.0.1"], "port": hole.port, "timeout": 0.5},
            "keys": {"bits": 1024}, "state": {"dir": str(tmp_path / "state")},
        }))
        bot = Bot.open(cfg)
        tag = uuid.uuid4().hex[:6]
        domains = [f"h{i}-{tag}.slow.example" for i in range(10)]
        body = "".join(f"[施設名]\nホテル{i}\n[担当者様のお名前]\n山田 太郎\n[担当者様のメールアドレス]\n"
                       f"m@evil.example\n[担当者様の電話番号]\n03-1234-5678\n"
                       f"[予約番で使用する管理用メールアドレス]\ninfo@{d}\n\n" for i, d in enumerate(domains))
        msg = EmailMessage(policy=email.policy.SMTP)
        msg["From"], msg["To"], msg["Subject"] = "m@evil.example", "support@489ban.net", "DKIM、DMARC設定希望"
        msg["Message-ID"] = f"<{tag}@evil.example>"
        msg.set_content(body, charset="utf-8")
        MaildirMailbox(cfg.state_path(cfg.intake.maildir)).deliver(msg.as_bytes())
        run_pass(bot)
        assert [c.state for c in bot.store.list_cases()] == ["awaiting_dkim"] * 10
        assert len(list((cfg.state_path(cfg.outbound.directory)).glob("*"))) >= 1
        asked = {d for d in domains if any(n.rstrip(".").endswith(d) for n in hole.names)}
        assert len(asked) <= 3, sorted(asked)
        assert not [n for n in hole.names if "._domainkey." in n and n.startswith("yoyakuban")]
        bot.close()
    finally:
        hole.close()
