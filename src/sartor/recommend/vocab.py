"""External ids (user ids, item ids) to matrix rows and back."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


class Vocabulary:
    """An append-only mapping from external string ids to dense row numbers."""

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self._ids: list[str] = []
        self._rows: dict[str, int] = {}
        for value in ids:
            self.add(value)

    def add(self, value: str) -> int:
        row = self._rows.get(value)
        if row is None:
            row = len(self._ids)
            self._rows[value] = row
            self._ids.append(value)
        return row

    def row(self, value: str) -> int | None:
        return self._rows.get(value)

    def rows(self, values: Iterable[str]) -> np.ndarray:
        """Rows of the known values; unknown ones are left out."""
        found = [self._rows[v] for v in values if v in self._rows]
        return np.asarray(found, dtype=np.int64)

    def id(self, row: int) -> str:
        return self._ids[row]

    def ids(self, rows: Iterable[int] | None = None) -> list[str]:
        if rows is None:
            return list(self._ids)
        return [self._ids[int(r)] for r in rows if int(r) >= 0]

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, value: object) -> bool:
        return value in self._rows

    def to_array(self) -> np.ndarray:
        """Unicode array for ``np.savez`` (no pickle needed to load it)."""
        return np.asarray(self._ids, dtype=np.str_)

    @classmethod
    def from_array(cls, values: np.ndarray) -> Vocabulary:
        return cls(str(v) for v in values.tolist())
