"""Experiment definitions: validation and normalization of the JSON documents the API and
the CLI take, with a :class:`FieldError` naming the exact path of anything wrong
(``variations[1].weight``, ``goal.numerator.event``, ``targeting.rule.and[0].op``).

An experiment document (camelCase, as the API shows it)::

    {"key": "home-hero", "name": "Home hero", "slot": "home", "kind": "ab",
     "variations": [{"key": "A", "weight": 0.5, "payload": {"hero": "classic"}},
                    {"key": "B", "weight": 0.5, "payload": {"hero": "personal"}}],
     "coverage": 1.0,
     "targeting": {"segments": ["active"], "rule": {...}, "condition": {...}},
     "hashAttribute": "id", "fallbackAttribute": null, "seed": "home-hero",
     "hashVersion": 2, "namespace": ["home", 0, 0.5], "sticky": false,
     "goal": {"type": "conversion", "event": "Order Completed"},
     "guardrails": [{"type": "revenue", "event": "Order Completed"}],
     "bandit": null, "analysis": {"alpha": 0.05}}

Metrics (``goal`` and each of ``guardrails``) are one of:

* ``conversion`` -- did the person do ``event`` in the window after first exposure (0/1);
* ``revenue`` -- per person, the sum of ``property`` of ``event`` (default: each event's
  ``revenue``, else its ``total``; default event ``Order Completed``), zero when none;
* ``mean`` -- per person, ``aggregate`` (``sum`` (default), ``count``, ``avg``, ``max``)
  of ``property`` over their ``event`` s; ``avg`` and ``max`` leave out people without one;
* ``ratio`` -- ``numerator`` over ``denominator`` summed over people (each ``{event,
  property}``, without a property a count), e.g. revenue per order; delta method.

``windowDays`` (default 7) bounds the events counted after each person's first exposure;
``cuped: true`` adjusts with the same metric over ``cupedDays`` (default 14) before it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from sartor.collect.errors import FieldError
from sartor.collect.messages import find_nul
from sartor.segments.rules import compile_rule

KEY_RE = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,99}$")
VARIATION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-.]{0,99}$")
HASH_ATTRIBUTES = ("id", "userId", "anonymousId")
STATUSES = ("draft", "running", "stopped")
KINDS = ("ab", "bandit")
METRIC_TYPES = ("conversion", "revenue", "mean", "ratio")
AGGREGATES = ("sum", "count", "avg", "max")
MAX_VARIATIONS = 20
MAX_GUARDRAILS = 20
MAX_PAYLOAD_CHARS = 32_000
DEFAULT_REVENUE_EVENT = "Order Completed"

FIELDS = (
    "key",
    "name",
    "description",
    "status",
    "kind",
    "slot",
    "variations",
    "coverage",
    "targeting",
    "hashAttribute",
    "fallbackAttribute",
    "seed",
    "hashVersion",
    "namespace",
    "sticky",
    "bucketVersion",
    "minBucketVersion",
    "goal",
    "guardrails",
    "bandit",
    "analysis",
)
#: Shown by the API but set by the engine; ignored when a document is sent back.
READ_ONLY = ("startedAt", "stoppedAt", "createdAt", "updatedAt")
#: Changing these while the experiment runs would move people between variations.
FROZEN_WHILE_RUNNING = ("kind", "hashAttribute", "fallbackAttribute", "seed", "hashVersion")


def _is_number(value: Any) -> bool:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an integer beyond any float
        return False


def _object(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise FieldError(path, "must be an object")
    return value


def _only(doc: Mapping[str, Any], allowed: tuple[str, ...], path: str) -> None:
    for name in doc:
        if name not in allowed:
            where = f"{path}.{name}" if path else str(name)
            raise FieldError(where, f"unknown field; allowed: {', '.join(allowed)}")


def _text(value: Any, path: str, *, max_len: int = 200, required: bool = True) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()) or len(value) > max_len:
        raise FieldError(path, f"must be a non-empty string of at most {max_len} characters")
    return value.strip()


def _number(value: Any, path: str, lo: float, hi: float, *, lo_open: bool = False) -> float:
    if not _is_number(value) or value < lo or value > hi or (lo_open and value == lo):
        bracket = "(" if lo_open else "["
        raise FieldError(path, f"must be a number in {bracket}{lo:g}, {hi:g}]")
    return float(value)


def _whole(value: Any, path: str, lo: int = 0, hi: int = 1_000_000) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise FieldError(path, f"must be a whole number from {lo} to {hi}")
    return value


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise FieldError(path, "must be true or false")
    return value


def check_key(key: Any, path: str = "key") -> str:
    if not isinstance(key, str) or not KEY_RE.match(key):
        raise FieldError(path, "1-100 lowercase letters, digits, '-' or '_', starting alphanumeric")
    return key


# --- metrics ---------------------------------------------------------------------------


def _measure(raw: Any, path: str) -> dict[str, Any]:
    doc = _object(raw, path)
    _only(doc, ("event", "property"), path)
    prop = doc.get("property")
    return {
        "event": _text(doc.get("event"), f"{path}.event"),
        "property": None if prop is None else _text(prop, f"{path}.property", max_len=100),
    }


def metric(raw: Any, path: str) -> dict[str, Any]:
    """A validated metric with every default filled in."""
    doc = _object(raw, path)
    _only(
        doc,
        (
            "name",
            "type",
            "event",
            "property",
            "aggregate",
            "numerator",
            "denominator",
            "windowDays",
            "cuped",
            "cupedDays",
            "higherIsBetter",
        ),
        path,
    )
    kind = doc.get("type", "conversion")
    if kind not in METRIC_TYPES:
        raise FieldError(f"{path}.type", f"must be one of {', '.join(METRIC_TYPES)}")
    out: dict[str, Any] = {"type": kind}
    if kind == "ratio":
        for part in ("numerator", "denominator"):
            if part not in doc:
                raise FieldError(f"{path}.{part}", "is required for a ratio metric")
            out[part] = _measure(doc[part], f"{path}.{part}")
        for name in ("event", "property", "aggregate"):
            if name in doc:
                raise FieldError(f"{path}.{name}", "a ratio metric takes numerator/denominator")
    else:
        for name in ("numerator", "denominator"):
            if name in doc:
                raise FieldError(f"{path}.{name}", "only a ratio metric has one")
        default_event = DEFAULT_REVENUE_EVENT if kind == "revenue" else None
        event = doc.get("event", default_event)
        out["event"] = _text(event, f"{path}.event")
        prop = doc.get("property")
        out["property"] = None if prop is None else _text(prop, f"{path}.property", max_len=100)
        if kind == "mean":
            aggregate = doc.get("aggregate", "sum")
            if aggregate not in AGGREGATES:
                raise FieldError(f"{path}.aggregate", f"must be one of {', '.join(AGGREGATES)}")
            if out["property"] is None and aggregate != "count":
                raise FieldError(f"{path}.property", "is required (unless aggregate is count)")
            out["aggregate"] = aggregate
        elif "aggregate" in doc:
            raise FieldError(f"{path}.aggregate", "only a mean metric has one")
        if kind == "conversion" and out["property"] is not None:
            raise FieldError(f"{path}.property", "a conversion metric counts events only")
    window = doc.get("windowDays", 7)
    out["windowDays"] = (
        None if window is None else _number(window, f"{path}.windowDays", 0, 3650, lo_open=True)
    )
    out["cuped"] = _bool(doc.get("cuped", False), f"{path}.cuped")
    if out["cuped"] and (kind == "ratio" or out.get("aggregate") in ("avg", "max")):
        raise FieldError(f"{path}.cuped", "CUPED needs a per-person metric defined for everyone")
    out["cupedDays"] = _number(doc.get("cupedDays", 14), f"{path}.cupedDays", 0, 3650, lo_open=True)
    out["higherIsBetter"] = _bool(doc.get("higherIsBetter", True), f"{path}.higherIsBetter")
    label = doc.get("name")
    out["name"] = (
        _text(label, f"{path}.name", max_len=100) if label is not None else default_name(out)
    )
    return out


def default_name(m: Mapping[str, Any]) -> str:
    if m["type"] == "conversion":
        return f"conversion ({m['event']})"
    if m["type"] == "revenue":
        return f"revenue per user ({m['property'] or 'revenue'})"
    if m["type"] == "mean":
        target = m["property"] or m["event"]
        return f"{m['aggregate']} of {target}"
    num, den = m["numerator"], m["denominator"]
    return f"{num['property'] or num['event']} per {den['property'] or den['event']}"


# --- the experiment --------------------------------------------------------------------


def _variations(raw: Any, path: str = "variations") -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not 2 <= len(raw) <= MAX_VARIATIONS:
        raise FieldError(path, f"must be a list of 2 to {MAX_VARIATIONS} variations")
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    weights_given = [isinstance(v, Mapping) and "weight" in v for v in raw]
    if any(weights_given) and not all(weights_given):
        missing = weights_given.index(False)
        raise FieldError(f"{path}[{missing}].weight", "give every variation a weight, or none")
    for i, item in enumerate(raw):
        where = f"{path}[{i}]"
        v = _object(item, where)
        _only(v, ("key", "name", "weight", "payload"), where)
        key = v.get("key")
        if not isinstance(key, str) or not VARIATION_RE.match(key):
            raise FieldError(
                f"{where}.key", "1-100 letters, digits, '-', '_' or '.', starting alphanumeric"
            )
        if key in seen:
            raise FieldError(f"{where}.key", f"duplicate variation key {key!r}")
        seen.add(key)
        weight = _number(v.get("weight", 1.0), f"{where}.weight", 0, 1e9)
        payload = v.get("payload")
        if payload is not None and len(repr(payload)) > MAX_PAYLOAD_CHARS:
            raise FieldError(f"{where}.payload", f"is larger than {MAX_PAYLOAD_CHARS} characters")
        name = v.get("name")
        out.append(
            {
                "key": key,
                "name": _text(name, f"{where}.name") if name is not None else key,
                "weight": weight,
                "payload": payload,
            }
        )
    total = sum(v["weight"] for v in out)
    if total <= 0:
        raise FieldError(f"{path}[0].weight", "the weights must not all be zero")
    for v in out:  # stored normalized: the bucket ranges need weights summing to 1
        v["weight"] = round(v["weight"] / total, 6)
    return out


def _targeting(raw: Any, path: str = "targeting") -> dict[str, Any] | None:
    if raw is None:
        return None
    doc = _object(raw, path)
    _only(doc, ("segments", "rule", "condition"), path)
    out: dict[str, Any] = {}
    if doc.get("segments") is not None:
        segs = doc["segments"]
        if not isinstance(segs, list) or not segs or len(segs) > 100:
            raise FieldError(f"{path}.segments", "must be a list of 1 to 100 segment keys")
        for i, s in enumerate(segs):
            _text(s, f"{path}.segments[{i}]")
        out["segments"] = list(dict.fromkeys(segs))
    if doc.get("rule") is not None:
        try:
            compile_rule(doc["rule"])
        except FieldError as exc:
            sub = exc.field.removeprefix("definition")
            raise FieldError(f"{path}.rule{sub}", exc.message) from None
        out["rule"] = doc["rule"]
    if doc.get("condition") is not None:
        _object(doc["condition"], f"{path}.condition")
        out["condition"] = doc["condition"]
    return out or None


def _namespace(raw: Any, path: str = "namespace") -> list[Any] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or len(raw) != 3:
        raise FieldError(path, "must be [id, start, end] with 0 <= start < end <= 1")
    ns_id = _text(raw[0], f"{path}[0]", max_len=100)
    start = _number(raw[1], f"{path}[1]", 0, 1)
    end = _number(raw[2], f"{path}[2]", 0, 1)
    if end <= start:
        raise FieldError(f"{path}[2]", "must be greater than the start")
    return [ns_id, start, end]


def _bandit(raw: Any, kind: str, n_variations: int, path: str = "bandit") -> dict[str, Any] | None:
    if kind != "bandit":
        if raw is not None:
            raise FieldError(path, 'only an experiment of kind "bandit" has bandit settings')
        return None
    doc = _object(raw if raw is not None else {}, path)
    _only(doc, ("algorithm", "periodHours", "epsilon", "minSamples", "floorShare"), path)
    algorithm = doc.get("algorithm", "thompson")
    if algorithm not in ("thompson", "epsilon_greedy"):
        raise FieldError(f"{path}.algorithm", "must be thompson or epsilon_greedy")
    floor = _number(doc.get("floorShare", 0.0), f"{path}.floorShare", 0, 1)
    if floor * n_variations > 1:
        raise FieldError(f"{path}.floorShare", f"must be at most 1/{n_variations}")
    return {
        "algorithm": algorithm,
        "periodHours": _number(
            doc.get("periodHours", 24), f"{path}.periodHours", 0, 8760, lo_open=True
        ),
        "epsilon": _number(doc.get("epsilon", 0.1), f"{path}.epsilon", 0, 1),
        "minSamples": _whole(doc.get("minSamples", 100), f"{path}.minSamples"),
        "floorShare": floor,
    }


def analysis_settings(raw: Any, path: str = "analysis") -> dict[str, Any]:
    doc = _object(raw if raw is not None else {}, path)
    _only(
        doc,
        ("alpha", "differenceType", "sequential", "sequentialTuning", "correction", "minUnits"),
        path,
    )
    difference = doc.get("differenceType", "relative")
    if difference not in ("relative", "absolute"):
        raise FieldError(f"{path}.differenceType", "must be relative or absolute")
    correction = doc.get("correction")
    if correction not in (None, "holm", "bh"):
        raise FieldError(f"{path}.correction", "must be holm, bh or null")
    return {
        "alpha": _number(doc.get("alpha", 0.05), f"{path}.alpha", 0, 0.5, lo_open=True),
        "differenceType": difference,
        "sequential": _bool(doc.get("sequential", False), f"{path}.sequential"),
        "sequentialTuning": _number(
            doc.get("sequentialTuning", 5000), f"{path}.sequentialTuning", 0, 1e9, lo_open=True
        ),
        "correction": correction,
        "minUnits": _whole(doc.get("minUnits", 100), f"{path}.minUnits"),
    }


def normalize(raw: Any, *, key: str | None = None) -> dict[str, Any]:
    """A complete, validated experiment document from what a caller sent (``key`` from the
    path wins over the body's)."""
    doc = _object(raw, "body")
    nul = find_nul(doc, "")
    if nul:
        raise FieldError(nul, "must not contain the NUL character (\\u0000)")
    _only({k: v for k, v in doc.items() if k not in READ_ONLY}, FIELDS, "")
    if key is not None and doc.get("key", key) != key:
        raise FieldError("key", "differs from the key in the path")
    exp_key = check_key(key if key is not None else doc.get("key"))
    status = doc.get("status", "draft")
    if status not in STATUSES:
        raise FieldError("status", f"must be one of {', '.join(STATUSES)}")
    kind = doc.get("kind", "ab")
    if kind not in KINDS:
        raise FieldError("kind", f"must be one of {', '.join(KINDS)}")
    slot = doc.get("slot")
    if slot is not None:
        slot = check_key(slot, "slot")
    variations = _variations(doc.get("variations"))
    hash_attribute = doc.get("hashAttribute", "id")
    if hash_attribute not in HASH_ATTRIBUTES:
        raise FieldError("hashAttribute", f"must be one of {', '.join(HASH_ATTRIBUTES)}")
    fallback = doc.get("fallbackAttribute")
    if fallback is not None and (fallback not in HASH_ATTRIBUTES or fallback == hash_attribute):
        raise FieldError(
            "fallbackAttribute", "must be another of " + ", ".join(HASH_ATTRIBUTES) + " or null"
        )
    sticky = _bool(doc.get("sticky", fallback is not None), "sticky")
    if fallback is not None and not sticky:
        raise FieldError("sticky", "a fallback attribute only works with sticky bucketing")
    if kind == "bandit" and sticky:
        raise FieldError("sticky", "a bandit keeps each person on their first arm already")
    seed = doc.get("seed")
    goal = None if doc.get("goal") is None else metric(doc["goal"], "goal")
    if kind == "bandit":
        if goal is None:
            raise FieldError("goal", "a bandit needs a goal metric (its reward)")
        if goal["type"] == "ratio" or goal.get("aggregate") in ("avg", "max"):
            raise FieldError("goal.type", "a bandit's reward is a per-person metric")
    guardrails_raw = doc.get("guardrails") or []
    if not isinstance(guardrails_raw, list) or len(guardrails_raw) > MAX_GUARDRAILS:
        raise FieldError("guardrails", f"must be a list of at most {MAX_GUARDRAILS} metrics")
    hash_version = doc.get("hashVersion", 2)
    if hash_version not in (1, 2) or isinstance(hash_version, bool):
        raise FieldError("hashVersion", "must be 1 or 2")
    bucket_version = _whole(doc.get("bucketVersion", 0), "bucketVersion", 0, 10_000)
    min_bucket_version = _whole(doc.get("minBucketVersion", 0), "minBucketVersion", 0, 10_000)
    if min_bucket_version > bucket_version:
        raise FieldError("minBucketVersion", "must not exceed bucketVersion")
    return {
        "key": exp_key,
        "name": _text(doc.get("name", exp_key), "name"),
        "description": _text(doc.get("description"), "description", max_len=5000, required=False),
        "status": status,
        "kind": kind,
        "slot": slot,
        "variations": variations,
        "coverage": _number(doc.get("coverage", 1.0), "coverage", 0, 1),
        "targeting": _targeting(doc.get("targeting")),
        "hashAttribute": hash_attribute,
        "fallbackAttribute": fallback,
        "seed": exp_key if seed is None else _text(seed, "seed"),
        "hashVersion": int(hash_version),
        "namespace": _namespace(doc.get("namespace")),
        "sticky": sticky,
        "bucketVersion": bucket_version,
        "minBucketVersion": min_bucket_version,
        "goal": goal,
        "guardrails": [metric(g, f"guardrails[{i}]") for i, g in enumerate(guardrails_raw)],
        "bandit": _bandit(doc.get("bandit"), kind, len(variations)),
        "analysis": analysis_settings(doc.get("analysis")),
    }


def growthbook(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The experiment as :func:`sartor.experiments.assignment.assign` takes it (the
    GrowthBook SDK's experiment shape): variation values are the payloads, the variation
    keys travel in ``meta``."""
    variations = doc["variations"]
    out: dict[str, Any] = {
        "key": doc["key"],
        "variations": [v["payload"] for v in variations],
        "weights": [v["weight"] for v in variations],
        "meta": [{"key": v["key"], "name": v["name"]} for v in variations],
        "coverage": doc["coverage"],
        "hashAttribute": doc["hashAttribute"],
        "seed": doc["seed"],
        "hashVersion": doc["hashVersion"],
        "status": doc["status"],
        "bucketVersion": doc["bucketVersion"],
        "minBucketVersion": doc["minBucketVersion"],
    }
    if doc.get("fallbackAttribute"):
        out["fallbackAttribute"] = doc["fallbackAttribute"]
    if doc.get("namespace"):
        out["namespace"] = doc["namespace"]
    condition = (doc.get("targeting") or {}).get("condition")
    if condition:
        out["condition"] = condition
    if not doc.get("sticky"):
        out["disableStickyBucketing"] = True
    return out
