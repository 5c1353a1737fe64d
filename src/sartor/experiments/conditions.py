"""GrowthBook targeting conditions (the MongoDB-like rule language of the SDK spec).

A condition is a JSON object whose keys are attribute paths (``"father.age"``) or the
logical operators ``$or``, ``$nor``, ``$and`` and ``$not``; the value for a path is either a
literal to compare with, or an object of operators (``$eq``, ``$in``, ``$regex``, ``$vgt``,
``$elemMatch``, ``$inGroup``...). :func:`eval_condition` decides whether an attribute
document matches.

GrowthBook's reference SDK is JavaScript, and the conformance cases encode its coercions:
``{"n": {"$gt": 5}}`` matches ``{"n": "8"}``, a missing attribute compares like ``null``
(``0`` in arithmetic comparisons), string literals match ``String(value)``. The helpers
prefixed ``js_`` reproduce the few JavaScript semantics involved (``String(x)``,
``JSON.stringify``, ``Number(x)``, truthiness, strict equality, relational comparison with
UTF-16 string order) so the evaluation agrees with the JS SDK on JSON data.

Known difference: ``$regex`` patterns are compiled with Python's :mod:`re`, which accepts
the common JavaScript syntax but not all of it (for example ``(?<name>...)`` groups); a
pattern that does not compile never matches, as an invalid pattern does in the SDK.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "eval_condition",
    "eval_condition_value",
    "get_path",
    "js_json",
    "js_to_number",
    "js_to_string",
    "js_truthy",
    "padded_version_string",
]

SavedGroups = Mapping[str, Sequence[Any]]

_JS_DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)")
_JS_WHITESPACE = " \t\n\v\f\r\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
_JS_WHITESPACE += "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
_REGEX_CACHE: dict[tuple[str, bool], re.Pattern[str] | None] = {}


# --- JavaScript value semantics -------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def js_truthy(value: Any) -> bool:
    """``Boolean(value)`` in JavaScript: ``null``, ``false``, ``0``, ``NaN`` and ``""`` are
    falsy; every array and object (even empty) is truthy."""
    if value is None or value is False:
        return False
    if _is_number(value):
        return not (value == 0 or (isinstance(value, float) and math.isnan(value)))
    if isinstance(value, str):
        return value != ""
    return True


def _number_to_string(x: float | int) -> str:
    """``Number.prototype.toString()`` for a finite or special number."""
    if isinstance(x, int):
        return str(x)
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    if x == 0:
        return "0"
    sign = "-" if x < 0 else ""
    # repr gives the shortest round-tripping digits, as JavaScript does; only the layout
    # (where the decimal point goes, when to switch to exponent form) differs.
    mantissa, _, exp_text = repr(abs(x)).partition("e")
    int_part, _, frac_part = mantissa.partition(".")
    digits = (int_part + frac_part).lstrip("0")
    # position of the decimal point relative to the first significant digit
    point = len(int_part) + (int(exp_text) if exp_text else 0)
    if int_part == "0":
        leading_zeros = len(frac_part) - len(frac_part.lstrip("0"))
        point = -leading_zeros + (int(exp_text) if exp_text else 0)
    digits = digits.rstrip("0") or "0"
    k = len(digits)
    if k <= point <= 21:
        body = digits + "0" * (point - k)
    elif 0 < point <= 21:
        body = digits[:point] + "." + digits[point:]
    elif -6 < point <= 0:
        body = "0." + "0" * (-point) + digits
    else:
        exponent = point - 1
        body = digits[0] + ("." + digits[1:] if k > 1 else "")
        body += "e" + ("+" if exponent >= 0 else "-") + str(abs(exponent))
    return sign + body


def js_to_string(value: Any) -> str:
    """``String(value)`` (also what ``value + ""`` gives) for JSON-like values."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return value
    if _is_number(value):
        return _number_to_string(value)
    if isinstance(value, list | tuple):
        return ",".join("" if v is None else js_to_string(v) for v in value)
    return "[object Object]"


def js_json(value: Any) -> str:
    """``JSON.stringify(value)`` for JSON-like values (keys in insertion order)."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if _is_number(value):
        if isinstance(value, float) and not math.isfinite(value):
            return "null"
        return _number_to_string(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(js_json(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(js_json(str(k)) + ":" + js_json(v) for k, v in value.items()) + "}"
    return "null"


def js_to_number(value: Any) -> float:
    """``Number(value)`` for JSON-like values (``NaN`` when not numeric)."""
    if value is None or value is False:
        return 0.0
    if value is True:
        return 1.0
    if _is_number(value):
        return float(value)
    if isinstance(value, list | tuple):
        return js_to_number(js_to_string(value))
    if not isinstance(value, str):
        return math.nan
    text = value.strip(_JS_WHITESPACE)
    if text == "":
        return 0.0
    if text in ("Infinity", "+Infinity"):
        return math.inf
    if text == "-Infinity":
        return -math.inf
    lowered = text.lower()
    for prefix, base in (("0x", 16), ("0o", 8), ("0b", 2)):
        if lowered.startswith(prefix):
            try:
                return float(int(text[2:], base)) if text[2:].isalnum() else math.nan
            except ValueError:
                return math.nan
    if _JS_DECIMAL.fullmatch(text):
        return float(text)
    return math.nan


def _js_strict_equal(a: Any, b: Any) -> bool:
    """``a === b`` for JSON-like values (objects and arrays compare by identity)."""
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    if isinstance(a, bool) and isinstance(b, bool):
        return a is b
    if isinstance(a, str) and isinstance(b, str):
        return a == b
    if a is None or b is None:
        return a is None and b is None
    return a is b


def _same_value_zero(a: Any, b: Any) -> bool:
    """``Array.prototype.includes`` equality: strict equality, except ``NaN`` equals itself."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return _js_strict_equal(a, b)


def _utf16_key(text: str) -> bytes:
    # Big-endian UTF-16 bytes sort exactly like JavaScript compares strings (by code unit).
    return text.encode("utf-16-be", "surrogatepass")


def _js_compare(a: Any, b: Any) -> int | None:
    """Sign of ``a - b`` under JavaScript's relational comparison; ``None`` when undefined
    (a ``NaN`` is involved), which makes every one of ``< <= > >=`` false."""
    if isinstance(a, list | tuple | Mapping):
        a = js_to_string(a)
    if isinstance(b, list | tuple | Mapping):
        b = js_to_string(b)
    if isinstance(a, str) and isinstance(b, str):
        ka, kb = _utf16_key(a), _utf16_key(b)
        return (ka > kb) - (ka < kb)
    x, y = js_to_number(a), js_to_number(b)
    if math.isnan(x) or math.isnan(y):
        return None
    return (x > y) - (x < y)


def _js_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if _is_number(value):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return "unknown"


# --- conditions ------------------------------------------------------------------------


def get_path(obj: Any, path: str) -> Any:
    """Value at a dot-separated path; ``None`` when any step is missing (so a missing
    attribute and a ``null`` one are the same to every operator)."""
    current = obj
    for part in path.split("."):
        if isinstance(current, Mapping):
            if part not in current:
                return None
            current = current[part]
        elif isinstance(current, list | tuple):
            if part == "length":
                current = len(current)
            elif part.isdigit() and (part == "0" or not part.startswith("0")):
                index = int(part)
                if index >= len(current):
                    return None
                current = current[index]
            else:
                return None
        else:
            return None
    return current


def padded_version_string(value: Any) -> str:
    """A string that sorts like the version it encodes: drop a leading ``v`` and any build
    metadata, split on ``.``/``-``, mark a release (exactly three parts) with ``~`` so it
    sorts after its pre-releases, and left-pad numeric parts to width 5."""
    if _is_number(value):
        value = js_to_string(value)
    if not isinstance(value, str) or value == "":
        value = "0"
    parts = re.split(r"[-.]", re.sub(r"^v|\+.*\Z", "", value))
    if len(parts) == 3:
        parts.append("~")
    return "-".join(p.rjust(5) if re.fullmatch(r"[0-9]+", p) else p for p in parts)


def _regex(pattern: Any, insensitive: bool) -> re.Pattern[str] | None:
    if not isinstance(pattern, str):
        return None
    key = (pattern, insensitive)
    if key not in _REGEX_CACHE:
        try:
            _REGEX_CACHE[key] = re.compile(pattern, re.IGNORECASE if insensitive else 0)
        except (re.error, OverflowError, RecursionError):
            _REGEX_CACHE[key] = None
    return _REGEX_CACHE[key]


def _is_operator_object(value: Any) -> bool:
    return (
        isinstance(value, Mapping)
        and len(value) > 0
        and all(isinstance(k, str) and k.startswith("$") for k in value)
    )


def _fold(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _is_in(actual: Any, expected: Sequence[Any], insensitive: bool = False) -> bool:
    if insensitive:
        if isinstance(actual, list | tuple):
            return any(_same_value_zero(_fold(a), _fold(e)) for a in actual for e in expected)
        return any(_same_value_zero(_fold(actual), _fold(e)) for e in expected)
    if isinstance(actual, list | tuple):
        return any(_same_value_zero(a, e) for a in actual for e in expected)
    return any(_same_value_zero(actual, e) for e in expected)


def _is_in_all(
    actual: Any, expected: Sequence[Any], groups: SavedGroups, insensitive: bool
) -> bool:
    if not isinstance(actual, list | tuple):
        return False
    return all(
        any(eval_condition_value(e, a, groups, insensitive) for a in actual) for e in expected
    )


def _elem_match(actual: Any, expected: Any, groups: SavedGroups) -> bool:
    if not isinstance(actual, list | tuple):
        return False
    operator = _is_operator_object(expected)
    for element in actual:
        # the SDK skips falsy elements (0, "", null, false) before testing
        if not js_truthy(element):
            continue
        if operator:
            if eval_condition_value(expected, element, groups):
                return True
        elif isinstance(expected, Mapping) and eval_condition(element, expected, groups):
            return True
    return False


def _eval_operator(op: str, actual: Any, expected: Any, groups: SavedGroups) -> bool:
    if op in ("$veq", "$vne", "$vgt", "$vgte", "$vlt", "$vlte"):
        a = _utf16_key(padded_version_string(actual))
        e = _utf16_key(padded_version_string(expected))
        return {
            "$veq": a == e,
            "$vne": a != e,
            "$vgt": a > e,
            "$vgte": a >= e,
            "$vlt": a < e,
            "$vlte": a <= e,
        }[op]
    if op == "$eq":
        return _js_strict_equal(actual, expected)
    if op == "$ne":
        return not _js_strict_equal(actual, expected)
    if op in ("$lt", "$lte", "$gt", "$gte"):
        sign = _js_compare(actual, expected)
        if sign is None:
            return False
        return {"$lt": sign < 0, "$lte": sign <= 0, "$gt": sign > 0, "$gte": sign >= 0}[op]
    if op == "$exists":
        return (actual is not None) if js_truthy(expected) else (actual is None)
    if op in ("$in", "$ini", "$nin", "$nini"):
        if not isinstance(expected, list | tuple):
            return False
        found = _is_in(actual, expected, insensitive=op.endswith("i"))
        return found if op in ("$in", "$ini") else not found
    if op in ("$inGroup", "$notInGroup"):
        members = groups.get(expected, ()) if isinstance(expected, str) else ()
        found = _is_in(actual, list(members))
        return found if op == "$inGroup" else not found
    if op == "$not":
        return not eval_condition_value(expected, actual, groups)
    if op == "$size":
        if not isinstance(actual, list | tuple):
            return False
        return eval_condition_value(expected, len(actual), groups)
    if op == "$elemMatch":
        return _elem_match(actual, expected, groups)
    if op in ("$all", "$alli"):
        if not isinstance(expected, list | tuple):
            return False
        return _is_in_all(actual, expected, groups, insensitive=op == "$alli")
    if op in ("$regex", "$regexi"):
        pattern = _regex(expected, insensitive=op == "$regexi")
        return pattern is not None and pattern.search(js_to_string(actual)) is not None
    if op == "$type":
        return _js_type(actual) == expected
    return False  # unknown operator: never matches


def eval_condition_value(
    condition: Any, value: Any, saved_groups: SavedGroups | None = None, insensitive: bool = False
) -> bool:
    """Does ``value`` (an attribute) satisfy ``condition`` (a literal or operator object)?"""
    groups: SavedGroups = saved_groups or {}
    if isinstance(condition, str):
        if insensitive:
            return js_to_string(value).lower() == condition.lower()
        return js_to_string(value) == condition
    if isinstance(condition, bool):
        return value is not None and js_truthy(value) == condition
    if _is_number(condition):
        return js_to_number(value) == condition
    if condition is None:
        return value is None
    if isinstance(condition, list | tuple) or not _is_operator_object(condition):
        return js_json(value) == js_json(condition)
    return all(_eval_operator(op, value, arg, groups) for op, arg in condition.items())


def _eval_or(obj: Any, conditions: Any, groups: SavedGroups) -> bool:
    if not isinstance(conditions, list | tuple) or not conditions:
        return True
    return any(isinstance(c, Mapping) and eval_condition(obj, c, groups) for c in conditions)


def _eval_and(obj: Any, conditions: Any, groups: SavedGroups) -> bool:
    if not isinstance(conditions, list | tuple):
        return True
    return all(isinstance(c, Mapping) and eval_condition(obj, c, groups) for c in conditions)


def eval_condition(
    obj: Any, condition: Mapping[str, Any], saved_groups: SavedGroups | None = None
) -> bool:
    """Does the attribute document ``obj`` match ``condition``? (``{}`` matches anything.)"""
    groups: SavedGroups = saved_groups or {}
    for key, value in condition.items():
        if key == "$or":
            if not _eval_or(obj, value, groups):
                return False
        elif key == "$nor":
            if _eval_or(obj, value, groups):
                return False
        elif key == "$and":
            if not _eval_and(obj, value, groups):
                return False
        elif key == "$not":
            if isinstance(value, Mapping) and eval_condition(obj, value, groups):
                return False
        elif not eval_condition_value(value, get_path(obj, key), groups):
            return False
    return True
