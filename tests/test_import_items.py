"""``sartor import items``: catalog items from CSV, JSONL or Parquet, with rejects."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from sartor.cli import app
from sartor.config import Settings
from sartor.engine import CreatedWorkspace, Engine
from sartor.importers import ImportConfigError, run_import
from sartor.importers.items import load_item_mapping
from sartor.importers.mapping import MappingError

runner = CliRunner()


def _rejects(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_default_columns_become_item_fields_and_the_rest_attributes(
    engine: Engine, workspace: CreatedWorkspace, tmp_path: Path
) -> None:
    path = tmp_path / "catalog.csv"
    path.write_text(
        "id,title,description,category,brand,price,currency,in_stock,tags,created_at,colour\n"
        'sku-1, Trail shoe ,Light and grippy,Shoes/Trail,Acme,89.90,eur,yes,"run, trail",'
        "2024-01-05T10:00:00Z,red\n"
        "sku-2,Socks,,Accessories > Socks,,4.5,EUR,0,,,\n"
        "sku-3,Cap,,,,cheap,EUR,,,,\n"  # price is not a number
        ",No id,,,,1,EUR,,,,\n"  # no id
        "sku-4,Bag,,,,10,EURO,,,,\n"  # not an ISO 4217 code
        "sku-5,Belt,,,,12,EUR,,,,,extra\n"  # one field too many
    )
    summary = run_import(engine, workspace.workspace, path, "items")
    assert (summary.read, summary.imported, summary.rejected_total) == (6, 2, 4)
    assert dict(summary.rejected) == {
        "price: Input should be a valid number, unable to parse string as a number": 1,
        "id: Field required": 1,
        "currency: must be a 3-letter ISO 4217 code such as ...": 1,
        "too many fields": 1,
    }
    rejects = sorted(_rejects(tmp_path / "catalog.csv.rejects.jsonl"), key=lambda r: r["line"])
    assert [(r["line"], r["field"]) for r in rejects] == [
        (4, "price"),
        (5, "id"),
        (6, "currency"),
        (7, None),
    ]
    ws_id = workspace.workspace.id
    shoe = engine.catalog.get(ws_id, "sku-1")
    assert shoe is not None
    assert shoe["title"] == "Trail shoe" and shoe["description"] == "Light and grippy"
    assert shoe["category"] == "Shoes > Trail" and shoe["brand"] == "Acme"
    assert shoe["price"] == 89.9 and shoe["currency"] == "EUR" and shoe["inStock"] is True
    assert shoe["tags"] == ["run", "trail"] and shoe["attributes"] == {"colour": "red"}
    assert shoe["createdAt"] == "2024-01-05T10:00:00.000Z"
    socks = engine.catalog.get(ws_id, "sku-2")
    assert socks is not None and socks["inStock"] is False
    assert socks["category"] == "Accessories > Socks" and socks["attributes"] == {}
    assert engine.catalog.get(ws_id, "sku-3") is None


def test_a_mapping_file_and_jsonl(sqlite_engine: Engine, tmp_path: Path) -> None:
    ws = sqlite_engine.create_workspace("shop").workspace
    mapping = tmp_path / "items.yaml"
    mapping.write_text(
        "fields:\n"
        "  id: sku\n"
        "  title: name\n"
        "  price: pricing.amount\n"
        "  attributes.material: specs.material\n"
        "constants:\n"
        "  currency: GBP\n"
        "attributes_from_rest: false\n"
    )
    path = tmp_path / "feed.jsonl"
    path.write_bytes(
        b'{"sku": "A1", "name": "Mug", "pricing": {"amount": 7.5}, "specs": {"material": "clay"},'
        b' "internal": "x"}\n'
        b'{"sku": 42, "name": "Plate"}\n'
        b"{oops\n"
    )
    summary = run_import(sqlite_engine, ws, path, "items", mapping=mapping)
    assert summary.imported == 2 and dict(summary.rejected) == {"malformed JSON": 1}
    mug = sqlite_engine.catalog.get(ws.id, "A1")
    assert mug is not None
    assert (mug["title"], mug["price"], mug["currency"]) == ("Mug", 7.5, "GBP")
    assert mug["attributes"] == {"material": "clay"}  # `internal` is not kept
    plate = sqlite_engine.catalog.get(ws.id, "42")
    assert plate is not None and plate["title"] == "Plate"


def test_parquet_in_batches_and_reimports_change_nothing(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    ws = sqlite_engine.create_workspace("shop").workspace
    rows = [
        {"id": f"p{i}", "title": f"Product {i}", "price": float(i % 50), "in_stock": i % 3 != 0}
        for i in range(2_500)
    ]
    path = tmp_path / "items.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    first = run_import(sqlite_engine, ws, path, "items")
    assert (first.read, first.imported, first.rejected_total) == (2_500, 2_500, 0)
    assert sqlite_engine.catalog.count(ws.id) == 2_500
    again = run_import(sqlite_engine, ws, path, "items")
    assert again.imported == 2_500 and sqlite_engine.catalog.count(ws.id) == 2_500
    item = sqlite_engine.catalog.get(ws.id, "p3")
    assert item is not None and item["inStock"] is False and item["price"] == 3.0


def test_an_empty_cell_keeps_the_stored_value(sqlite_engine: Engine, tmp_path: Path) -> None:
    ws = sqlite_engine.create_workspace("shop").workspace
    first = tmp_path / "a.csv"
    first.write_text("id,title,price\nk1,Kettle,30\n")
    second = tmp_path / "b.csv.gz"
    with gzip.open(second, "wt") as fh:
        fh.write("id,title,price\nk1,,25\n")
    run_import(sqlite_engine, ws, first, "items")
    run_import(sqlite_engine, ws, second, "items")
    item = sqlite_engine.catalog.get(ws.id, "k1")
    assert item is not None and (item["title"], item["price"]) == ("Kettle", 25.0)


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"fields": {"title": "name"}}, "fields.id is required"),
        ({"fields": {"id": "sku", "colour": "c"}}, "fields.colour is not an item field"),
        ({"fields": {"id": "sku"}, "type": "x"}, "unknown key 'type'"),
        ({"fields": {"id": "sku"}, "constants": {"stock": 1}}, "constants.stock"),
        ({"fields": {"id": ""}}, "must name a source column"),
    ],
)
def test_item_mappings_are_checked(mapping: dict[str, Any], message: str) -> None:
    with pytest.raises(MappingError, match=message):
        load_item_mapping(mapping)


def test_items_have_no_presets(sqlite_engine: Engine, tmp_path: Path) -> None:
    ws = sqlite_engine.create_workspace("shop").workspace
    path = tmp_path / "a.csv"
    path.write_text("id\n1\n")
    with pytest.raises(ImportConfigError, match="no presets"):
        run_import(sqlite_engine, ws, path, "items", preset="ga4")


def test_cli_import_items(tmp_path: Path) -> None:
    home = ["--home", str(tmp_path)]
    assert runner.invoke(app, [*home, "workspace", "create", "shop"]).exit_code == 0
    path = tmp_path / "items.csv"
    path.write_text("sku;name;price\nz1;Zip;3\nz2;Zap;x\n")
    out = runner.invoke(app, [*home, "import", "items", str(path), "-w", "shop", "--json"])
    assert out.exit_code == 0, out.output
    doc = orjson.loads(out.output)
    assert (doc["read"], doc["imported"], doc["rejected"]) == (2, 1, 1)
    with Engine.open(settings=Settings(home=tmp_path)) as engine:
        item = engine.catalog.get(engine.workspace("shop").id, "z1")
        assert item is not None and item["title"] == "Zip"
