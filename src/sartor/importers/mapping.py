"""Mapping files: which source column becomes which event field.

A mapping is a YAML or JSON object (see the README, "Importing events")::

    name: shop-export              # namespace of the derived messageIds (default "import")
    type: track                    # constant message type (or map a column to `type`)
    fields:                        # event field <- source column (dots reach into JSON)
      event: action
      userId: customer_id
      anonymousId: cookie
      timestamp: ts
      properties.product_id: sku
      traits.email: email
      context.page.url: url
    timestamp_format: "%d/%m/%Y %H:%M"   # auto | iso | unix | unix_ms | unix_us | a pattern
    message_id: event_id           # a column holding a unique id, or
    identify_by: [order_id, sku]   # the columns that identify a row (default: the whole row)
    types: {properties.price: number, properties.in_stock: boolean}
    constants: {properties.currency: EUR}
    rename: {buy: Order Completed}  # event-name renames, applied before the canonical names
    properties_from_rest: false    # true: unmapped columns become properties.<column>

Everything is checked when the mapping is loaded (:class:`MappingError` names the key), so a
typo fails the import before the first row, not on every row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import orjson
import yaml

# Fields of a Segment message a column may fill; `properties.`, `traits.`, `context.` and
# `integrations.` prefixes reach inside those objects.
TOP_FIELDS = (
    "type",
    "event",
    "name",
    "category",
    "userId",
    "anonymousId",
    "previousId",
    "groupId",
    "timestamp",
    "messageId",
)
OBJECT_FIELDS = ("properties", "traits", "context", "integrations")
MESSAGE_TYPES = ("track", "identify", "page", "screen", "group", "alias")
TIMESTAMP_FORMATS = ("auto", "iso", "unix", "unix_ms", "unix_us")
CASTS = ("string", "number", "integer", "boolean", "json")
MAPPING_KEYS = (
    "name",
    "preset",
    "type",
    "fields",
    "timestamp_format",
    "message_id",
    "identify_by",
    "types",
    "constants",
    "rename",
    "properties_from_rest",
)
_TRUE = frozenset({"true", "t", "yes", "y", "1", "on"})
_FALSE = frozenset({"false", "f", "no", "n", "0", "off", ""})


class MappingError(ValueError):
    """The mapping file itself is wrong; the message names the key."""


class RowError(ValueError):
    """One source row cannot become an event: ``reason`` (a category, for the summary)
    and ``field`` (the source column or event field at fault)."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


# -- small shared helpers ------------------------------------------------------------------


def message_id(namespace: str, *parts: Any) -> str:
    """A deterministic messageId from a namespace and the values identifying a source row:
    the same row imported again (from a renamed file too) gets the same id, which the event
    store's dedupe then skips."""
    digest = hashlib.blake2b(orjson.dumps([namespace, *parts], default=str), digest_size=16)
    prefix = namespace[:40]
    return f"{prefix}-{digest.hexdigest()}"


def row_id(namespace: str, row: dict[str, Any]) -> str:
    """The messageId of a whole row (keys sorted, so column order does not matter)."""
    digest = hashlib.blake2b(
        orjson.dumps([namespace, row], option=orjson.OPT_SORT_KEYS, default=str), digest_size=16
    )
    return f"{namespace[:40]}-{digest.hexdigest()}"


def get_path(row: dict[str, Any], path: str) -> Any:
    """``row[path]``, or, when there is no such key, the value at the dotted path."""
    if path in row:
        return row[path]
    value: Any = row
    for part in path.split("."):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
        if value is None:
            return None
    return value


def set_path(target: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    for part in parts[:-1]:
        nxt = target.get(part)
        if not isinstance(nxt, dict):
            nxt = target[part] = {}
        target = nxt
    target[parts[-1]] = value


def timestamp_value(ms: int) -> int | str:
    """An epoch-ms timestamp as a message carries it: the collection layer reads numbers
    below 10^11 as seconds, so an instant before March 1973 goes as ISO 8601 text."""
    if abs(ms) >= 100_000_000_000:
        return ms
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


def _epoch_ms(number: float, unit: str) -> int:
    if unit == "unix":
        return int(number * 1000)
    if unit == "unix_ms":
        return int(number)
    if unit == "unix_us":
        return int(number // 1000)
    # auto: seconds, milliseconds or microseconds by magnitude (years 1973..5138 in seconds)
    magnitude = abs(number)
    if magnitude < 1e11:
        return int(number * 1000)
    if magnitude < 1e14:
        return int(number)
    return int(number // 1000)


def parse_time(value: Any, fmt: str = "auto") -> int:
    """A timestamp (ISO 8601, epoch numbers or a ``strptime`` pattern) -> epoch ms (UTC when
    the text has no offset). Raises ValueError."""
    if value is None or value == "":
        raise ValueError("is empty")
    if isinstance(value, bool):
        raise ValueError("must be a timestamp, not a boolean")
    if isinstance(value, datetime):
        dt = value if value.tzinfo else value.replace(tzinfo=UTC)
        return int(dt.timestamp() * 1000)
    if fmt not in TIMESTAMP_FORMATS:
        try:
            dt = datetime.strptime(str(value).strip(), fmt)
        except ValueError:
            raise ValueError(f"does not match {fmt!r}") from None
        dt = dt if dt.tzinfo else dt.replace(tzinfo=UTC)
        return int(dt.timestamp() * 1000)
    if isinstance(value, int | float):
        if value != value:
            raise ValueError("is not a number")
        return _epoch_ms(value, fmt)
    text = str(value).strip()
    if fmt != "iso":
        try:
            return _epoch_ms(float(text), fmt)
        except ValueError:
            if fmt != "auto":
                raise ValueError("is not an epoch number") from None
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError("is not an ISO 8601 timestamp") from None
    dt = dt if dt.tzinfo else dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def cast(value: Any, kind: str) -> Any:
    """A CSV string (or JSON value) as ``kind``; raises ValueError."""
    if value is None:
        return None
    if kind == "string":
        return value if isinstance(value, str) else str(value)
    if kind in ("number", "integer"):
        if isinstance(value, bool):
            raise ValueError("must be a number")
        if isinstance(value, str):
            text = value.strip().replace(",", ".") if value.count(",") == 1 else value.strip()
            if text == "":
                return None
            try:
                number = float(text)
            except ValueError:
                raise ValueError("must be a number") from None
        elif isinstance(value, int | float):
            number = float(value)
        else:
            raise ValueError("must be a number")
        if number != number or number in (float("inf"), float("-inf")):
            raise ValueError("must be a finite number")
        if kind == "integer":
            if not number.is_integer():
                raise ValueError("must be an integer")
            return int(number)
        return int(number) if number.is_integer() and isinstance(value, int) else number
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError("must be a boolean (true/false, yes/no, 1/0)")
    if kind == "json":
        if not isinstance(value, str):
            return value
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            raise ValueError("is not valid JSON") from None
    raise ValueError(f"unknown type {kind!r}")


# -- loading and checking mapping files ----------------------------------------------------


def read_mapping_document(source: str | Path | dict[str, Any]) -> tuple[dict[str, Any], str]:
    """A mapping file (YAML, or JSON by its extension) or a dict, as an object, with the name
    to use in error messages; raises :class:`MappingError` when it is not one."""
    if isinstance(source, dict):
        data: Any = source
        where = "mapping"
    else:
        path = Path(source)
        where = str(path)
        if not path.is_file():
            raise MappingError(f"{where}: mapping file not found")
        text = path.read_text(encoding="utf-8")
        try:
            data = orjson.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
        except (orjson.JSONDecodeError, yaml.YAMLError) as exc:
            raise MappingError(f"{where}: not valid YAML/JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MappingError(f"{where}: a mapping must be an object (key: value pairs)")
    return data, where


def load_mapping(source: str | Path | dict[str, Any]) -> dict[str, Any]:
    """A mapping from a YAML/JSON file (or a dict), checked; raises :class:`MappingError`."""
    data, where = read_mapping_document(source)
    check_mapping(data, where)
    return data


def _target_ok(target: str) -> bool:
    if target in TOP_FIELDS:
        return True
    head, _, rest = target.partition(".")
    return head in OBJECT_FIELDS and bool(rest) and all(rest.split("."))


def check_mapping(data: dict[str, Any], where: str = "mapping") -> None:
    unknown = sorted(set(data) - set(MAPPING_KEYS))
    if unknown:
        raise MappingError(
            f"{where}: unknown key {unknown[0]!r}; expected one of {', '.join(MAPPING_KEYS)}"
        )

    def fail(key: str, message: str) -> None:
        raise MappingError(f"{where}: {key} {message}")

    name = data.get("name", "import")
    if not isinstance(name, str) or not name.strip() or len(name) > 40:
        fail("name", "must be a non-empty string of at most 40 characters")
    if "type" in data and data["type"] not in MESSAGE_TYPES:
        fail("type", f"must be one of {', '.join(MESSAGE_TYPES)}, got {data['type']!r}")
    fields = data.get("fields", {})
    if not isinstance(fields, dict):
        fail("fields", "must be an object of event field: source column")
    for target, column in fields.items():
        if not isinstance(target, str) or not _target_ok(target):
            fail(
                f"fields.{target}",
                "is not an event field: use one of "
                f"{', '.join(TOP_FIELDS)} or properties.*, traits.*, context.*, integrations.*",
            )
        if not isinstance(column, str) or not column:
            fail(f"fields.{target}", "must name a source column (a string)")
    preset = data.get("preset")
    if preset is not None:
        if fields:
            fail("fields", "cannot be combined with a preset (use rename and constants)")
    elif not fields:
        fail("fields", "is required (or name a preset)")
    elif "event" not in fields and "type" not in fields and data.get("type", "track") == "track":
        if "event" not in data.get("constants", {}):
            fail("fields.event", "is required for track events (or set constants.event)")
    fmt = data.get("timestamp_format", "auto")
    if not isinstance(fmt, str) or not fmt:
        fail("timestamp_format", "must be a string")
    elif fmt not in TIMESTAMP_FORMATS and "%" not in fmt:
        fail(
            "timestamp_format",
            f"must be one of {', '.join(TIMESTAMP_FORMATS)} or a strptime pattern like "
            "'%d/%m/%Y %H:%M', got " + repr(fmt),
        )
    if "message_id" in data and "identify_by" in data:
        fail("message_id", "and identify_by are alternatives: give one")
    if "message_id" in data and (not isinstance(data["message_id"], str) or not data["message_id"]):
        fail("message_id", "must name a source column")
    if "identify_by" in data:
        cols = data["identify_by"]
        if (
            not isinstance(cols, list)
            or not cols
            or not all(isinstance(c, str) and c for c in cols)
        ):
            fail("identify_by", "must be a non-empty list of source columns")
    types = data.get("types", {})
    if not isinstance(types, dict):
        fail("types", "must be an object of event field: type")
    for target, kind in types.items():
        if kind not in CASTS:
            fail(f"types.{target}", f"must be one of {', '.join(CASTS)}, got {kind!r}")
        if target not in fields:
            fail(f"types.{target}", "names a field that `fields` does not map")
    constants = data.get("constants", {})
    if not isinstance(constants, dict):
        fail("constants", "must be an object of event field: value")
    for target in constants:
        if not isinstance(target, str) or not _target_ok(target):
            fail(f"constants.{target}", "is not an event field")
    rename = data.get("rename", {})
    if not isinstance(rename, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in rename.items()
    ):
        fail("rename", "must be an object of source event name: new event name (strings)")
    if not isinstance(data.get("properties_from_rest", False), bool):
        fail("properties_from_rest", "must be true or false")


# -- the generic column mapper -------------------------------------------------------------

Draft = tuple[int, int, dict[str, Any]]  # (line of the first source row, rows, message)


class ColumnMapper:
    """One source row -> one message, as the mapping file says."""

    def __init__(self, mapping: dict[str, Any]) -> None:
        self.namespace: str = mapping.get("name", "import")
        self.type: str = mapping.get("type", "track")
        self.fields: dict[str, str] = dict(mapping.get("fields", {}))
        self.types: dict[str, str] = dict(mapping.get("types", {}))
        self.constants: dict[str, Any] = dict(mapping.get("constants", {}))
        self.fmt: str = mapping.get("timestamp_format", "auto")
        self.id_column: str | None = mapping.get("message_id")
        self.identify_by: list[str] | None = mapping.get("identify_by")
        self.rest: bool = mapping.get("properties_from_rest", False)
        self.mapped_columns = set(self.fields.values())
        self.overlay = Overlay(mapping, constants=False)

    def feed(self, line: int, row: dict[str, Any]) -> list[Draft]:
        msg: dict[str, Any] = {"type": self.type}
        for target, value in self.constants.items():
            set_path(msg, target, value)
        for target, column in self.fields.items():
            value = get_path(row, column)
            if isinstance(value, str):
                value = value.strip()
                if value == "":
                    value = None
            if value is None:
                continue
            kind = self.types.get(target)
            if target == "timestamp":
                try:
                    value = timestamp_value(parse_time(value, self.fmt))
                except ValueError as exc:
                    raise RowError(f"invalid timestamp: {exc}", column) from None
            elif kind is not None:
                try:
                    value = cast(value, kind)
                except ValueError as exc:
                    raise RowError(f"invalid {kind}: {exc}", column) from None
            set_path(msg, target, value)
        if self.rest:
            for column, value in row.items():
                if column not in self.mapped_columns and value not in (None, ""):
                    msg.setdefault("properties", {})[column] = value
        if self.id_column is not None:
            value = get_path(row, self.id_column)
            if value in (None, ""):
                raise RowError("missing message id", self.id_column)
            text = f"{self.namespace[:40]}-{value}"
            # Segment's bound is 100 characters: a longer id is hashed (still deterministic).
            msg["messageId"] = text if len(text) < 100 else message_id(self.namespace, value)
        elif self.identify_by is not None:
            values = [get_path(row, c) for c in self.identify_by]
            if all(v in (None, "") for v in values):
                raise RowError("missing identifying columns", ",".join(self.identify_by))
            msg["messageId"] = message_id(self.namespace, *values)
        else:
            msg["messageId"] = row_id(self.namespace, row)
        self.overlay.apply(msg)
        return [(line, 1, msg)]

    def finish(self) -> list[Draft]:
        return []


class Overlay:
    """A mapping's event-name renames and constants, applied to each finished message (of a
    preset too: ``preset: ga4`` with ``rename: {sign_up: Signed Up}``)."""

    def __init__(self, mapping: dict[str, Any] | None, *, constants: bool = True) -> None:
        mapping = mapping or {}
        self.rename: dict[str, str] = dict(mapping.get("rename", {}))
        self.constants: dict[str, Any] = dict(mapping.get("constants", {})) if constants else {}

    def __bool__(self) -> bool:
        return bool(self.rename or self.constants)

    def apply(self, msg: dict[str, Any]) -> None:
        if self.rename:
            event = msg.get("event")
            if isinstance(event, str) and event in self.rename:
                msg["event"] = self.rename[event]
                # Kept as the API keeps a GA4 name it translated.
                msg.setdefault("originalEvent", event)
        for target, value in self.constants.items():
            set_path(msg, target, value)


class Mapper(Protocol):
    """Source rows in, messages out; ``finish`` emits what a multi-row mapper still holds."""

    def feed(self, line: int, row: dict[str, Any]) -> Sequence[Draft]: ...

    def finish(self) -> Sequence[Draft]: ...
