"""Parse an ``Authentication-Results`` header (RFC 8601) into items; pure, no I/O.

A receiver's verdict on a message comes back as one header such as Gmail's::

    mx.google.com; dkim=pass header.i=@x.jp header.s=sel header.b=abc;
        spf=pass (google.com: ...) smtp.mailfrom=info@x.jp;
        dmarc=pass (p=NONE sp=NONE dis=NONE) header.from=x.jp

Real headers bend the grammar, and the parser accepts what they send: Microsoft writes
no authserv-id at all (the header starts with ``spf=pass``) and adds bare ``key=value``
pairs (``action=none``); Yahoo glues a comment to a result (``dmarc=pass(p=REJECT)``);
whitespace may surround ``=``; a value may be a quoted string. Comments are kept as
text beside the result they follow, because they often say why (``signature was
verified``, ``sender IP is …``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# A method=result at the very start means there was no authserv-id (Microsoft).
_METHOD_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*(?:/\d+)?=")
_TOKEN_RE = re.compile(r'(?:[^\s"]|"(?:[^"\\]|\\.)*")+')


@dataclass(frozen=True)
class AuthResult:
    """One resinfo: ``method=result`` with its reason, properties and comments."""

    method: str                                  # lower case: "dkim", "spf", "dmarc", ...
    result: str                                  # lower case: "pass", "fail", "none", ...
    reason: str | None = None
    props: dict[str, str] = field(default_factory=dict)   # "header.d" -> "x.jp" (ptype.property lower case)
    extra: dict[str, str] = field(default_factory=dict)   # other key=value pairs, e.g. Microsoft's action=none
    comment: str = ""

    @property
    def dkim_domain(self) -> str | None:
        """The signing domain of a dkim result: header.d, else the domain of header.i."""
        d = self.props.get("header.d")
        if d:
            return d.strip().rstrip(".").lower()
        i = self.props.get("header.i")
        if i and "@" in i:
            return i.rpartition("@")[2].strip().rstrip(".").lower() or None
        return None

    def describe(self) -> str:
        """One line for a report: ``dkim=pass header.d=x.jp header.s=sel``."""
        parts = [f"{self.method}={self.result}"]
        if self.reason:
            parts.append(f"reason={self.reason}")
        parts += [f"{k}={v}" for k, v in self.props.items() if k != "header.b"]
        parts += [f"{k}={v}" for k, v in self.extra.items()]
        if self.comment:
            parts.append(f"({self.comment})")
        return " ".join(parts)


@dataclass(frozen=True)
class AuthResults:
    authserv_id: str                  # "" when the header names none (Microsoft)
    version: str | None
    results: list[AuthResult]

    def by_method(self, method: str) -> list[AuthResult]:
        return [r for r in self.results if r.method == method.lower()]


class AuthResultsError(ValueError):
    """The header is not an Authentication-Results value at all."""


def _segments(text: str) -> list[tuple[str, str]]:
    """Split on top-level ';' into (text without comments, comments), honouring quotes,
    nested comments and backslash escapes. '=' loses the spaces around it."""
    return _Segmenter(text).run()


class _Segmenter:
    """One walk of ``_segments`` over a header value, a character at a time: inside a
    comment, inside a quoted string, or in plain text."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.out: list[tuple[str, str]] = []
        self.buf: list[str] = []        # the current segment's text, comments taken out
        self.comments: list[str] = []   # the current segment's comments
        self.comment: list[str] = []    # the comment being read
        self.depth = 0                  # comment nesting
        self.in_quote = False
        self.skip_space = False         # after "=" (and "." or "/"): spaces there are CFWS

    def run(self) -> list[tuple[str, str]]:
        i = 0
        while i < len(self.text):
            if self.depth:
                i = self._comment_char(i)
            elif self.in_quote:
                i = self._quoted_char(i)
            else:
                self._plain_char(self.text[i])
                i += 1
        self._end_segment()
        return self.out

    def _end_segment(self) -> None:
        self.out.append(("".join(self.buf), " ".join(c for c in self.comments if c)))
        self.buf, self.comments = [], []

    def _comment_char(self, i: int) -> int:
        """The character at ``i`` inside a comment; returns where the next one is."""
        ch = self.text[i]
        if ch == "\\" and i + 1 < len(self.text):
            self.comment.append(self.text[i + 1])
            return i + 2
        if ch == "(":
            self.depth += 1
        elif ch == ")":
            self.depth -= 1
            if self.depth == 0:
                self.comments.append(" ".join("".join(self.comment).split()))
                self.comment = []
                if not self.skip_space:  # "= (wait for it) fail": the value still follows "="
                    self.buf.append(" ")  # a comment separates tokens: "pass(p=REJECT)header.from=…"
                return i + 1
        self.comment.append(ch)
        return i + 1

    def _quoted_char(self, i: int) -> int:
        """The character at ``i`` inside a quoted string (kept as written, quotes too)."""
        ch = self.text[i]
        self.buf.append(ch)
        if ch == "\\" and i + 1 < len(self.text):
            self.buf.append(self.text[i + 1])
            return i + 2
        if ch == '"':
            self.in_quote = False
        return i + 1

    def _plain_char(self, ch: str) -> None:
        buf = self.buf
        if ch == '"':
            self.in_quote = True
            buf.append(ch)
            self.skip_space = False
        elif ch == "(":
            self.depth = 1
        elif ch == ";":
            self._end_segment()
            self.skip_space = False
        elif ch == "=" or ch in "./" and buf and buf[-1].isspace():
            # CFWS may surround "=", and "/" (method/version) and "." (ptype.property)
            # too (RFC 8601 §2.2; B.7's "policy (A dot can go here) . (like that) expired").
            # A "." or "/" right after text ("example.com.", "a/b") is part of a value.
            while buf and buf[-1].isspace():
                buf.pop()
            buf.append(ch)
            self.skip_space = True
        elif ch.isspace():
            if not self.skip_space:
                buf.append(" ")
        else:
            buf.append(ch)
            self.skip_space = False


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def _resinfo(text: str, comment: str) -> AuthResult | None:
    tokens = _TOKEN_RE.findall(text)
    if not tokens or "=" not in tokens[0]:
        return None  # "none" (no results) or junk
    method, _, result = tokens[0].partition("=")
    reason: str | None = None
    props: dict[str, str] = {}
    extra: dict[str, str] = {}
    for token in tokens[1:]:
        if "=" not in token:
            continue  # a stray word; RFC 8601 §2.2 has none, receivers sometimes do
        key, _, value = token.partition("=")
        key = key.lower()
        value = _unquote(value)
        if key == "reason":
            reason = value
        elif "." in key:
            props[key] = value
        else:
            extra[key] = value
    return AuthResult(method=method.split("/")[0].lower(), result=_unquote(result).lower(),
                      reason=reason, props=props, extra=extra, comment=comment)


def parse_authentication_results(value: str) -> AuthResults:
    """One header's value (folded or not) as AuthResults; AuthResultsError if it is empty."""
    text = " ".join(value.split())
    if not text:
        raise AuthResultsError("empty Authentication-Results header")
    segments = _segments(text)
    first, _ = segments[0]
    authserv_id, version = "", None
    rest = segments[1:]
    if _METHOD_RE.match(first.strip()):
        rest = segments  # no authserv-id: the first segment is already a result
    else:
        head = first.split()
        if not head:
            raise AuthResultsError("Authentication-Results without an authserv-id")
        # authserv-id = value: a token or a quoted-string (RFC 8601 §2.2)
        authserv_id = _unquote(head[0]).lower()
        if len(head) > 1 and head[1].isdigit():
            version = head[1]
    results = [r for r in (_resinfo(t, c) for t, c in rest) if r is not None]
    return AuthResults(authserv_id=authserv_id, version=version, results=results)
