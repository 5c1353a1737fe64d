"""Training and the model registry, on SQLite and PostgreSQL: every slot trains from the log
and the catalog, versions are published and activated, a version trained by another engine
(another process) is hot-swapped into a serving one, rollbacks, and erasure reaching the
saved artifacts."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sartor.cli import app
from sartor.engine import CreatedWorkspace, Engine
from sartor.recommend.registry import VOCAB_FILE, check_slot
from sartor.recommend.training import DEFAULT_SLOTS

CATEGORIES = ["kitchen", "garden", "toys"]


def shop(engine: Engine, ws: CreatedWorkspace, users: int = 24) -> None:
    """Each user views and buys within one category; items carry their category."""
    items = [
        {
            "id": f"{cat}-{i}",
            "title": f"{cat} thing {i}",
            "category": f"Home > {cat}",
            "price": 5.0 + i,
        }
        for cat in CATEGORIES
        for i in range(6)
    ]
    assert engine.catalog.upsert(ws.workspace.id, items).stored == len(items)
    batch = []
    for u in range(users):
        cat = CATEGORIES[u % 3]
        for i in range(4):
            item = f"{cat}-{(u + i) % 6}"
            batch.append(
                {
                    "type": "track",
                    "userId": f"user-{u}",
                    "event": "Product Viewed",
                    "properties": {"product_id": item, "category": f"Home > {cat}"},
                }
            )
        batch.append(
            {
                "type": "track",
                "userId": f"user-{u}",
                "event": "Order Completed",
                "properties": {
                    "order_id": f"o-{u}",
                    "products": [{"product_id": f"{cat}-{u % 6}", "price": 5, "quantity": 1}],
                },
            }
        )
    result = engine.batch(ws.workspace, {"batch": batch})
    assert not result.errors, result.errors[:3]


def test_train_publishes_every_slot_and_serves_it(
    engine: Engine, workspace: CreatedWorkspace
) -> None:
    shop(engine, workspace)
    ws_id = workspace.workspace.id
    seen: list[tuple[str, int, int]] = []
    results = engine.train(
        ws_id, progress=lambda what, done, total: seen.append((what, done, total))
    )
    assert [r["slot"] for r in results] == list(DEFAULT_SLOTS)
    assert all(r["version"] == 1 for r in results), results
    assert seen[-1][1] == seen[-1][2] == len(DEFAULT_SLOTS) + 1
    active = engine.models.active(ws_id)
    assert set(active) == set(DEFAULT_SLOTS)
    als = active["als"]
    # 18 catalog items, 24 users; users and items share one vocabulary across the slots.
    assert len(als.items) == 18 and len(als.users) == 24
    assert active["content"].items.ids() == als.items.ids()
    # A kitchen viewer is recommended kitchen items by the item-item slot.
    knn = active["itemknn"]
    rows = knn.items.rows(["kitchen-0", "kitchen-1"])
    ids, _ = knn.model.recommend_history(rows, k=3, exclude=rows)
    assert all(knn.items.id(int(i)).startswith("kitchen") for i in ids if i >= 0)
    # Frequently bought together only knows purchased items.
    fbt = active["fbt"]
    assert fbt.model.n_items_ == 18

    listed = engine.models.versions(ws_id, "als")
    assert listed[0]["status"] == "active" and listed[0]["nInteractions"] > 0


def test_artifacts_are_npz_and_json_without_pickle(
    engine: Engine, workspace: CreatedWorkspace, settings: object
) -> None:
    shop(engine, workspace, users=9)
    ws_id = workspace.workspace.id
    engine.train(ws_id, ["als", "itemknn"])
    folder = engine.models.models_dir / ws_id / "als" / "v1"
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "model.npz", VOCAB_FILE]
    for npz in folder.glob("*.npz"):
        with zipfile.ZipFile(npz) as z:
            for name in z.namelist():
                # Object arrays would need pickle; np.load(allow_pickle=False) proves none.
                np.load(npz, allow_pickle=False)[name.removesuffix(".npy")]


def test_a_version_trained_elsewhere_is_hot_swapped(
    database_url: str, engine: Engine, workspace: CreatedWorkspace
) -> None:
    shop(engine, workspace)
    ws_id = workspace.workspace.id
    engine.train(ws_id, ["popularity"])
    engine.models.check_seconds = 0.0
    assert engine.models.active(ws_id)["popularity"].version == 1
    # Another engine over the same database and home: another process, as `sartor train`.
    other = Engine.open(database_url, settings=engine.settings)
    try:
        other.train(ws_id, ["popularity"])
    finally:
        other.close()
    assert engine.models.active(ws_id)["popularity"].version == 2
    # Rollback.
    engine.models.activate(ws_id, "popularity", 1)
    assert engine.models.active(ws_id)["popularity"].version == 1
    statuses = {v["version"]: v["status"] for v in engine.models.versions(ws_id, "popularity")}
    assert statuses == {1: "active", 2: "retired"}
    with pytest.raises(LookupError, match="no version 9"):
        engine.models.activate(ws_id, "popularity", 9)


def test_erasure_reaches_every_saved_model(engine: Engine, workspace: CreatedWorkspace) -> None:
    shop(engine, workspace)
    ws_id = workspace.workspace.id
    engine.train(ws_id, ["als", "itemknn", "popularity"])
    engine.train(ws_id, ["als"])  # a retired version holds the user too
    pid = engine.profile(ws_id, "user-4")["profileId"]
    counts = engine.erase_user(ws_id, "user-4")
    assert counts["model_rows"] == 4  # als v1 and v2, itemknn, popularity
    for folder in (engine.models.models_dir / ws_id).glob("*/v*"):
        with np.load(folder / VOCAB_FILE, allow_pickle=False) as data:
            assert pid not in data["users"].tolist()
    als = engine.models.active(ws_id)["als"]
    assert als.users.row(pid) is None
    blank = als.users.row("")
    assert blank is not None
    assert not np.any(als.model.user_factors_[blank])  # type: ignore[attr-defined]


def test_untrainable_slots_say_why(engine: Engine, workspace: CreatedWorkspace) -> None:
    ws_id = workspace.workspace.id
    results = engine.train(ws_id, ["als", "content"])
    assert [r["skipped"] for r in results] == [
        "no items yet (empty catalog and no product events)"
    ] * 2
    with pytest.raises(ValueError, match="unknown model slot"):
        engine.train(ws_id, ["nope"])
    with pytest.raises(ValueError, match="invalid model slot"):
        check_slot("Bad Slot")


def test_cli_train_and_models(tmp_path: Path) -> None:
    home = tmp_path / "home"
    runner = CliRunner()
    base = ["--home", str(home)]
    with Engine.open(f"sqlite:///{home / 'sartor.db'}") as engine:
        created = engine.create_workspace("cli-shop")
        shop(engine, created, users=9)
    out = runner.invoke(app, [*base, "train", "cli-shop", "-m", "popularity", "-m", "itemknn"])
    assert out.exit_code == 0, out.output
    assert "popularity" in out.output and "itemknn" in out.output
    out = runner.invoke(app, [*base, "models", "list", "cli-shop"])
    assert out.exit_code == 0 and "active" in out.output, out.output
    out = runner.invoke(app, [*base, "models", "activate", "cli-shop", "itemknn", "7"])
    assert out.exit_code == 1 and "no version 7" in out.output
    out = runner.invoke(app, [*base, "train", "cli-shop", "-m", "bogus"])
    assert out.exit_code == 2 and "unknown model slot" in out.output
