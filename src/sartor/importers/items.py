"""``sartor import items``: rows of a file -> catalog items, through :meth:`Catalog.upsert`.

Without a mapping, columns named like item fields fill them (``id`` (or ``item_id``,
``product_id``, ``sku``), ``title``, ``description``, ``category``, ``brand``, ``price``,
``currency``, ``in_stock``, ``tags``, ``created_at``) and every other column becomes an
attribute. A mapping file renames columns::

    fields: {id: sku, title: name, price: unit_price, attributes.colour: color}
    constants: {currency: EUR}
    attributes_from_rest: true    # unmapped columns -> attributes (default true)

An empty cell is left out, so it never clears a value stored earlier. The catalog validates
each item; a refused one goes to the rejects file with the field and the reason.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson

from sartor.collect.errors import PayloadError
from sartor.importers import ImportConfigError, ImportJob
from sartor.importers.mapping import MappingError, get_path, read_mapping_document, set_path
from sartor.importers.source import MalformedRow

ITEM_FIELDS = (
    "id",
    "title",
    "description",
    "category",
    "brand",
    "price",
    "currency",
    "in_stock",
    "tags",
    "created_at",
    "attributes",
)
# Column names read as an item field when no mapping is given.
DEFAULT_COLUMNS = {
    **{name: name for name in ITEM_FIELDS},
    "item_id": "id",
    "itemId": "id",
    "product_id": "id",
    "productId": "id",
    "sku": "id",
    "name": "title",
    "inStock": "in_stock",
    "createdAt": "created_at",
}
ITEM_MAPPING_KEYS = ("fields", "constants", "attributes_from_rest")
UPSERT_ITEMS = 1_000  # Catalog.upsert takes at most this many per call
_INDEX = re.compile(r"^\[\d+\]\.?")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def _target_ok(target: str) -> bool:
    head, _, rest = target.partition(".")
    return (target in ITEM_FIELDS and target != "attributes") or (
        head == "attributes" and bool(rest)
    )


def load_item_mapping(source: str | Path | dict[str, Any]) -> dict[str, Any]:
    """An item mapping from a YAML/JSON file or a dict, checked (:class:`MappingError`)."""
    data, where = read_mapping_document(source)
    unknown = sorted(set(data) - set(ITEM_MAPPING_KEYS))
    if unknown:
        raise MappingError(
            f"{where}: unknown key {unknown[0]!r}; an item mapping has "
            f"{', '.join(ITEM_MAPPING_KEYS)}"
        )
    fields = data.get("fields", {})
    if not isinstance(fields, dict):
        raise MappingError(f"{where}: fields must be an object of item field: source column")
    for target, column in fields.items():
        if not isinstance(target, str) or not _target_ok(target):
            raise MappingError(
                f"{where}: fields.{target} is not an item field: use one of "
                f"{', '.join(f for f in ITEM_FIELDS if f != 'attributes')} or attributes.*"
            )
        if not isinstance(column, str) or not column:
            raise MappingError(f"{where}: fields.{target} must name a source column")
    constants = data.get("constants", {})
    if not isinstance(constants, dict):
        raise MappingError(f"{where}: constants must be an object of item field: value")
    for target in constants:
        if not isinstance(target, str) or not _target_ok(target):
            raise MappingError(f"{where}: constants.{target} is not an item field")
    if not isinstance(data.get("attributes_from_rest", True), bool):
        raise MappingError(f"{where}: attributes_from_rest must be true or false")
    if "id" not in fields and "id" not in constants:
        raise MappingError(f"{where}: fields.id is required (the column holding the item id)")
    return data


class ItemMapper:
    """One source row -> one item dict for :meth:`Catalog.upsert`."""

    def __init__(self, mapping: dict[str, Any] | None) -> None:
        self.fields: dict[str, str] | None = dict(mapping["fields"]) if mapping else None
        self.constants: dict[str, Any] = dict((mapping or {}).get("constants", {}))
        self.rest: bool = (mapping or {}).get("attributes_from_rest", True)
        self.mapped = set(self.fields.values()) if self.fields else set()

    def item(self, row: dict[str, Any]) -> dict[str, Any]:
        item: dict[str, Any] = {}
        for target, value in self.constants.items():
            set_path(item, target, value)
        if self.fields is None:
            for column, value in row.items():
                if _blank(value):
                    continue
                known = DEFAULT_COLUMNS.get(column)
                if known is None:
                    item.setdefault("attributes", {})[column] = value
                elif known == "attributes":
                    item["attributes"] = {**_json_object(value), **item.get("attributes", {})}
                elif known not in item:  # `id` wins over `sku`, `title` over `name`
                    item[known] = value
            return item
        for target, column in self.fields.items():
            value = get_path(row, column)
            if not _blank(value):
                set_path(item, target, value)
        if self.rest:
            for column, value in row.items():
                if column not in self.mapped and not _blank(value):
                    item.setdefault("attributes", {}).setdefault(column, value)
        return item


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _json_object(value: Any) -> dict[str, Any]:
    """An ``attributes`` column: a JSON object (text in a CSV)."""
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            return {"attributes": value}
    return value if isinstance(value, dict) else {"attributes": value}


def _reason(field: str, message: str) -> str:
    return f"{field}: {_QUOTED.sub('...', message)}"


def import_items(job: ImportJob) -> None:
    """The ``items`` importer (see :func:`sartor.importers.run_import`)."""
    catalog = getattr(job.engine, "catalog", None)
    if catalog is None:
        raise ImportConfigError("this engine has no catalog")
    if job.preset is not None:
        raise ImportConfigError("items have no presets: give a mapping file or default columns")
    mapping = load_item_mapping(job.mapping) if job.mapping is not None else None
    mapper = ItemMapper(mapping)
    summary, rejects = job.summary, job.rejects
    batch: list[tuple[int, dict[str, Any], dict[str, Any]]] = []
    reported = 0

    def flush() -> None:
        nonlocal reported
        job.advance(summary.read - reported)
        reported = summary.read
        if not batch:
            return
        try:
            result = catalog.upsert(job.workspace.id, [item for _, _, item in batch], prefix="")
        except PayloadError as exc:  # the whole call refused (cannot happen below 1,000)
            for line, row, _ in batch:
                rejects.write(line, exc.errors[0].message, row, exc.errors[0].field)
            batch.clear()
            return
        refused: dict[int, tuple[str, str]] = {}
        for error in result.errors:
            index = error["index"]
            if index not in refused:  # the first bad field of an item names its reason
                field = _INDEX.sub("", error["field"]) or "item"
                refused[index] = (field, error["message"])
        for entry in result.items:
            if entry.get("status") in ("created", "updated"):
                summary.imported += 1
        for index, (field, message) in sorted(refused.items()):
            line, row, _ = batch[index]
            rejects.write(line, _reason(field, message), row, field, message)
        batch.clear()

    for line, row in job.rows():
        summary.read += 1
        if type(row) is MalformedRow:
            rejects.write(line, row.reason, row.report())
            continue
        batch.append((line, row, mapper.item(row)))
        if len(batch) >= UPSERT_ITEMS:
            flush()
    flush()
