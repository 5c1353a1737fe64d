"""Recommendations: ``GET /v1/recommendations`` (a list for a person, an item or a cart) and
``GET /v1/recommendations/report`` (click-through and conversion per slot and model), with a
read or admin key."""

from __future__ import annotations

import math
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import QueryParams
from starlette.types import ASGIApp, Receive, Scope, Send

from sartor.api.deps import (
    EngineDep,
    ReadWorkspace,
    authorize,
    check_id,
    key_from_authorization,
)
from sartor.api.errors import ApiError, api_error_response, json_response
from sartor.collect.errors import FieldError
from sartor.collect.messages import parse_timestamp
from sartor.engine import Engine
from sartor.recommend.filters import Boost, Filters
from sartor.recommend.serving import MAX_K, UnknownItem, UnknownSlot

PATH = "/v1/recommendations"
router = APIRouter(prefix=PATH, tags=["recommendations"])

MAX_LIST = 200  # ids in `exclude`, categories, boosts


def _bad(field: str, message: str, code: str = "invalid_request") -> ApiError:
    return ApiError(400, code, f"{field}: {message}", [{"field": field, "message": message}])


def _values(raw: list[str] | None, field: str, *, split: bool) -> tuple[str, ...]:
    """Repeated query parameters; ``split`` also takes comma-separated lists (item ids)."""
    out: list[str] = []
    for value in raw or []:
        parts = value.split(",") if split else [value]
        out.extend(p.strip() for p in parts if p.strip())
    if len(out) > MAX_LIST:
        raise _bad(field, f"at most {MAX_LIST} values")
    for i, value in enumerate(out):
        if len(value) > 1000 or "\x00" in value:
            raise _bad(f"{field}[{i}]", "must be at most 1000 characters without NUL")
    return tuple(dict.fromkeys(out))


def _query_param(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


_TEXT = {"type": "string", "maxLength": 255}
_LIST = {"type": "array", "items": {"type": "string"}, "maxItems": MAX_LIST}
PARAMETERS = [
    _query_param("user", "userId, anonymousId, email or profile id", _TEXT),
    _query_param(
        "anonymousId", "The visitor's anonymous session: its items when `user` has none", _TEXT
    ),
    _query_param("item", "For similar items (slot product) or the cart", _TEXT),
    _query_param(
        "slot", "home, product, cart, email or your own", {"type": "string", "default": "home"}
    ),
    _query_param(
        "k", "How many items", {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": 10}
    ),
    _query_param("exclude", "Item ids to leave out (repeat or comma-separate)", _LIST),
    _query_param("category", "Keep only items under these category paths", _LIST),
    _query_param("excludeCategory", "Leave out items under these category paths", _LIST),
    _query_param("minPrice", "Lowest price", {"type": "number", "minimum": 0}),
    _query_param("maxPrice", "Highest price", {"type": "number", "minimum": 0}),
    _query_param(
        "boost", "field:value:factor, e.g. brand:Acme:1.5 or attributes.color:red:2", _LIST
    ),
]


def _text(query: QueryParams, name: str) -> str | None:
    value = query.get(name)
    return None if value is None else check_id(value, name)


def _int(query: QueryParams, name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _bad(name, "must be an integer") from None
    if not low <= value <= high:
        raise _bad(name, f"must be from {low} to {high}")
    return value


def _price(query: QueryParams, name: str) -> float | None:
    raw = query.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise _bad(name, "must be a number") from None
    if not math.isfinite(value) or value < 0:
        raise _bad(name, "must be a finite number, 0 or more")
    return value


@router.get(
    "",
    summary="Recommendations for a person, an item or a cart",
    responses={
        400: {"description": "Unknown slot (the message lists the known ones) or bad filter."},
        404: {"description": "`item` is in neither the catalog nor any trained model."},
    },
    openapi_extra={"parameters": PARAMETERS},
)
async def recommend(request: Request, engine: EngineDep) -> Response:
    """The response: `recommendationId` (send it back as `recommendation_id` in the
    properties of the `Product Clicked`, `Product Added` or `Order Completed` it leads to),
    `slot`, `strategy` (personal, session, similar, cart, segment, category, trending,
    popularity), `personalized` (false with a `reason`: no_consent, holdout, no_history),
    `models` (the versions used), `experiment` when one runs on the slot, and `items`, each
    with `id`, `score`, `reason` and its catalog fields."""
    # Served by :class:`FastPath` in the app; this route documents it (OpenAPI) and answers
    # wherever the middleware is not installed.
    return await answer(engine, request.headers.get("authorization"), request.query_params)


async def answer(engine: Engine, authorization: str | None, query: QueryParams) -> Response:
    """``GET /v1/recommendations``: the key checked here, not by a (synchronous) dependency
    whose thread hop costs about what the lookups of a list cost, and the query read
    directly (documented above for OpenAPI), not field by field by FastAPI."""
    workspace = authorize(engine, key_from_authorization(authorization), "read")
    user, anonymous_id, item = (_text(query, n) for n in ("user", "anonymousId", "item"))
    slot = query.get("slot") or "home"
    k = _int(query, "k", 10, 1, MAX_K)
    boosts = []
    for i, text in enumerate(_values(query.getlist("boost"), "boost", split=False)):
        try:
            boosts.append(Boost.parse(text))
        except ValueError as exc:
            raise _bad(f"boost[{i}]", str(exc)) from None
    filters = Filters(
        exclude=_values(query.getlist("exclude"), "exclude", split=True),
        categories=_values(query.getlist("category"), "category", split=False),
        exclude_categories=_values(
            query.getlist("excludeCategory"), "excludeCategory", split=False
        ),
        min_price=_price(query, "minPrice"),
        max_price=_price(query, "maxPrice"),
        boosts=tuple(boosts),
    )
    call = partial(
        engine.recs.recommend,
        workspace,
        user=user,
        anonymous_id=anonymous_id,
        item=item,
        slot=slot,
        k=k,
        filters=filters,
    )
    try:
        # On SQLite a list is a millisecond of work with reads that take microseconds:
        # computed right here. A database across the network would hold the event loop
        # for its round trips, so then it goes to the thread pool.
        result = call() if engine.recs.lookups.sqlite else await run_in_threadpool(call)
    except UnknownSlot as exc:
        raise _bad("slot", str(exc), "unknown_slot") from None
    except UnknownItem as exc:
        raise ApiError(
            404, "not_found", str(exc), [{"field": "item", "message": str(exc)}]
        ) from None
    except FieldError as exc:
        raise _bad(exc.field, exc.message) from None
    return json_response(result)


class FastPath:
    """ASGI middleware that answers ``GET /v1/recommendations`` itself, the busiest read.

    Through FastAPI a request also passes its exception middleware, the router, the
    route's request wrapper and dependency solving: about 0.1 ms of CPU per request
    (measured), close to what answering from the list cache costs. Here the handler runs
    straight from the scope, with the same code (:func:`answer`), the same error responses,
    and ``scope["route"]`` set to the documented route so the request metrics keep their
    route label. Install it inside the metrics middleware; anything else passes through.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._route = next(r for r in router.routes if getattr(r, "path", None) == PATH)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        application = scope["app"]
        scope["route"] = self._route
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
                break
        try:
            response = await answer(
                application.state.engine, authorization, QueryParams(scope["query_string"])
            )
        except ApiError as exc:
            response = api_error_response(exc)
        await response(scope, receive, send)


@router.get("/report", summary="Click-through and conversion per slot and model versions")
def report(
    workspace: ReadWorkspace,
    engine: EngineDep,
    slot: Annotated[str | None, Query()] = None,
    since: Annotated[str | None, Query(description="ISO 8601 time or epoch milliseconds")] = None,
) -> Response:
    """Per slot, and per set of model versions within it: lists served, clicks and CTR
    (lists with a `Product Clicked`/`Product Viewed` carrying their id), cart adds, orders
    and conversion rate (lists with an attributed `Order Completed`), and revenue."""
    if slot is not None:
        check_id(slot, "slot")
    start: int | None = None
    if since is not None:
        try:
            start = parse_timestamp(int(since) if since.strip().isdigit() else since)
        except (ValueError, TypeError):
            raise _bad("since", "must be an ISO 8601 time or epoch milliseconds") from None
    return json_response(engine.recs.report(workspace, slot, start))
