"""Reading the event log (read key)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response

from sartor.api.deps import EngineDep, ReadWorkspace, check_id
from sartor.api.errors import json_response

router = APIRouter(prefix="/v1/events", tags=["events"])


@router.get("", summary="Stored events in log order, paged by `after`")
def list_events(
    workspace: ReadWorkspace,
    engine: EngineDep,
    after: Annotated[int, Query(ge=0, le=2**62, description="Return events with seq > after")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    user: Annotated[str | None, Query(description="userId, anonymousId or profile id")] = None,
) -> Response:
    if user is not None:
        check_id(user, "query.user")
    rows = engine.events(workspace, after=after, limit=limit, user=user)
    next_after = rows[-1]["seq"] if rows else after
    return json_response({"events": rows, "next": next_after, "more": len(rows) == limit})
