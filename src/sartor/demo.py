"""``sartor demo``: the bundled Online Retail slice, loaded and put to work.

:func:`run_demo` imports the sample, folds the profiles, computes RFM groups and behavioural
clusters, trains the recommendation models, runs an A/A experiment on the history, and
prints what to try against the running server for a real customer.

The sample is imported with the ``online-retail`` preset of ``sartor import events`` (see
:class:`sartor.importers.presets.OnlineRetailMapper` for how lines map): each invoice becomes
one ``Order Completed`` (a cancellation, ``C...``, an ``Order Refunded``) with its lines as
``products[]``; each customer gets an ``identify`` with their country. Message ids derive
from invoice numbers, so loading twice stores nothing new.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn
from rich.table import Table
from sqlalchemy import func, select

from sartor.collect.messages import parse_timestamp
from sartor.engine import Engine, NotFound
from sartor.importers import run_import
from sartor.importers.events import IMPORT_EVENT_BYTES
from sartor.importers.presets import OnlineRetailMapper
from sartor.importers.source import open_rows
from sartor.storage.tables import events

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "online-retail-sample.csv.gz"
DEMO_WORKSPACE = "demo"
# The day after the last invoice of the data set: the usual RFM reference date.
REFERENCE = parse_timestamp("2011-12-10T00:00:00Z")
# The A/A check assigns customers on this day and measures their real orders after it.
AA_START = parse_timestamp("2011-09-01T00:00:00Z")
AA_KEY = "demo-aa-check"
__all__ = [
    "DEMO_WORKSPACE",
    "IMPORT_EVENT_BYTES",
    "SAMPLE",
    "load_demo",
    "retail_messages",
    "run_demo",
]


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


@dataclass
class DemoReport:
    workspace: str
    keys: dict[str, str]
    customer: str
    steps: dict[str, float] = field(default_factory=dict)
    rfm: dict[str, int] = field(default_factory=dict)
    clusters: list[dict[str, Any]] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)
    recommendations: dict[str, Any] = field(default_factory=dict)
    similar: dict[str, Any] = field(default_factory=dict)
    experiment: dict[str, Any] = field(default_factory=dict)


def _best_customer(engine: Engine, ws_id: str) -> str:
    """The identified customer with the most orders (ties: the lowest id): a real person
    with enough history for every part of the demo to show something."""
    with engine.db.connect() as conn:
        row = conn.execute(
            select(events.c.user_id, func.count().label("n"))
            .where(
                events.c.workspace_id == ws_id,
                events.c.event == "Order Completed",
                events.c.user_id.is_not(None),
            )
            .group_by(events.c.user_id)
            .order_by(func.count().desc(), events.c.user_id)
            .limit(1)
        ).first()
    if row is None:
        raise RuntimeError("the sample holds no identified customer with an order")
    return str(row.user_id)


def _aa_check(engine: Engine, ws_id: str, console: Console) -> dict[str, Any]:
    """An A/A test on the history: customers active before AA_START are assigned on that
    day to two arms that see the same thing, and their real later orders are the goal. No
    difference should be found, and the sample-ratio check should pass."""
    if engine.experiments.get(ws_id, AA_KEY) is None:
        engine.experiments.create(
            ws_id,
            {
                "key": AA_KEY,
                "name": "A/A check on the 2011 history",
                "description": "Both arms see the same shop; assigned on 2011-09-01, goal: "
                "an order after that. A sound engine finds no difference.",
                "status": "running",
                "variations": [{"key": "A"}, {"key": "B"}],
                "goal": {"type": "conversion", "event": "Order Completed"},
                "guardrails": [{"type": "revenue"}],
            },
        )
    with engine.db.connect() as conn:
        before = (
            conn.execute(
                select(events.c.user_id)
                .where(
                    events.c.workspace_id == ws_id,
                    events.c.user_id.is_not(None),
                    events.c.timestamp < AA_START,
                )
                .distinct()
                .order_by(events.c.user_id)
            )
            .scalars()
            .all()
        )
    for user in before:
        engine.experiments.decide(ws_id, user, experiments=[AA_KEY], kind="userId", now=AA_START)
    return engine.experiments.results(ws_id, AA_KEY)


def run_demo(
    engine: Engine, console: Console, path: Path = SAMPLE, *, port: int = 8000
) -> DemoReport:
    """Everything ``sartor demo`` does before serving; returns what it computed."""
    from sartor.segments.clustering import run_clustering

    steps: dict[str, float] = {}
    clock = time.perf_counter()

    def step(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        steps[name] = round(now - clock, 2)
        clock = now

    keys = load_demo(engine, console, path)
    ws = engine.workspace(DEMO_WORKSPACE)
    step("import")
    with console.status("folding profiles"):
        engine.updater.replay()
    step("profiles")
    with console.status("RFM groups"):
        rfm = engine.segments.run_rfm(ws.id, REFERENCE)
    step("rfm")
    with console.status("behavioural clusters"):
        run = run_clustering(engine, ws.id, now=REFERENCE, random_state=0)
    step("clusters")
    with console.status("training recommendation models"):
        models = engine.train(ws.id)
    step("train")
    customer = _best_customer(engine, ws.id)
    recs = engine.recs.recommend(ws.id, user=customer, slot="home", k=5)
    bought = _last_bought(engine, ws.id, customer)
    similar = engine.recs.recommend(ws.id, item=bought, slot="product", k=5) if bought else {}
    step("recommend")
    with console.status("A/A experiment on the history"):
        experiment = _aa_check(engine, ws.id, console)
    step("experiment")
    report = DemoReport(
        workspace=ws.id,
        keys=keys,
        customer=customer,
        steps=steps,
        rfm=rfm,
        clusters=list((run or {}).get("clusters", [])),
        models=models,
        recommendations=recs,
        similar=similar,
        experiment=experiment,
    )
    _print_report(engine, console, report, bought, port)
    return report


def _last_bought(engine: Engine, ws_id: str, user: str) -> str | None:
    with engine.db.connect() as conn:
        payload = conn.execute(
            select(events.c.payload)
            .where(
                events.c.workspace_id == ws_id,
                events.c.user_id == user,
                events.c.event == "Order Completed",
            )
            .order_by(events.c.timestamp.desc())
            .limit(1)
        ).scalar()
    products = ((payload or {}).get("properties") or {}).get("products") or []
    for product in products:
        if product.get("product_id"):
            return str(product["product_id"])
    return None


def _print_report(
    engine: Engine, console: Console, r: DemoReport, bought: str | None, port: int
) -> None:
    profile = engine.profile(r.workspace, r.customer)
    computed = profile.get("computed") or {}
    console.rule(f"[bold]customer {r.customer}")
    console.print(
        f"orders {computed.get('orders')}, revenue {computed.get('revenue')}, "
        f"segments: {', '.join(profile.get('segments') or []) or '-'}"
    )
    table = Table(
        "recommended for them", "why", title=f"slot home ({r.recommendations.get('strategy')})"
    )
    for item in r.recommendations.get("items", []):
        table.add_row(f"{item['id']} {item.get('title') or ''}", item.get("reason") or "")
    console.print(table)
    if r.similar:
        table = Table("similar items", "why", title=f"slot product, item {bought}")
        for item in r.similar.get("items", []):
            table.add_row(f"{item['id']} {item.get('title') or ''}", item.get("reason") or "")
        console.print(table)
    console.print(
        "RFM groups: "
        + ", ".join(f"{g} {n}" for g, n in sorted(r.rfm.items(), key=lambda kv: -kv[1]))
    )
    console.print(
        "clusters: "
        + ", ".join(f"{c.get('key', c.get('name'))} {c.get('size')}" for c in r.clusters)
    )
    goal = r.experiment.get("goal") or {}
    verdicts = ", ".join(r.experiment.get("verdicts") or []) or "-"
    srm = (r.experiment.get("srm") or {}).get("pValue")
    console.print(
        f"A/A experiment {AA_KEY}: {r.experiment.get('users')} customers, "
        f"verdict {verdicts}, SRM p={srm if srm is None else round(srm, 3)} "
        f"(goal {goal.get('metric', {}).get('event', 'Order Completed')})"
    )
    console.print(f"steps (s): {r.steps}")
    read = r.keys.get("read", "READ_KEY")
    base = f"http://127.0.0.1:{port}"
    console.rule("[bold]try")
    for path in (
        f"/v1/profiles/{r.customer}",
        "/v1/segments",
        f"/v1/recommendations?user={r.customer}&slot=home&k=10",
        f"/v1/recommendations?item={bought}&slot=product&k=10",
        f"/v1/experiments/{AA_KEY}/results",
    ):
        console.print(f"curl -u {read}: '{base}{path}'", soft_wrap=True)
