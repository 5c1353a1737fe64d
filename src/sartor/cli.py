"""The ``sartor`` command. Each command is a few lines over :class:`sartor.Engine`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

from sartor.clock import iso
from sartor.config import Settings, get_settings
from sartor.engine import Conflict, Engine, NotFound

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
console = Console()
err = Console(stderr=True)


def _settings(ctx: typer.Context) -> Settings:
    settings: Settings = ctx.obj or get_settings()
    return settings


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
        err.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from None


def _tune_gc() -> None:
    """Fewer, cheaper garbage collections for a long-running server. Every request allocates
    thousands of objects (decoded JSON, rows), so the default threshold of 700 runs a young
    collection several times per batch, and each older one walks every object the process
    holds. Objects alive after start-up are frozen out of collection; young collections run
    every 10,000 allocations. Cyclic garbage is still collected, only later."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 50, 100)


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
    engine = Engine.open(settings=settings).start()
    application = create_app(engine)
    _tune_gc()
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
            "folds profiles in-process)"
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
            err.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from None
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
        err.print("[red]--consent-mode must be opt_in or opt_out[/red]")
        raise typer.Exit(2)
    with _engine(ctx) as engine:
        try:
            created = engine.create_workspace(name, consent_mode=consent_mode)
        except Conflict as exc:
            err.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from None
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
            err.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from None
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
            err.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from None


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
        err.print(f"[red]definition is not valid JSON:[/red] {exc}")
        raise typer.Exit(2) from None


def _workspace_id(engine: Engine, ref: str) -> str:
    try:
        return engine.workspace(ref).id
    except NotFound as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None


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
            err.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from None
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
            err.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from None
    console.print(result)


@segment_app.command("delete")
def segment_delete(ctx: typer.Context, workspace: str, key: str) -> None:
    """Delete a segment and its memberships."""
    with _engine(ctx) as engine:
        if not engine.segments.delete(_workspace_id(engine, workspace), key):
            err.print(f"[red]no segment {key!r}[/red]")
            raise typer.Exit(1)
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
            err.print(f"[red]no segment {key!r}[/red]")
            raise typer.Exit(1)
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
        err.print(f"[red]unknown algorithm {algorithm!r}[/red]")
        raise typer.Exit(2)
    with _engine(ctx) as engine, console.status("clustering profiles"):
        run = run_clustering(engine, _workspace_id(engine, workspace), algorithm, random_state)
    if run is None:
        err.print("[yellow]too few profiles with behaviour to cluster[/yellow]")
        raise typer.Exit(1)
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


def _experiment_call(engine: Engine, fn: Any, *args: Any) -> Any:
    """Run a service call, turning its errors into a red message and an exit code."""
    from sartor.collect.errors import FieldError
    from sartor.experiments.service import ExperimentConflict, ExperimentNotFound

    try:
        return fn(*args)
    except FieldError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    except (ExperimentNotFound, ExperimentConflict, NotFound) as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None


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
        err.print(f"[red]cannot read {definition}:[/red] {exc}")
        raise typer.Exit(2) from None
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
def demo(
    ctx: typer.Context,
    port: Annotated[int | None, typer.Option(help="Port to serve on")] = None,
    serve_after: Annotated[
        bool, typer.Option("--serve/--no-serve", help="Serve after loading")
    ] = True,
) -> None:
    """Load the sample shop (a UCI Online Retail slice) into workspace `demo`, then serve."""
    from sartor.demo import load_demo

    with _engine(ctx) as engine:
        keys = load_demo(engine, console)
    if keys:
        for kind in ("write", "read", "admin"):
            console.print(f"{kind} key: [bold]{keys[kind]}[/bold]")
    if serve_after:
        settings = _settings(ctx)
        console.print(f"serving on http://{settings.host}:{port or settings.port}  (docs at /docs)")
        serve(ctx, host=None, port=port)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
