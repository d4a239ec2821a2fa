"""Staff actions: one code path for ``dkimbot resend|retry|cancel|rekey|rotate|proof|note``
(and ``confirm``, issue 11) and the buttons of the staff site (``bot/web/``).

Each action takes the pass lock (waiting for a running pass, as the CLI always did),
reads the case again under it (the page or the command saw it before the lock), says
no with a reason when the action makes no sense in the case's state, does the work
through the flow that owns it, records who did it in the case's event log, and
delivers the mail it caused right away. The caller gets the lines to show (the CLI
prints them; the site shows them above the case) or an :class:`ActionError`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from bot.adapters.store import CaseRow
from bot.flows.runtime import Bot, pass_lock

# Actions that cannot be taken back (a cancelled case stays cancelled; a new key or a
# rotation mails the facility a new record; a confirmation publishes records in the
# operator's zone for a requester nobody verified): the site asks again before them.
DESTRUCTIVE = ("cancel", "rekey", "rotate", "confirm")
# Actions that may make, read or install private keys: the [keys] passphrase is checked
# first (issue 11), by the CLI and the site alike.
KEY_ACTIONS = frozenset({"rotate", "rekey", "confirm", "retry", "resend", "proof"})
CASE_ACTIONS = ("resend", "retry", "cancel", "rekey", "rotate", "proof", "note", "confirm")
NOTE_MAX = 4000


class ActionError(Exception):
    """The action was not done; ``message`` is one line for staff, ``exit_code`` the CLI's."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


@dataclass
class ActionResult:
    case: CaseRow | None
    lines: list[str] = field(default_factory=list)


def refusal(action: str, case: CaseRow) -> str | None:
    """Why a staff action makes no sense for a case in its state (None: go ahead)."""
    if action == "cancel" and case.state == "cancelled":
        return "already cancelled"
    if action == "retry" and case.state in ("cancelled", "rejected"):
        return "nothing to retry; a new request from the facility starts a new case"
    if action == "resend" and case.state in ("cancelled", "rejected"):
        return "the case is closed; nothing is sent for it"
    if action == "resend" and (case.state == "needs_info" or not case.selector):
        return "there is no record to resend (no key was made for this case yet)"
    return None


def _deliver(bot: Bot) -> None:
    from bot.flows.delivery import flush_outbox_once

    flush_outbox_once(bot)


def _fresh(bot: Bot, case: CaseRow, action: str) -> CaseRow:
    case = bot.store.get_case(case.id)
    why = refusal(action, case)
    if why:
        raise ActionError(f"{case.ref} is {case.state}: {why}", 1)
    return case


def resend(bot: Bot, case: CaseRow, who: str) -> ActionResult:
    from bot.app.jobs import staff_resend

    with pass_lock(bot.cfg, wait=True):
        case = _fresh(bot, case, "resend")
        staff_resend(bot, case, who)
        _deliver(bot)
    return ActionResult(case, [f"{case.ref}: {case.state}"])


def retry(bot: Bot, case: CaseRow, who: str) -> ActionResult:
    from bot.app.jobs import staff_retry

    with pass_lock(bot.cfg, wait=True):
        case = staff_retry(bot, _fresh(bot, case, "retry"), who)
    return ActionResult(case, [f"{case.ref}: {case.state}"])


def cancel(bot: Bot, case: CaseRow, who: str) -> ActionResult:
    from bot.flows.cancel import CancelError, cancel_case

    with pass_lock(bot.cfg, wait=True):
        case = _fresh(bot, case, "cancel")
        try:
            done = cancel_case(bot, case, who)
        except CancelError as exc:
            raise ActionError(f"{case.ref}: {exc}", 1) from None
    # The second line on: what cancel did to the signer.
    return ActionResult(done.case, [f"{done.case.ref}: {done.case.state}", *(f"  {n}" for n in done.lines())])


def rekey(bot: Bot, case: CaseRow, who: str, bits: int = 1024) -> ActionResult:
    from bot.flows.rekey import RekeyError, rekey_case

    with pass_lock(bot.cfg, wait=True):
        case = bot.store.get_case(case.id)
        try:
            updated = rekey_case(bot, case, bits, reason=f"staff asked for a {bits}-bit key", who=who)
        except RekeyError as exc:
            raise ActionError(str(exc), 2) from None
        _deliver(bot)
    return ActionResult(updated[0] if updated else case,
                        [f"{c.ref}: {c.state}, new selector {c.selector} ({bits} bits); record mailed"
                         for c in updated])


def rotate(bot: Bot, domain: str, who: str) -> ActionResult:
    """Rotate a domain's key (every case of the domain that signs with it)."""
    from bot.flows.rotation import RotationError, describe, start_rotation

    domain = domain.strip().rstrip(".").lower()
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        pass
    with pass_lock(bot.cfg, wait=True):
        try:
            rotation = start_rotation(bot, domain, who=who)
        except RotationError as exc:
            raise ActionError(str(exc), 2) from None
        _deliver(bot)
    return ActionResult(None, [describe(rotation)])


def proof(bot: Bot, case: CaseRow, who: str) -> ActionResult:
    """Queue a probe and deliver it; the receiver's verdict comes with a later pass."""
    from bot.flows.proof import ProofError, queue_probe

    with pass_lock(bot.cfg, wait=True):
        case = bot.store.get_case(case.id)
        try:
            message_id = queue_probe(bot, case, by=who)
        except ProofError as exc:
            raise ActionError(str(exc), 2) from None
        _deliver(bot)
    row = bot.store.outbox_status(message_id) or {"status": "unknown", "last_error": None}
    status, error = row["status"], row["last_error"]
    return ActionResult(case, [
        f"{case.ref}: probe {message_id} to {bot.cfg.proof.address}: {status}"
        + (f" ({error})" if error else "")
        + f"; the receiver's verdict is reported by a pass within {bot.cfg.proof.wait_minutes:g} minutes"])


def confirm(bot: Bot, case: CaseRow, who: str) -> ActionResult:
    """Staff vouch for a managed-zone request: control confirmed by hand, records published
    now (bot/flows/confirm.py); recorded as a staff_confirm event with ``who``."""
    from bot.flows.confirm import ConfirmError, staff_confirm

    with pass_lock(bot.cfg, wait=True):
        case = _fresh(bot, case, "confirm")
        try:
            case = staff_confirm(bot, case, who)
        except ConfirmError as exc:
            raise ActionError(str(exc), 1) from None
        _deliver(bot)
    return ActionResult(case, [f"{case.ref}: {case.state}"])


def note(bot: Bot, case: CaseRow, who: str, text: str) -> ActionResult:
    """A staff note in the case's event log (changes nothing else)."""
    text = text.strip()
    if not text:
        raise ActionError("an empty note is not recorded", 2)
    if len(text) > NOTE_MAX:
        raise ActionError(f"a note is at most {NOTE_MAX} characters", 2)
    with pass_lock(bot.cfg, wait=True):
        case = bot.store.get_case(case.id)
        with bot.store.transaction():
            bot.store.add_event(case.id, bot.clock(), "staff_note", detail={"by": who, "text": text})
    return ActionResult(case, [f"{case.ref}: note recorded"])


# Actions on one case, by name, for the site's one form handler.
CaseAction = Callable[[Bot, CaseRow, str], ActionResult]
SIMPLE: dict[str, CaseAction] = {"resend": resend, "retry": retry, "cancel": cancel, "proof": proof,
                                  "confirm": confirm}
