"""A workspace and its ingestion policy (consent, PII, identities, rate)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sartor.privacy.consent import DEFAULT_CATEGORIES, NECESSARY
from sartor.privacy.pii import DEFAULT_PII_TRAITS

DEFAULT_JUNK_IDS = ("null", "undefined", "anonymous", "0", "-1", "none", "nan", "[object object]")
KEY_KINDS = ("write", "read", "admin")


class WorkspaceSettings(BaseModel):
    """Per-workspace policy; every field has a safe default."""

    model_config = ConfigDict(extra="forbid")

    consent_mode: Literal["opt_in", "opt_out"] = "opt_out"
    categories: list[str] = Field(default_factory=lambda: list(DEFAULT_CATEGORIES))
    event_categories: dict[str, str] = Field(
        default_factory=dict,
        description="Event name (or message type) -> consent category, over the defaults.",
    )
    default_category: str = "analytics"
    pii_traits: list[str] = Field(default_factory=lambda: list(DEFAULT_PII_TRAITS))
    pii_policy: Literal["hash", "keep", "drop"] = "hash"
    ip_policy: Literal["truncate", "keep", "drop"] = "truncate"
    junk_ids: list[str] = Field(
        default_factory=list, description="More ids refused as identities, over the built-ins."
    )
    rate_limit_events_per_second: float | None = Field(
        None, ge=0, description="Overrides the server default; 0 disables the limit."
    )
    holdout_share: float = Field(
        0.05,
        ge=0,
        le=0.5,
        description="Share of people kept out of all personalization (the global holdout).",
    )
    holdout_seed: str = Field(
        "sartor-holdout",
        min_length=1,
        max_length=200,
        description="Hash seed of the holdout; changing it draws a new holdout.",
    )
    recommendations: dict[str, Any] = Field(
        default_factory=dict,
        description="Recommendation slot overrides and custom slots: "
        '{"slots": {"home": {"models": {"als": 1}, "mmr_lambda": 0.8}, ...}}.',
    )

    @field_validator("categories")
    @classmethod
    def _necessary_first(cls, value: list[str]) -> list[str]:
        cats = [c.strip().lower() for c in value if c.strip()]
        if any(len(c) > 64 for c in cats):  # events.category is VARCHAR(64)
            raise ValueError("a category name is at most 64 characters")
        if NECESSARY not in cats:
            cats.insert(0, NECESSARY)
        return list(dict.fromkeys(cats))

    @field_validator("recommendations")
    @classmethod
    def _recommendation_slots(cls, value: dict[str, Any]) -> dict[str, Any]:
        from sartor.recommend.slots import validate_settings

        return validate_settings(value)

    def model_post_init(self, _context: object) -> None:
        unknown = {c for c in [*self.event_categories.values(), self.default_category]} - set(
            self.categories
        )
        if unknown:
            raise ValueError(f"unknown consent categories: {sorted(unknown)}")

    @property
    def junk_id_set(self) -> frozenset[str]:
        return frozenset([*DEFAULT_JUNK_IDS, *(j.strip().lower() for j in self.junk_ids)])


@dataclass(frozen=True, slots=True)
class Workspace:
    id: str
    name: str
    settings: WorkspaceSettings
    created_at: int

    @property
    def consent_mode(self) -> str:
        return self.settings.consent_mode
