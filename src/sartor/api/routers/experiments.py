"""Experiments: decisions (any key), definitions (admin key), results and the holdout
report (read key).

``POST /v1/decide`` takes any key of the workspace. Front ends call it with the write key
they already hold for ingestion, servers with a read key: the answer holds only the
person's own variations and payloads (no profile data), and the exposure it logs is an
event like any other, so it needs no more than a write key. The person is given as
``user`` (looked up; a new id is taken for a userId), or explicitly as ``userId`` and/or
``anonymousId`` (both: the exposure event links them, as a track call with both would).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import Response

from sartor.api.deps import (
    AdminWorkspace,
    EngineDep,
    ReadWorkspace,
    authorize,
    check_id,
    key_from_header,
)
from sartor.api.errors import ApiError, json_response
from sartor.clock import iso
from sartor.collect.errors import FieldError
from sartor.collect.messages import find_nul
from sartor.experiments.service import ExperimentConflict, ExperimentNotFound
from sartor.workspace import Workspace

router = APIRouter(prefix="/v1", tags=["experiments"])

Json = Annotated[dict[str, Any], Body()]
MAX_NAMES = 50
_DECIDE_FIELDS = ("user", "userId", "anonymousId", "slots", "experiments", "attributes", "writeKey")


def _invalid(exc: FieldError, code: str = "invalid_experiment") -> ApiError:
    return ApiError(400, code, str(exc), [exc.as_dict()])


def _present(doc: dict[str, Any]) -> dict[str, Any]:
    return {**doc, **{k: iso(doc[k]) for k in ("startedAt", "stoppedAt", "createdAt", "updatedAt")}}


def _any_key(request: Request, engine: Any, body: dict[str, Any]) -> Workspace:
    key = key_from_header(request)
    if key is None and isinstance(body.get("writeKey"), str):
        key = body["writeKey"]
    try:
        return authorize(engine, key, "write")
    except ApiError as exc:
        if exc.status != 403:
            raise
    return authorize(engine, key, "read")


def _id(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 255 or "\x00" in value:
        raise FieldError(field, "must be 1 to 255 characters without NUL")
    return value


def _names(value: Any, field: str) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_NAMES:
        raise FieldError(field, f"must be a list of at most {MAX_NAMES} keys")
    return [_id(v, f"{field}[{i}]") for i, v in enumerate(value)]


def _decide_args(body: dict[str, Any]) -> dict[str, Any]:
    for name in body:
        if name not in _DECIDE_FIELDS:
            raise FieldError(str(name), f"unknown field; allowed: {', '.join(_DECIDE_FIELDS)}")
    user_id, anon = body.get("userId"), body.get("anonymousId")
    if user_id is not None:
        _id(user_id, "userId")
    if anon is not None:
        _id(anon, "anonymousId")
    if body.get("user") is not None and (user_id is not None or anon is not None):
        raise FieldError("user", "give user, or userId/anonymousId, not both")
    if user_id is not None:
        args: dict[str, Any] = {"user": user_id, "kind": "userId", "anonymous_id": anon}
    elif anon is not None:
        args = {"user": anon, "kind": "anonymousId"}
    else:
        args = {"user": _id(body.get("user"), "user")}
    attributes = body.get("attributes")
    if attributes is not None:
        if not isinstance(attributes, dict):
            raise FieldError("attributes", "must be an object")
        nul = find_nul(attributes, "attributes")
        if nul:
            raise FieldError(nul, "must not contain the NUL character (\\u0000)")
    args.update(
        slots=_names(body.get("slots"), "slots"),
        experiments=_names(body.get("experiments"), "experiments"),
        attributes=attributes,
    )
    return args


@router.post("/decide", summary="Variations (and payloads) for a person on slots/experiments")
def decide(request: Request, body: Json, engine: EngineDep) -> Response:
    """Any key of the workspace (see the module docs). Body: `{user, slots?, experiments?,
    attributes?}`; without slots and experiments, every running experiment. A person in
    the global holdout gets `holdout: true` and no variation on every slot. The first
    exposure to each experiment is logged once (`Experiment Viewed`)."""
    workspace = _any_key(request, engine, body)
    try:
        args = _decide_args(body)
        return json_response(engine.experiments.decide(workspace, **args))
    except FieldError as exc:
        raise _invalid(exc, "invalid_request") from None


@router.get("/experiments", summary="All experiments")
def list_experiments(
    workspace: ReadWorkspace,
    engine: EngineDep,
    status: Annotated[str | None, Query(pattern="^(draft|running|stopped)$")] = None,
) -> Response:
    docs = engine.experiments.all(workspace, status)
    return json_response({"experiments": [_present(d) for d in docs]})


@router.post("/experiments", summary="Create an experiment", status_code=201)
def create_experiment(body: Json, workspace: AdminWorkspace, engine: EngineDep) -> Response:
    try:
        return json_response(_present(engine.experiments.create(workspace, body)), 201)
    except FieldError as exc:
        raise _invalid(exc) from None
    except ExperimentConflict as exc:
        raise ApiError(409, "conflict", f"{exc}; PUT /v1/experiments/{{key}} to edit") from None


def _found(engine: Any, workspace: Workspace, key: str) -> dict[str, Any]:
    check_id(key, "path.key")
    doc = engine.experiments.get(workspace, key)
    if doc is None:
        raise ApiError(404, "not_found", f"no experiment {key!r}")
    return dict(doc)


@router.get("/experiments/{key}", summary="One experiment")
def get_experiment(key: str, workspace: ReadWorkspace, engine: EngineDep) -> Response:
    return json_response(_present(_found(engine, workspace, key)))


@router.put("/experiments/{key}", summary="Replace an experiment's definition")
def put_experiment(key: str, body: Json, workspace: AdminWorkspace, engine: EngineDep) -> Response:
    """While it runs, kind, hashing (attribute, fallback, seed, version) and the variation
    keys cannot change; the status changes only through start and stop."""
    _found(engine, workspace, key)
    try:
        return json_response(_present(engine.experiments.update(workspace, key, body)))
    except FieldError as exc:
        raise _invalid(exc) from None


@router.delete("/experiments/{key}", summary="Delete a draft or stopped experiment")
def delete_experiment(key: str, workspace: AdminWorkspace, engine: EngineDep) -> Response:
    _found(engine, workspace, key)
    try:
        engine.experiments.delete(workspace, key)
    except ExperimentConflict as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    return json_response({"success": True})


@router.post("/experiments/{key}/start", summary="Start (or restart) an experiment")
def start_experiment(key: str, workspace: AdminWorkspace, engine: EngineDep) -> Response:
    _found(engine, workspace, key)
    return json_response(_present(engine.experiments.start(workspace, key)))


@router.post("/experiments/{key}/stop", summary="Stop an experiment")
def stop_experiment(key: str, workspace: AdminWorkspace, engine: EngineDep) -> Response:
    _found(engine, workspace, key)
    return json_response(_present(engine.experiments.stop(workspace, key)))


@router.get("/experiments/{key}/results", summary="Results per variation, with verdicts")
def results(key: str, workspace: ReadWorkspace, engine: EngineDep) -> Response:
    _found(engine, workspace, key)
    try:
        return json_response(engine.experiments.results(workspace, key))
    except ExperimentNotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from None


@router.get("/holdout/report", summary="Lift of personalization over the global holdout")
def holdout_report(
    workspace: ReadWorkspace,
    engine: EngineDep,
    type: Annotated[str, Query(pattern="^(conversion|revenue|mean)$")] = "conversion",
    event: Annotated[str, Query(min_length=1, max_length=200)] = "Order Completed",
    property: Annotated[str | None, Query(min_length=1, max_length=100)] = None,
    aggregate: Annotated[str | None, Query(pattern="^(sum|count|avg|max)$")] = None,
    window_days: Annotated[float | None, Query(alias="windowDays", gt=0, le=3650)] = 7,
) -> Response:
    """Everyone decided outside the holdout against the holdout, on a metric counted in
    the window after each person's first decision (default: conversion to Order
    Completed within 7 days)."""
    metric: dict[str, Any] = {"type": type, "event": event, "windowDays": window_days}
    if property is not None:
        metric["property"] = property
    if aggregate is not None:
        metric["aggregate"] = aggregate
    try:
        return json_response(engine.experiments.holdout_report(workspace, metric))
    except FieldError as exc:
        raise _invalid(exc, "invalid_request") from None
