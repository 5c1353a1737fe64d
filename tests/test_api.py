"""The HTTP surface: auth, key kinds, workspace isolation, limits, erasure, operations."""

from __future__ import annotations

import base64
import gzip
from typing import Any

import orjson
import pytest
from sqlalchemy import or_, select, text

from sartor.engine import Engine
from sartor.storage.tables import events, metadata

WRITE_PATHS = ["/v1/track", "/v1/identify", "/v1/page", "/v1/screen", "/v1/group", "/v1/alias"]


def _msg(path: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"userId": "u1", "anonymousId": "a1", **extra}
    if path == "/v1/track":
        body["event"] = "Product Viewed"
    if path == "/v1/group":
        body["groupId"] = "g1"
    if path == "/v1/alias":
        body = {"userId": "u1", "previousId": "a1", **extra}
    return body


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize("path", [*WRITE_PATHS, "/v1/batch"])
def test_write_key_as_basic_user_or_in_body(client, workspace, path: str) -> None:  # type: ignore[no-untyped-def]
    key = workspace.keys["write"]
    body = {"batch": [dict(_msg("/v1/track"), type="track")]} if path == "/v1/batch" else _msg(path)
    assert client.post(path, json=body, auth=(key, "")).status_code == 200
    assert client.post(path, json={**body, "writeKey": key}).status_code == 200
    basic = base64.b64encode(f"{key}:".encode()).decode()
    assert (
        client.post(path, json=body, headers={"Authorization": f"Basic {basic}"}).status_code == 200
    )


@pytest.mark.parametrize("path", [*WRITE_PATHS, "/v1/batch"])
def test_write_endpoints_refuse_bad_and_wrong_kind_keys(client, workspace, path: str) -> None:  # type: ignore[no-untyped-def]
    body = {"batch": [dict(_msg("/v1/track"), type="track")]} if path == "/v1/batch" else _msg(path)
    assert client.post(path, json=body).status_code == 401
    assert client.post(path, json=body, auth=("sk_w_nope", "")).status_code == 401
    assert client.post(path, json={**body, "writeKey": "nope"}).status_code == 401
    for kind in ("read", "admin"):
        r = client.post(path, json=body, auth=(workspace.keys[kind], ""))
        assert r.status_code == 403, r.text
        assert client.post(path, json=body, headers=bearer(workspace.keys[kind])).status_code == 403


READ_ENDPOINTS = [("GET", "/v1/events"), ("GET", "/v1/workspace")]
ADMIN_ENDPOINTS = [
    ("GET", "/v1/users/u1/export"),
    ("DELETE", "/v1/users/u1"),
    ("PATCH", "/v1/workspace/settings"),
]


@pytest.mark.parametrize(("method", "path"), READ_ENDPOINTS + ADMIN_ENDPOINTS)
def test_read_and_admin_endpoints_check_key_kind(client, workspace, method: str, path: str) -> None:  # type: ignore[no-untyped-def]
    kw: dict[str, Any] = {"json": {}} if method == "PATCH" else {}
    assert client.request(method, path, **kw).status_code == 401
    assert client.request(method, path, headers=bearer("sk_r_unknown"), **kw).status_code == 401
    assert (
        client.request(method, path, headers=bearer(workspace.keys["write"]), **kw).status_code
        == 403
    )
    read = client.request(method, path, headers=bearer(workspace.keys["read"]), **kw).status_code
    admin = client.request(method, path, headers=bearer(workspace.keys["admin"]), **kw).status_code
    if (method, path) in READ_ENDPOINTS:
        assert read == 200 and admin == 200
    else:
        assert read == 403 and admin in (200, 404)


def test_workspace_isolation_on_every_endpoint(client, engine: Engine) -> None:  # type: ignore[no-untyped-def]
    a = engine.create_workspace("tenant-a")
    b = engine.create_workspace("tenant-b")
    # B has a user; A's keys must neither read, export, erase nor write into B.
    for path in WRITE_PATHS:
        assert client.post(path, json=_msg(path), auth=(b.keys["write"], "")).status_code == 200
    before = engine.events(b.workspace, limit=1000)
    assert before

    for path in WRITE_PATHS:  # A's writes land in A only, even with B's ids
        assert client.post(path, json=_msg(path), auth=(a.keys["write"], "")).status_code == 200
    r = client.post(
        "/v1/batch",
        auth=(a.keys["write"], ""),
        json={"batch": [dict(_msg("/v1/track"), type="track")]},
    )
    assert r.status_code == 200
    assert client.get("/v1/events", headers=bearer(a.keys["read"])).json()["events"]
    a_events = client.get("/v1/events?limit=1000", headers=bearer(a.keys["read"])).json()["events"]
    b_ids = {e["messageId"] for e in before}
    assert not b_ids & {e["messageId"] for e in a_events}
    assert client.get("/v1/workspace", headers=bearer(a.keys["read"])).json()["name"] == "tenant-a"

    # A's admin key: export finds only A's u1; erasure removes only A's u1.
    exported = client.get("/v1/users/u1/export", headers=bearer(a.keys["admin"])).json()
    assert not b_ids & {e["messageId"] for e in exported["events"]}
    assert client.delete("/v1/users/u1", headers=bearer(a.keys["admin"])).status_code == 200
    assert engine.events(b.workspace, limit=1000) == before
    # A's settings change does not touch B.
    r = client.patch(
        "/v1/workspace/settings", headers=bearer(a.keys["admin"]), json={"consent_mode": "opt_in"}
    )
    assert r.status_code == 200
    assert engine.workspace(b.workspace.id).settings.consent_mode == "opt_out"
    # B's keys never see A's data either.
    b_read = client.get("/v1/events?limit=1000", headers=bearer(b.keys["read"])).json()["events"]
    assert {e["messageId"] for e in b_read} == b_ids


def test_erasure_leaves_no_row_with_the_ids_and_suppresses_later_events(
    client, engine: Engine, workspace
) -> None:  # type: ignore[no-untyped-def]
    ws, keys = workspace.workspace, workspace.keys
    w = (keys["write"], "")
    client.post("/v1/page", auth=w, json={"anonymousId": "anon-e", "name": "Home"})
    client.post(
        "/v1/identify",
        auth=w,
        json={"anonymousId": "anon-e", "userId": "user-e", "traits": {"email": "e@x.org"}},
    )
    client.post("/v1/track", auth=w, json={"userId": "user-e", "event": "Order Completed"})
    client.post("/v1/alias", auth=w, json={"userId": "user-e", "previousId": "old-e"})
    client.post("/v1/track", auth=w, json={"userId": "someone-else", "event": "Order Completed"})

    export = client.get("/v1/users/user-e/export", headers=bearer(keys["admin"])).json()
    assert len(export["events"]) == 4
    assert {i["value"] for i in export["identities"] if i["kind"] != "email_hash"} == {
        "anon-e",
        "user-e",
        "old-e",
    }
    assert [i["kind"] for i in export["identities"]].count("email_hash") == 1

    r = client.delete("/v1/users/anon-e", headers=bearer(keys["admin"]))
    # The four events, plus the `Segment Entered` the export's fold logged for "active".
    assert r.status_code == 200 and r.json()["erased"]["events"] == 5

    ids = ("anon-e", "user-e", "old-e")
    with engine.db.connect() as conn:
        for table in metadata.sorted_tables:  # every table, not only the ones we expect
            dump = repr(conn.execute(select(table)).all())
            for value in ids:
                assert value not in dump, f"{value} still in {table.name}"
        assert conn.execute(select(events).where(or_(events.c.user_id == "someone-else"))).first()
    # Later events with any of the ids are dropped, by reason, and stored nowhere.
    for body in (
        {"anonymousId": "anon-e", "event": "Product Viewed"},
        {"userId": "old-e", "event": "Product Viewed"},
    ):
        r = client.post("/v1/track", auth=w, json=body)
        assert r.status_code == 200 and r.json()["status"] == "dropped"
        assert r.json()["reason"] == "suppressed"
    assert client.get("/v1/users/anon-e/export", headers=bearer(keys["admin"])).status_code == 404
    assert [e["userId"] for e in engine.events(ws)] == ["someone-else"]


def test_size_limits(client, workspace) -> None:  # type: ignore[no-untyped-def]
    w = (workspace.keys["write"], "")
    big = {"userId": "u", "event": "x", "properties": {"blob": "x" * 33_000}}
    r = client.post("/v1/track", auth=w, json=big)
    assert r.status_code == 413 and r.json()["error"] == "too_large"
    # In a batch, the oversized event is refused by index and the others are stored.
    ok = {"type": "track", "userId": "u", "event": "y"}
    r = client.post("/v1/batch", auth=w, json={"batch": [ok, dict(big, type="track"), ok]})
    assert r.status_code == 200
    assert r.json()["stored"] == 2 and r.json()["errors"][0]["index"] == 1
    many = {"batch": [ok] * 2501}
    r = client.post("/v1/batch", auth=w, json=many)
    assert r.status_code == 413
    huge = {"batch": [dict(ok, properties={"pad": "p" * 20_000}) for _ in range(30)]}
    assert client.post("/v1/batch", auth=w, json=huge).status_code == 413
    # A gzip body inflating past the limit is refused too (no decompression bomb).
    bomb = gzip.compress(b'{"batch": [' + b" " * 600_000 + b"]}")
    r = client.post(
        "/v1/batch",
        auth=w,
        content=bomb,
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert r.status_code == 413
    r = client.post(
        "/v1/batch",
        auth=w,
        content=gzip.compress(orjson.dumps({"batch": [ok]})),
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert r.status_code == 200 and r.json()["stored"] == 1


def test_message_id_rules_and_idempotence(client, engine: Engine, workspace) -> None:  # type: ignore[no-untyped-def]
    w = (workspace.keys["write"], "")
    r = client.post("/v1/track", auth=w, json={"userId": "u", "event": "x", "messageId": "m" * 100})
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "messageId"
    r = client.post("/v1/track", auth=w, json={"userId": "u", "event": "x"})
    generated = r.json()["messageId"]
    assert generated and r.json()["status"] == "stored"
    for _ in range(3):
        r = client.post("/v1/track", auth=w, json={"userId": "u", "event": "x", "messageId": "dup"})
        assert r.status_code == 200
    r = client.post(
        "/v1/batch",
        auth=w,
        json={
            "batch": [
                {"type": "track", "userId": "u", "event": "x", "messageId": "dup"},
                {"type": "track", "userId": "u", "event": "x", "messageId": "in-batch"},
                {"type": "track", "userId": "u", "event": "x", "messageId": "in-batch"},
            ]
        },
    )
    assert r.json()["duplicates"] == 2 and r.json()["stored"] == 1
    ids = [e["messageId"] for e in engine.events(workspace.workspace)]
    assert sorted(ids) == sorted([generated, "dup", "in-batch"])


def test_batch_reports_bad_items_by_index_and_keeps_the_good(
    client, engine: Engine, workspace
) -> None:  # type: ignore[no-untyped-def]
    w = (workspace.keys["write"], "")
    r = client.post(
        "/v1/batch",
        auth=w,
        json={
            "context": {"library": {"name": "test-lib"}},
            "sentAt": "2026-01-01T00:00:10Z",
            "batch": [
                {"type": "track", "userId": "u", "event": "purchase", "properties": {"value": 3}},
                {"type": "track", "userId": "u"},
                "not an object",
                {"type": "bogus", "userId": "u"},
                {
                    "type": "page",
                    "anonymousId": "a",
                    "name": "Home",
                    "originalTimestamp": "2026-01-01T00:00:00Z",
                },
                {"type": "track", "event": "x"},
            ],
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["stored"] == 2
    assert {(e["index"], e["field"]) for e in body["errors"]} == {
        (1, "batch[1].event"),
        (2, "batch[2]"),
        (3, "batch[3].type"),
        (5, "batch[5].userId"),
    }
    stored = engine.events(workspace.workspace)
    assert [e["context"]["library"]["name"] for e in stored] == ["test-lib", "test-lib"]
    assert stored[0]["event"] == "Order Completed"
    # All bad: 400, with the same per-item errors.
    r = client.post("/v1/batch", auth=w, json={"batch": [{"type": "track"}]})
    assert r.status_code == 400 and r.json()["errors"][0]["index"] == 0


def test_rate_limit_answers_429_with_retry_after(client, engine: Engine, workspace) -> None:  # type: ignore[no-untyped-def]
    ws = engine.update_workspace_settings(workspace.workspace, {"rate_limit_events_per_second": 5})
    w = (workspace.keys["write"], "")
    batch = {"batch": [{"type": "track", "userId": "u", "event": "x"}] * 10}
    assert client.post("/v1/batch", auth=w, json=batch).status_code == 200  # the burst
    r = client.post("/v1/batch", auth=w, json=batch)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert len(engine.events(ws)) == 10


def test_errors_are_json_with_fields_and_never_500(client, workspace) -> None:  # type: ignore[no-untyped-def]
    w = (workspace.keys["write"], "")
    r = client.post("/v1/track", auth=w, content=b"{nope")
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "body"
    r = client.post("/v1/track", auth=w, json={"userId": "u", "event": "x", "timestamp": "soon"})
    assert r.json()["errors"][0]["field"] == "timestamp"
    r = client.get("/v1/events?limit=0", headers=bearer(workspace.keys["read"]))
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "query.limit"
    assert client.get("/v1/nothing").status_code == 404
    r = client.delete("/v1/users/%00", headers=bearer(workspace.keys["admin"]))
    assert r.status_code == 400
    r = client.post("/v1/track", headers={"Authorization": "Basic !!!"}, json={})
    assert r.status_code == 401
    r = client.patch(
        "/v1/workspace/settings",
        headers=bearer(workspace.keys["admin"]),
        json={"consent_mode": "sometimes"},
    )
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "consent_mode"


def test_operations_endpoints(client, workspace) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/healthz").json()["status"] == "ok"
    spec = client.get("/openapi.json").json()
    assert {"/v1/track", "/v1/batch", "/v1/users/{user_id}", "/v1/events"} <= set(spec["paths"])
    assert "Message" in spec["components"]["schemas"]
    assert client.get("/docs").status_code == 200
    client.post("/v1/track", auth=(workspace.keys["write"], ""), json={"userId": "u"})
    text_ = client.get("/metrics").text
    for name in (
        "sartor_events_accepted_total",
        "sartor_events_rejected_total",
        "sartor_events_dropped_total",
        "sartor_http_request_duration_seconds_bucket",
    ):
        assert name in text_
    assert 'route="/v1/track"' in text_


def test_keys_are_stored_hashed(engine: Engine, workspace) -> None:  # type: ignore[no-untyped-def]
    with engine.db.connect() as conn:
        dump = str(conn.execute(text("SELECT * FROM api_keys")).all())
    for key in workspace.keys.values():
        assert key not in dump
