"""map_keys: per-key failure isolation, order and progress, in-process and through the process pool."""

from __future__ import annotations

import os
import sys
import time

from many_models_platform.core.engine import (
    ByKey,
    KeyOutcome,
    SkipKey,
    default_workers,
    guided_chunks,
    map_keys,
    pool_workers,
    warm_pool,
)
from many_models_platform.core.features import KeyDataError


# Module-level, so the pool can pickle them.
def work(key: str, fail: frozenset, skip: frozenset, data_error: frozenset) -> dict:
    if key in fail:
        raise ValueError(f"boom for {key}")
    if key in skip:
        raise SkipKey("upstream failed")
    if key in data_error:
        raise KeyDataError("too few rows: 3 < min_rows 20")
    return {"double": key * 2, "pid": os.getpid()}


def crash_on(key: str, victim: str) -> dict:
    if key == victim:
        os._exit(3)  # a native crash or an OOM kill: the worker process disappears
    time.sleep(0.02)
    return {"pid": os.getpid()}


def thread_settings(key: str) -> dict:
    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "POLARS_MAX_THREADS", "OMP_WAIT_POLICY")
    return {name: os.environ.get(name) for name in names} | {"pid": os.getpid()}


def imported(key: str, module: str) -> dict:
    return {"imported": module in sys.modules, "pid": os.getpid()}


def own_entry(key: str, label: str, per_key: dict) -> dict:
    return {"mine": per_key.get(key), "seen": sorted(per_key), "label": label}


def long_failure(key: str) -> None:
    raise RuntimeError("x" * 10_000)


def _check(outcomes: list[KeyOutcome], keys, fail, skip, data_error) -> None:
    assert [o.key for o in outcomes] == keys
    for o in outcomes:
        if o.key in fail:
            assert o.status == "failed"
            assert o.reason.startswith(f"ValueError: boom for {o.key} (at test_core_engine.py:")
            assert not o.ok
        elif o.key in skip:
            assert (o.status, o.reason) == ("skipped", "upstream failed")
        elif o.key in data_error:
            # our own data checks read cleanly, without a code location
            assert (o.status, o.reason) == ("failed", "too few rows: 3 < min_rows 20")
        else:
            assert o.ok and o.reason == ""
            assert o.info["double"] == o.key * 2


def test_in_process_isolates_failures_and_keeps_order():
    keys = ["k3", "k1", "k2", "k0", "k4"]
    fail, skip, data_error = frozenset({"k1"}), frozenset({"k2"}), frozenset({"k4"})
    calls: list[int] = []
    outcomes = map_keys(work, keys, (fail, skip, data_error), workers=4, progress=calls.append)
    _check(outcomes, keys, fail, skip, data_error)
    assert sum(calls) == len(keys)
    # a handful of keys is not worth a pool: the work ran here
    assert {o.info["pid"] for o in outcomes if o.ok} == {os.getpid()}


def test_process_pool_isolates_failures_and_keeps_order():
    keys = [f"key-{i:02d}" for i in range(64)][::-1]  # not sorted, so order is really checked
    fail = frozenset(keys[i] for i in (0, 9, 33, 63))
    skip = frozenset(keys[i] for i in (5, 40))
    data_error = frozenset(keys[i] for i in (17,))
    calls: list[int] = []
    outcomes = map_keys(work, keys, (fail, skip, data_error), workers=2, progress=calls.append)
    _check(outcomes, keys, fail, skip, data_error)
    assert sum(calls) == len(keys)
    assert len(calls) > 1  # progress arrives chunk by chunk
    pids = {o.info["pid"] for o in outcomes if o.ok}
    assert os.getpid() not in pids
    assert 1 <= len(pids) <= 2


def test_pool_workers_run_one_passive_thread():
    """The parallelism is across keys: each worker gets one BLAS/OpenMP/polars thread, and an idle
    OpenMP thread sleeps rather than spins (set before the worker imports LightGBM)."""
    outcomes = map_keys(thread_settings, [f"k{i}" for i in range(16)], workers=2)
    assert all(o.ok for o in outcomes)
    assert os.getpid() not in {o.info.pop("pid") for o in outcomes}
    assert {tuple(sorted(o.info.items())) for o in outcomes} == {
        (
            ("OMP_NUM_THREADS", "1"),
            ("OMP_WAIT_POLICY", "PASSIVE"),
            ("OPENBLAS_NUM_THREADS", "1"),
            ("POLARS_MAX_THREADS", "1"),
        )
    }


def test_on_chunk_sees_every_outcome_once_before_map_keys_returns():
    """Per-chunk results reach this process while the pool works on (model registers its
    candidates that way), in-process batches included, failures included."""
    for keys in ([f"k{i:02d}" for i in range(64)], ["a", "b", "c"]):
        fail = frozenset(keys[1:2])
        seen: list[list[KeyOutcome]] = []
        outcomes = map_keys(work, keys, (fail, frozenset(), frozenset()), workers=2, on_chunk=seen.append)
        assert sorted(o.key for chunk in seen for o in chunk) == sorted(keys)
        # the very objects map_keys returns, so a status set in the callback sticks
        assert {id(o) for chunk in seen for o in chunk} == {id(o) for o in outcomes}
        assert [o.key for chunk in seen for o in chunk if not o.ok] == list(fail)
    assert len(seen) == 1  # the in-process batch: one chunk


def test_a_by_key_argument_reaches_each_chunk_with_only_its_keys():
    """A per-key map (production models, candidates) is sliced per chunk: each key finds its
    entry (None when the map has none), and no chunk is sent the other chunks' entries."""
    keys = [f"k{i:02d}" for i in range(64)]
    per_key = {k: {"version": i} for i, k in enumerate(keys) if i % 7}  # every 7th key has none
    for workers in (2, 1):
        outcomes = map_keys(own_entry, keys, ("x", ByKey(per_key)), workers=workers)
        assert [o.info["mine"] for o in outcomes] == [per_key.get(k) for k in keys]
        assert {o.info["label"] for o in outcomes} == {"x"}
        seen = [set(o.info["seen"]) for o in outcomes]
        if workers == 2:  # a chunk of guided_chunks sees its own keys' entries, never all of them
            assert all(s <= set(per_key) and len(s) < len(per_key) for s in seen)
            chunks = guided_chunks(keys, 2)
            for chunk in chunks:
                for k in chunk:
                    assert seen[keys.index(k)] == {c for c in chunk if c in per_key}
        else:
            assert all(s == set(per_key) for s in seen)


def test_chunks_shrink_as_the_work_runs_out_and_cover_every_key_once():
    keys = [f"k{i}" for i in range(1000)]
    chunks = guided_chunks(keys, workers=2)
    assert [k for c in chunks for k in c] == keys  # every key once, in order
    sizes = [len(c) for c in chunks]
    assert sizes[0] == 64 and sizes[-1] == 1  # large first, single keys at the end
    assert sizes == sorted(sizes, reverse=True)
    assert len(chunks) < 1000 / 8  # far fewer tasks than keys
    assert guided_chunks([], 2) == [] and guided_chunks(["a"], 4) == [["a"]]


def test_warm_pool_imports_modules_in_the_workers_map_keys_then_uses():
    """The workers started by warm_pool are the ones map_keys uses, with the modules already
    imported (a module the test process has not imported, so it cannot come from a fork)."""
    module = "tabnanny"
    assert module not in sys.modules
    keys = [f"k{i}" for i in range(16)]
    workers = pool_workers(len(keys), 2)
    assert workers == 2 and pool_workers(7, 2) == 1 and pool_workers(10_000) == default_workers()
    futures = warm_pool(workers, (module, "no_such_module_here"))  # a missing one is no error
    warmed = {f.result(timeout=120) for f in futures}
    assert os.getpid() not in warmed and warm_pool(1) == []
    outcomes = map_keys(imported, keys, (module,), workers=workers)
    assert all(o.ok for o in outcomes)
    # one task per worker is submitted, but an idle worker may take two: every worker that ran
    # one has the module, and the pool map_keys used is the warmed one
    assert warmed & {o.info["pid"] for o in outcomes}
    assert all(o.info["imported"] for o in outcomes if o.info["pid"] in warmed)


def test_empty_key_list():
    calls: list[int] = []
    assert map_keys(work, [], (frozenset(), frozenset(), frozenset()), progress=calls.append) == []
    assert sum(calls) == 0


def test_reasons_are_bounded():
    [outcome] = map_keys(long_failure, ["k"])
    assert outcome.status == "failed"
    assert len(outcome.reason) <= 2000
    assert outcome.reason.startswith("RuntimeError: xxx")


def test_keyoutcome_ok_only_for_status_ok():
    assert KeyOutcome("k", "ok").ok
    assert not KeyOutcome("k", "failed", "why").ok
    assert not KeyOutcome("k", "skipped", "why").ok


def test_a_crashed_worker_fails_only_its_own_chunk():
    keys = [f"k{i:02d}" for i in range(64)]
    outcomes = map_keys(crash_on, keys, ("k03",), workers=2)
    assert [o.key for o in outcomes] == keys
    crashed = [o for o in outcomes if not o.ok]
    # the crash takes the pool down with every chunk in flight; those chunks are retried key by
    # key, so only the key that kills its worker fails
    assert [o.key for o in crashed] == ["k03"]
    assert "worker crashed" in crashed[0].reason


def test_default_workers_follow_the_cgroup_cpu_quota(monkeypatch):
    """In a pod limited to 1 CPU the pool starts 1 worker, whatever the node's core count."""
    import joblib.externals.loky.backend.context as loky_context

    unlimited = default_workers()
    assert unlimited >= 1
    monkeypatch.setattr(loky_context, "_cpu_count_cgroup", lambda os_cpu_count: 1)
    assert default_workers() == 1
