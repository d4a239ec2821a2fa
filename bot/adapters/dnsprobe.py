"""DNS probes for ``dkimbot doctor``: does each resolver answer, does each name server
of the managed zone answer with authority, and does the update server accept the TSIG
key?

The key is tried with an RFC 2136 UPDATE whose only content is a prerequisite (§2.4.1
"RRset exists": the zone's own SOA) and no update section, so the zone is unchanged
whatever the server does with it. BIND checks the key (TSIG, RFC 8945) and the zone's
allow-update before the prerequisites, so NOERROR means "this key may update this zone",
REFUSED "the key is valid but not allowed", NOTAUTH with a TSIG error "wrong secret or
unknown key". The answer is signed with the server's clock: its time_signed is a clock
reading the doctor compares with ours.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from bot.config import Config

log = logging.getLogger("dkimbot")


def probe_resolvers(cfg: Config) -> list[tuple[bool, str, str]]:
    """(ok, detail, fix) per configured resolver address: asked the SOA of our own domain;
    an answer (NOERROR or NXDOMAIN) is a resolver at work, REFUSED/SERVFAIL is not."""
    import dns.exception
    import dns.message
    import dns.query
    import dns.rcode

    from bot.adapters.health import resolver_addresses

    addresses = resolver_addresses(cfg.dns)
    if not addresses:
        return [(False, "no resolver configured and none in /etc/resolv.conf",
                 "set [dns] nameservers, or give the host a resolver")]
    name = cfg.bot_domain
    where = "[dns] nameservers" if cfg.dns.nameservers else "/etc/resolv.conf"
    out: list[tuple[bool, str, str]] = []
    for address in addresses:
        label = f"{address}:{cfg.dns.port}"
        query = dns.message.make_query(name, "SOA")
        try:
            response = dns.query.udp(query, address, timeout=cfg.dns.timeout, port=cfg.dns.port)
        except dns.exception.Timeout:
            out.append((False, f"{label} did not answer within {cfg.dns.timeout:g} s",
                        f"check {where} and [dns] port, and that the resolver runs"))
            continue
        except (dns.exception.DNSException, OSError) as exc:
            out.append((False, f"{label}: {type(exc).__name__}: {exc}",
                        f"check {where} and [dns] port"))
            continue
        rcode = response.rcode()
        if rcode in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            out.append((True, f"{label} answers (SOA {name}: {dns.rcode.to_text(rcode)})", ""))
        else:
            out.append((False, f"{label} answers {dns.rcode.to_text(rcode)} for SOA {name}",
                        "use a resolver that resolves names for this host (recursion allowed for it)"))
    return out


def probe_managed_servers(cfg: Config) -> list[tuple[bool | None, str, str]]:
    """(ok, detail, fix) per name server of the managed zone (the one the TSIG probe
    uses): each must answer its SOA with authority (AA), since the bot asks every
    authoritative server directly and publishes through one of them."""
    import dns.exception
    import dns.flags
    import dns.message
    import dns.query
    import dns.rcode

    if not cfg.dns.managed_nameservers:
        return [(None, "no [dns] managed_nameservers", "")]
    zone = _probe_zone(cfg)
    if zone is None:
        return [(False, f"no zone found for the managed name server {cfg.dns.managed_nameservers[0]!r}",
                 "check [dns] managed_nameservers and that the resolver can see that zone")]
    from bot.adapters.dnsclient import DnsClient

    servers = DnsClient(cfg.dns).nameserver_addresses(zone)
    if not servers:
        return [(False, f"zone {zone}: no NS records found", "check the zone's NS records")]
    out: list[tuple[bool | None, str, str]] = []
    for name in sorted(servers):
        if not servers[name]:
            out.append((False, f"{name} (NS of {zone}) has no address", f"give {name} an A/AAAA record"))
        for address in servers[name]:
            label = f"{name} {address}:{cfg.dns.port}"
            try:
                response = dns.query.udp(dns.message.make_query(zone, "SOA"), address,
                                         timeout=cfg.dns.timeout, port=cfg.dns.port)
            except (dns.exception.DNSException, OSError) as exc:
                out.append((False, f"{label}: no answer for SOA {zone} ({type(exc).__name__})",
                            "check that this name server runs and is reachable on [dns] port"))
                continue
            if response.rcode() == dns.rcode.NOERROR and response.flags & dns.flags.AA:
                out.append((True, f"{label} answers for {zone} with authority", ""))
            else:
                authority = "" if response.flags & dns.flags.AA else " without authority"
                out.append((False, f"{label}: SOA {zone} answered {dns.rcode.to_text(response.rcode())}{authority}",
                            f"load the zone {zone} on this server, or remove it from the NS records"))
    return out


@dataclass(frozen=True)
class UpdateProbe:
    ok: bool | None
    detail: str
    fix: str = ""
    server: str = ""
    server_time: datetime | None = None


def _probe_zone(cfg: Config) -> str | None:
    """The zone to try the key on: the zone holding the first managed name server
    (".489ban.net" → 489ban.net; "ns1.489ban.net" → the zone that name is in)."""
    if not cfg.dns.managed_nameservers:
        return None
    first = cfg.dns.managed_nameservers[0].lower().lstrip("*").lstrip(".").rstrip(".")
    from bot.adapters.dnsclient import DnsClient

    zone = DnsClient(cfg.dns).zone_for(first)
    return zone if isinstance(zone, str) else None


def probe_update(cfg: Config) -> UpdateProbe:
    import dns.exception
    import dns.name
    import dns.query
    import dns.rcode
    import dns.tsig
    import dns.tsigkeyring
    import dns.update

    d = cfg.dns
    if not d.managed_nameservers and not d.tsig_key_name:
        return UpdateProbe(None, "no [dns] managed_nameservers: the bot sends no updates")
    zone = _probe_zone(cfg)
    if zone is None:
        return UpdateProbe(False, f"no zone found for the managed name server {d.managed_nameservers[0]!r}",
                           "check [dns] managed_nameservers and that the resolver can see that zone")
    server = d.update_server or _first_address(cfg, zone)
    if not server:
        return UpdateProbe(False, f"no address for the name servers of {zone}", "set [dns] update_server")
    keyring = dns.tsigkeyring.from_text({d.tsig_key_name: d.tsig_secret}) if d.tsig_key_name else None
    keyname = dns.name.from_text(d.tsig_key_name) if d.tsig_key_name else None
    update = dns.update.UpdateMessage(zone + ".", keyring=keyring, keyname=keyname,
                                      keyalgorithm=dns.name.from_text(d.tsig_algorithm))
    update.present(zone + ".", "SOA")  # a prerequisite only: nothing to add or delete
    where = f"{server}:{d.port} zone {zone}"
    key = f"key {d.tsig_key_name}" if d.tsig_key_name else "no TSIG key"
    try:
        response = dns.query.tcp(update, server, port=d.port, timeout=d.timeout)
    except (dns.tsig.PeerBadKey, dns.tsig.BadKey):
        return UpdateProbe(False, f"{where}: the server does not know {key}",
                           "set [dns] tsig_key_name to the key name in the server's config", server)
    except (dns.tsig.PeerBadSignature, dns.tsig.BadSignature, dns.tsig.PeerError) as exc:
        return UpdateProbe(False, f"{where}: {key} rejected ({type(exc).__name__}): wrong secret",
                           "put the key's secret (base64, as in the server's config) in the variable named "
                           "by [dns] tsig_secret_env", server)
    except (dns.tsig.PeerBadTime, dns.tsig.BadTime):
        return UpdateProbe(False, f"{where}: TSIG time check failed: the clocks differ by more than 300 s",
                           "synchronise this host's clock", server)
    except dns.exception.Timeout:
        return UpdateProbe(False, f"{where}: no answer within {d.timeout:g} s",
                           "check [dns] update_server and port, and that TCP port is open", server)
    except (dns.exception.DNSException, OSError) as exc:
        return UpdateProbe(False, f"{where}: {type(exc).__name__}: {exc}",
                           "check [dns] update_server and port", server)
    rcode = response.rcode()
    signed = _time_signed(response)
    if rcode == dns.rcode.NOERROR:
        return UpdateProbe(True, f"{where}: {key} accepted (a prerequisite-only update; nothing changed)",
                           server=server, server_time=signed)
    if rcode == dns.rcode.REFUSED:
        fix = "allow this key to update the zone (BIND: allow-update { key …; }) on the server"
    elif rcode == dns.rcode.NOTAUTH:
        fix = f"make the update server a primary for {zone}, or set [dns] update_server to the primary"
    else:
        fix = "see the update server's log"
    return UpdateProbe(False, f"{where}: update answered {dns.rcode.to_text(rcode)}", fix, server, signed)


def _first_address(cfg: Config, zone: str) -> str:
    from bot.adapters.dnsclient import DnsClient

    servers = DnsClient(cfg.dns).nameserver_addresses(zone)
    return next((a for name in sorted(servers) for a in servers[name]), "")


def _time_signed(response: object) -> datetime | None:
    tsig = getattr(response, "tsig", None)
    if not tsig:
        return None
    try:
        return datetime.fromtimestamp(int(tsig[0].time_signed), UTC)
    except (AttributeError, IndexError, TypeError, ValueError) as exc:
        log.debug("doctor: no time in the TSIG answer: %s", exc)
        return None
