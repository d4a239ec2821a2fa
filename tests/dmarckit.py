"""DMARC aggregate report mails for the tests, built from tests/corpus/dmarc_reports/.

Each report is wrapped the way its kind of sender wraps it (see the corpus README):
Google zips it next to a short text part, Yahoo, Microsoft and FastMail attach it
gzip'd, Mimecast sends the gzip as the whole body, and the DMARCbis reporter attaches
plain XML. ``hostile`` builds the bad inputs of issue 17.

Receivers DKIM-sign their report mails, and the bot believes a report only when that
signature verifies against DNS: ``publish_key`` puts a test key into the tests' BIND
for a reporter's domain (RFC 2136) and ``signed`` signs a mail with it (dkimpy).
"""

from __future__ import annotations

import gzip
import io
import zipfile
from datetime import UTC, datetime
from email import message_from_bytes
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

CORPUS = Path(__file__).resolve().parent / "corpus" / "dmarc_reports"
SELECTOR = "dmarc2026"
_KEYS: dict[str, tuple[bytes, str]] = {}
DOMAIN = "ryokan-kaede.test"
OUR_IP = "203.0.113.10"

# (XML file, From, wrapping, attachment name)
ENVELOPES = [
    ("google.xml", "noreply-dmarc-support@google.com", "zip+text", f"google.com!{DOMAIN}!1795132800!1795219199.zip"),
    ("yahoo.xml", "noreply@dmarc.yahoo.com", "gzip", f"yahoo.com!{DOMAIN}!1795132800!1795219199.xml.gz"),
    ("microsoft.xml", "dmarcreport@microsoft.com", "gzip",
     f"enterprise.protection.outlook.com!{DOMAIN}!1795219200!1795305600.xml.gz"),
    ("fastmail.xml", "reports@fastmaildmarc.test", "gzip", f"fastmail.com!{DOMAIN}!1795219200!1795305599!310457882.xml.gz"),
    ("mimecast.xml", "no-reply@mimecastreport.test", "gzip-body", f"mimecast.org!{DOMAIN}!1795305600!1795391999.xml.gz"),
    ("dmarcbis.xml", "dmarc-reports@reporter.test", "xml", f"reporter.test!{DOMAIN}!1795305600!1795391999.xml"),
    ("google_no_case.xml", "noreply-dmarc-support@google.com", "zip+text",
     "google.com!other-hotel.test!1795132800!1795219199.zip"),
]

# Hand-counted from the XML files (the corpus README lists the same figures).
EXPECTED = {
    "messages": 236,
    "dmarc_pass": 221,
    "sources": {  # ip: (messages, dmarc_pass, ours, reporters)
        OUR_IP: (203, 203, True, ["FastMail Pty Ltd", "google.com", "Mimecast", "Outlook.com", "reporter.test", "Yahoo"]),
        "198.51.100.25": (18, 18, False, ["google.com", "Outlook.com"]),
        "198.51.100.60": (9, 0, False, ["Yahoo"]),
        "192.0.2.77": (5, 0, False, ["google.com", "reporter.test"]),
        "2001:db8::25": (1, 0, False, ["FastMail Pty Ltd"]),
    },
}


def zipped(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(name.removesuffix(".zip") + ".xml", data)
    return buf.getvalue()


def report_mail(xml: bytes, sender: str, wrapping: str, filename: str, *, domain: str = DOMAIN) -> bytes:
    """One report mail as its kind of sender sends it."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "dmarc@489ban.net"
    msg["Subject"] = f"Report domain: {domain} Submitter: {sender.rpartition('@')[2]} Report-ID: <{filename}>"
    msg["Date"] = format_datetime(datetime(2026, 11, 23, 3, 0, tzinfo=UTC))
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2])
    if wrapping == "zip+text":
        msg.set_content(f"This is an aggregate report from {sender.rpartition('@')[2]}.\n")
        msg.add_attachment(zipped(filename, xml), maintype="application", subtype="zip", filename=filename)
    elif wrapping == "gzip":
        msg.set_content("DMARC aggregate report attached.\n")
        msg.add_attachment(gzip.compress(xml), maintype="application", subtype="gzip", filename=filename)
    elif wrapping == "gzip-body":
        msg.set_content(gzip.compress(xml), maintype="application", subtype="gzip",
                        disposition="attachment", filename=filename)
    elif wrapping == "xml":
        msg.set_content("DMARC aggregate report (RFC 9990).\n")
        msg.add_attachment(xml, maintype="text", subtype="xml", filename=filename)
    else:
        raise ValueError(wrapping)
    return msg.as_bytes()


def corpus_mails() -> list[tuple[str, bytes]]:
    """(XML file name, mail) for every corpus report, plus the Google one sent twice."""
    mails = [(name, report_mail((CORPUS / name).read_bytes(), sender, wrapping, filename))
             for name, sender, wrapping, filename in ENVELOPES]
    first = ENVELOPES[0]
    mails.append(("google.xml (again)", report_mail((CORPUS / first[0]).read_bytes(), *first[1:])))
    return mails


def google_style_xml(domain: str, begin: datetime, report_id: str,
                     rows: list[tuple[str, int, str, str]], *, org: str = "google.com",
                     email: str = "noreply-dmarc-support@google.com") -> bytes:
    """A one-day report in Google's shape; rows are (ip, count, dkim_eval, spf_eval)."""
    start = int(begin.timestamp())
    records = "".join(
        f"<record><row><source_ip>{ip}</source_ip><count>{count}</count><policy_evaluated>"
        f"<disposition>none</disposition><dkim>{dkim}</dkim><spf>{spf}</spf></policy_evaluated></row>"
        f"<identifiers><header_from>{domain}</header_from></identifiers><auth_results>"
        + (f"<dkim><domain>{domain}</domain><result>pass</result><selector>s1</selector></dkim>" if dkim == "pass" else "")
        + f"<spf><domain>{domain}</domain><result>{'pass' if spf == 'pass' else 'softfail'}</result></spf>"
        "</auth_results></record>"
        for ip, count, dkim, spf in rows)
    return (f'<?xml version="1.0" encoding="UTF-8" ?><feedback><report_metadata><org_name>{org}</org_name>'
            f"<email>{email}</email><report_id>{report_id}</report_id><date_range><begin>{start}</begin>"
            f"<end>{start + 86399}</end></date_range></report_metadata><policy_published><domain>{domain}</domain>"
            f"<adkim>r</adkim><aspf>r</aspf><p>none</p><sp>none</sp><pct>100</pct></policy_published>{records}"
            "</feedback>").encode()


def google_mail(xml: bytes, domain: str, begin: datetime, sender: str = "noreply-dmarc-support@google.com") -> bytes:
    start = int(begin.timestamp())
    return report_mail(xml, sender, "zip+text", f"google.com!{domain}!{start}!{start + 86399}.zip", domain=domain)


def completed_case(store: Any, domain: str, since: datetime, **fields: Any) -> Any:
    """A case of ``domain`` completed at ``since``, made through the store's own moves."""
    from bot.core.cases import State

    with store.transaction():
        case = store.create_case(state=State.AWAITING_DKIM, now=since, domain=domain, **fields)
        case = store.transition(case.id, State.ESCALATED, since, expected_state=State.AWAITING_DKIM,
                                event="test_setup", resume_state=State.AWAITING_DKIM)
        return store.transition(case.id, State.COMPLETED, since, expected_state=State.ESCALATED,
                                event="test_setup")


def signing_key(name: str = "reporter") -> tuple[bytes, str]:
    """(private key PEM, public key base64) of a 1024-bit RSA test key, made once per name."""
    if name not in _KEYS:
        import base64

        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
        der = key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        _KEYS[name] = (pem, base64.b64encode(der).decode())
    return _KEYS[name]


def publish_key(bind: Any, domain: str, *, key: str = "reporter", selector: str = SELECTOR) -> None:
    """Serve ``domain`` in the tests' BIND (once per session) with the test key's DKIM record."""
    if domain.lower().rstrip(".") not in bind.zones:
        bind.add_zone(domain)
    record = f"v=DKIM1; k=rsa; p={signing_key(key)[1]}"
    bind.update(domain, f"{selector}._domainkey", "TXT", [[record[i:i + 250] for i in range(0, len(record), 250)]])


def signed(raw: bytes, domain: str, *, key: str = "reporter", selector: str = SELECTOR) -> bytes:
    """``raw`` (line ends made CRLF) with a DKIM-Signature of ``domain`` prepended (dkimpy)."""
    import dkim

    crlf = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    signature = dkim.sign(crlf, selector.encode(), domain.encode(), signing_key(key)[0],
                          include_headers=[b"from", b"to", b"subject", b"date", b"message-id", b"content-type"])
    return signature + crlf


def signer_of(sender: str) -> str:
    """The domain a reporter signs with: its From domain's organisation (Yahoo mails from
    dmarc.yahoo.com and signs as yahoo.com)."""
    domain = sender.rpartition("@")[2]
    return {"dmarc.yahoo.com": "yahoo.com"}.get(domain, domain)


def signed_corpus_mails(bind: Any) -> list[tuple[str, bytes]]:
    """``corpus_mails``, each signed by its reporter with a key published in ``bind``."""
    out = []
    for name, raw in corpus_mails():
        sender = str(message_from_bytes(raw)["From"])
        publish_key(bind, signer_of(sender))
        out.append((name, signed(raw, signer_of(sender))))
    return out
