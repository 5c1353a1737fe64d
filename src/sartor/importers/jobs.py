"""Import jobs: files uploaded for import, run in the background, one at a time per process.

A job is a row of ``import_jobs`` and a folder ``SARTOR_HOME/imports/<id>/`` holding the
uploaded file and, beside it, its rejects file. Life of a job::

    queued --(claimed by one process)--> running --> done | failed

* While running, the job's ``counts`` hold the rows read so far and ``updated_at`` is a
  heartbeat (every :data:`HEARTBEAT_SECONDS`); at the end ``counts`` is the import summary.
* A graceful stop (``Engine.close``) interrupts the import between rows and puts the job
  back to ``queued``; the next engine start (of any process on the database) runs it again
  from the start. That is safe because imports are idempotent: the rows already stored come
  back as duplicates.
* A job left ``running`` by a crash (its process is gone, or its heartbeat is older than
  :data:`STALE_SECONDS`) is marked ``failed`` at the next engine start, with an error saying
  so. It is not re-run: a file that crashed the process once would crash it again.

This module is domain code: the HTTP upload lives in ``sartor.api.routers.imports``.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import secrets
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, insert, select, update

from sartor.clock import iso, now_ms
from sartor.storage import db
from sartor.storage.tables import import_jobs

if TYPE_CHECKING:
    from sartor.engine import Engine
    from sartor.importers import ImportSummary

log = logging.getLogger("sartor.imports")

KINDS = ("events", "profiles", "items", "social")
QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
HEARTBEAT_SECONDS = 2.0
# A running job whose heartbeat is this old belongs to a process that is gone (on another
# machine, where we cannot look for the process).
STALE_SECONDS = 300.0
JOB_ID_RE = re.compile(r"^imp_[0-9a-f]{24}$")
CRASHED = (
    "interrupted: the process running this import stopped (crash or kill) before it "
    "finished; upload the file again (rows already imported are skipped as duplicates)"
)

# Runner tokens of the job runners alive in this process: a job marked running by this
# host and process id is alive exactly when its token is one of these.
_LIVE_RUNNERS: set[str] = set()


class JobInterrupted(Exception):
    """Raised inside an import to stop it between rows (the engine is closing)."""


def new_job_id() -> str:
    return "imp_" + secrets.token_hex(12)


def safe_filename(name: str | None) -> str:
    """The uploaded file's base name with only safe characters (the extension tells the
    format, so it is kept), never a path."""
    base = Path((name or "").replace("\\", "/")).name
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or "upload"
    return cleaned[-120:]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError:
        return False
    return True


class ImportJobs:
    """The import jobs of one engine: create, list, run (a single background thread)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.host = socket.gethostname()
        self.token = secrets.token_hex(6)
        self.runner = f"{self.host}:{os.getpid()}:{self.token}"
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._closed = False

    # -- where files go ------------------------------------------------------------------

    @property
    def root(self) -> Path:
        return Path(self.engine.settings.home) / "imports"

    def folder(self, job_id: str) -> Path:
        if not JOB_ID_RE.match(job_id):
            raise ValueError(f"{job_id!r} is not an import job id")
        return self.root / job_id

    def discard(self, job_id: str) -> None:
        """Remove the folder of an upload that never became a job (refused, cut off)."""
        shutil.rmtree(self.folder(job_id), ignore_errors=True)

    # -- creating and reading ------------------------------------------------------------

    def create(
        self,
        workspace_id: str,
        job_id: str,
        kind: str,
        filename: str,
        stored_name: str,
        *,
        mapping: dict[str, Any] | None = None,
        preset: str | None = None,
        format: str | None = None,
        size: int | None = None,
    ) -> dict[str, Any]:
        """Record a queued job for a file already saved in :meth:`folder` and queue it."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if not (self.folder(job_id) / stored_name).is_file():
            raise FileNotFoundError(f"{stored_name} is not in the job's folder")
        now = now_ms()
        options = {
            "file": stored_name,
            "bytes": size,
            "mapping": mapping,
            "preset": preset,
            "format": format,
        }
        with db.write_tx(self.engine.db) as conn:
            conn.execute(
                insert(import_jobs).values(
                    id=job_id,
                    workspace_id=workspace_id,
                    kind=kind,
                    filename=filename,
                    options=options,
                    status=QUEUED,
                    counts={},
                    error=None,
                    created_at=now,
                    updated_at=now,
                )
            )
        self._submit(job_id)
        job = self.get(workspace_id, job_id)
        assert job is not None
        return job

    def get(self, workspace_id: str, job_id: str) -> dict[str, Any] | None:
        """One job of the workspace (None for another workspace's job)."""
        t = import_jobs
        with self.engine.db.connect() as conn:
            row = conn.execute(
                select(t).where(t.c.workspace_id == workspace_id, t.c.id == job_id)
            ).first()
        return _document(row) if row is not None else None

    def list(self, workspace_id: str, limit: int = 50) -> list[dict[str, Any]]:
        """The workspace's jobs, newest first."""
        t = import_jobs
        limit = max(1, min(limit, 500))
        with self.engine.db.connect() as conn:
            rows = conn.execute(
                select(t)
                .where(t.c.workspace_id == workspace_id)
                .order_by(t.c.created_at.desc(), t.c.id)
                .limit(limit)
            ).all()
        return [_document(r) for r in rows]

    def rejects_file(self, workspace_id: str, job_id: str) -> Path | None:
        """The job's rejects file, if the job is the workspace's and has refused rows."""
        job = self.get(workspace_id, job_id)
        if job is None:
            return None
        path = self.folder(job_id) / f"{job['options']['file']}.rejects.jsonl"
        return path if path.is_file() else None

    def delete(self, workspace_id: str, job_id: str) -> bool | None:
        """Remove a finished job, its upload and its rejects (they may hold personal data).
        None when the workspace has no such job; False while it is queued or running."""
        t = import_jobs
        with db.write_tx(self.engine.db) as conn:
            result = conn.execute(
                delete(t).where(
                    t.c.workspace_id == workspace_id,
                    t.c.id == job_id,
                    t.c.status.in_((DONE, FAILED)),
                )
            )
        if result.rowcount:
            self.discard(job_id)
            return True
        return None if self.get(workspace_id, job_id) is None else False

    def wait(self, workspace_id: str, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """The job once it is done or failed (for notebooks and tests)."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(workspace_id, job_id)
            if job is None:
                raise LookupError(f"no import job {job_id!r}")
            if job["status"] in (DONE, FAILED) or time.monotonic() > deadline:
                return job
            time.sleep(0.05)

    # -- running -------------------------------------------------------------------------

    def start(self) -> None:
        """At engine start: fail the jobs a crash left running, then run the queued ones."""
        self.recover()
        t = import_jobs
        with self.engine.db.connect() as conn:
            queued = conn.execute(
                select(t.c.id).where(t.c.status == QUEUED).order_by(t.c.created_at)
            ).all()
        for (job_id,) in queued:
            self._submit(job_id)

    def recover(self) -> int:
        """Mark ``failed`` the jobs left ``running`` by a process that is gone."""
        t = import_jobs
        now = now_ms()
        with self.engine.db.connect() as conn:
            running = conn.execute(
                select(t.c.id, t.c.options, t.c.updated_at).where(t.c.status == RUNNING)
            ).all()
        failed = 0
        for job_id, options, updated_at in running:
            if not self._is_dead(str((options or {}).get("runner", "")), now - updated_at):
                continue
            with db.write_tx(self.engine.db) as conn:
                result = conn.execute(
                    update(t)
                    .where(t.c.id == job_id, t.c.status == RUNNING, t.c.updated_at == updated_at)
                    .values(status=FAILED, error=CRASHED, updated_at=now)
                )
            if result.rowcount:
                failed += 1
                log.warning("import job %s was left running by a crash: marked failed", job_id)
        return failed

    def _is_dead(self, runner: str, age_ms: int) -> bool:
        host, _, rest = runner.partition(":")
        pid_text, _, token = rest.partition(":")
        if host == self.host and pid_text.isdigit():
            if int(pid_text) == os.getpid():
                return token not in _LIVE_RUNNERS
            return not _alive(int(pid_text))
        return age_ms > STALE_SECONDS * 1000

    def _submit(self, job_id: str) -> None:
        with self._lock:
            if self._closed:
                return  # the job stays queued; the next start runs it
            if self._thread is None or not self._thread.is_alive():
                _LIVE_RUNNERS.add(self.token)
                self._thread = threading.Thread(
                    target=self._loop, name="sartor-import-jobs", daemon=True
                )
                self._thread.start()
            self._queue.put(job_id)

    def close(self, timeout: float = 60.0) -> None:
        """Stop after the current job reaches a row boundary; it goes back to the queue."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        self._stopping.set()
        self._queue.put(None)
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("an import job did not stop within %.0fs", timeout)
        _LIVE_RUNNERS.discard(self.token)

    def _loop(self) -> None:
        while True:
            job_id = self._queue.get()
            if job_id is None or self._stopping.is_set():
                return
            try:
                self._run(job_id)
            except Exception:  # the thread must survive to run the next job
                log.exception("import job %s could not be run", job_id)

    def _claim(self, job_id: str) -> Any:
        """Take a queued job for this process (atomically: one process wins)."""
        t = import_jobs
        with db.write_tx(self.engine.db) as conn:
            row = conn.execute(select(t).where(t.c.id == job_id, t.c.status == QUEUED)).first()
            if row is None:
                return None
            result = conn.execute(
                update(t)
                .where(t.c.id == job_id, t.c.status == QUEUED)
                .values(
                    status=RUNNING,
                    options={**(row.options or {}), "runner": self.runner},
                    counts={"read": 0},
                    error=None,
                    updated_at=now_ms(),
                )
            )
            return row if result.rowcount else None

    def _set(self, job_id: str, **values: Any) -> None:
        t = import_jobs
        with db.write_tx(self.engine.db) as conn:
            conn.execute(
                update(t)
                .where(t.c.id == job_id, t.c.status == RUNNING)
                .values(updated_at=now_ms(), **values)
            )

    def _run(self, job_id: str) -> None:
        from sartor.importers import run_import

        row = self._claim(job_id)
        if row is None:
            return
        options = row.options or {}
        source = self.folder(job_id) / options["file"]
        progress = self._progress(job_id)
        log.info("import job %s started: %s %s", job_id, row.kind, row.filename)
        try:
            summary = run_import(
                self.engine,
                row.workspace_id,
                source,
                row.kind,
                mapping=options.get("mapping"),
                preset=options.get("preset"),
                format=options.get("format"),
                rejects_path=self.folder(job_id) / f"{options['file']}.rejects.jsonl",
                progress=progress,
            )
        except JobInterrupted:
            self._set(job_id, status=QUEUED, counts={})
            log.info("import job %s interrupted by shutdown: queued again", job_id)
            return
        except (ValueError, LookupError, OSError) as exc:
            # ImportConfigError, SourceError and MappingError are ValueErrors; an unknown
            # workspace is a LookupError: the user's to fix, said as it is.
            self._set(job_id, status=FAILED, error=str(exc), counts={"read": progress.read})
            log.info("import job %s failed: %s", job_id, exc)
            return
        except Exception as exc:
            log.exception("import job %s failed", job_id)
            self._set(
                job_id,
                status=FAILED,
                error=f"{type(exc).__name__}: {exc}",
                counts={"read": progress.read},
            )
            return
        self._set(job_id, status=DONE, counts=_counts(summary))
        log.info("import job %s done: %s", job_id, _counts(summary))

    def _progress(self, job_id: str) -> _Progress:
        return _Progress(self, job_id)


class _Progress:
    """The import's progress callback: counts rows, beats the heartbeat, and stops the
    import when the engine is closing."""

    def __init__(self, jobs: ImportJobs, job_id: str) -> None:
        self.jobs = jobs
        self.job_id = job_id
        self.read = 0
        self._next_beat = time.monotonic() + HEARTBEAT_SECONDS

    def __call__(self, n: int) -> None:
        self.read += n
        if self.jobs._stopping.is_set():
            raise JobInterrupted()
        if time.monotonic() >= self._next_beat:
            self._next_beat = time.monotonic() + HEARTBEAT_SECONDS
            self.jobs._set(self.job_id, counts={"read": self.read})


def _counts(summary: ImportSummary) -> dict[str, Any]:
    """The summary without the server's paths (the file names are in the job)."""
    doc = summary.as_dict()
    doc.pop("source", None)
    rejects = doc.pop("rejects_file", None)
    doc["rejects_file"] = Path(rejects).name if rejects else None
    return doc


def _document(row: Any) -> dict[str, Any]:
    options = dict(row.options or {})
    options.pop("runner", None)
    return {
        "id": row.id,
        "kind": row.kind,
        "filename": row.filename,
        "status": row.status,
        "counts": row.counts or {},
        "error": row.error,
        "options": options,
        "createdAt": iso(row.created_at),
        "updatedAt": iso(row.updated_at),
    }
