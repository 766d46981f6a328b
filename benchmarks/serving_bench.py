"""Real-time scoring: `mmp serve` against `mlflow models serve` on the same model, in one run.

Not a test: run it by hand (docs/benchmarks.md, "Scoring service"). It builds a small world
(the real pipeline, no Dagster, on a regression use case with a LightGBM candidate), then:

1. warm latency (p50/p99) and requests/s at 1 and 8 clients for both servers, on the same
   production model and the same 1-row ``dataframe_split`` body (keep-alive connections, a
   raw-socket client in its own process so the client costs little and the same for both);
2. cold loads: the first request of keys never requested before, p50/p99;
3. RSS of the service under a Zipf rotation over ``--rotation-keys`` keys with a byte budget
   (the extra keys are production versions registered against one real artifact folder).

Prints one JSON object. Example: ``uv run python benchmarks/serving_bench.py --seconds 5``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

TOKEN = "bench-token"
USE_CASE = "bench"
CONFIG = {
    "use_cases": {
        USE_CASE: {
            "task": "regression",
            "source": {"path": f"landing/{USE_CASE}/*.csv"},
            "keys": ["segment_id"],
            "target": "y",
            "features": ["x1", "x2", "x3", "x4", "x5"],
            "holdout": {"fraction": 0.2},
            "metric": "rmse",
            "min_rows": 30,
            "candidates": [
                {
                    "name": "lightgbm",
                    "estimator": "lightgbm.LGBMRegressor",
                    "params": {
                        "n_estimators": 50,
                        "num_leaves": 15,
                        "min_child_samples": 5,
                        "n_jobs": 1,
                        "verbose": -1,
                    },
                }
            ],
        }
    }
}


# --- the load generator: raw HTTP/1.1 keep-alive, one sequential stream per client ---------
async def _client(
    host: str, port: int, requests: list[bytes], warm_until: float, until: float, latencies: list[float], delay: float
) -> None:
    """One keep-alive connection, opened after ``delay``: requests until ``warm_until`` not
    counted (the connection's worker process loads the model and warms up), then counted until
    ``until``."""
    await asyncio.sleep(delay)
    reader, writer = await asyncio.open_connection(host, port)
    i = 0
    try:
        while (started := time.perf_counter()) < until:
            writer.write(requests[i % len(requests)])
            i += 1
            head = await reader.readuntil(b"\r\n\r\n")
            found = re.search(rb"(?i)content-length:\s*(\d+)", head)
            if found:
                await reader.readexactly(int(found.group(1)))
            else:  # chunked
                while True:
                    size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                    await reader.readexactly(size + 2)
                    if size == 0:
                        break
            status = head[9:12]
            if status not in (b"200", b"503"):  # 503: the load bound, counted as a client would retry
                raise RuntimeError(head.split(b"\r\n", 1)[0].decode())
            if started >= warm_until:
                latencies.append(time.perf_counter() - started if status == b"200" else -1.0)
    finally:
        writer.close()


def _load(args: tuple) -> list[float]:
    host, port, requests, clients, seconds, warmup = args
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def main() -> list[float]:
        latencies: list[float] = []
        warm_until = time.perf_counter() + warmup
        until = warm_until + seconds
        # connections opened 20 ms apart: both servers' uvicorn workers share one listening
        # socket, and connections opened at the same instant mostly all land in the worker that
        # wakes first (measured: 8 of 8 in most tries), leaving the other worker idle
        clients_ = (_client(host, port, requests, warm_until, until, latencies, i * 0.02) for i in range(clients))
        await asyncio.gather(*clients_)
        return latencies

    return asyncio.run(main())


def connections_per_process(port: int) -> list[int]:
    """How the established connections to ``port`` are spread over the server's processes
    (uvicorn's workers share one listening socket: whichever accepts first takes a connection,
    so 8 connections opened at once may all land on one worker)."""
    try:
        out = subprocess.run(
            ["ss", "-tnpH", "state", "established", f"( sport = :{port} )"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted(Counter(re.findall(r"pid=(\d+)", out)).values(), reverse=True)


def run_load(port: int, requests: list[bytes], clients: int, seconds: float, warmup: float = 1.0) -> dict:
    """Warm load from a separate process: latency quantiles (ms) and requests/s."""
    with mp.get_context("spawn").Pool(1) as pool:
        pending = pool.apply_async(_load, ((("127.0.0.1", port, requests, clients, seconds, warmup)),))
        time.sleep(warmup + seconds / 2)
        spread = connections_per_process(port)
        latencies = pending.get()
    ms = np.array([x for x in latencies if x >= 0]) * 1000
    return {
        "clients": clients,
        "connections_per_worker": spread,
        "requests": len(ms),
        "busy_503": len(latencies) - len(ms),
        "rps": round(len(ms) / seconds, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p90_ms": round(float(np.percentile(ms, 90)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "max_ms": round(float(ms.max()), 3),
    }


def http_request(path: str, body: bytes, auth: bool) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    )
    if auth:
        head += f"X-API-Key: {TOKEN}\r\n"
    return head.encode() + b"\r\n" + body


# --- servers ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(port: int, path: str, timeout: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server on {port} did not start")


def start_mmp(env: dict, workers: int, cache_bytes: int | None = None) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {**env, "MMP_SERVE_API_KEYS": TOKEN}
    if cache_bytes:
        env["MMP_SERVE_CACHE_BYTES"] = str(cache_bytes)
    cmd = [sys.executable, "-m", "many_models_platform.cli", "serve", "--port", str(port), "--workers", str(workers)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_http(port, "/readyz")  # ready: the estimator packages are imported, warm-up done
    return proc, port


def start_mlflow(env: dict, model_path: str, workers: int | None) -> tuple[subprocess.Popen, int]:
    """``mlflow models serve`` (uvicorn, as many workers as ``--workers``; None: its default)."""
    port = free_port()
    env = {k: v for k, v in env.items() if k != "MLFLOW_MODELS_WORKERS"}
    if workers is not None:
        env["MLFLOW_MODELS_WORKERS"] = str(workers)
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        model_path,
        "--env-manager",
        "local",
        "-p",
        str(port),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_http(port, "/ping")
    return proc, port


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def rss_bytes(pid: int) -> int:
    """Resident memory of a process and its children (uvicorn's workers)."""
    total = 0
    pids = [pid]
    while pids:
        p = pids.pop()
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            for task in Path(f"/proc/{p}/task").iterdir():
                children = (task / "children").read_text().split()
                pids += [int(c) for c in children]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def scrape(port: int, *names: str) -> list[float]:
    """Metrics from one scrape, so from one worker (each keeps its own)."""
    import httpx

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", headers={"X-API-Key": TOKEN}).text
    found = [re.search(rf"^{name} (\S+)$", text, re.M) for name in names]
    return [float(f.group(1)) if f else 0.0 for f in found]


def balanced_load(port: int, requests: list[bytes], clients: int, seconds: float, workers: int) -> dict:
    """``run_load``, run again (at most twice more) while the connections are spread over the
    workers worse than one off an even split: which worker accepts a connection is up to the
    kernel and the workers' timing, the same for both servers."""
    attempts = 0
    while True:
        attempts += 1
        result = run_load(port, requests, clients, seconds)
        spread = result["connections_per_worker"]
        even = clients // workers
        if workers == 1 or clients < workers or (len(spread) == workers and max(spread) - even <= 1):
            break
        if attempts == 3:
            break
    return {**result, "attempts": attempts}


# --- the world -------------------------------------------------------------------------------
def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def build_world(home: Path, keys: int, rotation_keys: int) -> tuple[dict, list[str], list[str], dict]:
    """Run the pipeline for ``keys`` real keys; register ``rotation_keys`` more production names."""
    from many_models_platform.core.generators import generate_group_regression, write_landing
    from many_models_platform.core.spec import load_config
    from many_models_platform.stages import STAGES, StageRun, run_stage
    from many_models_platform.stages.raw import discover_keys
    from many_models_platform.storage.lake import Lake
    from many_models_platform.storage.registry import production_registry
    from many_models_platform.storage.settings import PlatformSettings

    config = home / "use_cases.yaml"
    config.write_text(json.dumps(CONFIG))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMP_")}
    env |= {"MMP_HOME": str(home), "MMP_CONFIG": str(config), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    os.environ.update(env)
    settings = PlatformSettings.from_env(home)
    settings.ensure_local_dirs()
    write_landing(generate_group_regression(keys=keys, rows=80, seed=3), home / "lake" / "landing" / USE_CASE, USE_CASE)
    spec = load_config(config).use_case(USE_CASE)
    found = discover_keys(spec, Lake(settings.lake_url))
    run = StageRun(spec, settings, run_id="serving-bench", workers=1)
    for stage in STAGES[:-1]:
        run_stage(stage, run, found)
    prod = production_registry(settings).aliased_versions(USE_CASE)
    real = sorted(prod)
    model = prod[real[0]]
    extra = [f"z{i:05d}" for i in range(rotation_keys)]
    say(f"pipeline done for {len(real)} keys; registering {len(extra)} rotation names")
    if extra:
        shared = f"{settings.production_artifact_root}/{USE_CASE}/rotation-shared"
        shutil.copytree(model.source, shared)
        writer = production_registry(settings, write=True)
        items = [(k, shared, {**model.tags, "key": k}) for k in extra]
        writer.register_many(USE_CASE, items, None, after=lambda k, v: writer.set_alias(USE_CASE, k, v))
    return env, real, extra, {"source": model.source, "features": model.tags["features"].split(","), "key": real[0]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=200, help="keys trained by the pipeline (cold loads use them)")
    ap.add_argument("--rotation-keys", type=int, default=10_000, help="production names in the Zipf rotation")
    ap.add_argument("--seconds", type=float, default=5.0, help="measured seconds per warm-load point")
    ap.add_argument("--workers", type=int, default=2, help="worker processes of both servers")
    ap.add_argument("--budget-mb", type=int, default=4, help="cache budget per worker in the rotation")
    ap.add_argument("--rotation-requests", type=int, default=20_000)
    ap.add_argument("--zipf", type=float, default=1.1)
    ap.add_argument(
        "--mlflow-default-workers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure mlflow models serve at its default worker count (1)",
    )
    args = ap.parse_args(argv)

    home = Path(tempfile.mkdtemp(prefix="mmp-serving-bench-"))
    out: dict = {"cpus": len(os.sched_getaffinity(0)), "loadavg_at_start": os.getloadavg()[0], "workers": args.workers}
    try:
        started = time.perf_counter()
        env, real, extra, model = build_world(home, args.keys, args.rotation_keys)
        out["setup_s"] = round(time.perf_counter() - started, 1)
        row = {"columns": model["features"], "data": [[0.3, -1.2, 0.7, 1.5, 2.0][: len(model["features"])]]}
        body = json.dumps({"dataframe_split": row}).encode()
        ours = [http_request(f"/v1/use-cases/{USE_CASE}/keys/{model['key']}/predict", body, auth=True)]
        theirs = [http_request("/invocations", body, auth=False)]

        say("world ready; warm load")
        # 1. warm latency and throughput, the same model and body
        proc, port = start_mmp(env, args.workers)
        try:
            out["mmp_serve"] = [balanced_load(port, ours, c, args.seconds, args.workers) for c in (1, 8)]
        finally:
            stop(proc)
        proc, port = start_mlflow(env, model["source"], args.workers)
        try:
            out["mlflow_serve"] = [balanced_load(port, theirs, c, args.seconds, args.workers) for c in (1, 8)]
        finally:
            stop(proc)
        out["throughput_ratio_8_clients"] = round(out["mmp_serve"][1]["rps"] / out["mlflow_serve"][1]["rps"], 2)
        out["p99_ratio_1_client"] = round(out["mlflow_serve"][0]["p99_ms"] / out["mmp_serve"][0]["p99_ms"], 2)
        if args.mlflow_default_workers:  # `mlflow models serve` without --workers: one uvicorn worker
            proc, port = start_mlflow(env, model["source"], None)
            try:
                out["mlflow_serve_default_workers"] = [run_load(port, theirs, c, args.seconds) for c in (1, 8)]
            finally:
                stop(proc)

        say(f"warm load done: {out['mmp_serve']} vs {out['mlflow_serve']}; cold loads")
        # 2. cold loads: one worker, each key's first request
        import httpx

        proc, port = start_mmp(env, 1)
        try:
            cold = []
            headers = {"X-API-Key": TOKEN, "Content-Type": "application/json"}
            with httpx.Client(headers=headers, timeout=120) as client:
                for key in real:
                    t0 = time.perf_counter()
                    reply = client.post(
                        f"http://127.0.0.1:{port}/v1/use-cases/{USE_CASE}/keys/{key}/predict", content=body
                    )
                    cold.append((time.perf_counter() - t0) * 1000)
                    reply.raise_for_status()
            out["cold_load"] = {
                "keys": len(cold),
                "p50_ms": round(float(np.percentile(cold, 50)), 2),
                "p99_ms": round(float(np.percentile(cold, 99)), 2),
            }
        finally:
            stop(proc)

        say(f"cold loads: {out['cold_load']}; rotation")
        # 3. RSS under a Zipf rotation over all production names, with a byte budget
        names = real + extra
        budget = args.budget_mb * 1024 * 1024
        proc, port = start_mmp(env, args.workers, cache_bytes=budget)
        try:
            baseline = rss_bytes(proc.pid)
            rng = np.random.default_rng(0)
            ranks = rng.zipf(args.zipf, size=args.rotation_requests)
            chosen = [names[(r - 1) % len(names)] for r in ranks]
            requests = [http_request(f"/v1/use-cases/{USE_CASE}/keys/{k}/predict", body, True) for k in chosen]
            load = run_load(port, requests, 8, seconds=args.seconds * 2, warmup=0.5)
            held_bytes, held_models = scrape(port, "mmp_serve_cache_bytes", "mmp_serve_cache_models")
            out["rotation"] = {
                "names": len(names),
                "distinct_requested": len(set(chosen)),
                "zipf_s": args.zipf,
                "budget_mb_per_worker": args.budget_mb,
                "rss_mb_before": round(baseline / 2**20, 1),
                "rss_mb_after": round(rss_bytes(proc.pid) / 2**20, 1),
                "cache_mb_one_worker": round(held_bytes / 2**20, 2),
                "models_one_worker": held_models,
                "rps": load["rps"],
                "p50_ms": load["p50_ms"],
                "p99_ms": load["p99_ms"],
            }
        finally:
            stop(proc)
        out["loadavg_at_end"] = os.getloadavg()[0]
    finally:
        shutil.rmtree(home, ignore_errors=True)
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
