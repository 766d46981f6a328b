"""Helpers for the Dagster-level tests: write a config, land data, run through Dagster."""

from pathlib import Path

import polars as pl
import yaml

from many_models_platform.core.spec import load_config
from many_models_platform.definitions import build_definitions
from many_models_platform.defs.runner import run_use_case


def write_config(path: Path, use_cases: dict, run: dict | None = None) -> Path:
    path.write_text(yaml.safe_dump({"use_cases": use_cases, **({"run": run} if run else {})}, sort_keys=False))
    return path


def land(settings, use_case_dir: str, frame: pl.DataFrame, name: str = "part-0000.csv") -> Path:
    target = Path(settings.lake_url) / "landing" / use_case_dir
    target.mkdir(parents=True, exist_ok=True)
    frame.write_csv(target / name)
    return target / name


def land_generated(settings, use_case: str, keys: int, rows: int, **kwargs):
    """Sample data from the use case's own generator, written where its source glob looks."""
    from many_models_platform.core.generators import GENERATORS, write_landing

    spec = load_config().use_case(use_case)
    data = GENERATORS[use_case](keys=keys, rows=rows)
    write_landing(data, Path(settings.lake_url) / Path(spec.source.path).parent, use_case, **kwargs)
    return data


def run_pipeline(settings, instance, config_path: Path | None, use_case: str, keys=None, force: bool = False):
    """What `mmp run` does for one use case (``force``: `mmp run --force`)."""
    cfg = load_config(config_path)
    defs = build_definitions(str(config_path) if config_path else None)
    return run_use_case(defs, instance, cfg, cfg.use_case(use_case), settings, keys=keys, force=force)
