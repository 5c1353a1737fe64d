"""Every error the API returns has one JSON shape:
``{"success": false, "error": code, "message": ..., "errors": [{"field", "message"}]}``."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from sartor.collect.errors import FieldError, PayloadError, RateLimited


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors or []
        self.headers = headers


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


def _error_body(code: str, message: str, errors: list[dict[str, Any]]) -> dict[str, Any]:
    return {"success": False, "error": code, "message": message, "errors": errors}


def api_error_response(exc: ApiError) -> Response:
    """The response for an :class:`ApiError` (also for handlers that answer outside the
    exception handlers, such as the recommendations fast path)."""
    return json_response(_error_body(exc.code, exc.message, exc.errors), exc.status, exc.headers)


def from_payload_error(exc: PayloadError) -> ApiError:
    return ApiError(
        exc.status,
        exc.code,
        "; ".join(str(e) for e in exc.errors),
        [e.as_dict() for e in exc.errors],
    )


def from_field_error(exc: FieldError) -> ApiError:
    code = "too_large" if exc.status == 413 else "invalid_payload"
    return ApiError(exc.status, code, str(exc), [exc.as_dict()])


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> Response:
        return api_error_response(exc)

    @app.exception_handler(PayloadError)
    async def _payload_error(_: Request, exc: PayloadError) -> Response:
        err = from_payload_error(exc)
        return json_response(_error_body(err.code, err.message, err.errors), err.status)

    @app.exception_handler(RateLimited)
    async def _rate_limited(_: Request, exc: RateLimited) -> Response:
        # A near-zero workspace rate gives an absurd (even infinite) wait: cap it at a day.
        retry = max(1, int(min(exc.retry_after, 86_400.0) + 0.999))
        return json_response(
            _error_body("rate_limited", f"over the workspace's event rate; retry in {retry}s", []),
            429,
            {"Retry-After": str(retry)},
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        errors = [
            {"field": ".".join(str(p) for p in e["loc"]), "message": str(e["msg"])}
            for e in exc.errors()
        ]
        message = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return json_response(_error_body("invalid_request", message, errors), 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return json_response(
            _error_body(code, str(exc.detail), []), exc.status_code, getattr(exc, "headers", None)
        )
