"""The model registry: versioned models per workspace, one active version per slot.

A *slot* is a model's name in the registry (``als``, ``ease``, ``trending``...). Publishing a
version writes its artifacts to ``SARTOR_HOME/models/<workspace>/<slot>/v<version>/``
(``model.npz`` + ``model.json`` from the model, ``vocab.npz`` with the user and item ids; no
pickle anywhere), records it in ``model_versions`` and makes it the active one in the same
transaction. Every process serving recommendations asks :meth:`Registry.active`, which looks
at the table at most every ``check_seconds`` and loads the versions that changed: a model
trained by ``sartor train`` in another process is hot-swapped into a running server without a
restart.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Connection, func, select, update
from sqlalchemy import Engine as SAEngine

from sartor.clock import now_ms
from sartor.recommend.base import Recommender
from sartor.recommend.vocab import Vocabulary
from sartor.storage import db
from sartor.storage.tables import model_versions

log = logging.getLogger("sartor.recommend")

VOCAB_FILE = "vocab.npz"
SLOT_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_-")
# What is read of a stored version to find and load its artifacts (see Registry._load).
ARTIFACT_COLUMNS = (
    model_versions.c.slot,
    model_versions.c.version,
    model_versions.c.kind,
    model_versions.c.path,
    model_versions.c.trained_at,
)


def model_class(kind: str) -> type[Recommender]:
    from sartor.recommend.models import MODELS

    by_class = {cls.__name__: cls for cls in MODELS.values()}
    if kind in by_class:
        return by_class[kind]
    if kind in MODELS:
        return MODELS[kind]
    raise ValueError(f"unknown model kind {kind!r}; known: {sorted(MODELS)}")


@dataclass(frozen=True)
class LoadedModel:
    """An active model, ready to serve: the model and the ids of its rows."""

    slot: str
    version: int
    kind: str
    model: Recommender
    users: Vocabulary
    items: Vocabulary
    trained_at: int


def check_slot(slot: str) -> str:
    if not slot or len(slot) > 100 or not set(slot) <= SLOT_CHARS:
        raise ValueError(
            f"invalid model slot {slot!r}: use 1-100 lower-case letters, digits, '_' or '-'"
        )
    return slot


def _retire_active(conn: Connection, ws_id: str, slot: str) -> None:
    conn.execute(
        update(model_versions)
        .where(
            model_versions.c.workspace_id == ws_id,
            model_versions.c.slot == slot,
            model_versions.c.status == "active",
        )
        .values(status="retired")
    )


class Registry:
    def __init__(self, db_engine: SAEngine, models_dir: Path, check_seconds: float = 2.0) -> None:
        self.db = db_engine
        self.models_dir = Path(models_dir)
        self.check_seconds = check_seconds
        self._lock = threading.RLock()
        # workspace -> (checked at, {slot: LoadedModel})
        self._cache: dict[str, tuple[float, dict[str, LoadedModel]]] = {}

    # -- publishing -----------------------------------------------------------------------

    def publish(
        self,
        ws_id: str,
        slot: str,
        model: Recommender,
        users: Vocabulary,
        items: Vocabulary,
        *,
        metrics: dict[str, Any] | None = None,
        n_interactions: int = 0,
        train_seconds: float = 0.0,
        activate: bool = True,
    ) -> int:
        """Save ``model`` as the next version of ``slot`` and (by default) make it active."""
        check_slot(slot)
        with db.write_tx(self.db) as conn:
            latest = conn.execute(
                select(func.max(model_versions.c.version)).where(
                    model_versions.c.workspace_id == ws_id, model_versions.c.slot == slot
                )
            ).scalar()
            version = int(latest or 0) + 1
            rel = Path(ws_id) / slot / f"v{version}"
            folder = self.models_dir / rel
            if folder.exists():  # left by a crash between saving and committing
                shutil.rmtree(folder)
            model.save(folder)
            np.savez(
                folder / VOCAB_FILE,
                allow_pickle=False,
                users=users.to_array(),
                items=items.to_array(),
            )
            if activate:
                _retire_active(conn, ws_id, slot)
            conn.execute(
                model_versions.insert().values(
                    workspace_id=ws_id,
                    slot=slot,
                    version=version,
                    kind=model.name,
                    params=model.get_params(),
                    metrics=metrics or {},
                    path=rel.as_posix(),
                    status="active" if activate else "retired",
                    n_users=len(users),
                    n_items=len(items),
                    n_interactions=int(n_interactions),
                    train_seconds=float(train_seconds),
                    trained_at=now_ms(),
                )
            )
        self.invalidate(ws_id)
        return version

    def activate(self, ws_id: str, slot: str, version: int) -> None:
        """Make an earlier (or later) version the active one: a rollback."""
        with db.write_tx(self.db) as conn:
            found = conn.execute(
                select(model_versions.c.status).where(
                    model_versions.c.workspace_id == ws_id,
                    model_versions.c.slot == slot,
                    model_versions.c.version == version,
                )
            ).first()
            if found is None:
                raise LookupError(f"no version {version} of model {slot!r}")
            if found.status == "failed":
                raise ValueError(f"version {version} of model {slot!r} failed; it cannot serve")
            _retire_active(conn, ws_id, slot)
            conn.execute(
                update(model_versions)
                .where(
                    model_versions.c.workspace_id == ws_id,
                    model_versions.c.slot == slot,
                    model_versions.c.version == version,
                )
                .values(status="active")
            )
        self.invalidate(ws_id)

    def versions(self, ws_id: str, slot: str | None = None) -> list[dict[str, Any]]:
        query = select(model_versions).where(model_versions.c.workspace_id == ws_id)
        if slot is not None:
            query = query.where(model_versions.c.slot == slot)
        query = query.order_by(model_versions.c.slot, model_versions.c.version.desc())
        with self.db.connect() as conn:
            return [
                {
                    "slot": r.slot,
                    "version": r.version,
                    "kind": r.kind,
                    "status": r.status,
                    "params": r.params,
                    "metrics": r.metrics,
                    "nUsers": r.n_users,
                    "nItems": r.n_items,
                    "nInteractions": r.n_interactions,
                    "trainSeconds": round(r.train_seconds, 3),
                    "trainedAt": r.trained_at,
                }
                for r in conn.execute(query)
            ]

    # -- serving --------------------------------------------------------------------------

    def invalidate(self, ws_id: str | None = None) -> None:
        with self._lock:
            if ws_id is None:
                self._cache.clear()
            else:
                cached = self._cache.get(ws_id)
                if cached is not None:
                    self._cache[ws_id] = (-1e18, cached[1])

    def active(self, ws_id: str) -> dict[str, LoadedModel]:
        """The active model of every slot of the workspace, loaded (and cached)."""
        clock = time.monotonic()
        cached = self._cache.get(ws_id)
        if cached is not None and clock - cached[0] < self.check_seconds:
            return cached[1]
        with self._lock:
            cached = self._cache.get(ws_id)
            if cached is not None and clock - cached[0] < self.check_seconds:
                return cached[1]
            current = cached[1] if cached else {}
            with self.db.connect() as conn:
                rows = conn.execute(
                    select(*ARTIFACT_COLUMNS).where(
                        model_versions.c.workspace_id == ws_id,
                        model_versions.c.status == "active",
                    )
                ).all()
            loaded: dict[str, LoadedModel] = {}
            for row in rows:
                have = current.get(row.slot)
                if have is not None and have.version == row.version:
                    loaded[row.slot] = have
                    continue
                try:
                    loaded[row.slot] = self._load(
                        row.slot, row.version, row.kind, row.path, row.trained_at
                    )
                except (OSError, ValueError, KeyError) as exc:
                    # A missing or damaged artifact must not take serving down: keep the
                    # version that served before, if any, and say why.
                    log.error(
                        "cannot load model %s v%s: %s",
                        row.slot,
                        row.version,
                        exc,
                        extra={"workspace": ws_id},
                    )
                    if have is not None:
                        loaded[row.slot] = have
            self._cache[ws_id] = (time.monotonic(), loaded)
            return loaded

    def _load(self, slot: str, version: int, kind: str, rel: str, trained_at: int) -> LoadedModel:
        folder = self.models_dir / rel
        model = model_class(kind).load(folder)
        with np.load(folder / VOCAB_FILE, allow_pickle=False) as data:
            users = Vocabulary.from_array(data["users"])
            items = Vocabulary.from_array(data["items"])
        return LoadedModel(slot, version, kind, model, users, items, trained_at)

    # -- erasure --------------------------------------------------------------------------

    def forget_users(self, ws_id: str, profile_ids: Iterable[str]) -> int:
        """Remove these users from every stored version of every model of the workspace:
        their rows and factors are zeroed and their ids blanked in the saved vocabulary, so
        no artifact on disk keeps them and they never appear as anyone's similar user.
        Returns how many (version, user) rows were removed."""
        wanted = set(profile_ids)
        if not wanted:
            return 0
        with self.db.connect() as conn:
            rows = conn.execute(
                select(*ARTIFACT_COLUMNS).where(model_versions.c.workspace_id == ws_id)
            ).all()
        removed = 0
        with self._lock:
            for row in rows:
                folder = self.models_dir / row.path
                if not (folder / VOCAB_FILE).exists():
                    continue
                with np.load(folder / VOCAB_FILE, allow_pickle=False) as data:
                    users = data["users"].copy()
                    items = data["items"].copy()
                hits = np.flatnonzero(np.isin(users, list(wanted)))
                if len(hits) == 0:
                    continue
                model = model_class(row.kind).load(folder)
                model.forget_users(hits)
                users[hits] = ""
                tmp = folder.with_name(folder.name + ".erasing")
                if tmp.exists():
                    shutil.rmtree(tmp)
                model.save(tmp)
                np.savez(tmp / VOCAB_FILE, allow_pickle=False, users=users, items=items)
                # Swap folders so a concurrent load sees either the old or the new version.
                old = folder.with_name(folder.name + ".old")
                folder.rename(old)
                tmp.rename(folder)
                shutil.rmtree(old, ignore_errors=True)
                removed += len(hits)
            self._cache.pop(ws_id, None)
        return removed


def describe(loaded: dict[str, LoadedModel]) -> dict[str, int]:
    """``{slot: version}`` of the models that served a response (for attribution)."""
    return {slot: m.version for slot, m in sorted(loaded.items())}
