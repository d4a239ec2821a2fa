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

import json
import logging
import re
from datetime import UTC, datetime

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
