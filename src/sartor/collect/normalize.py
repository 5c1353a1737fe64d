"""Event names and product fields: Segment e-commerce v2 is canonical, GA4 is accepted.

Pure functions over a message's ``properties``; :class:`FieldError` names what is wrong.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any

from sartor.collect.errors import FieldError

# Segment e-commerce v2 spec names (the canonical form Sartor stores).
SEGMENT_ECOMMERCE_EVENTS = (
    "Products Searched",
    "Product List Viewed",
    "Product List Filtered",
    "Promotion Viewed",
    "Promotion Clicked",
    "Product Clicked",
    "Product Viewed",
    "Product Added",
    "Product Removed",
    "Cart Viewed",
    "Checkout Started",
    "Checkout Step Viewed",
    "Checkout Step Completed",
    "Payment Info Entered",
    "Order Updated",
    "Order Completed",
    "Order Refunded",
    "Order Cancelled",
    "Coupon Entered",
    "Coupon Applied",
    "Coupon Denied",
    "Coupon Removed",
    "Product Added to Wishlist",
    "Product Removed from Wishlist",
    "Wishlist Product Added to Cart",
    "Product Shared",
    "Cart Shared",
    "Product Reviewed",
)

GA4_EVENTS = {
    "view_item": "Product Viewed",
    "view_item_list": "Product List Viewed",
    "select_item": "Product Clicked",
    "add_to_cart": "Product Added",
    "remove_from_cart": "Product Removed",
    "view_cart": "Cart Viewed",
    "begin_checkout": "Checkout Started",
    "checkout_initiated": "Checkout Started",
    "add_shipping_info": "Checkout Step Completed",
    "add_payment_info": "Payment Info Entered",
    "purchase": "Order Completed",
    "refund": "Order Refunded",
    "search": "Products Searched",
    "view_search_results": "Products Searched",
    "add_to_wishlist": "Product Added to Wishlist",
    "view_promotion": "Promotion Viewed",
    "select_promotion": "Promotion Clicked",
    "share": "Product Shared",
}


def _snake(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip()).lower()


# Every spelling we accept, folded to lower snake case, mapped to the canonical name:
# "product_viewed", "PRODUCT VIEWED", "view_item" all become "Product Viewed".
_ALIASES: dict[str, str] = {_snake(n): n for n in SEGMENT_ECOMMERCE_EVENTS}
_ALIASES.update(GA4_EVENTS)

# Events about exactly one product: Segment puts its fields at the top of `properties`.
SINGLE_PRODUCT_EVENTS = frozenset(
    {
        "Product Viewed",
        "Product Clicked",
        "Product Added",
        "Product Removed",
        "Product Added to Wishlist",
        "Product Removed from Wishlist",
        "Wishlist Product Added to Cart",
        "Product Shared",
        "Product Reviewed",
    }
)

# GA4 item / order field -> Segment field.
_PRODUCT_FIELD_ALIASES = {
    "item_id": "product_id",
    "productId": "product_id",
    "productID": "product_id",
    "id": "product_id",
    "item_name": "name",
    "item_brand": "brand",
    "item_variant": "variant",
    "item_category": "category",
    "item_list_id": "list_id",
    "item_list_name": "list_name",
}
_ORDER_FIELD_ALIASES = {
    "transaction_id": "order_id",
    "orderId": "order_id",
    "search_term": "query",
    "items": "products",
}
NUMERIC_PRODUCT_FIELDS = ("price", "quantity")
NUMERIC_ORDER_FIELDS = ("revenue", "total", "value", "subtotal", "tax", "shipping", "discount")
MAX_PRODUCTS = 1000


@functools.lru_cache(maxsize=4096)
def canonical_event_name(name: str) -> str:
    """The canonical name of an event: GA4 and snake_case spellings become Segment's.

    Cached: a shop sends a few dozen distinct names, and the regular expression that folds
    them costs more than the rest of an event's naming."""
    return _ALIASES.get(_snake(name), name)


def _number(value: Any, field: str) -> float | int:
    if isinstance(value, bool):
        raise FieldError(field, "must be a number, not a boolean")
    if isinstance(value, int | float):
        number: float | int = value
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise FieldError(field, f"must be a number, got {value[:40]!r}") from None
        if number.is_integer() and "." not in value and "e" not in value.lower():
            number = int(number)
    else:
        raise FieldError(field, f"must be a number, got {type(value).__name__}")
    if isinstance(number, float) and not math.isfinite(number):
        raise FieldError(field, "must be a finite number")
    return number


_PRODUCT_ALIAS_KEYS = frozenset(_PRODUCT_FIELD_ALIASES)


def _is_normal_product(raw: dict[str, Any]) -> bool:
    """Already in Segment's shape (no GA4 spellings, text ids, numeric price and quantity),
    so that :func:`_normalize_product` would return an equal copy: the common case, checked
    cheaply (an import of 500,000 order lines checks each)."""
    if not _PRODUCT_ALIAS_KEYS.isdisjoint(raw):
        return False
    try:
        keys = "\x00".join(raw)  # one search in C instead of a test per key
    except TypeError:
        return False  # a key that is not text
    if "item_category" in keys:  # GA4's item_category2..5 (and, to be safe, look-alikes)
        return False
    for name in ("product_id", "sku"):
        value = raw.get(name)
        if value is not None and (type(value) is not str or len(value) > 255):
            return False
    for name in NUMERIC_PRODUCT_FIELDS:
        value = raw.get(name)
        if value is not None and (type(value) not in (int, float) or not math.isfinite(value)):
            return False
    return True


def _normalize_product(raw: Any, path: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise FieldError(path, "must be an object")
    product: dict[str, Any] = {}
    categories: list[str] = []
    for key, value in raw.items():
        if key.startswith("item_category") and key[13:].isdigit():
            if value not in (None, ""):
                categories.append(str(value))
            continue
        target = _PRODUCT_FIELD_ALIASES.get(key, key)
        if target in product and target != key:
            continue  # the Segment spelling, when both are given, wins
        product[str(target)] = value
    if categories:
        top = product.get("category")
        product["category"] = "/".join(([str(top)] if top not in (None, "") else []) + categories)
    field: str
    for field in ("product_id", "sku"):
        value = product.get(field)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise FieldError(f"{path}.{field}", "must be a string or a number")
        product[field] = str(value)
        if len(product[field]) > 255:
            raise FieldError(f"{path}.{field}", "must be at most 255 characters")
    for field in NUMERIC_PRODUCT_FIELDS:
        if product.get(field) is not None:
            product[field] = _number(product[field], f"{path}.{field}")
    return product


def normalize_properties(
    event: str,
    properties: dict[str, Any],
    path: str,
    max_products: int = MAX_PRODUCTS,
    products_normalized: bool = False,
) -> dict[str, Any]:
    """Product and order fields in Segment's shape; ``path`` prefixes error field names.

    Only e-commerce events are touched; a custom event's properties are kept as sent.
    ``max_products`` is the API's bound; trusted file imports raise it. A caller that built
    ``products`` in Segment's shape itself (text ids of at most 255 characters, finite
    numbers for price and quantity, no GA4 spellings: a file import's preset) passes
    ``products_normalized`` to skip their per-product check.
    """
    if event not in _ECOMMERCE:
        return properties
    props: dict[str, Any]
    if _ORDER_ALIAS_KEYS.isdisjoint(properties):
        props = dict(properties)  # the common case: nothing to rename
    else:
        props = {}
        for key, value in properties.items():
            target = _ORDER_FIELD_ALIASES.get(key, key)
            if target in props and target != key:
                continue
            props[target] = value
    for field in NUMERIC_ORDER_FIELDS:
        if props.get(field) is not None:
            props[field] = _number(props[field], f"{path}.{field}")
    if props.get("value") is not None:  # GA4's order value
        props.setdefault("total", props["value"])
        props.setdefault("revenue", props["value"])
    if props.get("order_id") is not None:
        if isinstance(props["order_id"], dict | list | bool):
            raise FieldError(f"{path}.order_id", "must be a string or a number")
        props["order_id"] = str(props["order_id"])
    products = props.get("products")
    if products is not None:
        if not isinstance(products, list):
            raise FieldError(f"{path}.products", "must be an array of objects")
        if len(products) > max_products:
            raise FieldError(f"{path}.products", f"at most {max_products} products per event")
        if not products_normalized:
            props["products"] = [
                dict(p)
                if type(p) is dict and _is_normal_product(p)
                else _normalize_product(p, f"{path}.products[{i}]")
                for i, p in enumerate(products)
            ]
    if event in SINGLE_PRODUCT_EVENTS:
        # props is a fresh copy: it may become the product itself when it is already in
        # Segment's shape (then normalizing would return an equal copy)
        base = props
        if "products" in props:
            base = {k: v for k, v in props.items() if k != "products"}
        top = base if _is_normal_product(base) else _normalize_product(base, path)
        lifted = props.get("products") or []
        if top.get("product_id") is None and top.get("sku") is None and len(lifted) == 1:
            # GA4 sends a single product as items[0]; Segment wants it at the top.
            top = {**lifted[0], **{k: v for k, v in top.items() if v is not None}}
        if lifted:
            top["products"] = lifted
        props = top
    return props


_ECOMMERCE = frozenset(SEGMENT_ECOMMERCE_EVENTS)
_ORDER_ALIAS_KEYS = frozenset(_ORDER_FIELD_ALIASES)
