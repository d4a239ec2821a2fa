"""Is a DMARC report mail really from the organisation it names? (review, 2026-12-01)

The rua address is public: anyone can mail a "report" to it. A report counts as
**authenticated** only when its mail is authenticated as coming from its From domain's
organisation, one of two ways:

* ``[reports] authserv_id`` set (our receiving server writes Authentication-Results):
  the topmost header of that server shows ``dkim=pass`` for a domain of the From
  domain's organisation, or ``dmarc=pass`` for the From domain (RFC 8601 §5: anyone can
  write Authentication-Results lower down, so only our server's own counts).
* otherwise the bot verifies the mail's DKIM signature itself with dkimpy, the key read
  through the configured DNS servers; a passing signature whose ``d=`` is of the From
  domain's organisation authenticates it. Receivers sign their reports (Google,
  Microsoft, Yahoo and the rest do); SPF is not checked, because the bot reads a mailbox
  after the fact and does not see the SMTP session the SPF check needs.

The answer is the From domain's organisational domain, or "" when nothing authenticated
the mail. Whether the report's own name agrees with that domain is the intake's
question (``dmarcintake.reporter_label``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger("dkimbot")

MAX_SIGNATURES = 4   # signatures looked at per mail: a mail with fifty costs four lookups at most

DnsFunc = Callable[..., bytes | None]


def org_of(domain: str) -> str:
    # Here, not at the top: the public suffix list is a heavy import an idle pass never needs.
    from bot.checks.dmarc import organizational_domain

    return organizational_domain(domain.lower().rstrip(".")) if domain else ""


def sender_authenticated(auth_results: list[str], authserv_id: str, own: str) -> bool:
    """Did our own receiving server (``authserv_id``) pass the report mail's sender?

    Only the topmost header from the trusted authserv-id counts; aligned means the same
    organisation as the From domain (``own``), by a DMARC pass or a passing DKIM signature.
    """
    from bot.core.authresults import AuthResultsError, parse_authentication_results

    for value in auth_results:
        try:
            parsed = parse_authentication_results(value)
        except AuthResultsError:
            continue
        if parsed.authserv_id != authserv_id.lower():
            continue
        dmarc = any(r.result == "pass" and org_of(r.props.get("header.from") or "x.invalid") == own
                    for r in parsed.by_method("dmarc"))
        dkim = any(r.result == "pass" and org_of(r.dkim_domain or "x.invalid") == own
                   for r in parsed.by_method("dkim"))
        return dmarc or dkim
    return False


def dkim_authenticated(raw: bytes, own: str, dnsfunc: DnsFunc) -> bool:
    """Does a DKIM signature with ``d=`` of organisation ``own`` verify (dkimpy, ``dnsfunc``)?

    Signatures of other domains are not verified at all: they could not authenticate
    the From domain, and looking up their keys would be DNS work a stranger chose.
    """
    import dkim
    from dkim.util import InvalidTagValueList, parse_tag_value

    try:
        verifier = dkim.DKIM(raw, logger=log, minkey=1024)
    except dkim.DKIMException as exc:
        log.info("DMARC report mail: DKIM not checked (%s)", exc)
        return False
    signatures = [value for name, value in verifier.headers if name.lower() == b"dkim-signature"]
    for idx, value in enumerate(signatures[:MAX_SIGNATURES]):
        try:
            tags = parse_tag_value(value)
        except InvalidTagValueList:
            continue
        d = tags.get(b"d", b"").decode("ascii", errors="replace").strip()
        if not d or org_of(d) != own:
            continue
        try:
            if verifier.verify(idx=idx, dnsfunc=dnsfunc):
                return True
        except dkim.DKIMException as exc:  # a malformed signature: this one does not verify
            log.info("DMARC report mail: DKIM signature of %s not verified (%s)", d, exc)
    return False


def authenticated_org(raw: bytes, from_domain: str, auth_results: list[str], authserv_id: str,
                      dnsfunc: Callable[[], DnsFunc]) -> str:
    """The From domain's organisational domain if the mail is authenticated as its, else "".

    ``dnsfunc`` is a factory, so a mail without a DKIM signature of its From domain's
    organisation never makes a DNS client.
    """
    if not from_domain:
        return ""
    own = org_of(from_domain)
    if authserv_id:
        return own if sender_authenticated(auth_results, authserv_id, own) else ""
    if b"dkim-signature" not in raw[:256 * 1024].lower():
        return ""
    return own if dkim_authenticated(raw, own, dnsfunc()) else ""
