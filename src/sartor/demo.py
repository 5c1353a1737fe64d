"""``sartor demo``: the bundled Online Retail slice as Segment e-commerce events.

The sample is imported with the ``online-retail`` preset of ``sartor import events`` (see
:class:`sartor.importers.presets.OnlineRetailMapper` for how lines map): each invoice becomes
one ``Order Completed`` (a cancellation, ``C...``, an ``Order Refunded``) with its lines as
``products[]``; each customer gets an ``identify`` with their country. Message ids derive
from invoice numbers, so loading twice stores nothing new.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn

from sartor.engine import Engine, NotFound
from sartor.importers import run_import
from sartor.importers.events import IMPORT_EVENT_BYTES
from sartor.importers.presets import OnlineRetailMapper
from sartor.importers.source import open_rows

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "online-retail-sample.csv"
DEMO_WORKSPACE = "demo"
__all__ = ["DEMO_WORKSPACE", "IMPORT_EVENT_BYTES", "SAMPLE", "load_demo", "retail_messages"]


def retail_messages(path: Path) -> list[dict[str, Any]]:
    """Segment messages for an Online Retail CSV, in file order, as the import makes them
    (for tests and benchmarks that send them through :meth:`Engine.ingest`)."""
    mapper = OnlineRetailMapper()
    messages: list[dict[str, Any]] = []
    for line, row in open_rows(path):
        messages.extend(msg for _, _, msg in mapper.feed(line, row))
    messages.extend(msg for _, _, msg in mapper.finish())
    return messages


def load_demo(engine: Engine, console: Console, path: Path = SAMPLE) -> dict[str, str]:
    """Create (or reuse) the demo workspace, load the sample, return fresh keys."""
    if not path.exists():
        raise FileNotFoundError(f"sample data not found at {path}")
    try:
        workspace = engine.workspace(DEMO_WORKSPACE)
        keys = {kind: engine.create_key(workspace, kind) for kind in ("write", "read", "admin")}
    except NotFound:
        created = engine.create_workspace(DEMO_WORKSPACE, consent_mode="opt_out")
        workspace, keys = created.workspace, created.keys
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), console=console, transient=True
    ) as progress:
        task = progress.add_task("loading Online Retail sample", total=None)
        summary = run_import(
            engine,
            workspace,
            path,
            "events",
            preset="online-retail",
            # The sample sits in the package: its report (if any) goes to the data folder.
            rejects_path=engine.settings.home / "demo.rejects.jsonl",
            progress=lambda n: progress.advance(task, n),
        )
    if summary.rejected_total:
        console.print(
            f"[yellow]{summary.rejected_total} rows refused:[/yellow] "
            f"{dict(summary.rejected)} (see {summary.rejects_path})"
        )
    console.print(
        f"demo workspace: {summary.imported} events stored, {summary.duplicates} already there"
    )
    return keys
