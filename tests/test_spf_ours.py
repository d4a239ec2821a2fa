"""When the facility's SPF already includes ours and still fails, the fault is ours:
staff are told, the facility is not asked to change anything (real BIND)."""

from __future__ import annotations

import email
import email.policy
import secrets

import pytest

from test_diagnosis_flow import Flow

pytestmark = pytest.mark.servers


def test_a_broken_saas_include_goes_to_staff_not_to_the_facility(tmp_path, bind):
    saas = f"badsaas{secrets.token_hex(3)}.test"
    bind.add_zone(saas)
    # Our own include forgot the sending IP (203.0.113.10).
    bind.update(saas, "_spf", "TXT", ["v=spf1 ip4:198.51.100.1 -all"])
    bind.update(saas, "*._report._dmarc", "TXT", ["v=DMARC1"])
    f = Flow(tmp_path, bind, saas)
    try:
        f.to_awaiting_dmarc()
        f.publish("_dmarc", [f"v=DMARC1; p=none; rua=mailto:dmarc@{saas}"])
        f.publish("@", [f"v=spf1 include:_spf.{saas} ~all"])
        assert f.run() == []  # nothing to the facility
        assert f.case.state == "awaiting_final"
        staff = [email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
                 for p in f.outbox.glob("*.eml")]
        escalations = [m for m in staff if "our SPF include" in str(m["Subject"])]
        assert len(escalations) == 1 and "staff@489ban.net" in str(escalations[0]["To"])
        assert f.run() == [] and len(list(f.outbox.glob("*.eml"))) == len(staff)  # once
        # Fixing our include completes the case by itself.
        bind.update(saas, "_spf", "TXT", ["v=spf1 ip4:203.0.113.10 -all"])
        [report] = f.run()
        assert f.case.state == "completed"
    finally:
        f.bot.close()
