"""The simplified flow (SPEC §1): domains whose DNS the SaaS operator runs itself.

When a domain's zone is served by one of ``[dns] managed_nameservers``, the bot
publishes the DKIM record(s), and a DMARC ``p=none`` record when the domain has none,
by RFC 2136 dynamic update signed with the operator's TSIG key. The facility has
nothing to do; the normal checks then see the records and the case moves on by itself.
An existing DMARC or SPF record is never touched here: those stay the facility's call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bot.config import Config
from bot.core.dnsresults import DnsLookup

if TYPE_CHECKING:
    from bot.adapters.dnsclient import DnsClient


log = logging.getLogger("dkimbot")


@dataclass
class ManagedResult:
    zone: str
    nameservers: list[str]
    published: list[str] = field(default_factory=list)  # owner names written
    error: str | None = None
    server: str = ""
    values: dict[str, str] = field(default_factory=dict)  # owner → the exact value written


def _matches(ns: str, managed: list[str]) -> bool:
    ns = ns.lower().rstrip(".")
    for m in managed:
        m = m.lower().rstrip(".")
        # ".489ban.net" (or "*.489ban.net") means any name server under that domain.
        suffix = m[1:] if m.startswith("*") else m
        if ns == m or (suffix.startswith(".") and ns.endswith(suffix)):
            return True
    return False


def find_managed_zone(client: DnsLookup, cfg: Config, domain: str) -> tuple[str, list[str], list[str]] | None:
    """(zone, its NS names, their addresses) when every NS of the zone is ours, else None."""
    managed = cfg.dns.managed_nameservers
    if not managed:
        return None
    from bot.adapters.dnsclient import DnsFailure

    zone = client.zone_for(domain)
    if isinstance(zone, DnsFailure) or not zone:
        return None
    servers = client.nameserver_addresses(zone)
    if isinstance(servers, DnsFailure) or not servers:
        return None
    names = sorted(servers)
    if not all(_matches(n, managed) for n in names):
        return None
    addresses = [a for n in names for a in servers[n]]
    return zone, names, addresses


def _txt_rdata(value: str) -> Any:
    import dns.rdataclass
    import dns.rdatatype
    from dns.rdtypes.ANY.TXT import TXT

    from bot.core.records import split_txt_strings

    return TXT(dns.rdataclass.IN, dns.rdatatype.TXT, [s.encode() for s in split_txt_strings(value)])


def _update_message(cfg: Config, zone: str) -> Any:
    """An RFC 2136 update of ``zone``, TSIG-signed when ``[dns] tsig_key_name`` is set."""
    import dns.name
    import dns.tsigkeyring
    import dns.update

    keyring = None
    if cfg.dns.tsig_key_name:
        keyring = dns.tsigkeyring.from_text({cfg.dns.tsig_key_name: cfg.dns.tsig_secret})
    return dns.update.UpdateMessage(
        zone + ".", keyring=keyring,
        keyname=dns.name.from_text(cfg.dns.tsig_key_name) if cfg.dns.tsig_key_name else None,
        keyalgorithm=dns.name.from_text(cfg.dns.tsig_algorithm),
    )


def _send_update(cfg: Config, zone: str, server: str, update: Any) -> None:
    """Send an RFC 2136 update over TCP; anything but NOERROR raises."""
    import dns.query
    import dns.rcode

    response = dns.query.tcp(update, server, port=cfg.dns.port, timeout=cfg.dns.timeout)
    if response.rcode() != dns.rcode.NOERROR:
        raise RuntimeError(f"update of {zone} at {server} refused: {dns.rcode.to_text(response.rcode())}")


def publish_txt(cfg: Config, zone: str, server: str, records: dict[str, str | None]) -> None:
    """Replace the TXT rrset at each owner name (value None: only add when absent)."""
    import dns.name
    import dns.rdataset

    update = _update_message(cfg, zone)
    for owner, value in records.items():
        if value is None:
            continue
        rds = dns.rdataset.Rdataset(dns.rdataclass.IN, dns.rdatatype.TXT, ttl=300)
        rds.add(_txt_rdata(value))
        update.replace(dns.name.from_text(owner + "."), rds)
    _send_update(cfg, zone, server, update)


def delete_txt_values(cfg: Config, zone: str, server: str, values: list[tuple[str, str]]) -> None:
    """Delete exactly these (owner, value) TXT records (RFC 2136 "delete an RR from an
    RRset"): a record someone else put at the same name stays."""
    import dns.name

    update = _update_message(cfg, zone)
    for owner, value in values:
        update.delete(dns.name.from_text(owner + "."), _txt_rdata(value))
    _send_update(cfg, zone, server, update)


def publish_for_domain(cfg: Config, client: DnsClient, domain: str,
                       dkim_records: list[dict[str, str]]) -> ManagedResult | None:
    """Publish a managed domain's records; None when the domain is not ours to edit."""
    found = find_managed_zone(client, cfg, domain)
    if found is None:
        return None
    zone, names, addresses = found
    result = ManagedResult(zone=zone, nameservers=names)
    records: dict[str, str | None] = {r["fqdn"]: r["value"] for r in dkim_records}
    try:
        from bot.checks.dnscheck import check_dmarc, suggest_dmarc_record

        dmarc = check_dmarc(client, domain, cfg.service.dmarc_rua or None)
        codes = [d.code for d in dmarc.diagnoses]
        if codes == ["dmarc_not_published"]:
            records[f"_dmarc.{domain}"] = suggest_dmarc_record(None, cfg.service.dmarc_rua or None)
        server = cfg.dns.update_server or (addresses[0] if addresses else "")
        if not server:
            raise RuntimeError(f"no address for the name servers of {zone}")
        publish_txt(cfg, zone, server, records)
        result.published = [k for k, v in records.items() if v is not None]
        result.server = server
        result.values = {k: v for k, v in records.items() if v is not None}
        log.info("managed zone %s: published %s", zone, ", ".join(result.published))
    except Exception as exc:  # noqa: BLE001 -- DNS down, TSIG refused: logged, staff finish it
        result.error = f"{type(exc).__name__}: {exc}"
        log.warning("managed zone %s: publishing failed: %s", zone, result.error)
    return result
