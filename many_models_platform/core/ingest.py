"""Landing rows -> clean rows per key: time parsing, target cleaning, duplicates, and counts.

Pure polars, no Dagster and no lake: ``stages/raw.py`` reads the files and writes bronze,
this module decides what every row becomes and counts each row it removes, so a user can
see where rows went (docs/use-cases.md#how-landing-files-are-read).

The time column is read the same way whatever the file format (ISO-8601 text is parsed in
Parquet too), and whole-file problems raise :class:`FileRejected` with a message for the user.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import polars as pl

from .spec import UseCaseSpec

FILE = "__file"  # index of the landing file, in name order
DROP = "__drop"  # why a row is removed (null: the row is kept)
POLICIES = ("keep", "last", "first", "sum", "mean")

# Row drop reasons, as they appear in ``drops`` (docs/use-cases.md#row-counts).
NULL_KEY = "null key value"
MISSING_TIME = "missing time value"
UNPARSEABLE_TIME = "unparseable time value"
TARGET_NULL = "target is null"
TARGET_NAN = "target is NaN"
TARGET_INF = "target is inf"
TARGET_TEXT = "target is not a number"
LATER_FILE = "replaced by a later file"

YEARS = (1000, 9999)  # integers in this range are calendar years (unless frequency says otherwise)
# Text time values without a time_format: ISO-8601 dates, then datetimes (a "T" or a space
# between date and time, optional fractional seconds, optional offset or "Z").
_ISO_NAIVE = ("%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M")
_ISO_AWARE = ("%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M%#z")
_TIME_DIRECTIVES = re.compile(r"%[-#]?[HIMSfpTRrcXsz]|%\.[0-9]?f|%:z")
_NUMERIC_WIDTH = {"Y": 4, "y": 2, "m": 2, "d": 2, "H": 2, "M": 2, "S": 2, "j": 3}

COUNT_SCHEMA = {FILE: pl.Int32, "reason": pl.Utf8, "kind": pl.Utf8, "n": pl.Int64}


class FileRejected(ValueError):
    """A landing file this use case cannot use; the message is the reason shown to the user."""


@dataclass(frozen=True)
class ParsedTime:
    """A time column normalised to ``pl.Date``, ``pl.Datetime("us")`` (UTC, naive) or ``pl.Int64``
    (a period index), with the reason each unusable row is dropped (null when usable)."""

    values: pl.Series
    kind: str  # "date" | "datetime" | "period"
    bad: pl.Series


def _kind_of(dtype: pl.DataType) -> str:
    if dtype == pl.Date:
        return "date"
    return "datetime" if isinstance(dtype, pl.Datetime) else "period"


def _to_naive_utc(values: pl.Series) -> pl.Series:
    if isinstance(values.dtype, pl.Datetime) and values.dtype.time_zone is not None:
        values = values.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
    return values.dt.cast_time_unit("us")


def _examples(source: pl.Series, failed: pl.Series) -> str:
    shown = source.filter(failed).cast(pl.Utf8).unique(maintain_order=True).head(2).to_list()
    return ", ".join(repr(v) for v in shown)


def _numeric_width(fmt: str) -> int | None:
    """Text width of a format made only of numeric directives and literals (``%Y%m`` -> 6), so
    integers can be zero-padded before parsing (5 with ``%y`` reads as ``05``)."""
    width, i = 0, 0
    while i < len(fmt):
        if fmt[i] == "%":
            if i + 1 >= len(fmt) or fmt[i + 1] not in _NUMERIC_WIDTH:
                return None
            width += _NUMERIC_WIDTH[fmt[i + 1]]
            i += 2
        else:
            width += 1
            i += 1
    return width


def _with_format(text: pl.Series, fmt: str) -> tuple[pl.Series, str, str]:
    expected = f"in time_format {fmt!r}"
    if _TIME_DIRECTIVES.search(fmt):
        parsed, kind = _to_naive_utc(text.str.to_datetime(fmt, strict=False, time_unit="us")), "datetime"
    else:
        parsed, kind = text.str.to_date(fmt, strict=False), "date"
    if "%y" in fmt:
        parsed = _past_century(parsed)
    return parsed, kind, expected


def _past_century(parsed: pl.Series) -> pl.Series:
    """Two-digit years never land in the future: polars reads ``63`` as 2063, while a panel of
    ``63``..``92`` means 1963..1992. A year after the current one moves back a century."""
    this_year = dt.date.today().year
    return (
        pl.select(pl.when(parsed.dt.year() > this_year).then(parsed.dt.offset_by("-100y")).otherwise(parsed))
        .to_series()
        .alias(parsed.name)
    )


def _from_integers(
    ints: pl.Series, column: str, frequency: str | None, prefer: str | None
) -> tuple[pl.Series, str, str]:
    """Integers are a period index (``frequency: period``, or not all 4-digit) or calendar years."""
    if frequency == "period" or (frequency is None and prefer == "period"):
        return ints, "period", "integers"
    calendar = _calendar_integers(ints)
    if calendar is not None:
        return calendar
    in_range = ints.is_between(*YEARS)
    as_years = frequency == "yearly" or prefer in ("date", "datetime")
    if frequency is None and not as_years:
        as_years = bool(in_range.filter(ints.is_not_null()).all())
        if not as_years:
            return ints, "period", "integers"
    if not as_years:
        raise FileRejected(
            f"time column {column!r} holds integers, which cannot be read as {frequency} times; set "
            "'time_format' (e.g. '%Y%m%d' for 20190131, '%Y%m' for 201901) or 'frequency: period'"
        )
    years = pl.select(pl.when(in_range).then(pl.date(ints, 1, 1))).to_series()
    return years, "date", f"years ({YEARS[0]}-{YEARS[1]})"


EPOCH_SECONDS = (10**9, 10**10)  # 2001-09-09 .. 2286: Unix time in seconds
EPOCH_MILLIS = (10**12, 10**13)  # the same range in milliseconds
_ISO_WEEK = r"^(\d{4})-?W(\d{2})$"  # 2024-W05: the Monday of that ISO week


def _calendar_integers(ints: pl.Series) -> tuple[pl.Series, str, str] | None:
    """Integers that can only be calendar times: every value an 8-digit ``YYYYMMDD`` date, or
    Unix time in seconds or milliseconds (10 or 13 digits); None when they may be a period index."""
    present = ints.drop_nulls()
    if present.is_empty():
        return None
    low, high = present.min(), present.max()
    if low >= 10_000_000 and high <= 99_991_231:
        dates = ints.cast(pl.Utf8).str.to_date("%Y%m%d", strict=False)
        if dates.null_count() == ints.null_count():
            return dates, "date", "dates as YYYYMMDD"
    for (lo, hi), unit in ((EPOCH_SECONDS, "s"), (EPOCH_MILLIS, "ms")):
        if lo <= low and high < hi:
            return pl.from_epoch(ints, time_unit=unit).dt.cast_time_unit("us"), "datetime", f"Unix time ({unit})"
    return None


def _iso_weeks(text: pl.Series) -> pl.Series:
    """``2024-W05`` (or ``2024W05``) -> the Monday of ISO week 5 of 2024; other values null."""
    parts = text.str.extract_groups(_ISO_WEEK)
    year, week = parts.struct.field("1").cast(pl.Int32), parts.struct.field("2").cast(pl.Int32)
    jan4 = pl.date(year, 1, 4)  # always in ISO week 1
    monday = jan4 - pl.duration(days=jan4.dt.weekday() - 1) + pl.duration(weeks=week - 1)
    valid = week.is_between(1, 53) & (monday.dt.iso_year() == year)
    return pl.select(pl.when(valid).then(monday)).to_series().alias(text.name)


def _weighted(mask: pl.Series, counts: pl.Series | None) -> int:
    """How many rows ``mask`` holds, when each value stands for ``counts`` rows (a file's
    distinct time values with their counts) or for one."""
    return int(mask.sum()) if counts is None else int(counts.filter(mask).sum())


def _from_text(
    text: pl.Series, column: str, frequency: str | None, prefer: str | None, counts: pl.Series | None
) -> tuple[pl.Series, str, str]:
    expected = "ISO-8601 dates, datetimes or integers"
    present = _weighted(text.is_not_null(), counts)
    dates = text.str.to_date("%Y-%m-%d", strict=False)
    if _weighted(dates.is_not_null(), counts) == present:
        return dates, "date", expected
    weeks = _iso_weeks(text)
    if _weighted(weeks.is_not_null(), counts) * 2 > present:
        return weeks, "date", "ISO weeks (YYYY-Www)"
    ints = text.cast(pl.Int64, strict=False)
    if _weighted(ints.is_not_null(), counts) * 2 > present:
        return _from_integers(ints, column, frequency, prefer)
    spaced = text.str.replace("T", " ", literal=True)
    parsed = pl.repeat(None, len(text), dtype=pl.Datetime("us"), eager=True)
    for fmt in (*_ISO_NAIVE, *_ISO_AWARE):
        missing = parsed.is_null() & text.is_not_null() & dates.is_null()
        if not missing.any():
            break
        parsed = parsed.fill_null(_to_naive_utc(spaced.str.to_datetime(fmt, strict=False, time_unit="us")))
    if parsed.is_null().all():
        return dates, "date", expected
    return parsed.fill_null(dates.cast(pl.Datetime("us"))), "datetime", expected


def parse_time(
    values: pl.Series,
    *,
    column: str,
    time_format: str | None = None,
    frequency: str | None = None,
    prefer: str | None = None,
    counts: pl.Series | None = None,
) -> ParsedTime:
    """Normalise one file's time column (rules: docs/use-cases.md#time-columns).

    ``counts``: each value stands for that many rows (a file's distinct values, see
    :func:`file_rules`); every decision weighs the values by it, as over the rows themselves.

    ``prefer`` is the kind an earlier landing file of the use case gave: it settles integers
    that could be years or periods, and a file of another kind is rejected. Raises
    :class:`FileRejected` when more than half of the non-null values do not parse.
    """
    if len(values) and values.null_count() == len(values):
        raise FileRejected(f"time column {column!r} holds no values")
    if isinstance(values.dtype, pl.Categorical | pl.Enum):
        values = values.cast(pl.Utf8)
    source = values
    if values.dtype.is_float():
        finite = values.filter(values.is_finite())
        fractional = finite != finite.round(0)
        if fractional.any():
            raise FileRejected(
                f"time column {column!r} holds non-integer numbers (e.g. {_examples(finite, fractional)})"
            )
        values = values.fill_nan(None).cast(pl.Int64, strict=False)
        source = values
    if values.dtype == pl.Date or isinstance(values.dtype, pl.Datetime):
        parsed = values if values.dtype == pl.Date else _to_naive_utc(values)
        kind, expected = _kind_of(values.dtype), "dates"
    elif values.dtype.is_integer() or values.dtype == pl.Utf8:
        if values.dtype.is_integer():
            ints = values.cast(pl.Int64)
            text = ints.cast(pl.Utf8)
        else:
            text = values.str.strip_chars()
            ints = None
        if time_format:
            width = _numeric_width(time_format) if ints is not None else None
            parsed, kind, expected = _with_format(text.str.zfill(width) if width else text, time_format)
        elif ints is not None:
            parsed, kind, expected = _from_integers(ints, column, frequency, prefer)
        else:
            parsed, kind, expected = _from_text(text, column, frequency, prefer, counts)
    else:
        raise FileRejected(f"time column {column!r} has type {values.dtype}, not a date, datetime, text or integer")

    present = source.is_not_null()
    failed = present & parsed.is_null()
    n_present, n_failed = _weighted(present, counts), _weighted(failed, counts)
    if n_present == 0 and len(values):
        raise FileRejected(f"time column {column!r} holds no values")
    if n_failed * 2 > n_present:
        hint = "set 'time_format' (strftime, e.g. '%d/%m/%Y') to read this layout"
        if expected.startswith("years"):
            hint = "set 'frequency: period' to read them as a period index, or 'time_format'"
        raise FileRejected(
            f"time column {column!r}: {n_failed} of {n_present} values are not {expected} "
            f"(e.g. {_examples(source, failed)}); {hint}"
        )
    _check_kind(column, kind, prefer)
    bad = pl.select(
        pl.when(~present).then(pl.lit(MISSING_TIME)).when(failed).then(pl.lit(UNPARSEABLE_TIME))
    ).to_series()
    return ParsedTime(parsed.alias(column), kind, bad.alias(DROP))


def _check_kind(column: str, kind: str, prefer: str | None) -> None:
    """Every landing file of a use case holds periods, or every one holds calendar times."""
    if prefer is not None and (prefer == "period") != (kind == "period"):
        seen = {"period": "integer periods", "date": "dates", "datetime": "datetimes"}
        raise FileRejected(
            f"time column {column!r} holds {seen[kind]} here but {seen[prefer]} in an earlier landing file; "
            "set 'frequency' ('period' or 'yearly') or 'time_format' so every file reads the same way"
        )


def match_columns(wanted: Sequence[str], header: Sequence[str]) -> dict[str, str]:
    """header name -> configured name, for the configured columns the header holds. An exact
    name wins; otherwise a header equal up to case and surrounding spaces (`` Store Id `` for
    ``store id``), when exactly one header is."""
    present = set(header)
    names: dict[str, str] = {}
    for name in dict.fromkeys(wanted):
        if name in present:
            names[name] = name
            continue
        folded = name.strip().casefold()
        near = [h for h in header if h.strip().casefold() == folded and h not in names]
        if len(near) == 1:
            names[near[0]] = name
    return names


def key_values(keys: Sequence[str], schema: pl.Schema | dict | None = None) -> list[pl.Expr]:
    """Key columns as key text: surrounding spaces stripped (``"a "`` is ``"a"``, as padded
    fixed-width exports write it), and an empty value is a missing one. Case and leading
    zeros are kept: ``A``/``a`` and ``0012``/``12`` stay different keys. A float column
    (pandas writes an integer id column with gaps as floats) gives ``12`` for ``12.0``, and
    NaN is missing, so the key matches the same id from an integer or text file."""
    out = []
    for k in keys:
        column = pl.col(k)
        if schema is not None and schema[k].is_float():
            column = column.fill_nan(None).cast(pl.Utf8).str.replace(r"^(-?\d+)\.0$", "${1}")
        text = column.cast(pl.Utf8).str.strip_chars()
        out.append(pl.when(text.str.len_bytes() > 0).then(text).alias(k))
    return out


_THOUSANDS = r"^[+-]?\d{1,3}(,\d{3})+(\.\d*)?$"  # 1,234.5
_THOUSANDS_DC = r"^[+-]?\d{1,3}(\.\d{3})+(,\d*)?$"  # 1.234,5 (decimal comma)
_DECIMAL_COMMA = r"^[+-]?\d*,\d+$"  # 3,5


def to_number(text: pl.Expr, decimal_comma: bool = False) -> pl.Expr:
    """Numbers written as text, as spreadsheets export them: ``1,234.5`` (or ``1.234,5`` and
    ``3,5`` with a decimal comma) and surrounding spaces; anything else that is not a number is null."""
    t = text.str.strip_chars()
    if decimal_comma:
        t = (
            pl.when(t.str.contains(_THOUSANDS_DC))
            .then(t.str.replace_all(".", "", literal=True).str.replace(",", ".", literal=True))
            .when(t.str.contains(_DECIMAL_COMMA))
            .then(t.str.replace(",", ".", literal=True))
            .otherwise(t)
        )
    else:
        t = pl.when(t.str.contains(_THOUSANDS)).then(t.str.replace_all(",", "", literal=True)).otherwise(t)
    return t.cast(pl.Float64, strict=False)


def _number_hint(examples: Sequence[str], decimal_comma: bool) -> str:
    if not decimal_comma and any(
        re.match(_DECIMAL_COMMA, e.strip()) or re.match(_THOUSANDS_DC, e.strip()) for e in examples
    ):
        return "they look like decimal commas: set 'csv: {decimal_comma: true}' in the source"
    return "strip units and other text in the export, or use a column that holds the number"


def required_columns(spec: UseCaseSpec, scoring: bool) -> list[str]:
    """Columns a landing file must hold: all inputs, except the target in a scoring source."""
    return [c for c in spec.input_columns if not (scoring and c == spec.target)]


@dataclass(frozen=True)
class FileRules:
    """What a landing file's rows become, decided over the whole file by :func:`file_rules`:
    every row is then normalised alone (:func:`normalise_rows`), so the batches of a file too
    large to hold come out as the whole file would."""

    time_kind: str | None  # "date" | "datetime" | "period"; None without a time column
    times: pl.DataFrame | None  # each distinct time value (SOURCE) -> parsed value (time column) and DROP
    numbers: tuple[str, ...]  # text features whose every value reads as a number
    parsed: ParsedTime | None = None  # a whole file's time column, parsed row by row (rules of a frame)


class RowsChanged(OSError):
    """A batch holds a time value the pass over the whole file did not see: the file changed
    while it was read. An OSError, so the reader tries the file again."""


SOURCE = "__source"  # a time value as the file holds it, in FileRules.times


def _time_source(column: str, dtype: pl.DataType) -> pl.Expr:
    """The value a row's time is looked up by: categories as text, a float's NaN as missing."""
    if isinstance(dtype, pl.Categorical | pl.Enum):
        return pl.col(column).cast(pl.Utf8)
    return pl.col(column).fill_nan(None) if dtype.is_float() else pl.col(column)


def _time_rules(data: pl.LazyFrame, spec: UseCaseSpec, prefer: str | None) -> tuple[str, pl.DataFrame | None]:
    """A lazy file's time rules: nothing for a date or datetime column, else its distinct values
    (with their counts) parsed once, to be looked up by every batch. The lookup holds one row
    per distinct time value: weeks or days are few, a file of unaligned timestamps holds many."""
    column = spec.time_column
    dtype = data.collect_schema()[column]
    if dtype == pl.Date or isinstance(dtype, pl.Datetime):  # typed: nothing to decide, only whether any is set
        rows, present = data.select(pl.len(), pl.col(column).is_not_null().sum().alias("present")).collect().row(0)
        if rows and not present:
            raise FileRejected(f"time column {column!r} holds no values")
        _check_kind(column, _kind_of(dtype), prefer)
        return _kind_of(dtype), None
    distinct = (  # a file's distinct times are few (weeks, days) next to its rows
        data.select(_time_source(column, dtype).alias(SOURCE)).group_by(SOURCE, maintain_order=True).len().collect()
    )
    parsed = parse_time(
        distinct[SOURCE].alias(column),
        column=column,
        time_format=spec.time_format,
        frequency=spec.frequency,
        prefer=prefer,
        counts=distinct["len"],
    )
    return parsed.kind, pl.DataFrame([distinct[SOURCE], parsed.values, parsed.bad])


def _target_number(target: str, dtype: pl.DataType, decimal_comma: bool) -> pl.Expr:
    return to_number(pl.col(target), decimal_comma) if dtype == pl.Utf8 else pl.col(target).cast(pl.Float64)


def _decimal_comma(spec: UseCaseSpec, scoring: bool) -> bool:
    source_spec = spec.scoring_source if scoring and spec.scoring_source else spec.source
    return bool(source_spec.csv and source_spec.csv.decimal_comma)


def file_rules(
    data: pl.LazyFrame | pl.DataFrame, spec: UseCaseSpec, *, scoring: bool = False, prefer: str | None = None
) -> FileRules:
    """Decide, over all of one landing file's rows, what needs the whole file: how its time
    values parse, which text features are numbers, and whether it is a file to reject
    (:class:`FileRejected`). ``data`` may be lazy (a file read in batches): only these answers
    are collected, and its time values are parsed once per distinct value."""
    frame, data = data, data.lazy()
    schema = data.collect_schema()
    missing = [c for c in required_columns(spec, scoring) if c not in schema]
    if missing:
        raise FileRejected(f"missing required column(s) {missing}")
    decimal_comma = _decimal_comma(spec, scoring)
    numbers: tuple[str, ...] = ()
    numeric_text = [c for c in spec.features if schema.get(c) == pl.Utf8]
    if numeric_text:  # "1,234.5" features become numbers when every value is one; else training_set says why
        not_numbers = data.select(
            (pl.col(c).is_not_null() & to_number(pl.col(c), decimal_comma).is_null()).any() for c in numeric_text
        ).collect()
        numbers = tuple(c for c in numeric_text if not not_numbers[c].item())
    kind, times, parsed = None, None, None
    if spec.time_column and isinstance(frame, pl.DataFrame):  # held whole: parsed row by row, as always
        parsed = parse_time(
            frame[spec.time_column],
            column=spec.time_column,
            time_format=spec.time_format,
            frequency=spec.frequency,
            prefer=prefer,
        )
        kind = parsed.kind
    elif spec.time_column:
        kind, times = _time_rules(data, spec, prefer)
    target = spec.target
    if not scoring and target in schema and spec.task in ("forecast", "regression") and schema[target] != pl.Float64:
        _check_target_numbers(data, target, _target_number(target, schema[target], decimal_comma), decimal_comma)
    return FileRules(kind, times, numbers, parsed)


def normalise_rows(frame: pl.DataFrame, spec: UseCaseSpec, rules: FileRules, *, scoring: bool = False) -> pl.DataFrame:
    """Rows of one landing file (all of it, or a batch) in bronze types, plus ``__drop``, the
    reason a row is removed, by the file's ``rules``.

    Key and categorical columns become text as they are; the target becomes Float64 for
    forecasts and regressions.
    """
    frame = frame.select([c for c in spec.input_columns if c in frame.columns])
    frame = frame.with_columns(
        *key_values(spec.keys, frame.schema), *[pl.col(c).cast(pl.Utf8) for c in spec.categorical_features]
    )
    decimal_comma = _decimal_comma(spec, scoring)
    if rules.numbers:
        frame = frame.with_columns(to_number(pl.col(c), decimal_comma) for c in rules.numbers)
    reasons = pl.when(pl.any_horizontal([pl.col(k).is_null() for k in spec.keys])).then(pl.lit(NULL_KEY))
    if spec.time_column:
        column = spec.time_column
        if rules.parsed is not None:  # the whole file, parsed with its rules
            if rules.parsed.values.len() != frame.height:
                raise ValueError("rules parsed from another frame")
            frame = frame.with_columns(rules.parsed.values, rules.parsed.bad)
        elif rules.times is None:  # a date or datetime column
            bad = pl.when(pl.col(column).is_null()).then(pl.lit(MISSING_TIME)).otherwise(pl.lit(None, pl.Utf8))
            values = frame[column] if frame.schema[column] == pl.Date else _to_naive_utc(frame[column])
            frame = frame.with_columns(values, bad.alias(DROP))
        else:
            looked_up = frame.select(_time_source(column, frame.schema[column]).alias(SOURCE)).join(
                rules.times, on=SOURCE, how="left", nulls_equal=True, maintain_order="left"
            )
            if looked_up.select((pl.col(column).is_null() & pl.col(DROP).is_null()).any()).item():
                raise RowsChanged(f"time values of {column!r} that the pass over the whole file did not see")
            frame = frame.with_columns(looked_up[column], looked_up[DROP])
        reasons = reasons.when(pl.col(DROP).is_not_null()).then(pl.col(DROP))
    target = spec.target if spec.target in frame.columns else None
    if target:
        source = pl.col(target)
        if spec.task in ("forecast", "regression") and frame.schema[target] != pl.Float64:
            as_number = _target_number(target, frame.schema[target], decimal_comma)
            frame = frame.with_columns(as_number, source.is_not_null().alias("__t_present"))
            text = pl.col("__t_present") & pl.col(target).is_null()
        else:
            text = pl.lit(False)
        if not scoring:
            reasons = reasons.when(text).then(pl.lit(TARGET_TEXT)).when(source.is_null()).then(pl.lit(TARGET_NULL))
            if frame.schema[target].is_float():
                reasons = reasons.when(source.is_nan()).then(pl.lit(TARGET_NAN))
                reasons = reasons.when(source.is_infinite()).then(pl.lit(TARGET_INF))
    frame = frame.with_columns(reasons.otherwise(pl.lit(None, dtype=pl.Utf8)).alias(DROP))
    return frame.drop("__t_present", strict=False)


def normalise_file(
    frame: pl.DataFrame, spec: UseCaseSpec, *, scoring: bool = False, prefer: str | None = None
) -> tuple[pl.DataFrame, str | None]:
    """One whole landing file: its rules, then its rows by them. Returns the frame and its time
    kind; raises :class:`FileRejected`."""
    rules = file_rules(frame, spec, scoring=scoring, prefer=prefer)
    return normalise_rows(frame, spec, rules, scoring=scoring), rules.time_kind


def _check_target_numbers(data: pl.LazyFrame, target: str, as_number: pl.Expr, decimal_comma: bool) -> None:
    """More than half of a file's targets not being numbers is a layout to fix, not bad rows."""
    failed = pl.col(target).is_not_null() & as_number.is_null()
    n_failed, n_present = (
        data.select(failed.sum().alias("f"), pl.col(target).is_not_null().sum().alias("p")).collect().row(0)
    )
    if n_failed * 2 > n_present:
        shown = (
            data.filter(failed).select(pl.col(target).cast(pl.Utf8)).unique(maintain_order=True).head(2).collect()
        )[target].to_list()
        raise FileRejected(
            f"target {target!r}: {n_failed} of {n_present} values are not numbers (e.g. "
            f"{', '.join(repr(v) for v in shown)}); {_number_hint(shown, decimal_comma)}"
        )


def _empty_counts(keys: Sequence[str]) -> pl.DataFrame:
    return pl.DataFrame(schema={**{k: pl.Utf8 for k in keys}, **COUNT_SCHEMA})


def _count(rows: pl.DataFrame, keys: Sequence[str], reason: str | pl.Expr, kind: str) -> pl.DataFrame:
    """Rows removed, counted per key, file and reason."""
    if rows.is_empty():
        return _empty_counts(keys)
    expr = pl.lit(reason) if isinstance(reason, str) else reason
    return (
        rows.group_by([*keys, FILE, expr.alias("reason")], maintain_order=True)
        .agg(pl.len().cast(pl.Int64).alias("n"))
        .with_columns(pl.lit(kind).alias("kind"), pl.col(FILE).cast(pl.Int32))
        .select([*keys, *COUNT_SCHEMA])
    )


@dataclass
class Resolved:
    """The rows kept, and where the others went."""

    data: pl.DataFrame  # kept rows (with ``__file``)
    null_key_rows: pl.DataFrame  # rows without a full key: not a key's rows, counted per file
    rows_in: pl.DataFrame  # keys + ``rows_in``: rows received per key
    counts: pl.DataFrame  # keys, __file, reason, kind ("dropped" | "merged"), n
    failures: dict[tuple, str] = field(default_factory=dict)  # key values -> why the key fails
    policy_ran: bool = False  # some (key, time) repeated, so the duplicate policy ran (see merged_types)


def resolve(
    data: pl.DataFrame, spec: UseCaseSpec, *, policy: str | None = None, file_names: Sequence[str] = ()
) -> Resolved:
    """Drop the rows marked in ``__drop``, let a later file replace earlier rows of the same
    (key, time), then apply the duplicate policy inside each file; count everything."""
    keys, time = list(spec.keys), spec.time_column
    policy = policy or spec.duplicate_policy
    null_key = pl.any_horizontal([pl.col(k).is_null() for k in keys])
    null_rows = data.filter(null_key)
    if not null_rows.is_empty():  # filters copy the frame: only when something is removed
        data = data.filter(~null_key)
    rows_in = data.group_by(keys).agg(pl.len().cast(pl.Int64).alias("rows_in"))
    dropped = data.filter(pl.col(DROP).is_not_null())
    counts = [_count(dropped, keys, pl.col(DROP), "dropped")]
    if not dropped.is_empty():
        data = data.filter(pl.col(DROP).is_null())
    data = data.drop(DROP)
    failures: dict[tuple, str] = {}
    ran = bool(time) and not data.is_empty() and _has_duplicates(data, [*keys, time])
    if ran:
        group = [*keys, time]
        if data[FILE].n_unique() > 1:
            latest = pl.col(FILE) == pl.col(FILE).max().over(group)
            counts.append(_count(data.filter(~latest), keys, LATER_FILE, "merged"))
            data = data.filter(latest)
        data, more, failures = _apply_policy(data, spec, policy, file_names)
        counts += more
    return Resolved(data, null_rows, rows_in, pl.concat(counts), failures, ran)


def merged_types(data: pl.DataFrame, spec: UseCaseSpec, policy: str | None = None) -> pl.DataFrame:
    """No rows: the column types ``resolve`` gives the kept rows of ``data`` once the duplicate
    policy has run ("sum" and "mean" average numbers into floats). A reader that resolves the
    rows a part at a time casts every part to these when any part ran the policy, as one
    resolution of all the rows would have."""
    return _apply_policy(data.clear().drop(DROP), spec, policy or spec.duplicate_policy, ())[0].clear()


def _has_duplicates(data: pl.DataFrame, group: list[str]) -> bool:
    """A cheap first look (most landing zones hold one row per (key, time)): equal rows hash
    alike, so no repeated hash means no duplicate; a hash collision only takes the exact path."""
    return data.select(pl.struct(group).hash().n_unique()).item() < data.height


def _apply_policy(
    data: pl.DataFrame, spec: UseCaseSpec, policy: str, file_names: Sequence[str]
) -> tuple[pl.DataFrame, list[pl.DataFrame], dict[tuple, str]]:
    keys, time = list(spec.keys), spec.time_column
    group = [*keys, time]
    if policy == "keep":
        return data, [], {}
    position = pl.int_range(pl.len()).over(group)
    if policy in ("first", "last"):
        kept = position == 0 if policy == "first" else position == pl.len().over(group) - 1
        reason = f"duplicate (key, time) removed by policy {policy!r}"
        return data.filter(kept), [_count(data.filter(~kept), keys, reason, "dropped")], {}
    if policy in ("sum", "mean"):
        dup = pl.len().over(group) > 1
        single, multi = data.filter(~dup), data.filter(dup)
        merged = _count(
            multi.filter(position > 0), keys, f"duplicate (key, time) merged by policy {policy!r}", "merged"
        )
        aggs = []
        for col in data.columns:
            if col in (*group, FILE):
                continue
            if col == spec.target and data.schema[col].is_numeric():
                aggs.append(pl.col(col).sum() if policy == "sum" else pl.col(col).mean())
            elif data.schema[col].is_numeric():
                aggs.append(pl.col(col).mean())
            else:
                aggs.append(pl.col(col).last())
        folded = multi.group_by([*group, FILE], maintain_order=True).agg(aggs).select(data.columns)
        return pl.concat([single, folded], how="vertical_relaxed"), [merged], {}
    # policy "error": every key with a duplicate fails, the others carry on
    extra = data.filter(position > 0)
    per_key = extra.group_by(keys, maintain_order=True).agg(
        pl.len().alias("n"), pl.col(time).first().alias("example"), pl.col(FILE).first().alias("file")
    )
    failures = {}
    for row in per_key.iter_rows(named=True):
        where = file_names[row["file"]] if row["file"] < len(file_names) else f"file #{row['file']}"
        failures[tuple(row[k] for k in keys)] = (
            f"{row['n']} row(s) repeat a ({', '.join(keys)}, {time}) of an earlier row in the same landing file "
            f"({where}), e.g. {time}={row['example']}; the duplicates policy is 'error': set 'duplicates' to one "
            f"of {', '.join(p for p in POLICIES if p != 'keep' or spec.task != 'forecast')}"
        )
    failing = per_key.select(keys)
    dropped = _count(data.join(failing, on=keys, how="semi"), keys, "key failed: duplicate (key, time)", "dropped")
    return data.join(failing, on=keys, how="anti"), [dropped], failures


def per_key_counts(counts: pl.DataFrame, keys: Sequence[str]) -> pl.DataFrame:
    """keys, reason, kind, n: counts summed over files."""
    return counts.group_by([*keys, "reason", "kind"], maintain_order=True).agg(pl.col("n").sum())


def per_file_counts(counts: pl.DataFrame) -> pl.DataFrame:
    """__file, reason, kind, n: counts summed over keys."""
    return counts.group_by([FILE, "reason", "kind"], maintain_order=True).agg(pl.col("n").sum())
