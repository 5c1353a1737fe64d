"""What an import reports: rows read, imported and rejected (by reason), and the rejects file.

Every importer (events, profiles, items, social signals) counts through one
:class:`ImportSummary` and writes each refused row, with its reason, to a
:class:`RejectWriter` (``FILE.rejects.jsonl`` by default), so nothing is dropped silently.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import orjson


@dataclass
class ImportSummary:
    kind: str
    source: str
    read: int = 0
    imported: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    rejects_path: str | None = None

    def reject(self, reason: str, n: int = 1) -> None:
        self.rejected[reason] += n

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    @property
    def seconds(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    @property
    def rows_per_second(self) -> float:
        return self.read / self.seconds if self.seconds > 0 else 0.0

    def finish(self) -> ImportSummary:
        self.finished = time.monotonic()
        return self

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "source": self.source,
            "read": self.read,
            "imported": self.imported,
            "duplicates": self.duplicates,
            "rejected": self.rejected_total,
            "rejected_by_reason": dict(sorted(self.rejected.items())),
            "seconds": round(self.seconds, 3),
            "rows_per_second": round(self.rows_per_second, 1),
            "rejects_file": self.rejects_path,
        }


def default_rejects_path(source: str | Path) -> Path:
    return Path(f"{source}.rejects.jsonl")


class RejectWriter:
    """Appends one JSON line per refused row: ``{"line", "reason", "field", "message"?,
    "row"}``.

    The file is created on the first reject only, and truncated then, so a clean re-run
    leaves no stale rejects from an earlier run.
    """

    def __init__(self, path: str | Path | None, summary: ImportSummary) -> None:
        self.path = Path(path) if path is not None else None
        self.summary = summary
        self._fh: IO[bytes] | None = None
        if self.path is not None and self.path.exists():
            self.path.unlink()

    def write(
        self,
        line: int | None,
        reason: str,
        row: Any,
        field_name: str | None = None,
        message: str | None = None,
    ) -> None:
        self.summary.reject(reason)
        if self.path is None:
            return
        if self._fh is None:
            self._fh = self.path.open("wb")
            self.summary.rejects_path = str(self.path)
        record: dict[str, Any] = {"line": line, "reason": reason, "field": field_name}
        if message:
            record["message"] = message
        record["row"] = row
        self._fh.write(orjson.dumps(record, default=str) + b"\n")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> RejectWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
