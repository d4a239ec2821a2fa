"""Turn the bytes of a Japanese mail into text: charsets, encoded words, MIME, HTML,
and the text into the part its author wrote (no quotes, replied-to originals, signatures).

Pure functions, no I/O. Everything here is lenient by design: a facility's mailer decides
what we receive, so a wrong label, a broken encoded word or garbage bytes must yield the
best text we can recover, never an exception (see ``bot/core/request.py`` for the caller).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import quopri
import re
from email.message import Message
from html.parser import HTMLParser

__all__ = [
    "RULE_LINE",
    "decode_bytes",
    "decode_header_value",
    "extract_body_text",
    "html_to_text",
    "split_sections",
    "unflow",
]

# The three Japanese encodings, each mapped to the Microsoft superset that Windows and
# carrier mailers really write: "Shift_JIS" mail carries CP932 characters (髙, ①, ～), and
# "ISO-2022-JP" mail from Outlook/Becky! carries NEC row 13 (①, ㈱) and IBM extensions
# (CP50220), which Python's strict iso2022_jp codec rejects.
_ISO2022JP = "x-iso2022jp-cp932"
_EUCJP_MS = "x-eucjp-ms"
# JIS X 0213 designations (ISO-2022-JP-3/-2004): plane 1 (2000, 2004) and plane 2.
_ESCAPES_0213 = (b"\x1b$(O", b"\x1b$(Q", b"\x1b$(P")
_CHARSET_ALIASES: dict[str, str] = {
    "iso-2022-jp": _ISO2022JP,
    "iso2022-jp": _ISO2022JP,
    "iso-2022-jp-1": _ISO2022JP,
    "iso-2022-jp-2": _ISO2022JP,
    "iso-2022-jp-3": _ISO2022JP,
    "iso-2022-jp-2004": _ISO2022JP,  # with JIS X 0213 escapes: Python's codec first, below
    "iso-2022-jp-ms": _ISO2022JP,
    "csiso2022jp": _ISO2022JP,
    "cp50220": _ISO2022JP,
    "cp50221": _ISO2022JP,
    "cp50222": _ISO2022JP,
    "jis": _ISO2022JP,
    "shift_jis": "cp932",
    "shift-jis": "cp932",
    "shiftjis": "cp932",
    "sjis": "cp932",
    "x-sjis": "cp932",
    "s-jis": "cp932",
    "ms_kanji": "cp932",
    "csshiftjis": "cp932",
    "windows-31j": "cp932",
    "cp932": "cp932",
    "ms932": "cp932",
    "x-ms-cp932": "cp932",
    "shift_jis-2004": "shift_jis_2004",
    "shift_jisx0213": "shift_jisx0213",
    # eucJP-ms (Linux/Unix mailers): EUC-JP plus NEC row 13 (①, ㈱) and the NEC-selected
    # IBM extensions (髙, 﨑), which Python's strict euc_jp rejects.
    "euc-jp": _EUCJP_MS,
    "x-euc-jp": _EUCJP_MS,
    "eucjp": _EUCJP_MS,
    "euc_jp": _EUCJP_MS,
    "eucjp-ms": _EUCJP_MS,
    "cseucpkdfmtjapanese": _EUCJP_MS,
    "euc-jis-2004": "euc_jis_2004",
    "utf-8": "utf-8",
    "utf8": "utf-8",
    "unicode-1-1-utf-8": "utf-8",
}
# Labels that say nothing about 8-bit content: decide from the bytes.
_UNINFORMATIVE = {"", "us-ascii", "ascii", "ansi_x3.4-1968", "unknown-8bit", "x-unknown", "unknown",
                  "default", "none"}
# Labels often slapped on UTF-8 or Japanese bytes by broken web forms.
_WEAK_SINGLE_BYTE = {"iso-8859-1", "latin1", "latin-1", "windows-1252", "cp1252"}

_ESCAPES_2022 = (b"\x1b$B", b"\x1b$@", b"\x1b(J", b"\x1b(I", b"\x1b$(Q", b"\x1b$(O")
_GUESS_ORDER = ("utf-8", _EUCJP_MS, "cp932")


def _codec_for(label: str | None) -> str | None:
    """The codec to use for a declared charset, or None when the label is useless."""
    if not label:
        return None
    name = label.strip().strip('"').lower()
    if name in _UNINFORMATIVE:
        return None
    if name in _CHARSET_ALIASES:
        return _CHARSET_ALIASES[name]
    try:
        return codecs.lookup(name).name
    except (LookupError, ValueError):
        return None


def _jis_to_sjis(c1: int, c2: int) -> tuple[int, int]:
    """Map a JIS X 0208 code (both bytes 0x21..0x7E) to its Shift_JIS/CP932 bytes."""
    if c1 & 1:
        s2 = c2 + 0x1F
        if s2 >= 0x7F:
            s2 += 1
    else:
        s2 = c2 + 0x7E
    s1 = ((c1 - 0x21) >> 1) + 0x81
    if s1 > 0x9F:
        s1 += 0x40
    return s1, s2


def _decode_iso2022jp(data: bytes) -> str:
    """Decode ISO-2022-JP as CP50220 does, by transcoding to CP932.

    JIS rows 13 (NEC specials) and 89-92 (NEC-selected IBM extensions) land exactly on
    CP932's 0x87xx and 0xEDxx-0xEExx, so cp932 then decodes ① and ㈱ that a strict
    RFC 1468 decoder rejects. Unknown escapes or stray 8-bit bytes degrade to U+FFFD.
    """
    out = bytearray()
    mode = "ascii"  # "ascii" | "jis" | "kana" | "jisx0212"
    saved = "ascii"
    i, n = 0, len(data)
    while i < n:
        b = data[i]
        if b == 0x1B:
            seq = data[i : i + 4]
            if seq.startswith((b"\x1b(B", b"\x1b(J")):
                mode, i = "ascii", i + 3
            elif seq.startswith(b"\x1b(I"):
                mode, i = "kana", i + 3
            elif seq.startswith((b"\x1b$B", b"\x1b$@")):
                mode, i = "jis", i + 3
            elif seq.startswith((b"\x1b$(Q", b"\x1b$(O", b"\x1b$(B")):
                mode, i = "jis", i + 4  # JIS X 0213 plane 1 is a superset of 0208
            elif seq.startswith(b"\x1b$(D"):
                mode, i = "jisx0212", i + 4
            elif seq.startswith(b"\x1b&@"):
                i += 3  # JIS X 0208-1990 announcer, followed by ESC $ B
            else:
                i += 1  # lone ESC: drop it
            continue
        if b == 0x0E:  # SO: half-width katakana (CP50221 style)
            saved, mode, i = mode, "kana", i + 1
            continue
        if b == 0x0F:  # SI
            mode, i = saved, i + 1
            continue
        if b in (0x0A, 0x0D) or b >= 0x80 or mode == "ascii":
            out.append(b)
            i += 1
            continue
        if mode == "kana":
            out.append(b + 0x80 if 0x21 <= b <= 0x5F else b)
            i += 1
            continue
        # Two-byte modes. A missing second byte (truncated mail) becomes U+FFFD.
        if i + 1 < n and 0x21 <= b <= 0x7E and 0x21 <= data[i + 1] <= 0x7E:
            if mode == "jis":
                out.extend(_jis_to_sjis(b, data[i + 1]))
            else:
                out.extend(b"\xff")  # JIS X 0212 has no CP932 mapping
            i += 2
        else:
            out.append(b)
            i += 1
    return bytes(out).decode("cp932", errors="replace")


def _decode_eucjp_ms(data: bytes) -> str:
    """EUC-JP as eucJP-ms reads it: what Python's euc_jp knows, as it decodes it; a
    two-byte code it rejects (NEC row 13, NEC-selected IBM rows 89-92) through its JIS
    code to CP932, where those rows live. Anything else becomes U+FFFD (counted)."""
    try:
        return data.decode("euc_jp")
    except UnicodeDecodeError:
        pass
    out: list[str] = []
    i, n = 0, len(data)
    while i < n:
        b = data[i]
        size = 1 if b < 0x80 else 3 if b == 0x8F else 2
        unit = data[i:i + size]
        try:
            out.append(unit.decode("euc_jp"))
        except UnicodeDecodeError:
            mapped = None
            if size == 2 and len(unit) == 2 and 0xA1 <= b <= 0xFE and 0xA1 <= unit[1] <= 0xFE:
                try:
                    mapped = bytes(_jis_to_sjis(b - 0x80, unit[1] - 0x80)).decode("cp932")
                except UnicodeDecodeError:
                    mapped = None
            if mapped is not None and len(mapped) == 1:
                out.append(mapped)
            else:
                out.append("\ufffd")
                if not (len(unit) == 2 and 0xA1 <= b <= 0xFE and 0xA1 <= unit[1] <= 0xFE):
                    size = 1  # not a whole code: resynchronise on the next byte
        i += size
    return "".join(out)


def _decode_strict(data: bytes, codec: str) -> str | None:
    try:
        if codec == _ISO2022JP:
            text = _decode_iso2022jp(data)
            return None if "\ufffd" in text else text
        if codec == _EUCJP_MS:
            text = _decode_eucjp_ms(data)
            return None if "\ufffd" in text else text
        return data.decode(codec)
    except (UnicodeDecodeError, LookupError):
        return None


def _decode_replace(data: bytes, codec: str) -> str:
    if codec == _ISO2022JP:
        return _decode_iso2022jp(data)
    if codec == _EUCJP_MS:
        return _decode_eucjp_ms(data)
    try:
        return data.decode(codec, errors="replace")
    except LookupError:
        return data.decode("utf-8", errors="replace")


def _badness(text: str) -> int:
    """Lower is likelier: replacement characters are fatal, stray half-width kana suspect.

    EUC-JP read as CP932 rarely fails outright but turns into half-width katakana soup.
    """
    bad = text.count("\ufffd") * 10
    bad += sum(1 for ch in text if "\uff61" <= ch <= "\uff9f")
    # Private-use characters: what cp932 makes of bytes 0xFD-0xFF and user-defined codes
    # (a carrier emoji is one; a run of them is another charset read wrongly).
    # cp932 maps the bytes 0x80, 0xA0 and 0xFD-0xFF, never text, to U+F8F0-U+F8F3.
    bad += sum(20 if ch >= "\uf8f0" else 10 for ch in text if "\ue000" <= ch <= "\uf8ff")
    return bad


def decode_bytes(data: bytes, declared: str | None = None) -> str:
    """Decode mail text bytes, trusting the declared charset only as far as the bytes agree."""
    if not data:
        return ""
    if data.isascii():
        if any(esc in data for esc in _ESCAPES_0213):
            # ISO-2022-JP-2004 (山﨑: JIS X 0213 plane 1): Python's codec maps it exactly;
            # CP50220-style reading would put the wrong character there.
            try:
                return data.decode("iso2022_jp_2004")
            except UnicodeDecodeError:
                pass
        if any(esc in data for esc in _ESCAPES_2022):
            # ISO-2022-JP is 7-bit, so mis-labelled (or unlabelled) JIS text shows here.
            return _decode_iso2022jp(data)
        return data.decode("ascii")
    codec = _codec_for(declared)
    if codec is not None and declared is not None and declared.strip().lower() in _WEAK_SINGLE_BYTE:
        text = _decode_strict(data, "utf-8")
        if text is not None:
            return text
    declared_text: str | None = None
    if codec is not None:
        text = _decode_strict(data, codec)
        if text is not None:
            return text
        # A mostly-right declaration (one broken byte) beats a clean-but-wrong guess.
        text = _decode_replace(data, codec)
        if text.count("\ufffd") <= max(2, len(text) // 200):
            return text
        declared_text = text
    best: tuple[int, str] | None = None
    for candidate in _GUESS_ORDER:
        text = _decode_strict(data, candidate)
        if text is not None:
            score = _badness(text)
            if best is None or score < best[0]:
                best = (score, text)
            if score == 0:
                break
    if best is not None and (declared_text is None or best[0] < _badness(declared_text)):
        # A guess that decodes without error still loses to the declared charset when it
        # reads as worse (half-width kana soup, private-use characters): the declared
        # reading keeps its U+FFFD, which are counted and reported, never hidden.
        return best[1]
    if declared_text is not None:
        return declared_text
    fallback = [_decode_replace(data, c) for c in ((codec,) if codec else ()) + _GUESS_ORDER]
    return min(fallback, key=_badness)


# ---------------------------------------------------------------------------------------
# RFC 2047 encoded words

_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_FOLD = re.compile(r"\r?\n(?=[ \t])")


def _decode_word_payload(encoding: str, payload: str) -> bytes | None:
    if encoding in "bB":
        cleaned = re.sub(r"[^A-Za-z0-9+/]", "", payload)
        cleaned += "=" * (-len(cleaned) % 4)
        try:
            return base64.b64decode(cleaned)
        except (binascii.Error, ValueError):
            return None
    # RFC 2047 §4.2: "_" is a space in Q encoding.
    return quopri.decodestring(payload.replace("_", " ").encode("ascii", "replace"))


def _raw(text: str) -> bytes:
    """Header text as parsed with surrogateescape back to its original bytes."""
    return text.encode("ascii", errors="surrogateescape")


def decode_header_value(value: str | None) -> str:
    """Unfold and decode a raw header value (RFC 5322 §2.2.3, RFC 2047).

    Adjacent encoded words of one charset are joined *before* decoding, because mailers
    split base64 in the middle of a multi-byte character (and ISO-2022-JP in the middle of
    an escape run). Whitespace between encoded words is dropped (RFC 2047 §6.2). Raw 8-bit
    headers, which some mailers send, are decoded by guessing.
    """
    if not value:
        return ""
    value = _FOLD.sub("", value)
    pieces: list[tuple[str | None, bytes]] = []  # (charset or None for literal, bytes)
    pos = 0
    for match in _ENCODED_WORD.finditer(value):
        literal = value[pos : match.start()]
        decoded = _decode_word_payload(match.group(2), match.group(3))
        if decoded is None:
            continue  # leave it in the literal run
        if literal and not (literal.isspace() and pieces and pieces[-1][0] is not None):
            pieces.append((None, _raw(literal)))
        charset = match.group(1).split("*", 1)[0].lower()
        if pieces and pieces[-1][0] == charset:
            pieces[-1] = (charset, pieces[-1][1] + decoded)
        else:
            pieces.append((charset, decoded))
        pos = match.end()
    if pos < len(value):
        pieces.append((None, _raw(value[pos:])))
    return "".join(decode_bytes(data, charset) for charset, data in pieces).strip()


# ---------------------------------------------------------------------------------------
# HTML

_BLOCK_TAGS = {
    "p", "div", "br", "tr", "li", "ul", "ol", "table", "tbody", "thead", "h1", "h2", "h3",
    "h4", "h5", "h6", "pre", "section", "article", "header", "footer", "dl", "dt", "dd",
    "address", "center", "form", "fieldset",
}
_SKIP_TAGS = {"script", "style", "head", "title", "template", "noscript"}


class _TextExtractor(HTMLParser):
    """Render HTML mail as plain lines: blocks break lines, table cells become tabs, and
    text inside <blockquote> is prefixed with "> " so it is treated as quoted."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []
        self.current: list[str] = []
        self.skip = 0
        self.quote = 0
        self.line_quote = 0

    def _flush(self, blank: bool = False) -> None:
        # Only <br> on an empty line makes a blank line: Gmail writes "<div><br></div>",
        # Outlook "<p>&nbsp;</p>" (a space), while block boundaries alone just end a line.
        text = "".join(self.current)
        prefix = "> " * self.line_quote
        if text.strip():
            self.lines.append(prefix + text)
        elif blank or (text and self.lines and self.lines[-1]):
            self.lines.append("")
        self.current = []
        self.line_quote = self.quote

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_TAGS:
            self.skip += 1
        elif tag == "blockquote":
            self._flush()
            self.quote += 1
            self.line_quote = self.quote
        elif tag in ("td", "th"):
            if self.current and not "".join(self.current).endswith("\t"):
                self.current.append("\t")
        elif tag == "hr":
            self._flush()
            self.current.append("-" * 10)
            self._flush()
        elif tag == "br":
            self._flush(blank=True)
        elif tag in _BLOCK_TAGS:
            self._flush()

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag in _SKIP_TAGS:
            self.skip -= 1

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS:
            self.skip = max(0, self.skip - 1)
        elif tag == "blockquote":
            self._flush()
            self.quote = max(0, self.quote - 1)
            self.line_quote = self.quote
        elif tag in ("td", "th"):
            self.current.append("\t")
        elif tag in _BLOCK_TAGS and tag != "br":
            self._flush()

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        # Source newlines are not line breaks in HTML; &nbsp; (U+00A0) is a space.
        self.current.append(re.sub(r"[ \t\r\n\u00a0]+", " ", data))


def html_to_text(markup: str) -> str:
    """Plain text of an HTML body, good enough to find labelled fields in."""
    parser = _TextExtractor()
    try:
        parser.feed(markup)
        parser.close()
    except (AssertionError, ValueError):  # very old parsers raised on broken markup
        pass
    parser._flush()
    lines = [line.strip(" \t").replace("\t", "  ") if not line.startswith(">") else line.rstrip()
             for line in parser.lines]
    text = "\n".join(lines)
    # convert_charrefs already decoded entities: unescaping again would turn "&amp;lt;" into "<".
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n")


# ---------------------------------------------------------------------------------------
# format=flowed and MIME body selection


def unflow(text: str, delsp: bool) -> str:
    """Join soft-broken lines of a format=flowed body (RFC 3676 §4).

    iPhone and Thunderbird wrap long lines; a wrapped label line would otherwise put a
    field's value on a line of its own.
    """
    out: list[str] = []
    pending: str | None = None
    pending_depth = 0
    for line in text.split("\n"):
        stripped = line.lstrip(">")
        depth = len(line) - len(stripped)
        stripped = stripped.removeprefix(" ")  # space-stuffing, §4.4
        if pending is not None and depth != pending_depth:
            out.append(">" * pending_depth + (" " if pending_depth else "") + pending)
            pending = None
        soft = stripped.endswith(" ") and stripped != "-- "
        piece = stripped[:-1] if (soft and delsp) else stripped
        pending = piece if pending is None else pending + piece
        pending_depth = depth
        if not soft:
            out.append(">" * depth + (" " if depth else "") + pending)
            pending = None
    if pending is not None:
        out.append(">" * pending_depth + (" " if pending_depth else "") + pending)
    return "\n".join(out)


def _part_bytes(part: Message) -> bytes:
    try:
        payload = part.get_payload(decode=True)
    except Exception:  # noqa: BLE001 - stdlib decoders on hostile input; treat as empty
        return b""
    return payload if isinstance(payload, bytes) else b""


def _part_param(part: Message, name: str) -> str | None:
    try:
        value = part.get_param(name)
    except Exception:  # noqa: BLE001 - malformed RFC 2231 parameters
        return None
    if isinstance(value, tuple):  # RFC 2231: (charset, language, value)
        value = value[2]
    return value if isinstance(value, str) else None


def _is_attachment(part: Message) -> bool:
    disposition = (part.get("Content-Disposition") or "")
    if isinstance(disposition, str) and disposition.strip().lower().startswith("attachment"):
        return True
    return _part_param(part, "name") is not None and part.get_content_type() not in (
        "text/plain", "text/html")


def _decode_text_part(part: Message) -> str:
    text = decode_bytes(_part_bytes(part), _part_param(part, "charset"))
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if (_part_param(part, "format") or "").lower() == "flowed":
        text = unflow(text, (_part_param(part, "delsp") or "").lower() == "yes")
    return text


def _collect(part: Message, depth: int) -> list[tuple[str, str]]:
    """(kind, text) chunks of the readable body, in order. Attachments and attached
    messages (forwarded-as-attachment, DSN originals) are never decoded: a 3 MB PDF
    costs nothing but the parse."""
    if depth > 20:  # hostile nesting
        return []
    ctype = part.get_content_type()
    if part.is_multipart():
        children = part.get_payload()
        if not isinstance(children, list):
            return []
        if ctype == "multipart/alternative":
            options = [_collect(child, depth + 1) for child in children if isinstance(child, Message)]
            for wanted in ("plain", "html"):
                for chunks in options:
                    if any(kind == wanted and text.strip() for kind, text in chunks):
                        return chunks
            return []
        if ctype == "multipart/related" and children and isinstance(children[0], Message):
            return _collect(children[0], depth + 1)
        result: list[tuple[str, str]] = []
        for child in children:
            if isinstance(child, Message):
                result.extend(_collect(child, depth + 1))
        return result
    if ctype.startswith("message/") or _is_attachment(part):
        return []
    if ctype == "text/plain":
        return [("plain", _decode_text_part(part))]
    if ctype == "text/html":
        return [("html", html_to_text(_decode_text_part(part)))]
    return []


def extract_body_text(msg: Message) -> str:
    """The text a human wrote: text/plain preferred, HTML-only mail converted."""
    chunks = _collect(msg, 0)
    return "\n".join(text.rstrip("\n") for _, text in chunks if text.strip()).strip("\n")


# ---------------------------------------------------------------------------------------
# Sections of a body: the author's own text, forwarded text; no quotes, replies, signatures

_QUOTED = re.compile(r"^\s*[>＞|]")
_REPLY_MARKERS = [
    re.compile(r"^\s*-{2,}\s*(?:original message|元のメッセージ|オリジナルメッセージ)\s*-{2,}\s*$", re.IGNORECASE),
    re.compile(r"^.{0,200}\bwrote\s*:\s*$", re.IGNORECASE),
    re.compile(r"^.{0,200}(?:は|が)書きました\s*[:：]\s*$"),
    re.compile(r"^.{0,200}のメール\s*[:：]\s*$"),
    re.compile(r"^.{0,200}<[^<>\s]+@[^<>\s]+>\s*[:：]\s*$"),  # Gmail ja: "2024年1月16日(火) 10:00 名前 <a@b>:"
    re.compile(r"^.{0,200}\bschrieb\s*:\s*$", re.IGNORECASE),
]
_FORWARD_MARKERS = [
    re.compile(r"^\s*-{2,}\s*(?:forwarded message|転送されたメッセージ|転送メッセージ|"
               r"forwarded message follows)\s*-{2,}\s*$", re.IGNORECASE),
    re.compile(r"^\s*(?:begin forwarded message|転送されたメッセージ|転送メッセージ)\s*[:：]\s*$", re.IGNORECASE),
]

def _any_of(patterns: list[re.Pattern[str]]) -> re.Pattern[str]:
    """One pattern for a list: one regex call per line instead of one per marker."""
    return re.compile("|".join(f"(?{'i' if p.flags & re.IGNORECASE else ''}:{p.pattern})"
                               for p in patterns))


_REPLY_ANY = _any_of(_REPLY_MARKERS)
_FORWARD_ANY = _any_of(_FORWARD_MARKERS)
_HEADER_BLOCK_LINE = re.compile(
    r"^\s*(?:from|sent|date|to|cc|bcc|subject|reply-to|差出人|送信者|送信日時|日付|日時|宛先|件名|"
    r"cc|bcc|返信先)\s*[:：]", re.IGNORECASE)
_HEADER_BLOCK_START = re.compile(r"^\s*(?:from|差出人|送信者)\s*[:：]", re.IGNORECASE)
RULE_LINE = re.compile(r"^\s*[-=_─━＿~〜―‐*＊＝－ー・=+#■□◆◇●○★☆]{5,}\s*$")


def _is_reply_header_block(lines: list[str], index: int) -> bool:
    """Outlook quotes the original without ">": a From/差出人 line followed by Sent/送信日時."""
    if not _HEADER_BLOCK_START.match(lines[index]):
        return False
    following = [line for line in lines[index + 1 : index + 4] if line.strip()]
    return sum(1 for line in following if _HEADER_BLOCK_LINE.match(line)) >= 2


def split_sections(text: str) -> tuple[list[str], list[list[str]]]:
    """Split a body into the author's own lines and forwarded bodies.

    Everything from the first reply marker on is the quoted original and is dropped: a
    "設定しました" reply quoting the request must not make the request again. A forwarded
    message (Gmail, Thunderbird, Apple markers) keeps its body, minus its header block,
    as a fallback for a request someone forwarded to support.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    own: list[str] = []
    forwarded: list[list[str]] = []
    current = own
    skip_headers = False
    # The next non-blank line after each index, in one backward pass: looking it up per
    # rule line by slicing the rest (lines[index + 1:]) made a body of rules quadratic.
    next_text = [""] * (len(lines) + 1)
    for j in range(len(lines) - 1, -1, -1):
        next_text[j] = lines[j] if lines[j].strip() else next_text[j + 1]
    for index, line in enumerate(lines):
        if not line and not skip_headers:
            current.append(line)  # a blank line is no marker, rule or quote: the common case, fast
            continue
        if skip_headers:
            # The forwarded header block: From/Date/Subject/To lines and the blank lines
            # around them; the first other line is the forwarded body.
            if not line.strip() or _HEADER_BLOCK_LINE.match(line) or line.startswith((" ", "\t")):
                continue
            skip_headers = False
        if _FORWARD_ANY.match(line):
            current = []
            forwarded.append(current)
            skip_headers = True
            continue
        if _REPLY_ANY.match(line):
            break
        if RULE_LINE.match(line) and index + 1 < len(lines):
            nxt = next_text[index + 1]
            if _HEADER_BLOCK_START.match(nxt):
                break  # Outlook: "____" then "From:" / "差出人:"
        if _is_reply_header_block(lines, index):
            break
        if line.rstrip() in ("--", "-- "):
            # RFC 3676 §4.3 signature separator: the rest of this section is a signature.
            skip_headers = False
            current = []  # a throwaway list: nothing more is kept for this section
            continue
        if _QUOTED.match(line):
            continue
        current.append(line)
    return own, forwarded
