"""A small synthetic shop with a planted structure, for the serving tests.

Items come in 6 groups of 20 (``g<group>-i<n>``); each user looks at items of one group
only, so every model learns that an item's neighbours are the items of its group. Groups
``g`` and ``g+3`` share a top-level category (``Cat<g%3> > Sub<g>``). Group 0's users were
active 1 day ago (trending); the others 10 days ago. Every third user bought two items of
their group. Users of group 2 carry the trait ``fan: g2``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from sartor.clock import now_ms
from sartor.config import Settings
from sartor.engine import Engine
from sartor.workspace import Workspace
from tests.conftest import drop_pg_database, new_pg_database

GROUPS = 6
PER_GROUP = 20
USERS = 180
DAY = 86_400_000


def group_of(item_id: str) -> int:
    return int(item_id.split("-")[0][1:])


def catalog_items() -> list[dict[str, Any]]:
    return [
        {
            "id": f"g{g}-i{j}",
            "title": f"Widget {j} of line {g} gizmo{g}",
            "description": f"A fine product of line {g}",
            "category": f"Cat{g % 3} > Sub{g}",
            "brand": f"Brand{j % 4}",
            "price": 10.0 + j,
            "currency": "EUR",
            "tags": [f"t{j % 3}"],
            "attributes": {"color": ["red", "blue"][j % 2]},
        }
        for g in range(GROUPS)
        for j in range(PER_GROUP)
    ]


def shop_events(now: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for u in range(USERS):
        g = u % GROUPS
        start = now - (1 if g == 0 else 10) * DAY
        if g == 2:
            out.append(
                {
                    "type": "identify",
                    "userId": f"u{u}",
                    "traits": {"fan": "g2"},
                    "timestamp": start - 1000,
                    "messageId": f"id-{u}",
                }
            )
        for e in range(8):
            out.append(
                {
                    "type": "track",
                    "userId": f"u{u}",
                    "event": "Product Viewed",
                    "properties": {"product_id": f"g{g}-i{rng.randrange(PER_GROUP)}"},
                    "timestamp": start + e * 1000,
                    "messageId": f"v-{u}-{e}",
                }
            )
        if u % 3 == 0:
            j = rng.randrange(PER_GROUP)
            out.append(
                {
                    "type": "track",
                    "userId": f"u{u}",
                    "event": "Order Completed",
                    "properties": {
                        "order_id": f"o{u}",
                        "products": [
                            {"product_id": f"g{g}-i{j}", "price": 10.0 + j},
                            {"product_id": f"g{g}-i{(j + 1) % PER_GROUP}", "price": 11.0 + j},
                        ],
                    },
                    "timestamp": start + 10_000,
                    "messageId": f"o-{u}",
                }
            )
    return out


@dataclass
class Shop:
    engine: Engine
    ws: Workspace
    keys: dict[str, str]

    def refresh(self) -> Workspace:
        self.ws = self.engine.workspace(self.ws.id)
        return self.ws


def build_shop(engine: Engine, name: str = "shop", *, train: bool = True) -> Shop:
    created = engine.create_workspace(name)
    ws = engine.update_workspace_settings(created.workspace, {"holdout_share": 0})
    result = engine.catalog.upsert(ws.id, catalog_items())
    assert not result.errors, result.errors
    batch = shop_events(now_ms())
    for i in range(0, len(batch), 1000):
        stored = engine.batch(ws, {"batch": batch[i : i + 1000]})
        assert not stored.errors, stored.errors[:3]
    if train:
        trained = engine.train(ws)
        assert all(t.get("version") for t in trained), trained
    return Shop(engine, ws, created.keys)


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)]
)
def shop(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Shop]:
    """One trained shop per module and dialect (training is the slow part)."""
    home = tmp_path_factory.mktemp("recs")
    settings = Settings(
        env="test",
        home=home,
        secret_key="test-secret-key-0123456789",
        rate_limit_events_per_second=0,
        log_json=False,
    )
    db_name = None
    if request.param == "sqlite":
        url = f"sqlite:///{home / 'shop.db'}"
    else:
        db_name, url = new_pg_database(request.getfixturevalue("pg_template"))
    eng = Engine.open(url, settings=settings)
    try:
        yield build_shop(eng)
    finally:
        eng.close()
        if db_name:
            drop_pg_database(db_name)
