"""Is our own DNS resolver alive? One line naming it when it is not.

A DNS check that times out is recorded as ``dns_error`` and retried, never told to the
facility as "not published" (cases.classify_check). But a pass whose checks all failed
because *our* resolver is down must also end non-zero with one line naming it, like a
dead IMAP or SMTP server; a facility's broken name server must not. So after the checks
the configured resolver is asked one question: any answer at all (even REFUSED, as an
authoritative-only server gives for the root) means it is alive.
"""

from __future__ import annotations

import logging

from bot.config import DnsConfig

log = logging.getLogger("dkimbot")


def resolver_addresses(cfg: DnsConfig) -> list[str]:
    if cfg.nameservers:
        return list(cfg.nameservers)
    import dns.resolver

    try:
        return [str(ns) for ns in dns.resolver.Resolver().nameservers]
    except Exception as exc:  # noqa: BLE001 -- no /etc/resolv.conf (any reading error): nothing to probe
        log.debug("no system resolver to probe: %s", type(exc).__name__)
        return []


def resolver_down(cfg: DnsConfig, attempts: int = 2) -> str | None:
    """None when some configured resolver answers; else one line naming them."""
    import dns.exception
    import dns.message
    import dns.query

    addresses = resolver_addresses(cfg)
    if not addresses:
        return None
    timeout = max(0.2, min(float(cfg.timeout), 5.0))
    errors: list[str] = []
    for address in addresses:
        err = "no answer"
        for _ in range(max(1, attempts)):
            query = dns.message.make_query(".", "NS")
            try:
                dns.query.udp(query, address, timeout=timeout, port=cfg.port)
                return None
            except (dns.exception.DNSException, OSError) as exc:
                err = "timeout" if isinstance(exc, dns.exception.Timeout) else (str(exc) or type(exc).__name__)
        errors.append(f"{address}:{cfg.port} ({err})")
    return f"DNS resolver {', '.join(errors)} does not answer; DNS checks postponed"
