"""The service's Prometheus metrics, in a registry of their own (one per app, so tests can run
several apps in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.hits = Counter("mmp_serve_cache_hits", "Requests answered by a model already in memory", registry=r)
        self.misses = Counter("mmp_serve_cache_misses", "Requests whose model was not in memory", registry=r)
        self.negative_hits = Counter(
            "mmp_serve_negative_cache_hits", "Requests for a key known to have no production model", registry=r
        )
        self.loads = Counter("mmp_serve_model_loads", "Model loads started, by outcome", ["outcome"], registry=r)
        self.load_seconds = Histogram(
            "mmp_serve_model_load_seconds",
            "Time to read, verify and load one model",
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.evictions = Counter(
            "mmp_serve_cache_evictions", "Models dropped from memory, by reason", ["reason"], registry=r
        )
        self.bytes = Gauge("mmp_serve_cache_bytes", "Measured bytes of the models held", registry=r)
        self.models = Gauge("mmp_serve_cache_models", "Models held in memory", registry=r)
        self.budget = Gauge("mmp_serve_cache_budget_bytes", "The cache's byte budget", registry=r)
        self.busy = Counter("mmp_serve_load_rejections", "Cold requests refused (503) at the load bound", registry=r)
        self.refreshes = Counter("mmp_serve_refreshes", "Checks of the production alias of cached keys", registry=r)
        self.requests = Histogram(
            "mmp_serve_request_seconds",
            "Request latency by route and status",
            ["route", "status"],
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
