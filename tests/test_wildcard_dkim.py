"""A zone with a wildcard TXT record, through the whole bot on the real BIND.

Review 2026-12-01: in a zone with ``* TXT "v=spf1 -all"`` (names that send no mail) or
``*._domainkey TXT "..."``, the selector's name is answered by the wildcard before the
facility has published anything, and the first check told the facility its DKIM record
"v=spf1 -all" was written wrong. Nothing is published there yet: the check says
"not published" (the same as a missing record: no mail until the facility says it is
done, then the mail names the name, what to enter, and notes the wildcard), and once
the right record is published the case moves on.
"""

from __future__ import annotations

import pytest
from test_diagnosis_flow import Flow, body, saas  # noqa: F401 - saas is a fixture
from test_e2e import boxes

pytestmark = pytest.mark.servers


@pytest.fixture
def flow(tmp_path, bind, saas):  # noqa: F811 - the fixture imported above
    made: list[Flow] = []

    def make() -> Flow:
        f = Flow(tmp_path / f"w{len(made)}", bind, saas, prefix="wild")
        made.append(f)
        return f

    yield make
    for f in made:
        f.bot.close()


@pytest.mark.parametrize("owner", ["*._domainkey", "*"])
def test_a_wildcard_answer_is_not_published_yet_and_the_right_record_passes(flow, owner):
    f = flow()
    f.publish(owner, ["v=spf1 -all"])
    reply = body(f.request())
    dkim_name = f"{f.selector}._domainkey.{f.domain}"
    # The look before the first reply is not misled either: the wildcard's record at
    # _dmarc (for "*") is no DMARC record, the apex has no SPF record (a wildcard never
    # answers the apex), so both are asked for as new records, and the selector is the
    # first candidate (a wildcard's record is no selector in use).
    assert f.selector == f.case.selector and not f.selector[-1].isalpha()
    assert "v=spf1 -all" not in reply
    assert {b["host"] for b in boxes(reply)} == {dkim_name, f"_dmarc.{f.domain}", f.domain}
    # First check: nothing published at the selector, so no mail (was: a problem mail
    # saying the record "v=spf1 -all" is written wrong).
    assert f.run() == []
    assert f.case.state == "awaiting_dkim"
    assert not [e for e in f.show()["events"] if e["detail"].get("dns")]  # a silent "missing"

    # The facility says it is done: the answer is the "not found" mail with the wildcard note.
    [mail] = f.reply("設定しました。ご確認をお願いいたします。")
    text = body(mail)
    assert "修正をお願いします" in mail["Subject"]
    assert f"{dkim_name} に DKIMのレコードが見つかりませんでした" in text
    assert f"ホスト名「{f.label}」" in text
    assert "ワイルドカードのレコード（ホスト名が「*」や「*._domainkey」のもの）" in text and "「v=spf1 -all」が返ります" in text
    assert "これはDKIMのレコードではありません" in text
    assert "書き方に誤りがあります" not in text
    assert f.value in text.replace("\n", "")  # the record to publish, in its box
    check = [e for e in f.show()["events"] if e["detail"].get("dns")][-1]
    dkim = check["detail"]["dns"]["dkim"]
    assert check["detail"]["event"] == "dkim_missing"
    assert [d["code"] for d in dkim["diagnoses"]] == ["dkim_not_published"]
    assert dkim["found"]["wildcard"] == ["v=spf1 -all"]
    assert set(dkim["found"]["verdicts"].values()) == {"missing"}
    assert all(v == ["v=spf1 -all"] for v in dkim["found"]["servers"].values())  # the evidence as served

    # The right record published: installed, proven, announced; the case moves on.
    f.publish_right_dkim()
    [active] = f.run()
    assert "DKIM署名を開始しました" in active["Subject"]
    assert f.case.state == "awaiting_dmarc"
