"""`mmp`: generate sample data, run use cases end to end through Dagster, inspect status."""

from __future__ import annotations

import datetime as dt
import json
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
from rich.text import Text

from .core.spec import ConfigError, load_config
from .storage.redaction import redact
from .storage.settings import PlatformSettings


class _App(typer.Typer):
    """`mmp`, whose unexpected errors print one line with every credential masked: a traceback with
    local variables (Typer's default) would print the stores' URLs with their passwords."""

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except Exception as exc:
            secrets = _secrets()
            err = Console(stderr=True)
            message = f"{type(exc).__name__}: {redact(exc, secrets)}"
            err.print(Text("error: ", style="red") + Text(message), soft_wrap=True)
            if os.environ.get("MMP_DEBUG"):
                import traceback

                sys.stderr.write(redact("".join(traceback.format_exception(exc)), secrets))
            else:
                err.print("(set MMP_DEBUG=1 for the traceback)")
            sys.exit(1)


app = _App(add_completion=False, no_args_is_help=True, help=__doc__, pretty_exceptions_enable=False)
console = Console()


def _secrets() -> tuple[str, ...]:
    """The credentials of the current settings, masked wherever they appear in what we print."""
    try:
        return PlatformSettings.from_env().secrets()
    except Exception:
        return ()


def _say_error(text: object, prefix: str = "") -> None:
    """Print an error message in red, credentials masked (a driver's message may quote a URL)."""
    message = redact(text, _secrets())
    console.print(Text(prefix, style="red") + Text(message) if prefix else Text(message, style="red"), soft_wrap=True)


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

    spec = _use_case(cfg, use_case)
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
    force: Annotated[
        bool, typer.Option("--force", help="Refit every key, even those whose data and configuration are unchanged")
    ] = False,
    config: ConfigOpt = None,
    home: HomeOpt = None,
    # --- deployment: queue through the instance (docs/deploy.md) ---
    submit: Annotated[
        bool,
        typer.Option(
            "--submit",
            help="Queue one run per key range through the instance's run coordinator (the daemon launches "
            "them: a process locally, a pod on Kubernetes) instead of running here",
        ),
    ] = False,
    lane: Annotated[
        str, typer.Option("--lane", help="With --submit: the lane to queue, train, promote or score")
    ] = "train",
    # --- end deployment ---
) -> None:
    """Materialize every stage through Dagster for the keys found in the landing zone.

    Exit code 0 when every use case ran (some keys may fail), 1 when a use case ingested nothing,
    stopped at a stage that no key got through, or a Dagster step failed, 2 for a usage error."""
    settings, cfg = _setup(config, home)
    names = use_case or list(cfg.use_cases)
    for name in names:
        _use_case(cfg, name)
    date = _run_date(run_date)
    if lane != "train" and not submit:
        console.print("[red]--lane needs --submit[/red]: `mmp run` alone runs every stage here")
        raise typer.Exit(2)
    if submit:  # deployment: queue, do not run here
        raise typer.Exit(0 if _submit(settings, cfg, names, lane, keys, date) else 1)
    ok = _run(settings, cfg, names, keys, date, force=force)
    raise typer.Exit(0 if ok else 1)


def _submit(settings, cfg, names, lane: str, keys=None, run_date=None) -> bool:
    """`mmp run --submit`: queue ranged runs of one lane per use case; True when all were queued."""
    from .defs.discovery import register_new_keys
    from .defs.lanes import LANES
    from .defs.runner import prepare_instance, submit_use_case
    from .storage.lake import Lake

    if lane not in LANES:
        console.print(f"[red]unknown lane {lane!r}[/red]; lanes are {', '.join(LANES)}")
        raise typer.Exit(2)
    instance = prepare_instance(settings)
    lake = Lake(settings.lake_url, settings.lake_storage_options)
    for name in names:
        spec = cfg.use_case(name)
        _, new_keys = register_new_keys(instance, spec, lake)
        known = instance.get_dynamic_partitions(f"{name}_keys")
        run_keys = _resolve_keys(spec, keys, known) if keys else None
        try:
            queued = submit_use_case(instance, cfg, spec, settings, lane, run_keys, run_date, new_keys=new_keys)
        except ValueError as exc:
            _say_error(exc)
            return False
        console.print(
            f"{name} / {lane}: {len(queued.run_ids)} run(s) queued for {len(queued.keys)} key(s) "
            f"({cfg.run.max_keys_per_run} keys per run at most)"
        )
        for (start, end), run_id in zip(queued.ranges, queued.run_ids, strict=True):
            console.print(f"  {run_id}  {_label(spec, start)} .. {_label(spec, end)}", soft_wrap=True)
    nxt = {"train": "promote", "promote": "score"}.get(lane)
    console.print(
        "the daemon launches queued runs (`dagster-daemon run`, or the cluster's daemon)"
        + (f"; when they have finished, queue `--lane {nxt}`" if nxt else "")
    )
    return True


def _run_date(text: str | None) -> dt.date | None:
    if text is None:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        console.print(f"[red]--run-date {text!r} is not a date[/red]; give it as YYYY-MM-DD, e.g. 2025-01-31")
        raise typer.Exit(2) from None


def _run(settings, cfg, names, keys=None, run_date=None, force=False) -> bool:
    """Run the use cases one after the other; True when every one is ok (``UseCaseRun.ok``)."""
    from . import progress
    from .definitions import build_definitions
    from .defs.discovery import register_new_keys
    from .defs.runner import prepare_instance, run_use_case
    from .stages import STAGES
    from .storage.lake import Lake
    from .storage.registry import RegistryError

    console.print(f"data directory: {settings.home}")
    t0 = time.time()
    instance = prepare_instance(settings)
    lake = Lake(settings.lake_url, settings.lake_storage_options)
    # every use case's keys are registered and every given key resolved before anything runs,
    # so a mistyped key stops the command before any work
    plans = []
    for name in names:
        spec = cfg.use_case(name)
        _, new_keys = register_new_keys(instance, spec, lake)
        known = instance.get_dynamic_partitions(f"{name}_keys")
        run_keys = _resolve_keys(spec, keys, known) if keys else None
        plans.append((spec, new_keys, run_keys, len(run_keys) if run_keys else len(known)))
    defs = build_definitions(settings.config_path)
    results = []
    for spec, new_keys, run_keys, total in plans:
        with Progress(
            TextColumn("{task.description:<34}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as bar:
            tasks = {stage: bar.add_task(f"{spec.name} / {stage}", total=total) for stage in STAGES}

            def report(uc: str, stage: str, n: int, bar=bar, tasks=tasks) -> None:
                bar.advance(tasks[stage], n)

            try:
                progress.set_reporter(report)
                result = run_use_case(
                    defs, instance, cfg, spec, settings, run_keys, run_date, new_keys=new_keys, force=force
                )
            except (ValueError, RegistryError) as exc:
                _say_error(exc)
                return False
            finally:
                progress.set_reporter(None)
        results.append(result)
        _print_summary(settings, spec, result, run_date)
    console.print(f"\ntotal wall time {time.time() - t0:.1f}s")
    _print_locations(settings)
    return all(r.ok for r in results)


def _resolve_keys(spec, texts: list[str], known: list[str]) -> list[str]:
    """Keys as given on the command line -> partition keys; an unknown one ends the command
    (exit 2) with the closest registered keys."""
    from .lifecycle import resolve_key
    from .storage.registry import RegistryError

    resolved = []
    for text in texts:
        try:
            key = resolve_key(spec, text, known)
        except RegistryError as exc:
            _say_error(exc)
            raise typer.Exit(2) from None
        if key not in known:
            _unknown_key(spec, text, known)
        resolved.append(key)
    return resolved


def _unknown_key(spec, text: str, known, among: str = "registered") -> None:
    """Say that ``text`` is no key of the use case, with "did you mean" suggestions, and exit 2."""
    console.print(
        f"[red]unknown key {text!r} for {spec.name}[/red] ({len(known)} key(s) {among})",
        soft_wrap=True,
        highlight=False,
    )
    close = similar_keys(spec, text, known)
    if close:
        console.print("did you mean:", soft_wrap=True)
        for key in close:
            console.print(f"  {_label(spec, key)}   (partition key {key})", soft_wrap=True, markup=False)
    raise typer.Exit(2)


def similar_keys(spec, text: str, known, n: int = 3) -> list[str]:
    """The registered keys closest to ``text`` (difflib), compared with their labels
    ('col=value, col=value'), their partition keys and, for one key column, their plain values."""
    import difflib

    from .core.keys import decode_key

    forms: dict[str, str] = {}
    for key in known:
        forms.setdefault(key, key)
        forms.setdefault(_label(spec, key), key)
        if len(spec.keys) == 1:
            forms.setdefault(decode_key(key)[0], key)
    matches = difflib.get_close_matches(text, list(forms), n=n * 3, cutoff=0.5)
    return list(dict.fromkeys(forms[m] for m in matches))[:n]


def _label(spec, key: str) -> str:
    from .core.keys import key_label

    try:
        return key_label(spec.keys, key)
    except ValueError:  # registered under other key columns than today's
        return key


def _print_reason_counts(first) -> None:
    """The keys not ok by the first stage that is not ok and its reason (numbers that differ
    shown as ``…``), the most common first: what thousands of failed keys have in common."""
    from collections import Counter

    from .stages.base import grouped_reasons

    reasons = Counter(f"{r['stage']} {r['status']}: {r['reason'] or ''}" for r in first.iter_rows(named=True))
    grouped = grouped_reasons(reasons).most_common()
    console.print("  keys not ok, by reason:")
    for reason, n in grouped[:5]:
        console.print(f"    {n} key(s): {reason[:300]}", soft_wrap=True, highlight=False)
    if len(grouped) > 5:
        console.print(f"    and {len(grouped) - 5} other reason(s)")


def _print_summary(settings, spec, result, run_date) -> None:
    from .stages import STAGES
    from .storage.warehouse import Warehouse

    ingest = result.ingest
    if not result.keys:
        console.print(
            f"[red]{spec.name}: no keys[/red]: the landing zone has no readable rows for it ({spec.source.path})",
            soft_wrap=True,
        )
        _print_ingest(ingest)
        return
    date = run_date or dt.datetime.now(dt.UTC).date()
    wh = Warehouse(settings.warehouse_url, read_only=True)
    try:
        status = wh.query(
            'SELECT "key", stage, status, reason FROM key_status WHERE use_case = :uc AND run_date = :d',
            uc=spec.name,
            d=date,
        )
        metrics = wh.query(
            'SELECT "key", value FROM key_metrics WHERE use_case = :uc AND run_date = :d '
            "AND model_role = 'candidate' AND metric = :m",
            uc=spec.name,
            d=date,
            m=spec.metric,
        )
        promo = wh.query(
            'SELECT "key", decision, dagster_run_id FROM promotion_history WHERE use_case = :uc AND run_date = :d',
            uc=spec.name,
            d=date,
        )
    except Exception as exc:  # e.g. the publish step failed before the first table existed
        message = f"{type(exc).__name__}: {redact(exc, settings.secrets())}"
        console.print(Text("warehouse not readable: ", style="yellow") + Text(message), soft_wrap=True)
        status = metrics = promo = None
    finally:
        wh.dispose()
    run_keys = set(result.keys)
    t = Table(title=f"{spec.name}: {len(result.keys)} keys ({len(result.new_keys)} new), {len(result.run_ids)} run(s)")
    t.add_column("")
    t.add_column("value", overflow="fold")
    if ingest.get("landing_rows") is not None:
        t.add_row("rows landed", _int(ingest["landing_rows"]))
        t.add_row(
            "rows dropped / merged at ingest",
            f"{_int(ingest.get('rows_dropped'))} / {_int(ingest.get('rows_merged'))}{_top_reasons(ingest)}",
        )
    if ingest.get("scoring_rows") is not None:
        t.add_row("scoring rows landed", _scoring_rows(ingest))
    t.add_row("files rejected", str(len(ingest.get("rejected") or [])))
    if getattr(result, "keys_reused", 0):  # incremental: unchanged data and configuration (`--force` refits)
        t.add_row("models reused (unchanged)", _int(result.keys_reused))
    failing = None
    failed_keys: list[str] = []
    if status is not None:
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
        failing = (
            status.filter((status["status"] != "ok") & (status["stage"] != "published")) if status.height else status
        )
        failed_keys = failing["key"].unique().to_list() if failing.height else []
        t.add_row("keys published", str(len(served & run_keys)))
        t.add_row("keys not published", str(len(run_keys - served)))
        t.add_row("keys with a stage not ok", str(len(failed_keys)))
        if metrics.height and metrics["value"].drop_nulls().len():
            values = metrics["value"].drop_nulls()
            over = "" if values.len() == len(run_keys) else f" ({values.len()} of {len(run_keys)} keys)"
            t.add_row(
                f"{spec.metric} p10 / p50 / p90{over}", " / ".join(f"{values.quantile(p):.4g}" for p in (0.1, 0.5, 0.9))
            )
        if promo.height:
            t.add_row("promotion", ", ".join(f"{r['decision']}: {r['n']}" for r in promo.iter_rows(named=True)))
    t.add_row("time per stage", ", ".join(f"{s} {sec:.1f}s" for s, sec in result.stage_seconds.items()))
    console.print(t)
    _print_ingest(ingest, counts=False)
    if result.stopped:
        console.print(
            f"[red]stopped at {result.stopped_at_stage}[/red]: {result.stop_reason}", soft_wrap=True, highlight=False
        )
        served = (result.stage_counts.get("predictions") or {}).get("ok", 0)
        if served and result.stopped_at_stage != "predictions":
            console.print(f"  predictions were still served by the production models of {served} key(s)")
    elif result.ingested_nothing:
        console.print(f"[red]{spec.name} ingested nothing[/red]: 0 rows in the landing zone ({spec.source.path})")
    unpublished = (result.stage_counts.get("published") or {}).get("failed")
    if unpublished:  # keys the warehouse could not take: they have no key_status rows to show
        reasons = result.not_ok_reasons["published"].most_common(3) if "published" in result.not_ok_reasons else []
        why = "; ".join(f"{r} ({n} key{'s' if n != 1 else ''})" for r, n in reasons)
        console.print(f"[red]{unpublished} key(s) not in the warehouse[/red]: {why}", soft_wrap=True, highlight=False)
    if failed_keys:
        order = {s: i for i, s in enumerate(STAGES)}
        failing = failing.with_columns(failing["stage"].replace_strict(order, default=99).alias("_o")).sort("key", "_o")
        first = failing.group_by("key", maintain_order=True).first().head(10)
        for row in first.iter_rows(named=True):
            console.print(
                f"  [yellow]{_label(spec, row['key'])}[/yellow] {row['status']} at {row['stage']}: {row['reason']}",
                soft_wrap=True,
                highlight=False,
            )
        if len(failed_keys) > 10:
            console.print(f"  ... and {len(failed_keys) - 10} more (`mmp status -u {spec.name} --failed`)")
            _print_reason_counts(failing.group_by("key", maintain_order=True).first())
    for err in result.errors:
        console.print(Text("step failed ", style="red") + Text(redact(err, settings.secrets())), soft_wrap=True)


def _top_reasons(ingest: dict, shown: int = 3, source: str = "source") -> str:
    """The commonest reasons rows were dropped or merged at ingest, over one source's files."""
    totals: dict[str, int] = {}
    for f in ingest.get("files") or []:
        if f.get("source") == source:
            for reason, n in (f.get("drops") or {}).items():
                totals[reason] = totals.get(reason, 0) + int(n or 0)
    ranked = sorted(((n, r) for r, n in totals.items() if n), reverse=True)
    said = [f"{r} {_int(n)}" for n, r in ranked[:shown]]
    if len(ranked) > shown:
        said.append(f"{len(ranked) - shown} more reason(s) {_int(sum(n for n, _ in ranked[shown:]))}")
    return f" ({', '.join(said)})" if said else ""


def _print_ingest(ingest: dict, counts: bool = True) -> None:
    """Rows landed/dropped/merged (unless the summary table had them), every rejected file's
    reason, and the files left for the next run (I/O errors, still being written)."""
    if counts and ingest.get("landing_rows") is not None:
        console.print(
            f"  rows landed {_int(ingest['landing_rows'])}, dropped {_int(ingest.get('rows_dropped'))}, "
            f"merged {_int(ingest.get('rows_merged'))}"
        )
    if counts and ingest.get("scoring_rows") is not None:
        console.print(f"  scoring rows landed {_scoring_rows(ingest)}", soft_wrap=True, markup=False, highlight=False)
    rejected = ingest.get("rejected") or []
    if rejected:
        console.print(f"  {len(rejected)} file(s) rejected (left where they are):")
        for item in rejected[:20]:
            name, reason = (item.get("file"), item.get("reason")) if isinstance(item, dict) else (item, "")
            console.print(f"    {name}: {reason}", soft_wrap=True, markup=False, highlight=False)
        if len(rejected) > 20:
            console.print(f"    ... and {len(rejected) - 20} more (Dagster: the raw asset's run report)")
    for field, what in (
        ("keys_differing_in_case", "keys differ only in case (kept apart, rows split between them)"),
        (
            "keys_differing_in_leading_zeros",
            "keys differ only in leading zeros or a .0 (kept apart, rows split; "
            "key_leading_zeros: strip makes them one)",
        ),
        ("labels_differing_in_case", "class labels differ only in case (separate classes)"),
    ):
        similar = ingest.get(field) or []
        if similar:
            console.print(f"  {len(similar)} group(s) of {what}:")
            for group in similar[:5]:
                console.print(f"    {' | '.join(group)}", soft_wrap=True, markup=False, highlight=False)
    apart = ingest.get("label_sets_apart") or []
    if apart:  # 0/1 in one export, no/yes in another: four classes where two were meant
        console.print(
            "  files write class labels that share none with each other's (each label is its own class; "
            "target_labels maps the ways a class is written to one):"
        )
        for item in apart:
            shown = f"    {item['file']}: {', '.join(item['labels'])}"
            console.print(shown, soft_wrap=True, markup=False, highlight=False)
    early = ingest.get("keys_ending_early") or []
    if early:  # forecasts of periods the other keys already have data for
        n = ingest.get("keys_ending_early_count") or len(early)
        console.print(f"  {n} key(s) whose data ends before the others' (forecast into periods already past):")
        for item in early[:5]:
            console.print(f"    {item}", soft_wrap=True, markup=False, highlight=False)
        if n > 5:
            console.print(f"    ... and {n - 5} more (Dagster: the raw asset's run report)")
    titled = [f for f in ingest.get("files") or [] if f.get("lines_above_header")]
    if titled:
        lines = sum(int(f["lines_above_header"]) for f in titled)
        console.print(f"  {len(titled)} file(s) with title lines above the header ({lines} line(s) skipped)")
    later = [f for f in ingest.get("files") or [] if f.get("status") == "retry_later"]
    if later:
        console.print(f"  {len(later)} file(s) not read, tried again on the next run:")
        for item in later[:20]:
            console.print(
                f"    {item.get('file')}: {item.get('reason')}", soft_wrap=True, markup=False, highlight=False
            )


def _scoring_rows(ingest: dict) -> str:
    """The scoring source's rows: landed, dropped and merged, with the commonest reasons (rows of
    keys no training row has among them: nothing scores them)."""
    return (
        f"{_int(ingest['scoring_rows'])}, dropped {_int(ingest.get('scoring_rows_dropped'))}"
        + f", merged {_int(ingest.get('scoring_rows_merged'))}{_top_reasons(ingest, source='scoring_source')}"
    )


def _int(value) -> str:
    return "-" if value is None else f"{int(value):,}"


def _print_locations(settings) -> None:
    secrets = settings.secrets()
    console.print(
        "\n[bold]where to look[/bold]\n"
        f"  Dagster UI:   uv run mmp dev            (instance {os.environ.get('DAGSTER_HOME')})\n"
        f"  MLflow UI:    uv run mmp mlflow-ui      (candidate {redact(settings.candidate_registry_uri, secrets)})\n"
        f"  warehouse:    {redact(settings.warehouse_url, secrets)}\n"
        f"  lake:         {redact(settings.lake_url, secrets)}",
        highlight=False,
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
    console.print("\n[bold]BI marts[/bold] (dbt build on the warehouse; `uv run mmp bi` shows every node)")
    result = _build_marts(settings)
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
    failed: Annotated[
        bool, typer.Option("--failed", help="List every key whose latest run has a stage not ok, with the reason")
    ] = False,
    config: ConfigOpt = None,
    home: HomeOpt = None,
) -> None:
    """Keys per use case and the status of each stage in each key's latest run (from the warehouse)."""
    settings, cfg = _setup(config, home)
    names = [_use_case(cfg, use_case).name] if use_case else list(cfg.use_cases)
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
        for name in names:
            spec = cfg.use_case(name)
            n_keys = len(instance.get_dynamic_partitions(f"{name}_keys"))
            latest = latest_key_status(wh, name) if "key_status" in tables else None
            if failed:
                _print_failed(spec, n_keys, latest)
            else:
                _print_status(spec, n_keys, latest, _latest_run(wh, name) if "run_summary" in tables else None)
    finally:
        wh.dispose()


def latest_key_status(wh, use_case: str):
    """Every stage row of each key's latest run date: a key that did not run today keeps the
    status of its own last run, and a run date is never mixed with an older one for a key."""
    return wh.query(
        'SELECT s."key", s.key_label, s.run_date, s.stage, s.status, s.reason FROM key_status s '
        'INNER JOIN (SELECT "key", max(run_date) AS run_date FROM key_status WHERE use_case = :uc GROUP BY "key") l '
        'ON s."key" = l."key" AND s.run_date = l.run_date WHERE s.use_case = :uc',
        uc=use_case,
    )


def _latest_run(wh, use_case: str) -> dict | None:
    """The newest run_summary row of the use case (any schema revision: columns read by name)."""
    rows = wh.query(
        "SELECT * FROM run_summary WHERE use_case = :uc AND published_at = "
        "(SELECT max(published_at) FROM run_summary WHERE use_case = :uc)",
        uc=use_case,
    )
    return rows.row(0, named=True) if rows.height else None


def _print_status(spec, n_keys: int, latest, last_run: dict | None) -> None:
    import polars as pl

    from .stages import STAGES

    t = Table(title=f"{spec.name}: {n_keys} keys registered")
    for col in ("stage", "ok", "failed", "skipped / not run", "latest run dates"):
        t.add_column(col, overflow="fold")
    if latest is not None and latest.height:
        dates = latest.group_by("stage").agg(
            pl.col("run_date").min().alias("first"),
            pl.col("run_date").max().alias("last"),
            (pl.col("status") == "ok").sum().alias("ok"),
            (pl.col("status") == "failed").sum().alias("failed"),
            (~pl.col("status").is_in(["ok", "failed"])).sum().alias("other"),
        )
        order = {s: i for i, s in enumerate(STAGES)}
        for r in sorted(dates.iter_rows(named=True), key=lambda r: order.get(r["stage"], 99)):
            span = str(r["last"]) if r["first"] == r["last"] else f"{r['first']} … {r['last']}"
            t.add_row(r["stage"], str(r["ok"]), str(r["failed"]), str(r["other"]), span)
    console.print(t)
    if last_run and last_run.get("stopped_at_stage"):
        console.print(
            f"[red]last run ({last_run['run_date']}, {last_run['dagster_run_id']}) stopped at "
            f"{last_run['stopped_at_stage']}[/red]: {last_run.get('stop_reason')}",
            soft_wrap=True,
            highlight=False,
        )


def _print_failed(spec, n_keys: int, latest) -> None:
    """One row per key whose latest run has a stage not ok: the first such stage and its reason."""
    import polars as pl

    from .stages import STAGES

    t = Table(title=f"{spec.name}: keys with a stage not ok in their latest run ({n_keys} keys registered)")
    for col in ("key", "run date", "stage", "status", "reason"):
        t.add_column(col, overflow="fold")
    n = 0
    if latest is not None and latest.height:
        order = {s: i for i, s in enumerate(STAGES)}
        first = (
            latest.filter(pl.col("status") != "ok")
            .with_columns(pl.col("stage").replace_strict(order, default=99, return_dtype=pl.Int32).alias("_order"))
            .sort("key", "_order")
            .group_by("key", maintain_order=True)
            .first()
        )
        for r in first.iter_rows(named=True):
            t.add_row(r["key_label"] or r["key"], str(r["run_date"]), r["stage"], r["status"], r["reason"] or "")
        n = first.height
    console.print(t)
    console.print(f"{n} key(s) not ok" if n else "every key's latest run is ok at every stage")


@app.command()
def models(
    use_case: Annotated[str, typer.Argument(help="Use case whose model family to list")],
    status: Annotated[
        str | None, typer.Option(help="Only keys with this status: current, behind, unpromoted, production_only")
    ] = None,
    limit: Annotated[int, typer.Option(help="Rows of the table to print (0 = all; --json prints all)")] = 50,
    publish: Annotated[
        bool, typer.Option("--publish", help="Also write the view to the warehouse's model_family table")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON instead of a table")] = False,
    config: ConfigOpt = None,
    home: HomeOpt = None,
) -> None:
    """Every key's candidate and production model side by side (three registry queries in all).

    Only reads the registries, unless --publish also writes the view to the warehouse."""
    settings, cfg = _setup(config, home)
    from .lifecycle import FAMILY_STATUSES, model_family, publish_model_family, registries

    spec = _use_case(cfg, use_case)
    if status and status not in FAMILY_STATUSES:
        console.print(f"[red]unknown status {status!r}[/red]; use one of {', '.join(FAMILY_STATUSES)}")
        raise typer.Exit(2)
    family = publish_model_family(settings, spec) if publish else model_family(spec, *registries(settings))
    shown = family.filter(family["status"] == status) if status else family
    if as_json:
        sys.stdout.write(json.dumps(shown.to_dicts(), default=str, indent=1) + "\n")
        return
    counts = family.group_by("status").len().sort("status")
    summary = ", ".join(f"{r['status']} {r['len']}" for r in counts.iter_rows(named=True)) or "no models yet"
    t = Table(title=f"{spec.name}: {family.height} keys ({summary}); metric {spec.metric}")
    for col in ("key", "candidate", spec.metric, "production", f"champion {spec.metric}", "status"):
        t.add_column(col, overflow="fold")
    fmt = lambda v: "-" if v is None else f"{v:.4g}"  # noqa: E731
    for r in shown.head(limit or shown.height).iter_rows(named=True):
        prod = f"v{r['production_version']}" if r["production_version"] else "-"
        if r["production_source_version"]:
            prod += f" (from candidate v{r['production_source_version']})"
        cand = f"v{r['candidate_version']}" if r["candidate_version"] else "-"
        t.add_row(r["key_label"], cand, fmt(r["candidate_value"]), prod, fmt(r["production_value"]), r["status"])
    console.print(t)
    if limit and shown.height > limit:
        console.print(f"… {shown.height - limit} more (use --limit 0 for all, --status, or --json)")
    if publish:
        console.print(f"written to the warehouse's model_family table ({family.height} rows)")


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
        known = list(snap.versions)
        resolved = resolve_key(spec, key, known)
    except RegistryError as exc:
        _say_error(exc)
        raise typer.Exit(2) from None
    if resolved not in known:
        _unknown_key(spec, key, known, among="with a production model")
    try:
        done = do_rollback(spec, prod, resolved, to_version=to_version, snapshot=snap)
    except RegistryError as exc:
        _say_error(exc, prefix="rollback refused: ")
        raise typer.Exit(1) from None
    from .core.keys import key_label

    label = key_label(spec.keys, done.key)
    console.print(f"{spec.name} / {label}: production v{done.from_version} -> v{done.to_version}")
    try:
        record_rollback(settings, spec, done)
    except Exception as exc:  # the registry has moved; say so plainly rather than with a traceback
        console.print(
            f"[red]the rollback is done in the registry, but recording it in the warehouse failed[/red]: "
            f"{type(exc).__name__}: {redact(exc, settings.secrets())}\nrow for promotion_history: {done.history_row}"
        )
        raise typer.Exit(1) from None
    console.print("recorded in promotion_history; model_family refreshed")


def _use_case(cfg, name: str):
    try:
        return cfg.use_case(name)
    except ConfigError as exc:
        _say_error(exc)
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
    try:
        result = _build_marts(settings, select)
    except (FileNotFoundError, ValueError) as exc:
        _say_error(exc)
        raise typer.Exit(2) from None
    except Exception as exc:  # e.g. the DuckDB file stayed locked by another writer for too long
        _say_error(f"{type(exc).__name__}: {exc}", prefix="dbt build could not start: ")
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
    # through the environment, not the command line, where any user's `ps` would show its password
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": uri}
    console.print(f"MLflow UI on {redact(uri, settings.secrets())}: http://localhost:{port}", highlight=False)
    raise typer.Exit(subprocess.call([sys.executable, "-m", "mlflow", "ui", "--port", str(port)], env=env))


# --- serving (issue 11): the real-time scoring service, docs/serving.md ----------------------
@app.command()
def serve(
    config: ConfigOpt = None,
    home: HomeOpt = None,
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: int = 8080,
    workers: Annotated[int, typer.Option(help="Worker processes (each holds its own model cache)")] = 1,
    cache_bytes: Annotated[int | None, typer.Option(help="Model cache budget per worker, in bytes")] = None,
) -> None:
    """Serve each key's production model over HTTP (API keys from MMP_SERVE_API_KEYS[_FILE])."""
    import uvicorn

    from .serving.app import create_app
    from .serving.settings import ServeSettings

    _setup(config, home)
    if cache_bytes:
        os.environ["MMP_SERVE_CACHE_BYTES"] = str(cache_bytes)
    create_app(ServeSettings.from_env())  # fail here, not in every worker, on a bad configuration
    console.print(f"scoring service on http://{host}:{port} ({workers} worker(s)); OpenAPI at /docs", highlight=False)
    uvicorn.run(
        "many_models_platform.serving.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
        access_log=False,
    )


# --- automation (docs/operations.md#automation) -----------------------------------------------
def _build_marts(settings, select=None):
    """The marts through the ``bi_marts`` job, so the ``bi`` assets are materialized in Dagster;
    a ``--select`` (a dbt selection) runs dbt directly, as before."""
    from .bi import build_bi_marts

    if select:
        return build_bi_marts(settings, select=select)
    from .definitions import build_definitions
    from .defs.marts import build_marts_in_dagster
    from .defs.runner import prepare_instance

    return build_marts_in_dagster(build_definitions(settings.config_path), prepare_instance(settings), settings)


automation_app = typer.Typer(no_args_is_help=True, help="A use case's automation: sensors and daily schedule.")
app.add_typer(automation_app, name="automation")


@automation_app.command("status")
def automation_status(
    use_case: Annotated[list[str] | None, typer.Argument(help="Use case(s); default all")] = None,
    config: ConfigOpt = None,
    home: HomeOpt = None,
) -> None:
    """Show each sensor and schedule of the use case: running or stopped, cursor, last tick."""
    settings, cfg = _setup(config, home)
    from .defs.instigators import status
    from .defs.runner import prepare_instance

    instance = prepare_instance(settings)
    for name in use_case or list(cfg.use_cases):
        spec = _use_case(cfg, name)
        t = Table(title=f"{name}: automation")
        for col in ("name", "kind", "state", "when", "cursor", "last tick"):
            t.add_column(col, overflow="fold")
        for s in status(instance, spec):
            state = "[green]running[/green]" if s.running else "stopped"
            t.add_row(s.name, s.kind, state, s.detail, s.cursor or "", s.last_tick or "no tick yet")
        console.print(t)
    console.print("runs are launched only while `dagster-daemon run` (or `mmp dev`) is running")


@automation_app.command("on")
def automation_on(use_case: str, config: ConfigOpt = None, home: HomeOpt = None) -> None:
    """Start the use case's automation sensors, rollback sensor and daily schedule."""
    _toggle(use_case, True, config, home)


@automation_app.command("off")
def automation_off(use_case: str, config: ConfigOpt = None, home: HomeOpt = None) -> None:
    """Stop them (runs already queued or in progress carry on)."""
    _toggle(use_case, False, config, home)


def _toggle(use_case: str, running: bool, config, home) -> None:
    settings, cfg = _setup(config, home)
    from .defs.instigators import names_of, set_running, status
    from .defs.runner import prepare_instance

    spec = _use_case(cfg, use_case)
    instance = prepare_instance(settings)
    others = any(
        s.running and s.name in names_of(other) and s.name != "bi_marts_automation"
        for other in cfg.use_cases.values()
        if other.name != spec.name
        for s in status(instance, other)
    )
    set_running(instance, spec, running, others_running=others)
    for s in status(instance, spec):
        console.print(f"{s.name}: {'running' if s.running else 'stopped'}")


if __name__ == "__main__":
    app()
