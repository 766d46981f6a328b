"""Request bodies in MLflow's pyfunc input formats, turned into feature rows.

``dataframe_split`` ({"columns": [...], "data": [[...]]}), ``dataframe_records`` ([{col: v}]),
``instances`` and ``inputs`` (a list of rows, a list of records or a dict of columns) are all
read into named columns, then into the polars frame ``core.modeling.model_input`` takes: the
batch ``predictions`` stage's own conversion, so a key scores the same in batch and here.
Rows given without names are in the model's feature order (as ``mlflow.pyfunc`` reads them).
Every error is an :class:`InputError` whose message names the field, never the value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from ..core.ingest import whole_number_text

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")


class InputError(ValueError):
    """A body that does not hold rows the model can take (422)."""


def columns_of(payload: Any, features: Sequence[str], max_rows: int, max_columns: int) -> dict[str, list]:
    """column name -> values, from a body in one of the pyfunc formats."""
    if not isinstance(payload, dict):
        raise InputError(f"the body must be a JSON object with one of the fields {', '.join(FORMATS)}")
    given = [f for f in FORMATS if f in payload]
    if len(given) != 1:
        raise InputError(f"the body must hold exactly one of the fields {', '.join(FORMATS)}")
    fmt = given[0]
    data = payload[fmt]
    if fmt == "dataframe_split":
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            raise InputError("'dataframe_split' must be an object with a 'data' list of rows (and 'columns')")
        names = data.get("columns")
        if names is not None and (not isinstance(names, list) or not all(isinstance(c, str) for c in names)):
            raise InputError("'dataframe_split.columns' must be a list of column names")
        return _rows(data["data"], names, features, max_rows, max_columns, fmt)
    if fmt == "dataframe_records":
        if not isinstance(data, list):
            raise InputError("'dataframe_records' must be a list of records")
        return _records(data, max_rows, max_columns, fmt)
    # instances / inputs: rows, records or a dict of columns
    if isinstance(data, dict):
        return _column_dict(data, max_rows, max_columns, fmt)
    if not isinstance(data, list):
        raise InputError(f"'{fmt}' must be a list of rows, a list of records or an object of columns")
    if data and all(isinstance(r, dict) for r in data):
        return _records(data, max_rows, max_columns, fmt)
    if data and not any(isinstance(r, list | dict) for r in data):
        data = [[v] for v in data]  # a list of scalars: one single-feature row each
    return _rows(data, None, features, max_rows, max_columns, fmt)


def _limits(n_rows: int, n_cols: int, max_rows: int, max_columns: int, fmt: str) -> None:
    if n_rows == 0:
        raise InputError(f"'{fmt}' holds no rows")
    if n_rows > max_rows:
        raise InputError(f"'{fmt}' holds {n_rows} rows; at most {max_rows} per request")
    if n_cols > max_columns:
        raise InputError(f"'{fmt}' holds {n_cols} columns; at most {max_columns}")


def _rows(rows: Any, names, features: Sequence[str], max_rows: int, max_columns: int, fmt: str) -> dict[str, list]:
    if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
        raise InputError(f"'{fmt}' rows must be lists of values")
    width = len(names) if names is not None else len(features)
    _limits(len(rows), width, max_rows, max_columns, fmt)
    if names is None:
        names = list(features)
    if len(set(names)) != len(names):
        raise InputError(f"'{fmt}' names a column twice")
    if any(len(r) != width for r in rows):
        raise InputError(f"every row of '{fmt}' must hold {width} values ({', '.join(names)})")
    return {n: [r[i] for r in rows] for i, n in enumerate(names)}


def _records(records: list, max_rows: int, max_columns: int, fmt: str) -> dict[str, list]:
    if not all(isinstance(r, dict) for r in records):
        raise InputError(f"'{fmt}' must be a list of objects (one per row)")
    names: dict[str, None] = {}
    for r in records:
        names.update(dict.fromkeys(r))
        if len(names) > max_columns:
            break
    _limits(len(records), len(names), max_rows, max_columns, fmt)
    return {n: [r.get(n) for r in records] for n in names}


def _column_dict(data: dict, max_rows: int, max_columns: int, fmt: str) -> dict[str, list]:
    if not all(isinstance(v, list) for v in data.values()):
        raise InputError(f"'{fmt}' as an object must map each column name to a list of values")
    lengths = {len(v) for v in data.values()}
    if len(lengths) > 1:
        raise InputError(f"the columns of '{fmt}' must all hold the same number of values")
    _limits(lengths.pop() if lengths else 0, len(data), max_rows, max_columns, fmt)
    return dict(data)


# Unlike a landing file, a request is typed: its numbers are JSON numbers, a missing value null
NUMBERS_AS_JSON = "send JSON numbers ('1200.5', '12 %' or 'N/A' as text are not read), and null for a missing value"


def feature_frame(columns: dict[str, list], features: Sequence[str], categorical: Sequence[str]) -> pl.DataFrame:
    """The model's feature columns as a polars frame: numbers (null for missing) or, for the
    use case's categorical features, text. Extra columns are ignored; a missing one is an error."""
    missing = [f for f in features if f not in columns]
    if missing:
        raise InputError(f"the rows lack the model's feature column(s) {missing}; it takes {list(features)}")
    cats = set(categorical)
    out = {}
    for f in features:
        values = columns[f]
        if f in cats:
            if not all(v is None or isinstance(v, str | int | float) for v in values):
                raise InputError(f"column {f!r} must hold text (or null)")
            # written as ingest writes a category: 2, 2.0 and '2.0' are '2'
            text = pl.Series(f, [None if v is None else str(v) for v in values], dtype=pl.Utf8)
            out[f] = whole_number_text(text)
            continue
        if not all(v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in values):
            raise InputError(f"column {f!r} must hold numbers (or null): {NUMBERS_AS_JSON}")
        out[f] = pl.Series(f, np.array(values, dtype=np.float64), nan_to_null=False)
    return pl.DataFrame(out)


def float_matrix(columns: dict[str, list], features: Sequence[str]) -> np.ndarray:
    """The rows as the float64 matrix a model without categorical features takes (what
    ``feature_frame`` then ``core.features.to_matrix`` give, without the frame in between)."""
    missing = [f for f in features if f not in columns]
    if missing:
        raise InputError(f"the rows lack the model's feature column(s) {missing}; it takes {list(features)}")
    for f in features:
        if not all(v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in columns[f]):
            raise InputError(f"column {f!r} must hold numbers (or null): {NUMBERS_AS_JSON}")
    # column-major, as polars' to_numpy (to_matrix) and pandas give it: BLAS sums in an order
    # that depends on the layout, and the last bit of a prediction with it
    return np.array([columns[f] for f in features], dtype=np.float64).T


def records_frame(columns: dict[str, list], schema: dict[str, pl.DataType], keep: Sequence[str]) -> pl.DataFrame:
    """Rows of future values (forecasts) in the history's column types; only ``keep`` columns."""
    out = {}
    for name in keep:
        if name not in columns:
            continue
        dtype = schema[name]
        values = columns[name]
        try:
            if dtype.is_temporal():
                if not all(isinstance(v, str) for v in values):
                    raise InputError(f"column {name!r} must hold ISO dates or times")
                series = pl.Series(name, values, dtype=pl.Utf8).str.to_datetime(strict=True).cast(dtype)
            elif dtype.is_numeric():
                if not all(v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in values):
                    raise InputError(f"column {name!r} must hold numbers (or null): {NUMBERS_AS_JSON}")
                series = pl.Series(name, values, dtype=pl.Float64).cast(dtype, strict=True)
            else:
                series = pl.Series(name, [None if v is None else str(v) for v in values], dtype=pl.Utf8).cast(dtype)
        except InputError:
            raise
        except Exception:
            raise InputError(f"column {name!r} holds values that are not of the history's type {dtype}") from None
        out[name] = series
    return pl.DataFrame(out)
