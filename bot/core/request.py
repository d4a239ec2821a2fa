"""Read a request mail: the bytes of one message in, a ``ParsedMail`` out. Pure, no I/O.

Decides three things about a mail: whether it must never be answered (auto-replies,
bounces, lists, our own mail: SPEC §2), whether its subject asks for DKIM/DMARC, and which
facilities its body describes with the five labelled fields of the help page. Facility
staff type those fields in every way a mailer lets them, so the field reader is tolerant;
quoted replies, forwarded headers and signatures must never become facilities.
Charset and MIME handling lives in ``bot/core/mailtext.py``.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Collection, Iterator
from dataclasses import dataclass, replace
from email.errors import HeaderParseError, MessageDefect
from email.headerregistry import Address, AddressHeader, HeaderRegistry
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32

from bot.core.authority import fold_address
from bot.core.mailtext import (
    RULE_LINE,
    decode_bytes,
    decode_header_value,
    extract_body_text,
    split_sections,
)

__all__ = [
    "FIELDS",
    "FIELD_LABELS",
    "Facility",
    "FieldProblem",
    "ParsedMail",
    "message_fingerprint",
    "parse_facilities",
    "parse_message",
    "strip_invisible",
    "subject_is_request",
]

FIELDS = ("facility_name", "contact_name", "contact_email", "contact_phone", "admin_email")
FIELD_LABELS = {
    "facility_name": "施設名",
    "contact_name": "担当者様のお名前",
    "contact_email": "担当者様のメールアドレス",
    "contact_phone": "担当者様の電話番号",
    "admin_email": "予約番で使用する管理用メールアドレス",
}


@dataclass(frozen=True)
class FieldProblem:
    field: str  # one of FIELDS
    kind: str  # "missing" | "invalid" | "too_long"
    value: str | None  # what was written, for "invalid"


@dataclass(frozen=True)
class Facility:
    """One facility's five fields. A field that is missing or invalid is None here and
    named in ``problems`` (with what was written, for "invalid")."""

    facility_name: str | None
    contact_name: str | None
    contact_email: str | None
    contact_phone: str | None
    admin_email: str | None
    problems: tuple[FieldProblem, ...] = ()

    @property
    def domain(self) -> str | None:
        """The signing domain: admin_email's domain, IDNA (punycode), lower case."""
        if not self.admin_email or "@" not in self.admin_email:
            return None
        return self.admin_email.rsplit("@", 1)[1]


@dataclass(frozen=True)
class ParsedMail:
    message_id: str | None
    subject: str
    from_addr: str | None  # bare address, lower case
    in_reply_to: str | None
    references: tuple[str, ...]
    is_request: bool  # subject matches DKIM、DMARC設定希望
    no_reply_reason: str | None  # why the bot must never answer; None if answerable
    case_refs: tuple[str, ...]  # "DKIM-0007" references found in the subject
    body_text: str
    facilities: tuple[Facility, ...]
    # What makes this mail this mail, beyond its Message-ID: some mailers and web forms
    # reuse one Message-ID for every mail, so "seen this Message-ID" alone would drop a
    # different request. Copies of one mail (an alias, a UIDVALIDITY re-read) share it.
    fingerprint: str = ""
    # Where the sender asked replies to go (web forms send From: noreply@… with the
    # person in Reply-To); None when absent or the same as From.
    reply_to: str | None = None
    # Characters of the subject and text that could not be decoded exactly (U+FFFD: bytes
    # the declared charset and every guess reject). Counted so staff hear of it; a name
    # holding one is never stored (see _facility).
    undecodable: int = 0
    # Why the body was not read (MIME nested deeper than the parser can follow): the
    # headers alone were read, no facility is taken from it, staff are told.
    malformed: str | None = None
    # Why the mail has no sender the bot may answer as a facility, or None: a From or
    # Reply-To that is not one valid address ("info@victim.jp@evil.test", display text
    # without angle brackets), or one of the operator's own addresses (support@, staff,
    # the own domains). Such a mail gets no reply and opens nothing: staff are told.
    sender_problem: str | None = None

    @property
    def reply_address(self) -> str | None:
        """The address a reply to this mail goes to: Reply-To, else From; None when the
        mail has no usable sender (``sender_problem``)."""
        if self.sender_problem:
            return None
        return self.reply_to or self.from_addr


# ---------------------------------------------------------------------------------------
# Subject


def _nfkc(text: str) -> str:
    return unicodedata.normalize("NFKC", text)


# After NFKC: "，" is ",", "､" is "、", full-width letters are ASCII. "・" and "/" are how
# people who do not copy-paste join the two names.
_REQUEST_SUBJECT = re.compile(r"DKIM\s*[、,・/]?\s*DMARC\s*(?:の|を)?\s*設定\s*(?:を|の)?\s*希望",
                              re.IGNORECASE)
_CASE_REF = re.compile(r"(?<![A-Za-z0-9])DKIM\s*-\s*(\d{1,8})(?!\d)", re.IGNORECASE)


def subject_is_request(subject: str) -> bool:
    """True when the subject asks for the setup (SPEC §2), whatever prefixes or tags."""
    return bool(_REQUEST_SUBJECT.search(_nfkc(subject or "")))


def case_refs_in(subject: str) -> tuple[str, ...]:
    """The case references ("DKIM-0007") a subject names, however typed (full-width, spaced)."""
    return _case_refs(subject)


def _case_refs(subject: str) -> tuple[str, ...]:
    refs: list[str] = []
    for match in _CASE_REF.finditer(_nfkc(subject)):
        ref = f"DKIM-{match.group(1)}"
        if ref not in refs:
            refs.append(ref)
    return tuple(refs)


# ---------------------------------------------------------------------------------------
# Never answer

_AUTO_REPLY_HEADERS = (
    # Vendor markers of machine-made mail, from vacation programs and groupware.
    "x-autoreply", "x-autorespond", "x-autoresponder", "x-autoreply-from", "x-mail-autoreply",
    "x-autogenerated", "x-fc-machinegenerated", "x-ms-exchange-generated-message-source",
    "x-cron-env",
)
_AUTO_REPLY_SUBJECT = re.compile(
    r"^\s*(?:(?:\[[^\]]*\]|【[^】]*】)\s*)*(?:自動応答|自動返信|自動送信|不在通知|不在のお知らせ|automatic reply|"
    r"auto(?:matic)?[- ]?(?:reply|response)|out of (?:the )?office|autoreply|"
    r"undeliverable|undelivered mail|delivery status notification|"
    r"mail delivery (?:failed|failure)|returned mail|配信不能|配信エラー|配送エラー)",
    re.IGNORECASE,
)
_BOUNCE_LOCALPARTS = {"mailer-daemon", "postmaster", "mail-daemon", "mailerdaemon"}
LOOP_HEADER = "X-Dkimbot-Loop"


def _headers(msg: Message) -> dict[str, list[str]]:
    """Raw header values by lower-case name. raw_items() keeps 8-bit bytes as surrogate
    escapes instead of compat32's Header objects, so decoding stays in our hands."""
    result: dict[str, list[str]] = {}
    for name, value in msg.raw_items():
        if isinstance(name, str) and isinstance(value, str):
            result.setdefault(name.strip().lower(), []).append(value)
    return result


def _first(headers: dict[str, list[str]], name: str) -> str | None:
    values = headers.get(name)
    return values[0] if values else None


def _has_dsn_part(msg: Message) -> bool:
    for index, part in enumerate(msg.walk()):
        if index > 200:
            break
        ctype = part.get_content_type()
        if ctype in ("message/delivery-status", "message/global-delivery-status",
                     "multipart/report", "message/disposition-notification"):
            return True
    return False


def _no_reply_reason(msg: Message, headers: dict[str, list[str]], from_addr: str | None,
                     subject: str, own: set[str]) -> str | None:
    """Why this mail must never get an answer, or None (SPEC §2, RFC 3834 §2)."""
    if LOOP_HEADER.lower() in headers:
        return "loop: carries our own X-Dkimbot-Loop header"
    if from_addr and from_addr in own:
        return "own address: from the bot itself"
    if _has_dsn_part(msg):
        return "bounce: delivery status notification"
    return_path = _first(headers, "return-path")
    if return_path is not None and re.fullmatch(r"\s*<\s*>\s*", return_path):
        return "bounce: null return-path"
    sender = _first(headers, "from")
    if sender is not None and re.fullmatch(r"\s*<\s*>\s*", sender):
        return "bounce: null sender (From: <>)"  # RFC 5321 §4.5.5: never answered
    if from_addr and from_addr.split("@", 1)[0] in _BOUNCE_LOCALPARTS:
        return "bounce: from mailer-daemon"
    auto = _first(headers, "auto-submitted")
    if auto is not None and auto.strip().split(";", 1)[0].strip().lower() not in ("no", ""):
        return f"auto-submitted: {auto.strip().split(';', 1)[0].strip().lower()[:40]}"
    precedence = (_first(headers, "precedence") or "").strip().lower()
    if precedence in ("bulk", "junk", "list"):
        return f"precedence: {precedence}"
    for name in ("list-id", "list-unsubscribe", "list-post"):
        if name in headers:
            return f"mailing list: {name}"
    if "x-auto-response-suppress" in headers:
        return "auto-response-suppress header"
    for name in _AUTO_REPLY_HEADERS:
        if name in headers:
            return f"auto-reply: {name}"
    if _AUTO_REPLY_SUBJECT.search(subject):
        return "auto-reply: subject"
    return None


# ---------------------------------------------------------------------------------------
# Labels

# Canonical label spellings -> (field, strong). Keys are in _canon() form: NFKC, lower
# case, no spaces, no honorific/particle characters, no parenthesised notes. "strong" labels
# can open a facility block on their own; weak ones (TEL, メール, お名前) also appear in
# signatures, so a block made only of one weak label is noise.
_LABEL_TABLE: dict[str, tuple[str, list[str]]] = {
    "facility_name": ("strong", [
        "施設名", "宿泊施設名", "施設名称", "宿泊施設名称", "ホテル名", "旅館名", "宿名",
        "facilityname", "hotelname", "施設名前", "店舗名", "屋号",
    ]),
    "contact_name": ("strong", [
        "担当者名前", "担当者名", "担当者氏名", "担当者", "担当者フルネーム", "連絡担当者名",
        "contactname",
    ]),
    "contact_email": ("strong", [
        "担当者メールアドレス", "担当者メール", "担当者アドレス", "担当者e-mail", "担当者email",
        "担当者e-mailアドレス", "連絡先メールアドレス", "連絡先メール", "連絡用メールアドレス",
        "連絡先アドレス", "担当者連絡先メールアドレス", "contactemail",
    ]),
    "contact_phone": ("strong", [
        "担当者電話番号", "担当者電話", "担当者tel", "連絡先電話番号", "電話番号", "担当者連絡先電話番号",
        "携帯電話番号", "携帯番号", "連絡先tel", "contactphone",
    ]),
    "admin_email": ("strong", [
        "予約番で使用する管理用メールアドレス", "予約番で使用する管理用アドレス",
        "予約番で使用するメールアドレス", "予約番管理用メールアドレス", "予約番用管理用メールアドレス",
        "予約番用メールアドレス", "管理用メールアドレス", "管理用アドレス", "管理用メール",
        "管理メールアドレス", "管理者メールアドレス", "施設メールアドレス", "施設アドレス",
        "送信元メールアドレス", "adminemail",
    ]),
}
_WEAK_LABELS: dict[str, str] = {
    "名前": "contact_name", "氏名": "contact_name", "name": "contact_name",
    "メールアドレス": "contact_email", "メール": "contact_email", "e-mail": "contact_email",
    "email": "contact_email", "mail": "contact_email", "アドレス": "contact_email",
    "電話": "contact_phone", "tel": "contact_phone", "phone": "contact_phone",
}
_HONORIFICS = str.maketrans("", "", "の様ごお御貴 \t\u3000:")


def _canon(label: str) -> str:
    text = _nfkc(label).lower()
    # [^()]: each "(" scans only to the next parenthesis, so "((((…" stays linear.
    text = re.sub(r"\([^()]*\)|※.*$", "", text)
    return text.translate(_HONORIFICS).strip("・*-_")


def _build_labels() -> dict[str, tuple[str, bool]]:
    table: dict[str, tuple[str, bool]] = {}
    for field, (_, spellings) in _LABEL_TABLE.items():
        for spelling in spellings:
            table[_canon(spelling)] = (field, True)
    for field, label in FIELD_LABELS.items():
        table[_canon(label)] = (field, True)
    for spelling, field in _WEAK_LABELS.items():
        table[_canon(spelling)] = (field, False)
    return table


_LABELS = _build_labels()
# Substring fallback, longest first: "管理用メールアドレス" beats "メールアドレス".
_LABELS_BY_LENGTH = sorted(((k, v) for k, v in _LABELS.items() if len(k) >= 3),
                           key=lambda kv: -len(kv[0]))

_BULLET = re.compile(r"^\s*(?:[■□◆◇●○◎・*＊★☆▼▽▶►※-]+|\d{1,2}\s*[.)．、]|\(\d{1,2}\))\s*")
_BRACKETS = {"[": "]", "【": "】", "<": ">", "〈": "〉", "《": "》", "≪": "≫", "「": "」",
             "『": "』", "〔": "〕", "{": "}", "(": ")"}


# The longest label text looked up (the help page's longest label is 20 characters; a
# pasted label may carry a note in parentheses).
_LABEL_MAX = 120
# Field lengths (issue 11): a longer value is a field problem named in the needs-info
# mail, never mailed back verbatim. RFC 5321 allows 254 characters for an address.
NAME_MAX = 100
ADDRESS_MAX = 254

# Alone on a line without brackets these are greetings ("ご担当者様"), not labels.
_NOT_ALONE = {_canon("担当者"), _canon("ご担当者様")}


@dataclass(frozen=True)
class _Label:
    field: str
    strong: bool
    exact: bool  # False: recognised by a known label inside longer text ("[施設名カナ]")
    rest: str  # text after the label and its separator on the same line


def _lookup(head: str, *, fuzzy: bool) -> tuple[str, bool, bool] | None:
    if len(head) > _LABEL_MAX:
        return None  # no label is this long: not worth normalising
    key = _canon(head)
    if not key:
        return None
    if key in _LABELS:
        return (*_LABELS[key], True)
    if fuzzy and len(key) <= 30 and not re.search(r"[。、,.!?！？]", key):
        for spelling, hit in _LABELS_BY_LENGTH:
            if spelling in key:
                return (*hit, False)
    return None


def _match_label(line: str, depth: int = 0) -> _Label | None:
    """Recognise a field label at the start of a line (text already NFKC-normalised)."""
    body = _BULLET.sub("", line, count=1).strip()
    if not body:
        return None
    opener = body[0]
    if opener in _BRACKETS:
        close = body.find(_BRACKETS[opener], 1)
        if close > 1:
            hit = _lookup(body[1:close], fuzzy=True)
            if hit:
                rest = body[close + 1 :].lstrip(" \t:=")
                return _Label(*hit, rest.strip())
            rest = body[close + 1 :].strip()
            if depth == 0 and rest[:1] in _BRACKETS:
                # The help page's table pasted whole: "【本文】 [施設名] ホテル桜".
                return _match_label(rest, depth=1)
        return None
    # Unbracketed: "label: value", "label value", or the label alone on its line.
    colon = body.find(":")
    if 0 < colon <= 40:
        hit = _lookup(body[:colon], fuzzy=True)
        if hit:
            return _Label(*hit, body[colon + 1 :].strip())
    parts = re.split(r"[ \t]+", body, maxsplit=1)
    hit = _lookup(parts[0], fuzzy=False)
    if not hit:
        return None
    rest = parts[1].strip() if len(parts) > 1 else ""
    if not rest and _canon(parts[0]) in _NOT_ALONE:
        return None
    return _Label(*hit, rest)


# ---------------------------------------------------------------------------------------
# Values

_PHONE = re.compile(r"\+?\d[\d\-\s().]{6,}\d")
_DASHES = re.compile(r"[\u2010-\u2015\u2212\u30fc\uff70-]")  # ‐‑‒–—― − ー ｰ read as hyphens


def _clean_name(value: str) -> str | None:
    """Spaces (full-width ones too) between words become one space: they separate the
    name's words; the characters of the name stay as written, except invisible ones."""
    value = strip_invisible(re.sub(r"\s+", " ", value))
    value = re.sub(r" {2,}", " ", value).strip(" \t:：・")
    return value or None


def strip_invisible(text: str) -> str:
    """``text`` without format (Cf) and control (Cc) characters.

    Bidi overrides and isolates (U+202A-U+202E, U+2066-U+2069, U+200E/F, U+061C) turn
    "ホテル\u202egpj.exe" into what reads as another name in a staff subject, the web page
    and the facility's mails; zero-width characters (U+200B-U+200D, U+2060, U+FEFF) and
    the soft hyphen make two different names look the same. None belongs in a hotel's
    name, so a name from a mail never carries one."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(ch for ch in text if unicodedata.category(ch) not in ("Cf", "Cc"))


def _clean_email(value: str) -> str | None:
    """A bare lower-case address with a punycode domain, or None if not an address."""
    if len(value) > 4 * ADDRESS_MAX:
        return None  # far longer than any address: not worth reading (and linear-time safe)
    text = re.sub(r"(?i)mailto:", "", value)
    angle = re.search(r"<([^<>]+)>", text)
    if angle:
        text = angle.group(1)
    # Spaces around "@" are typing slips; a space inside a part is a different address.
    # (split/strip, not re.sub(r"\s*@\s*"): that regex is quadratic on long blank runs.)
    text = "@".join(part.strip() for part in text.strip().split("@")).strip("。．.、,;；\"'「」()[]")
    if len(text) > ADDRESS_MAX:
        return None
    if re.search(r"\s", text):
        return None
    if text.count("@") != 1:
        return None
    # Imported here: email_validator costs ~25 ms and the intake imports this module
    # on every pass, also an idle one that reads no address.
    from email_validator import EmailNotValidError, validate_email

    try:
        # No DNS here (pure module). SMTPUTF8 local parts are refused: 予約番 cannot send
        # from them. test_environment admits RFC 2606 ".test" domains, which the other
        # test suites use; such a domain can never pass the DNS checks in production.
        result = validate_email(text, check_deliverability=False, allow_smtputf8=False,
                                test_environment=True)
    except (EmailNotValidError, ValueError, UnicodeError):
        return None
    local, domain = result.ascii_email.rsplit("@", 1) if result.ascii_email else ("", "")
    if not local:
        return None
    return f"{local}@{domain}".lower()


def _clean_phone(value: str) -> str | None:
    """Japanese phone numbers in one form: the writer's grouping with "-" as separator,
    "+81" turned into a leading 0; digits alone stay digits alone."""
    text = _DASHES.sub("-", value)
    match = _PHONE.search(text)
    if not match:
        return None
    number = match.group(0)
    international = number.startswith("+")
    if international:
        number = number[1:].lstrip()
        if number.startswith("81"):
            number = "0" + re.sub(r"^81[\s\-]*(?:\(0\))?[\s\-]*0?", "", number)
            international = False
    number = re.sub(r"[\s().\-]+", "-", number).strip("-")
    digits = re.sub(r"\D", "", number)
    if international:
        return "+" + number if 8 <= len(digits) <= 15 else None
    if not digits.startswith("0") or not 10 <= len(digits) <= 11:
        return None
    return number


def _plausible_next_line(field: str, line: str) -> bool:
    """May this following line be the value of a label written alone on its line?"""
    if field in ("contact_email", "admin_email"):
        return "@" in line
    if field == "contact_phone":
        return bool(re.search(r"\d", line))
    return not (line.endswith("。") or "よろしく" in line or "お願い" in line)


def _facility(values: dict[str, str]) -> Facility:
    cleaned: dict[str, str | None] = {}
    problems: list[FieldProblem] = []
    for field in FIELDS:
        raw = values.get(field)
        if raw is None or not raw.strip():
            cleaned[field] = None
            problems.append(FieldProblem(field, "missing", None))
            continue
        raw = raw.strip()
        limit = ADDRESS_MAX if field in ("contact_email", "admin_email") else NAME_MAX
        if len(raw) > limit:
            # Named, never echoed whole: a stranger's 3,000-character "name" with a URL
            # must not be mailed back verbatim.
            cleaned[field] = None
            problems.append(FieldProblem(field, "too_long", raw[:30] + "…"))
            continue
        if field in ("contact_email", "admin_email"):
            value = _clean_email(raw)
        elif field == "contact_phone":
            value = _clean_phone(raw)
        else:
            value = _clean_name(raw)
            if value is not None and "\ufffd" in value:
                # Characters the mail's charset could not carry (see decode_bytes): never
                # store or address a garbled name; the facility is asked to write it again
                # (staff are in Cc of that reply).
                value = None
        if value is None:
            problems.append(FieldProblem(field, "invalid", raw))
        cleaned[field] = value
    return Facility(problems=tuple(problems), **cleaned)


# Names are kept as written (髙原ホテル①号館, ㈱山海リゾート): NFKC is only for finding
# labels and for addresses, never for what a facility calls itself.
_AS_WRITTEN = frozenset({"facility_name", "contact_name"})


def _as_written(original: str, normalized_rest: str) -> str:
    """The part of ``original`` whose NFKC form is ``normalized_rest`` (the value after
    the label, found on the normalised line): the value as its author wrote it."""
    want = normalized_rest.strip()
    if not want or len(original) > 500:
        return normalized_rest
    for start in range(len(original) - 1, -1, -1):
        tail = _nfkc(original[start:]).strip()
        if tail == want:
            return original[start:].strip()
        if len(tail) > len(want):
            break
    return normalized_rest


def _blocks(lines: list[str]) -> Iterator[dict[str, str]]:
    """Group labelled values into facility blocks; a repeated label starts a new block.

    A rule line (────, ====) after fields starts a signature unless what follows it holds
    at least two labels (then it is the separator between two facilities).
    """
    norm = [_nfkc(line).strip() for line in lines]
    labels = [_match_label(line) for line in norm]
    block: dict[str, str] = {}
    strong = False

    def worth_keeping() -> bool:
        # A facility needs two labels, or at least its name or admin address: a lone
        # "電話番号: …" in a question or a signature's TEL is not a facility.
        if not strong:
            return False
        if len(block) >= 2:
            return True
        return any(block.get(f, "").strip() for f in ("facility_name", "admin_email"))

    index = 0
    while index < len(norm):
        line, label = norm[index], labels[index]
        if label is None and RULE_LINE.match(line) and block:
            end = next((j for j in range(index + 1, len(norm)) if RULE_LINE.match(norm[j])), len(norm))
            if len({lab.field for lab in labels[index + 1 : end] if lab and lab.strong}) < 2:
                index = end
                continue
        if label is None:
            index += 1
            continue
        if label.field in block:
            if not label.exact:
                index += 1  # "[施設名カナ]" after "[施設名]": extra detail, not a new facility
                continue
            if worth_keeping():
                yield block
            block, strong = {}, False
        value = label.rest
        if value and label.field in _AS_WRITTEN:
            value = _as_written(lines[index], value)
        if not value:
            # The value on the next non-empty line (a form copied with labels on their own lines).
            for j in range(index + 1, min(index + 4, len(norm))):
                if not norm[j]:
                    continue
                if labels[j] is None and not RULE_LINE.match(norm[j]) and _plausible_next_line(
                        label.field, norm[j]):
                    value = lines[j].strip() if label.field in _AS_WRITTEN else norm[j]
                    index = j
                break
        block[label.field] = value
        strong = strong or label.strong
        index += 1
    if worth_keeping():
        yield block


def parse_facilities(text: str) -> list[Facility]:
    """The facilities a body describes, in order. Quoted and replied-to text is ignored;
    a forwarded request counts only when the author wrote no fields of their own."""
    own, forwarded = split_sections(text)
    for section in [own, *forwarded]:
        facilities = [_facility(values) for values in _blocks(section)]
        if facilities:
            return facilities
    return []


# ---------------------------------------------------------------------------------------
# The whole message

_MSG_ID = re.compile(r"<[^<>\s]+>")


_HEADERS = HeaderRegistry()
#: A From/Reply-To longer than this is not parsed: no person's address header is, and the
#: stdlib's header parser is not built for crafted input (it recurses per nested comment).
MAX_ADDRESS_HEADER = 1000


def _address(name: str, value: str | None) -> tuple[str | None, str | None]:
    """(address, None) for a From/Reply-To the bot can answer; (None, why) for one that
    is there but is not one valid address; (None, None) when there is none.

    Read strictly with the stdlib's RFC 5322 parser (``email.headerregistry``): any defect
    it reports ("info@victim.jp@evil.test", "山田 太郎 info@hotel.jp" without angle
    brackets, an unquoted comma in a display name) makes the header unusable instead of
    guessing at an address. With several addresses the first is read."""
    if value is None or not value.strip():
        return None, None
    text = _header_text(value)
    text = re.sub(r"\r?\n", "", text).strip()  # unfolded (RFC 5322 §2.2.3): a long From is folded
    shown = strip_invisible(re.sub(r"\s+", " ", text)).strip()[:120]
    if len(text) > MAX_ADDRESS_HEADER:
        return None, f"{name} is {len(text)} characters long: not read"
    if text.count("(") > 32:  # the parser recurses once per nested comment
        return None, f"{name} has {text.count('(')} comments: not read"
    try:
        header = _HEADERS(name, text)
        addresses: list[Address] = list(header.addresses) if isinstance(header, AddressHeader) else []
        valid = isinstance(header, AddressHeader) and _display_defects_only(header.defects, text, addresses)
    except (HeaderParseError, ValueError, IndexError, TypeError, AttributeError, RecursionError):
        valid, addresses = False, []  # the parser's own failure: not an address either
    if not valid or not addresses:
        return None, f"{name} is not one valid address: {shown!r}"
    addr = header_address(addresses[0].username, addresses[0].domain)
    if addr is None:
        return None, f"{name} is not an address the bot can answer: {shown!r}"
    return addr, None


#: Defects the stdlib reports about the display name alone, in forms Japanese mailers
#: really send: "Y. Yamada" / "山田.太郎" unquoted (RFC 5322 obs-phrase, still valid to
#: read), and an encoded-word inside quotes, "=?ISO-2022-JP?B?...?=" <x@hotel.jp>, which
#: Becky!, old Outlook Express and many web mailers write (RFC 2047 §5 forbids it; every
#: mail client decodes it). Any other defect still makes the header unusable.
_DISPLAY_NAME_DEFECTS = frozenset({
    "period in 'phrase'",
    "encoded word inside quoted string",
    "missing trailing whitespace after encoded-word",
})


def _display_defects_only(defects: Collection[MessageDefect], text: str, addresses: list[Address]) -> bool:
    """No defect, or only display-name defects when the first address stands literally
    between angle brackets in ``text``: a tolerated defect never decides the address
    (an encoded-word in a quoted local part, '"=?us-ascii?Q?info?="@evil.test', stays
    refused: its decoded address is not what the header says)."""
    if not defects:
        return True
    if any(str(d) not in _DISPLAY_NAME_DEFECTS for d in defects) or not addresses:
        return False
    first = addresses[0]
    angle = rf"<[ \t]*{re.escape(first.username)}@{re.escape(first.domain)}[ \t]*>"
    return re.search(angle, text, re.IGNORECASE) is not None


#: The characters that make an address header's structure. A charset guess that folds
#: one of them into a multibyte character (a Shift_JIS lead byte before "@" or "<") is
#: wrong, or crafted, and not used.
_STRUCTURE = '<>@",:;()[]'


def _header_text(value: str) -> str:
    """The header's text. Raw 8-bit display names, as old Japanese mailers write them
    without RFC 2047, are decoded by the body's charset guess (``mailtext.decode_bytes``:
    UTF-8, eucJP-ms, Shift_JIS/cp932, with its 0x5C second bytes that read as "\\" would
    escape the next character) when the guess keeps every structural character; raw
    ISO-2022-JP (escape sequences: its kanji bytes are ASCII, so they are not counted)
    the same way; else UTF-8 with replacement characters, which the strict read judges."""
    raw = value.encode("ascii", "surrogateescape")
    if raw.isascii():
        return decode_bytes(raw) if b"\x1b" in raw else value
    text = decode_bytes(raw)
    if all(text.count(c) == raw.count(c.encode()) for c in _STRUCTURE):
        return text
    return raw.decode("utf-8", "replace")


def header_address(local: str, domain: str) -> str | None:
    """A From/Reply-To address the bot can answer, lower case, its domain in IDNA
    (punycode) form: one ASCII local part, one domain that is a valid host name; None
    for anything else (a UTF-8 local part no SMTP server without SMTPUTF8 takes, spaces,
    controls, a domain literal, "bar..jp"). One such address must never block the outbox."""
    if not local or not domain or len(local) + len(domain) + 1 > ADDRESS_MAX:
        return None
    if not local.isascii() or not local.isprintable() or not domain.isprintable():
        return None
    from email_validator import EmailNotValidError, validate_email  # ~25 ms: see _clean_email

    try:
        result = validate_email(f"{local}@{domain}", check_deliverability=False, allow_smtputf8=False,
                                test_environment=True)
    except (EmailNotValidError, ValueError, UnicodeError):
        return None
    return result.ascii_email.lower() if result.ascii_email else None


def _operator_address(addr: str, staff: Collection[str], own_domains: Collection[str]) -> bool:
    """Is ``addr`` the operator's own (support@, a staff address, any address at an own
    domain or below it)? Such an address is never a facility's requester or contact."""
    domain = addr.rpartition("@")[2]
    if any(domain == d or domain.endswith("." + d) for d in own_domains):
        return True
    return fold_address(addr) in {fold_address(a) for a in staff}


#: At most this many References ids are read: the thread's root and the newest ones, as
#: RFC 5322 §3.6.4 trims them. Each id is looked up (the bot's mails, cases' roots); a
#: crafted header of 40,000 ids kept one message busy for seconds per lookup (red team).
MAX_REFERENCES = 50


def _trimmed_references(ids: list[str]) -> tuple[str, ...]:
    if len(ids) <= MAX_REFERENCES:
        return tuple(ids)
    return (ids[0], *ids[-(MAX_REFERENCES - 1):])


def message_fingerprint(date: str | None, from_addr: str | None, subject: str, body: str) -> str:
    """A digest of what a person wrote and when: the Date header, sender, subject and the
    decoded body text with whitespace collapsed. Transfer encoding, Received lines and
    other relay-added headers do not change it, so two copies of one mail agree; two
    different mails that share a Message-ID do not."""
    parts = [re.sub(r"\s+", " ", date or "").strip(), from_addr or "", subject,
             re.sub(r"\s+", " ", body).strip()]
    return hashlib.sha256("\x00".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


#: The decoded body text a mail is read from is cut here (issue 11: a crafted 500 KB
#: body must not keep the parser busy); a real request is a few hundred characters.
MAX_TEXT_CHARS = 100_000


@dataclass(frozen=True)
class _Senders:
    from_addr: str | None
    reply_to: str | None  # None when absent, the same as From, or unusable
    problem: str | None  # see ParsedMail.sender_problem


def _senders(headers: dict[str, list[str]], own: set[str], staff: Collection[str],
             own_domains: Collection[str]) -> _Senders:
    from_addr, from_problem = _address("From", _first(headers, "from"))
    reply_to, reply_problem = _address("Reply-To", _first(headers, "reply-to"))
    problem = from_problem or reply_problem
    operator = [*own, *staff]
    for name, addr in (("From", from_addr), ("Reply-To", reply_to)):
        if problem is None and addr and _operator_address(addr, operator, own_domains):
            problem = f"{name} is the operator's own address ({addr})"
    if reply_to == from_addr:
        reply_to = None
    return _Senders(from_addr, reply_to, problem)


def _no_operator_contacts(facilities: list[Facility], staff: Collection[str],
                          own_domains: Collection[str]) -> list[Facility]:
    """A contact address of the operator's own (staff@, anything at an own domain) is no
    facility's contact: the field is named invalid, so it is never copied on a mail."""
    out = []
    for f in facilities:
        if f.contact_email and _operator_address(f.contact_email, staff, own_domains):
            problem = FieldProblem("contact_email", "invalid", f.contact_email)
            f = replace(f, contact_email=None, problems=(*f.problems, problem))
        out.append(f)
    return out


def parse_message(raw: bytes, *, own_addresses: Collection[str] = (),
                  staff_addresses: Collection[str] = (), own_domains: Collection[str] = (),
                  max_text_chars: int = MAX_TEXT_CHARS) -> ParsedMail:
    """Read one mail. Never raises on malformed input: whatever cannot be read is empty.

    ``facilities`` is always empty when ``no_reply_reason`` or ``sender_problem`` is set,
    so a bounce that quotes a request, or a request "from" staff, cannot open a case even
    if a caller forgets to check. ``own_addresses`` are the bot's own (mail from them is
    a loop, never answered); they, ``staff_addresses`` and any address at ``own_domains``
    are never a facility's requester or contact.
    """
    malformed = mime_too_deep(raw)
    body_msg: Message | None = None
    if malformed is None:
        try:
            body_msg = BytesParser(policy=compat32).parsebytes(raw)
        except RecursionError:  # the scan above is a bound; this is the guarantee
            malformed = "MIME structure nested too deeply to read"
    # Malformed: the headers alone, enough for the subject, sender and no-reply rules.
    msg = body_msg if body_msg is not None else BytesParser(policy=compat32).parsebytes(raw, headersonly=True)
    headers = _headers(msg)
    subject = re.sub(r"\s+", " ", decode_header_value(_first(headers, "subject"))).strip()
    message_id_match = _MSG_ID.search(_first(headers, "message-id") or "")
    in_reply_to_match = _MSG_ID.search(_first(headers, "in-reply-to") or "")
    references = _trimmed_references(_MSG_ID.findall(" ".join(headers.get("references", []))))
    own = {address.strip().lower() for address in own_addresses}
    domains = [d.strip().lower().rstrip(".") for d in own_domains if d.strip()]
    senders = _senders(headers, own, staff_addresses, domains)
    from_addr = senders.from_addr
    reason = _no_reply_reason(msg, headers, from_addr, subject, own)
    body = ""
    if body_msg is not None:
        try:
            body = extract_body_text(body_msg)[:max_text_chars]
        except RecursionError:
            malformed = "MIME structure nested too deeply to read"
    facilities = () if reason or malformed or senders.problem else tuple(
        _no_operator_contacts(parse_facilities(body), [*own, *staff_addresses], domains))
    return ParsedMail(
        message_id=message_id_match.group(0) if message_id_match else None,
        subject=subject,
        from_addr=from_addr,
        in_reply_to=in_reply_to_match.group(0) if in_reply_to_match else None,
        references=references,
        is_request=subject_is_request(subject),
        no_reply_reason=reason,
        case_refs=_case_refs(subject),
        body_text=body,
        facilities=facilities,
        fingerprint=message_fingerprint(_first(headers, "date"), from_addr, subject, body),
        reply_to=senders.reply_to,
        undecodable=subject.count("\ufffd") + body.count("\ufffd"),
        malformed=malformed,
        sender_problem=senders.problem,
    )


# At most this many multipart/* and message/* containers in one mail. Python's email
# parser recurses once per nesting level and fails near a thousand (RecursionError); real
# mail nests a handful deep, and the text reader stops at 20 levels anyway.
MAX_MIME_CONTAINERS = 200
_CONTAINER = re.compile(rb"^content-type:[ \t]*(?:\r?\n[ \t]+)?(?:multipart|message)/", re.IGNORECASE | re.MULTILINE)


def mime_too_deep(raw: bytes) -> str | None:
    """Why ``raw`` is not parsed beyond its headers, or None. A cheap scan of the
    Content-Type lines declaring containers, before the recursive parser sees them."""
    count = sum(1 for _ in _CONTAINER.finditer(raw))
    if count > MAX_MIME_CONTAINERS:
        return f"{count} nested MIME containers (at most {MAX_MIME_CONTAINERS} are read)"
    return None
