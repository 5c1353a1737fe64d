"""``sartor.Engine``: the whole engine as a library; the API and the CLI are thin over it.

>>> engine = Engine.open("sqlite:///shop.db")
>>> created = engine.create_workspace("shop")
>>> engine.track(created.workspace, "Product Viewed", user_id="u1",
...              properties={"product_id": "sku-1"})
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter as Tally
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine as SAEngine
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from sartor import metrics
from sartor.bus import redis_streams
from sartor.bus.broadcast import Broadcaster
from sartor.bus.child import ChildProcessBus
from sartor.bus.inprocess import InProcessBus
from sartor.clock import iso
from sartor.collect.errors import FieldError, PayloadError, RateLimited
from sartor.collect.ingest import Outcome, profile_id_for
from sartor.collect.messages import MESSAGE_TYPES, find_nul, parse_timestamp
from sartor.collect.prepare import MAX_BATCH_ITEMS, MAX_EVENT_BYTES, PreparedEvent, prepare
from sartor.collect.ratelimit import RateLimiter
from sartor.collect.writer import GroupCommitWriter
from sartor.config import Settings, get_settings
from sartor.experiments.service import Experiments
from sartor.importers.jobs import ImportJobs
from sartor.privacy import erasure
from sartor.privacy.pii import HASH_PREFIX, derive_key, keyed_hash, normalize_pii
from sartor.profiles import folds
from sartor.profiles import store as profile_store
from sartor.profiles.hot import HotState, InProcessHotState, RedisHotState
from sartor.profiles.updater import HotConfig, ProfileChange, ProfileUpdater
from sartor.recommend.catalog import Catalog
from sartor.recommend.registry import Registry
from sartor.recommend.serving import RecommendationService
from sartor.scheduler import Scheduler
from sartor.segments.service import Segments
from sartor.storage import db
from sartor.storage import workspaces as ws_store
from sartor.storage.tables import events as events_table
from sartor.storage.tables import identities as identities_table
from sartor.storage.tables import profiles as profiles_table
from sartor.workspace import Workspace, WorkspaceSettings

WorkspaceRef = Workspace | str


class NotFound(LookupError):
    pass


class Conflict(ValueError):
    pass


@dataclass
class CreatedWorkspace:
    workspace: Workspace
    keys: dict[str, str]


@dataclass
class IngestResult:
    """The answer to one ingestion call, item by item."""

    received: int = 0
    stored: int = 0
    duplicates: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    items: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return self.stored + self.duplicates + sum(self.dropped.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "success": not self.errors,
            "received": self.received,
            "stored": self.stored,
            "duplicates": self.duplicates,
            "dropped": self.dropped,
            "errors": self.errors,
            "items": self.items,
        }


class Engine:
    """One Sartor engine over one database. Thread-safe; open once per process."""

    def __init__(
        self, db_engine: SAEngine, settings: Settings, *, fold_process: bool = False
    ) -> None:
        self.db = db_engine
        self.settings = settings
        self.redis = redis_streams.connect(settings.redis_url) if settings.redis_url else None
        self.hot: HotState = (
            RedisHotState(self.redis, settings.redis_namespace)
            if self.redis
            else InProcessHotState()
        )
        self.broadcaster = Broadcaster(self.redis, settings.redis_namespace)
        self.updater = ProfileUpdater(
            db_engine,
            settings.profile_config,
            hot=self.hot,
            hot_config=HotConfig(
                settings.hot_user_interactions, int(settings.hot_user_window_minutes * 60_000)
            ),
            listeners=[self._on_profile_change],
        )
        self.bus: InProcessBus | ChildProcessBus | redis_streams.RedisStreamPublisher
        if self.redis:
            self.bus = redis_streams.RedisStreamPublisher(self.redis, settings.redis_namespace)
        elif fold_process:
            # The child opens the database this engine has (given apart from the settings).
            # What it writes is derived from the log and folded again if lost, so on SQLite
            # its commits need not wait for the disk (WAL with synchronous=NORMAL still
            # survives a crash of either process; a power cut may lose the newest folds).
            url = db_engine.url.render_as_string(hide_password=False)
            child = {"database_url": url}
            if settings.sqlite_synchronous == "FULL":
                child["sqlite_synchronous"] = "NORMAL"
            self.bus = ChildProcessBus(
                settings.model_copy(update=child),
                self._on_folded,
                self.broadcaster.publish_many,
            )
            self.broadcaster.watchers.append(self.bus.watch)
        else:
            self.bus = InProcessBus(self.updater, settings.reconcile_seconds)
        self.segments = Segments(self)
        self.models = Registry(db_engine, settings.home / "models")
        self.catalog = Catalog(db_engine)
        self.experiments = Experiments(self)
        self.recs = RecommendationService(self)
        self.imports = ImportJobs(self)
        self.updater.batch_listeners.append(self.segments.on_profile_changes)
        self.scheduler = Scheduler(self)
        self.writer = GroupCommitWriter(
            db_engine,
            settings.secret_key,
            max_events=settings.group_commit_max_events,
            on_commit=self._on_commit,
        )
        self.limiter = RateLimiter(settings.rate_limit_burst_seconds)
        self._keys: dict[str, tuple[float, str, str] | tuple[float, None, None]] = {}
        self._workspaces: dict[str, tuple[float, Workspace]] = {}
        self._pii_keys: dict[str, bytes] = {}
        self._medians: dict[str, tuple[float, dict[str, float]]] = {}

    @classmethod
    def open(
        cls,
        url: str | None = None,
        *,
        settings: Settings | None = None,
        migrate: bool = True,
        fold_process: bool = False,
    ) -> Engine:
        """Open (and by default migrate) the database at ``url``; the default is the
        embedded SQLite file in ``SARTOR_HOME``. Without Redis, profiles are folded on a
        thread once :meth:`start` is called, or with ``fold_process`` in a child process
        (as `sartor serve` does)."""
        settings = settings or get_settings()
        url = url or settings.resolved_database_url
        engine = db.make_engine(url, sqlite_synchronous=settings.sqlite_synchronous)
        if migrate:
            db.migrate(engine)
        return cls(engine, settings, fold_process=fold_process)

    def start(self) -> Engine:
        """Start folding profiles in the background (in-process bus). With Redis, folding
        is the job of `sartor worker` processes and this does nothing."""
        self.bus.start()
        self.scheduler.start()
        # Jobs a crash left running are marked failed; queued ones (uploads, or jobs a
        # graceful stop interrupted) run again.
        self.imports.start()
        return self

    def close(self) -> None:
        self.imports.close()  # first: a running import still writes through the writer
        self.scheduler.stop()
        # The bus first: a fold in progress may still log segment transitions (an ingest).
        self.bus.stop()
        self.writer.close()
        self.recs.close()  # after the writer: its commits queue attribution outcomes
        self.broadcaster.close()
        self.db.dispose()

    # -- notifications --------------------------------------------------------------------

    def _on_commit(
        self, ws: Workspace, prepared: list[PreparedEvent], outcomes: list[Outcome]
    ) -> None:
        stored = [(e, o) for e, o in zip(prepared, outcomes, strict=True) if o.status == "stored"]
        if not stored:
            return
        self.bus.notify(sorted({(ws.id, o.profile_id or "") for _, o in stored}), 0)
        if self.broadcaster.has_subscribers(ws.id):
            # One round trip for the whole request, not one per event (with Redis).
            self.broadcaster.publish_many(
                ws.id,
                [
                    {
                        "type": "event",
                        "messageId": e.message_id,
                        "eventType": e.type,
                        "event": e.event,
                        "userId": e.user_id,
                        "anonymousId": e.anonymous_id,
                        "profileId": o.profile_id,
                        "timestamp": iso(e.timestamp),
                    }
                    for e, o in stored
                ],
            )
        # Events carrying a recommendation_id are attributed to the list (never raises).
        self.recs.on_commit(ws, prepared, outcomes)
        # Products seen in events create or complete catalog items. Last, and it never
        # raises: the events are committed and acknowledged whatever happens here.
        self.catalog.observe_events(
            ws.id,
            (
                dict(event=e.event, properties=e.payload.get("properties"), timestamp=e.timestamp)
                for e, _ in stored
                if e.type == "track"
            ),
            normalized=True,
            raise_errors=False,
        )

    def notify_stored(
        self, ws: Workspace, prepared: list[PreparedEvent], outcomes: list[Outcome]
    ) -> None:
        """Events committed outside the group-commit writer (file imports) are announced as
        after an API commit: the bus, live subscribers and the catalog hear of them."""
        self._on_commit(ws, prepared, outcomes)

    def _on_folded(
        self, pairs: list[tuple[str, str]], full: dict[str, list[dict[str, Any]]]
    ) -> None:
        """Profiles the folding process changed: their cached lists go, and the changes
        reach this process's stream subscribers."""
        for ws, pid in pairs:
            self.recs.on_profile_change(ProfileChange(ws, pid, 0, 0))
        for ws, messages in full.items():
            self.broadcaster.publish_many(ws, messages)

    def _on_profile_change(self, change: ProfileChange) -> None:
        self.recs.on_profile_change(change)
        if self.broadcaster.has_subscribers(change.workspace_id):
            self.broadcaster.publish(change.workspace_id, change.as_dict())

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- workspaces and keys -------------------------------------------------------------

    def create_workspace(
        self,
        name: str,
        consent_mode: str | None = None,
        settings: WorkspaceSettings | dict[str, Any] | None = None,
    ) -> CreatedWorkspace:
        """A new workspace with a write, a read and an admin key (shown only here)."""
        name = name.strip()
        if not name or len(name) > 200:
            raise ValueError("a workspace name is 1 to 200 characters")
        data = (
            settings.model_dump()
            if isinstance(settings, WorkspaceSettings)
            else dict(settings or {})
        )
        if consent_mode is not None:
            data["consent_mode"] = consent_mode
        ws_settings = WorkspaceSettings.model_validate(data)
        try:
            with db.write_tx(self.db) as conn:
                ws, keys = ws_store.create_workspace(conn, name, ws_settings)
        except IntegrityError:
            raise Conflict(f"a workspace named {name!r} already exists") from None
        self.segments.install_builtins(ws.id)
        return CreatedWorkspace(ws, keys)

    def create_key(self, ref: WorkspaceRef, kind: str) -> str:
        """A new key of ``kind`` (write, read, admin) for the workspace, shown only here."""
        ws = self.workspace(ref)
        with db.write_tx(self.db) as conn:
            return ws_store.add_key(conn, ws.id, kind)

    def workspace(self, ref: WorkspaceRef) -> Workspace:
        if isinstance(ref, Workspace):
            return ref
        cached = self._workspaces.get(ref)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        with self.db.connect() as conn:
            ws = ws_store.get_workspace(conn, ref)
        if ws is None:
            raise NotFound(f"no workspace {ref!r}")
        self._workspaces[ref] = (time.monotonic() + self.settings.key_cache_seconds, ws)
        return ws

    def workspaces(self) -> list[Workspace]:
        with self.db.connect() as conn:
            return ws_store.list_workspaces(conn)

    def update_workspace_settings(self, ref: WorkspaceRef, changes: dict[str, Any]) -> Workspace:
        ws = self.workspace(ref)
        merged = {**ws.settings.model_dump(), **changes}
        new_settings = WorkspaceSettings.model_validate(merged)
        with db.write_tx(self.db) as conn:
            ws_store.update_settings(conn, ws.id, new_settings)
        self._workspaces.clear()
        return Workspace(ws.id, ws.name, new_settings, ws.created_at)

    def authenticate(self, key: str) -> tuple[Workspace, str] | None:
        """The workspace and kind (write, read, admin) of an API key; None if unknown."""
        now = time.monotonic()
        cached = self._keys.get(key)
        if cached is None or cached[0] <= now:
            with self.db.connect() as conn:
                found = ws_store.resolve_key(conn, key)
            expires = now + self.settings.key_cache_seconds
            cached = (expires, *found) if found else (expires, None, None)
            if len(self._keys) > 10_000:
                self._keys.clear()
            self._keys[key] = cached
        _, ws_id, kind = cached
        if ws_id is None or kind is None:
            return None
        return self.workspace(ws_id), kind

    # -- ingestion ------------------------------------------------------------------------

    def _pii_key(self, ws: Workspace) -> bytes:
        key = self._pii_keys.get(ws.id)
        if key is None:
            key = self._pii_keys[ws.id] = derive_key(self.settings.secret_key, ws.id, "pii")
        return key

    def _rate(self, ws: Workspace) -> float:
        own = ws.settings.rate_limit_events_per_second
        return self.settings.rate_limit_events_per_second if own is None else own

    def prepare(
        self,
        ref: WorkspaceRef,
        items: list[Any],
        *,
        implied_type: str | None = None,
        prefix: str = "batch",
        batch_context: dict[str, Any] | None = None,
        batch_integrations: dict[str, Any] | None = None,
        batch_sent_at: int | None = None,
        received_at: int | None = None,
        max_event_bytes: int = MAX_EVENT_BYTES,
    ) -> tuple[Workspace, list[PreparedEvent], list[FieldError]]:
        """Validate and normalize items (no I/O); bad items come back as errors."""
        ws = self.workspace(ref)
        if len(items) > MAX_BATCH_ITEMS:
            raise PayloadError(
                413,
                "batch_too_large",
                [FieldError(prefix, f"at most {MAX_BATCH_ITEMS} events per batch", status=413)],
            )
        wait = self.limiter.take(ws.id, len(items), self._rate(ws))
        if wait > 0:
            metrics.REQUESTS_RATE_LIMITED.inc()
            raise RateLimited(wait)
        received = received_at if received_at is not None else time.time_ns() // 1_000_000
        pii_key = self._pii_key(ws)
        junk_ids = ws.settings.junk_id_set  # once per request, not per event
        prepared: list[PreparedEvent] = []
        errors: list[FieldError] = []
        for i, raw in enumerate(items):
            try:
                prepared.append(
                    prepare(
                        raw,
                        index=i,
                        prefix=f"{prefix}[{i}]" if implied_type is None else "",
                        settings=ws.settings,
                        pii_key=pii_key,
                        received_at=received,
                        implied_type=implied_type,
                        batch_context=batch_context,
                        batch_integrations=batch_integrations,
                        batch_sent_at=batch_sent_at,
                        max_event_bytes=max_event_bytes,
                        junk_ids=junk_ids,
                    )
                )
            except FieldError as exc:
                errors.append(exc)
        return ws, prepared, errors

    def _result(
        self,
        n: int,
        errors: list[FieldError],
        outcomes: list[Outcome],
        prepared: list[PreparedEvent],
    ) -> IngestResult:
        result = IngestResult(received=n)
        by_index: dict[int, dict[str, Any]] = {}
        for exc in errors:
            index = _index_of(exc.field)
            result.errors.append({"index": index, **exc.as_dict()})
            by_index[index if index is not None else -1] = {
                "index": index,
                "status": "error",
                "field": exc.field,
                "message": exc.message,
            }
            metrics.EVENTS_REJECTED.labels(str(exc.status)).inc()
        dropped: Tally[str] = Tally()
        accepted: Tally[str] = Tally()  # metrics are counted here, then added once per label
        types = {p.index: p.type for p in prepared}
        for o in outcomes:
            item: dict[str, Any] = {"index": o.index, "messageId": o.message_id, "status": o.status}
            if o.status == "stored":
                result.stored += 1
                accepted[types[o.index]] += 1
            elif o.status == "duplicate":
                result.duplicates += 1
            elif o.status == "dropped":
                item["reason"] = o.reason
                dropped[o.reason or "unknown"] += 1
            else:
                item.update(field=o.field, message=o.reason)
                result.errors.append({"index": o.index, "field": o.field, "message": o.reason})
                metrics.EVENTS_REJECTED.labels("400").inc()
            by_index[o.index] = item
        for msg_type, count in accepted.items():
            metrics.EVENTS_ACCEPTED.labels(msg_type).inc(count)
        if result.duplicates:
            metrics.EVENTS_DUPLICATE.inc(result.duplicates)
        for reason, count in dropped.items():
            metrics.EVENTS_DROPPED.labels(reason).inc(count)
        result.dropped = dict(dropped)
        result.items = [by_index[i] for i in sorted(by_index)]
        return result

    def ingest(self, ref: WorkspaceRef, items: list[Any], **kwargs: Any) -> IngestResult:
        """Validate, then store and wait for the commit. See :meth:`prepare` for kwargs."""
        ws, prepared, errors = self.prepare(ref, items, **kwargs)
        outcomes = self.writer.submit(ws, prepared).result() if prepared else []
        return self._result(len(items), errors, outcomes, prepared)

    async def ingest_async(
        self, ref: WorkspaceRef, items: list[Any], **kwargs: Any
    ) -> IngestResult:
        ws, prepared, errors = self.prepare(ref, items, **kwargs)
        outcomes: list[Outcome] = []
        if prepared:
            outcomes = await asyncio.wrap_future(self.writer.submit(ws, prepared))
        return self._result(len(items), errors, outcomes, prepared)

    @staticmethod
    def batch_args(body: Any) -> tuple[list[Any], dict[str, Any]]:
        """Split a ``/v1/batch`` body into its items and the batch-level fields."""
        if not isinstance(body, dict):
            raise PayloadError(
                400, "invalid_payload", [FieldError("body", "must be a JSON object")]
            )
        items = body.get("batch")
        if not isinstance(items, list):
            raise PayloadError(
                400, "invalid_payload", [FieldError("batch", "is required and must be an array")]
            )
        kwargs: dict[str, Any] = {}
        for name in ("context", "integrations"):
            value = body.get(name)
            if value is not None and not isinstance(value, dict):
                raise PayloadError(400, "invalid_payload", [FieldError(name, "must be an object")])
            # Merged into every item after the items' own NUL check; PostgreSQL cannot store it.
            nul = find_nul(value, name)
            if nul:
                raise PayloadError(
                    400,
                    "invalid_payload",
                    [FieldError(nul, "must not contain the NUL character (\\u0000)")],
                )
            kwargs[f"batch_{name}"] = value
        try:
            kwargs["batch_sent_at"] = parse_timestamp(body.get("sentAt"))
        except ValueError as exc:
            raise PayloadError(400, "invalid_payload", [FieldError("sentAt", str(exc))]) from None
        return items, kwargs

    def batch(self, ref: WorkspaceRef, body: dict[str, Any]) -> IngestResult:
        """Store a Segment ``/v1/batch`` body."""
        items, kwargs = self.batch_args(body)
        return self.ingest(ref, items, **kwargs)

    def send(self, ref: WorkspaceRef, msg_type: str, message: dict[str, Any]) -> IngestResult:
        """Store one message of ``msg_type`` (track, identify, page, screen, group, alias)."""
        if msg_type not in MESSAGE_TYPES:
            raise ValueError(f"type must be one of {MESSAGE_TYPES}")
        return self.ingest(ref, [message], implied_type=msg_type)

    def track(self, ref: WorkspaceRef, event: str, **fields: Any) -> IngestResult:
        return self.send(ref, "track", {"event": event, **_camel(fields)})

    def identify(self, ref: WorkspaceRef, **fields: Any) -> IngestResult:
        return self.send(ref, "identify", _camel(fields))

    def page(self, ref: WorkspaceRef, **fields: Any) -> IngestResult:
        return self.send(ref, "page", _camel(fields))

    def screen(self, ref: WorkspaceRef, **fields: Any) -> IngestResult:
        return self.send(ref, "screen", _camel(fields))

    def group(self, ref: WorkspaceRef, **fields: Any) -> IngestResult:
        return self.send(ref, "group", _camel(fields))

    def alias(self, ref: WorkspaceRef, **fields: Any) -> IngestResult:
        return self.send(ref, "alias", _camel(fields))

    # -- reading, erasure, export ------------------------------------------------------------

    def events(
        self,
        ref: WorkspaceRef,
        *,
        after: int = 0,
        limit: int = 100,
        user: str | None = None,
        newest: bool = False,
    ) -> list[dict[str, Any]]:
        """Stored events in log order (``seq``), after a cursor; ``newest`` takes the last."""
        ws = self.workspace(ref)
        limit = max(1, min(limit, 1000))
        t = events_table
        with self.db.connect() as conn:
            query = select(t).where(t.c.workspace_id == ws.id, t.c.seq > after)
            if user is not None:
                pids = erasure.find_profiles(conn, ws.id, user)
                query = query.where(t.c.profile_id.in_(pids or [""]))
            order = t.c.seq.desc() if newest else t.c.seq
            rows = list(conn.execute(query.order_by(order).limit(limit)))
        if newest:
            rows.reverse()
        return [erasure.event_document(r) for r in rows]

    def erase_user(self, ref: WorkspaceRef, any_id: str) -> dict[str, int]:
        """Remove everything held about a person (events, identities, profile, hot state,
        bus entries) and suppress their later events."""
        ws = self.workspace(ref)
        lookup = self._lookup_id(ws, any_id)
        self.recs.flush()  # queued served lists must be in the table the erasure clears
        with db.write_tx(self.db) as conn:
            pids = erasure.find_profiles(conn, ws.id, lookup)
            # A profile merged into these earlier (anonymous, then identified) left hot state,
            # bus entries and memberships under its own id, which is derived from one of the
            # identities it brought along: erase under those ids too.
            key = derive_key(self.settings.secret_key, ws.id, "profile")
            links = [link for pid in pids for link in profile_store.identities_of(conn, ws.id, pid)]
            traces = sorted(
                set(pids) | {profile_id_for(key, link["kind"], link["value"]) for link in links}
            )
            # Before the identities go: sticky documents are found by hashes of the ids.
            experiment_counts = self.experiments.erase(conn, ws.id, traces, [lookup])
            # Before the events go: outcomes are found through the person's event seqs.
            recommendation_rows = self.recs.erase(conn, ws.id, traces)
            counts = erasure.erase_user(conn, ws.id, lookup, self.settings.secret_key)
            counts.update(experiment_counts)
            counts["recommendations"] = recommendation_rows
            counts["memberships"] = self.segments.erase(conn, ws.id, traces)
            counts["cluster_assignments"] = self.segments.erase_cluster_assignments(
                conn, ws.id, traces
            )
        counts["model_rows"] = self.models.forget_users(ws.id, traces)
        for pid in traces:
            self.hot.erase(ws.id, pid)
            self.updater.docs.forget(ws.id, pid)  # the fold state kept in memory
            if isinstance(self.bus, ChildProcessBus):  # and in the folding process's
                self.bus.erase(ws.id, pid)
            if self.redis is not None:
                counts["bus_entries"] = counts.get("bus_entries", 0) + redis_streams.erase_profile(
                    self.redis, self.settings.redis_namespace, ws.id, pid
                )
        # Raw rows of theirs in import rejects files still on disk (uploads go when their job
        # ends): lines holding one of their ids, or an email whose hash is one.
        counts["import_rejects"] = self.imports.scrub_rejects(
            ws.id, {any_id, lookup, *(link["value"] for link in links)}
        )
        return counts

    # -- recommendations ------------------------------------------------------------------

    def train(
        self,
        ref: WorkspaceRef,
        slots: list[str] | None = None,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Retrain the recommendation models of a workspace from its log and catalog; each
        trained slot becomes the active version (hot-swapped into running servers)."""
        from sartor.recommend import training

        ws = self.workspace(ref)
        return [t.as_dict() for t in training.train(self, ws.id, slots, progress=progress)]

    # -- profiles -------------------------------------------------------------------------

    def _lookup_id(self, ws: Workspace, any_id: str) -> str:
        """An email (or its ``hmac-sha256:`` hash) becomes the email identity it is stored as."""
        if any_id.startswith(HASH_PREFIX):
            return any_id.removeprefix(HASH_PREFIX)
        if "@" in any_id:
            return keyed_hash(self._pii_key(ws), normalize_pii("email", any_id))
        return any_id

    def _profile_ids(self, ws: Workspace, any_id: str) -> list[str]:
        with self.db.connect() as conn:
            return erasure.find_profiles(conn, ws.id, self._lookup_id(ws, any_id))

    def profile(self, ref: WorkspaceRef, any_id: str) -> dict[str, Any]:
        """The unified profile of a userId, anonymousId, email, hashed email or profile id,
        folded up to the newest stored event (reads never see a stale profile)."""
        ws = self.workspace(ref)
        pids = self._profile_ids(ws, any_id)
        if not pids:
            raise NotFound(f"no profile for {any_id!r}")
        self.updater.catch_up((ws.id, pid) for pid in pids)
        return self._render(ws, pids[0])

    def _render(self, ws: Workspace, pid: str, row: Any = None) -> dict[str, Any]:
        with self.db.connect() as conn:
            if row is None:
                row = conn.execute(
                    select(profiles_table).where(
                        profiles_table.c.workspace_id == ws.id, profiles_table.c.profile_id == pid
                    )
                ).first()
            if row is None:
                raise NotFound(f"no profile {pid!r}")
            links = profile_store.identities_of(conn, ws.id, pid)
            medians = self._category_medians(conn, ws.id)
        doc, _ = profile_store.doc_of(row)
        now = time.time_ns() // 1_000_000
        computed = folds.view(doc, now, self.settings.profile_config, medians)
        for key in ("first_seen", "last_seen", "last_order_at"):
            computed[key] = iso(computed[key])
        computed["rfm"]["first_order_at"] = iso(computed["rfm"]["first_order_at"])
        computed["intent"]["last_cart_add_at"] = iso(computed["intent"]["last_cart_add_at"])
        for item in computed["recent_items"]:
            item["at"] = iso(item["at"])
        return {
            "profileId": pid,
            "identities": links,
            "traits": row.traits or {},
            "computed": computed,
            "consent": row.consent or {},
            "segments": self.segments.of_profile(ws.id, pid),
            "refreshed": row.refreshed,
            "version": row.version,
            "lastSeq": row.last_seq,
            "createdAt": iso(row.created_at),
            "updatedAt": iso(row.updated_at),
        }

    def _category_medians(self, conn: Any, ws_id: str) -> dict[str, float]:
        cached = self._medians.get(ws_id)
        if cached is None or cached[0] < time.monotonic():
            medians = profile_store.category_medians(conn, ws_id)
            cached = self._medians[ws_id] = (time.monotonic() + 300.0, medians)
        return cached[1]

    def profiles(
        self,
        ref: WorkspaceRef,
        *,
        after: str | None = None,
        limit: int = 50,
        traits: dict[str, str] | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """A page of profiles in id order after the cursor, optionally where traits equal
        the given values; returns the page and the next cursor (None at the end)."""
        ws = self.workspace(ref)
        limit = max(1, min(limit, 500))
        t = profiles_table
        query = select(t).where(t.c.workspace_id == ws.id)
        if after:
            query = query.where(t.c.profile_id > after)
        for key, value in (traits or {}).items():
            query = query.where(t.c.traits[key].as_string() == value)
        if traits:
            # The filter reads stored traits: fold first what the bus has not folded yet.
            self.updater.replay()
        with self.db.connect() as conn:
            rows = list(conn.execute(query.order_by(t.c.profile_id).limit(limit)))
        stale = [r.profile_id for r in rows if r.last_seq is None]
        if stale:
            # Once: a profile without events (its only event refused by consent) stays NULL.
            self.updater.catch_up((ws.id, pid) for pid in stale)
            with self.db.connect() as conn:
                rows = list(conn.execute(query.order_by(t.c.profile_id).limit(limit)))
        page = [self._render(ws, r.profile_id, r) for r in rows]
        return page, (rows[-1].profile_id if len(rows) == limit else None)

    def push_traits(self, ref: WorkspaceRef, any_id: str, traits: dict[str, Any]) -> dict[str, Any]:
        """Set traits from the server side. Stored as an `identify` in the log (the source of
        truth), then folded at once; supports `$set`, `$set_once` and `$unset`."""
        ws = self.workspace(ref)
        kinds: dict[str, str] = {}
        with self.db.connect() as conn:
            for row in conn.execute(
                select(identities_table.c.kind, identities_table.c.value).where(
                    identities_table.c.workspace_id == ws.id, identities_table.c.value == any_id
                )
            ):
                kinds[row.kind] = row.value
        field_name = (
            "anonymousId" if "anonymous_id" in kinds and "user_id" not in kinds else "userId"
        )
        value = any_id
        pids = [] if kinds else self._profile_ids(ws, any_id)
        if pids:
            # An email, its hash or a profile id: send the identify under an id the profile
            # has, not as a new userId (which would start another profile).
            with self.db.connect() as conn:
                own: dict[str, str] = {}
                for link in profile_store.identities_of(conn, ws.id, pids[0]):
                    own.setdefault(link["kind"], link["value"])
            if "user_id" in own:
                value = own["user_id"]
            elif "anonymous_id" in own:
                field_name, value = "anonymousId", own["anonymous_id"]
        message = {
            field_name: value,
            "traits": traits,
            # Not the person's activity: see folds.TRAITS_ONLY_LIBRARIES.
            "context": {"library": {"name": "sartor-server"}},
        }
        result = self.ingest(ws, [message], implied_type="identify")
        if result.errors:
            raise PayloadError(
                400,
                "invalid_payload",
                [FieldError(e["field"] or "traits", e["message"]) for e in result.errors],
            )
        return self.profile(ws, any_id)

    def rebuild(
        self, ref: WorkspaceRef | None = None, progress: Callable[[int, int], None] | None = None
    ) -> int:
        """Recompute profiles from the event log (`sartor rebuild`)."""
        ws_id = self.workspace(ref).id if ref is not None else None
        return self.updater.rebuild(ws_id, progress)

    def export_user(self, ref: WorkspaceRef, any_id: str) -> dict[str, Any]:
        """Everything held about a person: events, identity links, and each profile as
        the API shows it (traits, computed behaviour, consent) with its hot state."""
        ws = self.workspace(ref)
        lookup = self._lookup_id(ws, any_id)
        with self.db.connect() as conn:
            doc = erasure.export_user(conn, ws.id, lookup)
        if doc is None:
            raise NotFound(f"nothing is held about {any_id!r}")
        doc["id"] = any_id
        rendered = []
        for p in doc["profiles"]:
            self.updater.catch_up([(ws.id, p["profileId"])])
            full = self._render(ws, p["profileId"])
            full["hotState"] = {"recentItems": self._hot_recent(ws.id, p["profileId"])}
            rendered.append(full)
        doc["profiles"] = rendered
        return doc

    def _hot_recent(self, ws: str, pid: str) -> list[dict[str, Any]]:
        """A profile's recent items in the hot state: the folding process's, when it is
        another process and knows the profile; else this process's (which a read that
        folded before the child did has filled)."""
        if isinstance(self.bus, ChildProcessBus):
            found = self.bus.recent(ws, pid)
            if found:
                return found
        return self.hot.recent(ws, pid)


def _index_of(path: str) -> int | None:
    if path.startswith("batch[") and "]" in path:
        try:
            return int(path[6 : path.index("]")])
        except ValueError:
            return None
    return 0 if not path.startswith("batch") else None


_CAMEL = {
    "user_id": "userId",
    "anonymous_id": "anonymousId",
    "message_id": "messageId",
    "group_id": "groupId",
    "previous_id": "previousId",
    "original_timestamp": "originalTimestamp",
    "sent_at": "sentAt",
}


def _camel(fields: dict[str, Any]) -> dict[str, Any]:
    return {_CAMEL.get(k, k): v for k, v in fields.items()}
