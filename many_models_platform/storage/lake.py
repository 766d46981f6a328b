"""The lake: a local folder by default, ``abfs://`` (ADLS via adlfs) in production.

Everything goes through fsspec/UPath, and every per-key path is built from an encoded key
(see :mod:`many_models_platform.core.keys`), so data can never escape the lake root.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from dataclasses import dataclass, field
from typing import Any

import polars as pl
from upath import UPath

from ..core.keys import is_encoded_key


@dataclass(frozen=True)
class Lake:
    """A picklable handle on the lake root, passed as-is to worker processes."""

    url: str
    storage_options: dict[str, Any] = field(default_factory=dict)

    @property
    def root(self) -> UPath:
        return UPath(self.url, **self.storage_options)

    @property
    def is_local(self) -> bool:
        return "://" not in self.url or self.url.startswith("file://")

    def path(self, *parts: str) -> UPath:
        for part in parts:
            if not part or part in (".", "..") or "/" in part or "\\" in part:
                raise ValueError(f"unsafe lake path part: {part!r}")
        return self.root.joinpath(*parts)

    def key_path(self, area: str, use_case: str, key: str, suffix: str, subdir: str | None = None) -> UPath:
        """``<area>/<use case>[/<subdir>]/<key><suffix>``; refuses anything but an encoded key."""
        if not is_encoded_key(key):
            raise ValueError(f"not an encoded partition key: {key!r}")
        parts = [area, use_case, *([subdir] if subdir else []), f"{key}{suffix}"]
        return self.path(*parts)

    def glob(self, pattern: str) -> list[UPath]:
        return sorted(p for p in self.root.glob(pattern) if p.is_file())

    # --- reading and writing -------------------------------------------------------------
    def write_bytes(self, path: UPath, data: bytes) -> None:
        if self.is_local:
            # write-then-rename, so a crash never leaves half a file behind
            os.makedirs(path.parent.path, exist_ok=True)
            tmp = f"{path.path}.{uuid.uuid4().hex}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path.path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    def write_parquet(self, path: UPath, frame: pl.DataFrame) -> None:
        buf = io.BytesIO()
        frame.write_parquet(buf, compression="zstd", statistics=False)
        self.write_bytes(path, buf.getvalue())

    def read_parquet(self, path: UPath) -> pl.DataFrame:
        if self.is_local:
            return pl.read_parquet(path.path)
        with path.open("rb") as f:
            return pl.read_parquet(f)

    def write_json(self, path: UPath, obj: Any) -> None:
        self.write_bytes(path, json.dumps(obj, default=str, allow_nan=True).encode())

    def read_json(self, path: UPath) -> Any:
        return json.loads(path.read_bytes())

    def read_table(self, path: UPath, fmt: str, columns: list[str] | None = None) -> pl.DataFrame:
        """A landing file; CSV dates and times are parsed, so time columns keep their type."""
        data = path.read_bytes()
        if fmt == "parquet":
            return pl.read_parquet(io.BytesIO(data), columns=columns)
        return pl.read_csv(io.BytesIO(data), try_parse_dates=True, infer_schema_length=10_000, columns=columns)

    def move(self, src: UPath, dst: UPath) -> None:
        if self.is_local:
            os.makedirs(dst.parent.path, exist_ok=True)
            os.replace(src.path, dst.path)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            src.fs.mv(src.path, dst.path)

    def exists(self, path: UPath) -> bool:
        return path.exists()
