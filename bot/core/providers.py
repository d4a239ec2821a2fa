"""Which DNS host serves a domain, and what its control panel wants (SPEC §8).

Pure: NS host names in, a ``Provider`` out; a provider and the records to publish in,
the hint lines for the record mail out. No I/O here (``bot.checks.lookahead`` asks DNS).

What a clerk gets wrong depends on the panel: whether the host field wants only the
label (``yoyakuban202605._domainkey``, the domain is appended by the panel) or the
whole name, and whether a TXT value longer than 255 bytes can be pasted as one line,
must be entered as several quoted strings, or is cut off. Only facts the table states
are told; an unknown host gets no hint (the generic record box already covers both
host-field forms).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

# host_field: "label" = the panel appends the domain (enter "sel._domainkey");
#             "either" = the panel accepts the label or the full name.
HostField = Literal["label", "either"]
# long_values: "single" = paste the value as one line, the panel stores it correctly;
#              "quoted" = a value over 255 bytes must be entered as "..." "..." strings;
#              "lines"  = the panel is a text box of "type host value" lines;
#              "capped" = the panel refuses (or cuts) a TXT value over 255 characters:
#                         such a domain gets a 1024-bit key from the start.
LongValues = Literal["single", "quoted", "lines", "capped"]


@dataclass(frozen=True)
class Provider:
    key: str
    name: str                      # as the clerk knows it
    ns_patterns: tuple[str, ...]   # regexes matched against each NS host name
    panel: str                     # the screen where records are edited
    host_field: HostField
    long_values: LongValues
    apex: str = "@"                # what the host field takes for the domain itself
    always_quoted: bool = False    # every TXT value must be typed in "…" (Route 53 refuses it bare)

    @property
    def caps_txt_at_255(self) -> bool:
        """True when a 2048-bit DKIM value (~410 characters) cannot be saved here."""
        return self.long_values == "capped"


PROVIDERS: tuple[Provider, ...] = (
    Provider("onamae", "お名前.com", (r"^dns\d+\.onamae\.com$", r"^0\d\.dnsv\.jp$"),
             "お名前.com Navi のDNSレコード設定", "label", "single", apex="（空欄）"),
    Provider("sakura", "さくらインターネット", (r"^ns\d+\.dns\.ne\.jp$", r"(^|\.)sakura\.ne\.jp$",
                                               r"(^|\.)sakura\.ad\.jp$"),
             "さくらインターネットのコントロールパネル（ゾーン編集）", "label", "capped"),
    Provider("xserver", "エックスサーバー（Xserver）", (r"^ns\d+\.xserver\.jp$",),
             "Xserverのサーバーパネル（DNSレコード設定）", "label", "single", apex="（空欄）"),
    Provider("muumuu", "ムームードメイン", (r"(^|\.)muumuu-domain\.com$",),
             "ムームードメインのコントロールパネル（ムームーDNS）", "label", "single", apex="（空欄）"),
    Provider("value-domain", "バリュードメイン", (r"(^|\.)value-domain\.com$",),
             "バリュードメインのコントロールパネル（DNS設定）", "label", "lines"),
    Provider("cloudflare", "Cloudflare", (r"\.ns\.cloudflare\.com$",),
             "CloudflareのダッシュボードのDNS設定", "either", "single"),
    Provider("route53", "Amazon Route 53", (r"^ns-\d+\.awsdns-\d+\.(com|net|org|co\.uk)$",),
             "AWSマネジメントコンソールのRoute 53（ホストゾーン）", "label", "quoted", apex="（空欄）",
             always_quoted=True),
    Provider("gcloud", "Google Cloud DNS", (r"^ns-cloud-[a-z]\d+\.googledomains\.com$",),
             "Google Cloud コンソールのCloud DNS", "label", "quoted", apex="（空欄）"),
    Provider("godaddy", "GoDaddy", (r"\.domaincontrol\.com$",),
             "GoDaddyのDNS管理画面", "label", "single"),
    Provider("azure", "Azure DNS", (r"^ns\d-\d+\.azure-dns\.(com|net|org|info)$",),
             "Azure ポータルのDNSゾーン", "label", "single"),
    Provider("conoha", "ConoHa", (r"^ns-[a-z]\d\.conoha\.io$",),
             "ConoHaのコントロールパネル（DNS）", "label", "single"),
    Provider("lolipop", "ロリポップ！", (r"(^|\.)lolipop\.jp$",),
             "ロリポップ！のユーザー専用ページ（独自ドメイン設定）", "label", "single"),
)


def identify(ns_names: Iterable[str], table: Sequence[Provider] = PROVIDERS) -> Provider | None:
    """The provider whose patterns match the domain's NS host names.

    A zone served by two providers (a migration, a secondary service) gets no answer:
    telling the clerk about one panel would be half the truth.
    """
    found: dict[str, Provider] = {}
    unmatched = False
    for raw in ns_names:
        name = raw.strip().rstrip(".").lower()
        if not name:
            continue
        hit = next((p for p in table if any(re.search(rx, name) for rx in p.ns_patterns)), None)
        if hit is None:
            unmatched = True
        else:
            found[hit.key] = hit
    if len(found) != 1 or unmatched:
        return None
    return next(iter(found.values()))


def by_key(key: str | None, table: Sequence[Provider] = PROVIDERS) -> Provider | None:
    """The table row with this key (as recorded in a case's dns_lookahead event)."""
    return next((p for p in table if p.key == key), None) if key else None


def hint(provider: Provider, records: Sequence[Mapping[str, str]]) -> dict[str, object]:
    """What this panel wants, for the record mail's step 1: ``text`` (sentences, one
    point each) and ``paste`` (lines to paste exactly, never indented by the template).
    ``records`` are the record boxes (fqdn, host_label, value). The boxes themselves
    already lead with the host field and hold the value in this panel's form
    (``bot.core.records.record_box``); the hint says so once, in words."""
    text = [(f"御社のドメインのDNSは「{provider.name}」で管理されているようです"
            f"（DNSサーバー名から判断しました）。{provider.panel}で登録してください。")]
    copy: list[str] = []
    labels = "」「".join(r["host_label"] for r in records if r["host_label"] != "@")
    long = [r for r in records if len(r["value"].encode()) > 255]
    if provider.long_values == "lines":
        text.append("この画面では1行に1件のレコードを「種類 ホスト名 値」の形で書きます。"
                    "既にある行は消さずに、次の行を改行を入れずにそのまま追加してください。")
        copy.extend(f"txt {r['host_label']} {r['value']}" for r in records)
        return {"key": provider.key, "name": provider.name, "text": text, "paste": copy}
    if labels and provider.host_field == "label":
        text.append(f"ホスト名の欄には「{labels}」とだけ入力してください"
                    "（ドメイン名は画面が自動で付けます）。")
    elif labels:
        text.append(f"ホスト名の欄には「{labels}」と入力してください"
                    "（ドメイン名まで入力しても同じ意味になります）。")
    if provider.always_quoted:
        text.append("この画面では、TXTの値をダブルクォーテーション（\"）で囲んで入力します"
                    "（255文字を超える値は、255文字ごとに区切って囲みます）。枠内の値はその形にしてありますので、"
                    "この形のまま貼り付けてください（画面がこの形を1件の値として保存します）。")
    elif provider.long_values == "quoted" and long:
        text.append("この画面では255文字を超える値をそのまま登録できないため、枠内の値は"
                    "ダブルクォーテーション（\"）で区切った形にしてあります。この形のまま貼り付けてください"
                    "（画面がこの形を1件の値として保存します）。")
    elif provider.long_values == "capped" and long:
        text.append("この画面では、TXTレコードの値は255文字までしか登録できません。枠内の値はそれより長いため、"
                    "保存できない場合や途中で切れてしまう場合は、「短い鍵希望」とご返信ください。"
                    "255文字以内に収まる短い鍵（1024ビット）のレコードをお送りします。")
    elif provider.long_values == "capped":
        text.append("この画面では、TXTレコードの値は255文字までしか登録できないため、"
                    "255文字以内に収まる短い鍵（1024ビット）をご用意しました。1024ビットでも、"
                    "GmailやYahoo!メールの要件（1024ビット以上）を満たします。")
    elif provider.long_values == "single" and long:
        text.append("値は長い1行ですが、途中で区切らずに、そのまま貼り付けてください。")
    return {"key": provider.key, "name": provider.name, "text": text, "paste": copy}


def hint_for(ns_names: Iterable[str], records: Sequence[Mapping[str, str]]) -> dict[str, object] | None:
    """``hint`` for the provider of these NS names; None when the host is unknown."""
    provider = identify(ns_names)
    if provider is None or not records:
        return None
    return hint(provider, records)
