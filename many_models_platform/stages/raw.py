"""Stage 1, ``raw``: landing files -> per-key bronze Parquet."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import polars as pl

from ..core.engine import KeyOutcome
from ..core.keys import encode_key
from ..core.spec import UseCaseSpec
from ..storage.lake import Lake
from .base import (
    StageReport,
    StageRun,
    finish,
)


def read_landing(spec: UseCaseSpec, lake: Lake, scoring: bool = False) -> tuple[pl.DataFrame, list[dict]]:
    """Read every landing file of a source; malformed files are moved to quarantine, not dropped."""
    source = spec.scoring_source if scoring else spec.source
    required = [c for c in spec.input_columns if not (scoring and c == spec.target)]
    frames, quarantined = [], []
    for i, path in enumerate(lake.glob(source.path)):
        try:
            frame = lake.read_table(path, source.file_format)
            missing = [c for c in required if c not in frame.columns]
            if missing:
                raise ValueError(f"missing required column(s) {missing}")
            frame = frame.select(required).with_columns(
                [pl.col(k).cast(pl.Utf8) for k in spec.keys] + [pl.lit(i).alias("__file")]
            )
            if spec.time_column and not frame.schema[spec.time_column].is_temporal():
                raise ValueError(f"time column {spec.time_column!r} is not a date or datetime")
        except Exception as exc:
            quarantined.append(quarantine_file(lake, spec.name, path, f"{type(exc).__name__}: {exc}"))
            continue
        frames.append(frame)
    if not frames:
        return pl.DataFrame(), quarantined
    data = pl.concat(frames, how="diagonal_relaxed")
    null_keys = data.filter(pl.any_horizontal([pl.col(k).is_null() for k in spec.keys]))
    if null_keys.height:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
        lake.write_parquet(
            lake.path("quarantine", spec.name, f"rows_null_key_{stamp}.parquet"),
            null_keys.with_columns(pl.lit("null key value").alias("quarantine_reason")),
        )
        quarantined.append(
            {"file": f"rows_null_key_{stamp}.parquet", "reason": f"{null_keys.height} rows with a null key"}
        )
        data = data.filter(~pl.any_horizontal([pl.col(k).is_null() for k in spec.keys]))
    # For a repeated (key, period) the last file in name order wins, so a correction landed
    # later (with a later-sorting name) replaces a row instead of duplicating it.
    if spec.time_column:
        data = data.sort("__file", maintain_order=True).unique(
            subset=[*spec.keys, spec.time_column], keep="last", maintain_order=True
        )
    return data.drop("__file"), quarantined


def quarantine_file(lake: Lake, use_case: str, path, reason: str) -> dict:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    name = f"{stamp}_{path.name}"
    lake.move(path, lake.path("quarantine", use_case, name))
    lake.write_json(lake.path("quarantine", use_case, f"{name}.reason.json"), {"source": str(path), "reason": reason})
    return {"file": name, "reason": reason}


def partition_by_key(spec: UseCaseSpec, data: pl.DataFrame) -> dict[str, pl.DataFrame]:
    if data.is_empty():
        return {}
    parts = data.partition_by(spec.keys, as_dict=True, maintain_order=True)
    return {encode_key(k): frame for k, frame in parts.items()}


def discover_keys(spec: UseCaseSpec, lake: Lake) -> list[str]:
    """Every key present in the landing zone, in a stable order (reads key columns only)."""
    keys: set[str] = set()
    for path in lake.glob(spec.source.path):
        try:
            frame = lake.read_table(path, spec.source.file_format, columns=spec.keys)
            values = frame.select([pl.col(k).cast(pl.Utf8) for k in spec.keys]).unique().drop_nulls()
        except Exception:
            continue  # the raw stage quarantines it with a reason
        keys.update(encode_key(row) for row in values.iter_rows())
    return sorted(keys)


def ingest(run: StageRun, keys: Sequence[str]) -> StageReport:
    spec, lake = run.spec, run.lake
    data, quarantined = read_landing(spec, lake)
    by_key = partition_by_key(spec, data)
    future = {}
    if spec.scoring_source:
        future_data, q = read_landing(spec, lake, scoring=True)
        quarantined += q
        future = partition_by_key(spec, future_data)
    outcomes = []
    for key in keys:
        frame = by_key.get(key)
        if frame is None:
            outcomes.append(KeyOutcome(key, "failed", "no rows for this key in the landing zone"))
        else:
            lake.write_parquet(lake.key_path("bronze", spec.name, key, ".parquet"), frame)
            fut = future.get(key)
            if fut is not None:
                lake.write_parquet(lake.key_path("bronze_scoring", spec.name, key, ".parquet"), fut)
            info = {"rows": frame.height, "scoring_rows": 0 if fut is None else fut.height}
            outcomes.append(KeyOutcome(key, "ok", info=info))
        if run.progress:
            run.progress(1)
    return finish(run, "raw", outcomes, {"landing_rows": data.height, "quarantined": quarantined})
