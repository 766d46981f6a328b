"""What the landing sensor does on a tick, without Dagster: which landed files are new or changed,
which keys they hold, which of those are new partitions and whose data changed.

Each landed file is handled once per version (name, size and ETag or modification time). The
files handled so far are listed in the lake, in ``sensors/<use case>/landing_<digest>.json``,
and the sensor's Dagster cursor is only that digest: the cursor stays a few bytes with 10,000
files, and a tick that fails before Dagster stores its cursor is simply done again (the list is
content-addressed, so the older one is still there). One listing gives every file's size and
change stamp (no request per file); only key columns of new and changed files are read (a
remote Parquet file's footer and key column chunks, by ranged requests), ``READ_THREADS`` at a
time, and none is started after the tick's deadline: the files not reached are its backlog,
taken up by the next tick as if they had just landed. A file that cannot be read is recorded
as rejected the way ingest does (``rejected/<use case>/``) and the tick carries on; a file that
fails with an I/O or storage error is left for the next tick. Landing files are never moved or
changed.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from ..core.ingest import FileRejected
from ..core.spec import UseCaseSpec
from ..storage.lake import Lake, LandedFile, transient_errors
from .raw import (
    KeyColumnsMissing,
    file_keys,
    reading_settings,
    reject,
    rejection_records,
    source_files,
    still_rejected,
)

SEEN_FORMAT = 1
# Files read at once: blob reads are latency-bound (one or a few requests each) and parsing a
# key column is GIL-free polars work, so a tick overlaps many of them.
READ_THREADS = 16


@dataclass
class LandingScan:
    """One tick's findings. ``cursor`` is the digest of the files handled after this tick."""

    cursor: str | None
    new_keys: list[str] = field(default_factory=list)  # sorted: partitions to add
    changed_keys: list[str] = field(default_factory=list)  # keys whose landed data changed
    counts: dict[str, int] = field(default_factory=dict)  # files: listed, new, changed, removed, ...
    rejected: list[dict[str, str]] = field(default_factory=list)  # file, reason (this tick)
    retry_later: list[dict[str, str]] = field(default_factory=list)
    lost_history: bool = False  # the cursor named a list the lake no longer holds

    @property
    def changed(self) -> bool:
        return bool(self.new_keys or self.changed_keys)


def seen_path(lake: Lake, use_case: str, digest: str):
    return lake.path("sensors", use_case, f"landing_{digest}.json")


def load_seen(lake: Lake, use_case: str, cursor: str | None) -> tuple[dict[str, dict], str | None, bool]:
    """(file name -> record, reading settings, lost) for the list the cursor names."""
    if not cursor:
        return {}, None, False
    path = seen_path(lake, use_case, cursor)
    try:
        body = lake.read_json(path)
    except FileNotFoundError:
        return {}, None, True
    return body.get("files") or {}, body.get("settings"), False


def digest_of(files: dict[str, dict], settings: str) -> str:
    blob = json.dumps({"files": files, "settings": settings, "format": SEEN_FORMAT}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def scan_landing(
    spec: UseCaseSpec,
    lake: Lake,
    cursor: str | None,
    known_keys: set[str],
    *,
    max_files: int | None = None,
    deadline: float | None = None,
) -> LandingScan:
    """Compare the landing zone with the files handled so far; read the key columns of the new
    and changed ones, at most ``max_files``, and none started after ``deadline`` (a
    ``time.monotonic()`` value): the files not reached wait for the next tick, in name order.

    ``known_keys`` are the use case's partitions. The new list of handled files is written to
    the lake before returning; the caller stores ``cursor`` (Dagster does, with the tick)."""
    settings = reading_settings(spec)
    seen, seen_settings, lost = load_seen(lake, spec.name, cursor)
    if seen_settings is not None and seen_settings != settings:
        # the reading settings changed: files rejected under the old ones are read again
        seen = {n: r for n, r in seen.items() if not r.get("rejected")}
    sources = [(spec.source, "source")] + ([(spec.scoring_source, "scoring_source")] if spec.scoring_source else [])
    listed: dict[str, tuple[LandedFile, str, str]] = {}
    for source, label in sources:
        for f in source_files(spec, lake, scoring=label == "scoring_source"):
            listed.setdefault(f.name, (f, source.file_format, label))
    todo = [
        (f, fmt, label)
        for f, fmt, label in listed.values()
        if (old := seen.get(f.name)) is None or (old["size"], old["modified"]) != (f.size, f.modified)
    ]
    todo.sort(key=lambda t: t[0].name)
    deferred = todo[max_files:] if max_files is not None else []
    todo = todo[:max_files] if max_files is not None else todo
    removed = sorted(set(seen) - set(listed))
    scan = LandingScan(cursor, lost_history=lost)
    scan.counts = {
        "files_listed": len(listed),
        "files_new": sum(1 for f, _, _ in todo if f.name not in seen),
        "files_changed": sum(1 for f, _, _ in todo if f.name in seen),
        "files_removed": len(removed),
        "files_deferred": len(deferred),
        "files_rejected": 0,
        "files_retry_later": 0,
    }
    if not todo and not removed and seen_settings in (None, settings) and cursor:
        return scan  # nothing landed, changed or went away: no reads, no writes
    records = rejection_records(lake, spec.name) if todo else {}

    transient = transient_errors()

    def read(item: tuple[LandedFile, str, str]) -> tuple[str, Any]:
        f, fmt, label = item
        csv = (spec.source if label == "source" else spec.scoring_source).csv
        try:
            if still_rejected(lake, records, f.name, f.signature, settings, label) is not None:
                return "rejected_before", None
            return "ok", file_keys(spec, lake, f, fmt, csv)
        except transient as exc:  # maybe passing (network, throttling, a file being written): next tick
            return "retry_later", f"{type(exc).__name__}: {exc}"[:500]
        except (KeyColumnsMissing, FileRejected) as exc:
            return "rejected", str(exc)[:500]
        except Exception as exc:  # the file's content is the user's: say why it cannot be read
            if _replaced_since_listed(lake, f):  # read half old, half new: not the file's fault
                return "retry_later", "the file changed while it was read"
            return "rejected", f"cannot read as {fmt}: {exc}"[:500]

    results = read_until(read, todo, READ_THREADS, deadline)
    if len(results) < len(todo):  # out of time: the files not started wait, as if not listed yet
        scan.counts["files_deferred"] += len(todo) - len(results)
        todo = todo[: len(results)]
        scan.counts["files_new"] = sum(1 for f, _, _ in todo if f.name not in seen)
        scan.counts["files_changed"] = len(todo) - scan.counts["files_new"]
    files = dict(seen)
    source_keys: set[str] = set()
    touched: set[str] = set()
    for (f, _, label), (status, value) in zip(todo, results, strict=True):
        old_keys = set((seen.get(f.name) or {}).get("keys") or [])
        if status == "retry_later":
            scan.retry_later.append({"file": f.name, "reason": value})
            scan.counts["files_retry_later"] += 1
            continue
        if status in ("rejected", "rejected_before"):
            if status == "rejected":
                entry = {"file": f.name, "source": label, "rows": 0}
                reject(lake, spec.name, entry, f.signature, settings, value)
                scan.rejected.append({"file": f.name, "reason": value})
            scan.counts["files_rejected"] += 1
            files[f.name] = {"size": f.size, "modified": f.modified, "keys": [], "rejected": True}
            touched |= old_keys  # its rows are gone from what ingest reads
            continue
        keys = value
        files[f.name] = {"size": f.size, "modified": f.modified, "keys": keys}
        if label == "source":
            source_keys.update(keys)
        touched |= set(keys) | old_keys
    for name in removed:
        touched |= set(files.pop(name).get("keys") or [])
    new_keys = sorted(source_keys - known_keys)
    partitions = known_keys | set(new_keys)
    scan.new_keys = new_keys
    scan.changed_keys = sorted(k for k in touched if k in partitions)
    scan.cursor = digest_of(files, settings)
    if scan.cursor != cursor:
        body = {"use_case": spec.name, "settings": settings, "format": SEEN_FORMAT, "files": files}
        lake.write_json(seen_path(lake, spec.name, scan.cursor), body)
        _forget_older_lists(lake, spec.name, keep={cursor, scan.cursor})
    return scan


def read_until(read: Callable[[Any], Any], items: Sequence[Any], threads: int, deadline: float | None) -> list[Any]:
    """``read(item)`` for the first items, in order: those started before ``deadline``, at most
    ``threads`` at a time. A slow item holds up only its own thread, never a batch; at least
    one item is read, so a tick whose listing alone used up its time still moves on."""
    results: dict[int, Any] = {}
    pending: dict[Future, int] = {}
    started = 0
    with ThreadPoolExecutor(max(1, min(threads, len(items)))) as pool:
        while True:
            while started < len(items) and len(pending) < threads:
                if started and deadline is not None and time.monotonic() >= deadline:
                    break
                pending[pool.submit(read, items[started])] = started
                started += 1
            if not pending:
                return [results[i] for i in range(started)]
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                results[pending.pop(future)] = future.result()


def _replaced_since_listed(lake: Lake, f: LandedFile) -> bool:
    """Whether the file is no longer the one the listing showed (gone, or another version)."""
    try:
        return lake.signature(lake.path(*f.name.split("/"))) != f.signature
    except Exception:  # gone or unreachable: nothing to reject it for
        return True


def _forget_older_lists(lake: Lake, use_case: str, keep: set[str | None]) -> None:
    """Lists older than the one the stored cursor names are never read again. The stored one
    stays until the next tick: Dagster stores the new cursor only after this tick returns."""
    for f in lake.listing(f"sensors/{use_case}/landing_*.json"):
        digest = f.name.rsplit("/", 1)[-1].removeprefix("landing_").removesuffix(".json")
        if digest not in keep:
            lake.delete(lake.path(*f.name.split("/")))
