"""Issue 11: the three crafted inputs that made parsing super-linear, measured.

    python3 benchmarks/bench_security.py          # the issue's sizes
    python3 benchmarks/bench_security.py --quick  # a quarter of them

For each input (built by tests/test_security_intake.py, the sizes of the issue):
* the time ``parse_message`` + ``read_reply`` take as a pass runs them (text capped at
  ``[intake] max_text_chars``), as a ratio against an ordinary five-field request parsed
  in the same process;
* the growth with the input uncapped: the time at 4x the size over the time at 1x
  (linear is ~4, quadratic ~16);
and the cost of the UTS #39 skeleton used for look-alike domains (PyICU's SpoofChecker).
Pure CPU, no server. Figures are ratios and counts; the absolute times are printed only
to read them by.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def _best(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _inputs(scale: float) -> dict[str, str]:
    from test_security_intake import request_body

    domain = "bench.test"
    base = request_body(domain)
    n_blank = int(84_000 * scale)
    n_paren = int(209_000 * scale)
    n_rules = int(70_000 * scale)
    return {
        "_clean_email (84 KB of blanks in an address)": base.replace(
            f"[担当者様のメールアドレス]\nyamada@{domain}",
            f"[担当者様のメールアドレス] yamada{' ' * n_blank}@{domain}"),
        "_canon (209 KB of '(' in a label)": base + "[" + "(" * n_paren + "]\n",
        "split_sections (560 KB of rule lines)": base + "-----\n\n" * n_rules,
    }


def run(quick: bool = False) -> dict[str, Any]:
    from test_security_intake import raw_mail, request_body

    from bot.core.replies import read_reply
    from bot.core.request import parse_message

    scale = 0.25 if quick else 1.0
    repeat = 3

    def mail(body: str) -> bytes:
        return raw_mail("a@sender.test", "DKIM、DMARC設定希望", body)

    def handle(raw: bytes, cap: int | None) -> None:
        parsed = parse_message(raw, max_text_chars=cap) if cap else parse_message(raw)
        read_reply(parsed.body_text)

    ordinary = mail(request_body("bench.test"))
    baseline = _best(lambda: handle(ordinary, None), 20)
    out: dict[str, Any] = {"baseline_ms": baseline * 1000, "inputs": {}}
    big = {k: mail(v) for k, v in _inputs(scale).items()}
    bigger = {k: mail(v) for k, v in _inputs(scale * 4).items()}
    for name, raw in big.items():
        capped = _best(lambda r=raw: handle(r, None), repeat)
        one = _best(lambda r=raw: handle(r, 10**8), repeat)
        four = _best(lambda r=bigger[name]: handle(r, 10**8), repeat)
        out["inputs"][name] = {"bytes": len(raw), "capped_ms": capped * 1000, "vs_baseline": capped / baseline,
                               "uncapped_ms": one * 1000, "growth_4x": four / one}
    import bot.core.authority as authority

    t = time.perf_counter()
    authority.skeleton("489ban.net")  # the first call imports PyICU and builds the checker
    first = time.perf_counter() - t
    per = statistics.median(_best(lambda: authority.skeleton("hotel-sakura.co.jp"), 200) for _ in range(5))
    out["skeleton_first_ms"] = first * 1000
    out["skeleton_us"] = per * 1e6
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    r = run(args.quick)
    print(f"baseline: an ordinary request parsed + read in {r['baseline_ms']:.2f} ms")
    print("| input | bytes | as a pass reads it (capped) | vs baseline | uncapped | growth at 4x size |")
    print("|---|---|---|---|---|---|")
    for name, x in r["inputs"].items():
        print(f"| {name} | {x['bytes']:,} | {x['capped_ms']:.1f} ms | {x['vs_baseline']:.0f}x | "
              f"{x['uncapped_ms']:.1f} ms | {x['growth_4x']:.1f}x |")
    print(f"UTS #39 skeleton: first call (import PyICU) {r['skeleton_first_ms']:.0f} ms, "
          f"then {r['skeleton_us']:.1f} us a domain")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
