"""An IDN domain is shown to the clerk in Japanese, with the ASCII form beside it (pure)."""

from bot.adapters.mailout import show_domain


def test_an_idn_domain_shows_its_japanese_form():
    assert show_domain("xn--ddkyb8b.jp") == "ホテル.jp（xn--ddkyb8b.jp）"


def test_an_ascii_domain_is_shown_as_it_is():
    assert show_domain("hotel-sakura.jp") == "hotel-sakura.jp"
    assert show_domain(None) == ""


def test_the_first_reply_names_an_idn_domain_in_japanese(tmp_path, bind, smtp):
    import email.policy
    import uuid
    from email.message import EmailMessage

    from test_e2e import body_of
    from test_request_routing import make_bot

    label = f"ホテル{uuid.uuid4().hex[:4]}"
    unicode_domain = f"{label}.test"
    ascii_domain = unicode_domain.encode("idna").decode()
    bind.add_zone(ascii_domain)
    smtp.clear()
    bot, inbox = make_bot(tmp_path, bind, smtp)
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = f"yamada@{ascii_domain}"
    msg["To"] = "support@489ban.net"
    msg["Subject"] = "DKIM、DMARC設定希望"
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@{ascii_domain}>"
    msg.set_content(
        f"[施設名]\nホテル\n[担当者様のお名前]\n山田 太郎\n[担当者様のメールアドレス]\nyamada@{ascii_domain}\n"
        f"[担当者様の電話番号]\n03-1234-5678\n[予約番で使用する管理用メールアドレス]\ninfo@{unicode_domain}\n",
        charset="utf-8")
    inbox.deliver(msg.as_bytes())
    from bot.app.jobs import run_pass

    run_pass(bot)
    [case] = bot.store.list_cases()
    assert case.domain == ascii_domain
    body = body_of(smtp.messages[0].raw)
    assert f"{unicode_domain}（{ascii_domain}）" in body
    assert f"ホスト名：{case.selector}._domainkey\n" in body  # the label first
    assert f"：{case.selector}._domainkey.{ascii_domain}）" in body  # full names stay ASCII
    bot.close()
