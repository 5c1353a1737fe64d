"""Rule segments: a JSON condition tree, validated once and compiled to closures.

    {"and": [
        {"property": "computed.orders", "op": "gte", "value": 3},
        {"not": {"property": "traits.country", "op": "in", "value": ["FR", "DE"]}},
        {"event": "Order Completed", "where": [{"property": "total", "op": "gt", "value": 50}],
         "min_count": 2, "within_days": 90},
        {"segment": "newsletter"}, {"rfm": "Champions"}, {"cluster": "bargain-hunters"}
    ]}

Profile properties are dotted paths into the profile document (``traits.plan``,
``computed.rfm.recency_days``, ``consent.marketing.granted``). Past-event conditions count
the person's events by name, property filters and time window; membership conditions
look at the segments the profile is already in (``rfm:<group>``, ``cluster:<name>``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sartor.collect.errors import FieldError

TIME_OPS = ("within_days", "older_than_days")
OPS = (
    *TIME_OPS,
    "equals",
    "not_equals",
    "gt",
    "gte",
    "lt",
    "lte",
    "between",
    "in",
    "not_in",
    "exists",
    "missing",
    "contains",
    "starts_with",
    "matches",
)
_MISSING = object()
MAX_DEPTH = 20
MAX_CONDITIONS = 200


@dataclass(frozen=True)
class EventCondition:
    """A past-event condition, as the evaluator's event counter receives it."""

    event: str
    where: tuple[tuple[str, str, Any], ...]
    min_count: int
    max_count: int | None
    within_days: float | None
    since: int | None
    until: int | None

    def decide(self, known: tuple[int, int] | None) -> bool | None:
        """Whether a count within ``known`` (least, most) meets the condition, when every
        count in that range gives the same answer; None when it takes counting."""
        if known is None:
            return None
        least, most = known
        if most < self.min_count or (self.max_count is not None and least > self.max_count):
            return False
        if least >= self.min_count and (self.max_count is None or most <= self.max_count):
            return True
        return None

    def matches(self, props: Mapping[str, Any]) -> bool:
        return all(
            _compare(op, lookup(props, path), value)
            for path, op, value in self.where
            if op not in TIME_OPS
        )


@dataclass
class Context:
    """What a rule may look at besides the profile document."""

    now: int
    memberships: frozenset[str] = frozenset()
    count_events: Callable[[EventCondition], int] | None = None
    # Bounds ``(least, most)`` of a condition's count known without counting (from the
    # folded profile), or None: most people are decided without a query.
    event_range: Callable[[EventCondition], tuple[int, int] | None] | None = None
    _counts: dict[EventCondition, int] = field(default_factory=dict)

    def events(self, cond: EventCondition) -> int:
        if cond not in self._counts:
            if self.count_events is None:
                raise RuntimeError("this rule needs an event counter")
            self._counts[cond] = self.count_events(cond)
        return self._counts[cond]


Predicate = Callable[[Mapping[str, Any], Context], bool]


def lookup(doc: Mapping[str, Any], path: str) -> Any:
    return _walk(doc, path.split("."))


def _walk(doc: Mapping[str, Any], parts: tuple[str, ...] | list[str]) -> Any:
    cur: Any = doc
    for part in parts:
        if isinstance(cur, Mapping) and part in cur:
            cur = cur[part]
        else:
            return _MISSING
    return cur


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _order(a: Any, b: Any) -> tuple[Any, Any] | None:
    """Comparable pair: two numbers, or two strings (ISO dates compare as strings)."""
    na, nb = _num(a), _num(b)
    if na is not None and nb is not None:
        return na, nb
    if isinstance(a, str) and isinstance(b, str):
        return a, b
    return None


def _compare(op: str, actual: Any, expected: Any) -> bool:
    if op == "exists":
        return actual is not _MISSING and actual is not None
    if op == "missing":
        return actual is _MISSING or actual is None
    if actual is _MISSING or actual is None:
        return op in ("not_equals", "not_in")
    if op == "equals":
        return bool(actual == expected)
    if op == "not_equals":
        return bool(actual != expected)
    if op == "in":
        return actual in expected
    if op == "not_in":
        return actual not in expected
    if op in ("gt", "gte", "lt", "lte"):
        pair = _order(actual, expected)
        if pair is None:
            return False
        a, b = pair
        return {"gt": a > b, "gte": a >= b, "lt": a < b, "lte": a <= b}[op]
    if op == "between":
        lo, hi = _order(actual, expected[0]), _order(actual, expected[1])
        return lo is not None and hi is not None and lo[1] <= lo[0] and hi[0] <= hi[1]
    if op == "contains":
        if isinstance(actual, str):
            return isinstance(expected, str) and expected in actual
        if isinstance(actual, list | Mapping):
            return expected in actual
        return False
    if op == "starts_with":
        return isinstance(actual, str) and actual.startswith(expected)
    if op == "matches":
        return isinstance(actual, str) and expected.search(actual) is not None
    raise AssertionError(op)


def _as_ms(value: Any) -> int | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        from sartor.collect.messages import parse_timestamp

        try:
            return parse_timestamp(value)
        except ValueError:
            return None
    return None


def _time_compare(op: str, actual: Any, days: float, now: int) -> bool:
    """``within_days``: the time is at most ``days`` before now; ``older_than_days``: more."""
    ms = _as_ms(actual) if actual is not _MISSING else None
    if ms is None:
        return False
    age = now - ms
    return age <= days * 86_400_000 if op == "within_days" else age > days * 86_400_000


def _check_value(op: str, value: Any, path: str) -> Any:
    if op in ("exists", "missing"):
        return None
    if op in TIME_OPS:
        if _num(value) is None or value <= 0:
            raise FieldError(f"{path}.value", f"`{op}` takes a positive number of days")
        return float(value)
    if op in ("in", "not_in"):
        if not isinstance(value, list):
            raise FieldError(f"{path}.value", f"`{op}` takes a list")
        return value
    if op == "between":
        if not (isinstance(value, list) and len(value) == 2):
            raise FieldError(f"{path}.value", "`between` takes [low, high]")
        return value
    if op == "matches":
        if not isinstance(value, str) or len(value) > 500:
            raise FieldError(f"{path}.value", "`matches` takes a regular expression string")
        try:
            return re.compile(value)
        except re.error as exc:
            raise FieldError(f"{path}.value", f"invalid regular expression: {exc}") from None
    if op in ("starts_with",) and not isinstance(value, str):
        raise FieldError(f"{path}.value", f"`{op}` takes a string")
    if op in ("gt", "gte", "lt", "lte") and _num(value) is None and not isinstance(value, str):
        raise FieldError(f"{path}.value", f"`{op}` takes a number or a string")
    return value


def _property(node: Mapping[str, Any], path: str) -> tuple[str, str, Any]:
    prop, op = node.get("property"), node.get("op")
    if not isinstance(prop, str) or not prop.strip():
        raise FieldError(f"{path}.property", "is required: a dotted path such as traits.plan")
    if op not in OPS:
        raise FieldError(f"{path}.op", f"must be one of {', '.join(OPS)}")
    if op not in ("exists", "missing") and "value" not in node:
        raise FieldError(f"{path}.value", "is required")
    return prop, op, _check_value(op, node.get("value"), path)


class Compiler:
    def __init__(self) -> None:
        self.count = 0
        self.references: set[str] = set()
        self.needs_events = False
        self.time_based = False

    def compile(self, node: Any, path: str = "definition", depth: int = 0) -> Predicate:
        self.count += 1
        if depth > MAX_DEPTH or self.count > MAX_CONDITIONS:
            raise FieldError(
                path, f"rules are limited to depth {MAX_DEPTH} and {MAX_CONDITIONS} conditions"
            )
        if not isinstance(node, Mapping):
            raise FieldError(path, "must be an object (a condition)")
        for combinator in ("and", "or"):
            if combinator in node:
                items = node[combinator]
                if not isinstance(items, list) or not items:
                    raise FieldError(
                        f"{path}.{combinator}", "must be a non-empty list of conditions"
                    )
                subs = [
                    self.compile(c, f"{path}.{combinator}[{i}]", depth + 1)
                    for i, c in enumerate(items)
                ]
                if combinator == "and":
                    return lambda p, c: all(s(p, c) for s in subs)
                return lambda p, c: any(s(p, c) for s in subs)
        if "not" in node:
            sub = self.compile(node["not"], f"{path}.not", depth + 1)
            return lambda p, c: not sub(p, c)
        if "property" in node:
            prop, op, value = _property(node, path)
            parts = tuple(prop.split("."))  # split once, not on every evaluation
            if op in TIME_OPS:
                self.time_based = True
                return lambda p, c: _time_compare(op, _walk(p, parts), value, c.now)
            if prop.startswith("computed.rfm.recency") or prop.startswith("computed.intent"):
                self.time_based = True
            return lambda p, c: _compare(op, _walk(p, parts), value)
        if "event" in node:
            cond = self._event(node, path)
            self.needs_events = True
            self.time_based = self.time_based or cond.within_days is not None
            lo, hi = cond.min_count, cond.max_count

            def counted(p: Mapping[str, Any], c: Context) -> bool:
                known = c.event_range(cond) if c.event_range is not None else None
                decided = cond.decide(known)
                if decided is not None:
                    return decided
                n = c.events(cond)
                return lo <= n and (hi is None or n <= hi)

            return counted
        for kind, prefix in (("segment", ""), ("rfm", "rfm:"), ("cluster", "cluster:")):
            if kind in node:
                name = node[kind]
                if not isinstance(name, str) or not name:
                    raise FieldError(f"{path}.{kind}", "must be a name")
                key = prefix + name
                self.references.add(key)
                return lambda p, c: key in c.memberships
        raise FieldError(
            path, "unknown condition: use and, or, not, property, event, segment, rfm or cluster"
        )

    def _event(self, node: Mapping[str, Any], path: str) -> EventCondition:
        name = node.get("event")
        if not isinstance(name, str) or not name:
            raise FieldError(f"{path}.event", "must be an event name")
        where_raw = node.get("where", [])
        if not isinstance(where_raw, list):
            raise FieldError(f"{path}.where", "must be a list of property conditions")
        where = tuple(
            _property(w, f"{path}.where[{i}]")
            if isinstance(w, Mapping)
            else _raise(f"{path}.where[{i}]")
            for i, w in enumerate(where_raw)
        )
        min_count = node.get("min_count", 1)
        max_count = node.get("max_count")
        for key, v in (("min_count", min_count), ("max_count", max_count)):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                raise FieldError(f"{path}.{key}", "must be a whole number >= 0")
        within = node.get("within_days")
        if within is not None and (_num(within) is None or within <= 0):
            raise FieldError(f"{path}.within_days", "must be a positive number of days")
        since, until = node.get("since"), node.get("until")
        from sartor.collect.messages import parse_timestamp

        try:
            since_ms, until_ms = parse_timestamp(since), parse_timestamp(until)
        except ValueError as exc:
            raise FieldError(f"{path}.since", str(exc)) from None
        return EventCondition(
            name,
            where,
            int(min_count),
            max_count,
            float(within) if within else None,
            since_ms,
            until_ms,
        )


def _raise(path: str) -> Any:
    raise FieldError(path, "must be a property condition")


@dataclass
class Rule:
    definition: Any
    predicate: Predicate
    references: frozenset[str]
    needs_events: bool
    time_based: bool

    def __call__(self, profile: Mapping[str, Any], ctx: Context) -> bool:
        return self.predicate(profile, ctx)


def compile_rule(definition: Any) -> Rule:
    """Validate and compile a condition tree; :class:`FieldError` names the bad part."""
    compiler = Compiler()
    predicate = compiler.compile(definition)
    return Rule(
        definition,
        predicate,
        frozenset(compiler.references),
        compiler.needs_events,
        compiler.time_based,
    )
