"""Experiments in a workspace: definitions, decisions, exposures, analysis, the holdout.

:meth:`Experiments.decide` answers "what does this person see on these slots":

1. the person is resolved (userId, anonymousId, email or profile id) and described by
   attributes: ``id`` (the id given), ``userId``, ``anonymousId``, ``profileId``, the
   profile's traits (also at the top level, GrowthBook style), ``segments`` and whatever
   the caller adds;
2. the global holdout comes first: a person whose holdout hash (GrowthBook hash version 2
   of their userId, else anonymousId, with the workspace's ``holdout_seed``) falls below
   ``holdout_share`` gets ``{"holdout": true}`` and the default (non-personalized)
   experience on every slot; a person's first holdout decision is remembered as an
   exposure to the pseudo-experiment ``$holdout`` and kept;
3. each running experiment on the slots (or named) is run: targeting (any of the listed
   segments, the rule tree on the profile, the GrowthBook condition on the attributes),
   then :func:`~sartor.experiments.assignment.assign` (namespace, coverage, hashing,
   sticky bucketing); a bandit hashes the person into the arm weights of the current
   period (:class:`~sartor.experiments.bandits.BanditPolicy`, rewards from the goal
   metric of the people exposed before the period began) and keeps an exposed person
   on their first arm. On a slot the oldest running experiment that enrolls the person
   wins; the others do not show;
4. a first exposure is logged once: an ``Experiment Viewed`` event (``experiment_id``,
   ``variation_id``; a deterministic messageId, so a retry is a duplicate) through the
   normal ingestion path (consent and suppression apply), and, when it was stored, a row
   in ``exposures``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from sartor.clock import iso, now_ms
from sartor.collect.errors import FieldError, PayloadError, RateLimited
from sartor.experiments import definitions
from sartor.experiments.analysis import (
    exposed_profiles,
    metric_report,
    person_values,
    sample_stats,
    srm_doc,
)
from sartor.experiments.assignment import ExperimentResult, assign, hash
from sartor.experiments.bandits import BanditPolicy
from sartor.experiments.stats import srm_test
from sartor.privacy import erasure
from sartor.privacy.pii import derive_key, keyed_hash
from sartor.profiles import folds
from sartor.profiles import store as profile_store
from sartor.segments.rules import Context, Rule, compile_rule
from sartor.storage.db import write_tx
from sartor.storage.sql import chunks, execute_many, insert_ignore
from sartor.storage.tables import (
    experiments,
    exposures,
    identities,
    memberships,
    profiles,
    sticky_assignments,
)

if TYPE_CHECKING:
    from sartor.engine import Engine, WorkspaceRef
    from sartor.workspace import Workspace

log = logging.getLogger("sartor.experiments")

VIEWED = "Experiment Viewed"
HOLDOUT_KEY = "$holdout"
HOLDOUT, PERSONALIZED = "holdout", "personalized"
DEFAULT_HOLDOUT_METRIC = {"type": "conversion", "event": "Order Completed"}
_CACHE_MS = 2_000
_RESERVED = ("id", "userId", "anonymousId", "profileId", "segments", "traits")


class ExperimentNotFound(LookupError):
    pass


class ExperimentConflict(ValueError):
    pass


def in_holdout(share: float, seed: str, value: str) -> bool:
    """Whether ``value`` (a userId or anonymousId) is in a holdout of ``share``."""
    n = hash(seed, value, 2)
    return n is not None and n < share


def _message_id(ws: str, experiment: str, subject: str) -> str:
    digest = hashlib.sha256(f"{ws}|{experiment}|{subject}".encode()).hexdigest()
    return "exp-" + digest[:40]


@dataclass
class _Live:
    """A running experiment, ready to run."""

    doc: dict[str, Any]
    gb: dict[str, Any]
    rule: Rule | None
    segments: frozenset[str] | None

    @property
    def key(self) -> str:
        return str(self.doc["key"])

    @property
    def slot(self) -> str | None:
        return self.doc["slot"]


class _StickyStore:
    """A :class:`~sartor.experiments.assignment.StickyBucketStore` over
    ``sticky_assignments``: documents are read on first use and written at :meth:`flush`,
    keyed by a keyed hash of the attribute value (the table holds no raw ids)."""

    def __init__(self, service: Experiments, ws: Workspace) -> None:
        self.service = service
        self.ws = ws
        self.docs: dict[tuple[str, str], dict[str, str]] = {}
        self.dirty: set[tuple[str, str]] = set()

    def _hash(self, value: str) -> str:
        return keyed_hash(self.service.sticky_key(self.ws.id), value)

    def get(self, attribute_name: str, attribute_value: str) -> Mapping[str, str]:
        key = (attribute_name, attribute_value)
        if key not in self.docs:
            t = sticky_assignments
            with self.service.db.connect() as conn:
                found = conn.execute(
                    select(t.c.assignments).where(
                        t.c.workspace_id == self.ws.id,
                        t.c.attribute_name == attribute_name,
                        t.c.value_hash == self._hash(attribute_value),
                    )
                ).scalar()
            self.docs[key] = dict(found or {})
        return dict(self.docs[key])

    def save(
        self, attribute_name: str, attribute_value: str, assignments: Mapping[str, str]
    ) -> None:
        self.docs[(attribute_name, attribute_value)] = dict(assignments)
        self.dirty.add((attribute_name, attribute_value))

    def flush(self, pid: str | None, now: int) -> None:
        if not self.dirty:
            return
        t = sticky_assignments
        with write_tx(self.service.db) as conn:
            module = postgresql if conn.dialect.name == "postgresql" else sqlite
            for name, value in sorted(self.dirty):
                row = {
                    "workspace_id": self.ws.id,
                    "attribute_name": name,
                    "value_hash": self._hash(value),
                    "profile_id": pid,
                    "assignments": self.docs[(name, value)],
                    "updated_at": now,
                }
                stmt = module.insert(t).values(row)
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["workspace_id", "attribute_name", "value_hash"],
                        set_={
                            "assignments": stmt.excluded.assignments,
                            "profile_id": stmt.excluded.profile_id,
                            "updated_at": stmt.excluded.updated_at,
                        },
                    )
                )
        self.dirty.clear()


class _GroupInsert:
    """Insert-ignore of exposure rows, with concurrent callers' rows combined into one
    transaction: whoever gets the commit lock writes everything queued so far (on SQLite
    each commit is an fsync, and decisions arrive many at a time)."""

    def __init__(self, db: Any) -> None:
        self.db = db
        self._queue_lock = threading.Lock()
        self._commit_lock = threading.Lock()
        self._pending: list[tuple[list[dict[str, Any]], threading.Event, list[BaseException]]] = []

    def insert(self, rows: list[dict[str, Any]]) -> None:
        done, errors = threading.Event(), list[BaseException]()
        with self._queue_lock:
            self._pending.append((rows, done, errors))
        with self._commit_lock:
            if not done.is_set():
                with self._queue_lock:
                    batch, self._pending = self._pending, []
                try:
                    with write_tx(self.db) as conn:
                        execute_many(
                            conn, insert_ignore(conn, exposures), [r for b in batch for r in b[0]]
                        )
                except BaseException as exc:
                    for _, _, errs in batch:
                        errs.append(exc)
                    raise
                finally:
                    for _, event, _ in batch:
                        event.set()
        if errors:
            raise errors[0]


@dataclass
class _Person:
    """Who a decision is for."""

    ref: str
    pid: str | None
    ident: dict[str, str] | None  # the ids the exposure event is sent under
    attributes: dict[str, Any]
    memberships: frozenset[str]
    view: dict[str, Any]
    seen: dict[str, str]  # experiment key -> variation of the first exposure


class Experiments:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.db = engine.db
        self._live_cache: dict[str, tuple[int, list[_Live]]] = {}
        self._policies: dict[tuple[str, str, int, int], BanditPolicy] = {}
        self._keys: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._exposures = _GroupInsert(engine.db)

    def sticky_key(self, ws_id: str) -> bytes:
        key = self._keys.get(ws_id)
        if key is None:
            key = self._keys[ws_id] = derive_key(self.engine.settings.secret_key, ws_id, "sticky")
        return key

    # -- definitions ----------------------------------------------------------------------

    @staticmethod
    def _doc(row: Any) -> dict[str, Any]:
        return {
            "key": row.key,
            "name": row.name,
            "description": row.description,
            "status": row.status,
            "kind": row.kind,
            "slot": row.slot,
            "variations": row.variations,
            "coverage": row.coverage,
            "targeting": row.targeting,
            "hashAttribute": row.hash_attribute,
            "fallbackAttribute": row.fallback_attribute,
            "seed": row.seed,
            "hashVersion": row.hash_version,
            "namespace": row.namespace,
            "sticky": bool(row.sticky),
            "bucketVersion": row.bucket_version,
            "minBucketVersion": row.min_bucket_version,
            "goal": row.goal,
            "guardrails": row.guardrails or [],
            "bandit": row.bandit,
            "analysis": row.analysis,
            "startedAt": row.start_at,
            "stoppedAt": row.end_at,
            "createdAt": row.created_at,
            "updatedAt": row.updated_at,
        }

    @staticmethod
    def _columns(doc: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "name": doc["name"],
            "description": doc["description"],
            "status": doc["status"],
            "kind": doc["kind"],
            "slot": doc["slot"],
            "variations": doc["variations"],
            "coverage": doc["coverage"],
            "targeting": doc["targeting"],
            "hash_attribute": doc["hashAttribute"],
            "fallback_attribute": doc["fallbackAttribute"],
            "seed": doc["seed"],
            "hash_version": doc["hashVersion"],
            "namespace": doc["namespace"],
            "sticky": int(doc["sticky"]),
            "bucket_version": doc["bucketVersion"],
            "min_bucket_version": doc["minBucketVersion"],
            "goal": doc["goal"],
            "guardrails": doc["guardrails"],
            "bandit": doc["bandit"],
            "analysis": doc["analysis"],
        }

    def _row(self, conn: Connection, ws: str, key: str) -> Any:
        return conn.execute(
            select(experiments).where(experiments.c.workspace_id == ws, experiments.c.key == key)
        ).first()

    def all(self, ref: WorkspaceRef, status: str | None = None) -> list[dict[str, Any]]:
        ws = self.engine.workspace(ref)
        query = select(experiments).where(experiments.c.workspace_id == ws.id)
        if status is not None:
            query = query.where(experiments.c.status == status)
        with self.db.connect() as conn:
            return [self._doc(r) for r in conn.execute(query.order_by(experiments.c.key))]

    def get(self, ref: WorkspaceRef, key: str) -> dict[str, Any] | None:
        ws = self.engine.workspace(ref)
        with self.db.connect() as conn:
            row = self._row(conn, ws.id, key)
        return self._doc(row) if row else None

    def _require(self, ws: str, key: str) -> dict[str, Any]:
        with self.db.connect() as conn:
            row = self._row(conn, ws, key)
        if row is None:
            raise ExperimentNotFound(f"no experiment {key!r}")
        return self._doc(row)

    def _check_segments(self, ws: str, doc: Mapping[str, Any]) -> None:
        for i, seg in enumerate((doc.get("targeting") or {}).get("segments") or []):
            if seg.startswith(("rfm:", "cluster:")):
                continue
            if self.engine.segments.get(ws, seg) is None:
                raise FieldError(f"targeting.segments[{i}]", f"no segment {seg!r}")

    def create(self, ref: WorkspaceRef, body: Any) -> dict[str, Any]:
        """A new experiment (``status`` draft, or running to start at once)."""
        ws = self.engine.workspace(ref)
        doc = definitions.normalize(body)
        if doc["status"] == "stopped":
            raise FieldError("status", "a new experiment is draft or running")
        self._check_segments(ws.id, doc)
        now = now_ms()
        with write_tx(self.db) as conn:
            if self._row(conn, ws.id, doc["key"]) is not None:
                raise ExperimentConflict(f"experiment {doc['key']!r} exists")
            conn.execute(
                experiments.insert().values(
                    workspace_id=ws.id,
                    key=doc["key"],
                    start_at=now if doc["status"] == "running" else None,
                    end_at=None,
                    created_at=now,
                    updated_at=now,
                    **self._columns(doc),
                )
            )
        self._changed(ws.id)
        return self._require(ws.id, doc["key"])

    def update(self, ref: WorkspaceRef, key: str, body: Any) -> dict[str, Any]:
        """Replace a definition. While it runs, what decides who gets which variation
        (kind, hashing, variation keys) cannot change: stop it first."""
        ws = self.engine.workspace(ref)
        current = self._require(ws.id, key)
        if isinstance(body, Mapping) and "status" not in body:
            body = {**body, "status": current["status"]}
        doc = definitions.normalize(body, key=key)
        if doc["status"] != current["status"]:
            raise FieldError("status", "use start or stop to change the status")
        if current["status"] == "running":
            for name in definitions.FROZEN_WHILE_RUNNING:
                if doc[name] != current[name]:
                    raise FieldError(name, "cannot change while the experiment runs; stop it")
            before = [v["key"] for v in current["variations"]]
            after = [v["key"] for v in doc["variations"]]
            if before != after:
                raise FieldError(
                    "variations", "variation keys cannot change while the experiment runs"
                )
        self._check_segments(ws.id, doc)
        with write_tx(self.db) as conn:
            conn.execute(
                update(experiments)
                .where(experiments.c.workspace_id == ws.id, experiments.c.key == key)
                .values(updated_at=now_ms(), **self._columns(doc))
            )
        self._changed(ws.id)
        return self._require(ws.id, key)

    def _set_status(self, ref: WorkspaceRef, key: str, status: str) -> dict[str, Any]:
        ws = self.engine.workspace(ref)
        current = self._require(ws.id, key)
        now = now_ms()
        values: dict[str, Any] = {"status": status, "updated_at": now}
        if status == "running":
            values["end_at"] = None
            if current["startedAt"] is None:
                values["start_at"] = now
        else:
            values["end_at"] = now
        with write_tx(self.db) as conn:
            conn.execute(
                update(experiments)
                .where(experiments.c.workspace_id == ws.id, experiments.c.key == key)
                .values(**values)
            )
        self._changed(ws.id)
        return self._require(ws.id, key)

    def start(self, ref: WorkspaceRef, key: str) -> dict[str, Any]:
        return self._set_status(ref, key, "running")

    def stop(self, ref: WorkspaceRef, key: str) -> dict[str, Any]:
        return self._set_status(ref, key, "stopped")

    def delete(self, ref: WorkspaceRef, key: str) -> bool:
        """Delete an experiment (not while it runs) and its exposures."""
        ws = self.engine.workspace(ref)
        current = self.get(ws, key)
        if current is None:
            return False
        if current["status"] == "running":
            raise ExperimentConflict(f"experiment {key!r} is running; stop it first")
        with write_tx(self.db) as conn:
            conn.execute(
                delete(experiments).where(
                    experiments.c.workspace_id == ws.id, experiments.c.key == key
                )
            )
            conn.execute(
                delete(exposures).where(
                    exposures.c.workspace_id == ws.id, exposures.c.experiment_key == key
                )
            )
        self._changed(ws.id)
        return True

    def _changed(self, ws: str) -> None:
        with self._lock:
            self._live_cache.pop(ws, None)

    def _live(self, ws: str) -> list[_Live]:
        now = now_ms()
        cached = self._live_cache.get(ws)
        if cached is not None and cached[0] > now:
            return cached[1]
        with self.db.connect() as conn:
            rows = conn.execute(
                select(experiments).where(
                    experiments.c.workspace_id == ws, experiments.c.status == "running"
                )
            ).all()
        live: list[_Live] = []
        for row in sorted(rows, key=lambda r: (r.start_at or 0, r.key)):
            doc = self._doc(row)
            targeting = doc["targeting"] or {}
            rule = None
            if targeting.get("rule") is not None:
                try:
                    rule = compile_rule(targeting["rule"])
                except FieldError:
                    log.warning("experiment %s has an invalid rule; not run", doc["key"])
                    continue
            segs = targeting.get("segments")
            live.append(
                _Live(doc, definitions.growthbook(doc), rule, frozenset(segs) if segs else None)
            )
        with self._lock:
            self._live_cache[ws] = (now + _CACHE_MS, live)
        return live

    # -- deciding -------------------------------------------------------------------------

    def _person(
        self,
        ws: Workspace,
        user: str,
        kind: str | None,
        anonymous_id: str | None,
        attributes: Mapping[str, Any] | None,
        needs_view: bool,
        now: int,
    ) -> _Person:
        lookup = self.engine._lookup_id(ws, user)
        pid: str | None = None
        links: list[dict[str, str]] = []
        traits: dict[str, Any] = {}
        member_of: frozenset[str] = frozenset()
        seen: dict[str, str] = {}
        view: dict[str, Any] = {}
        with self.db.connect() as conn:
            found = {
                row.kind: row.profile_id
                for row in conn.execute(
                    select(identities.c.kind, identities.c.profile_id).where(
                        identities.c.workspace_id == ws.id, identities.c.value == lookup
                    )
                )
            }
            wanted = {"userId": "user_id", "anonymousId": "anonymous_id"}.get(kind or "")
            if wanted:  # the caller said which kind of id it is
                pid = found.get(wanted)
            elif found:
                pid = found.get("user_id") or found.get("anonymous_id") or min(found.values())
            elif lookup.startswith("p_"):  # a profile id
                pids = erasure.find_profiles(conn, ws.id, lookup)
                pid = pids[0] if pids else None
            if pid is None and anonymous_id is not None:  # logging in on a known device
                pid = conn.execute(
                    select(identities.c.profile_id).where(
                        identities.c.workspace_id == ws.id,
                        identities.c.kind == "anonymous_id",
                        identities.c.value == anonymous_id,
                    )
                ).scalar()
            row = None
            if pid is not None:
                links = profile_store.identities_of(conn, ws.id, pid)
                row = conn.execute(
                    select(
                        profiles.c.profile_id,
                        profiles.c.traits,
                        profiles.c.computed,
                        profiles.c.consent,
                        profiles.c.last_seq,
                    ).where(profiles.c.workspace_id == ws.id, profiles.c.profile_id == pid)
                ).first()
                traits = dict((row.traits if row is not None else None) or {})
                member_of = frozenset(
                    conn.execute(
                        select(memberships.c.segment_key).where(
                            memberships.c.workspace_id == ws.id, memberships.c.profile_id == pid
                        )
                    ).scalars()
                )
                seen = {
                    r.experiment_key: r.variation_key
                    for r in conn.execute(
                        select(exposures.c.experiment_key, exposures.c.variation_key).where(
                            exposures.c.workspace_id == ws.id, exposures.c.profile_id == pid
                        )
                    )
                }
            if needs_view:
                doc, _ = profile_store.doc_of(row)
                view = {
                    "profileId": pid,
                    "traits": traits,
                    "computed": folds.view(doc, now, self.engine.settings.profile_config),
                    "consent": (row.consent if row is not None else None) or {},
                }
        user_ids = [link["value"] for link in links if link["kind"] == "user_id"]
        anon_ids = [link["value"] for link in links if link["kind"] == "anonymous_id"]
        is_user = kind == "userId" or (kind is None and "user_id" in found)
        is_anon = not is_user and (
            kind == "anonymousId" or (kind is None and "anonymous_id" in found)
        )
        user_id = user if is_user else (user_ids[0] if user_ids else None)
        anon = anonymous_id or (user if is_anon else (anon_ids[0] if anon_ids else None))
        if not found and pid is None and kind is None and lookup == user:
            user_id = user  # someone new: their id is taken for a userId
        ident: dict[str, str] | None = None
        if user_id is not None:
            ident = {"userId": user_id}
            if anon is not None and (anonymous_id is not None or is_anon):
                ident["anonymousId"] = anon
        elif anon is not None:
            ident = {"anonymousId": anon}
        attrs: dict[str, Any] = {k: v for k, v in traits.items() if k not in _RESERVED}
        attrs.update({k: v for k, v in (attributes or {}).items() if k not in _RESERVED})
        attrs.update(
            id=user,
            userId=user_id,
            anonymousId=anon,
            profileId=pid,
            traits=traits,
            segments=sorted(member_of),
        )
        return _Person(user, pid, ident, attrs, member_of, view, seen)

    def _targeted(self, exp: _Live, person: _Person, ws: str, now: int) -> bool:
        if exp.segments is not None and not (exp.segments & person.memberships):
            return False
        if exp.rule is None:
            return True
        ctx = Context(now=now, memberships=person.memberships)
        pid = person.pid
        if exp.rule.needs_events and pid is not None:
            with self.db.connect() as conn:
                counter = self.engine.segments._event_counter(conn, ws, [pid], now)
                ctx.count_events = lambda cond: counter(pid, cond)
                return exp.rule(person.view, ctx)
        ctx.count_events = lambda _cond: 0  # nobody yet: no past events
        return exp.rule(person.view, ctx)

    def _policy(self, ws: Workspace, exp: _Live, period: int, period_ms: int) -> BanditPolicy:
        doc = exp.doc
        cache_key = (ws.id, exp.key, int(doc["updatedAt"]), period)
        policy = self._policies.get(cache_key)
        if policy is not None:
            return policy
        bandit, goal = doc["bandit"], doc["goal"]
        keys = [v["key"] for v in doc["variations"]]
        policy = BanditPolicy(
            keys,
            algorithm=bandit["algorithm"],
            reward="bernoulli" if goal["type"] == "conversion" else "gaussian",
            epsilon=bandit["epsilon"],
            min_samples=bandit["minSamples"],
            floor_share=bandit["floorShare"],
            salt=doc["seed"],
        )
        # Rewards up to the period's start only: every process computes the same weights.
        start = period * period_ms
        with self.db.connect() as conn:
            exposed = exposed_profiles(
                conn, ws.id, exp.key, self.engine.settings.secret_key, until=start
            )
            values = person_values(conn, ws.id, exposed, goal, until=start)
        for i, stats in enumerate(sample_stats(values, exposed, keys)):
            policy.record_stats(i, stats)
        policy.weights(period)
        with self._lock:
            if len(self._policies) > 512:
                self._policies.clear()
            self._policies[cache_key] = policy
        return policy

    def _run(
        self, ws: Workspace, exp: _Live, person: _Person, store: _StickyStore, now: int
    ) -> dict[str, Any]:
        doc = exp.doc
        out: dict[str, Any] = {
            "slot": doc["slot"],
            "holdout": False,
            "inExperiment": False,
            "variation": None,
            "payload": None,
        }
        if not self._targeted(exp, person, ws.id, now):
            return {**out, "reason": "not_targeted"}
        if doc["kind"] == "bandit":
            gate = assign({**exp.gb, "weights": None}, person.attributes)
            if not gate.in_experiment:
                return {**out, "reason": gate.reason}
            variations = doc["variations"]
            keys = [v["key"] for v in variations]
            if exp.key in person.seen and person.seen[exp.key] in keys:
                index, reason = keys.index(person.seen[exp.key]), "first_exposure"
            else:
                period_ms = int(doc["bandit"]["periodHours"] * 3_600_000)
                period = now // period_ms
                policy = self._policy(ws, exp, period, period_ms)
                index, reason = policy.choose(str(gate.hash_value), period), "bandit"
            v = variations[index]
            return {
                **out,
                "inExperiment": True,
                "variation": v["key"],
                "payload": v["payload"],
                "reason": reason,
            }
        result: ExperimentResult = assign(
            exp.gb, person.attributes, sticky_store=store if doc["sticky"] else None
        )
        if not result.in_experiment:
            return {**out, "reason": result.reason}
        return {
            **out,
            "inExperiment": True,
            "variation": result.key,
            "payload": result.value,
            "reason": result.reason,
        }

    def decide(
        self,
        ref: WorkspaceRef,
        user: str,
        slots: Sequence[str] | None = None,
        experiments: Sequence[str] | None = None,
        attributes: Mapping[str, Any] | None = None,
        *,
        kind: str | None = None,
        anonymous_id: str | None = None,
        now: int | None = None,
    ) -> dict[str, Any]:
        """The variation (and its payload) of every running experiment on ``slots`` and of
        the ``experiments`` named (every running experiment when neither is given), for
        the person ``user`` (``kind`` says whether it is a userId or an anonymousId; by
        default it is looked up, and a new id is taken for a userId). Logs first
        exposures. See the module docstring."""
        ws = self.engine.workspace(ref)
        now = now_ms() if now is None else now
        if kind not in (None, "userId", "anonymousId"):
            raise FieldError("kind", "must be userId or anonymousId")
        live = self._live(ws.id)
        wanted_slots = list(dict.fromkeys(slots or []))
        wanted = list(dict.fromkeys(experiments or []))
        if not wanted_slots and not wanted:
            candidates = live
            slot_names = sorted({x.slot for x in live if x.slot})
        else:
            candidates = [x for x in live if x.key in wanted or (x.slot in wanted_slots)]
            slot_names = wanted_slots
        needs_view = any(x.rule is not None for x in candidates)
        person = self._person(ws, user, kind, anonymous_id, attributes, needs_view, now)

        share = ws.settings.holdout_share
        holdout = False
        if share > 0:
            if HOLDOUT_KEY in person.seen:
                holdout = person.seen[HOLDOUT_KEY] == HOLDOUT
            else:
                value = person.attributes["userId"] or person.attributes["anonymousId"] or user
                holdout = in_holdout(share, ws.settings.holdout_seed, str(value))
        first: list[tuple[str, str, dict[str, Any]]] = []
        if share > 0 and HOLDOUT_KEY not in person.seen:
            first.append(
                (HOLDOUT_KEY, HOLDOUT if holdout else PERSONALIZED, {"holdout_share": share})
            )

        out_slots: dict[str, dict[str, Any]] = {}
        out_exps: dict[str, dict[str, Any]] = {}
        store: _StickyStore | None = None
        if holdout:
            for s in slot_names:
                out_slots[s] = {
                    "holdout": True,
                    "experiment": None,
                    "variation": None,
                    "payload": None,
                }
            for x in candidates:
                out_exps[x.key] = {
                    "slot": x.slot,
                    "holdout": True,
                    "inExperiment": False,
                    "variation": None,
                    "payload": None,
                    "reason": "holdout",
                }
        else:
            store = _StickyStore(self, ws)
            for s in slot_names:
                out_slots[s] = {
                    "holdout": False,
                    "experiment": None,
                    "variation": None,
                    "payload": None,
                }
            taken: set[str] = set()
            for x in candidates:
                decision = self._run(ws, x, person, store, now)
                if decision["inExperiment"] and x.slot is not None:
                    if x.slot in taken:  # an older experiment has the slot
                        decision = {
                            **decision,
                            "inExperiment": False,
                            "variation": None,
                            "payload": None,
                            "reason": "slot_taken",
                        }
                    else:
                        taken.add(x.slot)
                        if x.slot in out_slots:
                            out_slots[x.slot] = {
                                "holdout": False,
                                "experiment": x.key,
                                "variation": decision["variation"],
                                "payload": decision["payload"],
                            }
                out_exps[x.key] = decision
                if decision["inExperiment"] and person.seen.get(x.key) is None:
                    props = {
                        "variation_name": next(
                            v["name"]
                            for v in x.doc["variations"]
                            if v["key"] == decision["variation"]
                        ),
                        "experiment_name": x.doc["name"],
                    }
                    if x.slot:
                        props["slot"] = x.slot
                    first.append((x.key, decision["variation"], props))
        pid = self._log_exposures(ws, person, first, now) if first else person.pid
        if store is not None:
            try:
                store.flush(pid, now)
            except Exception:  # remembering is best effort: the hash decides again
                log.exception("could not save sticky assignments")
        for name in wanted:
            out_exps.setdefault(
                name,
                {
                    "slot": None,
                    "holdout": holdout,
                    "inExperiment": False,
                    "variation": None,
                    "payload": None,
                    "reason": "not_running",
                },
            )
        return {"holdout": holdout, "slots": out_slots, "experiments": out_exps}

    def _log_exposures(
        self,
        ws: Workspace,
        person: _Person,
        first: list[tuple[str, str, dict[str, Any]]],
        now: int,
    ) -> str | None:
        """``Experiment Viewed`` into the log, then the exposure rows of the stored ones."""
        if person.ident is None:
            return person.pid
        subject = person.pid or ":".join(f"{k}={v}" for k, v in sorted(person.ident.items()))
        items = [
            {
                "type": "track",
                "event": VIEWED,
                "messageId": _message_id(ws.id, key, subject),
                "timestamp": now,
                "properties": {"experiment_id": key, "variation_id": variation, **props},
                **person.ident,
            }
            for key, variation, props in first
        ]
        try:
            result = self.engine.ingest(ws, items)
        except (RateLimited, PayloadError) as exc:
            log.warning("exposures not logged: %s", exc)
            return person.pid
        kept = {
            item["index"] for item in result.items if item.get("status") in ("stored", "duplicate")
        }
        if not kept:
            return person.pid
        kind, value = (
            ("user_id", person.ident["userId"])
            if "userId" in person.ident
            else ("anonymous_id", person.ident["anonymousId"])
        )
        with self.db.connect() as conn:  # the profile now (the event may have merged two)
            pid = (
                conn.execute(
                    select(identities.c.profile_id).where(
                        identities.c.workspace_id == ws.id,
                        identities.c.kind == kind,
                        identities.c.value == value,
                    )
                ).scalar()
                or person.pid
            )
        if pid is None:
            return None
        self._exposures.insert(
            [
                {
                    "workspace_id": ws.id,
                    "experiment_key": key,
                    "profile_id": pid,
                    "variation_key": variation,
                    "first_at": now,
                }
                for i, (key, variation, _) in enumerate(first)
                if i in kept
            ]
        )
        return pid

    # -- analysis -------------------------------------------------------------------------

    def results(self, ref: WorkspaceRef, key: str) -> dict[str, Any]:
        """Per variation: people exposed, the goal and each guardrail with every
        variation against the first (the control), verdicts, and the SRM check."""
        ws = self.engine.workspace(ref)
        doc = self._require(ws.id, key)
        keys = [v["key"] for v in doc["variations"]]
        weights = [v["weight"] for v in doc["variations"]]
        metrics = ([doc["goal"]] if doc["goal"] else []) + list(doc["guardrails"])
        with self.db.connect() as conn:
            exposed = exposed_profiles(conn, ws.id, key, self.engine.settings.secret_key)
            values = [person_values(conn, ws.id, exposed, m) for m in metrics]
        counts = [0] * len(keys)
        for e in exposed.values():
            if e.variation in keys:
                counts[keys.index(e.variation)] += 1
        # A bandit moves traffic on purpose: its split is not a planned ratio.
        srm = srm_test(counts, weights) if doc["kind"] == "ab" and sum(counts) > 0 else None
        reports = [
            metric_report(m, v, exposed, keys, doc["analysis"], srm)
            for m, v in zip(metrics, values, strict=True)
        ]
        goal = reports[0] if doc["goal"] else None
        guardrails = reports[1:] if doc["goal"] else reports
        return {
            "experiment": key,
            "name": doc["name"],
            "status": doc["status"],
            "kind": doc["kind"],
            "startedAt": iso(doc["startedAt"]),
            "stoppedAt": iso(doc["stoppedAt"]),
            "computedAt": iso(now_ms()),
            "users": sum(counts),
            "variations": [
                {"key": k, "name": v["name"], "weight": w, "users": n}
                for k, v, w, n in zip(keys, doc["variations"], weights, counts, strict=True)
            ],
            "srm": srm_doc(srm) if srm is not None else None,
            "goal": goal,
            "guardrails": guardrails,
            "verdicts": [c["verdict"] for c in goal["comparisons"]] if goal else [],
        }

    def holdout_report(self, ref: WorkspaceRef, metric: Any = None) -> dict[str, Any]:
        """The lift of personalization: everyone decided outside the holdout against the
        holdout, on ``metric`` (default: conversion to ``Order Completed``)."""
        ws = self.engine.workspace(ref)
        m = definitions.metric(metric if metric is not None else DEFAULT_HOLDOUT_METRIC, "metric")
        keys = [HOLDOUT, PERSONALIZED]
        with self.db.connect() as conn:
            exposed = exposed_profiles(conn, ws.id, HOLDOUT_KEY, self.engine.settings.secret_key)
            values = person_values(conn, ws.id, exposed, m)
        counts = [len([e for e in exposed.values() if e.variation == k]) for k in keys]
        share = ws.settings.holdout_share
        srm = srm_test(counts, [share, 1 - share]) if 0 < share < 1 and sum(counts) > 0 else None
        report = metric_report(m, values, exposed, keys, definitions.analysis_settings(None), srm)
        return {
            "holdoutShare": share,
            "users": dict(zip(keys, counts, strict=True)),
            "srm": srm_doc(srm) if srm is not None else None,
            "lift": report["comparisons"][0],
            "verdict": report["comparisons"][0]["verdict"],
            **report,
        }

    # -- erasure --------------------------------------------------------------------------

    def erase(
        self, conn: Connection, ws: str, pids: Iterable[str], ids: Iterable[str] = ()
    ) -> dict[str, int]:
        """A person's exposures and sticky assignments (call before their identities go:
        the sticky documents are found by the hashes of their ids too)."""
        pid_list = sorted(set(pids))
        values = set(ids)
        for part in chunks(pid_list):
            values.update(
                conn.execute(
                    select(identities.c.value).where(
                        identities.c.workspace_id == ws, identities.c.profile_id.in_(part)
                    )
                ).scalars()
            )
        key = self.sticky_key(ws)
        hashes = sorted(keyed_hash(key, v) for v in values)
        n_exposures = n_sticky = 0
        for part in chunks(pid_list):
            n_exposures += conn.execute(
                delete(exposures).where(
                    exposures.c.workspace_id == ws, exposures.c.profile_id.in_(part)
                )
            ).rowcount
        t = sticky_assignments
        for part_p, part_h in _zip_chunks(pid_list, hashes):
            n_sticky += conn.execute(
                delete(t).where(
                    t.c.workspace_id == ws,
                    or_(t.c.profile_id.in_(part_p or [""]), t.c.value_hash.in_(part_h or [""])),
                )
            ).rowcount
        return {"exposures": n_exposures, "sticky_assignments": n_sticky}


def _zip_chunks(a: list[str], b: list[str]) -> Iterable[tuple[list[str], list[str]]]:
    parts_a, parts_b = list(chunks(a, 400)), list(chunks(b, 400))
    for i in range(max(len(parts_a), len(parts_b))):
        yield (parts_a[i] if i < len(parts_a) else [], parts_b[i] if i < len(parts_b) else [])
