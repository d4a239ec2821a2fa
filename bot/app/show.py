"""`dkimbot show`: one case as staff read it (also printed at the end of `dkimbot demo`)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from bot.core.dnsresults import stored_skip_reason

if TYPE_CHECKING:
    from bot.adapters.store import CaseRow, Store


def show_case(store: Store, case: CaseRow, as_json: bool) -> int:
    """`dkimbot show CASE`: the case, its events (with DNS verdicts per area) and its mails."""
    events = store.events(case.id)
    mails = store.mails_for_case(case.id)
    if as_json:
        print(json.dumps({**case.to_json(), "events": events, "mails": mails},
                         ensure_ascii=False, indent=2, default=str))
        return 0
    for key, value in case.to_json().items():
        print(f"{key:>15}: {value}")
    print("\nevents:")
    for e in events:
        move = f" {e['from_state']} -> {e['to_state']}" if e["to_state"] and e["from_state"] != e["to_state"] else ""
        print(f"  {e['at']}  {e['kind']}{move}")
        detail = dict(e["detail"])
        dns = detail.pop("dns", None)
        items = detail.pop("items", None) if e["kind"] == "proof_result" else None
        if detail:
            print(f"      {json.dumps(detail, ensure_ascii=False, default=str)[:600]}")
        if dns:
            for area in ("dkim", "dmarc", "spf", "alignment"):
                a = dns.get(area) or {}
                why = stored_skip_reason(a)
                if why:  # not asked: its ok=True would read as "verified"
                    print(f"      {area:<9} skipped ({why})")
                    continue
                codes = ", ".join(d["code"] for d in a.get("diagnoses", [])) or "-"
                print(f"      {area:<9} ok={a.get('ok')}  {codes}")
        for item in items or []:  # the receiver's Authentication-Results, one line each
            print(f"      {item['method']}={item['result']} {item['detail']}".rstrip())
    print("\nmails:")
    for m in mails:
        print(f"  {m['created_at']}  {m['kind']:<18} {m['status']:<8} {m['message_id']}")
    return 0
