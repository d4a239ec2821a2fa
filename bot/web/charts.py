"""The charts page: the base at a glance, as SVG drawn here (no script, nothing fetched).

* Funnel per week (of the request): requests → DKIM done → DMARC done → completed.
* Time to completion: how many days completed cases took, in buckets, and the median.
* What keeps cases waiting: the last diagnosis of every case still waiting.

The numbers come from the store (cases and the first time each reached a state, from
the event log); the drawing is plain SVG elements with presentation attributes, so the
site's Content-Security-Policy needs no inline styles or scripts.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from statistics import median

from markupsafe import Markup, escape

from bot.adapters.store import Store
from bot.web.views import ACTIVE, diagnosis_label, notice_codes, state_label

WATCHED = ("completed", "dkim_lost", "signing_stopped")
FUNNEL_STEPS = ("依頼", "DKIM完了", "DMARC完了", "完了")
COLOURS = ("#8da9c4", "#4f7cac", "#2e5e8c", "#1b7f4b")
BUCKETS: tuple[tuple[str, float], ...] = (
    ("1日以内", 1), ("1〜3日", 3), ("3〜7日", 7), ("7〜14日", 14), ("14〜30日", 30), ("30日超", float("inf")))
JST = timedelta(hours=9)
WEEK_SECONDS = 7 * 86400


@dataclass(frozen=True)
class Week:
    start: str                   # the Monday, JST
    counts: tuple[int, int, int, int]


@dataclass(frozen=True)
class ChartData:
    weeks: list[Week]
    completion_days: list[float]
    waiting_on: list[tuple[str, int]]
    waiting_total: int


def gather(store: Store, now: datetime, weeks: int = 12) -> ChartData:
    reached = store.first_reached(("awaiting_dmarc", "awaiting_final", "completed"))
    local_now = now + JST
    first_week = local_now.date() - timedelta(days=local_now.weekday() + 7 * (weeks - 1))
    # The weeks by number from the first Monday (JST): arithmetic on timestamps, since
    # making date objects for 10,000 cases was most of this page's time.
    start = datetime(first_week.year, first_week.month, first_week.day, tzinfo=UTC).timestamp() - JST.total_seconds()
    counts = [[0, 0, 0, 0] for _ in range(weeks)]
    days: list[float] = []
    waiting: Counter[str] = Counter()
    waiting_total = 0
    nothing: dict[str, datetime] = {}
    for case_id, created, state, notice in store.case_summaries():
        got = reached.get(case_id, nothing)
        completed = "completed" in got or state in WATCHED
        dmarc = completed or "awaiting_final" in got
        dkim = dmarc or "awaiting_dmarc" in got
        week = int((created.timestamp() - start) // WEEK_SECONDS)
        if 0 <= week < weeks and state != "rejected":
            row = counts[week]
            row[0] += 1
            row[1] += dkim
            row[2] += dmarc
            row[3] += completed
        if "completed" in got:
            days.append((got["completed"] - created).total_seconds() / 86400)
        if state in ACTIVE:
            waiting_total += 1
            codes = ["needs_info"] if state == "needs_info" else notice_codes(notice, state)
            for code in codes or ["not_checked_yet"]:
                waiting[code] += 1
    return ChartData(
        weeks=[Week((first_week + timedelta(weeks=i)).isoformat(), (c[0], c[1], c[2], c[3]))
               for i, c in enumerate(counts)],
        completion_days=days,
        waiting_on=waiting.most_common(12),
        waiting_total=waiting_total,
    )


def _label(code: str) -> str:
    if code == "needs_info":
        return state_label(code) + "（依頼の記入漏れ）"
    if code == "not_checked_yet":
        return "未確認（最初の確認前）"
    return diagnosis_label(code)


def svg_frame(width: int, height: int, title: str, body: list[str]) -> Markup:
    """The frame every staff chart draws in: presentation attributes only (the CSP forbids styles and scripts)."""
    return Markup(
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" '
        f'role="img" aria-label="{escape(title)}" font-family="sans-serif" font-size="12">'
        f"<title>{escape(title)}</title>{''.join(body)}</svg>")


def svg_text(x: float, y: float, text: str, anchor: str = "start", size: int = 12, fill: str = "#222") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" '
            f'fill="{fill}">{escape(text)}</text>')


def funnel_svg(data: ChartData) -> Markup:
    width, height, left, top, bottom = 860, 300, 40, 30, 50
    plot_h = height - top - bottom
    top_value = max([w.counts[0] for w in data.weeks] + [1])
    slot = (width - left - 10) / max(len(data.weeks), 1)
    bar = slot * 0.8 / 4
    body = [f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 10}" y2="{top + plot_h}" stroke="#888"/>',
            svg_text(left - 6, top + 4, str(top_value), "end"), svg_text(left - 6, top + plot_h, "0", "end")]
    for i, week in enumerate(data.weeks):
        x0 = left + i * slot + slot * 0.1
        for j, value in enumerate(week.counts):
            h = plot_h * value / top_value
            x = x0 + j * bar
            body.append(f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar - 1:.1f}" height="{h:.1f}" '
                        f'fill="{COLOURS[j]}"><title>{escape(week.start)} {FUNNEL_STEPS[j]}: {value}</title></rect>')
        body.append(svg_text(x0 + 2 * bar, top + plot_h + 16, week.start[5:], "middle", 11))
    for j, step in enumerate(FUNNEL_STEPS):
        body.append(f'<rect x="{left + j * 120}" y="{height - 18}" width="12" height="12" fill="{COLOURS[j]}"/>')
        body.append(svg_text(left + j * 120 + 16, height - 8, step))
    return svg_frame(width, height, "週ごとのファネル（依頼→DKIM→DMARC→完了）", body)


def completion_buckets(days: list[float]) -> list[tuple[str, int]]:
    counts = [0] * len(BUCKETS)
    for d in days:
        counts[next(i for i, (_, upper) in enumerate(BUCKETS) if d <= upper)] += 1
    return [(label, counts[i]) for i, (label, _) in enumerate(BUCKETS)]


def completion_svg(data: ChartData) -> Markup:
    buckets = completion_buckets(data.completion_days)
    width, height, left, top, bottom = 860, 240, 40, 30, 40
    plot_h = height - top - bottom
    top_value = max([n for _, n in buckets] + [1])
    slot = (width - left - 10) / len(buckets)
    body = [f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 10}" y2="{top + plot_h}" stroke="#888"/>']
    for i, (label, n) in enumerate(buckets):
        h = plot_h * n / top_value
        x = left + i * slot + slot * 0.15
        body.append(f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{slot * 0.7:.1f}" height="{h:.1f}" '
                    f'fill="#4f7cac"><title>{escape(label)}: {n}</title></rect>')
        body.append(svg_text(x + slot * 0.35, top + plot_h - h - 4, str(n), "middle"))
        body.append(svg_text(x + slot * 0.35, top + plot_h + 16, label, "middle"))
    if data.completion_days:
        body.append(svg_text(left, 16, f"中央値 {median(data.completion_days):.1f}日（{len(data.completion_days)}件）"))
    else:
        body.append(svg_text(left, 16, "完了した案件はまだありません"))
    return svg_frame(width, height, "完了までの日数", body)


def waiting_svg(data: ChartData) -> Markup:
    rows = data.waiting_on
    width, left, row_h = 860, 260, 26
    height = 30 + row_h * max(len(rows), 1)
    top_value = max([n for _, n in rows] + [1])
    body = [svg_text(0, 16, f"待機中の案件 {data.waiting_total}件の、最後の診断")]
    if not rows:
        body.append(svg_text(0, 44, "待機中の案件はありません"))
    for i, (code, n) in enumerate(rows):
        y = 26 + i * row_h
        w = (width - left - 60) * n / top_value
        body.append(svg_text(left - 8, y + 15, _label(code), "end"))
        body.append(f'<rect x="{left}" y="{y + 3}" width="{w:.1f}" height="{row_h - 8}" fill="#c0703a">'
                    f'<title>{escape(code)}: {n}</title></rect>')
        body.append(svg_text(left + w + 6, y + 15, str(n)))
    return svg_frame(width, height, "案件を止めている診断", body)
