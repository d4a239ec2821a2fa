"""The values DNS checks deal in: answers (``Lookup``, ``DnsFailure``, ``TxtRecord``),
verdicts (``Diagnosis``, ``AreaResult``, ``CheckReport``), and ``DnsLookup``, the
Protocol a check asks DNS through.

Why a Protocol here: checks (``bot/checks``) judge what DNS says but must not import
the I/O layer (``bot/adapters``); the concrete ``DnsClient`` (dnspython, sockets) lives
in ``bot/adapters/dnsclient.py`` and satisfies this Protocol, and flows hand it in. A
test can hand in anything with these methods.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

# ---------------------------------------------------------------------------
# Result values (shared by the DKIM, DMARC, SPF and alignment checks)
# ---------------------------------------------------------------------------


@dataclass
class Diagnosis:
    """One named finding: a stable ``code`` (SPEC §4), a Japanese sentence fit for a
    facility mail, and the evidence for the event log."""

    code: str
    message: str
    severity: str = "error"  # "error" | "warning"
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "severity": self.severity,
                "detail": self.detail}


#: How a ``dns_error`` message ends. The bot's own checks do ask again on their schedule;
#: after the one-off ``dkimbot check`` nothing does, so the person is asked to
#: (``for_one_off``).
RETRY_BY_BOT = "時間をおいて自動的に再確認します。"
RETRY_BY_HAND = "時間をおいてもう一度お試しください。"


@dataclass
class AreaResult:
    """The verdict of one area (dkim, dmarc, spf, alignment).

    An area that was not asked (``found["skipped"]`` holds why) has ``ok`` true only in
    the sense that nothing failed: it blocks nothing, but it was not verified, and every
    display says so (``skipped``)."""

    ok: bool
    diagnoses: list[Diagnosis] = field(default_factory=list)
    found: dict[str, Any] = field(default_factory=dict)

    @property
    def skipped(self) -> str | None:
        """Why this area was not asked; None when it was."""
        why = self.found.get("skipped")
        return str(why) if why else None

    @property
    def dns_error(self) -> bool:
        return any(d.code == "dns_error" for d in self.diagnoses)

    @property
    def codes(self) -> list[str]:
        return [d.code for d in self.diagnoses]

    @property
    def errors(self) -> list[Diagnosis]:
        return [d for d in self.diagnoses if d.severity == "error"]

    @property
    def only_dns_errors(self) -> bool:
        """Failing, but only because DNS did not answer: retry, tell nobody outside."""
        errs = self.errors
        return not self.ok and bool(errs) and all(d.code == "dns_error" for d in errs)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": self.ok, "diagnoses": [d.to_json() for d in self.diagnoses],
                               "found": self.found}
        if self.skipped:
            out["skipped"] = True  # only then, so an asked area keeps the documented shape
        return out


@dataclass
class CheckReport:
    dkim: AreaResult
    dmarc: AreaResult
    spf: AreaResult
    alignment: AreaResult

    AREAS = ("dkim", "dmarc", "spf", "alignment")

    def areas(self) -> list[tuple[str, AreaResult]]:
        return [(name, getattr(self, name)) for name in self.AREAS]

    @property
    def ok(self) -> bool:
        return all(area.ok for _, area in self.areas())

    def to_json(self) -> dict[str, Any]:
        """The SPEC §4 shape: each area holds ``ok`` and ``diagnoses`` of code+message
        (plus severity, detail and ``found`` as evidence, and ``skipped`` when not asked)."""
        return {name: area.to_json() for name, area in self.areas()}


def stored_skip_reason(area: Mapping[str, Any]) -> str | None:
    """Why a stored area (``AreaResult.to_json`` in an event) was not asked, or None.
    Events stored before the ``skipped`` flag existed carry only ``found.skipped``."""
    found = area.get("found")
    why = found.get("skipped") if isinstance(found, Mapping) else None
    if why:
        return str(why)
    return "not asked" if area.get("skipped") else None


def for_one_off(report: CheckReport) -> CheckReport:
    """``report`` worded for a one-off command: a DNS error's message asks the person to
    try again later instead of promising an automatic recheck that will not happen."""
    def area(a: AreaResult) -> AreaResult:
        diagnoses = [replace(d, message=d.message.replace(RETRY_BY_BOT, RETRY_BY_HAND))
                     if d.code == "dns_error" else d for d in a.diagnoses]
        return AreaResult(a.ok, diagnoses, a.found)
    return CheckReport(*(area(a) for _, a in report.areas()))


# ---------------------------------------------------------------------------
# DNS answers
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DnsFailure:
    """No usable answer: timeout, SERVFAIL, REFUSED, unreachable, not authoritative.
    Never a statement that a record is missing."""

    reason: str
    server: str | None = None
    name: str | None = None

    def __str__(self) -> str:
        where = f" from {self.server}" if self.server else ""
        return f"{self.reason}{where} for {self.name}"

    def to_json(self) -> dict[str, Any]:
        return {"error": self.reason, "server": self.server}


# RFC 1035 §2.3.4: a name is at most 255 octets on the wire, i.e. 253 characters of text
# without the trailing dot. A longer name cannot be asked; it is a failure, not a crash.
MAX_NAME_TEXT = 253
# CNAME hops followed across zones before giving up (RFC 1034 leaves it to the resolver;
# real chains are one or two hops, a loop is endless).
MAX_ALIAS_HOPS = 8


class DnsQueryError(Exception):
    """Raised by the ``query_*`` convenience calls; carries the DnsFailure."""

    def __init__(self, failure: DnsFailure):
        super().__init__(str(failure))
        self.failure = failure


class TxtRecord(str):
    """One TXT record: its character-strings joined without separator (RFC 6376
    §3.6.2.2, RFC 7208 §3.3), as text; ``strings`` keeps the raw bytes so a caller
    can see how it was split and whether literal quotes were stored."""

    strings: tuple[bytes, ...]

    def __new__(cls, strings: tuple[bytes, ...] | list[bytes] | bytes | str) -> TxtRecord:  # noqa: PYI034
        if isinstance(strings, str):
            strings = (strings.encode("utf-8"),)
        elif isinstance(strings, bytes):
            strings = (strings,)
        raw = b"".join(strings)
        # A TXT value is bytes; clerks paste ASCII, but a full-width character pasted
        # by mistake must still be shown, not crash the check.
        obj = super().__new__(cls, raw.decode("utf-8", errors="replace"))
        obj.strings = tuple(strings)
        return obj

    @property
    def raw(self) -> bytes:
        return b"".join(self.strings)


@dataclass(frozen=True)
class Lookup:
    """A definite answer: NOERROR (maybe with no data) or NXDOMAIN."""

    name: str
    rdtype: str
    rcode: str = "NOERROR"
    records: tuple[Any, ...] = ()
    cname: str | None = None  # the name was an alias (chased) to this target

    @property
    def void(self) -> bool:
        """RFC 7208 §4.6.4: NXDOMAIN or no answer."""
        return not self.records

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rcode": self.rcode, "records": [str(r) for r in self.records]}
        if self.cname:
            out["cname"] = self.cname
        return out


Answer = Lookup | DnsFailure


@functools.lru_cache(maxsize=65536)  # idna encoding costs more than a query's parse
def normalize_name(name: str) -> str:
    """Lower case, no trailing dot, IDNA A-labels (a clerk may type 日本語.jp)."""
    name = name.strip().rstrip(".").lower()
    if not name:
        return name
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        return name


class DnsLookup(Protocol):
    """What the checks ask of DNS (``bot.adapters.dnsclient.DnsClient`` is the real one)."""

    def lookup(self, name: str, rdtype: str) -> Answer: ...

    def zone_for(self, name: str) -> str | DnsFailure: ...

    def nameserver_addresses(self, zone: str) -> dict[str, list[str]]: ...

    def prefetch(self, names: list[tuple[str, str]], *, first_server_only: bool = False) -> None: ...

    def authoritative_lookup(self, name: str, rdtype: str) -> dict[str, Answer]: ...

    def authoritative_first(self, name: str, rdtype: str) -> Answer: ...

    def authoritative_txt(self, name: str) -> dict[str, list[TxtRecord] | DnsFailure]: ...

    def authoritative_merged(self, name: str, rdtype: str) -> Answer: ...
