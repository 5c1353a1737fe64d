"""Segments: definitions (admin key), preview, members and sizes (read key), RFM runs."""

from __future__ import annotations

import csv
import io
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query
from fastapi.responses import Response

from sartor.api.deps import AdminWorkspace, EngineDep, ReadWorkspace, check_id
from sartor.api.errors import ApiError, json_response
from sartor.clock import iso
from sartor.collect.errors import FieldError
from sartor.collect.messages import find_nul, parse_timestamp

router = APIRouter(prefix="/v1/segments", tags=["segments"])

Json = Annotated[dict[str, Any], Body()]


def _field_error(exc: FieldError) -> ApiError:
    return ApiError(400, "invalid_segment", str(exc), [exc.as_dict()])


def _no_nul(body: Any) -> None:
    nul = find_nul(body, "")
    if nul:
        raise _field_error(FieldError(nul, "must not contain NUL"))


def _present(doc: dict[str, Any]) -> dict[str, Any]:
    return {**doc, **{k: iso(doc[k]) for k in ("createdAt", "updatedAt", "evaluatedAt")}}


@router.post("/preview", summary="Size and a sample of a definition, before saving it")
def preview(body: Json, workspace: ReadWorkspace, engine: EngineDep) -> Response:
    _no_nul(body)
    if "definition" not in body:
        raise _field_error(FieldError("definition", "is required"))
    try:
        return json_response(engine.segments.preview(workspace.id, body["definition"]))
    except FieldError as exc:
        raise _field_error(exc) from None


@router.get("", summary="All segments with their sizes")
def list_segments(workspace: ReadWorkspace, engine: EngineDep) -> Response:
    return json_response({"segments": [_present(s) for s in engine.segments.all(workspace.id)]})


def _save(engine: Any, ws: str, key: str, body: dict[str, Any]) -> dict[str, Any]:
    _no_nul(body)
    try:
        return engine.segments.save(
            ws, key, body.get("name", ""), body.get("definition"), body.get("description", "") or ""
        )
    except FieldError as exc:
        raise _field_error(exc) from None


@router.post("", summary="Create a rule segment (back-filled over all profiles)", status_code=201)
def create_segment(body: Json, workspace: AdminWorkspace, engine: EngineDep) -> Response:
    key = body.get("key")
    if not isinstance(key, str):
        raise _field_error(FieldError("key", "is required"))
    if engine.segments.get(workspace.id, key) is not None:
        raise ApiError(409, "conflict", f"segment {key!r} exists; PUT /v1/segments/{key} to edit")
    return json_response(_present(_save(engine, workspace.id, key, body)), 201)


@router.get("/{key}", summary="One segment")
def get_segment(key: str, workspace: ReadWorkspace, engine: EngineDep) -> Response:
    check_id(key, "path.key")
    doc = engine.segments.get(workspace.id, key)
    if doc is None:
        raise ApiError(404, "not_found", f"no segment {key!r}")
    return json_response(_present(doc))


@router.put("/{key}", summary="Replace a rule segment's definition (re-back-filled)")
def put_segment(key: str, body: Json, workspace: AdminWorkspace, engine: EngineDep) -> Response:
    check_id(key, "path.key")
    if engine.segments.get(workspace.id, key) is None:
        raise ApiError(404, "not_found", f"no segment {key!r}")
    return json_response(_present(_save(engine, workspace.id, key, body)))


@router.delete("/{key}", summary="Delete a segment and its memberships")
def delete_segment(key: str, workspace: AdminWorkspace, engine: EngineDep) -> Response:
    check_id(key, "path.key")
    if not engine.segments.delete(workspace.id, key):
        raise ApiError(404, "not_found", f"no segment {key!r}")
    return json_response({"success": True})


@router.get("/{key}/members", summary="Members, paged by cursor; `format=csv` exports all")
def members(
    key: str,
    workspace: ReadWorkspace,
    engine: EngineDep,
    cursor: Annotated[str | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    format: Annotated[str, Query(pattern="^(json|csv)$")] = "json",
) -> Response:
    check_id(key, "path.key")
    if cursor is not None:
        check_id(cursor, "query.cursor")
    if engine.segments.get(workspace.id, key) is None:
        raise ApiError(404, "not_found", f"no segment {key!r}")
    if format == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["profile_id", "since", "data"])
        after = None
        while True:
            page, after = engine.segments.members(workspace.id, key, after, 1000)
            for m in page:
                extra = {k: v for k, v in m.items() if k not in ("profileId", "since")}
                writer.writerow([m["profileId"], iso(m["since"]), extra or ""])
            if after is None:
                break
        return Response(
            out.getvalue(),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{key}.csv"'},
        )
    page, nxt = engine.segments.members(workspace.id, key, cursor, limit)
    for m in page:
        m["since"] = iso(m["since"])
    return json_response({"members": page, "next": nxt})


@router.get("/{key}/sizes", summary="The segment's size over time (one point a day)")
def sizes(key: str, workspace: ReadWorkspace, engine: EngineDep) -> Response:
    check_id(key, "path.key")
    points = engine.segments.sizes(workspace.id, key)
    return json_response({"sizes": [{"at": iso(p["at"]), "size": p["size"]} for p in points]})


rfm_router = APIRouter(prefix="/v1/rfm", tags=["segments"])


@rfm_router.post(
    "/run",
    summary="Recompute RFM scores and groups now; body: `reference_date`, `quantiles` (2-10)",
)
def run_rfm(workspace: AdminWorkspace, engine: EngineDep, body: Json | None = None) -> Response:
    reference = None
    if body and body.get("reference_date") is not None:
        try:
            reference = parse_timestamp(body["reference_date"])
        except ValueError as exc:
            raise _field_error(FieldError("reference_date", str(exc))) from None
    quantiles = (body or {}).get("quantiles", 5)
    if not isinstance(quantiles, int) or isinstance(quantiles, bool) or not 2 <= quantiles <= 10:
        raise _field_error(FieldError("quantiles", "must be a whole number from 2 to 10"))
    return json_response({"groups": engine.segments.run_rfm(workspace.id, reference, quantiles)})


clusters_router = APIRouter(prefix="/v1/clusters", tags=["segments"])
ALGORITHMS = ("kmeans", "minibatch_kmeans", "dbscan", "hdbscan", "gmm")


@clusters_router.post("/run", summary="Cluster the profiles now; clusters become segments")
def run_clusters(
    workspace: AdminWorkspace, engine: EngineDep, body: Json | None = None
) -> Response:
    """Body (all optional): `algorithm` (kmeans, minibatch_kmeans, dbscan, hdbscan, gmm;
    default minibatch_kmeans), `random_state`. Returns the run with its metrics, stability
    against the previous run, and the cluster profiles; 409 with too few profiles."""
    from sartor.segments.clustering import run_clustering

    body = body or {}
    algorithm = body.get("algorithm", "minibatch_kmeans")
    if algorithm not in ALGORITHMS:
        raise _field_error(FieldError("algorithm", f"must be one of {', '.join(ALGORITHMS)}"))
    seed = body.get("random_state", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise _field_error(FieldError("random_state", "must be an integer"))
    run = run_clustering(engine, workspace.id, algorithm, seed)
    if run is None:
        raise ApiError(409, "not_enough_profiles", "too few profiles with behaviour to cluster")
    return json_response(run)


@clusters_router.get("/runs", summary="Clustering runs, newest first, with their metrics")
def list_runs(
    workspace: ReadWorkspace, engine: EngineDep, limit: Annotated[int, Query(ge=1, le=200)] = 20
) -> Response:
    from sartor.segments.clustering import cluster_runs

    runs = cluster_runs(engine, workspace.id, limit)
    for run in runs:
        run["createdAt"] = iso(run["createdAt"])
    return json_response({"runs": runs})
