"""Synthetic landing data for the three reference use cases.

The platform needs realistic, many-key data to exercise the whole pipeline (landing -> lake -> per-key
training -> scoring) without shipping real data sets. Each generator builds every key at once with numpy
arrays shaped ``(keys, rows)`` and flattens them into one polars frame, so 10,000 keys stay cheap.

Randomness is split into one independent stream per model component (``SeedSequence.spawn``) and every
per-key draw is laid out key-major. That makes output deterministic for a seed and *prefix stable*: the
first ``n`` keys are identical whether you ask for ``n`` or ``10 * n`` keys (with the same ``rows``), so
small smoke runs see the same series as large runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

__all__ = [
    "GENERATORS",
    "GeneratedData",
    "generate_group_regression",
    "generate_retail_demand",
    "generate_sensor_anomaly",
    "write_landing",
]

BRANDS: tuple[str, ...] = (
    "tropicana",
    "minute_maid",
    "dominicks",
    "florida_natural",
    "tree_fresh",
    "citrus_hill",
    "floridas_choice",
    "heritage_house",
    "premium_pack",
    "simply_orange",
)
FIRST_STORE = 1001
SENSORS: tuple[str, ...] = ("temperature", "vibration", "pressure", "humidity")

# Key columns of each generated shape; write_landing uses them to keep a key's rows in one file.
_KNOWN_KEY_COLUMNS: tuple[tuple[str, ...], ...] = (
    ("store", "brand"),
    ("device_id", "sensor"),
    ("segment_id",),
)


@dataclass(frozen=True)
class GeneratedData:
    """What a generator returns: landing ``history`` plus, for forecasting, ``future`` exogenous values."""

    history: pl.DataFrame
    future: pl.DataFrame | None = None


def _streams(seed: int, n: int) -> list[np.random.Generator]:
    """One independent generator per component, so adding a component never shifts the others."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n)]


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def _key_ids(prefix: str, n: int, width: int) -> list[str]:
    """Fixed-width ids (widening only past 10**width) so a key's id never depends on how many keys exist."""
    return [f"{prefix}-{i:0{width}d}" for i in range(1, n + 1)]


# --------------------------------------------------------------------------------------------------------
# retail demand (Orange Juice shaped)
# --------------------------------------------------------------------------------------------------------


def generate_retail_demand(
    keys: int = 20,
    rows: int = 120,
    seed: int = 0,
    horizon: int = 8,
    start: date = date(2024, 1, 1),
) -> GeneratedData:
    """Weekly store x brand sales like the OJ data of Azure's many-models accelerator.

    log(quantity) = base + trend * t + seasonality(52 weeks) + elasticity * log(price / base price)
    + deal lift + feature lift + noise, with every coefficient drawn per key, so one model per key is the
    natural fit. Exogenous series are generated for ``rows + horizon`` weeks and the tail becomes
    ``future`` (without quantity), so future prices/promotions continue the history seamlessly.
    """
    _check_positive(keys=keys, rows=rows)
    if horizon < 0:
        raise ValueError(f"horizon must be >= 0, got {horizon}")
    if isinstance(start, datetime):
        start = start.date()
    first_monday = start + timedelta(days=(7 - start.weekday()) % 7)

    k, n_t = keys, rows + horizon
    r_params, r_price_noise, r_deal, r_feat, r_noise = _streams(seed, 5)

    # Per-key parameters, drawn in one (k, m) block so key i's parameters do not depend on `keys`.
    u = r_params.random((k, 12))
    log_base = np.log(2_000.0 + 7_000.0 * u[:, 0])
    slope = (0.0005 + 0.0015 * u[:, 1]) * np.where(u[:, 2] < 0.5, -1.0, 1.0)  # some keys grow, some decline
    season_amp = 0.05 + 0.20 * u[:, 3]
    season_phase = 2 * np.pi * u[:, 4]
    base_price = 1.5 + 2.5 * u[:, 5]
    discount = 0.10 + 0.15 * u[:, 6]
    elasticity = -2.0 + 1.2 * u[:, 7]
    deal_rate = 0.10 + 0.20 * u[:, 8]
    deal_lift = 0.05 + 0.20 * u[:, 9]
    feat_lift = 0.05 + 0.15 * u[:, 10]
    noise_sd = 0.05 + 0.05 * u[:, 11]

    t = np.arange(n_t, dtype=np.float64)

    # Shelf price drifts smoothly: a moving average of white noise is stationary and fully vectorised.
    window = 6
    eps = np.cumsum(r_price_noise.standard_normal((k, n_t + window)), axis=1)
    drift = (eps[:, window:] - eps[:, :-window]) / np.sqrt(window)
    deal = r_deal.random((k, n_t)) < deal_rate[:, None]
    # Features mostly coincide with deals, as in the real OJ data.
    feat = r_feat.random((k, n_t)) < np.where(deal, 0.5, 0.05)
    price = base_price[:, None] * np.exp(0.04 * drift) * np.where(deal, 1.0 - discount[:, None], 1.0)
    price = np.round(price, 2)

    log_q = (
        log_base[:, None]
        + slope[:, None] * t
        + season_amp[:, None] * np.sin(2 * np.pi * t / 52.0 + season_phase[:, None])
        + elasticity[:, None] * np.log(price / base_price[:, None])
        + deal_lift[:, None] * deal
        + feat_lift[:, None] * feat
        + noise_sd[:, None] * r_noise.standard_normal((k, n_t))
    )
    quantity = np.maximum(np.round(np.exp(log_q)), 1.0)

    stores = pl.Series("store", FIRST_STORE + np.arange(k) // len(BRANDS), dtype=pl.Int64)
    brands = pl.Series("brand", list(BRANDS), dtype=pl.String).gather(np.arange(k) % len(BRANDS))
    weeks = pl.date_range(first_monday, first_monday + timedelta(weeks=n_t - 1), "1w", eager=True)

    def frame(cols: slice, with_quantity: bool) -> pl.DataFrame:
        width = cols.stop - cols.start
        key_idx = np.repeat(np.arange(k), width)
        data = {
            "store": stores.gather(key_idx),
            "brand": brands.gather(key_idx),
            "week_start": weeks.slice(cols.start, width).gather(np.tile(np.arange(width), k)),
        }
        if with_quantity:
            data["quantity"] = pl.Series(quantity[:, cols].ravel(), dtype=pl.Float64)
        data["price"] = pl.Series(price[:, cols].ravel(), dtype=pl.Float64)
        data["deal"] = pl.Series(deal[:, cols].ravel(), dtype=pl.Int8)
        data["feat"] = pl.Series(feat[:, cols].ravel(), dtype=pl.Int8)
        return pl.DataFrame(data)

    return GeneratedData(
        history=frame(slice(0, rows), with_quantity=True),
        future=frame(slice(rows, n_t), with_quantity=False),
    )


# --------------------------------------------------------------------------------------------------------
# sensor anomaly (batch scoring shaped)
# --------------------------------------------------------------------------------------------------------

# Per sensor type: (level lo, level hi, daily amp lo, amp hi, noise sd lo, sd hi, ambient coupling lo, hi)
_SENSOR_PARAMS = np.array(
    [
        [55.0, 85.0, 1.0, 4.0, 0.3, 1.0, 0.3, 0.8],  # temperature, deg C
        [0.5, 2.5, 0.05, 0.3, 0.02, 0.08, 0.0, 0.02],  # vibration, mm/s
        [95.0, 105.0, 0.5, 2.0, 0.2, 0.6, -0.1, 0.1],  # pressure, kPa
        [35.0, 65.0, 3.0, 8.0, 1.0, 3.0, -1.0, -0.4],  # humidity, %
    ]
)


def generate_sensor_anomaly(
    keys: int = 20,
    rows: int = 240,
    seed: int = 0,
    anomaly_rate: float = 0.02,
    start: datetime = datetime(2025, 1, 1),
) -> GeneratedData:
    """Hourly device x sensor readings like Azure's many-models batch-scoring reference.

    value = per-key level + per-key daily cycle + coupling to the device's ambient temperature + noise.
    Anomalies are spikes/drops of 5-10 standard deviations of the key's clean signal, labelled in
    ``is_anomaly`` so detectors can be evaluated; every key gets at least one so per-key metrics exist.
    """
    _check_positive(keys=keys, rows=rows)
    if not 0.0 <= anomaly_rate <= 1.0:
        raise ValueError(f"anomaly_rate must be in [0, 1], got {anomaly_rate}")
    if not isinstance(start, datetime):
        start = datetime(start.year, start.month, start.day)

    k, n_t = keys, rows
    n_sensors = len(SENSORS)
    n_dev = -(-k // n_sensors)
    r_params, r_ambient, r_noise, r_anom_pos, r_anom_fallback, r_anom_size, r_anom_sign = _streams(seed, 7)

    key = np.arange(k)
    dev_idx, sensor_idx = key // n_sensors, key % n_sensors
    p = _SENSOR_PARAMS[sensor_idx]  # (k, 8)
    u = r_params.random((k, 5))
    level = p[:, 0] + (p[:, 1] - p[:, 0]) * u[:, 0]
    amp = p[:, 2] + (p[:, 3] - p[:, 2]) * u[:, 1]
    noise_sd = p[:, 4] + (p[:, 5] - p[:, 4]) * u[:, 2]
    coupling = p[:, 6] + (p[:, 7] - p[:, 6]) * u[:, 3]
    peak_hour = 10.0 + 8.0 * u[:, 4]  # machines run hottest in the afternoon

    hour = (start.hour + start.minute / 60.0 + np.arange(n_t)) % 24.0

    # Ambient: one daily pattern shared by all devices, plus a per-device offset and noise.
    amb = r_ambient.standard_normal((n_dev, n_t + 1))  # column 0 -> per-device offset
    ambient_dev = 20.0 + 6.0 * np.sin(2 * np.pi * (hour - 9.0) / 24.0) + 1.2 * amb[:, :1] + 0.8 * amb[:, 1:]
    ambient = ambient_dev[dev_idx]  # sensors of one device share its ambient readings

    clean = (
        level[:, None]
        + amp[:, None] * np.cos(2 * np.pi * (hour[None, :] - peak_hour[:, None]) / 24.0)
        + coupling[:, None] * (ambient - 20.0)
        + noise_sd[:, None] * r_noise.standard_normal((k, n_t))
    )

    is_anom = r_anom_pos.random((k, n_t)) < anomaly_rate
    fallback = r_anom_fallback.integers(0, n_t, k)
    missing = ~is_anom.any(axis=1)
    is_anom[missing, fallback[missing]] = True
    scale = np.maximum(clean.std(axis=1), noise_sd)
    size = r_anom_size.uniform(5.0, 10.0, (k, n_t)) * np.where(r_anom_sign.random((k, n_t)) < 0.5, -1.0, 1.0)
    value = clean + np.where(is_anom, size * scale[:, None], 0.0)

    devices = pl.Series("device_id", _key_ids("dev", n_dev, 4), dtype=pl.String)
    sensors = pl.Series("sensor", list(SENSORS), dtype=pl.String)
    stamps = pl.datetime_range(start, start + timedelta(hours=n_t - 1), "1h", eager=True, time_unit="us")
    key_rows = np.repeat(key, n_t)
    history = pl.DataFrame(
        {
            "device_id": devices.gather(dev_idx[key_rows]),
            "sensor": sensors.gather(sensor_idx[key_rows]),
            "timestamp": stamps.gather(np.tile(np.arange(n_t), k)),
            "value": pl.Series(value.ravel(), dtype=pl.Float64),
            "ambient_temperature": pl.Series(ambient.ravel(), dtype=pl.Float64),
            "is_anomaly": pl.Series(is_anom.ravel(), dtype=pl.Int8),
        }
    )
    return GeneratedData(history=history, future=None)


# --------------------------------------------------------------------------------------------------------
# group regression (no time axis)
# --------------------------------------------------------------------------------------------------------


def generate_group_regression(keys: int = 20, rows: int = 200, seed: int = 0) -> GeneratedData:
    """Per-segment tabular regression with heterogeneous coefficients.

    y = intercept + sum(b_j * x_j, j=1..4) + c * sin(2 * x1) + d * x2 * x3 + effect[x5] + noise, all per
    segment. The noise variance is calibrated per segment against an in-sample OLS fit so a linear model
    scores R^2 of roughly 0.7-0.9, leaving visible headroom for non-linear learners.
    """
    _check_positive(keys=keys, rows=rows)
    k, n = keys, rows
    r_x, r_x5, r_params, r_normal, r_noise = _streams(seed, 5)

    x = r_x.standard_normal((k, n, 4))
    x5 = r_x5.integers(0, 4, (k, n)).astype(np.float64)

    # Per-key parameters in single (k, m) draws so key i's parameters do not depend on `keys`.
    u = r_params.random((k, 13))
    z = r_normal.standard_normal((k, 5))
    signs = np.where(u[:, 6:12] < 0.5, -1.0, 1.0)
    intercept = 10.0 + 3.0 * z[:, 0]
    coef = (0.5 + 1.5 * u[:, 0:4]) * signs[:, 0:4]
    c_sin = (0.3 + 0.7 * u[:, 4]) * signs[:, 4]
    d_int = (0.2 + 0.5 * u[:, 5]) * signs[:, 5]
    cat_effect = 0.7 * z[:, 1:5]
    target_r2 = 0.72 + 0.16 * u[:, 12]

    signal = (
        intercept[:, None]
        + np.einsum("knj,kj->kn", x, coef)
        + c_sin[:, None] * np.sin(2.0 * x[:, :, 0])
        + d_int[:, None] * x[:, :, 1] * x[:, :, 2]
        + np.take_along_axis(cat_effect, x5.astype(np.int64), axis=1)
    )

    # Batched OLS of the noiseless signal on [1, x1..x5]: what a linear model can and cannot explain.
    design = np.concatenate([np.ones((k, n, 1)), x, x5[:, :, None]], axis=2)
    xtx = np.einsum("knp,knq->kpq", design, design)
    xty = np.einsum("knp,kn->kp", design, signal)
    beta = np.einsum("kpq,kq->kp", np.linalg.pinv(xtx), xty)
    fitted = np.einsum("knp,kp->kn", design, beta)
    explained = fitted.var(axis=1)
    unexplained = ((signal - fitted) ** 2).mean(axis=1)
    noise_var = np.maximum(explained * (1.0 / target_r2 - 1.0) - unexplained, 0.02 * explained)
    y = signal + np.sqrt(noise_var)[:, None] * r_noise.standard_normal((k, n))

    segments = pl.Series("segment_id", _key_ids("seg", k, 3), dtype=pl.String)
    flat_x = x.reshape(k * n, 4)
    data: dict[str, pl.Series] = {"segment_id": segments.gather(np.repeat(np.arange(k), n))}
    for j in range(4):
        data[f"x{j + 1}"] = pl.Series(flat_x[:, j], dtype=pl.Float64)
    data["x5"] = pl.Series(x5.ravel(), dtype=pl.Float64)
    data["y"] = pl.Series(y.ravel(), dtype=pl.Float64)
    return GeneratedData(history=pl.DataFrame(data), future=None)


GENERATORS: dict[str, Callable[..., GeneratedData]] = {
    "retail_demand": generate_retail_demand,
    "sensor_anomaly": generate_sensor_anomaly,
    "group_regression": generate_group_regression,
}


# --------------------------------------------------------------------------------------------------------
# landing
# --------------------------------------------------------------------------------------------------------


def _file_index(df: pl.DataFrame, key_columns: list[str], n_files: int) -> np.ndarray:
    """Map each row to a file so that all rows of a key share one file; keys go in contiguous blocks."""
    if not key_columns:
        return (np.arange(df.height) * n_files) // max(df.height, 1)
    key_rank = df.select(pl.struct(key_columns).rank("dense").cast(pl.Int64) - 1).to_series().to_numpy()
    n_keys = int(key_rank.max()) + 1 if df.height else 1
    return (key_rank * n_files) // n_keys


def _write_parts(
    df: pl.DataFrame, directory: Path, stem: str, key_columns: list[str], n_files: int, fmt: str
) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    file_idx = _file_index(df, key_columns, n_files)
    paths = []
    for i in range(n_files):
        part = df.filter(pl.Series(file_idx == i))
        path = directory / f"{stem}_part-{i:04d}.{fmt}"
        if fmt == "csv":
            part.write_csv(path)
        else:
            part.write_parquet(path)
        paths.append(str(path))
    return paths


def write_landing(
    data: GeneratedData,
    landing_dir: str | os.PathLike,
    use_case: str,
    *,
    files: int = 2,
    fmt: str = "csv",
) -> list[str]:
    """Drop ``data`` into a landing zone as several part files, the way upstream systems deliver it.

    ``history`` goes to ``landing_dir/<use_case>_part-NNNN.<fmt>``, ``future`` (if any) to the sibling
    ``<landing_dir>_future/<use_case>_future_part-NNNN.<fmt>``. Rows are split by key (never splitting a
    key across files), with at most one file per key; the future frame uses the same key-to-file layout.
    Existing files are overwritten, stale extra parts are not removed. Returns the written paths.
    """
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"fmt must be 'csv' or 'parquet', got {fmt!r}")
    _check_positive(files=files)
    history = data.history
    key_columns = next((list(cols) for cols in _KNOWN_KEY_COLUMNS if all(c in history.columns for c in cols)), [])
    n_units = history.select(key_columns).n_unique() if key_columns else history.height
    n_files = max(1, min(files, n_units))

    landing = Path(landing_dir)
    paths = _write_parts(history, landing, use_case, key_columns, n_files, fmt)
    if data.future is not None:
        future_dir = landing.with_name(landing.name + "_future")
        future_keys = [c for c in key_columns if c in data.future.columns]
        paths += _write_parts(data.future, future_dir, f"{use_case}_future", future_keys, n_files, fmt)
    return paths
