"""signertables.signing_keys reads only the lines that can name the domain's keys; its
answer must be the one of reading every line (pure, randomised tables: mixed case,
comments, duplicates, other domains, keys shared between domains)."""

from __future__ import annotations

import random

from bot.core.signertables import InstalledKey, entries, parse_keytable, signing_keys


def _every_line(keytable: str, signingtable: str, domain: str) -> list[InstalledKey]:
    table = parse_keytable(keytable)
    pattern = f"*@{domain.lower()}"
    found: list[InstalledKey] = []
    for pat, keyname in entries(signingtable):
        entry = table.get(keyname.lower())
        if pat.lower() == pattern and entry is not None and entry not in found:
            found.append(entry)
    return found


def _case(rng: random.Random, text: str) -> str:
    return "".join(c.upper() if rng.random() < 0.3 else c for c in text)


def test_the_same_keys_as_reading_every_line():
    rng = random.Random(16)
    domains = [f"ryokan{i}.test" for i in range(6)] + ["a.ryokan1.test", "ryokan1.test.example"]
    with_keys = 0
    for _ in range(300):
        keys, signs = [], []
        for _ in range(rng.randint(0, 25)):
            d, sel = rng.choice(domains), rng.choice(["s1", "s2", "y2026"])
            name = f"{sel}._domainkey.{rng.choice(domains) if rng.random() < 0.2 else d}"
            keys.append(f"{_case(rng, name)} {_case(rng, d)}:{sel}:/keys/{d}/{sel}.pem"
                        + (" # old" if rng.random() < 0.1 else ""))
            if rng.random() < 0.8:
                signs.append(f"{_case(rng, '*@' + d)}\t{_case(rng, name)}")
            if rng.random() < 0.1:
                signs.append(f"# *@{d} {name}")
        rng.shuffle(signs)
        keytable, signingtable = "\n".join(keys), "\n".join(signs)
        for d in domains:
            expected = _every_line(keytable, signingtable, d)
            assert signing_keys(keytable, signingtable, d) == expected
            with_keys += bool(expected)
    assert with_keys > 500  # the tables did name keys


def test_a_domain_without_keys_has_none():
    assert signing_keys("s._domainkey.a.test a.test:s:/k.pem\n", "*@a.test s._domainkey.a.test\n", "b.test") == []
