"""The charts page's DMARC part ([reports] on): each facility's DMARC pass rate per day
at receivers over the last 30 days, from the stored aggregate reports.

One row per facility domain: a bar per day whose height is that day's share of
messages passing DMARC (all senders, light) with 予約番's own mail drawn over it (dark),
the domain's totals beside it. Facilities whose own mail failed come first: that is
what staff must act on. Plain SVG, as bot/web/charts.py draws (no script, no style).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from markupsafe import Markup, escape

from bot.adapters.store import Store
from bot.core.dmarcstats import percent
from bot.web.charts import svg_frame, svg_text

DAYS = 30
ALL_COLOUR, OURS_COLOUR, FAIL_COLOUR = "#8da9c4", "#1b7f4b", "#c0392b"


@dataclass(frozen=True)
class DayRate:
    day: str
    messages: int
    dmarc_pass: int
    ours_messages: int
    ours_pass: int
    unverified: int = 0   # messages in reports whose mail was not authenticated (shown, marked)


@dataclass(frozen=True)
class FacilityRates:
    domain: str
    days: list[DayRate]

    @property
    def messages(self) -> int:
        return sum(d.messages for d in self.days)

    @property
    def dmarc_pass(self) -> int:
        return sum(d.dmarc_pass for d in self.days)

    @property
    def ours_failing(self) -> int:
        return sum(d.ours_messages - d.ours_pass for d in self.days)

    @property
    def unverified(self) -> int:
        return sum(d.unverified for d in self.days)


def gather(store: Store, now: datetime, days: int = DAYS) -> list[FacilityRates]:
    since = (now.date() - timedelta(days=days - 1)).isoformat()
    out = []
    for domain in store.dmarc_domains(since):
        rows = [DayRate(str(r["day"]), int(r["messages"] or 0), int(r["dmarc_pass"] or 0),
                        int(r["ours_messages"] or 0), int(r["ours_pass"] or 0), int(r["unverified"] or 0))
                for r in store.dmarc_days(domain, since)]
        out.append(FacilityRates(domain, rows))
    out.sort(key=lambda f: (-f.ours_failing, f.dmarc_pass / max(f.messages, 1), f.domain))
    return out


def pass_rate_svg(facilities: list[FacilityRates], today: date, days: int = DAYS) -> Markup:
    width, left, right, row_h = 860, 200, 210, 34
    height = 36 + row_h * max(len(facilities), 1)
    plot_w = width - left - right
    slot = plot_w / days
    first = today - timedelta(days=days - 1)
    body = [svg_text(0, 14, f"受信側のDMARCレポート：施設ごとの合格率（過去{days}日、1日1本）"),
            f'<rect x="{left}" y="20" width="10" height="10" fill="{ALL_COLOUR}"/>',
            svg_text(left + 14, 29, "全ての送信元", size=11),
            f'<rect x="{left + 110}" y="20" width="10" height="10" fill="{OURS_COLOUR}"/>',
            svg_text(left + 124, 29, "予約番のメール", size=11)]
    if not facilities:
        body.append(svg_text(0, 56, "まだレポートはありません"))
    for i, fac in enumerate(facilities):
        y = 36 + i * row_h
        bar_h = row_h - 10
        by_day = {d.day: d for d in fac.days}
        colour = FAIL_COLOUR if fac.ours_failing else "#222"
        body.append(svg_text(left - 8, y + bar_h - 6, fac.domain, "end", fill=colour))
        body.append(f'<line x1="{left}" y1="{y + bar_h}" x2="{left + plot_w}" y2="{y + bar_h}" stroke="#ccc"/>')
        for k in range(days):
            day = (first + timedelta(days=k)).isoformat()
            d = by_day.get(day)
            if d is None or not d.messages:
                continue
            x = left + k * slot
            h = bar_h * d.dmarc_pass / d.messages
            tip = (f"{day}: {d.dmarc_pass}/{d.messages} 合格"
                   + (f"、予約番 {d.ours_pass}/{d.ours_messages}" if d.ours_messages else ""))
            body.append(f'<rect x="{x:.1f}" y="{y + bar_h - h:.1f}" width="{slot * 0.8:.1f}" height="{h:.1f}" '
                        f'fill="{ALL_COLOUR}"><title>{escape(tip)}</title></rect>')
            if d.ours_messages:
                oh = bar_h * d.ours_pass / d.ours_messages
                fill = OURS_COLOUR if d.ours_pass == d.ours_messages else FAIL_COLOUR
                body.append(f'<rect x="{x + slot * 0.25:.1f}" y="{y + bar_h - oh:.1f}" width="{slot * 0.3:.1f}" '
                            f'height="{oh:.1f}" fill="{fill}"><title>{escape(tip)}</title></rect>')
        summary = f"{percent(fac.dmarc_pass, fac.messages)}（{fac.dmarc_pass}/{fac.messages}通）"
        if fac.ours_failing:
            summary += f" 予約番不合格{fac.ours_failing}"
        if fac.unverified:
            summary += f" 未検証{fac.unverified}"
        body.append(svg_text(left + plot_w + 8, y + bar_h - 6, summary, fill=colour, size=11))
    return svg_frame(width, height, "施設ごとのDMARC合格率", body)
