"""Health and metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from sartor.api.deps import EngineDep
from sartor.api.errors import json_response

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness and database reachability")
def healthz(engine: EngineDep) -> Response:
    try:
        with engine.db.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        return json_response({"status": "unavailable", "database": str(exc)[:200]}, 503)
    return json_response({"status": "ok", "database": engine.db.dialect.name})


@router.get("/metrics", summary="Prometheus metrics")
def prometheus_metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
