"""The catalog: ``/v1/items`` bulk upserts and deletes (admin key), reads (read key)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from sartor.api.deps import AdminWorkspace, EngineDep, ReadWorkspace, check_id
from sartor.api.errors import ApiError, json_response
from sartor.api.routers.collect import parse_json, read_body
from sartor.collect.messages import find_nul
from sartor.recommend.catalog import MAX_ITEMS_PER_CALL, category_path

router = APIRouter(prefix="/v1/items", tags=["items"])

# 1,000 items with long descriptions; the field limits bound each item anyway.
MAX_ITEMS_BODY_BYTES = 16 * 1024 * 1024


def _not_found(item_id: str) -> ApiError:
    return ApiError(404, "not_found", f"no item {item_id!r} in this workspace")


def _bad_query(field: str, message: str) -> ApiError:
    return ApiError(
        400, "invalid_request", f"{field}: {message}", [{"field": field, "message": message}]
    )


@router.post(
    "",
    summary=f"Create or update up to {MAX_ITEMS_PER_CALL:,} items",
    responses={
        400: {"description": "No valid item; `errors[].field` names each bad field."},
        413: {"description": f"Over {MAX_ITEMS_PER_CALL:,} items or 16 MB."},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {"items": {"type": "array", "items": {"type": "object"}}},
                    }
                }
            },
        }
    },
)
async def upsert_items(request: Request, workspace: AdminWorkspace, engine: EngineDep) -> Response:
    """Body: `{"items": [...]}` or a bare array. Each item has `id` (required), `title`,
    `description`, `category` ("A > B > C", "A/B/C" or a list), `brand`, `price`,
    `currency` (ISO 4217), `inStock`, `tags`, `attributes` (free JSON object) and
    `createdAt`. Fields sent are set, fields left out keep their value (`null` clears).
    Bad items are reported by index (`items[3].price`); the good ones are stored."""
    body = parse_json(await read_body(request, MAX_ITEMS_BODY_BYTES))
    items: Any = body.get("items") if isinstance(body, dict) else body
    if not isinstance(items, list):
        raise ApiError(
            400,
            "invalid_payload",
            "items: is required and must be an array",
            [{"field": "items", "message": "is required and must be an array"}],
        )
    try:
        result = await run_in_threadpool(engine.catalog.upsert, workspace.id, items)
    except SQLAlchemyError as exc:  # nothing was committed: the client retries
        raise ApiError(503, "unavailable", "the catalog is unavailable; retry") from exc
    doc = result.as_dict()
    if result.errors and result.stored == 0:
        doc["error"] = "invalid_payload"
        doc["message"] = f"no valid item ({len(result.errors)} errors)"
        return json_response(doc, 400)
    return json_response(doc)


@router.get("", summary="Items, paged by cursor, filtered by category and stock")
def list_items(
    workspace: ReadWorkspace,
    engine: EngineDep,
    cursor: Annotated[str | None, Query(description="`next` of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    category: Annotated[
        str | None, Query(description="A category and everything under it, e.g. `Home`")
    ] = None,
    in_stock: Annotated[bool | None, Query(alias="inStock")] = None,
) -> Response:
    for name, value in (("cursor", cursor), ("category", category)):
        if value is not None and (len(value) > 1000 or find_nul(value, name)):
            raise _bad_query(f"query.{name}", "too long or contains NUL")
    if category is not None:
        try:
            category_path(category)
        except ValueError as exc:
            raise _bad_query("query.category", str(exc)) from None
    page, nxt = engine.catalog.list(
        workspace.id, cursor=cursor, limit=limit, category=category, in_stock=in_stock
    )
    return json_response({"items": page, "next": nxt})


@router.get("/{item_id}", summary="One item")
def get_item(item_id: str, workspace: ReadWorkspace, engine: EngineDep) -> Response:
    check_id(item_id, "path.item_id")
    doc = engine.catalog.get(workspace.id, item_id)
    if doc is None:
        raise _not_found(item_id)
    return json_response(doc)


@router.delete("/{item_id}", summary="Delete an item")
def delete_item(item_id: str, workspace: AdminWorkspace, engine: EngineDep) -> Response:
    """Product events that mention the item later create it again (from their fields)."""
    check_id(item_id, "path.item_id")
    if not engine.catalog.delete(workspace.id, item_id):
        raise _not_found(item_id)
    return json_response({"success": True, "id": item_id})
