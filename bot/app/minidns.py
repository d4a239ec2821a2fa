"""A tiny in-process authoritative DNS server on loopback, for ``dkimbot demo``.

The demo must run with no server installed, yet exercise the same code path as
production: real DNS packets, real authoritative lookups (SOA/NS walk, per-server TXT
queries). This serves a few zones from a dict over UDP and TCP on 127.0.0.1. It is not
a general DNS server: no wildcards, no CNAME chasing, no DNSSEC.
"""

from __future__ import annotations

import socket
import socketserver
import struct
import threading
from collections import defaultdict

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset


def _norm(name: str) -> str:
    return name.lower().rstrip(".")


class ZoneData:
    """Records by owner name and type, presentation format (TXT as quoted strings)."""

    def __init__(self) -> None:
        self.zones: set[str] = set()
        self.records: dict[str, dict[str, list[str]]] = defaultdict(dict)
        self.lock = threading.Lock()

    def add_zone(self, zone: str, nameservers: tuple[str, ...] = (), address: str = "127.0.0.1") -> None:
        zone = _norm(zone)
        ns = nameservers or (f"ns1.{zone}",)
        with self.lock:
            self.zones.add(zone)
            self.records[zone]["SOA"] = [f"{ns[0]}. hostmaster.{zone}. 1 3600 600 86400 60"]
            self.records[zone]["NS"] = [f"{n}." for n in ns]
        for n in ns:
            if _norm(n).endswith(zone):
                self.set(n, "A", [address])

    def set(self, name: str, rdtype: str, values: list[str]) -> None:
        with self.lock:
            if values:
                self.records[_norm(name)][rdtype.upper()] = list(values)
            else:
                self.records[_norm(name)].pop(rdtype.upper(), None)

    def set_txt(self, name: str, strings_per_record: list[list[str]]) -> None:
        """Publish TXT records given as the strings a control panel would store."""
        values = [" ".join('"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"' for s in rec)
                  for rec in strings_per_record]
        self.set(name, "TXT", values)

    def zone_of(self, name: str) -> str | None:
        labels = name.split(".")
        for i in range(len(labels)):
            candidate = ".".join(labels[i:])
            if candidate in self.zones:
                return candidate
        return None

    def answer(self, query: dns.message.Message) -> dns.message.Message:
        try:
            return self._answer(query)
        except Exception:  # noqa: BLE001 -- bad zone data must look like a broken server (SERVFAIL), not kill the thread
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.SERVFAIL)
            return response

    def _answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        if not query.question:
            response.set_rcode(dns.rcode.FORMERR)
            return response
        q = query.question[0]
        name = _norm(q.name.to_text())
        rdtype = dns.rdatatype.to_text(q.rdtype)
        with self.lock:
            zone = self.zone_of(name)
            if zone is None:
                response.set_rcode(dns.rcode.REFUSED)
                return response
            response.flags |= dns.flags.AA
            node = self.records.get(name, {})
            values = node.get(rdtype)
            if values:
                response.answer.append(
                    dns.rrset.from_text_list(q.name, 60, dns.rdataclass.IN, rdtype, values)
                )
                return response
            exists = bool(node) or any(n.endswith("." + name) for n, v in self.records.items() if v)
            if not exists:
                response.set_rcode(dns.rcode.NXDOMAIN)
            soa = self.records[zone]["SOA"]
            response.authority.append(
                dns.rrset.from_text_list(dns.name.from_text(zone), 60, dns.rdataclass.IN, "SOA", soa)
            )
        return response


class MiniDns:
    """UDP + TCP server threads on 127.0.0.1:<free port>."""

    def __init__(self, data: ZoneData | None = None, host: str = "127.0.0.1") -> None:
        self.data = data or ZoneData()
        self.host = host
        data_ref = self.data

        class Udp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                wire, sock = self.request
                try:
                    query = dns.message.from_wire(wire)
                except Exception:  # noqa: BLE001 -- not a DNS query: dropped, as a server does
                    return
                response = data_ref.answer(query)
                payload = query.payload if query.edns >= 0 else 512
                out = response.to_wire(max_size=max(512, payload))
                sock.sendto(out, self.client_address)

        class Tcp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                conn: socket.socket = self.request
                try:
                    head = conn.recv(2)
                    if len(head) < 2:
                        return
                    (length,) = struct.unpack("!H", head)
                    wire = b""
                    while len(wire) < length:
                        chunk = conn.recv(length - len(wire))
                        if not chunk:
                            return
                        wire += chunk
                    out = data_ref.answer(dns.message.from_wire(wire)).to_wire()
                    conn.sendall(struct.pack("!H", len(out)) + out)
                except Exception:  # noqa: BLE001 -- the client went away: nothing to answer
                    return

        # Bind UDP first on a free port, then TCP on the same number.
        for _ in range(20):
            udp = socketserver.ThreadingUDPServer((host, 0), Udp)
            port = udp.server_address[1]
            try:
                tcp = socketserver.ThreadingTCPServer((host, port), Tcp, bind_and_activate=False)
                tcp.allow_reuse_address = True
                tcp.server_bind()
                tcp.server_activate()
            except OSError:
                udp.server_close()
                continue
            break
        else:  # pragma: no cover - the machine has no free ports
            raise OSError("no free port for the demo DNS server")
        udp.daemon_threads = tcp.daemon_threads = True
        self.udp, self.tcp, self.port = udp, tcp, port
        self.threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (udp, tcp)]

    def start(self) -> MiniDns:
        for t in self.threads:
            t.start()
        return self

    def stop(self) -> None:
        for s in (self.udp, self.tcp):
            s.shutdown()
            s.server_close()
