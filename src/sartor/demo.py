"""``sartor demo``: the bundled Online Retail slice as Segment e-commerce events.

Each invoice becomes one ``Order Completed`` (a cancellation, ``C...``, an ``Order
Refunded``) with its lines as ``products[]``; each customer gets an ``identify`` with their
country. Message ids derive from invoice numbers, so loading twice stores nothing new.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress

from sartor.engine import Engine, NotFound

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "online-retail-sample.csv"
DEMO_WORKSPACE = "demo"
# A trusted import may carry orders bigger than the API's 32 KB per event.
IMPORT_EVENT_BYTES = 2 * 1024 * 1024


def _iso(text: str) -> str:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).isoformat()


def retail_messages(path: Path) -> list[dict[str, Any]]:
    """Segment messages for an Online Retail CSV, in time order."""
    invoices: dict[str, list[dict[str, str]]] = defaultdict(list)
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            invoices[row["InvoiceNo"]].append(row)
    messages: list[dict[str, Any]] = []
    seen_customers: set[str] = set()
    for invoice, lines in sorted(invoices.items(), key=lambda kv: kv[1][0]["InvoiceDate"]):
        first = lines[0]
        customer = first["CustomerID"].removesuffix(".0")
        who: dict[str, str] = (
            {"userId": f"c{customer}"} if customer else {"anonymousId": f"guest-{invoice}"}
        )
        ts = _iso(first["InvoiceDate"])
        if customer and customer not in seen_customers:
            seen_customers.add(customer)
            messages.append(
                {
                    "type": "identify",
                    "messageId": f"retail-identify-{customer}",
                    "timestamp": ts,
                    "traits": {"country": first["Country"]},
                    **who,
                }
            )
        products: list[dict[str, Any]] = [
            {
                "product_id": line["StockCode"],
                "name": line["Description"],
                "price": float(line["UnitPrice"]),
                "quantity": int(line["Quantity"]),
            }
            for line in lines
        ]
        total = round(sum(float(ln["UnitPrice"]) * int(ln["Quantity"]) for ln in lines), 2)
        messages.append(
            {
                "type": "track",
                "event": "Order Refunded" if invoice.startswith("C") else "Order Completed",
                "messageId": f"retail-invoice-{invoice}",
                "timestamp": ts,
                "properties": {
                    "order_id": invoice,
                    "total": total,
                    "revenue": total,
                    "currency": "GBP",
                    "products": products,
                },
                "context": {"locale": "en-GB", "location": {"country": first["Country"]}},
                **who,
            }
        )
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
    messages = retail_messages(path)
    stored = duplicates = 0
    with Progress(console=console, transient=False) as progress:
        task = progress.add_task("loading Online Retail sample", total=len(messages))
        for start in range(0, len(messages), 500):
            part = messages[start : start + 500]
            result = engine.ingest(workspace, part, max_event_bytes=IMPORT_EVENT_BYTES)
            stored += result.stored
            duplicates += result.duplicates
            if result.errors:
                console.print(
                    f"[yellow]{len(result.errors)} rows refused:[/yellow] {result.errors[:3]}"
                )
            progress.advance(task, len(part))
    console.print(f"demo workspace: {stored} events stored, {duplicates} already there")
    return keys
