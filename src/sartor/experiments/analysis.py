"""Experiment analysis from the event log.

Who is in the analysis: the ``exposures`` rows (one per person and experiment, with the
variation and the moment of first exposure). What is measured: each person's events in
the metric's window after their own first exposure (and, for CUPED, the same metric over
a window before it), reduced to sufficient statistics per variation
(:class:`~sartor.experiments.stats.SampleStats`, or
:class:`~sartor.experiments.stats.BivariateStats` for ratios and CUPED), then compared with
the pure core (:func:`~sartor.experiments.stats.analyze`,
:func:`~sartor.experiments.stats.verdict`).

Profiles merge (an anonymous visitor logs in): events move to the surviving profile, an
exposure row keeps the old id. Exposure ids that no longer name a profile are mapped to
the profile that absorbed them, through the identities that created them.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Connection, select

from sartor.collect.ingest import profile_id_for
from sartor.experiments.stats import (
    BivariateStats,
    Comparison,
    Inference,
    SampleStats,
    SequentialSettings,
    SrmResult,
    Summary,
    analyze,
    cuped_adjust,
    summarize,
    summarize_ratio,
    verdict,
)
from sartor.privacy.pii import derive_key
from sartor.storage.sql import chunks
from sartor.storage.tables import events, exposures, identities, profiles

DAY_MS = 86_400_000


@dataclass(frozen=True)
class Exposed:
    variation: str
    first_at: int


def exposed_profiles(
    conn: Connection, ws: str, experiment_key: str, secret: str, until: int | None = None
) -> dict[str, Exposed]:
    """Everyone exposed to the experiment (before ``until``), by current profile id."""
    query = select(exposures.c.profile_id, exposures.c.variation_key, exposures.c.first_at).where(
        exposures.c.workspace_id == ws, exposures.c.experiment_key == experiment_key
    )
    if until is not None:
        query = query.where(exposures.c.first_at < until)
    rows = conn.execute(query).all()
    pids = sorted({r.profile_id for r in rows})
    existing: set[str] = set()
    for part in chunks(pids):
        existing.update(
            conn.execute(
                select(profiles.c.profile_id).where(
                    profiles.c.workspace_id == ws, profiles.c.profile_id.in_(part)
                )
            ).scalars()
        )
    remap: dict[str, str] = {}
    missing = set(pids) - existing
    if missing:
        key = derive_key(secret, ws, "profile")
        links = conn.execute(
            select(identities.c.kind, identities.c.value, identities.c.profile_id).where(
                identities.c.workspace_id == ws
            )
        )
        for kind, value, pid in links:
            trace = profile_id_for(key, kind, value)
            if trace in missing:
                remap[trace] = pid
    out: dict[str, Exposed] = {}
    for r in sorted(rows, key=lambda r: (r.first_at, r.variation_key)):
        pid = remap.get(r.profile_id, r.profile_id)
        if pid not in out and (pid in existing or r.profile_id in remap):
            out[pid] = Exposed(r.variation_key, int(r.first_at))
    return out


# --- per-person values -----------------------------------------------------------------


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if not isinstance(value, int | float | str):
        return None
    try:
        parsed = float(value)
    except (ValueError, OverflowError):
        return None
    return parsed if math.isfinite(parsed) else None


def _event_value(props: Mapping[str, Any], prop: str | None, revenue: bool) -> float | None:
    if prop is not None:
        return _number(props.get(prop))
    if revenue:  # Segment's ecommerce spec: `revenue`, else `total`
        value = _number(props.get("revenue"))
        return value if value is not None else _number(props.get("total"))
    return 1.0


@dataclass
class _Acc:
    count: int = 0
    total: float = 0.0
    values: int = 0
    top: float = -math.inf

    def add(self, value: float | None) -> None:
        self.count += 1
        if value is not None:
            self.total += value
            self.values += 1
            self.top = max(self.top, value)


def _measures(metric: Mapping[str, Any]) -> list[tuple[str, str | None, bool]]:
    """(event, property, revenue default) of each part: one, or numerator and denominator."""
    if metric["type"] == "ratio":
        return [
            (metric["numerator"]["event"], metric["numerator"]["property"], False),
            (metric["denominator"]["event"], metric["denominator"]["property"], False),
        ]
    return [(metric["event"], metric["property"], metric["type"] == "revenue")]


def _final(metric: Mapping[str, Any], acc: _Acc, part: int) -> float | None:
    kind = metric["type"]
    if kind == "conversion":
        return 1.0 if acc.count else 0.0
    if kind == "revenue":
        return acc.total
    if kind == "ratio":
        prop = metric["numerator" if part == 0 else "denominator"]["property"]
        return acc.total if prop is not None else float(acc.count)
    aggregate = metric["aggregate"]
    if aggregate == "count":
        return float(acc.count)
    if aggregate == "sum":
        return acc.total
    if not acc.values:
        return None  # avg / max: people without a value are not in the metric
    return acc.total / acc.values if aggregate == "avg" else acc.top


def person_values(
    conn: Connection,
    ws: str,
    exposed: Mapping[str, Exposed],
    metric: Mapping[str, Any],
    until: int | None = None,
) -> dict[str, tuple[float, float | None, float | None]]:
    """Per exposed person: ``(value, denominator or None, pre-exposure value or None)``;
    people without a value (``avg``/``max`` metrics) are left out."""
    if not exposed:
        return {}
    parts = _measures(metric)
    window = metric["windowDays"] * DAY_MS if metric["windowDays"] is not None else None
    pre = metric["cupedDays"] * DAY_MS if metric["cuped"] else 0
    firsts = [e.first_at for e in exposed.values()]
    lo = min(firsts) - int(pre)
    hi = max(firsts) + int(window) if window is not None else None
    if until is not None:
        hi = until if hi is None else min(hi, until)
    names = sorted({p[0] for p in parts})
    needs_props = any(p[1] is not None or p[2] for p in parts)
    accs: dict[tuple[str, int, bool], _Acc] = defaultdict(_Acc)  # (pid, part, before)
    t = events
    columns = [t.c.profile_id, t.c.event, t.c.timestamp]
    if needs_props:
        columns.append(t.c.payload)
    for part_pids in chunks(sorted(exposed)):
        query = select(*columns).where(
            t.c.workspace_id == ws,
            t.c.type == "track",
            t.c.event.in_(names),
            t.c.profile_id.in_(part_pids),
            t.c.timestamp >= lo,
        )
        if hi is not None:
            query = query.where(t.c.timestamp < hi)
        for row in conn.execute(query):
            e = exposed[row.profile_id]
            ts = int(row.timestamp)
            if e.first_at <= ts:
                if window is not None and ts >= e.first_at + window:
                    continue
                if until is not None and ts >= until:
                    continue
                before = False
            elif pre and ts >= e.first_at - pre:
                before = True
            else:
                continue
            props: Mapping[str, Any] = {}
            if needs_props:
                raw = (row.payload or {}).get("properties")
                props = raw if isinstance(raw, Mapping) else {}
            for i, (event, prop, revenue) in enumerate(parts):
                if row.event == event:
                    accs[(row.profile_id, i, before)].add(_event_value(props, prop, revenue))
    out: dict[str, tuple[float, float | None, float | None]] = {}
    empty = _Acc()
    for pid in exposed:
        value = _final(metric, accs.get((pid, 0, False), empty), 0)
        if value is None:
            continue
        denominator = (
            _final(metric, accs.get((pid, 1, False), empty), 1) if len(parts) > 1 else None
        )
        pre_value = _final(metric, accs.get((pid, 0, True), empty), 0) if pre else None
        out[pid] = (value, denominator, pre_value)
    return out


def sample_stats(
    values: Mapping[str, tuple[float, float | None, float | None]],
    exposed: Mapping[str, Exposed],
    keys: Sequence[str],
) -> list[SampleStats]:
    """Per variation, the statistics of the per-person values (no ratio, no CUPED)."""
    lists: dict[str, list[float]] = {k: [] for k in keys}
    for pid, (value, _, _) in values.items():
        v = exposed[pid].variation
        if v in lists:
            lists[v].append(value)
    return [SampleStats.from_values(lists[k]) for k in keys]


# --- reports ---------------------------------------------------------------------------


def _finite(x: float) -> float | None:
    return x if isinstance(x, float | int) and math.isfinite(x) else None


def _inference(i: Inference) -> dict[str, Any]:
    return {
        "estimate": _finite(i.estimate),
        "se": _finite(i.se),
        "lower": _finite(i.lower),
        "upper": _finite(i.upper),
        "pValue": _finite(i.p_value),
    }


def srm_doc(srm: SrmResult) -> dict[str, Any]:
    return {
        "chi2": _finite(srm.chi2),
        "pValue": _finite(srm.p_value),
        "flagged": srm.flagged,
        "observed": list(srm.observed),
        "expected": [round(e, 3) for e in srm.expected],
    }


def _oriented(c: Comparison, higher_is_better: bool) -> Comparison:
    """For a lower-is-better metric, "winning" is going down: swap the Bayesian sides."""
    if higher_is_better:
        return c
    ctw = c.chance_to_win
    return replace(
        c,
        chance_to_win=1 - ctw if not math.isnan(ctw) else ctw,
        expected_loss=c.expected_loss_control,
        expected_loss_control=c.expected_loss,
    )


def _verdict(
    c: Comparison,
    name: str,
    control: str,
    treatment: str,
    higher_is_better: bool,
    srm: SrmResult | None,
    min_units: int,
) -> tuple[str, str]:
    """(sentence, direction better/worse/inconclusive) with the metric's orientation."""
    text = verdict(
        c,
        metric=name,
        control_name=control,
        treatment_name=treatment,
        srm=srm,
        min_units=min_units,
    )
    beats, loses = f"{treatment} beats {control} ", f"{treatment} loses to {control} "
    if not higher_is_better:
        if text.startswith(beats):
            text = loses + text[len(beats) :]
        elif text.startswith(loses):
            text = beats + text[len(loses) :]
    if text.startswith(beats):
        return text, "better"
    if text.startswith(loses):
        return text, "worse"
    return text, "inconclusive"


def metric_report(
    metric: Mapping[str, Any],
    values: Mapping[str, tuple[float, float | None, float | None]],
    exposed: Mapping[str, Exposed],
    keys: Sequence[str],
    settings: Mapping[str, Any],
    srm: SrmResult | None,
    control_index: int = 0,
) -> dict[str, Any]:
    """The metric per variation and every variation against the control, with verdicts."""
    pairs: dict[str, list[tuple[float, float]]] = {k: [] for k in keys}
    for pid, (value, denominator, before) in values.items():
        v = exposed[pid].variation
        if v not in pairs:
            continue
        if metric["type"] == "ratio":
            pairs[v].append((denominator or 0.0, value))
        else:
            pairs[v].append((before or 0.0, value))
    bivariate = [
        BivariateStats.from_values([x for x, _ in pairs[k]], [y for _, y in pairs[k]]) for k in keys
    ]
    per_variation: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    summaries: list[Summary]
    if metric["type"] == "ratio":
        summaries = [summarize_ratio(b) for b in bivariate]
    else:
        raw = [SampleStats(b.n, b.sum_y, b.sum_y2) for b in bivariate]
        summaries = [summarize(s) for s in raw]
        if metric["cuped"]:
            adjusted = cuped_adjust(bivariate)
            summaries = list(adjusted.summaries)
            extra["cuped"] = {
                "theta": _finite(adjusted.theta),
                "varianceReduction": [_finite(r) for r in adjusted.variance_reduction],
            }
    for k, b, s in zip(keys, bivariate, summaries, strict=True):
        doc: dict[str, Any] = {
            "key": k,
            "users": b.n,
            "value": _finite(s.mean),
            "variance": _finite(s.variance),
        }
        if metric["type"] == "ratio":
            doc.update(numerator=b.sum_y, denominator=b.sum_x)
        else:
            doc["total"] = b.sum_y
            if metric["type"] == "conversion":
                doc["conversions"] = int(round(b.sum_y))
        per_variation.append(doc)
    treatments = [k for i, k in enumerate(keys) if i != control_index]
    control = keys[control_index]
    comparisons: list[Comparison] = []
    if min(s.n for s in summaries) >= 2:  # below that there is no variance to test with
        try:
            comparisons = analyze(
                summaries,
                control_index=control_index,
                alpha=settings["alpha"],
                difference_type=settings["differenceType"],
                sequential=SequentialSettings(settings["sequentialTuning"])
                if settings["sequential"]
                else None,
                correction=settings["correction"],
            )
        except (ArithmeticError, ValueError):  # degenerate data (all zero, no variance)
            comparisons = []
    if not comparisons:
        empty = {"estimate": None, "se": None, "lower": None, "upper": None, "pValue": None}
        text = (
            "sample ratio mismatch: results untrustworthy"
            if srm and srm.flagged
            else ("not enough data yet")
        )
        placeholder = {
            "relative": empty,
            "absolute": empty,
            "pValue": None,
            "significant": False,
            "chanceToWin": None,
            "expectedLoss": None,
            "direction": "inconclusive",
            "verdict": text,
        }
        return {
            "metric": dict(metric),
            "name": metric["name"],
            "variations": per_variation,
            "comparisons": [
                {"variation": k, "control": control, **placeholder} for k in treatments
            ],
            **extra,
        }
    out_comparisons: list[dict[str, Any]] = []
    for key, raw_c in zip(treatments, comparisons, strict=True):
        c = _oriented(raw_c, metric["higherIsBetter"])
        text, direction = _verdict(
            c, metric["name"], control, key, metric["higherIsBetter"], srm, settings["minUnits"]
        )
        out_comparisons.append(
            {
                "variation": key,
                "control": control,
                "relative": _inference(c.relative),
                "absolute": _inference(c.absolute),
                "pValue": _finite(c.p_value),
                "significant": c.significant,
                "chanceToWin": _finite(c.chance_to_win),
                "expectedLoss": _finite(c.expected_loss),
                "direction": direction,
                "verdict": text,
            }
        )
    return {
        "metric": dict(metric),
        "name": metric["name"],
        "variations": per_variation,
        "comparisons": out_comparisons,
        **extra,
    }
