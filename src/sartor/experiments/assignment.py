"""Deterministic experiment assignment, bit-compatible with the GrowthBook SDKs.

A user's variation is a pure function of the experiment definition and the user's
attributes: hash the user's hash attribute with the experiment's seed to a number in
``[0, 1)``, and find which variation's bucket range contains it. Sartor, a GrowthBook SDK
and anything else implementing the spec put the same user in the same variation.

Hashing is FNV-1a 32-bit over the UTF-16 code units of the string, as JavaScript's
``charCodeAt`` sees them, so non-ASCII ids hash as in the JS SDK (the Python SDK iterates
code points instead; the two differ only for characters outside the Basic Multilingual
Plane, which become two surrogate units here). The conformance file has only ASCII hash
cases, so it cannot tell the two apart; the JS behaviour is the reference.

:func:`assign` implements the SDK's experiment ``run`` steps that make sense on a server:

1. fewer than two variations, or assignment globally disabled: not in the experiment;
2. per-key ``overrides`` from the caller are merged into the experiment;
3. ``forced_variations`` (QA forcing by the caller) return that variation;
4. ``status == "draft"`` or ``active is False``: not in the experiment;
5. the hash attribute (``hashAttribute``, default ``id``; ``fallbackAttribute`` only with
   sticky bucketing, as in the SDK, so a user does not switch variation when they log in
   unless their first assignment is remembered) must be non-empty;
6. sticky bucketing (a :class:`StickyBucketStore` given): a remembered variation for this
   experiment and ``bucketVersion`` is reused, skipping the targeting checks; a remembered
   variation for a version below ``minBucketVersion`` excludes the user;
7. ``filters`` (or the older ``namespace`` when there are no filters), ``condition``
   (with ``saved_groups`` for ``$inGroup``), ``parentConditions`` (prerequisite features,
   evaluated through the caller's ``evaluate_feature``), ``groups``;
8. hash with ``seed`` (default: the key) and ``hashVersion`` (default 1), choose the
   variation from ``ranges`` or from ``coverage`` and ``weights``;
9. ``force`` (only for users inside coverage), ``qa_mode``, ``status == "stopped"``;
10. the assignment is saved to the sticky store.

Not applicable on a server, so not implemented (the conformance test lists the cases):

* query-string and URL overrides (``?my-test=1``) — there is no browser URL to read, and
  letting a request parameter pick a variation would let any client choose its bucket;
* URL targeting (``url``, ``urlPatterns``) — an experiment that carries URL targeting is
  treated as not matching (fail closed), as an SDK does when it has no URL;
* the ``include`` callback (a JavaScript function, not data) and tracking callbacks
  (assignment here is pure; the caller records exposures).

Sartor extension: :attr:`ExperimentResult.reason` says why a user is or is not in the
experiment. Deviation: sticky assignments are looked up by variation key, and without
``meta`` the keys are the variation indexes (``"0"``, ``"1"``...) -- the same keys that
are saved -- where the SDK finds nothing without ``meta``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sartor.experiments.conditions import eval_condition, js_json, js_to_string, js_truthy

__all__ = [
    "CYCLIC_PREREQUISITE",
    "ExperimentResult",
    "InMemoryStickyBucketStore",
    "StickyBucketStore",
    "assign",
    "choose_variation",
    "fnv1a32",
    "get_bucket_ranges",
    "get_equal_weights",
    "hash",
    "in_namespace",
    "in_range",
]

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193
_MASK32 = 0xFFFFFFFF

BucketRange = tuple[float, float]

#: What an ``evaluate_feature`` callback returns for a feature whose prerequisites loop.
CYCLIC_PREREQUISITE: Any = object()


# --- hashing and buckets ---------------------------------------------------------------


def fnv1a32(text: str) -> int:
    """FNV-1a 32-bit over the UTF-16 code units of ``text`` (JavaScript's ``charCodeAt``):
    each 16-bit unit is XORed in whole, then the state is multiplied by the FNV prime."""
    data = text.encode("utf-16-le", "surrogatepass")
    h = _FNV_OFFSET
    for unit in struct.unpack(f"<{len(data) // 2}H", data):
        h = ((h ^ unit) * _FNV_PRIME) & _MASK32
    return h


def hash(seed: str, value: str, version: int) -> float | None:
    """The spec's bucketing hash, a number in ``[0, 1)``; ``None`` for an unknown version.

    Version 1: ``fnv(value + seed) % 1000 / 1000``. Version 2 hashes twice for a better
    distribution with related seeds: ``fnv(str(fnv(seed + value))) % 10000 / 10000``.
    """
    if version == 1:
        return (fnv1a32(value + seed) % 1000) / 1000
    if version == 2:
        return (fnv1a32(str(fnv1a32(seed + value))) % 10000) / 10000
    return None


def in_range(n: float, bucket: Sequence[float]) -> bool:
    """``start <= n < end``."""
    return bucket[0] <= n < bucket[1]


def get_equal_weights(num_variations: int) -> list[float]:
    """``num_variations`` equal weights summing to 1 (empty for ``<= 0``)."""
    if num_variations <= 0:
        return []
    return [1.0 / num_variations] * num_variations


def get_bucket_ranges(
    num_variations: int, coverage: float | None = 1.0, weights: Sequence[float] | None = None
) -> list[BucketRange]:
    """Bucket range of each variation: consecutive slices of ``[0, 1)`` sized by weight, of
    which only the first ``coverage`` share is used.

    Coverage is clamped to ``[0, 1]``. Weights of the wrong length, or not summing to 1
    within 0.01, are replaced by equal weights.
    """
    cov = 1.0 if coverage is None else min(max(float(coverage), 0.0), 1.0)
    equal = get_equal_weights(num_variations)
    chosen: Sequence[float] = equal if weights is None else weights
    if len(chosen) != num_variations:
        chosen = equal
    total = sum(chosen)
    if total < 0.99 or total > 1.01:
        chosen = equal
    ranges: list[BucketRange] = []
    cumulative = 0.0
    for w in chosen:
        start = cumulative
        cumulative += w
        ranges.append((start, start + cov * w))
    return ranges


def choose_variation(n: float, ranges: Sequence[Sequence[float]]) -> int:
    """Index of the first range containing ``n``, or ``-1`` (outside coverage)."""
    for index, bucket in enumerate(ranges):
        if in_range(n, bucket):
            return index
    return -1


def in_namespace(user_id: str, namespace: Sequence[Any]) -> bool:
    """Whether the user falls in the namespace ``(id, start, end)``: hash version 1 with
    seed ``"__" + id``, then ``start <= n < end``. Experiments in the same namespace with
    disjoint ranges never share a user."""
    n = hash("__" + str(namespace[0]), user_id, 1)
    if n is None:
        return False
    return float(namespace[1]) <= n < float(namespace[2])


# --- sticky bucketing ------------------------------------------------------------------


class StickyBucketStore(Protocol):
    """Where remembered assignments live, one document per (attribute name, value).

    ``get`` returns the document's assignments (``{"<experiment key>__<bucket version>":
    "<variation key>"}``), empty when there are none; ``save`` replaces them.
    """

    def get(self, attribute_name: str, attribute_value: str) -> Mapping[str, str]: ...

    def save(
        self, attribute_name: str, attribute_value: str, assignments: Mapping[str, str]
    ) -> None: ...


@dataclass
class InMemoryStickyBucketStore:
    """A dict-backed :class:`StickyBucketStore` (tests, single process)."""

    docs: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)

    def get(self, attribute_name: str, attribute_value: str) -> Mapping[str, str]:
        return dict(self.docs.get((attribute_name, attribute_value), {}))

    def save(
        self, attribute_name: str, attribute_value: str, assignments: Mapping[str, str]
    ) -> None:
        self.docs[(attribute_name, attribute_value)] = dict(assignments)

    def as_growthbook_docs(self) -> dict[str, dict[str, Any]]:
        """The documents keyed ``"<name>||<value>"`` as the SDK keeps them."""
        return {
            f"{name}||{value}": {
                "attributeName": name,
                "attributeValue": value,
                "assignments": dict(a),
            }
            for (name, value), a in self.docs.items()
        }


# --- the experiment run ----------------------------------------------------------------


@dataclass(frozen=True)
class ExperimentResult:
    """Outcome of :func:`assign`, field for field the SDK's experiment result."""

    in_experiment: bool
    variation_id: int
    value: Any
    hash_used: bool
    hash_attribute: str
    hash_value: Any
    key: str
    feature_id: str | None = None
    bucket: float | None = None
    sticky_bucket_used: bool = False
    name: str | None = None
    passthrough: bool | None = None
    reason: str = ""

    def as_growthbook_dict(self) -> dict[str, Any]:
        """The result in the SDK's camelCase shape (without Sartor's ``reason``)."""
        out: dict[str, Any] = {
            "featureId": self.feature_id,
            "hashAttribute": self.hash_attribute,
            "hashUsed": self.hash_used,
            "hashValue": self.hash_value,
            "inExperiment": self.in_experiment,
            "key": self.key,
            "stickyBucketUsed": self.sticky_bucket_used,
            "value": self.value,
            "variationId": self.variation_id,
        }
        if self.bucket is not None:
            out["bucket"] = self.bucket
        if self.name is not None:
            out["name"] = self.name
        if self.passthrough is not None:
            out["passthrough"] = self.passthrough
        return out


def _hash_attribute(
    attributes: Mapping[str, Any], attribute: Any, fallback: Any
) -> tuple[str, Any]:
    name = attribute if isinstance(attribute, str) and attribute else "id"
    value = attributes.get(name)
    if not js_truthy(value):
        value = ""
    if value == "" and isinstance(fallback, str) and fallback:
        fallback_value = attributes.get(fallback)
        if js_truthy(fallback_value):
            return fallback, fallback_value
    return name, value


def _sticky_string(value: Any) -> str:
    # the SDK's toString(): strings as they are, anything else as JSON
    return value if isinstance(value, str) else js_json(value)


def _variation_keys(experiment: Mapping[str, Any]) -> list[str]:
    meta = experiment.get("meta")
    count = len(experiment.get("variations") or [])
    keys: list[str] = []
    for i in range(count):
        entry = meta[i] if isinstance(meta, list) and i < len(meta) else None
        key = entry.get("key") if isinstance(entry, Mapping) else None
        keys.append(str(key) if key else str(i))
    return keys


def _sticky_key(experiment_key: str, bucket_version: int) -> str:
    return f"{experiment_key}__{bucket_version}"


def _sticky_assignments(
    store: StickyBucketStore, attributes: Mapping[str, Any], experiment: Mapping[str, Any]
) -> dict[str, str]:
    # fallback document first, so the hash attribute's own document wins on conflicts
    merged: dict[str, str] = {}
    for attribute in (experiment.get("fallbackAttribute"), experiment.get("hashAttribute")):
        name, value = _hash_attribute(attributes, attribute, None)
        if js_truthy(value):
            merged.update(store.get(name, _sticky_string(value)))
    return merged


def _sticky_variation(
    store: StickyBucketStore, attributes: Mapping[str, Any], experiment: Mapping[str, Any], key: str
) -> tuple[int, bool]:
    """(remembered variation or -1, whether an older blocked bucket version is remembered)."""
    assignments = _sticky_assignments(store, attributes, experiment)
    version = int(experiment.get("bucketVersion") or 0)
    min_version = int(experiment.get("minBucketVersion") or 0)
    for blocked in range(min_version):
        if _sticky_key(key, blocked) in assignments:
            return -1, True
    remembered = assignments.get(_sticky_key(key, version))
    if remembered is None:
        return -1, False
    keys = _variation_keys(experiment)
    return (keys.index(remembered) if remembered in keys else -1), False


def _filtered_out(filters: Sequence[Mapping[str, Any]], attributes: Mapping[str, Any]) -> bool:
    for f in filters:
        _, value = _hash_attribute(attributes, f.get("attribute"), None)
        if not js_truthy(value):
            return True
        n = hash(str(f.get("seed", "")), js_to_string(value), int(f.get("hashVersion") or 2))
        if n is None:
            return True
        if not any(in_range(n, r) for r in f.get("ranges") or []):
            return True
    return False


def assign(
    experiment: Mapping[str, Any],
    attributes: Mapping[str, Any] | None,
    *,
    feature_id: str | None = None,
    enabled: bool = True,
    qa_mode: bool = False,
    forced_variations: Mapping[str, int] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    saved_groups: Mapping[str, Sequence[Any]] | None = None,
    groups: Mapping[str, bool] | None = None,
    sticky_store: StickyBucketStore | None = None,
    evaluate_feature: Callable[[str], Any] | None = None,
) -> ExperimentResult:
    """Run ``experiment`` (a GrowthBook experiment definition: ``key``, ``variations``,
    ``weights``, ``coverage``, ``hashAttribute``, ``seed``...) for a user's ``attributes``.

    ``evaluate_feature(feature_id)`` returns a feature's value for ``parentConditions``
    (or :data:`CYCLIC_PREREQUISITE`); without it an experiment with prerequisites does
    not enroll anyone. See the module docstring for the steps and what is left out.
    """
    attrs: Mapping[str, Any] = attributes or {}
    exp: Mapping[str, Any] = experiment
    key = str(exp.get("key", ""))
    if overrides and key in overrides:
        exp = {**exp, **overrides[key]}
    variations: list[Any] = list(exp.get("variations") or [])
    sticky_on = sticky_store is not None and not exp.get("disableStickyBucketing")
    hash_attr, hash_value = _hash_attribute(
        attrs, exp.get("hashAttribute"), exp.get("fallbackAttribute") if sticky_on else None
    )
    keys = _variation_keys(exp)
    meta = exp.get("meta")

    def result(
        index: int,
        hash_used: bool,
        reason: str,
        bucket: float | None = None,
        sticky_used: bool = False,
    ) -> ExperimentResult:
        in_exp = 0 <= index < len(variations)
        if not in_exp:
            index = 0
        entry = meta[index] if isinstance(meta, list) and index < len(meta) else None
        entry = entry if isinstance(entry, Mapping) else {}
        return ExperimentResult(
            in_experiment=in_exp,
            variation_id=index,
            value=variations[index] if index < len(variations) else None,
            hash_used=hash_used,
            hash_attribute=hash_attr,
            hash_value=hash_value,
            key=keys[index] if index < len(keys) else str(index),
            feature_id=feature_id,
            bucket=bucket,
            sticky_bucket_used=sticky_used,
            name=entry.get("name") or None,
            passthrough=entry.get("passthrough"),
            reason="forced_out_of_range" if reason == "forced" and not in_exp else reason,
        )

    if len(variations) < 2:
        return result(-1, False, "too_few_variations")
    if not enabled:
        return result(-1, False, "disabled")
    if forced_variations and key in forced_variations:
        return result(int(forced_variations[key]), False, "forced_by_caller")
    if exp.get("status") == "draft" or exp.get("active") is False:
        return result(-1, False, "inactive")
    if not js_truthy(hash_value):
        return result(-1, False, "missing_hash_attribute")

    assigned = -1
    found_sticky = False
    version_blocked = False
    if sticky_on and sticky_store is not None:
        assigned, version_blocked = _sticky_variation(sticky_store, attrs, exp, key)
        found_sticky = assigned >= 0

    if not found_sticky:
        filters = exp.get("filters")
        namespace = exp.get("namespace")
        if filters is not None:
            if _filtered_out(filters, attrs):
                return result(-1, False, "filtered_out")
        elif namespace and not in_namespace(js_to_string(hash_value), namespace):
            return result(-1, False, "not_in_namespace")
        condition = exp.get("condition")
        if condition and not eval_condition(attrs, condition, saved_groups):
            return result(-1, False, "condition_failed")
        for parent in exp.get("parentConditions") or []:
            if evaluate_feature is None:
                return result(-1, False, "prerequisite_unavailable")
            parent_value = evaluate_feature(str(parent.get("id")))
            if parent_value is CYCLIC_PREREQUISITE:
                return result(-1, False, "cyclic_prerequisite")
            if not eval_condition(
                {"value": parent_value}, parent.get("condition") or {}, saved_groups
            ):
                return result(-1, False, "prerequisite_failed")
        exp_groups = exp.get("groups")
        if exp_groups is not None and not any((groups or {}).get(g) for g in exp_groups):
            return result(-1, False, "not_in_group")

    if exp.get("url") or exp.get("urlPatterns"):
        return result(-1, False, "url_targeting_not_supported")

    seed = exp.get("seed") or key
    n = hash(str(seed), js_to_string(hash_value), int(exp.get("hashVersion") or 1))
    if n is None:
        return result(-1, False, "unknown_hash_version")
    if not found_sticky:
        ranges = exp.get("ranges")
        if ranges is None:
            ranges = get_bucket_ranges(
                len(variations), exp.get("coverage", 1.0), exp.get("weights")
            )
        assigned = choose_variation(n, ranges)
    if version_blocked:
        return result(-1, False, "sticky_bucket_version_blocked", sticky_used=True)
    if assigned < 0:
        return result(-1, False, "not_in_coverage")
    if "force" in exp:
        force = exp["force"]
        return result(-1 if force is None else int(force), False, "forced")
    if qa_mode:
        return result(-1, False, "qa_mode")
    if exp.get("status") == "stopped":
        return result(-1, False, "stopped")

    out = result(
        assigned,
        True,
        "sticky_bucket" if found_sticky else "assigned",
        bucket=n,
        sticky_used=found_sticky,
    )
    if sticky_on and sticky_store is not None:
        doc_value = _sticky_string(hash_value)
        existing = dict(sticky_store.get(hash_attr, doc_value))
        sticky_id = _sticky_key(key, int(exp.get("bucketVersion") or 0))
        if existing.get(sticky_id) != out.key:
            sticky_store.save(hash_attr, doc_value, {**existing, sticky_id: out.key})
    return out
