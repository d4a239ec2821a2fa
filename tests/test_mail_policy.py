"""Mails are built with SMTP's policy plus a header-class cache (bot/adapters/mailout.py
MAIL_POLICY): the bytes must be exactly those the stock ``email.policy.SMTP`` gives."""

from __future__ import annotations

from datetime import UTC, datetime
from email.policy import SMTP

import pytest

import bot.adapters.mailout as mailout
from bot.config import load_config


def _build(policy: object, monkeypatch: pytest.MonkeyPatch) -> bytes:
    monkeypatch.setattr(mailout, "MAIL_POLICY", policy)
    monkeypatch.setattr(mailout, "new_message_id", lambda domain: f"<dkimbot.fixed@{domain}>")
    body = "いつもお世話になっております。\n" * 20 + "v=DKIM1; k=rsa; p=" + "A" * 392 + "\n"
    mail = mailout.build_message(
        load_config(None), kind="dkim_problem",
        subject="【要対応】DKIMレコードの確認結果：ryokan.example の設定に問題があります（長い件名の折り返し）",
        body=body, to=["山田 太郎 <owner@ryokan.example>", "front@ryokan.example"], cc=["staff@example.jp"],
        now=datetime(2026, 12, 1, 5, 0, tzinfo=UTC), in_reply_to="<a@ryokan.example>",
        references=[f"<r{i}@ryokan.example>" for i in range(30)], case_refs=["C-0001", "C-0002"])
    return mail.raw


def test_cached_registry_builds_the_same_bytes_as_stock_smtp(monkeypatch: pytest.MonkeyPatch) -> None:
    ours = _build(mailout.MAIL_POLICY, monkeypatch)
    assert ours == _build(mailout.MAIL_POLICY, monkeypatch)  # and again, from the cache
    assert ours == _build(SMTP, monkeypatch)
    assert b"=?utf-8?" in ours  # the Japanese subject really went through encoded words
