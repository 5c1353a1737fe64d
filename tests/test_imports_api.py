"""POST /v1/imports: multipart uploads run as background jobs, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import insert, select

from sartor.clock import now_ms
from sartor.config import Settings
from sartor.engine import CreatedWorkspace, Engine
from sartor.importers.jobs import CRASHED, STALE_SECONDS, ImportJobs, new_job_id
from sartor.storage.db import write_tx
from sartor.storage.tables import import_jobs

LIMIT = 64 * 1024

CRM = (
    "Customer ID,E-mail,First Name,Phone,Loyalty Points,LTV,Customer Since\n"
    'c-1, Ann@Example.COM ,Ann,07911 123456,"1,200","€1.234,56",14/03/2021\n'
    "c-2,not-an-email,Bob,,10,12,2021-01-01\n"
    "c-3,cara@example.com,Cara,,5,100,2021-02-30\n"
    "c-4,dan@example.com,Dan,,5,lots,2021-02-03\n"
    "c-1,ann2@example.com,Ann,,1,1,2021-01-01\n"
    "c-5,eve@example.com,Eve,+33 1 23 45 67 89,0,$99.90,2020-03-14\n"
).encode()


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The conftest settings with a small upload limit, to test 413 cheaply."""
    return settings.model_copy(update={"import_max_upload_bytes": LIMIT})


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def upload(client: Any, key: str, name: str, body: bytes, **fields: str) -> Any:
    return client.post(
        "/v1/imports", headers=bearer(key), files={"file": (name, body)}, data=fields
    )


def wait_done(client: Any, key: str, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        resp = client.get(f"/v1/imports/{job_id}", headers=bearer(key))
        assert resp.status_code == 200, resp.text
        job: dict[str, Any] = resp.json()
        if job["status"] in ("done", "failed") or time.monotonic() > deadline:
            return job
        time.sleep(0.05)


def test_crm_upload_runs_as_a_job(client: Any, workspace: CreatedWorkspace, engine: Engine) -> None:
    admin = workspace.keys["admin"]
    resp = upload(client, admin, "crm.csv", CRM, kind="profiles", mapping='{"day_first": true}')
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert job["status"] == "queued" and job["kind"] == "profiles"
    assert resp.headers["location"] == f"/v1/imports/{job['id']}"

    done = wait_done(client, admin, job["id"])
    assert done["status"] == "done", done
    counts = done["counts"]
    assert (counts["read"], counts["imported"], counts["rejected"]) == (6, 2, 4)
    assert counts["rejected_by_reason"] == {
        "duplicate_key": 1,
        "invalid_date": 1,
        "invalid_email": 1,
        "invalid_number": 1,
    }
    rejects = client.get(f"/v1/imports/{job['id']}/rejects", headers=bearer(admin))
    assert rejects.status_code == 200
    assert rejects.headers["content-type"].startswith("application/x-ndjson")
    lines = [orjson.loads(line) for line in rejects.content.splitlines()]
    assert sorted((r["line"], r["reason"]) for r in lines) == [
        (3, "invalid_email"),
        (4, "invalid_date"),
        (5, "invalid_number"),
        (6, "duplicate_key"),
    ]
    # The upload is deleted when the job ends; its rejects stay in the job's folder.
    folder = Path(engine.settings.home) / "imports" / job["id"]
    assert sorted(p.name for p in folder.iterdir()) == ["crm.csv.rejects.jsonl"]
    assert done["sourceDeleted"] is True

    listed = client.get("/v1/imports", headers=bearer(admin)).json()["imports"]
    assert [j["id"] for j in listed] == [job["id"]]
    profile = client.get("/v1/profiles/c-1", headers=bearer(workspace.keys["read"])).json()
    assert profile["traits"]["loyaltyPoints"] == 1200
    assert profile["traits"]["customerSince"] == "2021-03-14"
    assert profile["traits"]["email"].startswith("hmac-sha256:")  # PII hashing applies

    # Deleting the job removes the upload and its rejects (personal data); the import stays.
    assert client.delete(f"/v1/imports/{job['id']}", headers=bearer(admin)).status_code == 204
    assert not folder.exists()
    assert client.get(f"/v1/imports/{job['id']}", headers=bearer(admin)).status_code == 404
    assert client.get("/v1/profiles/c-1", headers=bearer(workspace.keys["read"])).status_code == 200


def test_events_upload(client: Any, workspace: CreatedWorkspace) -> None:
    pytest.importorskip("sartor.importers.events")
    admin = workspace.keys["admin"]
    lines = [
        {
            "type": "track",
            "event": "Product Viewed",
            "userId": "u-1",
            "messageId": f"m-{i}",
            "timestamp": "2024-05-01T10:00:00Z",
            "properties": {"product_id": f"sku-{i}"},
        }
        for i in range(5)
    ]
    lines.append({"type": "track", "userId": "u-1", "messageId": "m-bad"})  # no event name
    body = b"".join(orjson.dumps(line) + b"\n" for line in lines)
    resp = upload(client, admin, "events.jsonl", body, kind="events", preset="segment")
    assert resp.status_code == 202, resp.text
    done = wait_done(client, admin, resp.json()["id"])
    assert done["status"] == "done", done
    assert (done["counts"]["read"], done["counts"]["imported"]) == (6, 5)
    assert done["counts"]["rejected"] == 1
    stored = client.get("/v1/events?limit=50", headers=bearer(workspace.keys["read"])).json()
    ids = {e["messageId"] for e in stored["events"]}
    assert {f"m-{i}" for i in range(5)} <= ids


def test_auth_and_isolation(client: Any, workspace: CreatedWorkspace, engine: Engine) -> None:
    keys = workspace.keys
    assert upload(client, "", "crm.csv", CRM, kind="profiles").status_code == 401
    assert client.post("/v1/imports", files={"file": ("a.csv", CRM)}).status_code == 401
    for kind in ("write", "read"):
        resp = upload(client, keys[kind], "crm.csv", CRM, kind="profiles")
        assert resp.status_code == 403, resp.text
    job = upload(client, keys["admin"], "crm.csv", CRM, kind="profiles").json()
    for path in (f"/v1/imports/{job['id']}", f"/v1/imports/{job['id']}/rejects", "/v1/imports"):
        assert client.get(path, headers=bearer(keys["read"])).status_code == 403
        assert client.get(path).status_code == 401
    other = engine.create_workspace("other").keys["admin"]
    assert client.get(f"/v1/imports/{job['id']}", headers=bearer(other)).status_code == 404
    assert client.get(f"/v1/imports/{job['id']}/rejects", headers=bearer(other)).status_code == 404
    assert client.get("/v1/imports", headers=bearer(other)).json()["imports"] == []
    assert client.get("/v1/imports/imp_nope", headers=bearer(keys["admin"])).status_code == 404
    assert wait_done(client, keys["admin"], job["id"])["status"] == "done"


def test_oversize_uploads_are_refused(
    client: Any, workspace: CreatedWorkspace, engine: Engine
) -> None:
    admin = workspace.keys["admin"]
    # Streamed past the limit: stopped at the limit, nothing kept.
    resp = upload(client, admin, "big.csv", b"x" * (LIMIT + 1), kind="profiles")
    assert resp.status_code == 413, resp.text
    assert resp.json()["errors"][0]["field"] == "file"
    # Announced far past the limit: refused before reading.
    resp = upload(client, admin, "huge.csv", b"x" * (LIMIT + 2 * 1024 * 1024), kind="profiles")
    assert resp.status_code == 413
    # Exactly at the limit is fine.
    at_limit = b"email\n" + b"a@example.com\n" * ((LIMIT - 6) // 14)
    at_limit += b"x" * (LIMIT - len(at_limit))
    assert upload(client, admin, "edge.csv", at_limit, kind="profiles").status_code == 202
    jobs = client.get("/v1/imports", headers=bearer(admin)).json()["imports"]
    assert [j["filename"] for j in jobs] == ["edge.csv"]
    folders = list((Path(engine.settings.home) / "imports").iterdir())
    assert [f.name for f in folders] == [jobs[0]["id"]]


FILE = ("crm.csv", CRM)


@pytest.mark.parametrize(
    ("parts", "field", "status"),
    [
        ({"file": FILE}, "kind", 400),
        ({"file": FILE, "kind": "customers"}, "kind", 400),
        ({"kind": "profiles"}, "file", 400),
        ({"file": ("crm.csv", b""), "kind": "profiles"}, "file", 400),
        ({"file": b"no filename", "kind": "profiles"}, "file", 400),
        ({"file": FILE, "kind": "profiles", "mapping": "{not json"}, "mapping", 400),
        ({"file": FILE, "kind": "profiles", "mapping": "[1, 2]"}, "mapping", 400),
        ({"file": FILE, "kind": "profiles", "format": "xlsx"}, "format", 400),
        ({"file": FILE, "kind": "profiles", "colour": "red"}, "colour", 400),
        ({"file": FILE, "kind": ["profiles", "events"]}, "kind", 400),
        ({"file": FILE, "kind": "profiles", "preset": "x" * 70_000}, "preset", 413),
    ],
)
def test_bad_uploads_name_the_field(
    client: Any, workspace: CreatedWorkspace, parts: dict[str, Any], field: str, status: int
) -> None:
    admin = workspace.keys["admin"]
    files: list[tuple[str, Any]] = []
    for name, value in parts.items():
        if isinstance(value, tuple):
            files.append((name, value))
        elif isinstance(value, bytes):
            files.append((name, (None, value)))  # a plain field, not a file part
        else:
            for v in value if isinstance(value, list) else [value]:
                files.append((name, (None, v)))
    resp = client.post("/v1/imports", headers=bearer(admin), files=files)
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["success"] is False
    assert body["errors"][0]["field"] == field
    assert client.get("/v1/imports", headers=bearer(admin)).json()["imports"] == []


def test_not_multipart(client: Any, workspace: CreatedWorkspace) -> None:
    resp = client.post(
        "/v1/imports", headers=bearer(workspace.keys["admin"]), json={"kind": "profiles"}
    )
    assert resp.status_code == 400
    assert resp.json()["errors"][0]["field"] == "body"


def test_mapping_file_part_and_failed_job(client: Any, workspace: CreatedWorkspace) -> None:
    admin = workspace.keys["admin"]
    resp = client.post(
        "/v1/imports",
        headers=bearer(admin),
        files={
            "file": ("crm.csv", CRM),
            "mapping": ("crm.yaml", b"day_first: false\ncolumns:\n  Phone: null\n"),
        },
        data={"kind": "profiles"},
    )
    assert resp.status_code == 202, resp.text
    done = wait_done(client, admin, resp.json()["id"])
    assert done["status"] == "done" and done["options"]["mapping"]["day_first"] is False
    # 14/03/2021 is unambiguous either way; the phone column was dropped.
    profile = client.get("/v1/profiles/c-1", headers=bearer(workspace.keys["read"])).json()
    assert "phone" not in profile["traits"]

    bad = upload(client, admin, "crm.csv", CRM, kind="profiles", mapping='{"bogus": 1}')
    failed = wait_done(client, admin, bad.json()["id"])
    assert failed["status"] == "failed"
    assert "bogus" in failed["error"]


def _job_row(engine: Engine, ws_id: str, status: str, runner: str, age_ms: int) -> str:
    job_id = new_job_id()
    folder = engine.imports.folder(job_id)
    folder.mkdir(parents=True)
    (folder / "crm.csv").write_bytes(CRM)
    at = now_ms() - age_ms
    with write_tx(engine.db) as conn:
        conn.execute(
            insert(import_jobs).values(
                id=job_id,
                workspace_id=ws_id,
                kind="profiles",
                filename="crm.csv",
                options={"file": "crm.csv", "mapping": {"day_first": True}, "runner": runner},
                status=status,
                counts={},
                error=None,
                created_at=at,
                updated_at=at,
            )
        )
    return job_id


def _status(engine: Engine, job_id: str) -> tuple[str, str | None]:
    with engine.db.connect() as conn:
        row = conn.execute(
            select(import_jobs.c.status, import_jobs.c.error).where(import_jobs.c.id == job_id)
        ).one()
    return row.status, row.error


def test_start_fails_crashed_jobs_and_runs_queued_ones(
    engine: Engine, workspace: CreatedWorkspace
) -> None:
    ws = workspace.workspace.id
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    host = socket.gethostname()
    crashed = _job_row(engine, ws, "running", f"{host}:{int(dead.stdout)}:x", 1_000)
    stale = _job_row(engine, ws, "running", "elsewhere:1:x", int(STALE_SECONDS * 1000) + 5_000)
    alive_elsewhere = _job_row(engine, ws, "running", "elsewhere:1:x", 1_000)
    alive_here = _job_row(engine, ws, "running", f"{host}:{os.getpid()}:x", 1_000)
    queued = _job_row(engine, ws, "queued", "", 1_000)

    engine.start()  # the fixture closes it
    assert _status(engine, crashed) == ("failed", CRASHED)
    assert _status(engine, stale) == ("failed", CRASHED)
    assert _status(engine, alive_elsewhere) == ("running", None)
    # This process, but not a runner of this process: a previous life of the process id.
    assert _status(engine, alive_here) == ("failed", CRASHED)
    job = engine.imports.wait(ws, queued, timeout=60)
    assert job["status"] == "done", job
    assert job["counts"]["imported"] == 2


def test_a_graceful_stop_puts_the_job_back_in_the_queue(
    engine: Engine, workspace: CreatedWorkspace
) -> None:
    ws = workspace.workspace.id
    job_id = _job_row(engine, ws, "queued", "", 0)
    jobs = ImportJobs(engine)
    jobs._stopping.set()  # as close() does while a job runs
    jobs._run(job_id)  # the first progress report stops it
    assert _status(engine, job_id) == ("queued", None)
    assert engine.imports.get(ws, job_id)["counts"] == {}
    # The next runner takes it from the start; the import is idempotent.
    jobs = ImportJobs(engine)
    jobs._run(job_id)
    done = engine.imports.get(ws, job_id)
    assert done["status"] == "done" and done["counts"]["imported"] == 2


def test_an_active_job_cannot_be_deleted(
    client: Any, engine: Engine, workspace: CreatedWorkspace
) -> None:
    admin = workspace.keys["admin"]
    job_id = _job_row(engine, workspace.workspace.id, "running", "elsewhere:1:x", 0)
    resp = client.delete(f"/v1/imports/{job_id}", headers=bearer(admin))
    assert resp.status_code == 409
    assert engine.imports.folder(job_id).is_dir()
    other = engine.create_workspace("other").keys["admin"]
    assert client.delete(f"/v1/imports/{job_id}", headers=bearer(other)).status_code == 404
    assert (
        client.delete(f"/v1/imports/{job_id}", headers=bearer(workspace.keys["read"])).status_code
        == 403
    )
