"""``--log-format json``: one JSON object per line for log shippers (journald → Loki,
Vector, Fluent Bit), with the fields of the text lines and nothing more.

A text line is ``<time> <level> <message>``; the object is ``{"time", "level",
"message"}``, plus ``"case"`` when the message is about one case (it starts with its
reference, as the bot's case log lines do) and ``"traceback"`` when the text line would
have one. The messages are the text lines' own: the bot already keeps mail addresses,
names and key material out of them, and the JSON form adds no record attribute (no
arguments, no paths of the caller, no process environment).
"""

from __future__ import annotations

import io
import json
import logging
import re
from datetime import UTC, datetime
from typing import TextIO

_CASE = re.compile(r"^(DKIM-\d{4,})\b")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, str] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "message": message,
        }
        case = _CASE.match(message)
        if case:
            entry["case"] = case.group(1)
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class JsonStderr(io.TextIOBase):
    """stderr for ``--log-format json``: the command's own one-line messages (``print(...,
    file=sys.stderr)``: "dkimbot: SMTP … unreachable") become objects of the same shape,
    so a shipper reading the stream never meets a line that is not JSON. Lines that
    already are objects (from JsonFormatter's handler, if it writes here) pass through."""

    def __init__(self, target: TextIO) -> None:
        super().__init__()
        self.target = target
        self._pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._pending += text
        while "\n" in self._pending:
            line, self._pending = self._pending.split("\n", 1)
            self._emit(line)
        return len(text)

    def flush(self) -> None:
        self.target.flush()

    def _emit(self, line: str) -> None:
        if not line.strip():
            return
        if line.startswith("{"):
            self.target.write(line + "\n")
            return
        entry = {"time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                 "level": "ERROR" if line.startswith("dkimbot:") else "INFO", "message": line}
        case = _CASE.match(line.removeprefix("dkimbot: "))
        if case:
            entry["case"] = case.group(1)
        self.target.write(json.dumps(entry, ensure_ascii=False) + "\n")
