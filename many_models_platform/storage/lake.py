"""The lake: a local folder by default, ``abfs://`` (ADLS via adlfs) in production.

Everything goes through fsspec/UPath, and every per-key path is built from an encoded key
(see :mod:`many_models_platform.core.keys`), so data can never escape the lake root.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import uuid
from collections.abc import Sequence
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

    def read_table(
        self, path: UPath, fmt: str, columns: list[str] | None = None, text_columns: Sequence[str] = ()
    ) -> pl.DataFrame:
        """A landing file, with only those of ``columns`` it holds (the caller names what is missing).

        CSV columns in ``text_columns`` are read as text without type inference, so ``0012``
        stays ``0012`` and the time column is parsed by ingest, the same way as in Parquet.
        """
        data = path.read_bytes()
        if fmt == "parquet":
            if columns is not None:
                present = set(pl.read_parquet_schema(io.BytesIO(data)))
                columns = [c for c in columns if c in present]
            return pl.read_parquet(io.BytesIO(data), columns=columns)
        if columns is not None:
            present = set(pl.read_csv(io.BytesIO(data), n_rows=0).columns)
            columns = [c for c in columns if c in present]
        text = {c: pl.Utf8 for c in text_columns if columns is None or c in columns}
        return pl.read_csv(io.BytesIO(data), columns=columns, schema_overrides=text, infer_schema_length=10_000)

    def signature(self, path: UPath) -> dict[str, Any]:
        """Size and modification stamp (ETag where the store has one): tells whether a file changed."""
        if self.is_local:
            st = os.stat(path.path)
            return {"size": st.st_size, "modified": str(st.st_mtime_ns)}
        info = path.fs.info(path.path)
        stamp = next((info[k] for k in ("etag", "ETag", "last_modified", "LastModified", "mtime") if info.get(k)), "")
        return {"size": info.get("size"), "modified": str(stamp)}

    def relative(self, path: UPath) -> str:
        """A path as the user wrote it in a glob: relative to the lake root."""
        root = self.root.path.rstrip("/")
        return path.path[len(root) + 1 :] if path.path.startswith(root + "/") else path.path

    def delete(self, path: UPath) -> None:
        """Remove a file the platform wrote (never a landing file); missing is fine."""
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    def exists(self, path: UPath) -> bool:
        return path.exists()
