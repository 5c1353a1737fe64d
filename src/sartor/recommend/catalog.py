"""The catalog: items a workspace sells, declared through the API or an import, or seen in
its product events.

Two sources feed the ``items`` table:

* **declared** (``source="catalog"``): :meth:`Catalog.upsert` takes up to 1,000 items per
  call. An upsert sets the fields it carries and keeps the others (send ``null`` to clear
  one), so a stock update is ``{"id": "sku-1", "inStock": false}``.
* **seen** (``source="events"``): product fields of stored e-commerce events (``name``,
  ``category``, ``brand``, ``price``, ``currency``, ``url``, ``image_url``) create the items
  nobody declared and fill the blank fields of the others. They never replace a value, so
  the richer declared data always wins.

Documents are plain dicts with the API's camelCase names and ISO 8601 times, like profiles.
"""

from __future__ import annotations

import builtins
import logging
import math
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import orjson
from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)
from sqlalchemy import Connection, Engine, and_, delete, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite

from sartor.clock import iso, now_ms
from sartor.collect.errors import FieldError, PayloadError
from sartor.collect.messages import find_nul, parse_timestamp
from sartor.collect.normalize import (
    SEGMENT_ECOMMERCE_EVENTS,
    SINGLE_PRODUCT_EVENTS,
    canonical_event_name,
    normalize_properties,
)
from sartor.storage.db import write_tx
from sartor.storage.sql import chunks
from sartor.storage.tables import items as items_table

log = logging.getLogger("sartor.catalog")

MAX_ITEMS_PER_CALL = 1_000
MAX_ID = 200  # the items.item_id column
MAX_TITLE = 1_000
MAX_DESCRIPTION = 20_000
MAX_BRAND = 200  # the items.brand column
MAX_CATEGORY = 1_000
MAX_CATEGORY_LEVELS = 20
MAX_TAGS = 100
MAX_TAG = 100
MAX_ATTRIBUTES_BYTES = 16 * 1024
CATEGORY_SEP = " > "

_ECOMMERCE = frozenset(SEGMENT_ECOMMERCE_EVENTS)
# What a product in an event can tell about an item, and where it goes. Keys in
# ``attributes`` are completed one by one, like columns.
_EVENT_COLUMNS = ("title", "category", "brand", "price", "currency")
_EVENT_ATTRIBUTES = ("url", "image_url")
# Per-process memory of what each item already has, so that the events of known items do
# not touch the database. Other processes may change an item (delete it, clear a field);
# forgetting everything now and then bounds how long this process can miss that.
_KNOWN_SECONDS = 600.0
_KNOWN_MAX_ITEMS = 200_000


# -- validation -------------------------------------------------------------------------


def category_path(value: Any) -> str | None:
    """A category path in its stored form ``"A > B > C"``.

    Accepts ``"A > B > C"``, ``"A/B/C"`` (``>`` wins when both appear, so ``"T-shirts/Tops >
    Men"`` has two levels) or a list of levels; blank levels are dropped. ``None`` or an
    empty path gives ``None``. Raises :class:`ValueError` on other types or an oversized path.
    """
    if value is None:
        return None
    if isinstance(value, str):
        parts = value.split(">") if ">" in value else value.split("/")
    elif isinstance(value, list | tuple):
        parts = []
        for level in value:
            if not isinstance(level, str | int | float) or isinstance(level, bool):
                raise ValueError("levels must be strings")
            parts.append(str(level))
    else:
        raise ValueError("must be a path such as 'A > B > C' or 'A/B/C', or a list of levels")
    levels = [p.strip() for p in parts if p.strip()]
    if len(levels) > MAX_CATEGORY_LEVELS:
        raise ValueError(f"at most {MAX_CATEGORY_LEVELS} levels")
    path = CATEGORY_SEP.join(levels)
    if len(path) > MAX_CATEGORY:
        raise ValueError(f"must be at most {MAX_CATEGORY} characters")
    return path or None


def _item_id(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a string, not a boolean")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and not value.strip():
        raise ValueError("must not be blank")
    return value


def _blank_to_none(value: Any) -> Any:
    """Empty text is no value: the field stays open for events to fill."""
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return value


def _timestamp(value: Any) -> int | None:
    return parse_timestamp(value)


# Blank text is stored as no value; the length bound applies to the text itself.
Title = Annotated[
    Annotated[str, StringConstraints(max_length=MAX_TITLE)] | None,
    BeforeValidator(_blank_to_none),
]
Description = Annotated[
    Annotated[str, StringConstraints(max_length=MAX_DESCRIPTION)] | None,
    BeforeValidator(_blank_to_none),
]
Brand = Annotated[
    Annotated[str, StringConstraints(max_length=MAX_BRAND)] | None,
    BeforeValidator(_blank_to_none),
]


class Item(BaseModel):
    """One catalog item as sent to :meth:`Catalog.upsert` (camelCase or snake_case)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    id: Annotated[
        str,
        BeforeValidator(_item_id),
        Field(
            min_length=1,
            max_length=MAX_ID,
            validation_alias=AliasChoices("id", "item_id", "itemId", "product_id", "productId"),
        ),
    ]
    title: Title = None
    description: Description = None
    category: str | None = None
    brand: Brand = None
    price: Annotated[float | None, Field(ge=0, allow_inf_nan=False)] = None
    currency: str | None = None
    in_stock: bool = Field(True, validation_alias=AliasChoices("in_stock", "inStock"))
    tags: builtins.list[str] = Field(default_factory=builtins.list)
    attributes: dict[str, Any] = Field(default_factory=dict)
    created_at: Annotated[
        int | None,
        BeforeValidator(_timestamp),
        Field(validation_alias=AliasChoices("created_at", "createdAt")),
    ] = None

    @field_validator("category", mode="before")
    @classmethod
    def _category(cls, value: Any) -> str | None:
        return category_path(value)

    @field_validator("currency", mode="before")
    @classmethod
    def _currency(cls, value: Any) -> str | None:
        value = _blank_to_none(value)
        if value is None:
            return None
        if not isinstance(value, str) or len(value) != 3 or not value.isascii():
            raise ValueError("must be a 3-letter ISO 4217 code such as 'EUR'")
        if not value.isalpha():
            raise ValueError("must be a 3-letter ISO 4217 code such as 'EUR'")
        return value.upper()

    @field_validator("tags", mode="before")
    @classmethod
    def _tags(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, str):  # "a, b, c" from a CSV column
            value = value.split(",")
        if not isinstance(value, list | tuple):
            raise ValueError("must be a list of strings")
        out: builtins.list[str] = []
        for tag in value:
            if not isinstance(tag, str):
                raise ValueError("must be a list of strings")
            tag = tag.strip()
            if len(tag) > MAX_TAG:
                raise ValueError(f"each tag must be at most {MAX_TAG} characters")
            if tag and tag not in out:
                out.append(tag)
        if len(out) > MAX_TAGS:
            raise ValueError(f"at most {MAX_TAGS} tags")
        return out

    @field_validator("attributes", mode="before")
    @classmethod
    def _attributes(cls, value: Any) -> Any:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ValueError("must be a JSON object")
        try:
            size = len(orjson.dumps(value))
        except TypeError:
            raise ValueError("must be a JSON object") from None
        if size > MAX_ATTRIBUTES_BYTES:
            raise ValueError(f"must be at most {MAX_ATTRIBUTES_BYTES} bytes of JSON")
        return value


_COLUMN = {
    "title": "title",
    "description": "description",
    "category": "category",
    "brand": "brand",
    "price": "price",
    "currency": "currency",
    "in_stock": "in_stock",
    "tags": "tags",
    "attributes": "attributes",
    "created_at": "created_at",
}


def _pydantic_errors(exc: ValidationError, prefix: str) -> builtins.list[FieldError]:
    out = []
    for err in exc.errors():
        path = prefix
        for part in err["loc"]:
            path = (
                f"{path}[{part}]"
                if isinstance(part, int)
                else (f"{path}.{part}" if path else str(part))
            )
        message = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "is not an item field (free fields go in `attributes`)"
        out.append(FieldError(path or "item", message))
    return out


def validate_item(raw: Any, path: str = "") -> Item:
    """One item, validated; raises :class:`PayloadError` listing every bad field (each
    :class:`FieldError` names its path under ``path``, e.g. ``items[3].price``)."""
    if isinstance(raw, Item):
        return raw
    if not isinstance(raw, dict):
        raise PayloadError(400, "invalid_item", [FieldError(path or "item", "must be an object")])
    nul = find_nul(raw, path)
    if nul:
        raise PayloadError(
            400, "invalid_item", [FieldError(nul, "must not contain the NUL character")]
        )
    try:
        return Item.model_validate(raw)
    except ValidationError as exc:
        raise PayloadError(400, "invalid_item", _pydantic_errors(exc, path)) from None


# -- results and documents --------------------------------------------------------------


@dataclass
class UpsertResult:
    """What :meth:`Catalog.upsert` did, item by item (``items[i]`` for input ``i``)."""

    received: int = 0
    created: int = 0
    updated: int = 0
    errors: builtins.list[dict[str, Any]] = field(default_factory=builtins.list)
    items: builtins.list[dict[str, Any]] = field(default_factory=builtins.list)

    @property
    def stored(self) -> int:
        return self.created + self.updated

    def as_dict(self) -> dict[str, Any]:
        return {
            "success": not self.errors,
            "received": self.received,
            "stored": self.stored,
            "created": self.created,
            "updated": self.updated,
            "errors": self.errors,
            "items": self.items,
        }


def item_document(row: Any) -> dict[str, Any]:
    """A stored item as the API shows it."""
    return {
        "id": row.item_id,
        "title": row.title,
        "description": row.description,
        "category": row.category,
        "brand": row.brand,
        "price": row.price,
        "currency": row.currency,
        "inStock": bool(row.in_stock),
        "tags": builtins.list(row.tags or []),
        "attributes": dict(row.attributes or {}),
        "source": row.source,
        "createdAt": iso(row.created_at),
        "updatedAt": iso(row.updated_at),
    }


# -- products in events -----------------------------------------------------------------


def products_of(
    event: str | None, properties: Mapping[str, Any] | None
) -> builtins.list[Mapping[str, Any]]:
    """The products an e-commerce event is about, from its normalized properties.

    A single-product event (``Product Viewed``, ``Product Added``, ``Product Reviewed``, ...)
    carries its product at the top of ``properties``; the others (``Order Completed``,
    ``Checkout Started``, ``Cart Viewed``, ...) list them in ``products[]``.
    """
    if not properties or event not in _ECOMMERCE:
        return []
    if event in SINGLE_PRODUCT_EVENTS and (
        properties.get("product_id") is not None or properties.get("sku") is not None
    ):
        return [properties]
    listed = properties.get("products")
    if isinstance(listed, list):
        return [p for p in listed if isinstance(p, Mapping)]
    return []


def product_key(product: Mapping[str, Any]) -> str | None:
    """The item id of a product: its ``product_id``, else its ``sku`` (as the profile fold)."""
    for name in ("product_id", "sku"):
        value = product.get(name)
        if value is None or isinstance(value, bool):
            continue
        if isinstance(value, str | int | float):
            text = str(value)
            if text.strip():
                return text
    return None


def _short_text(value: Any, limit: int) -> str | None:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    text = str(value).strip()
    return text[:limit] if text else None


# Product field -> the item field it may fill.
_OFFERS = (
    ("name", "title"),
    ("category", "category"),
    ("brand", "brand"),
    ("price", "price"),
    ("currency", "currency"),
    ("url", "attributes.url"),
    ("image_url", "attributes.image_url"),
)


def _offered(product: Mapping[str, Any], currency: Any) -> frozenset[str]:
    """The item fields a product has a value for, before checking the values (cheap)."""
    out = [field for key, field in _OFFERS if product.get(key) not in (None, "")]
    if currency not in (None, "") and "currency" not in out:
        out.append("currency")
    return frozenset(out)


def _event_time(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return parse_timestamp(value)
    except ValueError:
        return None


def _event_fields(product: Mapping[str, Any], currency: Any) -> dict[str, Any]:
    """What one product of an event says about its item (only well-formed values)."""
    out: dict[str, Any] = {}
    title = _short_text(product.get("name"), MAX_TITLE)
    if title:
        out["title"] = title
    try:
        category = category_path(product.get("category"))
    except ValueError:
        category = None
    if category:
        out["category"] = category
    brand = _short_text(product.get("brand"), MAX_BRAND)
    if brand:
        out["brand"] = brand
    price = product.get("price")
    if (
        isinstance(price, int | float)
        and not isinstance(price, bool)
        and math.isfinite(price)
        and price >= 0
    ):
        out["price"] = float(price)
    code = product.get("currency") or currency
    if isinstance(code, str) and len(code) == 3 and code.isascii() and code.isalpha():
        out["currency"] = code.upper()
    for name in _EVENT_ATTRIBUTES:
        value = _short_text(product.get(name), 2_000)
        if value:
            out[f"attributes.{name}"] = value
    return out


# -- the catalog ------------------------------------------------------------------------


def _insert(conn: Connection) -> postgresql.Insert | sqlite.Insert:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(items_table)
    return sqlite.insert(items_table)


_KEY = [items_table.c.workspace_id, items_table.c.item_id]


class Catalog:
    """The items of every workspace in one database. Thread-safe."""

    def __init__(self, db: Engine) -> None:
        self.db = db
        self._lock = threading.Lock()
        # workspace -> (expires at, {item id: the fields this process has already sent to
        # the database or knows to be filled there})
        self._known: dict[str, tuple[float, dict[str, frozenset[str]]]] = {}

    # -- declared items ---------------------------------------------------------------

    def upsert(self, ws_id: str, items: Sequence[Any], *, prefix: str = "items") -> UpsertResult:
        """Validate and store up to 1,000 items (dicts or :class:`Item`) in one transaction.

        Each bad item is reported by index with the path of the bad field
        (``items[3].price``; ``prefix=""`` gives ``[3].price``), the good ones are stored.
        Over 1,000 items raises :class:`PayloadError` (413) and stores nothing. An item id
        sent twice is stored once, the later fields over the earlier ones.
        """
        if len(items) > MAX_ITEMS_PER_CALL:
            raise PayloadError(
                413,
                "too_large",
                [
                    FieldError(
                        prefix or "items",
                        f"at most {MAX_ITEMS_PER_CALL} items per call, got {len(items)}",
                        status=413,
                    )
                ],
            )
        result = UpsertResult(received=len(items))
        valid: dict[str, tuple[dict[str, Any], builtins.list[int]]] = {}
        entries: dict[int, dict[str, Any]] = {}
        for i, raw in enumerate(items):
            path = f"{prefix}[{i}]"
            try:
                item = validate_item(raw, path)
            except PayloadError as exc:
                for err in exc.errors:
                    result.errors.append({"index": i, **err.as_dict()})
                first = exc.errors[0]
                entries[i] = {
                    "index": i,
                    "status": "error",
                    "field": first.field,
                    "message": first.message,
                }
                continue
            given = {name: getattr(item, name) for name in item.model_fields_set if name != "id"}
            if given.get("created_at", 0) is None:
                del given["created_at"]  # null means "when it was first stored"
            fields, indexes = valid.setdefault(item.id, ({}, []))
            fields.update(given)
            indexes.append(i)
            entries[i] = {"index": i, "id": item.id}
        if valid:
            existing = self._store_declared(ws_id, {k: v[0] for k, v in valid.items()})
            for item_id, (_, indexes) in valid.items():
                status = "updated" if item_id in existing else "created"
                if status == "updated":
                    result.updated += 1
                else:
                    result.created += 1
                for i in indexes:
                    entries[i]["status"] = status
            self._learn_declared(ws_id, {k: v[0] for k, v in valid.items()})
        result.items = [entries[i] for i in sorted(entries)]
        return result

    def _store_declared(self, ws_id: str, given: dict[str, dict[str, Any]]) -> set[str]:
        """Insert or update, in one transaction; returns the ids that existed before."""
        now = now_ms()
        shapes: dict[frozenset[str], builtins.list[dict[str, Any]]] = {}
        for item_id in sorted(given):  # one lock order for every writer: no deadlocks
            fields = given[item_id]
            row: dict[str, Any] = {
                "workspace_id": ws_id,
                "item_id": item_id,
                "title": None,
                "description": None,
                "category": None,
                "brand": None,
                "price": None,
                "currency": None,
                "in_stock": 1,
                "tags": [],
                "attributes": {},
                "source": "catalog",
                "created_at": now,
                "updated_at": now,
            }
            for name, value in fields.items():
                row[_COLUMN[name]] = int(value) if name == "in_stock" else value
            shapes.setdefault(frozenset(fields), []).append(row)
        existing: set[str] = set()
        with write_tx(self.db) as conn:
            for part in chunks(sorted(given)):
                existing.update(
                    conn.execute(
                        select(items_table.c.item_id).where(
                            items_table.c.workspace_id == ws_id, items_table.c.item_id.in_(part)
                        )
                    ).scalars()
                )
            for shape, rows in shapes.items():
                stmt = _insert(conn)
                updates: dict[str, Any] = {
                    _COLUMN[name]: stmt.excluded[_COLUMN[name]] for name in sorted(shape)
                }
                updates["source"] = stmt.excluded.source
                updates["updated_at"] = stmt.excluded.updated_at
                conn.execute(stmt.on_conflict_do_update(index_elements=_KEY, set_=updates), rows)
        return existing

    def _learn_declared(self, ws_id: str, given: dict[str, dict[str, Any]]) -> None:
        with self._lock:
            known = self._known.get(ws_id)
            if known is None:
                return
            cache = known[1]
            for item_id, fields in given.items():
                old = cache.get(item_id)
                if old is None:
                    continue
                filled = set(old)
                for name in _EVENT_COLUMNS:
                    if name in fields:
                        (filled.add if fields[name] is not None else filled.discard)(name)
                if "attributes" in fields:
                    attrs = fields["attributes"] or {}
                    for name in _EVENT_ATTRIBUTES:
                        key = f"attributes.{name}"
                        (filled.add if attrs.get(name) is not None else filled.discard)(key)
                cache[item_id] = frozenset(filled)

    # -- reading ----------------------------------------------------------------------

    def get(self, ws_id: str, item_id: str) -> dict[str, Any] | None:
        with self.db.connect() as conn:
            row = conn.execute(
                select(items_table).where(
                    items_table.c.workspace_id == ws_id, items_table.c.item_id == item_id
                )
            ).first()
        return item_document(row) if row is not None else None

    def get_many(self, ws_id: str, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The items among ``ids`` that exist, by id."""
        wanted = sorted(set(ids))
        out: dict[str, dict[str, Any]] = {}
        with self.db.connect() as conn:
            for part in chunks(wanted):
                for row in conn.execute(
                    select(items_table).where(
                        items_table.c.workspace_id == ws_id, items_table.c.item_id.in_(part)
                    )
                ):
                    out[row.item_id] = item_document(row)
        return out

    def count(self, ws_id: str) -> int:
        with self.db.connect() as conn:
            return int(
                conn.execute(
                    select(func.count()).where(items_table.c.workspace_id == ws_id)
                ).scalar_one()
            )

    def iter_all(self, ws_id: str, batch: int = 5000) -> Iterator[dict[str, Any]]:
        """Every item in id order, read ``batch`` at a time (one short read each)."""
        after: str | None = None
        while True:
            page, after = self.list(ws_id, cursor=after, limit=batch)
            yield from page
            if after is None:
                return

    # -- deleting ---------------------------------------------------------------------

    def delete(self, ws_id: str, item_id: str) -> bool:
        """Remove an item; False when there was none. Later events may create it again."""
        with write_tx(self.db) as conn:
            count = conn.execute(
                delete(items_table).where(
                    items_table.c.workspace_id == ws_id, items_table.c.item_id == item_id
                )
            ).rowcount
        with self._lock:
            known = self._known.get(ws_id)
            if known is not None:
                known[1].pop(item_id, None)
        return bool(count)

    # -- items seen in events ---------------------------------------------------------

    def observe_events(
        self,
        ws_id: str,
        payloads: Iterable[Mapping[str, Any]],
        *,
        normalized: bool = False,
        raise_errors: bool = True,
    ) -> int:
        """Create or complete the items that product events mention.

        Each payload is a track message or stored event: ``event``, ``properties`` and
        optionally ``timestamp`` (epoch ms or ISO 8601; the first sight of an item becomes
        its ``createdAt``). With ``normalized=False`` names and properties go through the
        collection layer's normalization first (GA4 names and fields become Segment's).

        Only items that are new to this process, or bring a field this process has not yet
        seen filled, reach the database: one statement for all of them. Returns how many
        items were written. With ``raise_errors=False`` (the ingest hook) a failure is
        logged and 0 returned: the catalog must never fail an ingest.
        """
        try:
            return self._observe(ws_id, payloads, normalized)
        except Exception:
            if raise_errors:
                raise
            log.exception("items from events failed", extra={"workspace": ws_id})
            return 0

    def _observe(self, ws_id: str, payloads: Iterable[Mapping[str, Any]], normalized: bool) -> int:
        # item -> (valid fields, first sight, every field offered, valid or not)
        todo: dict[str, tuple[dict[str, Any], int, frozenset[str]]] = {}
        cache = self._cache(ws_id)
        clock: int | None = None
        for payload in payloads:
            name = payload.get("event")
            props = payload.get("properties")
            if not isinstance(name, str) or not isinstance(props, Mapping):
                continue
            if not normalized:
                name = canonical_event_name(name)
                if name not in _ECOMMERCE:
                    continue
                try:
                    props = normalize_properties(name, dict(props), "properties")
                except FieldError:
                    continue
            products = products_of(name, props)
            if not products:
                continue
            currency = props.get("currency")
            at: int | None = None
            for product in products:
                item_id = product_key(product)
                if item_id is None or len(item_id) > MAX_ID:
                    continue
                offered = _offered(product, currency)
                known = cache.get(item_id)
                if known is not None and offered <= known:
                    continue  # the hot path: nothing this process has not offered already
                if at is None:
                    at = _event_time(payload.get("timestamp"))
                    if at is None:
                        clock = clock if clock is not None else now_ms()
                        at = clock
                fields = _event_fields(product, currency)
                prev = todo.get(item_id)
                if prev is None:
                    todo[item_id] = (fields, at, offered)
                else:  # the first value seen of each field, and the first sight
                    todo[item_id] = ({**fields, **prev[0]}, min(prev[1], at), prev[2] | offered)
        if not todo:
            return 0
        self._store_seen(ws_id, {k: (v[0], v[1]) for k, v in todo.items()})
        with self._lock:
            cache = self._cache_locked(ws_id)
            for item_id, (_, _, offered) in todo.items():
                # Offered, not only stored: an invalid value offered again changes nothing.
                cache[item_id] = cache.get(item_id, frozenset()) | offered
        return len(todo)

    def _cache(self, ws_id: str) -> dict[str, frozenset[str]]:
        with self._lock:
            return self._cache_locked(ws_id)

    def _cache_locked(self, ws_id: str) -> dict[str, frozenset[str]]:
        now = time.monotonic()
        known = self._known.get(ws_id)
        if known is None or known[0] < now or len(known[1]) > _KNOWN_MAX_ITEMS:
            known = self._known[ws_id] = (now + _KNOWN_SECONDS, {})
        return known[1]

    def _store_seen(self, ws_id: str, todo: dict[str, tuple[dict[str, Any], int]]) -> None:
        """One insert-or-complete statement: new items are created with what the events
        said; existing ones get only the fields they lack (``COALESCE(stored, seen)``)."""
        now = now_ms()
        rows: builtins.list[dict[str, Any]] = []
        for item_id in sorted(todo):  # one lock order for every writer: no deadlocks
            fields, first_seen = todo[item_id]
            rows.append(
                {
                    "workspace_id": ws_id,
                    "item_id": item_id,
                    "title": fields.get("title"),
                    "description": None,
                    "category": fields.get("category"),
                    "brand": fields.get("brand"),
                    "price": fields.get("price"),
                    "currency": fields.get("currency"),
                    "in_stock": 1,
                    "tags": [],
                    "attributes": {
                        name: fields[f"attributes.{name}"]
                        for name in _EVENT_ATTRIBUTES
                        if f"attributes.{name}" in fields
                    },
                    "source": "events",
                    "created_at": first_seen,
                    "updated_at": now,
                }
            )
        t = items_table
        with write_tx(self.db) as conn:
            stmt = _insert(conn)
            new = stmt.excluded
            updates: dict[str, Any] = {
                name: func.coalesce(t.c[name], new[name]) for name in _EVENT_COLUMNS
            }
            blanks = [and_(t.c[name].is_(None), new[name].is_not(None)) for name in _EVENT_COLUMNS]
            if conn.dialect.name == "postgresql":
                # jsonb ||: the right side wins, so stored keys are kept
                updates["attributes"] = new.attributes.op("||")(t.c.attributes)
            else:
                # json_patch(target, patch): the patch (what is stored) wins
                updates["attributes"] = func.json_patch(new.attributes, t.c.attributes)
            for name in _EVENT_ATTRIBUTES:
                blanks.append(
                    and_(
                        t.c.attributes[name].as_string().is_(None),
                        new.attributes[name].as_string().is_not(None),
                    )
                )
            updates["updated_at"] = new.updated_at
            conn.execute(
                stmt.on_conflict_do_update(index_elements=_KEY, set_=updates, where=or_(*blanks)),
                rows,
            )

    # -- listing (last: the name shadows the builtin in the class body) ----------------

    def list(
        self,
        ws_id: str,
        cursor: str | None = None,
        limit: int = 100,
        category: str | builtins.list[str] | None = None,
        in_stock: bool | None = None,
    ) -> tuple[builtins.list[dict[str, Any]], str | None]:
        """A page of items in id order after ``cursor``; returns the page and the next
        cursor (None at the end). ``category`` matches that category and everything under
        it (``"Home"`` matches ``"Home > Kitchen"``); it is read like an item's category."""
        t = items_table
        query = select(t).where(t.c.workspace_id == ws_id)
        if cursor:
            query = query.where(t.c.item_id > cursor)
        path = category_path(category) if category is not None else None
        if path:
            prefix = path + CATEGORY_SEP
            query = query.where(
                or_(
                    t.c.category == path,
                    # substr, not LIKE: SQLite's LIKE ignores case, PostgreSQL's does not
                    func.substr(t.c.category, 1, len(prefix)) == prefix,
                )
            )
        if in_stock is not None:
            query = query.where(t.c.in_stock == int(in_stock))
        limit = max(1, int(limit))
        with self.db.connect() as conn:
            rows = builtins.list(conn.execute(query.order_by(t.c.item_id).limit(limit)))
        page = [item_document(r) for r in rows]
        return page, (rows[-1].item_id if len(rows) == limit else None)
