"""Serving slots: where a list is shown (home page, product page, cart, email) and how it is
made there. Pure configuration, no I/O.

A slot says which models feed it and with what weight, how they combine (a weighted
``blend`` of per-model normalized scores, or a ``cascade`` where each model only fills the
places the ones before it left), what is filtered out (purchased items, items seen in the
last N days), how much MMR diversity over categories applies, and its cold-start chain.
Defaults live here; a workspace overrides them (or adds slots) in its settings under
``recommendations.slots.<name>``, and a running experiment on the slot may override them
again from its variation's payload.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

SLOT_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_-")
# The fallback steps a cold-start chain may use, in the order they make sense.
FALLBACKS = ("session", "segment", "trending", "popularity")


class SlotConfig(BaseModel):
    """How one slot builds its list."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["personal", "similar", "cart"] = Field(
        description="personal: from the user's history; similar: items like `item`; "
        "cart: items bought with `item` or with the user's cart."
    )
    models: dict[str, float] = Field(
        description="Registry model slot -> weight. Models not trained yet are skipped."
    )
    combine: Literal["blend", "cascade"] = Field(
        "blend",
        description="blend: weighted sum of per-model min-max normalized scores; cascade: "
        "models in order, each filling the places left by the ones before.",
    )
    exclude_purchased: bool = Field(True, description="Leave out items the user bought.")
    exclude_seen_days: float = Field(
        0.0,
        ge=0,
        le=3650,
        description="Leave out items the user interacted with in this many days (0: keep them).",
    )
    mmr_lambda: float = Field(
        0.8,
        ge=0,
        le=1,
        description="MMR trade-off: 1 is pure relevance, lower spreads "
        "the list over more categories.",
    )
    candidates: int = Field(
        200, ge=10, le=5000, description="Candidates taken from each model before blending."
    )
    fallback: list[str] = Field(
        default_factory=lambda: list(FALLBACKS),
        description="Cold-start chain, tried in order: " + ", ".join(FALLBACKS) + ".",
    )

    @field_validator("models")
    @classmethod
    def _weights(cls, value: dict[str, float]) -> dict[str, float]:
        if not value:
            raise ValueError("needs at least one model")
        for name, weight in value.items():
            if not name or not set(name) <= SLOT_NAME_CHARS or len(name) > 100:
                raise ValueError(f"{name!r} is not a model slot name")
            if not weight >= 0 or weight > 1e6:
                raise ValueError(f"weight of {name!r} must be between 0 and 1e6")
        return value

    @field_validator("fallback")
    @classmethod
    def _fallback(cls, value: list[str]) -> list[str]:
        unknown = [v for v in value if v not in FALLBACKS]
        if unknown:
            raise ValueError(f"unknown fallback steps {unknown}; known: {list(FALLBACKS)}")
        return list(dict.fromkeys(value))


PERSONAL_MODELS = {"als": 1.0, "itemknn": 1.0, "ease": 1.0, "content": 0.3}

DEFAULT_SLOTS: dict[str, SlotConfig] = {
    "home": SlotConfig(
        kind="personal",
        models=PERSONAL_MODELS,
        exclude_purchased=True,
        exclude_seen_days=2.0,
        mmr_lambda=0.7,
    ),
    "product": SlotConfig(
        kind="similar",
        models={"itemknn": 1.0, "content": 0.5, "als": 0.5},
        exclude_purchased=True,
        mmr_lambda=0.9,
        fallback=["trending", "popularity"],
    ),
    "cart": SlotConfig(
        kind="cart",
        models={"fbt": 1.0, "itemknn": 1.0},
        combine="cascade",
        exclude_purchased=False,
        mmr_lambda=0.9,
        fallback=["trending", "popularity"],
    ),
    "email": SlotConfig(
        kind="personal",
        models=PERSONAL_MODELS,
        exclude_purchased=True,
        exclude_seen_days=30.0,
        mmr_lambda=0.6,
    ),
}

FIELDS = frozenset(SlotConfig.model_fields)


def _check_name(name: str) -> str:
    if not name or len(name) > 100 or not set(name) <= SLOT_NAME_CHARS:
        raise ValueError(f"slot name {name!r}: use 1-100 lower-case letters, digits, '_' or '-'")
    return name


def apply_overrides(base: SlotConfig | None, changes: dict[str, Any]) -> SlotConfig:
    """``base`` with ``changes`` applied (a whole new slot when ``base`` is None)."""
    data = base.model_dump() if base is not None else {}
    data.update(changes)
    return SlotConfig.model_validate(data)


def validate_settings(value: Any) -> dict[str, Any]:
    """Check a workspace's ``recommendations`` settings: ``{"slots": {name: overrides}}``.
    Raises ``ValueError`` naming the field; returns the value as given (overrides, not the
    merged result, so a change of the defaults reaches every workspace that did not
    override that field)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError("recommendations must be an object")
    unknown = set(value) - {"slots"}
    if unknown:
        raise ValueError(f"recommendations: unknown keys {sorted(unknown)}; allowed: slots")
    slots = value.get("slots", {})
    if not isinstance(slots, dict):
        raise ValueError("recommendations.slots must be an object")
    for name, changes in slots.items():
        _check_name(name)
        if not isinstance(changes, dict):
            raise ValueError(f"recommendations.slots.{name} must be an object")
        if name not in DEFAULT_SLOTS and "kind" not in changes:
            raise ValueError(f"recommendations.slots.{name}: a new slot needs `kind` and `models`")
        try:
            apply_overrides(DEFAULT_SLOTS.get(name), changes)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ValueError(
                f"recommendations.slots.{name}.{where}: {first['msg']}".rstrip(".")
            ) from None
    return value


def workspace_slots(settings: dict[str, Any] | None) -> dict[str, SlotConfig]:
    """Every slot of a workspace: the defaults with its overrides, plus its own slots."""
    out = dict(DEFAULT_SLOTS)
    for name, changes in ((settings or {}).get("slots") or {}).items():
        out[name] = apply_overrides(DEFAULT_SLOTS.get(name), changes)
    return out


def payload_overrides(payload: Any) -> dict[str, Any]:
    """The slot fields an experiment variation's payload sets: either under a
    ``recommendations`` key or at its top level (other payload keys are the front end's)."""
    if not isinstance(payload, dict):
        return {}
    nested = payload.get("recommendations")
    source = nested if isinstance(nested, dict) else payload
    return {k: v for k, v in source.items() if k in FIELDS and k != "kind"}
