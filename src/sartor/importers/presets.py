"""Built-in mappings for exports teams already have: Segment/RudderStack, GA4 BigQuery,
Mixpanel, and the UCI Online Retail transactions.

Each preset turns source rows into Segment messages; the messages then go through the same
validation, consent, identity and dedupe as events sent to the API. Every messageId is
derived from the source row (see each preset), so importing a file again stores nothing new.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sartor.importers.mapping import (
    Draft,
    Mapper,
    MappingError,
    RowError,
    message_id,
    parse_time,
    row_id,
    timestamp_value,
)

MAX_MESSAGE_ID = 99  # Segment: fewer than 100 characters
MAX_PRODUCT_ID = 255  # as the collection layer checks it

# -- Segment / RudderStack ------------------------------------------------------------------


class SegmentMapper:
    """One JSON object per line, already a Segment (or RudderStack) message.

    The message is kept as exported; a missing ``messageId`` becomes a hash of the whole
    line (key order does not matter), so a re-import still dedupes.
    """

    def feed(self, line: int, row: dict[str, Any]) -> list[Draft]:
        msg = dict(row)
        mid = msg.get("messageId")
        if mid is None or (isinstance(mid, str) and not mid.strip()):
            msg["messageId"] = row_id("segment", row)
        return [(line, 1, msg)]

    def finish(self) -> list[Draft]:
        return []


# -- GA4 BigQuery export --------------------------------------------------------------------

_NOT_SET = (None, "", "(not set)")
# GA4 item field -> Segment product field; other item fields are kept under their own name.
_GA4_ITEM_FIELDS = {
    "item_id": "product_id",
    "item_name": "name",
    "item_category": "category",
    "item_brand": "brand",
    "item_variant": "variant",
    "item_list_name": "list_name",
    "item_list_id": "list_id",
}
_GA4_PAGE_PARAMS = {"page_location": "url", "page_referrer": "referrer", "page_title": "title"}
_GA4_CAMPAIGN = {
    "manual_source": "source",
    "manual_medium": "medium",
    "manual_campaign_name": "name",
    "manual_term": "term",
    "manual_content": "content",
}


def ga4_value(value: Any) -> Any:
    """The one set member of a GA4 ``value`` struct (``int_value`` may be a string in the
    JSON export: it is an INT64)."""
    if not isinstance(value, dict):
        return value
    for key in ("string_value", "int_value", "double_value", "float_value"):
        v = value.get(key)
        if v is None:
            continue
        if key == "int_value" and isinstance(v, str):
            try:
                return int(v)
            except ValueError:
                return v
        return v
    return None


def ga4_params(params: Any, field_name: str) -> dict[str, Any]:
    if params is None:
        return {}
    if not isinstance(params, list):
        raise RowError(f"{field_name} must be a list of {{key, value}}", field_name)
    out: dict[str, Any] = {}
    for p in params:
        if not isinstance(p, dict) or not isinstance(p.get("key"), str):
            raise RowError(f"{field_name} must be a list of {{key, value}}", field_name)
        v = ga4_value(p.get("value"))
        if v is not None:
            out[p["key"]] = v
    return out


def _ga4_product(item: Any) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise RowError("items must be a list of objects", "items")
    product: dict[str, Any] = {}
    for key, value in item.items():
        if value in _NOT_SET or isinstance(value, list | dict):
            continue
        name = str(key)
        product[_GA4_ITEM_FIELDS.get(name, name)] = value
    return product


class GA4Mapper:
    """GA4 BigQuery export rows (``events_*`` tables, one row per event).

    ``event_name`` is the event (GA4 e-commerce names become Segment's: ``purchase`` is
    ``Order Completed``); ``page_view`` becomes a ``page`` call named by ``page_title``.
    ``user_id`` is the userId and ``user_pseudo_id`` the anonymousId; ``event_timestamp``
    (microseconds) the timestamp; ``event_params`` the properties (each value the set one
    of ``string_value``, ``int_value``, ``double_value``, ``float_value``); ``items[]`` the
    products; ``ecommerce.transaction_id`` / ``purchase_revenue`` the order id and revenue;
    ``user_properties`` the context traits; ``device``, ``geo`` and
    ``collected_traffic_source`` the context. The messageId hashes the user, the timestamp,
    the name, the bundle and batch indexes and the parameters.
    """

    def feed(self, line: int, row: dict[str, Any]) -> list[Draft]:
        name = row.get("event_name")
        if not isinstance(name, str) or not name.strip():
            raise RowError("missing event_name", "event_name")
        ts_raw = row.get("event_timestamp")
        if ts_raw in (None, ""):
            raise RowError("missing event_timestamp", "event_timestamp")
        try:
            micros = int(ts_raw)
        except (TypeError, ValueError):
            raise RowError(
                "invalid timestamp: event_timestamp must be microseconds", "event_timestamp"
            ) from None
        params = ga4_params(row.get("event_params"), "event_params")
        msg: dict[str, Any] = {"timestamp": timestamp_value(micros // 1000)}
        if row.get("user_id") not in _NOT_SET:
            msg["userId"] = str(row["user_id"])
        if row.get("user_pseudo_id") not in _NOT_SET:
            msg["anonymousId"] = str(row["user_pseudo_id"])
        props = dict(params)
        context: dict[str, Any] = {}
        page = {_GA4_PAGE_PARAMS[k]: v for k, v in params.items() if k in _GA4_PAGE_PARAMS}
        if page:
            context["page"] = page
        if name == "page_view":
            msg["type"] = "page"
            if isinstance(params.get("page_title"), str):
                msg["name"] = params["page_title"]
            props.update(page)
        elif name == "screen_view":
            msg["type"] = "screen"
            screen = params.get("firebase_screen") or params.get("screen_name")
            if isinstance(screen, str):
                msg["name"] = screen
        else:
            msg["type"] = "track"
            msg["event"] = name
        ecommerce = row.get("ecommerce")
        if isinstance(ecommerce, dict):
            if ecommerce.get("transaction_id") not in _NOT_SET:
                props.setdefault("transaction_id", ecommerce["transaction_id"])
            if ecommerce.get("purchase_revenue") is not None:
                props.setdefault("revenue", ecommerce["purchase_revenue"])
        items = row.get("items")
        if items:
            if not isinstance(items, list):
                raise RowError("items must be a list of objects", "items")
            props["products"] = [_ga4_product(item) for item in items]
        if props:
            msg["properties"] = props
        traits = ga4_params(row.get("user_properties"), "user_properties")
        if traits:
            context["traits"] = traits
        device = row.get("device")
        if isinstance(device, dict):
            if device.get("category") not in _NOT_SET:
                context["device"] = {"type": device["category"]}
                for src, dst in (
                    ("mobile_brand_name", "manufacturer"),
                    ("mobile_model_name", "model"),
                ):
                    if device.get(src) not in _NOT_SET:
                        context["device"][dst] = device[src]
            os_name = device.get("operating_system")
            if os_name not in _NOT_SET:
                context["os"] = {"name": os_name}
                if device.get("operating_system_version") not in _NOT_SET:
                    context["os"]["version"] = device["operating_system_version"]
            if device.get("language") not in _NOT_SET:
                context["locale"] = device["language"]
        geo = row.get("geo")
        if isinstance(geo, dict):
            location = {
                k: geo[k] for k in ("country", "region", "city") if geo.get(k) not in _NOT_SET
            }
            if location:
                context["location"] = location
        traffic = row.get("collected_traffic_source")
        if isinstance(traffic, dict):
            campaign = {
                dst: traffic[src]
                for src, dst in _GA4_CAMPAIGN.items()
                if traffic.get(src) not in _NOT_SET
            }
            if campaign:
                context["campaign"] = campaign
        if context:
            msg["context"] = context
        msg["messageId"] = message_id(
            "ga4",
            row.get("user_pseudo_id"),
            micros,
            name,
            row.get("event_bundle_sequence_id"),
            row.get("batch_event_index"),
            sorted(params.items()),
        )
        return [(line, 1, msg)]

    def finish(self) -> list[Draft]:
        return []


# -- Mixpanel export --------------------------------------------------------------------------

# Mixpanel's default properties that are context in Segment's shape.
_MIXPANEL_CONTEXT = {
    "$current_url": "page.url",
    "$referrer": "page.referrer",
    "$os": "os.name",
    "$browser": "browser.name",
    "$browser_version": "browser.version",
    "$city": "location.city",
    "$region": "location.region",
    "mp_country_code": "location.country",
    "$screen_width": "screen.width",
    "$screen_height": "screen.height",
    "mp_lib": "library.name",
    "$lib_version": "library.version",
    "ip": "ip",
}


class MixpanelMapper:
    """Mixpanel raw export: ``{"event", "properties": {"distinct_id", "time", ...}}``.

    ``properties.time`` is epoch seconds (milliseconds when it is that large). The userId is
    ``$user_id`` when present, else ``distinct_id``, except a ``$device:...`` distinct id,
    which is an anonymousId (as is ``$device_id`` next to a user id). ``$insert_id``, when
    present, is the messageId (``mixpanel-<$insert_id>``); otherwise the event, the
    distinct id, the time and the properties are hashed. ``$mp_web_page_view`` becomes a
    ``page`` call. Mixpanel's default properties (URL, referrer, OS, browser, city,
    country, screen, library, IP) move to the context; the rest stay properties.
    """

    def feed(self, line: int, row: dict[str, Any]) -> list[Draft]:
        event = row.get("event")
        if not isinstance(event, str) or not event.strip():
            raise RowError("missing event", "event")
        raw_props = row.get("properties")
        if not isinstance(raw_props, dict):
            raise RowError("missing properties object", "properties")
        props = dict(raw_props)
        when = props.pop("time", None)
        if when in (None, ""):
            raise RowError("missing time", "properties.time")
        try:
            ts = parse_time(when, "auto")
        except ValueError as exc:
            raise RowError(f"invalid timestamp: {exc}", "properties.time") from None
        distinct = props.pop("distinct_id", None)
        user = props.pop("$user_id", None)
        device = props.pop("$device_id", None)
        msg: dict[str, Any] = {"timestamp": timestamp_value(ts)}
        if user not in (None, ""):
            msg["userId"] = str(user)
            if device not in (None, ""):
                msg["anonymousId"] = str(device)
        elif isinstance(distinct, str) and distinct.startswith("$device:"):
            msg["anonymousId"] = distinct.removeprefix("$device:")
        elif distinct not in (None, "") and distinct == device:
            msg["anonymousId"] = str(distinct)
        elif distinct not in (None, ""):
            msg["userId"] = str(distinct)
        elif device not in (None, ""):
            msg["anonymousId"] = str(device)
        insert_id = props.pop("$insert_id", None)
        context: dict[str, Any] = {}
        for key, path in _MIXPANEL_CONTEXT.items():
            if key in props:
                value = props.pop(key)
                if value in (None, ""):
                    continue
                head, _, tail = path.partition(".")
                if tail:
                    context.setdefault(head, {})[tail] = value
                else:
                    context[head] = value
        if event == "$mp_web_page_view":
            msg["type"] = "page"
            title = props.get("current_page_title")
            if isinstance(title, str):
                msg["name"] = title
        else:
            msg["type"] = "track"
            msg["event"] = event
        if props:
            msg["properties"] = props
        if context:
            msg["context"] = context
        if insert_id not in (None, "") and len(f"mixpanel-{insert_id}") <= MAX_MESSAGE_ID:
            msg["messageId"] = f"mixpanel-{insert_id}"
        else:
            msg["messageId"] = message_id("mixpanel", event, distinct, when, insert_id, raw_props)
        return [(line, 1, msg)]

    def finish(self) -> list[Draft]:
        return []


# -- UCI Online Retail ----------------------------------------------------------------------

RETAIL_COLUMNS = ("InvoiceNo", "StockCode", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID")
# Online Retail II (the 2009-2011 release) names three columns differently.
_RETAIL_ALIASES = {"Invoice": "InvoiceNo", "Price": "UnitPrice", "Customer ID": "CustomerID"}
# Lines of one invoice more than this many lines apart are not merged: memory stays bounded.
RETAIL_WINDOW = 10_000
# Invoices closed recently, remembered to refuse (not silently drop) a late line.
RETAIL_CLOSED_MEMORY = 200_000
RETAIL_CURRENCY = "GBP"
# Customers already given their `identify` in this run. Past this many the memory is
# cleared: a later invoice then sends the identify again, which the store finds a duplicate.
RETAIL_CUSTOMER_MEMORY = 1_000_000


def _integer(text: Any) -> int:
    try:
        number = float(text)
    except (TypeError, ValueError):
        raise RowError("invalid Quantity: not an integer", "Quantity") from None
    if not number.is_integer():
        raise RowError("invalid Quantity: not an integer", "Quantity")
    return int(number)


def _retail_time(text: str) -> int:
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        # The original spreadsheet export writes US dates: 12/1/2010 8:26.
        try:
            dt = datetime.strptime(text, "%m/%d/%Y %H:%M")
        except ValueError:
            raise RowError(
                "invalid timestamp: InvoiceDate must be YYYY-MM-DD HH:MM:SS or M/D/YYYY H:MM",
                "InvoiceDate",
            ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


@dataclass(slots=True)
class _Invoice:
    number: str
    line: int
    timestamp: int
    customer: str
    country: str
    last: int
    products: list[dict[str, Any]] = field(default_factory=list)
    total: float = 0.0
    rows: int = 0


class OnlineRetailMapper:
    """UCI Online Retail lines -> one order event per invoice.

    * Lines of one ``InvoiceNo`` (consecutive in the file, or at most 10,000 lines apart)
      are one ``Order Completed``; an invoice starting with ``C`` is an ``Order Refunded``.
      Its ``products[]`` are the lines in file order: ``StockCode`` -> ``product_id``,
      ``Description`` (trimmed) -> ``name``, ``UnitPrice`` -> ``price``, ``Quantity`` ->
      ``quantity``. ``total`` and ``revenue`` are the sum of price x quantity (negative for
      a cancellation), ``currency`` GBP, ``order_id`` the invoice number.
    * The timestamp is the invoice's first line's ``InvoiceDate`` read as UTC.
    * ``CustomerID`` ``17850.0`` is userId ``17850``; a guest line (no CustomerID) gets
      anonymousId ``guest-<InvoiceNo>``. ``Country`` is ``context.location.country``.
    * Each customer's first invoice is preceded by an ``identify`` with the ``country``
      trait (messageId ``online-retail-customer-<id>``).
    * messageIds: ``online-retail-order-<InvoiceNo>``, so an invoice is stored once.
    * A line is refused (with its reason) when its InvoiceNo or StockCode is empty, its
      Quantity is not an integer, its UnitPrice not a number, its InvoiceDate unreadable,
      its CustomerID not a number, or when its invoice was already closed earlier in the file.
    """

    # Its products are built here in Segment's shape (text ids, float prices, integer
    # quantities): the collection layer need not check them one by one again.
    products_normalized = True

    def __init__(self) -> None:
        self._open: OrderedDict[str, _Invoice] = OrderedDict()
        self._closed: OrderedDict[str, None] = OrderedDict()
        self._current: _Invoice | None = None
        self._customers: set[str] = set()
        # Messages of closed invoices not yet handed out (a refused line may close some).
        self._ready: list[Draft] = []
        self._columns: tuple[str, ...] | None = None
        self._index = 0
        self._date_text = ""
        self._date_ms = 0

    def _resolve_columns(self, row: dict[str, Any]) -> tuple[str, ...]:
        names = {_RETAIL_ALIASES.get(k, k): k for k in row}
        missing = [c for c in RETAIL_COLUMNS if c not in names]
        if missing:
            raise MappingError(
                f"the file has no column {', '.join(missing)}: the online-retail preset "
                f"expects {','.join(RETAIL_COLUMNS)},Description,Country"
            )
        return tuple(names.get(c, c) for c in (*RETAIL_COLUMNS, "Description", "Country"))

    def feed(self, line: int, row: dict[str, Any]) -> Sequence[Draft]:
        # The hot loop of the full-file import (541,909 lines): plain locals, one dict
        # lookup per column, the date parsed once per distinct text.
        cols = self._columns
        if cols is None:
            cols = self._columns = self._resolve_columns(row)
        c_inv, c_code, c_qty, c_date, c_price, c_cust, c_desc, c_country = cols
        self._index += 1
        index = self._index
        number = (row[c_inv] or "").strip()
        if not number:
            raise RowError("missing InvoiceNo", "InvoiceNo")
        code = (row[c_code] or "").strip()
        if not code:
            raise RowError("missing StockCode", "StockCode")
        if len(code) > MAX_PRODUCT_ID:
            raise RowError(f"StockCode longer than {MAX_PRODUCT_ID} characters", "StockCode")
        qty_text = row[c_qty]
        try:
            quantity = int(qty_text)
        except (TypeError, ValueError):
            quantity = _integer(qty_text)
        try:
            price = float(row[c_price])
        except (TypeError, ValueError):
            raise RowError("invalid UnitPrice: not a number", "UnitPrice") from None
        if not math.isfinite(price):
            raise RowError("invalid UnitPrice: not a number", "UnitPrice")
        date_text = row[c_date]
        if date_text != self._date_text:
            self._date_ms = _retail_time((date_text or "").strip())
            self._date_text = date_text
        inv = self._current
        if inv is None or inv.number != number:
            horizon = index - RETAIL_WINDOW
            inv = self._open.get(number)
            if inv is not None and inv.last < horizon:
                self._close(inv)
                inv = None
            if inv is None:
                if number in self._closed:
                    raise RowError(
                        f"invoice lines more than {RETAIL_WINDOW} lines apart", "InvoiceNo"
                    )
                customer = (row[c_cust] or "").strip()
                if customer.endswith(".0"):
                    customer = customer[:-2]
                if customer and not customer.isdigit():
                    raise RowError("invalid CustomerID: not a number", "CustomerID")
                country = (row.get(c_country) or "").strip()
                inv = _Invoice(number, line, self._date_ms, customer, country, index)
                self._open[number] = inv
            else:
                self._open.move_to_end(number)
            self._current = inv
            while self._open:
                oldest = next(iter(self._open.values()))
                if oldest.last >= horizon:
                    break
                self._close(oldest)
        inv.last = index
        name = (row.get(c_desc) or "").strip()
        if name:
            inv.products.append(
                {"product_id": code, "name": name, "price": price, "quantity": quantity}
            )
        else:
            inv.products.append({"product_id": code, "price": price, "quantity": quantity})
        inv.total += price * quantity
        inv.rows += 1
        if self._ready:
            out, self._ready = self._ready, []
            return out
        return ()

    def _close(self, inv: _Invoice) -> None:
        out = self._ready
        del self._open[inv.number]
        if self._current is inv:
            self._current = None
        self._closed[inv.number] = None
        if len(self._closed) > RETAIL_CLOSED_MEMORY:
            self._closed.popitem(last=False)
        who: dict[str, str]
        context: dict[str, Any] = {}
        if inv.country:
            context["location"] = {"country": inv.country}
        if inv.customer:
            who = {"userId": inv.customer}
            if inv.customer not in self._customers:
                if len(self._customers) >= RETAIL_CUSTOMER_MEMORY:
                    self._customers.clear()
                self._customers.add(inv.customer)
                identify: dict[str, Any] = {
                    "type": "identify",
                    "messageId": f"online-retail-customer-{inv.customer}",
                    "timestamp": timestamp_value(inv.timestamp),
                    "userId": inv.customer,
                }
                if inv.country:
                    identify["traits"] = {"country": inv.country}
                out.append((inv.line, 0, identify))
        else:
            who = {"anonymousId": f"guest-{inv.number}"}
        total = round(inv.total, 2)
        msg: dict[str, Any] = {
            "type": "track",
            "event": "Order Refunded" if inv.number.startswith("C") else "Order Completed",
            "messageId": f"online-retail-order-{inv.number}"[:MAX_MESSAGE_ID],
            "timestamp": timestamp_value(inv.timestamp),
            "properties": {
                "order_id": inv.number,
                "total": total,
                "revenue": total,
                "currency": RETAIL_CURRENCY,
                "products": inv.products,
            },
            **who,
        }
        if context:
            msg["context"] = context
        out.append((inv.line, inv.rows, msg))

    def finish(self) -> Sequence[Draft]:
        for inv in list(self._open.values()):
            self._close(inv)
        out, self._ready = self._ready, []
        return out


PRESETS: dict[str, Callable[[], Mapper]] = {
    "segment": SegmentMapper,
    "rudderstack": SegmentMapper,
    "ga4": GA4Mapper,
    "mixpanel": MixpanelMapper,
    "online-retail": OnlineRetailMapper,
}


def preset_mapper(name: str) -> Mapper:
    factory = PRESETS.get(name)
    if factory is None:
        raise MappingError(f"unknown preset {name!r}: expected one of {', '.join(sorted(PRESETS))}")
    return factory()
