"""The pipeline benchmark at a tiny size, so it cannot rot: it runs end to end and reports every
figure docs/benchmarks.md names. No timings are asserted (benchmarks are never timed tests)."""

import itertools
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ENV_VARS

from many_models_platform.stages import STAGES

ROOT = Path(__file__).resolve().parents[1]
KEYS = 16  # 8 keys per worker: the smallest run that starts the pool of two workers


@pytest.mark.slow
def test_pipeline_bench_reports_every_figure(tmp_path: Path):
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    cmd = [sys.executable, "benchmarks/pipeline_bench.py", "--keys", str(KEYS), "--rows", "120"]
    cmd += ["--workers", "2", "--naive-keys", "1", "--home", str(tmp_path / "home"), "--json", str(out)]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)
    r = json.loads(out.read_text())

    assert r["keys"] == KEYS and r["rows"] == KEYS * 120
    assert list(r["stages"]) == list(STAGES)
    assert all(s["keys_ok"] == KEYS and s["s"] > 0 and s["keys_per_s"] > 0 for s in r["stages"].values())
    assert r["pipeline_s"] >= max(s["s"] for s in r["stages"].values())
    assert r["bare_compute_s"] > 0
    # both seconds are rounded to 0.01 s, and the bare compute of 16 keys is a fraction of a second
    pipeline, bare = r["pipeline_s"], r["bare_compute_s"]
    assert (
        (pipeline - 0.005) / (bare + 0.005) - 0.01 <= r["overhead_ratio"] <= (pipeline + 0.005) / (bare - 0.005) + 0.01
    )
    for phase in ("pipeline", "bare_compute"):
        peaks = r["peak_rss_mib"][phase]
        # the main process and the two pool workers, each with its own peak
        assert peaks["main_mib"] > 50
        assert sum(1 for v in peaks["workers_mib"].values() if v > 50) >= 2
        assert peaks["max_mib"] == max([peaks["main_mib"], *peaks["workers_mib"].values()])
    # every key materializes every asset; the count per key is what the report divides
    assert r["dagster_events_by_type"]["ASSET_MATERIALIZATION"] >= KEYS * len(STAGES)
    assert r["dagster_events_per_key"] == pytest.approx(r["dagster_events"] / KEYS, abs=0.01)
    # registrations are batched many keys per transaction: fewer MLflow calls than keys, but
    # each key's new version is at least one SQL statement
    assert r["registry_calls"] > 0
    assert r["registry_sql_per_key"] >= 1
    # where the time goes: every stage metered, the bare compute split over the stages that do it
    costs = r["cost_breakdown"]
    assert list(costs["stages"]) == list(STAGES)
    for stage, c in costs["stages"].items():
        assert c["wall_s"] > 0 and c["main_cpu_s"] >= 0 and c["workers_cpu_s"] >= 0
        assert c["overhead_cpu_s"] == pytest.approx(c["main_cpu_s"] + c["workers_cpu_s"] - c["bare_cpu_s"], abs=0.02)
        assert (c["bare_cpu_s"] > 0) == (stage in ("training_set", "model", "evaluation", "predictions"))
    # a running peak: it never falls, but the kernel's batched RSS counters make each reading
    # approximate by a fraction of a MiB
    peaks_after = [c["main_peak_mib_after"] for c in costs["stages"].values()]
    assert all(p > 50 for p in peaks_after)
    assert all(b >= a - 2 for a, b in itertools.pairwise(peaks_after))
    assert peaks_after[-1] <= r["peak_rss_mib"]["pipeline"]["main_mib"] + 2
    assert costs["bare_cpu_s"] == pytest.approx(sum(c["bare_cpu_s"] for c in costs["stages"].values()), abs=0.05)
    assert costs["pipeline_cpu_s"] >= sum(c["main_cpu_s"] + c["workers_cpu_s"] for c in costs["stages"].values()) - 0.1
    assert costs["outside_stages_s"] >= 0 and costs["idle_core_s"] >= 0
    # the naive way for one key (benchmarks/naive_defs.py): its own Dagster run and process, a
    # default mlflow.sklearn.log_model that registers the key's model
    assert r["naive_keys"] == 1 and r["naive_per_key_ms"] > 0
    assert r["naive_vs_ours"] == pytest.approx(r["naive_per_key_ms"] / r["pipeline_per_key_ms"], rel=0.02)
    con = sqlite3.connect(tmp_path / "home" / "naive_mlflow.db")
    (name,) = con.execute("SELECT name FROM registered_models").fetchone()
    con.close()
    assert name.startswith("naive.") and name.removeprefix("naive.") in keys_of(tmp_path / "home")

    # the floor under it, from the bronze files the run left: per-key CPU by piece and per fit
    floor = tmp_path / "fit.json"
    cmd = [sys.executable, "benchmarks/fit_bench.py", "--home", str(tmp_path / "home"), "--keys", "3"]
    subprocess.run([*cmd, "--json", str(floor)], cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)
    f = json.loads(floor.read_text())
    assert f["keys"] == 3 and sum(f["winners"].values()) == 3
    assert set(f["bare_cpu_ms_per_key_by_stage"]) == {"training_set", "model", "evaluation", "predictions"}
    assert f["bare_cpu_ms_per_key"] == pytest.approx(sum(f["bare_cpu_ms_per_key_by_stage"].values()), abs=0.3)
    assert set(f["one_fit_cpu_ms_on_the_training_part"]) == {"ridge", "lightgbm"}
    assert all(v > 0 for v in f["one_fit_cpu_ms_on_the_training_part"].values())
    assert f["projection"]["least_wall_s"] == pytest.approx(f["bare_cpu_ms_per_key"] * 10_000 / 2 / 1000, rel=0.01)


def keys_of(home: Path) -> set[str]:
    """The keys the benchmark's pipeline wrote bronze for."""
    return {p.stem for p in (home / "lake" / "bronze" / "retail_demand").glob("*.parquet")}
