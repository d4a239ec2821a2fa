"""A DMARC report mail → the report XML documents inside it (pure: bytes in, bytes out).

Reporters send the XML as an attachment or as the whole body, plain, gzip'd
(``.xml.gz``) or zipped (``.zip``), under whatever Content-Type they like
(application/zip, application/gzip, application/x-gzip, application/octet-stream,
text/xml). So each leaf part is judged by its first bytes, not its label.

Decompression streams with a hard limit: a zip or gzip "bomb" (kilobytes expanding to
gigabytes) stops at ``max_bytes`` + 1 and is reported as ``oversized``, never held in
memory whole. A zip's declared sizes are not trusted. The limit holds for a whole mail
too, not only for each report in it: a few hundred kilobytes of small gzip parts, each
just under the limit, would otherwise hold gigabytes at once (review, 2026-12-01).
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import io
import zipfile
import zlib
from dataclasses import dataclass, field
from email.message import Message

from bot.core.dmarcxml import ReportError

MAGIC_ZIP = b"PK\x03\x04"
MAGIC_GZIP = b"\x1f\x8b"
MAX_ZIP_MEMBERS = 8          # reporters put one XML file in a zip
CHUNK = 64 * 1024


@dataclass
class ReportMail:
    """What a report mail holds: XML documents and the problems met getting them out."""

    from_domain: str
    subject: str
    documents: list[bytes] = field(default_factory=list)
    errors: list[ReportError] = field(default_factory=list)
    auth_results: list[str] = field(default_factory=list)  # Authentication-Results values, top first


def _gunzip(data: bytes, max_bytes: int) -> bytes:
    decomp = zlib.decompressobj(zlib.MAX_WBITS | 16)
    out = bytearray()
    pending = data
    while pending and not decomp.eof:
        out += decomp.decompress(pending, max_bytes + 1 - len(out))
        if len(out) > max_bytes:
            raise ReportError("oversized", f"gzip expands past {max_bytes} bytes")
        pending = decomp.unconsumed_tail
    if not decomp.eof:
        raise ReportError("malformed", "gzip stream ends early")
    # Trailing bytes after the gzip member (some gateways add padding) are ignored.
    return bytes(out)


def _unzip(data: bytes, max_bytes: int) -> list[bytes]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = [m for m in archive.infolist() if not m.is_dir()][:MAX_ZIP_MEMBERS]
        docs = []
        left = max_bytes  # for the members together: eight members are not eight limits
        for member in members:
            out = bytearray()
            with archive.open(name=member, mode="r") as fh:  # read-only: a member of a zip in memory
                while chunk := fh.read(CHUNK):
                    out += chunk
                    if len(out) > left:
                        raise ReportError("oversized", f"zip members expand past {max_bytes} bytes")
            left -= len(out)
            docs.append(bytes(out))
        return docs
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError,
            EOFError, zlib.error, ValueError) as exc:  # corrupt, encrypted or unsupported archives
        raise ReportError("malformed", f"unreadable zip: {type(exc).__name__}") from None


def _looks_like_xml(data: bytes) -> bool:
    head = data[:512].lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith((b"<?xml", b"<feedback")) or b"<feedback" in head


def documents_in(data: bytes, max_bytes: int) -> list[bytes]:
    """The XML documents in one decoded payload (plain, gzip or zip); [] when none."""
    if data.startswith(MAGIC_ZIP):
        return [d for d in _unzip(data, max_bytes) if _looks_like_xml(d)]
    if data.startswith(MAGIC_GZIP):
        doc = _gunzip(data, max_bytes)
        return [doc] if _looks_like_xml(doc) else []
    if _looks_like_xml(data):
        if len(data) > max_bytes:
            raise ReportError("oversized", f"XML of {len(data)} bytes")
        return [data]
    return []


def _from_domain(msg: Message) -> str:
    sender = email.utils.parseaddr(str(msg.get("From") or ""))[1]
    return sender.rpartition("@")[2].lower().strip(">").rstrip(".")


def read_report_mail(raw: bytes, max_bytes: int) -> ReportMail:
    """Every XML document in a report mail, each leaf part judged by its bytes; at most
    ``max_bytes`` of documents in all (the parts after that are one ``oversized`` error)."""
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    mail = ReportMail(from_domain=_from_domain(msg), subject=" ".join(str(msg.get("Subject") or "").split()),
                      auth_results=[" ".join(str(v).split()) for v in msg.get_all("Authentication-Results") or []])
    for part in msg.walk():
        if part.is_multipart():
            continue
        try:
            payload = part.get_payload(decode=True)
        except (ValueError, TypeError, LookupError) as exc:  # a broken transfer encoding
            mail.errors.append(ReportError("malformed", f"undecodable part: {type(exc).__name__}"))
            continue
        if not isinstance(payload, bytes) or not payload:
            continue
        left = max_bytes - sum(len(d) for d in mail.documents)
        try:
            mail.documents += documents_in(payload, left)
        except ReportError as exc:
            mail.errors.append(exc)
            if exc.code == "oversized" and left < max_bytes:
                break  # the mail's whole budget is spent: the rest is not decompressed
    return mail
