"""Third-party signals: interests and likes from a social network land in profile traits.

A record has the shape of a social API response (JSONL, or CSV with ``;``-separated lists)::

    {"id": "10223", "userId": "u-42", "email": "ann@example.com",
     "interests": [{"name": "Hiking", "category": "Outdoors"}],
     "likes": [{"name": "Patagonia", "category": "Clothing", "id": "p-1"}]}

It joins a profile as a CRM record does (``userId``, else ``email``, else the record's ``id``
taken as the userId) and becomes one ``identify`` whose ``traits.social`` holds::

    {"interests": [{"name": "Hiking", "category": "Outdoors", "source": "facebook",
                    "importedAt": "2026-01-05T10:00:00Z"}],
     "likes": [...], "accounts": {"facebook": "10223"}}

Each item is tagged with its source and import time. A new import from one source replaces
that source's items and keeps the other sources' (read from the profile, then written whole:
traits are last-writer-wins per top-level name).

**Consent.** An ``identify`` is ``necessary`` by type, but these traits are social data: the
messages are stored in the ``social`` consent category, so the engine's consent gate (inside
the same transaction that reads the person's consent) drops them for anyone who has not
granted ``social`` (opt-in workspaces) or has declined it (opt-out). Dropped records are in
the rejects file with the reason ``dropped: consent``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import select

from sartor.clock import now_ms
from sartor.importers import cleaning as c
from sartor.importers.profiles import (
    EMAIL_ANON_PREFIX,
    LIBRARY,
    MISSING_ID,
    account,
    email_hash,
    join_by_email,
    read_mapping_file,
    record_message_id,
    write_messages,
)
from sartor.importers.source import MalformedRow
from sartor.privacy.consent import DEFAULT_CATEGORIES
from sartor.storage.sql import chunks
from sartor.storage.tables import identities, profiles

if TYPE_CHECKING:
    from sartor.engine import Engine
    from sartor.importers import ImportJob
    from sartor.workspace import Workspace

SOCIAL = "social"
assert SOCIAL in DEFAULT_CATEGORIES
LISTS = ("interests", "likes")
CHUNK_ROWS = 200
MAX_ITEMS = 1000  # per list and record: a profile is not a data lake
INVALID_SIGNAL = "invalid_signal"
MISSING_SOURCE = "missing_source"
MAPPING_KEYS = ("source", "user_id", "email", "id", "lists")


class SocialMappingError(ValueError):
    pass


def social_mapping(
    mapping: Any, options: dict[str, Any] | None, preset: str | None
) -> dict[str, Any]:
    """``{source, user_id, email, id}``: the source name and the fields holding the ids.

    The source comes from ``options["source"]``, the mapping's ``source``, or the preset
    name (``POST /v1/imports`` with ``preset=facebook``), in that order; a record's own
    ``source`` field wins over all of them."""
    data: Any = mapping
    if isinstance(mapping, str) or hasattr(mapping, "read_text"):
        data = read_mapping_file(mapping)
    data = dict(data or {})
    unknown = sorted(str(k) for k in data if k not in MAPPING_KEYS)
    if unknown:
        raise SocialMappingError(
            f"mapping: unknown key {unknown[0]!r}; expected one of {', '.join(MAPPING_KEYS)}"
        )
    out = {"source": None, "user_id": None, "email": "email", "id": "id"}
    out.update({k: v for k, v in data.items() if v is not None})
    source = (options or {}).get("source") or out["source"] or preset
    if source is not None:
        source = check_source(source)
    out["source"] = source
    for key in ("user_id", "email", "id"):
        if out[key] is not None and not isinstance(out[key], str):
            raise SocialMappingError(f"mapping: {key} must name a field")
    return out


def check_source(value: Any) -> str:
    text = c.clean_text(value) if isinstance(value, str) else None
    if not text or len(text) > 64:
        raise SocialMappingError("source must be a name of 1 to 64 characters (facebook, ...)")
    return text.lower()


def signal_items(value: Any, field: str) -> list[dict[str, Any]]:
    """A list of interests or likes, cleaned: ``[{"name", "category"?, "id"?}]``.

    Accepted: a list of objects with a ``name`` (or ``title``), a list of strings, a JSON
    array in a string (CSV), or ``;``-separated names. Repeats (same name, any case) are kept
    once. An item without a name is :data:`INVALID_SIGNAL`."""
    if value is None or value == "":
        return []
    if isinstance(value, dict) and isinstance(value.get("data"), list):
        value = value["data"]  # Graph API style: {"data": [...], "paging": {...}}
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = orjson.loads(text)
            except orjson.JSONDecodeError:
                raise c.CleaningError(INVALID_SIGNAL, "is not a valid JSON array", field) from None
        else:
            value = [part for part in text.split(";") if part.strip()]
    if not isinstance(value, list):
        raise c.CleaningError(INVALID_SIGNAL, "must be a list", field)
    if len(value) > MAX_ITEMS:
        raise c.CleaningError(INVALID_SIGNAL, f"has more than {MAX_ITEMS} items", field)
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, item in enumerate(value):
        raw = item if isinstance(item, dict) else {"name": item}
        try:
            name = c.clean_text(raw.get("name", raw.get("title")))
            category = c.clean_text(raw.get("category"))
            item_id = c.clean_text(raw.get("id"))
        except c.CleaningError:
            raise c.CleaningError(
                INVALID_SIGNAL, "holds a non-text value", f"{field}[{i}]"
            ) from None
        if name is None:
            raise c.CleaningError(INVALID_SIGNAL, "has no name", f"{field}[{i}].name")
        if name.lower() in seen:
            continue
        seen.add(name.lower())
        clean: dict[str, Any] = {"name": name}
        if category is not None:
            clean["category"] = category
        if item_id is not None:
            clean["id"] = item_id
        out.append(clean)
    return out


def merge_social(
    existing: Any,
    source: str,
    lists: dict[str, list[dict[str, Any]]],
    account_id: str | None,
    imported_at: str,
) -> dict[str, Any]:
    """``traits.social`` with ``source``'s items replaced by ``lists`` (tagged with the
    source and time) and the other sources' items kept. Pure."""
    old = existing if isinstance(existing, dict) else {}
    out: dict[str, Any] = {}
    for name in LISTS:
        kept = [
            item
            for item in (old.get(name) or [])
            if isinstance(item, dict) and item.get("source") != source
        ]
        new = [{**item, "source": source, "importedAt": imported_at} for item in lists[name]]
        if kept or new:
            out[name] = kept + new
    accounts = dict(old.get("accounts") or {}) if isinstance(old.get("accounts"), dict) else {}
    if account_id is not None:
        accounts[source] = account_id
    if accounts:
        out["accounts"] = accounts
    return out


def _current_social(
    engine: Engine, ws: Workspace, ids: list[tuple[str, str]]
) -> dict[tuple[str, str], Any]:
    """The ``traits.social`` of each ``(field, value)`` id's profile, folded up to date."""
    kinds = {"userId": "user_id", "anonymousId": "anonymous_id"}
    pid_of: dict[tuple[str, str], str] = {}
    t = identities
    with engine.db.connect() as conn:
        for kind in ("userId", "anonymousId"):
            values = sorted({v for f, v in ids if f == kind})
            for part in chunks(values):
                for value, pid in conn.execute(
                    select(t.c.value, t.c.profile_id).where(
                        t.c.workspace_id == ws.id,
                        t.c.kind == kinds[kind],
                        t.c.value.in_(part),
                    )
                ).all():
                    pid_of[(kind, value)] = pid
    if not pid_of:
        return {}
    # A social import earlier in this file may not be folded yet: the merge must see it.
    engine.updater.catch_up((ws.id, pid) for pid in set(pid_of.values()))
    traits_of: dict[str, Any] = {}
    with engine.db.connect() as conn:
        for part in chunks(sorted(set(pid_of.values()))):
            for pid, traits in conn.execute(
                select(profiles.c.profile_id, profiles.c.traits).where(
                    profiles.c.workspace_id == ws.id, profiles.c.profile_id.in_(part)
                )
            ).all():
                traits_of[pid] = (traits or {}).get(SOCIAL)
    return {key: traits_of.get(pid) for key, pid in pid_of.items()}


def import_social(job: ImportJob) -> None:
    """Import social signals (``sartor import social``); see the module docstring."""
    from sartor.importers import ImportConfigError

    try:
        config = social_mapping(job.mapping, job.options, job.preset)
    except SocialMappingError as exc:
        raise ImportConfigError(str(exc)) from None
    imported_at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    dedupe = c.KeyDeduplicator()
    batch: list[tuple[int, dict[str, Any], dict[str, Any]]] = []
    clock = [0]  # the last timestamp given, so later rounds are later for last-writer-wins

    def flush() -> None:
        if batch:
            _write_social(job, batch, imported_at, clock)
            batch.clear()

    for line, row in job.rows():
        job.summary.read += 1
        job.advance(1)
        if isinstance(row, MalformedRow):
            job.rejects.write(line, row.reason, row.report())
            continue
        try:
            record = _record(row, config)
        except c.CleaningError as exc:
            job.rejects.write(line, exc.reason, row, exc.field)
            continue
        key = f"{record['source']}\x00{record['key']}"
        if not dedupe.add(key):
            job.rejects.write(line, c.DUPLICATE_KEY, row, record["key_field"])
            continue
        batch.append((line, row, record))
        if len(batch) >= CHUNK_ROWS:
            flush()
    flush()


def _record(row: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """Who a record is about, its source and its cleaned lists."""
    source = row.get("source") or config["source"]
    if not source:
        raise c.CleaningError(
            MISSING_SOURCE, "no source: pass --source (or a source field)", "source"
        )
    try:
        source = check_source(source)
    except SocialMappingError as exc:
        raise c.CleaningError(MISSING_SOURCE, str(exc), "source") from None
    user_field = config["user_id"]
    user_id = c.clean_text(
        row.get(user_field) if user_field else (row.get("userId") or row.get("user_id"))
    )
    email = None
    raw_email = row.get(config["email"]) if config["email"] else None
    if raw_email not in (None, ""):
        email = c.clean_email(raw_email) if isinstance(raw_email, str) else None
        if email is None:
            raise c.CleaningError(c.INVALID_EMAIL, "must be text", config["email"])
    account_id = c.clean_text(row.get(config["id"])) if config["id"] else None
    if user_id is None and email is None and account_id is None:
        raise c.CleaningError(MISSING_ID, "a record needs a userId, an email or an id")
    lists = {name: signal_items(row.get(name), name) for name in LISTS}
    if user_id is not None:
        key, key_field = "u:" + user_id, user_field or "userId"
    elif email is not None:
        key, key_field = "e:" + email, config["email"]
    else:
        key, key_field = "i:" + str(account_id), config["id"]
    return {
        "source": source,
        "user_id": user_id,
        "email": email,
        "account_id": account_id,
        "lists": lists,
        "key": key,
        "key_field": key_field,
    }


def _write_social(
    job: ImportJob,
    batch: list[tuple[int, dict[str, Any], dict[str, Any]]],
    imported_at: str,
    clock: list[int],
) -> None:
    engine, ws = job.engine, job.workspace
    hashes = {r["email"]: email_hash(engine, ws, r["email"]) for _, _, r in batch if r["email"]}
    joined = join_by_email(
        engine, ws, (hashes[r["email"]] for _, _, r in batch if r["email"] and not r["user_id"])
    )
    # Records of several sources about one person must each see the one before (the merge
    # reads the profile): a person appears at most once per round, and each round is
    # stored, with a later timestamp, before the next round reads.
    rounds: list[list[tuple[int, dict[str, Any], dict[str, Any], tuple[str, str]]]] = []
    seen: dict[tuple[str, str], int] = {}
    for line, row, r in batch:
        target = _target(r, hashes, joined)
        n = seen.get(target, 0)
        seen[target] = n + 1
        if n == len(rounds):
            rounds.append([])
        rounds[n].append((line, row, r, target))
    for members in rounds:
        clock[0] = max(now_ms(), clock[0] + 1)
        current = _current_social(engine, ws, [m[3] for m in members])
        messages = []
        for _, row, r, target in members:
            social = merge_social(
                current.get(target), r["source"], r["lists"], r["account_id"], imported_at
            )
            messages.append(
                {
                    "type": "identify",
                    target[0]: target[1],
                    "messageId": record_message_id("social", r["source"], row),
                    "timestamp": clock[0],
                    "traits": {SOCIAL: social},
                    "context": {"library": LIBRARY},
                }
            )
        results = write_messages(engine, ws, messages, category=SOCIAL)
        account(job, [(line, row) for line, row, _, _ in members], results)


def _target(r: dict[str, Any], hashes: dict[str, str], joined: dict[str, tuple]) -> tuple[str, str]:
    """The id a record is sent under (see the CRM importer's joining rules)."""
    if r["user_id"] is not None:
        return ("userId", r["user_id"])
    if r["email"] is not None:
        h = hashes[r["email"]]
        found = joined.get(h)
        return (found[0], found[1]) if found else ("anonymousId", EMAIL_ANON_PREFIX + h)
    return ("userId", str(r["account_id"]))
