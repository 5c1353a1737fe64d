"""The catalog on SQLite and PostgreSQL: validation, bulk upserts with per-item errors,
reads and paging, items created and completed from product events, and ``/v1/items``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from sartor.collect.errors import PayloadError
from sartor.engine import Engine
from sartor.recommend.catalog import MAX_ITEMS_PER_CALL, Catalog, category_path, validate_item

T0 = 1_700_000_000_000


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@contextmanager
def item_writes(engine: Engine) -> Iterator[list[str]]:
    """The statements that write the items table while the block runs."""
    seen: list[str] = []

    def listener(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith(("INSERT INTO ITEMS", "UPDATE ITEMS")):
            seen.append(statement)

    sa_event.listen(engine.db, "before_cursor_execute", listener)
    try:
        yield seen
    finally:
        sa_event.remove(engine.db, "before_cursor_execute", listener)


def settle(engine: Engine, ws: Any) -> None:
    """Wait until the catalog has seen every acknowledged event. The writer answers a
    request at its commit and runs the commit hooks (the catalog's among them) after, in
    order, on its own thread: once an empty job submitted now is answered, they have run."""
    engine.writer.submit(ws, []).result(timeout=30)


def track(engine: Engine, ws: Any, event: str, **fields: Any) -> Any:
    result = engine.track(ws, event, **fields)
    settle(engine, ws)
    return result


# -- validation (no database) -----------------------------------------------------------


def test_category_paths_are_stored_in_one_form() -> None:
    assert category_path("Home > Kitchen > Mugs") == "Home > Kitchen > Mugs"
    assert category_path("Home/Kitchen/Mugs") == "Home > Kitchen > Mugs"
    assert category_path(["Home", " Kitchen ", "", "Mugs"]) == "Home > Kitchen > Mugs"
    assert category_path("T-shirts/Tops > Men") == "T-shirts/Tops > Men"  # ">" wins
    assert category_path(" / ") is None and category_path(None) is None
    with pytest.raises(ValueError):
        category_path({"a": 1})
    with pytest.raises(ValueError):
        category_path(["x"] * 21)


def test_item_fields_are_normalized() -> None:
    item = validate_item(
        {
            "item_id": 42,
            "title": "  Mug  ",
            "description": "",
            "category": "Home/Kitchen",
            "currency": "eur",
            "price": "9.50",
            "inStock": "false",
            "tags": "red, mug, red",
            "createdAt": "2024-01-02T03:04:05Z",
        }
    )
    assert item.id == "42" and item.title == "Mug" and item.description is None
    assert item.category == "Home > Kitchen" and item.currency == "EUR" and item.price == 9.5
    assert item.in_stock is False and item.tags == ["red", "mug"]
    assert item.created_at == 1_704_164_645_000
    assert validate_item({"id": "x", "created_at": 1_704_164_645}).created_at == 1_704_164_645_000


@pytest.mark.parametrize(
    ("item", "field"),
    [
        ({"title": "no id"}, "items[0].id"),
        ({"id": ""}, "items[0].id"),
        ({"id": True}, "items[0].id"),
        ({"id": "x" * 201}, "items[0].id"),
        ({"id": "a", "title": "t" * 1001}, "items[0].title"),
        ({"id": "a", "description": "d" * 20_001}, "items[0].description"),
        ({"id": "a", "price": -1}, "items[0].price"),
        ({"id": "a", "price": "cheap"}, "items[0].price"),
        ({"id": "a", "currency": "euro"}, "items[0].currency"),
        ({"id": "a", "currency": "E1R"}, "items[0].currency"),
        ({"id": "a", "inStock": "maybe"}, "items[0].inStock"),
        ({"id": "a", "tags": [f"t{i}" for i in range(101)]}, "items[0].tags"),
        ({"id": "a", "tags": [1, 2]}, "items[0].tags"),
        ({"id": "a", "attributes": [1]}, "items[0].attributes"),
        ({"id": "a", "attributes": {"blob": "x" * 20_000}}, "items[0].attributes"),
        ({"id": "a", "createdAt": "yesterday"}, "items[0].createdAt"),
        ({"id": "a", "category": {"x": 1}}, "items[0].category"),
        ({"id": "a", "colour": "red"}, "items[0].colour"),
        ({"id": "a", "attributes": {"k": "nul\x00"}}, "items[0].attributes.k"),
    ],
)
def test_bad_fields_are_named(item: dict[str, Any], field: str) -> None:
    with pytest.raises(PayloadError) as exc:
        validate_item(item, "items[0]")
    assert field in [e.field for e in exc.value.errors]


# -- the store --------------------------------------------------------------------------


def test_upsert_stores_good_items_and_reports_bad_ones_by_index(engine: Engine, workspace) -> None:  # type: ignore[no-untyped-def]
    ws = workspace.workspace
    result = engine.catalog.upsert(
        ws.id,
        [
            {"id": "a", "title": "A", "category": ["Home", "Kitchen"], "price": 3, "tags": ["x"]},
            {"id": "b", "price": -2},
            "not an object",
            {"id": "c", "attributes": {"color": "red", "sizes": [1, 2]}, "currency": "usd"},
        ],
    )
    assert (result.received, result.created, result.updated) == (4, 2, 0)
    assert [(e["index"], e["field"]) for e in result.errors] == [
        (1, "items[1].price"),
        (2, "items[2]"),
    ]
    assert [i["status"] for i in result.items] == ["created", "error", "error", "created"]
    a = engine.catalog.get(ws.id, "a")
    assert a is not None and a["title"] == "A" and a["category"] == "Home > Kitchen"
    assert a["price"] == 3.0 and a["inStock"] is True and a["tags"] == ["x"]
    assert a["source"] == "catalog" and a["createdAt"].endswith("Z")
    c = engine.catalog.get(ws.id, "c")
    assert c is not None and c["attributes"] == {"color": "red", "sizes": [1, 2]}
    assert c["currency"] == "USD"
    assert engine.catalog.get(ws.id, "b") is None
    assert engine.catalog.count(ws.id) == 2


def test_an_upsert_sets_the_fields_it_carries_and_keeps_the_others(
    engine: Engine, workspace
) -> None:  # type: ignore[no-untyped-def]
    ws = workspace.workspace
    engine.catalog.upsert(
        ws.id, [{"id": "a", "title": "A", "brand": "B", "price": 3, "createdAt": T0}]
    )
    result = engine.catalog.upsert(ws.id, [{"id": "a", "inStock": False, "brand": None}])
    assert (result.created, result.updated) == (0, 1)
    a = engine.catalog.get(ws.id, "a")
    assert a is not None
    assert (a["title"], a["brand"], a["price"], a["inStock"]) == ("A", None, 3.0, False)
    assert a["createdAt"] == "2023-11-14T22:13:20.000Z"  # kept: not sent again
    # The same id twice in one call: one item, the later fields over the earlier ones.
    result = engine.catalog.upsert(
        ws.id, [{"id": "d", "title": "first", "price": 1}, {"id": "d", "title": "second"}]
    )
    assert result.created == 1 and [i["status"] for i in result.items] == ["created"] * 2
    d = engine.catalog.get(ws.id, "d")
    assert d is not None and (d["title"], d["price"]) == ("second", 1.0)


def test_more_than_1000_items_are_refused_whole(engine: Engine, workspace) -> None:  # type: ignore[no-untyped-def]
    ws = workspace.workspace
    with pytest.raises(PayloadError) as exc:
        engine.catalog.upsert(ws.id, [{"id": str(i)} for i in range(MAX_ITEMS_PER_CALL + 1)])
    assert exc.value.status == 413
    assert engine.catalog.count(ws.id) == 0
    result = engine.catalog.upsert(ws.id, [{"id": str(i)} for i in range(MAX_ITEMS_PER_CALL)])
    assert result.created == MAX_ITEMS_PER_CALL == engine.catalog.count(ws.id)


def test_reads_pages_filters_and_deletes(engine: Engine, workspace) -> None:  # type: ignore[no-untyped-def]
    ws = workspace.workspace
    catalog: Catalog = engine.catalog
    catalog.upsert(
        ws.id,
        [
            {"id": "i1", "category": "Home > Kitchen"},
            {"id": "i2", "category": "Home", "inStock": False},
            {"id": "i3", "category": "Homeware"},  # not under "Home"
            {"id": "i4", "category": "home > kitchen"},  # another case, another category
            {"id": "i5", "category": "Garden_%"},
            {"id": "i6"},
        ],
    )
    page, nxt = catalog.list(ws.id, limit=4)
    assert [i["id"] for i in page] == ["i1", "i2", "i3", "i4"] and nxt == "i4"
    page, nxt = catalog.list(ws.id, cursor=nxt, limit=4)
    assert [i["id"] for i in page] == ["i5", "i6"] and nxt is None
    assert [i["id"] for i in catalog.list(ws.id, category="Home")[0]] == ["i1", "i2"]
    assert [i["id"] for i in catalog.list(ws.id, category="Home/Kitchen")[0]] == ["i1"]
    assert [i["id"] for i in catalog.list(ws.id, category="Garden_%")[0]] == ["i5"]
    assert [i["id"] for i in catalog.list(ws.id, category="Garden")[0]] == []
    assert [i["id"] for i in catalog.list(ws.id, category="Home", in_stock=True)[0]] == ["i1"]
    assert len(catalog.list(ws.id, in_stock=False)[0]) == 1
    assert [i["id"] for i in catalog.iter_all(ws.id, batch=2)] == [f"i{n}" for n in range(1, 7)]
    assert set(catalog.get_many(ws.id, ["i1", "i6", "nope"])) == {"i1", "i6"}
    assert catalog.delete(ws.id, "i1") is True
    assert catalog.delete(ws.id, "i1") is False
    assert catalog.get(ws.id, "i1") is None and catalog.count(ws.id) == 5


# -- items from events ------------------------------------------------------------------


def test_product_events_create_items(engine: Engine, workspace) -> None:  # type: ignore[no-untyped-def]
    ws = workspace.workspace
    track(
        engine,
        ws,
        "Product Viewed",
        user_id="u1",
        timestamp=T0,
        properties={
            "product_id": "p1",
            "name": "Blue Mug",
            "category": "Home/Mugs",
            "brand": "Acme",
            "price": 12.5,
            "currency": "eur",
            "url": "https://shop.example/p1",
            "image_url": "https://shop.example/p1.jpg",
        },
    )
    engine.batch(
        ws,
        {
            "batch": [
                {
                    "type": "track",
                    "userId": "u1",
                    "event": "Order Completed",
                    "properties": {
                        "currency": "USD",
                        "products": [{"product_id": "p2", "name": "Plate"}, {"sku": "s3"}],
                    },
                },
                {  # GA4 names and fields
                    "type": "track",
                    "userId": "u2",
                    "event": "view_item",
                    "properties": {
                        "items": [{"item_id": "p4", "item_name": "Bowl", "item_category": "Home"}]
                    },
                },
                {"type": "track", "userId": "u2", "event": "Signed Up", "properties": {"x": 1}},
            ]
        },
    )
    settle(engine, ws)
    p1 = engine.catalog.get(ws.id, "p1")
    assert p1 is not None
    assert (p1["title"], p1["category"], p1["brand"], p1["price"], p1["currency"]) == (
        "Blue Mug",
        "Home > Mugs",
        "Acme",
        12.5,
        "EUR",
    )
    assert p1["attributes"] == {
        "url": "https://shop.example/p1",
        "image_url": "https://shop.example/p1.jpg",
    }
    assert p1["source"] == "events" and p1["createdAt"] == "2023-11-14T22:13:20.000Z"
    p2 = engine.catalog.get(ws.id, "p2")
    assert p2 is not None and (p2["title"], p2["currency"]) == ("Plate", "USD")
    assert engine.catalog.get(ws.id, "s3") is not None
    p4 = engine.catalog.get(ws.id, "p4")
    assert p4 is not None and (p4["title"], p4["category"]) == ("Bowl", "Home")
    assert engine.catalog.count(ws.id) == 4


def test_events_complete_blank_fields_and_never_overwrite(engine: Engine, workspace) -> None:  # type: ignore[no-untyped-def]
    ws = workspace.workspace
    engine.catalog.upsert(
        ws.id, [{"id": "c1", "title": "Declared", "price": 10, "attributes": {"url": "/c1"}}]
    )
    track(
        engine,
        ws,
        "Product Added",
        user_id="u1",
        properties={
            "product_id": "c1",
            "name": "From event",
            "price": 8,
            "brand": "Acme",
            "url": "/other",
            "image_url": "/c1.jpg",
        },
    )
    c1 = engine.catalog.get(ws.id, "c1")
    assert c1 is not None
    assert (c1["title"], c1["price"], c1["brand"], c1["source"]) == (
        "Declared",
        10.0,
        "Acme",
        "catalog",
    )
    assert c1["attributes"] == {"url": "/c1", "image_url": "/c1.jpg"}
    # An item first seen in events keeps its first values too.
    track(engine, ws, "Product Viewed", user_id="u1", properties={"product_id": "e1", "name": "v1"})
    track(
        engine,
        ws,
        "Product Viewed",
        user_id="u1",
        properties={"product_id": "e1", "name": "v2", "price": 3},
    )
    e1 = engine.catalog.get(ws.id, "e1")
    assert e1 is not None and (e1["title"], e1["price"]) == ("v1", 3.0)
    # A catalog upsert takes an event-made item over.
    engine.catalog.upsert(ws.id, [{"id": "e1", "title": "Declared e1"}])
    e1 = engine.catalog.get(ws.id, "e1")
    assert e1 is not None and (e1["title"], e1["price"], e1["source"]) == (
        "Declared e1",
        3.0,
        "catalog",
    )


def test_known_items_do_not_touch_the_database(engine: Engine, workspace) -> None:  # type: ignore[no-untyped-def]
    ws = workspace.workspace
    products = [{"product_id": f"k{i}", "name": f"K{i}"} for i in range(50)]
    with item_writes(engine) as writes:
        track(engine, ws, "Order Completed", user_id="u1", properties={"products": products})
    assert len(writes) == 1  # fifty new items, one statement
    assert engine.catalog.count(ws.id) == 50
    with item_writes(engine) as writes:
        for _ in range(3):
            track(engine, ws, "Order Completed", user_id="u2", properties={"products": products})
            track(engine, ws, "Product Viewed", user_id="u2", properties={"product_id": "k1"})
    assert writes == []
    with item_writes(engine) as writes:  # a field not seen before: one more write
        track(
            engine,
            ws,
            "Product Viewed",
            user_id="u2",
            properties={"product_id": "k1", "brand": "New"},
        )
    assert len(writes) == 1
    k1 = engine.catalog.get(ws.id, "k1")
    assert k1 is not None and k1["brand"] == "New"
    # A deleted item comes back with its next event.
    assert engine.catalog.delete(ws.id, "k2")
    track(engine, ws, "Product Viewed", user_id="u2", properties={"product_id": "k2"})
    assert engine.catalog.get(ws.id, "k2") is not None


def test_the_catalog_cannot_fail_an_ingest(engine: Engine, workspace) -> None:  # type: ignore[no-untyped-def]
    ws = workspace.workspace
    with engine.db.begin() as conn:
        conn.execute(text("DROP TABLE items"))
    result = track(engine, ws, "Product Viewed", user_id="u1", properties={"product_id": "x"})
    assert result.stored == 1
    assert [e["event"] for e in engine.events(ws)] == ["Product Viewed"]
    # Importers calling it directly do hear about the failure.
    with pytest.raises(SQLAlchemyError):
        engine.catalog.observe_events(
            ws.id, [{"event": "Product Viewed", "properties": {"product_id": "y"}}]
        )


def test_long_ids_and_odd_values_from_events_are_skipped(engine: Engine, workspace) -> None:  # type: ignore[no-untyped-def]
    ws = workspace.workspace
    long_id = "x" * 250  # valid in an event (255), too long for an item (200)
    result = track(
        engine,
        ws,
        "Product Viewed",
        user_id="u1",
        properties={"product_id": long_id, "name": "Too long"},
    )
    assert result.stored == 1
    track(
        engine,
        ws,
        "Product Viewed",
        user_id="u1",
        properties={"product_id": "ok", "name": {"x": 1}, "price": -3, "currency": "dollars"},
    )
    assert engine.catalog.get(ws.id, long_id) is None
    ok = engine.catalog.get(ws.id, "ok")
    assert ok is not None and (ok["title"], ok["price"], ok["currency"]) == (None, None, None)


def test_observe_events_for_importers(engine: Engine, workspace) -> None:  # type: ignore[no-untyped-def]
    """Raw messages (GA4 names, ISO times) straight from a file, without ingesting them."""
    ws = workspace.workspace
    written = engine.catalog.observe_events(
        ws.id,
        [
            {
                "event": "add_to_cart",
                "timestamp": "2024-05-01T10:00:00Z",
                "properties": {"items": [{"item_id": "g1", "item_name": "Glass"}]},
            },
            {
                "event": "purchase",
                "timestamp": "2024-04-01T10:00:00Z",
                "properties": {"items": [{"item_id": "g1", "item_brand": "Clear"}]},
            },
            {"event": "Product Viewed", "properties": "not an object"},
            {"event": "Product Viewed", "properties": {"product_id": "g2", "price": "bad"}},
        ],
    )
    assert written == 1  # g2's bad price fails normalization: skipped
    g1 = engine.catalog.get(ws.id, "g1")
    assert g1 is not None and (g1["title"], g1["brand"]) == ("Glass", "Clear")
    assert g1["createdAt"] == "2024-04-01T10:00:00.000Z"  # the first sight
    assert engine.events(ws) == []


# -- API ----------------------------------------------------------------------------------


def test_items_api(client, workspace) -> None:  # type: ignore[no-untyped-def]
    admin, read = bearer(workspace.keys["admin"]), bearer(workspace.keys["read"])
    items = [
        {"id": "a", "title": "A", "category": "Home/Kitchen", "price": 2, "inStock": True},
        {"id": "b", "title": "B", "category": "Garden", "inStock": False},
        {"id": "c", "price": "free"},
    ]
    r = client.post("/v1/items", json={"items": items}, headers=admin)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["success"], body["created"], body["stored"]) == (False, 2, 2)
    assert body["errors"] == [
        {"index": 2, "field": "items[2].price", "message": body["errors"][0]["message"]}
    ]
    r = client.post("/v1/items", json=[{"id": "d"}], headers=admin)  # a bare list
    assert r.status_code == 200 and r.json()["created"] == 1

    r = client.get("/v1/items/a", headers=read)
    assert r.status_code == 200
    assert r.json()["category"] == "Home > Kitchen" and r.json()["inStock"] is True
    r = client.get("/v1/items/nope", headers=read)
    assert r.status_code == 404 and "no item 'nope'" in r.json()["message"]

    r = client.get("/v1/items", params={"limit": 2}, headers=read)
    assert [i["id"] for i in r.json()["items"]] == ["a", "b"] and r.json()["next"] == "b"
    r = client.get("/v1/items", params={"cursor": "b", "limit": 2}, headers=read)
    assert [i["id"] for i in r.json()["items"]] == ["d"] and r.json()["next"] is None
    r = client.get("/v1/items", params={"category": "Home"}, headers=read)
    assert [i["id"] for i in r.json()["items"]] == ["a"]
    r = client.get("/v1/items", params={"inStock": "false"}, headers=read)
    assert [i["id"] for i in r.json()["items"]] == ["b"]
    assert client.get("/v1/items", params={"limit": 0}, headers=read).status_code == 400
    assert client.get("/v1/items", params={"inStock": "perhaps"}, headers=read).status_code == 400

    r = client.delete("/v1/items/a", headers=admin)
    assert r.status_code == 200
    assert client.get("/v1/items/a", headers=read).status_code == 404
    assert client.delete("/v1/items/a", headers=admin).status_code == 404


def test_items_api_refusals(client, workspace) -> None:  # type: ignore[no-untyped-def]
    admin, read = bearer(workspace.keys["admin"]), bearer(workspace.keys["read"])
    write = bearer(workspace.keys["write"])
    one = {"items": [{"id": "a"}]}
    assert client.post("/v1/items", json=one).status_code == 401
    assert client.post("/v1/items", json=one, headers=read).status_code == 403
    assert client.post("/v1/items", json=one, headers=write).status_code == 403
    assert client.delete("/v1/items/a", headers=read).status_code == 403
    assert client.get("/v1/items", headers=write).status_code == 403
    assert client.get("/v1/items/a", headers=admin).status_code == 404  # admin keys read too

    too_many = {"items": [{"id": str(i)} for i in range(MAX_ITEMS_PER_CALL + 1)]}
    r = client.post("/v1/items", json=too_many, headers=admin)
    assert r.status_code == 413 and r.json()["errors"][0]["field"] == "items"
    r = client.post(
        "/v1/items", json={"items": [{"price": 1}, {"id": "x", "tags": 3}]}, headers=admin
    )
    assert r.status_code == 400
    assert [e["field"] for e in r.json()["errors"]] == ["items[0].id", "items[1].tags"]
    r = client.post("/v1/items", json={"things": []}, headers=admin)
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "items"
    r = client.post("/v1/items", content=b"{not json", headers=admin)
    assert r.status_code == 400 and r.json()["error"] == "invalid_json"
    r = client.post("/v1/items", json={"items": [{"id": "n\x00l"}]}, headers=admin)
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "items[0].id"
    r = client.get("/v1/items", params={"category": "a\x00"}, headers=read)
    assert r.status_code == 400
    assert client.get("/v1/items", headers=read).json() == {"items": [], "next": None}


def test_items_are_isolated_per_workspace(client, engine: Engine, workspace) -> None:  # type: ignore[no-untyped-def]
    other = engine.create_workspace("other")
    a_admin, b_admin = bearer(workspace.keys["admin"]), bearer(other.keys["admin"])
    b_read = bearer(other.keys["read"])
    assert client.post("/v1/items", json=[{"id": "x", "title": "A's"}], headers=a_admin).is_success
    assert client.get("/v1/items/x", headers=b_read).status_code == 404
    assert client.get("/v1/items", headers=b_read).json()["items"] == []
    assert client.delete("/v1/items/x", headers=b_admin).status_code == 404
    assert client.post("/v1/items", json=[{"id": "x", "title": "B's"}], headers=b_admin).is_success
    assert client.get("/v1/items/x", headers=b_read).json()["title"] == "B's"
    r = client.get("/v1/items/x", headers=bearer(workspace.keys["read"]))
    assert r.json()["title"] == "A's"
    # Events of one workspace make items in that workspace only.
    track(engine, other.workspace, "Product Viewed", user_id="u", properties={"product_id": "y"})
    assert engine.catalog.get(other.workspace.id, "y") is not None
    assert engine.catalog.get(workspace.workspace.id, "y") is None
