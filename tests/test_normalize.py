"""Pure functions of collection: names, products, timestamps, skew, context merge."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sartor.collect.errors import FieldError
from sartor.collect.messages import parse_timestamp, validate_message
from sartor.collect.normalize import canonical_event_name, normalize_properties
from sartor.collect.prepare import merge_context, prepare, resolve_timestamp
from sartor.workspace import WorkspaceSettings

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("view_item", "Product Viewed"),
        ("add_to_cart", "Product Added"),
        ("begin_checkout", "Checkout Started"),
        ("checkout_initiated", "Checkout Started"),
        ("purchase", "Order Completed"),
        ("search", "Products Searched"),
        ("product_viewed", "Product Viewed"),
        ("ORDER COMPLETED", "Order Completed"),
        ("Order Completed", "Order Completed"),
        ("Signed Up", "Signed Up"),
    ],
)
def test_event_names_fold_to_segment(raw: str, canonical: str) -> None:
    assert canonical_event_name(raw) == canonical


def test_ga4_items_become_segment_products() -> None:
    props = normalize_properties(
        "Order Completed",
        {
            "transaction_id": 991,
            "value": "30.5",
            "currency": "EUR",
            "items": [
                {
                    "item_id": 7,
                    "item_name": "Mug",
                    "item_brand": "Acme",
                    "price": "10.25",
                    "quantity": "2",
                    "item_category": "Home",
                    "item_category2": "Kitchen",
                },
            ],
        },
        "properties",
    )
    assert props["order_id"] == "991"
    assert props["total"] == props["revenue"] == 30.5
    assert props["products"] == [
        {
            "product_id": "7",
            "name": "Mug",
            "brand": "Acme",
            "price": 10.25,
            "quantity": 2,
            "category": "Home/Kitchen",
        }
    ]


def test_single_product_event_lifts_the_item_to_the_top() -> None:
    props = normalize_properties(
        "Product Added", {"items": [{"item_id": "sku-1", "price": 5}]}, "properties"
    )
    assert props["product_id"] == "sku-1" and props["price"] == 5
    # An explicit top-level product wins over the lifted one.
    props = normalize_properties(
        "Product Viewed", {"product_id": "a", "items": [{"item_id": "b"}]}, "properties"
    )
    assert props["product_id"] == "a"


def test_segment_spelling_wins_over_ga4_alias() -> None:
    props = normalize_properties(
        "Product Viewed", {"product_id": "seg", "item_id": "ga4"}, "properties"
    )
    assert props["product_id"] == "seg"


@pytest.mark.parametrize(
    ("props", "field"),
    [
        ({"price": "cheap"}, "properties.price"),
        ({"price": True}, "properties.price"),
        ({"products": [{"quantity": "x"}]}, "properties.products[0].quantity"),
        ({"products": "nope"}, "properties.products"),
        ({"products": [1]}, "properties.products[0]"),
        ({"value": "abc"}, "properties.value"),
        ({"price": float("nan")}, "properties.price"),
    ],
)
def test_bad_product_numbers_name_the_field(props: dict, field: str) -> None:
    with pytest.raises(FieldError) as info:
        normalize_properties("Product Added", props, "properties")
    assert info.value.field == field


def test_custom_event_properties_are_untouched() -> None:
    props = {"price": "not a number", "items": 3}
    assert normalize_properties("Newsletter Opened", props, "properties") is props


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-01-01T00:00:00Z", T0),
        ("2026-01-01T01:00:00+01:00", T0),
        ("2026-01-01T00:00:00", T0),
        ("2026-01-01T00:00:00.250Z", T0 + 250),
        (T0 / 1000, T0),
        (T0, T0),
        (None, None),
    ],
)
def test_timestamps(value: object, expected: int | None) -> None:
    assert parse_timestamp(value) == expected


@pytest.mark.parametrize("value", ["yesterday", "2026-13-01T00:00:00Z", True, [1], "9" * 80])
def test_bad_timestamps(value: object) -> None:
    with pytest.raises(ValueError):
        parse_timestamp(value)


def test_clock_skew_correction() -> None:
    # The client clock is 10 minutes fast: it stamped the event at 12:10 and sent it at 12:11;
    # the server received it at 12:01. The event happened one minute before receipt.
    msg = validate_message(
        {"originalTimestamp": "2026-01-01T12:10:00Z", "sentAt": "2026-01-01T12:11:00Z"}
    )
    received = parse_timestamp("2026-01-01T12:01:00Z")
    assert received is not None
    assert resolve_timestamp(msg, None, received) == parse_timestamp("2026-01-01T12:00:00Z")
    # A batch-level sentAt works the same way; an explicit timestamp is kept as sent.
    msg = validate_message({"originalTimestamp": "2026-01-01T12:10:00Z"})
    assert resolve_timestamp(msg, parse_timestamp("2026-01-01T12:11:00Z"), received) == (
        parse_timestamp("2026-01-01T12:00:00Z")
    )
    msg = validate_message({"timestamp": "2020-05-05T00:00:00Z", "sentAt": "2026-01-01T00:00:00Z"})
    assert resolve_timestamp(msg, None, received) == parse_timestamp("2020-05-05T00:00:00Z")
    assert resolve_timestamp(validate_message({}), None, received) == received


def test_batch_context_merges_under_the_item() -> None:
    merged = merge_context(
        {"library": {"name": "batch", "version": "1"}, "locale": "en"},
        {"library": {"name": "item"}, "page": {"path": "/"}},
    )
    assert merged == {
        "library": {"name": "item", "version": "1"},
        "locale": "en",
        "page": {"path": "/"},
    }


def _prep(raw: dict, settings: WorkspaceSettings | None = None):  # type: ignore[no-untyped-def]
    return prepare(
        raw,
        index=0,
        prefix="batch[0]",
        settings=settings or WorkspaceSettings(),
        pii_key=b"k",
        received_at=T0,
    )


@pytest.mark.parametrize("junk", ["null", "undefined", "anonymous", "0", "-1", "", "  ", "NULL"])
def test_junk_ids_are_refused_as_identities(junk: str) -> None:
    with pytest.raises(FieldError) as info:
        _prep({"type": "track", "event": "x", "userId": junk})
    assert info.value.field == "batch[0].userId"
    # With a real anonymousId beside it, the event is kept and the junk userId ignored.
    event = _prep({"type": "track", "event": "x", "userId": junk, "anonymousId": "a-1"})
    assert event.user_id is None and event.anonymous_id == "a-1"
    assert event.payload["ignoredIds"] == {"userId": junk}


def test_workspace_junk_list_extends_the_builtins() -> None:
    settings = WorkspaceSettings(junk_ids=["guest"])
    with pytest.raises(FieldError):
        _prep({"type": "track", "event": "x", "userId": "Guest"}, settings)


def test_message_id_limit_and_generation() -> None:
    assert _prep({"type": "track", "event": "x", "userId": "u", "messageId": "m" * 99}).message_id
    with pytest.raises(FieldError) as info:
        _prep({"type": "track", "event": "x", "userId": "u", "messageId": "m" * 100})
    assert info.value.field == "batch[0].messageId"
    generated = _prep({"type": "track", "event": "x", "userId": "u"})
    assert generated.generated_message_id and generated.message_id.startswith("sartor-")


def test_pii_traits_are_hashed_with_a_key() -> None:
    a = _prep({"type": "identify", "userId": "u", "traits": {"email": " Ann@X.com", "plan": "pro"}})
    b = _prep({"type": "identify", "userId": "u", "traits": {"email": "ann@x.com"}})
    assert a.payload["traits"]["email"].startswith("hmac-sha256:")
    assert a.payload["traits"]["email"] == b.payload["traits"]["email"]
    assert a.payload["traits"]["plan"] == "pro"
    dropped = _prep(
        {"type": "identify", "userId": "u", "traits": {"email": "a@b.c"}},
        WorkspaceSettings(pii_policy="drop"),
    )
    assert "email" not in dropped.payload["traits"]
    kept = _prep(
        {"type": "identify", "userId": "u", "traits": {"email": "a@b.c"}},
        WorkspaceSettings(pii_policy="keep"),
    )
    assert kept.payload["traits"]["email"] == "a@b.c"


# Product-ish objects: Segment and GA4 spellings, ids and numbers of every JSON type.
_product_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", " ", "sku-1", "12", "1e3", "x" * 256, "Shoes/Boots"]),
    st.lists(st.integers(), max_size=2),
)
_products = st.dictionaries(
    st.sampled_from(
        [
            "product_id",
            "sku",
            "name",
            "price",
            "quantity",
            "category",
            "brand",
            "item_id",
            "id",
            "item_name",
            "item_category",
            "item_category2",
            "item_categoryX",
            "url",
            "products",
        ]
    ),
    _product_values,
    max_size=7,
)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(product=_products)
def test_the_normal_product_shortcut_is_what_normalizing_returns(product: dict) -> None:
    """normalize_properties keeps a product as it is when _is_normal_product says it is in
    Segment's shape already; that must be exactly what _normalize_product would return."""
    from sartor.collect.normalize import _is_normal_product, _normalize_product

    if _is_normal_product(product):
        normalized = _normalize_product(dict(product), "p")
        assert normalized == product
        assert list(normalized) == list(product)  # the same key order, as stored


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(
    event=st.sampled_from(["Product Viewed", "Product Added", "Order Completed", "view_item"]),
    props=_products,
    order_fields=st.dictionaries(
        st.sampled_from(["order_id", "orderId", "revenue", "value", "total", "items"]),
        _product_values,
        max_size=3,
    ),
)
def test_normalized_properties_do_not_alias_the_input(
    event: str, props: dict, order_fields: dict
) -> None:
    """The shortcuts return fresh objects: normalizing never changes what was sent, and a
    second normalization of the result changes nothing (it is already normal)."""
    import copy

    sent = {**props, **order_fields}
    before = copy.deepcopy(sent)
    name = canonical_event_name(event)
    try:
        once = normalize_properties(name, sent, "properties")
    except FieldError:
        return
    assert sent == before  # (a NaN is the same object in both: dicts compare it equal)
    assert once is not sent
    assert normalize_properties(name, once, "properties") == once
