"""CRM import: customer records, cleaned, become ``identify`` messages in the event log.

Each good row becomes one ``identify`` that goes through the engine's own path (validation,
identity resolution, consent gate, PII policy, dedupe), so an imported customer is exactly
what the same ``/v1/identify`` call would have made, and ``sartor rebuild`` gets it back.

* **Columns.** Known columns are recognised by name (``Email``, ``E-mail address``,
  ``first_name``, ``Surname``, ``LTV``, ``Customer since``...; see :data:`FIELDS`) and
  cleaned by their kind; every other column becomes a trait of its own name (text trimmed
  and collapsed). A mapping file renames, drops or types columns (:func:`load_profile_mapping`).
* **Joining.** A row with a user id is sent as that ``userId``. A row with only an e-mail
  joins the profile whose e-mail identity (the keyed hash the engine records for every
  ``traits.email``, whatever the PII policy) matches, under one of that profile's own ids;
  when none matches, it creates a profile whose ``anonymousId`` is ``email:<keyed hash>``.
  Rows with both send that ``anonymousId`` alongside the ``userId``, so a profile first
  created from the e-mail alone is merged into the user's when the CRM later knows the id.
* **Idempotence.** The messageId is a hash of the raw row and the mapping: importing the same
  file again stores nothing new (every row is a duplicate); a changed row is a new identify
  whose traits win (last writer by time).
* **Rejects.** Rows that fail cleaning (``invalid_email``, ``invalid_date``,
  ``invalid_number``, ...), repeat a key (``duplicate_key``: the first row of a key wins) or
  have no id (``missing_id``) go to the rejects file with the column at fault.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import yaml
from sqlalchemy import select

from sartor.clock import now_ms
from sartor.collect.errors import FieldError
from sartor.collect.prepare import PreparedEvent, prepare
from sartor.importers import cleaning as c
from sartor.importers.source import MalformedRow
from sartor.privacy.pii import derive_key, keyed_hash, normalize_pii
from sartor.storage.sql import chunks
from sartor.storage.tables import identities

if TYPE_CHECKING:
    from sartor.engine import Engine
    from sartor.importers import ImportJob
    from sartor.workspace import Workspace

# Rows sent to the engine at once: one prepare, one group commit, two identity queries.
CHUNK_ROWS = 500
# A CRM or social record is trusted input and may be larger than Segment's 32 KB per event
# (a long list of likes); the event store takes it whole.
MAX_RECORD_BYTES = 1_000_000
EMAIL_ANON_PREFIX = "email:"
LIBRARY = {"name": "sartor-import"}

MISSING_ID = "missing_id"
MISSING_KEY = "missing_key"
INVALID_ROW = "invalid_row"
INVALID_TEXT = "invalid_text"

KINDS = (
    "auto",
    "text",
    "email",
    "phone",
    "number",
    "integer",
    "money",
    "date",
    "boolean",
    "currency",
    "country",
    "json",
)
KEYS = ("user_id", "email")


@dataclass(frozen=True)
class Field:
    """A standard customer column: its trait name, its cleaning and the headers it has."""

    name: str
    trait: str | None  # None: the userId, not a trait
    kind: str
    aliases: tuple[str, ...]


# Trait names follow Segment's reserved traits where one exists (email, firstName, lastName,
# phone, birthday), so CRM data and identify calls from Segment SDKs fill the same traits.
FIELDS: tuple[Field, ...] = (
    Field(
        "user_id",
        None,
        "id",
        (
            "userid",
            "user",
            "customerid",
            "customer",
            "clientid",
            "crmid",
            "externalid",
            "memberid",
            "accountid",
            "id",
        ),
    ),
    Field("email", "email", "email", ("email", "emailaddress", "mail", "emailid")),
    Field("first_name", "firstName", "text", ("firstname", "givenname", "forename", "first")),
    Field("last_name", "lastName", "text", ("lastname", "surname", "familyname", "last")),
    Field(
        "phone",
        "phone",
        "phone",
        (
            "phone",
            "phonenumber",
            "mobile",
            "mobilephone",
            "mobilenumber",
            "telephone",
            "tel",
            "cell",
            "cellphone",
        ),
    ),
    Field(
        "loyalty_points",
        "loyaltyPoints",
        "integer",
        ("loyaltypoints", "points", "loyalty", "rewardpoints", "loyaltybalance"),
    ),
    Field(
        "lifetime_value",
        "lifetimeValue",
        "money",
        ("lifetimevalue", "ltv", "clv", "customerlifetimevalue", "totalspent", "totalspend"),
    ),
    Field(
        "customer_since",
        "customerSince",
        "date",
        (
            "customersince",
            "createdat",
            "signupdate",
            "signedupat",
            "registeredat",
            "registrationdate",
            "joined",
            "joindate",
            "since",
        ),
    ),
    Field("country", "country", "country", ("country", "countrycode")),
    Field("currency", "currency", "currency", ("currency", "currencycode")),
    Field("birthday", "birthday", "date", ("birthday", "dateofbirth", "dob", "birthdate")),
)
_BY_NAME = {f.name: f for f in FIELDS}
_ALIASES = {alias: f for f in FIELDS for alias in f.aliases}
# A mapping may name a standard field by its field name or its trait name, in any spelling.
_TARGETS = {n: f for f in FIELDS for n in {f.name.replace("_", ""), (f.trait or "").lower()}}


def _norm(header: str) -> str:
    return re.sub(r"[^a-z0-9]", "", header.lower())


# -- the mapping ----------------------------------------------------------------------------

MAPPING_KEYS = (
    "columns",
    "types",
    "key",
    "day_first",
    "decimal_comma",
    "region",
    "currency",
    "unmapped",
)


class ProfileMappingError(ValueError):
    """The mapping (or an option) is wrong; the message names the key."""


@dataclass
class ProfileMapping:
    """How to read a CRM file. Every field has a default, so no mapping is needed for a
    file whose headers are the usual ones."""

    columns: dict[str, str | None] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)
    key: str = "user_id"
    day_first: bool | None = None
    decimal_comma: bool | None = None
    region: str | None = "GB"
    currency: str | None = None
    unmapped: str = "traits"

    def fingerprint(self) -> str:
        """What changes the messages: part of every messageId."""
        doc = [
            sorted(self.columns.items(), key=lambda kv: kv[0]),
            sorted(self.types.items()),
            self.key,
            self.day_first,
            self.decimal_comma,
            self.region,
            self.currency,
            self.unmapped,
        ]
        return hashlib.blake2b(orjson.dumps(doc), digest_size=8).hexdigest()


def read_mapping_file(source: str | Path) -> Any:
    path = Path(source)
    if not path.is_file():
        raise ProfileMappingError(f"{path}: mapping file not found")
    text = path.read_text(encoding="utf-8")
    try:
        return orjson.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (orjson.JSONDecodeError, yaml.YAMLError) as exc:
        raise ProfileMappingError(f"{path}: not valid YAML/JSON: {exc}") from None


def load_profile_mapping(
    source: str | Path | dict[str, Any] | None,
    options: dict[str, Any] | None = None,
    *,
    default_region: str | None = "GB",
) -> ProfileMapping:
    """A checked :class:`ProfileMapping` from a YAML/JSON file, a dict or nothing, with
    ``options`` (``key``, ``day_first``, ``decimal_comma``, ``region``, ``currency``) on top.

    The mapping is ``{columns: {source column: field or trait or null}, types: {trait:
    kind}, key, day_first, decimal_comma, region, currency, unmapped: traits|drop}``; a flat
    ``{source column: target}`` object is read as ``columns``.
    """
    data: Any = {} if source is None else source
    where = "mapping"
    if isinstance(source, str | Path):
        where = str(source)
        data = read_mapping_file(source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ProfileMappingError(f"{where}: a mapping must be an object (key: value pairs)")
    if data and not any(k in MAPPING_KEYS for k in data):
        data = {"columns": data}
    unknown = sorted(str(k) for k in data if k not in MAPPING_KEYS)
    if unknown:
        raise ProfileMappingError(
            f"{where}: unknown key {unknown[0]!r}; expected one of {', '.join(MAPPING_KEYS)}"
        )
    merged = {**data, **{k: v for k, v in (options or {}).items() if v is not None}}

    def fail(key: str, message: str) -> ProfileMappingError:
        return ProfileMappingError(f"{where}: {key} {message}")

    columns = merged.get("columns") or {}
    if not isinstance(columns, dict):
        raise fail("columns", "must map source columns to a field or trait name (or null)")
    for column, target in columns.items():
        if not (target is None or (isinstance(target, str) and target.strip())):
            raise fail(
                f"columns.{column}", f"must be a field or trait name (or null), got {target!r}"
            )
    types = merged.get("types") or {}
    if not isinstance(types, dict):
        raise fail("types", "must map trait names to a kind")
    for trait, kind in types.items():
        if kind not in KINDS:
            raise fail(f"types.{trait}", f"must be one of {', '.join(KINDS)}, got {kind!r}")
    key = merged.get("key", "user_id")
    key = {"userid": "user_id", "email": "email"}.get(_norm(str(key)), key)
    if key not in KEYS:
        raise fail("key", f"must be user_id or email, got {merged.get('key')!r}")
    for flag in ("day_first", "decimal_comma"):
        if merged.get(flag) is not None and not isinstance(merged[flag], bool):
            raise fail(flag, "must be true, false or null")
    try:
        region = c.check_region(merged.get("region", default_region))
    except ValueError as exc:
        raise fail("region", str(exc)) from None
    currency = merged.get("currency")
    if currency is not None:
        try:
            currency = c.clean_currency(currency)
        except c.CleaningError as exc:
            raise fail("currency", exc.message) from None
    unmapped = merged.get("unmapped", "traits")
    if unmapped not in ("traits", "drop"):
        raise fail("unmapped", f"must be traits or drop, got {unmapped!r}")
    return ProfileMapping(
        columns={k: (v.strip() if isinstance(v, str) else None) for k, v in columns.items()},
        types=dict(types),
        key=key,
        day_first=merged.get("day_first"),
        decimal_comma=merged.get("decimal_comma"),
        region=region,
        currency=currency,
        unmapped=unmapped,
    )


# -- cleaning one record ----------------------------------------------------------------------


@dataclass
class CustomerRecord:
    """A cleaned row: who it is and the traits to set."""

    user_id: str | None
    email: str | None
    traits: dict[str, Any]
    key: str


class RecordCleaner:
    """Turns raw rows into :class:`CustomerRecord` (or raises :class:`CleaningError` naming
    the source column). Pure: the column plan is cached per header name."""

    def __init__(self, mapping: ProfileMapping) -> None:
        self.mapping = mapping
        self._plan: dict[str, tuple[str | None, str, Field | None]] = {}

    def _column(self, column: str) -> tuple[str | None, str, Field | None]:
        """``(trait or None to skip, kind, standard field)`` for a source column."""
        cached = self._plan.get(column)
        if cached is not None:
            return cached
        m = self.mapping
        std: Field | None
        if column in m.columns:
            target = m.columns[column]
            if target is None:
                plan: tuple[str | None, str, Field | None] = (None, "auto", None)
            else:
                std = _BY_NAME.get(target) or _TARGETS.get(_norm(target))
                trait = target if std is None else (std.trait or "userId")
                plan = (trait, m.types.get(trait, std.kind if std else "auto"), std)
        elif (std := _ALIASES.get(_norm(column))) is not None:
            trait = std.trait or "userId"
            plan = (trait, m.types.get(trait, std.kind), std)
        elif m.unmapped == "drop":
            plan = (None, "auto", None)
        else:
            # "$set" and friends are trait operators; a column must not smuggle one in.
            name = column.strip().lstrip("$")
            plan = (name or None, m.types.get(name, "auto"), None)
        self._plan[column] = plan
        return plan

    def clean(self, row: dict[str, Any]) -> CustomerRecord:
        m = self.mapping
        traits: dict[str, Any] = {}
        user_id: str | None = None
        money_currencies: list[tuple[str, str]] = []
        currency_column: str | None = None
        for column, raw in row.items():
            trait, kind, std = self._column(column)
            if trait is None or raw is None or (isinstance(raw, str) and not raw.strip()):
                continue
            try:
                if std is not None and std.name == "user_id":
                    user_id = c.clean_text(raw)
                    continue
                if trait in traits:
                    continue  # two columns for one trait: the first non-empty wins
                value, currency = self._value(raw, kind)
            except c.CleaningError as exc:
                raise exc.on(column) from None
            if value is None:
                continue
            traits[trait] = value
            if currency is not None:
                money_currencies.append((column, currency))
            if trait == "currency":
                currency_column = column
        row_currency = traits.get("currency")
        for column, currency in money_currencies:
            if row_currency is None:
                row_currency = traits["currency"] = currency
            elif currency != row_currency:
                raise c.CleaningError(
                    c.INVALID_CURRENCY,
                    f"the amount is in {currency} but {currency_column or 'another amount'} "
                    f"says {row_currency}",
                    column,
                )
        if (
            row_currency is None
            and m.currency
            and any(self._column(col)[1] == "money" for col in row if row[col] not in (None, ""))
        ):
            traits["currency"] = m.currency
        email = traits.get("email")
        if m.key == "email":
            if email is None:
                raise c.CleaningError(MISSING_KEY, "the key column (email) is empty", "email")
            key = "e:" + email
        elif user_id is not None:
            key = "u:" + user_id
        elif email is not None:
            key = "e:" + email
        else:
            raise c.CleaningError(MISSING_ID, "a row needs a user id or an e-mail address")
        return CustomerRecord(user_id, email, traits, key)

    def _value(self, raw: Any, kind: str) -> tuple[Any, str | None]:
        m = self.mapping
        if kind == "auto":
            if isinstance(raw, str):
                return c.clean_text(raw), None
            return raw, None  # JSON and Parquet values keep their type
        if kind == "json":
            if isinstance(raw, str):
                try:
                    return orjson.loads(raw), None
                except orjson.JSONDecodeError:
                    raise c.CleaningError(INVALID_ROW, "is not valid JSON") from None
            return raw, None
        if kind == "text":
            return c.clean_text(raw), None
        if kind == "email":
            return c.clean_email(raw), None
        if kind == "phone":
            return c.clean_phone(raw, m.region), None
        if kind == "integer":
            return c.parse_integer(raw, decimal_comma=m.decimal_comma), None
        if kind == "number":
            return c.to_json_number(c.parse_decimal(raw, decimal_comma=m.decimal_comma)), None
        if kind == "money":
            amount, currency = c.parse_money(raw, decimal_comma=m.decimal_comma)
            return c.to_json_number(amount), currency
        if kind == "date":
            return c.iso_date(c.parse_date(raw, day_first=m.day_first)), None
        if kind == "boolean":
            return c.parse_bool(raw), None
        if kind == "currency":
            return c.clean_currency(raw), None
        if kind == "country":
            text = c.clean_text(raw)
            # ISO 3166 alpha-2 codes in capitals ("gb" -> "GB"); names are kept as written.
            return (text.upper() if text and len(text) == 2 and text.isalpha() else text), None
        raise c.CleaningError(INVALID_ROW, f"unknown kind {kind!r}")


# -- joining and writing (shared with the social importer) -------------------------------------


def email_hash(engine: Engine, ws: Workspace, email: str) -> str:
    """The keyed hash the engine records as the ``email_hash`` identity of ``traits.email``."""
    key = derive_key(engine.settings.secret_key, ws.id, "pii")
    return keyed_hash(key, normalize_pii("email", email))


def join_by_email(engine: Engine, ws: Workspace, hashes: Iterable[str]) -> dict[str, tuple]:
    """For each e-mail hash with a profile: ``(field, value, profile_id)`` of an id of that
    profile to send under: its (smallest) userId, else its (smallest) anonymousId."""
    wanted = sorted(set(hashes))
    if not wanted:
        return {}
    t = identities
    pid_of: dict[str, str] = {}
    own: dict[str, dict[str, str]] = {}
    with engine.db.connect() as conn:
        for part in chunks(wanted):
            for value, pid in conn.execute(
                select(t.c.value, t.c.profile_id).where(
                    t.c.workspace_id == ws.id, t.c.kind == "email_hash", t.c.value.in_(part)
                )
            ).all():
                pid_of[value] = pid
        for part in chunks(sorted(set(pid_of.values()))):
            for kind, value, pid in conn.execute(
                select(t.c.kind, t.c.value, t.c.profile_id).where(
                    t.c.workspace_id == ws.id,
                    t.c.profile_id.in_(part),
                    t.c.kind.in_(("user_id", "anonymous_id")),
                )
            ).all():
                ids = own.setdefault(pid, {})
                if kind not in ids or value < ids[kind]:
                    ids[kind] = value
    out: dict[str, tuple] = {}
    for h, pid in pid_of.items():
        ids = own.get(pid, {})
        if "user_id" in ids:
            out[h] = ("userId", ids["user_id"], pid)
        elif "anonymous_id" in ids:
            out[h] = ("anonymousId", ids["anonymous_id"], pid)
    return out


def record_message_id(namespace: str, fingerprint: str, row: dict[str, Any]) -> str:
    """A deterministic messageId from the raw row (keys sorted: column order does not
    matter) and what shapes its message."""
    body = orjson.dumps([namespace, fingerprint, row], option=orjson.OPT_SORT_KEYS, default=str)
    return f"{namespace}-{hashlib.blake2b(body, digest_size=16).hexdigest()}"


@dataclass
class Written:
    """What became of one message: ``stored``, ``duplicate``, ``dropped`` or ``error``."""

    status: str
    reason: str | None = None
    field: str | None = None


def write_messages(
    engine: Engine,
    ws: Workspace,
    messages: list[dict[str, Any]],
    *,
    category: str | None = None,
) -> list[Written]:
    """Store messages as the API would (the same validation, then the group-commit writer:
    dedupe, identity, consent, PII policy) and say what became of each. Like the events
    importer, a file import is not held to the API's per-workspace rate.

    ``category`` overrides the consent category the engine gives the messages, so the
    consent gate judges the data by what it is (see the social importer)."""
    pii_key = derive_key(engine.settings.secret_key, ws.id, "pii")
    received = now_ms()
    results: list[Written] = []
    prepared: list[PreparedEvent] = []
    for i, msg in enumerate(messages):
        try:
            p = prepare(
                msg,
                index=i,
                prefix="",
                settings=ws.settings,
                pii_key=pii_key,
                received_at=received,
                max_event_bytes=MAX_RECORD_BYTES,
            )
        except FieldError as exc:
            results.append(Written("error", exc.message, exc.field))
            continue
        if category is not None:
            p.category = category
        prepared.append(p)
        results.append(Written("pending"))
    if prepared:
        for o in engine.writer.submit(ws, prepared).result():
            results[o.index] = Written(o.status, o.reason, o.field)
    return results


def account(job: ImportJob, pending: list[tuple[int, Any]], results: list[Written]) -> None:
    """Count the outcome of each written row and send the refused ones to the rejects."""
    for (line, row), res in zip(pending, results, strict=True):
        if res.status == "stored":
            job.summary.imported += 1
        elif res.status == "duplicate":
            job.summary.duplicates += 1
        elif res.status == "dropped":
            # consent (the person did not agree to this category) or suppressed (erased)
            job.rejects.write(line, f"dropped: {res.reason}", row)
        else:
            job.rejects.write(line, INVALID_ROW, row, res.field)


# -- the importer -------------------------------------------------------------------------------


def import_profiles(job: ImportJob) -> None:
    """Import a CRM file (``sartor import profiles``); see the module docstring."""
    from sartor.importers import ImportConfigError

    engine = job.engine
    if job.preset is not None:
        raise ImportConfigError("profiles imports have no presets; use a mapping file")
    try:
        mapping = load_profile_mapping(
            job.mapping, job.options, default_region=engine.settings.import_default_region
        )
    except ProfileMappingError as exc:
        raise ImportConfigError(str(exc)) from None
    cleaner = RecordCleaner(mapping)
    dedupe = c.KeyDeduplicator()
    fingerprint = mapping.fingerprint()
    batch: list[tuple[int, dict[str, Any], CustomerRecord]] = []

    def flush() -> None:
        if batch:
            _write_profiles(job, batch, fingerprint)
            batch.clear()

    for line, row in job.rows():
        job.summary.read += 1
        job.advance(1)
        if isinstance(row, MalformedRow):
            job.rejects.write(line, row.reason, row.report())
            continue
        try:
            record = cleaner.clean(row)
        except c.CleaningError as exc:
            job.rejects.write(line, exc.reason, row, exc.field, exc.message)
            continue
        if not dedupe.add(record.key):
            job.rejects.write(line, c.DUPLICATE_KEY, row, mapping.key)
            continue
        batch.append((line, row, record))
        if len(batch) >= CHUNK_ROWS:
            flush()
    flush()


def _write_profiles(
    job: ImportJob, batch: list[tuple[int, dict[str, Any], CustomerRecord]], fingerprint: str
) -> None:
    engine, ws = job.engine, job.workspace
    hashes = {r.email: email_hash(engine, ws, r.email) for _, _, r in batch if r.email}
    joined = join_by_email(
        engine, ws, (hashes[r.email] for _, _, r in batch if r.email and not r.user_id)
    )
    messages: list[dict[str, Any]] = []
    for _, row, record in batch:
        msg: dict[str, Any] = {
            "type": "identify",
            "messageId": record_message_id("crm", fingerprint, row),
            "traits": record.traits,
            "context": {"library": LIBRARY},
        }
        h = hashes.get(record.email) if record.email else None
        if record.user_id is not None:
            msg["userId"] = record.user_id
            if h is not None:
                msg["anonymousId"] = EMAIL_ANON_PREFIX + h
        elif h is not None and h in joined:
            field_name, value, _ = joined[h]
            msg[field_name] = value
        elif h is not None:
            msg["anonymousId"] = EMAIL_ANON_PREFIX + h
        messages.append(msg)
    results = write_messages(engine, ws, messages)
    account(job, [(line, row) for line, row, _ in batch], results)
