"""`mmp`: generate sample data, run use cases end to end through Dagster, inspect status."""

from __future__ import annotations

import datetime as dt
import logging
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .core.spec import ConfigError, load_config
from .storage.settings import PlatformSettings

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console()

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="Use-case YAML (default: shipped file or $MMP_CONFIG)")
]
HomeOpt = Annotated[Path | None, typer.Option("--home", help="Data directory (default: $MMP_HOME or ~/.mmp)")]

DEMO_SIZES = {"retail_demand": (40, 156), "sensor_anomaly": (24, 336), "group_regression": (30, 200)}


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    for name in ("mlflow", "alembic", "dagster", "urllib3"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _setup(config: Path | None, home: Path | None):
    _quiet()
    if home:
        os.environ["MMP_HOME"] = str(home.expanduser().resolve())
    if config:
        os.environ["MMP_CONFIG"] = str(config.expanduser().resolve())
    settings = PlatformSettings.from_env()
    settings.ensure_local_dirs()
    try:
        cfg = load_config(settings.config_path)
    except ConfigError as exc:
        console.print(f"[red]config error[/red]\n{exc}")
        raise typer.Exit(2) from None
    return settings, cfg


@app.command()
def generate(
    use_case: Annotated[str, typer.Argument(help="Use case whose landing zone receives the data")],
    keys: Annotated[int, typer.Option(help="Number of keys")] = 20,
    rows: Annotated[int, typer.Option(help="Rows per key")] = 120,
    seed: int = 0,
    generator: Annotated[str | None, typer.Option(help="Generator (default: the use case's name)")] = None,
    fmt: Annotated[str, typer.Option("--format", help="csv or parquet")] = "csv",
    config: ConfigOpt = None,
    home: HomeOpt = None,
) -> None:
    """Write sample data for a use case into the lake's landing zone."""
    settings, cfg = _setup(config, home)
    files = _generate(settings, cfg, use_case, keys, rows, seed, generator, fmt)
    console.print(f"wrote {len(files)} file(s) for {use_case}: {keys} keys x {rows} rows under {settings.lake_url}")


def _generate(settings, cfg, use_case, keys, rows, seed=0, generator=None, fmt="csv") -> list[str]:
    from .core.generators import GENERATORS, write_landing

    spec = cfg.use_case(use_case)
    gen = GENERATORS.get(generator or use_case)
    if gen is None:
        console.print(f"[red]no generator named {generator or use_case!r}[/red]; choose one of {sorted(GENERATORS)}")
        raise typer.Exit(2)
    landing = Path(spec.source.path).parent
    if spec.source.file_format != fmt:
        console.print(
            f"[red]{use_case} reads {spec.source.file_format} files ({spec.source.path}); use --format "
            f"{spec.source.file_format}[/red]"
        )
        raise typer.Exit(2)
    if "*" in str(landing) or "://" in settings.lake_url:
        console.print("[red]generate needs a local lake and a source glob like 'landing/<dir>/*.csv'[/red]")
        raise typer.Exit(2)
    return write_landing(gen(keys=keys, rows=rows, seed=seed), Path(settings.lake_url) / landing, use_case, fmt=fmt)


@app.command()
def run(
    use_case: Annotated[list[str] | None, typer.Option("--use-case", "-u", help="Use case(s); default all")] = None,
    keys: Annotated[
        list[str] | None,
        typer.Option("--keys", "-k", help="Keys to run: partition key, 'col=value, col=value' or a plain value"),
    ] = None,
    run_date: Annotated[str | None, typer.Option(help="Run date (YYYY-MM-DD); reruns replace its rows")] = None,
    config: ConfigOpt = None,
    home: HomeOpt = None,
) -> None:
    """Materialize every stage through Dagster for the keys found in the landing zone."""
    settings, cfg = _setup(config, home)
    names = use_case or list(cfg.use_cases)
    for name in names:
        cfg.use_case(name)
    date = dt.date.fromisoformat(run_date) if run_date else None
    ok = _run(settings, cfg, names, keys, date)
    raise typer.Exit(0 if ok else 1)


def _run(settings, cfg, names, keys=None, run_date=None) -> bool:
    from . import progress
    from .definitions import build_definitions
    from .defs.runner import prepare_instance, run_use_case
    from .lifecycle import resolve_key
    from .stages import STAGES
    from .storage.registry import RegistryError

    console.print(f"data directory: {settings.home}")
    t0 = time.time()
    instance = prepare_instance(settings)
    defs = build_definitions(settings.config_path)
    results = []
    for name in names:
        spec = cfg.use_case(name)
        with Progress(
            TextColumn("{task.description:<34}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as bar:
            tasks = {}

            def report(uc: str, stage: str, n: int, bar=bar, tasks=tasks) -> None:
                bar.advance(tasks[stage], n)

            total = None
            try:
                from .defs.discovery import register_new_keys
                from .storage.lake import Lake

                _, new_keys = register_new_keys(instance, spec, Lake(settings.lake_url, settings.lake_storage_options))
                known = instance.get_dynamic_partitions(f"{name}_keys")
                # keys as partition keys, as 'col=value, col=value' labels, or plain single-column values
                run_keys = [resolve_key(spec, k, known) for k in keys] if keys else None
                total = len(run_keys) if run_keys else len(known)
                for stage in STAGES:
                    tasks[stage] = bar.add_task(f"{name} / {stage}", total=total)
                progress.set_reporter(report)
                result = run_use_case(defs, instance, cfg, spec, settings, run_keys, run_date, new_keys=new_keys)
            except (ValueError, RegistryError) as exc:
                console.print(f"[red]{exc}[/red]")
                return False
            finally:
                progress.set_reporter(None)
        results.append(result)
        _print_summary(settings, spec, result, run_date)
    console.print(f"\ntotal wall time {time.time() - t0:.1f}s")
    _print_locations(settings)
    return all(r.success for r in results)


def _print_summary(settings, spec, result, run_date) -> None:
    from .stages import STAGES
    from .storage.warehouse import Warehouse

    date = run_date or dt.datetime.now(dt.UTC).date()
    wh = Warehouse(settings.warehouse_url, read_only=True)
    try:
        status = wh.query(
            "SELECT key, stage, status, reason FROM key_status WHERE use_case = :uc AND run_date = :d",
            uc=spec.name,
            d=date,
        )
        metrics = wh.query(
            "SELECT key, value FROM key_metrics WHERE use_case = :uc AND run_date = :d AND model_role = 'candidate' "
            "AND metric = :m",
            uc=spec.name,
            d=date,
            m=spec.metric,
        )
        promo = wh.query(
            "SELECT key, decision, dagster_run_id FROM promotion_history WHERE use_case = :uc AND run_date = :d",
            uc=spec.name,
            d=date,
        )
    finally:
        wh.dispose()
    run_keys = set(result.keys)
    # only this run's keys and decisions: other keys may have run earlier the same day
    status = status.filter(status["key"].is_in(list(run_keys))) if status.height else status
    metrics = metrics.filter(metrics["key"].is_in(list(run_keys))) if metrics.height else metrics
    if promo.height:
        promo = promo.filter(promo["dagster_run_id"].is_in(result.run_ids)).group_by("decision").len("n")
    # published = the key's predictions are in the warehouse (as run_summary counts it), even
    # when today's candidate failed and the champion served; failing = any stage not ok
    served = (
        set(status.filter((status["stage"] == "published") & (status["status"] == "ok"))["key"])
        if status.height
        else set()
    )
    failing = status.filter((status["status"] != "ok") & (status["stage"] != "published")) if status.height else status
    failed_keys = failing["key"].unique().to_list() if failing.height else []
    t = Table(title=f"{spec.name}: {len(result.keys)} keys ({len(result.new_keys)} new), {len(result.run_ids)} run(s)")
    t.add_column("")
    t.add_column("value", overflow="fold")
    t.add_row("keys published", str(len(served & run_keys)))
    t.add_row("keys not published", str(len(run_keys - served)))
    t.add_row("keys with a stage not ok", str(len(failed_keys)))
    if metrics.height:
        q = metrics["value"].drop_nulls().quantile
        t.add_row(f"{spec.metric} p10 / p50 / p90", " / ".join(f"{q(p):.4g}" for p in (0.1, 0.5, 0.9)))
    if promo.height:
        t.add_row("promotion", ", ".join(f"{r['decision']}: {r['n']}" for r in promo.iter_rows(named=True)))
    t.add_row("time per stage", ", ".join(f"{s} {sec:.1f}s" for s, sec in result.stage_seconds.items()))
    console.print(t)
    if failed_keys:
        order = {s: i for i, s in enumerate(STAGES)}
        failing = failing.with_columns(failing["stage"].replace_strict(order, default=99).alias("_o")).sort("key", "_o")
        first = failing.group_by("key", maintain_order=True).first().head(10)
        for row in first.iter_rows(named=True):
            console.print(f"  [yellow]{row['key']}[/yellow] {row['status']} at {row['stage']}: {row['reason']}")
        if len(failed_keys) > 10:
            console.print(f"  ... and {len(failed_keys) - 10} more (table key_status)")
    for err in result.errors:
        console.print(f"[red]step failed[/red] {err}")


def _print_locations(settings) -> None:
    console.print(
        "\n[bold]where to look[/bold]\n"
        f"  Dagster UI:   uv run mmp dev            (instance {os.environ.get('DAGSTER_HOME')})\n"
        f"  MLflow UI:    uv run mmp mlflow-ui      (candidate {settings.candidate_registry_uri})\n"
        f"  warehouse:    {settings.warehouse_url}\n"
        f"  lake:         {settings.lake_url}"
    )


@app.command()
def demo(
    scale: Annotated[float, typer.Option(help="Multiply the demo's key counts")] = 1.0,
    home: HomeOpt = None,
) -> None:
    """Generate sample data for the three shipped use cases and run them end to end."""
    settings, cfg = _setup(None, home)
    for name, (keys, rows) in DEMO_SIZES.items():
        n = max(1, int(keys * scale))
        _generate(settings, cfg, name, n, rows)
        console.print(f"generated {name}: {n} keys x {rows} rows")
    ok = _run(settings, cfg, list(DEMO_SIZES))
    from .bi import build_bi_marts

    console.print("\n[bold]BI marts[/bold] (dbt build on the warehouse; `uv run mmp bi` shows every node)")
    result = build_bi_marts(settings)
    counts = result.counts()
    models = sum(1 for n in result.nodes if n.resource_type == "model")
    tests = sum(1 for n in result.nodes if n.resource_type == "test")
    console.print(
        f"  {models} models and {tests} tests in {result.seconds:.1f}s: "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    )
    for n in result.failed:
        console.print(f"  [red]{n.status}[/red] {n.name}: {n.message}")
    if not result.nodes:
        console.print(result.output[-4000:])
    raise typer.Exit(0 if ok and result.success else 1)


@app.command()
def status(
    use_case: Annotated[str | None, typer.Option("--use-case", "-u")] = None,
    config: ConfigOpt = None,
    home: HomeOpt = None,
) -> None:
    """Keys per use case and their latest status per stage (from the warehouse)."""
    settings, cfg = _setup(config, home)
    from .defs.runner import prepare_instance
    from .storage.warehouse import Warehouse

    instance = prepare_instance(settings)
    wh = Warehouse(settings.warehouse_url, read_only=True)
    try:
        tables = (
            set(wh.table_names())
            if Path(settings.warehouse_url.removeprefix("duckdb:///")).exists()
            or not settings.warehouse_url.startswith("duckdb")
            else set()
        )
        for name in [use_case] if use_case else list(cfg.use_cases):
            cfg.use_case(name)
            n_keys = len(instance.get_dynamic_partitions(f"{name}_keys"))
            t = Table(title=f"{name}: {n_keys} keys registered")
            for col in ("run date", "stage", "ok", "failed", "skipped / not run"):
                t.add_column(col)
            if "key_status" in tables:
                rows = wh.query(
                    "SELECT run_date, stage, "
                    "sum(CASE WHEN status = 'ok' THEN 1 ELSE 0 END) AS ok, "
                    "sum(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) AS failed, "
                    "sum(CASE WHEN status NOT IN ('ok', 'failed') THEN 1 ELSE 0 END) AS skipped "
                    "FROM key_status WHERE use_case = :uc AND run_date = "
                    "(SELECT max(run_date) FROM key_status WHERE use_case = :uc) GROUP BY run_date, stage",
                    uc=name,
                )
                from .stages import STAGES

                order = {s: i for i, s in enumerate(STAGES)}
                for r in sorted(rows.iter_rows(named=True), key=lambda r: order.get(r["stage"], 99)):
                    t.add_row(str(r["run_date"]), r["stage"], str(r["ok"]), str(r["failed"]), str(r["skipped"]))
            console.print(t)
    finally:
        wh.dispose()


@app.command()
def models(
    use_case: Annotated[str, typer.Argument(help="Use case whose model family to list")],
    status: Annotated[
        str | None, typer.Option(help="Only keys with this status: current, behind, unpromoted, production_only")
    ] = None,
    limit: Annotated[int, typer.Option(help="Rows to print (0 = all)")] = 50,
    publish: Annotated[bool, typer.Option(help="Also write the view to the warehouse's model_family table")] = True,
    config: ConfigOpt = None,
    home: HomeOpt = None,
) -> None:
    """Every key's candidate and production model side by side (three registry queries in all)."""
    settings, cfg = _setup(config, home)
    from .lifecycle import FAMILY_STATUSES, model_family, publish_model_family, registries

    spec = _use_case(cfg, use_case)
    if status and status not in FAMILY_STATUSES:
        console.print(f"[red]unknown status {status!r}[/red]; use one of {', '.join(FAMILY_STATUSES)}")
        raise typer.Exit(2)
    family = publish_model_family(settings, spec) if publish else model_family(spec, *registries(settings))
    counts = family.group_by("status").len().sort("status")
    summary = ", ".join(f"{r['status']} {r['len']}" for r in counts.iter_rows(named=True)) or "no models yet"
    shown = family.filter(family["status"] == status) if status else family
    t = Table(title=f"{spec.name}: {family.height} keys ({summary}); metric {spec.metric}")
    for col in ("key", "candidate", spec.metric, "production", f"champion {spec.metric}", "status"):
        t.add_column(col)
    fmt = lambda v: "-" if v is None else f"{v:.4g}"  # noqa: E731
    for r in shown.head(limit or shown.height).iter_rows(named=True):
        prod = f"v{r['production_version']}" if r["production_version"] else "-"
        if r["production_source_version"]:
            prod += f" (from candidate v{r['production_source_version']})"
        cand = f"v{r['candidate_version']}" if r["candidate_version"] else "-"
        t.add_row(r["key_label"], cand, fmt(r["candidate_value"]), prod, fmt(r["production_value"]), r["status"])
    console.print(t)
    if limit and shown.height > limit:
        console.print(f"… {shown.height - limit} more (use --limit 0 for all, or --status)")


@app.command()
def promote(
    use_case: Annotated[str, typer.Argument(help="Use case")],
    key: Annotated[str, typer.Argument(help="Key: encoded partition key, 'col=value, col=value', or a plain value")],
    rollback: Annotated[bool, typer.Option("--rollback", help="Move production back to the previous version")] = False,
    to_version: Annotated[int | None, typer.Option(help="With --rollback: this production version instead")] = None,
    config: ConfigOpt = None,
    home: HomeOpt = None,
) -> None:
    """Manual promotion actions on one key's production model (today: --rollback)."""
    settings, cfg = _setup(config, home)
    from .lifecycle import record_rollback, registries, resolve_key
    from .lifecycle import rollback as do_rollback
    from .storage.registry import RegistryError

    spec = _use_case(cfg, use_case)
    if not rollback:
        console.print("[red]nothing to do[/red]: say --rollback (promotion itself runs in the pipeline)")
        raise typer.Exit(2)
    try:
        _, prod = registries(settings, write_production=True)
        snap = prod.snapshot(spec.name)
        resolved = resolve_key(spec, key, list(snap.versions))
        done = do_rollback(spec, prod, resolved, to_version=to_version, snapshot=snap)
    except RegistryError as exc:
        console.print(f"[red]rollback refused[/red]: {exc}")
        raise typer.Exit(1) from None
    from .core.keys import key_label

    label = key_label(spec.keys, done.key)
    console.print(f"{spec.name} / {label}: production v{done.from_version} -> v{done.to_version}")
    try:
        record_rollback(settings, spec, done)
    except Exception as exc:  # the registry has moved; say so plainly rather than with a traceback
        console.print(
            f"[red]the rollback is done in the registry, but recording it in the warehouse failed[/red]: "
            f"{type(exc).__name__}: {exc}\nrow for promotion_history: {done.history_row}"
        )
        raise typer.Exit(1) from None
    console.print("recorded in promotion_history; model_family refreshed")


def _use_case(cfg, name: str):
    try:
        return cfg.use_case(name)
    except ConfigError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


@app.command()
def dev(home: HomeOpt = None, port: int = 3000) -> None:
    """Start the Dagster UI on this code location and the same instance `mmp run` uses."""
    settings, _ = _setup(None, home)
    from .defs.runner import REPO_ROOT, prepare_instance

    prepare_instance(settings)
    cmd = [sys.executable, "-m", "dagster", "dev", "-w", str(REPO_ROOT / "workspace.yaml"), "-p", str(port)]
    raise typer.Exit(subprocess.call(cmd, cwd=REPO_ROOT))


@app.command()
def bi(
    home: HomeOpt = None,
    select: Annotated[list[str] | None, typer.Option("--select", "-s", help="dbt selection; default all")] = None,
    all_tests: Annotated[bool, typer.Option("--all-tests", help="List passing tests too")] = False,
) -> None:
    """Build the dbt BI marts on the warehouse (`dbt build`: models, then their tests) and show each node's result."""
    settings, _ = _setup(None, home)
    from .bi import build_bi_marts

    try:
        result = build_bi_marts(settings, select=select)
    except (FileNotFoundError, ValueError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    except Exception as exc:  # e.g. the DuckDB file stayed locked by another writer for too long
        console.print(f"[red]dbt build could not start[/red]: {type(exc).__name__}: {exc}")
        raise typer.Exit(1) from None
    t = Table(title=f"dbt build on target {result.target}: {len(result.nodes)} nodes in {result.seconds:.1f}s")
    for col in ("node", "type", "status", "seconds", "failures"):
        t.add_column(col, overflow="fold")
    for n in result.nodes:
        if n.resource_type == "test" and n.status == "pass" and not all_tests:
            continue
        color = {"error": "red", "fail": "red", "warn": "yellow", "skipped": "yellow"}.get(n.status)
        status = f"[{color}]{n.status}[/{color}]" if color else n.status
        t.add_row(n.name, n.resource_type, status, f"{n.seconds:.2f}", "" if n.failures is None else str(n.failures))
    console.print(t)
    console.print("results: " + ", ".join(f"{k} {v}" for k, v in sorted(result.counts().items())))
    for n in result.failed:
        console.print(f"[red]{n.status}[/red] {n.name}: {n.message}")
    if not result.nodes:
        console.print(result.output[-4000:])
    console.print(f"dbt artifacts and log: {result.target_path}")
    raise typer.Exit(0 if result.success else 1)


@app.command("mlflow-ui")
def mlflow_ui(
    home: HomeOpt = None,
    port: int = 5000,
    production: Annotated[bool, typer.Option(help="Show the production registry")] = False,
) -> None:
    """Start the MLflow UI on the candidate (or production) registry."""
    settings, _ = _setup(None, home)
    uri = settings.production_registry_uri if production else settings.candidate_registry_uri
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--port", str(port)]
    raise typer.Exit(subprocess.call(cmd))


if __name__ == "__main__":
    app()
