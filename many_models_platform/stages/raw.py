"""Stage 1, ``raw``: landing files -> per-key bronze Parquet.

Landing files are the user's input: they are read, never moved. A file this use case
cannot use is recorded as rejected *for this use case* (``rejected/<uc>/<file id>.json``) and
skipped until it or the use case's reading settings change; other use cases still read it.
What happens to each row is decided in :mod:`..core.ingest`, which counts every row removed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import glob
import hashlib
import json
import math
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from upath import UPath

from ..core import ingest as core_ingest
from ..core.engine import KeyOutcome
from ..core.features import ending_early, label_text, series_end
from ..core.keys import decode_key, encode_key, key_label
from ..core.spec import UseCaseSpec
from ..storage.lake import CsvLayout, Lake, LandedFile, LateColumnType, QuoteInValue
from .base import StageReport, StageRun, clear_state, crash_point, finish, write_state

# A read that fails with an OSError, or a file that changes while being read (still being
# written), is tried again after these pauses; then it is left for a later run, never rejected.
RETRY_DELAYS: tuple[float, ...] = (0.2, 1.0)
# A landing file larger than this is read in batches of BATCH_ROWS rows (whole, it would take
# several times its size in memory: 2.4 GiB for a 450 MB CSV); Parquet and gzip files count
# COMPRESSED_EXPANSION times their size.
BATCHED_FILE_BYTES = 256 * 2**20
BATCH_ROWS = 1_000_000
COMPRESSED_EXPANSION = 4
# A wide file (``source.unpivot``) becomes one row per value: an M5-shaped CSV of 118 MB took
# 3.3 GB as rows, 28 times its size, before normalising; the full M5 read whole did not fit.
UNPIVOT_EXPANSION = 32
# Bumped when the way files are read changes, so earlier rejections are tried again.
# 9: a day/month order other files show, '15 de marzo de 2024', Unix seconds with a fraction;
# 8: month names in German, French, Spanish, Italian, Dutch and Portuguese;
# 7: the decimal mark each file's numbers show, when undeclared, pandas Periods, stray quotes;
# 6: byte-order marks, UTF-8 among declared encodings, Excel errors, \N, YYYYMM, CR line ends,
# rows ending in a separator; 5: title lines, corrupt gzip, month names, time_parts
READER_VERSION = 9


class SpillFailed(Exception):
    """Writing to the local spill folder failed (a full disk): a problem of this run, never of
    the landing file being read, so it is neither retried as a read nor a rejection."""


class RetryLater(Exception):
    """A landing file could not be read now for a reason that may pass (I/O, still being written)."""


@dataclass
class SourceRead:
    """One source (``source`` or ``scoring_source``) after reading and cleaning: its files' summary
    entries, and the schema its rows take together (the files' common supertypes)."""

    files: list[dict[str, Any]] = field(default_factory=list)
    kind: str | None = None  # the time column's kind: date, datetime or period
    day_orders: set[bool] = field(default_factory=set)  # the day/month orders the files' numeric dates show
    names: dict[int, dict[str, Any]] = field(default_factory=dict)  # entries of the files with rows, by __file
    template: pl.DataFrame | None = None  # no rows; None when no file has rows

    @property
    def rejected(self) -> list[dict[str, Any]]:
        return [f for f in self.files if f["status"] in ("rejected", "unchanged_rejected")]

    @property
    def retry_later(self) -> list[dict[str, Any]]:
        return [f for f in self.files if f["status"] == "retry_later"]


# --- spilling rows by key -------------------------------------------------------------------
# Rows resolved at once: landing rows are cut into hash buckets of the key on local disk, and
# resolved a bucket at a time, so raw's memory follows this and the largest file, not the landing zone.
ROWS_PER_BUCKET = 500_000
# Threads writing a bucket's per-key bronze while the next bucket is resolved: a key's Parquet
# writes (about 1 ms each, in polars without the GIL) were a third of the stage, on one core.
WRITE_THREADS = 2
MAX_BUCKETS = 4096
_BUCKET = "__bucket"


class Spill:
    """Landing rows in hash buckets of the key (Arrow IPC pieces in a temporary folder, one per
    file and bucket). A key's rows all go to one bucket, so everything ``core.ingest.resolve``
    decides per key (duplicates, later files, failures) is decided the same bucket by bucket.
    Rows of keys outside the run keep only the columns their counts need (keys, time, file, reason)."""

    def __init__(self, spec: UseCaseSpec, wanted: pl.DataFrame, folder: str) -> None:
        self.spec, self.wanted, self.folder = spec, wanted.with_columns(pl.lit(True).alias("__wanted")), Path(folder)
        self.buckets: int | None = None
        self.narrow = [*spec.keys, *([spec.time_column] if spec.time_column else []), core_ingest.FILE]
        self.narrow.append(core_ingest.DROP)
        if spec.row_id:  # a scoring row's id is part of what makes it one row (core.ingest.same_row)
            self.narrow.append(spec.row_id)

    def narrow_of(self, frame: pl.DataFrame) -> list[str]:
        """The counting columns ``frame`` holds (a training file has no row id)."""
        return [c for c in self.narrow if c in frame.columns]

    def bucket(self) -> pl.Expr:
        return (pl.struct(self.spec.keys).hash(seed=0) % (self.buckets or 1)).cast(pl.Int32)

    def size(self, rows: int, file_bytes: int, source_bytes: int) -> None:
        """Bucket count from the first file with rows: its rows per byte times the source's bytes."""
        if self.buckets is None and rows:
            estimate = rows * source_bytes / max(1, file_bytes)
            self.buckets = max(1, min(MAX_BUCKETS, math.ceil(estimate / ROWS_PER_BUCKET)))

    def path(self, label: str, bucket: int, piece: str, part: str) -> Path:
        return self.folder / label / f"{bucket:05d}" / f"{piece}-{part}.arrow"

    def add(self, label: str, index: int, frame: pl.DataFrame, batch: int = 0) -> None:
        """One file's normalised rows (with ``__file``), or batch ``batch`` of them: rows without
        a full key aside, the run's keys' rows whole and other keys' rows narrow, each into its
        key's bucket. Pieces are named so that reading them in name order is file, then batch order."""
        keys, piece = self.spec.keys, f"{index:06d}-{batch:06d}"
        null_key = pl.any_horizontal([pl.col(k).is_null() for k in keys])
        nulls = frame.filter(null_key)
        if not nulls.is_empty():
            frame = frame.filter(~null_key)
            self.write(self.folder / label / "null_key" / f"{piece}.arrow", nulls)
        del nulls
        mark = frame.select(keys).join(self.wanted, on=keys, how="left", maintain_order="left")["__wanted"]
        wanted = mark.is_not_null()
        if wanted.all():
            self._scatter(label, piece, "rows", frame)
            return
        self._scatter(label, piece, "rows", frame.filter(wanted))
        self._scatter(label, piece, "counted", frame.filter(~wanted).select(self.narrow_of(frame)))

    def discard(self, label: str, index: int) -> None:
        """Take back what one file added: it was rejected or changed part way through its batches."""
        for path in (self.folder / label).glob(f"*/{index:06d}-*.arrow"):
            path.unlink()

    def _scatter(self, label: str, piece: str, part: str, frame: pl.DataFrame) -> None:
        if frame.is_empty():
            return
        pieces = frame.with_columns(self.bucket().alias(_BUCKET)).partition_by(_BUCKET, as_dict=True, include_key=False)
        del frame
        for (bucket,), rows in pieces.items():
            self.write(self.path(label, bucket, piece, part), rows)

    @staticmethod
    def write(path: Path, frame: pl.DataFrame) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            frame.write_ipc(path, compression="lz4")
        except Exception as exc:  # local temp space (full?), not the landing file: the stage fails
            raise SpillFailed(f"cannot write spilled rows to {path}: {type(exc).__name__}: {exc}") from exc

    def read(self, label: str, bucket: int, part: str, template: pl.DataFrame) -> pl.DataFrame | None:
        """A bucket's rows of one part, in file order, in the source's common column types (only
        the template's columns when it holds only counting columns)."""
        paths = sorted((self.folder / label / f"{bucket:05d}").glob(f"*-{part}.arrow"))
        if not paths:
            return None
        if part == "counted":
            template = template.select(self.narrow_of(template))
        columns = template.columns if set(template.columns) <= set(self.narrow) else None  # a narrow read
        return pl.concat([template, *(pl.read_ipc(p, columns=columns) for p in paths)], how="diagonal_relaxed")

    def null_key_rows(self, label: str, template: pl.DataFrame) -> Iterator[tuple[int, pl.DataFrame]]:
        """(file index, the file's rows without a full key), one file at a time (usually none)."""
        by_file: dict[int, list[Path]] = {}
        for path in sorted((self.folder / label / "null_key").glob("*.arrow")):
            by_file.setdefault(int(path.stem.split("-")[0]), []).append(path)
        for index, paths in by_file.items():
            yield index, pl.concat([template, *(pl.read_ipc(p) for p in paths)], how="diagonal_relaxed")


# --- rejection records ----------------------------------------------------------------------
def file_id(name: str) -> str:
    """A lake-safe, reversible name for a landing file (hashed when it would be too long)."""
    encoded = encode_key([name])
    return encoded if len(encoded) <= 200 else hashlib.sha256(name.encode()).hexdigest()


def reading_settings(spec: UseCaseSpec) -> str:
    """Everything that decides whether a file can be read; a change re-reads rejected files."""
    fields = spec.model_dump(
        include={"task", "source", "scoring_source", "keys", "time_column", "time_format", "time_parts", "frequency"}
        | {"key_leading_zeros", "target_labels"}
        | {"target", "features", "categorical_features"}
    )
    blob = json.dumps({"spec": fields, "reader": READER_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def rejection_records(lake: Lake, use_case: str) -> dict[str, UPath]:
    """file id -> its rejection record, for this use case (one listing per run)."""
    folder = lake.path("rejected", use_case)
    if not folder.exists():
        return {}
    return {p.name.removesuffix(".json"): p for p in folder.glob("*.json")}


def still_rejected(
    lake: Lake, records: dict[str, UPath], name: str, signature: dict, settings: str, source: str = "source"
) -> dict | None:
    """The file's rejection record when neither the file nor the reading settings changed, and it
    was rejected as a file of ``source`` (``source`` or ``scoring_source``)."""
    path = records.get(file_id(name))
    if path is None:
        return None
    try:
        record = lake.read_json(path)
    except (OSError, ValueError):
        return None
    same = record.get("size") == signature["size"] and record.get("modified") == signature["modified"]
    same = same and record.get("source", source) == source
    return record if same and record.get("settings") == settings else None


# --- reading --------------------------------------------------------------------------------
def read_with_retry(
    lake: Lake, path: UPath, listed: dict | None, read: Callable[[], Any], undo: Callable[[], None]
) -> Any:
    """``read()`` a landing file, trying again after I/O errors and when the file changed while
    it was read (``undo`` takes back what a try spilled); RetryLater after that. ``listed``: the
    file's signature from the listing, which saves asking for it before the first read."""
    problem, changed = "", "the file changed while it was read (still being written?)"
    for attempt in range(len(RETRY_DELAYS) + 1):
        if attempt:
            time.sleep(RETRY_DELAYS[attempt - 1])
        try:
            before = listed if (listed is not None and not attempt) else lake.signature(path)
            result = read()
            if lake.signature(path) == before:
                return result
            problem = changed
        except core_ingest.FileRejected:
            if lake.signature(path) == before:
                raise
            problem = changed  # rejected for what was half written: read it again
        except OSError as exc:
            problem = f"{type(exc).__name__}: {exc}"
        undo()
    raise RetryLater(f"{problem}; tried {len(RETRY_DELAYS) + 1} times, will try again on the next run")


@dataclass
class FileRead:
    """What one landing file gave: its rows (spilled), their column types, and its time kind."""

    rows: int = 0
    template: pl.DataFrame | None = None
    kind: str | None = None
    day_first: bool | None = None  # the order the file's numeric dates show (core.ingest.TimeRule)
    lines_above_header: int = 0  # a report export's title lines, skipped
    # a classification file's class labels; None once more than LABELS_TRACKED (not compared)
    labels: set[str] | None = field(default_factory=set)


LABELS_TRACKED = 50


@contextlib.contextmanager
def _polars_rejects() -> Iterator[None]:
    """A polars error while rules or rows are worked out rejects the file: e.g. a key column of
    nested values that has no text form, or a target of a type that has no number form."""
    try:
        yield
    except pl.exceptions.PolarsError as exc:
        raise core_ingest.FileRejected(f"{type(exc).__name__}: {_said(exc)}"[:500]) from None


def _said(exc: Exception) -> str:
    """An error's message without the query plan polars appends (no reason a user can act on)."""
    return str(exc).split("\n\nResolved plan until failure", 1)[0].strip()


def _unreadable(fmt: str, exc: Exception) -> core_ingest.FileRejected:
    """The file's content is the user's: say why it cannot be read."""
    if isinstance(exc, core_ingest.FileRejected):
        return type(exc)(str(exc)[:500])  # DayOrderUnknown stays one
    return core_ingest.FileRejected(f"cannot read as {fmt}: {_said(exc)}"[:500])


def _spill_file(
    spec: UseCaseSpec,
    lake: Lake,
    spill: Spill,
    listed: LandedFile,
    index: int,
    source_bytes: int,
    *,
    scoring: bool,
    prefer: str | None,
    day_first: bool | None = None,
) -> FileRead:
    """Read one landing file and spill its normalised rows as file ``index``. A file up to
    BATCHED_FILE_BYTES is read whole; a larger one in batches of BATCH_ROWS, by rules decided
    over the whole file first (``core.ingest.file_rules``), so memory follows the batch, not the
    file, and the rows come out the same. A CSV column whose values stop fitting the type of its
    first 10,000 rows is read again as text (``LateColumnType``). Raises FileRejected, or OSError
    to be tried again."""
    text_columns = [*spec.keys, *spec.categorical_features, *spec.landing_time_columns]
    if scoring and spec.row_id:  # as written: '0012' keeps its zeros
        text_columns.append(spec.row_id)
    requote = False
    while True:
        try:
            return _read_file(
                spec, lake, spill, listed, (index, source_bytes), text_columns, scoring, (prefer, day_first), requote
            )
        except LateColumnType as late:
            if late.column in text_columns:
                raise core_ingest.FileRejected(str(late)[:500]) from None
            text_columns = [*text_columns, late.column]
        except QuoteInValue:
            if requote:
                raise
            requote = True
        spill.discard("scoring_source" if scoring else "source", index)


def _read_file(
    spec: UseCaseSpec,
    lake: Lake,
    spill: Spill,
    listed: LandedFile,
    place: tuple[int, int],
    text_columns: list[str],
    scoring: bool,
    shown: tuple[str | None, bool | None],
    requote: bool = False,
) -> FileRead:
    """One try of :func:`_spill_file`, with ``text_columns`` read as text (and the CSV's quoting
    through Python's csv module with ``requote``); ``place``: the file's index and the bytes of
    its source; ``shown``: the time kind and day order other files showed."""
    index, source_bytes = place
    prefer, day_first = shown
    source = spec.scoring_source if scoring else spec.source
    label = "scoring_source" if scoring else "source"
    options = {
        "csv": source.csv,
        "required": core_ingest.required_columns(spec, scoring),
        "number_columns": core_ingest.number_columns(spec),
        "requote": requote,
        "unpivot": source.unpivot,
    }
    path, out = lake.path(*listed.name.split("/")), FileRead()

    def spill_batch(frame: pl.DataFrame, rules: core_ingest.FileRules, batch: int) -> None:
        with _polars_rejects():
            if source.file_format == "csv":
                frame = core_ingest.without_blank_lines(frame)
            frame = core_ingest.normalise_rows(frame, spec, rules, scoring=scoring)
        frame = frame.with_columns(pl.lit(index, dtype=pl.Int32).alias(core_ingest.FILE))
        if spec.task == "classification" and not scoring and spec.target in frame.columns:
            _add_labels(out, frame[spec.target])
        out.rows += frame.height
        if out.template is None:
            out.template = frame.clear()
        spill.add(label, index, frame, batch)

    if _held_bytes(listed, source.file_format, source.unpivot) <= BATCHED_FILE_BYTES:
        layouts: list[CsvLayout] = []
        try:
            frame = lake.read_table(
                path,
                source.file_format,
                spec.source_columns(scoring),
                text_columns,
                size=listed.size,
                layout_seen=layouts,
                **options,
            )
        except (OSError, LateColumnType, QuoteInValue):
            raise
        except Exception as exc:
            raise _unreadable(source.file_format, exc) from None
        with _polars_rejects():
            separator = layouts[0].options["separator"] if layouts else None
            rules = core_ingest.file_rules(
                frame, spec, scoring=scoring, prefer=prefer, separator=separator, day_first=day_first
            )
        spill.size(frame.height, listed.size, source_bytes)
        spill_batch(frame, rules, 0)
        out.kind, out.day_first = rules.time_kind, rules.day_first
        out.lines_above_header = layouts[0].lines_above_header if layouts else 0
        return out
    try:
        with lake.open_table(
            path, source.file_format, spec.source_columns(scoring), text_columns, spill.folder / "landing", **options
        ) as table:
            try:
                separator = table.layout.options["separator"] if table.layout else None
                rules = core_ingest.file_rules(
                    table.data, spec, scoring=scoring, prefer=prefer, separator=separator, day_first=day_first
                )
                out.lines_above_header = table.layout.lines_above_header if table.layout else 0
                if spill.buckets is None:
                    spill.size(table.data.select(pl.len()).collect().item(), listed.size, source_bytes)
                for batch, frame in enumerate(table.batches(BATCH_ROWS)):
                    spill_batch(frame, rules, batch)
            except pl.exceptions.ComputeError as exc:  # a bad row: said while the file is still open
                raise table.error(exc) from None
    except (OSError, SpillFailed, LateColumnType, QuoteInValue):
        raise
    except Exception as exc:  # the file's content is the user's: say why it cannot be read
        raise _unreadable(source.file_format, exc) from None
    out.kind, out.day_first = rules.time_kind, rules.day_first
    return out


def _add_labels(out: FileRead, labels: pl.Series) -> None:
    """Add a batch's class labels to the file's, as written (``label_text``), while few."""
    if out.labels is not None:
        out.labels |= set(label_text(labels.drop_nulls().unique()).to_list())
        if len(out.labels) > LABELS_TRACKED:
            out.labels = None


def _held_bytes(listed: LandedFile, fmt: str, unpivot: Any = None) -> int:
    """About what a landing file takes once read: compressed files (Parquet, gzip) several times
    their size, and a wide one (``unpivot``) many times more."""
    compressed = fmt == "parquet" or listed.name.lower().endswith(".gz")
    wide = unpivot is not None
    return listed.size * (COMPRESSED_EXPANSION if compressed else 1) * (UNPIVOT_EXPANSION if wide else 1)


def source_files(spec: UseCaseSpec, lake: Lake, *, scoring: bool = False) -> list[LandedFile]:
    """The landing files of one source, in name order. A file both paths match (train.csv and
    test.csv in one folder, ``source.path`` its ``*.csv``) is the scoring source's: its rows are
    the ones to score, without a target. Unless every source file is: both sources are then the
    same files, their rows with and without a target."""
    if scoring:
        return lake.listing(spec.scoring_source.path)
    files = lake.listing(spec.source.path)
    if spec.scoring_source is None:
        return files
    scored = {f.name for f in lake.listing(spec.scoring_source.path)}
    training = [f for f in files if f.name not in scored]
    return training if training else files


def read_source(
    spec: UseCaseSpec, lake: Lake, spill: Spill, *, scoring: bool = False, earlier: SourceRead | None = None
) -> SourceRead:
    """Read every landing file of one source once, one file at a time: rejected files are
    recorded and skipped, the others' rows go to ``spill`` (at most one file, or one batch of a
    large file, is held at a time). A file of numeric dates that show no day/month order
    (``DayOrderUnknown``: a daily file of the 3rd of a month) is read last, in the order the
    other files' dates show when they all show one; one rejected so earlier is read again then.
    ``earlier``: the training source, for the scoring source (its time kind, its day order)."""
    label = "scoring_source" if scoring else "source"
    settings = reading_settings(spec)
    records = rejection_records(lake, spec.name)
    read = SourceRead(kind=earlier.kind if earlier else None, day_orders=set(earlier.day_orders) if earlier else set())
    listing = source_files(spec, lake, scoring=scoring)  # names, sizes and change stamps: no request per file
    source_bytes = sum(listed.size for listed in listing)
    templates: list[pl.DataFrame] = []
    orders = read.day_orders
    waiting: list[tuple[int, LandedFile, dict, str, bool]] = []  # (..., reason, recorded earlier)

    def take(index: int, listed: LandedFile, entry: dict, order: bool | None = None) -> None:
        """Read one file (``order``: the day order other files show); its index is its place in
        the listing, so later files win in name order whenever a file is read."""
        try:
            got = read_with_retry(
                lake,
                lake.path(*listed.name.split("/")),
                listed.signature,
                lambda: _spill_file(
                    spec, lake, spill, listed, index, source_bytes, scoring=scoring, prefer=read.kind, day_first=order
                ),
                lambda: spill.discard(label, index),
            )
        except RetryLater as exc:
            entry |= {"status": "retry_later", "reason": str(exc)}
            return
        except core_ingest.DayOrderUnknown as exc:
            spill.discard(label, index)
            if order is None:
                waiting.append((index, listed, entry, str(exc), False))
                return
            reject(lake, spec.name, entry, listed.signature, settings, str(exc))
            return
        except core_ingest.FileRejected as exc:
            spill.discard(label, index)
            reject(lake, spec.name, entry, listed.signature, settings, _with_row_id_hint(spec, scoring, str(exc)))
            return
        if file_id(listed.name) in records:
            lake.delete(records[file_id(listed.name)])  # it was fixed
        if got.day_first is not None:
            orders.add(got.day_first)
        if order is not None:
            entry["day_order"] = "day first" if order else "month first"
            entry["day_order_from"] = "the use case's other landing files"
        if not got.rows:  # a header-only export: no rows, and no say in column types or time kind
            return
        if got.lines_above_header:
            entry["lines_above_header"] = got.lines_above_header
        if got.labels:  # compared with other files' (label_sets_apart)
            entry["labels"] = sorted(got.labels)
        read.kind = read.kind or got.kind
        entry["rows"] = got.rows
        templates.append(got.template)
        read.names[index] = entry

    for index, listed in enumerate(listing):
        entry: dict[str, Any] = {"file": listed.name, "source": label, "rows": 0, "status": "ingested", "reason": ""}
        entry |= {"rows_dropped": 0, "rows_merged": 0}
        read.files.append(entry)
        record = still_rejected(lake, records, listed.name, listed.signature, settings, label)
        if record is not None and record.get("day_order_unknown"):
            waiting.append((index, listed, entry, record["reason"], True))
        elif record is not None:
            entry |= {"status": "unchanged_rejected", "reason": record["reason"]}
        else:
            take(index, listed, entry)
    for index, listed, entry, reason, recorded in waiting:
        if len(orders) == 1:
            take(index, listed, entry, next(iter(orders)))
        elif recorded:
            entry |= {"status": "unchanged_rejected", "reason": reason}
        else:
            if orders:
                reason += "; the use case's other landing files show both orders"
            reject(lake, spec.name, entry, listed.signature, settings, reason, day_order_unknown=True)
    if templates:  # the column types the files' rows take together, as one concatenation would give
        read.template = pl.concat(templates, how="diagonal_relaxed")
    return read


def _with_row_id_hint(spec: UseCaseSpec, scoring: bool, reason: str) -> str:
    """A scoring file's rejection for lacking the row id column says that it is the row id."""
    missing = re.match(r"missing required column\(s\) (\[[^\]]*\])", reason)
    if scoring and spec.row_id and missing and repr(spec.row_id) in missing[1]:
        return (
            f"{reason}; {spec.row_id!r} is the scoring_source's row_id: every scoring file needs it, "
            "named as the file's header names the column that identifies each row"
        )
    return reason


def reject(
    lake: Lake, use_case: str, entry: dict, signature: dict, settings: str, reason: str, day_order_unknown: bool = False
) -> None:
    """Record a landing file as unusable for this use case; the file itself stays where it is.
    ``day_order_unknown``: a later run reads it again once other files show the order."""
    entry |= {"status": "rejected", "reason": reason}
    record = {
        "file": entry["file"],
        "source": entry["source"],
        **signature,
        "reason": reason,
        "settings": settings,
        "first_seen": dt.datetime.now(dt.UTC).isoformat(),
    }
    if day_order_unknown:
        record["day_order_unknown"] = True
    lake.write_json(lake.path("rejected", use_case, f"{file_id(entry['file'])}.json"), record)


def _file_totals(spec: UseCaseSpec, lake: Lake, spill: Spill, read: SourceRead, label: str, counts: list) -> None:
    """Per-file counts (summed over the buckets) into the summary entries; rows with a null key
    are copied to quarantine, one file at a time."""
    entries = read.names
    if read.template is None:
        return
    for row in core_ingest.per_file_counts(pl.concat(counts)).iter_rows(named=True):
        entry = entries[row[core_ingest.FILE]]
        entry[f"rows_{row['kind']}"] += row["n"]
        drops = entry.setdefault("drops", {})
        drops[row["reason"]] = drops.get(row["reason"], 0) + row["n"]
    for index, rows in spill.null_key_rows(label, read.template):
        entry = entries[index]
        copy = lake.path("quarantine", spec.name, f"rows_null_key_{file_id(entry['file'])}.parquet")
        lake.write_parquet(
            copy,
            rows.drop(core_ingest.FILE, core_ingest.DROP).with_columns(
                pl.lit(core_ingest.NULL_KEY).alias("quarantine_reason"), pl.lit(entry["file"]).alias("source_file")
            ),
        )
        entry["rows_dropped"] += rows.height
        entry.setdefault("drops", {})[core_ingest.NULL_KEY] = rows.height
        entry["reason"] = f"{rows.height} row(s) with a null key value copied to {lake.relative(copy)}"


# --- keys -----------------------------------------------------------------------------------
class KeyColumnsMissing(Exception):
    pass


def file_keys(
    spec: UseCaseSpec, lake: Lake, file: LandedFile, fmt: str, csv: Any = None, *, requote: bool = False
) -> list[str]:
    """The distinct encoded keys of one landing file, from its key and time columns only (on
    blob storage a Parquet file's footer and those column chunks, not the whole object), as
    ingest reads them (``core.ingest.key_values``); ``csv``: the source's dialect. A row without
    a time value (or with text in it that holds no digit, which no time is) makes no key: a
    report's footer line, or a total row, is no entity to model (ingest still reads and counts it).
    ``requote``: a CSV's quoting read through Python's csv module (``QuoteInValue``)."""
    times = spec.landing_time_columns
    columns = list(dict.fromkeys([*spec.keys, *times]))
    options = {"csv": csv, "requote": requote, "unpivot": spec.source.unpivot}
    with contextlib.ExitStack() as opened:
        wide = spec.source.unpivot is not None  # a wide Parquet file's keys or times may be its value columns
        if (fmt != "parquet" or wide) and _held_bytes(file, fmt, spec.source.unpivot) > BATCHED_FILE_BYTES:
            scratch = opened.enter_context(tempfile.TemporaryDirectory(prefix=_spill_prefix(os.getpid())))
            table = opened.enter_context(lake.open_table(file.name, fmt, columns, columns, scratch, **options))
            data = table.data
        else:
            data = lake.read_table(file.name, fmt, columns, columns, size=file.size, **options).lazy()
            table = None
        data = core_ingest.parquet_types(data)
        schema = data.collect_schema()
        missing = [k for k in spec.keys if k not in schema]
        if missing:
            raise KeyColumnsMissing(f"missing required column(s) {missing}")
        timed = [core_ingest.is_written(pl.col(t), schema[t]) for t in times if t in schema]
        if len(times) == 1 and schema.get(times[0]) == pl.Utf8:  # a time is never written without a digit
            timed.append(pl.col(times[0]).str.contains(r"\d"))
        if timed:  # a footer line ("Source: ...", "(c) 2024, all rights reserved") has no time: no key of its own
            data = data.filter(pl.all_horizontal(timed))
        try:  # as written: floats for integers are decided over all
            found = data.select(spec.keys).unique().collect()
        except pl.exceptions.ComputeError as exc:  # a streamed file's bad row shows only now
            raise table.error(exc) if table is not None else exc from None
        float_keys = core_ingest.float_written_keys(found, spec.keys)
        values = found.select(core_ingest.key_values(spec.keys, found.schema, float_keys, spec.unpadded_keys)).unique()
    return sorted(encode_key(row) for row in values.drop_nulls().iter_rows())


DISCOVERY_THREADS = 16  # key columns of many files at once: blob reads are latency-bound
# A CSV is read whole to find its keys: fewer at once when they are large, so discovery holds
# about this many bytes of CSV, not every file of a large landing zone (5.2 GiB at 40M rows).
DISCOVERY_CSV_BYTES = 256 * 2**20


def discover_keys(spec: UseCaseSpec, lake: Lake) -> list[str]:
    """Every key in the landing zone, in a stable order: one listing (sizes and change stamps
    included, no request per file), then the key columns of the files, several at a time. Skips
    files rejected for this use case and files it cannot read (``raw`` says why)."""
    settings = reading_settings(spec)
    records = rejection_records(lake, spec.name)
    fmt = spec.source.file_format

    def keys_of(file: LandedFile) -> list[str]:
        try:
            record = still_rejected(lake, records, file.name, file.signature, settings)
            if record is not None and not record.get("day_order_unknown"):  # that one may be read later
                return []
            try:
                return file_keys(spec, lake, file, fmt, spec.source.csv)
            except QuoteInValue:
                return file_keys(spec, lake, file, fmt, spec.source.csv, requote=True)
        except Exception:  # one unreadable file never hides the others' keys
            return []

    files = source_files(spec, lake)
    threads = min(DISCOVERY_THREADS, len(files))
    if fmt != "parquet" or spec.source.unpivot is not None:  # a file above BATCHED_FILE_BYTES is streamed, not held
        held = [min(_held_bytes(f, fmt, spec.source.unpivot), BATCHED_FILE_BYTES) for f in files]
        threads = min(threads, DISCOVERY_CSV_BYTES // max([1, *held]))
    with ThreadPoolExecutor(max(1, threads)) as pool:
        found = {k for keys in pool.map(keys_of, files) for k in keys}
    return sorted(found)


def _alike(values: Iterable[Any], fold: Callable[[Any], Any]) -> list[list[Any]]:
    """Groups of two or more values that ``fold`` makes one, each sorted, in first-seen order."""
    groups: dict[Any, list[Any]] = {}
    for value in values:
        groups.setdefault(fold(value), []).append(value)
    return [sorted(g) for g in groups.values() if len(g) > 1]


def label_sets_apart(files: Sequence[dict], limit: int = 5) -> list[dict]:
    """Training files whose class labels (two or more) share none with another such file's: 0/1
    in one export and no/yes in the next make four classes where two were meant. One file per
    set of labels, with its labels."""
    sets: dict[tuple[str, ...], str] = {}
    for f in files:
        if f.get("source") == "source" and len(f.get("labels") or ()) >= 2:
            sets.setdefault(tuple(f["labels"]), f["file"])
    apart = [(labels, name) for labels, name in sets.items() if any(not set(labels) & set(o) for o in sets)]
    return [{"file": name, "labels": list(labels)} for labels, name in apart[:limit]]


def differing_in_case(values: set[str], limit: int = 20) -> list[list[str]]:
    """Groups of values that are one value up to case (class labels Gold, gold, GOLD): kept
    apart, as written, but shown, as they usually are one class typed several ways."""
    return sorted(_alike(values, str.casefold))[:limit]


def keys_differing_in_case(
    spec: UseCaseSpec, keys: Sequence[str], limit: int = 20, fold: Callable[[str], str] = str.casefold
) -> list[list[str]]:
    """Keys that are one key up to case (``Store A``, ``STORE A``), or with ``fold`` up to
    something else: kept apart, as the export wrote them (case is data), but shown, since it
    usually is one entity typed two ways whose rows are split between two keys. Readable
    labels, at most ``limit`` groups."""
    similar = _alike(keys, lambda key: tuple(fold(v) for v in decode_key(key)))[:limit]
    return [[key_label(spec.keys, k) for k in group] for group in similar]


def _unpadded(value: str) -> str:
    """A whole number written as digits without its leading zeros or a ``.0`` (``007`` and
    ``7.0`` -> ``7``, as an id exported by pandas with a gap reads); other text as it is."""
    whole, dot, fraction = value.partition(".")
    if whole.isdigit() and (not dot or (fraction and not fraction.strip("0"))):
        return whole.lstrip("0") or "0"
    return value


def _wanted(spec: UseCaseSpec, keys: Sequence[str]) -> pl.DataFrame:
    rows = [decode_key(k) for k in keys]
    return pl.DataFrame(rows, schema={k: pl.Utf8 for k in spec.keys}, orient="row")


def _per_key(spec: UseCaseSpec, resolved: core_ingest.Resolved | None) -> tuple[dict, dict, dict]:
    """encoded key -> rows (frame), rows_in, {(reason, kind): n} for one bucket's run keys."""
    if resolved is None:
        return {}, {}, {}
    keys, data = spec.keys, resolved.data
    parts = {}
    if not data.is_empty():
        columns = [c for c in dict.fromkeys([*spec.input_columns, spec.row_id]) if c in data.columns]
        for values, frame in data.partition_by(keys, as_dict=True, maintain_order=True).items():
            parts[encode_key(values)] = frame.select(columns)
    rows_in = {encode_key(row[:-1]): row[-1] for row in resolved.rows_in.iter_rows()}
    counts: dict[str, dict] = {}
    for row in core_ingest.per_key_counts(resolved.counts, keys).iter_rows(named=True):
        key = encode_key([row[k] for k in keys])
        counts.setdefault(key, {})[(row["reason"], row["kind"])] = row["n"]
    return parts, rows_in, counts


def _row_info(rows_in: int, rows_out: int, counts: dict) -> dict[str, Any]:
    dropped = sum(n for (_, kind), n in counts.items() if kind == "dropped")
    merged = sum(n for (_, kind), n in counts.items() if kind == "merged")
    drops: dict[str, int] = {}
    for (reason, _), n in counts.items():
        drops[reason] = drops.get(reason, 0) + n
    return {"rows_in": rows_in, "rows_out": rows_out, "rows_dropped": dropped, "rows_merged": merged, "drops": drops}


def _rejected_text(rejected: list[dict]) -> str:
    shown = "; ".join(f"{f['file']}: {f['reason'][:300]}" for f in rejected[:2])
    more = f"; and {len(rejected) - 2} more" if len(rejected) > 2 else ""
    return f"{len(rejected)} file(s) rejected for this use case: {shown}{more}"


def _no_rows_reason(read: SourceRead) -> str:
    reason = "no rows for this key in the landing zone"
    if read.rejected:
        reason += f"; {_rejected_text(read.rejected)}"
    later = read.retry_later
    if later:
        reason += f"; {len(later)} file(s) could not be read now and will be tried again: {later[0]['file']}"
    return reason


def _failure_reasons(resolved: core_ingest.Resolved | None, prefix: str = "") -> dict[str, str]:
    if resolved is None:
        return {}
    return {encode_key(values): prefix + reason for values, reason in resolved.failures.items()}


def _resolve(
    spec: UseCaseSpec, spill: Spill, read: SourceRead | None, label: str, bucket: int, counts: list
) -> tuple[core_ingest.Resolved | None, list[pl.DataFrame]]:
    """One bucket of one source: the run's keys' rows resolved; the counts of all its keys
    (other keys' too, for the per-file totals) appended to ``counts``; and the kept rows of all
    its keys (for :func:`_scoring_without_training`)."""
    if read is None or read.template is None:
        return None, []
    names, kept = {index: e["file"] for index, e in read.names.items()}, []
    rows = spill.read(label, bucket, "rows", read.template)
    resolved = None if rows is None else core_ingest.resolve(rows, spec, file_names=names)
    del rows
    if resolved is not None:
        counts.append(resolved.counts)
        kept.append(_kept(spec, resolved, label))
    counted = spill.read(label, bucket, "counted", read.template)
    if counted is not None:
        others = core_ingest.resolve(counted, spec, file_names=names)
        counts.append(others.counts)
        kept.append(_kept(spec, others, label))
    return resolved, kept


def _kept(spec: UseCaseSpec, resolved: core_ingest.Resolved, label: str) -> pl.DataFrame:
    """The training source's keys (one row each), or the scoring source's kept rows (keys, file)."""
    if label == "source":
        return resolved.rows_in.select(spec.keys)
    return resolved.data.select(*spec.keys, core_ingest.FILE)


def _scoring_without_training(spec: UseCaseSpec, train: list[pl.DataFrame], future: list[pl.DataFrame]) -> pl.DataFrame:
    """Per-file counts of the scoring rows whose key has no training row in the landing zone: no
    key is made for them and nothing scores them, so they are dropped and counted, never lost.
    One bucket's keys: a key's rows of both sources share a bucket."""
    keys = list(spec.keys)
    if not future:
        return core_ingest.empty_counts(keys)
    scoring = pl.concat(future, how="vertical_relaxed")
    if train:
        trained = pl.concat(train, how="vertical_relaxed")
        scoring = scoring.join(trained, on=keys, how="anti", nulls_equal=True)
    return core_ingest.count_rows(scoring, keys, core_ingest.NO_TRAINING_ROWS, "dropped")


def _resolved_buckets(
    spec: UseCaseSpec, spill: Spill, train: SourceRead, future: SourceRead | None, counts: dict[str, list]
) -> Iterator[tuple[int, core_ingest.Resolved | None, core_ingest.Resolved | None]]:
    """(bucket, training rows, future rows) resolved, bucket by bucket, in the column types one
    resolution of the whole landing zone would give."""
    sources = [("source", train), ("scoring_source", future)]
    # "sum" and "mean" average numbers into floats once any (key, time) repeats, and one resolution
    # of the whole zone gives every key those types, other keys' repeats (of a ranged run) too
    merged = {}
    for label, read in sources:
        if spec.duplicate_policy in ("sum", "mean") and _runs_policy(spec, spill, read, label):
            merged[label] = core_ingest.merged_types(read.template, spec)
    for bucket in range(spill.buckets or 0):
        results, kept = [], []
        for label, read in sources:
            resolved, rows = _resolve(spec, spill, read, label, bucket, counts[label])
            if resolved is not None and label in merged:
                resolved.data = pl.concat([merged[label], resolved.data], how="vertical_relaxed")
            results.append(resolved)
            kept.append(rows)
        if future is not None:
            counts["scoring_source"].append(_scoring_without_training(spec, *kept))
        yield bucket, *results


def _runs_policy(spec: UseCaseSpec, spill: Spill, read: SourceRead | None, label: str) -> bool:
    """Whether one resolution of the whole source would run the duplicate policy: some bucket's
    rows (run keys' or others') repeat a (key, time). Reads only the counting columns."""
    if read is None or read.template is None:
        return False
    narrow = read.template.select(spill.narrow_of(read.template))
    for bucket in range(spill.buckets or 0):
        for part in ("rows", "counted"):
            frame = spill.read(label, bucket, part, narrow)
            if frame is not None and core_ingest.resolve(frame, spec).policy_ran:
                return True
    return False


def _outcome(
    run: StageRun, key: str, train: SourceRead, found: dict[str, Any], future: SourceRead | None = None
) -> KeyOutcome:
    """One key's outcome; its bronze (and future rows) written when it has rows."""
    spec, lake = run.spec, run.lake
    frame, fut, counts, f_counts = (found.get(n) for n in ("frame", "future", "counts", "future_counts"))
    info = _row_info(found.get("rows_in", 0), 0 if frame is None else frame.height, counts or {})
    info |= {"rows": info["rows_out"], "scoring_rows": 0 if fut is None else fut.height}
    if f_counts:
        info["scoring_drops"] = _row_info(0, 0, f_counts)["drops"]
    if found.get("scoring_failure"):  # its scoring rows were dropped (counted): say why
        info["scoring_note"] = found["scoring_failure"]
    elif fut is None and future is not None and future.rejected:  # its scoring rows may be in those files
        info["scoring_note"] = f"scoring_source {_rejected_text(future.rejected)}"
    if found.get("failure"):
        return KeyOutcome(key, "failed", found["failure"], info)
    if frame is None and not info["rows_in"]:
        return KeyOutcome(key, "failed", _no_rows_reason(train), info)
    if frame is None:
        detail = "; ".join(f"{r}: {n}" for r, n in info["drops"].items())
        reason = f"all {info['rows_in']} rows of this key were removed at ingest ({detail})"
        return KeyOutcome(key, "failed", reason, info)
    # the record goes first and comes back last, so no old record describes new bronze
    clear_state(lake, spec.name, "raw", key)
    lake.write_parquet(lake.key_path("bronze", spec.name, key, ".parquet"), frame)
    scoring_path = lake.key_path("bronze_scoring", spec.name, key, ".parquet")
    if fut is not None:
        lake.write_parquet(scoring_path, fut)
    elif spec.scoring_source:
        lake.delete(scoring_path)  # no future rows today: never score yesterday's
    crash_point("raw")
    outcome = KeyOutcome(key, "ok", info=info)
    write_state(lake, spec.name, "raw", outcome, run.run_id)
    return outcome


def _host_spills() -> str:
    """``mmp-spill-<host>-``: the start of this host's spill folder names (no ``-`` in the host part)."""
    return f"mmp-spill-{re.sub(r'[^A-Za-z0-9.]', '_', socket.gethostname())}-"


def _spill_prefix(pid: int) -> str:
    """``mmp-spill-<host>-<pid>-``: whose spill folder it is, so a later run can tell one left by
    a killed process (its ``finally`` never ran) from one in use."""
    return f"{_host_spills()}{pid}-"


def _remove_stale_spills(folder: str) -> None:
    """Delete the spill folders of this host's dead processes: at 40M rows a killed run leaves
    gigabytes of bucket files behind. A folder whose process is alive (or whose owner cannot be
    told) is left alone."""
    prefix = _host_spills()
    for path in Path(folder).glob(f"{glob.escape(prefix)}*"):
        pid = path.name.removeprefix(prefix).split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass  # alive, another user's


def _collect(run: StageRun, writing: list[tuple[str, Future]], outcomes: dict[str, KeyOutcome]) -> None:
    """Wait for the keys being written, in order; their outcomes (a write that raised fails the
    stage, as it did written in this thread)."""
    for key, done in writing:
        outcomes[key] = done.result()
        if run.progress:
            run.progress(1)
    writing.clear()


def ingest(run: StageRun, keys: Sequence[str]) -> StageReport:
    """Read the landing zone once, a file at a time, into hash buckets of the key on local disk;
    then clean, count and write the run keys' bronze a bucket at a time (bounded memory)."""
    spec, lake = run.spec, run.lake
    wanted = _wanted(spec, keys)
    outcomes: dict[str, KeyOutcome] = {}
    counts: dict[str, list] = {"source": [], "scoring_source": []}
    classes: set[str] = set()  # a classification's text labels, for those differing only in case
    ends: dict[str, tuple[float, float, str]] = {}  # a forecast key's last time and step
    t = spec.time_column
    _remove_stale_spills(tempfile.gettempdir())
    with tempfile.TemporaryDirectory(prefix=_spill_prefix(os.getpid())) as folder:
        spill = Spill(spec, wanted, folder)
        train = read_source(spec, lake, spill)
        future = read_source(spec, lake, spill, scoring=True, earlier=train) if spec.scoring_source else None
        by_bucket: dict[int, list[str]] = {}
        if spill.buckets:
            for key, bucket in zip(keys, wanted.select(spill.bucket()).to_series(), strict=True):
                by_bucket.setdefault(bucket, []).append(key)
        writers = ThreadPoolExecutor(WRITE_THREADS, thread_name_prefix="mmp-bronze")
        writing: list[tuple[str, Future]] = []  # the bucket being written while the next resolves
        try:
            for bucket, res, fut in _resolved_buckets(spec, spill, train, future, counts):
                # the previous bucket's writes end before this one is split per key: one bucket's
                # per-key frames at a time
                _collect(run, writing, outcomes)
                if spec.task == "classification" and res is not None and res.data[spec.target].dtype == pl.Utf8:
                    classes.update(res.data[spec.target].drop_nulls().unique().to_list())
                parts, rows_in, key_counts = _per_key(spec, res)
                f_parts, _, f_counts = _per_key(spec, fut)
                failures, scoring_failures = _failure_reasons(res), _failure_reasons(fut, "scoring_source: ")
                for key in by_bucket.get(bucket, ()):
                    if spec.task == "forecast" and key in parts and (end := series_end(parts[key][t])):
                        ends[key] = end
                    found = {"frame": parts.get(key), "future": f_parts.get(key), "rows_in": rows_in.get(key, 0)}
                    found |= {"counts": key_counts.get(key), "future_counts": f_counts.get(key)}
                    found["failure"] = failures.get(key)
                    found["scoring_failure"] = scoring_failures.get(key)  # its scoring rows only: it still trains
                    writing.append((key, writers.submit(_outcome, run, key, train, found, future)))
                del parts, f_parts, res, fut
            _collect(run, writing, outcomes)
        finally:  # on an error, the writes not yet started are not started
            writers.shutdown(wait=True, cancel_futures=True)
        for key in keys:
            if key not in outcomes:  # no bucket holds its rows
                outcomes[key] = _outcome(run, key, train, {}, future)
                if run.progress:
                    run.progress(1)
        _file_totals(spec, lake, spill, train, "source", counts["source"])
        if future is not None:
            _file_totals(spec, lake, spill, future, "scoring_source", counts["scoring_source"])
    files = train.files + (future.files if future else [])
    summary = {
        "landing_rows": sum(f["rows"] for f in train.files if f["status"] == "ingested"),
        "files": files,
        "rejected": [
            {"file": f["file"], "reason": f["reason"]}
            for f in files
            if f["status"] in ("rejected", "unchanged_rejected")
        ],
        "rows_dropped": sum(f["rows_dropped"] for f in train.files),
        "rows_merged": sum(f["rows_merged"] for f in train.files),
    }
    similar = keys_differing_in_case(spec, keys)
    if similar:
        summary["keys_differing_in_case"] = similar
    padded = keys_differing_in_case(spec, keys, fold=_unpadded)
    if padded:  # 7 from an integer column, 007 from a text one: usually one id
        summary["keys_differing_in_leading_zeros"] = padded
    labels = differing_in_case(classes)
    if labels:
        summary["labels_differing_in_case"] = labels
    apart = label_sets_apart(train.files)
    if apart:  # each label its own class: usually two exports' ways of writing the same classes
        summary["label_sets_apart"] = apart
    early = ending_early(ends, spec.horizon)
    if early:  # forecast into periods the other keys already have data for
        summary["keys_ending_early"] = [f"{key_label(spec.keys, k)} (last {ends[k][2]})" for k in early[:20]]
        summary["keys_ending_early_count"] = len(early)
    if future is not None:
        summary |= {
            "scoring_rows": sum(f["rows"] for f in future.files if f["status"] == "ingested"),
            "scoring_rows_dropped": sum(f["rows_dropped"] for f in future.files),
            "scoring_rows_merged": sum(f["rows_merged"] for f in future.files),
            "scoring_rows_without_training": sum(
                (f.get("drops") or {}).get(core_ingest.NO_TRAINING_ROWS, 0) for f in future.files
            ),
        }
    ordered = [outcomes[key] for key in keys]
    return finish(run, "raw", ordered, summary, written={o.key for o in ordered if o.ok})
