"""The real-server harness (tests/servers.py) does what the other tests rely on."""

from __future__ import annotations

import secrets
import smtplib
import ssl
import time
from concurrent.futures import ThreadPoolExecutor

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.resolver
import imapclient
import pytest
from servers import DelayingDnsProxy, SmtpSink

pytestmark = pytest.mark.servers


def _zone() -> str:
    return f"h{secrets.token_hex(4)}.test"


def _mail(subject: str = "テスト") -> bytes:
    return (
        "From: info@hotel-sakura.test\r\nTo: support@489ban.net\r\n"
        f"Subject: {subject}\r\nMessage-ID: <{secrets.token_hex(6)}@hotel-sakura.test>\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n本文です。\r\n"
    ).encode()


# --------------------------------------------------------------------------- Dovecot


def test_it_appends_and_fetches_over_imap(dovecot):
    user = f"u{secrets.token_hex(4)}@489ban.net"
    dovecot.add_user(user, "pw")
    seen, unseen = _mail("one"), _mail("two")
    uid1 = dovecot.append(user, seen, flags=["\\Seen"])
    uid2 = dovecot.append(user, unseen)

    with imapclient.IMAPClient(dovecot.host, port=dovecot.port, ssl=False, timeout=10) as c:
        c.login(user, "pw")
        c.select_folder("INBOX", readonly=True)
        data = c.fetch(c.search("ALL"), ["FLAGS", "BODY.PEEK[]"])
    assert sorted(data) == [uid1, uid2]
    assert data[uid1][b"BODY[]"] == seen
    assert b"\\Seen" in data[uid1][b"FLAGS"] and b"\\Seen" not in data[uid2][b"FLAGS"]

    assert dovecot.fetch_all(user) == [(uid1, ("\\Seen",), seen), (uid2, (), unseen)]
    dovecot.reset(user)
    assert dovecot.fetch_all(user) == []


def test_a_failed_login_does_not_delay_the_next_one(dovecot):
    with imapclient.IMAPClient(dovecot.host, port=dovecot.port, ssl=False, timeout=10) as c:
        with pytest.raises(imapclient.exceptions.LoginError):
            c.login("support@489ban.net", "wrong")
    start = time.monotonic()
    for _ in range(3):
        dovecot.client("support@489ban.net").logout()
    assert time.monotonic() - start < 1.5  # the auth penalty would add 4 + 8 + 15 s


def test_it_keeps_its_port_and_mail_across_a_restart(dovecot):
    user = f"u{secrets.token_hex(4)}@489ban.net"
    dovecot.add_user(user, "pw")
    raw = _mail()
    uid = dovecot.append(user, raw)
    port, validity, old_pid = dovecot.port, dovecot.uidvalidity(user), dovecot.pid
    dovecot.stop()
    with pytest.raises(OSError):
        imapclient.IMAPClient(dovecot.host, port=port, ssl=False, timeout=2)
    dovecot.start()
    assert (dovecot.port, dovecot.uidvalidity(user)) == (port, validity)
    assert dovecot.pid != old_pid
    assert dovecot.fetch_all(user) == [(uid, (), raw)]


# --------------------------------------------------------------------------- BIND


def _ask(bind, name, rdtype="TXT", address="127.0.0.1", tcp=False):
    q = dns.message.make_query(name, rdtype)
    send = dns.query.tcp if tcp else dns.query.udp
    return send(q, address, port=bind.port, timeout=3)


def test_a_dynamic_txt_update_is_visible_at_once(bind):
    zone = _zone()
    bind.add_zone(zone)
    name = f"yoyakuban202611._domainkey.{zone}."
    assert _ask(bind, name).rcode() == dns.rcode.NXDOMAIN

    bind.update(zone, "yoyakuban202611._domainkey", "TXT", ["v=DKIM1; k=rsa; p=AAAA"])
    r = _ask(bind, name)
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
    assert [rd.strings for rd in r.answer[0]] == [(b"v=DKIM1; k=rsa; p=AAAA",)]

    bind.update(zone, name, "TXT", ["v=DKIM1; k=rsa; p=BBBB", "second record"])
    assert sorted(rd.strings for rd in _ask(bind, name).answer[0]) == [
        (b"second record",), (b"v=DKIM1; k=rsa; p=BBBB",)]

    bind.delete(zone, name, "TXT")
    r = _ask(bind, name)
    assert r.rcode() == dns.rcode.NXDOMAIN and not r.answer


def test_a_two_string_txt_record_round_trips_exactly(bind):
    zone = _zone()
    bind.add_zone(zone)
    first, second = "v=DKIM1; k=rsa; p=" + "A" * 237, "B" * 155
    assert (len(first), len(second)) == (255, 155)
    bind.update(zone, "sel._domainkey", "TXT", [[first, second]])
    for tcp in (False, True):
        (rrset,) = _ask(bind, f"sel._domainkey.{zone}", tcp=tcp).answer
        assert [rd.strings for rd in rrset] == [(first.encode(), second.encode())]

    junk = '"v=DKIM1; k=rsa; p=AB"  \\'  # literal quotes and a backslash, as pasted by a person
    bind.update(zone, "junk", "TXT", [junk])
    assert bind.txt(f"junk.{zone}") == [[junk.encode()]]


def test_two_name_servers_of_one_zone_can_answer_differently(bind):
    zone = _zone()
    bind.add_zone(zone, nameservers=(f"ns1.{zone}", f"ns2.{zone}"))
    bind.update(zone, "sel._domainkey", "TXT", ["v=DKIM1; p=XYZ"], servers=["127.0.0.1"])

    # A client finds the authoritative servers the way the bot does: NS, then A, then asks each.
    res = bind.resolver()
    ns_names = sorted(str(rd.target) for rd in res.resolve(zone, "NS"))
    addresses = [res.resolve(n, "A")[0].address for n in ns_names]
    assert addresses == ["127.0.0.1", "127.0.0.2"]
    answers = {a: _ask(bind, f"sel._domainkey.{zone}", address=a) for a in addresses}
    assert [rd.strings for rd in answers["127.0.0.1"].answer[0]] == [(b"v=DKIM1; p=XYZ",)]
    assert answers["127.0.0.2"].rcode() == dns.rcode.NXDOMAIN and not answers["127.0.0.2"].answer
    assert answers["127.0.0.2"].flags & dns.flags.AA


def test_a_lame_name_server_and_an_unserved_name_are_refused(bind):
    zone = _zone()
    bind.add_zone(zone, nameservers=(f"ns1.{zone}", f"ns2.{zone}"), servers=["127.0.0.1"])
    assert _ask(bind, zone, "SOA", address="127.0.0.1").rcode() == dns.rcode.NOERROR
    assert _ask(bind, zone, "SOA", address="127.0.0.2").rcode() == dns.rcode.REFUSED
    assert _ask(bind, "nowhere.invalid", "TXT").rcode() == dns.rcode.REFUSED


def test_an_out_of_zone_name_server_name_resolves(bind):
    zone, provider = _zone(), f"dns{secrets.token_hex(3)}.test"
    bind.add_zone(zone, nameservers={f"ns1.{provider}": "127.0.0.1", f"ns2.{provider}": "127.0.0.2"})
    res = bind.resolver()
    assert sorted(str(rd.target) for rd in res.resolve(zone, "NS")) == [f"ns1.{provider}.", f"ns2.{provider}."]
    assert res.resolve(f"ns2.{provider}", "A")[0].address == "127.0.0.2"


def test_zones_and_records_survive_a_bind_restart(bind):
    zone = _zone()
    bind.add_zone(zone, nameservers=(f"ns1.{zone}", f"ns2.{zone}"))
    bind.update(zone, "_dmarc", "TXT", ["v=DMARC1; p=none"], servers=["127.0.0.2"])
    port = bind.port
    bind.stop()
    bind.start()
    assert bind.port == port
    assert bind.txt(f"_dmarc.{zone}", address="127.0.0.2") == [[b"v=DMARC1; p=none"]]
    assert bind.txt(f"_dmarc.{zone}", address="127.0.0.1") == []
    bind.update(zone, "_dmarc", "TXT", ["v=DMARC1; p=reject"])  # still accepts updates
    assert bind.txt(f"_dmarc.{zone}") == [[b"v=DMARC1; p=reject"]]


# --------------------------------------------------------------------------- SMTP


def test_the_sink_receives_and_can_refuse_on_script(smtp):
    smtp.clear()
    raw = _mail("受信")
    with smtplib.SMTP(smtp.host, smtp.port, timeout=10) as c:
        c.sendmail("bounce@489ban.net", ["info@hotel-sakura.test", "staff@489ban.net"], raw)
    (got,) = smtp.messages
    assert got.mail_from == "bounce@489ban.net"
    assert got.rcpt_tos == ["info@hotel-sakura.test", "staff@489ban.net"]
    assert got.raw.replace(b"\r\n", b"\n") == raw.replace(b"\r\n", b"\n")
    assert got.message["Subject"] == "受信"

    smtp.fail_next(1, 550)
    smtp.fail_next(1, 451)
    with smtplib.SMTP(smtp.host, smtp.port, timeout=10) as c:
        with pytest.raises(smtplib.SMTPDataError) as permanent:
            c.sendmail("bounce@489ban.net", ["a@hotel-sakura.test"], raw)
        c.rset()
        with pytest.raises(smtplib.SMTPDataError) as temporary:
            c.sendmail("bounce@489ban.net", ["a@hotel-sakura.test"], raw)
        c.rset()
        c.sendmail("bounce@489ban.net", ["a@hotel-sakura.test"], raw)
    assert (permanent.value.smtp_code, temporary.value.smtp_code) == (550, 451)
    assert [code for code, _, _ in smtp.rejected] == [550, 451]
    assert len(smtp.messages) == 2

    smtp.fail_next(1, 550, stage="rcpt")
    with smtplib.SMTP(smtp.host, smtp.port, timeout=10) as c:
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            c.sendmail("bounce@489ban.net", ["gone@hotel-sakura.test"], raw)
    smtp.clear()


def test_the_sink_can_require_starttls_and_auth():
    with SmtpSink(starttls=True, credentials={"bot": "pw"}) as sink:
        ctx = ssl.create_default_context(cafile=str(sink.cafile))
        with smtplib.SMTP(sink.host, sink.port, timeout=10) as c:
            c.starttls(context=ctx)
            with pytest.raises(smtplib.SMTPAuthenticationError):
                c.login("bot", "wrong")
            c.login("bot", "pw")
            c.sendmail("a@489ban.net", ["b@hotel-sakura.test"], _mail())
        assert len(sink.messages) == 1
        port = sink.port
        sink.stop()
        sink.start()
        assert sink.port == port


# --------------------------------------------------------------------------- DNS proxy


def test_the_delaying_proxy_answers_many_queries_at_once(bind):
    zone = _zone()
    bind.add_zone(zone)
    bind.update(zone, "@", "TXT", ["v=spf1 -all"])
    with DelayingDnsProxy(bind.host, bind.port, delay=0.3) as proxy:
        def ask(i):
            return dns.query.udp(dns.message.make_query(zone, "TXT"), proxy.host, port=proxy.port, timeout=5)

        start = time.monotonic()
        with ThreadPoolExecutor(30) as pool:
            answers = list(pool.map(ask, range(30)))
        elapsed = time.monotonic() - start
        assert all(a.answer[0][0].strings == (b"v=spf1 -all",) for a in answers)
        assert 0.3 <= elapsed < 2.0  # 30 x 0.3 s one after another would be 9 s
        assert proxy.queries == 30 and proxy.peak_in_flight >= 10

        r = dns.query.tcp(dns.message.make_query(zone, "TXT"), proxy.host, port=proxy.port, timeout=5)
        assert r.answer[0][0].strings == (b"v=spf1 -all",) and proxy.tcp_queries == 1

        proxy.mode = "servfail"
        assert ask(0).rcode() == dns.rcode.SERVFAIL
        proxy.mode, proxy.delay = "drop", 0
        with pytest.raises(dns.exception.Timeout):
            dns.query.udp(dns.message.make_query(zone, "TXT"), proxy.host, port=proxy.port, timeout=0.5)
