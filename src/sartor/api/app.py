"""The FastAPI application factory. Handlers translate HTTP to :class:`sartor.Engine` calls."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sartor import __version__, metrics
from sartor.api import errors
from sartor.api.routers import (
    collect,
    events,
    experiments,
    imports,
    items,
    ops,
    profiles,
    recommendations,
    segments,
    users,
    workspace,
)
from sartor.collect.messages import Batch
from sartor.config import Settings, get_settings
from sartor.engine import Engine

log = logging.getLogger("sartor.http")


class MetricsMiddleware:
    """Request latency by route template, and an optional JSON access log."""

    def __init__(self, app: ASGIApp, access_log: bool) -> None:
        self.app = app
        self.access_log = access_log
        self._children: dict[tuple[str, str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            key = (scope["method"], template, status)
            # The labelled child, looked up once: labels() takes a lock and builds a key.
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = metrics.HTTP_LATENCY.labels(
                    scope["method"], template, str(status)
                )
            child.observe(elapsed)
            if self.access_log:
                log.info(
                    "request",
                    extra={
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status,
                        "ms": round(elapsed * 1000, 2),
                    },
                )


def create_app(engine: Engine | None = None, settings: Settings | None = None) -> FastAPI:
    """The app; it opens (and closes) its own engine unless one is given."""
    settings = settings or (engine.settings if engine else get_settings())
    owns_engine = engine is None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if app.state.engine is None:
            app.state.engine = Engine.open(settings=settings).start()
        try:
            yield
        finally:
            if owns_engine and app.state.engine is not None:
                app.state.engine.close()
                app.state.engine = None

    app = FastAPI(
        title="Sartor",
        version=__version__,
        description="Self-hosted personalization engine. Ingestion speaks the Segment HTTP "
        "Tracking API: point any Segment or RudderStack client at this host.",
        lifespan=lifespan,
    )
    app.state.engine = engine
    errors.install(app)
    # First: the busiest read path, and routes are matched in order.
    app.include_router(recommendations.router)
    for module in (collect, events, experiments, items, profiles, segments, users, workspace, ops):
        app.include_router(module.router)
    app.include_router(imports.router)
    app.include_router(segments.rfm_router)
    app.include_router(segments.clusters_router)
    # Inside the metrics: GET /v1/recommendations answered without the router's layers.
    app.add_middleware(recommendations.FastPath)
    app.add_middleware(MetricsMiddleware, access_log=settings.access_log)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {})
        batch_schema = Batch.model_json_schema(ref_template="#/components/schemas/{model}")
        components.setdefault("schemas", {}).update(batch_schema.pop("$defs", {}))
        components["schemas"]["Batch"] = batch_schema
        components["securitySchemes"] = {
            "writeKey": {
                "type": "http",
                "scheme": "basic",
                "description": "Write key as user name",
            },
            "apiKey": {"type": "http", "scheme": "bearer", "description": "Read or admin key"},
        }
        schema["security"] = [{"writeKey": []}, {"apiKey": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
