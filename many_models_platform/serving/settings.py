"""The scoring service's settings: where the production registry is (PlatformSettings) and how
the service behaves (cache budget, limits, intervals, API keys), all from the environment."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from ..storage.settings import PlatformSettings


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


class ServeSettings(BaseModel):
    """Read from ``MMP_SERVE_*`` variables (docs/serving.md); tests build them directly."""

    model_config = ConfigDict(frozen=True)

    platform: PlatformSettings
    # the credentials clients present (API key or bearer token); at least one unless anonymous
    api_keys: tuple[str, ...] = ()
    allow_anonymous: bool = False
    cache_bytes: int = Field(default=512 * 1024 * 1024, gt=0)  # per worker process
    max_parallel_loads: int = Field(default=4, gt=0)  # loads of different keys at once; past it 503
    negative_ttl_s: float = Field(default=5.0, ge=0)  # unknown keys are answered from memory this long
    refresh_interval_s: float = Field(default=10.0, gt=0)  # how soon a promotion or rollback is seen
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    max_rows: int = Field(default=10_000, gt=0)
    max_columns: int = Field(default=256, gt=0)
    retry_after_s: int = Field(default=1, ge=0)
    warmup_keys: tuple[str, ...] = ()  # "<use case>.<key>" names loaded at start
    warmup_file: str | None = None  # the most requested names, written at shutdown, loaded at start
    warmup_top: int = Field(default=100, ge=0)
    workspace: str = "default"  # MLflow 3 registry workspace

    @classmethod
    def from_env(cls, **overrides) -> ServeSettings:
        env = os.environ.get
        values = {
            "platform": PlatformSettings.from_env(),
            "api_keys": read_api_keys(),
            "allow_anonymous": env("MMP_SERVE_ALLOW_ANONYMOUS", "").lower() in ("1", "true", "yes", "on"),
            "cache_bytes": int(_env("MMP_SERVE_CACHE_BYTES", str(512 * 1024 * 1024))),
            "max_parallel_loads": int(_env("MMP_SERVE_MAX_PARALLEL_LOADS", "4")),
            "negative_ttl_s": float(_env("MMP_SERVE_NEGATIVE_TTL", "5")),
            "refresh_interval_s": float(_env("MMP_SERVE_REFRESH_INTERVAL", "10")),
            "max_body_bytes": int(_env("MMP_SERVE_MAX_BODY_BYTES", str(1024 * 1024))),
            "max_rows": int(_env("MMP_SERVE_MAX_ROWS", "10000")),
            "max_columns": int(_env("MMP_SERVE_MAX_COLUMNS", "256")),
            "warmup_keys": tuple(k.strip() for k in _env("MMP_SERVE_WARMUP_KEYS", "").split(",") if k.strip()),
            "warmup_file": env("MMP_SERVE_WARMUP_FILE") or None,
            "warmup_top": int(_env("MMP_SERVE_WARMUP_TOP", "100")),
            "workspace": _env("MMP_SERVE_WORKSPACE", "default"),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def read_api_keys() -> tuple[str, ...]:
    """Keys from ``MMP_SERVE_API_KEYS`` (comma-separated) and from the file
    ``MMP_SERVE_API_KEYS_FILE`` (one per line, e.g. a mounted Kubernetes secret)."""
    keys = [k.strip() for k in os.environ.get("MMP_SERVE_API_KEYS", "").split(",")]
    path = os.environ.get("MMP_SERVE_API_KEYS_FILE")
    if path:
        keys += [line.strip() for line in Path(path).read_text().splitlines()]
    return tuple(dict.fromkeys(k for k in keys if k))
