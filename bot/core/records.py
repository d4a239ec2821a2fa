"""DNS records as text: the DKIM TXT value, its zone-file form in strings of at most 255
bytes, selector names, and the record boxes facility mails show. Pure functions of
their arguments; the keys themselves (files, generation) are ``bot/adapters/keys.py``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.core.providers import Provider

_LABEL_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_PLACEHOLDER_RE = re.compile(r"\{([^{}]*)\}")


@dataclass(frozen=True)
class DkimKey:
    """The public half of a DKIM key and where it is published."""

    domain: str
    selector: str
    algorithm: str  # "rsa" | "ed25519"
    bits: int
    public_b64: str  # the p= value

    @property
    def fqdn(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    @property
    def host_label(self) -> str:
        """The name relative to the zone, as most web DNS control panels want it."""
        return f"{self.selector}._domainkey"

    @property
    def record(self) -> str:
        return dkim_record(self.algorithm, self.public_b64)

    @property
    def zone_line(self) -> str:
        return render_zone_line(self.fqdn, self.record)


# --------------------------------------------------------------------------- names


def check_label(label: str, what: str) -> str:
    if not label:
        raise ValueError(f"{what} is empty")
    if len(label) > 63:
        raise ValueError(f"{what} {label!r} is {len(label)} characters; a DNS label has at most 63")
    if not _LABEL_RE.match(label):
        raise ValueError(
            f"{what} {label!r} is not a valid DNS label: use only lower-case letters a-z, "
            "digits and '-', not starting or ending with '-'"
        )
    return label


def render_selector(pattern: str, now: datetime) -> str:
    """Fill ``{YYYYMM}``, ``{YYYY}``, ``{MM}``, ``{DD}``, ``{YYYYMMDD}`` and check the label.

    Upper-case letters are folded to lower case (DNS names compare case-insensitively,
    so nothing is lost); anything else that is not a letter, digit or hyphen is an error.
    """
    values = {
        "YYYYMMDD": now.strftime("%Y%m%d"),
        "YYYYMM": now.strftime("%Y%m"),
        "YYYY": now.strftime("%Y"),
        "MM": now.strftime("%m"),
        "DD": now.strftime("%d"),
    }

    def fill(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in values:
            known = ", ".join("{" + k + "}" for k in values)
            raise ValueError(f"selector pattern {pattern!r}: unknown placeholder {{{name}}} (known: {known})")
        return values[name]

    selector = _PLACEHOLDER_RE.sub(fill, pattern).lower()
    return check_label(selector, f"selector (from pattern {pattern!r})")


def ed25519_selector(selector: str) -> str:
    """The selector of the additional Ed25519 key for dual signing (RFC 8463 §5)."""
    return check_label(f"{selector}-ed", "Ed25519 selector")


def validate_domain(domain: str) -> str:
    """An ASCII (IDNA) lower-case domain name; also what keeps key paths inside the store."""
    if not domain or len(domain) > 253 or domain != domain.lower():
        raise ValueError(f"domain {domain!r} must be a lower-case ASCII domain name")
    labels = domain.rstrip(".").split(".")
    if len(labels) < 2:
        raise ValueError(f"domain {domain!r} must have at least two labels")
    for label in labels:
        check_label(label, f"label of domain {domain!r}")
    return domain.rstrip(".")


def validate_selector(selector: str) -> str:
    """A selector may have several labels (RFC 6376 §3.1); each must be a valid label."""
    for label in selector.split("."):
        check_label(label, f"selector {selector!r} label")
    return selector


# --------------------------------------------------------------------------- records


def dkim_record(algorithm: str, public_b64: str) -> str:
    """The DKIM TXT value on one line (RFC 6376 §3.6.1; RFC 8463 §4.2 for k=ed25519).

    The only place a ``v=DKIM1`` record is written (tests/test_layers.py holds it so).
    """
    return f"v=DKIM1; k={algorithm}; p={public_b64}"


def split_txt_strings(value: str, limit: int = 255) -> list[str]:
    """Cut a TXT value into character-strings of at most ``limit`` bytes (RFC 1035 §3.3).

    DKIM values are ASCII, so bytes and characters coincide; a non-ASCII value is refused
    rather than cut inside a multi-byte character. Verifiers join the strings without
    separators (RFC 6376 §3.6.2.2), so ``"".join(result) == value``.
    """
    if not 1 <= limit <= 255:
        raise ValueError(f"limit must be 1..255 bytes, got {limit}")
    try:
        data = value.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError("a TXT value to split must be ASCII") from None
    if not data:
        return [""]
    return [data[i : i + limit].decode("ascii") for i in range(0, len(data), limit)]


def _quote(chunk: str) -> str:
    # Zone-file escaping: the escapes are one byte on the wire, so splitting happens
    # before quoting and the 255-byte limit still holds.
    return '"' + chunk.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_zone_line(fqdn: str, value: str) -> str:
    """``<fqdn>. IN TXT ( "..." "..." )``: the zone-file form, each string ≤ 255 bytes."""
    name = fqdn if fqdn.endswith(".") else fqdn + "."
    strings = " ".join(_quote(s) for s in split_txt_strings(value))
    return f"{name} IN TXT ( {strings} )"


#: What the host field takes for the domain itself when the panel is unknown.
APEX_FIELD = "空欄のままにしてください（空欄にできない場合は「@」）"


def quoted_form(value: str) -> str:
    """``"…" "…"``: the value as quoted strings of at most 255 bytes each."""
    return " ".join(_quote(s) for s in split_txt_strings(value))


def needs_quoting(provider: Provider | None, value: str) -> bool:
    """True when this panel takes the value only as quoted strings: Route 53 always,
    Cloud DNS when it is over 255 bytes."""
    if provider is None:
        return False
    return provider.always_quoted or (provider.long_values == "quoted" and len(value.encode()) > 255)


def record_box(domain: str, fqdn: str, value: str, rtype: str = "TXT",
               provider: Provider | None = None) -> dict[str, str]:
    """One record as a facility mail shows it, for the panel of ``provider`` (None:
    unknown host).

    A clerk on a phone copies the *first* line of a box into the host field, and most
    Japanese panels (お名前.com, さくら, Xserver, ムームー, ConoHa, Route 53 …) append the
    domain themselves: so ``field`` (the box's first line) is the label
    (``sel._domainkey``), or "leave it empty" / ``@`` for the domain itself, and
    ``field_note`` gives the full name second, as the name the panel shows after saving.
    ``paste`` is the value in the form that panel accepts (quoted 255-byte strings where
    it needs them). ``zone_line`` is for the mail's closing 「技術担当者様向け」 section
    only: pasting it with its quotes into an ordinary panel is the commonest mistake.
    """
    fqdn = fqdn.rstrip(".")
    label = fqdn[: -len(domain) - 1] if fqdn.endswith("." + domain) else "@"
    if label == "@":
        if provider is not None and provider.apex == "@":
            field = "@"
            note = f"（「@」はドメイン名そのものを表します。全体の名前：{fqdn}）"
        else:
            field = APEX_FIELD
            note = (f"（ドメイン名そのものに登録します。全体の名前：{fqdn}）" if provider is not None
                    else f"（ドメイン名まで入力する画面では：{fqdn}）")
    else:
        field = label
        if provider is not None and provider.host_field == "label":
            note = f"（「.{domain}」は画面が自動で付けます。付いた後の名前：{fqdn}）"
        else:
            note = f"（ドメイン名まで入力する画面では：{fqdn}）"
    return {
        "fqdn": fqdn, "domain": domain, "host_label": label, "type": rtype, "value": value,
        "field": field, "field_note": note,
        "paste": quoted_form(value) if needs_quoting(provider, value) else value,
        "zone_line": render_zone_line(fqdn, value),
    }


def dkim_box(domain: str, selector: str, algorithm: str, public_b64: str,
             provider: Provider | None = None) -> dict[str, str]:
    """The record box of one DKIM key of ``domain``."""
    return record_box(domain, f"{selector}._domainkey.{domain}", dkim_record(algorithm, public_b64),
                      provider=provider)
