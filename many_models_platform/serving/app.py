"""The scoring service's HTTP API (FastAPI): predict, forecast, Azure's ``/score``, health,
readiness, Prometheus metrics and the OpenAPI document.

The hot path is kept short: a pure ASGI guard checks the credential (constant time) and the
declared body size in one pass over the headers, a cached key skips validation and the
registry, the body is parsed with orjson, the rows go through ``core.modeling.model_input``
(the batch stage's conversion) or the verified fast path (``fastpath.py``), and the answer is
sent as raw ASGI messages. Small bodies are predicted on the event loop (a 1-row predict is
tens of microseconds); large bodies and forecasts (polars feature building) run in a small
thread pool so they do not hold up other requests. Loads happen in threads
(``store.ModelStore``). Errors are JSON ``{"error": message}`` with a message that names the
field at fault, never a traceback or the request's values.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote

import numpy as np
import orjson
import polars as pl
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..core import features as F
from ..core.keys import is_encoded_key
from ..core.modeling import anomaly_score, clip_predictions, model_input, predict
from ..core.spec import UseCaseSpec, load_config
from ..core.statistical import StatisticalForecaster
from ..storage.redaction import redact
from .inputs import InputError, columns_of, feature_frame, float_matrix, records_frame
from .metrics import ServeMetrics
from .settings import ServeSettings
from .store import Busy, LoadFailed, ModelStore, NotFound, Served, split_model_name

log = logging.getLogger(__name__)

PREDICT = "/v1/use-cases/{use_case}/keys/{key}/predict"
FORECAST = "/v1/use-cases/{use_case}/keys/{key}/forecast"
HEALTH = frozenset({"/healthz", "/readyz"})
# bodies larger than this are parsed and predicted off the event loop (about 300 rows of ten
# numbers); below it the thread hop would cost more than the work
OFF_LOOP_BYTES = 32 * 1024
_ROUTES = frozenset({"/score", "/metrics", "/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect"})


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def route_label(path: str) -> str:
    """The route template of a path, for metric labels (bounded cardinality)."""
    if path.startswith("/v1/use-cases/"):
        if path.endswith("/predict"):
            return PREDICT
        if path.endswith("/forecast"):
            return FORECAST
    return path if path in _ROUTES else "other"


def is_json_type(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


async def read_limited(receive, limit: int) -> bytes:
    """The whole body from ASGI ``receive``, refused (413) as soon as it passes ``limit``."""
    size, chunks = 0, []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ApiError(400, "the client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


_JSON_HEADERS = [(b"content-type", b"application/json")]


async def send_json(send, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
    """One JSON response as raw ASGI messages (what Starlette's Response sends, without the object)."""
    raw = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    if headers:
        raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """Pure ASGI middleware: authentication (every route but health), the declared body size
    (413 before reading) and request latency by route and status. It also dispatches the two
    scoring routes to their handlers itself: FastAPI's per-request machinery (dependency
    solving, parameter extraction, Request and Response objects) costs about as much as a
    whole 1-row prediction, and these routes take nothing from it (the same handlers stay
    declared in FastAPI for the OpenAPI document and answer any request that does not take
    this path)."""

    def __init__(self, app, settings: ServeSettings, metrics: ServeMetrics, scoring: dict):
        self.app = app
        self.scoring = scoring  # "predict"/"forecast" -> async handler(use_case, key, read) -> dict
        self.secrets = settings.platform.secrets()
        self.keys = [k.encode() for k in settings.api_keys]
        self.anonymous = settings.allow_anonymous
        self.limit = settings.max_body_bytes
        self.metrics = metrics
        self._observers: dict[tuple[str, int], Any] = {}  # the histogram's children, looked up once

    def _authorized(self, token: bytes | None) -> bool:
        if self.anonymous:
            return True
        if not token:
            return False
        ok = False
        for key in self.keys:  # every key compared, in constant time each
            ok |= hmac.compare_digest(token, key)
        return ok

    def _observe(self, route: str, status: int, seconds: float) -> None:
        observer = self._observers.get((route, status))
        if observer is None:
            observer = self._observers[(route, status)] = self.metrics.requests.labels(route, str(status))
        observer.observe(seconds)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        started = time.perf_counter()
        status = 500
        route = None

        async def sending(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            content_type = ""
            if path not in HEALTH:
                token = length = None
                for name, value in scope["headers"]:  # one pass: credential, size, type
                    if name == b"authorization":
                        if value[:7].lower() == b"bearer ":
                            token = value[7:].strip()
                    elif name == b"x-api-key":
                        token = value.strip()
                    elif name == b"content-length":
                        length = value
                    elif name == b"content-type":
                        content_type = value.decode("latin-1")
                if not self._authorized(token):
                    message = "authentication required: send 'Authorization: Bearer <token>' or 'X-API-Key'"
                    status = 401
                    return await send_json(send, 401, orjson.dumps({"error": message}), {"WWW-Authenticate": "Bearer"})
                if length is not None:
                    if not length.isdigit():
                        status = 400
                        return await send_json(send, 400, orjson.dumps({"error": "invalid Content-Length"}))
                    if int(length) > self.limit:
                        status = 413
                        message = f"the body exceeds the limit of {self.limit} bytes"
                        return await send_json(send, 413, orjson.dumps({"error": message}))
            if scope["method"] == "POST" and path.startswith("/v1/use-cases/"):
                # the path as sent: an encoded key ('Los%20Angeles', 'New%20York%2FNJ') is the key, where
                # the decoded path would hold 'Los Angeles' and split 'New York/NJ' in two
                sent = scope.get("raw_path")
                parts = (sent.decode("latin-1") if sent else path).split("/")  # "", v1, use-cases, uc, keys, key, route
                if len(parts) == 7 and parts[4] == "keys" and parts[6] in self.scoring:
                    route = PREDICT if parts[6] == "predict" else FORECAST
                    status = await self._score(receive, send, parts, content_type)
                    return
            await self.app(scope, receive, sending)
        finally:
            self._observe(route or route_label(path), status, time.perf_counter() - started)

    async def _score(self, receive, send, parts: list[str], content_type: str) -> int:
        async def read() -> bytes:
            if not is_json_type(content_type):
                raise ApiError(415, "send the body as application/json")
            return await read_limited(receive, self.limit)

        headers = None
        try:
            status, body = 200, orjson.dumps(await self.scoring[parts[6]](parts[3], parts[5], read))
        except ApiError as exc:
            status, body, headers = exc.status, orjson.dumps({"error": exc.message}), exc.headers
        except Exception as exc:
            log.error("internal error: %s: %s", type(exc).__name__, redact(exc, self.secrets))
            status, body = 500, orjson.dumps({"error": "internal error"})
        await send_json(send, status, body, headers)
        return status


# --- OpenAPI: the request bodies (parsed by hand for speed, documented here) ----------------
_VALUE = {"anyOf": [{"type": "number"}, {"type": "string"}, {"type": "null"}]}
_ROW = {"type": "array", "items": _VALUE}
_RECORD = {"type": "object", "additionalProperties": _VALUE}
_ROWS_OR_COLUMNS = {
    "anyOf": [
        {"type": "array", "items": {"anyOf": [_ROW, _RECORD, _VALUE]}},
        {"type": "object", "additionalProperties": {"type": "array", "items": _VALUE}},
    ]
}
PYFUNC_INPUT = {
    "type": "object",
    "description": "Exactly one of MLflow's pyfunc input formats. Unnamed rows are in the model's feature order.",
    "properties": {
        "dataframe_split": {
            "type": "object",
            "properties": {
                "columns": {"type": "array", "items": {"type": "string"}},
                "data": {"type": "array", "items": _ROW},
            },
            "required": ["data"],
        },
        "dataframe_records": {"type": "array", "items": _RECORD},
        "instances": _ROWS_OR_COLUMNS,
        "inputs": _ROWS_OR_COLUMNS,
    },
    "minProperties": 1,
    "maxProperties": 1,
}
FORECAST_INPUT = {
    "type": "object",
    "properties": {
        "horizon": {"type": "integer", "minimum": 1, "description": "Periods ahead (at most the use case's horizon)"},
        "future": {
            "description": "Future exogenous values: records with the time column (or one pyfunc format); "
            "missing values carry the last observed one forward",
            "anyOf": [{"type": "array", "items": _RECORD}, PYFUNC_INPUT],
        },
    },
}
SCORE_INPUT = {
    "type": "object",
    "properties": {
        "model_name": {"type": "string", "description": "<use case>.<encoded key>"},
        "data": {"description": "rows: a pyfunc input object, a list of records or a list of rows"},
    },
    "required": ["model_name", "data"],
}
_ERRORS = {
    str(code): {"description": text, "content": {"application/json": {"schema": {"type": "object"}}}}
    for code, text in (
        (400, "malformed JSON or key"),
        (401, "no valid API key or bearer token"),
        (404, "unknown use case, or no production model for the key"),
        (413, "body over the size limit"),
        (415, "the body is not application/json"),
        (422, "the body does not hold rows the model takes"),
        (503, "too many models loading; retry after Retry-After seconds"),
    )
}


def _body(schema: dict) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


# --- the application -------------------------------------------------------------------------
def create_app(settings: ServeSettings, specs: dict[str, UseCaseSpec] | None = None) -> FastAPI:
    """The service for these settings (``specs``: the use cases, default from the config file)."""
    if not settings.api_keys and not settings.allow_anonymous:
        raise ValueError(
            "no API key configured: set MMP_SERVE_API_KEYS or MMP_SERVE_API_KEYS_FILE "
            "(or MMP_SERVE_ALLOW_ANONYMOUS=1 on a trusted network)"
        )
    specs = specs if specs is not None else load_config(settings.platform.config_path).use_cases
    metrics = ServeMetrics()
    store = ModelStore(settings, specs, metrics)
    state = {"ready": False}
    secrets = settings.platform.secrets()
    # large bodies and forecasts: CPU work kept off the event loop (numpy, polars and
    # LightGBM release the GIL for most of it), two at a time per worker process
    compute = ThreadPoolExecutor(2, thread_name_prefix="mmp-serve-compute")

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        async def warm():
            try:
                await asyncio.get_running_loop().run_in_executor(None, store.preload)
                await store.warm_up()
                # what start-up loaded (packages, warm models) is never garbage: keep it out of
                # the collector's full passes, which otherwise pause a request now and then
                gc.collect()
                gc.freeze()
            finally:
                state["ready"] = True

        tasks = [asyncio.create_task(warm()), asyncio.create_task(store.refresh_forever())]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            with contextlib.suppress(Exception):
                store.save_most_requested()
            store.close()
            compute.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="many-models scoring service",
        version="1",
        description="Real-time predictions from each key's production model (docs/serving.md).",
        lifespan=lifespan,
        redoc_url=None,
        # FastAPI's OpenTelemetry hooks look up the global providers on every request; the
        # service reports through its own Prometheus metrics
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.store = store
    app.state.metrics = metrics
    app.state.serve_state = state

    @app.exception_handler(ApiError)
    async def api_error(_request, exc: ApiError):
        return _json({"error": exc.message}, exc.status, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, exc: RequestValidationError):
        fields = sorted({".".join(str(p) for p in e.get("loc", ())) for e in exc.errors()})
        return _json({"error": f"invalid request: check {', '.join(fields)}"}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, exc: StarletteHTTPException):
        return _json({"error": str(exc.detail)}, exc.status_code, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def crashed(_request, exc: Exception):
        log.error("internal error: %s: %s", type(exc).__name__, redact(exc, secrets))
        return _json({"error": "internal error"}, 500)

    async def served(use_case: str, key: str) -> tuple[UseCaseSpec, Served]:
        model = store.cached(use_case, key)  # validated when it was loaded
        if model is not None:
            return store.specs[use_case], model
        try:
            spec = store.check_key(use_case, key)
            return spec, await store.get(use_case, key)
        except NotFound as exc:
            once = unquote(key)
            if once != key and is_encoded_key(once):  # a client that encoded the encoded key once more
                return await served(use_case, once)
            raise ApiError(404, f"{use_case}: {exc}") from None
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        except Busy as exc:
            raise ApiError(503, str(exc), {"Retry-After": str(settings.retry_after_s)}) from None
        except LoadFailed as exc:
            raise ApiError(503, str(exc), {"Retry-After": str(max(1, int(settings.negative_ttl_s)))}) from None

    def request_reader(request: Request):
        """The FastAPI routes' way to the body: the same checks as the guard's."""

        async def read() -> bytes:
            if not is_json_type(request.headers.get("content-type", "")):
                raise ApiError(415, "send the body as application/json")
            return await read_limited(request.receive, settings.max_body_bytes)

        return read

    def loads(body: bytes) -> Any:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ApiError(400, "the body is not valid JSON") from None

    async def off_loop(function, *args):
        return await asyncio.get_running_loop().run_in_executor(compute, function, *args)

    def predict_rows(spec: UseCaseSpec, model: Served, payload: Any) -> dict[str, Any]:
        try:
            if isinstance(model.model, StatisticalForecaster):
                raise InputError("this key's model forecasts from its own series: use the forecast route")
            columns = columns_of(payload, model.features, settings.max_rows, settings.max_columns)
            if model.fast is not None:  # a float-matrix model: core.features.to_matrix's float64 rows
                x = float_matrix(columns, model.features)
            else:
                categorical = [c for c in model.features if c in set(spec.categorical_features)]
                x = model_input(model.model, feature_frame(columns, model.features, categorical), model.features)
        except (InputError, F.KeyDataError) as exc:
            raise ApiError(422, str(exc)) from None
        raw = np.asarray(model.fast(x) if model.fast is not None else model.model.predict(x))
        out: dict[str, Any] = {
            "use_case": model.use_case,
            "key": model.key,
            "model_version": model.version,
            "predictions": raw.tolist(),
        }
        if spec.task == "anomaly":  # as the batch stage reports them: 1 = anomaly, higher score = more anomalous
            out["anomaly"] = (raw == -1).astype(int).tolist()
            out["scores"] = anomaly_score(model.model, x).tolist()
        return out

    @app.get("/healthz", tags=["health"])
    async def healthz():
        return _json({"status": "ok"})

    @app.get("/readyz", tags=["health"], responses={"503": {"description": "warming up or registry unreachable"}})
    async def readyz():
        if not state["ready"]:
            return _json({"status": "warming up"}, 503)
        try:
            await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, store.reader.ping), 2.0)
        except Exception:
            return _json({"status": "production registry unreachable"}, 503)
        return _json({"status": "ready", "models": len(store), "bytes": store.nbytes})

    @app.get("/metrics", tags=["health"], response_class=Response)
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def predict_handler(use_case: str, key: str, read) -> dict[str, Any]:
        spec, model = await served(use_case, key)
        body = await read()
        if len(body) <= OFF_LOOP_BYTES:
            return predict_rows(spec, model, loads(body))
        return await off_loop(lambda: predict_rows(spec, model, loads(body)))

    async def forecast_handler(use_case: str, key: str, read) -> dict[str, Any]:
        spec, model = await served(use_case, key)
        body = await read()
        return await off_loop(lambda: forecast(spec, model, loads(body)))

    @app.post(PREDICT, tags=["scoring"], openapi_extra=_body(PYFUNC_INPUT), responses=_ERRORS)
    async def predict_key(use_case: str, key: str, request: Request):
        """Predict rows with the key's production model (MLflow pyfunc input formats)."""
        return _json(await predict_handler(use_case, key, request_reader(request)))

    @app.post(FORECAST, tags=["scoring"], openapi_extra=_body(FORECAST_INPUT), responses=_ERRORS)
    async def forecast_key(use_case: str, key: str, request: Request):
        """The next periods of a forecast key, from its observed history and optional future exogenous values."""
        return _json(await forecast_handler(use_case, key, request_reader(request)))

    def forecast(spec: UseCaseSpec, model: Served, body: Any) -> dict[str, Any]:
        if spec.task != "forecast":
            raise ApiError(422, f"use case {spec.name!r} is a {spec.task} use case: use the predict route")
        if not isinstance(body, dict):
            raise ApiError(422, "the body must be a JSON object (fields 'horizon', 'future')")
        horizon = body.get("horizon", spec.horizon)
        if not isinstance(horizon, int) or isinstance(horizon, bool) or not 1 <= horizon <= spec.horizon:
            raise ApiError(422, f"'horizon' must be an integer from 1 to {spec.horizon}")
        if model.history is None:
            raise ApiError(404, "no observed history of this key in the lake to forecast from")
        t = spec.time_column
        history = model.history
        exog = None
        try:
            future = body.get("future")
            if future is not None:
                payload = future if isinstance(future, dict) else {"dataframe_records": future}
                columns = columns_of(payload, [t, *spec.all_features], settings.max_rows, settings.max_columns)
                if t not in columns:
                    raise InputError(f"the future rows need the time column {t!r}")
                exog = records_frame(columns, history.schema, [t, *spec.all_features])
            origin = history.filter(pl.col(spec.target).is_not_null())[t].min()
            rows = F.future_frame(
                spec.model_copy(update={"horizon": horizon}),
                history,
                exog,
                origin=origin,
                calendar=F.calendar_of(model.features),
            )
            x = model_input(model.model, rows, model.features)
        except (InputError, F.KeyDataError) as exc:
            raise ApiError(422, str(exc)) from None
        values = clip_predictions(spec, predict(spec.task, model.model, x).astype(float))
        return {
            "use_case": model.use_case,
            "key": model.key,
            "model_version": model.version,
            "horizon": [
                {"period": F.time_text(p), "prediction": float(v)}
                for p, v in zip(rows[t].to_list(), values, strict=True)
            ],
        }

    async def score(model_name: Any, data: Any, large: bool = False) -> Response:
        if not isinstance(model_name, str):
            raise ApiError(422, "'model_name' must be '<use case>.<key>'")
        try:
            use_case, key = split_model_name(model_name)
        except ValueError as exc:
            raise ApiError(422, str(exc)) from None
        spec, model = await served(use_case, key)
        payload = data if isinstance(data, dict) else {"instances": data}
        if large:
            return _json(await off_loop(predict_rows, spec, model, payload))
        return _json(predict_rows(spec, model, payload))

    @app.post("/score", tags=["scoring"], openapi_extra=_body(SCORE_INPUT), responses=_ERRORS)
    async def score_post(request: Request):
        """Azure's many-models sample route: ``model_name`` and ``data``."""
        raw = await request_reader(request)()
        body = loads(raw)
        if not isinstance(body, dict) or "model_name" not in body or "data" not in body:
            raise ApiError(422, "the body must be an object with 'model_name' and 'data'")
        return await score(body["model_name"], body["data"], len(raw) > OFF_LOOP_BYTES)

    @app.get("/score", tags=["scoring"], responses=_ERRORS)
    async def score_get(model_name: str, data: str):
        """The same with query parameters; ``data`` is JSON text."""
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise ApiError(400, "'data' is not valid JSON") from None
        return await score(model_name, parsed)

    app.add_middleware(
        Guard, settings=settings, metrics=metrics, scoring={"predict": predict_handler, "forecast": forecast_handler}
    )
    return app


def app_from_env() -> FastAPI:
    """The uvicorn factory (``mmp serve``, the container): settings from the environment."""
    return create_app(ServeSettings.from_env())
