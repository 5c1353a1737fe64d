"""File imports: events, profiles (CRM), items and third-party signals.

One entry point, :func:`run_import`, for the CLI, the ``/v1/imports`` jobs and notebooks::

    summary = run_import(engine, "shop", "orders.csv.gz", "events", preset="online-retail")

Each kind of import is one function registered in :data:`IMPORTERS`; it receives an
:class:`ImportJob` (the engine, the workspace, the file, the mapping, a reject writer and the
summary to fill) and streams the rows itself through :func:`open_rows`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sartor.importers.source import MalformedRow, SourceError, detect_format, open_rows
from sartor.importers.summary import ImportSummary, RejectWriter, default_rejects_path

if TYPE_CHECKING:
    from sartor.engine import Engine, WorkspaceRef
    from sartor.workspace import Workspace

__all__ = [
    "IMPORTERS",
    "ImportConfigError",
    "ImportJob",
    "ImportSummary",
    "MalformedRow",
    "Progress",
    "RejectWriter",
    "SourceError",
    "detect_format",
    "open_rows",
    "register",
    "run_import",
]

# Called with the number of rows read since the previous call (for a progress bar).
Progress = Callable[[int], None]


class ImportConfigError(ValueError):
    """The import cannot start: unknown kind, bad mapping file, unknown preset..."""


class _Default:
    pass


DEFAULT_REJECTS: Any = _Default()


@dataclass
class ImportJob:
    """Everything an importer needs; it fills ``summary`` and writes refused rows to
    ``rejects``."""

    engine: Engine
    workspace: Workspace
    path: Path
    kind: str
    summary: ImportSummary
    rejects: RejectWriter
    # The mapping as given: a path to a YAML/JSON file, or an already-loaded dict.
    mapping: str | Path | dict[str, Any] | None = None
    preset: str | None = None
    format: str | None = None
    progress: Progress | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def rows(self) -> Any:
        """``(line, row)`` pairs of the file (see :func:`open_rows`)."""
        return open_rows(self.path, self.format)

    def advance(self, n: int) -> None:
        if self.progress is not None and n:
            self.progress(n)


Importer = Callable[[ImportJob], None]


def _lazy(module: str, name: str) -> Importer:
    """An importer loaded on first use: importer modules import the collect layer and the
    catalog, which ``sartor.importers.source`` users should not pay for."""

    def run(job: ImportJob) -> None:
        import importlib

        getattr(importlib.import_module(module), name)(job)

    run.__qualname__ = f"{module}.{name}"
    return run


# One line per kind of import.
IMPORTERS: dict[str, Importer] = {
    "events": _lazy("sartor.importers.events", "import_events"),
    "items": _lazy("sartor.importers.items", "import_items"),
    "profiles": _lazy("sartor.importers.profiles", "import_profiles"),
    "social": _lazy("sartor.importers.social", "import_social"),
}


def register(kind: str, importer: Importer) -> None:
    IMPORTERS[kind] = importer


def run_import(
    engine: Engine,
    workspace: WorkspaceRef,
    path: str | Path,
    kind: str,
    *,
    mapping: str | Path | dict[str, Any] | None = None,
    preset: str | None = None,
    rejects_path: str | Path | None = DEFAULT_REJECTS,
    progress: Progress | None = None,
    options: dict[str, Any] | None = None,
    format: str | None = None,
) -> ImportSummary:
    """Import the file at ``path`` as ``kind`` (``events``, ``items``, ...) into the workspace.

    Refused rows go to ``rejects_path`` (``FILE.rejects.jsonl`` by default; ``None`` keeps no
    file, the summary still counts them). ``format`` overrides the extension; it may also be
    given as ``options["format"]``.
    """
    importer = IMPORTERS.get(kind)
    if importer is None:
        raise ImportConfigError(
            f"unknown import kind {kind!r}: expected one of {sorted(IMPORTERS)}"
        )
    source = Path(path)
    if not source.is_file():
        raise ImportConfigError(f"{source}: file not found")
    opts = dict(options or {})
    fmt = format or opts.pop("format", None)
    if fmt is not None and fmt not in ("csv", "jsonl", "parquet"):
        raise ImportConfigError(f"unknown format {fmt!r}: expected csv, jsonl or parquet")
    ws = engine.workspace(workspace)
    summary = ImportSummary(kind=kind, source=str(source))
    if rejects_path is DEFAULT_REJECTS:
        rejects_path = default_rejects_path(source)
        if not os.access(rejects_path.parent, os.W_OK):
            # A read-only data folder (a mounted export): the report goes to the current one.
            rejects_path = Path.cwd() / rejects_path.name
    with RejectWriter(rejects_path, summary) as rejects:
        job = ImportJob(
            engine=engine,
            workspace=ws,
            path=source,
            kind=kind,
            summary=summary,
            rejects=rejects,
            mapping=mapping,
            preset=preset,
            format=fmt,
            progress=progress,
            options=opts,
        )
        importer(job)
    return summary.finish()
