"""Shared pytest fixtures. Each group of fixtures sits in its own section below."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import servers` with or without tests/__init__.py

import servers

# =========================================================================== real servers
# Dovecot (IMAP), BIND (authoritative DNS, RFC 2136) and an SMTP sink, on 127.0.0.0/8,
# from tests/servers.py. Session-scoped and lazy: only a session with a test that asks
# for one starts it. A missing binary is a failure, never a skip: CI must not pass
# without the real servers. Mark such tests `@pytest.mark.servers`.
# Shared across the session, so tests keep out of each other's way: a zone name of their
# own (bind.add_zone), a mailbox of their own (dovecot.add_user) or reset(), smtp.clear().

SUPPORT_ADDRESS = "support@489ban.net"
SUPPORT_PASSWORD = "secret"


def _start_server(factory, what: str):
    try:
        return factory()
    except servers.ServerError as exc:
        pytest.fail(f"could not start {what}: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def dovecot():
    """servers.Dovecot with the support mailbox SUPPORT_ADDRESS / SUPPORT_PASSWORD."""
    server = _start_server(lambda: servers.Dovecot(users={SUPPORT_ADDRESS: SUPPORT_PASSWORD}), "Dovecot")
    yield server
    server.close()


@pytest.fixture(scope="session")
def bind():
    """servers.Bind on 127.0.0.1 and 127.0.0.2, same port; add your own zones."""
    server = _start_server(servers.Bind, "BIND")
    yield server
    server.close()


@pytest.fixture(scope="session")
def smtp():
    """servers.SmtpSink accepting everything; call smtp.clear() before use."""
    server = _start_server(servers.SmtpSink, "the SMTP sink")
    yield server
    server.close()

