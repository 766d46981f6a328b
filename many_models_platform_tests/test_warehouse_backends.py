"""The warehouse on every backend: DuckDB and PostgreSQL for real, SQL Server / Synapse compiled.

PostgreSQL is the server on 127.0.0.1:5432 (trust auth, user postgres; ``MMP_TEST_PG`` to point
elsewhere). Each test module gets a throwaway database ``mmp_test_<hex>`` and each test its own
schema in it. Without a server these tests are skipped, unless ``CI`` is set: then they fail.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import math
import re
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import polars as pl
import pytest
import sqlalchemy as sa
from pg_helpers import postgres_database, sqlalchemy_url
from sqlalchemy.schema import CreateTable

from many_models_platform.storage import warehouse as W
from many_models_platform.storage.migrations import alembic_config, head_revision
from many_models_platform.storage.warehouse import Warehouse

DAY = dt.date(2025, 3, 1)
NOW = dt.datetime(2025, 3, 1, 12, 0, 0, 123456)
HOSTILE = [
    "plain",
    'it\'s "quoted"',
    "comma, separated",
    "back\\slash\\",
    "\\N",
    "\\.",
    "line\nbreak\r\nand\ttab",
    "a\n\\.\nb",
    "unicodé ✓ 北京 🚀",
    "100% %s %(x)s",
    "x'); DROP TABLE predictions; --",
    "",
    " ",
    "NULL",
]


# -- frames as the publisher builds them ---------------------------------------------------


def publish_frames(keys: list[str], version: int, rows: int = 3, run_id: str = "run-1"):
    """(frames, append) for ``replace_keys``: every table the publish stage writes."""
    n = len(keys)
    preds = pl.DataFrame(
        {
            "key": [k for k in keys for _ in range(rows)],
            "row_index": [i for _ in keys for i in range(rows)],
            "key_label": [f"id={k}" for k in keys for _ in range(rows)],
            "period": [NOW + dt.timedelta(days=i) for _ in keys for i in range(rows)],
            "kind": ["forecast"] * (n * rows),
            "prediction": [version * 100.0 + i + 0.1 for _ in keys for i in range(rows)],
            "predicted_label": pl.Series([None] * (n * rows), dtype=pl.Utf8),
            "actual": pl.Series([None] * (n * rows), dtype=pl.Float64),
            "model_name": [f"uc.{k}" for k in keys for _ in range(rows)],
            "model_version": [version] * (n * rows),
            "dagster_run_id": [run_id] * (n * rows),
            "published_at": [NOW] * (n * rows),
        }
    )
    metrics = pl.DataFrame(
        {
            "key": keys,
            "model_role": ["candidate"] * n,
            "metric": ["rmse"] * n,
            "value": [version + 0.5] * n,
            "model_name": [f"uc.{k}" for k in keys],
            "model_version": [version] * n,
            "estimator": ["ridge"] * n,
            "dagster_run_id": [run_id] * n,
        }
    )
    status = pl.DataFrame(
        {
            "key": [k for k in keys for _ in range(2)],
            "stage": ["predictions", "published"] * n,
            "key_label": [f"id={k}" for k in keys for _ in range(2)],
            "status": ["ok"] * (2 * n),
            "reason": pl.Series([None, f"v{version}"] * n, dtype=pl.Utf8),
            "dagster_run_id": [run_id] * (2 * n),
            "updated_at": [NOW] * (2 * n),
            "rows_in": [10, None] * n,
            "rows_out": [7, None] * n,
            "rows_dropped": [2, None] * n,
            "rows_merged": [1, None] * n,
            "drop_detail": pl.Series(["target is null: 2", None] * n, dtype=pl.Utf8),
        }
    )
    decisions = pl.DataFrame(
        {
            "key": keys,
            "decided_at": [NOW] * n,
            "decision": ["promoted"] * n,
            "reason": ["first model for this key"] * n,
            "metric": ["rmse"] * n,
            "candidate_version": [version] * n,
            "candidate_value": [version + 0.5] * n,
            "champion_version": pl.Series([None] * n, dtype=pl.Int64),
            "champion_value": pl.Series([None] * n, dtype=pl.Float64),
            "production_version": [version] * n,
            "decided_by": [f"dagster run {run_id}"] * n,
            "dagster_run_id": [run_id] * n,
        }
    )
    summary = pl.DataFrame(
        [
            {
                "run_date": DAY,
                "dagster_run_id": run_id,
                "keys_total": n,
                "keys_published": n,
                "keys_failed": 0,
                "keys_promoted": n,
                "metric": "rmse",
                "metric_p10": 1.0,
                "metric_p50": 2.0,
                "metric_p90": 3.0,
                "published_at": NOW,
                "rows_landed": 3 * n,
                "rows_dropped": 0,
                "rows_merged": 0,
                "files_rejected": 0,
                "stopped_at_stage": None,
                "stop_reason": None,
            }
        ],
        schema=W.polars_schema(W.run_summary) | {"use_case": pl.Null},
    ).drop("use_case")
    # two key columns: store and brand
    columns = pl.DataFrame(
        {
            "key": [k for k in keys for _ in range(2)],
            "position": [0, 1] * n,
            "column_name": ["store", "brand"] * n,
            "value": [v for k in keys for v in (f"s-{k}", f"b-{k}")],
        }
    )
    common = [pl.lit("uc").alias("use_case"), pl.lit(DAY).alias("run_date")]
    frames = {
        "predictions": preds.with_columns(common),
        "key_metrics": metrics.with_columns(common),
        "key_status": status.with_columns(common),
        "key_columns": columns.with_columns(pl.lit("uc").alias("use_case")),
    }
    append = {"promotion_history": decisions.with_columns(common), "run_summary": summary}
    return frames, append


def snapshot(wh: Warehouse) -> dict[str, list[tuple]]:
    """Every published table's rows, sorted, as plain Python values."""
    out = {}
    for table in W.metadata.sorted_tables:
        cols = ", ".join(f'"{c.name}"' for c in table.columns)
        rows = wh.query(f'SELECT {cols} FROM "{table.name}"').rows()
        out[table.name] = sorted(rows, key=repr)
    return out


def counts(wh: Warehouse) -> dict[str, int]:
    return {t: len(rows) for t, rows in snapshot(wh).items()}


# -- backends --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_database():
    """A throwaway database on the PostgreSQL server, dropped at the end of the module."""
    with postgres_database("mmp_test") as name:
        yield sa.make_url(sqlalchemy_url(name))


@pytest.fixture
def pg_url(pg_database) -> str:
    """A URL whose connections live in a fresh schema of the module's database."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(pg_database)
    with engine.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    engine.dispose()
    url = pg_database.update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False)


@pytest.fixture(params=["duckdb", "postgres"])
def url(request, tmp_path) -> str:
    if request.param == "duckdb":
        return f"duckdb:///{tmp_path / 'wh.duckdb'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def wh(url):
    warehouse = Warehouse(url)
    warehouse.ensure_schema()
    yield warehouse
    warehouse.dispose()


def column_types(wh: Warehouse, table: str) -> dict[str, tuple[str, str]]:
    """column -> (data_type, is_nullable) from information_schema (DuckDB cannot reflect through SQLAlchemy)."""
    got = wh.query(
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
        "WHERE table_name = :t AND table_schema = current_schema()",
        t=table,
    )
    return {r[0]: (r[1].lower(), r[2]) for r in got.rows()}


def migrate(url: str) -> None:
    """ensure_schema through a Warehouse that lets go of the database afterwards."""
    wh = Warehouse(url)
    wh.ensure_schema()
    wh.dispose()


# -- schema through Alembic ---------------------------------------------------------------------


def test_schema_is_created_by_alembic_and_matches_the_tables(wh):
    assert wh.current_revision() == head_revision() == W.SCHEMA_REVISION == "0005"
    assert wh.query("SELECT version_num FROM alembic_version").rows() == [("0005",)]
    assert {t.name for t in W.metadata.sorted_tables} | {"alembic_version"} == set(wh.table_names())
    doubles = {"double", "double precision"}
    for table in W.metadata.sorted_tables:
        got = column_types(wh, table.name)
        assert set(got) == {c.name for c in table.columns}, table.name
        for c in table.columns:
            assert got[c.name][1] == ("YES" if c.nullable else "NO"), (table.name, c.name)
            if isinstance(c.type, sa.Double):
                assert got[c.name][0] in doubles, (table.name, c.name, got[c.name])


def test_postgres_schema_has_no_drift_from_the_metadata(pg_url):
    """Alembic's autogenerate finds nothing to change: migrations and warehouse.py agree."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    wh = Warehouse(pg_url)
    wh.ensure_schema()
    with wh.engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), W.metadata)
    wh.dispose()
    assert diffs == []


def test_ensure_schema_at_head_is_one_query_then_cached(url):
    migrate(url)
    wh = Warehouse(url)
    statements: list[str] = []
    sa.event.listen(wh.engine, "before_cursor_execute", lambda c, cur, stmt, *a: statements.append(stmt))
    wh.ensure_schema()
    assert statements == ["SELECT version_num FROM alembic_version"]
    wh.ensure_schema()
    assert len(statements) == 1
    wh.dispose()


def test_ensure_schema_at_head_does_not_import_alembic(tmp_path):
    url = f"duckdb:///{tmp_path / 'wh.duckdb'}"
    migrate(url)
    code = (
        "import sys\n"
        "from many_models_platform.storage.warehouse import Warehouse\n"
        f"Warehouse({url!r}).ensure_schema()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_concurrent_ensure_schema_on_postgres_from_several_processes(pg_url, tmp_path):
    """Processes that all find an empty database migrate one after the other, not at once."""
    go = tmp_path / "go"
    code = textwrap.dedent(
        f"""
        import pathlib, sys, time
        from many_models_platform.storage.warehouse import Warehouse
        wh = Warehouse({pg_url!r})
        assert wh.current_revision() is None
        pathlib.Path(sys.argv[1]).touch()
        while not pathlib.Path({str(go)!r}).exists():
            time.sleep(0.001)
        wh.ensure_schema()
        print(wh.current_revision())
        """
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path / f"ready{i}")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    try:
        while not all((tmp_path / f"ready{i}").exists() for i in range(3)):
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.01)
        go.touch()
        results = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (out, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
        assert out.strip() == "0005"
    wh = Warehouse(pg_url)
    assert wh.query("SELECT version_num FROM alembic_version").rows() == [("0005",)]
    wh.dispose()


def test_concurrent_ensure_schema_from_threads(url):
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)
    warehouses = [Warehouse(url) for _ in range(4)]

    def migrate(w: Warehouse) -> None:
        try:
            barrier.wait()
            w.ensure_schema()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=migrate, args=(w,)) for w in warehouses]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for w in warehouses:
        w.dispose()
    assert errors == []
    wh = Warehouse(url)
    assert wh.current_revision() == "0005"
    wh.dispose()


def test_a_warehouse_migrated_by_newer_code_is_refused(tmp_path):
    url = f"duckdb:///{tmp_path / 'wh.duckdb'}"
    migrate(url)
    engine = W.create_warehouse_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0099'")
    engine.dispose()
    wh = Warehouse(url)
    with pytest.raises(RuntimeError, match="revision '0099', which this version"):
        wh.ensure_schema()
    wh.dispose()


# -- adopting a warehouse made before migrations --------------------------------------------------


ADDED_SINCE_0003 = {"predictions": ("period_index", "actual_label", "row_id")}  # revisions 0003 to 0005
ADDED_IN_0002 = {
    "key_status": ("rows_in", "rows_out", "rows_dropped", "rows_merged", "drop_detail"),
    "run_summary": (
        "rows_landed",
        "rows_dropped",
        "rows_merged",
        "files_rejected",
        "stopped_at_stage",
        "stop_reason",
    ),
}


def old_metadata(shape: str) -> sa.MetaData:
    """The tables as ``metadata.create_all`` made them before Alembic.

    ``current``: the last pre-Alembic code (same tables as revision 0001, unnamed keys).
    ``oldest``: 4-byte REAL values, no ``decided_by``, no ``model_family``.
    Neither has what revisions 0002 to 0005 added.
    """
    md = sa.MetaData()
    for table in W.metadata.sorted_tables:
        if (shape == "oldest" and table.name == "model_family") or table.name == "key_columns":
            continue
        cols = []
        for c in table.columns:
            added = (*ADDED_IN_0002.get(table.name, ()), *ADDED_SINCE_0003.get(table.name, ()))
            if (shape == "oldest" and c.name == "decided_by") or c.name in added:
                continue
            kind = sa.REAL() if shape == "oldest" and isinstance(c.type, sa.Double) else c.type
            cols.append(sa.Column(c.name, kind, nullable=c.nullable))
        sa.Table(table.name, md, *cols, sa.PrimaryKeyConstraint(*[c.name for c in table.primary_key.columns]))
    return md


@pytest.mark.parametrize("shape", ["current", "oldest"])
def test_a_pre_alembic_warehouse_is_adopted_with_its_rows(url, shape):
    engine = W.create_warehouse_engine(url)
    md = old_metadata(shape)
    md.create_all(engine)
    frames, append = publish_frames(["a", "b"], version=1)
    old_decisions = append["promotion_history"].select([c.name for c in md.tables["promotion_history"].columns])
    with engine.begin() as conn:
        conn.execute(md.tables["predictions"].insert(), frames["predictions"].to_dicts())
        conn.execute(md.tables["promotion_history"].insert(), old_decisions.to_dicts())
    engine.dispose()

    wh = Warehouse(url)
    assert wh.current_revision() is None
    wh.ensure_schema()
    assert wh.current_revision() == "0005"
    assert {"model_family", "key_columns"} <= set(wh.table_names())
    assert "decided_by" in column_types(wh, "promotion_history")
    assert column_types(wh, "predictions")["prediction"][0] in {"double", "double precision"}
    kept = wh.query("SELECT key, row_index, prediction FROM predictions ORDER BY key, row_index")
    want = frames["predictions"].select("key", "row_index", "prediction").rows()
    assert [r[:2] for r in kept.rows()] == [r[:2] for r in want]
    # values written into the old 4-byte columns keep their (single) precision
    assert kept["prediction"].to_list() == pytest.approx([r[2] for r in want], rel=1e-6)

    # publishing into the adopted tables (decided_by was appended as the last column there)
    frames, append = publish_frames(["a", "b"], version=2, run_id="run-2")
    wh.replace_keys("uc", DAY, ["a", "b"], frames, append)
    got = wh.query("SELECT decided_by, dagster_run_id FROM promotion_history WHERE dagster_run_id = 'run-2'")
    assert got.rows() == [("dagster run run-2", "run-2")] * 2
    assert counts(wh)["predictions"] == 6
    wh.dispose()


def test_adoption_stops_on_a_missing_not_null_column(tmp_path):
    url = f"duckdb:///{tmp_path / 'wh.duckdb'}"
    engine = W.create_warehouse_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE run_summary (use_case VARCHAR NOT NULL, run_date DATE NOT NULL)")
    engine.dispose()
    wh = Warehouse(url)
    with pytest.raises(RuntimeError, match="run_summary lacks NOT NULL column dagster_run_id"):
        wh.ensure_schema()
    assert wh.current_revision() is None  # nothing half-done: the upgrade rolled back
    assert set(wh.table_names()) == {"run_summary"}
    wh.dispose()


def test_a_0001_warehouse_with_rows_is_upgraded_to_the_head(url):
    """A warehouse migrated by the previous release keeps its rows; the new columns start NULL."""
    from many_models_platform.storage.migrations import upgrade

    engine = W.create_warehouse_engine(url)
    with engine.begin() as conn:
        upgrade(conn, "0001")
    frames, append = publish_frames(["a", "b"], version=1)
    old_status = frames["key_status"].drop(*ADDED_IN_0002["key_status"])
    old_summary = append["run_summary"].drop(*ADDED_IN_0002["run_summary"]).with_columns(pl.lit("uc").alias("use_case"))
    with engine.begin() as conn:
        conn.execute(
            sa.table("key_status", *[sa.column(c) for c in old_status.columns]).insert(), old_status.to_dicts()
        )
        conn.execute(
            sa.table("run_summary", *[sa.column(c) for c in old_summary.columns]).insert(), old_summary.to_dicts()
        )
    engine.dispose()

    wh = Warehouse(url)
    assert wh.current_revision() == "0001"
    wh.ensure_schema()
    assert wh.current_revision() == "0005"
    assert "key_columns" in set(wh.table_names())
    for table, added in {**ADDED_IN_0002, **ADDED_SINCE_0003}.items():
        got = column_types(wh, table)
        assert all(got[c][1] == "YES" for c in added), (table, got)
    kept = wh.query("SELECT key, stage, reason, rows_in, drop_detail FROM key_status ORDER BY key, stage")
    assert kept.rows() == [
        ("a", "predictions", None, None, None),
        ("a", "published", "v1", None, None),
        ("b", "predictions", None, None, None),
        ("b", "published", "v1", None, None),
    ]
    assert wh.query("SELECT keys_total, rows_landed, stopped_at_stage FROM run_summary").rows() == [(2, None, None)]
    # the next publish fills the new columns
    frames, append = publish_frames(["a", "b"], version=2, run_id="run-2")
    wh.replace_keys("uc", DAY, ["a", "b"], frames, append)
    got = wh.query(
        "SELECT rows_in, rows_out, rows_dropped, rows_merged, drop_detail FROM key_status WHERE stage = 'predictions'"
    )
    assert got.rows() == [(10, 7, 2, 1, "target is null: 2")] * 2
    wh.dispose()


def key_rows(wh: Warehouse, table: sa.Table) -> list[tuple]:
    """Every row of a per-use-case key table, selected through SQLAlchemy (its names are quoted)."""
    with wh.connect() as conn:
        return sorted(tuple(r) for r in conn.execute(sa.select(table)))


def test_key_tables_hold_each_key_column_and_are_replaced_per_slice(wh):
    names = ['store "no"', "Key", "brand; DROP TABLE x", "unicodé ✓"]  # quotes, a clash with key, SQL, non-ASCII
    keys = ["a", "b"]
    frames, append = publish_frames(keys, version=1)
    values = {k: [f"{k}-{i}" if i else HOSTILE[j] for i in range(len(names))] for j, k in enumerate(keys)}
    frames["key_columns"] = pl.DataFrame(
        {
            "use_case": "uc",
            "key": [k for k in keys for _ in names],
            "position": [i for _ in keys for i in range(len(names))],
            "column_name": names * len(keys),
            "value": [v for k in keys for v in values[k]],
        }
    )
    wh.replace_keys("uc", DAY, keys, frames, append)
    wh.replace_keys("uc", DAY, keys, frames, append)  # a rerun replaces, never duplicates
    table = W.key_table("uc", names)
    assert [c.name for c in table.columns] == [
        "key",
        "key_label",
        'store "no"',
        "Key_2",
        "brand; DROP TABLE x",
        "unicodé ✓",
    ]
    label = lambda k: ", ".join(f"{n}={v}" for n, v in zip(names, values[k], strict=True))  # noqa: E731
    assert key_rows(wh, table) == [(k, label(k), *values[k]) for k in keys]
    long = wh.query("SELECT key, position, column_name, value FROM key_columns ORDER BY key, position")
    assert long.rows() == [(k, i, n, values[k][i]) for k in keys for i, n in enumerate(names)]

    # a publish of key a alone replaces a's rows and leaves b's
    only_a = (
        frames["key_columns"]
        .filter(pl.col("key") == "a")
        .with_columns(pl.when(pl.col("position") == 1).then(pl.lit("a-new")).otherwise(pl.col("value")).alias("value"))
    )
    wh.replace_keys("uc", DAY, ["a"], {"key_columns": only_a})
    got = {r[0]: r for r in key_rows(wh, table)}
    assert got["a"][3] == "a-new" and got["b"] == (("b", label("b"), *values["b"]))

    # the use case's key columns change: its table is rebuilt with the new columns
    renamed = (
        frames["key_columns"]
        .filter(pl.col("position") < 2)
        .with_columns(pl.col("column_name").replace({"Key": "region"}))
    )
    wh.replace_keys("uc", DAY, keys, {"key_columns": renamed})
    new_table = W.key_table("uc", ['store "no"', "region"])
    assert key_rows(wh, new_table) == [
        (k, f'store "no"={values[k][0]}, region={values[k][1]}', values[k][0], values[k][1]) for k in keys
    ]
    assert wh.query("SELECT count(*) AS n FROM key_columns")["n"][0] == 4


def test_key_table_names_fit_every_backend():
    long = "x" * 80
    assert W.key_table_name("uc") == "keys_uc"
    assert len(W.key_table_name(long)) <= 63 and W.key_table_name(long) != W.key_table_name(long + "y")
    assert W.key_table_columns(["key", "KEY_LABEL", "store", "Store", "é" * 40, ""]) == [
        "key_1",
        "KEY_LABEL_2",
        "store",
        "Store_4",
        "é" * 31,
        "_6",
    ]
    # SQL Server: the table's DDL compiles and its primary key fits the 900-byte limit
    ddl = str(CreateTable(W.key_table("uc", ["store", "brand"])).compile(dialect=mssql_dialect()))
    assert "[key] VARCHAR(512) NOT NULL" in ddl and "store NVARCHAR(1024) NOT NULL" in ddl
    assert "CONSTRAINT pk_keys_uc PRIMARY KEY ([key])" in ddl


# -- idempotent writes -------------------------------------------------------------------------


def test_replace_keys_is_idempotent_on_rerun(wh):
    keys = ["a", "b", "c"]
    frames, append = publish_frames(keys, version=1)
    wh.replace_keys("uc", DAY, keys, frames, append)
    first = snapshot(wh)
    wh.replace_keys("uc", DAY, keys, frames, append)
    assert snapshot(wh) == first
    assert counts(wh) == {
        "predictions": 9,
        "key_metrics": 3,
        "key_status": 6,
        "promotion_history": 3,
        "run_summary": 1,
        "model_family": 0,
        "key_columns": 6,
    }
    # a rerun with new values replaces them; a new publishing run adds history rows
    frames, append = publish_frames(keys, version=2, run_id="run-2")
    wh.replace_keys("uc", DAY, keys, frames, append)
    assert counts(wh)["predictions"] == 9
    assert counts(wh)["promotion_history"] == 6
    assert counts(wh)["run_summary"] == 2
    assert set(wh.query("SELECT DISTINCT model_version FROM predictions")["model_version"]) == {2}


def test_replace_use_case_replaces_the_model_family_snapshot(wh):
    def family(keys: list[str], version: int) -> pl.DataFrame:
        return pl.DataFrame(
            {
                "use_case": "uc",
                "key": keys,
                "key_label": [f"id={k}" for k in keys],
                "metric": "rmse",
                "candidate_version": version,
                "candidate_value": 0.5,
                "production_version": pl.Series([None] * len(keys), dtype=pl.Int64),
                "production_source_version": pl.Series([None] * len(keys), dtype=pl.Int64),
                "production_value": pl.Series([None] * len(keys), dtype=pl.Float64),
                "status": "unpromoted",
                "snapshot_at": NOW,
            }
        )

    wh.replace_use_case("model_family", "uc", family(["a", "b", "c"], 1))
    wh.replace_use_case("model_family", "other", family(["a"], 7).with_columns(pl.lit("other").alias("use_case")))
    wh.replace_use_case("model_family", "uc", family(["a", "b"], 2))
    got = wh.query("SELECT use_case, key, candidate_version FROM model_family ORDER BY use_case, key")
    assert got.rows() == [("other", "a", 7), ("uc", "a", 2), ("uc", "b", 2)]


def load_in_batches(wh: Warehouse, keys: list[str], version: int, size: int) -> None:
    """The published stage's way: ``size`` keys per load, the run summary last, one commit."""
    with wh.replacing("uc", DAY) as load:
        for i in range(0, len(keys), size):
            frames, append = publish_frames(keys[i : i + size], version)
            load(keys[i : i + size], frames, {"promotion_history": append["promotion_history"]})
        load([], None, {"run_summary": publish_frames(keys, version)[1]["run_summary"]})


def test_batches_of_keys_commit_as_one_replace(wh):
    """Loading a run's keys two at a time leaves what one replace_keys of them all leaves, and
    a rerun in batches replaces the rows instead of adding to them."""
    keys = ["a", "b", "c", "d", "e"]
    frames, append = publish_frames(keys, version=1)
    wh.replace_keys("uc", DAY, keys, frames, append)
    whole = snapshot(wh)
    assert counts(wh)["predictions"] == 15
    load_in_batches(wh, keys, version=2, size=2)
    assert counts(wh) == {t: len(rows) for t, rows in whole.items()}
    assert set(wh.query("SELECT DISTINCT model_version FROM predictions")["model_version"]) == {2}
    load_in_batches(wh, keys, version=1, size=2)
    assert snapshot(wh) == whole


def test_a_failure_between_batches_leaves_the_previous_rows(wh):
    """Nothing of the batches already loaded is visible, or kept, when a later one fails."""
    keys = ["a", "b", "c", "d"]
    frames, append = publish_frames(keys, version=1)
    wh.replace_keys("uc", DAY, keys, frames, append)
    before = snapshot(wh)
    with pytest.raises(RuntimeError, match="building the third batch failed"), wh.replacing("uc", DAY) as load:
        for i in range(0, 4, 2):
            batch_frames, _ = publish_frames(keys[i : i + 2], version=2, run_id="run-2")
            load(keys[i : i + 2], batch_frames)
        raise RuntimeError("building the third batch failed")
    assert snapshot(wh) == before


def test_a_key_loaded_twice_in_one_replacement_is_refused(wh):
    """A second batch with the same key would replace the first on one backend and break the
    primary key on another: refused before anything is written."""
    frames, _ = publish_frames(["a"], version=1)
    twice = re.escape("keys loaded twice in one replacement, e.g. 'a'")
    with pytest.raises(ValueError, match=twice), wh.replacing("uc", DAY) as load:
        load(["a", "b"], publish_frames(["a", "b"], version=1)[0])
        load(["a"], frames)
    assert counts(wh)["predictions"] == 0


def test_an_exception_between_tables_leaves_the_previous_rows(wh, monkeypatch):
    keys = ["a", "b"]
    frames, append = publish_frames(keys, version=1)
    wh.replace_keys("uc", DAY, keys, frames, append)
    before = snapshot(wh)

    loaded = []
    real_insert = Warehouse._insert

    def crash_on_second_table(self, conn, table, frame):
        loaded.append(table.name)
        if len(loaded) == 2:
            raise RuntimeError("simulated crash after the deletes and the first table's load")
        return real_insert(self, conn, table, frame)

    monkeypatch.setattr(Warehouse, "_insert", crash_on_second_table)
    frames2, append2 = publish_frames(keys, version=2, run_id="run-2")
    with pytest.raises(RuntimeError, match="simulated crash"):
        wh.replace_keys("uc", DAY, keys, frames2, append2)
    assert loaded == ["predictions", "key_metrics"]
    monkeypatch.undo()
    assert snapshot(wh) == before


def test_a_load_failing_midway_leaves_the_previous_rows(wh):
    keys = ["a", "b"]
    frames, append = publish_frames(keys, version=1)
    wh.replace_keys("uc", DAY, keys, frames, append)
    before = snapshot(wh)
    frames2, append2 = publish_frames(keys, version=2, run_id="run-2")
    # the third per-key table's last row breaks a NOT NULL: the database rejects it mid-write,
    # after the deletes and after predictions and key_metrics were loaded
    status = frames2["key_status"]
    frames2["key_status"] = status.with_columns(
        pl.when(pl.int_range(pl.len()) == status.height - 1).then(None).otherwise(pl.col("status")).alias("status")
    )
    with pytest.raises(sa.exc.DBAPIError):
        wh.replace_keys("uc", DAY, keys, frames2, append2)
    assert snapshot(wh) == before


def test_a_killed_process_mid_write_leaves_the_previous_rows(wh, tmp_path):
    """A real crash: the writer process dies (os._exit) inside the transaction, after the deletes."""
    keys = ["a", "b"]
    frames, append = publish_frames(keys, version=1)
    wh.replace_keys("uc", DAY, keys, frames, append)
    before = snapshot(wh)
    wh.dispose()  # DuckDB: release the file for the writer process
    frames2, append2 = publish_frames(keys, version=2, run_id="run-2")
    for name, frame in {**frames2, **append2}.items():
        frame.write_parquet(tmp_path / f"{name}.parquet")
    code = textwrap.dedent(
        f"""
        import os, pathlib
        import polars as pl
        from many_models_platform.storage.warehouse import Warehouse
        d = pathlib.Path({str(tmp_path)!r})
        read = lambda names: {{n: pl.read_parquet(d / f"{{n}}.parquet") for n in names}}
        real = Warehouse._insert
        def die_at_key_status(self, conn, table, frame):
            if table.name == "key_status":
                os._exit(17)
            return real(self, conn, table, frame)
        Warehouse._insert = die_at_key_status
        Warehouse({wh.url!r}).replace_keys(
            "uc", "{DAY}", {keys!r},
            read(["predictions", "key_metrics", "key_status"]),
            read(["promotion_history", "run_summary"]),
        )
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 17, proc.stderr
    assert snapshot(wh) == before


def test_rows_outside_the_replaced_slice_are_refused(wh):
    frames, _ = publish_frames(["a", "b"], version=1)
    with pytest.raises(ValueError, match="outside"):
        wh.replace_keys("uc", DAY, ["a"], frames)  # b's rows would never be replaced
    with pytest.raises(ValueError, match="share a primary key"):
        wh.replace_keys("uc", DAY, ["a", "b"], {"predictions": pl.concat([frames["predictions"]] * 2)})
    assert counts(wh)["predictions"] == 0


# -- fast paths ---------------------------------------------------------------------------------


def test_postgres_loads_through_copy(pg_url, monkeypatch):
    wh = Warehouse(pg_url)
    wh.ensure_schema()
    copied: list[tuple[str, int]] = []
    real_copy = Warehouse._copy_postgres

    def spy(self, conn, table, frame):
        copied.append((table.name, frame.height))
        return real_copy(self, conn, table, frame)

    monkeypatch.setattr(Warehouse, "_copy_postgres", spy)
    statements: list[str] = []
    sa.event.listen(wh.engine, "before_cursor_execute", lambda c, cur, stmt, *a: statements.append(stmt))
    keys = [f"k{i}" for i in range(50)]
    frames, append = publish_frames(keys, version=1, rows=20)
    wh.replace_keys("uc", DAY, keys, frames, append)
    assert copied == [
        ("predictions", 1000),
        ("key_metrics", 50),
        ("key_status", 100),
        ("key_columns", 100),
        ("keys_uc", 50),
        ("promotion_history", 50),
        ("run_summary", 1),
    ]
    assert not [s for s in statements if "INSERT" in s.upper()], "rows went through INSERT, not COPY"
    assert counts(wh)["predictions"] == 1000
    wh.dispose()


def test_hostile_strings_and_edge_floats_round_trip(wh):
    keys = HOSTILE
    frames, append = publish_frames(keys, version=1, rows=1)
    floats = [math.nan, math.inf, -math.inf, 1.2345486154944982, 16_777_217.0, 5e-324, 1.7976931348623157e308]
    n = len(keys)
    labels = [HOSTILE[(i + 3) % n] for i in range(n)]
    preds = frames["predictions"].with_columns(
        pl.Series("key_label", [f"k={v}" for v in keys]),
        pl.Series("predicted_label", [None if i % 5 == 0 else v for i, v in enumerate(labels)], dtype=pl.Utf8),
        pl.Series("prediction", [floats[i % len(floats)] for i in range(n)]),
    )
    frames["predictions"] = preds
    frames["key_status"] = frames["key_status"].with_columns(
        pl.Series("reason", [HOSTILE[i % n] for i in range(2 * n)], dtype=pl.Utf8)
    )
    wh.replace_keys("uc", DAY, keys, frames, append)
    wh.replace_keys("uc", DAY, keys, frames, append)

    got = wh.query("SELECT key, key_label, predicted_label, prediction FROM predictions ORDER BY row_index, key")
    got = {r[0]: r[1:] for r in got.rows()}
    assert set(got) == set(keys)
    for row in preds.iter_rows(named=True):
        label, predicted, value = got[row["key"]]
        assert label == row["key_label"]
        assert predicted == row["predicted_label"]  # None stays NULL, "" stays an empty string
        assert (math.isnan(value) and math.isnan(row["prediction"])) or value == row["prediction"]
    reasons = wh.query("SELECT key, stage, reason FROM key_status").rows()
    expected = frames["key_status"].select("key", "stage", "reason").rows()
    assert sorted(reasons, key=repr) == sorted(expected, key=repr)
    for key in keys:  # and each value works as a bound parameter
        assert wh.query("SELECT count(*) AS n FROM predictions WHERE key = :k", k=key)["n"][0] == 1


def test_the_generic_executemany_path_works(tmp_path):
    """SQL Server's path (one executemany per batch) runs for real here on SQLite."""
    wh = Warehouse(f"sqlite:///{tmp_path / 'wh.sqlite'}")
    wh.ensure_schema()
    keys = ["a", "b"]
    frames, append = publish_frames(keys, version=1)
    wh.replace_keys("uc", DAY, keys, frames, append)
    wh.replace_keys("uc", DAY, keys, frames, append)
    assert counts(wh)["predictions"] == 6
    assert counts(wh)["promotion_history"] == 2
    wh.dispose()


def test_postgres_url_without_driver_uses_psycopg2():
    assert W.create_warehouse_engine("postgresql://u@h/db").dialect.driver == "psycopg2"


# -- SQL Server / Synapse: compiled, no server -----------------------------------------------------

MSSQL_URL = "mssql+pyodbc://user:secret@myserver.database.windows.net/warehouse?driver=ODBC+Driver+18+for+SQL+Server"


def mssql_dialect() -> sa.Dialect:
    return W.create_warehouse_engine(MSSQL_URL).dialect


def test_mssql_engine_uses_fast_executemany_without_connecting():
    engine = W.create_warehouse_engine(MSSQL_URL)
    assert engine.dialect.name == "mssql" and engine.dialect.driver == "pyodbc"
    assert engine.dialect.fast_executemany is True
    assert Warehouse(MSSQL_URL).engine.dialect.fast_executemany is True
    engine.dispose()


def offline_script(url: str, *x: str) -> str:
    from alembic import command

    cfg = alembic_config(url=url)
    cfg.output_buffer = io.StringIO()
    cfg.cmd_opts = argparse.Namespace(x=list(x))
    command.upgrade(cfg, "head", sql=True)
    return cfg.output_buffer.getvalue()


def test_mssql_ddl_from_the_migrations():
    script = offline_script(MSSQL_URL)
    dialect = mssql_dialect()
    for table in W.metadata.sorted_tables:
        assert f"CREATE TABLE {table.name} (" in script
        # the migration and warehouse.py agree on SQL Server too, line by line
        ddl = str(CreateTable(table).compile(dialect=dialect))
        for line in ddl.strip().splitlines()[1:-1]:
            assert line.strip().rstrip(",") in script, (table.name, line)
    assert "[key] VARCHAR(512) NOT NULL" in script
    assert "run_date DATE NOT NULL" in script
    assert "published_at DATETIME2 NOT NULL" in script
    assert "prediction FLOAT(53) NULL" in script
    assert "key_label NVARCHAR(1024) NOT NULL" in script
    assert "reason NVARCHAR(max) NOT NULL" in script
    assert "CONSTRAINT pk_predictions PRIMARY KEY (use_case, [key], run_date, row_index)" in script
    assert "INSERT INTO alembic_version (version_num) OUTPUT inserted.version_num VALUES ('0001')" in script
    # revision 0002 adds nullable columns to tables that may hold rows, and the key_columns table
    assert "ALTER TABLE key_status ADD rows_in INTEGER NULL" in script
    assert "ALTER TABLE run_summary ADD rows_landed BIGINT NULL" in script
    assert "ALTER TABLE run_summary ADD stop_reason NVARCHAR(max) NULL" in script
    assert "CONSTRAINT pk_key_columns PRIMARY KEY (use_case, [key], position)" in script
    assert "UPDATE alembic_version SET version_num='0002' WHERE alembic_version.version_num = '0001'" in script
    assert "ALTER TABLE predictions ADD period_index BIGINT NULL" in script  # revision 0003
    assert "UPDATE alembic_version SET version_num='0003' WHERE alembic_version.version_num = '0002'" in script
    assert " TEXT" not in script and "DATETIME " not in script and "DOUBLE" not in script


def test_synapse_script_has_not_enforced_primary_keys():
    script = offline_script(MSSQL_URL, "synapse=true")
    pks = re.findall(r"PRIMARY KEY[^\n]*", script)
    assert len(pks) == len(W.metadata.tables)
    assert "OUTPUT" not in script  # Synapse has no OUTPUT clause: alembic_version has no key to return
    assert "TRANSACTION" not in script  # nor DDL inside a transaction
    for pk in pks:
        assert pk.startswith("PRIMARY KEY NONCLUSTERED (") and pk.endswith(") NOT ENFORCED"), pk
    assert "NOT ENFORCED" not in offline_script(MSSQL_URL)  # plain SQL Server keeps enforced keys


MSSQL_BYTES = {"VARCHAR": 1, "NVARCHAR": 2}
MSSQL_FIXED = {"DATE": 3, "INTEGER": 4, "DATETIME2": 8, "FLOAT(53)": 8}


def test_mssql_primary_keys_fit_the_900_byte_index_key_limit():
    dialect = mssql_dialect()
    for table in W.metadata.sorted_tables:
        total = 0
        for c in table.primary_key.columns:
            ddl = c.type.compile(dialect=dialect)
            m = re.fullmatch(r"(N?VARCHAR)\((\d+)\)", ddl)
            total += MSSQL_BYTES[m[1]] * int(m[2]) if m else MSSQL_FIXED[ddl]
        assert total <= 900, (table.name, total)
        for c in table.columns:  # and no column exceeds SQL Server's in-row string sizes
            m = re.fullmatch(r"(N?VARCHAR)\((\d+)\)", c.type.compile(dialect=dialect))
            if m:
                assert int(m[2]) <= (8000 if m[1] == "VARCHAR" else 4000), (table.name, c.name)


def test_every_statement_the_publisher_issues_compiles_for_mssql():
    dialect = mssql_dialect()
    keys = [f"k{i:04d}" for i in range(1203)] + HOSTILE  # several delete chunks
    frames, append = publish_frames(keys, version=1, rows=2)
    steps = W.plan_replace_keys("uc", DAY, keys, frames, append)
    family = pl.DataFrame(
        {
            "key": ["a"],
            "key_label": ["id=a"],
            "metric": ["rmse"],
            "candidate_version": [1],
            "candidate_value": [0.5],
            "production_version": [1],
            "production_source_version": [1],
            "production_value": [0.5],
            "status": ["current"],
            "snapshot_at": [NOW],
        }
    )
    steps += W.plan_replace_use_case("model_family", "uc", family)
    assert [s.table.name for s in steps] == [
        "predictions",
        "key_metrics",
        "key_status",
        "key_columns",
        "keys_uc",
        "promotion_history",
        "run_summary",
        "model_family",
    ]
    n_deletes = 0
    for step in steps:
        for delete in step.deletes:
            sql = str(delete.compile(dialect=dialect, compile_kwargs={"render_postcompile": True}))
            assert sql.startswith(f"DELETE FROM {step.table.name} WHERE")
            assert sql.count("?") <= 2100  # SQL Server's parameter limit
            assert not any(k in sql for k in ("k0001", "DROP TABLE")), "values must be bound, not spliced"
            n_deletes += 1
        assert step.frame is not None
        insert = W.insert_statement(step.table).compile(dialect=dialect, column_keys=step.frame.columns)
        cols = ", ".join("[key]" if c == "key" else c for c in step.frame.columns)
        marks = ", ".join("?" * len(step.frame.columns))
        assert str(insert) == f"INSERT INTO {step.table.name} ({cols}) VALUES ({marks})"
    # 3 key chunks per per-key table, key_columns, keys_uc and promotion history; 1 + 1
    assert n_deletes == 3 * 3 + 3 + 3 + 3 + 1 + 1
    # the migration lock the code really issues on SQL Server: captured from serialise_upgrades
    # (no server here), rendered by the mssql dialect with its bound resource name
    from many_models_platform.storage import migrations

    class Recorder:
        def __init__(self):
            self.dialect, self.calls = dialect, []

        def execute(self, statement, params=None):
            self.calls.append((statement, params))

    conn = Recorder()
    migrations.serialise_upgrades(conn)
    [(statement, params)] = conn.calls
    compiled = statement.compile(dialect=dialect)
    assert str(compiled).startswith("EXEC sp_getapplock @Resource = ?, @LockMode = 'Exclusive'")
    assert "@LockOwner = 'Transaction'" in str(compiled)
    assert compiled.positiontup == ["resource"] and params == {"resource": migrations.MSSQL_LOCK_RESOURCE}


def test_docs_describe_every_column():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "tables.md").read_text()
    for table in W.metadata.sorted_tables:
        assert f"## `{table.name}`" in doc, table.name
        for c in table.columns:
            assert f"`{c.name}`" in doc, (table.name, c.name)
