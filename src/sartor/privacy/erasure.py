"""Erasure and export of everything held about one person (events, identities, profile),
and the suppression that keeps their later events out."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, delete, or_, select

from sartor.clock import iso, now_ms
from sartor.collect.ingest import suppression_hashes
from sartor.storage.sql import chunks, execute_many, insert_ignore
from sartor.storage.tables import events, identities, profiles, suppressions


def find_profiles(conn: Connection, workspace_id: str, any_id: str) -> list[str]:
    """Profiles reached by a userId, anonymousId or profile id."""
    pids = set(
        conn.execute(
            select(identities.c.profile_id).where(
                identities.c.workspace_id == workspace_id, identities.c.value == any_id
            )
        ).scalars()
    )
    if any_id.startswith("p_"):
        pids.update(
            conn.execute(
                select(profiles.c.profile_id).where(
                    profiles.c.workspace_id == workspace_id, profiles.c.profile_id == any_id
                )
            ).scalars()
        )
    return sorted(pids)


def _ids_of(conn: Connection, workspace_id: str, pids: list[str]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for part in chunks(pids):
        out.extend(
            (row.kind, row.value)
            for row in conn.execute(
                select(identities.c.kind, identities.c.value).where(
                    identities.c.workspace_id == workspace_id, identities.c.profile_id.in_(part)
                )
            )
        )
    return out


def _event_filter(workspace_id: str, pids: list[str], values: list[str]) -> Any:
    return (events.c.workspace_id == workspace_id) & or_(
        events.c.profile_id.in_(pids),
        events.c.user_id.in_(values),
        events.c.anonymous_id.in_(values),
    )


def erase_user(conn: Connection, workspace_id: str, any_id: str, secret: str) -> dict[str, int]:
    """Delete a person's events, identity links and profile; suppress their ids for good.

    Suppressions hold keyed hashes, not the ids, so after erasure no row holds the ids in
    clear. Returns the number of rows removed per table.
    """
    pids = find_profiles(conn, workspace_id, any_id)
    values = sorted({v for _, v in _ids_of(conn, workspace_id, pids)} | {any_id})
    counts = {"events": 0, "identities": 0, "profiles": 0}
    for part in chunks(values, 300):
        counts["events"] += conn.execute(
            delete(events).where(_event_filter(workspace_id, pids or [""], part))
        ).rowcount
    for part in chunks(pids):
        counts["identities"] += conn.execute(
            delete(identities).where(
                identities.c.workspace_id == workspace_id, identities.c.profile_id.in_(part)
            )
        ).rowcount
        counts["profiles"] += conn.execute(
            delete(profiles).where(
                profiles.c.workspace_id == workspace_id, profiles.c.profile_id.in_(part)
            )
        ).rowcount
    now = now_ms()
    hashes = suppression_hashes(secret, workspace_id, values)
    execute_many(
        conn,
        insert_ignore(conn, suppressions),
        [
            {"workspace_id": workspace_id, "id_hash": h, "reason": "erasure", "created_at": now}
            for h in hashes.values()
        ],
    )
    counts["suppressed_ids"] = len(hashes)
    counts["profiles_found"] = len(pids)
    return counts


def event_document(row: Any) -> dict[str, Any]:
    """A stored event as the API shows it (Segment field names, ISO times)."""
    payload = dict(row.payload)
    doc: dict[str, Any] = {
        "seq": row.seq,
        "messageId": row.message_id,
        "type": row.type,
        "userId": row.user_id,
        "anonymousId": row.anonymous_id,
        "profileId": row.profile_id,
        "consentCategory": row.category,
        "timestamp": iso(row.timestamp),
        "receivedAt": iso(row.received_at),
    }
    if row.type == "track":
        doc["event"] = row.event
    elif row.type in ("page", "screen"):
        doc["name"] = row.event
    for key in ("originalTimestamp", "sentAt"):
        if isinstance(payload.get(key), int):
            payload[key] = iso(payload[key])
    doc.update(payload)
    return doc


def export_user(conn: Connection, workspace_id: str, any_id: str) -> dict[str, Any] | None:
    """Everything held about a person, as JSON-ready data; None if nothing is."""
    pids = find_profiles(conn, workspace_id, any_id)
    links = _ids_of(conn, workspace_id, pids)
    values = sorted({v for _, v in links} | {any_id})
    profile_rows: list[Any] = []
    for part in chunks(pids):
        profile_rows.extend(
            conn.execute(
                select(profiles).where(
                    profiles.c.workspace_id == workspace_id, profiles.c.profile_id.in_(part)
                )
            )
        )
    event_rows = conn.execute(
        select(events)
        .where(_event_filter(workspace_id, pids or [""], values[:500]))
        .order_by(events.c.seq)
    ).all()
    if not pids and not event_rows:
        return None
    return {
        "id": any_id,
        "profiles": [
            {
                "profileId": p.profile_id,
                "consent": p.consent,
                "traits": p.traits,
                "createdAt": iso(p.created_at),
                "updatedAt": iso(p.updated_at),
                "version": p.version,
            }
            for p in profile_rows
        ],
        "identities": [{"kind": k, "value": v} for k, v in links],
        "events": [event_document(r) for r in event_rows],
    }
