"""The lake: a local folder by default, ``abfs://`` (ADLS via adlfs) in production.

Everything goes through fsspec/UPath, and every per-key path is built from an encoded key
(see :mod:`many_models_platform.core.keys`), so data can never escape the lake root.

On ADLS / Blob storage every write is one object upload, which the service commits
atomically (readers see the old object or the new one, never half of it); nothing relies on
a directory rename, which a flat blob namespace cannot do atomically. Credentials come from
:func:`adls_options_from_env` (connection string, account key, SAS token, or
``DefaultAzureCredential`` when none is given) and are never shown: see ``settings.secrets``.
"""

from __future__ import annotations

import codecs
import contextlib
import csv as csv_module
import dataclasses
import fnmatch
import functools
import glob
import gzip
import io
import json
import mmap
import os
import re
import shutil
import stat
import urllib.parse
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
import polars as pl
from upath import UPath

from ..core.ingest import FileRejected, match_columns
from ..core.keys import is_encoded_key, key_name
from ..core.spec import CsvSpec

AZURE_SCHEMES = ("abfs://", "abfss://", "az://")
# environment variable -> lake storage option (docs/configuration.md#adls)
AZURE_ENV_OPTIONS = (
    ("AZURE_STORAGE_ACCOUNT_NAME", "account_name"),
    ("AZURE_STORAGE_ACCOUNT_KEY", "account_key"),
    ("AZURE_STORAGE_SAS_TOKEN", "sas_token"),
    ("AZURE_STORAGE_CONNECTION_STRING", "connection_string"),
    ("MMP_LAKE_BLOB_ENDPOINT", "blob_endpoint"),
)
# options that name where the lake is, not a credential (everything else is masked in output)
PUBLIC_OPTIONS = frozenset({"account_name", "blob_endpoint", "anon"})


def is_azure_url(url: str) -> bool:
    return url.startswith(AZURE_SCHEMES)


def adls_options_from_env(env: Any = None) -> dict[str, str]:
    """The lake's Azure options from the environment, as given (credentials included)."""
    env = os.environ if env is None else env
    return {opt: env[var] for var, opt in AZURE_ENV_OPTIONS if env.get(var)}


def adlfs_options(options: dict[str, Any]) -> dict[str, Any]:
    """What adlfs receives for the lake's options.

    * ``connection_string``: used as it is (it names the endpoint and the credential).
    * ``blob_endpoint`` (an emulator, a private or sovereign-cloud endpoint, plain ``http``
      allowed) with ``account_key`` or ``sas_token``: folded into a connection string, the one
      form in which the Azure SDK takes an endpoint URL (adlfs's ``account_host`` is https only).
    * ``account_key`` or ``sas_token`` with ``account_name``: the public cloud endpoint.
    * none of these: ``DefaultAzureCredential`` (managed identity, workload identity, Azure CLI
      login, ``AZURE_CLIENT_ID``/``AZURE_TENANT_ID``/``AZURE_CLIENT_SECRET``), which production prefers.
    """
    opts = {k: v for k, v in options.items() if v not in (None, "")}
    if opts.get("connection_string"):
        return {"connection_string": opts["connection_string"]}
    endpoint = str(opts.pop("blob_endpoint", "") or "").rstrip("/")
    key, sas = opts.get("account_key"), str(opts.get("sas_token") or "").lstrip("?")
    if endpoint and (key or sas):
        if key:
            scheme = endpoint.split("://", 1)[0] if "://" in endpoint else "https"
            name = opts.get("account_name") or endpoint.rsplit("/", 1)[-1]
            cs = f"DefaultEndpointsProtocol={scheme};AccountName={name};AccountKey={key};BlobEndpoint={endpoint};"
        else:
            cs = f"BlobEndpoint={endpoint};SharedAccessSignature={sas}"
        return {"connection_string": cs}
    if endpoint:  # a token credential on a custom https endpoint
        opts["account_host"] = endpoint.split("://", 1)[-1]
    if not key and not sas and "credential" not in opts:
        opts.setdefault("anon", False)  # adlfs then builds a DefaultAzureCredential
    if sas:
        opts["sas_token"] = sas
    return opts


def credential_values(options: dict[str, Any]) -> list[str]:
    """Every secret the lake's options hold, including the key or SAS inside a connection string."""
    found = [str(v) for k, v in options.items() if k not in PUBLIC_OPTIONS and v]
    for part in str(options.get("connection_string") or "").split(";"):
        name, _, value = part.partition("=")
        if name.strip().lower() in ("accountkey", "sharedaccesssignature") and value:
            found.append(value.strip())
    return found


# A remote Parquet object this small is fetched whole (one request); a larger one as its footer
# and the chunks of the wanted columns (pyarrow asks for the footer in one 64 KiB read).
SMALL_OBJECT = 256 * 1024
# Python's csv module reads a CSV where polars cannot follow it (rows checked, stray quotes):
# a long value is a value, not an error (its default limit is 128 KiB a field, process-wide)
csv_module.field_size_limit(2**31 - 1)
HEADER_BYTES = 2**20  # a CSV's header and dialect are read from its first MiB
TITLE_LINES = 20  # a report's title, export date or filter lines above a CSV's header, at most


class RangedObject(io.RawIOBase):
    """A remote object of known size as a seekable file whose every read is one ranged request,
    so that pyarrow fetches a Parquet footer and the column chunks it needs, never the whole
    object (adlfs's own file object asks for the object's properties first and reads ahead in
    4 MiB blocks)."""

    def __init__(self, fs: Any, path: str, size: int) -> None:
        super().__init__()
        self._fs, self._path, self._size, self._pos = fs, path, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        end = min(self._pos + len(buffer), self._size)
        if end <= self._pos:
            return 0
        data = self._fs.cat_file(self._path, start=self._pos, end=end)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


def transient_errors() -> tuple[type[BaseException], ...]:
    """Errors of a read that may pass (network, throttling, a file being replaced): the file is
    tried again later, never rejected. The Azure SDK's own errors are not ``OSError``s."""
    try:
        from azure.core.exceptions import AzureError
    except ImportError:  # the adls extra is not installed
        return (OSError,)
    return (OSError, AzureError)


@dataclass(frozen=True)
class LandedFile:
    """A file in the lake as one listing shows it: what tells whether it changed."""

    name: str  # relative to the lake root
    size: int
    modified: str  # the ETag on blob storage, the modification time in ns on a local disk

    @property
    def signature(self) -> dict[str, Any]:
        return {"size": self.size, "modified": self.modified}


def _stamp(info: dict[str, Any]) -> str:
    """A remote object's change stamp: its ETag where the store has one."""
    return str(next((info[k] for k in ("etag", "ETag", "last_modified", "LastModified", "mtime") if info.get(k)), ""))


@functools.lru_cache(maxsize=64)
def _root(url: str, options: tuple[tuple[str, Any], ...], pid: int) -> UPath:
    """The lake root (path objects are immutable: one per lake, options and process)."""
    if is_azure_url(url):
        return UPath(url, **adlfs_options(dict(options)))
    return UPath(url, **dict(options))


@dataclass(frozen=True)
class CsvLayout:
    """How a CSV is read, from its first bytes: polars options (dialect), the header, header
    name -> configured name of the columns read, and the columns read as text."""

    options: dict[str, Any]
    header: list[str]
    names: dict[str, str]
    text: dict[str, Any]
    trailing_separator: bool = False  # rows end with a separator the header lacks (TRAILING_COLUMN)
    wide: tuple[str, ...] = ()  # a wide export's value columns, read as text and unpivoted
    # the fields a row may hold and whether the header was padded with empty names, for the
    # rows past the first MiB (``_every_row_fits``); None: the first MiB was the whole file
    row_check: tuple[int, bool] | None = None

    @property
    def lines_above_header(self) -> int:
        """Title lines skipped above the header (blank lines among them not counted)."""
        return int(self.options.get("skip_lines", 0))


@dataclass(frozen=True)
class LandingTable:
    """A landing file opened by :meth:`Lake.open_table`: ``data`` is lazy, and a bad row only
    shows when it is collected, so :meth:`error` turns polars' error into the user's reason."""

    data: pl.LazyFrame
    local: str  # the local file read
    layout: CsvLayout | None = None  # a CSV's (None: Parquet)

    def error(self, exc: Exception) -> Exception:
        if self.layout is None or not isinstance(exc, pl.exceptions.ComputeError):
            return exc
        return csv_error(exc, lambda: open(self.local, "rb"), self.layout)

    def batches(self, rows: int) -> Iterator[pl.DataFrame]:
        """The file's rows, ``rows`` at a time, in file order (streamed: one batch is held)."""
        return iter(self.data.collect_batches(chunk_size=rows))


# What Spark, Hadoop, Parquet writers and macOS leave beside the data: markers, checksums and
# summaries that no export holds rows in (a `*` glob matches them), never read as landing files.
_SIDE_FILES = re.compile(r"^(_SUCCESS|_metadata|_common_metadata|_(committed|started)_.*|\..*\.crc|\.DS_Store|\._.*)$")


def natural_order(name: str) -> tuple[tuple[str | int, ...], str]:
    """A sort key that orders numbers in names by value: ``export_9.csv`` before
    ``export_10.csv``, as exporters number their files (by plain name order, export_10 came
    first and its newer rows were replaced by export_9's older ones)."""
    parts = re.split(r"(\d+)", name)
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name


def is_side_file(path: str) -> bool:
    """A writer's marker, checksum or summary file beside the exports (``_SUCCESS``,
    ``.part-0.parquet.crc``, ``_metadata``, ``.DS_Store``), by its name."""
    return bool(_SIDE_FILES.match(path.rsplit("/", 1)[-1]))


@dataclass(frozen=True)
class Lake:
    """A picklable handle on the lake root, passed as-is to worker processes."""

    url: str
    storage_options: dict[str, Any] = field(default_factory=dict)

    @property
    def root(self) -> UPath:
        options = tuple(sorted(self.storage_options.items()))
        try:  # per process: a forked worker never uses its parent's filesystem client
            return _root(self.url, options, os.getpid())
        except TypeError:  # an option value that cannot be a cache key (a credential object)
            return _root.__wrapped__(self.url, options, os.getpid())

    def _located(self, path: UPath | str) -> tuple[Any, str]:
        """(filesystem, full path) of a path, or of a name relative to the root as ``listing``
        gives it (no path object per file: the landing sensor reads thousands)."""
        if isinstance(path, str):
            root = self.root
            return root.fs, f"{root.path.rstrip('/')}/{path}"
        return path.fs, path.path

    @property
    def is_local(self) -> bool:
        return "://" not in self.url or self.url.startswith("file://")

    def path(self, *parts: str) -> UPath:
        for part in parts:
            if not part or part in (".", "..") or "/" in part or "\\" in part:
                raise ValueError(f"unsafe lake path part: {part!r}")
        return self.root.joinpath(*parts)

    def key_path(self, area: str, use_case: str, key: str, suffix: str, subdir: str | None = None) -> UPath:
        """``<area>/<use case>[/<subdir>]/<key><suffix>`` (a long key by ``core.keys.key_name``);
        refuses anything but an encoded key."""
        if not is_encoded_key(key):
            raise ValueError(f"not an encoded partition key: {key!r}")
        parts = [area, use_case, *([subdir] if subdir else []), f"{key_name(key)}{suffix}"]
        return self.path(*parts)

    def glob(self, pattern: str) -> list[UPath]:
        if self.is_local:
            return sorted((p for p in self.root.glob(pattern) if p.is_file()), key=lambda p: natural_order(p.path))
        return [self.root.joinpath(f.name) for f in self.listing(pattern)]

    def listing(self, pattern: str) -> list[LandedFile]:
        """Files matching ``pattern`` (relative to the root) with size and change stamp, in
        :func:`natural_order`, without the side files writers leave beside exports
        (``is_side_file``). Remote:
        one listing request per 5,000 objects, never one request per file,
        and never from a cached listing (other processes land files)."""
        if self.is_local:
            base = self.root.path.rstrip("/")
            out = []
            for p in glob.glob(f"{glob.escape(base)}/{pattern}", recursive=True, include_hidden=True):
                try:
                    st = os.stat(p)
                except FileNotFoundError:  # removed between the listing and the stat
                    continue
                if stat.S_ISREG(st.st_mode) and not is_side_file(p):
                    out.append(LandedFile(p[len(base) + 1 :], st.st_size, str(st.st_mtime_ns)))
            return sorted(out, key=lambda f: natural_order(f.name))
        root = self.root
        fs = root.fs
        fs.invalidate_cache()
        base = root.path.rstrip("/")
        found = fs.glob(f"{base}/{pattern}", detail=True)
        out = [
            LandedFile(path[len(base) + 1 :], int(info.get("size") or 0), _stamp(info))
            for path, info in found.items()
            if info.get("type") == "file" and path.startswith(base + "/") and not is_side_file(path)
        ]
        return sorted(out, key=lambda f: natural_order(f.name))

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
            # one upload, committed atomically by the service; blob storage needs no folders
            path.fs.pipe_file(path.path, data)

    def write_parquet(self, path: UPath, frame: pl.DataFrame) -> None:
        buf = io.BytesIO()
        frame.write_parquet(buf, compression="zstd", statistics=False)
        self.write_bytes(path, buf.getvalue())

    def read_bytes(self, path: UPath | str) -> bytes:
        """A whole file (a path, or a name relative to the root); remote: one download
        (adlfs's file object first asks for the object's properties, then reads 4 MiB at a time)."""
        fs, full = self._located(path)
        if self.is_local:
            with open(full, "rb") as f:
                return f.read()
        return fs.cat_file(full)

    def read_parquet(self, path: UPath) -> pl.DataFrame:
        if self.is_local:
            return pl.read_parquet(path.path)
        return pl.read_parquet(io.BytesIO(self.read_bytes(path)))

    def write_json(self, path: UPath, obj: Any) -> None:
        self.write_bytes(path, json.dumps(obj, default=str, allow_nan=True).encode())

    def read_json(self, path: UPath) -> Any:
        return json.loads(self.read_bytes(path))

    def read_table(
        self,
        path: UPath | str,
        fmt: str,
        columns: list[str] | None = None,
        text_columns: Sequence[str] = (),
        size: int | None = None,
        *,
        csv: Any = None,
        required: Sequence[str] = (),
        number_columns: Sequence[str] = (),
        layout_seen: list[CsvLayout] | None = None,
        requote: bool = False,
        unpivot: Any = None,
    ) -> pl.DataFrame:
        """A landing file (a path, or a name relative to the root), with only those of ``columns``
        it holds, named as in ``columns``; a CSV's layout is appended to ``layout_seen``.

        Parquet reads only what it needs: on blob storage the footer and the chunks of
        ``columns``, in ranged requests (``size``, known from a listing, saves asking for it).
        A CSV is one request for the whole object (a CSV has no column index). CSV columns in
        ``text_columns`` are read as text without type inference, so ``0012`` stays ``0012``
        and the time column is parsed by ingest, the same way as in Parquet.
        A header name differing only by case or surrounding spaces (`` Store ``) matches the
        configured name (``store``) when no other header does. ``csv`` is the source's
        ``CsvSpec`` (separator, decimal comma, encoding); without a separator the header
        decides between ``,``, ``;``, tab and ``|``. ``number_columns`` are read as text too in
        a file not separated by ',' whose decimal mark is not declared, for ingest to tell it. Raises
        :class:`FileRejected` naming the file's header when a column of ``required`` is missing,
        :class:`QuoteInValue` when polars cannot follow the quoting: read again with ``requote``.
        ``unpivot`` (a source's ``UnpivotSpec``): the columns whose header matches its glob become
        rows, their header in its ``name`` column and their value in its ``value`` column.
        """
        folders = _folder_values(self._located(path)[1], columns)
        columns, required = _index_columns(columns, required, unpivot, folders)
        if fmt == "parquet":
            frame, wide = self._read_parquet_columns(path, columns, size, required, bool(folders), unpivot)
            return _unpivoted(_with_folders(frame, folders), wide, unpivot)
        data = self.read_bytes(path)
        if not data:
            raise FileRejected("the file is empty (0 bytes); a CSV export needs at least its header line")
        if data[:2] == b"\x1f\x8b":  # polars decodes the text itself, after gunzip
            with _gzip_rejects():
                data = gzip.decompress(data)
        csv = file_encoding(csv, data[:HEADER_BYTES], lambda: _is_utf8(io.BytesIO(data)))
        if csv is not None and _wide_encoding(csv.encoding):  # UTF-16 as UTF-8, whose rows can be checked
            data, csv = _as_utf8(data, csv.encoding), csv.model_copy(update={"encoding": "utf8"})
        data = data.removeprefix(codecs.BOM_UTF8)  # polars reads '\ufeff"region"' before a quoted header
        if _cr_line_ends(data[:HEADER_BYTES]):
            data = data.replace(b"\r", b"\n")
        layout = None
        try:
            layout = _csv_layout(data, csv, columns, text_columns, required, number_columns, unpivot)
            original, codec = data, _text_codec(layout)
            if layout.trailing_separator:
                data = _with_header_column(data, layout)
            if requote or _stray_quotes(data, layout):
                data, layout = _requoted_bytes(data, layout), _requoted_layout(layout)
            checked = _every_row_fits(
                data,
                layout,
                lambda: io.TextIOWrapper(io.BytesIO(original), encoding=codec[0], errors="replace", newline="\n"),
            )
            if folders:
                layout = dataclasses.replace(layout, names=_row_holder(layout.names, layout.header))
            frame = pl.read_csv(
                io.BytesIO(data),
                columns=list(layout.names) if columns is not None else None,
                schema_overrides=layout.text,
                infer_schema_length=10_000,
                truncate_ragged_lines=checked,  # only empty fields are past the header's end
                **layout.options,
            )
        except pl.exceptions.ComputeError as exc:
            raise csv_error(exc, lambda: io.BytesIO(data), layout) from None
        if layout_seen is not None:
            layout_seen.append(layout)
        return _unpivoted(_with_folders(frame.rename(layout.names), folders), layout.wide, unpivot)

    @contextlib.contextmanager
    def open_table(
        self,
        path: UPath | str,
        fmt: str,
        columns: list[str],
        text_columns: Sequence[str],
        scratch: str | os.PathLike,
        *,
        csv: Any = None,
        required: Sequence[str] = (),
        number_columns: Sequence[str] = (),
        requote: bool = False,
        unpivot: Any = None,
    ) -> Iterator[LandingTable]:
        """A landing file too large to hold, as a lazy frame over a local file, to read in
        batches: the same columns, names, dialect and types as :meth:`read_table` gives (the
        CSV's types are inferred from its first 10,000 rows either way). A remote file is
        downloaded, and a gzipped or non-UTF-8 CSV decoded, into ``scratch`` (removed after)."""
        fs, full = self._located(path)
        folders = _folder_values(full, columns)
        columns, required = _index_columns(columns, required, unpivot, folders)
        copies: list[str] = []
        try:
            local = full
            if not self.is_local:
                local = _scratch_file(scratch, copies)
                fs.get_file(full, local)
            if fmt == "parquet":
                header = list(pl.read_parquet_schema(local))
                names = match_columns(columns, header)
                _check_required(required, names, header)
                wide = _wide_names(header, unpivot, names)
                names = (_row_holder(names, header) if folders else names) | {h: h for h in wide}
                scan = pl.scan_parquet(local, glob=False).select(list(names)).rename(names)
                yield LandingTable(_unpivoted(_with_folders(scan, folders), wide, unpivot), local)
                return
            with open(local, "rb") as f:
                head = f.read(2)
            if not head:
                raise FileRejected("the file is empty (0 bytes); a CSV export needs at least its header line")
            with open(local, "rb") as f, _gzip_rejects():
                stream: IO[bytes] = gzip.GzipFile(fileobj=f) if head == b"\x1f\x8b" else f
                start = stream.read(HEADER_BYTES)
                stream.seek(0)
                csv = file_encoding(csv, start, lambda: _is_utf8(stream))
            encoding = csv.encoding if csv is not None else "utf8"
            cr = _cr_line_ends(start)
            bom = start.startswith(codecs.BOM_UTF8)  # which polars reads into a quoted first header name
            if head == b"\x1f\x8b" or encoding not in ("utf8", "utf8-lossy") or cr or bom:  # to plain UTF-8 on disk
                local = _decoded_copy(local, encoding, _scratch_file(scratch, copies), cr_line_ends=cr)
                if encoding != "utf8-lossy" and csv is not None:
                    csv = csv.model_copy(update={"encoding": "utf8"})  # the copy is UTF-8 now
            with open(local, "rb") as f:
                layout = _csv_layout(
                    f.read(HEADER_BYTES), csv, columns, text_columns, required, number_columns, unpivot
                )
            original, (codec, _) = local, _text_codec(layout)
            if layout.trailing_separator:  # a copy whose header names the column the rows end with
                local = _header_column_copy(local, layout, _scratch_file(scratch, copies))
            if requote or _stray_quoted_file(local, layout):
                local = _requoted_copy(local, layout, _scratch_file(scratch, copies))  # a copy polars can follow
                layout = _requoted_layout(layout)
            checked = _every_row_fits(
                local, layout, functools.partial(open, original, encoding=codec, errors="replace", newline="\n")
            )
            if folders:
                layout = dataclasses.replace(layout, names=_row_holder(layout.names, layout.header))
            scan = pl.scan_csv(
                local,
                schema_overrides=layout.text,
                infer_schema_length=10_000,
                glob=False,
                truncate_ragged_lines=checked,  # only empty fields are past the header's end
                **layout.options,
            )
            scan = _with_folders(scan.select(list(layout.names)).rename(layout.names), folders)
            yield LandingTable(_unpivoted(scan, layout.wide, unpivot), local, layout)
        finally:
            for copy in copies:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(copy)

    def _read_parquet_columns(
        self,
        path: UPath | str,
        columns: list[str] | None,
        size: int | None,
        required: Sequence[str] = (),
        folders: bool = False,
        unpivot: Any = None,
    ) -> tuple[pl.DataFrame, list[str]]:
        """The frame, and a wide export's value columns (``unpivot``) in it."""
        fs, full = self._located(path)
        wide: list[str] = []

        def wanted(header: Sequence[str]) -> dict[str, str] | None:
            """header name -> configured name of the columns to read (None: all of them)."""
            if columns is None:
                return None
            names = match_columns(columns, list(header))
            _check_required(required, names, list(header))
            wide.extend(_wide_names(header, unpivot, names))
            return (_row_holder(names, header) if folders else names) | {h: h for h in wide}

        def named(frame: pl.DataFrame, names: dict[str, str] | None) -> tuple[pl.DataFrame, list[str]]:
            return (frame if names is None else frame.rename(names)), wide

        if self.is_local:  # polars reads the footer and the wanted columns from the file itself
            names = wanted(list(pl.read_parquet_schema(full)))
            return named(pl.read_parquet(full, columns=None if names is None else list(names), glob=False), names)
        size = fs.size(full) if size is None else size
        if size <= SMALL_OBJECT:  # one request for all of it costs less than two ranged ones
            data = io.BytesIO(fs.cat_file(full))
            names = wanted(list(pl.read_parquet_schema(data)))
            return named(pl.read_parquet(data, columns=None if names is None else list(names)), names)
        import pyarrow.parquet as pq

        with pq.ParquetFile(RangedObject(fs, full, size), pre_buffer=True) as parquet:
            names = wanted(parquet.schema_arrow.names)
            table = parquet.read(columns=None if names is None else list(names))
        return named(pl.from_arrow(table), names)  # type: ignore[arg-type]

    def signature(self, path: UPath) -> dict[str, Any]:
        """Size and modification stamp (ETag where the store has one): tells whether a file changed."""
        if self.is_local:
            st = os.stat(path.path)
            return {"size": st.st_size, "modified": str(st.st_mtime_ns)}
        info = path.fs.info(path.path)
        return {"size": info.get("size"), "modified": _stamp(info)}

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


SEPARATORS = (",", ";", "\t", "|")


def _csv_options(
    data: bytes, csv: Any, columns: Sequence[str] | None, skip_lines: int = 0, unpivot: Any = None
) -> tuple[dict[str, Any], list[str] | None]:
    """polars ``read_csv`` options for a source's dialect, and the header when detecting the
    separator read it: an unset separator is the one under which the header holds the most
    wanted columns (a comma when none does better; a wide export's value columns, ``unpivot``,
    count as one). ``skip_lines``: lines above the header."""
    options: dict[str, Any] = {"skip_lines": skip_lines} if skip_lines else {}
    if csv is not None:
        if csv.encoding != "utf8":
            options["encoding"] = csv.encoding
        if csv.decimal_comma:
            options["decimal_comma"] = True
    separator = csv.separator if csv is not None else None
    chosen: list[str] | None = None
    if separator is None:
        separator, best = ",", -1
        if columns:
            wanted = set(columns)
            header_options = {k: v for k, v in options.items() if k != "decimal_comma"}  # polars refuses it with ','
            for candidate in SEPARATORS:
                try:
                    header = pl.read_csv(io.BytesIO(data), n_rows=0, separator=candidate, **header_options).columns
                except pl.exceptions.PolarsError:
                    continue
                found = len(wanted & set(match_columns(columns, header).values()))
                if unpivot is not None:  # a wide export's value columns count as one column found
                    found += any(fnmatch.fnmatchcase(h.strip(), unpivot.columns) for h in header)
                if found > best:
                    separator, best, chosen = candidate, found, header
                if found == len(wanted) + (unpivot is not None):
                    break
        if separator == "," and options.get("decimal_comma") and best > 0:
            raise FileRejected(
                "the file is separated by ',' and the source declares 'csv: {decimal_comma: true}', which needs "
                "another separator; remove 'decimal_comma': a comma-separated file's quoted decimal commas "
                "('\"12,5\"') are found from its numbers"
            )
        if separator == "," and options.get("decimal_comma"):
            separator, chosen = ";", None
    options["separator"] = separator
    return options, chosen


def _csv_layout(
    start: bytes,
    csv: Any,
    columns: Sequence[str] | None,
    text_columns: Sequence[str],
    required: Sequence[str],
    number_columns: Sequence[str] = (),
    unpivot: Any = None,
) -> CsvLayout:
    """A CSV's layout from its first bytes; raises FileRejected naming the header when a
    required column is missing (``columns`` None: every column). ``number_columns`` are read as
    text when the separator is not ',' (';', tab, '|': European exports among them) and the
    decimal mark is not declared: polars would read ``1.234`` as 1.234 where the file may mean
    1234, and ingest decides over the whole file. ``start`` may be the whole file: only its
    first MiB is looked at (``_every_row_fits`` checks the rest's rows when the file is read)."""
    start = start[:HEADER_BYTES]
    options, header = _csv_options(start, csv, columns, unpivot=unpivot)
    if header is None:
        header = pl.read_csv(io.BytesIO(start), n_rows=0, **options).columns
    names = match_columns(columns, header) if columns is not None else {c: c for c in header}
    if columns is not None and _lacks(required or columns, names):
        below = _header_below_title(start, csv, columns, required or columns)
        if below is not None:
            options, header, names = below
    _check_required(required, names, header)
    # polars names a repeated header "<name>_duplicated_<n>": a configured column named twice is ambiguous
    repeated = {m[1] for m in (re.fullmatch(r"(.*)_duplicated_\d+", h) for h in header) if m}
    twice = sorted(h for h in names if h in repeated)
    if twice:
        raise FileRejected(
            f"the header names column(s) {twice} more than once, so which one is meant is unknown; "
            "rename or drop the extra column in the export"
        )
    undecided = options["separator"] != "," and (csv is None or csv.decimal_comma is None)
    if undecided:
        text_columns = [*text_columns, *number_columns]
    text = {actual: pl.Utf8 for actual, name in names.items() if name in text_columns}
    values = _wide_names(header, unpivot, names)
    names = names | {h: h for h in values}
    if values and (undecided or unpivot.value not in number_columns):  # else numbers, as polars reads them
        text |= {h: pl.Utf8 for h in values}
    # the readers hand over UTF-8 or single-byte text (UTF-16 and UTF-32 are decoded first)
    rows = _first_rows(start, options)  # parsed once for both checks
    trailing = _trailing_separator(rows, header)
    # a value past the header's columns is a shift: the empty field a trailing separator leaves is none
    fields, padded = len(header), bool(rows) and not rows[0][1][-1].strip()
    _longer_row(rows, options["separator"], fields, padded)
    row_check = (fields, padded) if len(start) >= HEADER_BYTES else None  # the rest, when the file is read
    return CsvLayout(options, list(header), names, text, trailing, tuple(values), row_check)


def _lacks(required: Sequence[str], names: dict[str, str]) -> bool:
    return not set(required) <= set(names.values())


def _header_below_title(
    start: bytes, csv: Any, columns: Sequence[str], required: Sequence[str]
) -> tuple[dict[str, Any], list[str], dict[str, str]] | None:
    """A report export's header under title lines (``Sales by store``, ``Exported 2024-05-01``):
    the first of the next ``TITLE_LINES`` lines that holds every required column, read with
    those lines skipped (``skip_lines``: quotes in a title do not matter)."""
    for skip in range(1, min(TITLE_LINES, start.count(b"\n")) + 1):
        try:
            options, header = _csv_options(start, csv, columns, skip)
            if header is None:
                header = pl.read_csv(io.BytesIO(start), n_rows=0, **options).columns
        except pl.exceptions.PolarsError:
            continue
        names = match_columns(columns, header)
        if required and not _lacks(required, names):
            return options, header, names
    return None


class LateColumnType(FileRejected):
    """A CSV column's values stop fitting the type inferred from its first 10,000 rows (a
    decimal or an ``NA`` far down an integer column): the reader reads it again as text, and
    ``core.ingest.file_rules`` decides over the whole file whether it is numbers."""

    def __init__(self, message: str, column: str) -> None:
        super().__init__(message)
        self.column = column


class QuoteInValue(FileRejected):
    """polars cannot follow a CSV's quoting: usually a quote character inside a value that is
    not quoted (an inch mark, ``TV 55" screen``), which CSV readers such as Python's take as the
    character it is. The reader reads the file again through Python's csv module (``requote``),
    which rejects only a quoted value that never closes, naming its line."""


UNCLOSED_QUOTE = (
    "the file's quoting does not close: a quoted value that never closes, or a quote character (\") "
    "inside a quoted value that is not doubled, joins lines into one; quote such values in the export, "
    'doubling the quote inside them ("55"" screen"), or leave that column out of the export'
)

_LATE_TYPE = re.compile(r"could not parse `(.*?)` as dtype `(\w+)` at column '(.*?)'", re.S)


def csv_error(exc: Exception, text: Callable[[], IO[bytes]], layout: CsvLayout | None) -> Exception:
    """A polars CSV error as the reason a user can act on (:class:`FileRejected`), or as it is.
    ``text`` opens the file's bytes, read again only to say where it is not UTF-8; ``layout``
    is None when the error came while reading the header."""
    late = _LATE_TYPE.search(str(exc))
    if late and layout is not None and late[3] in layout.names:
        column = layout.names[late[3]]
        return LateColumnType(f"column {column!r} holds {late[1]!r} after values read as {late[2]}", column)
    message = str(exc).lower()
    if "utf-8" in message or "utf8" in message:
        with text() as stream:
            return FileRejected(_not_utf8(stream))
    if "malformed" in message:  # polars' "CSV malformed: expected 130 rows, actual 270 rows"
        return QuoteInValue(UNCLOSED_QUOTE)
    if "more fields than defined" in message and layout is not None:
        return FileRejected(
            f"a line has more fields than the header ({len(layout.header)} columns, separator "
            f"{layout.options['separator']!r}): an unquoted separator inside a value, or a wrong separator; "
            "quote such values in the export, or set 'csv: {separator: ...}'"
        )
    return exc


def file_encoding(csv: Any, start: bytes, is_utf8: Callable[[], bool]) -> Any:
    """The source's dialect with the encoding this file is in. A byte-order mark says it
    (Excel's 'Unicode Text' is UTF-16 with one); a declared encoding other than UTF-8 is for
    the files that are not UTF-8: one that is (a tool changed in March) is read as UTF-8, as
    cp1252 would read its 'ü' as 'Ã¼' and make a second key. ``start``: the file's first bytes."""
    declared = csv.encoding if csv is not None else "utf8"
    if start.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    elif start.startswith(codecs.BOM_UTF8) or declared in ("utf8", "utf8-lossy"):
        encoding = "utf8" if declared != "utf8-lossy" else declared
    elif b"\x00" not in start and is_utf8():  # UTF-16 text without a mark holds NUL bytes
        encoding = "utf8"
    else:
        encoding = declared
    if encoding == declared:
        return csv
    return (csv or CsvSpec()).model_copy(update={"encoding": encoding})


def _is_utf8(stream: IO[bytes]) -> bool:
    """Whether a (decompressed) byte stream is UTF-8 text, read a MiB at a time."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        while chunk := stream.read(HEADER_BYTES):
            decoder.decode(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _not_utf8(stream: IO[bytes]) -> str:
    """Where a byte stream (gzipped or not) stops being UTF-8, read a MiB at a time."""
    if stream.read(2) == b"\x1f\x8b":
        stream.seek(0)
        stream = gzip.GzipFile(fileobj=stream)
    else:
        stream.seek(0)
    decoder, line, where = codecs.getincrementaldecoder("utf-8")(), 1, ""
    while True:
        chunk = stream.read(HEADER_BYTES)
        try:  # exc.object is what the decoder held of the last chunk plus this one
            decoder.decode(chunk, final=not chunk)
        except UnicodeDecodeError as exc:
            line += exc.object[: exc.start].count(b"\n")
            where = f" (byte {exc.object[exc.start : exc.start + 1]!r} on line {line})"
            break
        if not chunk:
            break
        line += chunk.count(b"\n")
    return (
        f"the file is not UTF-8 text{where}; set 'csv: {{encoding: ...}}' in the source, e.g. 'cp1252' for an "
        "Excel export on Windows or 'latin-1'"
    )


def _scratch_file(scratch: str | os.PathLike, copies: list[str]) -> str:
    os.makedirs(scratch, exist_ok=True)
    copies.append(os.path.join(scratch, f"landing-{uuid.uuid4().hex}"))
    return copies[-1]


def _decoded_copy(source: str, encoding: str, target: str, cr_line_ends: bool = False) -> str:
    """A gzipped and/or non-UTF-8 CSV as plain UTF-8 text, streamed to ``target``; with
    ``cr_line_ends``, its lines ending in ``\\n``."""
    with open(source, "rb") as raw, open(target, "wb") as out:
        stream: IO[bytes] = raw
        if raw.read(2) == b"\x1f\x8b":
            stream = gzip.GzipFile(fileobj=raw)
        raw.seek(0)
        with _gzip_rejects():
            _copy_decoded(stream, encoding, out, cr_line_ends)
    return target


def _copy_decoded(stream: IO[bytes], encoding: str, out: IO[bytes], cr_line_ends: bool = False) -> None:
    """UTF-8 text without a byte-order mark (and with ``\n`` line ends when ``cr_line_ends``)."""
    if encoding in ("utf8", "utf8-lossy"):
        chunk = stream.read(HEADER_BYTES).removeprefix(codecs.BOM_UTF8)
        if not cr_line_ends:
            out.write(chunk)
            shutil.copyfileobj(stream, out, HEADER_BYTES)
        while cr_line_ends and chunk:
            out.write(chunk.replace(b"\r", b"\n"))
            chunk = stream.read(HEADER_BYTES)
    else:
        reader = codecs.getreader(encoding)(stream)
        while text := reader.read(HEADER_BYTES):
            out.write((text.replace("\r", "\n") if cr_line_ends else text).encode("utf-8"))


def _cr_line_ends(start: bytes) -> bool:
    """Whether a CSV's lines end in a carriage return alone, as Excel's 'CSV (Macintosh)' and
    old Mac tools write them: polars would read the whole file as one line."""
    return b"\r" in start and b"\n" not in start


TRAILING_COLUMN = "_after_trailing_separator"  # the empty column a separator at each row's end opens


# Characters Python takes for line ends (str.splitlines, csv's bare '\r') that polars reads as
# part of a value: a row ends at '\n' alone for polars, so for the checks that count its fields too
_NOT_LINE_ENDS = str.maketrans(dict.fromkeys("\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029", " "))


def _line_end(line: str) -> tuple[str, str]:
    """(text, line end) of a line split at '\n' only: its '\n' or '\r\n', if it has one."""
    body = line.removesuffix("\n")
    if body.endswith("\r"):
        body = body[:-1]
    return body, line[len(body) :]


def _as_polars_lines(lines: Iterable[str]) -> Iterator[str]:
    """Text lines split at '\n' only (``newline="\n"`` streams, ``split("\n")``), the other
    line-end characters in them as spaces (a '\r' before the '\n' stays), for Python's csv module
    to read the rows polars reads."""
    for line in lines:
        body, end = _line_end(line)
        yield body.translate(_NOT_LINE_ENDS) + end


def _first_rows(start: bytes, options: dict[str, Any]) -> list[tuple[int, list[str]]]:
    """The header and the rows of a CSV's first bytes, as (line of the table it ends on, fields)."""
    skip = options.get("skip_lines", 0)
    lines = start.decode("utf-8", errors="replace").split("\n")[skip:]
    if len(start) >= HEADER_BYTES:
        lines = lines[:-1]  # the last line may be cut by the first MiB
    reader = csv_module.reader(_as_polars_lines(lines), delimiter=options["separator"])
    return [(reader.line_num, r) for r in reader if r]


def _longer_row(rows: list[tuple[int, list[str]]], separator: str, fields: int, padded: bool) -> None:
    """FileRejected when a row in the file's first MiB has more than ``fields`` fields: an
    unquoted separator in a value ('1,501'). polars says so only when it reads every column; the
    columns a use case reads would take the shifted values (units = 1) without a word. Empty
    fields past the header's end are no value ('a,b' then '1,2,,'), unless the header ends in
    empty names itself ('a,b,,', ``padded``): then it was padded to the rows, and a longer row is shifted."""
    for number, row in rows[1:]:
        if _shifted(row, fields, padded):
            raise _longer_row_rejected(separator, fields, f"line {number} of the table", len(row), separator.join(row))


def _shifted(row: list[str], fields: int, padded: bool) -> bool:
    """Whether a row holds more than ``fields`` fields with a value past them (any, under a
    ``padded`` header): a value split by an unquoted separator, not empty trailing fields."""
    return len(row) > fields and (padded or any(f.strip() for f in row[fields:]))


def _longer_row_rejected(separator: str, fields: int, where: str, found: int, line: str) -> FileRejected:
    return FileRejected(
        f"a line has more fields than the header ({fields} columns, separator {separator!r}): "
        f"an unquoted separator inside a value, or a wrong separator ({where} has {found}: {line[:80]!r}); "
        "quote such values in the export, or set 'csv: {separator: ...}'"
    )


def _every_row_fits(source: bytes | str | os.PathLike, layout: CsvLayout, text: Callable[[], IO[str]]) -> bool:
    """``_longer_row`` over every row of a file larger than its first MiB: a shifted row far down
    a large export is as silent as one near its top. polars reads every column of ``source`` (as
    the reader will read it: trailing column named, stray quotes requoted) as text in one
    streaming pass, which fails on a row with more fields than the header (or finds a value in
    the column a trailing separator opens); only then is the file read again as ``text`` (its
    bytes as landed, decoded) by Python's csv module, which tells a shifted row (rejected, naming
    the line it starts on) from empty fields past the header's end (kept). Returns whether every
    row was checked, so the read may drop those empty fields."""
    if layout.row_check is None:  # the first MiB was the whole file
        return True
    options = {k: v for k, v in layout.options.items() if k not in ("encoding", "decimal_comma")}
    asks = [pl.all().null_count()]
    if layout.trailing_separator:  # the column a trailing separator opens is empty, or a row is shifted
        written = pl.col(TRAILING_COLUMN).str.strip_chars().str.len_bytes() > 0
        asks.append(written.any().alias(f"{TRAILING_COLUMN} written"))
    try:  # the field separators and quotes are ASCII: lossy decoding counts fields alike
        scan = pl.scan_csv(source, infer_schema=False, encoding="utf8-lossy", glob=False, **options)
        got = scan.select(asks).collect(engine="streaming")
        if not (layout.trailing_separator and got[f"{TRAILING_COLUMN} written"].item()):
            return True
    except pl.exceptions.ComputeError as exc:
        if "more fields" not in str(exc):  # the read itself says what else is wrong
            return False
    fields, padded = layout.row_check
    separator, skip = layout.options["separator"], layout.lines_above_header
    with text() as stream:
        for _ in range(skip):
            stream.readline()
        reader = csv_module.reader(_as_polars_lines(stream), delimiter=separator)
        next((row for row in reader if row), None)  # the header: the first line that is not blank
        ended = reader.line_num  # the line the previous row ended on
        for row in reader:
            if _shifted(row, fields, padded):
                where = f"line {skip + ended + 1} of the file"
                raise _longer_row_rejected(separator, fields, where, len(row), separator.join(row))
            ended = reader.line_num
    return True


def _trailing_separator(rows: list[tuple[int, list[str]]], header: Sequence[str]) -> bool:
    """Whether the data rows end with a separator the header line lacks (``a,b`` then ``1,2,``),
    as some exporters write them: every row one empty field longer than the header, in the
    first 101 lines (``_first_rows``). polars rejects such a file as having more fields than its header."""
    first = [row for line, row in rows if line <= 101]
    if not first or not first[0][-1].strip():
        # a header ending in empty names ('a,b,c,,,') pads the rows itself: a row one field
        # longer holds an unquoted separator ('1,501'), which a header column would hide
        return False
    n = len(header)
    return len(first) > 1 and all(len(r) == n + 1 and not r[-1].strip() for r in first[1:])


def _header_line_end(data: bytes, skip: int) -> int:
    """The byte offset where the header line ends, before its line end: the first line that is
    not blank after ``skip`` lines, as polars' ``skip_lines`` finds it (a blank line under a
    title is no header)."""
    start = 0
    for _ in range(skip):
        start = data.find(b"\n", start) + 1
        if start <= 0:
            return len(data)
    while True:
        end = data.find(b"\n", start)
        if end < 0:
            return len(data)
        if data[start:end].strip():
            return end - 1 if end > 0 and data[end - 1 : end] == b"\r" else end
        start = end + 1


def _with_header_column(data: bytes, layout: CsvLayout) -> bytes:
    """The CSV's bytes with a name for the column its rows' trailing separator opens."""
    at = _header_line_end(data, layout.options.get("skip_lines", 0))
    return data[:at] + f"{layout.options['separator']}{TRAILING_COLUMN}".encode() + data[at:]


def _header_column_copy(source: str, layout: CsvLayout, target: str) -> str:
    """A UTF-8 CSV copied with a name for its rows' trailing column (``_with_header_column``)."""
    with open(source, "rb") as f, open(target, "wb") as out:
        out.write(_with_header_column(f.read(HEADER_BYTES), layout))
        shutil.copyfileobj(f, out, HEADER_BYTES)
    return target


def _as_utf8(data: bytes, encoding: str) -> bytes:
    """UTF-16 or UTF-32 text (Excel's 'Unicode Text') as UTF-8 bytes."""
    try:
        return data.decode(encoding).encode("utf-8")
    except (UnicodeDecodeError, LookupError) as exc:
        raise FileRejected(f"the file is not {encoding} text as its byte-order mark says: {exc}") from None


def _wide_encoding(encoding: str) -> bool:
    """UTF-16 or UTF-32: characters of several bytes, which byte-level looks at lines and
    quotes would misread."""
    return str(encoding).lower().replace("_", "-").startswith(("utf-16", "utf16", "utf-32", "utf32"))


_QUOTE_SCAN = 16 * 2**20  # bytes looked at at once for stray quotes


def _stray_quotes(data: bytes | mmap.mmap, layout: CsvLayout) -> bool:
    """Whether a CSV holds a quote that is no CSV quoting (an inch mark, ``TV 55" screen``,
    ``12"``): one inside a value, neither opening nor closing one, or an odd number of quotes on
    a line (also a quoted value over several lines, which the csv module reads as polars does).
    polars joins the lines between two such quotes into one value, and a read of some of the
    columns loses those rows without an error. The readers hand over UTF-8 or single-byte text
    (UTF-16 and UTF-32 are decoded first), whose quotes and line ends are single bytes."""
    if data.find(b'"') < 0:  # memchr: most exports hold no quote at all
        return False
    array = np.frombuffer(data, dtype=np.uint8)
    edges = np.frombuffer(b'\n\r"' + layout.options["separator"].encode(), dtype=np.uint8)
    quotes_before = 0  # quotes before the chunk: even at every line end in CSV quoting
    for start in range(0, array.size, _QUOTE_SCAN):
        chunk = array[start : start + _QUOTE_SCAN]
        at = np.flatnonzero(chunk == ord('"'))
        inside = at[(at + start > 0) & (at + start < array.size - 1)] + start
        if (~np.isin(array[inside - 1], edges) & ~np.isin(array[inside + 1], edges)).any():
            return True
        if (at.size or quotes_before % 2) and (
            (np.searchsorted(at, np.flatnonzero(chunk == ord("\n"))) + quotes_before) % 2
        ).any():
            return True
        quotes_before += at.size
    return False


def _stray_quoted_file(path: str, layout: CsvLayout) -> bool:
    """:func:`_stray_quotes` of a file on disk, mapped rather than read."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        return _stray_quotes(mapped, layout)


def _requote(source: IO[str], out: IO[str], layout: CsvLayout) -> None:
    """A CSV's text written again by Python's csv module, which reads a quote inside a value that
    is not quoted (``TV 55" screen``) as the character it is, quoting each value that needs it,
    so polars reads what Python read; raises FileRejected at a quoted value that never closes.
    Title lines above the header are copied as they are."""
    skip = layout.options.get("skip_lines", 0)
    for _ in range(skip):
        out.write(source.readline())
    reader = csv_module.reader(_bare_cr_kept(source), delimiter=layout.options["separator"], strict=True)
    writer = csv_module.writer(out, delimiter=layout.options["separator"], lineterminator="\n")
    done = 0  # lines read up to the last whole row
    try:
        for row in reader:
            writer.writerow([value.replace(_BARE_CR, "\r") for value in row])
            done = reader.line_num
    except csv_module.Error as exc:
        raise FileRejected(f"{UNCLOSED_QUOTE} (the row from line {done + 1 + skip} on: {exc})") from None


_BARE_CR = "\uffff"  # a CR inside a value while Python reads the row: a noncharacter, not for exchanged text


def _bare_cr_kept(lines: Iterable[str]) -> Iterator[str]:
    """Lines split at '\n' only (a ``newline="\n"`` stream), a '\r' inside them held as
    ``_BARE_CR``: Python's csv module ends a row at a bare '\r', polars does not, so a value
    holding one (``abc\rdef``) stays one value, as polars reads it, when the file is requoted."""
    for line in lines:
        body, end = _line_end(line)
        yield body.replace("\r", _BARE_CR) + end


def _requoted_layout(layout: CsvLayout) -> CsvLayout:
    """The layout of a requoted copy: UTF-8 text."""
    return dataclasses.replace(layout, options={k: v for k, v in layout.options.items() if k != "encoding"})


def _text_codec(layout: CsvLayout) -> tuple[str, str]:
    """(Python codec, errors) of the text polars would decode under ``layout``."""
    encoding = layout.options.get("encoding", "utf8")
    return ("utf-8", "replace") if encoding == "utf8-lossy" else ("utf-8" if encoding == "utf8" else encoding, "strict")


def _requoted_bytes(data: bytes, layout: CsvLayout) -> bytes:
    codec, errors = _text_codec(layout)
    out = io.StringIO()
    try:
        _requote(io.StringIO(data.decode(codec, errors), newline="\n"), out, layout)
    except UnicodeDecodeError:
        raise FileRejected(_not_utf8(io.BytesIO(data))) from None
    return out.getvalue().encode()


def _requoted_copy(source: str, layout: CsvLayout, target: str) -> str:
    codec, errors = _text_codec(layout)
    try:
        with (
            open(source, encoding=codec, errors=errors, newline="\n") as f,
            open(target, "w", encoding="utf-8", newline="") as out,
        ):
            _requote(f, out, layout)
    except UnicodeDecodeError:
        with open(source, "rb") as raw:
            raise FileRejected(_not_utf8(raw)) from None
    return target


@contextlib.contextmanager
def _gzip_rejects() -> Iterator[None]:
    """A gzip file that does not decompress, on a read during which it did not change, is
    truncated or corrupt: rejected (its rejection record is dropped once it changes), never an
    I/O error tried again on every run."""
    try:
        yield
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise FileRejected(f"the gzip file is truncated or corrupt ({exc}); it is read again once it changes") from None


HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"


def _folder_values(full: str, columns: Sequence[str] | None) -> dict[str, str | None]:
    """Configured columns written into the file's folder names instead of the file, as Spark and
    pandas' ``partition_cols`` write them (``sales/store=7/part-0.parquet``): column -> value.
    Matched as header names are (case, surrounding spaces); the file's own column wins."""
    if not columns:
        return {}
    hive: dict[str, str | None] = {}
    for part in full.split("/")[:-1]:
        name, eq, value = part.partition("=")
        if eq and name and value:
            value = urllib.parse.unquote(value)
            hive[urllib.parse.unquote(name)] = None if value == HIVE_NULL else value
    if not hive:
        return {}
    return {configured: hive[h] for h, configured in match_columns(columns, list(hive)).items()}


ROW_HOLDER = "__rows"  # a column read only for its rows, when every wanted column is in the folder names


def _row_holder(names: dict[str, str], header: Sequence[str]) -> dict[str, str]:
    """``names`` with one more file column read under ``ROW_HOLDER``: a frame of no columns has no
    rows, and the folder-named columns need the file's rows to be repeated on."""
    spare = next((h for h in header if h not in names), None)
    return {**names, spare: ROW_HOLDER} if spare is not None and not names else names


def _index_columns(
    columns: list[str] | None, required: Sequence[str], unpivot: Any, folders: dict[str, str | None]
) -> tuple[list[str] | None, list[str]]:
    """(the columns to read by name, those of them a file must hold): without a wide export's
    ``name`` and ``value`` columns, which its value columns make, and folder-named columns."""
    made = (unpivot.name, unpivot.value) if unpivot is not None else ()
    if columns is not None:
        columns = [c for c in columns if c not in made]
    return columns, [c for c in required if c not in folders and c not in made]


def _wide_names(header: Sequence[str], unpivot: Any, names: dict[str, str]) -> list[str]:
    """A wide export's value columns: the headers matching ``unpivot.columns`` (a glob, spaces
    around a header ignored) that are not read by name; FileRejected when there are none."""
    if unpivot is None:
        return []
    wide = [h for h in header if h not in names and fnmatch.fnmatchcase(h.strip(), unpivot.columns)]
    if not wide:
        shown = list(header[:20]) + (["..."] if len(header) > 20 else [])
        raise FileRejected(
            f"no column's name matches unpivot columns {unpivot.columns!r}; the file's columns are {shown}"
        )
    return wide


def _unpivoted(frame: Any, wide: Sequence[str], unpivot: Any) -> Any:
    """A frame (eager or lazy) with its ``wide`` columns as rows: each value one row, its header
    in ``unpivot.name`` and itself in ``unpivot.value`` (Float64 when every such column holds
    numbers, else text), beside the other columns' values of its row."""
    if unpivot is None:
        return frame
    schema = frame.collect_schema()
    common = pl.Float64 if all(schema[c].is_numeric() for c in wide) else pl.Utf8
    index = [c for c in schema.names() if c not in set(wide)]
    frame = frame.with_columns(pl.col(*wide).cast(common))
    return frame.unpivot(on=list(wide), index=index, variable_name=unpivot.name, value_name=unpivot.value)


def _with_folders(frame: Any, folders: dict[str, str | None]) -> Any:
    """A frame (eager or lazy) with the folder-named columns it lacks, as text."""
    have = set(frame.collect_schema().names())
    added = [pl.lit(v, pl.Utf8).alias(c) for c, v in folders.items() if c not in have]
    frame = frame.with_columns(added) if added else frame
    return frame.drop(ROW_HOLDER) if ROW_HOLDER in have else frame


def _check_required(required: Sequence[str], names: dict[str, str], header: Sequence[str]) -> None:
    missing = [c for c in required if c not in names.values()]
    if missing and any(re.search(r"[\x00-\x08\x0e-\x1f]", h) for h in header):
        raise FileRejected(
            "the file is not CSV text (its first line holds binary bytes): keep other files (.DS_Store, "
            "Excel lock files ~$...) out of the source's path, or narrow 'source.path' to the exports"
        )
    if missing:
        shown = list(header[:20]) + (["..."] if len(header) > 20 else [])
        empty = [i for i, h in enumerate(header) if not h.strip()]
        hint = f"; the header of column {empty[0] + 1} is empty: name it 'Unnamed: {empty[0]}'" if empty else ""
        for c in missing:  # 'Revenue' and 'REVENUE': which one is meant is unknown
            alike = [h for h in header if h.strip().casefold() == c.strip().casefold()]
            if len(alike) > 1:
                hint += f"; {alike} all match {c!r} up to case or spaces: name one exactly in the use case"
        raise FileRejected(f"missing required column(s) {missing}; the file's columns are {shown}{hint}")
