"""From one decoded JSON item to a :class:`PreparedEvent`: validation, names, products,
timestamps, consent statements and PII hashing. Pure: no I/O, no clock (``received_at`` is
passed in), so it is tested directly and runs on the request thread.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from sartor.collect.errors import FieldError
from sartor.collect.messages import AnyMessage, find_nul, validate_message
from sartor.collect.normalize import MAX_PRODUCTS, canonical_event_name, normalize_properties
from sartor.privacy.consent import consent_statements, event_category
from sartor.privacy.pii import HASH_PREFIX, hash_pii_traits, keyed_hash, normalize_pii
from sartor.workspace import WorkspaceSettings

MAX_EVENT_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
MAX_BATCH_ITEMS = 2_500


@dataclass(slots=True)
class PreparedEvent:
    """A valid message, normalized, waiting for identity, consent and storage."""

    index: int
    message_id: str
    type: str
    event: str | None
    category: str
    user_id: str | None
    anonymous_id: str | None
    timestamp: int
    received_at: int
    payload: dict[str, Any]
    previous_id: str | None = None
    consent: dict[str, bool] | None = None
    consent_source: str = ""
    generated_message_id: bool = False
    email_hash: str | None = None
    ignored_ids: list[str] = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        return [i for i in (self.user_id, self.anonymous_id, self.previous_id) if i]


def merge_context(batch_context: dict[str, Any] | None, item: dict[str, Any] | None) -> Any:
    """A batch's top-level context under an item's own (the item wins, key by key, deep)."""
    if not batch_context:
        return item
    if not item:
        return batch_context
    out = dict(batch_context)
    for key, value in item.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_context(out[key], value)
        else:
            out[key] = value
    return out


def resolve_timestamp(msg: AnyMessage, sent_at: int | None, received_at: int) -> int:
    """Segment's rule: an explicit ``timestamp`` is kept; otherwise, with a client clock
    (``originalTimestamp`` and ``sentAt``), ``receivedAt - (sentAt - originalTimestamp)``
    corrects the client's skew; otherwise the time it arrived."""
    if msg.timestamp is not None:
        return msg.timestamp
    sent = msg.sentAt if msg.sentAt is not None else sent_at
    if msg.originalTimestamp is not None and sent is not None:
        return received_at - (sent - msg.originalTimestamp)
    if msg.originalTimestamp is not None:
        return msg.originalTimestamp
    return received_at


def _clean_id(value: str | None, junk: frozenset[str]) -> str | None:
    if value is None:
        return None
    stripped = value.strip()
    if not stripped or stripped.lower() in junk:
        return None
    return value


def prepare(
    raw: Any,
    *,
    index: int,
    prefix: str,
    settings: WorkspaceSettings,
    pii_key: bytes,
    received_at: int,
    implied_type: str | None = None,
    batch_context: dict[str, Any] | None = None,
    batch_integrations: dict[str, Any] | None = None,
    batch_sent_at: int | None = None,
    max_event_bytes: int = MAX_EVENT_BYTES,
    max_products: int = MAX_PRODUCTS,
    products_normalized: bool = False,
    junk_ids: frozenset[str] | None = None,
) -> PreparedEvent:
    """Validate and normalize one item; raises :class:`FieldError` naming the bad field.

    ``max_event_bytes`` is Segment's 32 KB at the API and ``max_products`` its 1,000
    products per event; trusted imports may raise both (a 1,000-line invoice is one real
    order). ``products_normalized``: see :func:`normalize_properties`. ``junk_ids`` is
    ``settings.junk_id_set``, which a caller preparing many items computes once."""
    encoded = orjson.dumps(raw) if isinstance(raw, dict) else None
    if encoded is not None and len(encoded) > max_event_bytes:
        raise FieldError(
            prefix or "body", f"event is larger than {max_event_bytes} bytes", status=413
        )
    msg = validate_message(raw, prefix, len(encoded) if encoded is not None else None)
    p = f"{prefix}." if prefix else ""
    # JSON escapes NUL as \u0000 in keys and strings alike: walk the item for its path only
    # when the encoding has one (or a literal backslash-u0000, which the walk then clears).
    nul = find_nul(raw, prefix) if encoded is None or b"\\u0000" in encoded else None
    if nul:
        raise FieldError(nul, "must not contain the NUL character (\\u0000)")
    msg_type = implied_type or msg.type
    if msg_type is None:
        raise FieldError(f"{p}type", "is required in a batch (track, identify, page, ...)")
    if implied_type and msg.type and msg.type != implied_type:
        raise FieldError(f"{p}type", f"is {msg.type!r} but this endpoint takes {implied_type!r}")

    junk = settings.junk_id_set if junk_ids is None else junk_ids
    ignored = []
    user_id = _clean_id(msg.userId, junk)
    anonymous_id = _clean_id(msg.anonymousId, junk)
    if msg.userId is not None and user_id is None:
        ignored.append("userId")
    if msg.anonymousId is not None and anonymous_id is None:
        ignored.append("anonymousId")
    previous_id = None
    if msg_type == "alias":
        previous_id = _clean_id(msg.previousId, junk)
        if previous_id is None:
            raise FieldError(f"{p}previousId", "is required for alias and must be a real id")
        if user_id is None:
            raise FieldError(f"{p}userId", "is required for alias and must be a real id")
    if user_id is None and anonymous_id is None:
        what = " (placeholder ids such as 'null' or '0' are refused)" if ignored else ""
        raise FieldError(f"{p}userId", f"userId or anonymousId is required{what}")

    event: str | None = None
    if msg_type == "track":
        if not msg.event or not msg.event.strip():
            raise FieldError(f"{p}event", "is required for track")
        event = canonical_event_name(msg.event)
    elif msg_type in ("page", "screen"):
        event = msg.name
    if msg_type == "group" and not msg.groupId:
        raise FieldError(f"{p}groupId", "is required for group")

    payload: dict[str, Any] = {}
    if msg.model_extra:
        payload.update((k, v) for k, v in msg.model_extra.items() if k != "receivedAt")
    # (merge_context without a batch-level object is the item's own: skip the call)
    context = merge_context(batch_context, msg.context) if batch_context else msg.context
    integrations = msg.integrations
    if batch_integrations:
        integrations = merge_context(batch_integrations, integrations)
    properties = msg.properties
    if msg_type == "track" and properties and event:
        properties = normalize_properties(
            event, properties, f"{p}properties", max_products, products_normalized
        )
    traits = msg.traits
    if traits and settings.pii_policy != "keep":
        traits = hash_pii_traits(traits, settings.pii_traits, settings.pii_policy, pii_key)
    if isinstance(context, dict) and isinstance(context.get("traits"), dict):
        if settings.pii_policy != "keep":
            context = {
                **context,
                "traits": hash_pii_traits(
                    context["traits"], settings.pii_traits, settings.pii_policy, pii_key
                ),
            }
    if properties is not None:
        payload["properties"] = properties
    if traits is not None:
        payload["traits"] = traits
    if context is not None:
        payload["context"] = context
    if integrations is not None:
        payload["integrations"] = integrations
    if msg_type == "track" and event != msg.event:
        payload["originalEvent"] = msg.event
    if msg.category is not None:
        payload["category"] = msg.category
    if msg.groupId is not None:
        payload["groupId"] = msg.groupId
    if previous_id is not None:
        payload["previousId"] = previous_id
    if msg.originalTimestamp is not None:
        payload["originalTimestamp"] = msg.originalTimestamp
    sent_at = msg.sentAt if msg.sentAt is not None else batch_sent_at
    if sent_at is not None:
        payload["sentAt"] = sent_at
    if ignored:
        payload["ignoredIds"] = {f: getattr(msg, f) for f in ignored}

    statements = consent_statements(
        context if isinstance(context, dict) else None,
        properties,
        msg.traits,
        event,
        settings.categories,
    )
    email = (msg.traits or {}).get("email")
    if not isinstance(email, str) and isinstance(context, dict):
        email = (
            (context.get("traits") or {}).get("email")
            if isinstance(context.get("traits"), dict)
            else None
        )
    email_hash = None
    if isinstance(email, str) and email.strip():
        email_hash = (
            email.removeprefix(HASH_PREFIX)
            if email.startswith(HASH_PREFIX)
            else keyed_hash(pii_key, normalize_pii("email", email))
        )
    message_id = msg.messageId
    generated = message_id is None
    if message_id is None:
        message_id = f"sartor-{uuid.uuid4()}"
    return PreparedEvent(
        index=index,
        message_id=message_id,
        type=msg_type,
        event=event,
        category=event_category(
            msg_type, event, overrides=settings.event_categories, default=settings.default_category
        ),
        user_id=user_id,
        anonymous_id=anonymous_id,
        timestamp=resolve_timestamp(msg, batch_sent_at, received_at),
        received_at=received_at,
        payload=payload,
        previous_id=previous_id,
        consent=statements[0] if statements else None,
        consent_source=statements[1] if statements else "",
        generated_message_id=generated,
        email_hash=email_hash,
        ignored_ids=ignored,
    )
