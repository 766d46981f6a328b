"""The real-time scoring service (issue 11) against a real production registry.

One module fixture builds a small world: the real pipeline (raw .. predictions, no Dagster) on
a tiny use case per task (forecast, regression, anomaly, classification with a categorical
feature), so the production registry holds real versions with real hashes. Each test then
starts the service on a free port (uvicorn in a thread) with the settings it needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import re
import shutil
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import pytest
from conftest_core import clear_platform_env

from many_models_platform.core.generators import (
    GeneratedData,
    generate_group_regression,
    generate_retail_demand,
    generate_sensor_anomaly,
    write_landing,
)
from many_models_platform.core.spec import load_config, parse_config
from many_models_platform.stages import STAGES, StageRun, run_stage
from many_models_platform.stages.raw import discover_keys
from many_models_platform.storage.lake import Lake
from many_models_platform.storage.registry import HASH_TAG, production_registry
from many_models_platform.storage.settings import PlatformSettings

TOKEN = "test-serving-token-7c1f"
HOSTILE_SEGMENT = "zone 9/north"  # encoded 'zone%209%2Fnorth': a space and a slash, sorted last
AUTH = {"X-API-Key": TOKEN}
FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
DAY = dt.date(2025, 3, 3)

USE_CASES = {
    "demand": {
        "task": "forecast",
        "source": {"path": "landing/demand/*.csv"},
        "scoring_source": {"path": "landing/demand_future/*.csv"},
        "keys": ["store", "brand"],
        "time_column": "week_start",
        "target": "quantity",
        "features": ["price", "deal", "feat"],
        "lags": [8, 9],
        "holdout": {"periods": 8},
        "horizon": 8,
        "metric": "wape",
        "min_rows": 40,
        "non_negative_target": True,
        "candidates": [{"name": "ridge", "estimator": "sklearn.linear_model.Ridge", "params": {"alpha": 1.0}}],
    },
    "sensors": {
        "task": "anomaly",
        "source": {"path": "landing/sensors/*.csv"},
        "keys": ["device_id", "sensor"],
        "time_column": "timestamp",
        "target": "is_anomaly",
        "features": ["value", "ambient_temperature"],
        "calendar_features": False,
        "holdout": {"fraction": 0.25},
        "metric": "f1",
        "min_rows": 48,
        "candidates": [
            {
                "name": "isolation_forest",
                "estimator": "sklearn.ensemble.IsolationForest",
                "params": {"n_estimators": 10, "contamination": 0.05, "random_state": 0},
            }
        ],
    },
    "segments": {
        "task": "regression",
        "source": {"path": "landing/segments/*.csv"},
        "keys": ["segment_id"],
        "target": "y",
        "features": ["x1", "x2", "x3", "x4", "x5"],
        "holdout": {"fraction": 0.2},
        "metric": "rmse",
        "min_rows": 30,
        "candidates": [{"name": "linear", "estimator": "sklearn.linear_model.LinearRegression"}],
    },
    "segment_class": {
        "task": "classification",
        "source": {"path": "landing/segment_class/*.csv"},
        "keys": ["segment_id"],
        "target": "level",
        "features": ["x1", "x2", "x3"],
        "categorical_features": ["band"],
        "holdout": {"fraction": 0.25},
        "metric": "accuracy",
        "min_rows": 30,
        "candidates": [{"name": "logistic", "estimator": "sklearn.linear_model.LogisticRegression"}],
    },
}


@dataclass
class World:
    settings: PlatformSettings
    specs: dict
    keys: dict[str, list[str]]  # use case -> keys with a production model

    def production(self, use_case: str) -> dict:
        return production_registry(self.settings).aliased_versions(use_case)

    def training(self, use_case: str, key: str) -> pl.DataFrame:
        lake = Lake(self.settings.lake_url)
        return lake.read_parquet(lake.key_path("training", use_case, key, ".parquet"))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    with pytest.MonkeyPatch.context() as mp:
        clear_platform_env(mp)
        home = tmp_path_factory.mktemp("serving_home")
        config = home / "use_cases.yaml"
        config.write_text(json.dumps({"use_cases": USE_CASES}))
        mp.setenv("MMP_CONFIG", str(config))
        settings = PlatformSettings.from_env(home)
    settings.ensure_local_dirs()
    landing = Path(settings.lake_url) / "landing"
    write_landing(generate_retail_demand(keys=2, rows=70, seed=1), landing / "demand", "demand")
    write_landing(generate_sensor_anomaly(keys=2, rows=120, seed=1), landing / "sensors", "sensors")
    segments = generate_group_regression(keys=10, rows=40, seed=1).history  # the last one named as users do
    segments = segments.with_columns(pl.col("segment_id").replace("seg-010", HOSTILE_SEGMENT))
    write_landing(GeneratedData(segments), landing / "segments", "segments")
    cls = generate_group_regression(keys=2, rows=60, seed=2).history
    cls = cls.with_columns(
        level=pl.when(pl.col("y") > pl.col("y").median().over("segment_id"))
        .then(pl.lit("high"))
        .otherwise(pl.lit("low")),
        band=pl.when(pl.col("x4") > 0).then(pl.lit("up")).otherwise(pl.lit("down")),
    )
    write_landing(GeneratedData(cls), landing / "segment_class", "segment_class")
    cfg = load_config(config)
    keys = {}
    for name, spec in cfg.use_cases.items():
        found = discover_keys(spec, Lake(settings.lake_url))
        run = StageRun(spec, settings, run_id=f"serving-{name}", run_date=DAY, workers=1)
        for stage in STAGES[:-1]:  # raw .. predictions
            run_stage(stage, run, found)
        keys[name] = sorted(production_registry(settings).aliased_versions(name))
        assert keys[name], f"{name}: no key reached production"
    return World(settings, cfg.use_cases, keys)


# --- a real server on a free port ----------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(world: World, **overrides):
    """The service for the world's settings (plus ``overrides``), at its base URL."""
    import uvicorn

    from many_models_platform.serving.app import create_app
    from many_models_platform.serving.settings import ServeSettings

    values = {"platform": world.settings, "api_keys": (TOKEN, "second-key-4b2d"), "refresh_interval_s": 0.2}
    app = create_app(ServeSettings(**{**values, **overrides}), world.specs)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the service did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(10)


def metric(base: str, name: str, **labels) -> float:
    text = httpx.get(f"{base}/metrics", headers=AUTH).text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{name}(?:\{{{re.escape(want)}\}})? (\S+)$" if want else rf"^{name} (\S+)$"
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


def payloads(frame: pl.DataFrame, features: list[str]) -> dict[str, dict]:
    """The same rows in each MLflow pyfunc input format."""
    rows = frame.select(features).to_dicts()
    return {
        "dataframe_split": {"dataframe_split": {"columns": features, "data": [[r[f] for f in features] for r in rows]}},
        "dataframe_records": {"dataframe_records": rows},
        "instances": {"instances": [[r[f] for f in features] for r in rows]},
        "inputs": {"inputs": {f: [r[f] for r in rows] for f in features}},  # columns
        "instances_records": {"instances": rows},
    }


def predict_url(base: str, use_case: str, key: str) -> str:
    return f"{base}/v1/use-cases/{use_case}/keys/{key}/predict"


# --- predictions ----------------------------------------------------------------------------
def test_predictions_are_identical_to_mlflow_pyfunc_for_every_format_and_task(world):
    import mlflow.pyfunc
    from mlflow.pyfunc.scoring_server import infer_and_parse_data

    with serving(world) as (base, _), httpx.Client(headers=AUTH) as client:
        for use_case, keys in world.keys.items():
            key = keys[0]
            prod = world.production(use_case)[key]
            features = prod.tags["features"].split(",")
            rows = world.training(use_case, key).drop_nulls(features).head(6)
            pyfunc = mlflow.pyfunc.load_model(prod.source)
            bodies = payloads(rows, features)
            # MLflow's own scoring-server parser and pyfunc on the named formats (unnamed rows
            # reach a model fitted on named columns only through the service, which names them)
            expected = np.asarray(pyfunc.predict(infer_and_parse_data(bodies["dataframe_split"])))
            assert np.array_equal(
                np.asarray(pyfunc.predict(infer_and_parse_data(bodies["dataframe_records"]))), expected
            )
            for fmt, body in bodies.items():
                response = client.post(predict_url(base, use_case, key), json=body)
                assert response.status_code == 200, (use_case, fmt, response.text)
                got = response.json()
                assert got["model_version"] == prod.version
                assert got["predictions"] == expected.tolist(), (use_case, fmt)
                if use_case == "sensors":
                    assert got["anomaly"] == (expected == -1).astype(int).tolist()
            # a body over 32 KiB is parsed and predicted off the event loop: the same answer
            records = [{**r, "note": "x" * 6000} for r in bodies["dataframe_records"]["dataframe_records"]]
            response = client.post(predict_url(base, use_case, key), json={"dataframe_records": records})
            assert len(response.request.content) > 32 * 1024
            assert response.json()["predictions"] == expected.tolist(), use_case
            # Azure's sample route gives the same, by POST and by GET
            body = payloads(rows, features)["dataframe_records"]
            expected = np.asarray(pyfunc.predict(infer_and_parse_data(body))).tolist()
            name = f"{use_case}.{key}"
            posted = client.post(f"{base}/score", json={"model_name": name, "data": body["dataframe_records"]})
            got = client.get(f"{base}/score", params={"model_name": name, "data": json.dumps(body)})
            assert posted.json()["predictions"] == got.json()["predictions"] == expected


def test_forecast_route_matches_the_batch_predictions_stage(world):
    lake = Lake(world.settings.lake_url)
    spec = world.specs["demand"]
    with serving(world) as (base, _), httpx.Client(headers=AUTH) as client:
        for key in world.keys["demand"]:
            batch = lake.read_parquet(lake.key_path("predictions", "demand", key, ".parquet")).filter(
                pl.col("kind") == "forecast"
            )
            future = lake.read_parquet(lake.key_path("bronze_scoring", "demand", key, ".parquet"))
            records = [
                {k: (v.isoformat() if isinstance(v, dt.date) else v) for k, v in r.items()}
                for r in future.select(spec.time_column, *spec.features).to_dicts()
            ]
            url = f"{base}/v1/use-cases/demand/keys/{key}/forecast"
            got = client.post(url, json={"future": records}).json()
            assert [h["prediction"] for h in got["horizon"]] == batch["prediction"].to_list()
            assert len(got["horizon"]) == spec.horizon and got["model_version"] == batch["model_version"][0]
            short = client.post(url, json={"horizon": 3}).json()["horizon"]
            assert [h["period"] for h in short] == [h["period"] for h in got["horizon"][:3]]
            assert client.post(url, json={"horizon": spec.horizon + 1}).status_code == 422
        seg = world.keys["segments"][0]
        assert client.post(f"{base}/v1/use-cases/segments/keys/{seg}/forecast", json={}).status_code == 422


# --- loading and the cache ------------------------------------------------------------------
def test_a_burst_of_100_cold_requests_loads_the_model_once(world):
    key = world.keys["segments"][1]
    features = world.production("segments")[key].tags["features"].split(",")
    body = payloads(world.training("segments", key).head(1), features)["dataframe_records"]

    async def burst(base: str) -> list[int]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(headers=AUTH, limits=limits, timeout=60) as client:
            replies = await asyncio.gather(
                *(client.post(predict_url(base, "segments", key), json=body) for _ in range(100))
            )
        return [r.status_code for r in replies]

    with serving(world) as (base, _):
        assert asyncio.run(burst(base)) == [200] * 100
        assert metric(base, "mmp_serve_model_loads_total", outcome="ok") == 1
        assert metric(base, "mmp_serve_cache_hits_total") + metric(base, "mmp_serve_cache_misses_total") == 100
        assert metric(base, "mmp_serve_cache_models") == 1


def test_parallel_loads_past_the_bound_get_503_with_retry_after(world):
    keys = world.keys["segments"][:6]
    features = world.production("segments")[keys[0]].tags["features"].split(",")
    body = payloads(world.training("segments", keys[0]).head(1), features)["dataframe_records"]

    async def cold(base: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(headers=AUTH, timeout=60) as client:
            return await asyncio.gather(*(client.post(predict_url(base, "segments", k), json=body) for k in keys))

    with serving(world, max_parallel_loads=1) as (base, _):
        replies = asyncio.run(cold(base))
        busy = [r for r in replies if r.status_code == 503]
        assert {r.status_code for r in replies} <= {200, 503} and any(r.status_code == 200 for r in replies)
        assert busy and all(r.headers["Retry-After"] == "1" for r in busy)
        assert metric(base, "mmp_serve_load_rejections_total") == len(busy)


def test_the_byte_budget_holds_under_a_rotation_of_many_keys(world):
    keys = world.keys["segments"]
    features = world.production("segments")[keys[0]].tags["features"].split(",")
    body = payloads(world.training("segments", keys[0]).head(2), features)["dataframe_split"]
    with serving(world) as (base, _):
        httpx.post(predict_url(base, "segments", keys[0]), json=body, headers=AUTH).raise_for_status()
        one = metric(base, "mmp_serve_cache_bytes")
    assert one > 0
    budget = int(one * 3.5)
    with serving(world, cache_bytes=budget) as (base, _), httpx.Client(headers=AUTH) as client:
        for _ in range(3):
            for key in keys:
                assert client.post(predict_url(base, "segments", key), json=body).status_code == 200
                assert metric(base, "mmp_serve_cache_bytes") <= budget
                assert metric(base, "mmp_serve_cache_models") <= 3
        assert metric(base, "mmp_serve_cache_evictions_total", reason="budget") >= 3 * len(keys) - 3
        assert metric(base, "mmp_serve_model_loads_total", outcome="ok") == 3 * len(keys)


def test_a_promotion_and_a_rollback_reach_the_service_within_the_interval(world):
    from many_models_platform.lifecycle import rollback
    from many_models_platform.storage.registry import copy_model_dir

    spec = world.specs["segments"]
    key, other = world.keys["segments"][-1], world.keys["segments"][-2]
    current = world.production("segments")
    mine, theirs = current[key], current[other]
    features = mine.tags["features"].split(",")
    body = payloads(world.training("segments", key).head(3), features)["dataframe_split"]
    writer = production_registry(world.settings, write=True)

    def answer(client, base):
        reply = client.post(predict_url(base, "segments", key), json=body)
        assert reply.status_code == 200, reply.text
        return reply.json()["model_version"], reply.json()["predictions"]

    def wait_for(client, base, version):
        deadline = time.monotonic() + 20
        while (got := answer(client, base))[0] != version:
            assert time.monotonic() < deadline, f"still v{got[0]}, expected v{version}"
            time.sleep(0.05)
        return got

    with serving(world, refresh_interval_s=0.2) as (base, _), httpx.Client(headers=AUTH) as client:
        before = answer(client, base)
        assert before[0] == mine.version
        # a promotion: a new production version (here the other key's model) takes the alias
        dest = f"{world.settings.production_artifact_root}/segments/promoted-{key}"
        copy_model_dir(theirs.source, dest, theirs.tags[HASH_TAG])
        tags = {**mine.tags, HASH_TAG: theirs.tags[HASH_TAG]}
        version = writer.register("segments", key, dest, None, tags, {f"segments.{key}"})
        writer.set_alias("segments", key, version)
        promoted = wait_for(client, base, version)
        assert promoted[1] != before[1]
        other_answer = client.post(predict_url(base, "segments", other), json=body).json()["predictions"]
        assert promoted[1] == other_answer
        # a rollback (the platform's own) brings the previous version back
        done = rollback(spec, writer, key, by="test")
        assert (done.from_version, done.to_version) == (version, mine.version)
        assert wait_for(client, base, mine.version) == before
        assert metric(base, "mmp_serve_cache_evictions_total", reason="invalidated") >= 2


def test_only_an_artifact_whose_hash_matches_the_registry_is_served(world):
    key = world.keys["segments"][2]
    prod = world.production("segments")[key]
    features = prod.tags["features"].split(",")
    body = payloads(world.training("segments", key).head(1), features)["dataframe_split"]
    copy = Path(world.settings.production_artifact_root) / "segments" / f"tampered-{key}"
    shutil.copytree(prod.source, copy)
    (copy / "model.skops").write_bytes((copy / "model.skops").read_bytes() + b"\0")
    writer = production_registry(world.settings, write=True)
    bad = writer.register("segments", key, str(copy), None, dict(prod.tags), {f"segments.{key}"})
    writer.set_alias("segments", key, bad)
    try:
        with serving(world) as (base, _):
            reply = httpx.post(predict_url(base, "segments", key), json=body, headers=AUTH)
            assert reply.status_code == 503 and "cannot be loaded" in reply.json()["error"]
            assert metric(base, "mmp_serve_model_loads_total", outcome="failed") == 1
    finally:
        writer.set_alias("segments", key, prod.version)


# --- security -------------------------------------------------------------------------------
def test_a_key_is_sent_in_the_url_as_the_warehouse_shows_it(world):
    """'zone 9/north' is 'zone%209%2Fnorth' in the warehouse and `mmp models --json`: sent so, the
    server saw the decoded 'zone 9/north' (400, and a slash that split the route: 404). Encoded
    once more, as clients did to get through, it still answers."""
    key = world.keys["segments"][-1]
    assert key == "zone%209%2Fnorth"
    rows = world.training("segments", key).head(2)
    body = {"dataframe_records": rows.select(world.specs["segments"].features).to_dicts()}
    with serving(world) as (base, _app):
        for sent in (key, key.replace("%", "%25")):
            answer = httpx.post(predict_url(base, "segments", sent), json=body, headers=AUTH)
            assert answer.status_code == 200 and answer.json()["key"] == key, answer.text
            assert len(answer.json()["predictions"]) == 2
        unknown = httpx.post(predict_url(base, "segments", "zone%209%2Fsouth"), json=body, headers=AUTH)
        assert unknown.status_code == 404, unknown.text


def test_every_route_but_health_requires_a_valid_key(world):
    with serving(world) as (base, app), httpx.Client() as client:
        routes = {(m, r.path) for r in app.routes for m in getattr(r, "methods", ()) if m in ("GET", "POST")}
        assert {("POST", "/score"), ("GET", "/metrics"), ("GET", "/openapi.json")} <= routes
        for method, path in sorted(routes):
            url = base + path.replace("{use_case}", "segments").replace("{key}", world.keys["segments"][0])
            for headers in (
                {},
                {"X-API-Key": "wrong"},
                {"Authorization": f"Basic {TOKEN}"},
                {"Authorization": "Bearer"},
            ):
                reply = client.request(method, url, headers=headers, json={})
                if path in ("/healthz", "/readyz"):
                    assert reply.status_code == 200, path
                else:
                    assert reply.status_code == 401 and reply.headers["WWW-Authenticate"] == "Bearer", (path, headers)
            for headers in (AUTH, {"Authorization": "Bearer second-key-4b2d"}):
                assert client.request(method, url, headers=headers, json={}).status_code != 401
    from many_models_platform.serving.app import create_app
    from many_models_platform.serving.settings import ServeSettings

    with pytest.raises(ValueError, match="no API key configured"):
        create_app(ServeSettings(platform=world.settings), world.specs)


def test_api_keys_come_from_the_environment_or_a_mounted_file(tmp_path, monkeypatch):
    from many_models_platform.serving.settings import read_api_keys

    secret = tmp_path / "keys"
    secret.write_text("from-file-1\n\nfrom-file-2\n")
    monkeypatch.setenv("MMP_SERVE_API_KEYS", "env-1, env-2")
    monkeypatch.setenv("MMP_SERVE_API_KEYS_FILE", str(secret))
    assert read_api_keys() == ("env-1", "env-2", "from-file-1", "from-file-2")


def test_bad_requests_get_clear_4xx_without_echo_or_traceback(world):
    marker = "SECRET-MARKER-91e"
    key = world.keys["segments"][0]
    features = world.production("segments")[key].tags["features"].split(",")
    good = payloads(world.training("segments", key).head(1), features)
    url = predict_url
    cases = [
        # (use case, key, content, content type, status, message fragment)
        ("segments", key, b'{"dataframe_split": ' + marker.encode(), "application/json", 400, "not valid JSON"),
        ("segments", key, json.dumps(good["dataframe_records"]).encode(), "text/plain", 415, "application/json"),
        ("segments", key, json.dumps({"rows": [marker]}).encode(), "application/json", 422, "exactly one of"),
        (
            "segments",
            key,
            json.dumps({"dataframe_records": [dict.fromkeys(features, marker)]}).encode(),
            "application/json",
            422,
            "must hold numbers",
        ),
        (
            "segments",
            key,
            json.dumps({"instances": [[1.0, 2.0]]}).encode(),
            "application/json",
            422,
            f"hold {len(features)} values",
        ),
        (
            "segments",
            key,
            json.dumps({"dataframe_records": [{"x1": 1.0}]}).encode(),
            "application/json",
            422,
            "lack the model's feature",
        ),
        (
            "segments",
            key,
            json.dumps({"instances": [[1.0] * len(features)] * 6}).encode(),
            "application/json",
            422,
            "at most 5 per request",
        ),
        (
            "segments",
            key,
            json.dumps({"dataframe_records": [{f"c{i}": 1 for i in range(9)}]}).encode(),
            "application/json",
            422,
            "at most 8",
        ),
        ("segments", "..seg", b"{}", "application/json", 400, "not an encoded key"),
        ("demand", "1001", b"{}", "application/json", 400, "not an encoded key"),
        ("segments", "seg-001.seg-002", b"{}", "application/json", 400, "not an encoded key"),
        ("segments", "seg-404", json.dumps(good["instances"]).encode(), "application/json", 404, "no production model"),
        ("nowhere", key, b"{}", "application/json", 404, "unknown use case"),
        ("segments", key, b"[" * 100 + b"]" * 100, "application/json", 422, "JSON object"),
        ("segments", key, b"x" * 3000, "application/json", 413, "limit of 2048 bytes"),
    ]
    with (
        serving(world, max_rows=5, max_columns=8, max_body_bytes=2048, negative_ttl_s=60) as (base, _),
        httpx.Client(headers=AUTH) as client,
    ):
        for use_case, k, content, ctype, status, fragment in cases:
            reply = client.post(url(base, use_case, k), content=content, headers={"Content-Type": ctype})
            assert reply.status_code == status, (use_case, k, content[:60], reply.text)
            assert fragment in reply.json()["error"], reply.text
            assert marker not in reply.text and "Traceback" not in reply.text and 'File "' not in reply.text
        # the unknown key was answered from the negative cache the second time, without a load
        client.post(url(base, "segments", "seg-404"), json=good["instances"])
        assert metric(base, "mmp_serve_negative_cache_hits_total") >= 1
        assert metric(base, "mmp_serve_model_loads_total", outcome="not_found") == 1
        # a chunked body (no Content-Length) is cut at the limit too
        chunks = (b"[" + b"1," * 1500 + b"1]" for _ in range(1))
        reply = client.post(url(base, "segments", key), content=chunks, headers={"Content-Type": "application/json"})
        assert reply.status_code == 413


def test_the_fast_path_equals_the_pipelines_predict_row_by_row_and_in_batches():
    """The service's shortcut through a float-matrix pipeline (LightGBM's single-row C path,
    a linear model's coefficients) gives bit-for-bit the pipeline's predict, missing values
    included; the world above has no LightGBM model, so one is fitted here (under a second)."""
    from many_models_platform.core.modeling import build_pipeline
    from many_models_platform.serving.fastpath import compile_predictor

    rng = np.random.default_rng(7)
    x = rng.normal(size=(300, 4))
    x[rng.random(x.shape) < 0.1] = np.nan
    y = np.nan_to_num(x) @ [1.0, -2.0, 0.5, 3.0] + rng.normal(size=300)
    lgbm = {"name": "lgbm", "estimator": "lightgbm.LGBMRegressor", "params": {"n_estimators": 30, "verbose": -1}}
    linear = {"name": "ridge", "estimator": "sklearn.linear_model.Ridge"}
    body = {**USE_CASES["segments"], "features": ["a", "b", "c", "d"], "candidates": [lgbm, linear]}
    spec = parse_config({"use_cases": {"fast": body}}).use_case("fast")
    rows = np.asfortranarray(rng.normal(size=(40, 4)))
    rows[rng.random(rows.shape) < 0.2] = np.nan
    for name in ("lgbm", "ridge"):
        model = build_pipeline(spec, name).fit(x, y)
        fast = compile_predictor(model, 4)
        assert fast is not None, name
        assert np.array_equal(fast(rows), model.predict(rows)), name
        for i in range(len(rows)):
            one = np.asfortranarray(rows[i : i + 1])
            assert np.array_equal(fast(one), model.predict(one)), (name, i)
    assert compile_predictor(model, 5) is None  # the wrong width: no shortcut


def test_the_service_imports_neither_dagster_nor_mlflow():
    """Module-level imports of the serving package and of every platform module they reach
    (read from the source, not by importing: the test process has both loaded already)."""
    import ast
    import importlib.util

    seen, todo, outside = set(), ["many_models_platform.serving.app"], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        spec = importlib.util.find_spec(name)
        tree = ast.parse(Path(spec.origin).read_text())
        package = name if spec.submodule_search_locations else name.rpartition(".")[0]
        for node in tree.body:  # module level only: imports inside functions run on demand
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(
                        package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                    )
                found = [base]
            else:
                continue
            for module in found:
                if module.startswith("many_models_platform"):
                    todo.append(module)
                else:
                    outside.add(module.split(".")[0])
    assert "many_models_platform.core.modeling" in seen and "many_models_platform.core.features" in seen
    assert not {"dagster", "mlflow"} & outside, sorted(outside)


# --- schemathesis ---------------------------------------------------------------------------
def test_schemathesis_finds_no_server_error_in_the_openapi_document(world):
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    key = world.keys["segments"][0]
    with serving(world) as (base, _), httpx.Client(headers=AUTH) as client:
        schema = schemathesis.openapi.from_dict(client.get(f"{base}/openapi.json").json())
        checked = 0
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                variants = [{"use_case": "segments", "key": key}, None] if "{key}" in operation.path else [None]
                for fixed in variants:
                    strategy = operation.as_strategy(mode, path_parameters=fixed)

                    @settings(
                        max_examples=6,
                        deadline=None,
                        database=None,
                        derandomize=True,
                        phases=[Phase.generate],
                        suppress_health_check=list(HealthCheck),
                    )
                    @given(case=strategy)
                    def no_server_error(case):
                        nonlocal checked
                        response = case.call(base_url=base, headers=AUTH)
                        checked += 1
                        assert response.status_code < 500, (case.method, case.path, response.status_code, response.text)

                    try:
                        no_server_error()
                    except Unsatisfiable:  # nothing to make negative (no parameters, no body)
                        assert mode == GenerationMode.NEGATIVE
        assert checked > 60


def test_a_category_sent_as_2_0_scores_as_the_category_2_that_ingest_wrote():
    """Ingest writes a category code 2, 2.0 or '2.0' as '2'; a request's 2.0 (JSON has one number
    type) or '2.0' must reach the model as that same category, not as an unseen one."""
    from many_models_platform.serving.inputs import feature_frame

    frame = feature_frame({"kind": [2.0, "2.0", 2, "x", None, 2.5, "-3.00"]}, ["kind"], ["kind"])
    assert frame["kind"].to_list() == ["2", "2", "2", "x", None, "2.5", "-3"]
