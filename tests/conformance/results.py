"""What every conformance suite runner returns, and the line `.ci/run` prints for it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SuiteResult:
    name: str                     # e.g. "SPF rfc7208"
    total: int
    passed: int                   # cases where dkimbot agrees with the suite
    deviations: dict[str, str] = field(default_factory=dict)  # case id -> why we differ on purpose
    failures: list[str] = field(default_factory=list)         # case id: what we got (must be empty)
    note: str = ""

    @property
    def line(self) -> str:
        extra = f" ({len(self.deviations)} deliberate deviations)" if self.deviations else ""
        failed = f", {len(self.failures)} FAILED" if self.failures else ""
        note = f"; {self.note}" if self.note else ""
        return f"{self.name}: {self.passed}/{self.total}{extra}{failed}{note}"
