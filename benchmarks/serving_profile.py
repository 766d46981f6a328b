"""Where a warm 1-row request spends its time: the service's ASGI app driven in process.

Not a test: a tool for the hot path (docs/benchmarks.md, "Scoring service"). It builds the
world of ``serving_bench.py`` (a few keys, no rotation names), loads one key, then calls the
app directly with the benchmark's request (no sockets, no HTTP parsing) and prints the mean
time per request, and with ``--profile`` the cProfile functions that cost most. With
``--http SECONDS`` it serves the app with uvicorn (one process, uvloop and httptools when
installed, as ``mmp serve``) and drives it with the benchmark's client for that long, so the
profile includes the HTTP server's own share.

    uv run python benchmarks/serving_profile.py --requests 20000 --profile
    uv run python benchmarks/serving_profile.py --http 5 --clients 8 --profile
    uv run python benchmarks/serving_profile.py --cold --keys 20 --profile

``--cold`` times the store's load of each key instead (registry query, hash, skops, fast-path
probes), in the calling thread, without HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from serving_bench import TOKEN, USE_CASE, build_world, free_port, http_request, run_load


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--profile", action="store_true", help="print the top cProfile entries")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--http", type=float, default=0, help="seconds of load through uvicorn instead of direct calls")
    ap.add_argument("--clients", type=int, default=8, help="concurrent connections with --http")
    ap.add_argument("--cold", action="store_true", help="time cold loads of every key instead")
    ap.add_argument("--keys", type=int, default=3, help="keys the pipeline trains")
    args = ap.parse_args(argv)

    home = Path(tempfile.mkdtemp(prefix="mmp-serving-profile-"))
    try:
        _, real, _, model = build_world(home, keys=args.keys, rotation_keys=0)
        from many_models_platform.serving.app import create_app
        from many_models_platform.serving.settings import ServeSettings

        app = create_app(ServeSettings.from_env(api_keys=(TOKEN,)))
        row = {"columns": model["features"], "data": [[0.3, -1.2, 0.7, 1.5, 2.0][: len(model["features"])]]}
        body = json.dumps({"dataframe_split": row}).encode()
        path = f"/v1/use-cases/{USE_CASE}/keys/{model['key']}/predict"
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"host", b"127.0.0.1"),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-api-key", TOKEN.encode()),
            ],
            "client": ("127.0.0.1", 5000),
            "server": ("127.0.0.1", 8080),
            "state": {},
        }
        message = {"type": "http.request", "body": body, "more_body": False}

        async def receive():
            return message

        statuses = []

        async def send(msg):
            if msg["type"] == "http.response.start":
                statuses.append(msg["status"])

        async def run(n: int) -> float:
            started = time.perf_counter()
            for _ in range(n):
                await app(dict(scope), receive, send)
            return time.perf_counter() - started

        if args.http:
            return serve_and_load(app, path, body, args)
        if args.cold:
            return cold_loads(app, real, args)
        asyncio.run(run(50))  # the first request loads the model
        assert set(statuses) == {200}, statuses
        profiler = cProfile.Profile() if args.profile else None
        if profiler:
            profiler.enable()
        elapsed = asyncio.run(run(args.requests))
        if profiler:
            profiler.disable()
        assert set(statuses) == {200}, set(statuses)
        print(json.dumps({"requests": args.requests, "us_per_request": round(elapsed / args.requests * 1e6, 1)}))
        if profiler:
            pstats.Stats(profiler).sort_stats("tottime").print_stats(args.top)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def cold_loads(app, keys: list[str], args) -> None:
    import numpy as np

    store = app.state.store
    store.preload()
    profiler = cProfile.Profile() if args.profile else None
    times = []
    for key in keys:
        if profiler:
            profiler.enable()
        started = time.perf_counter()
        store._load(USE_CASE, key, f"{USE_CASE}.{key}")
        times.append((time.perf_counter() - started) * 1000)
        if profiler:
            profiler.disable()
    print(json.dumps({"keys": len(keys), "p50_ms": round(float(np.median(times)), 2), "max_ms": round(max(times), 2)}))
    if profiler:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(args.top)


def serve_and_load(app, path: str, body: bytes, args) -> None:
    """uvicorn in a thread (profiled there), the benchmark's client in its own process."""
    import threading

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", access_log=False))
    profiler = cProfile.Profile() if args.profile else None

    def run() -> None:
        if profiler:
            profiler.enable()
        server.run()
        if profiler:
            profiler.disable()

    thread = threading.Thread(target=run)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        result = run_load(port, [http_request(path, body, auth=True)], args.clients, args.http)
    finally:
        server.should_exit = True
        thread.join(30)
    loop, http = server.config.get_loop_factory(), server.config.http_protocol_class
    print(json.dumps({**result, "loop": getattr(loop, "__module__", str(loop)), "http": http.__module__}))
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
