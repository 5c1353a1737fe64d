"""Fuzzing the HTTP API: random and malformed payloads never get a 5xx, and every 400/413
names the field it is about (``errors[].field``).

Hypothesis drives the real app (``client`` fixture, SQLite and PostgreSQL) with real keys:
arbitrary JSON, Segment-shaped messages with mutated fields, raw bytes, compressed bodies,
batches mixing good and bad items, and workspace settings followed by events. Last, a
schemathesis run over ``/openapi.json`` (SQLite only).

Runs are reproducible: every property test is derandomized and uses no example database.
"""

from __future__ import annotations

import gzip
import itertools
import json
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sartor.engine import CreatedWorkspace, Engine

ENDPOINTS = ("track", "identify", "page", "screen", "group", "alias")
ALL_PATHS = tuple(f"/v1/{t}" for t in ENDPOINTS) + ("/v1/batch",)
OK_OR_REJECTED = {200, 400, 413}

FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)

# Ids unique over the whole session, so messageIds never collide (a duplicate would be
# reported as such, not stored) and alias previousIds are always fresh.
_ids = itertools.count(1)


def _post(client: Any, key: str, path: str, body: bytes, **headers: str) -> Any:
    return client.post(
        path,
        content=body,
        auth=(key, ""),
        headers={"content-type": "application/json", **headers},
    )


def assert_named(resp: Any, allowed: set[int] = OK_OR_REJECTED) -> dict[str, Any]:
    """No 5xx; a 400/413 carries a non-empty ``errors`` list, each entry naming a field."""
    assert resp.status_code < 500, f"server error {resp.status_code}: {resp.text[:500]}"
    assert resp.status_code in allowed, f"unexpected {resp.status_code}: {resp.text[:500]}"
    doc = resp.json()
    assert isinstance(doc, dict)
    if resp.status_code in (400, 413):
        errors = doc.get("errors")
        assert isinstance(errors, list) and errors, f"no errors[] in {resp.text[:500]}"
        for err in errors:
            assert isinstance(err, dict), err
            assert isinstance(err.get("field"), str) and err["field"].strip(), err
            assert isinstance(err.get("message"), str) and err["message"], err
    return doc


# -- strategies ------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()  # beyond 64 bits too: the server sees them as floats or refuses them
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=25,
)

MESSAGE_KEYS = (
    "type",
    "messageId",
    "userId",
    "anonymousId",
    "event",
    "name",
    "category",
    "groupId",
    "previousId",
    "timestamp",
    "originalTimestamp",
    "sentAt",
    "context",
    "properties",
    "traits",
    "integrations",
    "writeKey",
    "receivedAt",
)

# Segment-shaped objects whose known keys hold anything at all.
plausible_messages = st.dictionaries(st.sampled_from(MESSAGE_KEYS), json_values, max_size=8)
plausible_batches = st.fixed_dictionaries(
    {"batch": st.lists(plausible_messages | json_values, max_size=6)},
    optional={
        "context": json_values,
        "integrations": json_values,
        "sentAt": json_values,
        "writeKey": json_values,
    },
)


def encode(value: Any, ensure_ascii: bool) -> bytes:
    # The standard library, not orjson: it writes integers past 64 bits, NaN and, with
    # ensure_ascii, lone surrogates as \\udXXX escapes, all of which the server must refuse.
    return json.dumps(value, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")


bad_ids = st.sampled_from(
    [True, False, 1.5, -0.0, [], ["u1"], {"id": "u1"}, "x" * 256, "a\x00b", "\x00", "z" * 9000]
)
bad_timestamps = st.sampled_from(
    [
        "garbage",
        "",
        "2024-13-45T00:00:00Z",
        "2024-01-01T25:00:00Z",
        "9" * 70,
        True,
        [],
        {"at": 1},
        1e20,
        -1e20,
        10**17,
        -(10**17),
        1e308,
    ]
)
bad_numbers = st.sampled_from(["abc", "", "inf", "-Infinity", "nan", "1e999", True, [], {}, [1]])
bad_message_ids = st.sampled_from(["m" * 100, "m" * 101, "", "   ", True, [], {}, 1.5])
not_objects = st.sampled_from([None, 1, "x", [], True, 2.5])


def _valid_timestamps() -> st.SearchStrategy[Any]:
    return st.sampled_from(
        [
            "2024-05-01T12:00:00Z",
            "2024-05-01T12:00:00.123+02:00",
            "2024-05-01T12:00:00",
            "0001-01-01T00:00:00+23:59",
            "9999-12-31T23:59:59-23:59",
            1714564800,
            1714564800123,
            1714564800.5,
            0,
        ]
    )


valid_properties = st.one_of(
    st.just({}),
    st.fixed_dictionaries(
        {"product_id": st.sampled_from(["sku-1", "42"]), "price": st.sampled_from([1, 9.99, "12"])},
        optional={"quantity": st.sampled_from([1, "3", 2.0]), "currency": st.just("EUR")},
    ),
)


@st.composite
def good_templates(draw: st.DrawFn) -> dict[str, Any]:
    """A valid message without its ids (the test adds unique ones)."""
    msg_type = draw(st.sampled_from(ENDPOINTS))
    msg: dict[str, Any] = {"type": msg_type}
    if msg_type == "track":
        event = draw(
            st.sampled_from(
                ["Order Completed", "Product Viewed", "view_item", "purchase", "Signed Up"]
            )
        )
        msg["event"] = event
        if event in ("Order Completed", "purchase"):
            msg["properties"] = {
                "order_id": draw(st.sampled_from(["o-1", 7])),
                "revenue": draw(st.sampled_from([10, "10.5", 0])),
                "products": draw(
                    st.lists(
                        st.fixed_dictionaries(
                            {"product_id": st.sampled_from(["a", "b", 3]), "price": st.just(2)}
                        ),
                        max_size=3,
                    )
                ),
            }
        else:
            msg["properties"] = draw(valid_properties)
    elif msg_type in ("page", "screen"):
        msg["name"] = draw(st.sampled_from(["Home", "Product", "Ünïcödé ✓"]))
    elif msg_type == "identify":
        msg["traits"] = draw(
            st.sampled_from([{}, {"email": "Ann@Example.com "}, {"plan": "pro", "phone": 123}])
        )
    if draw(st.booleans()):
        msg["timestamp"] = draw(_valid_timestamps())
    if draw(st.booleans()):
        msg["context"] = draw(
            st.sampled_from([{}, {"ip": "203.0.113.9"}, {"ip": "fe80::1%eth0"}, {"ip": 5}])
        )
    return msg


def with_ids(template: dict[str, Any], anonymous: bool) -> dict[str, Any]:
    n = next(_ids)
    msg = {**template, "messageId": f"fz-{n}", "userId": f"user-{n}"}
    if anonymous:
        msg["anonymousId"] = f"anon-{n}"
    if msg["type"] == "group":
        msg["groupId"] = f"group-{n}"
    if msg["type"] == "alias":
        msg["previousId"] = f"prev-{n}"
    return msg


# A mutation makes any good message invalid, and names the field it breaks (relative to
# the item; "" means the item itself).
MUTATIONS: dict[str, st.SearchStrategy[Any]] = {
    "userId": bad_ids,
    "anonymousId": bad_ids,
    "messageId": bad_message_ids,
    "timestamp": bad_timestamps,
    "originalTimestamp": bad_timestamps,
    "sentAt": bad_timestamps,
    "properties": st.sampled_from([[], "x", 1, True]),
    "context": st.sampled_from(["x", 1, [], False]),
    "price": bad_numbers,
    "quantity": bad_numbers,
    "products": st.sampled_from(
        [
            ("x", "properties.products"),
            ({"a": 1}, "properties.products"),
            ([1], "properties.products[0]"),
            ([{"product_id": "a"}, None], "properties.products[1]"),
            ([{"product_id": "a", "price": "zz"}], "properties.products[0].price"),
            ([{"product_id": {"x": 1}}], "properties.products[0].product_id"),
            ([{"sku": "s" * 256}], "properties.products[0].sku"),
            ([{}] * 1001, "properties.products"),
        ]
    ),
    "event": st.sampled_from(["", "   ", "e" * 201, 5, None, ["Order Completed"]]),
    "type": st.sampled_from(["bogus", "TRACK", 1, None]),
    "nul": st.sampled_from(
        [
            ("properties", {"k": "a\x00"}, "properties.k"),
            ("properties", {"a\x00": 1}, "properties.a\x00"),
            ("traits", {"deep": [1, {"x": "\x00"}]}, "traits.deep[1].x"),
            ("context", {"page": {"url": "http://x/\x00"}}, "context.page.url"),
            ("name", "N\x00", "name"),
        ]
    ),
    "junk_userId": st.sampled_from(["null", "undefined", "0", "  ", "[object Object]"]),
    "missing_groupId": st.none(),
    "missing_previousId": st.none(),
    "not_object": not_objects,
}


def mutate(msg: dict[str, Any], name: str, value: Any) -> tuple[Any, str]:
    """Apply mutation ``name`` to a good message: (the bad item, the field it breaks)."""
    msg = dict(msg)
    if name in ("userId", "anonymousId", "messageId", "timestamp", "originalTimestamp"):
        msg[name] = value
        return msg, name
    if name == "sentAt":
        msg["sentAt"] = value
        return msg, "sentAt"
    if name in ("properties", "context"):
        msg[name] = value
        return msg, name
    if name in ("price", "quantity"):
        msg.update(type="track", event="Product Viewed")
        msg["properties"] = {"product_id": "sku-1", name: value}
        return msg, f"properties.{name}"
    if name == "products":
        products, field = value
        msg.update(type="track", event="Order Completed", properties={"products": products})
        return msg, field
    if name == "event":
        msg.update(type="track", event=value)
        return msg, "event"
    if name == "type":
        msg["type"] = value
        return msg, "type"
    if name == "nul":
        key, bad, field = value
        msg[key] = bad
        return msg, field
    if name == "junk_userId":
        msg.pop("anonymousId", None)
        if msg["type"] == "alias":
            msg["type"] = "track"
            msg["event"] = "Signed Up"
        msg["userId"] = value
        return msg, "userId"
    if name == "missing_groupId":
        msg.update(type="group")
        msg.pop("groupId", None)
        return msg, "groupId"
    if name == "missing_previousId":
        msg.update(type="alias")
        msg.pop("previousId", None)
        return msg, "previousId"
    if name == "not_object":
        return value, ""
    raise AssertionError(name)


mutations = st.sampled_from(sorted(MUTATIONS)).flatmap(
    lambda name: st.tuples(st.just(name), MUTATIONS[name])
)


def _last_seq(engine: Engine, workspace: CreatedWorkspace) -> int:
    rows = engine.events(workspace.workspace, limit=1, newest=True)
    return int(rows[-1]["seq"]) if rows else 0


# -- 1. arbitrary JSON to every endpoint -----------------------------------------------------


@FUZZ
@given(path=st.sampled_from(ALL_PATHS), value=json_values, ensure_ascii=st.booleans())
@example(path="/v1/batch", value={"batch": [], "context": {"a": "\x00"}}, ensure_ascii=False)
@example(path="/v1/track", value=2**70, ensure_ascii=True)
def test_any_json_body_never_5xx(
    client: Any, workspace: CreatedWorkspace, path: str, value: Any, ensure_ascii: bool
) -> None:
    resp = _post(client, workspace.keys["write"], path, encode(value, ensure_ascii))
    assert_named(resp)


@FUZZ
@given(
    path=st.sampled_from(ALL_PATHS),
    value=plausible_messages | plausible_batches,
    ensure_ascii=st.booleans(),
)
@example(
    path="/v1/batch",
    value={"batch": [{"type": "track", "event": "e", "userId": "u"}], "context": {"a": "\x00"}},
    ensure_ascii=False,
)
@example(
    path="/v1/batch",
    value={"batch": [{"type": "identify", "userId": "u"}], "integrations": {"\x00": True}},
    ensure_ascii=True,
)
def test_segment_shaped_bodies_never_5xx(
    client: Any, workspace: CreatedWorkspace, path: str, value: Any, ensure_ascii: bool
) -> None:
    """Known Segment keys holding values of any JSON type (batch-level fields included)."""
    resp = _post(client, workspace.keys["write"], path, encode(value, ensure_ascii))
    assert_named(resp)


# -- 2. good messages with one mutated field, to the single-call endpoints --------------------


@FUZZ
@given(template=good_templates(), anonymous=st.booleans(), mutation=mutations)
def test_mutated_message_is_refused_by_field(
    client: Any,
    workspace: CreatedWorkspace,
    template: dict[str, Any],
    anonymous: bool,
    mutation: tuple[str, Any],
) -> None:
    key = workspace.keys["write"]
    good = with_ids(template, anonymous)
    bad, field = mutate(good, *mutation)
    msg_type = bad.get("type") if isinstance(bad, dict) else None
    path = f"/v1/{msg_type if msg_type in ENDPOINTS else good['type']}"
    if mutation == ("type", None):  # a single call may omit its type: send a mismatch instead
        bad["type"] = "screen" if good["type"] != "screen" else "page"
        path = f"/v1/{good['type']}"
    resp = _post(client, key, path, encode(bad, False))
    doc = assert_named(resp, {400, 413})
    assert [e["field"] for e in doc["errors"]] == [field or "body"], doc

    # The same message without its mutation is stored.
    ok = _post(client, key, f"/v1/{good['type']}", encode(good, False))
    assert assert_named(ok, {200})["status"] == "stored", ok.text


@FUZZ
@given(template=good_templates(), length=st.sampled_from([98, 99, 100, 101]))
def test_message_id_length_limit(
    client: Any, workspace: CreatedWorkspace, template: dict[str, Any], length: int
) -> None:
    msg = with_ids(template, anonymous=False)
    msg["messageId"] = (msg["messageId"] + "-" + "x" * length)[:length]
    resp = _post(client, workspace.keys["write"], f"/v1/{msg['type']}", encode(msg, False))
    if length < 100:
        assert assert_named(resp, {200})["messageId"] == msg["messageId"]
    else:
        doc = assert_named(resp, {400})
        assert [e["field"] for e in doc["errors"]] == ["messageId"]


# -- 3. batches mixing good and bad items ------------------------------------------------------


@st.composite
def mixed_batches(draw: st.DrawFn) -> list[tuple[dict[str, Any], bool, tuple[str, Any] | None]]:
    n = draw(st.integers(1, 12))
    return [
        (
            draw(good_templates()),
            draw(st.booleans()),
            draw(st.none() | mutations),
        )
        for _ in range(n)
    ]


@FUZZ
@given(specs=mixed_batches(), gzipped=st.booleans())
def test_batch_stores_good_items_and_reports_bad_ones_by_index(
    client: Any,
    engine: Engine,
    workspace: CreatedWorkspace,
    specs: list[tuple[dict[str, Any], bool, tuple[str, Any] | None]],
    gzipped: bool,
) -> None:
    items: list[Any] = []
    good_ids: list[str] = []
    bad_fields: dict[int, str] = {}
    for i, (template, anonymous, mutation) in enumerate(specs):
        good = with_ids(template, anonymous)
        if mutation is None:
            items.append(good)
            good_ids.append(good["messageId"])
        else:
            bad, field = mutate(good, *mutation)  # a null type is refused in a batch
            items.append(bad)
            bad_fields[i] = f"batch[{i}]" + (f".{field}" if field else "")
    before = _last_seq(engine, workspace)
    body = encode({"batch": items, "sentAt": "2024-05-01T12:00:01Z"}, False)
    headers = {}
    if gzipped:
        body = gzip.compress(body)
        headers["content-encoding"] = "gzip"
    resp = _post(client, workspace.keys["write"], "/v1/batch", body, **headers)

    doc = assert_named(resp, {200} if good_ids else {400})
    assert doc["received"] == len(items)
    assert doc["stored"] == len(good_ids), doc
    reported = {e["index"]: e["field"] for e in doc["errors"]}
    assert reported == bad_fields, doc["errors"]
    assert [item["index"] for item in doc["items"]] == list(range(len(items)))

    stored = engine.events(workspace.workspace, after=before, limit=1000)
    assert [e["messageId"] for e in stored] == good_ids


def test_batch_good_items_are_readable_over_http(client: Any, workspace: CreatedWorkspace) -> None:
    items: list[Any] = [
        {"type": "track", "event": "view_item", "userId": "u1", "messageId": "g-1"},
        {"type": "track", "event": "Product Viewed", "userId": "u1", "properties": {"price": "x"}},
        None,
        {"type": "identify", "userId": "u2", "messageId": "g-2", "traits": {"email": "a@b.c"}},
        {"type": "page", "userId": 7, "timestamp": "nope"},
        {"type": "alias", "userId": "u3", "previousId": "p3", "messageId": "g-3"},
    ]
    resp = _post(client, workspace.keys["write"], "/v1/batch", encode({"batch": items}, False))
    doc = assert_named(resp, {200})
    assert [(e["index"], e["field"]) for e in doc["errors"]] == [
        (1, "batch[1].properties.price"),
        (2, "batch[2]"),
        (4, "batch[4].timestamp"),
    ]
    read = client.get("/v1/events", headers={"authorization": f"Bearer {workspace.keys['read']}"})
    assert read.status_code == 200
    assert [e["messageId"] for e in read.json()["events"]] == ["g-1", "g-2", "g-3"]


# -- 4. raw bytes, empty bodies, compression ----------------------------------------------------


@FUZZ
@given(path=st.sampled_from(ALL_PATHS), raw=st.binary(max_size=200))
@example(path="/v1/track", raw=b"")
@example(path="/v1/batch", raw=b"   \n\t")
@example(path="/v1/identify", raw=b"\xff\xfe{}")
@example(path="/v1/track", raw=b'{"userId": "u", "event": "e"')
@example(path="/v1/page", raw=b'{"userId": "\xc3\x28"}')
@example(path="/v1/batch", raw=b"NaN")
def test_raw_bytes_never_5xx(
    client: Any, workspace: CreatedWorkspace, path: str, raw: bytes
) -> None:
    resp = _post(client, workspace.keys["write"], path, raw)
    doc = assert_named(resp)
    try:
        json.loads(raw)
        is_json = True
    except ValueError:
        is_json = False
    if not is_json:
        assert resp.status_code == 400
        assert [e["field"] for e in doc["errors"]] == ["body"]


@FUZZ
@given(
    path=st.sampled_from(ALL_PATHS),
    value=json_values | plausible_messages,
    encoding=st.sampled_from(["gzip", "deflate", "GZIP"]),
    corrupt=st.sampled_from(["none", "truncate", "flip", "garbage", "empty", "trailing"]),
)
@example(path="/v1/track", value={}, encoding="br", corrupt="none")
@example(path="/v1/track", value={}, encoding="gzip, gzip", corrupt="none")
def test_compressed_bodies_never_5xx(
    client: Any,
    workspace: CreatedWorkspace,
    path: str,
    value: Any,
    encoding: str,
    corrupt: str,
) -> None:
    plain = encode(value, True)
    body = gzip.compress(plain) if encoding.lower() == "gzip" else zlib.compress(plain)
    if corrupt == "truncate":
        body = body[: len(body) // 2]
    elif corrupt == "flip":
        mid = len(body) // 2
        body = body[:mid] + bytes([body[mid] ^ 0xFF]) + body[mid + 1 :]
    elif corrupt == "garbage":
        body = b"this is not compressed at all"
    elif corrupt == "empty":
        body = b""
    elif corrupt == "trailing":
        body = body + b"junk"
    resp = _post(client, workspace.keys["write"], path, body, **{"content-encoding": encoding})
    doc = assert_named(resp)
    if corrupt in ("truncate", "garbage", "empty") or encoding not in ("gzip", "deflate", "GZIP"):
        assert resp.status_code == 400
        assert all(e["field"] for e in doc["errors"])


@pytest.mark.parametrize("path", ["/v1/track", "/v1/batch"])
def test_valid_gzip_is_accepted_and_oversized_bodies_name_the_body(
    client: Any, workspace: CreatedWorkspace, path: str
) -> None:
    key = workspace.keys["write"]
    msg = {"type": "track", "event": "Signed Up", "userId": "gz-1"}
    body = {"batch": [msg]} if path == "/v1/batch" else msg
    resp = _post(
        client, key, path, gzip.compress(encode(body, False)), **{"content-encoding": "gzip"}
    )
    assert_named(resp, {200})

    limit = 500 * 1024 if path == "/v1/batch" else 32 * 1024
    big = b'{"userId": "u", "event": "e", "pad": "' + b"x" * limit + b'"}'
    for raw, headers in (
        (big, {}),  # Content-Length over the limit
        (gzip.compress(big), {"content-encoding": "gzip"}),  # over the limit once inflated
    ):
        doc = assert_named(_post(client, key, path, raw, **headers), {413})
        assert [e["field"] for e in doc["errors"]] == ["body"]


# -- 5. workspace settings, then events under them ---------------------------------------------

category_names = st.sampled_from(
    ["analytics", "marketing", "c" * 64, "c" * 65, "a\x00b", ""]
) | st.text(max_size=20)
settings_changes = st.fixed_dictionaries(
    {},
    optional={
        "consent_mode": st.sampled_from(["opt_in", "opt_out"]) | json_values,
        "categories": st.lists(category_names, max_size=4).map(lambda c: ["analytics", *c])
        | json_values,
        "event_categories": st.dictionaries(st.sampled_from(["E", "Signed Up"]), category_names)
        | json_values,
        "default_category": category_names | json_values,
        "pii_traits": st.lists(st.text(max_size=10), max_size=3) | json_values,
        "pii_policy": st.sampled_from(["hash", "keep", "drop"]) | json_values,
        "ip_policy": st.sampled_from(["truncate", "keep", "drop"]) | json_values,
        "junk_ids": st.lists(st.text(max_size=10), max_size=3) | json_values,
        "rate_limit_events_per_second": st.sampled_from([None, 0, 5e-324, 1e-300, 0.5, 1e308])
        | st.floats(min_value=0, allow_nan=False, allow_infinity=False)
        | json_values,
        "unknown": json_values,
    },
)


@FUZZ
@given(changes=settings_changes)
@example(changes={"junk_ids": ["\x00"]})  # PostgreSQL cannot store NUL: was a 500
@example(changes={"categories": ["analytics", "c" * 65], "event_categories": {"E": "c" * 65}})
@example(changes={"rate_limit_events_per_second": 5e-324})  # infinite Retry-After: was a 500
def test_settings_then_events_never_5xx(
    client: Any, workspace: CreatedWorkspace, changes: dict[str, Any]
) -> None:
    """Any settings change is stored or refused by field, and events under the resulting
    settings are stored, refused or rate limited, never a server error."""
    admin = {"authorization": f"Bearer {workspace.keys['admin']}"}
    resp = client.patch(
        "/v1/workspace/settings",
        content=encode(changes, False),
        headers={**admin, "content-type": "application/json"},
    )
    assert_named(resp, {200, 400})
    assert client.get("/v1/workspace", headers=admin).status_code == 200
    for event in ("E", "Signed Up", "E"):
        body = encode({"userId": "u1", "event": event}, False)
        sent = _post(client, workspace.keys["write"], "/v1/track", body)
        assert_named(sent, {200, 429})
        if sent.status_code == 429:
            assert 1 <= int(sent.headers["retry-after"]) <= 86_400


# -- 6. schemathesis over /openapi.json ---------------------------------------------------------


@pytest.mark.slow
def test_schemathesis_finds_no_server_error(tmp_path: Path) -> None:
    """Every operation of the OpenAPI document, positive and negative cases: no 5xx.

    SQLite only: the schema-driven run checks the HTTP layer, which does not depend on the
    dialect; the dialect-sensitive payload checks above run on both databases.
    """
    import schemathesis
    from schemathesis import GenerationMode

    from sartor.api.app import create_app
    from sartor.config import Settings

    cfg = Settings(
        env="test",
        home=tmp_path,
        secret_key="test-secret-key-0123456789",
        rate_limit_events_per_second=0,
        log_json=False,
    )
    engine = Engine.open(f"sqlite:///{tmp_path / 'schemathesis.db'}", settings=cfg)
    try:
        created = engine.create_workspace("schemathesis")
        write = _basic(created.keys["write"])
        admin = f"Bearer {created.keys['admin']}"
        schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(engine))
        failures: list[str] = []
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 12
        for operation in operations:
            auth = write if operation.path in ALL_PATHS else admin
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                _no_server_error(operation.as_strategy(generation_mode=mode), auth, failures)
        assert not failures, "\n\n".join(failures[:10])
    finally:
        engine.close()


def _no_server_error(strategy: Any, auth: str, failures: list[str]) -> None:
    """Run one operation's generated cases with ``auth``; collect every 5xx."""

    @settings(
        max_examples=40,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        resp = case.call(headers={"Authorization": auth})
        if resp.status_code >= 500:
            failures.append(
                f"{case.operation.label} -> {resp.status_code}: "
                f"{resp.text[:300]}\n{case.as_curl_command()}"
            )

    run()


def _basic(key: str) -> str:
    import base64

    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


# -- 6. the fast message check agrees with the pydantic model ---------------------------------

# Values at and past every bound check_message enforces, and the odd types the model accepts.
EDGE_STRINGS = [
    "",
    " ",
    "track",
    "page",
    "x" * 99,
    "x" * 100,
    "x" * 200,
    "x" * 201,
    "x" * 255,
    "x" * 256,
    "x" * 8193,
]
EDGE_OBJECTS: list[Any] = [
    {},
    {"a": 1},
    {"k" * 8192: 1},
    {"k" * 8193: 1},
    {1: "not a text key"},  # only from Python callers (Engine.track(properties=...))
    {"nested": {"k" * 9000: "deeper keys are not the model's concern"}},
]
EDGE_TIMES: list[Any] = [
    "2024-05-01T12:00:00Z",
    "2024-05-01T12:00:00.123+02:00",
    "2024-05-01T12:00:00",
    "0001-01-01T00:00:00+23:59",
    "0001-01-01T00:00:00-23:59",
    "garbage",
    "2024-13-45T00:00:00Z",
    "9" * 70,
    1714564800,
    1714564800123,
    1714564800.5,
    0,
    1e20,
    10**17,
    1e308,
]
edge_strings = st.sampled_from(EDGE_STRINGS)
edge_objects = st.sampled_from(EDGE_OBJECTS)
edge_values = edge_strings | edge_objects | st.sampled_from(EDGE_TIMES) | json_values
edge_keys = st.sampled_from(MESSAGE_KEYS) | st.sampled_from(["extra", "k" * 9000])
edge_messages = st.dictionaries(
    edge_keys, edge_values | st.integers(min_value=-(2**70), max_value=2**70), max_size=10
)


@st.composite
def valid_but_one(draw: st.DrawFn) -> dict[str, Any]:
    """A complete, valid message with one or two fields at an edge: a check that let a bad
    value through (or refused a good one) shows here, every other field being fine."""
    msg = {
        **draw(good_templates()),
        "messageId": "m-1",
        "userId": "u-1",
        "anonymousId": "a-1",
        "context": {"ip": "203.0.113.9"},
        "properties": {"product_id": "p-1"},
    }
    for key, value in draw(st.lists(st.tuples(edge_keys, edge_values), min_size=1, max_size=2)):
        msg[key] = value
    return msg


def _outcome(validate: Any, raw: Any) -> tuple[Any, ...]:
    from sartor.collect.errors import FieldError
    from sartor.collect.messages import Message

    try:
        msg = validate(raw)
    except FieldError as exc:
        return ("error", exc.field, exc.message)
    return ("ok", {f: getattr(msg, f) for f in Message.model_fields}, msg.model_extra)


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(raw=valid_but_one() | edge_messages | plausible_messages)
def test_fast_message_check_agrees_with_the_model(raw: dict[str, Any]) -> None:
    """The hand-written check in front of the model accepts only what the model accepts,
    with the same values (objects copied, timestamps in ms, extras kept), and every
    rejection is the model's own, with its field path."""
    import orjson

    from sartor.collect.messages import Message, check_message, validate_message

    try:
        size: int | None = len(orjson.dumps(raw))
    except TypeError:  # a text key orjson cannot write, or an integer past 64 bits
        size = None
    reference = _outcome(lambda r: _model_only(Message, r), raw)
    assert _outcome(lambda r: validate_message(r, "", size), raw) == reference
    assert _outcome(lambda r: validate_message(r), raw) == reference
    checked = check_message(raw, size)
    if checked is not None:
        assert reference[0] == "ok"
        assert checked.context is not raw.get("context") or raw.get("context") is None


EDGE_BASES = [
    {"type": "track", "event": "Order Completed", "properties": {"order_id": "o-1"}},
    {"type": "identify", "traits": {"email": "ann@example.com"}},
    {"type": "page", "name": "Home"},
    {"type": "alias", "previousId": "old-1"},
    {"type": "group", "groupId": "g-1", "integrations": {"All": True}},
]
EDGE_VALUES: list[Any] = [
    *EDGE_STRINGS,
    *EDGE_OBJECTS,
    *EDGE_TIMES,
    None,
    True,
    7,
    2**70,
    1.5,
    [],
    ["x"],
]


def test_fast_message_check_agrees_with_the_model_on_every_edge() -> None:
    """Every edge value in every field of a few valid messages, exhaustively (the random
    search above rarely puts an edge value next to only valid fields)."""
    import orjson

    from sartor.collect.messages import Message, validate_message

    checked = 0
    for base in EDGE_BASES:
        base = {**base, "messageId": "m-1", "userId": "u-1", "context": {"ip": "203.0.113.9"}}
        for key in [*MESSAGE_KEYS, "extra", "k" * 9000, 1]:
            for value in EDGE_VALUES:
                raw = {**base, key: value}
                try:
                    size: int | None = len(orjson.dumps(raw))
                except TypeError:
                    size = None
                reference = _outcome(lambda r: _model_only(Message, r), raw)
                got = _outcome(lambda r, n=size: validate_message(r, "", n), raw)
                assert got == reference, (key, value)
                checked += 1
    assert checked > 2000


def _model_only(model: Any, raw: Any) -> Any:
    from pydantic import ValidationError

    from sartor.collect.errors import FieldError
    from sartor.collect.messages import _path

    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        raise FieldError(
            _path("", tuple(err["loc"])), str(err["msg"]).removeprefix("Value error, ")
        ) from None


def test_fast_message_check_takes_the_common_message() -> None:
    """The check is worth having only if it takes ordinary messages without the model."""
    from sartor.collect.messages import CheckedMessage, check_message

    raw = {
        "type": "track",
        "event": "Product Viewed",
        "messageId": "m-1",
        "anonymousId": "a-1",
        "userId": "u-1",
        "timestamp": "2024-05-01T12:00:00.123Z",
        "properties": {"product_id": "p-1", "price": 9.5},
        "context": {"ip": "203.0.113.9", "library": {"name": "analytics.js"}},
        "receivedAt": "kept as an extra",
    }
    checked = check_message(raw)
    assert isinstance(checked, CheckedMessage)
    assert checked.timestamp == 1714564800123
    assert checked.model_extra == {"receivedAt": "kept as an extra"}
    assert check_message({**raw, "userId": 42}) is None  # valid, but the model converts it
