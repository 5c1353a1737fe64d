"""Workspaces and their API keys. Keys are shown once and stored as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from sqlalchemy import Connection, select, update

from sartor.clock import now_ms
from sartor.storage.tables import api_keys, workspaces
from sartor.workspace import KEY_KINDS, Workspace, WorkspaceSettings

KEY_PREFIX = {"write": "sk_w_", "read": "sk_r_", "admin": "sk_a_"}


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(kind: str) -> str:
    return KEY_PREFIX[kind] + secrets.token_urlsafe(24)


def _row_to_workspace(row: Any) -> Workspace:
    settings = WorkspaceSettings.model_validate(row.settings)
    return Workspace(id=row.id, name=row.name, settings=settings, created_at=row.created_at)


def create_workspace(
    conn: Connection, name: str, settings: WorkspaceSettings
) -> tuple[Workspace, dict[str, str]]:
    """A new workspace and one key of each kind (returned in clear this once only)."""
    ws_id = "ws_" + secrets.token_hex(8)
    now = now_ms()
    conn.execute(
        workspaces.insert().values(
            id=ws_id,
            name=name,
            consent_mode=settings.consent_mode,
            settings=settings.model_dump(mode="json"),
            created_at=now,
        )
    )
    keys = {kind: add_key(conn, ws_id, kind) for kind in KEY_KINDS}
    return Workspace(ws_id, name, settings, now), keys


def add_key(conn: Connection, workspace_id: str, kind: str) -> str:
    if kind not in KEY_KINDS:
        raise ValueError(f"key kind must be one of {KEY_KINDS}")
    key = new_key(kind)
    conn.execute(
        api_keys.insert().values(
            id="key_" + secrets.token_hex(8),
            workspace_id=workspace_id,
            kind=kind,
            key_hash=hash_key(key),
            prefix=key[:9],
            created_at=now_ms(),
            revoked_at=None,
        )
    )
    return key


def get_workspace(conn: Connection, id_or_name: str) -> Workspace | None:
    row = conn.execute(
        select(workspaces).where(
            (workspaces.c.id == id_or_name) | (workspaces.c.name == id_or_name)
        )
    ).first()
    return _row_to_workspace(row) if row else None


def list_workspaces(conn: Connection) -> list[Workspace]:
    return [
        _row_to_workspace(r)
        for r in conn.execute(select(workspaces).order_by(workspaces.c.created_at))
    ]


def update_settings(conn: Connection, workspace_id: str, settings: WorkspaceSettings) -> None:
    conn.execute(
        update(workspaces)
        .where(workspaces.c.id == workspace_id)
        .values(settings=settings.model_dump(mode="json"), consent_mode=settings.consent_mode)
    )


def resolve_key(conn: Connection, key: str) -> tuple[str, str] | None:
    """``(workspace_id, kind)`` of a live key, or None."""
    row = conn.execute(
        select(api_keys.c.workspace_id, api_keys.c.kind).where(
            api_keys.c.key_hash == hash_key(key), api_keys.c.revoked_at.is_(None)
        )
    ).first()
    return (row.workspace_id, row.kind) if row else None
