"""``sartor import events``: the built-in mappings field by field, mapping files, rejects,
idempotent re-runs, CSV/JSONL/Parquet, gzip, and the full Online Retail file (slow)."""

from __future__ import annotations

import gzip
import shutil
import tracemalloc
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from typer.testing import CliRunner

from sartor.cli import app
from sartor.collect.normalize import _normalize_product, normalize_properties
from sartor.config import Settings
from sartor.engine import CreatedWorkspace, Engine
from sartor.importers import ImportConfigError, run_import
from sartor.importers.mapping import MappingError, load_mapping
from sartor.importers.source import MalformedRow, detect_format, open_rows
from sartor.storage.tables import events as events_table
from tests.conftest import shared_data

runner = CliRunner()


def _events(engine: Engine, ws: CreatedWorkspace) -> list[dict[str, Any]]:
    return engine.events(ws.workspace, limit=1000)


def _rejects(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


# -- Online Retail -----------------------------------------------------------------------------

RETAIL_HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country"
RETAIL_LINES = [
    # line 2-4: one invoice of customer 17850 (the third line a minute later)
    "536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER ,6,2010-12-01 08:26:00,2.55,17850.0,"
    "United Kingdom",
    '536365,84406B,"CREAM CUPID HEARTS COAT HANGER",8,2010-12-01 08:26:00,2.75,17850.0,'
    "United Kingdom",
    "536365,71053,WHITE METAL LANTERN,6,2010-12-01 08:27:00,3.39,17850.0,United Kingdom",
    # line 5: its cancellation
    "C536379,D,Discount,-1,2010-12-01 09:41:00,27.5,17850.0,United Kingdom",
    # line 6-7: a guest invoice, interleaved (line 8) with another of customer 12583
    "536544,21773,DECORATIVE ROSE BATHROOM BOTTLE,1,2010-12-01 14:32:00,2.51,,United Kingdom",
    "536370,22728,ALARM CLOCK BAKELIKE PINK,24,2010-12-01 08:45:00,3.75,12583.0,France",
    "536544,21774,DECORATIVE CATS BATHROOM BOTTLE,2,2010-12-01 14:32:00,2.51,,United Kingdom",
    # line 9-11: refused lines (bad date, text quantity, no stock code)
    "536371,22086,PAPER CHAIN KIT,80,yesterday,2.55,13748.0,United Kingdom",
    "536372,22632,HAND WARMER RED POLKA DOT,six,2010-12-01 09:01:00,1.85,17850.0,United Kingdom",
    "536373,,NO CODE,1,2010-12-01 09:02:00,1.0,17850.0,United Kingdom",
    # line 12: second order of 12583 (no second identify)
    "536380,22961,JAM MAKING SET PRINTED,24,12/1/2010 9:41,1.45,12583.0,France",
]


def _retail_file(tmp_path: Path, name: str = "retail.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join([RETAIL_HEADER, *RETAIL_LINES]) + "\n")
    return path


def test_online_retail_preset_maps_invoices_field_by_field(
    engine: Engine, workspace: CreatedWorkspace, tmp_path: Path
) -> None:
    path = _retail_file(tmp_path)
    summary = run_import(engine, workspace.workspace, path, "events", preset="online-retail")
    assert summary.read == 11
    # 5 orders (536365, C536379, 536544, 536370, 536380) + 2 identifies (17850, 12583)
    assert summary.imported == 7 and summary.duplicates == 0
    assert dict(summary.rejected) == {
        "invalid timestamp: InvoiceDate must be YYYY-MM-DD HH:MM:SS or M/D/YYYY H:MM": 1,
        "invalid Quantity: not an integer": 1,
        "missing StockCode": 1,
    }
    events = {e["messageId"]: e for e in _events(engine, workspace)}
    assert len(events) == 7

    order = events["online-retail-order-536365"]
    assert order["type"] == "track" and order["event"] == "Order Completed"
    assert order["userId"] == "17850" and order["anonymousId"] is None
    assert order["timestamp"] == "2010-12-01T08:26:00.000Z"  # the first line's date
    props = order["properties"]
    assert props["order_id"] == "536365" and props["currency"] == "GBP"
    assert props["total"] == props["revenue"] == round(6 * 2.55 + 8 * 2.75 + 6 * 3.39, 2)
    assert props["products"] == [
        {
            "product_id": "85123A",
            "name": "WHITE HANGING HEART T-LIGHT HOLDER",
            "price": 2.55,
            "quantity": 6,
        },
        {
            "product_id": "84406B",
            "name": "CREAM CUPID HEARTS COAT HANGER",
            "price": 2.75,
            "quantity": 8,
        },
        {"product_id": "71053", "name": "WHITE METAL LANTERN", "price": 3.39, "quantity": 6},
    ]
    assert order["context"] == {"location": {"country": "United Kingdom"}}

    refund = events["online-retail-order-C536379"]
    assert refund["event"] == "Order Refunded" and refund["userId"] == "17850"
    assert refund["properties"]["total"] == -27.5
    assert refund["properties"]["products"] == [
        {"product_id": "D", "name": "Discount", "price": 27.5, "quantity": -1}
    ]

    guest = events["online-retail-order-536544"]
    assert guest["userId"] is None and guest["anonymousId"] == "guest-536544"
    assert [p["product_id"] for p in guest["properties"]["products"]] == ["21773", "21774"]
    assert guest["properties"]["total"] == round(2.51 + 2 * 2.51, 2)

    assert events["online-retail-order-536370"]["context"]["location"]["country"] == "France"
    late = events["online-retail-order-536380"]
    assert late["timestamp"] == "2010-12-01T09:41:00.000Z"  # the M/D/YYYY spreadsheet form

    identify = events["online-retail-customer-17850"]
    assert identify["type"] == "identify" and identify["userId"] == "17850"
    assert identify["traits"] == {"country": "United Kingdom"}
    assert identify["timestamp"] == "2010-12-01T08:26:00.000Z"
    assert events["online-retail-customer-12583"]["traits"] == {"country": "France"}
    # the identify comes before the customer's first order in the log
    seqs = {m: e["seq"] for m, e in events.items()}
    assert seqs["online-retail-customer-17850"] < seqs["online-retail-order-536365"]

    rejects = _rejects(tmp_path / "retail.csv.rejects.jsonl")
    assert [(r["line"], r["field"]) for r in rejects] == [
        (9, "InvoiceDate"),
        (10, "Quantity"),
        (11, "StockCode"),
    ]
    assert rejects[1]["row"]["Quantity"] == "six"
    assert summary.rejects_path == str(tmp_path / "retail.csv.rejects.jsonl")


def test_reimporting_the_same_file_even_renamed_stores_nothing_new(
    engine: Engine, workspace: CreatedWorkspace, tmp_path: Path
) -> None:
    path = _retail_file(tmp_path)
    first = run_import(engine, workspace.workspace, path, "events", preset="online-retail")
    renamed = tmp_path / "copy-of-retail.csv"
    shutil.copy(path, renamed)
    again = run_import(engine, workspace.workspace, renamed, "events", preset="online-retail")
    assert first.imported == 7
    assert again.imported == 0 and again.duplicates == 7
    assert len(_events(engine, workspace)) == 7


def test_the_window_refuses_an_invoice_that_comes_back_far_later(
    sqlite_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sartor.importers import presets

    monkeypatch.setattr(presets, "RETAIL_WINDOW", 2)
    ws = sqlite_engine.create_workspace("shop")
    lines = [
        "1,A,a,1,2011-01-01 10:00:00,1.0,1.0,UK",
        "2,B,b,1,2011-01-01 10:00:00,1.0,2.0,UK",
        "3,C,c,1,2011-01-01 10:00:00,1.0,3.0,UK",
        "4,D,d,1,2011-01-01 10:00:00,1.0,4.0,UK",
        "1,E,e,1,2011-01-01 10:00:00,1.0,1.0,UK",  # invoice 1 again, 4 lines later
    ]
    path = tmp_path / "r.csv"
    path.write_text("\n".join([RETAIL_HEADER, *lines]) + "\n")
    summary = run_import(sqlite_engine, ws.workspace, path, "events", preset="online-retail")
    assert dict(summary.rejected) == {"invoice lines more than 2 lines apart": 1}
    orders = [e for e in _events(sqlite_engine, ws) if e["type"] == "track"]
    assert len(orders) == 4
    assert _rejects(tmp_path / "r.csv.rejects.jsonl")[0]["line"] == 6


def test_online_retail_needs_its_columns(sqlite_engine: Engine, tmp_path: Path) -> None:
    ws = sqlite_engine.create_workspace("shop")
    path = tmp_path / "other.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(MappingError, match="no column InvoiceNo"):
        run_import(sqlite_engine, ws.workspace, path, "events", preset="online-retail")


# -- Segment / RudderStack -----------------------------------------------------------------------


def test_segment_preset_keeps_messages_and_rejects_bad_lines(
    engine: Engine, workspace: CreatedWorkspace, tmp_path: Path
) -> None:
    lines = [
        orjson.dumps(
            {
                "type": "track",
                "event": "Product Viewed",
                "messageId": "seg-1",
                "userId": "u1",
                "anonymousId": "a1",
                "timestamp": "2024-03-01T10:00:00.000Z",
                "receivedAt": "2024-03-01T10:00:01.000Z",
                "properties": {"product_id": "sku-1", "price": 9.5},
                "context": {"page": {"url": "https://shop.example/p/1"}},
                "projectId": "proj-1",
            }
        ),
        b"",  # blank lines are skipped
        orjson.dumps(
            {  # RudderStack: no messageId here, a rudderId, ids as numbers
                "type": "identify",
                "userId": 42,
                "traits": {"plan": "pro"},
                "rudderId": "r-1",
                "originalTimestamp": "2024-03-01T11:00:00Z",
            }
        ),
        b'{"type": "track", "event": "Order Completed", "userId": "u1"',  # malformed JSON
        orjson.dumps({"type": "track", "event": "x", "userId": "u1", "timestamp": "soon"}),
        orjson.dumps({"type": "track", "event": "x"}),  # no id at all
        b"[1, 2]",  # not an object
    ]
    path = tmp_path / "segment.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    summary = run_import(engine, workspace.workspace, path, "events", preset="segment")
    assert summary.read == 6 and summary.imported == 2
    events = _events(engine, workspace)
    viewed, identified = events
    assert viewed["messageId"] == "seg-1" and viewed["event"] == "Product Viewed"
    assert (viewed["userId"], viewed["anonymousId"]) == ("u1", "a1")
    assert viewed["timestamp"] == "2024-03-01T10:00:00.000Z"
    assert viewed["properties"] == {"product_id": "sku-1", "price": 9.5}
    assert viewed["context"] == {"page": {"url": "https://shop.example/p/1"}}
    assert viewed["projectId"] == "proj-1"
    assert identified["type"] == "identify" and identified["userId"] == "42"
    assert identified["traits"] == {"plan": "pro"}
    assert identified["timestamp"] == "2024-03-01T11:00:00.000Z"
    assert identified["messageId"].startswith("segment-") and identified["rudderId"] == "r-1"

    # Unreadable lines are reported at once, invalid events when their batch is checked.
    rejects = sorted(_rejects(tmp_path / "segment.jsonl.rejects.jsonl"), key=lambda r: r["line"])
    assert [(r["line"], r["reason"], r["field"]) for r in rejects] == [
        (4, "malformed JSON", None),
        (5, "timestamp: is not an ISO 8601 timestamp: ...", "timestamp"),
        (6, "userId: userId or anonymousId is required", "userId"),
        (7, "not a JSON object", None),
    ]
    assert rejects[0]["row"]["text"].startswith('{"type": "track"')
    assert rejects[1]["message"] == "is not an ISO 8601 timestamp: 'soon'"
    again = run_import(engine, workspace.workspace, path, "events", preset="rudderstack")
    assert again.imported == 0 and again.duplicates == 2


# -- GA4 BigQuery export (as Parquet, nested lists of structs) -------------------------------


def _param(key: str, **value: Any) -> dict[str, Any]:
    full = {"string_value": None, "int_value": None, "double_value": None, "float_value": None}
    full.update(value)
    return {"key": key, "value": full}


def _ga4_rows() -> list[dict[str, Any]]:
    base = {
        "event_date": "20240301",
        "user_pseudo_id": "1197102399.1709287200",
        "event_bundle_sequence_id": 7,
        "device": {"category": "mobile", "operating_system": "iOS", "language": "en-gb"},
        "geo": {"country": "United Kingdom", "region": "England", "city": "London"},
        "user_properties": [_param("tier", string_value="gold")],
    }
    return [
        {
            **base,
            "event_name": "page_view",
            "event_timestamp": 1709287200123456,
            "user_id": None,
            "event_params": [
                _param("page_location", string_value="https://shop.example/"),
                _param("page_title", string_value="Home"),
                _param("ga_session_id", int_value=1709287200),
            ],
            "items": [],
            "ecommerce": None,
        },
        {
            **base,
            "event_name": "purchase",
            "event_timestamp": 1709287260000000,
            "user_id": "cust-9",
            "event_params": [
                _param("currency", string_value="EUR"),
                _param("value", double_value=59.9),
                _param("ga_session_id", int_value=1709287200),
                _param("coupon", string_value=None),
            ],
            "items": [
                {
                    "item_id": "SKU-1",
                    "item_name": "Trail shoe",
                    "item_brand": "Acme",
                    "item_category": "Shoes",
                    "price": 49.9,
                    "quantity": 1,
                    "item_variant": "(not set)",
                },
                {
                    "item_id": "SKU-2",
                    "item_name": "Socks",
                    "item_brand": "Acme",
                    "item_category": "Accessories",
                    "price": 5.0,
                    "quantity": 2,
                    "item_variant": "blue",
                },
            ],
            "ecommerce": {"transaction_id": "T-1001", "purchase_revenue": 59.9},
        },
    ]


def test_ga4_preset_reads_bigquery_rows_from_parquet(
    engine: Engine, workspace: CreatedWorkspace, tmp_path: Path
) -> None:
    path = tmp_path / "events_20240301.parquet"
    pq.write_table(pa.Table.from_pylist(_ga4_rows()), path)
    assert detect_format(path) == "parquet"
    summary = run_import(engine, workspace.workspace, path, "events", preset="ga4")
    assert (summary.read, summary.imported, summary.rejected_total) == (2, 2, 0)
    page, purchase = _events(engine, workspace)

    assert page["type"] == "page" and page["name"] == "Home"
    assert page["userId"] is None and page["anonymousId"] == "1197102399.1709287200"
    assert page["timestamp"] == "2024-03-01T10:00:00.123Z"  # microseconds -> ms
    assert page["properties"]["url"] == "https://shop.example/"
    assert page["properties"]["ga_session_id"] == 1709287200
    assert page["context"]["page"] == {"url": "https://shop.example/", "title": "Home"}

    assert purchase["type"] == "track" and purchase["event"] == "Order Completed"
    assert purchase["originalEvent"] == "purchase"
    assert purchase["userId"] == "cust-9"
    assert purchase["timestamp"] == "2024-03-01T10:01:00.000Z"
    props = purchase["properties"]
    assert props["order_id"] == "T-1001" and props["currency"] == "EUR"
    assert props["revenue"] == 59.9 and props["value"] == 59.9
    assert "coupon" not in props  # a param without a value
    assert props["products"] == [
        {
            "product_id": "SKU-1",
            "name": "Trail shoe",
            "brand": "Acme",
            "category": "Shoes",
            "price": 49.9,
            "quantity": 1,
        },
        {
            "product_id": "SKU-2",
            "name": "Socks",
            "brand": "Acme",
            "category": "Accessories",
            "price": 5.0,
            "quantity": 2,
            "variant": "blue",
        },
    ]
    ctx = purchase["context"]
    assert ctx["device"] == {"type": "mobile"} and ctx["os"] == {"name": "iOS"}
    assert ctx["locale"] == "en-gb"
    assert ctx["location"] == {"country": "United Kingdom", "region": "England", "city": "London"}
    assert ctx["traits"] == {"tier": "gold"}
    assert purchase["messageId"].startswith("ga4-")


def test_ga4_json_export_with_int64_as_text_gets_the_same_message_ids(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    ws = sqlite_engine.create_workspace("shop")
    parquet = tmp_path / "a.parquet"
    pq.write_table(pa.Table.from_pylist(_ga4_rows()), parquet)
    # BigQuery's JSON export writes INT64 values as strings.
    rows = _ga4_rows()
    for row in rows:
        row["event_timestamp"] = str(row["event_timestamp"])
        for p in row["event_params"]:
            if p["value"]["int_value"] is not None:
                p["value"]["int_value"] = str(p["value"]["int_value"])
    rows.append({"event_name": "purchase", "user_pseudo_id": "x"})  # no timestamp
    jsonl = tmp_path / "b.json"
    jsonl.write_bytes(b"\n".join(orjson.dumps(r) for r in rows))
    first = run_import(sqlite_engine, ws.workspace, parquet, "events", preset="ga4")
    second = run_import(sqlite_engine, ws.workspace, jsonl, "events", preset="ga4")
    assert first.imported == 2 and second.duplicates == 2 and second.imported == 0
    assert dict(second.rejected) == {"missing event_timestamp": 1}


# -- Mixpanel (gzipped JSONL) -------------------------------------------------------------------


def test_mixpanel_preset_from_a_gzipped_export(
    engine: Engine, workspace: CreatedWorkspace, tmp_path: Path
) -> None:
    rows = [
        {
            "event": "Signed Up",
            "properties": {
                "time": 1709287200,
                "distinct_id": "user-7",
                "$insert_id": "a1b2c3",
                "$current_url": "https://shop.example/signup",
                "$os": "Mac OS X",
                "$city": "Paris",
                "mp_country_code": "FR",
                "plan": "free",
            },
        },
        {  # time in milliseconds, an anonymous device, no $insert_id
            "event": "Product Viewed",
            "properties": {
                "time": 1709287260500,
                "distinct_id": "$device:18e0a1",
                "product_id": "sku-3",
            },
        },
        {  # simplified id merge: $user_id and $device_id
            "event": "Product Added",
            "properties": {
                "time": 1709287270,
                "distinct_id": "user-7",
                "$user_id": "user-7",
                "$device_id": "18e0a1",
                "$insert_id": "z9",
                "product_id": "sku-3",
            },
        },
        {"event": "Broken", "properties": {"distinct_id": "user-7"}},  # no time
    ]
    path = tmp_path / "export.json.gz"  # gzip detected by its magic bytes
    with gzip.open(path, "wb") as fh:
        fh.write(b"\n".join(orjson.dumps(r) for r in rows) + b"\n")
    summary = run_import(engine, workspace.workspace, path, "events", preset="mixpanel")
    assert (summary.read, summary.imported) == (4, 3)
    assert dict(summary.rejected) == {"missing time": 1}
    signed, viewed, added = _events(engine, workspace)
    assert signed["messageId"] == "mixpanel-a1b2c3" and signed["event"] == "Signed Up"
    assert signed["userId"] == "user-7" and signed["anonymousId"] is None
    assert signed["timestamp"] == "2024-03-01T10:00:00.000Z"
    assert signed["properties"] == {"plan": "free"}
    assert signed["context"] == {
        "page": {"url": "https://shop.example/signup"},
        "os": {"name": "Mac OS X"},
        "location": {"city": "Paris", "country": "FR"},
    }
    assert viewed["anonymousId"] == "18e0a1" and viewed["userId"] is None
    assert viewed["timestamp"] == "2024-03-01T10:01:00.500Z"
    assert viewed["messageId"].startswith("mixpanel-") and len(viewed["messageId"]) < 100
    assert viewed["properties"]["product_id"] == "sku-3"
    assert (added["userId"], added["anonymousId"]) == ("user-7", "18e0a1")
    assert added["messageId"] == "mixpanel-z9"
    # the device's anonymous profile and the user's are one person now
    assert viewed["profileId"] == engine.profile(workspace.workspace, "user-7")["profileId"]


# -- mapping files -------------------------------------------------------------------------------

MAPPING_YAML = """
name: crm-orders
type: track
fields:
  event: action
  userId: customer
  anonymousId: cookie
  timestamp: when
  properties.order_id: order
  properties.total: amount
  properties.express: express
  traits.email: email
timestamp_format: "%d/%m/%Y %H:%M"
identify_by: [order, action]
types:
  properties.total: number
  properties.express: boolean
constants:
  properties.currency: EUR
  context.library.name: shop-export
rename:
  buy: Order Completed
"""


def test_a_mapping_file_maps_columns_to_fields(
    engine: Engine, workspace: CreatedWorkspace, tmp_path: Path
) -> None:
    mapping = tmp_path / "map.yaml"
    mapping.write_text(MAPPING_YAML)
    path = tmp_path / "orders.csv"
    path.write_text(
        "action;customer;cookie;when;order;amount;express;email\n"
        "buy;c-1;;31/01/2024 18:05;O-1;19,90;yes;Ann@Example.com\n"
        "wishlist;;ck-2;01/02/2024 09:00;O-2;5;no;\n"
        "buy;c-3;;2024-02-01;O-3;7;no;\n"  # not the declared date format
        "buy;c-4;;02/02/2024 10:00;O-4;lots;no;\n"  # not a number
    )
    summary = run_import(engine, workspace.workspace, path, "events", mapping=mapping)
    assert summary.imported == 2
    assert dict(summary.rejected) == {
        "invalid timestamp: does not match '%d/%m/%Y %H:%M'": 1,
        "invalid number: must be a number": 1,
    }
    assert [
        (r["line"], r["field"]) for r in _rejects(path.with_name("orders.csv.rejects.jsonl"))
    ] == [
        (4, "when"),
        (5, "amount"),
    ]
    order, wish = _events(engine, workspace)
    assert order["event"] == "Order Completed" and order["originalEvent"] == "buy"
    assert order["userId"] == "c-1" and order["anonymousId"] is None
    assert order["timestamp"] == "2024-01-31T18:05:00.000Z"
    assert order["properties"] == {
        "order_id": "O-1",
        "total": 19.9,
        "express": True,
        "currency": "EUR",
    }
    assert order["traits"]["email"].startswith("hmac-sha256:")  # the workspace hashes PII
    assert order["context"] == {"library": {"name": "shop-export"}}
    assert order["messageId"].startswith("crm-orders-")
    assert wish["event"] == "wishlist" and wish["anonymousId"] == "ck-2"
    assert wish["properties"]["express"] is False
    again = run_import(engine, workspace.workspace, path, "events", mapping=mapping)
    assert again.imported == 0 and again.duplicates == 2


def test_a_json_mapping_with_a_message_id_column_and_nested_sources(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    ws = sqlite_engine.create_workspace("shop")
    mapping = tmp_path / "map.json"
    mapping.write_bytes(
        orjson.dumps(
            {
                "fields": {
                    "event": "kind",
                    "userId": "who.id",
                    "timestamp": "at",
                    "properties.product_id": "item.sku",
                },
                "message_id": "uuid",
                "timestamp_format": "unix",
                "properties_from_rest": True,
            }
        )
    )
    path = tmp_path / "clicks.jsonl"
    path.write_bytes(
        b'{"uuid": "e1", "kind": "Product Clicked", "who": {"id": 5}, "at": 1700000000,'
        b' "item": {"sku": "s1"}, "ab": "B"}\n'
        b'{"kind": "Product Clicked", "who": {"id": 5}, "at": 1700000001}\n'
    )
    summary = run_import(sqlite_engine, ws.workspace, path, "events", mapping=mapping)
    assert summary.imported == 1 and dict(summary.rejected) == {"missing message id": 1}
    (event,) = _events(sqlite_engine, ws)
    assert event["messageId"] == "import-e1" and event["userId"] == "5"
    assert event["timestamp"] == "2023-11-14T22:13:20.000Z"
    assert event["properties"]["product_id"] == "s1" and event["properties"]["ab"] == "B"


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"fields": {"event": "a"}, "colums": {}}, "unknown key 'colums'"),
        ({"fields": {"event": "a", "properties": "b"}}, "fields.properties is not an event field"),
        ({"fields": {"event": "a", "userid": "b"}}, "fields.userid is not an event field"),
        ({"fields": {"userId": "u"}}, "fields.event is required"),
        ({"fields": {"event": "a"}, "type": "click"}, "type must be one of"),
        ({"fields": {"event": "a"}, "timestamp_format": "dd/mm/yyyy"}, "timestamp_format"),
        ({"fields": {"event": "a"}, "types": {"properties.x": "number"}}, "types.properties.x"),
        (
            {"fields": {"event": "a", "properties.x": "x"}, "types": {"properties.x": "money"}},
            "must be one of string, number",
        ),
        ({"fields": {"event": "a"}, "message_id": "id", "identify_by": ["a"]}, "alternatives"),
        ({"fields": {"event": "a"}, "rename": {"a": 1}}, "rename must be"),
        ({"preset": "ga4", "fields": {"event": "a"}}, "cannot be combined with a preset"),
        ([1, 2], "must be an object"),
    ],
)
def test_mapping_files_are_checked_with_clear_errors(
    tmp_path: Path, mapping: Any, message: str
) -> None:
    path = tmp_path / "map.json"
    path.write_bytes(orjson.dumps(mapping))
    with pytest.raises(MappingError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_mapping(path)


def test_bad_yaml_and_missing_files_are_refused_before_any_row(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    ws = sqlite_engine.create_workspace("shop")
    data = tmp_path / "d.csv"
    data.write_text("a\n1\n")
    bad = tmp_path / "map.yaml"
    bad.write_text("fields: [unclosed\n")
    with pytest.raises(MappingError, match="not valid YAML/JSON"):
        run_import(sqlite_engine, ws.workspace, data, "events", mapping=bad)
    with pytest.raises(MappingError, match="mapping file not found"):
        run_import(sqlite_engine, ws.workspace, data, "events", mapping=tmp_path / "none.yaml")
    with pytest.raises(MappingError, match="unknown preset 'amplitude'"):
        run_import(sqlite_engine, ws.workspace, data, "events", preset="amplitude")
    with pytest.raises(ImportConfigError, match="--mapping"):
        run_import(sqlite_engine, ws.workspace, data, "events")
    with pytest.raises(ImportConfigError, match="file not found"):
        run_import(sqlite_engine, ws.workspace, tmp_path / "nope.csv", "events", preset="segment")
    assert not _events(sqlite_engine, ws)


def test_a_preset_with_renames_and_constants(sqlite_engine: Engine, tmp_path: Path) -> None:
    ws = sqlite_engine.create_workspace("shop")
    path = tmp_path / "s.jsonl"
    path.write_bytes(orjson.dumps({"type": "track", "event": "signup", "userId": "u"}))
    mapping = {
        "preset": "segment",
        "rename": {"signup": "Signed Up"},
        "constants": {"context.source": "backfill"},
    }
    run_import(sqlite_engine, ws.workspace, path, "events", mapping=mapping)
    (event,) = _events(sqlite_engine, ws)
    assert event["event"] == "Signed Up" and event["context"] == {"source": "backfill"}


# -- reading files --------------------------------------------------------------------------------


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_csv_delimiters_are_sniffed(tmp_path: Path, delimiter: str) -> None:
    path = tmp_path / "d.csv"
    rows = [["id", "name", "note"], ["1", "a, b; c", "x|y"], ["2", "plain", ""]]
    text = "\n".join(
        delimiter.join(f'"{c}"' if any(d in c for d in ",;\t|") else c for c in r) for r in rows
    )
    path.write_text(text + "\n")
    assert list(open_rows(path)) == [
        (2, {"id": "1", "name": "a, b; c", "note": "x|y"}),
        (3, {"id": "2", "name": "plain", "note": ""}),
    ]


def test_formats_gzip_and_malformed_rows(tmp_path: Path) -> None:
    plain = tmp_path / "data.txt"
    plain.write_text('{"a": 1}\n')
    assert detect_format(plain) == "jsonl"  # from the content
    gz = tmp_path / "data.csv"  # gzipped although the name does not say so
    with gzip.open(gz, "wt") as fh:
        fh.write("a,b\n1,2\n3\n4,5,6\n")
    rows = list(open_rows(gz))
    assert rows[0] == (2, {"a": "1", "b": "2"})
    assert rows[1] == (3, {"a": "3", "b": ""})  # a short row is padded
    assert isinstance(rows[2][1], MalformedRow) and rows[2][1].reason == "too many fields"
    forced = list(open_rows(plain, "jsonl"))
    assert forced == [(1, {"a": 1})]
    with pytest.raises(ValueError, match="unknown format"):
        list(open_rows(plain, "xml"))


def test_unreadable_files_stop_with_a_clear_error(tmp_path: Path) -> None:
    from sartor.importers.source import SourceError

    latin = tmp_path / "latin.csv"
    latin.write_bytes("id,title\n1,ok\n2,Caf\xe9 cr\xe8me\n".encode("latin-1"))
    with pytest.raises(SourceError, match="not UTF-8 text"):
        list(open_rows(latin))
    truncated = tmp_path / "cut.jsonl.gz"
    packed = gzip.compress(
        b"".join(orjson.dumps({"a": i * 7919 % 10007}) + b"\n" for i in range(5000))
    )
    truncated.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(SourceError, match="cannot read past row"):
        list(open_rows(truncated))
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really")
    with pytest.raises(SourceError, match="not a readable Parquet file"):
        list(open_rows(broken))
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b'\xef\xbb\xbf{"a": 1}\n')
    assert list(open_rows(bom)) == [(1, {"a": 1})]


def test_gzipped_parquet_is_read_too(tmp_path: Path) -> None:
    raw = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pylist([{"a": i} for i in range(10)]), raw)
    gz = tmp_path / "t.parquet.gz"
    with raw.open("rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    assert [row["a"] for _, row in open_rows(gz)] == list(range(10))


def test_reading_streams_with_constant_memory(tmp_path: Path) -> None:
    """Rows are read one at a time (Parquet one record batch at a time): the peak allocation
    stays far below what the whole file takes as Python rows (about 20 MB here)."""
    n = 60_000
    path = tmp_path / "big.csv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("id,name,price\n")
        for i in range(n):
            fh.write(f"{i},product number {i} with a longer description,{i % 97}.99\n")
    parquet = tmp_path / "big.parquet"
    pq.write_table(
        pa.Table.from_pylist([{"id": i, "name": f"product {i}" * 5} for i in range(n)]),
        parquet,
        row_group_size=10_000,
    )
    for source, limit in ((path, 1_000_000), (parquet, 8_000_000)):
        tracemalloc.start()
        count = sum(1 for _ in open_rows(source))
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert count == n
        assert peak < limit, (source.name, peak)


# -- the products fast path is the slow path's answer ----------------------------------------

_text = st.text(min_size=0, max_size=8)
_product = st.dictionaries(
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
            "item_category2",
            "colour",
        ]
    ),
    st.one_of(st.none(), _text, st.integers(-5, 10**6), st.floats(allow_nan=True), st.booleans()),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_product, max_size=4))
def test_normalized_products_match_the_full_normalization(products: list[dict[str, Any]]) -> None:
    from sartor.collect.errors import FieldError

    expected: Any
    try:
        expected = [
            _normalize_product(p, f"properties.products[{i}]") for i, p in enumerate(products)
        ]
    except FieldError as exc:
        expected = (exc.field, exc.message)
    try:
        got: Any = normalize_properties("Order Completed", {"products": products}, "properties")[
            "products"
        ]
    except FieldError as exc:
        got = (exc.field, exc.message)
    assert repr(got) == repr(expected)


# -- the command ----------------------------------------------------------------------------------


def test_cli_import_events_prints_a_summary_and_json(tmp_path: Path) -> None:
    home = ["--home", str(tmp_path)]
    assert runner.invoke(app, [*home, "workspace", "create", "shop"]).exit_code == 0
    path = _retail_file(tmp_path)
    out = runner.invoke(
        app, [*home, "import", "events", str(path), "-w", "shop", "--preset", "online-retail"]
    )
    assert out.exit_code == 0, out.output
    assert "rows read" in out.output and "missing StockCode" in out.output
    assert "retail.csv.rejects.jsonl" in out.output
    rejects = tmp_path / "elsewhere.jsonl"
    again = runner.invoke(
        app,
        [
            *home,
            "import",
            "events",
            str(path),
            "--workspace",
            "shop",
            "--preset",
            "online-retail",
            "--json",
            "--rejects",
            str(rejects),
        ],
    )
    assert again.exit_code == 0, again.output
    doc = orjson.loads(again.output)
    assert (doc["read"], doc["imported"], doc["duplicates"], doc["rejected"]) == (11, 0, 7, 3)
    assert doc["rejects_file"] == str(rejects) and rejects.exists()
    with Engine.open(settings=Settings(home=tmp_path)) as engine:
        # the profiles were folded at the end of the first run
        profile = engine.profile("shop", "17850")
        assert profile["computed"]["orders"] == 1
    bad = runner.invoke(app, [*home, "import", "events", str(path), "-w", "shop"])
    assert bad.exit_code == 2 and "--mapping" in bad.output
    missing = runner.invoke(
        app, [*home, "import", "events", str(path), "-w", "nope", "--preset", "segment"]
    )
    assert missing.exit_code == 1


# -- the whole Online Retail file ------------------------------------------------------------------

# 25,900 invoices (3,836 of them cancellations) and 4,372 customers: one order event per
# invoice, one identify per customer.
RETAIL_ORDERS = 25_900 - 3_836
RETAIL_REFUNDS = 3_836
RETAIL_CUSTOMERS = 4_372
RETAIL_EVENTS = RETAIL_ORDERS + RETAIL_REFUNDS + RETAIL_CUSTOMERS  # 30,272


@pytest.mark.slow
def test_importing_full_online_retail_twice_stores_each_invoice_once(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    path = shared_data("online-retail") / "online_retail_2010-12-01_2011-12-09.csv.gz"
    ws = sqlite_engine.create_workspace("retail", consent_mode="opt_out")
    rejects = tmp_path / "rejects.jsonl"
    first = run_import(
        sqlite_engine, ws.workspace, path, "events", preset="online-retail", rejects_path=rejects
    )
    assert first.read == 541_909 and first.rejected_total == 0
    assert first.imported == RETAIL_EVENTS == 30_272
    second = run_import(
        sqlite_engine, ws.workspace, path, "events", preset="online-retail", rejects_path=rejects
    )
    assert second.imported == 0 and second.duplicates == RETAIL_EVENTS
    t = events_table
    with sqlite_engine.db.connect() as conn:
        counts = dict(
            conn.execute(
                select(t.c.event, func.count())
                .where(t.c.workspace_id == ws.workspace.id)
                .group_by(t.c.event)
            ).all()
        )
        guests = conn.execute(
            select(func.count()).where(t.c.workspace_id == ws.workspace.id, t.c.user_id.is_(None))
        ).scalar_one()
    assert counts == {
        "Order Completed": RETAIL_ORDERS,
        "Order Refunded": RETAIL_REFUNDS,
        None: RETAIL_CUSTOMERS,  # identify
    }
    assert guests == 25_900 - 22_190  # invoices without a CustomerID
    assert not rejects.exists()
