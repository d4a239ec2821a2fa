"""The mails the bot sends, by kind. A kind names its template (``templates/<kind>.txt``)
and is what the outbox, the events and the rate limits record. ``staff_*`` kinds go to
staff only and are never escalated again (that is how mail loops start).

tests/test_templates.py holds this enum and the template directory to the same list.
"""

from __future__ import annotations

from enum import StrEnum


class MailKind(StrEnum):
    # to the facility
    REQUEST_REPLY = "request_reply"          # the first answer: records, or what is missing
    REMINDER = "reminder"
    DKIM_PROBLEM = "dkim_problem"
    DKIM_ACTIVE = "dkim_active"              # DKIM proven; the DMARC step
    DMARC_PROBLEM = "dmarc_problem"
    FINAL_PROBLEM = "final_problem"
    COMPLETION_REPORT = "completion_report"
    DKIM_REKEY = "dkim_rekey"                # a new (e.g. 1024-bit) key to publish instead
    DKIM_LOST = "dkim_lost"                  # after completion: a record vanished or changed
    DKIM_RESTORED = "dkim_restored"
    SIGNING_STOPPED = "signing_stopped"
    ROTATION_RECORD = "rotation_record"
    ROTATION_DONE = "rotation_done"
    PROOF_REPORT = "proof_report"
    DMARC_REPORT = "dmarc_report"            # what receivers' DMARC reports say; p=quarantine advice
    REPLY_ACK = "reply_ack"                  # a question was passed to a person, who will answer
    # to the domain's admin address only: the one-time token of the simplified flow
    CONFIRM_REQUEST = "confirm_request"
    # to staff
    STAFF_ESCALATION = "staff_escalation"
    STAFF_DIGEST = "staff_digest"
    STAFF_PROOF_REPORT = "staff_proof_report"

    @property
    def template(self) -> str:
        return f"{self.value}.txt"

    @property
    def to_staff(self) -> bool:
        return self.value.startswith("staff_")


#: The outbox kind of the end-to-end proof's probe (built by bot/flows/proof.py, no template).
PROOF_PROBE = "proof_probe"
