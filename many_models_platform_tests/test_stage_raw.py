"""The ``raw`` stage over a temporary lake: real files, rejections recorded per use case and never
moved, retries of transient read errors, key discovery, and exact row counts per key and file."""

from __future__ import annotations

import datetime as dt
import gzip
import os
import tempfile
from pathlib import Path

import polars as pl
import pytest
from conftest_core import clear_platform_env, forecast_body, make_spec, regression_body

from many_models_platform.core.keys import encode_key
from many_models_platform.stages import raw
from many_models_platform.stages.base import StageRun, read_state
from many_models_platform.stages.raw import discover_keys, ingest
from many_models_platform.storage.lake import Lake
from many_models_platform.storage.settings import PlatformSettings

D = dt.date


@pytest.fixture(params=["whole", "batches"])
def settings(request, tmp_path, monkeypatch) -> PlatformSettings:
    """Every test here runs twice: landing files read whole, and every file read in batches of
    two rows (a large file's way), which must give the same rows, counts and reasons."""
    clear_platform_env(monkeypatch)
    monkeypatch.setattr(raw, "RETRY_DELAYS", (0.01, 0.01))
    if request.param == "batches":
        monkeypatch.setattr(raw, "BATCHED_FILE_BYTES", -1)
        monkeypatch.setattr(raw, "BATCH_ROWS", 2)
    s = PlatformSettings.from_env(tmp_path / "home")
    s.ensure_local_dirs()
    return s


def land(settings: PlatformSettings, name: str, frame: pl.DataFrame | str) -> Path:
    path = Path(settings.lake_url) / "landing" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(frame, str):
        path.write_text(frame)
    elif name.endswith(".parquet"):
        frame.write_parquet(path)
    else:
        frame.write_csv(path)
    return path


def on_read(monkeypatch, hook) -> None:
    """Call ``hook(path)`` as a landing file is read, whole (``read_table``) or in batches (``open_table``)."""
    read_table, open_table = Lake.read_table, Lake.open_table

    def reading_whole(self, p, *args, **kw):
        hook(p)
        return read_table(self, p, *args, **kw)

    def reading_batches(self, p, *args, **kw):
        hook(p)
        return open_table(self, p, *args, **kw)

    monkeypatch.setattr(Lake, "read_table", reading_whole)
    monkeypatch.setattr(Lake, "open_table", reading_batches)


def run_raw(settings, spec, keys=None):
    keys = discover_keys(spec, Lake(settings.lake_url)) if keys is None else keys
    report = ingest(StageRun(spec, settings, run_id="r1"), keys)
    return report, {o.key: o for o in report.outcomes}


def bronze(settings, spec, key: str, area: str = "bronze") -> pl.DataFrame:
    return pl.read_parquet(Path(settings.lake_url) / area / spec.name / f"{key}.parquet")


def yearly(path: str = "landing/panel/*.csv", name: str = "panel", **kw):
    """A small regression use case over a yearly panel keyed by country."""
    body = regression_body(source={"path": path}, keys=["country"], time_column="year", holdout={"fraction": 0.25})
    return make_spec({**body, **kw}, name=name)


def assert_balanced(info: dict) -> None:
    assert info["rows_in"] == info["rows_out"] + info["rows_dropped"] + info["rows_merged"]
    assert sum(info["drops"].values()) == info["rows_dropped"] + info["rows_merged"]


# --- time columns, end to end ---------------------------------------------------------------
def test_integer_years_in_csv_and_iso_text_in_parquet_reach_bronze_normalised(settings):
    land(settings, "panel/a.csv", "country,year,x1,x2,y\n0012,1980,1,2,3.5\n0012,1981,1,2,4.5\n")
    spec = yearly()
    _, out = run_raw(settings, spec)
    assert out["0012"].ok
    b = bronze(settings, spec, "0012")
    assert b.schema["country"] == pl.Utf8 and b.schema["year"] == pl.Date
    assert b["year"].to_list() == [D(1980, 1, 1), D(1981, 1, 1)]

    events = pl.DataFrame(
        {"country": ["fr", "fr"], "year": ["2020-03-01T10:00:00+01:00", "2020-03-01T11:30:00Z"], "x1": [1, 2]}
    ).with_columns(x2=pl.lit(0.0), y=pl.lit(1.0))
    land(settings, "events/e.parquet", events)
    spec = yearly("landing/events/*.parquet", name="events")
    _, out = run_raw(settings, spec)
    b = bronze(settings, spec, "fr")
    assert b.schema["year"] == pl.Datetime("us") and b["year"].to_list() == [
        dt.datetime(2020, 3, 1, 9),
        dt.datetime(2020, 3, 1, 11, 30),
    ]


def test_two_digit_years_with_time_format_and_tz_aware_parquet(settings):
    land(settings, "panel/a.csv", "country,year,x1,x2,y\nit,63,1,2,3\nit,92,1,2,4\n")
    spec = yearly(time_format="%y")
    run_raw(settings, spec)
    assert bronze(settings, spec, "it")["year"].to_list() == [D(1963, 1, 1), D(1992, 1, 1)]

    aware = pl.DataFrame({"country": ["de"], "year": [dt.datetime(2021, 6, 1, 12)], "x1": [1], "x2": [2], "y": [3.0]})
    land(settings, "tz/a.parquet", aware.with_columns(pl.col("year").dt.replace_time_zone("Europe/Berlin")))
    spec = yearly("landing/tz/*.parquet", name="tz")
    run_raw(settings, spec)
    b = bronze(settings, spec, "de")
    assert b.schema["year"] == pl.Datetime("us", None) and b["year"].to_list() == [dt.datetime(2021, 6, 1, 10)]


def test_partly_unparseable_times_are_counted_per_key_and_a_wholly_unparseable_file_is_rejected(settings):
    land(
        settings, "panel/a.csv", "country,year,x1,x2,y\nus,1969-02-28,1,2,3\nus,1969-02-30,1,2,4\nus,1969-03-01,1,2,5\n"
    )
    land(settings, "panel/b.csv", "country,year,x1,x2,y\nca,soon,1,2,3\nca,later,1,2,4\nca,1970-01-01,1,2,5\n")
    spec = yearly()
    report, out = run_raw(settings, spec)
    assert out["us"].ok and out["us"].info["rows"] == 2
    assert out["us"].info["drops"] == {"unparseable time value": 1}
    assert_balanced(out["us"].info)
    ca = out["ca"]  # discovered from b.csv before raw rejected it
    assert ca.status == "failed"
    assert ca.reason.startswith("no rows for this key in the landing zone; 1 file(s) rejected for this use case: ")
    assert "landing/panel/b.csv" in ca.reason and "time column 'year'" in ca.reason and "'soon', 'later'" in ca.reason
    assert report.summary["rejected"] == [
        {"file": "landing/panel/b.csv", "reason": report.summary["rejected"][0]["reason"]}
    ]
    statuses = {f["file"]: f["status"] for f in report.summary["files"]}
    assert statuses == {"landing/panel/a.csv": "ingested", "landing/panel/b.csv": "rejected"}


# --- landing files are never moved ----------------------------------------------------------
# --- CSV dialects and headers ---------------------------------------------------------------
def test_a_european_excel_export_reads_with_its_separator_and_decimal_comma_found_in_the_file(settings):
    """';' and '1.234,5' need no setting; a file of the same folder written by another tool with
    decimal points reads by its own. A tab-separated file of whole counts (1.234, 987: German
    thousands, or decimals with three digits) shows neither: rejected until declared, then read again."""
    land(settings, "eu/a.csv", "country;year;x1;x2;y\nde;2020;1,5;2;1.234,5\nde;2021;2,5;3;7,25\n")
    land(settings, "eu/b.csv", "country;year;x1;x2;y\nat;2020;1.5;2;1.25\nat;2021;2;3;7\n")
    spec = yearly("landing/eu/*.csv", name="eu")
    report, out = run_raw(settings, spec)
    assert out["de"].ok and out["at"].ok and report.summary["rejected"] == []
    b = bronze(settings, spec, "de")
    assert b["y"].to_list() == [1234.5, 7.25] and b["x1"].to_list() == [1.5, 2.5]
    assert bronze(settings, spec, "at")["y"].to_list() == [1.25, 7.0]
    land(settings, "counts/a.csv", "country\tyear\tx1\tx2\ty\nch\t2020\t1\t2\t1.234\nch\t2021\t2\t3\t987\n")
    spec = yearly("landing/counts/*.csv", name="counts")
    report, out = run_raw(settings, spec)
    assert not out["ch"].ok
    assert report.summary["rejected"][0]["reason"].startswith(
        "column 'y' writes '1.234': 1234 with a decimal comma, 1.234 with a decimal point"
    )
    spec = yearly(source={"path": "landing/counts/*.csv", "csv": {"decimal_comma": True}}, name="counts")
    report, out = run_raw(settings, spec)  # a change of reading settings: read again
    assert out["ch"].ok and report.summary["rejected"] == []
    assert bronze(settings, spec, "ch")["y"].to_list() == [1234.0, 987.0]


def test_decimal_comma_declared_for_a_comma_separated_file_says_so_and_undeclared_reads_it(settings):
    """'decimal_comma: true' needs a separator other than ',': on a comma-separated file the
    separator silently became ';' and every column went missing. The reason says what to do,
    and without the declaration the file's quoted '3,5' reads as 3.5."""
    land(settings, "dc/a.csv", 'country,year,x1,x2,y\nse,2020,1,2,"3,5"\nse,2021,1,2,"4,25"\n')
    source = {"path": "landing/dc/*.csv", "csv": {"decimal_comma": True}}
    report, _ = run_raw(settings, yearly(name="declared", source=source), keys=["se"])
    said = "separated by ',' and the source declares 'csv: {decimal_comma: true}'"
    assert said in report.summary["rejected"][0]["reason"]
    found = yearly("landing/dc/*.csv", name="found")
    report, _ = run_raw(settings, found)
    assert report.summary["rejected"] == [] and bronze(settings, found, "se")["y"].to_list() == [3.5, 4.25]


def test_a_cp1252_export_names_the_encoding_to_set_and_reads_once_it_is_set(settings):
    path = Path(settings.lake_url) / "landing" / "enc" / "a.csv.gz"
    path.parent.mkdir(parents=True)
    path.write_bytes(gzip.compress("country,year,x1,x2,y\nZürich,2020,1,2,3\nZürich,2021,1,2,4\n".encode("cp1252")))
    spec = yearly("landing/enc/*.csv.gz", name="enc")
    report, _ = run_raw(settings, spec, keys=[encode_key(["Zürich"])])
    assert report.summary["rejected"][0]["reason"].startswith("the file is not UTF-8 text (byte b'\\xfc' on line 2)")
    spec = yearly(source={"path": "landing/enc/*.csv.gz", "csv": {"encoding": "cp1252"}}, name="enc")
    assert discover_keys(spec, Lake(settings.lake_url)) == [encode_key(["Zürich"])]
    _, out = run_raw(settings, spec)
    assert out[encode_key(["Zürich"])].info["rows"] == 2


def test_a_utf8_file_among_declared_cp1252_ones_and_an_undeclared_utf16_one_read_as_what_they_are(settings):
    """January is a cp1252 export (declared), March comes from a tool that writes UTF-8: read
    as cp1252 its 'ü' became 'Ã¼', a second key. Excel's 'Unicode Text' is UTF-16 with a
    byte-order mark, which says so: read without a declaration."""
    folder = Path(settings.lake_url) / "landing" / "drift"
    folder.mkdir(parents=True)
    (folder / "01.csv").write_bytes("country,year,x1,x2,y\nZürich,2020,1,2,3\n".encode("cp1252"))
    (folder / "03.csv").write_bytes("country,year,x1,x2,y\nZürich,2021,1,2,4\n".encode())
    spec = yearly(source={"path": "landing/drift/*.csv", "csv": {"encoding": "cp1252"}}, name="drift")
    assert discover_keys(spec, Lake(settings.lake_url)) == [encode_key(["Zürich"])]
    _, out = run_raw(settings, spec)
    assert list(out) == [encode_key(["Zürich"])] and out[encode_key(["Zürich"])].info["rows"] == 2
    land(settings, "u16/a.txt", "")
    (Path(settings.lake_url) / "landing" / "u16" / "a.txt").write_bytes(
        "country\tyear\tx1\tx2\ty\r\nse\t2020\t1\t2\t3\r\n".encode("utf-16")
    )
    # Excel's 'Unicode Text' with a shifted row: its rows are checked as UTF-8's are (y was 501)
    (Path(settings.lake_url) / "landing" / "u16" / "b.txt").write_bytes(
        "country\tyear\tx1\tx2\ty\r\nfr\t2020\t1\t1\t501\t7\r\n".encode("utf-16")
    )
    spec = yearly("landing/u16/*.txt", name="u16")
    report, out = run_raw(settings, spec)
    assert out["se"].info["rows"] == 1 and "fr" not in out
    ((rejected),) = report.summary["rejected"]
    assert rejected["file"] == "landing/u16/b.txt" and "line 2 of the table has 6" in rejected["reason"]


def test_a_utf8_byte_order_mark_before_a_quoted_header_is_no_part_of_its_first_name(settings):
    """Excel's 'CSV UTF-8' starts with a byte-order mark; before a quoted header polars read
    the first name as '\\ufeff"country"' and the file was rejected. ',' and ';', and with Mac
    line ends (read through a copy when large) alike."""
    bom = "\ufeff".encode()
    rows = ['"country","year","x1","x2","y"', '"se","2020",1,2,3', '"se","2021",1,2,4']
    (Path(land(settings, "bom/a.csv", "")).write_bytes(bom + "\n".join(rows).encode() + b"\n"))
    later = "\r".join(r.replace(",", ";").replace("202", "203") for r in rows)  # 2030, 2031
    (Path(land(settings, "bom/b.csv", "")).write_bytes(bom + later.encode()))
    spec = yearly("landing/bom/*.csv", name="bom")
    assert discover_keys(spec, Lake(settings.lake_url)) == ["se"]
    report, out = run_raw(settings, spec)
    assert report.summary["rejected"] == [] and out["se"].info["rows"] == 4
    # a reason polars gives is shown without the query plan it appends
    with pytest.raises(pl.exceptions.ColumnNotFoundError) as caught:
        pl.LazyFrame({"a": [1]}).select("b").collect()
    said = raw._said(caught.value)
    assert said.startswith('unable to find column "b"') and "Resolved plan" not in said and "FAILED HERE" not in said


def test_mac_line_ends_and_a_separator_ending_every_row_read_and_an_extra_value_still_rejects(settings):
    """Excel's 'CSV (Macintosh)' ends lines with a carriage return alone (polars saw one line);
    some exporters end each data row, not the header, with a separator (polars: more fields
    than the header). Both read, whole and in batches. A row whose extra field holds a value
    is a shifted row, still rejected."""
    land(settings, "mac/a.csv", "country,year,x1,x2,y\rse,2020,1,2,3\rse,2021,1,2,4\r")
    _, out = run_raw(settings, yearly("landing/mac/*.csv", name="mac"))
    assert out["se"].ok and out["se"].info["rows"] == 2
    land(settings, "trail/a.csv", "country,year,x1,x2,y\nse,2020,1,2,3,\nse,2021,1,2,4,\n")
    land(settings, "trail/b.csv", "Sales report\ncountry;year;x1;x2;y\r\nfr;2020;1;2;5;\r\nfr;2021;1;2;6;\r\n")
    # a blank line between the title and the header: the header, not the blank line, names the column
    land(settings, "trail/c.csv", "Report: sales\n\ncountry,year,x1,x2,y\nde,2020,1,2,7,\nde,2021,1,2,8,\n")
    # empty fields past the header's end on some rows, in a file whose every column is read
    land(settings, "trail/d.csv", "country,year,x1,x2,y\nnl,2020,1,2,9\nnl,2021,1,2,10,,\n")
    spec = yearly("landing/trail/*.csv", name="trail")
    report, out = run_raw(settings, spec)
    assert [f["status"] for f in report.summary["files"]] == ["ingested"] * 4
    assert bronze(settings, spec, "de")["y"].to_list() == [7.0, 8.0]
    assert bronze(settings, spec, "nl")["y"].to_list() == [9.0, 10.0]
    assert bronze(settings, spec, "se")["y"].to_list() == [3.0, 4.0]
    assert bronze(settings, spec, "fr")["y"].to_list() == [5.0, 6.0]
    land(settings, "shifted/a.csv", "country,year,x1,x2,y\nse,2020,1,2,3,\nse,2021,1,2,4,9\n")
    report, _ = run_raw(settings, yearly("landing/shifted/*.csv", name="shifted"))
    assert report.summary["rejected"][0]["reason"].startswith("a line has more fields than the header")
    # a header padded with empty names pads its rows too: every row one field longer is a value
    # with an unquoted separator in it (y = 1,501), rejected, never read as y = 1
    land(settings, "padded/a.csv", "country,year,x1,x2,y,,,\nse,2020,1,2,3,,,\n")
    land(settings, "padded/b.csv", "country,year,x1,x2,y,,,\nfr,2020,1,2,1,501,,,\nfr,2021,1,2,1,502,,,\n")
    report, out = run_raw(settings, yearly("landing/padded/*.csv", name="padded"))
    assert out["se"].ok and [r["file"] for r in report.summary["rejected"]] == ["landing/padded/b.csv"]
    assert report.summary["rejected"][0]["reason"].startswith("a line has more fields than the header")


def test_a_shifted_row_far_down_a_large_file_is_rejected_like_one_near_its_top(settings):
    """The first MiB's rows are checked as parsed; past it, a row with more fields than the
    header ('1,501' 1,100 lines down, past the first MiB, read as y = 1 without a word) is found too, and named. A
    quoted value over several lines with commas in it, a row of two such values, an unquoted
    inch mark, empty fields past the header's end and a trailing separator on every row are no
    shift there either; an inch mark beside an unquoted separator is one."""
    pad = "n" * 1000  # an unread column, so the file passes the first MiB
    rows = [f"se,{2000 + i % 20},1,2,{i % 7},{pad}" for i in range(1_200)]
    header = "country,year,x1,x2,y,note\n"
    fine = [
        *rows[:1100],
        'se,2030,1,2,3,"a, quoted note"',
        "se,2031,1,2,3,note,, ,",
        'se,2032,1,2,3,"Delivery notes:\nleft at door, rang bell, no answer, will retry\nend"',
        'se,2033,1,2,3,TV 55" screen',
        *rows[1100:],
    ]
    land(settings, "big/fine.csv", header + "\n".join(fine) + "\n")
    two = [f"se,{2000 + i % 20},1,2,{i % 7},a,{pad}" for i in range(1_200)]
    two.insert(1_100, 'se,2034,1,2,3,"first line\ntail, with, commas","next, value\nmore"')
    land(settings, "big/two.csv", "country,year,x1,x2,y,note,other\n" + "\n".join(two) + "\n")
    shifted = [*rows[:1100], "fr,2020,1,2,1,501,note", *rows[1100:]]
    land(settings, "big/shifted.csv", header + "\n".join(shifted) + "\n")
    inch = [f"se,{2000 + i % 20},{pad},1,2,{i % 7}" for i in range(1_200)]
    inch.insert(1_100, 'fr,2020,TV 55" screen, 40,1,2,3')
    land(settings, "big/inch.csv", "country,year,note,x1,x2,y\n" + "\n".join(inch) + "\n")
    # a bare carriage return inside a value ends no row for polars, nor for the check
    cr = [f"se,{2000 + i % 20},{pad},1,2,{i % 7}" for i in range(1_200)]
    cr.insert(1_100, "fr,2020,abc\rdef, 40,1,2,3")
    cr.insert(10, 'se,2038,"two\nlines",1,2,3')  # a value over two lines: the file is requoted by Python
    (
        Path(land(settings, "big/cr.csv", "")).write_bytes(
            ("country,year,note,x1,x2,y\n" + "\n".join(cr) + "\n").encode()
        )
    )
    trailing = "".join(f"{r}," + "\n" for r in [*rows, "fr,2021,1,2,4,x,9"])
    land(settings, "big/trailing.csv", header + trailing)
    # every row ends in a separator, and one holds a value there: as many fields, one shifted
    late = [f"{r}," for r in rows]
    late.insert(1_100, "fr,2022,1,2,4,x,oops")
    land(settings, "big/trailing_late.csv", header + "\n".join(late) + "\n")
    # a shifted row with a value over two lines is named where it starts
    multi = [*rows[:1100], 'fr,2023,1,2,1,501,"two\nlines"', *rows[1100:]]
    land(settings, "big/multi.csv", header + "\n".join(multi) + "\n")
    # a quoted value longer than Python's csv module takes by default (128 KiB), then a shift
    long = [rows[0], f'se,2036,1,2,3,"{"z" * 200_000}"', *rows[1:1100], "fr,2024,1,2,1,501,note", *rows[1100:]]
    land(settings, "big/long.csv", header + "\n".join(long) + "\n")
    long_ok = [rows[0], f'se,2036,1,2,3,"{"z" * 200_000}"', *rows[1:1100], "se,2037,1,2,3,note,,", *rows[1100:]]
    land(settings, "big/long_ok.csv", header + "\n".join(long_ok) + "\n")
    sizes = [(Path(settings.lake_url) / "landing/big" / f).stat().st_size for f in ("fine.csv", "two.csv", "inch.csv")]
    assert min(sizes) > 2**20
    report, out = run_raw(settings, yearly("landing/big/*.csv", name="big"))
    reasons = {r["file"]: r["reason"] for r in report.summary["rejected"]}
    assert sorted(reasons) == [
        f"landing/big/{f}.csv" for f in ("cr", "inch", "long", "multi", "shifted", "trailing", "trailing_late")
    ]
    assert reasons["landing/big/shifted.csv"].startswith(
        "a line has more fields than the header (6 columns, separator ','): an unquoted separator inside a value, "
        "or a wrong separator (line 1102 of the file has 7: 'fr,2020,1,2,1,501,note')"
    )
    assert "line 1102 of the file has 7: 'fr,2020,TV 55\" screen, 40,1,2,3'" in reasons["landing/big/inch.csv"]
    assert "line 1202 of the file has 8: 'fr,2021,1,2,4,x,9,'" in reasons["landing/big/trailing.csv"]
    assert "line 1102 of the file has 7: 'fr,2022,1,2,4,x,oops'" in reasons["landing/big/trailing_late.csv"]
    assert "line 1104 of the file has 7: 'fr,2020,abc def, 40,1,2,3'" in reasons["landing/big/cr.csv"]
    assert "line 1102 of the file has 7: 'fr,2023,1,2,1,501,two\\nlines'" in reasons["landing/big/multi.csv"]
    assert "line 1103 of the file has 7: 'fr,2024,1,2,1,501,note'" in reasons["landing/big/long.csv"]
    assert out["se"].ok and out["se"].info["rows_in"] == 1_204 + 1_201 + 1_202 and "fr" not in out


def test_header_names_with_spaces_or_another_case_match_and_a_missing_column_shows_the_header(settings):
    land(settings, "hdr/a.csv", " Country ,YEAR,x1,X2,y\nse,2020,1,2,3\n")
    land(settings, "hdr/b.csv", "country,year,x1,y\nse,2021,1,4\n")
    # a configured column named twice is ambiguous; an unused one named twice does not matter
    land(settings, "hdr/c.csv", "country,year,x1,x2,y,x1\nse,2022,1,2,5,9\n")
    land(settings, "hdr/d.csv", "country,year,x1,x2,y,note,note\nse,2023,1,2,6,a,b\n")
    land(settings, "hdr/e.csv", "country,year,x1,X2, x2 ,y\nse,2024,1,2,2,7\n")  # which x2 is unknown
    spec = yearly("landing/hdr/*.csv", name="hdr")
    report, out = run_raw(settings, spec)
    assert out["se"].ok and bronze(settings, spec, "se").columns == ["country", "year", "x1", "x2", "y"]
    assert bronze(settings, spec, "se")["y"].to_list() == [3, 6]
    reasons = {r["file"].split("/")[-1]: r["reason"] for r in report.summary["rejected"]}
    header = "['country', 'year', 'x1', 'y']"
    assert reasons["b.csv"] == f"missing required column(s) ['x2']; the file's columns are {header}"
    assert reasons["c.csv"].startswith("the header names column(s) ['x1'] more than once") and len(reasons) == 3
    assert reasons["e.csv"].endswith(
        "['X2', ' x2 '] all match 'x2' up to case or spaces: name one exactly in the use case"
    )


def test_an_empty_file_and_a_ragged_line_are_rejected_saying_what_is_wrong(settings):
    land(settings, "bad/a.csv", "")
    land(settings, "bad/b.csv", "country,year,x1,x2,y\nse,2020,1,2,3\nse,2021,1,2,3,4\n")
    # a form feed (or U+2028, a bare CR) inside a value, before a shift: no line end for polars
    land(settings, "bad/d.csv", "country,year,note,x1,x2,y\nse,2023,a,1,2,3\nfr,2024,abc\x0cdef, 40,1,2,3\n")
    # a bare CR inside a value of a file Python's csv module requotes (an inch mark, a value over
    # two lines) is part of the value, as polars reads it: the row was split in two
    (
        Path(land(settings, "bad/e.csv", "")).write_bytes(
            b'country,year,note,x1,x2,y\nat,2020,abc\rdef,1,2,3\nat,2021,"two\nlines",1,2,4\nat,2022,TV 55" x,1,2,5\n'
        )
    )
    land(settings, "bad/c.csv", "country,year,x1,x2,y\nse,2022,1,2,3\n")
    land(settings, "bad/~$lock.csv", "\x00\x00\x00\x01Bud1\x00\x00\x10\x00,\x00\x08\n\x00\x00\x00\n")  # valid UTF-8
    report, out = run_raw(settings, yearly("landing/bad/*.csv", name="bad"))
    reasons = {r["file"]: r["reason"] for r in report.summary["rejected"]}
    assert reasons["landing/bad/a.csv"].startswith("the file is empty (0 bytes)")
    assert reasons["landing/bad/~$lock.csv"].startswith("the file is not CSV text (its first line holds binary bytes)")
    assert reasons["landing/bad/b.csv"].startswith("a line has more fields than the header (5 columns, separator ',')")
    assert "line 3 of the table has 7: 'fr,2024,abc def, 40,1,2,3'" in reasons["landing/bad/d.csv"]
    assert "landing/bad/e.csv" not in reasons and out["at"].info["rows"] == 3 and out["at"].info["drops"] == {}
    assert out["se"].ok and out["se"].info["rows"] == 1


def test_padded_and_empty_key_values_and_a_header_only_file(settings):
    # a header-only export first must not decide the time kind nor the column types of later files
    land(settings, "pad/a.csv", "country,year,x1,x2,y\n")
    # trailing blank lines, a line of spaces and one of bare separators are no rows of the export
    land(settings, "pad/b.csv", "country,year,x1,x2,y\nse ,1,1,2,3\nse,2,1,2,4\n,3,1,2,5\n  ,4,1,2,6\n,,,,\n  \n\n\n")
    spec = yearly("landing/pad/*.csv", name="pad")
    assert discover_keys(spec, Lake(settings.lake_url)) == ["se"]
    report, out = run_raw(settings, spec)
    assert out["se"].info["rows"] == 2 and bronze(settings, spec, "se")["year"].to_list() == [1, 2]
    assert [f["rows"] for f in report.summary["files"]] == [0, 4]
    assert report.summary["files"][1]["drops"] == {"null key value": 2} and report.summary["rejected"] == []


def test_a_file_rejected_for_one_use_case_stays_in_place_for_another(settings):
    text = "country,year,x1,y\nnl,2001,1,3\nnl,2002,2,4\n"  # no x2: unusable for 'panel'
    path = land(settings, "shared/a.csv", text)
    strict = yearly("landing/shared/*.csv", name="strict")
    lenient = yearly("landing/shared/*.csv", name="lenient", features=["x1"])
    _, out = run_raw(settings, strict)
    assert out["nl"].status == "failed" and "missing required column(s) ['x2']" in out["nl"].reason
    assert path.read_text() == text
    records = list((Path(settings.lake_url) / "rejected" / "strict").glob("*.json"))
    assert len(records) == 1 and '"file": "landing/shared/a.csv"' in records[0].read_text()
    assert not (Path(settings.lake_url) / "rejected" / "lenient").exists()
    _, out = run_raw(settings, lenient)
    assert out["nl"].ok and out["nl"].info["rows"] == 2


def test_a_rejected_file_is_not_read_again_until_it_changes(settings, monkeypatch):
    path = land(settings, "panel/a.csv", "country,year,x1,x2,y\nse,never,1,2,3\n")
    spec = yearly()
    reads: list[str] = []
    on_read(monkeypatch, lambda p: reads.append(p.name))
    first, _ = run_raw(settings, spec, keys=["se"])
    assert [f["status"] for f in first.summary["files"]] == ["rejected"] and reads == ["a.csv"]
    second, out = run_raw(settings, spec, keys=["se"])
    assert reads == ["a.csv"]  # not read again
    assert second.summary["files"][0]["status"] == "unchanged_rejected"
    assert second.summary["rejected"][0]["reason"] == first.summary["rejected"][0]["reason"]
    assert "time column 'year'" in out["se"].reason
    assert discover_keys(spec, Lake(settings.lake_url)) == [] and reads == ["a.csv"]

    path.write_text("country,year,x1,x2,y\nse,2020,1,2,3\n")  # fixed: a new size and mtime
    os.utime(path, ns=(1, 1))
    third, out = run_raw(settings, spec, keys=["se"])
    assert out["se"].ok and third.summary["files"][0]["status"] == "ingested"
    assert not list((Path(settings.lake_url) / "rejected" / spec.name).glob("*.json"))


def test_a_transient_read_error_is_retried_and_never_recorded_as_rejected(settings, monkeypatch):
    land(settings, "panel/a.csv", "country,year,x1,x2,y\nno,2020,1,2,3\n")
    spec = yearly()
    failures = {"left": 2}

    def flaky(p):
        if failures["left"]:
            failures["left"] -= 1
            raise OSError("connection reset by peer")

    on_read(monkeypatch, flaky)
    report, out = run_raw(settings, spec, keys=["no"])
    assert failures["left"] == 0 and out["no"].ok
    assert report.summary["files"][0]["status"] == "ingested" and report.summary["rejected"] == []

    failures["left"] = 99  # still failing after every retry: left for the next run
    report, out = run_raw(settings, spec, keys=["no"])
    (entry,) = report.summary["files"]
    assert entry["status"] == "retry_later" and "connection reset by peer" in entry["reason"]
    assert failures["left"] == 99 - len(raw.RETRY_DELAYS) - 1
    assert report.summary["rejected"] == []
    assert not (Path(settings.lake_url) / "rejected").exists()
    assert "could not be read now and will be tried again: landing/panel/a.csv" in out["no"].reason


def test_a_file_still_being_written_is_read_again_once_it_stops_changing(settings, monkeypatch):
    path = land(settings, "panel/a.csv", "country,year,x1,x2,y\nis,2020,1,2,3\n")
    appended = []

    def writer_still_busy(p):
        if not appended:  # the upstream writer adds a row while we read
            appended.append(True)
            with open(path, "a") as f:
                f.write("is,2021,1,2,4\n")
            os.utime(path, ns=(2, 2))

    on_read(monkeypatch, writer_still_busy)
    report, out = run_raw(settings, yearly(), keys=["is"])
    assert report.summary["files"][0]["status"] == "ingested" and out["is"].info["rows"] == 2


# --- keys, targets, duplicates, counts ------------------------------------------------------
def test_leading_zero_keys_stay_distinct_in_discovery_and_ingest(settings):
    land(settings, "panel/a.csv", "country,year,x1,x2,y\n0012,2020,1,2,3\n12,2020,1,2,4\n012,2021,1,2,5\n")
    spec = yearly()
    keys = discover_keys(spec, Lake(settings.lake_url))
    assert keys == ["0012", "012", "12"]
    run_raw(settings, spec, keys)
    assert [bronze(settings, spec, k)["y"].to_list() for k in keys] == [[3.0], [5.0], [4.0]]
    assert bronze(settings, spec, "0012")["country"].to_list() == ["0012"]
    # a Parquet key column of integers is cast to its text
    land(settings, "ints/a.parquet", pl.DataFrame({"country": [7], "year": [2020], "x1": [1], "x2": [2], "y": [1.0]}))
    assert discover_keys(yearly("landing/ints/*.parquet", name="ints"), Lake(settings.lake_url)) == ["7"]


def test_discovery_survives_an_unreadable_file(settings):
    land(settings, "panel/a.csv", "country,year,x1,x2,y\nfi,2020,1,2,3\n")
    path = Path(settings.lake_url) / "landing/panel/b.csv"
    path.write_bytes(b"\xff\x00" * 50)
    assert discover_keys(yearly(), Lake(settings.lake_url)) == ["fi"]


def test_null_nan_and_inf_targets_are_dropped_and_counted_per_key_and_file(settings):
    land(
        settings,
        "panel/a.csv",
        "country,year,x1,x2,y\npt,2001,1,2,1\npt,2002,1,2,\npt,2003,1,2,NaN\npt,2004,1,2,inf\n,2005,1,2,3\n",
    )
    land(settings, "panel/b.csv", "country,year,x1,x2,y\npt,2006,1,2,-inf\npt,2007,1,2,2\n")
    spec = yearly()
    report, out = run_raw(settings, spec, keys=["pt"])
    info = out["pt"].info
    assert info["drops"] == {"target is null": 1, "target is NaN": 1, "target is inf": 2}
    assert (info["rows_in"], info["rows_out"], info["rows_dropped"], info["rows_merged"]) == (6, 2, 4, 0)
    assert info["rows"] == 2 and bronze(settings, spec, "pt")["y"].to_list() == [1.0, 2.0]
    assert_balanced(info)
    a, b = report.summary["files"]
    assert (a["rows"], a["rows_dropped"], b["rows"], b["rows_dropped"]) == (5, 4, 2, 1)
    assert a["drops"] == {"target is null": 1, "target is NaN": 1, "target is inf": 1, "null key value": 1}
    assert "1 row(s) with a null key value copied to quarantine/panel/rows_null_key_" in a["reason"]
    copies = list((Path(settings.lake_url) / "quarantine" / "panel").glob("rows_null_key_*.parquet"))
    assert len(copies) == 1 and pl.read_parquet(copies[0])["year"].to_list() == [D(2005, 1, 1)]
    assert report.summary["rows_dropped"] == 5 and report.summary["landing_rows"] == 7
    run_raw(settings, spec, keys=["pt"])  # a rerun overwrites the copy instead of adding one
    assert len(list(copies[0].parent.glob("rows_null_key_*.parquet"))) == 1


def test_a_key_whose_rows_are_all_dropped_fails_with_the_reasons(settings):
    land(settings, "panel/a.csv", "country,year,x1,x2,y\nbe,2001,1,2,\nbe,2002,1,2,NaN\n")
    _, out = run_raw(settings, yearly(), keys=["be"])
    assert out["be"].status == "failed"
    assert out["be"].reason == "all 2 rows of this key were removed at ingest (target is null: 1; target is NaN: 1)"


def weekly_csv(rows: list[tuple]) -> str:
    return "store,brand,week_start,price,quantity\n" + "".join(f"{s},b,{w},1.0,{q}\n" for s, w, q in rows)


def test_numbered_exports_replace_rows_in_the_order_of_their_numbers(settings):
    """export_10 re-sends export_9's last week corrected: by plain name order export_10 came
    before export_9, whose older values then replaced the corrections."""
    w1, w2 = "2024-01-01", "2024-01-08"
    land(settings, "num/export_9.csv", weekly_csv([("s1", w1, 1), ("s1", w2, 2)]))
    land(settings, "num/export_10.csv", weekly_csv([("s1", w2, 20)]))
    spec = make_spec(forecast_body(source={"path": "landing/num/*.csv"}), name="num")
    assert [f.name for f in Lake(settings.lake_url).listing("landing/num/*.csv")] == [
        "landing/num/export_9.csv",
        "landing/num/export_10.csv",
    ]
    _, out = run_raw(settings, spec)
    key = encode_key(["s1", "b"])
    assert bronze(settings, spec, key).sort("week_start")["quantity"].to_list() == [1.0, 20.0]
    assert out[key].info["drops"] == {raw.core_ingest.LATER_FILE: 1}


def test_duplicate_policies_in_the_stage_with_exact_counts_within_and_across_files(settings):
    w1, w2 = "2024-01-01", "2024-01-08"
    land(settings, "w/a.csv", weekly_csv([("s1", w1, 1), ("s1", w2, 2), ("s2", w1, 3), ("s2", w1, 4)]))
    land(settings, "w/b.csv", weekly_csv([("s1", w2, 20), ("s1", w2, 30)]))  # a later correction of week 2
    keys = [encode_key(["s1", "b"]), encode_key(["s2", "b"])]

    def run(policy):
        # 'keep' is for timed events (forecasts refuse it): the same rows as a regression
        events = {"task": "regression", "holdout": {"fraction": 0.25}} if policy == "keep" else {}
        body = forecast_body(source={"path": "landing/w/*.csv"}, lags=[], duplicates=policy, **events)
        spec = make_spec(body, name="w")
        report, out = run_raw(settings, spec, keys)
        return spec, report, out

    spec, report, out = run("last")
    s1, s2 = (out[k].info for k in keys)
    assert bronze(settings, spec, keys[0])["quantity"].to_list() == [1.0, 30.0]
    assert s1["drops"] == {"replaced by a later file": 1, "duplicate (key, time) removed by policy 'last'": 1}
    assert (s1["rows_in"], s1["rows_out"], s1["rows_dropped"], s1["rows_merged"]) == (4, 2, 1, 1)
    assert s2["drops"] == {"duplicate (key, time) removed by policy 'last'": 1} and s2["rows_out"] == 1
    a, b = report.summary["files"]
    assert (a["rows_dropped"], a["rows_merged"], b["rows_dropped"], b["rows_merged"]) == (1, 1, 1, 0)
    assert (report.summary["rows_dropped"], report.summary["rows_merged"]) == (2, 1)
    for info in (s1, s2):
        assert_balanced(info)

    spec, _, out = run("mean")
    assert bronze(settings, spec, keys[1])["quantity"].to_list() == [3.5]
    assert out[keys[1]].info["drops"] == {"duplicate (key, time) merged by policy 'mean'": 1}

    spec, _, out = run("keep")
    assert sorted(bronze(settings, spec, keys[0])["quantity"].to_list()) == [1.0, 20.0, 30.0]
    assert out[keys[0]].info["drops"] == {"replaced by a later file": 1}

    # the forecast default is 'error': only the key with a repeated week inside one file fails
    spec, report, out = run(None)
    assert out[keys[1]].status == "failed" and "landing/w/a.csv" in out[keys[1]].reason
    assert "week_start=2024-01-01" in out[keys[1]].reason
    assert out[keys[0]].status == "failed"  # b.csv repeats week 2 of s1
    land(settings, "w/b.csv", weekly_csv([("s1", w2, 20)]))
    spec, report, out = run(None)
    assert out[keys[0]].ok and out[keys[1]].status == "failed"
    assert bronze(settings, spec, keys[0])["quantity"].to_list() == [1.0, 20.0]
    assert read_state(Lake(settings.lake_url), "w", "raw", keys[1]).info.rows_dropped == 2


def test_a_policy_other_than_keep_without_a_time_column_is_a_config_error():
    with pytest.raises(ValueError, match="duplicates: 'last' needs a 'time_column'"):
        make_spec(regression_body(source={"path": "landing/g/*.csv"}, duplicates="last"), name="g")


def weekly_with_future():
    """A weekly forecast of landing/w with its future prices in landing/w_future."""
    body = forecast_body(source={"path": "landing/w/*.csv"}, scoring_source={"path": "landing/w_future/*.csv"}, lags=[])
    return make_spec(body, name="w")


def test_scoring_source_goes_through_the_same_reading_without_a_target(settings):
    land(settings, "w/a.csv", weekly_csv([("s1", f"2024-01-{d:02d}", d) for d in (1, 8, 15)]))
    land(
        settings,
        "w_future/a.csv",
        "store,brand,week_start,price\ns1,b,2024-01-22,2.0\ns1,b,2024-02-30,2.0\ns1,b,2024-01-29,2.5\n",
    )
    spec = weekly_with_future()
    key = encode_key(["s1", "b"])
    report, out = run_raw(settings, spec, [key])
    info = out[key].info
    assert info["scoring_rows"] == 2 and info["scoring_drops"] == {"unparseable time value": 1}
    future = bronze(settings, spec, key, "bronze_scoring")
    assert future.schema["week_start"] == pl.Date and future["week_start"].to_list() == [D(2024, 1, 22), D(2024, 1, 29)]
    assert {f["source"] for f in report.summary["files"]} == {"source", "scoring_source"}
    scoring_file = next(f for f in report.summary["files"] if f["source"] == "scoring_source")
    assert scoring_file["rows"] == 3 and scoring_file["rows_dropped"] == 1
    (Path(settings.lake_url) / "landing/w_future/a.csv").unlink()
    run_raw(settings, spec, [key])  # no future rows any more: yesterday's are not scored
    assert not (Path(settings.lake_url) / "bronze_scoring/w" / f"{key}.parquet").exists()


def test_dates_that_show_no_day_order_take_the_order_the_other_files_show_in_this_run_or_a_later_one(settings):
    """A weekly file of 01/01 and 08/01 could be either order; it is rejected while no other file
    shows one, read in the order a later file shows (its own rows still losing to that later
    file's, by name), and the scoring source's 05/02 follows the training files' order."""
    spec = weekly_with_future()
    key = encode_key(["s1", "b"])
    land(settings, "w/2024-01-01.csv", weekly_csv([("s1", "01/01/2024", 1), ("s1", "08/01/2024", 2)]))
    first, out = run_raw(settings, spec)
    assert [f["status"] for f in first.summary["files"]] == ["rejected"]
    assert "could be day/month or month/day" in out[key].reason  # discovered, and failed saying why

    land(settings, "w/2024-01-15.csv", weekly_csv([("s1", "08/01/2024", 20), ("s1", "15/01/2024", 3)]))
    land(settings, "w_future/a.csv", "store,brand,week_start,price\ns1,b,05/02/2024,2.0\n")
    second, out = run_raw(settings, spec)
    assert out[key].ok, out[key].reason
    b = bronze(settings, spec, key).sort("week_start")
    assert b["week_start"].to_list() == [D(2024, 1, 1), D(2024, 1, 8), D(2024, 1, 15)]
    assert b["quantity"].to_list() == [1.0, 20.0, 3.0]  # the later file's correction wins, though read last
    assert out[key].info["drops"] == {raw.core_ingest.LATER_FILE: 1}
    files = {f["file"]: f for f in second.summary["files"]}
    assert files["landing/w/2024-01-01.csv"]["status"] == "ingested"
    assert files["landing/w/2024-01-01.csv"]["day_order"] == "day first"
    assert "day_order" not in files["landing/w/2024-01-15.csv"]  # it showed its own
    assert files["landing/w_future/a.csv"]["day_order"] == "day first"
    assert bronze(settings, spec, key, "bronze_scoring")["week_start"].to_list() == [D(2024, 2, 5)]
    assert not list((Path(settings.lake_url) / "rejected" / spec.name).glob("*.json"))

    both = make_spec(forecast_body(source={"path": "landing/both/*.csv"}, lags=[]), name="both")
    land(settings, "both/a.csv", weekly_csv([("s1", "01/01/2024", 1)]))
    land(settings, "both/b.csv", weekly_csv([("s1", "15/01/2024", 1)]))
    land(settings, "both/c.csv", weekly_csv([("s2", "01/15/2024", 1)]))
    report, _ = run_raw(settings, both)
    (rejected,) = report.summary["rejected"]
    assert rejected["file"] == "landing/both/a.csv" and rejected["reason"].endswith("show both orders")


def test_a_scoring_source_with_its_own_time_format_beside_iso_history(settings):
    """Future values from another tool ('01/29/2024', every number 12 or less but the day) beside
    an ISO history: a use-case 'time_format' would reject the history, so the scoring source
    takes its own; the history still reads without one."""
    land(settings, "h/a.csv", weekly_csv([("s1", f"2024-01-{d:02d}", d) for d in (1, 8, 15, 22)]))
    land(settings, "h_future/a.csv", "store,brand,week_start,price\ns1,b,01/29/2024,2.0\ns1,b,02/05/2024,2.5\n")
    source = {"path": "landing/h_future/*.csv", "time_format": "%m/%d/%Y"}
    spec = make_spec(forecast_body(source={"path": "landing/h/*.csv"}, scoring_source=source, lags=[]), name="h")
    key = encode_key(["s1", "b"])
    report, out = run_raw(settings, spec, [key])
    assert report.summary["rejected"] == [] and out[key].info["rows"] == 4 and out[key].info["scoring_rows"] == 2
    assert bronze(settings, spec, key, "bronze_scoring")["week_start"].to_list() == [D(2024, 1, 29), D(2024, 2, 5)]


def test_a_scoring_file_beside_the_training_files_is_read_as_the_scoring_source_only(settings):
    """Kaggle's layout: train.csv and test.csv in one folder, ``source.path`` its ``*.csv``.
    test.csv has no target: read as a training file it was rejected, and that rejection hid it
    from the scoring source too. It is the scoring source's; a rejection recorded for it as a
    training file never hides it from the scoring source."""
    land(settings, "k/train.csv", weekly_csv([("s1", f"2024-01-{d:02d}", d) for d in (1, 8, 15)]))
    land(settings, "k/test.csv", "store,brand,week_start,price\ns1,b,2024-01-22,2.0\n")
    body = forecast_body(source={"path": "landing/k/*.csv"}, scoring_source={"path": "landing/k/test.csv"}, lags=[])
    spec = make_spec(body, name="k")
    key = encode_key(["s1", "b"])
    report, out = run_raw(settings, spec)
    assert report.summary["rejected"] == [] and out[key].info["rows"] == 3 and out[key].info["scoring_rows"] == 1
    files = {f["file"]: f["source"] for f in report.summary["files"]}
    assert files == {"landing/k/train.csv": "source", "landing/k/test.csv": "scoring_source"}

    test = Lake(settings.lake_url).listing("landing/k/test.csv")[0]
    entry = {"file": test.name, "source": "source"}
    raw.reject(Lake(settings.lake_url), "k", entry, test.signature, raw.reading_settings(spec), "missing ['quantity']")
    report, out = run_raw(settings, spec)
    assert out[key].info["scoring_rows"] == 1
    # the same files in both paths: their rows with a target train, those without are scored
    same = make_spec({**body, "scoring_source": {"path": "landing/k/*.csv"}}, name="same")
    training, scoring = (raw.source_files(same, Lake(settings.lake_url), scoring=s) for s in (False, True))
    assert [f.name for f in training] == [f.name for f in scoring] == ["landing/k/test.csv", "landing/k/train.csv"]


def test_a_repeated_week_in_the_scoring_file_drops_the_keys_scoring_rows_not_its_training(settings):
    """The future file repeats a week of s1 (two tills) under the default 'error' policy: which
    future price is meant is unknown, so s1's scoring rows are dropped and counted, and its
    raw record says why; its training rows are fine and it goes on (it failed at raw before)."""
    land(settings, "w/a.csv", weekly_csv([(s, f"2024-01-{d:02d}", d) for s in ("s1", "s2") for d in (1, 8, 15)]))
    land(
        settings,
        "w_future/a.csv",
        "store,brand,week_start,price\ns1,b,2024-01-22,2.0\ns1,b,2024-01-22,2.5\ns2,b,2024-01-22,3.0\n",
    )
    spec = weekly_with_future()
    s1, s2 = encode_key(["s1", "b"]), encode_key(["s2", "b"])
    _, out = run_raw(settings, spec, [s1, s2])
    assert out[s1].ok and out[s1].info["rows"] == 3 and out[s1].info["scoring_rows"] == 0
    assert out[s1].info["scoring_drops"] == {"key failed: duplicate (key, time)": 2}
    assert out[s1].info["scoring_note"].startswith("scoring_source: 1 row(s) repeat a (store, brand, week_start)")
    assert out[s2].ok and out[s2].info["scoring_rows"] == 1 and "scoring_note" not in out[s2].info


def test_scoring_rows_of_keys_without_training_rows_are_counted_per_file(settings):
    """Nothing scores a key that only the scoring source has (no key is made from it): its rows
    are counted as dropped in their file's entry, with the reason, whichever keys the run
    writes; rows it drops for other reasons are not counted twice."""
    land(settings, "w/a.csv", weekly_csv([("s1", f"2024-01-{d:02d}", d) for d in (1, 8, 15)]))
    land(
        settings,
        "w_future/a.csv",
        "store,brand,week_start,price\ns1,b,2024-01-22,2.0\nnew,b,2024-01-22,2.0\nnew,b,2024-01-29,2.0\n"
        "new,b,soon,1.0\n",
    )
    spec = weekly_with_future()
    assert discover_keys(spec, Lake(settings.lake_url)) == [encode_key(["s1", "b"])]
    for keys in ([encode_key(["s1", "b"])], []):  # a run of the key, and a run of no key
        report, _ = run_raw(settings, spec, keys)
        entry = next(f for f in report.summary["files"] if f["source"] == "scoring_source")
        assert entry["rows"] == 4 and entry["rows_dropped"] == 3 and entry["rows_merged"] == 0, entry
        assert entry["drops"] == {"unparseable time value": 1, "scoring row of a key without training rows": 2}
        source = next(f for f in report.summary["files"] if f["source"] == "source")
        assert source["rows_dropped"] == 0 and "scoring row of a key without training rows" not in source.get(
            "drops", {}
        )


def test_a_scoring_row_id_is_kept_as_written_and_a_file_without_it_is_rejected(settings):
    """``scoring_source.row_id`` names each scoring row: read as text as keys are (zeros kept,
    spaces stripped, an empty one is none), carried into the key's scoring rows; a scoring file
    without the column is rejected saying so, and one too long for the warehouse is a counted drop."""
    land(settings, "w/a.csv", weekly_csv([("s1", f"2024-01-{d:02d}", d) for d in (1, 8, 15)]))
    land(
        settings,
        "w_future/a.csv",
        "store,brand,week_start,price,order\ns1,b,2024-01-22,2.0, 0012\ns1,b,2024-01-29,2.5,\n"
        f"s1,b,2024-02-05,2.5,{'x' * 257}\n",
    )
    land(settings, "w_future/b.csv", "store,brand,week_start,price\ns1,b,2024-02-12,2.0\n")
    body = forecast_body(
        source={"path": "landing/w/*.csv"}, scoring_source={"path": "landing/w_future/*.csv", "row_id": "order"}
    )
    spec = make_spec({**body, "lags": []}, name="w")
    key = encode_key(["s1", "b"])
    report, out = run_raw(settings, spec, [key])
    future = bronze(settings, spec, key, "bronze_scoring").sort("week_start")
    assert future["order"].to_list() == ["0012", None]
    assert "order" not in bronze(settings, spec, key).columns  # the training rows have no row id
    assert out[key].info["scoring_drops"] == {raw.core_ingest.ROW_ID_TOO_LONG: 1}
    (rejected,) = report.summary["rejected"]
    assert rejected["file"] == "landing/w_future/b.csv" and "missing required column(s) ['order']" in rejected["reason"]
    assert "'order' is the scoring_source's row_id: every scoring file needs it" in rejected["reason"]


def test_key_leading_zeros_strip_makes_one_key_of_ids_written_with_and_without_zeros(settings):
    """One export writes store 007, another 7 (Excel dropped the zeros): two keys, each with
    half the rows, by default; with ``key_leading_zeros: strip`` one key '7' with all of them,
    found alike by discovery and ingest. Values that are not digits only stay as written."""
    land(
        settings, "z/a.csv", weekly_csv([("007", "2024-01-01", 1), ("A007", "2024-01-01", 5), ("000", "2024-01-01", 6)])
    )
    land(settings, "z/b.csv", weekly_csv([("7", "2024-01-08", 2), ("07", "2024-01-15", 3)]))
    body = forecast_body(source={"path": "landing/z/*.csv"}, lags=[])
    kept = make_spec(body, name="z")
    assert discover_keys(kept, Lake(settings.lake_url)) == sorted(
        encode_key([s, "b"]) for s in ("007", "07", "7", "A007", "000")
    )
    strip = make_spec({**body, "key_leading_zeros": "strip"}, name="z")
    keys = discover_keys(strip, Lake(settings.lake_url))
    assert keys == sorted(encode_key([s, "b"]) for s in ("7", "A007", "0"))
    report, out = run_raw(settings, strip, keys)
    seven = encode_key(["7", "b"])
    assert out[seven].ok and out[seven].info["rows"] == 3
    assert bronze(settings, strip, seven)["store"].unique().to_list() == ["7"]
    assert "keys_differing_in_leading_zeros" not in report.summary
    assert raw.reading_settings(strip) != raw.reading_settings(kept)  # a rejected file is read again
    from many_models_platform.lifecycle import resolve_key  # a key typed as the export writes it

    assert resolve_key(strip, "store=007, brand=b") == resolve_key(strip, "007.b") == seven
    assert resolve_key(kept, "store=007, brand=b") == encode_key(["007", "b"])


def test_rows_folded_by_sum_have_no_row_id_and_last_keeps_the_kept_rows():
    """A row id names one row: rows that ``sum`` folds into one have none (they are counted as
    merged), while ``last`` keeps the id of the row it keeps."""
    from many_models_platform.core import ingest as core_ingest

    rows = pl.DataFrame(
        {
            "store": ["s1", "s1", "s1"],
            "brand": ["b"] * 3,
            "week_start": [D(2024, 1, 1), D(2024, 1, 1), D(2024, 1, 8)],
            "price": [1.0, 3.0, 2.0],
            "order": ["a", "b", "c"],
            core_ingest.DROP: pl.Series([None] * 3, dtype=pl.Utf8),
            core_ingest.FILE: pl.Series([0] * 3, dtype=pl.Int32),
        }
    )
    body = forecast_body(scoring_source={"path": "landing/f/*.csv", "row_id": "order"})
    cases = {"sum": ([None, "c"], [2.0, 2.0]), "last": (["b", "c"], [3.0, 2.0]), "first": (["a", "c"], [1.0, 2.0])}
    for policy, (ids, prices) in cases.items():
        spec = make_spec({**body, "duplicates": policy})
        kept = core_ingest.resolve(rows, spec).data.sort("week_start")
        assert (kept["order"].to_list(), kept["price"].to_list()) == (ids, prices), policy


# --- bounded memory: rows resolved a bucket of keys at a time ---------------------------------
def panel_csv(keys: range, weeks: int, repeat: str | None = None) -> str:
    """Weekly rows with an integer price; ``repeat``: a store whose first week appears twice."""
    start = D(2024, 1, 1)
    lines = [
        f"s{k},b,{start + dt.timedelta(weeks=w)},{k % 7},{k + w}\n"
        for k in keys
        for w in range(weeks)
        for _ in range(2 if (repeat == f"s{k}" and w == 0) else 1)
    ]
    return "store,brand,week_start,price,quantity\n" + "".join(lines)


def resolved_frames(monkeypatch) -> list[pl.DataFrame]:
    """Every frame the stage hands to ``core.ingest.resolve``, recorded."""
    seen, resolve = [], raw.core_ingest.resolve

    def recording(data, *args, **kwargs):
        seen.append(data)
        return resolve(data, *args, **kwargs)

    monkeypatch.setattr(raw.core_ingest, "resolve", recording)
    return seen


def test_rows_are_resolved_a_bounded_bucket_at_a_time_with_the_results_of_one_pass(settings, monkeypatch):
    for i in range(3):  # 60 keys x 50 weeks, 3,000 rows; s5 repeats a week, which 'mean' merges
        land(settings, f"p/part{i}.csv", panel_csv(range(20 * i, 20 * i + 20), 50, repeat="s5"))
    spec = make_spec(forecast_body(source={"path": "landing/p/*.csv"}, lags=[], duplicates="mean"), name="p")
    keys = discover_keys(spec, Lake(settings.lake_url))
    monkeypatch.setattr(raw, "BATCH_ROWS", max(raw.BATCH_ROWS, 300))  # read in batches: 4 per file, not 500

    monkeypatch.setattr(raw, "ROWS_PER_BUCKET", 10**9)  # one bucket: the whole landing zone at once
    whole, whole_out = run_raw(settings, spec, keys)
    one = {k: bronze(settings, spec, k) for k in keys}

    monkeypatch.setattr(raw, "ROWS_PER_BUCKET", 300)
    seen = resolved_frames(monkeypatch)
    report, out = run_raw(settings, spec, keys)
    assert len(seen) >= 5 and max(f.height for f in seen) <= 1_000  # never the zone's 3,000 rows
    for k in keys:  # the same bronze, column types included ('mean' makes the integer price Float64)
        assert bronze(settings, spec, k).equals(one[k]) and one[k].schema["price"] == pl.Float64
        assert out[k].info == whole_out[k].info
    assert report.summary == whole.summary and report.summary["rows_merged"] == 1


def test_a_ranged_run_resolves_only_its_keys_rows_and_still_counts_every_file(settings, monkeypatch):
    land(settings, "p/part0.csv", panel_csv(range(0, 30), 20, repeat="s20"))
    land(settings, "p/part1.csv", panel_csv(range(30, 60), 20))
    spec = make_spec(forecast_body(source={"path": "landing/p/*.csv"}, lags=[], duplicates="last"), name="p")
    keys = discover_keys(spec, Lake(settings.lake_url))
    full, _ = run_raw(settings, spec, keys)

    monkeypatch.setattr(raw, "ROWS_PER_BUCKET", 200)
    seen = resolved_frames(monkeypatch)
    ranged = [encode_key(["s3", "b"]), encode_key(["s41", "b"])]
    report, _ = run_raw(settings, spec, ranged)
    narrow = {"store", "brand", "week_start", "__file", "__drop"}
    rows = [f for f in seen if "quantity" in f.columns]
    assert sorted(pl.concat(rows)["store"].unique().to_list()) == ["s3", "s41"]
    assert sum(f.height for f in rows) == 40  # 2 keys x 20 weeks, nothing of the other 58 keys
    assert all(set(f.columns) <= narrow for f in seen if "quantity" not in f.columns)
    assert [o.key for o in report.outcomes] == ranged and all(o.ok for o in report.outcomes)
    # per-file totals still cover every key (s20's repeated week), as a full run reports them
    assert report.summary["files"] == full.summary["files"] and report.summary["rows_dropped"] == 1


def test_a_ranged_run_takes_the_column_types_of_a_full_run_when_other_keys_merge(settings, monkeypatch):
    """'mean' makes numbers floats once any (key, time) repeats; a ranged run's keys get the
    types a full run gives them even when only keys outside the run repeat."""
    land(settings, "p/part0.csv", panel_csv(range(0, 30), 20, repeat="s20"))
    land(settings, "p/part1.csv", panel_csv(range(30, 60), 20))
    spec = make_spec(forecast_body(source={"path": "landing/p/*.csv"}, lags=[], duplicates="mean"), name="p")
    key = encode_key(["s3", "b"])
    run_raw(settings, spec)
    full = bronze(settings, spec, key)
    monkeypatch.setattr(raw, "ROWS_PER_BUCKET", 200)
    report, out = run_raw(settings, spec, [key])
    assert out[key].ok and full.schema["price"] == pl.Float64
    assert bronze(settings, spec, key).schema == full.schema and bronze(settings, spec, key).equals(full)
    assert report.summary["rows_merged"] == 1  # s20's repeat, outside the run, still counted


def test_spilled_rows_go_to_local_temp_space_and_are_removed_also_on_error(settings, monkeypatch, tmp_path):
    """The lake may be remote: buckets are spilled under the local temporary directory, never
    the lake, and the folder is gone after the run, whether it succeeded or failed."""
    for i in range(2):
        land(settings, f"p/part{i}.csv", panel_csv(range(20 * i, 20 * i + 20), 30))
    spec = make_spec(forecast_body(source={"path": "landing/p/*.csv"}, lags=[], duplicates="last"), name="p")
    temp = tmp_path / "local-temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.setattr(raw, "ROWS_PER_BUCKET", 300)
    spilled, resolve = [], raw.core_ingest.resolve

    def failing(data, *args, **kwargs):
        spilled.extend(temp.rglob("*.arrow"))
        if "quantity" in data.columns:  # the first bucket of whole rows, after spilling every file
            raise RuntimeError("boom")
        return resolve(data, *args, **kwargs)

    monkeypatch.setattr(raw.core_ingest, "resolve", failing)
    with pytest.raises(RuntimeError, match="boom"):
        run_raw(settings, spec)
    assert spilled and not list(temp.iterdir())  # spilled locally, then removed on the error
    assert not list(Path(settings.lake_url).rglob("*.arrow"))
    monkeypatch.setattr(raw.core_ingest, "resolve", resolve)
    report, _ = run_raw(settings, spec)
    assert all(o.ok for o in report.outcomes) and not list(temp.iterdir())


def test_spill_folders_of_killed_runs_are_removed_and_live_ones_kept(settings, tmp_path, monkeypatch):
    """A killed run's spill folder (its ``finally`` never ran: gigabytes at 40M rows) is removed
    by the next ``raw``; folders of live processes, of other hosts and not ours stay."""
    import subprocess
    import sys

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        folders = {
            "dead": tmp / f"{raw._spill_prefix(dead.pid)}abc",
            "alive": tmp / f"{raw._spill_prefix(alive.pid)}def",
            "other host": tmp / f"mmp-spill-elsewhere.example-{dead.pid}-ghi",
            "not ours": tmp / f"mmp-raw-{dead.pid}",
        }
        for folder in folders.values():
            folder.mkdir()
            (folder / "bucket-0.arrow").write_bytes(b"x" * 10)
        land(settings, "panel/a.csv", "country,year,x1,x2,y\n0012,1980,1,2,3.5\n0012,1981,1,2,4.5\n")
        _, out = run_raw(settings, yearly())
        assert out["0012"].ok
        assert {name: f.exists() for name, f in folders.items()} == {
            "dead": False,
            "alive": True,
            "other host": True,
            "not ours": True,
        }
        # and this run's own folder is gone once the stage ends
        assert sorted(p.name for p in tmp.iterdir()) == sorted(f.name for n, f in folders.items() if n != "dead")
    finally:
        alive.kill()
        alive.wait()


# --- a file too large to hold: read in batches ----------------------------------------------
def test_a_large_file_is_read_in_batches_by_rules_decided_over_the_whole_file(settings, monkeypatch):
    """Each rule here would come out differently if a batch of two rows decided it alone: the
    first batch's times are all dates (the file's are datetimes), its targets are all text (the
    file's are mostly numbers), its x1 values are all numbers (the file's are not)."""
    land(
        settings,
        "panel/a.csv",
        'country,year,x1,x2,y\nse,2020-01-06,"1,234.5",2,n/a\nse,2020-01-13,2,2,x\n'
        "se,2020-01-20 10:00,3,2,5\nse,2020-01-27,4,2,6\nse,2020-02-03,5,2,7\nse,2020-02-10,abc,2,8\n",
    )
    spec = yearly()
    monkeypatch.setattr(raw, "BATCHED_FILE_BYTES", 10**9)
    _, whole = run_raw(settings, spec)
    expected = bronze(settings, spec, "se")

    batches: list[int] = []
    add = raw.Spill.add
    monkeypatch.setattr(raw.Spill, "add", lambda self, *a, **kw: batches.append(a[-1]) or add(self, *a, **kw))
    monkeypatch.setattr(raw, "BATCHED_FILE_BYTES", -1)
    monkeypatch.setattr(raw, "BATCH_ROWS", 2)
    report, out = run_raw(settings, spec)
    assert batches == [0, 1, 2]  # three batches of two rows
    got = bronze(settings, spec, "se")
    assert got.equals(expected) and got.schema == expected.schema
    assert got.schema["year"] == pl.Datetime("us") and got.schema["x1"] == pl.Utf8
    assert got["year"].to_list()[0] == dt.datetime(2020, 1, 20, 10) and got["y"].to_list() == [5.0, 6.0, 7.0, 8.0]
    assert out["se"].info == whole["se"].info
    assert out["se"].info["drops"] == {"target is null": 1, "target is not a number": 1}  # n/a is a missing value
    assert report.summary["files"][0]["status"] == "ingested"


def test_a_large_file_rejected_by_a_late_row_leaves_none_of_its_rows(settings, monkeypatch):
    """A ragged last line rejects a file read in batches with a whole read's reason (the pass
    over the whole file meets it before any batch is spilled): the other file's rows are all
    that reach bronze."""
    monkeypatch.setattr(raw, "BATCHED_FILE_BYTES", -1)
    monkeypatch.setattr(raw, "BATCH_ROWS", 2)
    rows = "se,2020,1,2,3\nse,2021,1,2,4\nse,2022,1,2,5\nse,2023,1,2,6,7\n"
    land(settings, "panel/a.csv", "country,year,x1,x2,y\n" + rows)
    land(settings, "panel/b.csv", "country,year,x1,x2,y\nse,2024,1,2,9\n")
    report, out = run_raw(settings, yearly(), keys=["se"])
    statuses = [(f["file"].split("/")[-1], f["status"]) for f in report.summary["files"]]
    assert statuses == [("a.csv", "rejected"), ("b.csv", "ingested")]
    assert "more fields than the header" in report.summary["rejected"][0]["reason"]
    assert bronze(settings, yearly(), "se")["y"].to_list() == [9.0] and out["se"].info["rows"] == 1


def test_a_large_file_rewritten_while_read_keeps_only_its_new_rows(settings, monkeypatch):
    """The file shrinks after its batches were spilled: they are taken back before it is read
    again, so no row of the old content reaches bronze."""
    monkeypatch.setattr(raw, "BATCHED_FILE_BYTES", -1)
    monkeypatch.setattr(raw, "BATCH_ROWS", 2)
    path = land(settings, "panel/a.csv", "country,year,x1,x2,y\nse,2020,1,2,3\nse,2021,1,2,4\nse,2022,1,2,5\n")
    signature, rewritten = Lake.signature, []

    def rewritten_after_the_read(self, p):
        if not rewritten:
            rewritten.append(True)
            path.write_text("country,year,x1,x2,y\nse,2030,1,2,9\n")
            os.utime(path, ns=(3, 3))
        return signature(self, p)

    monkeypatch.setattr(Lake, "signature", rewritten_after_the_read)
    report, out = run_raw(settings, yearly(), keys=["se"])
    assert rewritten and report.summary["files"][0]["status"] == "ingested"
    assert bronze(settings, yearly(), "se")["y"].to_list() == [9.0] and out["se"].info["rows"] == 1


def test_exports_in_other_encodings_with_a_detected_separator_and_odd_names_read_either_way(settings):
    """A UTF-16 export and cp1252 ones whose header holds a non-ASCII column, the separator left
    to detection; a bracketed file name (a glob pattern to polars) next to a file it would
    match. Read whole and in batches alike (a decoded copy is UTF-8)."""
    lake = Path(settings.lake_url) / "landing"
    files = {
        "u16/a.csv": ("mittel", 3, "utf-16"),
        "win/b.csv": ("klein", 4, "cp1252"),
        "utf8/c[1].csv": ("groß", 5, "utf-8"),
        "utf8/c1.csv": ("groß", 6, "utf-8"),
        "utf8/d[1].parquet": ("groß", 7, "parquet"),
        "utf8/d1.parquet": ("groß", 8, "parquet"),
    }
    for name, (key, y, encoding) in files.items():
        (lake / name).parent.mkdir(parents=True, exist_ok=True)
        row = {"größe": [key], "year": [2015 + y], "x1": [1], "x2": [2], "y": [float(y)]}
        if encoding == "parquet":
            pl.DataFrame(row).write_parquet(lake / name)
        else:
            (lake / name).write_bytes(f"größe;year;x1;x2;y\n{key};{2015 + y};1;2;{y}\n".encode(encoding))
    for folder, encoding, pattern in (("u16", "utf-16", "*.csv"), ("win", "cp1252", "*.csv"), ("utf8", "utf8", "*")):
        source = {"path": f"landing/{folder}/{pattern}", "format": "csv", "csv": {"encoding": encoding}}
        if folder == "utf8":  # CSV and Parquet: one format per source
            for fmt in ("csv", "parquet"):
                source = {"path": f"landing/{folder}/*.{fmt}", "format": fmt}
                spec = make_spec(regression_body(source=source, keys=["größe"], time_column="year"), name=fmt)
                report, _ = run_raw(settings, spec)
                assert [f["status"] for f in report.summary["files"]] == ["ingested"] * 2
                got = bronze(settings, spec, encode_key(["groß"]))["y"].to_list()
                assert got == ([6.0, 5.0] if fmt == "csv" else [8.0, 7.0])  # name order: c1 before c[1], d1 before d[1]
            continue
        spec = make_spec(regression_body(source=source, keys=["größe"], time_column="year"), name=folder)
        report, _ = run_raw(settings, spec)
        assert [f["status"] for f in report.summary["files"]] == ["ingested"]
        assert bronze(settings, spec, "klein" if folder == "win" else "mittel")["y"].to_list() == [
            4.0 if folder == "win" else 3.0
        ]


def test_unreadable_large_files_are_rejected_and_the_stage_goes_on(settings):
    """A cp1252 byte that is no character, a Parquet file with a broken footer and a truncated
    gzip: each is rejected with its reason (in batches, these fail while the file is opened)."""
    folder = Path(settings.lake_url) / "landing" / "bad"
    folder.mkdir(parents=True)
    (folder / "a.csv").write_bytes(b"country,year,x1,x2,y\nse,2020,1,2,\x81\n")
    (folder / "b.csv.gz").write_bytes(gzip.compress(b"country,year,x1,x2,y\nse,2021,1,2,3\n" * 50)[:40])
    (folder / "c.csv").write_bytes(b"country,year,x1,x2,y\nse,2022,1,2,5\n")
    spec = yearly(
        "landing/bad/*", name="bad", source={"path": "landing/bad/*", "format": "csv", "csv": {"encoding": "cp1252"}}
    )
    report, out = run_raw(settings, spec)
    statuses = {f["file"].split("/")[-1]: f["status"] for f in report.summary["files"]}
    assert statuses == {"a.csv": "rejected", "b.csv.gz": "rejected", "c.csv": "ingested"}, report.summary["files"]
    assert out["se"].ok and out["se"].info["rows"] == 1
    pq = Path(settings.lake_url) / "landing" / "pq"
    pq.mkdir(parents=True)
    pl.DataFrame({"country": ["se"], "year": [2020], "x1": [1], "x2": [2], "y": [3.0]}).write_parquet(pq / "a.parquet")
    (pq / "b.parquet").write_bytes((pq / "a.parquet").read_bytes()[:-12] + b"\0" * 12)
    report, out = run_raw(settings, yearly("landing/pq/*.parquet", name="pq"), keys=["se"])
    assert [f["status"] for f in report.summary["files"]] == ["ingested", "rejected"] and out["se"].ok


def test_a_truncated_or_corrupt_small_gzip_is_rejected_until_it_changes(settings, monkeypatch):
    """A gzip file that does not decompress and did not change while read is rejected with why,
    on a local disk as on blob storage, not tried again as an I/O error on every run forever;
    once it is replaced by a whole file, it is read."""
    monkeypatch.setattr(raw, "RETRY_DELAYS", (0.0,))
    folder = Path(settings.lake_url) / "landing" / "gz"
    folder.mkdir(parents=True)
    body = b"country,year,x1,x2,y\n" + b"".join(b"se,%d,1,2,3\n" % (1900 + i) for i in range(100))
    (folder / "a.csv.gz").write_bytes(gzip.compress(body)[:-30])  # an upload cut short
    (folder / "b.CSV.GZ").write_bytes(b"\x1f\x8b\x08\x00" + b"not deflate" * 20)
    (folder / "c.csv").write_bytes(b"country,year,x1,x2,y\nse,2022,1,2,5\n")
    spec = yearly("landing/gz/*", name="gz", source={"path": "landing/gz/*", "format": "csv"})
    report, out = run_raw(settings, spec, keys=["se"])
    files = {f["file"].split("/")[-1]: f for f in report.summary["files"]}
    assert {n: f["status"] for n, f in files.items()} == {
        "a.csv.gz": "rejected",
        "b.CSV.GZ": "rejected",
        "c.csv": "ingested",
    }
    assert "gzip file is truncated or corrupt" in files["a.csv.gz"]["reason"]
    assert "gzip file is truncated or corrupt" in files["b.CSV.GZ"]["reason"]
    assert out["se"].ok and out["se"].info["rows"] == 1
    (folder / "a.csv.gz").write_bytes(gzip.compress(body))  # the upload finished
    report, out = run_raw(settings, spec, keys=["se"])
    files = {f["file"].split("/")[-1]: f for f in report.summary["files"]}
    assert files["a.csv.gz"]["status"] == "ingested" and files["b.CSV.GZ"]["status"] == "unchanged_rejected"
    assert out["se"].info["rows"] == 101


def test_a_report_exports_title_lines_above_the_header_are_skipped_and_shown(settings):
    """Exports from reporting tools put a title, an export date or filter lines above the header
    (with quotes and separators of their own): the header is found under them, in discovery as
    in ingest, and the file's entry says how many lines were skipped; without such a header the
    file is still rejected naming its first line's columns."""
    land(
        settings,
        "panel/a.csv",
        'Sales by country "all regions\nExported;2024-05-01\n\ncountry;year;x1;x2;y\n'
        "0012;2020;1;2;3\n0012;2021;1;2;4\nse;2020;1;2;5\n",
    )
    land(settings, "panel/b.csv", "Report\ncountry,year,x1,x2\nfr,2020,1,2\n")
    spec = yearly()
    assert {"0012", "se"} <= set(discover_keys(spec, Lake(settings.lake_url)))
    report, out = run_raw(settings, spec)
    files = {f["file"].split("/")[-1]: f for f in report.summary["files"]}
    assert files["a.csv"]["status"] == "ingested" and files["a.csv"]["lines_above_header"] == 2
    assert files["a.csv"]["rows"] == 3 and files["a.csv"]["rows_dropped"] == 0
    assert files["b.csv"]["status"] == "rejected" and "the file's columns are ['Report']" in files["b.csv"]["reason"]
    assert out["0012"].info["rows"] == 2 and bronze(settings, spec, "0012")["y"].to_list() == [3.0, 4.0]


def test_key_columns_written_into_folder_names_are_read_from_them(settings):
    """Spark and pandas' partition_cols write a column into the folder names instead of the
    files (country=se/part-0.parquet): the column is read from there, in discovery and ingest,
    for Parquet and CSV; a file that has the column itself keeps its own values."""
    root = Path(settings.lake_url) / "landing" / "hive"
    rows = pl.DataFrame({"year": [2020, 2021, 2022, 2023], "x1": [1, 2, 3, 4], "x2": [2, 2, 2, 2], "y": [3.0, 4, 5, 6]})
    (root / "country=se").mkdir(parents=True)
    rows.write_parquet(root / "country=se" / "part-0.parquet")
    (root / "country=South%20Africa").mkdir(parents=True)
    rows.write_csv(root / "country=South%20Africa" / "part-0.csv")
    (root / "country=fr").mkdir(parents=True)
    rows.with_columns(country=pl.lit("de")).write_parquet(root / "country=fr" / "part-1.parquet")
    parquet = yearly("landing/hive/*/*.parquet", name="hive_pq")
    assert sorted(discover_keys(parquet, Lake(settings.lake_url))) == ["de", "se"]
    _, out = run_raw(settings, parquet)
    assert {k for k, o in out.items() if o.ok} == {"se", "de"} and out["se"].info["rows"] == 4
    assert bronze(settings, parquet, "se")["country"].to_list() == ["se"] * 4
    csv = yearly("landing/hive/*/*.csv", name="hive_csv")
    assert discover_keys(csv, Lake(settings.lake_url)) == [encode_key(["South Africa"])]
    _, out = run_raw(settings, csv)
    assert out[encode_key(["South Africa"])].ok and out[encode_key(["South Africa"])].info["rows"] == 4


def test_a_forecast_key_whose_data_ends_long_before_the_others_is_listed(settings):
    weeks = [(D(2024, 1, 1) + dt.timedelta(weeks=w)).isoformat() for w in range(20)]
    rows = [("s1", w, 1 + i) for i, w in enumerate(weeks)] + [("s2", w, 2 + i) for i, w in enumerate(weeks[:6])]
    land(settings, "w/a.csv", weekly_csv(rows))
    spec = make_spec(forecast_body(source={"path": "landing/w/*.csv"}, lags=[], horizon=4), name="w")
    report, _ = run_raw(settings, spec, [encode_key(["s1", "b"]), encode_key(["s2", "b"])])
    assert report.summary["keys_ending_early"] == ["store=s2, brand=b (last 2024-02-05)"]
    assert report.summary["keys_ending_early_count"] == 1


def test_keys_that_differ_only_in_case_are_kept_apart_and_shown(settings):
    land(settings, "panel/a.csv", "country,year,x1,x2,y\nSe,2020,1,2,3\nSE ,2021,1,2,4\nse,2022,1,2,5\nfr,2020,1,2,3\n")
    report, out = run_raw(settings, yearly())
    assert {"Se", "SE", "se", "fr"} == set(out)  # case is data: three keys, surrounding spaces stripped
    assert report.summary["keys_differing_in_case"] == [["country=SE", "country=Se", "country=se"]]
    assert "keys_differing_in_leading_zeros" not in report.summary
    land(
        settings,
        "panel/b.csv",
        "country,year,x1,x2,y\n007,2020,1,2,3\n7,2021,1,2,4\n0,2021,1,2,4\n00,2021,1,2,4\n"
        "12,2021,1,2,4\n12.0,2022,1,2,4\n12.5,2022,1,2,4\n",
    )
    report, _ = run_raw(settings, yearly())
    assert report.summary["keys_differing_in_leading_zeros"] == [
        ["country=0", "country=00"],
        ["country=007", "country=7"],
        ["country=12", "country=12.0"],  # a text column with 12 and 12.0 (one pandas export with a gap)
    ]


def test_a_reports_footer_lines_make_no_keys_and_are_counted(settings):
    """Lines under the data ('Source: Statistics Office (table 12)', a 'Total' row) have no
    time, or text without a digit where it would be ('(c) 2024, all rights reserved' puts
    ' all rights reserved' there): they make no key (no partition failing on every run), and ingest counts them as rows
    dropped for their missing time, in their file's entry."""
    land(
        settings,
        "panel/a.csv",
        "country,year,x1,x2,y\nse,2020,1,2,3\nse,2021,1,2,4\nfr,2020,1,2,5\n\n"
        "Source: Statistics Office (table 12)\n(c) 2024 all rights reserved\nTotal,,,,12\n"
        "(c) 2024, all rights reserved\n",
    )
    spec = yearly()
    assert discover_keys(spec, Lake(settings.lake_url)) == ["fr", "se"]
    report, out = run_raw(settings, spec)
    entry = report.summary["files"][0]
    assert entry["rows"] == 7 and entry["rows_dropped"] == 4
    assert entry["drops"] == {"missing time value": 3, "unparseable time value": 1}
    assert set(out) == {"fr", "se"} and out["se"].info["rows"] == 2


def test_class_labels_that_differ_only_in_case_are_shown(settings):
    land(
        settings,
        "labels/a.csv",
        "segment,x1,x2,y\na,1,2,Gold\na,2,2,gold\nb,1,2,GOLD \nb,3,2,Silver\nb,4,2,Bronze\n",
    )
    spec = make_spec(
        regression_body(source={"path": "landing/labels/*.csv"}, task="classification", metric="accuracy"),
        name="labels",
    )
    report, _ = run_raw(settings, spec)
    assert report.summary["labels_differing_in_case"] == [["GOLD", "Gold", "gold"]]


def test_class_labels_written_1_in_one_file_and_1_0_in_another_are_one_class(settings):
    """January's export holds 0/1 and an N/A (a text column); February's, from pandas with a gap,
    0.0/1.0 (a float column): one class '1', not '1' and '1.0' (which scored a model on classes it
    never saw). Text written '1.0' is '1' too."""
    land(settings, "labels/a.csv", "segment,x1,x2,y\na,1,2,0\na,2,2,1\na,3,2,N/A\nb,1,2,1.0\n")
    land(settings, "labels/b.csv", "segment,x1,x2,y\na,4,2,0.0\na,5,2,1.0\nb,2,2,0.0\n")
    spec = make_spec(
        regression_body(source={"path": "landing/labels/*.csv"}, task="classification", metric="accuracy"),
        name="labels",
    )
    report, _ = run_raw(settings, spec)
    assert sorted(bronze(settings, spec, "a")["y"].to_list()) == ["0", "0", "1", "1"]
    assert sorted(bronze(settings, spec, "b")["y"].to_list()) == ["0", "1"]
    assert "label_sets_apart" not in report.summary  # one set of labels, however written


def test_files_whose_class_labels_share_none_are_shown(settings):
    """0/1 in January's export and no/yes in February's: four classes where two were meant."""
    land(settings, "sets/a.csv", "segment,x1,x2,y\na,1,2,0\na,2,2,1\n")
    land(settings, "sets/b.csv", "segment,x1,x2,y\na,3,2,no\na,4,2,yes\n")
    land(settings, "sets/c.csv", "segment,x1,x2,y\na,5,2,yes\n")  # one label: nothing to compare
    body = regression_body(source={"path": "landing/sets/*.csv"}, task="classification", metric="accuracy")
    report, _ = run_raw(settings, make_spec(body, name="sets"))
    assert report.summary["label_sets_apart"] == [
        {"file": "landing/sets/a.csv", "labels": ["0", "1"]},
        {"file": "landing/sets/b.csv", "labels": ["no", "yes"]},
    ]


def test_target_labels_make_one_class_of_each_way_it_is_written(settings):
    """The same files with ``target_labels``: 'yes', ' YES' and 1 are the class '1', 'no' and 0.0
    the class '0' (a float file), so two classes reach the model and no warning is left; a label
    not listed stays as written."""
    land(settings, "sets/a.csv", "segment,x1,x2,y\na,1,2,0\na,2,2,1\n")
    land(settings, "sets/b.csv", "segment,x1,x2,y\na,3,2,no\na,4,2, YES\na,6,2,maybe\n")
    land(settings, "sets/c.parquet", pl.DataFrame({"segment": ["a"], "x1": [5], "x2": [2], "y": [0.0]}))
    body = regression_body(
        source={"path": "landing/sets/*"},
        task="classification",
        metric="accuracy",
        target_labels={"1": ["yes", 1], "0": ["no", "0"]},
    )
    spec = make_spec(body | {"source": {"path": "landing/sets/*.csv"}}, name="sets")
    report, _ = run_raw(settings, spec)
    assert sorted(bronze(settings, spec, "a")["y"].to_list()) == ["0", "0", "1", "1", "maybe"]
    assert "label_sets_apart" not in report.summary
    floats = make_spec(body | {"source": {"path": "landing/sets/*.parquet"}}, name="floats")
    run_raw(settings, floats)
    assert bronze(settings, floats, "a")["y"].to_list() == ["0"]


def test_a_class_label_longer_than_the_warehouse_holds_is_a_counted_drop(settings):
    """PostgreSQL refuses a label longer than predictions.predicted_label, which failed the
    publish of every key: such a row is dropped at ingest, counted with its reason."""
    from many_models_platform.storage import warehouse as W

    assert raw.core_ingest.LABEL_LENGTH == W.LABEL_LENGTH == W.predictions.c.predicted_label.type.length
    assert W.predictions.c.actual_label.type.length == W.LABEL_LENGTH
    land(settings, "long/a.csv", f"segment,x1,x2,y\na,1,2,short\na,2,2,{'w' * 257}\na,3,2,{'😀' * 129}\n")
    body = regression_body(source={"path": "landing/long/*.csv"}, task="classification", metric="accuracy")
    _, out = run_raw(settings, make_spec(body, name="long"))
    assert out["a"].info["rows"] == 1 and out["a"].info["drops"] == {raw.core_ingest.LABEL_TOO_LONG: 2}


def test_a_category_code_written_2_in_one_file_and_2_0_in_another_is_one_category(settings):
    """A store type exported as 2 by one tool and as 2.0 by pandas (a float column with a gap,
    or text '2.0'): one category '2', so the model does not split it, nor take 2.0 for unseen."""
    land(settings, "cats/a.csv", "segment,x1,x2,y,kind\na,1,2,3,2\na,2,2,4,3\n")
    land(settings, "cats/b.csv", "segment,x1,x2,y,kind\na,3,2,5,2.0\na,4,2,6,\n")
    land(settings, "cats/c.csv", "segment,x1,x2,y,kind\na,5,2,7,3.0\na,6,2,8,x\n")
    spec = make_spec(regression_body(source={"path": "landing/cats/*.csv"}, categorical_features=["kind"]), name="cats")
    run_raw(settings, spec)
    assert bronze(settings, spec, "a")["kind"].to_list() == ["2", "3", "2", None, "3", "x"]


def test_the_side_files_spark_and_macos_leave_beside_exports_are_not_landing_files(settings):
    """A Spark output folder read with 'path: spark/*' holds _SUCCESS, .crc checksums and a
    _metadata summary beside its part files; a Mac adds .DS_Store. None is read or rejected."""
    frame = pl.DataFrame({"country": ["se"] * 4, "year": [2020, 2021, 2022, 2023], "x1": 1.0, "x2": 2.0, "y": 1.0})
    land(settings, "spark/part-00000.parquet", frame)
    for side in ("_SUCCESS", ".part-00000.parquet.crc", "_metadata", ".DS_Store", "_committed_123"):
        land(settings, f"spark/{side}", "\x00binary")
    spec = yearly("landing/spark/*", name="spark", source={"path": "landing/spark/*", "format": "parquet"})
    assert [f.name for f in Lake(settings.lake_url).listing(spec.source.path)] == ["landing/spark/part-00000.parquet"]
    report, out = run_raw(settings, spec)
    assert report.summary["rejected"] == [] and out["se"].ok and out["se"].info["rows"] == 4


def test_a_parquet_file_whose_text_columns_are_binary_reads_them_as_text(settings):
    """Hive and older writers store text as BINARY without the UTF8 annotation: the time column
    was rejected ('type Binary'), and a Binary target could not be a number."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "country": pa.array([b"se", b"se"], pa.binary()),
            "year": pa.array([b"2020", b"2021"], pa.binary()),
            "x1": [1.0, 2.0],
            "x2": [2.0, 3.0],
            "y": pa.array([b"3.5", b"4"], pa.binary()),
        }
    )
    path = Path(settings.lake_url) / "landing" / "hive" / "a.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(table, path)
    spec = yearly("landing/hive/*.parquet", name="hive")
    report, out = run_raw(settings, spec)
    assert report.summary["rejected"] == [] and out["se"].ok
    b = bronze(settings, spec, "se")
    assert b["year"].to_list() == [D(2020, 1, 1), D(2021, 1, 1)] and b["y"].to_list() == [3.5, 4.0]


def test_a_pandas_period_column_in_parquet_reads_as_the_times_its_periods_start(settings):
    """pandas saves ``dt.to_period('Y')`` as period numbers (54 for 2024) with its frequency
    beside them: the time column was rejected ('type Extension(pandas.period ...)')."""
    import pandas as pd

    frame = pd.DataFrame(
        {
            "country": ["se", "se", "se"],
            "year": pd.PeriodIndex(["2020", "2021", None], freq="Y"),
            "x1": [1.0, 2.0, 3.0],
            "x2": [2.0, 3.0, 4.0],
            "y": [3.5, 4.0, 5.0],
        }
    )
    path = Path(settings.lake_url) / "landing" / "periods" / "a.parquet"
    path.parent.mkdir(parents=True)
    frame.to_parquet(path)
    spec = yearly("landing/periods/*.parquet", name="periods")
    report, out = run_raw(settings, spec)
    assert report.summary["rejected"] == [] and out["se"].ok
    assert bronze(settings, spec, "se")["year"].to_list() == [D(2020, 1, 1), D(2021, 1, 1)]
    assert out["se"].info["drops"] == {"missing time value": 1}


def test_an_inch_mark_in_an_unquoted_value_reads_as_itself_and_a_quote_that_never_closes_rejects(settings):
    """polars cannot follow ``TV 55" screen`` (a quote inside a value that is not quoted); CSV
    readers such as Python's take it as the character it is, and so does the platform, beside
    properly quoted values. A quoted value that never closes is rejected naming its line."""
    lines = ["country,year,x1,x2,y,comment"] + [f"se,{2000 + i},1,2,{i},ok" for i in range(30)]
    lines[5] = 'se,2004,1,2,4,TV 55" screen'
    lines[6] = 'se,2005,1,2,5,"a, quoted ""value"""'
    land(settings, "inch/a.csv", "\n".join(lines) + "\n")
    spec = yearly("landing/inch/*.csv", name="inch", features=["x1", "x2"], categorical_features=["comment"])
    report, out = run_raw(settings, spec)
    assert report.summary["rejected"] == [] and out["se"].info["rows"] == 30
    b = bronze(settings, spec, "se")
    assert b["comment"].to_list()[4:6] == ['TV 55" screen', 'a, quoted "value"'] and b["y"].sum() == sum(range(30))
    # two inch marks ending values of a column not read: polars joined the lines between them
    # into one value and, reading only the wanted columns, lost those rows without an error
    ends = list(lines)
    ends[5], ends[6], ends[9] = 'se,2004,1,2,4,TV 55"', "se,2005,1,2,5,ok", 'se,2008,1,2,8,12"'
    land(settings, "ends/a.csv", "\n".join(ends) + "\n")
    report, out = run_raw(settings, yearly("landing/ends/*.csv", name="ends"))
    assert report.summary["rejected"] == [] and out["se"].info["rows"] == 30
    lines[8] = 'se,2007,1,2,7,"never closes'
    land(settings, "unclosed/a.csv", "\n".join(lines) + "\n")
    report, _ = run_raw(settings, yearly("landing/unclosed/*.csv", name="unclosed"))
    reason = report.summary["rejected"][0]["reason"]
    assert reason.startswith("the file's quoting does not close: a quoted value that never closes")
    assert "(the row from line 9 on: unexpected end of data)" in reason, reason


def test_stray_quotes_are_told_from_csv_quoting_across_the_chunks_a_large_file_is_scanned_in(monkeypatch):
    from many_models_platform.storage import lake as lake_module

    layout = lake_module.CsvLayout({"separator": ";"}, [], {}, {})
    quoted = b'a;b\n"x;1";2\n"say ""hi""";3\n'
    stray = {b'a;b\n1;TV 55" screen\n', b'a;b\n1;55"\n2;3\n', b'a;b\n"x";55"\n', b'a;b\n1;55"\n2;3'}
    for chunk in (3, 7, 2**20):  # a quote's neighbours and the quotes before a line end, over chunk edges
        monkeypatch.setattr(lake_module, "_QUOTE_SCAN", chunk)
        assert not lake_module._stray_quotes(quoted, layout)
        assert all(lake_module._stray_quotes(data, layout) for data in stray)


def test_a_wide_file_is_read_in_batches_when_its_rows_would_be_many_times_its_size(settings, monkeypatch):
    """One column per day (M5): unpivoted, a file takes about UNPIVOT_EXPANSION times its size,
    so one far below BATCHED_FILE_BYTES is streamed in batches, by discovery and ingest alike."""
    days = [f"d_{d}" for d in range(1, 31)]
    lines = ["item_id,store_id," + ",".join(days)] + [
        f"i{i},CA_1," + ",".join(str((i + d) % 4) for d in range(30)) for i in range(3)
    ]
    path = land(settings, "m5/sales.csv", "\n".join(lines) + "\n")
    monkeypatch.setattr(raw, "BATCHED_FILE_BYTES", path.stat().st_size * 4)  # a flat file this size is read whole
    opened: list[str] = []
    open_table = Lake.open_table
    monkeypatch.setattr(
        Lake, "open_table", lambda self, p, *a, **kw: opened.append(str(p)) or open_table(self, p, *a, **kw)
    )
    unpivot = {"columns": "d_*", "name": "d", "value": "sales"}
    body = forecast_body(source={"path": "landing/m5/*.csv", "unpivot": unpivot}, keys=["item_id", "store_id"])
    spec = make_spec({**body, "time_column": "d", "target": "sales", "features": [], "lags": [4]}, name="m5")
    report, out = run_raw(settings, spec)
    assert len(opened) == 2  # discovery's read of the key columns and ingest's
    key = encode_key(["i1", "CA_1"])
    assert report.summary["rejected"] == [] and out[key].info["rows"] == 30
    assert bronze(settings, spec, key).sort("d")["sales"].to_list()[:5] == [1.0, 2.0, 3.0, 0.0, 1.0]


def test_wide_exports_read_as_rows_by_configuration(settings):
    """One column per meter (a ';' export with decimal commas whose time column, pandas' index,
    has an empty header) and one column per year (a World Bank table, a gap in it): each value
    a row, its header a key or the time. CSV and Parquet alike; a file with no such column is
    rejected naming its columns."""
    import pandas as pd

    meters = ['"";"MT_001";"MT_002";"note"'] + [f'"2024-01-{d:02d}";{d},5;{10 + d};x' for d in range(1, 11)]
    land(settings, "meters/a.txt", "\n".join(meters) + "\n")
    body = forecast_body(
        source={"path": "landing/meters/*.txt", "unpivot": {"columns": "MT_*", "name": "meter", "value": "load"}},
        keys=["meter"],
        time_column="Unnamed: 0",
        target="load",
        features=[],
        lags=[2, 3],
        holdout={"periods": 2},
        horizon=2,
        min_rows=5,
    )
    spec = make_spec(body, name="meters")
    assert discover_keys(spec, Lake(settings.lake_url)) == ["MT_001", "MT_002"]
    report, out = run_raw(settings, spec)
    assert report.summary["rejected"] == [] and out["MT_001"].info["rows"] == out["MT_002"].info["rows"] == 10
    b = bronze(settings, spec, "MT_001").sort("Unnamed: 0")
    assert b["Unnamed: 0"][0] == D(2024, 1, 1) and b["load"].to_list()[:2] == [1.5, 2.5]
    assert bronze(settings, spec, "MT_002")["load"].sum() == sum(10 + d for d in range(1, 11))

    years = [str(y) for y in range(2000, 2010)]
    table = pd.DataFrame({"Country Name": ["Sweden", "Korea, Rep."], "Country Code": ["SWE", "KOR"]})
    table = table.assign(**{y: [100.0 + i, 200.0 + i] for i, y in enumerate(years)})
    table.loc[1, "2003"] = None
    (Path(settings.lake_url) / "landing" / "wb").mkdir(parents=True)
    table.to_csv(Path(settings.lake_url) / "landing" / "wb" / "gdp.csv", index=False)
    table.to_parquet(Path(settings.lake_url) / "landing" / "wb" / "gdp.parquet")
    for ext in ("csv", "parquet"):
        unpivot = {"columns": "[12][0-9][0-9][0-9]", "name": "year", "value": "gdp"}
        source = {"path": f"landing/wb/*.{ext}", "unpivot": unpivot}
        body = regression_body(source=source, keys=["Country Code"], time_column="year", target="gdp")
        wb = make_spec({**body, "features": [], "holdout": {"fraction": 0.25}}, name=f"wb_{ext}")
        report, out = run_raw(settings, wb)
        assert report.summary["rejected"] == [] and out["KOR"].info["drops"] == {"target is null": 1}
        b = bronze(settings, wb, "KOR").sort("year")
        assert b["year"][0] == D(2000, 1, 1) and b["gdp"].to_list()[:3] == [200.0, 201.0, 202.0] and b.height == 9
    land(settings, "flat/a.csv", "country,year,x1,x2,y\nse,2020,1,2,3\n")
    flat = yearly(source={"path": "landing/flat/*.csv", "unpivot": {"columns": "MT_*", "name": "x1", "value": "x2"}})
    report, _ = run_raw(settings, flat, keys=["se"])
    assert report.summary["rejected"][0]["reason"].startswith("no column's name matches unpivot columns 'MT_*'")


def test_a_full_spill_disk_fails_the_stage_instead_of_blaming_the_landing_file(settings, monkeypatch):
    land(settings, "panel/a.csv", "country,year,x1,x2,y\nse,2020,1,2,3\n")

    def full(path, frame):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(raw.pl.DataFrame, "write_ipc", lambda self, path, **kw: full(path, self))
    with pytest.raises(raw.SpillFailed, match="No space left on device"):
        run_raw(settings, yearly(), keys=["se"])
    assert not (Path(settings.lake_url) / "rejected").exists()


def test_a_csv_column_whose_values_change_type_after_the_first_10000_rows_is_read_not_rejected(settings, monkeypatch):
    monkeypatch.setattr(raw, "BATCH_ROWS", max(raw.BATCH_ROWS, 1000))  # read in batches: 11 of them, not 5,000
    lines = ["country,year,x1,x2,y"]
    for i in range(10_050):  # 201 countries x 50 years; x1 integers and y decimals until row 10,000
        lines.append(f"c{i // 50:03d},{1950 + i % 50},{i % 7},{i % 5},{i % 11}.5")
    lines[10_021] = "c200,1970,2.5,1,3.5"  # a decimal in the integer feature
    lines[10_031] = "c200,1980,1,NA,3.5"  # an export's missing value in the other one
    lines[10_041] = "c200,1990,1,1,n/a"  # and in the target
    land(settings, "panel/late.csv", "\n".join(lines) + "\n")
    report, out = run_raw(settings, yearly())
    assert not report.summary.get("rejected_files") and all(o.ok for o in out.values()) and len(out) == 201
    late = bronze(settings, yearly(), "c200").sort("year")
    assert late.schema["x1"] == late.schema["x2"] == pl.Float64
    assert late.filter(pl.col("year") == D(1970, 1, 1))["x1"].item() == 2.5
    assert late.filter(pl.col("year") == D(1980, 1, 1))["x2"].item() is None
    assert late.height == 49 and out["c200"].info["drops"] == {"target is null": 1}
    assert_balanced(out["c200"].info)
    assert bronze(settings, yearly(), "c000")["x1"].to_list()[:3] == [0.0, 1.0, 2.0]


def test_integer_ids_written_as_floats_in_a_csv_are_the_same_keys_as_the_integers(settings):
    """pandas writes an integer id column with gaps as floats (12.0, and an empty cell): in a
    CSV those are text, read as the integers they stand for when the whole column is such floats;
    a file that also holds 12.5 keeps its ids as written."""
    land(settings, "panel/a_jan.csv", "country,year,x1,x2,y\n12,2001,1,2,3\n7,2001,1,2,3\n")
    land(settings, "panel/b_feb.csv", "country,year,x1,x2,y\n12.0,2002,1,2,4\n,2002,1,2,4\n7.0,2002,1,2,5\n")
    land(settings, "panel/c_mar.csv", "country,year,x1,x2,y\n12.0,2003,1,2,4\n12.5,2003,1,2,6\n")
    spec = yearly()
    keys = ["12", "12%2E0", "12%2E5", "7"]  # encoded: c_mar.csv's 12.0 and 12.5 stay as written
    assert discover_keys(spec, Lake(settings.lake_url)) == keys
    _, out = run_raw(settings, spec)
    assert set(out) == set(keys)
    assert out["12"].info["rows_in"] == 2 and out["7"].info["rows_in"] == 2
    assert bronze(settings, spec, "12")["year"].to_list() == [D(2001, 1, 1), D(2002, 1, 1)]
