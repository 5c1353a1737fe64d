"""The Segment message shape, validated at the edge.

One pydantic model documents the API (OpenAPI) and is the reference for what is valid.
Items are first checked by :func:`check_message`, a hand-written equivalent for the common
case that costs a fifth of a pydantic validation (ingestion does it for every event);
anything it does not accept as plainly valid goes to the model, so every rejection, and
every odd case (ids sent as numbers, timestamps that fail to parse), is pydantic's own.
Errors come back as :class:`FieldError` with a dotted path (``batch[2].properties.price``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from sartor.collect.errors import FieldError

MESSAGE_TYPES = ("track", "identify", "page", "screen", "group", "alias")
MessageType = Literal["track", "identify", "page", "screen", "group", "alias"]
MAX_ID_LENGTH = 255
MAX_MESSAGE_ID_LENGTH = 100
MAX_EVENT_NAME_LENGTH = 200


def _id(value: Any) -> str | None:
    """Ids may be sent as strings or integers (many SDKs do); they are stored as strings."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("must be a string, not a boolean")
    if isinstance(value, int):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {type(value).__name__}")
    if len(value) > MAX_ID_LENGTH:
        raise ValueError(f"must be at most {MAX_ID_LENGTH} characters")
    return value


def _message_id(value: Any) -> str | None:
    value = _id(value) if not isinstance(value, str) else value
    if value is None:
        return None
    if not value.strip():
        raise ValueError("must not be empty")
    if len(value) >= MAX_MESSAGE_ID_LENGTH:
        raise ValueError(f"must be shorter than {MAX_MESSAGE_ID_LENGTH} characters")
    return value


_MIN_MS = -62_135_596_800_000  # 0001-01-01
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
_MAX_MS = 253_402_300_799_999  # 9999-12-31


def parse_timestamp(value: Any) -> int | None:
    """ISO 8601 (``Z`` or an offset; naive means UTC) or epoch seconds/milliseconds -> ms."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("must be an ISO 8601 string")
    if isinstance(value, int | float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("must be a finite number")
        ms = int(value * 1000) if abs(value) < 100_000_000_000 else int(value)
        if not _MIN_MS <= ms <= _MAX_MS:
            raise ValueError("is out of range")
        return ms
    if not isinstance(value, str):
        raise ValueError(f"must be an ISO 8601 string, got {type(value).__name__}")
    text = value.strip()
    if len(text) > 64:
        raise ValueError("is not an ISO 8601 timestamp")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"is not an ISO 8601 timestamp: {value[:40]!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return (parsed - _EPOCH) // _ONE_MS  # whole milliseconds, rounded down
    except OverflowError:
        raise ValueError("is out of range") from None


Id = Annotated[str | None, BeforeValidator(_id)]
Timestamp = Annotated[
    int | None,
    BeforeValidator(parse_timestamp),
    Field(json_schema_extra={"type": "string", "format": "date-time"}),
]
JsonObject = dict[str, Any]


class Message(BaseModel):
    """One Segment call: track, identify, page, screen, group or alias."""

    model_config = ConfigDict(extra="allow", str_max_length=8192)

    type: MessageType | None = Field(
        None, description="Required inside a batch; implied by the path otherwise."
    )
    messageId: Annotated[str | None, BeforeValidator(_message_id)] = Field(  # noqa: N815
        None, description="Dedupe key, fewer than 100 characters; made by the server if absent."
    )
    anonymousId: Id = None  # noqa: N815
    userId: Id = None  # noqa: N815
    event: str | None = Field(None, max_length=MAX_EVENT_NAME_LENGTH)
    name: str | None = Field(None, max_length=MAX_EVENT_NAME_LENGTH)
    category: str | None = Field(None, max_length=MAX_EVENT_NAME_LENGTH)
    groupId: Id = None  # noqa: N815
    previousId: Id = None  # noqa: N815
    timestamp: Timestamp = None
    originalTimestamp: Timestamp = None  # noqa: N815
    sentAt: Timestamp = None  # noqa: N815
    context: JsonObject | None = None
    properties: JsonObject | None = None
    traits: JsonObject | None = None
    integrations: JsonObject | None = None
    writeKey: str | None = Field(None, max_length=200)  # noqa: N815


class Batch(BaseModel):
    """``POST /v1/batch``: up to 2,500 messages, 500 KB in all, 32 KB each."""

    model_config = ConfigDict(extra="allow")

    batch: list[Message]
    context: JsonObject | None = None
    integrations: JsonObject | None = None
    sentAt: Timestamp = None  # noqa: N815
    writeKey: str | None = Field(None, max_length=200)  # noqa: N815


def _path(prefix: str, loc: tuple[Any, ...]) -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


MAX_STR_LENGTH = 8192  # Message's str_max_length: also bounds the keys of its objects
MAX_WRITE_KEY_LENGTH = 200
_MESSAGE_TYPE_SET = frozenset(MESSAGE_TYPES)
# Each field of Message and how check_message checks it.
_TYPE, _MESSAGE_ID, _ID, _NAME, _TIME, _OBJECT, _WRITE_KEY = range(7)
_CHECKS: dict[str, int] = {
    "type": _TYPE,
    "messageId": _MESSAGE_ID,
    "anonymousId": _ID,
    "userId": _ID,
    "groupId": _ID,
    "previousId": _ID,
    "event": _NAME,
    "name": _NAME,
    "category": _NAME,
    "timestamp": _TIME,
    "originalTimestamp": _TIME,
    "sentAt": _TIME,
    "context": _OBJECT,
    "properties": _OBJECT,
    "traits": _OBJECT,
    "integrations": _OBJECT,
    "writeKey": _WRITE_KEY,
}
_STR_LIMITS = {_ID: MAX_ID_LENGTH, _NAME: MAX_EVENT_NAME_LENGTH, _WRITE_KEY: MAX_WRITE_KEY_LENGTH}


class CheckedMessage:
    """What :func:`check_message` accepted: the fields and values ``Message`` would have.

    A plain class: the fields a message does not send are read from the class (None), so
    making one costs only the fields it has."""

    type: str | None = None
    messageId: str | None = None  # noqa: N815
    anonymousId: str | None = None  # noqa: N815
    userId: str | None = None  # noqa: N815
    event: str | None = None
    name: str | None = None
    category: str | None = None
    groupId: str | None = None  # noqa: N815
    previousId: str | None = None  # noqa: N815
    timestamp: int | None = None
    originalTimestamp: int | None = None  # noqa: N815
    sentAt: int | None = None  # noqa: N815
    context: JsonObject | None = None
    properties: JsonObject | None = None
    traits: JsonObject | None = None
    integrations: JsonObject | None = None
    writeKey: str | None = None  # noqa: N815
    model_extra: dict[str, Any] | None = None


AnyMessage = Message | CheckedMessage


def check_message(raw: dict[str, Any], encoded_size: int | None = None) -> CheckedMessage | None:
    """``raw`` as :class:`Message` would validate it, when it plainly is valid: plain
    strings within their bounds, plain objects, timestamps that parse. None means "ask the
    model": it may still be valid (an id sent as a number), or name what is wrong.

    ``encoded_size``: the length of ``orjson.dumps(raw)``, when the caller has it. orjson
    encodes only text keys, and a key takes at least its length in bytes, so an encoding of
    at most ``MAX_STR_LENGTH`` bytes has no key to check in its objects.

    Equivalence with the model is tested property by property (tests/test_fuzz.py)."""
    check_keys = encoded_size is None or encoded_size > MAX_STR_LENGTH
    out = CheckedMessage()
    values = out.__dict__
    extra: dict[str, Any] = {}
    checks = _CHECKS
    for key, value in raw.items():
        check = checks.get(key)
        if check is None:
            if type(key) is not str:
                return None
            extra[key] = value  # extra="allow": kept as sent, the value unchecked
        elif value is None:
            continue
        elif check == _OBJECT:
            if type(value) is not dict:
                return None
            if check_keys:
                for name in value:
                    if type(name) is not str or len(name) > MAX_STR_LENGTH:
                        return None
            values[key] = dict(value)  # the model copies the object (not deeper)
        elif check == _TIME:
            try:
                values[key] = parse_timestamp(value)
            except ValueError:
                return None
        elif type(value) is not str:
            return None  # ids sent as numbers are valid: the model converts them
        elif check == _TYPE:
            if value not in _MESSAGE_TYPE_SET:
                return None
            values[key] = value
        elif check == _MESSAGE_ID:
            if len(value) >= MAX_MESSAGE_ID_LENGTH or not value.strip():
                return None
            values[key] = value
        else:
            if len(value) > _STR_LIMITS[check]:
                return None
            values[key] = value
    values["model_extra"] = extra
    return out


def validate_message(raw: Any, prefix: str = "", encoded_size: int | None = None) -> AnyMessage:
    """A valid message from decoded JSON, or :class:`FieldError` naming the bad field.
    ``encoded_size``: see :func:`check_message`."""
    if not isinstance(raw, dict):
        raise FieldError(prefix or "body", "must be a JSON object")
    checked = check_message(raw, encoded_size)
    if checked is not None:
        return checked
    try:
        return Message.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        message = str(err["msg"]).removeprefix("Value error, ")
        raise FieldError(_path(prefix, tuple(err["loc"])), message) from None


def find_nul(value: Any, path: str) -> str | None:
    """The path of the first string (or key) holding a NUL character, which PostgreSQL
    cannot store; None when there is none."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            sub = f"{path}.{key}" if path else str(key)
            if "\x00" in key:
                return sub
            found = find_nul(item, sub)
            if found:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = find_nul(item, f"{path}[{i}]")
            if found:
                return found
    return None
