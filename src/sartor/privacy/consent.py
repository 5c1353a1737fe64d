"""Consent categories, the per-event category, and the store/drop decision. Pure functions.

A profile's consent is ``{category: {"granted": bool, "at": ms, "source": str}}``; a newer
statement about a category replaces an older one, whatever order they arrive in.
"""

from __future__ import annotations

from typing import Any, Literal

ConsentMode = Literal["opt_in", "opt_out"]
CONSENT_MODES = ("opt_in", "opt_out")
NECESSARY = "necessary"
DEFAULT_CATEGORIES = (
    "necessary",
    "analytics",
    "personalization",
    "marketing",
    "location",
    "social",
)

CONSENT_EVENTS = frozenset(
    {"Segment Consent Preference Updated", "Consent Preference Updated", "Consent Updated"}
)

# Event name -> category, before a workspace's own map. Everything else is `analytics`;
# identify/alias/group (type, not name) are `necessary`: they carry the identity links that
# consent and erasure depend on.
DEFAULT_EVENT_CATEGORIES: dict[str, str] = {
    **{name: NECESSARY for name in CONSENT_EVENTS},
    "Segment Entered": NECESSARY,
    "Segment Exited": NECESSARY,
    "Email Opened": "marketing",
    "Email Link Clicked": "marketing",
    "Email Delivered": "marketing",
    "Email Bounced": "marketing",
    "Email Marked as Spam": "marketing",
    "Unsubscribed": "marketing",
    "Push Notification Received": "marketing",
    "Push Notification Tapped": "marketing",
    "Push Notification Bounced": "marketing",
    "Friend Invited": "social",
    "Product Shared": "social",
    "Cart Shared": "social",
}


def event_category(
    msg_type: str,
    event: str | None,
    *,
    overrides: dict[str, str] | None = None,
    default: str = "analytics",
) -> str:
    """The consent category of a message, from its type and (canonical) event name."""
    key = event if msg_type == "track" else msg_type
    if overrides and key in overrides:
        return overrides[key]
    if msg_type in ("identify", "alias", "group"):
        return NECESSARY
    if msg_type == "track" and event in DEFAULT_EVENT_CATEGORIES:
        return DEFAULT_EVENT_CATEGORIES[event]
    return default


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "granted", "yes", "1"):
        return True
    if isinstance(value, str) and value.lower() in ("false", "denied", "declined", "no", "0"):
        return False
    return None


def consent_statements(
    context: dict[str, Any] | None,
    properties: dict[str, Any] | None,
    traits: dict[str, Any] | None,
    event: str | None,
    categories: tuple[str, ...] | list[str],
) -> tuple[dict[str, bool], str] | None:
    """What a message says about consent, as ``({category: granted}, source)``.

    Sources, in order: Segment's ``context.consent.categoryPreferences``; the properties of a
    consent event; an identify's ``traits.consent``. Unknown categories are ignored.
    """
    found: dict[str, Any] | None = None
    source = ""
    consent = (context or {}).get("consent")
    if isinstance(consent, dict) and isinstance(consent.get("categoryPreferences"), dict):
        found, source = consent["categoryPreferences"], "context.consent"
    elif event in CONSENT_EVENTS and properties:
        prefs = properties.get("categoryPreferences", properties)
        if isinstance(prefs, dict):
            found, source = prefs, "event"
    elif traits and isinstance(traits.get("consent"), dict):
        found, source = traits["consent"], "traits.consent"
    if not found:
        return None
    known = {c.lower(): c for c in categories}
    out: dict[str, bool] = {}
    for key, value in found.items():
        category = known.get(str(key).lower())
        granted = _as_bool(value)
        if category and category != NECESSARY and granted is not None:
            out[category] = granted
    return (out, source) if out else None


def apply_consent(
    state: dict[str, Any], statements: dict[str, bool], at: int, source: str
) -> dict[str, Any]:
    """A new consent state with ``statements`` applied where they are not older."""
    new = dict(state)
    for category, granted in statements.items():
        prev = new.get(category)
        if prev is None or prev.get("at", 0) <= at:
            new[category] = {"granted": granted, "at": at, "source": source}
    return new


def merge_consent(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two profiles' consent merged: per category, the newer statement wins."""
    out = dict(a)
    for category, entry in b.items():
        prev = out.get(category)
        if prev is None or prev.get("at", 0) <= entry.get("at", 0):
            out[category] = entry
    return out


def allowed(state: dict[str, Any], category: str, mode: str) -> bool:
    """May an event of ``category`` be stored for a user with consent ``state``?

    ``opt_in``: only `necessary`, until the category is granted. ``opt_out``: everything,
    until the category is declined.
    """
    if category == NECESSARY:
        return True
    entry = state.get(category)
    if mode == "opt_in":
        return bool(entry and entry.get("granted"))
    return not (entry and entry.get("granted") is False)
