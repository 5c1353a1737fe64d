"""Request dependencies: the engine, and API-key auth written once.

Keys travel as HTTP Basic user name (Segment style: ``base64("<key>:")``) or as a Bearer
token; write endpoints also accept ``writeKey`` in the body. A key is of one kind: write
keys only write events; read keys only read; admin keys read and administer.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import Depends, Request

from sartor.api.errors import ApiError
from sartor.engine import Engine
from sartor.workspace import Workspace


async def get_engine(request: Request) -> Engine:
    # async: FastAPI would run a plain function in its thread pool, a thread hop per request
    engine: Engine = request.app.state.engine
    return engine


EngineDep = Annotated[Engine, Depends(get_engine)]


def key_from_header(request: Request) -> str | None:
    return key_from_authorization(request.headers.get("authorization"))


def key_from_authorization(header: str | None) -> str | None:
    """The API key in an ``Authorization`` header value (Bearer or Basic), if any."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return value or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise ApiError(401, "unauthorized", "malformed Basic credentials") from None
        return decoded.partition(":")[0] or None
    raise ApiError(401, "unauthorized", f"unsupported authorization scheme {scheme!r}")


_ALLOWED = {"write": ("write",), "read": ("read", "admin"), "admin": ("admin",)}


def authorize(engine: Engine, key: str | None, needed: str) -> Workspace:
    """The key's workspace if it may do ``needed`` (write, read, admin); 401/403 if not."""
    if not key:
        raise ApiError(
            401,
            "unauthorized",
            "an API key is required (HTTP Basic user name, Bearer token, or writeKey)",
            headers={"WWW-Authenticate": 'Basic realm="sartor"'},
        )
    if len(key) > 200 or "\x00" in key:
        raise ApiError(401, "unauthorized", "unknown API key")
    found = engine.authenticate(key)
    if found is None:
        raise ApiError(401, "unauthorized", "unknown API key")
    workspace, kind = found
    if kind not in _ALLOWED[needed]:
        raise ApiError(
            403, "forbidden", f"a {kind} key cannot be used here; this needs a {needed} key"
        )
    return workspace


def _read_workspace(request: Request, engine: EngineDep) -> Workspace:
    return authorize(engine, key_from_header(request), "read")


def _admin_workspace(request: Request, engine: EngineDep) -> Workspace:
    return authorize(engine, key_from_header(request), "admin")


ReadWorkspace = Annotated[Workspace, Depends(_read_workspace)]
AdminWorkspace = Annotated[Workspace, Depends(_admin_workspace)]


def check_id(value: str, field: str) -> str:
    """Ids in paths and queries: 1-255 characters, no NUL (PostgreSQL cannot store it)."""
    if not value or len(value) > 255 or "\x00" in value:
        raise ApiError(
            400,
            "invalid_request",
            f"{field}: must be 1 to 255 characters without NUL",
            [{"field": field, "message": "must be 1 to 255 characters without NUL"}],
        )
    return value
