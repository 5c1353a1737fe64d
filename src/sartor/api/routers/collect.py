"""The Segment HTTP Tracking API: ``/v1/track|identify|page|screen|group|alias|batch``."""

from __future__ import annotations

import logging
import zlib
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from sqlalchemy.exc import SQLAlchemyError

from sartor.api.deps import EngineDep, authorize, key_from_header
from sartor.api.errors import ApiError, json_response
from sartor.collect.prepare import MAX_BATCH_BYTES, MAX_EVENT_BYTES
from sartor.engine import Engine, IngestResult
from sartor.workspace import Workspace

log = logging.getLogger("sartor.api")

router = APIRouter(prefix="/v1", tags=["collect"])

_WRITE_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "Invalid JSON or schema; `errors[].field` names the field."},
    401: {"description": "Missing or unknown write key."},
    403: {"description": "A read or admin key was used to write."},
    413: {"description": "Over 32 KB per event, 500 KB per batch or 2,500 events."},
    429: {"description": "Over the workspace's event rate; see `Retry-After`."},
    503: {"description": "The event store is unavailable; nothing was stored, retry."},
}


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes (also after gunzip)."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise _body_error(413, "too_large", f"is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _body_error(413, "too_large", f"is larger than {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding in ("gzip", "deflate"):
        try:
            inflater = zlib.decompressobj(wbits=47 if encoding == "gzip" else 15)
            body = inflater.decompress(body, limit + 1)
        except zlib.error:
            raise _body_error(400, "invalid_payload", f"is not valid {encoding}") from None
        if len(body) > limit or inflater.unconsumed_tail:
            raise _body_error(413, "too_large", f"is larger than {limit} bytes uncompressed")
    elif encoding not in ("", "identity"):
        raise _body_error(
            400,
            "invalid_payload",
            f"is not supported: {encoding!r}",
            field="header.content-encoding",
        )
    return body


def _body_error(status: int, code: str, message: str, field: str = "body") -> ApiError:
    """A refusal of the request body as a whole, naming ``field`` like every 400/413."""
    return ApiError(status, code, f"{field}: {message}", [{"field": field, "message": message}])


def parse_json(body: bytes) -> Any:
    if not body.strip():
        raise ApiError(
            400, "invalid_json", "body is empty", [{"field": "body", "message": "is empty"}]
        )
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(
            400,
            "invalid_json",
            f"body is not valid JSON: {exc}",
            [{"field": "body", "message": f"is not valid JSON: {exc}"}],
        ) from None


def _write_key(request: Request, body: Any) -> str | None:
    key = key_from_header(request)
    if key is None and isinstance(body, dict) and isinstance(body.get("writeKey"), str):
        key = body["writeKey"]
    return key


def _answer(result: IngestResult, single: bool) -> Response:
    if single:
        item = result.items[0]
        if item["status"] == "error":
            status = 413 if "larger than" in item.get("message", "") else 400
            return json_response(
                {
                    "success": False,
                    "error": "too_large" if status == 413 else "invalid_payload",
                    "message": f"{item['field']}: {item['message']}",
                    "errors": [{"field": item["field"], "message": item["message"]}],
                },
                status,
            )
        return json_response({"success": True, **{k: v for k, v in item.items() if k != "index"}})
    if result.errors and result.ok == 0:
        status = 413 if all("larger than" in e["message"] for e in result.errors) else 400
        body = result.as_dict()
        body["error"] = "too_large" if status == 413 else "invalid_payload"
        body["message"] = f"no valid event in the batch ({len(result.errors)} errors)"
        return json_response(body, status)
    return json_response(result.as_dict())


async def _store(
    engine: Engine, workspace: Workspace, items: list[Any], **kwargs: Any
) -> IngestResult:
    try:
        return await engine.ingest_async(workspace, items, **kwargs)
    except SQLAlchemyError as exc:
        # Nothing was committed, so nothing is acknowledged: the client retries.
        log.error("event store unavailable", exc_info=exc)
        raise ApiError(503, "unavailable", "the event store is unavailable; retry") from exc


async def _ingest_one(request: Request, engine: EngineDep, msg_type: str) -> Response:
    key = key_from_header(request)
    if key is not None:
        authorize(engine, key, "write")
    body = parse_json(await read_body(request, MAX_EVENT_BYTES))
    workspace = authorize(engine, _write_key(request, body), "write")
    result = await _store(engine, workspace, [body], implied_type=msg_type)
    return _answer(result, single=True)


def _body_schema(name: str) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}},
        }
    }


def _single(msg_type: str) -> None:
    async def handler(request: Request, engine: EngineDep) -> Response:
        return await _ingest_one(request, engine, msg_type)

    handler.__name__ = f"{msg_type}_event"
    router.add_api_route(
        f"/{msg_type}",
        handler,
        methods=["POST"],
        summary=f"Record a {msg_type} call (Segment spec)",
        responses=_WRITE_RESPONSES,
        openapi_extra=_body_schema("Message"),
    )


for _type in ("track", "identify", "page", "screen", "group", "alias"):
    _single(_type)


@router.post(
    "/batch",
    summary="Record up to 2,500 calls at once (Segment spec)",
    responses=_WRITE_RESPONSES,
    openapi_extra=_body_schema("Batch"),
)
async def batch(request: Request, engine: EngineDep) -> Response:
    """Each item is validated on its own: bad items are reported by index in `errors` and
    `items`, good items are stored. 200 when any item was accepted."""
    key = key_from_header(request)
    if key is not None:
        authorize(engine, key, "write")
    body = parse_json(await read_body(request, MAX_BATCH_BYTES))
    workspace = authorize(engine, _write_key(request, body), "write")
    items, kwargs = engine.batch_args(body)
    result = await _store(engine, workspace, items, **kwargs)
    return _answer(result, single=False)
