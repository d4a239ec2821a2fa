"""DMARC aggregate report XML → typed values (pure: bytes in, values out).

Reads RFC 7489 Appendix C reports, the DMARCbis format (RFC 9990: namespace
``urn:ietf:params:xml:ns:dmarc-2.0``, ``np``/``testing``/``discovery_method``,
disposition ``pass``) and the older draft shape reporters still send (no ``version``,
``http://dmarc.org/dmarc-xml/0.1``, ``<feedback>`` wrapped in another element).

XML is parsed only through defusedxml with every DTD refused: a report has no use
for one, and a DOCTYPE is how entity expansion ("billion laughs") and external
entities (file or network reads) get in. Everything else a reporter controls is
checked before it is believed: counts, dates, addresses, the schema version. A report
that fails a check raises ``ReportError`` with a stable code; the caller counts it
and goes on.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

# Namespaces seen on <feedback>: none (RFC 7489 reporters), the old draft's, DMARCbis.
KNOWN_NAMESPACES = frozenset({"", "http://dmarc.org/dmarc-xml/0.1", "http://dmarc.org/dmarc-xml/1.0",
                              "urn:ietf:params:xml:ns:dmarc-2.0"})
DMARCBIS_NAMESPACE = "urn:ietf:params:xml:ns:dmarc-2.0"
# <version>: absent (Google, the draft), "1.0" (RFC 7489 and RFC 9990), "2.0" (some
# DMARCbis generators). A major version beyond these is a format we do not know.
KNOWN_MAJOR_VERSIONS = frozenset({"0", "1", "2"})
# One row's count above this is not mail a hotel sends (nor a bug we should store).
MAX_ROW_COUNT = 10_000_000
MAX_ROWS = 100_000
FUTURE_SLACK = timedelta(days=1)            # reporters' clocks and time zones
OLDEST_BEGIN = datetime(2012, 1, 1, tzinfo=UTC)  # DMARC reports did not exist before
MAX_TEXT = 255


class ReportError(Exception):
    """A report that cannot be used; ``code`` is stable (counted per code)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class DkimAuth:
    domain: str
    selector: str
    result: str


@dataclass(frozen=True)
class SpfAuth:
    domain: str
    scope: str
    result: str


@dataclass(frozen=True)
class ReportRow:
    """One <record>: ``count`` messages from ``source_ip`` with the same results."""

    source_ip: str
    count: int
    disposition: str
    dkim_eval: str        # policy_evaluated/dkim: the DMARC-aligned DKIM result
    spf_eval: str         # policy_evaluated/spf: the DMARC-aligned SPF result
    header_from: str
    envelope_from: str
    dkim: tuple[DkimAuth, ...]
    spf: tuple[SpfAuth, ...]

    @property
    def dmarc_pass(self) -> bool:
        """RFC 7489 §6.6.2: DMARC passes when aligned DKIM or aligned SPF passes."""
        return self.dkim_eval == "pass" or self.spf_eval == "pass"


@dataclass(frozen=True)
class AggregateReport:
    schema: str                 # "rfc7489" | "dmarcbis" | "draft"
    version: str
    org_name: str
    email: str
    report_id: str
    begin: datetime
    end: datetime
    domain: str                 # policy_published/domain, lower case
    policy: dict[str, str]      # p, sp, adkim, aspf, pct, np, testing, ... as published
    rows: tuple[ReportRow, ...]

    @property
    def reporter(self) -> str:
        """Who reported, for de-duplication and display: org_name as written, else the
        email domain."""
        return self.org_name or self.email.rpartition("@")[2] or "unknown"

    @property
    def messages(self) -> int:
        return sum(r.count for r in self.rows)


def _local(tag: object) -> str:
    text = str(tag)
    return text.rpartition("}")[2] if text.startswith("{") else text


def _namespace(tag: object) -> str:
    text = str(tag)
    return text[1:].partition("}")[0] if text.startswith("{") else ""


def _child(parent: Element | None, name: str) -> Element | None:
    if parent is None:
        return None
    for el in parent:
        if _local(el.tag) == name:
            return el
    return None


def _children(parent: Element | None, name: str) -> list[Element]:
    return [el for el in parent if _local(el.tag) == name] if parent is not None else []


def _text(parent: Element | None, name: str, default: str = "") -> str:
    el = _child(parent, name)
    if el is None or el.text is None:
        return default
    return " ".join(el.text.split())[:MAX_TEXT]


def _domain(text: str) -> str:
    """Lower case, no trailing dot, A-labels (how cases store an IDN domain)."""
    name = text.lower().rstrip(".")
    if name.isascii():
        return name
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        return name


def _int(parent: Element | None, name: str, what: str) -> int:
    raw = _text(parent, name)
    try:
        return int(raw)
    except ValueError:
        raise ReportError("malformed", f"{what} is not a whole number: {raw[:40]!r}") from None


def parse_xml(data: bytes) -> Element:
    """The document's root, parsed with every DTD (hence every entity) refused."""
    try:
        root: Element = fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise ReportError("entities", f"refused a DTD or entity: {type(exc).__name__}") from None
    except ParseError as exc:
        raise ReportError("malformed", f"not well-formed XML: {exc}") from None
    return root


def _feedback(root: Element) -> Element:
    if _local(root.tag) == "feedback":
        return root
    for el in root.iter():  # some reporters wrap <feedback> (e.g. in an xs:schema element)
        if _local(el.tag) == "feedback":
            return el
    raise ReportError("not_aggregate", f"no <feedback> element (root is <{_local(root.tag)[:40]}>)")


def _schema(feedback: Element) -> tuple[str, str]:
    ns = _namespace(feedback.tag)
    if ns not in KNOWN_NAMESPACES:
        raise ReportError("unknown_schema", f"unknown namespace {ns[:80]!r}")
    version = _text(feedback, "version")
    if version and version.partition(".")[0] not in KNOWN_MAJOR_VERSIONS:
        raise ReportError("unknown_schema", f"unknown report version {version[:40]!r}")
    if ns == DMARCBIS_NAMESPACE or version.startswith("2"):
        return "dmarcbis", version
    return ("rfc7489" if version else "draft"), version


def _row(record: Element) -> ReportRow:
    row = _child(record, "row")
    if row is None:
        raise ReportError("malformed", "a <record> without <row>")
    ip_text = _text(row, "source_ip")
    try:
        address = ipaddress.ip_address(ip_text)
    except ValueError:
        raise ReportError("malformed", f"source_ip is not an address: {ip_text[:60]!r}") from None
    if getattr(address, "scope_id", None):
        # "fe80::1%eth0": a zone index names a link on the reporter's host, never a mail
        # source, and ipaddress cannot even give its reverse name (the PTR lookup raised).
        raise ReportError("malformed", f"source_ip has a zone index: {ip_text[:60]!r}")
    ip = str(address)
    count = _int(row, "count", "count")
    if count < 0 or count > MAX_ROW_COUNT:
        raise ReportError("bad_count", f"count {count} for {ip} is not believable")
    pe = _child(row, "policy_evaluated")
    ident = _child(record, "identifiers")
    auth = _child(record, "auth_results")
    return ReportRow(
        source_ip=ip, count=count,
        disposition=_text(pe, "disposition", "none").lower()[:20],
        dkim_eval=_text(pe, "dkim", "none").lower()[:20],
        spf_eval=_text(pe, "spf", "none").lower()[:20],
        header_from=_domain(_text(ident, "header_from")),
        envelope_from=_text(ident, "envelope_from").lower(),
        dkim=tuple(DkimAuth(_text(d, "domain").lower(), _text(d, "selector"), _text(d, "result", "none").lower())
                   for d in _children(auth, "dkim")),
        spf=tuple(SpfAuth(_text(s, "domain").lower(), _text(s, "scope", "mfrom").lower(),
                          _text(s, "result", "none").lower())
                  for s in _children(auth, "spf")),
    )


def parse_aggregate(data: bytes, *, now: datetime) -> AggregateReport:
    """One aggregate report from its XML bytes; raises ReportError (never anything else
    for bad input)."""
    feedback = _feedback(parse_xml(data))
    schema, version = _schema(feedback)
    meta = _child(feedback, "report_metadata")
    policy_el = _child(feedback, "policy_published")
    if meta is None or policy_el is None:
        raise ReportError("malformed", "report_metadata or policy_published missing")
    report_id = _text(meta, "report_id")
    domain = _domain(_text(policy_el, "domain"))
    if not report_id or not domain:
        raise ReportError("malformed", "report_id or policy_published/domain empty")
    dates = _child(meta, "date_range")
    try:
        begin = datetime.fromtimestamp(_int(dates, "begin", "date_range/begin"), UTC)
        end = datetime.fromtimestamp(_int(dates, "end", "date_range/end"), UTC)
    except (OverflowError, OSError, ValueError):
        raise ReportError("bad_dates", "date_range out of range") from None
    if begin > now + FUTURE_SLACK or end > now + FUTURE_SLACK + timedelta(days=1):
        raise ReportError("future_dates", f"the report covers {begin:%Y-%m-%d}..{end:%Y-%m-%d}, after today")
    if end < begin or begin < OLDEST_BEGIN:
        raise ReportError("bad_dates", f"date_range {begin:%Y-%m-%d}..{end:%Y-%m-%d} is not believable")
    records = _children(feedback, "record")
    if len(records) > MAX_ROWS:
        raise ReportError("oversized", f"{len(records)} records")
    policy = {_local(el.tag): " ".join((el.text or "").split())[:40] for el in policy_el
              if _local(el.tag) != "domain"}
    return AggregateReport(
        schema=schema, version=version, org_name=_text(meta, "org_name"),
        email=_text(meta, "email").lower(), report_id=report_id, begin=begin, end=end,
        domain=domain, policy=policy, rows=tuple(_row(r) for r in records),
    )
