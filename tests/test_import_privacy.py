"""Personal data in import job folders: uploads go when the job ends, rejects files after
SARTOR_IMPORT_RETENTION_DAYS, and erasure removes the person's lines from rejects files."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from sartor.clock import now_ms
from sartor.config import Settings
from sartor.engine import CreatedWorkspace, Engine
from sartor.importers.jobs import CRASHED, ImportJobs
from sartor.scheduler import Scheduler
from tests.test_imports_api import CRM, _job_row, _status, bearer, upload, wait_done

DAY_MS = 86_400_000


def _folder(engine: Engine, job_id: str) -> Path:
    return engine.imports.folder(job_id)


def _rejects(engine: Engine, job_id: str) -> list[dict[str, Any]]:
    path = _folder(engine, job_id) / "crm.csv.rejects.jsonl"
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def _done_crm_job(client: Any, workspace: CreatedWorkspace) -> str:
    admin = workspace.keys["admin"]
    resp = upload(client, admin, "crm.csv", CRM, kind="profiles", mapping='{"day_first": true}')
    assert resp.status_code == 202, resp.text
    assert resp.json()["sourceDeleted"] is False  # queued: the upload is there
    job = wait_done(client, admin, resp.json()["id"])
    assert job["status"] == "done", job
    return str(job["id"])


def test_the_upload_is_deleted_when_the_job_is_done(
    client: Any, workspace: CreatedWorkspace, engine: Engine
) -> None:
    admin = workspace.keys["admin"]
    job_id = _done_crm_job(client, workspace)
    folder = _folder(engine, job_id)
    assert sorted(p.name for p in folder.iterdir()) == ["crm.csv.rejects.jsonl"]
    job = client.get(f"/v1/imports/{job_id}", headers=bearer(admin)).json()
    assert job["sourceDeleted"] is True and job["rejectsPurged"] is False
    assert job["options"]["file"] == "crm.csv"  # the name stays, for the record
    assert "source_deleted" not in job["options"]
    rejects = client.get(f"/v1/imports/{job_id}/rejects", headers=bearer(admin))
    assert len(rejects.content.splitlines()) == 4  # the rejects are kept (retention)


def test_the_upload_is_deleted_when_the_job_fails(
    client: Any, workspace: CreatedWorkspace, engine: Engine
) -> None:
    admin = workspace.keys["admin"]
    bad = upload(client, admin, "crm.csv", CRM, kind="profiles", mapping='{"bogus": 1}')
    failed = wait_done(client, admin, bad.json()["id"])
    assert failed["status"] == "failed" and "bogus" in failed["error"]
    assert failed["sourceDeleted"] is True
    assert not (_folder(engine, failed["id"]) / "crm.csv").exists()


def test_a_crashed_job_loses_its_upload(engine: Engine, workspace: CreatedWorkspace) -> None:
    job_id = _job_row(engine, workspace.workspace.id, "running", "elsewhere:1:x", 10 * DAY_MS)
    assert engine.imports.recover() == 1
    assert _status(engine, job_id) == ("failed", CRASHED)
    assert "upload the file again" in CRASHED
    assert not (_folder(engine, job_id) / "crm.csv").exists()
    assert engine.imports.get(workspace.workspace.id, job_id)["sourceDeleted"] is True


def test_a_requeued_job_keeps_its_upload(engine: Engine, workspace: CreatedWorkspace) -> None:
    ws = workspace.workspace.id
    job_id = _job_row(engine, ws, "queued", "", 0)
    jobs = ImportJobs(engine)
    jobs._stopping.set()  # as close() does while a job runs
    jobs._run(job_id)
    assert _status(engine, job_id) == ("queued", None)
    assert (_folder(engine, job_id) / "crm.csv").read_bytes() == CRM
    assert engine.imports.get(ws, job_id)["sourceDeleted"] is False
    ImportJobs(engine)._run(job_id)  # the next start runs it from the kept upload
    done = engine.imports.get(ws, job_id)
    assert done["status"] == "done" and done["counts"]["imported"] == 2
    assert done["sourceDeleted"] is True
    assert not (_folder(engine, job_id) / "crm.csv").exists()


def _only_imports_due(scheduler: Scheduler) -> None:
    """Mark every other scheduled job as just run, so a tick runs the purge alone."""
    clock = time.monotonic()
    scheduler._last = {j: clock for j in ("segments", "rfm", "clusters", "models")}


def test_the_scheduler_purges_rejects_past_the_retention(
    client: Any, workspace: CreatedWorkspace, engine: Engine
) -> None:
    admin = workspace.keys["admin"]
    assert engine.settings.import_retention_days == 7
    old, young = _done_crm_job(client, workspace), _done_crm_job(client, workspace)
    old_rejects = _folder(engine, old) / "crm.csv.rejects.jsonl"
    young_rejects = _folder(engine, young) / "crm.csv.rejects.jsonl"
    aged = time.time() - 8 * 86_400
    os.utime(old_rejects, (aged, aged))
    six_days = time.time() - 6 * 86_400
    os.utime(young_rejects, (six_days, six_days))

    scheduler = Scheduler(engine)
    _only_imports_due(scheduler)
    assert scheduler.tick() == ["imports"]
    assert not old_rejects.exists() and young_rejects.exists()
    job = client.get(f"/v1/imports/{old}", headers=bearer(admin)).json()
    assert job["rejectsPurged"] is True and job["status"] == "done"  # the job row stays
    assert client.get(f"/v1/imports/{old}/rejects", headers=bearer(admin)).content == b""
    assert (
        client.get(f"/v1/imports/{young}", headers=bearer(admin)).json()["rejectsPurged"] is False
    )
    assert scheduler.tick() == []  # checked hourly

    # The clock is the scheduler's: two days later the six-day-old file is past 7 days.
    scheduler = Scheduler(engine)
    _only_imports_due(scheduler)
    assert scheduler.tick(now=now_ms() + 2 * DAY_MS) == ["imports"]
    assert not young_rejects.exists()
    assert engine.imports.get(workspace.workspace.id, young)["rejectsPurged"] is True
    assert engine.imports.purge_rejects(now_ms() + 30 * DAY_MS) == 0  # nothing left


def test_the_purge_deletes_uploads_left_by_jobs_that_ended_earlier(
    engine: Engine, workspace: CreatedWorkspace
) -> None:
    ws = workspace.workspace.id
    ended = _job_row(engine, ws, "done", "", DAY_MS)  # ended before uploads went at the end
    queued = _job_row(engine, ws, "queued", "", DAY_MS)
    assert engine.imports.purge_rejects() == 0  # no rejects file
    assert not (_folder(engine, ended) / "crm.csv").exists()
    assert engine.imports.get(ws, ended)["sourceDeleted"] is True
    assert (_folder(engine, queued) / "crm.csv").exists()  # not ended: kept


def test_retention_must_be_positive(tmp_path: Path) -> None:
    for bad in (0, -1, float("nan")):
        with pytest.raises(ValidationError, match="SARTOR_IMPORT_RETENTION_DAYS"):
            Settings(env="test", home=tmp_path, import_retention_days=bad)
    assert Settings(env="test", home=tmp_path, import_retention_days=0.5).import_retention_days


def test_erasure_removes_the_persons_lines_from_rejects(
    client: Any, workspace: CreatedWorkspace, engine: Engine
) -> None:
    admin = workspace.keys["admin"]
    job_id = _done_crm_job(client, workspace)
    before = _rejects(engine, job_id)
    assert sorted(r["row"]["Customer ID"] for r in before) == ["c-1", "c-2", "c-3", "c-4"]
    mtime = (_folder(engine, job_id) / "crm.csv.rejects.jsonl").stat().st_mtime_ns

    # c-1 was imported (line 2); their second row (line 6, duplicate_key) is a reject.
    resp = client.delete("/v1/users/c-1", headers=bearer(admin))
    assert resp.status_code == 200, resp.text
    assert resp.json()["erased"]["import_rejects"] == 1
    after = _rejects(engine, job_id)
    assert after == [r for r in before if r["row"]["Customer ID"] != "c-1"]
    assert not any("ann" in orjson.dumps(r).decode().lower() for r in after)
    folder = _folder(engine, job_id)
    assert sorted(p.name for p in folder.iterdir()) == ["crm.csv.rejects.jsonl"]  # no temp

    # Dan was never imported (his row was refused): erasing his email, written differently,
    # finds his raw row all the same.
    counts = engine.erase_user(workspace.workspace.id, "DAN@example.com")
    assert counts["import_rejects"] == 1
    assert sorted(r["row"]["Customer ID"] for r in _rejects(engine, job_id)) == ["c-2", "c-3"]

    # Nobody's lines: the file is left as it is.
    mtime = (folder / "crm.csv.rejects.jsonl").stat().st_mtime_ns
    assert engine.erase_user(workspace.workspace.id, "nobody-at-all")["import_rejects"] == 0
    assert (folder / "crm.csv.rejects.jsonl").stat().st_mtime_ns == mtime


def test_erasure_by_email_reaches_rows_holding_the_user_id(
    client: Any, workspace: CreatedWorkspace, engine: Engine
) -> None:
    job_id = _done_crm_job(client, workspace)
    # Ann (c-1) was imported with her email: erasing her by the email finds her profile,
    # whose identities (the user id c-1) name her other row.
    counts = engine.erase_user(workspace.workspace.id, "ann@example.com")
    assert counts["profiles_found"] == 1 and counts["import_rejects"] == 1
    assert "c-1" not in {r["row"]["Customer ID"] for r in _rejects(engine, job_id)}


def test_a_queued_upload_of_an_erased_person_leaves_nothing(
    engine: Engine, workspace: CreatedWorkspace
) -> None:
    """Suppression covers an upload queued before the erasure: its rows for the person are
    dropped when it runs, and their "dropped: suppressed" rejects lines are removed when
    the job ends."""
    ws = workspace.workspace.id
    job_id = _job_row(engine, ws, "queued", "", 0)  # not submitted: it waits in the queue
    counts = engine.erase_user(ws, "c-1")
    assert counts["import_rejects"] == 0  # nothing on disk but the queued upload
    ImportJobs(engine)._run(job_id)
    job = engine.imports.get(ws, job_id)
    assert job["status"] == "done" and job["sourceDeleted"] is True
    assert job["counts"]["rejected_by_reason"].get("dropped: suppressed") == 1
    rows = _rejects(engine, job_id)
    assert "c-1" not in {r["row"]["Customer ID"] for r in rows}
    assert not any("ann" in orjson.dumps(r).decode().lower() for r in rows)
    assert {r["row"]["Customer ID"] for r in rows} == {"c-2", "c-3", "c-4"}
    with pytest.raises(LookupError):
        engine.profile(ws, "c-1")
