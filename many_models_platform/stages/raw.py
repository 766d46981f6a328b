"""Stage 1, ``raw``: landing files -> per-key bronze Parquet.

Landing files are the user's input: they are read, never moved. A file this use case
cannot use is recorded as rejected *for this use case* (``rejected/<uc>/<file id>.json``) and
skipped until it or the use case's reading settings change; other use cases still read it.
What happens to each row is decided in :mod:`..core.ingest`, which counts every row removed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import polars as pl
from upath import UPath

from ..core import ingest as core_ingest
from ..core.engine import KeyOutcome
from ..core.keys import decode_key, encode_key
from ..core.spec import UseCaseSpec
from ..storage.lake import Lake, LandedFile
from .base import StageReport, StageRun, clear_state, crash_point, finish, write_state

# A read that fails with an OSError, or a file that changes while being read (still being
# written), is tried again after these pauses; then it is left for a later run, never rejected.
RETRY_DELAYS: tuple[float, ...] = (0.2, 1.0)
# Bumped when the way files are read changes, so earlier rejections are tried again.
READER_VERSION = 2


class RetryLater(Exception):
    """A landing file could not be read now for a reason that may pass (I/O, still being written)."""


@dataclass
class SourceRead:
    """One source (``source`` or ``scoring_source``) after reading and cleaning."""

    resolved: core_ingest.Resolved | None
    files: list[dict[str, Any]] = field(default_factory=list)
    kind: str | None = None  # the time column's kind: date, datetime or period

    @property
    def rejected(self) -> list[dict[str, Any]]:
        return [f for f in self.files if f["status"] in ("rejected", "unchanged_rejected")]

    @property
    def retry_later(self) -> list[dict[str, Any]]:
        return [f for f in self.files if f["status"] == "retry_later"]


# --- rejection records ----------------------------------------------------------------------
def file_id(name: str) -> str:
    """A lake-safe, reversible name for a landing file (hashed when it would be too long)."""
    encoded = encode_key([name])
    return encoded if len(encoded) <= 200 else hashlib.sha256(name.encode()).hexdigest()


def reading_settings(spec: UseCaseSpec) -> str:
    """Everything that decides whether a file can be read; a change re-reads rejected files."""
    fields = spec.model_dump(
        include={"task", "source", "scoring_source", "keys", "time_column", "time_format", "frequency"}
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


def still_rejected(lake: Lake, records: dict[str, UPath], name: str, signature: dict, settings: str) -> dict | None:
    """The file's rejection record when neither the file nor the reading settings changed."""
    path = records.get(file_id(name))
    if path is None:
        return None
    try:
        record = lake.read_json(path)
    except (OSError, ValueError):
        return None
    same = record.get("size") == signature["size"] and record.get("modified") == signature["modified"]
    return record if same and record.get("settings") == settings else None


# --- reading --------------------------------------------------------------------------------
def read_with_retry(
    lake: Lake,
    path: UPath,
    fmt: str,
    columns: list[str],
    text_columns: list[str],
    listed: dict | None = None,
    **options: Any,
) -> pl.DataFrame:
    """Read a landing file, retrying I/O errors and files that change while read; RetryLater after that.
    ``listed``: the file's signature from the listing, which saves asking for it before the first read;
    ``options`` go to :meth:`Lake.read_table` (``csv``, ``required``)."""
    problem = ""
    for attempt in range(len(RETRY_DELAYS) + 1):
        if attempt:
            time.sleep(RETRY_DELAYS[attempt - 1])
        try:
            before = listed if (listed is not None and not attempt) else lake.signature(path)
            frame = lake.read_table(path, fmt, columns=columns, text_columns=text_columns, **options)
            if lake.signature(path) == before:
                return frame
            problem = "the file changed while it was read (still being written?)"
        except OSError as exc:
            problem = f"{type(exc).__name__}: {exc}"
    raise RetryLater(f"{problem}; tried {len(RETRY_DELAYS) + 1} times, will try again on the next run")


def read_source(spec: UseCaseSpec, lake: Lake, *, scoring: bool = False, prefer: str | None = None) -> SourceRead:
    """Read every landing file of one source once: rejected files are recorded and skipped."""
    source = spec.scoring_source if scoring else spec.source
    label = "scoring_source" if scoring else "source"
    settings = reading_settings(spec)
    records = rejection_records(lake, spec.name)
    text_columns = [*spec.keys, *spec.categorical_features] + ([spec.time_column] if spec.time_column else [])
    frames, files, names = [], [], []
    kind = prefer
    for listed in lake.listing(source.path):  # names, sizes and change stamps: no request per file
        name, signature = listed.name, listed.signature
        path = lake.path(*name.split("/"))
        entry: dict[str, Any] = {"file": name, "source": label, "rows": 0, "status": "ingested", "reason": ""}
        entry |= {"rows_dropped": 0, "rows_merged": 0}
        files.append(entry)
        record = still_rejected(lake, records, name, signature, settings)
        if record is not None:
            entry |= {"status": "unchanged_rejected", "reason": record["reason"]}
            continue
        try:
            raw = read_with_retry(
                lake,
                path,
                source.file_format,
                spec.input_columns,
                text_columns,
                signature,
                csv=source.csv,
                required=core_ingest.required_columns(spec, scoring),
            )
        except RetryLater as exc:
            entry |= {"status": "retry_later", "reason": str(exc)}
            continue
        except core_ingest.FileRejected as exc:
            reject(lake, spec.name, entry, signature, settings, str(exc)[:500])
            continue
        except Exception as exc:  # the file's content is the user's: say why it cannot be read
            reject(lake, spec.name, entry, signature, settings, f"cannot read as {source.file_format}: {exc}"[:500])
            continue
        try:
            frame, file_kind = core_ingest.normalise_file(raw, spec, scoring=scoring, prefer=kind)
        except core_ingest.FileRejected as exc:
            reject(lake, spec.name, entry, signature, settings, str(exc))
            continue
        except pl.exceptions.PolarsError as exc:  # e.g. a key column of nested values that has no text form
            reject(lake, spec.name, entry, signature, settings, f"{type(exc).__name__}: {exc}"[:500])
            continue
        if file_id(name) in records:
            lake.delete(records[file_id(name)])  # it was fixed
        if frame.is_empty():  # a header-only export: no rows, and no say in column types or time kind
            continue
        kind = kind or file_kind
        entry["rows"] = frame.height
        frames.append(frame.with_columns(pl.lit(len(names), dtype=pl.Int32).alias(core_ingest.FILE)))
        names.append(entry)
    if not frames:
        return SourceRead(None, files, kind)
    data = pl.concat(frames, how="diagonal_relaxed")
    frames.clear()  # the concatenated copy is all that is needed from here on
    resolved = core_ingest.resolve(data, spec, file_names=[e["file"] for e in names])
    _file_totals(spec, lake, resolved, names)
    return SourceRead(resolved, files, kind)


def reject(lake: Lake, use_case: str, entry: dict, signature: dict, settings: str, reason: str) -> None:
    """Record a landing file as unusable for this use case; the file itself stays where it is."""
    entry |= {"status": "rejected", "reason": reason}
    record = {
        "file": entry["file"],
        "source": entry["source"],
        **signature,
        "reason": reason,
        "settings": settings,
        "first_seen": dt.datetime.now(dt.UTC).isoformat(),
    }
    lake.write_json(lake.path("rejected", use_case, f"{file_id(entry['file'])}.json"), record)


def _file_totals(spec: UseCaseSpec, lake: Lake, resolved: core_ingest.Resolved, entries: list[dict]) -> None:
    """Per-file counts into the summary entries; rows with a null key are copied to quarantine."""
    for row in core_ingest.per_file_counts(resolved.counts).iter_rows(named=True):
        entry = entries[row[core_ingest.FILE]]
        entry[f"rows_{row['kind']}"] += row["n"]
        drops = entry.setdefault("drops", {})
        drops[row["reason"]] = drops.get(row["reason"], 0) + row["n"]
    if resolved.null_key_rows.is_empty():
        return
    for (index,), rows in resolved.null_key_rows.partition_by(core_ingest.FILE, as_dict=True).items():
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


def file_keys(spec: UseCaseSpec, lake: Lake, file: LandedFile, fmt: str, csv: Any = None) -> list[str]:
    """The distinct encoded keys of one landing file, from its key columns only (on blob
    storage a Parquet file's footer and key column chunks, not the whole object), as ingest
    reads them (``core.ingest.key_values``); ``csv``: the source's dialect."""
    frame = lake.read_table(file.name, fmt, columns=spec.keys, text_columns=spec.keys, size=file.size, csv=csv)
    missing = [k for k in spec.keys if k not in frame.columns]
    if missing:
        raise KeyColumnsMissing(f"missing required column(s) {missing}")
    values = frame.select(core_ingest.key_values(spec.keys, frame.schema)).unique().drop_nulls()
    return sorted(encode_key(row) for row in values.iter_rows())


DISCOVERY_THREADS = 16  # key columns of many files at once: blob reads are latency-bound


def discover_keys(spec: UseCaseSpec, lake: Lake) -> list[str]:
    """Every key in the landing zone, in a stable order: one listing (sizes and change stamps
    included, no request per file), then the key columns of the files, several at a time. Skips
    files rejected for this use case and files it cannot read (``raw`` says why)."""
    settings = reading_settings(spec)
    records = rejection_records(lake, spec.name)
    fmt = spec.source.file_format

    def keys_of(file: LandedFile) -> list[str]:
        try:
            if still_rejected(lake, records, file.name, file.signature, settings) is not None:
                return []
            return file_keys(spec, lake, file, fmt, spec.source.csv)
        except Exception:  # one unreadable file never hides the others' keys
            return []

    files = lake.listing(spec.source.path)
    with ThreadPoolExecutor(max(1, min(DISCOVERY_THREADS, len(files)))) as pool:
        found = {k for keys in pool.map(keys_of, files) for k in keys}
    return sorted(found)


def _wanted(spec: UseCaseSpec, keys: Sequence[str]) -> pl.DataFrame:
    rows = [decode_key(k) for k in keys]
    return pl.DataFrame(rows, schema={k: pl.Utf8 for k in spec.keys}, orient="row")


def _per_key(spec: UseCaseSpec, read: SourceRead, wanted: pl.DataFrame) -> tuple[dict, dict, dict]:
    """encoded key -> rows (frame), rows_in, {(reason, kind): n} for the run's keys."""
    if read.resolved is None:
        return {}, {}, {}
    keys, res = spec.keys, read.resolved
    unwanted = res.rows_in.join(wanted, on=keys, how="anti").height
    data = res.data.join(wanted, on=keys, how="semi") if unwanted else res.data
    parts = {}
    if not data.is_empty():
        columns = [c for c in spec.input_columns if c in data.columns]
        for values, frame in data.partition_by(keys, as_dict=True, maintain_order=True).items():
            parts[encode_key(values)] = frame.select(columns)
    rows_in = {encode_key(row[:-1]): row[-1] for row in res.rows_in.join(wanted, on=keys, how="semi").iter_rows()}
    counts: dict[str, dict] = {}
    for row in core_ingest.per_key_counts(res.counts, keys).join(wanted, on=keys, how="semi").iter_rows(named=True):
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


def _no_rows_reason(read: SourceRead) -> str:
    reason = "no rows for this key in the landing zone"
    rejected = read.rejected
    if rejected:
        shown = "; ".join(f"{f['file']}: {f['reason'][:300]}" for f in rejected[:2])
        more = f"; and {len(rejected) - 2} more" if len(rejected) > 2 else ""
        reason += f"; {len(rejected)} file(s) rejected for this use case: {shown}{more}"
    later = read.retry_later
    if later:
        reason += f"; {len(later)} file(s) could not be read now and will be tried again: {later[0]['file']}"
    return reason


def _failure_reasons(spec: UseCaseSpec, read: SourceRead | None, prefix: str = "") -> dict[str, str]:
    if read is None or read.resolved is None:
        return {}
    return {encode_key(values): prefix + reason for values, reason in read.resolved.failures.items()}


def ingest(run: StageRun, keys: Sequence[str]) -> StageReport:
    """Read the landing zone once, clean and count its rows, and write each run key's bronze."""
    spec, lake = run.spec, run.lake
    train = read_source(spec, lake)
    future = read_source(spec, lake, scoring=True, prefer=train.kind) if spec.scoring_source else None
    wanted = _wanted(spec, keys)
    parts, rows_in, counts = _per_key(spec, train, wanted)
    f_parts, _, f_counts = _per_key(spec, future, wanted) if future else ({}, {}, {})
    failures = {**_failure_reasons(spec, future, "scoring_source: "), **_failure_reasons(spec, train)}
    outcomes = []
    for key in keys:
        frame, fut = parts.get(key), f_parts.get(key)
        info = _row_info(rows_in.get(key, 0), 0 if frame is None else frame.height, counts.get(key, {}))
        info |= {"rows": info["rows_out"], "scoring_rows": 0 if fut is None else fut.height}
        if f_counts.get(key):
            info["scoring_drops"] = _row_info(0, 0, f_counts[key])["drops"]
        if key in failures:
            outcomes.append(KeyOutcome(key, "failed", failures[key], info))
        elif frame is None and not info["rows_in"]:
            outcomes.append(KeyOutcome(key, "failed", _no_rows_reason(train), info))
        elif frame is None:
            detail = "; ".join(f"{r}: {n}" for r, n in info["drops"].items())
            reason = f"all {info['rows_in']} rows of this key were removed at ingest ({detail})"
            outcomes.append(KeyOutcome(key, "failed", reason, info))
        else:
            # the record goes first and comes back last, so no old record describes new bronze
            clear_state(lake, spec.name, "raw", key)
            lake.write_parquet(lake.key_path("bronze", spec.name, key, ".parquet"), frame)
            scoring_path = lake.key_path("bronze_scoring", spec.name, key, ".parquet")
            if fut is not None:
                lake.write_parquet(scoring_path, fut)
            elif spec.scoring_source:
                lake.delete(scoring_path)  # no future rows today: never score yesterday's
            crash_point("raw")
            outcomes.append(KeyOutcome(key, "ok", info=info))
            write_state(lake, spec.name, "raw", outcomes[-1], run.run_id)
        if run.progress:
            run.progress(1)
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
    return finish(run, "raw", outcomes, summary, written={o.key for o in outcomes if o.ok})
