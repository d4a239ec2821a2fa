"""Keys: generation time per algorithm, and one key per domain however many facilities.

Generation goes through ``bot.adapters.keys.generate_private_key`` (what the key store calls).
The sharing check feeds two real request mails, two facilities of one domain, through
``jobs.process_message`` and counts the generations (a counting wrapper around the
generator, installed only here) and the keys stored.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from common import Sizes, request_mail

ALGORITHMS = {"rsa1024": ("rsa", 1024), "rsa2048": ("rsa", 2048), "rsa3072": ("rsa", 3072),
              "rsa4096": ("rsa", 4096), "ed25519": ("ed25519", 256)}


def run(sizes: Sizes, work: Path) -> dict[str, Any]:
    import bot.adapters.keys
    from bot.config import load_config
    from bot.app.jobs import Bot, process_message

    generate_ms: dict[str, float] = {}
    for name, (alg, bits) in ALGORITHMS.items():
        n = sizes.key_repeats[name]
        t0 = time.perf_counter()
        for _ in range(n):
            bot.adapters.keys.generate_private_key(alg, bits)
        generate_ms[name] = (time.perf_counter() - t0) / n * 1000

    # Two facilities of one domain (two request mails), one domain: one key.
    cfg_path = work / "keys.toml"
    cfg_path.write_text(f"""
[dns]
nameservers = ["127.0.0.1"]
port = 9
timeout = 0.2

[state]
dir = "{work / 'state'}"
""")
    cfg = load_config(cfg_path)
    real = bot.adapters.keys.generate_private_key
    made: list[str] = []

    def counting(algorithm: str, bits: int = 2048) -> Any:
        made.append(f"{algorithm}{bits}")
        return real(algorithm, bits)

    bot.adapters.keys.generate_private_key = counting
    # No DNS answers here (the reply says so and goes on); keep the table readable.
    logging.getLogger("dkimbot").setLevel(logging.ERROR)
    domain = "ryokan-shared.test"
    b = Bot.open(cfg)
    try:
        outcomes = [process_message(b, f"bench:{i}", request_mail(domain, name, i))
                    for i, name in enumerate(("ホテルさくら 本館", "ホテルさくら 別館"))]
        stored = b.store.domain_keys(domain)
        cases = [c for c in b.store.list_cases() if c.domain == domain]
    finally:
        bot.adapters.keys.generate_private_key = real
        b.close()
    return {
        "generate_ms": generate_ms, "repeats": dict(sizes.key_repeats),
        "shared_generated": len(made), "shared_stored": len(stored), "shared_cases": len(cases),
        "shared_selectors": sorted({c.selector or "" for c in cases}), "outcomes": outcomes,
        "target_met": len(made) == 1 and len(stored) == 1 and len(cases) == 2,
    }
