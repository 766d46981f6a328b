"""Run one function over many keys, in parallel, with per-key failure isolation.

Work goes to a process pool in chunks of keys (one task per key costs more in IPC than a
small fit). Each worker runs one BLAS/OpenMP thread, since the parallelism is across keys.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any, Literal

from .features import KeyDataError

Status = Literal["ok", "failed", "skipped"]

THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "POLARS_MAX_THREADS")
# Set in each worker before it imports LightGBM: an idle OpenMP thread sleeps instead of spinning,
# which on a few contended cores made two-thread fits 8-10x slower (DESIGN.md, speed facts).
WORKER_ENV = {**dict.fromkeys(THREAD_ENV, "1"), "OMP_WAIT_POLICY": "PASSIVE"}


@dataclass
class KeyOutcome:
    """One key's result at one stage: ``info`` is small and JSON-able (it becomes metadata)."""

    key: str
    status: Status
    reason: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class SkipKey(Exception):
    """Raised by a stage function when an upstream stage failed for the key."""


def _run_one(fn: Callable[..., dict[str, Any] | None], key: str, args: tuple) -> KeyOutcome:
    try:
        return KeyOutcome(key, "ok", info=fn(key, *args) or {})
    except SkipKey as exc:
        return KeyOutcome(key, "skipped", reason=str(exc))
    except Exception as exc:
        # The reason is what a data engineer reads in the UI: a data check's own message, or
        # for anything else the exception type, message and innermost frame.
        if isinstance(exc, KeyDataError):
            reason = str(exc)
        else:
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            reason = f"{type(exc).__name__}: {exc} (at {os.path.basename(frame.filename)}:{frame.lineno})"
        return KeyOutcome(key, "failed", reason=reason[:2000])


def _run_chunk(fn: Callable, keys: Sequence[str], args: tuple) -> list[KeyOutcome]:
    return [_run_one(fn, key, args) for key in keys]


@dataclass(frozen=True)
class ByKey:
    """An argument of :func:`map_keys` that maps keys to their own data (say each key's
    production model): each chunk is sent only its keys' entries, and ``fn`` receives that dict.
    Sent whole, a map of every key went to the workers with every chunk: at 10,000 keys,
    megabytes pickled some 170 times per stage."""

    by_key: Mapping[str, Any]

    def part(self, keys: Iterable[str]) -> dict[str, Any]:
        return {k: self.by_key[k] for k in keys if k in self.by_key}


def _chunk_args(args: tuple, keys: Sequence[str] | None) -> tuple:
    """``args`` with each :class:`ByKey` replaced by its entries for ``keys`` (all of them: None)."""
    if not any(isinstance(a, ByKey) for a in args):
        return args
    return tuple((a.by_key if keys is None else a.part(keys)) if isinstance(a, ByKey) else a for a in args)


def default_workers() -> int:
    """The cores this process may really use: CPU affinity *and* the cgroup CPU quota (a
    Kubernetes pod's ``limits.cpu``), which ``os.cpu_count`` ignores, so a range pod with a
    2-CPU limit on a 16-core node starts 2 workers, not 16. loky (shipped with joblib, which
    runs our pool) reads both."""
    from joblib.externals.loky import cpu_count

    return max(1, cpu_count())


def _executor(workers: int):
    """loky's reusable pool (shipped with joblib): workers start once per process and are
    reused by every stage, they never re-import the caller's ``__main__`` (so neither Dagster
    nor MLflow), and each one runs a single BLAS/OpenMP/polars thread (``WORKER_ENV``)."""
    from joblib.externals.loky import get_reusable_executor

    return get_reusable_executor(max_workers=workers, timeout=600, env=WORKER_ENV)


# What the stage functions import in a worker: a cold worker spends seconds of CPU on these
# (about 4.6 s each on the benchmark machine) before its first key.
WORKER_MODULES = (
    "many_models_platform.stages",
    "many_models_platform.core.modeling",
    "many_models_platform.core.baselines",
    "sklearn.linear_model",
    "skops.io",
)


def _import_modules(modules: tuple[str, ...]) -> int:
    for name in modules:
        with contextlib.suppress(Exception):  # a module that fails here fails, with its reason, in its key
            importlib.import_module(name)
    return os.getpid()


def warm_pool(workers: int, modules: Iterable[str] = WORKER_MODULES) -> list[Future]:
    """Start the pool's workers now and have each import ``modules`` in the background, so
    worker start-up overlaps the main process's own work (reading the landing zone) instead of
    delaying the first stage that uses the pool. Returns the futures (nothing needs to wait on
    them). Call it with the ``workers`` that ``map_keys`` will use: a pool of another size is
    started again."""
    if workers <= 1:
        return []
    pool = _executor(workers)
    return [pool.submit(_import_modules, tuple(modules)) for _ in range(workers)]


def pool_workers(keys: int, workers: int | None = None, min_keys_per_worker: int = 8) -> int:
    """The workers ``map_keys`` uses for ``keys`` keys: no more than one per
    ``min_keys_per_worker`` keys (1 means in this process, no pool)."""
    return min(workers or default_workers(), max(1, keys // min_keys_per_worker))


def guided_chunks(keys: Sequence[str], workers: int, largest: int = 64) -> list[Sequence[str]]:
    """Split ``keys`` into chunks that shrink as the work left shrinks (guided scheduling):
    a quarter of each worker's share of what is left, at most ``largest``. Large chunks at the
    start keep the per-chunk costs (IPC, one registration batch each) small; single keys at the
    end keep one worker from finishing a large chunk alone while the others idle."""
    chunks, start = [], 0
    while start < len(keys):
        size = max(1, min(largest, math.ceil((len(keys) - start) / (workers * 4))))
        chunks.append(keys[start : start + size])
        start += size
    return chunks


def map_keys(
    fn: Callable[..., dict[str, Any] | None],
    keys: Iterable[str],
    args: tuple = (),
    *,
    workers: int | None = None,
    min_keys_per_worker: int = 8,
    progress: Callable[[int], None] | None = None,
    on_chunk: Callable[[list[KeyOutcome]], None] | None = None,
) -> list[KeyOutcome]:
    """Apply ``fn(key, *args)`` to every key; results come back in the order of ``keys``.

    ``fn`` and ``args`` must be picklable (module-level function, plain data); a per-key map
    goes in ``args`` as :class:`ByKey`, so each chunk carries only its keys. Small batches
    run in this process, where a pool would cost more than it saves. ``on_chunk`` is called in
    this process with each chunk's outcomes as soon as the chunk is done (every outcome exactly
    once, in completion order), while the pool works on the next chunks: work of this process
    per key (say registering models) then overlaps the workers' instead of following it.
    """
    keys = list(keys)
    workers = pool_workers(len(keys), workers, min_keys_per_worker)
    if workers <= 1:
        args = _chunk_args(args, None)
        outcomes = []
        for key in keys:
            outcomes.append(_run_one(fn, key, args))
            if progress:
                progress(1)
        if on_chunk and outcomes:
            on_chunk(list(outcomes))
        return outcomes
    chunks = guided_chunks(keys, workers)
    results: dict[int, list[KeyOutcome]] = {}
    crashed: list[int] = []
    pool = _executor(workers)
    pending = {pool.submit(_run_chunk, fn, c, _chunk_args(args, c)): i for i, c in enumerate(chunks)}
    while pending:
        done, _ = wait(pending, return_when=FIRST_COMPLETED)
        for fut in done:
            i = pending.pop(fut)
            try:
                results[i] = fut.result()
            except Exception:
                crashed.append(i)  # a dead worker breaks the whole pool: retried below
                continue
            if progress:
                progress(len(chunks[i]))
            if on_chunk:
                on_chunk(list(results[i]))
    # A worker died (native crash, OOM kill) and took its pool down. Retry the lost chunks one
    # key at a time, so only the key that kills its worker fails.
    for i in sorted(crashed):
        results[i] = []
        for key in chunks[i]:
            try:
                results[i] += _executor(workers).submit(_run_chunk, fn, [key], _chunk_args(args, [key])).result()
            except Exception as exc:
                results[i].append(KeyOutcome(key, "failed", f"worker crashed on this key: {exc!r}"[:2000]))
        if progress:
            progress(len(chunks[i]))
        if on_chunk:
            on_chunk(list(results[i]))
    return [o for i in range(len(chunks)) for o in results[i]]
