"""GET /v1/recommendations and /v1/recommendations/report over HTTP (SQLite and PostgreSQL)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from sartor.api.app import create_app
from tests.rec_shop import Shop, group_of, shop

__all__ = ["shop"]  # the fixture


@pytest.fixture(scope="module")
def api(shop: Shop) -> Iterator[TestClient]:
    with TestClient(create_app(shop.engine), raise_server_exceptions=False) as client:
        yield client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def get(api: TestClient, shop: Shop, path: str = "/v1/recommendations", **params: Any) -> Any:
    return api.get(path, params=params, headers=bearer(shop.keys["read"]))


def ids(body: dict[str, Any]) -> list[str]:
    return [i["id"] for i in body["items"]]


def test_keys(api: TestClient, shop: Shop) -> None:
    assert api.get("/v1/recommendations").status_code == 401
    assert api.get("/v1/recommendations", headers=bearer(shop.keys["write"])).status_code == 403
    for kind in ("read", "admin"):
        answer = api.get("/v1/recommendations", headers=bearer(shop.keys[kind]))
        assert answer.status_code == 200, answer.text


def test_a_view_sent_over_http_shows_in_the_next_list_within_a_second(
    api: TestClient, shop: Shop
) -> None:
    started = time.monotonic()
    sent = api.post(
        "/v1/track",
        auth=(shop.keys["write"], ""),
        json={
            "anonymousId": "web-visitor-1",
            "event": "view_item",  # GA4's name: stored as Product Viewed
            "properties": {"items": [{"item_id": "g1-i4"}]},
        },
    )
    assert sent.status_code == 200, sent.text
    answer = get(api, shop, user="web-visitor-1", k=10)
    assert time.monotonic() - started < 1.0
    body = answer.json()
    assert answer.status_code == 200, body
    assert body["strategy"] == "session" and body["personalized"] is True
    assert [group_of(i) for i in ids(body)].count(1) >= 8 and "g1-i4" not in ids(body)
    assert body["recommendationId"].startswith("r_") and body["slot"] == "home"
    assert set(body["models"]) == {"als", "content", "ease", "itemknn"}
    first = body["items"][0]
    assert set(first) >= {"id", "score", "reason", "title", "category", "price", "brand"}
    assert first["reason"] == "because you viewed Widget 4 of line 1 gizmo1"


def test_filters_from_the_query(api: TestClient, shop: Shop) -> None:
    plain = ids(get(api, shop, user="u1", k=10).json())
    body = get(api, shop, user="u1", k=30, exclude=",".join(plain[:2]) + "," + plain[2]).json()
    assert set(plain[:3]).isdisjoint(ids(body))
    body = get(api, shop, user="u1", k=20, category=["Cat2 > Sub5", "Cat0"]).json()
    assert body["items"] and all(
        i["category"] in ("Cat2 > Sub5", "Cat0 > Sub0", "Cat0 > Sub3") for i in body["items"]
    )
    body = get(api, shop, user="u1", k=40, excludeCategory="Cat1").json()
    assert all(not i["category"].startswith("Cat1") for i in body["items"])
    body = get(api, shop, user="u1", k=30, minPrice=12, maxPrice=14.5).json()
    assert body["items"] and all(12 <= i["price"] <= 14.5 for i in body["items"])
    body = get(api, shop, user="u1", k=5, boost="attributes.color:blue:80").json()
    assert all(int(i["id"].split("-i")[1]) % 2 == 1 for i in body["items"])  # blue = odd
    similar = get(api, shop, slot="product", item="g4-i2", k=5).json()
    assert similar["strategy"] == "similar" and all(group_of(i) == 4 for i in ids(similar))


@pytest.mark.parametrize(
    ("params", "status", "field", "text"),
    [
        ({"slot": "sidebar"}, 400, "slot", "known slots: cart, email, home, product"),
        ({"slot": "product", "item": "nope"}, 404, "item", "unknown item 'nope'"),
        ({"slot": "product"}, 400, "item", "is required"),
        ({"k": 0}, 400, "k", "from 1 to 100"),
        ({"k": 101}, 400, "k", "from 1 to 100"),
        ({"k": "ten"}, 400, "k", "integer"),
        ({"boost": "brand:Acme"}, 400, "boost[0]", "field:value:factor"),
        ({"minPrice": 5, "maxPrice": 2}, 400, "minPrice", "maxPrice"),
        ({"minPrice": "inf"}, 400, "minPrice", "finite"),
        ({"maxPrice": "nan"}, 400, "maxPrice", "finite"),
        ({"minPrice": "-1"}, 400, "minPrice", "0 or more"),
        ({"user": "a\x00b"}, 400, "user", "NUL"),
        ({"exclude": ",".join(str(i) for i in range(201))}, 400, "exclude", "at most 200"),
    ],
)
def test_bad_requests_name_the_field(
    api: TestClient, shop: Shop, params: dict[str, Any], status: int, field: str, text: str
) -> None:
    answer = get(api, shop, **params)
    body = answer.json()
    assert answer.status_code == status, body
    assert body["success"] is False and body["errors"][0]["field"] == field
    assert text in body["message"]


def test_report_over_http(api: TestClient, shop: Shop) -> None:
    patched = api.patch(
        "/v1/workspace/settings",
        headers=bearer(shop.keys["admin"]),
        json={"recommendations": {"slots": {"web": {"kind": "personal", "models": {"als": 1}}}}},
    )
    assert patched.status_code == 200, patched.text
    try:
        body = get(api, shop, user="u3", slot="web", k=4).json()
        assert set(body["models"]) == {"als"}
        clicked = api.post(
            "/v1/track",
            auth=(shop.keys["write"], ""),
            json={
                "userId": "u3",
                "event": "Product Clicked",
                "properties": {
                    "product_id": body["items"][1]["id"],
                    "recommendation_id": body["recommendationId"],
                },
            },
        )
        assert clicked.status_code == 200
        # The outcome is recorded just after the event's commit (the 200 does not wait).
        deadline = time.monotonic() + 2
        while True:
            report = get(api, shop, "/v1/recommendations/report", slot="web").json()
            (entry,) = report["slots"]
            if entry["clicks"] or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert (entry["served"], entry["clicks"], entry["ctr"]) == (1, 1, 1.0)
        assert entry["byModels"][0]["models"] == body["models"]
        assert (
            get(api, shop, "/v1/recommendations/report", since="2999-01-01T00:00:00Z").json()[
                "slots"
            ]
            == []
        )
        bad = get(api, shop, "/v1/recommendations/report", since="yesterday")
        assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "since"
    finally:
        api.patch(
            "/v1/workspace/settings",
            headers=bearer(shop.keys["admin"]),
            json={"recommendations": {}},
        )
    wrong = api.patch(
        "/v1/workspace/settings",
        headers=bearer(shop.keys["admin"]),
        json={"recommendations": {"slots": {"home": {"mmr_lambda": 3}}}},
    )
    assert wrong.status_code == 400
    assert "recommendations.slots.home.mmr_lambda" in wrong.json()["message"]


def test_the_fast_path_keeps_errors_metrics_and_the_route(api: TestClient, shop: Shop) -> None:
    """GET /v1/recommendations is answered before FastAPI's router (a middleware): same
    error shape and headers, request metrics under the route's template, the route in
    OpenAPI; other methods and paths go through the app as before."""
    missing = api.get("/v1/recommendations")
    assert missing.status_code == 401 and missing.headers["www-authenticate"]
    assert missing.json()["success"] is False and missing.json()["error"] == "unauthorized"
    assert get(api, shop, user="u2", k=3).status_code == 200
    text = api.get("/metrics").text
    assert 'route="/v1/recommendations",status="200"' in text
    assert 'route="/v1/recommendations",status="401"' in text
    assert "/v1/recommendations" in api.get("/openapi.json").json()["paths"]
    assert api.post("/v1/recommendations", headers=bearer(shop.keys["read"])).status_code == 405
    report = get(api, shop, "/v1/recommendations/report")
    assert report.status_code == 200 and "slots" in report.json()
