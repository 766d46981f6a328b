"""A use case's models across the two registries: the family view and rollback. No Dagster.

Both read whole use cases with a constant number of registry queries (three), however many
keys there are, and both feed the warehouse for BI.
"""

from __future__ import annotations

import datetime as dt
import getpass
import re
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from .core.ingest import LEADING_ZEROS
from .core.keys import decode_key, encode_key, is_encoded_key, key_label
from .core.spec import UseCaseSpec
from .storage.registry import (
    ModelRef,
    ModelRegistry,
    ProductionSnapshot,
    RegistryError,
    candidate_registry,
    production_registry,
)
from .storage.settings import PlatformSettings
from .storage.warehouse import Warehouse

ROLLBACK_TAGS = ("rolled_back_at", "rolled_back_by", "rolled_back_to")
FAMILY_STATUSES = ("current", "behind", "unpromoted", "production_only")
FAMILY_SCHEMA = {
    "use_case": pl.Utf8,
    "key": pl.Utf8,
    "key_label": pl.Utf8,
    "metric": pl.Utf8,
    "candidate_version": pl.Int32,
    "candidate_value": pl.Float64,
    "production_version": pl.Int32,
    "production_source_version": pl.Int32,
    "production_value": pl.Float64,
    "status": pl.Utf8,
    "snapshot_at": pl.Datetime("us"),
}


def registries(settings: PlatformSettings, write_production: bool = False) -> tuple[ModelRegistry, ModelRegistry]:
    """(candidate read access, production) from settings; production is writable only on request."""
    return candidate_registry(settings, writable=False), production_registry(settings, write=write_production)


def family_status(candidate: ModelRef | None, production: ModelRef | None) -> str:
    """current: production serves the newest candidate; behind: an older one (the newest was
    not promoted, or not yet); unpromoted: no production model; production_only: no candidate."""
    if candidate is None:
        return "production_only"
    if production is None:
        return "unpromoted"
    return "current" if production.tags.get("source_candidate_run") == candidate.source else "behind"


def model_family(spec: UseCaseSpec, candidates: ModelRegistry, production: ModelRegistry) -> pl.DataFrame:
    """One row per key: newest candidate and current production model with their metrics."""
    latest = candidates.latest_versions(spec.name)
    current = production.snapshot(spec.name).current
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    rows = []
    for key in sorted(set(latest) | set(current)):
        cand, prod = latest.get(key), current.get(key)
        source_version = prod.tags.get("source_candidate_version") if prod else None
        rows.append(
            {
                "use_case": spec.name,
                "key": key,
                "key_label": key_label(spec.keys, key),
                "metric": spec.metric,
                "candidate_version": cand.version if cand else None,
                "candidate_value": cand.metric(spec.metric) if cand else None,
                "production_version": prod.version if prod else None,
                "production_source_version": int(source_version) if source_version else None,
                "production_value": prod.metric(spec.metric) if prod else None,
                "status": family_status(cand, prod),
                "snapshot_at": now,
            }
        )
    return pl.DataFrame(rows, schema=FAMILY_SCHEMA)


def publish_model_family(
    settings: PlatformSettings, spec: UseCaseSpec, warehouse: Warehouse | None = None
) -> pl.DataFrame:
    """Write the family view to the warehouse's ``model_family`` table, and return it."""
    frame = model_family(spec, *registries(settings))
    wh = warehouse or Warehouse(settings.warehouse_url)
    try:
        wh.ensure_schema()
        wh.replace_use_case("model_family", spec.name, frame)
    finally:
        if warehouse is None:
            wh.dispose()
    return frame


def _as_read(spec: UseCaseSpec, values: list[str]) -> list[str]:
    """Key values as ingest reads them: ``key_leading_zeros: strip`` makes 'store=007' the key 7."""
    if spec.key_leading_zeros != "strip":
        return values
    return [re.sub(LEADING_ZEROS, r"\1", v) for v in values]


def resolve_key(spec: UseCaseSpec, text: str, known: Sequence[str] = ()) -> str:
    """A key given on the command line: an encoded partition key, ``col=value, col=value``
    as shown in reports, or the plain value of a single-column key."""
    if text in known:
        return text
    label = re.fullmatch(r",\s*".join(f"{re.escape(c)}=(.*)" for c in spec.keys), text, flags=re.S)  # ', ' or ',
    if label:
        return encode_key(_as_read(spec, list(label.groups())))
    if is_encoded_key(text) and len(decode_key(text)) == len(spec.keys):
        return encode_key(_as_read(spec, decode_key(text)))
    if len(spec.keys) == 1:
        return encode_key(_as_read(spec, [text]))
    raise RegistryError(f"cannot read key {text!r}: give it as '{', '.join(f'{c}=…' for c in spec.keys)}'")


@dataclass
class Rollback:
    key: str
    from_version: int
    to_version: int
    history_row: dict


def rollback(
    spec: UseCaseSpec,
    production: ModelRegistry,
    key: str,
    by: str | None = None,
    to_version: int | None = None,
    snapshot: ProductionSnapshot | None = None,
) -> Rollback:
    """Move ``production`` back to the previous version of this key's production model.

    "Previous" skips versions that were themselves rolled back. The version left behind is
    tagged (``rolled_back_at``/``_by``/``_to``) so the pipeline never promotes that candidate
    again on its own.
    """
    by = by or f"mmp promote --rollback by {getpass.getuser()}@{socket.gethostname()}"
    snap = snapshot or production.snapshot(spec.name)
    label = key_label(spec.keys, key)
    current = snap.current.get(key)
    if current is None:
        raise RegistryError(f"{spec.name} / {label}: no production model to roll back")
    history = snap.versions.get(key, [])
    if to_version is not None:
        target = next((r for r in history if r.version == to_version), None)
        if target is None or target.version == current.version:
            known = [r.version for r in history if r.version != current.version]
            raise RegistryError(f"{spec.name} / {label}: cannot roll back to v{to_version}; choose one of {known}")
    else:
        older = [r for r in history if r.version < current.version and not r.tags.get("rolled_back_at")]
        if not older:
            raise RegistryError(
                f"{spec.name} / {label}: v{current.version} is the first production version; nothing to roll back to"
            )
        target = older[-1]
    now = dt.datetime.now(dt.UTC)
    production.set_alias(spec.name, key, target.version)
    if target.version < current.version:  # going back: the version left is marked as rolled back
        production.set_version_tags(
            spec.name,
            key,
            current.version,
            {"rolled_back_at": now.isoformat(), "rolled_back_by": by, "rolled_back_to": str(target.version)},
        )
    # the restored version is trusted again, even if it had been rolled back from before
    production.delete_version_tags(spec.name, key, target.version, [t for t in ROLLBACK_TAGS if t in target.tags])
    production.set_version_tags(spec.name, key, target.version, {"restored_at": now.isoformat(), "restored_by": by})
    direction = "rolled back" if target.version < current.version else "rolled forward"
    reason = f"{direction} from v{current.version} to v{target.version}"
    row = {
        "use_case": spec.name,
        "key": key,
        "run_date": now.date(),
        "decided_at": now.replace(tzinfo=None),
        "decision": "rolled_back",
        "reason": reason,
        "metric": spec.metric,
        "candidate_version": None,
        "candidate_value": None,
        "champion_version": current.version,
        "champion_value": current.metric(spec.metric),
        "production_version": target.version,
        "decided_by": by,
        "dagster_run_id": f"rollback-{uuid.uuid4().hex[:16]}",
    }
    return Rollback(key, current.version, target.version, row)


HISTORY_SCHEMA = {
    "use_case": pl.Utf8,
    "key": pl.Utf8,
    "run_date": pl.Date,
    "decided_at": pl.Datetime("us"),
    "decision": pl.Utf8,
    "reason": pl.Utf8,
    "metric": pl.Utf8,
    "candidate_version": pl.Int32,
    "candidate_value": pl.Float64,
    "champion_version": pl.Int32,
    "champion_value": pl.Float64,
    "production_version": pl.Int32,
    "decided_by": pl.Utf8,
    "dagster_run_id": pl.Utf8,
}


def record_rollback(settings: PlatformSettings, spec: UseCaseSpec, done: Rollback) -> None:
    """Add the rollback to ``promotion_history`` and refresh ``model_family``, in the warehouse."""
    wh = Warehouse(settings.warehouse_url)
    try:
        wh.ensure_schema()
        row = pl.DataFrame([done.history_row], schema=HISTORY_SCHEMA)
        wh.replace_keys(spec.name, done.history_row["run_date"], [], {}, append={"promotion_history": row})
        publish_model_family(settings, spec, warehouse=wh)
    finally:
        wh.dispose()
