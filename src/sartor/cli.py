"""The ``sartor`` command. Each command is a few lines over :class:`sartor.Engine`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

from sartor.clock import iso
from sartor.config import Settings, get_settings
from sartor.engine import Conflict, Engine, NotFound
from sartor.runtime import tune_gc

app = typer.Typer(help="Sartor: a self-hosted personalization engine.", no_args_is_help=True)
workspace_app = typer.Typer(help="Create and list workspaces.", no_args_is_help=True)
events_app = typer.Typer(help="Read the event log.", no_args_is_help=True)
users_app = typer.Typer(
    help="Export or erase everything held about a person.", no_args_is_help=True
)
app.add_typer(workspace_app, name="workspace")
app.add_typer(events_app, name="events")
app.add_typer(users_app, name="user")
segment_app = typer.Typer(help="Rule segments, RFM and clusters.", no_args_is_help=True)
app.add_typer(segment_app, name="segment")
experiment_app = typer.Typer(
    help="A/B tests and bandits: define, run, read results.", no_args_is_help=True
)
app.add_typer(experiment_app, name="experiment")
models_app = typer.Typer(help="Recommendation model versions.", no_args_is_help=True)
app.add_typer(models_app, name="models")
import_app = typer.Typer(
    help="Import files (CSV, JSONL or Parquet, gzipped or not): events, items, profiles, "
    "social signals.",
    no_args_is_help=True,
)
app.add_typer(import_app, name="import")
console = Console()
err = Console(stderr=True)


def _settings(ctx: typer.Context) -> Settings:
    settings: Settings = ctx.obj or get_settings()
    return settings


def _exit(message: str, code: int) -> typer.Exit:
    """Print ``message`` (Rich markup) on stderr; the exit to raise with that ``code``."""
    err.print(message)
    return typer.Exit(code)


@contextmanager
def _step_bar(
    first: str, unit: str = "", prefix: str = ""
) -> Iterator[Callable[[str, int, int], None]]:
    """A transient bar on stderr for work done in counted steps: yields the callback
    ``report(what, done, total)`` that long-running engine calls take as ``progress``."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}" + unit),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task(first, total=None)

        def report(what: str, done: int, total: int) -> None:
            bar.update(task, description=prefix + what, completed=done, total=total)

        yield report


def _engine(ctx: typer.Context) -> Engine:
    return Engine.open(settings=_settings(ctx))


@app.callback()
def main_options(
    ctx: typer.Context,
    home: Annotated[Path | None, typer.Option(help="Data folder (SARTOR_HOME).")] = None,
    database_url: Annotated[
        str | None, typer.Option(help="Database URL (SARTOR_DATABASE_URL); default SQLite in home.")
    ] = None,
) -> None:
    overrides: dict[str, Any] = {}
    if home is not None:
        overrides["home"] = home
    if database_url is not None:
        overrides["database_url"] = database_url
    try:
        base = get_settings()
        ctx.obj = base.model_copy(update=overrides) if overrides else base
    except ValueError as exc:
        raise _exit(f"[red]configuration error:[/red] {exc}", 2) from None


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Bind address (SARTOR_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (SARTOR_PORT).")] = None,
) -> None:
    """Run the HTTP API (Segment-compatible collection, reads, erasure, /docs, /metrics)."""
    import uvicorn

    from sartor.api.app import create_app
    from sartor.logs import configure_logging

    settings = _settings(ctx)
    configure_logging(settings.log_level, settings.log_json)
    engine = Engine.open(settings=settings, fold_process=settings.fold_process).start()
    application = create_app(engine)
    tune_gc()
    from threadpoolctl import threadpool_limits

    # Recommendations make many small matrix products at once; a multi-threaded BLAS splits
    # each over the cores and, with requests in flight, mostly waits for them (10x slower
    # on a busy 2-core machine). Concurrency comes from the requests.
    threadpool_limits(1, "blas")
    try:
        uvicorn.run(
            application,
            host=host or settings.host,
            port=port or settings.port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=10,
        )
    finally:
        engine.close()


@app.command()
def worker(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Option(help="Consumer name (default host-pid)")] = None,
) -> None:
    """Fold profiles from the Redis Streams bus (needs SARTOR_REDIS_URL). Run as many as you
    like, on any machines sharing the database and Redis; a dead worker's pending
    notifications are taken over by the others."""
    import signal

    from sartor.bus.redis_streams import RedisStreamWorker
    from sartor.logs import configure_logging

    settings = _settings(ctx)
    configure_logging(settings.log_level, settings.log_json)
    if not settings.redis_url:
        err.print(
            "[red]sartor worker needs SARTOR_REDIS_URL[/red] (without Redis, `sartor serve` "
            "folds profiles itself, in a child process)"
        )
        raise typer.Exit(2)
    with Engine.open(settings=settings) as engine:
        runner = RedisStreamWorker(
            engine.updater,
            engine.redis,
            namespace=settings.redis_namespace,
            name=name,
            reconcile_seconds=settings.reconcile_seconds,
        )
        tune_gc()  # a long-running folder of batches, as `sartor serve` is
        signal.signal(signal.SIGTERM, lambda *_: runner.stop.set())
        console.print(f"worker {runner.name} consuming profile changes")
        try:
            runner.run()
        except KeyboardInterrupt:
            runner.stop.set()


@app.command()
def rebuild(
    ctx: typer.Context,
    workspace: Annotated[str | None, typer.Argument(help="Only this workspace")] = None,
) -> None:
    """Recompute every profile from the event log."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with (
        _engine(ctx) as engine,
        Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
        ) as progress,
    ):
        task = progress.add_task("rebuilding profiles", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        try:
            n = engine.rebuild(workspace, advance)
        except NotFound as exc:
            raise _exit(f"[red]{exc}[/red]", 1) from None
    console.print(f"{n} profiles rebuilt from the log")


@app.command()
def migrate(ctx: typer.Context) -> None:
    """Bring the database schema up to date."""
    from sartor.storage.db import current_revision, make_engine
    from sartor.storage.db import migrate as run_migrations

    settings = _settings(ctx)
    db = make_engine(settings.resolved_database_url)
    before = current_revision(db)
    run_migrations(db)
    after = current_revision(db)
    console.print(f"schema: {before or 'empty'} -> {after} ({db.url.render_as_string()})")
    db.dispose()


@workspace_app.command("create")
def workspace_create(
    ctx: typer.Context,
    name: str,
    consent_mode: Annotated[str, typer.Option(help="opt_in or opt_out")] = "opt_out",
) -> None:
    """Create a workspace and print its write, read and admin keys (shown only once)."""
    if consent_mode not in ("opt_in", "opt_out"):
        raise _exit("[red]--consent-mode must be opt_in or opt_out[/red]", 2)
    with _engine(ctx) as engine:
        try:
            created = engine.create_workspace(name, consent_mode=consent_mode)
        except Conflict as exc:
            raise _exit(f"[red]{exc}[/red]", 1) from None
    table = Table(title=f"workspace {name} ({created.workspace.id}), consent {consent_mode}")
    table.add_column("kind")
    table.add_column("key")
    for kind, key in created.keys.items():
        table.add_row(kind, key)
    console.print(table)
    console.print("Keys are stored hashed: copy them now, they cannot be shown again.")


@workspace_app.command("list")
def workspace_list(ctx: typer.Context) -> None:
    """List workspaces."""
    with _engine(ctx) as engine:
        rows = engine.workspaces()
    table = Table("id", "name", "consent mode")
    for ws in rows:
        table.add_row(ws.id, ws.name, ws.settings.consent_mode)
    console.print(table)


def _print_event(ev: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(orjson.dumps(ev).decode())
        return
    who = ev.get("userId") or ev.get("anonymousId")
    name = ev.get("event") or ev.get("name") or ""
    console.print(
        f"[dim]{ev['seq']:>8}[/dim] {ev['timestamp']} [bold]{ev['type']:<8}[/bold] "
        f"{name:<24} [cyan]{who}[/cyan] [dim]{ev['profileId']}[/dim]",
        highlight=False,
        soft_wrap=True,
    )


@events_app.command("tail")
def events_tail(
    ctx: typer.Context,
    workspace: Annotated[str, typer.Argument(help="Workspace name or id")],
    lines: Annotated[int, typer.Option("-n", "--lines", help="How many recent events")] = 20,
    follow: Annotated[
        bool, typer.Option("-f", "--follow", help="Keep printing new events")
    ] = False,
    json: Annotated[bool, typer.Option("--json", help="One JSON object per line")] = False,
    user: Annotated[str | None, typer.Option(help="Only this userId/anonymousId")] = None,
) -> None:
    """Print the newest events, and with --follow every new one as it is stored."""
    with _engine(ctx) as engine:
        try:
            rows = engine.events(workspace, limit=lines, user=user, newest=True)
        except NotFound as exc:
            raise _exit(f"[red]{exc}[/red]", 1) from None
        for ev in rows:
            _print_event(ev, json)
        after = rows[-1]["seq"] if rows else 0
        try:
            while follow:
                time.sleep(0.5)
                for ev in engine.events(workspace, after=after, limit=1000, user=user):
                    _print_event(ev, json)
                    after = ev["seq"]
        except KeyboardInterrupt:
            pass


@users_app.command("export")
def user_export(ctx: typer.Context, workspace: str, user_id: str) -> None:
    """Print everything held about a person as JSON."""
    with _engine(ctx) as engine:
        try:
            typer.echo(
                orjson.dumps(
                    engine.export_user(workspace, user_id), option=orjson.OPT_INDENT_2
                ).decode()
            )
        except NotFound as exc:
            raise _exit(f"[red]{exc}[/red]", 1) from None


@users_app.command("erase")
def user_erase(
    ctx: typer.Context,
    workspace: str,
    user_id: str,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask")] = False,
) -> None:
    """Erase a person's events, identities and profile; suppress their later events."""
    if not yes:
        typer.confirm(f"Erase everything held about {user_id!r} in {workspace}?", abort=True)
    with _engine(ctx) as engine:
        counts = engine.erase_user(workspace, user_id)
    console.print(counts)


def _definition(text: str) -> Any:
    """A definition given inline as JSON, or as @file.json."""
    raw = Path(text[1:]).read_text() if text.startswith("@") else text
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _exit(f"[red]definition is not valid JSON:[/red] {exc}", 2) from None


def _workspace_id(engine: Engine, ref: str) -> str:
    try:
        return engine.workspace(ref).id
    except NotFound as exc:
        raise _exit(f"[red]{exc}[/red]", 1) from None


@segment_app.command("list")
def segment_list(ctx: typer.Context, workspace: str) -> None:
    """Segments with their sizes."""
    with _engine(ctx) as engine:
        rows = engine.segments.all(_workspace_id(engine, workspace))
    table = Table("key", "name", "kind", "size", "time-based")
    for s in rows:
        table.add_row(
            s["key"], s["name"], s["kind"], str(s["size"]), "yes" if s["timeBased"] else ""
        )
    console.print(table)


@segment_app.command("save")
def segment_save(
    ctx: typer.Context,
    workspace: str,
    key: str,
    definition: Annotated[str, typer.Argument(help="JSON condition tree, or @file.json")],
    name: Annotated[str | None, typer.Option(help="Display name (default: the key)")] = None,
    description: Annotated[str, typer.Option(help="What the segment means")] = "",
) -> None:
    """Create or replace a rule segment and back-fill it over every profile."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress

    from sartor.collect.errors import FieldError

    tree = _definition(definition)
    with (
        _engine(ctx) as engine,
        Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            console=console,
        ) as progress,
    ):
        ws = _workspace_id(engine, workspace)
        task = progress.add_task(f"back-filling {key}", total=None)
        try:
            doc = engine.segments.save(
                ws,
                key,
                name or key,
                tree,
                description,
                progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
        except FieldError as exc:
            raise _exit(f"[red]{exc}[/red]", 2) from None
    console.print(f"segment {doc['key']}: {doc['size']} members")


@segment_app.command("preview")
def segment_preview(
    ctx: typer.Context,
    workspace: str,
    definition: Annotated[str, typer.Argument(help="JSON condition tree, or @file.json")],
) -> None:
    """How many profiles a definition would hold, with a sample, without saving it."""
    from sartor.collect.errors import FieldError

    with _engine(ctx) as engine:
        try:
            result = engine.segments.preview(
                _workspace_id(engine, workspace), _definition(definition)
            )
        except FieldError as exc:
            raise _exit(f"[red]{exc}[/red]", 2) from None
    console.print(result)


@segment_app.command("delete")
def segment_delete(ctx: typer.Context, workspace: str, key: str) -> None:
    """Delete a segment and its memberships."""
    with _engine(ctx) as engine:
        if not engine.segments.delete(_workspace_id(engine, workspace), key):
            raise _exit(f"[red]no segment {key!r}[/red]", 1)
    console.print(f"deleted {key}")


@segment_app.command("members")
def segment_members(
    ctx: typer.Context,
    workspace: str,
    key: str,
    csv_out: Annotated[
        Path | None, typer.Option("--csv", help="Write all members to a CSV file")
    ] = None,
    limit: Annotated[int, typer.Option(help="How many to print")] = 20,
) -> None:
    """Print members, or export them all as CSV."""
    import csv

    with _engine(ctx) as engine:
        ws = _workspace_id(engine, workspace)
        if engine.segments.get(ws, key) is None:
            raise _exit(f"[red]no segment {key!r}[/red]", 1)
        if csv_out is None:
            page, _ = engine.segments.members(ws, key, None, limit)
            for m in page:
                typer.echo(orjson.dumps(m).decode())
            return
        n, after = 0, None
        with csv_out.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["profile_id", "since"])
            while True:
                page, after = engine.segments.members(ws, key, after, 1000)
                writer.writerows([m["profileId"], m["since"]] for m in page)
                n += len(page)
                if after is None:
                    break
    console.print(f"{n} members written to {csv_out}")


@segment_app.command("cluster")
def segment_cluster(
    ctx: typer.Context,
    workspace: str,
    algorithm: Annotated[
        str, typer.Option(help="kmeans, minibatch_kmeans, dbscan, hdbscan or gmm")
    ] = "minibatch_kmeans",
    random_state: Annotated[int, typer.Option(help="Seed")] = 0,
) -> None:
    """Cluster the profiles now; each cluster becomes a `cluster:<name>` segment."""
    from sartor.segments.clustering import run_clustering

    if algorithm not in ("kmeans", "minibatch_kmeans", "dbscan", "hdbscan", "gmm"):
        raise _exit(f"[red]unknown algorithm {algorithm!r}[/red]", 2)
    with _engine(ctx) as engine, console.status("clustering profiles"):
        run = run_clustering(engine, _workspace_id(engine, workspace), algorithm, random_state)
    if run is None:
        raise _exit("[yellow]too few profiles with behaviour to cluster[/yellow]", 1)
    console.print({k: run[k] for k in ("id", "algorithm", "metrics") if k in run})
    table = Table("cluster", "size")
    for c in run.get("clusters", []):
        table.add_row(str(c.get("key", c.get("name"))), str(c.get("size")))
    console.print(table)


@segment_app.command("rfm")
def segment_rfm(
    ctx: typer.Context,
    workspace: str,
    reference_date: Annotated[str | None, typer.Option(help="ISO date; default now")] = None,
    quantiles: Annotated[int, typer.Option(min=2, max=10, help="Score bins")] = 5,
) -> None:
    """Recompute RFM scores and groups."""
    from sartor.collect.messages import parse_timestamp

    with _engine(ctx) as engine:
        sizes = engine.segments.run_rfm(
            _workspace_id(engine, workspace), parse_timestamp(reference_date)
        )
    table = Table("group", "customers")
    for group, n in sorted(sizes.items(), key=lambda kv: -kv[1]):
        table.add_row(group, str(n))
    console.print(table)


@app.command()
def train(
    ctx: typer.Context,
    workspace: str,
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            help="Slot to train (repeatable): popularity, trending, itemknn, als, ease, "
            "content, fbt. Default: all.",
        ),
    ] = None,
) -> None:
    """Train the recommendation models from the log and catalog; each becomes the active
    version, picked up by running servers without a restart."""
    with _engine(ctx) as engine:
        ws_id = _workspace_id(engine, workspace)
        with _step_bar("training") as report:
            try:
                results = engine.train(ws_id, model, progress=report)
            except ValueError as exc:
                raise _exit(f"[red]{exc}[/red]", 2) from None
    table = Table("slot", "model", "version", "seconds", "note")
    for r in results:
        table.add_row(
            r["slot"],
            r["model"],
            str(r["version"] or "-"),
            f"{r['seconds']:.2f}",
            r.get("skipped", ""),
        )
    console.print(table)


@models_app.command("list")
def models_list(
    ctx: typer.Context,
    workspace: str,
    slot: Annotated[str | None, typer.Option(help="Only this slot")] = None,
) -> None:
    """Every stored model version, newest first; `active` ones serve."""
    with _engine(ctx) as engine:
        versions = engine.models.versions(_workspace_id(engine, workspace), slot)
    table = Table("slot", "version", "model", "status", "users", "items", "seconds", "trained")
    for v in versions:
        table.add_row(
            v["slot"],
            str(v["version"]),
            v["kind"],
            v["status"],
            str(v["nUsers"]),
            str(v["nItems"]),
            f"{v['trainSeconds']:.2f}",
            iso(v["trainedAt"]),
        )
    console.print(table)


@models_app.command("activate")
def models_activate(ctx: typer.Context, workspace: str, slot: str, version: int) -> None:
    """Serve an earlier (or later) version of a slot: a rollback."""
    with _engine(ctx) as engine:
        try:
            engine.models.activate(_workspace_id(engine, workspace), slot, version)
        except (LookupError, ValueError) as exc:
            raise _exit(f"[red]{exc}[/red]", 1) from None
    console.print(f"{slot} v{version} is active")


def _experiment_call(engine: Engine, fn: Any, *args: Any) -> Any:
    """Run a service call, turning its errors into a red message and an exit code."""
    from sartor.collect.errors import FieldError
    from sartor.experiments.service import ExperimentConflict, ExperimentNotFound

    try:
        return fn(*args)
    except FieldError as exc:
        raise _exit(f"[red]{exc}[/red]", 2) from None
    except (ExperimentNotFound, ExperimentConflict, NotFound) as exc:
        raise _exit(f"[red]{exc}[/red]", 1) from None


@experiment_app.command("list")
def experiment_list(ctx: typer.Context, workspace: str) -> None:
    """Experiments with their status, slot and variations."""
    with _engine(ctx) as engine:
        rows = _experiment_call(engine, engine.experiments.all, workspace)
    table = Table("key", "name", "kind", "status", "slot", "variations", "started")
    for e in rows:
        table.add_row(
            e["key"],
            e["name"],
            e["kind"],
            e["status"],
            e["slot"] or "",
            ", ".join(f"{v['key']} {v['weight']:.0%}" for v in e["variations"]),
            iso(e["startedAt"]) or "",
        )
    console.print(table)


@experiment_app.command("create")
def experiment_create(
    ctx: typer.Context,
    workspace: str,
    definition: Annotated[Path, typer.Argument(help="JSON file with the experiment")],
) -> None:
    """Create an experiment from a JSON file (the document of POST /v1/experiments)."""
    try:
        body = orjson.loads(definition.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise _exit(f"[red]cannot read {definition}:[/red] {exc}", 2) from None
    with _engine(ctx) as engine:
        doc = _experiment_call(engine, engine.experiments.create, workspace, body)
    console.print(f"experiment {doc['key']} created ({doc['status']})")


@experiment_app.command("start")
def experiment_start(ctx: typer.Context, workspace: str, key: str) -> None:
    """Start (or restart) an experiment."""
    with _engine(ctx) as engine:
        doc = _experiment_call(engine, engine.experiments.start, workspace, key)
    console.print(f"experiment {doc['key']}: {doc['status']}")


@experiment_app.command("stop")
def experiment_stop(ctx: typer.Context, workspace: str, key: str) -> None:
    """Stop an experiment: nobody new is enrolled; results stay readable."""
    with _engine(ctx) as engine:
        doc = _experiment_call(engine, engine.experiments.stop, workspace, key)
    console.print(f"experiment {doc['key']}: {doc['status']}")


def _pct(x: float | None) -> str:
    return "" if x is None else f"{x * 100:+.1f}%"


@experiment_app.command("results")
def experiment_results(
    ctx: typer.Context,
    workspace: str,
    key: str,
    json: Annotated[bool, typer.Option("--json", help="The full results as JSON")] = False,
) -> None:
    """Results per variation and metric, with the verdicts and the SRM check."""
    with _engine(ctx) as engine:
        res = _experiment_call(engine, engine.experiments.results, workspace, key)
    if json:
        typer.echo(orjson.dumps(res, option=orjson.OPT_INDENT_2).decode())
        return
    users = ", ".join(f"{v['key']} {v['users']}" for v in res["variations"])
    console.print(f"[bold]{res['name']}[/bold] ({res['status']}): {res['users']} people: {users}")
    if res["srm"] is not None:
        srm = res["srm"]
        mark = "[red]MISMATCH[/red]" if srm["flagged"] else "ok"
        console.print(f"sample ratio check: {mark} (p = {srm['pValue']:.3g})")
    reports = ([("goal", res["goal"])] if res["goal"] else []) + [
        ("guardrail", g) for g in res["guardrails"]
    ]
    table = Table("metric", "variation", "people", "value", "uplift", "interval", "p", "verdict")
    for role, report in reports:
        values = {v["key"]: v for v in report["variations"]}
        control = report["variations"][0]
        value = control["value"]
        table.add_row(
            f"{report['name']} ({role})",
            control["key"],
            str(control["users"]),
            "" if value is None else f"{value:.4g}",
            "",
            "",
            "",
            "control",
        )
        for c in report["comparisons"]:
            v = values[c["variation"]]
            rel = c["relative"]
            colour = {"better": "green", "worse": "red"}.get(c["direction"], "white")
            table.add_row(
                "",
                c["variation"],
                str(v["users"]),
                "" if v["value"] is None else f"{v['value']:.4g}",
                _pct(rel["estimate"]),
                f"[{_pct(rel['lower'])}, {_pct(rel['upper'])}]" if rel["lower"] is not None else "",
                "" if c["pValue"] is None else f"{c['pValue']:.3g}",
                f"[{colour}]{c['verdict']}[/{colour}]",
            )
    console.print(table)


@app.command()
def evaluate(
    interactions: Annotated[
        Path,
        typer.Option(
            help="CSV/TSV (gzip ok) with a header naming user, item, optional rating and "
            "timestamp (userId, movieId, user_id, item_id, ... work too)"
        ),
    ],
    sep: Annotated[
        str | None, typer.Option(help="Column separator (TAB, ',', '::', ...); default: sniffed")
    ] = None,
    min_rating: Annotated[
        float, typer.Option(help="Keep ratings >= this (RecBole: 3); 0 keeps all")
    ] = 3.0,
    kcore: Annotated[
        int, typer.Option(help="Drop users and items with fewer interactions, until stable")
    ] = 10,
    protocol: Annotated[str, typer.Option(help="random-811 (RecBole) or temporal-loo")] = (
        "random-811"
    ),
    k: Annotated[int, typer.Option(help="Cut-off of the ranking metrics")] = 10,
    models: Annotated[
        str,
        typer.Option(help="Comma-separated models to tune and test"),
    ] = "popularity,itemknn,userknn,als,ease,edlae",
    seed: Annotated[int, typer.Option(help="Seed of the split and of seeded models")] = 2020,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list")] = False,
) -> None:
    """Offline evaluation on an interactions file: filter, split, tune on validation, test.
    Defaults reproduce RecBole's MovieLens-1M setup (ratings >= 3, 10-core, 80/10/10)."""
    from sartor.recommend.evaluation import EvaluationError
    from sartor.recommend.evaluation import evaluate as run_evaluation

    names = [m for m in models.split(",") if m.strip()]
    try:
        with _step_bar("loading and splitting", unit=" fits", prefix="tuning ") as report:
            result = run_evaluation(
                interactions,
                names,
                protocol=protocol,
                k=k,
                seed=seed,
                min_rating=min_rating if min_rating > 0 else None,
                kcore_k=kcore,
                sep=sep,
                progress=report,
            )
    except EvaluationError as exc:
        raise _exit(f"[red]error:[/red] {exc}", 2) from None
    s = result.stats
    summary = (
        f"{s['users']:,} users, {s['items']:,} items, {s['interactions']:,} interactions "
        f"(of {s['read']:,} read; {'; '.join(result.notes) or 'no filter'}); "
        f"{result.protocol} seed {result.seed}: train {s['train']:,}, valid {s['valid']:,}, "
        f"test {s['test']:,}"
    )
    rows = result.rows()
    if as_json:
        err.print(summary)
        console.out(orjson.dumps(rows).decode())
        return
    console.print(summary)
    cut = result.k
    metric_columns = [f"{m}@{cut}" for m in ("ndcg", "recall", "mrr", "hit", "precision")]
    table = Table("model", *metric_columns, f"coverage@{cut}", "train s", "params")
    for row in rows:
        if "error" in row:
            table.add_row(row["model"], f"[red]{row['error']}[/red]", *[""] * 7)
            continue
        table.add_row(
            row["model"],
            *(f"{row[f'{m}@{cut}']:.4f}" for m in ("ndcg", "recall", "mrr", "hit", "precision")),
            f"{row[f'coverage@{cut}']:.3f}",
            f"{row['train_seconds']:.2f}",
            _compact_params(row["params"]),
        )
    console.print(table)


def _compact_params(params: dict[str, Any]) -> str:
    parts = []
    for key, value in params.items():
        if isinstance(value, dict):
            value = "{" + ",".join(f"{k}" for k in value) + "}"
        elif isinstance(value, float):
            value = f"{value:g}"
        parts.append(f"{key}={value}")
    return " ".join(parts)


@app.command()
def demo(
    ctx: typer.Context,
    port: Annotated[int | None, typer.Option(help="Port to serve on")] = None,
    serve_after: Annotated[
        bool, typer.Option("--serve/--no-serve", help="Serve after loading")
    ] = True,
) -> None:
    """Load the sample shop (a UCI Online Retail slice) into workspace `demo`: profiles, RFM
    groups, clusters, trained models and an A/A experiment; print what to try, then serve."""
    from sartor.demo import run_demo

    settings = _settings(ctx)
    with _engine(ctx) as engine:
        report = run_demo(engine, console, port=port or settings.port)
    for kind in ("write", "read", "admin"):
        console.print(f"{kind} key: [bold]{report.keys[kind]}[/bold]")
    if serve_after:
        console.print(f"serving on http://{settings.host}:{port or settings.port}  (docs at /docs)")
        serve(ctx, host=None, port=port)


# -- imports -----------------------------------------------------------------------------

ImportWorkspace = Annotated[str, typer.Option("--workspace", "-w", help="Workspace name or id")]
ImportMapping = Annotated[
    Path | None, typer.Option("--mapping", help="Mapping file (YAML or JSON): columns -> fields")
]
ImportFormat = Annotated[
    str | None, typer.Option("--format", help="csv, jsonl or parquet (default: from the name)")
]
ImportRejects = Annotated[
    Path | None,
    typer.Option("--rejects", help="Where refused rows go (default FILE.rejects.jsonl)"),
]
ImportQuiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar")]
ImportJson = Annotated[bool, typer.Option("--json", help="Print the summary as JSON")]


def _print_import_summary(summary: Any, as_json: bool, extra: dict[str, Any] | None = None) -> None:
    doc = {**summary.as_dict(), **(extra or {})}
    if as_json:
        typer.echo(orjson.dumps(doc).decode())
        return
    table = Table(title=f"import {summary.kind}: {Path(summary.source).name}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    table.add_row("rows read", f"{summary.read:,}")
    table.add_row("imported", f"{summary.imported:,}")
    table.add_row("duplicates (already there)", f"{summary.duplicates:,}")
    table.add_row("rejected", f"{summary.rejected_total:,}")
    for reason, n in sorted(summary.rejected.items(), key=lambda kv: -kv[1]):
        table.add_row(f"  {reason}", f"{n:,}", style="yellow")
    for key, value in (extra or {}).items():
        table.add_row(key.replace("_", " "), str(value))
    table.add_row("seconds", f"{summary.seconds:.2f}")
    table.add_row("rows/s", f"{summary.rows_per_second:,.0f}")
    console.print(table)
    if summary.rejects_path:
        console.print(f"refused rows and their reasons: {summary.rejects_path}", soft_wrap=True)


def run_import_command(
    engine: Engine,
    kind: str,
    file: Path,
    workspace: str,
    *,
    mapping: Path | None = None,
    preset: str | None = None,
    format: str | None = None,
    rejects: Path | None = None,
    quiet: bool = False,
    as_json: bool = False,
    options: dict[str, Any] | None = None,
) -> Any:
    """Run one import with a rows/s progress bar (on a terminal) and return its summary;
    bad arguments (unknown workspace, mapping errors, unreadable file) exit with a message."""
    from rich.progress import Progress, ProgressColumn, SpinnerColumn, TextColumn
    from rich.text import Text

    from sartor.importers import (
        DEFAULT_REJECTS,
        ImportConfigError,
        SourceError,
        run_import,
    )
    from sartor.importers.mapping import MappingError

    class RowsPerSecond(ProgressColumn):
        def render(self, task: Any) -> Text:
            elapsed = task.elapsed or 0.0
            rate = task.completed / elapsed if elapsed > 0 else 0.0
            return Text(f"{rate:,.0f} rows/s", style="cyan")

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TextColumn("{task.completed:,} rows"),
        RowsPerSecond(),
        console=err,
        transient=True,
        disable=quiet or as_json or not err.is_terminal,
    ) as bar:
        task = bar.add_task(f"importing {kind} from {file.name}", total=None)
        try:
            return run_import(
                engine,
                workspace,
                file,
                kind,
                mapping=mapping,
                preset=preset,
                format=format,
                rejects_path=rejects if rejects is not None else DEFAULT_REJECTS,
                progress=lambda n: bar.advance(task, n),
                options=options,
            )
        except NotFound as exc:
            raise _exit(f"[red]{exc}[/red]", 1) from None
        except (ImportConfigError, MappingError, SourceError) as exc:
            raise _exit(f"[red]import refused:[/red] {exc}", 2) from None


@import_app.command("events")
def import_events(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="CSV, JSONL or Parquet file, gzipped or not")],
    workspace: ImportWorkspace,
    mapping: ImportMapping = None,
    preset: Annotated[
        str | None,
        typer.Option(help="Built-in mapping: segment, rudderstack, ga4, mixpanel, online-retail"),
    ] = None,
    format: ImportFormat = None,
    rejects: ImportRejects = None,
    fold: Annotated[
        bool, typer.Option("--fold/--no-fold", help="Bring the profiles up to date at the end")
    ] = True,
    quiet: ImportQuiet = False,
    json: ImportJson = False,
) -> None:
    """Import events through the same validation, consent, identity and dedupe as the API.
    Re-running a file stores nothing new: messageIds derive from the source rows."""
    with _engine(ctx) as engine:
        summary = run_import_command(
            engine,
            "events",
            file,
            workspace,
            mapping=mapping,
            preset=preset,
            format=format,
            rejects=rejects,
            quiet=quiet,
            as_json=json,
        )
        extra: dict[str, Any] = {}
        if fold and summary.imported:
            started = time.monotonic()
            with err.status("folding profiles", spinner="dots") if not (quiet or json) else _noop():
                extra["profiles_folded"] = engine.updater.replay()
            extra["fold_seconds"] = round(time.monotonic() - started, 2)
    _print_import_summary(summary, json, extra)


@import_app.command("items")
def import_items(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="CSV, JSONL or Parquet file, gzipped or not")],
    workspace: ImportWorkspace,
    mapping: ImportMapping = None,
    format: ImportFormat = None,
    rejects: ImportRejects = None,
    quiet: ImportQuiet = False,
    json: ImportJson = False,
) -> None:
    """Load catalog items: columns id, title, description, category, brand, price,
    currency, in_stock, tags, created_at; other columns become attributes."""
    with _engine(ctx) as engine:
        summary = run_import_command(
            engine,
            "items",
            file,
            workspace,
            mapping=mapping,
            format=format,
            rejects=rejects,
            quiet=quiet,
            as_json=json,
        )
    _print_import_summary(summary, json)


@import_app.command("profiles")
def import_profiles(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="CSV, JSONL or Parquet file, gzipped or not")],
    workspace: ImportWorkspace,
    mapping: ImportMapping = None,
    key: Annotated[
        str | None,
        typer.Option(
            help="De-duplicate on user_id (default; rows without one use the email) or email"
        ),
    ] = None,
    day_first: Annotated[
        bool | None,
        typer.Option(
            "--day-first/--month-first",
            help="How to read 01/02/2021 (default: such dates are rejected as ambiguous)",
        ),
    ] = None,
    decimal_comma: Annotated[
        bool | None,
        typer.Option(help="Read 1,234 as 1.234 (default: as 1234; 12,50 is always 12.50)"),
    ] = None,
    region: Annotated[
        str | None,
        typer.Option(
            help="Region of phone numbers without a country code "
            "(default SARTOR_IMPORT_DEFAULT_REGION)"
        ),
    ] = None,
    currency: Annotated[
        str | None, typer.Option(help="Currency of amounts written without one (EUR, ...)")
    ] = None,
    format: ImportFormat = None,
    rejects: ImportRejects = None,
    quiet: ImportQuiet = False,
    json: ImportJson = False,
) -> None:
    """Import CRM customer records as cleaned profile traits (identify messages): e-mails
    lower-cased and checked, phones in E.164, ISO dates, numbers and currencies. Rows join
    profiles by user id, else by e-mail."""
    options = {
        "key": key,
        "day_first": day_first,
        "decimal_comma": decimal_comma,
        "region": region,
        "currency": currency,
    }
    with _engine(ctx) as engine:
        summary = run_import_command(
            engine,
            "profiles",
            file,
            workspace,
            mapping=mapping,
            format=format,
            rejects=rejects,
            quiet=quiet,
            as_json=json,
            options={k: v for k, v in options.items() if v is not None},
        )
        extra = {"profiles_folded": engine.updater.replay()} if summary.imported else {}
    _print_import_summary(summary, json, extra)


@import_app.command("social")
def import_social(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="JSONL (or CSV with ;-separated lists)")],
    workspace: ImportWorkspace,
    source: Annotated[
        str | None,
        typer.Option(
            help="Where the signals come from: facebook, instagram, ... (a record's "
            "own source field wins)"
        ),
    ] = None,
    mapping: ImportMapping = None,
    format: ImportFormat = None,
    rejects: ImportRejects = None,
    quiet: ImportQuiet = False,
    json: ImportJson = False,
) -> None:
    """Import interests and likes (social API records) into traits.social, tagged with
    their source; only people whose consent allows the social category get them."""
    with _engine(ctx) as engine:
        summary = run_import_command(
            engine,
            "social",
            file,
            workspace,
            mapping=mapping,
            format=format,
            rejects=rejects,
            quiet=quiet,
            as_json=json,
            options={"source": source} if source else None,
        )
        extra = {"profiles_folded": engine.updater.replay()} if summary.imported else {}
    _print_import_summary(summary, json, extra)


class _noop:  # noqa: N801 - a context manager used like a function
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def main() -> None:
    app()


if __name__ == "__main__":
    main()
