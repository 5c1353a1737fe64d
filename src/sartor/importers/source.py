"""Read rows from CSV, JSONL or Parquet files, gzipped or not, one row at a time.

Every reader streams: CSV and JSONL are read line by line through the text layer (and the
gzip decompressor when the file starts with the gzip magic bytes), Parquet record batch by
record batch, so memory stays flat however large the file is.

Rows come out as ``(line, row)``: ``line`` is the 1-based physical line of the row in the
file (the header is line 1 of a CSV, so its first data row is line 2) or, for Parquet, the
1-based row number. A JSONL line that is not a JSON object comes out as a
:class:`MalformedRow` so the importer can reject it with its reason and go on.
"""

from __future__ import annotations

import csv
import gzip
import io
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson

FORMATS = ("csv", "jsonl", "parquet")
GZIP_MAGIC = b"\x1f\x8b"
PARQUET_MAGIC = b"PAR1"
CSV_DELIMITERS = ";,\t|"
# Rows per Parquet record batch: big enough to amortise the Arrow → Python conversion,
# small enough that a wide file stays within a few MB.
PARQUET_BATCH_ROWS = 8192
# A CSV field may legitimately hold a long description; the csv module's 128 KB default
# refuses some real exports.
csv.field_size_limit(16 * 1024 * 1024)

_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}


class SourceError(ValueError):
    """The file cannot be read as the requested format (unknown format, missing header...)."""


class MalformedRow(dict[str, Any]):
    """A row that could not be parsed: ``reason`` is its category (``malformed JSON``),
    ``detail`` the parser's words and ``raw`` the text of the line."""

    def __init__(self, reason: str, raw: str, detail: str | None = None) -> None:
        super().__init__()
        self.reason = reason
        self.raw = raw
        self.detail = detail

    def report(self) -> dict[str, Any]:
        """What a rejects file records about the line."""
        return {"text": self.raw, "error": self.detail or self.reason}


def _magic(path: Path, n: int = 4) -> bytes:
    with path.open("rb") as fh:
        return fh.read(n)


def is_gzipped(path: str | Path) -> bool:
    return _magic(Path(path), 2) == GZIP_MAGIC


def detect_format(path: str | Path) -> str:
    """``csv``, ``jsonl`` or ``parquet`` from the extension (``.gz`` ignored), else the content.

    Raises :class:`SourceError` when neither tells.
    """
    p = Path(path)
    suffixes = [s.lower() for s in p.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".gzip"):
        suffixes = suffixes[:-1]
    if suffixes and suffixes[-1] in _EXTENSIONS:
        return _EXTENSIONS[suffixes[-1]]
    if not p.exists():
        raise SourceError(f"{p}: file not found")
    if _magic(p) == PARQUET_MAGIC:
        return "parquet"
    with _open_text(p) as fh:
        first = ""
        for line in fh:
            if line.strip():
                first = line.lstrip()
                break
    if first.startswith("{"):
        return "jsonl"
    if first:
        return "csv"
    raise SourceError(f"{p}: cannot tell the format (empty file); pass --format")


def _open_text(path: Path) -> IO[str]:
    if is_gzipped(path):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return path.open("r", encoding="utf-8-sig", newline="")


def _sniff_delimiter(sample: str) -> str:
    # Only whole lines: a line cut at the end of the sample would skew the counts.
    lines = sample[: sample.rfind("\n") + 1 or len(sample)].splitlines()
    header = lines[0] if lines else ""
    counts = {d: header.count(d) for d in CSV_DELIMITERS}
    present = [d for d, n in counts.items() if n > 0]
    if len(present) == 1:
        # Column names rarely contain a delimiter, so one candidate in the header settles it.
        return present[0]
    try:
        return csv.Sniffer().sniff("\n".join(lines[:200]), delimiters=CSV_DELIMITERS).delimiter
    except csv.Error:
        best = max(counts, key=lambda d: counts[d])
        return best if counts[best] > 0 else ","


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    # Sniff on the first 64 KB, then reopen: cheaper and simpler than seeking back through a
    # gzip stream.
    with _open_text(path) as fh:
        delimiter = _sniff_delimiter(fh.read(64 * 1024))
    with _open_text(path) as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            return
        header = [h.strip() for h in header]
        if not any(header):
            raise SourceError(f"{path}: the CSV header row is empty")
        width = len(header)
        for fields in reader:
            if not fields:
                continue
            line = reader.line_num
            if len(fields) == width:
                yield line, dict(zip(header, fields, strict=True))
            elif len(fields) < width:
                # Short rows: missing trailing cells are empty, as spreadsheets write them.
                yield line, dict(zip(header, fields + [""] * (width - len(fields)), strict=True))
            else:
                yield (
                    line,
                    MalformedRow(
                        "too many fields",
                        delimiter.join(fields),
                        f"{len(fields)} fields where the header has {width}",
                    ),
                )


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    opener = gzip.open if is_gzipped(path) else open
    with opener(path, "rb") as fh:
        for line, raw in enumerate(fh, start=1):
            if line == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a byte order mark, as some Windows tools write
            if not raw.strip():
                continue
            try:
                value = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                yield line, MalformedRow("malformed JSON", raw.decode("utf-8", "replace"), str(exc))
                continue
            if not isinstance(value, dict):
                yield (
                    line,
                    MalformedRow(
                        "not a JSON object",
                        raw.decode("utf-8", "replace"),
                        f"expected a JSON object, got {type(value).__name__}",
                    ),
                )
                continue
            yield line, value


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    gz = is_gzipped(path)
    raw: Any = gzip.open(path, "rb") if gz else path.open("rb")
    try:
        if gz:
            # Parquet needs random access (the footer is at the end); a gzipped Parquet file
            # is unpacked to a temporary file first, still without loading it into memory.
            import shutil
            import tempfile

            tmp = tempfile.TemporaryFile()
            shutil.copyfileobj(raw, tmp, 1024 * 1024)
            raw.close()
            tmp.seek(0)
            raw = tmp
        try:
            parquet = pq.ParquetFile(raw)
        except Exception as exc:  # pyarrow raises ArrowInvalid and friends
            raise SourceError(f"{path}: not a readable Parquet file: {exc}") from None
        line = 0
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
            for row in batch.to_pylist():
                line += 1
                yield line, row
    finally:
        raw.close()


def _guarded(
    path: Path, rows: Iterator[tuple[int, dict[str, Any]]]
) -> Iterator[tuple[int, dict[str, Any]]]:
    """A file that cannot be read on (not UTF-8, a truncated gzip, a broken Parquet footer)
    stops the import with a :class:`SourceError` naming the file and the last good row."""
    line = 0
    try:
        for line, row in rows:
            yield line, row
    except UnicodeDecodeError as exc:
        raise SourceError(
            f"{path}: not UTF-8 text ({exc.reason}; {line:,} rows were read before it); "
            "convert it first, e.g. iconv -f latin1 -t utf-8"
        ) from None
    except (EOFError, OSError, zlib.error) as exc:
        raise SourceError(f"{path}: cannot read past row {line}: {exc}") from None
    except csv.Error as exc:
        raise SourceError(f"{path}: CSV error after line {line}: {exc}") from None


def open_rows(path: str | Path, format: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Stream ``(line, row)`` from a CSV, JSONL or Parquet file, gzipped or not.

    ``format`` (``csv``, ``jsonl`` or ``parquet``) overrides the extension. CSV values are
    strings (the header names the keys; the delimiter ``; , TAB |`` is sniffed); JSONL and
    Parquet values keep their types. Unparseable rows come out as :class:`MalformedRow`.
    """
    p = Path(path)
    if not p.exists():
        raise SourceError(f"{p}: file not found")
    fmt = (format or detect_format(p)).lower()
    if fmt == "csv":
        return _guarded(p, _csv_rows(p))
    if fmt in ("jsonl", "json", "ndjson"):
        return _guarded(p, _jsonl_rows(p))
    if fmt == "parquet":
        return _guarded(p, _parquet_rows(p))
    raise SourceError(f"unknown format {format!r}: expected one of {', '.join(FORMATS)}")
