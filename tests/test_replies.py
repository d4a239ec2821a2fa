"""bot/core/replies.py: which replies a DNS recheck answers and which staff must read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.core.replies import new_text_of, read_reply
from bot.core.request import parse_message

CORPUS = Path(__file__).parent / "corpus"
REPLY_FIXTURES = sorted(p for p in CORPUS.glob("*.eml")
                        if "reply_can_act" in json.loads(p.with_suffix(".json").read_text(encoding="utf-8")))


@pytest.mark.parametrize("text", [
    "設定しました。",
    "DNSへの登録が完了しました。\nご確認をお願いします。",
    "修正しました",
    "対応しました。",
    "登録いたしました。よろしくお願いいたします。",
    "Done.",
    "ＤＯＮＥ",
    "直しました。",
    "SPFも直しました。",
    "追加しました。",
    "レコードを書き換えました。",
    "お世話になっております。\nホテル桜の山田です。\n\nTXTレコードを追加しました。\n\n山田 太郎\nTEL 03-1234-5678",
])
def test_it_acts_on_a_reply_that_says_it_is_done(text: str) -> None:
    reading = read_reply(text)
    assert reading.can_act and reading.reason == "done"


@pytest.mark.parametrize("text", [
    "",
    "ありがとうございます。",
    "承知しました。\n\n山田",
    "ご連絡ありがとうございます。\n\nホテル桜 フロント 山田\nTEL 03-1234-5678\nhttps://hotel-sakura.jp/",
])
def test_it_acts_on_an_empty_or_thanks_only_reply(text: str) -> None:
    assert read_reply(text).can_act


@pytest.mark.parametrize("text", [
    "設定方法がわかりません",
    "1024ビットの鍵を希望",
    "お名前.comのどこに入力すればよいですか？",
    "設定しましたが反映されません。",
    "管理画面でエラーが出ます。",
    "もう一度送ってください。",
    "来週の月曜日に業者が作業する予定です。",  # not a question, but nothing a recheck answers
])
def test_it_forwards_questions_and_unrecognised_text(text: str) -> None:
    assert not read_reply(text).can_act


def test_it_reads_only_the_new_text_not_the_quote_or_signature() -> None:
    body = ("対応しました。\n\n--\nホテル桜 山田\n\n"
            "2024年1月17日(水) 9:00 サポート <support@489ban.net>:\n> ご不明な点はありますか？\n")
    assert new_text_of(body) == "対応しました。"
    assert read_reply(body).can_act
    # The same question typed by the facility itself is forwarded.
    assert not read_reply("ご不明な点はありますか？\n\n> 対応しました。").can_act


@pytest.mark.parametrize("eml", REPLY_FIXTURES, ids=[p.stem for p in REPLY_FIXTURES])
def test_it_reads_each_reply_fixture_as_expected(eml: Path) -> None:
    expected = json.loads(eml.with_suffix(".json").read_text(encoding="utf-8"))
    parsed = parse_message(eml.read_bytes())
    reading = read_reply(parsed.body_text)
    assert reading.can_act is expected["reply_can_act"], (expected["note"], reading)
    if not reading.can_act:
        assert reading.new_text and ">" not in reading.new_text  # staff get the words, not the quote


def test_the_corpus_has_replies_of_both_kinds() -> None:
    kinds = {json.loads(p.with_suffix(".json").read_text(encoding="utf-8"))["reply_can_act"] for p in REPLY_FIXTURES}
    assert kinds == {True, False} and len(REPLY_FIXTURES) >= 8
