"""Per-key production models in memory: a byte-bounded LRU with single-flight loads.

* Each loaded model is measured (its pickled size, plus the history a forecast keeps) and the
  cache holds at most ``cache_bytes``: the least recently used models go first.
* A burst of requests for one cold key waits on one load (single-flight); loads of different
  keys run in parallel threads up to ``max_parallel_loads``, past which a cold request gets
  :class:`Busy` (503 with ``Retry-After``) rather than queueing without bound.
* A key without a production model is remembered for ``negative_ttl_s``.
* Every ``refresh_interval_s``, one query reads the production alias of all cached keys; a key
  whose version changed (promotion, rollback) is dropped and reloads on its next request.
* Only the production registry is read and only artifacts under the production artifact root
  are loaded, after their SHA-256 matches the registry's ``artifact_sha256`` tag.

The store runs on the service's event loop: its dictionaries are touched by that loop only,
loads run in a thread pool.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pickle
import tempfile
import time
from collections import Counter, OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from ..core.keys import decode_key, is_encoded_key
from ..core.modeling import categorical_inputs
from ..core.spec import UseCaseSpec
from ..core.statistical import StatisticalForecaster
from ..storage.lake import Lake
from ..storage.redaction import redact
from ..storage.registry import (
    HASH_TAG,
    MODEL_FILE,
    ModelIntegrityError,
    load_model_from_source,
    local_path,
    trusted_types,
)
from .fastpath import compile_predictor
from .metrics import ServeMetrics
from .registry import ProductionReader
from .settings import ServeSettings

log = logging.getLogger(__name__)


class NotFound(Exception):
    """No production model for this key (or no such key): 404, negatively cached."""


class Busy(Exception):
    """Too many different models loading at once: 503 with Retry-After."""


class LoadFailed(Exception):
    """The production model exists but cannot be served (integrity, unreadable artifact)."""


@dataclass
class Served:
    """One key's production model, ready to predict."""

    use_case: str
    key: str
    version: int
    model: Any
    features: list[str]
    nbytes: int
    history: pl.DataFrame | None = None  # forecasts: the key's observed rows (for lags)
    fast: Any = None  # fastpath.compile_predictor's function for float-matrix models, else None


def split_model_name(name: str) -> tuple[str, str]:
    """``<use case>.<key>`` -> (use case, key): use-case names hold no dot."""
    use_case, dot, key = name.partition(".")
    if not dot:
        raise ValueError("model_name must be '<use case>.<key>'")
    return use_case, key


class ModelStore:
    def __init__(self, settings: ServeSettings, specs: dict[str, UseCaseSpec], metrics: ServeMetrics):
        self.settings = settings
        self.specs = specs
        self.metrics = metrics
        self.reader = ProductionReader(settings.platform.production_registry_uri, settings.workspace)
        self.lake = Lake(settings.platform.lake_url, settings.platform.lake_storage_options)
        self.trusted = {name: trusted_types(s.estimator_types, s.trusted_modules) for name, s in specs.items()}
        self._root = settings.platform.production_artifact_root.rstrip("/")
        self._cache: OrderedDict[str, Served] = OrderedDict()
        self._bytes = 0
        self._negative: dict[str, tuple[float, str]] = {}
        self._loading: dict[str, asyncio.Future] = {}
        self._pool = ThreadPoolExecutor(settings.max_parallel_loads, thread_name_prefix="mmp-serve-load")
        self.requested: Counter[str] = Counter()
        metrics.budget.set(settings.cache_bytes)

    # --- validation ------------------------------------------------------------------------
    def check_key(self, use_case: str, key: str) -> UseCaseSpec:
        """The use case's spec, if ``key`` is a well-formed key of it; NotFound / ValueError otherwise."""
        spec = self.specs.get(use_case)
        if spec is None:
            raise NotFound("unknown use case")
        if not is_encoded_key(key) or len(decode_key(key)) != len(spec.keys):
            raise ValueError(
                f"the key is not an encoded key of use case {use_case!r}: {len(spec.keys)} value(s) "
                f"({', '.join(spec.keys)}) percent-encoded and joined with '.', as the warehouse's `key` "
                "column and `mmp models --json` show them (sent in the URL as they are: 'Los%20Angeles')"
            )
        return spec

    # --- the cache -------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._cache)

    def cached(self, use_case: str, key: str) -> Served | None:
        """The key's model if it is in memory (a hit, counted), else None: no validation or
        registry access needed, as only validated keys are ever cached."""
        name = f"{use_case}.{key}"
        served = self._cache.get(name)
        # the same name can be spelled with the dot elsewhere ("a.b" + "c" and "a" + "b.c")
        if served is None or served.use_case != use_case or served.key != key:
            return None
        self._cache.move_to_end(name)
        self.requested[name] += 1
        self.metrics.hits.inc()
        return served

    async def get(self, use_case: str, key: str) -> Served:
        served = self.cached(use_case, key)
        if served is not None:
            return served
        name = f"{use_case}.{key}"
        self.requested[name] += 1
        negative = self._negative.get(name)
        if negative is not None:
            if negative[0] > time.monotonic():
                self.metrics.negative_hits.inc()
                raise NotFound(negative[1])
            del self._negative[name]
        self.metrics.misses.inc()
        pending = self._loading.get(name)
        if pending is not None:
            return await asyncio.shield(pending)
        if len(self._loading) >= self.settings.max_parallel_loads:
            self.metrics.busy.inc()
            raise Busy(f"{len(self._loading)} models are loading; retry shortly")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._loading[name] = future
        try:
            started = time.perf_counter()
            try:
                served = await loop.run_in_executor(self._pool, self._load, use_case, key, name)
            except NotFound as exc:
                self.metrics.loads.labels("not_found").inc()
                self._negative[name] = (time.monotonic() + self.settings.negative_ttl_s, str(exc))
                raise
            except Exception as exc:
                self.metrics.loads.labels("failed").inc()
                log.error("cannot load %s: %s", name, redact(exc, self.settings.platform.secrets()))
                # remembered as briefly as unknown keys, so a flood does not reload it each time
                message = "the production model of this key cannot be loaded (see the service's log)"
                self._negative[name] = (time.monotonic() + self.settings.negative_ttl_s, message)
                raise LoadFailed(message) from None
            self.metrics.loads.labels("ok").inc()
            self.metrics.load_seconds.observe(time.perf_counter() - started)
            self._insert(name, served)
            future.set_result(served)
            return served
        except BaseException as exc:
            future.set_exception(exc if isinstance(exc, NotFound | LoadFailed) else LoadFailed(str(exc)))
            future.exception()  # retrieved: no "never retrieved" warning when nobody waited
            raise
        finally:
            del self._loading[name]

    def _insert(self, name: str, served: Served) -> None:
        budget = self.settings.cache_bytes
        if served.nbytes > budget:  # served once, never held
            self.metrics.evictions.labels("oversize").inc()
            return
        old = self._cache.pop(name, None)
        if old is not None:
            self._bytes -= old.nbytes
        self._cache[name] = served
        self._bytes += served.nbytes
        while self._bytes > budget:
            _, dropped = self._cache.popitem(last=False)
            self._bytes -= dropped.nbytes
            self.metrics.evictions.labels("budget").inc()
        self._gauges()

    def _gauges(self) -> None:
        self.metrics.bytes.set(self._bytes)
        self.metrics.models.set(len(self._cache))

    def drop(self, name: str, reason: str) -> None:
        served = self._cache.pop(name, None)
        if served is not None:
            self._bytes -= served.nbytes
            self.metrics.evictions.labels(reason).inc()
            self._gauges()

    # --- loading (in a worker thread) --------------------------------------------------------
    def _load(self, use_case: str, key: str, name: str) -> Served:
        spec = self.specs[use_case]
        prod = self.reader.production(name)
        if prod is None:
            raise NotFound("no production model for this key")
        if prod.tags.get("use_case", use_case) != use_case or prod.tags.get("key", key) != key:
            raise ModelIntegrityError(f"{name}: the registry's tags name another model")
        self._check_source(prod.source)
        model = self._load_model(prod.source, prod.tags.get(HASH_TAG), self.trusted[use_case])
        features = prod.tags["features"].split(",") if prod.tags.get("features") else []
        history = None
        if spec.task == "forecast":
            path = self.lake.key_path("bronze", use_case, key, ".parquet")
            if path.exists():
                history = self.lake.read_parquet(path)
        nbytes = len(pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL))
        if history is not None:
            nbytes += int(history.estimated_size())
        fast = None
        if categorical_inputs(model) is None and not isinstance(model, StatisticalForecaster):
            fast = compile_predictor(model, len(features))
        return Served(use_case, key, prod.version, model, features, nbytes, history, fast)

    def _load_model(self, source: str, sha256: str | None, trusted) -> Any:
        """``load_model_from_source`` (hash, then trusted types, then skops); a remote artifact
        (``abfs://``) is first fetched with fsspec, so MLflow is never imported here."""
        if local_path(source) is not None:
            return load_model_from_source(source, sha256, trusted)
        from upath import UPath

        with tempfile.TemporaryDirectory(prefix="mmp-serve-") as tmp:
            remote = UPath(source, **self.settings.platform.lake_storage_options) / MODEL_FILE
            Path(tmp, MODEL_FILE).write_bytes(remote.read_bytes())
            return load_model_from_source(tmp, sha256, trusted)

    def _check_source(self, source: str) -> None:
        """Only artifacts under the production artifact root are loaded: a version whose source
        points elsewhere (the candidate store, another folder) is refused."""
        path, root = local_path(source), local_path(self._root)
        if path is not None and root is not None:
            inside = os.path.realpath(path).startswith(os.path.realpath(root).rstrip("/") + "/")
        else:
            inside = source.startswith(self._root + "/")
        if not inside:
            raise ModelIntegrityError("the production version's source is outside the production artifact root")

    def preload(self) -> None:
        """Import what loading and predicting need (skops, the estimators' packages) once at
        start, so the first cold request does not pay seconds of imports."""
        import importlib

        import skops.io  # noqa: F401

        for spec in self.specs.values():
            for module in {t.rpartition(".")[0] for t in spec.estimator_types}:
                try:
                    importlib.import_module(module)
                except Exception as exc:
                    log.warning("cannot import %s: %s", module, type(exc).__name__)

    # --- invalidation and warm-up ------------------------------------------------------------
    async def refresh(self) -> int:
        """One query for the production alias of every cached key and every key remembered as
        unknown; drops cached keys whose version moved and forgets unknown keys that now have
        one, so a promotion or a rollback is seen within the interval."""
        names = list(self._cache)
        unknown = list(self._negative)
        self.metrics.refreshes.inc()
        if not names and not unknown:
            return 0
        loop = asyncio.get_running_loop()
        current = await loop.run_in_executor(None, self.reader.versions, {*names, *unknown})
        for name in unknown:
            if name in current:
                self._negative.pop(name, None)
        moved = [n for n in names if n in self._cache and current.get(n) != self._cache[n].version]
        for name in moved:
            self.drop(name, "invalidated")
        return len(moved)

    async def refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.refresh_interval_s)
            try:
                await self.refresh()
            except Exception as exc:  # the registry is down: keep serving what is loaded
                log.warning("production alias check failed: %s", redact(exc, self.settings.platform.secrets()))

    def warmup_names(self) -> list[str]:
        names = list(self.settings.warmup_keys)
        path = self.settings.warmup_file
        if path and os.path.exists(path):
            try:
                names += [str(n) for n in json.loads(Path(path).read_text())][: self.settings.warmup_top]
            except (OSError, ValueError) as exc:
                log.warning("ignoring the warm-up file: %s", exc)
        return list(dict.fromkeys(names))

    async def warm_up(self) -> int:
        """Load the configured and the most requested keys (best effort; returns how many loaded)."""
        loaded = 0
        for name in self.warmup_names():
            try:
                use_case, key = split_model_name(name)
                self.check_key(use_case, key)
                await self.get(use_case, key)
                loaded += 1
            except Busy:
                await asyncio.sleep(0.01)
            except Exception as exc:
                log.warning("warm-up of %s skipped: %s", name, type(exc).__name__)
        self.requested.clear()  # warm-up is not demand
        return loaded

    def save_most_requested(self) -> None:
        path = self.settings.warmup_file
        if path and self.requested:
            top = [n for n, _ in self.requested.most_common(self.settings.warmup_top)]
            tmp = f"{path}.tmp"
            with open(tmp, "w") as f:
                json.dump(top, f)
            os.replace(tmp, path)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.reader.dispose()
