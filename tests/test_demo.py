"""``dkimbot demo`` (issue 2, README's first command): the nine steps on the embedded default,
each mail and state change printed, in well under a minute, with no server, nothing left
behind in the working directory."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path


def test_the_demo_plays_every_step_to_completion_without_a_server(tmp_path: Path) -> None:
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "bot", "demo"], cwd=tmp_path,
                       capture_output=True, timeout=60, check=False)
    elapsed = time.monotonic() - t0
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert elapsed < 30, f"the demo took {elapsed:.1f} s"
    headings = re.findall(r"^=== (.*) ===$", out, re.MULTILINE)
    # Numbered as shown: 1, 2, 3, ... each once, in order (no "step 4" twice, no step
    # announced after the mail it describes was printed).
    steps = [int(m.group(1)) for h in headings if (m := re.match(r"step (\d+):", h))]
    assert steps == list(range(1, 10)), steps
    # The third mail (DKIM is active) is printed under the step that announces it.
    third = re.findall(r"Subject: (\[DKIM-\d{4}\] .*)", out)[2]
    announced = out.index("=== step 6:")
    assert "DKIM is active" in out[announced:out.index("\n", announced)]
    assert announced < out.index(third) < out.index("=== step 7:")
    # Every mail it sends is printed: the record, the named mistake, DKIM active, the report.
    subjects = re.findall(r"Subject: (\[DKIM-\d{4}\] .*)", out)
    assert len(subjects) == 4
    assert "設定のご案内" in subjects[0] and "完了しました" in subjects[-1]
    assert "v=DKIM1; k=rsa; p=" in out
    # Each state change is printed, in order, ending completed.
    states = re.findall(r"state: DKIM-\d{4} .* → (\w+)", out)
    assert states[0] == "awaiting_dkim" and "awaiting_dmarc" in states and states[-1] == "completed"
    assert re.search(r"^demo finished: DKIM-\d{4} is completed$", out, re.MULTILINE)
    # The event log: areas a check did not ask (DKIM was still wrong) say so, not "ok=True".
    assert re.search(r"^\s+dmarc\s+skipped \(asked once the DKIM record is right\)$", out, re.MULTILINE)
    assert not re.search(r"dkim\s+ok=False.*\n\s+dmarc\s+ok=True", out)
    assert list(tmp_path.iterdir()) == []  # its temporary directory, not ./state
