"""`dkimbot cancel`: stop a case, and stop signing with its key when nothing else uses it.

A cancelled case is not watched (SPEC §8 monitoring covers completed cases only), so a
key left in the signer after the DKIM step would keep signing with nobody checking its
record: once the facility removes the record, every mail carries a signature that must
fail. Cancelling therefore removes the case's selector(s) from the signer, unless another
live case of the same domain uses them (that case's monitoring still covers the key).

The signer is changed first and the cancel committed after: if removal fails (a reload
that does not work; ``uninstall_key`` restores the old tables), the case stays as it was
and staff can run the command again once the signer is fixed. The other order would
leave exactly the unwatched signing key this module exists to prevent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from bot.core import cases as sm
from bot.core.cases import State
from bot.core.rows import CaseRow
from bot.flows.desks import Office

log = logging.getLogger("dkimbot")


class CancelError(Exception):
    """The case could not be cancelled; the message is one line for staff."""


@dataclass
class CancelResult:
    case: CaseRow
    removed: list[str] = field(default_factory=list)          # selectors taken out of the signer
    kept: dict[str, list[str]] = field(default_factory=dict)  # selector -> refs of live cases using it
    unpublished: list[str] = field(default_factory=list)      # owner names the bot had published, removed

    def lines(self) -> list[str]:
        """What the command prints after ``REF: cancelled``."""
        domain = self.case.domain
        out = [f"removed from the signer: {s}._domainkey.{domain}" for s in self.removed]
        out += [f"removed from DNS (published by the bot): {o}" for o in self.unpublished]
        out += [f"left in the signer: {s}._domainkey.{domain}, used by live case {', '.join(refs)}"
                for s, refs in self.kept.items()]
        return out


def _selectors(case: CaseRow) -> list[str]:
    return list(case.selectors or ([case.selector] if case.selector else []))


def cancel_case(office: Office, case: CaseRow, who: str = "staff") -> CancelResult:
    """Cancel ``case``; uninstall its selectors no other live case of the domain uses."""
    from bot.adapters import signer

    result = CancelResult(case=case)
    if case.domain:
        others = [c for c in office.store.cases_for_domain(case.domain)
                  if c.id != case.id and State(c.state) not in sm.TERMINAL]
        for selector in _selectors(case):
            users = [c.ref or str(c.id) for c in others if selector in _selectors(c)]
            if users:
                result.kept[selector] = users
                continue
            try:
                # False: it was never installed (the case stopped before the DKIM step).
                if signer.uninstall_key(office.cfg, case.domain, selector):
                    result.removed.append(selector)
            except Exception as exc:  # noqa: BLE001 -- any signer failure: reported to staff as CancelError
                done = f" (already removed: {', '.join(result.removed)})" if result.removed else ""
                raise CancelError(
                    f"removing {selector}._domainkey.{case.domain} from the signer failed: {exc}{done}; "
                    "the case is not cancelled: fix the signer and run cancel again"
                ) from None
    if case.domain:
        from bot.flows.confirm import remove_published

        try:
            # Records the bot itself published in a managed zone: exactly those values.
            result.unpublished = remove_published(office, case)
        except Exception as exc:  # noqa: BLE001 -- reported to staff as the CancelError below
            raise CancelError(
                f"removing the records the bot published for {case.domain} failed: {exc}; "
                "the case is not cancelled: fix DNS and run cancel again"
            ) from None
    now = office.clock()
    with office.store.transaction():
        result.case = office.store.transition(case.id, State.CANCELLED, now, expected_state=case.state,
                                              event="staff_cancel", detail={
                                                  "by": who, "signer_removed": result.removed,
                                                  "signer_kept": result.kept,
                                                  "dns_removed": result.unpublished},
                                              next_check_at=None)
    if result.removed:
        log.info("%s: cancelled; removed %d selector(s) of the domain from the signer",
                 case.ref, len(result.removed))
    return result
