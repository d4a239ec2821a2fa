"""Reading a facility's reply to a case: can the bot act on it, or must a human answer?

Pure: body text in, a ``ReplyReading`` out. The only thing the bot can *do* with a reply
is check DNS again, so it "can act" when the facility says it has done something
(設定しました, 登録しました, 完了, done …) or says nothing beyond greetings and thanks.
Anything else — a question (「設定方法がわかりません」), a wish (「1024ビットの鍵を希望」), a
problem report (「反映されません」) or text the rules do not recognise — goes to staff.
A reply is rechecked either way; forwarding only decides whether staff also read it.

Only the author's own words count: quoted text, the replied-to original (Outlook's
header block, 「…さんは書きました:」), forwarded mail and the signature are cut first, so
a quoted 「ご質問は…」 in the bot's own mail never reads as a question.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from bot.core.mailtext import RULE_LINE, split_sections

# Checked on NFKC-normalised lines (full-width ？ → ?, ｄｏｎｅ → done).
_QUESTION = re.compile(
    r"[?]|わか(?:りません|らない|らず)|分か(?:りません|らない|らず)|教えて|希望|ご?相談|ご?質問|困って|不明"
    r"|でしょうか|ですか|ますか|ませんか|可能|どう(?:すれば|したら|やって|なって|いう)|どこ(?:に|へ|で)"
    r"|できません|出来ません|できない|出来ない|されません|されない|入りません|通りません|いきません"
    r"|うまく|上手く|エラー|error|失敗|再送|送って|送り直|解約|キャンセル|中止|やめ|止め"
    r"|問い合わせ|お問合せ|お問い合わせ|ほしい|欲しい|たいのですが|たいです",
    re.IGNORECASE,
)
_DONE = re.compile(
    r"(?:設定|登録|修正|追加|変更|公開|反映|対応|入力|記入|更新|作成|追記|削除)(?:いた|致)?しました"
    r"|(?:設定|登録|修正|追加|変更|削除)(?:を)?(?:し|いたし|致し)ておきました"
    r"|(?:直|なお)し(?:ておき)?ました|直しておきました|書き換えました|貼り(?:付け|つけ)ました|やりました"
    r"|(?:し|い)ておきました|入れました|完了|済み|済です|済ませ|設定済|登録済"
    r"|確認(?:を)?お願い|ご?確認(?:を)?(?:お願い|ください|下さい|いただけ|頂け)"
    r"|\bdone\b|\bfixed\b|\bupdated\b|\bpublished\b|\badded\b|\bcompleted?\b",
    re.IGNORECASE,
)
# Lines that say nothing the bot would have to answer.
_BOILERPLATE = re.compile(
    r"お世話に|いつも|お疲れ様|お疲れさま|御中|ご担当|ご連絡|ありがと|有難|有り難|感謝|thank"
    r"|承知|了解|かしこまり|拝受|受け取り|受領|確認しました"
    r"|よろしく|宜しく|以上です|以上、|^以上$|失礼いた|失礼します|regards|^best|^sincerely"
    r"|^[^。、\s]{1,16}の\s?[^。、\s]{1,8}(?:です|でございます)。?$",  # 「ホテル桜の山田です。」
    re.IGNORECASE,
)
# A signature's lines: phone, address, web, mail, company or a bare name.
_CONTACT = re.compile(
    r"(?:tel|fax|電話|携帯|〒|https?://|www\.|@|株式会社|有限会社|合同会社|\(株\)|㈱|住所|mail\s*[:：]"
    r"|\d{2,5}-\d{1,4}-\d{3,4})",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"(?:ます|ません|です|した|ない|たい|ください|下さい|[。.!?！？])$")
_NAME_MAX = 14  # "ホテル桜 フロント 山田" is a name line; a longer unpunctuated line is not


@dataclass(frozen=True)
class ReplyReading:
    can_act: bool  # True: a DNS recheck answers it; False: staff must read it
    reason: str  # "done" | "thanks" | "empty" | "question" | "unrecognised"
    new_text: str  # the author's own words (no quotes, original, signature), for staff


def new_text_of(body: str) -> str:
    """The author's own lines: no quoted or replied-to text, no forward, no signature."""
    own, _forwarded = split_sections(body or "")
    kept: list[str] = []
    for line in own:
        # A ruled line in a Japanese reply almost always opens the signature box.
        if RULE_LINE.match(line) and kept:
            break
        kept.append(line.rstrip())
    while kept and not kept[-1].strip():
        kept.pop()
    while kept and not kept[0].strip():
        kept.pop(0)
    return "\n".join(kept)


def _is_filler(line: str) -> bool:
    """Greeting, thanks, closing or a signature line: nothing to act on, nothing to answer."""
    if _BOILERPLATE.search(line) or _CONTACT.search(line):
        return True
    return len(line) <= _NAME_MAX and not _SENTENCE_END.search(line)


def read_reply(body: str) -> ReplyReading:
    """Decide whether a reply to a case is one the bot can act on by rechecking DNS."""
    text = new_text_of(body)
    lines = [re.sub(r"\s+", " ", unicodedata.normalize("NFKC", line)).strip() for line in text.split("\n")]
    lines = [line for line in lines if line]
    if any(_QUESTION.search(line) for line in lines):
        return ReplyReading(False, "question", text)
    if any(_DONE.search(line) for line in lines):
        return ReplyReading(True, "done", text)
    if not lines:
        return ReplyReading(True, "empty", text)
    if all(_is_filler(line) for line in lines):
        return ReplyReading(True, "thanks", text)
    return ReplyReading(False, "unrecognised", text)
