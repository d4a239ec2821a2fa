"""The SPF syntax diagnosis in Japanese: which term, where, what is wrong, and the record
to paste instead. A receiver gives such a record permerror (RFC 7208 §4.6), i.e. SPF
fails for every mail; the facility must never hear "ok" for it.

Values in (the record, the pasted characters, the faulty terms, the repaired record),
a ``Diagnosis`` out; bot/checks/spf.py does the parsing and repairing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from bot.core.dnsresults import Diagnosis
from bot.core.recordtext import PastedChar, describe_all_ja


class FaultyTerm(Protocol):
    """bot.checks.spf.TermIssue, read-only."""

    @property
    def index(self) -> int: ...
    @property
    def term(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def problem(self) -> str: ...


def _what_ja(issue: FaultyTerm) -> str:
    kind, problem = issue.kind, issue.problem
    if kind == "bad_domain":
        if "top-level label" in problem:
            top = problem.split("'")[1] if "'" in problem else ""
            return (f"ドメイン名の最後の部分「{top}」が正しくありません（数字だけのものや、"
                    "「-」で始まる・終わるものは使えません）")
        return "ドメイン名の形が正しくありません"
    return {
        "bad_prefix": "「/」の後の数字（プレフィックス長）が正しくありません（先頭に0を付けず、"
                      "IPv4 は 0〜32、IPv6 は 0〜128 で書きます）",
        "prefix_not_allowed": "この項目には「/24」のようなプレフィックス長を付けられません",
        "bad_address": "IPアドレスの形が正しくありません",
        "unknown_mechanism": "SPFにない項目です（つづりの誤りか、区切りの空白が抜けている可能性があります）",
        "all_argument": "「all」の後ろには何も付けられません",
        "bad_macro": "「%」の使い方が正しくありません",
        "duplicate_modifier": "同じ指定が2回書かれています",
        "bad_character": "半角英数字以外の文字が含まれています",
    }.get(kind, "書き方が正しくありません")


def describe_terms_ja(issues: Sequence[FaultyTerm], limit: int = 5) -> str:
    parts = [f"{i.index}番目の項目「{i.term}」：{_what_ja(i)}" for i in issues[:limit]]
    if len(issues) > limit:
        parts.append(f"ほか{len(issues) - limit}項目")
    return "。".join(parts)


def syntax_diagnosis(domain: str, text: str, pasted: Sequence[PastedChar],
                     issues: Sequence[FaultyTerm], dropped: Sequence[str], fix: str,
                     problems: Sequence[str]) -> Diagnosis:
    """``spf_pasted_character`` when a pasted character is the cause (the usual case:
    full-width space, TAB, line break), else ``spf_syntax``."""
    detail: dict[str, object] = {
        "name": domain, "record": text, "problems": list(problems), "fix": fix,
        "fix_host": domain,
        "terms": [{"index": i.index, "term": i.term, "kind": i.kind} for i in issues],
        "pasted": [p.to_json() for p in pasted], "removed_terms": list(dropped)}
    consequence = ("このままでは、受信側のメールサーバーが SPF レコード全体を無効（permerror）として"
                   "扱うため、SPF の確認に必ず失敗します。")
    removed = ""
    if dropped:
        removed = ("直しようのない項目（" + "、".join(f"「{d}」" for d in dropped) + "）は外してあります。"
                   "必要な項目でしたら、正しい形に直して加えてください。")
    if pasted:
        message = (f"{domain} の SPF レコードに、{describe_all_ja(list(pasted))}が入っています。"
                   f"{consequence}{removed}項目の区切りは半角スペースだけにして、次の値に置き換えてください"
                   f"（SPF レコードを2件にせず、今の1件を書き換えてください）：{fix}")
        return Diagnosis("spf_pasted_character", message, "error", detail)
    if issues:
        what = describe_terms_ja(issues)
        message = (f"{domain} の SPF レコード「{text}」の書き方に誤りがあります。{what}。"
                   f"{consequence}{removed}次の値に修正してください：{fix}")
    else:
        message = (f"{domain} の SPF レコード「{text}」の書き方に誤りがあります"
                   "（「v=spf1」で始まっていない、引用符が含まれているなど）。"
                   f"{consequence}引用符などを付けずに、次の値に修正してください：{fix}")
    return Diagnosis("spf_syntax", message, "error", detail)
