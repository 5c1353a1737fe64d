"""The calling key's workspace and its policy."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body
from fastapi.responses import Response
from pydantic import ValidationError

from sartor.api.deps import AdminWorkspace, EngineDep, ReadWorkspace
from sartor.api.errors import ApiError, json_response
from sartor.collect.messages import find_nul
from sartor.workspace import Workspace

router = APIRouter(prefix="/v1/workspace", tags=["workspace"])


def _doc(ws: Workspace) -> dict[str, Any]:
    return {"id": ws.id, "name": ws.name, "settings": ws.settings.model_dump(mode="json")}


@router.get("", summary="The workspace of the key, with its settings")
def get_workspace(workspace: ReadWorkspace) -> Response:
    return json_response(_doc(workspace))


@router.patch("/settings", summary="Change the workspace's consent, PII and rate settings")
def patch_settings(
    workspace: AdminWorkspace, engine: EngineDep, changes: Annotated[dict[str, Any], Body()]
) -> Response:
    nul = find_nul(changes, "")
    if nul:  # PostgreSQL cannot store it
        message = "must not contain the NUL character (\\u0000)"
        raise ApiError(
            400, "invalid_settings", f"{nul}: {message}", [{"field": nul, "message": message}]
        )
    try:
        updated = engine.update_workspace_settings(workspace, changes)
    except (ValidationError, ValueError) as exc:
        errors = (
            [
                {"field": ".".join(map(str, e["loc"])) or "body", "message": e["msg"]}
                for e in exc.errors()
            ]
            if isinstance(exc, ValidationError)
            else [{"field": "body", "message": str(exc)}]
        )
        raise ApiError(
            400,
            "invalid_settings",
            "; ".join(f"{e['field']}: {e['message']}" for e in errors),
            errors,
        ) from None
    return json_response(_doc(updated))
