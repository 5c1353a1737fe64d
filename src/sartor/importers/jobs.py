"""Import jobs: files uploaded for import, run in the background, one at a time per process.

A job is a row of ``import_jobs`` and a folder ``SARTOR_HOME/imports/<id>/`` holding the
uploaded file and, beside it, its rejects file. Life of a job::

    queued --(claimed by one process)--> running --> done | failed

* While running, the job's ``counts`` hold the rows read so far and ``updated_at`` is a
  heartbeat (every :data:`HEARTBEAT_SECONDS`); at the end ``counts`` is the import summary.
* A graceful stop (``Engine.close``) interrupts the import between rows and puts the job
  back to ``queued``; the next engine start (of any process on the database) runs it again
  from the start. That is safe because imports are idempotent: the rows already stored come
  back as duplicates. Its upload is kept for that run.
* When a job ends (done or failed, a crash included) its upload is deleted at once: the rows
  are in the log, catalog and profiles now, and the file may hold personal data that
  erasure could not reach otherwise. The job says so (``sourceDeleted``).
* The rejects file is kept ``SARTOR_IMPORT_RETENTION_DAYS`` (the scheduler purges older
  ones: :meth:`ImportJobs.purge_rejects`; the job says ``rejectsPurged``). Erasure removes
  the erased person's lines from the rejects files still on disk
  (:meth:`ImportJobs.scrub_rejects`), and a job ending after an erasure drops the lines of
  suppressed (erased) ids from its rejects before anyone can download them.
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
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import delete, insert, select, update

from sartor.clock import iso, now_ms
from sartor.collect.ingest import suppression_hashes
from sartor.privacy.pii import HASH_PREFIX, derive_key, keyed_hash, normalize_pii
from sartor.storage import db
from sartor.storage.sql import chunks
from sartor.storage.tables import import_jobs, suppressions

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
        path = self._rejects_path(job_id, job["options"]["file"])
        return path if path.is_file() else None

    def _rejects_path(self, job_id: str, stored_name: str) -> Path:
        return self.folder(job_id) / f"{stored_name}.rejects.jsonl"

    # -- personal data in the job folders ------------------------------------------------

    def _delete_source(self, job_id: str, options: dict[str, Any]) -> dict[str, Any]:
        """Delete an ended job's upload; the options to store (saying it is gone)."""
        try:
            (self.folder(job_id) / options["file"]).unlink(missing_ok=True)
        except OSError:
            log.exception("the upload of import job %s could not be deleted", job_id)
            return options
        return {**options, "source_deleted": True}

    def purge_rejects(self, now: int | None = None) -> int:
        """Delete the rejects files of ended jobs older than ``SARTOR_IMPORT_RETENTION_DAYS``
        (by the file's modification time); the jobs stay, marked ``rejects_purged``. An
        upload still beside an ended job (from before uploads went at the end) goes too.
        Returns the number of rejects files deleted."""
        now = now_ms() if now is None else now
        cutoff = now - self.engine.settings.import_retention_days * 86_400_000
        t = import_jobs
        with self.engine.db.connect() as conn:
            rows = conn.execute(
                select(t.c.id, t.c.options).where(t.c.status.in_((DONE, FAILED)))
            ).all()
        purged = 0
        for job_id, stored in rows:
            options = dict(stored or {})
            if not JOB_ID_RE.match(job_id) or "file" not in options:
                continue
            if not options.get("source_deleted"):
                # An upload left by a job that ended before uploads went at the end.
                options = self._delete_source(job_id, options)
            if not options.get("rejects_purged"):
                path = self._rejects_path(job_id, str(options["file"]))
                try:
                    if path.stat().st_mtime * 1000 < cutoff:
                        path.unlink()
                        purged += 1
                        options["rejects_purged"] = True
                except FileNotFoundError:
                    pass
            if options != dict(stored or {}):
                with db.write_tx(self.engine.db) as conn:
                    conn.execute(update(t).where(t.c.id == job_id).values(options=options))
        if purged:
            log.info("purged %d import rejects files older than the retention", purged)
        return purged

    def scrub_rejects(self, workspace_id: str, values: Iterable[str]) -> int:
        """Remove from the workspace's rejects files every line whose raw row holds one of
        ``values`` (a person's ids and email hashes, at erasure). Returns the lines removed.

        A job still running is left to :meth:`_drop_suppressed`, run when it ends (its
        writer holds the file open)."""
        targets = {v for v in values if v}
        if not targets:
            return 0
        key = derive_key(self.engine.settings.secret_key, workspace_id, "pii")
        t = import_jobs
        with self.engine.db.connect() as conn:
            rows = conn.execute(
                select(t.c.id, t.c.options).where(
                    t.c.workspace_id == workspace_id, t.c.status != RUNNING
                )
            ).all()
        removed = 0
        for job_id, options in rows:
            if not JOB_ID_RE.match(job_id):
                continue
            path = self._rejects_path(job_id, str((options or {}).get("file", "")))
            removed += _rewrite_without(
                path, lambda row: not targets.isdisjoint(_row_values(row, key))
            )
        return removed

    def _drop_suppressed(self, workspace_id: str, path: Path) -> int:
        """Remove from a rejects file the lines of ids erased (suppressed) in the workspace,
        so a person erased while the job ran is not left in its rejects."""
        if not path.is_file():
            return 0
        with self.engine.db.connect() as conn:
            if (
                conn.execute(
                    select(suppressions.c.id_hash)
                    .where(suppressions.c.workspace_id == workspace_id)
                    .limit(1)
                ).first()
                is None
            ):
                return 0
        secret = self.engine.settings.secret_key
        key = derive_key(secret, workspace_id, "pii")
        candidates: set[str] = set()
        for row in _rows_of(path):
            candidates |= _row_values(row, key)
        hashes = suppression_hashes(secret, workspace_id, sorted(candidates))
        suppressed_hashes: set[str] = set()
        with self.engine.db.connect() as conn:
            for part in chunks(sorted(set(hashes.values())), 500):
                suppressed_hashes.update(
                    conn.execute(
                        select(suppressions.c.id_hash).where(
                            suppressions.c.workspace_id == workspace_id,
                            suppressions.c.id_hash.in_(part),
                        )
                    ).scalars()
                )
        erased = {v for v, h in hashes.items() if h in suppressed_hashes}
        if not erased:
            return 0
        return _rewrite_without(path, lambda row: not erased.isdisjoint(_row_values(row, key)))

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
                # Ended: its upload goes (the error tells the user to upload it again).
                kept = dict(options or {})
                kept.pop("runner", None)
                if "file" in kept:
                    with db.write_tx(self.engine.db) as conn:
                        conn.execute(
                            update(t)
                            .where(t.c.id == job_id)
                            .values(options=self._delete_source(job_id, kept))
                        )
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
            # The upload stays: the next start runs the job again from it.
            self._set(job_id, status=QUEUED, counts={})
            log.info("import job %s interrupted by shutdown: queued again", job_id)
            return
        except (ValueError, LookupError, OSError) as exc:
            # ImportConfigError, SourceError and MappingError are ValueErrors; an unknown
            # workspace is a LookupError: the user's to fix, said as it is.
            log.info("import job %s failed: %s", job_id, exc)
            self._end(row, job_id, status=FAILED, error=str(exc), counts={"read": progress.read})
            return
        except Exception as exc:
            log.exception("import job %s failed", job_id)
            self._end(
                row,
                job_id,
                status=FAILED,
                error=f"{type(exc).__name__}: {exc}",
                counts={"read": progress.read},
            )
            return
        self._end(row, job_id, status=DONE, counts=_counts(summary))
        log.info("import job %s done: %s", job_id, _counts(summary))

    def _end(self, row: Any, job_id: str, **values: Any) -> None:
        """A run ended (done or failed): delete the upload, drop the rejects lines of ids
        erased meanwhile, store the outcome."""
        options = dict(row.options or {})
        self._end_files(row.workspace_id, job_id, options["file"])
        self._set(job_id, options=self._delete_source(job_id, options), **values)
        # Again once the job is no longer running: an erasure committed between the first
        # check and now skipped this job's rejects (Engine.erase_user leaves running jobs
        # to this check).
        self._end_files(row.workspace_id, job_id, options["file"])

    def _progress(self, job_id: str) -> _Progress:
        return _Progress(self, job_id)

    def _end_files(self, workspace_id: str, job_id: str, stored_name: str) -> None:
        """At the end of a run: drop the rejects lines of ids erased meanwhile."""
        try:
            self._drop_suppressed(workspace_id, self._rejects_path(job_id, stored_name))
        except Exception:
            log.exception("the rejects of import job %s could not be checked", job_id)


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


def _rows_of(path: Path) -> Iterator[Any]:
    """The raw rows of a rejects file (a line that does not parse counts as no row)."""
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        return
    with fh:
        for line in fh:
            try:
                yield orjson.loads(line).get("row")
            except (orjson.JSONDecodeError, AttributeError):
                continue


def _row_values(row: Any, pii_key: bytes) -> set[str]:
    """Every value a raw row holds that can name a person: its strings and numbers (as
    text, trimmed), and for what looks like an email the keyed hash identities store."""
    out: set[str] = set()
    stack = [row]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, str):
            text = value.strip()
            if not text:
                continue
            out.add(text)
            if text.startswith(HASH_PREFIX):
                out.add(text.removeprefix(HASH_PREFIX))
            elif "@" in text:
                out.add(normalize_pii("email", text))
                out.add(keyed_hash(pii_key, normalize_pii("email", text)))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out.add(str(value))
    return out


def _rewrite_without(path: Path, drop: Callable[[Any], bool]) -> int:
    """Rewrite a rejects file without the lines whose row ``drop`` says, atomically (a
    temporary file beside it, then ``os.replace``). Returns the lines removed."""
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        return 0
    removed = 0
    kept: list[bytes] = []
    with fh:
        for line in fh:
            try:
                row = orjson.loads(line).get("row")
            except (orjson.JSONDecodeError, AttributeError):
                kept.append(line)
                continue
            if drop(row):
                removed += 1
            else:
                kept.append(line)
    if not removed:
        return 0
    fd, tmp = tempfile.mkstemp(prefix=".scrub-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.writelines(kept)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return removed


def _document(row: Any) -> dict[str, Any]:
    options = dict(row.options or {})
    options.pop("runner", None)
    source_deleted = bool(options.pop("source_deleted", False))
    rejects_purged = bool(options.pop("rejects_purged", False))
    return {
        "id": row.id,
        "kind": row.kind,
        "filename": row.filename,
        "status": row.status,
        "counts": row.counts or {},
        "error": row.error,
        # The upload is deleted when the job ends; the rejects after the retention period.
        "sourceDeleted": source_deleted,
        "rejectsPurged": rejects_purged,
        "options": options,
        "createdAt": iso(row.created_at),
        "updatedAt": iso(row.updated_at),
    }
