"""Characters a clerk pastes into a DNS record by mistake, named in Japanese.

A TXT record for SPF, DMARC or DKIM is plain ASCII separated by ASCII spaces (SPF) or
semicolons (DMARC, DKIM). What arrives from a word processor, a PDF or a Japanese input
method is often not: a full-width space (U+3000), a no-break space, a TAB or a line
break, a zero-width space, a BOM, smart quotes, full-width letters. Receivers reject such
a record (SPF permerror, DMARC/DKIM record not usable); the facility must be told which
character, where, and given the record to paste instead. Pure: values in, values out.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

# Characters that look like (or are meant as) a space between terms.
_SPACES = {
    "\u3000": "全角スペース",
    "\u00a0": "ノーブレークスペース（特殊な空白）",
    "\t": "タブ",
    "\r": "改行（CR）",
    "\n": "改行（LF）",
    "\u2028": "改行（行区切り文字）",
    "\u2029": "改行（段落区切り文字）",
    "\u000b": "垂直タブ",
    "\u000c": "改ページ",
}
# Invisible characters that must simply go.
_INVISIBLE = {
    "\u200b": "ゼロ幅スペース（目に見えない文字）",
    "\u200c": "ゼロ幅非接合子（目に見えない文字）",
    "\u200d": "ゼロ幅接合子（目に見えない文字）",
    "\u2060": "ワードジョイナー（目に見えない文字）",
    "\ufeff": "BOM（目に見えない文字）",
    "\u00ad": "ソフトハイフン（目に見えない文字）",
}
# Quotes a word processor substitutes for '"' or "'": never part of a record value.
_QUOTES = {
    "\u201c": "全角の引用符「“」",
    "\u201d": "全角の引用符「”」",
    "\u2018": "全角の引用符「‘」",
    "\u2019": "全角の引用符「’」",
    "\u301d": "全角の引用符「〝」",
    "\u301f": "全角の引用符「〟」",
    "\uff02": "全角の引用符「＂」",
}


@dataclass(frozen=True)
class PastedChar:
    """One character that does not belong in a record."""

    position: int      # 1-based, counted in characters of the record as published
    char: str
    kind: str          # space | invisible | quote | fullwidth | control | replacement | other
    name_ja: str       # what to call it in a facility mail
    context: str       # the word it sits in (or the two words it separates), for the mail

    @property
    def codepoint(self) -> str:
        return f"U+{ord(self.char):04X}"

    def describe_ja(self) -> str:
        return f"{self.position}文字目の{self.name_ja}（{self.context}）"

    def to_json(self) -> dict[str, object]:
        return {"position": self.position, "char": self.codepoint, "kind": self.kind,
                "name": self.name_ja, "context": self.context}


def _classify(ch: str) -> tuple[str, str] | None:
    if ch in _SPACES:
        return "space", _SPACES[ch]
    if ch in _INVISIBLE:
        return "invisible", _INVISIBLE[ch]
    if ch in _QUOTES:
        return "quote", _QUOTES[ch]
    if ch == "\ufffd":
        return "replacement", "文字化けした文字（UTF-8 として読めないバイト）"
    if "\uff01" <= ch <= "\uff5e":
        return "fullwidth", f"全角文字「{ch}」"
    if ord(ch) < 0x20 or ord(ch) == 0x7f:
        return "control", f"制御文字（{f'U+{ord(ch):04X}'}）"
    if ch.isspace() or unicodedata.category(ch) == "Zs":
        return "space", f"特殊な空白（U+{ord(ch):04X}）"
    if unicodedata.category(ch) == "Cf":
        return "invisible", f"目に見えない文字（U+{ord(ch):04X}）"
    if not ch.isascii():
        return "other", f"半角英数字以外の文字「{ch}」"
    return None


def _context(text: str, i: int, kind: str) -> str:
    """The word around position i (0-based): for a space-like character, the words it
    separates; otherwise the word it is in."""
    def is_sep(c: str) -> bool:
        return c == " " or (_classify(c) or ("", ""))[0] == "space"

    if kind == "space":
        j = i
        while j > 0 and is_sep(text[j - 1]):
            j -= 1
        start = j
        while start > 0 and not is_sep(text[start - 1]):
            start -= 1
        k = i + 1
        while k < len(text) and is_sep(text[k]):
            k += 1
        end = k
        while end < len(text) and not is_sep(text[end]):
            end += 1
        before, after = text[start:j], text[k:end]
        if before and after:
            return f"「{before}」と「{after}」の間"
        return f"「{before or after}」の{'後' if before else '前'}"
    start = i
    while start > 0 and not is_sep(text[start - 1]):
        start -= 1
    end = i + 1
    while end < len(text) and not is_sep(text[end]):
        end += 1
    if kind in ("invisible", "control", "replacement"):
        # An invisible character cannot be shown; say where it sits in the word.
        word = _visible(text[start:end])
        where = "の前" if i == start else ("の後" if i == end - 1 else "の途中")
        return f"「{word}」{where}"
    return f"「{_visible(text[start:end], keep=text[i])}」の中"


def _visible(word: str, keep: str = "") -> str:
    return "".join(c for c in word if c == keep or " " <= c <= "~" or
                   (_classify(c) or ("", ""))[0] in ("fullwidth", "quote", "other"))


def find_pasted(text: str) -> list[PastedChar]:
    """Every character of ``text`` that is not printable ASCII or the ASCII space."""
    out: list[PastedChar] = []
    for i, ch in enumerate(text):
        if " " <= ch <= "~":
            continue
        kind, name = _classify(ch) or ("other", f"文字「{ch}」")
        out.append(PastedChar(i + 1, ch, kind, name, _context(text, i, kind)))
    return out


def clean_pasted(text: str, separator: str = " ") -> str:
    """The record as it was meant: space-like characters become ``separator`` (then
    runs of spaces one), invisible characters and smart quotes go, full-width ASCII
    letters become ASCII (NFKC of that block only). Other characters stay: they are not
    a paste accident we can undo, and the diagnosis names them."""
    out: list[str] = []
    for ch in text:
        kind = (_classify(ch) or ("", ""))[0] if not " " <= ch <= "~" else ""
        if kind == "space":
            out.append(separator)
        elif kind in ("invisible", "quote", "control"):
            continue
        elif kind == "fullwidth":
            out.append(unicodedata.normalize("NFKC", ch))
        else:
            out.append(ch)
    cleaned = "".join(out)
    while "  " in cleaned:
        cleaned = cleaned.replace("  ", " ")
    return cleaned.strip()


def describe_all_ja(found: list[PastedChar], limit: int = 5) -> str:
    """「12文字目の全角スペース（「a:mail.example.jp」と「-all」の間）」, joined with 、."""
    runs: list[list[PastedChar]] = []
    for p in found:
        last = runs[-1][-1] if runs else None
        if last and p.position == last.position + 1 and p.kind == last.kind == "fullwidth":
            runs[-1].append(p)   # 「ｍａｉｌ」 is one mistake, not four
        else:
            runs.append([p])
    parts = []
    for run in runs[:limit]:
        if len(run) == 1:
            parts.append(run[0].describe_ja())
        else:
            text = "".join(p.char for p in run)
            parts.append(f"{run[0].position}〜{run[-1].position}文字目の全角文字「{text}」"
                         f"（{run[0].context}）")
    if len(runs) > limit:
        parts.append(f"ほか{len(runs) - limit}か所")
    return "、".join(parts)
