"""DMARC aggregate reports: how many reports per second the bot takes in.

Three measurements in one process over the same generated reports (Google's shape,
zipped in a mail as Google sends them; a typical one-day report of a hotel domain has a
handful of records, a busy one hundreds):

* **baseline**: ``defusedxml.ElementTree.fromstring`` alone on the already
  decompressed XML: the least any safe parser must do;
* **parse**: what the bot does per mail without storing: MIME walk, base64, the
  size-capped unzip, the defusedxml parse and the schema-aware extraction with every
  check (``read_report_mail`` + ``parse_aggregate``);
* **intake**: the same mails from a Maildir through ``intake_once`` into SQLite (one
  transaction per mail, de-duplication, the facility lookup), the figure that bounds a
  pass;
* **verify**: the same mails DKIM-signed as google.com, through the authentication a
  pass does on each (``dmarcauth.authenticated_org``: dkimpy's canonicalisation, hash
  and RSA check) with the key answered in-process: a pass's DNS client asks each
  reporter's key once, so DNS is not per mail.

Figures are reports per second and the ratio of each to the baseline.
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from common import Sizes

DOMAINS = 20


def _reports(count: int, records: int, seed: int = 17) -> list[tuple[str, datetime, bytes]]:
    import dmarckit

    rng = random.Random(seed)
    start = datetime(2026, 10, 1, tzinfo=UTC)
    out = []
    for i in range(count):
        domain = f"bench-hotel-{i % DOMAINS}.test"
        day = start + timedelta(days=i // DOMAINS % 50)
        rows = [(f"198.51.100.{rng.randrange(1, 255)}" if r else "203.0.113.10", rng.randrange(1, 500),
                 rng.choice(("pass", "pass", "fail")), rng.choice(("pass", "fail"))) for r in range(records)]
        out.append((domain, day, dmarckit.google_style_xml(domain, day, f"bench-{i}", rows)))
    return out


def _rate(seconds: float, n: int) -> float:
    return n / seconds if seconds > 0 else float("inf")


def run(sizes: Sizes, work: Path) -> dict[str, Any]:
    import dmarckit
    from defusedxml.ElementTree import fromstring

    from bot.adapters.intake import MaildirMailbox
    from bot.config import load_config
    from bot.core.dmarcmail import read_report_mail
    from bot.core.dmarcxml import parse_aggregate
    from bot.flows.dmarcauth import authenticated_org
    from bot.flows.dmarcintake import intake_once
    from bot.flows.runtime import Bot

    key_record = f"v=DKIM1; k=rsa; p={dmarckit.signing_key()[1]}".encode()

    def dnsfunc(name: str | bytes, timeout: float = 5) -> bytes | None:
        return key_record

    now = datetime(2026, 12, 1, tzinfo=UTC)
    figures: dict[str, Any] = {}
    for label, records in (("small", sizes.dmarc_records), ("big", sizes.dmarc_big_records)):
        count = sizes.dmarc_reports if label == "small" else max(1, sizes.dmarc_reports // 20)
        reports = _reports(count, records)
        mails = [dmarckit.google_mail(xml, domain, day) for domain, day, xml in reports]

        t0 = time.perf_counter()
        for _d, _day, xml in reports:
            fromstring(xml, forbid_dtd=True)
        baseline = time.perf_counter() - t0

        t0 = time.perf_counter()
        rows = 0
        for raw in mails:
            for doc in read_report_mail(raw, 20 * 1024 * 1024).documents:
                rows += len(parse_aggregate(doc, now=now).rows)
        parse = time.perf_counter() - t0
        assert rows == count * records, (rows, count, records)

        state = work / f"state-{label}"
        cfg_path = work / f"{label}.toml"
        # Every source counts as ours here, so no PTR lookup runs: the figure is the
        # intake's own work (reverse DNS is bounded per pass and asked concurrently).
        cfg_path.write_text(f'[service]\nsending_ips = ["203.0.113.10", "198.51.100.0/24"]\n'
                            f'[dns]\nnameservers = ["127.0.0.1"]\nport = 9\ntimeout = 0.2\n'
                            f'[reports]\nkind = "maildir"\npath = "rua"\n[state]\ndir = "{state}"\n')
        bot = Bot.open(load_config(cfg_path), clock=lambda: now)
        try:
            for i in range(DOMAINS):
                dmarckit.completed_case(bot.store, f"bench-hotel-{i}.test", now)
            box = MaildirMailbox(bot.cfg.state_path("rua"))
            for raw in mails:
                box.deliver(raw)
            t0 = time.perf_counter()
            counts = intake_once(bot)
            intake = time.perf_counter() - t0
        finally:
            bot.close()
        assert counts["stored"] == count, counts

        signed = [dmarckit.signed(raw, "google.com") for raw in mails]
        t0 = time.perf_counter()
        verified = sum(authenticated_org(raw, "google.com", [], "", lambda: dnsfunc) == "google.com"
                       for raw in signed)
        verify = time.perf_counter() - t0
        assert verified == count, (verified, count)
        xml_bytes = sum(len(x) for _d, _day, x in reports)
        figures[label] = {
            "reports": count, "records_per_report": records, "xml_bytes_per_report": xml_bytes // count,
            "mail_bytes_per_report": sum(map(len, mails)) // count,
            "baseline_per_second": _rate(baseline, count), "parse_per_second": _rate(parse, count),
            "intake_per_second": _rate(intake, count), "verify_per_second": _rate(verify, count),
            "verify_vs_baseline": verify / baseline if baseline else float("inf"),
            "parse_vs_baseline": parse / baseline if baseline else float("inf"),
            "intake_vs_baseline": intake / baseline if baseline else float("inf"),
        }
    return figures
