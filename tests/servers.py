"""Real servers on loopback for dkimbot's tests: Dovecot, BIND, an SMTP sink, a slow DNS hop.

Plain classes, no pytest: each server lives in a fresh temporary directory, listens on
free unprivileged 127.0.0.0/8 ports, writes its output to files (Dovecot keeps the
starting process's stderr open, so pipes would hang a reader), is polled until it
answers *as itself* (a per-instance token in the greeting / server-id, so a stranger
that grabbed the same port is never mistaken for it) and is stopped by the PID recorded
at start. Nothing here talks to any address outside 127.0.0.0/8.

    dovecot = Dovecot(users={"support@489ban.net": "secret"})
    bind = Bind(); bind.add_zone("hotel-sakura.test")
    bind.update("hotel-sakura.test", "sel._domainkey", "TXT", [[part1, part2]])
    smtp = SmtpSink(); smtp.fail_next(1, 451)

See tests/test_servers.py for each feature in use.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import datetime
import email
import email.policy
import grp
import os
import pwd
import random
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

LOOPBACK = "127.0.0.1"
SECOND_LOOPBACK = "127.0.0.2"  # Linux routes all of 127/8 to lo: a second "host" for free

# Which Debian package brings each binary, for the error message on a bare machine.
_PACKAGES = {
    "dovecot": "dovecot-imapd",
    "named": "bind9",
    "rndc": "bind9",
    "named-checkconf": "bind9-utils",
}


class ServerError(RuntimeError):
    """A test server could not be started, reached or driven."""


def require_binaries(*names: str) -> None:
    """Raise ServerError naming every missing binary and the package that brings it."""
    missing = [n for n in names if _which(n) is None]
    if missing:
        pkgs = sorted({_PACKAGES.get(n, n) for n in missing})
        raise ServerError(
            f"missing server binaries {missing}: install them with "
            f"`apt-get install -y {' '.join(pkgs)}` (.ci/run does this)"
        )


def _which(name: str) -> str | None:
    # /usr/sbin is not on every PATH (a non-root shell, a cron job).
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin:/usr/local/sbin"
    return shutil.which(name, path=path)


# --------------------------------------------------------------------------- ports

_PORT_LOCK = threading.Lock()
_HANDED_OUT: set[int] = set()


def free_port(hosts: Iterable[str] = (LOOPBACK,), *, tcp: bool = True, udp: bool = True) -> int:
    """A port free for TCP and/or UDP on every host in `hosts`.

    Drawn at random below Linux's ephemeral range (32768-60999) so the kernel's own
    outgoing sockets never take it between our check and the server's bind, and never
    handed out twice by this process. Another process can still race us: every server
    here checks that whoever answers on the port is itself, and retries on a new port.
    """
    hosts = tuple(hosts)
    with _PORT_LOCK:
        for _ in range(500):
            port = random.randrange(20000, 32000)
            if port in _HANDED_OUT:
                continue
            if all(_port_is_free(h, port, tcp=tcp, udp=udp) for h in hosts):
                _HANDED_OUT.add(port)
                return port
    raise ServerError("no free loopback port found")


def _port_is_free(host: str, port: int, *, tcp: bool, udp: bool) -> bool:
    kinds = ([socket.SOCK_STREAM] if tcp else []) + ([socket.SOCK_DGRAM] if udp else [])
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as s:
            if kind == socket.SOCK_STREAM:
                # Servers set SO_REUSEADDR, so a TIME_WAIT leftover does not block them.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def _wait_until(predicate, timeout: float, what: str, interval: float = 0.02, alive=None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if alive is not None:
            alive()
        if predicate():
            return
        if time.monotonic() > deadline:
            raise ServerError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def _world_traversable_tmp() -> Path:
    """A temp parent that an unprivileged user can traverse (pytest's and mkdtemp's are 0700)."""
    for candidate in (tempfile.gettempdir(), "/tmp", "/var/tmp"):
        p = Path(candidate)
        try:
            if p.is_dir() and all(q.stat().st_mode & 0o001 for q in [p, *p.parents]):
                return p
        except OSError:
            continue
    raise ServerError("no temporary directory that an unprivileged mail user can reach")


# --------------------------------------------------------------------------- daemons

_LIVE: set[_Daemon] = set()


class _Daemon:
    """One child process in its own process group, output to a file, stopped by its PID."""

    def __init__(self, argv: Sequence[str], log_path: Path, cwd: Path | None = None) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.cwd, start_new_session=True, close_fds=True,
            )
        _LIVE.add(self)

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise ServerError(
                f"{self.argv[0]} exited with status {self.proc.returncode}; "
                f"last lines of {self.log_path}:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        _LIVE.discard(self)
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        # The daemon's own children (Dovecot's imap/auth processes) share its group,
        # which start_new_session made with the daemon's PID as its id.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


@atexit.register
def _stop_leftovers() -> None:
    for daemon in list(_LIVE):
        daemon.stop(timeout=3)


# --------------------------------------------------------------------------- Dovecot


class Dovecot:
    """Dovecot IMAP on 127.0.0.1, plain login without TLS, one Maildir per user.

    Mail is stored as nobody/nogroup (Dovecot refuses root) under a directory in /tmp
    that user can reach. The auth penalty (4-15 s delays after one failed login) is
    disabled, and every start gets a fresh base_dir (a stale one stalled start by 5 s).
    stop() then start() keeps the port, the users and the mail.
    """

    def __init__(self, users: Mapping[str, str] | None = None, *, host: str = LOOPBACK,
                 port: int | None = None, mail_user: str = "nobody", mail_group: str = "nogroup",
                 start: bool = True) -> None:
        require_binaries("dovecot")
        self.host = host
        self.port = port or free_port((host,), udp=False)
        self.users: dict[str, str] = {}
        self._uid = pwd.getpwnam(mail_user).pw_uid
        self._gid = grp.getgrnam(mail_group).gr_gid
        self._mail_user, self._mail_group = mail_user, mail_group
        self.root = Path(tempfile.mkdtemp(prefix="dkimbot-dovecot-", dir=_world_traversable_tmp()))
        self.root.chmod(0o711)
        self.mail_root = self.root / "mail"
        self.mail_root.mkdir()
        os.chown(self.mail_root, self._uid, self._gid)
        self.mail_root.chmod(0o700)
        self.log_path = self.root / "dovecot.log"
        self._token = secrets.token_hex(8)
        self._runs = 0
        self._daemon: _Daemon | None = None
        self.startup_seconds: float | None = None
        self._passwd_dir = self.root / "passwd"
        self._passwd_dir.mkdir()
        for user, password in (users or {}).items():
            self.add_user(user, password)
        if start:
            try:
                self.start()
            except BaseException:
                self.close()
                raise

    # -- lifecycle
    @property
    def pid(self) -> int | None:
        return self._daemon.pid if self._daemon else None

    @property
    def running(self) -> bool:
        return self._daemon is not None

    def start(self) -> Dovecot:
        if self._daemon is not None:
            return self
        t0 = time.monotonic()
        for attempt in range(5):
            self._runs += 1
            conf = self._write_config()
            daemon = _Daemon([_which("dovecot") or "dovecot", "-F", "-c", str(conf)], self.log_path)
            daemon.start()
            try:
                _wait_until(self._greets_as_us, 20, f"Dovecot on {self.host}:{self.port}",
                            alive=daemon.check_alive)
            except ServerError:
                daemon.stop()
                first_start = self.startup_seconds is None  # a restart must keep its port
                if first_start and attempt < 4 and not _port_is_free(self.host, self.port, tcp=True, udp=False):
                    self.port = free_port((self.host,), udp=False)  # someone else took it
                    continue
                raise
            self._daemon = daemon
            self.startup_seconds = time.monotonic() - t0
            return self
        raise ServerError("Dovecot did not start")

    def stop(self) -> None:
        if self._daemon is not None:
            self._daemon.stop()
            self._daemon = None
            _wait_until(lambda: _port_is_free(self.host, self.port, tcp=True, udp=False), 10,
                        "Dovecot's port to close")

    def close(self) -> None:
        """Stop and delete every file (the mail too)."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _greets_as_us(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as s:
                s.settimeout(2)
                return self._token.encode() in s.recv(512)
        except OSError:
            return False

    def _write_config(self) -> Path:
        base_dir = self.root / f"run{self._runs}"  # fresh every start
        conf = self.root / "dovecot.conf"
        conf.write_text(f"""\
base_dir = {base_dir}
state_dir = {self.root}/state
instance_name = dkimbot-test-{self._token}
protocols = imap
listen = {self.host}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
login_greeting = dkimbot test IMAP {self._token} ready
log_path = {self.log_path}
default_internal_user = dovecot
default_login_user = dovenull
first_valid_uid = 1
mail_location = maildir:~/Maildir
mail_fsync = never
mail_max_userip_connections = 200
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self._passwd_dir}/%u
}}
userdb {{
  driver = static
  args = uid={self._mail_user} gid={self._mail_group} home={self.mail_root}/%u
}}
service imap-login {{
  inet_listener imap {{
    address = {self.host}
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
# A failed login (a test of wrong credentials) must not slow every later login down.
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
""")
        (self.root / "state").mkdir(exist_ok=True)
        return conf

    # -- users and mail
    def add_user(self, user: str, password: str) -> None:
        """Add a login, or change its password; usable at once, no restart.

        One passwd-file per user: Dovecot stats a passwd-file at most once a second, so
        a line added to a shared file is unseen for up to a second, while a new file is
        read at its first lookup.
        """
        if "/" in user or ":" in user + password or "\n" in user + password or user.startswith("."):
            raise ValueError("user must not contain '/', ':' or newlines, password no ':' or newlines")
        changed = user in self.users and self.users[user] != password
        self.users[user] = password
        home = self.mail_root / user
        home.mkdir(exist_ok=True)
        os.chown(home, self._uid, self._gid)
        path = self._passwd_dir / user
        tmp = path.with_name(f".{user}.tmp")
        tmp.write_text(f"{user}:{{PLAIN}}{password}::::::\n")
        tmp.chmod(0o644)
        os.replace(tmp, path)
        if changed and self.running:
            _wait_until(lambda: self._can_login(user), 5, f"Dovecot to see the new password of {user}", 0.1)

    def _can_login(self, user: str) -> bool:
        try:
            self.client(user).logout()
            return True
        except Exception:
            return False

    def client(self, user: str):
        """A logged-in imapclient.IMAPClient for `user` (the caller logs out)."""
        import imapclient

        c = imapclient.IMAPClient(self.host, port=self.port, ssl=False, timeout=10)
        c.login(user, self.users[user])
        return c

    def append(self, user: str, raw: bytes, flags: Iterable[str] = (), folder: str = "INBOX") -> int | None:
        """Store a message in the user's folder; returns its UID (from APPENDUID)."""
        c = self.client(user)
        try:
            resp = c.append(folder, raw, flags=tuple(flags))
        finally:
            c.logout()
        m = re.search(rb"APPENDUID \d+ (\d+)", resp if isinstance(resp, bytes) else str(resp).encode())
        return int(m.group(1)) if m else None

    def fetch_all(self, user: str, folder: str = "INBOX") -> list[tuple[int, tuple[str, ...], bytes]]:
        """Every message as (uid, flags, raw bytes), by UID; read-only, sets no flag.

        Flags are str ("\\Seen", "$dkimbot", ...); the per-session \\Recent is left out.
        """
        c = self.client(user)
        try:
            c.select_folder(folder, readonly=True)
            uids = c.search("ALL")
            data = c.fetch(uids, ["FLAGS", "BODY.PEEK[]"]) if uids else {}
        finally:
            c.logout()
        return [
            (uid, tuple(f for f in map(_flag_text, d[b"FLAGS"]) if f != "\\Recent"), d[b"BODY[]"])
            for uid, d in sorted(data.items())
        ]

    def uidvalidity(self, user: str, folder: str = "INBOX") -> int:
        c = self.client(user)
        try:
            return int(c.folder_status(folder, [b"UIDVALIDITY"])[b"UIDVALIDITY"])
        finally:
            c.logout()

    def reset(self, user: str | None = None) -> None:
        """Empty INBOX and delete other folders, for one user or all (UIDs keep growing)."""
        for u in [user] if user else list(self.users):
            c = self.client(u)
            try:
                for _flags, _delim, name in c.list_folders():
                    if name.upper() != "INBOX":
                        c.delete_folder(name)
                c.select_folder("INBOX")
                uids = c.search("ALL")
                if uids:
                    c.delete_messages(uids)
                    c.expunge()
            finally:
                c.logout()


def _flag_text(flag: bytes | str) -> str:
    return flag.decode() if isinstance(flag, bytes) else str(flag)


# --------------------------------------------------------------------------- BIND

TSIG_KEY_NAME = "dkimbot-test-key."


class _NamedInstance:
    """One `named -g` process: authoritative only, zones added at run time over rndc."""

    def __init__(self, root: Path, listen_port: int, tsig_secret: str, token: str) -> None:
        self.dir = root
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "zones").mkdir(exist_ok=True)
        self.port = listen_port
        self.rndc_port = free_port((LOOPBACK,), udp=False)
        self.token = token
        self.tsig_secret = tsig_secret
        self.rndc_secret = base64.b64encode(secrets.token_bytes(32)).decode()
        self.log_path = self.dir / "named.log"
        self.daemon: _Daemon | None = None

    def write_config(self) -> None:
        keys = f"""\
key "{TSIG_KEY_NAME.rstrip('.')}" {{ algorithm hmac-sha256; secret "{self.tsig_secret}"; }};
key "rndc-key" {{ algorithm hmac-sha256; secret "{self.rndc_secret}"; }};
"""
        (self.dir / "named.conf").write_text(keys + f"""\
controls {{ inet 127.0.0.1 port {self.rndc_port} allow {{ 127.0.0.1; }} keys {{ "rndc-key"; }}; }};
options {{
    directory "{self.dir}";
    pid-file "{self.dir}/named.pid";
    session-keyfile "{self.dir}/session.key";
    managed-keys-directory "{self.dir}";
    listen-on port {self.port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    interface-interval 0;
    recursion no;
    dnssec-validation no;
    notify no;
    allow-new-zones yes;
    allow-transfer {{ any; }};
    server-id "{self.token}";
    // Test zones hold what real facilities publish, junk included: check nothing.
    check-names primary ignore;
    check-names secondary ignore;
    check-names response ignore;
    check-integrity no;
    check-mx ignore;
    check-mx-cname ignore;
    check-srv-cname ignore;
    check-sibling no;
    check-wildcard no;
    check-dup-records ignore;
    check-spf ignore;
}};
""")
        (self.dir / "rndc.conf").write_text(f"""\
key "rndc-key" {{ algorithm hmac-sha256; secret "{self.rndc_secret}"; }};
options {{ default-key "rndc-key"; default-server 127.0.0.1; default-port {self.rndc_port}; }};
""")

    def start(self) -> None:
        self.write_config()
        self.daemon = _Daemon(
            [_which("named") or "named", "-g", "-4", "-n", "1", "-c", str(self.dir / "named.conf")],
            self.log_path, cwd=self.dir,
        )
        self.daemon.start()

    def wait_ready(self, timeout: float = 20) -> None:
        assert self.daemon is not None
        _wait_until(self._answers_as_us, timeout, f"named on 127.0.0.1:{self.port}",
                    interval=0.05, alive=self.daemon.check_alive)

    def _answers_as_us(self) -> bool:
        import dns.message
        import dns.query

        q = dns.message.make_query("id.server.", "TXT", "CH")
        try:
            r = dns.query.udp(q, LOOPBACK, port=self.port, timeout=0.3)
        except Exception:
            return False
        return any(self.token.encode() in s for rrset in r.answer for rd in rrset for s in rd.strings)

    def rndc(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [_which("rndc") or "rndc", "-c", str(self.dir / "rndc.conf"), *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
            self.daemon = None


def _rndc_wait(procs: Iterable[subprocess.Popen], what: str) -> None:
    for p in procs:
        out, _ = p.communicate(timeout=30)
        if p.returncode != 0:
            raise ServerError(f"rndc {what} failed: {out.decode(errors='replace').strip()}")


class Bind:
    """Authoritative BIND 9 on 127.0.0.1 and 127.0.0.2, same port, zones added at run time.

    Two independent `named` processes, one per address in `addresses`, each with its
    own copy of every zone, so a test can make one name server lack a record
    (`update(..., servers=["127.0.0.1"])`). named only listens on addresses configured
    on an interface and lo has only 127.0.0.1, so the second process listens on another
    port of 127.0.0.1 and an in-process forwarder answers on 127.0.0.2:`port` for it.

    Clients use `host`/`port` as their resolver; a zone's NS names resolve (A records
    in the zone, or in a host zone added for an out-of-zone NS name) to one of
    `addresses`, where the same `port` reaches that server directly. Names outside every
    served zone get REFUSED, as from a real authoritative-only server.
    """

    def __init__(self, *, addresses: Sequence[str] = (LOOPBACK, SECOND_LOOPBACK), start: bool = True) -> None:
        require_binaries("named", "rndc")
        if not addresses or addresses[0] != LOOPBACK:
            raise ValueError("addresses must start with 127.0.0.1")
        self.addresses = tuple(addresses)
        self.host = LOOPBACK
        self.port = free_port(self.addresses)
        self.root = Path(tempfile.mkdtemp(prefix="dkimbot-bind-"))
        self.tsig_secret = base64.b64encode(secrets.token_bytes(32)).decode()
        self.tsig_key_name = TSIG_KEY_NAME
        self._token = secrets.token_hex(8)
        self._instances: dict[str, _NamedInstance] = {}
        for i, addr in enumerate(self.addresses):
            port = self.port if addr == LOOPBACK else free_port((LOOPBACK,))
            self._instances[addr] = _NamedInstance(self.root / f"ns{i + 1}", port, self.tsig_secret,
                                                   f"{self._token}-{i + 1}")
        self._forwarders: dict[str, DelayingDnsProxy] = {}
        self.zones: dict[str, tuple[str, ...]] = {}  # zone -> addresses of the servers carrying it
        self.timings: dict[str, float] = {}
        self._lock = threading.RLock()
        self._running = False
        if start:
            try:
                self.start()
            except BaseException:
                self.close()
                raise

    # -- lifecycle
    @property
    def pids(self) -> dict[str, int | None]:
        return {a: (i.daemon.pid if i.daemon else None) for a, i in self._instances.items()}

    def start(self) -> Bind:
        if self._running:
            return self
        t0 = time.monotonic()
        for attempt in range(5):
            try:
                self._start_once()
                break
            except ServerError:
                self._stop_processes()
                taken = not all(_port_is_free(a, self.port, tcp=True, udp=True) for a in self.addresses)
                if attempt == 4 or not taken or self.zones:
                    raise
                self._choose_new_ports()
        self._running = True
        self.timings["startup"] = time.monotonic() - t0
        return self

    def _choose_new_ports(self) -> None:
        self.port = free_port(self.addresses)
        for addr, inst in self._instances.items():
            inst.port = self.port if addr == LOOPBACK else free_port((LOOPBACK,))
            inst.rndc_port = free_port((LOOPBACK,), udp=False)

    def _start_once(self) -> None:
        for inst in self._instances.values():
            inst.start()
        for inst in self._instances.values():
            inst.wait_ready()
        for addr, inst in self._instances.items():
            if addr != LOOPBACK:
                self._forwarders[addr] = DelayingDnsProxy(LOOPBACK, inst.port, delay=0, host=addr, port=self.port)
        # Zones survive a restart (named keeps rndc-added zones in its NZD, and updates
        # in journals); wait until each is loaded again.
        for zone, servers in self.zones.items():
            for addr in servers:
                self._wait_zone(zone, addr)

    def _stop_processes(self) -> None:
        for fwd in self._forwarders.values():
            fwd.stop()
        self._forwarders.clear()
        for inst in self._instances.values():
            inst.stop()

    def stop(self) -> None:
        self._stop_processes()
        self._running = False

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- zones
    def add_zone(self, zone: str, nameservers: Sequence[str] | Mapping[str, str] | None = None, *,
                 servers: Iterable[str] | None = None, ttl: int = 300) -> None:
        """Serve `zone` (SOA, NS, and A records for in-zone NS names).

        nameservers: NS host names (default `ns1.<zone>`), given the addresses in turn
        (ns1 -> 127.0.0.1, ns2 -> 127.0.0.2), or a {name: address} mapping. An NS name
        outside the zone gets its A record in the served zone containing it, else in a
        zone of its own. servers: which of `addresses` carry the zone (default: all), so
        a test can make a listed name server lame (REFUSED).
        """
        zone = _norm(zone)
        with self._lock:
            if zone in self.zones:
                raise ServerError(f"zone {zone} is already served")
            t0 = time.monotonic()
            if nameservers is None:
                nameservers = (f"ns1.{zone}",)
            if isinstance(nameservers, Mapping):
                ns = {_norm(n): a for n, a in nameservers.items()}
            else:
                ns = {_norm(n): self.addresses[i % len(self.addresses)] for i, n in enumerate(nameservers)}
            carriers = tuple(servers) if servers is not None else self.addresses
            unknown = set(carriers) - set(self.addresses)
            if unknown:
                raise ValueError(f"servers {sorted(unknown)} not in {self.addresses}")
            lines = [
                f"$TTL {ttl}",
                f"{zone}. IN SOA {next(iter(ns))}. hostmaster.{zone}. 1 3600 600 86400 60",
                *(f"{zone}. IN NS {n}." for n in ns),
                *(f"{n}. IN A {a}" for n, a in ns.items() if _within(n, zone)),
            ]
            text = "\n".join(lines) + "\n"
            fname = f"{zone}.db"
            for addr in carriers:
                (self._instances[addr].dir / "zones" / fname).write_text(text)
            conf = f'{{ type primary; file "zones/{fname}"; allow-update {{ key "{TSIG_KEY_NAME.rstrip(".")}"; }}; }};'
            _rndc_wait([self._instances[a].rndc("addzone", zone, conf) for a in carriers], f"addzone {zone}")
            for addr in carriers:
                self._wait_zone(zone, addr)
            self.zones[zone] = carriers
            for n, a in ns.items():
                if not _within(n, zone):
                    self._ensure_host(n, a)
            self.timings["add_zone"] = time.monotonic() - t0

    def _ensure_host(self, name: str, address: str) -> None:
        parent = self._zone_of(name)
        if parent is None:
            self.add_zone(name, {name: address})
        else:
            self.update(parent, name + ".", "A", [address])

    def remove_zone(self, zone: str) -> None:
        zone = _norm(zone)
        with self._lock:
            carriers = self.zones.pop(zone)
            _rndc_wait([self._instances[a].rndc("delzone", "-clean", zone) for a in carriers], f"delzone {zone}")

    def _zone_of(self, name: str) -> str | None:
        matches = [z for z in self.zones if _within(name, z)]
        return max(matches, key=len) if matches else None

    def _wait_zone(self, zone: str, addr: str) -> None:
        import dns.message
        import dns.query
        import dns.rcode

        inst = self._instances[addr]

        def loaded() -> bool:
            try:
                r = dns.query.udp(dns.message.make_query(zone + ".", "SOA"), LOOPBACK, port=inst.port, timeout=0.5)
            except Exception:
                return False
            return r.rcode() == dns.rcode.NOERROR and bool(r.answer)

        _wait_until(loaded, 10, f"zone {zone} on {addr}", interval=0.005)

    # -- records
    def _name(self, zone: str, name: str):
        import dns.name

        if name in ("@", "", zone, zone + "."):
            return dns.name.from_text(zone + ".")
        if name.endswith(".") or _within(_norm(name), zone):
            return dns.name.from_text(_norm(name) + ".")
        return dns.name.from_text(name, origin=dns.name.from_text(zone + "."))

    def _rdataset(self, rdtype: str, values: Sequence[Any], ttl: int):
        import dns.name
        import dns.rdata
        import dns.rdataclass
        import dns.rdataset
        import dns.rdatatype
        from dns.rdtypes.ANY.TXT import TXT

        rdt = dns.rdatatype.from_text(rdtype) if isinstance(rdtype, str) else rdtype
        rds = dns.rdataset.Rdataset(dns.rdataclass.IN, rdt, ttl=ttl)
        for v in values:
            if rdt == dns.rdatatype.TXT:
                strings = [v] if isinstance(v, (str, bytes)) else list(v)
                # Exactly as given: quotes, spaces and backslashes are the record's bytes.
                rds.add(TXT(dns.rdataclass.IN, rdt, [s.encode() if isinstance(s, str) else s for s in strings]))
            else:
                # Presentation format; every name in it is absolute (trailing dot optional).
                rds.add(dns.rdata.from_text(dns.rdataclass.IN, rdt, v, origin=dns.name.root, relativize=False))
        return rds

    def update(self, zone: str, name: str, rdtype: str, values: Sequence[Any], ttl: int = 300, *,
               servers: Iterable[str] | None = None) -> None:
        """Replace the rrset (name, rdtype) by `values` over RFC 2136 with the TSIG key.

        name: relative to the zone ("sel._domainkey", "@"), or absolute (ends with "." or
        with the zone). TXT values: one entry per record, each a str (one string) or a
        list of str (several strings), sent exactly as given. Other types: presentation
        text. servers: which of `addresses` get it (default: every server carrying the zone).
        """
        zone = _norm(zone)
        rds = self._rdataset(rdtype, values, ttl)
        self._send_update(zone, servers, lambda u: u.replace(self._name(zone, name), rds))

    def add(self, zone: str, name: str, rdtype: str, values: Sequence[Any], ttl: int = 300, *,
            servers: Iterable[str] | None = None) -> None:
        """Like update(), but adds to the rrset instead of replacing it."""
        zone = _norm(zone)
        rds = self._rdataset(rdtype, values, ttl)
        self._send_update(zone, servers, lambda u: u.add(self._name(zone, name), rds))

    def delete(self, zone: str, name: str, rdtype: str | None = None, *, servers: Iterable[str] | None = None) -> None:
        """Delete the rrset (name, rdtype), or every rrset at name when rdtype is None."""
        zone = _norm(zone)
        args = (rdtype,) if rdtype else ()
        self._send_update(zone, servers, lambda u: u.delete(self._name(zone, name), *args))

    def _send_update(self, zone: str, servers: Iterable[str] | None, fill) -> None:
        import dns.query
        import dns.rcode
        import dns.tsig
        import dns.tsigkeyring
        import dns.update

        if zone not in self.zones:
            raise ServerError(f"zone {zone} is not served (add_zone first)")
        targets = tuple(servers) if servers is not None else self.zones[zone]
        keyring = dns.tsigkeyring.from_text({TSIG_KEY_NAME: self.tsig_secret})
        t0 = time.monotonic()
        for addr in targets:
            if addr not in self.zones[zone]:
                raise ServerError(f"{addr} does not carry zone {zone}")
            upd = dns.update.UpdateMessage(zone + ".", keyring=keyring, keyname=TSIG_KEY_NAME,
                                           keyalgorithm=dns.tsig.HMAC_SHA256)
            fill(upd)
            r = dns.query.tcp(upd, LOOPBACK, port=self._instances[addr].port, timeout=5)
            if r.rcode() != dns.rcode.NOERROR:
                raise ServerError(f"update of {zone} on {addr} failed: {dns.rcode.to_text(r.rcode())}")
        self.timings["update"] = time.monotonic() - t0

    # -- clients
    def query(self, name: str, rdtype: str = "TXT", *, address: str = LOOPBACK, tcp: bool = False, timeout: float = 3):
        """One direct query to one of `addresses` at `port`; the dns.message.Message answer."""
        import dns.message
        import dns.query

        q = dns.message.make_query(name if name.endswith(".") else name + ".", rdtype)
        send = dns.query.tcp if tcp else dns.query.udp
        return send(q, address, port=self.port, timeout=timeout)

    def txt(self, name: str, *, address: str = LOOPBACK) -> list[list[bytes]]:
        """The TXT records at `name` on one server, each as its list of strings."""
        r = self.query(name, "TXT", address=address)
        return sorted(list(rd.strings) for rrset in r.answer for rd in rrset)

    def resolver(self):
        """A dnspython Resolver that asks this server and nothing else."""
        import dns.resolver

        res = dns.resolver.Resolver(configure=False)
        res.nameservers = [self.host]
        res.port = self.port
        res.timeout = res.lifetime = 3
        res.cache = None
        return res


def _norm(name: str) -> str:
    return name.strip().rstrip(".").lower()


def _within(name: str, zone: str) -> bool:
    name, zone = _norm(name), _norm(zone)
    return name == zone or name.endswith("." + zone)


# --------------------------------------------------------------------------- SMTP


@dataclass
class ReceivedMessage:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    peer: Any = None

    @property
    def message(self) -> email.message.EmailMessage:
        return email.message_from_bytes(self.raw, policy=email.policy.default)  # type: ignore[return-value]


@dataclass
class _Failure:
    code: int
    text: str
    stage: str  # "rcpt" | "data"


_DEFAULT_TEXT = {4: "4.3.0 Temporary failure (scripted by the test)", 5: "5.7.1 Rejected (scripted by the test)"}


def _reply(code: int, text: str | None) -> str:
    return f"{code} {text or _DEFAULT_TEXT.get(code // 100, 'Scripted reply')}"


class _SinkHandler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.sink._take_failure("rcpt", envelope.mail_from, [address])
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        reply = self.sink._take_failure("data", envelope.mail_from, list(envelope.rcpt_tos), envelope.content)
        if reply:
            return reply
        with self.sink._lock:
            self.sink.messages.append(ReceivedMessage(envelope.mail_from, list(envelope.rcpt_tos),
                                                      bytes(envelope.content), session.peer))
        return "250 Message accepted"


class SmtpSink:
    """An aiosmtpd SMTP server on 127.0.0.1 that keeps what it receives.

    fail_with: None (accept), or an SMTP code (451, 550, ...) or "code text" to refuse
    every message at end of DATA until changed. fail_next(n, code) refuses only the next
    n. credentials={"user": "pw"} requires AUTH; starttls=True offers STARTTLS with a
    self-signed certificate (its PEM in `cafile`).
    """

    def __init__(self, fail_with: int | str | None = None, *, host: str = LOOPBACK, port: int | None = None,
                 credentials: Mapping[str, str] | None = None, starttls: bool = False, start: bool = True) -> None:
        self.host = host
        self.port = port or free_port((host,), udp=False)
        self.fail_with = fail_with
        self.credentials = dict(credentials) if credentials else None
        self.messages: list[ReceivedMessage] = []
        self.rejected: list[tuple[int, str, list[str]]] = []  # (code, mail_from, rcpts)
        self._planned: list[_Failure] = []
        self._lock = threading.Lock()
        self._controller = None
        self._started_once = False
        self.cafile: Path | None = None
        self._tls_context = self._make_tls_context() if starttls else None
        if start:
            try:
                self.start()
            except BaseException:
                self.close()
                raise

    def start(self) -> SmtpSink:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult

        if self._controller is not None:
            return self

        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = (self.credentials is not None
                  and self.credentials.get(auth_data.login.decode()) == auth_data.password.decode())
            return AuthResult(success=ok, handled=False)

        kwargs: dict[str, Any] = dict(enable_SMTPUTF8=True, ready_timeout=10, server_hostname="localhost")
        if self.credentials is not None:
            kwargs.update(authenticator=authenticator, auth_required=True,
                          auth_require_tls=self._tls_context is not None)
        if self._tls_context is not None:
            kwargs.update(tls_context=self._tls_context)
        for attempt in range(5):
            controller = Controller(_SinkHandler(self), hostname=self.host, port=self.port, **kwargs)
            try:
                controller.start()
            except Exception:
                if attempt == 4 or self._started_once:  # a restart must keep its port
                    raise
                self.port = free_port((self.host,), udp=False)
                continue
            self._started_once = True
            self._controller = controller
            return self
        raise ServerError("SMTP sink did not start")

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def close(self) -> None:
        """Stop and delete the certificate files."""
        self.stop()
        if self.cafile is not None:
            shutil.rmtree(self.cafile.parent, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def clear(self) -> None:
        """Forget received and rejected messages, planned failures and fail_with."""
        with self._lock:
            self.messages.clear()
            self.rejected.clear()
            self._planned.clear()
            self.fail_with = None

    def fail_next(self, count: int = 1, code: int = 451, text: str | None = None, *, stage: str = "data") -> None:
        """Refuse the next `count` messages with `code` at end of DATA (or at RCPT TO)."""
        if stage not in ("rcpt", "data"):
            raise ValueError("stage is 'rcpt' or 'data'")
        with self._lock:
            self._planned.extend(_Failure(code, text or "", stage) for _ in range(count))

    def wait_for(self, count: int, timeout: float = 10) -> list[ReceivedMessage]:
        _wait_until(lambda: len(self.messages) >= count, timeout, f"{count} messages at the SMTP sink")
        return list(self.messages)

    def _take_failure(self, stage: str, mail_from: str, rcpts: list[str], content: bytes | None = None) -> str | None:
        with self._lock:
            if self._planned and self._planned[0].stage == stage:
                f = self._planned.pop(0)
                self.rejected.append((f.code, mail_from, rcpts))
                return _reply(f.code, f.text)
            if stage == "data" and self.fail_with is not None:
                code, _, text = str(self.fail_with).partition(" ")
                self.rejected.append((int(code), mail_from, rcpts))
                return _reply(int(code), text)
        return None

    def _make_tls_context(self) -> ssl.SSLContext:
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address(self.host))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256())
        )
        d = Path(tempfile.mkdtemp(prefix="dkimbot-smtp-"))
        (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (d / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
        self.cafile = d / "cert.pem"
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(d / "cert.pem", d / "key.pem")
        return ctx


# --------------------------------------------------------------------------- DNS proxy


class DelayingDnsProxy:
    """A DNS forwarder on loopback that answers every query `delay` seconds late.

    UDP and TCP, each query handled concurrently on its own upstream socket, so
    hundreds can be in flight at once. Counts `queries` and `peak_in_flight` (the most
    upstream sockets open at once). `mode`: "forward", "drop" (never answer: a timeout)
    or "servfail". `delay` and `mode` can be changed while it runs.
    """

    def __init__(self, upstream_host: str, upstream_port: int, delay: float = 0.05, *, host: str = LOOPBACK,
                 port: int | None = None, mode: str = "forward", upstream_timeout: float = 5.0,
                 start: bool = True) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.delay = delay
        self.mode = mode
        self.host = host
        self.port = port
        self._fixed_port = port is not None
        self.upstream_timeout = upstream_timeout
        self.queries = 0
        self.tcp_queries = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._udp = None
        self._tcp = None
        if start:
            self.start()

    def reset_counters(self) -> None:
        self.queries = self.tcp_queries = self.peak_in_flight = 0

    def start(self) -> DelayingDnsProxy:
        if self._loop is not None:
            return self
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="DelayingDnsProxy", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        for attempt in range(5):
            if self.port is None:
                self.port = free_port((self.host,))
            try:
                asyncio.run_coroutine_threadsafe(self._listen(), loop).result(10)
                return self
            except OSError:
                if self._fixed_port or attempt == 4:
                    self.stop()
                    raise
                self.port = None
        return self

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        proxy = self

        class Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport):
                self.transport = transport

            def datagram_received(self, data, addr):
                loop.create_task(proxy._answer_udp(self.transport, data, addr))

        self._udp, _ = await loop.create_datagram_endpoint(Udp, local_addr=(self.host, self.port))
        try:
            self._tcp = await asyncio.start_server(self._serve_tcp, self.host, self.port, reuse_address=True)
        except OSError:
            self._udp.close()
            self._udp = None
            raise

    def stop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is None:
            return

        async def close() -> None:
            if self._udp is not None:
                self._udp.close()
            if self._tcp is not None:
                self._tcp.close()
                await self._tcp.wait_closed()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        try:
            asyncio.run_coroutine_threadsafe(close(), loop).result(10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            if self._thread is not None:
                self._thread.join(10)
            loop.close()
            self._udp = self._tcp = None

    close = stop

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _enter(self) -> None:
        self.queries += 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def _servfail(self, data: bytes) -> bytes | None:
        import dns.message
        import dns.rcode

        try:
            r = dns.message.make_response(dns.message.from_wire(data))
        except Exception:
            return None
        r.set_rcode(dns.rcode.SERVFAIL)
        return r.to_wire()

    async def _answer_udp(self, transport, data: bytes, addr) -> None:
        self._enter()
        try:
            await asyncio.sleep(self.delay)
            if self.mode == "drop":
                return
            if self.mode == "servfail":
                answer = self._servfail(data)
            else:
                answer = await self._ask_upstream_udp(data)
            if answer is not None and not transport.is_closing():
                transport.sendto(answer, addr)
        finally:
            self.in_flight -= 1

    async def _ask_upstream_udp(self, data: bytes) -> bytes | None:
        loop = asyncio.get_running_loop()
        got: asyncio.Future[bytes] = loop.create_future()

        class Upstream(asyncio.DatagramProtocol):
            def datagram_received(self, d, addr):
                if not got.done():
                    got.set_result(d)

            def error_received(self, exc):
                if not got.done():
                    got.set_exception(exc)

        transport, _ = await loop.create_datagram_endpoint(Upstream, remote_addr=self.upstream)
        try:
            transport.sendto(data)
            return await asyncio.wait_for(got, self.upstream_timeout)
        except (TimeoutError, OSError):
            return None
        finally:
            transport.close()

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readexactly(2)
                data = await reader.readexactly(int.from_bytes(head, "big"))
                self._enter()
                self.tcp_queries += 1
                try:
                    await asyncio.sleep(self.delay)
                    if self.mode == "drop":
                        continue
                    if self.mode == "servfail":
                        answer = self._servfail(data)
                    else:
                        answer = await self._ask_upstream_tcp(data)
                finally:
                    self.in_flight -= 1
                if answer is None:
                    break
                writer.write(len(answer).to_bytes(2, "big") + answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _ask_upstream_tcp(self, data: bytes) -> bytes | None:
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection(*self.upstream), self.upstream_timeout)
        except (TimeoutError, OSError):
            return None
        try:
            w.write(len(data).to_bytes(2, "big") + data)
            await w.drain()
            head = await asyncio.wait_for(r.readexactly(2), self.upstream_timeout)
            return await asyncio.wait_for(r.readexactly(int.from_bytes(head, "big")), self.upstream_timeout)
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            return None
        finally:
            w.close()


class UdpResponder:
    """A loopback UDP peer that answers each datagram with what ``reply(wire)`` returns:
    a list of datagrams (none is silence, several a flood). The tests' stand-ins for odd
    DNS servers (refusing, pre-EDNS, lying) build on it."""

    def __init__(self, reply: Callable[[bytes], list[bytes]], host: str = LOOPBACK) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.port = self.sock.getsockname()[1]
        self.reply = reply
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                wire, peer = self.sock.recvfrom(65535)
            except OSError:
                return
            for datagram in self.reply(wire):
                self.sock.sendto(datagram, peer)

    def close(self) -> None:
        self.sock.close()
