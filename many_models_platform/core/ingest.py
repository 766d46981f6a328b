"""Landing rows -> clean rows per key: time parsing, target cleaning, duplicates, and counts.

Pure polars, no Dagster and no lake: ``stages/raw.py`` reads the files and writes bronze,
this module decides what every row becomes and counts each row it removes, so a user can
see where rows went (docs/use-cases.md#how-landing-files-are-read).

The time column is read the same way whatever the file format (ISO-8601 text is parsed in
Parquet too), and whole-file problems raise :class:`FileRejected` with a message for the user.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

import polars as pl

from .spec import UseCaseSpec

FrameT = TypeVar("FrameT", pl.DataFrame, pl.LazyFrame)

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
NO_TRAINING_ROWS = "scoring row of a key without training rows"
ROW_ID_LENGTH = 256  # the width of predictions.row_id in the warehouse
ROW_ID_TOO_LONG = f"row id longer than {ROW_ID_LENGTH} characters"
LABEL_LENGTH = 256  # the width of predictions.predicted_label and actual_label in the warehouse
LABEL_TOO_LONG = f"class label longer than {LABEL_LENGTH} characters"

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


class DayOrderUnknown(FileRejected):
    """Numeric dates none of which shows whether the day or the month comes first (01/02/2024,
    a daily file of the 1st to the 12th): the use case's other landing files may show it, and
    ``stages.raw`` then reads this one again in their order (``day_first``)."""


@dataclass(frozen=True)
class ParsedTime:
    """A time column normalised to ``pl.Date``, ``pl.Datetime("us")`` (UTC, naive) or ``pl.Int64``
    (a period index), with the reason each unusable row is dropped (null when usable)."""

    values: pl.Series
    kind: str  # "date" | "datetime" | "period"
    bad: pl.Series


@dataclass(frozen=True)
class TimeRule:
    """How a file's time column becomes times: decided over all of its rows (:func:`time_rule`),
    then applied alike to the whole file or to each batch of it. Expressions, not a lookup of
    values, so memory does not follow the number of distinct time values."""

    kind: str  # "date" | "datetime" | "period"
    column: str
    dtype: pl.DataType  # the column's type in the file the rule was decided on
    values: pl.Expr  # the parsed time, named as the column
    present: pl.Expr  # whether the file holds a time value in a row (parsed or not)
    # numeric dates: the order their numbers show (True for 15/03, False for 03/15); None when
    # they show none (the file then read in the order given, or rejected with DayOrderUnknown)
    day_first: bool | None = None

    def apply(self, frame: pl.DataFrame) -> pl.DataFrame:
        """``frame`` with its time column read, and ``DROP`` saying why a row's time is unusable."""
        if frame.schema[self.column] != self.dtype:  # e.g. a batch of nulls only
            frame = frame.with_columns(pl.col(self.column).cast(self.dtype))
        frame = frame.with_columns(self.present.alias(_PRESENT), self.values)
        bad = pl.when(~pl.col(_PRESENT)).then(pl.lit(MISSING_TIME))
        bad = bad.when(pl.col(self.column).is_null()).then(pl.lit(UNPARSEABLE_TIME))
        return frame.with_columns(bad.otherwise(pl.lit(None, pl.Utf8)).alias(DROP)).drop(_PRESENT)


_PRESENT = "__time_present"


def _kind_of(dtype: pl.DataType) -> str:
    if dtype == pl.Date:
        return "date"
    return "datetime" if isinstance(dtype, pl.Datetime) else "period"


def _naive_utc(values: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    if isinstance(dtype, pl.Datetime) and dtype.time_zone is not None:
        values = values.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
    return values.dt.cast_time_unit("us")


def _to_datetime(text: pl.Expr, fmt: str) -> pl.Expr:
    """Text parsed by ``fmt`` as naive UTC microseconds (an offset in the format gives UTC)."""
    dtype = pl.Series([None], dtype=pl.Utf8).str.to_datetime(fmt, strict=False, time_unit="us").dtype
    return _naive_utc(text.str.to_datetime(fmt, strict=False, time_unit="us"), dtype)


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


def _with_format(text: pl.Expr, fmt: str) -> tuple[pl.Expr, str]:
    if _TIME_DIRECTIVES.search(fmt):
        parsed, kind = _to_datetime(text, fmt), "datetime"
    else:
        parsed, kind = text.str.to_date(fmt, strict=False), "date"
    return (_past_century(parsed) if "%y" in fmt else parsed), kind


def _past_century(parsed: pl.Expr) -> pl.Expr:
    """Two-digit years never land in the future: polars reads ``63`` as 2063, while a panel of
    ``63``..``92`` means 1963..1992. A year after the current one moves back a century."""
    this_year = dt.date.today().year
    return pl.when(parsed.dt.year() > this_year).then(parsed.dt.offset_by("-100y")).otherwise(parsed)


EPOCH_SECONDS = (10**9, 10**10)  # 2001-09-09 .. 2286: Unix time in seconds
EPOCH_MILLIS = (10**12, 10**13)  # the same range in milliseconds
EPOCH_MICROS = (10**15, 10**16)  # and microseconds (Spark, BigQuery)
EPOCH_NANOS = (10**18, 2**63 - 1)  # and nanoseconds (pandas' datetime64[ns] as integers)
_YYYYMMDD = (10_000_000, 99_991_231)
_YYYYMM = (100_001, 999_912)  # 202401: a month, as statistics offices number them
_EPOCHS = (
    (EPOCH_SECONDS, "s", "seconds"),
    (EPOCH_MILLIS, "ms", "millis"),
    (EPOCH_MICROS, "us", "micros"),
    (EPOCH_NANOS, "ns", "nanos"),
)
_ISO_WEEK = r"^(\d{4})-?W(\d{2})$"  # 2024-W05: the Monday of that ISO week


def _iso_weeks(text: pl.Expr) -> pl.Expr:
    """``2024-W05`` (or ``2024W05``) -> the Monday of ISO week 5 of 2024; other values null."""
    parts = text.str.extract_groups(_ISO_WEEK)
    year, week = parts.struct.field("1").cast(pl.Int32), parts.struct.field("2").cast(pl.Int32)
    jan4 = pl.date(year, 1, 4)  # always in ISO week 1
    monday = jan4 - pl.duration(days=jan4.dt.weekday() - 1) + pl.duration(weeks=week - 1)
    return pl.when(week.is_between(1, 53) & (monday.dt.iso_year() == year)).then(monday)


@dataclass(frozen=True)
class _Readings:
    """The ways a time column may be read, as expressions over the file: the first pass counts
    how many values each reads (``asks``), and the rules of docs/use-cases.md#time-columns pick one."""

    column: str
    source: pl.Expr  # what presence is judged on: a float's NaN is missing
    float_source: pl.Expr | None  # a float column before it became integers
    reads: dict[str, tuple[pl.Expr, str]]  # name -> (parsed, kind), each null where it does not read
    # text the first pass leaves undecided: ISO weeks, or datetimes in the ISO layouts (more passes)
    text: pl.Expr | None = None
    datetimes: tuple[pl.Expr, ...] = ()
    # name -> where a read gives a value, when that is cheaper to tell than the value itself
    # (a range test, not a date built for every row of a file that holds none)
    reads_where: dict[str, pl.Expr] = field(default_factory=dict)
    # reads counted only when the first pass leaves them to decide (text that is mostly integers):
    # each costs a pass over every value of a file that is, most often, all ISO dates
    deferred: tuple[str, ...] = ()

    def counts(self, names: Iterable[str]) -> dict[str, pl.Expr]:
        return {f"n_{name}": self.reads_where.get(name, self.reads[name][0].is_not_null()).sum() for name in names}

    def asks(self) -> dict[str, pl.Expr]:
        asks = {"rows": pl.len(), "present": self.source.is_not_null().sum()}
        if self.float_source is not None:
            finite = self.float_source.is_finite()
            asks["fractional"] = (finite & (self.float_source != self.float_source.round(0))).any()
        asks |= self.counts(name for name in self.reads if name not in self.deferred)
        return asks


def _readings(column: str, dtype: pl.DataType, time_format: str | None) -> _Readings:
    values, float_source = pl.col(column), None
    if isinstance(dtype, pl.Categorical | pl.Enum) or dtype == pl.Null:  # a column of nulls holds no values
        values, dtype = values.cast(pl.Utf8), pl.Utf8
    if dtype.is_float():
        float_source = values
        values, dtype = values.fill_nan(None).cast(pl.Int64, strict=False), pl.Int64
    if dtype == pl.Date or isinstance(dtype, pl.Datetime):
        typed = values if dtype == pl.Date else _naive_utc(values, dtype)
        reads = {"typed": (typed, _kind_of(dtype))}
        if isinstance(dtype, pl.Datetime) and dtype.time_zone is not None:  # days at local midnight
            midnight = (values.dt.hour() == 0) & (values.dt.minute() == 0) & (values.dt.second() == 0)
            reads["local_days"] = (pl.when(midnight & (values.dt.nanosecond() == 0)).then(values.dt.date()), "date")
        return _Readings(column, values, float_source, reads)
    if time_format == EXCEL and (dtype.is_numeric() or dtype == pl.Utf8):
        source = pl.col(column) if float_source is None else float_source
        return _Readings(column, values, None, {"format": (_excel_days(source, dtype), "datetime")})
    if not (dtype.is_integer() or dtype == pl.Utf8):
        raise FileRejected(f"time column {column!r} has type {dtype}, not a date, datetime, text or integer")
    ints = values.cast(pl.Int64) if dtype.is_integer() else None
    text = ints.cast(pl.Utf8) if ints is not None else values.str.strip_chars()
    if time_format:
        width = _numeric_width(time_format) if ints is not None else None
        fmt = _with_format(text.str.zfill(width) if width else text, time_format)
        return _Readings(column, values, float_source, {"format": fmt})
    reads: dict[str, tuple[pl.Expr, str]] = {}
    undecided: tuple[pl.Expr | None, tuple[pl.Expr, ...]] = (None, ())
    if ints is None:
        reads["date"] = (text.str.to_date("%Y-%m-%d", strict=False), "date")
        ints = text.str.replace(_FLOAT_INTEGER, "${1}").cast(pl.Int64, strict=False)  # 1970.0: pandas' ints with gaps
        spaced = text.str.replace("T", " ", literal=True)
        undecided = (text, tuple(_to_datetime(spaced, f) for f in (*_ISO_NAIVE, *_ISO_AWARE)))
    month = ints.is_between(*_YYYYMM) & (ints % 100).is_between(1, 12)
    where = {"ym": month, "years": ints.is_between(*YEARS), "excel": ints.is_between(*_EXCEL_SERIALS)}
    where |= {name: ints.is_between(lo, hi - 1).fill_null(False) for (lo, hi), _, name in _EPOCHS}
    reads |= {
        "int": (ints, "period"),
        "ymd": (
            pl.when(ints.is_between(*_YYYYMMDD)).then(ints.cast(pl.Utf8).str.to_date("%Y%m%d", strict=False)),
            "date",
        ),
        "ym": (pl.when(month).then(pl.date(ints // 100, ints % 100, 1)), "date"),
        "years": (pl.when(where["years"]).then(pl.date(ints, 1, 1)), "date"),
        "excel": (_excel_days(pl.when(where["excel"]).then(ints), pl.Int64), "datetime"),  # counted, for hints
        **{name: (_epoch(ints, lo, hi, unit), "datetime") for (lo, hi), unit, name in _EPOCHS},
    }
    deferred = tuple(name for name in reads if name not in ("int", "date")) if "date" in reads else ()
    return _Readings(column, values, float_source, reads, *undecided, reads_where=where, deferred=deferred)


EXCEL = "excel"  # time_format for Excel's serial dates: days since 1899-12-30, a fraction the time of day
_EXCEL_DAYS = (1, 2_958_465)  # 1900-01-01 .. 9999-12-31
_EXCEL_SERIALS = (20_000, 80_000)  # 1954 .. 2119: integers that look like Excel dates, named in hints


def _excel_days(values: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """Excel serial dates (``45366`` is 2024-03-15, ``45366.5`` its noon), as numbers or text
    (a decimal comma too), to the nearest second: a time of day written with six decimals
    (``45366.041667``, 01:00) is 29 ms off it, and would be off an hourly grid; null outside
    Excel's calendar."""
    days = values.str.strip_chars().str.replace(",", ".", literal=True) if dtype == pl.Utf8 else values
    days = days.cast(pl.Float64, strict=False)
    seconds = (days * 86_400).round(0).cast(pl.Int64, strict=False)
    at = pl.lit(dt.datetime(1899, 12, 30)).cast(pl.Datetime("us")) + pl.duration(seconds=seconds)
    return pl.when(days.is_between(*_EXCEL_DAYS)).then(at)


def _epoch_fractions(numbers: pl.Expr) -> pl.Expr:
    """Unix times in seconds with a fraction (``1700000000.421``, as Python's ``time.time()``
    and many devices write them), to the microsecond; null outside ``EPOCH_SECONDS``."""
    micros = (numbers * 1_000_000).round(0).cast(pl.Int64, strict=False)
    return pl.when(numbers.is_between(*EPOCH_SECONDS, closed="left")).then(pl.from_epoch(micros, time_unit="us"))


def _epoch_seconds_choice(data: pl.LazyFrame, numbers: pl.Expr, present: int) -> _Choice | None:
    """Unix seconds with a fraction, when they are more than half of the values; else None."""
    seconds = _epoch_fractions(numbers)
    n_seconds = data.select(seconds.is_not_null().sum()).collect().item()
    if n_seconds * 2 > present:
        return _Choice(seconds, "datetime", "Unix times in seconds (1700000000.421)", n_seconds)
    return None


def _epoch(ints: pl.Expr, low: int, high: int, unit: str) -> pl.Expr:
    """Unix times in ``unit``, only in their range: others would overflow microseconds."""
    return pl.when(ints.is_between(low, high - 1)).then(pl.from_epoch(ints, time_unit=unit).dt.cast_time_unit("us"))


def _integers(n: dict[str, int], column: str, frequency: str | None, prefer: str | None) -> tuple[str, str]:
    """Integers are a period index (``frequency: period``, or not all 4-digit), calendar times
    (mostly ``YYYYMMDD`` dates, or mostly Unix seconds or milliseconds: a stray ``0`` is a bad
    row, dropped and counted, not a reason to read every key as a period index), or calendar years."""
    if frequency == "period" or (frequency is None and prefer == "period"):
        return "int", "integers"
    if n["ymd"] * 2 > n["int"]:
        return "ymd", "dates as YYYYMMDD"
    if n["ym"] * 2 > n["int"]:
        return "ym", "months as YYYYMM"
    for _, unit, name in _EPOCHS:
        if n[name] * 2 > n["int"]:
            return name, f"Unix time ({unit})"
    as_years = frequency == "yearly" or prefer in ("date", "datetime")
    if frequency is None and not as_years:
        as_years = n["years"] == n["int"]
        if not as_years:
            return "int", "integers"
    if not as_years:
        excel = (
            "'time_format: excel' for Excel's serial dates (45366 is 2024-03-15), " if n["excel"] * 2 > n["int"] else ""
        )
        raise FileRejected(
            f"time column {column!r} holds integers, which cannot be read as {frequency} times; set {excel}"
            "'time_format' (e.g. '%Y%m%d' for 20190131, '%Y%m' for 201901) or 'frequency: period'"
        )
    return "years", f"years ({YEARS[0]}-{YEARS[1]})"


class _Choice(NamedTuple):
    """The reading a time column's values follow (:func:`_choose`)."""

    parsed: pl.Expr
    kind: str
    expected: str  # its description, for messages
    n_read: int  # how many values it reads
    day_first: bool | None = None  # the order numeric dates show (TimeRule.day_first)


def _choose(
    data: pl.LazyFrame,
    r: _Readings,
    stats: dict,
    time_format: str | None,
    frequency: str | None,
    prefer: str | None,
    day_first: bool | None,
) -> _Choice:
    """The reading the column's values follow."""
    present, n = stats["present"], {name: stats[f"n_{name}"] for name in r.reads if name not in r.deferred}

    def reading(name: str, expected: str) -> _Choice:
        return _Choice(*r.reads[name], expected, n[name])

    if "local_days" in r.reads and n["local_days"] == present:
        # every value midnight where it was recorded: days, which UTC would move to the evening before
        return reading("local_days", "dates")
    if "typed" in r.reads:
        return reading("typed", "dates")
    if "format" in r.reads:
        return reading("format", f"in time_format {time_format!r}")
    expected = (
        "ISO-8601 dates or datetimes, weeks (2024-W05), months (2024-01, Jan 2024), quarters (2024Q1) or integers"
    )
    if "date" in r.reads:  # text
        if n["date"] == present:
            return reading("date", expected)
        if n["int"] * 2 <= present:  # neither dates nor integers: ISO weeks or datetimes
            return _weeks_or_datetimes(data, r, present, n["date"], expected, day_first)
    if r.deferred:  # mostly integers written as text: which kind, in a pass of its own
        counted = data.select(**r.counts(r.deferred)).collect().row(0, named=True)
        n |= {name: counted[f"n_{name}"] for name in r.deferred}
    return reading(*_integers(n, r.column, frequency, prefer))


# Month names and abbreviations as exports write them (lower case, without a trailing dot), in
# English, German, French, Spanish, Italian, Dutch and Portuguese: no two languages give one word
# two months (French juin/juillet share 'jui', so whole words, never a prefix, are looked up).
_MONTH_WORDS = {
    1: "jan january januar jän jänner janv janvier ene enero gen gennaio januari janeiro",
    2: "feb february februar fév fev févr fevr février fevrier febr febrero febbraio februari fevereiro",
    3: "mar march märz maerz mär mrz mars marzo maart mrt março marco",
    4: "apr april avr avril abr abril aprile",
    5: "may mai mayo mag maggio mei maio",
    6: "jun june juni juin junio giu giugno junho",
    7: "jul july juli juil juillet julio lug luglio julho",
    8: "aug august août aout aoû aou ago agosto augustus",
    9: "sep sept september septembre septiembre setiembre set settembre setembro",
    10: "oct october okt oktober octobre octubre ott ottobre out outubro",
    11: "nov november novembre noviembre novembro",
    12: "dec december dez dezember déc décembre decembre dic diciembre dicembre dezembro",
}
_MONTH_NAMES = {word: month for month, words in _MONTH_WORDS.items() for word in words.split()}
_MONTH = r"^(\d{4})[-/](\d{1,2})$"  # 2024-01, 2024/1: the first day of that month
_QUARTER = r"^(\d{4})\s*-?\s*[Qq](\d)$"  # 2024Q1, 2024-Q1, 2024 q1: the first day of that quarter
_QUARTER_FIRST = r"^[Qq](\d)\s*[-/ ]?\s*(\d{4})$"  # Q1 2024, Q1-2024


def _months(text: pl.Expr) -> pl.Expr:
    parts = text.str.extract_groups(_MONTH)
    year, month = parts.struct.field("1").cast(pl.Int32), parts.struct.field("2").cast(pl.Int32)
    return pl.when(month.is_between(1, 12)).then(pl.date(year, month, 1))


# a word that starts like a month: "Janx 2024" has a month's shape (and is unparseable), "soon12" none
_MONTH_WORD = rf"(?i:{'|'.join(sorted({w[:3] for w in _MONTH_NAMES}))})\p{{L}}{{0,8}}"
_MONTH_NAME = rf"^({_MONTH_WORD})\.?[-\s/']?\s*(\d{{4}}|\d{{2}})$"  # Jan 2024, January-2024, Jan-24 (Excel's mmm-yy)
_MONTH_NAME_LAST = rf"^(\d{{4}})[-\s/]\s*({_MONTH_WORD})$"  # 2024-Jan, 2024 January


def _month_number(name: pl.Expr) -> pl.Expr:
    """1-12 for a month name or abbreviation of ``_MONTH_WORDS`` (any case), null for another word."""
    word = name.str.to_lowercase().str.strip_chars_end(".")  # Sept., févr.
    return word.replace_strict(_MONTH_NAMES, default=None, return_dtype=pl.Int64)


def _month_names(text: pl.Expr) -> pl.Expr:
    """Month names or abbreviations (``_MONTH_WORDS``) with a year: the first day of that month. A
    two-digit year never lands in the future, as with ``%y`` (``Mar-24`` is 2024, ``Dec-99`` 1999)."""
    first, last = text.str.extract_groups(_MONTH_NAME), text.str.extract_groups(_MONTH_NAME_LAST)
    name = pl.coalesce(first.struct.field("1"), last.struct.field("2"))
    year = pl.coalesce(first.struct.field("2"), last.struct.field("1"))
    two_digits = year.str.len_chars() == 2
    number = year.cast(pl.Int32) + pl.when(two_digits).then(2000).otherwise(0)
    month = _month_number(name)  # null for "Janx": no month
    day = pl.date(number, month, 1)
    return pl.when(month.is_not_null()).then(pl.when(two_digits).then(_past_century(day)).otherwise(day))


def _quarters(text: pl.Expr) -> pl.Expr:
    after, before = text.str.extract_groups(_QUARTER), text.str.extract_groups(_QUARTER_FIRST)
    year = pl.coalesce(after.struct.field("1"), before.struct.field("2")).cast(pl.Int32)
    quarter = pl.coalesce(after.struct.field("2"), before.struct.field("1")).cast(pl.Int32)
    return pl.when(quarter.is_between(1, 4)).then(pl.date(year, 3 * quarter.clip(1, 4) - 2, 1))


# Text periods, each read when more than half of a file's values have its shape (the shapes
# are disjoint, so at most one can be): (description, shape, reading).
_TEXT_PERIODS = (
    ("ISO weeks (YYYY-Www)", _ISO_WEEK, _iso_weeks),
    ("months (YYYY-MM)", _MONTH, _months),
    ("months (Jan 2024)", f"{_MONTH_NAME}|{_MONTH_NAME_LAST}", _month_names),
    ("quarters (YYYY-Qn)", f"{_QUARTER}|{_QUARTER_FIRST}", _quarters),
)


# Dates as spreadsheets and locales write them, with a time of day or none (12-hour clocks too).
_CLOCK = r"(?:[ T]+(\d{1,2}):(\d{2})(?::(\d{2})(?:[.,]\d+)?)?(?:\s*([AaPp])\.?[Mm]\.?)?)?$"
_NUMERIC_DATE = r"^(\d{1,2})([/.\-])(\d{1,2})[/.\-](\d{4}|\d{2})" + _CLOCK  # 15/03/2024, 03/15/24, 15.03.2024
_YEAR_FIRST = r"^(\d{4})[/.](\d{1,2})[/.](\d{1,2})" + _CLOCK  # 2024/03/15, 2024.03.15
# 15-Mar-2024, 15MAR2024, and Spanish and Portuguese '15 de marzo de 2024', '1 de mar. del 2024'
_OF = r"(?:(?i:de|del)\s+)?"
_DAY_NAMED = rf"^(\d{{1,2}})[-\s/.]*{_OF}({_MONTH_WORD})\.?[-\s/.,]*{_OF}(\d{{4}}|\d{{2}})" + _CLOCK
_NAMED_DAY = rf"^({_MONTH_WORD})\.?\s+(\d{{1,2}})(?:st|nd|rd|th)?,?\s+(\d{{4}})" + _CLOCK  # Mar 15, 2024


def _clock(parts: pl.Expr, first: int, day: pl.Expr) -> pl.Expr:
    """A datetime from a date and the clock groups from ``first`` on (hour, minute, second,
    a or p); midnight without them; null for a clock that is none (25:00, 13 PM)."""
    hour, minute, second, half = (parts.struct.field(str(first + i)) for i in range(4))
    hour, minute = hour.cast(pl.Int32), minute.cast(pl.Int32)
    second, half = second.cast(pl.Int32).fill_null(0), half.str.to_lowercase()
    valid = pl.when(half.is_null()).then(hour <= 23).otherwise(hour.is_between(1, 12)) & (minute <= 59)
    hour = pl.when(half == "p").then(hour % 12 + 12).when(half == "a").then(hour % 12).otherwise(hour)
    time = pl.duration(hours=hour, minutes=minute, seconds=second)
    at = day.cast(pl.Datetime("us"))
    return pl.when(hour.is_null()).then(at).when(valid & (second <= 59)).then(at + time)


def _calendar_day(year: pl.Expr, month: pl.Expr, day: pl.Expr) -> pl.Expr:
    """The date of text year, month and day groups, null for none (31 April); two-digit years
    never land in the future, as with ``%y``."""
    two_digits = year.str.len_chars() == 2
    number = year.cast(pl.Int32) + pl.when(two_digits).then(2000).otherwise(0)
    text = pl.format("{}-{}-{}", number, month.cast(pl.Utf8).str.zfill(2), day.str.zfill(2))
    date = text.str.to_date("%Y-%m-%d", strict=False)
    return pl.when(two_digits).then(_past_century(date)).otherwise(date)


def _written_dates(
    data: pl.LazyFrame, text: pl.Expr, counts: dict[str, int], present: int, column: str, day_first: bool | None
) -> tuple | None:
    """Dates written as locales write them, when most values have one such shape (``counts``):
    15/03/2024 or 03/15/2024 (whether the day or the month comes first, the file's values show:
    a first number above 12 is a day, a second one above 12 too; dotted dates, 15.03.2024, are
    day first; else the order other files showed, ``day_first``), 2024/03/15, 15-Mar-2024 and
    Mar 15, 2024, each with a time of day or none. (parsed, kind, description, the order the
    file's own numbers show) or None; FileRejected when the order cannot be told
    (DayOrderUnknown when only other files could tell it)."""
    if counts["year_first"] * 2 > present:
        parts = text.str.extract_groups(_YEAR_FIRST)
        g = parts.struct.field
        day = _calendar_day(g("1"), g("2"), g("3"))
        return *_with_clock(data, parts, 4, day, "dates (2024/03/15)"), None
    if counts["named"] * 2 > present:
        first, last = text.str.extract_groups(_DAY_NAMED), text.str.extract_groups(_NAMED_DAY)
        month = _month_number(pl.coalesce(first.struct.field("2"), last.struct.field("1")))
        year = pl.coalesce(first.struct.field("3"), last.struct.field("3"))
        day = _calendar_day(year, month, pl.coalesce(first.struct.field("1"), last.struct.field("2")))
        parts = pl.when(first.struct.field("1").is_not_null()).then(first).otherwise(last)
        return *_with_clock(data, parts, 4, day, "dates (15-Mar-2024, Mar 15, 2024)"), None
    if counts["numeric"] * 2 <= present:
        return None
    parts = text.str.extract_groups(_NUMERIC_DATE)
    a, b = parts.struct.field("1"), parts.struct.field("3")
    asked = (
        data.select(
            day_first=(a.cast(pl.Int32) > 12).any(),
            month_first=(b.cast(pl.Int32) > 12).any(),
            dotted=(parts.struct.field("2") == ".").sum(),
            shown=text.filter(parts.struct.field("1").is_not_null()).first(),
        )
        .collect()
        .row(0, named=True)
    )
    shown = True if asked["day_first"] else False if asked["month_first"] else None
    if asked["day_first"] and asked["month_first"]:
        raise FileRejected(
            f"time column {column!r}: some dates give the day first (a first number above 12) and others the month "
            "(a second number above 12); set 'time_format' to the one export's layout, e.g. '%d/%m/%Y'"
        )
    order, told = shown, ""
    if order is None and asked["dotted"] * 2 > counts["numeric"]:
        order = True  # 15.03.2024: written so where the day comes first
    elif order is None and day_first is not None:
        order, told = day_first, " as the use case's other landing files show"
    if order is None:
        raise DayOrderUnknown(
            f"time column {column!r}: {asked['shown']!r} could be day/month or month/day, and no date of the file "
            "shows which (none has a number above 12 before or after the first separator); set 'time_format': "
            "'%d/%m/%Y' (day first) or '%m/%d/%Y' (month first), with '%y' for two-digit years (under 'source' or "
            "'scoring_source' when only that source's files are written so)"
        )
    day, month = (a, b) if order else (b, a)
    described = ("dates, day first" if order else "dates, month first") + told
    described += " (15/03/2024)" if order else " (03/15/2024)"
    return *_with_clock(data, parts, 5, _calendar_day(parts.struct.field("4"), month, day), described), shown


def _written_counts(data: pl.LazyFrame, text: pl.Expr) -> dict[str, int]:
    """How many values have each shape :func:`_written_dates` reads."""
    written = {"numeric": _NUMERIC_DATE, "year_first": _YEAR_FIRST, "named": f"{_DAY_NAMED}|{_NAMED_DAY}"}
    return (
        data.select(text.str.contains(shape).sum().alias(name) for name, shape in written.items())
        .collect()
        .row(0, named=True)
    )


def _with_clock(data: pl.LazyFrame, parts: pl.Expr, first: int, day: pl.Expr, described: str) -> tuple:
    """(parsed, kind, description): datetimes when any value has a time of day, else dates."""
    timed = data.select(parts.struct.field(str(first)).is_not_null().any()).collect().item()
    return (_clock(parts, first, day), "datetime", described) if timed else (day, "date", described)


_LOCAL_MIDNIGHT = r"^\d{4}-\d{2}-\d{2}[T ]00:00(:00(\.0+)?)?\s*(Z|[+-]\d{2}(:?\d{2})?)$"  # 2024-03-31 00:00:00+02:00
_PREFIXED_INDEX = r"^[A-Za-z]+_(\d{1,9})$"  # d_1: M5's day index


def _prefixed(text: pl.Expr) -> pl.Expr:
    return text.str.extract(_PREFIXED_INDEX, 1).cast(pl.Int64, strict=False)


def _weeks_or_datetimes(
    data: pl.LazyFrame, r: _Readings, present: int, n_dates: int, expected: str, day_first: bool | None
) -> _Choice:
    """Text that is neither all ISO dates nor mostly integers: ISO weeks, months or quarters
    when most values are, else ISO datetimes (with any dates among them), each layout counted
    in a pass of its own and only while some values are left unread, as parsing a layout costs
    about 0.35 µs a value; when those read at most half, dates as locales write them
    (:func:`_written_dates`)."""
    shapes = [r.text.str.contains(shape).sum().alias(str(i)) for i, (_, shape, _) in enumerate(_TEXT_PERIODS)]
    shapes += [r.text.str.contains(_LOCAL_MIDNIGHT).sum().alias("local"), _prefixed(r.text).is_not_null().sum()]
    *shaped, n_local, n_prefixed = data.select(shapes).collect().row(0)
    for (described, _, reading), n_shaped in zip(_TEXT_PERIODS, shaped, strict=True):
        if n_shaped * 2 > present:  # no other layout can read most values: this one, or a rejection naming it
            periods = reading(r.text)
            return _Choice(periods, "date", described, data.select(periods.is_not_null().sum()).collect().item())
    if n_prefixed * 2 > present:  # d_1 .. d_1941 (M5): a period index with a name, never years
        return _Choice(_prefixed(r.text), "period", "period indexes (d_1, t_12)", n_prefixed)
    if n_local == present:  # every value midnight where it was recorded: days, not the evening before in UTC
        days = r.text.str.slice(0, 10).str.to_date("%Y-%m-%d", strict=False)
        return _Choice(days, "date", "dates at local midnight", data.select(days.is_not_null().sum()).collect().item())
    dates = r.reads["date"][0]
    used, n_read = [dates.cast(pl.Datetime("us"))] if n_dates else [], n_dates
    for parsed in r.datetimes:
        if n_read == present:  # every value is read: the later layouts would read none
            break
        unread = pl.all_horizontal([dates.is_null(), *(u.is_null() for u in used)])
        n = data.select((unread & parsed.is_not_null()).sum()).collect().item()
        if n:
            used, n_read = [*used, parsed], n_read + n
    if n_read * 2 <= present:  # not ISO: Unix seconds with a fraction, as text, or dates as locales write them
        seconds = _epoch_seconds_choice(data, r.text.cast(pl.Float64, strict=False), present)
        if seconds is not None:
            return seconds
        found = _written_dates(data, r.text, _written_counts(data, r.text), present, r.column, day_first)
        if found is not None:
            parsed, kind, described, shown = found
            return _Choice(parsed, kind, described, data.select(parsed.is_not_null().sum()).collect().item(), shown)
    elif n_read < present:  # mostly ISO: the rest may be one locale's dates (a tool changed, rows were retyped)
        unread = r.text.is_not_null() & pl.all_horizontal([dates.is_null(), *(u.is_null() for u in used)])
        rest = data.filter(unread)
        n_rest = rest.select(pl.len()).collect().item()
        try:
            found = _written_dates(rest, r.text, _written_counts(rest, r.text), n_rest, r.column, day_first)
        except FileRejected:  # their day/month order unknown: unparseable rows, counted
            found = None
        if found is not None:
            parsed, kind, described, shown = found
            n = data.select((unread & parsed.is_not_null()).sum()).collect().item()
            both = f"{expected}, and {described}"
            if n_read == n_dates and kind == "date":  # dates in two layouts: still dates
                return _Choice(pl.coalesce(dates, parsed), "date", both, n_read + n, shown)
            return _Choice(pl.coalesce([*used, parsed.cast(pl.Datetime("us"))]), "datetime", both, n_read + n, shown)
    if n_read == n_dates:  # no datetime at all
        return _Choice(*r.reads["date"], expected, n_dates)
    return _Choice(pl.coalesce(used), "datetime", expected, n_read)


def time_rule(
    data: pl.LazyFrame,
    *,
    column: str,
    time_format: str | None = None,
    frequency: str | None = None,
    prefer: str | None = None,
    day_first: bool | None = None,
    stats: dict | None = None,
) -> TimeRule:
    """Decide how one file's time column reads (rules: docs/use-cases.md#time-columns), from
    counts over all of its rows: usually one pass, which :func:`file_rules` shares with its other
    questions (``stats``: the answers to ``_readings(...).asks()``, already collected).

    ``prefer`` is the kind an earlier landing file of the use case gave: it settles integers
    that could be years or periods, and a file of another kind is rejected. ``day_first`` is the
    order the use case's other files' numeric dates show, for a file whose own show none. Raises
    :class:`FileRejected` when more than half of the non-null values do not parse.
    """
    dtype = data.collect_schema()[column]
    r = _readings(column, dtype, time_format)
    if stats is None:
        stats = data.select(**r.asks()).collect().row(0, named=True)
    if stats["rows"] and not stats["present"]:
        raise FileRejected(f"time column {column!r} holds no values")
    choice = None
    if stats.get("fractional") and time_format is None:  # Unix seconds with a fraction, or no time
        choice = _epoch_seconds_choice(data, r.float_source, stats["present"])
    if stats.get("fractional") and choice is None:
        finite = r.float_source.is_finite()
        fractional = finite & (r.float_source != r.float_source.round(0))
        raise FileRejected(
            f"time column {column!r} holds non-integer numbers (e.g. {_examples(data, r.float_source, fractional)})"
        )
    choice = choice or _choose(data, r, stats, time_format, frequency, prefer, day_first)
    parsed, kind, expected, n_read = choice[:4]
    present, n_failed = stats["present"], stats["present"] - n_read
    if n_failed * 2 > present:
        hint = "set 'time_format' (strftime, e.g. '%d/%m/%Y') to read this layout"
        if expected.startswith("years"):
            hint = "set 'frequency: period' to read them as a period index, or 'time_format'"
        elif time_format:
            hint = "fix 'time_format' (strftime), or remove it: ISO dates, weeks, months and quarters read without one"
        failed = r.source.is_not_null() & parsed.is_null()
        raise FileRejected(
            f"time column {column!r}: {n_failed} of {present} values are not {expected} "
            f"(e.g. {_examples(data, r.source, failed)}); {hint}"
        )
    if time_format == EXCEL and not data.select((parsed != parsed.dt.truncate("1d")).any()).collect().item():
        parsed, kind = parsed.dt.date(), "date"  # whole serials: days, as Excel shows them
    _check_kind(column, kind, prefer)
    if kind == "datetime" and frequency in _FLOORS:  # declared: a time of day below it is no other period
        parsed = parsed.dt.truncate(_FLOORS[frequency])
    return TimeRule(kind, column, dtype, parsed.alias(column), r.source.is_not_null(), choice.day_first)


# Declared frequencies whose period a datetime is floored to: invoices at 08:26 and 14:02 are
# one day's rows of a daily use case (the duplicates policy then adds them up, or says so).
# Weekly and longer periods are anchored by the data (a Sunday week), so they are not floored.
_FLOORS = {"hourly": "1h", "daily": "1d", "business_daily": "1d"}


def _examples(data: pl.LazyFrame, source: pl.Expr, failed: pl.Expr) -> str:
    shown = data.filter(failed).select(source.cast(pl.Utf8).alias("v")).unique(maintain_order=True).head(2)
    return ", ".join(repr(v) for v in shown.collect()["v"].to_list())


def parse_time(
    values: pl.Series,
    *,
    column: str,
    time_format: str | None = None,
    frequency: str | None = None,
    prefer: str | None = None,
    day_first: bool | None = None,
) -> ParsedTime:
    """One time column, parsed by the rule its own values give (:func:`time_rule`)."""
    frame = values.alias(column).to_frame()
    rule = time_rule(
        frame.lazy(), column=column, time_format=time_format, frequency=frequency, prefer=prefer, day_first=day_first
    )
    out = rule.apply(frame)
    return ParsedTime(out[column], rule.kind, out[DROP])


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
    ``store id``), when exactly one header is. ``Unnamed: 0`` is an empty header in that place,
    as pandas names it (``to_csv`` writes a frame's index so, a time index included)."""
    present = set(header)
    names: dict[str, str] = {}
    for name in dict.fromkeys(wanted):
        if name in present:
            names[name] = name
            continue
        unnamed = re.fullmatch(r"Unnamed: (\d+)", name)  # pandas' name for a header left empty
        if unnamed and int(unnamed[1]) < len(header) and not header[int(unnamed[1])].strip():
            names[header[int(unnamed[1])]] = name
            continue
        folded = name.strip().casefold()
        near = [h for h in header if h.strip().casefold() == folded and h not in names]
        if len(near) == 1:
            names[near[0]] = name
    return names


LEADING_ZEROS = r"^0+(\d+)$"  # digits only: key_leading_zeros 'strip' keeps the group ('007' -> '7')
_FLOAT_INTEGER = r"^(-?\d+)\.0+$"  # 12.0: an integer id as pandas writes a column of them with gaps


def key_values(
    keys: Sequence[str],
    schema: pl.Schema | dict | None = None,
    float_text: Sequence[str] = (),
    unpadded: Sequence[str] = (),
) -> list[pl.Expr]:
    """Key columns as key text: surrounding spaces stripped (``"a "`` is ``"a"``, as padded
    fixed-width exports write it), and an empty value is a missing one. Case and leading
    zeros are kept: ``A``/``a`` and ``0012``/``12`` stay different keys, except in the columns of
    ``unpadded`` (``key_leading_zeros: strip``), where digits lose their leading zeros. A float column
    (pandas writes an integer id column with gaps as floats) gives ``12`` for ``12.0``, and
    NaN is missing, so the key matches the same id from an integer or text file; so does a
    text column of ``float_text`` (:func:`float_written_keys`: a CSV of such floats). Text
    that is one string written two ways is one key: Unicode's composed and decomposed forms
    (``Zürich`` from Windows and from macOS) are composed (NFC), and Excel's way of keeping
    leading zeros, ``="0012"``, is ``0012``."""
    out = []
    for k in keys:
        column = pl.col(k)
        if schema is not None and schema[k].is_float():
            column = float_id_text(column)
        text = column.cast(pl.Utf8).str.strip_chars().map_batches(_one_spelling, return_dtype=pl.Utf8)
        if k in float_text:
            text = text.str.replace(_FLOAT_INTEGER, "${1}")
        if k in unpadded:  # '007' is '7', '000' is '0'; 'A007' and '-07' are not digits only
            text = text.str.replace(LEADING_ZEROS, "${1}")
        out.append(pl.when(text.str.len_bytes() > 0).then(text).alias(k))
    return out


def float_id_text(number: pl.Expr) -> pl.Expr:
    """Floats as the text of an id or a class: a whole one as its integer (pandas writes integers
    with a gap as floats: 12.0 is '12', and 1e16 is '10000000000000000', not '1e+16'); NaN is none."""
    number = number.fill_nan(None)
    whole = (number == number.floor()) & (number.abs() < 2.0**63)
    return pl.when(whole).then(number.cast(pl.Int64, strict=False).cast(pl.Utf8)).otherwise(number.cast(pl.Utf8))


def _one_spelling(values: pl.Series) -> pl.Series:
    """Key text written one way: composed Unicode (NFC), Excel's ``="0012"`` as ``0012``. Each
    costs about a quarter of a microsecond a value, so it runs only on a batch that needs it
    (non-ASCII text, a value starting ``="``): most keys are neither."""
    if (values.str.len_bytes() != values.str.len_chars()).any():
        values = values.str.normalize("NFC")
    if values.str.starts_with('="').any():
        values = values.str.replace(r'^="(.*)"$', "${1}")
    return values


def _float_written(column: str) -> pl.Expr:
    """Whether a text key column holds integers written as floats only (``12.0``, ``7.0``):
    what pandas writes for an id column with gaps. Decided over a whole file, so ``12.0``
    next to ``12.5`` stays as written."""
    text = pl.col(column).cast(pl.Utf8).str.strip_chars()
    written = text.str.len_bytes() > 0
    return ((text.str.contains(_FLOAT_INTEGER) | ~written).all() & written.any()).fill_null(False)


def float_written_keys(frame: pl.DataFrame, keys: Sequence[str]) -> tuple[str, ...]:
    """The text key columns of a file (or of its distinct key values) holding floats written for integers."""
    text = [k for k in keys if frame.schema[k] == pl.Utf8]
    if not text:
        return ()
    found = frame.select(_float_written(k) for k in text).row(0)
    return tuple(k for k, yes in zip(text, found, strict=True) if yes)


_THOUSANDS = r"^[+-]?[1-9]\d{0,2}(,\d{3})+(\.\d*)?$"  # 1,234.5 (0,125 is no thousands)
_THOUSANDS_DC = r"^[+-]?[1-9]\d{0,2}(\.\d{3})+(,\d*)?$"  # 1.234,5 (decimal comma)
_DECIMAL_COMMA = r"^[+-]?\d*,\d+$"  # 3,5


# What exports write for a missing value, in any case and with spaces around: read as missing
# in numeric text (features and targets), never as a value that is "not a number".
MISSING_TOKENS = (
    *("", "na", "n/a", "#n/a", "nan", "null", "none", "nil", "missing", "-", "--", "?", "."),
    *("\\n", "(null)", "<null>"),  # MySQL's \N, psql's and other clients' nulls
    *("#div/0!", "#value!", "#num!", "#ref!", "#name?", "#null!"),  # Excel's errors: no value
)


def is_written(values: pl.Expr, dtype: pl.DataType = pl.Utf8) -> pl.Expr:
    """Whether a value is there: not null, and (text) not a token for a missing one (``NA``,
    ``N/A``, ``null``, ``-``, ``?``, ...)."""
    if dtype != pl.Utf8:
        return values.is_not_null()
    return values.is_not_null() & ~values.str.strip_chars().str.to_lowercase().is_in(MISSING_TOKENS)


_ACCOUNTING_NEGATIVE = r"^\((.*)\)$"  # (1,234.50): -1234.5, as accounting exports write a loss
_TRAILING_MINUS = r"^([\d.,\s]*\d)-$"  # 12.50-: -12.5, as SAP exports write a negative
_CURRENCY_FIRST = r"^([+-]?)\s*[$€£¥]\s*"  # $1,234.50, -$12, € 3,5
_CURRENCY_OR_PERCENT_LAST = r"\s*[$€£¥%]$"  # 12 €, 12%
_SPACED_THOUSANDS = r"^[+-]?\d{1,3}([ \u00a0\u202f]\d{3})+([.,]\d*)?$"  # 12 035,88 (fr, sv, pl: a (thin) space)


def _number_parts(text: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    """(whether the text writes a negative, its digits and separators with the rest taken off:
    spaces, currency, percent, the accounting, SAP and typographic ways of a minus)."""
    t = text.str.strip_chars().str.replace("\u2212", "-", literal=True)  # a typographic minus (U+2212)
    negative = t.str.contains(_ACCOUNTING_NEGATIVE) | t.str.contains(_TRAILING_MINUS)
    t = t.str.replace(_ACCOUNTING_NEGATIVE, "${1}").str.replace(_TRAILING_MINUS, "${1}").str.strip_chars()
    t = t.str.replace(_CURRENCY_FIRST, "${1}").str.replace(_CURRENCY_OR_PERCENT_LAST, "")
    t = pl.when(t.str.contains(_SPACED_THOUSANDS)).then(t.str.replace_all(r"[ \u00a0\u202f]", "")).otherwise(t)
    return negative, t


def to_number(text: pl.Expr, decimal_comma: bool = False) -> pl.Expr:
    """Numbers written as text, as spreadsheets export them: ``1,234.5`` (or ``1.234,5`` and
    ``3,5`` with a decimal comma), thousands set apart by a space, a no-break or a thin space
    (``12 035,88``), surrounding spaces, a currency symbol ($ € £ ¥) before or
    after, a percent sign (``12%`` is 12, the number written), an accounting negative
    (``(1,234.50)``) or SAP's (``12.50-``), and a flag (``t``/``f``, ``true``/``false``: 1/0);
    anything else that is not a number is null."""
    negative, t = _number_parts(text)
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
    number = t.cast(pl.Float64, strict=False)
    flag = t.str.to_lowercase()  # PostgreSQL's t/f (COPY, psql) and true/false: 1 and 0
    number = pl.coalesce(
        number, pl.when(flag.is_in(["t", "true"])).then(1.0).when(flag.is_in(["f", "false"])).then(0.0)
    )
    return pl.when(negative).then(-number.abs()).otherwise(number)


# What a number shows of its file's decimal mark when the source does not declare it
# (decimal_comma unset): a comma with other than three digits after it (3,5; 0,125), a comma
# after four digits or a lone 0, or after dot groups (1.234,5; 1.234.567), is a decimal comma;
# the same with the separators swapped is a decimal point. 1.234 and 1,234 show nothing.
_SHOWS_DECIMAL = {
    True: r"^[+-]?(\d*,(\d{1,2}|\d{4,})|(0|\d{4,}),\d+|\d{1,3}(\.\d{3})+,\d+|\d{1,3}(\.\d{3}){2,})$",
    False: r"^[+-]?(\d*\.(\d{1,2}|\d{4,})|(0|\d{4,})\.\d+|\d{1,3}(,\d{3})+\.\d+|\d{1,3}(,\d{3}){2,})$",
}
_ONE_GROUP = r"^[+-]?[1-9]\d{0,2}[.,]\d{3}$"  # 1.234 or 1,234: thousands, or a decimal with three digits


# A number whose one separator is followed by exactly three digits (56,300; 1.810) reads as
# thousands, which is right only when the file never writes that separator as a decimal mark:
# (ambiguous, what shows the separator is a decimal mark) for each setting of decimal_comma.
_SEPARATOR_CLASHES = {
    False: (r"^[+-]?[1-9]\d{0,2}(,\d{3})+$", _SHOWS_DECIMAL[True]),
    True: (r"^[+-]?[1-9]\d{0,2}(\.\d{3})+$", _SHOWS_DECIMAL[False]),
}


def _decimal_evidence(columns: Sequence[str]) -> dict[str, pl.Expr]:
    """Whether any of a file's text number ``columns`` shows a decimal comma ("comma"), a decimal
    point ("point"), or writes a number only three digits after one separator ("group")."""
    parts = [_number_parts(pl.col(c))[1] for c in columns]
    found = {"comma": _SHOWS_DECIMAL[True], "point": _SHOWS_DECIMAL[False], "group": _ONE_GROUP}
    return {f"evidence {what}": pl.any_horizontal(t.str.contains(p).any() for t in parts) for what, p in found.items()}


_SEPARATOR_NAMES = {";": "';'", "\t": "tab", "|": "'|'"}


def _first_number(data: pl.LazyFrame, columns: Sequence[str], shape: str) -> tuple[str, str]:
    """(column, value): the first number of ``columns`` (as :func:`_number_parts` leaves it)
    with ``shape``, for a message; the caller knows one exists."""
    for c in columns:
        t = _number_parts(pl.col(c))[1]
        value = data.select(t.filter(t.str.contains(shape)).first()).collect().item()
        if value is not None:
            return c, value
    raise AssertionError(f"no value of {list(columns)} has the shape {shape!r}")


def _undecided_decimal(data: pl.LazyFrame, columns: Sequence[str], separator: str) -> FileRejected:
    """A file separated otherwise than by ',' (';' and tab are European exports' separators)
    whose numbers do not show whether ``1.234`` is 1234 or 1.234: a guess would be a thousand
    times off half the time."""
    c, value = _first_number(data, columns, _ONE_GROUP)
    digits = value.replace(".", "").replace(",", "")
    as_comma, as_point = (digits, value) if "." in value else (value.replace(",", "."), digits)
    return FileRejected(
        f"column {c!r} writes {value!r}: {as_comma} with a decimal comma, {as_point} with a decimal point, and no "
        f"number in this {_SEPARATOR_NAMES.get(separator, repr(separator))}-separated file shows which it writes; "
        "declare it in the source: "
        "'csv: {decimal_comma: true}' (as European exports write numbers) or 'csv: {decimal_comma: false}'"
    )


def _declared_otherwise(data: pl.LazyFrame, columns: Sequence[str], declared: bool) -> FileRejected:
    """A file whose numbers show only the decimal mark its source declares it does not write (a
    tool writing 1.5 among German exports): read by the declaration, its 1.250 would be 1250, or
    its 3,5 no number."""
    c, value = _first_number(data, columns, _SHOWS_DECIMAL[not declared])
    mark, other = ("a comma", "a point") if declared else ("a point", "a comma")
    return FileRejected(
        f"column {c!r} writes {value!r}, a decimal {other[2:]}, where the source declares {mark} as the decimal "
        f"mark ('csv: {{decimal_comma: {str(declared).lower()}}}'), and no number in the file shows {mark}; "
        "unset 'decimal_comma' so that each file's numbers decide, or give this tool's files a source of their own"
    )


def _separator_clash(column: str, decimal_comma: bool) -> pl.Expr:
    """Whether one file's text column writes a separator both as thousands (``56,300``) and as a
    decimal mark (``0,25``): each value alone reads, the column together cannot be trusted."""
    ambiguous, decimal = _SEPARATOR_CLASHES[decimal_comma]
    text = pl.col(column).str.strip_chars()
    return text.str.contains(ambiguous).any() & text.str.contains(decimal).any()


def _clash_message(data: pl.LazyFrame, column: str, what: str, decimal_comma: bool) -> str:
    ambiguous, decimal = _SEPARATOR_CLASHES[decimal_comma]
    text = pl.col(column).str.strip_chars()
    first = data.select(
        text.filter(text.str.contains(ambiguous)).first().alias("a"),
        text.filter(text.str.contains(decimal)).first().alias("d"),
    )
    a, d = first.collect().row(0)
    sep, other = ("'.'", "','") if decimal_comma else ("','", "'.'")
    fix = (
        "the file writes decimal points: re-export it with decimal commas, or give it a source of its own "
        "without 'decimal_comma'"
        if decimal_comma
        else "set 'csv: {decimal_comma: true}' in the source if the file writes decimal commas"
    )
    return (
        f"{what} {column!r}: {a!r} would read as thousands ({sep} a thousands separator), but the same column "
        f"writes {sep} as a decimal mark ({d!r}), so which numbers are thousands cannot be told; {fix} "
        f"(a decimal mark is {other} with decimal_comma {'on' if decimal_comma else 'off'})"
    )


def _number_hint(examples: Sequence[str], decimal_comma: bool) -> str:
    if not decimal_comma and any(
        re.match(_DECIMAL_COMMA, e.strip()) or re.match(_THOUSANDS_DC, e.strip()) for e in examples
    ):
        return "they look like decimal commas: set 'csv: {decimal_comma: true}' in the source"
    return "strip units and other text in the export, or use a column that holds the number"


def number_columns(spec: UseCaseSpec) -> list[str]:
    """The columns that hold numbers: numeric features, and a forecast's or regression's target."""
    return [*spec.features, *([spec.target] if spec.task in ("forecast", "regression") and spec.target else [])]


def utf16_length(text: pl.Expr) -> pl.Expr:
    """The length of text in UTF-16 code units, as SQL Server's NVARCHAR counts it: a character
    beyond the Basic Multilingual Plane (an emoji, four bytes in UTF-8) counts twice."""
    return text.str.len_chars() + text.str.count_matches(r"[\x{10000}-\x{10FFFF}]")


def _id_columns(spec: UseCaseSpec, scoring: bool) -> list[str]:
    """The columns read as key text: the keys, and a scoring source's row id (``0012`` stays
    ``0012``, a float id ``12.0`` is ``12``, so a row id reads as the user wrote it)."""
    return [*spec.keys, spec.row_id] if scoring and spec.row_id else list(spec.keys)


def required_columns(spec: UseCaseSpec, scoring: bool) -> list[str]:
    """Columns a landing file must hold: all inputs (a time's parts in place of the time),
    except the target in a scoring source, which holds its row id when the use case names one."""
    return [c for c in spec.source_columns(scoring) if not (scoring and c == spec.target)]


_PART_RANGES = {
    "quarter": (1, 4),
    "month": (1, 12),
    "week": (1, 53),
    "day": (1, 31),
    "hour": (0, 23),
    "minute": (0, 59),
}


def _time_part(part: str, column: str) -> tuple[pl.Expr, pl.Expr]:
    """(the part as a number, or null; whether the row holds a value for it). Month names and
    abbreviations (``Jan``, ``January``), ``Q1`` and ``W05`` read as their numbers, ``1.0`` as 1."""
    text = pl.col(column).cast(pl.Utf8).str.strip_chars()
    digits = text.str.replace(r"^[QqWw]", "").str.replace(_FLOAT_INTEGER, "${1}")
    value = digits.cast(pl.Int64, strict=False)
    if part == "month":
        value = pl.coalesce(value, _month_number(text))
    if part in _PART_RANGES:
        low, high = _PART_RANGES[part]
        value = pl.when(value.is_between(low, high)).then(value)
    return value, is_written(text)


def compose_time(data: pl.LazyFrame | pl.DataFrame, spec: UseCaseSpec) -> pl.LazyFrame | pl.DataFrame:
    """``time_column`` made of the time's part columns (``time_parts``) as text the time rule
    reads (``2024-03``, ``2024Q1``, ``2024-W05``, ``2024-03-05 07:30``), the part columns
    dropped. A row with a part that is written but no such part (month 13, ``Foo``) gets text
    naming its parts, which no layout reads: an unparseable time, dropped and counted; a row
    with a part missing gets no time."""
    parts = spec.time_parts
    if not parts:
        return data
    read = {p: _time_part(p, c) for p, c in parts.items()}
    num = {p: v for p, (v, _) in read.items()}

    def two(p: str) -> pl.Expr:
        return num[p].cast(pl.Utf8).str.zfill(2)

    if "quarter" in parts:
        text = pl.format("{}Q{}", num["year"], num["quarter"])
    elif "week" in parts:
        text = pl.format("{}-W{}", num["year"], two("week"))
    elif "day" not in parts:
        text = pl.format("{}-{}", num["year"], two("month"))
    else:
        text = pl.format("{}-{}-{}", num["year"], two("month"), two("day"))
        if "hour" in parts:
            text = pl.format("{} {}:{}", text, two("hour"), two("minute") if "minute" in parts else pl.lit("00"))
    bad = pl.any_horizontal([written & num[p].is_null() for p, (_, written) in read.items()])
    shown = pl.concat_str([pl.format(f"{p}={{}}", pl.col(c).cast(pl.Utf8)) for p, c in parts.items()], separator=" ")
    missing = pl.any_horizontal([~written for _, written in read.values()])
    time = pl.when(bad).then(shown).when(missing).then(pl.lit(None, pl.Utf8)).otherwise(text)
    drop = [c for c in parts.values() if c != spec.time_column]
    return data.with_columns(time.alias(spec.time_column)).drop(drop)


@dataclass(frozen=True)
class FileRules:
    """What a landing file's rows become, decided over the whole file by :func:`file_rules`:
    every row is then normalised alone (:func:`normalise_rows`), so the batches of a file too
    large to hold come out as the whole file would."""

    time: TimeRule | None  # None without a time column
    numbers: tuple[str, ...]  # text features whose every value reads as a number
    float_keys: tuple[str, ...] = ()  # text key columns of integers written as floats (12.0 -> 12)
    decimal_comma: bool = False  # the file's text numbers write a decimal comma (declared, or shown)

    @property
    def time_kind(self) -> str | None:
        return self.time.kind if self.time else None

    @property
    def day_first(self) -> bool | None:
        return self.time.day_first if self.time else None


def _target_number(target: str, dtype: pl.DataType, decimal_comma: bool) -> pl.Expr:
    return to_number(pl.col(target), decimal_comma) if dtype == pl.Utf8 else pl.col(target).cast(pl.Float64)


def declared_decimal_comma(spec: UseCaseSpec, scoring: bool) -> bool | None:
    """The source's decimal mark as declared (True: a comma), None when each file decides."""
    source_spec = spec.scoring_source if scoring and spec.scoring_source else spec.source
    return source_spec.csv.decimal_comma if source_spec.csv else None


def parquet_types(frame: FrameT) -> FrameT:
    """Parquet columns in types ingest reads: BINARY (Hive and older writers store text so) as
    the text it holds, and pandas' Period columns (``dt.to_period('M')`` saved with
    ``to_parquet``: period numbers, 648 for 2024-01) as the dates (datetimes, for periods
    shorter than a day) their periods start at."""
    frame = frame.with_columns(pl.col(pl.Binary).cast(pl.Utf8, strict=False))
    for column, dtype in frame.collect_schema().items():
        if isinstance(dtype, pl.Extension) and dtype.ext_name() == "pandas.period":
            frame = frame.with_columns(_period_starts(frame, column, dtype))
    return frame


def _period_starts(frame: pl.DataFrame | pl.LazyFrame, column: str, dtype: pl.Extension) -> pl.Expr:
    """A pandas Period column's start times, from its period numbers and the frequency pandas
    stores beside them, by pandas itself (a week, a business day or a fiscal quarter each
    number periods their own way); one lookup per distinct period."""
    import warnings

    import pandas as pd

    number = pl.col(column).ext.storage()
    numbers = frame.lazy().select(number.unique().drop_nulls()).collect().to_series()
    freq = json.loads(dtype.ext_metadata() or "{}").get("freq")
    with warnings.catch_warnings():  # pandas deprecates business-day periods, which still read
        warnings.simplefilter("ignore", FutureWarning)
        starts = pd.PeriodIndex.from_ordinals(numbers.to_list(), freq=freq).to_timestamp(how="start")
    # periods of a day or longer are dates, as the same periods written as text read
    dtype = pl.Datetime("us") if re.fullmatch(r"\d*(h|H|min|T|s|S|ms|L|us|U|ns|N)", freq or "") else pl.Date
    starts = pl.Series(list(starts.to_pydatetime()), dtype=pl.Datetime("us")).cast(dtype)
    return number.replace_strict(numbers, starts, default=None, return_dtype=dtype)


def file_rules(
    data: pl.LazyFrame | pl.DataFrame,
    spec: UseCaseSpec,
    *,
    scoring: bool = False,
    prefer: str | None = None,
    separator: str | None = None,
    day_first: bool | None = None,
) -> FileRules:
    """Decide, over all of one landing file's rows, what needs the whole file: how its time
    values read, which text features are numbers, its decimal mark when the source does not
    declare it, and whether it is a file to reject (:class:`FileRejected`). ``data`` may be lazy
    (a file read in batches): these questions are answered in one pass over it, only a rare
    time layout (ISO weeks, datetimes) needs a second. ``separator``: a CSV's field separator;
    ``prefer`` and ``day_first``: what the use case's other files showed (:func:`time_rule`)."""
    data = parquet_types(data.lazy())
    schema = data.collect_schema()
    missing = [c for c in required_columns(spec, scoring) if c not in schema]
    if missing:
        raise FileRejected(f"missing required column(s) {missing}")
    if spec.time_parts:
        data = compose_time(data, spec)
        schema = data.collect_schema()
    declared = declared_decimal_comma(spec, scoring)
    settings = (declared,) if declared is not None else (False, True)  # unset: asked both ways, decided below
    asks: dict[str, pl.Expr] = {}
    numeric_text = [c for c in spec.features if schema.get(c) == pl.Utf8]
    for i, c in enumerate(numeric_text):  # "1,234.5" features become numbers when every value is one
        for dc in settings:
            asks[f"text {i} {dc}"] = (is_written(pl.col(c)) & to_number(pl.col(c), dc).is_null()).any()
            asks[f"clash {i} {dc}"] = _separator_clash(c, dc)
    text_keys = [k for k in _id_columns(spec, scoring) if schema[k] == pl.Utf8]
    for i, k in enumerate(text_keys):
        asks[f"key {i}"] = _float_written(k)
    source_spec = spec.scoring_source if scoring and spec.scoring_source else spec.source
    time_format = source_spec.time_format or spec.time_format  # the source's own, else the use case's
    if spec.time_column:
        readings = _readings(spec.time_column, schema[spec.time_column], time_format)
        asks |= {f"time {k}": v for k, v in readings.asks().items()}
    target, written = spec.target, None
    numeric_target = not scoring and target in schema and spec.task in ("forecast", "regression")
    if numeric_target and schema[target] != pl.Float64:
        written = is_written(pl.col(target), schema[target])
        asks["target present"] = written.sum()
        for dc in settings:
            asks[f"target failed {dc}"] = (written & _target_number(target, schema[target], dc).is_null()).sum()
            if schema[target] == pl.Utf8:
                asks[f"target clash {dc}"] = _separator_clash(target, dc)
    number_text = [*numeric_text, *([target] if numeric_target and schema[target] == pl.Utf8 else [])]
    if number_text:
        asks |= _decimal_evidence(number_text)
    stats = data.select(**asks).collect().row(0, named=True) if asks else {}
    decimal_comma = bool(declared)
    comma, point = stats.get("evidence comma"), stats.get("evidence point")
    if declared is None and number_text:
        decimal_comma = comma and not point
        if separator not in (None, ",") and stats["evidence group"] and not (comma or point):
            raise _undecided_decimal(data, number_text, separator)
    if stats.get(f"target clash {decimal_comma}"):
        raise FileRejected(_clash_message(data, target, "target", decimal_comma))
    for i, c in enumerate(numeric_text):
        if stats[f"clash {i} {decimal_comma}"]:
            raise FileRejected(_clash_message(data, c, "feature", decimal_comma))
    # a file showing only the undeclared mark: its commas are no numbers, or its 1.250 is 1250
    shows_other = declared is not None and number_text and (comma, point) == (not declared, declared)
    if shows_other and (not declared or stats["evidence group"]):
        raise _declared_otherwise(data, number_text, declared)
    # a feature with a value that is not a number stays text: training_set says why
    numbers = tuple(c for i, c in enumerate(numeric_text) if not stats[f"text {i} {decimal_comma}"])
    float_keys = tuple(k for i, k in enumerate(text_keys) if stats[f"key {i}"])
    time = None
    if spec.time_column:
        time = time_rule(
            data,
            column=spec.time_column,
            time_format=time_format,
            frequency=spec.frequency,
            prefer=prefer,
            day_first=day_first,
            stats={k.removeprefix("time "): v for k, v in stats.items() if k.startswith("time ")},
        )
    if written is not None and stats[f"target failed {decimal_comma}"] * 2 > stats["target present"]:
        # more than half of a file's targets not being numbers is a layout to fix, not bad rows
        failed = written & _target_number(target, schema[target], decimal_comma).is_null()
        shown = data.filter(failed).select(pl.col(target).cast(pl.Utf8)).unique(maintain_order=True)
        shown = shown.head(2).collect()[target].to_list()
        raise FileRejected(
            f"target {target!r}: {stats[f'target failed {decimal_comma}']} of {stats['target present']} values are "
            f"not numbers (e.g. {', '.join(repr(v) for v in shown)}); {_number_hint(shown, decimal_comma)}"
        )
    return FileRules(time, numbers, float_keys, decimal_comma)


def without_blank_lines(frame: pl.DataFrame) -> pl.DataFrame:
    """A CSV's rows without its blank lines (trailing empty lines, a line of spaces or of bare
    separators): polars reads them as rows of nulls, which are no rows of the export."""
    blank = [
        pl.col(c).is_null() | (pl.col(c).str.strip_chars() == "") if dtype == pl.Utf8 else pl.col(c).is_null()
        for c, dtype in frame.schema.items()
    ]
    return frame.filter(~pl.all_horizontal(blank)) if blank else frame


def normalise_rows(frame: pl.DataFrame, spec: UseCaseSpec, rules: FileRules, *, scoring: bool = False) -> pl.DataFrame:
    """Rows of one landing file (all of it, or a batch) in bronze types, plus ``__drop``, the
    reason a row is removed, by the file's ``rules``.

    Key and categorical columns become text as they are; the target becomes Float64 for
    forecasts and regressions.
    """
    frame = compose_time(parquet_types(frame), spec)
    ids = _id_columns(spec, scoring)
    frame = frame.select([c for c in dict.fromkeys([*spec.input_columns, *ids]) if c in frame.columns])
    frame = frame.with_columns(
        *key_values(ids, frame.schema, rules.float_keys, spec.unpadded_keys),
        *[_category_text(c) for c in spec.categorical_features if c in frame.columns],
    )
    decimal_comma = rules.decimal_comma
    if rules.numbers:
        frame = frame.with_columns(to_number(pl.col(c), decimal_comma) for c in rules.numbers)
    reasons = pl.when(pl.any_horizontal([pl.col(k).is_null() for k in spec.keys])).then(pl.lit(NULL_KEY))
    if scoring and spec.row_id in frame.columns:  # its id must fit the warehouse's column
        reasons = reasons.when(utf16_length(pl.col(spec.row_id)) > ROW_ID_LENGTH).then(pl.lit(ROW_ID_TOO_LONG))
    if spec.time_column:
        frame = rules.time.apply(frame)
        reasons = reasons.when(pl.col(DROP).is_not_null()).then(pl.col(DROP))
    target = spec.target if spec.target in frame.columns else None
    if target and spec.target_labels:  # the use case's class for each way an export writes it
        frame = frame.with_columns(class_labels(target, frame.schema[target], spec.target_labels))
    if target:
        source = pl.col(target)
        if spec.task in ("forecast", "regression") and frame.schema[target] != pl.Float64:
            as_number = _target_number(target, frame.schema[target], decimal_comma)
            frame = frame.with_columns(as_number, is_written(source, frame.schema[target]).alias("__t_present"))
            text = pl.col("__t_present") & pl.col(target).is_null()
        else:
            text = pl.lit(False)
            if frame.schema[target] == pl.Utf8:  # text labels: " yes" is "yes", "1.0" is "1", "N/A" is no label
                label = source.str.strip_chars().str.replace(_FLOAT_INTEGER, "${1}")
                frame = frame.with_columns(pl.when(is_written(source)).then(label).alias(target))
        if spec.task == "anomaly" and frame.schema[target].is_float():  # NaN: no label, as null
            frame = frame.with_columns(pl.col(target).fill_nan(None))
        if not scoring and spec.task == "anomaly":  # a row without a label still trains the detector
            if frame.schema[target].is_float():
                reasons = reasons.when(source.is_infinite()).then(pl.lit(TARGET_INF))
        elif not scoring:
            reasons = reasons.when(text).then(pl.lit(TARGET_TEXT)).when(source.is_null()).then(pl.lit(TARGET_NULL))
            if frame.schema[target].is_float():
                reasons = reasons.when(source.is_nan()).then(pl.lit(TARGET_NAN))
                reasons = reasons.when(source.is_infinite()).then(pl.lit(TARGET_INF))
    if target and spec.task == "classification" and frame.schema[target] == pl.Utf8:
        # a class the warehouse cannot hold would fail the publish of every key on PostgreSQL
        reasons = reasons.when(utf16_length(pl.col(target)) > LABEL_LENGTH).then(pl.lit(LABEL_TOO_LONG))
    frame = frame.with_columns(reasons.otherwise(pl.lit(None, dtype=pl.Utf8)).alias(DROP))
    if target and spec.task in ("classification", "anomaly") and frame.schema[target].is_float():
        frame = _whole_labels(frame, target)
    return frame.drop("__t_present", strict=False)


def class_labels(column: str, dtype: pl.DataType, target_labels: Mapping[str, Sequence[str]]) -> pl.Expr:
    """A label column as text (a whole float as its integer: 1.0 is '1'; NaN is none), each
    spelling ``target_labels`` lists, up to case and surrounding spaces, as its class: 'Y',
    ' yes' and 1 are one class '1' when the use case says so. Other labels stay as written."""
    text = float_id_text(pl.col(column)) if dtype.is_float() else pl.col(column).cast(pl.Utf8)
    lookup = {s.strip().lower(): label for label, spellings in target_labels.items() for s in spellings}
    written = text.str.strip_chars().str.to_lowercase()
    return written.replace_strict(list(lookup), list(lookup.values()), default=text, return_dtype=pl.Utf8).alias(column)


def _whole_labels(frame: pl.DataFrame, target: str) -> pl.DataFrame:
    """Float class labels that are all whole (0.0/1.0, as pandas writes an integer column with a
    gap) as integers, after the drop reasons (NaN, inf) are set: combined with another file's
    text labels they become "1", the class that file writes, not "1.0", a class of their own."""
    kept = frame.filter(pl.col(DROP).is_null())[target]
    if kept.is_empty() or not all_whole(kept):
        return frame
    return frame.with_columns(pl.col(target).cast(pl.Int64, strict=False))


def all_whole(values: pl.Series) -> bool:
    """Whether every finite value of a float series is a whole number (0.0/1.0: integers as
    pandas writes a column of them with a gap)."""
    finite = values.filter(values.is_finite())
    return bool((finite == finite.round(0)).all())


def _category_text(column: str) -> pl.Expr:
    """A category code as text, one way however the export wrote it: a store type 2 is '2'
    from an integer column, a float one (2.0, as pandas writes integers with a gap) and text
    written '2.0' alike, so a scoring file's 2.0 is no unseen category."""
    return pl.col(column).cast(pl.Utf8).map_batches(whole_number_text, return_dtype=pl.Utf8).alias(column)


def whole_number_text(values: pl.Series) -> pl.Series:
    """Text of whole numbers without a fraction of zeros ('2.0' and '-3.00' as '2' and '-3'),
    on a batch that holds a '.' at all (a regex over every value costs more)."""
    return values.str.replace(_FLOAT_INTEGER, "${1}") if values.str.contains(".", literal=True).any() else values


def normalise_file(
    frame: pl.DataFrame, spec: UseCaseSpec, *, scoring: bool = False, prefer: str | None = None
) -> tuple[pl.DataFrame, str | None]:
    """One whole landing file: its rules, then its rows by them. Returns the frame and its time
    kind; raises :class:`FileRejected`."""
    rules = file_rules(frame, spec, scoring=scoring, prefer=prefer)
    return normalise_rows(frame, spec, rules, scoring=scoring), rules.time_kind


def empty_counts(keys: Sequence[str]) -> pl.DataFrame:
    return pl.DataFrame(schema={**{k: pl.Utf8 for k in keys}, **COUNT_SCHEMA})


def count_rows(rows: pl.DataFrame, keys: Sequence[str], reason: str | pl.Expr, kind: str) -> pl.DataFrame:
    """Rows removed, counted per key, file and reason."""
    if rows.is_empty():
        return empty_counts(keys)
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
    data: pl.DataFrame, spec: UseCaseSpec, *, policy: str | None = None, file_names: Mapping[int, str] | None = None
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
    counts = [count_rows(dropped, keys, pl.col(DROP), "dropped")]
    if not dropped.is_empty():
        data = data.filter(pl.col(DROP).is_null())
    data = data.drop(DROP)
    failures: dict[tuple, str] = {}
    group = same_row(spec, data.columns)
    ran = bool(time) and not data.is_empty() and _has_duplicates(data, group)
    if ran:
        if data[FILE].n_unique() > 1:
            latest = pl.col(FILE) == pl.col(FILE).max().over(group)
            counts.append(count_rows(data.filter(~latest), keys, LATER_FILE, "merged"))
            data = data.filter(latest)
        data, more, failures = _apply_policy(data, spec, policy, file_names or {})
        counts += more
    return Resolved(data, null_rows, rows_in, pl.concat(counts), failures, ran)


def same_row(spec: UseCaseSpec, columns: Sequence[str]) -> list[str]:
    """The columns whose values make rows one row for the later-file rule and the duplicates
    policy: key and time; with a scoring row id, the id too (two customers scored on one day are
    two rows), except in a forecast, whose scoring rows are one row of features per period."""
    group = [*spec.keys, *([spec.time_column] if spec.time_column else [])]
    if spec.row_id in columns and spec.task != "forecast":
        group.append(spec.row_id)
    return group


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
    data: pl.DataFrame, spec: UseCaseSpec, policy: str, file_names: Mapping[int, str]
) -> tuple[pl.DataFrame, list[pl.DataFrame], dict[tuple, str]]:
    keys, time = list(spec.keys), spec.time_column
    group = same_row(spec, data.columns)
    if policy == "keep":
        return data, [], {}
    position = pl.int_range(pl.len()).over(group)
    if policy in ("first", "last"):
        kept = position == 0 if policy == "first" else position == pl.len().over(group) - 1
        reason = f"duplicate (key, time) removed by policy {policy!r}"
        return data.filter(kept), [count_rows(data.filter(~kept), keys, reason, "dropped")], {}
    if policy in ("sum", "mean"):
        dup = pl.len().over(group) > 1
        single, multi = data.filter(~dup), data.filter(dup)
        merged = count_rows(
            multi.filter(position > 0), keys, f"duplicate (key, time) merged by policy {policy!r}", "merged"
        )
        aggs = []
        for col in data.columns:
            if col in (*group, FILE):
                continue
            if col == spec.row_id:  # rows folded into one are no one row: no id of theirs stands for it
                aggs.append(pl.lit(None, dtype=pl.Utf8).alias(col))
            elif col == spec.target and data.schema[col].is_numeric():
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
        where = file_names.get(row["file"], f"file #{row['file']}")
        failures[tuple(row[k] for k in keys)] = (
            f"{row['n']} row(s) repeat a ({', '.join(group)}) of an earlier row in the same landing file "
            f"({where}), e.g. {time}={row['example']}; the duplicates policy is 'error': set 'duplicates' to one "
            f"of {', '.join(p for p in POLICIES if p != 'keep' or spec.task != 'forecast')}"
        )
    failing = per_key.select(keys)
    dropped = count_rows(data.join(failing, on=keys, how="semi"), keys, "key failed: duplicate (key, time)", "dropped")
    return data.join(failing, on=keys, how="anti"), [dropped], failures


def per_key_counts(counts: pl.DataFrame, keys: Sequence[str]) -> pl.DataFrame:
    """keys, reason, kind, n: counts summed over files."""
    return counts.group_by([*keys, "reason", "kind"], maintain_order=True).agg(pl.col("n").sum())


def per_file_counts(counts: pl.DataFrame) -> pl.DataFrame:
    """__file, reason, kind, n: counts summed over keys."""
    return counts.group_by([FILE, "reason", "kind"], maintain_order=True).agg(pl.col("n").sum())
