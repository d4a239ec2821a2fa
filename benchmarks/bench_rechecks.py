"""Rechecks at real latency: N waiting cases, every DNS answer 50 ms late.

BIND serves one zone per facility (two name servers at a shared DNS hoster, as most
facilities have); a DelayingDnsProxy in front of each name server delays every answer
by ``dns_delay``, and dkimbot's ``[dns]`` points at the proxies, so every query the bot
sends (resolver and direct-to-authoritative alike) pays the delay. The proxies run in
a process of their own so they do not compete with the bot for this process's GIL.

The waiting cases are a realistic mix (most facilities have not published anything
yet; some made a mistake; a few got it right and have their key installed and proven
in the pass). Figure: the pass time of ``recheck_due_once`` against the sequential
bound (queries the proxies saw × delay). Baseline: the same pass on a copy of the
same state with no delay.
"""

from __future__ import annotations

import inspect
import multiprocessing
import shutil
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from common import Sizes, reset_peak_rss, rss_mib

SAAS_ZONE = "yoyakuban-saas.test"
HOSTER = "dns-hoster.test"
SELECTOR = "yoyakuban202401"
KEY_POOL = 4  # distinct RSA-2048 keys shared round-robin (5,000 key generations would take minutes)

# --------------------------------------------------------------------------- zones


def _zone_text(zone: str, records: list[str]) -> str:
    return "\n".join([
        "$TTL 300",
        f"{zone}. IN SOA ns1.{HOSTER}. hostmaster.{zone}. 1 3600 600 86400 60",
        f"{zone}. IN NS ns1.{HOSTER}.",
        f"{zone}. IN NS ns2.{HOSTER}.",
        *records,
    ]) + "\n"


def _txt(name: str, value: str) -> str:
    """A zone-file TXT line; the value split into 255-byte strings like a DNS panel does."""
    parts = [value[i:i + 255] for i in range(0, len(value), 255)] or [""]
    return f"{name}. IN TXT " + " ".join('"' + p.replace("\\", "\\\\").replace('"', '\\"') + '"' for p in parts)


def facility_setup(i: int, domain: str, record: str) -> tuple[str, list[str], str]:
    """(case state, zone records, what it is) for facility i: a fixed 20-way mix."""
    name = f"{SELECTOR}._domainkey.{domain}"
    spf = [_txt(domain, f"v=spf1 include:_spf.{SAAS_ZONE} ~all")] if i % 2 else []
    kind = i % 20
    if kind < 14:
        return "awaiting_dkim", spf, "nothing published yet"
    if kind < 16:
        return "awaiting_dkim", [*spf, _txt(f"{name}.{domain}", record)], "DKIM at the doubled name"
    if kind == 16:
        return "awaiting_dkim", [*spf, _txt(name, record[:255])], "DKIM cut at 255 bytes"
    if kind == 17:
        return "awaiting_dkim", [*spf, _txt(name, f'"{record}"')], "DKIM with literal quotes"
    if kind == 18:
        return "awaiting_dkim", [*spf, _txt(name, record)], "DKIM right: install and prove"
    return "awaiting_dmarc", [*spf, _txt(name, record), _txt(f"_dmarc.{domain}", "v=DMARC1 p=none")], \
        "DKIM right, DMARC without ';'"


def preload_zones(bind: Any, zones: dict[str, str]) -> None:
    """Give a not-yet-started servers.Bind its zones in named.conf.

    ``Bind.add_zone`` costs ≈50 ms (rndc addzone on both servers), 4 minutes for 5,000
    zones; written into the config before start, named loads them in seconds. Uses
    the harness's internals on purpose: this is the benchmark's set-up, not a test.
    """
    for inst in bind._instances.values():
        zdir = inst.dir / "zones"
        zdir.mkdir(parents=True, exist_ok=True)
        stanzas = []
        for zone, text in zones.items():
            (zdir / f"{zone}.db").write_text(text)
            stanzas.append(f'zone "{zone}" {{ type primary; file "zones/{zone}.db"; }};')
        original = inst.write_config

        def write_config(original=original, inst=inst, stanzas=stanzas) -> None:
            original()
            with open(inst.dir / "named.conf", "a") as fh:
                fh.write("\n".join(stanzas) + "\n")

        inst.write_config = write_config
    for zone in zones:
        bind.zones[zone] = bind.addresses


# --------------------------------------------------------------------------- proxies


class _InFlight:
    """Queries in flight across all proxies of the process, and the most at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0

    def add(self, delta: int) -> None:
        with self.lock:
            self.now += delta
            self.peak = max(self.peak, self.now)


def _proxy_main(conn: Any, upstreams: list[tuple[str, str, int]], port: int, delay: float) -> None:
    import servers

    total = _InFlight()

    class CountedProxy(servers.DelayingDnsProxy):
        """Every change of a proxy's own in-flight count also moves the shared one,
        so the peak is of all sockets at once, not a sum of per-proxy peaks."""

        @property  # type: ignore[override]
        def in_flight(self) -> int:
            return self.__dict__.get("_own", 0)

        @in_flight.setter
        def in_flight(self, value: int) -> None:
            total.add(value - self.__dict__.get("_own", 0))
            self.__dict__["_own"] = value

    proxies = [CountedProxy(up_host, up_port, delay, host=host, port=port)
               for host, up_host, up_port in upstreams]
    conn.send("ready")
    while True:
        cmd = conn.recv()
        if cmd == "stop":
            break
        if isinstance(cmd, tuple) and cmd[0] == "delay":
            for p in proxies:
                p.delay = cmd[1]
            conn.send("ok")
        elif cmd == "reset":
            for p in proxies:
                p.reset_counters()
            total.peak = total.now
            conn.send("ok")
        elif cmd == "counters":
            conn.send(([(p.queries, p.tcp_queries, p.peak_in_flight) for p in proxies], total.peak))
    for p in proxies:
        p.stop()
    conn.send("stopped")


class ProxyProcess:
    """DelayingDnsProxy instances (from tests/servers.py) in a child process."""

    def __init__(self, upstreams: list[tuple[str, str, int]], port: int, delay: float) -> None:
        ctx = multiprocessing.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_proxy_main, args=(child, upstreams, port, delay), daemon=True)
        self.proc.start()
        if not self.conn.poll(20) or self.conn.recv() != "ready":
            raise RuntimeError("DNS proxies did not start")

    def ask(self, cmd: Any) -> Any:
        self.conn.send(cmd)
        return self.conn.recv()

    def close(self) -> None:
        try:
            self.ask("stop")
        except (OSError, EOFError):
            pass
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()


# --------------------------------------------------------------------------- state


def _write_config(path: Path, state: Path, port: int) -> Path:
    path.write_text(f"""
[service]
support_address = "support@489ban.net"
staff_cc = ["staff@489ban.net"]
sending_ips = ["203.0.113.10"]
spf_include = "_spf.{SAAS_ZONE}"

[dns]
nameservers = ["127.0.0.1"]
port = {port}
timeout = 3.0

[schedule]
check_interval_seconds = 300

[state]
dir = "{state}"
""", encoding="utf-8")
    return path


def _make_cases(bot: Any, domains: list[str], setups: list[tuple[str, list[str], str]],
                pems: list[bytes], publics: list[str], now: datetime) -> None:
    from bot.adapters.keys import ensure_private_dir, write_file_atomic

    store = bot.store
    with store.transaction():
        for i, (domain, (state, _records, _what)) in enumerate(zip(domains, setups)):
            k = i % KEY_POOL
            store.record_key(domain, SELECTOR, "rsa", 2048, publics[k], now)
            if i % 20 == 18:  # the pass installs this key into the signer: it needs the private half
                path = bot.keystore.path(domain, SELECTOR)
                ensure_private_dir(bot.keystore.directory)
                ensure_private_dir(path.parent)
                write_file_atomic(path, pems[k], 0o600)
            case = store.create_case(
                state="awaiting_dkim", now=now, facility=f"旅館 {i}", contact_name="山田 太郎",
                contact_email=f"yamada@{domain}", contact_phone="03-1234-5678",
                admin_email=f"info@{domain}", domain=domain, selector=SELECTOR, selectors=[SELECTOR],
                requester=f"yamada@{domain}", next_check_at=now,
            )
            if state == "awaiting_dmarc":  # through the store's own move, as the bot makes it
                store.transition(case.id, state, now, expected_state="awaiting_dkim", event="bench_setup")


# --------------------------------------------------------------------------- the scenario


def run(sizes: Sizes, work: Path) -> dict[str, Any]:
    import servers

    from bot.config import load_config
    from bot.adapters.keys import generate_private_key, public_b64_of, unencrypted_pkcs8
    from bot.flows.rechecks import recheck_due_once
    from bot.flows.runtime import Bot

    n = sizes.recheck_cases
    keys = [generate_private_key("rsa", 2048) for _ in range(KEY_POOL)]
    pems = [unencrypted_pkcs8(k) for k in keys]
    publics = [public_b64_of(k) for k in keys]
    domains = [f"ryokan{i:05d}.test" for i in range(n)]
    setups = [facility_setup(i, d, f"v=DKIM1; k=rsa; p={publics[i % KEY_POOL]}") for i, d in enumerate(domains)]
    zones = {d: _zone_text(d, recs) for d, (_s, recs, _w) in zip(domains, setups)}
    zones[HOSTER] = _zone_text(HOSTER, [f"ns1.{HOSTER}. IN A 127.0.0.1", f"ns2.{HOSTER}. IN A 127.0.0.2"])
    zones[SAAS_ZONE] = _zone_text(SAAS_ZONE, [_txt(f"_spf.{SAAS_ZONE}", "v=spf1 ip4:203.0.113.10 -all")])

    t0 = time.perf_counter()
    bind = servers.Bind(start=False)
    preload_zones(bind, zones)
    proxies: ProxyProcess | None = None
    try:
        bind.start()
        bind_seconds = time.perf_counter() - t0
        port = servers.free_port(bind.addresses)
        # Straight to each named (not through the harness's in-process forwarder for
        # 127.0.0.2, which would share this process's GIL with the bot).
        named = {addr: inst.port for addr, inst in bind._instances.items()}
        proxies = ProxyProcess([(addr, "127.0.0.1", named[addr]) for addr in bind.addresses], port, 0.0)

        now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
        state = work / "state"
        cfg = load_config(_write_config(work / "rechecks.toml", state, port))
        bot = Bot.open(cfg)
        try:
            _make_cases(bot, domains, setups, pems, publics, now)
        finally:
            bot.close()
        # The baseline: the very same pass, on a copy of the state, with no delay.
        state0 = work / "state-0ms"
        shutil.copytree(state, state0)
        cfg0 = load_config(_write_config(work / "rechecks0.toml", state0, port))
        bot0 = Bot.open(cfg0)
        try:
            t0, c0 = time.perf_counter(), time.process_time()
            checked0 = recheck_due_once(bot0)
            seconds0, cpu0 = time.perf_counter() - t0, time.process_time() - c0
        finally:
            bot0.close()
        queries0 = sum(q for q, _t, _p in proxies.ask("counters")[0])

        proxies.ask(("delay", sizes.dns_delay))
        proxies.ask("reset")
        bot = Bot.open(cfg)
        try:
            rss_before = rss_mib("VmRSS")
            reset_peak_rss()
            t0, c0 = time.perf_counter(), time.process_time()
            checked = recheck_due_once(bot)
            # process_time: every thread of this process (workers, the DNS I/O thread,
            # the pass thread); the proxies and BIND run in processes of their own.
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
            peak = rss_mib("VmHWM")
            states: dict[str, int] = {}
            for c in bot.store.list_cases():
                states[c.state] = states.get(c.state, 0) + 1
            mails = len(bot.store.pending_mail(datetime.now(UTC) + timedelta(days=1)))
        finally:
            bot.close()
        counters, peak_all = proxies.ask("counters")
        # Same domains, same 50 ms: checkdmarc (SPF + DMARC), then dkimbot one domain at a time.
        compare = compare_with_checkdmarc(proxies, port, domains[:sizes.checkdmarc_domains], publics,
                                          cfg.service)
        wire_us, dnspython_us, parse_queries = wire_floor_us(port)
    finally:
        if proxies is not None:
            proxies.close()
        bind.close()
    queries = sum(q for q, _t, _p in counters)
    workers = inspect.signature(recheck_due_once).parameters["workers"].default
    bound = queries * sizes.dns_delay
    per_domain = queries / n
    return {
        "cases": n, "checked": checked, "checked_at_0ms": checked0, "delay": sizes.dns_delay,
        "seconds": seconds, "seconds_at_0ms": seconds0, "queries": queries, "queries_at_0ms": queries0,
        "tcp_queries": sum(t for _q, t, _p in counters),
        # Each worker sends what it knows it needs at once: a zone's servers, the probes
        # (at most 5 names on one server, or 3 names on two): 6 per worker at most.
        "peak_in_flight": peak_all, "peak_per_server": [p for _q, _t, p in counters],
        "socket_bound": workers * MAX_FAN_OUT + 1,
        "sequential_bound": bound, "speedup": bound / seconds,
        "queries_per_domain": per_domain, "queries_per_domain_floor": floor_queries_per_domain(n),
        "cpu_seconds": cpu, "cpu_seconds_at_0ms": cpu0, "cpu_ms_per_case": 1000 * cpu / n,
        "cpu_ms_per_case_at_0ms": 1000 * cpu0 / n,
        # Building and reading this pass's queries and nothing else: the floor of this
        # client (its own codec), and of one built on dnspython's messages (measured
        # here, on representative answers).
        "wire_us_per_query": wire_us, "wire_floor_ms_per_case": per_domain * wire_us / 1000,
        "dnspython_us_per_query": dnspython_us, "dnspython_floor_ms_per_case": per_domain * dnspython_us / 1000,
        "floor_samples": parse_queries,
        "rss_before_mib": rss_before, "peak_rss_mib": peak,
        "states_after": states, "mails_queued": mails, "bind_start_seconds": bind_seconds,
        "checkdmarc": compare,
        "target_met": bound / seconds >= 20,
    }


# --------------------------------------------------------------------------- bounds

MAX_FAN_OUT = 6


def floor_queries_per_domain(n: int) -> float:
    """The fewest queries this mix needs per domain on two servers (the issue's limit):
    the zone's NS once (1); DKIM on both servers (2); for a case past the DKIM step the
    DMARC and apex TXT on both (4); a missing or misplaced record's wrong-place probes
    need at least one query on one server (1). Shared names (the hoster's NS addresses,
    the SPF include) are asked once per pass and left out."""
    total = 0
    for i in range(n):
        kind = i % 20
        total += 1 + 2
        if kind < 16:          # nothing published / at the doubled name: probes
            total += 1
        if kind >= 18:         # DKIM right: DMARC and apex on both servers
            total += 4
        if kind == 18:         # ... and DMARC missing: at least one probe
            total += 1
    return total / n


def wire_floor_us(port: int) -> tuple[float, float, int]:
    """Microseconds of CPU to build one query and read its answer, on the answers this
    benchmark gets (NXDOMAIN with SOA, a DKIM TXT, NS at an apex): with the client's
    own codec (``bot/adapters/dnswire.py``: build, match, the records read) and with
    dnspython's messages (``make_query`` + ``to_wire``, ``from_wire``), what the client
    used before. The first is the floor of this client's CPU per query."""
    import dns.flags
    import dns.message
    import dns.name
    import dns.query
    import dns.rdatatype

    from bot.adapters import dnswire

    samples = [("yoyakuban202401._domainkey.ryokan00000.test", "TXT"),
               ("yoyakuban202401._domainkey.ryokan00018.test", "TXT"), ("ryokan00001.test", "NS")]
    wires = []
    for name, rdtype in samples:
        q = dns.message.make_query(name, rdtype, use_edns=0, payload=1232, id=4660)
        q.flags &= ~dns.flags.RD
        wires.append(dns.query.udp(q, "127.0.0.1", port=port, timeout=5).to_wire())
    rounds = 300
    c0 = time.process_time()
    for _ in range(rounds):
        for (name, rdtype), wire in zip(samples, wires):
            qname, value = dns.name.from_text(name), dns.rdatatype.from_text(rdtype)
            labels = dnswire.labels_of(qname)
            dnswire.build_query(4660, qname.to_wire() or b"", value)
            reply = dnswire.read_reply(wire, dnswire.Question(4660, labels, value))
            assert reply is not None
            [reply.value(r) for r in reply.rrset(labels, value)]
    ours = (time.process_time() - c0) / (rounds * len(samples)) * 1e6
    c0 = time.process_time()
    for _ in range(rounds):
        for (name, rdtype), wire in zip(samples, wires):
            q = dns.message.make_query(name, rdtype, use_edns=0, payload=1232)
            q.to_wire()
            dns.message.from_wire(wire)
    theirs = (time.process_time() - c0) / (rounds * len(samples)) * 1e6
    return ours, theirs, rounds * len(samples)


def compare_with_checkdmarc(proxies: ProxyProcess, port: int, domains: list[str], publics: list[str],
                            service: Any) -> dict[str, Any]:
    """checkdmarc's SPF and DMARC checks of ``domains`` one after another, as a user
    would run them, against dkimbot's whole check (DKIM too) one domain at a time,
    both through the same delaying proxies (so at the same delay)."""
    import checkdmarc.dmarc
    import checkdmarc.spf
    import checkdmarc.utils
    import dns.resolver

    from bot.adapters.dnsclient import DnsClient
    from bot.checks.dnscheck import check_domain
    from bot.config import DnsConfig

    if not domains:
        return {}
    # Its module-level cache would answer the second domain's shared names (and a
    # second run) from memory; cleared, and pointed at the test servers only.
    checkdmarc.utils.DNS_CACHE.clear()
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = port
    proxies.ask("reset")
    t0 = time.perf_counter()
    for d in domains:
        checkdmarc.spf.check_spf(d, resolver=resolver)
        checkdmarc.dmarc.check_dmarc(d, resolver=resolver)
    theirs = time.perf_counter() - t0
    their_queries = sum(q for q, _t, _p in proxies.ask("counters")[0])
    proxies.ask("reset")
    client = DnsClient(DnsConfig(nameservers=["127.0.0.1"], port=port, timeout=3.0))
    t0 = time.perf_counter()
    for i, d in enumerate(domains):  # one client, as checkdmarc keeps its cache across domains
        check_domain(client, d, SELECTOR, publics[i % KEY_POOL], service)
    ours = time.perf_counter() - t0
    our_queries = sum(q for q, _t, _p in proxies.ask("counters")[0])
    return {"domains": len(domains), "checkdmarc_seconds": theirs, "checkdmarc_queries": their_queries,
            "dkimbot_seconds": ours, "dkimbot_queries": our_queries}
