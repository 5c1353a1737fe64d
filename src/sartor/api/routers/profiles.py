"""Profiles: lookup, listing, server-side trait pushes, and the live WebSocket stream."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import Response

from sartor.api.deps import EngineDep, ReadWorkspace, authorize, check_id, key_from_header
from sartor.api.errors import ApiError, json_response
from sartor.collect.messages import find_nul
from sartor.engine import NotFound

router = APIRouter(prefix="/v1", tags=["profiles"])


@router.get("/profiles/{profile_ref}", summary="One unified profile")
def get_profile(profile_ref: str, workspace: ReadWorkspace, engine: EngineDep) -> Response:
    """`profile_ref` is a userId, an anonymousId, an email (hashed before lookup), an
    `hmac-sha256:` email hash, or a profile id. The profile is folded up to the newest
    stored event before it is returned."""
    check_id(profile_ref, "path.profile_ref")
    try:
        return json_response(engine.profile(workspace, profile_ref))
    except NotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from None


@router.get("/profiles", summary="Profiles, paged by cursor, filtered by traits")
def list_profiles(
    request: Request,
    workspace: ReadWorkspace,
    engine: EngineDep,
    cursor: Annotated[str | None, Query(description="`next` of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Response:
    """Filter with `trait.NAME=VALUE` query parameters (string equality), e.g.
    `?trait.plan=pro&trait.country=FR`."""
    traits = {
        k.removeprefix("trait."): v
        for k, v in request.query_params.items()
        if k.startswith("trait.")
    }
    for name, value in [*traits.items(), ("cursor", cursor or "")]:
        if len(name) > 200 or len(value) > 1000 or find_nul([name, value], "query"):
            raise ApiError(
                400,
                "invalid_request",
                f"query.{name}: too long or contains NUL",
                [{"field": f"query.{name}", "message": "too long or contains NUL"}],
            )
    page, nxt = engine.profiles(workspace, after=cursor, limit=limit, traits=traits)
    return json_response({"profiles": page, "next": nxt})


@router.post("/profiles/{profile_ref}/traits", summary="Set traits from the server")
def push_traits(
    profile_ref: str,
    request: Request,
    engine: EngineDep,
    traits: Annotated[dict[str, Any], Body(description="Traits; `$set`, `$set_once`, `$unset`")],
) -> Response:
    """Needs a write key. The change is stored in the event log as an `identify` (so a
    rebuild reproduces it) and folded at once; the updated profile is returned."""
    workspace = authorize(engine, key_from_header(request), "write")
    check_id(profile_ref, "path.profile_ref")
    nul = find_nul(traits, "traits")
    if nul:
        raise ApiError(
            400,
            "invalid_payload",
            f"{nul}: contains NUL",
            [{"field": nul, "message": "must not contain NUL"}],
        )
    return json_response(engine.push_traits(workspace, profile_ref, traits))


@router.websocket("/stream")
async def stream(websocket: WebSocket) -> None:
    """Live events and profile changes of the key's workspace, as JSON text messages.
    Authenticate with a read or admin key: `Authorization: Bearer <key>` or `?key=<key>`."""
    engine = websocket.app.state.engine
    header = websocket.headers.get("authorization", "")
    key = header.partition(" ")[2].strip() if header.lower().startswith("bearer ") else None
    key = key or websocket.query_params.get("key")
    try:
        workspace = authorize(engine, key, "read")
    except ApiError as exc:
        await websocket.close(code=4401 if exc.status == 401 else 4403, reason=exc.message[:120])
        return
    await websocket.accept()
    queue = engine.broadcaster.subscribe(workspace.id)
    receiver = asyncio.create_task(_drain(websocket))
    try:
        await websocket.send_json({"type": "subscribed", "workspaceId": workspace.id})
        while not receiver.done():
            getter = asyncio.create_task(queue.get())
            done, _ = await asyncio.wait({getter, receiver}, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                await _send(websocket, getter.result())
                # What else is queued goes out now, without a task per message.
                while not queue.empty():
                    await _send(websocket, queue.get_nowait())
            else:
                getter.cancel()
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        engine.broadcaster.unsubscribe(workspace.id, queue)
        receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await receiver


async def _send(websocket: WebSocket, message: dict[str, Any]) -> None:
    await websocket.send_text(orjson.dumps(message, option=orjson.OPT_NON_STR_KEYS).decode())


async def _drain(websocket: WebSocket) -> None:
    """Read (and ignore) client messages until it disconnects."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            await websocket.receive_text()
