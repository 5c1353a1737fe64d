"""`sartor demo --no-serve` in a fresh SARTOR_HOME: the newcomer's first command leaves
profiles, RFM groups, clusters, trained models, recommendations and an experiment for a
real customer of the bundled Online Retail slice."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sartor.cli import app
from sartor.config import Settings
from sartor.demo import AA_KEY, DEMO_WORKSPACE, SAMPLE
from sartor.engine import Engine

# The customer with the most orders in examples/online-retail-sample.csv.gz.
KNOWN_CUSTOMER = "12748"


def customers_with_an_order() -> set[str]:
    with gzip.open(SAMPLE, "rt", newline="") as fh:
        return {
            row["CustomerID"].removesuffix(".0")
            for row in csv.DictReader(fh)
            if row["CustomerID"] and not row["InvoiceNo"].startswith("C")
        }


@pytest.mark.slow
def test_demo_builds_everything_for_a_known_customer(tmp_path: Path) -> None:
    home = tmp_path / "home"
    result = CliRunner().invoke(app, ["--home", str(home), "demo", "--no-serve"])
    assert result.exit_code == 0, result.output
    assert f"customer {KNOWN_CUSTOMER}" in result.output
    assert f"/v1/recommendations?user={KNOWN_CUSTOMER}&slot=home" in result.output

    settings = Settings(env="test", home=home, log_json=False)
    with Engine.open(f"sqlite:///{home / 'sartor.db'}", settings=settings) as engine:
        ws = engine.workspace(DEMO_WORKSPACE)
        profile = engine.profile(ws, KNOWN_CUSTOMER)
        assert profile["computed"]["orders"] > 100
        segments = set(profile["segments"])
        assert any(s.startswith("rfm:") for s in segments), segments
        assert any(s.startswith("cluster:") for s in segments), segments
        rfm_groups = [s for s in engine.segments.all(ws.id) if s["key"].startswith("rfm:")]
        # Every identified customer with an order (a few only ever cancelled).
        assert sum(s["size"] for s in rfm_groups) == len(customers_with_an_order())
        slots = {v["slot"] for v in engine.models.versions(ws.id) if v["status"] == "active"}
        assert {"als", "itemknn", "popularity", "content", "fbt"} <= slots
        recs = engine.recs.recommend(ws, user=KNOWN_CUSTOMER, slot="home", k=10)
        assert recs["personalized"] and len(recs["items"]) == 10
        assert all(item["reason"] for item in recs["items"])
        refunds = [
            e for e in engine.events(ws, limit=1000) if e.get("event") == "Order Refunded"
        ]
        assert refunds and all(e["properties"]["total"] <= 0 for e in refunds)
        results = engine.experiments.results(ws, AA_KEY)
        assert results["users"] > 200 and results["srm"]["pValue"] > 0.001

    # Running it again reuses the workspace and stores nothing twice.
    again = CliRunner().invoke(app, ["--home", str(home), "demo", "--no-serve"])
    assert again.exit_code == 0, again.output
    assert "0 events stored, 2527 already there" in again.output
