"""File imports through the API (admin key): upload, job status, rejects.

The upload is parsed as it arrives and the file part is written straight to
``SARTOR_HOME/imports/<id>/``: nothing is held in memory or spooled elsewhere, and the
upload stops with 413 as soon as it passes ``SARTOR_IMPORT_MAX_UPLOAD_BYTES``. The import
itself runs in the background (:mod:`sartor.importers.jobs`).
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any

import orjson
import yaml
from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, Response
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from sartor.api.deps import AdminWorkspace, EngineDep
from sartor.api.errors import ApiError, json_response
from sartor.engine import Engine
from sartor.importers.jobs import KINDS, new_job_id, safe_filename

router = APIRouter(prefix="/v1/imports", tags=["imports"])

MAX_FIELD_BYTES = 64 * 1024  # kind, preset, format, a mapping as text
MAX_MAPPING_BYTES = 1024 * 1024  # a mapping sent as a file
# Besides the file: boundaries, part headers and the small fields.
MULTIPART_OVERHEAD = MAX_MAPPING_BYTES + 8 * MAX_FIELD_BYTES
FIELDS = ("file", "kind", "preset", "mapping", "format")


class _TooLarge(Exception):
    def __init__(self, field: str, limit: int) -> None:
        super().__init__(field)
        self.field = field
        self.limit = limit


class _Refused(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class UploadParser:
    """python-multipart callbacks: the ``file`` part goes to disk, small fields to memory."""

    def __init__(self, folder: Path, limit: int) -> None:
        self.folder = folder
        self.limit = limit
        self.fields: dict[str, bytes] = {}
        self.filenames: dict[str, str] = {}
        self.file_size = 0
        self.stored_name: str | None = None
        self._out: IO[bytes] | None = None
        self._name = ""
        self._filename: str | None = None
        self._buffer = bytearray()
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
        }

    def on_part_begin(self) -> None:
        self._name, self._filename, self._disposition = "", None, b""
        self._buffer = bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name, self._header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, params = parse_options_header(self._disposition)
        name = params.get(b"name")
        if not name:
            raise _Refused("body", "every part needs a Content-Disposition name")
        self._name = name.decode("utf-8", "replace")
        if self._name in self.fields or (self._name == "file" and self.stored_name):
            raise _Refused(self._name, "is given twice")
        raw_filename = params.get(b"filename")
        self._filename = raw_filename.decode("utf-8", "replace") if raw_filename else None
        if self._name == "file":
            if self._filename is None:
                raise _Refused("file", "must be a file part (with a filename)")
            self.stored_name = safe_filename(self._filename)
            self.folder.mkdir(parents=True, exist_ok=True)
            self._out = (self.folder / self.stored_name).open("wb")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._out is not None:
            self.file_size += end - start
            if self.file_size > self.limit:
                raise _TooLarge("file", self.limit)
            self._out.write(data[start:end])
            return
        limit = MAX_MAPPING_BYTES if self._name == "mapping" else MAX_FIELD_BYTES
        if len(self._buffer) + end - start > limit:
            raise _TooLarge(self._name, limit)
        self._buffer += data[start:end]

    def on_part_end(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None
            return
        self.fields[self._name] = bytes(self._buffer)
        if self._filename is not None:
            self.filenames[self._name] = self._filename

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


def _text(parser: UploadParser, name: str) -> str | None:
    raw = parser.fields.get(name)
    if raw is None:
        return None
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise _Refused(name, "must be UTF-8 text") from None
    if "\x00" in text:
        raise _Refused(name, "must not contain NUL")
    return text or None


def _mapping(parser: UploadParser) -> dict[str, Any] | None:
    """The mapping, sent as a YAML/JSON file or as JSON (or YAML) text."""
    text = _text(parser, "mapping")
    if text is None:
        return None
    filename = parser.filenames.get("mapping", "")
    try:
        if filename.lower().endswith(".json") or text.startswith("{"):
            data = orjson.loads(text)
        else:
            data = yaml.safe_load(text)
    except (orjson.JSONDecodeError, yaml.YAMLError) as exc:
        raise _Refused("mapping", f"is not valid JSON or YAML: {exc}") from None
    if not isinstance(data, dict):
        raise _Refused("mapping", "must be an object (key: value pairs)")
    return data


def _present(job: dict[str, Any]) -> dict[str, Any]:
    base = f"/v1/imports/{job['id']}"
    return {**job, "links": {"self": base, "rejects": f"{base}/rejects"}}


_UPLOAD_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "kind"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "CSV, JSONL or Parquet, gzipped or not",
                        },
                        "kind": {"type": "string", "enum": list(KINDS)},
                        "preset": {
                            "type": "string",
                            "description": "Built-in mapping (events), or the source of "
                            "social signals",
                        },
                        "mapping": {
                            "type": "string",
                            "description": "Mapping as a YAML/JSON file or JSON text",
                        },
                        "format": {"type": "string", "enum": ["csv", "jsonl", "parquet"]},
                    },
                }
            }
        },
    }
}


@router.post(
    "",
    status_code=202,
    summary="Upload a file to import in the background",
    openapi_extra=_UPLOAD_SCHEMA,
)
async def create_import(request: Request, workspace: AdminWorkspace, engine: EngineDep) -> Response:
    """Multipart fields: `file` (required), `kind` (events, profiles, items, social),
    optional `preset`, `mapping` (a YAML/JSON file or JSON text) and `format`. Answers 202
    with the queued job; poll `GET /v1/imports/{id}`. The upload is deleted when the job
    ends; refused rows are kept `SARTOR_IMPORT_RETENTION_DAYS`
    (`GET /v1/imports/{id}/rejects`)."""
    limit = engine.settings.import_max_upload_bytes
    content_type = request.headers.get("content-type", "")
    media, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if media != b"multipart/form-data" or not boundary:
        raise ApiError(
            400,
            "invalid_request",
            "the body must be multipart/form-data with a `file` part",
            [{"field": "body", "message": "must be multipart/form-data"}],
        )
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit + MULTIPART_OVERHEAD:
        raise ApiError(
            413, "too_large", f"the upload is larger than the {limit}-byte limit", [_big("file")]
        )
    job_id = new_job_id()
    folder = engine.imports.folder(job_id)
    parser = UploadParser(folder, limit)
    multipart = MultipartParser(boundary, parser.callbacks())  # type: ignore[arg-type]
    try:
        try:
            async for chunk in request.stream():
                if chunk:
                    # In a worker thread: the file part is written to disk as it is parsed.
                    await run_in_threadpool(multipart.write, chunk)
            multipart.finalize()
        finally:
            parser.close()
        job = _queue(engine, workspace.id, job_id, parser)
    except _TooLarge as exc:
        engine.imports.discard(job_id)
        what = "the file" if exc.field == "file" else f"`{exc.field}`"
        raise ApiError(
            413, "too_large", f"{what} is larger than {exc.limit} bytes", [_big(exc.field)]
        ) from None
    except _Refused as exc:
        engine.imports.discard(job_id)
        raise ApiError(
            400,
            "invalid_request",
            f"{exc.field}: {exc.message}",
            [{"field": exc.field, "message": exc.message}],
        ) from None
    except FormParserError as exc:
        engine.imports.discard(job_id)
        raise ApiError(
            400,
            "invalid_request",
            f"malformed multipart body: {exc}",
            [{"field": "body", "message": "malformed multipart body"}],
        ) from None
    except ClientDisconnect:
        engine.imports.discard(job_id)
        raise ApiError(400, "invalid_request", "the upload was cut off") from None
    except BaseException:
        engine.imports.discard(job_id)
        raise
    return json_response(_present(job), 202, {"Location": f"/v1/imports/{job_id}"})


def _big(field: str) -> dict[str, str]:
    return {"field": field, "message": "is too large"}


def _queue(engine: Engine, workspace_id: str, job_id: str, parser: UploadParser) -> dict[str, Any]:
    unknown = sorted(set(parser.fields) - set(FIELDS))
    if unknown:
        raise _Refused(unknown[0], f"is not a field of this endpoint ({', '.join(FIELDS)})")
    if parser.stored_name is None:
        raise _Refused("file", "is required (a file part)")
    if parser.file_size == 0:
        raise _Refused("file", "is empty")
    kind = _text(parser, "kind")
    if kind is None:
        raise _Refused("kind", f"is required: one of {', '.join(KINDS)}")
    if kind not in KINDS:
        raise _Refused("kind", f"must be one of {', '.join(KINDS)}, got {kind[:40]!r}")
    fmt = _text(parser, "format")
    if fmt is not None and fmt not in ("csv", "jsonl", "parquet"):
        raise _Refused("format", f"must be csv, jsonl or parquet, got {fmt[:40]!r}")
    preset = _text(parser, "preset")
    if preset is not None and len(preset) > 100:
        raise _Refused("preset", "is at most 100 characters")
    filename = parser.filenames.get("file") or parser.stored_name
    return engine.imports.create(
        workspace_id,
        job_id,
        kind,
        filename[:255],
        parser.stored_name,
        mapping=_mapping(parser),
        preset=preset,
        format=fmt,
        size=parser.file_size,
    )


@router.get("", summary="The workspace's import jobs, newest first")
def list_imports(
    workspace: AdminWorkspace,
    engine: EngineDep,
    limit: int = Query(50, ge=1, le=500),
) -> Response:
    return json_response(
        {"imports": [_present(j) for j in engine.imports.list(workspace.id, limit)]}
    )


def _job(engine: Engine, workspace_id: str, job_id: str) -> dict[str, Any]:
    job = engine.imports.get(workspace_id, job_id) if len(job_id) <= 40 else None
    if job is None:
        raise ApiError(404, "not_found", f"no import job {job_id[:40]!r}")
    return job


@router.get("/{job_id}", summary="Status and counts of an import job")
def get_import(job_id: str, workspace: AdminWorkspace, engine: EngineDep) -> Response:
    """`status` is queued, running (with `counts.read` so far), done (with the summary:
    read, imported, duplicates, rejected by reason) or failed (with `error`). Once it
    ended, `sourceDeleted` is true: the upload is deleted (upload it again to re-run)."""
    return json_response(_present(_job(engine, workspace.id, job_id)))


@router.get("/{job_id}/rejects", summary="The refused rows of an import job (JSON lines)")
def get_rejects(job_id: str, workspace: AdminWorkspace, engine: EngineDep) -> Response:
    """One JSON object per refused row: `line`, `reason`, `field`, `row`. Empty when the
    job refused nothing (yet), or its rejects were purged (`rejectsPurged`)."""
    job = _job(engine, workspace.id, job_id)
    path = engine.imports.rejects_file(workspace.id, job["id"])
    if path is None:
        return Response(b"", 200, media_type="application/x-ndjson")
    return FileResponse(
        path,
        media_type="application/x-ndjson",
        filename=f"{job['id']}.rejects.jsonl",
    )


@router.delete("/{job_id}", status_code=204, summary="Delete a finished job and its files")
def delete_import(job_id: str, workspace: AdminWorkspace, engine: EngineDep) -> Response:
    """Removes the job and its rejects file (the upload went when the job ended; rejects
    are kept `SARTOR_IMPORT_RETENTION_DAYS` otherwise). 409 while the job is queued or
    running."""
    job = _job(engine, workspace.id, job_id)
    if engine.imports.delete(workspace.id, job["id"]) is False:
        raise ApiError(409, "conflict", f"import job {job_id!r} is {job['status']}; wait for it")
    return Response(status_code=204)
