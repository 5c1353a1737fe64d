"""Erasure and export of one person (admin key)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from sartor.api.deps import AdminWorkspace, EngineDep, check_id
from sartor.api.errors import ApiError, json_response
from sartor.engine import NotFound

router = APIRouter(prefix="/v1/users", tags=["privacy"])


@router.delete("/{user_id}", summary="Erase a person and suppress their later events")
def erase_user(user_id: str, workspace: AdminWorkspace, engine: EngineDep) -> Response:
    """`user_id` may be a userId, an anonymousId or a profile id. Removes the person's
    events, identity links and profile, and records keyed hashes of all their ids so that
    later events carrying any of them are dropped."""
    check_id(user_id, "path.user_id")
    counts = engine.erase_user(workspace, user_id)
    return json_response({"success": True, "erased": counts})


@router.get("/{user_id}/export", summary="Everything held about a person, as JSON")
def export_user(user_id: str, workspace: AdminWorkspace, engine: EngineDep) -> Any:
    check_id(user_id, "path.user_id")
    try:
        return json_response(engine.export_user(workspace, user_id))
    except NotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from None
